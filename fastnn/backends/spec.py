"""One declaration per kernel, and everything derived from it.

Each kernel of the catalogue is declared once here (`DECLARATIONS`): its public
signature, its arguments in the order they are checked, each with its role, and
how its implementation ``_name`` is called and what the call returns. From that
declaration this module generates

* the public method of `NumpyBackend` (``backend.dense_forward``): full
  validation (types, dtypes, shapes, scalar ranges, and value scans such as the
  label range or finite targets), copies of non-contiguous inputs and of inputs
  that share memory with a written array, allocation of the outputs not passed,
  then the call of ``self._dense_forward`` (`install`);
* ``backend.fast``: the same kernels behind a cheap structural precondition
  (see below);
* the tables the tests walk (valid example calls, the roles of their array
  arguments: `Kernel.example`, `Kernel.roles`), so that a newly declared kernel
  is found by tests/test_errors.py, test_aliasing.py and test_c_backend.py.

Roles of an argument:

``In``      a float array only read (copied when not C-contiguous and aligned);
``Out``     an output buffer: allocated when None, else exact shape, dtype,
            C-contiguous, aligned, writeable;
``State``   a float array updated in place (no copy possible: must already be
            C-contiguous, aligned, writeable, of the anchor's shape and dtype);
``Labels``  softmax targets: (N,) integer labels in [0, C) or (N, C) probabilities;
``Weights`` optional (N,) sample weights: finite, >= 0, positive sum;
``Real``, ``Int``, ``Flag``  scalars with their ranges;
``Option``  a name from a fixed set (aliases resolved);
``Cache``   a NamedTuple of arrays returned by a forward kernel (its fields: In
            arrays, and Options such as the activation a forward ran);
``Check``   a rule between arguments (``value=True``: it reads array values);
``Work``    a workspace array the public method allocates for the implementation;
``Pair``    an int or a pair of ints (stride, padding), passed on as a tuple of two;
``Index``   an integer (int32 or int64) index array only read (copied when not
            C-contiguous and aligned); its range is a value ``Check``;
``ShapeOf`` a tuple of ints: the shape of an array the kernel writes, binding symbols;
``Dim``     a symbol defined by an expression (an output size computed from the
            input's sizes, a kernel size, a stride and a padding).

The first float array declared (``In`` or ``State``) is the anchor: its dtype is
the call's dtype, which every other float array must share. Shapes are written
with symbols ("N I": 2-D, the first occurrence of a symbol binds it, later ones
must equal it; "4*H": a multiple of a symbol, the gates of a recurrent layer,
checked once the symbol is bound, by that array or an earlier one), "=x" (the
shape of argument x), "..." (any shape) or "N ..." (any shape whose first axis
is N). In the condition and the message of a ``Check`` and in a ``Dim``'s
expression, a symbol already bound stands for its value (``Check("IH + 2 *
padding[0] < KH", ...)``). An argument with ``when`` (an expression in
the other arguments) is used only when it holds: required then (``required`` is
the error), and ignored (passed to the implementation as None) otherwise.

Results follow one rule: values that are sums (losses, weight penalties) are
accumulated in float64 by every backend and returned rounded to the kernel's
dtype (a Python float; inf where the sum overflows float32, on every backend).

``backend.fast``
----------------
Every backend object has an attribute ``fast`` whose methods have exactly the
names, signatures, return values and semantics of the public kernel methods::

    backend.fast.dense_forward(x, W, b, activation="identity", out=None, preact=None)
    backend.fast.dense_backward(dy, x, W, y, activation="identity", preact=None,
                                need_dx=True, dx=None, dW=None, db=None, dz=None)
    backend.fast.softmax_cross_entropy(logits, targets, sample_weight=None, grad=None)
    backend.fast.adam_step(param, grad, m, v, t, lr, beta1=0.9, ...)
    ...  (every name in KERNELS)

Each runs a structural check derived from the declaration: exact types
(``type(a) is numpy.ndarray``, ``type(lr) is float``, ``type(t) is int``), one
float dtype (int64 labels), C-contiguous, aligned and writeable arrays
(``a.flags.carray``), the shape relations, scalar ranges, option names without
aliases, and no memory shared between a written array and another argument
(arrays of distinct owners pass at once; two views of one owner are compared by
their bounds). It does not scan values: label range, finite targets and sample
weights, targets in [0, 1] or {-1, 1} are the caller's promise, validated once
per dataset. When the check passes, the implementation ``_name`` runs directly
(outputs not passed are allocated); when any part fails, the call goes to the
public method, which validates fully and raises its clear error, or copies what
it must and runs. So a list, a wrong shape or a non-contiguous view through
``fast`` gets exactly the public behaviour, never compiled code. Hot callers
should pass Python floats for real scalars (an int takes the public path).

A fast method (every kernel but batchnorm_backward, whose cache is a tuple)
remembers the calls that passed (the last one per first array argument,
so one per layer of a model; at most 64): a call with the very same objects
(arrays through weak references, so nothing is kept alive; scalars by identity,
except numeric ones no other rule refers to, such as a rate or a step count,
whose ranges alone are checked again) skips the checks, since an array's type,
dtype, shape, strides and memory cannot change. The training loop passes the same workspaces and parameter
views step after step, so its check costs a few identity tests. (An array
whose writeable flag a caller clears after such a call is then written all the
same.)
`init_weights` and `dropout_mask` are not hot: their ``fast`` is the public method.
``fastnn.backends.spec.source(name, fast=True)`` shows the generated code.

``backend.fast.bind(name, *args, **kwargs)`` goes one step further for a caller
that repeats one call over fixed arrays (a training step, see fastnn/nn/plan.py):
it checks the fast precondition once and returns the kernel bound to those
arguments (None when the precondition fails), which later runs with no checks but
the ranges of its free scalars (``bound.free``: the numeric scalars no rule refers
to, passed anew at each call). A backend may bind deeper with a method
``_bind_<kernel>`` returning the implementation with what it derives from the
arrays (the C backend's cffi pointers) taken once. ``bind_source(k)`` is the
generated code.
"""

import inspect
import math
import re
import types
import weakref

import numpy as np

from . import _checks as chk

F32, F64, I64 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64)
# the float32 rounding of any value below this is finite (it is max + half an ulp)
F32_ROUNDS_FINITE = 3.4028235677973366e38


def round_to(value, dtype):
    """A sum accumulated in float64, returned in the kernel's dtype (a Python float):
    float32 results are rounded to float32, inf where that overflows."""
    value = float(value)
    if dtype is F64 or dtype == F64:
        return value
    if -F32_ROUNDS_FINITE < value < F32_ROUNDS_FINITE:
        return float(np.float32(value))
    return value if value != value else math.copysign(math.inf, value)


# ----------------------------------------------------------------- arguments
class Arg:
    """An argument of a kernel. name: the parameter; when: expression under which
    it is used (None: always); example: a value (or a kind, for arrays) for the
    valid example call the tests build."""

    kind = "arg"
    array = False

    def __init__(self, name, when=None, required=None, example=None):
        self.name = name
        self.var = name.replace(".", "_")
        self.display = name
        self.src = name
        self.when = when
        self.required = required
        self.example = example


class Array(Arg):
    array = True

    def __init__(self, name, shape="...", *, optional=False, like=None, like_name=None,
                 ndim=None, ndims=None, finite=False, example=None, example_shape=None,
                 dtype="_dt", **kw):
        super().__init__(name, example=example, **kw)
        self.shape = shape
        self.dtype = dtype  # source of the dtype (an Out's: _I64 for indices)
        self.optional = optional  # None allowed: not given
        self.like, self.like_name = like, like_name
        self.ndim = ndim  # an expression: required ndim (None: any)
        self.ndims = ndims  # tuple of allowed ndims
        self.finite = finite  # value check: no NaN/inf
        self.example_shape = example_shape


class In(Array):
    role = "input"


class Out(Array):
    """An output array (optional ones: a caller's buffer the result is written into).
    scratch: a workspace the caller lends, whose contents after the call are
    unspecified (each implementation uses as much of it as it needs)."""

    role = "output"

    def __init__(self, name, shape="...", *, scratch=False, **kw):
        super().__init__(name, shape, **kw)
        self.scratch = scratch


class State(Array):
    role = "state"


class Labels(Arg):
    """Softmax targets: (N,) integer labels in [0, C), or (N, C) float probabilities."""

    role = "labels"
    array = True

    def __init__(self, name, n="N", c="C", **kw):
        super().__init__(name, **kw)
        self.n, self.c = n, c


class Weights(Arg):
    """Optional (N,) sample weights of the call's dtype."""

    role = "weights"
    array = True

    def __init__(self, name, n="N", **kw):
        super().__init__(name, **kw)
        self.n = n


class Real(Arg):
    role = "real"

    def __init__(self, name, low=None, high=None, low_open=False, high_open=False, **kw):
        super().__init__(name, **kw)
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open


class Int(Arg):
    role = "int"

    def __init__(self, name, low=None, high=None, **kw):
        super().__init__(name, **kw)
        self.low, self.high = low, high


class Flag(Arg):
    role = "flag"


class Option(Arg):
    """resolve: name of a function in the namespace (type check, aliases, choice);
    choices: name of the set of canonical values; optional: None allowed."""

    role = "option"

    def __init__(self, name, resolve, choices, optional=False, **kw):
        super().__init__(name, **kw)
        self.resolve, self.choices, self.optional = resolve, choices, optional


class Cache(Arg):
    """A NamedTuple argument (cls: its name in the namespace) whose array fields are
    checked like inputs under the names ``cache.x`` etc. bindable: its arrays are
    the forward's own arguments and outputs (or constants, the zero states it
    makes for None), so that every forward on the same arrays returns a cache of
    the same arrays and values, and a backward bound to one cache (Fast.bind)
    serves the next forwards' (not so batch norm's, whose statistics are new
    arrays each forward)."""

    role = "cache"

    def __init__(self, name, cls, fields, message, bindable=False, **kw):
        super().__init__(name, **kw)
        self.cls, self.fields, self.message, self.bindable = cls, fields, message, bindable
        for f in fields:  # arrays, and Options (the kernel's names stored in the cache)
            f.display = f"{name}.{f.name}"
            f.var = f"{name}_{f.name}"
            f.src = f"{name}.{f.name}"


class Check(Arg):
    """raise error(message) when cond holds (message: an f-string body)."""

    role = "check"

    def __init__(self, cond, error, message, value=False):
        super().__init__("")
        self.cond, self.error, self.message, self.value = cond, error, message, value


class Work(Arg):
    """A workspace array allocated for the implementation."""

    role = "work"
    array = False

    def __init__(self, name, shape):
        super().__init__(name)
        self.shape = shape


