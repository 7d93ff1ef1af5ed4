"""The recurrent kernels (rnn, lstm, gru) of the reference: gradients through
time against central finite differences, and outputs and every gradient against
torch.nn.RNN / LSTM / GRU (batch_first, weights converted by transposition)
where PyTorch is installed. Every backend against the reference: catalogue.py."""

import numpy as np
import pytest
from conftest import FAST_BACKENDS, RTOL, ulps

import fastnn
from fastnn.testing import reference_error

ref = fastnn.get_backend("numpy")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def rand(shape, seed, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def arguments(kind, n, t, f, h, dtype=np.float64, state=True, seed=0):
    """Keyword arguments of a valid forward call (weights of scale 1 / sqrt(H))."""
    g = GATES[kind]
    kw = {"x": rand((n, t, f), seed), "W_x": rand((f, g * h), seed + 1, max(f, 1) ** -0.5),
          "W_h": rand((h, g * h), seed + 2, h ** -0.5), "h0": rand((n, h), seed + 3) if state else None}
    if kind == "lstm":
        kw["c0"] = rand((n, h), seed + 4) if state else None
    if kind == "gru":
        kw["b_x"], kw["b_h"] = rand(g * h, seed + 5, 0.5), rand(g * h, seed + 6, 0.5)
    else:
        kw["b"] = rand(g * h, seed + 5, 0.5)
    return {k: None if v is None else v.astype(dtype) for k, v in kw.items()}


def forward(backend, kind, kw, variant="tanh"):
    """The forward of `kind`; variant: the rnn's activation, or "last-state" (the
    lstm keeping its last state only: hs (N, 1, H))."""
    extra = ({"activation": variant} if kind == "rnn"
             else {"return_sequences": False} if variant == "last-state" else {})
    return getattr(backend, f"{kind}_forward")(**kw, **extra)


def gradient_names(kind):
    """The names of the backward's results, in order (states: the initial ones)."""
    return {"rnn": ["x", "h0", "W_x", "W_h", "b"],
            "lstm": ["x", "h0", "c0", "W_x", "W_h", "b"],
            "gru": ["x", "h0", "W_x", "W_h", "b_x", "b_h"]}[kind]


# ------------------------------------------------------- finite differences
CASES = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("lstm", "last-state"), ("gru", None)]


