/* Loss kernels for one float type T (template, see instantiate.h). Each returns
 * the mean (weighted mean) over samples of the per-sample loss and writes its
 * gradient. Rows are split between threads; each range adds its rows' scaled
 * losses into partial[part], and the caller adds the partials in order. */

struct FN(loss_args) {
    const T *x;               /* (n, k) logits, predictions or scores */
    const int64_t *labels;    /* (n,) or NULL */
    const T *targets;         /* (n, k) or NULL */
    const T *w;               /* (n,) sample weights or NULL */
    T *grad;                  /* (n, k) */
    int64_t n, k;
    double wsum;              /* sum of w */
    double delta;             /* huber */
    int loss;                 /* fastnn_loss, for elementwise_loss */
    int stream;               /* softmax: write grad with non-temporal stores */
    double partial[MAX_PARTS];
};

/* what turns sample i's loss into its share of the (weighted) mean */
INLINE double FN(sample_scale)(const struct FN(loss_args) *a, int64_t i) {
    return a->w ? (double)a->w[i] / a->wsum : 1.0 / (double)a->n;
}

/* Elements from which a loss's rows are split between spinning threads
 * (parallel_for_small; a batch of 200 rows of 7 classes has 1400) */
#define LOSS_MIN_SPLIT 1024

/* rows split from LOSS_MIN_SPLIT elements when the pool's threads spin, and
 * from min_parallel rows when they must be woken */
static double FN(setup)(struct FN(loss_args) *a, range_fn fn, int64_t min_parallel) {
    double wsum = 0;
    if (a->w) {
#pragma omp simd reduction(+ : wsum)
        for (int64_t i = 0; i < a->n; i++) wsum += a->w[i];
    }
    a->wsum = wsum;
    int64_t min_split = LOSS_MIN_SPLIT / (a->k + 1) + 1;
    int parts = parallel_for_small(fn, a, a->n, min_split < min_parallel ? min_split : min_parallel,
                                   min_parallel);
    double total = 0;
    for (int p = 0; p < parts; p++) total += a->partial[p];
    return total;
}

/* -------------------------------------------------- softmax cross-entropy */
/* max of one row x (k,), k >= 1. ROW_LANES independent running maxima (four
 * AVX2 vectors) so that the loop is not held up by the latency of one chain of
 * max instructions. A NaN never wins a comparison (its exp makes the row NaN). */
#define ROW_LANES (128 / (int)sizeof(T))
INLINE T FN(row_max)(const T *x, int64_t k) {
    T acc[ROW_LANES];
    for (int l = 0; l < ROW_LANES; l++) acc[l] = -INFINITY;
    int64_t j = 0;
    for (; j + ROW_LANES <= k; j += ROW_LANES)
        for (int l = 0; l < ROW_LANES; l++) acc[l] = x[j + l] > acc[l] ? x[j + l] : acc[l];
    T m = -INFINITY;
    for (; j < k; j++) m = x[j] > m ? x[j] : m;
    for (int l = 0; l < ROW_LANES; l++) m = acc[l] > m ? acc[l] : m;
    return m;
}
#undef ROW_LANES

/* log(s) for the sum s of e = exp(x - m) (k,), m = max(x). Where s < 2 the
 * max's term, 1, dominates (a second max would make s >= 2), and s has rounded
 * away the digits of the others that p - 1 at the label needs (a confident
 * row): their sum is then taken again, and log1p of it, as the reference does. */
INLINE T FN(log_sum)(const T *x, const T *e, int64_t k, T m, T s) {
    if (!(s < (T)2)) return (T)log((double)s);
    T below = 0;
    for (int64_t j = 0; j < k; j++) below += x[j] < m ? e[j] : (T)0;
    return (T)log1p((double)below);
}

/* The reference's softmax is exp(x - lse) with lse = m + log_s rounded to T;
 * p = e r with r = exp(m - lse) reproduces it, so logits of 1e4 (where a float
 * lse has an ulp of 1e-3) give the reference's p. */
INLINE T FN(lse_ratio)(T m, T log_s) {
    return FN(exp)(m - (m + log_s)); /* log-sum-exp: stable for logits of any size */
}

