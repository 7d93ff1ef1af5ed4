"""The numba backend beyond the kernel-by-kernel equivalence: a short training run
equal to the reference's, its serial and parallel paths bit-identical, and its
vectorised exp/tanh/expm1/log1p accurate, special values included."""

import numpy as np
import pytest
from conftest import RTOL, ulps

import fastnn

numba = pytest.importorskip("numba")
from fastnn.backends import _numba_kernels as K  # noqa: E402
from fastnn.backends import numba_backend  # noqa: E402
from fastnn.backends._numba_memory import stream_copy, stream_fence  # noqa: E402

pytestmark = pytest.mark.skipif("numba" not in fastnn.available_backends(),
                                reason="the numba backend did not load")


# ------------------------------------------------------------------ training
def train(backend, dtype, steps=20):
    """A 20x8 -> 16 relu -> 3 softmax classifier trained with Adam through the
    backend's kernels directly; parameters and gradients live in one flat buffer
    each (W1, b1, W2, b2 are views), so each step is a single adam_step call."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((20, 8)).astype(dtype)
    y = rng.integers(0, 3, 20)
    shapes = [(8, 16), (16,), (16, 3), (3,)]
    sizes = [int(np.prod(s)) for s in shapes]
    params, grads = np.zeros(sum(sizes), dtype), np.zeros(sum(sizes), dtype)
    m, v = np.zeros_like(params), np.zeros_like(params)

    def views(buf):
        out, at = [], 0
        for shape, size in zip(shapes, sizes):
            out.append(buf[at:at + size].reshape(shape))
            at += size
        return out

    W1, b1, W2, b2 = views(params)
    gW1, gb1, gW2, gb2 = views(grads)
    init = fastnn.get_backend("numpy")
    W1[...], b1[...] = init.init_weights("sklearn", 8, 16, rng=1, dtype=dtype)
    W2[...], b2[...] = init.init_weights("sklearn", 16, 3, rng=2, dtype=dtype)
    h = np.empty((20, 16), dtype)
    losses = []
    for t in range(1, steps + 1):
        backend.dense_forward(X, W1, b1, "relu", out=h)
        logits = backend.dense_forward(h, W2, b2, "identity")
        loss, dlogits = backend.softmax_cross_entropy(logits, y)
        dh, _, _ = backend.dense_backward(dlogits, h, W2, logits, "identity", dW=gW2, db=gb2)
        backend.dense_backward(dh, X, W1, h, "relu", need_dx=False, dW=gW1, db=gb1)
        backend.adam_step(params, grads, m, v, t, lr=1e-2)
        losses.append(loss)
    return params, np.array(losses)


def test_training_matches_reference(dtype):
    ref_params, ref_losses = train(fastnn.get_backend("numpy"), dtype)
    params, losses = train(fastnn.get_backend("numba"), dtype)
    assert losses[-1] < 0.9 * losses[0]  # it learns
    rtol = RTOL[np.dtype(dtype)]  # observed: ~3e-7 (float32), ~3e-16 (float64)
    np.testing.assert_allclose(losses, ref_losses, rtol=rtol)
    np.testing.assert_allclose(params, ref_params, rtol=rtol, atol=rtol * np.abs(ref_params).max())


# ---------------------------------------------------- serial against parallel
def rand(shape, dtype, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _activations(be, dtype):
    out = []
    for act in ("logistic", "tanh", "relu", "softplus", "softmax"):
        x = rand((300, 257), dtype, 1, 3.0)
        y = be.activation_forward(x, act)
        out += [y, be.activation_backward(rand((300, 257), dtype, 2), y, act, x=x)]
    return out


def _dense(be, dtype):
    x, W, b = rand((300, 70), dtype, 3), rand((70, 257), dtype, 4, 0.1), rand((257,), dtype, 5)
    preact = np.empty((300, 257), dtype)
    y = be.dense_forward(x, W, b, "gelu", preact=preact)
    return [y, preact, *be.dense_backward(rand((300, 257), dtype, 6), x, W, y, "gelu", preact=preact)]


def _losses(be, dtype):
    p, t = rand((300, 257), dtype, 7, 3.0), rand((300, 257), dtype, 8)
    w = np.abs(rand((300,), dtype, 9)) + 0.1
    labels = np.random.default_rng(10).integers(0, 257, 300)
    probs = np.abs(t) / np.abs(t).sum(axis=1, keepdims=True)
    signs = np.where(t > 0, 1, -1).astype(dtype)
    return [*be.softmax_cross_entropy(p, labels, sample_weight=w),
            *be.softmax_cross_entropy(p, probs),
            *be.sigmoid_binary_cross_entropy(p, (t > 0).astype(dtype)),
            *be.squared_error(p, t, sample_weight=w), *be.absolute_error(p, t),
            *be.huber(p, t, delta=0.5), *be.hinge(p, signs)]


def _batchnorm(be, dtype):
    x = rand((300, 257), dtype, 11, 2.0) + 3
    gamma, beta = rand((257,), dtype, 12), rand((257,), dtype, 13)
    rm, rv = np.zeros(257, dtype), np.ones(257, dtype)
    out = []
    for training in (True, False):
        y, cache = be.batchnorm_forward(x, gamma, beta, rm, rv, training)
        out += [y, rm.copy(), rv.copy(), *be.batchnorm_backward(rand((300, 257), dtype, 14), cache)]
    return out


def _elementwise(be, dtype):
    size = 77_777  # odd: blocks of unequal sizes
    p, g = rand((size,), dtype, 15), rand((size,), dtype, 16)
    s1, s2, s3 = (np.abs(rand((size,), dtype, seed, 0.1)) for seed in (17, 18, 19))
    v_max = s2.copy()
    out = [be.dropout_forward(p, 0.3, seed=99), be.weight_penalty(p, g, l2=1e-3, l1=1e-4)]
    be.sgd_step(p, g, s1, lr=0.1, momentum=0.9, nesterov=True)
    be.adam_step(p, g, s2, s3, 3, lr=1e-2, amsgrad=True, v_max=v_max, weight_decay=1e-2)
    be.adagrad_step(p, g, s1, lr=1e-2)
    be.rmsprop_step(p, g, s2, lr=1e-2, momentum=0.9, momentum_buf=s3, centered=True,
                    grad_avg=s1 * 0.1)
    be.adadelta_step(p, g, s2, s3)
    return out + [p, g, s1, s2, s3, v_max]


@pytest.mark.parametrize("group", [_activations, _dense, _losses, _batchnorm, _elementwise])
def test_serial_and_parallel_paths_are_bit_identical(group, dtype, monkeypatch):
    be = fastnn.get_backend("numba")
    for threshold in ("PARALLEL_MIN", "DENSE_PARALLEL_MIN", "BN_PARALLEL_MIN"):
        monkeypatch.setattr(numba_backend, threshold, 1 << 62)  # every kernel serial
    serial = group(be, dtype)
    for threshold in ("PARALLEL_MIN", "DENSE_PARALLEL_MIN", "BN_PARALLEL_MIN"):
        monkeypatch.setattr(numba_backend, threshold, 0)  # every kernel parallel
    parallel = group(be, dtype)
    assert len(serial) == len(parallel)
    for i, (s, p) in enumerate(zip(serial, parallel)):
        np.testing.assert_array_equal(s, p, err_msg=f"{group.__name__} output {i}")


@pytest.mark.parametrize("threads", sorted({1, numba.config.NUMBA_NUM_THREADS}))
def test_optimizer_parts_on_the_range_threads_equal_the_serial_step(threads, dtype, monkeypatch):
    """The optimizers' parallel path runs K.*_range parts on numba_backend's range
    threads (one thread: two parts one after another); every element as the
    serial step's, and a step bound to its arrays (Adam's) as an unbound one."""
    be = fastnn.get_backend("numba")
    runs = []
    for threshold in (1 << 62, 0):  # serial, then the parts
        monkeypatch.setattr(numba_backend, "PARALLEL_MIN", threshold)
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            runs.append(_elementwise(be, dtype)[2:])  # (the optimizers' outputs)
            size = 50_001
            p, g = rand((size,), dtype, 1), rand((size,), dtype, 2)
            m, v = np.zeros(size, dtype), np.zeros(size, dtype)
            bound = be._bind_adam_step(p, g, m, v, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, None)
            for t in (1, 2, 3):
                bound(p, g, m, v, t, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)
            runs[-1] += [p, m, v]
        finally:
            numba.set_num_threads(before)
    for i, (serial, parts) in enumerate(zip(*runs)):
        np.testing.assert_array_equal(serial, parts, err_msg=f"output {i}")


@numba.njit(error_model="numpy")  # not cached, as _apply below
def _stream_rows(dst, src):
    for i in range(dst.shape[0]):
        stream_copy(dst[i], src[i], dst.shape[1])
    stream_fence()


@pytest.mark.parametrize("offset", [0, 1, 3])
def test_stream_copy_copies_rows_at_any_alignment(dtype, offset):
    """Rows shorter than a line, of a line and a part, of many lines; starting
    on a line, or (offset elements into a buffer) anywhere on one."""
    for cols in (1, 5, 16, 17, 31, 100, 1100):
        src = rand((7, cols), dtype, cols)
        dst = np.zeros(7 * cols + offset, dtype)[offset:].reshape(7, cols)
        _stream_rows(dst, src)
        np.testing.assert_array_equal(dst, src)


@pytest.mark.parametrize("shape", [(300, 257), (40, 1100), (9, 5)])
def test_streaming_stores_write_what_plain_stores_write(shape, dtype, monkeypatch):
    """The kernels that write a large output with non-temporal stores
    (_numba_memory.py) write the same bits as with plain ones: rows whose
    length is not a whole number of lines, more than one staged piece per
    row (1100 columns), rows shorter than a line; serial and parallel."""
    be = fastnn.get_backend("numba")
    x = rand(shape, dtype, 11, 2.0) + 3
    gamma, beta, dy = rand(shape[1:], dtype, 12), rand(shape[1:], dtype, 13), rand(shape, dtype, 14)
    runs = []
    for stream, parallel in [(1 << 62, 1 << 62), (0, 1 << 62), (0, 0)]:
        monkeypatch.setattr(numba_backend, "STREAM_BYTES", stream)
        for threshold in ("PARALLEL_MIN", "BN_PARALLEL_MIN"):
            monkeypatch.setattr(numba_backend, threshold, parallel)
        out = []
        for training in (True, False):
            rm, rv = np.zeros(shape[1], dtype), np.ones(shape[1], dtype)
            y, cache = be.batchnorm_forward(x, gamma, beta, rm, rv, training)
            out += [y, rm, rv, *be.batchnorm_backward(dy, cache)]
        runs.append(out)
    for run in runs[1:]:
        for i, (a, b) in enumerate(zip(runs[0], run)):
            np.testing.assert_array_equal(a, b, err_msg=f"output {i}")


def _convolution(be, dtype):
    """conv (im2col, col2im), max and average pooling, forward and backward."""
    x = rand((5, 9, 8, 3), dtype, 20)
    W, b = rand((3, 2, 3, 4), dtype, 21), rand((4,), dtype, 22)
    y = be.conv2d_forward(x, W, b, 2, 1, "relu")
    out = [y, *be.conv2d_backward(rand(y.shape, dtype, 23), x, W, y, "relu", 2, 1)]
    y, argmax = be.maxpool2d_forward(x, 3, 2, 1)
    out += [y, argmax, be.maxpool2d_backward(rand(y.shape, dtype, 24), argmax, x.shape)]
    y = be.avgpool2d_forward(x, 3, 2, 1)
    return out + [y, be.avgpool2d_backward(rand(y.shape, dtype, 25), x.shape, 3, 2, 1)]


def test_convolution_serial_and_parallel_paths_are_bit_identical(dtype, monkeypatch):
    """but the convolution's dW and db (outputs 2 and 3): in parallel each range
    of images sums its own partial (as the C kernels do), added in range order
    after, which rounds otherwise than one range's sum; they agree to rounding."""
    be = fastnn.get_backend("numba")
    runs = []
    for threshold in (1 << 62, 0):  # every kernel serial, then every kernel parallel
        for name in ("PARALLEL_MIN", "DENSE_PARALLEL_MIN"):
            monkeypatch.setattr(numba_backend, name, threshold)
        runs.append(_convolution(be, dtype))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for i, (s, p) in enumerate(zip(*runs)):
        if i in (2, 3):
            np.testing.assert_allclose(s, p, rtol=rtol, atol=rtol * np.abs(s).max())
        else:
            np.testing.assert_array_equal(s, p, err_msg=f"_convolution output {i}")


