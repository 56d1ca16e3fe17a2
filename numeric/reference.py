"""Dense reference for NGD: dense, straight from the definitions, small sizes only.

Every object here is built literally as ``shared/reference/theory.md`` section 1
defines it: the full Jacobian ``J`` (``N C x P``), the full Fisher ``F = J^T J / N``
(``P x P``), each approximation ``F_hat`` of section 2 as a ``P x P`` matrix, and
every inverse through :mod:`numpy.linalg`.  It exists to check the fast routines of
:mod:`numeric` (which never form ``J`` or ``F``), so it is deliberately
*independent* of them: it reads only ``net.params``, ``net.widths``,
``net.activation``, ``net.sigma_w`` and ``net.sigma_b``, and has its own forward
pass, its own reverse-mode differentiation and its own table of activations and
their derivatives.  It never calls ``MLP.forward``, ``MLP.features``,
``numeric._kernels`` or ``numeric._approx``.  The one thing it shares with them is a
*convention*, not a computation: which eigenvalues the ``damping == 0``
pseudo-inverse treats as zero (:func:`numeric._linalg.pinv_keep`, :data:`PINV_RCOND`),
so that fast and reference define the same limit.

Conventions (theory.md section 1, restated):

* ``u_l = sigma_w / sqrt(M_{l-1}) W_l h_{l-1} + sigma_b b_l``, ``h_l = phi(u_l)``
  (``l < L``), ``h_0 = x``, ``f = u_L``.
* Parameter vector: the concatenation over layers ``l = 1..L`` of the row-major
  flatten of ``[W_l | b_l]`` (shape ``(M_l, M_{l-1} + 1)``), so layer ``l``'s
  columns are contiguous (:func:`layer_slices`) and unit ``(l, i)`` owns the
  ``M_{l-1} + 1`` contiguous columns of row ``i`` (:func:`unit_slices`).
* Jacobian rows ``n * C + c``; ``F = J^T J / N``; ``grad L = J^T r / N`` with
  ``r = (f(X) - Y).ravel()``; preconditioned kernel
  ``K = J(X2) (F_hat + rho I)^{-1} J(X)^T / N``.

The damped matrix that gets inverted (:func:`damped_fisher`) is ``F_hat + rho I``
except for

* ``Method.GD``: ``I`` (plain gradient descent, damping ignored);
* ``Method.KFAC`` with ``KFACDamping.FACTORS``: ``blockdiag_l (B_l + sqrt(rho) I)
  (x) (A_{l-1} + sqrt(rho) I)`` (``KFACDamping.EXACT`` is ``F_hat + rho I``).

Damping ``rho = 0`` means the limit ``rho -> 0``; see :func:`preconditioned_kernel`
for how it is computed and when it exists.

Cost ``O(P^3)`` time, ``O(P^2)`` memory: calls with ``P`` above
:data:`MAX_PARAMS` (or ``N C`` above :data:`MAX_ROWS`) raise ``MemoryError``.

Examples
--------
>>> import numpy as np
>>> from numeric import MLP, Method
>>> net = MLP([3, 4, 2], activation="tanh", sigma_b=0.5, seed=0)
>>> X = np.random.default_rng(0).standard_normal((5, 3))
>>> jacobian(net, X).shape                       # (N C, P) with P = 4*4 + 2*5
(10, 26)
>>> K = preconditioned_kernel(net, X, Method.EXACT, 1e-12)
>>> bool(np.allclose(K, np.eye(10), atol=1e-6))   # exact NGD: K = I when Theta is invertible
True
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from ngdsym.methods import KFACDamping, Method

from ._linalg import pinv_keep, pinv_rcond
from ._validation import as_inputs, as_targets, check_damping, check_learning_rate, check_positive_int

__all__ = [
    "MAX_PARAMS",
    "MAX_ROWS",
    "PINV_RCOND",
    "ACTIVATION_DERIVATIVES",
    "forward",
    "jacobian",
    "layer_slices",
    "unit_slices",
    "fisher",
    "kfac_factors",
    "fisher_approx",
    "damped_fisher",
    "independent_blocks",
    "pinv_condition",
    "preconditioned_kernel",
    "natural_gradient",
    "layer_kernels",
    "train",
]

#: Largest number of parameters ``P`` the reference accepts ("small sizes only").
MAX_PARAMS = 4000
#: Largest number of Jacobian rows ``N C`` (or ``N2 C``) the reference accepts.
MAX_ROWS = 4000
#: Relative eigenvalue cut-off of the pseudo-inverse used at ``damping == 0``:
#: an eigenvalue ``|lambda| <= PINV_RCOND * max |lambda|`` of an independent block of
#: ``F_hat`` counts as zero.  This is the one convention of :mod:`numeric._linalg`
#: (its float64 entry), shared with the fast routines so that both pseudo-invert the
#: same spectrum; only the *convention* is shared, the linear algebra here is the
#: reference's own.  Round-off in a formed ``F = J^T J / N`` is ``~ P eps ||F|| <=
#: 1e-12 ||F||`` for ``P <= MAX_PARAMS``, far below (see :mod:`numeric._linalg`).
PINV_RCOND = pinv_rcond(np.float64)
#: A right-hand side with a component of relative size above this outside the
#: numerical range of ``F_hat`` has no finite ``rho -> 0`` limit (see
#: :func:`preconditioned_kernel`).  ``sqrt(PINV_RCOND)`` bounds that component for
#: an eigenvalue just under the cut-off of a PSD ``F_hat``; 100x margin.
RANGE_TOL = 100 * math.sqrt(PINV_RCOND)

_SQRT_PI = math.sqrt(math.pi)

#: name -> (phi, phi'), written independently of ``numeric._mlp.ACTIVATIONS``.
ACTIVATION_DERIVATIVES = {
    "relu": (lambda u: np.where(u > 0, u, 0.0), lambda u: np.heaviside(u, 0.0)),
    # sech^2 u = 4 e^{-2|u|} / (1 + e^{-2|u|})^2: full relative accuracy for saturated u
    # (1 - tanh^2 cancels: relative error eps / sech^2 u) and no overflow (cosh u does).
    "tanh": (np.tanh, lambda u: 4.0 * np.exp(-2.0 * np.abs(u)) / (1.0 + np.exp(-2.0 * np.abs(u))) ** 2),
    "erf": (special.erf, lambda u: 2.0 / _SQRT_PI * np.exp(-(u**2))),
    "linear": (lambda u: 1.0 * u, lambda u: np.ones_like(u)),
}


# ----------------------------------------------------------------------------- helpers
class _Snapshot:
    """The only attributes of a network the reference reads, with float64 parameters."""

    def __init__(self, net, params=None):
        self.widths = [int(m) for m in net.widths]
        self.activation = net.activation
        self.sigma_w = float(net.sigma_w)
        self.sigma_b = float(net.sigma_b)
        source = net.params if params is None else params
        self.params = [(np.array(W, dtype=np.float64), np.array(b, dtype=np.float64)) for W, b in source]


def _parameter_shapes(net):
    """``[(M_l, M_{l-1} + 1)]`` for ``l = 1..L``."""
    w = list(net.widths)
    return [(w[k + 1], w[k] + 1) for k in range(len(w) - 1)]


def _n_params(net) -> int:
    return sum(m * n for m, n in _parameter_shapes(net))


def _check_size(net, *row_counts) -> int:
    """``P``, after refusing sizes the dense reference is not meant for."""
    P = _n_params(net)
    C = net.widths[-1]
    if P > MAX_PARAMS:
        raise MemoryError(
            f"numeric.reference is dense (P x P matrices) and for small sizes only: the network "
            f"has P = {P} parameters > MAX_PARAMS = {MAX_PARAMS}; use narrower/shallower networks "
            "or the fast routines of numeric"
        )
    for n in row_counts:
        if n * C > MAX_ROWS:
            raise MemoryError(
                f"numeric.reference is dense and for small sizes only: N C = {n} x {C} = {n * C} "
                f"Jacobian rows > MAX_ROWS = {MAX_ROWS}; use fewer inputs or the fast routines of numeric"
            )
    return P


def _theta_vector(net) -> np.ndarray:
    """The parameter vector: row-major ``[W_l | b_l]`` concatenated over layers."""
    return np.concatenate(
        [np.column_stack([np.asarray(W, float), np.asarray(b, float)]).ravel() for W, b in net.params]
    )


def _unflatten(net, theta):
    """Inverse of :func:`_theta_vector`: list of ``(W_l, b_l)``."""
    out = []
    for (rows, cols), sl in zip(_parameter_shapes(net), layer_slices(net)):
        block = np.asarray(theta[sl]).reshape(rows, cols)
        out.append((block[:, :-1].copy(), block[:, -1].copy()))
    return out


def _inputs(net, X, argument):
    return as_inputs(X, net.widths[0], np.float64, argument)


def _activation(net):
    try:
        return ACTIVATION_DERIVATIVES[net.activation]
    except KeyError:
        raise ValueError(
            f"net.activation={net.activation!r} has no derivative in numeric.reference; "
            "add it to ACTIVATION_DERIVATIVES"
        ) from None


def _forward_params(net, params, X):
    """Own forward pass (theory.md section 1): ``f(X)`` plus every ``h_{l-1}`` and ``u_l``."""
    phi, _ = _activation(net)
    h = X
    hs, us = [], []
    L = len(params)
    for l, (W, b) in enumerate(params, start=1):
        M_prev = W.shape[1]
        u = (net.sigma_w / math.sqrt(M_prev)) * (h @ W.T) + net.sigma_b * b
        hs.append(h)
        us.append(u)
        h = phi(u) if l < L else u
    return h, hs, us


def _method(method) -> Method:
    return Method.parse(method)


# ----------------------------------------------------------------------------- public
def forward(net, X) -> np.ndarray:
    """``f(X)``, shape ``(N, C)``, from the reference's own forward pass.

    >>> from numeric import MLP
    >>> forward(MLP([2, 3, 1], seed=0), np.ones((4, 2))).shape
    (4, 1)
    """
    X = _inputs(net, X, "X")
    params = [(np.asarray(W, float), np.asarray(b, float)) for W, b in net.params]
    return _forward_params(net, params, X)[0]


def layer_slices(net) -> list[slice]:
    """Column slice of each layer ``l = 1..L`` in the parameter vector / Jacobian.

    >>> from numeric import MLP
    >>> layer_slices(MLP([2, 3, 1]))
    [slice(0, 9, None), slice(9, 13, None)]
    """
    out, start = [], 0
    for rows, cols in _parameter_shapes(net):
        out.append(slice(start, start + rows * cols))
        start += rows * cols
    return out


def unit_slices(net) -> list[np.ndarray]:
    """Column indices of every unit ``(l, i)`` (row ``i`` of ``[W_l | b_l]``), layer by layer.

    >>> from numeric import MLP
    >>> [u.tolist() for u in unit_slices(MLP([1, 2, 1]))]
    [[0, 1], [2, 3], [4, 5, 6]]
    """
    out = []
    for (rows, cols), sl in zip(_parameter_shapes(net), layer_slices(net)):
        for i in range(rows):
            out.append(np.arange(sl.start + i * cols, sl.start + (i + 1) * cols))
    return out


def _jacobian_and_factors(net, X):
    """``J`` plus the K-FAC factors' ingredients, by reverse mode per sample.

    Returns ``J`` ``(N C, P)``, ``hbar[l]`` ``(N, M_{l-1}+1)`` and ``delta[l]``
    ``(N, C, M_l)`` (0-based ``l``), with ``J[(n, c), layer l] =
    vec(delta[l][n, c] hbar[l][n]^T)``: the derivative of ``f_c`` with respect to
    ``[W_l | b_l]`` is ``d f_c / d u_l`` times ``d u_l / d [W_l | b_l]`` =
    ``[sigma_w h_{l-1} / sqrt(M_{l-1}), sigma_b]``.
    """
    _, dphi = _activation(net)
    params = [(np.asarray(W, float), np.asarray(b, float)) for W, b in net.params]
    N, C, L = X.shape[0], net.widths[-1], len(params)
    _, hs, us = _forward_params(net, params, X)
    hbar = [
        np.column_stack([(net.sigma_w / math.sqrt(W.shape[1])) * h, np.full(N, net.sigma_b)])
        for (W, _), h in zip(params, hs)
    ]
    delta = [np.empty((N, C, W.shape[0])) for W, _ in params]
    J = np.empty((N * C, _n_params(net)))
    slices = layer_slices(net)
    for n in range(N):
        # G[c, :] = d f_c / d u_l for every output c at once (reverse mode, all outputs).
        G = np.eye(C)
        for l in range(L - 1, -1, -1):
            delta[l][n] = G
            W = params[l][0]
            grad_layer = G[:, :, None] * hbar[l][n][None, None, :]  # (C, M_l, M_{l-1}+1)
            J[n * C:(n + 1) * C, slices[l]] = grad_layer.reshape(C, -1)
            if l > 0:
                # u_l = s W_l phi(u_{l-1}) + ...  =>  d f / d u_{l-1} = (G s W_l) * phi'(u_{l-1})
                G = (G @ ((net.sigma_w / math.sqrt(W.shape[1])) * W)) * dphi(us[l - 1][n])[None, :]
    return J, hbar, delta


def jacobian(net, X) -> np.ndarray:
    """Dense Jacobian ``J = d f(X) / d theta``, shape ``(N C, P)``, rows ``n * C + c``.

    Columns: :func:`layer_slices` / :func:`unit_slices` order (row-major ``[W_l | b_l]``).

    >>> from numeric import MLP
    >>> jacobian(MLP([2, 3, 2], sigma_b=0.0), np.ones((1, 2)))[:, [2, 5, 8]]  # bias columns
    array([[0., 0., 0.],
           [0., 0., 0.]])
    """
    X = _inputs(net, X, "X")
    _check_size(net, X.shape[0])
    return _jacobian_and_factors(net, X)[0]


def fisher(net, X) -> np.ndarray:
    """Fisher ``F = J^T J / N`` (``P x P``), theory.md section 1."""
    X = _inputs(net, X, "X")
    _check_size(net, X.shape[0])
    J = _jacobian_and_factors(net, X)[0]
    return J.T @ J / X.shape[0]


def kfac_factors(net, X) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-FAC factors ``(A_{l-1}, B_l)`` of every layer (theory.md section 2, K-FAC note).

    ``A_{l-1} = (1/N) sum_n hbar_{l-1}(x_n) hbar_{l-1}(x_n)^T`` (``(M_{l-1}+1)`` square),
    ``B_l = (1/N) sum_n sum_c delta_{l,c}(x_n) delta_{l,c}(x_n)^T`` (``M_l`` square),
    so that ``B_l (x) A_{l-1}`` matches the row-major ``[W_l | b_l]`` column order
    (unit index outer).
    """
    X = _inputs(net, X, "X")
    _check_size(net, X.shape[0])
    _, hbar, delta = _jacobian_and_factors(net, X)
    N = X.shape[0]
    out = []
    for hb, d in zip(hbar, delta):
        A = hb.T @ hb / N
        D = d.reshape(-1, d.shape[2])  # all (n, c) rows
        out.append((A, D.T @ D / N))
    return out


