/* im2col, col2im and pooling for one float type T (template, see instantiate.h).
 * Geometry (struct fastnn_window, fastnn.h): images x (n, ih, iw, c), windows
 * (kh, kw) every (sh, sw) cells over the image padded by (ph, pw); output
 * (n, oh, ow, .). Output (i, j) reads rows i*sh - ph + (0..kh-1) and columns
 * j*sw - pw + (0..kw-1). Channels are innermost everywhere: each window row is
 * kw*c contiguous elements of x, and of a row of the column matrix. */

struct FN(window_args) {
    const struct fastnn_window *g;
    const T *in;
    T *out;
    int64_t *argmax;
    const int64_t *argmax64;
    const int32_t *argmax32;
    double *acc; /* avgpool: one (c,) accumulator per range */
};

/* cols[(n*oh + i)*ow + j, (a*kw + b)*c + ch] = x[n, i*sh - ph + a, j*sw - pw + b, ch],
 * 0 in the padding; range: output rows n*oh + i */
HOT static void FN(im2col_rows)(const struct FN(window_args) *a, int64_t r0, int64_t r1) {
    const struct fastnn_window *g = a->g;
    int64_t c = g->c, kwc = g->kw * c, K = g->kh * kwc;
    for (int64_t r = r0; r < r1; r++) {
        int64_t n = r / g->oh, i = r % g->oh;
        const T *image = a->in + n * g->ih * g->iw * c;
        for (int64_t j = 0; j < g->ow; j++) {
            T *row = a->out + (r * g->ow + j) * K;
            int64_t s0, s1;
            inside(j, g->sw, g->pw, g->kw, g->iw, &s0, &s1);
            int64_t left = (s0 - (j * g->sw - g->pw)) * c; /* padded cells before s0 */
            int64_t len = (s1 > s0 ? s1 - s0 : 0) * c;
            for (int64_t ka = 0; ka < g->kh; ka++) {
                T *dst = row + ka * kwc;
                int64_t y = i * g->sh - g->ph + ka;
                int64_t end = y < 0 || y >= g->ih ? 0 : len; /* elements copied */
                const T *src = image + (y * g->iw + s0) * c;
                /* element loops, not memset / memcpy: a window row of a thin image
                 * is a few elements (5 for a 5 x 5 kernel over one channel), where
                 * the calls cost 6x the copy (measured: 1.55 ms per 64 28 x 28 x 1
                 * images under a 5 x 5 kernel) */
                for (int64_t e = 0; e < left; e++) dst[e] = 0;
                for (int64_t e = 0; e < end; e++) dst[left + e] = src[e];
                for (int64_t e = left + end; e < kwc; e++) dst[e] = 0;
            }
        }
    }
}

/* the window rows of output rows r0..r1 from a zero-padded copy of each image
 * (pad, (ih + 2 ph, iw + 2 pw, c)): one copy of kwc elements per window row,
 * without the padding's bounds; kwc a constant where the caller's switch makes
 * it one, so that the copy unrolls */
INLINE void FN(im2col_padded)(const struct FN(window_args) *a, int64_t r0, int64_t r1, T *pad,
                              int64_t kwc) {
    const struct fastnn_window *g = a->g;
    int64_t c = g->c, K = g->kh * kwc, wide = g->iw + 2 * g->pw, high = g->ih + 2 * g->ph;
    int64_t filled = -1; /* the image the pad holds */
    for (int64_t r = r0; r < r1; r++) {
        int64_t n = r / g->oh, i = r % g->oh;
        if (n != filled) {
            const T *image = a->in + n * g->ih * g->iw * c;
            for (int64_t e = 0; e < high * wide * c; e++) pad[e] = 0;
            for (int64_t y = 0; y < g->ih; y++) {
                T *dst = pad + ((y + g->ph) * wide + g->pw) * c;
                const T *src = image + y * g->iw * c;
                for (int64_t e = 0; e < g->iw * c; e++) dst[e] = src[e];
            }
            filled = n;
        }
        for (int64_t j = 0; j < g->ow; j++) {
            T *row = a->out + (r * g->ow + j) * K;
            const T *src = pad + (i * g->sh * wide + j * g->sw) * c;
            for (int64_t ka = 0; ka < g->kh; ka++)
                for (int64_t e = 0; e < kwc; e++) row[ka * kwc + e] = src[ka * wide * c + e];
        }
    }
}

/* cols of thin images (window rows of at most IM2COL_THIN elements) from a
 * padded copy of each image, wider ones between the bounds (there the copy is
 * long and the bounds cost nothing). Measured with one thread, 64 images 28 x
 * 28 x 1: 0.24 ms against 1.06 under a 5 x 5 kernel with padding 2, 0.16
 * against 0.53 under 3 x 3 with padding 1. */
#ifndef IM2COL_THIN
#define IM2COL_THIN 16
#endif
HOT static void FN(im2col_range)(void *args, int64_t r0, int64_t r1, int part) {
    const struct FN(window_args) *a = args;
    const struct fastnn_window *g = a->g;
    int64_t kwc = g->kw * g->c;
    T *pad = NULL;
    (void)part;
    if (kwc <= IM2COL_THIN)
        pad = aligned_malloc((size_t)((g->ih + 2 * g->ph) * (g->iw + 2 * g->pw) * g->c) * sizeof(T));
    if (!pad) { /* wide window rows (or no memory): copies between the bounds */
        FN(im2col_rows)(a, r0, r1);
        return;
    }
    switch (kwc) {
    case 3: FN(im2col_padded)(a, r0, r1, pad, 3); break;
    case 5: FN(im2col_padded)(a, r0, r1, pad, 5); break;
    default: FN(im2col_padded)(a, r0, r1, pad, kwc);
    }
    free(pad);
}

/* dx[n] = the sum of every window's gradient added on the cells it read (the
 * adjoint of im2col); range: images */
