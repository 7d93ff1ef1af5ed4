"""Jitted recurrent kernels (rnn, lstm, gru) behind the numba backend.

Each forward and each backward is one jitted function holding the whole time
loop, so no Python runs between steps. GEMMs call BLAS's sgemm/dgemm directly
(SciPy's, see _blas.py),
which takes row strides, so a step's slice [:, t] of a batch-first (N, T, ...)
sequence is an operand as it is (leading dimension T * width), and accumulates
(beta = 1), so dW_h sums over steps in place: no copy, no allocation per step.
The input projection of every step is one GEMM (N*T, F) @ (F, G*H) before the
loop; each step one (N, H) @ (H, G*H) GEMM and one pass over (N, H) for every
gate; the backward per step dW_h += h_{t-1}.T @ dz_t and dh = dz_t @ W_h.T, and
after the loop dx and dW_x over every step at once.

Roundings follow the reference: elementwise operations in the array dtype, in
the reference's order, with tanh and sigmoid evaluated in float64 and rounded
once (reference.FLOAT64_INSIDE; for float32 on a cheaper exp, gate_sigmoid and
gate_tanh); bias gradients summed in float64. (BLAS's
beta = 1 rounds a product and the sum it is added to once, where the reference
rounds twice.)
"""

import ctypes
import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._blas import blas_gemm
from ._numba_kernels import jit, jit_parallel
from ._numba_math import BIASED64, LN2_HI, LN2_LO, LOG2E, fexp, jit_inline, pow2_bits, tanh64

_GEMM_TYPE = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 13))
# dtype -> ?gemm, passed to the kernels as an argument (a global would be baked
# into Numba's on-disk cache as an address of the process that compiled it)
GEMM = {np.dtype(np.float32): _GEMM_TYPE(blas_gemm("sgemm")),
        np.dtype(np.float64): _GEMM_TYPE(blas_gemm("dgemm"))}


class Blas:
    """What a kernel passes ?gemm by pointer: ints (6,) int32, scalars (2,) of the
    dtype, the flags b"NT"; allocated once per kernel call. With `parts`, ints
    (parts, 6) and scalars (parts, 2): one row for each range of a split kernel,
    which calls ?gemm from several threads at once (part_blas)."""

    def __init__(self, dtype, parts=None):
        self.fn = GEMM[np.dtype(dtype)]
        self.ints = np.zeros(6 if parts is None else (parts, 6), np.int32)
        self.scalars = np.zeros(2 if parts is None else (parts, 2), dtype)
        self.flags = np.frombuffer(b"NT", np.uint8).copy()

    def args(self):
        return self.fn, self.ints, self.scalars, self.flags


@jit_inline
def part_blas(blas, p):
    """The ?gemm arguments of range p of a split kernel (Blas(dtype, parts))."""
    fn, ints, scalars, flags = blas
    return fn, ints[p], scalars[p], flags


