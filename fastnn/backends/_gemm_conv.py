"""Convolution as one GEMM, for the fast backends (numba, c): their path for
the sizes their whole-convolution kernels leave (sizes beyond 32-bit BLAS
integers; for numba an empty batch too), and those kernels' tile plan
(thread_tiles).

conv(x, W) over channels-last images is a dense layer over the image's
windows: the column matrix cols (N*OH*OW, KH*KW*C) holds at row (n, i, j) the
window that output pixel reads, in W's order (kh, kw, c), so that

    y.reshape(N*OH*OW, O) = activation(cols @ W.reshape(KH*KW*C, O) + b)

is the backend's own `_dense_forward` (BLAS GEMM, fused bias and activation
epilogue), and `_dense_backward` gives dz, db, dW = cols^T dz and
dcols = dz W^T; col2im adds dcols back onto the pixels the windows read, dx.
A backend provides `_im2col` and `_col2im` (and its pooling kernels).

cols is a workspace kept per thread and per shape (N*OH*OW*KH*KW*C elements,
14.5 MB in float32 for 64 images of 14 x 14 x 32 under a 3 x 3 kernel), reused
by the next call of the same shape. The forward builds it a tile of images at
a time, each tile's GEMM and epilogue right after its im2col, while the tile is
in cache; the backward's dW is one GEMM over the whole batch, and its dx goes
a tile at a time again (dcols = dz W^T for the tile, then col2im), so that
dcols is one tile's. A 1 x 1 kernel with stride 1 and no padding needs no
columns: x is its own matrix.
"""

import threading
from collections import OrderedDict

import numpy as np

from . import _checks as chk

# the column matrix is built and consumed a tile of images at a time, at most
# this many bytes, so that the GEMM reads it (and col2im its gradient) from the
# cache. Measured as one thread's CPU time per training step (batch 64, the
# benchmark CNNs, the C backend, tiles interleaved with one whole-batch tile):
# conv 32@3x3 - pool - conv 64@3x3 (14.5 MB of columns in the second layer)
# 377 us per image with 2 MB tiles, 379 with 1 MB, 377 with 4 MB, 396 whole;
# LeNet (5 MB and 3.8 MB of columns) 89 to 92 with any of them, 88 whole.
COLUMN_TILE_BYTES = 2 << 20


# A kernel that runs a whole convolution in compiled code (the C backend's
# conv2d_forward and conv2d_backward, the numba backend's alike) splits the images
# between its threads, each walking its share a tile of at most this many bytes
# of columns at a time with BLAS on one thread. Measured per sample
# (bench/cnn_tiles.py, 128 images, batch 64, float32, the C backend, 2 threads,
# on a machine loaded by other work, so only roughly), in the quietest run:
# LeNet 48.8 us with 256 KB tiles, 64.1 with 2 MB (the former path 73.8);
# conv32-64 316 with either (former 227); in others 8 MB was slower on both
# (LeNet 111 against 59, conv32-64 380 against 310).
THREAD_TILE_BYTES = 256 << 10


