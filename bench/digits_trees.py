"""The digits fit (sklearn's load_digits, MLPClassifier hidden (100,), c backend,
float64, one thread, 30 epochs, batch 200) timed in several checkouts of fastnn,
in alternating subprocesses, each run from its checkout's directory so that it
imports that checkout's fastnn, each printing the best of `--fits` fits.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/digits_trees.py /work/wt/old . --rounds 6
"""

import argparse
import subprocess
import sys
from pathlib import Path

ONE_TREE = """
import sys, time, warnings
sys.path.insert(0, ".")
import numpy as np
import fastnn
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
fastnn.set_num_threads(1)
X, y = load_digits(return_X_y=True)
X = X / 16.0
clock = time.process_time if {cpu} else time.perf_counter
best = float("inf")
for _ in range({fits} + 1):  # the first fit compiles and warms up
    est = fastnn.MLPClassifier((100,), max_iter=30, random_state=0, backend="c", dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = clock()
        est.fit(X, y)
        best = min(best, clock() - start)
print(f"{{best * 1e3:.2f}} {{fastnn.__file__}} {{est.n_iter_}}")
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", help="checkout directories")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--fits", type=int, default=15)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    code = ONE_TREE.format(fits=args.fits, cpu=args.clock == "cpu")
    times = {tree: [] for tree in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True,
                                 check=True).stdout.split()
            times[tree].append(float(out[0]))
            print(f"{tree}: {out[0]} ms (fastnn from {Path(out[1]).parent}, {out[2]} epochs)", flush=True)
    for tree, values in times.items():
        print(f"{tree}: best {min(values):.2f} ms, median {sorted(values)[len(values) // 2]:.2f} ms "
              f"over {len(values)} processes ({args.clock} clock)")


if __name__ == "__main__":
    main()
