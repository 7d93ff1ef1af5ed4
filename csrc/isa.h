/* Internal: the per-instruction-set compilation of the kernels (see the build,
 * fastnn/backends/_build_ckernels.py, and fastnn.h's enum fastnn_isa).
 *
 * The build compiles each kernel file (every .c file of csrc but isa.c and threads.c)
 * once per instruction set, through a generated wrapper that renames the file's
 * API functions (adam_step_f32 -> adam_step_f32_avx512) and sets the target of
 * everything in it with #pragma GCC target. A generated dispatch file defines
 * the API names, each calling the variant of fastnn_isa_selected. So the
 * dispatch is explicit and can be forced lower, which GCC's target_clones
 * (an ifunc resolved once at load) cannot. */
#ifndef FASTNN_ISA_H
#define FASTNN_ISA_H
#include "fastnn.h"

/* the AVX2 and AVX-512 variants exist with GCC on x86-64 (the target pragma
 * and __builtin_cpu_supports); elsewhere only the generic code is built */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) \
    && !defined(FASTNN_GENERIC_ONLY)
#define FASTNN_MULTI_ISA 1
#else
#define FASTNN_MULTI_ISA 0
#endif

/* the instruction set the kernels run (enum fastnn_isa), set at load */
extern int fastnn_isa_selected;

/* from the generated dispatch file: the dispatched functions' names and the
 * highest instruction set each one uses (its cap) */
extern const char *const fastnn_dispatched_names[];
extern const signed char fastnn_dispatched_caps[];
extern const int fastnn_dispatched_count;

#endif
