"""numeric: finite-width NGD in function space, without materialising J or F.

Conventions: ``shared/reference/theory.md`` section 1 (see :mod:`numeric._mlp`):
NTK parameterization, loss ``(1/2N) sum_n ||f(x_n) - y_n||^2``, Fisher ``F = J^T J / N``,
NTK ``Theta = J J^T`` (no ``1/N``), rows ordered ``n * C + c``, preconditioned kernel
``K = J (F_hat + rho I)^{-1} J^T / N``.
"""

from ngdsym.methods import METHODS, KFACDamping, Method

from ._kernels import layer_kernels
from ._mlp import ACTIVATIONS, MLP, Features
from ._precond import natural_gradient, preconditioned_kernel
from ._train import Trajectory, linearized_train, train

__all__ = [
    "MLP",
    "Features",
    "ACTIVATIONS",
    "Method",
    "KFACDamping",
    "METHODS",
    "layer_kernels",
    "preconditioned_kernel",
    "natural_gradient",
    "train",
    "linearized_train",
    "Trajectory",
]
