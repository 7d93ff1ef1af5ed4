/* fastnn C kernels: the one declaration of the API.
 *
 * The cffi build (fastnn/backends/_build_ckernels.py) reads this file as its cdef,
 * dropping the preprocessor lines, so every declaration here must be plain C that
 * pycparser understands. Each kernel comes as a float (f32) and double (f64) pair.
 * All arrays are C-contiguous; sizes are int64_t; the Python wrapper has checked
 * every shape, dtype and index before the call. Scalars (rates, hyper-parameters)
 * are passed as double whatever the array type. Pointers documented as "may be
 * NULL" are optional; outputs never alias inputs unless stated. Kernels that
 * return int return 0, or -1 when they could not allocate their workspace.
 */
#ifndef FASTNN_H
#define FASTNN_H
#include <stdint.h>

/* threads: thread count of the large-size paths (n <= 0: the default, OMP_NUM_THREADS or the usable cores) */
void fastnn_set_num_threads(int n);
int fastnn_get_num_threads(void);

/* Instruction sets. Every kernel file is compiled once per instruction set
 * (generic x86-64 or any other CPU, AVX2 + FMA = x86-64-v3, AVX-512 = x86-64-v4)
 * and each kernel function calls the variant of the selected one (csrc/isa.c):
 * at load the highest this CPU runs, capped per kernel where the higher one was
 * measured not to pay (the build's table). fastnn_set_isa selects a lower one
 * (tests run every path the CPU can) and returns the one selected: isa, or the
 * highest supported when isa is above it. fastnn_kernel_isa: the instruction
 * set whose code the function `name` (e.g. "adam_step_f32") runs now, or -1
 * when it is not a kernel compiled per instruction set. */
enum fastnn_isa { FASTNN_ISA_GENERIC, FASTNN_ISA_AVX2, FASTNN_ISA_AVX512 };
int fastnn_isa_supported(void);
int fastnn_set_isa(int isa);
int fastnn_get_isa(void);
int fastnn_kernel_isa(const char *name);

/* activation codes, in the order of fastnn.backends.reference.ACTIVATIONS */
enum fastnn_activation {
    FASTNN_IDENTITY, FASTNN_LOGISTIC, FASTNN_TANH, FASTNN_RELU, FASTNN_LEAKY_RELU,
    FASTNN_ELU, FASTNN_SELU, FASTNN_GELU, FASTNN_SOFTPLUS, FASTNN_SOFTMAX
};

/* Forward epilogue, z, preact, y: (rows, cols); b: (cols,) or NULL.
 * preact = z + b when preact is not NULL; y = activation(z + b), softmax over each
 * row. y may be z (in place). */
void bias_activation_forward_f32(const float *z, const float *b, float *preact, float *y,
                                 int64_t rows, int64_t cols, int activation);
void bias_activation_forward_f64(const double *z, const double *b, double *preact, double *y,
                                 int64_t rows, int64_t cols, int activation);

/* Backward prologue, dy, y, x, dz: (rows, cols); db: (cols,) or NULL.
 * dz = dy * activation'(x), written with the forward output y (x, the forward
 * input, is read only for gelu, else may be NULL); db = column sums of dz. */
int activation_backward_f32(const float *dy, const float *y, const float *x, float *dz,
                            float *db, int64_t rows, int64_t cols, int activation);
int activation_backward_f64(const double *dy, const double *y, const double *x, double *dz,
                            double *db, int64_t rows, int64_t cols, int activation);

/* out (cols,) = column sums of a (rows, cols) */
int column_sums_f32(const float *a, float *out, int64_t rows, int64_t cols);
int column_sums_f64(const double *a, double *out, int64_t rows, int64_t cols);

/* A dense layer on fastnn's threads, each multiplying a slice on one BLAS thread
 * and running the slice's pass right after. x (n, k), W (k, m), y (n, m).
 * Forward: y = act(x W + b) as bias_activation_forward after the GEMM (preact
 * and b may be NULL). Backward: dz = dy act'(.) as activation_backward (dz is
 * ignored for identity, xpre read for gelu only), db its column sums, dW = x^T
 * dz, dx = dz W^T when dx is not NULL. */