def test_threshold_splits_real_work():
    """Small calls take the serial path, large ones the parallel one."""
    assert not numba_backend._parallel(64 * 10)
    assert numba_backend._parallel(8192 * 1000)
    assert not numba_backend._parallel(256 * 512, dense=True)


def test_every_kernel_but_the_initialisers_is_jitted():
    """(and the dropout mask, NumPy's: its only use is to show the mask)"""
    owners = fastnn.backends.kernel_owners("numba")
    assert {k for k, owner in owners.items() if owner != "numba"} == {"init_weights", "dropout_mask"}


# ---------------------------------------------------------- vectorised math
# not cached: Numba checks a cache against its own file only, not the kernels it calls
@numba.njit(error_model="numpy")
def _apply(code, x, out):
    for i in range(x.size):
        v = x[i]
        if code == 0:
            out[i] = K.fexp(v)
        elif code == 1:
            out[i] = K.exp_nonpositive(v)
        elif code == 2:
            out[i] = K.tanh64(np.float64(v))
        elif code == 3:
            out[i] = K.expm1_neg64(np.float64(v))
        else:
            out[i] = K.log1p_unit(np.float64(v))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_accuracy_and_special_values(dtype):
    big = 88.7 if dtype == np.float32 else 709.7
    tiny = -87.3 if dtype == np.float32 else -708.3
    x = np.concatenate([np.linspace(tiny, big, 200_001), np.linspace(-1, 1, 20_001)]).astype(dtype)
    out = np.empty_like(x)
    _apply(0, x, out)
    exact = np.exp(x.astype(np.longdouble))
    worst = ulps(out, exact, dtype).max()
    assert worst < (1.5 if dtype == np.float32 else 2.0), worst
    special = np.array([np.nan, np.inf, -np.inf, 1e4, -1e4, 0.0, big + 1, 2 * tiny], dtype)
    _apply(0, special, out[:8])
    with np.errstate(over="ignore", under="ignore"):
        want = np.exp(special)
    np.testing.assert_array_equal(np.isnan(out[:8]), np.isnan(want))
    np.testing.assert_array_equal(out[1:6], want[1:6])
    assert np.isinf(out[6]) and out[7] < np.finfo(dtype).tiny

    neg = -np.abs(x)
    _apply(1, neg, out)
    normal = np.exp(neg.astype(np.float64)) >= np.finfo(dtype).tiny
    exact_neg = np.exp(neg.astype(np.longdouble))
    # float32: the softmax's shorter polynomial (relative error 9.4e-8) adds up to
    # about one ulp to the rounding's half; float64 keeps exp's polynomial
    worst_neg = ulps(out[normal], exact_neg[normal], dtype).max()
    assert worst_neg < (2.5 if dtype == np.float32 else 1.5), worst_neg
    assert (out[~normal] == 0).all()
    _apply(1, np.array([np.nan, -np.inf, -1e4, 0.0], dtype), out[:4])
    assert np.isnan(out[0]) and (out[1:3] == 0).all() and out[3] == 1


