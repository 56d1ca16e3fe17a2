"""Shared pieces of the derivation checker: set-up, data, rates, verdicts, progress.

Everything here is plain NumPy and needs neither :mod:`numeric` nor :mod:`ngdsym`
at import time, so the command line, the report and the rate fitting work (and
are tested) on their own.  The objects compared are those of
``shared/reference/theory.md``: the preconditioned kernel
``K = J (F_hat + rho I)^{-1} J^T / N`` (section 1) against its infinite-width,
``rho -> 0`` closed form (sections 2 and 4).

Conventions used by every check (stated once, here):

* deviation of a matrix ``A`` from its limit ``B``: the relative Frobenius
  distance ``||A - B||_F / ||B||_F`` (:func:`relative_frobenius`);
* a *rate* is the least-squares slope of ``log(deviation)`` against ``log(M)``
  with its standard error (:func:`fit_rate`); ``deviation * sqrt(M)`` must stay
  bounded across widths (its max/min ratio is the *spread*);
* a quantity that is exact at any width (deviation at the damping/round-off
  level at every width) is reported as such and not asked for a slope.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from ngdsym.methods import Method

__all__ = [
    "Setup",
    "DEFAULT_SETUP",
    "DEFAULT_WIDTHS",
    "QUICK_WIDTHS",
    "DEFAULT_DAMPING",
    "kernel_damping",
    "Criteria",
    "DEFAULT_CRITERIA",
    "RateFit",
    "Check",
    "unit_norm_gaussian",
    "synthetic_data",
    "relative_frobenius",
    "fit_rate",
    "judge_convergence",
    "judge_non_isotropic",
    "extrapolate_inverse_sqrt",
    "progress",
    "require",
    "MissingDependency",
    "Extra",
]

#: Widths of the default sweep (issue 4) and of ``--quick``.
DEFAULT_WIDTHS: tuple[int, ...] = (256, 1024, 4096)
QUICK_WIDTHS: tuple[int, ...] = (128, 512, 2048)

#: Default damping ``rho``.  It must sit far below every kernel scale the
#: methods invert so that the damping error is below the width effects
#: (``>= 1e-2`` at ``M = 4096``): exact/BD/BTD solve ``Theta_l + N rho`` with
#: ``lambda_min(Theta_l) ~ 1e-2``; K-FAC puts ``sqrt(rho) = 1e-7`` on each
#: factor, relative error ``N sqrt(rho) / lambda_min(Q_0) ~ 3e-4`` for the
#: default inputs; unit-wise inverts per-unit Grams of scale ``1/M`` (theory.md:
#: ``rho = 1e-4`` at ``M = 256`` already breaks it).  ``1e-14`` keeps every
#: one of these below ``1e-3`` and is still far above float64 round-off.
DEFAULT_DAMPING = 1e-14


def kernel_damping(method: Method, damping: float) -> float:
    """The damping at which ``method``'s kernel is compared with its ``rho -> 0`` closed form.

    ``damping`` for every method except unit-wise, which is measured at ``0`` (the
    per-unit pseudo-inverse of ``numeric``).  Its damping error ``N rho /
    lambda_min(Theta_{l,i})`` is unbounded over random networks: a unit whose
    outgoing weight is tiny has a tiny Gram (measured: ``|W_2i| = 1.5e-5`` gave an
    error of ``1.2e-3`` at ``rho = 1e-14``, linear in ``rho``), whereas the
    pseudo-inverse's cut-off is relative to each unit's own scale.  The claim
    checked is the ``rho -> 0`` limit, so nothing is lost.
    """
    return 0.0 if Method.parse(method) is Method.UNIT_WISE else damping


@dataclass(frozen=True)
class Setup:
    """The network family and data of a sweep (theory.md section 1).

    ``widths(M) = [M_0, a_1 M, ..., a_{L-1} M, C]``.  The default is the
    built-in problem of ``python -m derivations``: N = 16 unit-norm Gaussian
    inputs in ``M_0 = 32`` dimensions (so K-FAC's first-layer condition
    ``N <= M_0`` holds), C = 1, 3 layers, relu, ``sigma_w^2 = 2``, ``sigma_b = 0``.
    """

    n_samples: int = 16
    n_outputs: int = 1
    depth: int = 3
    input_dim: int = 32
    activation: str = "relu"
    sigma_w: float = 2**0.5
    sigma_b: float = 0.0
    n_test: int = 8
    data_seed: int = 2020
    width_ratios: tuple[float, ...] | None = None  # a_1..a_{L-1}; None: all 1

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"depth={self.depth} must be >= 1")
        if self.width_ratios is not None and len(self.width_ratios) != self.depth - 1:
            raise ValueError(
                f"width_ratios={self.width_ratios!r} needs depth - 1 = {self.depth - 1} entries")

    def widths(self, M: int) -> list[int]:
        """Layer widths ``[M_0, a_1 M, ..., a_{L-1} M, C]`` at width parameter ``M``."""
        ratios = self.width_ratios or (1.0,) * (self.depth - 1)
        return [self.input_dim] + [max(1, int(round(a * M))) for a in ratios] + [self.n_outputs]

    def structure(self, M: int | None = None) -> dict:
        """Keyword arguments for ``ngdsym.derive`` / ``Derivation.alpha_value``."""
        s = dict(depth=self.depth, n_samples=self.n_samples, n_outputs=self.n_outputs,
                 activation=self.activation)
        if M is not None:
            s["widths"] = self.widths(M)
        return s

    def network_kwargs(self) -> dict:
        return dict(activation=self.activation, sigma_w=self.sigma_w, sigma_b=self.sigma_b)

    def replace(self, **changes) -> "Setup":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        ratios = "" if self.width_ratios is None else f", width ratios {list(self.width_ratios)}"
        return (f"N = {self.n_samples} train / {self.n_test} test unit-norm Gaussian inputs "
                f"(seed {self.data_seed}), M_0 = {self.input_dim}, C = {self.n_outputs}, "
                f"L = {self.depth} layers{ratios}, {self.activation}, "
                f"sigma_w = {self.sigma_w:.4g}, sigma_b = {self.sigma_b:.4g}")


DEFAULT_SETUP = Setup()


def unit_norm_gaussian(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` i.i.d. Gaussian vectors in ``R^dim`` scaled to unit norm (theory.md section 1).

    >>> X = unit_norm_gaussian(4, 3, np.random.default_rng(0))
    >>> np.allclose(np.linalg.norm(X, axis=1), 1)
    True
    """
    X = rng.standard_normal((n, dim))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def synthetic_data(setup: Setup):
    """``(X, Y, X_test, Y_test)`` of the built-in problem, all from ``setup.data_seed``.

    Targets are standard normal (the dynamics checks are relative to
    ``f_0 - y``, so their scale does not matter).
    """
    rng = np.random.default_rng(setup.data_seed)
    X = unit_norm_gaussian(setup.n_samples, setup.input_dim, rng)
    Y = rng.standard_normal((setup.n_samples, setup.n_outputs))
    X_test = unit_norm_gaussian(setup.n_test, setup.input_dim, rng)
    Y_test = rng.standard_normal((setup.n_test, setup.n_outputs))
    return X, Y, X_test, Y_test


