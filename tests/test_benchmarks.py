"""fastnn.benchmarks on tiny sizes: the limits, the work counts, the records.
No timing is judged here; only that the measurements are well-formed."""

import dataclasses
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import benchmarks
from fastnn.benchmarks import BENCHMARKS, get_benchmark

TINY = 1e-3
FAKE_LIMITS = {"gemm_gflops": {"float32": 100.0, "float64": 50.0}, "stream_gbs": 20.0}


def arrays_of(name, shape=None):
    bench = get_benchmark(name)
    shape = shape or bench.scaled_shape(TINY)
    return bench, shape, bench.setup(shape, bench.dtype)


def test_limits_are_positive_numbers():
    limits = benchmarks.measure_limits(scale=TINY, repeats=1)
    for value in (*limits["gemm_gflops"].values(), limits["copy_gbs"], limits["update_gbs"],
                  limits["read_gbs"]):
        assert isinstance(value, float) and math.isfinite(value) and value > 0
    assert limits["stream_gbs"] == max(limits["copy_gbs"], limits["update_gbs"])
    assert set(limits["gemm_gflops"]) == {"float32", "float64"}
    assert limits["gemm_n"] >= 64 and limits["stream_bytes"] >= benchmarks.MB


def test_names_are_unique_and_quick_set_holds_the_main_kernels():
    names = [b.name for b in BENCHMARKS]
    assert len(names) == len(set(names))
    quick = {b.name for b in benchmarks.select(quick=True)}
    assert {"softmax_ce", "batchnorm_train", "adam", "dense_relu", "softmax_ce_small",
            "adam_small"} <= quick
    assert [b.name for b in benchmarks.select(["adam", "gelu"])] == ["adam", "gelu"]
    with pytest.raises(ValueError, match="unknown benchmark"):
        get_benchmark("nope")


def test_required_sizes():
    shapes = {b.name: (b.shape, b.dtype) for b in BENCHMARKS}
    assert shapes["softmax_ce"] == ((8192, 1000), "float32")
    assert shapes["batchnorm_train"] == ((4096, 1024), "float32")
    assert shapes["adam"] == ((10_000_000,), "float32")
    assert shapes["dense_relu"] == ((256, 784, 512), "float32")
    assert shapes["softmax_ce_small"] == ((64, 10), "float32")
    assert shapes["adam_small"] == ((1000,), "float32")


def test_byte_counts_are_the_stated_ones():
    bench, (n, c), a = arrays_of("softmax_ce", (37, 11))
    assert bench.work(a, (n, c)) == 2 * n * c * 4 + 8 * n  # logits, grad float32; labels int64
    bench, (n, c), a = arrays_of("batchnorm_train", (37, 11))
    assert bench.work(a, (n, c)) == 5 * n * c * 4  # x, y, dy, x, dx
    bench, (n,), a = arrays_of("adam", (1000,))
    assert bench.work(a, (n,)) == 28 * n  # 28 bytes per float32 parameter
    bench, (n,), a = arrays_of("sgd_momentum", (1000,))
    assert bench.work(a, (n,)) == 20 * n
    for name in ("gelu", "tanh", "dropout"):
        bench, (n,), a = arrays_of(name, (1000,))
        assert bench.work(a, (n,)) == 8 * n
    bench, shape, a = arrays_of("dense_relu", (3, 5, 7))
    assert bench.work(a, shape) == 6 * 3 * 5 * 7


@pytest.mark.parametrize("bench", BENCHMARKS, ids=lambda b: b.name)
def test_setup_matches_the_definition(bench):
    shape = bench.scaled_shape(TINY)
    arrays = bench.setup(shape, bench.dtype)
    for name in bench.reads + bench.writes:
        assert name in arrays, name
    for name, arr in arrays.items():
        assert arr.flags.c_contiguous, name
        if arr.dtype.kind == "f":
            assert arr.dtype == np.dtype(bench.dtype), name
    # the same seed every time: every backend gets the same inputs
    again = bench.setup(shape, bench.dtype)
    for name in bench.reads:
        np.testing.assert_array_equal(arrays[name], again[name])
    assert bench.unit in ("byte", "flop")
    assert bench.kernels and all(k in fastnn.backends.KERNELS for k in bench.kernels)


