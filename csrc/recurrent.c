/* Recurrent kernels (rnn, lstm, gru): the whole time loop in C, each GEMM a call
 * of BLAS's Fortran ?gemm, whose address fastnn_set_gemm receives once at load
 * (SciPy's, from scipy.linalg.cython_blas). */
#include "common.h"

typedef void (*gemm_f32_fn)(const char *, const char *, const int *, const int *, const int *,
                            const float *, const float *, const int *, const float *,
                            const int *, const float *, float *, const int *);
typedef void (*gemm_f64_fn)(const char *, const char *, const int *, const int *, const int *,
                            const double *, const double *, const int *, const double *,
                            const int *, const double *, double *, const int *);
static gemm_f32_fn blas_gemm_f32;
static gemm_f64_fn blas_gemm_f64;

void fastnn_set_gemm(void *sgemm, void *dgemm) {
    blas_gemm_f32 = (gemm_f32_fn)sgemm;
    blas_gemm_f64 = (gemm_f64_fn)dgemm;
}

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

/* The gate passes (recurrent_impl.h) get an AVX-512 clone beside HOT's: the LSTM
 * forward pass ran 1.7x faster than with AVX2 on Zen 4 (5.7 -> 3.4 ms for 64 x 50
 * rows of 128 units, one core); the loops are sigmoid and tanh in double. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(FASTNN_NO_CLONES)
#define HOT_GATES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT_GATES HOT
#endif

#define TEMPLATE "recurrent_impl.h"
#include "instantiate.h"