def _keep_mask(net, method: Method) -> np.ndarray:
    """Which entries of ``F`` the block approximations keep (``P x P`` booleans)."""
    P = _n_params(net)
    layer_of = np.empty(P, int)
    for l, sl in enumerate(layer_slices(net)):
        layer_of[sl] = l
    unit_of = np.empty(P, int)
    for i, cols in enumerate(unit_slices(net)):
        unit_of[cols] = i
    if method is Method.EXACT:
        return np.ones((P, P), bool)
    if method is Method.BLOCK_DIAGONAL:
        return layer_of[:, None] == layer_of[None, :]
    if method is Method.BLOCK_TRIDIAGONAL:
        return np.abs(layer_of[:, None] - layer_of[None, :]) <= 1
    if method is Method.UNIT_WISE:
        return unit_of[:, None] == unit_of[None, :]
    if method is Method.DIAGONAL:
        return np.eye(P, dtype=bool)
    raise AssertionError(method)  # pragma: no cover


def fisher_approx(net, X, method) -> np.ndarray:
    """Undamped ``F_hat`` (``P x P``) of ``method``, built literally (theory.md section 2).

    ``GD``: ``I``; ``EXACT``: ``F``; ``BLOCK_DIAGONAL``: ``F`` with off-layer blocks set
    to 0; ``BLOCK_TRIDIAGONAL``: keeps the blocks ``F_{l l'}`` with ``|l - l'| <= 1``;
    ``KFAC``: ``blockdiag_l B_l (x) A_{l-1}`` (:func:`kfac_factors`; the undamped
    ``F_hat`` is the same for both :class:`KFACDamping` conventions); ``UNIT_WISE``:
    keeps the within-unit blocks; ``DIAGONAL``: ``diag(F)``.

    >>> from numeric import MLP
    >>> net, X = MLP([2, 3, 1], seed=0), np.eye(2)
    >>> bool(np.array_equal(fisher_approx(net, X, Method.DIAGONAL),
    ...                     np.diag(np.diag(fisher(net, X)))))
    True
    """
    method = _method(method)
    X = _inputs(net, X, "X")
    P = _check_size(net, X.shape[0])
    if method is Method.GD:
        return np.eye(P)
    if method is Method.KFAC:
        F_hat = np.zeros((P, P))
        for sl, (A, B) in zip(layer_slices(net), kfac_factors(net, X)):
            F_hat[sl, sl] = np.kron(B, A)
        return F_hat
    return np.where(_keep_mask(net, method), fisher(net, X), 0.0)