def test_float64_helpers_accuracy():
    x = np.concatenate([np.linspace(-30, 30, 100_001), np.geomspace(1e-12, 1, 10_001),
                        -np.geomspace(1e-12, 1, 10_001), [0.0]])
    for code, arg in ((2, x), (3, -np.abs(x))):  # tanh; expm1 of v <= 0
        out = np.empty_like(arg)
        _apply(code, arg, out)
        exact = (np.tanh if code == 2 else np.expm1)(arg.astype(np.longdouble))
        err = np.abs(out - exact) / np.maximum(np.abs(exact), 1e-300)
        assert err.max() < 1e-14, (code, err.max())
    e = np.concatenate([np.geomspace(1e-300, 1, 100_001), [0.0]])
    out = np.empty_like(e)
    _apply(4, e, out)
    exact = np.log1p(e.astype(np.longdouble))
    assert (np.abs(out - exact) <= 1e-15 * np.abs(exact)).all()
    for code, special, want in ((2, [np.nan, np.inf, -np.inf], [np.nan, 1, -1]),
                                (3, [np.nan, -np.inf, -0.0], [np.nan, -1, 0])):
        _apply(code, np.array(special), out[:3])
        np.testing.assert_array_equal(out[:3], want)


# ------------------------------------------------- the kernels' vector width
def test_kernels_compiler_asks_for_512_bit_vectors():
    """WideCompiler (the kernels' compiler, kernel_jit) marks what it lowers with
    prefer-vector-width=512, which LLVM's tuning for Intel's AVX-512 CPUs would
    set to 256; where the CPU has AVX-512, the loop then runs on zmm registers."""
    from fastnn.backends._numba_math import WIDE_VECTORS, WideCompiler
    from fastnn.backends._numba_rnn import gate_tanh

    def scale(x, out):
        for i in range(x.size):
            out[i] = gate_tanh(x[i]) * np.float32(3)

    x = np.linspace(-3, 3, 1000, dtype=np.float32)
    wide, plain = (numba.njit(error_model="numpy", **kw)(scale)
                   for kw in ({"pipeline_class": WideCompiler}, {}))
    outs = []
    for f in (wide, plain):
        out = np.empty_like(x)
        f(x, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])  # (elementwise: no sum reordered)
    sig = wide.signatures[0]
    assert WIDE_VECTORS in wide.inspect_llvm(sig)
    assert WIDE_VECTORS not in plain.inspect_llvm(plain.signatures[0])
    if "avx512f" in cpu_features():
        assert "zmm" in wide.inspect_asm(sig)


