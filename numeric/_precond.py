"""Preconditioned kernels and natural gradients without ``J`` or ``F`` (theory.md sections 1-2).

Conventions (``shared/reference/theory.md`` section 1, kept exactly):

* NTK parameterization ``u_l = sigma_w / sqrt(M_{l-1}) W_l h_{l-1} + sigma_b b_l``,
  ``f = u_L``; ``N`` inputs ``X``, targets ``Y`` (``N x C``), loss
  ``(1/2N) sum_n ||f(x_n) - y_n||^2``.
* Jacobian ``J = df(X)/dtheta`` (``N C x P``), rows ``n * C + c``; ``J_l`` = the
  columns of layer ``l``'s ``(W_l, b_l)``.  Per-layer NTK ``Theta_l = J_l J_l^T``
  (no ``1/N``), ``Theta = sum_l Theta_l``.
* Fisher ``F = J^T J / N``; NGD ``theta <- theta - eta (F_hat + rho I)^{-1} grad L``
  with ``grad L = J^T r / N``, ``r = (f(X) - Y).ravel()``.
* Preconditioned kernel ``K(X2, X) = J(X2) (F_hat + rho I)^{-1} J(X)^T / N``
  (``N2 C x N C``), ``F_hat`` always built on the training inputs ``X``.

Every layer-wise method goes through the push-through identity (theory.md
section 1) ``(J^T J / N + rho I)^{-1} J^T = J^T (J J^T / N + rho I)^{-1}``, so only
``N C x N C`` systems (``L N C`` for block tri-diagonal) are ever solved:

================  ===========================================================  ==========================================
method            ``K(X2, X)``                                                 update of layer ``l``
================  ===========================================================  ==========================================
gd                ``Theta(X2, X) / N`` (``F_hat + rho I := I``)                ``J_l^T r / N``
exact             ``Theta(X2, X) (Theta + N rho I)^{-1}``                      ``J_l^T (Theta + N rho I)^{-1} r``
block_diagonal    ``sum_l Theta_l(X2, X) (Theta_l + N rho I)^{-1}``            ``J_l^T (Theta_l + N rho I)^{-1} r``
block_tridiag.    ``[Theta_l(X2, X)]_l (N rho I + G D)^{-1} (1 (x) I)``        ``J_l^T v_l``, ``v = (N rho I + G D)^{-1} (1 (x) r)``
================  ===========================================================  ==========================================

Block tri-diagonal (theory.md section 2, BTD row): with ``Jb = blockdiag(J_l)``,
``F_hat = Jb^T (T (x) I_{NC}) Jb / N`` where ``T`` is the ``L x L`` tri-diagonal
matrix of ones; ``G = T (x) I_{NC}`` and ``D = Jb Jb^T = blockdiag(Theta_l)``.
Push-through on ``Jb`` gives the table's row; it needs no inverse of ``T``, so the
singular ``L = 3 s + 2`` is handled for ``rho > 0``.

``damping == 0`` is the ``rho -> 0`` limit (pseudo-inverse): exact
``Theta(X2, X) Theta^+``, block diagonal ``sum_l Theta_l(X2, X) Theta_l^+``, with the
eigenvalue cut-off of :mod:`numeric._linalg` (relative to each inverted matrix's own
largest eigenvalue, per the dtype the kernels were computed in; shared with
:mod:`numeric._approx` and :mod:`numeric.reference`).  For
block tri-diagonal, ``D (N rho I + G D)^{-1} = (N rho D^{-1} + G)^{-1}`` and the limit
of ``(eps D^{-1} + G)^{-1} b`` for ``b`` in ``range(G)`` is the unique ``x0`` with
``G x0 = b`` and ``Z^T D^{-1} x0 = 0`` (``Z`` a basis of ``null(G)``), so
``K = [Theta_l(X2, X)]_l D^{-1} x0``; on the training set this is
``(1^T T^+ 1) I``.  It needs every ``Theta_l`` invertible (no eigenvalue under the
cut-off of :mod:`numeric._linalg`); otherwise ``ValueError`` asks for ``damping > 0``
(the dense :mod:`numeric.reference` handles the singular case when the limit exists).

K-FAC, unit-wise and element-wise diagonal are delegated to :mod:`numeric._approx`.

Precision: kernels and features are computed in the network's dtype; the small
``N C`` (or ``L N C``) solves are done in float64 and the result is cast back, so
float32 networks lose accuracy only in the kernels themselves.
"""

