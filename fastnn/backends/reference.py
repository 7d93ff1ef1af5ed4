"""The reference backend: every kernel of the catalogue in vectorised NumPy.

It is written to read like the math, it is the oracle every fast backend is
tested against, and it is the fallback for any kernel a fast backend does not
override.

Each kernel is a pair of methods:

* the public method (``softmax_cross_entropy``), generated from the kernel's
  declaration in spec.py (its docstring is there too): it validates every
  argument, makes non-contiguous inputs contiguous, allocates the outputs the
  caller did not pass, copies any input that shares memory with an output
  (`_checks.unshared`), and then calls
* the implementation (``_softmax_cross_entropy``), written here, which receives
  only checked, C-contiguous arrays of one float dtype and writes into the given
  outputs.

Fast backends subclass `NumpyBackend` and override implementations only, so
validation is identical everywhere and always runs before compiled code.
``backend.fast`` (spec.py) is the same kernels behind a cheap structural check,
for hot callers. Sums (losses, penalties) accumulate in float64 and are
returned in the dtype (spec.round_to).

Conventions: N samples, C classes/outputs/features. Dense weights W are shaped
(in, out) like scikit-learn's ``coefs_``. Losses are means over samples (weighted
means with ``sample_weight``) of the per-sample sum over outputs.
"""

import functools
import math
import numbers
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import special

from . import _checks as chk
from . import spec

ACTIVATIONS = (
    "identity", "logistic", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu",
    "softplus", "softmax",
)
# Aliases accepted wherever an activation is named.
ACTIVATION_ALIASES = {"sigmoid": "logistic", "linear": "identity"}
# Activations whose derivative cannot be written in terms of the output y alone;
# their backward needs the pre-activation x.
NEEDS_INPUT = frozenset({"gelu"})
# Activations that float32 inputs evaluate in float64, rounding once: NumPy's and
# SciPy's float32 tanh and expit are off by 1 ulp for about a third of inputs, and
# a derivative written in y (1 - y^2, y (1 - y)) turns that into large relative
# differences near saturation; the oracle should be correctly rounded.
FLOAT64_INSIDE = frozenset({"logistic", "tanh", "elu", "selu", "softplus"})

# PyTorch's constants.
LEAKY_RELU_SLOPE = 0.01
ELU_ALPHA = 1.0
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
SOFTPLUS_THRESHOLD = 20.0  # above it softplus(x) = x, as torch.nn.Softplus

INITIALISERS = (
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal", "sklearn",
)
INIT_ALIASES = {
    "xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal",
    "kaiming_uniform": "he_uniform", "kaiming_normal": "he_normal",
}

# splitmix64 constants of the counter-based generator behind dropout masks.
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB

# The kernels a backend may accelerate: method `name` validates, `_name` computes
# (their declarations: spec.DECLARATIONS).
KERNELS = spec.KERNELS


def activation_name(name):
    if not isinstance(name, str):
        raise TypeError(f"activation must be a string, got {type(name).__name__}")
    name = ACTIVATION_ALIASES.get(name, name)
    return chk.choice(name, "activation", ACTIVATIONS)


def method_arg(method):
    """An initialiser's name (INITIALISERS, or an alias of one)."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    return chk.choice(INIT_ALIASES.get(method, method), "method", INITIALISERS)


def dtype_arg(dtype):
    dtype = np.dtype(dtype)
    if dtype not in chk.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def rng_arg(rng):
    if not isinstance(rng, (np.random.Generator, np.random.RandomState)):
        rng = np.random.default_rng(rng)
    return rng


def shape_arg(shape):
    """An array shape: a tuple (or other sequence) of integers >= 0, or one integer."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)):
        raise TypeError(f"shape must be a tuple of integers, got {type(shape).__name__}")
    dims = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"shape must be a tuple of integers, got {shape!r}")
        if d < 0:
            raise ValueError(f"shape must hold integers >= 0, got {tuple(shape)!r}")
        dims.append(int(d))
    return tuple(dims)


def dropout_threshold(rate):
    """Integer threshold on the top 53 bits of a splitmix64 output: an element is
    kept when bits >= threshold, which happens with probability 1 - rate."""
    return int(rate * 2.0**53)


class BatchNormCache(NamedTuple):
    """What batchnorm_backward needs from the forward pass.

    x: (N, C) input (referenced, not copied: do not modify it before backward);
    mean, invstd: (C,) statistics used to normalise; gamma: (C,);
    training: whether batch statistics were used (they then get gradients)."""

    x: np.ndarray
    mean: np.ndarray
    invstd: np.ndarray
    gamma: np.ndarray
    training: bool


