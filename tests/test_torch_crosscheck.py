"""The reference backend against PyTorch (float64), where PyTorch is installed.

Activations, losses and batch norm are compared forward and backward (PyTorch's
gradients from autograd); optimizers over 5 steps with a different gradient each
step. Where PyTorch reduces differently (mean over all elements where fastnn sums
over outputs and averages over samples) the comparison rescales as noted.
"""

import numpy as np
import pytest

import fastnn
from fastnn.backends.reference import ACTIVATIONS

torch = pytest.importorskip("torch")
F = torch.nn.functional

ref = fastnn.get_backend("numpy")
RTOL = 1e-10


def close(actual, expected, what="", rtol=RTOL, scale=None):
    """Relative per element, with a floor of rtol * 1e-2 * scale for values that
    cancel to ~0 (as the equivalence tests judge them); scale defaults to
    max|expected|, the size of the terms that cancelled when given."""
    if isinstance(expected, torch.Tensor):
        expected = expected.detach().numpy()
    expected = np.asarray(expected, dtype=np.float64)
    if scale is None:
        scale = np.abs(expected).max(initial=0.0)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * 1e-2 * scale + 1e-300,
                               err_msg=what)


def tensor(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def rng(seed):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- activations
TORCH_ACTIVATIONS = {
    "identity": lambda x: x,
    "logistic": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,  # negative_slope 0.01
    "elu": F.elu,  # alpha 1
    "selu": F.selu,
    "gelu": F.gelu,  # exact (erf), approximate="none"
    "softplus": F.softplus,  # beta 1, threshold 20
    "softmax": lambda x: F.softmax(x, dim=1),
}


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_matches_torch(act):
    x = rng(1).standard_normal((9, 13)) * 4
    # values around 0 and around softplus's threshold, and large magnitudes
    x[0] = [-1e3, -40.0, -20.5, -19.5, -5.0, -1e-3, 0.5, 1e-3, 5.0, 19.5, 20.5, 40.0, 1e3]
    dy = rng(2).standard_normal(x.shape)
    xt = tensor(x, grad=True)
    yt = TORCH_ACTIVATIONS[act](xt)
    yt.backward(tensor(dy))
    y = ref.activation_forward(x, act)
    dx = ref.activation_backward(dy, y, act, x=x)
    close(y, yt, f"{act} forward")
    close(dx, xt.grad, f"{act} backward")


# --------------------------------------------------------------------- losses
def torch_loss_and_grad(fn, logits):
    """(loss value, d loss / d logits) of fn(logits tensor) by autograd."""
    xt = tensor(logits, grad=True)
    loss = fn(xt)
    loss.backward()
    return loss.item(), xt.grad.numpy()


def weighted_mean(per_sample, w):
    """sum_i w_i l_i / sum_i w_i, what fastnn's sample_weight means."""
    return (per_sample * w).sum() / w.sum()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_cross_entropy_matches_torch(kind, weighted):
    n, c = 11, 6
    logits = rng(3).standard_normal((n, c)) * 5
    logits[0] = [1e4, -1e4, 0, 3, -3, 1]  # huge logits stay exact
    if kind == "labels":
        targets = rng(4).integers(0, c, n)
        t_torch = torch.tensor(targets)
    else:
        targets = rng(4).random((n, c))
        targets /= targets.sum(axis=1, keepdims=True)
        t_torch = tensor(targets)
    w = rng(5).uniform(0.1, 2.0, n) if weighted else None
    loss, grad = ref.softmax_cross_entropy(logits, targets, sample_weight=w)
    if weighted:
        # torch's `weight` is per class (and divides by the summed class weights of the
        # labels); per-sample weights are reduction="none" and our own weighted mean
        def fn(x):
            return weighted_mean(F.cross_entropy(x, t_torch, reduction="none"), tensor(w))
    else:
        def fn(x):
            return F.cross_entropy(x, t_torch)
    want_loss, want_grad = torch_loss_and_grad(fn, logits)
    close(loss, want_loss, "loss")
    close(grad, want_grad, "grad")


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", [(10,), (8, 3)])
def test_bce_with_logits_matches_torch(shape, weighted):
    logits = rng(6).standard_normal(shape) * 4
    logits.flat[:2] = [1e4, -1e4]
    t = (rng(7).random(shape) > 0.5).astype(float)
    t.flat[2] = 0.25
    w = rng(8).uniform(0.1, 2.0, shape[0]) if weighted else None
    loss, grad = ref.sigmoid_binary_cross_entropy(logits, t, sample_weight=w)
    k = 1 if len(shape) == 1 else shape[1]

    def fn(x):
        per_elem = F.binary_cross_entropy_with_logits(x, tensor(t), reduction="none")
        if not weighted:
            # torch averages over all N*K elements; fastnn sums the K outputs: times K
            return per_elem.mean() * k
        per_sample = per_elem.sum(dim=1) if per_elem.ndim == 2 else per_elem
        return weighted_mean(per_sample, tensor(w))

    want_loss, want_grad = torch_loss_and_grad(fn, logits)
    close(loss, want_loss, "loss")
    close(grad, want_grad, "grad")


REGRESSION_LOSSES = {
    # fastnn kernel: (torch loss over all elements with mean reduction, factor)
    # fastnn's squared error is 0.5 * sum over outputs / N = 0.5 * K * MSELoss
    "squared_error": (torch.nn.MSELoss(), 0.5),
    "absolute_error": (torch.nn.L1Loss(), 1.0),
    "huber": (torch.nn.HuberLoss(delta=1.0), 1.0),
    "huber-0.4": (torch.nn.HuberLoss(delta=0.4), 1.0),
}


@pytest.mark.parametrize("shape", [(12,), (9, 4)])
@pytest.mark.parametrize("name", REGRESSION_LOSSES)
def test_regression_loss_matches_torch(name, shape):
    pred = rng(9).standard_normal(shape) * 2
    t = rng(10).standard_normal(shape) * 2
    kernel, kw = name.split("-")[0], {}
    if name == "huber-0.4":
        kw["delta"] = 0.4
    loss, grad = getattr(ref, kernel)(pred, t, **kw)
    torch_loss, factor = REGRESSION_LOSSES[name]
    k = 1 if len(shape) == 1 else shape[1]
    want_loss, want_grad = torch_loss_and_grad(lambda x: torch_loss(x, tensor(t)) * factor * k,
                                               pred)
    close(loss, want_loss, "loss")
    close(grad, want_grad, "grad")


@pytest.mark.parametrize("name", REGRESSION_LOSSES)
def test_weighted_regression_loss_matches_torch(name):
    pred, t = rng(11).standard_normal((7, 3)), rng(12).standard_normal((7, 3))
    w = rng(13).uniform(0.1, 2.0, 7)
    kernel, kw = name.split("-")[0], {}
    if name == "huber-0.4":
        kw["delta"] = 0.4
    loss, grad = getattr(ref, kernel)(pred, t, sample_weight=w, **kw)
    torch_loss, factor = REGRESSION_LOSSES[name]
    unreduced = type(torch_loss)(reduction="none", **kw)

    def fn(x):
        return weighted_mean(unreduced(x, tensor(t)).sum(dim=1) * factor, tensor(w))

    want_loss, want_grad = torch_loss_and_grad(fn, pred)
    close(loss, want_loss, "loss")
    close(grad, want_grad, "grad")


# ------------------------------------------------------------- batch norm
@pytest.mark.parametrize("momentum", [0.1, 0.3])
@pytest.mark.parametrize("n,c", [(2, 3), (17, 5)])
def test_batchnorm1d_matches_torch(n, c, momentum):
    x = rng(14).standard_normal((n, c)) * 3 + 2
    gamma, beta = rng(15).standard_normal(c), rng(16).standard_normal(c)
    rm, rv = rng(17).standard_normal(c), rng(18).uniform(0.5, 2.0, c)
    dy = rng(19).standard_normal((n, c))
    bn = torch.nn.BatchNorm1d(c, eps=1e-5, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(tensor(gamma))
        bn.bias.copy_(tensor(beta))
        bn.running_mean.copy_(tensor(rm))
        bn.running_var.copy_(tensor(rv))

    for training in (True, False):  # train first: eval then uses the updated statistics
        bn.train(training)
        xt = tensor(x, grad=True)
        bn.zero_grad()
        yt = bn(xt)
        yt.backward(tensor(dy))
        y, cache = ref.batchnorm_forward(x, gamma, beta, rm, rv, training, momentum=momentum)
        dx, dgamma, dbeta = ref.batchnorm_backward(dy, cache)
        what = "train" if training else "eval"
        close(y, yt, f"{what} y")
        close(rm, bn.running_mean, f"{what} running_mean")
        close(rv, bn.running_var, f"{what} running_var")
        # with 2 samples the normalised batch is +-1 whatever x is, and dx is nothing but
        # the cancellation of terms of size gamma * invstd * dy (to ~1e-8 of them, left
        # by eps): judge it against those terms
        terms = np.abs(gamma * cache.invstd * dy).max()
        close(dx, xt.grad, f"{what} dx", scale=terms)
        close(dgamma, bn.weight.grad, f"{what} dgamma")
        close(dbeta, bn.bias.grad, f"{what} dbeta")


# ----------------------------------------------------------------- optimizers
P0 = rng(20).standard_normal(23)
GRADS = rng(21).standard_normal((5, 23)) * np.array([1.0, 1e-3, 10.0] * 7 + [1.0, 1.0])
GRADS[2, :4] = 0.0  # a step with some zero gradients


def run_torch(make, **kw):
    p = tensor(P0.copy(), grad=True)
    opt = make([p], foreach=False, **kw)
    for g in GRADS:
        p.grad = tensor(g)
        opt.step()
    return p.detach().numpy()


def run_ours(step, n_states):
    """Apply step(p, g, states, t) for the 5 gradients; states start at zero."""
    p = P0.copy()
    states = [np.zeros_like(p) for _ in range(n_states)]
    for t, g in enumerate(GRADS, start=1):
        step(p, g, states, t)
    assert not np.allclose(p, P0)
    return p


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
                                dict(momentum=0.5, weight_decay=0.05),
                                dict(momentum=0.9, nesterov=True, weight_decay=0.01),
                                dict(weight_decay=0.1)], ids=str)
