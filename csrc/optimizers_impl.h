/* Optimizer steps for one float type T (template, see instantiate.h): one pass
 * over [i0, i1) of param, grad and the states, in place, following the update
 * rules of reference.py. Options that change the loop are compile-time constants
 * of an always-inlined body, so each combination is its own vectorised loop. */

struct FN(step_args) {
    T *param, *s1, *s2, *s3; /* states, by optimizer: see each step function */
    const T *grad;
    double lr, a, b, eps, weight_decay, momentum;
    int64_t t;
    int flags;
};

/* ---------------------------------------------------------------- SGD */
INLINE void FN(sgd_loop)(const struct FN(step_args) *a, int64_t i0, int64_t i1, const int flags) {
    T *p = a->param, *v = a->s1;
    const T *grad = a->grad;
    T lr = (T)a->lr, mom = (T)a->momentum, wd = (T)a->weight_decay;
    for (int64_t i = i0; i < i1; i++) {
        T g = flags & SGD_WD ? grad[i] + wd * p[i] : grad[i];
        if (!(flags & SGD_MOMENTUM)) {
            p[i] -= lr * g;
        } else if (flags & SGD_LR_IN_VELOCITY) { /* scikit-learn's rule */
            T vel = mom * v[i] - lr * g;
            v[i] = vel;
            p[i] += flags & SGD_NESTEROV ? mom * vel - lr * g : vel;
        } else { /* PyTorch's rule */
            T vel = mom * v[i] + g;
            v[i] = vel;
            p[i] -= lr * (flags & SGD_NESTEROV ? g + mom * vel : vel);
        }
    }
}

HOT static void FN(sgd_range)(void *args, int64_t i0, int64_t i1, int part) {
    const struct FN(step_args) *a = args;
    (void)part;
    switch (a->flags) {
    case 0: FN(sgd_loop)(a, i0, i1, 0); break;
    case SGD_WD: FN(sgd_loop)(a, i0, i1, SGD_WD); break;
    case SGD_MOMENTUM: FN(sgd_loop)(a, i0, i1, SGD_MOMENTUM); break;
    case SGD_MOMENTUM | SGD_WD: FN(sgd_loop)(a, i0, i1, SGD_MOMENTUM | SGD_WD); break;
    default: FN(sgd_loop)(a, i0, i1, a->flags); break; /* the rarer combinations */
    }
}

void FN(sgd_step)(T *param, const T *grad, T *velocity, int64_t n, double lr, double momentum,
                  int nesterov, double weight_decay, int lr_in_velocity) {
    struct FN(step_args) a = {.param = param, .s1 = velocity, .grad = grad, .lr = lr,
                              .momentum = momentum, .weight_decay = weight_decay};
    a.flags = (momentum != 0 ? SGD_MOMENTUM : 0) | (nesterov ? SGD_NESTEROV : 0)
              | (weight_decay != 0 ? SGD_WD : 0) | (lr_in_velocity ? SGD_LR_IN_VELOCITY : 0);
    if (velocity == NULL) a.flags &= ~SGD_MOMENTUM; /* the wrapper requires it for momentum */
    parallel_for_small(FN(sgd_range), &a, n, MIN_SPLIT_STEP, MIN_PARALLEL_CHEAP);
}

/* ------------------------------------------------------------- Adagrad */
HOT static void FN(adagrad_range)(void *args, int64_t i0, int64_t i1, int part) {
    const struct FN(step_args) *a = args;
    T *p = a->param, *sum_sq = a->s1;
    const T *grad = a->grad;
    T lr = (T)a->lr, eps = (T)a->eps, wd = (T)a->weight_decay;
    (void)part;
    if (a->weight_decay != 0) {
        for (int64_t i = i0; i < i1; i++) {
            T g = grad[i] + wd * p[i];
            sum_sq[i] += g * g;
            p[i] -= lr * g / (FN(sqrt)(sum_sq[i]) + eps);
        }
    } else {
        for (int64_t i = i0; i < i1; i++) {
            T g = grad[i];
            sum_sq[i] += g * g;
            p[i] -= lr * g / (FN(sqrt)(sum_sq[i]) + eps);
        }
    }
}

