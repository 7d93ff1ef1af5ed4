/* Recurrent kernels for one float type T (template, see instantiate.h).
 *
 * Sequences are batch-first: x (n, steps, f), hidden states (n, steps, hidden),
 * gates (n, steps, G*hidden) with G = 1 (rnn), 4 (lstm: i, f, g, o) or 3 (gru:
 * r, z, n). Each step's GEMM reads the previous state hs[:, t - 1] in place (row
 * stride steps * hidden); dW_h accumulates over steps in BLAS (beta = 1), in
 * the reference's order.
 * Elementwise operations follow reference.py's order, in T, with sigmoid and
 * tanh in double for double, in float within a few ulp for float (the
 * reference rounds them once from double; recurrent.c gate_sigmoid,
 * gate_tanh); bias gradients summed in double. */

/* out (n * steps, width) = x (n * steps, f) @ W_x: every step's input projection,
 * into the array its step then overwrites (gates, or hs for the simple RNN) */
static void FN(project)(const T *x, const T *W_x, T *out, int64_t rows, int64_t f, int64_t width) {
    FN(gemm)(0, 0, rows, width, f, x, f, W_x, width, 0, out, width);
}

/* C (m, n) = op(A) B + beta C as one GEMM per block of C's (and B's) columns,
 * the blocks' width the largest power of two, from 16, whose GEMM has at most
 * SMALL_GEMM_MADDS multiply-adds (recurrent.c), or all n columns in one GEMM
 * when that fits or no block of 16 would. */
static void FN(gemm_tiles)(int ta, int tb, int64_t m, int64_t n, int64_t k, const T *a,
                           int64_t lda, const T *b, int64_t ldb, T beta, T *c, int64_t ldc) {
    int64_t tile = 16;
    while (m * k * tile * 2 <= SMALL_GEMM_MADDS) tile *= 2;
    if (m * k * n <= SMALL_GEMM_MADDS || m * k * 16 > SMALL_GEMM_MADDS) tile = n;
    for (int64_t j = 0; j < n; j += tile) /* C's columns j.. are B's rows j.. when tb */
        FN(gemm)(ta, tb, m, n - j < tile ? n - j : tile, k, a, lda, b + (tb ? j * ldb : j), ldb,
                 beta, c + j, ldc);
}

/* z (n, width) = h_{t-1} @ W_h, h_{t-1} = hs[:, t - 1] (h0 at t = 0) */
static void FN(recurrent_gemm)(int64_t t, const T *h0, const T *hs, const T *W_h, T *z, int64_t n,
                               int64_t steps, int64_t hidden, int64_t width) {
    if (t)
        FN(gemm_tiles)(0, 0, n, width, hidden, hs + (t - 1) * hidden, steps * hidden, W_h, width, 0,
                       z, width);
    else
        FN(gemm_tiles)(0, 0, n, width, hidden, h0, hidden, W_h, width, 0, z, width);
}

/* dW_h += h_{t-1}^T @ dz_t (unless dW_h is NULL); dh = dz_t @ W_h^T + beta dh
 * (dz_t (n, width), row stride ld) */
static void FN(backward_gemms)(int64_t t, const T *h0, const T *hs, const T *W_h, const T *dzt,
                               int64_t ld, T *dW_h, T *dh, T beta, int64_t n, int64_t steps,
                               int64_t hidden, int64_t width) {
    if (dW_h && t)
        FN(gemm_tiles)(1, 0, hidden, width, n, hs + (t - 1) * hidden, steps * hidden, dzt, ld, 1,
                       dW_h, width);
    else if (dW_h)
        FN(gemm_tiles)(1, 0, hidden, width, n, h0, hidden, dzt, ld, 1, dW_h, width);
    FN(gemm_tiles)(0, 1, n, hidden, width, dzt, ld, W_h, width, beta, dh, hidden);
}

/* acc (len) += row, in double */
static void FN(add_row)(const T *restrict row, double *restrict acc, int64_t len) {
    for (int64_t j = 0; j < len; j++)
        acc[j] += (double)row[j];
}

/* dW_h = sum over t = steps - 1, ..., 0 of h_{t-1}^T @ dz_t, one GEMM over the
 * whole batch per step (dz (n, steps, width)): the reference's order of sums, so
 * that the split of the batch over threads changes no rounding of dW_h. With
 * dW_x (not NULL), dW_x = the sum of x_t^T @ dz_t likewise, beside it while
 * dz_t's columns are in the cache: one GEMM over all n steps rows, (f x n
 * steps) x (n steps x width) with f small, packs all of dz and ran at 65-86
 * GFLOP/s, per step 109 (bench/recurrent_floor.py, one thread, Zen 4; the
 * LSTM benchmark's backward 95 -> 85 us a sequence). With db_sums (not NULL),
 * db_sums = the column sums of dz in double, over the same rows of dz_t while
 * they are in the cache (a pass of their own read all of dz back from memory).
 * Only columns [c0, c1) of dW_h, dW_x and db_sums (each column's sums are the
 * same whatever the columns computed beside it). */