def test_sgd_matches_torch(kw):
    lr = 0.05
    want = run_torch(torch.optim.SGD, lr=lr, **kw)
    got = run_ours(lambda p, g, s, t: ref.sgd_step(p, g, s[0], lr, **kw), 1)
    close(got, want)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adagrad_matches_torch(weight_decay):
    lr, eps = 0.1, 1e-10
    want = run_torch(torch.optim.Adagrad, lr=lr, eps=eps, weight_decay=weight_decay)
    got = run_ours(lambda p, g, s, t: ref.adagrad_step(p, g, s[0], lr, eps=eps,
                                                       weight_decay=weight_decay), 1)
    close(got, want)


@pytest.mark.parametrize("kw", [dict(), dict(centered=True), dict(momentum=0.9),
                                dict(centered=True, momentum=0.8, weight_decay=0.05)], ids=str)
def test_rmsprop_matches_torch(kw):
    lr, alpha, eps = 0.01, 0.95, 1e-8
    want = run_torch(torch.optim.RMSprop, lr=lr, alpha=alpha, eps=eps, **kw)

    def step(p, g, s, t):
        ref.rmsprop_step(p, g, s[0], lr, alpha=alpha, eps=eps, momentum_buf=s[1], grad_avg=s[2],
                         **kw)

    close(run_ours(step, 3), want)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adadelta_matches_torch(weight_decay):
    lr, rho, eps = 0.5, 0.9, 1e-6
    want = run_torch(torch.optim.Adadelta, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)
    got = run_ours(lambda p, g, s, t: ref.adadelta_step(p, g, s[0], s[1], lr, rho=rho, eps=eps,
                                                        weight_decay=weight_decay), 2)
    close(got, want)


