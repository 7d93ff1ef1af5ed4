#include "fastnn.h"

/* x, y, dy, dx: n elements each */
#define DEFINE_RELU(T, SUFFIX)                                                   \
    void relu_forward_##SUFFIX(const T *x, T *y, int64_t n) {                    \
        for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0 ? x[i] : (T)0;           \
    }                                                                            \
    void relu_backward_##SUFFIX(const T *dy, const T *y, T *dx, int64_t n) {     \
        for (int64_t i = 0; i < n; i++) dx[i] = y[i] > 0 ? dy[i] : (T)0;         \
    }

DEFINE_RELU(float, f32)
DEFINE_RELU(double, f64)
