"""Jitted kernels behind the numba backend (numba_backend.py calls them).

Every kernel is a plain loop over explicit ranges. Work that is worth running
on several threads is written once as a function over a range (`*_block`,
`*_rows`, `*_tile`, or one block of rows); a `*_serial` function, or a direct
call over the whole range, runs it for small inputs, and a `*_parallel` driver
splits the range with `prange` for large ones (the optimizers: `*_range` parts,
run by numba_backend._run_flat on threads of its own). Reductions are summed per fixed,
shape-determined block and the blocks added in order, so the serial and the
parallel result are bit-identical and independent of the thread count. The
drivers are separate functions, not one function jitted twice (prange runs
serially without parallel=True): Numba's on-disk cache keys a function by its
bytecode and signature, not by its options, so the two compilations would
load each other's cached code.

Dtypes: every kernel is compiled for float32 and float64 and computes in the
dtype of its arrays (constants come from the caller already in that dtype),
except for float32 arrays the activations of reference.FLOAT64_INSIDE
(computed in float64), and sums, which accumulate in float64 where it matters
for accuracy.

Division follows IEEE (error_model="numpy": x / 0 is inf, not an exception
whose check would keep a loop from vectorising).

Fast-math: no flags on whole kernels (they would break the NaN and inf
handling). The vectorisable math they call (exp, expm1, tanh, log1p, gelu, the
reassociable add `radd`, row maxima) is the library in _numba_math.py.

Sums of loss terms and penalties accumulate in float64 (every backend's rule,
see spec.py); the public method returns them rounded to the dtype.
"""

import math

import numpy as np
from numba import njit, prange

from ._numba_math import (  # noqa: F401 (K.fexp etc.: the math library, for the tests too)
    F32,
    ONE32,
    ZERO32,
    exp_nonpositive,
    expm1_neg64,
    fexp,
    gelu,
    gelu_grad,
    high_half,
    jit_inline,
    kernel_jit,
    key_value,
    log1p_unit,
    order_key,
    radd,
    row_max,
    tanh64,
)
from ._numba_memory import stream_copy, stream_fence
from ._range_threads import announce, leave
from .reference import (
    ACTIVATIONS,
    ELU_ALPHA,
    GOLDEN_GAMMA,
    LEAKY_RELU_SLOPE,
    MIX1,
    MIX2,
    SELU_ALPHA,
    SELU_SCALE,
    SOFTPLUS_THRESHOLD,
)

# activation codes: the index in reference.ACTIVATIONS
(IDENTITY, LOGISTIC, TANH, RELU, LEAKY_RELU, ELU, SELU, GELU, SOFTPLUS,
 SOFTMAX) = range(len(ACTIVATIONS))
assert ACTIVATIONS[SOFTMAX] == "softmax" and ACTIVATIONS[GELU] == "gelu"

# regression loss codes
SQUARED, ABSOLUTE, HUBER, HINGE = range(4)

SELU_SCALE_ALPHA = SELU_SCALE * SELU_ALPHA  # the reference multiplies these in float64

U_GAMMA, U_MIX1, U_MIX2 = np.uint64(GOLDEN_GAMMA), np.uint64(MIX1), np.uint64(MIX2)
U30, U27, U31, U11, U1 = (np.uint64(k) for k in (30, 27, 31, 11, 1))

jit = kernel_jit()
jit_parallel = njit(cache=True, parallel=True, error_model="numpy")
# a part of a job run on numba_backend's range threads (_range_threads.py): the
# GIL released, announce(sync, p) first and leave(sync, worker, seq) last
jit_range = kernel_jit(nogil=True)


# gelu rows in functions of their own, compiled with FMA contraction (the rest
# of the activations follow the reference's roundings without it; gelu's erfc and
# exp polynomials are not the reference's formulas, and FMAs make them faster).
# Numba's cache checks only this file's date: a change to the gelu of
# _numba_math.py, inlined here, needs a change here too (or the cache cleared)
@kernel_jit(fastmath={"contract"})
def gelu_forward_row(z, out):
    for j in range(z.size):
        out[j] = gelu(z[j])  # x Phi(x), in the dtype (see _gelu32)


@kernel_jit(fastmath={"contract"})
def gelu_backward_row(dy, x, out):
    for j in range(x.size):
        out[j] = dy[j] * gelu_grad(x[j])  # Phi(x) + x phi(x), in the dtype


# ----------------------------------------------------------------- activations
@jit
def act_forward_row(code, z, out):
    """out = activation(z) over one row (1-D, same length; out may be z)."""
    n = z.size
    dt = z.dtype.type
    zero = dt(0)
    if code == IDENTITY:
        for j in range(n):
            out[j] = z[j]
    elif code == LOGISTIC:
        for j in range(n):
            v = np.float64(z[j])
            e = fexp(-abs(v))  # in (0, 1]: no overflow for any v
            out[j] = (1.0 if v >= 0.0 else e) / (1.0 + e)
    elif code == TANH:
        for j in range(n):
            out[j] = tanh64(np.float64(z[j]))
    elif code == RELU:
        for j in range(n):
            v = z[j]
            out[j] = zero if v < zero else v  # NaN stays NaN, as np.maximum
    elif code == LEAKY_RELU:
        slope = dt(LEAKY_RELU_SLOPE)
        for j in range(n):
            v = z[j]
            out[j] = v if v > zero else slope * v
    elif code == ELU:
        for j in range(n):
            v = np.float64(z[j])
            out[j] = v if v > 0.0 else ELU_ALPHA * expm1_neg64(min(v, 0.0))
    elif code == SELU:
        for j in range(n):
            v = np.float64(z[j])
            out[j] = SELU_SCALE * (v if v > 0.0 else SELU_ALPHA * expm1_neg64(min(v, 0.0)))
    elif code == GELU:
        gelu_forward_row(z, out)
    elif code == SOFTPLUS:
        for j in range(n):
            v = np.float64(z[j])
            soft = (0.0 if v < 0.0 else v) + log1p_unit(fexp(-abs(v)))
            out[j] = v if v > SOFTPLUS_THRESHOLD else soft
    elif code == SOFTMAX:
        # float64 sums: the backward's dy - sum(dy y) cancels, so y must be accurate
        m = row_max(z)
        s = 0.0
        for j in range(n):
            e = exp_nonpositive(z[j] - m)
            out[j] = e
            s = radd(s, np.float64(e))
        sd = dt(s)
        for j in range(n):
            out[j] /= sd


