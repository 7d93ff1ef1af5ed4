"""Layers of a `Sequential` model.

A layer is a description (its kind and options, see `config`) plus views into the
model's flat buffers, which `Sequential.build` hands out: parameters (`params`),
their gradients (`grads`, same layout) and non-trained state such as running
statistics (`state`). A layer owns no arrays of its own.

Every computation is one backend kernel, called through its fast precondition
(`backend.fast`, see fastnn.backends.spec): a few structural checks, then the
implementation; anything else (a layer called with a list, a strided view) takes
the public, validating kernel.
`forward` and `backward` write into workspace buffers kept per batch size in `ws`
(a dict the model keeps for this layer and batch size), so after the first step
at a batch size nothing is allocated.

Shapes are per sample: a layer is built from its input shape (`(784,)`,
`(28, 28, 1)`, `(T, F)`) and returns its output shape; a batch adds the leading
axis N. Dense, BatchNorm and the softmax act on the last axis, so on an
(N, ..., F) batch they run their 2-D kernels on the (N * ..., F) view of it (no
copy: layer inputs are C-contiguous).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Type, Union

import numpy as np

from .._types import (
    Array,
    Backend,
    Config,
    DTypeLike,
    IntPair,
    Padding,
    RandomState,
    Shape,
    StateSpec,
    TensorSpec,
    Workspace,
)
from ..backends import _checks as chk
from ..backends.reference import (
    INIT_ALIASES,
    INITIALISERS,
    NEEDS_INPUT,
    activation_name,
    rnn_activation_name,
)

# Activations whose layers default to He initialisation (ReLU-like: zero or small
# slope on one side, identity on the other).
RELU_FAMILY = frozenset({"relu", "leaky_relu", "elu", "gelu"})

MASK64 = (1 << 64) - 1


def mix64(*values):
    """Hash integers into one 64-bit seed (splitmix64 finaliser over each value):
    nearby inputs (step counters, layer indices) give unrelated seeds."""
    z = 0
    for v in values:
        z = ((z ^ (int(v) & MASK64)) + 0x9E3779B97F4A7C15) & MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
    return z


def default_init(activation):
    """He for the ReLU family, LeCun for selu (self-normalising), Glorot otherwise."""
    if activation in RELU_FAMILY:
        return "he_uniform"
    if activation == "selu":
        return "lecun_normal"
    return "glorot_uniform"


class Pass(NamedTuple):
    """How a forward pass runs: training (dropout on, batch statistics), whether
    batch norm updates its running statistics, the pass's dropout seed, whether
    dropout is applied (a training pass without it recomputes batch-norm
    statistics for inference), and a momentum replacing batch norm's own (1.0:
    the running statistics become the batch's)."""

    training: bool
    update_stats: bool = True
    seed: int = 0
    dropout: bool = True
    momentum: Optional[float] = None


# Parameter roles, in the order the model lays them out in its flat buffer: all
# weights first (the block penalties apply to), then all biases, then batch-norm
# scales and shifts. For a stack of Dense layers this is scikit-learn's packing
# (coefs_, then intercepts_), so its fitted attributes are views of the buffer.
ROLES = ("weight", "bias", "scale", "shift")


def rows(a, width):
    """a (N, ..., width) as the 2-D (N * ..., width) array the kernels take: `a`
    itself when it is 2-D, else a view (a copy only if `a` is not contiguous)."""
    return a if a.ndim == 2 else a.reshape(-1, width)


def buffer(ws, key, shape, dtype):
    """The workspace array `key`, allocated on first use. A workspace belongs to
    one batch size, so the shape never changes once allocated."""
    a = ws.get(key)
    if a is None:
        a = ws[key] = chk.empty(shape, dtype)
    return a


