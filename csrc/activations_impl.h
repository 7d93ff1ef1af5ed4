/* Activation kernels for one float type T with suffix S (instantiated by
 * activations.c). Elementwise activations work on flat segments; softmax works
 * on rows. Formulas follow reference.py term by term. */

/* Contraction to fused multiply-adds is allowed only in the functions marked
 * FMA_SEG: the build turns it off, as the other kernels follow the reference's
 * roundings. The functions here evaluate their own exp, expm1, log1p and erfc
 * polynomials (not the reference's formulas anyway), which FMAs make faster and
 * no less accurate. */
#define FMA_SEG __attribute__((noinline, optimize("fp-contract=fast")))

/* y = x Phi(x) and dz = dy (Phi(x) + x phi(x)), Phi from erfc (no
 * cancellation for x < 0), in T (vmath.h's gelu_f32, gelu_grad_f32 and their
 * f64 twins): the float ones are accurate to about 5e-7 relative (the
 * derivative relative to the size of its two terms, which cancel near x =
 * -0.75) */
HOT FMA_SEG static void FN(gelu_forward_seg)(const T *x, T *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = FN(gelu)(x[i]);
}

HOT FMA_SEG static void FN(gelu_backward_seg)(const T *dy, const T *x, T *dz, int64_t n) {
    for (int64_t i = 0; i < n; i++) dz[i] = dy[i] * FN(gelu_grad)(x[i]);
}

/* y[i] = act(x[i]) for n elements of the activations built on exp. They
 * compute in double also for float arrays: the float result is then the
 * correctly rounded one, like the reference's, which matters because
 * derivatives written in y (1 - y^2, y (1 - y)) magnify any difference in its
 * last bits. FMAs leave those float results as they were (bit-identical on
 * 3.1M inputs; float64 ones move by at most 6.4e-16 relative) and make the
 * loops 1.3-2x faster (float32 in cache, 1 thread: tanh 3.3-3.6 -> 2.0-2.4,
 * softplus 8.3-8.6 -> 4.3-4.6 ns per element). */
HOT FMA_SEG static void FN(exp_act_forward_seg)(const T *x, T *y, int64_t n, int act) {
    switch (act) {
    case FASTNN_LOGISTIC:
        for (int64_t i = 0; i < n; i++) {
            double v = x[i], e = exp_f64(-fabs(v)); /* e^-|x| <= 1: no overflow */
            y[i] = (T)((v >= 0 ? 1.0 : e) / (1.0 + e));
        }
        break;
    case FASTNN_TANH:
        for (int64_t i = 0; i < n; i++) {
            /* tanh|x| = -e / (2 + e) with e = e^(-2|x|) - 1, accurate near 0 */
            double v = x[i], e = expm1_neg_f64(-2.0 * fabs(v));
            y[i] = (T)copysign(-e / (2.0 + e), v);
        }
        break;
    case FASTNN_ELU:
        for (int64_t i = 0; i < n; i++) {
            double v = x[i], neg = ELU_ALPHA * expm1_neg_f64(v > 0 ? 0.0 : v);
            y[i] = (T)(v > 0 ? v : neg);
        }
        break;
    case FASTNN_SELU:
        for (int64_t i = 0; i < n; i++) {
            double v = x[i], neg = SELU_ALPHA * expm1_neg_f64(v > 0 ? 0.0 : v);
            y[i] = (T)(SELU_SCALE * (v > 0 ? v : neg));
        }
        break;
    case FASTNN_SOFTPLUS:
        for (int64_t i = 0; i < n; i++) {
            double v = x[i], soft = (v > 0 ? v : 0.0) + log1p_unit_f64(exp_f64(-fabs(v)));
            y[i] = (T)(v > SOFTPLUS_THRESHOLD ? v : soft);
        }
        break;
    default:
        break;
    }
}

/* y[i] = act(x[i]) for n elements (not softmax); y may be x */
INLINE void FN(act_forward_seg)(const T *x, T *y, int64_t n, int act) {
    switch (act) {
    case FASTNN_IDENTITY:
        if (y != x) for (int64_t i = 0; i < n; i++) y[i] = x[i];
        break;
    case FASTNN_RELU:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] < 0 ? (T)0 : x[i]; /* NaN stays NaN */
        break;
    case FASTNN_LEAKY_RELU:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0 ? x[i] : (T)LEAKY_RELU_SLOPE * x[i];
        break;
    case FASTNN_GELU:
        FN(gelu_forward_seg)(x, y, n);
        break;
    case FASTNN_SOFTMAX:
        break;
    default:
        FN(exp_act_forward_seg)(x, y, n, act);
        break;
    }
}

