"""The Numba backend: jitted, fused kernels (see _numba_kernels.py, and
_numba_math.py for the vectorisable exp/tanh/log1p/gelu they call).

Each `_name` override receives the arrays the public method has checked, picks
the serial kernel for small inputs (a parallel region costs ~20 us to start) or
the parallel one for large inputs, and passes scalars already converted to the
array dtype. GEMMs stay in BLAS (np.matmul with out=); the kernels fuse what
surrounds them. Kernels compile on first use and are cached on disk.
Kernels not overridden here (init_weights) run the reference implementation.

Threads: with Numba's OpenMP threading layer, GNU OpenMP's default active wait
keeps a worker spinning for milliseconds after each parallel region; BLAS calls
that follow then share the cores with it. That policy belongs to the process
(OMP_WAIT_POLICY, read once as libgomp loads, and PyTorch may share the same
libgomp), so the backend starts Numba on its workqueue layer, whose threads
sleep when idle, unless a layer was chosen (NUMBA_THREADING_LAYER) or the
environment already makes OpenMP passive (_start_threads).
"""

import math
import os

import numba
import numpy as np

from . import _checks as chk
from . import _numba_conv
from . import _numba_dense as D
from . import _numba_kernels as K
from . import _numba_rnn as R
from ._blas import INT32_MAX, blas_on_one_thread, int32_sizes
from ._gemm_conv import GemmConv, is_direct, thread_tiles
from ._range_threads import RangeThreads
from .reference import (
    ACTIVATIONS,
    NEEDS_INPUT,
    GruCache,
    LstmCache,
    NumpyBackend,
    RnnCache,
    dropout_threshold,
)


