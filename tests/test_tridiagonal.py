"""Block tri-diagonal NGD (theory.md section 2): closed forms against exact arithmetic.

The closed forms of :mod:`ngdsym.tridiagonal` come from SymPy recurrences; here they are
compared with routes that do not use them: sympy's own determinant and pseudo-inverse
(``Matrix.pinv``) in exact rationals, the ``rho -> 0`` limit of ``(T + rho I)^{-1} 1`` as a
rational function of ``rho``, ``numpy.linalg.pinv``, and a dense NumPy solve of the damped
block system ``(T (x) I + rho D^{-1})`` for the matrix-valued limit.
"""

import numpy as np
import pytest
import sympy as sp
from sympy.polys.matrices import DomainMatrix

from ngdsym import tridiagonal as btd
from ngdsym.tridiagonal import (
    LAYER,
    LAYERS,
    btd_alpha,
    btd_damped_weights,
    btd_layer_maps,
    btd_weights,
    derivation_latex,
    derivation_steps,
    derivation_text,
    determinant_closed_form,
    determinant_recurrence,
    is_singular,
    moving_layers,
    tridiagonal_ones,
)

DEPTHS = range(1, 41)  # the issue asks for exact verification for L = 1..40
SINGULAR_DEPTHS = [L for L in DEPTHS if L % 3 == 2]
s = sp.Symbol("s", integer=True, nonnegative=True)
rho = sp.Symbol("rho")


@pytest.fixture(scope="module")
def exact_pinv_ones():
    """``T^+ 1`` from sympy's Moore-Penrose pseudo-inverse, L = 1..40 (independent route)."""
    return {L: tridiagonal_ones(L).pinv() * sp.ones(L, 1) for L in DEPTHS}


def _exact_det(L):
    return DomainMatrix.from_Matrix(tridiagonal_ones(L)).det()


def _exact_rank(matrix):
    return DomainMatrix.from_Matrix(matrix).convert_to(sp.QQ).rank()


def _closed_form_values(closed, L):
    """Layer values of a symbolic closed form at a concrete ``L`` (substitute L first: fast)."""
    at_depth = closed.subs(LAYERS, L)
    return [at_depth.subs(LAYER, k) for k in range(1, L + 1)]


def _damped_limit(T: sp.Matrix, metric: sp.Matrix) -> sp.Matrix:
    """``lim_{rho -> 0} (T + rho metric)^{-1} 1`` via exact rational functions of rho."""
    A = DomainMatrix.from_Matrix(T + rho * metric).to_field()
    b = DomainMatrix.from_Matrix(sp.ones(T.rows, 1)).convert_to(A.domain)
    x = A.lu_solve(b).to_Matrix().applyfunc(sp.cancel)
    limit = x.subs(rho, 0)
    assert all(v.is_finite is not False and not v.has(sp.zoo, sp.nan) for v in limit)
    return limit.applyfunc(sp.simplify)


# ----------------------------------------------------------------------- determinant
@pytest.mark.parametrize("size", range(3, 10))
def test_cofactor_recurrence_is_the_same_at_every_size(size):
    assert determinant_recurrence(size, generic=True) == determinant_recurrence(generic=True)
    assert determinant_recurrence(size) == determinant_recurrence()


@pytest.mark.parametrize("size", range(3, 8))
def test_cofactor_recurrence_matches_sympy_determinants(size):
    d, e = sp.symbols("d e")
    rec = determinant_recurrence(generic=True)
    dets = {k: tridiagonal_ones(k, d, e).det() for k in (size - 2, size - 1, size)}
    D, n = sp.Function("D"), sp.Symbol("n", integer=True)
    previous = {D(size - 1): dets[size - 1], D(size - 2): dets[size - 2]}
    predicted = rec.rhs.subs(n, size).subs(previous)
    assert sp.expand(dets[size] - predicted) == 0


def test_determinant_closed_form_against_exact_determinants():
    for L in DEPTHS:
        assert determinant_closed_form(L) == _exact_det(L), L


def test_singular_exactly_at_3s_plus_2():
    for L in DEPTHS:
        assert is_singular(L) == (L % 3 == 2) == (_exact_rank(tridiagonal_ones(L)) < L), L
        # the symbolic condition agrees when L is substituted
        assert bool(is_singular().subs(LAYERS, L)) == (L % 3 == 2)
    # and for a symbolic s: det T_{3s+2} simplifies to 0, det T_{3s}, det T_{3s+1} to +-1
    closed = determinant_closed_form()
    assert sp.simplify(closed.subs(LAYERS, 3 * s + 2)) == 0
    for r in (0, 1):
        assert sp.simplify(closed.subs(LAYERS, 3 * s + r) ** 2 - 1) == 0


