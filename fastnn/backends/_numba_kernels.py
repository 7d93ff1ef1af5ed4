"""Jitted kernels behind the numba backend (numba_backend.py calls them).

Every kernel is a plain loop over explicit index ranges. A kernel that is worth
running on several threads comes as a `*_block` (or `*_rows`) function doing
one range serially, called directly for small inputs, and a `*_parallel` driver
that splits the range with `prange` for large ones. Both paths run the same
per-range code, and reductions are summed over fixed, shape-determined blocks in
a fixed order, so the serial and the parallel result are bit-identical.

Dtypes: every kernel is compiled for float32 and float64 and computes in the
dtype of its arrays (constants come from the caller already in that dtype),
except where the reference computes in float64 (gelu) or where float64
accumulators make a sum accurate.

Fast-math: no flags are set on whole functions (they would break the NaN and inf
handling and the range reduction of exp). The two places that need relaxed
semantics use one instruction each: `fmax` (llvm.maxnum, which ignores a NaN;
the row max is only a shift, and a NaN still reaches the result through the
sum) and `radd` (an add marked reassociable, so a sum can be vectorised).
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

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

INV_SQRT2 = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327
SELU_SCALE_ALPHA = SELU_SCALE * SELU_ALPHA  # the reference multiplies these in float64

U_GAMMA, U_MIX1, U_MIX2 = np.uint64(GOLDEN_GAMMA), np.uint64(MIX1), np.uint64(MIX2)
U30, U27, U31, U11, U1 = (np.uint64(k) for k in (30, 27, 31, 11, 1))

jit = njit(cache=True)
jit_parallel = njit(cache=True, parallel=True)


# ------------------------------------------------------------------ intrinsics
@intrinsic
def fmax(typingctx, a, b):
    """max(a, b) ignoring a NaN operand (llvm.maxnum): vectorises as a reduction."""
    def codegen(context, builder, sig, args):
        t = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maxnum", [t], ir.FunctionType(t, [t, t]))
        return builder.call(fn, args)
    return a(a, a), codegen


@intrinsic
def radd(typingctx, a, b):
    """a + b that LLVM may reassociate: a loop summing with it vectorises."""
    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1], flags=("reassoc",))
    return a(a, a), codegen


@intrinsic
def scale_pow2(typingctx, p, t, shift):
    """p * 2^n, where t = n + shift and adding shift rounded n onto the integers
    (so n sits in the low bits of t). 2^n is applied as two halves built from
    exponent bits, so each factor stays a normal number for every n that exp's
    clamped argument produces; overflow to inf and underflow to 0 (or a
    subnormal) then happen in the final multiplications, as they should."""
    def codegen(context, builder, sig, args):
        p, t, shift = args
        bits, mant, bias = (32, 23, 127) if sig.args[0] == types.float32 else (64, 52, 1023)
        it = ir.IntType(bits)
        n = builder.sub(builder.bitcast(t, it), builder.bitcast(shift, it))
        half = builder.ashr(n, ir.Constant(it, 1))
        e1 = builder.shl(builder.add(half, ir.Constant(it, bias)), ir.Constant(it, mant))
        e2 = builder.shl(builder.add(builder.sub(n, half), ir.Constant(it, bias)),
                         ir.Constant(it, mant))
        s1, s2 = builder.bitcast(e1, p.type), builder.bitcast(e2, p.type)
        return builder.fmul(builder.fmul(p, s1), s2)
    return p(p, p, p), codegen


# ------------------------------------------------------------- vectorisable exp
# e^x = 2^n e^r with n = round(x / ln2) and r = x - n ln2 in [-ln2/2, ln2/2]
# (Cody-Waite: ln2 split in a few-bit high part, exact times n, and a low part).
# Numba's math.exp is a scalar libm call that stops a loop from vectorising.
F32 = np.float32
E32 = dict(
    log2e=F32(1.4426950408889634), shift=F32(1.5 * 2**23), ln2_hi=F32(0.693359375),
    ln2_lo=F32(-2.12194440e-4), lo=F32(-120.0), hi=F32(120.0), one=F32(1.0),
    # minimax polynomial of (e^r - 1 - r) / r^2 on [-ln2/2, ln2/2] (Cephes expf)
    c=tuple(F32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                               4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)),
)
E64 = dict(
    log2e=1.4426950408889634, shift=1.5 * 2**52, ln2_hi=0.693145751953125,
    ln2_lo=1.42860682030941723212e-6, lo=-1000.0, hi=1000.0, one=1.0,
    # Taylor coefficients 1/k!, k = 13..2: truncation below 1e-17 for |r| <= ln2/2
    c=tuple(1.0 / math.factorial(k) for k in range(13, 1, -1)),
)


def _make_exp(k):
    log2e, shift, ln2_hi, ln2_lo = k["log2e"], k["shift"], k["ln2_hi"], k["ln2_lo"]
    lo, hi, one, c = k["lo"], k["hi"], k["one"], k["c"]

    def exp_impl(x):
        # clamp (a NaN fails both tests and stays NaN); beyond +-hi e^x is inf or 0
        x = hi if x > hi else x
        x = lo if x < lo else x
        t = x * log2e + shift
        n = t - shift
        r = x - n * ln2_hi
        r = r - n * ln2_lo
        p = c[0]
        for ci in c[1:]:
            p = p * r + ci
        p = p * (r * r) + r + one
        return scale_pow2(p, t, shift)
    return exp_impl


_exp32, _exp64 = _make_exp(E32), _make_exp(E64)


def fexp(x):
    """e^x for a float32 or float64 scalar, in that precision; jitted code only."""
    raise NotImplementedError("fexp is callable from jitted code only")


@overload(fexp)
def _fexp_overload(x):
    if x == types.float32:
        return _exp32
    if x == types.float64:
        return _exp64


# float64 building blocks on top of fexp, vectorisable like it. The activations
# compute in float64 for float32 arrays too: the result is then the correctly
# rounded float32 (libm's float32 tanhf is off by 2 ulp, which a derivative
# written in y, such as 1 - y^2, turns into a visible difference).
TANH_SERIES = (-1.0 / 3, 2.0 / 15, -17.0 / 315, 62.0 / 2835)  # tanh x = x + x^3 (...)
EXPM1_SERIES = tuple(1.0 / math.factorial(k) for k in range(13, 0, -1))  # Taylor to x^13
LOG_SERIES = tuple(1.0 / k for k in range(19, 0, -2))  # 2 atanh(s) = 2 s (1 + s^2/3 + ...)
LN2 = 0.6931471805599453
SQRT2_M1 = 0.41421356237309515


@jit
def tanh64(v):
    """tanh of a float64: 1 - 2 / (e^2|x| + 1), or its series below |x| = 0.01
    where that form would cancel (series error < 1e-22 relative there)."""
    a = abs(v)
    big = 1.0 - 2.0 / (fexp(2.0 * a) + 1.0)
    big = big if v >= 0.0 else -big
    s2 = v * v
    p = TANH_SERIES[3]
    for c in TANH_SERIES[2::-1]:
        p = p * s2 + c
    small = v + v * s2 * p
    return small if a < 0.01 else big


@jit
def expm1_64(v):
    """e^x - 1 of a float64: Taylor series for |x| < 0.35 (error < 1e-16
    relative), e^x - 1 beyond (where it cannot cancel much)."""
    p = EXPM1_SERIES[0]
    for c in EXPM1_SERIES[1:]:
        p = p * v + c
    small = p * v
    big = fexp(v) - 1.0
    return small if abs(v) < 0.35 else big


@jit
def log1p_unit(e):
    """log(1 + e) for a float64 e in [0, 1] (the e^-|x| of softplus and the
    binary cross-entropy): 2 atanh(s) with s = e / (2 + e), or, above
    sqrt(2) - 1, ln 2 + 2 atanh((e - 1) / (e + 3)); |s| <= 0.172, written
    exactly in e, so tiny e keep their full relative precision."""
    high = e > SQRT2_M1
    s = (e - 1.0 if high else e) / (e + 3.0 if high else e + 2.0)
    s2 = s * s
    p = LOG_SERIES[0]
    for c in LOG_SERIES[1:]:
        p = p * s2 + c
    return (LN2 if high else 0.0) + 2.0 * s * p


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
            out[j] = v if v > 0.0 else ELU_ALPHA * expm1_64(v)
    elif code == SELU:
        for j in range(n):
            v = np.float64(z[j])
            out[j] = SELU_SCALE * (v if v > 0.0 else SELU_ALPHA * expm1_64(v))
    elif code == GELU:
        for j in range(n):
            v = np.float64(z[j])  # x Phi(x); libm's erf (a scalar call)
            out[j] = 0.5 * v * (1.0 + math.erf(v * INV_SQRT2))
    elif code == SOFTPLUS:
        for j in range(n):
            v = np.float64(z[j])
            soft = (0.0 if v < 0.0 else v) + log1p_unit(fexp(-abs(v)))
            out[j] = v if v > SOFTPLUS_THRESHOLD else soft
    elif code == SOFTMAX:
        # float64 sums: the backward's dy - sum(dy y) cancels, so y must be accurate
        m = z[0]
        for j in range(n):
            m = fmax(m, z[j])
        s = 0.0
        for j in range(n):
            e = fexp(z[j] - m)
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
        for j in range(n):
            v = np.float64(x[j])  # Phi(x) + x phi(x), in float64 as the reference
            cdf = 0.5 * (1.0 + math.erf(v * INV_SQRT2))
            pdf = fexp(-0.5 * v * v) * INV_SQRT_2PI
            out[j] = dy[j] * (cdf + v * pdf)
    elif code == SOFTPLUS:
        for j in range(n):
            v, g = np.float64(y[j]), dy[j]
            out[j] = g if v > SOFTPLUS_THRESHOLD else g * -expm1_64(-v)  # sigmoid(x) = 1 - e^-y
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
@jit
def bias_act_rows(code, out, b, preact, lo, hi):
    """Epilogue of y = act(x @ W + b) on rows lo..hi of out (N, C), which holds
    x @ W: add b (C,) unless it is empty, copy to preact (N, C) unless it is
    empty, apply the activation in place. Each row is read from memory once; the
    later steps find it in L1."""
    c = out.shape[1]
    for i in range(lo, hi):
        row = out[i]
        if b.size:
            for j in range(c):
                row[j] += b[j]
        if preact.size:
            p = preact[i]
            for j in range(c):
                p[j] = row[j]
        act_forward_row(code, row, row)


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
    of those rows of dz."""
    n, c = dy.shape
    acc = colsum[blk]
    acc[:] = 0.0
    for i in range(blk * rows_per_block, min(n, (blk + 1) * rows_per_block)):
        if code == IDENTITY:
            src = dy[i]
        else:
            act_backward_row(code, dy[i], y[i], preact[i], dz[i])
            src = dz[i]
        for j in range(c):
            acc[j] += src[j]


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


