"""The floor of the LSTM benchmark: the best time any BLAS issue order gets for the
GEMMs its training step must run (float32, batch 64, 50 steps of 32 features,
128 units: 1.57 GFLOP a step, 24.6 MFLOP a sequence).

    python bench/recurrent_floor.py [ROUNDS]

Run as a user's machine runs (OpenBLAS then runs its SkylakeX kernels on a Zen 4):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/recurrent_floor.py

bench/recurrent_floor.c holds the GEMMs (compiled here with the system's cc, loaded
with ctypes; not part of fastnn). For SciPy's OpenBLAS (the one fastnn's kernels
call) and NumPy's:
1. each GEMM shape of a step on one thread: GFLOP/s of the thread's CPU time (the
   best of ROUNDS x 20 calls; CPU time, not wall, so that other processes on a
   shared machine do not count), in one call, in blocks of at most 10^6
   multiply-adds for h_{t-1} W_h and dW_h's only, and with dz_t W_h^T in blocks
   of 32 columns and dW_x per step beside dW_h too (csrc/recurrent_impl.h
   gemm_tiles; the projection and dx are one GEMM each in all three, dW_x in the
   first two);
2. per issue order, the floor: the GEMMs of one thread when two share the step
   evenly, summed from those CPU times, in us per sequence. Orders: whole batch
   (every GEMM on the BLAS's two threads: floor = half the step's GEMMs on one
   thread, which BLAS's split of each small GEMM does not reach), batch rows split
   (32 rows a thread per step, dW_h, dW_x by columns and dx by rows after; the C
   kernels now take x_t W_x per step and dW_h, dW_x per step on each thread's
   rows: fastnn/benchmarks/recurrent.py's bare-gemms), hidden units split (each
   thread the four gates of 64 units: 64 rows x 256 columns per step, a barrier
   per step to share h_t);
3. the same orders measured (wall time, best of ROUNDS steps, the orders in
   turns), which a busy machine slows.
"""

import ctypes
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS)
from threadpoolctl import threadpool_info

N, T, F, H = 64, 50, 32, 128
W = 4 * H
STEP_FLOP = 2 * N * T * W * (3 * F + 3 * H)


def compile_floor():
    source = Path(__file__).with_suffix(".c")
    out = Path(tempfile.mkdtemp()) / "recurrent_floor.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-pthread", str(source), "-o", str(out)], check=True)
    lib = ctypes.CDLL(str(out))
    lib.floor_one_gemm.restype = ctypes.c_double
    lib.floor_step.restype = ctypes.c_double
    return lib


def openblas_libraries():
    """{name: (sgemm address, 64-bit integers, set_num_threads address)} of the
    OpenBLAS libraries loaded (NumPy's and SciPy's wheels: scipy_ prefixes)."""
    found = {}
    for info in threadpool_info():
        if info["internal_api"] != "openblas":
            continue
        lib = ctypes.CDLL(info["filepath"])
        for suffix, wide in (("64_", True), ("", False)):
            gemm = getattr(lib, f"scipy_sgemm_{suffix}", None) or getattr(lib, f"sgemm_{suffix}", None)
            threads = (getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
                       or getattr(lib, f"openblas_set_num_threads{suffix}", None))
            if gemm is not None and threads is not None:
                owner = "numpy" if "numpy" in info["filepath"] else "scipy"
                name = f"{owner} {info['version']} {info['architecture']}"
                found[name] = (ctypes.cast(gemm, ctypes.c_void_p), wide,
                               ctypes.cast(threads, ctypes.c_void_p))
                break
    return found