static void FN(recurrent_dW)(const T *h0, const T *hs, const T *x, const T *dz, T *dW_h, T *dW_x,
                             double *db_sums, int64_t n, int64_t steps, int64_t f, int64_t hidden,
                             int64_t width, int64_t c0, int64_t c1) {
    if (c1 <= c0) return;
    for (int64_t j = c0; db_sums && j < c1; j++)
        db_sums[j] = 0;
    for (int64_t i = 0; i < hidden; i++)
        for (int64_t j = c0; j < c1; j++)
            dW_h[i * width + j] = 0;
    for (int64_t i = 0; dW_x && i < f; i++)
        for (int64_t j = c0; j < c1; j++)
            dW_x[i * width + j] = 0;
    for (int64_t t = steps - 1; t >= 0; t--) {
        const T *dzt = dz + t * width + c0;
        if (t)
            FN(gemm_tiles)(1, 0, hidden, c1 - c0, n, hs + (t - 1) * hidden, steps * hidden, dzt,
                           steps * width, 1, dW_h + c0, width);
        else
            FN(gemm_tiles)(1, 0, hidden, c1 - c0, n, h0, hidden, dzt, steps * width, 1, dW_h + c0,
                           width);
        if (dW_x && f)
            FN(gemm_tiles)(1, 0, f, c1 - c0, n, x + t * f, steps * f, dzt, steps * width, 1,
                           dW_x + c0, width);
        for (int64_t i = 0; db_sums && i < n; i++)
            FN(add_row)(dzt + i * steps * width, db_sums + c0, c1 - c0);
    }
}

/* dx = dz @ W_x^T (unless dx is NULL), dW_x = x^T @ dz over every step (rows = n
 * steps of them; unless dW_x is NULL: recurrent_dW's); db = column sums of dz.
 * Only rows [r0, r1) of dx, columns [c0, c1) of dW_x and db. */
static void FN(input_side)(const T *x, const T *W_x, const T *dz, T *dx, T *dW_x, T *db,
                           int64_t rows, int64_t f, int64_t width, int64_t r0, int64_t r1,
                           int64_t c0, int64_t c1) {
    if (dx && r1 > r0)
        FN(gemm)(0, 1, r1 - r0, f, width, dz + r0 * width, width, W_x, width, 0, dx + r0 * f, f);
    if (dW_x && c1 > c0)
        FN(gemm)(1, 0, f, c1 - c0, rows, x, f, dz + c0, width, 0, dW_x + c0, width);
    if (!db) return; /* the GEMMs alone (recurrent_gemms), or db in recurrent_dW */
    /* each column summed over rows in row order, as before, but a block of
     * columns at a time along dz's rows (contiguous reads, not one per row) */
    enum { BLOCK = 256 };
    double acc[BLOCK];
    for (int64_t j0 = c0; j0 < c1; j0 += BLOCK) {
        int64_t cols = c1 - j0 < BLOCK ? c1 - j0 : BLOCK;
        for (int64_t j = 0; j < cols; j++)
            acc[j] = 0;
        for (int64_t r = 0; r < rows; r++)
            FN(add_row)(dz + r * width + j0, acc, cols);
        for (int64_t j = 0; j < cols; j++)
            db[j0 + j] = (T)acc[j];
    }
}

/* The gate passes, one row (one sequence, one step) per call: separate functions
 * (HOT, see recurrent.c) with restrict pointers, so that GCC vectorises them (in the
 * time loops above, the possible aliasing of their many arrays kept the LSTM and
 * GRU passes scalar). Gates at j, hidden + j, ... of a row of width G * hidden. */

/* hr = act((hr + b) + zr) over one row of hidden, hr in: the row's input
 * projection; NaN stays NaN under relu */
HOT static void FN(rnn_forward_row)(T *restrict hr, const T *restrict zr, const T *restrict b,
                                    int relu, int64_t hidden) {
    if (relu)
        for (int64_t j = 0; j < hidden; j++) {
            T v = (hr[j] + b[j]) + zr[j];
            hr[j] = v < 0 ? (T)0 : v;
        }
    else
        for (int64_t j = 0; j < hidden; j++)
            hr[j] = FN(gate_tanh)((hr[j] + b[j]) + zr[j]);
}