/* The streaming path, for outputs too large for the caches (STREAM_BYTES) and
 * rows short enough to stage in L1 (SCE_STAGE elements). Writing the gradient
 * row in place costs a read of each of its lines before the write
 * (write-allocate), a third transfer beside reading x and writing g. Here the
 * exps go to a row staged in L1, and the gradient is written from it with
 * streaming stores while the next row's exps are computed: each 128-byte step of
 * that loop reads x ahead (prefetch_ahead) and streams out as many bytes of the
 * staged row (struct pending), so that loads, stores and arithmetic overlap.
 * 8192 x 1000 float32, 2 threads on the 2-core test machine, against each row's
 * gradient written in a burst after it: 3.8-4.0 against 4.2-4.5 ms a call from
 * Python, 3.9 against 5.2-5.3 ms in a C program (malloc'ed arrays). The reads
 * and exps alone take 2.4-2.7 ms, the reads alone 1.7-1.9 ms. */
#define SCE_STAGE (16384 / (int)sizeof(T))
#define STAGE_LANES (PREFETCH_STEP / (int)sizeof(T))
#define LINE_LANES (64 / (int)sizeof(T))

/* A gradient row on its way from L1 to g (k,): g = e c, except g[label] =
 * g_label when label is in [0, k), written as stream_copy does: the partial lines at
 * either end with plain stores, the whole lines [j, tail) with streaming stores,
 * a few at a time. The scaling is done on the way out rather than in place, a
 * pass over e less. All zero: nothing pending. */
struct FN(pending) {
    T *g;
    const T *e;
    int64_t k, j, head, tail, label;
    T c, g_label;
};

INLINE void FN(pending_start)(struct FN(pending) *p, T *g, const T *e, int64_t k, T c,
                              int64_t label, T g_label) {
    int64_t head = stream_head(g, k, sizeof(T));
    for (int64_t j = 0; j < head; j++) g[j] = e[j] * c;
    *p = (struct FN(pending)){.g = g, .e = e, .k = k, .j = head, .head = head,
                              .tail = head + (k - head) / LINE_LANES * LINE_LANES,
                              .label = label, .c = c, .g_label = g_label};
}

INLINE void FN(pending_lines)(struct FN(pending) *p, int64_t lines) {
    for (; lines > 0 && p->j < p->tail; lines--, p->j += LINE_LANES) {
        T v[LINE_LANES];
        for (int l = 0; l < LINE_LANES; l++) v[l] = p->e[p->j + l] * p->c;
        if ((uint64_t)(p->label - p->j) < LINE_LANES) v[p->label - p->j] = p->g_label;
        FN(stream_line)(p->g + p->j, v);
    }
}

INLINE void FN(pending_finish)(struct FN(pending) *p) {
    FN(pending_lines)(p, (p->tail - p->j) / LINE_LANES);
    for (int64_t j = p->tail; j < p->k; j++) p->g[j] = p->e[j] * p->c;
    int64_t label = p->label; /* none when out of [0, k): -1, or k = 0 when nothing pending */
    if ((uint64_t)label < (uint64_t)p->k && (label < p->head || label >= p->tail))
        p->g[label] = p->g_label;
    *p = (struct FN(pending)){0};
}

/* e = exp(x - max) of one row x (k,) into e, returns sum(e). Each step of
 * PREFETCH_STEP bytes prefetches x ahead (prefetch_ahead, common.h) while before
 * x_end, and the row t that is read next, if any, while before t_end (x_end = x:
 * no prefetching), and streams as many bytes of the pending row out. The sum
 * runs in VEC_LANES lanes, one vector register: the exp's arithmetic hides the
 * latency of its additions. With four vectors (one per step), 16 registers did
 * not hold them beside the polynomial's constants, and the spilled sums made the
 * pass 25-30% slower (rows in L1, AVX2). x, e and the pending row never overlap. */
