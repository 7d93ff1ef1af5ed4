"""Where the mlp_fit benchmark's time goes beyond its bare GEMMs inside the
full `python -m fastnn bench` (c 551 ms against 339, 1.62x, where a fit alone in
a fresh process took 340-354 ms): the c fit (MLPClassifier 784-512-256-10, one
epoch) and the bare GEMMs timed in turns in one process, in a chosen state:

    fresh   nothing ran before
    after   the benchmarks that precede mlp_fit in the full run ran first (all
            backends and scikit-learn, full sizes, few repeats)
    block   the mlp_fit block's other runners (numba, numpy, scikit-learn) timed
            in the same turns, as the full run times them

on one thread in CPU time (--threads 1: the work itself, whatever the machine's
other tenants do; heap, page faults and huge pages included, as system time) or
on two in wall time, with each runner's CPU seconds per wall second (about 2
when both threads work, lower when they wait for a core or for each other).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/mlp_fit_state.py fresh after block
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/mlp_fit_state.py --threads 2 fresh after

Each state runs in a process of its own (this script starts one per state).
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fit_on(backend, arrays, call):
    return lambda: call(backend, arrays)


def measure(state, threads):
    sys.path.insert(0, str(ROOT))  # this checkout's fastnn
    import fastnn
    from fastnn import benchmarks
    from fastnn.benchmarks.cases import mlp_fit_call
    from fastnn.benchmarks.peers import mlp_fit_sklearn

    fastnn.set_num_threads(threads)
    bench = benchmarks.get_benchmark("mlp_fit")
    if state == "after":
        limits = benchmarks.measure_limits(1.0, 1, 0.3)
        for earlier in benchmarks.BENCHMARKS[:benchmarks.BENCHMARKS.index(bench)]:
            benchmarks.run_benchmark(earlier, limits, others=("sklearn",), min_time=0.01)
    names = ["c", "numba", "numpy", "sklearn", "bare"] if state == "block" else ["c", "bare"]
    clock = time.process_time if threads == 1 else time.perf_counter
    cpu, wall, fns = {}, {}, []
    for name in names:
        a = bench.setup(bench.shape, bench.dtype)
        if name == "bare":
            fn = bench.bare(a)
        elif name == "sklearn":
            fn = mlp_fit_sklearn(a)
        else:
            fn = fit_on(fastnn.get_backend(name), a, mlp_fit_call)

        def timed(name=name, fn=fn):
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            cpu[name] = cpu.get(name, 0.0) + time.process_time() - c0
            wall[name] = wall.get(name, 0.0) + time.perf_counter() - w0
        fns.append(timed)
    times = dict(zip(names, benchmarks.time_calls(fns, min_time=0.3, min_repeats=7, clock=clock)))
    cells = [f"{n} {times[n][0] * 1e3:.0f}/{times[n][1] * 1e3:.0f} ms (cpu/wall {cpu[n] / wall[n]:.2f})"
             for n in names]
    print(f"{state:<6} {threads} thread(s), {'CPU' if threads == 1 else 'wall'} median/best: "
          + ", ".join(cells) + f"; c/bare median {times['c'][0] / times['bare'][0]:.2f}, "
          f"best {times['c'][1] / times['bare'][1]:.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("states", nargs="+", choices=["fresh", "after", "block"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        measure(args.states[0], args.threads)
        return
    for state in args.states:
        subprocess.run([sys.executable, __file__, state, "--threads", str(args.threads), "--in-process"],
                       check=True)


if __name__ == "__main__":
    main()