def damped_fisher(net, X, method, damping, kfac_damping=KFACDamping.FACTORS) -> np.ndarray:
    """The ``P x P`` matrix that NGD inverts for ``method`` at damping ``rho``.

    ``F_hat + rho I`` (``F_hat`` from :func:`fisher_approx`), except ``GD``: ``I``
    (damping ignored) and ``KFAC`` with ``KFACDamping.FACTORS``:
    ``blockdiag_l (B_l + sqrt(rho) I) (x) (A_{l-1} + sqrt(rho) I)``.

    >>> from numeric import MLP
    >>> net, X = MLP([2, 3, 1], seed=0), np.eye(2)
    >>> A = damped_fisher(net, X, Method.KFAC, 0.25, KFACDamping.EXACT)
    >>> bool(np.allclose(A, fisher_approx(net, X, Method.KFAC) + 0.25 * np.eye(13)))
    True
    """
    method = _method(method)
    kfac_damping = KFACDamping.parse(kfac_damping)
    rho = check_damping(damping)
    X = _inputs(net, X, "X")
    P = _check_size(net, X.shape[0])
    if method is Method.GD:
        return np.eye(P)
    if method is Method.KFAC and kfac_damping is KFACDamping.FACTORS:
        out = np.zeros((P, P))
        s = math.sqrt(rho)
        for sl, (A, B) in zip(layer_slices(net), kfac_factors(net, X)):
            out[sl, sl] = np.kron(B + s * np.eye(len(B)), A + s * np.eye(len(A)))
        return out
    return fisher_approx(net, X, method) + rho * np.eye(P)