/* gates gr (i, f, g, o), cell c_row and state h_row of one row from its input
 * projection (gr on entry) and recurrent product zr (4 hidden each) and c_prev */
HOT static void FN(lstm_forward_row)(T *restrict gr, const T *restrict zr, const T *restrict b,
                                     const T *restrict c_prev, T *restrict c_row,
                                     T *restrict h_row, int64_t hidden) {
    for (int64_t j = 0; j < hidden; j++) {
        int64_t k = hidden + j, l = 2 * hidden + j, m = 3 * hidden + j;
        T ig = FN(gate_sigmoid)((gr[j] + b[j]) + zr[j]);
        T fg = FN(gate_sigmoid)((gr[k] + b[k]) + zr[k]);
        T gg = FN(gate_tanh)((gr[l] + b[l]) + zr[l]);
        T og = FN(gate_sigmoid)((gr[m] + b[m]) + zr[m]);
        T c = fg * c_prev[j] + ig * gg;
        gr[j] = ig;
        gr[k] = fg;
        gr[l] = gg;
        gr[m] = og;
        c_row[j] = c;
        h_row[j] = og * FN(gate_tanh)(c);
    }
}

/* dzr (4 hidden) of one row; dh, dc (hidden) the gradients its h_t and c_t
 * receive from step t + 1, dc replaced by c_{t-1}'s */
HOT static void FN(lstm_backward_row)(const T *restrict gr, const T *restrict c_row,
                                      const T *restrict c_prev, const T *restrict dh_row,
                                      T *restrict dzr, const T *restrict dh, T *restrict dc,
                                      int64_t hidden) {
    for (int64_t j = 0; j < hidden; j++) {
        T ig = gr[j], fg = gr[hidden + j], gg = gr[2 * hidden + j], og = gr[3 * hidden + j];
        T tc = FN(gate_tanh)(c_row[j]);
        T g = dh_row[j] + dh[j];
        T dcv = dc[j] + g * og * ((T)1 - tc * tc);
        dc[j] = dcv * fg;
        dzr[j] = dcv * gg * ig * ((T)1 - ig);
        dzr[hidden + j] = dcv * c_prev[j] * fg * ((T)1 - fg);
        dzr[2 * hidden + j] = dcv * ig * ((T)1 - gg * gg);
        dzr[3 * hidden + j] = g * tc * og * ((T)1 - og);
    }
}

/* gates gr (r, z, n; the row's input projection on entry), hn_row (h_{t-1}
 * W_hn + b_hn) and h_row of one row */
HOT static void FN(gru_forward_row)(T *restrict gr, const T *restrict zr,
                                    const T *restrict b_x, const T *restrict b_h,
                                    const T *restrict h_prev, T *restrict hn_row,
                                    T *restrict h_row, int64_t hidden) {
    for (int64_t j = 0; j < hidden; j++) {
        int64_t k = hidden + j, m = 2 * hidden + j;
        T r = FN(gate_sigmoid)((gr[j] + b_x[j]) + (zr[j] + b_h[j]));
        T u = FN(gate_sigmoid)((gr[k] + b_x[k]) + (zr[k] + b_h[k]));
        T a_n = zr[m] + b_h[m];
        T nw = FN(gate_tanh)((gr[m] + b_x[m]) + r * a_n);
        gr[j] = r;
        gr[k] = u;
        gr[m] = nw;
        hn_row[j] = a_n;
        h_row[j] = ((T)1 - u) * nw + u * h_prev[j];
    }
}

/* dxr, dhr (3 hidden) of one row, their db_h terms added to acc (3 hidden); dh
 * (hidden) in: the gradient h_t receives from step t + 1; out: the direct path
 * to h_{t-1}, to which the step's GEMM adds dhw W_h^T */
HOT static void FN(gru_backward_row)(const T *restrict gr, const T *restrict hn_row,
                                     const T *restrict h_prev, const T *restrict dh_row,
                                     T *restrict dxr, T *restrict dhr, T *restrict dh,
                                     double *restrict acc, int64_t hidden) {
    for (int64_t j = 0; j < hidden; j++) {
        int64_t k = hidden + j, m = 2 * hidden + j;
        T r = gr[j], u = gr[k], nw = gr[m];
        T g = dh_row[j] + dh[j];
        T dn = g * ((T)1 - u) * ((T)1 - nw * nw);
        T dr = dn * hn_row[j] * r * ((T)1 - r);
        T du = g * (h_prev[j] - nw) * u * ((T)1 - u);
        T dnr = dn * r;
        dxr[j] = dr;
        dxr[k] = du;
        dxr[m] = dn;
        dhr[j] = dr;
        dhr[k] = du;
        dhr[m] = dnr;
        acc[j] += (double)dr;
        acc[k] += (double)du;
        acc[m] += (double)dnr;
        dh[j] = g * u;
    }
}

