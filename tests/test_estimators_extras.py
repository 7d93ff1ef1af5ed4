"""The parameters fastnn's MLPClassifier / MLPRegressor add to scikit-learn's
(backend, dtype, dropout, batch_norm, more activations and solvers, init,
weight_decay, class_weight), the network's gradients, and the same fit on every
backend."""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import erf, expit
from sklearn.datasets import load_digits, make_multilabel_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.class_weight import compute_sample_weight
from threadpoolctl import threadpool_limits

import fastnn
from fastnn import MLPClassifier, MLPRegressor
from fastnn.nn.layers import BatchNorm
from fastnn.testing import assert_gradients

BN_EPS = BatchNorm().eps  # the estimators' batch norm: torch.nn.BatchNorm1d's defaults

BACKENDS = fastnn.available_backends()


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks: one BLAS/OpenMP thread keeps the run time steady on a
    machine whose cores are shared."""
    with threadpool_limits(limits=1):
        yield


def fit(est, X, y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, **kwargs)


def digits(n=300):
    X, y = load_digits(return_X_y=True)
    return X[:n] / 16.0, y[:n]


def regression(n=200, targets=1):
    X, y = make_regression(n_samples=n, n_features=8, n_targets=targets, noise=1.0, random_state=0)
    return X, y / y.std()


def flat(est):
    return np.concatenate([p.ravel() for p in est.coefs_ + est.intercepts_])


def initial(cls, X, y, **params):
    """The initial weights: one sgd step with a negligible learning rate."""
    return fit(cls(solver="sgd", learning_rate_init=1e-300, max_iter=1, momentum=0.0, **params), X, y)


# ------------------------------------------------------------- gradients
def _network_problem(loss, activation, batch_norm=False, dropout=None):
    rng = np.random.RandomState(0)
    n_out = {"softmax": 3, "logistic": 2, "squared_error": 1, "poisson": 2}[loss]
    cls = MLPClassifier if loss in ("softmax", "logistic") else MLPRegressor
    est = cls(activation=activation, batch_norm=batch_norm, dropout=dropout or 0.0, alpha=0.3)
    est.out_activation_ = {"softmax": "softmax", "logistic": "logistic", "squared_error": "identity",
                           "poisson": "exp"}[loss]
    # the estimator's network, as it builds it for fit
    net = est._new_model([5, 6, 4, n_out], np.float64, rng)
    net.seed = 11
    net.set_flat_params(rng.uniform(-0.8, 0.8, net.n_params))
    x = rng.normal(size=(9, 5))
    if loss == "softmax":
        t = rng.randint(0, 3, 9).astype(np.int64)
    elif loss == "logistic":
        t = rng.randint(0, 2, (9, 2)).astype(float)
    elif loss == "poisson":
        t = rng.poisson(1.5, (9, 2)).astype(float)
    else:
        t = rng.normal(size=(9, 1))
    return net, x, t, rng.uniform(0.5, 2.0, 9)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu", "leaky_relu", "elu",
                                        "selu", "gelu"])
@pytest.mark.parametrize("loss", ["softmax", "logistic", "squared_error", "poisson"])
@pytest.mark.parametrize("layers", ["plain", "batch_norm+dropout"])
def test_network_gradient_matches_finite_differences(activation, loss, layers):
    # the squared error has one output: scikit-learn reports that loss averaged over
    # outputs but descends the gradient of its sum, and fastnn does the same
    extras = dict(batch_norm=True, dropout=[0.3, 0.2]) if layers != "plain" else {}
    net, x, t, w = _network_problem(loss, activation, **extras)
    # the model's _objective, what the estimator's L-BFGS evaluates, against central
    # differences (step 1e-6), on the model's backend
    assert_gradients(net, x, t, sample_weight=w, eps=1e-6, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------ backends
CONFIGS = {
    "default": ("classifier", {}),
    "extras": ("classifier", dict(solver="adamw", activation="gelu", dropout=0.2, batch_norm=True,
                                  class_weight="balanced")),
    "regressor": ("regressor", dict(solver="rmsprop", activation="elu", learning_rate_init=0.01,
                                    dropout=(0.1, 0.0), hidden_layer_sizes=(12, 7))),
    "lbfgs": ("regressor", dict(solver="lbfgs", activation="tanh", batch_norm=True)),
    "sgd": ("classifier", dict(solver="sgd", activation="leaky_relu", learning_rate="invscaling",
                               learning_rate_init=0.3)),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_backend_fits_the_same_weights(config, dtype):
    kind, params = CONFIGS[config]
    if kind == "classifier":
        X, y = digits(240)
        cls = MLPClassifier
    else:
        X, y = regression(200)
        cls = MLPRegressor
    X = X.astype(dtype)
    params = dict(hidden_layer_sizes=(16,), max_iter=3, random_state=0, batch_size=50) | params
    sw = np.random.RandomState(0).uniform(0.5, 2.0, len(y)) if config in ("default", "regressor") else None
    reference = fit(cls(backend="numpy", **params), X, y, sample_weight=sw)
    scale = np.abs(flat(reference)).max()
    for name in BACKENDS:
        est = fit(cls(backend=name, **params), X, y, sample_weight=sw)
        assert est.coefs_[0].dtype == dtype
        tol = 1e-9 if dtype == np.float64 else 2e-4
        assert_allclose(flat(est), flat(reference), rtol=tol, atol=tol * scale, err_msg=name)
        assert_allclose(est.predict(X) if kind == "regressor" else est.predict_proba(X),
                        reference.predict(X) if kind == "regressor" else reference.predict_proba(X),
                        rtol=tol * 10, atol=tol * 10, err_msg=name)


def test_backend_parameter_and_current_backend():
    X, y = digits(100)
    est = fit(MLPClassifier(max_iter=2, random_state=0), X, y)
    with fastnn.use_backend("numpy"):  # backend=None follows the current backend
        assert_allclose(est.predict_proba(X), MLPClassifier.predict_proba(est, X), rtol=1e-12)
    with pytest.raises(ValueError, match="backend"):
        MLPClassifier(backend="tpu").fit(X, y)


# ------------------------------------------------------------- dropout
def test_dropout():
    X, y = digits(300)
    base = dict(hidden_layer_sizes=(20, 10), max_iter=3, random_state=0)
    plain = fit(MLPClassifier(**base), X, y)
    assert_array_equal(flat(fit(MLPClassifier(dropout=0.0, **base), X, y)), flat(plain))
    assert_array_equal(flat(fit(MLPClassifier(dropout=[0, 0], **base), X, y)), flat(plain))
    first = fit(MLPClassifier(dropout=0.3, **base), X, y)
    assert not np.allclose(flat(first), flat(plain))
    assert_array_equal(flat(fit(MLPClassifier(dropout=0.3, **base), X, y)), flat(first))  # reproducible
    per_layer = fit(MLPClassifier(dropout=(0.3, 0.0), **base), X, y)
    assert not np.allclose(flat(per_layer), flat(first))
    # no dropout at prediction: the forward pass from the fitted attributes
    h = X
    for W, b in zip(first.coefs_[:-1], first.intercepts_[:-1]):
        h = np.maximum(h @ W + b, 0)
    logits = h @ first.coefs_[-1] + first.intercepts_[-1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert_allclose(first.predict_proba(X), p / p.sum(axis=1, keepdims=True), rtol=1e-10)
    # L-BFGS uses one fixed mask: a deterministic objective that converges
    lbfgs = fit(MLPClassifier(solver="lbfgs", dropout=0.2, **(base | {"max_iter": 60})), X, y)
    assert lbfgs.score(X, y) > 0.9
    with pytest.raises(ValueError, match="dropout"):
        MLPClassifier(dropout=[0.1, 0.1, 0.1], **base).fit(X, y)
    with pytest.raises(ValueError, match="dropout"):
        MLPClassifier(dropout=[0.1, 1.0], **base).fit(X, y)
    with pytest.raises(ValueError, match="dropout"):
        MLPClassifier(dropout=1.0, **base).fit(X, y)


# ---------------------------------------------------------- batch norm
def _bn_forward(est, X, activation):
    h = X
    for i, (W, b) in enumerate(zip(est.coefs_[:-1], est.intercepts_[:-1])):
        z = h @ W + b
        z = (z - est.bn_running_mean_[i]) / np.sqrt(est.bn_running_var_[i] + BN_EPS)
        h = activation(z * est.bn_gamma_[i] + est.bn_beta_[i])
    return h @ est.coefs_[-1] + est.intercepts_[-1]


def test_batch_norm_stochastic():
    X, y = digits(301)  # batch 50: the last batch has one row, which uses the running statistics
    est = fit(MLPClassifier(hidden_layer_sizes=(24, 12), batch_norm=True, max_iter=30, random_state=0,
                            batch_size=50, learning_rate_init=0.01), X, y)
    assert [g.shape for g in est.bn_gamma_] == [(24,), (12,)]
    for name in ("bn_gamma_", "bn_beta_", "bn_running_mean_", "bn_running_var_"):
        assert len(getattr(est, name)) == 2
    assert not np.allclose(est.bn_running_mean_[0], 0) and not np.allclose(est.bn_gamma_[0], 1)
    assert all((b == 0).all() for b in est.intercepts_[:-1])  # beta shifts; b stays 0
    logits = _bn_forward(est, X, lambda z: np.maximum(z, 0))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert_allclose(est.predict_proba(X), p / p.sum(axis=1, keepdims=True), rtol=1e-9, atol=1e-12)
    assert est.score(X, y) > 0.9
    # without batch norm the attributes are absent, also after a refit
    fit(est.set_params(batch_norm=False), X, y)
    assert not hasattr(est, "bn_gamma_")


def test_batch_norm_lbfgs_running_statistics_are_the_data_statistics():
    X, y = regression(150)
    est = fit(MLPRegressor(solver="lbfgs", hidden_layer_sizes=(7,), batch_norm=True, activation="tanh",
                           max_iter=40, random_state=0), X, y)
    z = X @ est.coefs_[0] + est.intercepts_[0]
    assert_allclose(est.bn_running_mean_[0], z.mean(axis=0), rtol=1e-10, atol=1e-12)
    assert_allclose(est.bn_running_var_[0], z.var(axis=0, ddof=1), rtol=1e-10)
    assert_allclose(est.predict(X), _bn_forward(est, X, np.tanh)[:, 0], rtol=1e-9, atol=1e-12)
    assert est.score(X, y) > 0.9


# ---------------------------------------------------------- activations
ACTIVATIONS = {
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
    "selu": lambda z: 1.0507009873554805 * np.where(z > 0, z,
                                                    1.6732632423543772 * np.expm1(np.minimum(z, 0))),
    "gelu": lambda z: 0.5 * z * (1 + erf(z / np.sqrt(2))),
}


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_more_activations(activation):
    X, y = digits(300)
    est = fit(MLPClassifier(activation=activation, hidden_layer_sizes=(20,), max_iter=20, random_state=0,
                            learning_rate_init=0.01), X, y)
    assert est.loss_curve_[-1] < 0.5 * est.loss_curve_[0]
    assert est.score(X, y) > 0.9
    hidden = ACTIVATIONS[activation](X @ est.coefs_[0] + est.intercepts_[0])
    logits = hidden @ est.coefs_[1] + est.intercepts_[1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert_allclose(est.predict_proba(X), p / p.sum(axis=1, keepdims=True), rtol=1e-9, atol=1e-12)


# -------------------------------------------------------------- solvers
def test_adamw_is_adam_with_decoupled_weight_decay():
    X, y = digits(200)
    base = dict(hidden_layer_sizes=(10,), max_iter=3, random_state=0)
    adam = fit(MLPClassifier(solver="adam", **base), X, y)
    assert_array_equal(flat(fit(MLPClassifier(solver="adamw", weight_decay=0.0, **base), X, y)), flat(adam))
    # 3 steps (one batch per epoch) of p *= 1 - lr * weight_decay on top of adam's update
    decayed = fit(MLPClassifier(solver="adamw", weight_decay=50.0, **base), X, y)
    assert np.linalg.norm(flat(decayed)) < 0.9 * np.linalg.norm(flat(adam))


@pytest.mark.parametrize("solver", ["sgd", "adam", "rmsprop", "adagrad", "adamw"])
def test_weight_decay_is_decoupled_for_every_stochastic_solver(solver):
    """One full-batch step with weight_decay=wd from the initial weights p0 is the
    step without decay from p0 * (1 - lr * wd): the update depends on the gradient
    at p0 and the optimizer state only, so p1(wd) = p1(0) - lr * wd * p0."""
    X, y = digits(120)
    base = dict(hidden_layer_sizes=(6,), random_state=0, batch_size=120, shuffle=False, alpha=0.01)
    p0 = flat(initial(MLPClassifier, X, y, **base))
    lr, wd = 0.05, 0.3
    steps = {decay: flat(fit(MLPClassifier(solver=solver, learning_rate_init=lr, max_iter=1,
                                           weight_decay=decay, **base), X, y))
             for decay in (0.0, wd)}
    assert_allclose(steps[wd], steps[0.0] - lr * wd * p0, rtol=1e-12, atol=1e-15)
    assert np.abs(steps[wd] - steps[0.0]).max() > 1e-3  # the decay is visible
    # None: adamw's 0.01, nothing for the others (scikit-learn's sgd and adam)
    default = flat(fit(MLPClassifier(solver=solver, learning_rate_init=lr, max_iter=1, **base), X, y))
    if solver == "adamw":
        expected = steps[0.0] - lr * 0.01 * p0
        assert_allclose(default, expected, rtol=1e-12, atol=1e-15)
    else:
        assert_array_equal(default, steps[0.0])


def test_weight_decay_with_lbfgs_is_refused():
    X, y = digits(60)
    with pytest.raises(ValueError, match="weight_decay=0.1 needs a stochastic solver"):
        MLPClassifier(solver="lbfgs", weight_decay=0.1).fit(X, y)
    for decay in (None, 0.0):  # no decay asked for
        fit(MLPClassifier(solver="lbfgs", weight_decay=decay, hidden_layer_sizes=(4,), max_iter=2), X, y)


@pytest.mark.parametrize("solver", ["rmsprop", "adagrad"])
def test_rmsprop_and_adagrad_first_step(solver):
    # one full-batch step from the initial weights p0 with gradient g
    X, y = digits(120)
    base = dict(hidden_layer_sizes=(6,), random_state=0, batch_size=120, shuffle=False, alpha=0.01)
    p0 = flat(initial(MLPClassifier, X, y, **base))
    sgd = fit(MLPClassifier(solver="sgd", momentum=0.0, learning_rate_init=1.0, max_iter=1, **base), X, y)
    g = p0 - flat(sgd)
    lr, beta_2, eps = 0.01, 0.9, 1e-6
    est = fit(MLPClassifier(solver=solver, learning_rate_init=lr, beta_2=beta_2, epsilon=eps, max_iter=1,
                            **base), X, y)
    if solver == "rmsprop":
        expected = p0 - lr * g / (np.sqrt((1 - beta_2) * g * g) + eps)
    else:
        expected = p0 - lr * g / (np.sqrt(g * g) + eps)
    assert_allclose(flat(est), expected, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("solver", ["sgd", "adam", "rmsprop", "adagrad", "adamw"])
def test_l2_penalty_folded_into_the_optimizer_step_changes_nothing(solver, monkeypatch):
    """The stochastic solvers add alpha's L2 gradient inside the optimizer kernel
    (adamw, whose decay is decoupled, keeps the separate penalty kernel): the fit
    is the one with the penalty added to the gradient first."""
    X, y = digits(150)
    params = dict(solver=solver, hidden_layer_sizes=(12, 7), alpha=0.3, batch_size=32, max_iter=4,
                  random_state=0, learning_rate_init=0.01, backend="numpy")
    folded = fit(MLPClassifier(**params), X, y, sample_weight=np.linspace(0.5, 2, len(y)))
    assert folded.model_._fold_l2 == (solver != "adamw")
    prepare = fastnn.nn.Sequential._prepare_training

    def never_fold(model):
        prepare(model)
        model._fold_l2 = False

    monkeypatch.setattr(fastnn.nn.Sequential, "_prepare_training", never_fold)
    separate = fit(MLPClassifier(**params), X, y, sample_weight=np.linspace(0.5, 2, len(y)))
    assert_allclose(folded.loss_curve_, separate.loss_curve_, rtol=1e-10)
    for a, b in zip(folded.coefs_ + folded.intercepts_, separate.coefs_ + separate.intercepts_):
        assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_learning_rate_schedules_follow_sklearn_per_solver():
    X, y = digits(200)
    base = dict(hidden_layer_sizes=(10,), max_iter=3, random_state=0, learning_rate_init=0.01, power_t=0.9)
    for solver, follows in (("adam", False), ("rmsprop", True), ("adagrad", True), ("adamw", True)):
        constant = fit(MLPClassifier(solver=solver, **base), X, y)
        scaled = fit(MLPClassifier(solver=solver, learning_rate="invscaling", **base), X, y)
        assert np.allclose(flat(constant), flat(scaled)) != follows, solver
    # partial_fit works with every stochastic solver
    for solver in ("rmsprop", "adagrad", "adamw"):
        est = MLPClassifier(solver=solver, hidden_layer_sizes=(5,), random_state=0)
        est.partial_fit(X, y, classes=np.arange(10)).partial_fit(X, y)
        assert est.t_ == 2 * len(y)
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")


# ----------------------------------------------------------------- init
@pytest.mark.parametrize(("init", "std"), [("he", lambda fi, fo: np.sqrt(2 / fi)),
                                           ("lecun", lambda fi, fo: np.sqrt(1 / fi)),
                                           ("glorot", lambda fi, fo: np.sqrt(2 / (fi + fo)))])
def test_init(init, std):
    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(50, 400)), rng.normal(size=50)
    est = initial(MLPRegressor, X, y, hidden_layer_sizes=(300,), init=init, random_state=0)
    W = est.coefs_[0]
    assert W.std() == pytest.approx(std(400, 300), rel=0.02)
    assert abs(W.mean()) < 0.01 * W.std()
    if init == "glorot":  # uniform
        assert np.abs(W).max() <= np.sqrt(6 / 700)
    assert all((np.abs(b) < 1e-290).all() for b in est.intercepts_)  # 0 plus a step of 1e-300
    assert_array_equal(initial(MLPRegressor, X, y, hidden_layer_sizes=(300,), init=init,
                               random_state=0).coefs_[0], W)


# ---------------------------------------------------------- class_weight
def test_class_weight():
    X, y = digits(300)
    labels = np.array(list("abcdefghij"))[y]
    base = dict(hidden_layer_sizes=(10,), max_iter=3, random_state=0)
    balanced = fit(MLPClassifier(class_weight="balanced", **base), X, labels)
    by_weight = fit(MLPClassifier(**base), X, labels, sample_weight=compute_sample_weight("balanced", labels))
    assert_allclose(flat(balanced), flat(by_weight), rtol=1e-12)
    weights = {c: 1.0 + i for i, c in enumerate("abcdefghij")}
    sw = np.random.RandomState(0).uniform(0.5, 1.5, len(y))
    by_dict = fit(MLPClassifier(class_weight=weights, **base), X, labels, sample_weight=sw)
    expected = fit(MLPClassifier(**base), X, labels, sample_weight=sw * np.vectorize(weights.get)(labels))
    assert_allclose(flat(by_dict), flat(expected), rtol=1e-12)
    binary = labels[:100] == "a"
    fit(MLPClassifier(class_weight={True: 5.0, False: 1.0}, **base), X[:100], binary)
    Xm, ym = make_multilabel_classification(n_samples=50, random_state=0)
    with pytest.raises(ValueError, match="class_weight"):
        MLPClassifier(class_weight="balanced", **base).fit(Xm, ym)
    with pytest.raises(ValueError, match="class_weight"):
        MLPClassifier(class_weight="balanced").partial_fit(X, labels, classes=np.unique(labels))
    est = MLPClassifier(class_weight=weights, hidden_layer_sizes=(5,))
    est.partial_fit(X, labels, classes=list(weights))
    assert est.t_ == len(y)


# ----------------------------------------------------------------- dtype
def test_dtype_parameter():
    X, y = digits(300)
    score64 = fit(MLPClassifier(max_iter=20, random_state=0), X, y).score(X, y)
    for dtype in ("float32", np.float32, np.dtype(np.float32)):
        est = fit(MLPClassifier(dtype=dtype, max_iter=20, random_state=0), X, y)
        assert {p.dtype for p in est.coefs_ + est.intercepts_} == {np.dtype(np.float32)}
        assert est.predict_proba(X).dtype == np.float32
        assert est.score(X, y) == pytest.approx(score64, abs=0.02)
    est = fit(MLPRegressor(dtype="float64", max_iter=2, random_state=0), X.astype(np.float32), y)
    assert est.coefs_[0].dtype == np.float64
    # float32 training follows float64 training closely over one epoch
    a = fit(MLPClassifier(max_iter=1, random_state=0, shuffle=False), X, y)
    b = fit(MLPClassifier(max_iter=1, random_state=0, shuffle=False, dtype="float32"), X, y)
    assert_allclose(flat(b), flat(a), rtol=1e-3, atol=1e-4)


# ------------------------------------------------- invalid extra parameters
@pytest.mark.parametrize(("name", "value"), [
    ("backend", "tpu"), ("dtype", "float16"), ("dtype", np.int32), ("dropout", -0.1), ("dropout", "half"),
    ("batch_norm", "yes"), ("init", "xavier"), ("weight_decay", -1.0), ("class_weight", "auto"),
    ("activation", "softplus"), ("solver", "adadelta"),
])
def test_invalid_extra_parameters_name_the_parameter(name, value):
    X, y = digits(50)
    with pytest.raises(ValueError, match=name):
        MLPClassifier(**{name: value}).fit(X, y)


# ------------------------------------------------- scikit-learn's loss values
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("link", ["softmax", "logistic"])
@pytest.mark.parametrize("scale", [0.1, 3.0, 300.0])  # 300: saturated probabilities, clipped
def test_reported_log_loss_is_sklearns(link, dtype, scale):
    from sklearn.neural_network._base import binary_log_loss, log_loss

    rng = np.random.RandomState(1)
    out = (scale * rng.normal(size=(40, 3))).astype(dtype)
    if link == "softmax":
        t = rng.randint(0, 3, 40).astype(np.int64)
        p = np.exp(out - out.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        expected = lambda w: log_loss(np.eye(3)[t], p, sample_weight=w)  # noqa: E731
    else:
        t = rng.randint(0, 2, (40, 3)).astype(dtype)
        expected = lambda w: binary_log_loss(t, expit(out), sample_weight=w)  # noqa: E731
    loss = {"softmax": fastnn.nn.LogLoss, "logistic": fastnn.nn.BinaryLogLoss}[link]()
    for name in BACKENDS:
        for w in (None, rng.uniform(0.5, 2, 40).astype(dtype)):
            got = loss.checked_call(fastnn.get_backend(name), out, t, w, np.empty_like(out))
            assert got == pytest.approx(expected(w), rel=1e-5 if dtype == np.float32 else 1e-10), name