class Layer:
    """The base of the layers: a description plus views into the model's buffers.

    Subclasses define ``kind``, ``forward(backend, x, ws, mode)``,
    ``backward(backend, dy, ws, need_dx)``, `config` and, when they change the
    shape, `output_shape_for`; when they have parameters, `param_specs` and
    `init_params`. Every layer has a ``name`` (given with ``name=``, else the model
    gives it a Keras-style one: ``dense``, ``dense_1``, ..., unique within the
    model) and a `trainable` flag: ``layer.trainable = False`` freezes its
    parameters (the optimizer leaves them and its state for them untouched, no
    penalty or weight decay moves them, their gradients are not computed; batch
    norm then also normalises with its running statistics, as in Keras). A
    penalty's value still counts frozen weights (as Keras's regularisation losses
    do). A change takes effect at the next fit, train_step or loss_and_gradient.
    ``frozen`` is set by the model: not trainable, or inside a layer that is not.

    Examples
    --------
    >>> from fastnn import nn
    >>> layer = nn.Dense(4)
    >>> layer.trainable = False
    >>> layer.trainable
    False
    """

    kind = "Layer"
    name: Optional[str] = None
    # the dtype of the model's input when this layer comes first (None: the
    # model's float dtype); such a layer checks that input with check_input(X, name)
    input_dtype: Optional[np.dtype] = None
    frozen = False
    # whether the compiled backends run this layer's GEMMs on fastnn's own threads
    # (BLAS on one thread per range of samples; see training.blas_scope)
    gemms_on_own_threads = False
    # declared for the checker: set by subclasses, by build and bind, and by the model (index)
    forward: Callable[..., Array]
    backward: Callable[..., Optional[Array]]
    index: int
    params: Dict[str, Array]
    grads: Dict[str, Array]
    state: Dict[str, Array]

    @property
    def trainable(self) -> bool:
        """Whether the layer's parameters train (False freezes them)."""
        return self.__dict__.get("_trainable", True)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"trainable must be True or False, got {value!r}")
        self._trainable = bool(value)

    def build(self, input_shape: Shape, dtype: DTypeLike) -> Shape:
        """Fix the per-sample input shape.

        Parameters
        ----------
        input_shape : tuple of int
            The per-sample input shape.
        dtype : dtype
            The model's float dtype.

        Returns
        -------
        tuple of int
            The per-sample output shape.
        """
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(self.output_shape_for(self.input_shape))
        self.dtype = np.dtype(dtype)
        return self.output_shape

    def output_shape_for(self, input_shape: Shape) -> Shape:
        """Return the per-sample output shape for an input shape.

        Parameters
        ----------
        input_shape : tuple of int
            The per-sample input shape.

        Returns
        -------
        tuple of int
            The per-sample output shape.

        Raises
        ------
        ValueError
            If the layer cannot take that input shape.
        """
        return input_shape

    def param_specs(self) -> List[TensorSpec]:
        """List the trained parameters.

        Weights (the tensors L1/L2 penalties apply to) are laid out first in the
        model's flat buffer, then biases, scales and shifts.

        Returns
        -------
        list of (str, tuple of int, str)
            ``[(name, shape, role)]``, role one of 'weight', 'bias', 'scale', 'shift'.
        """
        return []

    def state_specs(self) -> List[StateSpec]:
        """List the non-trained state tensors.

        Returns
        -------
        list of (str, tuple of int, float)
            ``[(name, shape, initial value)]``.
        """
        return []

    def bind(self, params: Dict[str, Array], grads: Dict[str, Array], state: Dict[str, Array]) -> None:
        """Receive views into the model's parameter, gradient and state buffers.

        Parameters
        ----------
        params : dict of str to numpy.ndarray
            ``{name: view}`` of the parameters.
        grads : dict of str to numpy.ndarray
            ``{name: view}`` of their gradients.
        state : dict of str to numpy.ndarray
            ``{name: view}`` of the state.
        """
        self.params, self.grads, self.state = params, grads, state

    def init_params(self, backend: Backend, rng: RandomState) -> None:
        """Write initial values into the parameter views.

        Parameters
        ----------
        backend : backend object
            The backend (its initialiser kernels).
        rng : numpy.random.Generator or RandomState
            The random draws.
        """

    def config(self) -> Config:
        """Return the layer's kind and options, as saved.

        Returns
        -------
        dict
            ``{'kind': ..., option: value}``; ``cls(**options)`` rebuilds the layer.
        """
        return {"kind": self.kind}

    def sublayers(self) -> List[Layer]:
        """List the layers this layer is made of (a container such as Residual).

        Returns
        -------
        list of Layer
            Empty for a plain layer.
        """
        return []

    def tensor_owners(self) -> List[Tuple[str, Layer, str]]:
        """Say which (sub-)layer each trained tensor belongs to.

        Returns
        -------
        list of (str, Layer, str)
            ``[(spec name, layer, that layer's own name for it)]`` parallel to
            `param_specs`.
        """
        return [(name, self, name) for name, _, _ in self.param_specs()]

    def set_frozen(self, frozen: bool) -> None:
        """Set `frozen` (by the model, before training).

        Parameters
        ----------
        frozen : bool
            Whether a container of this layer is frozen; the layer is frozen then, or
            when it is not trainable.
        """
        self.frozen = bool(frozen) or not self.trainable
        for layer in self.sublayers():
            layer.set_frozen(self.frozen)

    def bind_forward(self, backend: Backend, x: Array,
                     ws: Workspace) -> Optional[Tuple[Array, Callable[[], Any]]]:
        """Bind this layer's training forward pass to its arrays, once.

        A layer that returns a pair is stepped by the model through ``run()``
        on later steps of the same batch shape, with no layer walk; the default
        returns None and the layer is stepped through `forward` and `backward`.

        Parameters
        ----------
        backend : Backend
            The backend whose kernels are bound (``backend.fast.bind``).
        x : ndarray
            The layer's input, (N, ...), in the model's workspace.
        ws : dict
            The layer's workspace for this batch shape.

        Returns
        -------
        tuple or None
            (y, run): the output array ``run()`` writes, and the bound pass.
        """
        return None

    def bind_backward(self, backend: Backend, dy: Array, ws: Workspace,
                      need_dx: bool) -> Optional[Tuple[Optional[Array], Callable[[], Any]]]:
        """Bind this layer's backward pass to its arrays, once (after `bind_forward`).

        Parameters
        ----------
        backend : Backend
            The backend whose kernels are bound.
        dy : ndarray
            The gradient with respect to the layer's output, (N, ...).
        ws : dict
            The layer's workspace for this batch shape.
        need_dx : bool
            Whether the gradient with respect to the input is computed.

        Returns
        -------
        tuple or None
            (dx, run): the input gradient ``run()`` writes (None when not
            needed), and the bound pass.
        """
        return None

    def trains(self) -> bool:
        """Return whether a step changes any parameter of this layer (after set_frozen).

        Returns
        -------
        bool
            Whether it trains.
        """
        subs = self.sublayers()
        if subs:
            return any(layer.trains() for layer in subs)
        return not self.frozen and bool(self.param_specs())

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind")
        return f"{self.kind}({options})"


def backward_through(layers, backend, dy, layer_ws, need_dx, first):
    """Backward through `layers`, last to first, from dy (the gradient of the
    last one's output). `first` is the lowest layer whose parameters train:
    without need_dx the pass stops below it (nothing beneath needs a gradient).
    Returns the gradient of the first layer's input, or None without need_dx."""
    stop = 0 if need_dx else first
    for i in range(len(layers) - 1, stop - 1, -1):
        dy = layers[i].backward(backend, dy, layer_ws[i], need_dx or i > first)
    return dy if need_dx else None


def binds_its_step(layer):
    """Whether `layer` binds its training pass (bind_forward, bind_backward) and
    those are of the class that defines its forward and backward: a subclass
    that overrides forward or backward alone is stepped through them."""
    cls = type(layer)
    binds = _BINDS_ITS_STEP.get(cls)  # (asked at every train_step)
    if binds is None:
        def owner(name):
            return next(c for c in cls.__mro__ if name in vars(c))
        binds = _BINDS_ITS_STEP[cls] = (owner("bind_forward") is not Layer
                                        and owner("bind_forward") is owner("forward")
                                        and owner("bind_backward") is owner("backward"))
    return binds


_BINDS_ITS_STEP: Dict[type, bool] = {}


def first_training(layers):
    """The index of the lowest layer whose parameters train (len(layers) if none)."""
    return next((i for i, layer in enumerate(layers) if layer.trains()), len(layers))


def check_name(name):
    if name is not None and (not isinstance(name, str) or not name or "/" in name):
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    return name


def full_config(layer):
    """layer.config() with its name and trainable flag: what save writes and
    layer_from_config reads."""
    return {**layer.config(), "name": layer.name, "trainable": bool(layer.trainable)}


def detached(layer):
    """`layer` itself, or, when it belongs to a built model (it holds views into
    that model's buffers), a copy of it (options, name, trainable flag) carrying
    its current parameter and state values, which the next model's build writes
    in place of initial values (see take_carried). The first model is unchanged."""
    if getattr(layer, "params", None) is None:
        return layer
    values = tuple({k: v.copy() for k, v in views.items()} for views in (layer.params, layer.state))
    copy = layer_from_config(full_config(layer))
    copy._carried = (layer.input_shape, values)
    return copy


def take_carried(layer):
    """Write the values a copy made by `detached` carries into its new views."""
    carried = layer.__dict__.pop("_carried", None)
    if carried is None:
        return
    shape, values = carried
    for views, old in zip((layer.params, layer.state), values):
        if set(views) != set(old) or any(views[k].shape != v.shape for k, v in old.items()):
            raise ValueError(f"layer {layer.name!r} was trained on inputs of shape {shape}; here it gets "
                             f"{layer.input_shape}, which needs parameters of other shapes")
        for k, v in old.items():
            views[k][...] = v


class _Weighted(Layer):
    """Base of the layers y = activation(x (.) W + b) (Dense, Conv2D): the
    activation, initialiser and penalty options, and the initialisation of W as
    a dense layer's (fan_in, fan_out) matrix."""

    def _set_weight_options(self, activation, init, l2, l1):
        self.activation = activation_name("identity" if activation is None else activation)
        if init is not None and not callable(init):
            if not isinstance(init, str):
                raise TypeError(f"init must be an initialiser name or a callable, got {type(init).__name__}")
            init = chk.choice(INIT_ALIASES.get(init, init), "init", INITIALISERS)
        self.init = init
        self.l2 = chk.real(l2, "l2", low=0)
        self.l1 = chk.real(l1, "l1", low=0)
        # The activation the kernels run: the model sets it to identity when the
        # loss applies this activation itself (softmax before cross-entropy).
        self.run_activation = self.activation

    def _initial_weights(self, backend, rng, fan_in, fan_out):
        """(W (fan_in, fan_out), b (fan_out,)) from the initialiser."""
        if callable(self.init):
            return self.init(fan_in, fan_out, rng, self.dtype)
        return backend.init_weights(self.init or default_init(self.activation), fan_in, fan_out, rng=rng,
                                    dtype=self.dtype, activation=self.activation)