/* ------------------------------------------------- time loops over rows
 * Each runs the time loop of n sequences (batch rows): a range of the batch's
 * rows is a batch of its own with the same row strides (every array is
 * batch-first), so the callers below pass pointers to the range's first row.
 * The backward ones leave the input side (dx, dW_x, db) to their caller, and
 * dW_h too (recurrent_dW), but the GRU's, which sums dW_h and its db_h terms
 * (acc) over its rows (its dhw holds one step only). */
static void FN(rnn_forward_rows)(const T *x, const T *h0, const T *W_x, const T *W_h, const T *b,
                                 int relu, T *hs, T *z, int64_t n, int64_t steps, int64_t f,
                                 int64_t hidden) {
    FN(project)(x, W_x, hs, n * steps, f, hidden);
    for (int64_t t = 0; t < steps; t++) {
        FN(recurrent_gemm)(t, h0, hs, W_h, z, n, steps, hidden, hidden);
        for (int64_t i = 0; i < n; i++)
            FN(rnn_forward_row)(hs + (i * steps + t) * hidden, z + i * hidden, b, relu, hidden);
    }
}

static void FN(rnn_backward_rows)(const T *dhs, const T *h0, const T *W_h, const T *hs, int relu,
                                  T *dh0, T *dz, int64_t n, int64_t steps, int64_t hidden) {
    /* dh0 holds the gradient h_t receives from step t + 1 throughout */
    for (int64_t i = 0; i < n * hidden; i++)
        dh0[i] = 0;
    for (int64_t t = steps - 1; t >= 0; t--) {
        for (int64_t i = 0; i < n; i++) {
            int64_t at = (i * steps + t) * hidden;
            for (int64_t j = 0; j < hidden; j++) {
                T g = dhs[at + j] + dh0[i * hidden + j], y = hs[at + j];
                dz[at + j] = relu ? (y > 0 ? g : (T)0) : g * ((T)1 - y * y);
            }
        }
        FN(backward_gemms)(t, h0, hs, W_h, dz + t * hidden, steps * hidden, NULL, dh0, 0, n, steps,
                           hidden, hidden);
    }
}

static void FN(lstm_forward_rows)(const T *x, const T *h0, const T *c0, const T *W_x,
                                  const T *W_h, const T *b, T *hs, T *cs, T *gates, T *z,
                                  int64_t n, int64_t steps, int64_t f, int64_t hidden) {
    int64_t w = 4 * hidden;
    FN(project)(x, W_x, gates, n * steps, f, w);
    for (int64_t t = 0; t < steps; t++) {
        FN(recurrent_gemm)(t, h0, hs, W_h, z, n, steps, hidden, w);
        for (int64_t i = 0; i < n; i++) {
            int64_t at = (i * steps + t) * hidden;
            FN(lstm_forward_row)(gates + (i * steps + t) * w, z + i * w, b,
                                 t ? cs + at - hidden : c0 + i * hidden, cs + at, hs + at, hidden);
        }
    }
}

static void FN(lstm_backward_rows)(const T *dhs, const T *h0, const T *c0, const T *W_h,
                                   const T *hs, const T *cs, const T *gates, T *dh0, T *dc0,
                                   T *dz, int64_t n, int64_t steps, int64_t hidden) {
    int64_t w = 4 * hidden;
    /* dh0, dc0 hold the gradients h_t and c_t receive from step t + 1 throughout */
    for (int64_t i = 0; i < n * hidden; i++)
        dh0[i] = dc0[i] = 0;
    for (int64_t t = steps - 1; t >= 0; t--) {
        for (int64_t i = 0; i < n; i++) {
            int64_t at = (i * steps + t) * hidden;
            FN(lstm_backward_row)(gates + (i * steps + t) * w, cs + at,
                                  t ? cs + at - hidden : c0 + i * hidden, dhs + at,
                                  dz + (i * steps + t) * w, dh0 + i * hidden, dc0 + i * hidden, hidden);
        }
        FN(backward_gemms)(t, h0, hs, W_h, dz + t * w, steps * w, NULL, dh0, 0, n, steps, hidden, w);
    }
}