@jit
def softmax_ce_rows(logits, labels, probs, w, inv_total, grad, lo, hi):
    """Softmax cross-entropy of rows lo..hi, one pass per row; returns their
    share of the loss (float64) and writes grad (N, C).

    logits (N, C); labels (N,) int64, or empty when probs (N, C) holds the
    targets; w (N,) sample weights or empty. lse is rounded to the dtype and
    p = exp(x - m) exp(m - lse) as the reference's exp(x - lse), so logits of
    1e4 (where float32 lse has an ulp of 1e-3) give the reference's p."""
    c = logits.shape[1]
    dt = logits.dtype.type
    zero, one = dt(0), dt(1)
    total = 0.0
    for i in range(lo, hi):
        x, g = logits[i], grad[i]
        m = x[0]
        for j in range(c):
            m = fmax(m, x[j])
        s = zero
        for j in range(c):
            e = fexp(x[j] - m)
            g[j] = e
            s = radd(s, e)
        lse = m + dt(math.log(s))
        r = fexp(m - lse)  # p = e * r
        scale = sample_scale(w, inv_total, i)
        sc = dt(scale)
        if labels.size:
            k = labels[i]
            ek = g[k]
            q = r * sc
            for j in range(c):
                g[j] *= q
            g[k] = (ek * r - one) * sc
            total += scale * (np.float64(lse) - np.float64(x[k]))
        else:
            t = probs[i]
            tsum = zero
            for j in range(c):
                tsum = radd(tsum, t[j])
            loss = zero
            for j in range(c):
                g[j] = (g[j] * r * tsum - t[j]) * sc
                loss = radd(loss, t[j] * (lse - x[j]))  # each term >= 0: no cancellation
            total += scale * np.float64(loss)
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
    the loss (float64). kind: SQUARED, ABSOLUTE, HUBER (with delta), HINGE,
    or -1 for the sigmoid binary cross-entropy."""
    k = pred.shape[1]
    dt = pred.dtype.type
    zero, one, half = dt(0), dt(1), dt(0.5)
    total = 0.0
    for i in range(lo, hi):
        p, t, g = pred[i], targets[i], grad[i]
        scale = sample_scale(w, inv_total, i)
        sc = dt(scale)
        acc = zero
        if kind == SQUARED:
            for j in range(k):
                d = p[j] - t[j]
                g[j] = d * sc
                acc = radd(acc, half * d * d)
        elif kind == ABSOLUTE:
            for j in range(k):
                d = p[j] - t[j]
                g[j] = (one if d > zero else (-one if d < zero else d)) * sc  # sign, sign(0) = 0
                acc = radd(acc, abs(d))
        elif kind == HUBER:
            half_delta = dt(0.5 * delta)
            dd = dt(delta)
            for j in range(k):
                d = p[j] - t[j]
                a = abs(d)
                acc = radd(acc, half * d * d if a < dd else dd * (a - half_delta))
                clipped = dd if d > dd else (-dd if d < -dd else d)
                g[j] = clipped * sc
        elif kind == HINGE:
            for j in range(k):
                margin = one - t[j] * p[j]
                g[j] = -t[j] * sc if margin > zero else zero
                acc = radd(acc, zero if margin < zero else margin)
        else:  # sigmoid binary cross-entropy, p holds logits
            for j in range(k):
                v, tj = np.float64(p[j]), t[j]
                e = fexp(-abs(v))
                sig = dt((1.0 if v >= 0.0 else e) / (1.0 + e))
                g[j] = (sig - tj) * sc
                # max(v, 0) - v t + log(1 + e^-|v|)
                acc = radd(acc, dt((0.0 if v < 0.0 else v) - v * tj + log1p_unit(e)))
        total += scale * np.float64(acc)
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
BN_ROW_BLOCK = 256  # rows summed into block accumulators before the running totals


@jit
def batchnorm_forward_cols(x, gamma, beta, running_mean, running_var, training, momentum, eps,
                           out, mean, invstd, c0, c1):
    """Batch norm of columns c0..c1 of x (N, C) into out, writing mean and
    invstd (C,) and, in training, updating the running statistics in place.

    Training statistics take one pass: float64 sums of d = x - x[0] and d^2
    (shifting by the first row keeps E[d^2] - E[d]^2 free of cancellation when
    the mean is large, and makes a constant column exactly 0), first over
    blocks of BN_ROW_BLOCK rows, then over blocks. The second pass normalises
    in the reference's order of operations."""
    n = x.shape[0]
    dt = x.dtype.type
    one = dt(1)
    width = c1 - c0
    if training:
        shift = np.empty(width)
        s1, s2 = np.zeros(width), np.zeros(width)
        b1, b2 = np.empty(width), np.empty(width)
        x0 = x[0]
        for j in range(width):
            shift[j] = x0[c0 + j]
        for r0 in range(0, n, BN_ROW_BLOCK):
            b1[:] = 0.0
            b2[:] = 0.0
            for i in range(r0, min(n, r0 + BN_ROW_BLOCK)):
                xi = x[i]
                for j in range(width):
                    d = np.float64(xi[c0 + j]) - shift[j]
                    b1[j] += d
                    b2[j] += d * d
            for j in range(width):
                s1[j] += b1[j]
                s2[j] += b2[j]
        keep, mom = dt(1.0 - momentum), dt(momentum)
        unbias = dt(n / (n - 1))
        for j in range(width):
            mu = s1[j] / n
            var64 = (s2[j] - s1[j] * mu) / n
            var64 = 0.0 if var64 < 0.0 else var64  # rounding can make it -0.0...; NaN stays
            mj, var = dt(shift[j] + mu), dt(var64)
            mean[c0 + j] = mj
            running_mean[c0 + j] = running_mean[c0 + j] * keep + mom * mj
            running_var[c0 + j] = running_var[c0 + j] * keep + mom * var * unbias
            invstd[c0 + j] = one / math.sqrt(var + dt(eps))
    else:
        for j in range(c0, c1):
            mean[j] = running_mean[j]
            invstd[j] = one / math.sqrt(running_var[j] + dt(eps))
    for i in range(n):
        xi, yi = x[i], out[i]
        for j in range(c0, c1):
            yi[j] = (xi[j] - mean[j]) * invstd[j] * gamma[j] + beta[j]


