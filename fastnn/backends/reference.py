"""The reference backend: every kernel of the catalogue in vectorised NumPy.

It is written to read like the math, it is the oracle every fast backend is
tested against, and it is the fallback for any kernel a fast backend does not
override.

Each kernel is a pair of methods:

* the public method (``softmax_cross_entropy``) validates every argument, makes
  non-contiguous inputs contiguous, allocates the outputs the caller did not pass,
  copies any input that shares memory with an output (`_checks.unshared`), and
  then calls
* the implementation (``_softmax_cross_entropy``), which receives only checked,
  C-contiguous arrays of one float dtype and writes into the given outputs.

Fast backends subclass `NumpyBackend` and override implementations only, so
validation is identical everywhere and always runs before compiled code.

Conventions: N samples, C classes/outputs/features. Dense weights W are shaped
(in, out) like scikit-learn's ``coefs_``. Losses are means over samples (weighted
means with ``sample_weight``) of the per-sample sum over outputs.
"""

from typing import NamedTuple

import numpy as np
from scipy import special

from . import _checks as chk

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

# The kernels a backend may accelerate: method `name` validates, `_name` computes.
KERNELS = (
    "activation_forward", "activation_backward", "dense_forward", "dense_backward",
    "softmax_cross_entropy", "sigmoid_binary_cross_entropy", "squared_error",
    "absolute_error", "huber", "hinge", "batchnorm_forward", "batchnorm_backward",
    "dropout_forward", "dropout_backward", "weight_penalty", "sgd_step", "adagrad_step",
    "rmsprop_step", "adadelta_step", "adam_step", "init_weights",
)


