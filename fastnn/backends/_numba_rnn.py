"""Jitted recurrent kernels (rnn, lstm, gru) behind the numba backend.

Each forward and each backward is one jitted function holding the whole time
loop, so no Python runs between steps. GEMMs are BLAS through np.dot with an
out argument on contiguous 2-D arrays (no allocation): the input projection of
every step at once before the loop, (N*T, F) @ (F, G*H); per step one
(N, H) @ (H, G*H); in the backward per step dW_h's (H, N) @ (N, G*H) (added to
the sum) and dh's (N, G*H) @ (G*H, H), and after the loop dx and dW_x over all
steps at once. Around each step's GEMM, one pass over (N, H) does every gate.

Sequences are batch-first (N, T, ...), so a step's slice [:, t] is strided: the
state a GEMM reads (h_{t-1}) and the gradient it reads are kept in contiguous
(N, H) / (N, G*H) workspaces, written in the same pass as the sequences.

Roundings follow the reference: every operation in the array dtype, in the
reference's order, with tanh and sigmoid evaluated in float64 and rounded once
(reference.FLOAT64_INSIDE); bias gradients summed in float64.
"""

import numpy as np

from ._numba_kernels import jit
from ._numba_math import fexp, jit_inline, tanh64


@jit_inline
def sigmoid64(v):
    e = fexp(-abs(v))  # in (0, 1]: no overflow for any v
    return (1.0 if v >= 0.0 else e) / (1.0 + e)


@jit
def _copy(src, dst):
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = src[i, j]


@jit
def _project(x, W_x, xw):
    """xw (N, T, G*H) = x (N, T, F) @ W_x as one GEMM over every step."""
    n, steps, f = x.shape
    np.dot(x.reshape(n * steps, f), W_x, xw.reshape(n * steps, W_x.shape[1]))


@jit
def _input_side(x, W_x, dz, dx, dW_x, db):
    """dx = dz @ W_x.T, dW_x = x.T @ dz over every step at once (GEMMs); db the
    column sums of dz (N, T, G*H), in float64."""
    n, steps, f = x.shape
    width = dz.shape[2]
    dz2 = dz.reshape(n * steps, width)
    np.dot(dz2, W_x.T, dx.reshape(n * steps, f))
    np.dot(x.reshape(n * steps, f).T, dz2, dW_x)
    acc = np.zeros(width)
    for r in range(n * steps):
        for j in range(width):
            acc[j] += dz2[r, j]
    for j in range(width):
        db[j] = acc[j]


# ---------------------------------------------------------------------- rnn
@jit
def rnn_forward(x, h0, W_x, W_h, b, relu, hs, xw, h, z):
    """hs (N, T, H) of h_t = act(x_t W_x + b + h_{t-1} W_h); xw (N, T, H),
    h and z (N, H) workspaces."""
    n, steps, hidden = hs.shape
    zero = hs.dtype.type(0)
    _project(x, W_x, xw)
    _copy(h0, h)
    for t in range(steps):
        np.dot(h, W_h, z)
        for i in range(n):
            for j in range(hidden):
                v = (xw[i, t, j] + b[j]) + z[i, j]
                if relu:
                    y = zero if v < zero else v  # NaN stays NaN, as np.maximum
                else:
                    y = hs.dtype.type(tanh64(np.float64(v)))
                h[i, j] = y
                hs[i, t, j] = y


