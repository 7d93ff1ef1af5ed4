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

import math
from typing import NamedTuple, Optional

import numpy as np

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
        a = ws[key] = np.empty(shape, dtype)
    return a


class Layer:
    """Base class. Subclasses define `kind`, `forward`, `backward`, `config` and,
    when they change the shape, `output_shape_for`; when they have parameters,
    `param_specs` and `init_params`."""

    kind = "Layer"
    # the dtype of the model's input when this layer comes first (None: the
    # model's float dtype); such a layer checks that input with check_input(X, name)
    input_dtype = None

    def build(self, input_shape, dtype):
        """Fix the per-sample input shape (a tuple); returns the output shape."""
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(self.output_shape_for(self.input_shape))
        self.dtype = np.dtype(dtype)
        return self.output_shape

    def output_shape_for(self, input_shape):
        """The per-sample output shape for this input shape (ValueError if the
        layer cannot take it)."""
        return input_shape

    def param_specs(self):
        """[(name, shape, role)] of trained parameters, role one of ROLES. Weights
        (the tensors L1/L2 penalties apply to) are laid out first in the model's
        flat buffer, then biases, scales and shifts."""
        return []

    def state_specs(self):
        """[(name, shape, initial value)] of non-trained state."""
        return []

    def bind(self, params, grads, state):
        """Receive {name: view} into the model's parameter, gradient and state buffers."""
        self.params, self.grads, self.state = params, grads, state

    def init_params(self, backend, rng):
        """Write initial values into the parameter views."""

    def config(self):
        return {"kind": self.kind}

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind")
        return f"{self.kind}({options})"


class Dense(Layer):
    """y = activation(x @ W + b), W (n_in, units), b (units,), through the fused
    dense_forward / dense_backward kernels.

    units: output width; activation: any name of the catalogue (None = identity);
    init: initialiser name (glorot_uniform/normal, he_uniform/normal, lecun_normal,
    sklearn) or a callable (fan_in, fan_out, rng, dtype) -> (W, b); None picks one
    from the activation (see default_init); l2, l1: penalty on W (not b);
    input_dim: the input width, for a first layer built before seeing data."""

    kind = "Dense"

    def __init__(self, units, activation=None, init=None, l2=0.0, l1=0.0, input_dim=None):
        self.units = chk.integer(units, "units", low=1)
        self.activation = activation_name("identity" if activation is None else activation)
        if init is not None and not callable(init):
            if not isinstance(init, str):
                raise TypeError(f"init must be an initialiser name or a callable, got {type(init).__name__}")
            init = chk.choice(INIT_ALIASES.get(init, init), "init", INITIALISERS)
        self.init = init
        self.l2 = chk.real(l2, "l2", low=0)
        self.l1 = chk.real(l1, "l1", low=0)
        self.input_dim = None if input_dim is None else chk.integer(input_dim, "input_dim", low=1)
        # The activation the kernels run: the model sets it to identity when the
        # loss applies this activation itself (softmax before cross-entropy).
        self.run_activation = self.activation
        # Set by the model when batch norm follows this layer directly and its
        # activation is the identity: batch norm subtracts the batch mean, so b has
        # no effect and its gradient is 0 up to rounding, which an adaptive
        # optimizer would amplify into a random walk. b then stays 0 (batch
        # norm's shift replaces it).
        self.fixed_bias = False

    def output_shape_for(self, input_shape):
        if not input_shape:
            raise ValueError("Dense needs inputs with at least one axis (features)")
        return input_shape[:-1] + (self.units,)

    @property
    def n_in(self):
        """The input width (fan-in): the last axis of the input shape."""
        return self.input_shape[-1]

    def param_specs(self):
        return [("W", (self.n_in, self.units), "weight"), ("b", (self.units,), "bias")]

    def init_params(self, backend, rng):
        if callable(self.init):
            W, b = self.init(self.n_in, self.units, rng, self.dtype)
        else:
            method = self.init or default_init(self.activation)
            W, b = backend.init_weights(method, self.n_in, self.units, rng=rng, dtype=self.dtype,
                                        activation=self.activation)
        self.params["W"][...] = W
        self.params["b"][...] = 0 if self.fixed_bias else b

    @property
    def W(self):
        return self.params["W"]

    @property
    def b(self):
        return self.params["b"]

    def forward(self, backend, x, ws, mode):
        # x (N, ..., n_in) -> y (N, ..., units); the kernel sees (M, n_in) -> (M, units)
        y = buffer(ws, "y", x.shape[:-1] + (self.units,), self.dtype)
        x2, y2 = rows(x, self.n_in), rows(y, self.units)
        preact = buffer(ws, "preact", y2.shape, self.dtype) if self.run_activation in NEEDS_INPUT else None
        backend.fast.dense_forward(x2, self.params["W"], self.params["b"], self.run_activation, out=y2,
                                   preact=preact)
        ws["x"], ws["y2"] = x2, y2
        return y

    def backward(self, backend, dy, ws, need_dx):
        x, y2 = ws["x"], ws["y2"]
        dy2 = rows(dy, self.units)
        act = self.run_activation
        dz = None if act == "identity" else buffer(ws, "dz", y2.shape, self.dtype)
        dx = buffer(ws, "dx", dy.shape[:-1] + (self.n_in,), self.dtype) if need_dx else None
        dx2 = None if dx is None else rows(dx, self.n_in)
        backend.fast.dense_backward(dy2, x, self.params["W"], y2, act, preact=ws.get("preact"),
                                    need_dx=need_dx, dx=dx2, dW=self.grads["W"], db=self.grads["b"], dz=dz)
        if self.fixed_bias:
            self.grads["b"][...] = 0
        return dx

    def config(self):
        return {"kind": self.kind, "units": self.units, "activation": self.activation,
                "init": self.init if isinstance(self.init, str) else None,
                "l2": self.l2, "l1": self.l1, "input_dim": self.input_dim}


