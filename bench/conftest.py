"""Shared fixtures of the benchmark suite: the machine limits, measured once per
session, and the table of results printed at the end of the run."""

import pytest

from fastnn import benchmarks

SCALE = benchmarks.scale_from_env()  # FASTNN_BENCH_SCALE shrinks every size
_limits = {}
_results = []  # benchmarks.Record-like dicts, one per test that ran


@pytest.fixture(scope="session")
def limits():
    """This machine's GEMM GFLOP/s and streaming GB/s, measured in this run."""
    if not _limits:
        _limits.update(benchmarks.measure_limits(SCALE, min_time=SCALE))
    return _limits


@pytest.fixture(scope="session")
def scale():
    return SCALE


@pytest.fixture(scope="session")
def results():
    return _results


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    write = terminalreporter.write_line
    write("")
    g = _limits["gemm_gflops"]
    write(f"machine limits: GEMM {g['float32']:.1f} GFLOP/s float32, {g['float64']:.1f} GFLOP/s float64; "
          f"stream {_limits['stream_gbs']:.1f} GB/s (copy {_limits['copy_gbs']:.1f}, in-place add "
          f"{_limits['update_gbs']:.1f}), read {_limits['read_gbs']:.1f} GB/s")
    reference = {r["benchmark"]: r["median_s"] for r in _results if r["backend"] == benchmarks.REFERENCE}
    write(f"{'benchmark':<18}{'backend':<12}{'median':>12}{'rate':>20}{'% limit':>9}{'speed-up':>10}")
    for r in _results:
        ref = reference.get(r["benchmark"])
        speedup = f"{ref / r['median_s']:.2f}x" if ref else "-"
        write(f"{r['benchmark']:<18}{r['backend']:<12}{r['median_s'] * 1e3:>9.3f} ms"
              f"{r['rate']:>12.2f} {r['rate_unit']:<7}{r['percent_of_limit']:>8.1f}%{speedup:>10}")