/* y (cols,) = softmax(x (cols,)); y may be x. The sum is accumulated in double:
 * the backward's dy - sum(dy y) cancels, so y must be accurate. */
INLINE void FN(softmax_row)(const T *x, T *y, int64_t cols) {
    T m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < cols; j++) m = x[j] > m ? x[j] : m;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < cols; j++) {
        y[j] = FN(exp_nonpos)(x[j] - m);
        s += y[j];
    }
    T st = (T)s;
    for (int64_t j = 0; j < cols; j++) y[j] /= st;
}

/* dz[i] = dy[i] * act'(x[i]) in terms of y for n elements (not softmax), in the
 * reference's order of operations; in double where the forward is (see above) */
INLINE void FN(act_backward_seg)(const T *dy, const T *y, const T *x, T *dz, int64_t n,
                                        int act) {
    switch (act) {
    case FASTNN_IDENTITY:
        if (dz != dy) for (int64_t i = 0; i < n; i++) dz[i] = dy[i];
        break;
    case FASTNN_LOGISTIC:
        for (int64_t i = 0; i < n; i++) dz[i] = (T)((double)dy[i] * y[i] * (1.0 - y[i]));
        break;
    case FASTNN_TANH:
        for (int64_t i = 0; i < n; i++) dz[i] = (T)(dy[i] * (1.0 - (double)y[i] * y[i]));
        break;
    case FASTNN_RELU:
        for (int64_t i = 0; i < n; i++) dz[i] = y[i] > 0 ? dy[i] : (T)0;
        break;
    case FASTNN_LEAKY_RELU:
        for (int64_t i = 0; i < n; i++) dz[i] = y[i] > 0 ? dy[i] : (T)LEAKY_RELU_SLOPE * dy[i];
        break;
    case FASTNN_ELU:
        /* x <= 0: d/dx alpha (e^x - 1) = y + alpha */
        for (int64_t i = 0; i < n; i++)
            dz[i] = y[i] > 0 ? dy[i] : (T)(dy[i] * ((double)y[i] + ELU_ALPHA));
        break;
    case FASTNN_SELU:
        for (int64_t i = 0; i < n; i++)
            dz[i] = (T)(y[i] > 0 ? SELU_SCALE * dy[i]
                                 : dy[i] * ((double)y[i] + SELU_SCALE * SELU_ALPHA));
        break;
    case FASTNN_GELU:
        FN(gelu_backward_seg)(dy, x, dz, n);
        break;
    case FASTNN_SOFTPLUS:
        /* sigmoid(x) = 1 - e^-y, in double; 1 above the threshold, where y = x */
        for (int64_t i = 0; i < n; i++)
            dz[i] = y[i] > (T)SOFTPLUS_THRESHOLD ? dy[i]
                                                 : (T)(dy[i] * -expm1_neg_f64(-(double)y[i]));
        break;
    default:
        break;
    }
}

/* dz (cols,) = y * (dy - sum(dy * y)) for one softmax row, the sum in double */
INLINE void FN(softmax_backward_row)(const T *dy, const T *y, T *dz, int64_t cols) {
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < cols; j++) s += (double)(dy[j] * y[j]);
    T st = (T)s;
    for (int64_t j = 0; j < cols; j++) dz[j] = y[j] * (dy[j] - st);
}

/* ---------------------------------------------------------------- forward */
struct FN(forward_args) {
    const T *z, *b;
    T *preact, *y;
    int64_t cols;
    int act;
};

