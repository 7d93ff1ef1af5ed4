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
HOT static void FN(im2col_range)(void *args, int64_t r0, int64_t r1, int part) {
    const struct FN(window_args) *a = args;
    const struct fastnn_window *g = a->g;
    int64_t c = g->c, kwc = g->kw * c, K = g->kh * kwc;
    (void)part;
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
 * starts the search, so padding never wins; range: images */
HOT static void FN(maxpool_range)(void *args, int64_t n0, int64_t n1, int part) {
    const struct FN(window_args) *a = args;
    const struct fastnn_window *g = a->g;
    int64_t c = g->c;
    (void)part;
    for (int64_t n = n0; n < n1; n++) {
        const T *x = a->in + n * g->ih * g->iw * c;
        for (int64_t i = 0; i < g->oh; i++) {
            int64_t y0, y1;
            inside(i, g->sh, g->ph, g->kh, g->ih, &y0, &y1);
            for (int64_t j = 0; j < g->ow; j++) {
                int64_t s0, s1;
                inside(j, g->sw, g->pw, g->kw, g->iw, &s0, &s1);
                int64_t o = ((n * g->oh + i) * g->ow + j) * c;
                T *best = a->out + o;
                int64_t *arg = a->argmax + o;
                const T *first = x + (y0 * g->iw + s0) * c;
                for (int64_t ch = 0; ch < c; ch++) {
                    best[ch] = first[ch];
                    arg[ch] = y0 * g->iw + s0;
                }
                for (int64_t y = y0; y < y1; y++) {
                    for (int64_t s = s0; s < s1; s++) {
                        const T *v = x + (y * g->iw + s) * c;
                        int64_t at = y * g->iw + s;
#pragma omp simd
                        for (int64_t ch = 0; ch < c; ch++) {
                            int wins = v[ch] > best[ch] || (v[ch] != v[ch] && best[ch] == best[ch]);
                            best[ch] = wins ? v[ch] : best[ch];
                            arg[ch] = wins ? at : arg[ch];
                        }
                    }
                }
            }
        }
    }
}

/* dx[n] = 0 but at each argmax index, the sum of the dy of the windows it won,
 * added in the order of the outputs; range: images */
HOT static void FN(maxpool_backward_range)(void *args, int64_t n0, int64_t n1, int part) {
    const struct FN(window_args) *a = args;
    const struct fastnn_window *g = a->g;
    int64_t c = g->c, image = g->ih * g->iw * c, outputs = g->oh * g->ow * c;
    (void)part;
    for (int64_t n = n0; n < n1; n++) {
        T *dx = a->out + n * image;
        const T *dy = a->in + n * outputs;
        memset(dx, 0, (size_t)image * sizeof(T));
        for (int64_t e = 0; e < outputs; e++) {
            int64_t k = a->argmax64 ? a->argmax64[n * outputs + e] : a->argmax32[n * outputs + e];
            dx[k * c + e % c] += dy[e];
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
