r"""Unit-wise NGD stays close to its linearisation: theorem and symbolic proof (theory.md section 5).

The paper's statement (a deviation of order ``A^3 rho^{-6} / sqrt(M)``) could not be
consulted, so this module states and proves the project's own theorem.  Every bound
below is *composed by SymPy* from the proof's steps (:func:`unit_wise_bound`); the
exponents are read off the composed expressions, and every implication between the
forms is checked by a polynomial certificate (:func:`nonnegative_certificate`).  The
formulas quoted in this docstring are checked against the derivation by the tests.

Setting and normalisation (theory.md section 1)
-----------------------------------------------
One output (``C = 1``), ``N`` training inputs, loss ``(1/2N) ||f(theta) - y||^2``.
Normalised Jacobian and residual (``A`` absorbs the ``sqrt(N)``)::

    Jn(theta) = J(theta) / sqrt(N)        e_t = (f(theta_t) - y) / sqrt(N)

so that ``F = Jn^T Jn = J^T J / N``, ``grad L = Jn^T e`` and ``||e_t|| = sqrt(2 L_t)``.
Unit-wise Fisher: ``F_hat = blockdiag_u Jn_u^T Jn_u``, ``u`` running over the units
(row ``i`` of ``[W_l | b_l]``, bias included), ``G(theta) = (F_hat(theta) + rho I)^{-1}``.

* true unit-wise NGD:  ``theta_{t+1} = theta_t - eta G(theta_t) Jn(theta_t)^T e_t``,
  ``F_hat`` recomputed at every iterate;
* linearised dynamics: ``e^lin_{t+1} = (I - eta K_0) e^lin_t``, ``e^lin_0 = e_0``,
  ``K_0 = Jn_0 G_0 Jn_0^T = J_0 (F_hat_0 + rho I)^{-1} J_0^T / N`` the unit-wise
  preconditioned kernel at initialisation (``numeric.preconditioned_kernel``);
* deviation ``d_t = e_t - e^lin_t``, so ``||f_t - f^lin_t||_2 = sqrt(N) ||d_t||``.

``M`` is the smallest hidden width; it only sets the scale in which the Lipschitz
constant of ``Jn`` is measured (``A`` absorbs any other choice).

Theorem
-------
Let ``C = 1``, ``phi`` continuously differentiable, ``rho > 0``, ``eta > 0``, ``T >= 1``.
Let ``B`` be a convex set containing ``theta_0, ..., theta_T`` on which

    (H1) ``||Jn(theta)|| <= A``  and  (H2) ``sqrt(M) ||Jn(theta) - Jn(theta')|| <= A ||theta - theta'||``,

and let (H3) ``eta lambda_max(K_0) <= 2`` (the linearised dynamics are non-expansive;
implied by ``eta <= 2 rho / A^2``).  With ``R = max_{t < T} ||e_t||``::

    sup_{t <= T} ||f_t - f^lin_t||_2 <= sqrt(N) b(T; R),
    b(T; R) = eta^2 A^3 R^2 (T^2 - T/2 + A^2 T (T - 1) / rho) / (rho^2 sqrt(M)).

A priori version: under (H3), if (H1)-(H2) hold on the ball of radius ``D = 2 eta A R_0 T / rho``
around ``theta_0``, ``||e_0|| <= R_0`` and the width condition ``b(T; 2 R_0) <= R_0``
holds, then every iterate stays in that ball, ``R <= 2 R_0``, and the bound holds with
``R = 2 R_0`` (induction on ``t``: ``||e_t|| <= ||e^lin_t|| + ||d_t|| <= R_0 + b(T; 2 R_0)``).

Consequences, under ``A >= 1``, ``0 < rho <= 1``:

* horizon form: ``b(T; R) <= 2 eta^2 T^2 R^2 A^5 rho^{-3} / sqrt(M)``
  (exponents ``A^5``, ``rho^{-3}``, ``M^{-1/2}``; these are the exponents of ``b`` itself
  for ``T >= 2``, while for ``T = 1`` the drift terms vanish and ``b = eta^2 A^3 R^2 / (2 rho^2 sqrt(M))``);
* with the learning rate in the safe range ``eta <= 2 rho / A^2``:
  ``b(T; R) <= 4 eta T^2 R^2 A^3 rho^{-2} / sqrt(M) <= C' A^3 rho^{-6} / sqrt(M)``,
  so ``sup_t ||f_t - f^lin_t||_2 <= C A^3 rho^{-6} / sqrt(M)`` with
  ``C = 16 sqrt(N) eta T^2 R_0^2`` (a priori, ``R = 2 R_0``).  The paper's form follows
  and is loose by ``rho^{-4}``.  Without the learning-rate condition the chain gives
  ``A^5 rho^{-3}``, which implies the ``A^3 rho^{-6}`` form only when
  ``A^2 rho^3 <= 1``; ``A >= 1, rho <= 1`` alone do not suffice.
* ``C`` is proportional to ``eta``, whose admissible range ``eta <= 2 rho / A^2`` itself
  depends on ``A`` and ``rho``: at the largest safe learning rate the same chain gives
  ``32 sqrt(N) T^2 R_0^2 A rho^{-1} / sqrt(M)`` (form ``"largest_safe_rate_l2"``), so the
  ``A^3 rho^{-6}`` form is an upper bound for every fixed admissible ``eta``, not the
  chain's true dependence on ``A`` and ``rho``.

Proof sketch (each line is a :class:`ProofStep`; ``S_t = ||theta_t - theta_0||``):
``||G|| <= 1/rho``; ``K_0`` is symmetric PSD (``G_0`` is SPD), so under (H3)
``||I - eta K_0|| = max |1 - eta kappa| <= 1`` over its eigenvalues ``kappa in [0, lambda_max]``
and ``||e^lin_t|| <= ||e_0||``; ``||theta_{t+1} - theta_t|| <= eta A R / rho``; ``S_t <= eta A R t / rho``;
``||Jn_t - Jn_0|| <= A S_t / sqrt(M)``; ``||F_hat_t - F_hat_0|| <= 2 A ||Jn_t - Jn_0||``
(per-unit blocks are column blocks of ``Jn``); ``||G_t - G_0|| <= ||F_hat_t - F_hat_0|| / rho^2``
(``G - G' = G (F_hat' - F_hat) G'``); the mean-value Jacobian ``Jbar_t`` of the step obeys
``||Jbar_t - Jn_0|| <= A (S_t + S_{t+1}) / (2 sqrt(M))``;
``d_{t+1} = (I - eta K_0) d_t - eta E_t e_t`` with
``E_t = Jbar_t G_t Jn_t^T - K_0``, so ``||d_{t+1}|| <= ||d_t|| + eta ||E_t|| R``; summing
gives ``b(T; R)``.

Scope: ``phi`` must be ``C^1`` for ``f(theta_{t+1}) - f(theta_t) = Jbar_t (theta_{t+1} - theta_t)``
with a genuine Lipschitz ``A``; for ReLU, ``Jn`` jumps where a pre-activation changes
sign and (H2) fails on any ball that crosses such a point, so ReLU measurements are
an empirical check only.  At fixed ``rho > 0`` and ``M -> oo`` the Fisher blocks of the
hidden units are ``O(1/M)``, so on the hidden layers unit-wise NGD becomes gradient descent
with learning rate ``eta / rho`` (the single output unit's block stays ``O(1)`` and keeps its
damped natural-gradient step); the isotropic regime of theory.md section 2 needs ``rho << 1/(M N)``, where
this bound is far from tight.

Examples
--------
>>> from ngdsym.unitwise_bound import unit_wise_bound, SYMBOLS
>>> thm = unit_wise_bound()
>>> thm.exponents["bound"] == {"A": 5, "rho": -3, "M": sp.Rational(-1, 2)}
True
>>> thm.exponents["safe_rate"] == {"A": 3, "rho": -2, "M": sp.Rational(-1, 2)}
True
>>> thm.exponents["largest_safe_rate_l2"] == {"A": 1, "rho": -1, "M": sp.Rational(-1, 2)}
True
>>> all(check.holds for check in thm.implications if check.expected)
True
>>> round(thm.evaluate("bound", A=1, rho=1, M=4, eta=1, R=1, T=1), 6)
0.25
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import sympy as sp
from sympy.calculus.util import maximum

__all__ = [
    "SYMBOLS",
    "MEASURED",
    "ProofStep",
    "Implication",
    "UnitWiseBound",
    "unit_wise_bound",
    "theorem_markdown",
    "theorem_latex",
    "dominate",
    "plain_text",
    "nonnegative_certificate",
    "leading_exponent",
]


# ---------------------------------------------------------------------- symbols
def _pos(name):
    return sp.Symbol(name, positive=True)


@dataclass(frozen=True)
class _Symbols:
    """The theorem's constants (all positive) and indices."""

    A: sp.Symbol = _pos("A")            # Jacobian regularity constant, (H1)-(H2)
    rho: sp.Symbol = _pos("rho")        # damping of F_hat + rho I
    M: sp.Symbol = _pos("M")            # smallest hidden width
    eta: sp.Symbol = _pos("eta")        # learning rate
    R: sp.Symbol = _pos("R")            # max_{t<T} ||e_t|| (normalised residual)
    R_0: sp.Symbol = _pos("R_0")        # ||e_0|| <= R_0
    N: sp.Symbol = _pos("N")            # number of training inputs
    t: sp.Symbol = sp.Symbol("t", integer=True, nonnegative=True)   # step index
    T: sp.Symbol = sp.Symbol("T", integer=True, positive=True)      # horizon
    s: sp.Symbol = sp.Symbol("s", integer=True, nonnegative=True)   # summation index
    u: sp.Symbol = sp.Symbol("u", nonnegative=True)                 # segment parameter
    lam: sp.Symbol = sp.Symbol("lambda", nonnegative=True)          # eigenvalue of F_hat