@jit_parallel
def batchnorm_forward_parallel(x, gamma, beta, running_mean, running_var, training, momentum,
                               eps, out, mean, invstd, cols_per_block):
    c = x.shape[1]
    for b in prange((c + cols_per_block - 1) // cols_per_block):
        batchnorm_forward_cols(x, gamma, beta, running_mean, running_var, training, momentum,
                               eps, out, mean, invstd, b * cols_per_block,
                               min(c, (b + 1) * cols_per_block))


@jit
def batchnorm_backward_cols(dy, x, mean, invstd, gamma, training, dx, dgamma, dbeta, c0, c1):
    """Gradients of batch norm for columns c0..c1: one pass for dbeta = sum dy and
    dgamma = sum dy xhat (float64 sums), one for dx."""
    n = x.shape[0]
    dt = x.dtype.type
    width = c1 - c0
    s_dy, s_dyx = np.zeros(width), np.zeros(width)
    for i in range(n):
        xi, gi = x[i], dy[i]
        for j in range(width):
            xhat = (xi[c0 + j] - mean[c0 + j]) * invstd[c0 + j]
            s_dy[j] += gi[c0 + j]
            s_dyx[j] += np.float64(gi[c0 + j] * xhat)
    for j in range(width):
        dbeta[c0 + j] = s_dy[j]
        dgamma[c0 + j] = s_dyx[j]
    if training:
        nn = dt(n)
        coef = np.empty(width, x.dtype)
        for j in range(width):
            coef[j] = gamma[c0 + j] * invstd[c0 + j] / nn
        for i in range(n):
            xi, gi, di = x[i], dy[i], dx[i]
            for j in range(width):
                jj = c0 + j
                xhat = (xi[jj] - mean[jj]) * invstd[jj]
                di[jj] = coef[j] * (nn * gi[jj] - dbeta[jj] - xhat * dgamma[jj])
    else:
        for i in range(n):
            gi, di = dy[i], dx[i]
            for j in range(c0, c1):
                di[j] = gi[j] * gamma[j] * invstd[j]


@jit_parallel
def batchnorm_backward_parallel(dy, x, mean, invstd, gamma, training, dx, dgamma, dbeta,
                                cols_per_block):
    c = x.shape[1]
    for b in prange((c + cols_per_block - 1) // cols_per_block):
        batchnorm_backward_cols(dy, x, mean, invstd, gamma, training, dx, dgamma, dbeta,
                                b * cols_per_block, min(c, (b + 1) * cols_per_block))


# --------------------------------------------------------------------- dropout
@jit
def dropout_block(x, out, threshold, seed, scale, lo, hi):
    """out = x * scale where splitmix64(seed + (i + 1) gamma) >> 11 >= threshold,
    else 0, for flat indices lo..hi (the reference's _dropout_keep, in uint64)."""
    zero = x.dtype.type(0)
    for i in range(lo, hi):
        z = seed + (np.uint64(i) + U1) * U_GAMMA
        z = (z ^ (z >> U30)) * U_MIX1
        z = (z ^ (z >> U27)) * U_MIX2
        z = z ^ (z >> U31)
        out[i] = x[i] * scale if (z >> U11) >= threshold else zero


@jit
def split(b, nblocks, n):
    """Bounds of block b of nblocks equal contiguous blocks of range(n)."""
    return b * n // nblocks, (b + 1) * n // nblocks


@jit_parallel
def dropout_parallel(x, out, threshold, seed, scale, nb):
    for b in prange(nb):
        lo, hi = split(b, nb, x.size)
        dropout_block(x, out, threshold, seed, scale, lo, hi)


# -------------------------------------------------------------- regularisation
PENALTY_BLOCK = 1 << 14


@jit
def penalty_block(param, grad, l2, l1, b):
    """grad += l2 param + l1 sign(param) on block b; returns the block's
    l2/2 sum param^2 + l1 sum |param| in float64 (terms with a 0 factor are
    skipped, as the reference does)."""
    zero, one = param.dtype.type(0), param.dtype.type(1)
    lo, hi = b * PENALTY_BLOCK, min(param.size, (b + 1) * PENALTY_BLOCK)
    use_l2, use_l1 = l2 != zero, l1 != zero
    sq, ab = 0.0, 0.0
    for i in range(lo, hi):
        p = param[i]
        g = grad[i]
        if use_l2:
            sq += np.float64(p) * np.float64(p)
            g += l2 * p
        if use_l1:
            ab += abs(np.float64(p))
            g += l1 * (one if p > zero else (-one if p < zero else p))
        grad[i] = g
    return 0.5 * np.float64(l2) * sq + np.float64(l1) * ab


@jit
def penalty_serial(param, grad, l2, l1):
    total = 0.0
    for b in range((param.size + PENALTY_BLOCK - 1) // PENALTY_BLOCK):
        total += penalty_block(param, grad, l2, l1, b)
    return total


@jit_parallel
def penalty_parallel(param, grad, l2, l1):
    nblocks = (param.size + PENALTY_BLOCK - 1) // PENALTY_BLOCK
    partial = np.empty(nblocks)
    for b in prange(nblocks):
        partial[b] = penalty_block(param, grad, l2, l1, b)
    total = 0.0
    for b in range(nblocks):
        total += partial[b]
    return total


# ------------------------------------------------------------------ optimizers
# One pass over param, grad and state per step, in place; lo..hi flat indices.
# Scalars arrive in the dtype of param. The expressions keep the reference's
# order of operations.
@jit
def sgd_block(param, grad, velocity, lr, momentum, nesterov, weight_decay, lr_in_velocity,
              lo, hi):
    zero = param.dtype.type(0)
    use_wd = weight_decay != zero
    if momentum == zero:
        for i in range(lo, hi):
            g = grad[i] + weight_decay * param[i] if use_wd else grad[i]
            param[i] -= lr * g
    elif lr_in_velocity:  # scikit-learn's rule
        for i in range(lo, hi):
            g = grad[i] + weight_decay * param[i] if use_wd else grad[i]
            v = momentum * velocity[i] - lr * g
            velocity[i] = v
            param[i] += momentum * v - lr * g if nesterov else v
    else:
        for i in range(lo, hi):
            g = grad[i] + weight_decay * param[i] if use_wd else grad[i]
            v = momentum * velocity[i] + g
            velocity[i] = v
            param[i] -= lr * (g + momentum * v if nesterov else v)


@jit_parallel
def sgd_parallel(param, grad, velocity, lr, momentum, nesterov, weight_decay, lr_in_velocity, nb):
    for b in prange(nb):
        lo, hi = split(b, nb, param.size)
        sgd_block(param, grad, velocity, lr, momentum, nesterov, weight_decay, lr_in_velocity,
                  lo, hi)


@jit
def adagrad_block(param, grad, sum_sq, lr, eps, weight_decay, lo, hi):
    zero = param.dtype.type(0)
    for i in range(lo, hi):
        g = grad[i] + weight_decay * param[i] if weight_decay != zero else grad[i]
        s = sum_sq[i] + g * g
        sum_sq[i] = s
        param[i] -= lr * g / (math.sqrt(s) + eps)


@jit_parallel
def adagrad_parallel(param, grad, sum_sq, lr, eps, weight_decay, nb):
    for b in prange(nb):
        lo, hi = split(b, nb, param.size)
        adagrad_block(param, grad, sum_sq, lr, eps, weight_decay, lo, hi)


@jit
def rmsprop_block(param, grad, square_avg, lr, alpha, rest, eps, weight_decay, momentum,
                  momentum_buf, grad_avg, use_momentum, centered, lo, hi):
    """rest = 1 - alpha, rounded from float64 as the reference's (1 - alpha)."""
    zero = param.dtype.type(0)
    for i in range(lo, hi):
        g = grad[i] + weight_decay * param[i] if weight_decay != zero else grad[i]
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


@jit_parallel
def rmsprop_parallel(param, grad, square_avg, lr, alpha, rest, eps, weight_decay, momentum,
                     momentum_buf, grad_avg, use_momentum, centered, nb):
    for b in prange(nb):
        lo, hi = split(b, nb, param.size)
        rmsprop_block(param, grad, square_avg, lr, alpha, rest, eps, weight_decay, momentum,
                      momentum_buf, grad_avg, use_momentum, centered, lo, hi)


@jit
def adadelta_block(param, grad, square_avg, acc_delta, lr, rho, rest, eps, weight_decay, lo, hi):
    """rest = 1 - rho, rounded from float64."""
    zero = param.dtype.type(0)
    for i in range(lo, hi):
        g = grad[i] + weight_decay * param[i] if weight_decay != zero else grad[i]
        sa = square_avg[i] * rho + rest * g * g
        square_avg[i] = sa
        delta = math.sqrt(acc_delta[i] + eps) / math.sqrt(sa + eps) * g
        acc_delta[i] = acc_delta[i] * rho + rest * delta * delta
        param[i] -= lr * delta


@jit_parallel
def adadelta_parallel(param, grad, square_avg, acc_delta, lr, rho, rest, eps, weight_decay, nb):
    for b in prange(nb):
        lo, hi = split(b, nb, param.size)
        adadelta_block(param, grad, square_avg, acc_delta, lr, rho, rest, eps, weight_decay, lo,
                       hi)


@jit
def adam_block(param, grad, m, v, v_max, step, beta1, rest1, beta2, rest2, inv_sqrt_bias2, eps,
               weight_decay, decay, amsgrad, lo, hi):
    """Adam on lo..hi. step = lr / (1 - beta1^t); inv_sqrt_bias2 = 1 / sqrt(1 - beta2^t);
    rest1, rest2 = 1 - beta1, 1 - beta2 (rounded from float64, as the reference's);
    weight_decay (L2, added to g) or decay (decoupled: param *= decay), one of them
    inactive (0 and 1); v_max read and written only with amsgrad."""
    dt = param.dtype.type
    zero, one = dt(0), dt(1)
    for i in range(lo, hi):
        p = param[i] * decay if decay != one else param[i]
        g = grad[i] + weight_decay * p if weight_decay != zero else grad[i]
        mi = m[i] * beta1 + rest1 * g
        vi = v[i] * beta2 + rest2 * g * g
        m[i] = mi
        v[i] = vi
        if amsgrad:
            vm = v_max[i]
            vi = vi if (vi > vm or vi != vi) else vm  # np.maximum: NaN wins
            v_max[i] = vi
        param[i] = p - step * mi / (math.sqrt(vi) * inv_sqrt_bias2 + eps)


@jit_parallel
def adam_parallel(param, grad, m, v, v_max, step, beta1, rest1, beta2, rest2, inv_sqrt_bias2,
                  eps, weight_decay, decay, amsgrad, nb):
    for b in prange(nb):
        lo, hi = split(b, nb, param.size)
        adam_block(param, grad, m, v, v_max, step, beta1, rest1, beta2, rest2, inv_sqrt_bias2,
                   eps, weight_decay, decay, amsgrad, lo, hi)
