/* Dropout (counter-based splitmix64 masks) and the L2/L1 weight penalty. */
#include "common.h"
#define TEMPLATE "regularisation_impl.h"
#include "instantiate.h"
