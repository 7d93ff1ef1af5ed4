"""The recurrent kernels' split of the batch over the threads (csrc/recurrent_impl.h
run_rows, numba_backend._recurrent_bounds): above the threshold each thread runs
the time loops of one range of sequences with BLAS on one thread. Results agree
with the reference for every thread count (the catalogue's cases of
RECURRENT_SPLIT_SHAPE), and BLAS's thread count is the user's after each call."""

import re
from pathlib import Path

import numpy as np
import pytest
from catalogue import CATALOGUE, RECURRENT_SPLIT_SHAPE, assert_output_matches
from conftest import FAST_BACKENDS
from threadpoolctl import threadpool_info, threadpool_limits

import fastnn
from fastnn.backends import _blas

SPLIT_CASES = sorted(name for name in CATALOGUE
                     if "x".join(map(str, RECURRENT_SPLIT_SHAPE)) in name)


def thread_counts(backend_name):
    """The kernel thread counts to try: one (the whole batch), two, and three
    (uneven ranges) where the backend can run them."""
    if backend_name == "numba":
        import numba
        return [k for k in (1, 2, 3) if k <= numba.config.NUMBA_NUM_THREADS]
    return [1, 2, 3]


def set_kernel_threads(backend_name, k):
    """The backend's own thread count only (fastnn.set_num_threads sets BLAS's too)."""
    fastnn.get_backend(backend_name)._set_num_threads(k)


@pytest.fixture
def restore_kernel_threads():
    import numba

    from fastnn.backends.c_backend import lib
    before = numba.get_num_threads(), lib.fastnn_get_num_threads()
    yield
    numba.set_num_threads(before[0])
    lib.fastnn_set_num_threads(before[1])


def c_parallel_min():
    """csrc/recurrent.c's RECURRENT_PARALLEL_MIN."""
    found = re.search(r"#define RECURRENT_PARALLEL_MIN \(1 << (\d+)\)",
                      (Path(__file__).parents[1] / "csrc" / "recurrent.c").read_text())
    assert found is not None
    return 1 << int(found.group(1))


@pytest.fixture(autouse=True)
def numba_splits_from_the_c_threshold(monkeypatch):
    """The Numba kernels split from the C kernels' (lower) threshold here, so that
    the split shape exercises both."""
    if "numba" in fastnn.available_backends():
        from fastnn.backends import numba_backend
        monkeypatch.setattr(numba_backend, "RECURRENT_PARALLEL_MIN", c_parallel_min())


def test_the_split_shape_reaches_the_threshold():
    n, t, f, h = RECURRENT_SPLIT_SHAPE
    assert n * t * h * h >= c_parallel_min() and len(SPLIT_CASES) >= 8


@pytest.mark.parametrize("backend_name", FAST_BACKENDS)
@pytest.mark.parametrize("case", SPLIT_CASES)
def test_every_thread_count_matches_the_reference(case, backend_name, dtype,
                                                  restore_kernel_threads):
    run = CATALOGUE[case]
    expected = run(fastnn.get_backend("numpy"), dtype)
    for k in thread_counts(backend_name):
        set_kernel_threads(backend_name, k)
        actual = run(fastnn.get_backend(backend_name), dtype)
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_output_matches(a, e, dtype, f"{case} output {i}, {k} threads")


def openblas_threads():
    """The thread counts of the OpenBLAS libraries loaded (SciPy's among them)."""
    return {info["filepath"]: info["num_threads"] for info in threadpool_info()
            if info["internal_api"] == "openblas"}


