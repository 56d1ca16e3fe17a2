"""ngdsym: symbolic derivations of NGD with approximate Fisher information in wide networks."""

from .methods import METHODS, KFACDamping, Method

__all__ = ["Method", "KFACDamping", "METHODS"]
