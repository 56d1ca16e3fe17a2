"""Full-batch NGD training and its linearisation (theory.md sections 1 and 3).

Conventions (``shared/reference/theory.md`` section 1): loss
``(1/2N) sum_n ||f(x_n) - y_n||^2`` (the test loss uses its own ``N2``), NGD step
``theta <- theta - eta (F_hat + rho I)^{-1} grad L`` with ``F_hat`` and the update
from :func:`numeric.natural_gradient`.

The linearised model (frozen Jacobian and ``F_hat`` at initialisation) evolves in
function space by the preconditioned kernel ``K`` (theory.md section 1):

``f_{t+1}(X) = f_t(X) - eta K(X, X) (f_t(X) - Y)``,
``f_{t+1}(X2) = f_t(X2) - eta K(X2, X) (f_t(X) - Y)``,

so ``f_t(X) - Y = (I - eta K)^t (f_0(X) - Y)``; with isotropy ``K = alpha I`` this is
``(1 - alpha eta)^t`` (one-step convergence at ``eta = 1 / alpha``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ngdsym.methods import KFACDamping, Method

from ._mlp import MLP
from ._precond import _check_memory, _parse_common, kernel_from_features, update_from_features
from ._validation import as_inputs, as_targets, check_learning_rate, check_positive_int, require_memory

__all__ = ["Trajectory", "train", "linearized_train"]


@dataclass
class Trajectory:
    """Outputs and losses along a training run.

    Attributes
    ----------
    train_outputs : ndarray ``(steps + 1, N, C)``
        ``f_t(X)`` for ``t = 0..steps``.
    train_loss : ndarray ``(steps + 1,)``
        ``(1/2N) sum_n ||f_t(x_n) - y_n||^2``.
    test_outputs : ndarray ``(steps + 1, N2, C)`` or None
        ``f_t(X_test)`` when ``X_test`` was given.
    test_loss : ndarray ``(steps + 1,)`` or None
        Test loss (with ``N2``) when ``Y_test`` was given.
    method : Method
    lr : float
    damping : float
    final_net : MLP or None
        The trained network (``None`` for :func:`linearized_train`).
    """

    train_outputs: np.ndarray
    train_loss: np.ndarray
    test_outputs: np.ndarray | None
    test_loss: np.ndarray | None
    method: Method
    lr: float
    damping: float
    final_net: MLP | None = None


def _loss(outputs: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``(1/2N) sum_n ||f(x_n) - y_n||^2`` for outputs of shape ``(..., N, C)``."""
    diff = np.asarray(outputs, dtype=np.float64) - np.asarray(Y, dtype=np.float64)
    return 0.5 * np.sum(diff * diff, axis=(-2, -1)) / Y.shape[0]


def _trajectory(train_outputs, Y, test_outputs, Y_test, method, lr, damping, final_net) -> "Trajectory":
    """A :class:`Trajectory` with its losses computed from the recorded outputs."""
    return Trajectory(
        train_outputs=train_outputs,
        train_loss=_loss(train_outputs, Y),
        test_outputs=test_outputs,
        test_loss=None if Y_test is None else _loss(test_outputs, Y_test),
        method=method, lr=lr, damping=damping, final_net=final_net,
    )


