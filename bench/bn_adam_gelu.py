"""Batch norm, Adam and gelu on the compiled backends beside PyTorch and the
machine's streaming limits, all measured in one run:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/bn_adam_gelu.py [case ...]

Cases (default all): bn (training forward + backward, 4096 x 1024), bn_fwd,
bn_bwd, adam (10M parameters), sgd (momentum 0.9, 10M), gelu (forward, 4M),
gelu_bwd; float32 unless BN_ADAM_GELU_DTYPE=float64; fastnn on
BN_ADAM_GELU_THREADS threads if set (PyTorch on its default). The fastnn
kernels and the limits are timed in turns in this process (one call of each
per round, the best of the rounds kept, about BN_ADAM_GELU_SECONDS = 20 s in
all); PyTorch in a child process that never imports fastnn, before and after,
each case timed alone (the best call), the better of the two runs kept.

BN_ADAM_GELU_CPU=1: one thread everywhere (fastnn, and PyTorch's
torch.set_num_threads(1)), each call timed in CPU time (time.process_time: a
busy machine's other processes take wall time, less so CPU time); the
limits are then left out.

The limits, over 64 MB float32 arrays split between the cores as the kernels
split theirs: copy (np.copyto, read + write bytes), update (b += a: 2 reads, 1
write, no write-allocate), read (a.sum()), each run by NumPy on Python
threads, and update_jit, the update as a jitted loop on Numba's threads (the
kernels' own kind of loop). Each kernel's figure is its time, the bytes it
must move at least (below), those in GB/s, and that time against the time of
those bytes at the copy rate and at the better of the two update rates of
the same run:

    bn forward    x read, y written                  (2 arrays of N C)
    bn backward   x, dy read, dx written             (3)
    adam          p, g, m, v read, p, m, v written   (7 arrays of n)
    sgd           p, g, v read, p, v written         (5 arrays of n)
    gelu          x read, y written; backward: x, dy read, dz written
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np
from numba import prange

import fastnn
from fastnn.benchmarks.limits import in_threads, usable_cores

DTYPE = np.dtype(os.environ.get("BN_ADAM_GELU_DTYPE", "float32"))
SECONDS = float(os.environ.get("BN_ADAM_GELU_SECONDS", "20"))
CPU = os.environ.get("BN_ADAM_GELU_CPU") == "1"
BN_SHAPE, ADAM_N, GELU_N = (4096, 1024), 10_000_000, 4_000_000


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(DTYPE)


# ------------------------------------------------------------------ fastnn cases
# each make(backend) returns the call to time; arrays are allocated and touched first
def bn_arrays():
    x, dy = rand(BN_SHAPE, 0), rand(BN_SHAPE, 1)
    c = BN_SHAPE[1]
    return dict(x=x, dy=dy, gamma=rand(c, 2), beta=rand(c, 3), rm=np.zeros(c, DTYPE),
                rv=np.ones(c, DTYPE), y=np.empty_like(x), dx=np.empty_like(x),
                dgamma=np.empty(c, DTYPE), dbeta=np.empty(c, DTYPE))


def bn_case(forward, backward):
    def make(b):
        a = bn_arrays()
        _, cache = b.batchnorm_forward(a["x"], a["gamma"], a["beta"], a["rm"], a["rv"], True,
                                       out=a["y"])

        def run():
            c = cache
            if forward:
                _, c = b.batchnorm_forward(a["x"], a["gamma"], a["beta"], a["rm"], a["rv"], True,
                                           out=a["y"])
            if backward:
                b.batchnorm_backward(a["dy"], c, dx=a["dx"], dgamma=a["dgamma"], dbeta=a["dbeta"])
        return run
    return make


def adam_make(b):
    p, g = rand(ADAM_N, 0), rand(ADAM_N, 1) * DTYPE.type(1e-2)
    m, v = np.zeros(ADAM_N, DTYPE), np.zeros(ADAM_N, DTYPE)
    return lambda: b.adam_step(p, g, m, v, 1, 1e-3)


def sgd_make(b):
    p, g = rand(ADAM_N, 0), rand(ADAM_N, 1) * DTYPE.type(1e-2)
    v = np.zeros(ADAM_N, DTYPE)
    return lambda: b.sgd_step(p, g, v, lr=1e-3, momentum=0.9)


def gelu_make(b):
    x, y = rand(GELU_N, 0), np.empty(GELU_N, DTYPE)
    return lambda: b.activation_forward(x, "gelu", out=y)


def gelu_bwd_make(b):
    x, dy, dz = rand(GELU_N, 0), rand(GELU_N, 1), np.empty(GELU_N, DTYPE)
    return lambda: b.activation_backward(dy, x, "gelu", x=x, out=dz)


ITEM = DTYPE.itemsize
BN_BYTES = BN_SHAPE[0] * BN_SHAPE[1] * ITEM
CASES = {  # name: (make, bytes it must move)
    "bn": (bn_case(True, True), 5 * BN_BYTES),
    "bn_fwd": (bn_case(True, False), 2 * BN_BYTES),
    "bn_bwd": (bn_case(False, True), 3 * BN_BYTES),
    "adam": (adam_make, 7 * ADAM_N * ITEM),
    "sgd": (sgd_make, 5 * ADAM_N * ITEM),
    "gelu": (gelu_make, 2 * GELU_N * ITEM),
    "gelu_bwd": (gelu_bwd_make, 3 * GELU_N * ITEM),
}

# ------------------------------------------------------------------ PyTorch apart
TORCH = r"""
import json, sys, time
import numpy as np
import torch
names, dtype, seconds, cpu = json.loads(sys.argv[1])
dt = getattr(torch, dtype)
if cpu:
    torch.set_num_threads(1)
