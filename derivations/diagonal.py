"""The counterexample: element-wise diagonal NGD is not isotropic.

theory.md section 2: ``F_hat = diag(F)`` gives
``K(x, x') = (1/N) sum_p J_p(x) J_p(x') / (F_pp + rho)``, a weighted NTK that is
not proportional to ``I``: its condition number stays away from 1 as the width
grows, so its convergence is governed by a spectrum like GD's [paper: this is
why the diagonal approximation performs poorly].  Verdict: condition number of
``K`` bounded away from 1 at every width and ``K`` not converging to a multiple
of ``I``; if ``ngdsym`` supplies ``Derivation.kernel_limit`` for it, ``K`` must
also converge to that at rate ``M^{-1/2}``.

Run ``python -m derivations.diagonal``.
"""

from __future__ import annotations

import numpy as np

from ngdsym.methods import Method

from ._common import Check, judge_non_isotropic
from ._methods import judge_kernel

METHOD = Method.DIAGONAL


def judge(res, ctx):
    name = f"non-isotropy: {METHOD.label}"
    if METHOD in res.errors:
        return [Check(name, False, "error", "the method could be measured", res.errors[METHOD])]
    q = res.methods[METHOD]
    checks = [judge_non_isotropic(name, ctx.config.widths, q["condition_number"],
                                  q["isotropy_deviation"], ctx.config.criteria)]
    if not np.all(np.isnan(q["deviation"])):
        checks += judge_kernel(res, ctx, METHOD)
    return checks


def main(argv=None) -> int:
    from ._cli import run_module

    return run_module(__name__, argv, methods=(METHOD,))


if __name__ == "__main__":
    raise SystemExit(main())
