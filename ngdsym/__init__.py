"""ngdsym: symbolic derivations of NGD with approximate Fisher information in wide networks.

>>> from ngdsym import derive
>>> derive("block_diagonal", depth=3).alpha
3
"""

from .derivation import Condition, Derivation, LearningRate, activation_gamma, derive
from .kernels import InfiniteWidthKernels, infinite_width_kernels
from .methods import METHODS, KFACDamping, Method
from .tridiagonal import btd_alpha, btd_weights, tridiagonal_ones

__all__ = [
    "Method", "KFACDamping", "METHODS",
    "derive", "Derivation", "Condition", "LearningRate", "activation_gamma",
    "infinite_width_kernels", "InfiniteWidthKernels",
    "tridiagonal_ones", "btd_weights", "btd_alpha",
]