@jit
def act_backward_row(code, dy, y, x, out):
    """out = dy * activation'(x) over one row, from y = activation(x) (x is read
    only for gelu; pass y for the others)."""
    n = y.size
    dt = y.dtype.type
    zero = dt(0)
    if code == IDENTITY:
        for j in range(n):
            out[j] = dy[j]
    elif code == LOGISTIC:  # float64 inside, as the reference (FLOAT64_INSIDE)
        for j in range(n):
            v = np.float64(y[j])
            out[j] = dy[j] * v * (1.0 - v)
    elif code == TANH:
        for j in range(n):
            v = np.float64(y[j])
            out[j] = dy[j] * (1.0 - v * v)
    elif code == RELU:
        for j in range(n):
            out[j] = dy[j] if y[j] > zero else zero
    elif code == LEAKY_RELU:
        slope = dt(LEAKY_RELU_SLOPE)
        for j in range(n):
            g = dy[j]
            out[j] = g if y[j] > zero else slope * g
    elif code == ELU:
        for j in range(n):
            v, g = np.float64(y[j]), np.float64(dy[j])
            out[j] = g if v > 0.0 else g * (v + ELU_ALPHA)  # d/dx alpha (e^x - 1) = y + alpha
    elif code == SELU:
        for j in range(n):
            v, g = np.float64(y[j]), np.float64(dy[j])
            out[j] = SELU_SCALE * g if v > 0.0 else g * (v + SELU_SCALE_ALPHA)
    elif code == GELU:
        gelu_backward_row(dy, x, out)
    elif code == SOFTPLUS:
        for j in range(n):
            v, g = np.float64(y[j]), dy[j]
            out[j] = g if v > SOFTPLUS_THRESHOLD else g * -expm1_neg64(-v)  # sigmoid(x) = 1 - e^-y
    elif code == SOFTMAX:
        s = 0.0
        for j in range(n):
            s = radd(s, np.float64(dy[j] * y[j]))
        sd = dt(s)
        for j in range(n):
            out[j] = y[j] * (dy[j] - sd)


@jit
def act_forward_tile(code, x, out, r0, r1, c0, c1):
    # x, out: (N, C); rows r0..r1, columns c0..c1 (all columns for softmax)
    for i in range(r0, r1):
        act_forward_row(code, x[i][c0:c1], out[i][c0:c1])


