"""Output buffers that share memory with an input: every public kernel must give
the result of the same call with a fresh output buffer, bit for bit.

Each case (CASES) is one valid call with its output buffers and the arrays it
reads. For every (output, input) pair the call is repeated with the output
(a) being the input array itself, when shape and dtype allow, and (b) a view
into one buffer with the input, partially overlapping it (before or after it,
by one element or by half the smaller array).

Arrays updated in place (optimizer steps, weight_penalty) are checked the same
way against the array they only read. Two written arrays that share memory
cannot both hold their results: that call is refused with a ValueError.
"""

from typing import Callable, NamedTuple

import numpy as np
import pytest

import fastnn
from fastnn.backends import _checks as chk
from fastnn.backends.reference import ACTIVATIONS, NEEDS_INPUT, BatchNormCache

BACKENDS = fastnn.available_backends()
DTYPES = [np.float32, np.float64]
N, IN, OUT = 6, 5, 9  # samples, input features, outputs (classes, channels)


def rand(shape, dtype, seed, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(dtype)


class Case(NamedTuple):
    """build(dtype, n, n_in, n_out) -> keyword arguments, output buffers included;
    run(backend, kw) -> what the call returns besides the output buffers (losses,
    statistics), as a list; outs: output buffer names; ins: names of the arrays read."""

    name: str
    build: Callable
    run: Callable
    outs: tuple
    ins: tuple


def _act_fwd(act):
    def build(d, n, n_in, n_out):
        return dict(x=rand((n, n_out), d, 1), out=np.empty((n, n_out), d))
    return Case(f"activation_forward-{act}", build,
                lambda B, kw: [B.activation_forward(kw["x"], act, out=kw["out"]) is kw["out"]],
                ("out",), ("x",))


def _act_bwd(act):
    def build(d, n, n_in, n_out):
        x = rand((n, n_out), d, 1)
        y = fastnn.get_backend("numpy").activation_forward(x, act)
        return dict(dy=rand((n, n_out), d, 2), y=y, x=x, out=np.empty((n, n_out), d))

    def run(B, kw):
        x = kw["x"] if act in NEEDS_INPUT else None
        return [B.activation_backward(kw["dy"], kw["y"], act, x=x, out=kw["out"]) is kw["out"]]
    return Case(f"activation_backward-{act}", build, run, ("out",),
                ("dy", "y", "x") if act in NEEDS_INPUT else ("dy", "y"))


def _dense_fwd(act):
    def build(d, n, n_in, n_out):
        return dict(x=rand((n, n_in), d, 1), W=rand((n_in, n_out), d, 2), b=rand(n_out, d, 3),
                    out=np.empty((n, n_out), d), preact=np.empty((n, n_out), d))

    def run(B, kw):
        return [B.dense_forward(kw["x"], kw["W"], kw["b"], act, out=kw["out"], preact=kw["preact"])
                is kw["out"]]
    return Case(f"dense_forward-{act}", build, run, ("out", "preact"), ("x", "W", "b"))


def _dense_bwd(act):
    def build(d, n, n_in, n_out):
        x, W = rand((n, n_in), d, 1), rand((n_in, n_out), d, 2)
        preact = x @ W
        y = fastnn.get_backend("numpy").activation_forward(preact, act)
        kw = dict(dy=rand((n, n_out), d, 3), x=x, W=W, y=y, preact=preact,
                  dx=np.empty((n, n_in), d), dW=np.empty((n_in, n_out), d), db=np.empty(n_out, d))
        if act != "identity":
            kw["dz"] = np.empty((n, n_out), d)
        return kw

    def run(B, kw):
        grads = B.dense_backward(kw["dy"], kw["x"], kw["W"], kw["y"], act, preact=kw["preact"],
                                 dx=kw["dx"], dW=kw["dW"], db=kw["db"], dz=kw.get("dz"))
        return [all(g is kw[k] for g, k in zip(grads, ("dx", "dW", "db")))]
    outs = ("dx", "dW", "db") + (() if act == "identity" else ("dz",))
    ins = ("dy", "x", "W", "y") + (("preact",) if act in NEEDS_INPUT else ())
    return Case(f"dense_backward-{act}", build, run, outs, ins)


def _loss(method, targets, one_d=False, **options):
    """A loss call; targets(d, shape) builds its targets. one_d: (N,) outputs."""
    def build(d, n, n_in, n_out):
        shape = (n,) if one_d else (n, n_out)
        return dict(output=rand(shape, d, 1, -3, 3), targets=targets(d, shape),
                    sample_weight=rand(n, d, 2, 0.5, 2), grad=np.empty(shape, d))

    def run(B, kw):
        loss, grad = getattr(B, method)(kw["output"], kw["targets"], kw["sample_weight"],
                                        grad=kw["grad"], **options)
        return [loss, grad is kw["grad"]]
    name = method + {_labels: "-labels", _probs: "-probs"}.get(targets, "") + ("-1d" if one_d else "")
    return Case(name, build, run, ("grad",), ("output", "targets", "sample_weight"))


def _labels(d, shape):
    return np.arange(shape[0], dtype=np.int64) % 3


def _probs(d, shape):
    p = rand(shape, d, 4, 0.1, 1.0)
    return (p / p.sum(axis=1, keepdims=True)).astype(d)


def _binary(d, shape):
    return rand(shape, d, 4, 0.0, 1.0)


def _signs(d, shape):
    return np.where(rand(shape, d, 4) > 0, 1, -1).astype(d)


def _real(d, shape):
    return rand(shape, d, 4)


def _bn_fwd(training):
    def build(d, n, n_in, n_out):
        return dict(x=rand((n, n_out), d, 1), gamma=rand(n_out, d, 2), beta=rand(n_out, d, 3),
                    running_mean=rand(n_out, d, 4), running_var=rand(n_out, d, 5, 0.5, 2),
                    out=np.empty((n, n_out), d), dy=rand((n, n_out), d, 6))

    def run(B, kw):
        y, cache = B.batchnorm_forward(kw["x"], kw["gamma"], kw["beta"], kw["running_mean"],
                                       kw["running_var"], training, out=kw["out"])
        # the cache must hold the x the forward read, whatever out overwrote
        grads = B.batchnorm_backward(kw["dy"], cache)
        return [y is kw["out"], cache.mean, cache.invstd, kw["running_mean"], kw["running_var"],
                *grads]
    return Case(f"batchnorm_forward-{'training' if training else 'inference'}", build, run,
                ("out",), ("x", "gamma", "beta"))


def _bn_bwd(training):
    def build(d, n, n_in, n_out):
        return dict(dy=rand((n, n_out), d, 1), x=rand((n, n_out), d, 2), mean=rand(n_out, d, 3),
                    invstd=rand(n_out, d, 4, 0.5, 2), gamma=rand(n_out, d, 5),
                    dx=np.empty((n, n_out), d), dgamma=np.empty(n_out, d), dbeta=np.empty(n_out, d))

    def run(B, kw):
        cache = BatchNormCache(kw["x"], kw["mean"], kw["invstd"], kw["gamma"], training)
        grads = B.batchnorm_backward(kw["dy"], cache, dx=kw["dx"], dgamma=kw["dgamma"],
                                     dbeta=kw["dbeta"])
        return [all(g is kw[k] for g, k in zip(grads, ("dx", "dgamma", "dbeta")))]
    return Case(f"batchnorm_backward-{'training' if training else 'inference'}", build, run,
                ("dx", "dgamma", "dbeta"), ("dy", "x", "mean", "invstd", "gamma"))


def _dropout(method):
    def build(d, n, n_in, n_out):
        return dict(x=rand((n, n_out), d, 1), out=np.empty((n, n_out), d))
    return Case(method, build, lambda B, kw: [getattr(B, method)(kw["x"], 0.4, 7, out=kw["out"])
                                              is kw["out"]], ("out",), ("x",))


CASES = (
    [_act_fwd(a) for a in ACTIVATIONS] + [_act_bwd(a) for a in ACTIVATIONS]
    + [_dense_fwd(a) for a in ("identity", "tanh", "gelu", "softmax")]
    + [_dense_bwd(a) for a in ("identity", "relu", "gelu", "softmax")]
    + [_loss("softmax_cross_entropy", _labels), _loss("softmax_cross_entropy", _probs),
       _loss("sigmoid_binary_cross_entropy", _binary),
       _loss("sigmoid_binary_cross_entropy", _binary, one_d=True),
       _loss("squared_error", _real), _loss("squared_error", _real, one_d=True),
       _loss("absolute_error", _real), _loss("huber", _real, delta=0.7),
       _loss("hinge", _signs), _loss("hinge", _signs, one_d=True)]
    + [_bn_fwd(True), _bn_fwd(False), _bn_bwd(True), _bn_bwd(False)]
    + [_dropout("dropout_forward"), _dropout("dropout_backward")]
)


# ------------------------------------------------------------------- aliasing
def _overlapping(a, out, shift):
    """(a', out'): a copy of `a` and an output like `out`, views into one buffer,
    out' starting `shift` bytes after a' (before it when shift < 0)."""
    buf = np.empty(a.nbytes + out.nbytes + abs(shift), np.uint8)
    ia, io = (0, shift) if shift >= 0 else (-shift, 0)
    a2 = buf[ia:ia + a.nbytes].view(a.dtype).reshape(a.shape)
    out2 = buf[io:io + out.nbytes].view(out.dtype).reshape(out.shape)
    a2[...] = a
    assert np.shares_memory(a2, out2) and not a2.flags.owndata
    return a2, out2


def aliasings(case, kw):
    """(label, kw) for every output of the case placed on every input it reads."""
    for o in case.outs:
        for i in case.ins:
            a, out = kw[i], kw[o]
            if a.shape == out.shape and a.dtype == out.dtype:
                alias = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in kw.items()}
                alias[o] = alias[i]
                yield f"{o} is {i}", alias
            step = max(a.itemsize, out.itemsize)
            half = max(step, min(a.nbytes, out.nbytes) // 2 // step * step)
            for shift in sorted({step, half, -step, -half}):
                alias = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in kw.items()}
                alias[i], alias[o] = _overlapping(a, out, shift)
                yield f"{o} overlaps {i} at {shift:+d} bytes", alias


