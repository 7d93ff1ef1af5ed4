"""Jitted recurrent kernels (rnn, lstm, gru) behind the numba backend, in the C
kernels' order (csrc/recurrent_impl.h).

Each forward and each backward is one jitted function holding the whole time
loop, so no Python runs between steps. GEMMs call BLAS's sgemm/dgemm directly
(SciPy's, see _blas.py), which takes row strides, so a step's slice [:, t] of a
batch-first (N, T, ...) sequence is an operand as it is (leading dimension
T * width), and accumulates (beta = 1): no copy, no allocation per step. The
rnn and lstm forwards add each step's x_t W_x and h_{t-1} W_h in z (N, G*H),
which the gate pass then reads while it is in the cache; the GRU's n gate needs
x_t W_x apart, so its projection of every step is one GEMM before the loop. The
backward writes each step's pre-activation gradients into dz's rows at step 0
(in the cache, serving every step) and takes that step's share of dW_h, dW_x,
db and dx from them at once.

Elementwise operations follow the reference's, in the array dtype, with sigmoid
and tanh in float64 for float64 and in float32 within a few ulp for float32
(gate_sigmoid, gate_tanh; the reference rounds them once from float64); bias
gradients summed in float64. The sums are the reference's terms in another
order: float32 results are as accurate as the reference's against float64, not
equal to its rounding (fastnn.testing.reference_error).
"""

import math

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core.compiler import Flags
from numba.extending import intrinsic, overload

from ._blas import blas_gemm
from ._numba_kernels import jit, jit_range
from ._numba_math import (
    F32,
    LN2_HI32,
    LN2_LO32,
    LOG2E32,
    ONE32,
    ZERO32,
    WideCompiler,
    fexp,
    fma,
    jit_inline,
    pow2_bits,
    tanh64,
)
from ._numba_memory import element_pointer as at
from ._numba_memory import prefetch_l2
from ._range_threads import announce, leave

# dtype -> the address of ?gemm, passed to the kernels as an integer argument (a
# global would be baked into Numba's on-disk cache as an address of the process
# that compiled it; a ctypes function, which Numba also takes, costs two Python
# calls to unpack at every call of a kernel, on each of its threads)
GEMM = {np.dtype(np.float32): blas_gemm("sgemm"), np.dtype(np.float64): blas_gemm("dgemm")}