HOT static void FN(col2im_range)(void *args, int64_t n0, int64_t n1, int part) {
    const struct FN(window_args) *a = args;
    const struct fastnn_window *g = a->g;
    int64_t c = g->c, kwc = g->kw * c, K = g->kh * kwc, image = g->ih * g->iw * c;
    (void)part;
    for (int64_t n = n0; n < n1; n++) {
        T *dx = a->out + n * image;
        memset(dx, 0, (size_t)image * sizeof(T));
        for (int64_t i = 0; i < g->oh; i++) {
            for (int64_t j = 0; j < g->ow; j++) {
                const T *row = a->in + ((n * g->oh + i) * g->ow + j) * K;
                int64_t s0, s1;
                inside(j, g->sw, g->pw, g->kw, g->iw, &s0, &s1);
                int64_t left = (s0 - (j * g->sw - g->pw)) * c;
                int64_t len = (s1 > s0 ? s1 - s0 : 0) * c;
                for (int64_t ka = 0; ka < g->kh; ka++) {
                    int64_t y = i * g->sh - g->ph + ka;
                    if (y < 0 || y >= g->ih) continue;
                    T *dst = dx + (y * g->iw + s0) * c;
                    const T *src = row + ka * kwc + left;
#pragma omp simd
                    for (int64_t e = 0; e < len; e++) dst[e] += src[e];
                }
            }
        }
    }
}

/* each window's maximum and its flat index y*iw + s in the image: the first
 * maximum in row-major window order, or the first NaN; the first real cell
 * starts the search, so padding never wins; range: images. The channels of one
 * output go in blocks of POOL_BLOCK held in local arrays, their indices as
 * int32 (the width of a float32 lane; widened once per output). Measured with
 * one thread, 64 images under a 2 x 2 pool, against the best and its int64
 * index updated in the output arrays per cell: 28 x 28 x 32 0.59 ms (1.28
 * before), 14 x 14 x 64 0.22 (0.49), 28 x 28 x 6 0.73 (0.84).
 * Images of fewer channels than an AVX2 vector holds go channel by channel
 * (maxpool_thin): 64 images 28 x 28 x 6 under a 2 x 2 pool 0.47 ms against 0.73
 * in blocks (one thread); 10 x 10 x 16 is 3 times slower so */
#ifndef POOL_THIN_BYTES
#define POOL_THIN_BYTES 32
#endif
/* one output of a window over rows [y0, y1) and columns [s0, s1) of image x,
 * cell by cell, its c channels (fewer than a vector: at most 8) side by side
 * in registers (scalar: with `omp simd` GCC vectorises such loops with
 * gathers, 5 to 9 times slower); c a constant at the callers that matter, the
 * channels' loop then unrolled */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized" /* best, arg: the first c set first */
INLINE void FN(maxpool_thin)(const T *x, const struct fastnn_window *g, int64_t y0, int64_t y1,
                             int64_t s0, int64_t s1, T *out, int64_t *index, int64_t c) {
    T best[8]; /* c of them used (an initialiser here keeps them in memory: 3 times slower) */
    int64_t arg[8];
    const T *first = x + (y0 * g->iw + s0) * c;
#pragma GCC unroll 8
    for (int64_t ch = 0; ch < c; ch++) {
        best[ch] = first[ch];
        arg[ch] = y0 * g->iw + s0;
    }
    for (int64_t y = y0; y < y1; y++)
        for (int64_t s = s0; s < s1; s++) {
            const T *v = x + (y * g->iw + s) * c;
#pragma GCC unroll 8
            for (int64_t ch = 0; ch < c; ch++) {
                int wins = !(v[ch] <= best[ch]) & (best[ch] == best[ch]); /* v > best, or v NaN and best not */
                best[ch] = wins ? v[ch] : best[ch];
                arg[ch] = wins ? y * g->iw + s : arg[ch];
            }
        }
#pragma GCC unroll 8
    for (int64_t ch = 0; ch < c; ch++) {
        out[ch] = best[ch];
        index[ch] = arg[ch];
    }
}
#pragma GCC diagnostic pop
#ifndef POOL_BLOCK
#define POOL_BLOCK 64
#endif
HOT static void FN(maxpool_range)(void *args, int64_t n0, int64_t n1, int part) {
    const struct FN(window_args) *a = args;
    const struct fastnn_window *g = a->g;
    int64_t c = g->c;
    (void)part;
    T best[POOL_BLOCK];
    int32_t arg[POOL_BLOCK];
    for (int64_t n = n0; n < n1; n++) {
        const T *x = a->in + n * g->ih * g->iw * c;
        for (int64_t i = 0; i < g->oh; i++) {
            int64_t y0, y1;
            inside(i, g->sh, g->ph, g->kh, g->ih, &y0, &y1);
            for (int64_t j = 0; j < g->ow; j++) {
                int64_t s0, s1;
                inside(j, g->sw, g->pw, g->kw, g->iw, &s0, &s1);
                int64_t o = ((n * g->oh + i) * g->ow + j) * c;
                if (c * (int64_t)sizeof(T) < POOL_THIN_BYTES) { /* less than a vector */
                    T *out = a->out + o;
                    int64_t *index = a->argmax + o;
                    /* c a constant where it is small: the channels' chains then
                     * run interleaved, in registers (64 images 28 x 28 x 6, one
                     * thread, loaded machine: 310-384 us against 470-500 channel
                     * by channel with c a variable) */
                    switch (c) {
                    case 1: FN(maxpool_thin)(x, g, y0, y1, s0, s1, out, index, 1); break;
                    case 2: FN(maxpool_thin)(x, g, y0, y1, s0, s1, out, index, 2); break;
                    case 3: FN(maxpool_thin)(x, g, y0, y1, s0, s1, out, index, 3); break;
                    case 4: FN(maxpool_thin)(x, g, y0, y1, s0, s1, out, index, 4); break;
                    case 6: FN(maxpool_thin)(x, g, y0, y1, s0, s1, out, index, 6); break;
                    default: FN(maxpool_thin)(x, g, y0, y1, s0, s1, out, index, c);
                    }
                    continue;
                }
                for (int64_t c0 = 0; c0 < c; c0 += POOL_BLOCK) {
                    int64_t nb = c - c0 < POOL_BLOCK ? c - c0 : POOL_BLOCK;
                    const T *first = x + (y0 * g->iw + s0) * c + c0;
                    int32_t at0 = (int32_t)(y0 * g->iw + s0);
                    for (int64_t ch = 0; ch < nb; ch++) {
                        best[ch] = first[ch];
                        arg[ch] = at0;
                    }
                    for (int64_t y = y0; y < y1; y++) {
                        for (int64_t s = s0; s < s1; s++) {
                            const T *v = x + (y * g->iw + s) * c + c0;
                            int32_t at = (int32_t)(y * g->iw + s);
#pragma omp simd
                            for (int64_t ch = 0; ch < nb; ch++) {
                                /* v > best, or v NaN and best not */
                                int wins = !(v[ch] <= best[ch]) & (best[ch] == best[ch]);
                                best[ch] = wins ? v[ch] : best[ch];
                                arg[ch] = wins ? at : arg[ch];
                            }
                        }
                    }
                    T *out = a->out + o + c0;
                    int64_t *index = a->argmax + o + c0;
                    for (int64_t ch = 0; ch < nb; ch++) {
                        out[ch] = best[ch];
                        index[ch] = arg[ch];
                    }
                }
            }
        }
    }
}

