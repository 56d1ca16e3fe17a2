"""Block-matrix algebra used by :mod:`ngdsym.derivation` (private).

Everything here is a small rewrite on SymPy matrix expressions, each one checking
its own precondition, plus a generic NumPy evaluator for the resulting matrix
expressions (the numeric hooks of a :class:`~ngdsym.derivation.Derivation`).

* :func:`push_through` -- ``(s X^T G X + rho I)^{-1} X^T = (1/s) X^T (G X X^T + (rho/s) I)^{-1}``
  (theory.md section 1, "push-through identity"), applied as a rewrite of a ``MatMul``.
* :func:`replace_grams` -- ``X Y^T -> Gram symbol`` (``J_l J_l^T -> Theta_l``).
* :func:`rho_to_zero` -- the ``rho -> 0`` limit of resolvent expressions, justified by the
  scalar spectral limit :func:`spectral_limit` (derived with ``sympy.limit``).
* :class:`PseudoInverse`, :class:`LayerSum` -- two matrix-expression nodes SymPy lacks.
* :func:`evaluate` -- a translation table from matrix-expression nodes to NumPy.

>>> import sympy as sp
>>> N = sp.Symbol("N", positive=True, integer=True)
>>> rho = sp.Symbol("rho", positive=True)
>>> J = sp.MatrixSymbol("J", 3, 5)
>>> K = J * (J.T * J / N + rho * sp.Identity(5)).I * J.T / N
>>> K2, cond = push_through(K)
>>> K2
J*J.T*((N*rho)*I + J*J.T)**(-1)
"""

from __future__ import annotations

import functools
from functools import reduce

import numpy as np
import sympy as sp
from sympy import (BlockDiagMatrix, BlockMatrix, HadamardProduct, Identity, Inverse,
                   KroneckerProduct, MatAdd, MatMul, MatPow, MatrixSymbol, OneMatrix,
                   Transpose, ZeroMatrix)
from sympy.matrices.expressions.matexpr import MatrixExpr
from sympy.printing.latex import LatexPrinter

__all__ = [
    "N", "C", "N2", "rho", "eta", "t", "alpha", "layer", "L_default",
    "layer_matrix", "LayerSum", "PseudoInverse", "PushThroughNotApplicable",
    "push_through", "replace_grams", "cancel_inverse_runs", "rho_to_zero", "spectral_limit",
    "isotropy_constant", "evaluate", "latex", "latex_text", "verify_push_through",
]

#: Number of training samples, outputs and test samples.
N = sp.Symbol("N", positive=True, integer=True)
C = sp.Symbol("C", positive=True, integer=True)
N2 = sp.Symbol("N_2", positive=True, integer=True)
#: Damping, learning rate, step, a generic isotropy constant.
rho = sp.Symbol("rho", positive=True)
eta = sp.Symbol("eta", positive=True)
t = sp.Symbol("t", integer=True, nonnegative=True)
alpha = sp.Symbol("alpha", positive=True)
#: Generic layer index and the default (symbolic) depth.
layer = sp.Symbol("l", positive=True, integer=True)
L_default = sp.Symbol("L", positive=True, integer=True)


def layer_matrix(base: str, index, rows, cols) -> MatrixSymbol:
    """The matrix ``base_index`` (``Theta_l``, ``J_3``...): a ``MatrixSymbol`` named by an ``Indexed``.

    Naming by ``Indexed`` makes the layer index a real SymPy symbol, so ``expr.subs(l, 3)``
    turns the generic-layer term into layer 3's.

    >>> import sympy as sp
    >>> l = sp.Symbol("l")
    >>> layer_matrix("Theta", l, 2, 2).subs(l, 3)
    Theta[3]
    """
    return MatrixSymbol(sp.IndexedBase(base)[index], rows, cols)