void dense_forward_f32(const float *x, const float *W, const float *b, float *preact, float *y,
                       int64_t n, int64_t k, int64_t m, int activation);
void dense_forward_f64(const double *x, const double *W, const double *b, double *preact,
                       double *y, int64_t n, int64_t k, int64_t m, int activation);
int dense_backward_f32(const float *dy, const float *x, const float *W, const float *y,
                       const float *xpre, float *dz, float *dx, float *dW, float *db, int64_t n,
                       int64_t k, int64_t m, int activation);
int dense_backward_f64(const double *dy, const double *x, const double *W, const double *y,
                       const double *xpre, double *dz, double *dx, double *dW, double *db,
                       int64_t n, int64_t k, int64_t m, int activation);

/* Losses: mean over the n samples (weighted by w (n,) when w is not NULL) of the
 * per-sample loss summed over its k outputs; grad (n, k) = d loss / d output.
 * Return the loss. Softmax cross-entropy: labels (n,) in [0, k) or targets
 * (n, k) probabilities. */
double softmax_cross_entropy_labels_f32(const float *logits, const int64_t *labels,
                                        const float *w, float *grad, int64_t n, int64_t k);
double softmax_cross_entropy_labels_f64(const double *logits, const int64_t *labels,
                                        const double *w, double *grad, int64_t n, int64_t k);
double softmax_cross_entropy_probs_f32(const float *logits, const float *targets,
                                       const float *w, float *grad, int64_t n, int64_t k);
double softmax_cross_entropy_probs_f64(const double *logits, const double *targets,
                                       const double *w, double *grad, int64_t n, int64_t k);
double sigmoid_binary_cross_entropy_f32(const float *logits, const float *targets,
                                        const float *w, float *grad, int64_t n, int64_t k);
double sigmoid_binary_cross_entropy_f64(const double *logits, const double *targets,
                                        const double *w, double *grad, int64_t n, int64_t k);

/* elementwise losses of pred against targets; delta is used by huber only */
enum fastnn_loss { FASTNN_SQUARED, FASTNN_ABSOLUTE, FASTNN_HUBER, FASTNN_HINGE };
double elementwise_loss_f32(int loss, const float *pred, const float *targets, const float *w,
                            float *grad, int64_t n, int64_t k, double delta);
double elementwise_loss_f64(int loss, const double *pred, const double *targets, const double *w,
                            double *grad, int64_t n, int64_t k, double delta);

/* Batch norm over the rows of x (n, c); gamma, beta, running_mean, running_var,
 * mean, invstd: (c,). Training: batch mean and biased variance normalise x,
 * written to mean and invstd = 1 / sqrt(var + eps); the running statistics are
 * updated in place with the unbiased variance. Inference: the running statistics
 * normalise x. y (n, c) = (x - mean) * invstd * gamma + beta. */
int batchnorm_forward_f32(const float *x, const float *gamma, const float *beta,
                          float *running_mean, float *running_var, float *y, float *mean,
                          float *invstd, int64_t n, int64_t c, int training, double momentum,
                          double eps);
int batchnorm_forward_f64(const double *x, const double *gamma, const double *beta,
                          double *running_mean, double *running_var, double *y, double *mean,
                          double *invstd, int64_t n, int64_t c, int training, double momentum,
                          double eps);
/* dy, x, dx: (n, c); mean, invstd, gamma, dgamma, dbeta: (c,) */
int batchnorm_backward_f32(const float *dy, const float *x, const float *mean,
                           const float *invstd, const float *gamma, float *dx, float *dgamma,
                           float *dbeta, int64_t n, int64_t c, int training);
int batchnorm_backward_f64(const double *dy, const double *x, const double *mean,
                           const double *invstd, const double *gamma, double *dx,
                           double *dgamma, double *dbeta, int64_t n, int64_t c, int training);