class NumpyBackend:
    """Reference implementation of every kernel (see the module docstring)."""

    name = "numpy"

    @functools.cached_property
    def fast(self):
        """The kernels behind a cheap structural precondition, for hot callers
        (same names, signatures, results; see fastnn.backends.spec)."""
        return spec.Fast(self)

    # ------------------------------------------------------------------ threads
    def _set_num_threads(self, n):
        """Backend-specific thread setting (BLAS is set by fastnn.set_num_threads)."""

    # -------------------------------------------------------------- activations
    def _activation_forward(self, x, activation, out):
        if x.dtype == np.float32 and activation in FLOAT64_INSIDE:
            x = x.astype(np.float64)  # out stays float32: one rounding at the end
        if activation == "identity":
            out[...] = x
        elif activation == "logistic":
            special.expit(x, out=out)
        elif activation == "tanh":
            np.tanh(x, out=out)
        elif activation == "relu":
            np.maximum(x, 0, out=out)
        elif activation == "leaky_relu":
            out[...] = np.where(x > 0, x, LEAKY_RELU_SLOPE * x)
        elif activation == "elu":
            out[...] = np.where(x > 0, x, ELU_ALPHA * np.expm1(np.minimum(x, 0)))
        elif activation == "selu":
            out[...] = SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))
        elif activation == "gelu":
            # exact gelu: x * Phi(x), Phi the standard normal CDF (ndtr: accurate in
            # the lower tail, where 1 + erf(x / sqrt 2) would cancel to 0 below x = -8)
            out[...] = x * special.ndtr(x)
        elif activation == "softplus":
            # log(1 + e^x) = max(x, 0) + log1p(e^-|x|), and x itself above the threshold
            soft = np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
            out[...] = np.where(x > SOFTPLUS_THRESHOLD, x, soft)
        elif activation == "softmax":
            e = np.exp(x - x.max(axis=1, keepdims=True))
            out[...] = e / e.sum(axis=1, keepdims=True)

    def _activation_backward(self, dy, y, activation, x, out):
        if y.dtype == np.float32 and activation in FLOAT64_INSIDE:
            dy, y = dy.astype(np.float64), y.astype(np.float64)
        if activation == "identity":
            out[...] = dy
        elif activation == "logistic":
            out[...] = dy * y * (1 - y)
        elif activation == "tanh":
            out[...] = dy * (1 - y * y)
        elif activation == "relu":
            out[...] = np.where(y > 0, dy, 0)
        elif activation == "leaky_relu":
            out[...] = np.where(y > 0, dy, LEAKY_RELU_SLOPE * dy)
        elif activation == "elu":
            # for x <= 0: d/dx alpha (e^x - 1) = alpha e^x = y + alpha
            out[...] = np.where(y > 0, dy, dy * (y + ELU_ALPHA))
        elif activation == "selu":
            out[...] = np.where(y > 0, SELU_SCALE * dy, dy * (y + SELU_SCALE * SELU_ALPHA))
        elif activation == "gelu":
            # d/dx x Phi(x) = Phi(x) + x phi(x)
            cdf = special.ndtr(x)
            pdf = np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
            out[...] = dy * (cdf + x * pdf)
        elif activation == "softplus":
            # softplus'(x) = sigmoid(x) = 1 - e^-y; 1 above the threshold, where y = x
            out[...] = np.where(y > SOFTPLUS_THRESHOLD, dy, dy * -np.expm1(-y))
        elif activation == "softmax":
            out[...] = y * (dy - (dy * y).sum(axis=1, keepdims=True))

    # -------------------------------------------------------------------- dense
    def _dense_forward(self, x, W, b, activation, out, preact):
        np.matmul(x, W, out=out)
        if b is not None:
            out += b
        if preact is not None:
            preact[...] = out
        self._activation_forward(out, activation, out)

    def _dense_backward(self, dy, x, W, y, activation, preact, dx, dW, db, dz):
        if activation == "identity":
            dz = dy
        else:
            self._activation_backward(dy, y, activation, preact, dz)
        # column sums accumulate in float64: a float32 running sum down N rows drifts by
        # ~sqrt(N) ulps, more than the tolerance fast backends are held to
        db[...] = dz.sum(axis=0, dtype=np.float64)
        np.matmul(x.T, dz, out=dW)
        if dx is not None:
            np.matmul(dz, W.T, out=dx)

    # ------------------------------------------------------------------- losses
    @staticmethod
    def _sample_scale(w, n, dtype):
        """(N,) factor that turns per-sample losses into their (weighted) mean."""
        if w is None:
            return np.full(n, 1.0 / max(n, 1), dtype=dtype)
        return w / w.sum()

    @staticmethod
    def _mean64(per_sample, w):
        """The (weighted) mean over samples of per-sample losses (N,), accumulated
        in float64 (the value is rounded to the dtype by the public method)."""
        per_sample = per_sample.astype(np.float64)
        if w is None:
            return per_sample.sum() / max(per_sample.size, 1)
        w = w.astype(np.float64)
        return (per_sample * (w / w.sum())).sum()

    def _softmax_cross_entropy(self, logits, targets, w, grad):
        n, c = logits.shape
        # log-sum-exp with the row max taken out: stable for logits of any size
        m = logits.max(axis=1, keepdims=True)
        e = np.exp(logits - m)  # (N, C), 1 at each max
        # log(sum(e)) as log1p of the sum without one max's 1: for a confident row
        # (one term near 1, the others small) the sum would round their digits away
        rest = np.where(logits < m, e, 0).sum(axis=1, keepdims=True)
        rest += (logits == m).sum(axis=1, keepdims=True) - 1
        log_s = np.log1p(rest)  # (N, 1)
        lse = m + log_s
        p = np.exp(logits - lse)  # softmax
        if targets.ndim == 1:
            rows = np.arange(n)
            per_sample = lse[:, 0] - logits[rows, targets]
            grad[...] = p
            # p - 1 at the label as expm1((x - m) - log_s): for a confident row (p
            # near 1) p - 1 would keep only the digits p has beyond 1, and x - lse
            # those of the rounded lse
            grad[rows, targets] = np.expm1((logits[rows, targets] - m[:, 0]) - log_s[:, 0])
        else:
            # -sum_k t_k log p_k = sum_k t_k (lse - x_k); gradient p * sum(t) - t
            per_sample = (targets * (lse - logits)).sum(axis=1, dtype=np.float64)
            grad[...] = p * targets.sum(axis=1, keepdims=True) - targets
        scale = self._sample_scale(w, n, logits.dtype)
        grad *= scale[:, None]
        return self._mean64(per_sample, w)

    def _sigmoid_binary_cross_entropy(self, logits, targets, w, grad):
        x, t = logits, targets
        # -t log s(x) - (1-t) log(1-s(x)) = max(x, 0) - x t + log(1 + e^-|x|)
        per_elem = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
        grad[...] = special.expit(x) - t
        return self._reduce(per_elem, grad, w)

    def _reduce(self, per_elem, grad, w):
        """Sum per-element losses over outputs, take the (weighted) mean over samples,
        and scale grad (already holding d per_elem / d output) to match."""
        n = per_elem.shape[0]
        scale = self._sample_scale(w, n, per_elem.dtype)
        grad *= scale.reshape((-1,) + (1,) * (per_elem.ndim - 1))
        # per-sample sums and their mean in float64 (the rule of every backend)
        rows = per_elem.sum(axis=tuple(range(1, per_elem.ndim)), dtype=np.float64)
        return self._mean64(rows, w)

    def _squared_error(self, pred, targets, w, grad):
        d = pred - targets
        grad[...] = d
        return self._reduce(0.5 * d * d, grad, w)

    def _absolute_error(self, pred, targets, w, grad):
        d = pred - targets
        grad[...] = np.sign(d)
        return self._reduce(np.abs(d), grad, w)

    def _huber(self, pred, targets, w, grad, delta):
        d = pred - targets
        small = np.abs(d) < delta
        per_elem = np.where(small, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))
        grad[...] = np.clip(d, -delta, delta)
        return self._reduce(per_elem, grad, w)

    def _hinge(self, scores, targets, w, grad):
        margin = 1 - targets * scores
        grad[...] = np.where(margin > 0, -targets, 0)
        return self._reduce(np.maximum(margin, 0), grad, w)

    # ------------------------------------------------------------ normalisation
    def _batchnorm_forward(self, x, gamma, beta, running_mean, running_var, training,
                           momentum, eps, out, mean, invstd):
        if training:
            n = x.shape[0]
            # float64 accumulators for the column statistics (see _dense_backward)
            mean[...] = x.mean(axis=0, dtype=np.float64)
            var = ((x - mean) ** 2).mean(axis=0, dtype=np.float64).astype(x.dtype)  # biased
            running_mean *= 1 - momentum
            running_mean += momentum * mean
            running_var *= 1 - momentum
            running_var += momentum * var * (n / (n - 1))  # unbiased: running estimate
        else:
            mean[...] = running_mean
            var = running_var
        invstd[...] = 1 / np.sqrt(var + eps)
        out[...] = (x - mean) * invstd * gamma + beta

    def _batchnorm_backward(self, dy, cache, dx, dgamma, dbeta):
        x, mean, invstd, gamma, training = cache
        n = x.shape[0]
        xhat = (x - mean) * invstd
        dbeta[...] = dy.sum(axis=0, dtype=np.float64)
        dgamma[...] = (dy * xhat).sum(axis=0, dtype=np.float64)
        if training:
            # the batch mean and variance depend on x too
            dx[...] = gamma * invstd / n * (n * dy - dbeta - xhat * dgamma)
        else:
            dx[...] = dy * gamma * invstd

    # ----------------------------------------------------------------- dropout
    def _dropout_mask(self, shape, rate, seed):
        return self._dropout_keep(math.prod(shape), rate, seed).reshape(shape)

    @staticmethod
    def _dropout_keep(n, rate, seed):
        """(n,) bool: keep element i iff top53(splitmix64(seed + (i + 1) * gamma))
        >= rate * 2^53. uint64 arithmetic wraps modulo 2^64, as in C."""
        z = np.uint64(seed) + (np.arange(n, dtype=np.uint64) + np.uint64(1)) * np.uint64(GOLDEN_GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        z = z ^ (z >> np.uint64(31))
        return (z >> np.uint64(11)) >= np.uint64(dropout_threshold(rate))

    def _dropout_forward(self, x, rate, seed, out):
        keep = self._dropout_keep(x.size, rate, seed).reshape(x.shape)
        scale = x.dtype.type(1.0 / (1.0 - rate))
        np.multiply(x, scale, out=out)
        out[~keep] = 0

    def _dropout_backward(self, dy, rate, seed, out):
        self._dropout_forward(dy, rate, seed, out)  # the same mask and scale

    # ----------------------------------------------------------- regularisation
    def _weight_penalty(self, param, grad, l2, l1):
        value = 0.0  # summed in float64, as every backend
        if l2:
            p64 = param.ravel().astype(np.float64)
            value += 0.5 * l2 * np.dot(p64, p64)
            grad += l2 * param
        if l1:
            value += l1 * np.abs(param).sum(dtype=np.float64)
            grad += l1 * np.sign(param)
        return value

    # --------------------------------------------------------------- optimizers
    def _sgd_step(self, param, grad, velocity, lr, momentum, nesterov, weight_decay,
                  lr_in_velocity):
        g = grad + weight_decay * param if weight_decay else grad
        if not momentum:
            param -= lr * g
        elif lr_in_velocity:
            velocity *= momentum
            velocity -= lr * g
            param += momentum * velocity - lr * g if nesterov else velocity
        else:
            velocity *= momentum
            velocity += g
            param -= lr * (g + momentum * velocity if nesterov else velocity)

    def _adagrad_step(self, param, grad, sum_sq, lr, eps, weight_decay):
        g = grad + weight_decay * param if weight_decay else grad
        sum_sq += g * g
        param -= lr * g / (np.sqrt(sum_sq) + eps)

    def _rmsprop_step(self, param, grad, square_avg, lr, alpha, eps, weight_decay, momentum,
                      momentum_buf, grad_avg):
        g = grad + weight_decay * param if weight_decay else grad
        square_avg *= alpha
        square_avg += (1 - alpha) * g * g
        if grad_avg is not None:
            grad_avg *= alpha
            grad_avg += (1 - alpha) * g
            avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
        else:
            avg = np.sqrt(square_avg) + eps
        if momentum_buf is not None:
            momentum_buf *= momentum
            momentum_buf += g / avg
            param -= lr * momentum_buf
        else:
            param -= lr * g / avg

    def _adadelta_step(self, param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay):
        g = grad + weight_decay * param if weight_decay else grad
        square_avg *= rho
        square_avg += (1 - rho) * g * g
        delta = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * g
        acc_delta *= rho
        acc_delta += (1 - rho) * delta * delta
        param -= lr * delta

    def _adam_step(self, param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled,
                   v_max):
        g = grad
        if weight_decay:
            if decoupled:
                param *= 1 - lr * weight_decay
            else:
                g = grad + weight_decay * param
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * g * g
        if v_max is not None:
            np.maximum(v_max, v, out=v_max)
        second = v if v_max is None else v_max
        bias1 = 1 - beta1**t
        bias2 = 1 - beta2**t
        param -= lr / bias1 * m / (np.sqrt(second) / np.sqrt(bias2) + eps)

    # ------------------------------------------------------------- initialisers
    def _init_weights(self, method, fan_in, fan_out, rng, dtype, activation):
        shape = (fan_in, fan_out)
        b = np.zeros(fan_out, dtype)
        if method == "glorot_uniform":
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            W = rng.uniform(-bound, bound, shape)
        elif method == "glorot_normal":
            W = rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape)
        elif method == "he_uniform":
            bound = np.sqrt(6.0 / fan_in)
            W = rng.uniform(-bound, bound, shape)
        elif method == "he_normal":
            W = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif method == "lecun_normal":
            W = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
        else:  # sklearn
            factor = 2.0 if activation == "logistic" else 6.0
            bound = np.sqrt(factor / (fan_in + fan_out))
            W = rng.uniform(-bound, bound, shape)
            b = rng.uniform(-bound, bound, fan_out).astype(dtype)
        return W.astype(dtype), b

    # -------------------------------------------------------------- convolution
    # Channels-last images x (N, IH, IW, C). A window view of the padded image,
    # windows (N, OH, OW, C, KH, KW), holds at [n, i, j] the cells that output
    # (i, j) reads: rows i * stride[0] + (0 .. KH-1) of the padded image.
    @staticmethod
    def _windows(x, window, stride, padding, fill=0.0):
        (ph, pw), (sh, sw) = padding, stride
        padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=fill)
        return sliding_window_view(padded, window, axis=(1, 2))[:, ::sh, ::sw]

    @staticmethod
    def _add_windows(dwindows, stride, padding, dx):
        """dx = the sum, over every window, of its cells' gradients dwindows
        (N, OH, OW, KH, KW, C) added where the window read them (the adjoint of
        _windows): each kernel tap (a, b) adds the cells it read at every output."""
        n, oh, ow, kh, kw, c = dwindows.shape
        (ph, pw), (sh, sw) = padding, stride
        padded = np.zeros((n, dx.shape[1] + 2 * ph, dx.shape[2] + 2 * pw, c), dwindows.dtype)
        for a in range(kh):
            for b in range(kw):
                padded[:, a:a + sh * oh:sh, b:b + sw * ow:sw] += dwindows[:, :, :, a, b]
        dx[...] = padded[:, ph:ph + dx.shape[1], pw:pw + dx.shape[2]]

    def _conv2d_forward(self, x, W, b, stride, padding, activation, out, preact):
        kh, kw, c, o = W.shape
        windows = self._windows(x, (kh, kw), stride, padding)
        # out[n, i, j, :] = sum over (a, b, c) of windows[n, i, j, c, a, b] * W[a, b, c, :]
        out[...] = np.tensordot(windows, W, axes=([4, 5, 3], [0, 1, 2]))
        if b is not None:
            out += b
        if preact is not None:
            preact[...] = out
        rows = out.reshape(-1, o)  # the activation acts per pixel over the channels
        self._activation_forward(rows, activation, rows)

    def _conv2d_backward(self, dy, x, W, y, activation, stride, padding, preact, dx, dW, db, dz):
        kh, kw, c, o = W.shape
        if activation == "identity":
            dz = dy
        else:
            self._activation_backward(dy.reshape(-1, o), y.reshape(-1, o), activation,
                                      None if preact is None else preact.reshape(-1, o),
                                      dz.reshape(-1, o))
        db[...] = dz.sum(axis=(0, 1, 2), dtype=np.float64)
        windows = self._windows(x, (kh, kw), stride, padding)
        # dW[a, b, c, :] = sum over (n, i, j) of windows[n, i, j, c, a, b] * dz[n, i, j, :]
        dW[...] = np.tensordot(windows, dz, axes=([0, 1, 2], [0, 1, 2])).transpose(1, 2, 0, 3)
        if dx is not None:
            # each window's cells get dz @ W^T: dwindows[n, i, j, a, b, c]
            self._add_windows(np.tensordot(dz, W, axes=([3], [3])), stride, padding, dx)

    def _maxpool2d_forward(self, x, pool, stride, padding, out, argmax):
        n, ih, iw, c = x.shape
        _, oh, ow, _ = out.shape
        # padded cells hold -inf and are masked out, so that they never win
        area = pool[0] * pool[1]
        cells = self._windows(x, pool, stride, padding, -np.inf).reshape(n, oh, ow, c, area)
        real = self._windows(np.ones((1, ih, iw, 1), bool), pool, stride, padding, False)
        real = real.reshape(1, oh, ow, 1, area)
        best = cells.max(axis=-1, keepdims=True)  # NaN when the window holds one
        # the first real cell (row-major in the window) equal to the maximum, or NaN
        k = np.argmax(real & ((cells == best) | np.isnan(cells)), axis=-1)
        out[...] = np.take_along_axis(cells, k[..., None], axis=-1)[..., 0]
        rows = np.arange(oh)[:, None, None] * stride[0] - padding[0] + k // pool[1]
        cols = np.arange(ow)[None, :, None] * stride[1] - padding[1] + k % pool[1]
        argmax[...] = rows * iw + cols

    def _maxpool2d_backward(self, dy, argmax, dx):
        n, ih, iw, c = dx.shape
        dx[...] = 0
        samples = np.arange(n)[:, None, None, None]
        channels = np.arange(c)
        np.add.at(dx.reshape(n, ih * iw, c), (samples, argmax, channels), dy)

    def _avgpool2d_forward(self, x, pool, stride, padding, out):
        windows = self._windows(x, pool, stride, padding)  # zeros in the padding
        out[...] = windows.sum(axis=(4, 5), dtype=np.float64) / (pool[0] * pool[1])

    def _avgpool2d_backward(self, dy, pool, stride, padding, dx):
        share = (dy / dy.dtype.type(pool[0] * pool[1]))[:, :, :, None, None, :]
        self._add_windows(np.broadcast_to(share, dy.shape[:3] + tuple(pool) + dy.shape[3:]),
                          stride, padding, dx)
    # --------------------------------------------------------------- recurrence
    # Batch-first sequences: x (N, T, F), hidden states hs (N, T, H); W_x (F, G*H),
    # W_h (H, G*H) with the G gates side by side in PyTorch's order. The input
    # projection of every step is one GEMM before the loop, into the array each
    # step's gate math then overwrites (gates, or hs for the simple RNN); each
    # step is one (N, H) @ (H, G*H) GEMM and the gate math. The backward runs the steps in
    # reverse, accumulates dW_h, and does dW_x, db and dx as GEMMs after the loop.
    def _rnn_forward(self, x, h0, W_x, W_h, b, activation, hs):
        n, steps, f = x.shape
        hidden = W_h.shape[0]
        h0 = np.zeros((n, hidden), x.dtype) if h0 is None else h0
        _project(x, W_x, b, hs)  # x_t W_x + b, in hs[:, t] until step t
        h = h0
        for t in range(steps):
            z = hs[:, t] + h @ W_h
            hs[:, t] = _tanh(z) if activation == "tanh" else np.maximum(z, 0)
            h = hs[:, t]
        return hs, RnnCache(x, h0, W_x, W_h, hs, activation)

    def _rnn_backward(self, dhs, cache, dx, dz, dh0, dW_x, dW_h, db):
        # dz (N, T, H): d loss / d (x_t W_x + h_{t-1} W_h + b)
        x, h0, W_x, W_h, hs, activation = cache
        n, steps, f = x.shape
        dW_h[...] = 0
        dh_next = np.zeros_like(h0)  # the gradient h_t receives from step t + 1
        for t in reversed(range(steps)):
            dh = dhs[:, t] + dh_next
            h = hs[:, t]
            dz[:, t] = dh * (1 - h * h) if activation == "tanh" else np.where(h > 0, dh, 0)
            h_prev = hs[:, t - 1] if t else h0
            dW_h += h_prev.T @ dz[:, t]
            dh_next = dz[:, t] @ W_h.T
        dh0[...] = dh_next
        _input_side(x, W_x, dz, dx, dW_x, db)

    def _lstm_forward(self, x, h0, c0, W_x, W_h, b, return_sequences, hs, cs, gates):
        # gates (N, T, 4H): i, f, g, o after their nonlinearities; hs (N, T, H),
        # or (N, 1, H) the last state only
        n, steps, f = x.shape
        hidden = W_h.shape[0]
        h0 = np.zeros((n, hidden), x.dtype) if h0 is None else h0
        c0 = np.zeros((n, hidden), x.dtype) if c0 is None else c0
        _project(x, W_x, b, gates)  # x_t W_x + b, in gates[:, t] until step t
        h, c = h0, c0
        for t in range(steps):
            z = gates[:, t] + h @ W_h
            i, fg, o = (_sigmoid(z[:, k * hidden:(k + 1) * hidden]) for k in (0, 1, 3))
            g = _tanh(z[:, 2 * hidden:3 * hidden])
            c = fg * c + i * g
            h = o * _tanh(c)
            gates[:, t] = np.concatenate([i, fg, g, o], axis=1)
            cs[:, t] = c
            if return_sequences:
                hs[:, t] = h
        if not return_sequences:
            hs[:, 0] = h
        return hs, LstmCache(x, h0, c0, W_x, W_h, hs, cs, gates)

    def _lstm_backward(self, dhs, cache, dx, dz, dh0, dc0, dW_x, dW_h, db):
        # dz (N, T, 4H): d loss / d gate pre-activations. The states h_{t-1} are
        # rebuilt as o_{t-1} tanh(c_{t-1}), the forward's own operations on its
        # saved gates and cells, so that hs may hold the last state only
        x, h0, c0, W_x, W_h, hs, cs, gates = cache
        n, steps, f = x.shape
        hidden = W_h.shape[0]
        last_only = dhs.shape[1] != steps  # (N, 1, H): the last state's gradient
        dW_h[...] = 0
        dh_next, dc_next = np.zeros_like(h0), np.zeros_like(c0)
        if last_only:
            dh_next = dh_next + dhs[:, 0]
        for t in reversed(range(steps)):
            i, fg, g, o = (gates[:, t, k * hidden:(k + 1) * hidden] for k in range(4))
            c_prev = cs[:, t - 1] if t else c0
            tanh_c = _tanh(cs[:, t])
            dh = dh_next if last_only else dhs[:, t] + dh_next
            dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
            dz[:, t] = np.concatenate([dc * g * i * (1 - i), dc * c_prev * fg * (1 - fg),
                                       dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)], axis=1)
            dc_next = dc * fg
            h_prev = gates[:, t - 1, 3 * hidden:] * _tanh(c_prev) if t else h0
            dW_h += h_prev.T @ dz[:, t]
            dh_next = dz[:, t] @ W_h.T
        dh0[...], dc0[...] = dh_next, dc_next
        _input_side(x, W_x, dz, dx, dW_x, db)

    def _gru_forward(self, x, h0, W_x, W_h, b_x, b_h, hs, gates, hn):
        # gates (N, T, 3H): r, z, n after their nonlinearities; hn (N, T, H):
        # h_{t-1} W_hn + b_hn, which r scales
        n, steps, f = x.shape
        hidden = W_h.shape[0]
        h0 = np.zeros((n, hidden), x.dtype) if h0 is None else h0
        _project(x, W_x, b_x, gates)  # x_t W_x + b_x, in gates[:, t] until step t
        h = h0
        r_, z_, n_ = (slice(k * hidden, (k + 1) * hidden) for k in range(3))
        for t in range(steps):
            a = h @ W_h + b_h
            r = _sigmoid(gates[:, t, r_] + a[:, r_])
            z = _sigmoid(gates[:, t, z_] + a[:, z_])
            new = _tanh(gates[:, t, n_] + r * a[:, n_])
            h = (1 - z) * new + z * h
            gates[:, t] = np.concatenate([r, z, new], axis=1)
            hs[:, t], hn[:, t] = h, a[:, n_]
        return hs, GruCache(x, h0, W_x, W_h, hs, gates, hn)

    def _gru_backward(self, dhs, cache, dx, dxw, dh0, dW_x, dW_h, db_x, db_h):
        # dxw (N, T, 3H): d loss / d (x_t W_x + b_x)
        x, h0, W_x, W_h, hs, gates, hn = cache
        n, steps, f = x.shape
        hidden = W_h.shape[0]
        dhw = np.empty_like(gates)  # (N, T, 3H): d loss / d (h_{t-1} W_h + b_h)
        dW_h[...] = 0
        dh_next = np.zeros_like(h0)
        for t in reversed(range(steps)):
            r, z, new = (gates[:, t, k * hidden:(k + 1) * hidden] for k in range(3))
            h_prev = hs[:, t - 1] if t else h0
            dh = dhs[:, t] + dh_next
            dn = dh * (1 - z) * (1 - new * new)  # through n's tanh
            dr = dn * hn[:, t] * r * (1 - r)
            dzg = dh * (h_prev - new) * z * (1 - z)
            dxw[:, t] = np.concatenate([dr, dzg, dn], axis=1)
            dhw[:, t] = np.concatenate([dr, dzg, dn * r], axis=1)
            dW_h += h_prev.T @ dhw[:, t]
            dh_next = dhw[:, t] @ W_h.T + dh * z
        dh0[...] = dh_next
        _input_side(x, W_x, dxw, dx, dW_x, db_x)
        db_h[...] = dhw.sum(axis=(0, 1), dtype=np.float64)

    # ---------------------------------------------------------------- embedding
    # tokens (N, T) integers in [0, V); W, dW (V, D); out, dy (N, T, D).
    def _embedding_forward(self, tokens, W, out):
        np.take(W, tokens, axis=0, out=out)

    def _embedding_backward(self, dy, tokens, dW):
        dW[...] = 0
        # unbuffered: a token repeated sums its rows, in the row-major order of tokens
        np.add.at(dW, tokens.reshape(-1), dy.reshape(-1, dW.shape[1]))

    # ---------------------------------------------------------------- row gather
    # x (N, D); index (B,) integers in [0, N); out (B, D): out[i] = x[index[i]].
    def _take_rows(self, x, index, out):
        np.take(x, index, axis=0, out=out)


