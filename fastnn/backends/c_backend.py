"""The C backend: kernels from csrc/, compiled at install into fastnn._ckernels
through cffi. Each override receives arrays the public method has already checked
(C-contiguous, one float dtype, right shapes) and passes their pointers to C, with
every size taken from the arrays themselves. GEMMs stay in BLAS through NumPy;
the C kernels do what surrounds them. Kernels not overridden here (init_weights)
run the reference implementation. Sums come back from C in double; the public
method rounds them to the dtype (spec.round_to)."""

import ctypes
import os
import warnings
from contextlib import contextmanager

import numpy as np

from .. import _ckernels  # ImportError when the extension was not built
from . import _checks as chk
from ._blas import INT32_MAX, blas_gemm, blas_thread_functions, int32_sizes
from ._gemm_conv import GemmConv, is_direct, thread_tiles
from .reference import (
    ACTIVATIONS,
    NEEDS_INPUT,
    GruCache,
    LstmCache,
    NumpyBackend,
    RnnCache,
    dropout_threshold,
)

ffi, lib = _ckernels.ffi, _ckernels.lib
NULL = ffi.NULL
# the recurrent kernels' GEMMs: BLAS's Fortran ?gemm, SciPy's (see _numba_rnn.blas_gemm)
lib.fastnn_set_gemm(ffi.cast("void *", blas_gemm("sgemm")), ffi.cast("void *", blas_gemm("dgemm")))
# and its thread count, set to one while fastnn's threads run GEMMs side by side
_blas_threads = blas_thread_functions()
if _blas_threads is not None:
    lib.fastnn_set_blas_threads(*(ffi.cast("void *", ctypes.cast(f, ctypes.c_void_p).value)
                                  for f in _blas_threads))

# The instruction sets the kernels are compiled for (csrc/isa.h), in the order of
# enum fastnn_isa. The library runs the highest this CPU has; FASTNN_C_ISA, read
# here at load, names a lower one (to compare or test the paths).
ISAS = ("generic", "avx2", "avx512")
ISA_ENV = "FASTNN_C_ISA"


def supported_isas():
    """The instruction sets this build of the kernels runs on this CPU, lowest first."""
    return ISAS[:lib.fastnn_isa_supported() + 1]


def get_isa():
    """The instruction set the C kernels run (each at most its own cap: kernel_isa)."""
    return ISAS[lib.fastnn_get_isa()]


def set_isa(isa):
    """Runs the C kernels' code for instruction set `isa` (one of supported_isas());
    returns the one selected before."""
    if isa not in ISAS:
        raise ValueError(f"isa must be one of {', '.join(ISAS)}; got {isa!r}")
    if isa not in supported_isas():
        raise ValueError(f"isa {isa!r} does not run here: this CPU and build run "
                         f"{', '.join(supported_isas())}")
    previous = get_isa()
    lib.fastnn_set_isa(ISAS.index(isa))
    return previous


@contextmanager
def use_isa(isa):
    """Runs the C kernels for instruction set `isa` inside the block."""
    previous = set_isa(isa)
    try:
        yield
    finally:
        set_isa(previous)


def kernel_isa(function):
    """The instruction set whose code the C function `function` (e.g. 'adam_step_f32')
    runs now: the selected one, or the highest its measurement kept (the build's cap)."""
    code = lib.fastnn_kernel_isa(function.encode())
    if code < 0:
        raise ValueError(f"{function!r} is not a C kernel compiled per instruction set")
    return ISAS[code]


def _isa_from_env():
    """Selects the instruction set named by FASTNN_C_ISA, if set: an unknown name is
    an error (the backend then does not load, and says why); one above what this
    CPU runs warns and runs the highest it does."""
    wanted = os.environ.get(ISA_ENV, "").strip().lower()
    if not wanted:
        return
    if wanted not in ISAS:
        raise ValueError(f"{ISA_ENV} must be one of {', '.join(ISAS)}; got {wanted!r}")
    if wanted not in supported_isas():
        warnings.warn(f"{ISA_ENV}={wanted}: this CPU does not run it; the C kernels run "
                      f"{supported_isas()[-1]}", RuntimeWarning, stacklevel=2)
        wanted = supported_isas()[-1]
    set_isa(wanted)


_isa_from_env()

