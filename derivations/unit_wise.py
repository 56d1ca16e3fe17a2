"""Unit-wise NGD (C = 1): ``alpha = gamma sum_{l<L} M_l + 1``, relu against tanh.

theory.md section 2: each unit's block gives ``Theta_{l,i} (Theta_{l,i} + N rho)^{-1}``
with ``Theta_{l,i} = D_{l,i} Qbar D_{l,i}``; as ``rho -> 0`` it is the projection onto
the samples where ``phi'(u_{l,i}(x_n)) != 0``, so ``K -> diag_n(a_n)`` with
``a_n = sum_{l<L} #{i : phi'(u_{l,i}(x_n)) != 0} + 1`` (the output unit's block is
exact).  For tanh (``phi' > 0``) every unit counts: ``K = (sum_l M_l + 1) I`` at any
width.  For relu, ``gamma = 1/2`` and ``a_n`` fluctuates with relative size
``O(M^{-1/2})``.  Needs C = 1 and damping far below the per-unit Gram scale
(``O(1/(M N))``).  :func:`relu_vs_tanh` measures both.

Training: at such damping the per-unit inverses are huge and the finite
network's NGD steps leave the linear regime (measured: at ``M = 1024``,
``rho = 1e-14``, the loss after one step at ``eta = 1/alpha`` is *larger* than
``L_0``, while the linearised model converges in one step).  theory.md section 5
bounds the deviation by ``A^3 rho^{-6} / sqrt(M)``, which says nothing at
accessible widths for such ``rho``; the dynamics and test-prediction checks are
therefore reported but not judged for unit-wise (``TRAINING_NOT_APPLICABLE``).

Run ``python -m derivations.unit_wise``.
"""

from __future__ import annotations

from ngdsym.methods import Method

from ._common import Extra
from ._methods import judge_kernel
from ._report import fmt, fmt_pm, markdown_table, stats

METHOD = Method.UNIT_WISE

#: The finite-network training claim is not tested (see the module docstring).
TRAINING_NOT_APPLICABLE = (
    "finite-network unit-wise training follows (1 - alpha eta)^t only when M is large against the "
    "deviation bound A^3 rho^-6 / sqrt(M) (theory.md section 5, issue 5), which is vacuous at the "
    "damping that isotropy needs (rho << per-unit Gram scale 1/(M N)); the measured error is reported")

#: The two activations compared (issue 4: "the unit-wise case for relu vs tanh").
COMPARED_ACTIVATIONS = ("tanh", "relu")


def expected_kind(activation: str) -> str:
    """``"exact"`` when ``gamma = P[phi'(u) != 0] = 1`` (every unit active at every sample,
    so ``K = (sum_l M_l + 1) I`` at any width), else ``"rate"`` (active counts fluctuate
    like ``M^{-1/2}``); ``gamma`` is derived by :func:`ngdsym.activation_gamma`."""
    from ngdsym import activation_gamma

    return "exact" if activation_gamma(activation)[0] == 1 else "rate"


def judge(res, ctx):
    return judge_kernel(res, ctx, METHOD)


def relu_vs_tanh(ctx, res=None, quick: bool = False) -> Extra:
    """Unit-wise kernels for relu and tanh over the sweep's widths (one seed each
    unless reused from the main sweep)."""
    from ._sweep import SweepConfig, run_sweep

    cfg = ctx.config
    rows, data, checks = [], {}, []
    for act in COMPARED_ACTIVATIONS:
        kind = expected_kind(act)
        if res is not None and ctx.setup.activation == act and METHOD in res.methods:
            sub_res, sub_ctx = res, ctx
        else:
            sub = SweepConfig(setup=ctx.setup.replace(activation=act), widths=cfg.widths,
                              seeds=1 if quick else min(cfg.seeds, 2), methods=(METHOD,),
                              damping=cfg.damping, kfac_damping=cfg.kfac_damping, train=False,
                              layer_kernels=False, criteria=cfg.criteria,
                              show_progress=cfg.show_progress)
            sub_res, sub_ctx = run_sweep(sub)
        c = judge_kernel(sub_res, sub_ctx, METHOD)[0]
        c.name = f"unit-wise {act}: K -> alpha I ({'exact at any width' if kind == 'exact' else 'rate'})"
        if c.kind in ("exact", "rate") and c.kind != kind:
            c.passed = False
            c.detail += f"; expected {kind} for {act}"
        c.criterion += f"; theory: {kind} for {act}"
        checks.append(c)
        if METHOD in sub_res.errors:
            continue
        q = sub_res.methods[METHOD]
        a = stats(q["alpha_measured"])
        d = stats(q["deviation"])
        alphas = sub_res.alpha_values.get(METHOD, [None] * len(cfg.widths))
        for i, M in enumerate(cfg.widths):
            rows.append([act, M, fmt(alphas[i]), fmt_pm(a["mean"][i], a["std"][i], 5),
                         fmt_pm(d["mean"][i], d["std"][i])])
        data[act] = dict(alpha_value=alphas, alpha_measured=a, deviation=d, verdict=c.verdict)
    md = markdown_table(["activation", "M", "alpha (derived)", "trace(K)/N", "||K - alpha I||/||alpha I||"],
                        rows)
    return Extra("unit_wise_relu_tanh", "Unit-wise: relu against tanh", md, data=data, checks=checks)


def extras(ctx, res=None, quick: bool = False) -> list[Extra]:
    return [relu_vs_tanh(ctx, res, quick)]


def main(argv=None) -> int:
    from ._cli import run_module

    return run_module(__name__, argv, methods=(METHOD,))


if __name__ == "__main__":
    raise SystemExit(main())