static void FN(gru_forward_rows)(const T *x, const T *h0, const T *W_x, const T *W_h, const T *b_x,
                                 const T *b_h, T *hs, T *gates, T *hn, T *z, int64_t n,
                                 int64_t steps, int64_t f, int64_t hidden) {
    int64_t w = 3 * hidden;
    FN(project)(x, W_x, gates, n * steps, f, w);
    for (int64_t t = 0; t < steps; t++) {
        FN(recurrent_gemm)(t, h0, hs, W_h, z, n, steps, hidden, w);
        for (int64_t i = 0; i < n; i++) {
            int64_t at = (i * steps + t) * hidden;
            FN(gru_forward_row)(gates + (i * steps + t) * w, z + i * w, b_x, b_h,
                                t ? hs + at - hidden : h0 + i * hidden, hn + at, hs + at, hidden);
        }
    }
}

/* dxw (n, steps, 3 hidden), dhw (n, 3 hidden) and acc (3 hidden, db_h's sums) workspaces */
static void FN(gru_backward_rows)(const T *dhs, const T *h0, const T *W_h, const T *hs,
                                  const T *gates, const T *hn, T *dh0, T *dW_h, T *dxw, T *dhw,
                                  double *acc, int64_t n, int64_t steps, int64_t hidden) {
    int64_t w = 3 * hidden;
    for (int64_t j = 0; j < w; j++)
        acc[j] = 0;
    for (int64_t i = 0; i < n * hidden; i++)
        dh0[i] = 0;
    for (int64_t i = 0; i < hidden * w; i++)
        dW_h[i] = 0;
    for (int64_t t = steps - 1; t >= 0; t--) {
        for (int64_t i = 0; i < n; i++) {
            int64_t at = (i * steps + t) * hidden;
            FN(gru_backward_row)(gates + (i * steps + t) * w, hn + at,
                                 t ? hs + at - hidden : h0 + i * hidden, dhs + at,
                                 dxw + (i * steps + t) * w, dhw + i * w, dh0 + i * hidden, acc, hidden);
        }
        FN(backward_gemms)(t, h0, hs, W_h, dhw, w, dW_h, dh0, 1, n, steps, hidden, w);
    }
}

/* ------------------------------------------- the batch split over threads
 * The recurrence of each sequence is independent of the others', so a kernel
 * splits the batch rows into one contiguous range per thread and runs each
 * range's whole time loop on its thread with BLAS on one thread meanwhile
 * (parallel_blas_run): per step each thread issues one (rows, hidden) x
 * (hidden, G hidden) GEMM, where BLAS would split one (n, hidden) x (hidden,
 * G hidden) GEMM over its threads at every step, which at these sizes wastes
 * much of the second core. After the ranges the backward splits its columns of
 * width G hidden (after_range, BLAS still on one thread): dW_h and dW_x by
 * one GEMM each over the whole batch per step (recurrent_dW: the same sums in
 * the same order for any split), db over every step, and dx by rows:
 * so BLAS's threads never start. The GRU sums dW_h per range instead,
 * range p > 0 into slice p - 1 of part_dW_h (and its acc into part_acc), added
 * into the first in range order after (deterministic for a thread count). */
struct FN(recurrent_job) {
    int gate_count, relu; /* G: 1 rnn, 4 lstm, 3 gru */
    int gemms_only;       /* the GEMMs alone (recurrent_gemms), no elementwise pass */
    int whole_batch;      /* no split of the batch, whatever its size (recurrent_gemms) */
    int parts;            /* the ranges run_rows chose */
    /* the forward writes hs, cs, gates and hn; the backward only reads them */
    const T *dhs, *x, *h0, *c0, *W_x, *W_h, *b, *b_h;
    T *hs, *cs, *gates, *hn, *xw, *z, *dh0, *dc0, *dW_h, *dz, *dhw, *part_dW_h;
    T *dx, *dW_x, *db;
    double *acc, *part_acc;
    double *db_sums; /* db's sums in recurrent_dW (run_rows), else NULL: input_side's */
    int64_t n, steps, f, hidden;
};

/* The GEMMs of the *_rows time loops above and nothing else, in their order:
 * forward, the projection and h_{t-1} W_h per step; backward, per step the
 * GEMMs of backward_gemms (dW_h's in the range only for the GRU, as
 * gru_backward_rows). The floor of the kernels' time (recurrent_gemms). */
