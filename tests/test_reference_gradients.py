"""The reference backend's gradients against central finite differences (float64).

Every differentiable kernel is checked through its public method: the analytic
gradient a kernel returns must equal d f / d input, where f is a scalar built
from the forward kernel (a random projection sum(R * y) when the output is an
array), differentiated numerically one element at a time. Loss values are also
checked against direct formulas.
"""

import numpy as np
import pytest
from scipy import special

import fastnn
from fastnn.backends.reference import (
    ACTIVATIONS,
    ELU_ALPHA,
    LEAKY_RELU_SLOPE,
    SELU_ALPHA,
    SELU_SCALE,
)

ref = fastnn.get_backend("numpy")

H = 1e-6  # central-difference step: truncation ~H^2, rounding ~1e-16 / H
RTOL, ATOL = 1e-6, 1e-8


def numerical_gradient(f, x, h=H):
    """d f / d x by central differences; f() reads x, which is perturbed in place."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = f()
        flat[i] = old - h
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * h)
    return g


def assert_grad(analytic, f, x, what):
    numeric = numerical_gradient(f, x)
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL, err_msg=what)


def rng(seed):
    return np.random.default_rng(seed)


def away_from_zero(shape, seed, low=0.1, high=3.0):
    """Random values with low <= |x| <= high, random signs (no kink within reach of H)."""
    r = rng(seed)
    return r.uniform(low, high, shape) * r.choice([-1.0, 1.0], shape)


# ---------------------------------------------------------------- activations
def activation_input(act, shape, seed):
    if act in ("relu", "leaky_relu", "elu", "selu"):
        return away_from_zero(shape, seed)
    return rng(seed).standard_normal(shape) * 3.0


@pytest.mark.parametrize("shape", [(5, 7), (1, 3), (4, 1)])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_backward(act, shape):
    if act == "softmax" and shape[1] == 1:
        shape = (4, 2)
    x = activation_input(act, shape, 1)
    dy = rng(2).standard_normal(shape)
    y = ref.activation_forward(x, act)
    dx = ref.activation_backward(dy, y, act, x=x.copy())
    # f = <dy, act(x)>: its gradient is the vector-Jacobian product the backward returns
    # (for softmax a full Jacobian, not an elementwise derivative)
    assert_grad(dx, lambda: np.sum(dy * ref.activation_forward(x, act)), x, act)


def test_activation_backward_1d_and_softplus_threshold():
    # elementwise activations take any shape; softplus is linear above its threshold 20
    x = np.array([-25.0, -3.3, 0.7, 19.0, 21.0, 40.0])
    dy = rng(3).standard_normal(x.shape)
    for act in ("softplus", "logistic", "tanh", "gelu"):
        y = ref.activation_forward(x, act)
        dx = ref.activation_backward(dy, y, act, x=x.copy())
        assert_grad(dx, lambda act=act: np.sum(dy * ref.activation_forward(x, act)), x, act)
    # above the threshold softplus is the identity, and so is its backward, exactly
    above = x > 20
    y = ref.activation_forward(x, "softplus")
    np.testing.assert_array_equal(y[above], x[above])
    np.testing.assert_array_equal(ref.activation_backward(dy, y, "softplus")[above], dy[above])


def test_activation_forward_definitions():
    x = away_from_zero((6, 5), 4)
    pos = x > 0
    expect = {
        "identity": x,
        "logistic": 1 / (1 + np.exp(-x)),
        "tanh": np.tanh(x),
        "relu": np.where(pos, x, 0.0),
        "leaky_relu": np.where(pos, x, LEAKY_RELU_SLOPE * x),
        "elu": np.where(pos, x, ELU_ALPHA * (np.exp(x) - 1)),
        "selu": SELU_SCALE * np.where(pos, x, SELU_ALPHA * (np.exp(x) - 1)),
        "gelu": x * special.ndtr(x),
        "softplus": np.log(1 + np.exp(x)),
        "softmax": np.exp(x) / np.exp(x).sum(axis=1, keepdims=True),
    }
    assert set(expect) == set(ACTIVATIONS)
    for act, want in expect.items():
        np.testing.assert_allclose(ref.activation_forward(x, act), want, rtol=1e-13, atol=1e-15,
                                   err_msg=act)


# ---------------------------------------------------------------------- dense
@pytest.mark.parametrize("act", ["identity", "logistic", "tanh", "relu", "gelu", "softmax",
                                 "softplus", "elu"])
def test_dense_backward(act):
    n, n_in, n_out = 5, 3, 4
    x = rng(5).standard_normal((n, n_in))
    W = rng(6).standard_normal((n_in, n_out))
    b = rng(7).standard_normal(n_out)
    dy = rng(8).standard_normal((n, n_out))
    preact = np.empty((n, n_out))
    y = ref.dense_forward(x, W, b, act, preact=preact)
    np.testing.assert_allclose(preact, x @ W + b, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(y, ref.activation_forward(x @ W + b, act), rtol=1e-14, atol=1e-14)
    if act in ("relu", "elu"):
        # the check needs no pre-activation within reach of the kink at 0
        assert np.abs(preact).min() > 1e-3
    dx, dW, db = ref.dense_backward(dy, x, W, y, act, preact=preact)

    def f():
        return np.sum(dy * ref.dense_forward(x, W, b, act))

    assert_grad(dx, f, x, f"{act} dx")
    assert_grad(dW, f, W, f"{act} dW")
    assert_grad(db, f, b, f"{act} db")


def test_dense_backward_no_bias_no_dx():
    x = rng(9).standard_normal((3, 5))
    W = rng(10).standard_normal((5, 2))
    dy = rng(11).standard_normal((3, 2))
    y = ref.dense_forward(x, W, None, "tanh")
    dx, dW, db = ref.dense_backward(dy, x, W, y, "tanh", need_dx=False)
    assert dx is None
    assert_grad(dW, lambda: np.sum(dy * ref.dense_forward(x, W, None, "tanh")), W, "dW")
    # db is the gradient a bias would get, even when the forward had none
    b = np.zeros(2)
    assert_grad(db, lambda: np.sum(dy * ref.dense_forward(x, W, b, "tanh")), b, "db")


# --------------------------------------------------------------------- losses
def weights_or_none(weighted, n, seed):
    return rng(seed).uniform(0.2, 2.0, n) if weighted else None


def mean_over_samples(per_sample, w):
    return np.average(per_sample, weights=w)


@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_labels(weighted):
    n, c = 7, 5
    logits = rng(12).standard_normal((n, c)) * 3
    labels = rng(13).integers(0, c, n)
    w = weights_or_none(weighted, n, 14)
    loss, grad = ref.softmax_cross_entropy(logits, labels, sample_weight=w)
    per_sample = -special.log_softmax(logits, axis=1)[np.arange(n), labels]
    assert loss == pytest.approx(mean_over_samples(per_sample, w), rel=1e-13)
    assert_grad(grad, lambda: ref.softmax_cross_entropy(logits, labels, sample_weight=w)[0],
                logits, "softmax CE labels")


@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_probabilities(weighted):
    n, c = 6, 3
    logits = rng(15).standard_normal((n, c)) * 3
    t = rng(16).random((n, c))
    t /= t.sum(axis=1, keepdims=True)
    w = weights_or_none(weighted, n, 17)
    loss, grad = ref.softmax_cross_entropy(logits, t, sample_weight=w)
    per_sample = -(t * special.log_softmax(logits, axis=1)).sum(axis=1)
    assert loss == pytest.approx(mean_over_samples(per_sample, w), rel=1e-13)
    assert_grad(grad, lambda: ref.softmax_cross_entropy(logits, t, sample_weight=w)[0],
                logits, "softmax CE probabilities")


def test_softmax_cross_entropy_one_hot_equals_labels():
    logits = rng(18).standard_normal((4, 3))
    labels = np.array([2, 0, 1, 2])
    a = ref.softmax_cross_entropy(logits, labels)
    b = ref.softmax_cross_entropy(logits, np.eye(3)[labels])
    assert a[0] == pytest.approx(b[0], rel=1e-14)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-14, atol=1e-16)


def bce_direct(x, t):
    """-t log s(x) - (1 - t) log(1 - s(x)), written with log_expit."""
    return -(t * special.log_expit(x) + (1 - t) * special.log_expit(-x))


@pytest.mark.parametrize("shape,weighted", [((7,), False), ((7,), True), ((5, 3), False),
                                            ((5, 3), True)])
def test_sigmoid_binary_cross_entropy(shape, weighted):
    logits = rng(19).standard_normal(shape) * 3
    t = (rng(20).random(shape) > 0.5).astype(float)  # multilabel when 2-D
    t.flat[0] = 0.3  # soft targets are allowed too
    w = weights_or_none(weighted, shape[0], 21)
    loss, grad = ref.sigmoid_binary_cross_entropy(logits, t, sample_weight=w)
    per_elem = bce_direct(logits, t)
    per_sample = per_elem.sum(axis=1) if per_elem.ndim == 2 else per_elem
    assert loss == pytest.approx(mean_over_samples(per_sample, w), rel=1e-13)
    assert_grad(grad, lambda: ref.sigmoid_binary_cross_entropy(logits, t, sample_weight=w)[0],
                logits, "bce")


def regression_case(shape, seed, low=0.1):
    """pred and targets whose residuals satisfy |pred - targets| >= low."""
    t = rng(seed).standard_normal(shape)
    return t + away_from_zero(shape, seed + 1, low=low, high=2.5), t


@pytest.mark.parametrize("shape,weighted", [((6,), False), ((5, 3), False), ((5, 3), True)])
def test_squared_error(shape, weighted):
    pred, t = regression_case(shape, 22)
    w = weights_or_none(weighted, shape[0], 24)
    loss, grad = ref.squared_error(pred, t, sample_weight=w)
    per_elem = 0.5 * (pred - t) ** 2
    per_sample = per_elem.sum(axis=1) if per_elem.ndim == 2 else per_elem
    assert loss == pytest.approx(mean_over_samples(per_sample, w), rel=1e-13)
    assert_grad(grad, lambda: ref.squared_error(pred, t, sample_weight=w)[0], pred, "squared")


@pytest.mark.parametrize("shape,weighted", [((6,), False), ((5, 3), False), ((5, 3), True)])
def test_absolute_error(shape, weighted):
    pred, t = regression_case(shape, 25)
    w = weights_or_none(weighted, shape[0], 27)
    loss, grad = ref.absolute_error(pred, t, sample_weight=w)
    per_elem = np.abs(pred - t)
    per_sample = per_elem.sum(axis=1) if per_elem.ndim == 2 else per_elem
    assert loss == pytest.approx(mean_over_samples(per_sample, w), rel=1e-13)
    assert_grad(grad, lambda: ref.absolute_error(pred, t, sample_weight=w)[0], pred, "absolute")


def test_absolute_error_zero_residual_gradient_is_zero():
    _, grad = ref.absolute_error(np.array([1.0, 2.0]), np.array([1.0, 3.0]))
    np.testing.assert_array_equal(grad, [0.0, -0.5])


@pytest.mark.parametrize("delta", [1.0, 0.7])
@pytest.mark.parametrize("weighted", [False, True])
def test_huber_both_regimes(delta, weighted):
    pred, t = regression_case((6, 4), 28, low=0.05)
    d = pred - t
    # residuals near +-delta would straddle the switch between regimes
    d[np.abs(np.abs(d) - delta) < 1e-2] += 0.05
    pred = t + d
    small = np.abs(d) < delta
    assert small.any() and (~small).any(), "both regimes must be exercised"
    w = weights_or_none(weighted, 6, 30)
    loss, grad = ref.huber(pred, t, sample_weight=w, delta=delta)
    per_elem = np.where(small, 0.5 * d**2, delta * (np.abs(d) - 0.5 * delta))
    assert loss == pytest.approx(mean_over_samples(per_elem.sum(axis=1), w), rel=1e-13)
    assert_grad(grad, lambda: ref.huber(pred, t, sample_weight=w, delta=delta)[0], pred, "huber")


@pytest.mark.parametrize("shape,weighted", [((8,), False), ((6, 3), True)])
def test_hinge(shape, weighted):
    t = np.where(rng(31).random(shape) > 0.5, 1.0, -1.0)
    margin = away_from_zero(shape, 32, low=0.1, high=2.0)  # 1 - t s, away from the kink
    s = t * (1 - margin)
    w = weights_or_none(weighted, shape[0], 33)
    loss, grad = ref.hinge(s, t, sample_weight=w)
    per_elem = np.maximum(0, 1 - t * s)
    per_sample = per_elem.sum(axis=1) if per_elem.ndim == 2 else per_elem
    assert loss == pytest.approx(mean_over_samples(per_sample, w), rel=1e-13)
    assert_grad(grad, lambda: ref.hinge(s, t, sample_weight=w)[0], s, "hinge")


# ------------------------------------------------------------- normalisation
def batchnorm_case(n, c, seed):
    x = rng(seed).standard_normal((n, c)) * 2 + 1
    gamma = rng(seed + 1).standard_normal(c)
    beta = rng(seed + 2).standard_normal(c)
    running_mean = rng(seed + 3).standard_normal(c)
    running_var = rng(seed + 4).uniform(0.5, 2.0, c)
    return x, gamma, beta, running_mean, running_var


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("n,c", [(5, 3), (2, 1), (9, 4)])
def test_batchnorm_backward(training, n, c):
    x, gamma, beta, rm, rv = batchnorm_case(n, c, 34)
    R = rng(40).standard_normal((n, c))  # f = sum(R * y), a random projection of y

    def forward():
        # fresh copies: the running statistics are updated in place by every call
        return ref.batchnorm_forward(x, gamma, beta, rm.copy(), rv.copy(), training)

    y, cache = forward()
    mean, var = (x.mean(axis=0), x.var(axis=0)) if training else (rm, rv)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5) * gamma + beta,
                               rtol=1e-12, atol=1e-12)
    dx, dgamma, dbeta = ref.batchnorm_backward(R, cache)

    def f():
        return np.sum(R * forward()[0])

    assert_grad(dx, f, x, "dx")
    assert_grad(dgamma, f, gamma, "dgamma")
    assert_grad(dbeta, f, beta, "dbeta")


# -------------------------------------------------------------------- dropout
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.8])
def test_dropout_backward(rate):
    x = rng(41).standard_normal((7, 9))
    dy = rng(42).standard_normal((7, 9))
    seed = 2024
    y = ref.dropout_forward(x, rate, seed)
    keep = y != 0
    np.testing.assert_array_equal(keep, ref.dropout_mask(x.shape, rate, seed))
    dx = ref.dropout_backward(dy, rate, seed)
    # dropout is linear: its gradient is the forward's mask times 1 / (1 - rate)
    np.testing.assert_allclose(dx, dy * keep / (1 - rate), rtol=1e-15, atol=0)
    assert_grad(dx, lambda: np.sum(dy * ref.dropout_forward(x, rate, seed)), x, "dropout")


# ------------------------------------------------------------- regularisation
@pytest.mark.parametrize("l2,l1", [(0.3, 0.0), (0.0, 0.2), (0.05, 0.01)])
def test_weight_penalty(l2, l1):
    p = away_from_zero((4, 3), 43)  # away from the L1 kink
    start = rng(44).standard_normal((4, 3))
    grad = start.copy()
    value = ref.weight_penalty(p, grad, l2=l2, l1=l1)
    assert value == pytest.approx(0.5 * l2 * np.sum(p**2) + l1 * np.sum(np.abs(p)), rel=1e-14)

    def penalty():
        return ref.weight_penalty(p, np.zeros_like(p), l2=l2, l1=l1)

    # the penalty's gradient is added to what grad held
    assert_grad(grad - start, penalty, p, f"l2={l2} l1={l1}")


def test_weight_penalty_zero_is_no_op():
    p, g = rng(45).standard_normal(5), rng(46).standard_normal(5)
    g0 = g.copy()
    assert ref.weight_penalty(p, g) == 0.0
    np.testing.assert_array_equal(g, g0)


# ---------------------------------------------------------------- convolution
# (N, IH, IW, C, O, KH, KW, stride, padding): odd and even kernels, strides 1 and 2
# (and a pair), paddings 0..2, one image, one channel
CONV_SHAPES = [(2, 5, 6, 3, 2, 3, 3, 1, 1), (1, 6, 5, 1, 3, 2, 2, 2, 0),
               (2, 7, 6, 2, 2, 3, 2, (2, 1), (2, 1))]


@pytest.mark.parametrize("act", ["identity", "tanh", "gelu", "softmax"])
@pytest.mark.parametrize("n, ih, iw, c, o, kh, kw, stride, padding", CONV_SHAPES)
def test_conv2d_backward(n, ih, iw, c, o, kh, kw, stride, padding, act):
    x = rng(40).standard_normal((n, ih, iw, c))
    W = rng(41).standard_normal((kh, kw, c, o)) / np.sqrt(kh * kw * c)
    b = rng(42).standard_normal(o)
    preact = np.empty_like(ref.conv2d_forward(x, W, b, stride, padding))
    y = ref.conv2d_forward(x, W, b, stride, padding, act, preact=preact)
    R = rng(43).standard_normal(y.shape)
    dx, dW, db = ref.conv2d_backward(R, x, W, y, act, stride, padding, preact=preact)

    def f():
        return np.sum(R * ref.conv2d_forward(x, W, b, stride, padding, act))
    assert_grad(dx, f, x, "dx")
    assert_grad(dW, f, W, "dW")
    assert_grad(db, f, b, "db")


POOL_SHAPES = [(2, 6, 6, 3, 2, None, 0), (1, 7, 5, 2, 3, 2, 1), (2, 5, 6, 1, (2, 3), 1, (1, 1))]


@pytest.mark.parametrize("n, ih, iw, c, pool, stride, padding", POOL_SHAPES)
def test_pool2d_backward(n, ih, iw, c, pool, stride, padding):
    # distinct values far apart: no tie within reach of the step H
    x = rng(44).permutation(n * ih * iw * c).reshape(n, ih, iw, c) * 0.01
    y, argmax = ref.maxpool2d_forward(x, pool, stride, padding)
    R = rng(45).standard_normal(y.shape)
    dx = ref.maxpool2d_backward(R, argmax, x.shape)
    assert_grad(dx, lambda: np.sum(R * ref.maxpool2d_forward(x, pool, stride, padding)[0]), x, "max")
    dx = ref.avgpool2d_backward(R, x.shape, pool, stride, padding)
    assert_grad(dx, lambda: np.sum(R * ref.avgpool2d_forward(x, pool, stride, padding)), x, "avg")


def test_maxpool2d_ties_and_padding():
    """Ties go to the first maximum in the window's row-major order; padded cells
    never win, even over -inf; a NaN wins."""
    x = np.array([[1.0, 3.0, 3.0], [3.0, 0.0, -np.inf], [2.0, np.nan, -np.inf]]).reshape(1, 3, 3, 1)
    y, argmax = ref.maxpool2d_forward(x, 2, 1, 0)
    np.testing.assert_array_equal(y[0, :, :, 0], [[3.0, 3.0], [np.nan, np.nan]])
    np.testing.assert_array_equal(argmax[0, :, :, 0], [[1, 1], [7, 7]])
    y, argmax = ref.maxpool2d_forward(np.full((1, 2, 2, 1), -np.inf), 2, 2, 1)
    np.testing.assert_array_equal(argmax[0, :, :, 0], [[0, 1], [2, 3]])
