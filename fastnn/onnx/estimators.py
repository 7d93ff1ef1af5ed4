"""fastnn.MLPClassifier and MLPRegressor as ONNX graphs: the fitted network
(`model_`) and, for the classifier, the labels, with the outputs skl2onnx gives
scikit-learn's MLP: 'label' and 'probabilities' for a classifier, 'variable' for a
regressor. `register_skl2onnx` makes `skl2onnx.to_onnx` convert them (zipmap and
the other classifier options of scikit-learn's MLP included).

The graph computes in the dtype the estimator's predict would use for inputs of
the graph's input dtype (`_prediction_dtype`): with dtype=None, float32 inputs
on float64 weights compute in float64, as predict does.
"""

import numpy as np
from onnx import helper
from sklearn.utils.validation import check_is_fitted

from ..estimators import MLPClassifier, MLPRegressor
from .graph import ContainerGraph
from .layers import convert_layers


def is_multilabel(est):
    return est._label_binarizer.y_type_ == "multilabel-indicator"


def class_labels(classes):
    """classes_ as the values of an ONNX label tensor: int64 for integer, boolean
    and integral float labels (as skl2onnx), strings otherwise."""
    classes = np.asarray(classes)
    if classes.dtype.kind in "biu":
        return classes.astype(np.int64)
    if classes.dtype.kind == "f":
        if not np.all(classes == np.round(classes)):
            raise ValueError(f"class labels {classes.tolist()} are floats that are not integers; an ONNX "
                             "label is an integer or a string")
        return classes.astype(np.int64)
    if classes.dtype.kind in "OSU" and all(isinstance(c, (str, bytes, np.str_)) for c in classes):
        return classes.astype(str)
    raise TypeError(f"class labels of dtype {classes.dtype} cannot be ONNX labels (integers or strings)")


def estimator_graph(g, est, x, input_dtype, outputs, output_dtype, classes=None):
    """Add the estimator's prediction to g (computing in g.dtype) from input x of
    `input_dtype`: outputs = [label, probabilities] names for a classifier (labels
    from `classes`, est.classes_ by default), [variable] for a regressor, their
    floats cast to `output_dtype`."""
    model = est._synced_model()  # the fitted attributes, should a user have replaced them
    if np.dtype(input_dtype) != g.dtype:
        x = g.cast(x, g.dtype)
    y = convert_layers(g, model, x)  # (N, n_outputs): probabilities or regression values

    def output(y, name):
        return g.cast(y, output_dtype, out=name) if g.dtype != output_dtype else g.op("Identity", y, out=name)

    if isinstance(est, MLPRegressor):
        output(y, outputs[0])
        return
    label, probabilities = outputs
    if is_multilabel(est):  # one sigmoid per label; scikit-learn's label is p > 0.5
        output(y, probabilities)
        g.cast(g.op("Greater", y, g.scalar(0.5)), np.int64, out=label)
        return
    if est.n_outputs_ == 1:  # binary: the positive class's probability; [1 - p, p]
        y = g.op("Concat", g.op("Sub", g.scalar(1), y), y, axis=1)
    output(y, probabilities)
    # argmax of [1 - p, p] is scikit-learn's p > 0.5 (1 - p is exact for p >= 1/4)
    index = g.op("ArgMax", y, axis=1, keepdims=0)
    labels = class_labels(est.classes_ if classes is None else classes)
    g.op("Gather", g.const(labels, "classes"), index, axis=0, out=label)


def output_types(est, classes=None):
    """[(name, element dtype, shape after the batch axis)] of the estimator's outputs."""
    if isinstance(est, MLPRegressor):
        return [("variable", None, [est.n_outputs_])]
    labels = class_labels(est.classes_ if classes is None else classes)
    label_shape = [len(labels)] if is_multilabel(est) else []
    return [("label", labels.dtype, label_shape), ("probabilities", None, [len(labels)])]


def check_estimator(est):
    check_is_fitted(est)
    if isinstance(est, MLPClassifier) and len(est.classes_) < 2 and not is_multilabel(est):
        raise ValueError(f"the classifier was fitted on {len(est.classes_)} class; ONNX export needs two "
                         "or more")


# ------------------------------------------------------------------ skl2onnx
def _skl2onnx_classes(scope, est):
    from skl2onnx.common.utils_classifier import get_label_classes

    return get_label_classes(scope, est)  # classes_, or their indices with option nocl


def _convert(scope, operator, container):
    """skl2onnx's converter: the graph of estimator_graph in the container."""
    from skl2onnx.common.data_types import guess_proto_type

    est = operator.raw_operator
    check_estimator(est)
    input_dtype = helper.tensor_dtype_to_np_dtype(guess_proto_type(operator.inputs[0].type))
    # the probabilities' or values' type, which skl2onnx's parser chose from the input's
    output_dtype = helper.tensor_dtype_to_np_dtype(guess_proto_type(operator.outputs[-1].type))
    classes = _skl2onnx_classes(scope, est) if isinstance(est, MLPClassifier) else None
    g = ContainerGraph(est._prediction_dtype(input_dtype), scope, container)
    estimator_graph(g, est, operator.inputs[0].full_name, input_dtype,
                    [v.full_name for v in operator.outputs], output_dtype, classes)


def _shapes(operator):
    """skl2onnx's shape calculator: the outputs' shapes, and the label's type (the
    parser declared the probabilities' and regression values' types from the input's)."""
    from skl2onnx.common.data_types import Int64TensorType, StringTensorType
    from skl2onnx.common.utils import check_input_and_output_numbers

    est = operator.raw_operator
    n_outputs = 1 if isinstance(est, MLPRegressor) else 2
    check_input_and_output_numbers(operator, input_count_range=1, output_count_range=n_outputs)
    classes = _skl2onnx_classes(operator.scope_inst, est) if n_outputs == 2 else None
    n = operator.inputs[0].get_first_dimension()
    for variable, (_, dtype, shape) in zip(operator.outputs, output_types(est, classes)):
        if dtype is None:
            variable.type.shape = [n] + shape
        else:
            variable.type = (StringTensorType if dtype.kind == "U" else Int64TensorType)([n] + shape)


def register_skl2onnx():
    """Register the estimators' converters with skl2onnx (when it is installed), so
    that skl2onnx.to_onnx converts them as it converts scikit-learn's MLP; returns
    whether skl2onnx was found."""
    try:
        from skl2onnx import update_registered_converter
    except ImportError:
        return False
    # the options skl2onnx gives scikit-learn's MLPClassifier; zipmap brings its classifier parser
    options = {"zipmap": [True, False, "columns"], "output_class_labels": [False, True],
               "nocl": [True, False]}
    update_registered_converter(MLPClassifier, "FastnnMLPClassifier", _shapes, _convert, options=options)
    update_registered_converter(MLPRegressor, "FastnnMLPRegressor", _shapes, _convert)
    return True
