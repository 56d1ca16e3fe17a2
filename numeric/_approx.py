"""K-FAC, unit-wise and element-wise diagonal NGD from the Jacobian factors (theory.md section 2).

Conventions (theory.md section 1): ``residual = f(X) - Y`` of shape ``(N, C)``,
``grad L = J^T residual.ravel() / N``.  An *update* is
``(F_hat + rho I)^{-1} grad L`` returned as a list of ``(dW_l, db_l)`` with the
shapes of ``MLP.params``.  A *kernel* is ``J(X2) (F_hat + rho I)^{-1} J(X)^T / N``
of shape ``(N2 C, N C)`` (rows ``m C + c'``, columns ``n C + c``), with
``F_hat`` built on the training features ``feat``; ``feat2`` are the features
of ``X2``.  ``rho == 0`` is the ``rho -> 0`` limit, i.e. the pseudo-inverse of
``F_hat`` (exists for every method here because ``J^T`` lies in the range of
``F_hat``).

Per layer ``l = k + 1`` (0-based ``k``) the Jacobian is the row-wise Kronecker
product of ``Delta = feat.delta[k].reshape(N C, M_l)`` and the sample-broadcast
``Hbar = feat.hbar[k]`` (``N x (M_{l-1} + 1)``): row ``(n, c)`` of ``J_l`` is
``Delta[n C + c] (x) Hbar[n]``, the unit index outer, so the parameters of
layer ``l`` are the row-major flattening of ``[W_l | b_l]`` (last column: bias).
Nothing here forms ``J`` (``N C x P``) or a ``P x P`` matrix.

Pseudo-inverse cut-off (``rho == 0``): the one convention of :mod:`numeric._linalg`
(:func:`~numeric._linalg.pinv_keep`), shared with :mod:`numeric._precond` and
:mod:`numeric.reference`: an eigenvalue counts as zero when it is at most
``pinv_rcond(dtype)`` (``1e-10`` float64, ``1e-5`` float32; the features' dtype)
times the largest ``|eigenvalue|`` of the matrix it belongs to.  It is applied to
each matrix that is actually decomposed: the Gram (or dual Gram) of each K-FAC
factor, each unit's ``N C x N C`` Gram, and, for the diagonal method, each entry of
``diag F`` (the entries are the independent ``1 x 1`` blocks of ``diag F``, so an
entry is dropped only when it is exactly zero: a sum of squares has no
cancellation, so a tiny entry is resolved, unlike a tiny eigenvalue).

Precision: everything is computed in the features' dtype (float32 stays float32,
no upcast); memory is estimated with :func:`~numeric._validation.require_memory`
before each large allocation and the batched work is chunked to bound it.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

try:  # optional: only a speed-up (see _serial_blas)
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover - depends on the environment
    _threadpool_limits = None

from ngdsym.methods import KFACDamping

from ._kernels import broadcast_outputs
from ._linalg import pinv_keep
from ._mlp import Features
from ._validation import require_memory

__all__ = [
    "kfac_kernel",
    "kfac_update",
    "unit_wise_kernel",
    "unit_wise_update",
    "diagonal_kernel",
    "diagonal_update",
]

#: Bytes one chunk of batched work (units, sample pairs, X2 rows) may plan to use.
CHUNK_BYTES = 1 << 27  # 128 MiB: large enough for BLAS efficiency, small next to RAM


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _serial_blas():
    """Run BLAS on one thread (when ``threadpoolctl`` is installed).

    The unit-wise methods make one batched LAPACK call on thousands of small
    (``N C x N C``) matrices; OpenBLAS threads inside each small factorisation
    only synchronise, which made batched ``eigh`` 10-20x slower than on one
    thread (measured on a loaded 2-core machine).  Parallelism across units is
    what would help, and numpy does not offer it.
    """
    if _threadpool_limits is None:
        yield
        return
    with _threadpool_limits(limits=1, user_api="blas"):
        yield


def _sizes(feat: Features) -> tuple[int, int, np.dtype]:
    n, C = feat.outputs.shape
    return n, C, feat.outputs.dtype


def _same_inputs(feat: Features, feat2: Features) -> bool:
    """Whether ``feat2`` are the training features (kernel is then symmetric: reuse work)."""
    if feat2 is feat:
        return True
    if feat2.outputs.shape != feat.outputs.shape:
        return False
    return all(np.array_equal(a, b) for a, b in zip(feat.hbar, feat2.hbar)) and all(
        np.array_equal(a, b) for a, b in zip(feat.delta, feat2.delta)
    )


def _safe_reciprocal(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``1 / values`` where ``keep``, else 0 (the pseudo-inverse of a diagonal)."""
    return np.where(keep, 1 / np.where(keep, values, 1), 0).astype(values.dtype, copy=False)


