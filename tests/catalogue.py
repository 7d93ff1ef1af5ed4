"""The equivalence catalogue: one entry per kernel and edge case.

Each entry is a function run(backend, dtype) that builds its inputs from a fixed
seed and returns every output of the kernel, including state arrays it updated
in place. test_equivalence.py runs each entry on the reference backend and on
every other available backend, for float32 and float64, and compares.

Adding a kernel to a backend is adding entries here (the `entry` decorator),
one per shape or option worth covering.
"""

from typing import NamedTuple

import numpy as np

from fastnn.backends import get_backend
from fastnn.backends.reference import ACTIVATIONS
from fastnn.testing import RTOL, assert_close, reference_error

CATALOGUE = {}  # id -> run(backend, dtype) -> tuple of outputs


class Terms(NamedTuple):
    """An output whose elements are sums of terms that may cancel, with the size
    of those terms (sum of their absolute values): its rounding is bounded by
    the terms, not by the sum (assert_close's magnitude)."""

    value: np.ndarray
    magnitude: np.ndarray


def assert_output_matches(actual, expected, dtype, what):
    """One output of an entry against the reference's: masks exactly, Terms
    within the reference's terms (which bound the rounding of both), the rest
    by assert_close."""
    if isinstance(expected, np.ndarray) and expected.dtype == bool:
        np.testing.assert_array_equal(actual, expected)
    elif isinstance(expected, Terms):
        assert_close(actual.value, expected.value, dtype, what, magnitude=expected.magnitude)
    else:
        assert_close(actual, expected, dtype, what)


# (rows, cols): one row, one column, odd sizes, and larger than the L2 cache
SHAPES = [(1, 1), (1, 7), (9, 1), (33, 65), (1031, 1029)]
STEP_SIZES = [1, 7, 1000, 1 << 20]  # optimizer parameter counts (flat)


def entry(kernel, case):
    def register(run):
        CATALOGUE[f"{kernel}[{case}]"] = run
        return run
    return register


