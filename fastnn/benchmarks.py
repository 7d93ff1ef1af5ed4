"""Kernel benchmarks, measured against this machine's own limits.

Three parts:

* `measure_limits`: what this machine can do at best, measured in the same run:
  BLAS GEMM GFLOP/s per dtype (numpy matmul of two n x n matrices, best of
  several) and streaming memory bandwidth (``np.copyto`` of a large array and an
  in-place ``b += a``, counting the bytes read plus the bytes written; and a pure
  read, ``a.sum()``).
* `BENCHMARKS`: the benchmarks as data (`Benchmark`): sizes, dtype, a setup that
  builds the inputs and preallocated outputs, one call on a backend, and the work
  one call does: floating-point operations for GEMM-bound kernels, or the bytes a
  kernel must move at least (every array it has to read, once, and every array
  it has to write, once; vectors of length C next to (N, C) arrays are ignored).
  Adding a benchmark is appending one `Benchmark` to `BENCHMARKS`.
* `run_benchmark` / `run`: time each benchmark on each backend (median over
  repeats after a warm-up that also compiles Numba code, the backends timed in
  turns so that they share the machine's moments of noise) and on the other
  libraries a benchmark names (PyTorch when installed), and return `Record`s with
  the rate, the percent of the machine limit and the speed-up over the reference.
"""

import dataclasses
import importlib.metadata
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

import fastnn

REFERENCE = "numpy"
MB = 1 << 20
# shrinks every benchmark's first dimension and the limit measurements (tests use it)
SCALE_ENV = "FASTNN_BENCH_SCALE"


# ---------------------------------------------------------------------- timing
def time_calls(fns, min_time=0.3, min_repeats=5, max_repeats=50, warmup=2, min_sample=2e-3):
    """[(median, best) seconds of one call, and how many calls were timed] for
    each function of `fns`, timed in turns: each round takes one sample of every
    function due, so that all of them meet the same moments of a noisy machine
    and their ratios hold even when its speed drifts during the run.

    `warmup` calls first (the first compiles Numba code). Calls shorter than
    `min_sample` are timed in batches of `inner` calls so the clock's resolution
    does not matter; the number of samples of each fills about `min_time`
    seconds, spread evenly over the rounds."""
    plans = []  # (inner, repeats) per function
    for fn in fns:
        for _ in range(warmup):
            fn()
        once = float("inf")
        for _ in range(3):  # the fastest of three calls: one slow call must not set the pace
            t0 = time.perf_counter()
            fn()
            once = min(once, time.perf_counter() - t0)
        once = max(once, 1e-9)
        inner = max(1, int(min_sample / once))
        plans.append((inner, min(max_repeats, max(min_repeats, int(min_time / (once * inner))))))
    rounds = max((repeats for _, repeats in plans), default=0)
    samples = [[] for _ in fns]
    for r in range(rounds):
        for fn, (inner, repeats), taken in zip(fns, plans, samples):
            if (r + 1) * repeats // rounds == r * repeats // rounds:
                continue  # not due this round: its samples spread over all rounds
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            taken.append((time.perf_counter() - t0) / inner)
    return [(statistics.median(taken), min(taken), repeats * inner)
            for taken, (inner, repeats) in zip(samples, plans)]


def time_call(fn, **options):
    """time_calls of one function."""
    return time_calls([fn], **options)[0]


def best_of(fn, repeats, min_time=0.3, max_repeats=100):
    """Shortest of at least `repeats` timed calls (more, up to max_repeats, until
    about min_time seconds have passed), after one warm-up call."""
    fn()
    best, spent, done = float("inf"), 0.0, 0
    while done < repeats or (spent < min_time and done < max_repeats):
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        best, spent, done = min(best, seconds), spent + seconds, done + 1
    return best


