"""Worked examples for the reference backend, computed by hand from the definitions.

Each test writes the arithmetic out (scalar chain rule, update rules as stated in
their papers and in PyTorch's and scikit-learn's documentation) and compares it
with what the kernels produce.
"""

import math

import numpy as np
import pytest

import fastnn

ref = fastnn.get_backend("numpy")


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


# ------------------------------------------------- (a) a tiny network, one step
def test_one_sgd_step_of_a_2_2_1_logistic_network():
    # one sample x = (1, 0.5) with target 1; W shaped (in, out) as scikit-learn's coefs_
    x0, x1, t = 1.0, 0.5, 1.0
    w1 = [[0.1, -0.2], [0.4, 0.3]]  # w1[i][j]: input i -> hidden j
    c1 = [0.05, -0.1]  # hidden biases
    w2 = [0.7, -0.5]  # hidden j -> output
    c2 = 0.2
    lr = 0.5

    # forward, by hand
    z1 = [x0 * w1[0][j] + x1 * w1[1][j] + c1[j] for j in range(2)]  # [0.35, -0.15]
    h = [sigmoid(z) for z in z1]
    z2 = h[0] * w2[0] + h[1] * w2[1] + c2
    o = sigmoid(z2)
    loss = -(t * math.log(o) + (1 - t) * math.log(1 - o))

    # backward, by hand (N = 1, so the mean over samples changes nothing)
    dz2 = o - t  # d loss / d z2 for sigmoid + binary cross-entropy
    dw2 = [dz2 * h[0], dz2 * h[1]]
    dc2 = dz2
    dh = [dz2 * w2[0], dz2 * w2[1]]
    dz1 = [dh[j] * h[j] * (1 - h[j]) for j in range(2)]  # sigmoid' = h (1 - h)
    dw1 = [[x0 * dz1[0], x0 * dz1[1]], [x1 * dz1[0], x1 * dz1[1]]]
    dc1 = dz1

    # one SGD step: p <- p - lr * dp
    new_w1 = [[w1[i][j] - lr * dw1[i][j] for j in range(2)] for i in range(2)]
    new_c1 = [c1[j] - lr * dc1[j] for j in range(2)]
    new_w2 = [w2[j] - lr * dw2[j] for j in range(2)]
    new_c2 = c2 - lr * dc2

    # the same with the kernels
    X = np.array([[x0, x1]])
    W1, b1 = np.array(w1), np.array(c1)
    W2, b2 = np.array(w2).reshape(2, 1), np.array([c2])
    H = ref.dense_forward(X, W1, b1, "logistic")
    Z2 = ref.dense_forward(H, W2, b2, "identity")
    kernel_loss, dZ2 = ref.sigmoid_binary_cross_entropy(Z2, np.array([[t]]))
    dH, dW2, db2 = ref.dense_backward(dZ2, H, W2, Z2, "identity")
    _, dW1, db1 = ref.dense_backward(dH, X, W1, H, "logistic", need_dx=False)
    for p, g in [(W1, dW1), (b1, db1), (W2, dW2), (b2, db2)]:
        ref.sgd_step(p, g, None, lr)

    assert kernel_loss == pytest.approx(loss, rel=1e-14)
    np.testing.assert_allclose(H[0], h, rtol=1e-15)
    np.testing.assert_allclose(W1, new_w1, rtol=1e-14)
    np.testing.assert_allclose(b1, new_c1, rtol=1e-14)
    np.testing.assert_allclose(W2[:, 0], new_w2, rtol=1e-14)
    np.testing.assert_allclose(b2, [new_c2], rtol=1e-14)


# ---------------------------------------------------------- (b) optimizers
P0 = np.array([0.5, -1.2, 2.0])
GRADS = np.array([[0.3, -0.1, 0.8], [-0.2, 0.4, 0.5], [0.1, 0.05, -0.6]])  # one row per step


