/* Convolution (im2col, BLAS's GEMM and the epilogue a tile of images at a time,
 * forward and backward), its im2col and col2im alone, and max and average
 * pooling, over channels-last images. */
#include <string.h>
#include "common.h"

/* the output row range [i0, i1) of a window along one axis that lies inside the
 * image: cells a with 0 <= i*s - p + a < size, as [lo, hi) in image coordinates */
static inline void inside(int64_t i, int64_t s, int64_t p, int64_t k, int64_t size,
                          int64_t *lo, int64_t *hi) {
    int64_t start = i * s - p;
    *lo = start > 0 ? start : 0;
    *hi = start + k < size ? start + k : size;
}

#define TEMPLATE "conv_impl.h"
#include "instantiate.h"