def relative_frobenius(A, B) -> float:
    """``||A - B||_F / ||B||_F`` (``||A||_F`` if ``B`` is zero).

    >>> relative_frobenius(np.eye(2) * 1.1, np.eye(2))
    0.1000...
    """
    A = np.asarray(A, dtype=float)
    B = np.asarray(B, dtype=float)
    nb = np.linalg.norm(B)
    diff = np.linalg.norm(A - B)
    return float(diff / nb) if nb > 0 else float(diff)


# --------------------------------------------------------------------- rates
@dataclass(frozen=True)
class RateFit:
    """Least-squares fit ``log e = intercept + slope log M`` and the scaled errors.

    ``scaled`` is ``e * sqrt(M)`` at each width, ``spread`` its max/min ratio:
    a ``M^{-1/2}`` rate means ``scaled`` is bounded (spread near 1).
    """

    widths: tuple
    errors: tuple
    slope: float
    stderr: float
    intercept: float
    scaled: tuple
    spread: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def fit_rate(widths, errors) -> RateFit:
    """Fit the log-log slope of ``errors`` against ``widths``.

    The standard error is the usual ordinary-least-squares one,
    ``sqrt(SSR / (n - 2) / sum (log M - mean)^2)`` (``nan`` with two widths).

    >>> fit = fit_rate([100, 400, 1600], [0.1, 0.05, 0.025])
    >>> round(fit.slope, 6), round(fit.spread, 6)
    (-0.5, 1.0)
    """
    w = np.asarray(widths, dtype=float)
    e = np.asarray(errors, dtype=float)
    if w.shape != e.shape or w.size < 2:
        raise ValueError(f"fit_rate needs >= 2 widths and as many errors, got {w.size} and {e.size}")
    if np.any(w <= 0):
        raise ValueError(f"widths={widths!r} must be positive")
    scaled = e * np.sqrt(w)
    if np.any(~np.isfinite(e)) or np.any(e <= 0):
        return RateFit(tuple(w.tolist()), tuple(e.tolist()), math.nan, math.nan, math.nan,
                       tuple(scaled.tolist()), math.nan)
    x, y = np.log(w), np.log(e)
    xm = x - x.mean()
    sxx = float(xm @ xm)
    slope = float(xm @ (y - y.mean()) / sxx)
    intercept = float(y.mean() - slope * x.mean())
    resid = y - (intercept + slope * x)
    stderr = float(math.sqrt(resid @ resid / (w.size - 2) / sxx)) if w.size > 2 else math.nan
    spread = float(scaled.max() / scaled.min())
    return RateFit(tuple(w.tolist()), tuple(e.tolist()), slope, stderr, intercept,
                   tuple(scaled.tolist()), spread)


