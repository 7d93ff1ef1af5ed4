"""python -m fastnn, run in subprocesses as a user would, on tiny sizes."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import fastnn
from fastnn import benchmarks
from fastnn.backends import KERNELS

TINY = {benchmarks.SCALE_ENV: "0.001"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fastnn_cli(*args, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "fastnn", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


def test_info():
    run = fastnn_cli("info")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"fastnn {fastnn.__version__}"
    available = fastnn.available_backends()
    backends_line = next(line for line in lines if line.startswith("backends: "))
    assert backends_line.startswith(f"backends: {', '.join(available)} (default: ")
    threads = next(line for line in lines if line.startswith("threads: "))
    assert "BLAS" in threads
    if "numba" in available:
        assert "numba" in threads
    if "c" in available:
        assert "C kernels (OpenMP)" in threads
    for name in fastnn.unavailable_backends():
        assert any(line.strip().startswith(f"{name} unavailable: ") for line in lines)
    # the owner table: one row per kernel, one column per available backend
    start = lines.index("kernel owners (which backend's code runs each kernel):")
    assert lines[start + 1].split() == ["kernel", *available]
    rows = [line.split() for line in lines[start + 2:start + 2 + len(KERNELS)]]
    owners = {name: fastnn.kernel_owners(name) for name in available}
    assert rows == [[k, *(owners[name][k] for name in available)] for k in KERNELS]


def test_bench_quick_json(tmp_path):
    out = tmp_path / "bench.json"
    run = fastnn_cli("bench", "--quick", "--json", str(out), env=TINY)
    assert run.returncode == 0, run.stderr
    assert "machine limits: GEMM" in run.stdout and "percent of machine limit" in run.stdout
    result = json.loads(out.read_text())
    assert set(result) == {"machine", "settings", "limits", "records"}
    assert result["settings"] == {"quick": True, "scale": 0.001}
    limits = result["limits"]
    assert limits["stream_gbs"] > 0 and all(v > 0 for v in limits["gemm_gflops"].values())
    assert result["machine"]["backends"] == fastnn.available_backends()
    assert "numpy" in result["machine"]["versions"]
    assert result["machine"]["other_cpu_percent"] is None or result["machine"]["other_cpu_percent"] >= 0
    quick = [b.name for b in benchmarks.select(quick=True)]
    got = {(r["benchmark"], r["backend"]) for r in result["records"]}
    assert {(name, b) for name in quick for b in fastnn.available_backends()} <= got
    assert {r["benchmark"] for r in result["records"]} == set(quick)
    if benchmarks.version("torch") is not None:
        assert {(name, "torch") for name in quick} <= got
    fields = set(benchmarks.Record.__dataclass_fields__)
    for r in result["records"]:
        assert set(r) == fields
        assert r["median_s"] > 0 and r["rate"] > 0 and r["percent_of_limit"] > 0
        if r["backend"] == "numpy":
            assert r["speedup"] == 1.0
        assert f"\n{r['benchmark']} " in run.stdout  # a table block per benchmark


def test_bench_backend_restricts_and_list():
    run = fastnn_cli("bench", "--backend", "numpy", "--only", "adam_small,softmax_ce_small",
                     env=TINY)
    assert run.returncode == 0, run.stderr
    rows = [line.split()[0] for line in run.stdout.splitlines() if line.startswith("  ")]
    assert set(rows) - {"backend", "benchmark", "adam_small", "softmax_ce_small"} == {"numpy"}
    listing = fastnn_cli("bench", "--list")
    assert listing.returncode == 0
    assert [line.split()[0] for line in listing.stdout.splitlines()] == [
        b.name for b in benchmarks.BENCHMARKS]


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_bench_plot_writes_a_png(tmp_path):
    out = tmp_path / "bench.png"
    run = fastnn_cli("bench", "--quick", "--only", "adam_small,softmax_ce_small", "--backend",
                     "numpy", "--plot", str(out), env=TINY)
    assert run.returncode == 0, run.stderr
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000


@pytest.mark.parametrize("args", [
    ["bogus"],
    ["--bogus"],
    ["info", "--bogus"],
    ["bench", "--backend", "nope"],
    ["bench", "--only", "nope"],
    ["bench", "--scale", "2"],
    ["bench", "--scale", "x"],
    ["bench", "--json", "/nonexistent-folder/out.json"],
    ["bench", "--plot", "/nonexistent-folder/out.png"],
], ids=" ".join)
def test_bad_arguments_fail_with_one_line(args):
    run = fastnn_cli(*args)
    assert run.returncode == 2
    assert run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stderr.startswith("fastnn: error: ")
    assert "Traceback" not in run.stderr


def test_bad_scale_in_environment_fails_with_one_line():
    run = fastnn_cli("bench", env={benchmarks.SCALE_ENV: "big"})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"fastnn: error: {benchmarks.SCALE_ENV} must be a number in (0, 1], got 'big'"]


@pytest.mark.parametrize("args", [[], ["info"], ["bench"]], ids=lambda a: " ".join(a) or "main")
def test_help(args):
    run = fastnn_cli(*args, "--help")
    assert run.returncode == 0
    assert run.stdout.startswith("usage: python -m fastnn")
    if args == ["bench"]:
        for option in ("--quick", "--json", "--plot", "--backend", "--only"):
            assert option in run.stdout


def test_no_command_trains_on_every_backend():
    run = fastnn_cli()
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"fastnn {fastnn.__version__}\n")
    rows = {line.split()[0]: line.split()[1:-2] for line in run.stdout.splitlines()
            if line.startswith("  ") and line.rstrip().endswith(" s)")}
    assert set(rows) == set(fastnn.available_backends())
    for epochs in rows.values():
        losses = [float(e.split("/")[0]) for e in epochs]
        accuracy = float(epochs[-1].split("/")[1])
        assert len(losses) == 5 and losses[-1] < losses[0] / 3
        assert accuracy > 0.85