/* Inverted dropout over n elements: y = x * scale where element i is kept, else 0.
 * Kept iff (splitmix64(seed + (i + 1) * 0x9E3779B97F4A7C15) >> 11) >= threshold. */
void dropout_f32(const float *x, float *y, int64_t n, uint64_t seed, uint64_t threshold,
                 double scale);
void dropout_f64(const double *x, double *y, int64_t n, uint64_t seed, uint64_t threshold,
                 double scale);

/* grad += l2 param + l1 sign(param) over n elements (each term only when its
 * coefficient is not 0); returns l2/2 ||param||^2 + l1 ||param||_1 */
double weight_penalty_f32(const float *param, float *grad, int64_t n, double l2, double l1);
double weight_penalty_f64(const double *param, double *grad, int64_t n, double l2, double l1);

/* Optimizer steps, in place over n parameters (rules in reference.py).
 * States that an option does not use may be NULL. */
void sgd_step_f32(float *param, const float *grad, float *velocity, int64_t n, double lr,
                  double momentum, int nesterov, double weight_decay, int lr_in_velocity);
void sgd_step_f64(double *param, const double *grad, double *velocity, int64_t n, double lr,
                  double momentum, int nesterov, double weight_decay, int lr_in_velocity);
void adagrad_step_f32(float *param, const float *grad, float *sum_sq, int64_t n, double lr,
                      double eps, double weight_decay);
void adagrad_step_f64(double *param, const double *grad, double *sum_sq, int64_t n, double lr,
                      double eps, double weight_decay);
void rmsprop_step_f32(float *param, const float *grad, float *square_avg, float *momentum_buf,
                      float *grad_avg, int64_t n, double lr, double alpha, double eps,
                      double weight_decay, double momentum);
void rmsprop_step_f64(double *param, const double *grad, double *square_avg,
                      double *momentum_buf, double *grad_avg, int64_t n, double lr, double alpha,
                      double eps, double weight_decay, double momentum);
void adadelta_step_f32(float *param, const float *grad, float *square_avg, float *acc_delta,
                       int64_t n, double lr, double rho, double eps, double weight_decay);
void adadelta_step_f64(double *param, const double *grad, double *square_avg,
                       double *acc_delta, int64_t n, double lr, double rho, double eps,
                       double weight_decay);
/* Adam at step t >= 1; AdamW when decoupled; amsgrad when v_max is not NULL */
void adam_step_f32(float *param, const float *grad, float *m, float *v, float *v_max,
                   int64_t n, int64_t t, double lr, double beta1, double beta2, double eps,
                   double weight_decay, int decoupled);
void adam_step_f64(double *param, const double *grad, double *m, double *v, double *v_max,
                   int64_t n, int64_t t, double lr, double beta1, double beta2, double eps,
                   double weight_decay, int decoupled);

/* ------------------------------------------------------------- convolution
 * Channels-last images (n, ih, iw, c); windows (kh, kw) every (sh, sw) cells over
 * the image zero-padded by (ph, pw) on each side; outputs (n, oh, ow, .) with
 * oh = (ih + 2 ph - kh) / sh + 1, ow alike (the caller fills them in). */
struct fastnn_window {
    int64_t n, ih, iw, c, kh, kw, sh, sw, ph, pw, oh, ow;
};
/* cols (n*oh*ow, kh*kw*c): row (n, i, j) is the window output (i, j) reads, in the
 * order (kh, kw, c) of a filter; col2im is its adjoint: dx (n, ih, iw, c) = the
 * sum of the rows of dcols added on the cells they came from */
void im2col_f32(const float *x, float *cols, const struct fastnn_window *g);
void im2col_f64(const double *x, double *cols, const struct fastnn_window *g);
void col2im_f32(const float *dcols, float *dx, const struct fastnn_window *g);
void col2im_f64(const double *dcols, double *dx, const struct fastnn_window *g);
/* y, argmax (n, oh, ow, c): each window's maximum and its flat index row * iw + col
 * (the first maximum in row-major window order, or the first NaN; padding never
 * wins; padding at most half the window). Backward: dx (n, ih, iw, c) from dy
 * (n, oh, ow, c) and argmax, int64 or int32 (the other NULL), each in [0, ih*iw). */
