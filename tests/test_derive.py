"""Tests of ngdsym.derive and the block algebra behind it (issue 3; theory.md sections 1-3).

Symbolic identities are checked with ``simplify(a - b) == 0`` / ``.equals`` / exact matrix
equality; numeric hooks against direct NumPy evaluation of the formulas, written here from
the definitions, on random positive definite per-layer kernels (float64: tolerance 1e-9
relative, a few hundred flops on well-conditioned 8 x 8 matrices).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from ngdsym import Method, derive
from ngdsym import _algebra as alg
from ngdsym.derivation import (_diagonal_example, _leverage_derivation, _unit_projection_example,
                               activation_gamma)

L_sym = sp.Symbol("L", positive=True, integer=True)
N_sym = sp.Symbol("N", positive=True, integer=True)


# ----------------------------------------------------------------------------- helpers
def random_kernels(L, n, n2, seed):
    """Train/cross per-layer kernels from explicit features (so cross rows lie in the row space).

    forward/backward are Gram matrices of random features; the output layer's backward Gram is
    the all-ones matrix (delta_L = e_c), as in the infinite-width limit; layer_ntk = Bt o S.
    """
    rng = np.random.default_rng(seed)
    grams = []
    for _ in range(2 * L):
        F = rng.standard_normal((n + n2, n + n2 + 4))
        grams.append(F @ F.T / F.shape[1])
    fw, bw = np.stack(grams[:L]), np.stack(grams[L:])
    bw[-1] = 1.0
    ntk = fw * bw
    train = SimpleNamespace(layer_ntk=ntk[:, :n, :n], forward=fw[:, :n, :n], backward=bw[:, :n, :n])
    cross = SimpleNamespace(layer_ntk=ntk[:, n:, :n], forward=fw[:, n:, :n], backward=bw[:, n:, :n])
    return train, cross


def kron_out(A, C):
    return np.kron(A, np.eye(C))


def random_rational_matrix(rng, rows, cols):
    return sp.Matrix(rows, cols, lambda i, j: sp.Rational(int(rng.integers(-5, 6)), int(rng.integers(1, 4))))


# ----------------------------------------------------------------------------- push-through
@given(st.integers(0, 10_000), st.integers(1, 3), st.integers(2, 4))
def test_push_through_identity_exact_on_random_rational_matrices(seed, n, p):
    rng = np.random.default_rng(seed)
    X = random_rational_matrix(rng, n, p)
    rho = sp.Rational(int(rng.integers(1, 7)), int(rng.integers(1, 5)))
    scale = sp.Rational(1, int(rng.integers(1, 5)))
    assert alg.verify_push_through(X, rho, scale).is_zero_matrix
    # with a symmetric (possibly indefinite) middle factor G, where both inverses exist
    G = random_rational_matrix(rng, n, n)
    G = G + G.T
    lhs_matrix = scale * X.T * G * X + rho * sp.eye(p)
    if lhs_matrix.det() != 0:
        assert alg.verify_push_through(X, rho, scale, G).is_zero_matrix


def test_push_through_rewrite_agrees_with_explicit_matrices():
    rng = np.random.default_rng(3)
    J = sp.MatrixSymbol("J", 2, 4)
    Jx = sp.MatrixSymbol("Jx", 3, 4)
    K = Jx * (J.T * J / alg.N + alg.rho * sp.Identity(4)).I * J.T / alg.N
    K2, condition = alg.push_through(K)
    assert "rho" in condition
    values = {J: random_rational_matrix(rng, 2, 4), Jx: random_rational_matrix(rng, 3, 4)}
    scalars = {alg.N: 2, alg.rho: sp.Rational(1, 3)}
    before = K.subs(scalars).xreplace(values).as_explicit()
    after = K2.subs(scalars).xreplace(values).as_explicit()
    assert sp.simplify(before - after).is_zero_matrix


def test_push_through_refuses_what_it_cannot_rewrite():
    J = sp.MatrixSymbol("J", 2, 4)
    diag = sp.DiagonalMatrix(J.T * J)
    with pytest.raises(alg.PushThroughNotApplicable):
        alg.push_through(J * (diag + alg.rho * sp.Identity(4)).I * J.T)
    zero = sp.Symbol("z", zero=True)
    with pytest.raises(alg.PushThroughNotApplicable):
        alg.push_through((J.T * J + zero * sp.Identity(4)).I * J.T)


def test_spectral_limit_gives_projection():
    assert alg.spectral_limit() == (1, 0)


# ----------------------------------------------------------------------------- alpha per method
def test_block_diagonal_and_exact_constants():
    assert derive("block_diagonal", depth=3).alpha == 3
    assert sp.simplify(derive("block_diagonal").alpha - L_sym) == 0
    assert derive("exact").alpha == 1
    assert derive("exact").limit == sp.Identity(N_sym * sp.Symbol("C", positive=True, integer=True))
    gd = derive("gd", depth=2)
    assert gd.alpha is None and "NTK spectrum" in gd.alpha_reason
    assert gd.learning_rate is None


@pytest.mark.parametrize("L", range(1, 9))
def test_block_tridiagonal_alpha_is_ones_pinv_ones(L):
    T = sp.Matrix(L, L, lambda i, j: 1 if abs(i - j) <= 1 else 0)
    expected = (sp.ones(1, L) * T.pinv() * sp.ones(L, 1))[0, 0]
    assert sp.simplify(derive("block_tridiagonal", depth=L).alpha - expected) == 0


def test_block_tridiagonal_symbolic_alpha_matches_integer_depths():
    a = derive("block_tridiagonal").alpha
    for L in range(1, 10):
        assert sp.simplify(a.subs(L_sym, L) - derive("block_tridiagonal", depth=L).alpha) == 0


def test_kfac_constant():
    d = derive("kfac", depth=L_sym, n_samples=N_sym)
    assert d.alpha.equals(N_sym * (L_sym - 1) + 1)
    assert derive("kfac", depth=3, n_samples=16).alpha == 33
    assert derive("kfac", kfac_damping="exact", depth=4, n_samples=5).alpha == 16


def test_kfac_first_layer_with_few_inputs_is_not_isotropic():
    d = derive("kfac", depth=3, n_samples=8, widths=[4, 64, 64, 1])
    assert d.alpha is None and "leverage" in d.alpha_reason
    steps, radial, counter = _leverage_derivation()
    assert radial == 2 * sp.eye(3)  # M_0 = 2: radial isotropic inputs contribute M_0 I
    assert counter != counter[0, 0] * sp.eye(3)  # unequal leverage scores otherwise
    assert sp.simplify(counter.trace() - 3 * 2) == 0  # N * trace(P) = N * rank = N M_0


def test_unit_wise_gamma_and_alpha():
    assert activation_gamma("relu")[0] == sp.Rational(1, 2)
    assert activation_gamma("tanh")[0] == 1
    assert activation_gamma("erf")[0] == 1
    d = derive("unit_wise", depth=3, widths=[5, 100, 60, 1], activation="relu")
    assert d.alpha == 81
    assert derive("unit_wise").alpha_value(depth=4, widths=[10, 20, 30], activation="tanh") == 61.0
    projection_input, limit, *_ = _unit_projection_example()
    assert limit == sp.diag(1, 1, 0)


def test_unit_wise_several_outputs_breaks_isotropy():
    d = derive("unit_wise", n_outputs=2)
    assert d.alpha is None and "C = 1" in d.alpha_reason
    *_, projection, off_diagonal = _unit_projection_example()
    assert sp.simplify(off_diagonal).is_positive  # a b / (a^2 + b^2) > 0 for a, b > 0: not diagonal
    assert sp.simplify(projection * projection - projection).is_zero_matrix


def test_diagonal_counterexample_is_not_isotropic():
    J, K0, off, off_at, off_num = _diagonal_example()
    assert abs(float(off_num)) > 1e-3
    # independent check: numerically evaluated Jacobian, K = J diag(F)^{-1} J^T / N with N = 2
    Jn = np.array(J.subs({s: v for s, v in zip(sp.symbols("x_1 x_2 w_1 w_2 v_1 v_2", real=True),
                                                  (1, 2, 1, -0.5, 1, 1))}).evalf(), dtype=float)
    F = np.diag(Jn.T @ Jn / 2)
    K = Jn @ np.diag(1 / F) @ Jn.T / 2
    assert K[0, 1] == pytest.approx(float(off_num), rel=1e-12)
    d = derive("diagonal")
    assert d.alpha is None
    with pytest.raises(NotImplementedError):
        d.kernel_limit(*random_kernels(2, 3, 2, 0))


# ----------------------------------------------------------------------------- dynamics
@pytest.mark.parametrize("method", ["exact", "block_diagonal", "kfac"])
def test_dynamics_and_learning_rates(method):
    d = derive(method, depth=3, n_samples=4)
    a = d.alpha
    eta, t = alg.eta, alg.t
    e0 = sp.MatrixSymbol("e_0", d.dynamics.shape[0], 1)
    assert sp.simplify((d.dynamics - (1 - a * eta) ** t * e0).doit()) == sp.ZeroMatrix(*e0.shape)
    assert sp.simplify(d.learning_rate.optimal * a - 1) == 0
    assert d.learning_rate.stable == sp.Interval.open(0, 2 / a)


def test_structure_validation():
    with pytest.raises(ValueError, match="unknown structure keys"):
        derive("exact", depht=3)
    with pytest.raises(ValueError, match="depth"):
        derive("exact", depth=0)
    with pytest.raises(ValueError, match="n_outputs"):
        derive("exact", n_outputs=0)
    with pytest.raises(ValueError, match="method"):
        derive("newton")
    with pytest.raises(ValueError, match="widths"):
        derive("kfac", depth=3, widths=[2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="not isotropic"):
        derive("gd").alpha_value(depth=2, n_samples=3)


def test_rendering_lists_every_step():
    for method in Method:
        d = derive(method, depth=3)
        text = d.explain()
        assert f"{len(d.steps):2d}. " in text
        assert d.latex() and str(d) == d.text()


def test_latex_escapes_text_and_conditions_keep_their_relations():
    import re
    for method in Method:
        d = derive(method, depth=3)
        for body in re.findall(r"\\text\{((?:\\\^\{\}|\\[{}]|[^{}])*)\}", d.latex()):
            assert "_" not in body.replace(r"\_", ""), (method, body)  # LaTeX text mode
            assert "^" not in body.replace(r"\^{}", ""), (method, body)
        if method is Method.GD:  # F_hat + rho I := I: no damping, no conditions
            continue
        damping = next(c for c in d.conditions if c.name == "damping")
        assert isinstance(damping.expr, sp.core.relational.Relational)  # data, not True
        assert damping.expr.lhs == alg.rho


@pytest.mark.parametrize("widths, isotropic", [([10, 64, 64, 1], True), ([10, 4, 64, 1], False),
                                               ([10, 64, 6, 1], False)])
def test_kfac_width_conditions_against_finite_width_kernel(widths, isotropic):
    """K-FAC at rho -> 0 is isotropic at any width iff N C <= M_l and N <= M_{l-1} (+1 with bias):
    checked on numeric.preconditioned_kernel (float64, ~1e-12 on a 8 x 8 kernel)."""
    from numeric import MLP, preconditioned_kernel
    n = 8
    X = np.random.default_rng(0).standard_normal((n, widths[0]))
    K = preconditioned_kernel(MLP(widths, activation="tanh", seed=1), X, "kfac", 0.0)
    d = derive("kfac", depth=3, n_samples=n, widths=widths)
    if isotropic:
        np.testing.assert_allclose(K, d.alpha_value() * np.eye(n), atol=1e-9)
    else:
        assert d.alpha is None and "rank condition" in d.alpha_reason
        assert np.abs(K - K[0, 0] * np.eye(n)).max() > 0.1  # genuinely not alpha I
        with pytest.raises(ValueError, match="not isotropic"):
            d.alpha_value()


def test_unit_wise_needs_invertible_input_gram():
    """M_0 < N: the first layer's unit Grams D Q_0 D lose rank; numeric shows K != alpha I."""
    from numeric import MLP, preconditioned_kernel
    n = 8
    for widths, isotropic in (([10, 64, 64, 1], True), ([3, 64, 64, 1], False)):
        X = np.random.default_rng(0).standard_normal((n, widths[0]))
        K = preconditioned_kernel(MLP(widths, activation="tanh", seed=1), X, "unit_wise", 0.0)
        d = derive("unit_wise", depth=3, n_samples=n, widths=widths, activation="tanh")
        if isotropic:  # tanh: every unit active, so a_n = sum_l M_l + 1 exactly at any width
            np.testing.assert_allclose(K, d.alpha_value() * np.eye(n), atol=1e-8)
        else:
            assert d.alpha is None and "Q_0 singular" in d.alpha_reason
            assert np.abs(K - np.diag(np.diag(K))).max() > 0.1


