/* Batch-norm kernels for one float type T (template, see instantiate.h).
 *
 * x (n, c) is row-major and the statistics run down its columns, so the work is
 * split into column tiles (see column_tile): one thread owns a tile and walks all
 * rows for it, with a per-column accumulator in double. Statistics are summed in
 * one pass as shifted sums, sum(x - x0) and sum((x - x0)^2) with x0 the first
 * row, which avoids the cancellation of a plain sum of squares when the mean is
 * large against the spread; the normalisation is the second pass. */

struct FN(bn_args) {
    const T *x, *gamma, *beta, *dy;
    T *running_mean, *running_var, *y, *mean, *invstd, *dx, *dgamma, *dbeta;
    int64_t n, c, tile;
    int training;
    double momentum, eps;
};

HOT static void FN(bn_forward_tiles)(void *args, int64_t t0, int64_t t1, int part) {
    const struct FN(bn_args) *a = args;
    int64_t n = a->n, c = a->c;
    double s1[TILE_MAX], s2[TILE_MAX];
    (void)part;
    for (int64_t t = t0; t < t1; t++) {
        int64_t j0 = t * a->tile, w = c - j0 < a->tile ? c - j0 : a->tile;
        const T *x0 = a->x + j0;
        T *mean = a->mean + j0, *invstd = a->invstd + j0;
        const T *gamma = a->gamma + j0, *beta = a->beta + j0;
        if (a->training) {
            for (int64_t j = 0; j < w; j++) s1[j] = s2[j] = 0;
            for (int64_t r = 0; r < n; r++) {
                const T *row = x0 + r * c;
                for (int64_t j = 0; j < w; j++) {
                    double d = (double)row[j] - (double)x0[j];
                    s1[j] += d;
                    s2[j] += d * d;
                }
            }
            T *rm = a->running_mean + j0, *rv = a->running_var + j0;
            T keep = (T)(1.0 - a->momentum), mom = (T)a->momentum;
            T unbias = n > 1 ? (T)((double)n / (double)(n - 1)) : (T)0; /* n > 1 checked */
            for (int64_t j = 0; j < w; j++) {
                double shift = s1[j] / (double)n;
                double var64 = s2[j] / (double)n - shift * shift; /* biased */
                T var = (T)(var64 < 0 ? 0 : var64); /* rounding can make it < 0; NaN stays */
                mean[j] = (T)((double)x0[j] + shift);
                invstd[j] = (T)1 / FN(sqrt)(var + (T)a->eps);
                rm[j] = rm[j] * keep + mom * mean[j];
                rv[j] = rv[j] * keep + mom * var * unbias; /* unbiased running estimate */
            }
        } else {
            for (int64_t j = 0; j < w; j++) {
                mean[j] = a->running_mean[j0 + j];
                invstd[j] = (T)1 / FN(sqrt)(a->running_var[j0 + j] + (T)a->eps);
            }
        }
        /* in the reference's order of operations */
        for (int64_t r = 0; r < n; r++) {
            const T *row = x0 + r * c;
            T *y = a->y + r * c + j0;
            for (int64_t j = 0; j < w; j++) y[j] = (row[j] - mean[j]) * invstd[j] * gamma[j] + beta[j];
        }
    }
}

HOT static void FN(bn_backward_tiles)(void *args, int64_t t0, int64_t t1, int part) {
    const struct FN(bn_args) *a = args;
    int64_t n = a->n, c = a->c;
    double sdy[TILE_MAX], sdyx[TILE_MAX];
    T k[TILE_MAX];
    (void)part;
    for (int64_t t = t0; t < t1; t++) {
        int64_t j0 = t * a->tile, w = c - j0 < a->tile ? c - j0 : a->tile;
        const T *mean = a->mean + j0, *invstd = a->invstd + j0, *gamma = a->gamma + j0;
        T *dgamma = a->dgamma + j0, *dbeta = a->dbeta + j0;
        /* dbeta = sum dy; dgamma = sum dy xhat, xhat = (x - mean) invstd */
        for (int64_t j = 0; j < w; j++) sdy[j] = sdyx[j] = 0;
        for (int64_t r = 0; r < n; r++) {
            const T *x = a->x + r * c + j0, *dy = a->dy + r * c + j0;
            for (int64_t j = 0; j < w; j++) {
                T xhat = (x[j] - mean[j]) * invstd[j];
                sdy[j] += (double)dy[j];
                sdyx[j] += (double)(dy[j] * xhat);
            }
        }
        for (int64_t j = 0; j < w; j++) {
            dbeta[j] = (T)sdy[j];
            dgamma[j] = (T)sdyx[j];
        }
        if (a->training) {
            /* the batch mean and variance depend on x too:
             * dx = gamma invstd / n (n dy - dbeta - xhat dgamma) */
            T nt = (T)n;
            for (int64_t j = 0; j < w; j++) k[j] = gamma[j] * invstd[j] / nt;
            for (int64_t r = 0; r < n; r++) {
                const T *x = a->x + r * c + j0, *dy = a->dy + r * c + j0;
                T *dx = a->dx + r * c + j0;
                for (int64_t j = 0; j < w; j++) {
                    T xhat = (x[j] - mean[j]) * invstd[j];
                    dx[j] = k[j] * (nt * dy[j] - dbeta[j] - xhat * dgamma[j]);
                }
            }
        } else {
            for (int64_t j = 0; j < w; j++) k[j] = gamma[j] * invstd[j];
            for (int64_t r = 0; r < n; r++) {
                const T *dy = a->dy + r * c + j0;
                T *dx = a->dx + r * c + j0;
                for (int64_t j = 0; j < w; j++) dx[j] = dy[j] * k[j];
            }
        }
    }
}

static void FN(bn_run)(range_fn fn, struct FN(bn_args) *a) {
    if (a->n <= 0 || a->c <= 0) return;
    a->tile = column_tile(a->c);
    int64_t tiles = (a->c + a->tile - 1) / a->tile;
    parallel_for(fn, a, tiles, a->n * a->c >= MIN_PARALLEL_CHEAP ? 1 : tiles + 1);
}

void FN(batchnorm_forward)(const T *x, const T *gamma, const T *beta, T *running_mean,
                           T *running_var, T *y, T *mean, T *invstd, int64_t n, int64_t c,
                           int training, double momentum, double eps) {
    struct FN(bn_args) a = {x, gamma, beta, NULL, running_mean, running_var, y, mean, invstd};
    a.n = n;
    a.c = c;
    a.training = training;
    a.momentum = momentum;
    a.eps = eps;
    FN(bn_run)(FN(bn_forward_tiles), &a);
}

void FN(batchnorm_backward)(const T *dy, const T *x, const T *mean, const T *invstd,
                            const T *gamma, T *dx, T *dgamma, T *dbeta, int64_t n, int64_t c,
                            int training) {
    /* the backward reads mean and invstd only; the args struct holds them non-const */
    struct FN(bn_args) a = {x, gamma, NULL, dy, NULL, NULL, NULL, (T *)mean, (T *)invstd, dx,
                            dgamma, dbeta};
    a.n = n;
    a.c = c;
    a.training = training;
    FN(bn_run)(FN(bn_backward_tiles), &a);
}
