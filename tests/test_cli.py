"""python -m fastnn, run in subprocesses as a user would, on tiny sizes."""

import importlib.util
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import benchmarks, demo
from fastnn.backends import KERNELS

TINY = {benchmarks.SCALE_ENV: "0.001"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# Subprocesses start in tests/, not at the top of the source tree: there,
# `python -m fastnn` would import the source folder (which has no compiled C
# extension unless built in place) instead of the installed package.
HERE = os.path.dirname(os.path.abspath(__file__))


def fastnn_cli(*args, env=None):
    # the fastnn this process imported (its extension built in place, or installed)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.__file__)))
    full_env = {**os.environ, "PYTHONPATH": package_root, **(env or {})}
    return subprocess.run([sys.executable, "-m", "fastnn", *args], capture_output=True, text=True,
                          env=full_env, timeout=300, cwd=HERE)


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
        assert "C kernels" in threads
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
    assert set(result) == {"machine", "settings", "limits", "records", "errors"}
    assert result["errors"] == []
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


def test_bench_recurrent_json(tmp_path):
    out = tmp_path / "recurrent.json"
    run = fastnn_cli("bench", "--recurrent", "--quick", "--backend", "numpy", "--json", str(out),
                     env=TINY)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert set(result) == {"machine", "sizes", "per_sequence", "ratios"}
    assert result["machine"]["backends"] == fastnn.available_backends()
    assert result["sizes"]["steps"] == 2  # 50 steps scaled by 0.001, at least 2
    assert set(result["per_sequence"]) == set(result["ratios"]) == {"rnn", "lstm"}
    for kind, per in result["per_sequence"].items():
        assert "numpy" in per and "torch" not in per
        for name, r in per.items():
            assert 0 < r["best_s"] <= r["median_s"]
            vs_bare = result["ratios"][kind][name]["this_over_gemms"]
            assert result["ratios"][kind][name]["torch_over_this"] is None
            assert len(r["rounds_s"]) == 3  # --quick: three rounds
            rounds_vs_bare = result["ratios"][kind][name]["rounds_this_over_gemms"]
            if "bare-gemms" in per:  # the C kernels' GEMMs alone
                assert vs_bare == pytest.approx(r["median_s"] / per["bare-gemms"]["median_s"])
                assert rounds_vs_bare == pytest.approx(statistics.median(
                    a / b for a, b in zip(r["rounds_s"], per["bare-gemms"]["rounds_s"])))
            # the printed table rounds the same figures
            assert f"  {name} " in run.stdout


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
    ["bench", "--recurrent", "--plot", "recurrent.png"],
    ["demo", "--samples", "5"],
    ["--samples", "x"],
    ["demo", "--hidden", "8,0"],
    ["demo", "--epochs", "0"],
    ["demo", "--backend", "nope"],
    ["demo", "--dtype", "float16"],
    ["demo", "--data", "/nonexistent-folder/data.npz"],
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


@pytest.mark.parametrize("args", [[], ["info"], ["bench"], ["demo"]], ids=lambda a: " ".join(a) or "main")
def test_help(args):
    run = fastnn_cli(*args, "--help")
    assert run.returncode == 0
    assert run.stdout.startswith("usage: python -m fastnn")
    if args == ["bench"]:
        for option in ("--quick", "--json", "--plot", "--backend", "--only"):
            assert option in run.stdout
    if args == ["demo"]:
        for option in ("--samples", "--hidden", "--epochs", "--batch-size", "--dtype", "--backend",
                       "--no-sklearn", "--data"):
            assert option in run.stdout
    if args == []:
        assert "Without a command: demo" in run.stdout


# ------------------------------------------------------------------------- demo
TINY_DEMO = ["--samples", "200", "--epochs", "3", "--hidden", "8", "--repeats", "1"]


def demo_table(stdout):
    """{backend: cells} of the demo's table (the rows under the header line)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["backend", "fit"])
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        name, *cells = line.split()
        rows[name] = cells
    return rows


def cells_of(cells):
    """fit time, warm-up, vs sklearn, vs numpy, accuracy, epochs, weight difference
    (times carry a unit: 'ms' or 's')."""
    fit, fit_unit, warm, warm_unit, vs_sklearn, vs_numpy, accuracy, epochs, difference = cells
    return {"fit": float(fit) * (1e-3 if fit_unit == "ms" else 1), "vs_sklearn": vs_sklearn,
            "vs_numpy": float(vs_numpy.rstrip("x")), "accuracy": float(accuracy), "epochs": epochs,
            "difference": difference}


def test_demo_is_the_default_and_fits_every_backend_alike():
    run = fastnn_cli(*TINY_DEMO)  # options alone: the default command
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"fastnn {fastnn.__version__} demo: ")
    assert "stratified split (seed 0): 150 training rows, 50 test rows" in run.stdout
    assert "hidden_layer_sizes=(8,)" in run.stdout and "max_iter=3" in run.stdout
    fast = [b for b in fastnn.available_backends() if b != "numpy"]
    rows = {name: cells_of(cells) for name, cells in demo_table(run.stdout).items()}
    assert list(rows) == ["numpy", *fast, "sklearn"]
    assert rows["numpy"]["difference"] == "(reference)" and rows["numpy"]["vs_numpy"] == 1.0
    assert rows["sklearn"]["vs_sklearn"] == "1.00x"
    for name, row in rows.items():
        assert row["fit"] > 0 and row["vs_numpy"] > 0 and 0 <= row["accuracy"] <= 1
        assert row["epochs"] == "3*"  # 3 epochs cannot converge: marked, and said below the table
        if name != "numpy":
            # same parameters and random_state, float64: the same weights up to rounding
            assert float(row["difference"]) < 1e-9, (name, row)
    assert len({row["accuracy"] for row in rows.values()}) == 1
    assert "* did not converge within max_iter=3 epochs: " + ", ".join(rows) in run.stdout
    assert "Traceback" not in run.stderr and "ConvergenceWarning" not in run.stderr


def test_demo_float32_grown_data_and_restricted_backends():
    fast = [b for b in fastnn.available_backends() if b != "numpy"][:1]
    run = fastnn_cli("demo", "--samples", "2500", "--epochs", "2", "--hidden", "8,4", "--repeats", "1",
                     "--dtype", "float32", "--batch-size", "500", "--no-sklearn",
                     *(["--backend", fast[0]] if fast else []))
    assert run.returncode == 0, run.stderr
    assert "1875 training rows, 625 test rows" in run.stdout
    assert "--samples 2500: each part tiled" in run.stdout
    assert "hidden_layer_sizes=(8, 4)" in run.stdout and "batch_size=500" in run.stdout
    assert "float32" in run.stdout
    rows = {name: cells_of(cells) for name, cells in demo_table(run.stdout).items()}
    assert list(rows) == ["numpy", *fast]
    for name in fast:
        assert rows[name]["vs_sklearn"] == "-"
        assert float(rows[name]["difference"]) < 1e-5  # float32 rounding


def test_demo_trains_on_a_user_npz(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = np.array(["a", "b", "c"])[np.argmax(X[:, :3], axis=1)]
    path = tmp_path / "mine.npz"
    np.savez(path, X=X, y=y)
    run = fastnn_cli("demo", "--data", str(path), "--epochs", "3", "--hidden", "8", "--repeats", "1")
    assert run.returncode == 0, run.stderr
    assert f"data:    {path} (120 rows), 4 features, 3 classes" in run.stdout
    assert "90 training rows, 30 test rows" in run.stdout
    rows = demo_table(run.stdout)
    assert list(rows) == ["numpy", *(b for b in fastnn.available_backends() if b != "numpy"), "sklearn"]


BAD_DATA = {
    # file name: (content, what the message says)
    "missing": (None, "no such file"),
    "text.npz": ("not an npz", "not a zip file"),
    "single.npy": (np.zeros((5, 2)), "single .npy array"),
    "no_y.npz": ({"X": np.zeros((10, 2))}, "lacks array y"),
    "no_arrays.npz": ({"Z": np.zeros(3)}, "lacks array X and y"),
    "X_1d.npz": ({"X": np.zeros(10), "y": np.arange(10) % 2}, "X must be 2-D"),
    "y_short.npz": ({"X": np.zeros((10, 2)), "y": np.arange(9) % 2}, "y must be 1-D with one label per row"),
    "y_float.npz": ({"X": np.zeros((10, 2)), "y": np.linspace(0, 1, 10)}, "non-integer"),
    "X_nan.npz": ({"X": np.full((10, 2), np.nan), "y": np.arange(10) % 2}, "NaN"),
    "one_class.npz": ({"X": np.zeros((10, 2)), "y": np.zeros(10)}, "at least 2 classes"),
    "X_objects.npz": ({"X": np.array([[1, "a"]] * 10, dtype=object), "y": np.arange(10) % 2},
                      "cannot read the arrays"),
}


@pytest.mark.parametrize("name", BAD_DATA)
def test_demo_bad_data_fails_with_one_line(tmp_path, name):
    path = tmp_path / name
    content, message = BAD_DATA[name]
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    elif content is not None:
        np.savez(path, **content)
    run = fastnn_cli("demo", "--data", str(path))
    assert run.returncode == 2
    assert run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stderr.startswith("fastnn: error: --data: ") and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_resize_tiles_with_noise_and_subsets():
    X = np.arange(20.0).reshape(10, 2)
    y = np.arange(10)
    rng = np.random.default_rng(0)
    big_X, big_y = demo.resize(X, y, 25, rng)
    assert big_X.shape == (25, 2) and list(big_y) == [*range(10), *range(10), *range(5)]
    assert np.array_equal(big_X[:10], X)
    noise = big_X[10:] - np.vstack([X, X[:5]])
    assert np.all(noise != 0) and np.all(np.abs(noise) < 10 * demo.NOISE * X.std(axis=0))
    small_X, small_y = demo.resize(X, y, 4, rng)
    assert small_X.shape == (4, 2) and np.array_equal(small_X[:, 0], 2.0 * small_y)
    assert len(set(small_y)) == 4


# ------------------------------------------------------------------ demo --model cnn
def test_demo_cnn_trains_every_backend_alike():
    """float64: the same parameters on every backend up to rounding; PyTorch, when
    installed, in its own row (its own initialisation: no weight difference)."""
    run = fastnn_cli("demo", "--model", "cnn", "--epochs", "1", "--repeats", "1", "--dtype", "float64")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"fastnn {fastnn.__version__} demo: one CNN trained on ")
    assert "1347 training and 450 test images" in run.stdout and "float64" in run.stdout
    rows = demo_table(run.stdout)
    fast = [b for b in fastnn.available_backends() if b != "numpy"]
    torch_row = ["torch"] if importlib.util.find_spec("torch") else []
    assert list(rows) == ["numpy", *fast, *torch_row]
    for name, cells in rows.items():
        fit, unit, warm, warm_unit, vs_numpy, accuracy, difference = cells
        assert float(fit) > 0 and 0.5 < float(accuracy) <= 1, (name, cells)  # one epoch learns
        if name in fast:
            assert float(difference) < 1e-9, (name, cells)
    if torch_row:
        assert rows["torch"][-1] == "-"
    assert "Traceback" not in run.stderr


def test_demo_cnn_refuses_the_mlp_options():
    run = fastnn_cli("demo", "--model", "cnn", "--hidden", "8", "--no-torch")
    assert run.returncode == 2 and "--model cnn trains on the digits images" in run.stderr
