"""Infinite-width kernels (ngdsym.kernels, theory.md section 4).

Checks, from independent references:

* SymPy identities of the derived closed forms (Price's theorem, the boundary values
  at ``c = 0`` and ``c = +-sqrt(q q')`` from 1-D SymPy Gaussian integrals, angle form
  == covariance form);
* the lambdified expectations against a Monte-Carlo sampler (eigendecomposition of
  the covariance, ``numeric``'s NumPy activations), tolerance 5 standard errors;
* the per-layer recursion against Monte-Carlo sampling of the pre-activations layer
  by layer, conditioned on the exact covariance of that layer;
* closed forms against adaptive / high-order quadrature;
* finite-width Grams of ``numeric`` converging to the limits at rate ``M^{-1/2}``.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, strategies as st
from scipy import integrate as sci_integrate

from ngdsym import kernels as K
from ngdsym.kernels import (CC, Q, Q2, U, InfiniteWidthKernels, gaussian_quadrature_expectation,
                            infinite_width_kernels, kernel_recursion, layer_recursion)
from numeric import ACTIVATIONS, MLP
from numeric._kernels import backward_grams, forward_grams, layer_kernels_from_features
from strategies import bivariate_covariances, kernel_architectures

CLOSED_FORM = ("relu", "erf", "linear")
qp, q2p = sp.Symbol("q", positive=True), sp.Symbol("q'", positive=True)
Z = sp.Symbol("z", real=True)
GAUSS = sp.exp(-Z**2 / 2) / sp.sqrt(2 * sp.pi)


def positive(expr):
    """Restrict to ``q, q' > 0`` (the nondegenerate branch)."""
    return expr.subs({Q: qp, Q2: q2p})


def gauss_1d(f, variance):
    """``E[f(u)]``, ``u ~ N(0, variance)``, by a 1-D SymPy integral."""
    return sp.integrate(f.subs(U, sp.sqrt(variance) * Z) * GAUSS, (Z, -sp.oo, sp.oo), conds="none")


def gaussian_samples(cov, n, rng):
    """``n`` draws of ``N(0, cov)`` through the eigendecomposition (cov may be singular)."""
    lam, V = np.linalg.eigh(cov)
    root = V * np.sqrt(np.clip(lam, 0.0, None))
    return rng.standard_normal((n, cov.shape[0])) @ root.T