#define VEC_LANES (32 / (int)sizeof(T))
INLINE T FN(exp_row_ahead)(const T *restrict x, T *restrict e, int64_t k, T *max,
                           const T *x_end, const T *t, const T *t_end,
                           struct FN(pending) *pending) {
    T m = FN(row_max)(x, k);
    T acc[VEC_LANES];
    for (int l = 0; l < VEC_LANES; l++) acc[l] = 0;
    int64_t j = 0;
    for (; j + STAGE_LANES <= k; j += STAGE_LANES) {
        prefetch_ahead(x + j, x_end);
        if (t) prefetch_ahead(t + j, t_end);
        FN(pending_lines)(pending, PREFETCH_STEP / 64);
        for (int q = 0; q < STAGE_LANES; q += VEC_LANES)
            for (int l = 0; l < VEC_LANES; l++) {
                T v = FN(exp_nonpos)(x[j + q + l] - m);
                e[j + q + l] = v;
                acc[l] += v;
            }
    }
    T s = 0;
    for (; j < k; j++) {
        e[j] = FN(exp_nonpos)(x[j] - m);
        s += e[j];
    }
    for (int l = 0; l < VEC_LANES; l++) s += acc[l];
    *max = m;
    return s;
}
#undef VEC_LANES

/* log p at row i's label, (x - m) - log_s (0 for a label outside [0, k)): its
 * expm1 is p - 1, which e r - 1 would get from the digits p has beyond 1 in a
 * confident row (and with the rounding of lse), as the reference does. */
INLINE T FN(label_log_p)(const struct FN(loss_args) *a, int64_t i, const T *x, T m, T log_s) {
    int64_t label = a->labels[i];
    return label < 0 || label >= a->k ? (T)0 : (x[label] - m) - log_s;
}

/* The gradient row g (k,) of the labels' loss, (softmax - onehot) scale, from
 * e = exp(x - m) (k,), r, lse = m + log_s and pm1 = p - 1 at the label: in place
 * (g may be e), or, given a pending, scaled on its way out (g is then written
 * later). Returns the row's loss times its scale; NaN for a label outside
 * [0, k), which the wrapper checked: nothing is read outside the row. */
INLINE double FN(labels_row)(const struct FN(loss_args) *a, int64_t i, const T *x, const T *e,
                             T *g, T lse, T r, T pm1, struct FN(pending) *pending) {
    int64_t k = a->k, label = a->labels[i];
    if (label < 0 || label >= k) return NAN;
    double scale = FN(sample_scale)(a, i);
    T sc = (T)scale, c = r * sc, g_label = pm1 * sc;
    if (pending) {
        FN(pending_start)(pending, g, e, k, c, label, g_label);
    } else {
        for (int64_t j = 0; j < k; j++) g[j] = e[j] * c;
        g[label] = g_label;
    }
    return ((double)lse - (double)x[label]) * scale;
}

/* The probabilities' loss, sum_j t_j (lse - x_j) (each term >= 0), and its
 * gradient (softmax sum(t) - t) scale in place over e = exp(x - m) (k,), given
 * lse = m + log_s and r; returns the row's loss times its scale. */
INLINE double FN(probs_row)(const struct FN(loss_args) *a, int64_t i, const T *x, const T *t,
                            T *e, T lse_t, T r) {
    int64_t k = a->k;
    double lse = (double)lse_t, tsum = 0, loss = 0;
#pragma omp simd reduction(+ : tsum, loss)
    for (int64_t j = 0; j < k; j++) {
        tsum += (double)t[j];
        loss += (double)t[j] * (lse - (double)x[j]);
    }
    double scale = FN(sample_scale)(a, i);
    T c = r * (T)tsum, sc = (T)scale;
    for (int64_t j = 0; j < k; j++) e[j] = (e[j] * c - t[j]) * sc;
    return loss * scale;
}

/* Both losses: per row, e = exp(x - max) into the gradient row, or, when
 * streaming, into a staged row (stage[i % 2]: the previous one may still be
 * pending) that pending then writes out. */
