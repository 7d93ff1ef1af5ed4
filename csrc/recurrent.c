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

/* The gates' sigmoid and tanh in the kernels' type (FN(gate_sigmoid),
 * FN(gate_tanh)): double as above (sigmoid_f64, tanh_f64); float in float, not
 * in double rounded once as the reference: with 16 lanes to double's 8 and a
 * shorter polynomial a gate costs 0.38 of the double one, and the gates were
 * most of a step's time beside its GEMM (lstm, 32 rows x 128 a thread: 8.1
 * against 21.4 us a step, Zen 4; the step's GEMM about 36). Sigmoid within 2 ulp
 * and tanh within 3 of the correctly rounded value (measured over every float,
 * with and without FMA; tests/test_recurrent.py). A state feeds every later
 * step, so over a long sequence the float32 results part from the reference's
 * by more than RTOL; they stay as accurate as the reference's against the
 * float64 result, which is how the catalogue and assert_backends_agree judge
 * float32 recurrences (fastnn.testing.reference_error).
 * e^-a for a in [0, 104] (or NaN) as s + s r p: -a = n ln2 + r, |r| <= ln2 / 2,
 * r p = e^r - 1 by its Taylor polynomial to r^7 (5e-9 relative), s = 2^(n + 64),
 * normal down to n = -190, so s r is exact: the caller scales by 2^-64 (where
 * the result can be subnormal, once). */
#if defined(__FMA__)
#define GATE_MADDF(a, b, c) __builtin_fmaf(a, b, c)
#else
#define GATE_MADDF(a, b, c) ((a) * (b) + (c))
#endif
#define GATE_MAGIC_F32 (BIASED_MAGIC_F32 + 64.0f) /* 1.5 * 2^23 + 127 + 64 */
#define TWO_POW_M64_F32 5.42101086e-20f           /* 2^-64 */
INLINE float exp_parts_f32(float a, float *s, float *sr) {
    float t = GATE_MADDF(-a, 1.44269504088896341f, GATE_MAGIC_F32);
    float n = t - GATE_MAGIC_F32;
    float r = GATE_MADDF(n, -LN2_LO_F32, GATE_MADDF(n, -LN2_HI_F32, -a));
    float q = 1.0f / 5040;
    q = GATE_MADDF(q, r, 1.0f / 720);
    q = GATE_MADDF(q, r, 1.0f / 120);
    q = GATE_MADDF(q, r, 1.0f / 24);
    q = GATE_MADDF(q, r, 1.0f / 6);
    q = GATE_MADDF(q, r, 0.5f);
    q = GATE_MADDF(q, r, 1.0f);
    *s = from_bits_f32(bits_f32(t) << 23);
    *sr = *s * r; /* exact */
    return q;
}
INLINE float gate_sigmoid_f32(float v) {
    float a = fabsf(v), s, sr;
    a = a > 104.0f ? 104.0f : a; /* sigmoid(-104) rounds to 0 */
    float p = exp_parts_f32(a, &s, &sr);
    float e = GATE_MADDF(sr, p, s) * TWO_POW_M64_F32; /* e^-a */
    return (v >= 0 ? 1.0f : e) / (1.0f + e);
}
INLINE float gate_tanh_f32(float v) {
    float a = fabsf(v), s, sr;
    a = a > 20.0f ? 20.0f : a; /* tanh(20) rounds to 1 */
    float p = exp_parts_f32(2.0f * a, &s, &sr);
    s *= TWO_POW_M64_F32; /* 2^n, 2^n r: exact, n >= -58 */
    sr *= TWO_POW_M64_F32;
    float e = GATE_MADDF(sr, p, s - 1.0f); /* e^-2a - 1, accurate near 0 */
    return copysignf(-e / (2.0f + e), v);
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