class Dense(_Weighted):
    """Dense layer ``y = activation(x @ W + b)``, W (n_in, units), b (units,).

    It runs the fused dense_forward / dense_backward kernels, on the last axis of
    its input.

    Parameters
    ----------
    units : int
        The output width.
    activation : str, optional
        Any activation of the catalogue (None: identity).
    init : str or callable, optional
        An initialiser name (glorot_uniform, glorot_normal, he_uniform,
        he_normal, lecun_normal, sklearn) or a callable ``(fan_in, fan_out, rng,
        dtype) -> (W, b)``; None picks one from the activation (He for the ReLU
        family, LeCun for selu, Glorot otherwise).
    l2 : float, default 0.0
        L2 penalty on W (not b).
    l1 : float, default 0.0
        L1 penalty on W (not b).
    input_dim : int, optional
        The input width, for a first layer built before seeing data.
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.Dense(64, "relu", l2=1e-4)
    Dense(units=64, activation='relu', init=None, l2=0.0001, l1=0.0, input_dim=None)
    """

    kind = "Dense"

    def __init__(self, units: int, activation: Optional[str] = None,
                 init: Union[str, Callable[..., Tuple[Array, Array]], None] = None, l2: float = 0.0,
                 l1: float = 0.0, input_dim: Optional[int] = None, name: Optional[str] = None) -> None:
        self.name = check_name(name)
        self.units = chk.integer(units, "units", low=1)
        self._set_weight_options(activation, init, l2, l1)
        self.input_dim = None if input_dim is None else chk.integer(input_dim, "input_dim", low=1)
        # Set by the model when batch norm follows this layer directly and its
        # activation is the identity: batch norm subtracts the batch mean, so b has
        # no effect and its gradient is 0 up to rounding, which an adaptive
        # optimizer would amplify into a random walk. b then stays 0 (batch
        # norm's shift replaces it).
        self.fixed_bias = False

    def output_shape_for(self, input_shape: Shape) -> Shape:
        if not input_shape:
            raise ValueError("Dense needs inputs with at least one axis (features)")
        return input_shape[:-1] + (self.units,)

    @property
    def n_in(self) -> int:
        """The input width (fan-in): the last axis of the input shape."""
        return self.input_shape[-1]

    def param_specs(self) -> List[TensorSpec]:
        return [("W", (self.n_in, self.units), "weight"), ("b", (self.units,), "bias")]

    def init_params(self, backend: Backend, rng: RandomState) -> None:
        W, b = self._initial_weights(backend, rng, self.n_in, self.units)
        self.params["W"][...] = W
        self.params["b"][...] = 0 if self.fixed_bias else b

    @property
    def W(self) -> Array:
        """The weights, (n_in, units): a view of the model's parameter buffer."""
        return self.params["W"]

    @property
    def b(self) -> Array:
        """The biases, (units,): a view of the model's parameter buffer."""
        return self.params["b"]

    def _forward_call(self, x, ws):
        """(y, the dense_forward arguments) of a forward pass from x."""
        # x (N, ..., n_in) -> y (N, ..., units); the kernel sees (M, n_in) -> (M, units)
        y = buffer(ws, "y", x.shape[:-1] + (self.units,), self.dtype)
        x2, y2 = rows(x, self.n_in), rows(y, self.units)
        preact = buffer(ws, "preact", y2.shape, self.dtype) if self.run_activation in NEEDS_INPUT else None
        ws["x"], ws["y2"] = x2, y2
        return y, (x2, self.params["W"], self.params["b"], self.run_activation, y2, preact)

    def forward(self, backend: Backend, x: Array, ws: Workspace, mode: Pass) -> Array:
        y, args = self._forward_call(x, ws)
        backend.fast.dense_forward(*args)
        return y

    def bind_forward(self, backend: Backend, x: Array,
                     ws: Workspace) -> Optional[Tuple[Array, Callable[[], Any]]]:
        y, args = self._forward_call(x, ws)
        run = backend.fast.bind("dense_forward", *args)
        return None if run is None else (y, run)

    def _backward_call(self, dy, ws, need_dx):
        """(dx, the dense_backward arguments) of a backward pass from dy."""
        x, y2 = ws["x"], ws["y2"]
        dy2 = rows(dy, self.units)
        act = self.run_activation
        dz = None if act == "identity" else buffer(ws, "dz", y2.shape, self.dtype)
        dx = buffer(ws, "dx", dy.shape[:-1] + (self.n_in,), self.dtype) if need_dx else None
        dx2 = None if dx is None else rows(dx, self.n_in)
        return dx, (dy2, x, self.params["W"], y2, act, ws.get("preact"), need_dx, dx2, self.grads["W"],
                    self.grads["b"], dz)

    def backward(self, backend: Backend, dy: Array, ws: Workspace, need_dx: bool) -> Optional[Array]:
        if self.frozen:
            return self._backward_frozen(backend, dy, ws, need_dx)
        dx, args = self._backward_call(dy, ws, need_dx)
        backend.fast.dense_backward(*args)
        if self.fixed_bias:
            self.grads["b"][...] = 0
        return dx

    def bind_backward(self, backend: Backend, dy: Array, ws: Workspace,
                      need_dx: bool) -> Optional[Tuple[Optional[Array], Callable[[], Any]]]:
        if self.frozen or self.fixed_bias:
            return None
        dx, args = self._backward_call(dy, ws, need_dx)
        run = backend.fast.bind("dense_backward", *args)
        return None if run is None else (dx, run)

    def _backward_frozen(self, backend, dy, ws, need_dx):
        """dx only (no dW, db): dz = dy * act'(z), (M, units), by the activation
        kernel, then dx = dz @ W^T, (M, n_in), one BLAS GEMM (np.matmul, as the
        kernels' own GEMMs). The kernel dense_backward always computes dW and db."""
        if not need_dx:
            return None
        y2, act = ws["y2"], self.run_activation
        dz = rows(dy, self.units)
        if act != "identity":
            dz = buffer(ws, "dz", y2.shape, self.dtype)
            backend.fast.activation_backward(rows(dy, self.units), y2, act, x=ws.get("preact"), out=dz)
        dx = buffer(ws, "dx", dy.shape[:-1] + (self.n_in,), self.dtype)
        np.matmul(dz, self.params["W"].T, out=rows(dx, self.n_in))
        return dx

    def config(self) -> Config:
        return {"kind": self.kind, "units": self.units, "activation": self.activation,
                "init": self.init if isinstance(self.init, str) else None,
                "l2": self.l2, "l1": self.l1, "input_dim": self.input_dim}


