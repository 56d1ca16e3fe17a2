"""The width sweep: finite networks from :mod:`numeric` against closed forms from :mod:`ngdsym`.

One loop over ``(width M, seed)``; each network is built once and every
measurement of every selected method is taken on it before it is dropped (at
``M = 4096`` one network holds ~33 million parameters).  The measurements:

* per-layer NTKs ``Theta_l`` against the infinite-width kernels
  (theory.md section 4; :mod:`derivations.kernels`);
* each method's preconditioned kernel ``K = J (F_hat + rho I)^{-1} J^T / N``
  (theory.md section 1) against its limit: ``alpha I`` for the isotropic methods
  (``Derivation.alpha_value`` at this width), ``Derivation.kernel_limit`` for the
  others; ``alpha`` measured as ``trace(K) / (N C)``; condition number of ``K``;
* training (``numeric.train``) at ``lr = 1/alpha`` (and ``lr = 1/(2 alpha)`` at the
  largest width, first seed, for the plot) against
  ``f_t - y = (1 - alpha eta)^t (f_0 - y)`` (:mod:`derivations.dynamics`) and its
  test outputs against ``Derivation.predict_test`` (:mod:`derivations.test_predictions`).

The verdicts live in the modules named above and in one module per method.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ngdsym.methods import KFACDamping, Method

from ._common import (DEFAULT_CRITERIA, DEFAULT_DAMPING, DEFAULT_SETUP, DEFAULT_WIDTHS, Criteria,
                      Setup, kernel_damping, progress, relative_frobenius, require, synthetic_data)

__all__ = ["SweepConfig", "Context", "SweepResult", "run_sweep", "LR_FACTORS"]

#: Learning rates of the training checks, as multiples of ``1/alpha``: the optimal
#: one (one-step convergence) and a smaller one where ``(1 - alpha eta)^t`` is not 0.
LR_FACTORS: tuple[float, ...] = (1.0, 0.5)


@dataclass
class SweepConfig:
    """What to sweep; the defaults are those of ``python -m derivations``."""

    setup: Setup = DEFAULT_SETUP
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    seeds: int = 3
    methods: tuple[Method, ...] = tuple(Method)
    damping: float = DEFAULT_DAMPING
    kfac_damping: KFACDamping = KFACDamping.FACTORS
    steps: int = 3
    train: bool = True
    layer_kernels: bool = True
    criteria: Criteria = DEFAULT_CRITERIA
    show_progress: bool = True

    def __post_init__(self):
        self.widths = tuple(sorted(int(w) for w in self.widths))
        if len(self.widths) < 2 or self.widths[0] < 1:
            raise ValueError(f"widths={self.widths!r}: give at least two positive widths to fit a rate")
        if self.seeds < 1:
            raise ValueError(f"seeds={self.seeds!r} must be >= 1")
        if self.steps < 1:
            raise ValueError(f"steps={self.steps!r} must be >= 1")
        self.methods = tuple(Method.parse(m, "methods") for m in self.methods)


class Context:
    """Data, infinite-width kernels and derivations shared by every measurement of a sweep."""

    def __init__(self, config: SweepConfig, data=None):
        self.config = config
        self.setup = config.setup
        X, Y, X_test, Y_test = synthetic_data(self.setup) if data is None else data
        self.X, self.Y, self.X_test, self.Y_test = X, Y, X_test, Y_test
        self._inf = {}
        self._derivations = {}
        self.not_isotropic = {}  # method -> why alpha_value refused this structure

    # infinite-width kernels, orientation (N2*C, N*C) rows = X2 (API.md)
    def infinite(self, which: str = "train"):
        if which not in self._inf:
            kernels = require("ngdsym", "infinite_width_kernels", "issue 3")
            s = self.setup
            kw = dict(depth=s.depth, activation=s.activation, sigma_w=s.sigma_w, sigma_b=s.sigma_b)
            if which == "train":
                self._inf[which] = kernels(self.X, **kw)
            else:
                self._inf[which] = kernels(self.X_test, self.X, **kw)
        return self._inf[which]

    def derivation(self, method: Method):
        """``ngdsym.derive(method, ...)`` for this set-up (cached; one place)."""
        method = Method.parse(method)
        if method not in self._derivations:
            self._derivations[method] = derive_for(method, self.setup, self.config.kfac_damping)
        return self._derivations[method]

    def concrete(self, method: Method, M: int):
        """``ngdsym.derive`` with every structure value of width ``M`` (cached): its
        ``alpha`` is a number and its dynamics a function of ``eta`` and ``t`` only."""
        key = (Method.parse(method), M)
        if key not in self._derivations:
            self._derivations[key] = derive_for(key[0], self.setup, self.config.kfac_damping, M)
        return self._derivations[key]

    def alpha(self, method: Method, M: int) -> float | None:
        """``alpha`` at width ``M`` (``None`` for a method not isotropic here; the
        derivation's reason is kept in :attr:`not_isotropic`)."""
        d = self.derivation(method)
        if getattr(d, "alpha", None) is None:
            return None
        try:
            return float(d.alpha_value(**self.setup.structure(M)))
        except ValueError as exc:  # e.g. a rank condition of this structure fails
            self.not_isotropic[Method.parse(method)] = str(exc)
            return None

    def limit(self, method: Method, M: int) -> np.ndarray:
        """The infinite-width, ``rho -> 0`` kernel on the training set at width ``M``.

        Isotropic methods: ``alpha I`` (``alpha`` may depend on the widths, e.g.
        unit-wise); others: ``Derivation.kernel_limit``.
        """
        n = self.setup.n_samples * self.setup.n_outputs
        a = self.alpha(method, M)
        if a is not None:
            return a * np.eye(n)
        return np.asarray(self.derivation(method).kernel_limit(self.infinite("train")), dtype=float)


def derive_for(method: Method, setup: Setup, kfac_damping: KFACDamping = KFACDamping.FACTORS,
               M: int | None = None):
    """The one call of ``ngdsym.derive`` of the checker.

    ``M is None``: symbolic depth ``L`` and sample count ``N`` (the general
    derivation, printed in the report), concrete output count and activation.
    Otherwise every structure value of width ``M`` (``Setup.structure``).
    """
    derive = require("ngdsym", "derive", "issue 3")
    kw = dict(n_outputs=setup.n_outputs, activation=setup.activation) if M is None else setup.structure(M)
    if method is Method.KFAC:
        kw["kfac_damping"] = kfac_damping
    return derive(method, **kw)


@dataclass
class SweepResult:
    """Everything measured; arrays are ``(n_widths, n_seeds)`` unless stated."""

    config: SweepConfig
    # method -> quantity -> array; quantities: alpha_measured, deviation, isotropy_deviation,
    # condition_number, seconds; training ones: dynamics_error, test_error
    methods: dict = field(default_factory=dict)
    # (n_widths, n_seeds, L + 1): per-layer NTK deviations, last column the full NTK
    layer_deviation: np.ndarray | None = None
    # method -> alpha value per width (None entries for non-isotropic)
    alpha_values: dict = field(default_factory=dict)
    # plot data at the largest width, first seed: method -> dict
    curves: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)  # method -> message of a failed measurement
    notes: dict = field(default_factory=dict)  # method -> list of notes (e.g. a missing closed form)
    seconds: float = 0.0


