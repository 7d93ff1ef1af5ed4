/* Branch-free exp, expm1 and log1p that loops can vectorise.
 *
 * glibc's vector math (libmvec) is only called under -ffast-math, which fastnn
 * does not use (NaN, infinity and log-sum-exp behaviour matter), so a loop that
 * calls expf stays scalar. These functions are written with selects instead of
 * branches and integer bit tricks instead of ldexp, so the vectoriser can inline
 * them into a loop. Accuracy: about 1-2 ulp in float, ~1e-15 relative in double.
 *
 * exp: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite: ln2 split into a short high
 * part, whose product with n is exact, and a low part), e^r by its Taylor
 * polynomial, and 2^n built from exponent bits as two factors 2^n1 2^n2 so that
 * results near the ends of the range overflow to inf and underflow gradually to
 * 0. Rounding to an integer adds and subtracts 1.5 * 2^(mantissa bits), which
 * leaves the integer in the low bits of the sum (no float-to-int conversion).
 */
#ifndef FASTNN_VMATH_H
#define FASTNN_VMATH_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#define VMATH_INLINE static inline __attribute__((always_inline))

VMATH_INLINE uint32_t bits_f32(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
VMATH_INLINE float from_bits_f32(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }
VMATH_INLINE uint64_t bits_f64(double x) { uint64_t u; memcpy(&u, &x, 8); return u; }
VMATH_INLINE double from_bits_f64(uint64_t u) { double x; memcpy(&x, &u, 8); return x; }

/* 2^k for an integer-valued k in [-126, 127] held as magic + k (its low bits) */
VMATH_INLINE float pow2_f32(float magic_plus_k) {
    return from_bits_f32((bits_f32(magic_plus_k) + 127u) << 23);
}
VMATH_INLINE double pow2_f64(double magic_plus_k) {
    return from_bits_f64((bits_f64(magic_plus_k) + 1023u) << 52);
}

#define ROUND_MAGIC_F32 12582912.0f                /* 1.5 * 2^23 */
#define ROUND_MAGIC_F64 6755399441055744.0         /* 1.5 * 2^52 */

/* e^r - 1 for |r| <= ln2/2: Taylor to r^7 (float), r^13 (double) */
VMATH_INLINE float expm1_poly_f32(float r) {
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    return p * r;
}
VMATH_INLINE double expm1_poly_f64(double r) {
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    return p * r;
}

/* ln2 = LN2_HI + LN2_LO; LN2_HI has few mantissa bits so n * LN2_HI is exact */
#define LN2_HI_F32 0.693359375f
#define LN2_LO_F32 -2.12194440e-4f
#define LN2_HI_F64 6.93147180369123816490e-01
#define LN2_LO_F64 1.90821492927058770002e-10

VMATH_INLINE float exp_f32(float x) {
    /* e^x overflows above 88.7228 and is below half the smallest subnormal
     * under -103.98; clamping keeps n in [-150, 128] (NaN passes through) */
    float xc = x < -104.0f ? -104.0f : x;
    xc = xc > 89.0f ? 89.0f : xc;
    float t = xc * 1.44269504088896341f + ROUND_MAGIC_F32;
    float n = t - ROUND_MAGIC_F32;
    float r = xc - n * LN2_HI_F32 - n * LN2_LO_F32;
    float p = 1.0f + expm1_poly_f32(r);
    float half = (n * 0.5f + ROUND_MAGIC_F32) - ROUND_MAGIC_F32; /* n = half + (n - half) */
    float s1 = pow2_f32(half + ROUND_MAGIC_F32);
    float s2 = pow2_f32((n - half) + ROUND_MAGIC_F32);
    return p * s1 * s2;
}

VMATH_INLINE double exp_f64(double x) {
    /* e^x overflows above 709.78 and is below half the smallest subnormal under
     * -745.13; clamping keeps n in [-1077, 1025] */
    double xc = x < -746.0 ? -746.0 : x;
    xc = xc > 710.0 ? 710.0 : xc;
    double t = xc * 1.4426950408889634074 + ROUND_MAGIC_F64;
    double n = t - ROUND_MAGIC_F64;
    double r = xc - n * LN2_HI_F64 - n * LN2_LO_F64;
    double p = 1.0 + expm1_poly_f64(r);
    double half = (n * 0.5 + ROUND_MAGIC_F64) - ROUND_MAGIC_F64;
    double s1 = pow2_f64(half + ROUND_MAGIC_F64);
    double s2 = pow2_f64((n - half) + ROUND_MAGIC_F64);
    return p * s1 * s2;
}

/* e^x for x <= 0 (and NaN), flushed to 0 below x = -87 (float) or -708
 * (double), where e^x nears the smallest normal number (1.2e-38, 2.2e-308). For
 * softmax terms e^(x - max), where such a term is nothing against the row's
 * largest, 1. Cheaper than exp, as it is the inner loop of every softmax:
 * - the result is normal, so 2^n is one factor, the bits of t = magic + n
 *   shifted into the exponent field: the magic carries the exponent bias in its
 *   low bits, and its own high bits shift out (no clamp, no separate add);
 * - below the flush limit those bits are garbage that the mask drops; a NaN x
 *   stays NaN through p;
 * - float: a degree-5 minimax polynomial of e^r on [-ln2/2, ln2/2] with the
 *   constant term 1 (relative error 9.4e-8, so about 2 ulp after rounding: e^0
 *   stays exactly 1) instead of the degree-7 Taylor polynomial of exp_f32. */
#define EXPN_C1_F32 0.9999997019767761f
#define EXPN_C2_F32 0.4999914765357971f
#define EXPN_C3_F32 0.1666763722896576f
#define EXPN_C4_F32 0.04189806431531906f
#define EXPN_C5_F32 0.008290289901196957f

/* 1.5 * 2^23 + 127, 1.5 * 2^52 + 1023: rounding magics that add the bias */
#define BIASED_MAGIC_F32 12583039.0f
#define BIASED_MAGIC_F64 6755399441056767.0

VMATH_INLINE float exp_nonpos_f32(float x) {
    float t = x * 1.44269504088896341f + BIASED_MAGIC_F32;
    float n = t - BIASED_MAGIC_F32;
    float r = x - n * LN2_HI_F32 - n * LN2_LO_F32;
    float p = EXPN_C5_F32;
    p = p * r + EXPN_C4_F32;
    p = p * r + EXPN_C3_F32;
    p = p * r + EXPN_C2_F32;
    p = p * r + EXPN_C1_F32;
    p = p * r + 1.0f;
    float e = p * from_bits_f32(bits_f32(t) << 23);
    return x < -87.0f ? 0.0f : e;
}
VMATH_INLINE double exp_nonpos_f64(double x) {
    double t = x * 1.4426950408889634074 + BIASED_MAGIC_F64;
    double n = t - BIASED_MAGIC_F64;
    double r = x - n * LN2_HI_F64 - n * LN2_LO_F64;
    double p = 1.0 + expm1_poly_f64(r);
    double e = p * from_bits_f64(bits_f64(t) << 52);
    return x < -708.0 ? 0.0 : e;
}

/* e^x - 1 for x <= 0 (and NaN), accurate near 0: 2^n (e^r - 1) + (2^n - 1) */
VMATH_INLINE float expm1_neg_f32(float x) {
    float xc = x < -30.0f ? -30.0f : x; /* e^-30 - 1 rounds to -1 */
    float n = (xc * 1.44269504088896341f + ROUND_MAGIC_F32) - ROUND_MAGIC_F32;
    float r = xc - n * LN2_HI_F32 - n * LN2_LO_F32;
    float s = pow2_f32(n + ROUND_MAGIC_F32);
    return s * expm1_poly_f32(r) + (s - 1.0f);
}
VMATH_INLINE double expm1_neg_f64(double x) {
    double xc = x < -60.0 ? -60.0 : x;
    double n = (xc * 1.4426950408889634074 + ROUND_MAGIC_F64) - ROUND_MAGIC_F64;
    double r = xc - n * LN2_HI_F64 - n * LN2_LO_F64;
    double s = pow2_f64(n + ROUND_MAGIC_F64);
    return s * expm1_poly_f64(r) + (s - 1.0);
}

/* log(1 + u) for u in [0, 1] (and NaN): 1 + u = 2^k f with f in [sqrt(1/2),
 * sqrt(2)], log f = 2 atanh(s) with s = (f - 1) / (f + 1), |s| <= 0.172, by its
 * odd series. s is written directly in u, u / (u + 2) or, for k = 1,
 * (u - 1) / (u + 3), so no rounding of 1 + u is involved and a tiny u keeps its
 * relative precision. */
VMATH_INLINE float log1p_unit_f32(float u) {
    int high = u > 0.41421356f; /* 1 + u > sqrt(2): k = 1 */
    float s = (high ? u - 1.0f : u) / (high ? u + 3.0f : u + 2.0f);
    float s2 = s * s;
    float q = 1.0f / 9;
    q = q * s2 + 1.0f / 7;
    q = q * s2 + 1.0f / 5;
    q = q * s2 + 1.0f / 3;
    return (high ? 0.693147180559945309f : 0.0f) + (2.0f * s + 2.0f * s * s2 * q);
}
VMATH_INLINE double log1p_unit_f64(double u) {
    int high = u > 0.41421356237309515;
    double s = (high ? u - 1.0 : u) / (high ? u + 3.0 : u + 2.0);
    double s2 = s * s;
    double q = 1.0 / 21;
    q = q * s2 + 1.0 / 19;
    q = q * s2 + 1.0 / 17;
    q = q * s2 + 1.0 / 15;
    q = q * s2 + 1.0 / 13;
    q = q * s2 + 1.0 / 11;
    q = q * s2 + 1.0 / 9;
    q = q * s2 + 1.0 / 7;
    q = q * s2 + 1.0 / 5;
    q = q * s2 + 1.0 / 3;
    return (high ? 0.693147180559945309 : 0.0) + (2.0 * s + 2.0 * s * s2 * q);
}

/* v where keep is 1, +0.0 where it is 0 (whatever v is, NaN included), branch-free */
VMATH_INLINE float keep_f32(float v, int keep) {
    return from_bits_f32(bits_f32(v) & (0u - (uint32_t)keep));
}
VMATH_INLINE double keep_f64(double v, int keep) {
    return from_bits_f64(bits_f64(v) & ((uint64_t)0 - (uint64_t)keep));
}

/* type-suffixed names of libm functions, for the kernel templates */
VMATH_INLINE float abs_f32(float x) { return fabsf(x); }
VMATH_INLINE double abs_f64(double x) { return fabs(x); }
VMATH_INLINE float copysign_f32(float x, float y) { return copysignf(x, y); }
VMATH_INLINE double copysign_f64(double x, double y) { return copysign(x, y); }
VMATH_INLINE float sqrt_f32(float x) { return sqrtf(x); }
VMATH_INLINE double sqrt_f64(double x) { return sqrt(x); }

/* The normal CDF through erfc, branch-free (vectorisable like exp above), in
 * double; float gelu has its own (gelu_f32 and gelu_grad_f32 below).
 *
 * For a >= 0, erfc(a) = e^(-a^2) erfcx(a), where erfcx is smooth and bounded
 * (1 at 0, ~1 / (a sqrt(pi)) for large a), and erfc(-a) = 2 - erfc(a). erfcx is
 * one polynomial in t = (a - K) / (a + K), which maps [0, inf) onto [-1, 1):
 * erfcx(a) = K / (a + K) P(t), the factor taking the 1/a decay out of P. P is a
 * least-squares Chebyshev fit to scipy.special.erfcx, converted to powers of t:
 * degree 21, K = 3.25 (max relative error 3.3e-15 on [0, 30]).
 *
 * e^(-a^2) must not round a^2: the rounding error of a^2 is ~1e-16 a^2 in
 * relative terms, i.e. 7e-14 in the result at a = 27. a^2 is split as sq +
 * sq_lo (Dekker: a = ah + al with ah's upper half of the mantissa bits, so
 * products of the halves are exact) and e^(-sq_lo) = 1 - sq_lo, as |sq_lo| <=
 * half an ulp of sq.
 *
 * Beyond a = 30 erfc is 0 in double; a is clamped there, which also keeps t
 * finite for a = inf. A NaN fails the clamp test and stays NaN. The kernels
 * need only Phi (ndtr below), so erfc itself is not defined. */
#define ERFCX_K_F64 3.25
#define ERFC_MAX_F64 30.0

/* e^(-s a^2) for a >= 0, s = 1 or 1/2 (a scaling by s is exact), by exp_nonpos,
 * which flushes results below the smallest normal number to 0: the derivative
 * x phi(x) is still normal where e^(-x^2/2) is not, so e^(-s a^2 / 2) is
 * squared, which underflows gradually (and doubles the relative error, to
 * ~2e-16). */
VMATH_INLINE double exp_neg_sq_f64(double a, double s) {
    double ah = from_bits_f64(bits_f64(a) & 0xFFFFFFFFF8000000u), al = a - ah;
    double sq = a * a;
    double sq_lo = ((ah * ah - sq) + 2.0 * ah * al) + al * al;
    double half = exp_nonpos_f64(-0.5 * s * sq);
    return half * half * (1.0 - s * sq_lo);
}

/* erfcx(a) = e^(a^2) erfc(a) for a in [0, ERFC_MAX] */
VMATH_INLINE double erfcx_f64(double a) {
    double r = 1.0 / (a + ERFCX_K_F64), t = (a - ERFCX_K_F64) * r, t2 = t * t;
    /* P(t) = pe(t^2) + t po(t^2): two independent Horner chains of half the
     * length, as the chain's latency, not the operation count, bounds the loop */
    double pe = -1.7053160351248764e-09;
    double po = 5.103190082204696e-10;
    pe = pe * t2 + 1.6751221744828105e-08;
    po = po * t2 + -7.050907710221865e-09;
    pe = pe * t2 + -1.0154008107721547e-07;
    po = po * t2 + 5.605110229765321e-08;
    pe = pe * t2 + 6.129463516480865e-07;
    po = po * t2 + -3.677013681178659e-07;
    pe = pe * t2 + -4.707277740588528e-06;
    po = po * t2 + 2.2836510429594417e-06;
    pe = pe * t2 + 4.538673473215228e-05;
    po = po * t2 + -1.3272559503715149e-05;
    pe = pe * t2 + -0.0004578185148920047;
    po = po * t2 + 4.903370524088605e-05;
    pe = pe * t2 + 0.002932098982258965;
    po = po * t2 + 0.0005560999725698749;
    pe = pe * t2 + 0.05292489812050585;
    po = po * t2 + -0.01743852893787541;
    pe = pe * t2 + 0.19868731611820015;
    po = po * t2 + -0.11543536685015837;
    pe = pe * t2 + 0.3326706968536444;
    po = po * t2 + -0.2809215333215762;
    return (pe + t * po) * (ERFCX_K_F64 * r);
}

/* e^(-x^2 / 2), the normal density's factor; |x| is clamped where the result
 * is 0 already, so that x^2 cannot overflow to inf */
VMATH_INLINE double gauss_f64(double x) {
    double a = fabs(x);
    return exp_neg_sq_f64(a > 40.0 ? 40.0 : a, 0.5);
}

/* Phi(x) = erfc(-x / sqrt2) / 2 given e = gauss(x) = e^(-x^2 / 2): the exponent
 * comes from x itself, so the rounding of x / sqrt2 enters only erfcx, whose
 * relative sensitivity to it is small (about 1 instead of 2 a^2 for erfc).
 * x = +-inf gives 1 or 0 through e = 0. */
VMATH_INLINE double ndtr_f64(double x, double e) {
    double a = fabs(x) * 0.70710678118654752440;
    a = a > ERFC_MAX_F64 ? ERFC_MAX_F64 : a;
    double c = 0.5 * e * erfcx_f64(a);
    return x < 0 ? c : 1.0 - c;
}

/* gelu(x) = x Phi(x) in double, and gelu'(x) = Phi(x) + x phi(x), where
 * e^(-x^2 / 2) serves both terms */
VMATH_INLINE double gelu_f64(double x) { return x * ndtr_f64(x, gauss_f64(x)); }
VMATH_INLINE double gelu_grad_f64(double x) {
    double e = gauss_f64(x);
    return ndtr_f64(x, e) + x * (e * 0.39894228040143267794);
}

/* gelu(x) = x Phi(x) in float, to about 5e-7 relative (|gelu(x)| below the
 * smallest normal number, x < -13.1, rounds gradually into the subnormals and
 * to -0 from x = -13.5; -inf gives NaN as x Phi(x) does), and its derivative
 * Phi(x) + x phi(x) to about 5e-7 of |Phi(x)| + |x phi(x)|. With a = |x| and
 * c = Phi(-a), Phi(x) is c for x < 0 and 1 - c otherwise, and c = e^(-a^2 / 2)
 * R(a), R(a) = erfcx(a / sqrt2) / 2 as in ndtr_f64 above but fitted to float's
 * precision, with as few multiplies as that allows: the loops are bound by them
 * (AVX-512, one core, in cache: 0.67 ns an element with ndtr's float form, a
 * degree-8 polynomial in t times K / (a + K) and e^(-a^2/2) by exp_nonpos and a
 * Dekker split, 0.43 ns with this one).
 * - R(a) is one polynomial in r = 1 / (a + 2.5), degree 8 (least squares with
 *   relative weights on [0, 13.2], then rounded to float: 3.3e-7 relative in
 *   float arithmetic); in r itself rather than a t = (a - K) r, which would cost
 *   an operation more.
 * - e^(-a^2 / 2) = 2^n e^(s / 2) with n = round(-a^2 / (2 ln2)) and s = -a^2 -
 *   2 n ln2 in [-ln2, ln2], where a^2 = h + hl exactly: with FMA hardware hl =
 *   fma(a, a, -h) and s = fma(n, -2 ln2, -h) - hl (the product n 2ln2 exact
 *   inside the fma; float's 2 ln2 is 3.8e-9 off, at most 5e-7 on s for n up to
 *   131, so 2.3e-7 relative in the result); without it, the Dekker split and
 *   Cody-Waite's two-part ln2 of exp_f32. e^(s/2) is exp_nonpos's degree-5
 *   polynomial in r = s / 2 written in s.
 * - 2^n is built from exponent bits as 2^(n + 8) (normal while n >= -134, a <
 *   13.5) and the 2^-8 goes into the constants that multiply it (R's
 *   coefficients, 1 / sqrt(2 pi)), so that c and x phi(x) round gradually into
 *   the subnormals in their last product: x phi(x) is still above the smallest
 *   normal number at a = 13.3. From a = 13.5 (and for NaN and infinities, whose
 *   intermediate values are garbage) e^(-a^2 / 2) is set to 0. */
#define GELU_K_F32 2.5f
#define GELU_FLUSH_F32 13.5f
#define GELU_SCALE_F32 (1.0f / 256) /* 2^-8 */

/* R(a) 2^-8 (see above) */
VMATH_INLINE float gelu_ratio_f32(float a) {
    float r = 1.0f / (a + GELU_K_F32);
    float p = -61.19324493408203f * GELU_SCALE_F32;
    p = p * r + 123.7712173461914f * GELU_SCALE_F32;
    p = p * r + -92.20768737792969f * GELU_SCALE_F32;
    p = p * r + 24.90057373046875f * GELU_SCALE_F32;
    p = p * r + -0.5774802565574646f * GELU_SCALE_F32;
    p = p * r + 2.488905668258667f * GELU_SCALE_F32;
    p = p * r + 0.9724875688552856f * GELU_SCALE_F32;
    p = p * r + 0.39981552958488464f * GELU_SCALE_F32;
    return p * r + -1.3051010682829656e-05f * GELU_SCALE_F32;
}

/* e^(-a^2 / 2) 2^8 for a >= 0 (see above), 0 from a = GELU_FLUSH_F32 */
VMATH_INLINE float gauss_up8_f32(float a) {
    float h = a * a;
    /* n + 8 + bias in the low bits */
    float t = h * (-0.5f * 1.44269504088896341f) + (BIASED_MAGIC_F32 + 8.0f);
    float n = t - (BIASED_MAGIC_F32 + 8.0f);
#if defined(__FMA__)
    float hl = __builtin_fmaf(a, a, -h);
    float s = __builtin_fmaf(n, -1.3862943649291992f, -h) - hl;
#else
    float ah = from_bits_f32(bits_f32(a) & 0xFFFFF000u), al = a - ah;
    float hl = ((ah * ah - h) + 2.0f * ah * al) + al * al;
    float s = ((-h - n * (2.0f * LN2_HI_F32)) - n * (2.0f * LN2_LO_F32)) - hl;
#endif
    float q = EXPN_C5_F32 / 32;
    q = q * s + EXPN_C4_F32 / 16;
    q = q * s + EXPN_C3_F32 / 8;
    q = q * s + EXPN_C2_F32 / 4;
    q = q * s + EXPN_C1_F32 / 2;
    q = q * s + 1.0f;
    float e = q * from_bits_f32(bits_f32(t) << 23);
    return a < GELU_FLUSH_F32 ? e : 0.0f;
}

VMATH_INLINE float gelu_f32(float x) {
    float a = fabsf(x);
    float c = gelu_ratio_f32(a) * gauss_up8_f32(a); /* Phi(-a) */
    return x * (x < 0 ? c : 1.0f - c);
}

/* gelu'(x) = Phi(x) + x phi(x) (see above); NaN at +-inf, as inf * 0 */
VMATH_INLINE float gelu_grad_f32(float x) {
    float a = fabsf(x), e = gauss_up8_f32(a);
    float c = gelu_ratio_f32(a) * e;
    return (x < 0 ? c : 1.0f - c) + (x * e) * (0.39894228040143267794f * GELU_SCALE_F32);
}

#endif
