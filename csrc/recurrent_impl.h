/* Recurrent kernels for one float type T (template, see instantiate.h).
 *
 * Sequences are batch-first: x (n, steps, f), hidden states (n, steps, hidden),
 * gates (n, steps, G*hidden) with G = 1 (rnn), 4 (lstm: i, f, g, o) or 3 (gru:
 * r, z, n). Each step's GEMM reads the previous state hs[:, t - 1] in place (row
 * stride steps * hidden; the lstm's last state only: one row per sequence,
 * states_before), the lstm's backward the states it rebuilds from its gates
 * and cells (lstm_backward_row). The rnn and lstm forwards add each step's
 * input projection x_t W_x and recurrent product h_{t-1} W_h in one array of a
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

/* The states h_{t-1} (n, hidden) a step reads: rows ld apart from h, h0 at t = 0
 * (rows hidden apart). A sequence of states is stored (n, steps, hidden): step
 * hidden, ld steps * hidden; the lstm's last state only (n, hidden): step 0, ld
 * hidden, every step overwriting the one before. */
struct FN(states) {
    const T *h;
    int64_t ld;
};

static struct FN(states) FN(states_before)(int64_t t, const T *h0, const T *hs, int64_t step,
                                           int64_t ld, int64_t hidden) {
    struct FN(states) s = {h0, hidden};
    if (t) {
        s.h = hs + (t - 1) * step;
        s.ld = ld;
    }
    return s;
}

/* h_{t-1} of a sequence of states hs (n, steps, hidden) */
static struct FN(states) FN(sequence_before)(int64_t t, const T *h0, const T *hs, int64_t steps,
                                             int64_t hidden) {
    return FN(states_before)(t, h0, hs, hidden, steps * hidden, hidden);
}

/* z (n, width) = h_{t-1} @ W_h; with x (not NULL) z = x_t @ W_x + h_{t-1} @ W_h,
 * x_t = x[:, t] */
static void FN(recurrent_gemm)(int64_t t, const T *x, const T *W_x, struct FN(states) h,
                               const T *W_h, T *z, int64_t n, int64_t steps, int64_t f,
                               int64_t hidden, int64_t width) {
    T beta = 0;
    if (x && f) {
        FN(gemm_tiles)(0, 0, n, width, f, x + t * f, steps * f, W_x, width, 0, z, width);
        beta = 1;
    }
    FN(gemm_tiles)(0, 0, n, width, hidden, h.h, h.ld, W_h, width, beta, z, width);
}

/* dW_h += h_{t-1}^T @ dz_t (unless dW_h is NULL); dh = dz_t @ W_h^T + beta dh
 * (dz_t (n, width), row stride ld) */
static void FN(backward_gemms)(struct FN(states) h, const T *W_h, const T *dzt, int64_t ld,
                               T *dW_h, T *dh, T beta, int64_t n, int64_t hidden, int64_t width) {
    if (dW_h)
        FN(gemm_tiles)(1, 0, hidden, width, n, h.h, h.ld, dzt, ld, 1, dW_h, width);
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
 * receive from step t + 1, dc replaced by c_{t-1}'s; tc: tanh(c_t) in,
 * tanh(c_{t-1}) out; hp: h_{t-1} = o_{t-1} tanh(c_{t-1}) rebuilt out, the
 * forward's own operations on the gate o_prev and cell c_prev it saved (so no
 * pass reads the states: the forward may keep the last only) */
