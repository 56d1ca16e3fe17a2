"""numeric: finite-width NGD in function space, without materialising J or F.

Conventions: ``shared/reference/theory.md`` section 1 (see :mod:`numeric._mlp`).
"""

from ngdsym.methods import METHODS, KFACDamping, Method

from ._mlp import ACTIVATIONS, MLP, Features

__all__ = ["MLP", "Features", "ACTIVATIONS", "Method", "KFACDamping", "METHODS"]
