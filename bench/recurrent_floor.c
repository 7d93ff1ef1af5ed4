/* The LSTM benchmark's GEMMs alone, issued in several orders, for
 * bench/recurrent_floor.py (which compiles this file with the system's cc and
 * loads it with ctypes; it is no part of fastnn).
 *
 * Sizes: batch N 64, T 50 steps, F 32 features, H 128 units, W = 4H gate
 * columns. One training step's GEMMs (1.57 GFLOP):
 *   projection  x (N T, F) W_x (F, W)                    once
 *   recurrence  h_{t-1} (N, H) W_h (H, W)                 per step, in order
 *   dh          dz_t (N, W) W_h^T (W, H)                  per step, in order
 *   dW_h        sum_t h_{t-1}^T (H, N) dz_t (N, W)        per step
 *   dW_x        sum_t x_t^T (F, N) dz_t (N, W), x^T dz    per step or once
 *   dx          dz (N T, W) W_x^T                         once
 * Orders: 0 whole batch, each GEMM on the BLAS's threads; 1 batch rows split,
 * one range per thread (BLAS on one thread), dW_h, dW_x by columns and dx by rows
 * after (fastnn's kernels); 2 hidden units split, each thread the four gates'
 * columns of its units (W_h's columns permuted so they are contiguous) and a
 * barrier per step to share h_t (or dz_t). With `tiled` 1, the per-step GEMMs
 * h_{t-1} W_h and h_{t-1}^T dz_t in blocks of at most 10^6 multiply-adds, as
 * fastnn's kernels issue them (csrc/recurrent_impl.h gemm_tiles); with 2,
 * dz_t W_h^T too, in blocks of 32 columns, and dW_x per step beside dW_h, as
 * the kernels do (csrc/recurrent_impl.h recurrent_dW). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void (*gemm32_fn)(const char *, const char *, const int *, const int *, const int *,
                          const float *, const float *, const int *, const float *, const int *,
                          const float *, float *, const int *);
typedef void (*gemm64_fn)(const char *, const char *, const int64_t *, const int64_t *,
                          const int64_t *, const float *, const float *, const int64_t *,
                          const float *, const int64_t *, const float *, float *, const int64_t *);
static void *sgemm;
static int ilp64; /* the BLAS's integers are 64-bit (NumPy's OpenBLAS) */
static void (*set_threads)(int);

/* sgemm: the Fortran ?gemm; is64: its integers' width; threads: its
 * openblas_set_num_threads */
void floor_setup(void *gemm, int is64, void *threads) {
    sgemm = gemm;
    ilp64 = is64;
    set_threads = (void (*)(int))threads;
}

/* row-major C (m, n) = op(A) op(B) + beta C */
static void gemm(int ta, int tb, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    float one = 1;
    if (ilp64) {
        int64_t im = n, in = m, ik = k, ia = ldb, ib = lda, ic = ldc;
        ((gemm64_fn)sgemm)(tb ? "T" : "N", ta ? "T" : "N", &im, &in, &ik, &one, b, &ia, a, &ib, &beta,
                           c, &ic);
    } else {
        int im = (int)n, in = (int)m, ik = (int)k, ia = (int)ldb, ib = (int)lda, ic = (int)ldc;
        ((gemm32_fn)sgemm)(tb ? "T" : "N", ta ? "T" : "N", &im, &in, &ik, &one, b, &ia, a, &ib,
                           &beta, c, &ic);
    }
}

static int tiled;

/* gemm in blocks of columns as fastnn's gemm_tiles (see `tiled`) */
static void gemm_step(int ta, int tb, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                      const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    int64_t tile = 16;
    while (m * k * tile * 2 <= 1000000 && !(tb && tile == 32)) tile *= 2;
    if (!tiled || (tb && tiled < 2) || (m * k * n <= 1000000 && !tb) || m * k * 16 > 1000000)
        tile = n;
    for (int64_t j = 0; j < n; j += tile)
        gemm(ta, tb, m, n - j < tile ? n - j : tile, k, a, lda, tb ? b + j * ldb : b + j, ldb, beta,
             c + j, ldc);
}

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* The best CPU time of the calling thread over `reps` of 20 calls of C (m, n) =
 * op(A) op(B) (gemm_step with `tiled` = tile), in seconds per call; BLAS on one
 * thread. */