class LayerSum(MatrixExpr):
    """``sum_{index = lower}^{upper} term`` for a matrix-valued ``term``; ``doit`` expands it.

    SymPy's ``Sum`` does not handle matrix summands, so layer sums with a symbolic
    depth ``L`` are kept as this node until ``L`` is a number.

    >>> import sympy as sp
    >>> l = sp.Symbol("l", integer=True, positive=True)
    >>> s = LayerSum(layer_matrix("Theta", l, 2, 2), l, 1, 2)
    >>> s.doit()
    Theta[1] + Theta[2]
    """

    def __new__(cls, term, index, lower=None, upper=None):
        if lower is None and isinstance(index, sp.Tuple):  # rebuilt from .args
            index, lower, upper = index
        return super().__new__(cls, sp.sympify(term), sp.Tuple(index, lower, upper))

    @property
    def term(self):
        return self.args[0]

    @property
    def limits(self):
        return self.args[1]

    @property
    def shape(self):
        return self.term.shape

    def doit(self, **hints):
        index, lower, upper = self.limits
        count = sp.simplify(upper - lower + 1)
        if not count.is_Integer:
            return self
        terms = [self.term.subs(index, k) for k in range(int(lower), int(lower) + int(count))]
        if not terms:
            return ZeroMatrix(*self.shape)
        return MatAdd(*terms).doit(**hints) if hints.get("deep", True) else MatAdd(*terms)

    def _eval_transpose(self):
        return LayerSum(Transpose(self.term), *self.limits)

    def _sympystr(self, printer):
        index, lower, upper = self.limits
        return (f"Sum({printer._print(self.term)}, ({printer._print(index)}, "
                f"{printer._print(lower)}, {printer._print(upper)}))")

    def _latex(self, printer):
        index, lower, upper = self.limits
        return (r"\sum_{%s=%s}^{%s} \left(%s\right)"
                % (printer._print(index), printer._print(lower), printer._print(upper),
                   printer._print(self.term)))


class PseudoInverse(MatrixExpr):
    """Moore-Penrose pseudo-inverse ``A^+`` (what ``A (A + eps I)^{-1}`` leaves as ``eps -> 0``).

    >>> import sympy as sp
    >>> PseudoInverse(sp.MatrixSymbol("Q", 3, 2)).shape
    (2, 3)
    """

    def __new__(cls, arg):
        return super().__new__(cls, sp.sympify(arg))

    @property
    def arg(self):
        return self.args[0]

    @property
    def shape(self):
        return (self.arg.shape[1], self.arg.shape[0])

    def doit(self, **hints):
        return PseudoInverse(self.arg.doit(**hints) if hints.get("deep", True) else self.arg)

    def _eval_transpose(self):
        return PseudoInverse(Transpose(self.arg))

    def _sympystr(self, printer):
        return f"pinv({printer._print(self.arg)})"

    def _latex(self, printer):
        return r"\left(%s\right)^{+}" % printer._print(self.arg)


class _Printer(LatexPrinter):
    """LaTeX printer that writes layer matrices ``Theta[l]`` as ``\\Theta_{l}``."""

    def _print_MatrixSymbol(self, expr):
        name = expr.args[0]
        if isinstance(name, sp.Indexed):
            base = self._deal_with_super_sub(str(name.base))
            idx = ",".join(self._print(i) for i in name.indices)
            return "%s_{%s}" % (base, idx)
        return super()._print_MatrixSymbol(expr)


def latex(expr) -> str:
    """LaTeX of a SymPy expression, with layer matrices printed as subscripts."""
    return _Printer().doprint(expr)


def latex_text(text: str) -> str:
    r"""Escape plain text for ``\text{...}`` (one pass, so escapes are not re-escaped).

    >>> latex_text("N C <= M_l, 1^T T^+ 1")
    'N C <= M\\_l, 1\\^{}T T\\^{}+ 1'
    """
    table = {"\\": r"\textbackslash{}", "_": r"\_", "^": r"\^{}", "{": r"\{", "}": r"\}",
             "#": r"\#", "%": r"\%", "&": r"\&", "$": r"\$"}
    return text.strip().translate(str.maketrans(table))


# ----------------------------------------------------------------------------------------
# push-through identity
# ----------------------------------------------------------------------------------------


