"""One training epoch of a 784-512-256-10 ReLU network (batch 256, Adam, float32,
20,000 random samples) through fastnn.nn on each backend, beside the same model
in PyTorch (when installed, 2 threads) and beside the network's GEMMs alone.

    pytest bench/test_nn_epoch.py --benchmark-only

The GEMMs alone ("gemms") are what no implementation can avoid: per batch the
three forward products and two backward products per layer (dW and dx), without
the first layer's dx. Each runner's extra_info gives its epoch time as a percent
of that GEMM-only time measured in the same session (100% would mean everything
around the GEMMs is free), and the GEMM-only time the machine's peak GEMM rate
(from the `limits` fixture) would need.

PyTorch runs in the same process as the fastnn backends, after their threads
ran; `python -m fastnn bench` times it in a process of its own, for its best
figure.
"""

import importlib.util

import numpy as np
import pytest

import fastnn
from fastnn import benchmarks, nn

SIZES = (784, 512, 256, 10)
BATCH = 256
DTYPE = np.float32
_seconds = {}  # runner -> (median, best) epoch seconds, for the ratios


def n_samples(scale):
    return max(BATCH * 2, int(20_000 * scale))


def dataset(scale):
    rng = np.random.default_rng(0)
    n = n_samples(scale)
    return rng.standard_normal((n, SIZES[0])).astype(DTYPE), rng.integers(0, SIZES[-1], n)




def fastnn_epoch(backend, X, y):
    model = nn.Sequential([nn.Dense(512, "relu"), nn.Dense(256, "relu"), nn.Dense(10)],
                          loss="sparse_categorical_crossentropy", optimizer=nn.Adam(1e-3), seed=0,
                          backend=backend, dtype=DTYPE)
    return lambda: model.fit(X, y, epochs=1, batch_size=BATCH, verbose=0)






def runners():
    names = fastnn.available_backends()
    if importlib.util.find_spec("torch") is not None:
        names.append("torch")
    return ["gemms"] + names  # the GEMM-only time first, for the ratios


@pytest.mark.parametrize("runner", runners())
def test_nn_epoch(benchmark, limits, results, scale, runner):
    X, y = dataset(scale)
    if runner == "gemms":
        fn = benchmarks.network_gemms({"X": X})
    elif runner == "torch":
        fn = benchmarks.nn_epoch_torch({"X": X, "y": y})
    else:
        fn = fastnn_epoch(runner, X, y)
    fn()  # warm-up: compiles Numba code, allocates workspaces
    benchmark.group = f"nn_epoch {'-'.join(map(str, SIZES))} batch {BATCH} x {X.shape[0]} float32"
    benchmark.pedantic(fn, rounds=5, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable
        return
    median, best = benchmark.stats.stats.median, benchmark.stats.stats.min
    _seconds[runner] = (median, best)
    flops = benchmarks.network_flops(X.shape)
    peak_seconds = flops / (limits["gemm_gflops"]["float32"] * 1e9)
    info = {"epoch_s": median, "epoch_min_s": best, "samples": X.shape[0], "gemm_flops": flops,
            "gemm_gflops": flops / median / 1e9, "gemm_at_peak_s": peak_seconds,
            "percent_of_peak_gemm_time": 100 * median / peak_seconds}
    if "gemms" in _seconds:  # medians, and best runs (less exposed to a busy machine)
        info["percent_of_gemm_only_time"] = 100 * median / _seconds["gemms"][0]
        info["percent_of_gemm_only_time_best"] = 100 * best / _seconds["gemms"][1]
    benchmark.extra_info.update(info)
    results.append({"benchmark": "nn_epoch", "backend": runner, "median_s": median,
                    "rate": flops / median / 1e9, "rate_unit": "GFLOP/s",
                    "percent_of_limit": 100 * peak_seconds / median})
