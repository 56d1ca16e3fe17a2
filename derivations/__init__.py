"""derivations: every symbolic claim of :mod:`ngdsym` held against finite networks of :mod:`numeric`.

``python -m derivations`` (the main command) derives every method, measures the
finite-width preconditioned kernel ``K = J (F_hat + rho I)^{-1} J^T / N`` as the
width grows, trains finite networks, and writes ``report/`` (report.md,
results.json, PNG plots).  Each result also has its own module, runnable as
``python -m derivations.<name>``:

``kernels``            per-layer NTKs -> infinite-width kernels (theory.md section 4)
``gd``                 gradient descent baseline, ``K = Theta / N``
``exact``              exact NGD, ``alpha = 1``
``block_diagonal``     layer-wise blocks, ``alpha = L``
``block_tridiagonal``  ``alpha(L) = 1^T T^+ 1`` for many L
``kfac``               K-FAC, ``alpha = N(L-1)+1`` and the first layer with ``M_0 < N``
``unit_wise``          unit-wise, relu against tanh
``diagonal``           the element-wise diagonal counterexample (not isotropic)
``dynamics``           ``f_t - y = (1 - alpha eta)^t (f_0 - y)``
``test_predictions``   finite-width test outputs -> ``Derivation.predict_test``
``digits``             the paper's real-data experiment on scikit-learn's 8x8 digits
``unitwise_bound``     the unit-wise deviation bound (issue 5)

Every module exits with status 0 when its checks pass and 1 when one fails.
"""