# ------------------------------------------------------------------- recurrence
RNN_ACTIVATIONS = ("tanh", "relu")


def rnn_activation_name(name):
    """The activation of a simple recurrent layer: tanh or relu (as torch.nn.RNN)."""
    if not isinstance(name, str):
        raise TypeError(f"activation must be a string, got {type(name).__name__}")
    return chk.choice(name, "activation", RNN_ACTIVATIONS)


def _tanh(z):
    """tanh in float64, rounded once to z's dtype (see FLOAT64_INSIDE)."""
    return np.tanh(z.astype(np.float64)).astype(z.dtype)


def _sigmoid(z):
    return special.expit(z.astype(np.float64)).astype(z.dtype)


def _project(x, W_x, b, out):
    """out (N, T, G*H) = x (N, T, F) @ W_x + b over every step at once (the
    product rounded, then the sum: as x @ W_x + b)."""
    n, steps, f = x.shape
    out2 = out.reshape(n * steps, out.shape[2])
    np.matmul(x.reshape(n * steps, f), W_x, out=out2)
    out2 += b


def _input_side(x, W_x, dz, dx, dW_x, db):
    """Into dW_x (F, G*H), db (G*H,) and dx (N, T, F) unless it is None, the
    gradients from dz (N, T, G*H), that of the input projections x_t W_x + b of
    every step: GEMM-sized operations over all steps at once (db summed in
    float64, as dense's)."""
    n, steps, f = x.shape
    dz2 = dz.reshape(n * steps, dz.shape[2])
    if dx is not None:
        np.matmul(dz2, W_x.T, out=dx.reshape(n * steps, f))
    np.matmul(x.reshape(n * steps, f).T, dz2, out=dW_x)
    db[...] = dz2.sum(axis=0, dtype=np.float64)