HOT static void FN(sce_labels_range)(void *args, int64_t r0, int64_t r1, int part) {
    struct FN(loss_args) *a = args;
    int64_t k = a->k;
    int stream = a->stream && k <= SCE_STAGE;
    T stage[2][SCE_STAGE];
    struct FN(pending) pending = {0};
    const T *x_end = stream ? a->x + r1 * k : a->x; /* prefetch only when streaming */
    double total = 0;
    for (int64_t i = r0; i < r1; i++) {
        const T *x = a->x + i * k;
        T *g = a->grad + i * k, m, *e = stream ? stage[i % 2] : g;
        T s = FN(exp_row_ahead)(x, e, k, &m, x_end, NULL, NULL, &pending);
        FN(pending_finish)(&pending);
        T log_s = FN(log_sum)(x, e, k, m, s), r = FN(lse_ratio)(m, log_s);
        T pm1 = FN(expm1_neg)(FN(label_log_p)(a, i, x, m, log_s));
        total += FN(labels_row)(a, i, x, e, g, m + log_s, r, pm1, stream ? &pending : NULL);
    }
    FN(pending_finish)(&pending);
    if (stream) stream_fence();
    a->partial[part] = total;
}

HOT static void FN(sce_probs_range)(void *args, int64_t r0, int64_t r1, int part) {
    struct FN(loss_args) *a = args;
    int64_t k = a->k;
    int stream = a->stream && k <= SCE_STAGE; /* as the labels' path */
    T stage[2][SCE_STAGE];
    struct FN(pending) pending = {0};
    const T *x_end = stream ? a->x + r1 * k : a->x; /* prefetch only when streaming */
    const T *t_end = stream ? a->targets + r1 * k : a->targets;
    double total = 0;
    for (int64_t i = r0; i < r1; i++) {
        const T *x = a->x + i * k, *t = a->targets + i * k;
        T *g = a->grad + i * k, m, *e = stream ? stage[i % 2] : g;
        T s = FN(exp_row_ahead)(x, e, k, &m, x_end, t, t_end, &pending);
        FN(pending_finish)(&pending);
        T log_s = FN(log_sum)(x, e, k, m, s), r = FN(lse_ratio)(m, log_s);
        total += FN(probs_row)(a, i, x, t, e, m + log_s, r);
        if (stream) FN(pending_start)(&pending, g, e, k, (T)1, -1, 0);
    }
    FN(pending_finish)(&pending);
    if (stream) stream_fence();
    a->partial[part] = total;
}

/* Short rows (10 classes, say) would run exp_row_ahead's loops in their scalar
 * tails, one exp at a time, and a row's bookkeeping (its max, log and exps)
 * would cost more than its elements. Rows of fewer than SHORT_ROW elements take
 * this path instead, where blocks of whole rows (at most SHORT_BLOCK elements,
 * e (rows, k)) take passes that each run as one vector loop: the maxima and the
 * sums down the columns of the block (strided, every row at once), the exps of
 * the block as one flat array, the ratios r and the labels' p - 1 of every row;
 * then per row the gradient. A large output is staged by blocks and written
 * with streaming stores. Measured in a C program, float32, 1 thread, rows in
 * cache, ns per row, the row path against this one: 3 elements 85 against 19;
 * 10: 88 against 25; 31: 126-154 against 48; 63: 145 against 78; 127: 181-239
 * against 193-196; 200: 257 against 305. Blocks of 1024 elements: 127 elements
 * 166 against 146 ns. */
