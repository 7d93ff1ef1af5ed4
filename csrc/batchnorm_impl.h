/* Batch-norm kernels for one float type T (template, see instantiate.h).
 *
 * x (n, c) is row-major and the statistics run down its columns: threads take
 * blocks of rows (contiguous memory) and sum them into their own per-column
 * double accumulators (see workspace in common.h), added in a fixed order. The
 * statistics are shifted sums, sum(x - x0) and sum((x - x0)^2) with x0 the first
 * row, one pass with no cancellation when the mean is large against the spread
 * (and exactly 0 for a constant column). A second pass normalises, in the
 * reference's order of operations.
 *
 * The statistics are memory-bound only if the arithmetic per element is small:
 * they take BN_SWEEP rows at a time, sum each column of the sweep in T (registers),
 * and add that into the double accumulators, which then move through L1 once per
 * sweep rather than once per row.
 *
 * Both passes over x (and dy) stream whole rows from memory: a panel of all
 * rows of a few columns would stay in cache between the passes, but reading a
 * few cache lines from every row (every page when c is large) was measured
 * slower than reading x twice. Running the second pass in reverse row order
 * (to start on the rows read last, which may still be in L3) was measured
 * slower too, per row and in reversed chunks of 64 or 128 rows: on the test
 * machine, whose 32 MB L3 is shared, a re-read gained from the cache only up
 * to about 8 MB of data (x is 16 MB in the 4096 x 1024 float32 benchmark), and
 * rows in descending order stream more slowly from memory. Nor did a second
 * pass that starts at the rows the first pass read last and then runs from
 * its range's first row (both parts ascending): with 4, 8 or 16 MB of the
 * first pass's reads taken first, forward and backward took the same CPU time
 * as in plain order (4096 x 1024 float32, one thread, loaded machine).
 *
 * A large y is written with non-temporal stores (stream_copy, common.h), and the
 * normalising pass prefetches the next row while it works on the current one:
 * the hardware prefetchers stop at 4 KB page boundaries, so each row of a wide
 * x would start with misses, and no load is in flight behind the streaming
 * stores. Measured on the benchmark above: forward 20-25% faster. The
 * backward's passes prefetch step by step instead (prefetch_ahead, common.h):
 * the whole next row at once was within the noise there. The statistics pass
 * needs neither: it keeps BN_SWEEP rows in flight.
 *
 * The two passes each way move 8 arrays of n x c (x twice and y; x and dy
 * twice and dx) where the operation needs 5. On the test machine 2 threads
 * read at about 24.5 GB/s and copy with non-temporal stores at about 34 GB/s
 * (bytes read + written): from memory alone that is 1.8x the time of the 5
 * arrays at 34 GB/s. What the second passes find still in the (shared) L3
 * decides the rest: fwd+bwd on 4096 x 1024 float32 measured 4.2 to 9.3 ms
 * from one benchmark run to the next. */

#define BN_SWEEP 8
#define BN_CHUNK 512 /* elements per row chunk staged in L1 before a streaming store */

struct FN(bn_args) {
    const T *x, *gamma, *beta, *dy, *mean, *invstd;
    T *y, *dx;
    const T *dbeta, *dgamma; /* dx pass */
    T *coef;                 /* dx pass: gamma invstd / n, (c,) */
    double *ws;              /* parts * 2c accumulators */
    int64_t c;
    T coef_n;                /* n, in T */
    int training;
    int stream;              /* write y or dx with non-temporal stores */
};

/* s1 += x - x0, s2 += (x - x0)^2 over rows [r0, r1); x - x0 is exact in T
 * while x is within a factor 2 of x0, and 0 for a constant column */
HOT static void FN(bn_stats_rows)(void *args, int64_t r0, int64_t r1, int part) {
    const struct FN(bn_args) *a = args;
    int64_t c = a->c;
    double *s1 = a->ws + part * 2 * c, *s2 = s1 + c;
    const T *x0 = a->x;
    int64_t r = r0;
    for (; r + BN_SWEEP <= r1; r += BN_SWEEP) {
        const T *rows = a->x + r * c; /* (BN_SWEEP, c) */
        for (int64_t j = 0; j < c; j++) {
            T shift = x0[j], t1 = 0, t2 = 0;
            for (int k = 0; k < BN_SWEEP; k++) {
                T d = rows[k * c + j] - shift;
                t1 += d;
                t2 += d * d;
            }
            s1[j] += (double)t1;
            s2[j] += (double)t2;
        }
    }
    for (; r < r1; r++) {
        const T *row = a->x + r * c;
        for (int64_t j = 0; j < c; j++) {
            T d = row[j] - x0[j];
            s1[j] += (double)d;
            s2[j] += (double)(d * d);
        }
    }
}

