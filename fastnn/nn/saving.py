"""Saving and loading `Sequential` models: one .npz archive, no pickle.

The archive holds the flat parameter and state buffers, the optimizer's state
buffers and a JSON description (everything but the arrays) stored as a string
array. Format 2 (this one) records the per-sample input shape and lays the
parameters out by role (see `layout`); format 1 recorded an input width and laid
out every non-weight parameter in layer order, and still loads.

Loading checks everything before building: a file that is not such a model
(foreign, corrupted, truncated, or a description with invalid values) raises
ValueError saying what is wrong, never an error from deep inside fit later.
"""

import json
import math
import numbers
import struct
import zipfile
import zlib

import numpy as np

from . import layout
from .layers import full_config, layer_from_config
from .losses import loss_from_config
from .optimizers import optimizer_from_config

FORMAT = "fastnn.nn.Sequential"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def describe(model):
    """The model's description as a JSON-able dict (everything but the arrays)."""
    model._require_built()
    opt = model.optimizer
    counters = opt.get_state()[0] if opt.is_bound_to(model._params) else None
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "dtype": model.dtype.name,
        "input_shape": list(model.input_shape), "output_shape": list(model.output_shape),
        "seed": model.seed, "passes": model._passes,
        "layers": [full_config(layer) for layer in model.layers],
        "loss": None if model.loss is None else model.loss.config(),
        "optimizer": opt.config(), "optimizer_counters": counters,
        "l2": model.l2, "penalty_per_sample": model.penalty_per_sample,
        "metrics": None if model.metrics is None else [m.config() for m in model.metrics],
        "classes": describe_classes(model.classes_),
    }


def describe_classes(classes):
    """classes_ as JSON: null, or its values and dtype (bool, int, float or str)."""
    if classes is None:
        return None
    return {"dtype": classes.dtype.str, "values": classes.tolist()}


def classes_from_description(d, n_classes):
    """classes_ from its description (absent in files of earlier fastnn: None)."""
    described = d.get("classes")
    if described is None:
        return None
    if not isinstance(described, dict) or not isinstance(described.get("values"), list):
        raise ValueError(f"classes must be null or {{'dtype', 'values'}}, got {described!r}")
    try:
        dtype = np.dtype(described.get("dtype"))
    except TypeError:
        raise ValueError(f"classes has an invalid dtype {described.get('dtype')!r}") from None
    values = described["values"]
    if dtype.kind not in "biufU" or any(isinstance(v, (list, dict)) or v is None for v in values):
        raise ValueError(f"classes must be a list of bools, numbers or strings, got {values!r}")
    try:
        classes = np.array(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"classes {values!r} are not of dtype {dtype}") from None
    if len(classes) != n_classes or (len(classes) > 1 and not (classes[1:] > classes[:-1]).all()):
        raise ValueError(f"classes must be {n_classes} distinct sorted labels, got {values!r}")
    return classes


def arrays_of(model, description):
    arrays = {"params": model._params, "state": model._state}
    if description["optimizer_counters"] is not None:
        for name, buf in model.optimizer.state.items():
            arrays["optimizer_" + name] = buf
    return arrays