void maxpool_forward_f32(const float *x, float *y, int64_t *argmax, const struct fastnn_window *g);
void maxpool_forward_f64(const double *x, double *y, int64_t *argmax,
                         const struct fastnn_window *g);
void maxpool_backward_f32(const float *dy, const int64_t *argmax64, const int32_t *argmax32,
                          float *dx, const struct fastnn_window *g);
void maxpool_backward_f64(const double *dy, const int64_t *argmax64, const int32_t *argmax32,
                          double *dx, const struct fastnn_window *g);
/* y (n, oh, ow, c): each window's mean, the zero padding counted in the divisor */
int avgpool_forward_f32(const float *x, float *y, const struct fastnn_window *g);
int avgpool_forward_f64(const double *x, double *y, const struct fastnn_window *g);
void avgpool_backward_f32(const float *dy, float *dx, const struct fastnn_window *g);
void avgpool_backward_f64(const double *dy, double *dx, const struct fastnn_window *g);
/* Convolution of x (n, ih, iw, c) with W (kh, kw, c, o) (window g, g->c = c),
 * im2col, BLAS and the epilogue a tile of at most `tile` images at a time, the
 * images split between at most `parts` threads; ws: parts workspaces of
 * tile * oh * ow * K elements (K = kh * kw * c) in the forward, 2 tile * oh *
 * ow * K + K * o in the backward. Forward: y (n, oh, ow, o) = activation(conv
 * + b), b (o,) or NULL, preact = conv + b when not NULL. Backward: dz = dy *
 * activation' (dz NULL for the identity), dW (kh, kw, c, o), db (o,) and, when
 * dx is not NULL, dx (n, ih, iw, c) from dy and y (n, oh, ow, o) (preact for
 * gelu, else may be NULL). BLAS sizes fit 32 bits. */
int conv2d_forward_f32(const float *x, const float *W, const float *b, float *preact, float *y,
                       float *ws, const struct fastnn_window *g, int64_t o, int64_t tile,
                       int64_t parts, int activation);
int conv2d_forward_f64(const double *x, const double *W, const double *b, double *preact,
                       double *y, double *ws, const struct fastnn_window *g, int64_t o,
                       int64_t tile, int64_t parts, int activation);
int conv2d_backward_f32(const float *dy, const float *x, const float *W, const float *y,
                        const float *preact, float *dz, float *dx, float *dW, float *db,
                        float *ws,
                        const struct fastnn_window *g, int64_t o, int64_t tile, int64_t parts,
                        int activation);
int conv2d_backward_f64(const double *dy, const double *x, const double *W, const double *y,
                        const double *preact, double *dz, double *dx, double *dW, double *db,
                        double *ws,
                        const struct fastnn_window *g, int64_t o, int64_t tile, int64_t parts,
                        int activation);
/* The same convolution without im2col or BLAS (for layers of few channels, the
 * caller chooses by shape): each output row from a zero-padded copy of its
 * image, blocks of output pixels and channels in registers. Workspaces are
 * allocated inside; -1 when out of memory. */
int conv2d_direct_forward_f32(const float *x, const float *W, const float *b, float *preact,
                              float *y, const struct fastnn_window *g, int64_t o, int activation);
int conv2d_direct_forward_f64(const double *x, const double *W, const double *b, double *preact,
                              double *y, const struct fastnn_window *g, int64_t o, int activation);
int conv2d_direct_backward_f32(const float *dy, const float *x, const float *W, const float *y,
                               const float *preact, float *dz, float *dx, float *dW, float *db,
                               const struct fastnn_window *g, int64_t o, int activation);
int conv2d_direct_backward_f64(const double *dy, const double *x, const double *W,
                               const double *y, const double *preact, double *dz, double *dx,
                               double *dW, double *db, const struct fastnn_window *g, int64_t o,
                               int activation);
