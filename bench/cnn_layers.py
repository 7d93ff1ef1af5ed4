"""Per-layer time of a CNN benchmark's training step (fastnn.benchmarks: LeNet-5
or conv32-64, float32, batch 64) on the C and numba backends: each layer's
forward and backward (layer.forward / layer.backward, the kernels behind
backend.fast) and the whole train_step, the backends interleaved in one process
(every variant once per round, in turns; minima over the rounds), in the BLAS
scope training runs in.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/cnn_layers.py
    python bench/cnn_layers.py --network cnn_conv32_64 --rounds 50
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fastnn  # noqa: E402
from fastnn.benchmarks.cases import cnn_model  # noqa: E402
from fastnn.benchmarks.workloads import CNN_BATCH, CONVNET, LENET, cnn_setup  # noqa: E402
from fastnn.nn import training  # noqa: E402
from fastnn.nn.layers import Pass  # noqa: E402

NETWORKS = {"cnn_lenet": LENET, "cnn_conv32_64": CONVNET}


def layer_calls(model, backend, x, y):
    """{name: call}: each layer's forward and backward on the workspaces of a
    step at x's batch shape, and the whole train_step."""
    model.train_step(x, y)  # binds workspaces
    ws = model._workspace(x.shape)[0]
    mode = Pass(training=True)
    inputs, out = [], x
    for layer, lws in zip(model.layers, ws):
        inputs.append(out)
        out = layer.forward(backend, out, lws, mode)
    calls = {}
    rng = np.random.default_rng(0)
    for i, (layer, lws) in enumerate(zip(model.layers, ws)):
        name = f"{i} {layer.kind}"
        outputs = layer.forward(backend, inputs[i], lws, mode)
        dy = rng.standard_normal(outputs.shape).astype(outputs.dtype)

        def forward(layer=layer, xi=inputs[i], lws=lws):
            layer.forward(backend, xi, lws, mode)

        def backward(layer=layer, dy=dy, lws=lws, need_dx=i > 0):
            layer.backward(backend, dy, lws, need_dx)
        calls[name + " fwd"], calls[name + " bwd"] = forward, backward
        layer.forward(backend, inputs[i], lws, mode)  # its workspace as the step leaves it
    calls["train_step"] = lambda: model.train_step(x, y)
    return calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="cnn_lenet", choices=sorted(NETWORKS))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--backends", default="c,numba")
    args = parser.parse_args()
    a = cnn_setup((CNN_BATCH, 28, 28, 1), "float32")
    x, y = a["X"], a["y"]
    found = {}
    for name in args.backends.split(","):
        backend = fastnn.get_backend(name)
        model = cnn_model(NETWORKS[args.network], backend, np.float32)
        found[name] = (model, backend, layer_calls(model, backend, x, y))
    best = {(b, k): np.inf for b, (_, _, calls) in found.items() for k in calls}
    for _ in range(args.rounds):
        for b, (model, backend, calls) in found.items():
            with training.blas_scope(model, backend):
                for k, call in calls.items():
                    start = time.perf_counter()
                    call()
                    best[b, k] = min(best[b, k], time.perf_counter() - start)
    names = list(next(iter(found.values()))[2])
    print(f"{args.network}, batch {CNN_BATCH}, us per call (min of {args.rounds} rounds)")
    print(f"  {'':22s}" + "".join(f"{b:>10s}" for b in found))
    for k in names:
        print(f"  {k:22s}" + "".join(f"{1e6 * best[b, k]:10.1f}" for b in found))


if __name__ == "__main__":
    main()
