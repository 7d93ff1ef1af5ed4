/* fastnn C kernels: the one declaration of the API.
 *
 * The cffi build (fastnn/backends/_build_ckernels.py) reads this file as its cdef,
 * dropping the preprocessor lines, so every declaration here must be plain C that
 * pycparser understands. Each kernel comes as a float (f32) and double (f64) pair.
 * All arrays are C-contiguous; sizes are int64_t; the Python wrapper has checked
 * every shape, dtype and index before the call.
 */
#ifndef FASTNN_H
#define FASTNN_H
#include <stdint.h>

/* threads: OpenMP thread count used by the large-size paths */
void fastnn_set_num_threads(int n);
int fastnn_get_num_threads(void);

/* relu: y = max(x, 0) over n elements; dx = dy * (y > 0) */
void relu_forward_f32(const float *x, float *y, int64_t n);
void relu_forward_f64(const double *x, double *y, int64_t n);
void relu_backward_f32(const float *dy, const float *y, float *dx, int64_t n);
void relu_backward_f64(const double *dy, const double *y, double *dx, int64_t n);

#endif
