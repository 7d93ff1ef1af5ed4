"""Drop-in replacements for scikit-learn's MLPClassifier and MLPRegressor.

`fastnn.MLPClassifier` and `fastnn.MLPRegressor` subclass scikit-learn's
estimators, so they take the same parameters with the same defaults, validate
input with the same utilities, raise the same exceptions and expose the same
fitted attributes; only the training and the forward pass are replaced: each estimator builds a
`fastnn.nn.Sequential` (public as `model_` after fit) and trains it with
fastnn's engine, in the dtype of X (float32 stays float32), over one flat
parameter buffer whose weight and bias views are `coefs_` and `intercepts_`.

With the same random_state, the initial weights, the shuffling order and the
early-stopping split are drawn from the same RandomState in the same order as
scikit-learn's, and the losses, the L2 penalty (0.5 alpha ||W||^2 divided by the
batch's sample-weight sum, biases not penalised) and the sgd/adam updates follow
scikit-learn's definitions, so a fit follows scikit-learn's up to rounding.

Parameters beyond scikit-learn's are keyword-only and off by default.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any, Dict, Literal, Optional, Sequence, Union

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as _SklearnMLPClassifier
from sklearn.neural_network import MLPRegressor as _SklearnMLPRegressor
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import _check_sample_weight, validate_data

from . import backends
from . import nn as _nn
from ._types import BackendName, DTypeLike, EstimatorInit, HiddenActivation, Solver
from .nn.training import RowGather, train_epoch

STOCHASTIC_SOLVERS = ("sgd", "adam", "rmsprop", "adagrad", "adamw")
# the activations a hidden layer takes (softplus and softmax are not offered)
HIDDEN_ACTIVATIONS = ("identity", "logistic", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu")
# init parameter -> initialiser of the kernel catalogue
INITS = {"sklearn": "sklearn", "he": "he_normal", "lecun": "lecun_normal", "glorot": "glorot_uniform"}
DTYPES = {"float32": np.float32, "float64": np.float64}


def _extra_constraints():
    return {
        "activation": [StrOptions(set(HIDDEN_ACTIVATIONS))],
        "solver": [StrOptions({"lbfgs", *STOCHASTIC_SOLVERS})],
        "backend": [None, StrOptions(set(backends.BACKENDS))],
        "dtype": [None, StrOptions(set(DTYPES)), Options(type, {np.float32, np.float64}),
                  Options(np.dtype, {np.dtype(np.float32), np.dtype(np.float64)})],
        "dropout": [Interval(Real, 0, 1, closed="left"), "array-like"],
        "batch_norm": ["boolean"],
        "init": [StrOptions(set(INITS))],
        "weight_decay": [None, Interval(Real, 0, None, closed="left")],
    }


def _weight_decay(est):
    """The decoupled weight decay of the estimator's solver: weight_decay, or with
    None 0.01 for adamw and 0 for the others (scikit-learn's sgd and adam). L-BFGS
    takes no steps to decay: an explicit decay there is an error, not ignored."""
    if est.weight_decay is None:
        return 0.01 if est.solver == "adamw" else 0.0
    if est.solver not in STOCHASTIC_SOLVERS and est.weight_decay:
        raise ValueError(f"weight_decay={est.weight_decay!r} needs a stochastic solver "
                         f"{STOCHASTIC_SOLVERS}; solver={est.solver!r} takes no steps to decay (use alpha, "
                         "the L2 penalty, with lbfgs)")
    return float(est.weight_decay)


def _optimizer(est):
    """The fastnn.nn optimizer of a stochastic solver. As in scikit-learn, adam
    ignores learning_rate; the other solvers follow it (see _StoppingRules)."""
    lr = est.learning_rate_init
    # decoupled decay only when there is some, so that without it the step is
    # scikit-learn's (adam folds alpha's L2 gradient into its step)
    wd = _weight_decay(est)
    decay = dict(weight_decay=wd, decoupled_weight_decay=True) if wd else {}
    if est.solver == "sgd":
        momentum = float(est.momentum)
        return _nn.SGD(lr, momentum=momentum, nesterov=bool(est.nesterovs_momentum and momentum),
                       lr_in_velocity=True, **decay)
    if est.solver == "adam":
        return _nn.Adam(lr, beta1=est.beta_1, beta2=est.beta_2, eps=est.epsilon, sklearn_eps=True, **decay)
    if est.solver == "adamw":
        return _nn.AdamW(lr, beta1=est.beta_1, beta2=est.beta_2, eps=est.epsilon, weight_decay=wd,
                         sklearn_eps=True)
    if est.solver == "rmsprop":
        return _nn.RMSprop(lr, alpha=est.beta_2, eps=est.epsilon, **decay)
    if est.solver == "adagrad":
        return _nn.Adagrad(lr, eps=est.epsilon, **decay)
    return _nn.SGD(lr)  # lbfgs: never steps


# output activation -> scikit-learn's loss of it, as a fastnn.nn Loss
LOSSES = {"softmax": _nn.LogLoss, "logistic": _nn.BinaryLogLoss, "identity": _nn.SquaredLoss,
          "exp": _nn.PoissonLoss}


class _FastMLP:
    """Training and forward pass shared by both estimators (placed before
    scikit-learn's class in the bases, so these methods replace its own). The
    network is a fastnn.nn.Sequential, `model_`; this class keeps scikit-learn's
    protocol: parameter validation, the RandomState's draws in scikit-learn's
    order, the early-stopping split, the learning-rate rules and stopping tests."""

    # ------------------------------------------------------------- helpers
    def _backend(self):
        return backends.get_backend(self.backend)

    def _check_solver(self):
        if self.solver not in STOCHASTIC_SOLVERS:
            raise AttributeError(f"partial_fit needs a stochastic solver {STOCHASTIC_SOLVERS}; "
                                 f"solver={self.solver!r} is not one")
        return True

    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if np.any(np.array(sizes) <= 0):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, (Integral, np.integer)):
                raise TypeError(f"hidden_layer_sizes must hold integers, got {s!r}")
        return [int(s) for s in sizes]

    def _dropout_rates(self, n_hidden):
        rates = self.dropout
        if np.ndim(rates) == 0:
            return [float(rates)] * n_hidden
        rates = [float(r) for r in np.asarray(rates, dtype=float).ravel()]
        if len(rates) != n_hidden:
            raise ValueError(f"dropout must be one rate or one per hidden layer ({n_hidden}), "
                             f"got {len(rates)} rates")
        if any(not 0 <= r < 1 for r in rates):
            raise ValueError(f"dropout rates must be in [0, 1), got {rates}")
        return rates

    def _work_dtype(self, X, first_pass):
        if not first_pass:
            return self.coefs_[0].dtype
        if self.dtype is not None:
            return np.dtype(DTYPES.get(self.dtype, self.dtype) if isinstance(self.dtype, str) else self.dtype)
        return X.dtype

    def _layers(self, layer_units):
        """The network as fastnn.nn layers: per hidden layer Dense(act), or with
        batch norm Dense, BatchNorm, Activation(act) (act(BN(x @ W + b))), then
        Dropout where its rate is > 0; an identity Dense last (the loss applies the
        output activation)."""
        method, activation = INITS[self.init], self.activation

        def init(fan_in, fan_out, rng, dtype):
            # scikit-learn's factor follows the hidden activation on every layer
            return backends.get_backend("numpy").init_weights(method, fan_in, fan_out, rng=rng, dtype=dtype,
                                                              activation=activation)

        hidden = layer_units[1:-1]
        layers = []
        for units, rate in zip(hidden, self._dropout_rates(len(hidden))):
            if self.batch_norm:
                layers += [_nn.Dense(units, init=init), _nn.BatchNorm(momentum=0.1, eps=1e-5),
                           _nn.Activation(activation)]
            else:
                layers.append(_nn.Dense(units, activation, init=init))
            if rate > 0:
                layers.append(_nn.Dropout(rate))
        layers.append(_nn.Dense(layer_units[-1], init=init))
        return layers

    def _new_model(self, layer_units, dtype, rng):
        """A Sequential for these layer widths, built; its weights drawn from rng."""
        optimizer = _optimizer(self) if self.solver in STOCHASTIC_SOLVERS else "sgd"
        model = _nn.Sequential(self._layers(layer_units), loss=LOSSES[self.out_activation_](),
                               optimizer=optimizer, l2=float(self.alpha), penalty_per_sample=True, metrics=[],
                               seed=0, backend=self.backend, dtype=dtype)
        return model.build(layer_units[0], rng=rng)

    def _expose(self, model):
        """Fitted attributes as views of the model's flat buffer."""
        self.model_ = model
        dense = [layer for layer in model.layers if isinstance(layer, _nn.Dense)]
        self.coefs_ = [layer.params["W"] for layer in dense]
        self.intercepts_ = [layer.params["b"] for layer in dense]
        norms = [layer for layer in model.layers if isinstance(layer, _nn.BatchNorm)]
        if norms:
            self.bn_gamma_ = [layer.params["gamma"] for layer in norms]
            self.bn_beta_ = [layer.params["beta"] for layer in norms]
            self.bn_running_mean_ = [layer.state["running_mean"] for layer in norms]
            self.bn_running_var_ = [layer.state["running_var"] for layer in norms]
        else:
            for name in BN_ATTRIBUTES:
                if hasattr(self, name):
                    delattr(self, name)

    def _exposed_pairs(self, model):
        """[(fitted attribute name, its list, the model's views)]."""
        dense = [layer for layer in model.layers if isinstance(layer, _nn.Dense)]
        norms = [layer for layer in model.layers if isinstance(layer, _nn.BatchNorm)]
        pairs = [("coefs_", [layer.params["W"] for layer in dense]),
                 ("intercepts_", [layer.params["b"] for layer in dense])]
        if norms:
            pairs += [("bn_gamma_", [layer.params["gamma"] for layer in norms]),
                      ("bn_beta_", [layer.params["beta"] for layer in norms]),
                      ("bn_running_mean_", [layer.state["running_mean"] for layer in norms]),
                      ("bn_running_var_", [layer.state["running_var"] for layer in norms])]
        return [(name, getattr(self, name, None), views) for name, views in pairs]

    def _synced_model(self):
        """model_, after copying into it any fitted attribute that is no longer a
        view of it (the fitted attributes are the truth: a user may have replaced
        coefs_)."""
        model = self.model_
        for name, mine, views in self._exposed_pairs(model):
            if not _are_views(mine, views):
                _copy_attribute(name, mine, views)
        self._expose(model)
        return model

    def _model_for(self, layer_units, dtype):
        """The model to continue training (warm_start, partial_fit): model_ when its
        architecture is the one asked for, else a new model holding the fitted
        attributes' values (also when a user set them without a model_)."""
        shapes = [np.shape(c) for c in self.coefs_]
        if shapes != list(zip(layer_units[:-1], layer_units[1:])):
            raise ValueError(f"the network has layers {shapes}, but hidden_layer_sizes and the data ask "
                             f"for {list(zip(layer_units[:-1], layer_units[1:]))}; warm_start and "
                             "partial_fit need the same architecture")
        model = getattr(self, "model_", None)
        if model is not None:
            model = self._synced_model()
            wanted = [layer.config() for layer in self._layers(layer_units)]
            if [layer.config() for layer in model.layers] == wanted and model.dtype == dtype:
                model.compile(l2=float(self.alpha))
                model.set_backend(self.backend)
                return model
        new = self._new_model(layer_units, dtype, np.random.default_rng(0))  # weights copied below
        for name, _, views in self._exposed_pairs(new):
            values = getattr(self, name, None)
            if values is not None:  # batch-norm attributes of a model without it: the defaults
                _copy_attribute(name, values, views)
        self._expose(new)
        return new

    def _initialize(self, y, layer_units, dtype):
        """First fit: counters, output activation, the model with its initial
        weights (drawn from self._random_state in scikit-learn's order) and the
        stopping state."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        if not self._is_classifier():
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        elif self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:
            self.out_activation_ = "logistic"
        self._expose(self._new_model(layer_units, dtype, self._random_state))
        self._best_params = None
        if self.solver in STOCHASTIC_SOLVERS:
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _targets(self, y, dtype):
        """Kernel targets: int labels for softmax, (N, K) floats otherwise."""
        if self.out_activation_ == "softmax":
            return np.ascontiguousarray(np.argmax(y, axis=1), dtype=np.int64)
        if y.dtype.kind not in "biuf":  # what scikit-learn's arithmetic on such y raises
            raise TypeError(f"y must hold numbers, got dtype {y.dtype}")
        return np.ascontiguousarray(y, dtype=dtype)

    def _sample_weight(self, sample_weight, X, y, incremental):
        """Validated sample weights (scikit-learn's utility) in X's dtype."""
        if sample_weight is not None:
            sample_weight = np.ascontiguousarray(_check_sample_weight(sample_weight, X), dtype=X.dtype)
        return sample_weight

    # ------------------------------------------------------------------ fit
    def _fit(self, X, y, sample_weight=None, incremental=False):
        hidden = self._hidden_sizes()
        _weight_decay(self)  # refused with lbfgs before any work
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        dtype = np.dtype(self._work_dtype(X, first_pass))
        if sp.issparse(X):
            X = X.tocsr().astype(dtype, copy=False)
        else:
            X = np.ascontiguousarray(X, dtype=dtype)
        sample_weight = self._sample_weight(sample_weight, X, y, incremental)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        self.n_outputs_ = y.shape[1]
        layer_units = [X.shape[1]] + hidden + [self.n_outputs_]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, dtype)
            model = self.model_
        else:
            model = self._model_for(layer_units, dtype)
        # drawn only with dropout, so that without it the draws are scikit-learn's
        if any(isinstance(layer, _nn.Dropout) for layer in model.layers):
            model.seed = 1 + self._random_state.randint(2**31)
        try:
            if self.solver in STOCHASTIC_SOLVERS:
                self._fit_stochastic(model, X, y, sample_weight, incremental)
            else:
                self._fit_lbfgs(model, X, y, sample_weight)
        except _nn.TrainingDivergedError as exc:
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain "
                             f"large values and need to be preprocessed. ({exc})") from exc
        if not all(np.isfinite(p).all() for p in self.coefs_ + self.intercepts_):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain "
                             "large values and need to be preprocessed.")
        return self

    def _fit_lbfgs(self, model, X, y, sample_weight):
        # sample_weight: checked by scikit-learn's utility, which (as scikit-learn
        # does) accepts negative weights, which fastnn.nn would refuse
        data = model._check_data(X, self._targets(y, model.dtype), None)[:2] + (sample_weight,)

        def loss_and_gradient(packed):
            np.copyto(model._params, packed, casting="unsafe")
            loss, grad = model._objective(data)
            return loss, grad.astype(np.float64)

        result = scipy.optimize.minimize(
            loss_and_gradient, model._params.copy(), method="L-BFGS-B", jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        self.n_iter_ = _check_optimize_result("lbfgs", result, self.max_iter)
        self.loss_ = result.fun
        np.copyto(model._params, result.x, casting="unsafe")
        model._recompute_running_stats(data[0])
        model._workspaces.clear()

    def _fit_stochastic(self, model, X, y, sample_weight, incremental):
        if not incremental or not model.optimizer.is_bound_to(model._params):
            model.compile(optimizer=_optimizer(self))
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        X_val = y_val = sw_val = None
        if early_stopping:
            # the same call as scikit-learn's, so the same split for the same random_state
            stratify = y if self._is_classifier() and self.n_outputs_ == 1 else None
            arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            parts = train_test_split(*arrays, random_state=self._random_state,
                                     test_size=self.validation_fraction, stratify=stratify)
            X, X_val, y, y_val = parts[:4]
            if sample_weight is not None:
                sample_weight, sw_val = parts[4:]
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            if self._is_classifier():
                y_val = self._label_binarizer.inverse_transform(y_val)
            best = self._best_params
            if best is None or best[0].shape != model._params.shape or best[0].dtype != model.dtype:
                self._best_params = (model._params.copy(), model._state.copy())
        X, t, _ = model._check_data(X, self._targets(y, model.dtype), None)
        w = sample_weight  # as in _fit_lbfgs
        n_samples = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be "
                              "clipped", stacklevel=3)
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        model._prepare_training()
        self._optimizer = rules = _StoppingRules(self, model.optimizer)
        backend = model.backend
        # scikit-learn shuffles one index array in place, epoch after epoch
        sample_idx = np.arange(n_samples, dtype=int)
        snapshot = np.empty_like(model._params)
        gather = RowGather(backend)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    self._random_state.shuffle(sample_idx)
                np.copyto(snapshot, model._params)
                order = sample_idx if self.shuffle else None
                try:
                    result = train_epoch(model, backend, X, t, w, order, batch_size, snapshot,
                                         self.n_iter_ + 1, gather=gather)
                except _nn.TrainingDivergedError as exc:
                    if not early_stopping:
                        raise
                    # scikit-learn goes on with NaN weights until early stopping ends the fit
                    # and restores the best ones; the best ones are restored now
                    warnings.warn(f"{exc}; early stopping keeps the weights of the best validation "
                                  "score", ConvergenceWarning, stacklevel=3)
                    break
                self.n_iter_ += 1
                self.loss_ = result.loss_per_sample
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._update_no_improvement_count(early_stopping, X_val, y_val, sw_val)
                rules.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if early_stopping else "Training loss"
                    msg = (f"{what} did not improve more than tol={self.tol:f} for "
                           f"{self.n_iter_no_change} consecutive epochs.")
                    if rules.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                                  "the optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)
        model._release_inputs()
        if early_stopping:
            params, state = self._best_params
            np.copyto(model._params, params)
            np.copyto(model._state, state)

    def _update_no_improvement_count(self, early_stopping, X_val, y_val, sw_val):
        if early_stopping:
            score = self._score(X_val, y_val, sample_weight=sw_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                params, state = self._best_params
                np.copyto(params, self.model_._params)
                np.copyto(state, self.model_._state)
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    # -------------------------------------------------------------- predict
    def _forward_pass_fast(self, X, check_input=True):
        """Outputs after the output activation, (N, n_outputs). Their dtype is
        scikit-learn's, X's promoted with the weights' (float64 X on float32
        weights gives float64), unless the dtype parameter fixes it."""
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        model = self._synced_model()
        model.set_backend(self.backend)
        dtype = self._prediction_dtype(X.dtype)
        if dtype != model.dtype:
            model = model.astype(dtype)
        return model.predict(X)

    def _prediction_dtype(self, X_dtype):
        """The dtype of the predictions for X of dtype X_dtype (see _forward_pass_fast);
        fastnn.onnx computes its graph in it too."""
        dtype = self.model_.dtype
        if self.dtype is None:
            dtype = np.result_type(X_dtype, dtype)
            dtype = dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)
        return dtype

    def _is_classifier(self):
        return isinstance(self, _SklearnMLPClassifier)

    # pickling: the fitted attributes that are views of model_ are rebuilt from it
    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ may return __dict__ itself
        model = state.get("model_")
        if model is not None:
            for name, mine, views in self._exposed_pairs(model):
                if _are_views(mine, views):
                    state.pop(name)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        model = state.get("model_")
        if model is not None:
            views = self._exposed_pairs(model)
            for name, mine, view in views:
                if mine is None:
                    setattr(self, name, view)


BN_ATTRIBUTES = ("bn_gamma_", "bn_beta_", "bn_running_mean_", "bn_running_var_")


def _are_views(mine, views):
    """Whether a fitted attribute (a list of arrays) is exactly the model's views."""
    return mine is not None and len(mine) == len(views) and all(a is b for a, b in zip(mine, views))


def _copy_attribute(name, values, views):
    """Copy a fitted attribute's arrays into the model's views, shapes checked."""
    if values is None or len(values) != len(views) or any(np.shape(a) != b.shape
                                                          for a, b in zip(values, views)):
        raise ValueError(f"{name} does not match the network: expected arrays of shapes "
                         f"{[b.shape for b in views]}")
    for a, b in zip(values, views):
        b[...] = a


def update_solver(est):
    """Make a fitted estimator's stochastic solver follow the estimator's current
    parameters (learning_rate_init, momentum, beta_1, beta_2, epsilon,
    weight_decay) from its next step on, keeping its step count and moment
    estimates. partial_fit otherwise keeps the solver of its first call, as
    scikit-learn's does; changing a rate mid-training (population-based training)
    is set_params then update_solver. Returns est."""
    model = getattr(est, "model_", None)
    if model is None or est.solver not in STOCHASTIC_SOLVERS or \
            not model.optimizer.is_bound_to(model._params):
        return est  # nothing trained yet: the next fit builds the solver from the parameters
    counters, buffers = model.optimizer.get_state()
    # the rate comes from the parameters, the schedule's other counters from the solver
    schedule = {k: v for k, v in counters["schedule"].items() if k not in ("lr0", "lr")}
    counters = dict(counters, schedule=schedule)
    solver = _optimizer(est)
    solver.set_state(model._params, counters, buffers)
    model.compile(optimizer=solver)
    return est


class _StoppingRules:
    """scikit-learn's learning-rate rules for the stochastic solvers: 'invscaling'
    at the end of each epoch, 'adaptive' divides the rate by 5 when training
    stalls. As in scikit-learn, adam ignores learning_rate. The rate lives in the
    optimizer's schedule, so it persists across partial_fit calls."""

    def __init__(self, est, optimizer):
        self.schedule = "constant" if est.solver == "adam" else est.learning_rate
        self.learning_rate_init = float(est.learning_rate_init)
        self.power_t = est.power_t
        self.optimizer = optimizer

    @property
    def learning_rate(self):
        """The rate of the next step (scikit-learn's optimizer attribute)."""
        return self.optimizer.schedule.lr

    def iteration_ends(self, time_step):
        if self.schedule == "invscaling":
            self.optimizer.schedule.lr = self.learning_rate_init / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg, verbose):
        """True to stop; with 'adaptive', first divide the rate by 5 until it is tiny."""
        lr = self.optimizer.schedule.lr
        if self.schedule != "adaptive" or lr <= 1e-6:
            if verbose:
                print(msg + " Stopping.")
            return True
        self.optimizer.schedule.lr = lr / 5.0
        if verbose:
            print(f"{msg} Setting learning rate to {lr / 5.0:f}")
        return False


_EXTRAS_DOC = """
    The parameters up to max_fun{loss_name} are scikit-learn's {name}'s, with the same
    defaults and meaning; with the defaults of the others, a fit follows
    scikit-learn's up to rounding.

    Parameters
    ----------{loss}
    hidden_layer_sizes : int or sequence of int, default=(100,)
        The width of each hidden layer.
    activation : {{'identity', 'logistic', 'tanh', 'relu', 'leaky_relu', 'elu', 'selu', 'gelu'}}, \
default='relu'
        The hidden layers' activation; 'leaky_relu' (slope 0.01), 'elu', 'selu'
        and 'gelu' (PyTorch's definitions) are fastnn's additions.
    solver : {{'lbfgs', 'sgd', 'adam', 'rmsprop', 'adagrad', 'adamw'}}, default='adam'
        The optimiser. 'rmsprop' (squared-gradient average with decay beta_2,
        eps=epsilon), 'adagrad' (eps=epsilon) and 'adamw' (adam with decoupled
        weight decay, 0.01 unless weight_decay says otherwise; with
        weight_decay=0 it equals 'adam') are fastnn's additions: stochastic
        solvers like sgd and adam (batch_size, shuffle, early_stopping,
        partial_fit) that follow learning_rate ('invscaling', 'adaptive') as sgd
        does.
    alpha : float, default=0.0001
        The L2 penalty on the weights (added to the loss, divided by the number
        of samples).
    batch_size : int or 'auto', default='auto'
        Samples per step of the stochastic solvers; 'auto' is min(200, n_samples).
    learning_rate : {{'constant', 'invscaling', 'adaptive'}}, default='constant'
        The schedule of the step size of the solvers other than adam and lbfgs.
    learning_rate_init : float, default=0.001
        The initial step size of the stochastic solvers.
    power_t : float, default=0.5
        The exponent of 'invscaling'.
    max_iter : int, default=200
        Epochs of the stochastic solvers, iterations of lbfgs.
    shuffle : bool, default=True
        Whether the stochastic solvers shuffle the samples each epoch.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the shuffling, the validation split and the
        dropout masks.
    tol : float, default=1e-4
        The least improvement of the loss or validation score that counts.
    verbose : bool, default=False
        Print the loss of each iteration.
    warm_start : bool, default=False
        Start fit from the previous fit's weights.
    momentum : float, default=0.9
        The momentum of sgd.
    nesterovs_momentum : bool, default=True
        Whether sgd's momentum is Nesterov's.
    early_stopping : bool, default=False
        Hold out validation_fraction of the data and stop when its score stops
        improving (stochastic solvers).
    validation_fraction : float, default=0.1
        The held-out fraction of early_stopping.
    beta_1 : float, default=0.9
        The decay of adam's first-moment estimate.
    beta_2 : float, default=0.999
        The decay of adam's second-moment estimate (and rmsprop's average).
    epsilon : float, default=1e-8
        Added to the denominators of adam, rmsprop and adagrad.
    n_iter_no_change : int, default=10
        Epochs without improvement by tol before stopping (stochastic solvers).
    max_fun : int, default=15000
        The most loss evaluations of lbfgs.
    backend : None or str, default=None
        Kernel backend: None for fastnn's current one (`fastnn.get_backend()` at
        fit and predict time), or a name from `fastnn.available_backends()`
        ('numpy', 'numba', 'c'). Backends give the same results to rounding.
    dtype : None, 'float32' or 'float64', default=None
        Working precision. None follows X as scikit-learn does (float32 input trains
        float32 weights, everything else float64); 'float32' trains in float32 on
        float64 input too, which is faster. Predictions are in the dtype given
        here, or with None in X's dtype promoted with the weights' (float64 X on
        float32 weights gives float64), as scikit-learn's.
    dropout : float or array-like of float, default=0.0
        Inverted dropout after each hidden layer's activation during stochastic
        training: one rate in [0, 1) for every hidden layer, or one per hidden layer.
        Masks come from fastnn's counter-based generator, seeded from random_state,
        so they are reproducible and identical on every backend. With L-BFGS one
        fixed mask is used (a deterministic objective). Off at prediction time.
    batch_norm : bool, default=False
        Normalise each hidden layer's pre-activation over the batch
        (torch.nn.BatchNorm1d: momentum 0.1, eps 1e-5): act(BN(x @ W + b)). The
        scales and shifts are trained with the other parameters, while the hidden
        intercepts b stay at 0 (batch norm's shift replaces them); prediction uses
        the running statistics. A one-row batch uses the running statistics. After
        L-BFGS the running statistics are those of the whole training set.
    init : {{'sklearn', 'he', 'lecun', 'glorot'}}, default='sklearn'
        Initial weights: 'sklearn' is scikit-learn's (uniform with bound
        sqrt(6 / (fan_in + fan_out)), 2 instead of 6 for logistic, biases too);
        'he' is N(0, 2 / fan_in), 'lecun' N(0, 1 / fan_in), 'glorot' uniform with
        bound sqrt(6 / (fan_in + fan_out)); these three start the biases at 0.
    weight_decay : None or float, default=None
        Decoupled weight decay of every stochastic solver, on every parameter:
        before each step the parameters are scaled by 1 - lr * weight_decay (lr
        the step's learning rate), as torch.optim.AdamW does. None means 0.01
        for solver='adamw' and 0 for the others (scikit-learn's sgd and adam).
        solver='lbfgs' takes no steps: a weight_decay other than None or 0 is a
        ValueError there (alpha is the L2 penalty).{class_weight}

    Attributes
    ----------
    model_ : fastnn.nn.Sequential
        The trained model: ``coefs_`` and ``intercepts_`` are views of its
        parameter buffer.

    The other fitted attributes are scikit-learn's (``coefs_``, ``intercepts_``,
    ``loss_``, ``best_loss_``, ``loss_curve_``, ``validation_scores_``,
    ``best_validation_score_``, ``t_``, ``n_iter_``, ``n_layers_``, ``n_outputs_``,
    ``out_activation_``, ``n_features_in_``, ``feature_names_in_``{classes}). With
    batch_norm=True, also ``bn_gamma_``, ``bn_beta_``, ``bn_running_mean_``,
    ``bn_running_var_``: one array of shape (units,) per hidden layer.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import {name}
    >>> X = np.random.default_rng(0).normal(size=(100, 4))
    >>> y = {example_y}
    >>> est = {name}(hidden_layer_sizes=(16,), max_iter=5, random_state=0).fit(X, y)
    >>> est.predict(X[:3]).shape
    (3,)
"""

_LOSS_DOC = """
    loss : {'squared_error', 'poisson'}, default='squared_error'
        The loss: half the squared error, or half the Poisson deviance (of an
        exponential output)."""

_CLASS_WEIGHT_DOC = """
    class_weight : None, 'balanced' or dict, default=None
        Weights of the classes, multiplied into sample_weight: a dict
        {class label: weight}, or 'balanced' for n_samples / (n_classes *
        count of the class). Single-output targets only; partial_fit takes a
        dict but not 'balanced' (one batch does not give the class frequencies)."""


class MLPClassifier(_FastMLP, _SklearnMLPClassifier):
    _parameter_constraints = {
        **_SklearnMLPClassifier._parameter_constraints,
        **_extra_constraints(),
        "class_weight": [None, dict, StrOptions({"balanced"})],
    }

    def __init__(self, hidden_layer_sizes: Union[int, Sequence[int]] = (100,),
                 activation: HiddenActivation = "relu", *, solver: Solver = "adam", alpha: float = 0.0001,
                 batch_size: Union[int, Literal["auto"]] = "auto",
                 learning_rate: Literal["constant", "invscaling", "adaptive"] = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5, max_iter: int = 200,
                 shuffle: bool = True, random_state: Union[int, np.random.RandomState, None] = None,
                 tol: float = 1e-4, verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000,
                 backend: Optional[BackendName] = None, dtype: Optional[DTypeLike] = None,
                 dropout: float = 0.0, batch_norm: bool = False, init: EstimatorInit = "sklearn",
                 weight_decay: Optional[float] = None,
                 class_weight: Union[Dict[Any, float], Literal["balanced"], None] = None) -> None:
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver, alpha=alpha,
            batch_size=batch_size, learning_rate=learning_rate, learning_rate_init=learning_rate_init,
            power_t=power_t, max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            n_iter_no_change=n_iter_no_change, max_fun=max_fun)
        self.backend = backend
        self.dtype = dtype
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.init = init
        self.weight_decay = weight_decay
        self.class_weight = class_weight

    def _sample_weight(self, sample_weight, X, y, incremental):
        sample_weight = super()._sample_weight(sample_weight, X, y, incremental)
        if self.class_weight is None:
            return sample_weight
        if self._label_binarizer.y_type_ not in ("binary", "multiclass"):
            raise ValueError("class_weight is supported for single-output targets only, got "
                             f"{self._label_binarizer.y_type_} targets")
        if incremental and isinstance(self.class_weight, str):
            raise ValueError("class_weight='balanced' is not supported by partial_fit: pass a dict "
                             "computed from all the data")
        # indices into classes_ of each sample's label
        labels = np.argmax(y, axis=1) if y.shape[1] > 1 else y[:, 0].astype(np.int64)
        if len(self.classes_) == 1:
            labels = np.zeros(len(labels), np.int64)
        if isinstance(self.class_weight, str):
            weights = compute_class_weight("balanced", classes=np.arange(len(self.classes_)), y=labels)
        else:
            weights = compute_class_weight(self.class_weight, classes=self.classes_,
                                           y=self.classes_[labels])
        factor = weights[labels].astype(X.dtype)
        return factor if sample_weight is None else (sample_weight * factor).astype(X.dtype)


