/* Activations forward (with the dense layer's bias epilogue) and backward (with
 * the bias-gradient column sums). */
#include "common.h"
#define TEMPLATE "activations_impl.h"
#include "instantiate.h"
