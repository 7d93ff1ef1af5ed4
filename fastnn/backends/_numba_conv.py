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

from ._numba_kernels import IDENTITY, SOFTMAX, act_backward_row, add_rows, bias_act_rows
from ._numba_math import jit_inline, kernel_jit
from ._numba_rnn import gemm, part_blas

jit = kernel_jit()
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




# ------------------------------------------------------------------ convolution
# conv2d_forward and conv2d_backward as one jitted call each, the C kernels' plan
# (csrc/conv_impl.h): the images split into `parts` ranges run side by side (a
# prange; the caller holds the BLAS on one thread), each walked in tiles of at
# most `tile` images, every tile's im2col, GEMMs (BLAS's ?gemm, _numba_rnn.gemm)
# and epilogue done while its columns are in that core's cache. Per range:
# cols and dcols (most rows, K) and a dW partial (K, O) of the workspaces; the
# partials, and db's (float64), added in range order after. blas_parts:
# _numba_rnn.Blas(dtype, parts).args(), a row of BLAS's arguments per range.
@jit_parallel
def conv_forward_tiles(blas_parts, code, x, W2, b, preact, out, cols_ws, tile, parts, kh, kw, sh, sw,
                       ph, pw, oh, ow, pointwise):
    """out (N*OH*OW, O) = act(cols @ W2 + b), preact (like out, or empty) = cols @ W2 + b;
    x (N, IH, IW, C); W2 (K, O); b (O,) or empty; cols_ws (parts, tile*OH*OW, K)."""
    n, pixels = x.shape[0], oh * ow
    k, o = W2.shape
    for part in prange(parts):
        blas = part_blas(blas_parts, part)
        cols = cols_ws[part]
        n0, n1 = n * part // parts, n * (part + 1) // parts
        tiles = (n1 - n0 + tile - 1) // tile
        for t in range(tiles):
            t0 = n0 + (n1 - n0) * t // tiles
            t1 = n0 + (n1 - n0) * (t + 1) // tiles
            r0, rows = t0 * pixels, (t1 - t0) * pixels
            if pointwise:  # x is its own column matrix
                gemm(blas, 0, 0, rows, o, k, x[t0], k, W2, o, 0.0, out[r0:], o)
            else:
                im2col_images(x[t0:t1], kh, kw, sh, sw, ph, pw, oh, ow, cols, 0, t1 - t0)
                gemm(blas, 0, 0, rows, o, k, cols, k, W2, o, 0.0, out[r0:], o)
            if preact.size:
                bias_act_rows(code, out[r0:r0 + rows], b, preact[r0:r0 + rows], 0, rows)
            else:
                bias_act_rows(code, out[r0:r0 + rows], b, preact, 0, rows)


@jit_inline
def _tile_weight_grads(blas, d, r0, rows, cols, k, o, beta, dW, colsum):
    """dW (K, O) = cols^T d[r0:r0+rows] + beta dW; colsum (O,) += its column sums."""
    acc = np.empty(o)
    add_rows(acc, d, r0, r0 + rows)
    for j in range(o):
        colsum[j] += acc[j]
    gemm(blas, 1, 0, k, o, rows, cols, k, d[r0], o, beta, dW, o)


@jit_inline
def _tile_dx(blas, d, r0, rows, W2, k, o, dcols, dx_tile, kh, kw, sh, sw, ph, pw, oh, ow,
             pointwise):
    """dx of a tile's images = col2im(d[r0:r0+rows] W2^T) (or the product itself, pointwise)."""
    if pointwise:
        gemm(blas, 0, 1, rows, k, o, d[r0], o, W2, o, 0.0, dx_tile, k)
    else:
        gemm(blas, 0, 1, rows, k, o, d[r0], o, W2, o, 0.0, dcols, k)
        col2im_images(dcols, kh, kw, sh, sw, ph, pw, oh, ow, dx_tile, 0, dx_tile.shape[0])


