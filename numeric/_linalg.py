"""The one pseudo-inverse convention of :mod:`numeric` (``damping == 0``, theory.md sections 1-2).

``damping == 0`` means the ``rho -> 0`` limit of ``(F_hat + rho I)^{-1}``, i.e. the
pseudo-inverse of ``F_hat`` (theory.md section 1; section 2 for which matrix each
method inverts).  The limit decouples over the independent blocks of ``F_hat`` (a
layer, a unit, a K-FAC factor, a diagonal entry), and each block's limit does not
change when the block is rescaled, so the question "which eigenvalues are zero" is
asked of each matrix that is actually eigendecomposed, *relative to its own largest
|eigenvalue|*:

    an eigenvalue ``w`` of a symmetric matrix counts as zero iff
    ``|w| <= PINV_RCOND_BY_DTYPE[dtype] * max |w|``,

with ``dtype`` the precision the matrix was *computed* in (the features' dtype; the
float64 upcast of a float32 Gram does not add digits).  Every fast routine
(:mod:`numeric._precond`, :mod:`numeric._approx`) and the dense reference
(:mod:`numeric.reference`) use :func:`pinv_keep`, so they pseudo-invert the same
spectrum: the Gram ``J_B J_B^T`` of a block and its Fisher block ``J_B^T J_B / N``
share their nonzero eigenvalues (push-through), and the cut-off is scale-free.

Why ``1e-10`` in float64 and ``1e-5`` in float32
------------------------------------------------
A Gram matrix formed as a product ``R R^T`` (inner dimension ``m``: a width, or ``P``
in the reference) carries an absolute error ``~ sqrt(m) eps max|w|`` (worst case
``m eps max|w|``), and ``eigh`` adds ``~ n eps max|w|`` for an ``n x n`` matrix.  With
``m, n`` up to a few thousand this floor is ``1e-15 .. 1e-12`` relative in float64.
An eigenvalue near the floor is not resolved, and inverting it multiplies that error
by ``max|w| / w``: a rank-deficient Gram's exact zeros (wide K-FAC factors, unit-wise
with ``C > 1``, ReLU units off at some samples) come out as noise there.  The cut-off
must therefore sit well above the floor, so that every kept eigenvalue is known to
``<~ 1e-4`` relative (``1e-14 / 1e-10``) and two independent computations (the
fast ``N C x N C`` duals, the dense ``P x P`` reference) classify it the same way.
``1e-10`` is that margin (``~ 5e5 eps``; ``eps^{2/3} ~ 4e-11``), and is what the dense
reference already used.  In float32 (``eps ~ 1.2e-7``) the same floor is
``1e-6 .. 1e-4``; ``1e-5`` (``~ eps^{2/3} ~ 2.4e-5``) keeps what float32 resolves
at the widths float32 is used for, at the price of a thinner margin.

Consequence (the diagnosis that fixed this value): a genuine eigenvalue below the
cut-off is dropped, so ``damping == 0`` is the *resolved* ``rho -> 0`` limit: it
equals the mathematical limit whenever no eigenvalue of an inverted matrix lies in
``(0, rcond max|w|]``, and otherwise it is the plateau that ``(F_hat + rho I)^{-1}``
follows while ``rcond max|w| >> N rho >>`` (the dropped eigenvalues).  Measured on a
``[3, 5, 4, 1]`` tanh net, ``N = 4`` (unit-wise): a unit saturated at one sample
(``u = 8.9``, ``tanh' = 6e-8``) has a unit-Gram eigenvalue ``1.3e-11 max``; keeping it
(the former ``n eps`` rule of the fast code) gives the true limit there, but a
natural-gradient step ``3e4`` times larger, driven by a sample the unit barely sees;
on another seed a unit's smallest eigenvalue is ``2.8e-17 max`` through the Gram and
``3.7e-17 max`` through the Fisher block (round-off decides), and the damped results
never settle as ``rho -> 0``: the mathematical limit is not computable there, while
the resolved one is (fast and reference agree to ``1e-8``).

Examples
--------
>>> import numpy as np
>>> w = np.array([[1e-12, 1e-3, 1.0], [0.0, 0.0, 0.0], [-1e-17, 2e-9, 5.0]])
>>> pinv_keep(w, np.float64)
array([[False,  True,  True],
       [False, False, False],
       [False,  True,  True]])
>>> pinv_keep(np.array([1e-6, 1e-4, 1.0], dtype=np.float32), np.float32)
array([False,  True,  True])
"""

from __future__ import annotations

import numpy as np

__all__ = ["PINV_RCOND_BY_DTYPE", "pinv_rcond", "pinv_keep"]

#: Relative eigenvalue cut-off of the pseudo-inverse, per precision the matrix was
#: computed in (module docstring: why these values).
PINV_RCOND_BY_DTYPE: dict[np.dtype, float] = {
    np.dtype(np.float64): 1e-10,
    np.dtype(np.float32): 1e-5,
}


def pinv_rcond(dtype) -> float:
    """The relative cut-off for matrices computed in ``dtype`` (:data:`PINV_RCOND_BY_DTYPE`).

    >>> pinv_rcond(np.float64), pinv_rcond("float32")
    (1e-10, 1e-05)
    """
    key = np.dtype(dtype)
    try:
        return PINV_RCOND_BY_DTYPE[key]
    except KeyError:
        raise ValueError(
            f"dtype={key} has no pseudo-inverse cut-off; use numpy.float64 or numpy.float32 "
            "(or add it to numeric._linalg.PINV_RCOND_BY_DTYPE)"
        ) from None


def pinv_keep(eigenvalues, dtype, *, psd: bool = False) -> np.ndarray:
    """Mask of the eigenvalues a pseudo-inverse keeps, over the last axis.

    ``|w| > pinv_rcond(dtype) * max |w|`` with the maximum taken over the last axis,
    i.e. relative to each matrix's own largest ``|eigenvalue|`` (a stack of matrices
    is a stack of independent blocks).  An all-zero (or empty) spectrum keeps nothing.
    ``dtype``: the precision the matrix was computed in.  ``psd=True`` (a Gram
    matrix): negative eigenvalues are round-off and never kept, whatever their size
    (in float32 they can exceed the cut-off; ``sqrt`` or ``1/w`` of them is noise).

    >>> pinv_keep(np.array([4.0, 0.0, 1e-11, -1e-3]), np.float64)
    array([ True, False, False,  True])
    >>> pinv_keep(np.array([4.0, 0.0, 1e-11, -1e-3]), np.float64, psd=True)
    array([ True, False, False, False])
    """
    w = np.asarray(eigenvalues)
    size = np.abs(w)
    if w.shape[-1] == 0:
        return np.zeros(w.shape, dtype=bool)
    keep = size > pinv_rcond(dtype) * size.max(axis=-1, keepdims=True)
    return keep & (w > 0) if psd else keep
