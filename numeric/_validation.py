"""Argument checks shared by every public routine of :mod:`numeric`.

Every error names the argument and says what would fix it; nothing is
computed before the checks pass, so nothing half-computed is returned.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = [
    "as_inputs",
    "as_targets",
    "check_finite_array",
    "check_damping",
    "check_positive_int",
    "check_learning_rate",
    "available_memory_bytes",
    "require_memory",
]


def check_finite_array(a, argument: str) -> None:
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{argument} contains {bad} non-finite value(s) (nan or inf); pass finite numbers")


def as_inputs(X, input_dim: int, dtype, argument: str = "X") -> np.ndarray:
    """``X`` as a finite ``(N, input_dim)`` array of ``dtype`` (N >= 1)."""
    try:
        X = np.asarray(X, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{argument} must be a numeric array of shape (N, {input_dim})") from None
    if X.ndim != 2 or X.shape[1] != input_dim or X.shape[0] < 1:
        raise ValueError(
            f"{argument} has shape {X.shape}; the network's input dimension is M_0 = {input_dim}, "
            f"so pass an array of shape (N, {input_dim}) with N >= 1"
        )
    check_finite_array(X, argument)
    return X


def as_targets(Y, n: int, n_outputs: int, dtype, argument: str = "Y") -> np.ndarray:
    """``Y`` as a finite ``(n, n_outputs)`` array; a 1-D ``Y`` is accepted when ``C = 1``."""
    try:
        Y = np.asarray(Y, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{argument} must be a numeric array of shape ({n}, {n_outputs})") from None
    if Y.ndim == 1 and n_outputs == 1:
        Y = Y[:, None]
    if Y.shape != (n, n_outputs):
        raise ValueError(
            f"{argument} has shape {Y.shape}; with N = {n} inputs and C = {n_outputs} outputs "
            f"it must have shape ({n}, {n_outputs})"
        )
    check_finite_array(Y, argument)
    return Y


def check_damping(damping, argument: str = "damping") -> float:
    """A finite ``damping >= 0`` (0 means the ``rho -> 0`` pseudo-inverse limit)."""
    try:
        if isinstance(damping, (bool, np.bool_)):  # float(True) == 1.0 would hide a mix-up
            raise TypeError
        value = float(damping)
    except (TypeError, ValueError):
        raise ValueError(f"{argument}={damping!r} must be a number >= 0") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{argument}={damping!r} must be finite and >= 0 (the damping rho of F_hat + rho I; "
            "use a small positive value such as 1e-6, or 0 for the pseudo-inverse limit)"
        )
    return value


def check_positive_int(value, argument: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{argument}={value!r} must be an integer >= {minimum}")
    return int(value)


def check_learning_rate(lr, argument: str = "lr") -> float:
    try:
        if isinstance(lr, (bool, np.bool_)):  # float(True) == 1.0 would hide a mix-up
            raise TypeError
        value = float(lr)
    except (TypeError, ValueError):
        raise ValueError(f"{argument}={lr!r} must be a finite positive number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{argument}={lr!r} must be a finite positive number")
    return value


def available_memory_bytes() -> int:
    """Memory the process can still use: ``MemAvailable`` (Linux), else physical pages."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


#: Fraction of the available memory a single request may plan to use.
MEMORY_FRACTION = 0.8


def require_memory(n_bytes: float, what: str, fix: str) -> None:
    """Raise ``MemoryError`` before an allocation of ``n_bytes`` that would not fit.

    ``what`` names the problem (method, shapes) and ``fix`` says how to shrink it.
    """
    available = available_memory_bytes()
    if n_bytes > MEMORY_FRACTION * available:
        raise MemoryError(
            f"{what} needs an estimated {n_bytes / 2**30:.2f} GiB but only "
            f"{available / 2**30:.2f} GiB is available; {fix}"
        )