class Activation(Layer):
    """Activation layer ``y = activation(x)`` (softmax over the last axis).

    Parameters
    ----------
    activation : str
        Any activation of the catalogue.
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.Activation("gelu")
    Activation(activation='gelu')
    """

    kind = "Activation"

    def __init__(self, activation: str, name: Optional[str] = None) -> None:
        self.name = check_name(name)
        self.activation = activation_name(activation)
        self.run_activation = self.activation

    def forward(self, backend: Backend, x: Array, ws: Workspace, mode: Pass) -> Array:
        ws["x"] = x
        if self.run_activation == "identity":
            return x
        y = buffer(ws, "y", x.shape, self.dtype)
        if self.run_activation == "softmax":  # over the last axis
            backend.fast.activation_forward(rows(x, x.shape[-1]), "softmax", out=rows(y, y.shape[-1]))
        else:
            backend.fast.activation_forward(x, self.run_activation, out=y)
        return y

    def backward(self, backend: Backend, dy: Array, ws: Workspace, need_dx: bool) -> Optional[Array]:
        if self.run_activation == "identity":
            return dy
        dx = buffer(ws, "dx", dy.shape, self.dtype)
        width = dy.shape[-1]
        if self.run_activation == "softmax":
            backend.fast.activation_backward(rows(dy, width), rows(ws["y"], width), "softmax",
                                        out=rows(dx, width))
        else:
            backend.fast.activation_backward(dy, ws["y"], self.run_activation, x=ws["x"], out=dx)
        return dx

    def config(self) -> Config:
        return {"kind": self.kind, "activation": self.activation}


class BatchNorm(Layer):
    """Batch normalisation of the last axis over every other axis of the batch.

    The last axis is the features, or the channels of a channels-last image, as
    torch.nn.BatchNorm1d / BatchNorm2d: batch statistics in training, running
    statistics (updated with `momentum`) in inference. A training batch of one
    row has no batch statistics: it is normalised with the running ones, which it
    leaves unchanged. Parameters gamma, beta (C,); state running_mean,
    running_var (C,).

    Parameters
    ----------
    momentum : float, default 0.1
        The weight of a batch in the running statistics.
    eps : float, default 1e-5
        Added to the variance.
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.BatchNorm(momentum=0.01)
    BatchNorm(momentum=0.01, eps=1e-05)
    """

    kind = "BatchNorm"

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, name: Optional[str] = None) -> None:
        self.name = check_name(name)
        self.momentum = chk.real(momentum, "momentum", 0, 1)
        self.eps = chk.real(eps, "eps", low=0, low_open=True)

    def param_specs(self) -> List[TensorSpec]:
        c = self.input_shape[-1]
        return [("gamma", (c,), "scale"), ("beta", (c,), "shift")]

    def state_specs(self) -> List[StateSpec]:
        c = self.input_shape[-1]
        return [("running_mean", (c,), 0.0), ("running_var", (c,), 1.0)]

    def init_params(self, backend: Backend, rng: RandomState) -> None:
        self.params["gamma"][...] = 1
        self.params["beta"][...] = 0

    def forward(self, backend: Backend, x: Array, ws: Workspace, mode: Pass) -> Array:
        c = x.shape[-1]
        y = buffer(ws, "y", x.shape, self.dtype)
        x2 = rows(x, c)
        # momentum 0 leaves the running statistics as they are (used when a
        # caller such as L-BFGS evaluates the training loss repeatedly)
        momentum = (self.momentum if mode.momentum is None else mode.momentum) if mode.update_stats else 0.0
        _, ws["cache"] = backend.fast.batchnorm_forward(
            x2, self.params["gamma"], self.params["beta"], self.state["running_mean"],
            self.state["running_var"], mode.training and not self.frozen and x2.shape[0] > 1,
            momentum=momentum, eps=self.eps,
            out=rows(y, c))
        return y

    def backward(self, backend: Backend, dy: Array, ws: Workspace, need_dx: bool) -> Optional[Array]:
        c = dy.shape[-1]
        dx = buffer(ws, "dx", dy.shape, self.dtype)
        backend.fast.batchnorm_backward(rows(dy, c), ws["cache"], dx=rows(dx, c), dgamma=self.grads["gamma"],
                                   dbeta=self.grads["beta"])
        return dx

    def config(self) -> Config:
        return {"kind": self.kind, "momentum": self.momentum, "eps": self.eps}


class Dropout(Layer):
    """Inverted dropout in training (identity in inference).

    The mask comes from the kernels' counter-based generator; its seed is mixed
    from the model's seed, the model's count of training passes and this layer's
    position, so a run is reproducible and every backend draws the same mask.

    Parameters
    ----------
    rate : float
        The fraction of inputs dropped, in [0, 1).
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.Dropout(0.2)
    Dropout(rate=0.2)
    """

    kind = "Dropout"

    def __init__(self, rate: float, name: Optional[str] = None) -> None:
        self.name = check_name(name)
        self.rate = chk.real(rate, "rate", 0, 1, high_open=True)

    def forward(self, backend: Backend, x: Array, ws: Workspace, mode: Pass) -> Array:
        ws["active"] = active = mode.training and mode.dropout and self.rate > 0
        if not active:
            return x
        ws["seed"] = seed = mix64(mode.seed, self.index)
        y = buffer(ws, "y", x.shape, self.dtype)
        backend.fast.dropout_forward(x, self.rate, seed, out=y)
        return y

    def backward(self, backend: Backend, dy: Array, ws: Workspace, need_dx: bool) -> Optional[Array]:
        if not ws["active"]:
            return dy
        dx = buffer(ws, "dx", dy.shape, self.dtype)
        backend.fast.dropout_backward(dy, self.rate, ws["seed"], out=dx)
        return dx

    def config(self) -> Config:
        return {"kind": self.kind, "rate": self.rate}


class Flatten(Layer):
    """Flatten each sample: (N, d1, d2, ...) -> (N, d1 * d2 * ...), a view.

    Parameters
    ----------
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.Flatten().output_shape_for((8, 8, 4))
    (256,)
    """

    kind = "Flatten"

    def __init__(self, name: Optional[str] = None) -> None:
        self.name = check_name(name)

    def output_shape_for(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)

    def forward(self, backend: Backend, x: Array, ws: Workspace, mode: Pass) -> Array:
        return x.reshape(x.shape[0], -1)

    def backward(self, backend: Backend, dy: Array, ws: Workspace, need_dx: bool) -> Optional[Array]:
        return dy.reshape((dy.shape[0],) + self.input_shape)


LAYERS: Dict[str, Type[Layer]] = {}  # kind -> Layer subclass: the registry of the kinds `load` can rebuild


