"""Jitted loops of the numba backend's convolution and pooling (numba_backend.py
calls them; the GEMM is BLAS, see _gemm_conv.py).

Images are channels-last, x (N, IH, IW, C), so every loop keeps the channels
innermost (contiguous, vectorised). Each kernel is written once over a range of
images (`*_images`) and run directly for small batches or split over the batch
with prange by its `*_parallel` driver (see _numba_kernels.py for why the
drivers are separate functions): images never share an output element, so both
give the same bits. Windows: output (i, j) reads rows i*sh - ph + (0..KH-1) and
columns j*sw - pw + (0..KW-1); cells outside the image are padding.
"""

import numpy as np
from numba import njit, prange

jit = njit(cache=True, error_model="numpy")
jit_parallel = njit(cache=True, parallel=True, error_model="numpy")


@jit
def im2col_images(x, kh, kw, sh, sw, ph, pw, oh, ow, cols, n0, n1):
    """cols[(n*OH + i)*OW + j, (a*KW + b)*C + c] = x[n, i*sh - ph + a, j*sw - pw + b, c]
    (0 in the padding) for images n0 <= n < n1."""
    ih, iw, c = x.shape[1], x.shape[2], x.shape[3]
    if kw * c <= IM2COL_THIN:
        im2col_padded(x, kh, kw, sh, sw, ph, pw, oh, ow, cols, n0, n1)
        return
    for n in range(n0, n1):
        for i in range(oh):
            for j in range(ow):
                row = (n * oh + i) * ow + j
                for a in range(kh):
                    r = i * sh - ph + a
                    for b in range(kw):
                        s = j * sw - pw + b
                        base = (a * kw + b) * c
                        if 0 <= r < ih and 0 <= s < iw:
                            for ch in range(c):
                                cols[row, base + ch] = x[n, r, s, ch]
                        else:
                            for ch in range(c):
                                cols[row, base + ch] = 0


# window rows of at most this many elements (kw * C) are copied from a padded
# copy of the image (im2col_padded): measured with one thread, 64 images 28 x 28
# x 1, 1.28 ms against 2.33 between the bounds under a 5 x 5 kernel with
# padding 2, 0.62 against 1.05 under 3 x 3 with padding 1
IM2COL_THIN = 16


@jit
def im2col_padded(x, kh, kw, sh, sw, ph, pw, oh, ow, cols, n0, n1):
    """im2col_images from a zero-padded copy of each image (IH + 2 ph, IW + 2 pw, C):
    one copy of kw * C contiguous elements per window row, no bounds."""
    ih, iw, c = x.shape[1], x.shape[2], x.shape[3]
    pad = np.zeros((ih + 2 * ph, iw + 2 * pw, c), x.dtype)  # the border stays 0
    flat = pad.reshape(-1)
    kwc, width = kw * c, (iw + 2 * pw) * c
    for n in range(n0, n1):
        pad[ph:ph + ih, pw:pw + iw, :] = x[n]
        for i in range(oh):
            for j in range(ow):
                row = (n * oh + i) * ow + j
                for a in range(kh):
                    start = (i * sh + a) * width + j * sw * c
                    for e in range(kwc):
                        cols[row, a * kwc + e] = flat[start + e]


@jit_parallel
def im2col_parallel(x, kh, kw, sh, sw, ph, pw, oh, ow, cols):
    for n in prange(x.shape[0]):
        im2col_images(x, kh, kw, sh, sw, ph, pw, oh, ow, cols, n, n + 1)


@jit
def col2im_images(dcols, kh, kw, sh, sw, ph, pw, oh, ow, dx, n0, n1):
    """dx[n] = the sum of every window's gradient dcols added on the cells it read
    (the adjoint of im2col), for images n0 <= n < n1."""
    ih, iw, c = dx.shape[1], dx.shape[2], dx.shape[3]
    for n in range(n0, n1):
        dx[n] = 0
        for i in range(oh):
            for j in range(ow):
                row = (n * oh + i) * ow + j
                for a in range(kh):
                    r = i * sh - ph + a
                    if r < 0 or r >= ih:
                        continue
                    for b in range(kw):
                        s = j * sw - pw + b
                        if s < 0 or s >= iw:
                            continue
                        base = (a * kw + b) * c
                        for ch in range(c):
                            dx[n, r, s, ch] += dcols[row, base + ch]


@jit_parallel
def col2im_parallel(dcols, kh, kw, sh, sw, ph, pw, oh, ow, dx):
    for n in prange(dx.shape[0]):
        col2im_images(dcols, kh, kw, sh, sw, ph, pw, oh, ow, dx, n, n + 1)