class Pair(Arg):
    """An int or a pair of ints, each >= low (high: an expression bounding each
    component, e.g. half a pool size), passed to the implementation as a tuple of
    two ints. default: an argument whose (normalised) value None stands for."""

    role = "pair"

    def __init__(self, name, low=0, default=None, **kw):
        super().__init__(name, **kw)
        self.low, self.default = low, default


class Index(Arg):
    """An integer index array (int32 or int64) only read; shape as for In."""

    role = "index"
    array = True

    def __init__(self, name, shape, high, **kw):
        super().__init__(name, **kw)
        self.shape, self.high = shape, high  # high: an expression, indices lie in [0, high)
        self.example_shape, self.optional = None, False


class ShapeOf(Arg):
    """A tuple of non-negative ints, the shape of an array the kernel writes; its
    dims (symbols, as an array's shape) are bound, or checked when bound."""

    role = "shape"

    def __init__(self, name, dims, **kw):
        super().__init__(name, **kw)
        self.dims = dims


class Dim(Arg):
    """Binds symbol `name` to the value of `expr` (symbols and arguments)."""

    role = "dim"

    def __init__(self, name, expr):
        super().__init__("")
        self.symbol, self.expr = name, expr


class Custom(Arg):
    """Argument checked by a function of the namespace: name = fn(name) (the public
    path only; kernels with Custom arguments have no separate fast path)."""

    role = "custom"

    def __init__(self, name, fn, **kw):
        super().__init__(name, **kw)
        self.fn = fn


# -------------------------------------------------------------------- kernels
class Kernel:
    """The declaration of one kernel.

    signature: the public parameters (source text); args: checked in this order;
    impl: the arguments of ``self._name(...)`` (source); returns: what the public
    method returns (source; ``_r`` is what the implementation returned);
    in_place_ok: expression: an input may be exactly an output; variants: named
    example overrides the tests also run; fast: whether ``backend.fast`` gets a
    generated fast path (else it is the public method); doc: the docstring."""

    def __init__(self, name, signature, args, impl, returns, doc, in_place_ok=None,
                 variants=None, fast=True, sizes=None):
        self.name, self.signature, self.args = name, signature, args
        # the example call's sizes of this kernel's own symbols, a size or the
        # name of another symbol whose size it takes
        self.sizes = sizes or {}
        self.impl, self.returns, self.doc = impl, returns, doc
        self.in_place_ok, self.variants, self.has_fast = in_place_ok, variants or {}, fast
        self.params = list(_parameters(signature))

    # the arguments, cache fields included
    def flat_args(self):
        for a in self.args:
            yield a
            if isinstance(a, Cache):
                yield from a.fields

    def array_args(self):
        return [a for a in self.flat_args() if a.array]

    def anchor(self):
        for a in self.flat_args():
            if isinstance(a, (In, State)):
                return a
        return None

    def written(self):
        arrays = self.array_args()
        return ([a for a in arrays if isinstance(a, Out)]
                + [a for a in arrays if isinstance(a, State)])

    def read(self):
        return [a for a in self.array_args() if isinstance(a, (In, Labels, Weights, Index))]

    def defaults(self):
        return {p.name: p.default for p in self.params if p.default is not inspect.Parameter.empty}

    # ------------------------------------------------------- tests' tables
    def example(self, dtype, variant=None, sizes=None, seed=0, kinds=None):
        """Keyword arguments of a valid call in `dtype` (a variant's overrides
        applied). sizes: the symbols' values; kinds: array name -> example kind."""
        dtype = np.dtype(dtype)
        sizes = {"N": 4, "I": 3, "O": 5, "C": 5, "K": 5, "T": 3, "F": 3, "H": 2, **self.sizes,
                 **(sizes or {})}
        for k, v in sizes.items():  # a symbol's size named by another symbol ("S": "T")
            if isinstance(v, str):
                sizes[k] = sizes[v]
        over = dict(self.variants.get(variant, {})) if variant else {}
        shapes = over.pop("_shapes", {})
        kinds = {**(kinds or {}), **{k: v for k, v in over.items() if isinstance(v, str)
                                     and self._arg(k) is not None and self._arg(k).array}}
        kw = self.defaults()
        for a in self.args:
            if isinstance(a, (Real, Int, Flag, Option, Custom, Pair)) and a.example is not None:
                kw[a.name] = a.example
        kw.update({k: v for k, v in over.items() if k not in kinds})
        if "dtype" in kw:
            kw["dtype"] = dtype
        rng = np.random.default_rng(seed)
        made = {}

        def shape_of(a):
            spec = shapes.get(a.name, a.example_shape or a.shape)
            if isinstance(a, State) and a.like and a.name not in shapes:
                spec = "=" + a.like
            if spec.startswith("="):
                return made[spec[1:]].shape
            dims = ["K" if s in ("...", "*") else s for s in spec.split()]
            return tuple(int(s) if s.isdigit() else _dim_value(s, sizes) for s in dims)

        def build(a):
            kind = kinds.get(a.name, a.example or "normal")
            if isinstance(a, Labels):
                if kind == "probs":
                    p = rng.uniform(0.1, 1.0, (sizes[a.n], sizes[a.c]))
                    return (p / p.sum(axis=1, keepdims=True)).astype(dtype)
                return np.arange(sizes[a.n]) % sizes[a.c]
            if isinstance(a, Weights):
                return np.linspace(0.5, 2, sizes[a.n]).astype(dtype)
            shape = shape_of(a)
            if isinstance(a, Index):
                return rng.integers(0, _evaluate(a.high, sizes, kw), shape)
            if isinstance(a, Out):
                return np.empty(shape, np.int64 if a.dtype == "_I64" else dtype)
            values = {
                "normal": lambda: rng.standard_normal(shape),
                "positive": lambda: np.abs(rng.standard_normal(shape)) + 1,
                "small": lambda: (np.abs(rng.standard_normal(shape)) + 1) * 0.1,
                "unit": lambda: rng.uniform(0, 1, shape),
                "signs": lambda: np.where(rng.standard_normal(shape) > 0, 1.0, -1.0),
            }[kind]()
            return values.astype(dtype)

        for a in self.args:
            if isinstance(a, Dim):
                sizes[a.symbol] = _evaluate(a.expr, sizes, kw)
            elif isinstance(a, ShapeOf):
                kw[a.name] = tuple(sizes[d] for d in a.dims.split())
            elif isinstance(a, Pair) and kw.get(a.name) is None and a.default:
                kw[a.name] = kw[a.default]
            elif isinstance(a, Cache):
                fields = {}
                for f in a.fields:
                    if f.array:
                        made[f.display] = fields[f.name] = build(f)
                    else:  # a named option stored in the cache
                        fields[f.name] = over.get(f.name, f.example)
                cls = namespace()[a.cls]
                for name in cls._fields:  # flags of the forward call (batch norm's training)
                    if name not in fields:
                        fields[name] = kw.pop(name, cls._field_defaults.get(name))
                kw[a.name] = cls(**fields)
            elif a.array:
                if a.name in kw and kw[a.name] is None and a.name in over:
                    continue  # a variant that leaves the array out
                made[a.name] = kw[a.name] = build(a)
        return kw

    def _arg(self, name):
        for a in self.flat_args():
            if a.name == name or a.display == name:
                return a
        return None

    def active(self, a, kw):
        """Whether argument a is used in the call with keyword arguments kw."""
        return a.when is None or bool(eval(a.when, namespace(), dict(kw)))

    def roles(self, kw):
        """{anchor, inputs, states, outs}: names of the float arrays of a call by role
        (labels count as inputs only when they are probabilities)."""
        inputs, states, outs = [], [], []
        for a in self.array_args():
            if a.display != a.name or not self.active(a, kw) or kw.get(a.name) is None:
                continue
            if isinstance(a, Labels):
                if np.asarray(kw[a.name]).dtype.kind == "f":
                    inputs.append(a.name)
            elif isinstance(a, (In, Weights)):
                inputs.append(a.name)
            elif isinstance(a, Index):
                continue
            elif isinstance(a, State):
                states.append(a.name)
            else:
                outs.append(a.name)
        anchor = self.anchor()
        return {"anchor": anchor.display if anchor else "", "inputs": tuple(inputs),
                "states": tuple(states), "outs": tuple(outs)}

    def call(self, backend, kw):
        return getattr(backend, self.name)(**kw)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _evaluate(expr, sizes, kw):
    """The value of a Dim's or Index's expression in an example call: symbols from
    sizes, arguments from kw (pairs as tuples)."""
    names = {**{k: _pair(v) if isinstance(v, (int, tuple, list)) and not isinstance(v, bool)
                else v for k, v in kw.items()}, **sizes}
    return eval(expr, {}, names)  # noqa: S307 (our own declaration text)


def _symbols(expr, bound):
    """expr with every bound symbol replaced by the variable holding it."""
    return re.sub(r"\b[A-Za-z_]\w*\b", lambda m: _sym(m[0]) if m[0] in bound else m[0], expr)


def _symbols_in_fields(message, bound):
    """An f-string body with the bound symbols inside its {fields} replaced."""
    return re.sub(r"\{[^}]*\}", lambda m: _symbols(m[0], bound), message)


def _parameters(signature):
    ns = {}
    exec(f"def f({signature}): pass", {"np": np}, ns)  # noqa: S102 (our own declaration text)
    return inspect.signature(ns["f"]).parameters.values()


# --------------------------------------------------------------- the catalogue
ACT = dict(resolve="activation_name", choices="_ACTIVATIONS")
NEEDS_X = "activation in _NEEDS_INPUT"


def _loss(name, output, targets_example, doc, extra=(), extra_sig="", extra_impl="",
          checks=(), variants=None):
    return Kernel(
        name, f"{output}, targets, sample_weight=None, grad=None{extra_sig}",
        [*extra,
         In(output, "N ...", ndims=(1, 2), example_shape="N K"),
         Weights("sample_weight"),
         Out("grad", f"={output}"),
         In("targets", f"={output}", finite=True, example=targets_example),
         *checks],
        f"{output}, targets, sample_weight, grad{extra_impl}",
        "round_to(_r, _dt), grad", doc, variants=variants)


ONE_D = {"1d": {"_shapes": {"pred": "N", "logits": "N", "scores": "N"}}}

STEP_STATE = dict(example="positive")


def _step(name, signature, states, scalars, impl, doc, checks=()):
    return Kernel(
        name, signature,
        [*[s for s in scalars if s.name == "momentum"],
         State("param", example_shape="2 O"),
         In("grad", "=param"),
         *[State(s.name, like="param", when=s.when, required=s.required,
                 example=s.example or "positive") for s in states],
         Real("lr", low=0, example=0.01 if name != "adadelta_step" else 1.0),
         *[s for s in scalars if s.name != "momentum"],
         *checks],
        impl, "None", doc)


