"""The training loop of `Sequential`: batches, epochs and divergence.

`train_epoch` runs one pass over prepared data in a given order; `Sequential.fit`
and the scikit-learn estimators both train through it (they differ only in how
they order the samples and when they stop). A batch is rows of the data: views
when the order is the data's own, else gathered into buffers kept per batch
size; CSR input is densified batch by batch.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import NamedTuple, Optional

import numpy as np
import scipy.sparse as sp

from ..backends import _checks as chk


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite; the model keeps finite parameters.

    See `Sequential.fit` for what happens to the parameters and the optimizer
    state.

    Parameters
    ----------
    message : str
        What happened.
    epoch : int, optional
        The epoch (counted from 1).
    step : int, optional
        The step in the epoch (counted from 1).
    loss : float, optional
        The loss.

    Examples
    --------
    >>> from fastnn import nn
    >>> error = nn.TrainingDivergedError("the loss became nan", epoch=3, step=7, loss=float("nan"))
    >>> error.epoch, error.step
    (3, 7)
    """

    def __init__(self, message: str, epoch: Optional[int] = None, step: Optional[int] = None,
                 loss: Optional[float] = None) -> None:
        super().__init__(message)
        self.epoch, self.step, self.loss = epoch, step, loss


class NonFiniteLoss(Exception):
    """Raised inside a step, before the update, when its loss is not finite."""

    def __init__(self, loss):
        self.loss = loss


SMALL = 512  # elements: below this, all_finite and labels_in_range look at the values in Python

# NumPy's reductions themselves: a.max() and a.min() call them through Python
_largest, _smallest = np.maximum.reduce, np.minimum.reduce


def all_finite(a):
    """Whether every element of a float array is finite: whether its largest and
    smallest are (NaN propagates through both, +inf is the largest, -inf the
    smallest). Two passes NumPy vectorises, with no (N, d) mask allocated and
    nothing to overflow, where a sum can (a train_step's check of the LSTM
    benchmark's 64 x 50 x 32 float32 batch, Zen 4: 14 against 28 us warm, 28
    against 50 with caches cold, for a finite sum under np.errstate). A small
    array first by the sum of its values as Python floats, finite when every
    value is (NaN and infinity carry through; an overflow of finite values
    leaves it to the reductions), no warning raised: one call of NumPy's in
    place of two reductions (a (64, 1) float32 target, caches cold after the
    recurrent benchmark's kernels: 7 against 18 us)."""
    if a.size <= SMALL and math.isfinite(sum(a.reshape(-1).tolist())):
        return True
    return a.size == 0 or (math.isfinite(_largest(a, None)) and math.isfinite(_smallest(a, None)))


def all_finite_by_dot(a):
    """all_finite of a C-contiguous float32 or float64 array in one pass where it
    can: the dot of `a` with itself is finite only when every element is, NaN
    and infinity carrying through the squares and their sum; when it is not,
    all_finite tells a non-finite element from a sum of squares that
    overflowed. SciPy's BLAS ?dot, which raises no warning of an overflow
    (NumPy's dot does). Call it inside blas_scope (not NO_SCOPE): the dot of a
    large array would otherwise start the BLAS's threads. (The recurrent
    benchmark's train_step checks its 64 x 50 x 32 float32 batch's copy so:
    19 us less a step than by the two reductions, caches cold after the
    kernels.)"""
    dot = _blas_dot(a.dtype)
    if dot is None or not 0 < a.size < 2**31:  # (the BLAS's integers are 32-bit)
        return all_finite(a)
    flat = a.reshape(-1)
    return math.isfinite(dot(flat, flat)) or all_finite(a)


@functools.cache
def _blas_dot(dtype):
    """scipy.linalg.blas's sdot or ddot for `dtype`, else None; imported at the
    first call (not with fastnn)."""
    from scipy.linalg import blas

    return {np.dtype(np.float32): blas.sdot, np.dtype(np.float64): blas.ddot}.get(dtype)


def batch_buffer(buffers, key, rows, a):
    """buffers[key], the buffer of `rows` rows of `a`: made when missing, or anew
    when its shape or dtype is not theirs (the targets of one batch shape can
    be class labels at one call and class probabilities at the next)."""
    buf = buffers.get(key)
    if buf is None or buf.dtype != a.dtype or buf.shape != (rows,) + a.shape[1:]:
        buf = buffers[key] = chk.empty((rows,) + a.shape[1:], a.dtype)
    return buf


