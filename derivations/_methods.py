"""What every method's module shares: the kernel verdict and its table row.

theory.md section 2.  For a method with an isotropy constant the closed form is
``alpha I`` (``Derivation.alpha_value`` at the sweep's widths); for the others it
is ``Derivation.kernel_limit`` evaluated with the infinite-width kernels.  The
deviation of the finite-width ``K`` from it is judged by
:func:`derivations._common.judge_convergence`: exact at any width (deviation at
the damping level) or falling like ``M^{-1/2}``.
"""

from __future__ import annotations

import numpy as np

from ngdsym.methods import Method

from ._common import Check, judge_convergence

__all__ = ["judge_kernel", "alpha_text"]


def judge_kernel(res, ctx, method: Method) -> list[Check]:
    """The kernel check of ``method``: ``K(M) -> closed form``."""
    name = f"kernel: {method.label}"
    if method in res.errors:
        return [Check(name, False, "error", "the method could be derived and measured",
                      res.errors[method])]
    q = res.methods[method]
    dev = q["deviation"]
    if np.all(np.isnan(dev)):
        notes = "; ".join(res.notes.get(method, [])) or "no closed form"
        return [Check(name, True, "skipped", "K -> Derivation.kernel_limit", notes)]
    alpha = res.alpha_values.get(method)
    target = "alpha I" if alpha and alpha[0] is not None else "Derivation.kernel_limit"
    c = judge_convergence(name, ctx.config.widths, dev, ctx.config.criteria)
    c.criterion = f"||K - {target}||_F / ||{target}||_F: " + c.criterion
    return [c]


def alpha_text(ctx, method: Method) -> tuple[str, str]:
    """``(symbolic alpha, its reason or '')`` as plain text."""
    try:
        d = ctx.derivation(method)
    except Exception as exc:  # derivation missing: say so in the table
        return (f"(derivation failed: {type(exc).__name__})", str(exc))
    a = getattr(d, "alpha", None)
    if a is None:
        return ("not isotropic", getattr(d, "alpha_reason", None) or "")
    return (str(a), getattr(d, "alpha_reason", None) or "")
