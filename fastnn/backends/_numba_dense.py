"""The numba backend's dense layer for GEMMs too small for BLAS's threads:
y = act(x @ W + b) and its backward as one jitted call each, BLAS's GEMM called
through its address (_numba_rnn.gemm, as the recurrent kernels and the C
backend's dense kernels call it), where np.matmul and the jitted epilogue were
two calls. For a recurrent network's Dense head, whose GEMMs take a few us,
the calls around them were most of its time (the recurrent benchmark's head,
caches cold after the LSTM: forward 28 us against the C kernel's 10).

The kernels hold the GIL (not nogil): the BLAS arguments' scratch (Blas) is
shared by every call of a dtype."""

import numpy as np

from ._numba_kernels import act_grad_colsum_serial, bias_act_rows, jit
from ._numba_rnn import Blas, gemm

# Multiply-adds of a GEMM up to which OpenBLAS runs it on one thread
# (SMP_THRESHOLD_MIN 65536 x GEMM_MULTITHREAD_THRESHOLD 4): below, the one
# jitted call; above, np.matmul (NumPy's BLAS, its threads).
SMALL_MADDS = 1 << 18

BLAS = {np.dtype(t): Blas(t).args() for t in (np.float32, np.float64)}


def small(x, W, *arrays):
    """Whether a dense layer of x (N, K) @ W (K, C) takes these kernels: every
    size positive, the GEMM small, x, W and `arrays` C-contiguous."""
    (n, k), c = x.shape, W.shape[1]
    return (n > 0 and k > 0 and c > 0 and n * k * c <= SMALL_MADDS
            and all(a.flags.c_contiguous for a in (x, W, *arrays)))


@jit
def dense_forward(blas, code, x, W, b, preact, out):
    """out (N, C) = act(x @ W + b), preact = x @ W + b unless empty (bias_act_rows)."""
    n, k = x.shape
    c = W.shape[1]
    gemm(blas, 0, 0, n, c, k, x, k, W, c, 0.0, out, c)
    bias_act_rows(code, out, b, preact, 0, n)


@jit
def dense_backward(blas, code, dy, y, preact, dz, db, rows_per_block, x, W, dW, dx):
    """dz = dy act' (dz is dy for identity), db its column sums
    (act_grad_colsum_serial), dW (K, C) = x.T @ dz, dx (N, K) = dz @ W.T unless
    dx is empty."""
    act_grad_colsum_serial(code, dy, y, preact, dz, db, rows_per_block)
    n, k = x.shape
    c = W.shape[1]
    gemm(blas, 1, 0, k, c, n, x, k, dz, c, 0.0, dW, c)
    if dx.size:
        gemm(blas, 0, 1, n, k, c, dz, c, W, c, 0.0, dx, k)
