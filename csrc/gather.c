/* Rows of a matrix gathered by index: the shuffled batches of a training epoch.
 * Type-free: a row is row_bytes bytes (D elements of the caller's dtype). */
#include <string.h>
#include "common.h"

/* A shuffled batch reads rows scattered over the whole data, which, for data
 * larger than the caches, come from memory one at a time: the first
 * PREFETCH_BYTES of the row PREFETCH_ROWS ahead are requested before a row is
 * copied (the hardware's prefetcher follows a long row by itself). Measured on
 * a Zen 4, rows gathered at random from 50000 x 54 float64, batch 200: 11.2 us
 * a batch without, 7.0 with (20000 x 784 float32, batch 256: 79 and 75 us). */
#define PREFETCH_ROWS 8
#define PREFETCH_BYTES 512
/* Bytes copied from which the rows are split between the pool's threads when
 * they spin (parallel_for_small: the worker's rows of the batch are then in its
 * caches for its part of the first layer), and from which sleeping ones are
 * woken (waking them costs more than the second thread saves below). */
#define GATHER_SPLIT_BYTES (1 << 14)
#define GATHER_PARALLEL_BYTES (1 << 20)

struct gather_args {
    const char *x;
    const int64_t *index64;
    const int32_t *index32;
    char *out;
    int64_t rows, row_bytes;
};

INLINE int64_t row_at(const struct gather_args *a, int64_t i) {
    return a->index64 ? a->index64[i] : a->index32[i];
}

/* out rows [begin, end) */
static void take_rows_range(void *p, int64_t begin, int64_t end, int part) {
    (void)part;
    const struct gather_args *a = p;
    int64_t bytes = a->row_bytes;
    for (int64_t i = begin; i < end; i++) {
        if (i + PREFETCH_ROWS < end) {
            const char *ahead = a->x + row_at(a, i + PREFETCH_ROWS) * bytes;
            for (int64_t k = 0; k < bytes && k < PREFETCH_BYTES; k += 64) __builtin_prefetch(ahead + k, 0, 3);
        }
        memcpy(a->out + i * bytes, a->x + row_at(a, i) * bytes, (size_t)bytes);
    }
}

void take_rows(const void *x, const int64_t *index64, const int32_t *index32, void *out, int64_t rows,
               int64_t row_bytes) {
    struct gather_args a = {x, index64, index32, out, rows, row_bytes};
    parallel_for_small(take_rows_range, &a, rows, GATHER_SPLIT_BYTES / (row_bytes + 1) + 1,
                       GATHER_PARALLEL_BYTES / (row_bytes + 1) + 1);
}