@pytest.mark.parametrize("bench", BENCHMARKS, ids=lambda b: b.name)
def test_call_does_the_counted_work(bench):
    """One call writes every output it is charged for (poisoned beforehand)."""
    shape = bench.scaled_shape(TINY)
    arrays = bench.setup(shape, bench.dtype)
    before = {name: arrays[name].copy() for name in bench.writes}
    for name in bench.writes:
        if name not in bench.reads:
            arrays[name].fill(np.nan)
    bench.call(fastnn.get_backend("numpy"), arrays)
    for name in bench.writes:
        assert np.isfinite(arrays[name]).all(), name
        if name in bench.reads:  # updated in place
            assert not np.array_equal(arrays[name], before[name]), name


def test_scaled_shape():
    bench = get_benchmark("batchnorm_train")
    assert bench.scaled_shape(1.0) == (4096, 1024)
    assert bench.scaled_shape(0.5) == (2048, 1024)
    assert bench.scaled_shape(1e-9) == (2, 1024)  # batch norm needs 2 samples


def test_scale_from_env(monkeypatch):
    monkeypatch.delenv(benchmarks.SCALE_ENV, raising=False)
    assert benchmarks.scale_from_env() == 1.0
    monkeypatch.setenv(benchmarks.SCALE_ENV, "0.25")
    assert benchmarks.scale_from_env() == 0.25
    for bad in ("0", "2", "x"):
        monkeypatch.setenv(benchmarks.SCALE_ENV, bad)
        with pytest.raises(ValueError, match=benchmarks.SCALE_ENV):
            benchmarks.scale_from_env()


def test_time_call():
    calls = []
    median, best, timed = benchmarks.time_call(lambda: calls.append(1), min_time=0.001)
    assert 0 < best <= median
    assert timed >= 5 and len(calls) == timed + 5  # 2 warm-up, 3 calibration


def test_time_calls_takes_turns():
    order = []

    def call(name, seconds):
        def fn():
            order.append(name)
            time.sleep(seconds)

        return fn

    timed = benchmarks.time_calls([call("a", 0.003), call("b", 0.003)], min_time=0.001)
    assert [calls for _, _, calls in timed] == [5, 5]
    # 2 warm-up and 3 calibration calls each, then one sample of each per round
    assert order == ["a"] * 5 + ["b"] * 5 + ["a", "b"] * 5
    order.clear()
    slow, fast = benchmarks.time_calls([call("a", 0.006), call("b", 0.001)], min_time=0.03,
                                       min_repeats=1, min_sample=1e-4)
    samples = order[10:]
    assert samples.count("a") == slow[2] < samples.count("b") == fast[2]
    # a's fewer samples spread over all of b's rounds: none in the first, one in the last
    assert samples[0] == "b" and samples[-2:] == ["a", "b"]


def test_time_calls_settles_before_each_sample(monkeypatch):
    # the pause comes before every sample of the rounds (threads left spinning
    # by the sample before have stopped), not before warm-up or calibration
    from fastnn.benchmarks import timing

    events = []
    real_sleep = time.sleep
    monkeypatch.setattr(timing.time, "sleep", lambda s: events.append(("pause", s)))

    def call(name):
        def fn():
            events.append(name)
            real_sleep(0.003)
        return fn

    timed = timing.time_calls([call("a"), call("b")], min_time=0.001, settle=0.25)
    assert [calls for _, _, calls in timed] == [5, 5]
    assert events == ["a"] * 5 + ["b"] * 5 + [("pause", 0.25), "a", ("pause", 0.25), "b"] * 5
    events.clear()
    timing.time_calls([call("a")], min_time=0.001)
    assert "pause" not in str(events)