/* dx[n] = 0 but at each argmax index, the sum of the dy of the windows it won,
 * added in the order of the outputs; range: images. Output pixel by pixel, so
 * that the channel is the loop counter, not a remainder of the flat index:
 * 0.42 ms for 64 images 28 x 28 x 32 (0.93 with a 64-bit % per element). */
HOT static void FN(maxpool_backward_range)(void *args, int64_t n0, int64_t n1, int part) {
    const struct FN(window_args) *a = args;
    const struct fastnn_window *g = a->g;
    int64_t c = g->c, image = g->ih * g->iw * c, pixels = g->oh * g->ow;
    (void)part;
    for (int64_t n = n0; n < n1; n++) {
        T *dx = a->out + n * image;
        memset(dx, 0, (size_t)image * sizeof(T));
        for (int64_t p = 0; p < pixels; p++) {
            int64_t e = (n * pixels + p) * c; /* output (n, p), channel 0 */
            const T *dy = a->in + e;
            if (a->argmax64) {
                const int64_t *k = a->argmax64 + e;
                for (int64_t ch = 0; ch < c; ch++) dx[k[ch] * c + ch] += dy[ch];
            } else {
                const int32_t *k = a->argmax32 + e;
                for (int64_t ch = 0; ch < c; ch++) dx[(int64_t)k[ch] * c + ch] += dy[ch];
            }
        }
    }
}

/* each window's mean, its sum in double, the padding counted in the divisor
 * kh*kw; range: images */
HOT static void FN(avgpool_range)(void *args, int64_t n0, int64_t n1, int part) {
    const struct FN(window_args) *a = args;
    const struct fastnn_window *g = a->g;
    int64_t c = g->c;
    double area = (double)(g->kh * g->kw);
    double *acc = a->acc + (int64_t)part * c;
    for (int64_t n = n0; n < n1; n++) {
        const T *x = a->in + n * g->ih * g->iw * c;
        for (int64_t i = 0; i < g->oh; i++) {
            int64_t y0, y1;
            inside(i, g->sh, g->ph, g->kh, g->ih, &y0, &y1);
            for (int64_t j = 0; j < g->ow; j++) {
                int64_t s0, s1;
                inside(j, g->sw, g->pw, g->kw, g->iw, &s0, &s1);
                for (int64_t ch = 0; ch < c; ch++) acc[ch] = 0;
                for (int64_t y = y0; y < y1; y++)
                    for (int64_t s = s0; s < s1; s++) {
                        const T *v = x + (y * g->iw + s) * c;
#pragma omp simd
                        for (int64_t ch = 0; ch < c; ch++) acc[ch] += (double)v[ch];
                    }
                T *out = a->out + ((n * g->oh + i) * g->ow + j) * c;
                for (int64_t ch = 0; ch < c; ch++) out[ch] = (T)(acc[ch] / area);
            }
        }
    }
}

/* each cell receives dy / (kh*kw) (rounded to T) of every window that holds it;
 * range: images */
HOT static void FN(avgpool_backward_range)(void *args, int64_t n0, int64_t n1, int part) {
    const struct FN(window_args) *a = args;
    const struct fastnn_window *g = a->g;
    int64_t c = g->c, image = g->ih * g->iw * c;
    T area = (T)(g->kh * g->kw);
    (void)part;
    for (int64_t n = n0; n < n1; n++) {
        T *dx = a->out + n * image;
        memset(dx, 0, (size_t)image * sizeof(T));
        for (int64_t i = 0; i < g->oh; i++) {
            int64_t y0, y1;
            inside(i, g->sh, g->ph, g->kh, g->ih, &y0, &y1);
            for (int64_t j = 0; j < g->ow; j++) {
                int64_t s0, s1;
                inside(j, g->sw, g->pw, g->kw, g->iw, &s0, &s1);
                const T *dy = a->in + ((n * g->oh + i) * g->ow + j) * c;
                for (int64_t y = y0; y < y1; y++)
                    for (int64_t s = s0; s < s1; s++) {
                        T *d = dx + (y * g->iw + s) * c;
#pragma omp simd
                        for (int64_t ch = 0; ch < c; ch++) d[ch] += dy[ch] / area;
                    }
            }
        }
    }
}

/* ranges of images (or of output rows) in parallel once the work is large */
static int FN(window_parts)(int64_t work, int64_t ranges) {
    int parts = parallel_parts(work, MIN_PARALLEL_CHEAP);
    return parts < ranges ? parts : (int)(ranges > 0 ? ranges : 1);
}

void FN(im2col)(const T *x, T *cols, const struct fastnn_window *g) {
    struct FN(window_args) a = {.g = g, .in = x, .out = cols};
    int64_t rows = g->n * g->oh;
    parallel_run(FN(im2col_range), &a, rows,
                 FN(window_parts)(rows * g->ow * g->kh * g->kw * g->c, rows));
}

