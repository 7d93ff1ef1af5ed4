#include <stdlib.h>
#include "common.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(_OPENMP) && !defined(_WIN32)
#include <pthread.h>
#define FORK_GUARD 1
#endif

static int fastnn_num_threads = 0; /* 0: OpenMP's default */

/* GNU OpenMP cannot start a thread team in a process forked from one whose team
 * exists: the child's first parallel region waits forever for threads that were
 * not copied. So a forked child runs every kernel serially (its siblings, if a
 * pool of processes, share the cores anyway). Set in the child by pthread_atfork,
 * registered when the library loads; never cleared. */
#ifdef FORK_GUARD
static volatile int forked_child = 0;

static void mark_forked_child(void) { forked_child = 1; }

__attribute__((constructor)) static void register_fork_guard(void) {
    pthread_atfork(NULL, NULL, mark_forked_child);
}
#endif

void fastnn_set_num_threads(int n) {
    fastnn_num_threads = n > 0 ? n : 0;
}

int fastnn_get_num_threads(void) {
#ifdef _OPENMP
#ifdef FORK_GUARD
    if (forked_child) return 1;
#endif
    int n = fastnn_num_threads > 0 ? fastnn_num_threads : omp_get_max_threads();
    return n < MAX_PARTS ? n : MAX_PARTS;
#else
    return 1;
#endif
}

int parallel_parts(int64_t n, int64_t min_parallel) {
    int threads = fastnn_get_num_threads();
    if (threads <= 1 || n < min_parallel || n < threads) return 1;
    return threads;
}

void parallel_run(range_fn fn, void *args, int64_t n, int parts) {
    if (n <= 0) return;
    if (parts <= 1) {
        fn(args, 0, n, 0);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(parts)
    {
        /* OpenMP may give fewer threads than asked: each then runs several ranges */
        int team = omp_get_num_threads();
        for (int p = omp_get_thread_num(); p < parts; p += team)
            fn(args, n * p / parts, n * (p + 1) / parts, p);
    }
#else
    for (int p = 0; p < parts; p++) fn(args, n * p / parts, n * (p + 1) / parts, p);
#endif
}

int parallel_for(range_fn fn, void *args, int64_t n, int64_t min_parallel) {
    int parts = parallel_parts(n, min_parallel);
    parallel_run(fn, args, n, parts);
    return parts;
}

double *workspace(int parts, int64_t len) {
    return calloc((size_t)parts * (size_t)(len > 0 ? len : 1), sizeof(double));
}

void add_parts(double *ws, int parts, int64_t len) {
    for (int p = 1; p < parts; p++)
        for (int64_t j = 0; j < len; j++) ws[j] += ws[p * len + j];
}