#define SHORT_ROW 128
#define SHORT_BLOCK 2048 /* >= SHORT_ROW */
HOT static void FN(sce_short_range)(void *args, int64_t r0, int64_t r1, int part) {
    struct FN(loss_args) *a = args;
    int64_t k = a->k, block = SHORT_BLOCK / k;
    T stage[SHORT_BLOCK], max[SHORT_BLOCK], log_s[SHORT_BLOCK], r[SHORT_BLOCK], pm1[SHORT_BLOCK];
    double total = 0;
    for (int64_t i0 = r0; i0 < r1; i0 += block) {
        int64_t rows = r1 - i0 < block ? r1 - i0 : block;
        const T *x = a->x + i0 * k; /* (rows, k) */
        T *g = a->grad + i0 * k, *e = a->stream ? stage : g;
        for (int64_t i = 0; i < rows; i++) max[i] = x[i * k];
        for (int64_t j = 1; j < k; j++) /* as row_max: a NaN never wins */
            for (int64_t i = 0; i < rows; i++) max[i] = x[i * k + j] > max[i] ? x[i * k + j] : max[i];
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < k; j++) e[i * k + j] = x[i * k + j] - max[i];
        for (int64_t j = 0; j < rows * k; j++) e[j] = FN(exp_nonpos)(e[j]);
        for (int64_t i = 0; i < rows; i++) r[i] = e[i * k]; /* r: the sums, for now */
        for (int64_t j = 1; j < k; j++)
            for (int64_t i = 0; i < rows; i++) r[i] += e[i * k + j];
        for (int64_t i = 0; i < rows; i++)
            log_s[i] = FN(log_sum)(x + i * k, e + i * k, k, max[i], r[i]);
        for (int64_t i = 0; i < rows; i++) r[i] = FN(lse_ratio)(max[i], log_s[i]);
        if (a->labels) {
            for (int64_t i = 0; i < rows; i++)
                pm1[i] = FN(label_log_p)(a, i0 + i, x + i * k, max[i], log_s[i]);
            for (int64_t i = 0; i < rows; i++) pm1[i] = FN(expm1_neg)(pm1[i]);
        }
        for (int64_t i = 0; i < rows; i++) {
            const T *xi = x + i * k;
            T *ei = e + i * k;
            total += a->labels
                         ? FN(labels_row)(a, i0 + i, xi, ei, ei, max[i] + log_s[i], r[i], pm1[i],
                                          NULL)
                         : FN(probs_row)(a, i0 + i, xi, a->targets + (i0 + i) * k, ei,
                                         max[i] + log_s[i], r[i]);
        }
        if (a->stream) FN(stream_copy)(g, e, rows * k);
    }
    if (a->stream) stream_fence();
    a->partial[part] = total;
}

double FN(softmax_cross_entropy_labels)(const T *logits, const int64_t *labels, const T *w,
                                        T *grad, int64_t n, int64_t k) {
    struct FN(loss_args) a = {.x = logits, .labels = labels, .w = w, .grad = grad, .n = n, .k = k,
                              .stream = (double)n * (double)k * sizeof(T) >= STREAM_BYTES};
    return FN(setup)(&a, k < SHORT_ROW ? FN(sce_short_range) : FN(sce_labels_range),
                     MIN_PARALLEL_MATH / (k + 1) + 1);
}

double FN(softmax_cross_entropy_probs)(const T *logits, const T *targets, const T *w, T *grad,
                                       int64_t n, int64_t k) {
    struct FN(loss_args) a = {.x = logits, .targets = targets, .w = w, .grad = grad, .n = n,
                              .k = k, .stream = (double)n * (double)k * sizeof(T) >= STREAM_BYTES};
    return FN(setup)(&a, k < SHORT_ROW ? FN(sce_short_range) : FN(sce_probs_range),
                     MIN_PARALLEL_MATH / (k + 1) + 1);
}

#undef SCE_STAGE
#undef SHORT_BLOCK
#undef STAGE_LANES
#undef LINE_LANES
#undef SHORT_ROW

/* ------------------------------------------- sigmoid binary cross-entropy */
/* len elements of one scale; returns the sum of their losses (unscaled) */
INLINE double FN(bce_seg)(const T *x, const T *t, T *g, int64_t len, T scale) {
    double total = 0;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < len; j++) {
        /* -t log s(x) - (1-t) log(1-s(x)) = max(x, 0) - x t + log(1 + e^-|x|) */
        T e = FN(exp)(-FN(abs)(x[j]));
        T loss = (x[j] > 0 ? x[j] : (T)0) - x[j] * t[j] + FN(log1p_unit)(e);
        T inv = (T)1 / ((T)1 + e);
        T sig = x[j] >= 0 ? inv : e * inv;
        g[j] = (sig - t[j]) * scale;
        total += (double)loss;
    }
    return total;
}