from __future__ import annotations


import numpy as np
import scipy.linalg

from ngdsym.methods import KFACDamping, Method

from . import _approx
from ._kernels import layer_kernels_from_features
from ._linalg import pinv_keep
from ._mlp import MLP, Features
from ._validation import as_inputs, as_targets, check_damping, require_memory

__all__ = ["preconditioned_kernel", "natural_gradient", "tridiagonal_ones"]


# ----------------------------------------------------------------- validation
def check_net(net) -> MLP:
    if not isinstance(net, MLP):
        raise ValueError(f"net must be a numeric.MLP, got {type(net).__name__}; build one with numeric.MLP(widths)")
    return net


def _estimate_bytes(net: MLP, n: int, n2: int, method: Method, with_update: bool) -> float:
    """Peak memory (bytes, rough upper estimate) of one kernel or update computation."""
    item = net.dtype.itemsize
    C, L = net.n_outputs, net.depth
    widths = net.widths
    # features (hbar, delta, pre-activations, phi' temporaries) for X and X2
    feat = item * (C + 4) * sum(widths) * (n + (n2 if n2 else 0))
    nc, n2c = n * C, n2 * C
    kernels = item * 3 * L * (nc * nc + nc * n2c) + 8 * 4 * (nc * nc + n2c * nc)
    if method is Method.BLOCK_TRIDIAGONAL:
        kernels += 8 * 4 * (L * nc) ** 2 + 8 * 2 * L * nc * max(nc, n2c)
    elif method is Method.UNIT_WISE:
        # batched per-unit N C x N C Grams and their factorisations, chunked over the units of a
        # layer to about _approx.CHUNK_BYTES (as _approx plans it), plus the N x N forward Gram
        per_unit = item * (4 * nc * nc + 3 * max(nc, n2c) * nc)
        kernels += max(min(m * per_unit, max(per_unit, _approx.CHUNK_BYTES)) for m in widths[1:])
        kernels += 8 * 2 * nc * nc
    elif method is Method.KFAC:
        kernels += 8 * 4 * (n * nc) ** 2 / max(nc, 1) + 8 * 4 * L * nc * nc
    update = item * 3 * net.n_params if with_update else 0
    return float(feat + kernels + update)


def _check_memory(net, n, n2, method, with_update, what):
    require_memory(
        _estimate_bytes(net, n, n2, method, with_update),
        f"{what} with method {method.value!r}, N = {n}, N2 = {n2}, C = {net.n_outputs}, "
        f"L = {net.depth}, widths = {net.widths}",
        "use fewer inputs (N, N2), fewer outputs or narrower layers, or float32",
    )


# --------------------------------------------------------------- linear algebra
def tridiagonal_ones(L: int) -> np.ndarray:
    """The ``L x L`` tri-diagonal matrix of ones ``T`` (theory.md section 2, BTD).

    >>> tridiagonal_ones(3)
    array([[1., 1., 0.],
           [1., 1., 1.],
           [0., 1., 1.]])
    """
    return np.eye(L) + np.eye(L, k=1) + np.eye(L, k=-1)


