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

import functools
from typing import Callable, NamedTuple

import numpy as np
import pytest

import fastnn
from fastnn.backends import _checks as chk
from fastnn.backends.reference import ACTIVATIONS, RNN_ACTIVATIONS
from fastnn.backends.spec import DECLARATIONS, Option, Out, State

BACKENDS = fastnn.available_backends()
DTYPES = [np.float32, np.float64]
N, IN, OUT = 6, 5, 9  # samples, input features, outputs (classes, channels)


def rand(shape, dtype, seed, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(dtype)


class Case(NamedTuple):
    """build(dtype, n, n_in, n_out) -> keyword arguments, output buffers included;
    run(backend, kw) -> what the call returns, as a list; outs: output buffer
    names, and states: arrays updated in place, both compared after the call;
    ins: names of the arrays read ("cache.x": a field of the cache argument)."""

    name: str
    build: Callable
    run: Callable
    outs: tuple
    ins: tuple
    states: tuple = ()
    scratch: tuple = ()  # outs whose contents after the call are unspecified: not compared


def get(kw, name):
    if "." in name:
        arg, field = name.split(".")
        return getattr(kw[arg], field)
    return kw[name]


def put(kw, name, value):
    if "." in name:
        arg, field = name.split(".")
        kw[arg] = kw[arg]._replace(**{field: value})
    else:
        kw[name] = value


def copied(kw):
    """kw with every array copied (inside the cache too)."""
    out = {}
    for k, v in kw.items():
        if isinstance(v, np.ndarray):
            v = v.copy()
        elif hasattr(v, "_fields"):  # a cache (NamedTuple): batch norm's, the recurrent ones
            v = type(v)(*(f.copy() if isinstance(f, np.ndarray) else f for f in v))
        out[k] = v
    return out


def flatten(result):
    if isinstance(result, (tuple, list)):
        return [x for r in result for x in flatten(r)]
    return [result]


def _case(k, label, overrides):
    """The case of kernel declaration k: its example call (fastnn.backends.spec)
    with overrides (a declared variant's name under "variant", other arguments)."""
    overrides = dict(overrides)
    variant = overrides.pop("variant", None)

    def build(d, n, n_in, n_out):
        kw = k.example(d, variant, sizes={"N": n, "I": n_in, "O": n_out, "C": n_out, "K": n_out},
                       seed=1)
        kw.update(overrides)
        return kw
    kw = build(np.float64, N, IN, OUT)
    used = [a for a in k.array_args() if k.active(a, kw) and get(kw, a.display) is not None]
    outs = tuple(a.name for a in used if isinstance(a, Out))
    states = tuple(a.name for a in used if isinstance(a, State))
    ins = tuple(a.display for a in used if a in k.read())
    scratch = tuple(a.name for a in used if isinstance(a, Out) and a.scratch)
    return Case(label, build, lambda B, kw: flatten(k.call(B, kw)), outs, ins, states, scratch)


def _cases():
    """Every declared kernel with output buffers: its example call, each declared
    variant, and, for kernels with an activation, every activation."""
    cases = {}
    for name, k in DECLARATIONS.items():
        if not any(isinstance(a, Out) for a in k.array_args()):
            continue
        cases[name] = _case(k, name, {})
        for variant in k.variants:
            cases[f"{name}-{variant}"] = _case(k, f"{name}-{variant}", {"variant": variant})
        option = next((a for a in k.args if isinstance(a, Option) and a.name == "activation"), None)
        if option is not None:
            for act in RNN_ACTIVATIONS if option.choices == "_RNN_ACTIVATIONS" else ACTIVATIONS:
                cases[f"{name}-{act}"] = _case(k, f"{name}-{act}", {"activation": act})
    return list(cases.values())


CASES = _cases()


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
            a, out = get(kw, i), kw[o]
            if a.shape == out.shape and a.dtype == out.dtype:
                alias = copied(kw)
                alias[o] = get(alias, i)
                yield f"{o} is {i}", alias
            step = max(a.itemsize, out.itemsize)
            half = max(step, min(a.nbytes, out.nbytes) // 2 // step * step)
            for shift in sorted({step, half, -step, -half}):
                alias = copied(kw)
                a2, out2 = _overlapping(a, out, shift)
                put(alias, i, a2)
                alias[o] = out2
                yield f"{o} overlaps {i} at {shift:+d} bytes", alias


def results(backend, case, kw):
    """What the call returns and writes, copied."""
    extra = case.run(backend, kw)
    # a tuple returned (a recurrent kernel's cache) counts by its arrays
    arrays = [a for r in extra for a in (r if isinstance(r, tuple) else (r,))
              if not isinstance(a, str)]
    return ([np.array(a, copy=True) for a in arrays]
            + [kw[o].copy() for o in case.outs + case.states if o not in case.scratch])


def mismatches(backend, case, dtype, n=N, n_in=IN, n_out=OUT):
    """Labels of the aliasings whose results differ from the fresh-output call's."""
    kw = case.build(dtype, n, n_in, n_out)
    fresh = copied(kw)
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
def _steps():
    """kernel -> (the arrays it updates in place, the one array it reads): every
    declared kernel that writes states only (the optimizers write param and their
    states and read grad; weight_penalty writes grad and reads param)."""
    steps = {}
    for name, k in DECLARATIONS.items():
        written = k.written()
        if written and not any(isinstance(a, Out) for a in written):
            roles = k.roles(k.example(np.float64))
            read, = roles["inputs"]
            steps[name] = (roles["states"], read)
    return steps


STEPS = _steps()


def _step_call(step, dtype):
    """call(backend, written arrays, read array) -> the step's return value, with
    the other arguments of the declared example call."""
    k = DECLARATIONS[step]
    names, read_name = STEPS[step]

    def call(backend, arrays, read):
        kw = k.example(dtype)
        kw.update(arrays)
        kw[read_name] = read
        return k.call(backend, kw)
    return call


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
    names, _ = STEPS[step]
    call = _step_call(step, dtype)
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
def _pair(shape_a, shape_b, dtype=np.float64, aligned=False):
    """two arrays in one buffer, the second starting one element after the first
    (aligned: the buffer one of fastnn's, chk.empty, whose views' base is the
    byte buffer it is cut from, not the aligned array itself)"""
    size_a, size_b = int(np.prod(shape_a)), int(np.prod(shape_b))
    buf = rand(size_a + size_b, dtype, 9, 0.1, 1.0)
    if aligned:
        buf, values = chk.empty(buf.shape, dtype), buf
        buf[...] = values
    return buf[:size_a].reshape(shape_a), buf[1:1 + size_b].reshape(shape_b)


@pytest.mark.parametrize("aligned", [False, True], ids=["numpy-buffer", "aligned-buffer"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_written_arrays_sharing_memory_are_refused(backend, aligned):
    """Two arrays a call writes cannot both hold their results: a clear error
    naming both, before any kernel runs."""
    B = fastnn.get_backend(backend)
    d = np.float64
    pair = functools.partial(_pair, aligned=aligned)
    x, W, dy = rand((N, IN), d, 1), rand((IN, OUT), d, 2), rand((N, OUT), d, 3)
    g, beta = rand(OUT, d, 4, 0.5, 2), rand(OUT, d, 5)

    def refused(names, call):
        with pytest.raises(ValueError, match=f"{names[0]} and {names[1]} must not share memory"):
            call()

    out, preact = pair((N, OUT), (N, OUT))
    refused(("out", "preact"), lambda: B.dense_forward(x, W, None, "gelu", out=out, preact=preact))
    dW, dz = pair((IN, OUT), (N, OUT))
    refused(("dW", "dz"), lambda: B.dense_backward(dy, x, W, x @ W, "relu", dW=dW, dz=dz))
    dx, db = pair((N, IN), (OUT,))
    refused(("dx", "db"), lambda: B.dense_backward(dy, x, W, x @ W, dx=dx, db=db))
    running_mean, out = pair((OUT,), (N, OUT))
    refused(("out", "running_mean"), lambda: B.batchnorm_forward(
        dy, g, beta, running_mean, np.ones(OUT), True, out=out))
    _, cache = B.batchnorm_forward(dy, g, beta, np.zeros(OUT), np.ones(OUT), True)
    dgamma, dbeta = pair((OUT,), (OUT,))
    refused(("dgamma", "dbeta"), lambda: B.batchnorm_backward(dy, cache, dgamma=dgamma, dbeta=dbeta))
    m, v = pair((IN, OUT), (IN, OUT))
    refused(("m", "v"), lambda: B.adam_step(W.copy(), W, m, v, 1, 0.01))
    param, velocity = pair((IN, OUT), (IN, OUT))
    refused(("param", "velocity"), lambda: B.sgd_step(param, W, velocity, 0.1, momentum=0.9))


def test_tables_come_from_the_declarations():
    """Every declared kernel with outputs has aliasing cases, every one that only
    updates arrays in place a STEPS entry."""
    with_outputs = {n for n, k in DECLARATIONS.items() if any(isinstance(a, Out) for a in k.array_args())}
    assert {c.name for c in CASES} >= with_outputs
    assert set(STEPS) == {"weight_penalty", "sgd_step", "adagrad_step", "rmsprop_step",
                          "adadelta_step", "adam_step"}
    assert len(CASES) >= 60


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_cut_from_the_aligned_buffer_of_the_output(backend):
    """fastnn's aligned buffers (chk.empty) are views of a byte buffer: an input cut
    from the same one as the output, one element apart, and the output's own
    reshaped view are still read as they were before the call."""
    B = fastnn.get_backend(backend)
    d = np.float64
    W = rand((IN, IN), d, 2)
    buf = chk.empty(N * IN + 1, d)
    buf[...] = rand(N * IN + 1, d, 1)
    x, out = buf[1:].reshape(N, IN), buf[:-1].reshape(N, IN)
    expected = B.dense_forward(x.copy(), W, None, "tanh")
    np.testing.assert_array_equal(B.dense_forward(x, W, None, "tanh", out=out), expected)
    y = chk.empty((N, IN), d)
    y[...] = rand((N, IN), d, 3)
    expected = B.dense_forward(y.copy(), W, None, "tanh")
    np.testing.assert_array_equal(B.dense_forward(y.reshape(N, IN), W, None, "tanh", out=y), expected)