def thread_tiles(n, image_bytes, threads):
    """(tile, parts) for such a kernel over n images of image_bytes of columns
    each on `threads` threads: at most `parts` ranges of images, each walked in
    tiles of at most `tile` images (one workspace of a tile per range)."""
    parts = max(1, min(threads, n))
    share = -(-n // parts)  # images of the largest range
    return max(1, min(share, THREAD_TILE_BYTES // max(image_bytes, 1))), parts


# A convolution of at most this many input times output channels (LeNet's first
# layer: 1 x 6) runs direct on the compiled backends (conv2d_direct_* in C,
# _numba_conv.direct_*: no im2col, no BLAS), where im2col writes kh*kw copies
# of the image and BLAS runs a GEMM of so few columns far below its rate.
# Measured (C, batch 64, float32, alternated in one process on a loaded
# machine, so roughly): 28 x 28 x 1 -> 6 under 5 x 5, padding 2, relu: forward
# 550 us direct against 948 through im2col and BLAS (2 threads; one thread 530
# against 923), backward without dx 519 against 530 (one thread 902 against
# 781); 1 -> 32 under 3 x 3 (conv32-64's first layer): forward 721 against 673,
# backward 1635 against 1685, so not chosen there.
DIRECT_MAX_CHANNELS = 16


def is_direct(W, stride, padding):
    """Whether conv2d with filters W (kh, kw, C_in, C_out) runs direct (a 1 x 1
    kernel at stride 1 without padding reads x as its column matrix: a GEMM)."""
    kh, kw, c, o = W.shape
    return c * o <= DIRECT_MAX_CHANNELS and not GemmConv._is_pointwise(W, stride, padding)


class GemmConv:
    """Mixin: conv2d_forward and conv2d_backward through im2col and the dense
    kernels of the backend it is mixed into."""

    _conv_local = threading.local()

    def _conv_workspace(self, role, shape, dtype):
        """An uninitialised array reused by calls of the same role, shape and dtype
        (per thread; the 24 most recently used kept: the columns, the copy of
        the x they hold and their gradient of 8 convolution layers of distinct
        shapes)."""
        cache = getattr(self._conv_local, "arrays", None)
        if cache is None:
            cache = self._conv_local.arrays = OrderedDict()
        key = (self.name, role, shape, np.dtype(dtype))
        a = cache.get(key)
        if a is None:
            if len(cache) >= 24:
                cache.popitem(last=False)
            a = cache[key] = chk.empty(shape, dtype)
        else:
            cache.move_to_end(key)
        return a

    @staticmethod
    def _is_pointwise(W, stride, padding):
        return W.shape[:2] == (1, 1) and stride == (1, 1) and padding == (0, 0)

    @staticmethod
    def _tiles(n, image_bytes):
        """Ranges (n0, n1) of images splitting a batch of n into even tiles whose
        column matrix (image_bytes per image) holds at most COLUMN_TILE_BYTES,
        one image at least (an empty batch: one empty tile)."""
        if n == 0:
            return [(0, 0)]
        count = min(n, max(1, -(-n * image_bytes // COLUMN_TILE_BYTES)))
        size = -(-n // count)
        return [(n0, min(n, n0 + size)) for n0 in range(0, n, size)]

    def _columns(self, x, W, stride, padding, oh, ow, reuse=False, each_tile=None):
        """The column matrix of x (N*OH*OW, KH*KW*C) (x itself for a 1 x 1 kernel).

        It is built a tile of images at a time (_tiles), each_tile(cols[rows],
        rows) called after each tile, while its rows are in cache.
        The forward keeps a copy of the x its columns were built from (x is KH*KW
        times smaller than them); the backward (reuse=True) rebuilds the columns
        only when the workspace now holds another x's, or x has changed since
        (bit for bit). A training step thus builds them once: measured with one
        thread, 64 images 28 x 28 x 1 under a 5 x 5 kernel, im2col 1.07 ms against
        0.1 ms for the copy and the comparison."""
        kh, kw, c, _ = W.shape
        if self._is_pointwise(W, stride, padding):
            if each_tile is not None:
                each_tile(x.reshape(-1, c), slice(None))
            return x.reshape(-1, c)
        shape = (x.shape[0] * oh * ow, kh * kw * c)
        cols = self._conv_workspace("cols", shape, x.dtype)
        seen = self._conv_workspace(("cols of", shape), x.shape, x.dtype)
        # what cols holds: {cols shape: (geometry, cols, seen)}, the arrays held
        # so that `is` identifies them; entries of evicted workspaces dropped
        built = self._conv_local.__dict__.setdefault("built", {})
        geometry = (x.shape, kh, kw, stride, padding)
        if reuse:
            held = built.get((shape, x.dtype))
            bits = np.dtype(f"u{x.dtype.itemsize}")
            if (held is not None and held[0] == geometry and held[1] is cols and held[2] is seen
                    and np.array_equal(seen.view(bits), x.view(bits))):
                return cols
        per_image = oh * ow
        for n0, n1 in self._tiles(x.shape[0], per_image * cols.shape[1] * cols.itemsize):
            rows = slice(n0 * per_image, n1 * per_image)
            self._im2col(x[n0:n1], kh, kw, stride, padding, cols[rows])
            if each_tile is not None:
                each_tile(cols[rows], rows)
        np.copyto(seen, x)
        live = {id(a) for a in self._conv_local.arrays.values()}
        for key in [k for k, v in built.items() if id(v[1]) not in live or id(v[2]) not in live]:
            del built[key]
        built[shape, x.dtype] = (geometry, cols, seen)
        return cols

    def _conv2d_forward(self, x, W, b, stride, padding, activation, out, preact):
        o = out.shape[3]
        W2, out2 = W.reshape(-1, o), out.reshape(-1, o)
        preact2 = None if preact is None else preact.reshape(-1, o)

        def product(cols, rows):  # GEMM and epilogue of the tile just built
            self._dense_forward(cols, W2, b, activation, out2[rows],
                                None if preact2 is None else preact2[rows])
        self._columns(x, W, stride, padding, out.shape[1], out.shape[2], each_tile=product)

    def _conv2d_backward(self, dy, x, W, y, activation, stride, padding, preact, dx, dW, db, dz):
        """dW, db over the whole batch (one GEMM over the columns the forward
        left); dx a tile of images at a time: dcols = dz W^T for the tile's
        rows, then col2im while the tile's dcols are in cache."""
        n, oh, ow, o = dy.shape
        kh, kw, c, _ = W.shape
        cols = self._columns(x, W, stride, padding, oh, ow, reuse=True)
        pointwise = self._is_pointwise(W, stride, padding)

        def rows(a):
            return None if a is None else a.reshape(-1, o)
        self._dense_backward(rows(dy), cols, W.reshape(-1, o), rows(y), activation, rows(preact),
                             dx.reshape(-1, c) if pointwise and dx is not None else None,
                             dW.reshape(-1, o), db, rows(dz))
        if dx is None or pointwise:
            return
        dz2, Wt = rows(dy if activation == "identity" else dz), W.reshape(-1, o).T
        per_image = oh * ow
        tiles = self._tiles(n, per_image * cols.shape[1] * cols.itemsize)
        largest = max(n1 - n0 for n0, n1 in tiles)
        dcols = self._conv_workspace("dcols", (largest * per_image, cols.shape[1]), x.dtype)
        for n0, n1 in tiles:
            tile = dcols[:(n1 - n0) * per_image]
            np.matmul(dz2[n0 * per_image:n1 * per_image], Wt, out=tile)
            self._col2im(tile, kh, kw, stride, padding, dx[n0:n1])
