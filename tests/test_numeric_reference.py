"""The dense reference (``numeric.reference``) and every fast routine of ``numeric`` against it.

Part 1 checks the reference itself: its Jacobian against central finite differences of
``MLP.forward``, and structural truths that follow from the definitions (theory.md
sections 1-2).  Part 2 checks that each fast routine equals the reference in float64.

Tolerances
----------
* Identities between float64 computations of the *same* well-conditioned quantity: 1e-10
  to 1e-12 relative (round-off of a few matrix products of size <= a few hundred).
* Anything that goes through the solve of the damped matrix ``A`` (``F_hat + rho I``, or
  its K-FAC / GD variant; when ``rho = 0``, the pseudo-inverse, whose condition number is
  taken over the kept spectrum of each independent block, ``reference.pinv_condition``):
  ``rtol = max(1e-9, 100 eps cond(A))``.  Why: a backward-stable solve
  returns ``(A + E)^{-1} b`` with ``||E|| <~ eps ||A||``, so the first-order error of
  ``J A^{-1} J^T / N`` is ``J A^{-1} E A^{-1} J^T / N``, whose norm is at most
  ``eps cond(A) ||K||`` for a PSD ``A`` (``||A^{-1/2} J^T||^2 / N <= ||K||``); 100 covers
  the dimension-dependent constant of LU / Cholesky / eigh at these sizes (P <= 400).
  The fast routines solve the ``N C`` duals, whose nonzero spectrum is that of ``A``
  (push-through), so the same bound applies to them -- unless a dual is rank-deficient
  (a block with fewer parameters than ``N C``), where its own condition number
  ``(||J_b J_b^T|| + N rho) / (N rho)`` governs (:func:`dual_condition`).
* Norm-relative errors use the Frobenius norm, with an absolute floor
  ``rtol * ||J(X2)||_F ||J(X)||_F / (N ||A||_2)``: for ``X2 = X`` and PSD ``A`` it is at
  most ``sqrt(rank)`` times ``||K||_F`` (``K >= J J^T / (N ||A||)``), so it only matters
  where ``K`` itself cancels (cross kernels, indefinite block tri-diagonal).  For the
  update ``A^{-1} g`` the floor is ``rtol ||g|| / ||A||_2 <= rtol ||A^{-1} g||``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import numeric
from numeric import ACTIVATIONS, METHODS, MLP, KFACDamping, Method
from numeric import reference as ref
from numeric._linalg import pinv_rcond

from strategies import dampings, input_array, networks, regression_problems, seeds

EPS = np.finfo(np.float64).eps

#: (method, K-FAC damping convention) pairs: every method once, K-FAC under both conventions.
VARIANTS = [(m, KFACDamping.FACTORS) for m in METHODS] + [(Method.KFAC, KFACDamping.EXACT)]
VARIANT_IDS = [f"{m.value}" + (f"-{k.value}" if m is Method.KFAC else "") for m, k in VARIANTS]


# ============================================================================ helpers
def frobenius_error(actual, expected) -> float:
    return float(np.linalg.norm(np.asarray(actual) - np.asarray(expected)))


def flatten_update(update) -> np.ndarray:
    """``[(dW_l, db_l)]`` -> the reference's parameter-vector order (row-major ``[dW | db]``)."""
    return np.concatenate([np.column_stack([dW, db]).ravel() for dW, db in update])


def solve_rtol(A: np.ndarray, dual_cond: float = 1.0) -> tuple[float, float]:
    """``(rtol, ||A||_2)`` for the symmetric matrix ``A`` that is inverted (module docstring),
    or for the fast path's rank-deficient dual of condition ``dual_cond`` if that is worse."""
    lam = np.abs(np.linalg.eigvalsh(A))
    return max(1e-9, 100 * EPS * max(lam.max() / lam.min(), dual_cond)), lam.max()


