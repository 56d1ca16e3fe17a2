"""Reusable Hypothesis strategies for the ngdsym test suite.

Organised by area; ADD new strategies under the matching heading (or a new one),
do not rewrite existing ones.  Everything random is drawn through Hypothesis or
from an explicit seed that Hypothesis draws, so every example is reproducible.

Sections
--------
* Methods and damping: :data:`methods`, :data:`kfac_dampings`, :func:`dampings`.
* Networks: :data:`activations`, :func:`widths_lists`, :func:`networks`.
* Data: :func:`input_array`, :func:`regression_problems` (-> :class:`Problem`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from numeric import ACTIVATIONS, METHODS, MLP, KFACDamping

# ============================================================ methods and damping
#: Every Fisher approximation (``Method`` members, never strings).
methods = st.sampled_from(METHODS)
#: Both K-FAC damping conventions.
kfac_dampings = st.sampled_from(tuple(KFACDamping))
#: Seeds for ``numpy.random.default_rng`` / ``MLP(seed=...)``.
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def dampings(min_value: float = 1e-8, max_value: float = 1.0) -> st.SearchStrategy[float]:
    """Damping ``rho`` log-uniform in ``[min_value, max_value]`` (both > 0).

    Drawn as a decade (integer) plus a fraction: a plain ``floats`` draw of the exponent
    would pile up at the bounds (half the examples at ``rho = max_value``).
    """
    lo, hi = math.log10(min_value), math.log10(max_value)
    decades = st.integers(math.floor(lo), max(math.ceil(hi) - 1, math.floor(lo)))
    exponent = st.tuples(decades, st.floats(0.0, 1.0)).map(lambda t: min(max(t[0] + t[1], lo), hi))
    return exponent.map(lambda e: min(max(10.0**e, min_value), max_value))


# ===================================================================== networks
#: Every activation the numeric side supports (from ``numeric.ACTIVATIONS``).
activations = st.sampled_from(sorted(ACTIVATIONS))


def n_params(widths) -> int:
    """``P = sum_l M_l (M_{l-1} + 1)``."""
    return sum(m_out * (m_in + 1) for m_in, m_out in zip(widths[:-1], widths[1:]))


@st.composite
def widths_lists(draw, depth=(1, 4), width=(1, 24), outputs=(1, 3), max_params=None):
    """``[M_0, ..., M_L]`` with ``L`` in ``depth``, ``M_0..M_{L-1}`` in ``width``, ``C`` in ``outputs``.

    With ``max_params``, the largest of ``M_0 .. M_{L-1}`` is decremented until
    ``P <= max_params`` (deterministic, so shrinking still works; no filtering).
    """
    L = draw(st.integers(*depth))
    widths = [draw(st.integers(*width)) for _ in range(L)] + [draw(st.integers(*outputs))]
    if max_params is not None:
        while n_params(widths) > max_params and max(widths[:-1]) > 1:
            k = int(np.argmax(widths[:-1]))
            widths[k] -= 1
    return widths


@st.composite
def networks(draw, depth=(1, 4), width=(1, 24), outputs=(1, 3), max_params=None,
             activation=None, biases=None, sigma_w=(0.5, 2.0), sigma_b=(0.1, 1.0)):
    """A float64 :class:`numeric.MLP` at a random initialisation.

    ``activation``: a name, or ``None`` for any of :data:`activations`.  ``biases``:
    ``True`` (``sigma_b`` drawn from the ``sigma_b`` range), ``False``
    (``sigma_b = 0``) or ``None`` (either).  Widths as in :func:`widths_lists`.
    """
    widths = draw(widths_lists(depth=depth, width=width, outputs=outputs, max_params=max_params))
    act = draw(activations) if activation is None else activation
    with_bias = draw(st.booleans()) if biases is None else biases
    sw = draw(st.floats(*sigma_w))
    sb = draw(st.floats(*sigma_b)) if with_bias else 0.0
    return MLP(widths, activation=act, sigma_w=sw, sigma_b=sb, seed=draw(seeds))


# ========================================================================= data
def input_array(n_samples: int, dim: int, seed: int) -> np.ndarray:
    """``(n_samples, dim)`` standard normal inputs from ``seed`` (float64)."""
    return np.random.default_rng(seed).standard_normal((n_samples, dim))


@dataclass(frozen=True)
class Problem:
    """A network with training inputs ``X``, targets ``Y`` and test inputs ``X2``."""

    net: MLP
    X: np.ndarray
    Y: np.ndarray
    X2: np.ndarray

    def __repr__(self) -> str:  # Hypothesis prints this for a failing example
        return (f"Problem(net={self.net!r}, N={self.X.shape[0]}, N2={self.X2.shape[0]}, "
                f"P={self.net.n_params})")


@st.composite
def regression_problems(draw, n_samples=(1, 6), n_test=(1, 4), **network_kwargs):
    """A :class:`Problem`: network from :func:`networks` (``network_kwargs``), Gaussian data.

    ``N`` in ``n_samples``, ``N2`` in ``n_test``; targets standard normal.
    """
    net = draw(networks(**network_kwargs))
    N = draw(st.integers(*n_samples))
    N2 = draw(st.integers(*n_test))
    rng = np.random.default_rng(draw(seeds))
    X = rng.standard_normal((N, net.widths[0]))
    Y = rng.standard_normal((N, net.n_outputs))
    X2 = rng.standard_normal((N2, net.widths[0]))
    return Problem(net=net, X=X, Y=Y, X2=X2)


# ============================================== width families (derivation checker, issue 4)
@dataclass(frozen=True)
class WidthFamily:
    """Networks indexed by a width parameter ``M`` plus fixed data: one point of the
    structure space the derivation checker's property tests range over.

    Hidden widths are ``a_l M`` (``width_ratios``); inputs are unit-norm Gaussian
    (``derivations._common.synthetic_data`` with ``data_seed``); ``damping`` is the
    ``rho`` used for every preconditioned kernel.
    """

    depth: int
    width_ratios: tuple
    activation: str
    sigma_w: float
    sigma_b: float
    n_samples: int
    n_outputs: int
    input_dim: int
    data_seed: int
    damping: float

    def setup(self, n_test: int = 4):
        """The :class:`derivations._common.Setup` of this family."""
        from derivations._common import Setup

        return Setup(n_samples=self.n_samples, n_outputs=self.n_outputs, depth=self.depth,
                     input_dim=self.input_dim, activation=self.activation, sigma_w=self.sigma_w,
                     sigma_b=self.sigma_b, n_test=n_test, data_seed=self.data_seed,
                     width_ratios=self.width_ratios)


@st.composite
def width_families(draw, depth=(2, 4), n_samples=(3, 8), n_outputs=(1, 2),
                   activations=("relu", "tanh", "erf"), ratios=(0.5, 1.0, 2.0), sigma_w=(1.0, 2.0),
                   sigma_b=(0.0, 0.5), biases=None, damping=(1e-15, 1e-13)):
    """A :class:`WidthFamily`.

    ``M_0`` is drawn in ``[N + 2, 2 N + 4]`` so that K-FAC's first-layer condition
    ``N (+1 with bias) <= M_0`` holds (theory.md section 2); ``biases`` as in
    :func:`networks`.  The damping range keeps every method's damping error below
    ``1e-3`` (see ``derivations._common.DEFAULT_DAMPING``) while staying far above
    float64 round-off of the ``N C x N C`` solves.
    """
    L = draw(st.integers(*depth))
    N = draw(st.integers(*n_samples))
    with_bias = draw(st.booleans()) if biases is None else biases
    return WidthFamily(
        depth=L,
        width_ratios=tuple(draw(st.sampled_from(ratios)) for _ in range(L - 1)),
        activation=draw(st.sampled_from(activations)),
        sigma_w=draw(st.floats(*sigma_w)),
        sigma_b=draw(st.floats(*sigma_b)) if with_bias and sigma_b[1] > 0 else 0.0,
        n_samples=N,
        n_outputs=draw(st.integers(*n_outputs)),
        input_dim=draw(st.integers(N + 2, 2 * N + 4)),
        data_seed=draw(st.integers(0, 2**16)),
        damping=draw(dampings(*damping)),
    )


# ===================================================== infinite-width kernels
@st.composite
def bivariate_covariances(draw, max_variance: float = 5.0, degenerate: bool = True):
    """``(q, q', c)``: a 2 x 2 covariance ``[[q, c], [c, q']]`` (positive semi-definite).

    ``q, q'`` in ``[0.05, max_variance]``, correlation ``rho = c / sqrt(q q')`` in
    ``[-1, 1]``; with ``degenerate`` the corners ``rho = +-1`` and ``q = 0`` (zero input
    without bias, then ``c = 0``) are drawn too.
    """
    q = draw(st.floats(0.05, max_variance))
    q2 = draw(st.floats(0.05, max_variance))
    corners = [-1.0, 1.0, 0.0] if degenerate else [0.0]
    rho = draw(st.one_of(st.sampled_from(corners), st.floats(-1.0, 1.0)))
    if degenerate and draw(st.integers(0, 9)) == 0:
        q = 0.0
    return q, q2, rho * math.sqrt(q * q2)


@st.composite
def kernel_architectures(draw, depth=(1, 4), activation=None):
    """Keyword arguments for ``ngdsym.infinite_width_kernels``: ``depth``, ``activation``,
    ``sigma_w`` in ``[0.5, 2]``, ``sigma_b`` either 0 or in ``[0.1, 1]``."""
    return {
        "depth": draw(st.integers(*depth)),
        "activation": draw(activations) if activation is None else activation,
        "sigma_w": draw(st.floats(0.5, 2.0)),
        "sigma_b": draw(st.one_of(st.just(0.0), st.floats(0.1, 1.0))),
    }


# ================================================ unit-wise deviation bound (issue 5)
#: Activations that satisfy the theorem's smoothness assumption (``numeric.bound.SMOOTH_ACTIVATIONS``).
smooth_activations = st.sampled_from(("tanh", "erf"))


@dataclass(frozen=True)
class DeviationProblem:
    """Inputs of :func:`numeric.bound.measure_deviation`: a ``C = 1`` network, data and NGD settings."""

    net: MLP
    X: np.ndarray
    Y: np.ndarray
    lr: float
    damping: float
    steps: int

    def __repr__(self) -> str:  # Hypothesis prints this for a failing example
        return (f"DeviationProblem(net={self.net!r}, N={self.X.shape[0]}, lr={self.lr:.4g}, "
                f"damping={self.damping:.4g}, steps={self.steps})")


@st.composite
def deviation_problems(draw, depth=(2, 3), width=(8, 48), n_samples=(2, 6), damping=(0.05, 1.0),
                       steps=(1, 5), lr_fraction=(0.05, 1.0), activation=None):
    """A :class:`DeviationProblem` inside the theorem's hypotheses (theory.md section 5).

    Hidden widths in ``width``, ``C = 1``, a smooth activation (or ``activation``), unit-norm
    inputs, standard normal targets, damping log-uniform in ``damping``, and a learning
    rate ``lr = fraction * 2 / lambda_max(K_0)`` with ``fraction`` in ``lr_fraction`` so
    that the linearised dynamics are non-expansive (hypothesis H3).
    """
    from numeric import Method, preconditioned_kernel

    L = draw(st.integers(*depth))
    input_dim = draw(st.integers(2, 6))
    widths = [input_dim] + [draw(st.integers(*width)) for _ in range(L - 1)] + [1]
    act = draw(smooth_activations) if activation is None else activation
    sigma_b = draw(st.one_of(st.just(0.0), st.floats(0.1, 1.0)))
    net = MLP(widths, activation=act, sigma_w=draw(st.floats(0.8, 2.0)), sigma_b=sigma_b, seed=draw(seeds))
    N = draw(st.integers(*n_samples))
    rng = np.random.default_rng(draw(seeds))
    X = rng.standard_normal((N, input_dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = rng.standard_normal((N, 1))
    rho = draw(dampings(*damping))
    K0 = preconditioned_kernel(net, X, Method.UNIT_WISE, rho)
    lam = float(np.linalg.eigvalsh((K0 + K0.T) / 2)[-1])
    lr = draw(st.floats(*lr_fraction)) * 2.0 / lam
    return DeviationProblem(net=net, X=X, Y=Y, lr=lr, damping=rho, steps=draw(st.integers(*steps)))