/* ------------------------------------------------------ elementwise losses */
INLINE double FN(elementwise_seg)(int loss, const T *p, const T *t, T *g, int64_t len,
                                         T scale, T delta) {
    double total = 0;
    switch (loss) {
    case FASTNN_SQUARED:
#pragma omp simd reduction(+ : total)
        for (int64_t j = 0; j < len; j++) {
            T d = p[j] - t[j];
            g[j] = d * scale;
            total += (double)((T)0.5 * d * d);
        }
        break;
    case FASTNN_ABSOLUTE:
#pragma omp simd reduction(+ : total)
        for (int64_t j = 0; j < len; j++) {
            T d = p[j] - t[j];
            T sign = d > 0 ? (T)1 : d < 0 ? (T)-1 : d; /* sign(0) = 0, NaN stays */
            g[j] = sign * scale;
            total += (double)FN(abs)(d);
        }
        break;
    case FASTNN_HUBER:
#pragma omp simd reduction(+ : total)
        for (int64_t j = 0; j < len; j++) {
            T d = p[j] - t[j], ad = FN(abs)(d);
            T clipped = d > delta ? delta : d < -delta ? -delta : d;
            g[j] = clipped * scale;
            total += (double)(ad < delta ? (T)0.5 * d * d : delta * (ad - (T)0.5 * delta));
        }
        break;
    case FASTNN_HINGE:
#pragma omp simd reduction(+ : total)
        for (int64_t j = 0; j < len; j++) {
            T margin = (T)1 - t[j] * p[j];
            g[j] = margin > 0 ? -t[j] * scale : (T)0;
            total += (double)(margin < 0 ? (T)0 : margin);
        }
        break;
    default:
        break;
    }
    return total;
}

/* rows [r0, r1): one segment when the scale is shared (no weights), else per row */
HOT static void FN(bce_range)(void *args, int64_t r0, int64_t r1, int part) {
    struct FN(loss_args) *a = args;
    int64_t k = a->k;
    double total = 0;
    if (a->w == NULL) {
        double scale = FN(sample_scale)(a, 0);
        int64_t off = r0 * k;
        total = scale * FN(bce_seg)(a->x + off, a->targets + off, a->grad + off, (r1 - r0) * k,
                                    (T)scale);
    } else {
        for (int64_t i = r0, off = r0 * k; i < r1; i++, off += k) {
            double scale = FN(sample_scale)(a, i);
            total += scale * FN(bce_seg)(a->x + off, a->targets + off, a->grad + off, k,
                                         (T)scale);
        }
    }
    a->partial[part] = total;
}

HOT static void FN(elementwise_range)(void *args, int64_t r0, int64_t r1, int part) {
    struct FN(loss_args) *a = args;
    int64_t k = a->k;
    double total = 0;
    if (a->w == NULL) {
        double scale = FN(sample_scale)(a, 0);
        int64_t off = r0 * k;
        total = scale * FN(elementwise_seg)(a->loss, a->x + off, a->targets + off,
                                            a->grad + off, (r1 - r0) * k, (T)scale,
                                            (T)a->delta);
    } else {
        for (int64_t i = r0, off = r0 * k; i < r1; i++, off += k) {
            double scale = FN(sample_scale)(a, i);
            total += scale * FN(elementwise_seg)(a->loss, a->x + off, a->targets + off,
                                                 a->grad + off, k, (T)scale, (T)a->delta);
        }
    }
    a->partial[part] = total;
}

double FN(sigmoid_binary_cross_entropy)(const T *logits, const T *targets, const T *w, T *grad,
                                        int64_t n, int64_t k) {
    struct FN(loss_args) a = {.x = logits, .targets = targets, .w = w, .grad = grad, .n = n,
                              .k = k};
    return FN(setup)(&a, FN(bce_range), MIN_PARALLEL_MATH / (k + 1) + 1);
}

double FN(elementwise_loss)(int loss, const T *pred, const T *targets, const T *w, T *grad,
                            int64_t n, int64_t k, double delta) {
    struct FN(loss_args) a = {.x = pred, .targets = targets, .w = w, .grad = grad, .n = n, .k = k,
                              .delta = delta, .loss = loss};
    return FN(setup)(&a, FN(elementwise_range), MIN_PARALLEL_CHEAP / (k + 1) + 1);
}