def take_rows(a, lo, hi, order, buffers, key, copy=False):
    """Rows lo:hi of `a` in `order` (None: the data's own order) as a C-contiguous
    array: a view of dense data in its own order (with copy=True a copy in
    buffers[key]), else `a`'s rows gathered (CSR rows densified) into
    buffers[key], allocated once per batch size. (A step bound to its arrays, see
    plan.py, needs the same array objects step after step: buffers or all of `a`.)"""
    if a is None:
        return None
    sparse = type(a) is not np.ndarray and sp.issparse(a)
    if order is None and not sparse and copy:
        buf = batch_buffer(buffers, key, hi - lo, a)
        # (an assignment, not np.copyto and its dispatch: 5 us less a train_step
        # of the recurrent benchmark, which copies its batch's X and y, caches cold)
        buf[...] = a[lo:hi]
        return buf
    if order is None and not sparse:
        # all of `a`: itself, not a new view per call (a kernel's memo of its last
        # arguments then recognises it step after step, see backends.spec)
        return a if lo == 0 and hi == a.shape[0] else a[lo:hi]
    buf = batch_buffer(buffers, key, hi - lo, a)
    if sparse:
        part = a[lo:hi] if order is None else a[order[lo:hi]]
        part.toarray(out=buf)
    else:
        # mode="clip": the indices are valid, and "raise" would buffer the output
        np.take(a, order[lo:hi], axis=0, out=buf, mode="clip")
    return buf


class RowGather:
    """Shuffled batches of dense data gathered by the backend's take_rows kernel,
    bound once per (array, batch buffer): each batch copies its slice of the
    order into the bound index buffer and runs the bound kernel (C: the rows
    copied in parallel and prefetched; NumPy's take: one thread, 99 us for a
    (256, 784) float32 batch of 20000 rows on a Zen 4). Made per fit (binding
    costs about 10 us), so that nothing binds the caller's data beyond it.
    Other data (CSR, integer labels, the data's own order) goes to take_rows.
    The kernel bound does not check the indices: `order` must be a permutation
    of the rows (the fit's own)."""

    def __init__(self, backend):
        self.backend = backend
        self.bound = {}  # (id of the batch buffer) -> (array, index buffer, bound kernel)

    def __call__(self, a, lo, hi, order, buffers, key, copy=False):
        if (order is None or a is None or type(a) is not np.ndarray or a.dtype.kind != "f"
                or a.ndim == 0 or order.dtype not in (np.int64, np.int32)):
            return take_rows(a, lo, hi, order, buffers, key, copy)
        buf = batch_buffer(buffers, key, hi - lo, a)
        entry = self.bound.get(id(buf))
        if entry is None or entry[0] is not a or entry[1].dtype != order.dtype:
            index = np.empty(hi - lo, order.dtype)
            # (N, D) and (B, D) views: the kernel's rows are whole samples
            run = self.backend.fast.bind("take_rows", a.reshape(a.shape[0], -1), index,
                                         buf.reshape(hi - lo, -1))
            if run is None:  # not C-contiguous, or the like
                return take_rows(a, lo, hi, order, buffers, key, copy)
            entry = self.bound[id(buf)] = (a, index, run, buf)  # buf kept: its id stays its own
        index = entry[1]
        index[...] = order[lo:hi]
        entry[2]()
        return buf


def layers_of(layers):
    """The layers and, depth first, those inside them (a Residual's)."""
    for layer in layers:
        yield layer
        yield from layers_of(getattr(layer, "layers", ()))


def gemms_on_own_threads(layers):
    """Whether any of the layers (or those inside them) runs its GEMMs on
    fastnn's own threads: then training runs in blas_scope."""
    return any(layer.gemms_on_own_threads for layer in layers_of(layers))


def blas_scope(model, backend):
    """What training `model` on `backend` (fit, train_step) runs in: every BLAS
    on one thread when a layer runs its GEMMs on fastnn's own threads (Conv2D and
    the recurrent layers on the compiled backends, BLAS on one thread per range
    of samples), else nothing. The GEMMs of the other layers (a Dense head)
    would otherwise start the BLAS's own threads, which then spin for a long
    time waiting for the next GEMM (OpenBLAS: about 2^28 cycles) and take the
    cores fastnn's threads need: the conv32-64 CNN epoch (c, 2 threads, Zen 4,
    alternated in one process) took 669 us per sample with them spinning, 372
    in this scope. The user's thread counts are restored when the scope ends."""
    own = getattr(model, "_gemms_on_own_threads", None)  # (set by the model's build)
    if own is None:
        own = gemms_on_own_threads(model.layers)
    if backend.name == "numpy" or not own:
        return NO_SCOPE
    return _every_blas_on_one_thread()()


NO_SCOPE = contextlib.nullcontext()