def register_layer(cls: Type[Layer]) -> Type[Layer]:
    """Register a Layer subclass under its `kind` (a class decorator).

    `Sequential.save` then writes such a layer (as its ``config()``) and `load`
    rebuilds it with ``cls(**options)``, the options being ``config()`` without
    ``'kind'``. The same class defined again (same module and name) replaces its
    earlier definition.

    The argument is a subclass of `Layer` that defines its own `kind`.

    Returns
    -------
    type
        The class itself.

    Raises
    ------
    TypeError
        If `cls` is not a subclass of Layer.
    ValueError
        If its kind is not a non-empty string of the class's own, or is
        registered for another class.

    Examples
    --------
    >>> from fastnn import nn
    >>> @nn.register_layer
    ... class Double(nn.Layer):
    ...     kind = "Double"
    ...     def forward(self, backend, x, ws, mode):
    ...         return 2 * x
    ...     def backward(self, backend, dy, ws, need_dx):
    ...         return 2 * dy
    >>> nn.Sequential([Double(), nn.Dense(1)], loss="mse", input_shape=3).predict([[1.0, 2.0, 3.0]]).shape
    (1, 1)
    """
    if not (isinstance(cls, type) and issubclass(cls, Layer)) or cls is Layer:
        raise TypeError(f"register_layer takes a subclass of fastnn.nn.Layer, got {cls!r}")
    kind = cls.__dict__.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"{cls.__qualname__} must define its own kind, a non-empty string naming it in "
                         f"saved files (it inherits kind={getattr(cls, 'kind', None)!r})")
    known = LAYERS.get(kind)
    # the same class defined again (a module reloaded, a notebook cell run again)
    # replaces the old one; another class may not take its kind
    redefined = known is not None and (known.__module__, known.__qualname__) == (cls.__module__,
                                                                                 cls.__qualname__)
    if known is not None and known is not cls and not redefined:
        raise ValueError(f"layer kind {kind!r} is already registered for "
                         f"{known.__module__}.{known.__qualname__}; give {cls.__module__}.{cls.__qualname__} "
                         "another kind")
    LAYERS[kind] = cls
    return cls


for _builtin in (Dense, Activation, BatchNorm, Dropout, Flatten):
    register_layer(_builtin)
del _builtin


def layer_from_config(config):
    """Rebuild a layer from its `config()` dict (used by `load`)."""
    if not isinstance(config, dict) or config.get("kind") not in LAYERS:
        raise ValueError(f"unknown layer description {config!r}; known kinds: {sorted(LAYERS)} (a custom "
                         "layer is known once its class is registered with @fastnn.nn.register_layer)")
    options = {k: v for k, v in config.items() if k not in ("kind", "name", "trainable")}
    try:
        layer = LAYERS[config["kind"]](**options)
    except TypeError as exc:
        if "argument" not in str(exc):  # a constructor's own check of a value
            raise
        raise ValueError(f"invalid options for a {config['kind']} layer: {exc}") from None
    layer.name = check_name(config.get("name"))
    layer.trainable = config.get("trainable", True)
    return layer


# ------------------------------------------------------------------ convolution
# Channels-last images: per-sample shape (H, W, C), batches (N, H, W, C).
def _image_shape(layer, input_shape):
    if len(input_shape) != 3:
        raise ValueError(f"{layer.kind} needs images (H, W, C) per sample, got input shape "
                         f"{tuple(input_shape)}")
    return input_shape