# ------------------------------------------------- convolution: shared rules
# The example sizes: a 5 x 6 image, a 3 x 2 kernel, (for the backward of max
# pooling, whose output size is not derived) the outputs of its example's pool.
CONV_SIZES = {"IH": 5, "IW": 6, "KH": 3, "KW": 2, "OH": 2, "OW": 4}


def _window_rules(kh, kw, what, image="x"):
    """stride, padding, their rules against the window (kh, kw) and the output
    size symbols OH, OW."""
    return [
        Pair("stride", low=1, example=(2, 1)),
        Pair("padding", low=0, example=1),
        Check(f"padding[0] >= {kh} or padding[1] >= {kw}", "ValueError",
              f"padding {{padding}} must be smaller than {what} ({{{kh}}}, {{{kw}}})"),
        Check(f"IH + 2 * padding[0] < {kh} or IW + 2 * padding[1] < {kw}", "ValueError",
              f"{what} ({{{kh}}}, {{{kw}}}) is larger than the padded image of {image} "
              f"({{IH + 2 * padding[0]}}, {{IW + 2 * padding[1]}})"),
        Dim("OH", f"(IH + 2 * padding[0] - {kh}) // stride[0] + 1"),
        Dim("OW", f"(IW + 2 * padding[1] - {kw}) // stride[1] + 1"),
    ]


def _pool_rules(image="x"):
    """pool, stride (default: pool), padding (at most half the pool, as PyTorch)."""
    rules = _window_rules("pool[0]", "pool[1]", "pool", image)
    return [Pair("pool", low=1, example=(3, 2)),
            Pair("stride", low=1, default="pool"),
            rules[1],
            Check("2 * padding[0] > pool[0] or 2 * padding[1] > pool[1]", "ValueError",
                  "padding {padding} must be at most half the pool {pool}"),
            *rules[3:]]