def dual_condition(net, X, method, damping) -> float:
    """Condition number of the ``N C x N C`` duals the fast path solves, where one is
    rank-deficient (1 otherwise).

    The push-through form ``J_b^T (J_b J_b^T + N rho)^{-1} r`` of a block with fewer
    parameters than ``N C`` inverts a matrix whose smallest eigenvalue is ``N rho``, so the
    null-space part of ``r`` is amplified by ``1 / (N rho)`` before ``J_b^T`` cancels it; the
    rounding left is ``eps (||J_b J_b^T|| + N rho) / (N rho)``, not ``eps cond(A)``
    (measured: exact NGD, widths [1, 1], N = 3, rho = 1e-8: 3e-8 relative, with
    ``cond(A)`` ~ 10).  K-FAC eigendecomposes each factor on its smaller side and GD and
    diagonal solve nothing, so they have no such dual.  Block tri-diagonal solves the
    non-symmetric ``L N C`` system ``N rho I + (T (x) I) blockdiag(Theta_l)`` (theory.md
    section 2), whose own condition number is taken (measured: widths [1, 1, 2, 2], N = 1,
    C = 2, rho = 1e-8: rank-one ``Theta_l`` make it ~1e9 while ``cond(F_hat + rho I)`` ~ 8e7)."""
    if damping == 0 or method in (Method.GD, Method.DIAGONAL, Method.KFAC):
        return 1.0
    J = ref.jacobian(net, X)
    n_rows, shift = J.shape[0], X.shape[0] * damping
    if method is Method.BLOCK_TRIDIAGONAL:
        Th = ref.layer_kernels(net, X)
        L = Th.shape[0]
        T = np.eye(L) + np.eye(L, k=1) + np.eye(L, k=-1)
        D = np.zeros((L * n_rows, L * n_rows))
        for l in range(L):
            D[l * n_rows:(l + 1) * n_rows, l * n_rows:(l + 1) * n_rows] = Th[l]
        return max(1.0, float(np.linalg.cond(shift * np.eye(L * n_rows) + np.kron(T, np.eye(n_rows)) @ D)))
    worst = 1.0
    for cols in ref.independent_blocks(net, method):
        if len(cols) < n_rows:  # J_b J_b^T has rank <= len(cols) < N C
            top = np.linalg.eigvalsh(J[:, cols] @ J[:, cols].T).max()
            worst = max(worst, (top + shift) / shift)
    return worst


def assert_kernel_close(actual, expected, J, J2, N, rtol, norm_A, what):
    floor = np.linalg.norm(J2) * np.linalg.norm(J) / (N * norm_A)
    err = frobenius_error(actual, expected)
    bound = rtol * (np.linalg.norm(expected) + floor)
    assert err <= bound, f"{what}: ||diff||_F = {err:.3g} > {bound:.3g} (rtol {rtol:.3g})"


def assert_zero_damping_matches(net, X, X2, Y, method, kd, what):
    """Fast ``damping = 0`` kernel (train and cross) and update equal the reference's, with the
    solve tolerance over the kept spectrum (pseudo-inverted per independent block)."""
    pk, ng = fast("preconditioned_kernel"), fast("natural_gradient")
    N = X.shape[0]
    rtol = max(1e-9, 100 * EPS * ref.pinv_condition(net, X, method))
    norm_A = np.abs(np.linalg.eigvalsh(ref.damped_fisher(net, X, method, 0.0, kd))).max()
    J, J2 = ref.jacobian(net, X), ref.jacobian(net, X2)
    what = f"{what} N={N} damping=0"
    for Z, JZ in [(None, J), (X2, J2)]:
        expected = ref.preconditioned_kernel(net, X, method, 0.0, Z, kfac_damping=kd)
        actual = pk(net, X, method, 0.0, Z, kfac_damping=kd)
        assert_kernel_close(actual, expected, J, JZ, N, rtol, norm_A, what)
    e = flatten_update(ref.natural_gradient(net, X, Y, method, 0.0, kfac_damping=kd))
    a = flatten_update(ng(net, X, Y, method, 0.0, kfac_damping=kd))
    grad = J.T @ (ref.forward(net, X) - Y).ravel() / N
    err = frobenius_error(a, e)
    assert err <= rtol * (np.linalg.norm(e) + np.linalg.norm(grad) / norm_A), f"{what}: {err:.3g}"


def fast(name):
    """A public fast routine of :mod:`numeric` (a missing export fails, never skips)."""
    fn = getattr(numeric, name, None)
    assert fn is not None, f"numeric.{name} is not exported"
    return fn


def preactivation_margin(net, X) -> float:
    """Smallest ``|u_{l,i}(x_n)|`` over hidden layers (distance of ReLU from its kink)."""
    params = [(np.asarray(W, float), np.asarray(b, float)) for W, b in net.params]
    _, _, us = ref._forward_params(net, params, np.asarray(X, float))
    hidden = us[:-1]
    return min((float(np.abs(u).min()) for u in hidden), default=math.inf)


