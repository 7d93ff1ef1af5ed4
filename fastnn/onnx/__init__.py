"""fastnn.onnx: export fastnn models to ONNX.

    import fastnn.onnx
    onx = fastnn.onnx.to_onnx(model_or_estimator, X[:1])     # an onnx.ModelProto
    onx = skl2onnx.to_onnx(estimator, X[:1])                 # also works once fastnn.onnx is imported

`to_onnx` takes a built `fastnn.nn.Sequential` or a fitted `fastnn.MLPClassifier`
/ `MLPRegressor`; the graph computes what `predict` computes (the estimators:
labels and probabilities, or values), with a dynamic batch dimension. Each layer
kind has a converter (fastnn.onnx.layers; the image layers' in
fastnn.onnx.convolution, the sequence layers' in fastnn.onnx.recurrent,
Residual's in fastnn.onnx.residual);
`register_converter(kind)` adds one.
Importing this module registers the estimators' converters with skl2onnx when it
is installed. Needs the `onnx` package: pip install 'fastnn-cpu[onnx]' (which
brings onnxruntime and skl2onnx too).
"""

from __future__ import annotations

try:
    import onnx
except ImportError as exc:  # pragma: no cover - exercised by a test that hides onnx
    raise ImportError("fastnn.onnx needs the onnx package; install fastnn's onnx extra: "
                      "pip install 'fastnn-cpu[onnx]'") from exc

from typing import Any, Optional

import numpy as np
from onnx import helper

from .. import __version__
from .._types import ArrayLike
from ..nn.model import Sequential
from . import convolution, estimators, recurrent, residual  # noqa: F401 (converters of those layers)
from .graph import Graph, tensor_type
from .layers import CONVERTERS, convert_layers, register_converter

# the operator set of the exported graphs unless one is asked for: every operator
# the converters use exists in this form since opset 13 (Softmax over one axis)
DEFAULT_OPSET = 17
MIN_OPSET = 13


def to_onnx(model_or_estimator: Any, sample_input: Optional[ArrayLike] = None,
            opset: Optional[int] = None) -> onnx.ModelProto:
    """Export a fastnn model to ONNX.

    The graph computes what `predict` computes, for any number of rows (the
    batch dimension 'N' is dynamic), in the dtype `predict` uses for inputs of
    the graph's input dtype: a Sequential's own; an estimator's as its predict
    (with ``dtype=None``, float32 inputs on float64 weights compute in float64).

    Parameters
    ----------
    model_or_estimator : fastnn.nn.Sequential, fastnn.MLPClassifier or fastnn.MLPRegressor
        A built Sequential, or a fitted estimator.
    sample_input : array-like of shape ``(n_samples, *input_shape)``, optional
        A few rows of input: only their dtype (float32, float64, integer or
        boolean: the graph input's type) and per-sample shape are used. Without
        it the input has the model's dtype, or is int64 tokens for a model
        starting with Embedding. An unbuilt Sequential is built for
        its shape, as `predict` would.
    opset : int, optional
        The ONNX operator set, 13 up to the installed onnx's newest; default
        `DEFAULT_OPSET` (or onnx's newest if older).

    Returns
    -------
    onnx.ModelProto
        Input 'X' of shape ``(N, *input_shape)``. Outputs: for a Sequential,
        'output', what `predict` returns (after the loss's link: softmax or
        sigmoid probabilities, exp for Poisson); for a classifier, 'label'
        (``classes_`` as int64 or strings; (N, n_labels) 0/1 for multilabel
        targets) and 'probabilities' (``predict_proba``); for a regressor,
        'variable' of shape (N, n_outputs).

    Raises
    ------
    NotImplementedError
        A layer has no converter (its index and kind are named); see
        `register_converter`.
    ValueError
        The Sequential is not built and there is no sample_input, or
        sample_input's samples have another shape than the model's inputs, or
        opset is out of range.
    TypeError
        Not a fastnn model, or sample_input does not hold numbers (integers,
        for a model starting with Embedding).
    sklearn.exceptions.NotFittedError
        The estimator is not fitted.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import nn
    >>> model = nn.Sequential([nn.Dense(8, "gelu"), nn.Dense(3)], loss="sparse_categorical_crossentropy",
    ...                       input_dim=4, seed=0)
    >>> onx = to_onnx(model, np.zeros((1, 4), np.float32))
    >>> [o.name for o in onx.graph.output]
    ['output']
    """
    opset = _opset(opset)
    sample = _sample(sample_input)
    if isinstance(model_or_estimator, Sequential):
        return _sequential(model_or_estimator, sample, opset)
    if isinstance(model_or_estimator, (estimators.MLPClassifier, estimators.MLPRegressor)):
        return _estimator(model_or_estimator, sample, opset)
    raise TypeError("to_onnx exports a fastnn.nn.Sequential, fastnn.MLPClassifier or fastnn.MLPRegressor, "
                    f"got {type(model_or_estimator).__name__}")