def run_kernel(step, **state_shapes):
    """Apply `step(p, g, states, t)` for each row of GRADS to a copy of P0; states
    start at zero. Returns the final param."""
    p = P0.copy()
    states = {name: np.zeros(3) for name in state_shapes}
    for t, g in enumerate(GRADS, start=1):
        step(p, g.copy(), states, t)
    return p


SGD_CASES = {
    "plain": dict(momentum=0.0),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "momentum-weight-decay": dict(momentum=0.5, weight_decay=0.1),
}


@pytest.mark.parametrize("case", SGD_CASES)
def test_sgd_by_hand(case):
    kw = SGD_CASES[case]
    lr, mu, wd, nesterov = 0.1, kw["momentum"], kw.get("weight_decay", 0.0), kw.get("nesterov")
    p, buf = P0.copy(), np.zeros(3)
    for g in GRADS:
        g = g + wd * p  # L2 weight decay enters the gradient
        buf = mu * buf + g  # torch's momentum buffer (dampening 0)
        p = p - lr * (g + mu * buf if nesterov else buf)
    got = run_kernel(lambda p, g, s, t: ref.sgd_step(p, g, s["velocity"], lr, **kw), velocity=1)
    np.testing.assert_allclose(got, p, rtol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_lr_in_velocity_is_scikit_learns_rule(nesterov):
    from sklearn.neural_network._stochastic_optimizers import SGDOptimizer

    lr, mu = 0.1, 0.9
    p_hand, velocity = P0.copy(), np.zeros(3)
    p_sk = P0.copy()
    opt = SGDOptimizer([p_sk], learning_rate_init=lr, momentum=mu, nesterov=nesterov)
    for g in GRADS:
        # scikit-learn: velocity = mu velocity - lr g; step = velocity, or with Nesterov
        # mu velocity - lr g taken from the new velocity
        velocity = mu * velocity - lr * g
        p_hand += mu * velocity - lr * g if nesterov else velocity
        opt.update_params([p_sk], [g])
    got = run_kernel(lambda p, g, s, t: ref.sgd_step(p, g, s["velocity"], lr, momentum=mu,
                                                     nesterov=nesterov, lr_in_velocity=True),
                     velocity=1)
    np.testing.assert_allclose(p_sk, p_hand, rtol=1e-14)
    np.testing.assert_allclose(got, p_hand, rtol=1e-14)


def test_adagrad_by_hand():
    lr, eps = 0.1, 1e-10
    p, sum_sq = P0.copy(), np.zeros(3)
    for g in GRADS:
        sum_sq = sum_sq + g * g
        p = p - lr * g / (np.sqrt(sum_sq) + eps)
    got = run_kernel(lambda p, g, s, t: ref.adagrad_step(p, g, s["sum_sq"], lr, eps=eps), sum_sq=1)
    np.testing.assert_allclose(got, p, rtol=1e-14)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.8])
def test_rmsprop_by_hand(centered, momentum):
    lr, alpha, eps = 0.01, 0.9, 1e-8
    p, sq, gavg, buf = P0.copy(), np.zeros(3), np.zeros(3), np.zeros(3)
    for g in GRADS:
        sq = alpha * sq + (1 - alpha) * g * g
        if centered:  # subtract the squared running mean: a variance estimate
            gavg = alpha * gavg + (1 - alpha) * g
            denom = np.sqrt(sq - gavg**2) + eps
        else:
            denom = np.sqrt(sq) + eps
        if momentum:
            buf = momentum * buf + g / denom
            p = p - lr * buf
        else:
            p = p - lr * g / denom

    def step(p, g, s, t):
        ref.rmsprop_step(p, g, s["square_avg"], lr, alpha=alpha, eps=eps, momentum=momentum,
                         momentum_buf=s["buf"], centered=centered, grad_avg=s["grad_avg"])

    got = run_kernel(step, square_avg=1, buf=1, grad_avg=1)
    np.testing.assert_allclose(got, p, rtol=1e-14)


