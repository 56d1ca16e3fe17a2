"""Exact NGD: ``K = Theta (Theta + N rho)^{-1} -> I`` (alpha = 1).

theory.md section 2: with ``F = J^T J / N`` the push-through identity gives
``K = J (J^T J / N + rho I)^{-1} J^T / N = Theta (Theta + N rho I)^{-1}``, which is
the identity as ``rho -> 0`` whenever the NTK ``Theta`` is invertible -- at any
width.  Width only matters for keeping ``J`` frozen during training
(:mod:`derivations.dynamics`).  Expected verdict: exact at any width.

Run ``python -m derivations.exact``.
"""

from __future__ import annotations

from ngdsym.methods import Method

from ._methods import judge_kernel

METHOD = Method.EXACT


def judge(res, ctx):
    return judge_kernel(res, ctx, METHOD)


def main(argv=None) -> int:
    from ._cli import run_module

    return run_module(__name__, argv, methods=(METHOD,))


if __name__ == "__main__":
    raise SystemExit(main())