static void FN(gemm_rows)(int backward, int gate_count, const T *x, const T *h0, const T *W_x,
                          const T *W_h, const T *hs, T *xw, T *z, T *dz, T *dh0, T *dW_h,
                          double *acc, int64_t n, int64_t steps, int64_t f, int64_t hidden) {
    int64_t w = gate_count * hidden;
    if (!backward) {
        FN(project)(x, W_x, xw, n * steps, f, w);
        for (int64_t t = 0; t < steps; t++)
            FN(recurrent_gemm)(t, h0, hs, W_h, z, n, steps, hidden, w);
        return;
    }
    /* the sums the kernels start from zero (beta = 1 GEMMs, the GRU's acc) */
    for (int64_t i = 0; i < n * hidden; i++)
        dh0[i] = 0;
    for (int64_t i = 0; gate_count == 3 && i < hidden * w; i++)
        dW_h[i] = 0;
    for (int64_t i = 0; gate_count == 3 && i < w; i++)
        acc[i] = 0;
    for (int64_t t = steps - 1; t >= 0; t--)
        if (gate_count == 3) /* dz: the GRU's dhw (n, 3 hidden) */
            FN(backward_gemms)(t, h0, hs, W_h, dz, w, dW_h, dh0, 1, n, steps, hidden, w);
        else
            FN(backward_gemms)(t, h0, hs, W_h, dz + t * w, steps * w, NULL, dh0, 0, n, steps,
                               hidden, w);
}

/* the time loop over batch rows [begin, end): every array offset to row begin */
static void FN(forward_range)(void *args, int64_t begin, int64_t end, int part) {
    const struct FN(recurrent_job) *j = args;
    int64_t n = end - begin, steps = j->steps, f = j->f, hidden = j->hidden;
    int64_t w = j->gate_count * hidden, seq = begin * steps; /* seq: row begin's step 0 */
    (void)part;
    const T *x = j->x + seq * f, *h0 = j->h0 + begin * hidden;
    T *hs = j->hs + seq * hidden, *z = j->z + begin * w;
    if (j->gemms_only) /* the projection into a workspace of its own, xw */
        FN(gemm_rows)(0, j->gate_count, x, h0, j->W_x, j->W_h, hs, j->xw + seq * w, z, NULL, NULL,
                      NULL, NULL, n, steps, f, hidden);
    else if (j->gate_count == 1)
        FN(rnn_forward_rows)(x, h0, j->W_x, j->W_h, j->b, j->relu, hs, z, n, steps, f, hidden);
    else if (j->gate_count == 4)
        FN(lstm_forward_rows)(x, h0, j->c0 + begin * hidden, j->W_x, j->W_h, j->b, hs,
                              j->cs + seq * hidden, j->gates + seq * w, z, n, steps, f, hidden);
    else
        FN(gru_forward_rows)(x, h0, j->W_x, j->W_h, j->b, j->b_h, hs, j->gates + seq * w,
                             j->hn + seq * hidden, z, n, steps, f, hidden);
}

static void FN(backward_range)(void *args, int64_t begin, int64_t end, int part) {
    const struct FN(recurrent_job) *j = args;
    int64_t n = end - begin, steps = j->steps, hidden = j->hidden;
    int64_t w = j->gate_count * hidden, seq = begin * steps;
    T *dW_h = part ? j->part_dW_h + (part - 1) * hidden * w : j->dW_h;
    const T *dhs = j->dhs + seq * hidden, *h0 = j->h0 + begin * hidden, *hs = j->hs + seq * hidden;
    T *dh0 = j->dh0 + begin * hidden, *dz = j->dz + seq * w;
    if (j->gemms_only)
        FN(gemm_rows)(1, j->gate_count, NULL, h0, NULL, j->W_h, hs, NULL, NULL,
                      j->gate_count == 3 ? j->dhw + begin * w : dz, dh0, dW_h,
                      part ? j->part_acc + (part - 1) * w : j->acc, n, steps, 0, hidden);
    else if (j->gate_count == 1)
        FN(rnn_backward_rows)(dhs, h0, j->W_h, hs, j->relu, dh0, dz, n, steps, hidden);
    else if (j->gate_count == 4)
        FN(lstm_backward_rows)(dhs, h0, j->c0 + begin * hidden, j->W_h, hs, j->cs + seq * hidden,
                               j->gates + seq * w, dh0, j->dc0 + begin * hidden, dz, n, steps,
                               hidden);
    else
        FN(gru_backward_rows)(dhs, h0, j->W_h, hs, j->gates + seq * w, j->hn + seq * hidden, dh0,
                              dW_h, dz, j->dhw + begin * w, part ? j->part_acc + (part - 1) * w : j->acc,
                              n, steps, hidden);
}

