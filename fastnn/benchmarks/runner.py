"""Running the benchmarks: `run_benchmark` times one benchmark on each backend
(median over repeats after a warm-up that also compiles Numba code, the
backends timed in turns so that they share the machine's moments of noise) and
on the other libraries it names (PyTorch when installed), and returns `Record`s
with the rate, the percent of the machine limit and the speed-up over the
reference; `run` measures the limits around a whole selection and adds the
machine record.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import fastnn

from . import peers, workloads
from .cases import select
from .limits import best_limits, limit_for, measure_limits
from .machine import cpu_busy_seconds, machine, other_cpu_percent, version
from .timing import time_calls

REFERENCE = "numpy"
# shrinks every benchmark's first dimension and the limit measurements (tests use it)
SCALE_ENV = "FASTNN_BENCH_SCALE"


@dataclass
class Record:
    """One benchmark timed on one backend (or other library)."""

    benchmark: str
    backend: str
    dtype: str
    shape: list
    median_s: float
    best_s: float
    calls: int  # calls timed
    work: int  # flops or bytes per call
    unit: str  # "flop" or "byte"
    rate: float  # GFLOP/s or GB/s
    rate_unit: str
    percent_of_limit: float
    speedup: Optional[float]  # reference median / this median; None without a reference
    bare_percent: Optional[float] = None  # bare core time as percent of this time

    def as_dict(self):
        return dataclasses.asdict(self)


BARE = "bare-gemms"  # the `backend` of the record that times Benchmark.bare
# Libraries timed after every fastnn backend of the run, in a process of their own
# that never imports fastnn (`time_apart`): PyTorch's OpenMP threads, once
# started, slow the BLAS and OpenMP work that follows them in the same process
# (measured here: the dense GEMMs 15x slower after a PyTorch benchmark had run);
# and a PyTorch user's process has not imported fastnn.
RUN_LAST = ("torch",)

# The child of time_apart: loads timing.py, workloads.py and peers.py from this
# folder as a package of their own (not fastnn.benchmarks, whose __init__ imports
# fastnn), builds each job's arrays and peer callable and times it. argv[1]: JSON
# [{"setup", "make", "shape", "dtype", "min_time"}]; prints JSON [[median, best, calls]].
_APART = """
import importlib, json, sys, types
package = types.ModuleType("benchmarks_apart")
package.__path__ = [sys.argv[2]]
sys.modules["benchmarks_apart"] = package
timing, workloads, peers = (importlib.import_module("benchmarks_apart." + name)
                            for name in ("timing", "workloads", "peers"))
times = []
for job in json.loads(sys.argv[1]):
    fn = getattr(peers, job["make"])(getattr(workloads, job["setup"])(tuple(job["shape"]), job["dtype"]))
    times.append(timing.time_calls([fn], min_time=job["min_time"])[0])
