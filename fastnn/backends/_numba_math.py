"""The vectorisable math library of the numba backend (_numba_kernels.py's loops
call it): e^x, e^x - 1, tanh, log(1 + e), the normal density and distribution
and gelu and its derivative for float32 and float64 scalars, written so that a
loop calling them still vectorises (Numba's math.exp, math.erf... are scalar
libm calls that keep a loop scalar), and the LLVM intrinsics they are built
from (reassociable adds, exponent-bit scaling, integer order keys for row
maxima). Their accuracy is tested in tests/test_numba.py; csrc/vmath.h holds
the C backend's versions of the same polynomials.

Fast-math: the exp polynomials allow FMA contraction only ("contract"); sums use
`radd`, one add marked reassociable so that the loop vectorises; row maxima
compare integer keys of the floats (`order_key`), as LLVM does not vectorise a
float max that must keep NaN semantics.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.compiler import Compiler, DefaultPassBuilder
from numba.core.compiler_machinery import register_pass
from numba.core.lowering import Lower
from numba.core.typed_passes import NativeLowering
from numba.extending import intrinsic, overload

INV_SQRT2 = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327

# LLVM tunes loops for Intel's AVX-512 CPUs (Skylake-X on: "prefer-256-bit") to
# 256-bit vectors, which halves the lanes of the loops that the C kernels run
# on 512 (csrc: prefer-vector-width=512, measured to pay). The kernels'
# compiler (WideCompiler: Numba's nopython pipeline, its lowering marking each
# function it lowers) asks for 512 where the CPU has them; on a CPU without
# AVX-512 the attribute changes nothing. The benchmark's LSTM step on an Intel
# Xeon (AVX-512, bench/recurrent_parts.py, quietest third, the gate passes so
# compiled): forward 2510 -> 2167 us a batch, the C kernel's 2095-2199.
# (A Numba whose NativeLowering takes no lowering_class compiles the kernels
# as before.)
WIDE_VECTORS = '"prefer-vector-width"="512"'


class _WideLower(Lower):
    def post_lower(self):
        super().post_lower()
        # (llvmlite's add() takes the attributes it knows only; the text goes
        # into the function's definition as it is)
        set.add(self.function.attributes, WIDE_VECTORS)


@register_pass(mutates_CFG=True, analysis_only=False)
class _WideLowering(NativeLowering):
    _name = "fastnn_wide_lowering"

    @property
    def lowering_class(self):
        return _WideLower


class WideCompiler(Compiler):
    """Numba's nopython compiler whose lowering asks LLVM for 512-bit vectors."""

    def define_pipelines(self):
        if not isinstance(getattr(NativeLowering, "lowering_class", None), property):
            return super().define_pipelines()
        pm = DefaultPassBuilder.define_nopython_pipeline(self.state)
        pm.passes = [(_WideLowering if p is NativeLowering else p, text) for p, text in pm.passes]
        pm.finalize()
        return [pm]