@jit_inline
def _act_backward_rows(code, dy, y, preact, dz, lo, hi):
    """dz = dy * act' on rows lo..hi (N, O arrays): softmax row by row, the
    elementwise activations over the rows as one (a call per row of O elements
    costs more than its work: 64 images 28 x 28 -> 6 channels, relu, 1.8 ms)."""
    if code == SOFTMAX:
        for i in range(lo, hi):
            act_backward_row(code, dy[i], y[i], preact[i], dz[i])
    else:
        act_backward_row(code, dy[lo:hi].reshape(-1), y[lo:hi].reshape(-1),
                         preact[lo:hi].reshape(-1), dz[lo:hi].reshape(-1))


@jit_parallel
def conv_backward_tiles(blas_parts, code, dy, x, W2, y, preact, dz, dx, dW, db, cols_ws, dcols_ws, dW_ws,
                        tile, parts, kh, kw, sh, sw, ph, pw, oh, ow, pointwise):
    """dz = dy * act' (dy, y, preact, dz (N*OH*OW, O); dz not written for the
    identity), db (O,) its column sums, dW (K, O) = cols^T dz and, when dx
    (N, IH, IW, C) is not empty, dx = col2im(dz W2^T). Workspaces: cols_ws,
    dcols_ws (parts, tile*OH*OW, K), dW_ws (parts, K, O) (range 0's unused)."""
    n, pixels = x.shape[0], oh * ow
    k, o = W2.shape
    colsum = np.zeros((parts, o))
    for part in prange(parts):
        blas = part_blas(blas_parts, part)
        cols, dcols, dWp = cols_ws[part], dcols_ws[part], dW_ws[part]
        if part == 0:
            dWp = dW  # range 0 writes dW itself
        n0, n1 = n * part // parts, n * (part + 1) // parts
        tiles = (n1 - n0 + tile - 1) // tile
        for t in range(tiles):
            t0 = n0 + (n1 - n0) * t // tiles
            t1 = n0 + (n1 - n0) * (t + 1) // tiles
            r0, rows = t0 * pixels, (t1 - t0) * pixels
            beta = 0.0 if t == 0 else 1.0
            if pointwise:  # x is its own column matrix: its address at image t0
                c = x[t0].reshape(-1)
            else:
                im2col_images(x[t0:t1], kh, kw, sh, sw, ph, pw, oh, ow, cols, 0, t1 - t0)
                c = cols.reshape(-1)
            if code == IDENTITY:
                _tile_weight_grads(blas, dy, r0, rows, c, k, o, beta, dWp, colsum[part])
                if dx.size:
                    _tile_dx(blas, dy, r0, rows, W2, k, o, dcols, dx[t0:t1], kh, kw, sh, sw, ph,
                             pw, oh, ow, pointwise)
            else:
                _act_backward_rows(code, dy, y, preact, dz, r0, r0 + rows)
                _tile_weight_grads(blas, dz, r0, rows, c, k, o, beta, dWp, colsum[part])
                if dx.size:
                    _tile_dx(blas, dz, r0, rows, W2, k, o, dcols, dx[t0:t1], kh, kw, sh, sw, ph,
                             pw, oh, ow, pointwise)
    for part in range(1, parts):  # in range order: the same bits for a given count
        dW += dW_ws[part]
    for j in range(o):
        s = 0.0
        for part in range(parts):
            s += colsum[part, j]
        db[j] = s


# ------------------------------------------------------------ direct convolution
# For layers of few channels (_gemm_conv.is_direct: LeNet's first layer, 1 -> 6),
# no im2col and no BLAS, as the C kernels (csrc/conv_impl.h conv2d_direct_*):
# each image copied into a zero-padded buffer pad, flat, (IH + 2 ph) rows of
# wide = IW + 2 pw cells of C channels (and kw cells after, read by the last
# row's discarded outputs), the output accumulated channel-major, acc (O, OH,
# wide) (its first OW columns used), so that the innermost loop runs over
# contiguous pixels (vectorised). One channel at stride 1 (LeNet's first
# layer) runs each tap as one loop over a whole image: output i * wide + j
# reads pad at (i + ka) * wide + j + kb, the columns past OW computed and
# discarded. The images are split into `parts` ranges run side by side
# (prange), each with its own buffers; the weight gradient's sums are a
# float64 partial per range, added in range order. Reductions may reassociate
# (fastmath reassoc, contract): the sums over an image's pixels then vectorise.
jit_direct = kernel_jit(fastmath={"reassoc", "contract"})
jit_direct_parallel = njit(cache=True, parallel=True, error_model="numpy",
                           fastmath={"reassoc", "contract"})


