"""python -m fastnn [demo|info|bench]: what runs on this machine, and how fast.

    python -m fastnn [demo]      one MLPClassifier fitted on every backend and with scikit-learn:
                                 fit time, speed-ups, test accuracy, weight differences (fastnn/demo.py)
    python -m fastnn info        versions, backends (and why any is missing), threads, BLAS,
                                 and which backend really runs each kernel
    python -m fastnn bench       time the kernels on every backend against this machine's limits

A command is one entry of COMMANDS: a name, a help line, a function that adds
its arguments to a parser, and a function that runs it; DEFAULT_COMMAND is what
runs when no command is given (options alone go to it: `python -m fastnn --samples 5000`).
"""

import argparse
import importlib.util
import json
import os
import sys

import numpy as np

import fastnn
from fastnn import benchmarks, demo
from fastnn.backends import BACKENDS, KERNELS


class UsageError(Exception):
    """A user mistake: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


# ------------------------------------------------------------------------- info
def thread_settings():
    """{what: threads} for BLAS, Numba and the C kernels' own pool."""
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

        threads["C kernels"] = _ckernels.lib.fastnn_get_num_threads()
    return threads


def print_openblas():
    """The OpenBLAS core type in use and a warning when an override pins it
    below what the CPU runs (benchmarks.openblas_report)."""
    lines, warnings = benchmarks.openblas_report()
    for line in lines:
        print(line)
    for warning in warnings:
        print(f"WARNING: {warning}")


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
    print_openblas()
    available = fastnn.available_backends()
    print(f"backends: {', '.join(available)} (default: {fastnn.get_backend().name})")
    for name, why in fastnn.unavailable_backends().items():
        print(f"  {name} unavailable: {why}")
    print("threads: " + ", ".join(f"{k} {n}" for k, n in thread_settings().items()))
    if "c" in available:
        print(c_isa_line())
    return available


def c_isa_line():
    """The instruction set the C kernels run and the ones they could (csrc/isa.h)."""
    from fastnn.backends import c_backend

    return (f"C kernels: {c_backend.get_isa()} code (this CPU and build run "
            f"{', '.join(c_backend.supported_isas())}; ${c_backend.ISA_ENV} selects a lower one)")


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
                             f"names: {', '.join(list(BACKENDS) + COMPARISONS)}")
    parser.add_argument("--only", action="append", metavar="BENCHMARK",
                        help="run only this benchmark (repeatable, or comma-separated); see --list")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--json", metavar="PATH", help="write the results and the machine record as JSON")
    parser.add_argument("--plot", metavar="PATH",
                        help="write a bar chart (PNG) of percent of machine limit (needs matplotlib)")
    parser.add_argument("--recurrent", action="store_true",
                        help="only the recurrent training benchmarks (SimpleRNN and LSTM, per "
                             "sequence, beside PyTorch and their GEMMs alone)")
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


COMPARISONS = ["torch", "sklearn"]  # libraries timed beside the backends where installed


