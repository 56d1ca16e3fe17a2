"""The paper's real-data experiment on scikit-learn's 8x8 handwritten digits (0 vs 1).

theory.md section 3 ([code] example on MNIST): a 3-layer relu network at width
4096 is trained with each isotropic method at ``lr = 1/alpha``; the finite
network's train and test losses are printed beside the infinite-width
prediction per step.  The prediction uses the finite network's own initial
outputs ``f_0`` and the derived dynamics: on the training set
``f_t - y = (1 - alpha eta)^t (f_0 - y)``, so the predicted train loss is
``(1 - alpha eta)^{2t} L_0`` (zero after one step at ``eta = 1/alpha``); on the
test set ``f_t(X_test) = f_0(X_test) + Derivation.predict_test(...)[t]``.

Data (:func:`load_digits_problem`): the 360 images of digits 0 and 1, a seeded
permutation, the first 100 for training and the next 50 for testing; each pixel
standardised with the training mean and standard deviation (pixels constant on
the training set are left at 0), then each row normalised to unit norm; labels
``+0.5`` for digit 1 and ``-0.5`` for digit 0.  scikit-learn is the optional
"data" extra.

K-FAC is not run by default: its isotropy needs ``N <= M_0`` and here
``N = 100 > M_0 = 64`` (theory.md section 2, K-FAC: the first layer then gives
``N diag(leverage)``); ``--methods kfac`` runs it anyway, with ``alpha`` nominal.

Verdict (finite-width effects are ``O(M^{-1/2})`` in the residual):
after step 1 at ``eta = 1/alpha`` the train loss ratio ``L_t / L_0 <= 100 / M``
(the residual is ``O(M^{-1/2})``, the loss ``O(1/M)``; the paper's MNIST run gives
``1.5e-3 = 6/M``), and the test loss within ``10 / sqrt(M)`` relative of the
prediction at every step (theory.md: one-step test predictions within 1-5 % at
``M = 2048`` for relu; ``10/sqrt(4096) = 16 %``).

Run ``python -m derivations.digits [--width 4096] [--steps 3] [--out report] [--quick]`` (writes
digits.md, digits.json and digits.png to ``--out``, default ``report/``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ngdsym.methods import KFACDamping, Method

from ._common import DEFAULT_DAMPING, Check, Setup, require
from ._report import fmt, markdown_table, write_json

__all__ = ["load_digits_problem", "run_digits", "DEFAULT_METHODS", "main"]

DEFAULT_METHODS = (Method.EXACT, Method.BLOCK_DIAGONAL, Method.BLOCK_TRIDIAGONAL, Method.UNIT_WISE)

MISSING_SKLEARN = ("scikit-learn is not installed: the digits experiment needs it; install the 'data' "
                   "extra: pip install -e '.[data]'")

#: ``--quick``: a smoke run (the verdict's bounds scale with the width, so they still apply).
QUICK_WIDTH = 1024
QUICK_STEPS = 2

#: Verdict constants (see the module docstring).
TRAIN_RATIO_CONSTANT = 100.0
TEST_RELATIVE_CONSTANT = 10.0


def load_digits_problem(seed: int = 0, n_train: int = 100, n_test: int = 50):
    """``(X, Y, X_test, Y_test)`` of digits 0 vs 1 (see the module docstring).

    Raises ``ImportError`` with an install hint when scikit-learn is missing.

    >>> X, Y, Xt, Yt = load_digits_problem()   # doctest: +SKIP
    >>> X.shape, Xt.shape, sorted(set(Y.ravel()))   # doctest: +SKIP
    ((100, 64), (50, 64), [-0.5, 0.5])
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(MISSING_SKLEARN) from exc
    data = load_digits()
    keep = np.flatnonzero(np.isin(data.target, (0, 1)))
    if n_train + n_test > keep.size:
        raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds the {keep.size} images of 0 and 1")
    order = np.random.default_rng(seed).permutation(keep)
    train, test = order[:n_train], order[n_train:n_train + n_test]
    X_raw = data.data.astype(float)
    mean = X_raw[train].mean(axis=0)
    std = X_raw[train].std(axis=0)
    std[std == 0] = 1.0  # pixels constant on the training set stay at 0 after centring

    def prepare(idx):
        Z = (X_raw[idx] - mean) / std
        norms = np.linalg.norm(Z, axis=1, keepdims=True)
        return Z / np.where(norms == 0, 1.0, norms)

    def labels(idx):
        return np.where(data.target[idx] == 1, 0.5, -0.5)[:, None]

    return prepare(train), labels(train), prepare(test), labels(test)