def _start_threads():
    """Starts Numba's threading layer (once per process; a no-op when started):
    workqueue unless NUMBA_THREADING_LAYER or numba.config chose one, or
    OMP_WAIT_POLICY=PASSIVE makes the OpenMP layer sleep when idle too. Starting
    it now, rather than at the first parallel kernel, fixes the choice before
    a change of NUMBA_* variables could reload numba.config."""
    if (numba.config.THREADING_LAYER == "default"
            and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"):
        numba.config.THREADING_LAYER = "workqueue"
    numba.get_num_threads()


_start_threads()


def _thread_count_function():
    """numba.get_num_threads, as the threading layer's own function (ctypes) once
    started: the public one first takes a process-wide lock (a semaphore), which
    after a kernel, its caches cold, cost 9-25 us of each bound call of the
    recurrent benchmark's LSTM kernels (Zen 4, medians of 300 training steps)."""
    from numba.np.ufunc import parallel
    function = getattr(parallel, "_get_num_threads", None)
    return function if callable(function) else numba.get_num_threads


thread_count = _thread_count_function()

CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
LOSS_CODES = {"squared_error": K.SQUARED, "absolute_error": K.ABSOLUTE, "huber": K.HUBER,
              "hinge": K.HINGE, "sigmoid_binary_cross_entropy": -1}

# Work (elements) from which the parallel kernels pay for their start-up.
PARALLEL_MIN = 1 << 16
# The dense epilogue and prologue sit between GEMMs: BLAS threads are still
# spinning when they start (and Numba's after they end), so a parallel region
# there costs more than it saves unless the work is large.
DENSE_PARALLEL_MIN = 1 << 20
# Elements per block of a row kernel: blocks of whole rows of about this size.
BLOCK_ELEMS = 1 << 14
# Batch norm is memory-bound and its parallel path starts two parallel regions:
# up to this many elements (as the C kernels' MIN_PARALLEL_CHEAP) they cost more
# than the second thread saves. 128 x 1024 float32, 2 threads, forward +
# backward: 0.29 ms parallel, 0.107 ms serial (the C kernels, serial there too:
# 0.12 ms).
BN_PARALLEL_MIN = 1 << 18
# An output of at least this many bytes is written with non-temporal stores
# (_numba_memory.py), as the C kernels' STREAM_BYTES: it would not stay in the
# caches for its reader anyway.
STREAM_BYTES = 4 << 20
# A gather of rows (a shuffled batch) copies bytes: below this size one thread
# (NumPy's take) does it before a parallel region has started.
GATHER_PARALLEL_BYTES = 1 << 20

_EMPTY = {np.dtype(t): (np.empty(0, t), np.empty((0, 0), t)) for t in (np.float32, np.float64)}
_NO_LABELS = np.empty(0, np.int64)


def _rows_per_block(c):
    return max(1, BLOCK_ELEMS // max(c, 1))


def _as_rows(a):
    """2-D view of a contiguous array: (rows, last axis), a vector as one row."""
    return a.reshape(1, -1) if a.ndim < 2 else a.reshape(-1, a.shape[-1])


def _bn_rows_per_block(n):
    """Rows per batch-norm block: at most 16 blocks (each holds a float64 row of
    partial sums), of at least 64 rows; a function of N only, so that results
    do not depend on the thread count."""
    return max(64, -(-n // 16))


def _flat_blocks(threads=None):
    """Blocks of a parallel flat kernel: one per thread (at least two, so that
    the split is exercised even on one thread); threads: Numba's count, if read."""
    return max(2, thread_count() if threads is None else threads)


# A process forked from one that ran a parallel region under GNU OpenMP (Numba's
# omp threading layer) cannot run one itself: Numba terminates it. A forked child
# therefore takes the serial kernels, as the C backend does (csrc/threads.c).
_forked_child = False


def _mark_forked_child():
    global _forked_child
    _forked_child = True


if hasattr(os, "register_at_fork"):  # POSIX only; elsewhere no fork
    os.register_at_fork(after_in_child=_mark_forked_child)


# Multiply-adds of a recurrent call's per-step GEMMs (N T H G*H) from which it
# splits the batch rows over the threads (_run_ranges): higher than the C
# kernels' (csrc/recurrent.c), whose workers spin between calls where these
# sleep, so each call pays for waking one (50-100 us on a 2-vCPU machine).
# Measured (bench/recurrent_split.py, Zen 4, 2 threads, forward + backward, us a
# sequence, split against whole): rnn 16x32x16x64 (2^21) 18.5 against 15.7,
# 32x50x32x64 (2^22.6) 19.7 against 24.8; gru 8x32x8x64 (2^21.6) 51.8 against
# 48.1, 16x32x16x64 (2^22.6) 38.1 against 47.6; lstm 8x32x8x64 (2^22) 51.7
# against 54.4, 16x32x16x64 (2^23) 41.4 against 53.1.
RECURRENT_PARALLEL_MIN = 1 << 22


def _recurrent_bounds(x, W_h):
    """Bounds (parts + 1,) int64 of the ranges of batch rows whose time loops a
    recurrent kernel runs on one thread each (_numba_rnn's *_range), or None to
    run the whole batch on one (little work, one thread, a forked child)."""
    n, steps = x.shape[:2]
    parts = thread_count()
    if _forked_child or parts < 2 or n < parts or n * steps * W_h.size < RECURRENT_PARALLEL_MIN:
        return None
    return np.arange(parts + 1, dtype=np.int64) * n // parts


# threads of their own beside the caller's: the recurrent kernels' ranges of a split
# batch and the optimizers' parts (_bind_recurrent, _run_flat)
_RANGE_THREADS = RangeThreads()


def _dx_buffer(dx, x):
    """dx, or when no dx is wanted (None) an empty (0, T, F) array in its place:
    the jitted backward kernels skip dx's GEMM for an empty dx (x never is)."""
    return np.empty((0, *x.shape[1:]), x.dtype) if dx is None else dx


def _bind_recurrent(whole, ranges, x, W_h, args, typed, result, grads=None, biases=()):
    """A callable running a recurrent kernel: `whole` over the batch on one
    thread, or its *_range twin over the ranges of _recurrent_bounds on the
    caller's thread and _RANGE_THREADS's with BLAS on one thread per call (when
    another caller holds that setting, one range after another on the caller's
    with BLAS's threads: the same results). args: the kernel's own, after the
    BLAS arguments. Each call returns `result`. With grads (dW_x, dW_h) a
    backward: each range sums its own dW_x, dW_h and float64 sums (2, G*H),
    added in range order after, which the bias gradients `biases` (db, or the
    GRU's db_x, db_h) take rounded to the dtype. The workspaces, the
    BLAS arguments and (typed) the compiled code for the arguments' types are
    taken once, for the thread count of the call; another count takes them anew.
    (Bound so in a training step, the recurrent benchmark's step against one
    binding anew at each call, alternating in one process, Zen 4: LSTM 182.2
    against 184.6 us a sequence (medians; first quartiles 168.4 against 174.6),
    SimpleRNN 48.8 against 50.0.)"""
    d, width = x.dtype, W_h.shape[1]

    def make():
        bounds = _recurrent_bounds(x, W_h)
        parts = 1 if bounds is None else bounds.size - 1
        sum_args, finish = (), None
        if grads:  # the ranges' sums and the biases (finish_sums)
            sums = np.empty((parts, 2, width))
            sum_args = (*grads, sums, *(chk.empty((parts - 1, *g.shape), d) for g in grads), biases)
            finish = _typed(R.finish_sums, *sum_args) if typed else R.finish_sums
        if bounds is None:
            blas = R.Blas(d).args()
            tail = (*grads, sums[0]) if grads else ()
            kernel = _typed(whole, blas, *args, *tail) if typed else whole

            def run_whole():
                kernel(blas, *args, *tail)
                if finish is not None:
                    finish(*sum_args)
            return run_whole
        blas, sync = R.Blas(d, parts).args(), _RANGE_THREADS.sync
        tail = sum_args[:-1]
        kernel = _typed(ranges, blas, bounds, 0, False, sync, *args, *tail) if typed else ranges

        def run_range(p):
            kernel(blas, bounds, p, False, sync, *args, *tail)

        def run_worker_range(p):  # (reports itself: _range_threads.leave)
            return kernel(blas, bounds, p, True, sync, *args, *tail)

        def run_ranges():
            with blas_on_one_thread() as alone:
                if alone:
                    _RANGE_THREADS.run(run_range, parts, run_worker_range)
                else:
                    for p in range(parts):
                        run_range(p)
            if finish is not None:
                finish(*sum_args)
        return run_ranges

    bound_for, run = None, None

    def recurrent(*_):
        nonlocal bound_for, run
        now = (thread_count(), _forked_child)
        if now != bound_for:
            bound_for, run = now, make()
        run()
        return result
    return recurrent


def _parallel(size, dense=False):
    """Whether a kernel over `size` elements takes its parallel path (thresholds
    read at each call, so that tests can move them); never in a forked child."""
    return not _forked_child and size >= (DENSE_PARALLEL_MIN if dense else PARALLEL_MIN)


def _run_flat(range_kernel, *args):
    """range_kernel(sync, p, parts, *args) for the parts of a flat kernel (K's
    *_range twins of the *_block kernels, over equal slices of their arrays): one
    part per thread, on the caller's thread and _RANGE_THREADS's, which hand a
    job to a worker still spinning in microseconds where a prange region wakes
    Numba's workers (Adam over 2^18 float32 elements, Zen 4, 2 threads, calls
    back to back: 55 us in parts, 77 serial; the recurrent benchmark's step of
    82.6K parameters took 217-289 us in a prange region). With one thread, the
    parts of _flat_blocks one after another (the split exercised all the same)."""
    threads, sync = thread_count(), _RANGE_THREADS.sync
    parts = _flat_blocks(threads)
    if threads < 2:
        for p in range(parts):
            range_kernel(sync, p, False, parts, *args)
    else:
        _RANGE_THREADS.run(lambda p: range_kernel(sync, p, False, parts, *args), parts,
                           lambda p: range_kernel(sync, p, True, parts, *args))


def _typed(kernel, *args):
    """The compiled code of jitted `kernel` for arguments of the types of `args`
    (compiled or loaded from the cache if needed): called with arguments of
    those types, it skips the dispatcher's resolution of their types, about
    half of a call's ~1 us. Only for a caller whose argument types cannot change
    (a bound step: its arrays are fixed, its scalars converted by it)."""
    return kernel.compile(tuple(numba.typeof(a) for a in args))


class NumbaBackend(GemmConv, NumpyBackend):
    name = "numba"

    def _set_num_threads(self, n):
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))

    # -------------------------------------------------------------- activations
    def _act_tiles(self, rows, activation):
        """Tile sizes (rows, columns) for the parallel activation kernels: softmax
        needs whole rows, elementwise activations may split long rows."""
        n, c = rows.shape
        if activation == "softmax":
            return _rows_per_block(c), c
        cols = min(c, BLOCK_ELEMS)
        return max(1, BLOCK_ELEMS // cols), cols

    def _activation_forward(self, x, activation, out):
        if x.size == 0:  # the reference's behaviour, errors included
            return super()._activation_forward(x, activation, out)
        code = CODES[activation]
        x2, out2 = _as_rows(x), _as_rows(out)
        if _parallel(x.size):
            K.act_forward_parallel(code, x2, out2, *self._act_tiles(x2, activation))
        else:
            K.act_forward_tile(code, x2, out2, 0, x2.shape[0], 0, x2.shape[1])

    def _activation_backward(self, dy, y, activation, x, out):
        if y.size == 0:
            return super()._activation_backward(dy, y, activation, x, out)
        code = CODES[activation]
        dy2, y2, out2 = _as_rows(dy), _as_rows(y), _as_rows(out)
        x2 = _as_rows(x) if activation in NEEDS_INPUT else y2
        if _parallel(y.size):
            K.act_backward_parallel(code, dy2, y2, x2, out2, *self._act_tiles(y2, activation))
        else:
            K.act_backward_tile(code, dy2, y2, x2, out2, 0, y2.shape[0], 0, y2.shape[1])

    # -------------------------------------------------------------------- dense
    # A kernel with a _bind_ method is that method's result called once; a
    # training step bound to its arrays (backend.fast.bind) keeps the result,
    # which calls the jitted kernels' compiled code for the bound arrays' types
    # directly (_typed: no dispatcher resolving the types at each call).
    def _dense_forward(self, x, W, b, activation, out, preact):
        self._bind_dense_forward(x, W, b, activation, out, preact, typed=False)()

    def _bind_dense_forward(self, x, W, b, activation, out, preact, typed=True):
        matmul = np.matmul
        if out.size == 0:
            def empty_forward(*_):
                matmul(x, W, out=out)
                if preact is not None:
                    preact[...] = out
            return empty_forward
        empty1, empty2 = _EMPTY[out.dtype]
        b = empty1 if b is None else b
        preact = empty2 if preact is None else preact
        if D.small(x, W, out):
            args = (D.BLAS[out.dtype], CODES[activation], x, W, b, preact, out)
            kernel = _typed(D.dense_forward, *args) if typed else D.dense_forward
            return lambda *_: kernel(*args)
        if activation == "identity" and not b.size and not preact.size:
            return lambda *_: matmul(x, W, out=out)
        n, c = out.shape
        args = (CODES[activation], out, b, preact)
        rows = _typed(K.bias_act_rows, *args, 0, n) if typed else K.bias_act_rows
        size, per_block = out.size, _rows_per_block(c)

        def dense_forward(*_):
            matmul(x, W, out=out)
            if _parallel(size, dense=True):
                K.bias_act_parallel(*args, per_block)
            else:
                rows(*args, 0, n)
        return dense_forward

    def _dense_backward(self, dy, x, W, y, activation, preact, dx, dW, db, dz):
        self._bind_dense_backward(dy, x, W, y, activation, preact, dx, dW, db, dz, typed=False)()

    def _bind_dense_backward(self, dy, x, W, y, activation, preact, dx, dW, db, dz, typed=True):
        if dy.size == 0:
            return lambda *_: NumpyBackend._dense_backward(self, dy, x, W, y, activation, preact, dx, dW,
                                                           db, dz)
        if activation == "identity":
            dz = dy  # nothing to write: the kernel only sums dy into db
        if preact is None:
            preact = y
        args = (CODES[activation], dy, y, preact, dz, db, _rows_per_block(dy.shape[1]))
        if D.small(x, W, dz, dW, *(() if dx is None else (dx,))):
            fused = (D.BLAS[dW.dtype], *args, x, W, dW, _EMPTY[dW.dtype][1] if dx is None else dx)
            kernel = _typed(D.dense_backward, *fused) if typed else D.dense_backward
            return lambda *_: kernel(*fused)
        serial = _typed(K.act_grad_colsum_serial, *args) if typed else K.act_grad_colsum_serial
        matmul, xT, WT, size = np.matmul, x.T, W.T, dy.size

        def dense_backward(*_):
            if _parallel(size, dense=True):
                K.act_grad_colsum_parallel(*args)
            else:
                serial(*args)
            matmul(xT, dz, out=dW)
            if dx is not None:
                matmul(dz, WT, out=dx)
        return dense_backward

    # ------------------------------------------------------------------- losses
    @staticmethod
    def _weights(w, n, dtype):
        """(w or an empty array, 1 / sum(w) or 1 / N) for the loss kernels."""
        if w is None:
            return _EMPTY[dtype][0], 1.0 / max(n, 1)
        return w, 1.0 / float(w.sum(dtype=np.float64))

    def _softmax_cross_entropy(self, logits, targets, w, grad):
        return self._bind_softmax_cross_entropy(logits, targets, w, grad, typed=False)()

    def _bind_softmax_cross_entropy(self, logits, targets, w, grad, typed=True):
        n, c = logits.shape
        if logits.size == 0:
            return lambda *_: NumpyBackend._softmax_cross_entropy(self, logits, targets, w, grad)
        if targets.ndim == 1:
            labels, probs = targets, _EMPTY[logits.dtype][1]
        else:
            labels, probs = _NO_LABELS, targets
        weights = _EMPTY[logits.dtype][0] if w is None else w
        args = (logits, labels, probs, weights)
        per_block, size = _rows_per_block(c), logits.size
        serial = _typed(K.softmax_ce_serial, *args, 1.0, grad, per_block) if typed else K.softmax_ce_serial

        def softmax_cross_entropy(*_):
            inv_total = self._weights(w, n, logits.dtype)[1]  # w's values change between calls
            run = K.softmax_ce_parallel if _parallel(size) else serial
            return run(*args, inv_total, grad, per_block)
        return softmax_cross_entropy

    def _elementwise_loss(self, kind, pred, targets, w, grad, delta=1.0):
        if pred.size == 0:
            return None
        p2, t2, g2 = _as_column_rows(pred), _as_column_rows(targets), _as_column_rows(grad)
        w, inv_total = self._weights(w, p2.shape[0], pred.dtype)
        run = K.loss_parallel if _parallel(pred.size) else K.loss_serial
        return run(LOSS_CODES[kind], p2, t2, w, inv_total, g2, delta, _rows_per_block(p2.shape[1]))

    def _sigmoid_binary_cross_entropy(self, logits, targets, w, grad):
        loss = self._elementwise_loss("sigmoid_binary_cross_entropy", logits, targets, w, grad)
        if loss is None:
            return super()._sigmoid_binary_cross_entropy(logits, targets, w, grad)
        return loss

    def _squared_error(self, pred, targets, w, grad):
        loss = self._elementwise_loss("squared_error", pred, targets, w, grad)
        return super()._squared_error(pred, targets, w, grad) if loss is None else loss

    def _absolute_error(self, pred, targets, w, grad):
        loss = self._elementwise_loss("absolute_error", pred, targets, w, grad)
        return super()._absolute_error(pred, targets, w, grad) if loss is None else loss

    def _huber(self, pred, targets, w, grad, delta):
        loss = self._elementwise_loss("huber", pred, targets, w, grad, delta)
        return super()._huber(pred, targets, w, grad, delta) if loss is None else loss

    def _hinge(self, scores, targets, w, grad):
        loss = self._elementwise_loss("hinge", scores, targets, w, grad)
        return super()._hinge(scores, targets, w, grad) if loss is None else loss

    # ------------------------------------------------------------ normalisation
    def _batchnorm_forward(self, x, gamma, beta, running_mean, running_var, training,
                           momentum, eps, out, mean, invstd):
        parallel = _parallel(x.size) and x.size > BN_PARALLEL_MIN
        run = K.batchnorm_forward_parallel if parallel else K.batchnorm_forward_serial
        run(x, gamma, beta, running_mean, running_var, training, momentum, eps, out, mean, invstd,
            _bn_rows_per_block(x.shape[0]), out.nbytes >= STREAM_BYTES)

    def _batchnorm_backward(self, dy, cache, dx, dgamma, dbeta):
        x, mean, invstd, gamma, training = cache
        parallel = _parallel(x.size) and x.size > BN_PARALLEL_MIN
        run = K.batchnorm_backward_parallel if parallel else K.batchnorm_backward_serial
        run(dy, x, mean, invstd, gamma, bool(training), dx, dgamma, dbeta,
            _bn_rows_per_block(x.shape[0]))

    # ------------------------------------------------------------------ dropout
    def _dropout_forward(self, x, rate, seed, out):
        xf, of = x.reshape(-1), out.reshape(-1)
        threshold = np.uint64(dropout_threshold(rate))
        scale = x.dtype.type(1.0 / (1.0 - rate))
        if _parallel(x.size):
            K.dropout_parallel(xf, of, threshold, np.uint64(seed), scale, _flat_blocks())
        else:
            K.dropout_block(xf, of, threshold, np.uint64(seed), scale, 0)

    def _dropout_backward(self, dy, rate, seed, out):
        self._dropout_forward(dy, rate, seed, out)  # the same mask and scale

    # ----------------------------------------------------------- regularisation
    def _weight_penalty(self, param, grad, l2, l1):
        dt = param.dtype.type
        pf, gf = param.reshape(-1), grad.reshape(-1)
        run = K.penalty_parallel if _parallel(param.size) else K.penalty_serial
        return run(pf, gf, dt(l2), dt(l1))

    # --------------------------------------------------------------- optimizers
    @staticmethod
    def _flat(*arrays):
        return tuple(a if a.ndim == 1 else a.reshape(-1) for a in arrays)  # a view costs ~0.4 us

    def _sgd_step(self, param, grad, velocity, lr, momentum, nesterov, weight_decay,
                  lr_in_velocity):
        dt = param.dtype.type
        p, g, v = self._flat(param, grad, param if velocity is None else velocity)
        args = (p, g, v, dt(lr), dt(momentum), nesterov, dt(weight_decay), lr_in_velocity)
        if _parallel(param.size):
            _run_flat(K.sgd_range, *args)
        else:
            K.sgd_block(*args)

    def _adagrad_step(self, param, grad, sum_sq, lr, eps, weight_decay):
        dt = param.dtype.type
        args = self._flat(param, grad, sum_sq) + (dt(lr), dt(eps), dt(weight_decay))
        if _parallel(param.size):
            _run_flat(K.adagrad_range, *args)
        else:
            K.adagrad_block(*args)

    def _rmsprop_step(self, param, grad, square_avg, lr, alpha, eps, weight_decay, momentum,
                      momentum_buf, grad_avg):
        dt = param.dtype.type
        buf = param if momentum_buf is None else momentum_buf
        avg = param if grad_avg is None else grad_avg
        args = self._flat(param, grad, square_avg) + (dt(lr), dt(alpha), dt(1 - alpha), dt(eps),
                                                      dt(weight_decay), dt(momentum))
        args += self._flat(buf, avg) + (momentum_buf is not None, grad_avg is not None)
        if _parallel(param.size):
            _run_flat(K.rmsprop_range, *args)
        else:
            K.rmsprop_block(*args)

    def _adadelta_step(self, param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay):
        dt = param.dtype.type
        args = self._flat(param, grad, square_avg, acc_delta) + (dt(lr), dt(rho), dt(1 - rho),
                                                                 dt(eps), dt(weight_decay))
        if _parallel(param.size):
            _run_flat(K.adadelta_range, *args)
        else:
            K.adadelta_block(*args)

    def _adam_step(self, param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled,
                   v_max):
        self._bind_adam_step(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled,
                             v_max, typed=False)(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay,
                                                 decoupled)

    def _bind_adam_step(self, param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled,
                        v_max, typed=True):
        # what a bound step (backend.fast.bind) takes once: the flat views, and the
        # dtype constants of the last options (a few us a step on a small model)
        dt = param.dtype.type
        amsgrad = v_max is not None
        arrays = self._flat(param, grad, m, v, v_max if amsgrad else param)
        size = param.size
        constants = {}
        block = _typed(K.adam_block, *arrays, *[dt(0)] * 9, amsgrad) if typed else K.adam_block
        ranges = (_typed(K.adam_range, _RANGE_THREADS.sync, 0, False, 2, *arrays, *[dt(0)] * 9, amsgrad)
                  if typed and _parallel(size) else K.adam_range)

        def adam_step(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled, v_max=None):
            # (eps changes at every step where it is placed as scikit-learn does)
            options = (lr, beta1, beta2, weight_decay, decoupled)
            fixed = constants.get(options)
            if fixed is None:
                decay = dt(1 - lr * weight_decay) if decoupled and weight_decay else dt(1)
                l2 = dt(0) if decoupled else dt(weight_decay)
                if len(constants) > 8:  # a schedule's rates: keep the last few
                    constants.clear()
                fixed = constants[options] = (dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2), l2, decay)
            step = dt(lr / (1 - beta1**t))
            inv_sqrt_bias2 = dt(1 / math.sqrt(1 - beta2**t))
            b1, r1, b2, r2, l2, decay = fixed
            if _parallel(size):
                _run_flat(ranges, *arrays, step, b1, r1, b2, r2, inv_sqrt_bias2, dt(eps), l2, decay,
                          amsgrad)
            else:
                block(*arrays, step, b1, r1, b2, r2, inv_sqrt_bias2, dt(eps), l2, decay, amsgrad)
        return adam_step

    # -------------------------------------------------------------- convolution
    # conv2d_forward/backward: one jitted call each, the C kernels' plan (images
    # split between the threads, each range in tiles, BLAS on one thread:
    # _numba_conv.conv_*_tiles; for few channels, _gemm_conv.is_direct,
    # _numba_conv.direct_* without im2col or BLAS), or for an empty batch or sizes beyond 32-bit
    # BLAS integers im2col, the dense kernels, col2im (_gemm_conv.py); the
    # loops in _numba_conv.py, parallel over the images of large batches.
    def _conv_tiles(self, x, W, oh, ow):
        """(tile, parts) of conv_forward_tiles / conv_backward_tiles (the C
        kernels' plan), or None when a BLAS size would not fit 32 bits or the
        batch is empty (then GemmConv's path)."""
        kh, kw, c, o = W.shape
        k = kh * kw * c
        if x.shape[0] == 0 or oh * ow * max(k, o) > INT32_MAX or k * o > INT32_MAX:
            return None
        threads = thread_count() if _parallel(x.shape[0] * oh * ow * k * o) else 1
        return thread_tiles(x.shape[0], oh * ow * k * x.itemsize, threads)

    @staticmethod
    def _pointwise(W, stride, padding):
        return int(W.shape[:2] == (1, 1) and stride == (1, 1) and padding == (0, 0))

    def _direct_parts(self, x, W, out_shape):
        """Ranges of images of the direct convolution: one per thread for large work."""
        work = x.shape[0] * out_shape[1] * out_shape[2] * W.size
        return max(1, min(x.shape[0], thread_count() if _parallel(work) else 1))

    def _conv2d_forward(self, x, W, b, stride, padding, activation, out, preact):
        if is_direct(W, stride, padding):
            o = W.shape[3]
            empty1, empty2 = _EMPTY[x.dtype]
            return _numba_conv.direct_forward(
                CODES[activation], x, W, empty1 if b is None else b,
                empty2 if preact is None else preact.reshape(-1, o), out.reshape(-1, o),
                self._direct_parts(x, W, out.shape), *stride, *padding)
        (_, oh, ow, o), k = out.shape, W.shape[0] * W.shape[1] * W.shape[2]
        plan = self._conv_tiles(x, W, oh, ow)
        if plan is None:
            return super()._conv2d_forward(x, W, b, stride, padding, activation, out, preact)
        tile, parts = plan
        empty1, empty2 = _EMPTY[x.dtype]
        cols = self._conv_workspace(("tiles", "cols"), (parts, tile * oh * ow, k), x.dtype)
        with blas_on_one_thread() as alone:
            _numba_conv.conv_forward_tiles(
                R.Blas(x.dtype, parts).args(), CODES[activation], x, W.reshape(k, o),
                empty1 if b is None else b,
                empty2 if preact is None else preact.reshape(-1, o), out.reshape(-1, o), cols, tile,
                parts if alone else 1, *W.shape[:2], *stride, *padding, oh, ow,
                self._pointwise(W, stride, padding))

    def _conv2d_backward(self, dy, x, W, y, activation, stride, padding, preact, dx, dW, db, dz):
        if is_direct(W, stride, padding):
            o = W.shape[3]
            dz = dy if dz is None else dz  # identity: not written
            preact = y if preact is None else preact  # read for gelu only
            return _numba_conv.direct_backward(
                CODES[activation], dy.reshape(-1, o), x, W, y.reshape(-1, o), preact.reshape(-1, o),
                dz.reshape(-1, o), np.empty((0,) + x.shape[1:], x.dtype) if dx is None else dx, dW,
                db, self._direct_parts(x, W, dy.shape), *stride, *padding)
        (_, oh, ow, o), k = dy.shape, W.shape[0] * W.shape[1] * W.shape[2]
        plan = self._conv_tiles(x, W, oh, ow)
        if plan is None:
            return super()._conv2d_backward(dy, x, W, y, activation, stride, padding, preact, dx,
                                            dW, db, dz)
        tile, parts = plan
        work = self._conv_workspace
        cols = work(("tiles", "cols"), (parts, tile * oh * ow, k), x.dtype)
        dcols = work(("tiles", "dcols"), (parts, tile * oh * ow, k), x.dtype)
        partials = work(("tiles", "dW"), (parts, k, o), x.dtype)

        def rows(a):
            return a.reshape(-1, o)
        dz = dy if dz is None else dz  # identity: not written
        preact = y if preact is None else preact  # read for gelu only
        with blas_on_one_thread() as alone:
            _numba_conv.conv_backward_tiles(
                R.Blas(x.dtype, parts).args(), CODES[activation], rows(dy), x, W.reshape(k, o), rows(y),
                rows(preact), rows(dz), np.empty((0,) + x.shape[1:], x.dtype) if dx is None else dx,
                dW.reshape(k, o), db, cols, dcols, partials, tile, parts if alone else 1,
                *W.shape[:2], *stride, *padding, oh, ow, self._pointwise(W, stride, padding))

    def _im2col(self, x, kh, kw, stride, padding, cols):
        oh = (x.shape[1] + 2 * padding[0] - kh) // stride[0] + 1
        ow = (x.shape[2] + 2 * padding[1] - kw) // stride[1] + 1
        args = (x, kh, kw, *stride, *padding, oh, ow, cols)
        if _parallel(cols.size):
            _numba_conv.im2col_parallel(*args)
        else:
            _numba_conv.im2col_images(*args, 0, x.shape[0])

    def _col2im(self, dcols, kh, kw, stride, padding, dx):
        oh = (dx.shape[1] + 2 * padding[0] - kh) // stride[0] + 1
        ow = (dx.shape[2] + 2 * padding[1] - kw) // stride[1] + 1
        args = (dcols, kh, kw, *stride, *padding, oh, ow, dx)
        if _parallel(dcols.size):
            _numba_conv.col2im_parallel(*args)
        else:
            _numba_conv.col2im_images(*args, 0, dx.shape[0])

    def _maxpool2d_forward(self, x, pool, stride, padding, out, argmax):
        args = (x, *pool, *stride, *padding, out, argmax)
        if _parallel(x.size):
            _numba_conv.maxpool_parallel(*args)
        else:
            _numba_conv.maxpool_images(*args, 0, x.shape[0])

    def _maxpool2d_backward(self, dy, argmax, dx):
        if _parallel(dx.size):
            _numba_conv.maxpool_backward_parallel(dy, argmax, dx)
        else:
            _numba_conv.maxpool_backward_images(dy, argmax, dx, 0, dx.shape[0])

    def _avgpool2d_forward(self, x, pool, stride, padding, out):
        args = (x, *pool, *stride, *padding, out)
        if _parallel(x.size):
            _numba_conv.avgpool_parallel(*args)
        else:
            _numba_conv.avgpool_images(*args, np.empty(x.shape[3]), 0, x.shape[0])

    def _avgpool2d_backward(self, dy, pool, stride, padding, dx):
        args = (dy, *pool, *stride, *padding, dy.dtype.type(pool[0] * pool[1]), dx)
        if _parallel(dx.size):
            _numba_conv.avgpool_backward_parallel(*args)
        else:
            _numba_conv.avgpool_backward_images(*args, 0, dx.shape[0])

    # --------------------------------------------------------------- recurrence
    # The whole time loop of each kernel is one jitted function (_numba_rnn.py),
    # run by _bind_recurrent, which splits the batch over the threads when the
    # work is large. Each _bind_ takes the small workspaces (zero initial states,
    # z rows, the bias sums) once, as the C backend's: a backward writes its
    # gradients into the arrays it was given; the unbound kernels bind anew at
    # each call. Sizes beyond 32-bit BLAS integers, and empty sequences, take
    # the reference.
    def _rnn_forward(self, x, h0, W_x, W_h, b, activation, hs):
        return self._bind_rnn_forward(x, h0, W_x, W_h, b, activation, hs, typed=False)()

    def _bind_rnn_forward(self, x, h0, W_x, W_h, b, activation, hs, typed=True):
        n, hidden = x.shape[0], W_h.shape[0]
        if not int32_sizes(x, W_h):
            reference = super()._rnn_forward
            return lambda *_: reference(x, h0, W_x, W_h, b, activation, hs)
        e, d = chk.empty, x.dtype
        h0 = chk.zeros((n, hidden), d) if h0 is None else h0
        args = (x, h0, W_x, W_h, b, activation == "relu", hs, e(h0.shape, d))
        return _bind_recurrent(R.rnn_forward, R.rnn_forward_range, x, W_h, args, typed,
                               (hs, RnnCache(x, h0, W_x, W_h, hs, activation)))

    def _rnn_backward(self, dhs, cache, dx, dz, *grads):
        self._bind_rnn_backward(dhs, cache, dx, dz, *grads, typed=False)()

    def _bind_rnn_backward(self, dhs, cache, dx, dz, dh0, dW_x, dW_h, db, typed=True):
        x, h0, W_x, W_h, hs, activation = cache
        if not int32_sizes(x, W_h):
            reference = super()._rnn_backward
            return lambda *_: reference(dhs, cache, dx, dz, dh0, dW_x, dW_h, db)
        args = (dhs, x, h0, W_x, W_h, hs, activation == "relu", _dx_buffer(dx, x), dh0, dz)
        return _bind_recurrent(R.rnn_backward_rows, R.rnn_backward_range, x, W_h, args, typed, None,
                               (dW_x, dW_h), (db,))

    def _lstm_forward(self, x, h0, c0, W_x, W_h, b, return_sequences, hs, cs, gates):
        return self._bind_lstm_forward(x, h0, c0, W_x, W_h, b, return_sequences, hs, cs, gates,
                                       typed=False)()

    def _bind_lstm_forward(self, x, h0, c0, W_x, W_h, b, return_sequences, hs, cs, gates, typed=True):
        n, hidden = x.shape[0], W_h.shape[0]
        if not int32_sizes(x, W_h):
            reference = super()._lstm_forward
            return lambda *_: reference(x, h0, c0, W_x, W_h, b, return_sequences, hs, cs, gates)
        e, d = chk.empty, x.dtype
        h0 = chk.zeros((n, hidden), d) if h0 is None else h0
        c0 = chk.zeros((n, hidden), d) if c0 is None else c0
        # (hs (N, 1, H) without return_sequences: the kernel keeps the last state)
        args = (x, h0, c0, W_x, W_h, b, hs, cs, gates, e((n, 4 * hidden), d))
        return _bind_recurrent(R.lstm_forward, R.lstm_forward_range, x, W_h, args, typed,
                               (hs, LstmCache(x, h0, c0, W_x, W_h, hs, cs, gates)))

    def _lstm_backward(self, dhs, cache, dx, dz, *grads):
        self._bind_lstm_backward(dhs, cache, dx, dz, *grads, typed=False)()

    def _bind_lstm_backward(self, dhs, cache, dx, dz, dh0, dc0, dW_x, dW_h, db, typed=True):
        x, h0, c0, W_x, W_h, hs, cs, gates = cache
        if not int32_sizes(x, W_h):
            reference = super()._lstm_backward
            return lambda *_: reference(dhs, cache, dx, dz, dh0, dc0, dW_x, dW_h, db)
        n, hidden, d = x.shape[0], W_h.shape[0], x.dtype
        # the rows' tc and hp, and the zeros of a last-state-only dhs (N, 1, H)
        args = (dhs, x, h0, c0, W_x, W_h, cs, gates, _dx_buffer(dx, x), dh0, dc0, dz,
                chk.empty((n, 2, hidden), d), chk.zeros(hidden, d))
        return _bind_recurrent(R.lstm_backward_rows, R.lstm_backward_range, x, W_h, args, typed, None,
                               (dW_x, dW_h), (db,))

    def _gru_forward(self, x, h0, W_x, W_h, b_x, b_h, hs, gates, hn):
        return self._bind_gru_forward(x, h0, W_x, W_h, b_x, b_h, hs, gates, hn, typed=False)()

    def _bind_gru_forward(self, x, h0, W_x, W_h, b_x, b_h, hs, gates, hn, typed=True):
        n, hidden = x.shape[0], W_h.shape[0]
        if not int32_sizes(x, W_h):
            reference = super()._gru_forward
            return lambda *_: reference(x, h0, W_x, W_h, b_x, b_h, hs, gates, hn)
        e, d = chk.empty, x.dtype
        h0 = chk.zeros((n, hidden), d) if h0 is None else h0
        args = (x, h0, W_x, W_h, b_x, b_h, hs, gates, hn, e((n, 3 * hidden), d))
        return _bind_recurrent(R.gru_forward, R.gru_forward_range, x, W_h, args, typed,
                               (hs, GruCache(x, h0, W_x, W_h, hs, gates, hn)))

    def _gru_backward(self, dhs, cache, dx, dz, *grads):
        self._bind_gru_backward(dhs, cache, dx, dz, *grads, typed=False)()

    def _bind_gru_backward(self, dhs, cache, dx, dz, dh0, dW_x, dW_h, db_x, db_h, typed=True):
        x, h0, W_x, W_h, hs, gates, hn = cache
        if not int32_sizes(x, W_h):
            reference = super()._gru_backward
            return lambda *_: reference(dhs, cache, dx, dz, dh0, dW_x, dW_h, db_x, db_h)
        args = (dhs, x, h0, W_x, W_h, hs, gates, hn, _dx_buffer(dx, x), dh0, dz,
                chk.empty((x.shape[0], W_h.shape[1]), x.dtype))
        return _bind_recurrent(R.gru_backward_rows, R.gru_backward_range, x, W_h, args, typed, None,
                               (dW_x, dW_h), (db_x, db_h))

    # ---------------------------------------------------------------- embedding
    def _embedding_forward(self, tokens, W, out):
        R.embedding_forward(tokens, W, out)

    def _embedding_backward(self, dy, tokens, dW):
        R.embedding_backward(dy, tokens, dW)

    # --------------------------------------------------------------- row gather
    def _take_rows(self, x, index, out):
        # (the thread count asked only for a large batch)
        parts = thread_count() if out.nbytes >= GATHER_PARALLEL_BYTES and not _forked_child else 1
        if 1 < parts <= index.size:
            K.take_rows_parallel(x, index, out, parts)
        else:  # NumPy's take copies rows faster than a jitted loop (Zen 4, batch 200
            # of 54 float32: 3.1 against 4.1 us; of 784: 81 against 101 us)
            super()._take_rows(x, index, out)

    def _bind_take_rows(self, x, index, out):
        if out.nbytes >= GATHER_PARALLEL_BYTES:
            return lambda *_: self._take_rows(x, index, out)
        take = np.take  # mode "clip": the indices are valid, and "raise" would buffer the output
        return lambda *_: take(x, index, axis=0, out=out, mode="clip")


def _as_column_rows(a):
    """(N, K) view of a loss argument: a vector of N samples is N rows of 1."""
    return a.reshape(-1, 1) if a.ndim == 1 else a.reshape(a.shape[0], -1)