# ----------------------------------------------------------------------------- numeric hooks
@pytest.mark.parametrize("C", [1, 2])
def test_kernel_limit_matches_direct_numpy(C):
    L, n, n2 = 3, 4, 3
    train, cross = random_kernels(L, n, n2, seed=C)
    th = [kron_out(train.layer_ntk[k], C) for k in range(L)]
    thx = [kron_out(cross.layer_ntk[k], C) for k in range(L)]
    ones = np.ones((C, C))
    expected = {
        "gd": sum(thx) / n,
        "exact": sum(thx) @ np.linalg.inv(sum(th)),
        "block_diagonal": sum(a @ np.linalg.inv(b) for a, b in zip(thx, th)),
        "block_tridiagonal": thx[1] @ np.linalg.inv(th[1]),  # c = T^{-1} 1 = (0, 1, 0)
        "kfac": sum(n * (kron_out(cross.backward[k], C) @ np.linalg.inv(kron_out(train.backward[k], C)))
                    * np.kron(cross.forward[k] @ np.linalg.inv(train.forward[k]), ones)
                    for k in range(L - 1))
        + kron_out(cross.forward[L - 1] @ np.linalg.inv(train.forward[L - 1]), C),
    }
    train_alpha = {"exact": 1, "block_diagonal": 3, "block_tridiagonal": 1, "kfac": n * 2 + 1}
    for method, ref in expected.items():
        d = derive(method, n_outputs=C)
        got = d.kernel_limit(train, cross)
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
        K = d.kernel_limit(train)
        if method in train_alpha:
            np.testing.assert_allclose(K, train_alpha[method] * np.eye(n * C), atol=1e-9)
        else:
            np.testing.assert_allclose(K, sum(th) / n, rtol=1e-12)


