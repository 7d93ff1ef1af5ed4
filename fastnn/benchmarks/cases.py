"""The benchmarks as data (`Benchmark`): sizes, dtype, a setup that builds the
inputs and preallocated outputs (workloads.py), one call on a fastnn backend
(here), and the work one call does: floating-point operations for GEMM-bound
kernels, or the bytes a kernel must move at least (every array it has to read,
once, and every array it has to write, once; vectors of length C next to (N, C)
arrays are ignored); and the same work in other libraries (peers.py).
Adding a benchmark is appending one `Benchmark` to `BENCHMARKS`.
"""

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .peers import (
    adam_torch,
    batchnorm_torch,
    convnet_epoch_torch,
    dense_torch,
    dropout_torch,
    gelu_torch,
    lenet_epoch_torch,
    mlp_epoch_sklearn,
    mlp_fit_sklearn,
    nn_epoch_torch,
    sgd_torch,
    softmax_ce_torch,
    tanh_torch,
)
from .workloads import (
    CNN_BATCH,
    CNN_IMAGE,
    CONVNET,
    LENET,
    MLP_PARAMS,
    NET_BATCH,
    NET_UNITS,
    SMALL_BATCH,
    SMALL_PARAMS,
    TABULAR_CLASSES,
    adam_setup,
    batchnorm_setup,
    cnn_flops,
    cnn_gemms,
    cnn_setup,
    dense_flops,
    dense_gemms,
    dense_setup,
    digits_setup,
    elementwise_setup,
    fit_quietly,
    mlp_epoch_flops,
    mlp_epoch_gemms,
    network_flops,
    network_gemms,
    network_setup,
    sgd_setup,
    softmax_ce_setup,
    tabular_setup,
)


@dataclass
class Benchmark:
    """One benchmark: everything the runner, the CLI and bench/ need.

    setup(shape, dtype) -> dict of named arrays (inputs and preallocated outputs),
    from a fixed seed. call(backend, arrays) runs the measured work once.
    Work per call: with unit "byte", the sum of the sizes of the arrays named in
    `reads` and `writes` (an array read twice is named twice); with unit "flop",
    flops(shape). others: {library: make(arrays) -> zero-argument callable doing
    the same work in that library}, for comparison; make raises ImportError when
    the library is missing. bare(arrays) -> callable: the unavoidable core of the
    work alone (e.g. the GEMMs of a dense layer), timed once for comparison."""

    name: str
    shape: tuple
    dtype: str
    setup: Callable
    call: Callable
    unit: str = "byte"
    reads: tuple = ()
    writes: tuple = ()
    flops: Optional[Callable] = None
    kernels: tuple = ()
    quick: bool = False
    others: dict = field(default_factory=dict)
    bare: Optional[Callable] = None
    min_first: int = 1  # smallest first dimension scaling may produce
    per_sample: bool = False  # one call is an epoch over shape[0] samples: report median / shape[0]

    def scaled_shape(self, scale=1.0):
        first = max(self.min_first, round(self.shape[0] * scale))
        return (first,) + tuple(self.shape[1:])

    def work(self, arrays, shape):
        """Flops or bytes of one call (see the class docstring)."""
        if self.unit == "flop":
            return int(self.flops(shape))
        return sum(arrays[name].nbytes for name in self.reads + self.writes)

    def counts(self):
        """What `work` counts, in words."""
        if self.unit == "flop":
            return "flops of the GEMMs (2 per multiply-add)"
        return f"bytes: reads {', '.join(self.reads)}; writes {', '.join(self.writes)}"


# the call of each benchmark on a fastnn backend
def softmax_ce_call(backend, a):
    backend.softmax_cross_entropy(a["logits"], a["labels"], grad=a["grad"])


def batchnorm_call(backend, a):
    _, cache = backend.batchnorm_forward(a["x"], a["gamma"], a["beta"], a["running_mean"],
                                         a["running_var"], True, out=a["y"])
    backend.batchnorm_backward(a["dy"], cache, dx=a["dx"], dgamma=a["dgamma"], dbeta=a["dbeta"])