class PushThroughNotApplicable(ValueError):
    """The expression has no factor ``(s X^T G X + rho I)^{-1} X^T`` to rewrite."""


def _match_damped_gram(M):
    """Split ``M = s X^T G X + d I`` into ``(s, X, G, d)``; ``G`` is ``None`` for ``X^T X``.

    Returns ``None`` if ``M`` is not of that form.
    """
    if not isinstance(M, MatAdd) or len(M.args) != 2:
        return None
    ident = [a for a in M.args if _identity_multiple(a) is not None]
    rest = [a for a in M.args if _identity_multiple(a) is None]
    if len(ident) != 1 or len(rest) != 1:
        return None
    damping = _identity_multiple(ident[0])
    gram = rest[0]
    if not isinstance(gram, MatMul):
        return None
    scale, mats = gram.as_coeff_matrices()
    if len(mats) not in (2, 3) or not isinstance(mats[0], Transpose):
        return None
    X = mats[0].arg
    if mats[-1] != X:
        return None
    G = mats[1] if len(mats) == 3 else None
    return sp.sympify(scale), X, G, damping


def _identity_multiple(a):
    """``d`` if ``a = d I``, else ``None``."""
    if isinstance(a, Identity):
        return sp.S.One
    if isinstance(a, MatMul):
        coeff, mats = a.as_coeff_matrices()
        if len(mats) == 1 and isinstance(mats[0], Identity):
            return sp.sympify(coeff)
    return None


def push_through(expr):
    """Rewrite every ``(s X^T G X + d I)^{-1} X^T`` in ``expr`` to ``(1/s) X^T (G X X^T + (d/s) I)^{-1}``.

    The identity follows from ``(s X^T G X + d I) X^T = X^T (s G X X^T + d I)``
    (theory.md section 1).  Its precondition is that both inverses exist; since
    ``X^T G X`` and ``G X X^T`` have the same nonzero eigenvalues, this holds as soon as
    ``d != 0`` and ``-d/s`` is not an eigenvalue of ``X^T G X`` -- always for ``d > 0`` when
    ``G`` is positive semi-definite, and for all small enough ``d > 0`` otherwise (the
    spectrum is finite).

    Parameters
    ----------
    expr : MatrixExpr
        A product (or sum of products) containing ``Inverse(s X^T G X + d I) * X^T``.

    Returns
    -------
    (MatrixExpr, str)
        The rewritten expression and the precondition, as text.

    Raises
    ------
    PushThroughNotApplicable
        If no such factor is found, or the damping ``d`` is not provably nonzero.

    Examples
    --------
    >>> import sympy as sp
    >>> X = sp.MatrixSymbol("X", 2, 4); r = sp.Symbol("r", positive=True)
    >>> push_through((X.T * X + r * sp.Identity(4)).I * X.T)[0]
    X.T*(r*I + X*X.T)**(-1)
    """
    expr = sp.sympify(expr)
    conditions = []

    def rewrite(e):
        if isinstance(e, MatAdd):
            return MatAdd(*[rewrite(a) for a in e.args])
        if isinstance(e, LayerSum):
            return LayerSum(rewrite(e.term), *e.limits)
        if not isinstance(e, MatMul):
            return e
        coeff, mats = e.as_coeff_matrices()
        mats = list(mats)
        out, i, changed = [], 0, False
        while i < len(mats):
            m = mats[i]
            if isinstance(m, Inverse) and i + 1 < len(mats):
                match = _match_damped_gram(m.arg)
                if match is not None and mats[i + 1] == Transpose(match[1]):
                    scale, X, G, damping = match
                    if not damping.is_nonzero:
                        raise PushThroughNotApplicable(
                            f"push-through needs a nonzero damping; got {damping}")
                    inner = X * X.T if G is None else G * X * X.T
                    new_inv = Inverse(inner + (damping / scale) * Identity(inner.shape[0]))
                    out += [Transpose(X), new_inv]
                    coeff = coeff / scale
                    gram_text = sp.sstr(X.T * X) if G is None else sp.sstr(X.T * G * X)
                    conditions.append(f"{sp.sstr(damping)} != 0 and {sp.sstr(-damping / scale)} "
                                      f"is not an eigenvalue of {gram_text}")
                    i += 2
                    changed = True
                    continue
            out.append(m)
            i += 1
        if not changed:
            return e
        return MatMul(coeff, *out).doit(deep=False) if coeff != 1 else MatMul(*out)

    result = rewrite(expr)
    if not conditions:
        raise PushThroughNotApplicable(
            f"no factor (s X^T G X + d I)^(-1) X^T in {sp.sstr(expr)}: the push-through "
            "identity needs the preconditioner to be a damped Gram matrix of the Jacobian "
            "block it multiplies")
    return result, "; ".join(dict.fromkeys(conditions))