@jit_direct
def _direct_geometry(x, W, sh, sw, ph, pw):
    """(oh, ow, wide, pad size) of the direct convolution of x by W."""
    ih, iw, c = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = W.shape[0], W.shape[1]
    wide = iw + 2 * pw
    return ((ih + 2 * ph - kh) // sh + 1, (iw + 2 * pw - kw) // sw + 1, wide,
            ((ih + 2 * ph) * wide + kw) * c)


@jit_direct
def _direct_fill(x, m, pad, ph, pw, wide):
    """The interior of pad = image m of x (the border stays as it is: 0)."""
    ih, iw, c = x.shape[1], x.shape[2], x.shape[3]
    for r in range(ih):
        row = pad[((r + ph) * wide + pw) * c:]
        for s in range(iw):
            for ch in range(c):
                row[s * c + ch] = x[m, r, s, ch]


@jit_direct
def _direct_image(pad, W, acc, sh, sw, ow, wide):
    """acc (O, OH, wide) = conv(pad, W) of one image, W (KH, KW, C, O), its
    first ow columns (all of them for one channel at stride 1)."""
    kh, kw, c, o = W.shape
    oh = acc.shape[1]
    wc, step = wide * c, sw * c
    acc[:] = 0
    if c == 1 and sh == 1 and sw == 1:  # each tap one loop over the image
        for q in range(o):
            out = acc[q].reshape(-1)
            for ka in range(kh):
                for kb in range(kw):
                    src = pad[ka * wide + kb:]
                    w = W[ka, kb, 0, q]
                    for e in range(oh * wide):
                        out[e] += src[e] * w
        return
    for q in range(o):
        for i in range(oh):
            row = acc[q, i]
            for ka in range(kh):
                for kb in range(kw):
                    for ch in range(c):
                        w = W[ka, kb, ch, q]
                        src = pad[(i * sh + ka) * wc + kb * c + ch:]  # indices >= 0: no wraparound
                        for j in range(ow):
                            row[j] += src[j * step] * w


@jit_direct
def _direct_forward_images(code, x, W, b, preact, out, sh, sw, ph, pw, m0, m1):
    """direct_forward for images m0 <= m < m1."""
    o = W.shape[3]
    oh, ow, wide, size = _direct_geometry(x, W, sh, sw, ph, pw)
    pixels = oh * ow
    pad = np.zeros(size, x.dtype)
    acc = np.empty((o, oh, wide), x.dtype)
    for m in range(m0, m1):
        _direct_fill(x, m, pad, ph, pw, wide)
        _direct_image(pad, W, acc, sh, sw, ow, wide)
        block = out[m * pixels:(m + 1) * pixels]
        for i in range(oh):
            for j in range(ow):
                for q in range(o):
                    block[i * ow + j, q] = acc[q, i, j]
        bias_act_rows(code, out, b, preact, m * pixels, (m + 1) * pixels)


