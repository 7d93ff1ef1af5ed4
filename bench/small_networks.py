"""Per-epoch training time of the small networks most scikit-learn users train,
beside the same networks' GEMMs alone called through NumPy (issue #24's target:
within 1.5x of them): the benchmarks digits_mlp, tabular_mlp and
tabular_mlp_64_64 of `python -m fastnn bench` (fastnn/benchmarks/cases.py),
timed here alone, on one thread by default, with a choice of clock.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/small_networks.py
    python bench/small_networks.py --clock cpu --backend c --case digits_mlp
    python bench/small_networks.py --clock cpu --tree /path/to/another/checkout

An epoch is one more epoch of an MLPClassifier (batch 200, Adam) as its fit
runs every epoch after the first (cases.EstimatorEpoch: shuffled, no per-call
validation); `bare-gemms` is one epoch's matrix products alone into
preallocated arrays (workloads.network_gemms), unshuffled. Every runner is
timed in turns (benchmarks.time_calls); the ratio is of medians, and of the
best calls beside it. One thread by default (--threads): on a shared machine
the 2-thread figures of such small GEMMs are mostly waiting.
"""

import argparse
import sys
import time
from pathlib import Path

# the fastnn of this checkout (or of the one --tree names), not an installed one
TREE = sys.argv[sys.argv.index("--tree") + 1] if "--tree" in sys.argv else Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TREE))
import fastnn  # noqa: E402
from fastnn.benchmarks import get_benchmark, time_calls  # noqa: E402
from fastnn.benchmarks.runner import BARE  # noqa: E402

CASES = ("digits_mlp", "tabular_mlp", "tabular_mlp_64_64")


def measure(name, backends, min_time, clock):
    """{runner: (median, best) seconds per epoch} of benchmark `name` on each
    backend and of its bare GEMMs, timed in turns."""
    bench = get_benchmark(name)
    entries = []
    for name in backends:
        backend, arrays = fastnn.get_backend(name), bench.setup(bench.shape, bench.dtype)
        entries.append((name, lambda b=backend, a=arrays: bench.call(b, a)))
    entries.append((BARE, bench.bare(bench.setup(bench.shape, bench.dtype))))
    timings = time_calls([fn for _, fn in entries], min_time=min_time, clock=clock)
    return bench, {runner: (median, best) for (runner, _), (median, best, _) in zip(entries, timings)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", choices=CASES)
    parser.add_argument("--backend", action="append", choices=fastnn.available_backends())
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of samples per runner")
    parser.add_argument("--threads", type=int, default=1, help="BLAS and kernel threads (default 1)")
    parser.add_argument("--tree", help="a checkout of fastnn to time instead of this one")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time (with one thread, what a quiet machine's "
                             "wall time would be: time spent waiting for a shared core is not counted)")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"fastnn from {Path(fastnn.__file__).parent}; {args.threads} thread(s), {args.clock} clock")
    fastnn.set_num_threads(args.threads)
    backends = args.backend or fastnn.available_backends()
    for name in args.case or CASES:
        bench, times = measure(name, backends, args.min_time, clock)
        gemms, gemms_best = times[BARE]
        print(f"{name}: {bench.shape[0]} x {bench.shape[1]} {bench.dtype}; "
              f"gemms {gemms * 1e3:.3f} ms per epoch (best {gemms_best * 1e3:.3f})")
        for backend in backends:
            median, best = times[backend]
            print(f"  {backend:6s} {median * 1e3:8.3f} ms per epoch  {median / gemms:5.2f}x gemms"
                  f"   (best {best * 1e3:.3f} ms, {best / gemms_best:.2f}x)")


if __name__ == "__main__":
    main()