clock = time.process_time if cpu else time.perf_counter
def rand(shape, seed):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(dtype))
def bn(forward, backward):
    x, dy = rand((4096, 1024), 0), rand((4096, 1024), 1)
    x.requires_grad_(True)
    m = torch.nn.BatchNorm1d(1024, dtype=dt).train()
    inputs = (x, m.weight, m.bias)
    if not backward:
        return lambda: m(x.detach())
    if not forward:
        y = m(x)
        return lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True)
    return lambda: torch.autograd.grad(m(x), inputs, dy)
def adam():
    p = torch.nn.Parameter(rand(10_000_000, 0))
    p.grad = rand(10_000_000, 1) * 1e-2
    return torch.optim.Adam([p], lr=1e-3, fused=True).step
def sgd():
    p = torch.nn.Parameter(rand(10_000_000, 0))
    p.grad = rand(10_000_000, 1) * 1e-2
    return torch.optim.SGD([p], lr=1e-3, momentum=0.9, fused=True).step
def gelu():
    x = rand(4_000_000, 0)
    return lambda: torch.nn.functional.gelu(x)
def gelu_bwd():
    x, dy = rand(4_000_000, 0), rand(4_000_000, 1)
    return lambda: torch.ops.aten.gelu_backward(dy, x)
make = {"bn": lambda: bn(True, True), "bn_fwd": lambda: bn(True, False),
        "bn_bwd": lambda: bn(False, True), "adam": adam, "sgd": sgd, "gelu": gelu,
        "gelu_bwd": gelu_bwd}
best = []
for n in names:  # one after another: interleaved, PyTorch's large buffers were mapped anew each call
    f = make[n]()
    f(); f()
    b, end = float("inf"), time.perf_counter() + seconds / len(names)
    while time.perf_counter() < end:
        t0 = clock(); f(); b = min(b, clock() - t0)
    best.append(b)
    del f