#: The symbols of the theorem (``SYMBOLS.A``, ``SYMBOLS.rho``, ...).
SYMBOLS = _Symbols()


@dataclass(frozen=True)
class _Measured:
    """Quantities measured on one trajectory at step ``t`` (inputs of the local inequalities).

    All norms are operator (spectral) norms for matrices and 2-norms for vectors, in the
    normalisation of the module docstring.
    """

    J_t: sp.Symbol = _pos("Jnorm_t")        # ||Jn(theta_t)||
    J_0: sp.Symbol = _pos("Jnorm_0")        # ||Jn(theta_0)||
    e_t: sp.Symbol = _pos("e_t")            # ||e_t||
    path_t: sp.Symbol = _pos("path_t")      # sum_{s<t} ||theta_{s+1} - theta_s||
    S_t: sp.Symbol = _pos("S_t")            # ||theta_t - theta_0||
    S_next: sp.Symbol = _pos("S_next")      # ||theta_{t+1} - theta_0||
    Jdrift_t: sp.Symbol = _pos("Jdrift_t")  # ||Jn_t - Jn_0||
    Fdrift_t: sp.Symbol = _pos("Fdrift_t")  # ||F_hat_t - F_hat_0||
    Gdrift_t: sp.Symbol = _pos("Gdrift_t")  # ||G_t - G_0||
    dev_t: sp.Symbol = _pos("dev_t")        # ||d_t||
    err_t: sp.Symbol = _pos("err_t")        # ||E_t e_t|| = ||(e_t - e_{t+1}) / eta - K_0 e_t||
    dev_sum_t: sp.Symbol = _pos("devsum_t")  # sum_{s<t} eta ||E_s e_s||


