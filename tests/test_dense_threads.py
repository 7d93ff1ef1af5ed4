"""The C backend's dense layers on fastnn's threads (csrc/activations_impl.h,
dense_forward and dense_backward): each thread multiplies its slice of rows
(dW: of dW's longer axis) on one BLAS thread. Every split gives the reference's
results, the same bits call after call; the BLAS's thread count is the user's
after each call; and a BLAS whose thread count cannot be set runs the same
slices one after another on its own threads."""

import ctypes

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastnn
from fastnn.testing import assert_close

pytestmark = pytest.mark.skipif("c" not in fastnn.available_backends(), reason="no C backend")

ACTIVATIONS = ["relu", "gelu", "softmax", "identity"]


@pytest.fixture
def lib():
    """The C library, its thread count restored after the test."""
    import fastnn.backends as registry
    from fastnn.backends.c_backend import lib

    yield lib
    lib.fastnn_set_num_threads(registry._num_threads or 0)


def dense_step(backend, x, W, b, dy, activation):
    """y, preact, dx, dW, db of one dense layer on `backend`; the backward runs on
    the float64 reference's forward outputs rounded to x's dtype, so every backend
    and split sees the same ones (a preact rounded to the other side of relu's
    kink would change a whole term of dz)."""
    kernels = fastnn.get_backend(backend)
    preact = np.empty((x.shape[0], W.shape[1]), x.dtype)
    y = kernels.dense_forward(x, W, b, activation, preact=preact)
    ref_y, ref_preact = reference_forward(x, W, b, activation)
    dz = None if activation == "identity" else np.empty_like(y)
    return (y, preact) + tuple(kernels.dense_backward(dy, x, W, ref_y, activation, preact=ref_preact,
                                                      dz=dz))


def reference_forward(x, W, b, activation):
    preact = np.empty((x.shape[0], W.shape[1]))
    y = fastnn.get_backend("numpy").dense_forward(*(a.astype(np.float64) for a in (x, W, b)), activation,
                                                  preact=preact)
    return y.astype(x.dtype), preact.astype(x.dtype)


def case(dtype, n=256, k=300, m=200, seed=0):
    """x (n, k), W (k, m), b, dy: large enough for the parallel path on 2 threads;
    k > m (dW split by rows) unless the sizes say otherwise."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((k, m)) / np.sqrt(k)
    return (rng.standard_normal((n, k)).astype(dtype), W.astype(dtype), rng.standard_normal(m).astype(dtype),
            rng.standard_normal((n, m)).astype(dtype))


def assert_matches_reference(got, x, W, b, dy, activation):
    """Each output within the catalogue's rule of the float64 reference on the
    same inputs (its backward on the same y and preact), judged against the size
    of its sums' terms."""
    ref_y, ref_preact = reference_forward(x, W, b, activation)
    reference = fastnn.get_backend("numpy")
    f64 = [a.astype(np.float64) for a in (x, W, b, dy)]
    preact = np.empty((x.shape[0], W.shape[1]))
    y = reference.dense_forward(*f64[:3], activation, preact=preact)
    dz = None if activation == "identity" else np.empty_like(y)
    grads = reference.dense_backward(f64[3], f64[0], f64[1], ref_y.astype(np.float64), activation,
                                     preact=ref_preact.astype(np.float64), dz=dz)
    terms = np.abs(f64[0]) @ np.abs(f64[1]) + np.abs(f64[2])
    z = np.abs(f64[3] if dz is None else dz)
    magnitudes = [np.abs(y) + 2 * terms.max(axis=1, keepdims=True), terms,
                  z @ np.abs(f64[1].T), np.abs(f64[0].T) @ z, z.sum(axis=0)]
    for name, g, r, size in zip(("y", "preact", "dx", "dW", "db"), got, (y, preact) + tuple(grads),
                                magnitudes):
        assert_close(g.astype(np.float64), r, x.dtype, name, magnitude=size)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(256, 300, 200), (200, 64, 700), (512, 300, 10)])