class MLPRegressor(_FastMLP, _SklearnMLPRegressor):
    _parameter_constraints = {**_SklearnMLPRegressor._parameter_constraints, **_extra_constraints()}

    def __init__(self, loss: Literal["squared_error", "poisson"] = "squared_error",
                 hidden_layer_sizes: Union[int, Sequence[int]] = (100,),
                 activation: HiddenActivation = "relu", *, solver: Solver = "adam", alpha: float = 0.0001,
                 batch_size: Union[int, Literal["auto"]] = "auto",
                 learning_rate: Literal["constant", "invscaling", "adaptive"] = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5, max_iter: int = 200,
                 shuffle: bool = True, random_state: Union[int, np.random.RandomState, None] = None,
                 tol: float = 1e-4, verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000,
                 backend: Optional[BackendName] = None, dtype: Optional[DTypeLike] = None,
                 dropout: float = 0.0, batch_norm: bool = False, init: EstimatorInit = "sklearn",
                 weight_decay: Optional[float] = None) -> None:
        super().__init__(
            loss=loss, hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter, shuffle=shuffle,
            random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            n_iter_no_change=n_iter_no_change, max_fun=max_fun)
        self.backend = backend
        self.dtype = dtype
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.init = init
        self.weight_decay = weight_decay


