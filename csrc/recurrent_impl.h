/* Recurrent kernels for one float type T (template, see instantiate.h).
 *
 * Sequences are batch-first: x (n, steps, f), hidden states (n, steps, hidden),
 * gates (n, steps, G*hidden) with G = 1 (rnn), 4 (lstm: i, f, g, o) or 3 (gru:
 * r, z, n). Each step's GEMM reads the previous state hs[:, t - 1] in place (row
 * stride steps * hidden). The rnn and lstm forwards add each step's input
 * projection x_t W_x and recurrent product h_{t-1} W_h in one array of a
 * step's rows (z: two GEMMs, the second with beta = 1) that the gate pass then
 * reads while it is in the cache; the gru's n gate needs them apart, so its
 * projection of every step is one GEMM into gates before the loop. The
 * backward writes each step's pre-activation gradients into rows that serve
 * every step (dz[:, 0]: in the cache, never written back between steps) and
 * takes from them at once, per range of the batch, that step's share of dW_h,
 * dW_x, db and dx; the ranges' sums are added in range order after.
 * Elementwise operations follow reference.py's, in T, with sigmoid and tanh in
 * double for double, in float within a few ulp for float (the reference rounds
 * them once from double; recurrent.c gate_sigmoid, gate_tanh); bias gradients
 * summed in double. The sums are the reference's terms in another order: float32
 * results are as accurate as the reference's against float64, not equal to its
 * rounding (fastnn.testing.reference_error). */

/* out (n * steps, width) = x (n * steps, f) @ W_x: every step's input projection,
 * into the array its step then overwrites (the GRU's gates) */
static void FN(project)(const T *x, const T *W_x, T *out, int64_t rows, int64_t f, int64_t width) {
    FN(gemm)(0, 0, rows, width, f, x, f, W_x, width, 0, out, width);
}

/* C (m, n) = op(A) B + beta C as one GEMM per block of C's (and B's) columns,
 * the blocks' width the largest power of two, from 16, whose GEMM has at most
 * SMALL_GEMM_MADDS multiply-adds (recurrent.c), or all n columns in one GEMM
 * when that fits or no block of 16 would. */
static void FN(gemm_tiles)(int ta, int tb, int64_t m, int64_t n, int64_t k, const T *a,
                           int64_t lda, const T *b, int64_t ldb, T beta, T *c, int64_t ldc) {
    int64_t tile = n; /* (m k = 0 included: no block ever exceeds the bound) */
    if (m * k * n > SMALL_GEMM_MADDS && m * k * 16 <= SMALL_GEMM_MADDS)
        for (tile = 16; m * k * tile * 2 <= SMALL_GEMM_MADDS;) tile *= 2;
    for (int64_t j = 0; j < n; j += tile) /* C's columns j.. are B's rows j.. when tb */
        FN(gemm)(ta, tb, m, n - j < tile ? n - j : tile, k, a, lda, b + (tb ? j * ldb : j), ldb,
                 beta, c + j, ldc);
}

/* z (n, width) = h_{t-1} @ W_h, h_{t-1} = hs[:, t - 1] (h0 at t = 0); with x (not
 * NULL) z = x_t @ W_x + h_{t-1} @ W_h, x_t = x[:, t] */