# activation name -> its code in csrc/fastnn.h (enum fastnn_activation)
ACTIVATION_CODE = {name: getattr(lib, "FASTNN_" + name.upper()) for name in ACTIVATIONS}
LOSS_CODE = {"squared_error": lib.FASTNN_SQUARED, "absolute_error": lib.FASTNN_ABSOLUTE,
             "huber": lib.FASTNN_HUBER, "hinge": lib.FASTNN_HINGE}


class _FunctionTable:
    """The C functions of one dtype, looked up once: table.adam_step is
    lib.adam_step_f32 for float32. `ctype` types pointers to its arrays.
    (These are C functions, not the catalogue's kernels: one kernel may call
    several of them, and several kernels one, as elementwise_loss.)"""

    NAMES = (
        "bias_activation_forward", "activation_backward", "column_sums", "dense_forward",
        "dense_backward",
        "softmax_cross_entropy_labels", "softmax_cross_entropy_probs",
        "sigmoid_binary_cross_entropy", "elementwise_loss", "batchnorm_forward",
        "batchnorm_backward", "dropout", "weight_penalty", "sgd_step", "adagrad_step",
        "rmsprop_step", "adadelta_step", "adam_step",
        # convolution
        "conv2d_forward", "conv2d_backward", "im2col", "col2im", "maxpool_forward",
        "maxpool_backward", "avgpool_forward", "avgpool_backward", "conv2d_direct_forward",
        "conv2d_direct_backward",
    ) + (  # recurrence
        "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward",
        "gru_backward", "recurrent_gemms",
    ) + ("embedding_forward", "embedding_backward")

    # functions on bytes, the same for every dtype
    UNTYPED = ("take_rows",)

    def __init__(self, suffix, ctype):
        self.ctype = ctype
        for name in self.NAMES:
            setattr(self, name, getattr(lib, f"{name}_{suffix}"))
        for name in self.UNTYPED:
            setattr(self, name, getattr(lib, name))


# dtype -> the C functions of that dtype
C_FUNCTIONS = {np.dtype(np.float32): _FunctionTable("f32", "float[]"),
               np.dtype(np.float64): _FunctionTable("f64", "double[]")}


def _check(status):
    """Kernels that allocate a workspace return -1 when that failed."""
    if status:
        raise MemoryError("the C kernel could not allocate its workspace")


def _ptr(ctype, a):
    """Pointer to the data of a C-contiguous array (no copy), or NULL for None."""
    return NULL if a is None else ffi.from_buffer(ctype, a)


def _bound(kernel, args, result):
    """A bound kernel: each call runs kernel(*args), the arguments taken once, and
    returns `result` (the arrays those arguments point to); what it is called
    with is ignored (the bound ones, see spec.bind_source)."""
    def run(*_):
        kernel(*args)
        return result
    return run


def _dense_fits(x, W):
    """Whether a dense layer's GEMMs fit the 32-bit integers of the BLAS the C
    kernels call (every size and row stride)."""
    return max(*x.shape, *W.shape) <= INT32_MAX


def _sums(width):
    """The recurrent backwards' workspace of bias sums: 2 width doubles."""
    return ffi.from_buffer("double[]", chk.empty(2 * width, np.float64))


