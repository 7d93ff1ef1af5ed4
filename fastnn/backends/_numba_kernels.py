"""Jitted kernels behind the numba backend (numba_backend.py calls them).

Every kernel is a plain loop over explicit ranges. Work that is worth running
on several threads is written once as a function over a range (`*_block`,
`*_rows`, `*_tile`, or one block of rows); a `*_serial` function, or a direct
call over the whole range, runs it for small inputs, and a `*_parallel` driver
splits the range with `prange` for large ones. Reductions are summed per fixed,
shape-determined block and the blocks added in order, so the serial and the
parallel result are bit-identical and independent of the thread count. The
drivers are separate functions, not one function jitted twice (prange runs
serially without parallel=True): Numba's on-disk cache keys a function by its
bytecode and signature, not by its options, so the two compilations would
load each other's cached code.

Dtypes: every kernel is compiled for float32 and float64 and computes in the
dtype of its arrays (constants come from the caller already in that dtype),
except for float32 arrays the activations of reference.FLOAT64_INSIDE and the
gelu backward (computed in float64), and sums, which accumulate in float64 where
it matters for accuracy.

Division follows IEEE (error_model="numpy": x / 0 is inf, not an exception
whose check would keep a loop from vectorising).

Fast-math: no flags on whole kernels (they would break the NaN and inf
handling). The exp polynomials allow FMA contraction only ("contract"). Sums
use `radd`, one add marked reassociable so that the loop vectorises; row
maxima compare integer keys of the floats (`order_key`), as LLVM does not
vectorise a float max that must keep NaN semantics.
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

jit = njit(cache=True, error_model="numpy")
jit_parallel = njit(cache=True, parallel=True, error_model="numpy")
# scalar helpers called from loops: inlined by Numba itself, since LLVM's
# inliner leaves the larger ones as calls, and a call keeps the loop scalar
jit_inline = njit(cache=True, error_model="numpy", inline="always")


# ------------------------------------------------------------------ intrinsics
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


@intrinsic
def pow2_bits(typingctx, t):
    """2^n from t = n + bias + shift, where adding shift (1.5 * 2^mantissa bits)
    rounded n onto the integers: t's low bits shifted into the exponent field
    (the shift's own bits fall off the top). For n + bias in the normal range."""
    def codegen(context, builder, sig, args):
        bits, mant = (32, 23) if sig.args[0] == types.float32 else (64, 52)
        it = ir.IntType(bits)
        e = builder.shl(builder.bitcast(args[0], it), ir.Constant(it, mant))
        return builder.bitcast(e, args[0].type)
    return t(t), codegen


@intrinsic
def order_key(typingctx, x):
    """An integer with the order of the float x (its bits, the magnitude bits
    flipped for negatives): a row max over keys is an integer max, which
    vectorises where a float max with NaN semantics does not. NaNs with the
    sign bit clear rank above +inf (np.max returns them), with it set below
    -inf; a softmax then still turns NaN through its sum."""
    it = types.int32 if x == types.float32 else types.int64
    def codegen(context, builder, sig, args):
        ity = ir.IntType(it.bitwidth)
        b = builder.bitcast(args[0], ity)
        sign = builder.ashr(b, ir.Constant(ity, it.bitwidth - 1))
        return builder.xor(b, builder.lshr(sign, ir.Constant(ity, 1)))
    return it(x), codegen


@intrinsic
def key_value(typingctx, key, like):
    """The float (of the type of like) whose order_key is key."""
    def codegen(context, builder, sig, args):
        k = args[0]
        ity = k.type
        sign = builder.ashr(k, ir.Constant(ity, ity.width - 1))
        return builder.bitcast(builder.xor(k, builder.lshr(sign, ir.Constant(ity, 1))),
                               args[1].type)
    return like(key, like), codegen


@intrinsic
def high_half(typingctx, x):
    """x with the lower half of its mantissa bits cleared (float32: 12 significant
    bits left, float64: 26): the product of two such halves is exact. A bit mask,
    unlike Veltkamp's split, which FMA contraction would break."""
    def codegen(context, builder, sig, args):
        bits, mask = (32, 0xFFFFF000) if sig.args[0] == types.float32 else (64, 0xFFFFFFFFF8000000)
        it = ir.IntType(bits)
        b = builder.and_(builder.bitcast(args[0], it), ir.Constant(it, mask))
        return builder.bitcast(b, args[0].type)
    return x(x), codegen


# ------------------------------------------------------------- vectorisable exp
# e^x = 2^n e^r with n = round(x / ln2) and r = x - n ln2 in [-ln2/2, ln2/2]
# (Cody-Waite: ln2 split in a few-bit high part, exact times n, and a low part).
# Numba's math.exp is a scalar libm call that stops a loop from vectorising.
# Polynomials are written out (Horner): a loop over a tuple of coefficients
# stays a loop in Numba and does not vectorise.
F32 = np.float32
LOG2E32, SHIFT32, LN2_HI32, LN2_LO32 = (F32(1.4426950408889634), F32(1.5 * 2**23),
                                        F32(0.693359375), F32(-2.12194440e-4))
CLAMP32, ONE32, ZERO32 = F32(120.0), F32(1.0), F32(0.0)
# below these e^x is not a normal number (exp_nonpositive returns 0 there)
MIN_LOG32, MIN_LOG64 = F32(-87.33654), -708.3964185322641
# minimax polynomial of (e^r - 1 - r) / r^2 on [-ln2/2, ln2/2] (Cephes expf)
P32 = tuple(F32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                             4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
LOG2E, SHIFT64, LN2_HI, LN2_LO = (1.4426950408889634, 1.5 * 2**52, 0.693145751953125,
                                  1.42860682030941723212e-6)
# exp_nonpositive (the softmax's exp): rounding shifts that also add the exponent
# bias, so that t's low bits are n + bias (pow2_bits), and for float32 a degree-5
# minimax polynomial of e^r with constant term 1 (relative error 9.4e-8, about 2
# ulp after rounding; e^0 stays exactly 1): 5 FMAs instead of the 8 operations
# of _reduce32's, which is the loop's cost
BIASED32, BIASED64 = F32(1.5 * 2**23 + 127), 1.5 * 2**52 + 1023
E32 = tuple(F32(c) for c in (0.008290289901196957, 0.04189806431531906, 0.1666763722896576,
                             0.4999914765357971, 0.9999997019767761))
# Taylor coefficients 1/k!: to r^13 the truncation is below 1e-17 for |r| <= ln2/2
F2, F3, F4, F5, F6, F7, F8, F9, F10, F11, F12, F13 = (1.0 / math.factorial(k)
                                                      for k in range(2, 14))


@njit(cache=True, inline="always", error_model="numpy", fastmath={"contract"})
def _split32(x, shift):
    """(t, r): t = n + shift with n = round(x / ln2), r = x - n ln2; shift is
    SHIFT32, or BIASED32 to leave n + bias in t's low bits (pow2_bits)."""
    t = x * LOG2E32 + shift  # adding shift rounds; n lands in the low bits of t
    n = t - shift
    r = x - n * LN2_HI32
    return t, r - n * LN2_LO32


@njit(cache=True, inline="always", error_model="numpy", fastmath={"contract"})
def _reduce32(x):
    """(t, p): t = n + SHIFT32 with n = round(x / ln2), p = e^r for
    r = x - n ln2; e^x = p 2^n."""
    t, r = _split32(x, SHIFT32)
    p = P32[0]
    p = p * r + P32[1]
    p = p * r + P32[2]
    p = p * r + P32[3]
    p = p * r + P32[4]
    p = p * r + P32[5]
    return t, p * (r * r) + r + ONE32


@njit(cache=True, inline="always", error_model="numpy", fastmath={"contract"})
def _reduce64(x, shift):
    # shift: SHIFT64, or BIASED64 to leave n + bias in t's low bits (pow2_bits)
    t, q = _reduce64_m1(x, shift)
    return t, q + 1.0


@njit(cache=True, inline="always", error_model="numpy", fastmath={"contract"})
def _reduce64_m1(x, shift):
    """(t, q) as _reduce64's (t, p) but q = e^r - 1, with the digits of r."""
    t = x * LOG2E + shift
    n = t - shift
    r = x - n * LN2_HI
    r = r - n * LN2_LO
    p = F13
    p = p * r + F12
    p = p * r + F11
    p = p * r + F10
    p = p * r + F9
    p = p * r + F8
    p = p * r + F7
    p = p * r + F6
    p = p * r + F5
    p = p * r + F4
    p = p * r + F3
    p = p * r + F2
    return t, p * (r * r) + r


def _exp32(x):
    # clamp (a NaN fails both tests and stays NaN); beyond +-120 e^x is inf or 0
    x = CLAMP32 if x > CLAMP32 else x
    x = -CLAMP32 if x < -CLAMP32 else x
    t, p = _reduce32(x)
    return scale_pow2(p, t, SHIFT32)


def _exp64(x):
    x = 1000.0 if x > 1000.0 else x
    x = -1000.0 if x < -1000.0 else x
    t, p = _reduce64(x, SHIFT64)
    return scale_pow2(p, t, SHIFT64)


def _exp_nonpositive32(x):
    # no clamp: below MIN_LOG32 the select drops whatever the bits became
    t, r = _split32(x, BIASED32)
    p = E32[0]
    p = p * r + E32[1]
    p = p * r + E32[2]
    p = p * r + E32[3]
    p = p * r + E32[4]
    p = p * r + ONE32
    return ZERO32 if x < MIN_LOG32 else p * pow2_bits(t)


def _exp_nonpositive64(x):
    t, p = _reduce64(x, BIASED64)
    return 0.0 if x < MIN_LOG64 else p * pow2_bits(t)


def fexp(x):
    """e^x for a float32 or float64 scalar, in that precision; jitted code only."""
    raise NotImplementedError("fexp is callable from jitted code only")


def exp_nonpositive(x):
    """e^x for x <= 0 (or NaN), 0 where e^x is below the smallest normal number
    (the softmax shift x - max): cheaper than fexp (one 2^n factor, no clamp,
    and for float32 a shorter polynomial); jitted code only."""
    raise NotImplementedError("exp_nonpositive is callable from jitted code only")


EXP_OPTIONS = {"error_model": "numpy", "fastmath": {"contract"}}  # FMAs: fewer ops, exact-er


@overload(fexp, jit_options=EXP_OPTIONS)
def _fexp_overload(x):
    if x == types.float32:
        return _exp32
    if x == types.float64:
        return _exp64


@overload(exp_nonpositive, jit_options=EXP_OPTIONS)
def _exp_nonpositive_overload(x):
    if x == types.float32:
        return _exp_nonpositive32
    if x == types.float64:
        return _exp_nonpositive64


# float64 building blocks on top of fexp, vectorisable like it. The activations
# compute in float64 for float32 arrays too, as the reference does
# (FLOAT64_INSIDE): the float32 result is then the correctly rounded one.
LN2 = 0.6931471805599453
SQRT2_M1 = 0.41421356237309515


@njit(cache=True, inline="always", error_model="numpy", fastmath={"contract"})
def expm1_neg64(v):
    """e^v - 1 of a float64 v <= 0 (or NaN), accurate near 0: 2^n (e^r - 1) +
    (2^n - 1), each part without cancellation (csrc/vmath.h's expm1_neg_f64).
    One path, where a Taylor series near 0 selected against e^v - 1 computed
    both: tanh of float32 in cache, 1 thread, 3.7 against 5.1-5.5 ns an element."""
    v = -60.0 if v < -60.0 else v  # e^-60 - 1 rounds to -1; 2^n stays normal
    t, q = _reduce64_m1(v, BIASED64)
    s = pow2_bits(t)
    return s * q + (s - 1.0)


@jit_inline
def tanh64(v):
    """tanh of a float64: tanh|x| = -e / (2 + e) with e = e^(-2|x|) - 1 in (-1, 0],
    each part accurate, so a few ulp everywhere (no cancellation near 0)."""
    e = expm1_neg64(-2.0 * abs(v))
    t = -e / (2.0 + e)
    return t if v >= 0.0 else -t


@jit_inline
def log1p_unit(e):
    """log(1 + e) for a float64 e in [0, 1] (the e^-|x| of softplus and the
    binary cross-entropy): 2 atanh(s) with s = e / (2 + e), or, above
    sqrt(2) - 1, ln 2 + 2 atanh((e - 1) / (e + 3)); |s| <= 0.172, written
    exactly in e, so tiny e keep their full relative precision. The series
    2 s (1 + s^2/3 + ... + s^18/19) is then exact to ~1e-17."""
    high = e > SQRT2_M1
    s = (e - 1.0 if high else e) / (e + 3.0 if high else e + 2.0)
    s2 = s * s
    p = 1.0 / 19
    p = p * s2 + 1.0 / 17
    p = p * s2 + 1.0 / 15
    p = p * s2 + 1.0 / 13
    p = p * s2 + 1.0 / 11
    p = p * s2 + 1.0 / 9
    p = p * s2 + 1.0 / 7
    p = p * s2 + 1.0 / 5
    p = p * s2 + 1.0 / 3
    p = p * s2 + 1.0
    return (LN2 if high else 0.0) + 2.0 * s * p


# gelu: x Phi(x) with Phi(x) = erfc(-x / sqrt2) / 2, branch-free and in float64
# (libm's erf is a scalar call that keeps the loop from vectorising). For a >= 0,
# erfc(a) = e^(-a^2) erfcx(a); erfcx is smooth and bounded, one polynomial of
# degree 21 in t = (a - K) / (a + K) times K / (a + K) (least-squares Chebyshev
# fit to scipy.special.erfcx, K = 3.25, max relative error 3.3e-15 on [0, 30];
# the same coefficients as csrc/vmath.h). e^(-x^2/2) is computed from x itself
# with x^2 split into a rounded part and its rounding error, so large |x| lose
# no accuracy in the exponent; the normal density reuses it.
ERFCX_K = 3.25
ERFCX_P = (5.103190082204696e-10, -1.7053160351248764e-09, -7.050907710221865e-09,
           1.6751221744828105e-08, 5.605110229765321e-08, -1.0154008107721547e-07,
           -3.677013681178659e-07, 6.129463516480865e-07, 2.2836510429594417e-06,
           -4.707277740588528e-06, -1.3272559503715149e-05, 4.538673473215228e-05,
           4.903370524088605e-05, -0.0004578185148920047, 0.0005560999725698749,
           0.002932098982258965, -0.01743852893787541, 0.05292489812050585,
           -0.11543536685015837, 0.19868731611820015, -0.2809215333215762,
           0.3326706968536444)


@jit_inline
def gauss64(v):
    """e^(-v^2 / 2) of a float64. v^2 = sq + lo exactly (Dekker: the halves of
    |v| multiply exactly) and e^(-lo/2) = 1 - lo/2, as lo is below an ulp of sq.
    e^(-v^2 / 4) squared: exp_nonpositive flushes results below the smallest
    normal number to 0, where v phi(v) still is normal; the square underflows
    gradually. |v| is clamped at 40, where the result is 0, so v^2 stays finite."""
    a = abs(v)
    a = 40.0 if a > 40.0 else a  # a NaN fails the test and stays NaN
    ah = high_half(a)
    al = a - ah
    sq = a * a
    lo = ((ah * ah - sq) + 2.0 * ah * al) + al * al
    half = exp_nonpositive(-0.25 * sq)
    return half * half * (1.0 - 0.5 * lo)


@jit_inline
def ndtr64(v, e):
    """Phi(v) for a float64 v, given e = gauss64(v): erfc(|v| / sqrt2) / 2 =
    e erfcx(|v| / sqrt2) / 2, and 1 minus that for v >= 0. The rounding of
    |v| / sqrt2 enters only erfcx, which is not sensitive to it."""
    a = abs(v) * INV_SQRT2
    a = 30.0 if a > 30.0 else a  # erfc(30) = 0 in float64; keeps t finite
    r = 1.0 / (a + ERFCX_K)
    t = (a - ERFCX_K) * r
    t2 = t * t  # P(t) = pe(t^2) + t po(t^2): two chains of half the latency
    po = ERFCX_P[0]
    pe = ERFCX_P[1]
    po = po * t2 + ERFCX_P[2]
    pe = pe * t2 + ERFCX_P[3]
    po = po * t2 + ERFCX_P[4]
    pe = pe * t2 + ERFCX_P[5]
    po = po * t2 + ERFCX_P[6]
    pe = pe * t2 + ERFCX_P[7]
    po = po * t2 + ERFCX_P[8]
    pe = pe * t2 + ERFCX_P[9]
    po = po * t2 + ERFCX_P[10]
    pe = pe * t2 + ERFCX_P[11]
    po = po * t2 + ERFCX_P[12]
    pe = pe * t2 + ERFCX_P[13]
    po = po * t2 + ERFCX_P[14]
    pe = pe * t2 + ERFCX_P[15]
    po = po * t2 + ERFCX_P[16]
    pe = pe * t2 + ERFCX_P[17]
    po = po * t2 + ERFCX_P[18]
    pe = pe * t2 + ERFCX_P[19]
    po = po * t2 + ERFCX_P[20]
    pe = pe * t2 + ERFCX_P[21]
    c = 0.5 * e * ((pe + t * po) * (ERFCX_K * r))
    return c if v < 0.0 else 1.0 - c


# float32 arrays: the forward in float32 (8 lanes instead of 4), erfcx by a
# degree-8 polynomial with K = 2 (relative error 3e-7 on [0, 11] evaluated in
# float32); the backward stays in float64, as its dz goes on into sums that cancel
ERFCX_K32, ERFC_MAX32 = F32(2.0), F32(11.0)
ERFCX_P32 = tuple(F32(c) for c in (
    -0.00022830827219877392, -0.0003755135112442076, 0.001486083259806037,
    0.003216353477910161, -0.010740370489656925, -0.01821686141192913,
    0.13973462581634521, -0.34358054399490356, 0.5107913613319397))
GAUSS_MAX32 = F32(15.0)
HALF32, INV_SQRT2_32 = F32(0.5), F32(INV_SQRT2)


def _gelu32(v):
    # v Phi(v) as gauss64/ndtr64 in float32; e^(-v^2/2) flushed below 1.2e-38
    # (v < -13.2), where v Phi(v) is subnormal
    a = abs(v)
    a = GAUSS_MAX32 if a > GAUSS_MAX32 else a
    ah = high_half(a)
    al = a - ah
    sq = a * a
    lo = ((ah * ah - sq) + ah * al + ah * al) + al * al
    e = exp_nonpositive(-HALF32 * sq) * (ONE32 - HALF32 * lo)
    a = abs(v) * INV_SQRT2_32
    a = ERFC_MAX32 if a > ERFC_MAX32 else a
    r = ONE32 / (a + ERFCX_K32)
    t = (a - ERFCX_K32) * r
    p = ERFCX_P32[0]
    p = p * t + ERFCX_P32[1]
    p = p * t + ERFCX_P32[2]
    p = p * t + ERFCX_P32[3]
    p = p * t + ERFCX_P32[4]
    p = p * t + ERFCX_P32[5]
    p = p * t + ERFCX_P32[6]
    p = p * t + ERFCX_P32[7]
    p = p * t + ERFCX_P32[8]
    c = HALF32 * e * (p * (ERFCX_K32 * r))
    return v * (c if v < ZERO32 else ONE32 - c)


def _gelu64(v):
    return v * ndtr64(v, gauss64(v))


def gelu(v):
    """v Phi(v) for a float32 or float64 scalar, in that precision; jitted code only."""
    raise NotImplementedError("gelu is callable from jitted code only")


@overload(gelu, inline="always", jit_options={"error_model": "numpy"})
def _gelu_overload(v):
    if v == types.float32:
        return _gelu32
    if v == types.float64:
        return _gelu64


@jit_inline
def row_max(z):
    """max of a non-empty 1-D array through order keys (see order_key)."""
    k = order_key(z[0])
    for j in range(z.size):
        kj = order_key(z[j])
        k = kj if kj > k else k
    return key_value(k, z[0])


# gelu rows in functions of their own, compiled with FMA contraction (the rest
# of the activations follow the reference's roundings without it; gelu's erfc and
# exp polynomials are not the reference's formulas, and FMAs make them faster)
@njit(cache=True, error_model="numpy", fastmath={"contract"})
def gelu_forward_row(z, out):
    for j in range(z.size):
        out[j] = gelu(z[j])  # x Phi(x), in the dtype (see _gelu32)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def gelu_backward_row(dy, x, out):
    for j in range(x.size):
        v = np.float64(x[j])  # Phi(x) + x phi(x), in float64
        e = gauss64(v)
        out[j] = dy[j] * (ndtr64(v, e) + v * (e * INV_SQRT_2PI))


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
    lo, hi = blk * rows_per_block, min(dy.shape[0], (blk + 1) * rows_per_block)
    if code == IDENTITY:
        src = dy
    else:
        for i in range(lo, hi):
            act_backward_row(code, dy[i], y[i], preact[i], dz[i])
        src = dz
    add_rows(colsum[blk], src, lo, hi)


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


@jit
def softmax_ce_rows(logits, labels, probs, w, inv_total, grad, lo, hi):
    """Softmax cross-entropy of rows lo..hi; returns their share of the loss
    (float64) and writes grad (N, C): per row its max, then e = exp(x - max)
    into grad with their sum, then grad scaled in place (the row is in L1).

    logits (N, C); labels (N,) int64, or empty when probs (N, C) holds the
    targets; w (N,) sample weights or empty. lse is rounded to the dtype and
    p = exp(x - m) exp(m - lse) as the reference's exp(x - lse), so logits of
    1e4 (where float32 lse has an ulp of 1e-3) give the reference's p."""
    c = logits.shape[1]
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
        log_s = log_sum(x, g, m, s)
        lse = m + log_s
        r = fexp(m - lse)  # p = e * r
        scale = sample_scale(w, inv_total, i)
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
def normalise_rows(x, r0, r1, mean, invstd, gamma, beta, out):
    # the reference's order of operations
    for i in range(r0, r1):
        xi, yi = x[i], out[i]
        for j in range(x.shape[1]):
            yi[j] = (xi[j] - mean[j]) * invstd[j] * gamma[j] + beta[j]


@jit
def batchnorm_forward_serial(x, gamma, beta, running_mean, running_var, training, momentum,
                             eps, out, mean, invstd, rows_per_block):
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
                       gamma, beta, out)


@jit_parallel
def batchnorm_forward_parallel(x, gamma, beta, running_mean, running_var, training, momentum,
                               eps, out, mean, invstd, rows_per_block):
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
                       gamma, beta, out)