def independent_blocks(net, method) -> list[np.ndarray]:
    """Column groups on which ``F_hat`` of ``method`` is block diagonal (decoupled blocks).

    ``EXACT``, ``BLOCK_TRIDIAGONAL``: one group (all columns); ``BLOCK_DIAGONAL``,
    ``KFAC``: the layers; ``UNIT_WISE``: the units; ``DIAGONAL``, ``GD``: every column.
    The ``rho -> 0`` limit decouples over these groups, so each is pseudo-inverted on
    its own scale (:func:`preconditioned_kernel`).

    >>> from numeric import MLP
    >>> [g.tolist() for g in independent_blocks(MLP([1, 2, 1]), Method.UNIT_WISE)]
    [[0, 1], [2, 3], [4, 5, 6]]
    """
    method = _method(method)
    P = _n_params(net)
    if method in (Method.EXACT, Method.BLOCK_TRIDIAGONAL):
        return [np.arange(P)]
    if method in (Method.BLOCK_DIAGONAL, Method.KFAC):
        return [np.arange(sl.start, sl.stop) for sl in layer_slices(net)]
    if method is Method.UNIT_WISE:
        return unit_slices(net)
    return [np.array([p]) for p in range(P)]


def _symmetric_pinv(M):
    """``(M^+, M M^+, cond)`` of a symmetric ``M`` via ``eigh``, cut-off :data:`PINV_RCOND`.

    ``cond`` is the ratio of the largest to the smallest kept ``|eigenvalue|`` (1 if none).
    """
    lam, V = np.linalg.eigh(M)
    scale = np.max(np.abs(lam)) if lam.size else 0.0
    kept = pinv_keep(lam, np.float64)  # |lam| > PINV_RCOND * scale
    Vk = V[:, kept]
    cond = float(scale / np.min(np.abs(lam[kept]))) if kept.any() else 1.0
    return (Vk / lam[kept]) @ Vk.T, Vk @ Vk.T, cond