RECORD_FIELDS = {f.name for f in dataclasses.fields(benchmarks.Record)}


def check_record(r, bench, limits):
    assert set(r) == RECORD_FIELDS
    assert r["benchmark"] == bench.name and r["dtype"] == bench.dtype
    assert r["shape"] == list(bench.scaled_shape(TINY))
    assert 0 < r["best_s"] <= r["median_s"] and r["calls"] >= 5
    assert r["unit"] == bench.unit and r["rate_unit"] == ("GFLOP/s" if bench.unit == "flop" else "GB/s")
    assert math.isclose(r["rate"], r["work"] / r["median_s"] / 1e9)
    limit = benchmarks.limit_for(limits, bench.unit, bench.dtype)
    assert math.isclose(r["percent_of_limit"], 100 * r["rate"] / limit)


def test_records_of_every_benchmark_on_every_backend():
    # PyTorch only on the small ones: its calls are slow to time on a busy machine,
    # and the CLI test covers it on the quick set
    with_torch = benchmarks.version("torch") is not None
    for bench in BENCHMARKS:
        others = ("torch",) if bench.name.endswith("_small") else ()
        recs = benchmarks.run_benchmark(bench, FAKE_LIMITS, others=others, scale=TINY, min_time=0.002)
        by_backend = {r.backend: r.as_dict() for r in recs}
        assert set(fastnn.available_backends()) <= set(by_backend)
        assert ("torch" in by_backend) == (with_torch and bool(others))
        assert (benchmarks.BARE in by_backend) == (bench.bare is not None)
        reference = by_backend["numpy"]["median_s"]
        for name, r in by_backend.items():
            check_record(r, bench, FAKE_LIMITS)
            assert math.isclose(r["speedup"], reference / r["median_s"])
            if bench.bare is not None and name != benchmarks.BARE:
                assert math.isclose(r["bare_percent"],
                                    100 * by_backend[benchmarks.BARE]["median_s"] / r["median_s"])
            else:
                assert r["bare_percent"] is None


def test_run_without_reference_has_no_speedup():
    recs = benchmarks.run_benchmark(get_benchmark("adam_small"), FAKE_LIMITS,
                                    backends=[fastnn.available_backends()[0]], others=(),
                                    scale=TINY, min_time=0.002)
    assert len(recs) == 1
    if recs[0].backend != "numpy":
        assert recs[0].speedup is None


def test_run_returns_machine_and_limits(monkeypatch):
    monkeypatch.setenv(benchmarks.SCALE_ENV, str(TINY))
    result = benchmarks.run(names=["adam_small"], backends=["numpy"], others=(), limits=FAKE_LIMITS)
    assert set(result) == {"machine", "settings", "limits", "records", "errors"}
    assert result["errors"] == []
    assert result["settings"]["scale"] == TINY
    assert [r["backend"] for r in result["records"]] == ["numpy"]
    m = result["machine"]
    assert isinstance(m["cpu"], str) and m["cpu"]
    assert m["cores"] >= 1 and 1 <= m["usable_cores"] <= m["cores"]
    assert m["versions"]["numpy"] == np.__version__
    assert m["versions"]["fastnn"] == fastnn.__version__
    assert m["backends"] == fastnn.available_backends()
    assert all("internal_api" in pool for pool in m["blas"])


# The comparisons with PyTorch must do the same work as the kernels.
def torch_results(name, arrays):
    torch = pytest.importorskip("torch")
    out = get_benchmark(name).others["torch"](arrays)()
    return [t.detach().numpy() if isinstance(t, torch.Tensor) else t for t in (out or ())]


def test_torch_softmax_ce_matches_the_reference():
    bench, shape, a = arrays_of("softmax_ce", (16, 7))
    (grad,) = torch_results("softmax_ce", bench.setup(shape, bench.dtype))
    bench.call(fastnn.get_backend("numpy"), a)
    np.testing.assert_allclose(grad, a["grad"], rtol=1e-4, atol=1e-7)