def psd_solve(A: np.ndarray, B: np.ndarray, shift: float, dtype=np.float64) -> np.ndarray:
    """``(A + shift I)^+ B`` for a symmetric positive semi-definite ``A``, in float64.

    Cholesky when ``shift > 0`` and the shifted matrix is numerically positive
    definite; otherwise a symmetric eigendecomposition whose eigenvalues under the
    cut-off of :func:`numeric._linalg.pinv_keep` (``pinv_rcond(dtype) max|w|``, and every
    negative one) are dropped (the pseudo-inverse, i.e. the ``shift -> 0`` limit when
    ``shift == 0``).  ``dtype`` is the precision ``A`` was computed in.

    >>> A = np.array([[2.0, 0.0], [0.0, 0.0]])
    >>> psd_solve(A, np.eye(2), 0.0)
    array([[0.5, 0. ],
           [0. , 0. ]])
    >>> psd_solve(A, np.eye(2), 1.0)
    array([[0.33333333, 0.        ],
           [0.        , 1.        ]])
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    n = A.shape[0]
    A_shift = A + shift * np.eye(n) if shift else A
    if shift > 0:
        try:
            factor = scipy.linalg.cho_factor(A_shift, lower=True, check_finite=False)
            return scipy.linalg.cho_solve(factor, B, check_finite=False)
        except np.linalg.LinAlgError:
            pass  # shift below the rounding of A: fall back to the pseudo-inverse
    w, V = np.linalg.eigh((A_shift + A_shift.T) / 2)
    keep = pinv_keep(w, dtype, psd=True)
    inv_w = np.zeros_like(w)
    inv_w[keep] = 1.0 / w[keep]
    return V @ (inv_w[:, None] * (V.T @ B))


def _general_solve(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A^{-1} B`` (LU); least squares when ``A`` is numerically singular."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        try:
            return scipy.linalg.solve(A, B, check_finite=False)
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgWarning):
            return np.linalg.lstsq(A, B, rcond=None)[0]


def _invert_layer_kernels(Th: np.ndarray, dtype) -> list[np.ndarray]:
    """``Theta_l^{-1}`` for every layer (float64); ``ValueError`` when one is singular."""
    inverses = []
    for l, Th_l in enumerate(Th, start=1):
        w, V = np.linalg.eigh(np.asarray(Th_l, dtype=np.float64))
        if not pinv_keep(w, dtype, psd=True).all():
            raise ValueError(
                f"damping=0 with method 'block_tridiagonal' needs every per-layer NTK Theta_l to be "
                f"invertible, but Theta_{l} is singular (smallest eigenvalue {w[0]:.3g}, largest "
                f"{w[-1]:.3g}: under the pseudo-inverse cut-off of numeric._linalg); pass damping > 0 "
                "(e.g. damping=1e-8), or fewer inputs than the narrowest width; numeric.reference "
                "(small sizes only) computes the rho -> 0 limit where it exists"
            )
        inverses.append((V / w) @ V.T)
    return inverses


def _btd_coefficients(Th: np.ndarray, B: np.ndarray, shift: float, dtype) -> list[np.ndarray]:
    """Blocks ``Y_l`` of ``Y = (shift I + G D)^{-1} (1 (x) B)``, or its ``shift -> 0`` limit.

    ``Th`` is ``(L, n, n)`` (``D = blockdiag(Th)``, ``G = T (x) I_n``), ``B`` is ``(n, k)``.
    """
    L, n, _ = Th.shape
    Th64 = np.asarray(Th, dtype=np.float64)
    T = tridiagonal_ones(L)
    if shift > 0:
        # (shift I + G D)[l, l'] = T_{l l'} Theta_{l'} (+ shift I on the diagonal)
        A = np.zeros((L * n, L * n))
        for l in range(L):
            for lp in range(max(0, l - 1), min(L, l + 2)):
                A[l * n:(l + 1) * n, lp * n:(lp + 1) * n] = Th64[lp]
        A[np.diag_indices_from(A)] += shift
        Y = _general_solve(A, np.tile(B, (L, 1)))
        return [Y[l * n:(l + 1) * n] for l in range(L)]
    # rho -> 0: x0 = c (x) B + Z a with c = T^+ 1, G x0 = 1 (x) B, Z^T D^{-1} x0 = 0; Y = D^{-1} x0
    inv = _invert_layer_kernels(Th, dtype)
    w, V = np.linalg.eigh(T)
    null = ~pinv_keep(w, np.float64)  # T is exact (integers): its eigenvalues are float64-accurate
    c = V[:, ~null] @ ((V[:, ~null].T @ np.ones(L)) / w[~null])
    x0 = [c_l * B for c_l in c]
    if null.any():
        # an irreducible tri-diagonal matrix has simple eigenvalues: null(T) is spanned by one z
        z = V[:, null][:, 0]
        ZDZ = sum(z_l ** 2 * inv_l for z_l, inv_l in zip(z, inv))
        ZDp = sum(z_l * (inv_l @ x_l) for z_l, inv_l, x_l in zip(z, inv, x0))
        a = -np.linalg.solve(ZDZ, ZDp)
        x0 = [x_l + z_l * a for x_l, z_l in zip(x0, z)]
    return [inv_l @ x_l for inv_l, x_l in zip(inv, x0)]


def layer_coefficients(method: Method, Th: np.ndarray | None, B: np.ndarray, damping: float,
                       n_samples: int, dtype) -> list[np.ndarray]:
    """Per-layer ``Y_l`` such that ``K = sum_l Theta_l(X2, X) Y_l`` (``B = I``) and update_l = ``J_l^T Y_l`` (``B = r``).

    ``Th`` is the ``(L, N C, N C)`` stack of training per-layer NTKs (unused for GD).
    """
    shift = n_samples * damping
    if method is Method.GD:
        return [np.asarray(B, dtype=np.float64) / n_samples]
    if method is Method.EXACT:
        return [psd_solve(Th.sum(axis=0), B, shift, dtype)]
    if method is Method.BLOCK_DIAGONAL:
        return [psd_solve(Th_l, B, shift, dtype) for Th_l in Th]
    if method is Method.BLOCK_TRIDIAGONAL:
        return _btd_coefficients(Th, np.asarray(B, dtype=np.float64), shift, dtype)
    raise AssertionError(f"not a layer-wise method: {method}")  # pragma: no cover




# ---------------------------------------------------------------- from features
def kernel_from_features(feat: Features, feat2: Features, method: Method, damping: float,
                         kfac_damping: KFACDamping) -> np.ndarray:
    """``K(X2, X)`` (``N2 C x N C``) from already validated features (no checks)."""
    dtype = feat.outputs.dtype
    n, C = feat.outputs.shape
    if method is Method.KFAC:
        return np.asarray(_approx.kfac_kernel(feat, feat2, damping, kfac_damping), dtype=dtype)
    if method is Method.UNIT_WISE:
        return np.asarray(_approx.unit_wise_kernel(feat, feat2, damping), dtype=dtype)
    if method is Method.DIAGONAL:
        return np.asarray(_approx.diagonal_kernel(feat, feat2, damping), dtype=dtype)
    Th2 = layer_kernels_from_features(feat2, feat)  # (L, N2 C, N C)
    Th = None if method is Method.GD else (Th2 if feat2 is feat else layer_kernels_from_features(feat))
    Y = layer_coefficients(method, Th, np.eye(n * C), damping, n, dtype)
    if len(Y) == 1:  # one coefficient shared by all layers: K = Theta(X2, X) Y
        K = Th2.sum(axis=0).astype(np.float64) @ Y[0]
    else:
        K = sum(Th2_l.astype(np.float64) @ Y_l for Th2_l, Y_l in zip(Th2, Y))
    return K.astype(dtype)


def jacobian_transpose_layer(feat: Features, k: int, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``J_{k+1}^T v`` as ``(dW, db)``: ``sum_{n,c} v[n, c] delta[k][n, c, :] (x) hbar[k][n, :]``."""
    dtype = feat.outputs.dtype
    n, C = feat.outputs.shape
    weighted = _approx._residual_rows(feat.delta[k], np.asarray(v, dtype=dtype).reshape(n, C))
    dWb = weighted.T @ feat.hbar[k]  # (M_l, M_{l-1} + 1)
    return np.ascontiguousarray(dWb[:, :-1]), np.ascontiguousarray(dWb[:, -1])


