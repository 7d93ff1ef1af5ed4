"""Checks for people who write layers and kernels: the ones fastnn's own tests use.

- `check_gradients(layer_or_model, x, y=None)`: a layer's backward (or a model's
  `loss_and_gradient`) against numerical derivatives: the complex-step
  derivative where the layer's forward runs on complex arrays, else central
  finite differences. Returns a `GradientReport`: the worst relative error per
  tensor, a table when printed, and `ok`. `assert_gradients` raises
  AssertionError with that table when a gradient is wrong.
- `assert_backends_agree(fn, *args)`: `fn(backend, *args)` on every available
  backend, each output compared with the reference backend's (numpy) at the
  equivalence catalogue's tolerances (`RTOL`, `assert_close`); a float32 array
  beyond them by its accuracy against float64 (`reference_error`).

For example::

    from fastnn import nn, testing
    testing.assert_gradients(nn.Dense(3, "tanh"), np.random.randn(5, 4))
    testing.assert_backends_agree(lambda kernels, x: kernels.activation_forward(x, "gelu"),
                                  np.random.randn(64, 10).astype(np.float32))
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, List, Literal, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import backends as _backends
from ._types import ArrayLike, Backend, DTypeLike
from .backends import _checks as chk
from .backends.reference import NumpyBackend

if TYPE_CHECKING:  # for annotations only
    from .nn.layers import Layer
    from .nn.model import Sequential

REFERENCE = "numpy"  # the oracle every other backend is compared with

#: Relative tolerance of a backend against the reference, per dtype: what the
#: equivalence catalogue (tests/catalogue.py) holds every kernel to.
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}

# check_gradients' defaults per dtype: (finite-difference step, rtol). Central
# differences have truncation error ~eps^2 and rounding ~machine eps / eps.
GRADIENT_DEFAULTS = {np.dtype(np.float64): (1e-6, 1e-5), np.dtype(np.float32): (1e-3, 1e-2)}
COMPLEX_STEP = 1e-20  # the complex step: no subtraction, so no rounding to trade against


# ------------------------------------------------------------------ closeness
def assert_close(actual: Any, expected: Any, dtype: Optional[DTypeLike] = None, what: str = "",
                 magnitude: Optional[ArrayLike] = None, rtol: Optional[float] = None,
                 atol: float = 0.0) -> None:
    """Raise AssertionError unless `actual` matches `expected` to the catalogue's rule.

    An element passes when ``|actual - expected| <= rtol * (|expected| + 1e-2 *
    max|expected| + tiny) + atol``: relative, with a floor tied to the array's
    scale so that values cancelling to ~0 are judged against the magnitudes they
    came from. Dtype, shape and the pattern of non-finite values must match too.
    Scalars pass within ``10 rtol`` (plus `atol`).

    Parameters
    ----------
    actual : array_like or scalar
        The value to check.
    expected : array_like or scalar
        The value it should equal.
    dtype : dtype, optional
        The dtype whose tolerance applies (default: the dtype of `expected`).
    what : str, default ""
        A name for the value, put at the start of the error message.
    magnitude : array_like, optional
        Replaces ``|expected|`` (shaped like it) where each element is a sum of
        terms that may cancel: the size of those terms, which bounds its rounding.
    rtol : float, optional
        The relative tolerance (default: `RTOL` of `dtype`: 1e-5 float32,
        1e-10 float64).
    atol : float, default 0.0
        An absolute tolerance added to each element's.

    Raises
    ------
    AssertionError
        Naming the worst element, its values and the tolerance.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn.testing import assert_close
    >>> assert_close(np.float32([1.0, 2.0]), np.float32([1.0, 2.0 + 1e-6]))
    >>> assert_close(np.float32([1.0]), np.float32([1.1]), what="y")
    Traceback (most recent call last):
    ...
    AssertionError: y: ...
    """
    if dtype is None:
        dtype = getattr(expected, "dtype", np.float64)
    dtype = np.dtype(dtype)
    if rtol is None:
        rtol = RTOL.get(dtype, RTOL[np.dtype(np.float64)])
    label = f"{what}: " if what else ""
    if isinstance(expected, (float, int, np.number)) or np.ndim(expected) == 0:
        if not np.isclose(actual, expected, rtol=rtol * 10, atol=rtol * 1e-3 + atol):
            raise AssertionError(f"{label}got {actual!r}, expected {expected!r} (rtol {rtol * 10:g})")
        return
    if not isinstance(actual, np.ndarray):
        raise AssertionError(f"{label}got a {type(actual).__name__}, expected an array")
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{label}dtype {actual.dtype}, expected {expected.dtype}")
    if actual.shape != expected.shape:
        raise AssertionError(f"{label}shape {actual.shape}, expected {expected.shape}")
    if expected.dtype.kind not in "fc":  # integers, booleans: exactly
        bad = actual != expected
        if bad.any():
            i = tuple(int(k) for k in np.unravel_index(np.flatnonzero(bad)[0], bad.shape))
            raise AssertionError(f"{label}{bad.sum()} of {bad.size} elements differ; first at {i}: "
                                 f"got {actual[i]!r}, expected {expected[i]!r}")
        return
    finite = np.isfinite(expected)
    pattern = np.isfinite(actual) != finite
    if pattern.any():
        i = tuple(int(k) for k in np.unravel_index(np.flatnonzero(pattern)[0], pattern.shape))
        raise AssertionError(f"{label}non-finite pattern differs at {i}: got {actual[i]!r}, "
                             f"expected {expected[i]!r}")
    same = (actual[~finite] == expected[~finite]) | (np.isnan(actual[~finite]) & np.isnan(expected[~finite]))
    if not finite.all() and not same.all():
        raise AssertionError(f"{label}non-finite values differ")
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    size = np.abs(e) if magnitude is None else np.abs(np.asarray(magnitude, np.float64))
    scale = np.abs(e[finite]).max(initial=0.0)
    tol = rtol * (size + 1e-2 * scale + np.finfo(dtype).tiny) + atol
    excess = np.where(finite, np.abs(np.where(finite, a - e, 0.0)) - tol, -np.inf)
    bad = excess > 0
    if bad.any():
        i = tuple(int(k) for k in np.unravel_index(np.argmax(excess), excess.shape))
        raise AssertionError(
            f"{label}{bad.sum()} of {bad.size} elements differ; worst at {i}: got {float(a[i])!r}, expected "
            f"{float(e[i])!r} (|difference| {abs(a[i] - e[i]):.3g} > tolerance {tol[i]:.3g}, rtol {rtol:g})")


# ---------------------------------------------------------- backends agreeing
def _outputs(result):
    """[(label, value)] of a result: a value, or (nested) tuples, lists and dicts of them."""
    if isinstance(result, dict):
        return [(f"[{k!r}]" + sub, v) for k, item in result.items() for sub, v in _outputs(item)]
    if isinstance(result, (tuple, list)):
        return [(f"[{i}]" + sub, v) for i, item in enumerate(result) for sub, v in _outputs(item)]
    return [("", result)]


def _copy_args(value):
    """Arrays copied (in their memory order), containers rebuilt, anything else shared."""
    if isinstance(value, np.ndarray):
        return np.copy(value, order="K")
    if isinstance(value, (tuple, list)):
        return type(value)(_copy_args(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy_args(v) for k, v in value.items()}
    return value


def _float_dtype(values):
    """float32 if any of the arrays is float32, else float64: the precision the
    computation ran in (for Python floats it returns)."""
    for v in values:
        if isinstance(v, (np.ndarray, np.generic)) and v.dtype == np.float32:
            return np.dtype(np.float32)
    return np.dtype(np.float64)


def _as_float64(value):
    """float32 arrays and scalars as float64 copies, containers rebuilt, anything else shared."""
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype == np.float32:
        return value.astype(np.float64, order="K") if isinstance(value, np.ndarray) else np.float64(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_as_float64(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_float64(v) for k, v in value.items()}
    return value


# How far a float32 result may lie from the same computation in float64, as a
# fraction of its largest value, and still count as that computation rounded
# (beyond it, the float64 run computed something else: other random draws).
_SAME_COMPUTATION = 1e-3


def reference_error(reference32: Any, reference64: Any) -> Optional[float]:
    """The float32 reference's largest error against the float64 result of the same computation.

    A backend's float32 result that differs from the reference's by `RTOL` plus
    twice this is as accurate as the reference (`assert_backends_agree`). A
    state that feeds every later one (a recurrence) carries each step's
    rounding to the end: two float32 computations as accurate as each other
    part by more than `RTOL` over a long sequence, so they are judged by their
    accuracy, not by the reference's rounding.

    Parameters
    ----------
    reference32 : array_like
        The reference's float32 result.
    reference64 : array_like
        The same computation's result on float64 copies of the arguments.

    Returns
    -------
    float or None
        The largest ``|reference32 - reference64|`` over the finite elements;
        None when the two are not one computation: other shapes, non-finite
        values apart, or a difference beyond 1e-3 of the largest value (other
        random draws, say).

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn.testing import reference_error
    >>> x = np.float64([1 / 3, 2 / 3])
    >>> float(reference_error(x.astype(np.float32), x)) < 3e-8
    True
    """
    r32 = np.asarray(reference32)
    r64 = np.asarray(reference64, np.float64)
    if r32.shape != r64.shape or r32.dtype.kind != "f":
        return None
    finite = np.isfinite(r32)
    if (finite != np.isfinite(r64)).any():
        return None
    difference = np.abs(r32[finite].astype(np.float64) - r64[finite]).max(initial=0.0)
    if difference > _SAME_COMPUTATION * np.abs(r64[finite]).max(initial=0.0):
        return None
    return float(difference)


def assert_backends_agree(fn: Callable[..., Any], *args: Any, backends: Optional[Sequence[str]] = None,
                          rtol: Optional[float] = None, atol: float = 0.0,
                          allow_reference_error: bool = True, **kwargs: Any) -> Any:
    """Run ``fn(backend, *args, **kwargs)`` on every backend and compare with the reference's.

    `fn` receives the backend object (its kernels are its methods:
    ``backend.dense_forward(...)``); to test code that uses the current backend
    instead, let `fn` call it inside ``with fastnn.use_backend(backend.name):``.
    Each backend gets its own copy of the array arguments, so kernels that update
    state in place start from the same values (return those arrays to compare
    them too). Outputs may be an array or number, or (nested) tuples, lists and
    dicts of them. Float arrays are compared by `assert_close` at `RTOL` of their
    dtype (or `rtol`), plus `atol`; integer and boolean arrays exactly; Python
    floats at the RTOL of the arguments' precision (float32 if any argument is).

    A float32 array that differs by more is judged by its accuracy, as the
    equivalence catalogue judges the recurrent kernels: the reference runs `fn`
    once more on float64 copies of the float32 arguments, and the array passes
    if it differs from the reference's by no more than the tolerance plus twice
    `reference_error` (the float32 reference's own largest error against that
    float64 result). Over a long recurrence each step's rounding feeds the
    next, and two equally accurate float32 computations part by more than
    `RTOL`. Where the float64 run fails or computes something else (see
    `reference_error`), the array fails as before.

    Parameters
    ----------
    fn : callable
        ``fn(backend, *args, **kwargs)``, the computation to compare.
    *args : object
        Positional arguments of `fn` after the backend.
    backends : sequence of str or backend objects, optional
        The backends to run (default: `fastnn.available_backends`).
    rtol : float, optional
        The relative tolerance (default: `RTOL` of each array's dtype).
    atol : float, default 0.0
        An absolute tolerance added to each element's.
    allow_reference_error : bool, default True
        Judge a float32 array that differs by more than the tolerance by its
        accuracy against the float64 result (above); False compares with the
        float32 reference alone.
    **kwargs : object
        Keyword arguments of `fn`.

    Returns
    -------
    object
        The reference backend's (numpy) result.

    Raises
    ------
    AssertionError
        Naming the backend, the output and its worst element.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn.testing import assert_backends_agree
    >>> x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    >>> y = assert_backends_agree(lambda backend, x: backend.activation_forward(x, "gelu"), x)
    >>> y.shape, y.dtype
    ((3, 4), dtype('float32'))
    """
    names = _backends.available_backends() if backends is None else list(backends)
    reference = _backends.get_backend(REFERENCE)
    result = fn(reference, *_copy_args(args), **_copy_args(kwargs))
    expected = _outputs(result)
    precision = _float_dtype([v for _, v in expected] + [a for a in args if isinstance(a, np.ndarray)])
    errors: Optional[dict] = None  # label -> reference_error, from the float64 run when first needed

    def allowance(label, e):
        nonlocal errors
        if errors is None:
            try:
                result64 = fn(reference, *_as_float64(args), **_as_float64(kwargs))
            except Exception:  # no float64 run, no float64 result to judge by
                errors = {}
            else:
                errors = dict(_outputs(result64))
        return reference_error(e, errors[label]) if label in errors else None
    for name in names:
        backend = name if isinstance(name, NumpyBackend) else _backends.get_backend(name)
        if backend is reference:
            continue
        actual = _outputs(fn(backend, *_copy_args(args), **_copy_args(kwargs)))
        if len(actual) != len(expected) or [k for k, _ in actual] != [k for k, _ in expected]:
            raise AssertionError(f"backend {backend.name!r} returned outputs {[k for k, _ in actual]}, "
                                 f"the reference {[k for k, _ in expected]}")
        for (label, a), (_, e) in zip(actual, expected):
            what = f"backend {backend.name!r} against {REFERENCE!r}, output{label or ' 0'}"
            dtype = getattr(e, "dtype", precision)
            if isinstance(e, np.ndarray) and not isinstance(a, np.ndarray):
                raise AssertionError(f"{what}: got a {type(a).__name__}, expected an array")
            if not isinstance(e, (np.ndarray, np.generic, float, int)):
                if a != e:
                    raise AssertionError(f"{what}: got {a!r}, expected {e!r}")
                continue
            try:
                assert_close(a, e, dtype, what, rtol=rtol, atol=atol)
            except AssertionError:
                error = (allowance(label, e) if allow_reference_error and isinstance(e, np.ndarray)
                         and e.dtype == np.float32 and isinstance(a, np.ndarray) else None)
                if error is None:
                    raise
                assert_close(a, e, dtype, f"{what} (beside the reference's own error {error:.3g} "
                             "against float64)", rtol=rtol, atol=atol + 2 * error)
    return result


# ------------------------------------------------------------------ gradients
class TensorCheck(NamedTuple):
    """One tensor of a gradient check, as `GradientReport.details` holds it.

    Parameters
    ----------
    name : str
        The tensor's name (``'W'``, ``'input'``, ``'dense/W'``).
    method : str
        The numerical method: ``'complex step'`` or ``'central differences'``.
    checked : int
        How many of its elements were compared.
    size : int
        How many elements it has.
    error : float
        The worst relative error.
    index : tuple of int
        Where the worst error is (an index into the tensor).
    analytic : float
        The analytic derivative there.
    numeric : float
        The numerical derivative there.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import nn, testing
    >>> report = testing.check_gradients(nn.Dense(2), np.ones((3, 4)))
    >>> check = report.details["W"]
    >>> check.checked == check.size == 8, check.error <= report.rtol
    (True, True)
    """

    name: str
    method: str
    checked: int
    size: int
    error: float
    index: tuple  # type: ignore[assignment]
    analytic: float
    numeric: float


class GradientReport(Mapping):
    """The result of `check_gradients`: a mapping tensor name -> worst relative error.

    ``details[name]`` holds the `TensorCheck`, `ok` says whether every error is at
    most `rtol`, and printing the report gives a table. The relative error of an
    element is ``|analytic - numeric| / (|numeric| + atol / rtol)``, so an element
    passes when ``|analytic - numeric| <= atol + rtol * |numeric|``; `atol`
    defaults to ``rtol * 1e-2 * max(1, largest |numeric|)`` of the check, which
    judges derivatives that are ~0 against the scale of the others.

    Parameters
    ----------
    subject : str
        What was checked (the layer or model), for the table's title.
    checks : sequence of TensorCheck
        One per tensor.
    rtol : float
        The relative tolerance.
    atol : float
        The absolute tolerance.
    dtype : dtype
        The dtype the check ran in.
    eps : float
        The finite-difference step.
    backend : str
        The name of the backend the check ran on.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import nn, testing
    >>> report = testing.check_gradients(nn.Dense(3, "tanh"), np.random.default_rng(0).normal(size=(5, 4)))
    >>> sorted(report), report.ok
    (['W', 'b', 'input'], True)
    """

    def __init__(self, subject: str, checks: Sequence[TensorCheck], rtol: float, atol: float,
                 dtype: DTypeLike, eps: float, backend: str) -> None:
        self.subject, self.rtol, self.atol = subject, rtol, atol
        self.dtype, self.eps, self.backend = np.dtype(dtype), eps, backend
        self.details = {c.name: c for c in checks}

    def __getitem__(self, name):
        return self.details[name].error

    def __iter__(self):
        return iter(self.details)

    def __len__(self):
        return len(self.details)

    @property
    def ok(self) -> bool:
        """Whether every tensor's worst error is at most rtol."""
        return all(c.error <= self.rtol for c in self.details.values())

    @property
    def failures(self) -> List[str]:
        """Names of the tensors whose worst error exceeds rtol.
        """
        return [name for name, c in self.details.items() if not c.error <= self.rtol]

    def __str__(self):
        head = ("tensor", "method", "checked", "worst rel. error", "at", "analytic", "numeric", "")
        rows = [head] + [
            (c.name, c.method, f"{c.checked}/{c.size}", f"{c.error:.3g}", str(c.index), f"{c.analytic:.9g}",
             f"{c.numeric:.9g}", "ok" if c.error <= self.rtol else "WRONG")
            for c in self.details.values()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(f"{v:<{w}}" for v, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "-" * max(map(len, lines)))
        step = (f", central-difference step {self.eps:g}"
                if any(c.method == "central" for c in self.details.values()) else "")
        title = (f"gradient check of {self.subject} ({self.dtype.name}, backend {self.backend}, rtol "
                 f"{self.rtol:g}, atol {self.atol:.3g}{step})")
        verdict = "all gradients match" if self.ok else f"WRONG gradients: {', '.join(self.failures)}"
        return "\n".join([title, *lines, verdict])

    def __repr__(self):
        return f"GradientReport({dict(self)!r}, ok={self.ok})"


def _loss_of(y, projection):
    """The scalar loss sum(y * projection) of a layer check (complex when y is)."""
    return np.dot(y.ravel(), projection.ravel())


def _selected(size, max_elements, rng):
    """Flat indices of a tensor to check: all, or max_elements of them at random."""
    if max_elements is None or size <= max_elements:
        return np.arange(size)
    return np.sort(rng.choice(size, max_elements, replace=False))


def _central(evaluate, tensor, k, eps):
    """(f(v + h) - f(v - h)) / 2h for element k of tensor (restored after)."""
    flat = tensor.reshape(-1)
    v = flat[k]
    h = eps * max(1.0, abs(float(v)))
    flat[k] = v + h
    up = evaluate()
    flat[k] = v - h
    down = evaluate()
    flat[k] = v
    return (up - down) / (2 * h)


def _complex_forward(layer, backend, x, ws, mode):
    """The layer's forward on complex arrays, or None when it cannot run them: it
    raises, or returns a real array (it dropped the imaginary parts)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", np.exceptions.ComplexWarning)
            y = layer.forward(backend, x, ws, mode)
    except Exception:  # any failure means: not complex-safe, use central differences
        return None
    return y if isinstance(y, np.ndarray) and y.dtype.kind == "c" else None


def _agrees_with_central(evaluate, tensors, picked, numeric, eps, rtol):
    """Whether the complex-step derivatives agree with central differences on the
    first few checked elements of each tensor. A forward that runs on complex
    arrays but is not complex-analytic (abs, comparisons, maximum) gives wrong
    complex-step derivatives, which this catches: the two numerical methods
    differ, whatever the backward does."""
    for name, t in tensors.items():
        for k, value in list(zip(picked[name], numeric[name]))[:3]:
            central = _central(evaluate, t, k, eps)
            if abs(central - value) > 10 * rtol * (abs(central) + 1e-2):
                return False
    return True


def _check_layer(layer, x, backend, dtype, eps, rtol, complex_step, max_elements, seed):
    from .nn.layers import Pass

    if getattr(layer, "params", None) is not None:
        raise ValueError("this layer is part of a model (its parameters are views of the model's buffers): "
                         "check the model, check_gradients(model, x, y), or pass a new layer")
    x = np.array(x, dtype=dtype, order="C")
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (n_samples, *input_shape), got shape {x.shape}")
    layer.build(x.shape[1:], dtype)
    layer.index = 0
    params = {name: np.zeros(shape, dtype) for name, shape, _ in layer.param_specs()}
    grads = {name: np.full(shape, np.nan, dtype) for name, shape, _ in layer.param_specs()}
    state = {name: np.full(shape, value, dtype) for name, shape, value in layer.state_specs()}
    layer.bind(params, grads, state)
    rng = np.random.default_rng(seed)
    layer.init_params(backend, rng)
    # training pass, deterministic: a fixed dropout seed, running statistics untouched
    mode = Pass(training=True, update_stats=False, seed=seed)
    # loss = sum(y * projection): dloss/dy = projection, (N, *output_shape)
    projection = rng.standard_normal((x.shape[0],) + tuple(layer.output_shape)).astype(dtype)
    ws = {}  # type: ignore[var-annotated]
    y = np.array(layer.forward(backend, x, ws, mode))  # a copy: backward may reuse the buffer
    # grads start as NaN: a backward that leaves one unwritten is reported, not passed
    dx = layer.backward(backend, projection, ws, True)
    if dx is None:
        raise ValueError(f"{layer.kind}.backward returned None for dx although need_dx was True")
    projection = projection.astype(np.float64)
    analytic = {name: np.array(g, np.float64).reshape(-1) for name, g in grads.items()}
    analytic["input"] = np.array(dx, np.float64).reshape(-1)
    tensors = {**params, "input": x}
    pick = np.random.default_rng(seed + 1)
    picked = {name: _selected(t.size, max_elements, pick) for name, t in tensors.items()}
    ws_numeric = {}  # type: ignore[var-annotated]

    def evaluate():
        return float(_loss_of(np.asarray(layer.forward(backend, x, ws_numeric, mode), np.float64),
                              projection))

    numeric = _complex_step(layer, backend, x, mode, projection, params, grads, state, y, picked) \
        if complex_step else None
    if numeric is None and complex_step is True:
        raise ValueError(f"{layer.kind}'s forward does not run on complex arrays in backend "
                         f"{backend.name!r}; pass complex_step='auto' or False")
    method = "complex step"
    if numeric is not None and complex_step == "auto" and not _agrees_with_central(
            evaluate, tensors, picked, numeric, eps, rtol):
        numeric = None
    if numeric is None:
        method = "central"
        numeric = {name: np.array([_central(evaluate, t, k, eps) for k in picked[name]])
                   for name, t in tensors.items()}
    return [(name, method, t.shape, picked[name], analytic[name][picked[name]], numeric[name])
            for name, t in tensors.items()]


def _complex_step(layer, backend, x, mode, projection, params, grads, state, y, picked):
    """{tensor name: Im loss(v + ih e_k) / h for each picked k}, with the layer bound
    to complex copies of its parameters; None when its forward cannot run on
    complex arrays or does not reproduce the real forward."""
    cdtype = np.result_type(x.dtype, np.complex64)
    cparams = {name: p.astype(cdtype) for name, p in params.items()}
    cx = x.astype(cdtype)
    layer.bind(cparams, grads, state)
    try:
        yc = _complex_forward(layer, backend, cx, {}, mode)
        if yc is None or yc.shape != y.shape or not np.allclose(yc.real, y, rtol=1e-6, atol=1e-12):
            return None
        numeric = {}
        for name, t in {**cparams, "input": cx}.items():
            flat, values = t.reshape(-1), []
            for k in picked[name]:
                v = flat[k]
                flat[k] = v + 1j * COMPLEX_STEP
                values.append(_loss_of(layer.forward(backend, cx, {}, mode), projection).imag / COMPLEX_STEP)
                flat[k] = v
            numeric[name] = np.array(values)
        return numeric
    finally:
        layer.bind(params, grads, state)


def _check_model(model, x, y, sample_weight, backend, dtype, eps, max_elements, seed):
    if y is None:
        raise ValueError("checking a model needs its targets y (the gradient is the loss's)")
    if not model.built:
        model._check_X(x)  # builds it for x's per-sample shape
    work = model if model.dtype == dtype else model.astype(dtype)
    saved_backend, p0 = work._backend, work.get_flat_params().copy()
    work.set_backend(backend)
    try:
        data = work._check_data(x, y, sample_weight)
        _, grad = work._objective(data)
        grad = grad.astype(np.float64)
        params = work._params

        def evaluate():
            return float(work._objective(data)[0])

        rng = np.random.default_rng(seed + 1)
        rows = []
        work._refresh_trainable()
        owners = dict(zip(work._slots, work._owners))  # slot -> (layer owning the tensor, its name there)
        for slot in sorted(work._slots, key=lambda s: s.rank):  # layer order
            owner, own = owners[slot]
            if owner.frozen:  # frozen tensors get no gradient: nothing to compare
                continue
            block = params[slot.offset:slot.offset + slot.size]
            picked = _selected(slot.size, max_elements, rng)
            numeric = np.array([_central(evaluate, block, k, eps) for k in picked])
            name = f"{owner.name}/{own}"  # as in model.gradients()
            rows.append((name, "central", slot.shape, picked, grad[slot.offset + picked], numeric))
        return rows
    finally:
        np.copyto(work._params, p0)
        work._backend = saved_backend


def check_gradients(layer_or_model: Union[Layer, Sequential], x: ArrayLike, y: Optional[ArrayLike] = None, *,
                    sample_weight: Optional[ArrayLike] = None, eps: Optional[float] = None,
                    rtol: Optional[float] = None, atol: Optional[float] = None,
                    backend: Union[str, Backend, None] = None,
                    complex_step: Union[bool, Literal["auto"]] = "auto", dtype: DTypeLike = np.float64,
                    max_elements: Optional[int] = None, seed: Optional[int] = 0) -> GradientReport:
    """Compare analytic gradients with numerical derivatives.

    A layer (a fastnn.nn Layer not yet in a model) is built standalone for x's
    per-sample shape (x is a batch, ``(N, *input_shape)``) in `dtype`, its
    parameters initialised by its init_params from `seed`; the scalar loss is
    ``sum(forward(x) * R)`` for a fixed random R (so dloss/dy = R), in a training
    pass with a fixed dropout seed and batch-norm running statistics left as they
    are. Its backward's parameter gradients and dx (``'input'``) are compared with
    the derivatives of that loss. Gradient buffers start as NaN, so a backward
    that does not write one is reported.

    A Sequential: its loss_and_gradient on (x, y, sample_weight) is compared with
    central differences of the loss (penalties included) over every trainable
    parameter, tensor by tensor, named as in model.gradients() (``'dense/W'``,
    ...; frozen tensors have no gradient and are skipped). A model in another
    dtype is checked through a copy in `dtype` (model.astype), which needs its
    layers to be registered kinds; the model itself is left as it was. The input
    is not checked (check each layer for its dx).

    Numerical derivatives: with complex_step='auto' a layer whose forward runs on
    complex arrays (parameters and x cast to complex, the imaginary parts kept)
    gets the complex-step derivative ``Im f(v + ih) / h``, h = 1e-20, exact to
    rounding; otherwise, and always for models, central differences ``(f(v + h) -
    f(v - h)) / 2h``, ``h = eps * max(1, |v|)``. fastnn's own layers run compiled,
    dtype-checked kernels and so use central differences; a layer written with
    NumPy operations on its inputs (as the README's example) usually qualifies for
    the complex step. Operations that are not complex-analytic (abs, maximum,
    comparisons) make it fail or give wrong derivatives: pass complex_step=False
    for such layers.

    Parameters
    ----------
    layer_or_model : Layer or Sequential
        What to check.
    x : array_like
        A batch of inputs, ``(N, *input_shape)``.
    y : array_like, optional
        The targets (a model only).
    sample_weight : array_like, optional
        Per-sample weights (a model only).
    eps : float, optional
        The finite-difference step (default 1e-6 in float64, 1e-3 in float32).
    rtol : float, optional
        The relative tolerance (default 1e-5 in float64, 1e-2 in float32).
    atol : float, optional
        The absolute tolerance (see `GradientReport`).
    backend : str or backend object, optional
        Where the forward and backward run (default: a model's own, the current
        backend for a layer).
    complex_step : {'auto', True, False}, default 'auto'
        Whether to use the complex-step derivative; True requires it.
    dtype : {np.float64, np.float32}, default np.float64
        The dtype of the check.
    max_elements : int, optional
        Check at most this many elements per tensor, chosen at random from `seed`
        (default: all).
    seed : int, default 0
        Seeds the layer's initialisation, R and the choice of elements.

    Returns
    -------
    GradientReport
        The worst relative error per tensor.

    Raises
    ------
    TypeError
        If `layer_or_model` is neither a Layer nor a Sequential, or `dtype` is not
        float32 or float64.
    ValueError
        If an option is invalid, or complex_step=True and the forward cannot run
        on complex arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import nn, testing
    >>> report = testing.check_gradients(nn.Dense(3, "tanh"), np.random.default_rng(0).normal(size=(5, 4)))
    >>> report.ok, report.failures
    (True, [])
    """
    from .nn.layers import Layer
    from .nn.model import Sequential

    dtype = np.dtype(dtype)
    if dtype not in chk.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if complex_step not in ("auto", True, False):
        raise ValueError(f"complex_step must be 'auto', True or False, got {complex_step!r}")
    default_eps, default_rtol = GRADIENT_DEFAULTS[dtype]
    eps = default_eps if eps is None else chk.real(eps, "eps", low=0, low_open=True)
    rtol = default_rtol if rtol is None else chk.real(rtol, "rtol", low=0, low_open=True)
    if max_elements is not None:
        max_elements = chk.integer(max_elements, "max_elements", low=1)
    if backend is not None and not isinstance(backend, NumpyBackend):
        backend = _backends.get_backend(backend)
    if isinstance(layer_or_model, Sequential):
        kernels = layer_or_model.backend if backend is None else backend
        rows = _check_model(layer_or_model, x, y, sample_weight, kernels, dtype, eps, max_elements, seed)
        subject = repr(layer_or_model)
    elif isinstance(layer_or_model, Layer):
        if y is not None or sample_weight is not None:
            raise ValueError("a layer is checked with a random projection of its output: pass no y or "
                             "sample_weight (they are for models)")
        kernels = _backends.get_backend() if backend is None else backend
        try:
            rows = _check_layer(layer_or_model, x, kernels, dtype, eps, rtol, complex_step, max_elements,
                                seed)
        finally:  # the layer keeps no views of the check's arrays: it can join a model afterwards
            if getattr(layer_or_model, "params", None) is not None:
                layer_or_model.params = layer_or_model.grads = layer_or_model.state = None  # type: ignore[assignment]
        subject = repr(layer_or_model)
    else:
        raise TypeError(f"check_gradients takes a fastnn.nn Layer or Sequential, got "
                        f"{type(layer_or_model).__name__}")
    scale = max([1.0] + [float(np.abs(n).max(initial=0.0)) for *_, n in rows])
    atol = rtol * 1e-2 * scale if atol is None else chk.real(atol, "atol", low=0)
    checks = []
    for name, method, shape, picked, analytic, numeric in rows:
        error = np.abs(analytic - numeric) / (np.abs(numeric) + atol / rtol)
        error = np.where(np.isnan(error), np.inf, error)  # a NaN gradient is wrong, not passing
        w = int(np.argmax(error)) if error.size else 0
        size = math.prod(shape)
        index = tuple(int(i) for i in np.unravel_index(picked[w], shape)) if error.size else ()
        checks.append(TensorCheck(name, method, len(picked), size, float(error.max(initial=0.0)), index,
                                  float(analytic[w]) if error.size else 0.0,
                                  float(numeric[w]) if error.size else 0.0))
    return GradientReport(subject, checks, rtol, atol, dtype, eps, kernels.name)


def assert_gradients(layer_or_model: Union[Layer, Sequential], x: ArrayLike, y: Optional[ArrayLike] = None,
                     **options: Any) -> GradientReport:
    """Check gradients as `check_gradients`, raising when one is wrong.

    Parameters
    ----------
    layer_or_model : Layer or Sequential
        What to check.
    x : array_like
        A batch of inputs.
    y : array_like, optional
        The targets (a model only).
    **options : object
        The keyword arguments of `check_gradients`.

    Returns
    -------
    GradientReport
        The report, when every gradient is right.

    Raises
    ------
    AssertionError
        With the report's table, when a gradient is wrong.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import nn, testing
    >>> x = np.random.default_rng(0).normal(size=(6, 4))
    >>> testing.assert_gradients(nn.Dense(2, "relu"), x).ok
    True
    """
    report = check_gradients(layer_or_model, x, y, **options)
    if not report.ok:
        raise AssertionError(str(report))
    return report


__all__ = ["RTOL", "GradientReport", "TensorCheck", "assert_backends_agree", "assert_close",
           "assert_gradients", "check_gradients", "reference_error"]