@jit
def maxpool_images(x, kh, kw, sh, sw, ph, pw, out, argmax, n0, n1):
    """out, argmax (N, OH, OW, C): each window's maximum and its flat index
    r*IW + s in the image; the first maximum in row-major window order, or the
    first NaN; padding never wins (the first real cell starts the search)."""
    ih, iw, c = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = out.shape[1], out.shape[2]
    for n in range(n0, n1):
        for i in range(oh):
            r0 = max(i * sh - ph, 0)
            r1 = min(i * sh - ph + kh, ih)
            for j in range(ow):
                s0 = max(j * sw - pw, 0)
                s1 = min(j * sw - pw + kw, iw)
                for ch in range(c):
                    out[n, i, j, ch] = x[n, r0, s0, ch]
                    argmax[n, i, j, ch] = r0 * iw + s0
                for r in range(r0, r1):
                    for s in range(s0, s1):
                        for ch in range(c):
                            v = x[n, r, s, ch]
                            best = out[n, i, j, ch]
                            if v > best or (v != v and best == best):
                                out[n, i, j, ch] = v
                                argmax[n, i, j, ch] = r * iw + s


@jit_parallel
def maxpool_parallel(x, kh, kw, sh, sw, ph, pw, out, argmax):
    for n in prange(x.shape[0]):
        maxpool_images(x, kh, kw, sh, sw, ph, pw, out, argmax, n, n + 1)


@jit
def maxpool_backward_images(dy, argmax, dx, n0, n1):
    """dx[n] = 0 but at each argmax index, the sum of the dy of the windows it won
    (added in the order of the outputs, as the reference)."""
    iw, c = dx.shape[2], dx.shape[3]
    oh, ow = dy.shape[1], dy.shape[2]
    for n in range(n0, n1):
        dx[n] = 0
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    k = argmax[n, i, j, ch]
                    dx[n, k // iw, k % iw, ch] += dy[n, i, j, ch]


@jit_parallel
def maxpool_backward_parallel(dy, argmax, dx):
    for n in prange(dx.shape[0]):
        maxpool_backward_images(dy, argmax, dx, n, n + 1)


@jit
def avgpool_images(x, kh, kw, sh, sw, ph, pw, out, acc, n0, n1):
    """out = each window's sum (float64, in acc (C,)) over pool cells, padding
    counted in the divisor kh*kw."""
    ih, iw, c = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = out.shape[1], out.shape[2]
    for n in range(n0, n1):
        for i in range(oh):
            r0 = max(i * sh - ph, 0)
            r1 = min(i * sh - ph + kh, ih)
            for j in range(ow):
                s0 = max(j * sw - pw, 0)
                s1 = min(j * sw - pw + kw, iw)
                acc[:] = 0.0
                for r in range(r0, r1):
                    for s in range(s0, s1):
                        for ch in range(c):
                            acc[ch] += x[n, r, s, ch]
                for ch in range(c):
                    out[n, i, j, ch] = acc[ch] / (kh * kw)


@jit_parallel
def avgpool_parallel(x, kh, kw, sh, sw, ph, pw, out):
    c = x.shape[3]
    for n in prange(x.shape[0]):
        acc = np.empty(c, np.float64)
        avgpool_images(x, kh, kw, sh, sw, ph, pw, out, acc, n, n + 1)


@jit
def avgpool_backward_images(dy, kh, kw, sh, sw, ph, pw, area, dx, n0, n1):
    """dx[n]: each cell receives dy / area (area = kh*kw in the dtype) of every
    window that holds it."""
    ih, iw, c = dx.shape[1], dx.shape[2], dx.shape[3]
    oh, ow = dy.shape[1], dy.shape[2]
    for n in range(n0, n1):
        dx[n] = 0
        for i in range(oh):
            r0 = max(i * sh - ph, 0)
            r1 = min(i * sh - ph + kh, ih)
            for j in range(ow):
                s0 = max(j * sw - pw, 0)
                s1 = min(j * sw - pw + kw, iw)
                for r in range(r0, r1):
                    for s in range(s0, s1):
                        for ch in range(c):
                            dx[n, r, s, ch] += dy[n, i, j, ch] / area


@jit_parallel
def avgpool_backward_parallel(dy, kh, kw, sh, sw, ph, pw, area, dx):
    for n in prange(dx.shape[0]):
        avgpool_backward_images(dy, kh, kw, sh, sw, ph, pw, area, dx, n, n + 1)