def update_from_features(feat: Features, residual: np.ndarray, method: Method, damping: float,
                         kfac_damping: KFACDamping) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(F_hat + damping I)^{-1} grad L`` from validated features and ``residual = f(X) - Y``."""
    dtype = feat.outputs.dtype
    n, C = feat.outputs.shape
    L = feat.depth
    if method is Method.KFAC:
        upd = _approx.kfac_update(feat, residual, damping, kfac_damping)
    elif method is Method.UNIT_WISE:
        upd = _approx.unit_wise_update(feat, residual, damping)
    elif method is Method.DIAGONAL:
        upd = _approx.diagonal_update(feat, residual, damping)
    else:
        Th = None if method is Method.GD else layer_kernels_from_features(feat)
        Y = layer_coefficients(method, Th, residual.reshape(n * C, 1), damping, n, dtype)
        if len(Y) == 1:
            Y = Y * L
        upd = [jacobian_transpose_layer(feat, k, Y[k][:, 0]) for k in range(L)]
    return [(np.asarray(dW, dtype=dtype), np.asarray(db, dtype=dtype)) for dW, db in upd]


# ------------------------------------------------------------------- public API
def _parse_common(net, method, damping, kfac_damping):
    net = check_net(net)
    method = Method.parse(method, "method")
    damping = check_damping(damping, "damping")
    kfac_damping = KFACDamping.parse(kfac_damping, "kfac_damping")
    return net, method, damping, kfac_damping


def preconditioned_kernel(net, X, method, damping, X2=None, *, kfac_damping=KFACDamping.FACTORS):
    """Function-space preconditioner ``K(X2, X) = J(X2) (F_hat + damping I)^{-1} J(X)^T / N``.

    Implements the kernels of theory.md section 2 (table) through the push-through
    identity of section 1; see the module docstring for each method's formula.

    Parameters
    ----------
    net : MLP
    X : array ``(N, M_0)``
        Training inputs; ``F_hat`` is built on them.
    method : str or Method
        One of ``numeric.METHODS``.  ``"gd"``: ``F_hat + damping I := I`` (damping ignored).
    damping : float
        ``rho >= 0``; ``0`` means the ``rho -> 0`` (pseudo-inverse) limit.
    X2 : array ``(N2, M_0)``, optional
        Evaluation inputs (default ``X``).
    kfac_damping : str or KFACDamping
        Damping convention of K-FAC (ignored by the other methods).

    Returns
    -------
    ndarray ``(N2 C, N C)`` in the network's dtype, rows ``n * C + c``.

    Raises
    ------
    ValueError
        Bad argument (the message names it); ``damping=0`` with block tri-diagonal and a
        singular ``Theta_l``.
    MemoryError
        When the estimated memory exceeds what is available (checked before allocating).

    Examples
    --------
    >>> from numeric import MLP
    >>> net = MLP([4, 64, 64, 1], activation="tanh", seed=0)
    >>> X = np.random.default_rng(0).standard_normal((5, 4))
    >>> K = preconditioned_kernel(net, X, "block_diagonal", 0.0)
    >>> bool(np.allclose(K, 3 * np.eye(5)))   # alpha = L (theory.md section 2)
    True
    >>> K = preconditioned_kernel(net, X, "block_tridiagonal", 0.0)
    >>> bool(np.allclose(K, 1 * np.eye(5)))   # alpha = 1^T T^+ 1 = 1 for L = 3
    True
    >>> preconditioned_kernel(net, X, "exact", 1e-3, X2=X[:2]).shape
    (2, 5)
    """
    net, method, damping, kfac_damping = _parse_common(net, method, damping, kfac_damping)
    X = as_inputs(X, net.widths[0], net.dtype, "X")
    X2 = None if X2 is None else as_inputs(X2, net.widths[0], net.dtype, "X2")
    n = X.shape[0]
    n2 = n if X2 is None else X2.shape[0]
    _check_memory(net, n, 0 if X2 is None else n2, method, False, "preconditioned_kernel")
    feat = net.features(X, "X")
    feat2 = feat if X2 is None else net.features(X2, "X2")
    return kernel_from_features(feat, feat2, method, damping, kfac_damping)


def natural_gradient(net, X, Y, method, damping, *, kfac_damping=KFACDamping.FACTORS):
    """Natural-gradient direction ``(F_hat + damping I)^{-1} grad L``, ``grad L = J^T (f(X) - Y) / N``.

    Layer-wise methods use the push-through identity (theory.md section 1): the
    update of layer ``l`` is ``J_l^T v_l`` with ``v_l`` from an ``N C`` (or ``L N C``)
    solve (module docstring), and ``J_l^T v = sum_{n,c} v[n,c] delta[n,c,:] (x) hbar[n,:]``.

    Parameters
    ----------
    net : MLP
    X : array ``(N, M_0)``
    Y : array ``(N, C)`` (``(N,)`` accepted when ``C = 1``)
    method, damping, kfac_damping
        As in :func:`preconditioned_kernel`.

    Returns
    -------
    list of ``(dW_l, db_l)`` with the shapes of ``net.params``; the NGD step is
    ``params - lr * update``.

    Examples
    --------
    >>> from numeric import MLP
    >>> net = MLP([3, 32, 1], seed=0)
    >>> X = np.random.default_rng(1).standard_normal((4, 3))
    >>> upd = natural_gradient(net, X, np.zeros(4), "exact", 0.0)
    >>> [dW.shape for dW, db in upd]
    [(32, 3), (1, 32)]
    >>> step = net.copy()
    >>> step.params = [(W - dW, b - db) for (W, b), (dW, db) in zip(net.params, upd)]
    >>> bool(np.abs(step.forward(X)).max() < 0.1 * np.abs(net.forward(X)).max())
    True
    """
    net, method, damping, kfac_damping = _parse_common(net, method, damping, kfac_damping)
    X = as_inputs(X, net.widths[0], net.dtype, "X")
    Y = as_targets(Y, X.shape[0], net.n_outputs, net.dtype, "Y")
    _check_memory(net, X.shape[0], 0, method, True, "natural_gradient")
    feat = net.features(X, "X")
    return update_from_features(feat, feat.outputs - Y, method, damping, kfac_damping)