# ================================================================ part 1: the reference
def test_activation_table_is_independent_and_complete():
    """Same activation names as numeric; each phi' equals a central difference of phi."""
    assert set(ref.ACTIVATION_DERIVATIVES) == set(ACTIVATIONS)
    u = np.linspace(-3, 3, 601)
    u = u[np.abs(u) > 1e-3]  # away from the ReLU kink
    h = 1e-6
    for name, (phi, dphi) in ref.ACTIVATION_DERIVATIVES.items():
        fd = (phi(u + h) - phi(u - h)) / (2 * h)
        # truncation h^2 |phi'''| / 6 ~ 1e-12, rounding eps |phi| / h ~ 1e-9
        np.testing.assert_allclose(dphi(u), fd, rtol=0, atol=1e-8, err_msg=name)
        np.testing.assert_allclose(phi(u), ACTIVATIONS[name][0](u), rtol=1e-15, atol=0, err_msg=name)


@settings(max_examples=15)
@given(net=networks(max_params=600), n=st.integers(1, 6), seed=seeds)
def test_reference_forward_equals_mlp_forward(net, n, seed):
    X = input_array(n, net.widths[0], seed)
    f_ref, f = ref.forward(net, X), net.forward(X)
    assert frobenius_error(f_ref, f) <= 1e-12 * (np.linalg.norm(f) + 1e-300)


@settings(max_examples=20)
@given(net=networks(width=(1, 8), max_params=150), n=st.integers(1, 3), seed=seeds)
def test_jacobian_equals_central_differences(net, n, seed):
    """``J`` against ``(f(theta + h e_p) - f(theta - h e_p)) / 2h`` of ``MLP.forward``.

    h = 1e-6: truncation ``h^2 |f'''| / 6 ~ 1e-13``, rounding ``eps |f| / h ~ 2e-10 |f|``,
    so entries agree to ``1e-6 |J| + 1e-8 (1 + max |f|)``.  ReLU: only when every
    pre-activation is further than 1e-4 from the kink (a step moves it by ``<~ 1e-5``).
    """
    X = input_array(n, net.widths[0], seed)
    if net.activation == "relu":
        assume(preactivation_margin(net, X) > 1e-4)
    J = ref.jacobian(net, X)
    theta = ref._theta_vector(net)
    probe = net.copy()
    step = 1e-6
    J_fd = np.empty_like(J)
    for p in range(theta.size):
        outs = []
        for sign in (1, -1):
            shifted = theta.copy()
            shifted[p] += sign * step
            probe.params = ref._unflatten(net, shifted)
            outs.append(probe.forward(X).ravel())
        J_fd[:, p] = (outs[0] - outs[1]) / (2 * step)
    atol = 1e-8 * (1 + np.abs(net.forward(X)).max())
    assert np.all(np.abs(J - J_fd) <= 1e-6 * np.abs(J) + atol), np.abs(J - J_fd).max()


@settings(max_examples=10)
@given(net=networks(max_params=600), n=st.integers(1, 4), seed=seeds)
def test_slices_partition_the_parameters_and_layer_blocks_are_rank_one(net, n, seed):
    """Layer slices tile ``[0, P)`` in order; unit slices tile each layer; ``J_l`` rows are
    ``vec(delta (x) hbar)`` i.e. rank one when reshaped to ``(M_l, M_{l-1} + 1)``."""
    P = net.n_params
    layers = ref.layer_slices(net)
    assert layers[0].start == 0 and layers[-1].stop == P
    assert all(a.stop == b.start for a, b in zip(layers, layers[1:]))
    units = ref.unit_slices(net)
    assert len(units) == sum(net.widths[1:])
    assert np.array_equal(np.concatenate(units), np.arange(P))
    k = 0
    for l, sl in enumerate(layers):
        for _ in range(net.widths[l + 1]):
            assert sl.start <= units[k][0] and units[k][-1] < sl.stop
            assert len(units[k]) == net.widths[l] + 1
            k += 1
    # the parameter vector round-trips and matches net.params
    for (W, b), (W2, b2) in zip(net.params, ref._unflatten(net, ref._theta_vector(net))):
        assert np.array_equal(W, W2) and np.array_equal(b, b2)
    J = ref.jacobian(net, input_array(n, net.widths[0], seed))
    for l, sl in enumerate(layers):
        shape = (net.widths[l + 1], net.widths[l] + 1)
        for row in J[:, sl]:
            s = np.linalg.svd(row.reshape(shape), compute_uv=False)
            assert s.size < 2 or s[1] <= 1e-12 * max(s[0], 1e-300)