# ------------------------------------------------------------------ verdicts
@dataclass(frozen=True)
class Criteria:
    """Thresholds of every verdict, stated with their reason.

    ``exact_tol``
        A deviation below this at every width (and seed) is "exact at any width":
        the only error left is the damping error (``<= 1e-3`` by the choice of
        :data:`DEFAULT_DAMPING`) and round-off.  Width effects at ``M <= 4096`` are
        ``>= 1e-2``, so the two cannot be confused.
    ``slope_window``
        Accepted log-log slopes for an ``M^{-1/2}`` rate.  With 3 widths over a
        factor 16 and 3 seeds, the seed noise of the mean deviation (~10-20 %)
        moves the slope by about +-0.1; the window ``[-0.8, -0.25]`` is -1/2 with
        a margin of about 3 such standard errors, and still excludes ``M^0``
        (no convergence) and ``M^{-1}``.
    ``spread_max``
        ``max/min`` of ``deviation * sqrt(M)`` across widths: bounded means
        ``<= 3`` (a slope off -1/2 by 0.4 over a factor 16 gives 3.0).
    ``condition_min``
        The diagonal method must be detectably non-isotropic: the infinite-width
        extrapolation of its condition number (fit ``cond - 1 = a + b M^{-1/2}``)
        at least this, ``1 + a >= 1.1``.  A *converging* ``K`` (e.g. relu unit-wise,
        ``cond = 1.26`` at ``M = 256``) extrapolates to ``a ~ 0``, so a per-width
        threshold alone could not tell the two apart.

    Bounds: the training deviation from the linearised dynamics is bounded by
    ``O(M^{-1/2})`` (theory.md section 5, Lee et al. 2019); a faster decay does
    not contradict it, so those checks (``upper_bound=True``) demand slope
    ``<= slope_window[1]`` and ``deviation * sqrt(M)`` not growing (its max over
    the widths ``<= spread_max`` times its value at the smallest width).
    """

    exact_tol: float = 1e-3
    slope_window: tuple[float, float] = (-0.8, -0.25)
    spread_max: float = 3.0
    condition_min: float = 1.1

    def describe_rate(self, upper_bound: bool = False) -> str:
        lo, hi = self.slope_window
        if upper_bound:
            return (f"O(M^-1/2) bound: log-log slope <= {hi:g} and deviation*sqrt(M) not growing "
                    f"(max <= {self.spread_max:g} x its value at the smallest width)")
        return (f"log-log slope in [{lo:g}, {hi:g}] (target -1/2) and "
                f"max/min of deviation*sqrt(M) <= {self.spread_max:g}")