@jit_direct_parallel
def direct_forward(code, x, W, b, preact, out, parts, sh, sw, ph, pw):
    """out (N*OH*OW, O) = act(conv(x, W) + b), preact (like out, or empty) =
    conv + b; x (N, IH, IW, C); W (KH, KW, C, O); b (O,) or empty."""
    n = x.shape[0]
    for part in prange(parts):
        _direct_forward_images(code, x, W, b, preact, out, sh, sw, ph, pw, n * part // parts,
                               n * (part + 1) // parts)


@jit_direct
def _direct_image_backward(pad, W, dt, dW, dpad, sh, sw, ow, wide, need_dx):
    """One image's dW (KH, KW, C, O, float64) += the products of its cells and
    dt (O, OH, wide), its output gradient channel-major, 0 past column ow;
    with need_dx, dpad (the padded dx, as pad) += dt W^T added on the cells
    the taps read."""
    kh, kw, c, o = W.shape
    oh = dt.shape[1]
    wc, step = wide * c, sw * c
    whole = c == 1 and sh == 1 and sw == 1  # each tap one loop over the image
    for q in range(o):
        for ka in range(kh):
            for kb in range(kw):
                for ch in range(c):
                    w = W[ka, kb, ch, q]
                    s = dt.dtype.type(0)
                    if whole:
                        d, src = dt[q].reshape(-1), pad[ka * wide + kb:]
                        for e in range(oh * wide):
                            s += src[e] * d[e]
                        if need_dx:
                            dst = dpad[ka * wide + kb:]
                            for e in range(oh * wide):
                                dst[e] += d[e] * w
                        dW[ka, kb, ch, q] += s
                        continue
                    for i in range(oh):
                        at = (i * sh + ka) * wc + kb * c + ch
                        d, src = dt[q, i], pad[at:]  # indices >= 0 only: no wraparound
                        for j in range(ow):
                            s += src[j * step] * d[j]
                        if need_dx:
                            dst = dpad[at:]
                            for j in range(ow):
                                dst[j * step] += d[j] * w
                    dW[ka, kb, ch, q] += s


@jit_direct
def _direct_backward_images(code, dy, x, W, y, preact, dz, dx, dW, db, sh, sw, ph, pw, m0, m1):
    """direct_backward for images m0 <= m < m1: dW (float64, like W) and db
    (float64, (O,)) are this range's sums."""
    ih, iw, c = x.shape[1], x.shape[2], x.shape[3]
    o = W.shape[3]
    oh, ow, wide, size = _direct_geometry(x, W, sh, sw, ph, pw)
    pixels = oh * ow
    need_dx = dx.size > 0
    pad = np.zeros(size, x.dtype)
    dpad = np.empty(size, x.dtype)
    dt = np.zeros((o, oh, wide), x.dtype)  # columns past ow stay 0
    col = np.empty(o)
    for m in range(m0, m1):
        r0 = m * pixels
        if code != IDENTITY:
            _act_backward_rows(code, dy, y, preact, dz, r0, r0 + pixels)
            add_rows(col, dz, r0, r0 + pixels)
            block = dz[r0:r0 + pixels]
        else:
            add_rows(col, dy, r0, r0 + pixels)
            block = dy[r0:r0 + pixels]
        for q in range(o):
            db[q] += col[q]
        for i in range(oh):
            for j in range(ow):
                for q in range(o):
                    dt[q, i, j] = block[i * ow + j, q]
        _direct_fill(x, m, pad, ph, pw, wide)
        if need_dx:
            dpad[:] = 0
        _direct_image_backward(pad, W, dt, dW, dpad, sh, sw, ow, wide, need_dx)
        if need_dx:
            for r in range(ih):
                row = dpad[((r + ph) * wide + pw) * c:]
                for s in range(iw):
                    for ch in range(c):
                        dx[m, r, s, ch] = row[s * c + ch]


@jit_direct_parallel
def direct_backward(code, dy, x, W, y, preact, dz, dx, dW, db, parts, sh, sw, ph, pw):
    """dz = dy * act' (dy, y, preact, dz (N*OH*OW, O); dz not written for the
    identity), db (O,) its column sums, dW (KH, KW, C, O) the weight gradient
    and, when dx (N, IH, IW, C) is not empty, dx."""
    n, o = x.shape[0], W.shape[3]
    dW_parts = np.zeros((parts,) + W.shape)
    db_parts = np.zeros((parts, o))
    for part in prange(parts):
        _direct_backward_images(code, dy, x, W, y, preact, dz, dx, dW_parts[part], db_parts[part],
                                sh, sw, ph, pw, n * part // parts, n * (part + 1) // parts)
    total, col_total = dW_parts[0].reshape(-1), db_parts[0]
    for part in range(1, parts):  # in range order: the same bits for a given count
        total += dW_parts[part].reshape(-1)
        col_total += db_parts[part]
    flat = dW.reshape(-1)
    for e in range(flat.size):
        flat[e] = total[e]
    for q in range(o):
        db[q] = col_total[q]
