"""Drop-in replacements for scikit-learn's MLPClassifier and MLPRegressor.

`fastnn.MLPClassifier` and `fastnn.MLPRegressor` subclass scikit-learn's
estimators, so they take the same parameters with the same defaults, validate
input with the same utilities, raise the same exceptions and expose the same
fitted attributes; only the training and the forward pass are replaced. Those run
on fastnn's kernels over one flat parameter buffer (see `_estimator_net`), in the
dtype of X (float32 stays float32), with one fused optimizer kernel call per step.

With the same random_state, the initial weights, the shuffling order and the
early-stopping split are drawn from the same RandomState in the same order as
scikit-learn's, and the losses, the L2 penalty (0.5 alpha ||W||^2 divided by the
batch's sample-weight sum, biases not penalised) and the sgd/adam updates follow
scikit-learn's definitions, so a fit follows scikit-learn's up to rounding.

Parameters beyond scikit-learn's are keyword-only and off by default.
"""

import warnings
from numbers import Integral, Real

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
from ._estimator_net import Network, dense_rows, mix_seed, output_activation, predict_raw

STOCHASTIC_SOLVERS = ("sgd", "adam", "rmsprop", "adagrad", "adamw")
ACTIVATIONS = ("identity", "logistic", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu")
# init parameter -> initialiser of the kernel catalogue
INITS = {"sklearn": "sklearn", "he": "he_normal", "lecun": "lecun_normal", "glorot": "glorot_uniform"}
DTYPES = {"float32": np.float32, "float64": np.float64}


def _extra_constraints():
    return {
        "activation": [StrOptions(set(ACTIVATIONS))],
        "solver": [StrOptions({"lbfgs", *STOCHASTIC_SOLVERS})],
        "backend": [None, StrOptions(set(backends.BACKENDS))],
        "dtype": [None, StrOptions(set(DTYPES)), Options(type, {np.float32, np.float64}),
                  Options(np.dtype, {np.dtype(np.float32), np.dtype(np.float64)})],
        "dropout": [Interval(Real, 0, 1, closed="left"), "array-like"],
        "batch_norm": ["boolean"],
        "init": [StrOptions(set(INITS))],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
    }


class _Solver:
    """A stochastic solver: a fastnn.nn optimizer bound to the flat parameter
    buffer, and scikit-learn's learning-rate rules ('invscaling' at the end of each
    epoch, 'adaptive' divides the rate by 5 when training stalls). As in
    scikit-learn, adam ignores learning_rate; the other solvers follow it."""

    def __init__(self, est, params):
        lr = est.learning_rate_init
        if est.solver == "sgd":
            momentum = float(est.momentum)
            nesterov = bool(est.nesterovs_momentum and momentum)
            self.optimizer = _nn.SGD(lr, momentum=momentum, nesterov=nesterov, lr_in_velocity=True)
        elif est.solver == "adam":
            self.optimizer = _nn.Adam(lr, beta1=est.beta_1, beta2=est.beta_2, eps=est.epsilon,
                                      sklearn_eps=True)
        elif est.solver == "adamw":
            self.optimizer = _nn.AdamW(lr, beta1=est.beta_1, beta2=est.beta_2, eps=est.epsilon,
                                       weight_decay=est.weight_decay, sklearn_eps=True)
        elif est.solver == "rmsprop":
            self.optimizer = _nn.RMSprop(lr, alpha=est.beta_2, eps=est.epsilon)
        else:  # adagrad
            self.optimizer = _nn.Adagrad(lr, eps=est.epsilon)
        self.schedule = "constant" if est.solver == "adam" else est.learning_rate
        self.learning_rate_init = float(lr)
        self.learning_rate = float(lr)
        self.power_t = est.power_t
        self.optimizer.bind(params)

    def rebind(self, params):
        """Follow the parameters into a new buffer of the same layout, keeping the
        optimizer state (after unpickling, or when coefs_ were replaced)."""
        if self.optimizer.is_bound_to(params):
            return True
        counters, state = self.optimizer.get_state()
        if any(s.shape != params.shape or s.dtype != params.dtype for s in state.values()):
            return False
        self.optimizer.set_state(params, counters, {k: v.copy() for k, v in state.items()})
        return True

    @property
    def folds_l2(self):
        """Whether the step can add the L2 penalty's gradient itself (see step)."""
        return self.optimizer.couples_l2

    def step(self, backend, params, grads, l2=0.0, n_weights=0):
        """One update; l2 > 0 adds the gradient l2 * W of the penalty on the weights
        block params[:n_weights] inside the optimizer kernel (folds_l2 only)."""
        self.optimizer.schedule.lr = self.learning_rate
        self.optimizer.step(backend, params, grads, l2=l2, l2_size=n_weights)

    def iteration_ends(self, time_step):
        if self.schedule == "invscaling":
            self.learning_rate = self.learning_rate_init / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg, verbose):
        """True to stop; with 'adaptive', first divide the rate by 5 until it is tiny."""
        if self.schedule != "adaptive" or self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(f"{msg} Setting learning rate to {self.learning_rate:f}")
        return False


