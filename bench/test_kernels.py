"""The kernel benchmarks of fastnn.benchmarks under pytest-benchmark:
one test per benchmark x runner (each available backend, PyTorch when installed,
and the bare GEMMs where a benchmark defines them). PyTorch is timed in a child
process that never imports fastnn (benchmarks.time_apart): its figures are in
extra_info and the session's summary, not in pytest-benchmark's own table.

    pytest bench/ --benchmark-only

Each test records in benchmark.extra_info the work per call, the rate (GFLOP/s
or GB/s) and the percent of the limit measured in the same session."""

import importlib.util

import pytest

import fastnn
from fastnn import benchmarks

OTHERS = [lib for lib in ("torch",) if importlib.util.find_spec(lib) is not None]


def runners(bench):
    names = fastnn.available_backends() + [lib for lib in OTHERS if lib in bench.others]
    return names + ([benchmarks.BARE] if bench.bare is not None else [])


CASES = [(bench, name) for bench in benchmarks.BENCHMARKS for name in runners(bench)]


def make_call(bench, runner, arrays):
    """Zero-argument callable doing one call of `bench` on `runner`."""
    if runner == benchmarks.BARE:
        return bench.bare(arrays)
    if runner in bench.others:
        return bench.others[runner](arrays)
    backend = fastnn.get_backend(runner)
    return lambda: bench.call(backend, arrays)


@pytest.mark.parametrize(("bench", "runner"), CASES, ids=[f"{b.name}-{r}" for b, r in CASES])
def test_kernel(benchmark, limits, results, scale, bench, runner):
    shape = bench.scaled_shape(scale)
    arrays = bench.setup(shape, bench.dtype)
    benchmark.group = f"{bench.name} {'x'.join(map(str, shape))} {bench.dtype}"
    if runner in benchmarks.TIMED_APART:
        # timed in a process that never imported fastnn (README: PyTorch in a process
        # of its own); the figures go to extra_info and the summary, not to the fixture
        median, best, calls = benchmarks.time_apart([(bench, shape, runner)])[0]
        benchmark.extra_info.update({"median_s": median, "best_s": best, "calls": calls,
                                     "timed": "in a separate process"})
    else:
        fn = make_call(bench, runner, arrays)
        fn()  # warm-up; compiles Numba code outside the timing
        benchmark(fn)
        if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
            return
        median = benchmark.stats.stats.median
    work = bench.work(arrays, shape)
    rate = work / median / 1e9
    percent = 100 * rate / benchmarks.limit_for(limits, bench.unit, bench.dtype)
    rate_unit = "GFLOP/s" if bench.unit == "flop" else "GB/s"
    benchmark.extra_info.update({
        "work": work, "unit": bench.unit, "counts": bench.counts(), "rate": rate,
        "rate_unit": rate_unit, "percent_of_limit": percent, "limits": dict(limits),
    })
    if bench.per_sample:
        benchmark.extra_info["per_sample_s"] = median / shape[0]
    results.append({"benchmark": bench.name, "backend": runner, "median_s": median, "rate": rate,
                    "rate_unit": rate_unit, "percent_of_limit": percent})