@settings(max_examples=15)
@given(net=networks(max_params=200), n=st.integers(1, 5), seed=seeds)
def test_fisher_approximations_structural_truths(net, n, seed):
    """Truths that follow from the definitions of theory.md section 2.

    * L = 1: exact = block diagonal = block tri-diagonal;  L = 2: block tri-diagonal = exact.
    * K-FAC output block = exact output block (``B_L = I_C``), any N, C.
    * one sample and one output: every K-FAC block = the exact layer block.
    * one unit per layer (all ``M_l = 1``, l >= 1): unit-wise = block diagonal.
    * diagonal = diag(F); every approximation is symmetric; all but block tri-diagonal PSD.
    """
    X = input_array(n, net.widths[0], seed)
    F = ref.fisher(net, X)
    L = net.depth
    approx = {m: ref.fisher_approx(net, X, m) for m in METHODS}
    assert np.array_equal(approx[Method.EXACT], F)
    assert np.array_equal(approx[Method.GD], np.eye(net.n_params))
    assert np.array_equal(approx[Method.DIAGONAL], np.diag(np.diag(F)))
    if L == 1:
        assert np.array_equal(approx[Method.BLOCK_DIAGONAL], F)
    if L <= 2:
        assert np.array_equal(approx[Method.BLOCK_TRIDIAGONAL], F)
    if all(m == 1 for m in net.widths[1:]):
        assert np.array_equal(approx[Method.UNIT_WISE], approx[Method.BLOCK_DIAGONAL])
    scale = np.abs(F).max() + 1e-300
    slices = ref.layer_slices(net)
    kfac = approx[Method.KFAC]
    out = slices[-1]
    assert np.abs(kfac[out, out] - F[out, out]).max() <= 1e-12 * scale
    if n == 1 and net.n_outputs == 1:
        assert np.abs(kfac - approx[Method.BLOCK_DIAGONAL]).max() <= 1e-12 * scale
    for m, A in approx.items():
        assert np.array_equal(A, A.T) or np.abs(A - A.T).max() <= 1e-14 * scale, m
        if m is not Method.BLOCK_TRIDIAGONAL:
            assert np.linalg.eigvalsh(A).min() >= -1e-12 * scale * net.n_params, m


@settings(max_examples=10)
@given(problem=regression_problems(max_params=200), damping=dampings(),
       variant=st.sampled_from(VARIANTS))
def test_reference_kernel_update_and_training_are_consistent(problem, damping, variant):
    """``J @ natural_gradient = K r`` (both are ``J A^{-1} J^T r / N``); ``K(X, X)`` symmetric;
    one ``train`` step equals ``theta - lr * natural_gradient``; exact, block diagonal and GD
    kernels equal their push-through forms ``Theta (Theta + N rho)^{-1}``,
    ``sum_l Theta_l (Theta_l + N rho)^{-1}``, ``Theta / N`` (theory.md sections 1-2)."""
    method, kd = variant
    net, X, Y = problem.net, problem.X, problem.Y
    N = X.shape[0]
    A = ref.damped_fisher(net, X, method, damping, kd)
    rtol, norm_A = solve_rtol(A)
    J = ref.jacobian(net, X)
    K = ref.preconditioned_kernel(net, X, method, damping, kfac_damping=kd)
    assert_kernel_close(K, K.T, J, J, N, rtol, norm_A, "K symmetric")
    update = ref.natural_gradient(net, X, Y, method, damping, kfac_damping=kd)
    r = (ref.forward(net, X) - Y).ravel()
    lhs, rhs = J @ flatten_update(update), K @ r
    assert frobenius_error(lhs, rhs) <= rtol * (np.linalg.norm(rhs) + np.linalg.norm(J) ** 2
                                                * np.linalg.norm(r) / (N * norm_A))
    Th = ref.layer_kernels(net, X)
    eye = np.eye(len(r))
    if method is Method.EXACT:
        expected = Th.sum(0) @ np.linalg.inv(Th.sum(0) + N * damping * eye)
    elif method is Method.BLOCK_DIAGONAL:
        expected = sum(T @ np.linalg.inv(T + N * damping * eye) for T in Th)
    elif method is Method.GD:
        expected = Th.sum(0) / N
    else:
        expected = None
    if expected is not None:
        assert_kernel_close(K, expected, J, J, N, rtol, norm_A, f"{method} push-through")
    out, params = ref.train(net, X, Y, method, 0.3, damping, 1, kfac_damping=kd, return_params=True)
    stepped = [(W - 0.3 * dW, b - 0.3 * db) for (W, b), (dW, db) in zip(net.params, update)]
    for (W, b), (W2, b2) in zip(params, stepped):
        assert np.array_equal(W, W2) and np.array_equal(b, b2)
    assert np.array_equal(out[0], ref.forward(net, X))


