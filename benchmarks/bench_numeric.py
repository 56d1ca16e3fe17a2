"""Timings of the numeric core: per-layer kernels and every preconditioned kernel.

Run from the repository root::

    python -m benchmarks.bench_numeric                 # N = 128, M = 2048, L = 3, C = 1, relu
    python -m benchmarks.bench_numeric --json bench.json --repeat 5

Two tables:

1. the fast routines at the requested size (``layer_kernels``, then
   ``preconditioned_kernel`` and ``natural_gradient`` for every method).  The dense
   reference (``P x P``) cannot run there: at ``M = 2048`` it would need
   ``P^2 * 8`` bytes (~ 2.6e2 TB), so it is reported as skipped with its size;
2. fast vs dense (:mod:`numeric.reference`) at the same ``N`` and depth but the
   largest width the dense reference accepts (``P <= reference.MAX_PARAMS``), with
   the fast/dense time ratio.

Times are the best of ``--repeat`` runs (wall clock, ``time.perf_counter``).  On a
shared or small machine, multi-threaded OpenBLAS (NumPy and SciPy each bundle one)
makes small ``N x N`` factorisations 10-100x slower than single-threaded; run with
``OPENBLAS_NUM_THREADS=1`` for stable figures (the value in effect is recorded).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time

import numpy as np

from numeric import METHODS, MLP, layer_kernels, natural_gradient, preconditioned_kernel, reference

print = functools.partial(print, flush=True)  # rows appear as they are timed


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def make_problem(n, width, depth, input_dim, activation, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, input_dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = rng.standard_normal((n, 1))
    net = MLP([input_dim] + [width] * (depth - 1) + [1], activation=activation, seed=seed)
    return net, X, Y


def dense_width(depth, input_dim):
    """Largest hidden width whose parameter count fits the dense reference."""
    width = 1
    while MLP([input_dim] + [width + 1] * (depth - 1) + [1]).n_params <= reference.MAX_PARAMS:
        width += 1
    return width


def time_fast(net, X, Y, damping, repeat):
    rows = [("layer_kernels", "-", best_time(lambda: layer_kernels(net, X), repeat))]
    for method in METHODS:
        t_k = best_time(lambda: preconditioned_kernel(net, X, method, damping), repeat)
        t_u = best_time(lambda: natural_gradient(net, X, Y, method, damping), repeat)
        rows.append(("preconditioned_kernel", method.value, t_k))
        rows.append(("natural_gradient", method.value, t_u))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=128, help="number of inputs N (default 128)")
    parser.add_argument("--width", type=int, default=2048, help="hidden width M (default 2048)")
    parser.add_argument("--depth", type=int, default=3, help="number of layers L (default 3)")
    parser.add_argument("--input-dim", type=int, default=16, help="input dimension M_0 (default 16)")
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--damping", type=float, default=1e-6)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--dense-width", type=int, default=None,
                        help="width of the fast-vs-dense comparison (default: largest the reference accepts)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)

    results = {"config": vars(args), "python": platform.python_version(), "numpy": np.__version__,
               "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"), "cpus": os.cpu_count(),
               "fast": [], "comparison": []}

    net, X, Y = make_problem(args.n, args.width, args.depth, args.input_dim, args.activation)
    print(f"fast routines: N = {args.n}, M = {args.width}, L = {args.depth}, C = 1, "
          f"{args.activation}, P = {net.n_params}, damping = {args.damping:g}, best of {args.repeat}, "
          f"OPENBLAS_NUM_THREADS = {results['OPENBLAS_NUM_THREADS']}")
    print(f"  dense reference not run here: one P x P matrix alone is {8 * net.n_params**2 / 1e12:.1f} TB")
    print(f"  {'routine':<24}{'method':<20}{'seconds':>10}")
    for routine, method, seconds in time_fast(net, X, Y, args.damping, args.repeat):
        print(f"  {routine:<24}{method:<20}{seconds:>10.4f}")
        results["fast"].append({"routine": routine, "method": method, "seconds": seconds})

    width = args.dense_width or dense_width(args.depth, args.input_dim)
    small, Xs, _ = make_problem(args.n, width, args.depth, args.input_dim, args.activation)
    print(f"\nfast vs dense: N = {args.n}, M = {width}, L = {args.depth}, P = {small.n_params}")
    print(f"  {'method':<20}{'fast s':>10}{'dense s':>10}{'fast/dense':>12}{'max rel diff':>14}")
    for method in METHODS:
        t_fast = best_time(lambda: preconditioned_kernel(small, Xs, method, args.damping), args.repeat)
        try:
            K_dense = reference.preconditioned_kernel(small, Xs, method, args.damping)
            t_dense = best_time(lambda: reference.preconditioned_kernel(small, Xs, method, args.damping),
                                max(1, min(args.repeat, 2)))
        except (MemoryError, NotImplementedError, ValueError) as exc:
            print(f"  {method.value:<20}{t_fast:>10.4f}   dense skipped: {exc}")
            results["comparison"].append({"method": method.value, "fast": t_fast, "dense": None})
            continue
        K_fast = preconditioned_kernel(small, Xs, method, args.damping)
        diff = float(np.abs(K_fast - K_dense).max() / np.abs(K_dense).max())
        print(f"  {method.value:<20}{t_fast:>10.4f}{t_dense:>10.4f}{t_fast / t_dense:>12.4f}{diff:>14.2e}")
        results["comparison"].append({"method": method.value, "width": width, "fast": t_fast,
                                      "dense": t_dense, "ratio": t_fast / t_dense, "max_rel_diff": diff})

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
