/* Internal helpers shared by the kernel files (not part of the cffi API). */
#ifndef FASTNN_COMMON_H
#define FASTNN_COMMON_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include "fastnn.h"
#include "vmath.h"

/* Hot loops are compiled twice, for x86-64-v3 (AVX2 + FMA) and for the baseline,
 * and the loader picks one for the CPU (GCC function multiversioning, an ifunc:
 * Linux/glibc only). Functions with this attribute are not inlined into their
 * callers, so it goes on the per-range workers, not on per-element helpers. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(FASTNN_NO_CLONES)
#define HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
/* loops of 64-bit integer multiplies (the dropout hash) also get an AVX-512 clone:
 * AVX2 has no 64-bit vector multiply and emulates it with three 32-bit ones */
#define HOT_MUL64 __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT
#define HOT_MUL64
#endif

/* per-element and per-row helpers are forced inline into the HOT loops that call
 * them, so they are compiled for each clone's instruction set */
#define INLINE static inline __attribute__((always_inline))

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

/* Parallel thresholds, in elements touched: below them waking the OpenMP threads
 * (which sleep when idle, see c_backend.py) costs more than the second thread
 * saves. Memory-bound work (optimizers, bias, relu, batch norm) needs more
 * elements than work that calls exp. */
#define MIN_PARALLEL_CHEAP 262144
#define MIN_PARALLEL_MATH 65536

/* Column sums of (rows, cols) arrays (bias gradient, batch-norm statistics) are
 * split by rows, so that each thread streams through contiguous memory: range
 * `part` adds its rows into its own slice ws + part * len of a zeroed workspace
 * of parts * len doubles, and add_parts then adds the slices into the first, in
 * part order. workspace returns NULL when out of memory. */
double *workspace(int parts, int64_t len);
void add_parts(double *ws, int parts, int64_t len);

#endif