void FN(col2im)(const T *cols, T *dx, const struct fastnn_window *g) {
    struct FN(window_args) a = {.g = g, .in = cols, .out = dx};
    parallel_run(FN(col2im_range), &a, g->n,
                 FN(window_parts)(g->n * g->oh * g->ow * g->kh * g->kw * g->c, g->n));
}

void FN(maxpool_forward)(const T *x, T *y, int64_t *argmax, const struct fastnn_window *g) {
    struct FN(window_args) a = {.g = g, .in = x, .out = y, .argmax = argmax};
    parallel_run(FN(maxpool_range), &a, g->n,
                 FN(window_parts)(g->n * g->ih * g->iw * g->c, g->n));
}

void FN(maxpool_backward)(const T *dy, const int64_t *argmax64, const int32_t *argmax32, T *dx,
                          const struct fastnn_window *g) {
    struct FN(window_args) a = {.g = g, .in = dy, .out = dx, .argmax64 = argmax64,
                                .argmax32 = argmax32};
    parallel_run(FN(maxpool_backward_range), &a, g->n,
                 FN(window_parts)(g->n * g->ih * g->iw * g->c, g->n));
}

int FN(avgpool_forward)(const T *x, T *y, const struct fastnn_window *g) {
    int parts = FN(window_parts)(g->n * g->ih * g->iw * g->c, g->n);
    double *acc = workspace(parts, g->c); /* one channel accumulator per range */
    if (!acc) return -1;
    struct FN(window_args) a = {.g = g, .in = x, .out = y, .acc = acc};
    parallel_run(FN(avgpool_range), &a, g->n, parts);
    free(acc);
    return 0;
}

void FN(avgpool_backward)(const T *dy, T *dx, const struct fastnn_window *g) {
    struct FN(window_args) a = {.g = g, .in = dy, .out = dx};
    parallel_run(FN(avgpool_backward_range), &a, g->n,
                 FN(window_parts)(g->n * g->ih * g->iw * g->c, g->n));
}

/* ------------------------------------------------------------ convolution
 * conv2d_forward and conv2d_backward in one call each, over tiles of images:
 * the images are split into one contiguous range per thread, and each thread
 * walks its range in tiles of at most `tile` images, doing everything a tile
 * needs while the tile's columns are in its cache, with BLAS on one thread
 * (parallel_blas_run): two single-threaded GEMMs side by side and the passes
 * around them, each on its own images, waste less than one GEMM split by BLAS
 * with the passes between. A tile of images is rows = images * oh * ow rows of
 * the column matrix cols (rows, K = kh * kw * c), K in W's order (kh, kw, c),
 * so that W is the (K, o) operand. Workspace of range `part`: ws + part *
 * conv_part_size(...), holding its tile's cols and, in the backward, dcols
 * (rows, K) and its dW partial (K, o). A 1 x 1 kernel with
 * stride 1 and no padding reads x as its own column matrix. */
struct FN(conv_args) {
    const struct fastnn_window *g;
    const T *x, *W, *b, *dy, *y, *preact;
    T *out, *preact_out, *dx, *dz, *dW, *ws;
    double *db_parts; /* backward: one (o,) column sum of dz per range */
    int64_t o, tile, part_size;
    int act, pointwise;
};

/* elements of one range's workspace: cols (tile rows, K) in the forward; cols,
 * dcols (rows, K) and a dW partial (K, o) in the backward */
INLINE int64_t FN(conv_part_size)(const struct fastnn_window *g, int64_t o, int64_t tile,
                                  int backward) {
    int64_t rows = tile * g->oh * g->ow, K = g->kh * g->kw * g->c;
    return backward ? 2 * rows * K + K * o : rows * K;
}

/* the column matrix of images [n0, n1): built into cols, or x itself (pointwise) */
INLINE const T *FN(conv_columns)(const struct FN(conv_args) *a, int64_t n0, int64_t n1, T *cols) {
    const struct fastnn_window *g = a->g;
    int64_t image = g->ih * g->iw * g->c;
    if (a->pointwise) return a->x + n0 * image;
    struct FN(window_args) w = {.g = g, .in = a->x + n0 * image, .out = cols};
    FN(im2col_range)(&w, 0, (n1 - n0) * g->oh, 0);
    return cols;
}

/* y (rows, o) = activation(cols W + b) for the tiles of images [n0, n1) */
HOT static void FN(conv_forward_range)(void *args, int64_t n0, int64_t n1, int part) {
    const struct FN(conv_args) *a = args;
    const struct fastnn_window *g = a->g;
    int64_t pixels = g->oh * g->ow, K = g->kh * g->kw * g->c, o = a->o;
    int64_t tiles = (n1 - n0 + a->tile - 1) / a->tile;
    T *cols = a->ws + part * a->part_size;
    for (int64_t t = 0; t < tiles; t++) { /* even tiles: images t0..t1 */
        int64_t t0 = n0 + (n1 - n0) * t / tiles, t1 = n0 + (n1 - n0) * (t + 1) / tiles;
        int64_t rows = (t1 - t0) * pixels, at = t0 * pixels * o;
        const T *c = FN(conv_columns)(a, t0, t1, cols);
        FN(gemm)(0, 0, rows, o, K, c, K, a->W, o, 0, a->out + at, o);
        FN(bias_activation_forward)(a->out + at, a->b, a->preact_out ? a->preact_out + at : NULL,
                                    a->out + at, rows, o, a->act);
    }
}

/* ranges for n images: one per thread when there is enough work, at most
 * max_parts (the workspaces the caller gave) */
static int FN(conv_parts)(const struct fastnn_window *g, int64_t o, int64_t max_parts) {
    int64_t work = g->n * g->oh * g->ow * g->kh * g->kw * g->c * o; /* multiply-adds */
    int parts = parallel_blas_parts(work, MIN_PARALLEL_CHEAP);
    if (parts > max_parts) parts = (int)max_parts;
    return parts < g->n ? parts : (int)(g->n > 0 ? g->n : 1);
}

