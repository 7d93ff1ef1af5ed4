"""`Sequential`: a stack of layers over flat buffers; the one training engine of
fastnn (the scikit-learn estimators train a Sequential too).

Models are data: every trained parameter lives in one contiguous buffer and its
gradient in another of the same layout (see `layout`), running statistics in a
third; layers hold views. The optimizer step is one kernel call over the whole
buffer, a global L2 penalty one kernel call over the weights block (or folded
into the optimizer step), and saving is writing the buffers and a JSON
description (see `saving`).

Freezing (`layer.trainable = False`) changes no layout: the optimizer steps over
the runs of the buffer that hold trainable tensors (one kernel call per run; the
buffer is one run when nothing is frozen), so the frozen parameters and their
optimizer state are never written; their gradients are not computed (backward
stops below the lowest layer that trains, a frozen Dense computes dx alone) and
read zero. The epoch loop and divergence handling are in
`training`.

Tensors have shapes: the model is built from the per-sample input shape
(`(784,)`, `(28, 28, 1)`), every layer returns its output shape, and workspaces
(layer outputs, pre-activations, dz, dx, the loss gradient, gathered batches)
are kept per batch shape, so a training step allocates no arrays after the first
step at that batch shape.
"""

from __future__ import annotations

import collections
import inspect
import math
import os
import re
import time
from typing import TYPE_CHECKING, Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.sparse as sp

from .. import backends
from .._types import Array, ArrayLike, Backend, Config, DTypeLike, RandomState, Shape
from ..backends import _checks as chk
from ..backends.reference import NumpyBackend
from . import layout, saving, training
from .callbacks import CallbackList, History
from .layers import (
    BatchNorm,
    Dense,
    Dropout,
    Layer,
    Pass,
    backward_through,
    binds_its_step,
    detached,
    first_training,
    full_config,
    layer_from_config,
    mix64,
    take_carried,
)
from .losses import get_loss, labels_in_range, sample_weights, targets_kept_check
from .metrics import Accuracy, get_metric
from .optimizers import get_optimizer, optimizer_from_config
from .plan import bind_step
from .residual import Residual  # noqa: F401  (registers the Residual layer kind)
from .training import NonFiniteLoss, TrainingDivergedError, all_finite

if TYPE_CHECKING:  # for annotations only
    from .callbacks import Callback
    from .losses import Loss
    from .metrics import Metric
    from .optimizers import Optimizer

PREDICT_BATCH = 2048  # rows per chunk in predict/evaluate: large enough for efficient GEMMs
MAX_WORKSPACES = 6  # batch shapes whose buffers are kept (training uses two: full and last batch)
# backends by name, as the registry loaded them (a train_step looks its model's up
# at each call: 4 us through the registry, caches cold after the kernels)
_NAMED_BACKENDS: Dict[str, Backend] = {}