HOT static void FN(forward_range)(void *args, int64_t r0, int64_t r1, int part) {
    const struct FN(forward_args) *a = args;
    int64_t cols = a->cols;
    (void)part;
    if (a->b == NULL && a->preact == NULL && a->act != FASTNN_SOFTMAX) {
        FN(act_forward_seg)(a->z + r0 * cols, a->y + r0 * cols, (r1 - r0) * cols, a->act);
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        const T *z = a->z + r * cols;
        T *y = a->y + r * cols, *pre = a->preact ? a->preact + r * cols : NULL;
        if (a->b) {
            const T *b = a->b;
            for (int64_t j = 0; j < cols; j++) y[j] = z[j] + b[j];
            z = y;
        }
        if (pre)
            for (int64_t j = 0; j < cols; j++) pre[j] = z[j];
        if (a->act == FASTNN_SOFTMAX)
            FN(softmax_row)(z, y, cols);
        else
            FN(act_forward_seg)(z, y, cols, a->act);
    }
}

/* Rows of `cols` elements from which an activation's forward or backward pass
 * over them runs in parallel: piecewise-linear ones are memory-bound and need
 * the larger threshold. Between the GEMMs of a training step a parallel region
 * costs more than usual (BLAS threads hold the cores): in one epoch of a
 * 784-512-256-10 relu network (batch 256, float32), the relu backward calls with
 * their bias gradients took 17-31 ms in all when the 256 x 512 ones ran in
 * parallel, 10.5-13 ms serial; hot and alone, 256 x 512 takes 47 us in parallel,
 * 42 us serial. */
INLINE int64_t FN(parallel_rows)(int activation, int64_t cols) {
    int cheap = activation == FASTNN_IDENTITY || activation == FASTNN_RELU
                || activation == FASTNN_LEAKY_RELU;
    return (cheap ? MIN_PARALLEL_CHEAP : MIN_PARALLEL_MATH) / cols + 1;
}

void FN(bias_activation_forward)(const T *z, const T *b, T *preact, T *y, int64_t rows,
                                 int64_t cols, int activation) {
    if (rows <= 0 || cols <= 0) return;
    struct FN(forward_args) a = {.z = z, .b = b, .preact = preact, .y = y, .cols = cols,
                                 .act = activation};
    parallel_for(FN(forward_range), &a, rows, FN(parallel_rows)(activation, cols));
}

/* --------------------------------------------------------------- backward */
struct FN(backward_args) {
    const T *dy, *y, *x; /* x: gelu only */
    T *dz;
    double *ws;          /* db accumulators, parts * cols, or NULL */
    int64_t cols;
    int act;
};

/* acc (cols,) += the column sums of a (rows, cols), four rows at a time summed
 * in T first: one row at a time spends most of the time converting and adding
 * doubles (as in batchnorm_impl.h). Measured on 256 x 512 float32, hot: column
 * sums 18-20 -> 11-12 us, relu backward with its bias gradient 40-48 -> 32-35 us. */
INLINE void FN(add_rows)(double *acc, const T *a, int64_t rows, int64_t cols) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const T *a0 = a + r * cols, *a1 = a0 + cols, *a2 = a1 + cols, *a3 = a2 + cols;
        for (int64_t j = 0; j < cols; j++) acc[j] += (double)((a0[j] + a1[j]) + (a2[j] + a3[j]));
    }
    for (; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) acc[j] += a[r * cols + j];
}

/* rows per block: the block's dz is summed into db while it is still in cache */
INLINE int64_t FN(block_rows)(int64_t cols) {
    return cols >= 2048 ? 1 : 2048 / cols;
}

/* dz for rows [r0, r1), and their column sums added into this part's db slice */
HOT static void FN(backward_rows)(void *args, int64_t r0, int64_t r1, int part) {
    const struct FN(backward_args) *a = args;
    int64_t cols = a->cols, step = FN(block_rows)(cols);
    double *acc = a->ws ? a->ws + part * cols : NULL;
    for (int64_t b0 = r0; b0 < r1; b0 += step) {
        int64_t b1 = b0 + step < r1 ? b0 + step : r1, off = b0 * cols;
        if (a->act == FASTNN_SOFTMAX) {
            for (int64_t r = b0; r < b1; r++, off += cols)
                FN(softmax_backward_row)(a->dy + off, a->y + off, a->dz + off, cols);
        } else {
            FN(act_backward_seg)(a->dy + off, a->y + off, a->x ? a->x + off : NULL, a->dz + off,
                                 (b1 - b0) * cols, a->act);
        }
        if (acc) FN(add_rows)(acc, a->dz + b0 * cols, b1 - b0, cols);
    }
}

