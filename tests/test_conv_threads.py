"""The convolution kernels of the C and numba backends split the images of a
batch between their threads, each range walked in tiles with BLAS on one
thread (csrc/conv_impl.h, _numba_conv.conv_*_tiles): every split gives the
reference's results, the same bits call after call, and the BLAS's thread
count is the user's after each call."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from threadpoolctl import threadpool_limits

import fastnn
from fastnn.backends import _blas, _gemm_conv

FAST = [b for b in ("c", "numba") if b in fastnn.available_backends()]


@pytest.fixture
def set_threads(monkeypatch):
    """set_threads(backend, n): the number of ranges the backend's convolution
    splits the images into (the C kernels' thread count; the numba backend's
    count as its plan reads it, every size parallel), restored after."""
    import fastnn.backends as registry

    def set_threads(backend, n):
        if backend == "c":
            from fastnn.backends.c_backend import lib

            lib.fastnn_set_num_threads(n)
        else:
            from fastnn.backends import numba_backend

            monkeypatch.setattr(numba_backend, "thread_count", lambda: n)
            monkeypatch.setattr(numba_backend, "PARALLEL_MIN", 0)
    yield set_threads
    if "c" in FAST:
        from fastnn.backends.c_backend import lib

        lib.fastnn_set_num_threads(registry._num_threads or 0)


def conv_step(backend, x, W, b, dy, stride, padding, activation):
    kernels = fastnn.get_backend(backend)
    preact = np.empty(dy.shape, x.dtype)
    y = kernels.conv2d_forward(x, W, b, stride, padding, activation, preact=preact)
    dz = None if activation == "identity" else np.empty_like(dy)
    return (y, preact) + kernels.conv2d_backward(dy, x, W, y, activation, stride, padding,
                                                  preact=preact, dz=dz)


def case(seed, n=7, h=9, w=8, c=3, o=5, k=(3, 2), out=(6, 9)):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, h, w, c)), rng.standard_normal(k + (c, o)),
            rng.standard_normal(o), rng.standard_normal((n,) + out + (o,)))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("tile_bytes", [1, 16000, 512 << 10])
@pytest.mark.parametrize("activation", ["relu", "gelu", "identity"])
def test_every_split_gives_the_reference_result(backend, threads, tile_bytes, activation,
                                                set_threads, monkeypatch):
    """7 images on 1 to 3 threads, in tiles of one image (1 byte), of at most 2
    (3000 bytes; 1620 bytes of columns per image; the ranges of 2 or 3 images
    then hold tiles of unequal sizes) and of the whole range; the ranges' dW
    and db partials add up to the reference's, and the same call gives the
    same bits again."""
    monkeypatch.setattr(_gemm_conv, "THREAD_TILE_BYTES", tile_bytes)
    set_threads(backend, threads)
    x, W, b, dy = case(1)
    got = conv_step(backend, x, W, b, dy, (2, 1), (2, 1), activation)
    want = conv_step("numpy", x, W, b, dy, (2, 1), (2, 1), activation)
    for g, r in zip(got, want):
        assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    again = conv_step(backend, x, W, b, dy, (2, 1), (2, 1), activation)
    for g, r in zip(got, again):
        assert np.array_equal(g, r)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("blas_threads", [1, 3])
def test_the_blas_thread_count_is_the_users_after_each_call(backend, blas_threads, set_threads):
    """The kernels set the BLAS to one thread while their ranges run side by side
    (a case large enough to run in parallel on 2 threads) and restore the user's
    count after the forward and after the backward."""
    functions = _blas.blas_thread_functions()
    if functions is None:
        pytest.skip("the BLAS has no thread functions fastnn knows")
    get_threads = functions[1]
    set_threads(backend, 2)
    x, W, b, dy = (a.astype(np.float32) for a in case(2, n=8, h=12, w=12, c=8, o=16, k=(3, 3),
                                                        out=(12, 12)))
    kernels = fastnn.get_backend(backend)
    with threadpool_limits(blas_threads, user_api="blas"):
        y = kernels.conv2d_forward(x, W, b, 1, 1, "relu")
        assert get_threads() == blas_threads
        dz = np.empty_like(dy)
        grads = kernels.conv2d_backward(dy, x, W, y, "relu", 1, 1, dz=dz)
        assert get_threads() == blas_threads
    want = conv_step("numpy", *(a.astype(np.float64) for a in (x, W, b, dy)), 1, 1, "relu")
    assert_allclose(y, want[0], rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, want[2:]):
        assert_allclose(g, r, rtol=1e-4, atol=1e-4 * np.abs(r).max())
