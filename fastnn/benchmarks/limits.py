"""What this machine can do at best, measured in the same run as the benchmarks:
BLAS GEMM GFLOP/s per dtype (numpy matmul of two n x n matrices, best of
several) and streaming memory bandwidth (``np.copyto`` of a large array and an
in-place ``b += a``, counting the bytes read plus the bytes written; and a pure
read, ``a.sum()``); and the ceiling each benchmark's rate is compared with.

NumPy only: it never imports fastnn.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .timing import best_of

MB = 1 << 20


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