@jit
def rnn_backward(dhs, x, h0, W_x, W_h, hs, relu, dx, dh0, dW_x, dW_h, db, dz, dh, hp, dzt,
                 tmp):
    """Gradients through time; dz (N, T, H) d loss / d pre-activations; dh (the
    gradient of h_t from step t + 1), hp (h_{t-1}), dzt (N, H) and tmp (H, H)
    workspaces."""
    n, steps, hidden = hs.shape
    dt = hs.dtype.type
    one, zero = dt(1), dt(0)
    dh[:] = zero
    dW_h[:] = zero
    for t in range(steps - 1, -1, -1):
        for i in range(n):
            for j in range(hidden):
                g = dhs[i, t, j] + dh[i, j]
                y = hs[i, t, j]
                if relu:
                    d = g if y > zero else zero
                else:
                    d = g * (one - y * y)
                dzt[i, j] = d
                dz[i, t, j] = d
                hp[i, j] = hs[i, t - 1, j] if t else h0[i, j]
        np.dot(hp.T, dzt, tmp)
        dW_h += tmp
        np.dot(dzt, W_h.T, dh)
    _copy(dh, dh0)
    _input_side(x, W_x, dz, dx, dW_x, db)


# --------------------------------------------------------------------- lstm
@jit
def lstm_forward(x, h0, c0, W_x, W_h, b, hs, cs, gates, xw, h, c, z):
    """hs, cs (N, T, H); gates (N, T, 4H): i, f, g, o after their nonlinearities;
    xw (N, T, 4H), h, c (N, H) and z (N, 4H) workspaces."""
    n, steps, hidden = hs.shape
    dt = hs.dtype.type
    _project(x, W_x, xw)
    _copy(h0, h)
    _copy(c0, c)
    for t in range(steps):
        np.dot(h, W_h, z)
        for i in range(n):
            for j in range(hidden):
                ig = dt(sigmoid64(np.float64((xw[i, t, j] + b[j]) + z[i, j])))
                k = hidden + j
                fg = dt(sigmoid64(np.float64((xw[i, t, k] + b[k]) + z[i, k])))
                k += hidden
                gg = dt(tanh64(np.float64((xw[i, t, k] + b[k]) + z[i, k])))
                k += hidden
                og = dt(sigmoid64(np.float64((xw[i, t, k] + b[k]) + z[i, k])))
                cn = fg * c[i, j] + ig * gg
                hn = og * dt(tanh64(np.float64(cn)))
                gates[i, t, j] = ig
                gates[i, t, hidden + j] = fg
                gates[i, t, 2 * hidden + j] = gg
                gates[i, t, 3 * hidden + j] = og
                c[i, j] = cn
                h[i, j] = hn
                cs[i, t, j] = cn
                hs[i, t, j] = hn


@jit
def lstm_backward(dhs, x, h0, c0, W_x, W_h, hs, cs, gates, dx, dh0, dc0, dW_x, dW_h, db, dz,
                  dh, dc, hp, dzt, tmp):
    """Gradients through time; dz (N, T, 4H); dh, dc, hp (N, H), dzt (N, 4H) and
    tmp (H, 4H) workspaces."""
    n, steps, hidden = hs.shape
    dt = hs.dtype.type
    one, zero = dt(1), dt(0)
    dh[:] = zero
    dc[:] = zero
    dW_h[:] = zero
    for t in range(steps - 1, -1, -1):
        for i in range(n):
            for j in range(hidden):
                ig = gates[i, t, j]
                fg = gates[i, t, hidden + j]
                gg = gates[i, t, 2 * hidden + j]
                og = gates[i, t, 3 * hidden + j]
                c_prev = cs[i, t - 1, j] if t else c0[i, j]
                tc = dt(tanh64(np.float64(cs[i, t, j])))
                g = dhs[i, t, j] + dh[i, j]
                dcv = dc[i, j] + g * og * (one - tc * tc)
                d_i = dcv * gg * ig * (one - ig)
                d_f = dcv * c_prev * fg * (one - fg)
                d_g = dcv * ig * (one - gg * gg)
                d_o = g * tc * og * (one - og)
                dc[i, j] = dcv * fg
                dzt[i, j] = d_i
                dzt[i, hidden + j] = d_f
                dzt[i, 2 * hidden + j] = d_g
                dzt[i, 3 * hidden + j] = d_o
                dz[i, t, j] = d_i
                dz[i, t, hidden + j] = d_f
                dz[i, t, 2 * hidden + j] = d_g
                dz[i, t, 3 * hidden + j] = d_o
                hp[i, j] = hs[i, t - 1, j] if t else h0[i, j]
        np.dot(hp.T, dzt, tmp)
        dW_h += tmp
        np.dot(dzt, W_h.T, dh)
    _copy(dh, dh0)
    _copy(dc, dc0)
    _input_side(x, W_x, dz, dx, dW_x, db)


