/* Batch normalisation over the rows of (n, c) arrays, forward and backward. */
#include "common.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Outputs y of at least this many bytes are written with non-temporal
 * stores: they do not fit in the caches, and a streaming store spares the read
 * of each destination line that a plain store makes first (write-allocate).
 * Smaller outputs stay in the caches for the next layer. */
#define BN_STREAM_BYTES (4 << 20)

/* dst[0, n) = src[0, n), non-temporal from the first 16-byte aligned element on
 * where SSE2 has such stores (x86-64), plain stores elsewhere. */
INLINE void stream_copy_f32(float *dst, const float *src, int64_t n) {
    int64_t i = 0;
#if defined(__SSE2__)
    if ((uintptr_t)dst % sizeof(float) == 0) {
        for (; i < n && (uintptr_t)(dst + i) % 16 != 0; i++) dst[i] = src[i];
        for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
    }
#endif
    for (; i < n; i++) dst[i] = src[i];
}

INLINE void stream_copy_f64(double *dst, const double *src, int64_t n) {
    int64_t i = 0;
#if defined(__SSE2__)
    if ((uintptr_t)dst % sizeof(double) == 0) {
        for (; i < n && (uintptr_t)(dst + i) % 16 != 0; i++) dst[i] = src[i];
        for (; i + 2 <= n; i += 2) _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
    }
#endif
    for (; i < n; i++) dst[i] = src[i];
}

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

#define TEMPLATE "batchnorm_impl.h"
#include "instantiate.h"