def adam_call(backend, a):
    backend.adam_step(a["param"], a["grad"], a["m"], a["v"], 1, 1e-3)


def sgd_call(backend, a):
    backend.sgd_step(a["param"], a["grad"], a["velocity"], 1e-3, momentum=0.9)


def dense_call(backend, a):
    backend.dense_forward(a["x"], a["W"], a["b"], "relu", out=a["y"])
    backend.dense_backward(a["dy"], a["x"], a["W"], a["y"], "relu",
                           dx=a["dx"], dW=a["dW"], db=a["db"], dz=a["dz"])


def activation_call(activation):
    def call(backend, a):
        backend.activation_forward(a["x"], activation, out=a["out"])

    return call


def dropout_call(backend, a):
    backend.dropout_forward(a["x"], 0.5, 42, out=a["out"])


# end to end
NET_KERNELS = ("dense_forward", "dense_backward", "softmax_cross_entropy", "adam_step")
_models: dict = {}  # (benchmark, backend, id of X) -> model or estimator, built on first call


def nn_epoch_call(backend, a):
    from .. import nn

    key = ("nn", backend.name, id(a["X"]))
    if key not in _models:
        _models[key] = nn.Sequential(
            [nn.Dense(u, "relu") for u in NET_UNITS[1:-1]] + [nn.Dense(NET_UNITS[-1])],
            loss="sparse_categorical_crossentropy", optimizer=nn.Adam(1e-3), seed=0,
            backend=backend, dtype=a["X"].dtype)
    _models[key].fit(a["X"], a["y"], epochs=1, batch_size=NET_BATCH, verbose=0)


CNN_KERNELS = ("conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
               "dense_forward", "dense_backward", "softmax_cross_entropy", "adam_step")


def cnn_model(layers, backend, dtype):
    """The fastnn.nn model of a network of workloads.py (ReLU but the last layer)."""
    from .. import nn

    dense = [layer for layer in layers if layer[0] == "dense"]
    built = []
    for layer in layers:
        if layer[0] == "conv":
            built.append(nn.Conv2D(layer[1], layer[2], padding=layer[3], activation="relu"))
        elif layer[0] == "pool":
            built.append(nn.MaxPool2D(layer[1]))
        else:
            if layer is dense[0]:
                built.append(nn.Flatten())
            built.append(nn.Dense(layer[1], None if layer is dense[-1] else "relu"))
    return nn.Sequential(built, loss="sparse_categorical_crossentropy", optimizer=nn.Adam(1e-3),
                         seed=0, backend=backend, dtype=dtype)


def cnn_bare_gemms(layers):
    """bare(arrays) of a CNN benchmark: its GEMMs as the C kernels issue them, per
    thread and tile of images (_tiled_gemms.py, needs Numba), else as one GEMM per
    layer through NumPy (workloads.cnn_gemms)."""
    def bare(a):
        try:
            from ._tiled_gemms import cnn_tiled_gemms
        except ImportError:  # no Numba
            return cnn_gemms(layers)(a)
        return cnn_tiled_gemms(layers)(a)

    return bare


def cnn_epoch_call(layers):
    def call(backend, a):
        key = (id(layers), backend.name, id(a["X"]))
        if key not in _models:
            _models[key] = cnn_model(layers, backend, a["X"].dtype)
        _models[key].fit(a["X"], a["y"], epochs=1, batch_size=CNN_BATCH, verbose=0)

    return call