@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.05), dict(amsgrad=True),
                                dict(weight_decay=0.05, amsgrad=True)], ids=str)
def test_adam_matches_torch(kw):
    lr, betas, eps = 0.01, (0.9, 0.99), 1e-8
    want = run_torch(torch.optim.Adam, lr=lr, betas=betas, eps=eps, **kw)

    def step(p, g, s, t):
        ref.adam_step(p, g, s[0], s[1], t, lr, beta1=betas[0], beta2=betas[1], eps=eps,
                      v_max=s[2], **kw)

    close(run_ours(step, 3), want)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_matches_torch(amsgrad):
    lr, betas, eps, wd = 0.01, (0.9, 0.999), 1e-8, 0.1
    want = run_torch(torch.optim.AdamW, lr=lr, betas=betas, eps=eps, weight_decay=wd,
                     amsgrad=amsgrad)

    def step(p, g, s, t):
        ref.adam_step(p, g, s[0], s[1], t, lr, beta1=betas[0], beta2=betas[1], eps=eps,
                      weight_decay=wd, decoupled=True, amsgrad=amsgrad, v_max=s[2])

    close(run_ours(step, 3), want)


# ---------------------------------------------------------------- convolution
def nchw(a, grad=False):
    """A channels-last array as a channels-first tensor."""
    return tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)), grad)


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