@pytest.mark.parametrize("kind, activation", CASES)
@pytest.mark.parametrize("n, t, f, h", [(2, 4, 3, 3), (1, 1, 2, 2), (3, 6, 1, 2)])
def test_gradients_through_time_match_finite_differences(kind, activation, n, t, f, h):
    """sum(R * hs) for a random R: every gradient of the backward against central
    differences of the forward, one element at a time (the lstm's last state
    only: sum(R * h_T))."""
    kw = arguments(kind, n, t, f, h)
    R = rand((n, 1 if activation == "last-state" else t, h), 9)
    if kind == "rnn" and activation == "relu":
        kw["b"] += 1.0  # away from the kink, where a finite difference is meaningless
    hs, cache = forward(ref, kind, kw, activation)
    grads = getattr(ref, f"{kind}_backward")(R, cache)
    assert len(grads) == len(gradient_names(kind))
    for name, grad in zip(gradient_names(kind), grads):
        a = kw[name]
        assert grad.shape == a.shape and grad.dtype == a.dtype, name
        numeric = np.zeros_like(a)
        for i in range(a.size):
            old = a.flat[i]
            a.flat[i] = old + 1e-6
            up = (R * forward(ref, kind, kw, activation)[0]).sum()
            a.flat[i] = old - 1e-6
            down = (R * forward(ref, kind, kw, activation)[0]).sum()
            a.flat[i] = old
            numeric.flat[i] = (up - down) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=f"{kind} d{name}")


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_no_initial_state_is_zeros(kind):
    kw = arguments(kind, 3, 4, 2, 3)
    zero = {k: (np.zeros_like(v) if k in ("h0", "c0") else v) for k, v in kw.items()}
    none = {k: (None if k in ("h0", "c0") else v) for k, v in kw.items()}
    hs0, cache0 = forward(ref, kind, zero)
    hs1, cache1 = forward(ref, kind, none)
    np.testing.assert_array_equal(hs1, hs0)
    dhs = rand(hs0.shape, 3)
    for a, b in zip(getattr(ref, f"{kind}_backward")(dhs, cache1),
                    getattr(ref, f"{kind}_backward")(dhs, cache0)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_a_loss_on_the_last_state_reaches_the_first_input(kind):
    """dhs zero but at the last step: the gradient still reaches x_0 (through time)."""
    kw = arguments(kind, 2, 5, 3, 4)
    hs, cache = forward(ref, kind, kw)
    dhs = np.zeros_like(hs)
    dhs[:, -1] = 1.0
    dx = getattr(ref, f"{kind}_backward")(dhs, cache)[0]
    assert np.abs(dx[:, 0]).min() > 0


# ------------------------------------------------------------------ PyTorch
SHAPES = [(4, 7, 3, 5), (1, 1, 2, 3), (3, 1, 4, 2), (1, 9, 1, 1), (5, 12, 8, 16)]


def _torch_layer(torch, kind, kw, f, h, activation):
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    extra = {"nonlinearity": activation} if kind == "rnn" else {}
    layer = cls(f, h, batch_first=True, dtype=torch.float64, **extra)
    with torch.no_grad():
        layer.weight_ih_l0.copy_(torch.tensor(kw["W_x"].T))
        layer.weight_hh_l0.copy_(torch.tensor(kw["W_h"].T))
        if kind == "gru":
            layer.bias_ih_l0.copy_(torch.tensor(kw["b_x"]))
            layer.bias_hh_l0.copy_(torch.tensor(kw["b_h"]))
        else:  # fastnn's b is the sum of the two: split it any way
            layer.bias_ih_l0.copy_(torch.tensor(0.25 * kw["b"]))
            layer.bias_hh_l0.copy_(torch.tensor(0.75 * kw["b"]))
    return layer


@pytest.mark.parametrize("kind, activation", CASES)
@pytest.mark.parametrize("n, t, f, h", SHAPES)
@pytest.mark.parametrize("state", [True, False], ids=["h0", "no-h0"])
def test_matches_torch(kind, activation, n, t, f, h, state):
    torch = pytest.importorskip("torch")
    kw = arguments(kind, n, t, f, h, state=state, seed=n + t)
    layer = _torch_layer(torch, kind, kw, f, h, activation)
    x = torch.tensor(kw["x"], requires_grad=True)
    states = []
    if state:
        states = [torch.tensor(kw["h0"][None], requires_grad=True)]
        if kind == "lstm":
            states.append(torch.tensor(kw["c0"][None], requires_grad=True))
    hs_torch, _ = layer(x, (tuple(states) if kind == "lstm" else states[0]) if state else None)
    if activation == "last-state":  # a loss on h_T alone: hs and dhs (N, 1, H)
        hs_torch = hs_torch[:, -1:]
    dhs = rand((n, hs_torch.shape[1], h), 17)
    hs_torch.backward(torch.tensor(dhs))

    hs, cache = forward(ref, kind, kw, activation)
    np.testing.assert_allclose(hs, hs_torch.detach().numpy(), rtol=1e-10, atol=1e-13)
    grads = dict(zip(gradient_names(kind), getattr(ref, f"{kind}_backward")(dhs, cache)))
    expected = {"x": x.grad, "W_x": layer.weight_ih_l0.grad.T, "W_h": layer.weight_hh_l0.grad.T}
    if kind == "gru":
        expected.update(b_x=layer.bias_ih_l0.grad, b_h=layer.bias_hh_l0.grad)
    else:
        expected["b"] = layer.bias_ih_l0.grad
        np.testing.assert_allclose(layer.bias_hh_l0.grad, layer.bias_ih_l0.grad, rtol=1e-12)
    if state:
        expected["h0"] = states[0].grad[0]
        if kind == "lstm":
            expected["c0"] = states[1].grad[0]
    for name, e in expected.items():
        e = e.numpy()
        np.testing.assert_allclose(grads[name], e, rtol=1e-9, atol=1e-12 * max(1, np.abs(e).max()),
                                   err_msg=f"{kind} d{name}")


@pytest.mark.parametrize("backend_name", fastnn.available_backends())
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("n, t, f", [(0, 3, 2), (2, 0, 2), (2, 3, 0)])
def test_empty_axes_give_the_reference_results(kind, n, t, f, backend_name):
    """No sample, no step or no feature: every backend returns the reference's
    arrays (zero gradients where nothing flows, the bias alone through the
    gates without features)."""
    kw = arguments(kind, n, t, f, 2, state=False)
    results = []
    for backend in (ref, fastnn.get_backend(backend_name)):
        hs, cache = forward(backend, kind, kw)
        results.append((hs, *getattr(backend, f"{kind}_backward")(np.ones_like(hs), cache)))
    for got, expected in zip(*results):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def float32_backward(backend_name, kind, n, t, f, h):
    """(backend, backward kernel, dhs, cache, its results) of a float32 case."""
    backend = fastnn.get_backend(backend_name)
    kw = {k: None if v is None else v.astype(np.float32)
          for k, v in arguments(kind, n, t, f, h).items()}
    hs, cache = forward(backend, kind, kw)
    dhs = rand(hs.shape, 7).astype(np.float32)
    backward = getattr(backend, f"{kind}_backward")
    return backend, backward, dhs, cache, backward(dhs, cache)


@pytest.mark.parametrize("backend_name", fastnn.available_backends())
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("n, t, f, h", [(3, 4, 2, 5), (9, 32, 5, 96)])  # the second splits the batch
def test_backward_without_dx(kind, n, t, f, h, backend_name):
    """need_dx=False: dx is None, a dx buffer passed is left as it was, and every
    other gradient is the one the backward computes with dx."""
    _, backward, dhs, cache, full = float32_backward(backend_name, kind, n, t, f, h)
    untouched = np.full(cache.x.shape, 5.0, np.float32)
    dx = untouched.copy()
    grads = backward(dhs, cache, need_dx=False, dx=dx)
    assert grads[0] is None and full[0].shape == cache.x.shape
    np.testing.assert_array_equal(dx, untouched)
    for got, expected in zip(grads[1:], full[1:]):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("backend_name", fastnn.available_backends())
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("n, t, f, h", [(3, 4, 2, 5), (9, 32, 5, 96)])  # the second splits the batch
def test_backward_writes_its_gradients_into_given_arrays(kind, n, t, f, h, backend_name):
    """The gradients of the initial states and parameters go into the arrays
    passed for them (a layer's own gradient buffers), the same values as those
    of a call that allocates them, unbound and bound."""
    backend, backward, dhs, cache, fresh = float32_backward(backend_name, kind, n, t, f, h)
    names = gradient_names(kind)[1:]  # after x
    given = {f"d{name}": np.full(g.shape, np.nan, np.float32) for name, g in zip(names, fresh[1:])}
    got = backward(dhs, cache, **given)
    bound = backend.fast.bind(f"{kind}_backward", dhs, cache, **{k: v.copy() for k, v in given.items()})
    for out, g, b, expected in zip(given.values(), got[1:], bound()[1:], fresh[1:]):
        assert g is out
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(b, expected)


@pytest.mark.parametrize("backend_name", fastnn.available_backends())
@pytest.mark.parametrize("n, t, f, h", [(3, 4, 2, 5), (2, 1, 3, 4), (2, 0, 3, 4), (9, 32, 5, 96)])
def test_lstm_last_state_only_is_the_sequence_with_a_loss_on_its_last_step(n, t, f, h, backend_name):
    """return_sequences False: hs (N, 1, H) is the last state of the sequence's
    forward (h0 after no step), the cache's cells and gates are the sequence's,
    and the backward from the last state's gradient alone gives the gradients of
    the sequence's backward with zeros at every other step, bit for bit (the same
    operations; only the zeros are not read)."""
    backend = fastnn.get_backend(backend_name)
    kw = arguments("lstm", n, t, f, h)
    hs, cache = forward(backend, "lstm", kw)
    last, last_cache = forward(backend, "lstm", kw, "last-state")
    assert last.shape == (n, 1, h)
    np.testing.assert_array_equal(last, hs[:, -1:] if t else kw["h0"][:, None])
    np.testing.assert_array_equal(last_cache.cs, cache.cs)
    np.testing.assert_array_equal(last_cache.gates, cache.gates)
    dh = rand((n, 1, h), 5)
    grads = backend.lstm_backward(dh, last_cache)
    if not t:  # no step: h_T is h0
        expected = (np.zeros((n, 0, f)), dh[:, 0], *(np.zeros_like(g) for g in grads[2:]))
    else:
        dhs = np.zeros_like(hs)
        dhs[:, -1:] = dh
        expected = backend.lstm_backward(dhs, cache)
    for name, got, e in zip(gradient_names("lstm"), grads, expected):
        np.testing.assert_array_equal(got, e, err_msg=f"d{name}")


# --------------------------------------------------- the fast float32 gates
# The C and Numba backends compute float32 gates in float32 (csrc/recurrent.c
# gate_sigmoid_f32, gate_tanh_f32; _numba_rnn.gate_sigmoid, gate_tanh: the same
# operations), not in float64 rounded once as the reference's: within these ulp
# of the exact value (measured over every float: at most 2 and 3 ulp from the
# correctly rounded one, with or without FMA).
FLOAT_GATE_ULPS = {"sigmoid": 2.5, "tanh": 3.5}


def _gates(backend, x):
    """The lstm forward's gates (i, f, g, o) of pre-activations x (rows, 16) on
    `backend`: one step, no state, W_x four identities (x W_x is x exactly), W_h
    and b 0."""
    h = x.shape[1]
    W_x = np.tile(np.eye(h, dtype=np.float32), 4)
    zeros = np.zeros((h, 4 * h), np.float32)
    _, cache = backend.lstm_forward(x[:, None], None, None, W_x, zeros, zeros[0])
    return np.split(cache.gates[:, 0], 4, axis=1)


@pytest.mark.parametrize("backend_name", FAST_BACKENDS)
def test_fast_float_gates_within_a_few_ulp(backend_name):
    """Every 997th positive float (subnormals to the largest), their negatives, a
    dense grid of [-30, 30] and the clamps' edges: sigmoid and tanh within
    FLOAT_GATE_ULPS of the exact value; NaN stays NaN."""
    from scipy import special

    backend = fastnn.get_backend(backend_name)
    spaced = np.arange(0, 0x7F800000, 997, dtype=np.uint32).view(np.float32)
    edges = np.array([0.0, 1e-45, 1e-38, 9.0, 20.0, 87.3, 88.8, 103.9, 104.0, 104.1, 3e38],
                     np.float32)
    x = np.concatenate([spaced, -spaced, np.linspace(-30, 30, 600_001, dtype=np.float32), edges,
                        -edges])
    x = np.concatenate([x, np.zeros(-x.size % 16, np.float32)]).reshape(-1, 16)
    i, f, g, o = _gates(backend, x)
    exact = {"sigmoid": special.expit(x.astype(np.float64)), "tanh": np.tanh(x.astype(np.float64))}
    for name, got in (("sigmoid", i), ("sigmoid", f), ("tanh", g), ("sigmoid", o)):
        worst = ulps(got, exact[name], np.float32).max()
        assert worst <= FLOAT_GATE_ULPS[name], (name, worst)
    nan = np.full((1, 16), np.nan, np.float32)
    assert all(np.isnan(gate).all() for gate in _gates(backend, nan))


@pytest.mark.skipif(not {"c", "numba"} <= set(fastnn.available_backends()),
                    reason="needs the C and Numba backends")
def test_numba_float_gates_equal_the_c_ones():
    """The same operations and FMAs: the Numba float32 gates are the C ones bit
    for bit (a dense grid of [-30, 30] and every 9973rd float)."""
    spaced = np.arange(0, 0x7F800000, 9973, dtype=np.uint32).view(np.float32)
    x = np.concatenate([spaced, -spaced, np.linspace(-30, 30, 100_000, dtype=np.float32)])
    x = np.concatenate([x, np.zeros(-x.size % 16, np.float32)]).reshape(-1, 16)
    for c_gate, numba_gate in zip(_gates(fastnn.get_backend("c"), x),
                                  _gates(fastnn.get_backend("numba"), x)):
        np.testing.assert_array_equal(numba_gate, c_gate)


@pytest.mark.parametrize("backend_name", FAST_BACKENDS)
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_fast_float_gates_are_as_accurate_as_the_reference(kind, backend_name):
    """Over 20 steps each gate's rounding feeds every later state (inputs of scale
    2, as test_onnx.py's long sequences): the float32 states and gradients of the
    fast backends differ from the float32 reference by no more than the catalogue
    allows a float32 recurrent entry, rtol of the element plus twice the
    reference's own largest error from the float64 result
    (catalogue._as_accurate_as_the_reference). Measured (C): the largest error
    from float64 is 0.7-3.0 times the reference's (1.00 with the gates in double)."""
    fast = fastnn.get_backend(backend_name)
    kw32 = {k: None if v is None else (v * (2 if k == "x" else 1)).astype(np.float32)
            for k, v in arguments(kind, 32, 20, 4, 8, seed=3).items()}
    dhs = rand((32, 20, 8), 9).astype(np.float32)
    results = {}
    for name, backend, dtype in (("exact", ref, np.float64), ("reference", ref, np.float32),
                                 ("fast", fast, np.float32)):
        kw = {k: None if v is None else v.astype(dtype) for k, v in kw32.items()}
        hs, cache = forward(backend, kind, kw)
        grads = getattr(backend, f"{kind}_backward")(dhs.astype(dtype), cache)
        results[name] = [np.asarray(a, np.float64) for a in (hs, *grads)]
    for what, exact, reference, got in zip(["hs"] + gradient_names(kind), *results.values()):
        allowed = RTOL[np.dtype(np.float32)] * np.abs(reference) + 2 * reference_error(reference, exact)
        worst = (np.abs(got - reference) / allowed).max()
        assert worst <= 1, (what, worst)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("n, t, f, h", [(16, 200, 8, 32), (64, 50, 32, 128)])
def test_long_float32_sequences_agree_under_assert_backends_agree(kind, n, t, f, h):
    """200 steps, and the benchmark's 64 x 50 x 32 x 128, in float32: every
    backend's states and gradients agree with the reference's under
    fastnn.testing.assert_backends_agree, the check users run. A gate's rounding
    feeds every later state, so the C kernels' float32 gates (within 2 and 3 ulp,
    not rounded once from double) put 107, 1 and 15 of the 102400 states
    (rnn, lstm, gru) and up to 1085 of the benchmark's 409600 beyond RTOL of the
    reference's: the check judges them by their accuracy against float64 instead."""
    from fastnn.testing import assert_backends_agree

    kw = {k: None if v is None else v.astype(np.float32)
          for k, v in arguments(kind, n, t, f, h, state=False, seed=11).items()}
    dhs = rand((n, t, h), 12).astype(np.float32)

    def states_and_gradients(backend, kw, dhs):
        hs, cache = forward(backend, kind, kw)
        return hs, getattr(backend, f"{kind}_backward")(dhs, cache)

    assert_backends_agree(states_and_gradients, kw, dhs)