assert not [m for m in sys.modules if m.split(".")[0] == "fastnn"]
print(json.dumps(times))
"""


def _module_name(module, fn):
    """The name under which `module` holds the function `fn`."""
    for name, value in vars(module).items():
        if value is fn:
            return name
    raise ValueError(f"{fn!r} is not a module-level name of {module.__name__}")


def child_env():
    """The environment a process that never imported fastnn would have: this
    one's, without the OMP_WAIT_POLICY that importing fastnn set under
    FASTNN_GLOBAL_OMP_PASSIVE=1 (it sets nothing otherwise)."""
    from ..backends import OMP_WAIT_POLICY_SET_HERE

    env = dict(os.environ)
    if OMP_WAIT_POLICY_SET_HERE:
        env.pop("OMP_WAIT_POLICY", None)
    return env


def run_apart(source, *args):
    """Runs the program `source` (python -c source *args) in a child process with
    child_env(), in a temporary folder (so that it cannot import this source
    tree), and returns the JSON value it printed on its last line of output.
    Raises RuntimeError with the end of its error output when it fails."""
    child = subprocess.run([sys.executable, "-c", source, *args], env=child_env(),
                           capture_output=True, text=True, check=False, cwd=tempfile.gettempdir())
    if child.returncode:
        raise RuntimeError(f"timing in a separate process failed: {child.stderr[-1000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def time_apart(jobs, min_time=0.3):
    """[(median, best, calls)] of each job (bench, shape, library), timed in one
    child process that never imports fastnn (run_apart)."""
    spec = [{"setup": _module_name(workloads, bench.setup),
             "make": _module_name(peers, bench.others[lib]),
             "shape": list(shape), "dtype": bench.dtype, "min_time": min_time}
            for bench, shape, lib in jobs]
    folder = os.path.dirname(os.path.abspath(__file__))
    return [tuple(t) for t in run_apart(_APART, json.dumps(spec), folder)]


def rescore(records, limits):
    """Recompute percent_of_limit of records (Record objects) against `limits`."""
    for r in records:
        r.percent_of_limit = 100 * r.rate / limit_for(limits, r.unit, r.dtype)
    return records


def scale_from_env():
    value = os.environ.get(SCALE_ENV)
    if not value:
        return 1.0
    try:
        scale = float(value)
    except ValueError:
        raise ValueError(f"{SCALE_ENV} must be a number in (0, 1], got {value!r}") from None
    if not 0 < scale <= 1:
        raise ValueError(f"{SCALE_ENV} must be a number in (0, 1], got {value!r}")
    return scale


def run_benchmark(bench, limits, backends=None, others=("torch",), scale=1.0, min_time=0.3,
                  with_bare=True):
    """Records of one benchmark on each backend (default: all available), then
    on each library of `others` the benchmark knows and that is installed, then
    its bare core, all timed in turns (time_calls). Speed-ups are over the
    reference when it is among the backends."""
    backends = fastnn.available_backends() if backends is None else list(backends)
    shape = bench.scaled_shape(scale)
    work = bench.work(bench.setup(shape, bench.dtype), shape)
    entries = []  # (name, fn); fresh inputs for each, as kernels update state
    for name in backends:
        backend = fastnn.get_backend(name)
        arrays = bench.setup(shape, bench.dtype)
        entries.append((name, lambda b=backend, a=arrays: bench.call(b, a)))
    for lib in others:
        make = bench.others.get(lib)
        if make is None:
            continue
        try:
            entries.append((lib, make(bench.setup(shape, bench.dtype))))
        except ImportError:
            continue
    if with_bare and bench.bare is not None:
        entries.append((BARE, bench.bare(bench.setup(shape, bench.dtype))))
    timings = list(zip([name for name, _ in entries],
                       time_calls([fn for _, fn in entries], min_time=min_time)))
    return records_of(bench, shape, work, limits, timings)


def records_of(bench, shape, work, limits, timings):
    """The Records of one benchmark from its timings [(runner, (median, best, calls))]."""
    bare_s = next((t[0] for name, t in timings if name == BARE), None)

    reference_s = next((t[0] for name, t in timings if name == REFERENCE), None)
    limit = limit_for(limits, bench.unit, bench.dtype)
    records = []
    for name, (seconds, best, calls) in timings:
        rate = work / seconds / 1e9
        records.append(Record(
            benchmark=bench.name, backend=name, dtype=bench.dtype, shape=list(shape),
            median_s=seconds, best_s=best, calls=calls, work=work, unit=bench.unit, rate=rate,
            rate_unit="GFLOP/s" if bench.unit == "flop" else "GB/s",
            percent_of_limit=100 * rate / limit,
            speedup=None if reference_s is None else reference_s / seconds,
            bare_percent=None if bare_s is None or name == BARE else 100 * bare_s / seconds,
        ))
    return records


def run(names=None, backends=None, others=("torch",), quick=False, scale=None, limits=None,
        progress=None):
    """Measure the limits (unless given; then again at the end, keeping the higher
    figures) and run the selected benchmarks; progress(bench, records) is called
    after each. Returns {"machine", "settings", "limits", "records"} (JSON-ready)."""
    scale = scale_from_env() if scale is None else scale
    min_time = 0.1 if quick else 0.3
    limit_time = scale * (0.3 if quick else 1.0)
    measure = limits is None
    if measure:
        limits = measure_limits(scale, 3 if quick else 5, limit_time)
    busy, own, wall = cpu_busy_seconds(), time.process_time(), time.perf_counter()
    benches = select(names, quick)
    early = [lib for lib in others if lib not in RUN_LAST]
    late = [lib for lib in others if lib in RUN_LAST]
    blocks = []
    for bench in benches:
        blocks.append(run_benchmark(bench, limits, backends, early, scale, min_time))
        if progress is not None:
            progress(bench, blocks[-1])
    jobs = [(bench, bench.scaled_shape(scale), lib) for bench in benches for lib in late
            if lib in bench.others and version(lib) is not None]
    apart = dict(zip([(bench.name, lib) for bench, _, lib in jobs],
                     time_apart(jobs, min_time) if jobs else []))
    for bench, block in zip(benches, blocks):
        shape = bench.scaled_shape(scale)
        timings = [(lib, apart[bench.name, lib]) for lib in late if (bench.name, lib) in apart]
        if not timings:
            continue
        extra = records_of(bench, shape, bench.work(bench.setup(shape, bench.dtype), shape), limits,
                           timings)
        if progress is not None:
            progress(bench, extra)
        reference = next((r for r in block if r.backend == REFERENCE), None)
        bare = next((r for r in block if r.backend == BARE), None)
        for r in extra:
            r.speedup = None if reference is None else reference.median_s / r.median_s
            r.bare_percent = None if bare is None else 100 * bare.median_s / r.median_s
        at = next((i for i, r in enumerate(block) if r.backend == BARE), len(block))
        block[at:at] = extra
    records = [r for block in blocks for r in block]
    if measure:
        limits = best_limits(limits, measure_limits(scale, 3 if quick else 5, limit_time))
        rescore(records, limits)
    info = machine()
    info["other_cpu_percent"] = other_cpu_percent(busy, own, wall)
    return {
        "machine": info,
        "settings": {"quick": quick, "scale": scale},
        "limits": limits,
        "records": [r.as_dict() for r in records],
    }