/* The backward's work after its time loops, part `part` of j->parts: columns
 * [begin, end) of dW_h (but the GRU's, summed by run_rows), dW_x and db, and a
 * range of dx's rows (n steps of them) */
static void FN(after_range)(void *args, int64_t begin, int64_t end, int part) {
    const struct FN(recurrent_job) *j = args;
    int64_t rows = j->n * j->steps, w = j->gate_count * j->hidden;
    int gru = j->gate_count == 3; /* the GRU's dW_h summed by run_rows */
    if (!gru)
        FN(recurrent_dW)(j->h0, j->hs, j->x, j->dz, j->dW_h, j->dW_x, j->db_sums, j->n, j->steps,
                         j->f, j->hidden, w, begin, end);
    for (int64_t k = begin; j->db_sums && k < end; k++)
        j->db[k] = (T)j->db_sums[k];
    FN(input_side)(j->x, j->W_x, j->dz, j->dx, gru ? j->dW_x : NULL, j->db_sums ? NULL : j->db,
                   rows, j->f, w, rows * part / j->parts, rows * (part + 1) / j->parts, begin, end);
}

/* Runs `range` over the batch rows [0, n) of job j: split over the threads when
 * the time loops' GEMMs (n steps hidden G hidden multiply-adds) reach
 * RECURRENT_PARALLEL_MIN; backward, then adds the GRU's ranges' dW_h and acc into
 * the first's and runs after_range over as many ranges of columns. Out of memory
 * for those sums, it runs serially. */
static void FN(run_rows)(range_fn range, struct FN(recurrent_job) *j, int64_t n, int backward) {
    int64_t w = j->gate_count * j->hidden, len = j->hidden * w;
    int parts = j->whole_batch || n * j->steps * len < RECURRENT_PARALLEL_MIN
                    ? 1 : parallel_blas_parts(n, 1);
    j->part_dW_h = NULL;
    j->part_acc = NULL;
    if (backward && parts > 1 && j->gate_count == 3) {
        j->part_dW_h = malloc((size_t)(parts - 1) * (size_t)len * sizeof(T));
        j->part_acc = malloc((size_t)(parts - 1) * (size_t)w * sizeof(double));
        if (!j->part_dW_h || !j->part_acc) parts = 1;
    }
    parallel_blas_run(range, j, n, parts);
    for (int p = 1; backward && j->gate_count == 3 && p < parts; p++) {
        const T *slice = j->part_dW_h + (p - 1) * len;
        for (int64_t k = 0; k < len; k++)
            j->dW_h[k] += slice[k];
        for (int64_t k = 0; k < w; k++)
            j->acc[k] += j->part_acc[(p - 1) * w + k];
    }
    free(j->part_dW_h);
    free(j->part_acc);
    j->n = n;
    j->parts = parts;
    /* db's sums beside dW_h's (out of memory: input_side's pass) */
    j->db_sums = backward && j->db && j->gate_count != 3 ? malloc((size_t)w * sizeof(double)) : NULL;
    if (backward)
        parallel_blas_run(FN(after_range), j, w, parts);
    free(j->db_sums);
}

/* ---------------------------------------------------------- the kernels */
void FN(rnn_forward)(const T *x, const T *h0, const T *W_x, const T *W_h, const T *b, int relu,
                     T *hs, T *z, int64_t n, int64_t steps, int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = 1, .relu = relu, .x = x, .h0 = h0, .W_x = W_x,
                                  .W_h = W_h, .b = b, .hs = hs, .z = z, .steps = steps,
                                  .f = f, .hidden = hidden};
    FN(run_rows)(FN(forward_range), &j, n, 0);
}

void FN(rnn_backward)(const T *dhs, const T *x, const T *h0, const T *W_x, const T *W_h,
                      const T *hs, int relu, T *dx, T *dh0, T *dW_x, T *dW_h, T *db, T *dz,
                      int64_t n, int64_t steps, int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = 1, .relu = relu, .dhs = dhs, .x = x, .h0 = h0,
                                  .W_x = W_x, .W_h = W_h, .hs = (T *)hs, .dh0 = dh0, .dW_h = dW_h,
                                  .dz = dz, .dx = dx, .dW_x = dW_x, .db = db, .steps = steps,
                                  .f = f, .hidden = hidden};
    FN(run_rows)(FN(backward_range), &j, n, 1);
}