def _pinv_groups(net, X, method):
    """``[(columns, F_hat^+ block, projector onto range, cond)]`` over :func:`independent_blocks`.

    Pseudo-inverse of a block-diagonal matrix = block-diagonal of the blocks' pseudo-
    inverses, each with a cut-off relative to its own scale (the ``rho -> 0`` limit of a
    block does not change when the block is rescaled).  K-FAC: ``(B (x) A)^+ =
    B^+ (x) A^+`` with a cut-off per factor.
    """
    method = _method(method)
    groups = independent_blocks(net, method)
    out = []
    if method is Method.KFAC:
        for cols, (A, B) in zip(groups, kfac_factors(net, X)):
            pB, prB, cB = _symmetric_pinv(B)
            pA, prA, cA = _symmetric_pinv(A)
            out.append((cols, np.kron(pB, pA), np.kron(prB, prA), cB * cA))
        return out
    F_hat = fisher_approx(net, X, method)
    for cols in groups:
        out.append((cols,) + _symmetric_pinv(F_hat[np.ix_(cols, cols)]))
    return out


def pinv_condition(net, X, method) -> float:
    """Condition number of what ``damping == 0`` pseudo-inverts: the largest, over the
    independent blocks, of (largest / smallest kept ``|eigenvalue|``); K-FAC: the product
    of its two factors' condition numbers.  ``GD``: 1."""
    if _method(method) is Method.GD:
        return 1.0
    X = _inputs(net, X, "X")
    _check_size(net, X.shape[0])
    return max(c for *_, c in _pinv_groups(net, X, method))


