"""Per-epoch training time of the small networks most scikit-learn users train,
beside the same networks' GEMMs alone called through NumPy (issue #24's target:
within 1.5x of them).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/small_networks.py
    python bench/small_networks.py --clock cpu --backend c --case digits
    python bench/small_networks.py --clock cpu --tree /path/to/another/checkout

Cases (batch 200, Adam, scikit-learn's defaults otherwise):

* digits: sklearn's load_digits (1797 x 64, 10 classes), hidden (100,), float64;
* tabular: 50,000 x 54 synthetic rows (covtype-like: 44 binary and 10
  standardised columns, 7 classes), hidden (100,), float64;
* tabular32: the same data, hidden (64, 64), float32.

An epoch is timed as the difference between a fit of `epochs` epochs (shuffled;
stopping rules off) and a fit of one, over epochs - 1: the fit's own start-up
(validation, init) cancels. `gemms` is one epoch's matrix products alone into
preallocated arrays (fastnn.benchmarks.workloads.network_gemms: per batch the
forward product, dW and, but for the first layer, dx of each layer), unshuffled.
Each round times every variant once, in turns; the figures are minima over the
rounds. One thread by default (--threads): on a shared machine the 2-thread
figures of such small GEMMs are mostly waiting.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# the fastnn of this checkout (or of the one --tree names), not an installed one
TREE = sys.argv[sys.argv.index("--tree") + 1] if "--tree" in sys.argv else Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TREE))
import fastnn  # noqa: E402
from fastnn.benchmarks.workloads import network_gemms  # noqa: E402

BATCH = 200
CLOCK = [time.perf_counter]  # or time.process_time (--clock cpu)


def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def tabular(n=50_000, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, 10))
    binary = (rng.random((n, 44)) < 0.2).astype(np.float64)
    X = np.hstack([dense, binary])
    y = np.argmax(X @ rng.standard_normal((54, 7)) + rng.standard_normal((n, 7)), axis=1)
    return X, y


CASES = {  # name: (data, hidden layers, dtype, epochs per timed fit)
    "digits": (digits, (100,), np.float64, 30),
    "tabular": (tabular, (100,), np.float64, 4),
    "tabular32": (tabular, (64, 64), np.float32, 4),
}


def fit_seconds(backend, X, y, hidden, dtype, epochs):
    from sklearn.exceptions import ConvergenceWarning

    est = fastnn.MLPClassifier(hidden, max_iter=epochs, n_iter_no_change=epochs + 1, random_state=0,
                               backend=backend, dtype=np.dtype(dtype).name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = CLOCK[0]()
        est.fit(X, y)
        return CLOCK[0]() - start


def gemm_seconds(epoch):
    start = CLOCK[0]()
    epoch()
    return CLOCK[0]() - start


def measure(case, names, rounds):
    """{runner: best seconds per epoch}: an epoch of each backend is the difference
    of a fit of `epochs` epochs and a fit of one, over epochs - 1 (the fit's start-up
    cancels), beside `gemms`, one epoch's GEMMs alone."""
    load, hidden, dtype, epochs = CASES[case]
    X, y = load()
    X = X.astype(dtype)
    units = (X.shape[1],) + hidden + (len(np.unique(y)),)
    gemms = network_gemms({"X": X}, units, BATCH)
    best = {"gemms": float("inf")}
    for name in names:
        best[name] = best[name + " fit1"] = float("inf")
    for _ in range(rounds):
        best["gemms"] = min(best["gemms"], gemm_seconds(gemms))
        for name in names:
            best[name + " fit1"] = min(best[name + " fit1"], fit_seconds(name, X, y, hidden, dtype, 1))
            best[name] = min(best[name], fit_seconds(name, X, y, hidden, dtype, epochs))
    per_epoch = {"gemms": best["gemms"]}
    for name in names:
        per_epoch[name] = (best[name] - best[name + " fit1"]) / (epochs - 1)
    return X.shape, hidden, dtype, per_epoch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    parser.add_argument("--backend", action="append", choices=fastnn.available_backends())
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="BLAS and kernel threads (default 1)")
    parser.add_argument("--tree", help="a checkout of fastnn to time instead of this one")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time (with one thread, what a quiet machine's "
                             "wall time would be: time spent waiting for a shared core is not counted)")
    args = parser.parse_args()
    if args.clock == "cpu":
        CLOCK[0] = time.process_time
    print(f"fastnn from {Path(fastnn.__file__).parent}; {args.threads} thread(s), {args.clock} clock")
    if args.threads:
        fastnn.set_num_threads(args.threads)
    names = args.backend or fastnn.available_backends()
    for case in args.case or list(CASES):
        shape, hidden, dtype, per_epoch = measure(case, names, args.rounds)
        gemms = per_epoch["gemms"]
        print(f"{case}: {shape[0]} x {shape[1]}, hidden {hidden}, {np.dtype(dtype).name}, batch {BATCH}; "
              f"gemms {gemms * 1e3:.3f} ms per epoch")
        for name in names:
            seconds = per_epoch[name]
            print(f"  {name:6s} {seconds * 1e3:8.3f} ms per epoch  {seconds / gemms:5.2f}x gemms")


if __name__ == "__main__":
    main()