class EstimatorEpoch:
    """epoch(): one more epoch of a fastnn estimator, as its fit runs every epoch
    after the first: the sample order shuffled by the estimator's RandomState,
    the parameters snapshot, then the batches (nn.training.train_epoch) over
    the data the fit validated once. What a fit of E epochs spends per epoch
    (the difference of a fit of E and a fit of one, over E - 1); not partial_fit,
    whose validation of its arguments comes with every call (measured on the
    digits, c, one thread: partial_fit 4.7 ms, this epoch 2.2 ms; half of
    partial_fit is scikit-learn's _validate_input, the label binarizer mostly).
    The estimator is initialised by one partial_fit on (X, y)."""

    def __init__(self, estimator, X, y):
        from ..nn.training import RowGather, train_epoch

        estimator.partial_fit(X, y, classes=np.unique(y))
        model = self.model = estimator.model_
        X, y = estimator._validate_input(X, y, True, reset=False)
        X = np.ascontiguousarray(X, dtype=model.dtype)
        targets = estimator._targets(y.reshape(-1, 1) if y.ndim == 1 else y, model.dtype)
        self.X, self.t, _ = model._check_data(X, targets, None)
        model._prepare_training()
        self.estimator, self.train_epoch = estimator, train_epoch
        self.order = np.arange(X.shape[0])
        size = estimator.batch_size
        self.batch_size = min(200, X.shape[0]) if size == "auto" else min(max(1, size), X.shape[0])
        self.snapshot = np.empty_like(model._params)
        self.gather = RowGather(model.backend)  # as the fit's, one for every epoch
        self.epochs = 1

    def __call__(self):
        est, model = self.estimator, self.model
        if est.shuffle:  # (the permutation shuffled is not the fit's own, whose first one is gone)
            est._random_state.shuffle(self.order)
        np.copyto(self.snapshot, model._params)
        self.epochs += 1
        self.train_epoch(model, model.backend, self.X, self.t, None, self.order if est.shuffle else None,
                         self.batch_size, self.snapshot, self.epochs, gather=self.gather)


def mlp_epoch_call(hidden):
    """call(backend, arrays): one epoch (EstimatorEpoch) of a fastnn MLPClassifier
    with `hidden`, built on the first call. The cache keeps X beside the model,
    so that X's id is not reused for other arrays."""
    def call(backend, a):
        from ..estimators import MLPClassifier

        key = ("mlp_epoch", hidden, backend.name, id(a["X"]))
        if key not in _models:
            model = MLPClassifier(hidden_layer_sizes=hidden, backend=backend.name, **SMALL_PARAMS)
            _models[key] = (EstimatorEpoch(model, a["X"], a["y"]), a["X"])
        _models[key][0]()

    return call


def small_mlp(name, shape, dtype, setup, hidden, classes):
    """A Benchmark: one epoch of an MLPClassifier with `hidden` on `setup`'s data,
    beside scikit-learn's and its GEMMs alone."""
    return Benchmark(name, shape, dtype, setup, mlp_epoch_call(hidden), unit="flop",
                     flops=mlp_epoch_flops(hidden, classes), kernels=NET_KERNELS,
                     others={"sklearn": mlp_epoch_sklearn(hidden)},
                     bare=mlp_epoch_gemms(hidden, classes), min_first=2 * SMALL_BATCH)


def mlp_fit_call(backend, a):
    from ..estimators import MLPClassifier

    fit_quietly(MLPClassifier(backend=backend.name, **MLP_PARAMS), a["X"], a["y"])