DECLARATIONS = {k.name: k for k in [
    Kernel(
        "activation_forward", "x, activation, out=None",
        [Option("activation", **ACT, example="tanh"),
         In("x", ndim="2 if activation == 'softmax' else None", example_shape="N O"),
         Out("out", "=x")],
        "x, activation, out", "out",
        """y = activation(x), elementwise (softmax: over the last axis of 2-D x).
        out may be x for the elementwise activations (in place).""",
        in_place_ok="activation != 'softmax'"),
    Kernel(
        "activation_backward", "dy, y, activation, x=None, out=None",
        [Option("activation", **ACT, example="gelu"),
         In("y", ndim="2 if activation == 'softmax' else None", example_shape="N O"),
         In("dy", "=y"),
         In("x", "=y", when=NEEDS_X,
            required="f'the {activation} backward needs x, the forward input'"),
         Out("out", "=y")],
        "dy, y, activation, x, out", "out",
        """dx = dy * activation'(x), written in terms of the forward output y
        (x, the forward input, is needed only for gelu, see NEEDS_INPUT; for the
        other activations it is ignored)."""),
    Kernel(
        "dense_forward", "x, W, b, activation='identity', out=None, preact=None",
        [Option("activation", **ACT, example="relu"),
         In("W", "I O"),
         In("x", "N I"),
         In("b", "O", optional=True),
         Out("out", "N O"),
         Out("preact", "N O", optional=True)],
        "x, W, b, activation, out, preact", "out",
        """y = activation(x @ W + b).

        x: (N, in); W: (in, out); b: (out,) or None; out: (N, out) for y;
        preact: optional (N, out) buffer that receives x @ W + b (the gelu
        backward needs it). Returns y."""),
    Kernel(
        "dense_backward", "dy, x, W, y, activation='identity', preact=None, need_dx=True, "
                          "dx=None, dW=None, db=None, dz=None",
        [Option("activation", **ACT, example="tanh"),
         In("W", "I O"),
         In("x", "N I"),
         In("dy", "N O"),
         In("y", "N O"),
         In("preact", "N O", when=NEEDS_X,
            required="f'the {activation} backward needs preact from dense_forward'"),
         Out("dx", "N I", when="need_dx"),
         Out("dW", "I O"),
         Out("db", "O"),
         Out("dz", "N O", when="activation != 'identity'")],
        "dy, x, W, y, activation, preact, dx, dW, db, dz", "dx, dW, db",
        """Gradients of y = activation(x @ W + b).

        dy, y: (N, out); x: (N, in); W: (in, out); preact: (N, out), needed for
        gelu only (ignored otherwise); dz: optional (N, out) workspace for
        dy * activation' (unused by the identity).
        Returns (dx or None, dW, db) with dx (N, in), dW (in, out), db (out,).""",
        variants={"gelu": {"activation": "gelu"}}),
    Kernel(
        "softmax_cross_entropy", "logits, targets, sample_weight=None, grad=None",
        [In("logits", "N C"),
         Weights("sample_weight"),
         Out("grad", "N C"),
         Labels("targets")],
        "logits, targets, sample_weight, grad", "round_to(_r, _dt), grad",
        """Mean cross-entropy of softmax(logits) and its gradient.

        logits: (N, C); targets: (N,) integer labels in [0, C), or (N, C)
        probabilities (each row a distribution); sample_weight: (N,) or None.
        Returns (loss, grad) with grad (N, C) = d loss / d logits.""",
        variants={"probabilities": {"targets": "probs"}}),
    _loss("sigmoid_binary_cross_entropy", "logits", "unit",
          """Binary cross-entropy of sigmoid(logits), summed over outputs, mean over
          samples. logits, targets: (N,) or (N, K) with targets in [0, 1].""",
          checks=[Check("targets.size and (targets.min() < 0 or targets.max() > 1)", "ValueError",
                        "targets of a binary cross-entropy must lie in [0, 1]", value=True)],
          variants=ONE_D),
    _loss("squared_error", "pred", "normal",
          """0.5 * (pred - targets)^2, summed over outputs, mean over samples
          (the gradient is then (pred - targets) / N, scikit-learn's).""", variants=ONE_D),
    _loss("absolute_error", "pred", "normal",
          """|pred - targets|, summed over outputs, mean over samples; the gradient
          at a zero residual is 0."""),
    _loss("huber", "pred", "normal",
          """Huber loss (torch.nn.HuberLoss): 0.5 d^2 for |d| < delta, else
          delta (|d| - delta/2); summed over outputs, mean over samples.""",
          extra=[Real("delta", low=0, low_open=True, example=0.5)], extra_sig=", delta=1.0",
          extra_impl=", delta"),
    _loss("hinge", "scores", "signs",
          """Hinge loss max(0, 1 - t s) with targets t in {-1, +1}, summed over
          outputs, mean over samples.""",
          checks=[Check("not np.isin(targets, (-1, 1)).all()", "ValueError",
                        "targets of the hinge loss must be -1 or +1", value=True)],
          variants=ONE_D),
    Kernel(
        "batchnorm_forward", "x, gamma, beta, running_mean, running_var, training, momentum=0.1, "
                             "eps=1e-5, out=None",
        [In("x", "N C"),
         In("gamma", "C"),
         In("beta", "C"),
         State("running_mean", like="gamma", like_name="gamma", example="normal"),
         State("running_var", like="gamma", like_name="gamma", example="positive"),
         Real("momentum", 0, 1),
         Real("eps", low=0, low_open=True),
         Flag("training", example=True),
         Check("training and x.shape[0] < 2", "ValueError",
               "batch norm in training needs more than 1 sample per channel, "
               "got x of shape {x.shape}"),
         Out("out", "N C"),
         Work("mean", "C"),
         Work("invstd", "C")],
        "x, gamma, beta, running_mean, running_var, training, momentum, eps, out, mean, invstd",
        "out, _BatchNormCache(x, mean, invstd, gamma, training)",
        """Batch normalisation over the sample axis, as torch.nn.BatchNorm1d.

        x: (N, C); gamma, beta, running_mean, running_var: (C,). In training the
        batch mean and biased variance normalise x, and the running statistics
        are updated in place with the unbiased variance:
        running = (1 - momentum) running + momentum batch. In inference the
        running statistics normalise x. Returns (y, cache).""",
        variants={"inference": {"training": False}}),
    Kernel(
        "batchnorm_backward", "dy, cache, dx=None, dgamma=None, dbeta=None",
        [Cache("cache", "_BatchNormCache",
               [In("x", "N C"), In("mean", "C"), In("invstd", "C", example="positive"),
                In("gamma", "C")],
               "cache must be the BatchNormCache returned by batchnorm_forward"),
         In("dy", "N C"),
         Out("dx", "N C"),
         Out("dgamma", "C"),
         Out("dbeta", "C")],
        "dy, _BatchNormCache(cache_x, cache_mean, cache_invstd, cache_gamma, "
        "bool(cache.training)), dx, dgamma, dbeta",
        "dx, dgamma, dbeta",
        """Gradients of batchnorm_forward. dy: (N, C). Returns (dx, dgamma, dbeta).
        The cache is checked like any input (a caller can build or alter it).""",
        variants={"inference": {"training": False}}),
    Kernel(
        "dropout_forward", "x, rate, seed, out=None",
        [In("x", example_shape="N O"),
         Real("rate", 0, 1, high_open=True, example=0.3),
         Int("seed", 0, 2**64 - 1, example=7),
         Out("out", "=x")],
        "x, rate, seed, out", "out",
        """Inverted dropout: y = x * keep / (1 - rate), where keep for the element
        at flat (C-order) index i comes from splitmix64(seed, i) and is the same on
        every backend. The backward regenerates the mask from (rate, seed)."""),
    Kernel(
        "dropout_backward", "dy, rate, seed, out=None",
        [In("dy", example_shape="N O"),
         Real("rate", 0, 1, high_open=True, example=0.3),
         Int("seed", 0, 2**64 - 1, example=7),
         Out("out", "=dy")],
        "dy, rate, seed, out", "out",
        """dx = dy * keep / (1 - rate), with the mask of the forward call that had
        the same (rate, seed) and shape."""),
    Kernel(
        "dropout_mask", "shape, rate, seed",
        [Custom("shape", "_shape_arg", example=(3, 4)),
         Real("rate", 0, 1, high_open=True, example=0.3),
         Int("seed", 0, 2**64 - 1, example=7)],
        "shape, rate, seed", "_r",
        """The boolean keep-mask dropout uses for an array of this shape
        (a tuple of non-negative integers, or one integer).""", fast=False),
    Kernel(
        "weight_penalty", "param, grad, l2=0.0, l1=0.0",
        [In("param", example_shape="I O"),
         State("grad", like="param"),
         Real("l2", low=0, example=0.1),
         Real("l1", low=0, example=0.01)],
        "param, grad, l2, l1", "round_to(_r, _dt)",
        """Adds the gradient of l2/2 ||param||^2 + l1 ||param||_1 to grad in place
        and returns that penalty's value (sign(0) = 0 for the L1 term), summed in
        float64 and rounded to the dtype."""),
    _step("sgd_step", "param, grad, velocity, lr, momentum=0.0, nesterov=False, "
                      "weight_decay=0.0, lr_in_velocity=False",
          [State("velocity", when="momentum", required="'velocity is required when momentum > 0'")],
          [Real("momentum", 0, 1, example=0.9), Real("weight_decay", low=0, example=0.01),
           Flag("nesterov", example=True), Flag("lr_in_velocity")],
          "param, grad, velocity, lr, momentum, bool(nesterov), weight_decay, bool(lr_in_velocity)",
          """SGD in place, torch.optim.SGD's rule (dampening 0):
            g = grad + weight_decay * param
            velocity = momentum * velocity + g
            param -= lr * (g + momentum * velocity if nesterov else velocity)
        With lr_in_velocity, scikit-learn's rule instead (equal for constant lr):
            velocity = momentum * velocity - lr * g
            param += momentum * velocity - lr * g if nesterov else velocity
        velocity may be None when momentum is 0 (it is ignored then).""",
          checks=[Check("nesterov and not momentum", "ValueError", "nesterov needs momentum > 0")]),
    _step("adagrad_step", "param, grad, sum_sq, lr, eps=1e-10, weight_decay=0.0",
          [State("sum_sq")],
          [Real("eps", low=0), Real("weight_decay", low=0, example=0.01)],
          "param, grad, sum_sq, lr, eps, weight_decay",
          """Adagrad in place (torch.optim.Adagrad without lr decay):
            g = grad + weight_decay * param; sum_sq += g^2
            param -= lr * g / (sqrt(sum_sq) + eps)"""),
    _step("rmsprop_step", "param, grad, square_avg, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, "
                          "momentum=0.0, momentum_buf=None, centered=False, grad_avg=None",
          [State("square_avg"),
           State("momentum_buf", when="momentum",
                 required="'momentum_buf is required when momentum > 0'"),
           State("grad_avg", when="centered", required="'grad_avg is required when centered'",
                 example="small")],
          [Real("momentum", 0, 1, example=0.9), Real("alpha", 0, 1), Real("eps", low=0),
           Real("weight_decay", low=0, example=0.01), Flag("centered", example=True)],
          "param, grad, square_avg, lr, alpha, eps, weight_decay, momentum, momentum_buf, grad_avg",
          """RMSprop in place (torch.optim.RMSprop):
            g = grad + weight_decay * param
            square_avg = alpha square_avg + (1 - alpha) g^2
            centered: grad_avg = alpha grad_avg + (1 - alpha) g, and
                      avg = sqrt(square_avg - grad_avg^2) + eps, else sqrt(square_avg) + eps
            momentum: momentum_buf = momentum momentum_buf + g / avg; param -= lr momentum_buf
            else:     param -= lr g / avg"""),
    _step("adadelta_step", "param, grad, square_avg, acc_delta, lr=1.0, rho=0.9, eps=1e-6, "
                           "weight_decay=0.0",
          [State("square_avg"), State("acc_delta")],
          [Real("rho", 0, 1), Real("eps", low=0, low_open=True),
           Real("weight_decay", low=0, example=0.01)],
          "param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay",
          """Adadelta in place (torch.optim.Adadelta):
            g = grad + weight_decay * param
            square_avg = rho square_avg + (1 - rho) g^2
            delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
            acc_delta = rho acc_delta + (1 - rho) delta^2; param -= lr delta"""),
    _step("adam_step", "param, grad, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, "
                       "weight_decay=0.0, decoupled=False, amsgrad=False, v_max=None",
          [State("m"), State("v"),
           State("v_max", when="amsgrad", required="'v_max is required when amsgrad'")],
          [Int("t", 1, 2**63 - 1, example=3), Real("beta1", 0, 1, high_open=True),
           Real("beta2", 0, 1, high_open=True), Real("eps", low=0),
           Real("weight_decay", low=0, example=0.01), Flag("decoupled", example=True),
           Flag("amsgrad", example=True)],
          "param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay, bool(decoupled), v_max",
          """Adam in place (torch.optim.Adam; AdamW when decoupled), step t >= 1:
            decoupled: param *= 1 - lr weight_decay;  else g = grad + weight_decay param
            m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
            amsgrad: v_max = max(v_max, v), used in place of v below
            param -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
        scikit-learn's Adam (eps added to sqrt(v) before bias correction) is this
        rule with eps / sqrt(1 - beta2^t)."""),
    Kernel(
        "init_weights", "method, fan_in, fan_out, rng=None, dtype=np.float64, activation=None",
        [Custom("method", "_method_arg", example="glorot_uniform"),
         Int("fan_in", low=1, example=3),
         Int("fan_out", low=1, example=5),
         Custom("dtype", "_dtype_arg"),
         Custom("rng", "_rng_arg", example=0),
         Option("activation", **ACT, optional=True, example="relu")],
        "method, fan_in, fan_out, rng, dtype, activation", "_r",
        """Initial (W, b) of a dense layer: W (fan_in, fan_out), b (fan_out,).

        glorot_uniform: U(+-sqrt(6 / (fan_in + fan_out)));  glorot_normal: N(0, 2 / (fan_in + fan_out))
        he_uniform: U(+-sqrt(6 / fan_in));  he_normal: N(0, 2 / fan_in);  lecun_normal: N(0, 1 / fan_in)
        sklearn: scikit-learn's MLP init, W and b from U(+-sqrt(f / (fan_in + fan_out)))
        with f = 2 for logistic and 6 otherwise, drawn W first then b.
        b is zero except for sklearn. rng: numpy Generator, RandomState, int or None.""",
        fast=False),
    # ------------------------------------------------------------ convolution
    # Images channels-last: x (N, IH, IW, C); filters W (KH, KW, C, O); output
    # (N, OH, OW, O) with OH = (IH + 2 padding[0] - KH) // stride[0] + 1.
    *[Kernel(
        "conv2d_forward", "x, W, b, stride=1, padding=0, activation='identity', out=None, "
                          "preact=None",
        [Option("activation", **ACT, example="relu"),
         In("x", "N IH IW C"),
         In("W", "KH KW C O"),
         In("b", "O", optional=True),
         *_window_rules("KH", "KW", "W's kernel"),
         Out("out", "N OH OW O"),
         Out("preact", "N OH OW O", optional=True)],
        "x, W, b, stride, padding, activation, out, preact", "out",
        """y = activation(conv(x, W) + b), as torch.nn.functional.conv2d on the
        channels-last layout (a cross-correlation, zero padding).

        x: (N, IH, IW, C); W: (KH, KW, C, O); b: (O,) or None; stride, padding: an
        int or a pair (rows, columns); out: (N, OH, OW, O) for y with
        OH = (IH + 2 padding[0] - KH) // stride[0] + 1 (OW alike); preact: optional
        buffer like out that receives conv(x, W) + b (the gelu backward needs it).
        Returns y.""", sizes=CONV_SIZES),
      Kernel(
        "conv2d_backward", "dy, x, W, y, activation='identity', stride=1, padding=0, preact=None, "
                           "need_dx=True, dx=None, dW=None, db=None, dz=None",
        [Option("activation", **ACT, example="tanh"),
         In("x", "N IH IW C"),
         In("W", "KH KW C O"),
         *_window_rules("KH", "KW", "W's kernel"),
         In("dy", "N OH OW O"),
         In("y", "N OH OW O"),
         In("preact", "N OH OW O", when=NEEDS_X,
            required="f'the {activation} backward needs preact from conv2d_forward'"),
         Out("dx", "N IH IW C", when="need_dx"),
         Out("dW", "KH KW C O"),
         Out("db", "O"),
         Out("dz", "N OH OW O", when="activation != 'identity'")],
        "dy, x, W, y, activation, stride, padding, preact, dx, dW, db, dz", "dx, dW, db",
        """Gradients of y = activation(conv(x, W) + b) (conv2d_forward).

        dy, y: (N, OH, OW, O); x: (N, IH, IW, C); W: (KH, KW, C, O); preact: needed
        for gelu only; dz: optional workspace like dy for dy * activation'.
        Returns (dx or None, dW, db) with dx like x, dW like W, db (O,).""",
        variants={"gelu": {"activation": "gelu"}}, sizes=CONV_SIZES),
      Kernel(
        "maxpool2d_forward", "x, pool=2, stride=None, padding=0, out=None, argmax=None",
        [In("x", "N IH IW C"),
         *_pool_rules(),
         Out("out", "N OH OW C"),
         Out("argmax", "N OH OW C", dtype="_I64")],
        "x, pool, stride, padding, out, argmax", "out, argmax",
        """Max pooling over windows of pool (rows, columns) cells every stride cells
        (default: pool) of x padded by padding cells that never win, as
        torch.nn.functional.max_pool2d on the channels-last layout.

        x: (N, IH, IW, C); pool, stride, padding: an int or a pair, padding at most
        half the pool. Returns (y, argmax), both (N, OH, OW, C): argmax (int64) holds
        the flat index row * IW + column in the image of the maximum, the first in
        the window's row-major order on ties (NaN wins).""", sizes=CONV_SIZES),
      Kernel(
        "maxpool2d_backward", "dy, argmax, x_shape, dx=None",
        [In("dy", "N OH OW C"),
         ShapeOf("x_shape", "N IH IW C"),
         Index("argmax", "=dy", high="IH * IW"),
         Check("argmax.size and (argmax.min() < 0 or argmax.max() >= IH * IW)", "ValueError",
               "argmax holds indices outside [0, {IH * IW}), the image of x_shape {x_shape}",
               value=True),
         Out("dx", "N IH IW C")],
        "dy, argmax, dx", "dx",
        """Gradient of maxpool2d_forward: dx (x_shape) is 0 but at each argmax index,
        which receives the sum of the dy of the windows it won.
        dy, argmax: (N, OH, OW, C) (argmax int32 or int64).""", sizes=CONV_SIZES),
      Kernel(
        "avgpool2d_forward", "x, pool=2, stride=None, padding=0, out=None",
        [In("x", "N IH IW C"),
         *_pool_rules(),
         Out("out", "N OH OW C")],
        "x, pool, stride, padding, out", "out",
        """Average pooling, as torch.nn.functional.avg_pool2d on the channels-last
        layout: the mean of each window with the zero padding counted in the
        divisor (pool[0] * pool[1]). Arguments as maxpool2d_forward; returns y.""",
        sizes=CONV_SIZES),
      Kernel(
        "avgpool2d_backward", "dy, x_shape, pool=2, stride=None, padding=0, dx=None",
        [ShapeOf("x_shape", "N IH IW C"),
         *_pool_rules("x_shape"),
         In("dy", "N OH OW C"),
         Out("dx", "N IH IW C")],
        "dy, pool, stride, padding, dx", "dx",
        """Gradient of avgpool2d_forward: each cell of dx (x_shape) receives
        dy / (pool[0] * pool[1]) from every window that holds it.""", sizes=CONV_SIZES),
      ]
]}

