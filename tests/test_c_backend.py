"""The C backend beyond the kernel-by-kernel catalogue: a short training run that
ends where the reference's does, serial and OpenMP paths that agree, thread
settings that reach the C library, the vectorised exp/log1p over the whole range
of logits, and every kernel the backend claims really running C code."""

import numpy as np
import pytest
from conftest import assert_close, probs_grad_terms

import fastnn
from fastnn.backends.spec import DECLARATIONS

pytestmark = pytest.mark.skipif("c" not in fastnn.available_backends(),
                                reason="the C extension is not built here")

if "c" in fastnn.available_backends():
    from fastnn.backends import c_backend
    from fastnn.backends.c_backend import lib

DTYPES = [np.float32, np.float64]


def rand(shape, dtype, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


@pytest.fixture
def c_threads():
    """Set the C kernels' thread count directly (BLAS untouched); restored after."""
    import fastnn.backends as registry

    yield lib.fastnn_set_num_threads
    lib.fastnn_set_num_threads(registry._num_threads or 0)


# ------------------------------------------------------------ training run
def train(backend, dtype, steps=20):
    """A 2-layer net (20 -> 32 tanh -> batch norm -> dropout -> 6 softmax) trained
    by Adam for `steps` full-batch steps with the kernels called directly.
    Returns the final parameters and the losses."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 20)).astype(dtype)
    labels = rng.integers(0, 6, 96)
    W1, b1 = backend.init_weights("glorot_uniform", 20, 32, rng=1, dtype=dtype)
    W2, b2 = backend.init_weights("he_normal", 32, 6, rng=2, dtype=dtype)
    gamma, beta = np.ones(32, dtype), np.zeros(32, dtype)
    rm, rv = np.zeros(32, dtype), np.ones(32, dtype)
    params = [W1, b1, gamma, beta, W2, b2]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    losses = []
    for t in range(1, steps + 1):
        h = backend.dense_forward(x, W1, b1, "tanh")
        hn, cache = backend.batchnorm_forward(h, gamma, beta, rm, rv, training=True)
        hd = backend.dropout_forward(hn, 0.2, seed=t)
        z = backend.dense_forward(hd, W2, b2)
        loss, dz = backend.softmax_cross_entropy(z, labels)
        dhd, dW2, db2 = backend.dense_backward(dz, hd, W2, z)
        dhn = backend.dropout_backward(dhd, 0.2, seed=t)
        dh, dgamma, dbeta = backend.batchnorm_backward(dhn, cache)
        _, dW1, db1 = backend.dense_backward(dh, x, W1, h, "tanh", need_dx=False)
        grads = [dW1, db1, dgamma, dbeta, dW2, db2]
        backend.weight_penalty(W1, dW1, l2=1e-3)
        for p, g, mp, vp in zip(params, grads, m, v):
            backend.adam_step(p, g, mp, vp, t, lr=1e-2)
        losses.append(loss)
    return params + [rm, rv], losses


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_training_matches_the_reference(dtype):
    expected, expected_losses = train(fastnn.get_backend("numpy"), dtype)
    others = [name for name in fastnn.available_backends() if name != "numpy"]
    # Adam's first steps are about lr * sign(grad): rounding differences in small
    # gradients grow over the steps in the parameters, much less in the loss
    rtol, atol = (2e-3, 1e-5) if dtype == np.float32 else (1e-8, 1e-12)
    loss_rtol = 1e-5 if dtype == np.float32 else 1e-12
    for name in others:
        params, losses = train(fastnn.get_backend(name), dtype)
        assert losses[-1] < 0.8 * losses[0]  # it learns
        np.testing.assert_allclose(losses, expected_losses, rtol=loss_rtol, err_msg=name)
        for i, (p, e) in enumerate(zip(params, expected)):
            np.testing.assert_allclose(p, e, rtol=rtol, atol=atol, err_msg=f"{name} param {i}")


# ------------------------------------------------------ serial vs parallel
def run_large(backend, dtype):
    """Calls large enough for the OpenMP paths (at least 4 times the thresholds
    of csrc/common.h, in elements); returns every output."""
    x = rand((4096, 300), dtype, 1, 3.0)
    W, b = rand((300, 256), dtype, 2, 0.05), rand(256, dtype, 3)
    out = []
    for act in ("relu", "tanh", "softmax", "gelu"):
        preact = np.empty((4096, 256), dtype)
        y = backend.dense_forward(x, W, b, act, preact=preact)
        out += [y, *backend.dense_backward(rand(y.shape, dtype, 4), x, W, y, act, preact=preact)]
    labels = np.arange(4096) % 300
    out += list(backend.softmax_cross_entropy(x, labels))
    out += list(backend.sigmoid_binary_cross_entropy(x, (x > 0).astype(dtype)))
    out += list(backend.huber(x, x[::-1].copy()))
    rm, rv = np.zeros(300, dtype), np.ones(300, dtype)
    y, cache = backend.batchnorm_forward(x, np.ones(300, dtype), np.zeros(300, dtype), rm, rv, True)
    out += [y, rm, rv, *backend.batchnorm_backward(rand(x.shape, dtype, 5), cache)]
    out.append(backend.dropout_forward(x, 0.3, seed=7))
    p, g = rand(1_200_000, dtype, 6), rand(1_200_000, dtype, 7)
    m, v = np.zeros_like(p), np.zeros_like(p)
    out.append(backend.weight_penalty(p, g, l2=1e-2, l1=1e-3))
    backend.adam_step(p, g, m, v, 1, lr=1e-3)
    vel = np.zeros_like(p)
    backend.sgd_step(p, g, vel, lr=1e-2, momentum=0.9, nesterov=True)
    return out + [p, m, v, vel]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_serial_and_parallel_paths_agree(dtype, c_threads):
    c = fastnn.get_backend("c")
    c_threads(1)
    assert lib.fastnn_get_num_threads() == 1
    serial = run_large(c, dtype)
    c_threads(3)  # more threads than cores is allowed, and splits unevenly
    assert lib.fastnn_get_num_threads() == 3
    parallel = run_large(c, dtype)
    for i, (s, p) in enumerate(zip(serial, parallel)):
        # only sums may differ, in the order their per-thread parts are added
        assert_close(p, s, dtype, f"output {i}")


def test_set_num_threads_reaches_c():
    from threadpoolctl import threadpool_limits

    import fastnn.backends as registry

    before = registry._num_threads
    with threadpool_limits(limits=None):  # restores the BLAS limits on exit
        try:
            for n in (1, 2, 5):
                fastnn.set_num_threads(n)
                assert lib.fastnn_get_num_threads() == n
        finally:
            registry._num_threads = before
            lib.fastnn_set_num_threads(before or 0)


# ---------------------------------------------------- vectorised exp, log1p
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_losses_over_the_whole_range_of_logits(dtype):
    """exp and log1p of the C kernels against NumPy's, from logits that underflow
    e^x (to subnormals and to 0) to logits that would overflow it."""
    ref, c = fastnn.get_backend("numpy"), fastnn.get_backend("c")
    big = 800.0 if dtype == np.float64 else 120.0
    logits = np.linspace(-big, big, 40_001).astype(dtype)
    targets = (np.arange(logits.size) % 3 == 0).astype(dtype)
    for backend_out, ref_out in zip(c.sigmoid_binary_cross_entropy(logits, targets),
                                    ref.sigmoid_binary_cross_entropy(logits, targets)):
        assert_close(backend_out, ref_out, dtype, "binary cross-entropy")
    rows = logits[:40_000].reshape(400, 100)  # each row spans a range of 4 big / 400
    labels = np.arange(400) % 100
    for backend_out, ref_out in zip(c.softmax_cross_entropy(rows, labels),
                                    ref.softmax_cross_entropy(rows, labels)):
        assert_close(backend_out, ref_out, dtype, "softmax cross-entropy")
    for act in ("logistic", "tanh", "elu", "softplus"):
        assert_close(c.activation_forward(logits, act), ref.activation_forward(logits, act), dtype, act)


# ------------------------------------------------------------ really C
def one_call_per_kernel(backend, dtype):
    """{kernel: a function making one valid call of it}: the example call of each
    kernel's declaration (fastnn.backends.spec), and of each declared variant."""
    calls = {}
    for name, k in DECLARATIONS.items():
        variants = [None, *k.variants]
        calls[name] = lambda k=k, variants=variants: [
            k.call(backend, k.example(dtype, v, sizes={"N": 8})) for v in variants]
    return calls


class CountingFunctions:
    """Stands in for c_backend's per-dtype table of C functions and counts the calls."""

    def __init__(self, kernels):
        self.kernels, self.calls = kernels, 0
        self.ctype = kernels.ctype

    def __getattr__(self, name):
        fn = getattr(self.kernels, name)

        def counted(*args):
            self.calls += 1
            return fn(*args)
        return counted


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_every_claimed_kernel_runs_c(dtype, monkeypatch):
    owners = fastnn.kernel_owners("c")
    claimed = {k for k, owner in owners.items() if owner == "c"}
    # everything but the initialisers and the dropout mask (NumPy's, its only user)
    assert claimed == set(owners) - {"init_weights", "dropout_mask"}
    c = fastnn.get_backend("c")
    calls = one_call_per_kernel(c, dtype)
    assert set(calls) == set(owners)
    calls = {k: calls[k] for k in claimed}
    counting = CountingFunctions(c_backend.C_FUNCTIONS[np.dtype(dtype)])
    monkeypatch.setitem(c_backend.C_FUNCTIONS, np.dtype(dtype), counting)
    for kernel, call in calls.items():
        before = counting.calls
        call()
        assert counting.calls > before, f"{kernel} ran no C function"


# ------------------------------------------------------------ empty batches
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_empty_batches_match_the_reference(dtype):
    """N = 0 samples: sums over no rows are 0 (not whatever the output buffer
    held), losses are 0, and nothing is read or written out of bounds."""
    ref, c = fastnn.get_backend("numpy"), fastnn.get_backend("c")
    x, W, b = np.empty((0, 4), dtype), rand((4, 3), dtype, 1), rand(3, dtype, 2)
    no_labels = np.zeros(0, np.int64)
    for backend_out, ref_out in [
        (c.dense_backward(x @ W, x, W, x @ W, "tanh", db=np.full(3, 7, dtype)),
         ref.dense_backward(x @ W, x, W, x @ W, "tanh")),
        (c.dense_backward(x @ W, x, W, x @ W, db=np.full(3, 7, dtype)),
         ref.dense_backward(x @ W, x, W, x @ W)),
        ((c.dense_forward(x, W, b, "softmax"),), (ref.dense_forward(x, W, b, "softmax"),)),
        (c.softmax_cross_entropy(x, no_labels), ref.softmax_cross_entropy(x, no_labels)),
        (c.sigmoid_binary_cross_entropy(x, x), ref.sigmoid_binary_cross_entropy(x, x)),
        (c.hinge(x, x), ref.hinge(x, x)),
    ]:
        for a, e in zip(backend_out, ref_out):
            assert_close(a, e, dtype)
    stats = (np.ones(4, dtype), np.zeros(4, dtype), np.zeros(4, dtype), np.ones(4, dtype), False)
    _, cache = c.batchnorm_forward(x, *stats)
    dx, dgamma, dbeta = c.batchnorm_backward(x, cache, dgamma=np.full(4, 7, dtype),
                                             dbeta=np.full(4, 7, dtype))
    assert dx.shape == (0, 4) and not dgamma.any() and not dbeta.any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 1, 3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("targets", ["labels", "probabilities"])
@pytest.mark.parametrize("n, k", [(1601, 657), (150001, 7)])  # > 4 MB in float32; long, short rows
def test_softmax_ce_large_gradient_at_any_alignment(dtype, offset, weighted, targets, n, k):
    """A softmax cross-entropy gradient large enough for streaming stores
    (csrc/losses_impl.h), starting `offset` elements into a buffer and with rows of
    an odd length, so that rows share cache lines: labels at every position of a
    row (in the partial lines at either end too), or probability targets, give the
    reference's loss and gradient, and nothing is written outside. Rows of 7 take
    the short rows' path, by blocks of rows; their probabilities' gradient is
    judged as in test_softmax_ce_probabilities_short_rows."""
    ref, fast = fastnn.get_backend("numpy"), fastnn.get_backend("c")
    logits = 4 * rand((n, k), dtype, 44)
    if targets == "labels":
        t = np.arange(n) * 7 % k
    else:
        t = np.abs(rand((n, k), dtype, 46))
        t /= t.sum(axis=1, keepdims=True)
    w = np.abs(rand(n, dtype, 45)) if weighted else None
    expected_loss, expected = ref.softmax_cross_entropy(logits, t, w)
    buf = np.full(n * k + 8, 9, dtype)
    grad = buf[offset:offset + n * k].reshape(n, k)
    loss, _ = fast.softmax_cross_entropy(logits, t, w, grad=grad)
    assert (buf[:offset] == 9).all() and (buf[offset + n * k:] == 9).all()
    terms = None if targets == "labels" else probs_grad_terms(expected, t, w)
    assert_close(grad, expected, dtype, magnitude=terms)
    assert loss == pytest.approx(expected_loss, rel=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_batchnorm_large_outputs_at_any_alignment(dtype, offset):
    """Outputs of batch norm large enough for non-temporal stores (csrc/batchnorm.c),
    starting `offset` elements into a buffer (not 16-byte aligned) and with rows of
    an odd length: the same values as the reference, nothing written outside."""
    n, c = 1031, 1029  # > 4 MB per array in float32
    ref, fast = fastnn.get_backend("numpy"), fastnn.get_backend("c")
    x, dy = rand((n, c), dtype, 40) + 3.0, rand((n, c), dtype, 41)
    gamma, beta = rand(c, dtype, 42), rand(c, dtype, 43)
    results = []
    for backend in (ref, fast):
        for training in (True, False):
            ybuf, dxbuf = np.full(n * c + 8, 9, dtype), np.full(n * c + 8, 9, dtype)
            y = ybuf[offset:offset + n * c].reshape(n, c)
            dx = dxbuf[offset:offset + n * c].reshape(n, c)
            rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
            _, cache = backend.batchnorm_forward(x, gamma, beta, rm, rv, training, out=y)
            _, dgamma, dbeta = backend.batchnorm_backward(dy, cache, dx=dx)
            for buf in (ybuf, dxbuf):
                assert (buf[:offset] == 9).all() and (buf[offset + n * c:] == 9).all()
            results.append((y, rm, rv, dx, dgamma, dbeta))
    for actual, expected in zip(results[2:], results[:2]):
        for a, e in zip(actual, expected):
            assert_close(a, e, dtype)