#: Symbols of measured per-step quantities (``MEASURED.J_t``, ...), see :class:`ProofStep`.
MEASURED = _Measured()


# ------------------------------------------------------------------ data types
@dataclass(frozen=True)
class ProofStep:
    """One inequality of the proof: ``quantity <= local <= bound``.

    Attributes
    ----------
    name : str
        Key (``"step"``, ``"displacement"``, ...).
    quantity : str
        The quantity bounded, in LaTeX (:func:`plain_text` turns it into ASCII).
    local : sympy.Expr
        The inequality as proved at one step, in terms of the theorem's constants and
        of measured quantities (:data:`MEASURED`), so it can be checked on a trajectory.
    bound : sympy.Expr
        The bound composed from the earlier steps (only :data:`SYMBOLS`).
    reason : str
        Why the local inequality holds (prose with ``$...$`` LaTeX math).
    """

    name: str
    quantity: str
    local: sp.Expr
    bound: sp.Expr
    reason: str


@dataclass(frozen=True)
class Implication:
    """``weaker >= stronger`` on a domain, checked by :func:`nonnegative_certificate`.

    ``expected`` says whether the implication is claimed (``True``) or shown to fail
    without an extra assumption (``False``; then ``holds`` is expected ``False``).
    """

    name: str
    text: str
    stronger: sp.Expr
    weaker: sp.Expr
    domain: str
    holds: bool
    expected: bool = True


@dataclass(frozen=True)
class UnitWiseBound:
    """The theorem with its proof chain (see the module docstring).

    Attributes
    ----------
    steps : tuple of ProofStep
        The chain, in order; ``step(name)`` looks one up.
    forms : dict str -> sympy.Expr
        ``"bound"``: ``b(T; R)`` (normalised, ``||d_t|| <= b``), ``"bound_l2"``:
        ``sqrt(N) b(T; R)``, ``"a_priori"``: ``b(T; 2 R_0)``, ``"a_priori_l2"``,
        ``"horizon"`` (``A >= 1, rho <= 1``), ``"safe_rate"`` (also ``eta <= 2 rho/A^2``),
        ``"safe_rate_l2"`` (its ``sqrt(N)``, a priori form), ``"largest_safe_rate_l2"`` (that at
        ``eta = 2 rho / A^2``),
        ``"paper"``: ``C A^3 rho^{-6} / sqrt(M)`` (``l2``, a priori), ``"paper_constant"``: ``C``.
    conditions : dict str -> sympy.Expr or Relational
        ``"learning_rate_max"`` (``2 rho / A^2``), ``"radius"`` (``D``), ``"width"``
        (``b(T; 2 R_0) <= R_0``), ``"min_width"`` (``M`` solving it with equality).
    exponents : dict str -> dict
        Leading exponents of ``A`` (``A -> oo``), ``rho`` (``rho -> 0``), ``M`` (``M -> oo``)
        of each form, from :func:`leading_exponent` (``T`` generic, i.e. ``T >= 2``).
    implications : tuple of Implication
    """

    steps: tuple
    forms: dict
    conditions: dict
    exponents: dict
    implications: tuple = field(default=())

    def step(self, name: str) -> ProofStep:
        for st in self.steps:
            if st.name == name:
                return st
        raise ValueError(f"no proof step {name!r}; choose one of {[st.name for st in self.steps]}")

    def expression(self, name: str) -> sp.Expr:
        """A form, condition or step bound by name."""
        if name in self.forms:
            return self.forms[name]
        if name in self.conditions:
            return self.conditions[name]
        return self.step(name).bound

    def evaluate(self, name: str, **values) -> float:
        """Numeric value of :meth:`expression` ``(name)`` for values given by symbol name.

        ``values`` may be NumPy arrays (broadcast).  Raises ``ValueError`` naming a missing symbol.
        """
        return _evaluate(self.expression(name), values)

    def evaluate_local(self, name: str, **values):
        """Numeric value of a step's local inequality (constants and :data:`MEASURED` by name)."""
        return _evaluate(self.step(name).local, values)

    # ----------------------------------------------------------------- render
    def markdown(self) -> str:
        return _render(self, "markdown")

    def latex(self) -> str:
        return _render(self, "latex")

    def text(self) -> str:
        return _render(self, "text")

    def __str__(self) -> str:
        return self.text()


@functools.lru_cache(maxsize=256)
def _lambdified(expr):
    free = tuple(sorted(expr.free_symbols, key=lambda x: x.name))
    return free, sp.lambdify(free, expr, "numpy")


def _evaluate(expr, values):
    import numpy as np

    free, fn = _lambdified(expr)
    missing = [x.name for x in free if x.name not in values]
    if missing:
        raise ValueError(f"missing value(s) for {missing} to evaluate {expr}; pass them as keyword arguments")
    out = fn(*[np.asarray(values[x.name], dtype=float) for x in free])
    out = np.asarray(out, dtype=float)
    return float(out) if out.ndim == 0 else out


# --------------------------------------------------------- symbolic utilities
def leading_exponent(expr, x, point):
    """``lim log(expr) / log(x)`` as ``x -> point`` (``oo`` or ``0``): the dominant power of ``x``.

    >>> x, y = sp.symbols("x y", positive=True)
    >>> leading_exponent(3 * x**2 + x**5 / y, x, sp.oo), leading_exponent(x / y + x / y**3, y, 0)
    (5, -3)
    """
    direction = "+" if point == 0 else "-"
    return sp.limit(sp.log(expr) / sp.log(x), x, point, direction)