# ----------------------------------------------------------------- recurrence
# Batch-first sequences x (N, T, F), hidden states (N, T, H); W_x (F, G*H) and
# W_h (H, G*H) with the G gates side by side in PyTorch's order (a torch layer's
# weight_ih.T and weight_hh.T); h0, c0 (N, H) or None for zeros.
RNN_ACT = dict(resolve="rnn_activation_name", choices="_RNN_ACTIVATIONS")


def _recurrent(name, gates, signature, states, biases, cache_fields, backward_doc, doc,
               options=(), variants=None, seq="T", dims=(), backward_checks=()):
    """The forward and backward declarations of a recurrent kernel with `gates`
    gates: the states (h0, c0) and the biases in signature order, the cache
    fields after x, the states, W_x and W_h (the backward's dhs binds N, H and
    `seq`, the steps of hs: T, or a symbol `dims` binds after x)."""
    width = f"{gates}*H"
    weights = [In("W_h", f"H {width}"), In("W_x", f"F {width}")]
    cls = f"_{name.capitalize()}Cache"
    fields = ([In("x", "N T F")] + [In(s, "N H") for s in states]
              + [In("W_x", f"F {width}"), In("W_h", f"H {width}")] + cache_fields)
    # optional outputs, so that a layer reuses them across calls: the cache's
    # arrays (hs first) and the backward's pre-activation gradients dz (N, T,
    # G*H), a workspace. The forward's input projection x W_x (N, T, G*H) has no
    # array of its own: the reference computes it into the array each step's
    # gate pass then overwrites, gates (or hs for the simple RNN), as the fast
    # backends' GRU; their rnn and lstm per step, beside h_{t-1} W_h.
    outputs = [Out(f.name, f.shape) for f in cache_fields if f.array]
    out_names = ", ".join(o.name for o in outputs)
    doc += (f"\n\n        {out_names}: optional arrays the results are written into (the cache\n"
            "        refers to them), so that a caller reusing them allocates nothing.")
    # the backward's gradients: optional outputs too, so that a layer has them
    # written into its own gradient buffers
    grads = ([Out(f"d{s}", "N H") for s in states] + [Out("dW_x", f"F {width}"), Out("dW_h", f"H {width}")]
             + [Out(f"d{b}", width) for b in biases])
    grad_names = ", ".join(g.name for g in grads)
    backward_doc += (f"\n        need_dx: False when no gradient of x is wanted (a first layer): dx is\n"
                     f"        then None and its GEMM is not run. dz: an optional workspace\n"
                     f"        (N, T, {gates}H), its contents after the call unspecified.\n"
                     f"        {grad_names}: optional arrays the gradients are written into.")
    forward = Kernel(
        f"{name}_forward", signature + "".join(f", {o.name}=None" for o in outputs),
        [*options, In("x", "N T F"), *dims, *weights,
         *[In(s, "N H", optional=True) for s in states],
         *[In(b, width) for b in biases], *outputs],
        re.sub(r"=[^,]*", "", signature) + ", " + out_names, "_r", doc,
        variants={"zero-state": {s: None for s in states}, **(variants or {})})
    backward = Kernel(
        f"{name}_backward", "dhs, cache, need_dx=True, dx=None, dz=None"
        + "".join(f", {g.name}=None" for g in grads),
        # the cache first: its arrays bind the sizes, which dhs must have
        [Cache("cache", cls, fields,
               f"cache must be the {cls[1:]} returned by {name}_forward", bindable=True),
         *backward_checks,
         In("dhs", f"N {seq} H"),
         Out("dx", "N T F", when="need_dx"),
         Out("dz", f"N T {width}", scratch=True), *grads],
        "dhs, " + cls + "(" + ", ".join(f"cache_{f.name}" for f in fields) + "), dx, dz, " + grad_names,
        "dx, " + grad_names, backward_doc, sizes={seq: "T"} if seq != "T" else None)
    return [forward, backward]


RECURRENT = [
    *_recurrent(
        "rnn", 1, "x, h0, W_x, W_h, b, activation='tanh'", ["h0"], ["b"],
        [In("hs", "N T H"), Option("activation", **RNN_ACT, example="tanh")],
        """Gradients of rnn_forward through time. dhs (N, T, H): d loss / d h_t for
        every step (zeros where the loss does not read h_t); cache: rnn_forward's.
        Returns (dx (N, T, F), dh0 (N, H), dW_x, dW_h, db); dh0 is the gradient of
        the initial state (also when the forward took None, zeros).""",
        """A simple recurrent layer (torch.nn.RNN): h_t = act(x_t W_x + h_{t-1} W_h + b).

        x (N, T, F); h0 (N, H) or None (zeros); W_x (F, H); W_h (H, H); b (H,),
        the sum of PyTorch's two biases; activation tanh or relu.
        Returns (hs, cache): hs (N, T, H) every hidden state; cache for rnn_backward.""",
        options=[Option("activation", **RNN_ACT, example="tanh")],
        variants={"relu": {"activation": "relu"}}),
    *_recurrent(
        "lstm", 4, "x, h0, c0, W_x, W_h, b, return_sequences=True", ["h0", "c0"], ["b"],
        [In("hs", "N S H"), In("cs", "N T H"), In("gates", "N T 4*H", example="unit")],
        """Gradients of lstm_forward through time. dhs: d loss / d h_t, (N, T, H)
        for every step, or (N, 1, H) for the last state only when the forward kept
        that only (the shape of the forward's hs); cache: lstm_forward's.
        Returns (dx, dh0, dc0, dW_x, dW_h, db).""",
        """An LSTM layer (torch.nn.LSTM), gates i, f, g, o in that order:
        i, f, o = sigmoid, g = tanh of x_t W_x + h_{t-1} W_h + b (their blocks);
        c_t = f c_{t-1} + i g; h_t = o tanh(c_t).

        x (N, T, F); h0, c0 (N, H) or None (zeros); W_x (F, 4H); W_h (H, 4H);
        b (4H,), the sum of PyTorch's two biases. return_sequences: False keeps
        the last state only (a loss on h_T), the backward then taking its
        gradient alone: neither pass moves the other states (the backward
        rebuilds h_{t-1} = o_{t-1} tanh(c_{t-1}) from the gates and cells it
        reads anyway).
        Returns (hs, cache): hs (N, T, H), or (N, 1, H) with return_sequences
        False; cache for lstm_backward.""",
        options=[Flag("return_sequences", example=True)],
        variants={"last-state": {"return_sequences": False}}, seq="S",
        dims=[Dim("S", "T if return_sequences else 1")],
        backward_checks=[Check("S != T and S != 1", "ValueError",
                               "cache.hs has {S} steps: the forward's {T}, or 1 (its last state)")]),
    *_recurrent(
        "gru", 3, "x, h0, W_x, W_h, b_x, b_h", ["h0"], ["b_x", "b_h"],
        [In("hs", "N T H"), In("gates", "N T 3*H", example="unit"), In("hn", "N T H")],
        """Gradients of gru_forward through time. dhs (N, T, H): d loss / d h_t;
        cache: gru_forward's. Returns (dx, dh0, dW_x, dW_h, db_x, db_h).""",
        """A GRU layer (torch.nn.GRU), gates r, z, n in that order:
        r, z = sigmoid(x_t W_x + b_x + h_{t-1} W_h + b_h) (their blocks);
        n = tanh(x_t W_xn + b_xn + r (h_{t-1} W_hn + b_hn)); h_t = (1 - z) n + z h_{t-1}.

        x (N, T, F); h0 (N, H) or None (zeros); W_x (F, 3H); W_h (H, 3H);
        b_x, b_h (3H,): PyTorch's bias_ih and bias_hh.
        Returns (hs, cache): hs (N, T, H); cache for gru_backward."""),
]
DECLARATIONS.update({k.name: k for k in RECURRENT})

# ------------------------------------------------------------------ embedding
# tokens (N, T) int32 or int64 in [0, V); W (V, D) one vector per token.
EMBED_SIZES = {"V": 7, "D": 3}


def _tokens_in_range():
    return Check("tokens.size and (tokens.min() < 0 or tokens.max() >= V)", "ValueError",
                 "tokens holds indices outside [0, {V}), the rows of W", value=True)


EMBEDDING = [
    Kernel(
        "embedding_forward", "tokens, W, out=None",
        [In("W", "V D"),
         Index("tokens", "N T", high="V"),
         _tokens_in_range(),
         Out("out", "N T D")],
        "tokens, W, out", "out",
        """Rows of W looked up by token (torch.nn.functional.embedding):
        out[n, t] = W[tokens[n, t]].

        tokens (N, T) int32 or int64 in [0, V); W (V, D). Returns out (N, T, D).""",
        sizes=EMBED_SIZES),
    Kernel(
        "embedding_backward", "dy, tokens, W_shape, dW=None",
        [In("dy", "N T D"),
         ShapeOf("W_shape", "V D"),
         Index("tokens", "N T", high="V"),
         _tokens_in_range(),
         Out("dW", "V D")],
        "dy, tokens, dW", "dW",
        """Gradient of embedding_forward: dW (W_shape (V, D)) is 0 but at the rows of
        the tokens, each the sum of the dy[n, t] of every step holding its token
        (added in the row-major order of tokens on every backend).

        dy (N, T, D); tokens (N, T) int32 or int64 in [0, V). Returns dW.""",
        sizes=EMBED_SIZES),
]
DECLARATIONS.update({k.name: k for k in EMBEDDING})

# ----------------------------------------------------------------- row gather
# x (N, D) rows of data; index (B,) int32 or int64 in [0, N); out (B, D).
GATHER = [
    Kernel(
        "take_rows", "x, index, out=None",
        [In("x", "N D"),
         Index("index", "B", high="N"),
         Check("index.size and (index.min() < 0 or index.max() >= N)", "ValueError",
               "index holds row numbers outside [0, {N}), the rows of x", value=True),
         Out("out", "B D")],
        "x, index, out", "out",
        """Rows of x in the order of index (numpy.take along axis 0, a shuffled
        batch of training data): out[i] = x[index[i]]. Rows may repeat.

        x (N, D); index (B,) int32 or int64 in [0, N). Returns out (B, D).""",
        sizes={"N": 7, "B": 5, "D": 3}),
]
DECLARATIONS.update({k.name: k for k in GATHER})

