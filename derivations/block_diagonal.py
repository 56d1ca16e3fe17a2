"""Layer-wise block-diagonal NGD: ``K = sum_l Theta_l (Theta_l + N rho)^{-1} -> L I``.

theory.md section 2: each diagonal block ``F_ll = J_l^T J_l / N`` acts on its own
layer, so by the push-through identity layer ``l`` contributes
``Theta_l (Theta_l + N rho)^{-1} -> I`` whenever ``Theta_l`` is invertible (for
``l = 1`` even when ``M_0 < N``, by the Schur product theorem).  Hence
``alpha = L`` for any ``sigma_w, sigma_b, phi, N, M``.  Expected verdict: exact
at any width.

Run ``python -m derivations.block_diagonal``.
"""

from __future__ import annotations

from ngdsym.methods import Method

from ._methods import judge_kernel

METHOD = Method.BLOCK_DIAGONAL


def judge(res, ctx):
    return judge_kernel(res, ctx, METHOD)


def main(argv=None) -> int:
    from ._cli import run_module

    return run_module(__name__, argv, methods=(METHOD,))


if __name__ == "__main__":
    raise SystemExit(main())