static void FN(recurrent_gemm)(int64_t t, const T *x, const T *W_x, const T *h0, const T *hs,
                               const T *W_h, T *z, int64_t n, int64_t steps, int64_t f,
                               int64_t hidden, int64_t width) {
    T beta = 0;
    if (x && f) {
        FN(gemm_tiles)(0, 0, n, width, f, x + t * f, steps * f, W_x, width, 0, z, width);
        beta = 1;
    }
    if (t)
        FN(gemm_tiles)(0, 0, n, width, hidden, hs + (t - 1) * hidden, steps * hidden, W_h, width,
                       beta, z, width);
    else
        FN(gemm_tiles)(0, 0, n, width, hidden, h0, hidden, W_h, width, beta, z, width);
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

/* The input side of step t over n rows: dW_x += x_t^T @ dz_t, db (double) += dz_t's
 * rows, dx_t = dz_t @ W_x^T unless dx is NULL (dz_t (n, width), row stride ld) */
static void FN(input_step)(int64_t t, const T *x, const T *W_x, const T *dzt, int64_t ld,
                           T *dW_x, double *db, T *dx, int64_t n, int64_t steps, int64_t f,
                           int64_t width) {
    if (f) {
        FN(gemm_tiles)(1, 0, f, width, n, x + t * f, steps * f, dzt, ld, 1, dW_x, width);
        if (dx)
            FN(gemm)(0, 1, n, f, width, dzt, ld, W_x, width, 0, dx + t * f, steps * f);
    }
    for (int64_t i = 0; db && i < n; i++)
        FN(add_row)(dzt + i * ld, db, width);
}

/* The gate passes, one row (one sequence, one step) per call: separate functions
 * (HOT, see recurrent.c) with restrict pointers, so that GCC vectorises them (in the
 * time loops above, the possible aliasing of their many arrays kept the LSTM and
 * GRU passes scalar). Gates at j, hidden + j, ... of a row of width G * hidden. */

/* hr = act(zr + b) over one row of hidden, zr the row's x_t W_x + h_{t-1} W_h;
 * NaN stays NaN under relu */
HOT static void FN(rnn_forward_row)(T *restrict hr, const T *restrict zr, const T *restrict b,
                                    int relu, int64_t hidden) {
    if (relu)
        for (int64_t j = 0; j < hidden; j++) {
            T v = zr[j] + b[j];
            hr[j] = v < 0 ? (T)0 : v;
        }
    else
        for (int64_t j = 0; j < hidden; j++)
            hr[j] = FN(gate_tanh)(zr[j] + b[j]);
}

/* gates gr (i, f, g, o), cell c_row and state h_row of one row from its x_t W_x +
 * h_{t-1} W_h (zr, 4 hidden) and c_prev */
HOT static void FN(lstm_forward_row)(T *restrict gr, const T *restrict zr, const T *restrict b,
                                     const T *restrict c_prev, T *restrict c_row,
                                     T *restrict h_row, int64_t hidden) {
    for (int64_t j = 0; j < hidden; j++) {
        int64_t k = hidden + j, l = 2 * hidden + j, m = 3 * hidden + j;
        T ig = FN(gate_sigmoid)(zr[j] + b[j]);
        T fg = FN(gate_sigmoid)(zr[k] + b[k]);
        T gg = FN(gate_tanh)(zr[l] + b[l]);
        T og = FN(gate_sigmoid)(zr[m] + b[m]);
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

/* The LSTM and GRU backward time loops read each row's gates and states of step
 * t - 1 after the GEMMs of step t, which stream more than the first-level cache
 * holds, and the rows of a batch-first (n, steps, width) array lie steps * width
 * apart, which the hardware prefetchers do not follow: the loads missed (perf:
 * most of the LSTM backward gate pass's samples on the loads of cs and gates).
 * So each row asks for its lines of the next step (in the loop's order) as it
 * starts this one, into the second-level cache (into the first, the GEMMs
 * evict them). Measured, the benchmark's LSTM backward alone (64 x 50 x 32 x
 * 128 float32, Zen 4, alternating in one process): 1 thread 3-5% faster, 2
 * threads 2-4%; the GRU's 1 thread 5-12%, 2 threads even; the rnn's rows (one
 * state each) gained nothing and do not ask. */
static void FN(prefetch_row)(const T *p, int64_t len) { prefetch_lines_l2(p, len * (int64_t)sizeof(T)); }

/* ------------------------------------------------- time loops over rows
 * Each runs the time loop of n sequences (batch rows): a range of the batch's
 * rows is a batch of its own with the same row strides (every array is
 * batch-first), so the callers below pass pointers to the range's first row.
 * The backward ones take the range's own sums (struct sums): dW_h, dW_x, db (and
 * the GRU's db_h terms, acc) of its rows, started from zero; dz's rows at step 0
 * (row stride steps G hidden) hold each step's pre-activation gradients in turn. */
struct FN(sums) {
    T *dW_h, *dW_x; /* (hidden, G hidden), (f, G hidden) */
    double *db, *acc; /* (G hidden) each; acc the GRU's only; db NULL for the GEMMs alone */
};

static void FN(zero_sums)(struct FN(sums) s, int64_t f, int64_t hidden, int64_t w) {
    for (int64_t i = 0; i < hidden * w; i++)
        s.dW_h[i] = 0;
    for (int64_t i = 0; i < f * w; i++)
        s.dW_x[i] = 0;
    for (int64_t i = 0; s.db && i < w; i++)
        s.db[i] = 0;
    for (int64_t i = 0; s.acc && i < w; i++)
        s.acc[i] = 0;
}

static void FN(rnn_forward_rows)(const T *x, const T *h0, const T *W_x, const T *W_h, const T *b,
                                 int relu, T *hs, T *z, int64_t n, int64_t steps, int64_t f,
                                 int64_t hidden) {
    for (int64_t t = 0; t < steps; t++) {
        FN(recurrent_gemm)(t, x, W_x, h0, hs, W_h, z, n, steps, f, hidden, hidden);
        for (int64_t i = 0; i < n; i++)
            FN(rnn_forward_row)(hs + (i * steps + t) * hidden, z + i * hidden, b, relu, hidden);
    }
}

static void FN(rnn_backward_rows)(const T *dhs, const T *x, const T *h0, const T *W_x,
                                  const T *W_h, const T *hs, int relu, T *dx, T *dh0, T *dz,
                                  struct FN(sums) s, int64_t n, int64_t steps, int64_t f,
                                  int64_t hidden) {
    int64_t ld = steps * hidden;
    FN(zero_sums)(s, f, hidden, hidden);
    /* dh0 holds the gradient h_t receives from step t + 1 throughout */
    for (int64_t i = 0; i < n * hidden; i++)
        dh0[i] = 0;
    for (int64_t t = steps - 1; t >= 0; t--) {
        for (int64_t i = 0; i < n; i++) {
            int64_t at = (i * steps + t) * hidden;
            for (int64_t j = 0; j < hidden; j++) {
                T g = dhs[at + j] + dh0[i * hidden + j], y = hs[at + j];
                dz[i * ld + j] = relu ? (y > 0 ? g : (T)0) : g * ((T)1 - y * y);
            }
        }
        FN(backward_gemms)(t, h0, hs, W_h, dz, ld, s.dW_h, dh0, 0, n, steps, hidden, hidden);
        FN(input_step)(t, x, W_x, dz, ld, s.dW_x, s.db, dx, n, steps, f, hidden);
    }
}

static void FN(lstm_forward_rows)(const T *x, const T *h0, const T *c0, const T *W_x,
                                  const T *W_h, const T *b, T *hs, T *cs, T *gates, T *z,
                                  int64_t n, int64_t steps, int64_t f, int64_t hidden) {
    int64_t w = 4 * hidden;
    for (int64_t t = 0; t < steps; t++) {
        FN(recurrent_gemm)(t, x, W_x, h0, hs, W_h, z, n, steps, f, hidden, w);
        for (int64_t i = 0; i < n; i++) {
            int64_t at = (i * steps + t) * hidden;
            FN(lstm_forward_row)(gates + (i * steps + t) * w, z + i * w, b,
                                 t ? cs + at - hidden : c0 + i * hidden, cs + at, hs + at, hidden);
        }
    }
}

static void FN(lstm_backward_rows)(const T *dhs, const T *x, const T *h0, const T *c0,
                                   const T *W_x, const T *W_h, const T *hs, const T *cs,
                                   const T *gates, T *dx, T *dh0, T *dc0, T *dz,
                                   struct FN(sums) s, int64_t n, int64_t steps, int64_t f,
                                   int64_t hidden) {
    int64_t w = 4 * hidden, ld = steps * w;
    FN(zero_sums)(s, f, hidden, w);
    /* dh0, dc0 hold the gradients h_t and c_t receive from step t + 1 throughout */
    for (int64_t i = 0; i < n * hidden; i++)
        dh0[i] = dc0[i] = 0;
    for (int64_t t = steps - 1; t >= 0; t--) {
        for (int64_t i = 0; i < n; i++) {
            int64_t at = (i * steps + t) * hidden;
            if (t) { /* the next step's lines (see prefetch_row) */
                FN(prefetch_row)(gates + (i * steps + t - 1) * w, w);
                FN(prefetch_row)(t > 1 ? cs + at - 2 * hidden : c0 + i * hidden, hidden);
                FN(prefetch_row)(dhs + at - hidden, hidden);
            }
            FN(lstm_backward_row)(gates + (i * steps + t) * w, cs + at,
                                  t ? cs + at - hidden : c0 + i * hidden, dhs + at, dz + i * ld,
                                  dh0 + i * hidden, dc0 + i * hidden, hidden);
        }
        FN(backward_gemms)(t, h0, hs, W_h, dz, ld, s.dW_h, dh0, 0, n, steps, hidden, w);
        FN(input_step)(t, x, W_x, dz, ld, s.dW_x, s.db, dx, n, steps, f, w);
    }
}

static void FN(gru_forward_rows)(const T *x, const T *h0, const T *W_x, const T *W_h, const T *b_x,
                                 const T *b_h, T *hs, T *gates, T *hn, T *z, int64_t n,
                                 int64_t steps, int64_t f, int64_t hidden) {
    int64_t w = 3 * hidden;
    FN(project)(x, W_x, gates, n * steps, f, w);
    for (int64_t t = 0; t < steps; t++) {
        FN(recurrent_gemm)(t, NULL, NULL, h0, hs, W_h, z, n, steps, f, hidden, w);
        for (int64_t i = 0; i < n; i++) {
            int64_t at = (i * steps + t) * hidden;
            FN(gru_forward_row)(gates + (i * steps + t) * w, z + i * w, b_x, b_h,
                                t ? hs + at - hidden : h0 + i * hidden, hn + at, hs + at, hidden);
        }
    }
}

/* dxw: the input side's dz (its rows at step 0 serve every step), dhw (n, 3
 * hidden) the recurrent side's */
static void FN(gru_backward_rows)(const T *dhs, const T *x, const T *h0, const T *W_x,
                                  const T *W_h, const T *hs, const T *gates, const T *hn, T *dx,
                                  T *dh0, T *dxw, T *dhw, struct FN(sums) s, int64_t n,
                                  int64_t steps, int64_t f, int64_t hidden) {
    int64_t w = 3 * hidden, ld = steps * w;
    FN(zero_sums)(s, f, hidden, w);
    for (int64_t i = 0; i < n * hidden; i++)
        dh0[i] = 0;
    for (int64_t t = steps - 1; t >= 0; t--) {
        for (int64_t i = 0; i < n; i++) {
            int64_t at = (i * steps + t) * hidden;
            if (t) { /* the next step's lines (see prefetch_row) */
                FN(prefetch_row)(gates + (i * steps + t - 1) * w, w);
                FN(prefetch_row)(hn + at - hidden, hidden);
                FN(prefetch_row)(t > 1 ? hs + at - 2 * hidden : h0 + i * hidden, hidden);
                FN(prefetch_row)(dhs + at - hidden, hidden);
            }
            FN(gru_backward_row)(gates + (i * steps + t) * w, hn + at,
                                 t ? hs + at - hidden : h0 + i * hidden, dhs + at, dxw + i * ld,
                                 dhw + i * w, dh0 + i * hidden, s.acc, hidden);
        }
        FN(backward_gemms)(t, h0, hs, W_h, dhw, w, s.dW_h, dh0, 1, n, steps, hidden, w);
        FN(input_step)(t, x, W_x, dxw, ld, s.dW_x, s.db, dx, n, steps, f, w);
    }
}

/* ------------------------------------------- the batch split over threads
 * The recurrence of each sequence is independent of the others', so a kernel
 * splits the batch rows into one contiguous range per thread and runs each
 * range's whole time loop on its thread with BLAS on one thread meanwhile
 * (parallel_blas_run): per step each thread issues one (rows, hidden) x
 * (hidden, G hidden) GEMM, where BLAS would split one (n, hidden) x (hidden,
 * G hidden) GEMM over its threads at every step, which at these sizes wastes
 * much of the second core. Each backward range sums its own dW_h, dW_x and db
 * (range p > 0 into block p - 1 of part_T and part_d), added into the first's
 * in range order after: deterministic for a thread count, and no pass after the
 * loops reads dz again. */
struct FN(recurrent_job) {
    int gate_count, relu; /* G: 1 rnn, 4 lstm, 3 gru */
    int gemms_only;       /* the GEMMs alone (recurrent_gemms), no elementwise pass */
    int whole_batch;      /* no split of the batch, whatever its size (recurrent_gemms) */
    int saved;            /* recurrent_gemms with the saved arrays' traffic (saved_rows) */
    /* the forward writes hs, cs, gates and hn; the backward only reads them */
    const T *dhs, *x, *h0, *c0, *W_x, *W_h, *b, *b_h;
    T *hs, *cs, *gates, *hn, *xw, *z, *dh0, *dc0, *dz, *dhw, *dx;
    struct FN(sums) sums;  /* the first range's: the outputs' */
    T *part_T;             /* ranges p > 0: (hidden + f) G hidden each, dW_h then dW_x */
    double *part_d;        /* ranges p > 0: 2 G hidden each, db then acc */
    int64_t steps, f, hidden;
};

/* The sums of range `part` (see recurrent_job) */
static struct FN(sums) FN(range_sums)(const struct FN(recurrent_job) *j, int part) {
    int64_t w = j->gate_count * j->hidden;
    if (!part) return j->sums;
    T *block = j->part_T + (part - 1) * (j->hidden + j->f) * w;
    double *d = j->part_d + (part - 1) * 2 * w;
    struct FN(sums) s = {block, block + j->hidden * w, d, j->sums.acc ? d + w : NULL};
    return s;
}

/* The memory traffic of the arrays a forward saves for its backward, with no
 * gate math (recurrent_gemms with saved arrays, for rnn and lstm): at step t
 * the forward writes each row's state, and the lstm's gates and cell, from
 * its z row (the state scaled by 0.01, so that the steps' products stay
 * finite); the backward reads each row's saved values and dhs and writes its
 * dz row from them, the lstm asking for the next step's lines first, as the
 * kernels do. */
static void FN(saved_forward_rows)(const T *z, T *hs, T *cs, T *gates, int64_t t, int64_t n,
                                   int64_t steps, int64_t hidden, int64_t w) {
    for (int64_t i = 0; i < n; i++) {
        int64_t at = (i * steps + t) * hidden;
        const T *zr = z + i * w;
        T *h = hs + at;
        if (gates) {
            T *gr = gates + (i * steps + t) * w;
            for (int64_t k = 0; k < w; k++)
                gr[k] = zr[k];
            for (int64_t k = 0; k < hidden; k++)
                cs[at + k] = zr[k];
        }
        for (int64_t k = 0; k < hidden; k++)
            h[k] = (T)0.01 * zr[w - hidden + k];
    }
}

static void FN(saved_backward_rows)(const T *dhs, const T *h0, const T *hs, const T *cs,
                                    const T *gates, T *dz, int64_t t, int64_t n, int64_t steps,
                                    int64_t hidden, int64_t w) {
    int64_t ld = steps * w;
    for (int64_t i = 0; i < n; i++) {
        int64_t at = (i * steps + t) * hidden;
        T *dzr = dz + i * ld;
        if (gates) {
            if (t) {
                FN(prefetch_row)(gates + (i * steps + t - 1) * w, w);
                FN(prefetch_row)(t > 1 ? cs + at - 2 * hidden : h0 + i * hidden, hidden);
                FN(prefetch_row)(dhs + at - hidden, hidden);
            }
            const T *gr = gates + (i * steps + t) * w, *c_prev = t ? cs + at - hidden : h0 + i * hidden;
            for (int64_t k = 0; k < w; k++)
                dzr[k] = (T)0.01 * gr[k];
            for (int64_t k = 0; k < hidden; k++)
                dzr[k] += (T)0.01 * (dhs[at + k] + cs[at + k] - c_prev[k]);
        } else {
            for (int64_t k = 0; k < hidden; k++)
                dzr[k] = (T)0.01 * (dhs[at + k] + hs[at + k]);
        }
    }
}

/* The GEMMs of the *_rows time loops above and nothing else, in their order:
 * forward, per step x_t W_x and h_{t-1} W_h (the GRU's projection of every step
 * once before, into xw); backward, per step those of backward_gemms and
 * input_step (dz's rows at step 0 for every step; the GRU's dhw for the
 * recurrent side). The floor of the kernels' time (recurrent_gemms). */
static void FN(gemm_rows)(int backward, int gate_count, const T *x, const T *h0, const T *W_x,
                          const T *W_h, T *hs, T *xw, T *z, T *dz, T *dhw, T *dx, T *dh0,
                          int saved, T *cs, T *gates, const T *dhs, struct FN(sums) s, int64_t n,
                          int64_t steps, int64_t f, int64_t hidden) {
    int64_t w = gate_count * hidden, ld = steps * w;
    if (!backward) {
        if (gate_count == 3)
            FN(project)(x, W_x, xw, n * steps, f, w);
        for (int64_t t = 0; t < steps; t++) {
            FN(recurrent_gemm)(t, gate_count == 3 ? NULL : x, W_x, h0, hs, W_h, z, n, steps, f,
                               hidden, w);
            if (saved)
                FN(saved_forward_rows)(z, hs, cs, gates, t, n, steps, hidden, w);
        }
        return;
    }
    /* the sums the kernels start from zero (beta = 1 GEMMs) */
    for (int64_t i = 0; i < n * hidden; i++)
        dh0[i] = 0;
    FN(zero_sums)(s, f, hidden, w);
    for (int64_t t = steps - 1; t >= 0; t--) {
        if (saved)
            FN(saved_backward_rows)(dhs, h0, hs, cs, gates, dz, t, n, steps, hidden, w);
        if (gate_count == 3)
            FN(backward_gemms)(t, h0, hs, W_h, dhw, w, s.dW_h, dh0, 1, n, steps, hidden, w);
        else
            FN(backward_gemms)(t, h0, hs, W_h, dz, ld, s.dW_h, dh0, 0, n, steps, hidden, w);
        FN(input_step)(t, x, W_x, dz, ld, s.dW_x, NULL, dx, n, steps, f, w);
    }
}

/* the time loop over batch rows [begin, end): every array offset to row begin */
static void FN(forward_range)(void *args, int64_t begin, int64_t end, int part) {
    const struct FN(recurrent_job) *j = args;
    int64_t n = end - begin, steps = j->steps, f = j->f, hidden = j->hidden;
    int64_t w = j->gate_count * hidden, seq = begin * steps; /* seq: row begin's step 0 */
    (void)part;
    const T *x = j->x + seq * f, *h0 = j->h0 + begin * hidden;
    T *hs = j->hs + seq * hidden, *z = j->z + begin * w;
    if (j->gemms_only) /* the GRU's projection into a workspace of its own, xw */
        FN(gemm_rows)(0, j->gate_count, x, h0, j->W_x, j->W_h, hs, j->xw + seq * w, z, NULL, NULL,
                      NULL, NULL, j->saved, j->cs ? j->cs + seq * hidden : NULL,
                      j->gates ? j->gates + seq * w : NULL, NULL, j->sums, n, steps, f, hidden);
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
    int64_t n = end - begin, steps = j->steps, f = j->f, hidden = j->hidden;
    int64_t w = j->gate_count * hidden, seq = begin * steps;
    struct FN(sums) s = FN(range_sums)(j, part);
    const T *dhs = j->dhs + seq * hidden, *x = j->x + seq * f, *h0 = j->h0 + begin * hidden;
    const T *hs = j->hs + seq * hidden;
    T *dh0 = j->dh0 + begin * hidden, *dz = j->dz + seq * w, *dx = j->dx ? j->dx + seq * f : NULL;
    T *dhw = j->dhw ? j->dhw + begin * w : NULL;
    if (j->gemms_only)
        FN(gemm_rows)(1, j->gate_count, x, h0, j->W_x, j->W_h, (T *)hs, NULL, NULL, dz, dhw, dx,
                      dh0, j->saved, j->cs ? j->cs + seq * hidden : NULL,
                      j->gates ? j->gates + seq * w : NULL, dhs, s, n, steps, f, hidden);
    else if (j->gate_count == 1)
        FN(rnn_backward_rows)(dhs, x, h0, j->W_x, j->W_h, hs, j->relu, dx, dh0, dz, s, n, steps, f,
                              hidden);
    else if (j->gate_count == 4)
        FN(lstm_backward_rows)(dhs, x, h0, j->c0 + begin * hidden, j->W_x, j->W_h, hs,
                               j->cs + seq * hidden, j->gates + seq * w, dx, dh0,
                               j->dc0 + begin * hidden, dz, s, n, steps, f, hidden);
    else
        FN(gru_backward_rows)(dhs, x, h0, j->W_x, j->W_h, hs, j->gates + seq * w,
                              j->hn + seq * hidden, dx, dh0, dz, dhw, s, n, steps, f, hidden);
}

/* Runs `range` over the batch rows [0, n) of job j: split over the threads when
 * the time loops' GEMMs (n steps hidden G hidden multiply-adds) reach
 * RECURRENT_PARALLEL_MIN; backward, then adds the ranges' sums into the first's
 * in range order. Out of memory for those sums, it runs serially. */
static void FN(run_rows)(range_fn range, struct FN(recurrent_job) *j, int64_t n, int backward) {
    int64_t w = j->gate_count * j->hidden, len = (j->hidden + j->f) * w;
    int parts = j->whole_batch || n * j->steps * j->hidden * w < RECURRENT_PARALLEL_MIN
                    ? 1 : parallel_blas_parts(n, 1);
    j->part_T = NULL;
    j->part_d = NULL;
    if (backward && parts > 1) {
        j->part_T = malloc((size_t)(parts - 1) * (size_t)len * sizeof(T));
        j->part_d = malloc((size_t)(parts - 1) * 2 * (size_t)w * sizeof(double));
        if (!j->part_T || !j->part_d) parts = 1;
    }
    parallel_blas_run(range, j, n, parts);
    for (int p = 1; backward && p < parts; p++) {
        struct FN(sums) s = FN(range_sums)(j, p);
        for (int64_t k = 0; k < j->hidden * w; k++)
            j->sums.dW_h[k] += s.dW_h[k];
        for (int64_t k = 0; k < j->f * w; k++)
            j->sums.dW_x[k] += s.dW_x[k];
        for (int64_t k = 0; j->sums.db && k < w; k++)
            j->sums.db[k] += s.db[k];
        for (int64_t k = 0; s.acc && k < w; k++)
            j->sums.acc[k] += s.acc[k];
    }
    free(j->part_T);
    free(j->part_d);
}

/* ---------------------------------------------------------- the kernels
 * sums (2 G hidden doubles): workspace of the backward's bias sums */
void FN(rnn_forward)(const T *x, const T *h0, const T *W_x, const T *W_h, const T *b, int relu,
                     T *hs, T *z, int64_t n, int64_t steps, int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = 1, .relu = relu, .x = x, .h0 = h0, .W_x = W_x,
                                  .W_h = W_h, .b = b, .hs = hs, .z = z, .steps = steps,
                                  .f = f, .hidden = hidden};
    FN(run_rows)(FN(forward_range), &j, n, 0);
}

/* db = the sums, rounded to T */
static void FN(round_sums)(const double *sums, T *db, int64_t w) {
    for (int64_t k = 0; k < w; k++)
        db[k] = (T)sums[k];
}

void FN(rnn_backward)(const T *dhs, const T *x, const T *h0, const T *W_x, const T *W_h,
                      const T *hs, int relu, T *dx, T *dh0, T *dW_x, T *dW_h, T *db, T *dz,
                      double *sums, int64_t n, int64_t steps, int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = 1, .relu = relu, .dhs = dhs, .x = x, .h0 = h0,
                                  .W_x = W_x, .W_h = W_h, .hs = (T *)hs, .dh0 = dh0, .dz = dz,
                                  .dx = dx, .sums = {dW_h, dW_x, sums, NULL}, .steps = steps,
                                  .f = f, .hidden = hidden};
    FN(run_rows)(FN(backward_range), &j, n, 1);
    FN(round_sums)(sums, db, hidden);
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
                       T *dc0, T *dW_x, T *dW_h, T *db, T *dz, double *sums, int64_t n,
                       int64_t steps, int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = 4, .dhs = dhs, .x = x, .h0 = h0, .c0 = c0,
                                  .W_x = W_x, .W_h = W_h, .hs = (T *)hs, .cs = (T *)cs,
                                  .gates = (T *)gates, .dh0 = dh0, .dc0 = dc0, .dz = dz,
                                  .dx = dx, .sums = {dW_h, dW_x, sums, NULL}, .steps = steps,
                                  .f = f, .hidden = hidden};
    FN(run_rows)(FN(backward_range), &j, n, 1);
    FN(round_sums)(sums, db, 4 * hidden);
}

