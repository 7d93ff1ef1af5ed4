#include "common.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static int fastnn_num_threads = 0; /* 0: OpenMP's default */

void fastnn_set_num_threads(int n) {
    fastnn_num_threads = n > 0 ? n : 0;
}

int fastnn_get_num_threads(void) {
#ifdef _OPENMP
    int n = fastnn_num_threads > 0 ? fastnn_num_threads : omp_get_max_threads();
    return n < MAX_PARTS ? n : MAX_PARTS;
#else
    return 1;
#endif
}

int parallel_for(range_fn fn, void *args, int64_t n, int64_t min_parallel) {
    int threads = fastnn_get_num_threads();
    if (n <= 0) return 0;
    if (threads <= 1 || n < min_parallel || n < threads) {
        fn(args, 0, n, 0);
        return 1;
    }
    int parts = threads;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
        /* omp may give fewer threads than asked: each takes parts/team ranges */
        int team = omp_get_num_threads();
        for (int p = omp_get_thread_num(); p < parts; p += team) {
            int64_t begin = n * p / parts, end = n * (p + 1) / parts;
            fn(args, begin, end, p);
        }
    }
#else
    fn(args, 0, n, 0);
    parts = 1;
#endif
    return parts;
}

int64_t column_tile(int64_t cols) {
    /* about cols / threads, a multiple of 16, within [16, TILE_MAX] */
    int64_t threads = fastnn_get_num_threads();
    int64_t tile = (cols + threads - 1) / threads;
    tile = (tile + 15) / 16 * 16;
    return tile < 16 ? 16 : tile > TILE_MAX ? TILE_MAX : tile;
}