def test_every_split_gives_the_references_results(lib, dtype, activation, shape):
    x, W, b, dy = case(dtype, *shape)
    for threads in (1, 2, 3):
        lib.fastnn_set_num_threads(threads)
        got = dense_step("c", x, W, b, dy, activation)
        assert_matches_reference(got, x, W, b, dy, activation)
        again = dense_step("c", x, W, b, dy, activation)
        for g, a in zip(got, again):
            np.testing.assert_array_equal(g, a)


@pytest.mark.parametrize("blas_threads", [1, 3])
def test_the_blas_thread_count_is_the_users_after_each_call(lib, blas_threads):
    from fastnn.backends import _blas

    functions = _blas.blas_thread_functions()
    if functions is None:
        pytest.skip("the BLAS has no thread functions fastnn knows")
    get_threads = functions[1]
    lib.fastnn_set_num_threads(2)
    x, W, b, dy = case(np.float32)
    kernels = fastnn.get_backend("c")
    with threadpool_limits(blas_threads, user_api="blas"):
        y = kernels.dense_forward(x, W, b, "tanh")
        assert get_threads() == blas_threads
        kernels.dense_backward(dy, x, W, y, "tanh", dz=np.empty_like(y))
        assert get_threads() == blas_threads


def test_a_blas_without_a_thread_count_runs_the_slices_in_turn(lib):
    from fastnn.backends import _blas
    from fastnn.backends.c_backend import ffi

    functions = _blas.blas_thread_functions()
    lib.fastnn_set_num_threads(2)
    x, W, b, dy = case(np.float64)
    lib.fastnn_set_blas_threads(ffi.NULL, ffi.NULL)
    try:
        got = dense_step("c", x, W, b, dy, "relu")
    finally:
        if functions is not None:
            lib.fastnn_set_blas_threads(*(ffi.cast("void *", ctypes.cast(f, ctypes.c_void_p).value)
                                          for f in functions))
    assert_matches_reference(got, x, W, b, dy, "relu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_input_features(dtype):
    """k = 0 (BLAS refuses its leading dimensions): y is act(b), dW and dx are empty,
    db the sums of dz; the reference's results."""
    x, W, b = np.empty((300, 0), dtype), np.empty((0, 7), dtype), np.linspace(-1, 1, 7).astype(dtype)
    dy = np.ones((300, 7), dtype)
    for activation in ("tanh", "softmax"):
        got = dense_step("c", x, W, b, dy, activation)
        want = dense_step("numpy", x, W, b, dy, activation)
        for g, r in zip(got, want):
            assert g.shape == r.shape
            assert_close(g, r, dtype)


def test_sizes_beyond_the_blas_integers_take_numpys_gemm(monkeypatch):
    """Above the 32-bit sizes of the BLAS the C kernels call, a dense layer runs
    NumPy's GEMM and the C passes (a lowered limit stands in for 2^31 - 1)."""
    from fastnn.backends import c_backend

    x, W, b, dy = case(np.float32, n=64, k=30, m=20)
    ref_y, ref_preact = reference_forward(x, W, b, "relu")
    kernels = fastnn.get_backend("c")
    monkeypatch.setattr(c_backend, "INT32_MAX", 29)
    calls = []
    matmul = np.matmul
    monkeypatch.setattr(np, "matmul", lambda *a, **k: calls.append(1) or matmul(*a, **k))
    preact = np.empty_like(dy)
    y = kernels.dense_forward(x, W, b, "relu", preact=preact)
    grads = kernels.dense_backward(dy, x, W, ref_y, "relu", preact=ref_preact, dz=np.empty_like(dy))
    monkeypatch.undo()
    assert len(calls) == 3  # x W, x^T dz, dz W^T
    assert_matches_reference((y, preact) + tuple(grads), x, W, b, dy, "relu")
