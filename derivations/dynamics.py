"""Training dynamics: ``f_t - y = (1 - alpha eta)^t (f_0 - y)`` for the isotropic methods.

theory.md section 1 (isotropy): if ``K -> alpha I`` the linearised residual
obeys ``f_{t+1} - y = (I - eta K)(f_t - y) = (1 - alpha eta)(f_t - y)``, so the loss
(quadratic in the residual) is ``L_t = (1 - alpha eta)^{2t} L_0``: one step at
``eta = 1/alpha``.  The finite network is trained with ``numeric.train`` (real,
nonlinear NGD steps); its residual approaches the closed form at rate
``M^{-1/2}`` (the Jacobian moves by ``O(M^{-1/2})`` during training).

Run ``python -m derivations.dynamics`` for the derivation and the verdict.
"""

from __future__ import annotations

import numpy as np

from ngdsym.methods import Method

from ._common import Check, judge_convergence

__all__ = ["residual_factor", "residual_error", "training_not_applicable", "judge_training", "judge", "main"]


def residual_factor(derivation, lr: float, steps: int) -> np.ndarray:
    """The scalar ``c_t`` of ``Derivation.dynamics = c_t e_0`` for ``t = 0..steps``.

    ``derivation`` must be *concrete* (every structure value given, so ``alpha``
    is a number): its dynamics is then a SymPy expression in ``eta`` and ``t``
    only, lambdified here -- the derived ``(1 - alpha eta)^t``, not a typed copy.

    Raises
    ------
    ValueError
        If the dynamics is not a scalar multiple of ``e_0`` in ``eta`` and ``t``
        (a non-isotropic method).
    """
    import sympy as sp

    dyn = derivation.dynamics
    coeff, rest = dyn.as_coeff_mmul() if hasattr(dyn, "as_coeff_mmul") else (None, None)
    if coeff is None or not getattr(rest, "is_Matrix", False) or rest.shape[1] != 1:
        raise ValueError(f"{derivation.method}: dynamics {dyn} is not c(t) e_0")
    coeff = sp.sympify(coeff)
    symbols = {s.name: s for s in coeff.free_symbols}
    extra = set(symbols) - {"eta", "t"}
    if extra:
        raise ValueError(f"{derivation.method}: dynamics coefficient {coeff} still depends on "
                         f"{sorted(extra)}; derive it with the concrete structure")
    args = [symbols.get("eta", sp.Symbol("eta")), symbols.get("t", sp.Symbol("t"))]
    f = sp.lambdify(args, coeff, modules="numpy")
    return np.array([float(f(lr, k)) for k in range(steps + 1)])


def residual_error(traj, Y, factor: np.ndarray):
    """``max_t ||(f_t - y) - c_t (f_0 - y)||_F / ||f_0 - y||_F`` and the theory loss.

    ``factor`` is :func:`residual_factor`; returns ``(error, theory_loss)`` with
    ``theory_loss[t] = c_t^2 L_0`` (the loss is quadratic in the residual) and
    ``L_0`` the finite network's initial loss.
    """
    outputs = np.asarray(traj.train_outputs, dtype=float)
    steps = outputs.shape[0] - 1
    r = outputs - np.asarray(Y, dtype=float)[None]
    factor = np.asarray(factor, dtype=float)[: steps + 1]
    theory = factor[:, None, None] * r[0][None]
    scale = np.linalg.norm(r[0])
    err = float(max(np.linalg.norm(r[t] - theory[t]) for t in range(1, steps + 1)) / scale)
    loss0 = float(np.asarray(traj.train_loss, dtype=float)[0])
    return err, factor**2 * loss0


def training_not_applicable(method: Method) -> str | None:
    """Why the finite-network training claim is not tested for ``method`` (else ``None``).

    A method's module states it in ``TRAINING_NOT_APPLICABLE`` (e.g. unit-wise:
    the deviation bound of theory.md section 5 is vacuous at the damping that
    isotropy needs).
    """
    import importlib

    from ._cli import METHOD_MODULES

    mod = importlib.import_module(f"derivations.{METHOD_MODULES[method]}")
    return getattr(mod, "TRAINING_NOT_APPLICABLE", None)


def judge_training(res, ctx, quantity: str, prefix: str, criterion: str) -> list[Check]:
    """Rate checks of a training quantity per trained method (skipped where not applicable)."""
    checks = []
    for m, q in res.methods.items():
        if m in res.errors:
            continue
        e = q[quantity]
        name = f"{prefix}: {m.label}"
        if np.all(np.isnan(e)):
            if not np.all(np.isnan(q["dynamics_error"])):  # trained, but nothing to compare with: say why
                why = "; ".join(res.notes.get(m, [])) or "no closed form"
                checks.append(Check(name, True, "skipped", criterion + "(no closed form)",
                                    f"not checked: {why}"))
            continue  # not isotropic, or training disabled
        reason = training_not_applicable(m)
        c = judge_convergence(name, ctx.config.widths, e, ctx.config.criteria, upper_bound=True)
        c.criterion = criterion + c.criterion
        if reason is not None:
            c = Check(name, True, "skipped", c.criterion,
                      f"not applicable: {reason} (measured: {c.detail})", rate=c.rate, extra=c.extra)
        checks.append(c)
    return checks


#: The isotropic methods whose training and test predictions these scripts check
#: (this module and :mod:`derivations.test_predictions`).
TRAINED_METHODS = (Method.EXACT, Method.BLOCK_DIAGONAL, Method.BLOCK_TRIDIAGONAL, Method.KFAC,
                   Method.UNIT_WISE)


def judge(res, ctx) -> list[Check]:
    """One rate check per isotropic method that was trained (property 3 of issue 4)."""
    return judge_training(res, ctx, "dynamics_error", "dynamics",
                          "max_t ||(f_t - y) - (1 - alpha eta)^t (f_0 - y)|| / ||f_0 - y|| at "
                          "eta = 1/alpha falls with M: ")


def main(argv=None) -> int:
    from ._cli import run_module

    return run_module(__name__, argv, methods=TRAINED_METHODS, sections=("dynamics",))


if __name__ == "__main__":
    raise SystemExit(main())