@jit_inline
def gemm(blas, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """Row-major C (m, n; row stride ldc) = op(A) @ op(B) + beta C, op(A) (m, k)
    being A (row stride lda) or, with ta, the transpose of A (k, m); likewise B.
    a, b, c: arrays whose first element is the matrix's. Column-major BLAS sees
    C.T = op(B).T @ op(A).T: the operands swap, the flags stay."""
    fn, ints, scalars, flags = blas
    ints[0] = n
    ints[1] = m
    ints[2] = k
    ints[3] = ldb
    ints[4] = lda
    ints[5] = ldc
    scalars[0] = 1
    scalars[1] = beta
    fn(flags[tb:].ctypes, flags[ta:].ctypes, ints[0:].ctypes, ints[1:].ctypes, ints[2:].ctypes,
       scalars[0:].ctypes, b.ctypes, ints[3:].ctypes, a.ctypes, ints[4:].ctypes,
       scalars[1:].ctypes, c.ctypes, ints[5:].ctypes)


# The most multiply-adds of a per-step GEMM block (gemm_tiles), as the C kernels'
# (csrc/recurrent.c): OpenBLAS's SkylakeX small kernels take GEMMs up to 10^6
# multiply-adds without packing W_h at every step.
SMALL_GEMM_MADDS = 1000000


@jit_inline
def gemm_tiles(blas, ta, m, n, k, a, lda, b, b_row, b_col, ldb, beta, c, c_row, c_col, ldc):
    """C = op(A) @ B + beta C over blocks of C's (and B's) columns, as
    csrc/recurrent_impl.h gemm_tiles: widths the largest power of two from 16
    whose GEMM has at most SMALL_GEMM_MADDS multiply-adds, or one GEMM when the
    whole fits or no block of 16 would. B and C are 2-D arrays whose element
    [b_row, b_col] ([c_row, c_col]) starts the matrix (row strides ldb, ldc).
    (dz_t @ W_h.T stays one GEMM, see csrc/recurrent.c.)"""
    tile = 16
    while m * k * tile * 2 <= SMALL_GEMM_MADDS:
        tile *= 2
    if m * k * n <= SMALL_GEMM_MADDS or m * k * 16 > SMALL_GEMM_MADDS:
        tile = n
    for j in range(0, n, tile):
        gemm(blas, ta, 0, m, min(tile, n - j), k, a, lda, b[b_row, b_col + j:], ldb, beta,
             c[c_row, c_col + j:], ldc)


@jit_inline
def sigmoid64(v):
    e = fexp(-abs(v))  # in (0, 1]: no overflow for any v
    return (1.0 if v >= 0.0 else e) / (1.0 + e)


# The gates of float32 kernels: sigmoid and tanh in float64, rounded once to
# float32 as the reference, but on _exp_parts, which is accurate enough for a
# float32 result and cheaper than fexp's float64 (the C kernels compute float32
# gates in float: csrc/recurrent.c). Float64 kernels keep sigmoid64 and tanh64.
_EXP_OPTIONS = {"error_model": "numpy", "fastmath": {"contract"}}  # FMAs, as the C kernels
_T2, _T3, _T4, _T5, _T6, _T7, _T8, _T9, _T10, _T11 = (1.0 / math.factorial(k) for k in range(2, 12))


@njit(cache=True, inline="always", **_EXP_OPTIONS)
def _exp_parts(x):
    """(s, q) with e^x = s (1 + q) for x in [-104, 0] (or NaN): s = 2^n normal, q =
    e^r - 1 for x = n ln2 + r, |r| <= ln2 / 2, by its Taylor polynomial to r^11
    (relative error 2e-13: a float32 rounded from s (1 + q) is the correctly
    rounded one but within 2e-13 of halfway between two floats)."""
    t = x * LOG2E + BIASED64
    n = t - BIASED64
    r = (x - n * LN2_HI) - n * LN2_LO
    q = _T11
    q = q * r + _T10
    q = q * r + _T9
    q = q * r + _T8
    q = q * r + _T7
    q = q * r + _T6
    q = q * r + _T5
    q = q * r + _T4
    q = q * r + _T3
    q = q * r + _T2
    q = q * r + 1.0
    return pow2_bits(t), q * r


@njit(cache=True, inline="always", **_EXP_OPTIONS)
def _sigmoid_for32(v):
    a = abs(v)
    a = 104.0 if a > 104.0 else a  # sigmoid(-104) rounds to 0 in float32
    s, q = _exp_parts(-a)
    e = s * q + s  # e^-a
    return (1.0 if v >= 0.0 else e) / (1.0 + e)


@njit(cache=True, inline="always", **_EXP_OPTIONS)
def _tanh_for32(v):
    a = abs(v)
    a = 20.0 if a > 20.0 else a  # tanh(20) rounds to 1 in float32
    s, q = _exp_parts(-2.0 * a)
    e = s * q + (s - 1.0)  # e^-2a - 1, accurate near 0
    t = -e / (2.0 + e)
    return t if v >= 0.0 else -t


def gate_sigmoid(v, like):
    """sigmoid of the float64 v, to be rounded to the type of the scalar `like`
    (float32: _sigmoid_for32, float64: sigmoid64); jitted code only."""
    raise NotImplementedError("gate_sigmoid is callable from jitted code only")


def gate_tanh(v, like):
    """tanh of the float64 v, to be rounded to the type of `like`; jitted code only."""
    raise NotImplementedError("gate_tanh is callable from jitted code only")


@overload(gate_sigmoid, jit_options=_EXP_OPTIONS)
def _gate_sigmoid_overload(v, like):
    if like == types.float32:
        return lambda v, like: _sigmoid_for32(v)
    return lambda v, like: sigmoid64(v)


@overload(gate_tanh, jit_options=_EXP_OPTIONS)
def _gate_tanh_overload(v, like):
    if like == types.float32:
        return lambda v, like: _tanh_for32(v)
    return lambda v, like: tanh64(v)


@jit_inline
def _project(blas, x, W_x, out):
    """out (N, T, G*H) = x (N, T, F) @ W_x as one GEMM over every step (out: the
    forward's gates, or hs for the simple RNN, which each step then overwrites)."""
    n, steps, f = x.shape
    width = W_x.shape[1]
    gemm(blas, 0, 0, n * steps, width, f, x, f, W_x, width, 0.0, out, width)


@jit_inline
def _recurrent_gemm(blas, t, h0, hs, W_h, z):
    """z (N, G*H) = h_{t-1} @ W_h, h_{t-1} = hs[:, t - 1] (h0 at t = 0)."""
    n, steps, hidden = hs.shape
    width = W_h.shape[1]
    if t:
        gemm_tiles(blas, 0, n, width, hidden, hs[0, t - 1], steps * hidden, W_h, 0, 0, width, 0.0,
                   z, 0, 0, width)
    else:
        gemm_tiles(blas, 0, n, width, hidden, h0, hidden, W_h, 0, 0, width, 0.0, z, 0, 0, width)


@jit_inline
def _backward_gemms(blas, t, h0, hs, W_h, dzt, ld_dz, dW_h, dh, beta):
    """dW_h += h_{t-1}.T @ dz_t and dh = dz_t @ W_h.T + beta dh; dz_t (N, G*H) with
    row stride ld_dz."""
    _dW_h_gemm(blas, t, h0, hs, dzt, ld_dz, dW_h)
    _dh_gemm(blas, dzt, ld_dz, W_h, dh, beta)


@jit_inline
def _dW_h_gemm(blas, t, h0, hs, dzt, ld_dz, dW_h):
    """dW_h += h_{t-1}.T @ dz_t, dz_t (N, G*H) 2-D with row stride ld_dz."""
    n, steps, hidden = hs.shape
    width = dW_h.shape[1]
    if t:
        gemm_tiles(blas, 1, hidden, width, n, hs[0, t - 1], steps * hidden, dzt, 0, 0, ld_dz, 1.0,
                   dW_h, 0, 0, width)
    else:
        gemm_tiles(blas, 1, hidden, width, n, h0, hidden, dzt, 0, 0, ld_dz, 1.0, dW_h, 0, 0, width)


@jit_inline
def _dh_gemm(blas, dzt, ld_dz, W_h, dh, beta):
    """dh = dz_t @ W_h.T + beta dh, dz_t (N, G*H) with row stride ld_dz."""
    n, hidden = dh.shape
    width = W_h.shape[1]
    gemm(blas, 0, 1, n, hidden, width, dzt, ld_dz, W_h, width, beta, dh, hidden)


@jit_inline
def _add_row(row, acc):
    """acc (float64) += row, element by element (db's column sums, in row order)."""
    for j in range(acc.size):
        acc[j] += row[j]


@jit
def recurrent_dW(blas, h0, hs, x, dz, dW_h, dW_x, db, c0, c1):
    """dW_h = the sum over t = T - 1, ..., 0 of h_{t-1}.T @ dz_t (dz (N, T, G*H)), one
    GEMM over the whole batch per step: the reference's order of sums, so that
    the split of the batch over threads changes no rounding of dW_h; beside it
    while dz_t is in the cache, dW_x = the sum of x_t.T @ dz_t likewise and db =
    the column sums of dz in float64.
    Only columns [c0, c1) (each column's sums are the same whatever the columns
    computed beside it)."""
    n, steps, hidden = hs.shape
    f, width = x.shape[2], dW_h.shape[1]
    if c1 <= c0:
        return
    dW_h[:, c0:c1] = 0
    dW_x[:, c0:c1] = 0
    acc = np.zeros(c1 - c0)
    dz_rows = dz[0]  # (T, G*H): row t, column c0 starts dz_t's columns (row stride T G*H)
    for t in range(steps - 1, -1, -1):
        if t:
            gemm_tiles(blas, 1, hidden, c1 - c0, n, hs[0, t - 1], steps * hidden, dz_rows, t, c0,
                       steps * width, 1.0, dW_h, 0, c0, width)
        else:
            gemm_tiles(blas, 1, hidden, c1 - c0, n, h0, hidden, dz_rows, t, c0, steps * width, 1.0,
                       dW_h, 0, c0, width)
        if f:
            gemm_tiles(blas, 1, f, c1 - c0, n, x[0, t], steps * f, dz_rows, t, c0, steps * width,
                       1.0, dW_x, 0, c0, width)
        for i in range(n):
            _add_row(dz[i, t, c0:c1], acc)
    for j in range(c1 - c0):
        db[c0 + j] = acc[j]


@jit
def input_side(blas, x, W_x, dz, dx, dW_x, db, r0, r1, c0, c1, with_sums):
    """dx = dz @ W_x.T (a GEMM), and with_sums dW_x = x.T @ dz over every step at
    once (a GEMM) and db the column sums of dz (N, T, G*H), in float64 (else
    recurrent_dW's). Only rows [r0, r1) of dx (of N*T), columns [c0, c1) of dW_x
    and db; no dx when it is empty (not wanted)."""
    n, steps, f = x.shape
    width = dz.shape[2]
    rows = n * steps
    dz_flat = dz.reshape(-1)
    if r1 > r0 and dx.size:
        gemm(blas, 0, 1, r1 - r0, f, width, dz_flat[r0 * width:], width, W_x, width, 0.0,
             dx.reshape(-1)[r0 * f:], f)
    if not with_sums:
        return
    if c1 > c0:
        gemm(blas, 1, 0, f, c1 - c0, rows, x, f, dz_flat[c0:], width, 0.0, dW_x.reshape(-1)[c0:],
             width)
    dz2 = dz.reshape(rows, width)
    acc = np.zeros(c1 - c0)
    for r in range(rows):
        _add_row(dz2[r, c0:c1], acc)
    for j in range(c1 - c0):
        db[c0 + j] = acc[j]


@jit
def backward_after(blas, x, h0, W_x, hs, dz, dx, dW_x, dW_h, db, with_dW_h):
    """The backward's work after its time loop on the whole batch: dW_h, dW_x and db
    (recurrent_dW; with_dW_h False, the GRU's: its dW_h is summed in its time
    loop, dW_x and db by input_side) and dx."""
    rows, width = x.shape[0] * x.shape[1], dz.shape[2]
    if with_dW_h:
        recurrent_dW(blas, h0, hs, x, dz, dW_h, dW_x, db, 0, width)
    input_side(blas, x, W_x, dz, dx, dW_x, db, 0, rows, 0, width, not with_dW_h)


@jit_parallel
def backward_after_split(blas, bounds, x, h0, W_x, hs, dz, dx, dW_x, dW_h, db, with_dW_h):
    """backward_after in parts (as many as the ranges of `bounds`): part p takes
    columns p/parts to (p+1)/parts of dW_h, dW_x and db, and as much of dx's rows."""
    parts = bounds.size - 1
    rows, width = x.shape[0] * x.shape[1], dz.shape[2]
    for p in prange(parts):
        c0, c1 = width * p // parts, width * (p + 1) // parts
        part = part_blas(blas, p)
        if with_dW_h:
            recurrent_dW(part, h0, hs, x, dz, dW_h, dW_x, db, c0, c1)
        input_side(part, x, W_x, dz, dx, dW_x, db, rows * p // parts, rows * (p + 1) // parts, c0, c1,
                   not with_dW_h)


# ------------------------------------------------------------- gate passes
# One row (one sequence, one step) per call, on 1-D views: functions of their
# own, which LLVM vectorises (written inside the time loops, the LSTM pass ran
# about 7 times slower). Gates at j, hidden + j, ... of a row of width G * hidden.
@jit
def rnn_forward_row(hr, zr, b, relu):
    """hr = act((hr + b) + zr), hr in: the row's input projection; NaN stays NaN
    under relu (as np.maximum)."""
    zero = hr.dtype.type(0)
    if relu:
        for j in range(hr.size):
            v = (hr[j] + b[j]) + zr[j]
            hr[j] = zero if v < zero else v
    else:
        for j in range(hr.size):
            hr[j] = gate_tanh(np.float64((hr[j] + b[j]) + zr[j]), zero)


@jit
def rnn_backward_row(dh_row, dh, hr, relu, dzr):
    """dzr = (dh_row + dh) act'(hr)."""
    dt = hr.dtype.type
    one, zero = dt(1), dt(0)
    for j in range(hr.size):
        g = dh_row[j] + dh[j]
        y = hr[j]
        if relu:
            dzr[j] = g if y > zero else zero
        else:
            dzr[j] = g * (one - y * y)


@jit
def lstm_forward_row(gr, zr, b, c_prev, c_row, h_row, row):
    """gates gr (i, f, g, o; in: the row's input projection), cell c_row and
    state h_row of one row. The gates go to row (4 hidden, scratch) first and
    then to gr: written to gr directly, each iteration's stores to the read
    array keep LLVM from vectorising the loop (6.8x the time)."""
    hidden = c_row.size
    dt = c_row.dtype.type
    like = dt(0)
    for j in range(hidden):
        ig = dt(gate_sigmoid(np.float64((gr[j] + b[j]) + zr[j]), like))
        k = hidden + j
        fg = dt(gate_sigmoid(np.float64((gr[k] + b[k]) + zr[k]), like))
        k += hidden
        gg = dt(gate_tanh(np.float64((gr[k] + b[k]) + zr[k]), like))
        k += hidden
        og = dt(gate_sigmoid(np.float64((gr[k] + b[k]) + zr[k]), like))
        c = fg * c_prev[j] + ig * gg
        row[j] = ig
        row[hidden + j] = fg
        row[2 * hidden + j] = gg
        row[3 * hidden + j] = og
        c_row[j] = c
        h_row[j] = og * dt(gate_tanh(np.float64(c), like))
    gr[:] = row


@jit
def lstm_backward_row(gr, c_row, c_prev, dh_row, dh, dc, dzr):
    """dzr (4 hidden) of one row; dc in: the gradient c_t receives from step
    t + 1, out: c_{t-1}'s."""
    hidden = c_row.size
    one = c_row.dtype.type(1)
    like = c_row.dtype.type(0)
    for j in range(hidden):
        ig = gr[j]
        fg = gr[hidden + j]
        gg = gr[2 * hidden + j]
        og = gr[3 * hidden + j]
        tc = c_row.dtype.type(gate_tanh(np.float64(c_row[j]), like))
        g = dh_row[j] + dh[j]
        dcv = dc[j] + g * og * (one - tc * tc)
        dc[j] = dcv * fg
        dzr[j] = dcv * gg * ig * (one - ig)
        dzr[hidden + j] = dcv * c_prev[j] * fg * (one - fg)
        dzr[2 * hidden + j] = dcv * ig * (one - gg * gg)
        dzr[3 * hidden + j] = g * tc * og * (one - og)


@jit
def gru_forward_row(gr, zr, b_x, b_h, h_prev, hn_row, h_row, row):
    """gates gr (r, z, n; in: the row's input projection), hn_row (h_{t-1} W_hn
    + b_hn) and h_row of one row; through row (3 hidden, scratch) as
    lstm_forward_row's."""
    hidden = h_row.size
    dt = h_row.dtype.type
    one = dt(1)
    for j in range(hidden):
        k = hidden + j
        m = 2 * hidden + j
        r = dt(gate_sigmoid(np.float64((gr[j] + b_x[j]) + (zr[j] + b_h[j])), one))
        u = dt(gate_sigmoid(np.float64((gr[k] + b_x[k]) + (zr[k] + b_h[k])), one))
        a_n = zr[m] + b_h[m]
        new = dt(gate_tanh(np.float64((gr[m] + b_x[m]) + r * a_n), one))
        row[j] = r
        row[k] = u
        row[m] = new
        hn_row[j] = a_n
        h_row[j] = (one - u) * new + u * h_prev[j]
    gr[:] = row


@jit
def gru_backward_row(gr, hn_row, h_prev, dh_row, dh, dxr, dhr, acc):
    """dxr, dhr (3 hidden) of one row, their db_h terms added to acc (float64);
    dh in: the gradient h_t receives from step t + 1, out: the direct path to
    h_{t-1}, to which the step's GEMM adds dhw @ W_h.T."""
    hidden = dh.size
    one = dh.dtype.type(1)
    for j in range(hidden):
        k = hidden + j
        m = 2 * hidden + j
        r = gr[j]
        u = gr[k]
        new = gr[m]
        g = dh_row[j] + dh[j]
        dn = g * (one - u) * (one - new * new)
        dr = dn * hn_row[j] * r * (one - r)
        du = g * (h_prev[j] - new) * u * (one - u)
        dnr = dn * r
        dxr[j] = dr
        dxr[k] = du
        dxr[m] = dn
        dhr[j] = dr
        dhr[k] = du
        dhr[m] = dnr
        acc[j] += dr
        acc[k] += du
        acc[m] += dnr
        dh[j] = g * u


# ---------------------------------------------------------------------- rnn
# Each kernel's time loop is a function over the rows it is given (`*_rows`): a
# range of the batch's rows is a batch of its own (every array is batch-first).
# The whole-batch kernels call it once; the `*_split` ones once per range of
# rows `bounds` (parts + 1,), in parallel (see numba_backend._recurrent_split),
# each with its own ?gemm scratch (part_blas). After the ranges the backward's
# dW_h and dW_x are one GEMM each over the whole batch per step, db summed
# beside them (recurrent_dW: the same order of sums for any split), and dx one
# GEMM (input_side), in as many parts by columns (backward_after_split), BLAS
# still on one thread. The GRU's backward, whose dhw
# holds one step only, sums dW_h per range instead: the first range into dW_h,
# range p > 0 into slice p - 1 of dW_h_parts (parts - 1, H, G*H), added into
# dW_h in range order after.
@jit
def rnn_forward(blas, x, h0, W_x, W_h, b, relu, hs, z):
    """hs (N, T, H) of h_t = act(x_t W_x + b + h_{t-1} W_h); z (N, H) a workspace."""
    n, steps, hidden = hs.shape
    _project(blas, x, W_x, hs)
    for t in range(steps):
        _recurrent_gemm(blas, t, h0, hs, W_h, z)
        for i in range(n):
            rnn_forward_row(hs[i, t], z[i], b, relu)


@jit_parallel
def rnn_forward_split(blas, bounds, x, h0, W_x, W_h, b, relu, hs, z):
    for p in prange(bounds.size - 1):
        i, j = bounds[p], bounds[p + 1]
        rnn_forward(part_blas(blas, p), x[i:j], h0[i:j], W_x, W_h, b, relu, hs[i:j], z[i:j])


@jit
def rnn_backward_rows(blas, dhs, hs, W_h, relu, dz, dh):
    """The time loop of the gradients: dz (N, T, H) d loss / d pre-activations,
    dh (N, H) the gradient h_t receives from step t + 1 (ends as dh0's)."""
    n, steps, hidden = hs.shape
    dh[:] = 0
    for t in range(steps - 1, -1, -1):
        for i in range(n):
            rnn_backward_row(dhs[i, t], dh[i], hs[i, t], relu, dz[i, t])
        _dh_gemm(blas, dz[0, t], steps * hidden, W_h, dh, 0.0)


@jit
def rnn_backward(blas, dhs, x, h0, W_x, W_h, hs, relu, dx, dh0, dW_x, dW_h, db, dz, dh):
    """Gradients through time; dz (N, T, H) and dh (N, H) workspaces."""
    rnn_backward_rows(blas, dhs, hs, W_h, relu, dz, dh)
    dh0[:] = dh
    backward_after(blas, x, h0, W_x, hs, dz, dx, dW_x, dW_h, db, True)


@jit_parallel
def rnn_backward_split(blas, bounds, dhs, hs, W_h, relu, dz, dh):
    for p in prange(bounds.size - 1):
        i, j = bounds[p], bounds[p + 1]
        rnn_backward_rows(part_blas(blas, p), dhs[i:j], hs[i:j], W_h, relu, dz[i:j], dh[i:j])


# --------------------------------------------------------------------- lstm
@jit
def lstm_forward(blas, x, h0, c0, W_x, W_h, b, hs, cs, gates, z):
    """hs, cs (N, T, H); gates (N, T, 4H): i, f, g, o after their nonlinearities;
    z (N, 4H) a workspace."""
    n, steps, hidden = hs.shape
    _project(blas, x, W_x, gates)
    row = np.empty(4 * hidden, gates.dtype)
    for t in range(steps):
        _recurrent_gemm(blas, t, h0, hs, W_h, z)
        for i in range(n):
            c_prev = cs[i, t - 1] if t else c0[i]
            lstm_forward_row(gates[i, t], z[i], b, c_prev, cs[i, t], hs[i, t], row)


@jit_parallel
def lstm_forward_split(blas, bounds, x, h0, c0, W_x, W_h, b, hs, cs, gates, z):
    for p in prange(bounds.size - 1):
        i, j = bounds[p], bounds[p + 1]
        lstm_forward(part_blas(blas, p), x[i:j], h0[i:j], c0[i:j], W_x, W_h, b, hs[i:j], cs[i:j],
                     gates[i:j], z[i:j])


@jit
def lstm_backward_rows(blas, dhs, c0, W_h, hs, cs, gates, dz, dh, dc):
    """The time loop of the gradients: dz (N, T, 4H); dh, dc (N, H) the gradients
    h_t and c_t receive from step t + 1 (end as dh0's, dc0's)."""
    n, steps, hidden = hs.shape
    dh[:] = 0
    dc[:] = 0
    for t in range(steps - 1, -1, -1):
        for i in range(n):
            c_prev = cs[i, t - 1] if t else c0[i]
            lstm_backward_row(gates[i, t], cs[i, t], c_prev, dhs[i, t], dh[i], dc[i], dz[i, t])
        _dh_gemm(blas, dz[0, t], steps * 4 * hidden, W_h, dh, 0.0)


@jit
def lstm_backward(blas, dhs, x, h0, c0, W_x, W_h, hs, cs, gates, dx, dh0, dc0, dW_x, dW_h, db,
                  dz, dh, dc):
    """Gradients through time; dz (N, T, 4H), dh and dc (N, H) workspaces."""
    lstm_backward_rows(blas, dhs, c0, W_h, hs, cs, gates, dz, dh, dc)
    dh0[:] = dh
    dc0[:] = dc
    backward_after(blas, x, h0, W_x, hs, dz, dx, dW_x, dW_h, db, True)


@jit_parallel
def lstm_backward_split(blas, bounds, dhs, c0, W_h, hs, cs, gates, dz, dh, dc):
    for p in prange(bounds.size - 1):
        i, j = bounds[p], bounds[p + 1]
        lstm_backward_rows(part_blas(blas, p), dhs[i:j], c0[i:j], W_h, hs[i:j], cs[i:j], gates[i:j],
                           dz[i:j], dh[i:j], dc[i:j])


# ---------------------------------------------------------------------- gru
@jit
def gru_forward(blas, x, h0, W_x, W_h, b_x, b_h, hs, gates, hn, z):
    """hs (N, T, H); gates (N, T, 3H): r, z, n; hn (N, T, H) h_{t-1} W_hn + b_hn;
    z (N, 3H) a workspace."""
    n, steps, hidden = hs.shape
    _project(blas, x, W_x, gates)
    row = np.empty(3 * hidden, gates.dtype)
    for t in range(steps):
        _recurrent_gemm(blas, t, h0, hs, W_h, z)
        for i in range(n):
            h_prev = hs[i, t - 1] if t else h0[i]
            gru_forward_row(gates[i, t], z[i], b_x, b_h, h_prev, hn[i, t], hs[i, t], row)


@jit_parallel
def gru_forward_split(blas, bounds, x, h0, W_x, W_h, b_x, b_h, hs, gates, hn, z):
    for p in prange(bounds.size - 1):
        i, j = bounds[p], bounds[p + 1]
        gru_forward(part_blas(blas, p), x[i:j], h0[i:j], W_x, W_h, b_x, b_h, hs[i:j], gates[i:j],
                    hn[i:j], z[i:j])


@jit
def gru_backward_rows(blas, dhs, h0, W_h, hs, gates, hn, dW_h, dxw, dhw, dh, acc):
    """The time loop of the gradients: dxw (N, T, 3H) d loss / d (x_t W_x + b_x);
    dhw (N, 3H) d loss / d (h_{t-1} W_h + b_h) of one step; dh (N, H) the gradient
    h_t receives from step t + 1 (ends as dh0's): first its direct part dh_t * z,
    to which the GEMM adds dhw @ W_h.T; dW_h; acc (3H,) float64 db_h's sums."""
    n, steps, hidden = hs.shape
    dh[:] = 0
    dW_h[:] = 0
    acc[:] = 0
    for t in range(steps - 1, -1, -1):
        for i in range(n):
            h_prev = hs[i, t - 1] if t else h0[i]
            gru_backward_row(gates[i, t], hn[i, t], h_prev, dhs[i, t], dh[i], dxw[i, t], dhw[i],
                             acc)
        _backward_gemms(blas, t, h0, hs, W_h, dhw, 3 * hidden, dW_h, dh, 1.0)


@jit
def gru_backward(blas, dhs, x, h0, W_x, W_h, hs, gates, hn, dx, dh0, dW_x, dW_h, db_x, db_h, dxw,
                 dhw, dh):
    """Gradients through time; dxw (N, T, 3H), dhw (N, 3H) and dh (N, H) workspaces."""
    acc = np.zeros(db_h.size)
    gru_backward_rows(blas, dhs, h0, W_h, hs, gates, hn, dW_h, dxw, dhw, dh, acc)
    dh0[:] = dh
    for j in range(db_h.size):
        db_h[j] = acc[j]
    backward_after(blas, x, h0, W_x, hs, dxw, dx, dW_x, dW_h, db_x, False)


@jit_parallel
def gru_backward_split(blas, bounds, dhs, h0, W_h, hs, gates, hn, dW_h, dW_h_parts, dxw, dhw, dh,
                       db_h):
    """db_h written from its float64 sums, added over the ranges in order."""
    parts = bounds.size - 1
    acc = np.zeros((parts, db_h.size))
    for p in prange(parts):
        i, j = bounds[p], bounds[p + 1]
        gru_backward_rows(part_blas(blas, p), dhs[i:j], h0[i:j], W_h, hs[i:j], gates[i:j], hn[i:j],
                          dW_h if p == 0 else dW_h_parts[p - 1], dxw[i:j], dhw[i:j], dh[i:j],
                          acc[p])
    for p in range(1, parts):
        dW_h += dW_h_parts[p - 1]
        acc[0] += acc[p]
    for j in range(db_h.size):
        db_h[j] = acc[0, j]


# ------------------------------------------------------------------ embedding
# tokens (N, T) int32 or int64 in [0, V) (checked); W, dW (V, D); out, dy (N, T, D)
@jit
def embedding_forward(tokens, W, out):
    for n in range(tokens.shape[0]):
        for t in range(tokens.shape[1]):
            out[n, t] = W[tokens[n, t]]


@jit
def embedding_backward(dy, tokens, dW):
    """dW = 0 but at the tokens' rows, each the sum of its steps' dy, added in the
    row-major order of tokens (as the reference)."""
    dW[...] = 0
    for n in range(tokens.shape[0]):
        for t in range(tokens.shape[1]):
            row = dW[tokens[n, t]]
            for j in range(dW.shape[1]):
                row[j] += dy[n, t, j]