def _loss(outputs, Y):
    return 0.5 * np.mean(np.sum((np.asarray(outputs) - Y) ** 2, axis=-1), axis=-1)


def run_digits(width=4096, steps=3, methods=DEFAULT_METHODS, seed=0, data_seed=0, damping=DEFAULT_DAMPING,
               kfac_damping=KFACDamping.FACTORS, data=None):
    """Train each method on the digits and predict each step; returns ``(results, checks)``."""
    from numeric import MLP

    from ._sweep import Context, SweepConfig

    train = require("numeric", "train", "issue 2")
    X, Y, X_test, Y_test = load_digits_problem(data_seed) if data is None else data
    setup = Setup(n_samples=X.shape[0], n_test=X_test.shape[0], input_dim=X.shape[1], depth=3, n_outputs=1,
                  activation="relu")
    ctx = Context(SweepConfig(setup=setup, widths=(width, 2 * width), seeds=1, methods=tuple(methods),
                              damping=damping, kfac_damping=kfac_damping, show_progress=False),
                  data=(X, Y, X_test, Y_test))
    net = MLP(setup.widths(width), seed=seed, **setup.network_kwargs())
    results, checks = {}, []
    for m in methods:
        m = Method.parse(m)
        t0 = time.perf_counter()
        alpha = ctx.alpha(m, width)
        if alpha is None:
            reason = ctx.not_isotropic.get(m, "the derivation gives no alpha")
            checks.append(Check(f"digits: {m.label}", True, "skipped", "isotropic method",
                                f"not isotropic on this data, no lr = 1/alpha: {reason}"))
            continue
        lr = 1.0 / alpha
        traj = train(net, X, Y, m, lr, damping, steps, X_test, Y_test, kfac_damping=kfac_damping)
        r0 = np.asarray(traj.train_outputs[0], dtype=float) - Y
        from .dynamics import residual_factor

        train_pred = residual_factor(ctx.concrete(m, width), lr, steps) ** 2 * float(traj.train_loss[0])
        change = np.asarray(ctx.derivation(m).predict_test(ctx.infinite("train"), ctx.infinite("cross"), r0,
                                                           lr=lr, steps=steps), dtype=float)
        test_pred = _loss(np.asarray(traj.test_outputs[0], dtype=float)[None] + change, Y_test)
        train_loss = np.asarray(traj.train_loss, dtype=float)
        test_loss = np.asarray(traj.test_loss, dtype=float)
        results[m.value] = dict(label=m.label, alpha=alpha, lr=lr, train_loss=train_loss,
                                train_predicted=train_pred, test_loss=test_loss, test_predicted=test_pred,
                                seconds=time.perf_counter() - t0)
        ratio = float(train_loss[1:].max() / train_loss[0])
        rel = float(np.max(np.abs(test_loss - test_pred) / test_pred))
        ok_train = ratio <= TRAIN_RATIO_CONSTANT / width  # lr = 1/alpha: the theory loss is 0 for t >= 1
        ok_test = rel <= TEST_RELATIVE_CONSTANT / np.sqrt(width)
        checks.append(Check(
            f"digits: {m.label}", bool(ok_train and ok_test), "bound",
            f"max_t>=1 L_t/L_0 <= {TRAIN_RATIO_CONSTANT:g}/M and |test loss - predicted|/predicted <= "
            f"{TEST_RELATIVE_CONSTANT:g}/sqrt(M) at M = {width}",
            f"L_t/L_0 max {fmt(ratio)} (bound {fmt(TRAIN_RATIO_CONSTANT / width)}), test loss rel. error "
            f"{fmt(rel)} (bound {fmt(TEST_RELATIVE_CONSTANT / np.sqrt(width))})"))
    return results, checks


