"""Wide fully connected networks in the NTK parameterization (theory.md section 1).

Conventions, kept exactly as in ``shared/reference/theory.md`` section 1:

* ``widths = [M_0, M_1, ..., M_L]``; ``M_0`` is the input dimension, ``M_L = C``
  the number of outputs, ``L`` the number of layers.
* ``u_l = sigma_w / sqrt(M_{l-1}) * W_l h_{l-1} + sigma_b * b_l``,
  ``h_l = phi(u_l)`` for ``l < L``, ``h_0 = x``, ``f = u_L``; entries of ``W_l``
  and ``b_l`` are i.i.d. N(0, 1) at initialisation.
* Layer ``l``'s parameters are the matrix ``[W_l | b_l]`` of shape
  ``(M_l, M_{l-1} + 1)``; unit ``(l, i)`` owns its row ``i``.  Flattening is
  row-major, so the unit index is the *outer* Kronecker index.
* The Jacobian row of layer ``l`` at sample ``n``, output ``c`` is
  ``delta_{l,c}(x_n) (x) hbar_{l-1}(x_n)`` with ``delta_{l,c} = d f_c / d u_l``
  and ``hbar_{l-1} = [sigma_w h_{l-1} / sqrt(M_{l-1}), sigma_b]``.
  :meth:`MLP.features` returns exactly these two factors per layer, which is
  all the fast routines of :mod:`numeric` ever need: no Jacobian is formed.

Python indices are 0-based: ``features.hbar[k]`` and ``features.delta[k]``
belong to layer ``l = k + 1``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from ._validation import as_inputs, check_finite_array

__all__ = ["MLP", "Features", "ACTIVATIONS"]

_SQRT_PI = math.sqrt(math.pi)


def _relu(u):
    return np.maximum(u, 0)


def _relu_prime(u):
    return (u > 0).astype(u.dtype)


def _tanh_prime(u):
    # sech^2(u) without the cancellation of 1 - tanh(u)^2 in saturated units
    e = np.exp(-2 * np.abs(u))
    return 4 * e / (1 + e) ** 2


def _erf_prime(u):
    return (2 / _SQRT_PI) * np.exp(-u * u)


#: name -> (phi, phi').  The one table of activations of the numeric side.
ACTIVATIONS = {
    "relu": (_relu, _relu_prime),
    "tanh": (np.tanh, _tanh_prime),
    "erf": (special.erf, _erf_prime),
    "linear": (lambda u: u, np.ones_like),
}


@dataclass(frozen=True)
class Features:
    """Forward and backward factors of every layer's Jacobian at inputs ``X``.

    Attributes
    ----------
    hbar : list of ndarray, ``hbar[k]`` of shape ``(N, M_k + 1)``
        ``[sigma_w h_k / sqrt(M_k), sigma_b]``: the input of layer ``k + 1``
        with the bias column appended (a column of ``sigma_b``; zeros when
        ``sigma_b = 0``).
    delta : list of ndarray, ``delta[k]`` of shape ``(N, C, M_{k+1})``
        ``d f_c / d u_{k+1}`` at each sample; ``delta[L-1][n] = I_C``.
    preactivations : list of ndarray, ``preactivations[k]`` of shape ``(N, M_{k+1})``
        ``u_{k+1}``; the last one is the output ``f``.
    outputs : ndarray ``(N, C)``

    The Jacobian of layer ``k + 1`` has rows ``J[(n, c), (i, j)] =
    delta[k][n, c, i] * hbar[k][n, j]``.
    """

    hbar: list
    delta: list
    preactivations: list
    outputs: np.ndarray

    @property
    def depth(self) -> int:
        return len(self.hbar)


class MLP:
    """A fully connected network in the NTK parameterization.

    Parameters
    ----------
    widths : sequence of int
        ``[M_0, M_1, ..., M_L]``, at least two entries, all >= 1.
    activation : {"relu", "tanh", "erf", "linear"}
    sigma_w, sigma_b : float
        Weight and bias scales; ``sigma_w > 0``, ``sigma_b >= 0``.
    seed : int
        Seed of the initial draw (``numpy.random.default_rng(seed)``).
    dtype : numpy float dtype
        ``float64`` (default) or ``float32``.

    Examples
    --------
    >>> net = MLP([3, 16, 2], activation="tanh", seed=1)
    >>> [tuple(W.shape) + tuple(b.shape) for W, b in net.params]
    [(16, 3, 16), (2, 16, 2)]
    >>> net.forward(np.ones((5, 3))).shape
    (5, 2)
    """

    def __init__(self, widths, activation="relu", sigma_w=2**0.5, sigma_b=0.0, seed=0,
                 dtype=np.float64):
        widths = _check_widths(widths)
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise ValueError(
                f"activation={activation!r} is not supported; use one of "
                + ", ".join(repr(a) for a in ACTIVATIONS)
            )
        sigma_w = _as_float(sigma_w, "sigma_w")
        sigma_b = _as_float(sigma_b, "sigma_b")
        if not (math.isfinite(sigma_w) and sigma_w > 0):
            raise ValueError(f"sigma_w={sigma_w!r} must be a finite positive number")
        if not (math.isfinite(sigma_b) and sigma_b >= 0):
            raise ValueError(f"sigma_b={sigma_b!r} must be a finite number >= 0 (0 disables biases)")
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype={dtype!r} is not a numpy dtype; use numpy.float64 or numpy.float32") from None
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype={dtype} is not supported; use numpy.float64 or numpy.float32")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            # an explicit integer seed keeps every draw reproducible (no entropy from the OS)
            raise ValueError(f"seed={seed!r} must be an integer >= 0 (the seed of numpy.random.default_rng)")
        self.widths = widths
        self.activation = activation
        self.sigma_w = sigma_w
        self.sigma_b = sigma_b
        self.seed = seed
        self.dtype = dtype
        rng = np.random.default_rng(seed)
        self._params = [
            (rng.standard_normal((m_out, m_in)).astype(dtype),
             rng.standard_normal(m_out).astype(dtype))
            for m_in, m_out in zip(widths[:-1], widths[1:])
        ]

    # ------------------------------------------------------------------ shape
    @property
    def depth(self) -> int:
        """Number of layers ``L``."""
        return len(self.widths) - 1

    @property
    def n_outputs(self) -> int:
        """``C = M_L``."""
        return self.widths[-1]

    @property
    def n_params(self) -> int:
        """``P = sum_l M_l (M_{l-1} + 1)``."""
        return sum(m_out * (m_in + 1) for m_in, m_out in zip(self.widths[:-1], self.widths[1:]))

    # ------------------------------------------------------------- parameters
    @property
    def params(self):
        """List of ``(W_l, b_l)``; assign a list of the same shapes to replace them."""
        return self._params

    @params.setter
    def params(self, new):
        new = list(new)
        if len(new) != self.depth:
            raise ValueError(f"params must hold {self.depth} (W, b) pairs, got {len(new)}")
        checked = []
        for k, ((W_old, b_old), pair) in enumerate(zip(self._params, new)):
            try:
                W, b = pair
            except (TypeError, ValueError):
                raise ValueError(f"params[{k}] must be a pair (W, b)") from None
            try:
                W = np.array(W, dtype=self.dtype)
                b = np.array(b, dtype=self.dtype)
            except (TypeError, ValueError):
                raise ValueError(f"params[{k}] must hold numeric arrays W {W_old.shape} and b {b_old.shape}") from None
            if W.shape != W_old.shape or b.shape != b_old.shape:
                raise ValueError(
                    f"params[{k}] has shapes {W.shape}, {b.shape}; layer {k + 1} needs "
                    f"W {W_old.shape} and b {b_old.shape}"
                )
            check_finite_array(W, f"params[{k}][0]")
            check_finite_array(b, f"params[{k}][1]")
            checked.append((W, b))
        self._params = checked

    def copy(self) -> "MLP":
        """An independent copy (parameters copied)."""
        return copy.deepcopy(self)

    # ---------------------------------------------------------------- compute
    def _phi(self):
        return ACTIVATIONS[self.activation]

    def forward(self, X) -> np.ndarray:
        """Outputs ``f(X)`` of shape ``(N, C)``."""
        X = as_inputs(X, self.widths[0], self.dtype)
        phi, _ = self._phi()
        h = X
        for k, (W, b) in enumerate(self._params):
            u = (self.sigma_w / math.sqrt(W.shape[1])) * (h @ W.T) + self.sigma_b * b
            h = phi(u) if k < self.depth - 1 else u
        return h

    def features(self, X, argument: str = "X") -> Features:
        """Forward and backward Jacobian factors of every layer at ``X``.

        Cost ``O(N C sum_l M_l M_{l-1})``; memory ``O(N C sum_l M_l)``.
        """
        X = as_inputs(X, self.widths[0], self.dtype, argument)
        phi, dphi = self._phi()
        n = X.shape[0]
        bias_col = np.full((n, 1), self.sigma_b, dtype=self.dtype)
        hbar, pre, derivs = [], [], []
        h = X
        for k, (W, b) in enumerate(self._params):
            scale = self.sigma_w / math.sqrt(W.shape[1])
            hbar.append(np.concatenate([scale * h, bias_col], axis=1))
            u = scale * (h @ W.T) + self.sigma_b * b
            pre.append(u)
            if k < self.depth - 1:
                derivs.append(dphi(u))
                h = phi(u)
        C = self.n_outputs
        delta = [None] * self.depth
        delta[-1] = np.broadcast_to(np.eye(C, dtype=self.dtype), (n, C, C)).copy()
        for k in range(self.depth - 2, -1, -1):
            W_next = self._params[k + 1][0]
            scale = self.sigma_w / math.sqrt(W_next.shape[1])
            # d f / d u_k = (d f / d u_{k+1}) (scale W_{k+1}) diag(phi'(u_k)); one (N C, M) GEMM,
            # not N batched vector-matrix products (10x faster at M = 2048)
            back = (delta[k + 1].reshape(n * C, -1) @ W_next).reshape(n, C, -1)
            delta[k] = scale * back * derivs[k][:, None, :]
        return Features(hbar=hbar, delta=delta, preactivations=pre, outputs=pre[-1])

    def __repr__(self) -> str:
        return (f"MLP(widths={self.widths}, activation={self.activation!r}, sigma_w={self.sigma_w:g}, "
                f"sigma_b={self.sigma_b:g}, seed={self.seed}, dtype={self.dtype.name})")


def _as_float(value, argument: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{argument}={value!r} must be a finite number") from None


def _check_widths(widths):
    message = f"widths={widths!r} must be a sequence of positive integers [M_0, ..., M_L]"
    if isinstance(widths, (str, bytes)):
        raise ValueError(message)
    try:
        values = list(widths)
    except TypeError:
        raise ValueError(message) from None
    # integers only: int(2.5) would silently truncate a width
    if not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) for w in values):
        raise ValueError(message)
    widths = [int(w) for w in values]
    if len(widths) < 2:
        raise ValueError(
            f"widths={widths!r} has length {len(widths)}; give at least [M_0, M_L] "
            "(input dimension and number of outputs)"
        )
    if min(widths) < 1:
        raise ValueError(f"widths={widths!r} must all be >= 1")
    return widths
