"""K-FAC, unit-wise and element-wise diagonal preconditioners (fast paths).

STUB: being written.  Signatures are fixed; see the docstrings.
``residual`` is ``f(X) - Y`` of shape ``(N, C)``; ``grad L = J^T residual.ravel() / N``.
An ``update`` is ``(F_hat + damping I)^{-1} grad L`` as a list of ``(dW_l, db_l)``.
A ``kernel`` is ``J(X2) (F_hat + damping I)^{-1} J(X)^T / N`` of shape ``(N2 C, N C)``,
with ``F_hat`` built on the training features ``feat`` (``feat2`` are those of ``X2``).
``damping == 0`` means the pseudo-inverse limit ``rho -> 0``.
"""

from __future__ import annotations


def kfac_kernel(feat, feat2, damping, kfac_damping):
    raise NotImplementedError


def kfac_update(feat, residual, damping, kfac_damping):
    raise NotImplementedError


def unit_wise_kernel(feat, feat2, damping):
    raise NotImplementedError


def unit_wise_update(feat, residual, damping):
    raise NotImplementedError


def diagonal_kernel(feat, feat2, damping):
    raise NotImplementedError


def diagonal_update(feat, residual, damping):
    raise NotImplementedError
