/* Internal helpers shared by the kernel files (not part of the cffi API). */
#ifndef FASTNN_COMMON_H
#define FASTNN_COMMON_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include "fastnn.h"
#include "vmath.h"

/* Each kernel file is compiled once per instruction set, the whole file for
 * one target (csrc/isa.h); HOT and HOT_MUL64 marked the loops that the former
 * per-function clones compiled for AVX2 (and AVX-512) and now mark nothing. */
#define HOT
#define HOT_MUL64

/* per-element and per-row helpers are forced inline into the loops that call them */
#define INLINE static inline __attribute__((always_inline))

/* size bytes on a 64-byte boundary (a cache line, one AVX-512 vector: rows that
 * start mid-line split the kernels' and BLAS's vector loads; fastnn/backends/
 * _checks.py ALIGNMENT), or NULL; released with free. (posix_memalign is POSIX,
 * which -std=c99 leaves undeclared) */
int posix_memalign(void **memptr, size_t alignment, size_t size);
static inline void *aligned_malloc(size_t size) {
    void *p;
    return posix_memalign(&p, 64, size ? size : 64) ? NULL : p;
}

/* FN(name) is name_f32 or name_f64 inside a kernel template (see instantiate.h) */
#define PASTE2(a, b) a##_##b
#define PASTE(a, b) PASTE2(a, b)
#define FN(name) PASTE(name, S)

/* PyTorch's activation constants (as in reference.py) */
#define LEAKY_RELU_SLOPE 0.01
#define ELU_ALPHA 1.0
#define SELU_ALPHA 1.6732632423543772848170429916717
#define SELU_SCALE 1.0507009873554804934193349852946
#define SOFTPLUS_THRESHOLD 20.0
#define SQRT1_2 0.70710678118654752440 /* 1 / sqrt(2) */
#define INV_SQRT_2PI 0.39894228040143267794

/* Work in [0, n) split into `parts` contiguous ranges, run in parallel, one per
 * thread; fn(args, begin, end, part) runs one range. `part` (< MAX_PARTS)
 * indexes per-range partial results, which the caller adds up in part order.
 * parallel_parts says how many ranges to use: 1 (serial) when n < min_parallel
 * or one thread is configured, else the thread count. */
#define MAX_PARTS 64
typedef void (*range_fn)(void *args, int64_t begin, int64_t end, int part);
int parallel_parts(int64_t n, int64_t min_parallel);
void parallel_run(range_fn fn, void *args, int64_t n, int parts);
/* both in one: returns the number of ranges used */
int parallel_for(range_fn fn, void *args, int64_t n, int64_t min_parallel);
/* Small work, split from min_split but waking sleeping workers only from
 * min_wake: parallel_run_small runs `parts` ranges with the workers that are
 * spinning (after a parallel kernel, threads.c) and does the rest itself, and
 * wakes the sleeping ones only with wake. The ranges, and so the results, do
 * not depend on which thread runs them. */
void parallel_run_small(range_fn fn, void *args, int64_t n, int parts, int wake);
int parallel_for_small(range_fn fn, void *args, int64_t n, int64_t min_split, int64_t min_wake);

/* BLAS (csrc/blas.c): row-major C (m, n; row stride ldc) = op(A) op(B) + beta C,
 * op(A) (m, k) being A (row stride lda) or, with ta, the transpose of A (k, m);
 * likewise B. Sizes below 2^31 (BLAS's integers). */
void gemm_f32(int ta, int tb, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
              const float *b, int64_t ldb, float beta, float *c, int64_t ldc);
void gemm_f64(int ta, int tb, int64_t m, int64_t n, int64_t k, const double *a, int64_t lda,
              const double *b, int64_t ldb, double beta, double *c, int64_t ldc);
/* For ranges that call BLAS: parallel_blas_parts is parallel_parts, or 1 when the
 * BLAS's thread count cannot be set; parallel_blas_run runs the ranges on
 * fastnn's threads with BLAS on one thread meanwhile (restored after), or, when
 * another caller holds that setting, one after another with BLAS's own threads.
 * Either way every range runs once, with its own `part`. */
int parallel_blas_parts(int64_t n, int64_t min_parallel);
void parallel_blas_run(range_fn fn, void *args, int64_t n, int parts);
/* with sleeping workers woken only with wake (parallel_run_small) */
void parallel_blas_run_small(range_fn fn, void *args, int64_t n, int parts, int wake);

/* Parallel thresholds, in elements touched: below them waking the pool's threads
 * (which sleep when idle, see threads.c) costs more than the second thread
 * saves. Memory-bound work (optimizers, bias, relu, batch norm) needs more
 * elements than work that calls exp. */
#define MIN_PARALLEL_CHEAP 262144
#define MIN_PARALLEL_MATH 65536
/* The smaller thresholds of work split only with spinning workers
 * (parallel_for_small): a part posted to a spinning worker starts within a
 * microsecond. They serve the kernels of a small network's training step (a
 * 200 x 54 -> 100 -> 7 network: 6207 parameters, a 100 -> 7 layer of 140000
 * multiply-adds), which follow each other within microseconds: split the same
 * way, each core keeps its rows of the batch in its own caches from kernel to
 * kernel (threads.c, LOCALITY). */