def _wide_smooth_net(depth, seed, N, width=8, activation="tanh"):
    """A net whose every ``Theta_l`` is invertible: ``M_0 = N``, hidden widths >= N, C = 1."""
    return MLP([N] + [width] * (depth - 1) + [1], activation=activation, sigma_b=0.3, seed=seed)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_reference_isotropy_at_zero_damping(depth):
    """At ``rho = 0`` with every ``Theta_l`` invertible: exact ``K = I``, block diagonal
    ``K = L I`` and block tri-diagonal ``K = (1^T T^+ 1) I`` with ``T`` the tri-diagonal
    ones (theory.md section 2; ``T`` singular for L = 2, 5).  ``T^+`` is formed here
    numerically from ``T``, not typed in."""
    N = 3
    net = _wide_smooth_net(depth, seed=depth, N=N)
    X = input_array(N, N, seed=10 + depth)
    Th = ref.layer_kernels(net, X)
    assert min(np.linalg.eigvalsh(T).min() / np.linalg.eigvalsh(T).max() for T in Th) > 1e-6
    T = np.eye(depth) + np.eye(depth, k=1) + np.eye(depth, k=-1)
    alpha_btd = np.ones(depth) @ np.linalg.pinv(T) @ np.ones(depth)
    for method, alpha in [(Method.EXACT, 1.0), (Method.BLOCK_DIAGONAL, depth),
                          (Method.BLOCK_TRIDIAGONAL, alpha_btd)]:
        K = ref.preconditioned_kernel(net, X, method, 0.0)
        # float64 identity: measured <= 4e-15 for every depth and method
        np.testing.assert_allclose(K, alpha * np.eye(N), atol=1e-10, err_msg=str(method))


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_reference_zero_damping_is_the_rho_to_zero_limit(variant):
    """The decision of ``reference.preconditioned_kernel`` for ``damping = 0`` (pseudo-inverse
    of ``F_hat``) is the ``rho -> 0`` limit: ``||K(rho) - K(0)||`` falls like ``rho`` (like
    ``sqrt(rho)`` for K-FAC with factor damping, whose cross terms are ``sqrt(rho) A (x) I``),
    on a ReLU net with L = 5 (singular ``T``) and an erf net with C = 2, both with rank-deficient
    K-FAC factors and per-unit blocks.  rho = 1e-6 -> 1e-8: ratio 1e-2 (1e-1), asserted with a
    3x margin (the spectra are not fully asymptotic at 1e-6) plus the solve error ``~ eps / 1e-8``."""
    method, kd = variant
    rate = 0.5 if (method is Method.KFAC and kd is KFACDamping.FACTORS) else 1.0
    cases = [(MLP([2, 6, 6, 6, 6, 1], "relu", seed=1), 3), (MLP([3, 6, 6, 2], "erf", sigma_b=0.2, seed=1), 2)]
    for net, N in cases:
        X = input_array(N, net.widths[0], seed=2)
        K0 = ref.preconditioned_kernel(net, X, method, 0.0, kfac_damping=kd)
        d = [frobenius_error(ref.preconditioned_kernel(net, X, method, rho, kfac_damping=kd), K0)
             for rho in (1e-6, 1e-8)]
        # floor: 10x the solve error eps / 1e-8 of the smaller damping
        assert d[1] <= 3 * 100.0 ** -rate * d[0] + 10 * EPS / 1e-8 * np.linalg.norm(K0), (net, d)


def test_reference_zero_damping_refuses_a_divergent_limit(monkeypatch):
    """If ``J^T`` has a component in ``null(F_hat)``, ``K(rho)`` grows like ``1/rho`` and the
    reference must raise instead of returning a pseudo-inverse that is not the limit.  The
    null direction is planted by zeroing one diagonal entry of ``diag(F)`` whose column of
    ``J`` is nonzero (block tri-diagonal ``F_hat`` can be indefinite, but random nets do
    not hit a divergent case: it needs a non-generic geometry of the ranges of Theta_l)."""
    net = MLP([2, 3, 1], "tanh", seed=0)
    X = input_array(3, 2, seed=1)
    original = ref.fisher_approx

    def planted(net_, X_, method):
        F_hat = original(net_, X_, method)
        F_hat[0, 0] = 0.0  # although J[:, 0] != 0
        return F_hat

    assert np.linalg.norm(ref.jacobian(net, X)[:, 0]) > 0.1
    monkeypatch.setattr(ref, "fisher_approx", planted)
    small, smaller = (np.linalg.norm(ref.preconditioned_kernel(net, X, Method.DIAGONAL, r)) for r in (1e-4, 1e-6))
    assert smaller > 50 * small  # it does diverge like 1/rho
    with pytest.raises(ValueError, match="limit does not exist"):
        ref.preconditioned_kernel(net, X, Method.DIAGONAL, 0.0)
    with pytest.raises(ValueError, match="limit does not exist"):
        ref.natural_gradient(net, X, np.zeros((3, 1)), Method.DIAGONAL, 0.0)