void FN(lstm_forward)(const T *x, const T *h0, const T *c0, const T *W_x, const T *W_h,
                      const T *b, T *hs, T *cs, T *gates, T *z, int64_t n, int64_t steps,
                      int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = 4, .x = x, .h0 = h0, .c0 = c0, .W_x = W_x,
                                  .W_h = W_h, .b = b, .hs = hs, .cs = cs, .gates = gates,
                                  .z = z, .steps = steps, .f = f, .hidden = hidden};
    FN(run_rows)(FN(forward_range), &j, n, 0);
}

void FN(lstm_backward)(const T *dhs, const T *x, const T *h0, const T *c0, const T *W_x,
                       const T *W_h, const T *hs, const T *cs, const T *gates, T *dx, T *dh0,
                       T *dc0, T *dW_x, T *dW_h, T *db, T *dz, int64_t n, int64_t steps,
                       int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = 4, .dhs = dhs, .x = x, .h0 = h0, .c0 = c0,
                                  .W_x = W_x, .W_h = W_h, .hs = (T *)hs, .cs = (T *)cs,
                                  .gates = (T *)gates, .dh0 = dh0, .dc0 = dc0, .dW_h = dW_h,
                                  .dz = dz, .dx = dx, .dW_x = dW_x, .db = db, .steps = steps,
                                  .f = f, .hidden = hidden};
    FN(run_rows)(FN(backward_range), &j, n, 1);
}

void FN(gru_forward)(const T *x, const T *h0, const T *W_x, const T *W_h, const T *b_x,
                     const T *b_h, T *hs, T *gates, T *hn, T *z, int64_t n, int64_t steps,
                     int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = 3, .x = x, .h0 = h0, .W_x = W_x, .W_h = W_h,
                                  .b = b_x, .b_h = b_h, .hs = hs, .gates = gates, .hn = hn,
                                  .z = z, .steps = steps, .f = f, .hidden = hidden};
    FN(run_rows)(FN(forward_range), &j, n, 0);
}

/* dxw (n, steps, 3 hidden), dhw (n, 3 hidden) and acc (3 hidden, db_h's sums) workspaces */
void FN(gru_backward)(const T *dhs, const T *x, const T *h0, const T *W_x, const T *W_h,
                      const T *hs, const T *gates, const T *hn, T *dx, T *dh0, T *dW_x, T *dW_h,
                      T *db_x, T *db_h, T *dxw, T *dhw, double *acc, int64_t n, int64_t steps,
                      int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = 3, .dhs = dhs, .x = x, .h0 = h0, .W_x = W_x,
                                  .W_h = W_h, .hs = (T *)hs, .gates = (T *)gates, .hn = (T *)hn,
                                  .dh0 = dh0, .dW_h = dW_h, .dz = dxw, .dhw = dhw, .dx = dx,
                                  .dW_x = dW_x, .db = db_x, .acc = acc, .steps = steps, .f = f,
                                  .hidden = hidden};
    FN(run_rows)(FN(backward_range), &j, n, 1);
    for (int64_t k = 0; k < 3 * hidden; k++)
        db_h[k] = (T)acc[k];
}

/* One training step's GEMMs of the rnn (gate_count 1), lstm (4) or gru (3)
 * kernels alone, issued as the kernels issue them (the same ranges, threads,
 * blocks and BLAS) with none of their elementwise passes: forward
 * (forward_range), backward (backward_range), then dW_h, dW_x and dx
 * (after_range, without db's sums); the GRU's dW_h sums over its ranges too.
 * With whole_batch, every GEMM on the whole batch and BLAS's threads, as the
 * kernels below their split size. The arrays' contents are not the kernels'
 * (no gate is computed): a floor for benchmarks, any finite inputs. dz (n,
 * steps, G hidden), dhw (n, 3 hidden) for the GRU. */
void FN(recurrent_gemms)(int gate_count, int whole_batch, const T *x, const T *h0, const T *W_x,
                         const T *W_h, T *hs, T *xw, T *z, T *dz, T *dhw, T *dx, T *dh0, T *dW_x,
                         T *dW_h, double *acc, int64_t n, int64_t steps, int64_t f,
                         int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = gate_count, .gemms_only = 1,
                                  .whole_batch = whole_batch, .x = x, .h0 = h0,
                                  .W_x = W_x, .W_h = W_h, .hs = hs, .xw = xw, .z = z, .dz = dz,
                                  .dhw = dhw, .dx = dx, .dh0 = dh0, .dW_x = dW_x, .dW_h = dW_h,
                                  .acc = acc, .steps = steps, .f = f, .hidden = hidden};
    FN(run_rows)(FN(forward_range), &j, n, 0);
    FN(run_rows)(FN(backward_range), &j, n, 1);
}
