"""BLAS's gemm for compiled time loops: the address of the Fortran sgemm/dgemm
that SciPy exports (scipy.linalg.cython_blas, the BLAS Numba's np.dot calls).
The recurrent kernels of the numba and C backends call it between their gate
passes, with no Python between time steps. Its integers are 32-bit."""

import ctypes

from scipy.linalg import cython_blas

INT32_MAX = 2**31 - 1


def _capsule_address(capsule):
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))


def blas_gemm(name):
    """The address of BLAS's Fortran ?gemm (name: "sgemm" or "dgemm"), every
    argument by pointer: (transa, transb, m, n, k, alpha, a, lda, b, ldb, beta,
    c, ldc), integers 32-bit."""
    return _capsule_address(cython_blas.__pyx_capi__[name])


def int32_sizes(x, W_h):
    """Whether a recurrent call over x (N, T, F) with W_h (H, G*H) has work for
    BLAS (no empty axis) and every GEMM size and row stride fits its 32-bit
    integers (else the caller takes the reference)."""
    n, steps, f = x.shape
    hidden, width = W_h.shape
    sizes = (n * steps, f, width, steps * width)
    return x.size > 0 and hidden > 0 and max(sizes) <= INT32_MAX