def test_reference_refuses_large_problems():
    net = MLP([64, 64, 1])  # P = 64 * 65 + 65 = 4225 > MAX_PARAMS
    with pytest.raises(MemoryError, match="small sizes only"):
        ref.jacobian(net, np.ones((1, 64)))
    with pytest.raises(MemoryError, match="small sizes only"):
        ref.layer_kernels(MLP([2, 3, 2]), np.ones((ref.MAX_ROWS, 2)))


# ============================================================ part 2: fast vs reference
@settings(max_examples=25)
@given(problem=regression_problems(max_params=600), cross=st.booleans())
def test_layer_kernels_equal_reference(problem, cross):
    """Hadamard-structured ``numeric.layer_kernels`` = ``J_l(X) J_l(X2)^T``: 1e-10 relative,
    with the floor ``1e-13 ||J_l(X)||_F ||J_l(X2)||_F`` (the round-off bound of a product,
    ``~ eps sqrt(P)`` times the factors' norms) for kernels that cancel to ~0."""
    net, X = problem.net, problem.X
    X2 = problem.X2 if cross else None
    expected = ref.layer_kernels(net, X, X2)
    actual = numeric.layer_kernels(net, X, X2)
    assert actual.shape == expected.shape
    J = ref.jacobian(net, X)
    J2 = J if X2 is None else ref.jacobian(net, X2)
    for l, (a, e, sl) in enumerate(zip(actual, expected, ref.layer_slices(net))):
        floor = 1e-13 * np.linalg.norm(J[:, sl]) * np.linalg.norm(J2[:, sl])
        assert frobenius_error(a, e) <= 1e-10 * np.linalg.norm(e) + floor, l


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@settings(max_examples=20)
@given(problem=regression_problems(max_params=400), damping=dampings(), cross=st.booleans())
def test_preconditioned_kernel_equals_reference(variant, problem, damping, cross):
    method, kd = variant
    pk = fast("preconditioned_kernel")
    net, X = problem.net, problem.X
    X2 = problem.X2 if cross else None
    N = X.shape[0]
    rtol, norm_A = solve_rtol(ref.damped_fisher(net, X, method, damping, kd),
                              dual_condition(net, X, method, damping))
    expected = ref.preconditioned_kernel(net, X, method, damping, X2, kfac_damping=kd)
    actual = pk(net, X, method, damping, X2, kfac_damping=kd)
    assert actual.shape == expected.shape
    J = ref.jacobian(net, X)
    J2 = J if X2 is None else ref.jacobian(net, X2)
    assert_kernel_close(actual, expected, J, J2, N, rtol, norm_A,
                        f"{method}/{kd} widths={net.widths} N={N} rho={damping:.3g}")


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@settings(max_examples=20)
@given(problem=regression_problems(max_params=400), damping=dampings())
def test_natural_gradient_equals_reference(variant, problem, damping):
    method, kd = variant
    ng = fast("natural_gradient")
    net, X, Y = problem.net, problem.X, problem.Y
    N = X.shape[0]
    rtol, norm_A = solve_rtol(ref.damped_fisher(net, X, method, damping, kd),
                              dual_condition(net, X, method, damping))
    expected = ref.natural_gradient(net, X, Y, method, damping, kfac_damping=kd)
    actual = ng(net, X, Y, method, damping, kfac_damping=kd)
    assert [(dW.shape, db.shape) for dW, db in actual] == [(W.shape, b.shape) for W, b in net.params]
    J = ref.jacobian(net, X)
    grad = J.T @ (ref.forward(net, X) - Y).ravel() / N
    e, a = flatten_update(expected), flatten_update(actual)
    err, bound = frobenius_error(a, e), rtol * (np.linalg.norm(e) + np.linalg.norm(grad) / norm_A)
    assert err <= bound, f"{method}/{kd} widths={net.widths} N={N} rho={damping:.3g}: {err:.3g} > {bound:.3g}"