@pytest.mark.parametrize("L", SINGULAR_DEPTHS)
def test_ones_in_range_when_singular(L):
    T = tridiagonal_ones(L)
    ones = sp.ones(L, 1)
    assert _exact_rank(T) == L - 1
    assert _exact_rank(sp.Matrix.hstack(T, ones)) == L - 1  # T x = 1 is consistent
    (z,) = T.nullspace()
    assert (z.T * ones)[0] == 0  # 1 is orthogonal to null(T) = range(T)^perp
    # every solution has the same alpha: 1^T (c + t z) = 1^T c
    c = btd_weights(L)
    assert T * c == ones
    assert sum(c + sp.Rational(7, 3) * z) == btd_alpha(L)


# -------------------------------------------------------------------- weights, alpha
def test_weights_against_exact_pseudo_inverse(exact_pinv_ones):
    closed = btd_weights()
    for L in DEPTHS:
        c = btd_weights(L)
        assert c == exact_pinv_ones[L], L
        assert tridiagonal_ones(L) * c == sp.ones(L, 1), L  # 1 in range(T) for every L
        assert all(v.is_Rational for v in c)
        assert _closed_form_values(closed, L) == list(c), L


def test_alpha_against_exact_pseudo_inverse(exact_pinv_ones):
    piecewise = btd_alpha()
    for L in DEPTHS:
        exact = sum(exact_pinv_ones[L])
        assert btd_alpha(L) == exact, L
        assert piecewise.subs(LAYERS, L) == exact, L
        assert sp.ceiling(sp.Rational(L, 3)) == exact, L


@pytest.mark.parametrize("r", [0, 1, 2])
def test_alpha_is_ceiling_symbolically(r):
    L = 3 * s + r
    alpha = btd_alpha().subs(LAYERS, L)
    assert not alpha.has(sp.Piecewise)  # the residue class was resolved for integer s
    assert sp.simplify(alpha - sp.ceiling(L / sp.Integer(3))) == 0
    assert sp.simplify(btd_alpha(form="ceiling").subs(LAYERS, L) - alpha) == 0
    # alpha is not a constant multiple of L: the ceiling is needed
    assert sp.simplify(alpha - L / sp.Integer(3)) == sp.Rational((3 - r) % 3, 3)


def test_symbolic_weights_resolve_for_each_residue():
    w = btd_weights()
    # L = 3s: layers 2, 5, ... (weight 1); 3s + 1: layers 1, 4, ...; 3s + 2: 1/2 on l != 0 mod 3
    patterns = {
        r: [w.subs({LAYERS: 3 * s + r, LAYER: 3 * s + k}) for k in (1, 2, 3)] for r in range(3)
    }
    exact = {r: list(btd_weights(6 + r)[3:6]) for r in range(3)}  # layers 4, 5, 6 of a concrete L
    assert patterns == exact


@pytest.mark.parametrize("L", [1, 2, 3, 4, 5, 8, 11, 14])
def test_weights_are_the_rho_to_zero_limit(L):
    """``lim (T + rho I)^{-1} 1`` as an exact rational function of rho equals ``T^+ 1``."""
    assert _damped_limit(tridiagonal_ones(L), sp.eye(L)) == btd_weights(L)


@pytest.mark.parametrize("L", [2, 3, 4, 5, 7, 8, 20, 29, 40])
def test_weights_against_numpy_pinv(L):
    T = np.array(tridiagonal_ones(L), dtype=np.float64)
    c = np.linalg.pinv(T) @ np.ones(L)
    # pinv of a well-conditioned (cond <= ~L^2) matrix: float64 error ~ 1e-13
    np.testing.assert_allclose(np.array(btd_weights(L), dtype=np.float64).ravel(), c, atol=1e-10)
    assert abs(c.sum() - int(btd_alpha(L))) < 1e-10


def test_moving_layers():
    assert moving_layers(3) == (2,)  # theory.md: L = 3, only the middle layer moves
    assert moving_layers(1) == (1,)
    symbolic = moving_layers()
    for L in DEPTHS:
        moving = moving_layers(L)
        flags = _closed_form_values(symbolic, L)
        assert moving == tuple(k for k, flag in zip(range(1, L + 1), flags) if flag)
        if L % 3 == 2:  # pinv / damped choice: exactly the layers l != 0 mod 3
            assert moving == tuple(k for k in range(1, L + 1) if k % 3 != 0)