def results(backend, case, kw):
    """What the call returns and writes, copied."""
    extra = case.run(backend, kw)
    return [np.array(r, copy=True) for r in extra] + [kw[o].copy() for o in case.outs]


def mismatches(backend, case, dtype, n=N, n_in=IN, n_out=OUT):
    """Labels of the aliasings whose results differ from the fresh-output call's."""
    kw = case.build(dtype, n, n_in, n_out)
    fresh = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    expected = results(backend, case, fresh)
    bad = []
    for label, alias in aliasings(case, kw):
        try:
            got = results(backend, case, alias)
        except Exception as exc:  # e.g. labels overwritten by the gradient, then read
            bad.append(f"{label} ({type(exc).__name__}: {exc})")
            continue
        if not all(np.array_equal(g, e, equal_nan=True) for g, e in zip(got, expected)):
            bad.append(label)
    return bad


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_aliased_output_gives_the_fresh_output_result(backend, dtype, case):
    bad = mismatches(fastnn.get_backend(backend), case, dtype)
    assert not bad, f"{backend} {case.name} {np.dtype(dtype)}: wrong when " + "; ".join(bad)


def test_unshared_copies_only_what_it_must():
    buf = np.arange(20.0)
    x, out, other = buf[:10], buf[5:15], np.zeros(10)
    assert chk.unshared((other,), x)[0] is x  # no overlap: no copy
    copied = chk.unshared((out,), x)[0]
    assert copied is not x and not np.shares_memory(copied, buf)
    np.testing.assert_array_equal(copied, np.arange(10.0))
    assert chk.unshared((x,), x, in_place_ok=True)[0] is x  # in place: no copy
    assert chk.unshared((buf[:10],), x, in_place_ok=True)[0] is x  # another view of it
    assert chk.unshared((x,), x)[0] is not x
    assert chk.unshared((out,), x, in_place_ok=True)[0] is not x  # partial overlap: copied
    assert chk.unshared((None, out), None, x)[0] is None



