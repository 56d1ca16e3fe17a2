"""Gradient descent, the baseline: ``K = Theta / N -> Theta_inf / N`` (not isotropic).

theory.md sections 1 and 4: with ``F_hat + rho I := I`` the function-space
preconditioner is the NTK itself divided by ``N``; it converges to the
infinite-width NTK at rate ``M^{-1/2}`` and its spectrum (not a single
``alpha``) governs convergence -- the contrast the isotropic methods remove.

Run ``python -m derivations.gd``.
"""

from __future__ import annotations

from ngdsym.methods import Method

from ._methods import judge_kernel

METHOD = Method.GD


def judge(res, ctx):
    return judge_kernel(res, ctx, METHOD)


def main(argv=None) -> int:
    from ._cli import run_module

    return run_module(__name__, argv, methods=(METHOD,))


if __name__ == "__main__":
    raise SystemExit(main())