def _check_int_option(value, name, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _input_shape(shape, name="input_shape"):
    """A per-sample shape: an int n means (n,)."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not shape:
        raise TypeError(f"{name} must be a positive integer or a non-empty tuple of them, got {shape!r}")
    return tuple(_check_int_option(s, name, 1) for s in shape)


def _same_data(a, b):
    """Whether array a is array b's data as it is: b itself or a reshape of it."""
    return (a.dtype == b.dtype and a.size == b.size and a.flags.c_contiguous and b.flags.c_contiguous
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


class _KnownBatch:
    """What train_step knows of the last batch that _check_data took as it was
    (see Sequential._remember_batch)."""

    __slots__ = ("x_shape", "y_shape", "y_dtype", "loss", "classes", "check", "t_shape")

    def __init__(self, x_shape, y_shape, y_dtype, loss, classes, check, t_shape):
        self.x_shape, self.y_shape, self.y_dtype = x_shape, y_shape, y_dtype
        self.loss, self.classes, self.check, self.t_shape = loss, classes, check, t_shape


class Sequential:
    """A feed-forward network: layers applied in order, trained by `fit`.

    All parameters live in one flat buffer (the layers hold views of it), so an
    optimizer step is one kernel call over the whole model.

    Parameters
    ----------
    layers : sequence of Layer, default ()
        The layers, in order (more can be added with `add` before the build).
    loss : str or Loss, optional
        A loss name or Loss, needed to train (also settable with `compile`).
    optimizer : str or Optimizer, default 'adam'
        An optimizer name or Optimizer.
    l2 : float, default 0.0
        L2 penalty on every weight tensor (Dense's, Conv2D's W), added to each
        layer's own l2.
    penalty_per_sample : bool, default False
        Divide the penalties by the batch's sample-weight sum (its size without
        weights; scikit-learn's alpha convention).
    metrics : sequence of str or Metric, optional
        The values fit and evaluate report beside the loss (see `compile`).
    seed : int, optional
        Weights, shuffling and dropout masks follow from it (None draws one).
    backend : str, backend object or None, default None
        A backend name or object, or None to use the current backend
        (`fastnn.set_backend`, `fastnn.use_backend`) at each call.
    dtype : {np.float32, np.float64}, default np.float32
        The dtype of the parameters and computations.
    input_shape : int or sequence of int, optional
        Build now for this per-sample input shape (an int n means ``(n,)``).
    input_dim : int, optional
        The same for flat inputs.

    Raises
    ------
    TypeError
        If a layer is not a fastnn.nn layer, or dtype is not float32 or float64.
    ValueError
        If an option is invalid, or both input_shape and input_dim are given.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn.nn import Dense, Sequential
    >>> X, y = np.random.default_rng(0).normal(size=(200, 8)), np.arange(200) % 3
    >>> model = Sequential([Dense(64, "relu"), Dense(3)], loss="sparse_categorical_crossentropy", seed=0)
    >>> history = model.fit(X, y, epochs=2, batch_size=64, validation_split=0.1, verbose=0)
    >>> model.predict(X[:2]).shape
    (2, 3)
    """

    # declared for the checker: None until compile, build or fit sets them
    loss: Optional[Loss]
    optimizer: Optional[Optimizer]
    metrics: Optional[List[Metric]]
    history: Optional[History]
    classes_: Optional[Array]
    input_shape: Optional[Shape]
    _trainable_flags: Optional[Tuple[bool, ...]]
    _workspaces: collections.OrderedDict[Any, Any]

    def __init__(self, layers: Sequence[Layer] = (), *, loss: Union[str, Loss, None] = None,
                 optimizer: Union[str, Optimizer, None] = "adam", l2: Optional[float] = 0.0,
                 penalty_per_sample: Optional[bool] = False,
                 metrics: Optional[Sequence[Union[str, Metric]]] = None, seed: Optional[int] = None,
                 backend: Union[str, Backend, None] = None, dtype: DTypeLike = np.float32,
                 input_shape: Union[int, Sequence[int], None] = None,
                 input_dim: Optional[int] = None) -> None:
        self.layers = []  # type: ignore[var-annotated]
        self.built = False
        for layer in layers:
            self.add(layer)
        self.dtype = np.dtype(dtype)
        if self.dtype not in chk.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
        self.seed = _check_int_option(seed, "seed", 0)
        self.set_backend(backend)
        self.loss = self.optimizer = None
        self.l2, self.penalty_per_sample, self.metrics = 0.0, False, None
        self.compile(optimizer=optimizer, loss=loss, metrics=metrics, l2=l2,
                     penalty_per_sample=penalty_per_sample)
        self.history = None
        self.stop_training = False
        self.classes_ = None  # the class labels, set by the first fit of a classifier (see _labels)
        self._passes = 0  # training forward passes so far: dropout seeds follow from it
        self._known_batch: Optional[_KnownBatch] = None  # (see _remember_batch)
        self._fits = 0
        if input_shape is not None and input_dim is not None:
            raise ValueError("pass input_shape or input_dim, not both")
        if input_shape is None:
            input_shape = input_dim
        if input_shape is None and self.layers and isinstance(self.layers[0], Dense):
            input_shape = self.layers[0].input_dim
        if input_shape is not None:
            self.build(input_shape)

    # --------------------------------------------------------------- definition
    def add(self, layer: Layer) -> Sequential:
        """Append a layer (before the model is built).

        A layer of another, built model is copied (layers hold views into their
        model's buffers): the copy has its options, name, trainable flag and current
        parameter and state values, which this model's build takes instead of
        initialising them; the other model is unchanged. So
        ``Sequential(trained.layers[:-1] + [Dense(5)])`` starts from the trained lower
        layers.

        Parameters
        ----------
        layer : Layer
            The layer.

        Returns
        -------
        Sequential
            The model.

        Raises
        ------
        TypeError
            If `layer` is not a fastnn.nn layer.
        ValueError
            If the model is built, the layer is already in it, or its name is taken.
        """
        if not isinstance(layer, Layer):
            raise TypeError(f"layers must be fastnn.nn layers, got {type(layer).__name__}")
        if self.built:
            raise ValueError("cannot add layers to a model that is already built")
        if any(layer is other for other in self.layers):
            raise ValueError("this layer object is already part of this model; create a new layer instead")
        layer = detached(layer)
        self._name_layers(layer)
        self.layers.append(layer)
        return self

    def _walk(self, layers=None):
        """Every layer of the model, sub-layers of containers after their container."""
        for layer in self.layers if layers is None else layers:
            yield layer
            yield from self._walk(layer.sublayers())

    def _name_layers(self, layer):
        """Give `layer` and its sub-layers Keras-style names (`dense`, `dense_1`,
        ...) where they have none; every name is unique within the model."""
        taken = {other.name for other in self._walk()}
        for part in self._walk([layer]):
            if part.name is None:
                base = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", part.kind.rsplit(".", 1)[-1]).lower()
                name, k = base, 0
                while name in taken:
                    k += 1
                    name = f"{base}_{k}"
                part.name = name
            elif part.name in taken:
                raise ValueError(f"the model already has a layer named {part.name!r}")
            taken.add(part.name)

    def compile(self, optimizer: Union[str, Optimizer, None] = None, loss: Union[str, Loss, None] = None,
                metrics: Optional[Sequence[Union[str, Metric]]] = None, l2: Optional[float] = None,
                penalty_per_sample: Optional[bool] = None) -> Sequential:
        """Set (only) the given training options.

        Parameters
        ----------
        optimizer : str or Optimizer, optional
            An optimizer name or Optimizer.
        loss : str or Loss, optional
            A loss name or Loss.
        metrics : sequence of str or Metric, optional
            None for the default (accuracy for classification losses), or metric
            names or fastnn.nn.metrics objects: 'accuracy', 'top_k_accuracy' (k=5;
            ``TopKAccuracy(k=3)``), 'precision', 'recall', 'f1' (binary for two
            classes, else macro; ``Precision(average="macro")``...), 'auc' (binary),
            and for regression losses 'mae', 'mse', 'rmse', 'r2'. They are reported by
            fit (history and callbacks' logs, ``'val_' + name`` on validation data) and
            by evaluate; see fastnn.nn.metrics.
        l2 : float, optional
            The L2 penalty on every weight tensor.
        penalty_per_sample : bool, optional
            Whether the penalties are divided by the batch's sample-weight sum.

        Returns
        -------
        Sequential
            The model.

        Raises
        ------
        TypeError, ValueError
            If an option is invalid, or a metric does not apply to the loss.
        """
        if optimizer is not None:
            self.optimizer = get_optimizer(optimizer)
        if loss is not None:
            self.loss = get_loss(loss)
        if metrics is not None:
            if isinstance(metrics, (str, dict)):
                raise TypeError("metrics must be a list of names, e.g. ['accuracy']")
            metrics = [get_metric(m) for m in metrics]
            names = [m.name for m in metrics]
            if len(set(names)) != len(names):
                raise ValueError(f"metrics has two entries named alike: {names}")
            self.metrics = metrics  # type: ignore[assignment]
        if self.metrics and self.loss is not None:
            for metric in self.metrics:
                if metric.classification != self.loss.classifier:
                    raise ValueError(f"{metric.name} is not defined for the {self.loss.name} loss")
        if l2 is not None:
            self.l2 = chk.real(l2, "l2", low=0)
        if penalty_per_sample is not None:
            if not isinstance(penalty_per_sample, (bool, np.bool_)):
                raise TypeError(f"penalty_per_sample must be True or False, got {penalty_per_sample!r}")
            self.penalty_per_sample = bool(penalty_per_sample)
        self._link_layers()
        return self

    def set_backend(self, backend: Union[str, Backend, None]) -> None:
        """Run on `backend`; results do not change, to the backends' tolerance.

        Parameters
        ----------
        backend : str, backend object or None
            A backend name or object; None: the current backend at each call.

        Raises
        ------
        ValueError, BackendUnavailableError
            If the name is unknown or the backend does not load here.
        """
        if backend is not None and not isinstance(backend, NumpyBackend):
            backends.get_backend(backend)  # unknown or unavailable names fail here
        self._backend = backend

    @property
    def backend(self) -> Backend:
        """The backend the model runs on now."""
        name = self._backend
        if type(name) is str:  # the registry's backend of that name, the same once loaded
            backend = _NAMED_BACKENDS.get(name)
            if backend is None:
                backend = _NAMED_BACKENDS[name] = backends.get_backend(name)
            return backend
        return backends.get_backend(name)

    def _new_metrics(self):
        """Fresh accumulators of the model's metrics (the default: accuracy for a
        classification loss), checked against the loss and output width."""
        if self.metrics is None:
            metrics = [Accuracy()] if self.loss is not None and self.loss.classifier else []
        else:
            metrics = self.metrics  # type: ignore[assignment]
        for metric in metrics:
            metric.check(self.loss, self.output_dim)  # type: ignore[arg-type]
        return [metric.fresh() for metric in metrics]

    def _link_layers(self):
        """When the last layer applies the loss's own link (a softmax before
        cross-entropy, a sigmoid before binary cross-entropy), the loss kernel does
        it fused with the loss, so that layer runs with identity. A Dense with the
        identity activation directly before batch norm has a fixed bias (see
        Dense.fixed_bias)."""
        link = self.loss.link if self.loss is not None else None
        for layer, after in zip(self.layers, self.layers[1:] + [None]):
            if hasattr(layer, "run_activation"):
                layer.run_activation = layer.activation
            if isinstance(layer, Dense):
                layer.fixed_bias = layer.activation == "identity" and isinstance(after, BatchNorm)
        if self.layers and link not in (None, "identity"):
            last = self.layers[-1]
            if getattr(last, "activation", None) == link:
                last.run_activation = "identity"

    def build(self, input_shape: Union[int, Sequence[int]], rng: Optional[RandomState] = None) -> Sequential:
        """Fix the per-sample input shape, lay out the flat buffers, initialise.

        The parameters are initialised from the model's seed, or from `rng`. Building
        again for the same shape does nothing.

        Parameters
        ----------
        input_shape : int or sequence of int
            The per-sample input shape (an int n means ``(n,)``).
        rng : numpy.random.Generator or RandomState, optional
            Draws the initial parameters, layer by layer in order.

        Returns
        -------
        Sequential
            The model.

        Raises
        ------
        ValueError
            If the model has no layers, a layer cannot take its input shape, or the
            model is built for another shape.
        """
        input_shape = _input_shape(input_shape)
        if self.built:
            if input_shape != self.input_shape:
                raise ValueError(f"the model is built for inputs of shape {self.input_shape}, got "
                                 f"{input_shape}")
            return self
        if not self.layers:
            raise ValueError("the model has no layers")
        self._link_layers()
        shape = input_shape
        param_specs, state_specs = [], []
        for i, layer in enumerate(self.layers):
            layer.index = i
            try:
                shape = layer.build(shape, self.dtype)
            except ValueError as exc:
                raise ValueError(f"layer {i} ({layer.kind}) cannot take inputs of shape {shape}: {exc}") \
                    from None
            param_specs += [(i, name, shape_, role) for name, shape_, role in layer.param_specs()]
            state_specs += [(i, name, shape_, "state") for name, shape_, _ in layer.state_specs()]
        self._slots = layout.lay_out(param_specs)
        state_slots = layout.lay_out(state_specs, order=lambda s: 0)
        n_params = sum(s.size for s in self._slots)
        self._params = chk.zeros(n_params, self.dtype)
        self._grads = chk.zeros(n_params, self.dtype)
        self._state = chk.zeros(sum(s.size for s in state_slots), self.dtype)
        n = len(self.layers)
        params, grads = layout.views(self._params, self._slots, n), layout.views(self._grads, self._slots, n)
        state = layout.views(self._state, state_slots, n)
        initial = {(i, name): init for i, name, _, init in
                   ((i, name, s, init) for i, layer in enumerate(self.layers)
                    for name, s, init in layer.state_specs())}
        for i, layer in enumerate(self.layers):
            for name, view in state[i].items():
                view[...] = initial[(i, name)]
            layer.bind(params[i], grads[i], state[i])
        self.n_weights = sum(s.size for s in self._slots if s.role == "weight")
        rng = np.random.default_rng(self.seed) if rng is None else rng
        backend = self.backend
        for layer in self.layers:
            layer.init_params(backend, rng)
        for layer in self._walk():
            take_carried(layer)
        names = [layer.name for layer in self._walk()]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique within the model, got {names}")
        self.input_shape, self.output_shape = input_shape, shape  # type: ignore[assignment]
        # which (sub-)layer owns each tensor of the layout, and its gradient's flat view
        owners = {(i, name): (owner, own) for i, layer in enumerate(self.layers)
                  for name, owner, own in layer.tensor_owners()}
        self._owners = [owners[(s.layer, s.name)] for s in self._slots]
        self._tensor_grads = [self._grads[s.offset:s.offset + s.size] for s in self._slots]
        # fixed once built, read at every training step
        self._every_layer = tuple(self._walk())
        self._weight_owners = [(slot, owner) for slot, (owner, _) in zip(self._slots, self._owners)
                               if slot.role == "weight"]
        self._trainable_flags = None
        self._refresh_trainable()
        self._workspaces = collections.OrderedDict()
        self._penalty_rates: Optional[tuple] = None  # (the rates of _penalties, see _penalty_terms)
        self._penalties = self._penalty_terms()
        self._fold_l2 = False
        # set by _prepare_training
        self._plannable: bool = False
        self._plan_key: Optional[tuple] = None
        self._has_dropout = any(isinstance(layer, Dropout) for layer in self._every_layer)
        # a step binds only when every layer can (no dropout: its seed changes per step)
        self._bindable = not self._has_dropout and all(binds_its_step(layer) for layer in self.layers)
        self._prepared: Optional[tuple] = None  # (_preparation_inputs at the last _prepare_training)
        self._known_batch = None
        self._gemms_on_own_threads = training.gemms_on_own_threads(self.layers)  # (blas_scope's)
        self.built = True
        return self

    def _refresh_trainable(self):
        """After a change of any layer's `trainable`: which layers are frozen, the
        lowest layer that trains (backward stops below it), the ranges of the
        buffer the optimizer updates (None: all of it, one kernel call) and the
        frozen tensors' gradient views (kept at zero)."""
        flags = tuple(layer.trainable for layer in self._every_layer)
        if flags == self._trainable_flags:
            return
        self._trainable_flags = flags
        for layer in self.layers:
            layer.set_frozen(False)
        self._first_trained = first_training(self.layers)
        frozen = [owner.frozen for owner, _ in self._owners]
        runs = []  # type: ignore[var-annotated]
        for s, f in zip(self._slots, frozen):
            if f:
                continue
            if runs and runs[-1][1] == s.offset:
                runs[-1] = (runs[-1][0], s.offset + s.size)
            else:
                runs.append((s.offset, s.offset + s.size))
        self._runs = None if not any(frozen) else tuple(runs)
        self._frozen_grads = [g for g, f in zip(self._tensor_grads, frozen) if f]
        for g in self._frozen_grads:
            g[...] = 0

    @property
    def input_dim(self) -> Optional[int]:
        """The input width of a model over flat inputs (None for other shapes)."""
        self._require_built()
        return self.input_shape[0] if len(self.input_shape) == 1 else None  # type: ignore[arg-type, index]

    @property
    def output_dim(self) -> int:
        """The number of outputs per sample (the product of the output shape)."""
        self._require_built()
        return math.prod(self.output_shape)  # type: ignore[arg-type]

    # ------------------------------------------------------------- flat buffers
    def get_flat_params(self) -> Array:
        """Return the parameter buffer itself.

        Returns
        -------
        numpy.ndarray
            A view, (n_params,): writing to it changes the model.
        """
        self._require_built()
        return self._params

    def set_flat_params(self, values: ArrayLike) -> None:
        """Copy `values` into the parameter buffer.

        Parameters
        ----------
        values : array_like
            Any float dtype, shape (n_params,).

        Raises
        ------
        ValueError
            If the shape differs or `values` holds NaN or infinity.
        """
        self._require_built()
        values = np.asarray(values)
        if values.shape != self._params.shape:
            raise ValueError(f"values must have shape {self._params.shape}, got {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError("values contains NaN or infinity")
        np.copyto(self._params, values, casting="same_kind")

    def get_flat_state(self) -> Array:
        """Return the non-trained state buffer (batch-norm running statistics).

        Returns
        -------
        numpy.ndarray
            A view of the buffer.
        """
        self._require_built()
        return self._state

    @property
    def n_params(self) -> int:
        """The number of parameters (the length of the parameter buffer)."""
        self._require_built()
        return self._params.size

    def _require_built(self):
        if not self.built:
            raise ValueError("the model is not built yet: call fit, predict or build(input_shape) first")

    def astype(self, dtype: DTypeLike) -> Sequential:
        """Return a copy of the model computing in `dtype`.

        The copy has the same layers, parameters and state, cast, and a fresh
        optimizer state.

        Parameters
        ----------
        dtype : {np.float32, np.float64}
            The dtype of the copy.

        Returns
        -------
        Sequential
            The copy.

        Raises
        ------
        TypeError
            If `dtype` is not float32 or float64.
        """
        self._require_built()
        dtype = np.dtype(dtype)
        if dtype not in chk.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        model = Sequential([layer_from_config(full_config(layer)) for layer in self.layers], loss=self.loss,
                           optimizer=optimizer_from_config(self.optimizer.config()), l2=self.l2,
                           penalty_per_sample=self.penalty_per_sample, metrics=self.metrics, seed=self.seed,
                           backend=self._backend, dtype=dtype)
        model.build(self.input_shape)  # type: ignore[arg-type]
        model._params[...] = self._params
        model._state[...] = self._state
        model._passes = self._passes
        model.classes_ = self.classes_
        return model

    # ------------------------------------------------------------ input checks
    def _check_X(self, X, name="X", finite=True):
        """X as a C-contiguous (N, *input_shape) array of the model's dtype, or a CSR
        matrix of that dtype for flat inputs; builds the model on first use.
        finite=False: a dense X's values are left for the caller to check
        (_check_finite_X), on a copy it makes anyway, while that is in the cache."""
        first = self.layers[0] if self.layers else None
        ready = (type(X) is np.ndarray and self.built and X.dtype == self.dtype and X.flags.c_contiguous
                 and X.shape[0] and X.shape[1:] == self.input_shape
                 and (first is None or first.input_dtype is None))
        if not ready:  # (what a training loop passes at every step is: its values only are checked)
            if sp.issparse(X):
                return self._check_sparse(X, name)
            if not isinstance(X, np.ndarray):
                X = np.asarray(X)
            if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
                raise TypeError(f"{name} must hold numbers, got dtype {X.dtype}")
            if X.ndim < 2:
                raise ValueError(f"{name} must be at least 2-D (n_samples, features...), got shape {X.shape}"
                                 + ("; use X.reshape(-1, 1) for one feature" if X.ndim == 1 else ""))
            if X.shape[0] == 0:
                raise ValueError(f"{name} is empty (0 samples)")
            if 0 in X.shape[1:]:
                raise ValueError(f"{name} has 0 features (shape {X.shape})")
            if self.built and X.shape[1:] != self.input_shape:
                if X.ndim == 2 and len(self.input_shape) == 1:  # type: ignore[arg-type]
                    raise ValueError(f"{name} has {X.shape[1]} features, but the model was built for "
                                     f"{self.input_shape[0]}")  # type: ignore[index]
                raise ValueError(f"{name} has samples of shape {X.shape[1:]}, but the model was built for "
                                 f"{self.input_shape}")
            if first is not None and first.input_dtype is not None:  # integer tokens, say
                X = first.check_input(X, name)
                if not self.built:
                    self.build(X.shape[1:])
                return X
            with np.errstate(over="ignore"):
                X = np.ascontiguousarray(X, dtype=self.dtype)
        if finite:
            self._check_finite_X(X, name)
        if not self.built:
            self.build(X.shape[1:])
        return X

    def _check_finite_X(self, X, name, by_dot=False):
        """by_dot: by training.all_finite_by_dot (inside a BLAS scope)."""
        if not (training.all_finite_by_dot(X) if by_dot else all_finite(X)):
            raise ValueError(f"{name} contains NaN or infinity"
                             + (" (or values too large for float32)" if self.dtype == np.float32 else ""))

    def _check_sparse(self, X, name):
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"{name} must be a non-empty (n_samples, n_features) sparse matrix, got "
                             f"shape {X.shape}")
        if self.built and (X.shape[1],) != self.input_shape:
            raise ValueError(f"{name} has {X.shape[1]} features, but the model was built for inputs of "
                             f"shape {self.input_shape}")
        if not np.issubdtype(X.dtype, np.number) and X.dtype != bool:
            raise TypeError(f"{name} must hold numbers, got dtype {X.dtype}")
        with np.errstate(over="ignore"):
            X = sp.csr_matrix(X, dtype=self.dtype)
        if not np.isfinite(X.data).all():
            raise ValueError(f"{name} contains NaN or infinity")
        if not self.built:
            self.build(X.shape[1])
        return X

    def _check_data(self, X, y, sample_weight, name="X", fitting=False, finite=True):
        """(X, targets, weights) ready for training loops: X from _check_X (finite:
        see there), the targets in the loss's kernel form (class labels encoded,
        see _labels; fitting: a first fit may set classes_), weights None or (N,)
        in the dtype."""
        if self.loss is None:
            raise ValueError("the model has no loss: pass loss=... to Sequential or compile")
        X = self._check_X(X, name, finite)
        n = X.shape[0]
        if len(self.output_shape) != 1:  # type: ignore[arg-type]
            raise ValueError(f"the losses take one vector per sample, but the model's outputs have shape "
                             f"{self.output_shape}; end the model with Flatten or a Dense over flat inputs")
        if np.ndim(y) == 0 or len(y) != n:
            raise ValueError(f"{name} has {n} samples but its targets have "
                             f"{'none' if np.ndim(y) == 0 else len(y)}")
        t = self.loss.targets(self._labels(y, fitting), n, self.output_dim, self.dtype)
        w = sample_weights(sample_weight, n, self.dtype)
        return X, t, w

    def _single_label(self):
        """Whether the model is a classifier with one class label per sample."""
        loss = self.loss
        return loss is not None and loss.classifier and not (loss.link == "logistic" and self.output_dim > 1)

    def _native_labels(self, y, n_classes):
        """Whether 1-D y is what the loss takes as it is: class indices 0..n-1 (any
        numeric dtype but bool), or with one output probabilities in [0, 1]
        (binary cross-entropy). Non-finite values too: the loss refuses them
        with its own message. (The hinge's -1/+1 labels are labels like any
        other: classes_ [-1, 1], indices 0/1, the same targets.)"""
        if y.dtype.kind in "iu":
            return labels_in_range(y, n_classes)
        if y.dtype.kind != "f":
            return False
        if not np.isfinite(y).all():
            return True
        if ((y >= 0) & (y < n_classes) & (y == np.round(y))).all():
            return True
        return self.output_dim == 1 and self.loss.link == "logistic" and bool(((y >= 0) & (y <= 1)).all())

    def _labels(self, y, fitting):
        """1-D class labels of a single-label classifier as indices into classes_.

        The first fit sets classes_: for labels the loss takes as they are (see
        _native_labels) it is 0..C-1 and they pass unchanged (the targets of
        integer labels are those of any earlier fastnn); other labels (strings,
        bools, integers such as {3, 7}) must be exactly as many distinct values
        as the model has classes (its outputs, 2 for one output), sorted into
        classes_. Later data is encoded with classes_; an unknown label is a
        ValueError. Other targets (regression, one-hot or multilabel rows) pass
        unchanged."""
        outputs = self.output_dim
        one_softmax = outputs == 1 and self.loss.link == "softmax"  # the loss refuses it
        if not self._single_label() or np.ndim(y) != 1 or one_softmax:
            return y
        y = np.asarray(y)
        if y.dtype == object:
            if not all(isinstance(v, str) for v in y):
                raise TypeError("y must hold numbers, bools or strings")
            y = y.astype(str)
        n_classes = max(outputs, 2)
        classes = self.classes_
        if classes is None:
            if self._native_labels(y, n_classes):
                if fitting:
                    self.classes_ = np.arange(n_classes)
                return y
            if y.dtype.kind == "f" and (y != np.round(y)).any():
                raise ValueError("y holds non-integer numbers: class labels must be integers, bools or "
                                 "strings (or, with one sigmoid output, probabilities in [0, 1])")
            if not fitting:
                raise ValueError("y holds labels other than the class indices 0.."
                                 f"{n_classes - 1}: fit the model first, its first fit sets classes_")
            classes = np.unique(y)
            if len(classes) != n_classes:
                raise ValueError(f"y has {len(classes)} distinct labels {classes.tolist()[:10]}, but the "
                                 f"model has {n_classes} classes (its outputs, 2 for one output): each "
                                 "class needs its own label")
            self.classes_ = classes
        elif classes.dtype.kind in "iu" and np.array_equal(classes, np.arange(n_classes)) \
                and self._native_labels(y, n_classes):
            return y
        if (classes.dtype.kind == "U") != (y.dtype.kind in "US"):
            raise ValueError(f"y holds labels of dtype {y.dtype}, but the model's classes_ are "
                             f"{classes.tolist()}")
        index = np.minimum(np.searchsorted(classes, y), len(classes) - 1)
        unknown = classes[index] != y
        if unknown.any():
            raise ValueError(f"y holds the label {y[unknown][0].item()!r}, which is not among the model's "
                             f"classes_ {classes.tolist()}")
        return index

    def _class_weights(self, class_weight, t, w):
        """Sample weights times the weight of each sample's class: class_weight a
        dict {label: weight} (labels of classes_; others weigh 1) or 'balanced'
        (n_samples / (n_classes * count of the class)), scikit-learn's
        compute_class_weight as the estimators use it."""
        from sklearn.utils.class_weight import compute_class_weight

        from .metrics import true_classes

        if not self._single_label():
            raise ValueError("class_weight needs a classification loss with one label per sample")
        if not (isinstance(class_weight, dict) or class_weight == "balanced"):
            raise TypeError("class_weight must be a dict {label: weight} or 'balanced', got "
                            f"{class_weight!r}")
        index = true_classes(self.loss, t)
        n_classes = max(self.output_dim, 2)
        classes = np.arange(n_classes) if self.classes_ is None else self.classes_
        if class_weight == "balanced":
            weights = compute_class_weight("balanced", classes=np.arange(n_classes), y=index)
        else:
            weights = compute_class_weight(class_weight, classes=classes, y=classes[index])
        if not (np.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError("class_weight must hold finite, non-negative weights")
        factor = weights[index].astype(self.dtype)
        w = factor if w is None else w * factor
        if w.sum() <= 0:
            raise ValueError("class_weight leaves the training samples with weights summing to 0")
        return w

    def _preparation_inputs(self):
        """What _prepare_training reads that can change between steps: the
        optimizer and its binding, folding and clipping options, the loss, the
        model's l2, every layer's trainable flag and penalties; and the flags and
        rates that the trainable runs and penalty terms kept were made for
        (loss_and_gradient and evaluate may remake them)."""
        optimizer = self.optimizer
        return (optimizer, optimizer.is_bound_to(self._params), optimizer.couples_l2, optimizer.clips,
                self.loss, self.l2,
                tuple([(layer.trainable, getattr(layer, "l2", 0.0), getattr(layer, "l1", 0.0))
                       for layer in self._every_layer]),
                self._trainable_flags, self._penalty_rates)

    def _prepare_training(self):
        inputs = self._preparation_inputs()
        if inputs == self._prepared:  # as at the last call, which found nothing wrong
            self._plannable = self._bindable
            return
        if self._params.size == 0:
            raise ValueError("the model has no trainable parameters")
        self._refresh_trainable()
        if self._first_trained == len(self.layers):
            raise ValueError("every layer of the model is frozen (trainable=False): nothing to train")
        if not self.optimizer.is_bound_to(self._params):
            self.optimizer.bind(self._params)
        self._penalties = self._penalty_terms()
        # a single L2 term over the whole weights block is folded into the
        # optimizer step, which reads the weights anyway (one pass fewer)
        self._fold_l2 = (self.optimizer.couples_l2 and len(self._penalties) == 1
                         and self._penalties[0][3] == 0 and self._penalties[0][0].size == self.n_weights
                         and np.may_share_memory(self._penalties[0][0], self._params)
                         and not self.optimizer.clips)
        # what a bound step (plan.StepPlan) depends on beyond its arrays
        self._plan_key = (self.optimizer, self.loss, self._fold_l2, self._trainable_flags, self._runs,
                          tuple((l2, l1) for _, _, l2, l1 in self._penalties))
        self._plannable = self._bindable
        self._prepared = self._preparation_inputs()  # (read again: bind above changes is_bound_to's answer)

    # ----------------------------------------------------------------- workspace
    def _workspace(self, batch_shape):
        """Buffers for one batch shape: one dict per layer plus the model's own."""
        ws = self._workspaces.get(batch_shape)
        if ws is None:
            ws = self._workspaces[batch_shape] = ([{} for _ in self.layers], {})
            if len(self._workspaces) > MAX_WORKSPACES:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(batch_shape)
        return ws

    # ------------------------------------------------------------------ passes
    def _forward(self, backend, x, ws, mode):
        for layer, layer_ws in zip(self.layers, ws[0]):
            x = layer.forward(backend, x, layer_ws, mode)
        return x

    def _backward(self, backend, dy, ws):
        backward_through(self.layers, backend, dy, ws[0], False, self._first_trained)

    def _penalty_terms(self):
        """[(param view, grad view, l2, l1)]: one term over the whole weights block
        when every weight tensor (parameters of role "weight": Dense's and Conv2D's
        W, sub-layers' included) has the same penalties (the model's l2 plus the
        l2 and l1 of the layer owning it), else one per weight tensor."""
        weights = self._weight_owners

        def rates(layer):
            return getattr(layer, "l2", 0.0) + self.l2, getattr(layer, "l1", 0.0)
        every = tuple(rates(owner) for _, owner in weights)
        if every == self._penalty_rates:  # (as at the last call: its terms)
            return self._penalties
        self._penalty_rates = every
        distinct = set(every)
        if len(distinct) == 1:
            l2, l1 = distinct.pop()
            block = slice(0, self.n_weights)
            terms = [(self._params[block], self._grads[block], l2, l1)]
        else:
            terms = [(self._params[s.offset:s.offset + s.size], self._grads[s.offset:s.offset + s.size],
                      *rates(owner)) for s, owner in weights]
        return [term for term in terms if term[2] or term[3]]

    def _penalty_scale(self, batch_weight):
        if not self.penalty_per_sample:
            return 1.0
        if batch_weight <= 0 and self._penalties:
            raise ValueError(f"the sample weights of the batch sum to {batch_weight}: the penalty per sample "
                             "is undefined")
        return 1.0 / batch_weight if batch_weight else 0.0

    def _penalty(self, backend, scale):
        """Adds the penalties' gradients to the gradient buffer and returns their
        value. Outside a step (evaluate) the gradient buffer serves as scratch:
        nothing reads it between steps."""
        value = 0.0
        for param, grad, l2, l1 in self._penalties:  # views of the flat buffers
            value += backend.fast.weight_penalty(param, grad, l2 * scale, l1 * scale)
        return value

    def _loss_and_grads(self, backend, x, t, w, ws, mode, batch_weight, fold_l2=False):
        """Forward, loss, backward and penalties on one batch; gradients end up in
        the gradient buffer. Returns the loss (penalties included). fold_l2: leave
        the single L2 term's gradient out (the optimizer step adds it)."""
        out = ws[1]["out"] = self._forward(backend, x, ws, mode)
        scale = self._penalty_scale(batch_weight)
        if fold_l2:
            # right after the forward pass, which has just read the weights, so they
            # are still in cache; the value only (the optimizer adds the gradient)
            weights = self._penalties[0][0]
            penalty = 0.5 * self._penalties[0][2] * scale * float(np.dot(weights, weights))
        grad = ws[1].get("dout")
        if grad is None:
            grad = ws[1]["dout"] = chk.empty(out.shape, out.dtype)
        loss = self.loss.checked_call(backend, out, t, w, grad)  # t, w: checked by _check_data
        if not math.isfinite(loss):
            raise NonFiniteLoss(loss)
        self._backward(backend, grad, ws)
        loss += penalty if fold_l2 else self._penalty(backend, scale)
        for g in self._frozen_grads:  # frozen: not computed (or a penalty's, unused): zero
            g[...] = 0
        if not math.isfinite(loss):
            raise NonFiniteLoss(loss)
        return loss

    def _planned_batch(self, plan, rows, batch_weight):
        """One training step of `rows` samples through `plan`, a StepPlan that fits
        the batch's arrays; returns the loss."""
        self._passes += 1
        return plan.run(rows, self._penalty_scale(batch_weight))

    def _train_batch(self, backend, x, t, w, ws, batch_weight):
        own = ws[1]
        plan = own.get("plan")
        if plan is not None and plan.fits(backend, x, t, w, self.optimizer.state, self._plan_key):
            self._passes += 1  # (_planned_batch's lines: one call fewer)
            return plan.run(x.shape[0], self._penalty_scale(batch_weight))
        self._passes += 1
        fold = self._fold_l2
        # the seed is for dropout masks only (mix64 is pure Python: a few us a step)
        seed = mix64(self.seed, self._passes) if self._has_dropout else 0
        mode = Pass(training=True, update_stats=True, seed=seed)
        loss = self._loss_and_grads(backend, x, t, w, ws, mode, batch_weight, fold)
        self._optimizer_step(backend, x, batch_weight, fold)
        if self._plannable:
            # bound after a step that ran: its workspaces hold valid values
            own["plan"] = plan = bind_step(self, backend, x, t, w, ws)
            if plan is None:  # some part cannot be bound: step as above until recompiled
                self._plannable = False
        return loss

    def _optimizer_step(self, backend, x, batch_weight, fold):
        if fold:
            self.optimizer.step(backend, self._params, self._grads, x.shape[0],
                                l2=self._penalties[0][2] * self._penalty_scale(batch_weight),
                                l2_size=self.n_weights, runs=self._runs, tensors=self._tensor_grads)  # type: ignore[arg-type]
        else:
            self.optimizer.step(backend, self._params, self._grads, x.shape[0], runs=self._runs,  # type: ignore[arg-type]
                                tensors=self._tensor_grads)

    def _recompute_running_stats(self, X):
        """Batch-norm running statistics = the statistics of all of X (prepared by
        _check_X) at the current parameters, dropout off (after a full-batch
        optimizer such as L-BFGS, which evaluates the loss without updating them)."""
        if not any(isinstance(layer, BatchNorm) for layer in self.layers):
            return
        ws = self._workspace(X.shape)
        x = training.take_rows(X, 0, X.shape[0], None, ws[1], "X")
        self._forward(self.backend, x, ws, Pass(training=True, dropout=False, momentum=1.0))
        self._release_inputs()

    # -------------------------------------------------------------- training API
    def train_step(self, X_batch: ArrayLike, y_batch: ArrayLike,
                   sample_weight: Optional[ArrayLike] = None) -> float:
        """Make one optimizer step on one batch.

        Parameters
        ----------
        X_batch : array_like
            The batch's inputs.
        y_batch : array_like
            Its targets.
        sample_weight : array_like, optional
            Per-sample weights.

        Returns
        -------
        float
            The batch's loss (penalties included).

        Raises
        ------
        TrainingDivergedError
            Without updating, when the loss is not finite.
        """
        backend = self.backend
        t = None if sample_weight is not None else self._known_targets(X_batch, y_batch)
        if t is None:
            x, t, w = self._check_data(X_batch, y_batch, sample_weight, "X_batch", fitting=True,
                                       finite=False)
            self._remember_batch(X_batch, y_batch, x, t, w)
        else:  # like the last batch: its values are checked below (X's) and by _known_targets (y's)
            x, w = X_batch, None
        self._prepare_training()
        ws = self._workspace(x.shape)
        own = ws[1]
        n = x.shape[0]
        # new arrays at each call: copied into the workspace, whose step is bound once
        copy = self._plannable
        try:
            weight = n if w is None else float(w.sum())
            scope = training.blas_scope(self, backend)
            with scope:
                x = training.take_rows(x, 0, n, None, own, "X", copy)
                if type(x) is np.ndarray and x.dtype.kind == "f":  # (CSR data: checked; tokens: integers)
                    # the copy, while in the cache; by one pass (a dot) where the BLAS is on one thread
                    self._check_finite_X(x, "X_batch", by_dot=scope is not training.NO_SCOPE)
                t = training.take_rows(t, 0, n, None, own, "t", copy)
                if w is not None:
                    w = training.take_rows(w, 0, n, None, own, "w", copy)
                return self._train_batch(backend, x, t, w, ws, weight)
        except NonFiniteLoss as exc:
            raise TrainingDivergedError(f"the loss became {exc.loss} at optimizer step "
                                        f"{self.optimizer.t + 1}; the parameters were not updated",
                                        step=self.optimizer.t + 1) from None

    def _known_targets(self, X, y):
        """train_step's targets for a batch (X, y) like the last one _check_data
        took as it was (see _remember_batch): X an array of its shape in the
        model's dtype, y of its shape and dtype, both C-contiguous, with the
        same loss and classes_, y's values passing the loss's check of targets
        taken as they are. Then they are y or its (N, 1) view, as _check_data
        would return (X's values are left to the caller, as with finite=False),
        else None."""
        known = self._known_batch
        if (known is None or type(X) is not np.ndarray or type(y) is not np.ndarray
                or X.shape != known.x_shape or X.dtype is not self.dtype or y.shape != known.y_shape
                or y.dtype is not known.y_dtype or known.loss is not self.loss
                or known.classes is not self.classes_ or not X.flags.c_contiguous
                or not y.flags.c_contiguous or not known.check(y)):
            return None
        return y if known.t_shape is None else y.reshape(known.t_shape)

    def _remember_batch(self, X, y, x, t, w):
        """After _check_data gave (x, t, w) for train_step's batch (X, y): when it
        took both as they were (x is X, t is y's own data as it is or as (N, 1),
        no weights) and the loss can tell from the values alone that it would
        again (losses.targets_kept_check), what _known_targets needs to take
        the next batch like them; else nothing."""
        self._known_batch = None
        if (w is not None or x is not X or type(X) is not np.ndarray or self.layers[0].input_dtype is not None
                or type(y) is not np.ndarray or not _same_data(t, y)):
            return
        check = targets_kept_check(self.loss, y, self.output_dim, self._single_label() and y.ndim == 1)
        if check is not None:
            self._known_batch = _KnownBatch(X.shape, y.shape, y.dtype, self.loss, self.classes_, check,
                                            None if t.shape == y.shape else t.shape)

    def loss_and_gradient(self, X: ArrayLike, y: ArrayLike, sample_weight: Optional[ArrayLike] = None,
                          out: Optional[Array] = None) -> Tuple[float, Array]:
        """Return the training objective and its gradient on all of (X, y).

        The forward runs in training mode (dropout on, batch statistics) but
        deterministically: dropout masks and batch-norm running statistics do not
        change between calls, as an optimizer such as SciPy's L-BFGS needs.

        Parameters
        ----------
        X : array_like
            The inputs.
        y : array_like
            The targets.
        sample_weight : array_like, optional
            Per-sample weights.
        out : numpy.ndarray, optional
            A (n_params,) array for the gradient (default: a new array).

        Returns
        -------
        loss : float
            The loss, penalties included.
        gradient : numpy.ndarray
            Its gradient, with the layout of `get_flat_params`.
        """
        return self._objective(self._check_data(X, y, sample_weight), out)

    def _objective(self, data, out=None):
        """loss_and_gradient on data prepared by _check_data."""
        x, t, w = data
        if self._params.size == 0:
            raise ValueError("the model has no trainable parameters")
        self._refresh_trainable()
        self._penalties = self._penalty_terms()
        mode = Pass(training=True, update_stats=False, seed=mix64(self.seed, 0))
        ws = self._workspace(x.shape)
        x = training.take_rows(x, 0, x.shape[0], None, ws[1], "X")
        try:
            loss = self._loss_and_grads(self.backend, x, t, w, ws, mode,
                                        x.shape[0] if w is None else float(w.sum()))
        except NonFiniteLoss as exc:
            loss = exc.loss
            self._grads[...] = np.nan
        if out is None:
            return loss, self._grads.copy()
        np.copyto(out, self._grads, casting="same_kind")
        return loss, out

    def fit(self, X: ArrayLike, y: ArrayLike, epochs: int = 1, batch_size: Optional[int] = 32,
            validation_split: float = 0.0, validation_data: Optional[Tuple[ArrayLike, ...]] = None,
            shuffle: bool = True, seed: Union[int, Sequence[int], None] = None,
            callbacks: Optional[Sequence[Callback]] = None, verbose: int = 1,
            sample_weight: Optional[ArrayLike] = None,
            class_weight: Union[Dict[Any, float], Literal["balanced"], None] = None) -> History:
        """Train the model.

        If the loss becomes NaN or infinite, fit raises TrainingDivergedError naming
        the epoch and step. The failing step's update is never applied; if an earlier
        update already made a parameter non-finite, the parameters are reset to those
        at the start of the epoch (a copy taken once per epoch, after checking they
        are finite), and the optimizer state is reset. The callbacks'
        on_train_batch_end sees that loss first: when one sets stop_training
        (TerminateOnNaN), fit returns the history of the completed epochs instead of
        raising.

        Parameters
        ----------
        X : array_like
            The inputs, ``(N, *input_shape)``.
        y : array_like
            Targets in the loss's form; for a classifier with one label per sample,
            any labels (integers, strings, bools): the first fit sets ``classes_`` and
            predict_classes gives them back.
        epochs : int, default 1
            The number of passes over the data.
        batch_size : int or None, default 32
            Samples per step (None or >= N: full batch; 1: per-sample SGD).
        validation_split : float, default 0.0
            Fraction of the samples, taken from the end before shuffling, held out
            for val_loss (and the ``val_`` metrics).
        validation_data : tuple, optional
            ``(X_val, y_val)`` or ``(X_val, y_val, sample_weight_val)``, instead of
            validation_split.
        shuffle : bool, default True
            Whether each epoch visits the samples in a new random order.
        seed : int, optional
            The shuffling order (default: follows from the model seed and the number
            of fit calls).
        callbacks : sequence of Callback, optional
            Callback objects of fastnn.nn.callbacks (Keras's protocol).
        verbose : {0, 1, 2}, default 1
            0 silent, 1 a progress bar (tqdm if installed, else a line per epoch), 2 a
            line per epoch.
        sample_weight : array_like, optional
            Per-sample weights of the training samples.
        class_weight : dict or 'balanced', optional
            ``{label: weight}`` or 'balanced', multiplying the training samples'
            weights (not validation's).

        Returns
        -------
        History
            The per-epoch values (also kept as ``model.history``).

        Raises
        ------
        TrainingDivergedError
            If the loss becomes NaN or infinite.
        TypeError, ValueError
            If the data or an option is invalid.
        """
        epochs = _check_int_option(epochs, "epochs", 1)
        if batch_size is not None:
            batch_size = _check_int_option(batch_size, "batch_size", 1)
        verbose = chk.choice(verbose, "verbose", (0, 1, 2))
        if callbacks is not None and not isinstance(callbacks, (list, tuple)):
            raise TypeError("callbacks must be a list of fastnn.nn.callbacks.Callback instances")
        classes_before = self.classes_
        try:  # a refused call leaves classes_ as it was
            X, t, w = self._check_data(X, y, sample_weight, fitting=True)
            val = None
            if validation_data is not None:
                if validation_split:
                    raise ValueError("pass validation_split or validation_data, not both")
                if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                    raise ValueError("validation_data must be (X_val, y_val) or "
                                     "(X_val, y_val, sample_weight_val)")
                X_val, y_val, *w_val = validation_data
                val = self._check_data(X_val, y_val, w_val[0] if w_val else None, name="X_val")
            elif validation_split:
                split = chk.real(validation_split, "validation_split", 0, 1, high_open=True)
                n_train = int(X.shape[0] * (1 - split))
                if n_train < 1 or n_train == X.shape[0]:
                    raise ValueError(f"validation_split={split} leaves {n_train} of {X.shape[0]} samples for "
                                     "training; both parts must be non-empty")
                val = (X[n_train:], t[n_train:], None if w is None else w[n_train:])  # type: ignore[index]
                X, t, w = X[:n_train], t[:n_train], None if w is None else w[:n_train]  # type: ignore[index]
                for part, weights in (("training", w), ("validation", val[2])):
                    if weights is not None and weights.sum() <= 0:
                        raise ValueError(f"the sample weights of the {part} part of validation_split "
                                         "sum to 0")
            if class_weight is not None:
                w = self._class_weights(class_weight, t, w)
        except (TypeError, ValueError):
            self.classes_ = classes_before
            raise
        n = X.shape[0]
        bs = n if batch_size is None else min(batch_size, n)
        metrics = self._new_metrics()
        self._prepare_training()
        if seed is None:
            self._fits += 1
            seed = (self.seed, self._fits)
        rng = np.random.default_rng(seed)
        params = {"epochs": epochs, "steps": -(-n // bs), "verbose": verbose}
        callbacks = CallbackList.for_fit(callbacks, self, params)
        self.history = history = History()
        history.model = self
        self.stop_training = False
        backend = self.backend
        if not all_finite(self._params):
            raise ValueError("the model's parameters contain NaN or infinity")
        callbacks.on_train_begin({"validation": val is not None})
        # parameters at the start of the epoch, known to be finite (checked at the
        # end of each epoch): what a divergence falls back to
        snapshot = np.empty_like(self._params)
        bar = training.progress(epochs, verbose)
        close = None if bar is None else bar.close
        order = np.arange(n) if shuffle else None
        gather = training.RowGather(backend)
        logs = {}
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            callbacks.on_epoch_begin(epoch - 1, {})
            np.copyto(snapshot, self._params)
            if shuffle:
                rng.shuffle(order)  # type: ignore[arg-type]
            for metric in metrics:
                metric.reset()
            try:
                with training.blas_scope(self, backend):
                    result = training.train_epoch(self, backend, X, t, w, order, bs, snapshot, epoch,
                                                  close, metrics, callbacks.batch_hooks, gather)
            except TrainingDivergedError as exc:
                callbacks.on_train_batch_end(exc.step - 1, {"loss": exc.loss})  # type: ignore[operator]
                if not self.stop_training:
                    raise
                break
            logs = {"loss": result.loss}
            for metric in metrics:
                logs[metric.name] = metric.result()
            if val is not None:
                for key, value in self._evaluate(*val).items():
                    logs["val_" + key] = value
            logs["lr"] = self.optimizer.schedule.lr_at(self.optimizer.t)  # the epoch's last step
            history.append(logs)
            stop = self.optimizer.end_epoch(logs["loss"])
            callbacks.on_epoch_end(epoch - 1, logs)
            training.report(bar, verbose, epoch, epochs, logs, time.perf_counter() - start)
            if stop or self.stop_training:
                break
        if bar is not None:
            bar.close()
        self._release_inputs()
        callbacks.on_train_end(logs)
        return history

    def _release_inputs(self):
        """Drop the workspaces' references to caller arrays (layer inputs, batch-norm
        caches), so that data passed to fit or predict can be freed."""
        for _, own in self._workspaces.values():
            plan = own.get("plan")
            if plan is not None and not plan.holds_only_buffers(own):
                del own["plan"]  # bound to a caller's arrays
        stack = [ws for layer_ws, _ in self._workspaces.values() for ws in layer_ws]
        while stack:
            ws = stack.pop()
            ws.pop("x", None)
            ws.pop("cache", None)
            stack.extend(ws.get("sub", ()))

    # -------------------------------------------------------------- inference API
    def _outputs(self, X, batch_size, link):
        """Raw last-layer outputs (link=False) or predictions (link=True), (N, *output_shape)."""
        X = self._check_X(X)
        bs = PREDICT_BATCH if batch_size is None else _check_int_option(batch_size, "batch_size", 1)
        backend = self.backend
        apply_link = link and self.loss is not None and self.loss.link != "identity"
        result = chk.empty((X.shape[0],) + self.output_shape, self.dtype)  # type: ignore[operator]
        mode = Pass(training=False)
        for lo in range(0, X.shape[0], bs):
            hi = min(lo + bs, X.shape[0])
            ws = self._workspace((hi - lo,) + X.shape[1:])
            out = self._forward(backend, training.take_rows(X, lo, hi, None, ws[1], "X"), ws, mode)
            if apply_link:
                self.loss.apply_link(backend, out, result[lo:hi])
            else:
                result[lo:hi] = out
        self._release_inputs()
        return result

    def predict(self, X: ArrayLike, batch_size: Optional[int] = None) -> Array:
        """Return the predictions.

        Class probabilities for the cross-entropy losses (softmax or sigmoid
        applied), the loss's inverse link for the others (exp for Poisson), raw
        outputs without a loss.

        Parameters
        ----------
        X : array_like
            The inputs.
        batch_size : int, optional
            Samples per forward pass (default: a size that bounds the memory).

        Returns
        -------
        numpy.ndarray
            ``(N, *output_shape)``.
        """
        return self._outputs(X, batch_size, link=True)

    def predict_raw(self, X: ArrayLike, batch_size: Optional[int] = None) -> Array:
        """Return the last layer's outputs without the loss's link (logits).

        Parameters
        ----------
        X : array_like
            The inputs.
        batch_size : int, optional
            Samples per forward pass.

        Returns
        -------
        numpy.ndarray
            ``(N, *output_shape)``.
        """
        return self._outputs(X, batch_size, link=False)

    def predict_proba(self, X: ArrayLike, batch_size: Optional[int] = None) -> Array:
        """Return class probabilities of a model trained with a cross-entropy loss.

        Parameters
        ----------
        X : array_like
            The inputs.
        batch_size : int, optional
            Samples per forward pass.

        Returns
        -------
        numpy.ndarray
            (N, C).

        Raises
        ------
        TypeError
            If the loss is not a cross-entropy.
        """
        if self.loss is None or self.loss.link not in ("softmax", "logistic"):
            raise TypeError("predict_proba needs a cross-entropy loss (softmax or sigmoid outputs)")
        return self.predict(X, batch_size)

    def predict_classes(self, X: ArrayLike, batch_size: Optional[int] = None) -> Array:
        """Return class labels.

        The argmax for several outputs, output > 0 (probability > 0.5) for one
        output, as the labels the model was fitted with (``classes_``; class indices
        before a fit); 0/1 per output for multilabel models.

        Parameters
        ----------
        X : array_like
            The inputs.
        batch_size : int, optional
            Samples per forward pass.

        Returns
        -------
        numpy.ndarray
            (N,) labels, or (N, K) for multilabel models.

        Raises
        ------
        TypeError
            If the loss is not a classification loss.
        """
        if self.loss is None or not self.loss.classifier:
            raise TypeError("predict_classes needs a classification loss")
        raw = self.predict_raw(X, batch_size)
        if self.loss.link == "logistic" or raw.shape[1] == 1:
            labels = (raw > 0).astype(np.int64)
            if raw.shape[1] > 1:
                return labels
            labels = labels[:, 0]
        else:
            labels = raw.argmax(axis=1)
        return labels if self.classes_ is None else self.classes_[labels]

    def evaluate(self, X: ArrayLike, y: ArrayLike, sample_weight: Optional[ArrayLike] = None,
                 batch_size: Optional[int] = None) -> Dict[str, float]:
        """Return the loss and the model's metrics on (X, y), in inference mode.

        Each value is exact over all of (X, y); the loss includes the penalties, as
        in training. Metrics ignore sample_weight (see fastnn.nn.metrics).

        Parameters
        ----------
        X : array_like
            The inputs.
        y : array_like
            The targets.
        sample_weight : array_like, optional
            Per-sample weights (of the loss).
        batch_size : int, optional
            Samples per forward pass.

        Returns
        -------
        dict of str to float
            ``{'loss': ..., metric name: ...}``.
        """
        return self._evaluate(*self._check_data(X, y, sample_weight), batch_size=batch_size)  # type: ignore[misc]

    def _evaluate(self, X, t, w, batch_size=None):
        bs = PREDICT_BATCH if batch_size is None else _check_int_option(batch_size, "batch_size", 1)
        backend = self.backend
        mode = Pass(training=False)
        total = weight_total = 0.0
        metrics = self._new_metrics()
        for lo in range(0, X.shape[0], bs):
            hi = min(lo + bs, X.shape[0])
            ws = self._workspace((hi - lo,) + X.shape[1:])
            out = self._forward(backend, training.take_rows(X, lo, hi, None, ws[1], "X"), ws, mode)
            grad = ws[1].get("dout")
            if grad is None:
                grad = ws[1]["dout"] = chk.empty(out.shape, out.dtype)
            wb = None if w is None else w[lo:hi]
            bw = (hi - lo) if wb is None else float(wb.sum())
            for metric in metrics:
                metric.update(self.loss, out, t[lo:hi])
            if bw == 0:
                continue
            total += self.loss.checked_call(backend, out, t[lo:hi], wb, grad) * bw
            weight_total += bw
        self._release_inputs()
        self._penalties = self._penalty_terms()
        everything = X.shape[0] if w is None else float(w.sum())
        logs = {"loss": total / weight_total + self._penalty(backend, self._penalty_scale(everything))}
        for metric in metrics:
            logs[metric.name] = metric.result()
        return logs

    # ------------------------------------------------------------------ summary
    def summary(self) -> None:
        """Print a table of the layers, as Keras's summary.

        Each layer's name, kind and options, output shape, parameter count and
        whether it trains, with the trainable and non-trainable totals. The text is
        `summary_str`.
        """
        print(self.summary_str())

    def summary_str(self) -> str:
        """Return the table `summary` prints.

        Returns
        -------
        str
            The table.
        """
        if self.built:
            self._refresh_trainable()
        rows = [("Layer", "Kind", "Output shape", "Params", "Trainable")]

        def add_rows(layers, depth, trains):
            for layer in layers:
                trains_here = trains and layer.trainable
                built = self.built and hasattr(layer, "output_shape")
                shape = "(None, " + ", ".join(map(str, layer.output_shape)) + ")" if built else "?"
                count = str(sum(math.prod(s) for _, s, _ in layer.param_specs())) if built else "?"
                rows.append(("  " * depth + str(layer.name), _kind_and_options(layer), shape, count,
                             "yes" if trains_here else "no"))
                add_rows(layer.sublayers(), depth + 1, trains_here)

        add_rows(self.layers, 0, True)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(f"{v:>{w}}" if i == 3 else f"{v:<{w}}" for i, (v, w) in enumerate(zip(r, widths)))
                 .rstrip() for r in rows]
        rule = "=" * max(map(len, lines))
        lines[1:1] = [rule]
        lines.append(rule)
        if self.built:
            trainable = sum(s.size for s, (owner, _) in zip(self._slots, self._owners) if not owner.frozen)
            lines += [f"Input shape: (None, {', '.join(map(str, self.input_shape))}), {self.dtype.name}",  # type: ignore[arg-type]
                      f"Total params: {self._params.size}", f"Trainable params: {trainable}",
                      f"Non-trainable params: {self._params.size - trainable}"]
        else:
            lines.append("Not built yet: parameters are counted once the input shape is known")
        return "\n".join(lines)

    def gradients(self) -> Dict[str, Array]:
        """Return the gradients of the last train_step, fit step or loss_and_gradient.

        The gradient is what the optimizer received: the loss's plus the penalties'
        (except a single L2 penalty that the optimizer step adds itself, see the l2
        option), clipped when the optimizer clips; zero for frozen parameters (not
        computed).

        Returns
        -------
        dict of str to numpy.ndarray
            ``{'layer_name/param': gradient}``: read-only views of the gradient
            buffer (they change with the next step; copy them to keep).
        """
        self._require_built()
        result = {}
        for slot, (owner, own) in sorted(zip(self._slots, self._owners), key=lambda p: p[0].rank):
            view = self._grads[slot.offset:slot.offset + slot.size].reshape(slot.shape)
            view.flags.writeable = False
            result[f"{owner.name}/{own}"] = view
        return result

    def __repr__(self):
        return f"Sequential([{', '.join(map(repr, self.layers))}], loss={self.loss!r})"

    # ------------------------------------------------------------ save and load
    def describe(self) -> Config:
        """Return the model's description (everything but the arrays).

        Returns
        -------
        dict
            JSON-able: layers, options, dtype, input shape, classes.
        """
        return saving.describe(self)

    def save(self, path: Union[str, os.PathLike[str]]) -> None:
        """Write the model to `path` as a .npz archive (no pickle).

        The archive holds the flat parameter and state buffers, the optimizer's state
        buffers and a JSON description stored as a string array; `load` reads it.

        Parameters
        ----------
        path : str, path-like or binary file
            Exactly that name, or an open binary file.
        """
        saving.save(self, path)

    # pickling: built models travel as their description and buffers (layers hold
    # views, which pickle would turn into separate copies)
    def __getstate__(self):
        state = dict(self.__dict__)
        if isinstance(self._backend, NumpyBackend):
            state["_backend"] = self._backend.name
        if not self.built:
            return state
        description = saving.describe(self)
        return {"description": description, "arrays": saving.arrays_of(self, description),
                "loss": self.loss, "backend": state["_backend"], "history": self.history,
                "fits": self._fits}

    def __setstate__(self, state):
        if "description" not in state:
            self.__dict__.update(state)
            return
        model = saving.from_description(state["description"], state["arrays"], state["backend"],
                                        loss=state["loss"])
        self.__dict__.update(model.__dict__)
        self.history, self._fits = state["history"], state["fits"]


def _kind_and_options(layer):
    """'Dense(units=64, activation=relu)': the kind and the options that differ
    from the constructor's defaults (a container's sub-layers have rows of their own)."""
    defaults = inspect.signature(type(layer).__init__).parameters
    parts = []
    for key, value in layer.config().items():
        default = defaults[key].default if key in defaults else inspect.Parameter.empty
        if key == "kind" or value == default or (default is None and value == "identity") \
                or (isinstance(value, list) and value and isinstance(value[0], dict)):
            continue
        parts.append(f"{key}={value}")
    return f"{layer.kind}({', '.join(parts)})"


def load(path: Union[str, os.PathLike[str]], backend: Union[str, Backend, None] = None) -> Sequential:
    """Read a model written by `Sequential.save` (see fastnn.nn.saving).

    Parameters
    ----------
    path : str or path-like
        The file.
    backend : str, backend object or None, default None
        The backend the model runs on (None: the current backend at each call).

    Returns
    -------
    Sequential
        The model, with its layers, parameters, state, optimizer state and
        training options.

    Raises
    ------
    ValueError
        If the file is not such a model (foreign, corrupted, truncated, invalid
        values).

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import nn
    >>> model = nn.Sequential([nn.Dense(4, "relu"), nn.Dense(2)], loss="mse", input_shape=3, seed=0)
    >>> model.save("model.npz")
    >>> x = np.ones((1, 3), np.float32)
    >>> np.array_equal(nn.load("model.npz").predict(x), model.predict(x))
    True
    """
    return saving.load(path, backend)


__all__ = ["Sequential", "TrainingDivergedError", "load"]