@jit_inline
def gradient_sums(dy, x, r0, r1, mean, invstd, s_dy, s_dyx):
    """s_dy = sum dy, s_dyx = sum dy xhat (xhat = (x - mean) invstd in the dtype,
    as the reference) over rows r0..r1, per column, in float64; eight rows per
    sweep summed in the dtype first, as shifted_sums."""
    c = x.shape[1]
    s_dy[:] = 0.0
    s_dyx[:] = 0.0
    r8 = r0 + (r1 - r0) // 8 * 8
    for i in range(r0, r8, 8):
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        x4, x5, x6, x7 = x[i + 4], x[i + 5], x[i + 6], x[i + 7]
        g0, g1, g2, g3 = dy[i], dy[i + 1], dy[i + 2], dy[i + 3]
        g4, g5, g6, g7 = dy[i + 4], dy[i + 5], dy[i + 6], dy[i + 7]
        for j in range(c):
            mu, inv = mean[j], invstd[j]
            s_dy[j] += np.float64(((g0[j] + g1[j]) + (g2[j] + g3[j]))
                                  + ((g4[j] + g5[j]) + (g6[j] + g7[j])))
            p0, p1 = g0[j] * ((x0[j] - mu) * inv), g1[j] * ((x1[j] - mu) * inv)
            p2, p3 = g2[j] * ((x2[j] - mu) * inv), g3[j] * ((x3[j] - mu) * inv)
            p4, p5 = g4[j] * ((x4[j] - mu) * inv), g5[j] * ((x5[j] - mu) * inv)
            p6, p7 = g6[j] * ((x6[j] - mu) * inv), g7[j] * ((x7[j] - mu) * inv)
            s_dyx[j] += np.float64(((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)))
    for i in range(r8, r1):
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
    # the reference's order of operations
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
@jit
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