def verify_push_through(X: sp.Matrix, damping, scale=1, G: sp.Matrix | None = None) -> sp.Matrix:
    """``(s X^T G X + d I)^{-1} X^T - (1/s) X^T (G X X^T + (d/s) I)^{-1}`` for explicit matrices.

    With rational entries the result is computed exactly and is the zero matrix.

    >>> import sympy as sp
    >>> X = sp.Matrix([[1, 2, 0], [0, 1, 3]])
    >>> verify_push_through(X, sp.Rational(1, 3), sp.Rational(1, 2)).is_zero_matrix
    True
    """
    n, p = X.shape
    G = sp.eye(n) if G is None else G
    lhs = (scale * X.T * G * X + damping * sp.eye(p)).inv() * X.T
    rhs = X.T * (G * X * X.T + (damping / scale) * sp.eye(n)).inv() / scale
    return sp.simplify(lhs - rhs)


def replace_grams(expr, grams: dict):
    """Replace adjacent factors ``A, B^T`` of every ``MatMul`` by ``grams[(A, B)]``.

    Used for ``J_l J_l^T -> Theta_l`` (and ``J_l(X') J_l^T -> Theta_l(X', X)``).
    """
    def rw(e):
        if isinstance(e, MatMul):
            coeff, mats = e.as_coeff_matrices()
            mats = [rw(m) for m in mats]
            out, i = [], 0
            while i < len(mats):
                if i + 1 < len(mats) and isinstance(mats[i + 1], Transpose) \
                        and (mats[i], mats[i + 1].arg) in grams:
                    out.append(grams[(mats[i], mats[i + 1].arg)])
                    i += 2
                else:
                    out.append(mats[i])
                    i += 1
            return MatMul(coeff, *out) if coeff != 1 else (MatMul(*out) if len(out) > 1 else out[0])
        if isinstance(e, (MatAdd, Inverse, HadamardProduct, KroneckerProduct, PseudoInverse,
                          Transpose)):
            return e.func(*[rw(a) for a in e.args])
        if isinstance(e, LayerSum):
            return LayerSum(rw(e.term), *e.limits)
        return e
    return rw(sp.sympify(expr))


def cancel_inverse_runs(expr):
    """Cancel ``P Inverse(P)`` and ``Inverse(P) P`` where ``P`` is a run of ``MatMul`` factors."""
    def rw(e):
        if isinstance(e, MatMul):
            coeff, mats = e.as_coeff_matrices()
            mats = [rw(m) for m in mats]
            changed = True
            while changed:
                changed = False
                for i, m in enumerate(mats):
                    if not isinstance(m, Inverse):
                        continue
                    run = list(m.arg.args) if isinstance(m.arg, MatMul) else [m.arg]
                    k = len(run)
                    if mats[max(0, i - k):i] == run and i - k >= 0:
                        mats = mats[:i - k] + mats[i + 1:]
                        changed = True
                        break
                    if mats[i + 1:i + 1 + k] == run:
                        mats = mats[:i] + mats[i + 1 + k:]
                        changed = True
                        break
            if not mats:
                return coeff * Identity(e.shape[0])
            return MatMul(coeff, *mats).doit()
        if isinstance(e, (MatAdd, HadamardProduct, KroneckerProduct)):
            return e.func(*[rw(a) for a in e.args]).doit()
        if isinstance(e, LayerSum):
            return LayerSum(rw(e.term), *e.limits)
        return e
    return rw(sp.sympify(expr))