void FN(adagrad_step)(T *param, const T *grad, T *sum_sq, int64_t n, double lr, double eps,
                      double weight_decay) {
    struct FN(step_args) a = {.param = param, .s1 = sum_sq, .grad = grad, .lr = lr, .eps = eps,
                              .weight_decay = weight_decay};
    parallel_for_small(FN(adagrad_range), &a, n, MIN_SPLIT_STEP, MIN_PARALLEL_CHEAP);
}

/* ------------------------------------------------------------- RMSprop */
/* s1 = square_avg, s2 = momentum_buf, s3 = grad_avg; a = alpha */
INLINE void FN(rmsprop_loop)(const struct FN(step_args) *a, int64_t i0, int64_t i1,
                             const int flags) {
    T *p = a->param, *sq = a->s1, *buf = a->s2, *gavg = a->s3;
    const T *grad = a->grad;
    T lr = (T)a->lr, alpha = (T)a->a, rest = (T)(1.0 - a->a), eps = (T)a->eps;
    T wd = (T)a->weight_decay, mom = (T)a->momentum;
    for (int64_t i = i0; i < i1; i++) {
        T g = flags & RMS_WD ? grad[i] + wd * p[i] : grad[i];
        T s = sq[i] * alpha + rest * g * g;
        sq[i] = s;
        T avg;
        if (flags & RMS_CENTERED) {
            T ga = gavg[i] * alpha + rest * g;
            gavg[i] = ga;
            avg = FN(sqrt)(s - ga * ga) + eps;
        } else {
            avg = FN(sqrt)(s) + eps;
        }
        if (flags & RMS_MOMENTUM) {
            T b = buf[i] * mom + g / avg;
            buf[i] = b;
            p[i] -= lr * b;
        } else {
            p[i] -= lr * g / avg;
        }
    }
}

HOT static void FN(rmsprop_range)(void *args, int64_t i0, int64_t i1, int part) {
    const struct FN(step_args) *a = args;
    (void)part;
    switch (a->flags) {
    case 0: FN(rmsprop_loop)(a, i0, i1, 0); break;
    case RMS_WD: FN(rmsprop_loop)(a, i0, i1, RMS_WD); break;
    case RMS_MOMENTUM: FN(rmsprop_loop)(a, i0, i1, RMS_MOMENTUM); break;
    case RMS_CENTERED: FN(rmsprop_loop)(a, i0, i1, RMS_CENTERED); break;
    default: FN(rmsprop_loop)(a, i0, i1, a->flags); break;
    }
}

void FN(rmsprop_step)(T *param, const T *grad, T *square_avg, T *momentum_buf, T *grad_avg,
                      int64_t n, double lr, double alpha, double eps, double weight_decay,
                      double momentum) {
    struct FN(step_args) a = {.param = param, .s1 = square_avg, .s2 = momentum_buf, .s3 = grad_avg,
                              .grad = grad, .lr = lr, .a = alpha, .eps = eps,
                              .weight_decay = weight_decay, .momentum = momentum};
    a.flags = (weight_decay != 0 ? RMS_WD : 0) | (grad_avg ? RMS_CENTERED : 0)
              | (momentum != 0 && momentum_buf ? RMS_MOMENTUM : 0);
    parallel_for_small(FN(rmsprop_range), &a, n, MIN_SPLIT_STEP, MIN_PARALLEL_CHEAP);
}

/* ------------------------------------------------------------ Adadelta */
/* s1 = square_avg, s2 = acc_delta; a = rho */
HOT static void FN(adadelta_range)(void *args, int64_t i0, int64_t i1, int part) {
    const struct FN(step_args) *a = args;
    T *p = a->param, *sq = a->s1, *acc = a->s2;
    const T *grad = a->grad;
    T lr = (T)a->lr, rho = (T)a->a, rest = (T)(1.0 - a->a), eps = (T)a->eps;
    T wd = (T)a->weight_decay;
    int decay = a->weight_decay != 0;
    (void)part;
    for (int64_t i = i0; i < i1; i++) {
        T g = decay ? grad[i] + wd * p[i] : grad[i];
        T s = sq[i] * rho + rest * g * g;
        sq[i] = s;
        T delta = FN(sqrt)(acc[i] + eps) / FN(sqrt)(s + eps) * g;
        acc[i] = acc[i] * rho + rest * delta * delta;
        p[i] -= lr * delta;
    }
}