/* y = (x - mean) * invstd * gamma + beta over rows [r0, r1) */
HOT static void FN(bn_normalize_rows)(void *args, int64_t r0, int64_t r1, int part) {
    const struct FN(bn_args) *a = args;
    int64_t c = a->c;
    const T *mean = a->mean, *invstd = a->invstd, *gamma = a->gamma, *beta = a->beta;
    T tmp[BN_CHUNK];
    (void)part;
    for (int64_t r = r0; r < r1; r++) {
        const T *x = a->x + r * c, *next = r + 1 < r1 ? x + c : x;
        T *y = a->y + r * c;
        for (int64_t j0 = 0; j0 < c; j0 += BN_CHUNK) {
            int64_t w = c - j0 < BN_CHUNK ? c - j0 : BN_CHUNK;
            prefetch_lines(next + j0, w * (int64_t)sizeof(T));
            T *out = a->stream ? tmp : y + j0;
            for (int64_t j = 0; j < w; j++)
                out[j] = (x[j0 + j] - mean[j0 + j]) * invstd[j0 + j] * gamma[j0 + j] + beta[j0 + j];
            if (a->stream) FN(stream_copy)(y + j0, tmp, w);
        }
    }
    if (a->stream) stream_fence();
}

int FN(batchnorm_forward)(const T *x, const T *gamma, const T *beta, T *running_mean,
                          T *running_var, T *y, T *mean, T *invstd, int64_t n, int64_t c,
                          int training, double momentum, double eps) {
    if (c <= 0) return 0;
    int parts = parallel_parts(n, MIN_PARALLEL_CHEAP / c + 1);
    struct FN(bn_args) a = {.x = x, .gamma = gamma, .beta = beta, .mean = mean, .invstd = invstd,
                            .y = y, .c = c,
                            .stream = (double)n * (double)c * sizeof(T) >= STREAM_BYTES};
    if (!training) {
        for (int64_t j = 0; j < c; j++) {
            mean[j] = running_mean[j];
            invstd[j] = (T)1 / FN(sqrt)(running_var[j] + (T)eps);
        }
        parallel_run(FN(bn_normalize_rows), &a, n, parts);
        return 0;
    }
    a.ws = workspace(parts, 2 * c);
    if (a.ws == NULL) return -1;
    const double *s1 = a.ws, *s2 = a.ws + c;
    T keep = (T)(1.0 - momentum), mom = (T)momentum;
    T unbias = n > 1 ? (T)((double)n / (double)(n - 1)) : (T)0; /* n > 1 checked */
    parallel_run(FN(bn_stats_rows), &a, n, parts);
    add_parts(a.ws, parts, 2 * c);
    for (int64_t j = 0; j < c; j++) {
        double shift = s1[j] / (double)n;
        double var64 = s2[j] / (double)n - shift * shift; /* biased: normalises the batch */
        T var = (T)(var64 < 0 ? 0 : var64); /* rounding can make it < 0; NaN stays */
        mean[j] = (T)((double)x[j] + shift);
        invstd[j] = (T)1 / FN(sqrt)(var + (T)eps);
        running_mean[j] = running_mean[j] * keep + mom * mean[j];
        running_var[j] = running_var[j] * keep + mom * var * unbias; /* unbiased */
    }
    parallel_run(FN(bn_normalize_rows), &a, n, parts);
    free(a.ws);
    return 0;
}

/* sdy += dy, sdyx += dy * xhat over rows [r0, r1), xhat = (x - mean) invstd
 * (in T, as the reference). As in bn_stats_rows, BN_GRAD_SWEEP rows at a time
 * are summed per column in T and then added into the double accumulators: the
 * pass, with its reads prefetched, is bound by its arithmetic as much as by
 * memory, and one row at a time spends most of it on converting and adding
 * doubles. Measured in float32 against one row at a time: 44% less time with
 * the data in L2 (32 x 1024, 1 thread), 10-20% less on 4096 x 1024 from
 * memory (2 threads). */
