"""The GEMMs alone of a CNN training epoch, issued as the C backend's
conv2d_forward and conv2d_backward issue them (csrc/conv_impl.h): the images of
a batch split into one range per thread, each range walked in tiles of images
(_gemm_conv.thread_tiles), every tile's GEMMs a call of BLAS's ?gemm (SciPy's,
the one the kernels call) on one thread, the ranges side by side (a prange of
the numba backend, with the BLAS on one thread meanwhile). Per convolution
and tile: the forward product cols @ W, then dW += cols^T dz and, but for the
first layer, dcols = dz W^T. The dense layers' products go through NumPy, as
the layers' own do. The floor of that plan on this BLAS: the benchmark's bare
time, beside which the kernels' im2col, col2im, epilogue and pooling show."""

import numba
import numpy as np
from numba import njit, prange

from ..backends._blas import blas_controller, blas_on_one_thread
from ..backends._gemm_conv import thread_tiles
from ..backends._numba_rnn import Blas, gemm, part_blas
from .workloads import CNN_BATCH, cnn_gemms_of


@njit(parallel=True, cache=True)
def _conv_gemms(blas_parts, parts, tile, pixels, cols, W, out, dW, dcols, backward):
    """The GEMMs of one convolution over images split into `parts` ranges (one
    per thread), each in tiles of at most `tile` images of `pixels` rows; every
    range its own dW partial (dW[part]) and BLAS's argument arrays."""
    n = out.shape[0] // pixels
    k, o = W.shape
    for part in prange(parts):
        blas = part_blas(blas_parts, part)
        n0, n1 = n * part // parts, n * (part + 1) // parts
        tiles = (n1 - n0 + tile - 1) // tile
        for t in range(tiles):
            t0 = n0 + (n1 - n0) * t // tiles
            t1 = n0 + (n1 - n0) * (t + 1) // tiles
            r0, rows = t0 * pixels, (t1 - t0) * pixels
            if not backward:
                gemm(blas, 0, 0, rows, o, k, cols[r0:], k, W, o, 0.0, out[r0:], o)
                continue
            gemm(blas, 1, 0, k, o, rows, cols[r0:], k, out[r0:], o, 0.0 if t == 0 else 1.0,
                 dW[part], o)
            if dcols.shape[0]:
                gemm(blas, 0, 1, rows, k, o, out[r0:], o, W, o, 0.0, dcols[r0:], k)


def cnn_tiled_gemms(layers, threads=None):
    """bare(arrays) of a CNN benchmark: its epoch's GEMMs as the C kernels issue
    them, on `threads` threads (default: Numba's count, that of its prange)."""
    def bare(a):
        X = a["X"]
        count = threads or numba.get_num_threads()
        rng = np.random.default_rng(1)
        steps = {}  # batch size -> [(conv, pixels, cols, W, out, dW, dcols, tile, parts)]
        for lo in range(0, X.shape[0], CNN_BATCH):
            b = min(CNN_BATCH, X.shape[0] - lo)
            if b in steps:
                continue
            steps[b], conv = [], True
            for m, k, o, first in cnn_gemms_of(layers, b, X.shape[1:]):
                conv = conv and m % b == 0 and m > b  # the convolutions come first
                pixels = m // b if conv else 1
                tile, parts = thread_tiles(b, pixels * k * X.itemsize, count) if conv else (b, 1)
                steps[b].append((conv, pixels, rng.standard_normal((m, k)).astype(X.dtype),
                                 rng.uniform(-0.1, 0.1, (k, o)).astype(X.dtype),
                                 np.empty((m, o), X.dtype), np.empty((parts, k, o), X.dtype),
                                 np.empty((0 if first else m, k), X.dtype), tile, parts))

        def layer(step, backward):
            conv, pixels, cols, W, out, dW, dcols, tile, parts = step
            if conv:
                blas = Blas(X.dtype, parts).args()
                _conv_gemms(blas, parts, tile, pixels, cols, W, out, dW, dcols, backward)
            elif not backward:
                np.matmul(cols, W, out=out)
            else:
                np.matmul(cols.T, out, out=dW[0])
                if dcols.shape[0]:
                    np.matmul(out, W.T, out=dcols)

        def epoch():
            # every BLAS on one thread, as while a model with such layers trains
            # (nn.training.blas_scope): the dense layers' GEMMs on the caller's
            with blas_controller().limit(limits=1), blas_on_one_thread():
                for lo in range(0, X.shape[0], CNN_BATCH):
                    gemms = steps[min(CNN_BATCH, X.shape[0] - lo)]
                    for step in gemms:
                        layer(step, False)
                    for step in reversed(gemms):
                        layer(step, True)

        return epoch

    return bare
