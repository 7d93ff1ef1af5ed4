/* Losses fused with their gradient: softmax cross-entropy, sigmoid binary
 * cross-entropy, and the elementwise regression and margin losses. */
/* exp and log1p dominate here: let their polynomials use fused multiply-adds (in
 * the AVX2 clones). No result of these kernels depends on a difference of nearly
 * equal products that a fused rounding would change visibly. */
#pragma GCC optimize("fp-contract=fast")
#include "common.h"
#define TEMPLATE "losses_impl.h"
#include "instantiate.h"
