"""The BLAS's thread count as kernels that run GEMMs on their own threads set it
(fastnn/backends/_blas.py, csrc/blas.c): one thread while they run, the count
the user chose restored after, and no change while another caller holds it."""

import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

from fastnn.backends import _blas


def scipy_openblas():
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS)
    found = [c for c in ThreadpoolController().lib_controllers
             if c.internal_api == "openblas" and _blas._library_of(_blas.blas_gemm("sgemm")) == c.filepath]
    return found[0] if found else None


def test_the_blas_of_the_gemm_is_found_with_its_thread_functions():
    controller = scipy_openblas()
    if controller is None:
        pytest.skip("SciPy's BLAS is not OpenBLAS here")
    functions = _blas.blas_thread_functions()
    assert functions is not None
    set_threads, get_threads = functions
    assert get_threads() == controller.num_threads


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
