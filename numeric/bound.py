"""Measure every quantity of the unit-wise deviation theorem on a concrete trajectory (theory.md section 5).

The theorem and its proof chain live in :mod:`ngdsym.unitwise_bound`; this module
runs true unit-wise NGD and its linearisation for a given network and data, and
measures what the statement and each proof step talk about.  All bounds are
evaluated from the SymPy expressions of :func:`ngdsym.unitwise_bound.unit_wise_bound`
(lambdified), never re-typed.

Normalisation (the theorem's, theory.md section 1): ``Jn = J / sqrt(N)``,
``e_t = (f_t - y) / sqrt(N)``, ``F_hat = blockdiag_u Jn_u^T Jn_u`` over units
(row ``i`` of ``[W_l | b_l]``), ``G = (F_hat + rho I)^{-1}``; ``K_0 = Jn_0 G_0 Jn_0^T``
is :func:`numeric.preconditioned_kernel` with ``Method.UNIT_WISE``.  ``M`` is the
smallest hidden width.  Deviations are reported in the plain 2-norm
``||f_t - f^lin_t||_2 = sqrt(N) ||d_t||``.

How each quantity is computed, without forming ``J`` (``N x P``) or any ``P x P``
matrix (theory.md section 1, Hadamard structure):

* ``||Jn(theta)||^2 = lambda_max(Theta) / N`` with ``Theta = sum_l Bt_l o Q_{l-1}``
  (:func:`numeric._kernels.layer_kernels_from_features`).
* ``||Jn(a) - Jn(b)||``: the Gram of the difference,
  ``(J(a) - J(b))(J(a) - J(b))^T = Theta(a,a) - Theta(a,b) - Theta(b,a) + Theta(b,b)``
  with ``Theta(a,b)_l = Bt_l(a,b) o Q_{l-1}(a,b)`` from the features of the two
  parameter sets on the same inputs.  To avoid cancellation when ``a ~ b`` it is
  evaluated in the equivalent form: row ``(n,c)`` of ``J_l(a) - J_l(b)`` is
  ``dD (x) Ha + Db (x) dH`` (``dD = Da - Db``, ``dH = Ha - Hb``), whose Gram is
  ``(dD dD^T) o (Ha Ha^T) + (dD Db^T) o (Ha dH^T) + (Db dD^T) o (dH Ha^T) + (Db Db^T) o (dH dH^T)``.
  Cost ``O(L N^2 M)``.
* ``||F_hat(a) - F_hat(b)||`` and ``||G(a) - G(b)||``: both are block diagonal over
  units, so the norm is the max over units.  Unit ``i`` of layer ``l`` has
  ``Jn_i = diag(delta_i) Hbar_{l-1} / sqrt(N)``; its Fisher block lives on the span of
  the rows of ``Hbar_{l-1}(a)`` and ``Hbar_{l-1}(b)`` (dimension ``r <= 2N``, one basis
  per layer from the ``2N x 2N`` Gram of the stacked rows), and on the orthogonal
  complement both blocks are ``0`` (``F``) or ``I / rho`` (``G``).  In that basis each
  unit needs ``r x r`` matrices: ``O(L M N^3)``.  ``G(a) - G(b) = G(a) (F(b) - F(a)) G(b)``
  is evaluated in that product form (no cancellation).
* ``||E_t e_t|| = ||(e_t - e_{t+1}) / eta - K_0 e_t||`` (the one-step linearisation error).

The constant ``A`` is *estimated* on the trajectory:
``A_hat = max(1, max_p ||Jn(p)||, max_(p,q) sqrt(M) ||Jn(p) - Jn(q)|| / ||p - q||)`` over
the iterates and (by default) the midpoints of every step, with the pairs
``(theta_0, p)`` and consecutive points of the path.  It is a lower estimate of the
smallest ``A`` valid on the convex hull of the trajectory, so a measured bound is an
empirical check of the theorem (a violation would still refute the chain as used).
Memory: four copies of the parameters (initial, current, next, midpoint).

Examples
--------
>>> import numpy as np
>>> from numeric import MLP
>>> net = MLP([3, 32, 32, 1], activation="tanh", seed=0)
>>> X = np.random.default_rng(0).standard_normal((4, 3))
>>> Y = np.random.default_rng(1).standard_normal((4, 1))
>>> res = measure_deviation(net, X, Y, lr=0.05, damping=0.5, steps=3)
>>> res.deviation <= res.bound
True
>>> all(c.holds() for c in res.checks())
True
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from ngdsym.methods import KFACDamping, Method

from ._kernels import broadcast_outputs, layer_kernels_from_features
from ._mlp import MLP, Features
from ._linalg import pinv_keep
from ._precond import kernel_from_features, update_from_features
from ._train import _progress
from ._validation import (as_inputs, as_targets, check_damping, check_learning_rate, check_positive_int,
                          require_memory)

__all__ = [
    "DeviationMeasurement",
    "InequalityCheck",
    "measure_deviation",
    "jacobian_norm",
    "jacobian_distance",
    "unit_wise_fisher_distances",
    "SMOOTH_ACTIVATIONS",
]

#: Activations that are C^1 with a Lipschitz derivative, as the theorem assumes.
SMOOTH_ACTIVATIONS = ("tanh", "erf", "linear")


# ------------------------------------------------------------------ primitives
def jacobian_norm(feat: Features) -> float:
    """``||J(X)||_op / sqrt(N)`` from features: ``sqrt(lambda_max(sum_l Theta_l) / N)``.

    >>> from numeric import MLP
    >>> from numeric.reference import jacobian
    >>> net = MLP([3, 5, 1], activation="tanh", seed=0)
    >>> X = np.eye(3)
    >>> bool(np.isclose(jacobian_norm(net.features(X)), np.linalg.norm(jacobian(net, X), 2) / np.sqrt(3)))
    True
    """
    n = feat.outputs.shape[0]
    theta = layer_kernels_from_features(feat).sum(axis=0).astype(np.float64)
    return math.sqrt(max(float(np.linalg.eigvalsh((theta + theta.T) / 2)[-1]), 0.0) / n)


def jacobian_distance(feat_a: Features, feat_b: Features) -> float:
    """``||J_a(X) - J_b(X)||_op / sqrt(N)`` for two parameter sets evaluated on the same ``X``.

    Uses the Gram of the difference in the cancellation-free form of the module
    docstring; ``feat_a``, ``feat_b`` are ``net_a.features(X)``, ``net_b.features(X)``.

    >>> from numeric import MLP
    >>> from numeric.reference import jacobian
    >>> a, b = MLP([3, 6, 4, 1], activation="tanh", seed=0), MLP([3, 6, 4, 1], activation="tanh", seed=1)
    >>> X = np.eye(3)
    >>> dense = np.linalg.norm(jacobian(a, X) - jacobian(b, X), 2) / np.sqrt(3)
    >>> bool(np.isclose(jacobian_distance(a.features(X), b.features(X)), dense))
    True
    """
    n, C = feat_a.outputs.shape
    gram = np.zeros((n * C, n * C))
    for Da, Db, Ha, Hb in zip(feat_a.delta, feat_b.delta, feat_a.hbar, feat_b.hbar):
        Da = np.asarray(Da, dtype=np.float64).reshape(n * C, -1)
        Db = np.asarray(Db, dtype=np.float64).reshape(n * C, -1)
        Ha = np.asarray(Ha, dtype=np.float64)
        Hb = np.asarray(Hb, dtype=np.float64)
        dD, dH = Da - Db, Ha - Hb
        gram += (dD @ dD.T) * broadcast_outputs(Ha @ Ha.T, C)
        cross = (dD @ Db.T) * broadcast_outputs(Ha @ dH.T, C)
        gram += cross + cross.T
        gram += (Db @ Db.T) * broadcast_outputs(dH @ dH.T, C)
    top = float(np.linalg.eigvalsh((gram + gram.T) / 2)[-1])
    return math.sqrt(max(top, 0.0) / n)


def unit_wise_fisher_distances(feat_a: Features, feat_b: Features, damping: float) -> tuple[float, float]:
    """``(||F_hat(a) - F_hat(b)||, ||G(a) - G(b)||)`` for the unit-wise Fisher, ``G = (F_hat + damping I)^{-1}``.

    ``F_hat = blockdiag_u J_u^T J_u / N`` (theory.md section 2, unit-wise); ``C = 1``.
    Per layer, one orthonormal basis of the span of the rows of ``Hbar(a)`` and
    ``Hbar(b)``; per unit, ``r x r`` blocks (module docstring).  ``O(L M N^3)``.

    >>> from numeric import MLP, Method
    >>> from numeric.reference import fisher_approx
    >>> a, b = MLP([2, 4, 1], activation="tanh", seed=0), MLP([2, 4, 1], activation="tanh", seed=1)
    >>> X = np.array([[1.0, 0.5], [-0.3, 0.8], [0.2, -1.0]])
    >>> Fa, Fb = fisher_approx(a, X, Method.UNIT_WISE), fisher_approx(b, X, Method.UNIT_WISE)
    >>> fd, gd = unit_wise_fisher_distances(a.features(X), b.features(X), 0.1)
    >>> bool(np.isclose(fd, np.linalg.norm(Fa - Fb, 2)))
    True
    >>> I = np.eye(len(Fa))
    >>> bool(np.isclose(gd, np.linalg.norm(np.linalg.inv(Fa + 0.1 * I) - np.linalg.inv(Fb + 0.1 * I), 2)))
    True
    """
    n, C = feat_a.outputs.shape
    if C != 1:
        raise ValueError(f"unit_wise_fisher_distances needs C = 1 output (the theorem's setting), got C = {C}")
    # per layer: F(a), F(b), their difference, two inverses and the product, (M_l, r, r) each, r <= 2N
    widest = max(np.shape(d)[-1] for d in feat_a.delta)
    require_memory(6 * 8 * widest * (2 * n) ** 2, f"unit_wise_fisher_distances with N = {n}, M = {widest}",
                   "use fewer training inputs N or narrower layers")
    fisher_gap, precond_gap = 0.0, 0.0
    for Da, Db, Ha, Hb in zip(feat_a.delta, feat_b.delta, feat_a.hbar, feat_b.hbar):
        Z = np.concatenate([np.asarray(Ha, np.float64), np.asarray(Hb, np.float64)])  # (2N, m_in + 1)
        w, V = np.linalg.eigh(Z @ Z.T)
        keep = pinv_keep(w, np.float64, psd=True)  # the project's one rank convention
        coords = V[:, keep] * np.sqrt(w[keep])  # rows of Z in an orthonormal basis of its row space
        Ca, Cb = coords[:n], coords[n:]
        da = np.asarray(Da, np.float64)[:, 0, :]  # (N, M_l): delta_i(x_n)
        db = np.asarray(Db, np.float64)[:, 0, :]
        Fa = np.einsum("nr,ni,ns->irs", Ca, da * da, Ca) / n  # (M_l, r, r) per-unit Fisher blocks
        Fb = np.einsum("nr,ni,ns->irs", Cb, db * db, Cb) / n
        gap = Fa - Fb
        fisher_gap = max(fisher_gap, float(np.abs(np.linalg.eigvalsh(gap)).max(initial=0.0)))
        eye = np.eye(Fa.shape[1])
        Ga = np.linalg.inv(Fa + damping * eye)
        Gb = np.linalg.inv(Fb + damping * eye)
        diff = Ga @ (-gap) @ Gb  # G(a) - G(b) = G(a) (F(b) - F(a)) G(b)
        if diff.size:
            precond_gap = max(precond_gap, float(np.linalg.norm(diff, 2, axis=(1, 2)).max()))
    return fisher_gap, precond_gap


def _param_distance(params_a, params_b) -> float:
    return math.sqrt(sum(float(np.sum((Wa - Wb) ** 2) + np.sum((ba - bb) ** 2))
                         for (Wa, ba), (Wb, bb) in zip(params_a, params_b)))


def _update_norm(update) -> float:
    return math.sqrt(sum(float(np.sum(dW * dW) + np.sum(db * db)) for dW, db in update))


def _moved(net: MLP, update, scale: float) -> MLP:
    out = copy.copy(net)  # shallow: the params setter below stores new arrays
    out.params = [(W - scale * dW, b - scale * db) for (W, b), (dW, db) in zip(net.params, update)]
    return out


# ---------------------------------------------------------------------- result
@dataclass(frozen=True)
class InequalityCheck:
    """``lhs <= rhs`` elementwise, for one proof step on one trajectory.

    ``kind`` is ``"local"`` (the step's inequality with the measured inputs of the
    same step), ``"chain"`` (the composed bound with ``A_hat`` and ``R``) or ``"a_priori"``
    (the a priori conclusions, ``R = 2 R_0``, checked when (H3) and the width condition hold).
    """

    name: str
    kind: str
    lhs: np.ndarray
    rhs: np.ndarray

    def holds(self, rtol: float = 1e-9, atol: float = 1e-12) -> bool:
        """``lhs <= rhs (1 + rtol) + atol`` everywhere (float64 round-off in norms and eigensolves)."""
        return bool(np.all(self.lhs <= self.rhs * (1 + rtol) + atol))

    @property
    def worst_ratio(self) -> float:
        """``max lhs / rhs`` (``<= 1`` when it holds; ``0`` where both vanish)."""
        lhs, rhs = np.asarray(self.lhs, float), np.asarray(self.rhs, float)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(rhs > 0, lhs / rhs, np.where(lhs > 1e-12, np.inf, 0.0))
        return float(np.max(ratio, initial=0.0))


@dataclass(frozen=True)
class DeviationMeasurement:
    """Everything the theorem of :mod:`ngdsym.unitwise_bound` talks about, on one trajectory.

    Per-step arrays have length ``steps + 1`` (index ``t``) unless stated; norms are
    in the theorem's normalisation (module docstring) except the ``_l2`` deviations.

    Attributes
    ----------
    widths, activation, n_samples, width (``M``), lr, damping, steps : set-up
    outputs, linearized_outputs : ndarray ``(steps + 1, N)``
        ``f_t(X)`` of true unit-wise NGD and ``f^lin_t(X)``.
    deviation_norms : ``||f_t - f^lin_t||_2``; ``deviation`` is their max.
    residual_norms, linearized_residual_norms : ``||e_t||``, ``||e^lin_t||``.
    step_norms : ``(steps,)`` ``||theta_{t+1} - theta_t||``; ``path_lengths`` their cumulative sums.
    displacements : ``||theta_t - theta_0||``.
    jacobian_norms, jacobian_drifts : ``||Jn_t||``, ``||Jn_t - Jn_0||``.
    fisher_drifts, preconditioner_drifts : ``||F_hat_t - F_hat_0||``, ``||G_t - G_0||``.
    linearization_errors : ``(steps,)`` ``||E_t e_t||``.
    kernel_max_eigenvalue : ``lambda_max(K_0)``.
    lipschitz_ratios : ``sqrt(M) ||Jn(p) - Jn(q)|| / ||p - q||`` over the pairs used.
    A : ``max(1, A_estimate)``, the constant used in the bounds.
    A_estimate : the largest Jacobian norm and Lipschitz ratio seen (``A_hat`` before the floor at 1).
    R : ``max_{t<T} ||e_t||``.  R_0 : ``||e_0||``.
    bound : ``sqrt(N) b(T; R)`` (a posteriori).  bound_a_priori : ``sqrt(N) b(T; 2 R_0)``.
    bound_safe_rate, bound_paper : the theorem's ``sqrt(N)`` safe-rate and ``C A^3 rho^-6 / sqrt(M)``
        forms (a priori, ``R = 2 R_0``); meaningful when ``hypotheses["safe_learning_rate"]``.
    width_condition : ``b(T; 2 R_0) <= R_0``.
    hypotheses : dict of the theorem's checkable assumptions.
    ratio : ``deviation / bound``.
    """

    widths: tuple
    activation: str
    n_samples: int
    width: int
    lr: float
    damping: float
    steps: int
    outputs: np.ndarray
    linearized_outputs: np.ndarray
    deviation_norms: np.ndarray
    residual_norms: np.ndarray
    linearized_residual_norms: np.ndarray
    step_norms: np.ndarray
    path_lengths: np.ndarray
    displacements: np.ndarray
    jacobian_norms: np.ndarray
    jacobian_drifts: np.ndarray
    fisher_drifts: np.ndarray
    preconditioner_drifts: np.ndarray
    linearization_errors: np.ndarray
    kernel_max_eigenvalue: float
    lipschitz_ratios: np.ndarray
    A: float
    A_estimate: float
    R: float
    R_0: float
    deviation: float
    bound: float
    bound_a_priori: float
    bound_safe_rate: float
    bound_paper: float
    width_condition: bool
    hypotheses: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """``deviation / bound`` (``<= 1`` when the bound holds)."""
        return self.deviation / self.bound if self.bound > 0 else (0.0 if self.deviation == 0 else math.inf)

    @property
    def normalised_deviations(self) -> np.ndarray:
        """``||d_t|| = ||f_t - f^lin_t||_2 / sqrt(N)``."""
        return self.deviation_norms / math.sqrt(self.n_samples)

    def checks(self) -> list[InequalityCheck]:
        """Every inequality of the proof on this trajectory, local and chained (see :class:`InequalityCheck`).

        ``jacobian_drift``/local cannot fail by construction (it is (H2) at the pairs
        ``(theta_0, theta_t)``, which enter ``A_hat``) and is kept as a consistency check;
        ``preconditioner_norm`` (``||G|| <= 1/rho``, exact) is not listed.  ``segment_drift``
        (``||Jbar_t - Jn_0||``, an integral over the step) is not measured on its own; it enters
        the measured ``linearisation_error`` check, whose right-hand side uses ``A_hat`` for it.
        When (H3) and the width condition hold, the a priori conclusions are checked too:
        ``||theta_t - theta_0|| <= D``, ``||e_t|| <= 2 R_0`` and ``||d_t|| <= b(T; 2 R_0)``.
        """
        from ngdsym.unitwise_bound import unit_wise_bound

        thm = unit_wise_bound()
        T = self.steps
        t_all = np.arange(T + 1, dtype=float)
        t_step = np.arange(T, dtype=float)
        e = self.residual_norms
        dev = self.normalised_deviations
        base = dict(A=self.A, rho=self.damping, M=self.width, eta=self.lr, R=self.R, R_0=self.R_0,
                    N=self.n_samples)
        J0 = self.jacobian_norms[0]

        def local(name, **measured):
            return np.broadcast_to(thm.evaluate_local(name, **base, **measured), np.shape(next(iter(measured.values()))))

        def chain(name, t):
            return np.broadcast_to(thm.evaluate(name, **base, t=t, T=t), np.shape(t))

        out = [
            InequalityCheck("kernel_norm", "local", np.array([self.kernel_max_eigenvalue]),
                            np.atleast_1d(thm.evaluate_local("kernel_norm", rho=self.damping, Jnorm_0=J0))),
            InequalityCheck("kernel_norm", "chain", np.array([self.kernel_max_eigenvalue]),
                            np.atleast_1d(thm.evaluate("kernel_norm", A=self.A, rho=self.damping))),
            InequalityCheck("linear_residual", "local", self.linearized_residual_norms,
                            np.full(T + 1, self.R_0)),
            InequalityCheck("step", "local", self.step_norms,
                            local("step", Jnorm_t=self.jacobian_norms[:-1], e_t=e[:-1])),
            InequalityCheck("step", "chain", self.step_norms, chain("step", t_step)),
            InequalityCheck("displacement", "local", self.displacements, self.path_lengths),
            InequalityCheck("displacement", "chain", self.displacements, chain("displacement", t_all)),
            InequalityCheck("jacobian_drift", "local", self.jacobian_drifts,
                            local("jacobian_drift", S_t=self.displacements)),
            InequalityCheck("jacobian_drift", "chain", self.jacobian_drifts, chain("jacobian_drift", t_all)),
            InequalityCheck("fisher_drift", "local", self.fisher_drifts,
                            local("fisher_drift", Jnorm_t=self.jacobian_norms, Jnorm_0=np.full(T + 1, J0),
                                  Jdrift_t=self.jacobian_drifts)),
            InequalityCheck("fisher_drift", "chain", self.fisher_drifts, chain("fisher_drift", t_all)),
            InequalityCheck("preconditioner_drift", "local", self.preconditioner_drifts,
                            local("preconditioner_drift", Fdrift_t=self.fisher_drifts)),
            InequalityCheck("preconditioner_drift", "chain", self.preconditioner_drifts,
                            chain("preconditioner_drift", t_all)),
            InequalityCheck("linearisation_error", "local", self.linearization_errors,
                            local("linearisation_error", S_t=self.displacements[:-1],
                                  S_next=self.displacements[1:], Jnorm_t=self.jacobian_norms[:-1],
                                  Jnorm_0=np.full(T, J0), Gdrift_t=self.preconditioner_drifts[:-1],
                                  Jdrift_t=self.jacobian_drifts[:-1], e_t=e[:-1])),
            InequalityCheck("linearisation_error", "chain", self.linearization_errors,
                            chain("linearisation_error", t_step)),
            InequalityCheck("deviation_step", "local", np.diff(dev),
                            local("deviation_step", err_t=self.linearization_errors)),
            InequalityCheck("deviation_step", "chain", np.diff(dev), chain("deviation_step", t_step)),
            InequalityCheck("deviation", "local", dev,
                            np.concatenate([[0.0], np.cumsum(self.lr * self.linearization_errors)])),
            InequalityCheck("deviation", "chain", dev, chain("deviation", t_all)),
            InequalityCheck("residual", "local", e, self.R_0 + dev),
        ]
        if self.width_condition and self.hypotheses.get("nonexpansive", False):
            prior = dict(A=self.A, rho=self.damping, eta=self.lr, R_0=self.R_0, T=T)
            out += [
                InequalityCheck("radius", "a_priori", self.displacements,
                                np.full(T + 1, thm.evaluate("radius", **prior))),
                InequalityCheck("residual", "a_priori", e, np.full(T + 1, 2 * self.R_0)),
                InequalityCheck("deviation", "a_priori", dev,
                                np.full(T + 1, thm.evaluate("a_priori", **prior, M=self.width))),
            ]
        return out

    def to_dict(self) -> dict:
        """JSON-ready dict (arrays as lists, plus ``ratio`` and the check summary)."""
        out = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, (np.floating, np.integer, np.bool_)):
                value = value.item()
            elif isinstance(value, dict):
                value = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in value.items()}
            out[name] = value
        out["ratio"] = self.ratio
        out["checks"] = [{"name": c.name, "kind": c.kind, "holds": c.holds(), "worst_ratio": c.worst_ratio}
                         for c in self.checks()]
        return out


# ----------------------------------------------------------------- measurement


def measure_deviation(net, X, Y, lr, damping, steps, *, midpoints=True, progress=False) -> DeviationMeasurement:
    """Run true unit-wise NGD and its linearisation from ``net`` and measure the theorem's quantities.

    True NGD: ``theta <- theta - lr * numeric.natural_gradient(theta, X, Y, Method.UNIT_WISE, damping)``
    (``F_hat`` recomputed at every iterate).  Linearised: ``e^lin_{t+1} = (I - lr K_0) e^lin_t``
    with ``K_0 = numeric.preconditioned_kernel(net, X, Method.UNIT_WISE, damping)``.
    See the module docstring for how each norm is computed and how ``A`` is estimated.

    Parameters
    ----------
    net : MLP
        One output (``C = 1``) and at least one hidden layer; left untouched.
    X : array ``(N, M_0)``;  Y : array ``(N, 1)`` or ``(N,)``
    lr : float > 0
    damping : float > 0
        ``rho`` (the theorem needs ``rho > 0``).
    steps : int >= 1
        ``T``.
    midpoints : bool
        Also evaluate the Jacobian at the midpoint of every step for ``A_hat``.
    progress : bool
        tqdm progress bar over the steps (if tqdm is installed).

    Returns
    -------
    DeviationMeasurement

    Raises
    ------
    ValueError
        ``C != 1``, no hidden layer, ``damping <= 0``, bad ``lr``/``steps``/data.
    MemoryError
        If four copies of the parameters do not fit.
    """
    if not isinstance(net, MLP):
        raise ValueError(f"net must be a numeric.MLP, got {type(net).__name__}")
    if net.n_outputs != 1:
        raise ValueError(f"net has C = {net.n_outputs} outputs; the unit-wise theorem needs C = 1 "
                         "(widths ending in 1)")
    if net.depth < 2:
        raise ValueError(f"net has depth {net.depth}; the theorem's M is the smallest hidden width, so "
                         "use at least one hidden layer (widths [M_0, M, 1] or longer)")
    damping = check_damping(damping, "damping")
    if damping == 0:
        raise ValueError("damping=0: the theorem needs rho > 0 (its bound grows like rho^-3); pass damping > 0")
    lr = check_learning_rate(lr, "lr")
    steps = check_positive_int(steps, "steps")
    X = as_inputs(X, net.widths[0], net.dtype, "X")
    Y = as_targets(Y, X.shape[0], 1, net.dtype, "Y")
    n = X.shape[0]
    M = min(net.widths[1:-1])
    require_memory(4 * net.dtype.itemsize * net.n_params + 8 * (steps + 1) * n * 4,
                   f"measure_deviation with P = {net.n_params} parameters (4 copies)",
                   "use narrower or fewer layers")
    sqrt_n = math.sqrt(n)
    y = np.asarray(Y, np.float64)[:, 0]

    # linearised dynamics, in function space
    theta0 = net.copy()
    feat0 = theta0.features(X)
    K0 = np.asarray(kernel_from_features(feat0, feat0, Method.UNIT_WISE, damping, KFACDamping.FACTORS),
                    np.float64)
    K0 = (K0 + K0.T) / 2
    kernel_max = float(np.linalg.eigvalsh(K0)[-1])
    f0 = np.asarray(feat0.outputs, np.float64)[:, 0]
    e_lin = np.empty((steps + 1, n))
    e_lin[0] = (f0 - y) / sqrt_n
    for t in range(steps):
        e_lin[t + 1] = e_lin[t] - lr * (K0 @ e_lin[t])

    outputs = np.empty((steps + 1, n))
    step_norms = np.empty(steps)
    displacements = np.empty(steps + 1)
    jac_norms = np.empty(steps + 1)
    jac_drifts = np.empty(steps + 1)
    fisher_drifts = np.empty(steps + 1)
    precond_drifts = np.empty(steps + 1)
    ratios = []
    extra_norms = []

    def at(t, cur, feat):
        outputs[t] = np.asarray(feat.outputs, np.float64)[:, 0]
        displacements[t] = _param_distance(cur.params, theta0.params)
        jac_norms[t] = jacobian_norm(feat)
        jac_drifts[t] = jacobian_distance(feat, feat0) if t else 0.0
        fisher_drifts[t], precond_drifts[t] = (unit_wise_fisher_distances(feat, feat0, damping) if t else (0.0, 0.0))
        if t:
            ratios.append(math.sqrt(M) * jac_drifts[t] / displacements[t] if displacements[t] > 0 else 0.0)

    cur, feat = theta0, feat0
    at(0, cur, feat)
    for t in _progress(range(steps), progress, f"unit-wise NGD, M = {M}"):
        # the features of ``cur`` are at hand: no second forward/backward pass
        update = update_from_features(feat, feat.outputs - Y, Method.UNIT_WISE, damping, KFACDamping.FACTORS)
        step_norms[t] = lr * _update_norm(update)
        nxt = _moved(cur, update, lr)
        feat_next = nxt.features(X)
        if midpoints and step_norms[t] > 0:
            mid = _moved(cur, update, lr / 2)
            feat_mid = mid.features(X)
            extra_norms.append(jacobian_norm(feat_mid))
            half = step_norms[t] / 2
            ratios.append(math.sqrt(M) * jacobian_distance(feat_mid, feat) / half)
            ratios.append(math.sqrt(M) * jacobian_distance(feat_next, feat_mid) / half)
            dist0 = _param_distance(mid.params, theta0.params)
            if dist0 > 0:
                ratios.append(math.sqrt(M) * jacobian_distance(feat_mid, feat0) / dist0)
            del mid
        elif step_norms[t] > 0:
            ratios.append(math.sqrt(M) * jacobian_distance(feat_next, feat) / step_norms[t])
        cur, feat = nxt, feat_next
        at(t + 1, cur, feat)

    e = (outputs - y) / sqrt_n
    dev_norms = sqrt_n * np.linalg.norm(e - e_lin, axis=1)
    lin_err = np.linalg.norm((e[:-1] - e[1:]) / lr - e[:-1] @ K0.T, axis=1)
    lipschitz = np.asarray(ratios, dtype=float)
    A_estimate = max(float(jac_norms.max()), float(max(extra_norms, default=0.0)), float(lipschitz.max(initial=0.0)))
    A = max(1.0, A_estimate)
    R = float(np.linalg.norm(e[:-1], axis=1).max())
    R_0 = float(np.linalg.norm(e[0]))

    from ngdsym.unitwise_bound import unit_wise_bound

    thm = unit_wise_bound()
    values = dict(A=A, rho=damping, M=M, eta=lr, R=R, R_0=R_0, N=n, T=steps)
    bound = thm.evaluate("bound_l2", **values)
    a_priori = thm.evaluate("a_priori", **values)
    hypotheses = {
        "smooth_activation": net.activation in SMOOTH_ACTIVATIONS,
        "nonexpansive": bool(lr * kernel_max <= 2),
        "safe_learning_rate": bool(lr <= thm.evaluate("learning_rate_max", A=A, rho=damping)),
        "damping_at_most_one": bool(damping <= 1),
        "width_condition": bool(a_priori <= R_0),
    }
    return DeviationMeasurement(
        widths=tuple(net.widths), activation=net.activation, n_samples=n, width=M, lr=lr, damping=damping,
        steps=steps, outputs=outputs, linearized_outputs=e_lin * sqrt_n + y, deviation_norms=dev_norms,
        residual_norms=np.linalg.norm(e, axis=1), linearized_residual_norms=np.linalg.norm(e_lin, axis=1),
        step_norms=step_norms, path_lengths=np.concatenate([[0.0], np.cumsum(step_norms)]),
        displacements=displacements, jacobian_norms=jac_norms, jacobian_drifts=jac_drifts,
        fisher_drifts=fisher_drifts, preconditioner_drifts=precond_drifts, linearization_errors=lin_err,
        kernel_max_eigenvalue=kernel_max, lipschitz_ratios=lipschitz, A=A, A_estimate=A_estimate, R=R, R_0=R_0,
        deviation=float(dev_norms.max()), bound=float(bound), bound_a_priori=float(math.sqrt(n) * a_priori),
        bound_safe_rate=float(thm.evaluate("safe_rate_l2", **values)),
        bound_paper=float(thm.evaluate("paper", **values)),
        width_condition=bool(a_priori <= R_0), hypotheses=hypotheses,
    )