@jit_parallel
def sgd_parallel(param, grad, velocity, lr, momentum, nesterov, weight_decay, lr_in_velocity, nb):
    for b in prange(nb):
        lo, hi = split(b, nb, param.size)
        sgd_block(param[lo:hi], grad[lo:hi], velocity[lo:hi], lr, momentum, nesterov,
                  weight_decay, lr_in_velocity)


@jit
def adagrad_block(param, grad, sum_sq, lr, eps, weight_decay):
    zero = param.dtype.type(0)
    use_wd = weight_decay != zero
    for i in range(param.size):
        g = grad[i] + weight_decay * param[i] if use_wd else grad[i]
        s = sum_sq[i] + g * g
        sum_sq[i] = s
        param[i] -= lr * g / (math.sqrt(s) + eps)


@jit_parallel
def adagrad_parallel(param, grad, sum_sq, lr, eps, weight_decay, nb):
    for b in prange(nb):
        lo, hi = split(b, nb, param.size)
        adagrad_block(param[lo:hi], grad[lo:hi], sum_sq[lo:hi], lr, eps, weight_decay)


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


@jit_parallel
def rmsprop_parallel(param, grad, square_avg, lr, alpha, rest, eps, weight_decay, momentum,
                     momentum_buf, grad_avg, use_momentum, centered, nb):
    for b in prange(nb):
        lo, hi = split(b, nb, param.size)
        rmsprop_block(param[lo:hi], grad[lo:hi], square_avg[lo:hi], lr, alpha, rest, eps,
                      weight_decay, momentum, momentum_buf[lo:hi], grad_avg[lo:hi], use_momentum,
                      centered)


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


