"""Test-set predictions: finite networks against the derived infinite-width predictor.

theory.md section 3: in the linearised, ``rho -> 0`` limit every method predicts
``f_t(x') = f_0(x') - kappa_t (method-specific weighting of Theta_l(x', X) Theta_l^{-1}) e_0``
with ``kappa_t = 1 - (1 - alpha eta)^t``; the methods share the training dynamics
but reach different minima, hence different test predictions [paper].
``Derivation.predict_test(train, cross, residual0, lr=, steps=)`` evaluates the
derived predictor with the infinite-width kernels (``ngdsym.infinite_width_kernels``)
and the finite network's own initial residual ``e_0 = f_0(X) - y``; the finite
network is trained with ``numeric.train``.  The relative error falls like
``M^{-1/2}`` (kernel fluctuations and Jacobian motion are both ``O(M^{-1/2})``).

Run ``python -m derivations.test_predictions`` for the derivation and the verdict.
"""

from __future__ import annotations

import numpy as np

from ngdsym.methods import Method

from ._common import Check

__all__ = ["prediction_error", "judge", "main"]


def prediction_error(traj, ctx, method: Method, lr: float):
    """``||(g_t - g_0) - p_t||_F / ||p_t||_F`` over steps ``t >= 1``.

    ``g_t`` are the finite network's test outputs, ``p_t`` the infinite-width
    predicted change ``Derivation.predict_test(...)[t]``.  Returns ``(error,
    predicted f_T(X_test), finite f_T(X_test))`` (``T`` the last step), the
    latter two for the scatter plot.
    """
    g = np.asarray(traj.test_outputs, dtype=float)
    steps = g.shape[0] - 1
    residual0 = np.asarray(traj.train_outputs, dtype=float)[0] - ctx.Y
    pred = np.asarray(ctx.derivation(method).predict_test(
        ctx.infinite("train"), ctx.infinite("cross"), residual0, lr=lr, steps=steps), dtype=float)
    change = g - g[0][None]
    err = float(np.linalg.norm(change[1:] - pred[1:]) / np.linalg.norm(pred[1:]))
    return err, g[0] + pred[-1], g[-1]


def judge(res, ctx) -> list[Check]:
    """One rate check per trained method with a test predictor (property 4 of issue 4)."""
    from .dynamics import judge_training

    return judge_training(res, ctx, "test_error", "test predictions",
                          "||(f_t - f_0)(X_test) - predict_test_t|| / ||predict_test_t|| at eta = 1/alpha "
                          "falls with M: ")


def main(argv=None) -> int:
    from ._cli import run_module
    from .dynamics import TRAINED_METHODS

    return run_module(__name__, argv, methods=TRAINED_METHODS, sections=("test_predictions",))


if __name__ == "__main__":
    raise SystemExit(main())