# The kernels a backend may accelerate: method `name` validates, `_name` computes.
KERNELS = tuple(DECLARATIONS)


# ------------------------------------------------------------ code generation
_NAMESPACE = None


def namespace():
    """What the generated code refers to (built on first use: reference.py imports
    this module)."""
    global _NAMESPACE
    if _NAMESPACE is None:
        from . import reference as ref
        _NAMESPACE = {
            "np": np, "_chk": chk, "_nd": np.ndarray, "_F32": F32, "_F64": F64, "_I64": I64,
            "_I32": np.dtype(np.int32),
            "_empty": chk.output_empty, "_may": np.may_share_memory, "round_to": round_to,
            "activation_name": ref.activation_name, "_ACTIVATIONS": frozenset(ref.ACTIVATIONS),
            "_NEEDS_INPUT": ref.NEEDS_INPUT, "_BatchNormCache": ref.BatchNormCache,
            "_shape_arg": ref.shape_arg, "_method_arg": ref.method_arg,
            "_dtype_arg": ref.dtype_arg, "_rng_arg": ref.rng_arg, "_Miss": _Miss,
            "ValueError": ValueError, "TypeError": TypeError, "_wref": weakref.ref,
            "_SAME": object(),
        }
        _NAMESPACE.update({f"_X{i}": object() for i in range(16)})  # "absent" owners
        # recurrence
        _NAMESPACE.update({"rnn_activation_name": ref.rnn_activation_name,
                           "_RNN_ACTIVATIONS": frozenset(ref.RNN_ACTIVATIONS),
                           "_RnnCache": ref.RnnCache, "_LstmCache": ref.LstmCache,
                           "_GruCache": ref.GruCache})
    return _NAMESPACE


class _Miss(Exception):
    """The fast precondition failed: take the public path."""


def _dims(spec):
    return [] if spec in ("...", None) or spec.startswith("=") else spec.split()


class _Gen:
    def __init__(self):
        self.lines = []
        self.depth = 1

    def emit(self, line):
        self.lines.append("    " * self.depth + line)

    def indent(self):
        self.depth += 1

    def dedent(self):
        self.depth -= 1


# a dimension written "4*H": a multiple of a symbol (the gates of a recurrent layer)
_GATES = re.compile(r"(\d+)\*(\w+)$")


def _sym(s):
    m = _GATES.match(s)
    return f"({m[1]} * _s_{m[2]})" if m else f"_s_{s}"


def _known(d, bound):
    """Whether dimension d (a symbol or a multiple of one) is known from `bound`."""
    m = _GATES.match(d)
    return (m[2] if m else d) in bound


def _dim_value(d, sizes):
    m = _GATES.match(d)
    return int(m[1]) * sizes[m[2]] if m else sizes[d]


def _shape_expr(a, bound):
    """The full shape of array a as source, when every dimension is known."""
    if a.shape.startswith("="):
        return f"{a.shape[1:].replace('.', '_')}.shape"
    dims = _dims(a.shape)
    if not dims or any(not _known(d, bound) for d in dims):
        raise ValueError(f"the shape of {a.name} is not determined before it")
    return "(" + "".join(_sym(d) + ", " for d in dims) + ")"


def _index_shape(a, bound):
    """The shape an Index array must have as source: a tuple, None where a symbol
    is not bound yet (the array binds it)."""
    dims = _dims(a.shape)
    if a.shape.startswith("=") or all(_known(d, bound) for d in dims):
        return _shape_expr(a, bound)
    return "(" + "".join((_sym(d) if _known(d, bound) else "None") + ", " for d in dims) + ")"


def _bind_dims(g, a, bound):
    """Binds the symbols of array a's shape not bound yet to its sizes."""
    if a.shape.startswith("="):
        return
    for i, d in enumerate(_dims(a.shape)):
        if d not in bound and d not in ("*", "...") and not _GATES.match(d):
            g.emit(f"{_sym(d)} = {a.var}.shape[{i}]")
            bound.add(d)


def _public_array(g, k, a, anchor, bound):
    """Lines checking float array a (In or State) on the public path."""
    v, src, disp = a.var, a.src, a.display
    if isinstance(a, State):
        if a is anchor:
            g.emit(f"_chk.float_array({src}, {disp!r})")
            g.emit(f"_chk.state_array({src}, {disp!r}, {src})")
            g.emit(f"_dt = {v}.dtype")
        else:
            like = (a.like or anchor.var).replace(".", "_")
            like_name = a.like_name or anchor.display
            g.emit(f"_chk.state_array({src}, {disp!r}, {like}, {like_name!r})")
        return
    opts = []
    dims = _dims(a.shape)
    if a.ndim is not None:
        opts.append(f"ndim=({a.ndim})")
    if a is not anchor:
        opts.append("dtype=_dt")
    if a.shape.startswith("="):
        opts.append(f"shape={_shape_expr(a, bound)}")
    elif dims and "..." not in a.shape:
        if all(not _known(d, bound) for d in dims):
            opts.append(f"ndim={len(dims)}")
        else:
            opts.append("shape=(" + "".join((_sym(d) if _known(d, bound) else "None") + ", "
                                            for d in dims) + ")")
    g.emit(f"{v} = _chk.float_array({src}, {disp!r}{''.join(', ' + o for o in opts)})")
    if a.ndims:
        allowed = " or ".join(f"{d}-D" for d in a.ndims)
        g.emit(f"if {v}.ndim not in {a.ndims!r}:")
        g.emit(f"    raise ValueError(f\"{disp} must be {allowed}, got shape {{{v}.shape}}\")")
    if a is anchor:
        g.emit(f"_dt = {v}.dtype")
    if a.finite:
        g.emit(f"_chk.finite_targets({v}, {disp!r})")
    unknown = [d for d in dims if not _known(d, bound)]
    for i, d in enumerate(dims):
        if d not in bound and d not in ("*", "...") and not _GATES.match(d):
            g.emit(f"{_sym(d)} = {v}.shape[{i}]")
            bound.add(d)
    if any(_GATES.match(d) for d in unknown):  # a multiple of a symbol this array bound
        g.emit(f"_chk.check_shape({v}, {disp!r}, {_shape_expr(a, bound)})")


def _guarded(g, a, body):
    """Emit body() under a's `when` (required or ignored) or `optional` rules."""
    if a.when is not None:
        g.emit(f"if {a.when}:")
        g.indent()
        if a.required:
            g.emit(f"if {a.var} is None:")
            g.emit(f"    raise ValueError({a.required})")
        body()
        g.dedent()
        g.emit("else:")
        g.emit(f"    {a.var} = None")
    elif getattr(a, "optional", False):
        g.emit(f"if {a.var} is not None:")
        g.indent()
        body()
        g.dedent()
    else:
        body()


def public_source(k):
    """Source of the public method of kernel k."""
    g = _Gen()
    anchor = k.anchor()
    bound = set()
    for a in k.args:
        if isinstance(a, Option):
            if a.optional:
                g.emit(f"if {a.var} is not None:")
                g.emit(f"    {a.var} = {a.resolve}({a.var})")
            else:
                g.emit(f"{a.var} = {a.resolve}({a.var})")
        elif isinstance(a, Custom):
            g.emit(f"{a.var} = {a.fn}({a.var})")
        elif isinstance(a, Real):
            opts = "".join(f", {o}={getattr(a, o)!r}" for o in ("low", "high", "low_open", "high_open")
                           if getattr(a, o) is not None and getattr(a, o) is not False)
            g.emit(f"{a.var} = _chk.real({a.var}, {a.name!r}{opts})")
        elif isinstance(a, Int):
            opts = "".join(f", {o}={getattr(a, o)!r}" for o in ("low", "high")
                           if getattr(a, o) is not None)
            g.emit(f"{a.var} = _chk.integer({a.var}, {a.name!r}{opts})")
        elif isinstance(a, Flag):
            g.emit(f"{a.var} = bool({a.var})")
        elif isinstance(a, Check):
            g.emit(f"if {_symbols(a.cond, bound)}:")
            g.emit(f"    raise {a.error}(f{_symbols_in_fields(a.message, bound)!r})")
        elif isinstance(a, Work):
            g.emit(f"{a.var} = _empty({_shape_expr(a, bound)}, _dt)")
        elif isinstance(a, Pair):
            check = f"{a.var} = _chk.pair({a.var}, {a.name!r}, low={a.low!r})"
            if a.default:
                g.emit(f"if {a.var} is None:")
                g.emit(f"    {a.var} = {a.default}")
                g.emit("else:")
                g.emit("    " + check)
            else:
                g.emit(check)
        elif isinstance(a, Dim):
            g.emit(f"{_sym(a.symbol)} = {_symbols(a.expr, bound)}")
            bound.add(a.symbol)
        elif isinstance(a, ShapeOf):
            dims = a.dims.split()
            g.emit(f"{a.var} = _chk.shape_tuple({a.var}, {a.name!r}, {len(dims)})")
            for i, d in enumerate(dims):
                if d in bound:
                    g.emit(f"if {a.var}[{i}] != {_sym(d)}:")
                    g.emit(f"    raise ValueError(f'{a.name}[{i}] must be {{{_sym(d)}}}, "
                           f"got {{{a.var}[{i}]}}')")
                else:
                    g.emit(f"{_sym(d)} = {a.var}[{i}]")
                    bound.add(d)
        elif isinstance(a, Index):
            g.emit(f"{a.var} = _chk.index_array({a.var}, {a.name!r}, {_index_shape(a, bound)})")
            _bind_dims(g, a, bound)
        elif isinstance(a, Cache):
            g.emit(f"if not isinstance({a.var}, {a.cls}):")
            g.emit(f"    raise TypeError({a.message!r})")
            for f in a.fields:
                if isinstance(f, Option):
                    g.emit(f"{f.var} = {f.resolve}({f.src})")
                else:
                    _public_array(g, k, f, anchor, bound)
        elif isinstance(a, Weights):
            g.emit(f"{a.var} = _chk.sample_weight_array({a.var}, {_sym(a.n)}, _dt)")
        elif isinstance(a, Labels):
            g.emit(f"if isinstance({a.var}, np.ndarray) and {a.var}.ndim == 1:")
            g.emit(f"    {a.var} = _chk.labels_array({a.var}, {a.name!r}, {_sym(a.n)}, {_sym(a.c)})")
            g.emit("else:")
            g.emit(f"    {a.var} = _chk.float_array({a.var}, {a.name!r}, dtype=_dt, "
                   f"shape=({_sym(a.n)}, {_sym(a.c)}))")
            g.emit(f"    _chk.finite_targets({a.var}, {a.name!r})")
        elif isinstance(a, Out):
            def body(a=a):
                g.emit(f"{a.var} = _chk.out_array({a.var}, {a.name!r}, {_shape_expr(a, bound)}, "
                       f"{a.dtype})")
            if a.when is not None:
                g.emit(f"{a.var} = _chk.out_array({a.var}, {a.name!r}, {_shape_expr(a, bound)}, "
                       f"{a.dtype}) if {a.when} else None")
            else:
                _guarded(g, a, body)
        elif isinstance(a, (In, State)):
            _guarded(g, a, lambda a=a: _public_array(g, k, a, anchor, bound))
    written = [a.var for a in k.written()]
    read = [a.var for a in k.read()]
    if len(written) > 1:
        g.emit(f"_chk.distinct({', '.join(f'{w}={w}' for w in written)})")
    if written and read:
        opt = f", in_place_ok={k.in_place_ok}" if k.in_place_ok else ""
        g.emit(f"{', '.join(read)}, = _chk.unshared(({', '.join(written)},), "
               f"{', '.join(read)}{opt})")
    g.emit(f"_r = self._{k.name}({k.impl})")
    g.emit(f"return {k.returns}")
    return f"def {k.name}(self, {k.signature}):\n" + "\n".join(g.lines) + "\n"


