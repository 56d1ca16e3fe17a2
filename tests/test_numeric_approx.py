"""Fast K-FAC, unit-wise and diagonal NGD (numeric._approx) against their definitions.

Every check builds its own dense objects inline, straight from theory.md sections 1-2:
the Jacobian ``J`` from the Kronecker rows ``delta (x) hbar`` of :class:`numeric.Features`,
and ``F_hat`` literally (``kron(B, A)`` blocks, the unit mask of ``J^T J / N``, its
diagonal).  Tolerances (float64, ``eps = 2.2e-16``): a damped solve loses about
``cond(F_hat + rho I) * eps``, so identities are asserted to ``1e-9`` relative after
checking that the condition number is below ``1e6`` (error budget ``~1e6 * eps * P``
with ``P`` of order 100 is ``< 1e-8`` in the worst case, and ``~1e-13`` observed);
pseudo-inverse (``rho = 0``) comparisons use ``100 * eps * cond_+`` with ``cond_+`` the
ratio of the largest to the smallest kept eigenvalue.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.linalg import block_diag

import numeric._approx as approx
import numeric._validation as validation
from numeric import ACTIVATIONS, MLP, KFACDamping, Method
from strategies import regression_problems

EPS = np.finfo(np.float64).eps

#: (method, K-FAC damping convention) pairs implemented in numeric._approx.
VARIANTS = [
    (Method.KFAC, KFACDamping.FACTORS),
    (Method.KFAC, KFACDamping.EXACT),
    (Method.UNIT_WISE, None),
    (Method.DIAGONAL, None),
]
VARIANT_IDS = ["kfac-factors", "kfac-exact", "unit_wise", "diagonal"]

#: Tiny networks (widths, activation, sigma_b, seed): several depths, C = 1..3, biases on/off.
NETS = [
    ([3, 5, 4, 2], "relu", 0.0, 0),
    ([6, 3, 7, 1], "tanh", 0.7, 1),
    ([2, 9, 3], "erf", 0.3, 2),
    ([4, 6, 5, 3, 2], "linear", 0.0, 3),
    ([5, 2], "relu", 0.5, 4),
]
NET_IDS = ["relu-L3-C2", "tanh-L3-bias", "erf-L2-C3", "linear-L4", "relu-L1-bias"]


# ------------------------------------------------------------------ inline dense objects
def problem(widths, activation, sigma_b, seed, n=4, n2=3):
    net = MLP(widths, activation=activation, sigma_b=sigma_b, seed=seed)
    rng = np.random.default_rng(100 + seed)
    X = rng.standard_normal((n, widths[0]))
    X2 = rng.standard_normal((n2, widths[0]))
    r = rng.standard_normal((n, widths[-1]))
    return net, net.features(X), net.features(X2), r


def layer_jacobians(feat):
    """``J_l`` (``N C x M_l (M_{l-1}+1)``), row ``(n, c)`` = ``delta[n, c] (x) hbar[n]``."""
    out = []
    for d, h in zip(feat.delta, feat.hbar):
        n, C, m = d.shape
        out.append(np.einsum("nci,nj->ncij", d, h).reshape(n * C, m * h.shape[1]))
    return out


def jacobian(feat):
    return np.hstack(layer_jacobians(feat))


def unit_ids(feat):
    """Owner unit of every parameter: row ``i`` of ``[W_l | b_l]``."""
    ids, offset = [], 0
    for d, h in zip(feat.delta, feat.hbar):
        m = d.shape[2]
        ids.append(np.repeat(offset + np.arange(m), h.shape[1]))
        offset += m
    return np.concatenate(ids)


def damped_fhat(feat, method, rho, kfac_damping=None):
    """The literal ``P x P`` matrix NGD inverts (``rho = 0``: ``F_hat`` itself)."""
    n, C = feat.outputs.shape
    J = jacobian(feat)
    F = J.T @ J / n
    P = F.shape[0]
    if method is Method.KFAC:
        blocks = []
        for d, h in zip(feat.delta, feat.hbar):
            D = d.reshape(n * C, -1)
            B, A = D.T @ D / n, h.T @ h / n
            if kfac_damping is KFACDamping.FACTORS:
                s = math.sqrt(rho)
                blocks.append(np.kron(B + s * np.eye(len(B)), A + s * np.eye(len(A))))
            else:
                blocks.append(np.kron(B, A) + rho * np.eye(len(B) * len(A)))
        return block_diag(*blocks)
    if method is Method.UNIT_WISE:
        ids = unit_ids(feat)
        return np.where(ids[:, None] == ids[None, :], F, 0.0) + rho * np.eye(P)
    if method is Method.DIAGONAL:
        return np.diag(np.diag(F)) + rho * np.eye(P)
    if method is Method.EXACT:
        return F + rho * np.eye(P)
    raise AssertionError(method)


def dense_inverse(M, rho):
    if rho > 0:
        return np.linalg.inv(M)
    return np.linalg.pinv(M, hermitian=True)


def kept_condition(M):
    """``max eig / min kept eig`` of PSD ``M`` (numpy's pinv cutoff ``P eps max``)."""
    w = np.linalg.eigvalsh(M)
    kept = w[w > len(w) * EPS * w.max()]
    return kept.max() / kept.min()


def dense_kernel(feat, feat2, method, rho, kfac_damping=None):
    n = feat.outputs.shape[0]
    inverse = dense_inverse(damped_fhat(feat, method, rho, kfac_damping), rho)
    return jacobian(feat2) @ inverse @ jacobian(feat).T / n


def dense_update(feat, r, method, rho, kfac_damping=None):
    """``(F_hat + rho I)^{-1} J^T r / N`` split into ``(dW_l, db_l)``."""
    n = feat.outputs.shape[0]
    inverse = dense_inverse(damped_fhat(feat, method, rho, kfac_damping), rho)
    theta = inverse @ (jacobian(feat).T @ r.ravel()) / n
    out, start = [], 0
    for d, h in zip(feat.delta, feat.hbar):
        m, m_in = d.shape[2], h.shape[1]
        block = theta[start:start + m * m_in].reshape(m, m_in)
        out.append((block[:, :-1], block[:, -1]))
        start += m * m_in
    return out


def flat(update):
    return np.concatenate([np.hstack([dW, db[:, None]]).ravel() for dW, db in update])


def apply_jacobian(feat, update):
    """``J @ theta`` via the factors: ``sum_l sum_i delta[n,c,i] (Hbar [dW|db]^T)[n,i]``."""
    out = 0
    for d, h, (dW, db) in zip(feat.delta, feat.hbar, update):
        out = out + np.einsum("nci,ni->nc", d, h @ np.hstack([dW, db[:, None]]).T)
    return out


def fast_kernel(feat, feat2, method, rho, kfac_damping=None):
    if method is Method.KFAC:
        return approx.kfac_kernel(feat, feat2, rho, kfac_damping)
    if method is Method.UNIT_WISE:
        return approx.unit_wise_kernel(feat, feat2, rho)
    return approx.diagonal_kernel(feat, feat2, rho)


def fast_update(feat, r, method, rho, kfac_damping=None):
    if method is Method.KFAC:
        return approx.kfac_update(feat, r, rho, kfac_damping)
    if method is Method.UNIT_WISE:
        return approx.unit_wise_update(feat, r, rho)
    return approx.diagonal_update(feat, r, rho)


def rel_err(a, b, scale=None):
    """``max|a - b| / scale`` (default ``max|b|``); 0 when both vanish (e.g. all ReLUs off)."""
    scale = np.abs(b).max() if scale is None else scale
    diff = np.abs(a - b).max()
    return 0.0 if diff == 0 else diff / scale


def exact_ngd_kernel(feat, rho):
    """``Theta (Theta + N rho)^{-1}`` (``rho = 0``: ``Theta Theta^+``) from the dense ``J``."""
    n = feat.outputs.shape[0]
    J = jacobian(feat)
    Theta = J @ J.T
    return Theta @ dense_inverse(Theta + n * rho * np.eye(len(Theta)), rho)


# ------------------------------------------------------------------ equality with the definitions
@pytest.mark.parametrize("net_args", NETS, ids=NET_IDS)
@pytest.mark.parametrize(("method", "kfac_damping"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("rho", [1e-2, 0.5])
def test_kernel_and_update_equal_dense_definition(net_args, method, kfac_damping, rho):
    net, feat, feat2, r = problem(*net_args)
    M = damped_fhat(feat, method, rho, kfac_damping)
    assert np.linalg.cond(M) < 1e6  # the regime where 1e-9 is a justified tolerance
    for other in (feat, feat2):
        K = fast_kernel(feat, other, method, rho, kfac_damping)
        assert K.shape == (other.outputs.size, feat.outputs.size)
        assert rel_err(K, dense_kernel(feat, other, method, rho, kfac_damping)) <= 1e-9
    update = fast_update(feat, r, method, rho, kfac_damping)
    assert [(dW.shape, db.shape) for dW, db in update] == [(W.shape, b.shape) for W, b in net.params]
    assert rel_err(flat(update), flat(dense_update(feat, r, method, rho, kfac_damping))) <= 1e-9


@pytest.mark.parametrize("net_args", NETS, ids=NET_IDS)
@pytest.mark.parametrize(("method", "kfac_damping"), VARIANTS, ids=VARIANT_IDS)
def test_zero_damping_is_the_pseudo_inverse(net_args, method, kfac_damping):
    net, feat, feat2, r = problem(*net_args)
    tol = 100 * EPS * kept_condition(damped_fhat(feat, method, 0.0, kfac_damping))
    for other in (feat, feat2):
        K = fast_kernel(feat, other, method, 0.0, kfac_damping)
        assert rel_err(K, dense_kernel(feat, other, method, 0.0, kfac_damping)) <= tol
    update = fast_update(feat, r, method, 0.0, kfac_damping)
    assert rel_err(flat(update), flat(dense_update(feat, r, method, 0.0, kfac_damping))) <= tol


@given(problem=regression_problems(n_samples=(1, 5), n_test=(1, 3), depth=(1, 3), width=(1, 10),
                                   max_params=250),
       variant=st.sampled_from(VARIANTS), log_rho=st.floats(-3, 0))
def test_fast_paths_equal_dense_on_random_problems(problem, variant, log_rho):
    """Random shapes (N, C, depth, widths 1..10, all activations, bias on/off) against the dense
    definition; tolerance scaled by the damped condition number (which can reach ~1e5 here)."""
    method, kfac_damping = variant
    rho = 10.0**log_rho
    feat, feat2 = problem.net.features(problem.X), problem.net.features(problem.X2)
    r = problem.net.forward(problem.X) - problem.Y
    cond = np.linalg.cond(damped_fhat(feat, method, rho, kfac_damping))
    tol = max(1e-9, 100 * EPS * cond)
    K2 = fast_kernel(feat, feat2, method, rho, kfac_damping)
    # relative to the training kernel: the cross kernel can vanish (ReLU units off at X2)
    scale = np.abs(dense_kernel(feat, feat, method, rho, kfac_damping)).max()
    assert rel_err(K2, dense_kernel(feat, feat2, method, rho, kfac_damping), scale) <= tol
    update = fast_update(feat, r, method, rho, kfac_damping)
    assert rel_err(flat(update), flat(dense_update(feat, r, method, rho, kfac_damping))) <= tol


@pytest.mark.parametrize(("method", "kfac_damping"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_update_and_kernel_are_consistent(method, kfac_damping, activation):
    """``J u = K(X, X) r`` for ``u = (F_hat + rho I)^{-1} J^T r / N`` (both sides via the factors)."""
    net = MLP([5, 16, 12, 2], activation=activation, sigma_b=0.4, seed=7)
    rng = np.random.default_rng(8)
    feat = net.features(rng.standard_normal((6, 5)))
    r = rng.standard_normal((6, 2))
    rho = 1e-3
    K = fast_kernel(feat, feat, method, rho, kfac_damping)
    Ju = apply_jacobian(feat, fast_update(feat, r, method, rho, kfac_damping)).ravel()
    Kr = K @ r.ravel()
    assert np.abs(Ju - Kr).max() <= 1e-9 * np.abs(Kr).max()


# ------------------------------------------------------------------ structural truths (BackPACK-style)
@pytest.mark.parametrize("widths", [[3, 4, 1], [2, 6, 5, 1], [4, 1, 3, 2, 1]])
@pytest.mark.parametrize("rho", [1e-3, 1.0])
def test_kfac_is_the_exact_block_for_one_datum(widths, rho):
    """N = C = 1: ``B (x) A = (d d^T) (x) (h h^T) = J_l^T J_l``, so K-FAC with exact damping is
    block-diagonal NGD: ``K = sum_l theta_l / (theta_l + rho)``; factor damping over-damps."""
    net = MLP(widths, activation="tanh", sigma_b=0.3, seed=11)
    feat = net.features(np.random.default_rng(12).standard_normal((1, widths[0])))
    thetas = [(J @ J.T).item() for J in layer_jacobians(feat)]
    block_diagonal = sum(t / (t + rho) for t in thetas)
    K_exact = approx.kfac_kernel(feat, feat, rho, KFACDamping.EXACT)
    assert abs(K_exact.item() - block_diagonal) <= 1e-12 * block_diagonal
    K_factors = approx.kfac_kernel(feat, feat, rho, KFACDamping.FACTORS)
    # (b + s)(a + s) = ba + rho + s(a + b) > ba + rho for every layer
    assert K_factors.item() < K_exact.item() * (1 - 1e-6)


@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("rho", [0.0, 1e-3, 0.3])
def test_one_layer_kfac_and_unit_wise_are_exact_ngd(n_outputs, rho):
    """L = 1: ``B = I_C``, ``F = I_C (x) A`` is its own K-FAC factorisation and is block diagonal
    over output units.  So K-FAC (exact damping) and unit-wise equal exact NGD at every rho, and
    factor damping gives ``(1 + s)(F + s I)``: ``K_factors(rho) = K_exact_ngd(s) / (1 + s)``,
    ``s = sqrt(rho)``; updates likewise."""
    net, feat, feat2, r = problem([6, n_outputs], "relu", 0.5, 21, n=4)
    s = math.sqrt(rho)
    exact = exact_ngd_kernel(feat, rho)
    assert rel_err(approx.kfac_kernel(feat, feat, rho, KFACDamping.EXACT), exact) <= 1e-10
    assert rel_err(approx.unit_wise_kernel(feat, feat, rho), exact) <= 1e-10
    factors = approx.kfac_kernel(feat, feat, rho, KFACDamping.FACTORS)
    assert rel_err(factors, exact_ngd_kernel(feat, s) / (1 + s)) <= 1e-10
    exact_update = flat(dense_update(feat, r, Method.EXACT, rho))
    assert rel_err(flat(approx.kfac_update(feat, r, rho, KFACDamping.EXACT)), exact_update) <= 1e-10
    assert rel_err(flat(approx.unit_wise_update(feat, r, rho)), exact_update) <= 1e-10
    factors_update = flat(dense_update(feat, r, Method.EXACT, s)) / (1 + s)
    assert rel_err(flat(approx.kfac_update(feat, r, rho, KFACDamping.FACTORS)), factors_update) <= 1e-10
    if rho == 0:  # N = 4 <= M_0 + 1: Theta invertible, every method is isotropic with alpha = 1
        assert np.abs(exact - np.eye(exact.shape[0])).max() <= 1e-10


def active_unit_counts(net, feat):
    """``a_n = sum_{l<L} #{i : phi'(u_{l,i}(x_n)) != 0} + 1`` from the pre-activations."""
    dphi = ACTIVATIONS[net.activation][1]
    return sum((dphi(u) != 0).sum(axis=1) for u in feat.preactivations[:-1]) + 1


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_unit_wise_small_damping_counts_active_units(activation):
    """C = 1, N <= M_0: each unit's Gram ``D_i Q D_i`` becomes the projection onto the samples
    where the unit is active, so ``K -> diag(a_n)`` (theory.md section 2, unit-wise)."""
    net = MLP([8, 12, 10, 1], activation=activation, seed=31)
    feat = net.features(np.random.default_rng(32).standard_normal((5, 8)))
    a = active_unit_counts(net, feat)
    if activation == "relu":
        assert a.min() < 12 + 10 + 1  # some units inactive: the count matters
    else:
        assert np.all(a == 12 + 10 + 1)
    K0 = approx.unit_wise_kernel(feat, feat, 0.0)
    assert np.abs(K0 - np.diag(a)).max() <= 1e-9 * a.max()
    # Damping well below the per-unit Gram scale: each unit deviates from its projection by at
    # most N rho / lambda_min(Theta_i on its range) <= 1e-9, summed over the units.
    n = 5
    ids = unit_ids(feat)
    J = jacobian(feat)
    smallest = []
    for unit in np.unique(ids):
        w = np.linalg.eigvalsh(J[:, ids == unit] @ J[:, ids == unit].T)
        kept = w[w > len(w) * EPS * max(w.max(), 0)]
        if kept.size:
            smallest.append(kept.min())
    rho = 1e-9 * min(smallest) / n
    K = approx.unit_wise_kernel(feat, feat, rho)
    assert np.abs(K - np.diag(a)).max() <= 1e-9 * len(smallest) + 1e-9 * a.max()
    # ... whereas a damping at the Gram scale visibly breaks the count.
    K_big = approx.unit_wise_kernel(feat, feat, 10 * max(smallest) / n)
    assert np.abs(K_big - np.diag(a)).max() > 0.1 * a.min()


def test_unit_wise_is_not_isotropic_with_two_outputs():
    """C = 2: a unit's Gram ``(d_i d_i^T) o (Q (x) 1)`` has rank <= N < N C, so the projections
    do not add up to a diagonal (theory.md: unit-wise needs C = 1)."""
    net = MLP([8, 12, 10, 2], activation="tanh", seed=33)
    feat = net.features(np.random.default_rng(34).standard_normal((5, 8)))
    K = approx.unit_wise_kernel(feat, feat, 0.0)
    off_diagonal = K - np.diag(np.diag(K))
    assert np.abs(off_diagonal).max() > 0.1
    # trace: rank of each hidden unit's Gram (N = 5) summed, plus the output units (rank N each)
    assert abs(np.trace(K) - 5 * (12 + 10 + 2)) <= 1e-8 * np.trace(K)


def single_layer(feat, k):
    """Features restricted to layer ``k`` (the fast routines then return that layer's term)."""
    return type(feat)(hbar=[feat.hbar[k]], delta=[feat.delta[k]],
                      preactivations=[feat.preactivations[k]], outputs=feat.outputs)


def kfac_layer_alpha(feat, k):
    """Expected layer-``k`` K-FAC limit from the rank conditions of theory.md section 2:
    ``N`` for a hidden layer whose backward (``N C``) and forward (``N``) rows are independent,
    1 for the output layer whose forward rows are independent; ``None`` otherwise."""
    n, C = feat.outputs.shape
    forward_full = np.linalg.matrix_rank(feat.hbar[k]) == n
    if k == feat.depth - 1:
        return 1 if forward_full else None
    backward_full = np.linalg.matrix_rank(feat.delta[k].reshape(n * C, -1)) == n * C
    return n if (forward_full and backward_full) else None


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("n_outputs", [1, 2])
@pytest.mark.parametrize("kfac_damping", list(KFACDamping))
def test_kfac_isotropy_constant(activation, n_outputs, kfac_damping):
    """N C <= M_l and N <= M_{l-1}: each hidden layer gives N I, the output layer I, so
    ``alpha = N (L - 1) + 1`` at rho -> 0 for both damping conventions (measured; the released
    code's ``N L`` would be 20 here, not 16)."""
    n = 5
    net = MLP([6, 16, 16, 16, n_outputs], activation=activation, seed=41)
    feat = net.features(np.random.default_rng(42).standard_normal((n, 6)))
    expected_layers = [kfac_layer_alpha(feat, k) for k in range(net.depth)]
    assert None not in expected_layers
    alpha = sum(expected_layers)
    assert alpha == n * (net.depth - 1) + 1
    eye = np.eye(n * n_outputs)
    for k, expected in enumerate(expected_layers):
        K_layer = approx.kfac_kernel(single_layer(feat, k), single_layer(feat, k), 0.0, kfac_damping)
        assert np.abs(K_layer - expected * eye).max() <= 1e-9 * expected
    K = approx.kfac_kernel(feat, feat, 0.0, kfac_damping)
    assert np.abs(K - alpha * eye).max() <= 1e-9 * alpha


def test_kfac_first_layer_with_few_inputs_gives_leverages():
    """M_0 < N (no bias): the first layer contributes ``N diag(leverage_n)``, leverages of the
    rows of ``Hbar_0`` (they sum to M_0): not isotropic (theory.md section 2, K-FAC note)."""
    n, m0 = 7, 3
    net = MLP([m0, 16, 1], activation="tanh", seed=51)
    X = np.random.default_rng(52).standard_normal((n, m0))
    feat = net.features(X)
    H = feat.hbar[0]
    leverage = np.diag(H @ np.linalg.pinv(H))
    assert abs(leverage.sum() - m0) <= 1e-10
    K_first = approx.kfac_kernel(single_layer(feat, 0), single_layer(feat, 0), 0.0, KFACDamping.EXACT)
    assert np.abs(K_first - n * np.diag(leverage)).max() <= 1e-9 * n


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_kfac_damping_conventions_share_the_limit(activation):
    """rho -> 0: factor damping converges like sqrt(rho) (cross terms s (a + b)), exact damping like
    rho, to the same pseudo-inverse limit; at rho = 0 they coincide (kernel, cross kernel, update)."""
    net, feat, feat2, r = problem([4, 9, 7, 2], activation, 0.2, 61, n=4, n2=3)
    for other in (feat, feat2):
        K_factors = approx.kfac_kernel(feat, other, 0.0, KFACDamping.FACTORS)
        K_exact = approx.kfac_kernel(feat, other, 0.0, KFACDamping.EXACT)
        assert rel_err(K_factors, K_exact) <= 1e-10
    u_factors = flat(approx.kfac_update(feat, r, 0.0, KFACDamping.FACTORS))
    u_exact = flat(approx.kfac_update(feat, r, 0.0, KFACDamping.EXACT))
    assert rel_err(u_factors, u_exact) <= 1e-10
    K0 = approx.kfac_kernel(feat, feat, 0.0, KFACDamping.EXACT)
    rhos = [1e-10, 1e-12]
    for kfac_damping, order in [(KFACDamping.FACTORS, 0.5), (KFACDamping.EXACT, 1.0)]:
        errors = [np.abs(approx.kfac_kernel(feat, feat, rho, kfac_damping) - K0).max() for rho in rhos]
        slope = math.log(errors[0] / errors[1]) / math.log(rhos[0] / rhos[1])
        assert abs(slope - order) < 0.1, (kfac_damping, errors, slope)


@pytest.mark.parametrize("width", [64, 256])
def test_diagonal_kernel_is_not_isotropic(width):
    """diag(F) ignores the correlations: K stays far from any multiple of I at every width
    (theory.md section 2).  Measured here: cond(K) ~ 3-6 (the NTK's is ~6-50), relative distance
    to the best multiple of I ~ 0.4, for several seeds and widths 64-512; asserted with margin."""
    net = MLP([8, width, width, 1], activation="relu", seed=71)
    X = np.random.default_rng(72).standard_normal((8, 8))
    feat = net.features(X)
    K = approx.diagonal_kernel(feat, feat, 0.0)
    assert np.linalg.cond(K) > 2
    best_multiple = np.trace(K) / len(K)
    assert np.linalg.norm(K - best_multiple * np.eye(len(K))) > 0.25 * np.linalg.norm(K)
    # while K-FAC on the same network is isotropic: 8 (L - 1) + 1 = 17
    K_kfac = approx.kfac_kernel(feat, feat, 0.0, KFACDamping.EXACT)
    assert np.abs(K_kfac - 17 * np.eye(8)).max() <= 1e-8 * 17


# ------------------------------------------------------------------ precision, chunking, memory
@pytest.mark.parametrize(("method", "kfac_damping"), VARIANTS, ids=VARIANT_IDS)
def test_float32_stays_float32_and_close(method, kfac_damping):
    """float32 features give float32 results; relative error vs float64 ~ cond * eps32 with
    cond(F_hat + rho I) <= ~1e3 at rho = 1e-2 here: 1e-3 is a 10x margin over ~1.2e-4."""
    rho = 1e-2
    results = {}
    for dtype in (np.float64, np.float32):
        net = MLP([5, 12, 8, 2], activation="tanh", sigma_b=0.3, seed=81, dtype=dtype)
        rng = np.random.default_rng(82)
        X, X2, r = rng.standard_normal((4, 5)), rng.standard_normal((3, 5)), rng.standard_normal((4, 2))
        feat, feat2 = net.features(X), net.features(X2)
        K = fast_kernel(feat, feat2, method, rho, kfac_damping)
        u = flat(fast_update(feat, r.astype(dtype), method, rho, kfac_damping))
        results[dtype] = (K, u)
        if dtype is np.float64:
            assert np.linalg.cond(damped_fhat(feat, method, rho, kfac_damping)) < 1e4
    (K64, u64), (K32, u32) = results[np.float64], results[np.float32]
    assert K32.dtype == np.float32 and u32.dtype == np.float32
    assert rel_err(K32.astype(np.float64), K64) <= 1e-3
    assert rel_err(u32.astype(np.float64), u64) <= 1e-3


@pytest.mark.parametrize(("method", "kfac_damping"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("rho", [0.0, 1e-2])
def test_chunking_does_not_change_results(monkeypatch, method, kfac_damping, rho):
    net, feat, feat2, r = problem([3, 7, 6, 2], "relu", 0.5, 91, n=5, n2=4)
    reference = [fast_kernel(feat, other, method, rho, kfac_damping) for other in (feat, feat2)]
    reference_update = flat(fast_update(feat, r, method, rho, kfac_damping))
    monkeypatch.setattr(approx, "CHUNK_BYTES", 1)  # one unit / sample pair / X2 row per chunk
    for other, K in zip((feat, feat2), reference):
        assert rel_err(fast_kernel(feat, other, method, rho, kfac_damping), K) <= 1e-12
    assert rel_err(flat(fast_update(feat, r, method, rho, kfac_damping)), reference_update) <= 1e-12


@pytest.mark.parametrize(("method", "kfac_damping"), VARIANTS, ids=VARIANT_IDS)
def test_memory_is_checked_before_allocating(monkeypatch, method, kfac_damping):
    net, feat, feat2, r = problem([3, 7, 2], "relu", 0.0, 95)
    monkeypatch.setattr(validation, "available_memory_bytes", lambda: 64)
    name = {Method.KFAC: "kfac", Method.UNIT_WISE: "unit_wise", Method.DIAGONAL: "diagonal"}[method]
    with pytest.raises(MemoryError, match=rf"{name}_kernel.*N = 4.*use fewer"):
        fast_kernel(feat, feat2, method, 1e-3, kfac_damping)
    with pytest.raises(MemoryError, match=rf"{name}_update"):
        fast_update(feat, r, method, 1e-3, kfac_damping)


def test_unit_wise_damping_lost_in_round_off_is_a_clear_error():
    """C = 2 unit Grams have rank <= N < N C; a damping below round-off makes the batched
    solve singular, which must surface as a ValueError naming ``damping``, not a LinAlgError."""
    import numeric

    net = numeric.MLP([3, 5, 4, 2], activation="tanh", sigma_b=0.5, seed=0)
    X = np.random.default_rng(0).standard_normal((4, 3))
    with pytest.raises(ValueError, match="damping=1e-30"):
        numeric.preconditioned_kernel(net, X, numeric.Method.UNIT_WISE, 1e-30)
    with pytest.raises(ValueError, match="damping=1e-30"):
        numeric.natural_gradient(net, X, np.zeros((4, 2)), numeric.Method.UNIT_WISE, 1e-30)