HOT static void FN(lstm_backward_row)(const T *restrict gr, const T *restrict o_prev,
                                      const T *restrict c_prev, const T *restrict dh_row,
                                      T *restrict dzr, const T *restrict dh, T *restrict dc,
                                      T *restrict tc, T *restrict hp, int64_t hidden) {
    for (int64_t j = 0; j < hidden; j++) {
        T ig = gr[j], fg = gr[hidden + j], gg = gr[2 * hidden + j], og = gr[3 * hidden + j];
        T tcv = tc[j];
        T g = dh_row[j] + dh[j];
        T dcv = dc[j] + g * og * ((T)1 - tcv * tcv);
        dc[j] = dcv * fg;
        dzr[j] = dcv * gg * ig * ((T)1 - ig);
        dzr[hidden + j] = dcv * c_prev[j] * fg * ((T)1 - fg);
        dzr[2 * hidden + j] = dcv * ig * ((T)1 - gg * gg);
        dzr[3 * hidden + j] = g * tcv * og * ((T)1 - og);
        T tp = FN(gate_tanh)(c_prev[j]);
        tc[j] = tp;
        hp[j] = o_prev[j] * tp;
    }
}

/* tc = tanh(c_row) over one row of hidden: the first backward step's tc */
HOT static void FN(tanh_row)(const T *restrict c_row, T *restrict tc, int64_t hidden) {
    for (int64_t j = 0; j < hidden; j++)
        tc[j] = FN(gate_tanh)(c_row[j]);
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

/* The lstm backward's: row i's lines of step t - 1 (none at t = 0) as it starts
 * step t, whose gate row is gr and cell at offset at of cs: the gates but o_{t-1}
 * (this step reads it), o_{t-2}, c_{t-2} (c0's row at t = 1) and, unless NULL,
 * dhs's row */
static void FN(lstm_prefetch_next)(const T *gr, const T *cs, const T *c0, const T *dhs, int64_t at,
                                   int64_t t, int64_t i, int64_t hidden) {
    int64_t w = 4 * hidden;
    if (!t)
        return;
    FN(prefetch_row)(gr - w, 3 * hidden);
    if (t > 1)
        FN(prefetch_row)(gr - 2 * w + 3 * hidden, hidden);
    FN(prefetch_row)(t > 1 ? cs + at - 2 * hidden : c0 + i * hidden, hidden);
    if (dhs)
        FN(prefetch_row)(dhs + at - hidden, hidden);
}

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
        FN(recurrent_gemm)(t, x, W_x, FN(sequence_before)(t, h0, hs, steps, hidden), W_h, z, n,
                           steps, f, hidden, hidden);
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
        FN(backward_gemms)(FN(sequence_before)(t, h0, hs, steps, hidden), W_h, dz, ld, s.dW_h,
                           dh0, 0, n, hidden, hidden);
        FN(input_step)(t, x, W_x, dz, ld, s.dW_x, s.db, dx, n, steps, f, hidden);
    }
}

/* hs: (n, steps, hidden), or with last_only (n, hidden) the last state only,
 * which every step overwrites after its GEMM read it */
static void FN(lstm_forward_rows)(const T *x, const T *h0, const T *c0, const T *W_x,
                                  const T *W_h, const T *b, T *hs, int last_only, T *cs, T *gates,
                                  T *z, int64_t n, int64_t steps, int64_t f, int64_t hidden) {
    int64_t w = 4 * hidden, step = last_only ? 0 : hidden, ld = last_only ? hidden : steps * hidden;
    for (int64_t t = 0; t < steps; t++) {
        FN(recurrent_gemm)(t, x, W_x, FN(states_before)(t, h0, hs, step, ld, hidden), W_h, z, n,
                           steps, f, hidden, w);
        for (int64_t i = 0; i < n; i++) {
            int64_t at = (i * steps + t) * hidden;
            FN(lstm_forward_row)(gates + (i * steps + t) * w, z + i * w, b,
                                 t ? cs + at - hidden : c0 + i * hidden, cs + at,
                                 hs + i * ld + t * step, hidden);
        }
    }
    for (int64_t i = 0; last_only && !steps && i < n * hidden; i++)
        hs[i] = h0[i]; /* the last state of no step */
}

/* work (n, 2 hidden): each row's tc and hp (lstm_backward_row); zeros (hidden)
 * with dhs (n, hidden) the last state's gradient alone (zeros the other steps'),
 * NULL with dhs (n, steps, hidden) every step's */
