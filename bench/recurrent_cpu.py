"""The recurrent benchmark's training step on one thread, in CPU time.

    python bench/recurrent_cpu.py [BACKEND ...]    (default: c numba)

The network of `python -m fastnn bench --recurrent` (float32, batch 64, 50 steps
of 32 features, 128 units, Adam, a linear head), one `train_step` at a time with
every thread count at one (fastnn's, Numba's, the BLAS's): the best over 25
steps of the calling thread's CPU time, which other processes on a shared,
busy machine do not inflate as they do wall time. It compares kernel versions
(run it under each, alternating), not fastnn with PyTorch: the benchmark runs
two threads.

Run as a user's machine runs:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/recurrent_cpu.py
"""

import sys
import time

from threadpoolctl import threadpool_limits

import fastnn
from fastnn.benchmarks.recurrent import SEQUENCE, fastnn_step


def main(backends):
    batch = SEQUENCE["batch"]
    fastnn.set_num_threads(1)
    with threadpool_limits(1):
        for name in backends:
            for kind in ("rnn", "lstm"):
                step = fastnn_step(name, kind, **SEQUENCE)
                for _ in range(5):
                    step()
                best = float("inf")
                for _ in range(25):
                    start = time.thread_time()
                    step()
                    best = min(best, time.thread_time() - start)
                print(f"{name:6s} {kind:5s} {best * 1e3:6.2f} ms a step, {best / batch * 1e6:6.1f} us "
                      "a sequence (one thread, CPU time)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or [n for n in ("c", "numba") if n in fastnn.available_backends()])
