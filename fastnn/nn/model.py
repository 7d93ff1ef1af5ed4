"""`Sequential`: a stack of layers over flat buffers, its training loop, and
portable saving.

Models are data. All trained parameters live in one contiguous buffer and their
gradients in another of the same layout: first every Dense weight matrix W (the
"weights block", where L1/L2 penalties apply), then biases and batch-norm scales
and shifts. Each layer's tensors are views into these buffers, so the optimizer
step is one kernel call over the whole buffer, a global L2 penalty is one kernel
call over the weights block, and saving is writing two arrays and a JSON
description. Running statistics live in a third buffer, `state`.

Workspaces (layer outputs, pre-activations, dz, dx, the loss gradient, gathered
batches) are kept per batch size, so a training step allocates no arrays after
the first step at that batch size.
"""

import collections
import json
import math
import time
import zipfile
import zlib

import numpy as np

from .. import backends
from ..backends import _checks as chk
from ..backends.reference import NumpyBackend
from .callbacks import Callback, History
from .layers import Dense, Layer, Pass, layer_from_config, mix64
from .losses import get_loss, loss_from_config, sample_weights
from .optimizers import get_optimizer, optimizer_from_config

FORMAT = "fastnn.nn.Sequential"
FORMAT_VERSION = 1
PREDICT_BATCH = 2048  # rows per chunk in predict/evaluate: large enough for efficient GEMMs
MAX_WORKSPACES = 6  # batch sizes whose buffers are kept (training uses two: full and last batch)


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite. `epoch` and `step` (1-based) say
    where; the model keeps finite parameters (see Sequential.fit)."""

    def __init__(self, message, epoch=None, step=None):
        super().__init__(message)
        self.epoch, self.step = epoch, step


class _NonFiniteLoss(Exception):
    def __init__(self, loss):
        self.loss = loss


def _all_finite(a):
    """Whether every element of a float array is finite. A finite sum proves it
    (NaN and inf propagate through a sum) without allocating an (N, d) mask;
    only when the sum is not finite (maybe mere overflow) is each element checked."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(a.sum()) or np.isfinite(a).all())