def zero_damping_is_well_posed(net, X, method) -> bool:
    """Whether the cut-off of the ``rho -> 0`` pseudo-inverse is unambiguous: in every
    independent block (every K-FAC factor) each ``|eigenvalue|`` relative to the block's
    largest is either round-off (< 1e-13) or resolved (> 1e-7).  A saturated unit (tanh'
    ~ 1e-6 at one sample) gives a genuine eigenvalue ~ 1e-11 that float64 cannot tell
    from zero; the limit is then not computable to any useful accuracy."""
    if method is Method.GD:
        return True
    if method is Method.KFAC:
        blocks = [M for pair in ref.kfac_factors(net, X) for M in pair]
    else:
        F_hat = ref.fisher_approx(net, X, method)
        blocks = [F_hat[np.ix_(cols, cols)] for cols in ref.independent_blocks(net, method)]
    for M in blocks:
        lam = np.abs(np.linalg.eigvalsh(M))
        if lam.max() > 0 and np.any((lam > 1e-13 * lam.max()) & (lam < 1e-7 * lam.max())):
            return False
    return True


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_zero_damping_equals_reference(variant):
    """``damping = 0`` (the ``rho -> 0`` limit) on nets where it is well defined and
    well posed: every ``Theta_l`` invertible (``M_0 > N``, hidden widths >= N C, unit-norm
    inputs as in theory.md section 1, so no unit saturates), checked by
    :func:`zero_damping_is_well_posed`.  tanh, ReLU and erf, L = 1..4 (block tri-diagonal
    includes the singular-T case L = 2)."""
    method, kd = variant
    for depth, activation, C in [(1, "tanh", 1), (2, "relu", 2), (3, "tanh", 1), (4, "erf", 1)]:
        N = 3
        net = MLP([N + 1] + [10] * (depth - 1) + [C], activation=activation, sigma_b=0.2, seed=depth)
        X, X2 = input_array(N, N + 1, seed=depth + 100), input_array(2, N + 1, seed=depth + 200)
        X, X2 = (Z / np.linalg.norm(Z, axis=1, keepdims=True) for Z in (X, X2))
        Y = input_array(N, C, seed=depth + 300)
        assert zero_damping_is_well_posed(net, X, method)
        assert_zero_damping_matches(net, X, X2, Y, method, kd, f"{method}/{kd} widths={net.widths}")


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@settings(max_examples=5)
@given(problem=regression_problems(width=(1, 8), max_params=150, n_samples=(1, 4)),
       damping=dampings(1e-4, 1.0))
def test_train_equals_reference(variant, problem, damping):
    """Three NGD steps of ``numeric.train`` = dense ``reference.train``.  The per-step solve
    error (rtol of the first step's damped matrix) is propagated through at most three
    updates of an O(1)-Lipschitz map with lr 0.2, hence the 10x margin."""
    method, kd = variant
    tr = fast("train")
    net, X, Y = problem.net, problem.X, problem.Y
    rtol, _ = solve_rtol(ref.damped_fisher(net, X, method, damping, kd), dual_condition(net, X, method, damping))
    expected = ref.train(net, X, Y, method, 0.2, damping, 3, kfac_damping=kd)
    before = [(W.copy(), b.copy()) for W, b in net.params]
    actual = tr(net, X, Y, method, 0.2, damping, 3, kfac_damping=kd).train_outputs
    assert all(np.array_equal(W, W0) and np.array_equal(b, b0) for (W, b), (W0, b0) in zip(net.params, before))
    assert actual.shape == expected.shape
    err = frobenius_error(actual, expected)
    assert err <= 10 * rtol * (np.linalg.norm(expected) + 1e-3), f"{method}/{kd}: {err:.3g}"


# ============================================ damping 0 on random nets: one pseudo-inverse convention
#: Spectral gap required around the cut-off: no eigenvalue within this factor of it.
CUTOFF_GAP = 1e3
#: (method, K-FAC damping, C or None for "drawn") of the random damping-0 comparison.
ZERO_DAMPING_CASES = [(Method.UNIT_WISE, KFACDamping.FACTORS, 1), (Method.UNIT_WISE, KFACDamping.FACTORS, 2),
                      (Method.KFAC, KFACDamping.FACTORS, None), (Method.KFAC, KFACDamping.EXACT, None),
                      (Method.BLOCK_DIAGONAL, KFACDamping.FACTORS, None), (Method.EXACT, KFACDamping.FACTORS, None)]