class Activation(Layer):
    """y = activation(x), any activation of the catalogue (softmax over features)."""

    kind = "Activation"

    def __init__(self, activation):
        self.activation = activation_name(activation)
        self.run_activation = self.activation

    def forward(self, backend, x, ws, mode):
        ws["x"] = x
        if self.run_activation == "identity":
            return x
        y = buffer(ws, "y", x.shape, self.dtype)
        if self.run_activation == "softmax":  # over the last axis
            backend.fast.activation_forward(rows(x, x.shape[-1]), "softmax", out=rows(y, y.shape[-1]))
        else:
            backend.fast.activation_forward(x, self.run_activation, out=y)
        return y

    def backward(self, backend, dy, ws, need_dx):
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

    def config(self):
        return {"kind": self.kind, "activation": self.activation}


class BatchNorm(Layer):
    """Batch normalisation of the last axis (the features, or the channels of a
    channels-last image) over every other axis of the batch, as
    torch.nn.BatchNorm1d / BatchNorm2d: batch statistics in training, running
    statistics (updated with `momentum`) in inference. A training batch of one
    row has no batch statistics: it is normalised with the running ones, which it
    leaves unchanged. Parameters gamma, beta (C,); state running_mean,
    running_var (C,)."""

    kind = "BatchNorm"

    def __init__(self, momentum=0.1, eps=1e-5):
        self.momentum = chk.real(momentum, "momentum", 0, 1)
        self.eps = chk.real(eps, "eps", low=0, low_open=True)

    def param_specs(self):
        c = self.input_shape[-1]
        return [("gamma", (c,), "scale"), ("beta", (c,), "shift")]

    def state_specs(self):
        c = self.input_shape[-1]
        return [("running_mean", (c,), 0.0), ("running_var", (c,), 1.0)]

    def init_params(self, backend, rng):
        self.params["gamma"][...] = 1
        self.params["beta"][...] = 0

    def forward(self, backend, x, ws, mode):
        c = x.shape[-1]
        y = buffer(ws, "y", x.shape, self.dtype)
        x2 = rows(x, c)
        # momentum 0 leaves the running statistics as they are (used when a
        # caller such as L-BFGS evaluates the training loss repeatedly)
        momentum = (self.momentum if mode.momentum is None else mode.momentum) if mode.update_stats else 0.0
        _, ws["cache"] = backend.fast.batchnorm_forward(
            x2, self.params["gamma"], self.params["beta"], self.state["running_mean"],
            self.state["running_var"], mode.training and x2.shape[0] > 1, momentum=momentum, eps=self.eps,
            out=rows(y, c))
        return y

    def backward(self, backend, dy, ws, need_dx):
        c = dy.shape[-1]
        dx = buffer(ws, "dx", dy.shape, self.dtype)
        backend.fast.batchnorm_backward(rows(dy, c), ws["cache"], dx=rows(dx, c), dgamma=self.grads["gamma"],
                                   dbeta=self.grads["beta"])
        return dx

    def config(self):
        return {"kind": self.kind, "momentum": self.momentum, "eps": self.eps}