def _eye_kron(A: np.ndarray, C: int) -> np.ndarray:
    """Per-output infinite kernel ``(..., N, N2)`` to ``(..., N C, N2 C)`` (outputs independent)."""
    if C == 1:
        return A
    return np.kron(A, np.eye(C)) if A.ndim == 2 else np.stack([np.kron(a, np.eye(C)) for a in A])


def measure_layer_kernels(net, ctx: Context) -> np.ndarray:
    """Relative Frobenius deviation of each ``Theta_l`` and of ``Theta`` from the limit."""
    layer_kernels = require("numeric", "layer_kernels", "issue 2")
    emp = layer_kernels(net, ctx.X)
    inf = _eye_kron(np.asarray(ctx.infinite("train").layer_ntk, dtype=float), ctx.setup.n_outputs)
    per_layer = [relative_frobenius(e, i) for e, i in zip(emp, inf)]
    return np.array(per_layer + [relative_frobenius(emp.sum(0), inf.sum(0))])


def measure_kernel(net, ctx: Context, method: Method, M: int) -> dict:
    """``K`` of ``method`` at this network and its distance from the closed form."""
    pk = require("numeric", "preconditioned_kernel", "issue 2")
    cfg = ctx.config
    t0 = time.perf_counter()
    K = np.asarray(pk(net, ctx.X, method, kernel_damping(method, cfg.damping), kfac_damping=cfg.kfac_damping),
                   dtype=float)
    seconds = time.perf_counter() - t0
    nc = K.shape[0]
    a_meas = float(np.trace(K) / nc)
    out = dict(alpha_measured=a_meas, seconds=seconds,
               isotropy_deviation=relative_frobenius(K, a_meas * np.eye(nc)),
               condition_number=float(np.linalg.cond(0.5 * (K + K.T))))
    try:
        out["deviation"] = relative_frobenius(K, ctx.limit(method, M))
    except NotImplementedError as exc:
        out["deviation"] = math.nan
        out["limit_missing"] = str(exc) or "no kernel closed form"
    return out