@pytest.mark.parametrize("L", [2, 5])
def test_block_tridiagonal_singular_limit_matches_small_damping(L):
    n, n2 = 3, 2
    train, cross = random_kernels(L, n, n2, seed=L)
    got = derive("block_tridiagonal").kernel_limit(train, cross)
    T = np.array([[1.0 if abs(i - j) <= 1 else 0.0 for j in range(L)] for i in range(L)])
    ThD = scipy.linalg.block_diag(*train.layer_ntk)
    ThDx = scipy.linalg.block_diag(*cross.layer_ntk)
    one = np.kron(np.ones((L, 1)), np.eye(n))
    onex = np.kron(np.ones((1, L)), np.eye(n2))
    errors = []
    for rho in (1e-5, 1e-7):  # K(rho) - K(0) = O(rho)
        damped = onex @ ThDx @ np.linalg.solve(np.kron(T, np.eye(n)) @ ThD + n * rho * np.eye(L * n), one)
        errors.append(np.abs(damped - got).max())
    assert errors[1] < 1e-4 and errors[1] < errors[0] / 20
    if L == 2:  # T = 1 1^T: BTD is exact NGD
        np.testing.assert_allclose(got, derive("exact").kernel_limit(train, cross), atol=1e-10)


def test_kfac_kernel_limit_with_few_inputs_uses_leverage_scores():
    n, L = 5, 2
    rng = np.random.default_rng(7)
    X = rng.standard_normal((n, 2))  # M_0 = 2 < N = 5: Q_0 has rank 2
    Q0 = X @ X.T
    train, _ = random_kernels(L, n, 1, seed=7)
    train.forward = train.forward.copy()
    train.forward[0] = Q0
    K = derive("kfac").kernel_limit(train)
    leverage = np.diag(X @ np.linalg.pinv(X.T @ X) @ X.T)
    np.testing.assert_allclose(K, np.diag(n * leverage) + np.eye(n), atol=1e-8)