M = 1_000_000
BENCHMARKS = [
    Benchmark("softmax_ce", (8192, 1000), "float32", softmax_ce_setup, softmax_ce_call,
              reads=("logits", "labels"), writes=("grad",), kernels=("softmax_cross_entropy",),
              quick=True, others={"torch": softmax_ce_torch}),
    Benchmark("batchnorm_train", (4096, 1024), "float32", batchnorm_setup, batchnorm_call,
              reads=("x", "dy", "x"), writes=("y", "dx"),
              kernels=("batchnorm_forward", "batchnorm_backward"), quick=True, min_first=2,
              others={"torch": batchnorm_torch}),
    Benchmark("adam", (10 * M,), "float32", adam_setup, adam_call,
              reads=("param", "grad", "m", "v"), writes=("param", "m", "v"), kernels=("adam_step",),
              quick=True, others={"torch": adam_torch}),
    Benchmark("dense_relu", (256, 784, 512), "float32", dense_setup, dense_call, unit="flop",
              flops=dense_flops, kernels=("dense_forward", "dense_backward"), quick=True,
              others={"torch": dense_torch}, bare=dense_gemms),
    Benchmark("softmax_ce_small", (64, 10), "float32", softmax_ce_setup, softmax_ce_call,
              reads=("logits", "labels"), writes=("grad",), kernels=("softmax_cross_entropy",),
              quick=True, others={"torch": softmax_ce_torch}),
    Benchmark("adam_small", (1000,), "float32", adam_setup, adam_call,
              reads=("param", "grad", "m", "v"), writes=("param", "m", "v"), kernels=("adam_step",),
              quick=True, others={"torch": adam_torch}),
    Benchmark("gelu", (4 * M,), "float32", elementwise_setup, activation_call("gelu"),
              reads=("x",), writes=("out",), kernels=("activation_forward",),
              others={"torch": gelu_torch}),
    Benchmark("tanh", (4 * M,), "float32", elementwise_setup, activation_call("tanh"),
              reads=("x",), writes=("out",), kernels=("activation_forward",),
              others={"torch": tanh_torch}),
    Benchmark("dropout", (4 * M,), "float32", elementwise_setup, dropout_call,
              reads=("x",), writes=("out",), kernels=("dropout_forward",),
              others={"torch": dropout_torch}),
    Benchmark("sgd_momentum", (10 * M,), "float32", sgd_setup, sgd_call,
              reads=("param", "grad", "velocity"), writes=("param", "velocity"),
              kernels=("sgd_step",), others={"torch": sgd_torch}),
    Benchmark("nn_epoch", (20000, 784), "float32", network_setup, nn_epoch_call, unit="flop",
              flops=network_flops, kernels=NET_KERNELS, others={"torch": nn_epoch_torch},
              bare=network_gemms,
              min_first=2 * NET_BATCH),
    Benchmark("mlp_fit", (20000, 784), "float32", network_setup, mlp_fit_call, unit="flop",
              flops=network_flops, kernels=NET_KERNELS, others={"sklearn": mlp_fit_sklearn},
              bare=network_gemms,
              min_first=2 * NET_BATCH),
    Benchmark("cnn_lenet", (1024,) + CNN_IMAGE, "float32", cnn_setup, cnn_epoch_call(LENET),
              unit="flop", flops=cnn_flops(LENET), kernels=CNN_KERNELS,
              others={"torch": lenet_epoch_torch}, bare=cnn_bare_gemms(LENET), min_first=2 * CNN_BATCH,
              per_sample=True),
    Benchmark("cnn_conv32_64", (1024,) + CNN_IMAGE, "float32", cnn_setup,
              cnn_epoch_call(CONVNET), unit="flop", flops=cnn_flops(CONVNET), kernels=CNN_KERNELS,
              others={"torch": convnet_epoch_torch}, bare=cnn_bare_gemms(CONVNET),
              min_first=2 * CNN_BATCH, per_sample=True),
    # the small networks of issue 24, per epoch at batch 200
    small_mlp("digits_mlp", (1797, 64), "float64", digits_setup, (100,), 10),
    small_mlp("tabular_mlp", (50000, 54), "float64", tabular_setup, (100,), TABULAR_CLASSES),
    small_mlp("tabular_mlp_64_64", (50000, 54), "float32", tabular_setup, (64, 64),
              TABULAR_CLASSES),
]


def get_benchmark(name):
    for bench in BENCHMARKS:
        if bench.name == name:
            return bench
    raise ValueError(f"unknown benchmark {name!r}; known: {[b.name for b in BENCHMARKS]}")


def select(names=None, quick=False):
    """The benchmarks to run: those named (in the given order), else all, or the quick ones."""
    if names:
        return [get_benchmark(name) for name in names]
    return [b for b in BENCHMARKS if b.quick or not quick]
