"""Bad input: every public kernel rejects it with a ValueError or TypeError that
names the argument, before any implementation (`_name`) runs, and without writing
to any array it was given.

Each kernel has one valid call (SPECS). The bad calls are that valid call with one
thing changed: generic changes derived from the role of each array argument
(input, state updated in place, output buffer), and hand-written ones (CASES).
Every bad call runs on every available backend, in float32 and float64, and on a
"tripwire" subclass of that backend whose implementations raise AssertionError.
"""

import math
import re
import types
from typing import Callable, NamedTuple

import numpy as np
import pytest

import fastnn
from fastnn.backends.reference import ACTIVATIONS, KERNELS, NumpyBackend
from fastnn.backends.spec import DECLARATIONS

BACKENDS = fastnn.available_backends()
DTYPES = [np.float32, np.float64]
N, IN, OUT = 4, 3, 5  # samples, input features, outputs (classes, channels)


def other(dtype):
    """The other float dtype: mixing it into a call is an error."""
    return np.float64 if np.dtype(dtype) == np.float32 else np.float32


def rand(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def labels(n=N, c=OUT):
    return np.arange(n) % c


# ------------------------------------------------------------------ valid calls
class Spec(NamedTuple):
    """A valid call of `method`: build(dtype) -> keyword arguments.

    anchor: the array whose dtype the call works in (a mismatch is reported
    against the other arrays, so it gets no mixed-dtype case of its own);
    inputs: float arrays only read; states: arrays updated in place;
    outs: output buffers."""

    method: str
    build: Callable
    anchor: str = ""
    inputs: tuple = ()
    states: tuple = ()
    outs: tuple = ()


SIZES = {"N": N, "I": IN, "O": OUT, "C": OUT, "K": OUT}


def _specs():
    """One valid call per declared kernel (its example in fastnn.backends.spec) and
    per declared variant, with the roles of its arrays from the declaration; a
    variant lists only the arrays it uses and the plain call does not."""
    specs = {}
    for name, k in DECLARATIONS.items():
        base = k.roles(k.example(np.float64, sizes=SIZES))
        specs[name] = Spec(name, lambda d, k=k: k.example(d, sizes=SIZES), **base)
        for variant in k.variants:
            roles = k.roles(k.example(np.float64, variant, sizes=SIZES))
            new = {r: tuple(a for a in roles[r] if a not in base[r])
                   for r in ("inputs", "states", "outs")}
            specs[f"{name}-{variant}"] = Spec(
                name, lambda d, k=k, v=variant: k.example(d, v, sizes=SIZES),
                anchor=roles["anchor"], **new)
    return specs


SPECS = _specs()


# ------------------------------------------------------------------- bad calls
class Case(NamedTuple):
    spec: str
    change: Callable  # change(kw, dtype): turns the valid keyword arguments into bad ones
    error: type
    name: str  # the argument the error message must name
    value: bool = False  # found by scanning values: backend.fast leaves it to its callers


CASES = {}  # id -> Case


def case(spec, what, error, name, value=False, **changes):
    """A bad call: SPECS[spec] with the arguments in `changes` replaced; a value
    that is callable is called with the dtype."""
    def change(kw, dtype):
        for key, value in changes.items():
            kw[key] = value(dtype) if isinstance(value, types.FunctionType) else value
    CASES[f"{spec}[{what}]"] = Case(spec, change, error, name, value)


def noncontiguous(a):
    """A strided view with the shape and values of `a` (last axis of length >= 2)."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def unaligned(a):
    """A C-contiguous copy of `a` whose data starts one byte past an aligned address."""
    raw = np.zeros(a.nbytes + 1, np.uint8)
    b = np.ndarray(a.shape, a.dtype, buffer=raw.data, offset=1)
    b[...] = a
    return b


def longer(a):
    """A zero array like `a` with one more element on its last axis."""
    return np.zeros(a.shape[:-1] + (a.shape[-1] + 1,), a.dtype)


def generic_case(spec, what, error, name, transform):
    def change(kw, dtype):
        kw[name] = transform(kw[name])
    CASES[f"{spec}[{name}-{what}]"] = Case(spec, change, error, name)


def _generic_cases():
    for spec_id, spec in SPECS.items():
        for name in spec.inputs + spec.states + spec.outs:
            generic_case(spec_id, "list", TypeError, name, lambda a: a.tolist())
            if name != spec.anchor:
                generic_case(spec_id, "mixed-dtype", TypeError, name, lambda a: a.astype(other(a.dtype)))
        for name in spec.inputs + spec.states:
            generic_case(spec_id, "int", TypeError, name, lambda a: np.round(a).astype(np.int64))
            generic_case(spec_id, "float16", TypeError, name, lambda a: a.astype(np.float16))
            generic_case(spec_id, "byteswapped", TypeError, name,
                         lambda a: a.astype(a.dtype.newbyteorder()))
        for name in spec.states + spec.outs:
            if name != spec.anchor:  # the anchor's shape is the one the others must match
                generic_case(spec_id, "wrong-shape", ValueError, name, longer)
            generic_case(spec_id, "noncontiguous", ValueError, name, noncontiguous)
            generic_case(spec_id, "readonly", ValueError, name, readonly)
            generic_case(spec_id, "unaligned", ValueError, name, unaligned)


_generic_cases()

nan, inf = float("nan"), float("inf")

# activations
case("activation_forward", "unknown-activation", ValueError, "activation", activation="swish")
case("activation_forward", "activation-not-str", TypeError, "activation", activation=3)
case("activation_forward", "softmax-1d", ValueError, "x", activation="softmax", x=lambda d: rand(OUT, d),
     out=lambda d: np.empty(OUT, d))
case("activation_backward", "gelu-without-x", ValueError, "x", x=None)
case("activation_backward", "dy-shape", ValueError, "dy", dy=lambda d: rand((N + 1, OUT), d))
case("activation_backward", "x-shape", ValueError, "x", x=lambda d: rand((N, OUT + 1), d))
case("activation_backward", "unknown-activation", ValueError, "activation", activation="swish")
case("activation_backward", "softmax-1d", ValueError, "y", activation="softmax", y=lambda d: rand(OUT, d),
     dy=lambda d: rand(OUT, d), out=lambda d: np.empty(OUT, d))

# dense
case("dense_forward", "x-features", ValueError, "x", x=lambda d: rand((N, IN + 1), d))
case("dense_forward", "x-1d", ValueError, "x", x=lambda d: rand(IN, d))
case("dense_forward", "W-1d", ValueError, "W", W=lambda d: rand(IN, d))
case("dense_forward", "W-rows", ValueError, "x", W=lambda d: rand((IN + 1, OUT), d))
case("dense_forward", "b-length", ValueError, "b", b=lambda d: rand(OUT + 1, d))
case("dense_forward", "b-2d", ValueError, "b", b=lambda d: rand((1, OUT), d))
case("dense_forward", "unknown-activation", ValueError, "activation", activation="swish")
case("dense_forward", "activation-none", TypeError, "activation", activation=None)
case("dense_backward", "dy-batch", ValueError, "dy", dy=lambda d: rand((N + 1, OUT), d))
case("dense_backward", "y-batch", ValueError, "y", y=lambda d: rand((N - 1, OUT), d))
case("dense_backward", "x-features", ValueError, "x", x=lambda d: rand((N, IN + 1), d))
case("dense_backward", "W-columns", ValueError, "dy", W=lambda d: rand((IN, OUT + 1), d))
case("dense_backward", "W-1d", ValueError, "W", W=lambda d: rand(IN, d))
case("dense_backward", "unknown-activation", ValueError, "activation", activation="swish")
case("dense_backward-gelu", "without-preact", ValueError, "preact", preact=None)
case("dense_backward-gelu", "preact-shape", ValueError, "preact", preact=lambda d: rand((N, OUT + 1), d))

# losses
for _spec in ("softmax_cross_entropy", "sigmoid_binary_cross_entropy", "squared_error",
              "absolute_error", "huber", "hinge"):
    case(_spec, "weight-nan", ValueError, "sample_weight", value=True,
         sample_weight=lambda d: np.array([1, nan, 1, 1], d))
    case(_spec, "weight-inf", ValueError, "sample_weight", value=True,
         sample_weight=lambda d: np.array([1, 1, inf, 1], d))
    case(_spec, "weight-negative", ValueError, "sample_weight", value=True,
         sample_weight=lambda d: np.array([1, -0.5, 1, 1], d))
    case(_spec, "weight-zero-total", ValueError, "sample_weight", value=True,
     sample_weight=lambda d: np.zeros(N, d))
    case(_spec, "weight-batch", ValueError, "sample_weight", sample_weight=lambda d: np.ones(N + 1, d))
    case(_spec, "weight-2d", ValueError, "sample_weight", sample_weight=lambda d: np.ones((N, 1), d))
    case(_spec, "weight-list", TypeError, "sample_weight", sample_weight=[1.0] * N)
for _spec in ("sigmoid_binary_cross_entropy", "squared_error", "absolute_error", "huber", "hinge"):
    _output = SPECS[_spec].anchor
    case(_spec, "targets-batch", ValueError, "targets", targets=lambda d: np.ones((N + 1, OUT), d))
    case(_spec, "targets-1d", ValueError, "targets", targets=lambda d: np.ones(N, d))
    case(_spec, "targets-nan", ValueError, "targets", value=True, targets=lambda d: np.full((N, OUT), nan, d))
    case(_spec, "targets-inf", ValueError, "targets", value=True, targets=lambda d: np.full((N, OUT), inf, d))
    case(_spec, f"{_output}-3d", ValueError, _output, **{_output: lambda d: rand((N, OUT, 1), d)})
case("softmax_cross_entropy", "label-negative", ValueError, "targets", value=True,
     targets=np.array([0, -1, 2, 1]))
case("softmax_cross_entropy", "label-equal-to-C", ValueError, "targets", value=True,
     targets=np.array([0, OUT, 2, 1]))
case("softmax_cross_entropy", "label-large", ValueError, "targets", value=True,
     targets=np.array([0, 1, 2**40, 1]))
case("softmax_cross_entropy", "float-labels", TypeError, "targets",
     targets=lambda d: np.array([0, 1, 2, 1], d))
case("softmax_cross_entropy", "bool-labels", TypeError, "targets", targets=np.array([0, 1, 1, 0], bool))
case("softmax_cross_entropy", "labels-batch", ValueError, "targets", targets=labels(N + 1))
case("softmax_cross_entropy", "labels-list", TypeError, "targets", targets=[0, 1, 2, 1])
case("softmax_cross_entropy", "logits-1d", ValueError, "logits", logits=lambda d: rand(N, d))
case("softmax_cross_entropy", "logits-list", TypeError, "logits", logits=[[0.0] * OUT] * N)
case("softmax_cross_entropy-probabilities", "targets-nan", ValueError, "targets", value=True,
     targets=lambda d: np.full((N, OUT), nan, d))
case("softmax_cross_entropy-probabilities", "targets-classes", ValueError, "targets",
     targets=lambda d: np.full((N, OUT + 1), 1 / (OUT + 1), d))
case("softmax_cross_entropy-probabilities", "targets-batch", ValueError, "targets",
     targets=lambda d: np.full((N + 1, OUT), 1 / OUT, d))
case("sigmoid_binary_cross_entropy", "targets-above-1", ValueError, "targets", value=True,
     targets=lambda d: np.full((N, OUT), 1.5, d))
case("sigmoid_binary_cross_entropy", "targets-below-0", ValueError, "targets", value=True,
     targets=lambda d: np.full((N, OUT), -0.01, d))
case("hinge", "targets-zero", ValueError, "targets", value=True, targets=lambda d: np.zeros((N, OUT), d))
case("hinge", "targets-01", ValueError, "targets", value=True,
     targets=lambda d: (np.arange(N * OUT) % 2).reshape(N, OUT).astype(d))
case("hinge", "targets-2", ValueError, "targets", value=True, targets=lambda d: np.full((N, OUT), 2.0, d))
case("huber", "delta-zero", ValueError, "delta", delta=0.0)
case("huber", "delta-negative", ValueError, "delta", delta=-1.0)
case("huber", "delta-nan", ValueError, "delta", delta=nan)
case("huber", "delta-str", TypeError, "delta", delta="1")

# batch norm
case("batchnorm_forward", "training-one-sample", ValueError, "x", x=lambda d: rand((1, OUT), d),
     out=lambda d: np.empty((1, OUT), d))
case("batchnorm_forward", "x-1d", ValueError, "x", x=lambda d: rand(OUT, d))
case("batchnorm_forward", "x-3d", ValueError, "x", x=lambda d: rand((N, OUT, 2), d))
case("batchnorm_forward", "gamma-length", ValueError, "gamma", gamma=lambda d: rand(OUT + 1, d))
case("batchnorm_forward", "beta-length", ValueError, "beta", beta=lambda d: rand(OUT - 1, d))
case("batchnorm_forward", "momentum-above-1", ValueError, "momentum", momentum=1.5)
case("batchnorm_forward", "momentum-negative", ValueError, "momentum", momentum=-0.1)
case("batchnorm_forward", "momentum-nan", ValueError, "momentum", momentum=nan)
case("batchnorm_forward", "eps-zero", ValueError, "eps", eps=0.0)
case("batchnorm_backward", "dy-batch", ValueError, "dy", dy=lambda d: rand((N + 1, OUT), d))
case("batchnorm_backward", "dy-channels", ValueError, "dy", dy=lambda d: rand((N, OUT + 1), d))
case("batchnorm_backward", "cache-tuple", TypeError, "cache",
     cache=lambda d: tuple(SPECS["batchnorm_backward"].build(d)["cache"]))


def _tampered_cache(**fields):
    """A BatchNormCache from a valid forward pass with some fields replaced."""
    return lambda d: SPECS["batchnorm_backward"].build(d)["cache"]._replace(
        **{k: (v(d) if isinstance(v, types.FunctionType) else v) for k, v in fields.items()})


case("batchnorm_backward", "cache-mean-length", ValueError, "cache.mean",
     cache=_tampered_cache(mean=lambda d: np.zeros(OUT - 1, d)))
case("batchnorm_backward", "cache-invstd-dtype", TypeError, "cache.invstd",
     cache=_tampered_cache(invstd=lambda d: np.ones(OUT, other(d))))
case("batchnorm_backward", "cache-gamma-list", TypeError, "cache.gamma",
     cache=_tampered_cache(gamma=[1.0] * OUT))
case("batchnorm_backward", "cache-x-1d", ValueError, "cache.x",
     cache=_tampered_cache(x=lambda d: rand(OUT, d)))

# dropout
for _spec in ("dropout_forward", "dropout_backward"):
    case(_spec, "rate-1", ValueError, "rate", rate=1.0)
    case(_spec, "rate-negative", ValueError, "rate", rate=-0.1)
    case(_spec, "rate-nan", ValueError, "rate", rate=nan)
    case(_spec, "rate-str", TypeError, "rate", rate="0.5")
    case(_spec, "seed-negative", ValueError, "seed", seed=-1)
    case(_spec, "seed-2**64", ValueError, "seed", seed=2**64)
    case(_spec, "seed-float", TypeError, "seed", seed=1.5)
    case(_spec, "seed-bool", TypeError, "seed", seed=True)

# weight penalty
case("weight_penalty", "l2-negative", ValueError, "l2", l2=-0.1)
case("weight_penalty", "l1-nan", ValueError, "l1", l1=nan)
case("weight_penalty", "param-shape", ValueError, "grad", param=lambda d: rand((IN, OUT + 1), d))

# optimizers
for _spec in ("sgd_step", "adagrad_step", "rmsprop_step", "adadelta_step", "adam_step"):
    case(_spec, "lr-negative", ValueError, "lr", lr=-0.1)
    case(_spec, "lr-nan", ValueError, "lr", lr=nan)
    case(_spec, "lr-inf", ValueError, "lr", lr=inf)
    case(_spec, "lr-str", TypeError, "lr", lr="0.1")
    case(_spec, "weight_decay-negative", ValueError, "weight_decay", weight_decay=-0.01)
    case(_spec, "grad-shape", ValueError, "grad", grad=lambda d: rand((2, OUT + 1), d))
    case(_spec, "param-readonly-view", ValueError, "param",
         param=lambda d: np.broadcast_to(np.ones(OUT, d), (2, OUT)))
case("sgd_step", "momentum-above-1", ValueError, "momentum", momentum=1.5)
case("sgd_step", "momentum-nan", ValueError, "momentum", momentum=nan)
case("sgd_step", "nesterov-without-momentum", ValueError, "nesterov", momentum=0.0)
case("sgd_step", "momentum-without-velocity", ValueError, "velocity", velocity=None)
case("adagrad_step", "eps-negative", ValueError, "eps", eps=-1e-10)
case("rmsprop_step", "alpha-above-1", ValueError, "alpha", alpha=1.5)
case("rmsprop_step", "momentum-above-1", ValueError, "momentum", momentum=2.0)
case("rmsprop_step", "momentum-without-buffer", ValueError, "momentum_buf", momentum_buf=None)
case("rmsprop_step", "centered-without-grad_avg", ValueError, "grad_avg", grad_avg=None)
case("rmsprop_step", "eps-negative", ValueError, "eps", eps=-1e-8)
case("adadelta_step", "rho-above-1", ValueError, "rho", rho=1.5)
case("adadelta_step", "eps-zero", ValueError, "eps", eps=0.0)
case("adam_step", "t-0", ValueError, "t", t=0)
case("adam_step", "t-negative", ValueError, "t", t=-3)
case("adam_step", "t-float", TypeError, "t", t=1.0)
case("adam_step", "beta1-1", ValueError, "beta1", beta1=1.0)
case("adam_step", "beta1-negative", ValueError, "beta1", beta1=-0.1)
case("adam_step", "beta2-1", ValueError, "beta2", beta2=1.0)
case("adam_step", "beta2-nan", ValueError, "beta2", beta2=nan)
case("adam_step", "eps-negative", ValueError, "eps", eps=-1e-8)
case("adam_step", "amsgrad-without-v_max", ValueError, "v_max", v_max=None)
case("adam_step", "t-2**63", ValueError, "t", t=2**63)

# dropout masks
case("dropout_mask", "shape-negative", ValueError, "shape", shape=(3, -2))
case("dropout_mask", "shape-str", TypeError, "shape", shape="ab")
case("dropout_mask", "shape-float", TypeError, "shape", shape=(2.0, 3))
case("dropout_mask", "shape-none", TypeError, "shape", shape=None)
case("dropout_mask", "rate-1", ValueError, "rate", rate=1.0)
case("dropout_mask", "seed-negative", ValueError, "seed", seed=-1)

# initialisers
case("init_weights", "unknown-method", ValueError, "method", method="orthogonal")
case("init_weights", "method-none", TypeError, "method", method=None)
case("init_weights", "fan_in-0", ValueError, "fan_in", fan_in=0)
case("init_weights", "fan_out-negative", ValueError, "fan_out", fan_out=-2)
case("init_weights", "fan_in-float", TypeError, "fan_in", fan_in=2.5)
case("init_weights", "dtype-int", TypeError, "dtype", dtype=np.int32)
case("init_weights", "dtype-float16", TypeError, "dtype", dtype=np.float16)
case("init_weights", "unknown-activation", ValueError, "activation", activation="swish")

# convolution and pooling (the example image is 5 x 6, the kernel 3 x 2)
case("conv2d_forward", "x-3d", ValueError, "x", x=lambda d: rand((N, 5, 6), d))
case("conv2d_forward", "W-channels", ValueError, "W", W=lambda d: rand((3, 2, OUT + 1, OUT), d))
case("conv2d_forward", "W-3d", ValueError, "W", W=lambda d: rand((3, 2, OUT), d))
case("conv2d_forward", "b-length", ValueError, "b", b=lambda d: rand(OUT + 1, d))
case("conv2d_forward", "kernel-larger-than-image", ValueError, "W",
     W=lambda d: rand((8, 2, OUT, OUT), d), padding=0)
case("conv2d_forward", "stride-0", ValueError, "stride", stride=0)
case("conv2d_forward", "stride-negative", ValueError, "stride", stride=(1, -1))
case("conv2d_forward", "stride-float", TypeError, "stride", stride=1.0)
case("conv2d_forward", "stride-triple", TypeError, "stride", stride=(1, 1, 1))
case("conv2d_forward", "padding-negative", ValueError, "padding", padding=-1)
case("conv2d_forward", "padding-kernel-size", ValueError, "padding", padding=(0, 2))
case("conv2d_forward", "out-shape", ValueError, "out", out=lambda d: np.empty((N, 5, 7, OUT), d))
case("conv2d_forward", "unknown-activation", ValueError, "activation", activation="swish")
case("conv2d_backward", "dy-shape", ValueError, "dy", dy=lambda d: rand((N, 3, 5, OUT), d))
case("conv2d_backward", "y-channels", ValueError, "y", y=lambda d: rand((N, 3, 7, OUT + 1), d))
case("conv2d_backward", "W-channels", ValueError, "W", W=lambda d: rand((3, 2, OUT - 1, OUT), d))
case("conv2d_backward", "padding-kernel-size", ValueError, "padding", padding=3)
case("conv2d_backward", "stride-0", ValueError, "stride", stride=(0, 1))
case("conv2d_backward-gelu", "without-preact", ValueError, "preact", preact=None)
for _spec in ("maxpool2d_forward", "avgpool2d_forward"):
    case(_spec, "x-2d", ValueError, "x", x=lambda d: rand((N, OUT), d))
    case(_spec, "pool-0", ValueError, "pool", pool=0)
    case(_spec, "pool-larger-than-image", ValueError, "pool", pool=7, padding=0)
    case(_spec, "pool-str", TypeError, "pool", pool="2")
    case(_spec, "stride-0", ValueError, "stride", stride=0)
    case(_spec, "padding-over-half-the-pool", ValueError, "padding", padding=(2, 1))
    case(_spec, "padding-negative", ValueError, "padding", padding=-1)
    case(_spec, "out-shape", ValueError, "out", out=lambda d: np.empty((N, 3, 4, OUT), d))
case("maxpool2d_forward", "argmax-int32", TypeError, "argmax",
     argmax=lambda d: np.empty((N, 2, 4, OUT), np.int32))
case("maxpool2d_backward", "argmax-above-range", ValueError, "argmax", value=True,
     argmax=lambda d: np.full((N, 2, 4, OUT), 30))
case("maxpool2d_backward", "argmax-negative", ValueError, "argmax", value=True,
     argmax=lambda d: np.full((N, 2, 4, OUT), -1, np.int32))
case("maxpool2d_backward", "argmax-float", TypeError, "argmax",
     argmax=lambda d: np.zeros((N, 2, 4, OUT), d))
case("maxpool2d_backward", "argmax-shape", ValueError, "argmax",
     argmax=lambda d: np.zeros((N, 2, 5, OUT), np.int64))
case("maxpool2d_backward", "argmax-list", TypeError, "argmax", argmax=[0] * N)
case("maxpool2d_backward", "x_shape-batch", ValueError, "x_shape", x_shape=(N + 1, 5, 6, OUT))
case("maxpool2d_backward", "x_shape-3d", TypeError, "x_shape", x_shape=(N, 5, 6))
case("maxpool2d_backward", "x_shape-negative", ValueError, "x_shape", x_shape=(N, -5, 6, OUT))
case("maxpool2d_backward", "x_shape-float", TypeError, "x_shape", x_shape=(N, 5.0, 6, OUT))
case("avgpool2d_backward", "dy-shape", ValueError, "dy", dy=lambda d: rand((N, 2, 3, OUT), d))
case("avgpool2d_backward", "x_shape-str", TypeError, "x_shape", x_shape="abcd")
case("avgpool2d_backward", "pool-larger-than-image", ValueError, "pool", pool=(6, 1), padding=0)
case("avgpool2d_backward", "padding-over-half-the-pool", ValueError, "padding", padding=2)
# recurrence: x (N, T, F) = (4, 3, 3), H = 2 (the declarations' example sizes)
T, F, H = 3, 3, 2
for _kind, _g in (("rnn", 1), ("lstm", 4), ("gru", 3)):
    _f, _b = f"{_kind}_forward", f"{_kind}_backward"
    case(_f, "x-2d", ValueError, "x", x=lambda d: rand((N, F), d))
    case(_f, "x-4d", ValueError, "x", x=lambda d: rand((N, T, F, 1), d))
    case(_f, "W_h-gate-width", ValueError, "W_h", W_h=lambda d, g=_g: rand((H, g * H + 1), d))
    case(_f, "W_h-1d", ValueError, "W_h", W_h=lambda d, g=_g: rand(g * H, d))
    case(_f, "W_x-gate-width", ValueError, "W_x", W_x=lambda d, g=_g: rand((F, (g + 1) * H), d))
    case(_f, "W_x-features", ValueError, "W_x", W_x=lambda d, g=_g: rand((F + 1, g * H), d))
    case(_f, "W_h-other-H", ValueError, "W_x", W_h=lambda d, g=_g: rand((H + 1, g * (H + 1)), d))
    case(_f, "h0-batch", ValueError, "h0", h0=lambda d: rand((N + 1, H), d))
    case(_f, "h0-units", ValueError, "h0", h0=lambda d: rand((N, H + 1), d))
    case(_b, "dhs-2d", ValueError, "dhs", dhs=lambda d: rand((N, H), d))
    # (the cache is checked first: its sizes are those dhs must have)
    case(_b, "dhs-steps", ValueError, "dhs", dhs=lambda d: rand((N, T + 1, H), d))
    case(_b, "dhs-units", ValueError, "dhs", dhs=lambda d: rand((N, T, H + 1), d))
    case(_b, "dhs-batch", ValueError, "dhs", dhs=lambda d: rand((N + 1, T, H), d))
    case(_b, "cache-tuple", TypeError, "cache",
         cache=lambda d, b=_b: tuple(SPECS[b].build(d)["cache"]))
    case(_b, "cache-of-another-dtype", TypeError, "dhs",
         cache=lambda d, b=_b: SPECS[b].build(other(d))["cache"])
    case(_b, "cache-W_h-gate-width", ValueError, "cache.W_h",
         cache=lambda d, b=_b, g=_g: SPECS[b].build(d)["cache"]._replace(W_h=rand((H, g * H + 1), d)))
case("rnn_forward", "activation-logistic", ValueError, "activation", activation="logistic")
case("rnn_forward", "activation-none", TypeError, "activation", activation=None)
case("rnn_backward", "cache-activation", ValueError, "activation",
     cache=lambda d: SPECS["rnn_backward"].build(d)["cache"]._replace(activation="gelu"))
case("lstm_forward", "c0-units", ValueError, "c0", c0=lambda d: rand((N, H + 1), d))
case("lstm_forward", "hs-of-every-step-for-the-last", ValueError, "hs", return_sequences=False,
     hs=lambda d: np.empty((N, T, H), d))
case("lstm_backward", "dhs-of-the-last-state-for-every-step", ValueError, "dhs",
     dhs=lambda d: rand((N, 1, H), d))
case("lstm_backward", "dhs-of-every-step-for-the-last-state", ValueError, "dhs",
     dhs=lambda d: rand((N, T, H), d),
     cache=lambda d: SPECS["lstm_backward"].build(d)["cache"]._replace(hs=rand((N, 1, H), d)))
case("lstm_backward", "cache-hs-steps", ValueError, "cache.hs", dhs=lambda d: rand((N, T - 1, H), d),
     cache=lambda d: SPECS["lstm_backward"].build(d)["cache"]._replace(hs=rand((N, T - 1, H), d)))
case("lstm_forward", "b-gate-width", ValueError, "b", b=lambda d: rand(3 * H, d))
case("lstm_backward", "cache-of-gru", TypeError, "cache",
     cache=lambda d: SPECS["gru_backward"].build(d)["cache"])
case("lstm_backward", "cache-gates-width", ValueError, "cache.gates",
     cache=lambda d: SPECS["lstm_backward"].build(d)["cache"]._replace(gates=rand((N, T, 3 * H), d)))
case("gru_forward", "b_h-gate-width", ValueError, "b_h", b_h=lambda d: rand(4 * H, d))
case("gru_backward", "cache-of-rnn", TypeError, "cache",
     cache=lambda d: SPECS["rnn_backward"].build(d)["cache"])


# --------------------------------------------------------------------- helpers
def arrays(value):
    """Every ndarray in an argument value (looking inside tuples such as the cache)."""
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in arrays(v)]
    return []


def tripwire(cls):
    """A subclass of backend class `cls` whose kernel implementations fail if called:
    a bad call must be rejected by the public method before any of them runs."""
    def tripped(kernel):
        def implementation(self, *args, **kwargs):
            raise AssertionError(f"_{kernel} ran")
        return implementation
    return type(f"Tripwire{cls.__name__}", (cls,), {"_" + k: tripped(k) for k in KERNELS})


TRIPWIRES = {name: tripwire(type(fastnn.get_backend(name)))() for name in BACKENDS}


def call(backend, spec, kw):
    return getattr(backend, spec.method)(**kw)


# ----------------------------------------------------------------------- tests
def test_every_kernel_has_bad_input_cases():
    assert {spec.method for spec in SPECS.values()} == set(KERNELS)
    assert {SPECS[c.spec].method for c in CASES.values()} == set(KERNELS)
    assert {c.spec for c in CASES.values()} <= set(SPECS)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_fast_backends_override_implementations_only(backend_name):
    """Validation lives in the public methods of NumpyBackend; a backend that
    replaced one would skip it."""
    cls = type(fastnn.get_backend(backend_name))
    for kernel in KERNELS:
        assert getattr(cls, kernel) is getattr(NumpyBackend, kernel), kernel


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("spec_id", sorted(SPECS))
def test_valid_call_runs(spec_id, dtype, backend_name):
    """The unchanged call of each spec is accepted, and on the tripwire it reaches
    an implementation (so the tripwire covers that kernel)."""
    spec = SPECS[spec_id]
    call(fastnn.get_backend(backend_name), spec, spec.build(dtype))
    with pytest.raises(AssertionError, match=f"_{spec.method} ran"):
        call(TRIPWIRES[backend_name], spec, spec.build(dtype))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input_is_rejected(case_id, dtype, backend_name):
    bad = CASES[case_id]
    spec = SPECS[bad.spec]
    match = rf"(?<![\w.]){re.escape(bad.name)}(?![\w.])"
    for backend in (fastnn.get_backend(backend_name), TRIPWIRES[backend_name]):
        # the public method, and backend.fast's: the same error
        fast = getattr(backend.fast, spec.method)
        for method in (getattr(backend, spec.method),) + (() if bad.value else (fast,)):
            kw = spec.build(dtype)
            bad.change(kw, dtype)
            given = [a for v in kw.values() for a in arrays(v)]
            before = [a.copy() for a in given]
            with pytest.raises(bad.error, match=match):
                method(**kw)
            for a, b in zip(given, before):  # nothing was written
                np.testing.assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_unaligned_inputs_are_copied_not_rejected(dtype, backend_name):
    backend = fastnn.get_backend(backend_name)
    x, W, b = rand((N, IN), dtype, 1), rand((IN, OUT), dtype, 2), rand(OUT, dtype, 3)
    expected = backend.dense_forward(x, W, b, "tanh")
    actual = backend.dense_forward(unaligned(x), unaligned(W), unaligned(b), "tanh")
    np.testing.assert_array_equal(actual, expected)


# NaN in the data of a valid call (not in targets or weights) is not an error: it
# flows through to the loss, where the fit loop detects divergence.
@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_nan_logits_give_nan_loss(dtype, backend_name):
    backend = fastnn.get_backend(backend_name)
    logits = rand((N, OUT), dtype)
    logits[1, 2] = np.nan
    for targets in (labels(), np.full((N, OUT), 1 / OUT, dtype)):
        loss, grad = backend.softmax_cross_entropy(logits, targets)
        assert np.isnan(loss)
        assert np.isnan(grad[1]).all() and np.isfinite(np.delete(grad, 1, axis=0)).all()
    for name in ("sigmoid_binary_cross_entropy", "squared_error", "absolute_error", "huber"):
        loss, grad = getattr(backend, name)(logits, np.full((N, OUT), 0.5, dtype))
        assert np.isnan(loss), name
        assert np.isnan(grad[1, 2]), name
    loss, _ = backend.hinge(logits, np.ones((N, OUT), dtype))
    assert np.isnan(loss)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_nan_propagates_through_layers_and_steps(dtype, backend_name):
    backend = fastnn.get_backend(backend_name)
    x, W = rand((N, IN), dtype, 1), rand((IN, OUT), dtype, 2)
    x[2, 0] = np.nan
    y = backend.dense_forward(x, W, None, "tanh")
    assert np.isnan(y[2]).all() and np.isfinite(np.delete(y, 2, axis=0)).all()
    y, _ = backend.batchnorm_forward(x, np.ones(IN, dtype), np.zeros(IN, dtype), np.zeros(IN, dtype),
                                     np.ones(IN, dtype), training=True)
    assert np.isnan(y[:, 0]).all()
    param, grad = rand(OUT, dtype, 3), rand(OUT, dtype, 4)
    grad[1] = np.nan
    m, v = np.zeros(OUT, dtype), np.zeros(OUT, dtype)
    backend.adam_step(param, grad, m, v, 1, 1e-3)
    assert np.isnan(param[1]) and np.isfinite(np.delete(param, 1)).all()


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_nan_propagates_through_activations(activation, dtype, backend_name):
    """Forward only (alone and fused into the dense layer): the backward of
    relu-like activations maps a NaN input to a zero gradient, as PyTorch's does."""
    backend = fastnn.get_backend(backend_name)
    x = rand((N, OUT), dtype)
    x[1, 1] = np.nan
    y = backend.activation_forward(x, activation)
    assert np.isnan(y[1, 1])
    y = backend.dense_forward(x, rand((OUT, OUT), dtype, 1), rand(OUT, dtype, 2), activation)
    assert np.isnan(y[1]).all()


# ---------------------------------------------------------------- backend.fast
def flatten(result):
    """The arrays and numbers a call returned, in order (None kept)."""
    if isinstance(result, (tuple, list)):
        return [x for r in result for x in flatten(r)]
    return [result]


def assert_same(got, expected, what):
    assert len(got) == len(expected), what
    for g, e in zip(got, expected):
        if isinstance(e, np.ndarray):
            np.testing.assert_array_equal(g, e, strict=True, err_msg=what)
        elif isinstance(e, float):
            # a sum (loss, penalty): a vectorised reduction adds in an order that can
            # depend on the arrays' alignment, so two calls agree to rounding
            close = math.isclose(g, e, rel_tol=1e-13) or (g != g and e != e)
            assert type(g) is float and close, (what, g, e)
        else:
            assert type(g) is type(e) and (g == e or (g != g and e != e)), (what, g, e)


def copied(kw):
    out = {}
    for k, v in kw.items():
        if isinstance(v, np.ndarray):
            v = v.copy()
        elif isinstance(v, tuple) and hasattr(v, "_replace"):  # the batch-norm cache
            v = type(v)(*(f.copy() if isinstance(f, np.ndarray) else f for f in v))
        out[k] = v
    return out


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("spec_id", sorted(SPECS))
def test_fast_gives_the_public_result(spec_id, dtype, backend_name):
    """backend.fast.<kernel> on a valid call: the public method's result and
    writes, bit for bit, and (where the kernel has a fast path) without taking
    the public path."""
    spec = SPECS[spec_id]
    backend = fastnn.get_backend(backend_name)
    kw = spec.build(dtype)
    kw_fast = copied(kw)
    expected = call(backend, spec, kw)
    watched = type(backend)()  # a fresh instance whose public methods must not run

    def fell_back(*args, **kwargs):
        raise AssertionError(f"fast {spec.method} took the public path")
    if DECLARATIONS[spec.method].has_fast:
        setattr(watched, spec.method, fell_back)
    got = getattr(watched.fast, spec.method)(**kw_fast)
    assert_same(flatten(got), flatten(expected), spec_id)
    for name in kw:  # arrays updated in place
        assert_same(arrays(kw_fast[name]), arrays(kw[name]), f"{spec_id}: {name}")


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("spec_id", sorted(SPECS))
def test_fast_repeated_with_the_same_arrays_gives_the_public_result(spec_id, backend_name):
    """A second fast call with the very objects of the first skips the checks
    (the memo): the same result as the public method on the same inputs."""
    spec = SPECS[spec_id]
    backend = fastnn.get_backend(backend_name)
    kw = spec.build(np.float64)
    kw_fast = copied(kw)
    fast = type(backend)().fast  # its own memo
    getattr(fast, spec.method)(**kw_fast)
    for name, value in kw_fast.items():  # the state the first call left, for the reference
        if isinstance(value, np.ndarray):
            np.copyto(kw[name], value)
    expected = call(backend, spec, kw)
    got = getattr(fast, spec.method)(**kw_fast)
    assert_same(flatten(got), flatten(expected), spec_id)
    for name in kw:
        assert_same(arrays(kw_fast[name]), arrays(kw[name]), f"{spec_id}: {name}")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_fast_memo_checks_new_rates_and_steps(backend_name):
    """The memo's key leaves out a rate and a step count (new values every step):
    their ranges are checked on every call, and a new value gives the public result."""
    backend = fastnn.get_backend(backend_name)
    fast = type(backend)().fast
    p, g = rand(OUT, np.float64, 5), rand(OUT, np.float64, 6)
    m, v = np.zeros(OUT), np.zeros(OUT)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    for t, lr in ((1, 0.1), (2, 0.05), (3, 0.2)):
        fast.adam_step(p, g, m, v, t, lr, weight_decay=0.01)
        backend.adam_step(p2, g, m2, v2, t, lr, weight_decay=0.01)
        np.testing.assert_array_equal(p, p2)
    with pytest.raises(ValueError, match="lr"):
        fast.adam_step(p, g, m, v, 4, -0.1)
    with pytest.raises(ValueError, match="t"):
        fast.adam_step(p, g, m, v, 0, 0.1)
    np.testing.assert_array_equal(p, p2)


def test_fast_memo_keeps_no_array_alive():
    import gc
    import weakref

    fast = fastnn.backends.reference.NumpyBackend().fast
    x = rand((N, IN), np.float64, 1)
    ref = weakref.ref(x)
    out = fast.dense_forward(x, rand((IN, OUT), np.float64, 2), None, "tanh")
    assert out.shape == (N, OUT)
    del x
    gc.collect()
    assert ref() is None
    # and a new array at a recycled address is checked again
    with pytest.raises(ValueError, match="x"):
        fast.dense_forward(rand((N, IN + 1), np.float64, 1), rand((IN, OUT), np.float64, 2), None, "tanh")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_fast_takes_the_public_path_for_what_it_does_not_check(backend_name):
    """Non-contiguous or read-only inputs, outputs on an input, aliases, int
    scalars: the fast method gives the public result (copies, in place, ...)."""
    backend = fastnn.get_backend(backend_name)
    x, W, b = rand((N, IN), np.float64, 1), rand((IN, OUT), np.float64, 2), rand(OUT, np.float64, 3)
    expected = backend.dense_forward(x, W, b, "tanh")
    np.testing.assert_array_equal(backend.fast.dense_forward(noncontiguous(x), W, b, "tanh"), expected)
    np.testing.assert_array_equal(backend.fast.dense_forward(readonly(x), W, b, "sigmoid"),
                                  backend.dense_forward(x, W, b, "logistic"))
    y = x.copy()
    assert backend.fast.activation_forward(y, "tanh", out=y) is y  # in place
    np.testing.assert_array_equal(y, backend.activation_forward(x, "tanh"))
    buf = rand(2 * N * OUT, np.float64, 4)
    logits, grad = buf[:N * OUT].reshape(N, OUT), buf[3:3 + N * OUT].reshape(N, OUT)
    loss = backend.softmax_cross_entropy(logits.copy(), labels())[0]
    assert backend.fast.softmax_cross_entropy(logits, labels(), grad=grad)[0] == loss
    p, g = rand(OUT, np.float64, 5), rand(OUT, np.float64, 6)
    p2, m, v, m2, v2 = p.copy(), np.zeros(OUT), np.zeros(OUT), np.zeros(OUT), np.zeros(OUT)
    backend.adam_step(p, g, m, v, 1, 1)  # lr an int
    backend.fast.adam_step(p2, g, m2, v2, 1, 1)
    np.testing.assert_array_equal(p2, p)


def test_fast_is_cached_per_backend_and_named():
    backend = fastnn.get_backend("numpy")
    assert backend.fast is backend.fast
    assert set(KERNELS) <= set(vars(backend.fast))
    assert "def dense_forward(" in fastnn.backends.spec.source("dense_forward", fast=True)


# ------------------------------------------------------------- the fuzz holes
@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("spec_id", sorted(SPECS))
def test_read_only_inputs_work(spec_id, dtype, backend_name):
    """Every array a kernel only reads may be read-only (as NumPy's own functions
    allow): the result of the writeable call (numba once failed to type a
    read-only dy of an identity dense backward)."""
    spec = SPECS[spec_id]
    backend = fastnn.get_backend(backend_name)
    kw = spec.build(dtype)
    expected = call(backend, spec, copied(kw))
    rtol = 1e-6 if dtype == np.float32 else 1e-13  # Numba compiles another loop for it:
    for name in spec.inputs:  # a sum may be added in another order
        for method in (getattr(backend, spec.method), getattr(backend.fast, spec.method)):
            bad = copied(kw)
            bad[name] = readonly(bad[name])
            for got, want in zip(flatten(method(**bad)), flatten(expected), strict=True):
                if want is None or isinstance(want, str):  # str: an option in a cache
                    assert got == want
                else:
                    np.testing.assert_allclose(got, want, rtol=rtol, err_msg=f"{spec_id}: {name}")


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("activation", ["identity", "tanh", "relu"])
def test_unused_arrays_are_ignored(activation, backend_name):
    """preact of a dense backward and x of an activation backward are read for gelu
    only; for the other activations any value (a 0-d array, a list) is ignored."""
    backend = fastnn.get_backend(backend_name)
    x, W = rand((N, IN), np.float64, 1), rand((IN, OUT), np.float64, 2)
    y = backend.activation_forward(x @ W, activation)
    dy = rand((N, OUT), np.float64, 3)
    expected = backend.dense_backward(dy, x, W, y, activation)
    for unused in (np.array(1.0), [[1.0, 2.0], [3.0, 4.0]], "x"):
        for method in (backend.dense_backward, backend.fast.dense_backward):
            assert_same(flatten(method(dy, x, W, y, activation, preact=unused)), flatten(expected),
                        activation)
        for method in (backend.activation_backward, backend.fast.activation_backward):
            np.testing.assert_array_equal(method(dy, y, activation, x=unused),
                                          backend.activation_backward(dy, y, activation))
    for method in (backend.dense_backward, backend.fast.dense_backward):
        with pytest.raises(ValueError, match="preact"):
            method(dy, x, W, y, "gelu", preact=np.array(1.0))
        with pytest.raises(TypeError, match="preact"):
            method(dy, x, W, y, "gelu", preact=[[1.0] * OUT] * N)
    with pytest.raises(TypeError, match="x"):
        backend.activation_backward(dy, y, "gelu", x=[[1.0, 2.0], [3.0, 4.0]])


def test_huge_step_counts_are_rejected_alike():
    """t beyond int64 (which the C kernel takes) is a ValueError on every backend;
    the largest t agrees."""
    results = []
    for name in BACKENDS:
        backend = fastnn.get_backend(name)
        p, g = rand(OUT, np.float64, 1), rand(OUT, np.float64, 2)
        m, v = np.zeros(OUT), np.zeros(OUT)
        with pytest.raises(ValueError, match="t must be <="):
            backend.adam_step(p, g, m, v, 2**63, 1e-3)
        backend.adam_step(p, g, m, v, 2**63 - 1, 1e-3)
        results.append(p)
    for p in results[1:]:
        np.testing.assert_allclose(p, results[0], rtol=1e-12)


def test_dropout_mask_shapes():
    ref = fastnn.get_backend("numpy")
    assert ref.dropout_mask((3, 0), 0.5, 0).shape == (3, 0)
    assert ref.dropout_mask(6, 0.5, 0).shape == (6,)
    assert ref.dropout_mask([2, np.int64(3)], 0.5, 0).shape == (2, 3)
    np.testing.assert_array_equal(ref.dropout_mask((2, 3), 0.5, 9).ravel(), ref.dropout_mask(6, 0.5, 9))


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_float32_sums_at_extreme_magnitudes(backend_name):
    """Sums accumulate in float64 and are returned in float32: a row whose float32
    sum would overflow gives a finite mean, and a mean beyond float32 is inf, on
    every backend alike (the reference's values)."""
    ref, backend = fastnn.get_backend("numpy"), fastnn.get_backend(backend_name)
    d = np.float32
    pred = np.zeros((64, 100), d)
    pred[0] = 3e37  # the first row's sum (3e39) overflows float32; its mean (4.7e37) does not
    targets = np.zeros_like(pred)
    for name in ("absolute_error", "huber", "sigmoid_binary_cross_entropy"):
        loss = getattr(backend, name)(pred, targets)[0]
        assert loss == pytest.approx(getattr(ref, name)(pred, targets)[0], rel=1e-6), name
        assert np.isfinite(loss) and loss > 3e37, (name, loss)
    pred[:] = 3e37  # now the mean overflows
    for name in ("absolute_error", "huber", "sigmoid_binary_cross_entropy"):
        assert getattr(backend, name)(pred, targets)[0] == np.inf, name
    param = np.full(1000, 2e19, d)  # each square overflows float32, the penalty does not
    value = backend.weight_penalty(param, np.zeros_like(param), l2=1e-10)
    assert value == pytest.approx(ref.weight_penalty(param, np.zeros_like(param), l2=1e-10), rel=1e-6)
    assert value == pytest.approx(2e31, rel=1e-6)
    assert backend.weight_penalty(param, np.zeros_like(param), l2=1.0) == np.inf
    assert backend.weight_penalty(param, np.zeros_like(param), l1=1e20) == np.inf
