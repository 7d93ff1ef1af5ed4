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

/* Multiply-adds of a call's per-step GEMMs (n steps hidden G hidden) from which
 * it splits the batch over the threads (recurrent_impl.h run_rows). Measured
 * (bench/recurrent_split.py, Zen 4, 2 threads, a busy machine): a forward and
 * backward split was slower than whole at 2^20 (rnn 8x32x64: 25 against 17 us
 * a sequence), faster from 2^21 (rnn 16x32x64: 14 against 18; lstm 16x20x32:
 * 10 against 16; lstm 64x50x128: 218 against 258). */
#define RECURRENT_PARALLEL_MIN (1 << 21)

#define TEMPLATE "recurrent_impl.h"
#include "instantiate.h"