def dominate(expr, increasing=(), decreasing=()):
    """A single-term upper bound of ``expr`` when every other symbol is positive.

    Drops the negative terms, then raises every positive term to the largest power of
    each symbol in ``increasing`` (valid for symbols ``>= 1``) and the smallest power of
    each symbol in ``decreasing`` (valid for symbols in ``(0, 1]``); a term may use
    ``T >= 1`` (an ``increasing`` symbol) as well.

    >>> A, r = sp.symbols("A r", positive=True)
    >>> dominate(A / r - 1 + A**3, increasing=[A], decreasing=[r])
    2*A**3/r
    """
    terms = sp.Add.make_args(sp.expand(expr))
    positive = [term for term in terms if term.as_coeff_Mul()[0] > 0]
    if not positive:
        raise ValueError(f"{expr} has no positive term to dominate")
    powers = [term.as_powers_dict() for term in positive]
    top = {x: max(p.get(x, 0) for p in powers) for x in increasing}
    low = {x: min(p.get(x, 0) for p in powers) for x in decreasing}
    out = 0
    for term, p in zip(positive, powers):
        factor = sp.Mul(*[x ** (top[x] - p.get(x, 0)) for x in increasing])
        factor *= sp.Mul(*[x ** (low[x] - p.get(x, 0)) for x in decreasing])
        out += term * factor
    return sp.factor(out)


def nonnegative_certificate(expr, substitutions):
    """Prove ``expr >= 0`` by positivity of coefficients (``True``) or report no proof (``False``).

    ``substitutions`` maps each constrained symbol to its parametrisation by a new
    nonnegative symbol (e.g. ``A -> 1 + a`` for ``A >= 1``, ``rho -> 1/(1 + r)`` for
    ``0 < rho <= 1``); every other symbol must be positive.  After substitution the
    expression is put over a common denominator; if the numerator, expanded as a
    polynomial in all symbols, has only nonnegative coefficients and the denominator is
    positive, ``expr >= 0`` on the whole domain.  ``False`` means "not certified".

    >>> A, a = sp.symbols("A a", positive=True)
    >>> nonnegative_certificate(A**3 - A, {A: 1 + a})
    True
    >>> nonnegative_certificate(A - A**3, {A: 1 + a})
    False
    """
    expr = sp.sympify(expr)
    for _ in range(len(substitutions) + 1):  # a parametrisation may use other constrained symbols
        if not expr.free_symbols & set(substitutions):
            break
        expr = expr.subs(substitutions)
    num, den = sp.fraction(sp.together(expr))
    num, den = sp.expand(num), sp.expand(den)
    if sp.sign(den) == -1 or den.could_extract_minus_sign():
        num, den = -num, -den
    if not den.is_positive:
        return False
    if num == 0:
        return True
    if not num.free_symbols:
        return bool(num >= 0)
    poly = sp.Poly(num)  # generators: the symbols and their roots (sqrt(M), ...), all >= 0
    if not all(g.is_nonnegative for g in poly.gens):
        return False
    return all(c >= 0 for c in poly.coeffs())


