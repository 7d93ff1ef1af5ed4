/* Batch normalisation over the rows of (n, c) arrays, forward and backward. */
#include "common.h"

#define TEMPLATE "batchnorm_impl.h"
#include "instantiate.h"