MLPClassifier.__doc__ = """Multi-layer perceptron classifier: scikit-learn's MLPClassifier, fastnn's kernels.

    Replace `from sklearn.neural_network import MLPClassifier` with `from fastnn import
    MLPClassifier`; nothing else changes.

    It minimises the cross-entropy of softmax outputs (multiclass) or of logistic
    outputs (binary, multilabel) plus alpha's L2 penalty, with L-BFGS or a
    stochastic solver.
""" + _EXTRAS_DOC.format(name="MLPClassifier", loss="", loss_name="", class_weight=_CLASS_WEIGHT_DOC,
                         classes=", ``classes_``", example_y="(X[:, 0] > 0).astype(int)")

MLPRegressor.__doc__ = """Multi-layer perceptron regressor: scikit-learn's MLPRegressor, fastnn's kernels.

    Replace `from sklearn.neural_network import MLPRegressor` with `from fastnn import
    MLPRegressor`; nothing else changes.

    It minimises half the squared error (identity output) or, with
    loss='poisson', half the Poisson deviance (exponential output), plus alpha's
    L2 penalty, with L-BFGS or a stochastic solver.
""" + _EXTRAS_DOC.format(name="MLPRegressor", loss=_LOSS_DOC, loss_name=" and loss", class_weight="",
                        classes="", example_y="X[:, 0] - X[:, 1]")

__all__ = ["MLPClassifier", "MLPRegressor"]