def _check_int_option(value, name, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


class Sequential:
    """A feed-forward network: layers applied in order.

    layers: Dense, Activation, BatchNorm, Dropout instances. loss: a loss name or
    Loss (needed to train; also settable with compile). optimizer: a name or an
    Optimizer ('adam' by default). l2: L2 penalty on every Dense weight matrix, added
    to each layer's own l2. penalty_per_sample: divide the penalties by the batch
    size (scikit-learn's alpha convention). seed: weights, shuffling and dropout
    masks follow from it (None draws one). backend: a backend name or object, or
    None to use the current backend (fastnn.set_backend / use_backend) at each call.
    dtype: float32 or float64. input_dim: build now for this input width.

    >>> model = Sequential([Dense(64, "relu"), Dense(10)], loss="sparse_categorical_crossentropy")
    >>> history = model.fit(X, y, epochs=20, batch_size=64, validation_split=0.1)
    >>> proba = model.predict(X_test)
    """

    def __init__(self, layers=(), *, loss=None, optimizer="adam", l2=0.0, penalty_per_sample=False,
                 metrics=None, seed=None, backend=None, dtype=np.float32, input_dim=None):
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
        if input_dim is None and self.layers and isinstance(self.layers[0], Dense):
            input_dim = self.layers[0].input_dim
        if input_dim is not None:
            self.build(input_dim)

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
            metrics = list(metrics)
            for m in metrics:
                chk.choice(m, "metrics entry", ("accuracy", "acc"))
            self.metrics = metrics
        if self.metrics and self.loss is not None and not self.loss.classifier:
            raise ValueError(f"accuracy is not defined for the {self.loss.name} loss")
        if l2 is not None:
            self.l2 = chk.real(l2, "l2", low=0)
        if penalty_per_sample is not None:
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
        it fused with the loss, so that layer runs with identity."""
        link = self.loss.link if self.loss is not None else None
        for layer in self.layers:
            if hasattr(layer, "run_activation"):
                layer.run_activation = layer.activation
        if self.layers and link not in (None, "identity"):
            last = self.layers[-1]
            if getattr(last, "activation", None) == link:
                last.run_activation = "identity"

    def build(self, input_dim):
        """Fix the input width, lay out the flat buffers and initialise the
        parameters from the model's seed."""
        input_dim = _check_int_option(input_dim, "input_dim", 1)
        if self.built:
            if input_dim != self.input_dim:
                raise ValueError(f"the model is built for {self.input_dim} features, got {input_dim}")
            return self
        if not self.layers:
            raise ValueError("the model has no layers")
        self._link_layers()
        width = input_dim
        param_specs, state_specs = [], []
        for i, layer in enumerate(self.layers):
            layer.index = i
            width = layer.build(width, self.dtype)
            param_specs += [(layer, name, shape, weight) for name, shape, weight in layer.param_specs()]
            state_specs += [(layer, name, shape, init) for name, shape, init in layer.state_specs()]
        # weights block first (see module docstring)
        param_specs.sort(key=lambda spec: not spec[3])
        n_params = sum(math.prod(shape) for _, _, shape, _ in param_specs)
        self._params = np.zeros(n_params, self.dtype)
        self._grads = np.zeros(n_params, self.dtype)
        self._state = np.zeros(sum(math.prod(s) for _, _, s, _ in state_specs), self.dtype)
        views = {id(layer): ({}, {}, {}) for layer in self.layers}
        offset = 0
        self.n_weights = 0
        for layer, name, shape, weight in param_specs:
            size = math.prod(shape)
            views[id(layer)][0][name] = self._params[offset:offset + size].reshape(shape)
            views[id(layer)][1][name] = self._grads[offset:offset + size].reshape(shape)
            offset += size
            self.n_weights += size if weight else 0
        offset = 0
        for layer, name, shape, init in state_specs:
            size = math.prod(shape)
            view = views[id(layer)][2][name] = self._state[offset:offset + size].reshape(shape)
            view[...] = init
            offset += size
        for layer in self.layers:
            layer.bind(*views[id(layer)])
        rng = np.random.default_rng(self.seed)
        backend = self.backend
        for layer in self.layers:
            layer.init_params(backend, rng)
        self.input_dim, self.output_dim = input_dim, width
        self._first_trained = next((i for i, layer in enumerate(self.layers) if layer.param_specs()),
                                   len(self.layers))
        self._workspaces = collections.OrderedDict()
        self.built = True
        return self

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
            raise ValueError("the model is not built yet: call fit, predict or build(input_dim) first")

    # ------------------------------------------------------------ input checks
    def _check_X(self, X, name="X"):
        """X as a C-contiguous (N, input_dim) array of the model's dtype; builds the
        model on first use."""
        if not isinstance(X, np.ndarray):
            X = np.asarray(X)
        if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
            raise TypeError(f"{name} must hold numbers, got dtype {X.dtype}")
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}"
                             + ("; use X.reshape(-1, 1) for one feature" if X.ndim == 1 else ""))
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty (0 samples)")
        if X.shape[1] == 0:
            raise ValueError(f"{name} has 0 features")
        if self.built and X.shape[1] != self.input_dim:
            raise ValueError(f"{name} has {X.shape[1]} features, but the model was built for "
                             f"{self.input_dim}")
        with np.errstate(over="ignore"):
            X = np.ascontiguousarray(X, dtype=self.dtype)
        if not _all_finite(X):
            raise ValueError(f"{name} contains NaN or infinity"
                             + (" (or values too large for float32)" if self.dtype == np.float32 else ""))
        if not self.built:
            self.build(X.shape[1])
        return X

    def _check_data(self, X, y, sample_weight, name="X"):
        if self.loss is None:
            raise ValueError("the model has no loss: pass loss=... to Sequential or compile")
        X = self._check_X(X, name)
        n = X.shape[0]
        if np.ndim(y) == 0 or len(y) != n:
            raise ValueError(f"{name} has {n} samples but its targets have "
                             f"{'none' if np.ndim(y) == 0 else len(y)}")
        t = self.loss.targets(y, n, self.output_dim, self.dtype)
        w = sample_weights(sample_weight, n, self.dtype)
        return X, t, w

    def _prepare_training(self, batch_sizes):
        if self._params.size == 0:
            raise ValueError("the model has no trainable parameters")
        if 1 in batch_sizes and any(layer.kind == "BatchNorm" for layer in self.layers):
            raise ValueError("batch norm needs at least 2 samples per batch in training, but a batch "
                             "of 1 sample would occur; change batch_size or the number of samples")
        if not self.optimizer.is_bound_to(self._params):
            self.optimizer.bind(self._params)
        self._penalties = self._penalty_terms()

    # ----------------------------------------------------------------- workspace
    def _workspace(self, n):
        """Buffers for batch size n: one dict per layer plus the model's own."""
        ws = self._workspaces.get(n)
        if ws is None:
            ws = self._workspaces[n] = ([{} for _ in self.layers], {})
            if len(self._workspaces) > MAX_WORKSPACES:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(n)
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

    def _penalty(self, backend, n):
        """Adds the penalties' gradients to the gradient buffer and returns their
        value. n: samples in the batch (for penalty_per_sample). Outside a step
        (evaluate) the gradient buffer serves as scratch: nothing reads it between
        steps."""
        scale = 1.0 / n if self.penalty_per_sample else 1.0
        value = 0.0
        for param, grad, l2, l1 in self._penalties:  # views of the flat buffers: no checks needed
            value += float(backend._weight_penalty(param, grad, l2 * scale, l1 * scale))
        return value

    def _loss_and_grads(self, backend, x, t, w, ws, mode):
        """Forward, loss, backward and penalties on one batch; gradients end up in
        the gradient buffer. Returns the loss (penalties included)."""
        out = ws[1]["out"] = self._forward(backend, x, ws, mode)
        grad = ws[1].get("dout")
        if grad is None:
            grad = ws[1]["dout"] = np.empty_like(out)
        loss = self.loss.checked_call(backend, out, t, w, grad)  # t, w: checked by _check_data
        if not math.isfinite(loss):
            raise _NonFiniteLoss(loss)
        self._backward(backend, grad, ws)
        loss += self._penalty(backend, x.shape[0])
        if not math.isfinite(loss):
            raise _NonFiniteLoss(loss)
        return loss

    def _train_batch(self, backend, x, t, w, ws):
        self._passes += 1
        mode = Pass(training=True, update_stats=True, seed=mix64(self.seed, self._passes))
        loss = self._loss_and_grads(backend, x, t, w, ws, mode)
        self.optimizer.step(backend, self._params, self._grads, x.shape[0])
        return loss

    # -------------------------------------------------------------- training API
    def train_step(self, X_batch, y_batch, sample_weight=None):
        """One optimizer step on one batch; returns its loss (penalties included).
        Raises TrainingDivergedError, without updating, when the loss is not finite."""
        x, t, w = self._check_data(X_batch, y_batch, sample_weight, "X_batch")
        self._prepare_training({x.shape[0]})
        try:
            return self._train_batch(self.backend, x, t, w, self._workspace(x.shape[0]))
        except _NonFiniteLoss as exc:
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
        x, t, w = self._check_data(X, y, sample_weight)
        if self._params.size == 0:
            raise ValueError("the model has no trainable parameters")
        self._penalties = self._penalty_terms()
        mode = Pass(training=True, update_stats=False, seed=mix64(self.seed, 0))
        try:
            loss = self._loss_and_grads(self.backend, x, t, w, self._workspace(x.shape[0]), mode)
        except _NonFiniteLoss as exc:
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
        self._prepare_training({bs, n % bs or bs})
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
        if not _all_finite(self._params):
            raise ValueError("the model's parameters contain NaN or infinity")
        # parameters at the start of the epoch, known to be finite (checked at the
        # end of each epoch): what a divergence falls back to
        snapshot = np.empty_like(self._params)
        bar = _progress(epochs, verbose)
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            np.copyto(snapshot, self._params)
            order = rng.permutation(n) if shuffle else None
            total = weight_total = correct = seen = 0.0
            for step, lo in enumerate(range(0, n, bs), start=1):
                hi = min(lo + bs, n)
                ws = self._workspace(hi - lo)
                xb, tb, wb = _batch(X, t, w, order, lo, hi, ws[1])
                bw = (hi - lo) if wb is None else float(wb.sum())
                if bw == 0:  # every sample weighs 0: nothing to learn from this batch
                    continue
                try:
                    loss = self._train_batch(backend, xb, tb, wb, ws)
                except _NonFiniteLoss as exc:
                    self._diverged(snapshot, epoch, step, exc.loss, bar)
                total += loss * bw
                weight_total += bw
                seen += hi - lo
                if self._reports_accuracy:
                    correct += self.loss.correct(ws[1]["out"], tb)
            if not _all_finite(self._params):  # the last step's update overflowed
                self._diverged(snapshot, epoch, step, math.nan, bar)
            logs = {"loss": total / weight_total}
            if self._reports_accuracy:
                logs["accuracy"] = correct / seen
            if val is not None:
                for key, value in self._evaluate(*val).items():
                    logs["val_" + key] = value
            logs["lr"] = self.optimizer.schedule.lr_at(self.optimizer.t)  # the epoch's last step
            history.append(logs)
            stop = self.optimizer.end_epoch(logs["loss"])
            for callback in callbacks:
                callback.on_epoch_end(self, epoch, logs)
            _report(bar, verbose, epoch, epochs, logs, time.perf_counter() - start)
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

    def _diverged(self, snapshot, epoch, step, loss, bar):
        if bar is not None:
            bar.close()
        restored = not np.isfinite(self._params).all()
        if restored:
            np.copyto(self._params, snapshot)
        if restored or not all(np.isfinite(s).all() for s in self.optimizer.state.values()):
            self.optimizer.bind(self._params)
        where = f"epoch {epoch}, step {step}"
        kept = ("the parameters were reset to those at the start of the epoch" if restored
                else "the parameters are those before the failing step")
        raise TrainingDivergedError(f"training diverged: the loss became {loss} at {where}; {kept}. "
                                    "Try a smaller learning rate.", epoch=epoch, step=step)

    # -------------------------------------------------------------- inference API
    def _outputs(self, X, batch_size, link):
        """Raw last-layer outputs (link=False) or predictions (link=True), (N, output_dim)."""
        X = self._check_X(X)
        bs = PREDICT_BATCH if batch_size is None else _check_int_option(batch_size, "batch_size", 1)
        backend = self.backend
        apply_link = link and self.loss is not None and self.loss.link != "identity"
        result = np.empty((X.shape[0], self.output_dim), self.dtype)
        mode = Pass(training=False)
        for lo in range(0, X.shape[0], bs):
            hi = min(lo + bs, X.shape[0])
            out = self._forward(backend, X[lo:hi], self._workspace(hi - lo), mode)
            if apply_link:
                backend.activation_forward(out, self.loss.link, out=result[lo:hi])
            else:
                result[lo:hi] = out
        self._release_inputs()
        return result

    def predict(self, X, batch_size=None):
        """Predictions, (N, output_dim): class probabilities for the cross-entropy
        losses (softmax / sigmoid applied), raw outputs for the others."""
        return self._outputs(X, batch_size, link=True)

    def predict_raw(self, X, batch_size=None):
        """The last layer's outputs without the loss's link (logits), (N, output_dim)."""
        return self._outputs(X, batch_size, link=False)

    def predict_proba(self, X, batch_size=None):
        """Class probabilities (N, C) of a model trained with a cross-entropy loss."""
        if self.loss is None or self.loss.link == "identity":
            raise TypeError("predict_proba needs a cross-entropy loss (softmax or sigmoid outputs)")
        return self.predict(X, batch_size)

    def predict_classes(self, X, batch_size=None):
        """Class labels: argmax for several outputs, output > 0 (probability > 0.5)
        as 0/1 for one output, per output for multilabel models."""
        if self.loss is None or not self.loss.classifier:
            raise TypeError("predict_classes needs a classification loss")
        raw = self.predict_raw(X, batch_size)
        if self.loss.name == "binary_crossentropy" or raw.shape[1] == 1:
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
            ws = self._workspace(hi - lo)
            out = self._forward(backend, X[lo:hi], ws, mode)
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
        logs = {"loss": total / weight_total + self._penalty(backend, X.shape[0])}
        if self._reports_accuracy:
            logs["accuracy"] = correct / X.shape[0]
        return logs

    # ------------------------------------------------------------------ summary
    def summary(self):
        """A table of the layers, their output widths and parameter counts."""
        lines = [f"{'layer':<40}{'outputs':>10}{'params':>12}"]
        for layer in self.layers:
            width = getattr(layer, "n_out", "?")
            count = sum(math.prod(s) for _, s, _ in layer.param_specs()) if self.built else "?"
            lines.append(f"{layer!r:<40}{width!s:>10}{count!s:>12}")
        lines.append(f"total parameters: {self._params.size if self.built else '?'} ({self.dtype.name})")
        return "\n".join(lines)

    def __repr__(self):
        return f"Sequential([{', '.join(map(repr, self.layers))}], loss={self.loss!r})"

    # ------------------------------------------------------------ save and load
    def describe(self):
        """The model's description as a JSON-able dict (everything but the arrays)."""
        self._require_built()
        optimizer_counters = self.optimizer.get_state()[0] if self.optimizer.is_bound_to(self._params) \
            else None
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "dtype": self.dtype.name,
            "input_dim": self.input_dim, "seed": self.seed, "passes": self._passes,
            "layers": [layer.config() for layer in self.layers],
            "loss": None if self.loss is None else self.loss.config(),
            "optimizer": self.optimizer.config(), "optimizer_counters": optimizer_counters,
            "l2": self.l2, "penalty_per_sample": self.penalty_per_sample, "metrics": self.metrics,
        }

    def save(self, path):
        """Write the model to `path` (exactly that name) as a .npz archive: the flat
        parameter and state buffers, the optimizer's state buffers and a JSON
        description stored as a string array. No pickle."""
        description = self.describe()
        arrays = {"description": np.array(json.dumps(description)), "params": self._params,
                  "state": self._state}
        if description["optimizer_counters"] is not None:
            for name, buf in self.optimizer.state.items():
                arrays["optimizer_" + name] = buf
        with open(path, "wb") as f:
            np.savez(f, **arrays)