def digits_table(results) -> str:
    rows = []
    for r in results.values():
        for t in range(len(r["train_loss"])):
            rows.append([r["label"] if t == 0 else "", f"{fmt(r['alpha'], 6)}" if t == 0 else "", t,
                         fmt(r["train_loss"][t]), fmt(r["train_predicted"][t]), fmt(r["test_loss"][t]),
                         fmt(r["test_predicted"][t])])
    return markdown_table(["method", "alpha", "step", "train loss (finite)", "train loss (infinite-width)",
                           "test loss (finite)", "test loss (infinite-width)"], rows)


def plot_digits(path, results):
    from ._plots import _pyplot

    plt = _pyplot()
    if plt is None:
        return None
    n = len(results)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(4 * max(n, 1), 3.4), squeeze=False)
    for ax, r in zip(axes.flat, results.values()):
        t = np.arange(len(r["train_loss"]))
        floor = 1e-12
        ax.plot(t, np.maximum(r["train_predicted"], floor), "-", color="C0", label="train, infinite width")
        ax.plot(t, np.maximum(r["train_loss"], floor), "o", color="C0", label="train, finite")
        ax.plot(t, r["test_predicted"], "-", color="C1", label="test, infinite width")
        ax.plot(t, r["test_loss"], "s", color="C1", label="test, finite")
        ax.set_yscale("log")
        ax.set_title(f"{r['label']} (lr = 1/{fmt(r['alpha'])})", fontsize=10)
        ax.set_xlabel("step t")
        ax.set_xticks(t)
        ax.set_ylabel("loss (1/2N) sum ||f - y||^2")
        ax.legend(fontsize=7, loc="center right")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"digits 0 vs 1: finite network vs infinite-width prediction (values < {floor:g} at floor)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    from ._cli import _method_list

    p = argparse.ArgumentParser(prog="python -m derivations.digits",
                                description="Digits 0 vs 1: finite network vs infinite-width prediction.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="network seed")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/test permutation")
    p.add_argument("--methods", type=_method_list, nargs="+", default=None,
                   help="default: " + ", ".join(m.value for m in DEFAULT_METHODS))
    p.add_argument("--damping", type=float, default=DEFAULT_DAMPING)
    p.add_argument("--kfac-damping", choices=[k.value for k in KFACDamping], default=KFACDamping.FACTORS.value)
    p.add_argument("--out", default="report", help="folder for digits.md, digits.json and digits.png")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: width {QUICK_WIDTH}, {QUICK_STEPS} steps (overrides --width, --steps)")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.steps = QUICK_WIDTH, QUICK_STEPS
    methods = [m for g in args.methods for m in g] if args.methods else DEFAULT_METHODS
    print(__doc__.strip().split("\n\n")[0] + "\n")
    try:
        load_digits_problem(args.data_seed)
    except ImportError:
        print(MISSING_SKLEARN, file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results, checks = run_digits(args.width, args.steps, methods, args.seed, args.data_seed, args.damping,
                                 KFACDamping.parse(args.kfac_damping))
    table = digits_table(results)
    print(f"3-layer relu, width {args.width}, N = 100 train / 50 test, lr = 1/alpha, damping {args.damping:g}\n")
    print(table)
    for c in checks:
        print(f"- {c.verdict} {c.name}: {c.detail}\n    criterion: {c.criterion}")
    wall = time.perf_counter() - t0
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        png = plot_digits(out / "digits.png", results)
        md = f"# Digits 0 vs 1\n\nwidth {args.width}, steps {args.steps}\n\n{table}\n"
        md += "\n" + "\n".join(f"- {c.verdict} {c.name}: {c.detail} ({c.criterion})" for c in checks) + "\n"
        if png:
            md += "\n![digits](digits.png)\n"
        (out / "digits.md").write_text(md)
        write_json(out / "digits.json", dict(width=args.width, steps=args.steps, results=results,
                                             checks=[c.as_dict() for c in checks], wall_time_s=wall))
        print(f"\nwritten to {out}")
    print(f"Wall time {wall:.1f} s")
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