DEFAULT_CRITERIA = Criteria()


@dataclass
class Check:
    """One verdict: what was claimed, the criterion, and whether it held."""

    name: str
    passed: bool
    kind: str  # "exact", "rate", "non-isotropic", "skipped", "error"
    criterion: str
    detail: str
    rate: RateFit | None = None
    extra: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.kind == "skipped":
            return "SKIP"
        return "PASS" if self.passed else "FAIL"

    def as_dict(self) -> dict:
        d = dict(name=self.name, passed=self.passed, verdict=self.verdict, kind=self.kind,
                 criterion=self.criterion, detail=self.detail, extra=self.extra)
        d["rate"] = None if self.rate is None else self.rate.as_dict()
        return d


def _mean_over_seeds(errors) -> np.ndarray:
    """``errors`` is ``(n_widths, n_seeds)`` (or ``(n_widths,)``): mean over seeds."""
    e = np.asarray(errors, dtype=float)
    return e.mean(axis=1) if e.ndim == 2 else e


def judge_convergence(name: str, widths, errors, criteria: Criteria = DEFAULT_CRITERIA,
                      allow_exact: bool = True, upper_bound: bool = False) -> Check:
    """Verdict on ``deviation(M) -> 0``: exact at any width, or at rate ``M^{-1/2}``.

    ``errors`` is ``(n_widths, n_seeds)``.  If every entry is ``<= exact_tol``
    (and ``allow_exact``) the quantity is exact at any width and no slope is
    demanded of a zero-error quantity; otherwise the mean over seeds must fall
    at the rate of :class:`Criteria` (slope window and bounded ``e sqrt(M)``),
    or, with ``upper_bound``, at least that fast (see :class:`Criteria`).

    >>> judge_convergence("x", [64, 256, 1024], [[0.2], [0.1], [0.05]]).verdict
    'PASS'
    >>> judge_convergence("x", [64, 256, 1024], [[0.2], [0.2], [0.2]]).verdict
    'FAIL'
    >>> judge_convergence("x", [64, 256, 1024], [[1e-9], [1e-10], [2e-9]]).kind
    'exact'
    """
    e = np.asarray(errors, dtype=float)
    if e.ndim == 1:
        e = e[:, None]
    if not np.all(np.isfinite(e)):
        return Check(name, False, "error", "finite deviations", "non-finite deviation measured")
    mean = _mean_over_seeds(e)
    worst = float(e.max())
    if allow_exact and worst <= criteria.exact_tol:
        return Check(name, True, "exact",
                     f"exact at any width: deviation <= {criteria.exact_tol:g} at every width and seed "
                     "(damping/round-off level)",
                     f"max deviation {worst:.2e}",
                     extra=dict(max_deviation=worst))
    fit = fit_rate(widths, mean)
    lo, hi = criteria.slope_window
    if upper_bound:
        growth = max(fit.scaled) / fit.scaled[0]
        ok_slope = fit.slope <= hi
        ok_spread = growth <= criteria.spread_max
        spread_text = f"growth {growth:.2f}"
    else:
        ok_slope = lo <= fit.slope <= hi
        ok_spread = fit.spread <= criteria.spread_max
        spread_text = f"spread {fit.spread:.2f}"
    detail = (f"slope {fit.slope:+.3f} +- {fit.stderr:.3f}, deviation*sqrt(M) "
              + ", ".join(f"{s:.3g}" for s in fit.scaled) + f" ({spread_text})")
    if not ok_slope:
        detail += "; slope outside the window"
    if not ok_spread:
        detail += "; deviation*sqrt(M) not bounded"
    return Check(name, bool(ok_slope and ok_spread), "rate", criteria.describe_rate(upper_bound), detail,
                 rate=fit, extra=dict(max_deviation=worst))


def extrapolate_inverse_sqrt(widths, values) -> tuple[float, float]:
    """Least-squares ``values = a + b M^{-1/2}``: ``(a, stderr of a)`` (``nan`` stderr with 2 widths).

    >>> a, se = extrapolate_inverse_sqrt([64, 256, 1024], [1.5 + 2 / 8, 1.5 + 2 / 16, 1.5 + 2 / 32])
    >>> round(a, 10)
    1.5
    """
    x = 1.0 / np.sqrt(np.asarray(widths, dtype=float))
    y = np.asarray(values, dtype=float)
    A = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    dof = y.size - 2
    if dof <= 0:
        return float(coef[0]), math.nan
    cov = float(resid @ resid) / dof * np.linalg.inv(A.T @ A)
    return float(coef[0]), float(math.sqrt(max(cov[0, 0], 0.0)))


