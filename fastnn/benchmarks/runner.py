"""Running the benchmarks: `run_benchmark` times one benchmark on each backend
(median over repeats after a warm-up that also compiles Numba code, the
backends timed in turns so that they share the machine's moments of noise) and
on the other libraries it names (PyTorch when installed), and returns `Record`s
with the rate, the percent of the machine limit and the speed-up over the
reference; `run` measures the limits around a whole selection and adds the
machine record.
"""

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
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
# Libraries timed in a process of their own that never imports fastnn
# (PeerProcess), in turns with the backends: PyTorch's OpenMP threads, once
# started, slow the BLAS and OpenMP work that follows them in the same process
# (measured here: the dense GEMMs 15x slower after a PyTorch benchmark had run);
# and a PyTorch user's process has not imported fastnn.
TIMED_APART = ("torch",)
# The runners of a benchmark are timed in turns with a pause before each sample
# (time_calls' settle): after a threaded GEMM OpenBLAS's idle workers spin for
# 0.1 s (measured here: a process's CPU time runs on 0.1 s into a sleep after a
# 512^2 sgemm), PyTorch's OpenMP workers for milliseconds, and on 2 cores such a
# thread takes a core from whichever runner is timed next (dense_relu's c median
# 7.7 ms right after PyTorch's sample, 3.3 ms without PyTorch in the run). Each
# sample lasts at least SAMPLE_SECONDS, so that the pauses cost a few seconds a
# benchmark.
SETTLE_SECONDS = 0.12
SAMPLE_SECONDS = 0.02


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


class PeerError(RuntimeError):
    """The process timing the other libraries failed a request, or ended."""


