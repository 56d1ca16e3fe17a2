"""Symbolic derivation of each method's function-space preconditioner (theory.md sections 1-3).

:func:`derive` builds, for a Fisher approximation ``F_hat`` (:class:`~ngdsym.methods.Method`),
the preconditioned kernel ``K = J' (F_hat + rho I)^{-1} J^T / N`` from its definition --
Jacobian blocks as SymPy ``MatrixSymbol`` s, ``F_hat`` as the block matrix the method keeps,
the push-through identity applied as a rewrite (:func:`ngdsym._algebra.push_through`), the
block systems solved and ``rho -> 0`` taken under stated invertibility assumptions -- and
from ``K -> alpha I`` the dynamics, learning rates and test predictor.  ``J'`` is the
Jacobian at test inputs ``X'``; ``J' = J`` gives the training-set kernel.

Findings (each derived in the corresponding ``_derive_*`` function, steps in
:meth:`Derivation.explain`):

* exact: ``K = Theta (Theta + N rho)^{-1} -> I``; gd: ``K = Theta / N`` (not isotropic).
* block diagonal: ``sum_l Theta_l (Theta_l + N rho)^{-1} -> L I``.
* block tri-diagonal: ``(1^T (x) I) Theta_D ((T (x) I) Theta_D + N rho)^{-1} (1 (x) I) ->
  (1^T T^+ 1) I`` for every ``L``, also ``L = 3s + 2`` (singular ``T``).  The test kernel is
  ``sum_l c_l Theta_l(X', X) Theta_l^{-1}`` (``c = T^{-1} 1``) only for invertible ``T``; for
  ``L = 3s + 2`` the ``rho -> 0`` limit is
  ``(1^T (x) I) Theta_D(X', X) R (R^T Theta_D R)^{-1} R^T (c (x) I)`` with ``R = U (x) I``,
  ``U`` a basis of ``range(T)``: it depends on the ``Theta_l`` (``L = 2`` is exact NGD).
* K-FAC: ``alpha = N (L - 1) + 1``, not the released code's ``N L`` (see :func:`_derive_kfac`).
* unit-wise (``C = 1``): ``K -> diag(a_n)``, ``alpha = gamma sum_{l<L} M_l + 1`` with
  ``gamma = 1/2`` (relu), ``1`` (tanh, erf, linear).
* diagonal: an explicit two-sample network whose ``K`` has a nonzero off-diagonal entry.

>>> derive("block_diagonal", depth=3).alpha
3
>>> derive("exact").limit
I
>>> import sympy as sp
>>> L, N = sp.symbols("L N", positive=True, integer=True)
>>> bool(derive("kfac", depth=L, n_samples=N).alpha.equals(N * (L - 1) + 1))
True
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import sympy as sp
from sympy import (BlockDiagMatrix, BlockMatrix, HadamardProduct, Identity, Inverse,
                   KroneckerProduct, MatMul, MatPow, MatrixSymbol, OneMatrix, block_collapse)
from sympy.matrices.expressions.kronecker import combine_kronecker

from . import _algebra as alg
from ._algebra import (C, N, N2, LayerSum, PseudoInverse, PushThroughNotApplicable, eta, layer,
                       layer_matrix, push_through, replace_grams, rho, rho_to_zero, t)
from .methods import KFACDamping, Method

__all__ = ["Condition", "Derivation", "LearningRate", "derive", "activation_gamma"]

KP = KroneckerProduct
_STRUCTURE_KEYS = ("depth", "n_samples", "n_outputs", "widths", "activation", "kfac_damping",
                   "bias")
_unit = sp.Symbol("i", positive=True, integer=True)  # unit index within a layer
_M = sp.IndexedBase("M")  # widths M_l
_gamma = sp.Symbol("gamma", positive=True)  # P[phi'(u) != 0]


# ----------------------------------------------------------------------------------------
# data classes
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """An assumption a derivation needs: ``expr`` as data (SymPy relational/boolean), and text.

    >>> c = Condition("rho", sp.Symbol("rho", positive=True) > 0, "damping is positive")
    >>> bool(c.expr)
    True
    """

    name: str
    expr: Any
    text: str

    def __str__(self) -> str:
        return f"{self.name}: {self.text}  [{sp.sstr(self.expr)}]"


class LearningRate(NamedTuple):
    """Optimal learning rate ``1/alpha`` and the stable window ``(0, 2/alpha)`` (theory.md section 1)."""

    optimal: sp.Expr
    stable: sp.Set


@dataclass(frozen=True)
class _Structure:
    depth: Any
    n_samples: Any
    n_outputs: Any
    widths: tuple | None  # full [M_0, ..., M_L] if known
    hidden: tuple | None  # [M_1, ..., M_{L-1}] if known
    activation: str | None
    kfac_damping: KFACDamping
    bias: bool | None

    def as_dict(self) -> dict:
        return {"depth": self.depth, "n_samples": self.n_samples, "n_outputs": self.n_outputs,
                "widths": list(self.widths) if self.widths is not None else (
                    list(self.hidden) if self.hidden is not None else None),
                "activation": self.activation, "kfac_damping": self.kfac_damping,
                "bias": self.bias}

    @property
    def depth_is_int(self) -> bool:
        return isinstance(self.depth, int)


@dataclass
class Derivation:
    """The result of :func:`derive` (API.md, issue 3).

    Attributes
    ----------
    method : Method
    structure : dict
        ``depth``, ``n_samples``, ``n_outputs``, ``widths``, ``activation``, ``kfac_damping``, ``bias``.
    steps : list of (str, SymPy object)
        Every intermediate result, in order (:meth:`explain` prints them).
    preconditioner : MatrixExpr
        ``K`` on the training set at damping ``rho``, in per-layer kernels (``Theta[l]`` ...).
    limit : MatrixExpr
        ``K`` as ``rho -> 0`` on the training set.
    cross_limit : MatrixExpr or None
        ``K(X', X)`` as ``rho -> 0`` (test rows), in per-layer kernels (``Theta'[l]`` ...).
    alpha : SymPy expression or None
        ``K -> alpha I``; ``None`` when not isotropic, with ``alpha_reason``.
    conditions : list of Condition
    dynamics : MatrixExpr
        ``f_t(X) - y`` in closed form (``e_0 = f_0(X) - y``).
    learning_rate : LearningRate or None
    test_predictor : MatrixExpr
        ``f_t(X')`` in closed form.
    """

    method: Method
    structure: dict
    steps: list = field(default_factory=list)
    preconditioner: Any = None
    limit: Any = None
    cross_limit: Any = None
    cross_reason: str | None = None
    alpha: Any = None
    alpha_reason: str | None = None
    conditions: list = field(default_factory=list)
    dynamics: Any = None
    learning_rate: LearningRate | None = None
    test_predictor: Any = None
    _series: Any = None  # sum_{s<t} eta (1 - alpha eta)^s = kappa_t / alpha (isotropic)
    _train_kernel: Any = None  # training-set limit without rank assumptions (kernel_limit)
    _input: tuple = ()  # (method, _Structure) it was derived from

    # ------------------------------------------------------------------ rendering
    def _summary(self):
        rows = [("method", self.method.value),
                ("preconditioner K (training set)", self.preconditioner),
                ("limit rho -> 0", self.limit),
                ("alpha", self.alpha if self.alpha is not None else f"None ({self.alpha_reason})"),
                ("dynamics f_t - y", self.dynamics)]
        if self.learning_rate is not None:
            rows += [("optimal learning rate", self.learning_rate.optimal),
                     ("stable learning rates", self.learning_rate.stable)]
        rows.append(("test predictor f_t(X')", self.test_predictor))
        return rows

    def text(self) -> str:
        """Plain-text rendering of the results and conditions."""
        lines = [f"{k}: {v if isinstance(v, str) else sp.sstr(v)}" for k, v in self._summary()]
        lines.append("conditions:")
        lines += [f"  - {c}" for c in self.conditions]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def latex(self) -> str:
        """LaTeX rendering (an ``align*`` body) of the results and conditions."""
        tx = alg.latex_text  # plain text inside \text{} must be escaped (_, ^, ...)
        lines = []
        for k, v in self._summary():
            body = r"\text{%s}" % tx(v) if isinstance(v, str) else alg.latex(v)
            lines.append(r"\text{%s} &: %s" % (tx(k), body))
        for c in self.conditions:
            expr = c.expr if not isinstance(c.expr, bool) else sp.sympify(c.expr)
            lines.append(r"\text{%s} &: %s \quad \text{(%s)}" % (tx(c.name), alg.latex(expr),
                                                               tx(c.text)))
        return " \\\\\n".join(lines)

    def explain(self) -> str:
        """All intermediate steps, numbered, then the summary."""
        out = [f"Derivation for {self.method.label} ({self.method.value}), structure "
               f"{ {k: v for k, v in self.structure.items() if v is not None} }"]
        for i, (text, expr) in enumerate(self.steps, 1):
            out.append(f"{i:2d}. {text}")
            if expr is not None:
                out.append("      " + sp.sstr(expr).replace("\n", "\n      "))
        out.append(self.text())
        return "\n".join(out)

    # ------------------------------------------------------------------ numeric hooks
    def _with(self, **values) -> "Derivation":
        """The same derivation with some structure values made concrete (cached)."""
        method, s = self._input
        merged = s.as_dict()
        for key, value in values.items():
            if key not in _STRUCTURE_KEYS:
                raise ValueError(f"unknown structure key {key!r}; use {', '.join(_STRUCTURE_KEYS)}")
            if value is None:
                continue
            current = merged.get(key)
            if key == "widths" and current is not None and list(current) != list(value):
                raise ValueError(f"widths={list(value)} differs from this derivation's {current}")
            if key in ("depth", "n_samples", "n_outputs") and isinstance(current, int) \
                    and current != value:
                raise ValueError(f"{key}={value} differs from this derivation's {key}={current}")
            merged[key] = value
        if merged.get("widths") is not None and isinstance(merged["depth"], int) and \
                len(merged["widths"]) == merged["depth"] + 1 and not isinstance(merged["n_outputs"], int):
            merged["n_outputs"] = merged["widths"][-1]
        return derive(method, **merged)

    def alpha_value(self, **values) -> float:
        """``alpha`` with concrete structure values substituted, as a float.

        Parameters
        ----------
        **values
            Any structure keys (``depth``, ``n_samples``, ``n_outputs``, ``widths``,
            ``activation``, ``bias``...).

        Raises
        ------
        ValueError
            If the method is not isotropic for these values, or a value ``alpha`` depends on
            is missing.

        Examples
        --------
        >>> derive("kfac").alpha_value(depth=3, n_samples=16)
        33.0
        >>> derive("unit_wise").alpha_value(depth=3, widths=[4, 100, 60, 1], activation="relu")
        81.0
        """
        concrete = self._with(**values)
        if concrete.alpha is None:
            raise ValueError(f"{self.method.value} is not isotropic here: {concrete.alpha_reason}")
        if self.alpha is None:
            value = concrete.alpha
        else:
            value = _substitute_structure(self.alpha, concrete._input[1])
            if sp.simplify(value - concrete.alpha) != 0:  # pragma: no cover - consistency
                raise ArithmeticError(f"alpha substitution {value} != {concrete.alpha}")
        free = sp.sympify(value).free_symbols
        if free:
            names = ", ".join(sorted(str(s) for s in free))
            raise ValueError(f"alpha = {value} still depends on {names}; pass the structure "
                             "values it needs (depth, n_samples, n_outputs, widths, activation)")
        return float(value)

    def kernel_limit(self, train, cross=None) -> np.ndarray:
        """The infinite-width, ``rho -> 0`` preconditioned kernel, evaluated numerically.

        Obtained by substituting the infinite-width per-layer kernels into the symbolic
        ``limit`` / ``cross_limit`` (per output the ``C`` outputs are independent and identical,
        so ``Theta_l -> Theta_l (x) I_C``, ``Bt_l -> Bt_l (x) I_C``; forward Grams are broadcast
        explicitly in the expressions) and evaluating it with
        :func:`ngdsym._algebra.evaluate`.

        Parameters
        ----------
        train : InfiniteWidthKernels-like
            ``kernels(X, X)``: arrays ``layer_ntk``, ``forward``, ``backward`` of shape ``(L, N, N)``.
        cross : InfiniteWidthKernels-like, optional
            ``kernels(X2, X)``: arrays of shape ``(L, N2, N)``.

        Returns
        -------
        ndarray ``(N C, N C)`` or ``(N2 C, N C)``, rows ``n * C + c``.

        Raises
        ------
        NotImplementedError
            For methods whose limit is not a function of the per-layer kernels (diagonal;
            unit-wise test kernel; see ``cross_reason``).
        """
        L, n, n2 = _check_kernels(train, cross)
        concrete = self._with(depth=L, n_samples=n)
        C_val = concrete._input[1].n_outputs
        C_val = 1 if C_val is None else C_val  # the documented default
        if not isinstance(C_val, int):
            raise ValueError("n_outputs must be an integer to evaluate the kernel limit; "
                             "pass n_outputs to derive()")
        expr = concrete.cross_limit if cross is not None else (
            concrete._train_kernel if concrete._train_kernel is not None else concrete.limit)
        if expr is None:
            raise NotImplementedError(concrete.cross_reason if cross is not None
                                      else concrete.alpha_reason)
        if cross is None and concrete.method is Method.UNIT_WISE:
            # K -> diag(a_n), a_n = alpha (wide limit, ratio sense): alpha I.
            return concrete.alpha_value() * np.eye(n * C_val)
        arrays = _infinite_width_arrays(train, cross, C_val)
        try:
            return alg.evaluate(expr, arrays, {N: n, C: C_val, N2: n2 if cross is not None else n})
        except KeyError as err:
            raise NotImplementedError(
                f"{concrete.method.value}: the kernel limit is not a function of the per-layer "
                f"kernels ({err.args[0]}); {concrete.cross_reason or concrete.alpha_reason}") from None

    def predict_test(self, train, cross, residual0, *, lr, steps) -> np.ndarray:
        """Infinite-width linearised ``f_t(X2) - f_0(X2)`` for ``t = 0..steps`` (theory.md section 3).

        Evaluates :attr:`test_predictor` minus ``f_0(X')``: for isotropic methods
        ``-(kappa_t / alpha) K(X2, X) e_0`` (``kappa_t = 1 - (1 - alpha lr)^t``), for gd
        ``-K(X2, X) K^{-1} (I - (I - lr K)^t) e_0``.

        Parameters
        ----------
        train, cross : InfiniteWidthKernels-like (``kernels(X, X)``, ``kernels(X2, X)``)
        residual0 : array ``(N, C)``: ``f_0(X) - Y``.
        lr : float
        steps : int

        Returns
        -------
        ndarray ``(steps + 1, N2, C)``
        """
        if cross is None:
            raise ValueError("cross is required: pass kernels(X2, X) for the test inputs")
        L, n, n2 = _check_kernels(train, cross)
        e0 = np.asarray(residual0, dtype=float)
        if e0.ndim != 2 or e0.shape[0] != n:
            raise ValueError(f"residual0 has shape {e0.shape}; pass f_0(X) - Y of shape (N={n}, C)")
        C_val = e0.shape[1]
        if not (isinstance(steps, numbers.Integral) and steps >= 0):
            raise ValueError(f"steps={steps!r} must be a nonnegative integer")
        concrete = self._with(depth=L, n_samples=n, n_outputs=C_val)
        K_cross = concrete.kernel_limit(train, cross)
        e = e0.reshape(-1)
        if concrete.alpha is not None:
            series = sp.lambdify((eta, t), concrete._series.subs(
                alg.alpha, concrete.alpha_value()), modules="numpy")
            factors = np.array([float(series(lr, k)) for k in range(steps + 1)])
            out = -factors[:, None] * (K_cross @ e)[None, :]
            return out.reshape(steps + 1, n2, C_val)
        # not isotropic: evaluate the predictor expression at each t
        expr = concrete.test_predictor
        arrays = _infinite_width_arrays(train, cross, C_val)
        arrays.update({"f_0(X')": np.zeros((n2 * C_val, 1)), "e_0": e[:, None]})
        out = np.empty((steps + 1, n2 * C_val))
        for k in range(steps + 1):
            out[k] = alg.evaluate(expr.subs(t, k), arrays,
                                  {N: n, C: C_val, N2: n2, eta: lr}).ravel()
        return out.reshape(steps + 1, n2, C_val)


# ----------------------------------------------------------------------------------------
# structure
# ----------------------------------------------------------------------------------------


def _positive_int_or_symbol(value, name, default):
    if value is None:
        return default
    if isinstance(value, sp.Basic):
        if value.is_number:
            value = int(value)
        else:
            return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} must be a positive integer or a SymPy symbol")
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1")
    return int(value)


def _parse_structure(structure: dict) -> _Structure:
    unknown = sorted(set(structure) - set(_STRUCTURE_KEYS))
    if unknown:
        raise ValueError(f"unknown structure keys {unknown}; use {', '.join(_STRUCTURE_KEYS)}")
    depth = _positive_int_or_symbol(structure.get("depth"), "depth", alg.L_default)
    n = _positive_int_or_symbol(structure.get("n_samples"), "n_samples", N)
    c = _positive_int_or_symbol(structure.get("n_outputs"), "n_outputs", None)
    widths = structure.get("widths")
    full = hidden = None
    if widths is not None:
        if not isinstance(depth, int):
            raise ValueError("widths needs an integer depth; pass depth=len(widths) - 1")
        widths = tuple(int(w) for w in widths)
        if any(w < 1 for w in widths):
            raise ValueError(f"widths={list(widths)} must be positive")
        if len(widths) == depth + 1:
            full, hidden = widths, widths[1:-1]
            if c is None:
                c = widths[-1]
            elif isinstance(c, int) and c != widths[-1]:
                raise ValueError(f"widths[-1]={widths[-1]} must equal n_outputs={c}")
        elif len(widths) == depth - 1:
            hidden = widths
        else:
            raise ValueError(f"widths has {len(widths)} entries; pass [M_0, ..., M_L] "
                             f"({depth + 1} entries) or the hidden widths ({depth - 1})")
    activation = structure.get("activation")
    if activation is not None:
        from .kernels import ACTIVATION_EXPRESSIONS
        activation = str(activation).lower()
        if activation not in ACTIVATION_EXPRESSIONS:
            raise ValueError(f"activation={activation!r}; use one of {sorted(ACTIVATION_EXPRESSIONS)}")
    damping = KFACDamping.parse(structure.get("kfac_damping") or KFACDamping.FACTORS)
    bias = structure.get("bias")
    if bias is not None and not isinstance(bias, bool):
        raise ValueError(f"bias={bias!r} must be True, False or None")
    return _Structure(depth, n, c, full, hidden, activation, damping, bias)


def _substitute_structure(expr, s: _Structure):
    """Substitute concrete structure values into a symbolic expression (alpha_value)."""
    subs = {alg.L_default: s.depth, N: s.n_samples,
            C: 1 if s.n_outputs is None else s.n_outputs}
    out = sp.sympify(expr).subs(subs).doit()
    if s.hidden is not None:
        out = out.subs({_M[k + 1]: w for k, w in enumerate(s.hidden)})
    if s.activation is not None:
        out = out.subs(_gamma, activation_gamma(s.activation)[0])
    return sp.simplify(out)


def _check_kernels(train, cross):
    try:
        shapes = [np.shape(getattr(train, a)) for a in ("layer_ntk", "forward", "backward")]
    except AttributeError as err:
        raise ValueError("train must have arrays layer_ntk, forward, backward "
                         "(ngdsym.infinite_width_kernels(X))") from err
    if len(set(shapes)) != 1 or len(shapes[0]) != 3 or shapes[0][1] != shapes[0][2]:
        raise ValueError(f"train kernels have shapes {shapes}; need (L, N, N) each")
    L, n, _ = shapes[0]
    n2 = n
    if cross is not None:
        cshapes = [np.shape(getattr(cross, a)) for a in ("layer_ntk", "forward", "backward")]
        if len(set(cshapes)) != 1 or cshapes[0][0] != L or cshapes[0][2] != n:
            raise ValueError(f"cross kernels have shapes {cshapes}; need (L={L}, N2, N={n}) "
                             "(use infinite_width_kernels(X2, X))")
        n2 = cshapes[0][1]
    return L, n, n2


def _infinite_width_arrays(train, cross, C_val):
    """Name -> array table: per-output infinite-width kernels, ``(x) I_C`` for output-diagonal ones."""
    eye = np.eye(C_val)
    arrays = {}
    for src, mark in ((train, ""), (cross, "'")):
        if src is None:
            continue
        L = np.shape(src.layer_ntk)[0]
        for k in range(1, L + 1):
            arrays[f"Theta{mark}[{k}]"] = np.kron(np.asarray(src.layer_ntk[k - 1]), eye)
            arrays[f"Bt{mark}[{k}]"] = np.kron(np.asarray(src.backward[k - 1]), eye)
            arrays[f"Q{mark}[{k - 1}]"] = np.asarray(src.forward[k - 1], dtype=float)
    return arrays


# ----------------------------------------------------------------------------------------
# shared derivation pieces
# ----------------------------------------------------------------------------------------


def _layers(s: _Structure, lower=1, upper=None):
    """Layer sum bounds; concrete ranges are expanded by ``doit``."""
    return (layer, lower, s.depth if upper is None else upper)


def _expand(expr):
    """``doit`` for layer sums with a concrete number of layers, kept otherwise."""
    return expr.doit() if isinstance(expr, sp.Basic) else expr


@functools.lru_cache(maxsize=None)
def _isotropic_dynamics():
    """Derive, once, with a generic ``alpha > 0``: dynamics, learning rates and kappa_t / alpha."""
    steps = []
    e = sp.Function("e")
    K = alg.alpha * Identity(N * C)
    step_matrix = (Identity(N * C) - eta * K).doit()
    steps.append(("f_{t+1} - y = (I - eta K)(f_t - y) with K = alpha I: I - eta K =", step_matrix))
    factor = alg.isotropy_constant(step_matrix)
    recurrence = e(t + 1) - factor * e(t)
    e0 = sp.Symbol("e_0")
    solution = sp.rsolve(recurrence, e(t), {e(0): e0})
    steps.append(("each component solves e(t+1) = (1 - alpha eta) e(t) (rsolve):",
                  sp.Eq(e(t), solution)))
    (optimal,) = sp.solve(sp.Eq(factor, 0), eta)
    stable = sp.solve_univariate_inequality(sp.Abs(factor) < 1, eta, relational=False)
    steps.append(("one-step convergence: solve 1 - alpha eta = 0", sp.Eq(eta, optimal)))
    steps.append(("stable window: |1 - alpha eta| < 1", stable))
    s_ = sp.Symbol("s", integer=True, nonnegative=True)
    series = sp.simplify(sp.summation(eta * factor**s_, (s_, 0, t - 1)))
    steps.append(("test point: f_t(x') = f_0(x') - K(x',X) sum_{s<t} eta (1 - alpha eta)^s e_0, "
                  "the geometric sum is kappa_t / alpha", series))
    return (sp.simplify(solution / e0)), optimal, stable, series, tuple(steps)


def _finish_isotropic(d: Derivation, K_cross):
    ratio, optimal, stable, series, steps = _isotropic_dynamics()
    a = d.alpha
    d.steps += [(text, expr.subs(alg.alpha, a) if isinstance(expr, sp.Basic) else expr)
                for text, expr in steps]
    e0 = MatrixSymbol("e_0", N * C, 1)
    f0 = MatrixSymbol("f_0(X')", N2 * C, 1)
    d.dynamics = ratio.subs(alg.alpha, a) * e0
    d.learning_rate = LearningRate(optimal.subs(alg.alpha, a), stable.subs(alg.alpha, a))
    d._series = series
    if K_cross is not None:
        d.test_predictor = f0 - series.subs(alg.alpha, a) * K_cross * e0
    else:
        Kx = MatrixSymbol("K(X',X)", N2 * C, N * C)
        d.test_predictor = f0 - series.subs(alg.alpha, a) * Kx * e0


def _finish_general(d: Derivation, K, K_cross):
    """Non-isotropic: ``(I - eta K)^t e_0`` and the spectral form of the test predictor."""
    lam = sp.Symbol("lambda", positive=True)
    s_ = sp.Symbol("s", integer=True, nonnegative=True)
    g = sp.simplify(sp.summation(eta * (1 - eta * lam)**s_, (s_, 0, t - 1)))
    d.steps.append(("per eigenvalue lambda of K: sum_{s<t} eta (1 - eta lambda)^s "
                    "(so the matrix sum is K^{-1}(I - (I - eta K)^t))", g))
    e0 = MatrixSymbol("e_0", N * C, 1)
    f0 = MatrixSymbol("f_0(X')", N2 * C, 1)
    n = N * C
    d.dynamics = MatPow(Identity(n) - eta * K, t) * e0
    d.test_predictor = f0 - K_cross * Inverse(K) * (Identity(n) - MatPow(Identity(n) - eta * K, t)) * e0


def _cond(d: Derivation, name, expr, text):
    d.conditions.append(Condition(name, expr, text))


def _damping_condition(d: Derivation, text):
    # evaluate=False: rho is declared positive, so rho > 0 would collapse to True (no data left)
    _cond(d, "damping", sp.Gt(rho, 0, evaluate=False), "rho > 0 (and small enough that F_hat + rho I is invertible); "
          "the limit is rho -> 0 after the width limit. Push-through precondition: " + text)


def _width_violations(s: _Structure, *, backward: bool, first: bool) -> list:
    """Stated rank conditions that concrete widths and ``N`` violate (empty if unknown).

    ``Q_{l-1}`` invertible needs ``N <= M_{l-1} + b`` (``first``: also for ``l = 1``);
    ``backward``: ``Bt_l`` invertible needs ``N C <= M_l`` for every hidden layer.
    ``b = 1`` only when ``bias=True`` (as the ``M_0`` check of K-FAC).
    """
    if s.hidden is None or not isinstance(s.n_samples, int):
        return []
    n, b = s.n_samples, 1 if s.bias else 0
    c = s.n_outputs if isinstance(s.n_outputs, int) else 1
    out = []
    inputs = ([(0, s.widths[0])] if first and s.widths is not None else []) + \
        [(k + 1, w) for k, w in enumerate(s.hidden)]
    out += [f"Q_{k} singular: M_{k} + b = {w + b} < N = {n}" for k, w in inputs if w + b < n]
    if backward:
        out += [f"Bt_{k + 1} singular: M_{k + 1} = {w} < N C = {n * c}"
                for k, w in enumerate(s.hidden) if w < n * c]
    return out


# ----------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------


def _derive_gd(d: Derivation, s: _Structure):
    nC, n2C = N * C, N2 * C
    P = sp.Symbol("P", positive=True, integer=True)
    J, Jx = MatrixSymbol("J", nC, P), MatrixSymbol("J'", n2C, P)
    d.steps.append(("gd: F_hat + rho I := I (rho ignored); K(X',X) = J' I^{-1} J^T / N",
                    (Jx * Identity(P).I * J.T / N)))
    Theta, ThetaX = MatrixSymbol("Theta", nC, nC), MatrixSymbol("Theta'", n2C, nC)
    K_cross = replace_grams((Jx * Identity(P).I * J.T / N).doit(), {(Jx, J): ThetaX, (J, J): Theta})
    d.steps.append(("with Theta(X',X) = J' J^T:", K_cross))
    sums = {Theta: LayerSum(layer_matrix("Theta", layer, nC, nC), *_layers(s)),
            ThetaX: LayerSum(layer_matrix("Theta'", layer, n2C, nC), *_layers(s))}
    K_cross = _expand(K_cross.xreplace(sums))
    K = _expand((Theta / N).xreplace(sums))
    d.preconditioner = d.limit = K
    d.cross_limit = K_cross
    d.steps.append(("Theta = sum_l Theta_l; K = Theta / N", K))
    d.alpha = None
    d.alpha_reason = ("K = Theta / N is not proportional to I: gradient descent is governed by "
                      "the NTK spectrum (condition number of Theta)")
    _finish_general(d, K, K_cross)


def _derive_exact(d: Derivation, s: _Structure):
    nC, n2C = N * C, N2 * C
    P = sp.Symbol("P", positive=True, integer=True)
    J, Jx = MatrixSymbol("J", nC, P), MatrixSymbol("J'", n2C, P)
    K = Jx * (J.T * J / N + rho * Identity(P)).I * J.T / N
    d.steps.append(("exact: F = J^T J / N, K(X',X) = J' (F + rho I)^{-1} J^T / N", K))
    K1, pre = push_through(K)
    d.steps.append(("push-through (F + rho I)^{-1} J^T = N J^T (J J^T + N rho I)^{-1}", K1))
    _damping_condition(d, pre)
    Theta, ThetaX = MatrixSymbol("Theta", nC, nC), MatrixSymbol("Theta'", n2C, nC)
    K2 = replace_grams(K1, {(Jx, J): ThetaX, (J, J): Theta})
    d.steps.append(("Theta = J J^T, Theta(X',X) = J' J^T", K2))
    if s.depth_is_int and s.depth <= 6:
        blocks = [MatrixSymbol(f"J_{k}", nC, sp.Symbol(f"P_{k}")) for k in range(1, s.depth + 1)]
        Jb = BlockMatrix([blocks])
        d.steps.append(("J = [J_1 ... J_L] (block row), so J J^T = sum_l J_l J_l^T = sum_l Theta_l",
                        block_collapse(Jb * Jb.T)))
    limit_cross = rho_to_zero(K2, invertible={Theta})
    _cond(d, "Theta invertible", sp.Ne(sp.Determinant(Theta), 0),
          "the NTK Theta = sum_l Theta_l is invertible (N C distinct-enough samples)")
    d.steps.append(("rho -> 0 (spectral limit lambda/(lambda + N rho) -> 1 for lambda > 0)",
                    sp.Eq(sp.Symbol("lim"), sp.Tuple(*alg.spectral_limit()))))
    d.steps.append(("K(X',X) -> Theta(X',X) Theta^{-1}", limit_cross))
    limit = rho_to_zero(K2.xreplace({ThetaX: Theta}), invertible={Theta})
    d.steps.append(("training set: K -> Theta Theta^{-1}", limit))
    sums = {Theta: LayerSum(layer_matrix("Theta", layer, nC, nC), *_layers(s)),
            ThetaX: LayerSum(layer_matrix("Theta'", layer, n2C, nC), *_layers(s))}
    d.preconditioner = _expand(K2.xreplace({ThetaX: Theta}).xreplace(sums))
    d.limit = limit
    d.cross_limit = _expand(limit_cross.xreplace(sums))
    d.alpha = alg.isotropy_constant(limit)
    _finish_isotropic(d, d.cross_limit)


def _derive_block_diagonal(d: Derivation, s: _Structure):
    nC, n2C = N * C, N2 * C
    Pl = sp.IndexedBase("P")[layer]
    J, Jx = layer_matrix("J", layer, nC, Pl), layer_matrix("J'", layer, n2C, Pl)
    if s.depth_is_int and s.depth <= 6:
        Js = [J.subs(layer, k) for k in range(1, s.depth + 1)]
        Jb = BlockMatrix([Js])
        Fb = BlockDiagMatrix(*[(Jk.T * Jk / N + rho * Identity(Jk.shape[1])) for Jk in Js])
        d.steps.append(("F_hat + rho I = blockdiag_l(J_l^T J_l / N + rho I); its inverse is "
                        "blockwise, so J (F_hat + rho I)^{-1} J^T / N =",
                        block_collapse(Jb * Fb.I * Jb.T / N)))
    term = Jx * (J.T * J / N + rho * Identity(Pl)).I * J.T / N
    d.steps.append(("block diagonal: K(X',X) = sum_l J_l' (F_ll + rho I)^{-1} J_l^T / N, layer term",
                    term))
    term1, pre = push_through(term)
    _damping_condition(d, pre)
    Th, ThX = layer_matrix("Theta", layer, nC, nC), layer_matrix("Theta'", layer, n2C, nC)
    term2 = replace_grams(term1, {(Jx, J): ThX, (J, J): Th})
    d.steps.append(("push-through per block, Theta_l = J_l J_l^T", term2))
    _cond(d, "Theta_l invertible", sp.Ne(sp.Determinant(Th), 0),
          "every per-layer kernel Theta_l is invertible (true for l = 1 even if M_0 < N: "
          "Schur product theorem)")
    lim_term = rho_to_zero(term2, invertible={Th})
    d.steps.append(("rho -> 0 per layer: Theta_l(X',X) Theta_l^{-1}", lim_term))
    lim_train = rho_to_zero(term2.xreplace({ThX: Th}), invertible={Th})
    d.steps.append(("training set: each layer contributes", lim_train))
    d.preconditioner = _expand(LayerSum(term2.xreplace({ThX: Th}), *_layers(s)))
    d.limit = _expand(LayerSum(lim_train, *_layers(s)))
    d.cross_limit = _expand(LayerSum(lim_term, *_layers(s)))
    d.alpha = alg.isotropy_constant(LayerSum(lim_train, *_layers(s)))
    d.limit = d.alpha * Identity(nC)
    d.steps.append(("alpha = sum_l 1 (a sum of L identities)", d.alpha))
    _finish_isotropic(d, d.cross_limit)


def _kron_blocks(M: sp.Matrix, n) -> BlockMatrix:
    """``M (x) I_n`` as an explicit block matrix (for ``block_collapse``)."""
    return BlockMatrix([[M[i, j] * Identity(n) if M[i, j] != 0 else sp.ZeroMatrix(n, n)
                         for j in range(M.cols)] for i in range(M.rows)])


def _derive_block_tridiagonal(d: Derivation, s: _Structure):
    from .tridiagonal import btd_alpha, btd_weights, tridiagonal_ones

    nC, n2C = N * C, N2 * C
    L = s.depth
    P = sp.Symbol("P", positive=True, integer=True)
    concrete = s.depth_is_int
    T = sp.ImmutableMatrix(tridiagonal_ones(L)) if concrete else MatrixSymbol("T", L, L)
    D, Dx = MatrixSymbol("Jbar", L * nC, P), MatrixSymbol("Jbar'", L * n2C, P)
    G = KP(T, Identity(nC))
    one = OneMatrix(L, 1)
    J, Jx = KP(one.T, Identity(nC)) * D, KP(one.T, Identity(n2C)) * Dx
    d.steps.append(("BTD keeps F_ll' = J_l^T J_l' / N for |l - l'| <= 1: with Jbar = "
                    "blockdiag(J_l) and T the L x L tri-diagonal matrix of ones, "
                    "F_hat = Jbar^T (T (x) I) Jbar / N and J = (1^T (x) I) Jbar", T))
    if concrete and L <= 5:
        Js = [MatrixSymbol(f"J_{k}", nC, sp.Symbol(f"P_{k}")) for k in range(1, L + 1)]
        Db = BlockDiagMatrix(*Js)
        Fb = block_collapse(Db.T * _kron_blocks(T, nC) * Db / N)
        ok = all((Fb.blocks[i, j] - (T[i, j] * Js[i].T * Js[j] / N)).doit() in (0, sp.ZeroMatrix(*Fb.blocks[i, j].shape))
                 or (T[i, j] == 0 and Fb.blocks[i, j].is_ZeroMatrix)
                 for i in range(L) for j in range(L))
        d.steps.append(("check (block_collapse): blocks of Jbar^T (T (x) I) Jbar / N are "
                        "T_ll' J_l^T J_l' / N", sp.sympify(ok)))
        if not ok:  # pragma: no cover - a failed derivation must not pass silently
            raise ArithmeticError("BTD factorisation F_hat = Jbar^T (T (x) I) Jbar / N failed")
        d.steps.append(("and J = (1^T (x) I) Jbar:",
                        block_collapse(_kron_blocks(sp.ones(1, L), nC) * Db)))
    K = Jx * (D.T * G * D / N + rho * Identity(P)).I * J.T / N
    K1, pre = push_through(K)
    _damping_condition(d, pre + " (T is indefinite for L >= 3, so F_hat may be indefinite)")
    ThD, ThDx = MatrixSymbol("Theta_D", L * nC, L * nC), MatrixSymbol("Theta_D'", L * n2C, L * nC)
    K2 = replace_grams(K1, {(Dx, D): ThDx, (D, D): ThD})
    d.steps.append(("push-through with G = T (x) I; Theta_D = Jbar Jbar^T = blockdiag(Theta_l)", K2))
    _cond(d, "Theta_l invertible", sp.Ne(sp.Determinant(layer_matrix("Theta", layer, nC, nC)), 0),
          "every per-layer kernel Theta_l is invertible (Theta_D positive definite)")

    # rho -> 0 for any symmetric S = T: the lemma lim (G Theta_D + eps)^{-1} G = R (R^T Theta_D R)^{-1} R^T
    r = sp.Symbol("r", positive=True, integer=True)
    U, W = MatrixSymbol("U", L, r), MatrixSymbol("W", r, r)
    R = KP(U, Identity(nC))
    Y0 = R * Inverse(R.T * ThD * R) * R.T
    Gf = R * KP(W, Identity(nC)) * R.T
    check = alg.cancel_inverse_runs((Gf * ThD * Y0).doit())
    d.steps.append(("lemma: write T = U W U^T (U a basis of range(T)), R = U (x) I, "
                    "Y0 = R (R^T Theta_D R)^{-1} R^T; then G Theta_D Y0 = G:",
                    sp.Eq(sp.Symbol("G*Theta_D*Y0"), check)))
    if check != Gf.doit() and combine_kronecker(check) != combine_kronecker(Gf.doit()):
        raise ArithmeticError("BTD limit lemma failed")  # pragma: no cover
    d.steps.append(("so (G Theta_D + eps)^{-1} G - Y0 = -eps (G Theta_D + eps)^{-1} Y0 -> 0 "
                    "(G Theta_D is similar to the symmetric A = Theta_D^{1/2} G Theta_D^{1/2} and "
                    "Theta_D^{1/2} R spans range(A)); with 1 = T c (1 lies in range(T) for every L):",
                    None))
    c = MatrixSymbol("c", L, 1)
    Kx_general = KP(one.T, Identity(n2C)) * ThDx * Y0 * KP(c, Identity(nC))
    d.steps.append(("K(X',X) -> (1^T (x) I) Theta_D(X',X) Y0 (c (x) I)", Kx_general))
    # training set: 1^T (x) I = (c^T T) (x) I = (c^T U W) (x) I  R^T
    K_train = KP(c.T * U * W, Identity(nC)) * R.T * ThD * Y0 * KP(c, Identity(nC))
    K_train = alg.cancel_inverse_runs(K_train.doit())
    K_train = combine_kronecker(K_train)
    d.steps.append(("training set, using 1^T = c^T T = c^T U W U^T:", K_train))
    d.steps.append(("= (c^T T c) I = (1^T c) I: alpha = 1^T T^+ 1 (1^T z = 0 for z in null(T), "
                    "so every solution c of T c = 1 gives the same alpha)", None))
    if concrete:
        cvec = sp.ImmutableMatrix(btd_weights(L))
        if T * cvec != sp.ones(L, 1):  # pragma: no cover
            raise ArithmeticError("btd_weights(L) does not solve T c = 1")
        alpha_val = (sp.ones(1, L) * cvec)[0, 0]
        if alpha_val != btd_alpha(L):  # pragma: no cover
            raise ArithmeticError("1^T c != btd_alpha(L)")
        d.steps.append(("c = T^+ 1 (ngdsym.tridiagonal.btd_weights), T c = 1 checked exactly",
                        cvec.T))
        d.alpha = alpha_val
        Ths = [layer_matrix("Theta", k, nC, nC) for k in range(1, L + 1)]
        ThXs = [layer_matrix("Theta'", k, n2C, nC) for k in range(1, L + 1)]
        ThD_b, ThDx_b = BlockDiagMatrix(*Ths), BlockDiagMatrix(*ThXs)
        if T.det() != 0:
            cross = sp.MatAdd(*[cvec[k] * ThXs[k] * Ths[k].I for k in range(L) if cvec[k] != 0])
            d.steps.append(("T invertible (L != 3s + 2): U = I, Y0 = Theta_D^{-1}, K(X',X) -> "
                            "sum_l c_l Theta_l(X',X) Theta_l^{-1}", cross))
            d.limit = d.alpha * Identity(nC)
        else:
            Ue = sp.ImmutableMatrix(sp.Matrix.hstack(*T.columnspace()))
            cross = (KP(sp.ImmutableMatrix(sp.ones(1, L)), Identity(n2C)) * ThDx_b * KP(Ue, Identity(nC))
                     * Inverse(KP(Ue.T, Identity(nC)) * ThD_b * KP(Ue, Identity(nC)))
                     * KP(Ue.T * cvec, Identity(nC)))
            d.steps.append(("T singular (L = 3s + 2): U = basis of range(T); the test kernel "
                            "depends on the Theta_l through R^T Theta_D R (it is not "
                            "sum_l c_l Theta_l(X',X) Theta_l^{-1}; L = 2 is exact NGD)", Ue))
            d.limit = d.alpha * Identity(nC)
        d.cross_limit = cross
        d.preconditioner = K2.xreplace({ThDx: ThD}).xreplace({ThD: ThD_b, T: T})
    else:
        d.alpha = btd_alpha(L)
        w = btd_weights(L, layer)
        d.steps.append(("c_l = (T^+ 1)_l in closed form (ngdsym.tridiagonal.btd_weights)", w))
        d.limit = d.alpha * Identity(nC)
        d.cross_limit = Kx_general
        d.steps.append(("for L != 3s + 2 (T invertible): K(X',X) -> sum_l c_l Theta_l(X',X) "
                        "Theta_l^{-1}",
                        LayerSum(w * layer_matrix("Theta'", layer, n2C, nC)
                                 * layer_matrix("Theta", layer, nC, nC).I, *_layers(s))))
        d.preconditioner = K2.xreplace({ThDx: ThD})
    d.steps.append(("alpha = 1^T T^+ 1", d.alpha))
    _finish_isotropic(d, d.cross_limit)


def _hadamard_simplify(expr):
    """``(A (x) B) o (C (x) D) = (A o C) (x) (B o D)``, ``I o X = I`` for unit-diagonal ``X``,
    ``1 o X = X``; scalars pulled out of Hadamard products."""
    def unit_diag(x):
        if isinstance(x, (Identity, OneMatrix)):
            return True
        if isinstance(x, KP):
            return all(unit_diag(a) for a in x.args)
        return False

    def rw(e):
        if isinstance(e, (sp.MatAdd, MatMul, KP, Inverse, PseudoInverse, LayerSum)):
            args = [rw(a) if isinstance(a, sp.MatrixExpr) else a for a in e.args]
            if isinstance(e, LayerSum):
                return LayerSum(rw(e.term), *e.limits)
            return e.func(*args).doit()
        if isinstance(e, HadamardProduct):
            args = [rw(a) for a in e.args]
            coeff = sp.S.One
            mats = []
            for a in args:
                if isinstance(a, MatMul):
                    cf, ms = a.as_coeff_matrices()
                    coeff *= cf
                    a = MatMul(*ms) if len(ms) > 1 else ms[0]
                mats.append(a)
            if len(mats) == 2:
                a, b = mats
                if isinstance(a, Identity) and unit_diag(b) or isinstance(b, Identity) and unit_diag(a):
                    return coeff * Identity(a.shape[0])
                if isinstance(a, Identity) and isinstance(b, KP) and len(b.args) == 2:
                    a = KP(Identity(b.args[0].shape[0]), Identity(b.args[1].shape[0]))
                if isinstance(a, KP) and isinstance(b, KP) and len(a.args) == len(b.args) and \
                        all(x.shape == y.shape for x, y in zip(a.args, b.args)):
                    return coeff * rw(KP(*[HadamardProduct(x, y) for x, y in zip(a.args, b.args)]))
                if isinstance(a, OneMatrix):
                    return coeff * b
                if isinstance(b, OneMatrix):
                    return coeff * a
            return coeff * HadamardProduct(*mats)
        return e
    return rw(sp.sympify(expr))


def _broadcast(A, Ones):
    """``A (x) 1_CC`` with the scalar coefficient of ``A`` pulled out (SymPy's KP cannot hold it)."""
    A = sp.sympify(A)
    if isinstance(A, MatMul):
        coeff, mats = A.as_coeff_matrices()
        return coeff * KP(MatMul(*mats) if len(mats) > 1 else mats[0], Ones)
    return KP(A, Ones)


def _kfac_layer_term(d, s, l, Min, Mout, *, output=False, first=False):
    """K-FAC's layer-``l`` term of ``K(X', X)``: finite ``rho`` and ``rho -> 0`` (theory.md section 2)."""
    nC, n2C = N * C, N2 * C
    sq = sp.sqrt(rho)
    Hb, HbX = layer_matrix("Hbar", l - 1, N, Min), layer_matrix("Hbar'", l - 1, N2, Min)
    Q, QX = layer_matrix("Q", l - 1, N, N), layer_matrix("Q'", l - 1, N2, N)
    Ones = OneMatrix(C, C)
    A_res = HbX * (Hb.T * Hb / N + sq * Identity(Min)).I * Hb.T
    A_res1, preA = push_through(A_res)
    forward = replace_grams(A_res1, {(HbX, Hb): QX, (Hb, Hb): Q})
    if output:
        # f = u_L, so delta_{L,c}(x_n) = e_c: Delta_L = 1_N (x) I_C and B_L = Delta_L^T Delta_L / N
        DeltaL = KP(OneMatrix(N, 1), Identity(C))
        DeltaLx = KP(OneMatrix(N2, 1), Identity(C))
        B_L = combine_kronecker((DeltaL.T * DeltaL / N).doit()).doit()
        d.steps.append(("output layer: delta_{L,c} = e_c, Delta_L = 1_N (x) I_C, so "
                        "B_L = Delta_L^T Delta_L / N =", B_L))
        B_res = DeltaLx * (B_L + sq * Identity(C)).I * DeltaL.T
        backward = combine_kronecker(B_res.doit())
        Bt = combine_kronecker((DeltaL * DeltaL.T).doit())
        # (1 1^T)^+ = 1 1^T / N^2: Penrose conditions checked on OneMatrix products
        pinv = OneMatrix(N, N) / N**2
        o = OneMatrix(N, N)
        penrose = [(o * pinv * o).doit() - o, (pinv * o * pinv).doit() - pinv]
        ok = all(sp.simplify(p.doit()) in (0, sp.ZeroMatrix(N, N)) or p.doit().is_ZeroMatrix
                 for p in penrose)
        d.steps.append(("Bt_L = Delta_L Delta_L^T has rank C < N C; (1 1^T)^+ = 1 1^T / N^2 "
                        "(Penrose conditions hold); Bt_L =", Bt))
        if not ok:  # pragma: no cover
            raise ArithmeticError("pseudo-inverse of 1 1^T")
        term = HadamardProduct(backward, _broadcast(forward, Ones)) / N
        back_lim = combine_kronecker((DeltaLx * DeltaL.T * KP(pinv, Identity(C)) * N).doit())
        back_lim = combine_kronecker(back_lim.doit())
        fw_lim = rho_to_zero(forward, invertible=() if first else {Q}, damping=rho)
        lim = _hadamard_simplify(HadamardProduct(back_lim, _broadcast(fw_lim, Ones)) / N)
        return term, lim, preA
    De, DeX = layer_matrix("Delta", l, nC, Mout), layer_matrix("Delta'", l, n2C, Mout)
    Bt, BtX = layer_matrix("Bt", l, nC, nC), layer_matrix("Bt'", l, n2C, nC)
    B_res = DeX * (De.T * De / N + sq * Identity(Mout)).I * De.T
    B_res1, preB = push_through(B_res)
    backward = replace_grams(B_res1, {(DeX, De): BtX, (De, De): Bt})
    term = _hadamard_simplify(HadamardProduct(backward, _broadcast(forward, Ones)) / N)
    lim = _hadamard_simplify(HadamardProduct(rho_to_zero(backward, invertible={Bt}),
                                             _broadcast(rho_to_zero(forward, invertible=() if first else {Q}),
                                                       Ones)) / N)
    return term, lim, preA + "; " + preB


def _derive_kfac(d: Derivation, s: _Structure):
    """K-FAC: ``alpha = N (L - 1) + 1``.

    Why not the released code's ``N L``: with our definition ``B_l = (1/N) sum_{n,c}
    delta_{l,c} delta_{l,c}^T``, the output layer has ``delta_{L,c} = e_c``, so ``B_L = I_C``
    and ``F_hat_LL = I_C (x) A_{L-1} = F_LL`` -- the output block is the exact Fisher block and
    contributes ``I`` (as in exact NGD).  Its backward Gram ``Bt_L = 1 1^T (x) I_C`` has rank
    ``C < N C``: the projection onto its range is ``(1 1^T / N) (x) I_C``, and ``N`` times it,
    Hadamard the forward projection, is ``I`` -- not ``N I``.  Each hidden layer, whose
    ``Bt_l`` (``N C <= M_l``) and ``Q_{l-1}`` (``N <= M_{l-1}`` (+1 with bias)) are invertible,
    contributes ``N (I o I) = N I``.  ``N L`` would follow only if ``Bt_L`` were invertible
    (treating the output layer like a hidden one), which it is not for ``N > 1``.
    """
    nC = N * C
    L = s.depth
    sym_width = lambda k: _M[k]  # noqa: E731
    if s.kfac_damping is KFACDamping.EXACT:
        lam_b, lam_a = sp.symbols("beta a", positive=True)
        lim = sp.limit(lam_b * lam_a / (lam_b * lam_a + rho), rho, 0, "+")
        d.steps.append(("kfac_damping='exact': (B (x) A + rho I)^{-1} acts on eigenpairs "
                        "(beta_i a_j) as 1/(beta_i a_j + rho); on the range of J_l^T "
                        "beta_i a_j > 0 and beta a/(beta a + rho) ->", lim))
        d.steps.append(("so the rho -> 0 limit equals that of the 'factors' damping "
                        "(B + sqrt(rho)) (x) (A + sqrt(rho)) derived below", None))
    # Kronecker-factored entry: mixed-product rule
    Mo, Mi = sp.symbols("M_l M_{l-1}", positive=True, integer=True)
    dn, dm = MatrixSymbol("delta_nc", Mo, 1), MatrixSymbol("delta_mc'", Mo, 1)
    hn, hm = MatrixSymbol("hbar_n", Mi, 1), MatrixSymbol("hbar_m", Mi, 1)
    Binv, Ainv = MatrixSymbol("Btilde^-1", Mo, Mo), MatrixSymbol("Atilde^-1", Mi, Mi)
    entry = (KP(dn, hn).T * KP(Binv, Ainv) * KP(dm, hm) / N)
    d.steps.append(("K-FAC: F_hat_ll = B_l (x) A_{l-1}, A = Hbar^T Hbar / N, B = Delta^T Delta / N; "
                    "J_l row (n,c) = delta_nc^T (x) hbar_n^T; entry (n,c),(m,c') of "
                    "J_l (Btilde (x) Atilde)^{-1} J_l^T / N, by the mixed-product rule:",
                    combine_kronecker(entry.doit())))
    d.steps.append(("= (delta_nc^T Btilde^{-1} delta_mc')(hbar_n^T Atilde^{-1} hbar_m) / N: the "
                    "Hadamard product [Delta Btilde^{-1} Delta^T] o [(Hbar Atilde^{-1} Hbar^T) (x) 1_CC] / N",
                    None))
    pres = []
    terms, lims = [], []
    if s.depth_is_int:
        hidden_layers = list(range(1, L))
        for k in hidden_layers:
            Min = (s.widths[k - 1] + (1 if s.bias else 0)) if s.widths is not None else sym_width(k - 1)
            Mout = s.widths[k] if s.widths is not None else sym_width(k)
            term, lim, pre = _kfac_layer_term(d, s, k, Min, Mout, first=(k == 1))
            terms.append(term)
            lims.append(lim)
            pres.append(pre)
        Min = (s.widths[L - 1] + (1 if s.bias else 0)) if s.widths is not None else sym_width(L - 1)
        term, lim, pre = _kfac_layer_term(d, s, L, Min, C, output=True, first=(L == 1))
        terms.append(term)
        lims.append(lim)
        pres.append(pre)
        K_cross_terms = lims
    else:
        tf, lf, pre1 = _kfac_layer_term(d, s, 1, _M[0], _M[1], first=True)
        tg, lg, pre = _kfac_layer_term(d, s, layer, _M[layer - 1], _M[layer])
        to, lo, preo = _kfac_layer_term(d, s, L, _M[L - 1], C, output=True)
        terms = [tf, LayerSum(tg, layer, 2, L - 1), to]
        K_cross_terms = [lf, LayerSum(lg, layer, 2, L - 1), lo]
        pres = [pre1, pre, preo]
    d.steps.append(("push-through on each factor (damping sqrt(rho) each), Bt = Delta Delta^T, "
                    "Q = Hbar Hbar^T: hidden layer term", terms[0]))
    d.steps.append(("output layer term", terms[-1]))
    _damping_condition(d, "; ".join(dict.fromkeys(pres)))
    cross = sp.MatAdd(*K_cross_terms)
    d.steps.append(("rho -> 0 (Bt(X',X)(Bt + eps)^{-1} -> Bt(X',X) Bt^+, hidden Bt_l and "
                    "Q_l (l >= 1) invertible; Q_0 possibly rank-deficient, kept as Q_0^+)", cross))
    swap = {}
    for sym in cross.atoms(MatrixSymbol):
        nm = sym.args[0]
        if isinstance(nm, sp.Indexed) and str(nm.base).endswith("'"):
            base = str(nm.base)[:-1]
            swap[sym] = layer_matrix(base, nm.indices[0], sym.shape[1], sym.shape[1])
    train_terms = [_hadamard_simplify(alg.cancel_inverse_runs(
        (t_.xreplace(swap) if not isinstance(t_, LayerSum) else
         LayerSum(t_.term.xreplace(swap), *t_.limits)).doit())) for t_ in K_cross_terms]
    d.preconditioner = sp.MatAdd(*[(t_.xreplace(swap) if not isinstance(t_, LayerSum)
                                    else LayerSum(t_.term.xreplace(swap), *t_.limits))
                                   for t_ in terms])
    d.cross_limit = cross
    d._train_kernel = sp.MatAdd(*train_terms)
    # training set: the first layer's forward projection Q_0 Q_0^+ is I iff N <= rank(Hbar_0)
    Q0 = layer_matrix("Q", 0, N, N)
    first_full = {PseudoInverse(Q0): Inverse(Q0)}
    train_full = [_hadamard_simplify(alg.cancel_inverse_runs(x.xreplace(first_full).doit()))
                  for x in train_terms]
    limit_full = sp.MatAdd(*train_full).doit()
    d.steps.append(("training set, hidden layers N C <= M_l, N <= M_{l-1} (+1 with bias): "
                    "each hidden layer gives N (I o I) = N I, the output layer I", limit_full))
    b = sp.Symbol("b", nonnegative=True, integer=True) if s.bias is None else int(s.bias)
    _cond(d, "hidden widths", sp.Le(N * C, _M[layer]),
          "N C <= M_l for every hidden layer l < L (Bt_l invertible)")
    _cond(d, "layer inputs", sp.Le(N, _M[layer - 1] + b),
          "N <= M_{l-1} + b for every layer (Q_{l-1} invertible; b = 1 with bias, 0 without)")
    alpha_full = alg.isotropy_constant(limit_full)
    # M_0 < N: leverage scores
    _kfac_leverage_steps(d)
    rank0 = None
    if s.widths is not None and isinstance(s.n_samples, int):
        rank0 = s.widths[0] + (1 if s.bias else 0)
    if rank0 is not None and rank0 < s.n_samples and (not s.depth_is_int or s.depth >= 1):
        d.limit = sp.MatAdd(*train_terms).doit()
        # radial isotropic inputs: the first layer's N diag(P^H_0) becomes rank0 I (steps)
        radial_alpha = alg.isotropy_constant(sp.MatAdd(rank0 * Identity(nC), *train_full[1:])) \
            .subs(N, s.n_samples) if s.depth >= 2 else None
        d.alpha = None
        d.alpha_reason = (
            f"M_0{' + 1' if s.bias else ''} = {rank0} < N = {s.n_samples}: the first layer "
            "contributes N diag(h_n^T (H^T H)^+ h_n) (leverage scores), isotropic only for inputs "
            f"in radial isotropic position, where it contributes rank(Hbar_0) = {rank0} I"
            + (f" (alpha = {radial_alpha})" if radial_alpha is not None else ""))
        _finish_general(d, d.limit, cross)
        return
    violated = _width_violations(s, backward=True, first=False)
    if violated:
        d.limit = sp.MatAdd(*train_terms).doit()
        d.alpha = None
        d.alpha_reason = ("a rank condition fails at these widths (" + "; ".join(violated) +
                          "): that layer's projection P^D_l o P^H_{l-1} is not I, so K is not "
                          "proportional to I")
        _finish_general(d, d.limit, cross)
        return
    if s.bias is None and s.widths is not None and isinstance(s.n_samples, int) and \
            s.widths[0] + 1 == s.n_samples:
        _cond(d, "bias", sp.true, "needs the bias column: M_0 + 1 = N")
    d.limit = limit_full
    d.alpha = sp.expand(alpha_full)
    d.steps.append(("alpha = isotropy constant of the limit (the released code's N L would need "
                    "an invertible Bt_L; ours has rank C)", d.alpha))
    _finish_isotropic(d, cross)


@functools.lru_cache(maxsize=None)
def _leverage_derivation():
    """Leverage scores of the first layer (K-FAC, M_0 < N), derived on small exact examples."""
    steps = []
    M0, n = sp.symbols("M_0 N", positive=True, integer=True)
    h = MatrixSymbol("h_n", M0, 1)
    lev = (h.T * Inverse(n / M0 * Identity(M0)) * h).doit()
    steps.append(("K-FAC, M_0 < N: the first layer gives N I o P^H_0 = N diag(P^H_0), "
                  "P^H_0 = H (H^T H)^+ H^T; leverage h_n^T (H^T H)^+ h_n, trace = rank(H) = M_0. "
                  "Inputs in isotropic position H^T H = (N/M_0) I give leverage", lev))
    steps.append(("... = M_0/N when ||h_n|| = 1 (radial), so N diag(P^H_0) = M_0 I", None))
    # explicit radial isotropic example: 3 unit vectors at 120 degrees in R^2
    H = sp.Matrix([[sp.cos(2 * sp.pi * k / 3), sp.sin(2 * sp.pi * k / 3)] for k in range(3)])
    P = sp.simplify(H * (H.T * H).inv() * H.T)
    contrib = sp.simplify(3 * sp.diag(*[P[i, i] for i in range(3)]))
    steps.append(("example N = 3, M_0 = 2, inputs at 120 degrees (radial isotropic): "
                  "H^T H, then N diag(P^H_0)", sp.Tuple(sp.simplify(H.T * H), contrib)))
    H2 = sp.Matrix([[1, 0], [0, 1], [1 / sp.sqrt(2), 1 / sp.sqrt(2)]])
    P2 = sp.simplify(H2 * (H2.T * H2).inv() * H2.T)
    contrib2 = sp.simplify(3 * sp.diag(*[P2[i, i] for i in range(3)]))
    steps.append(("counterexample: unit inputs (1,0), (0,1), (1,1)/sqrt(2) (not isotropic): "
                  "N diag(P^H_0)", contrib2))
    return tuple(steps), contrib, contrib2


def _kfac_leverage_steps(d):
    steps, _, _ = _leverage_derivation()
    d.steps += list(steps)


@functools.lru_cache(maxsize=None)
def activation_gamma(activation: str):
    """``gamma = P[phi'(u) != 0]`` for ``u ~ N(0, q)``, ``q > 0``, derived with SymPy.

    The zero set of ``phi'`` on the reals comes from ``solveset``; ``gamma`` is the Gaussian
    integral over its complement (ReLU: ``(0, oo)``, ``1/2``; tanh, erf: ``phi' > 0``
    everywhere -- empty zero set -- so ``gamma = 1``).

    Returns
    -------
    (gamma, steps)

    >>> activation_gamma("relu")[0], activation_gamma("tanh")[0], activation_gamma("erf")[0]
    (1/2, 1, 1)
    """
    from .kernels import ACTIVATION_EXPRESSIONS, U

    phi = ACTIVATION_EXPRESSIONS[activation]
    dphi = sp.simplify(sp.diff(phi, U))
    zeros = sp.solveset(sp.Eq(dphi, 0), U, sp.S.Reals)
    support = sp.Complement(sp.S.Reals, zeros)
    q = sp.Symbol("q", positive=True)
    density = sp.exp(-U**2 / (2 * q)) / sp.sqrt(2 * sp.pi * q)
    intervals = support.args if isinstance(support, sp.Union) else (support,)
    total = sp.S.Zero
    for iv in intervals:
        if not isinstance(iv, sp.Interval):
            raise ArithmeticError(f"unexpected support {support} for {activation}")
        total += sp.integrate(density, (U, iv.start, iv.end))
    gamma = sp.simplify(total)
    steps = ((f"{activation}: phi'(u) =", dphi),
             ("zero set of phi' on the reals (solveset)", zeros),
             ("gamma = P[phi'(u) != 0], u ~ N(0, q): integral of the density over", support),
             ("gamma =", gamma))
    return gamma, steps


@functools.lru_cache(maxsize=None)
def _unit_projection_example():
    """A unit's rho -> 0 term is the projection onto its active samples (3 samples, 1 inactive)."""
    d1, d2 = sp.symbols("d_1 d_2", nonzero=True, real=True)
    q = sp.symbols("q_11 q_12 q_13 q_22 q_23 q_33", real=True)
    Q = sp.Matrix([[q[0], q[1], q[2]], [q[1], q[3], q[4]], [q[2], q[4], q[5]]])
    Dm = sp.diag(d1, d2, 0)
    Th = Dm * Q * Dm
    eps = sp.Symbol("epsilon", positive=True)
    M = Th * (Th + eps * sp.eye(3)).inv()
    lim = M.applyfunc(lambda e: sp.limit(sp.cancel(e), eps, 0, "+"))
    # C = 2, N = 1: unit Gram is rank 1 < N C = 2
    a, b, h2 = sp.symbols("a b h2", positive=True)
    Jv = sp.Matrix([[a], [b]])  # delta_c for c = 1, 2 (times ||hbar|| = sqrt(h2))
    Th2 = h2 * Jv * Jv.T
    M2 = (Th2 * (Th2 + eps * sp.eye(2)).inv()).applyfunc(lambda e: sp.limit(sp.cancel(e), eps, 0, "+"))
    return Th, lim, Th2, M2, sp.simplify(M2[0, 1])


def _derive_unit_wise(d: Derivation, s: _Structure):
    nC, n2C = N * C, N2 * C
    L = s.depth
    Mi = sp.Symbol("M_{l-1}+1", positive=True, integer=True)
    Dli = MatrixSymbol("D_li", N, N)
    Hb, HbX = layer_matrix("Hbar", layer - 1, N, Mi), layer_matrix("Hbar'", layer - 1, N2, Mi)
    DliX = MatrixSymbol("D'_li", N2, N2)
    J, Jx = Dli * Hb, DliX * HbX
    term = Jx * (J.T * J / N + rho * Identity(Mi)).I * J.T / N
    d.steps.append(("unit-wise (C = 1): unit (l, i) owns row i of [W_l | b_l]; "
                    "J_li = D_li Hbar_{l-1}, D_li = diag_n(delta_li(x_n)); unit term", term))
    t1, pre = _push_through_products(term, J, Jx)
    _damping_condition(d, pre)
    Th = MatrixSymbol("Theta_li", N, N)
    d.steps.append(("push-through; Theta_li = D_li Q_{l-1} D_li", t1))
    Thl, lim, Th2, M2, off = _unit_projection_example()
    d.steps.append(("rho -> 0: Theta_li Theta_li^+ = projection onto range(D_li Q D_li) = "
                    "range(D_li) if Q_{l-1} is invertible; explicit case, samples 1, 2 active, "
                    "3 inactive (exact limit)", lim))
    d.steps.append(("each unit term -> diag_n(1[delta_li(x_n) != 0]); delta_li = phi'(u_li) "
                    "(backpropagated factor, nonzero generically), so active means phi'(u_li(x_n)) != 0; "
                    "the output unit (C = 1) has D = I and contributes I", None))
    S_li = MatrixSymbol(sp.IndexedBase("S")[layer, _unit], N, N)
    hidden_sum = LayerSum(LayerSum(S_li, _unit, 1, _M[layer]), layer, 1, L - 1)
    limit_a = sp.MatAdd(hidden_sum, Identity(N))
    d.steps.append(("K -> diag(a_n), a_n = sum_{l<L} #{i: phi'(u_li(x_n)) != 0} + 1 "
                    "(S_li = diag of active samples)", limit_a))
    d.preconditioner = LayerSum(LayerSum(Th * Inverse(Th + N * rho * Identity(N)), _unit, 1,
                                         _M[layer]), layer, 1, L)
    d.cross_reason = (
        "unit-wise test kernel sum_{l,i} Theta_li(X',X) Theta_li^+ involves ratios "
        "delta_li(x')/delta_li(x_n) on each unit's active set (for ReLU, joint activation "
        "patterns), an expectation of a pseudo-inverse that is not a function of the "
        "per-layer infinite-width kernels (Theta_l, S_l, Bt_l)")
    b = sp.Symbol("b", nonnegative=True, integer=True) if s.bias is None else int(s.bias)
    _cond(d, "Q invertible", sp.Le(N, _M[layer - 1] + b),
          "Q_{l-1} invertible (N <= M_{l-1} + b; b = 1 with bias, 0 without)")
    _cond(d, "gradient independence", sp.true,
          "backpropagated factors nonzero and the fraction of active units per sample -> gamma "
          "(law of large numbers over units; relative fluctuation O(M^{-1/2}) for ReLU)")
    _cond(d, "small damping", sp.true,
          "rho far below the per-unit Gram scale (entries O(1/(M N))): the width limit first")
    # C > 1 breaks isotropy
    d.steps.append(("C > 1: a unit's Gram has rank <= N < N C; N = 1, C = 2 example: "
                    "Theta = ||hbar||^2 delta delta^T, its projection", M2))
    d.steps.append(("off-diagonal entry (nonzero): sum over units of rank-N projections is not "
                    "a multiple of I", off))
    if s.n_outputs is not None:  # default C = 1
        if not (isinstance(s.n_outputs, int) and s.n_outputs == 1):
            d.alpha = None
            d.alpha_reason = (f"unit-wise needs C = 1; with C = {s.n_outputs} outputs each unit's "
                              "Gram has rank <= N < N C, so its projection is not a multiple "
                              "of I and K is not isotropic")
            d.limit = None
            Kg = MatrixSymbol("K", nC, nC)
            _finish_general(d, Kg, MatrixSymbol("K(X',X)", n2C, nC))
            return
    violated = _width_violations(s, backward=False, first=True)
    if violated:
        d.alpha = None
        d.alpha_reason = ("a rank condition fails at these widths (" + "; ".join(violated) +
                          "): a unit's Gram D_li Q_{l-1} D_li has rank below its active-sample "
                          "count, so its projection is not diagonal and K is not isotropic")
        d.limit = None
        _finish_general(d, MatrixSymbol("K", nC, nC), MatrixSymbol("K(X',X)", n2C, nC))
        return
    if s.activation is not None:
        gamma, gsteps = activation_gamma(s.activation)
        d.steps += list(gsteps)
    else:
        gamma = _gamma
        for act in ("relu", "tanh", "erf"):
            d.steps += list(activation_gamma(act)[1])
    # wide limit: (1/M_l) sum_i S_li -> E[S_li] = gamma I (law of large numbers over units)
    wide = limit_a.xreplace({S_li: gamma * Identity(N)})
    d.steps.append(("wide limit: each unit's active-set diagonal S_li -> its mean gamma I", wide))
    alpha_val = alg.isotropy_constant(wide)
    if alpha_val is None:  # pragma: no cover - a failed derivation must not pass silently
        raise ArithmeticError(f"unit-wise wide limit {wide} is not a multiple of I")
    if s.hidden is not None:
        alpha_val = alpha_val.doit().subs({_M[k + 1]: w for k, w in enumerate(s.hidden)})
        d.steps.append(("with the hidden widths M_l = " + ", ".join(map(str, s.hidden)), alpha_val))
    d.alpha = sp.expand(alpha_val)
    d.limit = d.alpha * Identity(N)
    d.steps.append(("so a_n -> alpha = gamma sum_{l<L} M_l + 1 (K / alpha -> I)", d.alpha))
    _finish_isotropic(d, None)


def _push_through_products(term, J, Jx):
    """Push-through for a Jacobian block that is a product ``J = D Hbar`` (unit-wise)."""
    X = MatrixSymbol("J_li", *J.shape)
    Xx = MatrixSymbol("J'_li", *Jx.shape)
    core = Xx * (X.T * X / N + rho * Identity(X.shape[1])).I * X.T / N
    out, pre = push_through(core)
    Th = MatrixSymbol("Theta_li", N, N)
    ThX = MatrixSymbol("Theta'_li", N2, N)
    return replace_grams(out, {(Xx, X): ThX, (X, X): Th}), pre


@functools.lru_cache(maxsize=None)
def _diagonal_example():
    """One hidden tanh layer of width 2, scalar inputs x_1, x_2 (N = 2, C = 1): K at rho -> 0."""
    x = sp.symbols("x_1 x_2", real=True)
    w = sp.symbols("w_1 w_2", real=True)
    v = sp.symbols("v_1 v_2", real=True)
    theta = list(w) + list(v)

    def f(xn):
        return sum(vi * sp.tanh(wi * xn) for wi, vi in zip(w, v))

    J = sp.Matrix([[sp.diff(f(xn), p) for p in theta] for xn in x])
    n = 2
    Fdiag = sp.diag(*[(J[:, p].T * J[:, p])[0, 0] / n for p in range(len(theta))])
    r = sp.Symbol("rho", positive=True)
    # (diag F + rho I)^{-1} is diagonal with entries 1/(F_pp + rho), continuous at rho = 0
    # wherever F_pp > 0 (a parameter with F_pp = 0 has a zero column and drops out).
    Kr = J * sp.diag(*[1 / (Fdiag[p, p] + r) for p in range(len(theta))]) * J.T / n
    K0 = Kr.subs(r, 0)
    point = {x[0]: 1, x[1]: 2, w[0]: 1, w[1]: -sp.Rational(1, 2), v[0]: 1, v[1]: 1}
    off = K0[0, 1]
    off_at = off.subs(point)
    return J, K0, off, off_at, sp.N(off_at, 30)


def _derive_diagonal(d: Derivation, s: _Structure):
    nC, n2C = N * C, N2 * C
    P = sp.Symbol("P", positive=True, integer=True)
    J, Jx = MatrixSymbol("J", nC, P), MatrixSymbol("J'", n2C, P)
    Fd = sp.DiagonalMatrix(J.T * J / N)
    K = Jx * (Fd + rho * Identity(P)).I * J.T / N
    d.steps.append(("diagonal: F_hat = diag(F); K(X',X) = J' (diag(J^T J)/N + rho I)^{-1} J^T / N", K))
    try:
        push_through(K)
        raise ArithmeticError("push-through must not apply to diag(F)")  # pragma: no cover
    except PushThroughNotApplicable as err:
        d.steps.append(("push-through does not apply (diag(F) is not a damped Gram of J): " +
                        str(err).split(":")[0], None))
    Jm, K0, off, off_at, off_num = _diagonal_example()
    d.steps.append(("entrywise: K_nm = (1/N) sum_p J_np J_mp / (F_pp + rho); rho -> 0 "
                    "example: one tanh hidden layer of width 2, f(x) = sum_i v_i tanh(w_i x), "
                    "two scalar inputs; Jacobian", Jm))
    d.steps.append(("K_12 at rho -> 0 (sum_p J_1p J_2p / (J_1p^2 + J_2p^2))", off))
    d.steps.append(("at x = (1, 2), w = (1, -1/2), v = (1, 1): K_12 =", sp.Eq(off_at, off_num)))
    d.preconditioner = (Jx * (Fd + rho * Identity(P)).I * J.T / N).xreplace({Jx: J})
    d.limit = d.preconditioner.subs(rho, 0).doit()
    d.alpha = None
    d.alpha_reason = (f"K is not proportional to I: in a two-sample, one-hidden-layer tanh "
                      f"network K_12 = {sp.N(off_num, 6)} != 0 at rho -> 0 (steps); its "
                      "convergence is governed by K's condition number, like GD")
    d.cross_reason = ("the diagonal method's kernel (1/N) sum_p J_p(x') J_p(x) / F_pp is an "
                      "average of per-parameter ratios, not a function of per-layer kernels")
    _damping_condition(d, "diag(F) + rho I invertible for rho > 0 (a dead parameter, F_pp = 0, "
                       "has J_np = 0 and drops out)")
    Kg = MatrixSymbol("K", nC, nC)
    _finish_general(d, Kg, MatrixSymbol("K(X',X)", n2C, nC))


_DERIVERS = {
    Method.GD: _derive_gd,
    Method.EXACT: _derive_exact,
    Method.BLOCK_DIAGONAL: _derive_block_diagonal,
    Method.BLOCK_TRIDIAGONAL: _derive_block_tridiagonal,
    Method.KFAC: _derive_kfac,
    Method.UNIT_WISE: _derive_unit_wise,
    Method.DIAGONAL: _derive_diagonal,
}


@functools.lru_cache(maxsize=256)
def _derive_cached(method: Method, s: _Structure) -> Derivation:
    d = Derivation(method=method, structure=s.as_dict(), _input=(method, s))
    _DERIVERS[method](d, s)
    values = {sym: v for sym, v in ((N, s.n_samples), (C, s.n_outputs)) if isinstance(v, int)}
    if method is Method.UNIT_WISE and s.n_outputs is None:
        values[C] = 1  # unit-wise is derived for the default C = 1
    if values:
        for name in ("preconditioner", "limit", "cross_limit", "alpha", "dynamics",
                     "test_predictor", "_train_kernel"):
            expr = getattr(d, name)
            if isinstance(expr, sp.Basic):
                setattr(d, name, expr.subs(values))
        if d.learning_rate is not None:
            d.learning_rate = LearningRate(*(x.subs(values) for x in d.learning_rate))
        d._series = d._series.subs(values) if d._series is not None else None
    return d


def derive(method, **structure) -> Derivation:
    """Derive ``K``, ``alpha``, conditions, dynamics and test predictor for ``method``.

    Parameters
    ----------
    method : str or Method
        One of ``"gd"``, ``"exact"``, ``"block_diagonal"``, ``"block_tridiagonal"``,
        ``"kfac"``, ``"unit_wise"``, ``"diagonal"``.
    depth : int or SymPy symbol, optional
        Number of layers ``L`` (default: the symbol ``L``).
    n_samples : int or SymPy symbol, optional
        ``N`` (default: the symbol ``N``).
    n_outputs : int, optional
        ``C`` (default 1, or ``widths[-1]``).
    widths : list of int, optional
        ``[M_0, ..., M_L]`` (as :class:`numeric.MLP`) or the hidden widths ``[M_1, ..., M_{L-1}]``.
    activation : {"relu", "tanh", "erf", "linear"}, optional
    kfac_damping : {"factors", "exact"}, optional
    bias : bool, optional
        Whether layers have biases (adds 1 to each layer input's rank; K-FAC conditions).

    Returns
    -------
    Derivation
        Cached: the same arguments return the same object (treat it as read-only).

    Raises
    ------
    ValueError
        Unknown method or structure key, ``depth < 1``, ``n_outputs < 1``, inconsistent widths.

    Examples
    --------
    >>> derive("block_diagonal", depth=3).alpha
    3
    >>> derive("exact").limit
    I
    >>> derive("gd").alpha is None
    True
    >>> derive("unit_wise", n_outputs=2).alpha_reason.startswith("unit-wise needs C = 1")
    True
    """
    m = Method.parse(method)
    s = _parse_structure(structure)
    return _derive_cached(m, s)
