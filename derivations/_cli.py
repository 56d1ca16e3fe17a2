"""Command line of ``python -m derivations`` and of every ``python -m derivations.<name>``.

One parser, one sweep, one report writer: the main command runs every module's
checks; a module run alone prints its derivation and its own checks.
Exit status: 0 when every check passes, 1 when one fails, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np

from ngdsym.methods import KFACDamping, Method

from ._common import (DEFAULT_CRITERIA, DEFAULT_DAMPING, DEFAULT_SETUP, DEFAULT_WIDTHS, QUICK_WIDTHS,
                      Check, Criteria)
from ._report import SCHEMA, fmt, fmt_pm, markdown_table, stats, write_json

__all__ = ["build_parser", "config_from_args", "main", "run_module", "METHOD_MODULES"]

#: The module of each method (its checks and extras).
METHOD_MODULES = {
    Method.GD: "gd",
    Method.EXACT: "exact",
    Method.BLOCK_DIAGONAL: "block_diagonal",
    Method.BLOCK_TRIDIAGONAL: "block_tridiagonal",
    Method.KFAC: "kfac",
    Method.UNIT_WISE: "unit_wise",
    Method.DIAGONAL: "diagonal",
}

QUICK_SEEDS = 3
QUICK_STEPS = 2


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers (e.g. 256,1024,4096)")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: widths must be positive integers")
    return values


def _method_list(text: str) -> list[Method]:
    try:
        return [Method.parse(v, "--methods") for v in text.replace(",", " ").split()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` ones (their help states the default, which depends on --quick)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser(prog: str, description: str, default_out: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_HelpFormatter)
    s = DEFAULT_SETUP
    p.add_argument("--widths", type=_int_list, nargs="+", default=None,
                   help=f"width parameters M (default {','.join(map(str, DEFAULT_WIDTHS))}; "
                        f"--quick: {','.join(map(str, QUICK_WIDTHS))})")
    p.add_argument("--seeds", type=int, default=None, help="network seeds per width (default 3; --quick: 3)")
    p.add_argument("--methods", type=_method_list, nargs="+", default=None,
                   help="methods to check (default: all): " + ", ".join(m.value for m in Method))
    p.add_argument("--activation", choices=("relu", "tanh", "erf"), default=s.activation)
    p.add_argument("--damping", type=float, default=DEFAULT_DAMPING,
                   help="damping rho of F_hat + rho I; keep it far below every kernel scale "
                        "(see derivations/_common.py)")
    p.add_argument("--kfac-damping", choices=[k.value for k in KFACDamping],
                   default=KFACDamping.FACTORS.value, help="how rho enters K-FAC")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 3; --quick: 2)")
    p.add_argument("--n-samples", type=int, default=s.n_samples, help="N training inputs")
    p.add_argument("--n-test", type=int, default=s.n_test, help="test inputs")
    p.add_argument("--input-dim", type=int, default=s.input_dim,
                   help="M_0 (K-FAC's alpha needs N <= M_0)")
    p.add_argument("--depth", type=int, default=s.depth, help="L layers")
    p.add_argument("--n-outputs", type=int, default=s.n_outputs, help="C outputs")
    p.add_argument("--sigma-w", type=float, default=s.sigma_w)
    p.add_argument("--sigma-b", type=float, default=s.sigma_b)
    p.add_argument("--data-seed", type=int, default=s.data_seed)
    p.add_argument("--out", default=default_out, help="report folder (report.md, results.json, PNGs)")
    p.add_argument("--quick", action="store_true", help="small sweep for smoke runs (< 60 s)")
    p.add_argument("--no-train", action="store_true", help="skip the training and test-prediction checks")
    p.add_argument("--no-extras", action="store_true",
                   help="skip the checks beyond the sweep (BTD for many L, K-FAC M_0 < N, relu vs tanh)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    c = DEFAULT_CRITERIA
    p.add_argument("--slope-window", type=float, nargs=2, default=list(c.slope_window),
                   metavar=("LO", "HI"), help="accepted log-log slopes of an M^-1/2 rate")
    p.add_argument("--spread-max", type=float, default=c.spread_max,
                   help="max/min of deviation*sqrt(M) across widths")
    p.add_argument("--exact-tol", type=float, default=c.exact_tol,
                   help="deviation below which a quantity is exact at any width")
    p.add_argument("--condition-min", type=float, default=c.condition_min,
                   help="the diagonal method's K must extrapolate (M -> inf) to at least this "
                        "condition number")
    return p


def config_from_args(args, default_methods=None):
    from ._sweep import SweepConfig

    widths = [w for group in args.widths for w in group] if args.widths else (
        QUICK_WIDTHS if args.quick else DEFAULT_WIDTHS)
    methods = ([m for group in args.methods for m in group] if args.methods
               else (tuple(Method) if default_methods is None else default_methods))
    setup = DEFAULT_SETUP.replace(n_samples=args.n_samples, n_test=args.n_test, input_dim=args.input_dim,
                                  depth=args.depth, n_outputs=args.n_outputs, activation=args.activation,
                                  sigma_w=args.sigma_w, sigma_b=args.sigma_b, data_seed=args.data_seed)
    criteria = Criteria(exact_tol=args.exact_tol, slope_window=tuple(sorted(args.slope_window)),
                        spread_max=args.spread_max, condition_min=args.condition_min)
    return SweepConfig(
        setup=setup, widths=tuple(widths),
        seeds=args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else 3),
        methods=tuple(dict.fromkeys(methods)), damping=args.damping,
        kfac_damping=KFACDamping.parse(args.kfac_damping),
        steps=args.steps if args.steps is not None else (QUICK_STEPS if args.quick else 3),
        train=not args.no_train, criteria=criteria, show_progress=not args.no_progress)


# -------------------------------------------------------------------- tables
def _rate_text(check: Check | None) -> str:
    if check is None:
        return "-"
    if check.kind == "exact":
        return f"exact at any width (max {fmt(check.extra.get('max_deviation'))})"
    if check.kind in ("rate", "non-isotropic") and check.rate is not None:
        return f"slope {check.rate.slope:+.2f} ± {fmt(check.rate.stderr, 2)}"
    return check.kind


def method_table(res, ctx, checks_by_name) -> str:
    from ._methods import alpha_text

    W = ctx.config.widths
    headers = (["method", "alpha (symbolic)", "alpha value"]
               + [f"alpha measured M={M}" for M in W]
               + [f"deviation M={M}" for M in W] + ["rate in M", "verdict"])
    rows = []
    for m, q in res.methods.items():
        sym, _ = alpha_text(ctx, m)
        vals = res.alpha_values.get(m) or [None] * len(W)
        uniq = {v for v in vals if v is not None}
        value = "-" if not uniq else (fmt(vals[0], 6) if len(uniq) == 1 else ", ".join(fmt(v, 6) for v in vals))
        a = stats(q["alpha_measured"])
        d = stats(q["deviation"])
        key = f"non-isotropy: {m.label}" if m is Method.DIAGONAL else f"kernel: {m.label}"
        chk = checks_by_name.get(key)
        if m is Method.DIAGONAL and chk is not None:
            rate = f"cond(K) -> {fmt(chk.extra.get('extrapolated_condition_number'))} (M -> inf)"
        else:
            rate = _rate_text(chk)
        if m in res.errors:
            rows.append([m.label, sym, value] + ["-"] * (2 * len(W)) + ["-", f"FAIL ({res.errors[m][:60]})"])
            continue
        rows.append([m.label, sym, value]
                    + [fmt_pm(a["mean"][i], a["std"][i], 5) for i in range(len(W))]
                    + [fmt_pm(d["mean"][i], d["std"][i]) for i in range(len(W))]
                    + [rate, chk.verdict if chk else "-"])
    return markdown_table(headers, rows)


def layer_table(res, ctx, checks_by_name) -> str:
    from .kernels import layer_names

    W = ctx.config.widths
    headers = (["kernel"] + [f"deviation M={M}" for M in W] + [f"dev*sqrt(M) M={M}" for M in W]
               + ["rate in M", "verdict"])
    rows = []
    for k, name in enumerate(layer_names(ctx.setup.depth)):
        st = stats(res.layer_deviation[:, :, k])
        chk = checks_by_name.get(f"kernels: {name}")
        rows.append([name] + [fmt_pm(st["mean"][i], st["std"][i]) for i in range(len(W))]
                    + [fmt(st["mean"][i] * np.sqrt(M)) for i, M in enumerate(W)]
                    + [_rate_text(chk), chk.verdict if chk else "-"])
    return markdown_table(headers, rows)


def training_table(res, ctx, checks_by_name) -> str:
    W = ctx.config.widths
    headers = (["method"] + [f"dynamics error M={M}" for M in W] + ["rate", "verdict"]
               + [f"test error M={M}" for M in W] + ["rate", "verdict"])
    rows = []
    for m, q in res.methods.items():
        if m in res.errors or np.all(np.isnan(q["dynamics_error"])):
            continue
        dy, te = stats(q["dynamics_error"]), stats(q["test_error"])
        c1 = checks_by_name.get(f"dynamics: {m.label}")
        c2 = checks_by_name.get(f"test predictions: {m.label}")
        rows.append([m.label] + [fmt_pm(dy["mean"][i], dy["std"][i]) for i in range(len(W))]
                    + [_rate_text(c1), c1.verdict if c1 else "-"]
                    + [fmt_pm(te["mean"][i], te["std"][i]) for i in range(len(W))]
                    + [_rate_text(c2), c2.verdict if c2 else "-"])
    return markdown_table(headers, rows)


def checks_table(checks) -> str:
    return markdown_table(["check", "verdict", "criterion", "measured"],
                          [[c.name, c.verdict, c.criterion, c.detail] for c in checks])


# ------------------------------------------------------------------- running
def _module(name: str):
    return importlib.import_module(f"derivations.{name}")


def collect_checks(res, ctx, sections) -> list[Check]:
    checks = []
    if "kernels" in sections:
        checks += _module("kernels").judge(res, ctx)
    if "methods" in sections:
        for m in res.methods:
            checks += _module(METHOD_MODULES[m]).judge(res, ctx)
    if "dynamics" in sections:
        checks += _module("dynamics").judge(res, ctx)
    if "test_predictions" in sections:
        checks += _module("test_predictions").judge(res, ctx)
    return checks


def collect_extras(res, ctx, quick: bool, progress_enabled: bool):
    extras, checks = [], []
    for m in res.methods:
        mod = _module(METHOD_MODULES[m])
        if not hasattr(mod, "extras"):
            continue
        if progress_enabled:
            print(f"[derivations] extra checks of {m.label} ...", file=sys.stderr, flush=True)
        try:
            for ex in mod.extras(ctx, res, quick):
                extras.append(ex)
                checks += ex.checks
        except Exception as exc:
            checks.append(Check(f"extras: {m.label}", False, "error", "the extra check ran",
                                f"{type(exc).__name__}: {exc}"))
    return extras, checks


def _plots(res, ctx, out: Path, checks_by_name) -> tuple[dict, str | None]:
    from . import _plots as P

    missing = P.matplotlib_missing()
    if missing:
        return {}, missing
    W = ctx.config.widths
    files = {}
    series = {}
    for m, q in res.methods.items():
        if m in res.errors:
            continue
        st = stats(q["deviation"])
        chk = checks_by_name.get(f"kernel: {m.label}")
        slope = chk.rate.slope if chk is not None and chk.rate is not None else None
        if chk is not None and chk.kind == "exact":
            slope = None
        series[m.label] = (st["mean"], st["std"], slope)
    if res.layer_deviation is not None:
        st = stats(res.layer_deviation[:, :, -1])
        chk = checks_by_name.get("kernels: Theta (NTK)")
        series["NTK Theta (per-layer sum)"] = (st["mean"], st["std"], chk.rate.slope if chk and chk.rate else None)
    if series:
        files["deviation"] = P.plot_deviation(out / "deviation_vs_width.png", W, series,
                                              "||K - limit||_F / ||limit||_F (mean over seeds; exact methods: "
                                              "damping level)")
    panels, scatter = {}, {}
    for m, curves in res.curves.items():
        lines = []
        for factor, c in curves.items():
            if factor == "test":
                scatter[m.label] = (c["predicted"], c["finite"])
            else:
                lines.append((f"eta = {factor:g}/alpha", c["finite_loss"], c["theory_loss"]))
        if lines:
            from .dynamics import training_not_applicable

            skip = " - not judged, see report" if training_not_applicable(m) else ""
            panels[f"{m.label} (M = {W[-1]}){skip}"] = lines
    if panels:
        files["training"] = P.plot_training(out / "training_loss.png", panels)
    if scatter:
        files["test_predictions"] = P.plot_test_predictions(
            out / "test_predictions.png", scatter,
            f"test outputs f_T(X_test), T = {ctx.config.steps}, eta = 1/alpha, M = {W[-1]}")
    return {k: Path(v).name for k, v in files.items() if v}, None


def results_dict(res, ctx, checks, extras, command, plots, plots_skipped, wall) -> dict:
    from ._methods import alpha_text

    cfg = ctx.config
    methods = {}
    for m, q in res.methods.items():
        sym, reason = alpha_text(ctx, m)
        try:
            import sympy

            a = getattr(ctx.derivation(m), "alpha", None)
            latex = sympy.latex(a) if a is not None else None
        except Exception:
            latex = None
        entry = dict(label=m.label, alpha_symbolic=sym, alpha_latex=latex, alpha_reason=reason,
                     alpha_value=res.alpha_values.get(m), notes=res.notes.get(m, []),
                     error=res.errors.get(m))
        for k, v in q.items():
            entry[k] = stats(v)
        methods[m.value] = entry
    layers = None
    if res.layer_deviation is not None:
        from .kernels import layer_names

        st = [stats(res.layer_deviation[:, :, k]) for k in range(res.layer_deviation.shape[2])]
        layers = dict(names=layer_names(ctx.setup.depth), mean=[s["mean"] for s in st],
                      std=[s["std"] for s in st], per_seed=res.layer_deviation)
    return dict(schema=SCHEMA, command=command, passed=all(c.passed for c in checks),
                wall_time_s=wall, sweep_time_s=res.seconds,
                config=dict(setup=ctx.setup, widths=cfg.widths, seeds=cfg.seeds, damping=cfg.damping,
                            kfac_damping=cfg.kfac_damping, steps=cfg.steps, criteria=cfg.criteria,
                            methods=[m.value for m in cfg.methods]),
                methods=methods, layer_kernels=layers,
                extras={e.name: dict(title=e.title, data=e.data) for e in extras},
                checks=[c.as_dict() for c in checks], plots=plots, plots_skipped=plots_skipped)


def _derivation_sections(ctx, methods, kind: str) -> list[str]:
    out = []
    for m in methods:
        try:
            d = ctx.derivation(m)
            body = d.latex() if kind == "latex" else d.explain()
        except Exception as exc:
            body = f"(derivation unavailable: {type(exc).__name__}: {exc})"
        out.append((m, body))
    return out


def _header(ctx) -> str:
    cfg = ctx.config
    s = ctx.setup
    kfac_note = ("K-FAC's isotropy needs N <= M_0: holds" if s.n_samples <= s.input_dim
                 else "K-FAC's isotropy needs N <= M_0: VIOLATED (first layer gives N diag(leverage))")
    return (f"Set-up: {s.describe()}.\n"
            f"Widths M = {', '.join(map(str, cfg.widths))} (hidden widths "
            f"{'M' if s.width_ratios is None else ', '.join(f'{a:g} M' for a in s.width_ratios)}), "
            f"{cfg.seeds} network seed(s) per width, damping rho = {cfg.damping:g} "
            f"(K-FAC: {cfg.kfac_damping.value}), training steps {cfg.steps}.\n"
            f"{kfac_note}.\n"
            f"Damping: rho is chosen far below every kernel scale the methods invert, so the "
            f"damping error (<= {cfg.criteria.exact_tol:g}) stays below the width effects (>= 1e-2 "
            f"at M <= 4096); quantities with deviation <= {cfg.criteria.exact_tol:g} at every width are "
            f"'exact at any width'.\n"
            f"Rate criterion: {cfg.criteria.describe_rate()}.")


def write_report(out: Path, res, ctx, checks, extras, tables, command, wall, make_plots=True,
                 sections=("kernels", "methods", "dynamics", "test_predictions")):
    out.mkdir(parents=True, exist_ok=True)
    by_name = {c.name: c for c in checks}
    plots, skipped = ({}, "disabled (--no-plots)")
    if make_plots:
        plots, skipped = _plots(res, ctx, out, by_name)
    n_fail = sum(not c.passed for c in checks)
    lines = ["# ngdsym derivation checker", "",
             f"Command: `{command}`  ", f"Wall time: {wall:.1f} s (sweep {res.seconds:.1f} s)  ",
             f"Result: **{'PASS' if n_fail == 0 else 'FAIL'}** "
             f"({len(checks) - n_fail}/{len(checks)} checks passed)", "", _header(ctx).replace("\n", "  \n"),
             ""]
    for title, table in tables:
        lines += [f"## {title}", "", table, ""]
    for ex in extras:
        lines += [f"## {ex.title}", "", ex.markdown, ""]
    lines += ["## Checks", "", checks_table(checks), ""]
    if plots:
        lines += ["## Plots", ""]
        for name, file in plots.items():
            lines += [f"![{name}]({file})", ""]
    elif skipped:
        lines += ["## Plots", "", f"Plots skipped: {skipped}", ""]
    notes = [f"- {m.label}: {n}" for m, ns in res.notes.items() for n in ns]
    if notes:
        lines += ["## Notes", ""] + notes + [""]
    lines += ["## Derivations", ""]
    if "kernels" in sections:
        from .kernels import EQUATIONS, recursion

        try:
            rec = recursion(ctx.setup.activation, "latex")
        except Exception as exc:
            rec = rf"\text{{kernel recursion unavailable: {type(exc).__name__}}}"
        lines += ["### infinite-width kernels (theory.md section 4)", "", "$$", r"\begin{aligned}", EQUATIONS,
                  r"\end{aligned}", "$$", "", "$$", r"\begin{gathered}", rec, r"\end{gathered}", "$$", ""]
    for m, body in _derivation_sections(ctx, res.methods, "latex"):
        if body.startswith("(derivation unavailable"):
            lines += [f"### {m.label}", "", body, ""]
        else:
            lines += [f"### {m.label}", "", "$$", r"\begin{aligned}", body, r"\end{aligned}", "$$", ""]
    (out / "report.md").write_text("\n".join(lines))
    write_json(out / "results.json",
               results_dict(res, ctx, checks, extras, command, plots, skipped, wall))
    return skipped


def run(config, *, sections, out=None, quick=False, explain=False, extras=True, plots=True,
        command="python -m derivations", stream=None) -> int:
    """Run the sweep and the checks of ``sections``; print tables; write the report; exit status."""
    from ._common import MissingDependency

    stream = sys.stdout if stream is None else stream  # resolved now: tests capture sys.stdout
    try:
        return _run(config, sections=sections, out=out, quick=quick, explain=explain, extras=extras,
                    plots=plots, command=command, stream=stream)
    except MissingDependency as exc:  # a name of API.md is missing on the dependencies' side
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(config, *, sections, out, quick, explain, extras, plots, command, stream) -> int:
    from ._sweep import Context, run_sweep

    t0 = time.perf_counter()
    ctx = Context(config)
    print(_header(ctx), file=stream)
    if explain and "kernels" in sections:
        from .kernels import recursion

        print(f"\n=== derivation: infinite-width kernels ({config.setup.activation}) ===\n"
              f"{recursion(config.setup.activation)}", file=stream)
    if explain:
        for m, body in _derivation_sections(ctx, config.methods, "text"):
            print(f"\n=== derivation: {m.label} ===\n{body}", file=stream)
    # the derivations first (they may take a few seconds of SymPy), then the sweep
    for m in config.methods:
        try:
            ctx.derivation(m)
        except Exception:
            pass  # reported per method by the sweep
    res, ctx = run_sweep(config, ctx)
    checks = collect_checks(res, ctx, sections)
    ex_list = []
    if extras and "methods" in sections:
        ex_list, ex_checks = collect_extras(res, ctx, quick, config.show_progress)
        checks += ex_checks
    by_name = {c.name: c for c in checks}
    tables = []
    if "methods" in sections and res.methods:
        tables.append(("Preconditioned kernel K at finite width vs its infinite-width form",
                       method_table(res, ctx, by_name)))
    if "kernels" in sections and res.layer_deviation is not None:
        tables.append(("Per-layer NTKs vs the infinite-width kernels", layer_table(res, ctx, by_name)))
    if ({"dynamics", "test_predictions"} & set(sections)) and config.train:
        tables.append((f"Training (f_t - y vs (1 - alpha eta)^t (f_0 - y)) and test predictions "
                       f"(vs Derivation.predict_test), {config.steps} steps", training_table(res, ctx, by_name)))
    for title, table in tables:
        print(f"\n## {title}\n\n{table}", file=stream)
    for ex in ex_list:
        print(f"\n## {ex.title}\n\n{ex.markdown}", file=stream)
    wall = time.perf_counter() - t0
    n_fail = sum(not c.passed for c in checks)
    print(f"\n## Checks: {len(checks) - n_fail}/{len(checks)} passed", file=stream)
    for c in checks:
        if not c.passed or explain:
            print(f"- {c.verdict} {c.name}: {c.detail}\n    criterion: {c.criterion}", file=stream)
    for m, ns in res.notes.items():
        for n in ns:
            print(f"- note, {m.label}: {n}", file=stream)
    if out is not None:
        skipped = write_report(Path(out), res, ctx, checks, ex_list, tables, command, wall, plots, sections)
        if skipped and plots:
            print(f"\n{skipped}", file=stream)
        print(f"\nReport written to {Path(out) / 'report.md'} (and results.json, PNGs)", file=stream)
    print(f"Wall time {wall:.1f} s; {'ALL CHECKS PASS' if n_fail == 0 else f'{n_fail} CHECK(S) FAILED'}",
          file=stream)
    return 0 if n_fail == 0 else 1


ALL_SECTIONS = ("kernels", "methods", "dynamics", "test_predictions")


def main(argv=None) -> int:
    """``python -m derivations``: every derivation, every check, the report folder."""
    parser = build_parser("python -m derivations",
                          "Derive every NGD method (ngdsym), check it on finite networks (numeric) as "
                          "the width grows, and write a report.", default_out="report")
    args = parser.parse_args(argv)
    config = config_from_args(args)
    command = "python -m derivations " + " ".join(sys.argv[1:] if argv is None else argv)
    return run(config, sections=ALL_SECTIONS, out=args.out, quick=args.quick,
               extras=not args.no_extras, plots=not args.no_plots, command=command.strip())


def run_module(module_name: str, argv=None, *, methods, sections=("methods", "dynamics", "test_predictions")) -> int:
    """``python -m derivations.<name>``: the derivation of ``methods`` and the checks of ``sections``."""
    mod = importlib.import_module(module_name)
    short = module_name.rsplit(".", 1)[-1]
    parser = build_parser(f"python -m derivations.{short}",
                          (mod.__doc__ or "").strip().splitlines()[0], default_out=None)
    args = parser.parse_args(argv)
    config = config_from_args(args, default_methods=methods)
    if "kernels" not in sections:
        config.layer_kernels = False
    if not ({"dynamics", "test_predictions"} & set(sections)):
        config.train = False
    print((mod.__doc__ or "").strip() + "\n")
    command = f"python -m derivations.{short} " + " ".join(sys.argv[1:] if argv is None else argv)
    return run(config, sections=sections, out=args.out, quick=args.quick,
               explain=bool(methods) or "kernels" in sections,
               extras=not args.no_extras, plots=not args.no_plots, command=command.strip())