def test_adadelta_by_hand():
    lr, rho, eps = 1.0, 0.9, 1e-6
    p, sq, acc = P0.copy(), np.zeros(3), np.zeros(3)
    for g in GRADS:
        sq = rho * sq + (1 - rho) * g * g
        # the step is g scaled by RMS[previous steps] / RMS[gradients]
        delta = np.sqrt(acc + eps) / np.sqrt(sq + eps) * g
        acc = rho * acc + (1 - rho) * delta * delta
        p = p - lr * delta
    got = run_kernel(lambda p, g, s, t: ref.adadelta_step(p, g, s["sq"], s["acc"], lr, rho=rho,
                                                          eps=eps), sq=1, acc=1)
    np.testing.assert_allclose(got, p, rtol=1e-14)


ADAM_CASES = {
    "plain": dict(),
    "l2": dict(weight_decay=0.1),
    "adamw": dict(weight_decay=0.1, decoupled=True),
    "amsgrad": dict(amsgrad=True),
}


@pytest.mark.parametrize("case", ADAM_CASES)
def test_adam_by_hand(case):
    kw = ADAM_CASES[case]
    lr, b1, b2, eps = 0.05, 0.9, 0.99, 1e-8
    wd = kw.get("weight_decay", 0.0)
    p, m, v, v_max = P0.copy(), np.zeros(3), np.zeros(3), np.zeros(3)
    for t, g in enumerate(GRADS, start=1):
        if kw.get("decoupled"):
            p = p - lr * wd * p  # AdamW: decay the weights, not the gradient
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v)
        m_hat = m / (1 - b1**t)  # bias corrections of the zero-initialised moments
        v_hat = (v_max if kw.get("amsgrad") else v) / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)

    def step(p, g, s, t):
        ref.adam_step(p, g, s["m"], s["v"], t, lr, beta1=b1, beta2=b2, eps=eps, v_max=s["v_max"],
                      **kw)

    got = run_kernel(step, m=1, v=1, v_max=1)
    np.testing.assert_allclose(got, p, rtol=1e-14)


def test_adam_reproduces_scikit_learn():
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer

    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((5, 3)) * np.array([1.0, 1e-6, 1e-9])  # eps matters at the end
    p_sk, p = P0.copy(), P0.copy()
    opt = AdamOptimizer([p_sk], learning_rate_init=lr, beta_1=b1, beta_2=b2, epsilon=eps)
    m, v = np.zeros(3), np.zeros(3)
    for t, g in enumerate(grads, start=1):
        opt.update_params([p_sk], [g])
        # scikit-learn adds eps to sqrt(v) before the bias correction
        ref.adam_step(p, g, m, v, t, lr, beta1=b1, beta2=b2, eps=eps / math.sqrt(1 - b2**t))
    assert not np.allclose(p_sk, P0)
    np.testing.assert_allclose(p, p_sk, rtol=1e-13)


# --------------------------------------------------------- (c) batch norm stats
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_batchnorm_running_statistics_after_two_calls(momentum):
    rng = np.random.default_rng(1)
    x1 = rng.standard_normal((6, 3)) * 2 + 1
    x2 = rng.standard_normal((4, 3)) - 3
    gamma, beta = np.ones(3), np.zeros(3)
    rm, rv = np.zeros(3), np.ones(3)
    ref.batchnorm_forward(x1, gamma, beta, rm, rv, True, momentum=momentum)
    ref.batchnorm_forward(x2, gamma, beta, rm, rv, True, momentum=momentum)

    # running = (1 - momentum) running + momentum batch, with the unbiased variance
    mean_hand, var_hand = np.zeros(3), np.ones(3)
    for xb in (x1, x2):
        n = xb.shape[0]
        mu = xb.sum(axis=0) / n
        unbiased = ((xb - mu) ** 2).sum(axis=0) / (n - 1)
        mean_hand = (1 - momentum) * mean_hand + momentum * mu
        var_hand = (1 - momentum) * var_hand + momentum * unbiased
    np.testing.assert_allclose(rm, mean_hand, rtol=1e-14)
    np.testing.assert_allclose(rv, var_hand, rtol=1e-14)

    # eval mode normalises with them and leaves them alone
    x3 = rng.standard_normal((2, 3))
    y, _ = ref.batchnorm_forward(x3, gamma, beta, rm, rv, False, momentum=momentum)
    np.testing.assert_allclose(y, (x3 - mean_hand) / np.sqrt(var_hand + 1e-5), rtol=1e-14)
    np.testing.assert_allclose(rm, mean_hand, rtol=1e-14)