# ------------------------------------------------------------------ derivation
@functools.lru_cache(maxsize=None)
def unit_wise_bound() -> UnitWiseBound:
    """Derive the theorem (module docstring) step by step with SymPy.

    Each step's ``bound`` is obtained from the previous steps' bounds by substitution,
    summation or integration; only the local inequalities (operator-norm facts, stated
    with their reason) are written by hand.  Cached: the result is immutable.
    """
    S, Q = SYMBOLS, MEASURED
    A, rho, M, eta, R, R_0, N, t, T, s, u, lam = (
        S.A, S.rho, S.M, S.eta, S.R, S.R_0, S.N, S.t, S.T, S.s, S.u, S.lam)
    sqM = sp.sqrt(M)
    steps = []

    def add(name, quantity, local, bound, reason):
        bound = sp.factor(sp.simplify(bound))
        steps.append(ProofStep(name, quantity, sp.sympify(local), bound, reason))
        return bound

    # 1. ||G|| = max over the spectrum of F_hat (eigenvalues lam >= 0) of 1/(lam + rho)
    G_norm = maximum(1 / (lam + rho), lam, sp.Interval(0, sp.oo))
    add("preconditioner_norm", r"\|G(\theta)\| = \|(\hat F(\theta) + \rho I)^{-1}\|", G_norm, G_norm,
        r"$\hat F$ is block diagonal with PSD blocks, so its eigenvalues are $\lambda \ge 0$ and "
        r"$\|G\| = \max_{\lambda \ge 0} 1/(\lambda + \rho)$")

    # 2. lambda_max(K_0) <= ||Jn_0||^2 ||G_0||; (H3): |1 - eta kappa| <= 1 on [0, lambda_max]
    kappa = add("kernel_norm", r"\lambda_{\max}(K_0) = \|\tilde J_0 G_0 \tilde J_0^\top\|",
                Q.J_0**2 * G_norm, (Q.J_0**2 * G_norm).subs(Q.J_0, A),
                r"$G_0$ is symmetric positive definite (step 1), so $K_0 = \tilde J_0 G_0 \tilde J_0^\top$ is "
                r"symmetric PSD and $\lambda_{\max}(K_0) = \|K_0\|$; submultiplicativity, step 1, (H1)")
    eta_max = sp.solve(sp.Eq(1 - eta * kappa, -1), eta)[0]

    # 3. the linearised residual does not grow under (H3)
    add("linear_residual", r"\|e^{\mathrm{lin}}_t\|", R_0, R_0,
        r"$I - \eta K_0$ is symmetric (step 2), so $\|I - \eta K_0\| = \max_{\kappa} |1 - \eta \kappa| \le 1$ "
        r"over its eigenvalues $\kappa \in [0, \lambda_{\max}(K_0)]$ under (H3); $\|e_0\| \le R_0$")

    # 4. one step: ||eta G_t Jn_t^T e_t|| <= eta ||G_t|| ||Jn_t|| ||e_t||
    step_local = eta * G_norm * Q.J_t * Q.e_t
    step_bound = add("step", r"\|\theta_{t+1} - \theta_t\|", step_local, step_local.subs({Q.J_t: A, Q.e_t: R}),
                     r"$\theta_{t+1} - \theta_t = -\eta G_t \tilde J_t^\top e_t$; step 1, (H1), $\|e_t\| \le R$")

    # 5. displacement: triangle inequality, sum of the steps
    S_t = add("displacement", r"\|\theta_t - \theta_0\|", Q.path_t,
              sp.summation(step_bound.subs(t, s), (s, 0, t - 1)),
              r"triangle inequality over the steps $s < t$ (step 4)")

    # 6. Jacobian drift: (H2)
    Jdrift = add("jacobian_drift", r"\|\tilde J_t - \tilde J_0\|", A * Q.S_t / sqM, (A * Q.S_t / sqM).subs(Q.S_t, S_t),
                 r"(H2) between $\theta_t$ and $\theta_0$; step 5")

    # 7. unit-wise Fisher drift: per-unit blocks, column blocks of Jn
    Fdrift_local = (Q.J_t + Q.J_0) * Q.Jdrift_t
    Fdrift = add("fisher_drift", r"\|\hat F_t - \hat F_0\|", Fdrift_local,
                 Fdrift_local.subs({Q.J_t: A, Q.J_0: A, Q.Jdrift_t: Jdrift}),
                 r"$\|\mathrm{blockdiag}_u X_u\| = \max_u \|X_u\|$; "
                 r"$X^\top X - Y^\top Y = X^\top (X - Y) + (X - Y)^\top Y$ with $X = \tilde J_u(\theta_t)$, "
                 r"$Y = \tilde J_u(\theta_0)$ column blocks of $\tilde J$; step 6, (H1)")

    # 8. preconditioner drift: G_t - G_0 = G_t (F_hat_0 - F_hat_t) G_0
    Gdrift_local = G_norm**2 * Q.Fdrift_t
    Gdrift = add("preconditioner_drift", r"\|G_t - G_0\|", Gdrift_local, Gdrift_local.subs(Q.Fdrift_t, Fdrift),
                 r"$G_t - G_0 = G_t (\hat F_0 - \hat F_t) G_0$; steps 1 and 7")

    # 9. mean-value Jacobian of the step: Jbar_t = int_0^1 Jn(theta_t + u (theta_{t+1} - theta_t)) du
    seg_local = A / sqM * sp.integrate((1 - u) * Q.S_t + u * Q.S_next, (u, 0, 1))
    add("segment_drift", r"\|\bar J_t - \tilde J_0\|", seg_local,
                    seg_local.subs({Q.S_t: S_t, Q.S_next: S_t.subs(t, t + 1)}),
                    r"$\bar J_t = \int_0^1 \tilde J(\theta_t + u (\theta_{t+1} - \theta_t))\, du$; (H2) on the "
                    r"segment ($B$ convex) and $\|\theta_t + u(\theta_{t+1} - \theta_t) - \theta_0\| \le "
                    r"(1 - u) S_t + u S_{t+1}$; step 5")

    # 10. kernel error E_t = Jbar_t G_t Jn_t^T - Jn_0 G_0 Jn_0^T, three-term telescoping
    err_local = (seg_local * G_norm * Q.J_t + Q.J_0 * Q.Gdrift_t * Q.J_t + Q.J_0 * G_norm * Q.Jdrift_t) * Q.e_t
    err = add("linearisation_error", r"\|E_t e_t\| = \|(e_t - e_{t+1})/\eta - K_0 e_t\|", err_local,
              err_local.subs({Q.S_t: S_t, Q.S_next: S_t.subs(t, t + 1), Q.Gdrift_t: Gdrift,
                              Q.Jdrift_t: Jdrift, Q.J_t: A, Q.J_0: A, Q.e_t: R}),
              r"$e_{t+1} - e_t = -\eta \bar J_t G_t \tilde J_t^\top e_t$ (mean value, $\phi \in C^1$), "
              r"$E_t = (\bar J_t - \tilde J_0) G_t \tilde J_t^\top + \tilde J_0 (G_t - G_0) \tilde J_t^\top "
              r"+ \tilde J_0 G_0 (\tilde J_t - \tilde J_0)^\top$; steps 1, 6, 8, 9, (H1)")

    # 11. deviation recursion: d_{t+1} = (I - eta K_0) d_t - eta E_t e_t, non-expansive (H3)
    increment = eta * err
    add("deviation_step", r"\|d_{t+1}\| - \|d_t\|", eta * Q.err_t, increment,
        r"$d_{t+1} = (I - \eta K_0) d_t - \eta E_t e_t$ and $\|I - \eta K_0\| \le 1$ (H3); step 10")

    # 12. deviation: sum of the increments (d_0 = 0)
    bound = add("deviation", r"\|d_T\| = \|f_T - f^{\mathrm{lin}}_T\|_2 / \sqrt{N}", Q.dev_sum_t,
                sp.summation(increment, (t, 0, T - 1)),
                r"$d_0 = 0$, step 11 summed over $t < T$; the increments are $\ge 0$, so "
                r"$\sup_{t \le T} \|d_t\|$ has the same bound")

    # 13. a priori: ||e_t|| <= ||e^lin_t|| + ||d_t|| <= R_0 + b(T; 2 R_0) <= 2 R_0 under the width condition
    a_priori = sp.factor(bound.subs(R, 2 * R_0))
    steps.append(ProofStep("residual", r"\|e_t\|", R_0 + Q.dev_t, R_0 + a_priori,
                           r"triangle inequality, steps 3 and 12 with $R = 2 R_0$; $\le 2 R_0$ under the width "
                           r"condition, by induction on $t$"))
    width_condition = sp.Le(a_priori, R_0)
    min_width = sp.solve(sp.Eq(a_priori, R_0), M)[0]
    radius = S_t.subs({t: T, R: 2 * R_0})

    # ------------------------------------------------------------------ forms
    target = {A: 3, rho: -6, M: sp.Rational(-1, 2)}   # theory.md section 5: the claim being checked

    def with_target_exponents(form):
        """``C A^3 rho^-6 M^-1/2`` with ``C`` = the part of the single-term ``form`` free of ``A, rho, M``."""
        own = _monomial_exponents(form, (A, rho, M))
        constant = sp.simplify(form / sp.Mul(*[x**k for x, k in own.items()]))
        return constant, constant * sp.Mul(*[x**k for x, k in target.items()])

    horizon = dominate(bound, increasing=[A, T], decreasing=[rho])
    # safe learning rate: b = eta^2 c(...) <= eta * eta_max * c(...)
    safe_rate = dominate(sp.expand(bound / eta * eta_max), increasing=[A, T], decreasing=[rho])
    safe_rate_l2 = sp.sqrt(N) * safe_rate.subs(R, 2 * R_0)
    # C of the paper form is proportional to eta, whose range depends on A and rho: the largest safe rate
    largest_safe_rate_l2 = sp.factor(safe_rate_l2.subs(eta, eta_max))
    paper_constant, paper = with_target_exponents(safe_rate_l2)
    horizon_constant, horizon_paper = with_target_exponents(horizon)

    forms = {
        "bound": bound,
        "bound_l2": sp.sqrt(N) * bound,
        "a_priori": a_priori,
        "a_priori_l2": sp.sqrt(N) * a_priori,
        "horizon": horizon,
        "safe_rate": safe_rate,
        "safe_rate_l2": safe_rate_l2,
        "largest_safe_rate_l2": largest_safe_rate_l2,
        "paper": paper,
        "paper_constant": paper_constant,
    }
    conditions = {
        "learning_rate_max": eta_max,
        "radius": radius,
        "width": width_condition,
        "min_width": min_width,
    }
    exponents = {
        name: {x.name: leading_exponent(forms[name], x, pt) for x, pt in ((A, sp.oo), (rho, 0), (M, sp.oo))}
        for name in ("bound", "a_priori", "horizon", "safe_rate", "largest_safe_rate_l2", "paper")
    }

    # ------------------------------------------------------------ implications
    a, r, w, tau, k = sp.symbols("a r w tau k", nonnegative=True)
    box = {A: 1 + a, rho: 1 / (1 + r), T: 1 + tau}       # A >= 1, 0 < rho <= 1, T >= 1
    safe_eta = {eta: eta_max / (1 + w)}                   # 0 < eta <= 2 rho / A^2
    # A^2 rho^3 <= 1 with A >= 1: A = (1 + a)^3, rho = A^(-2/3) / (1 + k)
    small_damping = {rho: A ** sp.Rational(-2, 3) / (1 + k)}
    ratio = sp.simplify(horizon / horizon_paper)          # horizon form / (C'' A^3 rho^-6 / sqrt(M))
    implications = (
        Implication("increments_nonnegative", r"each increment $\eta \|E_t\| R \ge 0$, so $\sup_{t \le T} b(t) = b(T)$",
                    sp.S(0), increment, r"$t \ge 0$", nonnegative_certificate(increment, {})),
        Implication("horizon", r"$b(T; R) \le$ horizon form", bound, horizon,
                    r"$A \ge 1$, $0 < \rho \le 1$, $T \ge 1$", nonnegative_certificate(horizon - bound, box)),
        Implication("safe_rate", r"$b(T; R) \le$ safe-rate form", bound, safe_rate,
                    r"$A \ge 1$, $0 < \rho \le 1$, $T \ge 1$, $\eta \le 2\rho/A^2$",
                    nonnegative_certificate(safe_rate - bound, {**box, **safe_eta})),
        Implication("paper", r"safe-rate form (a priori, $\ell_2$) $\le C A^3 \rho^{-6} / \sqrt{M}$",
                    safe_rate_l2, paper, r"$0 < \rho \le 1$", nonnegative_certificate(paper - safe_rate_l2, box)),
        Implication("paper_constant_free", r"$C$ does not depend on $A$, $\rho$ or $M$", paper_constant,
                    paper_constant, "-", not (paper_constant.free_symbols & {A, rho, M})),
        Implication("horizon_implies_paper",
                    r"horizon form $\le C'' A^3 \rho^{-6} / \sqrt{M}$ without $\eta \le 2\rho/A^2$: the ratio is "
                    + "$" + sp.latex(ratio) + "$, unbounded as $A \\to \\infty$ at $\\rho = 1$",
                    horizon, horizon_paper, r"$A \ge 1$, $0 < \rho \le 1$",
                    sp.limit(ratio.subs(rho, 1), A, sp.oo).is_finite is True, expected=False),
        Implication("horizon_implies_paper_small_damping",
                    r"horizon form $\le C'' A^3 \rho^{-6} / \sqrt{M}$ when $A^2 \rho^3 \le 1$",
                    horizon, horizon_paper, r"$A \ge 1$, $A^2 \rho^3 \le 1$",
                    nonnegative_certificate((horizon_paper - horizon).subs(small_damping), {A: (1 + a) ** 3})),
    )
    return UnitWiseBound(steps=tuple(steps), forms=forms, conditions=conditions, exponents=exponents,
                         implications=implications)