# ------------------------------------------------------- the damped limit, L = 3s + 2
@pytest.mark.parametrize("L", [2, 5])
def test_damped_weights_symbolic_limit(L):
    thetas = sp.symbols(f"theta_1:{L + 1}", positive=True)
    metric = [1 / t for t in thetas]
    expected = _damped_limit(tridiagonal_ones(L), sp.diag(*metric))
    got = btd_damped_weights(L, metric)
    assert all(sp.simplify(g - e) == 0 for g, e in zip(got, expected))
    assert sp.simplify(sum(got) - btd_alpha(L)) == 0  # alpha does not depend on the kernels
    assert all(v == 0 for v in list(got)[2::3])  # layers l = 0 mod 3 never move


@pytest.mark.parametrize("L", [3, 4, 8, 11])
def test_damped_weights_rational_metric(L):
    metric = [sp.Rational(k % 4 + 1, k % 3 + 2) for k in range(L)]
    assert btd_damped_weights(L, metric) == _damped_limit(tridiagonal_ones(L), sp.diag(*metric))
    if L % 3 != 2:
        assert btd_damped_weights(L, metric) == btd_weights(L)  # T invertible: metric irrelevant
    else:
        assert btd_damped_weights(L, metric) != btd_weights(L)  # choice depends on the kernels
        assert btd_damped_weights(L, [1] * L) == btd_weights(L)  # E = I: pseudo-inverse


def _random_spd_kernels(L, n, seed):
    rng = np.random.default_rng(seed)
    kernels = []
    for _ in range(L):
        A = rng.standard_normal((n, 2 * n))
        kernels.append(A @ A.T / (2 * n) + 0.1 * np.eye(n))
    return np.stack(kernels)


def _dense_damped(kernels, eps):
    """``(T (x) I + eps D^{-1})^{-1} (1 (x) I)`` densely, blocks (L, n, n)."""
    L, n, _ = kernels.shape
    T = np.array(tridiagonal_ones(L), dtype=np.float64)
    D_inv = np.zeros((L * n, L * n))
    for l, k in enumerate(kernels):
        D_inv[l * n:(l + 1) * n, l * n:(l + 1) * n] = np.linalg.inv(k)
    x = np.linalg.solve(np.kron(T, np.eye(n)) + eps * D_inv, np.kron(np.ones((L, 1)), np.eye(n)))
    return x.reshape(L, n, n)


def _min_metric_norm(kernels):
    """``argmin sum_l x_l^T Theta_l^{-1} x_l`` s.t. ``(T (x) I) x = 1 (x) I`` (dense KKT)."""
    L, n, _ = kernels.shape
    G = np.kron(np.array(tridiagonal_ones(L), dtype=np.float64), np.eye(n))
    E = np.zeros((L * n, L * n))
    for l, k in enumerate(kernels):
        E[l * n:(l + 1) * n, l * n:(l + 1) * n] = np.linalg.inv(k)
    kkt = np.block([[E, G.T], [G, np.zeros_like(G)]])
    rhs = np.vstack([np.zeros((L * n, n)), np.kron(np.ones((L, 1)), np.eye(n))])
    sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]  # G singular: KKT matrix is singular in lambda
    return sol[: L * n].reshape(L, n, n)


def _range_basis_formula(kernels):
    """``Theta_D R (R^T Theta_D R)^{-1} R^T (c (x) I)``, ``R = U (x) I``, ``U`` spans range(T).

    ``Theta_D^{-1} x = (G Theta_D + eps)^{-1} G (c (x) I) -> R (R^T Theta_D R)^{-1} R^T (c (x) I)``
    for ``G = T (x) I`` symmetric and ``Theta_D`` positive definite (the form ngdsym.derive uses).
    """
    L, n, _ = kernels.shape
    T = tridiagonal_ones(L)
    U = np.array(sp.Matrix.hstack(*T.columnspace()), dtype=np.float64)
    R = np.kron(U, np.eye(n))
    theta_D = np.zeros((L * n, L * n))
    for l, k in enumerate(kernels):
        theta_D[l * n:(l + 1) * n, l * n:(l + 1) * n] = k
    c = np.array(btd_weights(L), dtype=np.float64)
    x = theta_D @ R @ np.linalg.solve(R.T @ theta_D @ R, R.T @ np.kron(c, np.eye(n)))
    return x.reshape(L, n, n)