def _opset(opset):
    newest = onnx.defs.onnx_opset_version()
    if opset is None:
        return min(DEFAULT_OPSET, newest)
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset must be an integer, got {type(opset).__name__}")
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be in [{MIN_OPSET}, {newest}] (the installed onnx's newest), "
                         f"got {opset}")
    return int(opset)


def _sample(sample_input):
    """sample_input as an array-like with dtype and shape (sparse matrices stay
    sparse), checked; None stays None."""
    if sample_input is None:
        return None
    if not (hasattr(sample_input, "dtype") and hasattr(sample_input, "shape")):
        sample_input = np.asarray(sample_input)
    if sample_input.dtype.kind not in "biuf" or sample_input.dtype == np.float16:
        raise TypeError(f"sample_input must hold float32, float64, integer or boolean values, got dtype "
                        f"{sample_input.dtype}")
    if len(sample_input.shape) < 2:
        raise ValueError("sample_input must be a batch (n_samples, features...), got shape "
                         f"{sample_input.shape}")
    return sample_input


def _sequential(model, sample, opset):
    if not model.built:
        if sample is None:
            raise ValueError("the model is not built: fit it, call build(input_shape), or pass sample_input")
        model.build(tuple(sample.shape[1:]))
    if sample is not None and tuple(sample.shape[1:]) != model.input_shape:
        raise ValueError(f"sample_input has samples of shape {tuple(sample.shape[1:])}, but the model was "
                         f"built for {model.input_shape}")
    # what the first layer takes: the model's dtype, or int64 tokens (Embedding's input_dtype)
    first_dtype = model.layers[0].input_dtype if model.layers else None
    first_dtype = model.dtype if first_dtype is None else first_dtype
    if sample is not None and first_dtype.kind in "iu" and sample.dtype.kind not in "iu":
        raise TypeError(f"sample_input must hold integer tokens for a model starting with "
                        f"{model.layers[0].kind}, got dtype {sample.dtype}")
    input_dtype = first_dtype if sample is None else sample.dtype
    g = Graph(model.dtype, opset)
    x = g.reserve("X")
    y = convert_layers(g, model, x if input_dtype == first_dtype else g.cast(x, first_dtype))
    g.op("Identity", y, out=g.reserve("output"))
    outputs = [helper.make_tensor_value_info("output", tensor_type(model.dtype), ["N", *model.output_shape])]
    return _model(g, "X", input_dtype, model.input_shape, outputs, "fastnn.nn.Sequential")


def _estimator(est, sample, opset):
    estimators.check_estimator(est)
    if sample is not None and tuple(sample.shape[1:]) != (est.n_features_in_,):
        raise ValueError(f"sample_input has samples of shape {tuple(sample.shape[1:])}, but the estimator "
                         f"was fitted on {est.n_features_in_} features")
    input_dtype = est.model_.dtype if sample is None else sample.dtype
    dtype = est._prediction_dtype(input_dtype)
    g = Graph(dtype, opset)
    x = g.reserve("X")
    types = estimators.output_types(est)
    names = [g.reserve(name) for name, _, _ in types]
    estimators.estimator_graph(g, est, x, input_dtype, names, dtype)
    outputs = [helper.make_tensor_value_info(name, tensor_type(dtype if kind is None else kind),
                                             ["N", *shape]) for name, kind, shape in types]
    return _model(g, "X", input_dtype, (est.n_features_in_,), outputs, f"fastnn.{type(est).__name__}")


def _model(g, input_name, input_dtype, input_shape, outputs, what):
    inputs = [helper.make_tensor_value_info(input_name, tensor_type(input_dtype), ["N", *input_shape])]
    graph = helper.make_graph(g.nodes, what.replace(".", "_"), inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", g.opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="fastnn",
                              producer_version=__version__, doc_string=f"{what} exported by fastnn.onnx")
    # the oldest IR version that has this opset, so that older runtimes load the model
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


estimators.register_skl2onnx()

__all__ = ["CONVERTERS", "DEFAULT_OPSET", "register_converter", "to_onnx"]