int FN(conv2d_forward)(const T *x, const T *W, const T *b, T *preact, T *y, T *ws,
                       const struct fastnn_window *g, int64_t o, int64_t tile, int64_t parts,
                       int activation) {
    struct FN(conv_args) a = {.g = g, .x = x, .W = W, .b = b, .out = y, .preact_out = preact,
                              .ws = ws, .o = o, .tile = tile > 0 ? tile : 1, .act = activation};
    a.pointwise = g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
    a.part_size = FN(conv_part_size)(g, o, a.tile, 0);
    parallel_blas_run(FN(conv_forward_range), &a, g->n, FN(conv_parts)(g, o, parts));
    return 0;
}

/* acc (o,) += the column sums of dz (rows, o), in double */
INLINE void FN(add_columns)(double *acc, const T *dz, int64_t rows, int64_t o) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < o; j++) acc[j] += dz[r * o + j];
}

/* for the tiles of images [n0, n1): dz = dy * activation' (dy itself for the
 * identity), its column sums into
 * this range's db slice, this range's dW partial += cols^T dz, and dx of the
 * tile's images = col2im(dz W^T) (their own images: no two ranges write one) */
HOT static void FN(conv_backward_range)(void *args, int64_t n0, int64_t n1, int part) {
    const struct FN(conv_args) *a = args;
    const struct fastnn_window *g = a->g;
    int64_t pixels = g->oh * g->ow, K = g->kh * g->kw * g->c, o = a->o;
    int64_t tiles = (n1 - n0 + a->tile - 1) / a->tile, image = g->ih * g->iw * g->c;
    int64_t most = a->tile * pixels; /* rows of the largest tile */
    T *cols = a->ws + part * a->part_size, *dcols = cols + most * K;
    T *dW = part == 0 ? a->dW : dcols + most * K; /* range 0 writes dW itself */
    double *db = a->db_parts + part * o;
    for (int64_t t = 0; t < tiles; t++) {
        int64_t t0 = n0 + (n1 - n0) * t / tiles, t1 = n0 + (n1 - n0) * (t + 1) / tiles;
        int64_t rows = (t1 - t0) * pixels, at = t0 * pixels * o;
        const T *c = FN(conv_columns)(a, t0, t1, cols);
        const T *d = a->dy + at;
        if (a->act != FASTNN_IDENTITY) {
            FN(activation_backward)(d, a->y + at, a->preact ? a->preact + at : NULL, a->dz + at,
                                    NULL, rows, o, a->act);
            d = a->dz + at;
        }
        FN(add_columns)(db, d, rows, o);
        FN(gemm)(1, 0, K, o, rows, c, K, d, o, t == 0 ? 0 : 1, dW, o);
        if (!a->dx) continue;
        if (a->pointwise) { /* dx is the column gradient */
            FN(gemm)(0, 1, rows, K, o, d, o, a->W, o, 0, a->dx + t0 * image, K);
            continue;
        }
        FN(gemm)(0, 1, rows, K, o, d, o, a->W, o, 0, dcols, K);
        struct FN(window_args) w = {.g = g, .in = dcols, .out = a->dx + t0 * image};
        FN(col2im_range)(&w, 0, t1 - t0, 0);
    }
}

int FN(conv2d_backward)(const T *dy, const T *x, const T *W, const T *y, const T *preact, T *dz,
                        T *dx, T *dW, T *db, T *ws, const struct fastnn_window *g, int64_t o,
                        int64_t tile, int64_t parts, int activation) {
    int64_t K = g->kh * g->kw * g->c;
    struct FN(conv_args) a = {.g = g, .x = x, .W = W, .dy = dy, .y = y, .preact = preact,
                              .dz = dz, .dx = dx, .dW = dW, .ws = ws, .o = o, .tile = tile > 0 ? tile : 1,
                              .act = activation};
    a.pointwise = g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
    a.part_size = FN(conv_part_size)(g, o, a.tile, 1);
    int used = FN(conv_parts)(g, o, parts);
    a.db_parts = workspace(used, o);
    if (!a.db_parts) return -1;
    if (g->n == 0)
        for (int64_t e = 0; e < K * o; e++) dW[e] = 0;
    parallel_blas_run(FN(conv_backward_range), &a, g->n, used);
    /* the ranges' partials added in range order (the same bits for a given
     * thread count) */
    for (int p = 1; p < used; p++) {
        const T *partial = ws + p * a.part_size + 2 * a.tile * g->oh * g->ow * K;
        for (int64_t e = 0; e < K * o; e++) dW[e] += partial[e];
    }
    add_parts(a.db_parts, used, o);
    for (int64_t j = 0; j < o; j++) db[j] = (T)a.db_parts[j];
    free(a.db_parts);
    return 0;
}

/* ------------------------------------------------------- direct convolution
 * conv2d_direct_forward and conv2d_direct_backward: the convolution without
 * im2col or BLAS, for layers of few channels (the caller chooses them by
 * shape: LeNet's first layer, 1 -> 6 channels under a 5 x 5 kernel), where
 * im2col writes kh*kw copies of the image and a GEMM of N = o columns runs far
 * below BLAS's rate. Each range of images copies one image at a time into a
 * zero-padded buffer (high = ih + 2 ph, wide = iw + 2 pw, c), then computes a
 * block of DIRECT_PIXELS output pixels x DIRECT_OUTS channels of an output row
 * in registers: every tap (ka, kb, ch) of the filter is a vector of the block's
 * input cells (at `step` = sw * c elements apart, 1 for one channel at stride 1,
 * a constant then) times a broadcast weight. Wp (K, opad) is W (K, o), K = kh *
 * kw * c, with its columns padded with zeros to opad, a multiple of
 * DIRECT_OUTS, so that a block never reads past it. Products are summed with
 * FMA where the target has it (fp-contract), in tap order. A block is one
 * 32-byte vector of pixels per channel (8 floats, 4 doubles), 8 channels: 8
 * accumulators. Measured on one Zen 4 core (CPU time, 64 images 28 x 28 x 1,
 * 5 x 5 kernel, 6 channels, float32): 225 us with AVX-512, 238 with AVX2,
 * against 283 and 523 with blocks of 16 floats. */
