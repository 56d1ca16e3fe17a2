"""Per-layer NTKs of finite networks against the infinite-width kernels.

theory.md section 4: ``Theta_l = Bt_l o S_l`` with the forward recursion
``S_1 = sigma_w^2 x.x'/M_0 + sigma_b^2``, ``S_l = sigma_w^2 E[phi(u) phi(u')] + sigma_b^2``
and the backward one ``Bt_L = 1``, ``Bt_l = sigma_w^2 Sd_l o Bt_{l+1}``
(``ngdsym.infinite_width_kernels``).  The empirical ``Theta_l = J_l J_l^T``
(``numeric.layer_kernels``, from the Hadamard structure of theory.md section 1)
is a sum over ``M`` units of i.i.d. terms, so its relative error falls like
``M^{-1/2}``; the first layer's forward factor is exact, every other factor
fluctuates.

Run ``python -m derivations.kernels`` for the table and the verdict.
"""

from __future__ import annotations

from ._common import Check, judge_convergence

__all__ = ["EQUATIONS", "recursion", "layer_names", "judge", "main"]

EQUATIONS = r"""
\Theta_l(x,x') &= \tilde B_l(x,x')\, S_l(x,x'), \\
S_1(x,x') &= \sigma_w^2\, x\cdot x'/M_0 + \sigma_b^2, \qquad
S_l = \sigma_w^2\, \mathbb{E}[\phi(u)\phi(u')] + \sigma_b^2,\ (u,u') \sim \mathcal N(0, S_{l-1}), \\
\tilde B_L &= 1, \qquad \tilde B_l = \sigma_w^2\, \dot S_l \circ \tilde B_{l+1},\quad
\dot S_l = \mathbb{E}[\phi'(u)\phi'(u')].
""".strip()


def recursion(activation: str, kind: str = "text") -> str:
    """The derived Gaussian expectations of ``activation`` (``ngdsym.kernels.kernel_recursion``)."""
    from ._common import require

    rec = require("ngdsym.kernels", "kernel_recursion", "issue 3")(activation)
    return rec.latex() if kind == "latex" else rec.text()


def layer_names(depth: int) -> list[str]:
    return [f"Theta_{l}" for l in range(1, depth + 1)] + ["Theta (NTK)"]


def judge(res, ctx) -> list[Check]:
    """One rate check per layer kernel and one for the NTK (property 1 of issue 4).

    The per-layer kernels are never exact at finite width, so ``allow_exact`` is off.
    """
    if res.layer_deviation is None:
        return []
    checks = []
    for k, name in enumerate(layer_names(ctx.setup.depth)):
        c = judge_convergence(f"kernels: {name}", ctx.config.widths, res.layer_deviation[:, :, k],
                              ctx.config.criteria, allow_exact=False)
        c.criterion = ("||Theta_emp - Theta_inf||_F / ||Theta_inf||_F falls with M: " + c.criterion)
        checks.append(c)
    return checks


def main(argv=None) -> int:
    from ._cli import run_module

    return run_module(__name__, argv, methods=(), sections=("kernels",))


if __name__ == "__main__":
    raise SystemExit(main())