print(json.dumps(best))
"""


def torch_times(names, seconds):
    """Best seconds of PyTorch's calls for `names`, in a child process that
    never imported fastnn (None without PyTorch)."""
    env = dict(os.environ)
    if fastnn.backends.OMP_WAIT_POLICY_SET_HERE:
        env.pop("OMP_WAIT_POLICY", None)
    child = subprocess.run([sys.executable, "-c", TORCH, json.dumps([names, DTYPE.name, seconds, CPU])],
                           env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if child.returncode:
        print("PyTorch not timed:", child.stderr.strip().splitlines()[-1:])
        return None
    return json.loads(child.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ limits
@numba.njit
def add_into(b, a):
    for i in range(b.size):
        b[i] += a[i]


@numba.njit(parallel=True)
def update_jit(b, a, parts):
    # b += a in `parts` contiguous ranges, one a thread (views from 0: an index
    # from lo would not be known >= 0, and the loop would not vectorise)
    for k in prange(parts):
        lo, hi = k * b.size // parts, (k + 1) * b.size // parts
        add_into(b[lo:hi], a[lo:hi])


def limit_calls():
    """(name, call, bytes) of the streaming limits, on usable_cores() threads."""
    n = (64 << 20) // 4
    a, b = np.ones(n, np.float32), np.zeros(n, np.float32)
    threads = usable_cores()
    copy, _ = in_threads(lambda s: np.copyto(b[s], a[s]), n, threads)
    update, _ = in_threads(lambda s: np.add(b[s], a[s], out=b[s]), n, threads)
    read, _ = in_threads(lambda s: a[s].sum(), n, threads)
    return [("copy", copy, 2 * 4 * n), ("update", update, 3 * 4 * n),
            ("update_jit", lambda: update_jit(b, a, threads), 3 * 4 * n), ("read", read, 4 * n)]


def main(names):
    names = names or list(CASES)
    if CPU:
        fastnn.set_num_threads(1)
    elif os.environ.get("BN_ADAM_GELU_THREADS"):
        fastnn.set_num_threads(int(os.environ["BN_ADAM_GELU_THREADS"]))
    backends = [fastnn.get_backend(n) for n in ("c", "numba")]
    calls = []  # (label, call)
    for name in names:
        for b in backends:
            calls.append(((name, b.name), CASES[name][0](b)))
    limits = [] if CPU else limit_calls()
    calls += [((name, "limit"), call) for name, call, _ in limits]
    for _, call in calls:
        call()
        call()
    clock = time.process_time if CPU else time.perf_counter
    before = torch_times(names, SECONDS / 4)
    best = {label: float("inf") for label, _ in calls}
    end = time.perf_counter() + SECONDS
    rounds = 0
    while time.perf_counter() < end:
        for label, call in calls:
            t0 = clock()
            call()
            best[label] = min(best[label], clock() - t0)
        rounds += 1
    after = torch_times(names, SECONDS / 4)
    torch = None if before is None or after is None else [min(p, q) for p, q in zip(before, after)]
    rate = {name: nbytes / best[(name, "limit")] / 1e9 for name, _, nbytes in limits}
    print(f"{DTYPE.name}, {usable_cores()} cores, {rounds} rounds; best of each"
          + (", one thread, CPU time:" if CPU else ":"))
    if limits:
        print("limits: " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in rate.items()))
        update = max(rate["update"], rate["update_jit"])
    print(f"{'case':10} {'backend':7} {'ms':>8} {'MB':>6} {'GB/s':>7}"
          + (f" {'x copy':>7} {'x update':>8}" if limits else ""))
    for i, name in enumerate(names):
        nbytes = CASES[name][1]
        rows = [(b.name, best[(name, b.name)]) for b in backends]
        if torch is not None:
            rows.append(("torch", torch[i]))
        for who, seconds in rows:
            line = f"{name:10} {who:7} {seconds * 1e3:8.3f} {nbytes / 1e6:6.0f} {nbytes / seconds / 1e9:7.1f}"
            if limits:
                line += (f" {seconds * rate['copy'] * 1e9 / nbytes:7.2f}"
                         f" {seconds * update * 1e9 / nbytes:8.2f}")
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