# ------------------------------------------------------ (d) huge logits, exact
def test_softmax_cross_entropy_huge_logits_exact():
    # lse([1e4, -1e4]) = 1e4 + log(1 + e^-2e4) = 1e4 exactly in float64
    loss, grad = ref.softmax_cross_entropy(np.array([[1e4, -1e4]]), np.array([1]))
    assert loss == 2e4  # lse - x_1 = 1e4 - (-1e4)
    np.testing.assert_array_equal(grad, [[1.0, -1.0]])  # softmax [1, 0] - one-hot [0, 1]

    loss, grad = ref.softmax_cross_entropy(np.array([[1e4, -1e4]]), np.array([0]))
    assert loss == 0.0
    np.testing.assert_array_equal(grad, [[0.0, 0.0]])

    # three equal huge negative logits: softmax 1/3 each, loss log 3. The softmax is
    # exp(x - lse) with x - lse = -log 3 rounded at the spacing of numbers near 1e4
    # (1.8e-12), hence the looser tolerance
    loss, grad = ref.softmax_cross_entropy(np.full((1, 3), -1e4), np.array([2]))
    assert loss == pytest.approx(math.log(3), rel=1e-11)
    np.testing.assert_allclose(grad, [[1 / 3, 1 / 3, -2 / 3]], rtol=1e-11)

    # probability targets: 0.5 * (1e4 - 1e4) + 0.5 * (1e4 + 1e4) = 1e4
    loss, grad = ref.softmax_cross_entropy(np.array([[1e4, -1e4]]), np.array([[0.5, 0.5]]))
    assert loss == 1e4
    np.testing.assert_array_equal(grad, [[0.5, -0.5]])