class RnnCache(NamedTuple):
    """What rnn_backward needs from rnn_forward (arrays referenced, not copied: do
    not modify them before the backward). x (N, T, F); h0 (N, H), zeros when
    the forward had none; W_x (F, H); W_h (H, H); hs (N, T, H); activation."""

    x: np.ndarray
    h0: np.ndarray
    W_x: np.ndarray
    W_h: np.ndarray
    hs: np.ndarray
    activation: str


class LstmCache(NamedTuple):
    """What lstm_backward needs: x (N, T, F); h0, c0 (N, H); W_x (F, 4H);
    W_h (H, 4H); hs the forward's output, (N, T, H) every hidden state or
    (N, 1, H) the last (the backward reads neither: it rebuilds the states from
    the gates and cells); cs (N, T, H) cell states; gates (N, T, 4H): i, f, g, o
    after their nonlinearities."""

    x: np.ndarray
    h0: np.ndarray
    c0: np.ndarray
    W_x: np.ndarray
    W_h: np.ndarray
    hs: np.ndarray
    cs: np.ndarray
    gates: np.ndarray


class GruCache(NamedTuple):
    """What gru_backward needs: x (N, T, F); h0 (N, H); W_x (F, 3H); W_h (H, 3H);
    hs (N, T, H); gates (N, T, 3H): r, z, n after their nonlinearities;
    hn (N, T, H): h_{t-1} W_hn + b_hn, the term r scales."""

    x: np.ndarray
    h0: np.ndarray
    W_x: np.ndarray
    W_h: np.ndarray
    hs: np.ndarray
    gates: np.ndarray
    hn: np.ndarray


spec.install(NumpyBackend)