def _monomial_exponents(expr, symbols):
    """Exponents of ``symbols`` in a single-term ``expr`` (``ValueError`` if it is a sum)."""
    expr = sp.factor(expr)
    if isinstance(expr, sp.Add):
        raise ValueError(f"{expr} is not a single term")
    powers = sp.powsimp(expr).as_powers_dict()
    return {x: powers.get(x, 0) for x in symbols}


# -------------------------------------------------------------------- render
#: How the measured quantities are displayed: symbol -> (LaTeX, plain text).
_DISPLAY = {
    MEASURED.J_t: (r"\|\tilde J_t\|", "||Jn_t||"),
    MEASURED.J_0: (r"\|\tilde J_0\|", "||Jn_0||"),
    MEASURED.e_t: (r"\|e_t\|", "||e_t||"),
    MEASURED.path_t: (r"\sum_{s<t} \|\theta_{s+1} - \theta_s\|", "sum_(s<t) ||theta_(s+1) - theta_s||"),
    MEASURED.S_t: ("S_t", "S_t"),
    MEASURED.S_next: ("S_{t+1}", "S_(t+1)"),
    MEASURED.Jdrift_t: (r"\|\tilde J_t - \tilde J_0\|", "||Jn_t - Jn_0||"),
    MEASURED.Fdrift_t: (r"\|\hat F_t - \hat F_0\|", "||F_hat_t - F_hat_0||"),
    MEASURED.Gdrift_t: (r"\|G_t - G_0\|", "||G_t - G_0||"),
    MEASURED.dev_t: (r"\|d_t\|", "||d_t||"),
    MEASURED.err_t: (r"\|E_t e_t\|", "||E_t e_t||"),
    MEASURED.dev_sum_t: (r"\sum_{s<T} \eta \|E_s e_s\|", "sum_(s<T) eta ||E_s e_s||"),
}