def bench_settings(args):
    """Validated (benchmark names, backends, others, scale) from the arguments."""
    names = split_names(args.only)
    known = [b.name for b in benchmarks.BENCHMARKS]
    for name in names:
        if name not in known:
            raise UsageError(f"unknown benchmark {name!r}; known: {', '.join(known)}")
    others = list(COMPARISONS)
    backends = None
    wanted = split_names(args.backend)
    if wanted:
        for name in wanted:
            if name not in BACKENDS and name not in COMPARISONS:
                names = ", ".join(list(BACKENDS) + COMPARISONS)
                raise UsageError(f"unknown backend {name!r}; names: {names}")
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
    if args.plot and args.recurrent:
        raise UsageError("--plot draws the main benchmarks' chart; --recurrent has none (--json "
                         "writes its figures)")
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
    """One benchmark's records (dicts), a row per backend; per sample (median and
    best over shape[0]) and the speed-up over PyTorch when the benchmark is an epoch."""
    shape = "x".join(map(str, records[0]["shape"]))
    print(f"\n{bench.name} {shape} {bench.dtype} -- {bench.counts()}")
    torch = next((r for r in records if r["backend"] == "torch"), None)
    print(HEADER + (f"{'/sample':>10}{'best/sample':>12}{'vs torch':>9}" if bench.per_sample else ""))
    for r in records:
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        extra = ""
        if bench.per_sample:
            n = r["shape"][0]
            vs_torch = "-" if torch is None else f"{torch['median_s'] / r['median_s']:.2f}x"
            extra = f"{fmt_time(r['median_s'] / n):>10}{fmt_time(r['best_s'] / n):>12}{vs_torch:>9}"
        print(f"  {r['backend']:<11}{fmt_time(r['median_s']):>10}{fmt_time(r['best_s']):>10}"
              f"{r['rate']:>9.2f} {r['rate_unit']:<7}{r['percent_of_limit']:>8.1f}%{speedup:>10}"
              f"{fmt_optional(r['bare_percent'], '.0f'):>8}{extra}")


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
    if args.recurrent:
        return run_recurrent_bench(backends, "torch" in others, scale, args.quick, args.json)
    print(f"fastnn {fastnn.__version__} bench on {benchmarks.cpu_model()}"
          + (f" (sizes scaled by {scale})" if scale != 1 else ""))
    print_openblas()
    print("measuring machine limits, running the benchmarks, measuring the limits again ...",
          file=sys.stderr, flush=True)
    result = benchmarks.run(names, backends, others, args.quick, scale, progress=progress)
    print_limits(result["limits"])
    busy = result["machine"]["other_cpu_percent"]
    if busy is not None:
        print(f"other processes used {busy:.0f}% of the CPU time during the run"
              + (" (a busy machine: the figures are noisy)" if busy > 10 else ""))
    print("median and best of repeated calls after warm-up, the backends, scikit-learn and bare "
          "GEMMs of a benchmark timed in turns (PyTorch in a process of its own, in turns with them); "
          "rate and % of limit from "
          "the median; "
          "limits: the higher of two measurements (start and end of the run); speed-up over the "
          "numpy reference; bare %: time of the GEMMs alone as percent of this time")
    records = result["records"]
    for bench in benchmarks.select(names, args.quick):
        print_block(bench, [r for r in records if r["benchmark"] == bench.name])
    print_summary(records)
    for error in result["errors"]:
        print(f"\n{error['library']} left out of {error['benchmark']}: {error['error']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(records, args.plot)
        print(f"wrote {args.plot}")
    return 0


def run_recurrent_bench(backends, with_torch, scale, quick, json_path=None):
    """python -m fastnn bench --recurrent: per-sequence training times (median,
    best over rounds timed in turns) and the ratios the recurrent targets read;
    with json_path, those and the machine record written as JSON."""
    from fastnn.benchmarks import recurrent

    sizes = dict(recurrent.SEQUENCE)
    if scale != 1:
        sizes["steps"] = max(2, int(sizes["steps"] * scale))
    print(f"fastnn {fastnn.__version__} bench --recurrent on {benchmarks.cpu_model()}")
    print_openblas()
    print("float32, batch {batch}, {steps} steps of {features} features, {units} units, Adam, a "
          "linear head on the last state; per sequence: one training step / {batch}".format(**sizes))
    result = recurrent.run_recurrent(backends=backends, rounds=3 if quick else 7,
                                     min_time=0.1 if quick else 0.3, with_torch=with_torch,
                                     sizes=sizes)
    ratios = {}  # {kind: {runner: the ratios of medians and the medians of rounds}}
    for kind, per in result.items():
        flops = recurrent.gemm_flops(kind, **sizes) / sizes["batch"]
        print(f"\n{recurrent.LAYERS[kind]} ({flops / 1e6:.1f} MFLOP of GEMMs per sequence)")
        print(f"  {'':<38}{'ratios of medians':>24}{'medians of rounds':>24}")
        print(f"  {'runner':<18}{'median':>10}{'best':>10}" + f"{'torch/this':>12}{'this/gemms':>12}" * 2)
        paired = recurrent.paired_ratios(per)
        ratios[kind] = {}
        for name, (vs_torch, vs_bare) in recurrent.ratios(per).items():
            r = per[name]
            print(f"  {name:<18}{fmt_time(r['median_s']):>10}{fmt_time(r['best_s']):>10}"
                  + "".join(f"{fmt_optional(v, '.2f'):>12}" for v in (vs_torch, vs_bare, *paired[name])))
            ratios[kind][name] = {"torch_over_this": vs_torch, "this_over_gemms": vs_bare,
                                  "rounds_torch_over_this": paired[name][0],
                                  "rounds_this_over_gemms": paired[name][1]}
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"machine": benchmarks.machine(), "sizes": sizes, "per_sequence": result,
                       "ratios": ratios}, f, indent=1)
        print(f"wrote {json_path}")
    return 0