@jit_parallel
def adadelta_parallel(param, grad, square_avg, acc_delta, lr, rho, rest, eps, weight_decay, nb):
    for b in prange(nb):
        lo, hi = split(b, nb, param.size)
        adadelta_block(param[lo:hi], grad[lo:hi], square_avg[lo:hi], acc_delta[lo:hi], lr, rho,
                       rest, eps, weight_decay)


@jit
def adam_block(param, grad, m, v, v_max, step, beta1, rest1, beta2, rest2, inv_sqrt_bias2, eps,
               weight_decay, decay, amsgrad):
    """Adam. step = lr / (1 - beta1^t); inv_sqrt_bias2 = 1 / sqrt(1 - beta2^t);
    rest1, rest2 = 1 - beta1, 1 - beta2; weight_decay (L2, added to g) or decay
    (decoupled: param *= decay), the other one inactive (0 or 1); v_max is read
    and written only with amsgrad."""
    dt = param.dtype.type
    zero, one = dt(0), dt(1)
    use_wd, use_decay = weight_decay != zero, decay != one
    for i in range(param.size):
        p = param[i] * decay if use_decay else param[i]
        g = grad[i] + weight_decay * p if use_wd else grad[i]
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
        adam_block(param[lo:hi], grad[lo:hi], m[lo:hi], v[lo:hi], v_max[lo:hi], step, beta1,
                   rest1, beta2, rest2, inv_sqrt_bias2, eps, weight_decay, decay, amsgrad)
