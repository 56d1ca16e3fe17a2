"""Property tests of issue 4: finite networks converge to the derived infinite-width objects.

Every property is a *rate*, never a loose absolute tolerance: over the widths
``M in WIDTHS`` (times the family's width ratios), averaged over ``SEEDS``
network seeds per width, the relative Frobenius deviation must either be exact
at any width (at the damping level, ``<= 1e-3``) or

* fall with a least-squares log-log slope in ``[-0.8, -0.25]`` -- the target is
  ``-1/2``; over a factor 8 in width with 3-4 seeds the seed noise of the mean
  (10-20 % per width) moves the slope by about +-0.1, so the window is about 3
  standard errors wide and still excludes ``M^0`` (no convergence) and ``M^-1``;
* and keep ``deviation * sqrt(M)`` bounded: max/min over the widths ``<= 3``
  (a slope off -1/2 by 0.4 over a factor 8 would give 2.3; 3 leaves room for noise).

Where theory only gives an upper bound ``O(M^{-1/2})`` (training, test
predictions: theory.md section 5) the check is one-sided: slope ``<= -0.25`` and
``deviation * sqrt(M)`` not growing.

These thresholds live in ``derivations._common.Criteria`` (one place, shared with
``python -m derivations``).  Widths here are small (``M <= 512``, ratios up to 2)
to fit the CI budget; the command runs the large ones.

Hypothesis draws the structure (``tests/strategies.width_families``: depth,
width ratios, activation, sigma_w, sigma_b, N, C, data seed, damping); the CI
profile is derandomised, with few examples per property because each example is
a whole width sweep.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from strategies import width_families

from derivations._common import DEFAULT_CRITERIA, judge_convergence, judge_non_isotropic
from derivations._methods import judge_kernel
from derivations._sweep import Context, SweepConfig, run_sweep
from derivations.dynamics import training_not_applicable
from ngdsym.methods import Method

pytest.importorskip("ngdsym.derivation", reason="ngdsym.derive (issue 3) is not available yet")

WIDTHS = (64, 128, 256, 512)
#: Widths of property 5 (the diagonal method's plateau shows only beyond M ~ 1000).
DIAGONAL_WIDTHS = (512, 2048, 8192)
SEEDS = 3
#: Seeds per width for the training and test-prediction properties (3 and 4): their
#: per-seed scatter is large at N <= 8 (measured: K-FAC, relu, N = 3, C = 2 with 3 seeds
#: gave slope -0.24 +- 0.18, a miss of the -0.25 bound by noise alone); 6 seeds halve the
#: variance of the mean at twice the (small) cost.
TRAIN_SEEDS = 6

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ISOTROPIC_TRAINABLE = tuple(m for m in (Method.EXACT, Method.BLOCK_DIAGONAL, Method.BLOCK_TRIDIAGONAL,
                                        Method.KFAC, Method.UNIT_WISE)
                            if training_not_applicable(m) is None)


#: Largest condition number of an inverted infinite-width Gram for which the training
#: and test-prediction rates (properties 3, 4) are asserted at the widths used here.
#: The constant of an ``M^{-1/2}`` rate grows with the conditioning of what the
#: predictor inverts (``Theta_l``; for K-FAC also the hidden backward Grams ``Bt_l`` and
#: the forward Grams ``Q_{l-1}``): measured, K-FAC with tanh, sigma_w = 1, N = 3 has
#: ``cond(Bt_1) = 301`` and a test-prediction error of 1.05, 0.85, 0.46, 0.27 at
#: M = 32 .. 2048 (still pre-asymptotic, local slope -0.39), while exact and block
#: diagonal NGD on the same data (``cond(Theta_l) ~ 12``) show slope -0.5 from M = 32.
MAX_GRAM_CONDITION = 100.0


def _sweep(family, methods=(), *, train=False, layer_kernels=False, seeds=SEEDS, steps=2, damping=None,
           well_conditioned=False, widths=WIDTHS):
    """Run the checker's sweep on ``family`` (``damping=None``: the family's drawn ``rho``).

    ``well_conditioned``: discard (``hypothesis.assume``) families whose inverted
    infinite-width Grams exceed :data:`MAX_GRAM_CONDITION`."""
    config = SweepConfig(setup=family.setup(), widths=widths, seeds=seeds, methods=tuple(methods),
                         damping=family.damping if damping is None else damping, steps=steps, train=train,
                         layer_kernels=layer_kernels, show_progress=False)
    ctx = Context(config)
    if well_conditioned:
        k = ctx.infinite("train")
        # the output layer's backward Gram is the all-ones matrix (never inverted)
        grams = [*k.layer_ntk, *k.forward, *k.backward[:-1]]
        assume(max(np.linalg.cond(g) for g in grams) <= MAX_GRAM_CONDITION)
    return run_sweep(config, ctx)


def _explain(check) -> str:
    return f"{check.name}: {check.detail} (criterion: {check.criterion})"


# ------------------------------------------------------------------ property 1
@settings(max_examples=4, **SETTINGS)
@given(family=width_families())
def test_layer_kernels_converge_to_infinite_width_at_rate_sqrt_M(family):
    """(1) ``Theta_l`` of finite networks -> ``ngdsym.infinite_width_kernels`` at ``M^{-1/2}``.

    Each ``Theta_l`` is an average of ``M`` i.i.d. unit contributions (theory.md
    section 4), so its relative error is ``O(M^{-1/2})``; it is never exact at
    finite width (``allow_exact=False``).  Per seed the relative error of a small
    Gram matrix scatters by 20-70 % (measured: first layer of a 2-layer tanh net,
    N = 5); 24 seeds bring the mean's noise to ~10 % per width and the slope's to
    ~0.07, well inside the window (cheap: kernels only).
    """
    res, ctx = _sweep(family, layer_kernels=True, seeds=24)
    for k in range(family.depth + 1):
        check = judge_convergence(f"Theta_{k + 1}" if k < family.depth else "Theta", WIDTHS,
                                  res.layer_deviation[:, :, k], DEFAULT_CRITERIA, allow_exact=False)
        assert check.passed, _explain(check)
        assert np.all(check.rate.scaled) and check.rate.spread <= DEFAULT_CRITERIA.spread_max


# ------------------------------------------------------------------ property 2
def _method_families():
    """A method with a structure its derivation covers: unit-wise needs C = 1
    (theory.md section 2); the diagonal method has its own property (5)."""
    methods = st.sampled_from([m for m in Method if m is not Method.DIAGONAL])
    return methods.flatmap(lambda m: st.tuples(
        st.just(m), width_families(n_outputs=(1, 1) if m is Method.UNIT_WISE else (1, 2))))


@settings(max_examples=12, **SETTINGS)
@given(case=_method_families())
def test_preconditioned_kernel_converges_to_derived_limit(case):
    """(2) ``K(M)`` -> ``alpha I`` (isotropic) or ``Derivation.kernel_limit`` (others).

    Exact NGD, block diagonal, block tri-diagonal and K-FAC (``N <= M_0``) are
    ``alpha I`` at any width up to the damping error (``<= 1e-3`` for
    ``rho <= 1e-13``); GD and relu unit-wise have a genuine ``M^{-1/2}`` rate;
    :func:`derivations._common.judge_convergence` decides which and applies the
    criterion stated in the module docstring.  8 seeds per width (kernels only).

    Unit-wise is measured at ``rho = 0`` (:func:`derivations._common.kernel_damping`; ``numeric``'s per-unit pseudo-inverse, the
    ``rho -> 0`` limit the claim is about), not at the drawn ``rho``: its damping error
    per unit is ``~ N rho / lambda_min(Theta_{l,i})`` and ``Theta_{l,i}`` scales with the
    unit's squared outgoing weight, which is unbounded below (measured: tanh, M_1 = 32,
    a unit with ``|W_2i| = 1.5e-5`` gives deviation ``1.2e-3`` at ``rho = 1e-14``,
    ``1.2e-5`` at ``1e-16``, linear in ``rho``), so no fixed ``rho > 0`` keeps the damping
    error below ``exact_tol`` for every draw.  The pseudo-inverse cut-off is relative to
    each unit's own largest eigenvalue, hence blind to that scale.  Relu unit-wise gets 32
    seeds: at ``rho -> 0`` its ``K = diag(a_n)`` with ``a_n`` a binomial count, so a seed
    contributes only ``N`` (here from 3) draws per width; with 8 seeds the slope's noise
    reached ~0.3 (measured: relu, N = 3, M_1 = 32..256: slope -0.23 with 8 seeds, -0.41 with
    32); the kernels are cheap, so more seeds rather than a wider window.
    """
    method, family = case
    unit_wise = method is Method.UNIT_WISE
    res, ctx = _sweep(family, (method,), seeds=32 if unit_wise else 8)
    assert method not in res.errors, res.errors.get(method)
    (check,) = judge_kernel(res, ctx, method)
    assert check.kind != "skipped", f"{method}: no closed form to compare with: {check.detail}"
    assert check.passed, _explain(check)


# ------------------------------------------------------------- properties 3, 4
def _trainable_families():
    return st.tuples(st.sampled_from(ISOTROPIC_TRAINABLE), width_families(n_samples=(3, 6)))


@settings(max_examples=6, **SETTINGS)
@given(case=_trainable_families())
def test_training_residual_follows_isotropic_dynamics(case):
    """(3) ``f_t - y`` of the trained finite network -> ``(1 - alpha eta)^t (f_0 - y)``.

    Two NGD steps at ``eta = 1/alpha`` (``numeric.train``, the real nonlinear
    network): the Jacobian moves by ``O(M^{-1/2})``, so the relative residual
    error is ``O(M^{-1/2})`` -- an upper bound (theory.md section 5): the check is
    slope ``<= -0.25`` and ``error * sqrt(M)`` not growing (``<= 3`` x its value at
    the smallest width); small one-hidden-layer nets decay faster (slope ~ -1 at
    ``M = 32..256``), which the bound allows.  Unit-wise is excluded (its module's
    ``TRAINING_NOT_APPLICABLE``: the deviation bound is vacuous at the damping
    isotropy needs).  Ill-conditioned families are discarded as in property 4.
    """
    method, family = case
    res, ctx = _sweep(family, (method,), train=True, seeds=TRAIN_SEEDS, well_conditioned=True)
    assert method not in res.errors, res.errors.get(method)
    check = judge_convergence(f"dynamics {method}", WIDTHS, res.methods[method]["dynamics_error"],
                              DEFAULT_CRITERIA, upper_bound=True)
    assert check.passed, _explain(check)


@settings(max_examples=6, **SETTINGS)
@given(case=_trainable_families())
def test_test_predictions_follow_derived_predictor(case):
    """(4) finite-width test outputs -> ``Derivation.predict_test`` at ``M^{-1/2}``.

    The predictor uses the infinite-width kernels and the network's own
    ``e_0 = f_0(X) - y``; the finite network differs by kernel fluctuations and
    Jacobian motion, both ``O(M^{-1/2})``: the same bound criterion as property 3.
    Families whose inverted Grams have condition number above
    :data:`MAX_GRAM_CONDITION` are discarded (the rate's constant grows with it).
    """
    method, family = case
    res, ctx = _sweep(family, (method,), train=True, seeds=TRAIN_SEEDS, well_conditioned=True)
    assert method not in res.errors, res.errors.get(method)
    err = res.methods[method]["test_error"]
    assert not np.all(np.isnan(err)), f"{method}: no test predictor ({res.notes.get(method)})"
    check = judge_convergence(f"test predictions {method}", WIDTHS, err, DEFAULT_CRITERIA, upper_bound=True)
    assert check.passed, _explain(check)


# ------------------------------------------------------------------ property 5
@settings(max_examples=4, **SETTINGS)
@given(family=width_families(n_samples=(4, 8)))
def test_diagonal_method_is_not_isotropic(family):
    """(5) element-wise diagonal NGD: ``K`` stays detectably away from ``alpha I``.

    theory.md section 2: ``K = J (diag F + rho)^{-1} J^T / N`` is a weighted NTK,
    not a multiple of ``I``.  Criterion (``Criteria.condition_min``): the mean
    condition number, fitted as ``1 + a + b M^{-1/2}`` over the widths (finite-width
    corrections are ``O(M^{-1/2})``), extrapolates to ``1 + a >= 1.1`` with ``a``
    above three standard errors.  A per-width threshold would not do: a ``K``
    converging to ``alpha I`` (relu unit-wise) still has ``cond ~ 1.3`` at
    ``M = 256``; measured here, the diagonal ``K`` plateaus (e.g. 1.64 from
    ``M = 1024`` to ``16384`` for a 2-layer relu net with N = 4).  Hence the larger
    :data:`DIAGONAL_WIDTHS` (cheap at N <= 8): over ``M = 32..256`` the approach to the
    plateau can itself look like ``M^{-1/2}`` decay (measured: relu, C = 2, N = 4:
    cond 3.58, 2.81, 2.22, 1.94 at M = 32..256 extrapolated to 0.98, while it levels off
    at 1.80 (M = 4096) and 1.73 (M = 16384)).
    """
    res, ctx = _sweep(family, (Method.DIAGONAL,), widths=DIAGONAL_WIDTHS)
    assert Method.DIAGONAL not in res.errors, res.errors.get(Method.DIAGONAL)
    q = res.methods[Method.DIAGONAL]
    check = judge_non_isotropic("diagonal", DIAGONAL_WIDTHS, q["condition_number"], q["isotropy_deviation"],
                                DEFAULT_CRITERIA)
    assert check.passed, _explain(check)