int FN(activation_backward)(const T *dy, const T *y, const T *x, T *dz, T *db, int64_t rows,
                            int64_t cols, int activation) {
    if (cols <= 0) return 0; /* rows may be 0: db is then 0 */
    int parts = parallel_parts(rows, FN(parallel_rows)(activation, cols));
    struct FN(backward_args) a = {.dy = dy, .y = y, .x = x, .dz = dz, .cols = cols,
                                  .act = activation};
    if (db) {
        a.ws = workspace(parts, cols);
        if (a.ws == NULL) return -1;
    }
    parallel_run(FN(backward_rows), &a, rows, parts);
    if (db) {
        add_parts(a.ws, parts, cols);
        for (int64_t j = 0; j < cols; j++) db[j] = (T)a.ws[j];
        free(a.ws);
    }
    return 0;
}

struct FN(sums_args) {
    const T *a;
    double *ws;
    int64_t cols;
};

HOT static void FN(sums_rows)(void *args, int64_t r0, int64_t r1, int part) {
    const struct FN(sums_args) *s = args;
    FN(add_rows)(s->ws + part * s->cols, s->a + r0 * s->cols, r1 - r0, s->cols);
}

int FN(column_sums)(const T *a, T *out, int64_t rows, int64_t cols) {
    if (cols <= 0) return 0;
    int parts = parallel_parts(rows, MIN_PARALLEL_CHEAP / cols + 1);
    struct FN(sums_args) s = {.a = a, .ws = workspace(parts, cols), .cols = cols};
    if (s.ws == NULL) return -1;
    parallel_run(FN(sums_rows), &s, rows, parts);
    add_parts(s.ws, parts, cols);
    for (int64_t j = 0; j < cols; j++) out[j] = (T)s.ws[j];
    free(s.ws);
    return 0;
}

/* ------------------------------------------------------------ dense layer */
/* A dense layer's GEMMs and the passes around them on fastnn's threads alone:
 * each thread multiplies its slice of rows on one BLAS thread and runs the
 * slice's epilogue (or prologue) right after, while it is in cache. With the
 * GEMMs on BLAS's threads and the passes on fastnn's, two pools took turns on
 * the same cores: after a threaded GEMM OpenBLAS's idle workers spin for 0.1 s,
 * and fastnn's worker, woken for the pass that followed, waited for a core. */

/* Multiply-adds from which a dense GEMM is split between threads that spin
 * (parallel_run_small; a 100 -> 7 layer at batch 200 has 140000), from which it
 * wakes sleeping ones (OpenBLAS threads a GEMM from 65536 x 4, its
 * GEMM_MULTITHREAD_THRESHOLD), and the fewest rows or columns of a slice (a few
 * of the micro-kernel's). */
#define DENSE_MIN_SPLIT 32768
#define DENSE_MIN_PARALLEL 262144
#define DENSE_MIN_SLICE 16

INLINE double FN(dense_madds)(int64_t n, int64_t k, int64_t m) {
    return (double)n * (double)k * (double)m;
}

INLINE int FN(dense_parts)(int64_t split, int64_t n, int64_t k, int64_t m) {
    if (FN(dense_madds)(n, k, m) < DENSE_MIN_SPLIT) return 1;
    return parallel_blas_parts(split, 2 * DENSE_MIN_SLICE);
}

struct FN(dense_args) {
    const T *x, *W; /* x (n, k), W (k, m) */
    T *dx, *dW;     /* (n, k), (k, m) */
    int64_t n, k, m;
    struct FN(forward_args) *fwd;
    struct FN(backward_args) *bwd;
};

/* rows [r0, r1): y = act(x W + b) */
HOT static void FN(dense_forward_range)(void *args, int64_t r0, int64_t r1, int part) {
    const struct FN(dense_args) *a = args;
    FN(gemm)(0, 0, r1 - r0, a->m, a->k, a->x + r0 * a->k, a->k, a->W, a->m, 0,
             a->fwd->y + r0 * a->m, a->m);
    FN(forward_range)(a->fwd, r0, r1, part);
}

