"""Converters of the image layers: Conv2D, MaxPool2D, AveragePooling2D and
GlobalAveragePooling2D, over channels-last images (N, H, W, C) as in fastnn.

The graph stays channels-last between layers, so that Flatten flattens in
fastnn's (H, W, C) order. ONNX's Conv, MaxPool and AveragePool are
channels-first: each is wrapped in a Transpose to (N, C, H, W) and one back
(onnxruntime's optimiser removes the pairs that cancel between consecutive
layers). Where onnxruntime's CPU provider has no kernel for the graph's dtype
(MISSING_OPERATORS: in float64 it has MaxPool, but no Conv and no AveragePool),
the layer is composed of operators it has for both dtypes, in float64 and
without a cast: the zero-padded input's kh * kw window taps as strided Slices
(each (N, OH, OW, C)), concatenated over the channels into each window's
(kh, kw, C_in) cells and multiplied by W reshaped to (kh * kw * C_in, C_out) for
a convolution (the reference's sum over a window), summed and divided by the
window's area for average pooling (zero padding counted in the divisor).
"""

import numpy as np

from .activations import activation
from .layers import register_converter

# dtype -> the ONNX operators used here that onnxruntime's CPU provider has no
# kernel for (checked with onnxruntime 1.32: Conv and AveragePool are float32
# only, MaxPool is there for both); a layer needing one of them is composed
MISSING_OPERATORS = {"float32": set(), "float64": {"Conv", "AveragePool"}}


def native(g, op_type):
    """Whether the graph uses ONNX's op_type itself (else a composition)."""
    return op_type not in MISSING_OPERATORS.get(g.dtype.name, ())


def channels_first(g, op_type, x, *inputs, **attrs):
    """op_type, an operator over (N, C, H, W), applied to channels-last x
    (N, H, W, C); its output channels-last again."""
    y = g.op(op_type, g.op("Transpose", x, perm=[0, 3, 1, 2]), *inputs, **attrs)
    return g.op("Transpose", y, perm=[0, 2, 3, 1])


def window_attrs(window, strides, pads):
    """The attributes of ONNX's Conv / pooling (pads: begins then ends of H, W)."""
    return dict(kernel_shape=list(window), strides=list(strides), pads=[*pads, *pads])


def window_taps(g, layer, x, window):
    """The cells of every window over x (N, H, W, C), zero padded by layer.pads on
    both sides, stepping by layer.strides: a list of kh * kw tensors, tap (a, b)
    in row-major order, each (N, OH, OW, C) holding x_padded[:, a + sh i, b + sw j]."""
    (kh, kw), (sh, sw), (ph, pw) = window, layer.strides, layer.pads
    oh, ow = layer.output_shape[:2]
    if ph or pw:
        x = g.op("Pad", x, g.const([0, ph, pw, 0, 0, ph, pw, 0], "pads"))
    axes, steps = g.const([1, 2], "axes"), g.const([sh, sw], "steps")
    return [g.op("Slice", x, g.const([a, b], "starts"),
                 g.const([a + sh * (oh - 1) + 1, b + sw * (ow - 1) + 1], "ends"), axes, steps)
            for a in range(kh) for b in range(kw)]


@register_converter("Conv2D")
def conv2d(g, layer, x):
    W, b = layer.params["W"], layer.params["b"]  # W (kh, kw, C_in, C_out), b (C_out,)
    if native(g, "Conv"):
        # ONNX's W is (C_out, C_in, kh, kw)
        y = channels_first(g, "Conv", x, g.const(W.transpose(3, 2, 0, 1), "W"), g.const(b, "b"),
                           **window_attrs(layer.kernel_size, layer.strides, layer.pads))
    else:
        kh, kw, c_in, c_out = W.shape
        # (N, OH, OW, kh * kw * C_in): each window's cells in W's (kh, kw, C_in) order
        cells = g.op("Concat", *window_taps(g, layer, x, layer.kernel_size), axis=3)
        y = g.op("MatMul", cells, g.const(W.reshape(kh * kw * c_in, c_out), "W"))
        y = g.op("Add", y, g.const(b, "b"))
    return activation(g, layer.run_activation, y)  # over the channels, the last axis


@register_converter("MaxPool2D")
def max_pool2d(g, layer, x):
    # ONNX's MaxPool ignores padded cells (they never win), as fastnn's
    return channels_first(g, "MaxPool", x, **window_attrs(layer.pool_size, layer.strides, layer.pads))


@register_converter("AveragePooling2D")
def average_pooling2d(g, layer, x):
    if native(g, "AveragePool"):  # count_include_pad: the zero padding is in the divisor, as fastnn's
        return channels_first(g, "AveragePool", x, count_include_pad=1,
                              **window_attrs(layer.pool_size, layer.strides, layer.pads))
    kh, kw = layer.pool_size
    return g.op("Div", g.op("Sum", *window_taps(g, layer, x, layer.pool_size)), g.scalar(kh * kw))


@register_converter("GlobalAveragePooling2D")
def global_average_pooling2d(g, layer, x):
    # (N, H, W, C) -> (N, C): the mean over H and W; ReduceMean takes its axes as an
    # input from opset 18, as an attribute before
    if g.opset >= 18:
        return g.op("ReduceMean", x, g.const(np.array([1, 2]), "axes"), keepdims=0)
    return g.op("ReduceMean", x, axes=[1, 2], keepdims=0)