def activation_name(name):
    if not isinstance(name, str):
        raise TypeError(f"activation must be a string, got {type(name).__name__}")
    name = ACTIVATION_ALIASES.get(name, name)
    return chk.choice(name, "activation", ACTIVATIONS)


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

    # ------------------------------------------------------------------ threads
    def _set_num_threads(self, n):
        """Backend-specific thread setting (BLAS is set by fastnn.set_num_threads)."""

    # -------------------------------------------------------------- activations
    def activation_forward(self, x, activation, out=None):
        """y = activation(x), elementwise (softmax: over the last axis of 2-D x)."""
        activation = activation_name(activation)
        x = chk.float_array(x, "x", ndim=2 if activation == "softmax" else None)
        out = chk.out_array(out, "out", x.shape, x.dtype)
        # out=x runs in place for the elementwise activations ("y may be x" in csrc); an
        # in-place softmax is not bit-identical on Numba (float64): it reads a copy
        x, = chk.unshared((out,), x, in_place_ok=activation != "softmax")
        self._activation_forward(x, activation, out)
        return out

    def activation_backward(self, dy, y, activation, x=None, out=None):
        """dx = dy * activation'(x), written in terms of the forward output y
        (x, the forward input, is needed only for gelu; see NEEDS_INPUT)."""
        activation = activation_name(activation)
        ndim = 2 if activation == "softmax" else None
        y = chk.float_array(y, "y", ndim=ndim)
        dy = chk.float_array(dy, "dy", dtype=y.dtype, shape=y.shape)
        if activation in NEEDS_INPUT:
            if x is None:
                raise ValueError(f"the {activation} backward needs x, the forward input")
            x = chk.float_array(x, "x", dtype=y.dtype, shape=y.shape)
        out = chk.out_array(out, "out", y.shape, y.dtype)
        dy, y, x = chk.unshared((out,), dy, y, x)
        self._activation_backward(dy, y, activation, x, out)
        return out

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
    def dense_forward(self, x, W, b, activation="identity", out=None, preact=None):
        """y = activation(x @ W + b).

        x: (N, in); W: (in, out); b: (out,) or None; out: (N, out) for y;
        preact: optional (N, out) buffer that receives x @ W + b (the gelu
        backward needs it). Returns y."""
        activation = activation_name(activation)
        W = chk.float_array(W, "W", ndim=2)
        x = chk.float_array(x, "x", dtype=W.dtype, shape=(None, W.shape[0]))
        if b is not None:
            b = chk.float_array(b, "b", dtype=W.dtype, shape=(W.shape[1],))
        shape = (x.shape[0], W.shape[1])
        out = chk.out_array(out, "out", shape, W.dtype)
        if preact is not None:
            preact = chk.out_array(preact, "preact", shape, W.dtype)
        chk.distinct(out=out, preact=preact)
        x, W, b = chk.unshared((out, preact), x, W, b)
        self._dense_forward(x, W, b, activation, out, preact)
        return out

    def dense_backward(self, dy, x, W, y, activation="identity", preact=None, need_dx=True,
                       dx=None, dW=None, db=None, dz=None):
        """Gradients of y = activation(x @ W + b).

        dy, y: (N, out); x: (N, in); W: (in, out); preact: (N, out), needed for
        gelu only; dz: optional (N, out) workspace for dy * activation'.
        Returns (dx or None, dW, db) with dx (N, in), dW (in, out), db (out,)."""
        activation = activation_name(activation)
        W = chk.float_array(W, "W", ndim=2)
        n_in, n_out = W.shape
        x = chk.float_array(x, "x", dtype=W.dtype, ndim=2, shape=(None, n_in))
        shape = (x.shape[0], n_out)
        dy = chk.float_array(dy, "dy", dtype=W.dtype, shape=shape)
        y = chk.float_array(y, "y", dtype=W.dtype, shape=shape)
        if activation in NEEDS_INPUT:
            if preact is None:
                raise ValueError(f"the {activation} backward needs preact from dense_forward")
            preact = chk.float_array(preact, "preact", dtype=W.dtype, shape=shape)
        dx = chk.out_array(dx, "dx", x.shape, W.dtype) if need_dx else None
        dW = chk.out_array(dW, "dW", W.shape, W.dtype)
        db = chk.out_array(db, "db", (n_out,), W.dtype)
        # dz is not used by the identity
        dz = chk.out_array(dz, "dz", shape, W.dtype) if activation != "identity" else None
        chk.distinct(dx=dx, dW=dW, db=db, dz=dz)
        dy, x, W, y, preact = chk.unshared((dx, dW, db, dz), dy, x, W, y, preact)
        self._dense_backward(dy, x, W, y, activation, preact, dx, dW, db, dz)
        return dx, dW, db

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
    def _loss_args(self, output, targets, sample_weight, grad, out_name, ndims=(1, 2)):
        output = chk.float_array(output, out_name)
        if output.ndim not in ndims:
            raise ValueError(f"{out_name} must be {' or '.join(f'{d}-D' for d in ndims)}, "
                             f"got shape {output.shape}")
        w = chk.sample_weight_array(sample_weight, output.shape[0], output.dtype)
        grad = chk.out_array(grad, "grad", output.shape, output.dtype)
        if targets is not None:
            targets = chk.float_array(targets, "targets", dtype=output.dtype, shape=output.shape)
            chk.finite_targets(targets, "targets")
        output, targets, w = chk.unshared((grad,), output, targets, w)
        return output, targets, w, grad

    @staticmethod
    def _sample_scale(w, n, dtype):
        """(N,) factor that turns per-sample losses into their (weighted) mean."""
        if w is None:
            return np.full(n, 1.0 / max(n, 1), dtype=dtype)
        return w / w.sum()

    def softmax_cross_entropy(self, logits, targets, sample_weight=None, grad=None):
        """Mean cross-entropy of softmax(logits) and its gradient.

        logits: (N, C); targets: (N,) integer labels in [0, C), or (N, C)
        probabilities (each row a distribution); sample_weight: (N,) or None.
        Returns (loss, grad) with grad (N, C) = d loss / d logits."""
        logits, _, w, grad = self._loss_args(logits, None, sample_weight, grad, "logits", (2,))
        n, c = logits.shape
        if isinstance(targets, np.ndarray) and targets.ndim == 1:
            targets = chk.labels_array(targets, "targets", n, c)
        else:
            targets = chk.float_array(targets, "targets", dtype=logits.dtype, shape=(n, c))
            chk.finite_targets(targets, "targets")
        targets, = chk.unshared((grad,), targets)
        return float(self._softmax_cross_entropy(logits, targets, w, grad)), grad

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
            per_sample = (targets * (lse - logits)).sum(axis=1)
            grad[...] = p * targets.sum(axis=1, keepdims=True) - targets
        scale = self._sample_scale(w, n, logits.dtype)
        grad *= scale[:, None]
        return (per_sample * scale).sum()

    def sigmoid_binary_cross_entropy(self, logits, targets, sample_weight=None, grad=None):
        """Binary cross-entropy of sigmoid(logits), summed over outputs, mean over
        samples. logits, targets: (N,) or (N, K) with targets in [0, 1]."""
        logits, targets, w, grad = self._loss_args(logits, targets, sample_weight, grad, "logits")
        if targets.size and (targets.min() < 0 or targets.max() > 1):
            raise ValueError("targets of a binary cross-entropy must lie in [0, 1]")
        return float(self._sigmoid_binary_cross_entropy(logits, targets, w, grad)), grad

    def _sigmoid_binary_cross_entropy(self, logits, targets, w, grad):
        x, t = logits, targets
        # -t log s(x) - (1-t) log(1-s(x)) = max(x, 0) - x t + log(1 + e^-|x|)
        per_elem = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
        grad[...] = special.expit(x) - t
        return self._reduce(per_elem, grad, w)

    def _reduce(self, per_elem, grad, w):
        """Sum per-element losses over outputs, take the (weighted) mean over samples,
        and scale grad (already holding d per_elem / d output) to match."""
        scale = self._sample_scale(w, per_elem.shape[0], per_elem.dtype)
        scale = scale.reshape((-1,) + (1,) * (per_elem.ndim - 1))
        grad *= scale
        return (per_elem * scale).sum()

    def squared_error(self, pred, targets, sample_weight=None, grad=None):
        """0.5 * (pred - targets)^2, summed over outputs, mean over samples
        (the gradient is then (pred - targets) / N, scikit-learn's)."""
        pred, targets, w, grad = self._loss_args(pred, targets, sample_weight, grad, "pred")
        return float(self._squared_error(pred, targets, w, grad)), grad

    def _squared_error(self, pred, targets, w, grad):
        d = pred - targets
        grad[...] = d
        return self._reduce(0.5 * d * d, grad, w)

    def absolute_error(self, pred, targets, sample_weight=None, grad=None):
        """|pred - targets|, summed over outputs, mean over samples; the gradient
        at a zero residual is 0."""
        pred, targets, w, grad = self._loss_args(pred, targets, sample_weight, grad, "pred")
        return float(self._absolute_error(pred, targets, w, grad)), grad

    def _absolute_error(self, pred, targets, w, grad):
        d = pred - targets
        grad[...] = np.sign(d)
        return self._reduce(np.abs(d), grad, w)

    def huber(self, pred, targets, sample_weight=None, grad=None, delta=1.0):
        """Huber loss (torch.nn.HuberLoss): 0.5 d^2 for |d| < delta, else
        delta (|d| - delta/2); summed over outputs, mean over samples."""
        delta = chk.real(delta, "delta", low=0, low_open=True)
        pred, targets, w, grad = self._loss_args(pred, targets, sample_weight, grad, "pred")
        return float(self._huber(pred, targets, w, grad, delta)), grad

    def _huber(self, pred, targets, w, grad, delta):
        d = pred - targets
        small = np.abs(d) < delta
        per_elem = np.where(small, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))
        grad[...] = np.clip(d, -delta, delta)
        return self._reduce(per_elem, grad, w)

    def hinge(self, scores, targets, sample_weight=None, grad=None):
        """Hinge loss max(0, 1 - t s) with targets t in {-1, +1}, summed over
        outputs, mean over samples."""
        scores, targets, w, grad = self._loss_args(scores, targets, sample_weight, grad, "scores")
        if not np.isin(targets, (-1, 1)).all():
            raise ValueError("targets of the hinge loss must be -1 or +1")
        return float(self._hinge(scores, targets, w, grad)), grad

    def _hinge(self, scores, targets, w, grad):
        margin = 1 - targets * scores
        grad[...] = np.where(margin > 0, -targets, 0)
        return self._reduce(np.maximum(margin, 0), grad, w)

    # ------------------------------------------------------------ normalisation
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, training,
                          momentum=0.1, eps=1e-5, out=None):
        """Batch normalisation over the sample axis, as torch.nn.BatchNorm1d.

        x: (N, C); gamma, beta, running_mean, running_var: (C,). In training the
        batch mean and biased variance normalise x, and the running statistics
        are updated in place with the unbiased variance:
        running = (1 - momentum) running + momentum batch. In inference the
        running statistics normalise x. Returns (y, cache)."""
        x = chk.float_array(x, "x", ndim=2)
        n, c = x.shape
        gamma = chk.float_array(gamma, "gamma", dtype=x.dtype, shape=(c,))
        beta = chk.float_array(beta, "beta", dtype=x.dtype, shape=(c,))
        running_mean = chk.state_array(running_mean, "running_mean", gamma, "gamma")
        running_var = chk.state_array(running_var, "running_var", gamma, "gamma")
        momentum = chk.real(momentum, "momentum", 0, 1)
        eps = chk.real(eps, "eps", low=0, low_open=True)
        training = bool(training)
        if training and n < 2:
            raise ValueError(f"batch norm in training needs more than 1 sample per channel, "
                             f"got x of shape {x.shape}")
        out = chk.out_array(out, "out", x.shape, x.dtype)
        chk.distinct(out=out, running_mean=running_mean, running_var=running_var)
        # the cache keeps the x read
        x, gamma, beta = chk.unshared((out, running_mean, running_var), x, gamma, beta)
        mean = np.empty(c, x.dtype)
        invstd = np.empty(c, x.dtype)
        self._batchnorm_forward(x, gamma, beta, running_mean, running_var, training,
                                momentum, eps, out, mean, invstd)
        return out, BatchNormCache(x, mean, invstd, gamma, training)

    def batchnorm_backward(self, dy, cache, dx=None, dgamma=None, dbeta=None):
        """Gradients of batchnorm_forward. dy: (N, C). Returns (dx, dgamma, dbeta)."""
        if not isinstance(cache, BatchNormCache):
            raise TypeError("cache must be the BatchNormCache returned by batchnorm_forward")
        # the cache is a plain tuple a caller can build or alter: check it like any input
        x = chk.float_array(cache.x, "cache.x", ndim=2)
        mean, invstd, gamma = (chk.float_array(getattr(cache, f), f"cache.{f}", dtype=x.dtype,
                                               shape=(x.shape[1],)) for f in ("mean", "invstd", "gamma"))
        dy = chk.float_array(dy, "dy", dtype=x.dtype, shape=x.shape)
        dx = chk.out_array(dx, "dx", x.shape, x.dtype)
        dgamma = chk.out_array(dgamma, "dgamma", gamma.shape, x.dtype)
        dbeta = chk.out_array(dbeta, "dbeta", gamma.shape, x.dtype)
        chk.distinct(dx=dx, dgamma=dgamma, dbeta=dbeta)
        dy, x, mean, invstd, gamma = chk.unshared((dx, dgamma, dbeta), dy, x, mean, invstd, gamma)
        cache = BatchNormCache(x, mean, invstd, gamma, bool(cache.training))
        self._batchnorm_backward(dy, cache, dx, dgamma, dbeta)
        return dx, dgamma, dbeta

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
    def dropout_forward(self, x, rate, seed, out=None):
        """Inverted dropout: y = x * keep / (1 - rate), where keep for the element
        at flat (C-order) index i comes from splitmix64(seed, i) and is the same on
        every backend. The backward regenerates the mask from (rate, seed)."""
        x = chk.float_array(x, "x")
        rate, seed = self._dropout_args(rate, seed)
        out = chk.out_array(out, "out", x.shape, x.dtype)
        x, = chk.unshared((out,), x)
        self._dropout_forward(x, rate, seed, out)
        return out

    def dropout_backward(self, dy, rate, seed, out=None):
        """dx = dy * keep / (1 - rate), with the mask of the forward call that had
        the same (rate, seed) and shape."""
        dy = chk.float_array(dy, "dy")
        rate, seed = self._dropout_args(rate, seed)
        out = chk.out_array(out, "out", dy.shape, dy.dtype)
        dy, = chk.unshared((out,), dy)
        self._dropout_backward(dy, rate, seed, out)
        return out

    @staticmethod
    def _dropout_args(rate, seed):
        rate = chk.real(rate, "rate", 0, 1, high_open=True)
        seed = chk.integer(seed, "seed", 0, 2**64 - 1)
        return rate, seed

    def dropout_mask(self, shape, rate, seed):
        """The boolean keep-mask dropout uses for an array of this shape."""
        rate, seed = self._dropout_args(rate, seed)
        return self._dropout_keep(int(np.prod(shape)), rate, seed).reshape(shape)

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
    def weight_penalty(self, param, grad, l2=0.0, l1=0.0):
        """Adds the gradient of l2/2 ||param||^2 + l1 ||param||_1 to grad in place
        and returns that penalty's value (sign(0) = 0 for the L1 term)."""
        param = chk.float_array(param, "param")
        grad = chk.state_array(grad, "grad", param)
        l2 = chk.real(l2, "l2", low=0)
        l1 = chk.real(l1, "l1", low=0)
        param, = chk.unshared((grad,), param)
        return float(self._weight_penalty(param, grad, l2, l1))

    def _weight_penalty(self, param, grad, l2, l1):
        value = 0.0
        if l2:
            value += 0.5 * l2 * np.dot(param.ravel(), param.ravel())
            grad += l2 * param
        if l1:
            value += l1 * np.abs(param).sum()
            grad += l1 * np.sign(param)
        return value

    # --------------------------------------------------------------- optimizers
    def _step_args(self, param, grad, states, lr):
        """Optimizer arrays: param and states updated in place (same shape, dtype,
        contiguous), grad read only."""
        if not isinstance(param, np.ndarray):
            raise TypeError(f"param must be a numpy.ndarray, got {type(param).__name__}")
        chk.float_array(param, "param")
        chk.state_array(param, "param", param)
        grad = chk.float_array(grad, "grad", dtype=param.dtype, shape=param.shape)
        for name, s in states.items():
            chk.state_array(s, name, param)
        chk.distinct(param=param, **states)
        grad, = chk.unshared((param, *states.values()), grad)
        lr = chk.real(lr, "lr", low=0)
        return grad, lr

    def sgd_step(self, param, grad, velocity, lr, momentum=0.0, nesterov=False,
                 weight_decay=0.0, lr_in_velocity=False):
        """SGD in place, torch.optim.SGD's rule (dampening 0):
            g = grad + weight_decay * param
            velocity = momentum * velocity + g
            param -= lr * (g + momentum * velocity if nesterov else velocity)
        With lr_in_velocity, scikit-learn's rule instead (equal for constant lr):
            velocity = momentum * velocity - lr * g
            param += momentum * velocity - lr * g if nesterov else velocity
        velocity may be None when momentum is 0."""
        momentum = chk.real(momentum, "momentum", 0, 1)
        if velocity is None and momentum:
            raise ValueError("velocity is required when momentum > 0")
        states = {} if velocity is None else {"velocity": velocity}
        grad, lr = self._step_args(param, grad, states, lr)
        weight_decay = chk.real(weight_decay, "weight_decay", low=0)
        if nesterov and not momentum:
            raise ValueError("nesterov needs momentum > 0")
        self._sgd_step(param, grad, velocity, lr, momentum, bool(nesterov), weight_decay,
                       bool(lr_in_velocity))

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

    def adagrad_step(self, param, grad, sum_sq, lr, eps=1e-10, weight_decay=0.0):
        """Adagrad in place (torch.optim.Adagrad without lr decay):
            g = grad + weight_decay * param; sum_sq += g^2
            param -= lr * g / (sqrt(sum_sq) + eps)"""
        grad, lr = self._step_args(param, grad, {"sum_sq": sum_sq}, lr)
        eps = chk.real(eps, "eps", low=0)
        weight_decay = chk.real(weight_decay, "weight_decay", low=0)
        self._adagrad_step(param, grad, sum_sq, lr, eps, weight_decay)

    def _adagrad_step(self, param, grad, sum_sq, lr, eps, weight_decay):
        g = grad + weight_decay * param if weight_decay else grad
        sum_sq += g * g
        param -= lr * g / (np.sqrt(sum_sq) + eps)

    def rmsprop_step(self, param, grad, square_avg, lr, alpha=0.99, eps=1e-8,
                     weight_decay=0.0, momentum=0.0, momentum_buf=None, centered=False,
                     grad_avg=None):
        """RMSprop in place (torch.optim.RMSprop):
            g = grad + weight_decay * param
            square_avg = alpha square_avg + (1 - alpha) g^2
            centered: grad_avg = alpha grad_avg + (1 - alpha) g, and
                      avg = sqrt(square_avg - grad_avg^2) + eps, else sqrt(square_avg) + eps
            momentum: momentum_buf = momentum momentum_buf + g / avg; param -= lr momentum_buf
            else:     param -= lr g / avg"""
        momentum = chk.real(momentum, "momentum", 0, 1)
        states = {"square_avg": square_avg}
        if momentum:
            if momentum_buf is None:
                raise ValueError("momentum_buf is required when momentum > 0")
            states["momentum_buf"] = momentum_buf
        if centered:
            if grad_avg is None:
                raise ValueError("grad_avg is required when centered")
            states["grad_avg"] = grad_avg
        grad, lr = self._step_args(param, grad, states, lr)
        alpha = chk.real(alpha, "alpha", 0, 1)
        eps = chk.real(eps, "eps", low=0)
        weight_decay = chk.real(weight_decay, "weight_decay", low=0)
        self._rmsprop_step(param, grad, square_avg, lr, alpha, eps, weight_decay, momentum,
                           momentum_buf if momentum else None, grad_avg if centered else None)

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

    def adadelta_step(self, param, grad, square_avg, acc_delta, lr=1.0, rho=0.9, eps=1e-6,
                      weight_decay=0.0):
        """Adadelta in place (torch.optim.Adadelta):
            g = grad + weight_decay * param
            square_avg = rho square_avg + (1 - rho) g^2
            delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
            acc_delta = rho acc_delta + (1 - rho) delta^2; param -= lr delta"""
        grad, lr = self._step_args(param, grad,
                                   {"square_avg": square_avg, "acc_delta": acc_delta}, lr)
        rho = chk.real(rho, "rho", 0, 1)
        eps = chk.real(eps, "eps", low=0, low_open=True)
        weight_decay = chk.real(weight_decay, "weight_decay", low=0)
        self._adadelta_step(param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay)

    def _adadelta_step(self, param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay):
        g = grad + weight_decay * param if weight_decay else grad
        square_avg *= rho
        square_avg += (1 - rho) * g * g
        delta = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * g
        acc_delta *= rho
        acc_delta += (1 - rho) * delta * delta
        param -= lr * delta

    def adam_step(self, param, grad, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                  weight_decay=0.0, decoupled=False, amsgrad=False, v_max=None):
        """Adam in place (torch.optim.Adam; AdamW when decoupled), step t >= 1:
            decoupled: param *= 1 - lr weight_decay;  else g = grad + weight_decay param
            m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
            amsgrad: v_max = max(v_max, v), used in place of v below
            param -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
        scikit-learn's Adam (eps added to sqrt(v) before bias correction) is this
        rule with eps / sqrt(1 - beta2^t)."""
        states = {"m": m, "v": v}
        if amsgrad:
            if v_max is None:
                raise ValueError("v_max is required when amsgrad")
            states["v_max"] = v_max
        grad, lr = self._step_args(param, grad, states, lr)
        t = chk.integer(t, "t", low=1)
        beta1 = chk.real(beta1, "beta1", 0, 1, high_open=True)
        beta2 = chk.real(beta2, "beta2", 0, 1, high_open=True)
        eps = chk.real(eps, "eps", low=0)
        weight_decay = chk.real(weight_decay, "weight_decay", low=0)
        self._adam_step(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay,
                        bool(decoupled), v_max if amsgrad else None)

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
    def init_weights(self, method, fan_in, fan_out, rng=None, dtype=np.float64,
                     activation=None):
        """Initial (W, b) of a dense layer: W (fan_in, fan_out), b (fan_out,).

        glorot_uniform: U(+-sqrt(6 / (fan_in + fan_out)));  glorot_normal: N(0, 2 / (fan_in + fan_out))
        he_uniform: U(+-sqrt(6 / fan_in));  he_normal: N(0, 2 / fan_in);  lecun_normal: N(0, 1 / fan_in)
        sklearn: scikit-learn's MLP init, W and b from U(+-sqrt(f / (fan_in + fan_out)))
        with f = 2 for logistic and 6 otherwise, drawn W first then b.
        b is zero except for sklearn. rng: numpy Generator, RandomState, int or None."""
        if not isinstance(method, str):
            raise TypeError(f"method must be a string, got {type(method).__name__}")
        method = chk.choice(INIT_ALIASES.get(method, method), "method", INITIALISERS)
        fan_in = chk.integer(fan_in, "fan_in", low=1)
        fan_out = chk.integer(fan_out, "fan_out", low=1)
        dtype = np.dtype(dtype)
        if dtype not in chk.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        if not isinstance(rng, (np.random.Generator, np.random.RandomState)):
            rng = np.random.default_rng(rng)
        if activation is not None:
            activation = activation_name(activation)
        return self._init_weights(method, fan_in, fan_out, rng, dtype, activation)

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