# ----------------------------------------------------------------------------------------
# rho -> 0
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def spectral_limit(scale=N):
    """Derive ``lim_{rho->0+} lambda / (lambda + scale rho)`` for ``lambda > 0`` and ``lambda = 0``.

    A symmetric ``A = U diag(lambda) U^T`` has ``A (A + scale rho I)^{-1} = U diag(g(lambda)) U^T``
    with ``g(lambda) = lambda / (lambda + scale rho)``; the two limits below give
    ``A (A + scale rho I)^{-1} -> A A^+`` (the projection onto ``range(A)``), hence ``I``
    when ``A`` is invertible, and ``B (A + scale rho)^{-1} -> B A^+`` for any ``B`` whose
    rows lie in the row space of ``A`` (a cross Gram ``Phi' Phi^T`` against ``A = Phi Phi^T``).

    >>> spectral_limit()
    (1, 0)
    """
    lam = sp.Symbol("lambda", positive=True)
    g = lam / (lam + scale * rho)
    return sp.limit(g, rho, 0, "+"), sp.limit(g.subs(lam, 0), rho, 0, "+")


def rho_to_zero(expr, invertible=(), damping=rho):
    """The ``damping -> 0`` limit of a resolvent expression.

    Every ``Inverse(A + c damping I)`` becomes ``A^{-1}`` if ``A`` is in ``invertible`` (an
    assumption the caller states as a condition), else ``A^+``; then ``A A^{-1}`` cancels.
    Justified by :func:`spectral_limit`: every such inverse in the derivations is
    multiplied on the left by a Gram matrix whose rows lie in ``A``'s row space.
    """
    invertible = set(invertible)

    def _invertible(A):
        if A in invertible or isinstance(A, Identity):
            return True
        if isinstance(A, (MatMul, KroneckerProduct)):
            mats = A.as_coeff_matrices()[1] if isinstance(A, MatMul) else A.args
            return all(_invertible(m) for m in mats)
        return False

    def rw(e):
        if isinstance(e, Inverse):
            A = rw(e.arg.subs(damping, 0).doit())
            return Inverse(A) if _invertible(A) else PseudoInverse(A)
        if isinstance(e, MatrixSymbol):
            return e
        if isinstance(e, LayerSum):
            return LayerSum(rw(e.term), *e.limits)
        if isinstance(e, (MatMul, MatAdd, HadamardProduct, KroneckerProduct, Transpose,
                          PseudoInverse, BlockDiagMatrix)):
            return e.func(*[rw(a) for a in e.args])
        if isinstance(e, sp.Expr) and not getattr(e, "is_Matrix", False):
            return e.subs(damping, 0)
        return e

    return cancel_inverse_runs(rw(sp.sympify(expr)).doit())


def isotropy_constant(K):
    """``a`` if the matrix expression ``K`` equals ``a I`` (after ``doit``), else ``None``.

    >>> import sympy as sp
    >>> isotropy_constant(3 * sp.Identity(4) + sp.Identity(4))
    4
    """
    K = sp.sympify(K).doit()
    if isinstance(K, LayerSum):
        inner = isotropy_constant(K.term)
        if inner is None:
            return None
        index, lo, hi = K.limits
        return sp.summation(inner, (index, lo, hi))
    if isinstance(K, Identity):
        return sp.S.One
    if isinstance(K, MatMul):
        coeff, mats = K.as_coeff_matrices()
        if len(mats) == 1:
            inner = isotropy_constant(mats[0])
            return None if inner is None else sp.simplify(coeff * inner)
        return None
    if isinstance(K, MatAdd):
        parts = [isotropy_constant(a) for a in K.args]
        return None if any(p is None for p in parts) else sp.simplify(sp.Add(*parts))
    if isinstance(K, KroneckerProduct):
        parts = [isotropy_constant(a) for a in K.args]
        return None if any(p is None for p in parts) else sp.Mul(*parts)
    if isinstance(K, sp.MatrixBase) and K.shape == (1, 1):
        return K[0, 0]
    if isinstance(K, sp.MatrixBase) and K.is_square:
        d = K[0, 0]
        return d if (K - d * sp.eye(K.rows)).is_zero_matrix else None
    return None