# (N, IH, IW, C, O, KH, KW, stride, padding): strides 1 and 2, paddings 0..2, odd and
# even kernels, one image, one channel, 17 channels (no multiple of a vector width)
TORCH_CONV = [(2, 7, 7, 3, 4, 3, 3, 1, 1), (2, 8, 9, 5, 6, 2, 2, 2, 0),
              (1, 6, 5, 1, 3, 3, 3, 2, 2), (3, 9, 8, 17, 8, 3, 2, (2, 1), (1, 0)),
              (2, 5, 6, 2, 3, 4, 4, 1, 2)]


@pytest.mark.parametrize("n, ih, iw, c, o, kh, kw, stride, padding", TORCH_CONV)
def test_conv2d_matches_torch(n, ih, iw, c, o, kh, kw, stride, padding):
    x = rng(60).standard_normal((n, ih, iw, c))
    W = rng(61).standard_normal((kh, kw, c, o))
    b = rng(62).standard_normal(o)
    y = ref.conv2d_forward(x, W, b, stride, padding, "tanh")
    xt, Wt = nchw(x, True), tensor(np.ascontiguousarray(W.transpose(3, 2, 0, 1)), True)
    bt = tensor(b, True)
    yt = torch.tanh(F.conv2d(xt, Wt, bt, stride=stride, padding=padding))
    close(y, nhwc(yt), "y")
    dy = rng(63).standard_normal(y.shape)
    yt.backward(nchw(dy))
    dx, dW, db = ref.conv2d_backward(dy, x, W, y, "tanh", stride, padding)
    close(dx, nhwc(xt.grad), "dx")
    close(dW, Wt.grad.numpy().transpose(2, 3, 1, 0), "dW")
    close(db, bt.grad, "db")


# (N, IH, IW, C, pool, stride, padding)
TORCH_POOL = [(2, 8, 8, 3, 2, None, 0), (2, 7, 9, 5, 3, 2, 1), (1, 6, 6, 1, (2, 3), 1, (1, 1)),
              (3, 9, 10, 17, 3, 3, 0), (2, 6, 7, 4, 4, 2, 2)]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n, ih, iw, c, pool, stride, padding", TORCH_POOL)
def test_pooling_matches_torch(n, ih, iw, c, pool, stride, padding, ties):
    shape = (n, ih, iw, c)
    x = (rng(64).integers(-2, 3, shape).astype(np.float64) if ties
         else rng(64).standard_normal(shape))
    y, argmax = ref.maxpool2d_forward(x, pool, stride, padding)
    xt = nchw(x, True)
    yt, it = F.max_pool2d(xt, pool, stride, padding, return_indices=True)
    close(y, nhwc(yt), "max")
    np.testing.assert_array_equal(argmax, it.numpy().transpose(0, 2, 3, 1))
    dy = rng(65).standard_normal(y.shape)
    yt.backward(nchw(dy))
    close(ref.maxpool2d_backward(dy, argmax, x.shape), nhwc(xt.grad), "max dx")
    y = ref.avgpool2d_forward(x, pool, stride, padding)
    xt = nchw(x, True)
    yt = F.avg_pool2d(xt, pool, stride, padding)  # count_include_pad=True
    close(y, nhwc(yt), "avg")
    yt.backward(nchw(dy))
    close(ref.avgpool2d_backward(dy, x.shape, pool, stride, padding), nhwc(xt.grad), "avg dx")
