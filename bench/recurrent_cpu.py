"""The recurrent benchmark's training step on one thread, in CPU time.

    python bench/recurrent_cpu.py [BACKEND ...]    (default: c numba)

The network of `python -m fastnn bench --recurrent` (float32, batch 64, 50 steps
of 32 features, 128 units, Adam, a linear head), one `train_step` at a time with
every thread count at one (fastnn's, Numba's, the BLAS's): the best over 25
steps of the calling thread's CPU time, which other processes on a shared,
busy machine do not inflate as they do wall time. Beside the backends: the
step's recurrent GEMMs alone as the C kernels issue them on one thread
(bare-gemms, see fastnn/benchmarks/recurrent.py), and PyTorch's step on one
thread in CPU time too (a process of its own that never imports fastnn; its
best over 25 timings of 0.1 s). It compares kernel versions (run it under each,
alternating) and shows the share of each step outside its GEMMs on one core;
the benchmark itself runs two threads, in wall time.

Run as a user's machine runs:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/recurrent_cpu.py
"""

import sys
import time

from threadpoolctl import threadpool_limits

import fastnn
from fastnn.benchmarks.recurrent import BARE, SEQUENCE, bare_gemms_step, fastnn_step, torch_step_seconds


def best_cpu_seconds(step, repeats=25):
    for _ in range(5):
        step()
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        step()
        best = min(best, time.thread_time() - start)
    return best


def main(backends):
    batch = SEQUENCE["batch"]
    fastnn.set_num_threads(1)
    with threadpool_limits(1):
        for kind in ("rnn", "lstm"):
            steps = {name: fastnn_step(name, kind, **SEQUENCE) for name in backends}
            bare = bare_gemms_step(kind, **SEQUENCE)
            if bare is not None:
                steps[BARE] = bare
            seconds = {name: best_cpu_seconds(step) for name, step in steps.items()}
            torch = torch_step_seconds(kind, SEQUENCE, 0.1, 25, threads=1, cpu_time=True)
            if torch is not None:
                seconds["torch"] = min(torch)
            for name, s in seconds.items():
                share = f", {s / seconds[BARE]:4.2f}x the GEMMs" if BARE in seconds else ""
                print(f"{name:10s} {kind:5s} {s * 1e3:6.2f} ms a step, {s / batch * 1e6:6.1f} us a "
                      f"sequence{share} (one thread, CPU time)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or [n for n in ("c", "numba") if n in fastnn.available_backends()])