def _fast_float(a, anchor, bound, g):
    """Fast-path lines for a float array (In, State or Out), None not allowed."""
    v, src = a.var, a.src
    if a.src != a.var:
        g.emit(f"{v} = {src}")
    if a is anchor:
        g.emit(f"if not (type({v}) is _nd and {v}.flags.carray): raise _Miss")
        g.emit(f"_dt = {v}.dtype")
        g.emit("if not (_dt is _F64 or _dt is _F32): raise _Miss")
    else:
        g.emit(f"if not (type({v}) is _nd and {v}.dtype is _dt and {v}.flags.carray): raise _Miss")
    if isinstance(a, State) and a is not anchor:
        like = (a.like or anchor.var).replace(".", "_")
        g.emit(f"if {v}.shape != {like}.shape: raise _Miss")
        return
    if a.ndim is not None:
        g.emit(f"_n = {a.ndim}")
        g.emit(f"if _n is not None and {v}.ndim != _n: raise _Miss")
    if a.ndims:
        g.emit(f"if {v}.ndim not in {a.ndims!r}: raise _Miss")
    if a.shape.startswith("="):
        g.emit(f"if {v}.shape != {_shape_expr(a, bound)}: raise _Miss")
    elif a.shape.startswith("N ..."):
        if "N" in bound:
            g.emit(f"if {v}.shape[0] != {_sym('N')}: raise _Miss")
        else:
            g.emit(f"{_sym('N')} = {v}.shape[0]")
            bound.add("N")
    elif _dims(a.shape):
        dims = _dims(a.shape)
        if all(_known(d, bound) for d in dims):
            g.emit(f"if {v}.shape != {_shape_expr(a, bound)}: raise _Miss")
        else:
            names = []
            checks = []
            later = []  # multiples of a symbol bound by this array
            for i, d in enumerate(dims):
                if _known(d, bound):
                    names.append(f"_t{i}")
                    checks.append(f"_t{i} != {_sym(d)}")
                elif _GATES.match(d):
                    names.append(f"_t{i}")
                    later.append(f"_t{i} != {_sym(d)}")
                else:
                    names.append(_sym(d))
            g.emit(f"{''.join(n + ', ' for n in names)}= {v}.shape")
            if checks + later:
                g.emit(f"if {' or '.join(checks + later)}: raise _Miss")
            bound.update(d for d in dims if not _GATES.match(d))


def _fast_scalar(a):
    """The fast-path line checking a Real or Int scalar."""
    if isinstance(a, Real):
        lo = "-_inf" if a.low is None else repr(float(a.low))
        hi = "_inf" if a.high is None else repr(float(a.high))
        lop = "<" if a.low is None or a.low_open else "<="
        hop = "<" if a.high is None or a.high_open else "<="
        return f"if not (type({a.var}) is float and {lo} {lop} {a.var} {hop} {hi}): raise _Miss"
    conds = [f"type({a.var}) is int"]
    if a.low is not None:
        conds.append(f"{a.low} <= {a.var}")
    if a.high is not None:
        conds.append(f"{a.var} <= {a.high}")
    return f"if not ({' and '.join(conds)}): raise _Miss"


def _fast_checks(k, depth):
    """The fast precondition of kernel k as lines of code at indentation `depth`
    (they raise _Miss when it fails), the lines allocating the outputs not
    passed, and the shape symbols the checks bind."""
    g = _Gen()
    g.depth = depth
    anchor = k.anchor()
    bound = set()
    allocate = []
    for a in k.args:
        if isinstance(a, Option):
            cond = f"type({a.var}) is str and {a.var} in {a.choices}"
            if a.optional:
                cond = f"{a.var} is None or ({cond})"
            g.emit(f"if not ({cond}): raise _Miss")
        elif isinstance(a, (Real, Int)):
            g.emit(_fast_scalar(a))
        elif isinstance(a, Flag):
            g.emit(f"if type({a.var}) is not bool: {a.var} = bool({a.var})")
        elif isinstance(a, Check):
            if not a.value:
                g.emit(f"if {_symbols(a.cond, bound)}: raise _Miss")
        elif isinstance(a, Pair):
            v = a.var
            if a.default:
                g.emit(f"if {v} is None: {v} = {a.default}")
                g.emit(f"elif type({v}) is int: {v} = ({v}, {v})")
            else:
                g.emit(f"if type({v}) is int: {v} = ({v}, {v})")
            g.emit(f"elif not (type({v}) is tuple and len({v}) == 2 and type({v}[0]) is int "
                   f"and type({v}[1]) is int): raise _Miss")
            g.emit(f"if {v}[0] < {a.low} or {v}[1] < {a.low}: raise _Miss")
        elif isinstance(a, Dim):
            g.emit(f"{_sym(a.symbol)} = {_symbols(a.expr, bound)}")
            bound.add(a.symbol)
        elif isinstance(a, ShapeOf):
            dims = a.dims.split()
            g.emit(f"if not (type({a.var}) is tuple and len({a.var}) == {len(dims)}): raise _Miss")
            for i, d in enumerate(dims):
                g.emit(f"if type({a.var}[{i}]) is not int or {a.var}[{i}] < 0: raise _Miss")
                if d in bound:
                    g.emit(f"if {a.var}[{i}] != {_sym(d)}: raise _Miss")
                else:
                    g.emit(f"{_sym(d)} = {a.var}[{i}]")
                    bound.add(d)
        elif isinstance(a, Index):
            v = a.var
            dims = _dims(a.shape)
            if a.shape.startswith("=") or all(_known(d, bound) for d in dims):
                fits = f"{v}.shape == {_shape_expr(a, bound)}"
            else:  # binds the symbols it is first to hold
                fits = " and ".join([f"{v}.ndim == {len(dims)}"] + [
                    f"{v}.shape[{i}] == {_sym(d)}" for i, d in enumerate(dims) if _known(d, bound)])
            g.emit(f"if not (type({v}) is _nd and ({v}.dtype is _I64 or {v}.dtype is _I32) "
                   f"and {v}.flags.carray and {fits}): raise _Miss")
            _bind_dims(g, a, bound)
        elif isinstance(a, Work):
            allocate.append(f"{a.var} = _empty({_shape_expr(a, bound)}, _dt)")
        elif isinstance(a, Cache):
            g.emit(f"if type({a.var}) is not {a.cls}: raise _Miss")
            for f in a.fields:
                if isinstance(f, Option):
                    g.emit(f"{f.var} = {f.src}")
                    g.emit(f"if not (type({f.var}) is str and {f.var} in {f.choices}): raise _Miss")
                else:
                    _fast_float(f, anchor, bound, g)
        elif isinstance(a, Weights):
            g.emit(f"if {a.var} is not None and not (type({a.var}) is _nd and {a.var}.dtype is _dt "
                   f"and {a.var}.flags.carray and {a.var}.shape == ({_sym(a.n)},)): raise _Miss")
        elif isinstance(a, Labels):
            n, c = _sym(a.n), _sym(a.c)
            g.emit(f"if type({a.var}) is not _nd or not {a.var}.flags.carray: raise _Miss")
            g.emit(f"if {a.var}.ndim == 1:")
            g.emit(f"    if not ({a.var}.dtype is _I64 and {a.var}.shape[0] == {n}): raise _Miss")
            g.emit(f"elif not ({a.var}.dtype is _dt and {a.var}.shape == ({n}, {c})): raise _Miss")
        elif isinstance(a, Out):
            shape = _shape_expr(a, bound)
            check = (f"if {a.var} is not None and not (type({a.var}) is _nd "
                     f"and {a.var}.dtype is {a.dtype} "
                     f"and {a.var}.flags.carray and {a.var}.shape == {shape}): raise _Miss")
            if a.when is not None:
                g.emit(f"if {a.when}:")
                g.emit("    " + check)
                g.emit("else:")
                g.emit(f"    {a.var} = None")
                allocate.append(f"if {a.var} is None and {a.when}: {a.var} = _empty({shape}, {a.dtype})")
            else:
                g.emit(check)
                if not a.optional:
                    allocate.append(f"if {a.var} is None: {a.var} = _empty({shape}, {a.dtype})")
        elif isinstance(a, (In, State)):
            if a.when is not None:
                g.emit(f"if {a.when}:")
                g.indent()
                g.emit(f"if {a.var} is None: raise _Miss")
                _fast_float(a, anchor, bound, g)
                g.dedent()
                g.emit("else:")
                g.emit(f"    {a.var} = None")
            elif a.optional:
                g.emit(f"if {a.var} is not None:")
                g.indent()
                _fast_float(a, anchor, bound, g)
                g.dedent()
            else:
                _fast_float(a, anchor, bound, g)
    # memory shared between a written array and any other: the public path decides
    written = k.written()
    others = k.read()
    maybe_none = {a.var for a in k.array_args()
                  if getattr(a, "optional", False) or a.when is not None
                  or isinstance(a, (Out, Weights))}
    owners = {}
    for i, a in enumerate(written + others):
        o = f"_o_{a.var}"
        owners[a.var] = o
        own = f"({a.var} if {a.var}.base is None else {a.var}.base)"
        if a.var in maybe_none:
            g.emit(f"{o} = _X{i} if {a.var} is None else {own}")
        else:
            g.emit(f"{o} = {own}")
    pairs = []
    for i, w in enumerate(written):
        for a in written[i + 1:] + others:
            pairs.append(f"({owners[w.var]} is {owners[a.var]} and _may({w.var}, {a.var}))")
    if pairs:
        g.emit("if (" + "\n                    or ".join(pairs) + "):")
        g.emit("    raise _Miss")
    return g.lines, allocate, bound