# ----------------------------------------------- arrays updated in place (steps)
# step -> (the arrays it writes, call(backend, arrays, read)): the optimizers write
# param and their states and read grad; weight_penalty writes grad and reads param
STEPS = {
    "sgd_step": (("param", "velocity"), lambda B, a, r: B.sgd_step(
        a["param"], r, a["velocity"], 0.1, momentum=0.9, weight_decay=0.01)),
    "adagrad_step": (("param", "sum_sq"), lambda B, a, r: B.adagrad_step(
        a["param"], r, a["sum_sq"], 0.1, weight_decay=0.01)),
    "rmsprop_step": (("param", "square_avg", "momentum_buf", "grad_avg"), lambda B, a, r: B.rmsprop_step(
        a["param"], r, a["square_avg"], 0.01, momentum=0.9, momentum_buf=a["momentum_buf"],
        centered=True, grad_avg=a["grad_avg"])),
    "adadelta_step": (("param", "square_avg", "acc_delta"), lambda B, a, r: B.adadelta_step(
        a["param"], r, a["square_avg"], a["acc_delta"])),
    "adam_step": (("param", "m", "v", "v_max"), lambda B, a, r: B.adam_step(
        a["param"], r, a["m"], a["v"], 3, 0.01, weight_decay=0.01, amsgrad=True, v_max=a["v_max"])),
    "weight_penalty": (("grad",), lambda B, a, r: B.weight_penalty(r, a["grad"], l2=0.1, l1=0.01)),
}