/* ------------------------------------------------------------------ recurrence
 * The addresses of BLAS's Fortran sgemm and dgemm (all arguments by pointer,
 * 32-bit integers), set once before any recurrent kernel runs. */
void fastnn_set_gemm(void *sgemm, void *dgemm);
/* The BLAS's set_num_threads(int) and get_num_threads(void) (NULL, NULL when it
 * has none): kernels that split work over fastnn's threads then run BLAS on one. */
void fastnn_set_blas_threads(void *set, void *get);

/* Batch-first sequences: x (n, steps, f), hs (n, steps, hidden); W_x (f, G hidden),
 * W_h (hidden, G hidden), biases (G hidden,), gates (n, steps, G hidden) in
 * PyTorch's order (rnn G = 1, lstm 4: i f g o, gru 3: r z n); h0, c0 (n, hidden).
 * Workspaces: z (n, G hidden), dz and dxw (n, steps, G hidden: the backward uses
 * their rows at step 0), dhw (n, 3 hidden), sums (2 G hidden doubles); xw (n,
 * steps, 3 hidden) for the GRU's recurrent_gemms; work ((2 n + 1) hidden) the
 * lstm backward's. Every size below 2^31. The backward writes dh0 (and dc0),
 * and dx unless it is NULL; relu selects relu over tanh. The lstm's last_only:
 * hs and dhs (n, hidden), the last state and its gradient alone (its backward
 * rebuilds the states from gates and cs, and never reads hs). */
void rnn_forward_f32(const float *x, const float *h0, const float *W_x, const float *W_h,
                     const float *b, int relu, float *hs, float *z, int64_t n,
                     int64_t steps, int64_t f, int64_t hidden);
void rnn_forward_f64(const double *x, const double *h0, const double *W_x, const double *W_h,
                     const double *b, int relu, double *hs, double *z, int64_t n,
                     int64_t steps, int64_t f, int64_t hidden);
void rnn_backward_f32(const float *dhs, const float *x, const float *h0, const float *W_x,
                      const float *W_h, const float *hs, int relu, float *dx, float *dh0,
                      float *dW_x, float *dW_h, float *db, float *dz, double *sums, int64_t n,
                      int64_t steps, int64_t f, int64_t hidden);
void rnn_backward_f64(const double *dhs, const double *x, const double *h0, const double *W_x,
                      const double *W_h, const double *hs, int relu, double *dx, double *dh0,
                      double *dW_x, double *dW_h, double *db, double *dz, double *sums, int64_t n,
                      int64_t steps, int64_t f, int64_t hidden);
void lstm_forward_f32(const float *x, const float *h0, const float *c0, const float *W_x,
                      const float *W_h, const float *b, int last_only, float *hs, float *cs, float *gates,
                      float *z, int64_t n, int64_t steps, int64_t f, int64_t hidden);
void lstm_forward_f64(const double *x, const double *h0, const double *c0, const double *W_x,
                      const double *W_h, const double *b, int last_only, double *hs, double *cs, double *gates,
                      double *z, int64_t n, int64_t steps, int64_t f, int64_t hidden);
void lstm_backward_f32(const float *dhs, const float *x, const float *h0, const float *c0,
                       const float *W_x, const float *W_h, const float *cs, const float *gates,
                       int last_only, float *dx, float *dh0, float *dc0, float *dW_x, float *dW_h, float *db,
                       float *dz, float *work, double *sums, int64_t n, int64_t steps, int64_t f,
                       int64_t hidden);
void lstm_backward_f64(const double *dhs, const double *x, const double *h0, const double *c0,
                       const double *W_x, const double *W_h, const double *cs, const double *gates,
                       int last_only, double *dx, double *dh0, double *dc0, double *dW_x, double *dW_h, double *db,
                       double *dz, double *work, double *sums, int64_t n, int64_t steps, int64_t f,
                       int64_t hidden);
void gru_forward_f32(const float *x, const float *h0, const float *W_x, const float *W_h,
                     const float *b_x, const float *b_h, float *hs, float *gates, float *hn,
                     float *z, int64_t n, int64_t steps, int64_t f, int64_t hidden);