def _apply_inverse(net, X, method, rho, kfac_damping, rhs, what):
    """``(damped F_hat)^{-1} rhs``; at ``rho == 0`` the ``rho -> 0`` limit (pseudo-inverse).

    The limit ``lim (F_hat + rho I)^{-1} b`` of a symmetric ``F_hat`` exists iff
    ``b`` is orthogonal to ``null(F_hat)``, and then equals ``F_hat^+ b`` (expand in
    eigenvectors: ``sum_k v_k v_k^T b / (lambda_k + rho)``).  ``F_hat^+`` is formed
    per independent block (:func:`_pinv_groups`); a block whose right-hand side has a
    relative component above :data:`RANGE_TOL` outside the block's numerical range
    raises ``ValueError`` (no finite limit: the result grows like ``1 / rho``).
    """
    if rho > 0 or _method(method) is Method.GD:
        return np.linalg.solve(damped_fisher(net, X, method, rho, kfac_damping), rhs)
    out = np.zeros_like(rhs)
    for cols, pinv, projector, _ in _pinv_groups(net, X, method):
        part = rhs[cols]
        size = np.linalg.norm(part)
        outside = np.linalg.norm(part - projector @ part)
        if size > 0 and outside > RANGE_TOL * size:
            raise ValueError(
                f"damping=0 for {what} with method={method}: the rho -> 0 limit does not exist here "
                f"(the right-hand side has a relative component {outside / size:.2g} in the null "
                "space of F_hat, so the result grows like 1/rho); use damping > 0"
            )
        out[cols] = pinv @ part
    return out


