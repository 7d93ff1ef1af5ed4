"""`Residual`: a skip connection around a sub-stack of layers, y = x + f(x).

The sub-layers are ordinary layers; their tensors are this layer's tensors,
named "<position>/<name>" ("0/W", "2/gamma", "projection/W"), so the model lays
them out in its flat buffers by role with every other layer's (see `layout`)
and each sub-layer receives its views through `bind`. A sub-layer's workspace
is a dict in the list ws["sub"] of the block's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._types import Array, Backend, Config, DTypeLike, RandomState, Shape, StateSpec, TensorSpec, Workspace
from .layers import (
    BatchNorm,
    Dense,
    Layer,
    backward_through,
    buffer,
    check_name,
    detached,
    first_training,
    full_config,
    layer_from_config,
    mix64,
    register_layer,
)

if TYPE_CHECKING:  # for annotations only
    from .layers import Pass


class Residual(Layer):
    """Residual block ``y = x + f(x)``, f the layers applied in order.

    Any layers, including other Residual blocks. f must keep the input's shape,
    or change only its last axis, which a projection then matches on the skip
    path: ``y = x @ P + c + f(x)``, P (n_in, n_out), a linear Dense. The
    projection is the sub-layer ``shortcut``, named "<block name>_projection"; it
    trains, freezes and saves with the block. ``block.trainable = False`` freezes
    every sub-layer; with the block trainable, each sub-layer follows its own
    flag.

    Parameters
    ----------
    layers : sequence of Layer
        The layers of f (a non-empty list).
    projection : bool, optional
        None: a projection exactly when f changes the width; True: always; False:
        never (f must keep the shape).
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Raises
    ------
    TypeError
        If `layers` is not a non-empty list of fastnn.nn layers, or projection is
        not None, True or False.
    ValueError
        If a layer appears twice.

    Examples
    --------
    >>> from fastnn import nn
    >>> block = nn.Residual([nn.Dense(32, "relu"), nn.Dense(32)])
    >>> model = nn.Sequential([nn.Dense(32), block, nn.Dense(10)], loss="mse", input_shape=16, seed=0)
    >>> model.n_params
    2986
    """

    # declared for the checker: the projection Dense once build makes one
    shortcut: Any

    kind = "Residual"

    def __init__(self, layers: Sequence[Layer], projection: Optional[bool] = None,
                 name: Optional[str] = None) -> None:
        self.name = check_name(name)
        if isinstance(layers, (Layer, dict)) or not isinstance(layers, (list, tuple)) or not layers:
            raise TypeError("layers must be a non-empty list of fastnn.nn layers")
        layers = [layer_from_config(c) if isinstance(c, dict) else c for c in layers]
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"layers must be fastnn.nn layers, got {type(layer).__name__}")
        layers = [detached(layer) for layer in layers]  # of a built model: a copy (see Sequential.add)
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("a layer appears twice in the Residual block")
        if projection not in (None, True, False):
            raise TypeError(f"projection must be None, True or False, got {projection!r}")
        self.layers = layers
        self.projection = projection
        self.shortcut = None  # the projection Dense, made by build when needed

    def sublayers(self) -> List[Layer]:
        return self.layers + ([] if self.shortcut is None else [self.shortcut])

    def _children(self):
        """[(prefix of its tensor names, sub-layer)]."""
        return [(str(j), layer) for j, layer in enumerate(self.layers)] + \
            ([] if self.shortcut is None else [("projection", self.shortcut)])

    def build(self, input_shape: Shape, dtype: DTypeLike) -> Shape:
        self.input_shape = tuple(input_shape)
        self.dtype = np.dtype(dtype)
        shape = self.input_shape
        index = getattr(self, "index", 0)
        for j, layer in enumerate(self.layers):
            layer.index = mix64(index, j + 1)  # dropout seeds: distinct per sub-layer
            try:
                shape = layer.build(shape, dtype)
            except ValueError as exc:
                raise ValueError(f"its layer {j} ({layer.kind}) cannot take inputs of shape {shape}: "
                                 f"{exc}") from None
        project = shape != self.input_shape if self.projection is None else self.projection
        if project and shape[:-1] != self.input_shape[:-1]:
            raise ValueError(f"its layers map {self.input_shape} to {shape}; a projection can only "
                             "change the last axis")
        if not project and shape != self.input_shape:
            raise ValueError(f"its layers map {self.input_shape} to {shape}: x + f(x) needs the same shape "
                             "(or projection=None / True)")
        if project:
            self.shortcut = Dense(shape[-1], name=f"{self.name or 'residual'}_projection")
            self.shortcut.build(self.input_shape, dtype)
        else:
            self.shortcut = None
        self.output_shape = shape
        # as the model does for its own stack: activations run as declared, and a
        # linear Dense right before batch norm keeps a zero bias (Dense.fixed_bias)
        for layer, after in zip(self.layers, self.layers[1:] + [None]):
            if hasattr(layer, "run_activation"):
                layer.run_activation = layer.activation  # type: ignore[attr-defined]
            if isinstance(layer, Dense):
                layer.fixed_bias = layer.activation == "identity" and isinstance(after, BatchNorm)
        self._first_trained = first_training(self.layers)
        return shape

    def param_specs(self) -> List[TensorSpec]:
        return [(f"{prefix}/{name}", shape, role) for prefix, layer in self._children()
                for name, shape, role in layer.param_specs()]

    def state_specs(self) -> List[StateSpec]:
        return [(f"{prefix}/{name}", shape, init) for prefix, layer in self._children()
                for name, shape, init in layer.state_specs()]

    def tensor_owners(self) -> List[Tuple[str, Layer, str]]:
        return [(f"{prefix}/{name}", owner, own) for prefix, layer in self._children()
                for name, owner, own in layer.tensor_owners()]

    def bind(self, params: Dict[str, Array], grads: Dict[str, Array], state: Dict[str, Array]) -> None:
        super().bind(params, grads, state)
        for prefix, layer in self._children():
            layer.bind(*({k[len(prefix) + 1:]: v for k, v in views.items() if k.startswith(prefix + "/")}
                         for views in (params, grads, state)))

    def init_params(self, backend: Backend, rng: RandomState) -> None:
        for _, layer in self._children():
            layer.init_params(backend, rng)

    def set_frozen(self, frozen: bool) -> None:
        super().set_frozen(frozen)
        self._first_trained = first_training(self.layers)

    def forward(self, backend: Backend, x: Array, ws: Workspace, mode: Pass) -> Array:
        subs = ws.get("sub")
        if subs is None:
            subs = ws["sub"] = [{} for _ in self.sublayers()]
        h = x
        for layer, layer_ws in zip(self.layers, subs):
            h = layer.forward(backend, h, layer_ws, mode)
        skip = x if self.shortcut is None else self.shortcut.forward(backend, x, subs[-1], mode)
        y = buffer(ws, "y", h.shape, self.dtype)
        np.add(skip, h, out=y)
        return y

    def backward(self, backend: Backend, dy: Array, ws: Workspace, need_dx: bool) -> Optional[Array]:
        # dy (N, ..., n_out) reaches the input through f and through the skip path
        subs = ws["sub"]
        df = backward_through(self.layers, backend, dy, subs, need_dx, self._first_trained)
        dskip = dy if self.shortcut is None else self.shortcut.backward(backend, dy, subs[-1], need_dx)
        if not need_dx:
            return None
        dx = buffer(ws, "dx", df.shape, self.dtype)
        np.add(dskip, df, out=dx)
        return dx

    def config(self) -> Config:
        return {"kind": self.kind, "layers": [full_config(layer) for layer in self.layers],
                "projection": self.projection}

    def __repr__(self):
        return f"Residual([{', '.join(map(repr, self.layers))}], projection={self.projection!r})"


register_layer(Residual)
