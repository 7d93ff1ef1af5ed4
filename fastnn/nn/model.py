"""`Sequential`: a stack of layers over flat buffers; the one training engine of
fastnn (the scikit-learn estimators train a Sequential too).

Models are data: every trained parameter lives in one contiguous buffer and its
gradient in another of the same layout (see `layout`), running statistics in a
third; layers hold views. The optimizer step is one kernel call over the whole
buffer, a global L2 penalty one kernel call over the weights block (or folded
into the optimizer step), and saving is writing the buffers and a JSON
description (see `saving`). The epoch loop and divergence handling are in
`training`.

Tensors have shapes: the model is built from the per-sample input shape
(`(784,)`, `(28, 28, 1)`), every layer returns its output shape, and workspaces
(layer outputs, pre-activations, dz, dx, the loss gradient, gathered batches)
are kept per batch shape, so a training step allocates no arrays after the first
step at that batch shape.
"""

import collections
import math
import time

import numpy as np
import scipy.sparse as sp

from .. import backends
from ..backends import _checks as chk
from ..backends.reference import NumpyBackend
from . import layout, saving, training
from .callbacks import Callback, History
from .layers import BatchNorm, Dense, Dropout, Layer, Pass, layer_from_config, mix64
from .losses import get_loss, sample_weights
from .optimizers import get_optimizer, optimizer_from_config
from .training import NonFiniteLoss, TrainingDivergedError, all_finite

PREDICT_BATCH = 2048  # rows per chunk in predict/evaluate: large enough for efficient GEMMs
MAX_WORKSPACES = 6  # batch shapes whose buffers are kept (training uses two: full and last batch)


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