def pseudo_inverted_blocks(net, X, method) -> list[np.ndarray]:
    """The symmetric matrices whose pseudo-inverse is the ``rho -> 0`` limit, from the reference:
    every independent block of ``F_hat`` (``reference.independent_blocks``), for K-FAC the two
    factors ``B_l``, ``A_{l-1}`` of every layer.  The fast routines invert the ``N C`` duals
    (``Theta_B = J_B J_B^T``), which have the same nonzero spectrum up to the factor ``N``."""
    if method is Method.KFAC:
        return [M for pair in ref.kfac_factors(net, X) for M in pair]
    F_hat = ref.fisher_approx(net, X, method)
    return [F_hat[np.ix_(cols, cols)] for cols in ref.independent_blocks(net, method)]


def gap_at_cutoff(net, X, method, gap=CUTOFF_GAP) -> bool:
    """Whether no ``|eigenvalue|`` of any pseudo-inverted block lies within a factor ``gap`` of
    the cut-off ``pinv_rcond(float64) * max |eigenvalue|`` of that block."""
    cut = pinv_rcond(np.float64)
    for M in pseudo_inverted_blocks(net, X, method):
        lam = np.abs(np.linalg.eigvalsh(M))
        top = lam.max(initial=0.0)
        if top > 0 and np.any((lam > cut * top / gap) & (lam < cut * top * gap)):
            return False
    return True


def random_zero_damping_problem(seed, C=None):
    """A small random float64 net (L = 1..3, widths 1..6, any activation, sigma_b in [0, 1]) and
    N = 2..5 un-normalised Gaussian inputs (scale 1, 3 or 10: tanh/erf units saturate at some
    samples, ReLU units switch off), so that singular and nearly singular blocks are common."""
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(1, 4))
    C = int(rng.integers(1, 3)) if C is None else C
    widths = [int(rng.integers(1, 7)) for _ in range(depth)] + [C]
    activation = sorted(ACTIVATIONS)[int(rng.integers(len(ACTIVATIONS)))]
    net = MLP(widths, activation=activation, sigma_b=float(rng.uniform(0, 1)), seed=seed)
    N = int(rng.integers(2, 6))
    scale = (1.0, 3.0, 10.0)[int(rng.integers(3))]
    X, X2 = scale * rng.standard_normal((N, widths[0])), scale * rng.standard_normal((2, widths[0]))
    return net, X, X2, rng.standard_normal((N, C))


@pytest.mark.parametrize("method,kd,C", ZERO_DAMPING_CASES,
                         ids=[f"{m.value}-{k.value}-C{c}" for m, k, c in ZERO_DAMPING_CASES])
def test_zero_damping_equals_reference_on_random_nets(method, kd, C):
    """``damping = 0`` of the fast routines = the reference's, on random nets, wherever the
    ``rho -> 0`` pseudo-inverse is *well posed*: every pseudo-inverted matrix has no eigenvalue
    within a factor 1e3 of the shared cut-off (``numeric._linalg``, relative to that matrix's
    largest eigenvalue; :func:`gap_at_cutoff`, computed from the reference's blocks).

    Why ill-posed examples are excluded: an eigenvalue near the cut-off is known only to
    ``~ eps max |w|`` absolute, and the two sides compute it from different matrices (the fast
    ``N C x N C`` Gram, the reference's ``P x P`` Fisher block), so which side of the cut-off it
    falls on, hence whether a whole eigen-direction is kept, is decided by round-off; and a kept
    eigenvalue just above the cut-off amplifies that round-off by up to ``1 / rcond = 1e10``.
    No tolerance is then both meaningful and safe.  With the gap, both sides keep the same
    spectrum and the kept condition number is below ``1e7``, so the solve tolerance of the module
    docstring applies (``rtol = max(1e-9, 100 eps cond)``, ``cond`` over the kept spectrum).
    The excluded examples must stay a minority, so the test cannot pass vacuously.
    Before the shared convention the fast routines cut at ``n eps max`` and differed from the
    reference by up to 5e-2 (kernels) and 5e4 (relative, natural gradients) on such nets; this
    test failed on that code for every case here (saturated erf nets, e.g. seeds 22 and 55).
    """
    n_examples, excluded = 60, 0
    for seed in range(n_examples):
        net, X, X2, Y = random_zero_damping_problem(seed, C)
        if not gap_at_cutoff(net, X, method):
            excluded += 1
            continue
        assert_zero_damping_matches(net, X, X2, Y, method, kd,
                                    f"seed {seed}: {method}/{kd} {net.activation} widths={net.widths}")
    assert excluded < n_examples / 2, f"{excluded} of {n_examples} examples ill-posed: the test is near vacuous"
