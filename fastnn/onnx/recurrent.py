"""Converters of the sequence layers: SimpleRNN, LSTM, GRU (batch-first x (N, T, F)
as in fastnn) and Embedding.

A recurrent layer is the reference's computation in standard operators: the
input projections of every step, x W_x + b (N, T, G*H), as one MatMul before
the loop, then a `Scan` over the time axis whose body is one step: h_{t-1} W_h
(N, H) @ (H, G*H), the gates sliced from it in fastnn's (PyTorch's) order, and
the activations of fastnn.onnx.activations (the composed logistic; Tanh, Relu)
computed in float64 and rounded once to the graph's dtype, as the reference
computes them (fastnn.backends.reference: _sigmoid, _tanh): a state feeds every
later step, so the few ulps by which float32 activations are off (onnxruntime's
Tanh: 2.5) grow along the sequence past the 1e-5 tolerance. ONNX's RNN, LSTM
and GRU operators are not used: onnxruntime 1.32 runs them in float32 only
("LSTM operator does not support double yet"), refuses their batch-first
layout=1, and computes their gates with its own sigmoid, which is inaccurate
(see activations.logistic); so one construction serves both dtypes. The states
start at zero for every sample, as fastnn's h0 (and c0).
"""

import numpy as np
from onnx import helper

from .activations import activation
from .graph import tensor_type
from .layers import register_converter


def zero_state(g, x, units):
    """Zeros (N, units) in the graph's dtype, N the batch size of x."""
    batch = g.op("Slice", g.op("Shape", x), g.const([0], "start"), g.const([1], "end"))
    shape = g.op("Concat", batch, g.const([units], "units"), axis=0)
    zero = helper.make_tensor("value", tensor_type(g.dtype), [1], [0.0])
    return g.op("ConstantOfShape", shape, value=zero)


def gate_slicer(g, units):
    """gate(z, k): gate k's columns z[:, k H:(k + 1) H] of z (N, G*H)."""
    axes = g.const([1], "axes")
    bounds = {}

    def gate(z, k):
        if k not in bounds:  # the constants are made once, outside the step
            bounds[k] = (g.const([k * units], f"gate{k}_start"), g.const([(k + 1) * units], f"gate{k}_end"))
        return g.op("Slice", z, *bounds[k], axes)
    return gate


def recurrence(g, layer, x, n_states, step):
    """The layer's recurrence over x (N, T, F): Scan with n_states states (N, H),
    all zero at first, and one scan input, the step's projected input x_t W_x + b
    (N, G*H); step(h, *other states, xw_t) returns the new states, h first. Returns
    the hidden states (N, T, H) with return_sequences, else the last one (N, H)."""
    hidden, sequences = layer.units, layer.return_sequences
    bias = layer.params[layer.biases[0]]  # b, or GRU's b_x
    xw = g.op("Add", g.op("MatMul", x, g.const(layer.params["W_x"], "W_x")), g.const(bias, layer.biases[0]))

    def body(*names):
        states = step(*names)
        # the sequence's copy of h: a graph output may not appear twice
        return [*states, g.op("Identity", states[0])] if sequences else states

    inputs = ([(f"state{i}", [None, hidden]) for i in range(n_states)]
              + [("xw_t", [None, layer.gates * hidden])])
    graph = g.subgraph("step", inputs, body)
    h0 = zero_state(g, x, hidden)
    outputs = [g.unique(f"last_state{i}") for i in range(n_states)] + ([g.unique("hs")] if sequences else [])
    attrs = dict(scan_input_axes=[1], scan_output_axes=[1]) if sequences else dict(scan_input_axes=[1])
    g.node("Scan", [h0] * n_states + [xw], outputs, body=graph, num_scan_inputs=1, **attrs)
    return outputs[-1] if sequences else outputs[0]


def gate_activation(g, name, z):
    """The activation `name` of z as the reference computes the recurrences':
    in float64, rounded once to the graph's dtype."""
    if g.dtype == np.float64:
        return activation(g, name, z)
    with g.computing_in(np.float64):
        y = activation(g, name, g.cast(z, np.float64))
    return g.cast(y, g.dtype)


@register_converter("SimpleRNN")
def simple_rnn(g, layer, x):
    W_h = g.const(layer.params["W_h"], "W_h")

    def step(h, xw_t):  # activation(x_t W_x + b + h W_h)
        return [gate_activation(g, layer.activation, g.op("Add", xw_t, g.op("MatMul", h, W_h)))]
    return recurrence(g, layer, x, 1, step)


@register_converter("LSTM")
def lstm(g, layer, x):
    W_h, gate = g.const(layer.params["W_h"], "W_h"), gate_slicer(g, layer.units)

    def step(h, c, xw_t):
        z = g.op("Add", xw_t, g.op("MatMul", h, W_h))  # (N, 4H): gates i, f, g, o
        i, f, o = (gate_activation(g, "logistic", gate(z, k)) for k in (0, 1, 3))
        c = g.op("Add", g.op("Mul", f, c), g.op("Mul", i, gate_activation(g, "tanh", gate(z, 2))))
        return [g.op("Mul", o, gate_activation(g, "tanh", c)), c]
    return recurrence(g, layer, x, 2, step)


@register_converter("GRU")
def gru(g, layer, x):
    W_h, b_h = g.const(layer.params["W_h"], "W_h"), g.const(layer.params["b_h"], "b_h")
    gate = gate_slicer(g, layer.units)

    def step(h, xw_t):
        a = g.op("Add", g.op("MatMul", h, W_h), b_h)  # (N, 3H): h W_h + b_h, gates r, z, n
        r, z = (gate_activation(g, "logistic", g.op("Add", gate(xw_t, k), gate(a, k))) for k in (0, 1))
        new = gate_activation(g, "tanh", g.op("Add", gate(xw_t, 2), g.op("Mul", r, gate(a, 2))))
        return [g.op("Add", g.op("Mul", g.op("Sub", g.scalar(1), z), new), g.op("Mul", z, h))]
    return recurrence(g, layer, x, 1, step)


@register_converter("Embedding")
def embedding(g, layer, x):
    # int64 tokens (N, T) -> rows of W (input_dim, D): (N, T, D)
    return g.op("Gather", g.const(layer.params["W"], "W"), x, axis=0)