def _free_scalars(k):
    """The numeric scalars of kernel k that no other argument's rule refers to (an
    optimizer's rate and step count, a penalty's rates): a memo hit or a bound
    kernel takes new values of them at each call and checks their ranges alone."""
    names = [p.name for p in k.params]
    rules = " ".join(" ".join(str(getattr(a, attr, None) or "")
                              for attr in ("when", "cond", "shape", "expr", "high", "default"))
                     for a in k.args)
    return [a for a in k.args if isinstance(a, (Real, Int)) and a.var in names
            and not re.search(rf"\b{a.var}\b", rules)]


def fast_source(k):
    """Source of the fast method of kernel k (a closure over the backend _b)."""
    names = [p.name for p in k.params]
    fallback = f"return _b.{k.name}({', '.join(names)})"
    # inside: def _make, def kernel, else (memo miss), try
    checks, allocate, bound = _fast_checks(k, 4)
    # The memo: a call whose arguments are the very objects of the last call that
    # passed (arrays compared through weak references, so that the memo keeps no
    # caller array alive; everything else by identity) skips the checks: an
    # array's type, dtype, shape, strides and memory cannot change. Hot callers
    # pass the same workspace and parameter arrays step after step. Numeric
    # scalars that no other argument's rule refers to (an optimizer's rate and
    # step count, a dropout seed: new values every call) are not part of the key;
    # a hit checks their ranges alone. Not for kernels taking a cache (a tuple:
    # it cannot be referenced weakly).
    memo = not any(isinstance(a, Cache) for a in k.args)
    free = _free_scalars(k)
    free_names = {a.var for a in free}
    arrays = {a.var for a in k.args if isinstance(a, (In, State, Out, Weights, Labels, Index))
              and a.src == a.var}
    state = ["_dt"] + sorted(_sym(d) for d in bound)
    g = _Gen()
    g.depth = 2
    if memo:
        hit = []
        for i, n in enumerate(names):
            if n in arrays:
                hit.append(f"(_k[{i}] is None if {n} is None "
                           f"else (_k[{i}] is not None and _k[{i}]() is {n}))")
            elif n not in free_names:
                hit.append(f"{n} is _k[{i}]")
        first = next(n for n in names if n in arrays)  # the key: one entry per first array
        g.emit(f"_m = _memo.get(id({first}))")
        g.emit("_k = None if _m is None else _m[0]")
        g.emit("if (_k is not None and " + "\n                    and ".join(hit) + "):")
        if free:
            g.emit("    try:")
            for a in free:
                g.emit("        " + _fast_scalar(a))
            g.emit("    except _Miss:")
            g.emit("        " + fallback)
        g.emit("    _n = _m[1]")
        for i, n in enumerate(names):  # the checks' normalisations (unused arrays to None, flags to bool)
            if n not in free_names:
                g.emit(f"    if _n[{i}] is not _SAME: {n} = _n[{i}]")
        g.emit(f"    {''.join(n + ', ' for n in state)}= _m[2]")
        g.emit("else:")
    else:
        g.emit("if True:")
    g.indent()
    if memo:
        g.emit(f"_a = ({', '.join(names)},)  # as passed, before the checks' normalisations")
    g.emit("try:")
    g.lines += checks
    g.emit("except (_Miss, ValueError):")
    g.emit("    " + fallback)
    if memo:
        keys = ", ".join(f"None if {n} is None else _wref({n})" if n in arrays
                         else "None" if n in free_names else n for n in names)
        normalised = ", ".join("_SAME" if n in free_names else f"_SAME if {n} is _a[{i}] else {n}"
                               for i, n in enumerate(names))
        g.emit("if len(_memo) > 64: _memo.clear()")
        g.emit(f"_memo[id(_a[{names.index(first)}])] = (({keys},), ({normalised},), "
               f"({''.join(n + ', ' for n in state)}))")
    g.dedent()
    for line in allocate:
        g.emit(line)
    g.emit(f"_r = _b._{k.name}({k.impl})")
    g.emit(f"return {k.returns}")
    head = (f"def _make(_b, _inf=float('inf')):\n    _memo = {{}}\n"
            f"    def {k.name}({k.signature}):\n")
    return head + "\n".join(g.lines) + f"\n    return {k.name}\n"


def bind_source(k):
    """Source of kernel k's binder: bind(arguments) checks the fast precondition once
    and returns the kernel bound to those arguments (None when the precondition
    fails: the caller keeps the validating path). The bound kernel has the
    kernel's signature, every parameter optional: it runs on the bound arrays and
    options, ignoring what is passed for them (the caller's promise: the very
    objects it bound), and on the free scalars passed (the bound values when
    omitted), whose ranges it checks at each call (outside them the call goes to
    the public method, which raises its clear error)."""
    names = [p.name for p in k.params]
    free = _free_scalars(k)
    free_names = {a.var for a in free}
    checks, allocate, _ = _fast_checks(k, 3)  # inside: def _make_bind, def bind, try
    g = _Gen()
    g.depth = 2
    g.emit("try:")
    g.lines += checks
    g.emit("except (_Miss, ValueError):")
    g.emit("    return None")
    for line in allocate:
        g.emit(line)
    # the implementation, or what a backend's _bind_<kernel> makes of these
    # arguments: the same implementation with what it derives from the arrays
    # (pointers) taken once
    g.emit(f"_impl = _b._{k.name} if _bind_impl is None else _bind_impl({k.impl})")
    held = [n for n in names if n not in free_names]
    g.emit(f"_held = ({''.join(n + ', ' for n in held)})")
    params = ", ".join(f"{n}={n}" if n in free_names else f"{n}=None" for n in names)
    g.emit(f"def {k.name}({params}):")
    g.indent()
    if held:
        g.emit(f"{', '.join(held)}, = _held")
    if free:
        g.emit("try:")
        for a in free:
            g.emit("    " + _fast_scalar(a))
        g.emit("except _Miss:")
        g.emit(f"    return _b.{k.name}({', '.join(names)})")
    g.emit(f"_r = _impl({k.impl})")
    g.emit(f"return {k.returns}")
    g.dedent()
    g.emit(f"return {k.name}")
    head = (f"def _make_bind(_b, _inf=float('inf')):\n    _bind_impl = getattr(_b, '_bind_{k.name}', None)\n"
            f"    def bind({k.signature}):\n")
    return head + "\n".join(g.lines) + "\n    return bind\n"


def _compile(source, name):
    code = compile(source, f"<fastnn.backends.spec: {name}>", "exec")
    ns = {}
    exec(code, namespace(), ns)  # noqa: S102 (source generated from the declarations above)
    return ns


def source(name, fast=False):
    """The generated source of kernel `name`'s public method, or of its fast path."""
    k = DECLARATIONS[name]
    return fast_source(k) if fast else public_source(k)


def install(cls):
    """Set the public method of every declared kernel on `cls` (NumpyBackend)."""
    for k in DECLARATIONS.values():
        fn = _compile(public_source(k), k.name)[k.name]
        fn.__doc__ = inspect.cleandoc(k.doc)
        fn.__qualname__ = f"{cls.__name__}.{k.name}"
        fn.__module__ = cls.__module__
        setattr(cls, k.name, fn)


_FAST_MAKERS: dict = {}
_BIND_MAKERS: dict = {}


class Fast:
    """``backend.fast``: the kernels behind the structural precondition (see the
    module docstring)."""

    def __init__(self, backend):
        self.backend = backend
        for k in DECLARATIONS.values():
            if not k.has_fast:
                setattr(self, k.name, getattr(backend, k.name))
                continue
            make = _FAST_MAKERS.get(k.name)
            if make is None:
                make = _FAST_MAKERS[k.name] = _compile(fast_source(k), k.name + ".fast")["_make"]
            fn = make(backend)
            fn.__doc__ = inspect.cleandoc(k.doc)
            setattr(self, k.name, fn)

    def binder(self, run=False):
        """A stand-in for this object that binds (see `bind`) each kernel called
        through it, and with run=True also runs it; `seal()` then gives an object
        whose kernels are the bound ones (None when a call could not be bound or
        one kernel was called twice)."""
        return Binder(self, run)

    def bind(self, name, *args, **kwargs):
        """Kernel `name` bound to these arguments (see bind_source), or None when
        they fail its fast precondition. A hot caller binds once per set of
        workspaces and then calls the bound kernel with no arguments, or with new
        values of its free scalars (bound.free names them), e.g.
        ``step = fast.bind("adam_step", p, g, m, v, 1, 1e-3); step(t=2, lr=1e-3)``."""
        k = DECLARATIONS[name]
        if not k.has_fast or any(isinstance(a, Cache) and not a.bindable for a in k.args):
            return None
        binders = self.__dict__.setdefault("_binders", {})
        binder = binders.get(name)
        if binder is None:
            made = _BIND_MAKERS.get(name)
            if made is None:
                made = _BIND_MAKERS[name] = (_compile(bind_source(k), name + ".bind")["_make_bind"],
                                             tuple(a.var for a in _free_scalars(k)))
            binder = binders[name] = (made[0](self.backend), made[1])
        bound = binder[0](*args, **kwargs)
        if bound is not None:
            bound.free = binder[1]
        return bound

    def __repr__(self):
        return f"<fast kernels of the {self.backend.name} backend>"


class Binder:
    """See Fast.binder. Code written against ``backend.fast`` (a loss's kernel
    call, an optimizer's step) runs once through a Binder to bind the kernels it
    calls; later runs through the sealed object call the bound kernels, which
    take the free scalars passed and ignore the rest (the same objects)."""

    def __init__(self, fast, run):
        self._fast, self._run = fast, run
        self._bound = {}
        self.failed = False

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def bind(*args, **kwargs):
            bound = None if name in self._bound else self._fast.bind(name, *args, **kwargs)
            if bound is None:
                self.failed = True
                return getattr(self._fast, name)(*args, **kwargs) if self._run else None
            self._bound[name] = bound
            return bound(*args, **kwargs) if self._run else None
        return bind

    def seal(self):
        if self.failed:
            return None
        sealed = types.SimpleNamespace(**self._bound)
        return sealed