def preconditioned_kernel(net, X, method, damping, X2=None, *, kfac_damping=KFACDamping.FACTORS):
    """``K = J(X2) (damped F_hat)^{-1} J(X)^T / N``, shape ``(N2 C, N C)`` (theory.md section 1).

    ``F_hat`` is built on the training inputs ``X``; ``X2=None`` means ``X2 = X``.
    The inverted matrix is :func:`damped_fisher`, solved with ``numpy.linalg.solve``.

    ``damping == 0`` is the limit ``rho -> 0``.  Decision: compute it as
    ``J(X2) F_hat^+ J(X)^T / N`` with ``F_hat^+`` the eigenvalue pseudo-inverse, formed
    per independent block (:func:`independent_blocks`: the whole matrix for exact and
    block tri-diagonal, layers for block diagonal, units for unit-wise, entries for
    diagonal, ``B^+ (x) A^+`` per layer for K-FAC) with the relative cut-off
    :data:`PINV_RCOND` on each block's own scale, and verify that the right-hand side
    ``J(X)^T`` lies in the numerical range of every block.

    Justification: for symmetric ``F_hat``, ``(F_hat + rho I)^{-1} b -> F_hat^+ b``
    exactly when ``b`` is orthogonal to ``null(F_hat)``, and diverges like ``1/rho``
    otherwise; for a block-diagonal ``F_hat`` this holds block by block, and each
    block's limit is invariant under rescaling that block, hence a per-block cut-off
    (a global one would discard genuine eigenvalues of small blocks, e.g. of units in
    saturated tanh layers).  For the PSD approximations (exact, block diagonal, K-FAC,
    unit-wise, diagonal) ``range(J_B^T) subset range(F_B)`` for every block, so the
    condition always holds and the pseudo-inverse *is* the limit.  Block tri-diagonal
    ``F_hat = Jb^T (T (x) I) Jb / N`` is indefinite in general: with every ``Theta_l``
    invertible the condition holds because ``1`` is in ``range(T)`` (also for the
    singular ``T`` of L = 3s + 2), and with singular ``Theta_l`` it can fail only for a
    non-generic geometry of their ranges; there the limit does not exist and a
    ``ValueError`` says so rather than returning a number that is not the limit.  For
    ``KFAC`` both damping conventions have the same limit.  (Richardson extrapolation
    of tiny-``rho`` kernels was rejected: the damped system's condition number grows
    like ``1/rho``, so it is less accurate and still cannot tell a divergence.)

    >>> from numeric import MLP
    >>> net = MLP([2, 4, 1], activation="tanh", seed=0)
    >>> X = np.random.default_rng(1).standard_normal((3, 2))
    >>> K = preconditioned_kernel(net, X, Method.BLOCK_DIAGONAL, 0.0)
    >>> bool(np.allclose(K, 2 * np.eye(3)))        # alpha = L for block diagonal
    True
    """
    method = _method(method)
    X = _inputs(net, X, "X")
    X2 = X if X2 is None else _inputs(net, X2, "X2")
    rho = check_damping(damping)
    _check_size(net, X.shape[0], X2.shape[0])
    J = _jacobian_and_factors(net, X)[0]
    J2 = J if X2 is X else _jacobian_and_factors(net, X2)[0]
    solved = _apply_inverse(net, X, method, rho, kfac_damping, J.T, "preconditioned_kernel")
    return J2 @ solved / X.shape[0]