def save(model, path):
    description = describe(model)
    arrays = {"description": np.array(json.dumps(description)), **arrays_of(model, description)}
    if hasattr(path, "write"):  # an open binary file
        np.savez(path, **arrays)
        return
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load(path, backend=None):
    """Read a model written by Sequential.save (format 1 or 2). A file that is not
    such a model (foreign, corrupted, truncated, invalid values) raises ValueError."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not an .npz archive")
        with data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, NotImplementedError, struct.error, zipfile.BadZipFile,
            zlib.error) as exc:
        raise ValueError(f"{path} is not a readable fastnn model file: {exc}") from exc
    try:
        for key in ("description", "params", "state"):
            if key not in arrays:
                raise ValueError(f"the archive has no {key!r} array")
        text = arrays.pop("description")
        if text.dtype.kind != "U" or text.ndim != 0:
            raise ValueError("the description is not a string")
        return from_description(json.loads(str(text)), arrays, backend)
    except (KeyError, TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not a valid fastnn model file: {exc}") from exc


# ----------------------------------------------------------- the description
def _integer(d, key, low=0):
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{key} must be an integer >= {low}, got {v!r}")
    return v


def _real(d, key):
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{key} must be a finite number >= 0, got {v!r}")
    return v


def _dict(d, key, optional=False):
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, dict):
        raise ValueError(f"{key} must be a JSON object, got {v!r}")
    return v


def check_description(d):
    """The description's fields, each of the type and range it must have."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"the description does not describe a {FORMAT}")
    version = d.get("version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"format version {version!r} is not supported (this fastnn reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))})")
    if d.get("dtype") not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {d.get('dtype')!r}")
    if version == 1:
        input_shape = [_integer(d, "input_dim", 1)]
    else:
        input_shape = d.get("input_shape")  # type: ignore[assignment]
        if (not isinstance(input_shape, list) or not input_shape
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in input_shape)):
            raise ValueError(f"input_shape must be a list of positive integers, got {input_shape!r}")
    _integer(d, "seed")
    _integer(d, "passes")
    _real(d, "l2")
    if not isinstance(d.get("penalty_per_sample"), bool):
        raise ValueError(f"penalty_per_sample must be true or false, got {d.get('penalty_per_sample')!r}")
    metrics = d.get("metrics")
    if metrics is not None and not (isinstance(metrics, list) and all(
            isinstance(m, str) or (isinstance(m, dict) and isinstance(m.get("name"), str)) for m in metrics)):
        raise ValueError(f"metrics must be null or a list of names or {{'name': ...}} objects, got "
                         f"{metrics!r}")
    layers = d.get("layers")
    if not isinstance(layers, list) or not all(isinstance(c, dict) for c in layers):
        raise ValueError("layers must be a list of layer descriptions")
    loss = _dict(d, "loss", optional=True)
    if loss is not None and not isinstance(loss.get("name"), str):
        raise ValueError(f"the loss description has no name: {loss!r}")
    optimizer = _dict(d, "optimizer")
    if not isinstance(optimizer.get("name"), str) or "lr" not in optimizer:
        raise ValueError(f"the optimizer description has no name or lr: {optimizer!r}")
    _dict(optimizer, "schedule")
    counters = _dict(d, "optimizer_counters", optional=True)
    if counters is not None:
        for key in ("t", "samples_seen", "epochs_done"):
            _integer(counters, key)
        schedule = _dict(counters, "schedule")
        for key in schedule:
            if key not in ("lr0", "lr", "best", "bad_epochs"):
                raise ValueError(f"unknown schedule counter {key!r}")
            v = schedule[key]
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
                raise ValueError(f"schedule counter {key} must be a number, got {v!r}")
    return version, tuple(input_shape)


def from_description(d, arrays, backend=None, loss=None):
    """A built model from a description and its arrays ({'params', 'state',
    'optimizer_<name>'...}); loss: a Loss object to use instead of the described one."""
    from .model import Sequential

    version, input_shape = check_description(d)
    if loss is None and d["loss"] is not None:
        loss = loss_from_config(d["loss"])
    model = Sequential([layer_from_config(c) for c in d["layers"]], dtype=d["dtype"], seed=d["seed"],
                       backend=backend, l2=d["l2"], penalty_per_sample=d["penalty_per_sample"],
                       metrics=d["metrics"], optimizer=optimizer_from_config(d["optimizer"]), loss=loss)
    model.build(input_shape)
    if model._single_label():
        model.classes_ = classes_from_description(d, max(model.output_dim, 2))
    elif d.get("classes") is not None:
        raise ValueError("classes are described for a model without one class label per sample")
    for key, target in (("params", model._params), ("state", model._state)):
        a = arrays[key]
        if a.shape != target.shape or a.dtype != target.dtype:
            raise ValueError(f"{key} has shape {a.shape} and dtype {a.dtype}; the description needs "
                             f"{target.shape} {target.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(f"{key} contains NaN or infinity")
        np.copyto(target, a)
    order = None
    if version == 1 and model._slots:
        order = layout.permutation(model._slots, layout.v1_order)
        model._params[...] = model._params[order]
    model._passes = d["passes"]
    counters = d.get("optimizer_counters")
    if counters is not None:
        opt = model.optimizer
        buffers = {}
        for name in opt.state_names:
            a = arrays.get("optimizer_" + name)
            if a is None or a.shape != model._params.shape or a.dtype != model._params.dtype:
                raise ValueError(f"optimizer state {name!r} is missing or has the wrong shape")
            if not np.isfinite(a).all():
                raise ValueError(f"optimizer state {name!r} contains NaN or infinity")
            buffers[name] = a if order is None else a[order]
        opt.set_state(model._params, counters, buffers)
    return model