#define DIRECT_PIXELS ((int)(32 / sizeof(T)))
#define DIRECT_OUTS 8
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")

struct FN(direct_args) {
    const struct fastnn_window *g;
    const T *x, *Wp, *bp, *dy, *y, *preact; /* bp (opad,): b, 0 past o (or no b) */
    T *out, *preact_out, *dz, *dx;
    T *bufs;         /* per range: the padded image; backward: and the padded dx, dt */
    double *sums;    /* backward, per range: dW (K, o) then db (o,) */
    int64_t o, opad, buf_size;
    int act;
};

/* elements of the padded image, with room after it for the reads of a block's
 * pixels past the row's end (never stored) */
INLINE int64_t FN(direct_pad_size)(const struct fastnn_window *g) {
    return ((g->ih + 2 * g->ph) * (g->iw + 2 * g->pw) + DIRECT_PIXELS * g->sw + g->kw) * g->c;
}

/* the interior of pad (its border stays zero) = image x (ih, iw, c) */
INLINE void FN(direct_fill)(const struct fastnn_window *g, const T *x, T *pad) {
    int64_t wide = g->iw + 2 * g->pw;
    for (int64_t y = 0; y < g->ih; y++) {
        T *dst = pad + ((y + g->ph) * wide + g->pw) * g->c;
        const T *src = x + y * g->iw * g->c;
        for (int64_t e = 0; e < g->iw * g->c; e++) dst[e] = src[e];
    }
}

/* y (oh, ow, o) of one image = conv(pad, Wp), before bias and activation; the
 * sizes as scalars, the function apart (noinline): inlined into the range's
 * loop, or reading them from the structs, GCC keeps acc on the stack, 8 times
 * slower */
INLINE void FN(direct_image_body)(const T *pad, const T *Wp, const T *bp, T *y, int64_t oh, int64_t ow,
                                  int64_t kh, int64_t kw, int64_t c, int64_t sh, int64_t sw,
                                  int64_t wc, int64_t o, int64_t opad, int64_t step) {
    for (int64_t i = 0; i < oh; i++) {
        for (int64_t j0 = 0; j0 < ow; j0 += DIRECT_PIXELS) {
            int64_t jb = ow - j0 < DIRECT_PIXELS ? ow - j0 : DIRECT_PIXELS;
            for (int64_t o0 = 0; o0 < o; o0 += DIRECT_OUTS) {
                T acc[DIRECT_OUTS][DIRECT_PIXELS];
                for (int q = 0; q < DIRECT_OUTS; q++)
                    for (int p = 0; p < DIRECT_PIXELS; p++) acc[q][p] = 0;
                for (int64_t ka = 0; ka < kh; ka++)
                    for (int64_t kb = 0; kb < kw; kb++)
                        for (int64_t ch = 0; ch < c; ch++) {
                            const T *src = pad + (i * sh + ka) * wc + (j0 * sw + kb) * c + ch;
                            const T *w = Wp + ((ka * kw + kb) * c + ch) * opad + o0;
                            T xv[DIRECT_PIXELS];
                            for (int p = 0; p < DIRECT_PIXELS; p++) xv[p] = src[p * step];
#pragma GCC unroll 8
                            for (int q = 0; q < DIRECT_OUTS; q++) {
                                T wq = w[q];
#pragma omp simd
                                for (int p = 0; p < DIRECT_PIXELS; p++) acc[q][p] += xv[p] * wq;
                            }
                        }
                int64_t ob = o - o0 < DIRECT_OUTS ? o - o0 : DIRECT_OUTS;
                T *dst = y + (i * ow + j0) * o + o0;
                for (int64_t p = 0; p < jb; p++)
                    for (int64_t q = 0; q < ob; q++) dst[p * o + q] = acc[q][p] + bp[o0 + q];
            }
        }
    }
}

/* the body for one channel at stride 1 (consecutive pixels: vector loads), and
 * for any step */
__attribute__((noinline)) static void FN(direct_image_unit)(
    const T *pad, const T *Wp, const T *bp, T *y, int64_t oh, int64_t ow, int64_t kh, int64_t kw,
    int64_t c, int64_t sh, int64_t sw, int64_t wc, int64_t o, int64_t opad) {
    FN(direct_image_body)(pad, Wp, bp, y, oh, ow, kh, kw, c, sh, sw, wc, o, opad, 1);
}
__attribute__((noinline)) static void FN(direct_image_strided)(
    const T *pad, const T *Wp, const T *bp, T *y, int64_t oh, int64_t ow, int64_t kh, int64_t kw,
    int64_t c, int64_t sh, int64_t sw, int64_t wc, int64_t o, int64_t opad, int64_t step) {
    FN(direct_image_body)(pad, Wp, bp, y, oh, ow, kh, kw, c, sh, sw, wc, o, opad, step);
}

/* images [n0, n1): y = activation(conv + b), the bias added as the block is
 * stored (measured with one thread, 64 images, 6 channels: 490 us against 700
 * with it added by the epilogue's loop over rows of 6) */
HOT static void FN(direct_forward_range)(void *args, int64_t n0, int64_t n1, int part) {
    const struct FN(direct_args) *a = args;
    const struct fastnn_window *g = a->g;
    int64_t image = g->ih * g->iw * g->c, pixels = g->oh * g->ow, step = g->sw * g->c;
    T *pad = a->bufs + part * a->buf_size;
    for (int64_t n = n0; n < n1; n++) {
        T *y = a->out + n * pixels * a->o;
        FN(direct_fill)(g, a->x + n * image, pad);
        int64_t wc = (g->iw + 2 * g->pw) * g->c;
        if (step == 1)
            FN(direct_image_unit)(pad, a->Wp, a->bp, y, g->oh, g->ow, g->kh, g->kw, g->c, g->sh, g->sw, wc,
                                  a->o, a->opad);
        else
            FN(direct_image_strided)(pad, a->Wp, a->bp, y, g->oh, g->ow, g->kh, g->kw, g->c, g->sh, g->sw,
                                     wc, a->o, a->opad, step);
        FN(bias_activation_forward)(y, NULL, a->preact_out ? a->preact_out + n * pixels * a->o : NULL,
                                    y, pixels, a->o, a->act);
    }
}

