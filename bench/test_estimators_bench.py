"""Fit time of fastnn.MLPClassifier on each backend against scikit-learn's
MLPClassifier with the same parameters (pytest-benchmark):

    pytest bench/test_estimators_bench.py --benchmark-only

* digits: load_digits (1797 x 64, float64), default parameters, 100 epochs
  (n_iter_no_change above max_iter, so neither stops early);
* mnist_like: 20000 x 784 uniform random float32, 10 classes, hidden (512, 256),
  batch 256, adam, 3 epochs.

Runner "bare-gemms" does only the matrix products of the same fit (forward x W,
backward x^T dz and dz W^T, per batch, into preallocated arrays): the floor any
implementation of the same math on this BLAS reaches.

Each test records in benchmark.extra_info the seconds per epoch, the GEMM rate of
the fit (the FLOPs of its matrix products per second) as a percent of the GEMM
limit measured in the same session, and its speed-up over scikit-learn measured
in the same run. FASTNN_BENCH_SCALE shrinks the sample counts for a smoke run."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier as SklearnMLPClassifier

import fastnn
from fastnn import benchmarks

SKLEARN = "sklearn"
BARE = "bare-gemms"


def digits(scale):
    X, y = load_digits(return_X_y=True)
    n = max(50, int(len(y) * scale))
    return X[:n], y[:n]


def mnist_like(scale):
    rng = np.random.RandomState(0)
    n = max(512, int(20000 * scale))
    return rng.rand(n, 784).astype(np.float32), rng.randint(0, 10, n)


CASES = {
    # name: (data, parameters, epochs, rounds)
    "digits": (digits, dict(max_iter=100, n_iter_no_change=101), 100, 5),
    "mnist_like": (mnist_like, dict(hidden_layer_sizes=(512, 256), batch_size=256, solver="adam",
                                    max_iter=3, n_iter_no_change=4), 3, 3),
}
RUNNERS = [SKLEARN] + fastnn.available_backends() + [BARE]
_sklearn_seconds = {}  # case -> scikit-learn's median fit time in this run


def bare_gemms(X, units, batch_size, epochs):
    """A callable doing only the matrix products of `epochs` epochs of training."""
    epoch = benchmarks.network_gemms({"X": X}, units, batch_size)

    def run():
        for _ in range(epochs):
            epoch()

    return run


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("case", list(CASES))
def test_fit(benchmark, limits, results, scale, case, runner):
    make_data, params, epochs, rounds = CASES[case]
    X, y = make_data(scale)
    units = [X.shape[1], *params.get("hidden_layer_sizes", (100,)), 10]
    if runner == BARE:
        fit = bare_gemms(X, units, params.get("batch_size", min(200, X.shape[0])), epochs)
    else:
        if runner == SKLEARN:
            make = lambda: SklearnMLPClassifier(random_state=0, **params)  # noqa: E731
        else:
            make = lambda: fastnn.MLPClassifier(random_state=0, backend=runner, **params)  # noqa: E731

        def fit():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                return make().fit(X, y)

    fitted = fit()  # warm-up (compiles Numba code), and the check that all epochs ran
    assert runner == BARE or fitted.n_iter_ == epochs
    benchmark.group = f"MLPClassifier fit: {case} {X.shape[0]}x{X.shape[1]} {X.dtype}, {epochs} epochs"
    benchmark.pedantic(fit, rounds=rounds, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable
        return
    median = benchmark.stats.stats.median
    rate = benchmarks.network_flops(X.shape, units) * epochs / median / 1e9
    dtype = str(X.dtype)
    info = {"seconds_per_epoch": median / epochs, "gemm_gflops": rate,
            "percent_of_gemm_limit": 100 * rate / benchmarks.limit_for(limits, "flop", dtype)}
    if runner == SKLEARN:
        _sklearn_seconds[case] = median
    elif case in _sklearn_seconds:
        info["speedup_vs_sklearn"] = _sklearn_seconds[case] / median
    benchmark.extra_info.update(info)
    results.append({"benchmark": f"mlp_{case}", "backend": runner, "median_s": median, "rate": rate,
                    "rate_unit": "GFLOP/s", "percent_of_limit": info["percent_of_gemm_limit"]})
