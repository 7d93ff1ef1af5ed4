"""The BLAS's thread count as kernels that run GEMMs on their own threads set it
(fastnn/backends/_blas.py, csrc/blas.c): one thread while they run, the count
the user chose restored after, and no change while another caller holds it."""

import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

from fastnn.backends import _blas


def test_the_thread_functions_found_are_those_of_a_loaded_openblas():
    functions = _blas.blas_thread_functions()
    if functions is None:
        pytest.skip("the BLAS has no thread functions fastnn knows")
    set_threads, get_threads = functions
    before = get_threads()
    try:
        set_threads(3)
        controllers = ThreadpoolController().lib_controllers
        counts = [c.num_threads for c in controllers if c.internal_api == "openblas"]
        assert get_threads() == 3 and 3 in counts
    finally:
        set_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_one_thread_inside_and_the_users_count_after(threads):
    if _blas.blas_thread_functions() is None:
        pytest.skip("the BLAS has no thread functions fastnn knows")
    get_threads = _blas.blas_thread_functions()[1]
    with threadpool_limits(threads, user_api="blas"):
        before = get_threads()
        with _blas.blas_on_one_thread() as changed:
            assert changed and get_threads() == 1
            with _blas.blas_on_one_thread() as nested:  # held: left alone
                assert not nested and get_threads() == 1
        assert get_threads() == before


def test_the_count_is_restored_when_the_body_raises():
    if _blas.blas_thread_functions() is None:
        pytest.skip("the BLAS has no thread functions fastnn knows")
    get_threads = _blas.blas_thread_functions()[1]
    before = get_threads()
    with pytest.raises(RuntimeError):
        with _blas.blas_on_one_thread():
            raise RuntimeError("inside")
    assert get_threads() == before
    with _blas.blas_on_one_thread() as changed:  # the hold was released
        assert changed


def blas_counts():
    return [c.num_threads for c in _blas.blas_controller().lib_controllers]


def test_training_a_model_with_layers_on_own_threads_keeps_blas_on_one_thread_and_restores_it():
    import contextlib

    import numpy as np

    from fastnn import nn
    from fastnn.nn import training

    seen = []

    class Probe(nn.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(blas_counts())

    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 6, 6, 1))
    y = rng.integers(0, 3, 8)
    cnn = nn.Sequential([nn.Conv2D(2, 3), nn.Flatten(), nn.Dense(3)], loss="sparse_categorical_crossentropy",
                        backend="c", seed=0)
    dense = nn.Sequential([nn.Flatten(), nn.Dense(3)], loss="sparse_categorical_crossentropy",
                          backend="c", seed=0)
    with threadpool_limits(2, user_api="blas"):
        before = blas_counts()
        cnn.fit(X, y, epochs=1, batch_size=4, verbose=0, callbacks=[Probe()])
        assert seen and all(counts == [1] * len(before) for counts in seen)
        assert blas_counts() == before
        seen.clear()
        dense.fit(X, y, epochs=1, batch_size=4, verbose=0, callbacks=[Probe()])
        assert seen and all(counts == before for counts in seen)
    assert isinstance(training.blas_scope(cnn, nn.Sequential([nn.Dense(1)], backend="numpy").backend),
                      contextlib.nullcontext)
    residual = nn.Sequential([nn.Residual([nn.LSTM(2, return_sequences=True)]), nn.Flatten(), nn.Dense(1)],
                             backend="numba")
    assert not isinstance(training.blas_scope(residual, residual.backend), contextlib.nullcontext)


@pytest.mark.parametrize("direct", [True, False], ids=["ctypes", "threadpoolctl"])
def test_every_blas_on_one_thread_inside_and_the_users_counts_after(direct, monkeypatch):
    # the training scope (training.blas_scope): every BLAS loaded, NumPy's and
    # SciPy's; directly through OpenBLAS's functions, or through threadpoolctl
    if not direct:
        monkeypatch.setattr(_blas, "_every_blas_scope", lambda: None)
    elif _blas._every_blas_thread_functions() is None:
        pytest.skip("a BLAS other than OpenBLAS on its own threads is loaded")
    with threadpool_limits(3, user_api="blas"):
        before = blas_counts()
        assert before == [3] * len(before)
        with _blas.every_blas_on_one_thread():
            assert blas_counts() == [1] * len(before)
            with _blas.every_blas_on_one_thread():  # inside another: the outer one's counts stay
                assert blas_counts() == [1] * len(before)
            assert blas_counts() == [1] * len(before)
        assert blas_counts() == before
        with pytest.raises(RuntimeError):
            with _blas.every_blas_on_one_thread():
                raise RuntimeError("inside")
        assert blas_counts() == before


def test_a_kernels_scope_inside_its_threads_training_scope_holds_at_once():
    # inside every_blas_on_one_thread (a training step), which keeps every BLAS on
    # one thread, a kernel's blas_on_one_thread in the same thread gives True
    # without taking the kernels' hold or calling the BLAS; in another thread
    # it is a scope of its own, which takes the hold
    import threading

    if _blas._every_blas_thread_functions() is None or _blas.blas_thread_functions() is None:
        pytest.skip("a BLAS other than OpenBLAS on its own threads is loaded")
    seen = []

    def kernel_scope():
        with _blas.blas_on_one_thread() as alone:
            seen.append((alone, _blas._one_thread_lock.locked(), blas_counts()))

    with threadpool_limits(3, user_api="blas"):
        before = blas_counts()
        with _blas.every_blas_on_one_thread():
            ones = [1] * len(before)
            kernel_scope()
            assert seen.pop() == (True, False, ones)
            other = threading.Thread(target=kernel_scope)
            other.start()
            other.join()
            assert seen.pop() == (True, True, ones)
        kernel_scope()  # outside it: a scope of its own again (the kernels' BLAS only)
        assert seen.pop()[:2] == (True, True)
        assert blas_counts() == before
