"""The unit-wise deviation bound (issue 5, theory.md section 5): theorem, measurements, plot.

Prints the theorem derived in :mod:`ngdsym.unitwise_bound`, then for every width
``M`` and damping ``rho`` trains unit-wise NGD and its linearisation
(:func:`numeric.bound.measure_deviation`) and tabulates the measured deviation
``sup_t ||f_t - f^lin_t||_2``, the estimated regularity constant ``A``, the a-posteriori
bound ``sqrt(N) b(T; R)`` and their ratio, with the width rate of the deviation.
Writes ``unitwise_bound.json``, ``unitwise_bound_theorem.md``/``.tex`` and (with
matplotlib) ``unitwise_bound.png`` to ``--out``.

Experimental design: ``N`` unit-norm Gaussian inputs; the targets are
``Y = f_0(X) - sqrt(N) e`` with one fixed unit vector ``e`` per data seed, so every
network starts from the same normalised residual (``R_0 = ||e_0|| = 1``) and the
comparison across widths, dampings and seeds isolates the width and damping effects.
The learning rate is fixed across ``rho`` (the theorem's ``rho`` exponent is at fixed
``eta``); each run reports whether the linearised dynamics are non-expansive (H3).

Exit status: 0 when the measured deviation is below the bound and every inequality of
the proof holds in every run, 1 otherwise, 2 on bad arguments.

Run ``python -m derivations.unitwise_bound [--widths 256,512] [--rhos 1,0.3] [--out DIR] [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_WIDTHS = (256, 512, 1024, 2048, 4096)
DEFAULT_RHOS = (1.0, 0.3, 0.1)
QUICK_WIDTHS = (128, 256, 512)
QUICK_RHOS = (1.0, 0.3)


@dataclass(frozen=True)
class Config:
    """One sweep: every ``(width, rho, seed)`` run of :func:`numeric.bound.measure_deviation`."""

    widths: tuple = DEFAULT_WIDTHS
    rhos: tuple = DEFAULT_RHOS
    depth: int = 2
    activation: str = "tanh"
    n_samples: int = 8
    input_dim: int = 8
    steps: int = 8
    lr: float = 0.03
    seeds: int = 3
    data_seed: int = 0
    midpoints: bool = True
    show_progress: bool = True

    def network_widths(self, M: int) -> list[int]:
        return [self.input_dim] + [M] * (self.depth - 1) + [1]


def problem_data(cfg: Config):
    """``(X, e)``: unit-norm inputs and the fixed initial residual ``e`` (``||e|| / sqrt(N) = 1``)."""
    from ._common import unit_norm_gaussian

    rng = np.random.default_rng(cfg.data_seed)
    X = unit_norm_gaussian(cfg.n_samples, cfg.input_dim, rng)
    e = rng.standard_normal(cfg.n_samples)
    return X, e * math.sqrt(cfg.n_samples) / np.linalg.norm(e)


def run(cfg: Config) -> dict:
    """Measure every run of the sweep; returns ``{"config", "runs", "table", "fits", "violations"}``."""
    from numeric import MLP
    from numeric.bound import measure_deviation

    from ._common import fit_rate, progress

    X, residual = problem_data(cfg)
    grid = [(M, rho, seed) for rho in cfg.rhos for M in cfg.widths for seed in range(cfg.seeds)]
    runs = []
    for M, rho, seed in progress(grid, total=len(grid), desc="unit-wise deviation", enabled=cfg.show_progress):
        net = MLP(cfg.network_widths(M), activation=cfg.activation, seed=seed)
        Y = net.forward(X) - residual[:, None]
        started = time.perf_counter()
        res = measure_deviation(net, X, Y, lr=cfg.lr, damping=rho, steps=cfg.steps, midpoints=cfg.midpoints)
        checks = res.checks()
        runs.append(dict(M=M, rho=rho, seed=seed, seconds=time.perf_counter() - started, result=res,
                         failed_checks=[f"{c.name}/{c.kind}" for c in checks if not c.holds()]))
    table, fits, violations = [], {}, []
    for rho in cfg.rhos:
        mean_dev = []
        for M in cfg.widths:
            cell = [r for r in runs if r["M"] == M and r["rho"] == rho]
            res = [r["result"] for r in cell]
            dev = float(np.mean([r.deviation for r in res]))
            mean_dev.append(dev)
            table.append(dict(
                M=M, rho=rho, lr=cfg.lr, deviation=dev, deviation_sqrt_M=dev * math.sqrt(M),
                A=max(r.A for r in res), A_estimate=max(r.A_estimate for r in res), bound=float(np.mean([r.bound for r in res])),
                ratio=max(r.ratio for r in res), bound_a_priori=float(np.mean([r.bound_a_priori for r in res])),
                width_condition=all(r.width_condition for r in res),
                nonexpansive=all(r.hypotheses["nonexpansive"] for r in res),
                safe_learning_rate=all(r.hypotheses["safe_learning_rate"] for r in res),
                seconds=float(sum(r["seconds"] for r in cell)),
            ))
            for r in cell:
                if r["result"].deviation > r["result"].bound:
                    violations.append(f"M={M} rho={rho} seed={r['seed']}: deviation "
                                      f"{r['result'].deviation:.3e} > bound {r['result'].bound:.3e}")
                if r["failed_checks"]:
                    violations.append(f"M={M} rho={rho} seed={r['seed']}: proof steps violated: "
                                      + ", ".join(r["failed_checks"]))
        if len(cfg.widths) >= 2:
            fits[str(rho)] = fit_rate(cfg.widths, mean_dev).as_dict()
    return dict(config=cfg, runs=runs, table=table, fits=fits, violations=violations)


def format_table(result) -> str:
    from ._report import fmt, markdown_table

    rows = [[t["M"], fmt(t["rho"]), fmt(t["lr"]), fmt(t["deviation"]), fmt(t["deviation_sqrt_M"]), fmt(t["A"]), fmt(t["A_estimate"]),
             fmt(t["bound"]), fmt(t["ratio"]), fmt(t["bound_a_priori"]), "yes" if t["width_condition"] else "no",
             "yes" if t["nonexpansive"] else "NO", "yes" if t["safe_learning_rate"] else "no", fmt(t["seconds"], 2)]
            for t in result["table"]]
    headers = ["M", "rho", "lr", "deviation", "dev*sqrt(M)", "A", "A_hat", "bound", "max ratio", "a-priori bound",
               "width cond.", "(H3)", "eta<=2rho/A^2", "s"]
    return markdown_table(headers, rows)


def format_fits(result) -> str:
    from ._report import fmt

    lines = []
    for rho, fit in result["fits"].items():
        lines.append(f"rho = {rho}: deviation ~ M^{fmt(fit['slope'])} (+- {fmt(fit['stderr'])}); "
                     f"deviation*sqrt(M) spread {fmt(fit['spread'])} (theorem: slope <= -1/2)")
    return "\n".join(lines)


def plot(result, path: Path) -> Path | None:
    """Deviation (markers) and bound (dashed) against ``M`` per ``rho``; ``None`` without matplotlib."""
    from ._plots import _pyplot, matplotlib_missing, set_width_axis

    plt = _pyplot()
    if plt is None:
        print(matplotlib_missing(), file=sys.stderr)
        return None
    cfg = result["config"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, rho in enumerate(cfg.rhos):
        rows = [t for t in result["table"] if t["rho"] == rho]
        M = np.array([t["M"] for t in rows], float)
        c = colors[k % len(colors)]
        ax.loglog(M, [t["deviation"] for t in rows], "o-", color=c, label=rf"deviation, $\rho$={rho:g}")
        ax.loglog(M, [t["bound"] for t in rows], "--", color=c, label=rf"bound $\sqrt{{N}}\,b(T;R)$, $\rho$={rho:g}")
        dev0 = rows[0]["deviation"]
        ax.loglog(M, dev0 * np.sqrt(M[0] / M), ":", color=c, alpha=0.5,
                  label=r"$\propto M^{-1/2}$ (theorem's rate)" + rf", $\rho$={rho:g}")
    set_width_axis(ax, cfg.widths)
    ax.set_ylabel(r"$\sup_t \|f_t - f^{lin}_t\|_2$ (train inputs)")
    ax.set_title(f"unit-wise NGD vs linearisation ({cfg.activation}, L={cfg.depth}, N={cfg.n_samples}, "
                 f"T={cfg.steps}, lr={cfg.lr:g})\ndeviation (markers, mean over seeds), "
                 r"a-posteriori bound with $A = \max(1, \hat A)$ (dashed)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(result, out: Path, theorem) -> list[Path]:
    from ._report import write_json

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    (out / "unitwise_bound_theorem.md").write_text(theorem.markdown())
    (out / "unitwise_bound_theorem.tex").write_text(theorem.latex())
    paths += [out / "unitwise_bound_theorem.md", out / "unitwise_bound_theorem.tex"]
    data = dict(
        theorem=dict(markdown=theorem.markdown(), latex=theorem.latex(),
                     forms={k: str(v) for k, v in theorem.forms.items()},
                     exponents={k: {s: str(e) for s, e in v.items()} for k, v in theorem.exponents.items()},
                     implications=[dict(name=i.name, holds=i.holds, expected=i.expected)
                                   for i in theorem.implications]),
        config=result["config"], table=result["table"], fits=result["fits"], violations=result["violations"],
        runs=[dict(M=r["M"], rho=r["rho"], seed=r["seed"], seconds=r["seconds"],
                   failed_checks=r["failed_checks"], **r["result"].to_dict()) for r in result["runs"]],
    )
    paths.append(write_json(out / "unitwise_bound.json", data))
    png = plot(result, out / "unitwise_bound.png")
    if png is not None:
        paths.append(png)
    return paths


def _floats(text):
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers (e.g. 1,0.3,0.1)") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: dampings must be > 0")
    return tuple(values)


def _ints(text):
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers (e.g. 256,512)") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: widths must be positive integers")
    return tuple(values)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m derivations.unitwise_bound", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--widths", type=_ints, default=None, help=f"hidden widths M (default {DEFAULT_WIDTHS})")
    p.add_argument("--rhos", type=_floats, default=None, help=f"dampings rho (default {DEFAULT_RHOS})")
    p.add_argument("--out", type=Path, default=Path("report"), help="output directory")
    p.add_argument("--quick", action="store_true",
                   help=f"widths {QUICK_WIDTHS}, rhos {QUICK_RHOS}, 1 seed, 5 steps")
    p.add_argument("--depth", type=int, default=Config.depth, help="number of layers L (L - 1 hidden of width M)")
    p.add_argument("--activation", default=Config.activation, help="tanh/erf satisfy the theorem; relu is empirical")
    p.add_argument("--steps", type=int, default=None, help=f"NGD steps T (default {Config.steps})")
    p.add_argument("--lr", type=float, default=Config.lr, help="learning rate eta (fixed across rho)")
    p.add_argument("--seeds", type=int, default=None, help=f"network seeds per cell (default {Config.seeds})")
    p.add_argument("--n-samples", type=int, default=Config.n_samples, help="training inputs N")
    p.add_argument("--no-midpoints", action="store_true", help="estimate A from the iterates only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.depth < 2:
        parser.error("--depth must be >= 2 (the theorem's M is a hidden width)")
    if not args.lr > 0:
        parser.error("--lr must be > 0")
    cfg = Config(
        widths=args.widths or (QUICK_WIDTHS if args.quick else DEFAULT_WIDTHS),
        rhos=args.rhos or (QUICK_RHOS if args.quick else DEFAULT_RHOS),
        depth=args.depth, activation=args.activation, n_samples=args.n_samples,
        steps=args.steps or (5 if args.quick else Config.steps), lr=args.lr,
        seeds=args.seeds or (1 if args.quick else Config.seeds),
        midpoints=not args.no_midpoints, show_progress=not args.no_progress,
    )
    from ngdsym.unitwise_bound import unit_wise_bound

    started = time.perf_counter()
    theorem = unit_wise_bound()
    print(theorem.text())
    try:
        result = run(cfg)
    except ValueError as exc:  # a bad --activation etc., reported by numeric
        parser.error(str(exc))
    print(f"\nMeasurements ({cfg.activation}, L = {cfg.depth}, N = {cfg.n_samples}, T = {cfg.steps}, "
          f"lr = {cfg.lr:g}, {cfg.seeds} seed(s), R_0 = 1; deviation and bound in ||.||_2 on the training inputs; "
          f"deviation = mean over seeds, A and ratio = max; A = max(1, A_hat), A_hat = largest ||Jn|| and "
          f"sqrt(M) Lipschitz ratio seen):\n")
    print(format_table(result))
    if result["fits"]:
        print("\n" + format_fits(result))
    if not all(t["nonexpansive"] for t in result["table"]):
        print("\nwarning: (H3) fails in some runs (lr * lambda_max(K_0) > 2): the theorem does not apply there",
              file=sys.stderr)
    paths = write_outputs(result, args.out, theorem)
    print("\nwrote " + ", ".join(str(p) for p in paths))
    print(f"total {time.perf_counter() - started:.1f} s")
    if result["violations"]:
        print("\nVIOLATIONS:\n" + "\n".join(result["violations"]), file=sys.stderr)
        return 1
    print("every deviation is below its bound and every proof step holds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