/* One image's gradients from dt (opad, oh, owp), its d (oh, ow, o) transposed,
 * zero past o channels and ow pixels (owp: ow rounded up to DIRECT_PIXELS):
 * dW (K, o) += the products of the taps' cells and dt, summed over the image
 * in a block of registers per tap and block of channels (the image's sum
 * then added in double); with dpad, dpad (the padded dx) += dt W^T added on
 * the cells the taps read. Scalars and noinline wrappers as the forward's. */
INLINE void FN(direct_image_backward_body)(const T *pad, const T *Wp, const T *dt, double *dW,
                                           T *dpad, int64_t oh, int64_t owp, int64_t kh,
                                           int64_t kw, int64_t c, int64_t sh, int64_t sw,
                                           int64_t wc, int64_t o, int64_t opad, int64_t step) {
    int64_t plane = oh * owp; /* one channel of dt */
    for (int64_t o0 = 0; o0 < o; o0 += DIRECT_OUTS) {
        int64_t ob = o - o0 < DIRECT_OUTS ? o - o0 : DIRECT_OUTS;
        const T *dto = dt + o0 * plane;
        for (int64_t ka = 0; ka < kh; ka++)
            for (int64_t kb = 0; kb < kw; kb++)
                for (int64_t ch = 0; ch < c; ch++) {
                    int64_t tap = (ka * kw + kb) * c + ch;
                    T acc[DIRECT_OUTS][DIRECT_PIXELS] = {{0}};
                    for (int64_t i = 0; i < oh; i++)
                        for (int64_t j0 = 0; j0 < owp; j0 += DIRECT_PIXELS) {
                            const T *src = pad + (i * sh + ka) * wc + (j0 * sw + kb) * c + ch;
                            const T *dq = dto + i * owp + j0;
                            T xv[DIRECT_PIXELS];
                            for (int p = 0; p < DIRECT_PIXELS; p++) xv[p] = src[p * step];
#pragma GCC unroll 8
                            for (int q = 0; q < DIRECT_OUTS; q++) {
#pragma omp simd
                                for (int p = 0; p < DIRECT_PIXELS; p++)
                                    acc[q][p] += xv[p] * dq[q * plane + p];
                            }
                        }
                    for (int64_t q = 0; q < ob; q++) {
                        T sum = 0;
                        for (int p = 0; p < DIRECT_PIXELS; p++) sum += acc[q][p];
                        dW[tap * o + o0 + q] += sum;
                    }
                    if (!dpad) continue;
                    const T *w = Wp + tap * opad + o0;
                    T wq[DIRECT_OUTS];
                    for (int q = 0; q < DIRECT_OUTS; q++) wq[q] = w[q];
                    for (int64_t i = 0; i < oh; i++)
                        for (int64_t j0 = 0; j0 < owp; j0 += DIRECT_PIXELS) {
                            const T *dq = dto + i * owp + j0;
                            T sum[DIRECT_PIXELS] = {0};
#pragma GCC unroll 8
                            for (int q = 0; q < DIRECT_OUTS; q++) {
#pragma omp simd
                                for (int p = 0; p < DIRECT_PIXELS; p++)
                                    sum[p] += dq[q * plane + p] * wq[q];
                            }
                            T *dst = dpad + (i * sh + ka) * wc + (j0 * sw + kb) * c + ch;
                            for (int p = 0; p < DIRECT_PIXELS; p++) dst[p * step] += sum[p];
                        }
                }
    }
}

__attribute__((noinline)) static void FN(direct_image_backward_unit)(
    const T *pad, const T *Wp, const T *dt, double *dW, T *dpad, int64_t oh, int64_t owp,
    int64_t kh, int64_t kw, int64_t c, int64_t sh, int64_t sw, int64_t wc, int64_t o,
    int64_t opad) {
    FN(direct_image_backward_body)(pad, Wp, dt, dW, dpad, oh, owp, kh, kw, c, sh, sw, wc, o, opad,
                                   1);
}
__attribute__((noinline)) static void FN(direct_image_backward_strided)(
    const T *pad, const T *Wp, const T *dt, double *dW, T *dpad, int64_t oh, int64_t owp,
    int64_t kh, int64_t kw, int64_t c, int64_t sh, int64_t sw, int64_t wc, int64_t o,
    int64_t opad, int64_t step) {
    FN(direct_image_backward_body)(pad, Wp, dt, dW, dpad, oh, owp, kh, kw, c, sh, sw, wc, o, opad,
                                   step);
}

/* the rows of output pixels past ow, up to owp, read by the backward's blocks */
INLINE int64_t FN(direct_owp)(const struct fastnn_window *g) {
    return (g->ow + DIRECT_PIXELS - 1) / DIRECT_PIXELS * DIRECT_PIXELS;
}

/* images [n0, n1): dz = dy * activation' (dz NULL: the identity, d = dy), this
 * range's db and dW sums (double) += d's column sums and the image's weight
 * gradient, dx = the interior of the padded dx */