class PeerProcess:
    """A child process (peer_child.py) that builds other libraries' calls of the
    benchmarks (peers.py) and times them on request, so that they are timed in
    turns with fastnn's backends (time_calls) in a process that never imports
    fastnn. Started on the first request, with child_env(), in a temporary
    folder (so that it cannot import this source tree). A request finding it
    ended raises PeerError; the next one starts a new child. Use it as a
    context manager: leaving ends the child, on errors and KeyboardInterrupt
    too."""

    def __init__(self):
        self._child = None
        self._keys = itertools.count()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _start(self):
        source = (Path(__file__).parent / "peer_child.py").read_text()
        self._errors = tempfile.TemporaryFile("w+")  # its stderr, read when it fails
        self._child = subprocess.Popen(
            [sys.executable, "-c", source, str(Path(__file__).parent)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._errors, text=True, env=child_env(),
            cwd=tempfile.gettempdir())

    def running(self):
        return self._child is not None and self._child.poll() is None

    def request(self, **request):
        """The child's answer (a dict) to one request (peer_child.py's protocol).
        Raises ImportError when the library is not installed there, PeerError
        when the request failed or the child ended."""
        if self._child is None:
            self._start()
        line = ""
        if self.running():
            try:
                self._child.stdin.write(json.dumps(request) + "\n")
                self._child.stdin.flush()
                line = self._child.stdout.readline()
            except OSError:  # a closed pipe: the child ended
                pass
        if not line:
            self._errors.seek(0)
            tail = self._errors.read()[-1000:]
            self.close()
            raise PeerError(f"the process timing other libraries ended during {request['op']}: {tail}")
        answer = json.loads(line)
        if "error" in answer:
            error = ImportError if answer["missing"] else PeerError
            raise error(f"{request['op']} {request.get('make', '')} in the process timing other "
                        f"libraries failed:\n{answer['error'][-1500:]}")
        return answer

    def status(self):
        """{"fastnn": whether the child has loaded any fastnn module, "pid"}."""
        return self.request(op="status")

    def peer(self, bench, shape, lib):
        """A RemoteCall: bench.others[lib] on bench.setup(shape, bench.dtype), built in the child."""
        key = next(self._keys)
        self.request(op="setup", key=key, setup=_module_name(workloads, bench.setup),
                     make=_module_name(peers, bench.others[lib]), shape=list(shape), dtype=bench.dtype)
        return RemoteCall(self, key)

    def close(self):
        """Ends the child: the end of its stdin, then a kill if it has not ended
        within 10 s (a call in progress)."""
        child, self._child = self._child, None
        if child is None:
            return
        try:
            child.stdin.close()
        except OSError:
            pass
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()
        self._errors.close()


class RemoteCall:
    """A call built in a PeerProcess; time_calls times it through `sample`."""

    def __init__(self, process, key):
        self.process, self.key = process, key

    def sample(self, inner):
        """Seconds of `inner` calls, timed in the child (time.perf_counter there)."""
        return self.process.request(op="sample", key=self.key, inner=inner)["seconds"]

    def __call__(self):
        self.sample(1)

    def drop(self):
        """Frees the call's arrays in the child, if it still runs."""
        if self.process.running():
            try:
                self.process.request(op="drop", key=self.key)
            except PeerError:  # it ended meanwhile: nothing left to free
                pass


def time_apart(jobs, min_time=0.3):
    """[(median, best, calls)] of each job (bench, shape, library), each timed
    alone in one child process that never imports fastnn (PeerProcess)."""
    with PeerProcess() as process:
        return [time_calls([process.peer(bench, shape, lib)], min_time=min_time)[0]
                for bench, shape, lib in jobs]


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
                  with_bare=True, process=None, errors=None, settle=0.0):
    """Records of one benchmark on each backend (default: all available), then
    on each library of `others` the benchmark knows and that is installed, then
    its bare core, all timed in turns (time_calls): the libraries of
    TIMED_APART in `process` (a PeerProcess; one of their own when None), the
    others here. Speed-ups are over the reference when it is among the
    backends. A library whose calls fail in that process is left out; the
    failure is appended to `errors` (a list) as {"benchmark", "library",
    "error"}, or raised when `errors` is None. `settle`: seconds paused before
    each sample (SETTLE_SECONDS), each sample then lasting SAMPLE_SECONDS."""
    if process is None and any(lib in TIMED_APART and lib in bench.others for lib in others):
        with PeerProcess() as process:
            return run_benchmark(bench, limits, backends, others, scale, min_time, with_bare, process,
                                 errors, settle)
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
            if lib not in TIMED_APART:
                entries.append((lib, make(bench.setup(shape, bench.dtype))))
            elif version(lib) is not None:
                entries.append((lib, process.peer(bench, shape, lib)))
        except ImportError:
            continue
        except PeerError as exc:
            _failed(errors, bench, lib, exc)
    if with_bare and bench.bare is not None:
        entries.append((BARE, bench.bare(bench.setup(shape, bench.dtype))))
    remote = {name: fn for name, fn in entries if isinstance(fn, RemoteCall)}
    pace = {"min_sample": SAMPLE_SECONDS, "settle": settle} if settle else {}
    try:
        times = time_calls([fn for _, fn in entries], min_time=min_time, **pace)
    except PeerError as exc:  # the other process failed while timing: the rest again without it
        _failed(errors, bench, ", ".join(remote), exc)
        entries = [(name, fn) for name, fn in entries if name not in remote]
        times = time_calls([fn for _, fn in entries], min_time=min_time, **pace)
    finally:
        for fn in remote.values():
            fn.drop()
    return records_of(bench, shape, work, limits, list(zip([name for name, _ in entries], times)))


def _failed(errors, bench, lib, exc):
    """Notes the failure of `lib`'s calls of `bench` in `errors`; raises it when errors is None."""
    if errors is None:
        raise exc
    errors.append({"benchmark": bench.name, "library": lib, "error": str(exc)})


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
    after each. Returns {"machine", "settings", "limits", "records", "errors"}
    (JSON-ready; errors: the libraries left out, run_benchmark)."""
    scale = scale_from_env() if scale is None else scale
    min_time = 0.1 if quick else 0.3
    limit_time = scale * (0.3 if quick else 1.0)
    measure = limits is None
    if measure:
        limits = measure_limits(scale, 3 if quick else 5, limit_time)
    busy, own, wall = cpu_busy_seconds(), time.process_time(), time.perf_counter()
    blocks, errors = [], []
    with PeerProcess() as process:
        for bench in select(names, quick):
            blocks.append(run_benchmark(bench, limits, backends, others, scale, min_time,
                                        process=process, errors=errors,
                                        settle=0.0 if quick else SETTLE_SECONDS))
            if progress is not None:
                progress(bench, blocks[-1])
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
        "errors": errors,  # [{"benchmark", "library", "error"}] of libraries left out
    }