def _padding_arg(padding, window, name="padding"):
    """'valid' (none), 'same' (window // 2 on each side: the output keeps
    ceil(size / stride) cells, for odd windows only: the kernels pad both sides
    alike), an int or a pair of ints."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            if window[0] % 2 == 0 or window[1] % 2 == 0:
                raise ValueError(f"{name}='same' needs an odd window, got {window}: pad an even "
                                 "window with an int or a pair")
            return (window[0] // 2, window[1] // 2)
        raise ValueError(f"{name} must be 'valid', 'same', an int or a pair, got {padding!r}")
    return chk.pair(padding, name, low=0)


def _window_output(layer, input_shape, window, stride, padding, what):
    """(OH, OW) of windows over images of input_shape (ValueError when the window
    does not fit the padded image)."""
    h, w, _ = _image_shape(layer, input_shape)
    if h + 2 * padding[0] < window[0] or w + 2 * padding[1] < window[1]:
        raise ValueError(f"{layer.kind}'s {what} {window} is larger than the padded image "
                         f"({h + 2 * padding[0]}, {w + 2 * padding[1]})")
    return ((h + 2 * padding[0] - window[0]) // stride[0] + 1,
            (w + 2 * padding[1] - window[1]) // stride[1] + 1)


def _as_config(value):
    """A pair for a JSON description: a list (a string stays a string)."""
    return list(value) if isinstance(value, tuple) else value


class Conv2D(_Weighted):
    """Convolution ``y = activation(conv(x, W) + b)`` over channels-last images.

    It runs the fused conv2d_forward / conv2d_backward kernels (as
    torch.nn.Conv2d: cross-correlation with zero padding). W (kh, kw, C_in,
    filters), b (filters,). The initialisers see the layer as a dense layer over
    the windows: fan-in kh * kw * C_in, fan-out filters.

    Parameters
    ----------
    filters : int
        The output channels.
    kernel_size : int or (int, int)
        The window.
    strides : int or (int, int), default 1
        The step between windows.
    padding : {'valid', 'same'}, int or (int, int), default 'valid'
        'same' (odd kernels) gives outputs of ceil(size / stride).
    activation : str, optional
        Any activation of the catalogue (None: identity).
    init : str or callable, optional
        An initialiser name (glorot_uniform, glorot_normal, he_uniform,
        he_normal, lecun_normal, sklearn) or a callable ``(fan_in, fan_out, rng,
        dtype) -> (W, b)``; None picks one from the activation (He for the ReLU
        family, LeCun for selu, Glorot otherwise).
    l2 : float, default 0.0
        L2 penalty on W.
    l1 : float, default 0.0
        L1 penalty on W.
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.Conv2D(32, 3, padding="same").output_shape_for((28, 28, 1))
    (28, 28, 32)
    """

    gemms_on_own_threads = True

    kind = "Conv2D"

    def __init__(self, filters: int, kernel_size: IntPair, strides: IntPair = 1, padding: Padding = "valid",
                 activation: Optional[str] = None,
                 init: Union[str, Callable[..., Tuple[Array, Array]], None] = None, l2: float = 0.0,
                 l1: float = 0.0, name: Optional[str] = None) -> None:
        self.name = check_name(name)
        self.filters = chk.integer(filters, "filters", low=1)
        self.kernel_size = chk.pair(kernel_size, "kernel_size", low=1)
        self.strides = chk.pair(strides, "strides", low=1)
        self.padding = padding if isinstance(padding, str) else chk.pair(padding, "padding", low=0)
        self.pads = _padding_arg(padding, self.kernel_size)
        if self.pads[0] >= self.kernel_size[0] or self.pads[1] >= self.kernel_size[1]:
            raise ValueError(f"padding {self.pads} must be smaller than the kernel {self.kernel_size}")
        self._set_weight_options(activation, init, l2, l1)

    def output_shape_for(self, input_shape: Shape) -> Shape:
        oh, ow = _window_output(self, input_shape, self.kernel_size, self.strides, self.pads, "kernel")
        return (oh, ow, self.filters)

    def param_specs(self) -> List[TensorSpec]:
        kh, kw = self.kernel_size
        return [("W", (kh, kw, self.input_shape[-1], self.filters), "weight"),
                ("b", (self.filters,), "bias")]

    def init_params(self, backend: Backend, rng: RandomState) -> None:
        kh, kw = self.kernel_size
        W, b = self._initial_weights(backend, rng, kh * kw * self.input_shape[-1], self.filters)
        self.params["W"][...] = np.reshape(W, self.params["W"].shape)
        self.params["b"][...] = b

    def forward(self, backend: Backend, x: Array, ws: Workspace, mode: Pass) -> Array:
        y = buffer(ws, "y", x.shape[:1] + self.output_shape, self.dtype)
        preact = buffer(ws, "preact", y.shape, self.dtype) if self.run_activation in NEEDS_INPUT else None
        backend.fast.conv2d_forward(x, self.params["W"], self.params["b"], self.strides, self.pads,
                                    self.run_activation, out=y, preact=preact)
        ws["x"] = x
        return y

    def backward(self, backend: Backend, dy: Array, ws: Workspace, need_dx: bool) -> Optional[Array]:
        act = self.run_activation
        dz = None if act == "identity" else buffer(ws, "dz", dy.shape, self.dtype)
        dx = buffer(ws, "dx", ws["x"].shape, self.dtype) if need_dx else None
        backend.fast.conv2d_backward(dy, ws["x"], self.params["W"], ws["y"], act, self.strides,
                                     self.pads, preact=ws.get("preact"), need_dx=need_dx, dx=dx,
                                     dW=self.grads["W"], db=self.grads["b"], dz=dz)
        return dx

    def config(self) -> Config:
        return {"kind": self.kind, "filters": self.filters, "kernel_size": _as_config(self.kernel_size),
                "strides": _as_config(self.strides), "padding": _as_config(self.padding),
                "activation": self.activation, "init": self.init if isinstance(self.init, str) else None,
                "l2": self.l2, "l1": self.l1}


class MaxPool2D(Layer):
    """Max pooling: the maximum of each window, per channel (as torch.nn.MaxPool2d).

    It runs maxpool2d_forward / maxpool2d_backward; padded cells never win.

    Parameters
    ----------
    pool_size : int or (int, int), default 2
        The window.
    strides : int or (int, int), optional
        The step between windows (default: pool_size).
    padding : {'valid', 'same'}, int or (int, int), default 'valid'
        'same' (odd pools), or zeros on each side, at most half the pool.
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.MaxPool2D(2).output_shape_for((28, 28, 32))
    (14, 14, 32)
    """

    kind = "MaxPool2D"
    pool_kernel = "maxpool2d"

    def __init__(self, pool_size: IntPair = 2, strides: Optional[IntPair] = None, padding: Padding = "valid",
                 name: Optional[str] = None) -> None:
        self.name = check_name(name)
        self.pool_size = chk.pair(pool_size, "pool_size", low=1)
        self.strides = self.pool_size if strides is None else chk.pair(strides, "strides", low=1)
        self.padding = padding if isinstance(padding, str) else chk.pair(padding, "padding", low=0)
        self.pads = _padding_arg(padding, self.pool_size)
        if 2 * self.pads[0] > self.pool_size[0] or 2 * self.pads[1] > self.pool_size[1]:
            raise ValueError(f"padding {self.pads} must be at most half the pool {self.pool_size}")

    def output_shape_for(self, input_shape: Shape) -> Shape:
        oh, ow = _window_output(self, input_shape, self.pool_size, self.strides, self.pads, "pool")
        return (oh, ow, input_shape[-1])

    def forward(self, backend: Backend, x: Array, ws: Workspace, mode: Pass) -> Array:
        y = buffer(ws, "y", x.shape[:1] + self.output_shape, self.dtype)
        argmax = ws.get("argmax")
        if argmax is None:
            argmax = ws["argmax"] = np.empty(y.shape, np.int64)
        backend.fast.maxpool2d_forward(x, self.pool_size, self.strides, self.pads, out=y, argmax=argmax)
        ws.setdefault("x_shape", x.shape)  # one object per batch shape (backend.fast's memo)
        return y

    def backward(self, backend: Backend, dy: Array, ws: Workspace, need_dx: bool) -> Optional[Array]:
        dx = buffer(ws, "dx", ws["x_shape"], self.dtype)
        return backend.fast.maxpool2d_backward(dy, ws["argmax"], ws["x_shape"], dx=dx)

    def config(self) -> Config:
        return {"kind": self.kind, "pool_size": _as_config(self.pool_size),
                "strides": _as_config(self.strides), "padding": _as_config(self.padding)}


class AveragePooling2D(MaxPool2D):
    """Average pooling: the mean of each window, per channel (as torch.nn.AvgPool2d).

    Zero padding counts in the divisor. It runs avgpool2d_forward /
    avgpool2d_backward; the options are MaxPool2D's.

    Parameters
    ----------
    pool_size : int or (int, int), default 2
        The window.
    strides : int or (int, int), optional
        The step between windows (default: pool_size).
    padding : {'valid', 'same'}, int or (int, int), default 'valid'
        'same' (odd pools), or zeros on each side, at most half the pool.
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.AveragePooling2D(2).output_shape_for((8, 8, 3))
    (4, 4, 3)
    """

    kind = "AveragePooling2D"

    def forward(self, backend: Backend, x: Array, ws: Workspace, mode: Pass) -> Array:
        y = buffer(ws, "y", x.shape[:1] + self.output_shape, self.dtype)
        backend.fast.avgpool2d_forward(x, self.pool_size, self.strides, self.pads, out=y)
        ws.setdefault("x_shape", x.shape)
        return y

    def backward(self, backend: Backend, dy: Array, ws: Workspace, need_dx: bool) -> Optional[Array]:
        dx = buffer(ws, "dx", ws["x_shape"], self.dtype)
        return backend.fast.avgpool2d_backward(dy, ws["x_shape"], self.pool_size, self.strides, self.pads,
                                               dx=dx)


class GlobalAveragePooling2D(Layer):
    """Global average pooling: (N, H, W, C) -> (N, C), the mean over each image.

    It runs the average pooling kernels with the whole image as the window.

    Parameters
    ----------
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.GlobalAveragePooling2D().output_shape_for((7, 7, 64))
    (64,)
    """

    kind = "GlobalAveragePooling2D"

    def __init__(self, name: Optional[str] = None) -> None:
        self.name = check_name(name)

    def output_shape_for(self, input_shape: Shape) -> Shape:
        return (_image_shape(self, input_shape)[-1],)

    def forward(self, backend: Backend, x: Array, ws: Workspace, mode: Pass) -> Array:
        n, h, w, c = x.shape
        y = buffer(ws, "y", (n, 1, 1, c), self.dtype)
        ws.setdefault("window", (h, w))  # one object per batch shape (backend.fast's memo)
        backend.fast.avgpool2d_forward(x, ws["window"], ws["window"], (0, 0), out=y)
        ws.setdefault("x_shape", x.shape)
        return y.reshape(n, c)

    def backward(self, backend: Backend, dy: Array, ws: Workspace, need_dx: bool) -> Optional[Array]:
        dx = buffer(ws, "dx", ws["x_shape"], self.dtype)
        n, c = dy.shape
        return backend.fast.avgpool2d_backward(dy.reshape(n, 1, 1, c), ws["x_shape"], ws["window"],
                                               ws["window"], (0, 0), dx=dx)

    def config(self) -> Config:
        return {"kind": self.kind}


for _layer in (Conv2D, MaxPool2D, AveragePooling2D, GlobalAveragePooling2D):
    register_layer(_layer)
del _layer


# ------------------------------------------------------------------ recurrence
def orthogonal(rng, n, dtype):
    """An (n, n) orthogonal matrix (QR of a Gaussian one, signs fixed so that it is
    uniformly distributed): the usual initialisation of recurrent weights."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.where(np.diag(r) < 0, -1.0, 1.0)).astype(dtype)