void FN(dense_forward)(const T *x, const T *W, const T *b, T *preact, T *y, int64_t n, int64_t k,
                       int64_t m, int activation) {
    if (n <= 0 || m <= 0) return;
    if (k <= 0) { /* x W is zero (BLAS refuses k = 0 leading dimensions) */
        for (int64_t i = 0; i < n * m; i++) y[i] = 0;
        FN(bias_activation_forward)(y, b, preact, y, n, m, activation);
        return;
    }
    struct FN(forward_args) f = {.z = y, .b = b, .preact = preact, .y = y, .cols = m,
                                 .act = activation};
    struct FN(dense_args) a = {.x = x, .W = W, .n = n, .k = k, .m = m, .fwd = &f};
    parallel_blas_run_small(FN(dense_forward_range), &a, n, FN(dense_parts)(n, n, k, m),
                            FN(dense_madds)(n, k, m) >= DENSE_MIN_PARALLEL);
}

/* rows [r0, r1): dz = dy act'(.) with its column sums added into the part's db
 * accumulators, then dx = dz W^T */
HOT static void FN(dense_backward_range)(void *args, int64_t r0, int64_t r1, int part) {
    const struct FN(dense_args) *a = args;
    const struct FN(backward_args) *bw = a->bwd;
    if (bw->act == FASTNN_IDENTITY) { /* dz is dy */
        if (bw->ws) FN(add_rows)(bw->ws + part * a->m, bw->dy + r0 * a->m, r1 - r0, a->m);
    } else {
        FN(backward_rows)(a->bwd, r0, r1, part);
    }
    if (a->dx)
        FN(gemm)(0, 1, r1 - r0, a->k, a->m, bw->dz + r0 * a->m, a->m, a->W, a->m, 0,
                 a->dx + r0 * a->k, a->k);
}

/* dW = x^T dz: rows [j0, j1) of dW when k >= m, else its columns [j0, j1) */
HOT static void FN(dense_weight_range)(void *args, int64_t j0, int64_t j1, int part) {
    const struct FN(dense_args) *a = args;
    const T *dz = a->bwd->dz;
    (void)part;
    if (a->k >= a->m)
        FN(gemm)(1, 0, j1 - j0, a->m, a->n, a->x + j0, a->k, dz, a->m, 0, a->dW + j0 * a->m, a->m);
    else
        FN(gemm)(1, 0, a->k, j1 - j0, a->n, a->x, a->k, dz + j0, a->m, 0, a->dW + j0, a->m);
}

/* dy, y, xpre, dz (n, m), x (n, k), W (k, m); dx (n, k) or NULL, dW (k, m), db
 * (m,). dz = dy act'(xpre) (written with y; xpre read for gelu only; dz may be
 * dy for identity), db its column sums, dW = x^T dz, dx = dz W^T. */
int FN(dense_backward)(const T *dy, const T *x, const T *W, const T *y, const T *xpre, T *dz, T *dx,
                       T *dW, T *db, int64_t n, int64_t k, int64_t m, int activation) {
    if (m <= 0) return 0;
    if (activation == FASTNN_IDENTITY) dz = (T *)dy;
    int big = FN(dense_madds)(n, k, m) >= DENSE_MIN_PARALLEL, parts = FN(dense_parts)(n, n, k, m);
    int wake = big;
    if (parts == 1 && n > 0) { /* the prologue alone may still be worth splitting */
        parts = parallel_parts(n, FN(parallel_rows)(activation, m));
        wake = 1;
    }
    struct FN(backward_args) bw = {.dy = dy, .y = y, .x = xpre, .dz = dz, .cols = m,
                                   .act = activation, .ws = workspace(parts, m)};
    if (bw.ws == NULL) return -1;
    struct FN(dense_args) a = {.x = x, .W = W, .dx = k > 0 ? dx : NULL, .dW = dW, .n = n, .k = k,
                               .m = m, .bwd = &bw};
    parallel_blas_run_small(FN(dense_backward_range), &a, n, parts, wake);
    add_parts(bw.ws, parts, m);
    for (int64_t j = 0; j < m; j++) db[j] = (T)bw.ws[j];
    free(bw.ws);
    if (k <= 0) return 0;
    if (n <= 0) { /* no rows: dW is zero (BLAS refuses k = 0 inner sizes) */
        for (int64_t i = 0; i < k * m; i++) dW[i] = 0;
        return 0;
    }
    int64_t split = k >= m ? k : m;
    parallel_blas_run_small(FN(dense_weight_range), &a, split, FN(dense_parts)(split, n, k, m),
                            big);
    return 0;
}
