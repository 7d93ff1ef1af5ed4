"""python -m fastnn [info|bench]: what runs on this machine, and how fast.

    python -m fastnn             overview: versions, backends, and a small training run per backend
    python -m fastnn info        versions, backends (and why any is missing), threads, BLAS,
                                 and which backend really runs each kernel
    python -m fastnn bench       time the kernels on every backend against this machine's limits

A command is one entry of COMMANDS: a name, a help line, a function that adds
its arguments to a parser, and a function that runs it; DEFAULT_COMMAND (None:
the overview) is what runs when no command is given.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

import fastnn
from fastnn import benchmarks
from fastnn.backends import BACKENDS, KERNELS


class UsageError(Exception):
    """A user mistake: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


# ------------------------------------------------------------------------- info
def thread_settings():
    """{what: threads} for BLAS, Numba and the C kernels' OpenMP."""
    threads = {}
    for pool in benchmarks.blas_info():
        threads[f"BLAS ({pool['internal_api']} {pool['version']})"] = pool["num_threads"]
    try:
        import numba

        threads["numba"] = numba.get_num_threads()
    except ImportError:
        pass
    if "c" in fastnn.available_backends():
        from fastnn import _ckernels

        threads["C kernels (OpenMP)"] = _ckernels.lib.fastnn_get_num_threads()
    return threads


def print_info():
    m = benchmarks.machine()
    v = m["versions"]
    print(f"fastnn {v['fastnn']}")
    print("versions: " + ", ".join(f"{k} {v[k] or 'not installed'}" for k in v if k != "fastnn"))
    print(f"cpu: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
          f"{' '.join(m['cpu_flags']) or 'no SIMD flags found'}")
    for pool in m["blas"]:
        print(f"BLAS: {pool['internal_api']} {pool['version']} ({pool['architecture']}, "
              f"{pool['threading_layer']}), {pool['num_threads']} threads")
    available = fastnn.available_backends()
    print(f"backends: {', '.join(available)} (default: {fastnn.get_backend().name})")
    for name, why in fastnn.unavailable_backends().items():
        print(f"  {name} unavailable: {why}")
    print("threads: " + ", ".join(f"{k} {n}" for k, n in thread_settings().items()))
    return available


def print_owners(available):
    """Table: kernel x backend -> the backend whose code really runs it."""
    owners = {name: fastnn.kernel_owners(name) for name in available}
    width = max(len(k) for k in KERNELS) + 2
    print("kernel owners (which backend's code runs each kernel):")
    print("  " + "kernel".ljust(width) + "".join(name.ljust(8) for name in available))
    for kernel in KERNELS:
        print("  " + kernel.ljust(width) + "".join(owners[name][kernel].ljust(8) for name in available))


def add_info_args(parser):
    pass


def run_info(args):
    print_owners(print_info())
    return 0


# ------------------------------------------------------------------------ bench
def add_bench_args(parser):
    parser.add_argument("--quick", action="store_true",
                        help="the main kernels only, with fewer repeats (under a minute)")
    parser.add_argument("--backend", action="append", metavar="NAME",
                        help="run only this backend (repeatable, or comma-separated); "
                             f"names: {', '.join(list(BACKENDS) + ['torch'])}")
    parser.add_argument("--only", action="append", metavar="BENCHMARK",
                        help="run only this benchmark (repeatable, or comma-separated); see --list")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--json", metavar="PATH", help="write the results and the machine record as JSON")
    parser.add_argument("--plot", metavar="PATH",
                        help="write a bar chart (PNG) of percent of machine limit (needs matplotlib)")
    # shrinks every size (tests); also settable with FASTNN_BENCH_SCALE
    parser.add_argument("--scale", type=float, help=argparse.SUPPRESS)


def split_names(values):
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


def check_output_path(path, option):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{option}: {path} is a folder")


def bench_settings(args):
    """Validated (benchmark names, backends, others, scale) from the arguments."""
    names = split_names(args.only)
    known = [b.name for b in benchmarks.BENCHMARKS]
    for name in names:
        if name not in known:
            raise UsageError(f"unknown benchmark {name!r}; known: {', '.join(known)}")
    others = ["torch"]
    backends = None
    wanted = split_names(args.backend)
    if wanted:
        for name in wanted:
            if name not in BACKENDS and name != "torch":
                raise UsageError(f"unknown backend {name!r}; names: {', '.join(list(BACKENDS) + ['torch'])}")
            if name in fastnn.unavailable_backends():
                raise UsageError(f"backend {name!r} is not available: {fastnn.unavailable_backends()[name]}")
            if name == "torch" and benchmarks.version("torch") is None:
                raise UsageError("torch is not installed: pip install torch")
        backends = [n for n in fastnn.available_backends() if n in wanted]
        others = [n for n in others if n in wanted]
    scale = args.scale
    try:
        scale = benchmarks.scale_from_env() if scale is None else scale
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not 0 < scale <= 1:
        raise UsageError(f"--scale must be in (0, 1], got {scale}")
    if args.json:
        check_output_path(args.json, "--json")
    if args.plot:
        check_output_path(args.plot, "--plot")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'fastnn-cpu[bench]'") from None
    return names, backends, others, scale