def _written_read_pairs(dtype):
    """(written, read) arrays of shape (4, 5) that share memory: the same array, and
    views into one buffer one element apart, either way round. Values in [0.1, 1),
    valid for every state (sums of squares included)."""
    buf = rand(20, dtype, 9, 0.1, 1.0).reshape(4, 5)
    yield buf, buf
    for lead, lag in ((0, 1), (1, 0)):
        buf = rand(21, dtype, 9, 0.1, 1.0)
        yield buf[lead:lead + 20].reshape(4, 5), buf[lag:lag + 20].reshape(4, 5)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_read_array_sharing_memory_with_a_written_one(backend, dtype, step):
    """The array a step only reads (grad; param for weight_penalty) is, or overlaps,
    one it writes: the step must act on the values both held before it, as with
    separate arrays."""
    B = fastnn.get_backend(backend)
    names, call = STEPS[step]
    for target in names:
        for written, read in _written_read_pairs(dtype):
            arrays = {k: rand((4, 5), dtype, 3 + i, 0.1, 1.0) for i, k in enumerate(names)}
            fresh = {k: a.copy() for k, a in arrays.items()}
            fresh[target] = written.copy()
            expected = call(B, fresh, read.copy())
            arrays[target] = written
            got = call(B, arrays, read)
            assert got == expected
            for k in names:
                np.testing.assert_array_equal(arrays[k], fresh[k], err_msg=f"{k}, read on {target}")


# ------------------------------------------------ written arrays sharing memory
def _pair(shape_a, shape_b, dtype=np.float64):
    """two arrays in one buffer, the second starting one element after the first"""
    size_a, size_b = int(np.prod(shape_a)), int(np.prod(shape_b))
    buf = rand(size_a + size_b, dtype, 9, 0.1, 1.0)
    return buf[:size_a].reshape(shape_a), buf[1:1 + size_b].reshape(shape_b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_written_arrays_sharing_memory_are_refused(backend):
    """Two arrays a call writes cannot both hold their results: a clear error
    naming both, before any kernel runs."""
    B = fastnn.get_backend(backend)
    d = np.float64
    x, W, dy = rand((N, IN), d, 1), rand((IN, OUT), d, 2), rand((N, OUT), d, 3)
    g, beta = rand(OUT, d, 4, 0.5, 2), rand(OUT, d, 5)

    def refused(names, call):
        with pytest.raises(ValueError, match=f"{names[0]} and {names[1]} must not share memory"):
            call()

    out, preact = _pair((N, OUT), (N, OUT))
    refused(("out", "preact"), lambda: B.dense_forward(x, W, None, "gelu", out=out, preact=preact))
    dW, dz = _pair((IN, OUT), (N, OUT))
    refused(("dW", "dz"), lambda: B.dense_backward(dy, x, W, x @ W, "relu", dW=dW, dz=dz))
    dx, db = _pair((N, IN), (OUT,))
    refused(("dx", "db"), lambda: B.dense_backward(dy, x, W, x @ W, dx=dx, db=db))
    running_mean, out = _pair((OUT,), (N, OUT))
    refused(("out", "running_mean"), lambda: B.batchnorm_forward(
        dy, g, beta, running_mean, np.ones(OUT), True, out=out))
    _, cache = B.batchnorm_forward(dy, g, beta, np.zeros(OUT), np.ones(OUT), True)
    dgamma, dbeta = _pair((OUT,), (OUT,))
    refused(("dgamma", "dbeta"), lambda: B.batchnorm_backward(dy, cache, dgamma=dgamma, dbeta=dbeta))
    m, v = _pair((IN, OUT), (IN, OUT))
    refused(("m", "v"), lambda: B.adam_step(W.copy(), W, m, v, 1, 0.01))
    param, velocity = _pair((IN, OUT), (IN, OUT))
    refused(("param", "velocity"), lambda: B.sgd_step(param, W, velocity, 0.1, momentum=0.9))
