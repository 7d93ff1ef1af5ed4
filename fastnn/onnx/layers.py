"""Layer converters: one function per layer kind, registered with
`register_converter(kind)`, that adds the layer's inference computation to a
graph (see fastnn.onnx.graph).

A converter is `convert(g, layer, x) -> y`: `g` the Graph (computing in
`g.dtype`), `layer` a built fastnn.nn layer (its parameters in `layer.params`,
its state in `layer.state`, its per-sample shapes in `layer.input_shape` and
`layer.output_shape`), `x` the name of its input, a (N, *layer.input_shape)
tensor; it returns the name of its output, (N, *layer.output_shape). It does
what the layer's forward pass does in inference (`Sequential.predict`). A layer
holding other layers converts them with `convert_layer`. Tensors are
channels-last as in fastnn: images (N, H, W, C), sequences (N, T, F) (the image
layers' converters, fastnn.onnx.convolution, transpose around ONNX's
channels-first operators); the sequence layers' are in fastnn.onnx.recurrent,
Residual's in fastnn.onnx.residual.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import numpy as np

from .activations import LINKS, activation

# a converter: (graph, layer, input name) -> output name, see register_converter
Converter = Callable[..., Any]
CONVERTERS: Dict[str, Converter] = {}


def register_converter(kind: str) -> Callable[[Converter], Converter]:
    """Register a converter for a layer kind (a decorator).

    Parameters
    ----------
    kind : str
        The layer kind (``layer.kind``, e.g. 'Dense'); an earlier converter of
        that kind is replaced.

    Returns
    -------
    callable
        A decorator that registers ``convert(g, layer, x) -> y`` and returns it
        unchanged: `g` the graph (fastnn.onnx.graph.Graph, computing in
        ``g.dtype``), `layer` the built layer, `x` the name of its input tensor
        ``(N, *layer.input_shape)``; it returns the name of its output.

    Examples
    --------
    >>> from fastnn import nn
    >>> class Doubling(nn.Layer):
    ...     kind = "Doubling"
    ...     def forward(self, backend, x, ws, mode):
    ...         return 2 * x
    >>> @register_converter("Doubling")
    ... def doubling(g, layer, x):
    ...     return g.op("Mul", x, g.scalar(2))
    """
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"kind must be a layer kind (a non-empty string), got {kind!r}")

    def register(convert):
        CONVERTERS[kind] = convert
        return convert

    return register


def convert_layer(g, layer, x, index):
    """One layer (the index-th of its model, or of the layer holding it) applied
    to x by its kind's converter; the names it adds start with its kind and index."""
    convert = CONVERTERS.get(layer.kind)
    if convert is None:
        where = f"layer {index} of {g.prefix}" if g.prefix else f"layer {index}"  # in a block: its path
        raise NotImplementedError(
            f"{where} ({layer!r}) cannot be exported to ONNX: no converter is registered for "
            f"{layer.kind!r} layers (known: {', '.join(sorted(CONVERTERS))}); add one with "
            f"@fastnn.onnx.register_converter({layer.kind!r})")
    outer = g.prefix
    g.prefix = f"{outer}/{layer.kind.lower()}_{index}" if outer else f"{layer.kind.lower()}_{index}"
    try:
        return convert(g, layer, x)
    finally:
        g.prefix = outer


def convert_layers(g, model, x):
    """The model's layers applied to x, then the loss's link as `predict` applies
    it (softmax or sigmoid probabilities, exp for Poisson; nothing without a
    loss). Returns the output's name."""
    for i, layer in enumerate(model.layers):
        x = convert_layer(g, layer, x, i)
    link = model.loss.link if model.loss is not None else "identity"
    if link not in LINKS:
        raise NotImplementedError(f"the {model.loss!r} loss's link {link!r} has no ONNX form; "
                                  f"known: {sorted(LINKS)}")
    return LINKS[link](g, x)


@register_converter("Dense")
def dense(g, layer, x):
    # (N, ..., n_in) @ W (n_in, units) + b (units,): MatMul broadcasts over the middle axes
    y = g.op("Add", g.op("MatMul", x, g.const(layer.params["W"], "W")), g.const(layer.params["b"], "b"))
    return activation(g, layer.run_activation, y)


@register_converter("Activation")
def activation_layer(g, layer, x):
    return activation(g, layer.run_activation, x)


@register_converter("BatchNorm")
def batch_norm(g, layer, x):
    # inference: (x - running_mean) * invstd * gamma + beta over the last axis, with
    # invstd = 1 / sqrt(running_var + eps) computed in the graph's dtype as the reference does
    mean = layer.state["running_mean"].astype(g.dtype)
    invstd = 1 / np.sqrt(layer.state["running_var"].astype(g.dtype) + layer.eps)
    y = g.op("Mul", g.op("Sub", x, g.const(mean, "running_mean")), g.const(invstd, "invstd"))
    y = g.op("Mul", y, g.const(layer.params["gamma"], "gamma"))
    return g.op("Add", y, g.const(layer.params["beta"], "beta"))


@register_converter("Dropout")
def dropout(g, layer, x):
    return x  # identity in inference


@register_converter("Flatten")
def flatten(g, layer, x):
    # (N, d1, d2, ...) -> (N, d1 * d2 * ...) in C order, as the layer's reshape
    return g.op("Flatten", x, axis=1)
