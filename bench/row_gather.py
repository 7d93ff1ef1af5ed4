"""The row gather of shuffled batches (the take_rows kernel) on each backend
beside NumPy's take, at the batch shapes of the small-network and nn_epoch
benchmarks: microseconds per batch, each the best of many passes over one
shuffled epoch, the variants timed in turns in one process, on one thread and
on two (fastnn.set_num_threads; NumPy's take always runs on one).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/row_gather.py
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fastnn
import numpy as np  # noqa: E402

import fastnn  # noqa: E402

# (rows, columns, dtype, batch): digits, the tabular data twice, nn_epoch's MNIST-sized data
SHAPES = [(1797, 64, np.float64, 200), (50000, 54, np.float64, 200), (50000, 54, np.float32, 200),
          (20000, 784, np.float32, 256)]


def passes(x, order, batch, index, out, run):
    """One epoch's batches: the order's slice copied into the bound index buffer, then the kernel."""
    def epoch():
        for lo in range(0, x.shape[0] - batch + 1, batch):
            index[...] = order[lo:lo + batch]
            run()
    return epoch


def main(repeats=25):
    rng = np.random.default_rng(0)
    for n, d, dtype, batch in SHAPES:
        x = rng.standard_normal((n, d)).astype(dtype)
        order, index, out = rng.permutation(n), np.empty(batch, np.int64), np.empty((batch, d), dtype)
        variants = {"numpy.take": passes(x, order, batch, index, out,
                                         lambda x=x, index=index, out=out: np.take(x, index, axis=0, out=out,
                                                                                  mode="clip"))}
        for name in fastnn.available_backends():
            if name != "numpy":
                for threads in (1, 2):
                    run = fastnn.get_backend(name).fast.bind("take_rows", x, index, out)
                    variants[f"{name} {threads}t"] = (threads, passes(x, order, batch, index, out, run))
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(repeats):
            for name, variant in variants.items():
                threads, epoch = variant if isinstance(variant, tuple) else (1, variant)
                fastnn.set_num_threads(threads)
                t0 = time.perf_counter()
                epoch()
                best[name] = min(best[name], time.perf_counter() - t0)
        per_batch = {name: seconds / (n // batch) * 1e6 for name, seconds in best.items()}
        print(f"{n} x {d} {np.dtype(dtype).name}, batch {batch}: "
              + "  ".join(f"{name} {us:.1f} us" for name, us in per_batch.items()))


if __name__ == "__main__":
    main()