class _Recurrent(Layer):
    """Base of SimpleRNN, LSTM and GRU: input (T, F) per sample, output (T, units)
    with return_sequences, else the last state (units,). Parameters W_x (F, G*units)
    and W_h (units, G*units) ("weight": Glorot uniform and orthogonal per gate),
    biases (G*units,) ("bias"); the kernels are `{kernel}_forward/backward` (see
    fastnn.backends.spec), with h0 (and c0) zero at the start of every batch."""

    gemms_on_own_threads = True

    gates = 1
    kernel = ""  # the kernels' prefix: rnn, lstm or gru
    biases: Tuple[str, ...] = ("b",)

    def __init__(self, units: int, return_sequences: bool = False, name: Optional[str] = None) -> None:
        self.name = check_name(name)
        self.units = chk.integer(units, "units", low=1)
        if not isinstance(return_sequences, (bool, np.bool_)):
            raise TypeError(f"return_sequences must be True or False, got {return_sequences!r}")
        self.return_sequences = bool(return_sequences)

    def output_shape_for(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 2:
            raise ValueError(f"{self.kind} needs sequences (T, features) per sample")
        return (input_shape[0], self.units) if self.return_sequences else (self.units,)

    def param_specs(self) -> List[TensorSpec]:
        f, h, g = self.input_shape[-1], self.units, self.gates
        return ([("W_x", (f, g * h), "weight"), ("W_h", (h, g * h), "weight")]
                + [(b, (g * h,), "bias") for b in self.biases])

    def init_params(self, backend: Backend, rng: RandomState) -> None:
        f, h = self.input_shape[-1], self.units
        W_x, _ = backend.init_weights("glorot_uniform", f, self.gates * h, rng=rng, dtype=self.dtype)
        self.params["W_x"][...] = W_x
        for k in range(self.gates):
            self.params["W_h"][:, k * h:(k + 1) * h] = orthogonal(rng, h, self.dtype)
        for b in self.biases:
            self.params[b][...] = 0

    def _options(self):
        return {}

    # the kernels' outputs (N, T, k * units) other than hs, {name: k} by kernel:
    # the cache's arrays
    cache_outputs = {"rnn": {}, "lstm": {"cs": 1, "gates": 4}, "gru": {"gates": 3, "hn": 1}}

    def _last_only(self):
        """Whether the kernels keep the last state only (hs and dhs (N, 1, H)):
        the LSTM's can, without return_sequences."""
        return self.kernel == "lstm" and not self.return_sequences

    def _workspace(self, ws, n, steps):
        """{name: array} of the forward's outputs for a batch of n sequences of
        `steps` steps (allocated once per batch shape, then reused: the cache of
        one forward holds them until its backward) and dz, the backward's workspace."""
        h, g = self.units, self.gates
        shapes = {"hs": (1 if self._last_only() else steps, h), "dz": (steps, g * h)}
        shapes.update({k: (steps, m * h) for k, m in self.cache_outputs[self.kernel].items()})
        return {k: buffer(ws, ("seq", k), (n, *shape), self.dtype) for k, shape in shapes.items()}

    def _forward_call(self, x, ws):
        """(y, the forward kernel's name, arguments and keywords) of a forward from
        x (N, T, F): y is hs (N, T, H), or with return_sequences False the last
        state (N, H): hs itself when the kernel keeps that only (hs (N, 1, H)),
        else a buffer it is copied into."""
        outs = self._workspace(ws, *x.shape[:2])
        outs.pop("dz")
        states = (None,) * (2 if self.kernel == "lstm" else 1)  # zero initial states
        args = (x, *states, self.params["W_x"], self.params["W_h"], *(self.params[b] for b in self.biases))
        options = {**self._options(), **outs}
        if self._last_only():
            options["return_sequences"] = False
            y = outs["hs"].reshape(x.shape[0], self.units)
        elif self.return_sequences:
            y = outs["hs"]
        else:
            y = buffer(ws, "y", (x.shape[0], self.units), self.dtype)
        return y, self.kernel + "_forward", args, options

    def _copies_last(self):
        """Whether y is a buffer the last state is copied into (_forward_call)."""
        return not self.return_sequences and not self._last_only()

    def forward(self, backend: Backend, x: Array, ws: Workspace, mode: Pass) -> Array:
        y, kernel, args, options = self._forward_call(x, ws)
        hs, ws["cache"] = getattr(backend.fast, kernel)(*args, **options)
        if self._copies_last():
            y[...] = hs[:, -1]
        return y

    def bind_forward(self, backend: Backend, x: Array,
                     ws: Workspace) -> Optional[Tuple[Array, Callable[[], Any]]]:
        y, kernel, args, options = self._forward_call(x, ws)
        run = backend.fast.bind(kernel, *args, **options)
        if run is None:
            return None
        if not self._copies_last():
            return y, run
        last = options["hs"][:, -1]

        def forward_last():
            run()
            y[...] = last
        return y, forward_last

    def _backward_call(self, dy, ws, need_dx):
        """(dhs, whether the caller sets dhs[:, -1] to dy, the backward kernel's
        name, arguments and keywords) of a backward from dy, the gradient of the
        output, which writes the parameters' gradients into the layer's own
        (grads). dhs is dy (N, T, H); without return_sequences, dy as (N, 1, H)
        when the kernel takes the last state's gradient alone (a buffer when dy
        is not contiguous), else a buffer (N, T, H), zeros but at the last step
        (the loss reads the last state only)."""
        cache = ws["cache"]
        fill = not self.return_sequences
        if self.return_sequences:
            dhs = dy
        elif self._last_only() and dy.flags.c_contiguous:
            dhs, fill = dy.reshape(dy.shape[0], 1, self.units), False
        else:
            dhs = ws.get("dhs")
            if dhs is None:
                dhs = ws["dhs"] = chk.zeros(cache.hs.shape, self.dtype)
        dz = self._workspace(ws, dhs.shape[0], cache.x.shape[1])["dz"]
        # no dx (nor its GEMM) below a first layer
        dx = buffer(ws, "dx", cache.x.shape, self.dtype) if need_dx else None
        grads = {"d" + name: self.grads[name] for name in ("W_x", "W_h") + self.biases}
        return (dhs, fill, self.kernel + "_backward", (dhs, cache),
                {"need_dx": need_dx, "dx": dx, "dz": dz, **grads})

    def backward(self, backend: Backend, dy: Array, ws: Workspace, need_dx: bool) -> Optional[Array]:
        dhs, fill, kernel, args, options = self._backward_call(dy, ws, need_dx)
        if fill:
            dhs[:, -1] = dy
        return getattr(backend.fast, kernel)(*args, **options)[0]

    def bind_backward(self, backend: Backend, dy: Array, ws: Workspace,
                      need_dx: bool) -> Optional[Tuple[Optional[Array], Callable[[], Any]]]:
        # bound to this step's cache: the forward bound to the same arrays fills
        # the same arrays at every step (spec.Cache's bindable). Frozen (above a
        # layer that trains): stepped through backward, whose gradients the
        # model zeroes (_frozen_grads), as Dense's
        if self.frozen:
            return None
        dhs, fill, kernel, args, options = self._backward_call(dy, ws, need_dx)
        run = backend.fast.bind(kernel, *args, **options)
        if run is None:
            return None
        if not fill:
            return options["dx"], run
        last = dhs[:, -1]

        def backward():
            last[...] = dy
            run()
        return options["dx"], backward

    def config(self) -> Config:
        return {"kind": self.kind, "units": self.units, "return_sequences": self.return_sequences,
                **self._options()}


class SimpleRNN(_Recurrent):
    """Simple recurrent layer ``h_t = activation(x_t W_x + h_(t-1) W_h + b)``.

    As torch.nn.RNN, whose two biases b is the sum of; inputs (N, T, F).

    Parameters
    ----------
    units : int
        The state's width H.
    activation : {'tanh', 'relu'}, default 'tanh'
        The activation.
    return_sequences : bool, default False
        Output every step's state (T, H) instead of the last one (H,).
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.SimpleRNN(16, return_sequences=True).output_shape_for((10, 8))
    (10, 16)
    """

    kind = "SimpleRNN"
    kernel = "rnn"

    def __init__(self, units: int, activation: Optional[str] = "tanh", return_sequences: bool = False,
                 name: Optional[str] = None) -> None:
        super().__init__(units, return_sequences, name)
        self.activation = rnn_activation_name(activation)

    def _options(self):
        return {"activation": self.activation}


class LSTM(_Recurrent):
    """Long short-term memory layer (torch.nn.LSTM's gates i, f, g, o).

    The forget gate's bias starts at 1 (so that the cell remembers from the
    start); inputs (N, T, F).

    Parameters
    ----------
    units : int
        The state's width H.
    return_sequences : bool, default False
        Output every step's state (T, H) instead of the last one (H,). Without
        it the layer keeps no other state for its backward, which rebuilds
        them from the gates and cells it keeps anyway.
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.LSTM(32).output_shape_for((10, 8))
    (32,)
    """

    kind = "LSTM"
    kernel = "lstm"
    gates = 4

    def init_params(self, backend: Backend, rng: RandomState) -> None:
        super().init_params(backend, rng)
        self.params["b"][self.units:2 * self.units] = 1


class GRU(_Recurrent):
    """Gated recurrent unit layer (torch.nn.GRU's gates r, z, n, biases b_x, b_h).

    Inputs (N, T, F).

    Parameters
    ----------
    units : int
        The state's width H.
    return_sequences : bool, default False
        Output every step's state (T, H) instead of the last one (H,).
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.GRU(32).output_shape_for((10, 8))
    (32,)
    """

    kind = "GRU"
    kernel = "gru"
    gates = 3
    biases = ("b_x", "b_h")


class Embedding(Layer):
    """Embedding layer: integer tokens (T,) per sample -> their vectors (T, output_dim).

    Row t of the output is W[token t], W (input_dim, output_dim) (N(0, 1) as
    torch.nn.Embedding). The gradient of W is a scatter-add of the output's
    gradient over the tokens. Tokens must lie in [0, input_dim) (checked by the
    model with the rest of its input); the layer must come first. Kernels
    embedding_forward and embedding_backward.

    Parameters
    ----------
    input_dim : int
        The number of distinct tokens.
    output_dim : int
        The vectors' width.
    name : str, optional
        The layer's name (default: the model gives a Keras-style one).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.Embedding(1000, 16).output_shape_for((20,))
    (20, 16)
    """

    kind = "Embedding"
    input_dtype = np.dtype(np.int64)

    def __init__(self, input_dim: int, output_dim: int, name: Optional[str] = None) -> None:
        self.name = check_name(name)
        self.input_dim = chk.integer(input_dim, "input_dim", low=1)
        self.output_dim = chk.integer(output_dim, "output_dim", low=1)

    def output_shape_for(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            raise ValueError("Embedding needs one sequence of tokens (T,) per sample")
        return input_shape + (self.output_dim,)

    def param_specs(self) -> List[TensorSpec]:
        return [("W", (self.input_dim, self.output_dim), "weight")]

    def init_params(self, backend: Backend, rng: RandomState) -> None:
        self.params["W"][...] = rng.standard_normal((self.input_dim, self.output_dim))

    def check_input(self, X: Array, name: str) -> Array:
        """Return `X` as a C-contiguous int64 array of tokens in [0, input_dim).

        Parameters
        ----------
        X : numpy.ndarray
            The model's input.
        name : str
            Its name in error messages.

        Returns
        -------
        numpy.ndarray
            The tokens, int64.

        Raises
        ------
        TypeError
            If `X` does not hold integers.
        ValueError
            If a token lies outside [0, input_dim).
        """
        if X.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer tokens for an Embedding, got dtype {X.dtype}")
        if X.size and (X.min() < 0 or X.max() >= self.input_dim):
            bad = X[(X < 0) | (X >= self.input_dim)][0]
            raise ValueError(f"{name} holds token {bad}, outside [0, {self.input_dim}) for an "
                             f"Embedding of input_dim {self.input_dim}")
        return np.ascontiguousarray(X, dtype=np.int64)

    def _forward_call(self, x, ws):
        # x (N, T) tokens (checked by check_input) -> y (N, T, D)
        y = buffer(ws, "y", x.shape + (self.output_dim,), self.dtype)
        ws["x"] = x
        return y, (x, self.params["W"])

    def forward(self, backend: Backend, x: Array, ws: Workspace, mode: Pass) -> Array:
        y, args = self._forward_call(x, ws)
        backend.fast.embedding_forward(*args, out=y)
        return y

    def bind_forward(self, backend: Backend, x: Array,
                     ws: Workspace) -> Optional[Tuple[Array, Callable[[], Any]]]:
        y, args = self._forward_call(x, ws)
        run = backend.fast.bind("embedding_forward", *args, out=y)
        return None if run is None else (y, run)

    def _backward_call(self, dy, ws):
        # dW (input_dim, output_dim): the scatter-add of dy (N, T, D) over the tokens
        return dy, ws["x"], self.params["W"].shape

    def backward(self, backend: Backend, dy: Array, ws: Workspace, need_dx: bool) -> Optional[Array]:
        backend.fast.embedding_backward(*self._backward_call(dy, ws), dW=self.grads["W"])
        return None

    def bind_backward(self, backend: Backend, dy: Array, ws: Workspace,
                      need_dx: bool) -> Optional[Tuple[Optional[Array], Callable[[], Any]]]:
        run = backend.fast.bind("embedding_backward", *self._backward_call(dy, ws), dW=self.grads["W"])
        return None if run is None else (None, run)

    def config(self) -> Config:
        return {"kind": self.kind, "input_dim": self.input_dim, "output_dim": self.output_dim}


for _layer in (SimpleRNN, LSTM, GRU, Embedding):  # type: ignore[assignment]
    register_layer(_layer)  # type: ignore[misc]
del _layer