void gru_forward_f64(const double *x, const double *h0, const double *W_x, const double *W_h,
                     const double *b_x, const double *b_h, double *hs, double *gates, double *hn,
                     double *z, int64_t n, int64_t steps, int64_t f, int64_t hidden);
void gru_backward_f32(const float *dhs, const float *x, const float *h0, const float *W_x,
                      const float *W_h, const float *hs, const float *gates, const float *hn,
                      float *dx, float *dh0, float *dW_x, float *dW_h, float *db_x, float *db_h,
                      float *dxw, float *dhw, double *sums, int64_t n, int64_t steps, int64_t f,
                      int64_t hidden);
void gru_backward_f64(const double *dhs, const double *x, const double *h0, const double *W_x,
                      const double *W_h, const double *hs, const double *gates, const double *hn,
                      double *dx, double *dh0, double *dW_x, double *dW_h, double *db_x,
                      double *db_h, double *dxw, double *dhw, double *sums, int64_t n,
                      int64_t steps, int64_t f, int64_t hidden);
/* One training step's GEMMs of the rnn (gate_count 1), lstm (4) or gru (3) kernels
 * alone, issued as those kernels issue them, without their elementwise passes
 * (whole_batch: every GEMM on the whole batch, as below the kernels' split size):
 * the benchmarks' floor (fastnn/benchmarks/recurrent.py). Any finite inputs; the
 * outputs are GEMM products of them, not gradients. dhw (n, 3 hidden) the GRU's
 * only, NULL for the others; dx NULL for none. With dhs (n, steps, hidden; rnn
 * and lstm), also the traffic of the arrays the forward saves for the backward:
 * hs, and the lstm's cs (n, steps, hidden) and gates (n, steps, 4 hidden),
 * written and read back (dhs NULL: cs and gates unused, NULL allowed). */
void recurrent_gemms_f32(int gate_count, int whole_batch, int last_only, const float *x,
                         const float *h0, const float *W_x, const float *W_h, float *hs, float *xw, float *z,
                         float *dz, float *dhw, float *dx, float *dh0, float *dW_x, float *dW_h, const float *dhs,
                         float *cs, float *gates, float *work, int64_t n, int64_t steps, int64_t f,
                         int64_t hidden);
void recurrent_gemms_f64(int gate_count, int whole_batch, int last_only, const double *x,
                         const double *h0, const double *W_x, const double *W_h, double *hs, double *xw, double *z,
                         double *dz, double *dhw, double *dx, double *dh0, double *dW_x, double *dW_h, const double *dhs,
                         double *cs, double *gates, double *work, int64_t n, int64_t steps, int64_t f,
                         int64_t hidden);

/* Embedding (csrc/embedding.c): tokens, count = N*T entries, int64 or int32 (the
 * other NULL), each in [0, vocab); W, dW (vocab, dim); out, dy (count, dim).
 * out[i] = W[token i]; dW = the scatter-add of dy's rows on their tokens' rows. */
void embedding_forward_f32(const int64_t *tokens64, const int32_t *tokens32, const float *W,
                           float *out, int64_t count, int64_t dim);
void embedding_forward_f64(const int64_t *tokens64, const int32_t *tokens32, const double *W,
                           double *out, int64_t count, int64_t dim);
void embedding_backward_f32(const float *dy, const int64_t *tokens64, const int32_t *tokens32,
                            float *dW, int64_t count, int64_t vocab, int64_t dim);
void embedding_backward_f64(const double *dy, const int64_t *tokens64, const int32_t *tokens32,
                            double *dW, int64_t count, int64_t vocab, int64_t dim);

/* Row gather (csrc/gather.c): out row i = x row index[i], for i < rows; a row is
 * row_bytes bytes; index int64 or int32 (the other NULL), each a row of x
 * (checked by the caller). */
void take_rows(const void *x, const int64_t *index64, const int32_t *index32, void *out, int64_t rows,
               int64_t row_bytes);

#endif