def _gather(a, rows, ws, key):
    """a[rows] into the workspace's buffer `key` (allocated on first use)."""
    out = ws.get(key)
    if out is None:
        out = ws[key] = np.empty((len(rows),) + a.shape[1:], a.dtype)
    # mode="clip": the indices are valid, and "raise" would buffer the output
    return np.take(a, rows, axis=0, out=out, mode="clip")


class _FastMLP:
    """Training and forward pass shared by both estimators (placed before
    scikit-learn's class in the bases, so these methods replace its own)."""

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

    def _loss_name(self):
        if self.out_activation_ in ("softmax", "logistic"):
            return self.out_activation_
        return "poisson" if self.out_activation_ == "exp" else "squared_error"

    def _net_config(self, layer_units, dtype):
        return (list(layer_units), self.activation, self._loss_name(), np.dtype(dtype),
                self._dropout_rates(len(layer_units) - 2), bool(self.batch_norm))

    def _expose(self, net):
        """Fitted attributes as views of the network's flat buffer."""
        self._net = net
        self.coefs_ = list(net.W)
        self.intercepts_ = list(net.b)
        if net.batch_norm:
            self.bn_gamma_, self.bn_beta_ = list(net.gamma), list(net.beta)
            self.bn_running_mean_, self.bn_running_var_ = list(net.running_mean), list(net.running_var)
        else:
            for name in ("bn_gamma_", "bn_beta_", "bn_running_mean_", "bn_running_var_"):
                if hasattr(self, name):
                    delattr(self, name)

    def _is_exposed(self, net):
        pairs = [(self.coefs_, net.W), (self.intercepts_, net.b)]
        if net.batch_norm:
            pairs += [(getattr(self, name, None), theirs) for name, theirs in (
                ("bn_gamma_", net.gamma), ("bn_beta_", net.beta), ("bn_running_mean_", net.running_mean),
                ("bn_running_var_", net.running_var))]
        return all(mine is not None and len(mine) == len(theirs) and all(a is b for a, b in zip(mine, theirs))
                   for mine, theirs in pairs)

    def _sync_net(self, layer_units, dtype):
        """The network of the current parameters and fitted attributes: reused when
        the attributes are still its views, else rebuilt from them (the fitted
        attributes are the truth: after unpickling, or when a user replaced them)."""
        config = self._net_config(layer_units, dtype)
        shapes = [c.shape for c in self.coefs_]
        if shapes != list(zip(layer_units[:-1], layer_units[1:])):
            raise ValueError(f"the network has layers {shapes}, but hidden_layer_sizes and the data ask "
                             f"for {list(zip(layer_units[:-1], layer_units[1:]))}; warm_start and "
                             "partial_fit need the same architecture")
        net = getattr(self, "_net", None)
        if net is not None and self._is_exposed(net) and net._config() == config:
            return net
        net = Network(*config)
        for mine, theirs in ((net.W, self.coefs_), (net.b, self.intercepts_)):
            for a, b in zip(mine, theirs):
                a[...] = b
        if net.batch_norm and hasattr(self, "bn_gamma_"):
            for mine, name in ((net.gamma, "bn_gamma_"), (net.beta, "bn_beta_"),
                               (net.running_mean, "bn_running_mean_"), (net.running_var, "bn_running_var_")):
                for a, b in zip(mine, getattr(self, name)):
                    a[...] = b
        self._expose(net)
        return net

    def _initialize(self, y, layer_units, dtype):
        """First fit: counters, output activation, initial weights (drawn from
        self._random_state in scikit-learn's order) and the stopping state."""
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
        net = Network(*self._net_config(layer_units, dtype))
        backend = self._backend()
        for i in range(net.n_layers):
            W, b = backend.init_weights(INITS[self.init], layer_units[i], layer_units[i + 1],
                                        rng=self._random_state, dtype=dtype, activation=self.activation)
            net.W[i][...] = W
            net.b[i][...] = 0 if net.batch_norm and i < net.n_layers - 1 else b
        self._expose(net)
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
            net = self._net
        else:
            net = self._sync_net(layer_units, dtype)
        backend = self._backend()
        # drawn only with dropout, so that without it the draws are scikit-learn's
        self._dropout_seed = 1 + self._random_state.randint(2**31) if any(net.dropout) else 0
        if self.solver in STOCHASTIC_SOLVERS:
            self._fit_stochastic(net, backend, X, y, sample_weight, incremental)
        else:
            self._fit_lbfgs(net, backend, X, y, sample_weight)
        if not all(np.isfinite(p).all() for p in self.coefs_ + self.intercepts_):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain "
                             "large values and need to be preprocessed.")
        return self

    def _fit_lbfgs(self, net, backend, X, y, sample_weight):
        targets = self._targets(y, net.dtype)
        x = dense_rows(X, None, np.empty(X.shape, net.dtype)) if sp.issparse(X) else X
        net.check_data(x, targets, sample_weight)
        ws = net.workspace(x.shape[0])
        seed = mix_seed(self._dropout_seed, 0)  # one fixed dropout mask: a deterministic objective

        def loss_and_gradient(packed):
            np.copyto(net.params, packed, casting="unsafe")
            loss = net.loss_and_gradient(backend, x, targets, sample_weight, ws, self.alpha, training=True,
                                         seed=seed, update_stats=False)
            return loss, net.grads.astype(np.float64)

        result = scipy.optimize.minimize(
            loss_and_gradient, net.params.copy(), method="L-BFGS-B", jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        self.n_iter_ = _check_optimize_result("lbfgs", result, self.max_iter)
        self.loss_ = result.fun
        np.copyto(net.params, result.x, casting="unsafe")
        net.set_running_stats(backend, x)
        net.clear_workspaces()

    def _fit_stochastic(self, net, backend, X, y, sample_weight, incremental):
        if not incremental or not hasattr(self, "_optimizer") or not self._optimizer.rebind(net.params):
            self._optimizer = _Solver(self, net.params)
        solver = self._optimizer
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
            if not sp.issparse(X):
                X = np.ascontiguousarray(X)
            best = getattr(self, "_best_params", None)
            if best is None or best[0].shape != net.params.shape or best[0].dtype != net.params.dtype:
                stats = [s.copy() for s in net.running_mean + net.running_var]
                self._best_params = (net.params.copy(), stats)
        targets = self._targets(y, net.dtype)
        net.check_data(X, targets, sample_weight)
        n_samples = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be "
                              "clipped", stacklevel=3)
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        sample_idx = np.arange(n_samples, dtype=int)
        order = np.empty(n_samples, dtype=int)
        sparse = sp.issparse(X)
        # the L2 penalty's gradient is added by the optimizer kernel, which reads the
        # weights anyway, rather than by a pass of its own over weights and gradients
        fold = bool(self.alpha) and solver.folds_l2
        step = 0
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    # what sklearn.utils.shuffle(sample_idx, random_state=...) draws, without its
                    # per-call validation: a RandomState.shuffle of arange(n) indexing sample_idx
                    order[...] = np.arange(n_samples)
                    self._random_state.shuffle(order)
                    sample_idx = sample_idx[order]
                accumulated_loss = 0.0
                for start in range(0, n_samples, batch_size):
                    stop = min(start + batch_size, n_samples)
                    ws = net.workspace(stop - start)
                    if self.shuffle:
                        rows = sample_idx[start:stop]
                        xb = dense_rows(X, rows, ws["x"])
                        tb = _gather(targets, rows, ws, "t")
                        wb = None if sample_weight is None else _gather(sample_weight, rows, ws, "w")
                    else:
                        xb = dense_rows(X[start:stop], None, ws["x"]) if sparse else X[start:stop]
                        tb = targets[start:stop]
                        wb = None if sample_weight is None else sample_weight[start:stop]
                    step += 1
                    seed = mix_seed(self._dropout_seed, self.t_, step) if self._dropout_seed else 0
                    loss = net.loss_and_gradient(backend, xb, tb, wb, ws, self.alpha, seed=seed,
                                                 penalty_gradient=not fold)
                    accumulated_loss += loss * (stop - start)
                    if fold:
                        solver.step(backend, net.params, net.grads, net.penalty_rate(self.alpha, xb, wb),
                                    net.n_weights)
                    else:
                        solver.step(backend, net.params, net.grads)
                self.n_iter_ += 1
                self.loss_ = accumulated_loss / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._update_no_improvement_count(early_stopping, X_val, y_val, sw_val)
                solver.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if early_stopping else "Training loss"
                    msg = (f"{what} did not improve more than tol={self.tol:f} for "
                           f"{self.n_iter_no_change} consecutive epochs.")
                    if solver.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                                  "the optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)
        if early_stopping:
            params, stats = self._best_params
            np.copyto(net.params, params)
            for a, b in zip(net.running_mean + net.running_var, stats):
                np.copyto(a, b)

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
                params, stats = self._best_params
                np.copyto(params, self._net.params)
                for a, b in zip(stats, self._net.running_mean + self._net.running_var):
                    np.copyto(a, b)
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
        if sp.issparse(X):
            X = X.tocsr()
        dtype = self.coefs_[0].dtype
        if self.dtype is None:
            dtype = np.result_type(X.dtype, dtype)
            dtype = dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)
        backend = self._backend()
        bn = None
        if getattr(self, "bn_gamma_", None) is not None:
            bn = (self.bn_gamma_, self.bn_beta_, self.bn_running_mean_, self.bn_running_var_)
        raw = predict_raw(backend, X, self.coefs_, self.intercepts_, self.activation, bn, dtype)
        return output_activation(backend, raw, self.out_activation_)

    def _is_classifier(self):
        return isinstance(self, _SklearnMLPClassifier)


