"""The other libraries' calls timed in a process of their own (runner.PeerProcess),
in turns with fastnn's backends. No timing is judged: only the order of the
samples, where they run and how failures come out."""

import pytest

import fastnn
from fastnn import benchmarks
from fastnn.benchmarks import get_benchmark

TINY = 1e-3
FAKE_LIMITS = {"gemm_gflops": {"float32": 100.0, "float64": 50.0}, "stream_gbs": 20.0}


class Logged:
    """A function (or a RemoteCall) that notes its name in `log` at each sample."""

    def __init__(self, name, log, call=None):
        self.name, self.log, self.call = name, log, call

    def sample(self, inner):
        self.log.append(self.name)
        if self.call is not None:
            return self.call.sample(inner)
        return 1e-3 * inner


def test_samples_of_the_other_process_take_turns_with_the_backends():
    """The child never loads fastnn, and its samples come in turns with the
    local ones: after each one's warm-up and calibration, a, torch, b, a, torch, b ..."""
    pytest.importorskip("torch")
    bench = get_benchmark("adam_small")
    log = []
    with benchmarks.PeerProcess() as process:
        call = process.peer(bench, (100,), "torch")
        assert process.status()["fastnn"] is False
        fns = [Logged("a", log), Logged("torch", log, call), Logged("b", log)]
        timed = benchmarks.time_calls(fns, min_time=1e-6, min_repeats=4, min_sample=0)
        assert process.status()["fastnn"] is False
        child = process._child
    assert child.poll() is not None  # ended on leaving
    assert [calls for _, _, calls in timed] == [4, 4, 4]
    assert log == ["a"] * 5 + ["torch"] * 5 + ["b"] * 5 + ["a", "torch", "b"] * 4
    assert 0 < timed[1][1] <= timed[1][0]


def test_a_failing_peer_is_left_out_and_reported(monkeypatch):
    """A call that fails in the child (here: PyTorch's batch norm on Adam's
    arrays, which have no "x") comes out as an error naming it; the backends'
    records still come out, and the child keeps serving the next benchmark."""
    pytest.importorskip("torch")
    bad = get_benchmark("adam_small")
    monkeypatch.setitem(bad.others, "torch", benchmarks.batchnorm_torch)
    with benchmarks.PeerProcess() as process:
        errors = []
        recs = benchmarks.run_benchmark(bad, FAKE_LIMITS, backends=["numpy"], scale=TINY,
                                        min_time=0.001, process=process, errors=errors)
        assert [r.backend for r in recs] == ["numpy"]
        [error] = errors
        assert error["benchmark"] == "adam_small" and error["library"] == "torch"
        assert "batchnorm_torch" in error["error"] and "KeyError" in error["error"]
        with pytest.raises(benchmarks.PeerError, match="batchnorm_torch"):
            benchmarks.run_benchmark(bad, FAKE_LIMITS, backends=["numpy"], scale=TINY,
                                     min_time=0.001, process=process)
        good = get_benchmark("softmax_ce_small")
        recs = benchmarks.run_benchmark(good, FAKE_LIMITS, backends=["numpy"], scale=TINY,
                                        min_time=0.001, process=process)
        assert [r.backend for r in recs] == ["numpy", "torch"]


def test_a_child_that_ends_is_reported_and_started_again():
    pytest.importorskip("torch")
    bench = get_benchmark("adam_small")
    with benchmarks.PeerProcess() as process:
        call = process.peer(bench, (100,), "torch")
        process._child.kill()
        process._child.wait()
        with pytest.raises(benchmarks.PeerError, match="ended during sample"):
            call.sample(1)
        assert not process.running()
        assert process.status()["fastnn"] is False  # a new child
        assert process.running()


def test_the_child_ends_on_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt):
        with benchmarks.PeerProcess() as process:
            process.status()
            child = process._child
            raise KeyboardInterrupt
    assert child.poll() is not None


def test_without_torch_no_child_is_started(monkeypatch):
    """Where PyTorch is not installed the records are the backends' alone, and no
    process is started for it."""
    from fastnn.benchmarks import runner

    monkeypatch.setattr(runner, "version", lambda package: None)
    with benchmarks.PeerProcess() as process:
        recs = benchmarks.run_benchmark(get_benchmark("adam_small"), FAKE_LIMITS,
                                        backends=fastnn.available_backends(), scale=TINY,
                                        min_time=0.001, process=process)
        assert not process.running()
    assert [r.backend for r in recs] == fastnn.available_backends()