@pytest.mark.parametrize("L", [3, 4, 5, 8])
def test_layer_maps_against_dense_damped_solve(L):
    n = 4
    kernels = _random_spd_kernels(L, n, seed=L)
    maps = btd_layer_maps(kernels)
    alpha = float(btd_alpha(L))
    # training-set kernel limit is alpha I for any kernels (float64 identity)
    np.testing.assert_allclose(maps.sum(0), alpha * np.eye(n), atol=1e-10)
    np.testing.assert_allclose(maps, _min_metric_norm(kernels), atol=1e-8)
    np.testing.assert_allclose(maps, _range_basis_formula(kernels), atol=1e-10)
    # the damped solve converges to the maps linearly in eps
    errors = [np.abs(_dense_damped(kernels, eps) - maps).max() for eps in (1e-3, 1e-5)]
    assert errors[1] < 1e-3
    assert errors[1] < 0.05 * errors[0]  # O(eps): a factor 100 in eps gives ~100 in error
    if L % 3 == 2:
        assert np.all(maps[2::3] == 0)  # layers l = 0 mod 3 never move
        for W in np.concatenate([maps[0::3], maps[1::3]]):
            assert np.linalg.cond(W) < 1e6  # P and I - P are invertible: those layers move
        # the split differs from the pseudo-inverse's I/2 when the kernels differ
        assert np.abs(maps[0] - 0.5 * np.eye(n)).max() > 1e-3
        # and equals it when all kernels are equal
        equal = btd_layer_maps(np.stack([kernels[0]] * L))
        pinv_weights = np.array(btd_weights(L), dtype=float)[:, :, None] * np.eye(n)
        np.testing.assert_allclose(equal, pinv_weights, atol=1e-10)
    else:
        c = np.array(btd_weights(L), dtype=np.float64)
        np.testing.assert_allclose(maps, c[:, :, None] * np.eye(n), atol=1e-12)


@pytest.mark.parametrize("L", [2, 5, 8])
def test_layer_maps_scalar_kernels_match_exact(L):
    thetas = [sp.Rational(k + 2, 3) for k in range(L)]
    maps = btd_layer_maps(np.array(thetas, dtype=np.float64)[:, None, None])
    exact = btd_damped_weights(L, [1 / t for t in thetas])
    np.testing.assert_allclose(maps[:, 0, 0], np.array(exact, dtype=np.float64).ravel(), atol=1e-12)


# ----------------------------------------------------------------- steps and inputs
def test_derivation_steps_render():
    steps = derivation_steps()
    assert all(isinstance(text, str) for text, _ in steps)
    assert all(isinstance(expr, (sp.Basic, sp.MatrixBase)) for _, expr in steps)
    exprs = [expr for _, expr in steps]
    assert determinant_recurrence() in exprs
    assert sp.Eq(sp.Symbol("alpha"), btd_alpha(form="ceiling")) in exprs
    assert not any(expr is sp.false for expr in exprs)  # no step collapsed to False
    latex = derivation_latex()
    lines = latex.splitlines()[1:-1]
    assert len(lines) == len(steps) and all(line.startswith(r"&\text{") for line in lines)
    for line in lines:
        text = line.split(r"\text{", 1)[1].split("} &&", 1)[0]
        assert "_" not in text.replace(r"\_", "")  # escaped for LaTeX text mode
    assert "ceiling(L/3)" in derivation_text()


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "3", None])
def test_bad_depth_raises(bad):
    with pytest.raises(ValueError, match="L="):
        btd_weights(bad)
    with pytest.raises(ValueError, match="L="):
        btd_alpha(bad)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="form"):
        btd_alpha(form="floor")
    with pytest.raises(ValueError, match="concrete integer"):
        tridiagonal_ones(LAYERS)
    with pytest.raises(ValueError, match="metric"):
        btd_damped_weights(3, [1, 1])
    with pytest.raises(ValueError, match="positive"):
        btd_damped_weights(2, [1, -1])
    with pytest.raises(ValueError, match="layer_kernels"):
        btd_layer_maps(np.ones((3, 2, 4)))
    with pytest.raises(ValueError, match="positive definite"):
        btd_layer_maps(np.stack([np.eye(2), -np.eye(2)]))
    with pytest.raises(ValueError, match="positive definite"):  # also when T is invertible
        btd_layer_maps(np.stack([np.eye(2), -np.eye(2), np.eye(2)]))
    with pytest.raises(ValueError, match="symmetric"):
        btd_layer_maps(np.stack([np.eye(2), np.triu(np.ones((2, 2)))]))


def test_integer_like_sympy_depth():
    assert btd_alpha(sp.Integer(7)) == btd_alpha(7) == 3
    assert btd.is_singular(sp.Integer(8)) is True
