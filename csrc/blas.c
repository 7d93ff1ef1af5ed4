/* BLAS for the C kernels: the Fortran ?gemm that SciPy exports (its address set
 * once at load, fastnn_set_gemm) and, when the BLAS says how, its thread count
 * (fastnn_set_blas_threads), so that a kernel can split its work into ranges run
 * on fastnn's own threads, each calling BLAS on one thread: for the small GEMMs
 * of a recurrent step or a convolution tile, two single-threaded GEMMs side by
 * side (and the passes around them) waste less than one GEMM split by BLAS.
 * Compiled once (a shared file, see _build_ckernels.py SHARED_FILES). */
#include "common.h"
#if !defined(_WIN32)
#include <pthread.h>
#endif

typedef void (*gemm_f32_fn)(const char *, const char *, const int *, const int *, const int *,
                            const float *, const float *, const int *, const float *,
                            const int *, const float *, float *, const int *);
typedef void (*gemm_f64_fn)(const char *, const char *, const int *, const int *, const int *,
                            const double *, const double *, const int *, const double *,
                            const int *, const double *, double *, const int *);
typedef void (*set_threads_fn)(int);
typedef int (*get_threads_fn)(void);

static gemm_f32_fn blas_sgemm;
static gemm_f64_fn blas_dgemm;
static set_threads_fn blas_set_threads; /* NULL: the BLAS cannot be told */
static get_threads_fn blas_get_threads;

void fastnn_set_gemm(void *sgemm, void *dgemm) {
    blas_sgemm = (gemm_f32_fn)sgemm;
    blas_dgemm = (gemm_f64_fn)dgemm;
}

void fastnn_set_blas_threads(void *set, void *get) {
    blas_set_threads = set && get ? (set_threads_fn)set : NULL;
    blas_get_threads = set && get ? (get_threads_fn)get : NULL;
}

/* Row-major C (m, n; row stride ldc) = op(A) op(B) + beta C. Column-major BLAS
 * computes C^T = op(B)^T op(A)^T: the operands swap. */
void gemm_f32(int ta, int tb, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
              const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    int im = (int)n, in = (int)m, ik = (int)k, ia = (int)ldb, ib = (int)lda, ic = (int)ldc;
    float one = 1;
    blas_sgemm(tb ? "T" : "N", ta ? "T" : "N", &im, &in, &ik, &one, b, &ia, a, &ib, &beta, c, &ic);
}

void gemm_f64(int ta, int tb, int64_t m, int64_t n, int64_t k, const double *a, int64_t lda,
              const double *b, int64_t ldb, double beta, double *c, int64_t ldc) {
    int im = (int)n, in = (int)m, ik = (int)k, ia = (int)ldb, ib = (int)lda, ic = (int)ldc;
    double one = 1;
    blas_dgemm(tb ? "T" : "N", ta ? "T" : "N", &im, &in, &ik, &one, b, &ia, a, &ib, &beta, c, &ic);
}

int parallel_blas_parts(int64_t n, int64_t min_parallel) {
    return blas_set_threads ? parallel_parts(n, min_parallel) : 1;
}

#if !defined(_WIN32)
/* one caller at a time changes the BLAS's thread count, so that each restores
 * the count it found */
static pthread_mutex_t blas_threads_lock = PTHREAD_MUTEX_INITIALIZER;
#endif

void parallel_blas_run(range_fn fn, void *args, int64_t n, int parts) {
    parallel_blas_run_small(fn, args, n, parts, 1);
}

void parallel_blas_run_small(range_fn fn, void *args, int64_t n, int parts, int wake) {
    if (n <= 0) return;
    if (parts <= 1) {
        fn(args, 0, n, 0);
        return;
    }
#if !defined(_WIN32)
    if (blas_set_threads && pthread_mutex_trylock(&blas_threads_lock) == 0) {
        int before = blas_get_threads();
        blas_set_threads(1);
        parallel_run_small(fn, args, n, parts, wake);
        blas_set_threads(before);
        pthread_mutex_unlock(&blas_threads_lock);
        return;
    }
#endif
    /* the same ranges one after another, each GEMM on the BLAS's own threads */
    for (int p = 0; p < parts; p++) fn(args, n * p / parts, n * (p + 1) / parts, p);
}
