"""What the buffers' alignment costs the recurrent benchmark's step.

fastnn allocates its buffers on 64-byte boundaries (fastnn/backends/_checks.py
empty, csrc/common.h aligned_malloc); NumPy's own arrays start 16 bytes past one
when they are large. This script builds the recurrent benchmark's networks
(`python -m fastnn bench --recurrent`: float32, batch 64, 50 steps of 32
features, 128 units, Adam, a linear head) and its bare GEMMs twice in one
process: with fastnn's buffers, and with every buffer that fastnn allocates
while building them and taking their first steps moved `--skew` bytes past the
boundary (16: where NumPy puts a large array). The runners then take turns of
a few steps each, and the medians, 10th and 90th percentiles of the turns are
printed in us a sequence, with each runner's ratio to the aligned GEMMs.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/alignment.py
    python bench/alignment.py --kind rnn --seconds 30 --skew 32
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fastnn  # noqa: E402
from fastnn.backends import _checks as chk  # noqa: E402
from fastnn.benchmarks import openblas_report, recurrent  # noqa: E402
from fastnn.benchmarks.machine import cpu_model  # noqa: E402

TURN_STEPS = 5


def skewed_empty(skew, aligned_empty=chk.empty):
    """chk.empty with the data `skew` bytes past the boundary: `skew` bytes into an
    aligned byte buffer of chk.empty's."""
    def empty(shape, dtype, min_bytes=0):
        dtype = np.dtype(dtype)
        raw = aligned_empty(int(np.prod(shape)) * dtype.itemsize + skew, np.uint8)
        return np.ndarray(shape, dtype, raw, skew)
    return empty


def runners(kind, backends, skew):
    """{name: one step}: each backend's and the bare GEMMs', aligned and skewed."""
    sizes, result, aligned_empty = recurrent.SEQUENCE, {}, chk.empty
    for label, empty in (("", aligned_empty), (f" +{skew}", skewed_empty(skew))):
        chk.empty = empty  # what the model, the kernels and the bare GEMMs allocate with
        try:
            steps = {name: recurrent.fastnn_step(name, kind, **sizes) for name in backends}
            bare = recurrent.bare_gemms_step(kind, **sizes)
            if bare is not None:
                steps[recurrent.BARE] = bare
            for step in steps.values():  # workspaces and bound plans made now
                step()
                step()
        finally:
            chk.empty = aligned_empty
        result.update({name + label: step for name, step in steps.items()})
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("lstm", "rnn"), default="lstm")
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--skew", type=int, default=16, help="bytes past the boundary (default 16)")
    parser.add_argument("--backend", default=",".join(b for b in ("c", "numba")
                                                      if b in fastnn.available_backends()))
    args = parser.parse_args()
    if not 0 < args.skew < chk.ALIGNMENT or args.skew % 8:
        parser.error(f"--skew must be a multiple of 8 between 8 and {chk.ALIGNMENT - 8}")
    print(f"fastnn {fastnn.__version__} on {cpu_model()}")
    print("\n".join(openblas_report()[0]))
    steps = runners(args.kind, args.backend.split(","), args.skew)
    times = {name: [] for name in steps}
    batch = recurrent.SEQUENCE["batch"]
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end:
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(TURN_STEPS):
                step()
            times[name].append((time.perf_counter() - start) / TURN_STEPS / batch * 1e6)
    floor = statistics.median(times[recurrent.BARE]) if recurrent.BARE in times else None
    print(f"\n{args.kind}, {len(times[next(iter(times))])} turns of {TURN_STEPS} steps each; "
          "us a sequence")
    print(f"  {'runner':22s} {'median':>8s} {'p10':>8s} {'p90':>8s}  over aligned GEMMs")
    for name, t in times.items():
        deciles = statistics.quantiles(t, n=10)
        ratio = f"{statistics.median(t) / floor:8.2f}" if floor else ""
        print(f"  {name:22s} {statistics.median(t):8.1f} {deciles[0]:8.1f} {deciles[-1]:8.1f}  {ratio}")


if __name__ == "__main__":
    main()
