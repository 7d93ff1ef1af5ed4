"""The recurrent benchmarks: training time per sequence of a SimpleRNN and of an
LSTM on every backend, beside PyTorch's nn.RNN / nn.LSTM and beside the GEMMs
of the same training step alone (issue 21).

The network: float32 sequences, batch 64, 50 steps of 32 features, 128 hidden
units (SimpleRNN tanh or LSTM), a linear head on the last hidden state, squared
error, Adam. One training step (forward, backward through time, Adam) on one
batch is timed; per-sequence time is its time / 64.

PyTorch runs in a process of its own that never imports fastnn
(torch_recurrent.py, through runner.run_apart, with the user's environment),
started once per round so that its timings interleave with the
backends'. "bare-gemms" is the GEMMs of the step alone, issued by the C kernels'
own time loops with their elementwise passes left out (csrc/recurrent_impl.h
recurrent_gemms): the same ranges of batch rows on the same threads, the same
blocks of columns, the same BLAS ?gemm (SciPy's) on one thread each: per step
x_t W_x and h_{t-1} W_h, (rows, F) x (F, G*H) and (rows, H) x (H, G*H), into one
array; backward, per step dh = dz_t W_h^T, dW_h += h_{t-1}^T dz_t and dW_x +=
x_t^T dz_t on the thread's rows (no dx: the layer is the first, whose backward
skips it), the threads' dW_h and dW_x added after. The LSTM's as the layer
runs it without return_sequences: h_{t-1} from the one state row it keeps
(forward) and from the rows its backward rebuilds the states in. Nothing else,
not even db's sums: the floor of the C kernels' step, whose GEMMs the numba
kernels issue alike. "bare-gemms-whole" is the same GEMMs on the whole batch
each, BLAS splitting each one itself (as the kernels issue them below their
split size). "gemms+saved" is bare-gemms plus the memory traffic of the arrays
the forward saves for the backward, with no gate math: the forward writes
every row's state at every step (and the LSTM's cell and four gates), the
backward reads them back with the gradients of the states (the SimpleRNN's
dhs of every step; the LSTM's last state's, rebuilding the others) and writes
its dz rows from them, in the kernels' order and with their prefetches
(recurrent_gemms given dhs). That is the floor of the step with the bytes its
algorithm must move (LSTM: 8.2 MB of cells and gates written and read back a
step at the benchmark's sizes), beside the GEMMs' floor. None of the three
includes the linear head, the loss or Adam.
"""

import json
import statistics
import time
from pathlib import Path

import numpy as np

SEQUENCE = {"batch": 64, "steps": 50, "features": 32, "units": 128}
GATES = {"rnn": 1, "lstm": 4}
LAYERS = {"rnn": "SimpleRNN", "lstm": "LSTM"}
TORCH = "torch"
BARE = "bare-gemms"
BARE_WHOLE = "bare-gemms-whole"
SAVED = "gemms+saved"


def sequence_data(batch, steps, features, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, steps, features)).astype(np.float32),
            rng.standard_normal((batch, 1)).astype(np.float32))


def gemm_flops(kind, batch, steps, features, units):
    """Flops of one training step's recurrent GEMMs: forward x W_x and h W_h,
    backward dW_h, dh and dW_x (2 m n k each; no dx below a first layer)."""
    width = GATES[kind] * units
    return 2 * batch * steps * width * (2 * features + 3 * units)


def fastnn_step(backend, kind, batch, steps, features, units):
    """A callable doing one training step of the network on `backend`."""
    from fastnn import nn

    X, y = sequence_data(batch, steps, features)
    layer = getattr(nn, LAYERS[kind])(units)
    model = nn.Sequential([layer, nn.Dense(1)], loss="squared_error", optimizer="adam",
                          backend=backend, dtype=np.float32, seed=0)
    model.build((steps, features))
    return lambda: model.train_step(X, y)


def bare_gemms_step(kind, batch, steps, features, units, split=True, saved=False):
    """A callable issuing the step's GEMMs alone (see the module's docstring), or
    None without the C backend. With `split` the batch rows split over the
    threads as the kernels split them at this size; else every GEMM on the
    whole batch. With `saved`, also the saved arrays' traffic (gemms+saved)."""
    import fastnn

    if "c" not in fastnn.available_backends():
        return None
    from ..backends import _checks as chk
    from ..backends.c_backend import C_FUNCTIONS, NULL, ffi

    rng = np.random.default_rng(1)
    width, d = GATES[kind] * units, np.dtype(np.float32)

    def a(*shape):  # finite values of the size of activations and gradients, aligned as fastnn's
        out = chk.empty(shape, d)
        out[...] = rng.standard_normal(shape) * 0.1
        return out

    # the lstm as the benchmark's layer runs it (return_sequences False): its
    # states hs (batch, units), the last only, and its backward's work rows
    last_only = kind == "lstm"
    states = (batch, units) if last_only else (batch, steps, units)
    arrays = (a(batch, steps, features), a(batch, units), a(features, width), a(units, width),
              a(*states), a(batch, steps, width), a(batch, width), a(batch, steps, width))
    out = (a(batch, units), a(features, width), a(units, width))
    k = C_FUNCTIONS[d]
    x, h0, W_x, W_h, hs, xw, z, dz = (ffi.from_buffer(k.ctype, v) for v in arrays)
    dh0, dW_x, dW_h = (ffi.from_buffer(k.ctype, v) for v in out)
    work = ffi.from_buffer(k.ctype, a((2 * batch + 1) * units)) if last_only else NULL
    # dhs, and the lstm's cs and gates (their cdata keep the arrays alive)
    shapes = []
    if saved:
        shapes = [states] + ([(batch, steps, units), (batch, steps, width)] if kind == "lstm" else [])
    saved_arrays = (*(ffi.from_buffer(k.ctype, a(*shape)) for shape in shapes), NULL, NULL, NULL)[:3]
    # no dx: the layer of the benchmark is a first layer (need_dx False)
    args = (GATES[kind], int(not split), last_only, x, h0, W_x, W_h, hs, xw, z, dz, NULL, NULL, dh0,
            dW_x, dW_h, *saved_arrays, work, batch, steps, features, units)
    return lambda: k.recurrent_gemms(*args)


