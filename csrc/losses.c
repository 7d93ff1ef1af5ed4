/* Losses fused with their gradient: softmax cross-entropy, sigmoid binary
 * cross-entropy, and the elementwise regression and margin losses. */
#include "common.h"
#define TEMPLATE "losses_impl.h"
#include "instantiate.h"
