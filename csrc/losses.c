/* Losses fused with their gradient: softmax cross-entropy, sigmoid binary
 * cross-entropy, and the elementwise regression and margin losses. */
/* exp and log1p dominate here: let their polynomials use fused multiply-adds (in
 * the AVX2 clones). No result of these kernels depends on a difference of nearly
 * equal products that a fused rounding would change visibly. */
#pragma GCC optimize("fp-contract=fast")
#include "common.h"
/* softmax cross-entropy writes gradients larger than this with non-temporal
 * stores (SSE2, part of every x86-64; elsewhere plain stores) */
#ifndef STREAM_MIN_BYTES
#define STREAM_MIN_BYTES (16.0 * 1024 * 1024)
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#define STREAM_FENCE() _mm_sfence()
#else
#define STREAM_FENCE() ((void)0)
#endif
#define TEMPLATE "losses_impl.h"
#include "instantiate.h"