@jit_parallel
def act_forward_parallel(code, x, out, rows_per_tile, cols_per_tile):
    n, c = x.shape
    n_col_tiles = (c + cols_per_tile - 1) // cols_per_tile
    for b in prange(n_col_tiles * ((n + rows_per_tile - 1) // rows_per_tile)):
        r0, c0 = b // n_col_tiles * rows_per_tile, b % n_col_tiles * cols_per_tile
        act_forward_tile(code, x, out, r0, min(n, r0 + rows_per_tile), c0,
                         min(c, c0 + cols_per_tile))


@jit
def act_backward_tile(code, dy, y, x, out, r0, r1, c0, c1):
    for i in range(r0, r1):
        act_backward_row(code, dy[i][c0:c1], y[i][c0:c1], x[i][c0:c1], out[i][c0:c1])


@jit_parallel
def act_backward_parallel(code, dy, y, x, out, rows_per_tile, cols_per_tile):
    n, c = y.shape
    n_col_tiles = (c + cols_per_tile - 1) // cols_per_tile
    for b in prange(n_col_tiles * ((n + rows_per_tile - 1) // rows_per_tile)):
        r0, c0 = b // n_col_tiles * rows_per_tile, b % n_col_tiles * cols_per_tile
        act_backward_tile(code, dy, y, x, out, r0, min(n, r0 + rows_per_tile), c0,
                          min(c, c0 + cols_per_tile))


# ----------------------------------------------------------------------- dense
# Rows of the dense epilogue handled per pass: about this many elements (they
# stay in L1 from one pass to the next).
EPILOGUE_CHUNK = 4096


@jit
def bias_act_rows(code, out, b, preact, lo, hi):
    """Epilogue of y = act(x @ W + b) on rows lo..hi of out (N, C), which holds
    x @ W: add b (C,) unless it is empty, copy to preact (N, C) unless it is
    empty, apply the activation in place; a chunk of rows at a time, each pass
    finding the chunk in L1. The loops index out[i, j]: a call per row (of
    act_forward_row) costs as much as a short row's work, and a loop over an
    array passed twice (z is out) does not vectorise (the two may overlap), so
    relu and identity run here, bias + relu (the default) as one pass, and the
    other elementwise activations as one call per chunk."""
    c = out.shape[1]
    zero = out.dtype.type(0)
    step = max(1, EPILOGUE_CHUNK // max(c, 1))
    for r0 in range(lo, hi, step):
        r1 = min(hi, r0 + step)
        if code == RELU and b.size and not preact.size:
            for i in range(r0, r1):
                for j in range(c):
                    v = out[i, j] + b[j]
                    out[i, j] = zero if v < zero else v  # NaN stays NaN, as np.maximum
            continue
        if b.size:
            for i in range(r0, r1):
                for j in range(c):
                    out[i, j] += b[j]
        if preact.size:
            for i in range(r0, r1):
                for j in range(c):
                    preact[i, j] = out[i, j]
        if code == RELU:
            for i in range(r0, r1):
                for j in range(c):
                    v = out[i, j]
                    out[i, j] = zero if v < zero else v
        elif code == SOFTMAX:
            for i in range(r0, r1):
                act_forward_row(code, out[i], out[i])
        elif code != IDENTITY:
            chunk = out[r0:r1].reshape(-1)
            act_forward_row(code, chunk, chunk)


@jit_parallel
def bias_act_parallel(code, out, b, preact, rows_per_block):
    n = out.shape[0]
    for blk in prange((n + rows_per_block - 1) // rows_per_block):
        bias_act_rows(code, out, b, preact, blk * rows_per_block,
                      min(n, (blk + 1) * rows_per_block))


@jit
def act_grad_colsum_block(code, dy, y, preact, dz, colsum, blk, rows_per_block):
    """Prologue of the dense backward on rows block blk: dz = dy * act' (dz is
    not written for identity: dz is dy) and colsum[blk] (C,) float64 = the sum
    of those rows of dz. The derivative of an elementwise activation is one
    call over the block's rows (relu a loop here), not one per row (see
    bias_act_rows)."""
    lo, hi = blk * rows_per_block, min(dy.shape[0], (blk + 1) * rows_per_block)
    if code == IDENTITY:  # two calls, not one on dy or dz: a read-only dy has another type
        add_rows(colsum[blk], dy, lo, hi)
        return
    if code == RELU:
        zero = dy.dtype.type(0)
        for i in range(lo, hi):
            for j in range(dy.shape[1]):
                dz[i, j] = dy[i, j] if y[i, j] > zero else zero
    elif code == SOFTMAX:
        for i in range(lo, hi):
            act_backward_row(code, dy[i], y[i], preact[i], dz[i])
    else:
        act_backward_row(code, dy[lo:hi].reshape(-1), y[lo:hi].reshape(-1),
                         preact[lo:hi].reshape(-1), dz[lo:hi].reshape(-1))
    add_rows(colsum[blk], dz, lo, hi)


@jit_inline
def add_rows(acc, a, lo, hi):
    """acc (C,) float64 = the column sums of rows lo..hi of a, four rows at a time
    summed in the dtype first: one row at a time spends most of the time
    converting and adding doubles."""
    acc[:] = 0.0
    i = lo
    while i + 4 <= hi:
        a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
        for j in range(acc.size):
            acc[j] += np.float64((a0[j] + a1[j]) + (a2[j] + a3[j]))
        i += 4
    for k in range(i, hi):
        ak = a[k]
        for j in range(acc.size):
            acc[j] += np.float64(ak[j])


@jit
def sum_blocks(colsum, out):
    # out (C,) = colsum (nblocks, C) summed over blocks in order
    for j in range(out.size):
        s = 0.0
        for blk in range(colsum.shape[0]):
            s += colsum[blk, j]
        out[j] = s


@jit
def act_grad_colsum_serial(code, dy, y, preact, dz, db, rows_per_block):
    nblocks = (dy.shape[0] + rows_per_block - 1) // rows_per_block
    colsum = np.empty((nblocks, dy.shape[1]))
    for blk in range(nblocks):
        act_grad_colsum_block(code, dy, y, preact, dz, colsum, blk, rows_per_block)
    sum_blocks(colsum, db)


@jit_parallel
def act_grad_colsum_parallel(code, dy, y, preact, dz, db, rows_per_block):
    nblocks = (dy.shape[0] + rows_per_block - 1) // rows_per_block
    colsum = np.empty((nblocks, dy.shape[1]))
    for blk in prange(nblocks):
        act_grad_colsum_block(code, dy, y, preact, dz, colsum, blk, rows_per_block)
    sum_blocks(colsum, db)


# ---------------------------------------------------------------------- losses
@jit
def sample_scale(w, inv_total, i):
    """Weight of sample i in the mean: w[i] / sum(w), or 1 / N without weights
    (w empty); inv_total is 1 / sum(w) or 1 / N."""
    return inv_total * w[i] if w.size else inv_total


@jit_inline
def log_sum(x, e, m, s):
    """log(s) for s = sum(e), e = exp(x - m), m = max(x): where s < 2 (one max,
    whose term 1 dominates), log1p of the sum of the other terms, as the
    reference (see csrc/losses_impl.h)."""
    dt = x.dtype.type
    if not s < dt(2):
        return dt(math.log(s))
    below = dt(0)
    for j in range(x.size):
        below += e[j] if x[j] < m else dt(0)
    return dt(math.log1p(below))


@jit_inline
def ce_row_gradient(x, g, m, s, labels, probs, i, scale):
    """The end of softmax cross-entropy on row i, shared by softmax_ce_rows and
    softmax_ce_short: g (C,) holds e = exp(x - m) summing to s; writes the
    row's gradient over it, scaled by the sample's weight `scale`, and returns
    the row's weighted loss (float64). lse is rounded to the dtype and p = e
    exp(m - lse) as the reference's exp(x - lse), so logits of 1e4 (where
    float32 lse has an ulp of 1e-3) give the reference's p."""
    c = x.size
    dt = x.dtype.type
    log_s = log_sum(x, g, m, s)
    lse = m + log_s
    r = fexp(m - lse)  # p = e * r
    sc = dt(scale)
    if labels.size:
        k = labels[i]
        # p - 1 from log p = d, as the reference: e r - 1 would keep only the
        # digits p has beyond 1 in a confident row (and carry the rounding
        # of lse). expm1 (a call) only where it cancels: e^d - 1 elsewhere
        d = (x[k] - m) - log_s
        pm1 = dt(math.expm1(d)) if d > dt(-0.5) else fexp(d) - dt(1)
        q = r * sc
        for j in range(c):
            g[j] *= q
        g[k] = pm1 * sc
        return scale * (np.float64(lse) - np.float64(x[k]))
    t = probs[i]
    tsum = dt(0)
    for j in range(c):
        tsum = radd(tsum, t[j])
    loss = 0.0  # float64, as every backend
    for j in range(c):
        g[j] = (g[j] * r * tsum - t[j]) * sc
        loss = radd(loss, np.float64(t[j] * (lse - x[j])))  # each term >= 0
    return scale * loss


@jit
def softmax_ce_rows(logits, labels, probs, w, inv_total, grad, lo, hi):
    """Softmax cross-entropy of rows lo..hi; returns their share of the loss
    (float64) and writes grad (N, C): per row its max, then e = exp(x - max)
    into grad with their sum, then grad scaled in place (the row is in L1).

    logits (N, C); labels (N,) int64, or empty when probs (N, C) holds the
    targets; w (N,) sample weights or empty. The rest of each row:
    ce_row_gradient."""
    c = logits.shape[1]
    if c < SHORT_ROW:
        return softmax_ce_short(logits, labels, probs, w, inv_total, grad, lo, hi)
    dt = logits.dtype.type
    zero = dt(0)
    total = 0.0
    for i in range(lo, hi):
        x, g = logits[i], grad[i]
        m = row_max(x)
        s = zero
        for j in range(c):
            e = exp_nonpositive(x[j] - m)
            g[j] = e
            s = radd(s, e)
        total += ce_row_gradient(x, g, m, s, labels, probs, i,
                                 sample_scale(w, inv_total, i))
    return total


# Rows shorter than this take softmax_ce_short (as csrc/losses_impl.h's short
# rows), in blocks of at most SHORT_BLOCK elements.
SHORT_ROW = 128
SHORT_BLOCK = 2048


@jit
def softmax_ce_short(logits, labels, probs, w, inv_total, grad, lo, hi):
    """softmax_ce_rows for short rows (C < SHORT_ROW, 10 classes say), the same
    formulas by passes over a block of whole rows, each one loop over the
    block: the maxima and sums down its columns (every row at once), the exps
    of the block as one flat array (a vector loop, where a row of 10 would run
    them one at a time), then per row its log-sum, ratio and gradient. Row by
    row, the bookkeeping of a short row costs more than its elements."""
    c = logits.shape[1]
    dt = logits.dtype.type
    block = max(1, SHORT_BLOCK // c)
    keys = np.full(block, order_key(logits[lo, 0]))  # the integer type of the keys
    m, s = np.empty(block, dt), np.empty(block, dt)
    total = 0.0
    for i0 in range(lo, hi, block):
        rows = min(hi - i0, block)
        x, g = logits[i0:i0 + rows], grad[i0:i0 + rows]
        for i in range(rows):
            keys[i] = order_key(x[i, 0])
        for j in range(1, c):  # the row maxima through order keys, as row_max
            for i in range(rows):
                kj = order_key(x[i, j])
                keys[i] = kj if kj > keys[i] else keys[i]
        for i in range(rows):
            m[i] = key_value(keys[i], x[i, 0])
            for j in range(c):
                g[i, j] = x[i, j] - m[i]
        flat = g.reshape(-1)
        for j in range(flat.size):
            flat[j] = exp_nonpositive(flat[j])
        for i in range(rows):
            s[i] = g[i, 0]
        for j in range(1, c):
            for i in range(rows):
                s[i] += g[i, j]
        for i in range(rows):
            total += ce_row_gradient(x[i], g[i], m[i], s[i], labels, probs, i0 + i,
                                     sample_scale(w, inv_total, i0 + i))
    return total


@jit
def softmax_ce_serial(logits, labels, probs, w, inv_total, grad, rows_per_block):
    n = logits.shape[0]
    total = 0.0
    for b in range((n + rows_per_block - 1) // rows_per_block):
        total += softmax_ce_rows(logits, labels, probs, w, inv_total, grad, b * rows_per_block,
                                 min(n, (b + 1) * rows_per_block))
    return total


@jit_parallel
def softmax_ce_parallel(logits, labels, probs, w, inv_total, grad, rows_per_block):
    n = logits.shape[0]
    nblocks = (n + rows_per_block - 1) // rows_per_block
    partial = np.empty(nblocks)
    for b in prange(nblocks):
        partial[b] = softmax_ce_rows(logits, labels, probs, w, inv_total, grad,
                                     b * rows_per_block, min(n, (b + 1) * rows_per_block))
    total = 0.0
    for b in range(nblocks):
        total += partial[b]
    return total


@jit
def loss_rows(kind, pred, targets, w, inv_total, grad, delta, lo, hi):
    """Elementwise losses of rows lo..hi of pred, targets (N, K): writes grad
    (d loss / d pred, scaled by the sample weight) and returns their share of
    the loss (float64: each term in the dtype, added in float64). kind:
    SQUARED, ABSOLUTE, HUBER (with delta), HINGE, or -1 for the sigmoid binary
    cross-entropy."""
    k = pred.shape[1]
    dt = pred.dtype.type
    zero, one, half = dt(0), dt(1), dt(0.5)
    total = 0.0
    for i in range(lo, hi):
        p, t, g = pred[i], targets[i], grad[i]
        scale = sample_scale(w, inv_total, i)
        sc = dt(scale)
        acc = 0.0  # float64: the rule of every backend (a float32 row sum overflows)
        if kind == SQUARED:
            for j in range(k):
                d = p[j] - t[j]
                g[j] = d * sc
                acc = radd(acc, np.float64(half * d * d))
        elif kind == ABSOLUTE:
            for j in range(k):
                d = p[j] - t[j]
                g[j] = (one if d > zero else (-one if d < zero else d)) * sc  # sign, sign(0) = 0
                acc = radd(acc, np.float64(abs(d)))
        elif kind == HUBER:
            half_delta = dt(0.5 * delta)
            dd = dt(delta)
            for j in range(k):
                d = p[j] - t[j]
                a = abs(d)
                acc = radd(acc, np.float64(half * d * d if a < dd else dd * (a - half_delta)))
                clipped = dd if d > dd else (-dd if d < -dd else d)
                g[j] = clipped * sc
        elif kind == HINGE:
            for j in range(k):
                margin = one - t[j] * p[j]
                g[j] = -t[j] * sc if margin > zero else zero
                acc = radd(acc, np.float64(zero if margin < zero else margin))
        else:  # sigmoid binary cross-entropy, p holds logits
            for j in range(k):
                v, tj = np.float64(p[j]), t[j]
                e = fexp(-abs(v))
                sig = dt((1.0 if v >= 0.0 else e) / (1.0 + e))
                g[j] = (sig - tj) * sc
                # max(v, 0) - v t + log(1 + e^-|v|)
                acc = radd(acc, np.float64(dt((0.0 if v < 0.0 else v) - v * tj + log1p_unit(e))))
        total += scale * acc
    return total


@jit
def loss_serial(kind, pred, targets, w, inv_total, grad, delta, rows_per_block):
    n = pred.shape[0]
    total = 0.0
    for b in range((n + rows_per_block - 1) // rows_per_block):
        total += loss_rows(kind, pred, targets, w, inv_total, grad, delta, b * rows_per_block,
                           min(n, (b + 1) * rows_per_block))
    return total


@jit_parallel
def loss_parallel(kind, pred, targets, w, inv_total, grad, delta, rows_per_block):
    n = pred.shape[0]
    nblocks = (n + rows_per_block - 1) // rows_per_block
    partial = np.empty(nblocks)
    for b in prange(nblocks):
        partial[b] = loss_rows(kind, pred, targets, w, inv_total, grad, delta,
                               b * rows_per_block, min(n, (b + 1) * rows_per_block))
    total = 0.0
    for b in range(nblocks):
        total += partial[b]
    return total


# --------------------------------------------------------------- batch norm
BN_CHUNK = 512  # columns of a row computed into L1 before a streaming store
# x (N, C) is split into blocks of whole rows (each thread streams contiguous
# memory); the column sums of each block go to their own float64 row of a
# (blocks, C) array and are added up in block order afterwards, so the result
# does not depend on the threads, and every sum is two-level.
@jit_inline
def shifted_sums(x, r0, r1, shift, s1, s2):
    """s1 = sum (x - shift), s2 = sum (x - shift)^2 over rows r0..r1 of x, per
    column, in float64; shift is a row of x, so x - shift is exact in the dtype
    while x is within a factor 2 of it (and 0 for a constant column). Eight
    rows per sweep are summed in the dtype, in registers, and then added in
    float64: the accumulators move through L1 an eighth as often, and the
    arithmetic per element stays below the memory traffic."""
    c = x.shape[1]
    s1[:] = 0.0
    s2[:] = 0.0
    r8 = r0 + (r1 - r0) // 8 * 8
    for i in range(r0, r8, 8):
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        x4, x5, x6, x7 = x[i + 4], x[i + 5], x[i + 6], x[i + 7]
        for j in range(c):
            sh = shift[j]
            d0, d1, d2, d3 = x0[j] - sh, x1[j] - sh, x2[j] - sh, x3[j] - sh
            d4, d5, d6, d7 = x4[j] - sh, x5[j] - sh, x6[j] - sh, x7[j] - sh
            s1[j] += np.float64(((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7)))
            s2[j] += np.float64(((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3))
                                + ((d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7)))
    for i in range(r8, r1):
        xi = x[i]
        for j in range(c):
            d = xi[j] - shift[j]
            s1[j] += np.float64(d)
            s2[j] += np.float64(d * d)


@jit
def batchnorm_statistics(x, partial1, partial2, shift, running_mean, running_var, momentum,
                         eps, mean, invstd):
    """mean, invstd (C,) and the running statistics, in place, from the block
    sums of x - shift (shift = the first row: E[d^2] - E[d]^2 then does not
    cancel when the mean is large against the spread, and a constant column
    gets exactly 0)."""
    n, c = x.shape
    dt = x.dtype.type
    one = dt(1)
    keep, mom = dt(1.0 - momentum), dt(momentum)
    unbias = dt(n / (n - 1))
    for j in range(c):
        s1 = 0.0
        s2 = 0.0
        for b in range(partial1.shape[0]):
            s1 += partial1[b, j]
            s2 += partial2[b, j]
        mu = s1 / n
        var64 = (s2 - s1 * mu) / n
        var64 = 0.0 if var64 < 0.0 else var64  # rounding may leave it below 0; NaN stays
        mj, var = dt(shift[j] + mu), dt(var64)
        mean[j] = mj
        running_mean[j] = running_mean[j] * keep + mom * mj
        running_var[j] = running_var[j] * keep + mom * var * unbias
        invstd[j] = one / math.sqrt(var + dt(eps))


@jit
def running_statistics(running_mean, running_var, eps, mean, invstd):
    # inference: normalise with the running statistics
    dt = mean.dtype.type
    for j in range(mean.size):
        mean[j] = running_mean[j]
        invstd[j] = dt(1) / math.sqrt(running_var[j] + dt(eps))


@jit_inline
def normalise_rows(x, r0, r1, mean, invstd, gamma, beta, out, stream):
    """out = (x - mean) invstd gamma + beta over rows r0..r1, in the reference's
    order of operations. stream (a large out): each piece of BN_CHUNK columns is
    computed into a buffer in L1 and written out with non-temporal stores (no
    read of out's lines before they are written), as csrc/batchnorm_impl.h's
    bn_normalize_rows. Unlike there, prefetching the next row's piece was
    slower (4096 x 1024 float32 inference, one thread, CPU time: 1.15 against
    0.97 ms without; plain stores 1.20, C 0.99)."""
    c = x.shape[1]
    if not stream:
        for i in range(r0, r1):
            xi, yi = x[i], out[i]
            for j in range(c):
                yi[j] = (xi[j] - mean[j]) * invstd[j] * gamma[j] + beta[j]
        return
    tmp = np.empty(min(c, BN_CHUNK), x.dtype)
    for i in range(r0, r1):
        xi, yi = x[i], out[i]
        for j0 in range(0, c, BN_CHUNK):
            w = min(BN_CHUNK, c - j0)
            # views from 0: indices j0 + j would not be known >= 0 (Numba's
            # wraparound) and the loop would gather
            xs, ms, ss = xi[j0:j0 + w], mean[j0:j0 + w], invstd[j0:j0 + w]
            gs, bs = gamma[j0:j0 + w], beta[j0:j0 + w]
            for j in range(w):
                tmp[j] = (xs[j] - ms[j]) * ss[j] * gs[j] + bs[j]
            stream_copy(yi[j0:j0 + w], tmp, w)
    stream_fence()


@jit
def batchnorm_forward_serial(x, gamma, beta, running_mean, running_var, training, momentum,
                             eps, out, mean, invstd, rows_per_block, stream):
    n, c = x.shape
    nblocks = (n + rows_per_block - 1) // rows_per_block
    if training:
        shift = x[0].astype(np.float64)
        partial1, partial2 = np.empty((nblocks, c)), np.empty((nblocks, c))
        for b in range(nblocks):
            shifted_sums(x, b * rows_per_block, min(n, (b + 1) * rows_per_block), x[0],
                         partial1[b], partial2[b])
        batchnorm_statistics(x, partial1, partial2, shift, running_mean, running_var, momentum,
                             eps, mean, invstd)
    else:
        running_statistics(running_mean, running_var, eps, mean, invstd)
    for b in range(nblocks):
        normalise_rows(x, b * rows_per_block, min(n, (b + 1) * rows_per_block), mean, invstd,
                       gamma, beta, out, stream)


@jit_parallel
def batchnorm_forward_parallel(x, gamma, beta, running_mean, running_var, training, momentum,
                               eps, out, mean, invstd, rows_per_block, stream):
    # batchnorm_forward_serial with prange
    n, c = x.shape
    nblocks = (n + rows_per_block - 1) // rows_per_block
    if training:
        shift = x[0].astype(np.float64)
        partial1, partial2 = np.empty((nblocks, c)), np.empty((nblocks, c))
        for b in prange(nblocks):
            shifted_sums(x, b * rows_per_block, min(n, (b + 1) * rows_per_block), x[0],
                         partial1[b], partial2[b])
        batchnorm_statistics(x, partial1, partial2, shift, running_mean, running_var, momentum,
                             eps, mean, invstd)
    else:
        running_statistics(running_mean, running_var, eps, mean, invstd)
    for b in prange(nblocks):
        normalise_rows(x, b * rows_per_block, min(n, (b + 1) * rows_per_block), mean, invstd,
                       gamma, beta, out, stream)


@jit_inline
def gradient_sums(dy, x, r0, r1, mean, invstd, s_dy, s_dyx):
    """s_dy = sum dy, s_dyx = sum dy xhat (xhat = (x - mean) invstd in the dtype,
    as the reference) over rows r0..r1, per column, in float64; four rows per
    sweep summed in the dtype first, as shifted_sums. Eight rows per sweep (16
    rows of x and dy at once) ran at half the speed in cache and 1.55x the time
    from memory (4096 x 1024 float32, one thread: 2.2 against 1.43 ms)."""
    c = x.shape[1]
    s_dy[:] = 0.0
    s_dyx[:] = 0.0
    r4 = r0 + (r1 - r0) // 4 * 4
    for i in range(r0, r4, 4):
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        g0, g1, g2, g3 = dy[i], dy[i + 1], dy[i + 2], dy[i + 3]
        for j in range(c):
            mu, inv = mean[j], invstd[j]
            s_dy[j] += np.float64((g0[j] + g1[j]) + (g2[j] + g3[j]))
            p0, p1 = g0[j] * ((x0[j] - mu) * inv), g1[j] * ((x1[j] - mu) * inv)
            p2, p3 = g2[j] * ((x2[j] - mu) * inv), g3[j] * ((x3[j] - mu) * inv)
            s_dyx[j] += np.float64((p0 + p1) + (p2 + p3))
    for i in range(r4, r1):
        xi, gi = x[i], dy[i]
        for j in range(c):
            s_dy[j] += np.float64(gi[j])
            s_dyx[j] += np.float64(gi[j] * ((xi[j] - mean[j]) * invstd[j]))


@jit
def sum_gradient_blocks(partial1, partial2, gamma, invstd, n, dgamma, dbeta, coef):
    """dbeta, dgamma from the block sums; coef = gamma invstd / n (C,) for dx."""
    dt = dgamma.dtype.type
    for j in range(dgamma.size):
        s1 = 0.0
        s2 = 0.0
        for b in range(partial1.shape[0]):
            s1 += partial1[b, j]
            s2 += partial2[b, j]
        dbeta[j] = s1
        dgamma[j] = s2
        coef[j] = gamma[j] * invstd[j] / dt(n)


@jit_inline
def batchnorm_dx_rows(dy, x, r0, r1, mean, invstd, gamma, coef, dgamma, dbeta, training, dx):
    # the reference's order of operations. Plain stores: dx staged a row at a
    # time in L1 and written with non-temporal stores (as normalise_rows) was
    # slower here (4096 x 1024 float32 backward, one thread, CPU time: 4.37
    # against 3.83 ms; 2 threads 2.72 against 2.57; C 3.75 and 2.35), and more
    # so with the next rows of x and dy prefetched
    nn = x.dtype.type(x.shape[0])
    for i in range(r0, r1):
        xi, gi, di = x[i], dy[i], dx[i]
        if training:
            for j in range(x.shape[1]):
                xhat = (xi[j] - mean[j]) * invstd[j]
                di[j] = coef[j] * (nn * gi[j] - dbeta[j] - xhat * dgamma[j])
        else:
            for j in range(x.shape[1]):
                di[j] = gi[j] * gamma[j] * invstd[j]


@jit
def batchnorm_backward_serial(dy, x, mean, invstd, gamma, training, dx, dgamma, dbeta,
                              rows_per_block):
    """Gradients of batch norm: one pass for dbeta = sum dy and dgamma =
    sum dy xhat, one for dx."""
    n, c = x.shape
    nblocks = (n + rows_per_block - 1) // rows_per_block
    partial1, partial2 = np.empty((nblocks, c)), np.empty((nblocks, c))
    coef = np.empty(c, x.dtype)
    for b in range(nblocks):
        gradient_sums(dy, x, b * rows_per_block, min(n, (b + 1) * rows_per_block), mean, invstd,
                      partial1[b], partial2[b])
    sum_gradient_blocks(partial1, partial2, gamma, invstd, n, dgamma, dbeta, coef)
    for b in range(nblocks):
        batchnorm_dx_rows(dy, x, b * rows_per_block, min(n, (b + 1) * rows_per_block), mean,
                          invstd, gamma, coef, dgamma, dbeta, training, dx)


@jit_parallel
def batchnorm_backward_parallel(dy, x, mean, invstd, gamma, training, dx, dgamma, dbeta,
                                rows_per_block):
    # batchnorm_backward_serial with prange
    n, c = x.shape
    nblocks = (n + rows_per_block - 1) // rows_per_block
    partial1, partial2 = np.empty((nblocks, c)), np.empty((nblocks, c))
    coef = np.empty(c, x.dtype)
    for b in prange(nblocks):
        gradient_sums(dy, x, b * rows_per_block, min(n, (b + 1) * rows_per_block), mean, invstd,
                      partial1[b], partial2[b])
    sum_gradient_blocks(partial1, partial2, gamma, invstd, n, dgamma, dbeta, coef)
    for b in prange(nblocks):
        batchnorm_dx_rows(dy, x, b * rows_per_block, min(n, (b + 1) * rows_per_block), mean,
                          invstd, gamma, coef, dgamma, dbeta, training, dx)


# --------------------------------------------------------------------- dropout
# The flat kernels below take views that start at index 0 (the parallel drivers
# slice): with indices from 0, Numba's negative-index wraparound folds away and
# the loops vectorise.
@jit
def split(b, nblocks, n):
    """Bounds of block b of nblocks equal contiguous blocks of range(n)."""
    return b * n // nblocks, (b + 1) * n // nblocks


@jit
def dropout_block(x, out, threshold, seed, scale, offset):
    """out = x * scale where splitmix64(seed + (i + 1) gamma) >> 11 >= threshold,
    else 0, i = offset + the index in x (the reference's _dropout_keep, uint64)."""
    zero = x.dtype.type(0)
    first = np.uint64(offset) + U1
    for k in range(x.size):
        z = seed + (first + np.uint64(k)) * U_GAMMA
        z = (z ^ (z >> U30)) * U_MIX1
        z = (z ^ (z >> U27)) * U_MIX2
        z = z ^ (z >> U31)
        out[k] = x[k] * scale if (z >> U11) >= threshold else zero


@jit_parallel
def dropout_parallel(x, out, threshold, seed, scale, nb):
    for b in prange(nb):
        lo, hi = split(b, nb, x.size)
        dropout_block(x[lo:hi], out[lo:hi], threshold, seed, scale, lo)


# -------------------------------------------------------------- regularisation
PENALTY_BLOCK = 1 << 14


@jit
def penalty_block(param, grad, l2, l1):
    """grad += l2 param + l1 sign(param); returns l2/2 sum param^2 + l1 sum |param|
    in float64 (a term whose factor is 0 is skipped, as in the reference)."""
    zero, one = param.dtype.type(0), param.dtype.type(1)
    use_l2, use_l1 = l2 != zero, l1 != zero
    sq, ab = 0.0, 0.0
    for i in range(param.size):
        p = param[i]
        g = grad[i]
        if use_l2:
            sq = radd(sq, np.float64(p) * np.float64(p))
            g += l2 * p
        if use_l1:
            ab = radd(ab, abs(np.float64(p)))
            g += l1 * (one if p > zero else (-one if p < zero else p))
        grad[i] = g
    return 0.5 * np.float64(l2) * sq + np.float64(l1) * ab


@jit
def penalty_serial(param, grad, l2, l1):
    # the same blocks, summed in the same order, as penalty_parallel
    total = 0.0
    for lo in range(0, param.size, PENALTY_BLOCK):
        hi = min(param.size, lo + PENALTY_BLOCK)
        total += penalty_block(param[lo:hi], grad[lo:hi], l2, l1)
    return total


@jit_parallel
def penalty_parallel(param, grad, l2, l1):
    nblocks = (param.size + PENALTY_BLOCK - 1) // PENALTY_BLOCK
    partial = np.empty(nblocks)
    for b in prange(nblocks):
        lo, hi = b * PENALTY_BLOCK, min(param.size, (b + 1) * PENALTY_BLOCK)
        partial[b] = penalty_block(param[lo:hi], grad[lo:hi], l2, l1)
    total = 0.0
    for b in range(nblocks):
        total += partial[b]
    return total


# ------------------------------------------------------------------ optimizers
# One pass over param, grad and state per step, in place, on views from 0.
# Scalars arrive in the dtype of param, the 1 - beta kind already rounded from
# float64 as in the reference. Expressions keep the reference's order of operations.
@kernel_jit(fastmath={"contract"})  # as adam_block
def sgd_block(param, grad, velocity, lr, momentum, nesterov, weight_decay, lr_in_velocity):
    zero = param.dtype.type(0)
    use_wd = weight_decay != zero
    if momentum == zero:
        for i in range(param.size):
            g = grad[i] + weight_decay * param[i] if use_wd else grad[i]
            param[i] -= lr * g
    elif lr_in_velocity:  # scikit-learn's rule
        for i in range(param.size):
            g = grad[i] + weight_decay * param[i] if use_wd else grad[i]
            v = momentum * velocity[i] - lr * g
            velocity[i] = v
            param[i] += momentum * v - lr * g if nesterov else v
    else:
        for i in range(param.size):
            g = grad[i] + weight_decay * param[i] if use_wd else grad[i]
            v = momentum * velocity[i] + g
            velocity[i] = v
            param[i] -= lr * (g + momentum * v if nesterov else v)


@jit_range
def sgd_range(sync, p, worker, nb, param, grad, velocity, lr, momentum, nesterov, weight_decay,
              lr_in_velocity):
    seq = announce(sync, p)
    lo, hi = split(p, nb, param.size)
    sgd_block(param[lo:hi], grad[lo:hi], velocity[lo:hi], lr, momentum, nesterov, weight_decay,
              lr_in_velocity)
    return leave(sync, worker, seq)


@jit
def adagrad_block(param, grad, sum_sq, lr, eps, weight_decay):
    zero = param.dtype.type(0)
    use_wd = weight_decay != zero
    for i in range(param.size):
        g = grad[i] + weight_decay * param[i] if use_wd else grad[i]
        s = sum_sq[i] + g * g
        sum_sq[i] = s
        param[i] -= lr * g / (math.sqrt(s) + eps)


@jit_range
def adagrad_range(sync, p, worker, nb, param, grad, sum_sq, lr, eps, weight_decay):
    seq = announce(sync, p)
    lo, hi = split(p, nb, param.size)
    adagrad_block(param[lo:hi], grad[lo:hi], sum_sq[lo:hi], lr, eps, weight_decay)
    return leave(sync, worker, seq)


@jit
def rmsprop_block(param, grad, square_avg, lr, alpha, rest, eps, weight_decay, momentum,
                  momentum_buf, grad_avg, use_momentum, centered):
    """rest = 1 - alpha; momentum_buf and grad_avg are read only when used."""
    zero = param.dtype.type(0)
    use_wd = weight_decay != zero
    for i in range(param.size):
        g = grad[i] + weight_decay * param[i] if use_wd else grad[i]
        sa = square_avg[i] * alpha + rest * g * g
        square_avg[i] = sa
        if centered:
            ga = grad_avg[i] * alpha + rest * g
            grad_avg[i] = ga
            avg = math.sqrt(sa - ga * ga) + eps
        else:
            avg = math.sqrt(sa) + eps
        if use_momentum:
            buf = momentum_buf[i] * momentum + g / avg
            momentum_buf[i] = buf
            param[i] -= lr * buf
        else:
            param[i] -= lr * g / avg


@jit_range
def rmsprop_range(sync, p, worker, nb, param, grad, square_avg, lr, alpha, rest, eps, weight_decay, momentum,
                  momentum_buf, grad_avg, use_momentum, centered):
    seq = announce(sync, p)
    lo, hi = split(p, nb, param.size)
    rmsprop_block(param[lo:hi], grad[lo:hi], square_avg[lo:hi], lr, alpha, rest, eps, weight_decay,
                  momentum, momentum_buf[lo:hi], grad_avg[lo:hi], use_momentum, centered)
    return leave(sync, worker, seq)


@jit
def adadelta_block(param, grad, square_avg, acc_delta, lr, rho, rest, eps, weight_decay):
    """rest = 1 - rho."""
    zero = param.dtype.type(0)
    use_wd = weight_decay != zero
    for i in range(param.size):
        g = grad[i] + weight_decay * param[i] if use_wd else grad[i]
        sa = square_avg[i] * rho + rest * g * g
        square_avg[i] = sa
        delta = math.sqrt(acc_delta[i] + eps) / math.sqrt(sa + eps) * g
        acc_delta[i] = acc_delta[i] * rho + rest * delta * delta
        param[i] -= lr * delta


@jit_range
def adadelta_range(sync, p, worker, nb, param, grad, square_avg, acc_delta, lr, rho, rest, eps, weight_decay):
    seq = announce(sync, p)
    lo, hi = split(p, nb, param.size)
    adadelta_block(param[lo:hi], grad[lo:hi], square_avg[lo:hi], acc_delta[lo:hi], lr, rho, rest,
                   eps, weight_decay)
    return leave(sync, worker, seq)


@jit_inline
def adam_moments(m, v, i, g, beta1, rest1, beta2, rest2):
    """Updates m[i], v[i] with the gradient g; returns both (m[i] read back
    after the store to v[i], which might alias it, was a load more a step)."""
    mi = m[i] * beta1 + rest1 * g
    vi = v[i] * beta2 + rest2 * g * g
    m[i] = mi
    v[i] = vi
    return mi, vi


# FMA contraction, as the C kernels' compilers do by default: the same
# results to rounding, fewer instructions a step
@kernel_jit(fastmath={"contract"})
def adam_block(param, grad, m, v, v_max, step, beta1, rest1, beta2, rest2, inv_sqrt_bias2, eps,
               weight_decay, decay, amsgrad):
    """Adam. step = lr / (1 - beta1^t); inv_sqrt_bias2 = 1 / sqrt(1 - beta2^t);
    rest1, rest2 = 1 - beta1, 1 - beta2; weight_decay (L2, added to g) or decay
    (decoupled: param *= decay), the other one inactive (0 or 1); v_max is read
    and written only with amsgrad. Plain Adam, with or without L2, runs loops
    without per-element branches (they vectorise)."""
    dt = param.dtype.type
    zero, one = dt(0), dt(1)
    use_wd, use_decay = weight_decay != zero, decay != one
    if not (amsgrad or use_decay):
        if use_wd:
            for i in range(param.size):
                p = param[i]
                mi, vi = adam_moments(m, v, i, grad[i] + weight_decay * p, beta1, rest1, beta2,
                                      rest2)
                param[i] = p - step * mi / (math.sqrt(vi) * inv_sqrt_bias2 + eps)
        else:
            for i in range(param.size):
                mi, vi = adam_moments(m, v, i, grad[i], beta1, rest1, beta2, rest2)
                param[i] = param[i] - step * mi / (math.sqrt(vi) * inv_sqrt_bias2 + eps)
        return
    for i in range(param.size):
        p = param[i] * decay if use_decay else param[i]
        mi, vi = adam_moments(m, v, i, grad[i] + weight_decay * p if use_wd else grad[i], beta1,
                              rest1, beta2, rest2)
        if amsgrad:
            vm = v_max[i]
            vi = vi if (vi > vm or vi != vi) else vm  # np.maximum: NaN wins
            v_max[i] = vi
        param[i] = p - step * mi / (math.sqrt(vi) * inv_sqrt_bias2 + eps)


@jit_range
def adam_range(sync, p, worker, nb, param, grad, m, v, v_max, step, beta1, rest1, beta2, rest2,
               inv_sqrt_bias2, eps, weight_decay, decay, amsgrad):
    seq = announce(sync, p)
    lo, hi = split(p, nb, param.size)
    adam_block(param[lo:hi], grad[lo:hi], m[lo:hi], v[lo:hi], v_max[lo:hi], step, beta1, rest1, beta2,
               rest2, inv_sqrt_bias2, eps, weight_decay, decay, amsgrad)
    return leave(sync, worker, seq)


# ------------------------------------------------------------------ row gather
@jit
def take_rows_serial(x, index, out):
    """out[i] = x[index[i]]: x (N, D), index (B,) in [0, N), out (B, D)."""
    d = x.shape[1]
    for i in range(index.size):
        row = index[i]
        for j in range(d):  # (a slice assignment would copy through a temporary)
            out[i, j] = x[row, j]


@jit_parallel
def take_rows_parallel(x, index, out, nb):
    for b in prange(nb):
        lo, hi = split(b, nb, index.size)
        take_rows_serial(x, index[lo:hi], out[lo:hi])
