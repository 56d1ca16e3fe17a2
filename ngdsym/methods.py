"""The Fisher approximations, defined once for the whole project.

Both halves of ngdsym use these names: :mod:`ngdsym` derives each method's
function-space preconditioner symbolically, :mod:`numeric` evaluates it at
finite width.  This module imports nothing heavy (no SymPy, no NumPy) so that
``numeric`` can depend on it cheaply.

Conventions are those of ``shared/reference/theory.md`` section 1: ``F_hat`` is
the (approximate) Fisher of the Gaussian likelihood, ``F = J^T J / N``, and the
preconditioned kernel is ``K = J (F_hat + rho I)^{-1} J^T / N``.

>>> Method.parse("kfac") is Method.KFAC
True
>>> Method("block_diagonal").label
'block diagonal'
>>> [m.value for m in Method]
['gd', 'exact', 'block_diagonal', 'block_tridiagonal', 'kfac', 'unit_wise', 'diagonal']
"""

from __future__ import annotations

import enum

__all__ = ["Method", "KFACDamping", "METHODS"]


class Method(str, enum.Enum):
    """A Fisher approximation ``F_hat`` (theory.md section 2).

    The value is the string accepted everywhere a ``method`` argument is taken.

    ========================  =====================================================
    member                    ``F_hat``
    ========================  =====================================================
    ``GD``                    ``I`` (plain gradient descent; damping is ignored)
    ``EXACT``                 ``F = J^T J / N``
    ``BLOCK_DIAGONAL``        ``blockdiag_l F_ll`` (layer ``l`` = its ``W_l, b_l``)
    ``BLOCK_TRIDIAGONAL``     blocks ``F_ll'`` with ``|l - l'| <= 1``
    ``KFAC``                  ``B_l (x) A_{l-1}`` per layer (Kronecker factors)
    ``UNIT_WISE``             ``blockdiag`` over units (row ``i`` of ``[W_l | b_l]``)
    ``DIAGONAL``              ``diag(F)``
    ========================  =====================================================
    """

    GD = "gd"
    EXACT = "exact"
    BLOCK_DIAGONAL = "block_diagonal"
    BLOCK_TRIDIAGONAL = "block_tridiagonal"
    KFAC = "kfac"
    UNIT_WISE = "unit_wise"
    DIAGONAL = "diagonal"

    @property
    def label(self) -> str:
        """Human-readable name, for tables and plots."""
        return {
            "gd": "gradient descent",
            "exact": "exact NGD",
            "block_diagonal": "block diagonal",
            "block_tridiagonal": "block tri-diagonal",
            "kfac": "K-FAC",
            "unit_wise": "unit-wise",
            "diagonal": "element-wise diagonal",
        }[self.value]

    @classmethod
    def parse(cls, method: "str | Method", argument: str = "method") -> "Method":
        """Return the member for ``method`` or raise a ``ValueError`` naming the choices."""
        if isinstance(method, cls):
            return method
        try:
            return cls(str(method).strip().lower().replace("-", "_"))
        except ValueError:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ValueError(
                f"{argument}={method!r} is not a known method; use one of {choices}"
            ) from None

    def __str__(self) -> str:  # so f-strings print "kfac", not "Method.KFAC"
        return self.value


class KFACDamping(str, enum.Enum):
    """How the damping ``rho`` enters K-FAC (theory.md section 2, K-FAC note).

    ``FACTORS``
        ``(B + sqrt(rho) I) (x) (A + sqrt(rho) I)``: each Kronecker factor gets
        ``sqrt(rho)``.  Cheap (two push-through solves per layer, on the
        ``N C x N C`` and ``N x N`` duals) and the convention of theory.md's
        table; it over-damps by the cross terms ``sqrt(rho) (A (x) I + I (x) B)``.
    ``EXACT``
        ``B (x) A + rho I``: the damped Kronecker product itself, inverted
        through the eigendecompositions of the two factors (obtained from their
        duals, so still no ``M x M`` eigendecomposition of a rank-``N`` factor is
        needed).  More expensive (an ``N^2 x N C`` core), but it is the object
        the ``rho -> 0`` limit of the theory refers to.
    """

    FACTORS = "factors"
    EXACT = "exact"

    @classmethod
    def parse(cls, value: "str | KFACDamping", argument: str = "kfac_damping") -> "KFACDamping":
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ValueError(
                f"{argument}={value!r} is not a K-FAC damping convention; use one of {choices}"
            ) from None

    def __str__(self) -> str:
        return self.value


#: Every method, in the order tables list them.
METHODS: tuple[Method, ...] = tuple(Method)
