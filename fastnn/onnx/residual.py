"""The converter of `fastnn.nn.Residual`: y = x + f(x), or x @ P + c + f(x) with
the projection on the skip path; f's layers (any kinds, other blocks included)
and the projection (a linear Dense) converted by their own converters."""

from .layers import convert_layer, register_converter


@register_converter("Residual")
def residual(g, layer, x):
    h = x
    for j, sub in enumerate(layer.layers):
        h = convert_layer(g, sub, h, j)
    skip = x if layer.shortcut is None else convert_layer(g, layer.shortcut, x, "projection")
    return g.op("Add", skip, h)