#define BN_GRAD_SWEEP 4
HOT static void FN(bn_grad_sums_rows)(void *args, int64_t r0, int64_t r1, int part) {
    const struct FN(bn_args) *a = args;
    enum { STEP = PREFETCH_STEP / sizeof(T) };
    int64_t c = a->c;
    double *sdy = a->ws + part * 2 * c, *sdyx = sdy + c;
    const T *mean = a->mean, *invstd = a->invstd;
    const T *x_end = a->x + r1 * c, *dy_end = a->dy + r1 * c;
    int64_t r = r0;
    if (sizeof(T) == sizeof(float)) { /* double: nothing to convert; sweeps measured 30-40% slower */
        for (; r + BN_GRAD_SWEEP <= r1; r += BN_GRAD_SWEEP) {
            const T *x = a->x + r * c, *dy = a->dy + r * c; /* (BN_GRAD_SWEEP, c) */
            for (int64_t j0 = 0; j0 < c; j0 += STEP) {
                int64_t j1 = j0 + STEP < c ? j0 + STEP : c;
                for (int k = 0; k < BN_GRAD_SWEEP; k++) {
                    prefetch_ahead(x + k * c + j0, x_end);
                    prefetch_ahead(dy + k * c + j0, dy_end);
                }
                for (int64_t j = j0; j < j1; j++) {
                    T m = mean[j], s = invstd[j], t1 = 0, t2 = 0;
                    for (int k = 0; k < BN_GRAD_SWEEP; k++) {
                        T d = dy[k * c + j], xhat = (x[k * c + j] - m) * s;
                        t1 += d;
                        t2 += d * xhat;
                    }
                    sdy[j] += (double)t1;
                    sdyx[j] += (double)t2;
                }
            }
        }
    }
    for (; r < r1; r++) {
        const T *x = a->x + r * c, *dy = a->dy + r * c;
        for (int64_t j0 = 0; j0 < c; j0 += STEP) {
            int64_t j1 = j0 + STEP < c ? j0 + STEP : c;
            prefetch_ahead(x + j0, x_end);
            prefetch_ahead(dy + j0, dy_end);
            for (int64_t j = j0; j < j1; j++) {
                T xhat = (x[j] - mean[j]) * invstd[j];
                sdy[j] += (double)dy[j];
                sdyx[j] += (double)(dy[j] * xhat);
            }
        }
    }
}

/* The dx pass works on BN_ROWS rows at a time, each column's five parameters
 * loaded once for them: one row at a time, those loads, not the arithmetic,
 * bounded the loop in cache. The rows' results are staged in L1 (tmp, BN_ROWS
 * x BN_CHUNK) and copied out, with streaming stores for a large dx. Measured
 * on the backward, float32, one thread, results identical: 128 x 1024 (in
 * cache) 0.100 -> 0.089 ms, 4096 x 1024 4.98 -> 4.7 ms. The normalising pass
 * of the forward, done the same way, was as fast in cache and 20-30% slower
 * from memory (four rows' prefetches at once), so it stays one row at a time. */
#define BN_ROWS 4

/* copies the staged rows (rows, w), BN_CHUNK apart, to out (rows, w), c apart */
INLINE void FN(bn_store_rows)(const struct FN(bn_args) *a, T *out, const T *tmp, int rows,
                               int64_t w) {
    for (int k = 0; k < rows; k++) {
        if (a->stream)
            FN(stream_copy)(out + k * a->c, tmp + k * BN_CHUNK, w);
        else
            memcpy(out + k * a->c, tmp + k * BN_CHUNK, (size_t)w * sizeof(T));
    }
}

/* dx over rows [r0, r1). Training: the batch mean and variance depend on x too,
 * dx = gamma invstd / n (n dy - dbeta - xhat dgamma); inference: dy gamma invstd.
 * BN_ROWS rows at a time (see above). The loops run in steps of a
 * fixed PREFETCH_STEP (one prefetch per stream each) and a tail: a step whose
 * length the compiler cannot see was measured about 30% slower in cache, each
 * one paying a vector loop's set-up. */
INLINE T FN(bn_dx_train)(T x, T dy, T mean, T invstd, T coef, T nt, T dbeta, T dgamma) {
    T xhat = (x - mean) * invstd;
    return coef * (nt * dy - dbeta - xhat * dgamma);
}

/* tmp[k * BN_CHUNK + j - c0] = dx of row k < rows (x, dy: rows c apart) for
 * columns j in [j0, j1); rows is a constant where this is inlined */
