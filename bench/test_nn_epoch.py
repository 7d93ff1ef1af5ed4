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

PyTorch runs in the same process as the fastnn backends, so it inherits the
OMP_WAIT_POLICY=PASSIVE the C backend sets at import; alone, with its default
policy, it is faster on this kind of machine (measure it in a separate process
for its best figure).
"""

import importlib.util

import numpy as np
import pytest

import fastnn
from fastnn import nn

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


def gemm_flops(n):
    """Flops of one epoch's GEMMs over n samples: 2 n in out per product; three
    products per layer (forward, dW, dx) except the first layer's dx."""
    pairs = list(zip(SIZES[:-1], SIZES[1:]))
    return sum(2 * n * i * o * (2 if k == 0 else 3) for k, (i, o) in enumerate(pairs))


def fastnn_epoch(backend, X, y):
    model = nn.Sequential([nn.Dense(512, "relu"), nn.Dense(256, "relu"), nn.Dense(10)],
                          loss="sparse_categorical_crossentropy", optimizer=nn.Adam(1e-3), seed=0,
                          backend=backend, dtype=DTYPE)
    return lambda: model.fit(X, y, epochs=1, batch_size=BATCH, verbose=0)


def torch_epoch(X, y):
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    layers = []
    for k, (i, o) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers += [torch.nn.Linear(i, o)] + ([torch.nn.ReLU()] if k < len(SIZES) - 2 else [])
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch():
        order = torch.randperm(Xt.shape[0])
        for lo in range(0, Xt.shape[0], BATCH):
            idx = order[lo:lo + BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()

    return epoch


def gemm_epoch(X):
    """The epoch's GEMMs alone, into preallocated outputs (sizes of a real step)."""
    rng = np.random.default_rng(1)
    pairs = list(zip(SIZES[:-1], SIZES[1:]))
    W = [rng.standard_normal(p).astype(DTYPE) for p in pairs]
    dW = [np.empty_like(w) for w in W]
    bufs = {}

    def buffers(n):
        if n not in bufs:
            bufs[n] = ([np.empty((n, o), DTYPE) for _, o in pairs],
                       [np.empty((n, i), DTYPE) for i, _ in pairs])
        return bufs[n]

    def epoch():
        for lo in range(0, X.shape[0], BATCH):
            x = X[lo:lo + BATCH]
            h, dx = buffers(x.shape[0])
            inputs = [x] + h[:-1]
            for k in range(len(W)):  # forward
                np.matmul(inputs[k], W[k], out=h[k])
            for k in reversed(range(len(W))):  # backward: dz of layer k is stood in by h[k]
                np.matmul(inputs[k].T, h[k], out=dW[k])
                if k:
                    np.matmul(h[k], W[k].T, out=dx[k])

    return epoch


def runners():
    names = fastnn.available_backends()
    if importlib.util.find_spec("torch") is not None:
        names.append("torch")
    return ["gemms"] + names  # the GEMM-only time first, for the ratios


@pytest.mark.parametrize("runner", runners())
def test_nn_epoch(benchmark, limits, results, scale, runner):
    X, y = dataset(scale)
    if runner == "gemms":
        fn = gemm_epoch(X)
    elif runner == "torch":
        fn = torch_epoch(X, y)
    else:
        fn = fastnn_epoch(runner, X, y)
    fn()  # warm-up: compiles Numba code, allocates workspaces
    benchmark.group = f"nn_epoch {'-'.join(map(str, SIZES))} batch {BATCH} x {X.shape[0]} float32"
    benchmark.pedantic(fn, rounds=5, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable
        return
    median, best = benchmark.stats.stats.median, benchmark.stats.stats.min
    _seconds[runner] = (median, best)
    flops = gemm_flops(X.shape[0])
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