@pytest.mark.parametrize("backend_name", FAST_BACKENDS)
@pytest.mark.parametrize("blas_threads", [1, 2, 3])
def test_blas_keeps_the_users_thread_count(backend_name, blas_threads):
    if _blas.blas_thread_functions() is None:
        pytest.skip("the BLAS has no thread functions fastnn knows")
    backend = fastnn.get_backend(backend_name)
    n, t, f, h = RECURRENT_SPLIT_SHAPE
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, t, f)).astype(np.float32)
    with threadpool_limits(blas_threads, user_api="blas"):
        for kind, g in (("rnn", 1), ("lstm", 4), ("gru", 3)):
            W_x, W_h = (rng.standard_normal(s).astype(np.float32) * 0.1 for s in ((f, g * h), (h, g * h)))
            biases = [np.zeros(g * h, np.float32)] * (2 if kind == "gru" else 1)
            states = [None] * (2 if kind == "lstm" else 1)
            hs, cache = getattr(backend, f"{kind}_forward")(x, *states, W_x, W_h, *biases)
            assert set(openblas_threads().values()) == {blas_threads}, kind
            getattr(backend, f"{kind}_backward")(np.ones_like(hs), cache)
            assert set(openblas_threads().values()) == {blas_threads}, kind


@pytest.mark.skipif("numba" not in fastnn.available_backends(), reason="needs numba")
def test_numba_runs_the_same_ranges_when_another_caller_holds_blas(monkeypatch):
    """The split kernels run their ranges on the caller's and _range_threads's
    threads; while another caller holds BLAS's thread setting, the same ranges one
    after another on the caller's: the same results bit for bit."""
    from fastnn.backends import numba_backend

    n, t, f, h = RECURRENT_SPLIT_SHAPE
    if numba_backend._recurrent_bounds(np.empty((n, t, f)), np.empty((h, h))) is None:
        pytest.skip("numba runs on one thread here: nothing is split")
    threads = numba_backend._RANGE_THREADS
    jobs = []
    monkeypatch.setattr(threads, "run", lambda fn, parts, *worker_fn, run=threads.run:
                        jobs.append(parts) or run(fn, parts, *worker_fn))
    case = next(c for c in SPLIT_CASES if c.startswith("rnn["))
    run = CATALOGUE[case]
    backend = fastnn.get_backend("numba")
    parallel = run(backend, np.float64)
    assert len(jobs) == 2 and min(jobs) >= 2  # the forward's and the backward's ranges
    with _blas.blas_on_one_thread():
        serial = run(backend, np.float64)
    assert len(jobs) == 2
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend_name", FAST_BACKENDS)
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_bound_kernels_follow_the_thread_count(backend_name, kind, restore_kernel_threads):
    """A training step's bound kernels (backend.fast.bind) keep what they derive
    from the arrays; the thread count may change between calls, and each call
    equals the unbound kernel's at that count bit for bit."""
    backend = fastnn.get_backend(backend_name)
    n, t, f, h = RECURRENT_SPLIT_SHAPE
    g = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    rng = np.random.default_rng(1)
    x, W_x, W_h = (rng.standard_normal(s) * 0.3 for s in ((n, t, f), (f, g * h), (h, g * h)))
    biases = [rng.standard_normal(g * h) * 0.1 for _ in range(2 if kind == "gru" else 1)]
    states = [None] * (2 if kind == "lstm" else 1)
    dhs, dx = rng.standard_normal((n, t, h)), np.empty((n, t, f))
    workspaces = {"rnn": {"hs": (h,)}, "lstm": {"hs": (h,), "cs": (h,), "gates": (4 * h,)},
                  "gru": {"hs": (h,), "gates": (3 * h,), "hn": (h,)}}[kind]
    out = {name: np.empty((n, t, *s)) for name, s in workspaces.items()}
    forward = backend.fast.bind(f"{kind}_forward", x, *states, W_x, W_h, *biases, **out)
    _, cache = forward()
    backward = backend.fast.bind(f"{kind}_backward", dhs, cache, dx=dx, dz=np.empty((n, t, g * h)))
    assert forward is not None and backward is not None
    for k in thread_counts(backend_name) + [1]:
        set_kernel_threads(backend_name, k)
        hs = forward()[0].copy()
        got = [None if a is None else a.copy() for a in backward()]
        want_hs, want_cache = getattr(backend, f"{kind}_forward")(x, *states, W_x, W_h, *biases)
        want = getattr(backend, f"{kind}_backward")(dhs, want_cache)
        np.testing.assert_array_equal(hs, want_hs, err_msg=f"{k} threads")
        for i, (a, e) in enumerate(zip(got, want)):
            np.testing.assert_array_equal(a, e, err_msg=f"gradient {i}, {k} threads")
