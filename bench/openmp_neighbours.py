"""Does fastnn slow its neighbours, or itself, through OpenMP's wait policy?

    python bench/openmp_neighbours.py torch [SAMPLES]  PyTorch MLP epoch beside fastnn
    python bench/openmp_neighbours.py step OLD_SO      fastnn's own training step, old vs new

torch: one epoch of a PyTorch MLP (784-512-256-10, ReLU, Adam, batch 256, SAMPLES
samples of float32, 10240 by default) timed in child processes started in turns: PyTorch alone;
after importing fastnn and running its compiled kernels; PyTorch imported
first, then fastnn; and with FASTNN_GLOBAL_OMP_PASSIVE=1 (the process-wide
OMP_WAIT_POLICY=PASSIVE that importing fastnn used to set). Each child prints
its best of 3 epochs after one warm-up; the figure is the best over the rounds.

step OLD_SO: a dense training step of fastnn.nn (the same network and batch),
C backend: the extension at OLD_SO (a build of csrc/ before its own thread pool,
OpenMP under OMP_WAIT_POLICY=PASSIVE as importing fastnn used to set) and this
tree's, both loaded in this process and timed in turns (best of many repeats);
Numba backend: its OpenMP layer under OMP_WAIT_POLICY=PASSIVE (before) and its
workqueue layer (now), a threading layer being chosen once per process, in
child processes started in turns.

Run as a user's machine runs:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/openmp_neighbours.py torch
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS, BATCH, SAMPLES = (784, 512, 256, 10), 256, 10240
ROUNDS = 3

TORCH_CHILD = f"""
import json, sys, time
import numpy as np

def run_fastnn():
    import fastnn
    x = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
    for name in ("c", "numba"):
        backend = fastnn.get_backend(name)
        for _ in range(20):
            backend.activation_forward(x, "tanh")
            backend.adam_step(x.copy(), x, np.zeros_like(x), np.zeros_like(x), 1, 1e-3)

if sys.argv[1] == "fastnn-first":
    run_fastnn()
import torch
if sys.argv[1] == "torch-first":
    run_fastnn()
torch.manual_seed(0)
units, batch, n = {UNITS!r}, {BATCH}, int(sys.argv[2])
X = torch.randn(n, units[0])
y = torch.randint(0, units[-1], (n,))
layers = []
for k, (i, o) in enumerate(zip(units[:-1], units[1:])):
    layers += [torch.nn.Linear(i, o)] + ([torch.nn.ReLU()] if k < len(units) - 2 else [])
model = torch.nn.Sequential(*layers)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = torch.nn.CrossEntropyLoss()

def epoch():
    order = torch.randperm(n)
    for lo in range(0, n, batch):
        idx = order[lo:lo + batch]
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(X[idx]), y[idx]).backward()
        optimizer.step()

epoch()
times = []
for _ in range(3):
    start = time.perf_counter()
    epoch()
    times.append(time.perf_counter() - start)
print(json.dumps(min(times)))
"""

# argv[1]: backend name; prints the best time of a dense training step
STEP_CHILD = """
import json, sys, time
import numpy as np
sys.path.insert(0, {!r})
from openmp_neighbours import best_step_seconds, make_step
print(json.dumps(best_step_seconds(make_step(sys.argv[1]))))
""".format(os.path.join(ROOT, "bench"))


def child_env(**changes):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "FASTNN_GLOBAL_OMP_PASSIVE")}
    env["PYTHONPATH"] = ROOT
    env.update(changes)
    return env


def run_child(source, arg, env, *more):
    out = subprocess.run([sys.executable, "-c", source, arg, *more], env=env, capture_output=True,
                         text=True, cwd=tempfile.gettempdir(), check=True)
    return json.loads(out.stdout.splitlines()[-1])


def torch_epochs(samples=SAMPLES):
    variants = {
        "PyTorch alone": ("alone", child_env()),
        "import fastnn + its kernels, then PyTorch": ("fastnn-first", child_env()),
        "PyTorch, then fastnn + its kernels": ("torch-first", child_env()),
        "fastnn first, FASTNN_GLOBAL_OMP_PASSIVE=1": ("fastnn-first",
                                                      child_env(FASTNN_GLOBAL_OMP_PASSIVE="1")),
    }
    best = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, (order, env) in variants.items():
            best[name].append(run_child(TORCH_CHILD, order, env, str(samples)))
    print(f"PyTorch MLP epoch {'-'.join(map(str, UNITS))}, batch {BATCH}, {samples} samples "
          f"(best of {ROUNDS} processes x 3 epochs; all figures per process in brackets):")
    for name, times in best.items():
        print(f"  {name:45s} {min(times):.3f} s  [{', '.join(f'{t:.3f}' for t in times)}]")


def make_step(backend):
    import numpy as np

    from fastnn import nn

    rng = np.random.default_rng(0)
    X = rng.standard_normal((BATCH, UNITS[0])).astype(np.float32)
    y = rng.integers(0, UNITS[-1], BATCH)
    model = nn.Sequential([nn.Dense(u, "relu") for u in UNITS[1:-1]] + [nn.Dense(UNITS[-1])],
                          loss="sparse_categorical_crossentropy", optimizer=nn.Adam(1e-3),
                          seed=0, backend=backend, dtype=np.float32)
    model.build((UNITS[0],))
    return lambda: model.train_step(X, y)


def best_step_seconds(step, repeats=200):
    for _ in range(10):
        step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def old_c_backend(path):
    """A CBackend on the extension at `path`: a second copy of c_backend.py whose
    fastnn._ckernels is that file, loaded under OMP_WAIT_POLICY=PASSIVE as
    importing fastnn used to set before libgomp loaded."""
    import fastnn._ckernels as new_extension

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    spec = importlib.util.spec_from_file_location("fastnn._ckernels", path)
    old_extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old_extension)
    sys.modules["fastnn._ckernels"] = old_extension
    try:
        spec = importlib.util.spec_from_file_location(
            "fastnn.backends.c_backend_old", os.path.join(ROOT, "fastnn/backends/c_backend.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.modules["fastnn._ckernels"] = new_extension
    return module.CBackend()


def own_steps(old_so):
    import fastnn

    new = fastnn.get_backend("c")
    fastnn.get_backend("numba")  # its threading layer chosen before the variable below is set
    old = old_c_backend(old_so)
    steps = {"C, OpenMP + PASSIVE (before)": make_step(old), "C, own pool (now)": make_step(new)}
    best = {name: float("inf") for name in steps}
    for _ in range(5):
        for name, step in steps.items():
            best[name] = min(best[name], best_step_seconds(step, 100))
    numba = {"Numba, OpenMP layer + PASSIVE (before)": child_env(FASTNN_GLOBAL_OMP_PASSIVE="1"),
             "Numba, workqueue layer (now)": child_env()}
    for _ in range(ROUNDS):
        for name, env in numba.items():
            best[name] = min(best.get(name, float("inf")), run_child(STEP_CHILD, "numba", env))
    print(f"dense training step {'-'.join(map(str, UNITS))}, batch {BATCH}, float32, best of many:")
    for name, seconds in best.items():
        print(f"  {name:45s} {seconds * 1e3:.3f} ms")


if __name__ == "__main__":
    if sys.argv[1:2] == ["torch"] and len(sys.argv) <= 3:
        torch_epochs(*map(int, sys.argv[2:]))
    elif sys.argv[1:2] == ["step"] and len(sys.argv) == 3:
        own_steps(sys.argv[2])
    else:
        sys.exit(__doc__)
