"""The C backend: kernels from csrc/, compiled at install into fastnn._ckernels
through cffi. Each override receives arrays the public method has already checked
(C-contiguous, one float dtype, right shapes) and passes their pointers to C.
Kernels not overridden here run the reference implementation."""

import numpy as np

from .. import _ckernels  # ImportError when the extension was not built
from .reference import NumpyBackend

ffi, lib = _ckernels.ffi, _ckernels.lib

SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
CTYPE = {np.dtype(np.float32): "float *", np.dtype(np.float64): "double *"}


def ptr(a):
    """Typed C pointer to the data of a C-contiguous float array (no copy)."""
    return ffi.cast(CTYPE[a.dtype], ffi.from_buffer(a))


def kernel(name, dtype):
    """The C function `name` for dtype, e.g. relu_forward_f32."""
    return getattr(lib, f"{name}_{SUFFIX[dtype]}")


class CBackend(NumpyBackend):
    name = "c"

    def _set_num_threads(self, n):
        lib.fastnn_set_num_threads(n)

    def _activation_forward(self, x, activation, out):
        if activation == "relu":
            kernel("relu_forward", x.dtype)(ptr(x), ptr(out), x.size)
        else:
            super()._activation_forward(x, activation, out)

    def _activation_backward(self, dy, y, activation, x, out):
        if activation == "relu":
            kernel("relu_backward", y.dtype)(ptr(dy), ptr(y), ptr(out), y.size)
        else:
            super()._activation_backward(dy, y, activation, x, out)
