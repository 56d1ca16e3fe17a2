"""Block tri-diagonal (BTD) NGD: the tri-diagonal matrix of ones, ``c = T^+ 1`` and ``alpha(L)``.

Implements theory.md section 2 (BTD row of the table and the BTD note) and the BTD weights
of the test predictor in section 3.  Everything below is *derived* by SymPy from the
definition of ``T``; nothing is typed in.

Why ``T`` appears
-----------------
BTD keeps the Fisher blocks ``F_ll' = J_l^T J_l' / N`` with ``|l - l'| <= 1``.  With
``Jbar = blockdiag(J_1, ..., J_L)`` this is exactly ``F_hat = Jbar^T (T (x) I) Jbar / N`` where
``T`` is the ``L x L`` tri-diagonal matrix of ones, and ``J = (1^T (x) I) Jbar``.  The
push-through identity (theory.md section 1) turns the preconditioned kernel into an
``L N C`` system with ``D = Jbar Jbar^T = blockdiag(Theta_l)``::

    K = (1^T (x) I) (T (x) I + N rho D^{-1})^{-1} (1 (x) I).

Results (derivation: :func:`derivation_steps`)
---------------------------------------------
* ``det T_L = det T_{L-1} - det T_{L-2}`` (cofactor expansion), solved by ``rsolve``:
  ``det T_L = (2/sqrt(3)) sin(pi (L + 1)/3)``, period 6, values ``1, 0, -1, -1, 0, 1, ...``;
  ``T`` is singular iff ``L = 3s + 2``.
* ``T c = 1`` is the recurrence ``c_{l-1} + c_l + c_{l+1} = 1`` with ``c_0 = c_{L+1} = 0``.
  Its solutions are 3-periodic, ``(c_1, c_2, c_3) = (a, 1 - a, 0)``, and the right boundary
  fixes ``a``: ``L = 3s``: ``a = 0`` (layers ``2, 5, ..., L - 1`` move, weight 1);
  ``L = 3s + 1``: ``a = 1`` (layers ``1, 4, ..., L`` move, weight 1); ``L = 3s + 2``: ``a`` is
  free (``T`` singular, ``1`` in ``range(T)``) and the pseudo-inverse -- equivalently
  ``lim_{rho->0} (T + rho I)^{-1} 1`` -- picks ``a = 1/2``.
* ``alpha(L) = 1^T T^+ 1 = ceil(L/3)`` for every ``L``.

The singular case ``L = 3s + 2`` (what depends on the choice of solution)
-----------------------------------------------------------------------
Every solution of ``T x = 1`` is ``c + t z`` with the null vector ``z = (1, -1, 0, 1, -1, 0, ...)``.

* Choice-independent: ``alpha = 1^T x = s + 1`` (``1^T z = 0`` because ``T`` is symmetric and
  ``1`` lies in its range), hence ``K -> alpha I`` on the training set and the training dynamics;
  layers ``l = 0 (mod 3)`` never move (``c_l = z_l = 0`` there); for each pair
  ``(3k + 1, 3k + 2)`` the two function-space contributions add up to the residual.
* Choice-dependent: how each pair splits the update, hence the parameter update and the test
  predictions.  Damped NGD solves ``(T (x) I + rho E) x = 1 (x) v`` with the block-diagonal,
  positive definite metric ``E = N D^{-1}`` (every ``Theta_l`` invertible); as ``rho -> 0`` the
  solution tends to the one with ``(z^T (x) I) E x = 0`` (first-order solvability, ``T``
  symmetric), i.e. the solution of least ``sum_l x_l^T Theta_l^{-1} x_l``.  With
  ``S_k = sum_{l = k (mod 3)} Theta_l^{-1}`` (training-set kernels) every layer ``3k + 1``
  contributes ``P v`` and every layer ``3k + 2`` contributes ``(I - P) v``, with
  ``P = (S_1 + S_2)^{-1} S_2``.  This is the pseudo-inverse split ``P = I / 2`` only when
  ``S_1 = S_2`` (e.g. all ``Theta_l`` equal); in general ``P`` is a matrix, so the BTD test
  predictor of theory.md section 3 (weights ``c_l / alpha``) holds for ``L = 3s + 2`` only in
  that case; in general it reads ``sum_l Theta_l(x', X) Theta_l^{-1} W_l e_0 / alpha`` with the
  maps ``W_l`` of :func:`btd_layer_maps`.  ``P`` and ``I - P = (S_1 + S_2)^{-1} S_1`` are
  invertible, so in the damped limit exactly the layers ``l != 0 (mod 3)`` move.  For a
  non-singular ``T`` the limit is ``c_l I`` for every choice of ``Theta_l`` (at any width).

Public API
----------
``tridiagonal_ones``, ``determinant_recurrence``, ``determinant_closed_form``, ``is_singular``,
``btd_weights``, ``btd_alpha``, ``moving_layers``, ``btd_damped_weights`` (scalar per-layer
kernels, exact), ``btd_layer_maps`` (NumPy, matrix-valued per-layer kernels: the rho -> 0
layer maps for the kernel limit and the test predictor), ``derivation_steps``,
``derivation_latex``, ``derivation_text``.

>>> btd_alpha(3), list(btd_weights(3))
(1, [0, 1, 0])
>>> moving_layers(3)
(2,)
>>> list(btd_weights(5)), btd_alpha(5)
([1/2, 1/2, 0, 1/2, 1/2], 2)
>>> btd_alpha(LAYERS, form="ceiling")
ceiling(L/3)
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.polys.matrices import DomainMatrix

from ._algebra import latex_text

__all__ = [
    "LAYERS",
    "LAYER",
    "tridiagonal_ones",
    "determinant_recurrence",
    "determinant_closed_form",
    "is_singular",
    "btd_weights",
    "btd_alpha",
    "moving_layers",
    "btd_damped_weights",
    "btd_layer_maps",
    "derivation_steps",
    "derivation_latex",
    "derivation_text",
]

#: Default symbol for the number of layers ``L``.
LAYERS = sp.Symbol("L", integer=True, positive=True)
#: Default symbol for a layer index ``l`` (1-based, ``1 <= l <= L``).
LAYER = sp.Symbol("l", integer=True, positive=True)

# Internal symbols of the derivation.
_n = sp.Symbol("n", integer=True)  # recurrence index
_s = sp.Symbol("s", integer=True, nonnegative=True)  # L = 3 s + r
_a = sp.Symbol("a", real=True)  # free parameter c_1 of the general solution
_d, _e = sp.symbols("d e")  # diagonal / off-diagonal of a tri-diagonal Toeplitz matrix
_det = sp.Function("D")  # D(n) = det T_n
_c = sp.Function("c")  # c(l) = (T^+ 1)_l
_z = sp.Function("z")  # null vector of T (when singular)
_metric_sums = sp.symbols("S_1 S_2 S_3", positive=True)  # sum of e_l over l = k (mod 3)


# ----------------------------------------------------------------------------- helpers
def _as_layers(L, argument: str = "L"):
    """Return ``int`` for a concrete layer count, the SymPy expression for a symbolic one."""
    if isinstance(L, bool):
        raise ValueError(f"{argument}={L!r} must be a positive integer or a SymPy symbol")
    if isinstance(L, sp.Basic) and not L.is_number:
        return L
    if isinstance(L, numbers.Integral) or (isinstance(L, sp.Basic) and L.is_Integer):
        if int(L) < 1:
            raise ValueError(f"{argument}={L!r}: the number of layers must be >= 1")
        return int(L)
    raise ValueError(
        f"{argument}={L!r} must be a positive integer (number of layers) or a SymPy symbol"
    )


def _to_trig(expr: sp.Expr, var: sp.Symbol) -> sp.Expr:
    """Rewrite ``b**var`` (complex ``b``) as ``|b|**var exp(i arg(b) var)``; simplify to real form."""

    def polar(power):
        base = power.base
        return sp.Abs(base) ** power.exp * sp.exp(sp.I * sp.arg(base) * power.exp)

    expr = expr.replace(
        lambda x: x.is_Pow and x.exp.has(var) and not x.base.has(var), polar
    )
    return sp.simplify(sp.expand_complex(expr))


def _period(expr: sp.Expr, var: sp.Symbol, max_period: int = 12) -> int:
    """Smallest ``p`` with ``expr(var + p) == expr(var)`` (SymPy ``simplify``)."""
    for p in range(1, max_period + 1):
        if sp.simplify(expr.subs(var, var + p) - expr) == 0:
            return p
    raise ArithmeticError(f"{expr} has no period <= {max_period}")  # pragma: no cover


def _residue_modulus(residues: set[int], period: int) -> tuple[int, tuple[int, ...]]:
    """Coarsest ``q | period`` such that ``residues`` (mod period) is a union of classes mod q."""
    for q in range(1, period + 1):
        if period % q == 0 and all(((k + q) % period in residues) for k in residues):
            return q, tuple(sorted({k % q for k in residues}))
    return period, tuple(sorted(residues))  # pragma: no cover


def tridiagonal_ones(L, diagonal=1, off_diagonal=1) -> sp.Matrix:
    """The ``L x L`` tri-diagonal matrix ``T`` (ones on the three central diagonals).

    theory.md section 2 (BTD): ``F_hat = Jbar^T (T (x) I) Jbar / N``.

    Parameters
    ----------
    L : int
        Number of layers, ``L >= 1``.
    diagonal, off_diagonal : SymPy expression, optional
        Entries of the Toeplitz generalisation (used for the cofactor derivation).

    Returns
    -------
    sympy.Matrix

    >>> tridiagonal_ones(3)
    Matrix([
    [1, 1, 0],
    [1, 1, 1],
    [0, 1, 1]])
    """
    L = _as_layers(L)
    if not isinstance(L, int):
        raise ValueError(f"L={L!r}: tridiagonal_ones needs a concrete integer L")
    return sp.Matrix(
        L,
        L,
        lambda i, j: diagonal if i == j else (off_diagonal if abs(i - j) == 1 else 0),
    )


# --------------------------------------------------------------- the determinant of T
def _cofactor_coefficients(size: int) -> tuple[sp.Expr, sp.Expr]:
    """``(p, q)`` with ``det A_n = p det A_{n-1} + q det A_{n-2}``, by cofactor expansion.

    ``A_n`` is the tri-diagonal Toeplitz matrix (diagonal ``d``, off-diagonal ``e``) of size
    ``n = size``.  Expansion along the last row: the entry ``A[n-1, n-1] = d`` has minor
    ``A_{n-1}``; the entry ``A[n-1, n-2] = e`` has a minor whose last column is ``e`` times the
    last unit vector, so expanding that column leaves ``A_{n-2}``.  Both minors are *checked*
    to be these matrices (the structure is the same for every ``n >= 3``).
    """
    if size < 3:
        raise ValueError(f"size={size}: the cofactor recurrence needs size >= 3")
    A = tridiagonal_ones(size, _d, _e)
    last = size - 1
    p = q = sp.S.Zero
    for j in range(size):
        entry = A[last, j]
        if entry == 0:
            continue
        sign = (-1) ** (last + j)
        minor = A.minor_submatrix(last, j)
        if minor == tridiagonal_ones(size - 1, _d, _e):
            p += sign * entry
            continue
        # Otherwise the last column of the minor must be (0, ..., 0, x): expand along it.
        column = minor[:, -1]
        if any(v != 0 for v in column[:-1]):
            raise ArithmeticError("unexpected minor structure")  # pragma: no cover
        inner = minor.minor_submatrix(size - 2, size - 2)
        if inner != tridiagonal_ones(size - 2, _d, _e):
            raise ArithmeticError("unexpected minor structure")  # pragma: no cover
        q += sign * entry * column[-1]
    return sp.expand(p), sp.expand(q)


def determinant_recurrence(size: int = 6, *, generic: bool = False) -> sp.Eq:
    """The recurrence of ``D(n) = det T_n``, derived by cofactor expansion along the last row.

    theory.md section 2 (BTD note): ``det T_L = det T_{L-1} - det T_{L-2}``.

    Parameters
    ----------
    size : int, default 6
        Matrix size at which the cofactor expansion is carried out (the structure, and hence
        the result, is the same for every ``size >= 3``; the tests check several sizes).
    generic : bool, default False
        Return the recurrence of the Toeplitz generalisation (diagonal ``d``, off-diagonal ``e``).

    >>> determinant_recurrence()
    Eq(D(n), -D(n - 2) + D(n - 1))
    >>> determinant_recurrence(generic=True)
    Eq(D(n), d*D(n - 1) - e**2*D(n - 2))
    """
    p, q = _cofactor_coefficients(size)
    if not generic:
        p, q = p.subs({_d: 1, _e: 1}), q.subs({_d: 1, _e: 1})
    return sp.Eq(_det(_n), p * _det(_n - 1) + q * _det(_n - 2))


def determinant_closed_form(L=LAYERS):
    """``det T_L`` in closed form, from ``rsolve`` on :func:`determinant_recurrence`.

    Initial values ``det T_1``, ``det T_2`` are computed from :func:`tridiagonal_ones`.

    >>> determinant_closed_form()
    2*sqrt(3)*sin(pi*(L/3 + 1/3))/3
    >>> [determinant_closed_form(k) for k in range(1, 7)]
    [1, 0, -1, -1, 0, 1]
    """
    L = _as_layers(L)
    closed = _derivation().det_closed
    value = closed.subs(_n, L)
    return sp.nsimplify(sp.simplify(value)) if isinstance(L, int) else value


def is_singular(L=LAYERS):
    """Whether ``T_L`` is singular.

    For an integer ``L`` this is the exact determinant (``det T == 0`` over the rationals); for
    a symbolic ``L`` the derived condition ``Mod(L, 3) = 2`` (zeros of :func:`determinant_closed_form` over
    its period).

    >>> [k for k in range(1, 12) if is_singular(k)]
    [2, 5, 8, 11]
    >>> is_singular()
    Eq(Mod(L, 3), 2)
    """
    L = _as_layers(L)
    if isinstance(L, int):
        return _exact(tridiagonal_ones(L)).det() == 0
    modulus, residues = _derivation().singular_classes
    return sp.Or(*[sp.Eq(sp.Mod(L, modulus), r) for r in residues])


# ----------------------------------------------------------------------- the derivation
@dataclass(frozen=True)
class _Case:
    """``L = 3 s + r``: the solution of ``T c = 1`` and ``alpha``."""

    residue: int
    boundary: sp.Expr  # c(L + 1) as a function of a (must vanish)
    a_value: sp.Expr  # a picked (the pseudo-inverse / rho -> 0 choice for r = 2)
    free: bool  # a undetermined by T c = 1 (T singular)
    pattern: tuple  # (c(1), c(2), c(3)) with a substituted
    counts: tuple  # number of layers l = 1, 2, 3 (mod 3) in 1..L, in s
    alpha_s: sp.Expr  # alpha as a function of s
    alpha_general_s: sp.Expr  # 1^T c for the general (a-dependent) solution
    norm2_s: sp.Expr | None  # ||c||^2 (a-dependent) if free
    damped_a: sp.Expr | None  # a from z^T E c = 0 with metric sums S_k, if free
    z_dot_ones: sp.Expr | None  # 1^T z over 1..L, if free


@dataclass(frozen=True)
class _Derivation:
    recurrence_generic: sp.Eq
    recurrence: sp.Eq
    det_initial: tuple
    det_solution: sp.Expr  # rsolve output
    det_closed: sp.Expr  # real form
    det_period: int
    det_values: tuple  # over one period, n = 0 .. period - 1
    singular_classes: tuple  # (modulus, residues)
    c_general: sp.Expr  # c(l) with c(0) = 0, c(1) = a
    c_period: int
    z_general: sp.Expr  # null-space recurrence solution, z(0) = 0, z(1) = 1
    cases: tuple  # _Case for r = 0, 1, 2


@functools.cache
def _derivation() -> _Derivation:
    """Carry out the whole BTD derivation once (about a second) and cache it."""
    # 1. det T_n: cofactor recurrence, rsolve, period, zeros.
    recurrence_generic = determinant_recurrence(generic=True)
    recurrence = determinant_recurrence()
    initial = {_det(k): tridiagonal_ones(k).det() for k in (1, 2)}
    det_solution = sp.rsolve(recurrence.lhs - recurrence.rhs, _det(_n), initial)
    det_closed = _to_trig(det_solution, _n)
    det_period = _period(det_closed, _n)
    det_values = tuple(sp.nsimplify(sp.simplify(det_closed.subs(_n, k))) for k in range(det_period))
    zeros = {k for k, v in enumerate(det_values) if v == 0}
    singular_classes = _residue_modulus(zeros, det_period)

    # 2. T c = 1 as the recurrence c(l-1) + c(l) + c(l+1) = 1 with c(0) = 0 (first row) and
    #    c(L+1) = 0 (last row); c(1) = a is the free parameter fixed by the right boundary.
    row = _c(_n - 1) + _c(_n) + _c(_n + 1)
    rows_of_T = tridiagonal_ones(4) * sp.Matrix([_c(k) for k in range(1, 5)])
    assert rows_of_T[1] == row.subs(_n, 2)  # an interior row of T c is the stencil
    c_general = _to_trig(sp.rsolve(row.subs(_n, _n + 1) - 1, _c(_n), {_c(0): 0, _c(1): _a}), _n)
    c_period = _period(c_general, _n)
    z_general = _to_trig(sp.rsolve(row.subs(_n, _n + 1), _c(_n), {_c(0): 0, _c(1): 1}), _n)

    one_period = [sp.simplify(c_general.subs(_n, k)) for k in range(1, c_period + 1)]
    z_period = [sp.simplify(z_general.subs(_n, k)) for k in range(1, c_period + 1)]
    if c_period != 3:  # the case split below is by L mod 3
        raise ArithmeticError(f"unexpected period {c_period}")  # pragma: no cover

    cases = []
    for r in range(3):
        L_case = 3 * _s + r
        boundary = sp.simplify(c_general.subs(_n, L_case + 1))
        # layers l = k (mod 3), k = 1, 2, 3, among 1..3s+r
        counts = tuple(_s + (1 if k <= r else 0) for k in (1, 2, 3))
        alpha_general = sp.expand(sum(n_k * c_k for n_k, c_k in zip(counts, one_period)))
        norm2 = damped_a = z_dot_ones = None
        if boundary == 0:  # T singular: a is free; 1 in range(T) since a solution exists
            free = True
            norm2 = sp.expand(sum(n_k * c_k**2 for n_k, c_k in zip(counts, one_period)))
            (min_norm_a,) = sp.solve(sp.diff(norm2, _a), _a)
            # Damped limit (T + eps E)^{-1} 1, E = diag(e_l) > 0: x = x0 + eps x1 + ...,
            # T x1 = -E x0 is solvable iff z^T E x0 = 0 (T symmetric).  With S_k = sum of
            # e_l over l = k (mod 3):
            solvability = sum(S * zk * ck for S, zk, ck in zip(_metric_sums, z_period, one_period))
            (damped_a,) = sp.solve(solvability, _a)
            # rho -> 0 of (T + rho I)^{-1} 1 is E = I, S_k = counts_k:
            identity_a = sp.simplify(damped_a.subs(dict(zip(_metric_sums, counts))))
            if sp.simplify(identity_a - min_norm_a) != 0:
                raise ArithmeticError("min-norm and rho -> 0 choices differ")  # pragma: no cover
            a_value = identity_a
            z_dot_ones = sp.simplify(sum(n_k * zk for n_k, zk in zip(counts, z_period)))
        else:
            free = False
            (a_value,) = sp.solve(boundary, _a)
        pattern = tuple(sp.simplify(ck.subs(_a, a_value)) for ck in one_period)
        alpha_s = sp.simplify(alpha_general.subs(_a, a_value))
        cases.append(
            _Case(r, boundary, a_value, free, pattern, counts, alpha_s, alpha_general,
                  norm2, damped_a, z_dot_ones)
        )
    return _Derivation(
        recurrence_generic, recurrence, tuple(sp.Eq(k, v) for k, v in initial.items()),
        det_solution, det_closed, det_period, det_values, singular_classes,
        c_general, c_period, z_general, tuple(cases),
    )


# ------------------------------------------------------------------ weights and alpha
def _exact(matrix: sp.Matrix) -> DomainMatrix:
    """``matrix`` over the rationals (fast exact determinant, RREF and null space)."""
    return DomainMatrix.from_Matrix(matrix).convert_to(sp.QQ)


@functools.lru_cache(maxsize=64)
def _solutions_of_T_x_ones(L: int) -> tuple[sp.ImmutableMatrix, tuple[sp.ImmutableMatrix, ...]]:
    """A particular solution of ``T x = 1`` (free variables 0) and a basis of ``null(T)``."""
    T = _exact(tridiagonal_ones(L))
    ones = _exact(sp.ones(L, 1))
    reduced, pivots = T.hstack(ones).rref()
    if L in pivots:  # pragma: no cover - 1 is in range(T) for every L (tests check it)
        raise ArithmeticError(f"T x = 1 has no solution for L = {L}")
    reduced = reduced.to_Matrix()
    particular = sp.zeros(L, 1)
    for row, column in enumerate(pivots):
        particular[column] = reduced[row, L]
    null = T.nullspace().to_Matrix() if len(pivots) < L else sp.zeros(0, L)
    basis = tuple(sp.ImmutableMatrix(null.row(k).T) for k in range(null.rows))
    return sp.ImmutableMatrix(particular), basis


def _metric_limit(L: int, metric: sp.Matrix) -> sp.Matrix:
    """The solution of ``T x = 1`` with ``Z^T metric x = 0`` (``Z`` spans ``null(T)``).

    This is ``lim_{eps->0} (T + eps metric)^{-1} 1`` for a positive definite ``metric``, and the
    metric-norm-minimising solution; ``metric = I`` gives the pseudo-inverse ``T^+ 1``.
    """
    particular, null = _solutions_of_T_x_ones(L)
    x = sp.Matrix(particular)
    if null:
        Z = sp.Matrix.hstack(*null)
        x = x - Z * (Z.T * metric * Z).LUsolve(Z.T * metric * x)
    return x


def btd_weights(L=LAYERS, layer=LAYER):
    """Layer weights ``c = T^+ 1`` (BTD; theory.md sections 2 and 3).

    Layer ``l`` receives the update ``c_l Theta_l^{-1} e`` and contributes ``c_l I`` to ``K``.

    Parameters
    ----------
    L : int or SymPy symbol
        Number of layers.
    layer : SymPy symbol, default ``LAYER``
        Layer index used in the symbolic closed form (ignored for an integer ``L``).

    Returns
    -------
    sympy.Matrix or sympy.Piecewise
        Integer ``L``: the ``L x 1`` column ``T^+ 1`` of exact rationals, computed by exact
        linear algebra (``T^{-1} 1``; for singular ``T`` the minimum-norm solution, which is
        ``T^+ 1`` and ``lim_{rho->0} (T + rho I)^{-1} 1``).  Symbolic ``L``: the closed form
        derived from the 3-periodic solution of the recurrence, a ``Piecewise`` in
        ``Mod(L, 3)`` and ``Mod(l, 3)``.

    >>> list(btd_weights(4))
    [1, 0, 0, 1]
    >>> w = btd_weights()
    >>> [w.subs({LAYERS: 8, LAYER: k}) for k in range(1, 9)]
    [1/2, 1/2, 0, 1/2, 1/2, 0, 1/2, 1/2]
    """
    L = _as_layers(L)
    if isinstance(L, int):
        return _metric_limit(L, sp.eye(L))
    pieces = []
    for case in _derivation().cases:
        inner = sp.Piecewise(
            (case.pattern[0], sp.Eq(sp.Mod(layer, 3), 1)),
            (case.pattern[1], sp.Eq(sp.Mod(layer, 3), 2)),
            (case.pattern[2], True),
        )
        pieces.append((inner, sp.Eq(sp.Mod(L, 3), case.residue)))
    pieces[-1] = (pieces[-1][0], True)
    return sp.Piecewise(*pieces)


def btd_alpha(L=LAYERS, form: str = "piecewise"):
    """Isotropy constant ``alpha(L) = 1^T T^+ 1`` of BTD (theory.md section 2).

    Parameters
    ----------
    L : int or SymPy symbol
    form : {"piecewise", "ceiling"}
        For symbolic ``L``: ``"piecewise"`` returns the derived closed form by ``Mod(L, 3)``;
        ``"ceiling"`` returns ``ceiling(L/3)`` after SymPy has shown, for each residue class
        ``L = 3s + r`` with integer ``s >= 0``, that ``simplify(alpha_r - ceiling(L/3)) == 0``.

    Returns
    -------
    sympy.Integer (integer ``L``, sum of :func:`btd_weights`) or SymPy expression.

    >>> btd_alpha(3), btd_alpha(4), btd_alpha(5)
    (1, 2, 2)
    >>> btd_alpha()
    Piecewise((L/3, Eq(Mod(L, 3), 0)), (L/3 + 2/3, Eq(Mod(L, 3), 1)), (L/3 + 1/3, True))
    """
    L = _as_layers(L)
    if form not in ("piecewise", "ceiling"):
        raise ValueError(f"form={form!r}: use 'piecewise' or 'ceiling'")
    if isinstance(L, int):
        return sum(btd_weights(L), sp.S.Zero)
    if form == "ceiling":
        if not _alpha_is_ceiling():
            raise ArithmeticError("alpha(L) != ceiling(L/3)")  # pragma: no cover
        return sp.ceiling(L / 3)
    pieces = [
        (
            sp.expand(case.alpha_s.subs(_s, (L - case.residue) / 3)),
            sp.Eq(sp.Mod(L, 3), case.residue),
        )
        for case in _derivation().cases
    ]
    pieces[-1] = (pieces[-1][0], True)
    return sp.Piecewise(*pieces)


@functools.cache
def _alpha_is_ceiling() -> bool:
    """``simplify(alpha_r(s) - ceiling((3s + r)/3)) == 0`` for r = 0, 1, 2 (s integer >= 0)."""
    return all(
        sp.simplify(case.alpha_s - sp.ceiling((3 * _s + case.residue) / sp.Integer(3))) == 0
        for case in _derivation().cases
    )


def moving_layers(L=LAYERS, layer=LAYER):
    """Layers that receive an update (``c_l != 0`` for ``c = T^+ 1``), 1-based.

    For ``L = 3s + 2`` the set depends on which solution of ``T x = 1`` is used; the
    pseudo-inverse and the damped NGD limit with any positive definite per-layer kernels both
    move exactly the layers ``l != 0 (mod 3)`` (module docstring).  Layers ``l = 0 (mod 3)``
    never move for ``L = 3s + 2``.

    Returns
    -------
    tuple of int (integer ``L``) or a SymPy condition on ``layer`` (symbolic ``L``).

    >>> moving_layers(3), moving_layers(4), moving_layers(5)
    ((2,), (1, 4), (1, 2, 4, 5))
    >>> moving_layers()
    Piecewise((Eq(Mod(l, 3), 2), Eq(Mod(L, 3), 0)), (Eq(Mod(l, 3), 1), Eq(Mod(L, 3), 1)),
              (Eq(Mod(l, 3), 1) | Eq(Mod(l, 3), 2), True))
    """
    L = _as_layers(L)
    if isinstance(L, int):
        return tuple(k + 1 for k, c in enumerate(btd_weights(L)) if c != 0)
    pieces = []
    for case in _derivation().cases:
        classes = [k % 3 for k, c in zip((1, 2, 3), case.pattern) if c != 0]
        condition = sp.Or(*[sp.Eq(sp.Mod(layer, 3), k) for k in classes])
        pieces.append((sp.simplify(condition), sp.Eq(sp.Mod(L, 3), case.residue)))
    pieces[-1] = (pieces[-1][0], True)
    return sp.Piecewise(*pieces)


# --------------------------------------------------------- the damped (rho -> 0) limit
def btd_damped_weights(L: int, metric) -> sp.Matrix:
    """``lim_{eps -> 0} (T + eps diag(metric))^{-1} 1`` exactly, for scalar per-layer metrics.

    With one sample and one output (or commuting kernels) the BTD system is
    ``(T + N rho diag(1/theta_l)) x = 1``, i.e. ``metric = [1/theta_l]``.  The limit is the
    solution of ``T x = 1`` with ``z^T diag(metric) x = 0`` for ``z`` spanning ``null(T)``
    (first-order solvability of the expansion; module docstring), i.e. the solution of
    ``T x = 1`` of least ``sum_l metric_l x_l^2``.  For non-singular ``T`` this is ``T^{-1} 1``
    whatever the metric; ``metric = [1] * L`` gives ``T^+ 1``.

    Parameters
    ----------
    L : int
    metric : sequence of L positive SymPy expressions (symbols allowed)

    >>> t1, t2 = sp.symbols("theta_1 theta_2", positive=True)
    >>> list(btd_damped_weights(2, [1 / t1, 1 / t2]))
    [theta_1/(theta_1 + theta_2), theta_2/(theta_1 + theta_2)]
    """
    L = _as_layers(L)
    if not isinstance(L, int):
        raise ValueError(f"L={L!r}: btd_damped_weights needs an integer L")
    metric = [sp.sympify(m) for m in metric]
    if len(metric) != L:
        raise ValueError(f"metric has {len(metric)} entries; pass one per layer (L = {L})")
    if any(m.is_positive is False for m in metric):
        raise ValueError("metric entries must be positive (inverse per-layer kernels)")
    return _metric_limit(L, sp.diag(*metric)).applyfunc(sp.simplify)


def btd_layer_maps(layer_kernels) -> np.ndarray:
    """Function-space maps of the layers in the ``rho -> 0`` limit of BTD, for matrix kernels.

    With training-set per-layer kernels ``Theta_l`` (positive definite, ``n = N C``), the limit
    ``x = lim (T (x) I + N rho D^{-1})^{-1} (1 (x) v)`` has blocks ``x_l = W_l v``.  Then on the
    training set ``K = sum_l W_l = alpha I`` and on test inputs
    ``K(X2, X) = sum_l Theta_l(X2, X) Theta_l^{-1} W_l`` (theory.md section 3, BTD).

    ``W_l = c_l I`` (``c = T^{-1} 1``) when ``T`` is invertible.  For ``L = 3s + 2``:
    ``x = c0 (x) v + z (x) w`` with an exact particular solution ``c0`` and null vector ``z`` of
    ``T``, and ``w`` from ``sum_l z_l Theta_l^{-1} x_l = 0``, i.e.
    ``(sum_l z_l^2 Theta_l^{-1}) w = -(sum_l z_l c0_l Theta_l^{-1}) v``
    (``= P v`` with ``P = (S_1 + S_2)^{-1} S_2`` for ``c0 = (0, 1, 0, ...)``).  Equivalently
    ``x`` minimises ``sum_l x_l^T Theta_l^{-1} x_l`` subject to ``(T (x) I) x = 1 (x) v``: the
    layer with the larger kernel takes the larger share of the update.

    Parameters
    ----------
    layer_kernels : array_like, shape (L, n, n)
        Symmetric positive definite ``Theta_l`` on the training set.

    Returns
    -------
    numpy.ndarray, shape (L, n, n)

    >>> maps = btd_layer_maps(np.stack([np.eye(2), 3 * np.eye(2)]))
    >>> np.round(maps[:, 0, 0], 12).tolist()
    [0.25, 0.75]
    """
    kernels = np.asarray(layer_kernels, dtype=np.float64)
    if kernels.ndim != 3 or kernels.shape[1] != kernels.shape[2]:
        raise ValueError(
            f"layer_kernels has shape {kernels.shape}; pass an (L, n, n) stack of square kernels"
        )
    L, n, _ = kernels.shape
    if L < 1 or not np.allclose(kernels, kernels.transpose(0, 2, 1), rtol=1e-10, atol=0):
        raise ValueError("layer_kernels must be a non-empty stack of symmetric matrices")
    try:
        chol = [np.linalg.cholesky(k) for k in kernels]
    except np.linalg.LinAlgError:
        raise ValueError(
            "layer_kernels must be symmetric positive definite (BTD needs every Theta_l invertible)"
        ) from None
    particular, null = _solutions_of_T_x_ones(L)
    identity = np.eye(n)
    if not null:
        c = np.array(particular, dtype=np.float64).ravel()
        return c[:, None, None] * identity
    if len(null) != 1:  # a tri-diagonal matrix with nonzero off-diagonal has simple eigenvalues
        raise ArithmeticError("null space of T has dimension > 1")  # pragma: no cover
    c0 = np.array(particular, dtype=np.float64).ravel()
    z = np.array(null[0], dtype=np.float64).ravel()
    inverses = [np.linalg.solve(f.T, np.linalg.solve(f, identity)) for f in chol]
    lhs = sum(zl**2 * inv for zl, inv in zip(z, inverses))
    rhs = -sum(zl * cl * inv for zl, cl, inv in zip(z, c0, inverses))
    w_map = np.linalg.solve(lhs, rhs)
    return np.stack([cl * identity + zl * w_map for cl, zl in zip(c0, z)])


# ------------------------------------------------------------------- derivation steps
def _shows(expr: sp.Expr, operation) -> sp.Eq:
    """``Eq(expr, operation(expr))`` left unevaluated, so a step reads 'this simplifies to that'."""
    return sp.Eq(expr, operation(expr), evaluate=False)


def derivation_steps() -> list[tuple[str, sp.Basic]]:
    """The BTD derivation as ``(text, SymPy expression)`` steps, for printing.

    >>> steps = derivation_steps()
    >>> steps[0][0]
    'T_L: tri-diagonal matrix of ones (shown for L = 5)'
    """
    der = _derivation()
    D, c, z, L, l = _det, _c, _z, LAYERS, LAYER
    S1, S2, S3 = _metric_sums
    steps: list[tuple[str, sp.Basic]] = [
        ("T_L: tri-diagonal matrix of ones (shown for L = 5)", tridiagonal_ones(5)),
        ("Cofactor expansion of det along the last row (Toeplitz: diagonal d, off-diagonal e)",
         der.recurrence_generic),
        ("For T (d = e = 1)", der.recurrence),
        ("Initial values from T_1, T_2", sp.Tuple(*der.det_initial)),
        ("rsolve", sp.Eq(D(_n), der.det_solution)),
        ("Real form", sp.Eq(D(_n), der.det_closed)),
        (f"Period {der.det_period}: D(n + {der.det_period}) - D(n) simplifies to 0",
         _shows(der.det_closed.subs(_n, _n + der.det_period) - der.det_closed, sp.simplify)),
        (f"Values over one period, n = 0..{der.det_period - 1}", sp.Tuple(*der.det_values)),
        ("T_L singular iff", is_singular(L)),
        ("T c = 1 is c(l-1) + c(l) + c(l+1) = 1 with c(0) = 0 = c(L+1); rsolve with c(1) = a",
         sp.Eq(c(l), der.c_general.subs(_n, l))),
        (f"Period {der.c_period}: (c(1), c(2), c(3))",
         sp.Tuple(*[sp.simplify(der.c_general.subs(_n, k)) for k in (1, 2, 3)])),
        ("Null vector of the stencil, z(0) = 0, z(1) = 1", sp.Eq(z(l), der.z_general.subs(_n, l))),
    ]
    z_period = [sp.simplify(der.z_general.subs(_n, k)) for k in (1, 2, 3)]
    for case in der.cases:
        r = case.residue
        steps.append((f"L = 3s + {r}: right boundary c(L + 1) = 0 (c is 3-periodic)",
                      sp.Eq(c(3 * _s + r + 1), case.boundary, evaluate=False)))
        if case.free:
            steps += [
                ("  identically satisfied: a free, T singular, 1 in range(T); null vector z",
                 sp.Tuple(*z_period)),
                ("  1^T z = sum_k #{l = k mod 3} z(k) = 0, so alpha = 1^T x is the same for "
                 "every solution x of T x = 1",
                 sp.Eq(sp.Add(*[sp.Mul(n_k, zk, evaluate=False)
                                for n_k, zk in zip(case.counts, z_period)], evaluate=False),
                       case.z_dot_ones, evaluate=False)),
                ("  ||c||^2 (minimised by the pseudo-inverse)", case.norm2_s),
                ("  damped limit (T + eps diag(e_l))^{-1} 1: z^T E c = 0, "
                 "S_k = sum_{l=k mod 3} e_l",
                 sp.Eq(_a, case.damped_a)),
                ("  E = I (rho -> 0 of (T + rho I)^{-1} 1) = min-norm = T^+ 1",
                 sp.Eq(_a, case.a_value)),
            ]
        else:
            steps.append(("  hence", sp.Eq(_a, case.a_value)))
        steps += [
            ("  weights (c(1), c(2), c(3)), repeated with period 3", sp.Tuple(*case.pattern)),
            ("  alpha = 1^T c", sp.Eq(sp.Symbol("alpha"), case.alpha_s)),
            ("  ceiling(L/3) for integer s >= 0 equals alpha (simplify(alpha - ceiling(L/3)) == 0)",
             _shows(sp.ceiling((3 * _s + r) / sp.Integer(3), evaluate=False), sp.simplify)),
        ]
    n_sym = sp.Symbol("n", integer=True, positive=True)
    Sm1, Sm2, Pm = (sp.MatrixSymbol(name, n_sym, n_sym) for name in ("S_1", "S_2", "P"))
    steps += [
        ("Layer weights c = T^+ 1", sp.Eq(c(l), btd_weights(L, l))),
        ("alpha(L) = 1^T T^+ 1", sp.Eq(sp.Symbol("alpha"), btd_alpha(L))),
        ("alpha(L)", sp.Eq(sp.Symbol("alpha"), btd_alpha(L, form="ceiling"))),
        ("Matrix kernels, L = 3s+2: layers 3k+1 contribute P v, layers 3k+2 (I - P) v, "
         "S_k = sum_{l=k mod 3} Theta_l^{-1}", sp.Eq(Pm, (Sm1 + Sm2).I * Sm2, evaluate=False)),
    ]
    return steps


_latex_text = latex_text  # escaping for \text{...}: one place (ngdsym._algebra)


def derivation_latex() -> str:
    r"""LaTeX rendering of :func:`derivation_steps` (an ``align*`` environment).

    >>> derivation_latex().startswith(r"\begin{align*}")
    True
    """
    lines = [
        rf"&\text{{{_latex_text(text)}}} && {sp.latex(expr)} \\"
        for text, expr in derivation_steps()
    ]
    return "\\begin{align*}\n" + "\n".join(lines) + "\n\\end{align*}"


def derivation_text() -> str:
    """Plain-text rendering of :func:`derivation_steps`.

    >>> "ceiling(L/3)" in derivation_text()
    True
    """
    return "\n".join(f"{text}:\n    {sp.sstr(expr)}" for text, expr in derivation_steps())