_PLAIN = [
    (r"\left", ""), (r"\right", ""), (r"\|", "||"), (r"\tilde J", "Jn"), (r"\hat F", "F_hat"),
    (r"\bar J", "Jbar"), (r"\mathrm{lin}", "lin"), (r"\mathrm{blockdiag}", "blockdiag"), (r"\max", "max"),
    (r"\sup", "sup"), (r"\sum", "sum"), (r"\int", "int"), (r"\lambda", "lambda"), (r"\kappa", "kappa"),
    (r"\theta", "theta"), (r"\rho", "rho"), (r"\eta", "eta"), (r"\phi", "phi"), (r"\ell", "l"),
    (r"\infty", "oo"), (r"\int", "int"), (r"\in", "in"), (r"\le", "<="), (r"\ge", ">="), (r"\top", "T"),
    (r"\to", "->"),
    (r"\ldots", ".."), (r"\cdot", "*"), (r"\,", ""), (r"\quad", "  "), ("$", ""),
]


def plain_text(latex: str) -> str:
    r"""ASCII rendering of the LaTeX used in this module's prose.

    >>> plain_text(r"$\|\tilde J_t - \tilde J_0\| \le A S_t / \sqrt{M}$")
    '||Jn_t - Jn_0|| <= A S_t / sqrt(M)'
    """
    out = latex
    out = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", out)
    out = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", out)
    for old, new in _PLAIN:
        out = out.replace(old, new)
    out = re.sub(r"_\{([^{}]*)\}", r"_(\1)", out)
    return out.replace("{", "").replace("}", "")


def _math(expr, style):
    """An expression (SymPy or LaTeX string) as inline math of ``style``."""
    if isinstance(expr, str):
        return plain_text(expr) if style == "text" else "$" + expr + "$"
    if style == "text":
        shown = sp.sympify(expr).subs({q: sp.Symbol(d[1]) for q, d in _DISPLAY.items()})
        return sp.sstr(shown)
    return "$" + sp.latex(sp.sympify(expr), symbol_names={q: d[0] for q, d in _DISPLAY.items()}) + "$"


def _prose(text, style):
    return plain_text(text) if style == "text" else text