def _calls_for(fn, min_time):
    start = time.perf_counter()
    fn()
    return max(1, int(min_time / max(time.perf_counter() - start, 1e-6)))


def _mean_time(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def torch_step_seconds(kind, sizes, min_time, repeats, **options):
    """[seconds of one training step] of the network in PyTorch, timed in a
    process that never imports fastnn (runner.run_apart); None when PyTorch is
    not installed. options: torch_recurrent.py's threads and cpu_time."""
    from .runner import run_apart

    source = (Path(__file__).parent / "torch_recurrent.py").read_text()
    options = json.dumps({"kind": kind, **sizes, "min_time": min_time, "repeats": repeats,
                          **options})
    try:
        return run_apart(source, options)["step_seconds"]
    except RuntimeError as exc:
        if "No module named 'torch'" in str(exc):
            return None
        raise RuntimeError(f"the PyTorch {kind} step failed: {exc}") from None


def run_recurrent(kinds=("rnn", "lstm"), backends=None, rounds=5, min_time=0.3, with_torch=True,
                  sizes=None, progress=None):
    """{kind: {runner: {"median_s", "best_s", "rounds_s"} per sequence}} for each
    runner: every backend, PyTorch (when installed and with_torch), and with the C
    backend bare-gemms, gemms+saved and bare-gemms-whole. Each round times every runner once
    (`min_time` seconds of steps after a warm-up), in turns; median and best are
    over the rounds, rounds_s the rounds' times in order (see paired_ratios).
    Each runner's turn starts after the main benchmark's pause
    (runner.SETTLE_SECONDS): the numpy backend's and bare-gemms-whole's GEMMs
    leave OpenBLAS's threads spinning for 0.1 s, in the next runner's time."""
    import fastnn

    from .runner import SETTLE_SECONDS

    sizes = dict(SEQUENCE, **(sizes or {}))
    backends = fastnn.available_backends() if backends is None else list(backends)
    results = {}
    for kind in kinds:
        steps = {name: fastnn_step(name, kind, **sizes) for name in backends}
        for name, split, saved in ((BARE, True, False), (SAVED, True, True), (BARE_WHOLE, False, False)):
            bare = bare_gemms_step(kind, **sizes, split=split, saved=saved)
            if bare is not None:
                steps[name] = bare
        calls = {}
        for name, fn in steps.items():
            for _ in range(3):  # warm-up (compilation, workspaces)
                fn()
            calls[name] = _calls_for(fn, min_time)
        times = {name: [] for name in steps}
        torch_ok = with_torch
        for _ in range(rounds):
            for name, fn in steps.items():
                time.sleep(SETTLE_SECONDS)  # the previous runner's BLAS threads stop spinning
                times[name].append(_mean_time(fn, calls[name]))
            if torch_ok:
                t = torch_step_seconds(kind, sizes, min_time, 1)
                if t is None:
                    torch_ok = False
                else:
                    times.setdefault(TORCH, []).extend(t)
        per = {name: {"median_s": statistics.median(ts) / sizes["batch"],
                      "best_s": min(ts) / sizes["batch"],
                      "rounds_s": [t / sizes["batch"] for t in ts]} for name, ts in times.items()}
        results[kind] = per
        if progress:
            progress(kind, per)
    return results


def ratios(per):
    """{runner: (PyTorch median / runner median, runner median / bare-gemms median)}
    (None where the other is missing)."""
    out = {}
    for name, r in per.items():
        vs_torch = per[TORCH]["median_s"] / r["median_s"] if TORCH in per else None
        vs_bare = r["median_s"] / per[BARE]["median_s"] if BARE in per else None
        out[name] = (vs_torch, vs_bare)
    return out


def paired_ratios(per):
    """As ratios, but each the median over the rounds of that round's ratio (a
    runner beside PyTorch and bare-gemms timed in the same round, seconds apart):
    on a shared machine whose load drifts from round to round, the rounds' own
    ratios vary less than the ratio of medians, which may take its two medians
    from rounds of different load. Both are reported; they differ by how much
    the load drifted."""
    def paired(top, bottom):
        if top is None or bottom is None:
            return None
        return statistics.median(a / b for a, b in zip(top["rounds_s"], bottom["rounds_s"]))
    torch, bare = per.get(TORCH), per.get(BARE)
    return {name: (paired(torch, r), paired(r, bare)) for name, r in per.items()}