# ---------------------------------------------------------------------- gru
@jit
def gru_forward(x, h0, W_x, W_h, b_x, b_h, hs, gates, hn, xw, h, z):
    """hs (N, T, H); gates (N, T, 3H): r, z, n; hn (N, T, H) h_{t-1} W_hn + b_hn;
    xw (N, T, 3H), h (N, H) and z (N, 3H) workspaces."""
    n, steps, hidden = hs.shape
    dt = hs.dtype.type
    one = dt(1)
    _project(x, W_x, xw)
    _copy(h0, h)
    for t in range(steps):
        np.dot(h, W_h, z)
        for i in range(n):
            for j in range(hidden):
                k = hidden + j
                m = 2 * hidden + j
                r = dt(sigmoid64(np.float64((xw[i, t, j] + b_x[j]) + (z[i, j] + b_h[j]))))
                u = dt(sigmoid64(np.float64((xw[i, t, k] + b_x[k]) + (z[i, k] + b_h[k]))))
                a_n = z[i, m] + b_h[m]
                new = dt(tanh64(np.float64((xw[i, t, m] + b_x[m]) + r * a_n)))
                hv = (one - u) * new + u * h[i, j]
                gates[i, t, j] = r
                gates[i, t, k] = u
                gates[i, t, m] = new
                hn[i, t, j] = a_n
                h[i, j] = hv
                hs[i, t, j] = hv


@jit
def gru_backward(dhs, x, h0, W_x, W_h, hs, gates, hn, dx, dh0, dW_x, dW_h, db_x, db_h, dxw,
                 dh, dhz, hp, dhw, tmp):
    """Gradients through time; dxw (N, T, 3H) d loss / d (x_t W_x + b_x); dh, dhz
    (N, H) (dh * z, the direct path to h_{t-1}), hp (N, H), dhw (N, 3H)
    d loss / d (h_{t-1} W_h + b_h) and tmp (H, 3H) workspaces."""
    n, steps, hidden = hs.shape
    dt = hs.dtype.type
    one, zero = dt(1), dt(0)
    dh[:] = zero
    dW_h[:] = zero
    acc = np.zeros(3 * hidden)  # db_h in float64
    for t in range(steps - 1, -1, -1):
        for i in range(n):
            for j in range(hidden):
                k = hidden + j
                m = 2 * hidden + j
                r = gates[i, t, j]
                u = gates[i, t, k]
                new = gates[i, t, m]
                h_prev = hs[i, t - 1, j] if t else h0[i, j]
                g = dhs[i, t, j] + dh[i, j]
                dn = g * (one - u) * (one - new * new)
                dr = dn * hn[i, t, j] * r * (one - r)
                du = g * (h_prev - new) * u * (one - u)
                dnr = dn * r
                dxw[i, t, j] = dr
                dxw[i, t, k] = du
                dxw[i, t, m] = dn
                dhw[i, j] = dr
                dhw[i, k] = du
                dhw[i, m] = dnr
                acc[j] += dr
                acc[k] += du
                acc[m] += dnr
                dhz[i, j] = g * u
                hp[i, j] = h_prev
        np.dot(hp.T, dhw, tmp)
        dW_h += tmp
        np.dot(dhw, W_h.T, dh)
        for i in range(n):
            for j in range(hidden):
                dh[i, j] += dhz[i, j]
    _copy(dh, dh0)
    for j in range(3 * hidden):
        db_h[j] = acc[j]
    _input_side(x, W_x, dxw, dx, dW_x, db_x)