# (name, ta, tb, m, n, k): the per-step GEMMs, which the kernels issue in blocks,
# then the once-a-step ones, which they issue whole (both columns the same)
PER_STEP = 11
SHAPES = [
    ("recurrence (32x128)(128x512)", 0, 0, 32, W, H),
    ("recurrence (64x128)(128x256)", 0, 0, 64, W // 2, H),
    ("recurrence (64x128)(128x512)", 0, 0, 64, W, H),
    ("dh (32x512)(512x128), W_h^T", 0, 1, 32, H, W),
    ("dh (64x512)(512x64), W_h^T", 0, 1, 64, H // 2, W),
    ("dh (64x512)(512x128), W_h^T", 0, 1, 64, H, W),
    ("dh (32x512)(512x128), W_h transposed", 0, 0, 32, H, W),
    ("dW_h (64x128)^T(64x256)", 1, 0, H, W // 2, N),
    ("dW_h (64x128)^T(64x512)", 1, 0, H, W, N),
    ("dW_x per step (64x32)^T(64x256)", 1, 0, F, W // 2, N),
    ("dW_x per step (64x32)^T(64x512)", 1, 0, F, W, N),
    ("projection (1600x32)(32x512)", 0, 0, N * T // 2, W, F),
    ("projection (3200x32)(32x256)", 0, 0, N * T, W // 2, F),
    ("dx (1600x512)(512x32)", 0, 1, N * T // 2, F, W),
    ("dW_x (3200x32)^T(3200x256)", 1, 0, F, W // 2, N * T),
]
# each order's share of one thread of two: {shape name: calls}; the whole batch's
# is half of the step's GEMMs on one thread
SHARES = {
    "whole batch at twice one thread": {"recurrence (64x128)(128x512)": T / 2,
                                        "dh (64x512)(512x128), W_h^T": T / 2,
                                        "dW_h (64x128)^T(64x512)": T / 2,
                                        "projection (1600x32)(32x512)": 1,
                                        "dx (1600x512)(512x32)": 1, "dW_x (3200x32)^T(3200x256)": 1},
    "batch rows split": {"recurrence (32x128)(128x512)": T, "dh (32x512)(512x128), W_h^T": T,
                         "dW_h (64x128)^T(64x256)": T, "projection (1600x32)(32x512)": 1,
                         "dx (1600x512)(512x32)": 1, "dW_x (3200x32)^T(3200x256)": 1},
    "hidden units split": {"recurrence (64x128)(128x256)": T, "dh (64x512)(512x64), W_h^T": T,
                           "dW_h (64x128)^T(64x256)": T, "projection (3200x32)(32x256)": 1,
                           "dx (1600x512)(512x32)": 1, "dW_x (3200x32)^T(3200x256)": 1},
}
ORDERS = {"whole batch, BLAS's 2 threads": 0, "batch rows split": 1, "hidden units split": 2}
DW_X_ONCE = "dW_x (3200x32)^T(3200x256)"


def share_of(share, tiled):
    """An order's share (SHARES) as issued with `tiled`: with 2, dW_x per step
    beside dW_h (on the whole batch's columns, half of them per thread)."""
    if tiled < 2:
        return share
    per_step = "dW_x per step (64x32)^T(64x512)" if "dW_h (64x128)^T(64x512)" in share else \
        "dW_x per step (64x32)^T(64x256)"
    return {**{s: c for s, c in share.items() if s != DW_X_ONCE},
            per_step: share["dW_h (64x128)^T(64x512)" if "512)" in per_step else "dW_h (64x128)^T(64x256)"]}


def main(rounds=15):
    lib = compile_floor()
    us = 1e6 / N
    for name, (gemm, wide, threads) in openblas_libraries().items():
        lib.floor_setup(gemm, int(wide), threads)
        print(f"\n{name}: one thread, GFLOP/s (CPU time), one GEMM / W_h and dW_h in blocks / all in blocks "
              "(fastnn's)")
        seconds = {}
        for i, (shape, ta, tb, m, n, k) in enumerate(SHAPES):
            flop = 2 * m * n * k
            seconds[shape] = {tiled: lib.floor_one_gemm(ta, tb, m, n, k, tiled if i < PER_STEP else 0,
                                                        rounds) for tiled in (0, 1, 2)}
            print(f"  {shape:40s} " + " / ".join(f"{flop / seconds[shape][t] / 1e9:6.1f}" for t in (0, 1, 2)))
        print("floor, us per sequence: one thread's share of two (CPU time above), one GEMM / W_h "
              "and dW_h in blocks / all in blocks (fastnn's)")
        for order, share in SHARES.items():
            per = [sum(seconds[s][t] * c for s, c in share_of(share, t).items()) * us for t in (0, 1, 2)]
            print(f"  {order:34s} " + " / ".join(f"{p:6.1f}" for p in per))
        print("measured, us per sequence (wall, best of the rounds), one GEMM / W_h and dW_h in blocks / "
              "all (fastnn's)")
        best = {}
        for _ in range(3):
            for order, code in ORDERS.items():
                for tiled in (0, 1, 2):
                    s = lib.floor_step(code, tiled, max(rounds // 3, 1), 2)
                    best[order, tiled] = min(best.get((order, tiled), np.inf), s)
        for order in ORDERS:
            print(f"  {order:34s} " + " / ".join(f"{best[order, t] * us:6.1f}" for t in (0, 1, 2))
                  + f"   ({STEP_FLOP / best[order, 2] / 1e9:5.1f} GFLOP/s all in blocks)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
