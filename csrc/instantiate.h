/* Compiles the kernel template named by TEMPLATE twice: T = float with function
 * names suffixed _f32, and T = double with _f64 (see FN in common.h). */
#define T float
#define S f32
#include TEMPLATE
#undef T
#undef S

#define T double
#define S f64
#include TEMPLATE
#undef T
#undef S
