"""K-FAC: ``alpha = N (L - 1) + 1`` when ``N <= M_0``, and the first-layer case ``M_0 < N``.

theory.md section 2: with ``F_hat = B_l (x) A_{l-1}`` per layer and damping on
each factor, the push-through identity applied to each factor gives layer
``l``'s kernel ``N [Bt_l (Bt_l + N sqrt(rho))^{-1}] o [Q_{l-1} (Q_{l-1} + N sqrt(rho))^{-1}]``,
i.e. ``N (P^D_l o P^H_{l-1})`` as ``rho -> 0`` (projections onto the row spaces
of the backward and forward feature matrices).  A hidden layer with
``N C <= M_l`` and ``N <= M_{l-1}`` contributes ``N I``; the output layer
(``B_L = I_C``) contributes ``I``; hence ``alpha = N (L - 1) + 1`` [derived; the
released code uses ``N L``].  The condition ``N <= M_0`` is why the default
problem has ``M_0 = 32 >= N = 16``.

If ``M_0 < N`` the first layer contributes ``N diag(leverage_n)`` (leverages of
the input Gram, summing to ``rank = M_0``): not isotropic.
:func:`first_layer_case` checks ``K`` of finite networks with ``M_0 = 8 < N = 16``
against ``Derivation.kernel_limit`` of that structure.

Run ``python -m derivations.kfac``.
"""

from __future__ import annotations

import numpy as np

from ngdsym.methods import Method

from ._common import Check, Extra, relative_frobenius, require
from ._methods import judge_kernel
from ._report import fmt, markdown_table

METHOD = Method.KFAC


def judge(res, ctx):
    return judge_kernel(res, ctx, METHOD)


def first_layer_limit(ctx, M: int):
    """``Derivation.kernel_limit`` for the ``M_0 < N`` structure of ``ctx.setup`` at width ``M``.

    The derivation is made with the concrete widths and sample count (so that
    ``ngdsym`` sees ``M_0 < N``); returns ``(limit, source)``.
    """
    derive = require("ngdsym", "derive", "issue 3")
    s = ctx.setup
    d = derive(METHOD, depth=s.depth, n_samples=s.n_samples, n_outputs=s.n_outputs,
               widths=s.widths(M), activation=s.activation, kfac_damping=ctx.config.kfac_damping)
    if getattr(d, "alpha", None) is not None:
        n = s.n_samples * s.n_outputs
        return float(d.alpha_value(**s.structure(M))) * np.eye(n), "alpha I (derivation claims isotropy)"
    return np.asarray(d.kernel_limit(ctx.infinite("train")), dtype=float), "Derivation.kernel_limit"


def first_layer_case(ctx, quick: bool = False, input_dim: int = 8) -> Extra:
    """``M_0 < N``: finite-width K-FAC kernel against the derived non-isotropic limit."""
    from numeric import MLP

    from ._sweep import Context, SweepConfig

    pk = require("numeric", "preconditioned_kernel", "issue 2")
    cfg = ctx.config
    setup = ctx.setup.replace(input_dim=input_dim)
    if setup.n_samples <= input_dim:
        setup = setup.replace(n_samples=2 * input_dim)
    widths = (128, 512) if quick else (256, 1024)
    sub = Context(SweepConfig(setup=setup, widths=widths, seeds=1, methods=(METHOD,), damping=cfg.damping,
                              kfac_damping=cfg.kfac_damping, criteria=cfg.criteria,
                              show_progress=False))
    rows, devs, data = [], [], {}
    source = ""
    for M in widths:
        net = MLP(setup.widths(M), seed=0, **setup.network_kwargs())
        K = np.asarray(pk(net, sub.X, METHOD, cfg.damping, kfac_damping=cfg.kfac_damping), dtype=float)
        limit, source = first_layer_limit(sub, M)
        dev = relative_frobenius(K, limit)
        diag = np.diag(K)
        devs.append(dev)
        data[M] = dict(deviation=dev, diag_min=float(diag.min()), diag_max=float(diag.max()),
                       limit_diag=np.diag(limit).tolist(), K_diag=diag.tolist())
        rows.append([M, fmt(diag.min()), fmt(diag.max()), fmt(np.diag(limit).min()),
                     fmt(np.diag(limit).max()), fmt(dev)])
    worst = max(devs)
    ok = worst <= cfg.criteria.exact_tol
    check = Check("K-FAC first layer M_0 < N", bool(ok), "exact",
                  f"||K - limit||_F / ||limit||_F <= {cfg.criteria.exact_tol:g} at every width "
                  f"(limit: {source}; at finite width the hidden projections are exact, the "
                  "first layer's is the leverage diagonal)",
                  f"deviations {', '.join(fmt(d) for d in devs)}")
    md = (f"{setup.describe()} (M_0 = {setup.input_dim} < N = {setup.n_samples}); limit: {source}.\n\n"
          + markdown_table(["M", "min K_nn", "max K_nn", "min limit_nn", "max limit_nn", "deviation"], rows))
    return Extra("kfac_first_layer", "K-FAC: first layer with M_0 < N", md,
                 data=dict(input_dim=setup.input_dim, n_samples=setup.n_samples, source=source,
                           widths=data), checks=[check])


def extras(ctx, res=None, quick: bool = False) -> list[Extra]:
    return [first_layer_case(ctx, quick)]


def main(argv=None) -> int:
    from ._cli import run_module

    return run_module(__name__, argv, methods=(METHOD,))


if __name__ == "__main__":
    raise SystemExit(main())