# ----------------------------------------------------------------------------------------
# numeric evaluation: a translation table, node type -> NumPy
# ----------------------------------------------------------------------------------------


def _pinv_hermitian(a: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Pseudo-inverse of a symmetric PSD Gram matrix (relative eigenvalue cut-off ``rtol``)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    keep = w > rtol * max(w.max(initial=0.0), np.finfo(float).tiny)
    return (v[:, keep] / w[keep]) @ v[:, keep].T


def evaluate(expr, arrays: dict, scalars: dict):
    """Evaluate a SymPy matrix expression with NumPy.

    Parameters
    ----------
    expr : MatrixExpr or Expr
    arrays : dict
        ``str(MatrixSymbol name) -> ndarray`` (e.g. ``"Theta[1]"``).
    scalars : dict
        ``Symbol -> number`` for shapes and coefficients.

    Examples
    --------
    >>> import sympy as sp, numpy as np
    >>> A = sp.MatrixSymbol("A", 2, 2)
    >>> out = evaluate(sp.HadamardProduct(A, A.I) + sp.KroneckerProduct(sp.Identity(1), A),
    ...                {"A": np.diag([2.0, 4.0])}, {})
    >>> out.tolist()
    [[3.0, 0.0], [0.0, 5.0]]
    """
    ev = functools.partial(evaluate, arrays=arrays, scalars=scalars)

    def dim(d):
        return int(sp.sympify(d).subs(scalars))

    if isinstance(expr, MatrixSymbol):
        key = str(expr.args[0])
        if key not in arrays:
            raise KeyError(f"no array for matrix symbol {key}")
        return np.asarray(arrays[key], dtype=float)
    if isinstance(expr, Identity):
        return np.eye(dim(expr.rows))
    if isinstance(expr, ZeroMatrix):
        return np.zeros((dim(expr.rows), dim(expr.cols)))
    if isinstance(expr, OneMatrix):
        return np.ones((dim(expr.rows), dim(expr.cols)))
    if isinstance(expr, sp.MatrixBase):
        return np.array(expr.subs(scalars).evalf(), dtype=float)
    if isinstance(expr, MatMul):
        coeff, mats = expr.as_coeff_matrices()
        out = reduce(np.matmul, [ev(m) for m in mats])
        return float(sp.sympify(coeff).subs(scalars)) * out
    if isinstance(expr, MatAdd):
        return reduce(np.add, [ev(a) for a in expr.args])
    if isinstance(expr, Inverse):
        return np.linalg.inv(ev(expr.arg))
    if isinstance(expr, PseudoInverse):
        return _pinv_hermitian(ev(expr.arg))
    if isinstance(expr, Transpose):
        return ev(expr.arg).T
    if isinstance(expr, HadamardProduct):
        return reduce(np.multiply, [ev(a) for a in expr.args])
    if isinstance(expr, KroneckerProduct):
        return reduce(np.kron, [ev(a) for a in expr.args])
    if isinstance(expr, BlockDiagMatrix):
        import scipy.linalg
        return scipy.linalg.block_diag(*[ev(b) for b in expr.args])
    if isinstance(expr, BlockMatrix):
        blocks = expr.blocks
        return np.block([[ev(blocks[i, j]) for j in range(blocks.cols)]
                         for i in range(blocks.rows)])
    if isinstance(expr, MatPow):
        return np.linalg.matrix_power(ev(expr.base), int(sp.sympify(expr.exp).subs(scalars)))
    if isinstance(expr, LayerSum):
        expanded = expr.subs(scalars).doit()
        if isinstance(expanded, LayerSum):
            raise ValueError(f"cannot evaluate {expr}: its number of layers is not known")
        return ev(expanded)
    if isinstance(expr, sp.Expr):
        return float(expr.subs(scalars))
    raise TypeError(f"no NumPy translation for {type(expr).__name__}")