# ------------------------------------------------------------------------- demo
DEMO_DEFAULTS = {"hidden": "64", "epochs": 200, "batch_size": None, "dtype": "float64", "repeats": 3}


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def hidden_sizes(text):
    """'128,64' -> (128, 64)."""
    try:
        sizes = tuple(positive_int(part.strip()) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected layer sizes as positive integers separated by commas, got {text!r}") from None
    return sizes


def add_demo_args(parser):
    d = DEMO_DEFAULTS
    parser.add_argument("--samples", type=positive_int, metavar="N",
                        help="use N rows in all (at least 20): the data are split first (stratified, "
                             f"{round(demo.TEST_FRACTION * 100)}%% test), then each part is cut to its share "
                             "of N by a random subset, or grown to it by tiling its rows, every copy "
                             f"after the first with Gaussian noise of {demo.NOISE} x each feature's standard "
                             "deviation (test rows are never copies of training rows)")
    parser.add_argument("--hidden", type=hidden_sizes, default=hidden_sizes(d["hidden"]), metavar="SIZES",
                        help=f"hidden layer sizes, comma-separated, e.g. 128,64 (default {d['hidden']})")
    parser.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                        help=f"max_iter: at most N epochs per fit (default {d['epochs']})")
    parser.add_argument("--batch-size", type=positive_int, default=d["batch_size"], metavar="N",
                        help="rows per Adam step (default: scikit-learn's 'auto', min(200, rows))")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=None,
                        help=f"data and weights dtype, the same for scikit-learn (default {d['dtype']})")
    parser.add_argument("--backend", action="append", metavar="NAME",
                        help="fit on this fastnn backend only (repeatable, or comma-separated); the "
                             f"{demo.REFERENCE} reference always runs, as the yardstick of the speed-ups and "
                             f"weight differences; names: {', '.join(BACKENDS)}")
    parser.add_argument("--no-sklearn", action="store_true",
                        help="leave out scikit-learn's own MLPClassifier")
    parser.add_argument("--data", metavar="FILE.npz",
                        help="train on your own data instead of scikit-learn's digits: an .npz archive with "
                             "arrays X (samples, features) of numbers and y (samples,) of class labels")
    parser.add_argument("--repeats", type=positive_int, default=d["repeats"], metavar="N",
                        help=f"timed fits per backend; the table shows their median (default {d['repeats']})")
    parser.add_argument("--seed", type=int, default=0,
                        help="random_state of every estimator (default 0); the data split always uses 0")
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp",
                        help="mlp (default): the MLPClassifier above; cnn: a convolutional network "
                             "(fastnn.nn) on the digits as 8x8x1 images, on every backend and in "
                             f"PyTorch when installed ({demo.CNN_DEFAULTS['epochs']} epochs of "
                             f"{demo.CNN_DEFAULTS['batch_size']} images unless --epochs/--batch-size; "
                             "float32 unless --dtype)")
    parser.add_argument("--no-torch", action="store_true", help="--model cnn: leave out PyTorch")


def demo_backends(args):
    wanted = split_names(args.backend)
    for name in wanted:
        if name not in BACKENDS:
            raise UsageError(f"unknown backend {name!r}; names: {', '.join(BACKENDS)}")
        if name in fastnn.unavailable_backends():
            raise UsageError(f"backend {name!r} is not available: {fastnn.unavailable_backends()[name]}")
    fast = [n for n in fastnn.available_backends() if n != demo.REFERENCE and (not wanted or n in wanted)]
    return [demo.REFERENCE, *fast] + ([] if args.no_sklearn else [demo.SKLEARN])