void FN(gru_forward)(const T *x, const T *h0, const T *W_x, const T *W_h, const T *b_x,
                     const T *b_h, T *hs, T *gates, T *hn, T *z, int64_t n, int64_t steps,
                     int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = 3, .x = x, .h0 = h0, .W_x = W_x, .W_h = W_h,
                                  .b = b_x, .b_h = b_h, .hs = hs, .gates = gates, .hn = hn,
                                  .z = z, .steps = steps, .f = f, .hidden = hidden};
    FN(run_rows)(FN(forward_range), &j, n, 0);
}

/* dxw (n, steps, 3 hidden) and dhw (n, 3 hidden) workspaces */
void FN(gru_backward)(const T *dhs, const T *x, const T *h0, const T *W_x, const T *W_h,
                      const T *hs, const T *gates, const T *hn, T *dx, T *dh0, T *dW_x, T *dW_h,
                      T *db_x, T *db_h, T *dxw, T *dhw, double *sums, int64_t n, int64_t steps,
                      int64_t f, int64_t hidden) {
    int64_t w = 3 * hidden;
    struct FN(recurrent_job) j = {.gate_count = 3, .dhs = dhs, .x = x, .h0 = h0, .W_x = W_x,
                                  .W_h = W_h, .hs = (T *)hs, .gates = (T *)gates, .hn = (T *)hn,
                                  .dh0 = dh0, .dz = dxw, .dhw = dhw, .dx = dx,
                                  .sums = {dW_h, dW_x, sums, sums + w}, .steps = steps, .f = f,
                                  .hidden = hidden};
    FN(run_rows)(FN(backward_range), &j, n, 1);
    FN(round_sums)(sums, db_x, w);
    FN(round_sums)(sums + w, db_h, w);
}

