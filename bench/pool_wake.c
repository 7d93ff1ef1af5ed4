/* How late the C kernels' pool (csrc/threads.c) starts a worker's part after a
 * pause: a job of two parts of PART_US microseconds of work each, posted
 * `calls` times with `pause_us` of sleep before each; per call, when each part
 * started after the post, on which core, and the call's time. Built and run by
 * bench/pool_wake.py (not part of fastnn). */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include "common.h"

#define PART_US 500.0

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static double started[2];
static int core[2];
static volatile double sink;

/* PART_US of arithmetic, the part's start and core recorded */
static void part(void *args, int64_t begin, int64_t end, int p) {
    (void)args, (void)begin, (void)end;
    started[p] = now_us();
    core[p] = sched_getcpu();
    double s = 0;
    while (now_us() - started[p] < PART_US) s += 1;
    sink = s;
}

int main(int argc, char **argv) {
    int pause_us = argc > 1 ? atoi(argv[1]) : 120000, calls = argc > 2 ? atoi(argv[2]) : 10;
    fastnn_set_num_threads(2);
    parallel_run(part, NULL, 2, 2); /* starts the worker */
    printf("pause %d us; two parts of %.0f us each\n", pause_us, PART_US);
    for (int i = 0; i < calls; i++) {
        usleep(pause_us);
        double posted = now_us();
        parallel_run(part, NULL, 2, 2);
        double total = now_us() - posted;
        printf("  part 0 at %5.0f us on core %d, part 1 at %5.0f us on core %d: %5.0f us%s\n",
               started[0] - posted, core[0], started[1] - posted, core[1], total,
               core[0] == core[1] ? " (one thread did both)" : "");
    }
    return 0;
}
