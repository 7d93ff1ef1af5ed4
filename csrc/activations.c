/* Activations forward (with the dense layer's bias epilogue) and backward (with
 * the bias-gradient column sums), float and double: activations_impl.h is the
 * kernel source written once in terms of T and S (the type and its suffix). */
#include "common.h"

#define T float
#define S f32
#include "activations_impl.h"
#undef T
#undef S

#define T double
#define S f64
#include "activations_impl.h"
#undef T
#undef S