def _chunk(per_item_bytes: float, n_items: int) -> int:
    """Items per chunk so that one chunk needs about :data:`CHUNK_BYTES`."""
    return int(max(1, min(n_items, CHUNK_BYTES // max(1, int(per_item_bytes)))))


def _split(update_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[dW | db]`` -> ``(dW, db)`` as contiguous arrays."""
    return np.ascontiguousarray(update_matrix[:, :-1]), np.ascontiguousarray(update_matrix[:, -1])


def _residual_rows(delta: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """``(n, i) -> sum_c delta[n, c, i] r[n, c]``: ``grad L`` of layer l is this^T Hbar / N."""
    return np.einsum("nci,nc->ni", delta, residual)


class _FactorBasis:
    """Eigenbasis of a Kronecker factor ``R^T R / N``, as the kernel and the update need it.

    ``R`` (``n_rows x dim``) holds the factor's rows (``Delta`` or ``Hbar``); with
    ``R^T R = W diag(values) W^T`` the kernel needs the products
    ``partner[:, i] coords[:, i]`` with ``coords = R W`` (training rows) and
    ``partner = R2 W`` (rows of ``X2``, or ``R`` itself), and the update needs
    ``W @ c``.  Each eigen-index may be rescaled (``coords * s``, ``partner / s``,
    ``lift = W / s``) without changing any of these.

    * Primal (``dim <= n_rows``): ``eigh(R^T R)``, no rescaling.
    * Dual (``dim > n_rows``, no ``dim x dim`` matrix is formed): with
      ``R R^T = U diag(values) U^T`` the push-through gives ``W = R^T U
      values^{-1/2}``; rescaled by ``s = values^{-1/2}`` this is ``coords = U``,
      ``partner = (R2 R^T) U`` (``U values`` for ``R2 = R``), ``lift = R^T U``:
      nothing is divided by an eigenvalue, so the damped case keeps *every*
      eigenpair (a null direction of ``R R^T`` has ``partner = 0`` and
      ``R^T U_i = 0`` up to round-off, which is what the exact formula says).

    ``keep_null=False`` (``rho = 0``, pseudo-inverse) drops the eigenvalues under
    the cut-off of :func:`~numeric._linalg.pinv_keep`; otherwise all are kept
    (clipped at 0), so a damped result carries no truncation error.
    """

    def __init__(self, R: np.ndarray, R2: np.ndarray | None, keep_null: bool):
        n_rows, dim = R.shape
        self._R = R
        primal = dim <= n_rows
        values, V = np.linalg.eigh(R.T @ R if primal else R @ R.T)
        if keep_null:
            values = np.maximum(values, 0)
        else:
            keep = pinv_keep(values, values.dtype, psd=True)
            values, V = values[keep], V[:, keep]
        self.values = values
        if primal:
            self._W, self._U = V, None
            self.coords = R @ V
            self.partner = self.coords if R2 is None else R2 @ V
        else:
            self._W, self._U = None, V
            self.coords = V
            self.partner = V * values if R2 is None else (R2 @ R.T) @ V

    def lift(self, coefficients: np.ndarray) -> np.ndarray:
        """``W @ coefficients`` (rescaled as ``coords``): eigen-coordinates to the factor's index space."""
        if self._U is None:
            return self._W @ coefficients
        return self._R.T @ (self._U @ coefficients)


def _kfac_layer_bases(D, H, D2, H2, keep_null):
    return _FactorBasis(D, D2, keep_null), _FactorBasis(H, H2, keep_null)


def _kfac_memory(n, n2, C, widths_in, widths_out, itemsize, what):
    # Per layer: the two (dual) Grams and their eigenvectors, the cross Grams and the coordinates.
    worst = max(
        4 * min(n * C, m_out) ** 2 + 4 * min(n, m_in) ** 2 + 3 * (n + n2) * C * min(n * C, m_out)
        + 3 * (n + n2) * min(n, m_in)
        for m_in, m_out in zip(widths_in, widths_out)
    )
    require_memory(
        itemsize * (2 * n2 * C * n * C + worst),
        what,
        "use fewer inputs X, X2 or fewer outputs C (K-FAC needs a few N C x N C matrices per layer)",
    )


# --------------------------------------------------------------------------- K-FAC
def kfac_kernel(feat: Features, feat2: Features, damping: float, kfac_damping) -> np.ndarray:
    """K-FAC preconditioned kernel ``J(X2) (F_hat + rho I)^{-1} J(X)^T / N`` (theory.md section 2).

    ``F_hat = blockdiag_l B_l (x) A_{l-1}`` with ``A_{l-1} = Hbar^T Hbar / N`` and
    ``B_l = Delta^T Delta / N`` (sum over outputs included).  With ``b_i``, ``a_j``
    the eigenvalues of ``B_l``, ``A_{l-1}`` and ``D2c``, ``Dc``, ``H2c``, ``Hc``
    the feature rows in their eigenbases (:class:`_FactorBasis`, obtained from
    the ``N C x N C`` and ``N x N`` duals when the layer is wider), layer ``l``
    contributes

    ``K_l[(m,c'),(n,c)] = (1/N) sum_ij D2c[mc',i] Dc[nc,i] H2c[m,j] Hc[n,j] w_ij``

    * ``KFACDamping.FACTORS``: ``F_hat + rho I := (B + sqrt(rho) I) (x) (A + sqrt(rho) I)``,
      ``w_ij = 1 / ((b_i + sqrt rho)(a_j + sqrt rho))`` is separable, so
      ``K_l = N [Bt2 (Bt + N sqrt(rho))^{-1}] o [Q2 (Q + N sqrt(rho))^{-1}]``
      (Hadamard product, forward factor broadcast over outputs): ``O(N^3 C^3)``.
    * ``KFACDamping.EXACT``: ``B (x) A + rho I``, ``w_ij = 1 / (b_i a_j + rho)``;
      computed as ``Z[i,m,n] = sum_j w_ij H2c[m,j] Hc[n,j]`` then a batched
      contraction over ``i``: ``O(N^4 C + N^3 C^3)`` per layer.

    ``rho = 0``: ``w_ij = 1 / (b_i a_j)`` on the nonzero eigenvalues for both
    conventions (they coincide), i.e. ``K_l = N (P^D_l o P^H_{l-1})``, the
    projections onto the row spaces of the factors.  Total cost
    ``O(L (N^2 C^2 M + N^2 M + N^4 C + N^3 C^3))``.

    Parameters
    ----------
    feat, feat2 : Features
        Of the training inputs ``X`` and of ``X2`` (may be ``feat`` itself).
    damping : float
        ``rho >= 0``.
    kfac_damping : KFACDamping or str

    Returns
    -------
    ndarray ``(N2 C, N C)``

    Examples
    --------
    A hidden layer with ``N <= M`` contributes ``N I`` and the output layer
    ``I`` as ``rho -> 0``: ``alpha = N (L - 1) + 1`` (theory.md section 2).

    >>> from numeric import MLP
    >>> net = MLP([4, 16, 16, 1], activation="tanh", seed=0)
    >>> feat = net.features(np.random.default_rng(0).standard_normal((3, 4)))
    >>> K = kfac_kernel(feat, feat, 0.0, "exact")
    >>> bool(np.allclose(K, 7 * np.eye(3)))
    True
    """
    kfac_damping = KFACDamping.parse(kfac_damping)
    n, C, dtype = _sizes(feat)
    n2 = feat2.outputs.shape[0]
    same = _same_inputs(feat, feat2)
    widths_out = [d.shape[2] for d in feat.delta]
    widths_in = [h.shape[1] for h in feat.hbar]
    _kfac_memory(n, n2, C, widths_in, widths_out, dtype.itemsize,
                 f"kfac_kernel ({kfac_damping} damping) with N = {n}, N2 = {n2}, C = {C}, "
                 f"widths {widths_out}")
    keep_null = damping > 0
    root = math.sqrt(damping)
    K = np.zeros((n2 * C, n * C), dtype=dtype)
    for k in range(feat.depth):
        D = feat.delta[k].reshape(n * C, -1)
        H = feat.hbar[k]
        D2 = None if same else feat2.delta[k].reshape(n2 * C, -1)
        H2 = None if same else feat2.hbar[k]
        basis_B, basis_A = _kfac_layer_bases(D, H, D2, H2, keep_null)
        Dc, Hc = basis_B.coords, basis_A.coords
        D2c, H2c = basis_B.partner, basis_A.partner
        b = basis_B.values / n
        a = basis_A.values / n
        if kfac_damping is KFACDamping.FACTORS:
            left = (D2c / (b + root)) @ Dc.T  # = D2 (B + sqrt(rho))^+ D^T
            right = (H2c / (a + root)) @ Hc.T  # = H2 (A + sqrt(rho))^+ H^T
            K += broadcast_outputs(right, C) * left * (1 / n)
        else:
            weights = 1 / (np.multiply.outer(b, a) + damping)
            K += _separable_core_kernel(D2c, Dc, H2c, Hc, weights, n2, n, C) * (1 / n)
    return K


def _separable_core_kernel(D2c, Dc, H2c, Hc, weights, n2, n, C):
    """``sum_ij D2c[mc',i] Dc[nc,i] H2c[m,j] Hc[n,j] weights[i,j]`` as ``(n2 C, n C)``.

    Chunked over the rows ``m`` of ``X2``; per row ``O(n rB (rA + C^2))`` work.
    """
    rB, rA = weights.shape
    dtype = Dc.dtype
    out = np.empty((n2 * C, n * C), dtype=dtype)
    D2r = D2c.reshape(n2, C, rB)
    Dr_t = Dc.reshape(n, C, rB).transpose(0, 2, 1)  # (n, rB, C)
    per_row = dtype.itemsize * (rB * rA + 2 * rB * n + 2 * n * C * rB + n * C * C)
    step = _chunk(per_row, n2)
    require_memory(step * per_row, f"K-FAC exact-damping core ({step} rows of X2, N = {n}, "
                   f"ranks {rB} x {rA})", "use fewer inputs X or X2")
    for start in range(0, n2, step):
        rows = slice(start, min(n2, start + step))
        # Z[i, m, n] = sum_j w_ij H2c[m, j] Hc[n, j]
        Z = (weights[:, None, :] * H2c[rows][None, :, :]) @ Hc.T
        tmp = D2r[rows][:, None, :, :] * Z.transpose(1, 2, 0)[:, :, None, :]  # (m, n, C, rB)
        block = tmp @ Dr_t[None]  # (m, n, C, C)
        out[start * C: rows.stop * C] = block.transpose(0, 2, 1, 3).reshape(-1, n * C)
    return out


def kfac_update(feat: Features, residual: np.ndarray, damping: float, kfac_damping) -> list:
    """K-FAC natural-gradient update ``(F_hat + rho I)^{-1} grad L`` per layer (theory.md section 2).

    With ``G_l = Delta^T E Hbar / N`` the gradient of ``[W_l | b_l]`` (``E`` holds
    the residual, ``E[(n,c), n] = r[n, c]``) and the eigenbases of the factors
    (``B = W_B diag(b) W_B^T``, ``A = W_A diag(a) W_A^T``, from the duals when wide):

    * ``FACTORS``: ``(B + sqrt rho)^{-1} G (A + sqrt rho)^{-1}``; by push-through
      ``= Delta^T (Bt/N + sqrt rho)^{-1} E (Q/N + sqrt rho)^{-1} Hbar / N``.
    * ``EXACT``: ``W_B [(W_B^T G W_A) / (b a^T + rho)] W_A^T`` (elementwise division),
      restricted to the ranges because ``G`` lies in ``range(B) (x) range(A)``.

    ``rho = 0``: pseudo-inverses; both conventions give ``B^+ G A^+``.
    Cost ``O(N^2 C^2 M + N^3 C^3 + N M^2)`` per layer (the last term writes the
    ``M x M`` result).

    Parameters
    ----------
    feat : Features
    residual : ndarray ``(N, C)``
        ``f(X) - Y``.
    damping : float
    kfac_damping : KFACDamping or str

    Returns
    -------
    list of ``(dW_l, db_l)``

    Examples
    --------
    For one layer ``F = I_C (x) A`` is its own K-FAC approximation, so the
    update maps the outputs exactly onto the residual (``J u = K r = r``):

    >>> from numeric import MLP
    >>> net = MLP([6, 2], seed=0, sigma_b=0.5)
    >>> X = np.random.default_rng(1).standard_normal((4, 6))
    >>> feat = net.features(X)
    >>> r = np.random.default_rng(2).standard_normal((4, 2))
    >>> [(dW, db)] = kfac_update(feat, r, 0.0, "exact")
    >>> Ju = X @ dW.T * (2**0.5 / 6**0.5) + 0.5 * db
    >>> bool(np.allclose(Ju, r))
    True
    """
    kfac_damping = KFACDamping.parse(kfac_damping)
    n, C, dtype = _sizes(feat)
    widths_out = [d.shape[2] for d in feat.delta]
    widths_in = [h.shape[1] for h in feat.hbar]
    _kfac_memory(n, 0, C, widths_in, widths_out, dtype.itemsize,
                 f"kfac_update ({kfac_damping} damping) with N = {n}, C = {C}, widths {widths_out}")
    residual = np.asarray(residual, dtype=dtype)
    keep_null = damping > 0
    root = math.sqrt(damping)
    updates = []
    for k in range(feat.depth):
        m_out, m_in = widths_out[k], widths_in[k]
        require_memory(dtype.itemsize * 3 * m_out * m_in,
                       f"kfac_update: the update of layer {k + 1} ({m_out} x {m_in})",
                       "use a narrower network")
        D = feat.delta[k].reshape(n * C, -1)
        basis_B, basis_A = _kfac_layer_bases(D, feat.hbar[k], None, None, keep_null)
        rB = basis_B.coords.shape[1]
        # W_B^T G W_A = (1/N) sum_{n,c} r[n,c] Dc[nc,:]^T Hc[n,:]
        Dr = _residual_rows(basis_B.coords.reshape(n, C, rB), residual)
        G = Dr.T @ basis_A.coords * (1 / n)
        b = basis_B.values / n
        a = basis_A.values / n
        if kfac_damping is KFACDamping.FACTORS:
            coefficients = G / np.multiply.outer(b + root, a + root)
        else:
            coefficients = G / (np.multiply.outer(b, a) + damping)
        left = basis_B.lift(coefficients)  # W_B coef: (M_l, rA)
        update = basis_A.lift(left.T).T  # W_B coef W_A^T: (M_l, M_{l-1} + 1)
        updates.append(_split(update))
    return updates


# --------------------------------------------------------------------------- unit-wise
def _unit_grams(dT_chunk, Q_b, d2T_chunk=None, Q2_b=None):
    """Per-unit Grams ``Theta_{l,i} = (d_i d_i^T) o Q``: ``(units, N C, N C)`` (and the cross ones)."""
    T = dT_chunk[:, :, None] * Q_b[None] * dT_chunk[:, None, :]
    if d2T_chunk is None:
        return T, None
    return T, d2T_chunk[:, :, None] * Q2_b[None] * dT_chunk[:, None, :]


def _unit_eigh(T):
    """One batched ``eigh`` of a PSD ``(units, s, s)`` stack: ``(U, 1/values or 0, kept mask)``."""
    values, U = np.linalg.eigh(T)
    keep = pinv_keep(values, values.dtype, psd=True)
    return U, _safe_reciprocal(values, keep), keep


def _damped_unit_solve(A, rhs, damping):
    """Batched ``A^{-1} rhs`` for damped unit Grams; a clear error when ``N rho`` is lost in round-off."""
    try:
        return np.linalg.solve(A, rhs)
    except np.linalg.LinAlgError:
        raise ValueError(
            f"damping={damping!r} is too small for unit-wise NGD: N * damping vanishes in round-off "
            "against a rank-deficient unit Gram (e.g. C > 1 or saturated units); pass damping=0 "
            "for the pseudo-inverse limit or a larger damping"
        ) from None


def unit_wise_kernel(feat: Features, feat2: Features, damping: float) -> np.ndarray:
    """Unit-wise NGD kernel ``sum_{l,i} Theta_{l,i}(X2, X) (Theta_{l,i} + N rho)^{-1}`` (theory.md 2).

    Unit ``(l, i)`` owns row ``i`` of ``[W_l | b_l]``; its Jacobian rows are
    ``delta_{l,c,i}(x_n) Hbar_{l-1}[n]`` so its Gram is
    ``Theta_{l,i} = (Delta_i Delta_i^T) o Q_{l-1}`` (``Delta_i = delta[:, :, i]``
    flattened to ``N C``; ``Q`` broadcast over outputs), and push-through gives the
    kernel above.  All units of a layer are solved by one batched
    ``numpy.linalg.solve`` (``rho > 0``) or ``numpy.linalg.eigh`` (``rho = 0``,
    pseudo-inverse) call on the stacked ``(units, N C, N C)`` Grams, chunked over
    units only to bound memory.  Cost ``O(L M (N C)^3)``.

    Parameters
    ----------
    feat, feat2 : Features
    damping : float

    Returns
    -------
    ndarray ``(N2 C, N C)``

    Examples
    --------
    With ``C = 1`` and ``rho -> 0`` each unit projects onto the samples where it
    is active, so ``K = diag(a_n)``; for tanh every unit is active:
    ``a_n = M_1 + M_2 + 1``.

    >>> from numeric import MLP
    >>> net = MLP([5, 8, 6, 1], activation="tanh", seed=3)
    >>> feat = net.features(np.random.default_rng(0).standard_normal((4, 5)))
    >>> K = unit_wise_kernel(feat, feat, 0.0)
    >>> bool(np.allclose(K, 15 * np.eye(4)))
    True
    """
    n, C, dtype = _sizes(feat)
    n2 = feat2.outputs.shape[0]
    same = _same_inputs(feat, feat2)
    nc, n2c = n * C, n2 * C
    itemsize = dtype.itemsize
    require_memory(itemsize * 2 * n2c * nc, f"unit_wise_kernel with N = {n}, N2 = {n2}, C = {C}",
                   "use fewer inputs X, X2 or outputs C")
    K_t = np.zeros((nc, n2c), dtype=dtype)  # accumulates sum_i (Theta_i + N rho)^+ Theta_i(X, X2)
    with _serial_blas():
        for k in range(feat.depth):
            _unit_wise_kernel_layer(feat, feat2, k, damping, same, K_t)
    return np.ascontiguousarray(K_t.T)


def _unit_wise_kernel_layer(feat, feat2, k, damping, same, K_t):
    """Add layer ``k``'s ``sum_i (Theta_i + N rho)^+ Theta_i(X, X2)`` to ``K_t`` (``N C x N2 C``)."""
    n, C, dtype = _sizes(feat)
    n2 = feat2.outputs.shape[0]
    nc, n2c = n * C, n2 * C
    itemsize = dtype.itemsize
    m = feat.delta[k].shape[2]
    dT = feat.delta[k].reshape(nc, m).T
    H = feat.hbar[k]
    Q_b = broadcast_outputs(H @ H.T, C)
    if same:
        d2T, Q2_b = None, None
    else:
        d2T = feat2.delta[k].reshape(n2c, m).T
        Q2_b = broadcast_outputs(feat2.hbar[k] @ H.T, C)
    # Per unit: its Gram, a factorisation-sized workspace and the cross Gram / solution.
    per_unit = itemsize * (4 * nc * nc + 3 * n2c * nc)
    step = _chunk(per_unit, m)
    require_memory(step * per_unit,
                   f"unit_wise_kernel, layer {k + 1}: {step} units x ({nc} x {nc}) Grams "
                   f"(N = {n}, N2 = {n2}, C = {C}, M_{k + 1} = {m})",
                   "use fewer inputs X, X2 or outputs C")
    for start in range(0, m, step):
        units = slice(start, min(m, start + step))
        T, T2 = _unit_grams(dT[units], Q_b, None if same else d2T[units], Q2_b)
        if damping > 0:
            rhs = T if same else T2.transpose(0, 2, 1)  # Theta_i(X, X2) (T is symmetric)
            A = T + (n * damping) * np.eye(nc, dtype=dtype)
            K_t += _damped_unit_solve(A, rhs, damping).sum(axis=0)
        else:
            U, inverse, keep = _unit_eigh(T)
            if same:  # Theta_i^+ Theta_i is the projection onto the kept eigenvectors
                K_t += ((U * keep[:, None, :]) @ U.transpose(0, 2, 1)).sum(axis=0)
            else:  # Theta_i^+ Theta_i(X, X2) = U diag(1/values) (Theta_i(X2, X) U)^T
                K_t += ((U * inverse[:, None, :]) @ (T2 @ U).transpose(0, 2, 1)).sum(axis=0)


def unit_wise_update(feat: Features, residual: np.ndarray, damping: float) -> list:
    """Unit-wise natural-gradient update (theory.md section 2).

    Row ``i`` of ``[dW_l | db_l]`` is ``J_{l,i}^T (Theta_{l,i} + N rho)^{-1} r``
    (push-through on the unit's block ``J_{l,i}^T J_{l,i} / N``), i.e.
    ``sum_{n,c} z_i[n,c] delta[n,c,i] Hbar[n]`` with ``z_i`` the solution; one
    batched ``solve`` (or ``eigh`` for ``rho = 0``) over the units of a layer.
    Cost ``O(L M (N C)^3 + N M^2)``.

    Parameters
    ----------
    feat : Features
    residual : ndarray ``(N, C)``
    damping : float

    Returns
    -------
    list of ``(dW_l, db_l)``

    Examples
    --------
    >>> from numeric import MLP
    >>> net = MLP([3, 4, 1], seed=0)
    >>> feat = net.features(np.eye(3))
    >>> [tuple(dW.shape) + tuple(db.shape) for dW, db in unit_wise_update(feat, np.ones((3, 1)), 1e-3)]
    [(4, 3, 4), (1, 4, 1)]
    """
    n, C, dtype = _sizes(feat)
    nc = n * C
    itemsize = dtype.itemsize
    r = np.asarray(residual, dtype=dtype).reshape(nc)
    updates = []
    for k in range(feat.depth):
        m = feat.delta[k].shape[2]
        H = feat.hbar[k]
        require_memory(itemsize * 2 * m * H.shape[1],
                       f"unit_wise_update: the update of layer {k + 1} ({m} x {H.shape[1]})",
                       "use a narrower network")
        dT = feat.delta[k].reshape(nc, m).T
        Q_b = broadcast_outputs(H @ H.T, C)
        per_unit = itemsize * (4 * nc * nc + 3 * nc)
        step = _chunk(per_unit, m)
        require_memory(step * per_unit,
                       f"unit_wise_update, layer {k + 1}: {step} units x ({nc} x {nc}) Grams "
                       f"(N = {n}, C = {C}, M_{k + 1} = {m})", "use fewer inputs X or outputs C")
        weights = np.empty((m, n), dtype=dtype)  # weights[i, n] = sum_c z_i[n, c] delta[n, c, i]
        with _serial_blas():  # batched small factorisations: see _serial_blas
            for start in range(0, m, step):
                units = slice(start, min(m, start + step))
                T, _ = _unit_grams(dT[units], Q_b)
                if damping > 0:
                    T += (n * damping) * np.eye(nc, dtype=dtype)
                    # contiguous: batched solve is slow on a stride-0 view
                    rhs = np.repeat(r[None, :, None], T.shape[0], axis=0)
                    z = _damped_unit_solve(T, rhs, damping)[..., 0]
                else:
                    U, inverse, _ = _unit_eigh(T)
                    z = (U @ (inverse * (r @ U))[..., None])[..., 0]  # Theta_i^+ r
                weights[units] = (z * dT[units]).reshape(-1, n, C).sum(axis=2)
        updates.append(_split(weights @ H))
    return updates


# --------------------------------------------------------------------------- diagonal
def _diagonal_inverse(feat: Features, k: int, damping: float) -> np.ndarray:
    """``1 / (diag F_l + rho)`` as an ``(M_l, M_{l-1} + 1)`` array (pseudo-inverse at rho = 0).

    ``diag F_l[i, j] = (1/N) sum_{n,c} delta[n,c,i]^2 Hbar[n,j]^2``: squared features,
    ``O(N M^2)``.
    """
    delta, H = feat.delta[k], feat.hbar[k]
    n = H.shape[0]
    diag_F = (np.square(delta).sum(axis=1).T @ np.square(H)) * (1 / n)
    if damping > 0:
        return 1 / (diag_F + damping)
    # each entry is its own 1 x 1 block (module docstring): kept iff nonzero
    keep = pinv_keep(diag_F[..., None], diag_F.dtype, psd=True)[..., 0]
    return _safe_reciprocal(diag_F, keep)


def diagonal_update(feat: Features, residual: np.ndarray, damping: float) -> list:
    """Element-wise diagonal NGD update ``G_l / (diag F_l + rho)`` (theory.md section 2).

    ``G_l[i, j] = (1/N) sum_n (sum_c delta[n,c,i] r[n,c]) Hbar[n, j]``; at ``rho = 0``
    entries with ``diag F == 0`` (under the cutoff of the module docstring) get 0,
    where ``G`` vanishes too.  Cost ``O(L N M^2)``.

    Parameters
    ----------
    feat : Features
    residual : ndarray ``(N, C)``
    damping : float

    Returns
    -------
    list of ``(dW_l, db_l)``

    Examples
    --------
    With ``sigma_b = 0`` the bias column of ``diag F`` is zero, so ``db = 0``:

    >>> from numeric import MLP
    >>> net = MLP([3, 5, 1], seed=0)
    >>> feat = net.features(np.eye(3))
    >>> [float(abs(db).max()) for _, db in diagonal_update(feat, np.ones((3, 1)), 0.0)]
    [0.0, 0.0]
    """
    n, C, dtype = _sizes(feat)
    residual = np.asarray(residual, dtype=dtype)
    updates = []
    for k in range(feat.depth):
        m, m_in = feat.delta[k].shape[2], feat.hbar[k].shape[1]
        require_memory(dtype.itemsize * 4 * m * m_in,
                       f"diagonal_update: diag F and the update of layer {k + 1} ({m} x {m_in})",
                       "use a narrower network")
        gradient = _residual_rows(feat.delta[k], residual).T @ feat.hbar[k] * (1 / n)
        updates.append(_split(gradient * _diagonal_inverse(feat, k, damping)))
    return updates


def diagonal_kernel(feat: Features, feat2: Features, damping: float) -> np.ndarray:
    """Element-wise diagonal NGD kernel ``J(X2) (diag F + rho)^{-1} J(X)^T / N`` (theory.md section 2).

    ``K[(m,c'),(n,c)] = (1/N) sum_l sum_{i,j} delta2[m,c',i] delta[n,c,i]
    Hbar2[m,j] Hbar[n,j] / (diag F_l[i,j] + rho)``.  The weights have no low-rank
    structure, so this is inherently ``O(N N2 M^2)`` per layer (the same as
    ``J2 diag(w) J^T`` with ``P ~ M^2`` columns, but without forming ``J``): for
    each chunk of sample pairs ``(m, n)`` one matrix product
    ``(Hbar2[m] o Hbar[n]) @ w^T`` gives ``Y[(m,n), i]``, then a batched
    ``C x C`` contraction over units.  When ``feat2`` equals ``feat`` only the
    pairs ``m <= n`` are computed (the kernel is symmetric).  Chunked over pairs
    to bound memory.  Not isotropic (theory.md section 2).

    Parameters
    ----------
    feat, feat2 : Features
    damping : float

    Returns
    -------
    ndarray ``(N2 C, N C)``

    Examples
    --------
    >>> from numeric import MLP
    >>> net = MLP([4, 32, 1], seed=0)
    >>> feat = net.features(np.random.default_rng(0).standard_normal((5, 4)))
    >>> K = diagonal_kernel(feat, feat, 0.0)
    >>> bool(np.allclose(K, K.T)), bool(np.linalg.cond(K) > 2)
    (True, True)
    """
    n, C, dtype = _sizes(feat)
    n2 = feat2.outputs.shape[0]
    same = _same_inputs(feat, feat2)
    itemsize = dtype.itemsize
    require_memory(itemsize * 2 * n2 * C * n * C, f"diagonal_kernel with N = {n}, N2 = {n2}, C = {C}",
                   "use fewer inputs X, X2 or outputs C")
    if same:
        rows, cols = np.triu_indices(n)
    else:
        rows, cols = (idx.ravel() for idx in np.meshgrid(np.arange(n2), np.arange(n), indexing="ij"))
    K4 = np.zeros((n2, n, C, C), dtype=dtype)  # K4[m, n, c', c]
    for k in range(feat.depth):
        inverse = _diagonal_inverse(feat, k, damping)  # (M_l, M_{l-1} + 1)
        m, m_in = inverse.shape
        H, H2 = feat.hbar[k], feat2.hbar[k]
        delta, delta2 = feat.delta[k], feat2.delta[k]
        per_pair = itemsize * (2 * m_in + 2 * m + 3 * C * m + C * C)
        step = _chunk(per_pair, rows.size)
        require_memory(step * per_pair + itemsize * 2 * m * m_in,
                       f"diagonal_kernel, layer {k + 1}: {step} sample pairs x (M_{k + 1} = {m}) x "
                       f"(M_{k} + 1 = {m_in}) (N = {n}, N2 = {n2}, C = {C})",
                       "use fewer inputs X, X2 or a narrower network")
        for start in range(0, rows.size, step):
            p, q = rows[start:start + step], cols[start:start + step]
            Y = (H2[p] * H[q]) @ inverse.T  # Y[(m,n), i] = sum_j w_ij Hbar2[m,j] Hbar[n,j]
            block = (delta2[p] * Y[:, None, :]) @ delta[q].transpose(0, 2, 1)  # (pairs, C, C)
            K4[p, q] += block
    if same:
        # fill the lower triangle of pairs from the upper one: K4[n, m] = K4[m, n]^T
        lower = rows != cols
        K4[cols[lower], rows[lower]] = K4[rows[lower], cols[lower]].transpose(0, 2, 1)
    K4 *= 1 / n
    return np.ascontiguousarray(K4.transpose(0, 2, 1, 3).reshape(n2 * C, n * C))