def judge_non_isotropic(name: str, widths, condition_numbers, isotropy_deviation=None,
                        criteria: Criteria = DEFAULT_CRITERIA) -> Check:
    """Verdict that ``K`` stays away from ``alpha I`` as ``M`` grows (theory.md, diagonal).

    ``condition_numbers`` is ``(n_widths, n_seeds)``.  The mean ``cond - 1`` is
    fitted as ``a + b M^{-1/2}`` (finite-width corrections are ``O(M^{-1/2})``); the
    extrapolated infinite-width condition number ``1 + a`` must be at least
    ``condition_min`` and ``a`` must exceed three standard errors, so a ``K``
    that merely converges to ``alpha I`` slowly (``a ~ 0``) does not pass.
    ``isotropy_deviation`` (``||K - mean(diag K) I||_F / ||mean(diag K) I||_F``) is
    reported, not judged.
    """
    c = np.asarray(condition_numbers, dtype=float)
    mean = _mean_over_seeds(c)
    a, se = extrapolate_inverse_sqrt(widths, mean - 1.0)
    ok = (1.0 + a >= criteria.condition_min) and not (np.isfinite(se) and a <= 3 * se)
    crit = (f"non-isotropic: cond(K) extrapolated to M -> inf (fit cond - 1 = a + b M^-1/2) "
            f">= {criteria.condition_min:g}, with a > 3 standard errors")
    detail = ("cond(K) " + ", ".join(f"{x:.3g}" for x in mean)
              + f"; extrapolated {1 + a:.3g} +- {se:.2g}")
    if isotropy_deviation is not None:
        d = _mean_over_seeds(isotropy_deviation)
        detail += "; ||K - mean(diag K) I||/||mean(diag K) I|| " + ", ".join(f"{x:.3g}" for x in d)
    return Check(name, bool(ok), "non-isotropic", crit, detail,
                 extra=dict(min_condition_number=float(np.nanmin(c)), extrapolated_condition_number=1 + a,
                            extrapolated_stderr=se))


# ------------------------------------------------------------------ progress
def progress(iterable, total: int | None = None, desc: str = "", enabled: bool = True):
    """Wrap ``iterable`` in a tqdm bar on stderr if tqdm is importable, else a plain line."""
    if not enabled:
        yield from iterable
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False,
                        dynamic_ncols=True)
        return
    n = total if total is not None else "?"
    for i, item in enumerate(iterable):
        print(f"\r{desc}: {i + 1}/{n}", end="", file=sys.stderr, flush=True)
        yield item
    print(file=sys.stderr)


#: Where a public name lives until its package re-exports it (API.md names the package).
_FALLBACK_MODULES = {
    ("ngdsym", "derive"): "ngdsym.derivation",
    ("ngdsym", "infinite_width_kernels"): "ngdsym.kernels",
    ("numeric", "layer_kernels"): "numeric._kernels",
}


class MissingDependency(RuntimeError):
    """A name of API.md that :mod:`numeric` or :mod:`ngdsym` does not provide (yet)."""


def require(module: str, name: str, issue: str):
    """``module.name`` (API.md) or a ``RuntimeError`` saying which dependency is missing."""
    import importlib

    mod = importlib.import_module(module)
    found = getattr(mod, name, None)
    if found is None and (module, name) in _FALLBACK_MODULES:
        try:
            found = getattr(importlib.import_module(_FALLBACK_MODULES[module, name]), name, None)
        except ImportError:
            found = None
    if found is None:
        raise MissingDependency(f"{module}.{name} is not available yet ({issue}); "
                           "the derivation checker needs it")
    return found


@dataclass
class Extra:
    """A result beyond the width sweep (e.g. the BTD constant for many L): a titled
    markdown section, its data for results.json and its checks."""

    name: str
    title: str
    markdown: str
    data: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