_EXTRAS_DOC = """
    Parameters
    ----------
    Every parameter of scikit-learn's {name} (hidden_layer_sizes, activation, solver,
    alpha, batch_size, learning_rate, learning_rate_init, power_t, max_iter, shuffle,
    random_state, tol, verbose, warm_start, momentum, nesterovs_momentum,
    early_stopping, validation_fraction, beta_1, beta_2, epsilon, n_iter_no_change,
    max_fun{loss}), with the same default and meaning. With the defaults below for
    the extra parameters, a fit follows scikit-learn's up to rounding.

    Extra keyword-only parameters:

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
    activation also accepts 'leaky_relu' (slope 0.01), 'elu', 'selu' and 'gelu'
        (PyTorch's definitions).
    solver also accepts 'rmsprop' (squared-gradient average with decay beta_2,
        eps=epsilon), 'adagrad' (eps=epsilon) and 'adamw' (adam with decoupled
        weight decay weight_decay; with weight_decay=0 it equals 'adam'). These
        are stochastic solvers like sgd and adam (batch_size, shuffle,
        early_stopping, partial_fit), and follow learning_rate ('invscaling',
        'adaptive') as sgd does. alpha still adds the L2 penalty to the loss.
    init : {{'sklearn', 'he', 'lecun', 'glorot'}}, default='sklearn'
        Initial weights: 'sklearn' is scikit-learn's (uniform with bound
        sqrt(6 / (fan_in + fan_out)), 2 instead of 6 for logistic, biases too);
        'he' is N(0, 2 / fan_in), 'lecun' N(0, 1 / fan_in), 'glorot' uniform with
        bound sqrt(6 / (fan_in + fan_out)); these three start the biases at 0.
    weight_decay : float, default=0.01
        Decoupled weight decay of solver='adamw' (on every parameter); unused by
        the other solvers.{class_weight}

    Fitted attributes are scikit-learn's (coefs_, intercepts_, loss_, best_loss_,
    loss_curve_, validation_scores_, best_validation_score_, t_, n_iter_,
    n_layers_, n_outputs_, out_activation_, n_features_in_, feature_names_in_{classes}),
    with coefs_ and intercepts_ being views of one flat parameter buffer. With
    batch_norm=True, also bn_gamma_, bn_beta_, bn_running_mean_, bn_running_var_:
    one array of shape (units,) per hidden layer.
"""

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

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, backend=None, dtype=None, dropout=0.0, batch_norm=False, init="sklearn",
                 weight_decay=0.01, class_weight=None):
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

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001,
                 power_t=0.5, max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, backend=None, dtype=None, dropout=0.0, batch_norm=False, init="sklearn",
                 weight_decay=0.01):
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


MLPClassifier.__doc__ = """Multi-layer perceptron classifier: scikit-learn's MLPClassifier trained on
    fastnn's kernels. Replace `from sklearn.neural_network import MLPClassifier` with
    `from fastnn import MLPClassifier`; nothing else changes.

    It minimises the cross-entropy of softmax outputs (multiclass) or of logistic
    outputs (binary, multilabel) plus alpha's L2 penalty, with L-BFGS or a
    stochastic solver.
""" + _EXTRAS_DOC.format(name="MLPClassifier", loss="", class_weight=_CLASS_WEIGHT_DOC,
                         classes=", classes_")

MLPRegressor.__doc__ = """Multi-layer perceptron regressor: scikit-learn's MLPRegressor trained on
    fastnn's kernels. Replace `from sklearn.neural_network import MLPRegressor` with
    `from fastnn import MLPRegressor`; nothing else changes.

    It minimises half the squared error (identity output) or, with
    loss='poisson', half the Poisson deviance (exponential output), plus alpha's
    L2 penalty, with L-BFGS or a stochastic solver.
""" + _EXTRAS_DOC.format(name="MLPRegressor", loss=", loss", class_weight="", classes="")

__all__ = ["MLPClassifier", "MLPRegressor"]
