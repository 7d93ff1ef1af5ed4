"""Where one training step of the small-network benchmarks (digits_mlp,
tabular_mlp, tabular_mlp_64_64; bench/small_networks.py) spends its time: the
epoch per full step beside each bound call of the step (fastnn/nn/plan.py: the
dense layers' forward and backward, each a GEMM and its fused epilogue or
prologue, the loss, the optimizer step, the L2 penalty's value), the row gather
of the batch, and the same GEMMs alone. Every part is timed hot, repeated on
the same arrays, in turns with the others (benchmarks.time_calls); what the
epoch spends beyond the sum of its parts is the fit loop's Python and the cost
of cold data (a new batch's rows, each layer's arrays leaving the cache).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/small_network_parts.py
    python bench/small_network_parts.py --case tabular_mlp --backend numba --threads 2 --clock wall
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402

import fastnn  # noqa: E402
from fastnn.benchmarks import get_benchmark, time_calls  # noqa: E402
from fastnn.benchmarks.cases import _models  # noqa: E402

CASES = ("digits_mlp", "tabular_mlp", "tabular_mlp_64_64")


def step_gemms(model, x):
    """The GEMMs of one step of `model`'s dense layers on batch x, into arrays of
    their own: forward x W, backward x^T dz and dz W^T (none into the input)."""
    weights = [layer.params["W"] for layer in model.layers if "W" in getattr(layer, "params", {})]
    outs = [np.empty((x.shape[0], W.shape[1]), W.dtype) for W in weights]
    dWs = [np.empty_like(W) for W in weights]
    dxs = [np.empty((x.shape[0], W.shape[0]), W.dtype) for W in weights]
    ins = [x] + outs[:-1]

    def gemms():
        for k, W in enumerate(weights):
            np.matmul(ins[k], W, out=outs[k])
        for k in reversed(range(len(weights))):
            np.matmul(ins[k].T, outs[k], out=dWs[k])
            if k:
                np.matmul(outs[k], weights[k].T, out=dxs[k])
    return gemms


def parts(name, backend_name, min_time, clock):
    bench = get_benchmark(name)
    backend = fastnn.get_backend(backend_name)
    arrays = bench.setup(bench.shape, bench.dtype)
    _models.clear()
    bench.call(backend, arrays)  # builds the estimator (cases.EstimatorEpoch) and binds its step
    epoch = next(iter(_models.values()))[0]
    model, rows = epoch.model, epoch.batch_size
    own = model._workspace((rows,) + epoch.X.shape[1:])[1]
    plan = own["plan"]
    x, order, gather = plan.key[1], epoch.order, epoch.gather
    weights = model._penalties[0][0] if model._fold_l2 else None
    calls = [("epoch", epoch)]
    calls += [(f"forward {i}", run) for i, run in enumerate(plan._forward)]
    calls.append(("loss", plan.loss))
    n = len(plan._backward)
    calls += [(f"backward {n - 1 - i}", run) for i, run in enumerate(plan._backward)]
    calls.append(("optimizer step", lambda: plan.step(rows, 1e-9)))
    if weights is not None:
        calls.append(("L2 value (dot)", lambda: float(np.dot(weights, weights))))
    calls.append(("gather x", lambda: gather(epoch.X, 0, rows, order, own, "X", True)))
    calls.append(("gather t", lambda: gather(epoch.t, 0, rows, order, own, "t", True)))
    starts = iter(np.tile(np.arange(0, epoch.X.shape[0] - rows + 1, rows), 10 ** 6))

    def gather_new_rows():
        lo = next(starts)
        gather(epoch.X, lo, lo + rows, order, own, "X", True)
    calls.append(("gather x, new rows", gather_new_rows))
    calls.append(("whole step, hot", lambda: model._planned_batch(plan, rows, rows)))
    calls.append(("step's GEMMs", step_gemms(model, x)))
    calls.append(("bare GEMMs (epoch)", bench.bare(bench.setup(bench.shape, bench.dtype))))
    timings = time_calls([fn for _, fn in calls], min_time=min_time, clock=clock)
    best = {label: t for (label, _), (_, t, _) in zip(calls, timings)}
    steps = -(-epoch.X.shape[0] // rows)
    print(f"{name} ({epoch.X.shape[0]} x {epoch.X.shape[1]} {bench.dtype}, batch {rows}, {steps} steps), "
          f"{backend_name}: best times, us")
    per_step = best["epoch"] / steps
    parts_sum = 0.0
    for label, _ in calls:
        t = best[label]
        if label in ("epoch", "bare GEMMs (epoch)"):
            print(f"  {label:22s} {t * 1e3:9.3f} ms  {t / steps * 1e6:8.1f} per step")
            continue
        if label not in ("step's GEMMs", "gather x, new rows", "whole step, hot"):
            parts_sum += t
        print(f"  {label:22s} {t * 1e6:9.2f}")
    print(f"  {'sum of the parts':22s} {parts_sum * 1e6:9.2f}; the epoch per step beyond it "
          f"{(per_step - parts_sum) * 1e6:.1f}; epoch / bare GEMMs "
          f"{best['epoch'] / best['bare GEMMs (epoch)']:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", choices=CASES)
    parser.add_argument("--backend", action="append", choices=[b for b in fastnn.available_backends()])
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of samples per part")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    args = parser.parse_args()
    fastnn.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"{args.threads} thread(s), {args.clock} clock")
    for name in args.case or CASES:
        for backend in args.backend or ["c", "numba"]:
            parts(name, backend, args.min_time, clock)


if __name__ == "__main__":
    main()