def _progress(iterable, enabled: bool, desc: str):
    """Wrap in a tqdm bar when asked and tqdm is installed (optional dependency)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc)


def _validate(net, X, Y, method, lr, damping, steps, X_test, Y_test, kfac_damping):
    net, method, damping, kfac_damping = _parse_common(net, method, damping, kfac_damping)
    lr = check_learning_rate(lr, "lr")
    steps = check_positive_int(steps, "steps", minimum=0)
    X = as_inputs(X, net.widths[0], net.dtype, "X")
    Y = as_targets(Y, X.shape[0], net.n_outputs, net.dtype, "Y")
    if X_test is None:
        if Y_test is not None:
            raise ValueError("Y_test was given without X_test; pass X_test (N2, M_0) too, or drop Y_test")
    else:
        X_test = as_inputs(X_test, net.widths[0], net.dtype, "X_test")
        if Y_test is not None:
            Y_test = as_targets(Y_test, X_test.shape[0], net.n_outputs, net.dtype, "Y_test")
    return net, X, Y, method, lr, damping, steps, X_test, Y_test, kfac_damping


def _trajectory_memory(net, n, n2, steps, what):
    require_memory(
        8 * (steps + 1) * (n + n2) * net.n_outputs * 2,
        f"{what} recording {steps + 1} outputs of N = {n} (+ N2 = {n2}) x C = {net.n_outputs}",
        "use fewer steps or fewer inputs",
    )


def train(net, X, Y, method, lr, damping, steps, X_test=None, Y_test=None, *,
          kfac_damping=KFACDamping.FACTORS, progress=False) -> Trajectory:
    """Full-batch NGD on a copy of ``net`` (``net`` itself is left untouched).

    Each step: ``theta <- theta - lr * natural_gradient(theta)`` (theory.md section 1),
    with ``F_hat`` rebuilt at the current parameters.

    Parameters
    ----------
    net : MLP
    X, Y : arrays ``(N, M_0)``, ``(N, C)``
    method : str or Method
    lr : float > 0
    damping : float >= 0 (``0``: pseudo-inverse limit)
    steps : int >= 0
    X_test, Y_test : arrays ``(N2, M_0)``, ``(N2, C)``, optional
    kfac_damping : str or KFACDamping
    progress : bool
        Show a tqdm progress bar (when tqdm is installed).

    Returns
    -------
    Trajectory (with ``final_net`` the trained copy)

    Examples
    --------
    >>> from numeric import MLP
    >>> net = MLP([2, 256, 1], activation="tanh", seed=0)
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    >>> traj = train(net, X, np.array([0.5, -0.5, 0.2]), "exact", lr=1.0, damping=0.0, steps=2)
    >>> traj.train_outputs.shape, traj.train_loss.shape
    ((3, 3, 1), (3,))
    >>> bool(traj.train_loss[1] < 1e-2 * traj.train_loss[0])
    True
    """
    net, X, Y, method, lr, damping, steps, X_test, Y_test, kfac_damping = _validate(
        net, X, Y, method, lr, damping, steps, X_test, Y_test, kfac_damping)
    n, n2 = X.shape[0], (0 if X_test is None else X_test.shape[0])
    _check_memory(net, n, n2, method, True, "train")
    _trajectory_memory(net, n, n2, steps, "train")
    model = net.copy()
    train_outputs = np.empty((steps + 1,) + Y.shape, dtype=net.dtype)
    test_outputs = None if X_test is None else np.empty((steps + 1, n2, net.n_outputs), dtype=net.dtype)
    for t in _progress(range(steps + 1), progress, f"train {method.value}"):
        if test_outputs is not None:
            test_outputs[t] = model.forward(X_test)
        if t == steps:
            train_outputs[t] = model.forward(X)
            break
        feat = model.features(X, "X")
        train_outputs[t] = feat.outputs
        update = update_from_features(feat, feat.outputs - Y, method, damping, kfac_damping)
        stepped = [(W - lr * dW, b - lr * db) for (W, b), (dW, db) in zip(model.params, update)]
        if not all(np.isfinite(W).all() and np.isfinite(b).all() for W, b in stepped):
            # not bad input but divergence: say which argument to change (nothing is returned)
            raise ValueError(
                f"lr={lr!r}: {method.value} training diverged at step {t + 1} of {steps} (parameters "
                "overflowed to inf/nan); use a smaller lr (isotropic methods converge for "
                "0 < lr < 2/alpha, theory.md section 1) or a larger damping"
            )
        model.params = stepped
    return _trajectory(train_outputs, Y, test_outputs, Y_test, method, lr, damping, model)


def linearized_train(net, X, Y, method, lr, damping, steps, X_test=None, Y_test=None, *,
                     kfac_damping=KFACDamping.FACTORS, progress=False) -> Trajectory:
    """NGD on the network linearised at initialisation, in function space (theory.md section 1).

    ``f_{t+1}(X) = f_t(X) - lr K(X, X) (f_t(X) - Y)`` and
    ``f_{t+1}(X_test) = f_t(X_test) - lr K(X_test, X) (f_t(X) - Y)``, with ``K`` the
    :func:`numeric.preconditioned_kernel` at ``net``'s parameters.

    Parameters and returns as in :func:`train` (``final_net`` is ``None``).

    Examples
    --------
    >>> from numeric import MLP
    >>> net = MLP([2, 64, 64, 64, 1], seed=0)  # L = 4 layers
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    >>> traj = linearized_train(net, X, np.zeros(3), "block_diagonal", lr=1 / 4, damping=0.0, steps=1)
    >>> float(traj.train_loss[1]) < 1e-20   # K = L I, one-step convergence at lr = 1/L
    True
    """
    net, X, Y, method, lr, damping, steps, X_test, Y_test, kfac_damping = _validate(
        net, X, Y, method, lr, damping, steps, X_test, Y_test, kfac_damping)
    n, n2 = X.shape[0], (0 if X_test is None else X_test.shape[0])
    _check_memory(net, n, n + n2 if n2 else 0, method, False, "linearized_train")  # K rows: [X; X_test]
    _trajectory_memory(net, n, n2, steps, "linearized_train")
    C = net.n_outputs
    feat = net.features(X, "X")
    # One kernel call for [X; X_test] rows shares the training solve.
    if X_test is None:
        K = kernel_from_features(feat, feat, method, damping, kfac_damping)
    else:
        feat2 = net.features(np.concatenate([X, X_test]), "X_test")
        K = kernel_from_features(feat, feat2, method, damping, kfac_damping)
    K = K.astype(np.float64)
    K_train, K_test = K[: n * C], K[n * C:]
    f = feat.outputs.astype(np.float64).ravel()
    g = None if X_test is None else feat2.outputs[n:].astype(np.float64).ravel()
    y = Y.astype(np.float64).ravel()
    train_outputs = np.empty((steps + 1, n * C))
    test_outputs = None if X_test is None else np.empty((steps + 1, n2 * C))
    for t in _progress(range(steps + 1), progress, f"linearized {method.value}"):
        train_outputs[t] = f
        if g is not None:
            test_outputs[t] = g
        if t == steps:
            break
        step = lr * (f - y)
        if g is not None:
            g = g - K_test @ step
        f = f - K_train @ step
    train_outputs = train_outputs.reshape(steps + 1, n, C).astype(net.dtype)
    if test_outputs is not None:
        test_outputs = test_outputs.reshape(steps + 1, n2, C).astype(net.dtype)
    return _trajectory(train_outputs, Y, test_outputs, Y_test, method, lr, damping, None)