def natural_gradient(net, X, Y, method, damping, *, kfac_damping=KFACDamping.FACTORS):
    """``(damped F_hat)^{-1} grad L`` with ``grad L = J^T (f(X) - Y).ravel() / N``.

    Returns a list of ``(dW_l, db_l)`` shaped like ``net.params``.  ``damping == 0``:
    the ``rho -> 0`` limit as in :func:`preconditioned_kernel`.

    >>> from numeric import MLP
    >>> net = MLP([2, 3, 1], seed=0)
    >>> [dW.shape for dW, db in natural_gradient(net, np.eye(2), np.zeros((2, 1)), Method.GD, 0.0)]
    [(3, 2), (1, 3)]
    """
    method = _method(method)
    X = _inputs(net, X, "X")
    Y = as_targets(Y, X.shape[0], net.widths[-1], np.float64, "Y")
    rho = check_damping(damping)
    _check_size(net, X.shape[0])
    J = _jacobian_and_factors(net, X)[0]
    residual = (forward(net, X) - Y).ravel()
    grad = J.T @ residual / X.shape[0]
    step = _apply_inverse(net, X, method, rho, kfac_damping, grad, "natural_gradient")
    return _unflatten(net, step)


def layer_kernels(net, X, X2=None) -> np.ndarray:
    """``Theta_l = J_l(X) J_l(X2)^T`` from the Jacobian's column slices: ``(L, N C, N2 C)``.

    >>> from numeric import MLP
    >>> net, X = MLP([2, 3, 1], seed=0), np.eye(2)
    >>> bool(np.allclose(layer_kernels(net, X).sum(0), jacobian(net, X) @ jacobian(net, X).T))
    True
    """
    X = _inputs(net, X, "X")
    X2 = X if X2 is None else _inputs(net, X2, "X2")
    _check_size(net, X.shape[0], X2.shape[0])
    J = _jacobian_and_factors(net, X)[0]
    J2 = J if X2 is X else _jacobian_and_factors(net, X2)[0]
    return np.stack([J[:, sl] @ J2[:, sl].T for sl in layer_slices(net)])


def train(net, X, Y, method, lr, damping, steps, *, kfac_damping=KFACDamping.FACTORS,
          return_params=False):
    """Full-batch dense NGD ``theta <- theta - lr (damped F_hat)^{-1} grad L`` on a copy of ``net``.

    Returns the training outputs ``f_t(X)`` for ``t = 0..steps``, shape
    ``(steps + 1, N, C)``; with ``return_params=True`` also the final parameters
    (list of ``(W_l, b_l)``, float64).  ``net`` itself is not modified.

    >>> from numeric import MLP
    >>> net, X, Y = MLP([2, 32, 1], activation="tanh", seed=0), np.eye(2), np.ones((2, 1))
    >>> out = train(net, X, Y, Method.EXACT, 1.0, 1e-9, 2)   # exact NGD, lr 1: near one-step
    >>> out.shape, bool(np.abs(out[1] - Y).max() < 0.05 * np.abs(out[0] - Y).max())
    ((3, 2, 1), True)
    """
    method = _method(method)
    X = _inputs(net, X, "X")
    Y = as_targets(Y, X.shape[0], net.widths[-1], np.float64, "Y")
    lr = check_learning_rate(lr)
    check_damping(damping)
    steps = check_positive_int(steps, "steps", minimum=0)
    _check_size(net, X.shape[0])
    current = _Snapshot(net)  # float64 copy; net is never modified
    outputs = [forward(current, X)]
    for _ in range(steps):
        update = natural_gradient(current, X, Y, method, damping, kfac_damping=kfac_damping)
        current = _Snapshot(
            current, [(W - lr * dW, b - lr * db) for (W, b), (dW, db) in zip(current.params, update)]
        )
        outputs.append(forward(current, X))
    outputs = np.stack(outputs)
    return (outputs, current.params) if return_params else outputs
