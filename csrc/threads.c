#include "fastnn.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static int fastnn_num_threads = 0; /* 0: OpenMP's default */

void fastnn_set_num_threads(int n) {
    fastnn_num_threads = n > 0 ? n : 0;
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads(n);
#endif
}

int fastnn_get_num_threads(void) {
#ifdef _OPENMP
    return fastnn_num_threads > 0 ? fastnn_num_threads : omp_get_max_threads();
#else
    return 1;
#endif
}