def test_torch_batchnorm_matches_the_reference():
    bench, shape, a = arrays_of("batchnorm_train", (16, 7))
    t = bench.setup(shape, bench.dtype)
    t["gamma"][:] = 1  # torch's BatchNorm1d starts at gamma 1, beta 0
    a["gamma"][:] = 1
    dx, dgamma, dbeta = torch_results("batchnorm_train", t)
    bench.call(fastnn.get_backend("numpy"), a)
    for got, want in ((dx, a["dx"]), (dgamma, a["dgamma"]), (dbeta, a["dbeta"])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_torch_dense_matches_the_reference():
    bench, shape, a = arrays_of("dense_relu", (6, 5, 4))
    dx, dW_t, db = torch_results("dense_relu", bench.setup(shape, bench.dtype))
    bench.call(fastnn.get_backend("numpy"), a)
    for got, want in ((dx, a["dx"]), (dW_t.T, a["dW"]), (db, a["db"])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_torch_optimizer_step_matches_the_reference(name):
    bench, shape, a = arrays_of(name, (50,))
    t = bench.setup(shape, bench.dtype)
    torch_results(name, t)  # one step, in place on t["param"]
    bench.call(fastnn.get_backend("numpy"), a)
    np.testing.assert_allclose(t["param"], a["param"], rtol=1e-5, atol=1e-6)


def test_best_limits_and_rescore():
    low = {"gemm_gflops": {"float32": 50.0, "float64": 60.0}, "copy_gbs": 30.0, "update_gbs": 20.0,
           "stream_gbs": 30.0, "read_gbs": 9.0, "gemm_n": 64, "stream_bytes": benchmarks.MB}
    high = {**low, "gemm_gflops": {"float32": 100.0, "float64": 40.0}, "copy_gbs": 10.0,
            "update_gbs": 25.0, "stream_gbs": 25.0, "read_gbs": 12.0}
    best = benchmarks.best_limits(low, high)
    assert best["gemm_gflops"] == {"float32": 100.0, "float64": 60.0}
    assert [best[k] for k in ("copy_gbs", "update_gbs", "stream_gbs", "read_gbs")] == [30, 25, 30, 12]
    recs = benchmarks.run_benchmark(get_benchmark("adam_small"), low, backends=["numpy"], others=(),
                                    scale=TINY, min_time=0.002)
    recs += benchmarks.run_benchmark(get_benchmark("dense_relu"), low, backends=["numpy"], others=(),
                                     scale=TINY, min_time=0.002)
    before = [r.percent_of_limit for r in recs]
    benchmarks.rescore(recs, best)
    assert math.isclose(recs[0].percent_of_limit, before[0])  # stream limit unchanged
    assert math.isclose(recs[1].percent_of_limit, before[1] / 2)  # float32 GEMM limit doubled


def test_other_cpu_percent_is_a_share():
    start = (benchmarks.cpu_busy_seconds(), time.process_time(), time.perf_counter())
    sum(range(100_000))
    share = benchmarks.other_cpu_percent(*start)
    if start[0] is None:  # no /proc/stat on this system
        assert share is None
    else:
        assert share >= 0


def test_timing_limits_workloads_and_peers_load_without_fastnn(tmp_path):
    """These four modules never import fastnn: PyTorch is to be timed in a process
    that has not imported it (issue 24), where they load as a package of their own."""
    code = textwrap.dedent(f"""
        import importlib, sys, types
        package = types.ModuleType("without_fastnn")
        package.__path__ = [{str(Path(benchmarks.__file__).parent)!r}]
        sys.modules["without_fastnn"] = package
        for name in ("timing", "limits", "workloads", "peers"):
            importlib.import_module("without_fastnn." + name)
        loaded = [m for m in sys.modules if m.split(".")[0] == "fastnn"]
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_cnn_gemm_shapes_and_flops():
    """The GEMMs of one LeNet-5 step on 64 images: each convolution over its
    im2col matrix (batch * output pixels, kh * kw * C_in), then the dense layers."""
    assert benchmarks.cnn_gemms_of(benchmarks.LENET, 64) == [
        (64 * 28 * 28, 25, 6, True), (64 * 10 * 10, 150, 16, False), (64, 400, 120, False),
        (64, 120, 84, False), (64, 84, 10, False)]
    assert benchmarks.cnn_gemms_of(benchmarks.CONVNET, 64) == [
        (64 * 28 * 28, 9, 32, True), (64 * 14 * 14, 288, 64, False), (64, 3136, 10, False)]
    flops = benchmarks.cnn_flops(benchmarks.CONVNET)
    one_step = sum(2 * m * k * o * (2 if first else 3)
                   for m, k, o, first in benchmarks.cnn_gemms_of(benchmarks.CONVNET, 64))
    assert flops((64, 28, 28, 1)) == one_step
    assert flops((64 + 3, 28, 28, 1)) == one_step + flops((3, 28, 28, 1))  # a last partial batch


@pytest.mark.parametrize("name", ["cnn_lenet", "cnn_conv32_64"])
def test_torch_cnn_has_the_same_weights(name):
    """The PyTorch network of a CNN benchmark has fastnn's weight tensors, layer by layer."""
    pytest.importorskip("torch")
    bench, shape, a = arrays_of(name)
    layers = benchmarks.LENET if name == "cnn_lenet" else benchmarks.CONVNET
    model = benchmarks.cnn_model(layers, fastnn.get_backend("numpy"), np.float32)
    model.fit(a["X"][:2], a["y"][:2], epochs=1, verbose=0)  # builds it
    ours = [p.size for layer in model.layers for p in layer.params.values()]
    epoch = bench.others["torch"](bench.setup(shape, bench.dtype))
    assert ours == [p.numel() for p in epoch.model.parameters()]
    before = [p.detach().clone() for p in epoch.model.parameters()]
    epoch()  # trains
    assert all((p != q).any() for p, q in zip(epoch.model.parameters(), before))


def test_time_apart_times_in_a_process_without_fastnn():
    """PyTorch timed in a child process (which itself checks it never imported fastnn)."""
    pytest.importorskip("torch")
    bench = get_benchmark("adam_small")
    [(median, best, calls)] = benchmarks.time_apart([(bench, (100,), "torch")], min_time=0.001)
    assert 0 < best <= median and calls >= 5


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_tiled_cnn_gemms_compute_the_products(threads):
    """The CNN benchmarks' bare GEMMs, per thread and tile as the C kernels issue
    them (_tiled_gemms.py), compute a convolution's products: out = cols W, the
    ranges' dW partials adding up to cols^T out, dcols = out W^T."""
    pytest.importorskip("numba")
    from fastnn.backends._numba_rnn import Blas
    from fastnn.benchmarks._tiled_gemms import _conv_gemms

    rng = np.random.default_rng(0)
    n, pixels, k, o, tile = 7, 6, 5, 4, 2
    cols, W = rng.standard_normal((n * pixels, k)), rng.standard_normal((k, o))
    out, dW, dcols = np.empty((n * pixels, o)), np.empty((threads, k, o)), np.empty((n * pixels, k))
    blas = Blas(cols.dtype, threads).args()
    _conv_gemms(blas, threads, tile, pixels, cols, W, out, dW, dcols, False)
    np.testing.assert_allclose(out, cols @ W, rtol=1e-12)
    _conv_gemms(blas, threads, tile, pixels, cols, W, out, dW, dcols, True)
    np.testing.assert_allclose(dW.sum(axis=0), cols.T @ out, rtol=1e-12)
    np.testing.assert_allclose(dcols, out @ W.T, rtol=1e-12)