def test_tiny_binary_loss_keeps_its_relative_precision():
    # a confident right answer: log(1 + e^-40) = e^-40 to 1e-17, not 0
    loss, _ = ref.sigmoid_binary_cross_entropy(np.array([40.0]), np.array([1.0]))
    assert loss == pytest.approx(math.exp(-40), rel=1e-14, abs=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_finite_in_both_dtypes(dtype):
    loss, grad = ref.softmax_cross_entropy(np.array([[1e4, -1e4]], dtype), np.array([1]))
    assert loss == 2e4 and grad.dtype == dtype
    np.testing.assert_array_equal(grad, [[1.0, -1.0]])
    # binary: log(1 + e^1e4) = 1e4 for target 0, 0 for target 1; gradients s(x) - t
    loss, grad = ref.sigmoid_binary_cross_entropy(np.array([1e4, -1e4, 1e4], dtype),
                                                  np.array([0.0, 0.0, 1.0], dtype))
    assert loss == pytest.approx(1e4 / 3, rel=1e-7)
    np.testing.assert_array_equal(grad, np.array([1.0, 0.0, 0.0], dtype) / 3)


# ------------------------------------------------------------ (e) dropout
def test_dropout_keep_frequency():
    n, rate = 1_000_000, 0.3
    for seed in (0, 7, 2**64 - 1):
        kept = ref.dropout_mask((1000, 1000), rate, seed).mean()
        # binomial: standard deviation of the kept fraction sqrt(p (1 - p) / n)
        sigma = math.sqrt(rate * (1 - rate) / n)
        assert abs(kept - (1 - rate)) < 6 * sigma, (seed, kept)


def test_dropout_rate_zero_is_identity():
    x = np.random.default_rng(2).standard_normal((13, 17))
    np.testing.assert_array_equal(ref.dropout_forward(x, 0.0, 5), x)
    np.testing.assert_array_equal(ref.dropout_backward(x, 0.0, 5), x)
    assert ref.dropout_mask(x.shape, 0.0, 5).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_scale_and_mask(dtype):
    rate = 0.25
    x = np.random.default_rng(3).uniform(1, 2, (31, 29)).astype(dtype)  # never 0
    y = ref.dropout_forward(x, rate, 99)
    assert y.dtype == dtype
    keep = ref.dropout_mask(x.shape, rate, 99)
    np.testing.assert_array_equal(y != 0, keep)
    np.testing.assert_allclose(y[keep], x[keep] * dtype(1 / (1 - rate)), rtol=0)  # 4/3 exactly
    assert 0 < keep.sum() < keep.size


def test_dropout_seeds():
    shape, rate = (100, 100), 0.4
    a = ref.dropout_mask(shape, rate, 123)
    np.testing.assert_array_equal(a, ref.dropout_mask(shape, rate, 123))
    b = ref.dropout_mask(shape, rate, 124)
    # independent masks disagree on a fraction 2 p (1 - p) = 0.48 of the elements
    assert abs((a != b).mean() - 2 * rate * (1 - rate)) < 0.05


def test_dropout_mask_is_splitmix64_of_seed_and_index():
    # the documented generator in Python integers: z = seed + (i + 1) * gamma mod 2^64,
    # splitmix64's two multiply-xorshift rounds, keep when the top 53 bits >= rate * 2^53
    mod = 2**64

    def keep(seed, i, rate):
        z = (seed + (i + 1) * 0x9E3779B97F4A7C15) % mod
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % mod
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % mod
        z ^= z >> 31
        return (z >> 11) >= int(rate * 2**53)

    for seed in (0, 12345, 2**64 - 1):
        hand = [keep(seed, i, 0.37) for i in range(500)]
        np.testing.assert_array_equal(ref.dropout_mask((500,), 0.37, seed), hand)


def test_dropout_mask_depends_on_the_flat_index_only():
    rate, seed = 0.5, 77
    flat = ref.dropout_mask((60,), rate, seed)
    np.testing.assert_array_equal(ref.dropout_mask((6, 10), rate, seed), flat.reshape(6, 10))
    np.testing.assert_array_equal(ref.dropout_mask((40,), rate, seed), flat[:40])
    # a strided view is dropped as its contiguous copy
    wide = np.random.default_rng(4).standard_normal((6, 20))
    view = wide[:, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(ref.dropout_forward(view, rate, seed),
                                  ref.dropout_forward(np.ascontiguousarray(view), rate, seed))
    np.testing.assert_array_equal(ref.dropout_forward(view, rate, seed) != 0, flat.reshape(6, 10))


# ---------------------------------------------------------- (f) initialisers
METHODS = ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal", "sklearn"]


def expected_spread(method, fan_in, fan_out, activation=None):
    """('uniform', bound) or ('normal', std) from the method's definition."""
    if method == "glorot_uniform":
        return "uniform", math.sqrt(6 / (fan_in + fan_out))
    if method == "glorot_normal":
        return "normal", math.sqrt(2 / (fan_in + fan_out))
    if method == "he_uniform":
        return "uniform", math.sqrt(6 / fan_in)
    if method == "he_normal":
        return "normal", math.sqrt(2 / fan_in)
    if method == "lecun_normal":
        return "normal", math.sqrt(1 / fan_in)
    factor = 2 if activation == "logistic" else 6  # scikit-learn's MLP
    return "uniform", math.sqrt(factor / (fan_in + fan_out))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", METHODS)
def test_init_shapes_dtypes_bias(method, dtype):
    W, b = ref.init_weights(method, 7, 3, rng=0, dtype=dtype)
    assert W.shape == (7, 3) and b.shape == (3,)
    assert W.dtype == dtype and b.dtype == dtype
    if method == "sklearn":
        assert (b != 0).all()
    else:
        np.testing.assert_array_equal(b, 0)


@pytest.mark.parametrize("activation", ["relu", "logistic"])
@pytest.mark.parametrize("method", METHODS)
def test_init_spread_on_a_large_fan(method, activation):
    fan_in, fan_out = 400, 300
    W, b = ref.init_weights(method, fan_in, fan_out, rng=1, activation=activation)
    kind, spread = expected_spread(method, fan_in, fan_out, activation)
    n = W.size
    if kind == "uniform":
        assert np.abs(W).max() <= spread
        assert np.abs(W).max() > 0.999 * spread  # the whole interval is used
        std = spread / math.sqrt(3)  # standard deviation of U(-a, a)
    else:
        std = spread
    # sample mean and variance within 6 of their standard errors (the variance of
    # a sample variance is at most 2 sigma^4 / n for these two distributions)
    assert abs(W.mean()) < 6 * std / math.sqrt(n)
    assert abs(W.var() / std**2 - 1) < 6 * math.sqrt(2 / n)


def test_init_aliases_and_rng_forms():
    for alias, method in [("xavier_uniform", "glorot_uniform"), ("xavier_normal", "glorot_normal"),
                          ("kaiming_uniform", "he_uniform"), ("kaiming_normal", "he_normal")]:
        np.testing.assert_array_equal(ref.init_weights(alias, 5, 4, rng=3)[0],
                                      ref.init_weights(method, 5, 4, rng=3)[0])
    a = ref.init_weights("he_normal", 5, 4, rng=3)[0]
    np.testing.assert_array_equal(a, ref.init_weights("he_normal", 5, 4, np.random.default_rng(3))[0])
    assert not np.array_equal(a, ref.init_weights("he_normal", 5, 4, rng=4)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["relu", "logistic", "tanh"])
def test_sklearn_init_documented_formula(activation, dtype):
    # scikit-learn's MLP: bound sqrt(f / (fan_in + fan_out)), f = 2 for logistic else 6,
    # W of shape (fan_in, fan_out) drawn first, then b, from one RandomState
    fan_in, fan_out = 6, 5
    bound = math.sqrt((2 if activation == "logistic" else 6) / (fan_in + fan_out))
    rs = np.random.RandomState(42)
    W_hand = rs.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype)
    b_hand = rs.uniform(-bound, bound, fan_out).astype(dtype)
    W, b = ref.init_weights("sklearn", fan_in, fan_out, np.random.RandomState(42), dtype,
                            activation)
    np.testing.assert_array_equal(W, W_hand)
    np.testing.assert_array_equal(b, b_hand)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["relu", "logistic"])
def test_sklearn_init_matches_mlp_init_coef(activation, dtype):
    from sklearn.neural_network import MLPClassifier

    mlp = MLPClassifier(activation=activation)
    if not hasattr(mlp, "_init_coef"):
        pytest.skip("this scikit-learn has no MLPClassifier._init_coef (formula checked above)")
    mlp._random_state = np.random.RandomState(7)
    rs = np.random.RandomState(7)
    for fan_in, fan_out in [(4, 3), (3, 2)]:  # consecutive layers share the RandomState
        W_sk, b_sk = mlp._init_coef(fan_in, fan_out, dtype)
        W, b = ref.init_weights("sklearn", fan_in, fan_out, rs, dtype, activation)
        assert W.dtype == W_sk.dtype == dtype and b.dtype == b_sk.dtype == dtype
        np.testing.assert_array_equal(W, W_sk)
        np.testing.assert_array_equal(b, b_sk)