@intrinsic
def _call_gemm(typingctx, address, pointers):
    """The function at `address` (?gemm: 13 pointer arguments, nothing returned)
    called with `pointers`, a tuple of 13 addresses."""
    if not (isinstance(address, types.Integer) and isinstance(pointers, types.UniTuple)
            and pointers.count == 13 and isinstance(pointers.dtype, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        voidptr = ir.IntType(8).as_pointer()
        fn = builder.inttoptr(args[0], ir.FunctionType(ir.VoidType(), [voidptr] * 13).as_pointer())
        builder.call(fn, [builder.inttoptr(builder.extract_value(args[1], i), voidptr)
                          for i in range(13)])
        return context.get_dummy_value()
    return types.none(address, pointers), codegen


ROW_BYTES = 128  # two cache lines


class Blas:
    """What a kernel passes ?gemm by pointer: ints (6,) int32, scalars (2,) of the
    dtype, the flags b"NT"; allocated once per kernel call. With `parts`, ints
    and scalars (parts, ROW_BYTES / itemsize): one row for each range of a split
    kernel, which calls ?gemm from several threads at once (part_blas)."""

    def __init__(self, dtype, parts=None):
        self.fn = GEMM[np.dtype(dtype)]
        # a split kernel's rows 128 bytes apart, so that no two share a cache line:
        # its threads write theirs before each ?gemm (the LSTM kernels alone at
        # the benchmark's sizes, 2 threads, Zen 4: about 1% faster than rows of 24)
        self.ints = np.zeros(6 if parts is None else (parts, ROW_BYTES // 4), np.int32)
        self.scalars = np.zeros(2 if parts is None else (parts, ROW_BYTES // np.dtype(dtype).itemsize),
                                dtype)
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
    # every argument by address (int64: uintp and int64 would add up to a float);
    # ints[j] at i + j * iw, scalars[j] at s + j * sw
    f, i, s = np.int64(flags.ctypes.data), np.int64(ints.ctypes.data), np.int64(scalars.ctypes.data)
    iw, sw = ints.itemsize, scalars.itemsize
    _call_gemm(fn, (f + tb, f + ta, i, i + iw, i + 2 * iw, s, np.int64(b.ctypes.data), i + 3 * iw,
                    np.int64(a.ctypes.data), i + 4 * iw, s + sw, np.int64(c.ctypes.data), i + 5 * iw))


# The most multiply-adds of a per-step GEMM block (gemm_tiles), as the C kernels'
# (csrc/recurrent.c): OpenBLAS's SkylakeX small kernels take GEMMs up to 10^6
# multiply-adds without packing W_h at every step.
SMALL_GEMM_MADDS = 1000000


@jit_inline
def gemm_tiles(blas, ta, tb, m, n, k, a, lda, b, b_row, b_col, ldb, beta, c, c_row, c_col, ldc):
    """C = op(A) @ op(B) + beta C over blocks of C's columns, as
    csrc/recurrent_impl.h gemm_tiles: widths the largest power of two from 16
    whose GEMM has at most SMALL_GEMM_MADDS multiply-adds, or one GEMM when the
    whole fits or no block of 16 would. B and C are 2-D arrays whose element
    [b_row, b_col] ([c_row, c_col]) starts the matrix (row strides ldb, ldc);
    C's columns j.. are B's columns j.., or with tb its rows j..."""
    tile = n  # (m k = 0 included: no block ever exceeds the bound)
    if m * k * n > SMALL_GEMM_MADDS and m * k * 16 <= SMALL_GEMM_MADDS:
        tile = 16
        while m * k * tile * 2 <= SMALL_GEMM_MADDS:
            tile *= 2
    for j in range(0, n, tile):
        b_block = b[b_row + j, b_col:] if tb else b[b_row, b_col + j:]
        gemm(blas, ta, tb, m, min(tile, n - j), k, a, lda, b_block, ldb, beta, c[c_row, c_col + j:],
             ldc)


@jit_inline
def sigmoid64(v):
    e = fexp(-abs(v))  # in (0, 1]: no overflow for any v
    return (1.0 if v >= 0.0 else e) / (1.0 + e)


# The gates of float32 kernels are computed in float32, with the operations and
# FMAs of the C kernels' (csrc/recurrent.c gate_sigmoid_f32, gate_tanh_f32: within
# 2 and 3 ulp of the correctly rounded value), not in float64 rounded once as the
# reference's: twice the lanes and a shorter polynomial. Float64 kernels keep
# sigmoid64 and tanh64.
# e^-a for a in [0, 104] (or NaN) as s + s r q: -a = n ln2 + r, |r| <= ln2 / 2,
# r q = e^r - 1 by its Taylor polynomial to r^7, s = 2^(n + 64), normal down to
# n = -190, so s r is exact: the callers scale by 2^-64.
_GATE_SHIFT32 = F32(1.5 * 2**23 + 127 + 64)  # t's low bits: n + bias + 64 (pow2_bits)
_TWO_POW_M64_32 = F32(2.0**-64)
_Q7, _Q6, _Q5, _Q4, _Q3 = (F32(1 / math.factorial(k)) for k in (7, 6, 5, 4, 3))
_HALF32, _TWO32 = F32(0.5), F32(2.0)
_SIGMOID_CLAMP32, _TANH_CLAMP32 = F32(104.0), F32(20.0)  # sigmoid(-104) rounds to 0, tanh(20) to 1


@jit_inline
def _exp_parts32(a):
    """(s, s r, q) of e^-a = s + s r q, as above (float32 a)."""
    t = fma(-a, LOG2E32, _GATE_SHIFT32)
    n = t - _GATE_SHIFT32
    r = fma(n, -LN2_LO32, fma(n, -LN2_HI32, -a))
    q = fma(_Q7, r, _Q6)
    q = fma(q, r, _Q5)
    q = fma(q, r, _Q4)
    q = fma(q, r, _Q3)
    q = fma(q, r, _HALF32)
    q = fma(q, r, ONE32)
    s = pow2_bits(t)
    return s, s * r, q


@jit_inline
def _sigmoid32(v):
    a = abs(v)
    a = _SIGMOID_CLAMP32 if a > _SIGMOID_CLAMP32 else a
    s, sr, q = _exp_parts32(a)
    e = fma(sr, q, s) * _TWO_POW_M64_32  # e^-a
    return (ONE32 if v >= ZERO32 else e) / (ONE32 + e)


@jit_inline
def _tanh32(v):
    a = abs(v)
    a = _TANH_CLAMP32 if a > _TANH_CLAMP32 else a
    s, sr, q = _exp_parts32(_TWO32 * a)
    e = fma(sr * _TWO_POW_M64_32, q, s * _TWO_POW_M64_32 - ONE32)  # e^-2a - 1, accurate near 0
    return math.copysign(-e / (_TWO32 + e), v)


def gate_sigmoid(v):
    """sigmoid of v in v's type (float32: _sigmoid32, float64: sigmoid64); jitted
    code only."""
    raise NotImplementedError("gate_sigmoid is callable from jitted code only")


def gate_tanh(v):
    """tanh of v in v's type (float32: _tanh32, float64: tanh64); jitted code only."""
    raise NotImplementedError("gate_tanh is callable from jitted code only")


@overload(gate_sigmoid, jit_options={"error_model": "numpy"})
def _gate_sigmoid_overload(v):
    if v == types.float32:
        return lambda v: _sigmoid32(v)
    return lambda v: sigmoid64(v)


@overload(gate_tanh, jit_options={"error_model": "numpy"})
def _gate_tanh_overload(v):
    if v == types.float32:
        return lambda v: _tanh32(v)
    return lambda v: tanh64(v)


# ------------------------------------------------------------------- GEMMs
@jit_inline
def _project(blas, x, W_x, out):
    """out (N, T, G*H) = x (N, T, F) @ W_x as one GEMM over every step (the GRU's
    gates, which each step then overwrites)."""
    n, steps, f = x.shape
    width = W_x.shape[1]
    gemm(blas, 0, 0, n * steps, width, f, x, f, W_x, width, 0.0, out, width)


@jit_inline
def state_rows(states, t):
    """(h_{t-1}'s first row, the stride of its rows) in states (N, S, H): a
    sequence (S = T), or one state (S = 1: the LSTM's last state only, which
    every step overwrites, or its backward's rebuilt h_{t-1}, work[:, 1:]);
    any row at t = 0, whose h_{t-1} is h0."""
    return (states[0, min(max(t - 1, 0), states.shape[1] - 1)],
            states.strides[0] // states.itemsize)


@jit_inline
def _step_gemm(blas, t, x, W_x, h0, states, W_h, z, with_x):
    """z (N, G*H) = x_t @ W_x + h_{t-1} @ W_h (two GEMMs, the second with beta 1),
    h_{t-1} from states (state_rows; h0 at t = 0); without with_x (the GRU's,
    whose n gate needs x_t W_x apart) z = h_{t-1} @ W_h."""
    n, steps, f = x.shape
    hidden, width = W_h.shape
    prev, ld_prev = state_rows(states, t)
    beta = 0.0
    if with_x and f:
        gemm_tiles(blas, 0, 0, n, width, f, x[0, t], steps * f, W_x, 0, 0, width, 0.0, z, 0, 0, width)
        beta = 1.0
    if t:
        gemm_tiles(blas, 0, 0, n, width, hidden, prev, ld_prev, W_h, 0, 0, width, beta, z, 0, 0, width)
    else:
        gemm_tiles(blas, 0, 0, n, width, hidden, h0, hidden, W_h, 0, 0, width, beta, z, 0, 0, width)


@jit_inline
def _backward_gemms(blas, t, h0, states, W_h, dzt, ld_dz, dW_h, dh, beta):
    """dW_h += h_{t-1}.T @ dz_t and dh = dz_t @ W_h.T + beta dh; h_{t-1} as
    _step_gemm's; dz_t (N, G*H) 2-D with row stride ld_dz."""
    n, hidden = dh.shape
    width = dW_h.shape[1]
    prev, ld_prev = state_rows(states, t)
    if t:
        gemm_tiles(blas, 1, 0, hidden, width, n, prev, ld_prev, dzt, 0, 0, ld_dz, 1.0, dW_h, 0, 0,
                   width)
    else:
        gemm_tiles(blas, 1, 0, hidden, width, n, h0, hidden, dzt, 0, 0, ld_dz, 1.0, dW_h, 0, 0, width)
    gemm_tiles(blas, 0, 1, n, hidden, width, dzt, ld_dz, W_h, 0, 0, width, beta, dh, 0, 0, hidden)


@jit_inline
def _add_row(row, acc):
    """acc (float64) += row, element by element (a bias gradient's sums)."""
    for j in range(acc.size):
        acc[j] += row[j]


@jit_inline
def _input_step(blas, t, x, W_x, dz, dW_x, db, dx):
    """Step t's input side, its pre-activation gradients dz_t in dz's rows at step 0
    (dz (N, T, G*H), row stride T G*H): dW_x += x_t.T @ dz_t, db (float64) += dz_t's
    rows, dx_t = dz_t @ W_x.T (unless dx is empty: not wanted)."""
    n, steps, f = x.shape
    width = dz.shape[2]
    ld = steps * width
    if f:
        gemm_tiles(blas, 1, 0, f, width, n, x[0, t], steps * f, dz[0], 0, 0, ld, 1.0, dW_x, 0, 0,
                   width)
        if dx.size:
            gemm(blas, 0, 1, n, f, width, dz[0], ld, W_x, width, 0.0, dx[0, t], steps * f)
    for i in range(n):
        _add_row(dz[i, 0], db)


@jit_inline
def _zero_sums(dW_x, dW_h, sums):
    dW_x[:] = 0
    dW_h[:] = 0
    sums[:] = 0


@jit
def finish_sums(dW_x, dW_h, sums, dW_x_parts, dW_h_parts, biases):
    """A backward's sums after its ranges: range p > 0's (slice p - 1 of
    dW_x_parts, dW_h_parts, sums[p]) added into the first's (dW_x, dW_h,
    sums[0]) in range order (see the time loops below), then the bias gradients
    `biases` (db, or the GRU's db_x, db_h) the rows of sums[0] (float64 (2,
    G*H)) rounded to their dtype. In loops, in one call: the arrays' `+=` took
    65 us of the recurrent benchmark's LSTM step, the loops 16-18 (medians, their
    caches cold after the kernel, Zen 4); the biases' `db[...] = summed` after
    them 20 more."""
    for p in range(1, sums.shape[0]):
        _add_rows(dW_x, dW_x_parts[p - 1])
        _add_rows(dW_h, dW_h_parts[p - 1])
        _add_rows(sums[0], sums[p])
    for k in range(len(biases)):
        db = biases[k]
        for j in range(db.size):
            db[j] = sums[0, k, j]


@jit_inline
def _add_rows(a, b):
    """a += b, both 2-D of one shape."""
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            a[i, j] += b[i, j]


# ------------------------------------------------------------- gate passes
# One row (one sequence, one step) per call: functions of their own, which LLVM
# vectorises (written inside the time loops, the LSTM pass ran about 7 times
# slower). Each takes its rows as pointers to their first elements (the time
# loops' at(array, offset), C-contiguous arrays) and the row length hidden, and
# makes them arrays with carray: a 1-D view passed instead is seven fields and
# a reference counted (an atomic add on its array's count). Measured on the
# benchmark's LSTM (one thread, each kernel's time over the GEMMs alone in the
# same process, means of four alternated pairs of processes, Zen 4): forward
# 0.440 with views, 0.419 with pointers (C's: 0.416-0.424); backward 0.774 and
# 0.741 (C's: 0.714-0.727). Gates at j, hidden + j, ... of a row of width G *
# hidden; zr a row of z, the step's x_t W_x + h_{t-1} W_h (the GRU's h_{t-1} W_h).
# Their pointers are noalias (jit_rows), as the C row functions' are restrict:
# no row a function writes overlaps another of its rows (the kernels' own
# workspaces, and outputs that the kernels' checks refuse when they overlap an
# input, backends/_checks.py).


class _NoAliasCompiler(WideCompiler):
    """The kernels' compiler (WideCompiler) with Numba's `noalias` flag set: each
    pointer argument of the compiled function is noalias to LLVM (C's
    restrict). Without it, LLVM vectorised each row function behind run-time
    checks that its rows do not overlap, about 90 comparisons at every call
    (3,200 calls a pass for the benchmark's LSTM). Measured, the benchmark's
    LSTM kernels on one thread, the two builds alternating in one process (Zen
    4), three processes: forward 2.5-5.5% faster, backward 0.5-2.1%; the same
    results."""

    def __init__(self, typingctx, targetctx, library, args, return_type, flags, locals):
        flags = flags.copy()
        flags.noalias = True
        super().__init__(typingctx, targetctx, library, args, return_type, flags, locals)


# (a Numba whose compiler has no such flag compiles them as `jit` does)
jit_rows = (njit(cache=True, error_model="numpy", pipeline_class=_NoAliasCompiler)
            if "noalias" in Flags.options else jit)


@jit_rows
def rnn_forward_row(ph, pz, pb, relu, hidden):
    """hr = act(zr + b); NaN stays NaN under relu (as np.maximum)."""
    hr, zr, b = carray(ph, hidden), carray(pz, hidden), carray(pb, hidden)
    zero = hr.dtype.type(0)
    if relu:
        for j in range(hidden):
            v = zr[j] + b[j]
            hr[j] = zero if v < zero else v
    else:
        for j in range(hidden):
            hr[j] = gate_tanh(zr[j] + b[j])


@jit_rows
def rnn_backward_row(pdh_row, pdh, ph, relu, pdz, hidden):
    """dzr = (dh_row + dh) act'(hr)."""
    dh_row, dh, hr = carray(pdh_row, hidden), carray(pdh, hidden), carray(ph, hidden)
    dzr = carray(pdz, hidden)
    dt = hr.dtype.type
    one, zero = dt(1), dt(0)
    for j in range(hidden):
        g = dh_row[j] + dh[j]
        y = hr[j]
        if relu:
            dzr[j] = g if y > zero else zero
        else:
            dzr[j] = g * (one - y * y)


@jit_rows
def lstm_forward_row(pg, pz, pb, pc_prev, pc, ph, hidden):
    """gates gr (i, f, g, o), cell c_row and state h_row of one row."""
    w = 4 * hidden
    gr, zr, b = carray(pg, w), carray(pz, w), carray(pb, w)
    c_prev, c_row, h_row = carray(pc_prev, hidden), carray(pc, hidden), carray(ph, hidden)
    for j in range(hidden):
        k, m, o = hidden + j, 2 * hidden + j, 3 * hidden + j
        ig = gate_sigmoid(zr[j] + b[j])
        fg = gate_sigmoid(zr[k] + b[k])
        gg = gate_tanh(zr[m] + b[m])
        og = gate_sigmoid(zr[o] + b[o])
        c = fg * c_prev[j] + ig * gg
        gr[j] = ig
        gr[k] = fg
        gr[m] = gg
        gr[o] = og
        c_row[j] = c
        h_row[j] = og * gate_tanh(c)


@jit_rows
def lstm_backward_row(pg, po_prev, pc_prev, pdh_row, pdh, pdc, pdz, ptc, php, hidden):
    """dzr (4 hidden) of one row; dc in: the gradient c_t receives from step
    t + 1, out: c_{t-1}'s; tc in: tanh(c_t), out: tanh(c_{t-1}); hp out:
    h_{t-1} = o_{t-1} tanh(c_{t-1}) rebuilt from the gate o_prev and cell
    c_prev the forward saved (csrc/recurrent_impl.h lstm_backward_row)."""
    gr, dzr = carray(pg, 4 * hidden), carray(pdz, 4 * hidden)
    o_prev, c_prev, dh_row = carray(po_prev, hidden), carray(pc_prev, hidden), carray(pdh_row, hidden)
    dh, dc, tc, hp = carray(pdh, hidden), carray(pdc, hidden), carray(ptc, hidden), carray(php, hidden)
    one = dc.dtype.type(1)
    for j in range(hidden):
        ig = gr[j]
        fg = gr[hidden + j]
        gg = gr[2 * hidden + j]
        og = gr[3 * hidden + j]
        tcv = tc[j]
        g = dh_row[j] + dh[j]
        dcv = dc[j] + g * og * (one - tcv * tcv)
        dc[j] = dcv * fg
        dzr[j] = dcv * gg * ig * (one - ig)
        dzr[hidden + j] = dcv * c_prev[j] * fg * (one - fg)
        dzr[2 * hidden + j] = dcv * ig * (one - gg * gg)
        dzr[3 * hidden + j] = g * tcv * og * (one - og)
        tp = gate_tanh(c_prev[j])
        tc[j] = tp
        hp[j] = o_prev[j] * tp


@jit_rows
def tanh_row(pc, ptc, hidden):
    """tc = tanh(c_row): the first backward step's tc."""
    c_row, tc = carray(pc, hidden), carray(ptc, hidden)
    for j in range(hidden):
        tc[j] = gate_tanh(c_row[j])


@jit_rows
def gru_forward_row(pg, pz, pb_x, pb_h, ph_prev, phn, ph, prow, hidden):
    """gates gr (r, z, n; in: the row's input projection), hn_row (h_{t-1} W_hn
    + b_hn) and h_row of one row. The gates go to row (3 hidden, scratch) first
    and then to gr: written to gr directly, each iteration's stores to the read
    array keep LLVM from vectorising the loop (6.8x the time)."""
    w = 3 * hidden
    gr, zr, b_x, b_h = carray(pg, w), carray(pz, w), carray(pb_x, w), carray(pb_h, w)
    h_prev, hn_row, h_row = carray(ph_prev, hidden), carray(phn, hidden), carray(ph, hidden)
    row = carray(prow, w)
    one = h_row.dtype.type(1)
    for j in range(hidden):
        k = hidden + j
        m = 2 * hidden + j
        r = gate_sigmoid((gr[j] + b_x[j]) + (zr[j] + b_h[j]))
        u = gate_sigmoid((gr[k] + b_x[k]) + (zr[k] + b_h[k]))
        a_n = zr[m] + b_h[m]
        new = gate_tanh((gr[m] + b_x[m]) + r * a_n)
        row[j] = r
        row[k] = u
        row[m] = new
        hn_row[j] = a_n
        h_row[j] = (one - u) * new + u * h_prev[j]
    gr[:] = row


@jit_rows
def gru_backward_row(pg, phn, ph_prev, pdh_row, pdh, pdx, pdhw, pacc, hidden):
    """dxr, dhr (3 hidden) of one row, their db_h terms added to acc (float64);
    dh in: the gradient h_t receives from step t + 1, out: the direct path to
    h_{t-1}, to which the step's GEMM adds dhw @ W_h.T."""
    w = 3 * hidden
    gr, dxr, dhr, acc = carray(pg, w), carray(pdx, w), carray(pdhw, w), carray(pacc, w)
    hn_row, h_prev = carray(phn, hidden), carray(ph_prev, hidden)
    dh_row, dh = carray(pdh_row, hidden), carray(pdh, hidden)
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


@jit_inline
def state_before(states, init, at_t, i, hidden, t):
    """A pointer to the state before row i's step t, at_t that step's offset in
    states (N, T, H): states' step t - 1, or at t = 0 init's row i (init (N, H))."""
    return at(states, at_t - hidden) if t else at(init, i * hidden)


@jit_inline
def prefetch_state_before(states, init, at_t, i, hidden, t):
    """prefetch_l2 of the row state_before gives."""
    if t:
        prefetch_l2(states, at_t - hidden, hidden)
    else:
        prefetch_l2(init, i * hidden, hidden)


# ------------------------------------------------------------- time loops
# Each kernel's time loop is a function over the rows it is given (`*_rows` and
# the forwards): a range of the batch's rows is a batch of its own (every array
# is batch-first). The whole batch calls it once; a split batch calls the
# `*_range` twin once per range p of rows `bounds` (parts + 1,), from threads
# of their own (numba_backend._run_ranges: the caller's and _range_threads's,
# hence nogil), each range with its own ?gemm scratch (part_blas). A backward's
# range sums its own dW_x, dW_h and, in float64, sums (2, G*H): db, and the
# GRU's db_h; started from zero, the first range's into the outputs, range p > 0's
# into slice p - 1 of dW_x_parts, dW_h_parts (parts - 1, ...) and sums[p], added
# in range order after (finish_sums): deterministic for a thread count. dz
# (N, T, G*H) serves as a step's rows only, at step 0 (contents unspecified).
# The *_range kernels are jit_range's: nogil, announce(sync, p) first and
# leave(sync, worker, seq) last (worker: run by a worker, _range_threads.py).


@jit
def rnn_forward(blas, x, h0, W_x, W_h, b, relu, hs, z):
    """hs (N, T, H) of h_t = act(x_t W_x + h_{t-1} W_h + b); z (N, H) a workspace."""
    n, steps, hidden = hs.shape
    for t in range(steps):
        _step_gemm(blas, t, x, W_x, h0, hs, W_h, z, True)
        for i in range(n):
            rnn_forward_row(at(hs, (i * steps + t) * hidden), at(z, i * hidden), at(b, 0), relu,
                            hidden)


@jit_range
def rnn_forward_range(blas, bounds, p, worker, sync, x, h0, W_x, W_h, b, relu, hs, z):
    seq = announce(sync, p)
    i, j = bounds[p], bounds[p + 1]
    rnn_forward(part_blas(blas, p), x[i:j], h0[i:j], W_x, W_h, b, relu, hs[i:j], z[i:j])
    return leave(sync, worker, seq)


@jit
def rnn_backward_rows(blas, dhs, x, h0, W_x, W_h, hs, relu, dx, dh, dz, dW_x, dW_h, sums):
    """Gradients through time; dh (N, H) the gradient h_t receives from step t + 1
    (ends as dh0's)."""
    n, steps, hidden = hs.shape
    _zero_sums(dW_x, dW_h, sums)
    dh[:] = 0
    for t in range(steps - 1, -1, -1):
        for i in range(n):
            at_t = (i * steps + t) * hidden
            rnn_backward_row(at(dhs, at_t), at(dh, i * hidden), at(hs, at_t), relu,
                             at(dz, i * steps * hidden), hidden)
        _backward_gemms(blas, t, h0, hs, W_h, dz[0], steps * hidden, dW_h, dh, 0.0)
        _input_step(blas, t, x, W_x, dz, dW_x, sums[0], dx)


@jit_range
def rnn_backward_range(blas, bounds, p, worker, sync, dhs, x, h0, W_x, W_h, hs, relu, dx, dh, dz, dW_x, dW_h,
                       sums, dW_x_parts, dW_h_parts):
    seq = announce(sync, p)
    i, j = bounds[p], bounds[p + 1]
    rnn_backward_rows(part_blas(blas, p), dhs[i:j], x[i:j], h0[i:j], W_x, W_h, hs[i:j], relu,
                      dx[i:j], dh[i:j], dz[i:j], dW_x if p == 0 else dW_x_parts[p - 1],
                      dW_h if p == 0 else dW_h_parts[p - 1], sums[p])
    return leave(sync, worker, seq)


@jit
def lstm_forward(blas, x, h0, c0, W_x, W_h, b, hs, cs, gates, z):
    """cs (N, T, H); hs (N, T, H), or (N, 1, H) the last state only (written at
    every step, after its GEMM read it); gates (N, T, 4H): i, f, g, o after
    their nonlinearities; z (N, 4H) a workspace."""
    n, steps, hidden = cs.shape
    kept = hs.shape[1]
    for t in range(steps):
        _step_gemm(blas, t, x, W_x, h0, hs, W_h, z, True)
        for i in range(n):
            at_t = (i * steps + t) * hidden  # row i's step t in cs
            lstm_forward_row(at(gates, 4 * at_t), at(z, i * 4 * hidden), at(b, 0),
                             state_before(cs, c0, at_t, i, hidden, t), at(cs, at_t),
                             at(hs, (i * kept + min(t, kept - 1)) * hidden), hidden)
    if kept != steps and not steps:  # the last state of no step
        hs[:, 0] = h0


@jit_range
def lstm_forward_range(blas, bounds, p, worker, sync, x, h0, c0, W_x, W_h, b, hs, cs, gates, z):
    seq = announce(sync, p)
    i, j = bounds[p], bounds[p + 1]
    lstm_forward(part_blas(blas, p), x[i:j], h0[i:j], c0[i:j], W_x, W_h, b, hs[i:j], cs[i:j],
                 gates[i:j], z[i:j])
    return leave(sync, worker, seq)


@jit
def lstm_backward_rows(blas, dhs, x, h0, c0, W_x, W_h, cs, gates, dx, dh, dc, dz, work, zeros, dW_x,
                       dW_h, sums):
    """Gradients through time; dh, dc (N, H) the gradients h_t and c_t receive from
    step t + 1 (end as dh0's, dc0's). dhs (N, T, H), or (N, 1, H) the last
    state's alone (zeros (H,) then the other steps'); work (N, 2, H): each row's
    tc and hp (lstm_backward_row), hp's rows the GEMM's h_{t-1}: no state is read."""
    n, steps, hidden = cs.shape
    last_only = dhs.shape[1] != steps
    _zero_sums(dW_x, dW_h, sums)
    if last_only:
        dh[:] = dhs[:, 0]
    else:
        dh[:] = 0
    dc[:] = 0
    w = 4 * hidden
    for i in range(n if steps else 0):
        tanh_row(at(cs, (i * steps + steps - 1) * hidden), at(work, 2 * i * hidden), hidden)
    for t in range(steps - 1, -1, -1):
        for i in range(n):
            at_t = (i * steps + t) * hidden  # row i's step t in cs and dhs
            if t:  # this row's lines of the next step (as csrc/recurrent_impl.h prefetch_row)
                prefetch_l2(gates, 4 * (at_t - hidden), 3 * hidden)
                if t > 1:
                    prefetch_l2(gates, 4 * (at_t - 2 * hidden) + 3 * hidden, hidden)
                prefetch_state_before(cs, c0, at_t - hidden, i, hidden, t - 1)
                if not last_only:
                    prefetch_l2(dhs, at_t - hidden, hidden)
            # (at t = 0 the rebuilt state is not used: h0 is given)
            lstm_backward_row(at(gates, 4 * at_t), at(gates, 4 * at_t + 3 * hidden - (w if t else 0)),
                              state_before(cs, c0, at_t, i, hidden, t),
                              at(zeros, 0) if last_only else at(dhs, at_t), at(dh, i * hidden),
                              at(dc, i * hidden), at(dz, i * steps * w), at(work, 2 * i * hidden),
                              at(work, (2 * i + 1) * hidden), hidden)
        _backward_gemms(blas, t, h0, work[:, 1:], W_h, dz[0], steps * w, dW_h, dh, 0.0)
        _input_step(blas, t, x, W_x, dz, dW_x, sums[0], dx)


@jit_range
def lstm_backward_range(blas, bounds, p, worker, sync, dhs, x, h0, c0, W_x, W_h, cs, gates, dx, dh, dc, dz,
                        work, zeros, dW_x, dW_h, sums, dW_x_parts, dW_h_parts):
    seq = announce(sync, p)
    i, j = bounds[p], bounds[p + 1]
    lstm_backward_rows(part_blas(blas, p), dhs[i:j], x[i:j], h0[i:j], c0[i:j], W_x, W_h, cs[i:j],
                       gates[i:j], dx[i:j], dh[i:j], dc[i:j], dz[i:j], work[i:j], zeros,
                       dW_x if p == 0 else dW_x_parts[p - 1], dW_h if p == 0 else dW_h_parts[p - 1],
                       sums[p])
    return leave(sync, worker, seq)


@jit
def gru_forward(blas, x, h0, W_x, W_h, b_x, b_h, hs, gates, hn, z):
    """hs (N, T, H); gates (N, T, 3H): r, z, n; hn (N, T, H) h_{t-1} W_hn + b_hn;
    z (N, 3H) a workspace."""
    n, steps, hidden = hs.shape
    _project(blas, x, W_x, gates)
    row = np.empty(3 * hidden, gates.dtype)
    for t in range(steps):
        _step_gemm(blas, t, x, W_x, h0, hs, W_h, z, False)
        for i in range(n):
            at_t = (i * steps + t) * hidden  # row i's step t in hs and hn
            gru_forward_row(at(gates, 3 * at_t), at(z, i * 3 * hidden), at(b_x, 0), at(b_h, 0),
                            state_before(hs, h0, at_t, i, hidden, t), at(hn, at_t), at(hs, at_t),
                            at(row, 0), hidden)


@jit_range
def gru_forward_range(blas, bounds, p, worker, sync, x, h0, W_x, W_h, b_x, b_h, hs, gates, hn, z):
    seq = announce(sync, p)
    i, j = bounds[p], bounds[p + 1]
    gru_forward(part_blas(blas, p), x[i:j], h0[i:j], W_x, W_h, b_x, b_h, hs[i:j], gates[i:j],
                hn[i:j], z[i:j])
    return leave(sync, worker, seq)


@jit
def gru_backward_rows(blas, dhs, x, h0, W_x, W_h, hs, gates, hn, dx, dh, dxw, dhw, dW_x, dW_h,
                      sums):
    """Gradients through time: dxw (N, T, 3H) the input side's dz (d loss / d (x_t
    W_x + b_x), rows at step 0); dhw (N, 3H) the recurrent side's (d loss /
    d (h_{t-1} W_h + b_h)); dh (N, H) the gradient h_t receives from step t + 1
    (ends as dh0's): first its direct part dh_t * z, to which the GEMM adds
    dhw @ W_h.T; sums[0] db_x's, sums[1] db_h's."""
    n, steps, hidden = hs.shape
    _zero_sums(dW_x, dW_h, sums)
    dh[:] = 0
    for t in range(steps - 1, -1, -1):
        for i in range(n):
            at_t = (i * steps + t) * hidden  # row i's step t in hs, hn and dhs
            if t:  # this row's lines of the next step (as csrc/recurrent_impl.h prefetch_row)
                prefetch_l2(gates, 3 * (at_t - hidden), 3 * hidden)
                prefetch_l2(hn, at_t - hidden, hidden)
                prefetch_state_before(hs, h0, at_t - hidden, i, hidden, t - 1)
                prefetch_l2(dhs, at_t - hidden, hidden)
            gru_backward_row(at(gates, 3 * at_t), at(hn, at_t), state_before(hs, h0, at_t, i, hidden, t),
                             at(dhs, at_t), at(dh, i * hidden), at(dxw, i * steps * 3 * hidden),
                             at(dhw, i * 3 * hidden), at(sums, 3 * hidden), hidden)
        _backward_gemms(blas, t, h0, hs, W_h, dhw, 3 * hidden, dW_h, dh, 1.0)
        _input_step(blas, t, x, W_x, dxw, dW_x, sums[0], dx)


@jit_range
def gru_backward_range(blas, bounds, p, worker, sync, dhs, x, h0, W_x, W_h, hs, gates, hn, dx, dh, dxw, dhw,
                       dW_x, dW_h, sums, dW_x_parts, dW_h_parts):
    seq = announce(sync, p)
    i, j = bounds[p], bounds[p + 1]
    gru_backward_rows(part_blas(blas, p), dhs[i:j], x[i:j], h0[i:j], W_x, W_h, hs[i:j], gates[i:j],
                      hn[i:j], dx[i:j], dh[i:j], dxw[i:j], dhw[i:j],
                      dW_x if p == 0 else dW_x_parts[p - 1], dW_h if p == 0 else dW_h_parts[p - 1],
                      sums[p])
    return leave(sync, worker, seq)


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