static void FN(lstm_backward_rows)(const T *dhs, const T *x, const T *h0, const T *c0,
                                   const T *W_x, const T *W_h, const T *cs, const T *gates,
                                   T *dx, T *dh0, T *dc0, T *dz, T *work, const T *zeros,
                                   struct FN(sums) s, int64_t n, int64_t steps, int64_t f,
                                   int64_t hidden) {
    int64_t w = 4 * hidden, ld = steps * w, lw = 2 * hidden;
    FN(zero_sums)(s, f, hidden, w);
    /* dh0, dc0 hold the gradients h_t and c_t receive from step t + 1 throughout
     * (from the loss, h_T's alone with zeros) */
    for (int64_t i = 0; i < n * hidden; i++) {
        dh0[i] = zeros ? dhs[i] : 0;
        dc0[i] = 0;
    }
    for (int64_t i = 0; steps && i < n; i++)
        FN(tanh_row)(cs + (i * steps + steps - 1) * hidden, work + i * lw, hidden);
    for (int64_t t = steps - 1; t >= 0; t--) {
        for (int64_t i = 0; i < n; i++) {
            int64_t at = (i * steps + t) * hidden;
            const T *gr = gates + (i * steps + t) * w;
            FN(lstm_prefetch_next)(gr, cs, c0, zeros ? NULL : dhs, at, t, i, hidden);
            /* (at t = 0 the rebuilt state is not used: h0 is given) */
            FN(lstm_backward_row)(gr, t ? gr - w + 3 * hidden : gr + 3 * hidden,
                                  t ? cs + at - hidden : c0 + i * hidden, zeros ? zeros : dhs + at,
                                  dz + i * ld, dh0 + i * hidden, dc0 + i * hidden, work + i * lw,
                                  work + i * lw + hidden, hidden);
        }
        FN(backward_gemms)(FN(states_before)(t, h0, work + hidden, 0, lw, hidden), W_h, dz, ld,
                           s.dW_h, dh0, 0, n, hidden, w);
        FN(input_step)(t, x, W_x, dz, ld, s.dW_x, s.db, dx, n, steps, f, w);
    }
}