INLINE void FN(bn_dx_block)(const struct FN(bn_args) *a, const T *restrict x,
                             const T *restrict dy, int64_t c0, int64_t j0, int64_t j1, int rows,
                             T *restrict tmp) {
    const T *restrict mean = a->mean, *restrict invstd = a->invstd, *restrict gamma = a->gamma;
    const T *restrict dbeta = a->dbeta, *restrict dgamma = a->dgamma, *restrict coef = a->coef;
    int64_t c = a->c;
    T nt = a->coef_n, *restrict out = tmp - c0;
    if (a->training) {
        for (int64_t j = j0; j < j1; j++) {
            T m = mean[j], s = invstd[j], cf = coef[j], db = dbeta[j], dg = dgamma[j];
            for (int k = 0; k < rows; k++)
                out[k * BN_CHUNK + j] = FN(bn_dx_train)(x[k * c + j], dy[k * c + j], m, s, cf, nt,
                                                        db, dg);
        }
    } else {
        for (int64_t j = j0; j < j1; j++) {
            T g = gamma[j], s = invstd[j];
            for (int k = 0; k < rows; k++) out[k * BN_CHUNK + j] = dy[k * c + j] * g * s;
        }
    }
}

HOT static void FN(bn_dx_rows)(void *args, int64_t r0, int64_t r1, int part) {
    const struct FN(bn_args) *a = args;
    enum { STEP = PREFETCH_STEP / sizeof(T) };
    int64_t c = a->c;
    const T *x_end = a->x + r1 * c, *dy_end = a->dy + r1 * c;
    T tmp[BN_ROWS * BN_CHUNK];
    (void)part;
    for (int64_t r = r0; r < r1; r += BN_ROWS) {
        int rows = r1 - r < BN_ROWS ? (int)(r1 - r) : BN_ROWS;
        const T *x = a->x + r * c, *dy = a->dy + r * c; /* (rows, c) */
        for (int64_t c0 = 0; c0 < c; c0 += BN_CHUNK) {
            int64_t c1 = c - c0 < BN_CHUNK ? c : c0 + BN_CHUNK;
            for (int64_t j0 = c0; j0 < c1; j0 += STEP) {
                int64_t j1 = j0 + STEP <= c1 ? j0 + STEP : c1;
                for (int k = 0; k < rows; k++) {
                    prefetch_ahead(dy + k * c + j0, dy_end);
                    if (a->training) prefetch_ahead(x + k * c + j0, x_end);
                }
                if (rows == BN_ROWS && j1 == j0 + STEP)
                    FN(bn_dx_block)(a, x, dy, c0, j0, j0 + STEP, BN_ROWS, tmp);
                else
                    for (int k = 0; k < rows; k++)
                        FN(bn_dx_block)(a, x + k * c, dy + k * c, c0, j0, j1, 1,
                                        tmp + k * BN_CHUNK);
            }
            FN(bn_store_rows)(a, a->dx + r * c + c0, tmp, rows, c1 - c0);
        }
    }
    if (a->stream) stream_fence();
}

int FN(batchnorm_backward)(const T *dy, const T *x, const T *mean, const T *invstd,
                           const T *gamma, T *dx, T *dgamma, T *dbeta, int64_t n, int64_t c,
                           int training) {
    if (c <= 0) return 0; /* n may be 0: dgamma and dbeta are then 0 */
    int parts = parallel_parts(n, MIN_PARALLEL_CHEAP / c + 1);
    struct FN(bn_args) a = {.x = x, .gamma = gamma, .dy = dy, .mean = mean, .invstd = invstd,
                            .dx = dx, .dbeta = dbeta, .dgamma = dgamma, .c = c,
                            .coef_n = (T)n, .training = training,
                            .stream = (double)n * (double)c * sizeof(T) >= STREAM_BYTES};
    a.ws = workspace(parts + 1, 2 * c); /* + room for coef */
    if (a.ws == NULL) return -1;
    a.coef = (T *)(a.ws + parts * 2 * c);
    parallel_run(FN(bn_grad_sums_rows), &a, n, parts);
    add_parts(a.ws, parts, 2 * c);
    for (int64_t j = 0; j < c; j++) {
        dbeta[j] = (T)a.ws[j];
        dgamma[j] = (T)a.ws[c + j];
        a.coef[j] = gamma[j] * invstd[j] / a.coef_n;
    }
    parallel_run(FN(bn_dx_rows), &a, n, parts);
    free(a.ws);
    return 0;
}