#define MIN_SPLIT_STEP 4096

/* Column sums of (rows, cols) arrays (bias gradient, batch-norm statistics) are
 * split by rows, so that each thread streams through contiguous memory: range
 * `part` adds its rows into its own slice ws + part * len of a zeroed workspace
 * of parts * len doubles, and add_parts then adds the slices into the first, in
 * part order. workspace returns NULL when out of memory. */
double *workspace(int parts, int64_t len);
void add_parts(double *ws, int parts, int64_t len);

/* Streaming stores and prefetches, for kernels whose output is too large for
 * the caches. */
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Outputs of at least this many bytes are written with non-temporal stores:
 * they do not fit in the caches, and a streaming store spares the read of each
 * destination line that a plain store makes first (write-allocate). Smaller
 * outputs stay in the caches for the next layer. */
#define STREAM_BYTES (4 << 20)

/* dst[0, 64 bytes) = src[0, 64 bytes), with non-temporal stores where SSE2
 * has them (x86-64); dst 64-byte aligned */
INLINE void stream_line_f32(float *dst, const float *src) {
#if defined(__SSE2__)
    for (int q = 0; q < 16; q += 4) _mm_stream_ps(dst + q, _mm_loadu_ps(src + q));
#else
    for (int q = 0; q < 16; q++) dst[q] = src[q];
#endif
}
INLINE void stream_line_f64(double *dst, const double *src) {
#if defined(__SSE2__)
    for (int q = 0; q < 8; q += 2) _mm_stream_pd(dst + q, _mm_loadu_pd(src + q));
#else
    for (int q = 0; q < 8; q++) dst[q] = src[q];
#endif
}

/* elements of T before the first 64-byte line boundary in dst, or all n
 * when dst is not aligned to its type */
INLINE int64_t stream_head(const void *dst, int64_t n, size_t size) {
    if ((uintptr_t)dst % size != 0) return n;
    int64_t head = (int64_t)((64 - (uintptr_t)dst % 64) % 64 / size);
    return head < n ? head : n;
}

/* dst[0, n) = src[0, n): the whole 64-byte lines of dst with streaming stores
 * (stream_line), the partial lines at either end with plain stores, so that
 * no line is written half by each kind when neighbouring rows share it */
#define STREAM_COPY(T, S)                                       \
    INLINE void stream_copy_##S(T *dst, const T *src, int64_t n) { \
        int64_t i = 0, head = stream_head(dst, n, sizeof(T));   \
        for (; i < head; i++) dst[i] = src[i];                  \
        for (; i + 64 / (int64_t)sizeof(T) <= n; i += 64 / (int64_t)sizeof(T)) \
            stream_line_##S(dst + i, src + i);                  \
        for (; i < n; i++) dst[i] = src[i];                     \
    }
STREAM_COPY(float, f32)
STREAM_COPY(double, f64)
#undef STREAM_COPY

/* orders the non-temporal stores of this thread before what follows */
INLINE void stream_fence(void) {
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

/* asks for the cache lines of p[0, bytes) ahead of their use (a hint: it never
 * faults; a GCC and Clang builtin, nothing elsewhere) */
INLINE void prefetch_lines(const void *p, int64_t bytes) {
#if defined(__GNUC__)
    for (int64_t k = 0; k < bytes; k += 64) __builtin_prefetch((const char *)p + k);
#else
    (void)p;
    (void)bytes;
#endif
}

/* prefetch_lines into the second-level cache only: for lines wanted after work
 * that streams more than the first level holds (a recurrent backward's next
 * step, after the step's GEMMs) */
INLINE void prefetch_lines_l2(const void *p, int64_t bytes) {
#if defined(__GNUC__)
    for (int64_t k = 0; k < bytes; k += 64) __builtin_prefetch((const char *)p + k, 0, 2);
#else
    (void)p;
    (void)bytes;
#endif
}

/* Prefetching ahead of a stream: loops over rows wider than a page call
 * prefetch_ahead once per PREFETCH_STEP bytes of each stream they read, for the
 * lines PREFETCH_AHEAD bytes further on. The hardware prefetchers stop at each
 * 4 KB page, so without this each row starts with misses. Measured on the
 * softmax cross-entropy (8192 x 1000 float32, 2 threads): 4 KB ahead faster
 * than 2, 6 or 8 KB; one step at a time, spread over the arithmetic, faster
 * than asking for chunks of 128 B to 4 KB at once (those variants also summed
 * per chunk, 25-40% slower in all). */
#define PREFETCH_AHEAD 4096
#define PREFETCH_STEP 128
INLINE void prefetch_ahead(const void *p, const void *end) {
    const char *q = (const char *)p + PREFETCH_AHEAD;
    if (q < (const char *)end) prefetch_lines(q, PREFETCH_STEP);
}

#endif