def fmt_time(seconds):
    for unit, factor in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= factor:
            return f"{seconds / factor:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_optional(value, spec):
    return "-" if value is None else format(value, spec)


def print_limits(limits):
    g = limits["gemm_gflops"]
    print(f"machine limits: GEMM {g['float32']:.1f} GFLOP/s float32, {g['float64']:.1f} GFLOP/s float64 "
          f"(n={limits['gemm_n']}); stream {limits['stream_gbs']:.1f} GB/s (the higher of copy "
          f"{limits['copy_gbs']:.1f} and in-place add {limits['update_gbs']:.1f}; read+write bytes), "
          f"read {limits['read_gbs']:.1f} GB/s ({limits['stream_bytes'] // benchmarks.MB} MB arrays)")


HEADER = (f"  {'backend':<11}{'median':>10}{'best':>10}{'rate':>17}{'% limit':>9}{'speed-up':>10}"
          f"{'bare %':>8}")


def print_block(bench, records):
    """One benchmark's records (dicts), a row per backend."""
    shape = "x".join(map(str, records[0]["shape"]))
    print(f"\n{bench.name} {shape} {bench.dtype} -- {bench.counts()}")
    print(HEADER)
    for r in records:
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(f"  {r['backend']:<11}{fmt_time(r['median_s']):>10}{fmt_time(r['best_s']):>10}"
              f"{r['rate']:>9.2f} {r['rate_unit']:<7}{r['percent_of_limit']:>8.1f}%{speedup:>10}"
              f"{fmt_optional(r['bare_percent'], '.0f'):>8}")


def print_summary(records):
    """Percent of machine limit, benchmark x backend."""
    columns = list(dict.fromkeys(r["backend"] for r in records))
    table = {(r["benchmark"], r["backend"]): r["percent_of_limit"] for r in records}
    rows = list(dict.fromkeys(r["benchmark"] for r in records))
    width = max(len(r) for r in rows) + 2
    print("\npercent of machine limit (GEMM GFLOP/s or stream GB/s):")
    print("  " + "benchmark".ljust(width) + "".join(f"{c:>12}" for c in columns))
    for row in rows:
        cells = [table.get((row, c)) for c in columns]
        print("  " + row.ljust(width) + "".join(f"{fmt_optional(x, '.1f'):>12}" for x in cells))


def plot(records, path):
    """Grouped bars: percent of machine limit per benchmark and backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(r["benchmark"] for r in records))
    columns = list(dict.fromkeys(r["backend"] for r in records))
    table = {(r["benchmark"], r["backend"]): r["percent_of_limit"] for r in records}
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    width = 0.8 / len(columns)
    for j, col in enumerate(columns):
        xs = [i + j * width for i, row in enumerate(rows) if (row, col) in table]
        ys = [table[row, col] for row in rows if (row, col) in table]
        ax.bar(xs, ys, width, label=col)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels(rows, rotation=30, ha="right")
    ax.set_ylabel("% of machine limit")
    ax.set_title("fastnn kernels: percent of GEMM GFLOP/s or stream GB/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def progress(bench, records):
    times = ", ".join(f"{r.backend} {fmt_time(r.median_s)}" for r in records)
    print(f"  {bench.name}: {times}", file=sys.stderr, flush=True)


def run_bench(args):
    if args.list:
        for b in benchmarks.BENCHMARKS:
            shape = "x".join(map(str, b.shape))
            print(f"{b.name:<18}{shape:<14}{b.dtype:<9}{'quick ' if b.quick else '      '}{b.counts()}")
        return 0
    names, backends, others, scale = bench_settings(args)
    print(f"fastnn {fastnn.__version__} bench on {benchmarks.cpu_model()}"
          + (f" (sizes scaled by {scale})" if scale != 1 else ""))
    print("measuring machine limits, running the benchmarks, measuring the limits again ...",
          file=sys.stderr, flush=True)
    result = benchmarks.run(names, backends, others, args.quick, scale, progress=progress)
    print_limits(result["limits"])
    busy = result["machine"]["other_cpu_percent"]
    if busy is not None:
        print(f"other processes used {busy:.0f}% of the CPU time during the run"
              + (" (a busy machine: the figures are noisy)" if busy > 10 else ""))
    print("median and best of repeated calls after warm-up; rate and % of limit from the median; "
          "limits: the higher of two measurements (start and end of the run); speed-up over the "
          "numpy reference; bare %: time of the GEMMs alone as percent of this time")
    records = result["records"]
    for bench in benchmarks.select(names, args.quick):
        print_block(bench, [r for r in records if r["benchmark"] == bench.name])
    print_summary(records)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(records, args.plot)
        print(f"wrote {args.plot}")
    return 0


# --------------------------------------------------------------------- overview
def digits(seed=0):
    """scikit-learn's digits (1797 8x8 images, pixels scaled to [0, 1]), shuffled:
    (X_train, y_train, X_test, y_test) with 1500 training samples."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(X))
    X, y = X[order] / 16.0, y[order]
    return X[:1500], y[:1500], X[1500:], y[1500:]


