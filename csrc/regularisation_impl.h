/* Dropout and weight penalty for one float type T (template, see instantiate.h). */

/* splitmix64 constants, as reference.py */
#define GOLDEN_GAMMA 0x9E3779B97F4A7C15ull
#define MIX1 0xBF58476D1CE4E5B9ull
#define MIX2 0x94D049BB133111EBull

struct FN(dropout_args) {
    const T *x;
    T *y;
    uint64_t seed, threshold;
    T scale;
};

HOT_MUL64 static void FN(dropout_range)(void *args, int64_t i0, int64_t i1, int part) {
    const struct FN(dropout_args) *a = args;
    (void)part;
    for (int64_t i = i0; i < i1; i++) {
        /* the top 53 bits of splitmix64(seed + (i + 1) gamma), uint64 wrapping */
        uint64_t z = a->seed + (uint64_t)(i + 1) * GOLDEN_GAMMA;
        z = (z ^ (z >> 30)) * MIX1;
        z = (z ^ (z >> 27)) * MIX2;
        z ^= z >> 31;
        a->y[i] = FN(keep)(a->x[i] * a->scale, (z >> 11) >= a->threshold);
    }
}

void FN(dropout)(const T *x, T *y, int64_t n, uint64_t seed, uint64_t threshold, double scale) {
    struct FN(dropout_args) a = {.x = x, .y = y, .seed = seed, .threshold = threshold,
                                 .scale = (T)scale};
    parallel_for(FN(dropout_range), &a, n, MIN_PARALLEL_MATH);
}

struct FN(penalty_args) {
    const T *param;
    T *grad;
    double l2, l1;
    double sum_sq[MAX_PARTS], sum_abs[MAX_PARTS];
};

HOT static void FN(penalty_range)(void *args, int64_t i0, int64_t i1, int part) {
    struct FN(penalty_args) *a = args;
    const T *p = a->param;
    T *g = a->grad, l2 = (T)a->l2, l1 = (T)a->l1;
    double sq = 0, ab = 0;
    if (a->l2 != 0) {
#pragma omp simd reduction(+ : sq)
        for (int64_t i = i0; i < i1; i++) {
            sq += (double)p[i] * (double)p[i];
            g[i] += l2 * p[i];
        }
    }
    if (a->l1 != 0) {
#pragma omp simd reduction(+ : ab)
        for (int64_t i = i0; i < i1; i++) {
            ab += (double)FN(abs)(p[i]);
            T sign = p[i] > 0 ? (T)1 : p[i] < 0 ? (T)-1 : p[i]; /* sign(0) = 0, NaN stays */
            g[i] += l1 * sign;
        }
    }
    a->sum_sq[part] = sq;
    a->sum_abs[part] = ab;
}

double FN(weight_penalty)(const T *param, T *grad, int64_t n, double l2, double l1) {
    struct FN(penalty_args) a = {.param = param, .grad = grad, .l2 = l2, .l1 = l1};
    int parts = parallel_for(FN(penalty_range), &a, n, MIN_PARALLEL_CHEAP);
    double sq = 0, ab = 0;
    for (int p = 0; p < parts; p++) {
        sq += a.sum_sq[p];
        ab += a.sum_abs[p];
    }
    return 0.5 * l2 * sq + l1 * ab;
}