void FN(adadelta_step)(T *param, const T *grad, T *square_avg, T *acc_delta, int64_t n,
                       double lr, double rho, double eps, double weight_decay) {
    struct FN(step_args) a = {.param = param, .s1 = square_avg, .s2 = acc_delta, .grad = grad,
                              .lr = lr, .a = rho, .eps = eps, .weight_decay = weight_decay};
    parallel_for_small(FN(adadelta_range), &a, n, MIN_SPLIT_STEP, MIN_PARALLEL_CHEAP);
}

/* ---------------------------------------------------------------- Adam */
/* s1 = m, s2 = v, s3 = v_max; a = beta1, b = beta2 */
INLINE void FN(adam_loop)(const struct FN(step_args) *a, int64_t i0, int64_t i1,
                          const int flags) {
    T *p = a->param, *m = a->s1, *v = a->s2, *v_max = a->s3;
    const T *grad = a->grad;
    double bias1 = 1.0 - pow(a->a, (double)a->t), bias2 = 1.0 - pow(a->b, (double)a->t);
    T beta1 = (T)a->a, rest1 = (T)(1.0 - a->a), beta2 = (T)a->b, rest2 = (T)(1.0 - a->b);
    /* 1 / sqrt(bias2) multiplies: a division per element fewer (the float64 loop is bound by its
       divisions and square root) */
    T step = (T)(a->lr / bias1), inv_sqrt_bias2 = (T)(1.0 / sqrt(bias2)), eps = (T)a->eps;
    T wd = (T)a->weight_decay, shrink = (T)(1.0 - a->lr * a->weight_decay);
    for (int64_t i = i0; i < i1; i++) {
        T g = grad[i], pi = p[i];
        if (flags & ADAM_DECOUPLED) pi *= shrink;
        if (flags & ADAM_L2) g += wd * pi;
        T mi = m[i] * beta1 + rest1 * g;
        T vi = v[i] * beta2 + rest2 * g * g;
        m[i] = mi;
        v[i] = vi;
        if (flags & ADAM_AMSGRAD) {
            vi = v_max[i] > vi ? v_max[i] : vi;
            v_max[i] = vi;
        }
        p[i] = pi - step * mi / (FN(sqrt)(vi) * inv_sqrt_bias2 + eps);
    }
}

HOT static void FN(adam_range)(void *args, int64_t i0, int64_t i1, int part) {
    const struct FN(step_args) *a = args;
    (void)part;
    switch (a->flags) {
    case 0: FN(adam_loop)(a, i0, i1, 0); break;
    case ADAM_L2: FN(adam_loop)(a, i0, i1, ADAM_L2); break;
    case ADAM_DECOUPLED: FN(adam_loop)(a, i0, i1, ADAM_DECOUPLED); break;
    case ADAM_AMSGRAD: FN(adam_loop)(a, i0, i1, ADAM_AMSGRAD); break;
    default: FN(adam_loop)(a, i0, i1, a->flags); break;
    }
}

void FN(adam_step)(T *param, const T *grad, T *m, T *v, T *v_max, int64_t n, int64_t t,
                   double lr, double beta1, double beta2, double eps, double weight_decay,
                   int decoupled) {
    struct FN(step_args) a = {.param = param, .s1 = m, .s2 = v, .s3 = v_max, .grad = grad, .lr = lr,
                              .a = beta1, .b = beta2, .eps = eps, .weight_decay = weight_decay,
                              .t = t};
    a.flags = (weight_decay != 0 ? (decoupled ? ADAM_DECOUPLED : ADAM_L2) : 0)
              | (v_max ? ADAM_AMSGRAD : 0);
    parallel_for_small(FN(adam_range), &a, n, MIN_SPLIT_STEP, MIN_PARALLEL_CHEAP);
}