def _batch(X, t, w, order, lo, hi, buffers):
    """Rows lo:hi of the (shuffled) data: views when not shuffled, else gathered
    into buffers allocated once per batch size."""
    if order is None:
        return X[lo:hi], t[lo:hi], None if w is None else w[lo:hi]
    idx = order[lo:hi]
    out = []
    for key, a in (("X", X), ("t", t), ("w", w)):
        if a is None:
            out.append(None)
            continue
        buf = buffers.get(key)
        if buf is None:
            buf = buffers[key] = np.empty((hi - lo,) + a.shape[1:], a.dtype)
        # mode="clip": indices are valid, and "raise" would buffer the output
        np.take(a, idx, axis=0, out=buf, mode="clip")
        out.append(buf)
    return tuple(out)


def _progress(epochs, verbose):
    if verbose != 1:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=epochs, unit="epoch", leave=True)


def _report(bar, verbose, epoch, epochs, logs, seconds):
    values = " - ".join(f"{k} {v:.4g}" for k, v in logs.items())
    if bar is not None:
        bar.set_postfix_str(values)
        bar.update(1)
    elif verbose:
        print(f"epoch {epoch}/{epochs} - {values} - {seconds:.2f} s", flush=True)


def load(path, backend=None):
    """Read a model written by Sequential.save. A file that is not such a model
    (foreign, corrupted, truncated) raises ValueError."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not an .npz archive")
        with data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path} is not a readable fastnn model file: {exc}") from exc
    try:
        return _from_arrays(arrays, backend)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a valid fastnn model file: {exc}") from exc


def _from_arrays(arrays, backend):
    for key in ("description", "params", "state"):
        if key not in arrays:
            raise ValueError(f"the archive has no {key!r} array")
    text = arrays["description"]
    if text.dtype.kind != "U" or text.ndim != 0:
        raise ValueError("the description is not a string")
    d = json.loads(str(text))
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"the description does not describe a {FORMAT}")
    if d.get("version") != FORMAT_VERSION:
        raise ValueError(f"format version {d.get('version')!r} is not supported (expected {FORMAT_VERSION})")
    model = Sequential([layer_from_config(c) for c in d["layers"]], dtype=d["dtype"], seed=d["seed"],
                       backend=backend, l2=d["l2"], penalty_per_sample=d["penalty_per_sample"],
                       metrics=d["metrics"], optimizer=optimizer_from_config(d["optimizer"]),
                       loss=None if d["loss"] is None else loss_from_config(d["loss"]))
    model.build(d["input_dim"])
    for key, target in (("params", model._params), ("state", model._state)):
        a = arrays[key]
        if a.shape != target.shape or a.dtype != target.dtype:
            raise ValueError(f"{key} has shape {a.shape} and dtype {a.dtype}; the description needs "
                             f"{target.shape} {target.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(f"{key} contains NaN or infinity")
        np.copyto(target, a)
    model._passes = int(d["passes"])
    counters = d.get("optimizer_counters")
    if counters is not None:
        opt = model.optimizer
        buffers = {}
        for name in opt.state_names:
            a = arrays.get("optimizer_" + name)
            if a is None or a.shape != model._params.shape or a.dtype != model._params.dtype:
                raise ValueError(f"optimizer state {name!r} is missing or has the wrong shape")
            buffers[name] = a
        opt.set_state(model._params, counters, buffers)
    return model
