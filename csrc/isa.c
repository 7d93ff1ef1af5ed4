/* Which instruction set's variant of the kernels runs (see isa.h). */
#include <string.h>
#include "isa.h"

int fastnn_isa_selected = FASTNN_ISA_GENERIC;

int fastnn_isa_supported(void) {
#if FASTNN_MULTI_ISA
    /* the ISA levels check the OS's support of the registers too (XCR0) */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return FASTNN_ISA_AVX512;
    if (__builtin_cpu_supports("x86-64-v3")) return FASTNN_ISA_AVX2;
#endif
    return FASTNN_ISA_GENERIC;
}

int fastnn_set_isa(int isa) {
    int best = fastnn_isa_supported();
    fastnn_isa_selected = isa < FASTNN_ISA_GENERIC ? FASTNN_ISA_GENERIC : isa > best ? best : isa;
    return fastnn_isa_selected;
}

int fastnn_get_isa(void) { return fastnn_isa_selected; }

int fastnn_kernel_isa(const char *name) {
    for (int i = 0; i < fastnn_dispatched_count; i++)
        if (strcmp(fastnn_dispatched_names[i], name) == 0) {
            int cap = fastnn_dispatched_caps[i];
            return fastnn_isa_selected < cap ? fastnn_isa_selected : cap;
        }
    return -1;
}

/* the highest supported from the start, for a kernel called before anything
 * sets it (without constructors the generic code runs until fastnn_set_isa) */
#if defined(__GNUC__)
__attribute__((constructor)) static void select_best_isa(void) {
    fastnn_isa_selected = fastnn_isa_supported();
}
#endif