class CBackend(GemmConv, NumpyBackend):
    name = "c"

    @property
    def isa(self):
        """The instruction set the C kernels run (see set_isa, kernel_isa)."""
        return get_isa()

    def _set_num_threads(self, n):
        lib.fastnn_set_num_threads(n)

    # -------------------------------------------------------------- activations
    def _activation_forward(self, x, activation, out):
        if x.size == 0:  # nothing to compute; the reference's softmax rejects empty rows
            return super()._activation_forward(x, activation, out)
        k = C_FUNCTIONS[x.dtype]
        # softmax works on rows; the others on x as one flat run, split between threads
        rows, cols = (x.shape[0], x.shape[1]) if activation == "softmax" else (x.size, 1)
        fb, ct = ffi.from_buffer, k.ctype
        k.bias_activation_forward(fb(ct, x), NULL, NULL, fb(ct, out), rows, cols,
                                  ACTIVATION_CODE[activation])

    def _activation_backward(self, dy, y, activation, x, out):
        k = C_FUNCTIONS[y.dtype]
        rows, cols = (y.shape[0], y.shape[1]) if activation == "softmax" else (y.size, 1)
        fb, ct = ffi.from_buffer, k.ctype
        x = x if activation in NEEDS_INPUT else None  # checked only when needed
        _check(k.activation_backward(fb(ct, dy), fb(ct, y), _ptr(ct, x), fb(ct, out), NULL, rows,
                                     cols, ACTIVATION_CODE[activation]))

    # -------------------------------------------------------------------- dense
    # A kernel with a _bind_ method is that method's result called once; a
    # training step bound to its arrays (backend.fast.bind) keeps the result, so
    # the pointers are taken once, not at every step. The result ignores the
    # arrays it is called with (the bound ones) and takes the scalars.
    def _dense_forward(self, x, W, b, activation, out, preact):
        self._bind_dense_forward(x, W, b, activation, out, preact)()

    def _bind_dense_forward(self, x, W, b, activation, out, preact):
        if out.size == 0:  # the reference's softmax rejects empty rows
            return lambda *_: NumpyBackend._dense_forward(self, x, W, b, activation, out, preact)
        if not _dense_fits(x, W):
            return self._bind_numpy_dense_forward(x, W, b, activation, out, preact)
        k = C_FUNCTIONS[out.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        args = (fb(ct, x), fb(ct, W), _ptr(ct, b), _ptr(ct, preact), fb(ct, out), *x.shape,
                W.shape[1], ACTIVATION_CODE[activation])
        kernel = k.dense_forward

        def dense_forward(*_):
            kernel(*args)
        return dense_forward

    def _bind_numpy_dense_forward(self, x, W, b, activation, out, preact):
        """NumPy's GEMM (its BLAS's threads), then the C epilogue: for sizes
        beyond the 32-bit integers of the BLAS the C kernels call."""
        matmul = np.matmul
        k = C_FUNCTIONS[out.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        o, pb, pp = fb(ct, out), _ptr(ct, b), _ptr(ct, preact)
        epilogue, (rows, cols), code = k.bias_activation_forward, out.shape, ACTIVATION_CODE[activation]

        def dense_forward(*_):
            matmul(x, W, out=out)
            epilogue(o, pb, pp, o, rows, cols, code)
        return dense_forward

    def _dense_backward(self, dy, x, W, y, activation, preact, dx, dW, db, dz):
        self._bind_dense_backward(dy, x, W, y, activation, preact, dx, dW, db, dz)()

    def _bind_dense_backward(self, dy, x, W, y, activation, preact, dx, dW, db, dz):
        if not _dense_fits(x, W):
            return self._bind_numpy_dense_backward(dy, x, W, y, activation, preact, dx, dW, db, dz)
        k = C_FUNCTIONS[dy.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        preact = preact if activation in NEEDS_INPUT else None  # checked only when needed
        args = (fb(ct, dy), fb(ct, x), fb(ct, W), fb(ct, y), _ptr(ct, preact), _ptr(ct, dz),
                _ptr(ct, dx), fb(ct, dW), fb(ct, db), *x.shape, W.shape[1], ACTIVATION_CODE[activation])
        kernel = k.dense_backward

        def dense_backward(*_):
            _check(kernel(*args))
        return dense_backward

    def _bind_numpy_dense_backward(self, dy, x, W, y, activation, preact, dx, dW, db, dz):
        """The C prologue, then NumPy's GEMMs (see _bind_numpy_dense_forward)."""
        k = C_FUNCTIONS[dy.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        rows, cols = dy.shape
        matmul, xT, WT = np.matmul, x.T, W.T
        if activation == "identity":
            dz = dy
            prologue, args = k.column_sums, (fb(ct, dy), fb(ct, db), rows, cols)
        else:
            preact = preact if activation in NEEDS_INPUT else None  # checked only when needed
            prologue, args = k.activation_backward, (fb(ct, dy), fb(ct, y), _ptr(ct, preact), fb(ct, dz),
                                                     fb(ct, db), rows, cols, ACTIVATION_CODE[activation])

        def dense_backward(*_):
            _check(prologue(*args))
            matmul(xT, dz, out=dW)
            if dx is not None:
                matmul(dz, WT, out=dx)
        return dense_backward

    # ------------------------------------------------------------------- losses
    def _softmax_cross_entropy(self, logits, targets, w, grad):
        return self._bind_softmax_cross_entropy(logits, targets, w, grad)()

    def _bind_softmax_cross_entropy(self, logits, targets, w, grad):
        if logits.size == 0:  # as the reference: a loss of 0, or its error for empty rows
            return lambda *_: NumpyBackend._softmax_cross_entropy(self, logits, targets, w, grad)
        k = C_FUNCTIONS[logits.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        n, c = logits.shape
        if targets.ndim == 1:  # int64 labels, checked to lie in [0, c)
            kernel, t = k.softmax_cross_entropy_labels, fb("int64_t[]", targets)
        else:
            kernel, t = k.softmax_cross_entropy_probs, fb(ct, targets)
        args = (fb(ct, logits), t, _ptr(ct, w), fb(ct, grad), n, c)

        def softmax_cross_entropy(*_):
            return kernel(*args)
        return softmax_cross_entropy

    def _sigmoid_binary_cross_entropy(self, logits, targets, w, grad):
        k = C_FUNCTIONS[logits.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        n = logits.shape[0]
        return k.sigmoid_binary_cross_entropy(fb(ct, logits), fb(ct, targets), _ptr(ct, w),
                                              fb(ct, grad), n, logits.size // max(n, 1))

    def _elementwise_loss(self, loss, pred, targets, w, grad, delta=1.0):
        k = C_FUNCTIONS[pred.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        n = pred.shape[0]
        return k.elementwise_loss(LOSS_CODE[loss], fb(ct, pred), fb(ct, targets), _ptr(ct, w),
                                  fb(ct, grad), n, pred.size // max(n, 1), delta)

    def _squared_error(self, pred, targets, w, grad):
        return self._elementwise_loss("squared_error", pred, targets, w, grad)

    def _absolute_error(self, pred, targets, w, grad):
        return self._elementwise_loss("absolute_error", pred, targets, w, grad)

    def _huber(self, pred, targets, w, grad, delta):
        return self._elementwise_loss("huber", pred, targets, w, grad, delta)

    def _hinge(self, scores, targets, w, grad):
        return self._elementwise_loss("hinge", scores, targets, w, grad)

    # ------------------------------------------------------------ normalisation
    def _batchnorm_forward(self, x, gamma, beta, running_mean, running_var, training,
                           momentum, eps, out, mean, invstd):
        k = C_FUNCTIONS[x.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        n, c = x.shape
        _check(k.batchnorm_forward(fb(ct, x), fb(ct, gamma), fb(ct, beta), fb(ct, running_mean),
                                   fb(ct, running_var), fb(ct, out), fb(ct, mean), fb(ct, invstd),
                                   n, c, training, momentum, eps))

    def _batchnorm_backward(self, dy, cache, dx, dgamma, dbeta):
        x, mean, invstd, gamma, training = cache  # checked by batchnorm_backward
        n, c = dy.shape
        k = C_FUNCTIONS[dy.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        _check(k.batchnorm_backward(fb(ct, dy), fb(ct, x), fb(ct, mean), fb(ct, invstd),
                                    fb(ct, gamma), fb(ct, dx), fb(ct, dgamma), fb(ct, dbeta), n, c,
                                    bool(training)))

    # ------------------------------------------------------------------ dropout
    def _dropout_forward(self, x, rate, seed, out):
        k = C_FUNCTIONS[x.dtype]
        scale = float(x.dtype.type(1.0 / (1.0 - rate)))  # the reference's scale, rounded alike
        k.dropout(ffi.from_buffer(k.ctype, x), ffi.from_buffer(k.ctype, out), x.size, seed,
                  dropout_threshold(rate), scale)

    def _dropout_backward(self, dy, rate, seed, out):
        self._dropout_forward(dy, rate, seed, out)  # the same mask and scale

    # ----------------------------------------------------------- regularisation
    def _weight_penalty(self, param, grad, l2, l1):
        k = C_FUNCTIONS[param.dtype]
        return k.weight_penalty(ffi.from_buffer(k.ctype, param), ffi.from_buffer(k.ctype, grad),
                                param.size, l2, l1)

    # --------------------------------------------------------------- optimizers
    def _sgd_step(self, param, grad, velocity, lr, momentum, nesterov, weight_decay,
                  lr_in_velocity):
        k = C_FUNCTIONS[param.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        k.sgd_step(fb(ct, param), fb(ct, grad), _ptr(ct, velocity), param.size, lr, momentum,
                   nesterov, weight_decay, lr_in_velocity)

    def _adagrad_step(self, param, grad, sum_sq, lr, eps, weight_decay):
        k = C_FUNCTIONS[param.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        k.adagrad_step(fb(ct, param), fb(ct, grad), fb(ct, sum_sq), param.size, lr, eps,
                       weight_decay)

    def _rmsprop_step(self, param, grad, square_avg, lr, alpha, eps, weight_decay, momentum,
                      momentum_buf, grad_avg):
        k = C_FUNCTIONS[param.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        k.rmsprop_step(fb(ct, param), fb(ct, grad), fb(ct, square_avg), _ptr(ct, momentum_buf),
                       _ptr(ct, grad_avg), param.size, lr, alpha, eps, weight_decay, momentum)

    def _adadelta_step(self, param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay):
        k = C_FUNCTIONS[param.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        k.adadelta_step(fb(ct, param), fb(ct, grad), fb(ct, square_avg), fb(ct, acc_delta),
                        param.size, lr, rho, eps, weight_decay)

    def _adam_step(self, param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled,
                   v_max):
        self._bind_adam_step(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled,
                             v_max)(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled)

    def _bind_adam_step(self, param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled,
                        v_max):
        k = C_FUNCTIONS[param.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        arrays = (fb(ct, param), fb(ct, grad), fb(ct, m), fb(ct, v), _ptr(ct, v_max), param.size)
        kernel = k.adam_step

        def adam_step(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled, v_max=None):
            kernel(*arrays, t, lr, beta1, beta2, eps, weight_decay, decoupled)
        return adam_step

    # -------------------------------------------------------------- convolution
    # conv2d_forward/backward: one C call each (csrc/conv_impl.h: im2col, BLAS's GEMM
    # on one thread per range of images, the epilogue, col2im; for few channels,
    # _gemm_conv.is_direct, the direct kernels without im2col or BLAS), or, for
    # sizes beyond 32-bit BLAS integers, im2col, the dense kernels and col2im
    # (_gemm_conv.py); pooling in C.
    @staticmethod
    def _window(x_shape, window, stride, padding, out_hw=None):
        """The struct fastnn_window of images x_shape (n, ih, iw, c) (outputs out_hw,
        else derived)."""
        n, ih, iw, c = x_shape
        (kh, kw), (sh, sw), (ph, pw) = window, stride, padding
        oh, ow = out_hw or ((ih + 2 * ph - kh) // sh + 1, (iw + 2 * pw - kw) // sw + 1)
        return ffi.new("struct fastnn_window *", dict(
            n=n, ih=ih, iw=iw, c=c, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, oh=oh, ow=ow))

    def _conv_plan(self, x, W, stride, padding, oh, ow, backward):
        """(window, tile, parts, workspace) of conv2d_forward/backward in C
        (csrc/conv_impl.h), or None when a BLAS size would not fit 32 bits."""
        kh, kw, c, o = W.shape
        k = kh * kw * c
        if oh * ow * max(k, o) > INT32_MAX or k * o > INT32_MAX:
            return None
        tile, parts = thread_tiles(x.shape[0], oh * ow * k * x.itemsize, lib.fastnn_get_num_threads())
        rows = tile * oh * ow
        size = 2 * rows * k + k * o if backward else rows * k
        ws = self._conv_workspace(("tiles", backward), (parts * size,), x.dtype)
        return self._window(x.shape, (kh, kw), stride, padding, (oh, ow)), tile, parts, ws

    def _conv2d_forward(self, x, W, b, stride, padding, activation, out, preact):
        if is_direct(W, stride, padding):
            k = C_FUNCTIONS[x.dtype]
            fb, ct = ffi.from_buffer, k.ctype
            window = self._window(x.shape, W.shape[:2], stride, padding, out.shape[1:3])
            return _check(k.conv2d_direct_forward(fb(ct, x), fb(ct, W), _ptr(ct, b), _ptr(ct, preact),
                                                  fb(ct, out), window, W.shape[3],
                                                  ACTIVATION_CODE[activation]))
        plan = self._conv_plan(x, W, stride, padding, out.shape[1], out.shape[2], False)
        if plan is None:
            return super()._conv2d_forward(x, W, b, stride, padding, activation, out, preact)
        window, tile, parts, ws = plan
        k = C_FUNCTIONS[x.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        _check(k.conv2d_forward(fb(ct, x), fb(ct, W), _ptr(ct, b), _ptr(ct, preact), fb(ct, out),
                                fb(ct, ws), window, W.shape[3], tile, parts,
                                ACTIVATION_CODE[activation]))

    def _conv2d_backward(self, dy, x, W, y, activation, stride, padding, preact, dx, dW, db, dz):
        if is_direct(W, stride, padding):
            k = C_FUNCTIONS[x.dtype]
            fb, ct = ffi.from_buffer, k.ctype
            preact = preact if activation in NEEDS_INPUT else None  # checked only when needed
            dz = None if activation == "identity" else dz
            window = self._window(x.shape, W.shape[:2], stride, padding, dy.shape[1:3])
            return _check(k.conv2d_direct_backward(
                fb(ct, dy), fb(ct, x), fb(ct, W), fb(ct, y), _ptr(ct, preact), _ptr(ct, dz),
                _ptr(ct, dx), fb(ct, dW), fb(ct, db), window, W.shape[3], ACTIVATION_CODE[activation]))
        plan = self._conv_plan(x, W, stride, padding, dy.shape[1], dy.shape[2], True)
        if plan is None:
            return super()._conv2d_backward(dy, x, W, y, activation, stride, padding, preact, dx,
                                            dW, db, dz)
        window, tile, parts, ws = plan
        k = C_FUNCTIONS[x.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        preact = preact if activation in NEEDS_INPUT else None  # checked only when needed
        dz = None if activation == "identity" else dz
        _check(k.conv2d_backward(fb(ct, dy), fb(ct, x), fb(ct, W), fb(ct, y), _ptr(ct, preact),
                                 _ptr(ct, dz), _ptr(ct, dx), fb(ct, dW), fb(ct, db), fb(ct, ws), window,
                                 W.shape[3], tile, parts, ACTIVATION_CODE[activation]))

    def _im2col(self, x, kh, kw, stride, padding, cols):
        k = C_FUNCTIONS[x.dtype]
        k.im2col(ffi.from_buffer(k.ctype, x), ffi.from_buffer(k.ctype, cols),
                 self._window(x.shape, (kh, kw), stride, padding))

    def _col2im(self, dcols, kh, kw, stride, padding, dx):
        k = C_FUNCTIONS[dx.dtype]
        k.col2im(ffi.from_buffer(k.ctype, dcols), ffi.from_buffer(k.ctype, dx),
                 self._window(dx.shape, (kh, kw), stride, padding))

    def _maxpool2d_forward(self, x, pool, stride, padding, out, argmax):
        if x.shape[1] * x.shape[2] > 2**31 - 1:  # the C loop holds the indices as int32
            return super()._maxpool2d_forward(x, pool, stride, padding, out, argmax)
        k = C_FUNCTIONS[x.dtype]
        k.maxpool_forward(ffi.from_buffer(k.ctype, x), ffi.from_buffer(k.ctype, out),
                          ffi.from_buffer("int64_t[]", argmax),
                          self._window(x.shape, pool, stride, padding))

    def _maxpool2d_backward(self, dy, argmax, dx):
        k = C_FUNCTIONS[dy.dtype]
        wide = argmax.dtype == np.int64  # else int32 (checked)
        k.maxpool_backward(ffi.from_buffer(k.ctype, dy),
                           ffi.from_buffer("int64_t[]", argmax) if wide else NULL,
                           NULL if wide else ffi.from_buffer("int32_t[]", argmax),
                           ffi.from_buffer(k.ctype, dx),
                           self._window(dx.shape, (1, 1), (1, 1), (0, 0), dy.shape[1:3]))

    def _avgpool2d_forward(self, x, pool, stride, padding, out):
        k = C_FUNCTIONS[x.dtype]
        _check(k.avgpool_forward(ffi.from_buffer(k.ctype, x), ffi.from_buffer(k.ctype, out),
                                 self._window(x.shape, pool, stride, padding)))

    def _avgpool2d_backward(self, dy, pool, stride, padding, dx):
        k = C_FUNCTIONS[dy.dtype]
        k.avgpool_backward(ffi.from_buffer(k.ctype, dy), ffi.from_buffer(k.ctype, dx),
                           self._window(dx.shape, pool, stride, padding))

    # --------------------------------------------------------------- recurrence
    # The whole time loop of each kernel in C (csrc/recurrent_impl.h), its GEMMs
    # calls of BLAS's ?gemm. Each _bind_ takes the pointers and allocates the
    # small workspaces (zero initial states, scratch rows, the bias sums) once;
    # a backward writes its gradients into the arrays it was given (spec: the
    # caller's, or new ones); the unbound kernels bind anew at each call. Sizes
    # beyond 32-bit BLAS integers, and empty sequences, take the reference.
    def _rnn_forward(self, x, h0, W_x, W_h, b, activation, hs):
        return self._bind_rnn_forward(x, h0, W_x, W_h, b, activation, hs)()

    def _bind_rnn_forward(self, x, h0, W_x, W_h, b, activation, hs):
        (n, steps, f), hidden = x.shape, W_h.shape[0]
        if not int32_sizes(x, W_h):
            reference = super()._rnn_forward
            return lambda *_: reference(x, h0, W_x, W_h, b, activation, hs)
        k, e, d = C_FUNCTIONS[x.dtype], chk.empty, x.dtype
        h0 = chk.zeros((n, hidden), d) if h0 is None else h0
        fb, ct = ffi.from_buffer, k.ctype
        args = (fb(ct, x), fb(ct, h0), fb(ct, W_x), fb(ct, W_h), fb(ct, b), activation == "relu",
                fb(ct, hs), fb(ct, e(h0.shape, d)), n, steps, f, hidden)
        return _bound(k.rnn_forward, args, (hs, RnnCache(x, h0, W_x, W_h, hs, activation)))

    def _rnn_backward(self, dhs, cache, dx, dz, *grads):
        self._bind_rnn_backward(dhs, cache, dx, dz, *grads)()

    def _bind_rnn_backward(self, dhs, cache, dx, dz, *grads):
        x, h0, W_x, W_h, hs, activation = cache
        (n, steps, f), hidden = x.shape, W_h.shape[0]
        if not int32_sizes(x, W_h):
            reference = super()._rnn_backward
            return lambda *_: reference(dhs, cache, dx, dz, *grads)
        k = C_FUNCTIONS[x.dtype]
        fb, ct = ffi.from_buffer, k.ctype
        args = (*(fb(ct, a) for a in (dhs, x, h0, W_x, W_h, hs)), activation == "relu",
                *(_ptr(ct, a) for a in (dx, *grads)), fb(ct, dz), _sums(hidden), n, steps, f, hidden)
        return _bound(k.rnn_backward, args, None)

    def _lstm_forward(self, x, h0, c0, W_x, W_h, b, return_sequences, hs, cs, gates):
        return self._bind_lstm_forward(x, h0, c0, W_x, W_h, b, return_sequences, hs, cs, gates)()

    def _bind_lstm_forward(self, x, h0, c0, W_x, W_h, b, return_sequences, hs, cs, gates):
        (n, steps, f), hidden = x.shape, W_h.shape[0]
        if not int32_sizes(x, W_h):
            reference = super()._lstm_forward
            return lambda *_: reference(x, h0, c0, W_x, W_h, b, return_sequences, hs, cs, gates)
        k, e, d = C_FUNCTIONS[x.dtype], chk.empty, x.dtype
        h0 = chk.zeros((n, hidden), d) if h0 is None else h0
        c0 = chk.zeros((n, hidden), d) if c0 is None else c0
        fb, ct = ffi.from_buffer, k.ctype
        args = (*(fb(ct, a) for a in (x, h0, c0, W_x, W_h, b)), not return_sequences,
                *(fb(ct, a) for a in (hs, cs, gates, e((n, 4 * hidden), d))), n, steps, f, hidden)
        return _bound(k.lstm_forward, args, (hs, LstmCache(x, h0, c0, W_x, W_h, hs, cs, gates)))

    def _lstm_backward(self, dhs, cache, dx, dz, *grads):
        self._bind_lstm_backward(dhs, cache, dx, dz, *grads)()

    def _bind_lstm_backward(self, dhs, cache, dx, dz, *grads):
        x, h0, c0, W_x, W_h, hs, cs, gates = cache
        (n, steps, f), hidden = x.shape, W_h.shape[0]
        if not int32_sizes(x, W_h):
            reference = super()._lstm_backward
            return lambda *_: reference(dhs, cache, dx, dz, *grads)
        k = C_FUNCTIONS[x.dtype]
        ct = k.ctype
        # (dhs (N, 1, H) with T != 1: the last state's gradient alone)
        work = chk.empty((2 * n + 1) * hidden, x.dtype)  # lstm_backward's tc, hp rows and zeros
        args = (*(_ptr(ct, a) for a in (dhs, x, h0, c0, W_x, W_h, cs, gates)), dhs.shape[1] != steps,
                *(_ptr(ct, a) for a in (dx, *grads, dz, work)), _sums(4 * hidden), n, steps, f, hidden)
        return _bound(k.lstm_backward, args, None)

    def _gru_forward(self, x, h0, W_x, W_h, b_x, b_h, hs, gates, hn):
        return self._bind_gru_forward(x, h0, W_x, W_h, b_x, b_h, hs, gates, hn)()

    def _bind_gru_forward(self, x, h0, W_x, W_h, b_x, b_h, hs, gates, hn):
        (n, steps, f), hidden = x.shape, W_h.shape[0]
        if not int32_sizes(x, W_h):
            reference = super()._gru_forward
            return lambda *_: reference(x, h0, W_x, W_h, b_x, b_h, hs, gates, hn)
        k, e, d = C_FUNCTIONS[x.dtype], chk.empty, x.dtype
        h0 = chk.zeros((n, hidden), d) if h0 is None else h0
        fb, ct = ffi.from_buffer, k.ctype
        args = (*(fb(ct, a) for a in (x, h0, W_x, W_h, b_x, b_h, hs, gates, hn,
                                      e((n, 3 * hidden), d))), n, steps, f, hidden)
        return _bound(k.gru_forward, args, (hs, GruCache(x, h0, W_x, W_h, hs, gates, hn)))

    def _gru_backward(self, dhs, cache, dx, dz, *grads):
        self._bind_gru_backward(dhs, cache, dx, dz, *grads)()

    def _bind_gru_backward(self, dhs, cache, dx, dz, *grads):
        x, h0, W_x, W_h, hs, gates, hn = cache
        (n, steps, f), hidden = x.shape, W_h.shape[0]
        if not int32_sizes(x, W_h):
            reference = super()._gru_backward
            return lambda *_: reference(dhs, cache, dx, dz, *grads)
        k, d = C_FUNCTIONS[x.dtype], x.dtype
        ct = k.ctype
        args = (*(_ptr(ct, a) for a in (dhs, x, h0, W_x, W_h, hs, gates, hn, dx, *grads, dz,
                                        chk.empty((n, 3 * hidden), d))),
                _sums(3 * hidden), n, steps, f, hidden)
        return _bound(k.gru_backward, args, None)

    # ---------------------------------------------------------------- embedding
    # csrc/embedding.c; tokens int64 or int32 (the other pointer NULL)
    def _embedding_forward(self, tokens, W, out):
        k = C_FUNCTIONS[W.dtype]
        wide = tokens.dtype == np.int64
        k.embedding_forward(ffi.from_buffer("int64_t[]", tokens) if wide else NULL,
                            NULL if wide else ffi.from_buffer("int32_t[]", tokens),
                            ffi.from_buffer(k.ctype, W), ffi.from_buffer(k.ctype, out),
                            tokens.size, W.shape[1])

    def _embedding_backward(self, dy, tokens, dW):
        k = C_FUNCTIONS[dW.dtype]
        wide = tokens.dtype == np.int64
        k.embedding_backward(ffi.from_buffer(k.ctype, dy),
                             ffi.from_buffer("int64_t[]", tokens) if wide else NULL,
                             NULL if wide else ffi.from_buffer("int32_t[]", tokens),
                             ffi.from_buffer(k.ctype, dW), tokens.size, dW.shape[0], dW.shape[1])

    # --------------------------------------------------------------- row gather
    # csrc/gather.c: rows copied as bytes (any dtype); index int64 or int32 (the
    # other pointer NULL); parallel and prefetched for large batches
    def _take_rows(self, x, index, out):
        self._bind_take_rows(x, index, out)()

    def _bind_take_rows(self, x, index, out):
        wide = index.dtype == np.int64
        args = (ffi.from_buffer(x), ffi.from_buffer("int64_t[]", index) if wide else NULL,
                NULL if wide else ffi.from_buffer("int32_t[]", index), ffi.from_buffer(out),
                index.size, x.shape[1] * x.itemsize)
        kernel = C_FUNCTIONS[x.dtype].take_rows

        def take_rows(*_):
            kernel(*args)
        return take_rows