def demo_data(args):
    dtype = np.dtype(args.dtype or DEMO_DEFAULTS["dtype"])
    if args.samples is not None and args.samples < 20:
        raise UsageError(f"--samples must be at least 20, got {args.samples}")
    try:
        if args.data:
            X, y = demo.load_npz(args.data)
            name = f"{args.data} ({len(X)} rows)"
        else:
            X, y = demo.digits()
            name = "scikit-learn's digits (1797 8x8 images, embedded)"
        return demo.prepare(X, y, name, args.samples, seed=0, dtype=dtype)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run_demo(args):
    if importlib.util.find_spec("sklearn") is None:
        raise UsageError("the demo needs scikit-learn: pip install scikit-learn")
    if args.model == "cnn":
        return run_cnn_demo(args)
    backends = demo_backends(args)
    data = demo_data(args)
    params = {"hidden_layer_sizes": args.hidden, "solver": "adam",
              "max_iter": args.epochs or DEMO_DEFAULTS["epochs"],
              "batch_size": "auto" if args.batch_size is None else args.batch_size,
              "random_state": args.seed}
    print(f"fastnn {fastnn.__version__} demo: one MLPClassifier fitted on {', '.join(backends)}")
    print(f"fitting {len(backends)} x (1 warm-up + {args.repeats} timed) times ...",
          file=sys.stderr, flush=True)
    results = demo.run(backends, params, data, args.repeats)
    demo.report(results, data, params, args.repeats)
    print("\nmore: python -m fastnn info | bench --quick | demo --help")
    return 0


def run_cnn_demo(args):
    if args.data or args.samples or args.hidden != hidden_sizes(DEMO_DEFAULTS["hidden"]):
        raise UsageError("--model cnn trains on the digits images: --data, --samples and --hidden "
                         "are for the MLP")
    backends = [b for b in demo_backends(argparse.Namespace(**{**vars(args), "no_sklearn": True}))]
    if not args.no_torch and importlib.util.find_spec("torch") is not None:
        backends.append(demo.TORCH)
    data = demo.digits_images(np.dtype(args.dtype or "float32"))
    epochs = args.epochs or demo.CNN_DEFAULTS["epochs"]
    batch_size = args.batch_size or demo.CNN_DEFAULTS["batch_size"]
    print(f"fastnn {fastnn.__version__} demo: one CNN trained on {', '.join(backends)}")
    print(f"fitting {len(backends)} x (1 warm-up + {args.repeats} timed) times ...",
          file=sys.stderr, flush=True)
    results = demo.run_cnn(backends, data, epochs, batch_size, args.seed, args.repeats)
    demo.report_cnn(results, data, epochs, batch_size, args.repeats)
    print("\nmore: python -m fastnn info | bench --quick | demo --help")
    return 0


# ------------------------------------------------------------------------- main
COMMANDS = {
    # name: (help, add_arguments(parser), run(args) -> exit status)
    "demo": ("train one MLPClassifier on every backend and scikit-learn: time, accuracy, weights",
             add_demo_args, run_demo),
    "info": ("versions, backends, threads, BLAS and which backend runs each kernel",
             add_info_args, run_info),
    "bench": ("time the kernels on every backend against this machine's limits",
              add_bench_args, run_bench),
}
DEFAULT_COMMAND = "demo"


def make_parser():
    parser = Parser(prog="python -m fastnn",
                    description="fastnn: fast neural-network training on the CPU. "
                                f"Without a command: {DEFAULT_COMMAND} (its options may follow directly).")
    parser.add_argument("--version", action="version", version=f"fastnn {fastnn.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=Parser)
    for name, (help_line, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_line, description=help_line))
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = make_parser()
        # no command: the default one, with whatever options were given
        if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
            argv = [DEFAULT_COMMAND, *argv]
        args = parser.parse_args(argv)
        return COMMANDS[args.command][2](args)
    except UsageError as exc:
        print(f"fastnn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastnn: interrupted", file=sys.stderr)
        return 130
