"""Block tri-diagonal NGD and its constant ``alpha(L) = 1^T T^+ 1`` for many depths.

theory.md section 2: keeping the blocks ``F_ll'`` with ``|l - l'| <= 1``, the
infinite-width kernel solves a system with the ``L x L`` tri-diagonal matrix of
ones ``T``; layer ``l`` is updated with weight ``c_l``, ``c = T^+ 1``, and
``alpha = 1^T T^+ 1``.  ``det T_L = det T_{L-1} - det T_{L-2}`` makes ``T``
singular iff ``L = 3s + 2``; there ``1`` still lies in the range of ``T`` and the
``rho -> 0`` limit is the pseudo-inverse one [derived: ``alpha = ceil(L/3)`` in
every case].  At finite width the same algebra holds exactly (per-layer kernels
invertible), so ``K = alpha I`` up to the damping error at any width.

This module checks the default depth in the sweep and, beyond it, ``alpha(L)``
for many ``L`` (:func:`constant_for_many_depths`): ``ngdsym.tridiagonal`` and
``Derivation.alpha_value`` against ``trace(K) / N`` of finite networks.

Run ``python -m derivations.block_tridiagonal``.
"""

from __future__ import annotations

import math

import numpy as np

from ngdsym.methods import Method

from ._common import Check, Extra, relative_frobenius, require
from ._methods import judge_kernel
from ._report import fmt, markdown_table

METHOD = Method.BLOCK_TRIDIAGONAL

#: Depths of the symbolic table and of the finite-width check (both include the
#: singular cases L = 2, 5, 8, 11).
SYMBOLIC_DEPTHS = tuple(range(1, 13))
NUMERIC_DEPTHS = (2, 3, 4, 5, 6, 7, 8)
QUICK_NUMERIC_DEPTHS = (2, 3, 4, 5)


def judge(res, ctx):
    return judge_kernel(res, ctx, METHOD)


def constant_for_many_depths(ctx, quick: bool = False, width: int = 256, n_samples: int = 8) -> Extra:
    """``alpha(L)``: symbolic (``ngdsym.tridiagonal``), ``Derivation.alpha_value`` and measured.

    The finite-width measurement uses one network per depth (width ``width``,
    ``n_samples`` inputs): the claim is exact at any width, so one width
    suffices; the verdict is ``||K - alpha I||_F / ||alpha I||_F <= exact_tol``.
    """
    from numeric import MLP

    from ._sweep import Context, SweepConfig

    tri = require("ngdsym.tridiagonal", "btd_alpha", "issue 3")
    weights = require("ngdsym.tridiagonal", "btd_weights", "issue 3")
    ones = require("ngdsym.tridiagonal", "tridiagonal_ones", "issue 3")
    pk = require("numeric", "preconditioned_kernel", "issue 2")
    cfg = ctx.config
    depths = QUICK_NUMERIC_DEPTHS if quick else NUMERIC_DEPTHS
    rows, data, checks = [], {}, []
    for L in SYMBOLIC_DEPTHS:
        import sympy

        T = sympy.Matrix(ones(L))
        a_sym = tri(L)
        c = weights(L)
        entry = dict(alpha=str(a_sym), weights=[str(x) for x in c], det_T=str(T.det()),
                     singular=bool(T.det() == 0), ceil_L_over_3=math.ceil(L / 3))
        measured = dev = a_value = None
        if L in depths:
            setup = ctx.setup.replace(depth=L, n_samples=n_samples, input_dim=max(2 * n_samples, 16),
                                      width_ratios=None)
            sub = Context(SweepConfig(setup=setup, widths=(width, 2 * width), seeds=1, methods=(METHOD,),
                                      damping=cfg.damping, kfac_damping=cfg.kfac_damping,
                                      criteria=cfg.criteria, show_progress=False))
            net = MLP(setup.widths(width), seed=0, **setup.network_kwargs())
            K = np.asarray(pk(net, sub.X, METHOD, cfg.damping), dtype=float)
            a_value = sub.alpha(METHOD, width)
            measured = float(np.trace(K) / K.shape[0])
            dev = relative_frobenius(K, a_value * np.eye(K.shape[0]))
            entry.update(alpha_value=a_value, alpha_measured=measured, deviation=dev)
            ok = dev <= cfg.criteria.exact_tol and abs(a_value - float(a_sym)) == 0
            checks.append(Check(
                f"BTD constant: L = {L}", bool(ok), "exact",
                f"||K - alpha I||_F/||alpha I||_F <= {cfg.criteria.exact_tol:g} at M = {width}, "
                "and Derivation.alpha_value == ngdsym.tridiagonal.btd_alpha",
                f"alpha_value {fmt(a_value)}, btd_alpha {a_sym}, measured {fmt(measured, 6)}, "
                f"deviation {fmt(dev)}"))
        data[L] = entry
        rows.append([L, entry["det_T"], "yes" if entry["singular"] else "no",
                     "(" + ", ".join(entry["weights"]) + ")", a_sym, entry["ceil_L_over_3"],
                     fmt(a_value), fmt(measured, 6), fmt(dev)])
    md = markdown_table(["L", "det T", "singular", "c = T^+ 1", "alpha = 1^T c", "ceil(L/3)",
                         "Derivation.alpha_value", f"trace(K)/N at M = {width}", "deviation"], rows)
    agree = all(tri(L) == data[L]["ceil_L_over_3"] for L in data)  # exact Integer == int
    md += ("\n\nalpha(L) = ceil(L/3) for every L listed: "
           + ("yes" if agree else "NO (see the table)") + ".")
    return Extra("btd_constant", "Block tri-diagonal: alpha(L) for many depths", md,
                 data=dict(depths=data, width=width, n_samples=n_samples, ceil_agrees=agree),
                 checks=checks)


def extras(ctx, res=None, quick: bool = False) -> list[Extra]:
    return [constant_for_many_depths(ctx, quick)]


def main(argv=None) -> int:
    from ._cli import run_module

    return run_module(__name__, argv, methods=(METHOD,))


if __name__ == "__main__":
    raise SystemExit(main())