@functools.cache
def _every_blas_on_one_thread():
    """backends._blas.every_blas_on_one_thread, imported at the first scope (not
    with fastnn), then at the cost of a cached call (an import statement in
    blas_scope took about 12 us of a training step, caches cold after the kernels)."""
    from ..backends._blas import every_blas_on_one_thread

    return every_blas_on_one_thread


class EpochResult(NamedTuple):
    """What one epoch measured. loss: the mean of the batch losses weighted by
    their sample-weight sums (the epoch's weighted mean loss); loss_per_sample: the
    mean weighted by their sizes (scikit-learn's loss_);
    seen: the samples trained on; steps: the optimizer steps taken."""

    loss: float
    loss_per_sample: float
    seen: int
    steps: int


def train_epoch(model, backend, X, t, w, order, batch_size, snapshot, epoch, on_divergence=None,
                metrics=(), hooks=None, gather=None):
    """One epoch over prepared data (from `Sequential._check_data`): batches of
    `batch_size` rows in `order` (None: as stored). `snapshot` holds parameters
    known to be finite, restored when an update makes them non-finite;
    on_divergence() runs before TrainingDivergedError is raised (to close a
    progress bar). metrics: Metric objects updated with each batch's outputs.
    hooks: None, or callbacks whose batch hooks run around each step (see
    callbacks.CallbackList); model.stop_training set by one ends the epoch after
    that step. gather: the RowGather of the fit (one bound to its data for
    every epoch), else one for this epoch."""
    n = X.shape[0]
    total = weight_total = count_total = 0.0
    seen = steps = 0
    step = 0
    gather = RowGather(backend) if gather is None else gather
    for step, lo in enumerate(range(0, n, batch_size), start=1):
        hi = min(lo + batch_size, n)
        ws = model._workspace((hi - lo,) + X.shape[1:])
        buffers = ws[1]
        copy = model._plannable and hi - lo < n  # a view of part of X: a new object each step
        xb = gather(X, lo, hi, order, buffers, "X", copy)
        tb = gather(t, lo, hi, order, buffers, "t", copy)
        wb = gather(w, lo, hi, order, buffers, "w", copy)
        bw = (hi - lo) if wb is None else float(wb.sum())
        if bw <= 0 and model._penalties and model.penalty_per_sample:
            raise ValueError(f"the sample weights of batch {step} of epoch {epoch} sum to {bw}: its "
                             "penalty per sample is undefined; shuffle, change batch_size or give "
                             "those samples positive weights")
        if bw == 0:
            continue  # every sample weighs 0: nothing to learn from this batch
        if hooks is not None:
            hooks.on_train_batch_begin(step - 1, {})
        try:
            loss = model._train_batch(backend, xb, tb, wb, ws, bw)
        except NonFiniteLoss as exc:
            if on_divergence is not None:
                on_divergence()
            diverged(model, snapshot, epoch, step, exc.loss)
        total += loss * bw
        weight_total += bw
        count_total += loss * (hi - lo)
        seen += hi - lo
        steps += 1
        for metric in metrics:
            metric.update(model.loss, buffers["out"], tb)
        if hooks is not None:
            hooks.on_train_batch_end(step - 1, {"loss": total / weight_total})
            if model.stop_training:
                break
    if not all_finite(model._params):  # the last step's update overflowed
        if on_divergence is not None:
            on_divergence()
        diverged(model, snapshot, epoch, step, math.nan)
    if not weight_total:
        raise ValueError("every batch of the epoch has sample weights summing to 0")
    return EpochResult(total / weight_total, count_total / seen, seen, steps)


def diverged(model, snapshot, epoch, step, loss):
    """Leave the model with finite parameters and raise TrainingDivergedError: the
    failing step was not applied; if an earlier update made a parameter
    non-finite, the parameters go back to `snapshot` and the optimizer restarts."""
    restored = not np.isfinite(model._params).all()
    if restored:
        np.copyto(model._params, snapshot)
    if restored or not all(np.isfinite(s).all() for s in model.optimizer.state.values()):
        model.optimizer.bind(model._params)
    where = f"epoch {epoch}, step {step}"
    kept = ("the parameters were reset to those at the start of the epoch" if restored
            else "the parameters are those before the failing step")
    raise TrainingDivergedError(f"training diverged: the loss became {loss} at {where}; {kept}. "
                                "Try a smaller learning rate.", epoch=epoch, step=step, loss=loss)


def progress(epochs, verbose):
    if verbose != 1:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=epochs, unit="epoch", leave=True)


def report(bar, verbose, epoch, epochs, logs, seconds):
    values = " - ".join(f"{k} {v:.4g}" for k, v in logs.items())
    if bar is not None:
        bar.set_postfix_str(values)
        bar.update(1)
    elif verbose:
        print(f"epoch {epoch}/{epochs} - {values} - {seconds:.2f} s", flush=True)