def rand(shape, dtype, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def noncontiguous(a):
    """The same values as `a`, seen through a strided (non-contiguous) view."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


# ---------------------------------------------------------------- activations
def _activation_cases():
    for act in ACTIVATIONS:
        for shape in SHAPES:
            case = f"{act}-{shape[0]}x{shape[1]}"

            @entry("activation", case)
            def run(backend, dtype, act=act, shape=shape):
                x = rand(shape, dtype, 1, 3.0)
                y = backend.activation_forward(x, act)
                dy = rand(shape, dtype, 2)
                dx = backend.activation_backward(dy, y, act, x=x)
                return y, dx

        @entry("activation", f"{act}-noncontiguous")
        def run_nc(backend, dtype, act=act):
            x = noncontiguous(rand((17, 31), dtype, 3, 3.0))
            y = backend.activation_forward(x, act)
            dx = backend.activation_backward(noncontiguous(rand((17, 31), dtype, 4)), y, act, x=x)
            return y, dx

        @entry("activation", f"{act}-extreme")
        def run_ext(backend, dtype, act=act):
            # large magnitudes (overflow paths) and values around 0 and thresholds
            x = np.array([[-1e4, -100.0, -30.0, -20.5, -1e-3, 0.0, 1e-3, 19.5, 20.5, 30.0,
                           100.0, 1e4]], dtype)
            y = backend.activation_forward(x, act)
            dx = backend.activation_backward(np.ones_like(x), y, act, x=x)
            return y, dx


_activation_cases()


# ---------------------------------------------------------------------- dense
def _dense_terms(x, W, b, act, y):
    """Terms of y = act(x W + b) and of its preact: the preact's elements are
    sums of the terms |x| |W| and |b|, which bound their rounding (the fast
    backends' GEMMs split and block the sums differently); an activation moves
    that by at most twice its size (slopes up to SELU's 1.76), softmax any
    element of a row by twice the row's largest."""
    terms = np.abs(x.astype(np.float64)) @ np.abs(W.astype(np.float64))
    if b is not None:
        terms += np.abs(b.astype(np.float64))
    spread = terms.max(axis=1, keepdims=True) if act == "softmax" else terms
    return Terms(y, np.abs(y.astype(np.float64)) + 2 * spread), terms


def _dense_run(backend, x, W, b, act, dy, preact=True, need_dx=True):
    """The forward's outputs (y and preact when asked, as Terms) and the
    backward's (dx, dW, db as Terms; dx None without need_dx). The backward runs
    on the reference's forward outputs, so every backend's backward sees the
    same y and preact: a preact that rounds to the other side of relu's kink
    would change a whole term of dz."""
    dtype, shape = x.dtype, (x.shape[0], W.shape[1])
    pre = np.empty(shape, dtype) if preact else None
    y = backend.dense_forward(x, W, b, act, preact=pre)
    y_terms, terms = _dense_terms(x, W, b, act, y)
    ref_pre = np.empty(shape, dtype) if preact else None
    ref_y = get_backend("numpy").dense_forward(x, W, b, act, preact=ref_pre)
    dz = None if act == "identity" else np.empty(shape, dtype)
    dx, dW, db = backend.dense_backward(dy, x, W, ref_y, act, preact=ref_pre, need_dx=need_dx,
                                        dz=dz)
    # dx, dW, db: sums over n_out, n, n of terms of dz = dy * act'(preact)
    z = np.abs(dy if dz is None else dz).astype(np.float64)
    forward = (y_terms, Terms(pre, terms)) if preact else (y_terms,)
    backward = (Terms(dW, np.abs(x.T.astype(np.float64)) @ z), Terms(db, z.sum(axis=0)))
    if need_dx:
        backward = (Terms(dx, z @ np.abs(W.T.astype(np.float64))),) + backward
    else:
        assert dx is None
    return forward + backward


for act in ACTIVATIONS:
    for n, n_in, n_out in [(1, 1, 1), (1, 5, 3), (7, 1, 9), (64, 33, 17), (256, 784, 512)]:
        if act == "softmax" and n_out == 1:
            continue

        @entry("dense", f"{act}-{n}x{n_in}x{n_out}")
        def run_dense(backend, dtype, act=act, n=n, n_in=n_in, n_out=n_out):
            x = rand((n, n_in), dtype, 5)
            W = rand((n_in, n_out), dtype, 6, 1 / np.sqrt(n_in))
            return _dense_run(backend, x, W, rand((n_out,), dtype, 7), act, rand((n, n_out), dtype, 8))


@entry("dense", "relu-without-preact-several-chunks")
def run_dense_relu_no_preact(backend, dtype):
    # bias + relu without a preact copy: one fused pass in the numba epilogue,
    # over more rows than one chunk of it holds
    x = rand((300, 37), dtype, 12)
    W = rand((37, 129), dtype, 13, 1 / np.sqrt(37))
    return _dense_run(backend, x, W, rand((129,), dtype, 14), "relu", rand((300, 129), dtype, 15),
                      preact=False)


@entry("dense", "no-bias-noncontiguous-no-dx")
def run_dense_nc(backend, dtype):
    x = noncontiguous(rand((10, 6), dtype, 9))
    W = rand((6, 4), dtype, 10)
    return _dense_run(backend, x, W, None, "tanh", rand((10, 4), dtype, 11), preact=False,
                      need_dx=False)


# --------------------------------------------------------------------- losses
LOSS_SHAPES = [(1, 1), (1, 10), (64, 10), (33, 1), (1025, 1000)]
# many blocks of short rows (csrc/losses_impl.h), serial and parallel; with
# probability targets in test_softmax_ce_probabilities_short_rows
SHORT_ROW_SHAPES = [(5000, 3), (1025, 127)]


def _logits(shape, dtype, seed, scale=3.0):
    return rand(shape, dtype, seed, scale)


for shape in LOSS_SHAPES + SHORT_ROW_SHAPES:
    n, c = shape

    @entry("softmax_cross_entropy", f"labels-{n}x{c}")
    def run_sce(backend, dtype, n=n, c=c):
        logits = _logits((n, c), dtype, 12)
        labels = np.random.default_rng(13).integers(0, c, n)
        return backend.softmax_cross_entropy(logits, labels)

    if shape in SHORT_ROW_SHAPES:
        continue

    @entry("softmax_cross_entropy", f"probs-weighted-{n}x{c}")
    def run_sce_p(backend, dtype, n=n, c=c):
        logits = _logits((n, c), dtype, 14)
        p = np.random.default_rng(15).random((n, c)).astype(dtype)
        p /= p.sum(axis=1, keepdims=True)
        w = np.random.default_rng(16).random(n).astype(dtype) + 0.1
        return backend.softmax_cross_entropy(logits, p, sample_weight=w)

    @entry("sigmoid_binary_cross_entropy", f"{n}x{c}")
    def run_bce(backend, dtype, n=n, c=c):
        logits = _logits((n, c), dtype, 17)
        t = (np.random.default_rng(18).random((n, c)) > 0.5).astype(dtype)
        return backend.sigmoid_binary_cross_entropy(logits, t)

    for loss in ("squared_error", "absolute_error", "huber"):
        @entry(loss, f"weighted-{n}x{c}")
        def run_reg(backend, dtype, n=n, c=c, loss=loss):
            pred = rand((n, c), dtype, 19, 2.0)
            t = rand((n, c), dtype, 20, 2.0)
            w = np.random.default_rng(21).random(n).astype(dtype) + 0.1
            return getattr(backend, loss)(pred, t, sample_weight=w)

    @entry("hinge", f"{n}x{c}")
    def run_hinge(backend, dtype, n=n, c=c):
        s = rand((n, c), dtype, 22, 2.0)
        t = np.where(np.random.default_rng(23).random((n, c)) > 0.5, 1, -1).astype(dtype)
        return backend.hinge(s, t)


for shape in [(1, 1), (33, 1), (64, 10), (1025, 1000)]:
    @entry("sigmoid_binary_cross_entropy", f"weighted-{shape[0]}x{shape[1]}")
    def run_bce_w(backend, dtype, shape=shape):
        logits = _logits(shape, dtype, 69)
        t = np.random.default_rng(70).random(shape).astype(dtype)  # soft targets in [0, 1]
        w = np.random.default_rng(71).random(shape[0]).astype(dtype) + 0.1
        return backend.sigmoid_binary_cross_entropy(logits, t, sample_weight=w)


@entry("softmax_cross_entropy", "huge-logits")
def run_sce_huge(backend, dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype)
    return backend.softmax_cross_entropy(logits, np.array([1, 2, 0]))


@entry("softmax_cross_entropy", "noncontiguous-weighted-labels")
def run_sce_nc(backend, dtype):
    logits = noncontiguous(_logits((40, 7), dtype, 24))
    w = np.random.default_rng(25).random(40).astype(dtype)
    return backend.softmax_cross_entropy(logits, np.arange(40) % 7, sample_weight=w)


@entry("sigmoid_binary_cross_entropy", "huge-logits-1d")
def run_bce_huge(backend, dtype):
    logits = np.array([1e4, -1e4, 0.0, 50.0, -50.0], dtype)
    return backend.sigmoid_binary_cross_entropy(logits, np.array([0, 1, 1, 0, 1], dtype))


@entry("squared_error", "1d")
def run_se_1d(backend, dtype):
    return backend.squared_error(rand((50,), dtype, 26), rand((50,), dtype, 27))


# Sums at extreme magnitudes: every backend accumulates in float64 and returns
# the value in the dtype. Row 0's float32 sum overflows, its mean over 64 rows
# does not (finite on every backend); "overflow" rows give a mean beyond float32
# (inf in float32 on every backend, finite in float64).
EXTREME = {"squared_error": 1e19, "absolute_error": 3e37, "huber": 3e37, "hinge": 3e37,
           "sigmoid_binary_cross_entropy": 3e37}
for loss, big in EXTREME.items():
    for rows in ("one-row", "overflow"):
        @entry(loss, f"extreme-{rows}")
        def run_extreme(backend, dtype, loss=loss, big=big, rows=rows):
            pred = rand((64, 100), dtype, 72)
            sign = np.where(np.arange(100) % 2, 1.0, -1.0).astype(dtype)
            if rows == "one-row":
                pred[0] = big * sign
            else:
                pred[:] = big * sign
            t = (rand((64, 100), dtype, 73) > 0).astype(dtype)
            if loss == "hinge":
                t = 2 * t - 1
            return getattr(backend, loss)(pred, t)


@entry("softmax_cross_entropy", "extreme-probs")
def run_sce_extreme(backend, dtype):
    logits = rand((64, 100), dtype, 74)
    logits[0] = np.where(np.arange(100) % 2, 3e37, -3e37)  # each term ~6e37 t, the row ~3e39
    p = np.random.default_rng(75).random((64, 100)).astype(dtype)
    p /= p.sum(axis=1, keepdims=True)
    return backend.softmax_cross_entropy(logits, p)


for case, (value, l2, l1) in {"squares-overflow": (2e19, 1e-10, 0.0), "l2-overflow": (2e19, 1.0, 0.0),
                              "l1-overflow": (1e38, 0.0, 1.0)}.items():
    @entry("weight_penalty", f"extreme-{case}")
    def run_penalty_extreme(backend, dtype, value=value, l2=l2, l1=l1):
        p = np.full(1000, value, dtype) * np.where(np.arange(1000) % 3, 1, -1).astype(dtype)
        g = rand((1000,), dtype, 76)
        return backend.weight_penalty(p, g, l2=l2, l1=l1), g


# ------------------------------------------------------------- normalisation
for n, c in [(2, 1), (3, 7), (64, 33), (4096, 257)]:
    for training in (True, False):
        @entry("batchnorm", f"{'train' if training else 'eval'}-{n}x{c}")
        def run_bn(backend, dtype, n=n, c=c, training=training):
            x = rand((n, c), dtype, 28, 2.0) + 3.0
            gamma = rand((c,), dtype, 29)
            beta = rand((c,), dtype, 30)
            rm = rand((c,), dtype, 31)
            rv = np.abs(rand((c,), dtype, 32)) + 0.5
            y, cache = backend.batchnorm_forward(x, gamma, beta, rm, rv, training)
            dx, dgamma, dbeta = backend.batchnorm_backward(rand((n, c), dtype, 33), cache)
            return y, rm, rv, dx, dgamma, dbeta


@entry("batchnorm", "constant-column-noncontiguous")
def run_bn_const(backend, dtype):
    x = rand((50, 6), dtype, 34)
    x[:, 2] = 7.0  # zero variance: normalised to 0, finite gradients
    x = noncontiguous(x)
    gamma, beta = np.ones(6, dtype), np.zeros(6, dtype)
    rm, rv = np.zeros(6, dtype), np.ones(6, dtype)
    y, cache = backend.batchnorm_forward(x, gamma, beta, rm, rv, True, momentum=0.3, eps=1e-3)
    dx, dgamma, dbeta = backend.batchnorm_backward(noncontiguous(rand((50, 6), dtype, 35)), cache)
    return y, rm, rv, dx, dgamma, dbeta


# -------------------------------------------------------------------- dropout
for shape in [(1, 1), (3, 5), (257, 1031)]:
    for rate in (0.0, 0.1, 0.5, 0.9):
        @entry("dropout", f"{shape[0]}x{shape[1]}-p{rate}")
        def run_dropout(backend, dtype, shape=shape, rate=rate):
            x = rand(shape, dtype, 36)
            y = backend.dropout_forward(x, rate, seed=12345)
            dx = backend.dropout_backward(rand(shape, dtype, 37), rate, seed=12345)
            return y, dx


@entry("dropout", "noncontiguous-bigseed")
def run_dropout_nc(backend, dtype):
    x = noncontiguous(rand((20, 30), dtype, 38))
    return (backend.dropout_forward(x, 0.3, seed=2**64 - 1),)


# ------------------------------------------------------------- regularisation
for size in STEP_SIZES:
    @entry("weight_penalty", f"{size}")
    def run_penalty(backend, dtype, size=size):
        p = rand((size,), dtype, 39)
        g = rand((size,), dtype, 40)
        value = backend.weight_penalty(p, g, l2=1e-3, l1=1e-4)
        return value, g


# ----------------------------------------------------------------- optimizers
def _state(size, dtype, seed, positive=False):
    s = rand((size,), dtype, seed, 0.1)
    return np.abs(s) if positive else s


SGD_OPTIONS = {
    "plain": dict(momentum=0.0),
    "momentum": dict(momentum=0.9),
    "nesterov-wd": dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
    "sklearn-nesterov": dict(momentum=0.9, nesterov=True, lr_in_velocity=True),
    "wd": dict(momentum=0.0, weight_decay=1e-2),
    "momentum-wd": dict(momentum=0.9, weight_decay=1e-2),
    "sklearn-momentum": dict(momentum=0.9, lr_in_velocity=True),
}
ADAM_OPTIONS = {
    "plain": dict(),
    "l2": dict(weight_decay=1e-2),
    "adamw": dict(weight_decay=1e-2, decoupled=True),
    "amsgrad": dict(amsgrad=True),
}
RMSPROP_OPTIONS = {
    "plain": dict(),
    "momentum-centered-wd": dict(momentum=0.9, centered=True, weight_decay=1e-2),
    "wd": dict(weight_decay=1e-2),
    "momentum": dict(momentum=0.9),
    "centered": dict(centered=True),
}

for size in STEP_SIZES:
    for opt, kw in SGD_OPTIONS.items():
        @entry("sgd_step", f"{opt}-{size}")
        def run_sgd(backend, dtype, size=size, kw=kw):
            p, g, vel = rand((size,), dtype, 41), rand((size,), dtype, 42), _state(size, dtype, 43)
            for _ in range(3):
                backend.sgd_step(p, g, vel, lr=0.05, **kw)
            return p, vel

    for opt, kw in ADAM_OPTIONS.items():
        @entry("adam_step", f"{opt}-{size}")
        def run_adam(backend, dtype, size=size, kw=kw):
            p, g = rand((size,), dtype, 44), rand((size,), dtype, 45)
            m, v = _state(size, dtype, 46), _state(size, dtype, 47, positive=True)
            v_max = v.copy()
            for t in range(1, 4):
                backend.adam_step(p, g, m, v, t, lr=1e-2, v_max=v_max, **kw)
            return p, m, v, v_max

    for opt, kw in RMSPROP_OPTIONS.items():
        @entry("rmsprop_step", f"{opt}-{size}")
        def run_rmsprop(backend, dtype, size=size, kw=kw):
            p, g = rand((size,), dtype, 48), rand((size,), dtype, 49)
            sq = _state(size, dtype, 50, positive=True) + 1.0
            buf, gavg = _state(size, dtype, 51), _state(size, dtype, 52) * 0.1
            for _ in range(3):
                backend.rmsprop_step(p, g, sq, lr=1e-2, momentum_buf=buf, grad_avg=gavg, **kw)
            return p, sq, buf, gavg

    @entry("adagrad_step", f"{size}")
    def run_adagrad(backend, dtype, size=size):
        p, g, s = rand((size,), dtype, 53), rand((size,), dtype, 54), _state(size, dtype, 55, True)
        for _ in range(3):
            backend.adagrad_step(p, g, s, lr=1e-2, weight_decay=1e-3)
        return p, s

    @entry("adadelta_step", f"{size}")
    def run_adadelta(backend, dtype, size=size):
        p, g = rand((size,), dtype, 56), rand((size,), dtype, 57)
        sq, acc = _state(size, dtype, 58, True), _state(size, dtype, 59, True)
        for _ in range(3):
            backend.adadelta_step(p, g, sq, acc, lr=1.0, weight_decay=1e-3)
        return p, sq, acc


for size in STEP_SIZES:
    @entry("adagrad_step", f"no-wd-{size}")
    def run_adagrad_plain(backend, dtype, size=size):
        p, g, s = rand((size,), dtype, 62), rand((size,), dtype, 63), _state(size, dtype, 64, True)
        for _ in range(3):
            backend.adagrad_step(p, g, s, lr=1e-2)
        return p, s

    @entry("adadelta_step", f"no-wd-{size}")
    def run_adadelta_plain(backend, dtype, size=size):
        p, g = rand((size,), dtype, 65), rand((size,), dtype, 66)
        sq, acc = _state(size, dtype, 67, True), _state(size, dtype, 68, True)
        for _ in range(3):
            backend.adadelta_step(p, g, sq, acc, lr=1.0)
        return p, sq, acc


@entry("adam_step", "2d-param")
def run_adam_2d(backend, dtype):
    p, g = rand((13, 7), dtype, 60), rand((13, 7), dtype, 61)
    m, v = np.zeros_like(p), np.zeros_like(p)
    backend.adam_step(p, g, m, v, 1, lr=1e-3)
    return p, m, v


# --------------------------------------------------------------- initialisers
for method in ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal",
               "sklearn"):
    @entry("init_weights", method)
    def run_init(backend, dtype, method=method):
        return backend.init_weights(method, 30, 20, rng=0, dtype=dtype, activation="relu")


# ---------------------------------------------------------------- convolution
# (N, IH, IW, C, O, KH, KW, stride, padding, activation): strides 1 and 2,
# paddings 0..2, odd and even kernels, one image, one channel, channel counts
# that are not multiples of a vector width (17), a LeNet-sized layer. C * O at
# most _gemm_conv.DIRECT_MAX_CHANNELS selects the compiled backends' direct
# convolution: one channel at stride 1 (its vector loads: the LeNet layer, and
# 1 -> 12, two blocks of channels, rows of 13 pixels, not a multiple of a
# block), strided reads (3 -> 4, 1 -> 3 at stride 2, 2 -> 3, 2 -> 8 at (2, 1))
CONV_CASES = [
    (2, 7, 7, 3, 4, 3, 3, 1, 1, "relu"),
    (2, 8, 9, 5, 6, 2, 2, 2, 0, "tanh"),
    (1, 6, 5, 1, 3, 3, 3, 2, 2, "identity"),
    (3, 9, 8, 17, 8, 3, 2, (2, 1), (1, 0), "gelu"),
    (2, 5, 6, 2, 3, 4, 4, 1, 2, "softmax"),
    (1, 1, 1, 1, 1, 1, 1, 1, 0, "logistic"),
    (4, 28, 28, 1, 6, 5, 5, 1, 2, "relu"),
    (2, 14, 14, 16, 33, 3, 3, 1, 1, "elu"),
    (3, 11, 13, 1, 12, 3, 3, 1, 1, "tanh"),
    (2, 9, 10, 2, 8, 3, 2, (2, 1), (0, 1), "gelu"),
]


def _conv_terms(dz, x, W, stride, padding):
    """The size of the terms of dx, dW, db: the reference's gradients of |x|, |W|
    and |dz| (float64), which bound the rounding of sums that cancel."""
    a = [np.abs(v).astype(np.float64) for v in (dz, x, W)]
    y = np.zeros(dz.shape)
    return get_backend("numpy").conv2d_backward(a[0], a[1], a[2], y, stride=stride, padding=padding)


for n, ih, iw, c, o, kh, kw, stride, padding, act in CONV_CASES:
    case = f"{act}-{n}x{ih}x{iw}x{c}-{kh}x{kw}x{o}-s{stride}-p{padding}"

    @entry("conv2d_backward", case)
    def run_conv(backend, dtype, n=n, ih=ih, iw=iw, c=c, o=o, kh=kh, kw=kw, stride=stride,
                 padding=padding, act=act):
        x = rand((n, ih, iw, c), dtype, 70)
        W = rand((kh, kw, c, o), dtype, 71, 1 / np.sqrt(kh * kw * c))
        b = rand((o,), dtype, 72)
        y = backend.conv2d_forward(x, W, b, stride, padding, act)  # for its shape
        preact = np.empty_like(y)
        y = backend.conv2d_forward(x, W, b, stride, padding, act, preact=preact)
        dy = rand(y.shape, dtype, 73)
        dz = None if act == "identity" else np.empty_like(y)
        dx, dW, db = backend.conv2d_backward(dy, x, W, y, act, stride, padding, preact=preact,
                                             dz=dz)
        tx, tW, tb = _conv_terms(dy if dz is None else dz, x, W, stride, padding)
        return y, preact, Terms(dx, tx), Terms(dW, tW), Terms(db, tb)


@entry("conv2d_forward", "no-bias-noncontiguous")
def run_conv_nc(backend, dtype):
    x = noncontiguous(rand((3, 6, 7, 4), dtype, 74))
    return (backend.conv2d_forward(x, rand((3, 3, 4, 5), dtype, 75), None, 2, 1, "tanh"),)


@entry("conv2d_backward", "noncontiguous-no-dx")
def run_conv_nc_backward(backend, dtype):
    x = noncontiguous(rand((3, 6, 7, 4), dtype, 76))
    W = rand((2, 3, 4, 5), dtype, 77)
    y = backend.conv2d_forward(x, W, None, 1, 1)
    dy = noncontiguous(rand(y.shape, dtype, 78))
    dx, dW, db = backend.conv2d_backward(dy, x, W, y, need_dx=False, stride=1, padding=1)
    assert dx is None
    _, tW, tb = _conv_terms(dy, x, W, 1, 1)
    return y, Terms(dW, tW), Terms(db, tb)


@entry("conv2d_backward", "direct-no-dx")
def run_conv_direct_no_dx(backend, dtype):
    """The direct convolution's weight gradient alone (a first layer's backward)."""
    x = rand((3, 12, 11, 1), dtype, 87)
    W = rand((5, 5, 1, 6), dtype, 88, 0.2)
    y = backend.conv2d_forward(x, W, rand((6,), dtype, 89), 1, 2)
    dy = rand(y.shape, dtype, 90)
    dx, dW, db = backend.conv2d_backward(dy, x, W, y, need_dx=False, stride=1, padding=2)
    assert dx is None
    _, tW, tb = _conv_terms(dy, x, W, 1, 2)
    return y, Terms(dW, tW), Terms(db, tb)


# (N, IH, IW, C, pool, stride, padding)
POOL_CASES = [
    (2, 8, 8, 3, 2, None, 0),
    (2, 7, 9, 5, 3, 2, 1),
    (1, 6, 6, 1, (2, 3), 1, (1, 1)),
    (3, 9, 10, 17, 3, 3, 0),
    (1, 1, 1, 1, 1, None, 0),
    (4, 28, 28, 6, 2, 2, 0),
    (2, 5, 5, 70, 2, 1, 1),  # channels beyond one block of the C loop (64), and a tail
]


def _pool_input(shape, dtype, ties):
    # ties: small integers, so that windows hold several maxima
    if ties:
        return np.random.default_rng(79).integers(-2, 3, shape).astype(dtype)
    return rand(shape, dtype, 80)


for n, ih, iw, c, pool, stride, padding in POOL_CASES:
    for ties in (False, True):
        case = f"{n}x{ih}x{iw}x{c}-pool{pool}-s{stride}-p{padding}{'-ties' if ties else ''}"

        @entry("maxpool2d_backward", case)
        def run_maxpool(backend, dtype, shape=(n, ih, iw, c), pool=pool, stride=stride,
                        padding=padding, ties=ties):
            x = _pool_input(shape, dtype, ties)
            y, argmax = backend.maxpool2d_forward(x, pool, stride, padding)
            dx = backend.maxpool2d_backward(rand(y.shape, dtype, 81), argmax, x.shape)
            return y, argmax.astype(np.float64), dx

        @entry("avgpool2d_backward", case)
        def run_avgpool(backend, dtype, shape=(n, ih, iw, c), pool=pool, stride=stride,
                        padding=padding, ties=ties):
            x = _pool_input(shape, dtype, ties)
            y = backend.avgpool2d_forward(x, pool, stride, padding)
            return y, backend.avgpool2d_backward(rand(y.shape, dtype, 82), x.shape, pool, stride,
                                                 padding)


@entry("maxpool2d_forward", "noncontiguous")
def run_maxpool_nc(backend, dtype):
    y, argmax = backend.maxpool2d_forward(noncontiguous(rand((2, 6, 5, 3), dtype, 83)), 2, 1, 1)
    return y, argmax.astype(np.float64)


for channels in (70, 3):
    @entry("maxpool2d_forward", f"nan-{channels}")
    def run_maxpool_nan(backend, dtype, c=channels):
        # NaN wins, the first of a window's NaNs; NaN in the first cell, in a later
        # one, two in one window; 70 channels: across the C loop's blocks of 64; 3:
        # the C loop over the channels of thin images
        x = rand((2, 4, 4, c), dtype, 85)
        x[0, 0, 0, :3] = np.nan
        x[0, 1, 1, 2:6] = np.nan
        x[1, 2, 3, c - 10:c - 2] = np.nan
        x[1, 3, 3, c - 6:] = np.nan
        y, argmax = backend.maxpool2d_forward(x, 2, 1, 1)
        return y, argmax.astype(np.float64)


@entry("avgpool2d_forward", "noncontiguous")
def run_avgpool_nc(backend, dtype):
    return (backend.avgpool2d_forward(noncontiguous(rand((2, 6, 5, 3), dtype, 84)), 3, 2, 1),)


@entry("conv2d_backward", "empty-batch")
def run_conv_empty(backend, dtype):
    # sums over no images are 0, whatever the output buffers held
    x, W = np.zeros((0, 5, 4, 2), dtype), rand((3, 2, 2, 3), dtype, 85)
    y = backend.conv2d_forward(x, W, rand((3,), dtype, 86), 1, 1, "tanh")
    grads = backend.conv2d_backward(y, x, W, y, "tanh", 1, 1, dW=np.full(W.shape, 7, dtype),
                                    db=np.full(3, 7, dtype))
    return (y, *grads)


@entry("maxpool2d_backward", "empty-batch")
def run_pool_empty(backend, dtype):
    x = np.zeros((0, 5, 4, 2), dtype)
    y, argmax = backend.maxpool2d_forward(x, 2, 1, 1)
    avg = backend.avgpool2d_forward(x, 2, 1, 1)
    return (y, argmax.astype(np.float64), backend.maxpool2d_backward(y, argmax, x.shape), avg,
            backend.avgpool2d_backward(avg, x.shape, 2, 1, 1))
# ----------------------------------------------------------------- recurrence
# (N, T, F, H): several sizes, one step, one sequence, and a larger one; with and
# without an initial state. The backward takes each backend's own forward cache.
# RECURRENT_SPLIT_SHAPE has N T H H >= 2^21 multiply-adds of per-step GEMMs: the
# C kernels split its batch over the threads (ranges of 4 and 5 on two; the
# Numba ones from a higher threshold, see test_recurrent_split.py).
RECURRENT_SPLIT_SHAPE = (9, 32, 5, 96)
# RECURRENT_BLOCKS_SHAPE's per-step GEMMs pass 10^6 multiply-adds (the LSTM's
# 32 x 96 x 384 on each of two threads, 64 x 96 x 384 on one; dW_h's 96 x 64 x
# 192 per thread): the kernels issue them in blocks of columns (gemm_tiles)
RECURRENT_BLOCKS_SHAPE = (64, 3, 5, 96)
RECURRENT_SHAPES = [(4, 7, 3, 5), (1, 1, 2, 3), (1, 9, 4, 6), (3, 1, 5, 2), (16, 25, 12, 32),
                    RECURRENT_SPLIT_SHAPE, RECURRENT_BLOCKS_SHAPE]


def _as_accurate_as_the_reference(run, backend, dtype):
    """run(backend, dtype)'s outputs, in float32 each as Terms whose size lets a
    backend differ from the float32 reference by twice the reference's own
    largest error against the float64 result (on top of the usual tolerance).
    A gradient through time is a chain of GEMMs whose float32 sums of G H terms
    round by more than the catalogue's floor (1e-2 of the output's largest value
    at rtol 1e-5) in whatever order they are added: the reference's own dh0 of
    lstm 64x3x5x96 is 6.6e-7 of its largest value from the float64 result. A
    backend adding its sums in blocks (small GEMMs without packing) is judged
    by the accuracy the reference itself has, not by the reference's order."""
    outputs = run(backend, dtype)
    if np.dtype(dtype) != np.float32:
        return outputs
    sizes = _reference_sizes.get(run)
    if sizes is None:  # the reference's runs, once per entry
        reference = get_backend("numpy")
        rtol = RTOL[np.dtype(np.float32)]
        sizes = _reference_sizes[run] = [
            np.abs(r32.astype(np.float64)) + 2 * reference_error(r32, r64) / rtol
            for r32, r64 in zip(run(reference, np.float32), run(reference, np.float64))]
    return tuple(Terms(value, size) for value, size in zip(outputs, sizes))


_reference_sizes = {}  # run -> the sizes _as_accurate_as_the_reference gives its outputs


def _recurrent_weights(kind, f, h, dtype):
    g = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    kw = {"W_x": rand((f, g * h), dtype, 81, f ** -0.5), "W_h": rand((h, g * h), dtype, 82, h ** -0.5)}
    if kind == "gru":
        kw.update(b_x=rand((g * h,), dtype, 83, 0.5), b_h=rand((g * h,), dtype, 84, 0.5))
    else:
        kw["b"] = rand((g * h,), dtype, 83, 0.5)
    return kw


for kind in ("rnn", "lstm", "gru"):
    for n, t, f, h in RECURRENT_SHAPES:
        for state in (True, False):
            for act in (("tanh", "relu") if kind == "rnn" else ("tanh",)):
                case = f"{act + '-' if kind == 'rnn' else ''}{n}x{t}x{f}x{h}{'' if state else '-no-h0'}"

                def outputs(backend, dtype, kind=kind, n=n, t=t, f=f, h=h, state=state, act=act):
                    x = rand((n, t, f), dtype, 85)
                    kw = _recurrent_weights(kind, f, h, dtype)
                    kw["h0"] = rand((n, h), dtype, 86) if state else None
                    if kind == "lstm":
                        kw["c0"] = rand((n, h), dtype, 87) if state else None
                    if kind == "rnn":
                        kw["activation"] = act
                    hs, cache = getattr(backend, f"{kind}_forward")(x, **kw)
                    dhs = rand((n, t, h), dtype, 88)
                    grads = getattr(backend, f"{kind}_backward")(dhs, cache)
                    # the cache's arrays beyond the inputs (states, gates) too
                    return (hs, *[c for c in cache[1:] if isinstance(c, np.ndarray)], *grads)

                @entry(kind, case)
                def run_recurrent(backend, dtype, outputs=outputs):
                    return _as_accurate_as_the_reference(outputs, backend, dtype)


# the backward of a first layer (need_dx=False): no dx, the other gradients as
# with it; a small shape and the one the C kernels split
for kind in ("rnn", "lstm", "gru"):
    for n, t, f, h in [(4, 7, 3, 5), RECURRENT_SPLIT_SHAPE]:
        def no_dx_outputs(backend, dtype, kind=kind, n=n, t=t, f=f, h=h):
            x = rand((n, t, f), dtype, 85)
            kw = _recurrent_weights(kind, f, h, dtype)
            kw["h0"] = rand((n, h), dtype, 86)
            if kind == "lstm":
                kw["c0"] = rand((n, h), dtype, 87)
            hs, cache = getattr(backend, f"{kind}_forward")(x, **kw)
            dx, *grads = getattr(backend, f"{kind}_backward")(rand((n, t, h), dtype, 88), cache,
                                                               need_dx=False)
            assert dx is None
            return (hs, *grads)

        @entry(kind, f"no-dx-{n}x{t}x{f}x{h}")
        def run_recurrent_no_dx(backend, dtype, outputs=no_dx_outputs):
            return _as_accurate_as_the_reference(outputs, backend, dtype)


# the LSTM keeping its last state only (return_sequences False: hs (N, 1, H)) and
# its backward from that state's gradient alone (dhs (N, 1, H)), the first layer's
# too; its shapes, one step and none (hs: h0) among them
for n, t, f, h in RECURRENT_SHAPES + [(3, 0, 2, 4)]:
    for need_dx in (True, False):
        def last_state_outputs(backend, dtype, n=n, t=t, f=f, h=h, need_dx=need_dx):
            x = rand((n, t, f), dtype, 85)
            kw = _recurrent_weights("lstm", f, h, dtype)
            hs, cache = backend.lstm_forward(x, rand((n, h), dtype, 86), rand((n, h), dtype, 87),
                                             return_sequences=False, **kw)
            assert hs.shape == (n, 1, h)
            grads = backend.lstm_backward(rand((n, 1, h), dtype, 88), cache, need_dx=need_dx)
            return (hs, cache.cs, cache.gates, *(g for g in grads if g is not None))

        @entry("lstm", f"last-state-{n}x{t}x{f}x{h}{'' if need_dx else '-no-dx'}")
        def run_lstm_last_state(backend, dtype, outputs=last_state_outputs):
            return _as_accurate_as_the_reference(outputs, backend, dtype)


# ------------------------------------------------------------------ embedding
# (N, T, V, D): tokens repeated within and across sequences, one sequence, one
# step, one token, and a larger table; int32 and int64 tokens. dW's rows are
# sums over the steps holding their token, judged against the size of the terms.
EMBEDDING_SHAPES = [(4, 7, 5, 3), (1, 6, 3, 4), (5, 1, 8, 2), (1, 1, 1, 1), (64, 50, 300, 33)]

for n, t, v, d in EMBEDDING_SHAPES:
    for int_type in (np.int32, np.int64):
        case = f"{n}x{t}-{v}x{d}-{np.dtype(int_type).name}"

        @entry("embedding", case)
        def run_embedding(backend, dtype, n=n, t=t, v=v, d=d, int_type=int_type):
            tokens = (np.random.default_rng(89).integers(0, v, (n, t)) % max(v - 1, 1)).astype(int_type)
            W = rand((v, d), dtype, 90)
            dy = rand((n, t, d), dtype, 91)
            magnitude = np.zeros((v, d))
            np.add.at(magnitude, tokens.reshape(-1), np.abs(dy.reshape(-1, d).astype(np.float64)))
            return (backend.embedding_forward(tokens, W),
                    Terms(backend.embedding_backward(dy, tokens, W.shape), magnitude))


# ----------------------------------------------------------------- row gather
# (N, D, B): one row of data, one column, rows repeated (B > N), an empty batch,
# and a batch of 1000 x 300 (2.4 MB in float64: the parallel path of the
# compiled backends); int32 and int64 indices; a strided x (copied first).
GATHER_SHAPES = [(7, 3, 5), (1, 5, 3), (9, 1, 4), (4, 6, 11), (6, 2, 0), (5000, 300, 1000)]

for n, d, b in GATHER_SHAPES:
    for int_type in (np.int32, np.int64):
        for strided in (False, True) if (n, d, b) == (7, 3, 5) else (False,):
            case = f"{n}x{d}-{b}-{np.dtype(int_type).name}" + ("-strided" if strided else "")

            @entry("take_rows", case)
            def run_take_rows(backend, dtype, n=n, d=d, b=b, int_type=int_type, strided=strided):
                x = rand((n, d), dtype, 92)
                index = np.random.default_rng(93).integers(0, n, b).astype(int_type)
                return (backend.take_rows(noncontiguous(x) if strided else x, index),)