class Sequential:
    """A feed-forward network: layers applied in order.

    layers: fastnn.nn layers. loss: a loss name or Loss (needed to train; also
    settable with compile). optimizer: a name or an Optimizer ('adam' by default).
    l2: L2 penalty on every Dense weight matrix, added to each layer's own l2.
    penalty_per_sample: divide the penalties by the batch's sample-weight sum (its
    size without weights; scikit-learn's alpha convention). seed: weights,
    shuffling and dropout masks follow from it (None draws one). backend: a
    backend name or object, or None to use the current backend
    (fastnn.set_backend / use_backend) at each call. dtype: float32 or float64.
    input_shape: build now for this per-sample input shape (an int n means
    (n,)); input_dim: the same for flat inputs.

    >>> model = Sequential([Dense(64, "relu"), Dense(10)], loss="sparse_categorical_crossentropy")
    >>> history = model.fit(X, y, epochs=20, batch_size=64, validation_split=0.1)
    >>> proba = model.predict(X_test)
    """

    def __init__(self, layers=(), *, loss=None, optimizer="adam", l2=0.0, penalty_per_sample=False,
                 metrics=None, seed=None, backend=None, dtype=np.float32, input_shape=None, input_dim=None):
        self.layers = []
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
        self._passes = 0  # training forward passes so far: dropout seeds follow from it
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
    def add(self, layer):
        """Append a layer (before the model is built)."""
        if not isinstance(layer, Layer):
            raise TypeError(f"layers must be fastnn.nn layers, got {type(layer).__name__}")
        if self.built:
            raise ValueError("cannot add layers to a model that is already built")
        if any(layer is other for other in self.layers) or getattr(layer, "params", None) is not None:
            raise ValueError("this layer object is already part of a model; create a new layer instead "
                             "(layers hold views into their model's buffers)")
        self.layers.append(layer)
        return self

    def compile(self, optimizer=None, loss=None, metrics=None, l2=None, penalty_per_sample=None):
        """Set (only) the given training options; returns the model.
        metrics: None for the default (accuracy for classification losses), or a
        list containing 'accuracy' or nothing."""
        if optimizer is not None:
            self.optimizer = get_optimizer(optimizer)
        if loss is not None:
            self.loss = get_loss(loss)
        if metrics is not None:
            if isinstance(metrics, str):
                raise TypeError("metrics must be a list of names, e.g. ['accuracy']")
            metrics = list(metrics)
            for m in metrics:
                chk.choice(m, "metrics entry", ("accuracy", "acc"))
            self.metrics = metrics
        if self.metrics and self.loss is not None and not self.loss.classifier:
            raise ValueError(f"accuracy is not defined for the {self.loss.name} loss")
        if l2 is not None:
            self.l2 = chk.real(l2, "l2", low=0)
        if penalty_per_sample is not None:
            if not isinstance(penalty_per_sample, (bool, np.bool_)):
                raise TypeError(f"penalty_per_sample must be True or False, got {penalty_per_sample!r}")
            self.penalty_per_sample = bool(penalty_per_sample)
        self._link_layers()
        return self

    def set_backend(self, backend):
        """Run on `backend` (a name or backend object; None: the current backend at
        each call). Results do not change, to the backends' tolerance."""
        if backend is not None and not isinstance(backend, NumpyBackend):
            backends.get_backend(backend)  # unknown or unavailable names fail here
        self._backend = backend

    @property
    def backend(self):
        return backends.get_backend(self._backend)

    @property
    def _reports_accuracy(self):
        if self.loss is None or not self.loss.classifier:
            return False
        return self.metrics is None or bool(self.metrics)

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

    def build(self, input_shape, rng=None):
        """Fix the per-sample input shape (an int n means (n,)), lay out the flat
        buffers and initialise the parameters: from the model's seed, or from
        `rng` (a numpy Generator or RandomState, drawn layer by layer in order)."""
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
        self._params = np.zeros(n_params, self.dtype)
        self._grads = np.zeros(n_params, self.dtype)
        self._state = np.zeros(sum(s.size for s in state_slots), self.dtype)
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
        self.input_shape, self.output_shape = input_shape, shape
        self._first_trained = next((i for i, layer in enumerate(self.layers) if layer.param_specs()),
                                   len(self.layers))
        self._workspaces = collections.OrderedDict()
        self._penalties = self._penalty_terms()
        self._fold_l2 = False
        self._has_dropout = any(isinstance(layer, Dropout) for layer in self.layers)
        self.built = True
        return self

    @property
    def input_dim(self):
        """The input width of a model over flat inputs (None for other shapes)."""
        self._require_built()
        return self.input_shape[0] if len(self.input_shape) == 1 else None

    @property
    def output_dim(self):
        self._require_built()
        return math.prod(self.output_shape)

    # ------------------------------------------------------------- flat buffers
    def get_flat_params(self):
        """The parameter buffer itself (a view: writing to it changes the model)."""
        self._require_built()
        return self._params

    def set_flat_params(self, values):
        """Copy `values` (any float dtype, shape (n_params,)) into the parameter buffer."""
        self._require_built()
        values = np.asarray(values)
        if values.shape != self._params.shape:
            raise ValueError(f"values must have shape {self._params.shape}, got {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError("values contains NaN or infinity")
        np.copyto(self._params, values, casting="same_kind")

    def get_flat_state(self):
        """The non-trained state buffer (batch-norm running statistics), a view."""
        self._require_built()
        return self._state

    @property
    def n_params(self):
        self._require_built()
        return self._params.size

    def _require_built(self):
        if not self.built:
            raise ValueError("the model is not built yet: call fit, predict or build(input_shape) first")

    def astype(self, dtype):
        """A copy of the model computing in `dtype` (float32 or float64): the same
        layers, parameters and state, cast; a fresh optimizer state."""
        self._require_built()
        dtype = np.dtype(dtype)
        if dtype not in chk.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        model = Sequential([layer_from_config(layer.config()) for layer in self.layers], loss=self.loss,
                           optimizer=optimizer_from_config(self.optimizer.config()), l2=self.l2,
                           penalty_per_sample=self.penalty_per_sample, metrics=self.metrics, seed=self.seed,
                           backend=self._backend, dtype=dtype)
        model.build(self.input_shape)
        model._params[...] = self._params
        model._state[...] = self._state
        model._passes = self._passes
        return model

    # ------------------------------------------------------------ input checks
    def _check_X(self, X, name="X"):
        """X as a C-contiguous (N, *input_shape) array of the model's dtype, or a CSR
        matrix of that dtype for flat inputs; builds the model on first use."""
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
            if X.ndim == 2 and len(self.input_shape) == 1:
                raise ValueError(f"{name} has {X.shape[1]} features, but the model was built for "
                                 f"{self.input_shape[0]}")
            raise ValueError(f"{name} has samples of shape {X.shape[1:]}, but the model was built for "
                             f"{self.input_shape}")
        first = self.layers[0] if self.layers else None
        if first is not None and first.input_dtype is not None:  # integer tokens, say
            X = first.check_input(X, name)
            if not self.built:
                self.build(X.shape[1:])
            return X
        with np.errstate(over="ignore"):
            X = np.ascontiguousarray(X, dtype=self.dtype)
        if not all_finite(X):
            raise ValueError(f"{name} contains NaN or infinity"
                             + (" (or values too large for float32)" if self.dtype == np.float32 else ""))
        if not self.built:
            self.build(X.shape[1:])
        return X

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

    def _check_data(self, X, y, sample_weight, name="X"):
        """(X, targets, weights) ready for training loops: X from _check_X, the
        targets in the loss's kernel form, weights None or (N,) in the dtype."""
        if self.loss is None:
            raise ValueError("the model has no loss: pass loss=... to Sequential or compile")
        X = self._check_X(X, name)
        n = X.shape[0]
        if len(self.output_shape) != 1:
            raise ValueError(f"the losses take one vector per sample, but the model's outputs have shape "
                             f"{self.output_shape}; end the model with Flatten or a Dense over flat inputs")
        if np.ndim(y) == 0 or len(y) != n:
            raise ValueError(f"{name} has {n} samples but its targets have "
                             f"{'none' if np.ndim(y) == 0 else len(y)}")
        t = self.loss.targets(y, n, self.output_dim, self.dtype)
        w = sample_weights(sample_weight, n, self.dtype)
        return X, t, w

    def _prepare_training(self):
        if self._params.size == 0:
            raise ValueError("the model has no trainable parameters")
        if not self.optimizer.is_bound_to(self._params):
            self.optimizer.bind(self._params)
        self._penalties = self._penalty_terms()
        # a single L2 term over the whole weights block is folded into the
        # optimizer step, which reads the weights anyway (one pass fewer)
        self._fold_l2 = (self.optimizer.couples_l2 and len(self._penalties) == 1
                         and self._penalties[0][3] == 0 and self._penalties[0][0].size == self.n_weights
                         and self._penalties[0][0].base is self._params)

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
        first = self._first_trained
        for i in range(len(self.layers) - 1, first - 1, -1):
            dy = self.layers[i].backward(backend, dy, ws[0][i], i > first)

    def _penalty_terms(self):
        """[(param view, grad view, l2, l1)]: one term over the whole weights block
        when every Dense layer has the same penalties, else one per layer."""
        dense = [layer for layer in self.layers if isinstance(layer, Dense)]
        rates = {(layer.l2 + self.l2, layer.l1) for layer in dense}
        if len(rates) == 1:
            l2, l1 = rates.pop()
            block = slice(0, self.n_weights)
            terms = [(self._params[block], self._grads[block], l2, l1)]
        else:
            terms = [(layer.params["W"], layer.grads["W"], layer.l2 + self.l2, layer.l1) for layer in dense]
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
            grad = ws[1]["dout"] = np.empty_like(out)
        loss = self.loss.checked_call(backend, out, t, w, grad)  # t, w: checked by _check_data
        if not math.isfinite(loss):
            raise NonFiniteLoss(loss)
        self._backward(backend, grad, ws)
        loss += penalty if fold_l2 else self._penalty(backend, scale)
        if not math.isfinite(loss):
            raise NonFiniteLoss(loss)
        return loss

    def _train_batch(self, backend, x, t, w, ws, batch_weight):
        self._passes += 1
        # the seed is for dropout masks only (mix64 is pure Python: a few us a step)
        seed = mix64(self.seed, self._passes) if self._has_dropout else 0
        mode = Pass(training=True, update_stats=True, seed=seed)
        fold = self._fold_l2
        loss = self._loss_and_grads(backend, x, t, w, ws, mode, batch_weight, fold)
        if fold:
            self.optimizer.step(backend, self._params, self._grads, x.shape[0],
                                l2=self._penalties[0][2] * self._penalty_scale(batch_weight),
                                l2_size=self.n_weights)
        else:
            self.optimizer.step(backend, self._params, self._grads, x.shape[0])
        return loss

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
    def train_step(self, X_batch, y_batch, sample_weight=None):
        """One optimizer step on one batch; returns its loss (penalties included).
        Raises TrainingDivergedError, without updating, when the loss is not finite."""
        x, t, w = self._check_data(X_batch, y_batch, sample_weight, "X_batch")
        self._prepare_training()
        ws = self._workspace(x.shape)
        x = training.take_rows(x, 0, x.shape[0], None, ws[1], "X")
        try:
            return self._train_batch(self.backend, x, t, w, ws, x.shape[0] if w is None else float(w.sum()))
        except NonFiniteLoss as exc:
            raise TrainingDivergedError(f"the loss became {exc.loss} at optimizer step "
                                        f"{self.optimizer.t + 1}; the parameters were not updated",
                                        step=self.optimizer.t + 1) from None

    def loss_and_gradient(self, X, y, sample_weight=None, out=None):
        """(loss, gradient) of the training objective on all of (X, y) at the current
        parameters: loss includes the penalties; the gradient has the layout of
        get_flat_params(). Training-mode forward (dropout on, batch statistics), but
        deterministic: dropout masks and batch-norm running statistics do not change
        between calls, as an optimizer such as SciPy's L-BFGS needs. The gradient is
        a new array unless `out` (a (n_params,) array) is given."""
        return self._objective(self._check_data(X, y, sample_weight), out)

    def _objective(self, data, out=None):
        """loss_and_gradient on data prepared by _check_data."""
        x, t, w = data
        if self._params.size == 0:
            raise ValueError("the model has no trainable parameters")
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

    def fit(self, X, y, epochs=1, batch_size=32, validation_split=0.0, validation_data=None,
            shuffle=True, seed=None, callbacks=None, verbose=1, sample_weight=None):
        """Train; returns the History (also kept as model.history).

        batch_size: samples per step (None or >= n: full batch; 1: per-sample SGD).
        validation_split: fraction of the samples, taken from the end before
        shuffling, held out for val_loss (and val_accuracy); or validation_data =
        (X_val, y_val) or (X_val, y_val, sample_weight_val). seed: shuffling order
        (default: follows from the model seed and the number of fit calls).
        verbose: 0 silent, 1 a progress bar (tqdm if installed, else a line per
        epoch), 2 a line per epoch.

        If the loss becomes NaN or infinite, fit raises TrainingDivergedError naming
        the epoch and step. The failing step's update is never applied; if an
        earlier update already made a parameter non-finite, the parameters are
        reset to those at the start of the epoch (a copy taken once per epoch,
        after checking they are finite), and the optimizer state is reset."""
        epochs = _check_int_option(epochs, "epochs", 1)
        if batch_size is not None:
            batch_size = _check_int_option(batch_size, "batch_size", 1)
        verbose = chk.choice(verbose, "verbose", (0, 1, 2))
        if callbacks is None:
            callbacks = []
        if isinstance(callbacks, Callback) or not all(isinstance(c, Callback) for c in callbacks):
            raise TypeError("callbacks must be a list of fastnn.nn.callbacks.Callback instances")
        X, t, w = self._check_data(X, y, sample_weight)
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
            val = (X[n_train:], t[n_train:], None if w is None else w[n_train:])
            X, t, w = X[:n_train], t[:n_train], None if w is None else w[:n_train]
            for part, weights in (("training", w), ("validation", val[2])):
                if weights is not None and weights.sum() <= 0:
                    raise ValueError(f"the sample weights of the {part} part of validation_split sum to 0")
        n = X.shape[0]
        bs = n if batch_size is None else min(batch_size, n)
        self._prepare_training()
        if seed is None:
            self._fits += 1
            seed = (self.seed, self._fits)
        rng = np.random.default_rng(seed)
        self.history = history = History()
        history.model = self
        self.stop_training = False
        logs = {"validation": val is not None}
        for callback in callbacks:
            callback.on_train_begin(self, logs)
        backend = self.backend
        if not all_finite(self._params):
            raise ValueError("the model's parameters contain NaN or infinity")
        # parameters at the start of the epoch, known to be finite (checked at the
        # end of each epoch): what a divergence falls back to
        snapshot = np.empty_like(self._params)
        bar = training.progress(epochs, verbose)
        close = None if bar is None else bar.close
        order = np.arange(n) if shuffle else None
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            np.copyto(snapshot, self._params)
            if shuffle:
                rng.shuffle(order)
            result = training.train_epoch(self, backend, X, t, w, order, bs, snapshot, epoch, close)
            logs = {"loss": result.loss}
            if self._reports_accuracy:
                logs["accuracy"] = result.correct / result.seen
            if val is not None:
                for key, value in self._evaluate(*val).items():
                    logs["val_" + key] = value
            logs["lr"] = self.optimizer.schedule.lr_at(self.optimizer.t)  # the epoch's last step
            history.append(logs)
            stop = self.optimizer.end_epoch(logs["loss"])
            for callback in callbacks:
                callback.on_epoch_end(self, epoch, logs)
            training.report(bar, verbose, epoch, epochs, logs, time.perf_counter() - start)
            if stop or self.stop_training:
                break
        if bar is not None:
            bar.close()
        self._release_inputs()
        for callback in callbacks:
            callback.on_train_end(self, logs)
        return history

    def _release_inputs(self):
        """Drop the workspaces' references to caller arrays (layer inputs, batch-norm
        caches), so that data passed to fit or predict can be freed."""
        for layer_ws, _ in self._workspaces.values():
            for ws in layer_ws:
                ws.pop("x", None)
                ws.pop("cache", None)

    # -------------------------------------------------------------- inference API
    def _outputs(self, X, batch_size, link):
        """Raw last-layer outputs (link=False) or predictions (link=True), (N, *output_shape)."""
        X = self._check_X(X)
        bs = PREDICT_BATCH if batch_size is None else _check_int_option(batch_size, "batch_size", 1)
        backend = self.backend
        apply_link = link and self.loss is not None and self.loss.link != "identity"
        result = np.empty((X.shape[0],) + self.output_shape, self.dtype)
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

    def predict(self, X, batch_size=None):
        """Predictions, (N, *output_shape): class probabilities for the cross-entropy
        losses (softmax / sigmoid applied), the loss's inverse link for the others
        (exp for Poisson), raw outputs without a loss."""
        return self._outputs(X, batch_size, link=True)

    def predict_raw(self, X, batch_size=None):
        """The last layer's outputs without the loss's link (logits), (N, *output_shape)."""
        return self._outputs(X, batch_size, link=False)

    def predict_proba(self, X, batch_size=None):
        """Class probabilities (N, C) of a model trained with a cross-entropy loss."""
        if self.loss is None or self.loss.link not in ("softmax", "logistic"):
            raise TypeError("predict_proba needs a cross-entropy loss (softmax or sigmoid outputs)")
        return self.predict(X, batch_size)

    def predict_classes(self, X, batch_size=None):
        """Class labels: argmax for several outputs, output > 0 (probability > 0.5)
        as 0/1 for one output, per output for multilabel models."""
        if self.loss is None or not self.loss.classifier:
            raise TypeError("predict_classes needs a classification loss")
        raw = self.predict_raw(X, batch_size)
        if self.loss.link == "logistic" or raw.shape[1] == 1:
            labels = (raw > 0).astype(np.int64)
            return labels[:, 0] if raw.shape[1] == 1 else labels
        return raw.argmax(axis=1)

    def evaluate(self, X, y, sample_weight=None, batch_size=None):
        """{'loss': ..., 'accuracy': ...} on (X, y) in inference mode; the loss
        includes the penalties, as in training."""
        return self._evaluate(*self._check_data(X, y, sample_weight), batch_size=batch_size)

    def _evaluate(self, X, t, w, batch_size=None):
        bs = PREDICT_BATCH if batch_size is None else _check_int_option(batch_size, "batch_size", 1)
        backend = self.backend
        mode = Pass(training=False)
        total = weight_total = correct = 0.0
        for lo in range(0, X.shape[0], bs):
            hi = min(lo + bs, X.shape[0])
            ws = self._workspace((hi - lo,) + X.shape[1:])
            out = self._forward(backend, training.take_rows(X, lo, hi, None, ws[1], "X"), ws, mode)
            grad = ws[1].get("dout")
            if grad is None:
                grad = ws[1]["dout"] = np.empty_like(out)
            wb = None if w is None else w[lo:hi]
            bw = (hi - lo) if wb is None else float(wb.sum())
            if self._reports_accuracy:
                correct += self.loss.correct(out, t[lo:hi])
            if bw == 0:
                continue
            total += self.loss.checked_call(backend, out, t[lo:hi], wb, grad) * bw
            weight_total += bw
        self._release_inputs()
        self._penalties = self._penalty_terms()
        everything = X.shape[0] if w is None else float(w.sum())
        logs = {"loss": total / weight_total + self._penalty(backend, self._penalty_scale(everything))}
        if self._reports_accuracy:
            logs["accuracy"] = correct / X.shape[0]
        return logs

    # ------------------------------------------------------------------ summary
    def summary(self):
        """A table of the layers with their output shapes and parameter counts."""
        rows = [("layer", "output shape", "params")]
        for layer in self.layers:
            shape = ("(None, " + ", ".join(map(str, layer.output_shape)) + ")") if self.built else "?"
            count = sum(math.prod(s) for _, s, _ in layer.param_specs()) if self.built else "?"
            rows.append((repr(layer), shape, str(count)))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
        lines.insert(1, "-" * len(lines[0]))
        total = self._params.size if self.built else "?"
        inputs = f"input shape (None, {', '.join(map(str, self.input_shape))}); " if self.built else ""
        lines.append(f"{inputs}total parameters: {total} ({self.dtype.name})")
        return "\n".join(lines)

    def __repr__(self):
        return f"Sequential([{', '.join(map(repr, self.layers))}], loss={self.loss!r})"

    # ------------------------------------------------------------ save and load
    def describe(self):
        """The model's description as a JSON-able dict (everything but the arrays)."""
        return saving.describe(self)

    def save(self, path):
        """Write the model to `path` (exactly that name, or an open binary file) as
        a .npz archive: the flat parameter and state buffers, the optimizer's state buffers and a JSON
        description stored as a string array. No pickle."""
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


def load(path, backend=None):
    """Read a model written by Sequential.save (see fastnn.nn.saving). A file that
    is not such a model (foreign, corrupted, truncated, invalid values) raises
    ValueError."""
    return saving.load(path, backend)


__all__ = ["Sequential", "TrainingDivergedError", "load"]
