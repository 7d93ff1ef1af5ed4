"""Does splitting the batch of a recurrent kernel over the threads pay, and from what size?

    python bench/recurrent_split.py [KIND] [ROUNDS]    KIND rnn, lstm or gru (lstm by default)

For each size (N, T, F, H), from a few sequences of a few steps to the benchmark's
(64, 50, 32, 128), one forward and one backward of KIND (float32) on the C and
Numba backends, with the batch split over the threads ("split": each thread the
time loops of a range of sequences, BLAS on one thread) and on the whole batch
("whole": every GEMM on BLAS's threads), timed in turns in this process, the
best of ROUNDS rounds (15 by default) of the best of 5 calls; beside them the
GEMMs of the split step alone (the benchmark's bare-gemms, forward and
backward). "work" is N T H G*H, the multiply-adds of the per-step GEMMs that
RECURRENT_PARALLEL_MIN (csrc/recurrent.c: 2^21, numba_backend.py: 2^22) is
compared with. Here the Numba kernels split at every size for the split variant
and never for the whole one; the C kernels split from their threshold (built
in) for the split variant, and get one thread (fastnn's own, not BLAS's) for
the whole one.

Run as a user's machine runs:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/recurrent_split.py lstm
"""

import re
import sys
import time
from pathlib import Path

import numpy as np

import fastnn
from fastnn.backends import numba_backend
from fastnn.backends.c_backend import lib
from fastnn.benchmarks.recurrent import bare_gemms_step

C_SOURCE = Path(__file__).parents[1] / "csrc" / "recurrent.c"
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
SIZES = [(4, 10, 8, 16), (8, 20, 8, 32), (16, 20, 16, 32), (8, 32, 8, 64), (16, 32, 16, 64),
         (32, 50, 32, 64), (16, 50, 32, 128), (64, 50, 32, 128)]


def step(backend, kind, n, t, f, h):
    """A callable running one forward and one backward of `kind` on `backend`."""
    g, d = GATES[kind], np.float32
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, t, f)).astype(d)
    args = [None] * (2 if kind == "lstm" else 1)  # zero initial states
    args += [(rng.standard_normal((f, g * h)) * f ** -0.5).astype(d),
             (rng.standard_normal((h, g * h)) * h ** -0.5).astype(d)]
    args += [np.zeros(g * h, d)] * (2 if kind == "gru" else 1)
    dhs = rng.standard_normal((n, t, h)).astype(d)
    forward, backward = getattr(backend, f"{kind}_forward"), getattr(backend, f"{kind}_backward")

    def run():
        backward(dhs, forward(x, *args)[1])
    return run


def best_seconds(fn, calls=5):
    fn()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(kind="lstm", rounds=15):
    threads, threshold = lib.fastnn_get_num_threads(), numba_backend.RECURRENT_PARALLEL_MIN
    c_min = int(re.search(r"RECURRENT_PARALLEL_MIN \(1 << (\d+)\)", C_SOURCE.read_text()).group(1))
    backends = [name for name in ("c", "numba") if name in fastnn.available_backends()]
    print(f"{kind}, float32, forward + backward, us per sequence (best of {rounds} rounds); "
          f"{threads} threads")
    for n, t, f, h in SIZES:
        runners = {name: step(fastnn.get_backend(name), kind, n, t, f, h) for name in backends}
        bare = bare_gemms_step(kind, n, t, f, h) if kind != "gru" else None
        best = {}
        for _ in range(rounds):
            for split in (True, False):
                lib.fastnn_set_num_threads(threads if split else 1)
                numba_backend.RECURRENT_PARALLEL_MIN = 0 if split else 1 << 62
                for name, fn in runners.items():
                    key = (name, split)
                    best[key] = min(best.get(key, float("inf")), best_seconds(fn) / n * 1e6)
            if bare is not None:
                best["bare"] = min(best.get("bare", float("inf")), best_seconds(bare) / n * 1e6)
        lib.fastnn_set_num_threads(threads)
        numba_backend.RECURRENT_PARALLEL_MIN = threshold
        work = n * t * h * GATES[kind] * h
        cells = "  ".join(f"{name} split {best[(name, True)]:7.1f} whole {best[(name, False)]:7.1f}"
                          for name in backends)
        bare_cell = f"  bare-gemms (as c) {best['bare']:7.1f}" if "bare" in best else ""
        c_splits = "splits" if work >= 1 << c_min else "whole "
        print(f"N={n:3} T={t:3} F={f:3} H={h:4} work {work:>10} (c {c_splits})  {cells}{bare_cell}",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "lstm", int(sys.argv[2]) if len(sys.argv) > 2 else 15)