def cpu_features():
    import llvmlite.binding as ll
    return {name for name, on in ll.get_host_cpu_features().items() if on}


@pytest.mark.parametrize("activation", ["identity", "relu", "tanh"])
@pytest.mark.parametrize("n, k, c", [(64, 128, 1), (5, 3, 7)])
def test_small_dense_layers_in_one_call_equal_the_matmul_path(dtype, activation, n, k, c, monkeypatch):
    """Dense layers whose GEMMs BLAS runs on one thread take _numba_dense's
    kernels (one jitted call, BLAS through its address); the results equal those
    of np.matmul and the epilogue (the path of larger layers) to rounding."""
    from fastnn.backends import _numba_dense as D

    be = fastnn.get_backend("numba")
    x, W, b, dy = rand((n, k), dtype, 1), rand((k, c), dtype, 2), rand((c,), dtype, 3), rand((n, c), dtype, 4)
    assert D.small(x, W) and not D.small(x.T.copy().T, W)  # (a column-major x takes np.matmul)
    runs = []
    for threshold in (D.SMALL_MADDS, 0):
        monkeypatch.setattr(D, "SMALL_MADDS", threshold)
        out, pre = np.empty((n, c), dtype), np.empty((n, c), dtype)
        be.dense_forward(x, W, b, activation, out=out, preact=pre)
        dx, dW, db = np.empty((n, k), dtype), np.empty((k, c), dtype), np.empty(c, dtype)
        be.dense_backward(dy, x, W, out, activation, pre, need_dx=True, dx=dx, dW=dW, db=db)
        runs.append((out, pre, dx, dW, db))
    for fused, matmul in zip(*runs):
        np.testing.assert_allclose(fused, matmul, rtol=RTOL[np.dtype(dtype)], atol=RTOL[np.dtype(dtype)])