@pytest.mark.parametrize("method, L", [("gd", 3), ("exact", 3), ("block_diagonal", 3),
                                       ("block_tridiagonal", 3), ("block_tridiagonal", 5), ("kfac", 3)])
def test_predict_test_matches_recurrence(method, L):
    n, n2, C, lr, steps = 4, 3, 2, 0.2, 6
    train, cross = random_kernels(L, n, n2, seed=11)
    e0 = np.random.default_rng(12).standard_normal((n, C))
    d = derive(method)
    pred = d.predict_test(train, cross, e0, lr=lr, steps=steps)
    K = derive(method, n_outputs=C).kernel_limit(train)
    Kx = derive(method, n_outputs=C).kernel_limit(train, cross)
    e, f, ref = e0.reshape(-1), np.zeros(n2 * C), [np.zeros(n2 * C)]
    for _ in range(steps):  # f_{t+1}(X') = f_t(X') - lr K(X', X) e_t, e_{t+1} = (I - lr K) e_t
        f = f - lr * Kx @ e
        e = e - lr * K @ e
        ref.append(f)
    np.testing.assert_allclose(pred, np.array(ref).reshape(steps + 1, n2, C), atol=1e-10)


def test_unit_wise_kernel_limit():
    train, cross = random_kernels(3, 4, 2, seed=1)
    d = derive("unit_wise", widths=[5, 10, 6, 1], depth=3, activation="relu")  # M_0 >= N = 4
    np.testing.assert_allclose(d.kernel_limit(train), 9.0 * np.eye(4))
    with pytest.raises(NotImplementedError, match="per-layer"):
        d.kernel_limit(train, cross)


def test_alpha_value_substitutes_structure():
    assert derive("kfac").alpha_value(depth=3, n_samples=16) == 33.0
    assert derive("block_tridiagonal").alpha_value(depth=5) == 2.0
    with pytest.raises(ValueError, match="depends on"):
        derive("kfac").alpha_value(depth=3)