# ------------------------------------------------------------- symbolic side
def test_activation_names_match_numeric():
    assert set(K.ACTIVATION_EXPRESSIONS) == set(ACTIVATIONS)
    u = np.linspace(-3, 3, 61)  # includes u = 0 (relu'(0) = 0 on both sides)
    for name, (phi, dphi) in ACTIVATIONS.items():
        rec = kernel_recursion(name)
        for expr, ref in ((rec.phi, phi), (rec.phi_prime, dphi)):
            got = np.broadcast_to(sp.lambdify(U, expr, ("scipy", "numpy"))(u), u.shape)
            np.testing.assert_allclose(got, ref(u), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("activation", CLOSED_FORM)
def test_price_theorem(activation):
    """d/dc E[phi(u) phi(u')] = E[phi'(u) phi'(u')] (Price 1958)."""
    rec = kernel_recursion(activation)
    lhs = sp.diff(positive(rec.kernel), CC)
    assert sp.simplify(lhs - positive(rec.derivative_kernel)) == 0


@pytest.mark.parametrize("activation", CLOSED_FORM)
def test_boundary_independent(activation):
    """c = 0: u and u' independent, E[f(u) f(u')] = E[f(u)] E[f(u')] (1-D integrals)."""
    rec = kernel_recursion(activation)
    for expr, f in ((rec.kernel, rec.phi), (rec.derivative_kernel, rec.phi_prime)):
        product = gauss_1d(f, qp) * gauss_1d(f, q2p)
        assert sp.simplify(positive(expr).subs(CC, 0) - product) == 0


@pytest.mark.parametrize("activation", CLOSED_FORM)
def test_boundary_fully_correlated(activation):
    """c = q = q': u' = u, E[f(u)^2] (1-D integral); relu also at c = -q: u' = -u."""
    rec = kernel_recursion(activation)
    exprs = [(rec.derivative_kernel, rec.phi_prime)]
    if activation != "erf":  # E[erf(u)^2] has no elementary 1-D SymPy integral; checked numerically below
        exprs.append((rec.kernel, rec.phi))
    for expr, f in exprs:
        at_one = positive(expr).subs({q2p: qp}).subs(CC, qp)
        assert sp.simplify(at_one - gauss_1d(f**2, qp)) == 0
    if activation == "relu":
        for expr, f in ((rec.kernel, rec.phi), (rec.derivative_kernel, rec.phi_prime)):
            anti = sp.simplify(positive(expr).subs({q2p: qp}).subs(CC, -qp))
            assert anti == 0  # relu(u) relu(-u) = 0


def test_erf_fully_correlated_numeric():
    rec = kernel_recursion("erf")
    from scipy import special
    for q in (0.1, 1.0, 4.0):
        ref, _ = sci_integrate.quad(lambda z: special.erf(np.sqrt(q) * z) ** 2 * np.exp(-z * z / 2)
                                    / np.sqrt(2 * np.pi), -np.inf, np.inf, epsabs=1e-14)
        assert abs(float(rec.expectation(q, q, q)) - ref) < 1e-12


def test_relu_angle_form_equals_covariance_form():
    rec = kernel_recursion("relu")
    t = sp.Symbol("t", positive=True)
    cov_at_angle = {CC: sp.sqrt(qp * q2p) * sp.cos(t)}
    for cov, angle in ((rec.kernel, rec.angle_kernel), (rec.derivative_kernel, rec.angle_derivative_kernel)):
        diff = positive(cov).subs(cov_at_angle) - positive(angle).subs(K.T, t)
        # t in (0, pi): atan2(sin t, cos t) = t; checked symbolically at sample angles
        for t0 in (sp.pi / 7, sp.pi / 2, 5 * sp.pi / 6):
            assert sp.simplify(diff.subs(t, t0)) == 0


def test_linear_kernels():
    rec = kernel_recursion("linear")
    assert sp.simplify(rec.kernel - CC) == 0
    assert sp.simplify(rec.derivative_kernel - 1) == 0


def test_tanh_has_no_closed_form_and_renders():
    rec = kernel_recursion("tanh")
    assert rec.kernel is None and rec.derivative_kernel is None
    assert "quadrature" in rec.text() and "quadrature" in rec.latex()
    relu = kernel_recursion("relu")
    assert sp.latex(relu.derivative_kernel) in relu.latex()
    assert sp.pretty(relu.kernel, use_unicode=False) in relu.text()


def test_derivation_steps_end_in_the_kernels():
    for activation in CLOSED_FORM:
        rec = kernel_recursion(activation)
        steps = K.derivation_steps(activation)
        assert all(isinstance(text, str) for text, _ in steps)
        final = steps[-1][1].subs(K.D, sp.sqrt(Q * Q2 - CC**2))
        target = rec.derivative_kernel if activation == "relu" else rec.kernel
        if activation == "linear":
            target = rec.derivative_kernel
        assert sp.simplify(positive(final) - positive(target)) == 0


def test_layer_recursion_substitutes_closed_forms():
    eqs = dict(layer_recursion("linear"))
    S = sp.Function("S")
    l, x, x2 = sp.Symbol("l", integer=True, positive=True), sp.Symbol("x"), sp.Symbol("x'")
    rhs = eqs["S_{l+1}"].rhs
    assert sp.simplify(rhs - (K.SIGMA_W**2 * S(l, x, x2) + K.SIGMA_B**2)) == 0
    assert eqs["Sd_l"].rhs == 1


# ------------------------------------------------------- lambdified vs samples
N_MC = 40_000


@given(cov=bivariate_covariances(), seed=st.integers(0, 2**31))
def test_expectations_match_monte_carlo(cov, seed):
    q, q2, c = cov
    S = np.array([[q, c], [c, q2]])
    uv = gaussian_samples(S, N_MC, np.random.default_rng(seed))
    for name, (phi, dphi) in ACTIVATIONS.items():
        rec = kernel_recursion(name)
        for f, value in ((phi, rec.expectation(q, q2, c)), (dphi, rec.derivative_expectation(q, q2, c))):
            prod = f(uv[:, 0]) * f(uv[:, 1])
            se = prod.std() / np.sqrt(N_MC)
            assert abs(float(value) - prod.mean()) <= 5 * se + 1e-12, (name, cov)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("sigma_b", [0.0, 0.6])
def test_layer_recursion_matches_monte_carlo(activation, sigma_b):
    """Sample u_l ~ N(0, S_l) jointly over all inputs; the sample means of
    sigma_w^2 phi phi' + sigma_b^2 and sigma_w^2 phi' phi' Bt_{l+1} give S_{l+1} and Bt_l."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((5, 3)) * np.array([[0.5], [1.0], [2.0], [1.0], [0.0]])  # last: zero input
    sigma_w, depth, n = 1.3, 4, 100_000
    kern = infinite_width_kernels(X, depth=depth, activation=activation, sigma_w=sigma_w, sigma_b=sigma_b)
    phi, dphi = ACTIVATIONS[activation]
    for k in range(depth - 1):  # layer l = k + 1
        u = gaussian_samples(kern.forward[k], n, rng)
        for f, target, scale in ((phi, kern.forward[k + 1] - sigma_b**2, 1.0),
                                 (dphi, kern.backward[k], kern.backward[k + 1])):
            fu = f(u)
            prod = fu[:, :, None] * fu[:, None, :]
            mean = sigma_w**2 * scale * prod.mean(0)
            se = sigma_w**2 * np.abs(scale) * prod.std(0) / np.sqrt(n)
            # + rounding floor: eigh-based samples of a zero-variance input are O(1e-8), not 0
            assert np.all(np.abs(mean - target) <= 5 * se + 1e-10 * np.abs(target) + 1e-12), (activation, k)


# --------------------------------------------------------------- quadrature
def test_erf_closed_form_vs_quadrature():
    from scipy import special
    erf, derf = ACTIVATIONS["erf"]
    rec = kernel_recursion("erf")
    rng = np.random.default_rng(3)
    q, q2 = rng.uniform(0, 5, 50), rng.uniform(0, 5, 50)
    c = rng.uniform(-1, 1, 50) * np.sqrt(q * q2)
    for f, closed in ((special.erf, rec.expectation), (derf, rec.derivative_expectation)):
        quad = gaussian_quadrature_expectation(f, f, q, q2, c, order=160)
        np.testing.assert_allclose(quad, closed(q, q2, c), rtol=0, atol=1e-13)


def test_tanh_quadrature_converged():
    """Default order against 2.5x the order: the stated accuracy (measured <= 9e-10 at q = 5)."""
    rec = kernel_recursion("tanh")
    rng = np.random.default_rng(4)
    q, q2 = rng.uniform(0, 4, 40), rng.uniform(0, 4, 40)
    c = rng.uniform(-1, 1, 40) * np.sqrt(q * q2)
    for method in (rec.expectation, rec.derivative_expectation):
        np.testing.assert_allclose(method(q, q2, c), method(q, q2, c, quadrature_order=240), rtol=0, atol=1e-9)


def test_relu_closed_form_vs_adaptive_quadrature():
    """Arc-cosine kernels against scipy.dblquad over the quadrant u, u' > 0."""
    rec = kernel_recursion("relu")
    for q, q2, rho in ((1.0, 1.0, 0.3), (0.5, 3.0, -0.8), (2.0, 0.7, 0.95), (1.0, 2.0, -0.2)):
        c = rho * np.sqrt(q * q2)
        det = q * q2 - c * c
        dens = lambda v, u: np.exp(-(q2 * u * u - 2 * c * u * v + q * v * v) / (2 * det)) / (2 * np.pi * np.sqrt(det))
        k_ref = sci_integrate.dblquad(lambda v, u: u * v * dens(v, u), 0, np.inf, 0, np.inf, epsabs=1e-12)[0]
        d_ref = sci_integrate.dblquad(dens, 0, np.inf, 0, np.inf, epsabs=1e-12)[0]
        assert abs(float(rec.expectation(q, q2, c)) - k_ref) < 1e-9
        assert abs(float(rec.derivative_expectation(q, q2, c)) - d_ref) < 1e-9


def test_relu_stable_near_full_correlation():
    """arctan2 form: no nan and continuity at |c| -> sqrt(q q') (and beyond, by rounding)."""
    rec = kernel_recursion("relu")
    q = np.array([0.0, 1e-300, 1.0, 3.0, 3.0])
    c = np.array([0.0, 1e-300, 1.0 + 1e-16, 3.0 * (1 - 1e-15), -3.0])
    for method in (rec.expectation, rec.derivative_expectation):
        values = method(q, q, c)
        assert np.all(np.isfinite(values))
    np.testing.assert_allclose(rec.expectation(q, q, c)[2:4], q[2:4] / 2, rtol=1e-12)
    np.testing.assert_allclose(rec.derivative_expectation(q, q, c)[2:4], 0.5, rtol=1e-7)


# ------------------------------------------------------------- entry point
@given(arch=kernel_architectures(), seed=st.integers(0, 2**31))
def test_cross_kernels_are_blocks_of_the_joint_gram(arch, seed):
    """X2 given: equals the (X, X2) block of the kernels of the stacked inputs; symmetric for X2=None."""
    rng = np.random.default_rng(seed)
    X, X2 = rng.standard_normal((4, 3)), 2 * rng.standard_normal((3, 3))
    joint = infinite_width_kernels(np.vstack([X, X2]), **arch)
    cross = infinite_width_kernels(X, X2, **arch)
    for name in ("forward", "backward", "layer_ntk"):
        a, b = getattr(cross, name), getattr(joint, name)
        assert a.shape == (arch["depth"], 4, 3)
        np.testing.assert_allclose(a, b[:, :4, 4:], rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(b, b.transpose(0, 2, 1))
    np.testing.assert_array_equal(cross.layer_ntk, cross.forward * cross.backward)
    np.testing.assert_allclose(cross.ntk, cross.layer_ntk.sum(0), rtol=1e-15)
    np.testing.assert_array_equal(cross.backward[-1], 1.0)


def test_result_record_and_read_only():
    kern = infinite_width_kernels(np.eye(2), depth=2, activation="tanh", sigma_w=1.5, sigma_b=0.2)
    assert isinstance(kern, InfiniteWidthKernels)
    assert (kern.depth, kern.activation, kern.sigma_w, kern.sigma_b) == (2, "tanh", 1.5, 0.2)
    with pytest.raises(ValueError):
        kern.forward[0, 0, 0] = 1.0


def test_zero_input_matches_finite_width_convention():
    """q = 0 (zero input, no bias): no nan; relu'(0) = 0 gives Bt_l = 0 for l < L, as in numeric."""
    X = np.array([[1.0, 0.0], [0.0, 0.0], [0.6, 0.8]])
    kern = infinite_width_kernels(X, depth=3)
    assert np.all(np.isfinite(kern.layer_ntk))
    net = MLP([2, 64, 64, 1], seed=0)
    feat = net.features(X)
    for k in range(3):
        np.testing.assert_array_equal(forward_grams(feat)[k][1], 0.0)
        np.testing.assert_array_equal(kern.forward[k][1], 0.0)
    for k in range(2):
        np.testing.assert_array_equal(backward_grams(feat)[k][1], 0.0)
        np.testing.assert_array_equal(kern.backward[k][1], 0.0)


@pytest.mark.parametrize("kwargs, argument", [
    ({"X": np.ones(3)}, "X"),
    ({"X": np.ones((0, 2))}, "X"),
    ({"X": [[1.0, np.nan]]}, "X"),
    ({"X": "abc"}, "X"),
    ({"X2": np.ones((2, 3))}, "X2"),
    ({"X2": [[np.inf, 0.0]]}, "X2"),
    ({"depth": 0}, "depth"),
    ({"depth": 2.0}, "depth"),
    ({"depth": True}, "depth"),
    ({"activation": "sigmoid"}, "activation"),
    ({"sigma_w": 0.0}, "sigma_w"),
    ({"sigma_w": np.inf}, "sigma_w"),
    ({"sigma_b": -0.1}, "sigma_b"),
    ({"sigma_b": "a"}, "sigma_b"),
    ({"quadrature_order": 2}, "quadrature_order"),
])
def test_bad_input(kwargs, argument):
    args = {"X": np.ones((2, 2)), "depth": 2, **kwargs}
    X = args.pop("X")
    with pytest.raises(ValueError, match=argument):
        infinite_width_kernels(X, **args)


def test_unknown_activation_for_recursion():
    with pytest.raises(ValueError, match="activation"):
        kernel_recursion("softplus")


# ---------------------------------------------------------- width convergence
WIDTHS = np.array([64, 128, 256, 512, 1024])


def relative_errors(activation, sigma_b, seeds=10):
    """RMS over seeds of the relative Frobenius errors of the finite-width Grams, per width.

    ``layer_kernels_from_features`` is what ``numeric.layer_kernels`` returns, from the
    features computed once (the backward pass dominates the cost).
    """
    X = np.random.default_rng(11).standard_normal((8, 4))
    X[:4] /= np.linalg.norm(X[:4], axis=1, keepdims=True)  # half unit-norm, half not
    lim = infinite_width_kernels(X, depth=3, activation=activation, sigma_b=sigma_b)
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
    errors = np.zeros((WIDTHS.size, 3))
    for i, M in enumerate(WIDTHS):
        sq = np.zeros(3)
        for seed in range(seeds):
            net = MLP([4, M, M, 1], activation=activation, sigma_b=sigma_b, seed=seed)
            feat = net.features(X)
            sq += np.array([
                rel(layer_kernels_from_features(feat), lim.layer_ntk),
                rel(np.stack(forward_grams(feat)[1:]), lim.forward[1:]),     # S_1 is exact at any width
                rel(np.stack(backward_grams(feat)[:-1]), lim.backward[:-1]),  # Bt_L = 1 exactly
            ]) ** 2
        errors[i] = np.sqrt(sq / seeds)
    return errors


@pytest.mark.parametrize("activation, sigma_b", [("relu", 0.3), ("tanh", 0.0)])
def test_finite_width_converges_at_rate_one_over_sqrt_width(activation, sigma_b):
    errors = relative_errors(activation, sigma_b)
    scaled = errors * np.sqrt(WIDTHS)[:, None]
    # error * sqrt(M) bounded and roughly constant (theory.md section 4 measured 2.4-3.0)
    assert np.all(scaled < 6.0), scaled
    # roughly constant: measured max/min 1.2-1.9 (seed noise of a 10-seed RMS)
    assert np.all(scaled.max(0) / scaled.min(0) < 2.5), scaled
    # measured slopes -0.43 .. -0.52
    slopes = [np.polyfit(np.log(WIDTHS), np.log(errors[:, j]), 1)[0] for j in range(3)]
    assert np.all(np.abs(np.array(slopes) + 0.5) < 0.15), slopes