double floor_one_gemm(int ta, int tb, int m, int n, int k, int tile, int reps) {
    float *a = calloc((size_t)m * k, 4), *b = calloc((size_t)k * n, 4), *c = calloc((size_t)m * n, 4);
    for (int i = 0; i < m * k; i++) a[i] = (float)(i % 7) * 0.1f;
    for (int i = 0; i < k * n; i++) b[i] = (float)(i % 5) * 0.1f;
    set_threads(1);
    tiled = tile;
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        double t0 = cpu_seconds();
        for (int q = 0; q < 20; q++)
            gemm_step(ta, tb, m, n, k, a, ta ? m : k, b, tb ? k : n, 0, c, n);
        double t = (cpu_seconds() - t0) / 20;
        best = t < best ? t : best;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

enum { N = 64, T = 50, F = 32, H = 128, W = 4 * H };
static float *x, *Wx, *Wh, *hs, *xw, *z, *dz, *dh, *dWh, *dx, *dWx;
static int order;

/* columns [c0, c1) of dW_h, one GEMM per step over the whole batch, and of dW_x:
 * beside them per step (tiled 2), else one GEMM over every step */
static void dW_columns(int c0, int c1) {
    for (int i = 0; i < H; i++) memset(dWh + i * W + c0, 0, (size_t)(c1 - c0) * 4);
    for (int i = 0; i < F; i++) memset(dWx + i * W + c0, 0, (size_t)(c1 - c0) * 4);
    for (int t = T - 1; t >= 0; t--) {
        gemm_step(1, 0, H, c1 - c0, N, hs + (t ? t - 1 : 0) * H, T * H, dz + t * W + c0, T * W, 1,
                  dWh + c0, W);
        if (tiled == 2)
            gemm_step(1, 0, F, c1 - c0, N, x + t * F, T * F, dz + t * W + c0, T * W, 1, dWx + c0, W);
    }
    if (tiled < 2) gemm(1, 0, F, c1 - c0, N * T, x, F, dz + c0, W, 0, dWx + c0, W);
}

static void whole_batch(void) {
    gemm(0, 0, N * T, W, F, x, F, Wx, W, 0, xw, W);
    for (int t = 0; t < T; t++) gemm_step(0, 0, N, W, H, hs + (t ? t - 1 : 0) * H, T * H, Wh, W, 0, z, W);
    for (int t = T - 1; t >= 0; t--) gemm_step(0, 1, N, H, W, dz + t * W, T * W, Wh, W, 0, dh, H);
    dW_columns(0, W);
    gemm(0, 1, N * T, F, W, dz, W, Wx, W, 0, dx, F);
}

/* a sense-reversing spin barrier of the two threads */
static int barrier_count, barrier_sense;
static void barrier(int *sense) {
    *sense = !*sense;
    if (__atomic_add_fetch(&barrier_count, 1, __ATOMIC_ACQ_REL) == 2) {
        __atomic_store_n(&barrier_count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&barrier_sense, *sense, __ATOMIC_RELEASE);
    } else {
        while (__atomic_load_n(&barrier_sense, __ATOMIC_ACQUIRE) != *sense) __builtin_ia32_pause();
    }
}

/* thread p's share of orders 1 and 2 */
static void share(int p, int *sense) {
    int r0 = p * N / 2, r1 = (p + 1) * N / 2, c0 = p * W / 2, c1 = (p + 1) * W / 2;
    if (order == 1) {
        int n = r1 - r0;
        gemm(0, 0, (int64_t)n * T, W, F, x + r0 * T * F, F, Wx, W, 0, xw + r0 * T * W, W);
        for (int t = 0; t < T; t++)
            gemm_step(0, 0, n, W, H, hs + r0 * T * H + (t ? t - 1 : 0) * H, T * H, Wh, W, 0,
                      z + r0 * W, W);
        for (int t = T - 1; t >= 0; t--)
            gemm_step(0, 1, n, H, W, dz + r0 * T * W + t * W, T * W, Wh, W, 0, dh + r0 * H, H);
    } else {
        int u0 = p * H / 2, u1 = (p + 1) * H / 2;
        gemm(0, 0, N * T, c1 - c0, F, x, F, Wx + c0, W, 0, xw + c0, W);
        for (int t = 0; t < T; t++) {
            gemm_step(0, 0, N, c1 - c0, H, hs + (t ? t - 1 : 0) * H, T * H, Wh + c0, W, 0, z + c0, W);
            barrier(sense);
        }
        for (int t = T - 1; t >= 0; t--) {
            barrier(sense);
            gemm_step(0, 1, N, u1 - u0, W, dz + t * W, T * W, Wh + u0 * W, W, 0, dh + u0, H);
        }
    }
    barrier(sense);
    dW_columns(c0, c1);
    gemm(0, 1, (int64_t)(r1 - r0) * T, F, W, dz + r0 * T * W, W, Wx, W, 0, dx + r0 * T * F, F);
}

static int go, finished, worker_sense;
static void *worker(void *unused) {
    (void)unused;
    for (int seen = 0;;) {
        int now;
        while ((now = __atomic_load_n(&go, __ATOMIC_ACQUIRE)) == seen) __builtin_ia32_pause();
        if (now < 0) return NULL;
        seen = now;
        share(1, &worker_sense);
        __atomic_store_n(&finished, seen, __ATOMIC_RELEASE);
    }
}

/* The best wall time of one step's GEMMs in `order_` over `reps` steps, in
 * seconds; order 0 with the BLAS on `blas_threads` threads, 1 and 2 on two
 * threads of their own (spinning between steps) with the BLAS on one. */
double floor_step(int order_, int tile, int reps, int blas_threads) {
    size_t sizes[] = {N * T * F, F * W, H * W, N * T * H, N * T * W, N * W,
                      N * T * W, N * H, H * W, N * T * F, F * W};
    float **arrays[] = {&x, &Wx, &Wh, &hs, &xw, &z, &dz, &dh, &dWh, &dx, &dWx};
    for (int i = 0; i < 11; i++)
        if (!*arrays[i]) {
            *arrays[i] = aligned_alloc(64, sizes[i] * 4);
            for (size_t e = 0; e < sizes[i]; e++) (*arrays[i])[e] = (float)((e * 7) % 13) * 0.01f;
        }
    order = order_;
    tiled = tile;
    pthread_t thread;
    go = finished = worker_sense = barrier_count = barrier_sense = 0;
    if (order && pthread_create(&thread, NULL, worker, NULL)) return -1;
    set_threads(order ? 1 : blas_threads);
    int sense = 0;
    double best = 1e9;
    for (int r = 1; r <= reps; r++) {
        double t0 = wall_seconds();
        if (order) {
            __atomic_store_n(&go, r, __ATOMIC_RELEASE);
            share(0, &sense);
            while (__atomic_load_n(&finished, __ATOMIC_ACQUIRE) != r) __builtin_ia32_pause();
        } else {
            whole_batch();
        }
        double t = wall_seconds() - t0;
        best = t < best ? t : best;
    }
    if (order) {
        __atomic_store_n(&go, -1, __ATOMIC_RELEASE);
        pthread_join(thread, NULL);
    }
    set_threads(blas_threads);
    return best;
}
