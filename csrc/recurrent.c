/* Recurrent kernels (rnn, lstm, gru): the whole time loop in C, each GEMM a call
 * of BLAS's ?gemm (csrc/blas.c). */
#include "common.h"

/* sigmoid and tanh in double, as the reference evaluates them (rounded once to T),
 * on vmath.h's branch-free exp and expm1 (as the activation kernels) */
INLINE double sigmoid_f64(double v) {
    double e = exp_f64(-fabs(v)); /* in (0, 1]: no overflow */
    return (v >= 0 ? 1.0 : e) / (1.0 + e);
}
INLINE double tanh_f64(double v) {
    double e = expm1_neg_f64(-2.0 * fabs(v)); /* tanh|v| = -e / (2 + e), accurate near 0 */
    return copysign(-e / (2.0 + e), v);
}

/* a b + c, fused where the instruction set has FMA (exp_parts_f64's reduction
 * and polynomial only: their error is their own, not a rounding the reference
 * makes) */
#if defined(__FMA__)
#define GATE_MADD(a, b, c) __builtin_fma(a, b, c)
#else
#define GATE_MADD(a, b, c) ((a) * (b) + (c))
#endif

/* For x in [-104, 0] (or NaN): e^x = s (1 + q), s = 2^n and q = e^r - 1, x = n ln2
 * + r with |r| <= ln2 / 2. r in one step with ln2 rounded to double (its error
 * times |n| <= 150 is below 4e-15 with FMA, 1e-14 without); q = r P(r), P of
 * degree 9 with P(0) = 1 fitted to (e^r - 1) / r on [-ln2/2, ln2/2] (least
 * squares reweighted towards equal ripple: relative error of q below 1.6e-15, of
 * 1 + q below 7e-16; Taylor's polynomial of degree 10 is at 9e-15). A float
 * rounded from the result is the correctly rounded one but where the exact value
 * lies within 1e-14 of halfway between two floats. s is normal: its bits are t's
 * shifted (exp_nonpos_f64's trick). */
INLINE double exp_parts_f64(double x, double *s) {
    double t = GATE_MADD(x, 1.4426950408889634074, BIASED_MAGIC_F64);
    double n = t - BIASED_MAGIC_F64;
    double r = GATE_MADD(n, -0.69314718055994530942, x);
    double q = 2.755418719738461e-07;
    q = GATE_MADD(q, r, 2.76306533693311e-06);
    q = GATE_MADD(q, r, 2.4801695845896696e-05);
    q = GATE_MADD(q, r, 0.00019841195928887534);
    q = GATE_MADD(q, r, 0.0013888888764903404);
    q = GATE_MADD(q, r, 0.008333333362670777);
    q = GATE_MADD(q, r, 0.04166666666710344);
    q = GATE_MADD(q, r, 0.16666666666630503);
    q = GATE_MADD(q, r, 0.4999999999999964);
    q = GATE_MADD(q, r, 1.0);
    *s = from_bits_f64(bits_f64(t) << 52);
    return q * r;
}

/* The gates' sigmoid and tanh in the kernels' type (FN(gate_sigmoid),
 * FN(gate_tanh)): double as above (sigmoid_f64, tanh_f64); float in double
 * rounded once, as the reference, but on exp_parts_f64, which is accurate
 * enough for a float and costs half of exp_f64 (|x| clamped where the float
 * result is 0 or 1 already). */
INLINE float gate_sigmoid_f32(float v) {
    double a = fabs((double)v), s;
    a = a > 104.0 ? 104.0 : a; /* sigmoid(-104) rounds to 0 in float */
    double q = exp_parts_f64(-a, &s);
    double e = GATE_MADD(s, q, s); /* e^-a */
    return (float)((v >= 0 ? 1.0 : e) / (1.0 + e));
}
INLINE float gate_tanh_f32(float v) {
    double a = fabs((double)v), s;
    a = a > 20.0 ? 20.0 : a; /* tanh(20) rounds to 1 in float */
    double q = exp_parts_f64(-2.0 * a, &s);
    double e = GATE_MADD(s, q, s - 1.0); /* e^-2a - 1, accurate near 0 */
    return (float)copysign(-e / (2.0 + e), (double)v);
}
INLINE double gate_sigmoid_f64(double v) { return sigmoid_f64(v); }
INLINE double gate_tanh_f64(double v) { return tanh_f64(v); }

/* Multiply-adds of a call's per-step GEMMs (n steps hidden G hidden) from which
 * it splits the batch over the threads (recurrent_impl.h run_rows). Measured
 * (bench/recurrent_split.py, Zen 4, 2 threads, a busy machine): a forward and
 * backward split was slower than whole at 2^20 (rnn 8x32x64: 25 against 17 us
 * a sequence), faster from 2^21 (rnn 16x32x64: 14 against 18; lstm 16x20x32:
 * 10 against 16; lstm 64x50x128: 218 against 258). */
#define RECURRENT_PARALLEL_MIN (1 << 21)

/* The per-step GEMMs h_{t-1} W_h, dW_h's h_{t-1}^T dz_t and the backward's
 * dz_t W_h^T are issued in blocks of columns of at most SMALL_GEMM_MADDS
 * multiply-adds (recurrent_impl.h gemm_tiles): OpenBLAS's SkylakeX kernels take
 * GEMMs up to 10^6 multiply-adds without packing their operands, where a larger
 * one packs all of W_h at every step. Measured, one thread, Zen 4, SciPy's
 * OpenBLAS 0.3.30 (bench/recurrent_floor.py and a C loop of the same calls):
 * (32 x 128) x (128 x 512) 72 GFLOP/s in one call, 115 in blocks of 128
 * columns; dW_h's (64 x 128)^T x (64 x 256) 88, 113 in blocks of 64; (32 x 512)
 * x (512 x 128)^T 71, 111 in blocks of 32. Elsewhere blocks cost little: each
 * packs its own columns of W_h once, as the whole GEMM would. The blocks of
 * dz_t W_h^T add each sum of G hidden terms in one run where the whole GEMM
 * splits it (OpenBLAS's k blocks): its rounding differs from the reference's,
 * by no more than the reference's own from the float64 result (the
 * catalogue's recurrent entries judge float32 so). */
#define SMALL_GEMM_MADDS 1000000

#define TEMPLATE "recurrent_impl.h"
#include "instantiate.h"