class Dropout(Layer):
    """Inverted dropout in training (identity in inference). The mask comes from the
    kernels' counter-based generator; its seed is mixed from the model's seed, the
    model's count of training passes and this layer's position, so a run is
    reproducible and every backend draws the same mask."""

    kind = "Dropout"

    def __init__(self, rate):
        self.rate = chk.real(rate, "rate", 0, 1, high_open=True)

    def forward(self, backend, x, ws, mode):
        ws["active"] = active = mode.training and mode.dropout and self.rate > 0
        if not active:
            return x
        ws["seed"] = seed = mix64(mode.seed, self.index)
        y = buffer(ws, "y", x.shape, self.dtype)
        backend.fast.dropout_forward(x, self.rate, seed, out=y)
        return y

    def backward(self, backend, dy, ws, need_dx):
        if not ws["active"]:
            return dy
        dx = buffer(ws, "dx", dy.shape, self.dtype)
        backend.fast.dropout_backward(dy, self.rate, ws["seed"], out=dx)
        return dx

    def config(self):
        return {"kind": self.kind, "rate": self.rate}


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...), in C order (a view, no copy)."""

    kind = "Flatten"

    def output_shape_for(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, backend, x, ws, mode):
        return x.reshape(x.shape[0], -1)

    def backward(self, backend, dy, ws, need_dx):
        return dy.reshape((dy.shape[0],) + self.input_shape)


LAYERS = {cls.kind: cls for cls in (Dense, Activation, BatchNorm, Dropout, Flatten)}


def layer_from_config(config):
    """Rebuild a layer from its `config()` dict (used by `load`)."""
    if not isinstance(config, dict) or config.get("kind") not in LAYERS:
        raise ValueError(f"unknown layer description {config!r}; known kinds: {sorted(LAYERS)}")
    options = {k: v for k, v in config.items() if k != "kind"}
    try:
        return LAYERS[config["kind"]](**options)
    except TypeError as exc:
        if "argument" not in str(exc):  # a constructor's own check of a value
            raise
        raise ValueError(f"invalid options for a {config['kind']} layer: {exc}") from None


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
    biases (G*units,) ("bias"); the kernels are `{name}_forward/backward` (see
    fastnn.backends.spec), with h0 (and c0) zero at the start of every batch."""

    gates = 1
    name = ""
    biases = ("b",)

    def __init__(self, units, return_sequences=False):
        self.units = chk.integer(units, "units", low=1)
        if not isinstance(return_sequences, (bool, np.bool_)):
            raise TypeError(f"return_sequences must be True or False, got {return_sequences!r}")
        self.return_sequences = bool(return_sequences)

    def output_shape_for(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{self.kind} needs sequences (T, features) per sample")
        return (input_shape[0], self.units) if self.return_sequences else (self.units,)

    def param_specs(self):
        f, h, g = self.input_shape[-1], self.units, self.gates
        return ([("W_x", (f, g * h), "weight"), ("W_h", (h, g * h), "weight")]
                + [(b, (g * h,), "bias") for b in self.biases])

    def init_params(self, backend, rng):
        f, h = self.input_shape[-1], self.units
        W_x, _ = backend.init_weights("glorot_uniform", f, self.gates * h, rng=rng, dtype=self.dtype)
        self.params["W_x"][...] = W_x
        for k in range(self.gates):
            self.params["W_h"][:, k * h:(k + 1) * h] = orthogonal(rng, h, self.dtype)
        for b in self.biases:
            self.params[b][...] = 0

    def _options(self):
        return {}

    def forward(self, backend, x, ws, mode):
        # x (N, T, F) -> hs (N, T, H); the last state (N, H) copied out when it alone is the output
        kernel = getattr(backend.fast, self.name + "_forward")
        states = (None,) * (2 if self.name == "lstm" else 1)
        biases = [self.params[b] for b in self.biases]
        hs, ws["cache"] = kernel(x, *states, self.params["W_x"], self.params["W_h"], *biases,
                                 **self._options())
        if self.return_sequences:
            return hs
        y = buffer(ws, "y", (x.shape[0], self.units), self.dtype)
        y[...] = hs[:, -1]
        return y

    def backward(self, backend, dy, ws, need_dx):
        cache = ws["cache"]
        if self.return_sequences:
            dhs = dy
        else:  # the loss reads the last state only: zero gradient at the other steps
            dhs = ws.get("dhs")
            if dhs is None:
                dhs = ws["dhs"] = np.zeros(cache.hs.shape, self.dtype)
            dhs[:, -1] = dy
        grads = getattr(backend.fast, self.name + "_backward")(dhs, cache)
        names = ("W_x", "W_h") + self.biases  # the last results; before them dx, dh0 (, dc0)
        for name, g in zip(names, grads[-len(names):]):
            self.grads[name][...] = g
        return grads[0]

    def config(self):
        return {"kind": self.kind, "units": self.units, "return_sequences": self.return_sequences,
                **self._options()}


class SimpleRNN(_Recurrent):
    """h_t = activation(x_t W_x + h_{t-1} W_h + b), activation tanh or relu (as
    torch.nn.RNN, whose two biases b is the sum of)."""

    kind = "SimpleRNN"
    name = "rnn"

    def __init__(self, units, activation="tanh", return_sequences=False):
        super().__init__(units, return_sequences)
        self.activation = rnn_activation_name(activation)

    def _options(self):
        return {"activation": self.activation}


class LSTM(_Recurrent):
    """Long short-term memory (torch.nn.LSTM's gates i, f, g, o); the forget gate's
    bias starts at 1 (so that the cell remembers from the start)."""

    kind = "LSTM"
    name = "lstm"
    gates = 4

    def init_params(self, backend, rng):
        super().init_params(backend, rng)
        self.params["b"][self.units:2 * self.units] = 1


class GRU(_Recurrent):
    """Gated recurrent unit (torch.nn.GRU's gates r, z, n and its two biases b_x, b_h)."""

    kind = "GRU"
    name = "gru"
    gates = 3
    biases = ("b_x", "b_h")


class Embedding(Layer):
    """Integer tokens (T,) per sample -> their vectors (T, output_dim): row t of
    the output is W[token t], W (input_dim, output_dim) ("weight", N(0, 1) as
    torch.nn.Embedding). The gradient of W is a scatter-add of the output's
    gradient over the tokens. Tokens must lie in [0, input_dim) (checked by the
    model with the rest of its input); the layer must come first.
    (In NumPy here, not a catalogue kernel.)"""

    kind = "Embedding"
    input_dtype = np.dtype(np.int64)

    def __init__(self, input_dim, output_dim):
        self.input_dim = chk.integer(input_dim, "input_dim", low=1)
        self.output_dim = chk.integer(output_dim, "output_dim", low=1)

    def output_shape_for(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError("Embedding needs one sequence of tokens (T,) per sample")
        return input_shape + (self.output_dim,)

    def param_specs(self):
        return [("W", (self.input_dim, self.output_dim), "weight")]

    def init_params(self, backend, rng):
        self.params["W"][...] = rng.standard_normal((self.input_dim, self.output_dim))

    def check_input(self, X, name):
        """X as a C-contiguous int64 array of tokens in [0, input_dim)."""
        if X.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer tokens for an Embedding, got dtype {X.dtype}")
        if X.size and (X.min() < 0 or X.max() >= self.input_dim):
            bad = X[(X < 0) | (X >= self.input_dim)][0]
            raise ValueError(f"{name} holds token {bad}, outside [0, {self.input_dim}) for an "
                             f"Embedding of input_dim {self.input_dim}")
        return np.ascontiguousarray(X, dtype=np.int64)

    def forward(self, backend, x, ws, mode):
        # x (N, T) tokens -> y (N, T, D)
        y = buffer(ws, "y", x.shape + (self.output_dim,), self.dtype)
        np.take(self.params["W"], x, axis=0, out=y, mode="clip")  # tokens checked: clip is no-op
        ws["x"] = x
        return y

    def backward(self, backend, dy, ws, need_dx):
        dW = self.grads["W"]
        dW[...] = 0
        np.add.at(dW, ws["x"].reshape(-1), dy.reshape(-1, self.output_dim))
        return None

    def config(self):
        return {"kind": self.kind, "input_dim": self.input_dim, "output_dim": self.output_dim}


LAYERS.update({cls.kind: cls for cls in (SimpleRNN, LSTM, GRU, Embedding)})
