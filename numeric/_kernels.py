"""Per-layer Gram matrices and NTKs from the Hadamard structure (theory.md section 1).

Layer ``l``'s Jacobian row at ``(n, c)`` is ``delta_{l,c}(x_n) (x) hbar_{l-1}(x_n)``, so

``Theta_l[(n, c), (m, c')] = Bt_l[(n, c), (m, c')] * Q_{l-1}[n, m]``

with the backward Gram ``Bt_l = Delta_l Delta_l^T`` (``N C x N2 C``) and the
forward Gram ``Q_{l-1} = Hbar_{l-1} Hbar_{l-1}^T`` (``N x N2``, broadcast over
output pairs).  Cost ``O(L (N^2 C^2 M + N^2 M))``; the Jacobian (``N C x P``) is
never formed.  Rows are ordered ``n * C + c``.
"""

from __future__ import annotations

import numpy as np

from ._mlp import MLP, Features
from ._validation import as_inputs, require_memory

__all__ = ["forward_grams", "backward_grams", "broadcast_outputs", "layer_kernels",
           "layer_kernels_from_features"]


def forward_grams(feat: Features, feat2: Features | None = None) -> list[np.ndarray]:
    """``Q_k = Hbar_k(X) Hbar_k(X2)^T`` for every layer input ``k = 0..L-1``: ``(N, N2)`` each."""
    feat2 = feat if feat2 is None else feat2
    return [h @ h2.T for h, h2 in zip(feat.hbar, feat2.hbar)]


def backward_grams(feat: Features, feat2: Features | None = None) -> list[np.ndarray]:
    """``Bt_l = Delta_l(X) Delta_l(X2)^T`` for every layer: ``(N C, N2 C)`` each, rows ``n C + c``."""
    feat2 = feat if feat2 is None else feat2
    out = []
    for d, d2 in zip(feat.delta, feat2.delta):
        n, C, m = d.shape
        out.append(d.reshape(n * C, m) @ d2.reshape(d2.shape[0] * C, m).T)
    return out


def broadcast_outputs(Q: np.ndarray, C: int) -> np.ndarray:
    """``Q (x) 1_{C x C}``: an ``(N, N2)`` sample Gram broadcast to ``(N C, N2 C)``."""
    if C == 1:
        return Q
    return np.repeat(np.repeat(Q, C, axis=0), C, axis=1)


def layer_kernels_from_features(feat: Features, feat2: Features | None = None) -> np.ndarray:
    """Stack of per-layer NTKs ``Theta_l(X, X2)``, shape ``(L, N C, N2 C)``."""
    feat2 = feat if feat2 is None else feat2
    C = feat.delta[-1].shape[1]
    Qs = forward_grams(feat, feat2)
    Bs = backward_grams(feat, feat2)
    return np.stack([B * broadcast_outputs(Q, C) for B, Q in zip(Bs, Qs)])


def layer_kernels(net: MLP, X, X2=None) -> np.ndarray:
    """Per-layer NTKs ``Theta_l = J_l(X) J_l(X2)^T`` (layer ``l`` = its ``W_l`` and ``b_l``).

    Parameters
    ----------
    net : MLP
    X : array ``(N, M_0)``
    X2 : array ``(N2, M_0)``, optional (default ``X``)

    Returns
    -------
    ndarray ``(L, N C, N2 C)``, rows ordered ``n * C + c``; ``sum`` over the first
    axis is the NTK ``Theta = J J^T`` (no ``1/N``).

    Examples
    --------
    >>> net = MLP([2, 8, 8, 1], seed=0)
    >>> X = np.eye(2)
    >>> K = layer_kernels(net, X)
    >>> K.shape
    (3, 2, 2)
    >>> bool(np.allclose(K, K.transpose(0, 2, 1)))
    True
    """
    if not isinstance(net, MLP):
        raise ValueError(f"net must be a numeric.MLP, got {type(net).__name__}; build one with numeric.MLP(widths)")
    # validate (and size) before any allocation: the features alone are O(N C sum_l M_l)
    X = as_inputs(X, net.widths[0], net.dtype, "X")
    X2 = None if X2 is None else as_inputs(X2, net.widths[0], net.dtype, "X2")
    n = X.shape[0]
    n2 = n if X2 is None else X2.shape[0]
    C, L = net.n_outputs, net.depth
    itemsize = net.dtype.itemsize
    features = itemsize * (C + 4) * sum(net.widths) * (n + (0 if X2 is None else n2))
    require_memory(
        features + itemsize * (3 * L * n * C * n2 * C + L * n * n2),
        f"layer_kernels with L = {L}, N = {n}, N2 = {n2}, C = {C}, widths = {net.widths}",
        "use fewer inputs or outputs (the result alone is L x N C x N2 C) or narrower layers",
    )
    feat = net.features(X, "X")
    feat2 = feat if X2 is None else net.features(X2, "X2")
    return layer_kernels_from_features(feat, feat2)