def kernel_jit(**options):
    """njit(cache=True, error_model="numpy", **options) compiled by WideCompiler:
    the decorator of the numba backend's kernels (not of prange loops, whose
    lowering Numba's parallel pipeline does)."""
    return njit(cache=True, error_model="numpy", pipeline_class=WideCompiler, **options)


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


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma: the FMA instruction where the CPU has
    one, which every x86-64 with AVX2 has; a libm call elsewhere)."""
    def codegen(context, builder, sig, args):
        t = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [t], ir.FunctionType(t, [t, t, t]))
        return builder.call(fn, args)
    return a(a, a, a), codegen


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


# float32 arrays: gelu and its derivative in float32 (twice the lanes of
# float64), as csrc/vmath.h's gelu_f32 and gelu_grad_f32 (their comment gives
# the derivation; the same coefficients): c = Phi(-|v|) = e^(-a^2/2) R(a) with R
# a polynomial of degree 8 in r = 1 / (a + 2.5) (3.3e-7 relative), e^(-a^2/2) =
# 2^n e^(s/2) with a^2 split exactly by an FMA, so about 5e-7 relative in all.
# 2^n is applied as 2^(n + 8) and the 2^-8 goes into the constants that multiply
# it, so that results round gradually into the subnormals; e^(-a^2/2) is 0 from
# a = 13.5 (and for NaN and infinities).
GELU_K32, GELU_FLUSH32 = F32(2.5), F32(13.5)
GELU_R32 = tuple(F32(c / 256) for c in (
    -61.19324493408203, 123.7712173461914, -92.20768737792969, 24.90057373046875,
    -0.5774802565574646, 2.488905668258667, 0.9724875688552856, 0.39981552958488464,
    -1.3051010682829656e-05))
# e^(s/2) in s: exp_nonpositive's polynomial E32 in r = s / 2
GELU_E32 = tuple(F32(c / 2.0 ** (5 - k)) for k, c in enumerate(E32))
NEG_HALF_LOG2E32, NEG_TWO_LN2_32 = F32(-0.5 * 1.4426950408889634), F32(-2 * 0.6931471805599453)
BIASED32_UP8 = F32(1.5 * 2**23 + 127 + 8)  # n + 8 + bias in the low bits
INV_SQRT_2PI_DOWN8 = F32(INV_SQRT_2PI / 256)


@njit(cache=True, inline="always", error_model="numpy", fastmath={"contract"})
def _gelu_ratio32(a):
    """R(a) 2^-8 = Phi(-a) e^(a^2/2) 2^-8 of a float32 a >= 0."""
    r = ONE32 / (a + GELU_K32)
    p = GELU_R32[0]
    p = p * r + GELU_R32[1]
    p = p * r + GELU_R32[2]
    p = p * r + GELU_R32[3]
    p = p * r + GELU_R32[4]
    p = p * r + GELU_R32[5]
    p = p * r + GELU_R32[6]
    p = p * r + GELU_R32[7]
    return p * r + GELU_R32[8]


@njit(cache=True, inline="always", error_model="numpy", fastmath={"contract"})
def _gauss_up8_32(a):
    """e^(-a^2/2) 2^8 of a float32 a >= 0, 0 from a = GELU_FLUSH32."""
    h = a * a
    t = h * NEG_HALF_LOG2E32 + BIASED32_UP8
    n = t - BIASED32_UP8
    s = fma(n, NEG_TWO_LN2_32, -h) - fma(a, a, -h)  # -a^2 - 2 n ln2
    q = GELU_E32[0]
    q = q * s + GELU_E32[1]
    q = q * s + GELU_E32[2]
    q = q * s + GELU_E32[3]
    q = q * s + GELU_E32[4]
    q = q * s + ONE32
    e = q * pow2_bits(t)
    return e if a < GELU_FLUSH32 else ZERO32  # NaN and infinities too


def _gelu32(v):
    a = abs(v)
    c = _gelu_ratio32(a) * _gauss_up8_32(a)  # Phi(-a)
    return v * (c if v < ZERO32 else ONE32 - c)


def _gelu_grad32(v):
    a = abs(v)
    e = _gauss_up8_32(a)
    c = _gelu_ratio32(a) * e
    return (c if v < ZERO32 else ONE32 - c) + (v * e) * INV_SQRT_2PI_DOWN8


def _gelu64(v):
    return v * ndtr64(v, gauss64(v))


def _gelu_grad64(v):
    e = gauss64(v)
    return ndtr64(v, e) + v * (e * INV_SQRT_2PI)


def gelu(v):
    """v Phi(v) for a float32 or float64 scalar, in that precision; jitted code only."""
    raise NotImplementedError("gelu is callable from jitted code only")


def gelu_grad(v):
    """Phi(v) + v phi(v), the derivative of gelu, for a float32 or float64
    scalar, in that precision; jitted code only."""
    raise NotImplementedError("gelu_grad is callable from jitted code only")


@overload(gelu, inline="always", jit_options={"error_model": "numpy"})
def _gelu_overload(v):
    if v == types.float32:
        return _gelu32
    if v == types.float64:
        return _gelu64


@overload(gelu_grad, inline="always", jit_options={"error_model": "numpy"})
def _gelu_grad_overload(v):
    if v == types.float32:
        return _gelu_grad32
    if v == types.float64:
        return _gelu_grad64


@jit_inline
def row_max(z):
    """max of a non-empty 1-D array through order keys (see order_key)."""
    k = order_key(z[0])
    for j in range(z.size):
        kj = order_key(z[j])
        k = kj if kj > k else k
    return key_value(k, z[0])
