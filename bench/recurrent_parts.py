"""Where one training step of the recurrent benchmark (python -m fastnn bench
--recurrent: float32, batch 64, 50 steps of 32 features, 128 units, Adam, a
Dense(1) head) spends its time beyond its GEMMs, measured in place: each bound
call of the step (fastnn/nn/plan.py) timed inside `model.train_step` as the
benchmark calls it, steps back to back, the rest of the step (train_step's
checks and copy of the batch, the BLAS scope, the calls between the parts,
and the timers' own few us) being "Python around the plan"; and between the
batches of steps, the same GEMMs alone (the benchmark's bare-gemms).

The host's load drifts from second to second. So the turns are short (ROUND_STEPS
steps of the backend, then as many of the GEMMs alone), and the rounds are
sorted by the GEMMs' own time into thirds: the fastest third (the quietest
seconds) and the slowest are reported apart, each part as us a step and as a
share of the GEMMs' time of the same rounds.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/recurrent_parts.py
    python bench/recurrent_parts.py --kind rnn --backend numba --seconds 60
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fastnn  # noqa: E402
from fastnn.benchmarks import openblas_report, recurrent  # noqa: E402
from fastnn.benchmarks.machine import cpu_model  # noqa: E402
from fastnn.nn.model import Sequential  # noqa: E402

ROUND_STEPS = 10
PARTS = ("recurrent forward", "head forward", "loss", "head backward", "recurrent backward",
         "optimizer step")


def timed(name, fn, times):
    """fn, appending the seconds of each call to times[name]."""
    def call(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times[name].append(time.perf_counter() - start)
        return out
    return call


def instrumented_step(backend, kind):
    """(train_step on the benchmark's batch, {part: [seconds]} its bound calls fill)."""
    step = recurrent.fastnn_step(backend, kind, **recurrent.SEQUENCE)
    model = next(c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, Sequential))
    for _ in range(5):  # compiled, bound (the plan exists after the first step)
        step()
    s = recurrent.SEQUENCE
    plan = model._workspace((s["batch"], s["steps"], s["features"]))[1]["plan"]
    if len(plan._forward) != 2 or len(plan._backward) != 2:
        raise RuntimeError("expected a bound step of two layers (recurrent, Dense head)")
    times = {name: [] for name in PARTS}
    plan._forward = [timed(PARTS[0], plan._forward[0], times), timed(PARTS[1], plan._forward[1], times)]
    plan._loss = timed(PARTS[2], plan._loss, times)
    plan._backward = [timed(PARTS[3], plan._backward[0], times),
                      timed(PARTS[4], plan._backward[1], times)]
    plan.step = timed(PARTS[5], plan.step, times)
    return step, times


def measure(backend, kind, seconds):
    """[{part: us a step}] per round, with "whole step", "Python around the plan"
    and "GEMMs alone"."""
    step, times = instrumented_step(backend, kind)
    bare = recurrent.bare_gemms_step(kind, **recurrent.SEQUENCE)
    for _ in range(3):
        bare()
    rounds = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for ts in times.values():
            ts.clear()
        whole = []
        for _ in range(ROUND_STEPS):
            start = time.perf_counter()
            step()
            whole.append(time.perf_counter() - start)
        gemms = []
        for _ in range(ROUND_STEPS):
            start = time.perf_counter()
            bare()
            gemms.append(time.perf_counter() - start)
        r = {name: statistics.median(ts) * 1e6 for name, ts in times.items()}
        r["whole step"] = statistics.median(whole) * 1e6
        r["Python around the plan"] = statistics.median(
            w - sum(ts[i] for ts in times.values()) for i, w in enumerate(whole)) * 1e6
        r["GEMMs alone"] = statistics.median(gemms) * 1e6
        rounds.append(r)
    return rounds


def report(backend, kind, rounds):
    rounds = sorted(rounds, key=lambda r: r["GEMMs alone"])
    third = max(1, len(rounds) // 3)
    groups = (("quietest third", rounds[:third]), ("busiest third", rounds[-third:]))
    names = ("GEMMs alone", "whole step") + PARTS + ("Python around the plan",)
    print(f"\n{kind}, {backend}: {len(rounds)} rounds of {ROUND_STEPS} steps and {ROUND_STEPS} "
          "of the GEMMs alone; medians over the rounds of each round's medians")
    print(f"  {'':24s}" + "".join(f"{label:>24s}" for label, _ in groups))
    print(f"  {'':24s}" + "    us a step  over GEMMs" * len(groups))
    for name in names:
        cells = ""
        for _, group in groups:
            us = statistics.median(r[name] for r in group)
            share = statistics.median(r[name] / r["GEMMs alone"] for r in group)
            cells += f"{us:13.1f}{share:11.3f}"
        print(f"  {name:24s}{cells}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("lstm", "rnn"), action="append")
    parser.add_argument("--backend", choices=("c", "numba"), action="append")
    parser.add_argument("--seconds", type=float, default=40.0, help="per kind and backend")
    args = parser.parse_args()
    available = fastnn.available_backends()
    if "c" not in available:
        sys.exit("the GEMMs alone are issued by the C backend, which is not available here")
    print(f"fastnn {fastnn.__version__} on {cpu_model()}")
    print("\n".join(openblas_report()[0]))
    for kind in args.kind or ["lstm"]:
        for backend in args.backend or [b for b in ("c", "numba") if b in available]:
            report(backend, kind, measure(backend, kind, args.seconds))


if __name__ == "__main__":
    main()