def _render(thm: UnitWiseBound, style: str) -> str:
    m = functools.partial(_math, style=style)
    p = functools.partial(_prose, style=style)
    F, C, ex = thm.forms, thm.conditions, thm.exponents
    title = "Theorem (unit-wise NGD stays close to its linearisation)"

    def exps(name):
        sym = {"A": "A", "rho": r"\rho", "M": "M"}
        return m(r" \cdot ".join(f"{sym[k]}^{{{v}}}" for k, v in ex[name].items()))

    setting = (
        r"One output ($C = 1$), $N$ training inputs, loss $(1/2N)\|f - y\|^2$. Normalised Jacobian "
        r"$\tilde J = J/\sqrt{N}$ and residual $e_t = (f_t - y)/\sqrt{N}$; unit-wise Fisher "
        r"$\hat F = \mathrm{blockdiag}_u \tilde J_u^\top \tilde J_u$ (unit $u$: one row of $[W_l | b_l]$), "
        r"$G = (\hat F + \rho I)^{-1}$. True NGD: $\theta_{t+1} = \theta_t - \eta G(\theta_t) \tilde J(\theta_t)^\top e_t$ "
        r"with $\hat F$ recomputed at each iterate; linearised: $e^{\mathrm{lin}}_{t+1} = (I - \eta K_0) e^{\mathrm{lin}}_t$, "
        r"$K_0 = \tilde J_0 G_0 \tilde J_0^\top$, $e^{\mathrm{lin}}_0 = e_0$; $d_t = e_t - e^{\mathrm{lin}}_t$, "
        r"$S_t = \|\theta_t - \theta_0\|$; $M$ is the smallest hidden width.")
    hyps = [
        r"$\phi \in C^1$; $B$ is a convex set containing $\theta_0, \ldots, \theta_T$ on which "
        r"(H1) $\|\tilde J(\theta)\| \le A$ and (H2) $\sqrt{M} \|\tilde J(\theta) - \tilde J(\theta')\| \le A \|\theta - \theta'\|$;",
        r"(H3) $\eta \lambda_{\max}(K_0) \le 2$, implied by $\eta \le$ " + m(C["learning_rate_max"]) + ";",
        r"$\rho > 0$, $\eta > 0$, $T \ge 1$, and $R = \max_{t < T} \|e_t\|$.",
    ]
    conclusion = (r"$\sup_{t \le T} \|f_t - f^{\mathrm{lin}}_t\|_2 = \sqrt{N} \sup_{t \le T} \|d_t\| \le \sqrt{N}\, b(T; R)$, "
                  r"$b(T; R) =$ " + m(F["bound"]) + ".")
    a_priori = (r"A priori: under (H3), if $\|e_0\| \le R_0$, (H1)-(H2) hold on the ball of radius $D =$ " + m(C["radius"])
                + r" around $\theta_0$, and the width condition " + m(C["width"]) + r" holds (i.e. $M \ge$ "
                + m(C["min_width"]) + r"), then all iterates stay in the ball, $R \le 2 R_0$ and "
                r"$\sup_{t \le T} \|f_t - f^{\mathrm{lin}}_t\|_2 \le$ " + m(F["a_priori_l2"]) + ".")
    consequences = [
        r"horizon form: $b(T; R) \le$ " + m(F["horizon"]) + f" (leading exponents {exps('horizon')}, "
        r"those of $b$ itself for $T \ge 2$; at $T = 1$, $b =$ " + m(F["bound"].subs(SYMBOLS.T, 1)) + ");",
        r"if also $\eta \le$ " + m(C["learning_rate_max"]) + r": $b(T; R) \le$ " + m(F["safe_rate"])
        + f" (exponents {exps('safe_rate')}), so a priori "
        r"$\sup_{t \le T} \|f_t - f^{\mathrm{lin}}_t\|_2 \le$ " + m(F["safe_rate_l2"]) + r" $\le C A^3 \rho^{-6} / \sqrt{M}$ "
        r"with $C =$ " + m(F["paper_constant"]) + r" (the paper's form; loose by $\rho^{-4}$);",
        r"without the learning-rate condition the chain gives $A^5 \rho^{-3}$, which implies the "
        r"$A^3 \rho^{-6}$ form only when $A^2 \rho^3 \le 1$ ($A \ge 1$, $\rho \le 1$ alone do not suffice);",
        r"$C$ is proportional to $\eta$, whose range depends on $A$ and $\rho$: at $\eta = 2\rho/A^2$ the "
        r"a priori bound is " + m(F["largest_safe_rate_l2"]) + f" (exponents {exps('largest_safe_rate_l2')}).",
    ]
    proof = [
        f"{k}. " + m(st.quantity) + r" $\le$ " + m(st.local)
        + ("" if sp.simplify(st.local - st.bound) == 0 else r" $\le$ " + m(st.bound))  # no "x <= x"
        + " -- " + p(st.reason)
        for k, st in enumerate(thm.steps, start=1)
    ]
    checks = [
        (im.name.replace("_", r"\_") if style == "latex" else im.name) + ": " + p(im.text) + " [" + p(im.domain) + "]: "
        + ("certified" if im.holds else "does not hold") + ("" if im.expected else " (as expected)")
        for im in thm.implications
    ]

    def bullet_list(items):
        if style == "latex":
            return "\\begin{itemize}\n" + "".join(f"\\item {p(i)}\n" for i in items) + "\\end{itemize}\n"
        return "".join(f"- {p(i)}\n" for i in items) + "\n"

    if style == "latex":
        out = ["\\begin{theorem}[" + title.split("(")[1].rstrip(")") + "]\n", setting + "\n\n",
               "Hypotheses:\n", bullet_list(hyps), "Conclusion: " + conclusion + "\n\n", a_priori + "\n\n",
               r"Consequences ($A \ge 1$, $0 < \rho \le 1$):" + "\n", bullet_list(consequences),
               "\\end{theorem}\n\n\\begin{proof}\n",
               "Each bound is composed by SymPy from the previous ones.\n", bullet_list(proof),
               "Checked implications:\n", bullet_list(checks), "\\end{proof}\n"]
        return "".join(out)
    head = f"## {title}\n\n" if style == "markdown" else f"{title}\n{'=' * len(title)}\n\n"
    sub = (lambda x: f"**{x}**") if style == "markdown" else (lambda x: x)
    out = [head, sub("Setting.") + " " + p(setting) + "\n\n",
           sub("Hypotheses.") + "\n\n", bullet_list(hyps),
           sub("Conclusion.") + " " + p(conclusion) + "\n\n", p(a_priori) + "\n\n",
           sub("Consequences") + " " + p(r"($A \ge 1$, $0 < \rho \le 1$):") + "\n\n", bullet_list(consequences),
           sub("Proof") + " (each bound composed by SymPy from the previous ones):\n\n", bullet_list(proof),
           sub("Checked implications.") + "\n\n", bullet_list(checks)]
    return "".join(out)


def theorem_markdown() -> str:
    """The theorem, its proof chain and checks, in Markdown (math in ``$...$``).

    >>> theorem_markdown().startswith("## Theorem")
    True
    """
    return unit_wise_bound().markdown()


def theorem_latex() -> str:
    """The theorem and proof as LaTeX ``theorem`` / ``proof`` environments (needs ``amsthm``).

    >>> theorem_latex().count(r"\\begin{theorem}")
    1
    """
    return unit_wise_bound().latex()