/* One training step's GEMMs of the rnn (gate_count 1), lstm (4) or gru (3)
 * kernels alone, issued as the kernels issue them (the same ranges, threads,
 * blocks and BLAS) with none of their elementwise passes: forward
 * (forward_range), then backward (backward_range: each range's dW_h and dW_x
 * sums, added after as the kernels add them). With whole_batch, every GEMM on
 * the whole batch and BLAS's threads, as the kernels below their split size.
 * With dhs (not NULL; rnn and lstm), also the traffic of the arrays the forward
 * saves for the backward (saved_forward_rows): hs written and read back, the
 * lstm's cs (n, steps, hidden) and gates (n, steps, 4 hidden) too, and dhs
 * (n, steps, hidden) read: the floor of the kernels' time with the bytes their
 * algorithm moves (with dhs NULL, hs is only read and cs, gates unused). The
 * arrays' contents are not the kernels' (no gate is computed): a floor for
 * benchmarks, any finite inputs. dz (n, steps, G hidden), dhw (n, 3 hidden)
 * for the GRU. */
void FN(recurrent_gemms)(int gate_count, int whole_batch, const T *x, const T *h0, const T *W_x,
                         const T *W_h, T *hs, T *xw, T *z, T *dz, T *dhw, T *dx, T *dh0,
                         T *dW_x, T *dW_h, const T *dhs, T *cs, T *gates, int64_t n,
                         int64_t steps, int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = gate_count, .gemms_only = 1,
                                  .whole_batch = whole_batch, .saved = dhs != NULL,
                                  .dhs = dhs, .cs = cs, .gates = gates, .x = x, .h0 = h0,
                                  .W_x = W_x, .W_h = W_h, .hs = hs, .xw = xw, .z = z, .dz = dz,
                                  .dhw = dhw, .dx = dx, .dh0 = dh0,
                                  .sums = {dW_h, dW_x, NULL, NULL}, .steps = steps, .f = f,
                                  .hidden = hidden};
    FN(run_rows)(FN(forward_range), &j, n, 0);
    FN(run_rows)(FN(backward_range), &j, n, 1);
}