HOT static void FN(direct_backward_range)(void *args, int64_t n0, int64_t n1, int part) {
    const struct FN(direct_args) *a = args;
    const struct fastnn_window *g = a->g;
    int64_t image = g->ih * g->iw * g->c, pixels = g->oh * g->ow, o = a->o, opad = a->opad;
    int64_t K = g->kh * g->kw * g->c, step = g->sw * g->c, pad_size = FN(direct_pad_size)(g);
    int64_t wide = g->iw + 2 * g->pw, owp = FN(direct_owp)(g), plane = g->oh * owp;
    T *pad = a->bufs + part * a->buf_size, *dpad = pad + pad_size, *dt = dpad + pad_size;
    double *dW = a->sums + part * (K * o + o), *db = dW + K * o;
    for (int64_t n = n0; n < n1; n++) {
        int64_t at = n * pixels * o;
        const T *d = a->dy + at;
        if (a->act != FASTNN_IDENTITY) {
            FN(activation_backward)(d, a->y + at, a->preact ? a->preact + at : NULL, a->dz + at,
                                    NULL, pixels, o, a->act);
            d = a->dz + at;
        }
        FN(direct_fill)(g, a->x + n * image, pad);
        /* dt: channel by channel (contiguous stores), each channel's sum into db */
        for (int64_t e = o * plane; e < opad * plane; e++) dt[e] = 0;
        for (int64_t q = 0; q < o; q++) {
            T *row = dt + q * plane;
            for (int64_t i = 0; i < g->oh; i++) {
                const T *src = d + i * g->ow * o + q;
                for (int64_t j = 0; j < g->ow; j++) row[i * owp + j] = src[j * o];
                for (int64_t j = g->ow; j < owp; j++) row[i * owp + j] = 0;
            }
            double lanes[DIRECT_PIXELS] = {0}; /* plane is a multiple of DIRECT_PIXELS */
            for (int64_t e = 0; e < plane; e += DIRECT_PIXELS)
                for (int p = 0; p < DIRECT_PIXELS; p++) lanes[p] += row[e + p];
            for (int p = 0; p < DIRECT_PIXELS; p++) db[q] += lanes[p];
        }
        T *dp = NULL;
        if (a->dx) {
            dp = dpad;
            for (int64_t e = 0; e < pad_size; e++) dp[e] = 0;
        }
        int64_t wc = wide * g->c;
        if (step == 1)
            FN(direct_image_backward_unit)(pad, a->Wp, dt, dW, dp, g->oh, owp, g->kh, g->kw, g->c,
                                           g->sh, g->sw, wc, o, opad);
        else
            FN(direct_image_backward_strided)(pad, a->Wp, dt, dW, dp, g->oh, owp, g->kh, g->kw,
                                              g->c, g->sh, g->sw, wc, o, opad, step);
        if (!dp) continue;
        T *dx = a->dx + n * image;
        for (int64_t y = 0; y < g->ih; y++) {
            const T *src = dp + ((y + g->ph) * wide + g->pw) * g->c;
            for (int64_t e = 0; e < g->iw * g->c; e++) dx[y * g->iw * g->c + e] = src[e];
        }
    }
}

/* W (K, o) into Wp (K, opad), the columns past o zero */
INLINE void FN(direct_weights)(const T *W, T *Wp, int64_t K, int64_t o, int64_t opad) {
    for (int64_t t = 0; t < K; t++)
        for (int64_t q = 0; q < opad; q++) Wp[t * opad + q] = q < o ? W[t * o + q] : 0;
}

int FN(conv2d_direct_forward)(const T *x, const T *W, const T *b, T *preact, T *y,
                              const struct fastnn_window *g, int64_t o, int activation) {
    int64_t K = g->kh * g->kw * g->c, opad = (o + DIRECT_OUTS - 1) / DIRECT_OUTS * DIRECT_OUTS;
    int parts = FN(window_parts)(g->n * g->oh * g->ow * K * o, g->n);
    int64_t buf_size = FN(direct_pad_size)(g);
    T *Wp = aligned_malloc((size_t)(K * opad + opad + parts * buf_size) * sizeof(T));
    if (!Wp) return -1;
    T *bp = Wp + K * opad;
    for (int64_t e = K * opad; e < K * opad + opad + parts * buf_size; e++)
        Wp[e] = 0; /* bp past o, the pads' borders */
    FN(direct_weights)(W, Wp, K, o, opad);
    for (int64_t q = 0; q < o && b; q++) bp[q] = b[q];
    struct FN(direct_args) a = {.g = g, .x = x, .Wp = Wp, .bp = bp, .out = y, .preact_out = preact,
                                .bufs = bp + opad, .o = o, .opad = opad, .buf_size = buf_size,
                                .act = activation};
    parallel_run(FN(direct_forward_range), &a, g->n, parts);
    free(Wp);
    return 0;
}

int FN(conv2d_direct_backward)(const T *dy, const T *x, const T *W, const T *y, const T *preact,
                               T *dz, T *dx, T *dW, T *db, const struct fastnn_window *g,
                               int64_t o, int activation) {
    int64_t K = g->kh * g->kw * g->c, opad = (o + DIRECT_OUTS - 1) / DIRECT_OUTS * DIRECT_OUTS;
    int parts = FN(window_parts)(g->n * g->oh * g->ow * K * o, g->n);
    int64_t pad_size = FN(direct_pad_size)(g);
    int64_t buf_size = 2 * pad_size + opad * g->oh * FN(direct_owp)(g); /* pad, dpad, dt */
    T *Wp = aligned_malloc((size_t)(K * opad + parts * buf_size) * sizeof(T));
    double *sums = workspace(parts, K * o + o);
    if (!Wp || !sums) {
        free(Wp);
        free(sums);
        return -1;
    }
    for (int64_t e = K * opad; e < K * opad + parts * buf_size; e++) Wp[e] = 0; /* pads' borders */
    FN(direct_weights)(W, Wp, K, o, opad);
    struct FN(direct_args) a = {.g = g, .x = x, .Wp = Wp, .dy = dy, .y = y, .preact = preact,
                                .dz = dz, .dx = dx, .bufs = Wp + K * opad, .sums = sums, .o = o,
                                .opad = opad, .buf_size = buf_size, .act = activation};
    parallel_run(FN(direct_backward_range), &a, g->n, parts);
    add_parts(sums, parts, K * o + o); /* in range order */
    for (int64_t e = 0; e < K * o; e++) dW[e] = (T)sums[e];
    for (int64_t q = 0; q < o; q++) db[q] = (T)sums[K * o + q];
    free(Wp);
    free(sums);
    return 0;
}
#pragma GCC pop_options
#undef DIRECT_PIXELS
#undef DIRECT_OUTS