def train_digits(backend, data, epochs=5, hidden=64, batch=64, seed=0):
    """A 2-layer net (64 -> hidden relu -> 10) trained on `data` (see digits) with
    the kernels directly: dense layers, softmax cross-entropy, one Adam step per
    batch over a single flat parameter buffer. Returns [(loss, test accuracy)] per epoch."""
    b = fastnn.get_backend(backend)
    Xtr, ytr, Xte, yte = data
    sizes = [(64, hidden), (hidden, 10)]
    # all parameters in one buffer, each W and b a view into it; gradients alike
    n_params = sum(i * o + o for i, o in sizes)
    params, grads = np.zeros(n_params), np.zeros(n_params)
    m, v = np.zeros(n_params), np.zeros(n_params)

    def views(buf):
        out, at = [], 0
        for i, o in sizes:
            out.append((buf[at:at + i * o].reshape(i, o), buf[at + i * o:at + i * o + o]))
            at += i * o + o
        return out

    layers, dlayers = views(params), views(grads)
    rng = np.random.default_rng(seed)
    for (W, bias), (i, o) in zip(layers, sizes):
        W[...], bias[...] = b.init_weights("he_uniform", i, o, rng)

    def forward(x):
        (W1, b1), (W2, b2) = layers
        h = b.dense_forward(x, W1, b1, "relu")
        return h, b.dense_forward(h, W2, b2)

    history, t = [], 0
    for _ in range(epochs):
        losses = []
        for start in range(0, len(Xtr), batch):
            x, labels = Xtr[start:start + batch], ytr[start:start + batch]
            h, logits = forward(x)
            loss, dlogits = b.softmax_cross_entropy(logits, labels)
            (dW1, db1), (dW2, db2) = dlayers
            (W1, _), (W2, _) = layers
            dh, _, _ = b.dense_backward(dlogits, h, W2, logits, dW=dW2, db=db2)
            b.dense_backward(dh, x, W1, h, "relu", need_dx=False, dW=dW1, db=db1)
            t += 1
            b.adam_step(params, grads, m, v, t, 1e-2)
            losses.append(loss)
        accuracy = float((forward(Xte)[1].argmax(axis=1) == yte).mean())
        history.append((float(np.mean(losses)), accuracy))
    return history


def run_overview(args):
    available = print_info()
    print("\ntraining a 64-64-10 ReLU net on scikit-learn's digits (1500 train, 297 test), "
          "5 epochs, Adam, float64; mean training loss / test accuracy per epoch, per backend\n"
          "(the time includes compiling kernels on their first call):")
    data = digits()
    for name in available:
        t0 = time.perf_counter()
        history = train_digits(name, data)
        seconds = time.perf_counter() - t0
        epochs = "  ".join(f"{loss:.4f}/{acc:.3f}" for loss, acc in history)
        print(f"  {name:<6} {epochs}  ({seconds:.2f} s)")
    print("\nmore: python -m fastnn info | bench --quick | --help")
    return 0


# ------------------------------------------------------------------------- main
COMMANDS = {
    # name: (help, add_arguments(parser), run(args) -> exit status)
    "info": ("versions, backends, threads, BLAS and which backend runs each kernel",
             add_info_args, run_info),
    "bench": ("time the kernels on every backend against this machine's limits",
              add_bench_args, run_bench),
}
DEFAULT_COMMAND = None  # None: run_overview


def make_parser():
    parser = Parser(prog="python -m fastnn",
                    description="fastnn: fast neural-network training on the CPU. "
                                "Without a command: versions, backends and a small training run.")
    parser.add_argument("--version", action="version", version=f"fastnn {fastnn.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=Parser)
    for name, (help_line, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_line, description=help_line))
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = make_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            if DEFAULT_COMMAND is None:
                return run_overview(args)
            args = parser.parse_args([DEFAULT_COMMAND, *argv])
        return COMMANDS[args.command][2](args)
    except UsageError as exc:
        print(f"fastnn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastnn: interrupted", file=sys.stderr)
        return 130