static void FN(gru_forward_rows)(const T *x, const T *h0, const T *W_x, const T *W_h, const T *b_x,
                                 const T *b_h, T *hs, T *gates, T *hn, T *z, int64_t n,
                                 int64_t steps, int64_t f, int64_t hidden) {
    int64_t w = 3 * hidden;
    FN(project)(x, W_x, gates, n * steps, f, w);
    for (int64_t t = 0; t < steps; t++) {
        FN(recurrent_gemm)(t, NULL, NULL, FN(sequence_before)(t, h0, hs, steps, hidden), W_h, z,
                           n, steps, f, hidden, w);
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
        FN(backward_gemms)(FN(sequence_before)(t, h0, hs, steps, hidden), W_h, dhw, w, s.dW_h,
                           dh0, 1, n, hidden, w);
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
    int last_only;        /* the lstm's hs, dhs (n, hidden): the last state's only */
    /* the forward writes hs, cs, gates and hn; the backward only reads them */
    const T *dhs, *x, *h0, *c0, *W_x, *W_h, *b, *b_h;
    T *hs, *cs, *gates, *hn, *xw, *z, *dh0, *dc0, *dz, *dhw, *dx;
    T *work;          /* the lstm backward's (n, 2 hidden) */
    const T *zeros;   /* the lstm backward's with last_only: a row of zeros (hidden) */
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
 * the forward writes each row's state (hs at its step and row strides), and the
 * lstm's gates and cell, from its z row (the state scaled by 0.01, so that the
 * steps' products stay finite); the backward reads each row's saved values and
 * its gradient (dhs, or the lstm's zeros with the last state's) and writes its
 * dz row from them, the lstm's tc and hp rows too, asking for the next step's
 * lines first, as the kernels do. */
static void FN(saved_forward_rows)(const T *z, T *hs, int64_t step, int64_t ld, T *cs, T *gates,
                                   int64_t t, int64_t n, int64_t steps, int64_t hidden, int64_t w) {
    for (int64_t i = 0; i < n; i++) {
        int64_t at = (i * steps + t) * hidden;
        const T *zr = z + i * w;
        T *h = hs + i * ld + t * step;
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
                                    const T *gates, T *work, const T *zeros, T *dz, int64_t t,
                                    int64_t n, int64_t steps, int64_t hidden, int64_t w) {
    int64_t ld = steps * w, lw = 2 * hidden;
    for (int64_t i = 0; i < n; i++) {
        int64_t at = (i * steps + t) * hidden;
        T *dzr = dz + i * ld;
        if (gates) {
            const T *gr = gates + (i * steps + t) * w;
            FN(lstm_prefetch_next)(gr, cs, h0, zeros ? NULL : dhs, at, t, i, hidden);
            const T *c_prev = t ? cs + at - hidden : h0 + i * hidden;
            const T *o_prev = t ? gr - w + 3 * hidden : gr + 3 * hidden;
            const T *dh_row = zeros ? zeros : dhs + at;
            T *tc = work + i * lw, *hp = tc + hidden;
            for (int64_t k = 0; k < w; k++)
                dzr[k] = (T)0.01 * gr[k];
            for (int64_t k = 0; k < hidden; k++) {
                dzr[k] += (T)0.01 * (dh_row[k] + tc[k] - c_prev[k]);
                tc[k] = (T)0.01 * c_prev[k];
                hp[k] = (T)0.01 * o_prev[k];
            }
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
 * recurrent side; the lstm's h_{t-1} from work's rows, as its kernel rebuilds
 * them there). The floor of the kernels' time (recurrent_gemms). */
static void FN(gemm_rows)(int backward, const struct FN(recurrent_job) *j, const T *x,
                          const T *h0, T *hs, T *xw, T *z, T *dz, T *dhw, T *dx, T *dh0,
                          T *cs, T *gates, T *work, const T *dhs, struct FN(sums) s, int64_t n) {
    int gate_count = j->gate_count;
    int64_t steps = j->steps, f = j->f, hidden = j->hidden;
    int64_t w = gate_count * hidden, ld = steps * w, lw = 2 * hidden;
    int64_t step = j->last_only ? 0 : hidden, ldh = j->last_only ? hidden : steps * hidden;
    if (!backward) {
        if (gate_count == 3)
            FN(project)(x, j->W_x, xw, n * steps, f, w);
        for (int64_t t = 0; t < steps; t++) {
            FN(recurrent_gemm)(t, gate_count == 3 ? NULL : x, j->W_x,
                               FN(states_before)(t, h0, hs, step, ldh, hidden), j->W_h, z, n,
                               steps, f, hidden, w);
            if (j->saved)
                FN(saved_forward_rows)(z, hs, step, ldh, cs, gates, t, n, steps, hidden, w);
        }
        return;
    }
    /* the sums the kernels start from zero (beta = 1 GEMMs); the lstm's rebuilt
     * states finite */
    for (int64_t i = 0; i < n * hidden; i++)
        dh0[i] = 0;
    for (int64_t i = 0; gate_count == 4 && i < n * lw; i++)
        work[i] = 0;
    FN(zero_sums)(s, f, hidden, w);
    for (int64_t t = steps - 1; t >= 0; t--) {
        if (j->saved)
            FN(saved_backward_rows)(dhs, h0, hs, cs, gates, work, j->zeros, dz, t, n, steps,
                                    hidden, w);
        if (gate_count == 3)
            FN(backward_gemms)(FN(sequence_before)(t, h0, hs, steps, hidden), j->W_h, dhw, w,
                               s.dW_h, dh0, 1, n, hidden, w);
        else if (gate_count == 4)
            FN(backward_gemms)(FN(states_before)(t, h0, work + hidden, 0, lw, hidden), j->W_h, dz,
                               ld, s.dW_h, dh0, 0, n, hidden, w);
        else
            FN(backward_gemms)(FN(sequence_before)(t, h0, hs, steps, hidden), j->W_h, dz, ld,
                               s.dW_h, dh0, 0, n, hidden, w);
        FN(input_step)(t, x, j->W_x, dz, ld, s.dW_x, NULL, dx, n, steps, f, w);
    }
}

/* the time loop over batch rows [begin, end): every array offset to row begin */
static void FN(forward_range)(void *args, int64_t begin, int64_t end, int part) {
    const struct FN(recurrent_job) *j = args;
    int64_t n = end - begin, steps = j->steps, f = j->f, hidden = j->hidden;
    int64_t w = j->gate_count * hidden, seq = begin * steps; /* seq: row begin's step 0 */
    (void)part;
    const T *x = j->x + seq * f, *h0 = j->h0 + begin * hidden;
    T *hs = j->hs + (j->last_only ? begin : seq) * hidden, *z = j->z + begin * w;
    if (j->gemms_only) /* the GRU's projection into a workspace of its own, xw */
        FN(gemm_rows)(0, j, x, h0, hs, j->xw + seq * w, z, NULL, NULL, NULL, NULL,
                      j->cs ? j->cs + seq * hidden : NULL, j->gates ? j->gates + seq * w : NULL,
                      NULL, NULL, j->sums, n);
    else if (j->gate_count == 1)
        FN(rnn_forward_rows)(x, h0, j->W_x, j->W_h, j->b, j->relu, hs, z, n, steps, f, hidden);
    else if (j->gate_count == 4)
        FN(lstm_forward_rows)(x, h0, j->c0 + begin * hidden, j->W_x, j->W_h, j->b, hs,
                              j->last_only, j->cs + seq * hidden, j->gates + seq * w, z, n, steps,
                              f, hidden);
    else
        FN(gru_forward_rows)(x, h0, j->W_x, j->W_h, j->b, j->b_h, hs, j->gates + seq * w,
                             j->hn + seq * hidden, z, n, steps, f, hidden);
}

static void FN(backward_range)(void *args, int64_t begin, int64_t end, int part) {
    const struct FN(recurrent_job) *j = args;
    int64_t n = end - begin, steps = j->steps, f = j->f, hidden = j->hidden;
    int64_t w = j->gate_count * hidden, seq = begin * steps;
    struct FN(sums) s = FN(range_sums)(j, part);
    const T *dhs = j->dhs ? j->dhs + (j->last_only ? begin : seq) * hidden : NULL;
    const T *x = j->x + seq * f, *h0 = j->h0 + begin * hidden;
    T *hs = j->hs ? j->hs + (j->last_only ? begin : seq) * hidden : NULL;
    T *dh0 = j->dh0 + begin * hidden, *dz = j->dz + seq * w, *dx = j->dx ? j->dx + seq * f : NULL;
    T *dhw = j->dhw ? j->dhw + begin * w : NULL, *work = j->work ? j->work + begin * 2 * hidden : NULL;
    if (j->gemms_only)
        FN(gemm_rows)(1, j, x, h0, hs, NULL, NULL, dz, dhw, dx, dh0,
                      j->cs ? j->cs + seq * hidden : NULL, j->gates ? j->gates + seq * w : NULL,
                      work, dhs, s, n);
    else if (j->gate_count == 1)
        FN(rnn_backward_rows)(dhs, x, h0, j->W_x, j->W_h, hs, j->relu, dx, dh0, dz, s, n, steps, f,
                              hidden);
    else if (j->gate_count == 4)
        FN(lstm_backward_rows)(dhs, x, h0, j->c0 + begin * hidden, j->W_x, j->W_h,
                               j->cs + seq * hidden, j->gates + seq * w, dx, dh0,
                               j->dc0 + begin * hidden, dz, work, j->zeros, s, n, steps, f, hidden);
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
        j->part_T = aligned_malloc((size_t)(parts - 1) * (size_t)len * sizeof(T));
        j->part_d = aligned_malloc((size_t)(parts - 1) * 2 * (size_t)w * sizeof(double));
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
                      const T *b, int last_only, T *hs, T *cs, T *gates, T *z, int64_t n,
                      int64_t steps, int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = 4, .last_only = last_only, .x = x, .h0 = h0,
                                  .c0 = c0, .W_x = W_x, .W_h = W_h, .b = b, .hs = hs, .cs = cs,
                                  .gates = gates, .z = z, .steps = steps, .f = f,
                                  .hidden = hidden};
    FN(run_rows)(FN(forward_range), &j, n, 0);
}

/* work ((2 n + 1) hidden): the rows' tc and hp, then (last_only) the zeros */
static const T *FN(lstm_zeros)(int last_only, T *work, int64_t n, int64_t hidden) {
    if (!last_only)
        return NULL;
    T *zeros = work + 2 * n * hidden;
    for (int64_t k = 0; k < hidden; k++)
        zeros[k] = 0;
    return zeros;
}

void FN(lstm_backward)(const T *dhs, const T *x, const T *h0, const T *c0, const T *W_x,
                       const T *W_h, const T *cs, const T *gates, int last_only, T *dx, T *dh0,
                       T *dc0, T *dW_x, T *dW_h, T *db, T *dz, T *work, double *sums, int64_t n,
                       int64_t steps, int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = 4, .last_only = last_only, .dhs = dhs, .x = x,
                                  .h0 = h0, .c0 = c0, .W_x = W_x, .W_h = W_h, .cs = (T *)cs,
                                  .gates = (T *)gates, .dh0 = dh0, .dc0 = dc0, .dz = dz,
                                  .dx = dx, .work = work,
                                  .zeros = FN(lstm_zeros)(last_only, work, n, hidden),
                                  .sums = {dW_h, dW_x, sums, NULL}, .steps = steps, .f = f,
                                  .hidden = hidden};
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
 * saves for the backward (saved_forward_rows): hs written (the rnn's read
 * back), the lstm's cs (n, steps, hidden) and gates (n, steps, 4 hidden) too,
 * and dhs read (n, steps, hidden; the lstm's with last_only (n, hidden), read
 * once): the floor of the kernels' time with the bytes their algorithm moves
 * (with dhs NULL, hs is only read and cs, gates unused). The arrays' contents
 * are not the kernels' (no gate is computed): a floor for benchmarks, any
 * finite inputs. dz (n, steps, G hidden), dhw (n, 3 hidden) for the GRU; the
 * lstm's last_only (hs (n, hidden)) and work ((2 n + 1) hidden) as its kernels'. */
void FN(recurrent_gemms)(int gate_count, int whole_batch, int last_only, const T *x, const T *h0,
                         const T *W_x, const T *W_h, T *hs, T *xw, T *z, T *dz, T *dhw, T *dx,
                         T *dh0, T *dW_x, T *dW_h, const T *dhs, T *cs, T *gates, T *work,
                         int64_t n, int64_t steps, int64_t f, int64_t hidden) {
    struct FN(recurrent_job) j = {.gate_count = gate_count, .gemms_only = 1,
                                  .whole_batch = whole_batch, .saved = dhs != NULL,
                                  .last_only = last_only, .dhs = dhs, .cs = cs, .gates = gates,
                                  .x = x, .h0 = h0, .W_x = W_x, .W_h = W_h, .hs = hs, .xw = xw,
                                  .z = z, .dz = dz, .dhw = dhw, .dx = dx, .dh0 = dh0,
                                  .work = work, .zeros = FN(lstm_zeros)(last_only, work, n, hidden),
                                  .sums = {dW_h, dW_x, NULL, NULL}, .steps = steps, .f = f,
                                  .hidden = hidden};
    FN(run_rows)(FN(forward_range), &j, n, 0);
    FN(run_rows)(FN(backward_range), &j, n, 1);
}