# ---------------------------------------------------------------------- limits
def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def in_threads(fn, n, threads):
    """A callable running fn(slice) over `threads` contiguous slices of range(n) at
    once (numpy releases the GIL inside copies, ufuncs and sums), and the pool to shut."""
    parts = [slice(n * i // threads, n * (i + 1) // threads) for i in range(threads)]
    if threads == 1:
        return (lambda: fn(parts[0])), None
    pool = ThreadPoolExecutor(threads)
    return (lambda: list(pool.map(fn, parts))), pool


def best_streaming(fn, n, repeats, min_time):
    """Best seconds of fn over range(n), on one thread and on all usable cores
    (on some machines one thread streams faster than two)."""
    best = float("inf")
    for threads in sorted({1, usable_cores()}):
        call, pool = in_threads(fn, n, threads)
        best = min(best, best_of(call, repeats, min_time))
        if pool is not None:
            pool.shutdown()
    return best


def measure_limits(scale=1.0, repeats=5, min_time=1.0):
    """This machine's ceilings, measured now, each the best of at least `repeats`
    calls spread over about `min_time` seconds (on a shared machine the best
    call is the one that had the cores to itself).

    gemm_gflops[dtype]: 2 n^3 / seconds of np.matmul(a, b, out=c), n x n;
    n = 2048 at scale 1 (BLAS uses its own threads).
    Streaming, over float64 arrays a and b of 256 MB each at scale 1, on one
    thread and on all cores, the best kept; bytes counted as the kernels count
    theirs (each array read once, each written once):
    copy_gbs: np.copyto(b, a), 2 arrays of bytes;
    update_gbs: b += a, 3 arrays of bytes (read a, b; write b): in-place
    updates, like the optimizer steps, avoid the extra read a CPU makes of a
    destination it has not read (write-allocate), so they stream faster;
    stream_gbs: the higher of the two, the ceiling for byte-counting benchmarks;
    read_gbs: a.sum(), 1 array of bytes."""
    n = max(64, round(2048 * scale ** (1 / 3)))
    rng = np.random.default_rng(0)
    gemm = {}
    for dtype in ("float32", "float64"):
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        c = np.empty((n, n), dtype)
        seconds = best_of(lambda a=a, b=b, c=c: np.matmul(a, b, out=c), repeats, min_time)
        gemm[dtype] = 2 * n**3 / seconds / 1e9
    nbytes = max(MB, int(256 * MB * scale)) // 8 * 8
    size = nbytes // 8
    a = np.ones(size)  # written once so every page is mapped before timing
    b = np.zeros_like(a)
    b[...] = 0.0

    def update(s):
        np.add(b[s], a[s], out=b[s])

    copy = 2 * nbytes / best_streaming(lambda s: np.copyto(b[s], a[s]), size, repeats, min_time) / 1e9
    update = 3 * nbytes / best_streaming(update, size, repeats, min_time) / 1e9
    read = nbytes / best_streaming(lambda s: a[s].sum(), size, repeats, min_time) / 1e9
    return {
        "gemm_gflops": gemm,
        "gemm_n": n,
        "copy_gbs": copy,
        "update_gbs": update,
        "stream_gbs": max(copy, update),
        "read_gbs": read,
        "stream_bytes": nbytes,
    }


def best_limits(first, second):
    """The higher of two measurements of each limit (e.g. at the start and the end
    of a run, so that a busy moment does not lower the ceiling)."""
    best = dict(first)
    best["gemm_gflops"] = {k: max(v, second["gemm_gflops"][k]) for k, v in first["gemm_gflops"].items()}
    for key in ("copy_gbs", "update_gbs", "stream_gbs", "read_gbs"):
        best[key] = max(first[key], second[key])
    return best


def limit_for(limits, unit, dtype):
    """The ceiling a benchmark's rate is compared with: GEMM GFLOP/s of its dtype
    for flop counts, the streaming GB/s (stream_gbs) for byte counts."""
    return limits["gemm_gflops"][dtype] if unit == "flop" else limits["stream_gbs"]


# ---------------------------------------------------------------- definitions
@dataclass
class Benchmark:
    """One benchmark: everything the runner, the CLI and bench/ need.

    setup(shape, dtype) -> dict of named arrays (inputs and preallocated outputs),
    from a fixed seed. call(backend, arrays) runs the measured work once.
    Work per call: with unit "byte", the sum of the sizes of the arrays named in
    `reads` and `writes` (an array read twice is named twice); with unit "flop",
    flops(shape). others: {library: make(arrays) -> zero-argument callable doing
    the same work in that library}, for comparison; make raises ImportError when
    the library is missing. bare(arrays) -> callable: the unavoidable core of the
    work alone (e.g. the GEMMs of a dense layer), timed once for comparison."""

    name: str
    shape: tuple
    dtype: str
    setup: Callable
    call: Callable
    unit: str = "byte"
    reads: tuple = ()
    writes: tuple = ()
    flops: Optional[Callable] = None
    kernels: tuple = ()
    quick: bool = False
    others: dict = field(default_factory=dict)
    bare: Optional[Callable] = None
    min_first: int = 1  # smallest first dimension scaling may produce

    def scaled_shape(self, scale=1.0):
        first = max(self.min_first, round(self.shape[0] * scale))
        return (first,) + tuple(self.shape[1:])

    def work(self, arrays, shape):
        """Flops or bytes of one call (see the class docstring)."""
        if self.unit == "flop":
            return int(self.flops(shape))
        return sum(arrays[name].nbytes for name in self.reads + self.writes)

    def counts(self):
        """What `work` counts, in words."""
        if self.unit == "flop":
            return "flops of the GEMMs (2 per multiply-add)"
        return f"bytes: reads {', '.join(self.reads)}; writes {', '.join(self.writes)}"


def _rng():
    return np.random.default_rng(1234)


def _torch():
    import torch  # ImportError when PyTorch is not installed

    return torch


def _tensors(arrays, *names):
    torch = _torch()
    return [torch.from_numpy(arrays[name]) for name in names]


# softmax cross-entropy, integer labels, forward + backward
def softmax_ce_setup(shape, dtype):
    n, c = shape
    rng = _rng()
    return {
        "logits": (3 * rng.standard_normal((n, c))).astype(dtype),
        "labels": rng.integers(0, c, n),  # int64
        "grad": np.empty((n, c), dtype),
    }


def softmax_ce_call(backend, a):
    backend.softmax_cross_entropy(a["logits"], a["labels"], grad=a["grad"])


def softmax_ce_torch(a):
    torch = _torch()
    logits, labels = _tensors(a, "logits", "labels")
    logits.requires_grad_(True)

    def step():
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return torch.autograd.grad(loss, logits)

    return step


# batch norm in training, forward + backward
def batchnorm_setup(shape, dtype):
    n, c = shape
    rng = _rng()
    return {
        "x": rng.standard_normal((n, c)).astype(dtype),
        "dy": rng.standard_normal((n, c)).astype(dtype),
        "gamma": rng.uniform(0.5, 1.5, c).astype(dtype),
        "beta": rng.standard_normal(c).astype(dtype),
        "running_mean": np.zeros(c, dtype),
        "running_var": np.ones(c, dtype),
        "y": np.empty((n, c), dtype),
        "dx": np.empty((n, c), dtype),
        "dgamma": np.empty(c, dtype),
        "dbeta": np.empty(c, dtype),
    }


def batchnorm_call(backend, a):
    _, cache = backend.batchnorm_forward(a["x"], a["gamma"], a["beta"], a["running_mean"],
                                         a["running_var"], True, out=a["y"])
    backend.batchnorm_backward(a["dy"], cache, dx=a["dx"], dgamma=a["dgamma"], dbeta=a["dbeta"])


def batchnorm_torch(a):
    torch = _torch()
    x, dy = _tensors(a, "x", "dy")
    x.requires_grad_(True)
    bn = torch.nn.BatchNorm1d(x.shape[1], dtype=x.dtype)
    bn.train()
    inputs = (x, bn.weight, bn.bias)
    return lambda: torch.autograd.grad(bn(x), inputs, dy)


# optimizer steps over one flat parameter buffer
def adam_setup(shape, dtype):
    (n,) = shape
    rng = _rng()
    return {
        "param": rng.standard_normal(n).astype(dtype),
        "grad": rng.standard_normal(n).astype(dtype),
        "m": np.zeros(n, dtype),
        "v": np.zeros(n, dtype),
    }


def adam_call(backend, a):
    backend.adam_step(a["param"], a["grad"], a["m"], a["v"], 1, 1e-3)


def _torch_optimizer(cls, param, grad, **options):
    """The step of a torch optimizer over one parameter: its fused implementation
    when this build has one for the CPU (tried on a scratch parameter), else foreach."""
    torch = _torch()
    try:
        scratch = torch.nn.Parameter(torch.zeros(2, dtype=param.dtype))
        scratch.grad = torch.ones(2, dtype=param.dtype)
        cls([scratch], fused=True, **options).step()
        mode = {"fused": True}
    except (RuntimeError, TypeError, ValueError):
        mode = {"foreach": True}
    p = torch.nn.Parameter(param)
    p.grad = grad
    return cls([p], **mode, **options).step


def adam_torch(a):
    torch = _torch()
    param, grad = _tensors(a, "param", "grad")
    return _torch_optimizer(torch.optim.Adam, param, grad, lr=1e-3)


def sgd_setup(shape, dtype):
    (n,) = shape
    rng = _rng()
    return {
        "param": rng.standard_normal(n).astype(dtype),
        "grad": rng.standard_normal(n).astype(dtype),
        "velocity": np.zeros(n, dtype),
    }


def sgd_call(backend, a):
    backend.sgd_step(a["param"], a["grad"], a["velocity"], 1e-3, momentum=0.9)


def sgd_torch(a):
    torch = _torch()
    param, grad = _tensors(a, "param", "grad")
    return _torch_optimizer(torch.optim.SGD, param, grad, lr=1e-3, momentum=0.9)


# dense layer with ReLU, forward + backward (dx, dW, db)
def dense_setup(shape, dtype):
    n, n_in, n_out = shape
    rng = _rng()
    return {
        "x": rng.standard_normal((n, n_in)).astype(dtype),
        "W": (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype),
        "b": rng.standard_normal(n_out).astype(dtype),
        "dy": rng.standard_normal((n, n_out)).astype(dtype),
        "y": np.empty((n, n_out), dtype),
        "dx": np.empty((n, n_in), dtype),
        "dW": np.empty((n_in, n_out), dtype),
        "db": np.empty(n_out, dtype),
        "dz": np.empty((n, n_out), dtype),
    }


def dense_call(backend, a):
    backend.dense_forward(a["x"], a["W"], a["b"], "relu", out=a["y"])
    backend.dense_backward(a["dy"], a["x"], a["W"], a["y"], "relu",
                           dx=a["dx"], dW=a["dW"], db=a["db"], dz=a["dz"])


def dense_flops(shape):
    n, n_in, n_out = shape
    return 3 * 2 * n * n_in * n_out  # x @ W, x.T @ dz, dz @ W.T


def dense_gemms(a):
    """The three matmuls of dense_call alone."""
    x, W, y, dy, dx, dW = (a[k] for k in ("x", "W", "y", "dy", "dx", "dW"))

    def gemms():
        np.matmul(x, W, out=y)
        np.matmul(x.T, dy, out=dW)
        np.matmul(dy, W.T, out=dx)

    return gemms


def dense_torch(a):
    torch = _torch()
    x, W, b, dy = _tensors(a, "x", "W", "b", "dy")
    x.requires_grad_(True)
    weight = torch.nn.Parameter(W.T.contiguous())  # torch stores (out, in)
    bias = torch.nn.Parameter(b.clone())
    inputs = (x, weight, bias)

    def step():
        y = torch.relu(torch.nn.functional.linear(x, weight, bias))
        return torch.autograd.grad(y, inputs, dy)

    return step


# elementwise kernels on a flat array
def elementwise_setup(shape, dtype):
    rng = _rng()
    return {"x": rng.standard_normal(shape).astype(dtype), "out": np.empty(shape, dtype)}


def activation_call(activation):
    def call(backend, a):
        backend.activation_forward(a["x"], activation, out=a["out"])

    return call


def gelu_torch(a):
    torch = _torch()
    (x,) = _tensors(a, "x")
    return lambda: torch.nn.functional.gelu(x)


def tanh_torch(a):
    torch = _torch()
    x, out = _tensors(a, "x", "out")
    return lambda: torch.tanh(x, out=out)


def dropout_call(backend, a):
    backend.dropout_forward(a["x"], 0.5, 42, out=a["out"])


def dropout_torch(a):
    torch = _torch()
    (x,) = _tensors(a, "x")
    return lambda: torch.nn.functional.dropout(x, 0.5, training=True)


# end to end: one training epoch of a 784-512-256-10 ReLU network, batch 256, Adam
NET_UNITS = (784, 512, 256, 10)
NET_BATCH = 256
NET_KERNELS = ("dense_forward", "dense_backward", "softmax_cross_entropy", "adam_step")


def network_setup(shape, dtype):
    rng = _rng()
    n, n_in = shape
    return {"X": rng.standard_normal((n, n_in)).astype(dtype),
            "y": rng.integers(0, NET_UNITS[-1], n)}


def network_flops(shape, units=NET_UNITS):
    """Flops of one epoch's GEMMs over shape[0] samples: per layer the forward
    product, dW and dx (2 n in out each), without the first layer's dx."""
    pairs = list(zip(units[:-1], units[1:]))
    return sum(2 * shape[0] * i * o * (2 if k == 0 else 3) for k, (i, o) in enumerate(pairs))


def network_gemms(a, units=NET_UNITS, batch_size=NET_BATCH):
    """The matrix products of one training epoch alone, into preallocated arrays:
    the floor of any implementation of the same math on this BLAS."""
    X = a["X"]
    rng = np.random.default_rng(1)
    W = [rng.uniform(-0.1, 0.1, (i, o)).astype(X.dtype) for i, o in zip(units[:-1], units[1:])]
    dW = [np.empty_like(w) for w in W]
    sizes = {min(batch_size, X.shape[0] - lo) for lo in range(0, X.shape[0], batch_size)}
    outs = {n: [np.empty((n, w.shape[1]), X.dtype) for w in W] for n in sizes}
    dxs = {n: [np.empty((n, w.shape[0]), X.dtype) for w in W] for n in sizes}

    def epoch():
        for lo in range(0, X.shape[0], batch_size):
            x = X[lo:lo + batch_size]
            h, dx = outs[x.shape[0]], dxs[x.shape[0]]
            inputs = [x] + h[:-1]
            for k, w in enumerate(W):
                np.matmul(inputs[k], w, out=h[k])
            for k in reversed(range(len(W))):  # h[k] stands in for dz: same shape and cost
                np.matmul(inputs[k].T, h[k], out=dW[k])
                if k:
                    np.matmul(h[k], W[k].T, out=dx[k])

    return epoch


_models = {}  # (benchmark, backend, id of X) -> model or estimator, built on first call


def nn_epoch_call(backend, a):
    from . import nn

    key = ("nn", backend.name, id(a["X"]))
    if key not in _models:
        _models[key] = nn.Sequential(
            [nn.Dense(u, "relu") for u in NET_UNITS[1:-1]] + [nn.Dense(NET_UNITS[-1])],
            loss="sparse_categorical_crossentropy", optimizer=nn.Adam(1e-3), seed=0,
            backend=backend, dtype=a["X"].dtype)
    _models[key].fit(a["X"], a["y"], epochs=1, batch_size=NET_BATCH, verbose=0)


def nn_epoch_torch(a):
    torch = _torch()
    torch.manual_seed(0)
    X, y = torch.from_numpy(a["X"]), torch.from_numpy(a["y"])
    layers = []
    for k, (i, o) in enumerate(zip(NET_UNITS[:-1], NET_UNITS[1:])):
        layers += [torch.nn.Linear(i, o)] + ([torch.nn.ReLU()] if k < len(NET_UNITS) - 2 else [])
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch():
        order = torch.randperm(X.shape[0])
        for lo in range(0, X.shape[0], NET_BATCH):
            idx = order[lo:lo + NET_BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(X[idx]), y[idx]).backward()
            optimizer.step()

    return epoch


MLP_PARAMS = dict(hidden_layer_sizes=NET_UNITS[1:-1], batch_size=NET_BATCH, solver="adam",
                  max_iter=1, shuffle=True, random_state=0)


def _fit_quietly(estimator, X, y):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(X, y)


def mlp_fit_call(backend, a):
    from .estimators import MLPClassifier

    _fit_quietly(MLPClassifier(backend=backend.name, **MLP_PARAMS), a["X"], a["y"])


def mlp_fit_sklearn(a):
    from sklearn.neural_network import MLPClassifier

    return lambda: _fit_quietly(MLPClassifier(**MLP_PARAMS), a["X"], a["y"])


M = 1_000_000
BENCHMARKS = [
    Benchmark("softmax_ce", (8192, 1000), "float32", softmax_ce_setup, softmax_ce_call,
              reads=("logits", "labels"), writes=("grad",), kernels=("softmax_cross_entropy",),
              quick=True, others={"torch": softmax_ce_torch}),
    Benchmark("batchnorm_train", (4096, 1024), "float32", batchnorm_setup, batchnorm_call,
              reads=("x", "dy", "x"), writes=("y", "dx"),
              kernels=("batchnorm_forward", "batchnorm_backward"), quick=True, min_first=2,
              others={"torch": batchnorm_torch}),
    Benchmark("adam", (10 * M,), "float32", adam_setup, adam_call,
              reads=("param", "grad", "m", "v"), writes=("param", "m", "v"), kernels=("adam_step",),
              quick=True, others={"torch": adam_torch}),
    Benchmark("dense_relu", (256, 784, 512), "float32", dense_setup, dense_call, unit="flop",
              flops=dense_flops, kernels=("dense_forward", "dense_backward"), quick=True,
              others={"torch": dense_torch}, bare=dense_gemms),
    Benchmark("softmax_ce_small", (64, 10), "float32", softmax_ce_setup, softmax_ce_call,
              reads=("logits", "labels"), writes=("grad",), kernels=("softmax_cross_entropy",),
              quick=True, others={"torch": softmax_ce_torch}),
    Benchmark("adam_small", (1000,), "float32", adam_setup, adam_call,
              reads=("param", "grad", "m", "v"), writes=("param", "m", "v"), kernels=("adam_step",),
              quick=True, others={"torch": adam_torch}),
    Benchmark("gelu", (4 * M,), "float32", elementwise_setup, activation_call("gelu"),
              reads=("x",), writes=("out",), kernels=("activation_forward",),
              others={"torch": gelu_torch}),
    Benchmark("tanh", (4 * M,), "float32", elementwise_setup, activation_call("tanh"),
              reads=("x",), writes=("out",), kernels=("activation_forward",),
              others={"torch": tanh_torch}),
    Benchmark("dropout", (4 * M,), "float32", elementwise_setup, dropout_call,
              reads=("x",), writes=("out",), kernels=("dropout_forward",),
              others={"torch": dropout_torch}),
    Benchmark("sgd_momentum", (10 * M,), "float32", sgd_setup, sgd_call,
              reads=("param", "grad", "velocity"), writes=("param", "velocity"),
              kernels=("sgd_step",), others={"torch": sgd_torch}),
    Benchmark("nn_epoch", (20000, 784), "float32", network_setup, nn_epoch_call, unit="flop",
              flops=network_flops, kernels=NET_KERNELS, others={"torch": nn_epoch_torch},
              bare=network_gemms,
              min_first=2 * NET_BATCH),
    Benchmark("mlp_fit", (20000, 784), "float32", network_setup, mlp_fit_call, unit="flop",
              flops=network_flops, kernels=NET_KERNELS, others={"sklearn": mlp_fit_sklearn},
              bare=network_gemms,
              min_first=2 * NET_BATCH),
]


def get_benchmark(name):
    for bench in BENCHMARKS:
        if bench.name == name:
            return bench
    raise ValueError(f"unknown benchmark {name!r}; known: {[b.name for b in BENCHMARKS]}")


# ---------------------------------------------------------------------- running
@dataclass
class Record:
    """One benchmark timed on one backend (or other library)."""

    benchmark: str
    backend: str
    dtype: str
    shape: list
    median_s: float
    best_s: float
    calls: int  # calls timed
    work: int  # flops or bytes per call
    unit: str  # "flop" or "byte"
    rate: float  # GFLOP/s or GB/s
    rate_unit: str
    percent_of_limit: float
    speedup: Optional[float]  # reference median / this median; None without a reference
    bare_percent: Optional[float] = None  # bare core time as percent of this time

    def as_dict(self):
        return dataclasses.asdict(self)


BARE = "bare-gemms"
# Libraries timed after every fastnn backend of the run: PyTorch's OpenMP threads,
# once started, slow the BLAS and OpenMP work that follows them in the same process
# (measured here: the dense GEMMs 15x slower after a PyTorch benchmark had run).
RUN_LAST = ("torch",)  # the `backend` of the record that times Benchmark.bare


def rescore(records, limits):
    """Recompute percent_of_limit of records (Record objects) against `limits`."""
    for r in records:
        r.percent_of_limit = 100 * r.rate / limit_for(limits, r.unit, r.dtype)
    return records


def scale_from_env():
    value = os.environ.get(SCALE_ENV)
    if not value:
        return 1.0
    try:
        scale = float(value)
    except ValueError:
        raise ValueError(f"{SCALE_ENV} must be a number in (0, 1], got {value!r}") from None
    if not 0 < scale <= 1:
        raise ValueError(f"{SCALE_ENV} must be a number in (0, 1], got {value!r}")
    return scale


def run_benchmark(bench, limits, backends=None, others=("torch",), scale=1.0, min_time=0.3,
                  with_bare=True):
    """Records of one benchmark on each backend (default: all available), then
    on each library of `others` the benchmark knows and that is installed, then
    its bare core, all timed in turns (time_calls). Speed-ups are over the
    reference when it is among the backends."""
    backends = fastnn.available_backends() if backends is None else list(backends)
    shape = bench.scaled_shape(scale)
    work = bench.work(bench.setup(shape, bench.dtype), shape)
    entries = []  # (name, fn); fresh inputs for each, as kernels update state
    for name in backends:
        backend = fastnn.get_backend(name)
        arrays = bench.setup(shape, bench.dtype)
        entries.append((name, lambda b=backend, a=arrays: bench.call(b, a)))
    for lib in others:
        make = bench.others.get(lib)
        if make is None:
            continue
        try:
            entries.append((lib, make(bench.setup(shape, bench.dtype))))
        except ImportError:
            continue
    if with_bare and bench.bare is not None:
        entries.append((BARE, bench.bare(bench.setup(shape, bench.dtype))))
    timings = list(zip([name for name, _ in entries],
                       time_calls([fn for _, fn in entries], min_time=min_time)))
    bare_s = next((t[0] for name, t in timings if name == BARE), None)

    reference_s = next((t[0] for name, t in timings if name == REFERENCE), None)
    limit = limit_for(limits, bench.unit, bench.dtype)
    records = []
    for name, (seconds, best, calls) in timings:
        rate = work / seconds / 1e9
        records.append(Record(
            benchmark=bench.name, backend=name, dtype=bench.dtype, shape=list(shape),
            median_s=seconds, best_s=best, calls=calls, work=work, unit=bench.unit, rate=rate,
            rate_unit="GFLOP/s" if bench.unit == "flop" else "GB/s",
            percent_of_limit=100 * rate / limit,
            speedup=None if reference_s is None else reference_s / seconds,
            bare_percent=None if bare_s is None or name == BARE else 100 * bare_s / seconds,
        ))
    return records


def select(names=None, quick=False):
    """The benchmarks to run: those named (in the given order), else all, or the quick ones."""
    if names:
        return [get_benchmark(name) for name in names]
    return [b for b in BENCHMARKS if b.quick or not quick]


def run(names=None, backends=None, others=("torch",), quick=False, scale=None, limits=None,
        progress=None):
    """Measure the limits (unless given; then again at the end, keeping the higher
    figures) and run the selected benchmarks; progress(bench, records) is called
    after each. Returns {"machine", "settings", "limits", "records"} (JSON-ready)."""
    scale = scale_from_env() if scale is None else scale
    min_time = 0.1 if quick else 0.3
    limit_time = scale * (0.3 if quick else 1.0)
    measure = limits is None
    if measure:
        limits = measure_limits(scale, 3 if quick else 5, limit_time)
    busy, own, wall = cpu_busy_seconds(), time.process_time(), time.perf_counter()
    benches = select(names, quick)
    early = [lib for lib in others if lib not in RUN_LAST]
    late = [lib for lib in others if lib in RUN_LAST]
    blocks = []
    for bench in benches:
        blocks.append(run_benchmark(bench, limits, backends, early, scale, min_time))
        if progress is not None:
            progress(bench, blocks[-1])
    for bench, block in zip(benches, blocks) if late else ():
        extra = run_benchmark(bench, limits, [], late, scale, min_time, with_bare=False)
        if progress is not None:
            progress(bench, extra)
        reference = next((r for r in block if r.backend == REFERENCE), None)
        bare = next((r for r in block if r.backend == BARE), None)
        for r in extra:
            r.speedup = None if reference is None else reference.median_s / r.median_s
            r.bare_percent = None if bare is None else 100 * bare.median_s / r.median_s
        at = next((i for i, r in enumerate(block) if r.backend == BARE), len(block))
        block[at:at] = extra
    records = [r for block in blocks for r in block]
    if measure:
        limits = best_limits(limits, measure_limits(scale, 3 if quick else 5, limit_time))
        rescore(records, limits)
    info = machine()
    info["other_cpu_percent"] = other_cpu_percent(busy, own, wall)
    return {
        "machine": info,
        "settings": {"quick": quick, "scale": scale},
        "limits": limits,
        "records": [r.as_dict() for r in records],
    }


# ---------------------------------------------------------------------- machine
def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_busy_seconds():
    """CPU seconds every process of the machine has used since boot, counting time
    taken by the hypervisor (steal) as used; None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def other_cpu_percent(busy_start, own_start, wall_start):
    """Percent of the machine's CPU time used by other processes since the start
    values (cpu_busy_seconds(), time.process_time(), time.perf_counter()) were
    taken: a measure of how disturbed the timings were. None when unknown."""
    busy = cpu_busy_seconds()
    if busy is None or busy_start is None:
        return None
    others = (busy - busy_start) - (time.process_time() - own_start)
    capacity = (time.perf_counter() - wall_start) * (os.cpu_count() or 1)
    return max(0.0, 100 * others / capacity)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    """SIMD extensions relevant to the kernels that this CPU reports (Linux only)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f") if f in flags]
    except OSError:
        pass
    return []


def blas_info():
    """[{library, version, threads, ...}] of the BLAS libraries numpy loaded."""
    from threadpoolctl import threadpool_info

    return [
        {k: pool.get(k) for k in ("internal_api", "version", "num_threads", "architecture",
                                  "threading_layer", "filepath")}
        for pool in threadpool_info() if pool.get("user_api") == "blas"
    ]


def machine():
    """Where the figures were measured: CPU, cores, BLAS, versions."""
    usable = usable_cores()
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "blas": blas_info(),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": version("numba"),
            "scipy": version("scipy"),
            "scikit-learn": version("scikit-learn"),
            "torch": version("torch"),
            "fastnn": fastnn.__version__,
        },
        "backends": fastnn.available_backends(),
    }