def measure_training(net, ctx: Context, method: Method, M: int, keep_curves: bool) -> dict:
    """Train at ``lr = f / alpha`` for ``f`` in :data:`LR_FACTORS` and compare with the theory.

    ``dynamics_error = max_t ||(f_t - y) - (1 - alpha eta)^t (f_0 - y)|| / ||f_0 - y||``
    at ``lr = 1/alpha`` (``lr = 1/(2 alpha)`` is run too where ``keep_curves``, for the
    plot, with its error stored in the curves); ``test_error = ||(g_t - g_0) -
    predict_test_t|| / ||predict_test_t||`` (Frobenius over steps ``t >= 1``) at
    ``lr = 1/alpha``, with ``g`` the finite network's test outputs.
    """
    from . import dynamics, test_predictions

    train = require("numeric", "train", "issue 2")
    cfg = ctx.config
    alpha = ctx.alpha(method, M)
    if alpha is None:
        return {}
    out = dict(dynamics_error=math.nan, test_error=math.nan)
    curves = {}
    # the smaller learning rate only where the curves are kept (plot b): training dominates the cost
    for factor in (LR_FACTORS if keep_curves else LR_FACTORS[:1]):
        lr = factor / alpha
        traj = train(net, ctx.X, ctx.Y, method, lr, cfg.damping, cfg.steps, ctx.X_test, ctx.Y_test,
                     kfac_damping=cfg.kfac_damping)
        c_t = dynamics.residual_factor(ctx.concrete(method, M), lr, cfg.steps)
        err, theory_loss = dynamics.residual_error(traj, ctx.Y, c_t)
        if factor == 1.0:
            out["dynamics_error"] = err
        if keep_curves:
            curves[factor] = dict(lr=lr, finite_loss=np.asarray(traj.train_loss, dtype=float),
                                  theory_loss=theory_loss, residual_error=err)
        if factor == 1.0:
            try:
                terr, pred, finite = test_predictions.prediction_error(traj, ctx, method, lr)
                out["test_error"] = terr
                if keep_curves:
                    curves["test"] = dict(predicted=pred, finite=finite)
            except NotImplementedError as exc:
                out["test_missing"] = str(exc) or "no test predictor"
    if keep_curves:
        out["curves"] = curves
    return out


def run_sweep(config: SweepConfig, ctx: Context | None = None) -> tuple[SweepResult, Context]:
    """Measure everything of ``config`` (see the module docstring)."""
    from numeric import MLP

    ctx = Context(config) if ctx is None else ctx
    setup = config.setup
    nW, nS = len(config.widths), config.seeds
    res = SweepResult(config=config)
    t_start = time.perf_counter()
    for m in config.methods:
        try:
            res.alpha_values[m] = [ctx.alpha(m, M) for M in config.widths]
        except Exception as exc:  # report it as this method's failure, keep the others
            res.errors[m] = f"derivation: {type(exc).__name__}: {exc}"
    quantities = ("alpha_measured", "deviation", "isotropy_deviation", "condition_number", "seconds",
                  "dynamics_error", "test_error")
    for m in config.methods:
        res.methods[m] = {q: np.full((nW, nS), np.nan) for q in quantities}
    if config.layer_kernels:
        res.layer_deviation = np.full((nW, nS, setup.depth + 1), np.nan)
    jobs = [(i, M, s) for i, M in enumerate(config.widths) for s in range(nS)]
    for i, M, s in progress(jobs, total=len(jobs), desc="width sweep", enabled=config.show_progress):
        net = MLP(setup.widths(M), seed=s, **setup.network_kwargs())
        if config.layer_kernels:
            res.layer_deviation[i, s] = measure_layer_kernels(net, ctx)
        for m in config.methods:
            if m in res.errors:
                continue
            try:
                rec = measure_kernel(net, ctx, m, M)
                if config.train:
                    keep = (i == nW - 1 and s == 0)
                    rec.update(measure_training(net, ctx, m, M, keep))
            except Exception as exc:
                res.errors[m] = f"{type(exc).__name__}: {exc}"
                continue
            for q in quantities:
                if q in rec:
                    res.methods[m][q][i, s] = rec[q]
            if "curves" in rec:
                res.curves[m] = rec["curves"]
            for note in ("limit_missing", "test_missing"):
                if note in rec and rec[note] not in res.notes.setdefault(m, []):
                    res.notes[m].append(rec[note])
        del net
    res.seconds = time.perf_counter() - t_start
    return res, ctx
