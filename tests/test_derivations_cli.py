"""Smoke tests of ``python -m derivations`` and unit tests of its rate/verdict helpers.

The end-to-end run is the real ``--quick`` command in a subprocess (exit status 0,
report.md, results.json and the three PNGs); a failing check is forced through a
real option (an impossible slope window) on a tiny in-process sweep and must give
exit status 1.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from derivations._common import Criteria, fit_rate, judge_convergence, judge_non_isotropic
from derivations._report import fmt, markdown_table, to_jsonable
from ngdsym.methods import Method

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------- pure helpers
def test_fit_rate_recovers_power_law_and_its_standard_error():
    """Exact power laws give their exponent with zero standard error (float64 ~1e-12)."""
    w = np.array([64, 256, 1024, 4096])
    for p in (-0.5, -1.0, 0.3):
        fit = fit_rate(w, 2.0 * w**p)
        assert abs(fit.slope - p) < 1e-12 and fit.stderr < 1e-12
    fit = fit_rate(w, 3.0 / np.sqrt(w))
    assert np.allclose(fit.scaled, 3.0) and abs(fit.spread - 1) < 1e-12
    # noisy data: the standard error is positive and the slope near the truth
    rng = np.random.default_rng(0)
    noisy = w**-0.5 * np.exp(0.1 * rng.standard_normal(w.size))
    fit = fit_rate(w, noisy)
    assert fit.stderr > 0 and abs(fit.slope + 0.5) < 4 * fit.stderr + 0.05


def test_judge_convergence_distinguishes_exact_rate_and_stall():
    w = [64, 256, 1024]
    crit = Criteria()
    assert judge_convergence("a", w, [[1e-12, 2e-12]] * 3, crit).kind == "exact"
    ok = judge_convergence("b", w, np.array([[0.4], [0.2], [0.1]]), crit)
    assert ok.passed and ok.kind == "rate"
    stall = judge_convergence("c", w, [[0.2], [0.19], [0.2]], crit)
    assert not stall.passed
    too_fast = judge_convergence("d", w, [[0.4], [0.025], [0.0016]], crit)  # M^-2
    assert not too_fast.passed
    # a per-layer kernel is never allowed to be called exact
    assert judge_convergence("e", w, [[1e-12]] * 3, crit, allow_exact=False).kind == "rate"


def test_judge_non_isotropic():
    w = [64, 256, 1024, 4096]
    # a plateau at cond 1.6 (with an M^-1/2 approach) is non-isotropic
    plateau = 1.6 + 3 / np.sqrt(w)
    assert judge_non_isotropic("x", w, plateau[:, None]).passed
    # converging to isotropy at M^-1/2 (cond 1.26 at M = 256, like relu unit-wise) is not
    converging = 1 + 4 / np.sqrt(w)
    assert not judge_non_isotropic("y", w, converging[:, None]).passed
    # isotropic to round-off
    assert not judge_non_isotropic("z", w, np.ones((4, 2))).passed


def test_judge_upper_bound_allows_faster_decay_only():
    w = [64, 128, 256, 512]
    fast = np.array(w, dtype=float) ** -1.0
    assert not judge_convergence("f", w, fast).passed  # two-sided: M^-1 is not M^-1/2
    assert judge_convergence("f", w, fast, upper_bound=True).passed
    flat = np.full(4, 0.1)
    assert not judge_convergence("g", w, flat, upper_bound=True).passed


def test_report_helpers():
    assert fmt(float("nan")) == "-" and fmt(2.0) == "2" and fmt(1.5e-7) == "1.50e-07"
    assert markdown_table(["a"], [["x|y"]]).splitlines()[-1] == "| x\\|y |"
    assert to_jsonable({"a": np.array([1.0, np.nan]), "b": np.float32(2)}) == {"a": [1.0, None], "b": 2.0}


def test_digits_problem_is_prepared_as_stated():
    """Digits 0 vs 1: 100/50 split, unit-norm rows, labels +-0.5 (scikit-learn optional)."""
    pytest.importorskip("sklearn")
    from derivations.digits import load_digits_problem

    X, Y, Xt, Yt = load_digits_problem(seed=0)
    assert X.shape == (100, 64) and Xt.shape == (50, 64)
    assert np.allclose(np.linalg.norm(X, axis=1), 1) and np.allclose(np.linalg.norm(Xt, axis=1), 1)
    assert set(np.unique(Y)) == {-0.5, 0.5} and set(np.unique(Yt)) <= {-0.5, 0.5}
    X2, *_ = load_digits_problem(seed=0)
    assert np.array_equal(X, X2)  # seeded


# ------------------------------------------------------------- end to end
needs_derive = pytest.mark.skipif(
    importlib.util.find_spec("ngdsym.derivation") is None,
    reason="ngdsym.derive (issue 3) is not available yet")


@needs_derive
def test_quick_command_writes_report_and_exits_zero(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "derivations", "--quick", "--no-progress", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "ALL CHECKS PASS" in proc.stdout
    report = (out / "report.md").read_text()
    assert "## Derivations" in report and "## Checks" in report
    data = json.loads((out / "results.json").read_text())
    assert data["schema"] == "ngdsym.derivations/1" and data["passed"] is True
    assert set(data["methods"]) == {m.value for m in Method}
    assert all(c["passed"] for c in data["checks"])
    pytest.importorskip("matplotlib")
    for png in ("deviation_vs_width.png", "training_loss.png", "test_predictions.png"):
        assert (out / png).stat().st_size > 1000, png


@needs_derive
def test_failing_check_gives_nonzero_exit(tmp_path, capsys):
    """An impossible slope window (rates must *grow* like M^+0.5..M^+1) fails GD's rate check."""
    from derivations._cli import main

    status = main(["--widths", "32,64", "--seeds", "1", "--methods", "gd,exact", "--no-train", "--no-extras",
                   "--no-plots", "--no-progress", "--slope-window", "0.5", "1.0", "--out", str(tmp_path)])
    assert status == 1
    text = capsys.readouterr().out
    assert "FAIL kernel: gradient descent" in text
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["passed"] is False


def test_bad_arguments_exit_with_usage_error():
    from derivations._cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--methods", "newton"])
    assert exc.value.code == 2
