"""fastnn.MLPClassifier / MLPRegressor as drop-in replacements of scikit-learn's:
scikit-learn's estimator checks, the same weights as scikit-learn's for the same
parameters and random_state, the same scores, the same exceptions for the same
bad input, and the meta-estimator tools (Pipeline, GridSearchCV, clone, pickle).

Extra parameters and backends: tests/test_estimators_extras.py."""

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn import neural_network as sk
from sklearn.base import clone
from sklearn.datasets import (
    load_breast_cancer,
    load_digits,
    load_wine,
    make_classification,
    make_multilabel_classification,
    make_regression,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

import fastnn
from fastnn import MLPClassifier, MLPRegressor


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are small: one BLAS/OpenMP thread is as fast, and keeps the
    run time steady on a machine whose cores are shared."""
    with threadpool_limits(limits=1):
        yield


PAIRS = {"classifier": (sk.MLPClassifier, MLPClassifier), "regressor": (sk.MLPRegressor, MLPRegressor)}


def quiet_fit(est, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(*args, **kwargs)


def params_of(est):
    return est.coefs_ + est.intercepts_


def assert_same_params(a, b, rtol, atol=0.0):
    assert len(params_of(a)) == len(params_of(b))
    for pa, pb in zip(params_of(a), params_of(b)):
        assert pa.shape == pb.shape and pa.dtype == pb.dtype
        assert_allclose(pb, pa, rtol=rtol, atol=atol)


# ------------------------------------------------------ scikit-learn's checks
# max_iter=100 is what scikit-learn's own test suite uses for its MLPs. With the
# default extras no check is skipped or expected to fail; the ones reported as
# skipped skip themselves (pandas is not installed, SCIPY_ARRAY_API is not set, no
# decision_function). The instances with extra parameters are expected to fail
# only the sample-weight equivalence checks, for the reasons given.
DROPOUT_BN = MLPClassifier(solver="adamw", activation="gelu", batch_norm=True, dropout=0.1, init="he",
                           max_iter=100)
FLOAT32 = MLPRegressor(solver="rmsprop", activation="elu", learning_rate="adaptive", dtype="float32",
                       max_iter=100)
WEIGHT_CHECKS = ("check_sample_weight_equivalence_on_dense_data",
                 "check_sample_weight_equivalence_on_sparse_data")


def expected_failures(estimator):
    if estimator is DROPOUT_BN:
        why = ("dropout masks are drawn per row and batch-norm statistics are unweighted batch means, "
               "so a weight of 2 does not act as a repeated row")
    elif estimator is FLOAT32:
        why = ("float32 training: the fits agree to a few float32 ulps, finer than float32 can hold "
               "but coarser than the check's rtol of 1e-7")
    else:
        return {}
    return dict.fromkeys(WEIGHT_CHECKS, why)


@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100), DROPOUT_BN, FLOAT32,
                          MLPClassifier(solver="adagrad", activation="selu", init="lecun", max_iter=100)],
                         expected_failed_checks=expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_is_a_sklearn_mlp_with_the_same_parameters():
    for kind, (theirs, ours) in PAIRS.items():
        assert issubclass(ours, theirs), kind
        sk_params = theirs().get_params()
        our_params = ours().get_params()
        extras = {"backend", "dtype", "dropout", "batch_norm", "init", "weight_decay"}
        if kind == "classifier":
            extras.add("class_weight")
        assert set(our_params) == set(sk_params) | extras
        assert {k: our_params[k] for k in sk_params} == sk_params  # same defaults
    assert fastnn.MLPClassifier is MLPClassifier and fastnn.MLPRegressor is MLPRegressor


# ------------------------------------------ same weights as scikit-learn's
def _digits(n=300):
    X, y = load_digits(return_X_y=True)
    return X[:n] / 16.0, y[:n]


def _data(target):
    """(X, y) small float64 problems of each target type."""
    rng = np.random.RandomState(0)
    if target == "multiclass":
        return _digits(250)
    if target == "binary":
        X, y = make_classification(n_samples=230, n_features=12, random_state=1)
        return X, np.where(y == 1, "yes", "no")
    if target == "multilabel":
        return make_multilabel_classification(n_samples=210, n_features=10, n_classes=4, random_state=2)
    if target == "regression":
        X, y = make_regression(n_samples=220, n_features=9, noise=1.0, random_state=3)
        return X, y / 100
    if target == "multioutput":
        X, y = make_regression(n_samples=220, n_features=9, n_targets=3, random_state=4)
        return X, y / 100
    if target == "poisson":
        X = rng.uniform(-1, 1, (240, 6))
        return X, rng.poisson(np.exp(X @ rng.uniform(-0.5, 0.5, 6) + 0.5)).astype(float)
    raise ValueError(target)


TARGETS = ["multiclass", "binary", "multilabel", "regression", "multioutput", "poisson"]


def _kind(target):
    return "classifier" if target in ("multiclass", "binary", "multilabel") else "regressor"


def _pair(target, **params):
    theirs, ours = PAIRS[_kind(target)]
    if target == "poisson":
        params["loss"] = "poisson"
    return theirs(**params), ours(**params)


@pytest.mark.parametrize("activation", ["relu", "logistic"])
@pytest.mark.parametrize("target", ["multiclass", "regression"])
def test_initial_weights_equal_sklearn(target, activation):
    # a learning rate of 1e-300 leaves the weights exactly at their initial values
    X, y = _data(target)
    for X_fit in (X, X.astype(np.float32)):
        a, b = _pair(target, solver="sgd", learning_rate_init=1e-300, max_iter=1, random_state=7,
                     hidden_layer_sizes=(13, 6), activation=activation)
        quiet_fit(a, X_fit, y)
        quiet_fit(b, X_fit, y)
        for pa, pb in zip(params_of(a), params_of(b)):
            assert pb.dtype == X_fit.dtype
            assert_array_equal(pb, pa)


ONE_EPOCH = [
    dict(solver="sgd"),
    dict(solver="sgd", momentum=0.0, learning_rate_init=0.05),
    dict(solver="sgd", nesterovs_momentum=False, alpha=0.01),
    dict(solver="adam"),
    dict(solver="adam", alpha=0.1, beta_1=0.5, beta_2=0.9, epsilon=1e-4, learning_rate_init=0.01),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("params", ONE_EPOCH, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_one_epoch_equals_sklearn(target, params):
    X, y = _data(target)
    a, b = _pair(target, max_iter=1, shuffle=False, random_state=3, hidden_layer_sizes=(11, 7),
                 batch_size=64, **params)  # 64 does not divide the sample counts: a short last batch
    quiet_fit(a, X, y)
    quiet_fit(b, X, y)
    assert_same_params(a, b, rtol=1e-9, atol=1e-12)
    assert b.loss_ == pytest.approx(a.loss_, rel=1e-9)
    assert b.t_ == a.t_ and b.n_iter_ == a.n_iter_ == 1


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_epochs_with_shuffling_weights_and_schedules_equal_sklearn(activation):
    X, y = _digits(300)
    sw = np.random.RandomState(0).uniform(0.2, 2.0, len(y))
    for params in (dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5, power_t=0.3),
                   dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.05, tol=0.5,
                        n_iter_no_change=1),
                   dict(solver="adam", early_stopping=True, validation_fraction=0.2, n_iter_no_change=2,
                        tol=0.02, learning_rate_init=0.01)):
        a = sk.MLPClassifier(max_iter=6, random_state=5, activation=activation, hidden_layer_sizes=(20,),
                             batch_size=50, alpha=1e-3, **params)
        b = MLPClassifier(**a.get_params())
        quiet_fit(a, X, y, sample_weight=sw)
        quiet_fit(b, X, y, sample_weight=sw)
        assert_same_params(a, b, rtol=1e-8, atol=1e-11)
        assert b.n_iter_ == a.n_iter_
        assert_allclose(b.loss_curve_, a.loss_curve_, rtol=1e-9)
        if params.get("early_stopping"):
            assert_allclose(b.validation_scores_, a.validation_scores_)
            assert b.best_validation_score_ == a.best_validation_score_ and b.best_loss_ is None
        else:
            assert b.best_loss_ == pytest.approx(a.best_loss_, rel=1e-9)


@pytest.mark.parametrize("target", ["multiclass", "binary", "regression", "poisson"])
def test_lbfgs_equals_sklearn(target):
    X, y = _data(target)
    a, b = _pair(target, solver="lbfgs", max_iter=15, random_state=0, hidden_layer_sizes=(8,), alpha=1e-3)
    quiet_fit(a, X, y)
    quiet_fit(b, X, y)
    assert b.n_iter_ == a.n_iter_
    assert b.loss_ == pytest.approx(a.loss_, rel=1e-6)
    assert_same_params(a, b, rtol=1e-5, atol=1e-7)
    for attr in ("loss_curve_", "best_loss_", "validation_scores_"):
        assert hasattr(a, attr) == hasattr(b, attr)


def test_partial_fit_and_warm_start_equal_sklearn():
    X, y = _digits(300)
    a = sk.MLPClassifier(solver="sgd", random_state=1, hidden_layer_sizes=(16,), learning_rate_init=0.05)
    b = MLPClassifier(**a.get_params())
    classes = np.unique(y)
    for lo in range(0, 300, 75):
        a.partial_fit(X[lo:lo + 75], y[lo:lo + 75], classes=classes)
        b.partial_fit(X[lo:lo + 75], y[lo:lo + 75], classes=classes)
    assert_same_params(a, b, rtol=1e-9, atol=1e-12)
    assert b.t_ == a.t_ == 300
    a.set_params(warm_start=True, max_iter=3)
    b.set_params(warm_start=True, max_iter=3)
    quiet_fit(a, X, y)
    quiet_fit(b, X, y)
    assert_same_params(a, b, rtol=1e-9, atol=1e-12)
    assert b.loss_curve_ == pytest.approx(a.loss_curve_, rel=1e-9)
    rx, ry = _data("regression")
    a, b = sk.MLPRegressor(random_state=2, hidden_layer_sizes=(9,)), MLPRegressor(random_state=2,
                                                                                   hidden_layer_sizes=(9,))
    for _ in range(3):
        a.partial_fit(rx, ry)
        b.partial_fit(rx, ry)
    assert_same_params(a, b, rtol=1e-9, atol=1e-12)


def test_sparse_input_trains_as_dense():
    X, y = _digits(200)
    params = dict(max_iter=3, random_state=0, hidden_layer_sizes=(10,))
    dense = quiet_fit(MLPClassifier(**params), X, y)
    for container in (sp.csr_matrix, sp.csc_array):
        sparse = quiet_fit(MLPClassifier(**params), container(X), y)
        assert_same_params(dense, sparse, rtol=1e-12)
        assert_array_equal(sparse.predict_proba(container(X)), dense.predict_proba(X))


def test_fitted_attributes_are_sklearns():
    X, y = _digits(150)
    for params in (dict(solver="adam"), dict(solver="sgd", early_stopping=True), dict(solver="lbfgs")):
        a = quiet_fit(sk.MLPClassifier(max_iter=2, random_state=0, **params), X, y)
        b = quiet_fit(MLPClassifier(max_iter=2, random_state=0, **params), X, y)
        public = {k for k in vars(a) if k.endswith("_") and not k.startswith("_")}
        # scikit-learn's, and the network itself as model_
        assert public | {"model_"} == {k for k in vars(b) if k.endswith("_") and not k.startswith("_")}
        # the counters, shapes and names (the values are compared in the tests above)
        for key in ("classes_", "n_iter_", "t_", "n_layers_", "n_outputs_", "out_activation_",
                    "n_features_in_"):
            if hasattr(a, key):
                assert_array_equal(getattr(b, key), getattr(a, key), err_msg=key)


def test_dtype_follows_X_as_sklearn():
    X, y = _digits(120)
    for dtype in (np.float32, np.float64):
        for ours, theirs in ((MLPClassifier, sk.MLPClassifier), (MLPRegressor, sk.MLPRegressor)):
            a = quiet_fit(theirs(max_iter=2, random_state=0), X.astype(dtype), y)
            b = quiet_fit(ours(max_iter=2, random_state=0), X.astype(dtype), y)
            assert {p.dtype for p in params_of(b)} == {p.dtype for p in params_of(a)} == {np.dtype(dtype)}
            assert b.predict(X.astype(dtype)).dtype == a.predict(X.astype(dtype)).dtype
    b = quiet_fit(MLPClassifier(max_iter=2, random_state=0), X.astype(int), y)  # ints become float64
    assert b.coefs_[0].dtype == np.float64
    assert b.predict_proba(X[:5]).dtype == np.float64
    # predictions promote X's dtype with the weights' as scikit-learn's products do
    a = quiet_fit(sk.MLPClassifier(max_iter=2, random_state=0), X.astype(np.float32), y)
    b = quiet_fit(MLPClassifier(max_iter=2, random_state=0), X.astype(np.float32), y)
    for X_new in (X, X.astype(int), X.astype(np.float32)):
        assert b.predict_proba(X_new).dtype == a.predict_proba(X_new).dtype
        assert_allclose(b.predict_proba(X_new), a.predict_proba(X_new), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------- scores (parity)
def _scaled(loader):
    X, y = loader(return_X_y=True)
    return StandardScaler().fit_transform(X), y


PARITY = {
    # name: (X, y, estimator kind, parameters); each fit sees a train split, scores a test split
    "digits": (*load_digits(return_X_y=True), "classifier", dict(max_iter=40)),
    "breast_cancer": (*_scaled(load_breast_cancer), "classifier", dict(max_iter=60)),
    "wine": (*_scaled(load_wine), "classifier", dict(max_iter=150, learning_rate_init=0.01)),
    "make_classification": (*make_classification(n_samples=800, n_features=20, n_informative=8,
                                                 n_classes=3, random_state=0), "classifier",
                            dict(max_iter=60, solver="sgd", learning_rate_init=0.05)),
    "make_regression": (*make_regression(n_samples=600, n_features=15, noise=5.0, random_state=0),
                        "regressor", dict(max_iter=80, learning_rate_init=0.01, hidden_layer_sizes=(50,))),
}
SCORE_MARGIN = 0.02  # accuracy or R^2, on the mean over 3 seeds


@pytest.mark.parametrize("name", list(PARITY))
def test_scores_match_sklearn(name):
    X, y, kind, params = PARITY[name]
    if kind == "regressor":
        y = y / y.std()
    theirs_cls, ours_cls = PAIRS[kind]
    scores = {"sklearn": [], "fastnn": [], "fastnn-float32": []}
    for seed in range(3):
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=seed)
        for label, est in (("sklearn", theirs_cls(random_state=seed, **params)),
                           ("fastnn", ours_cls(random_state=seed, **params)),
                           ("fastnn-float32", ours_cls(random_state=seed, dtype="float32", **params))):
            scores[label].append(quiet_fit(est, X_tr, y_tr).score(X_te, y_te))
    means = {k: np.mean(v) for k, v in scores.items()}
    assert means["sklearn"] > (0.8 if kind == "classifier" else 0.7), means  # the problem is learnt
    assert abs(means["fastnn"] - means["sklearn"]) <= SCORE_MARGIN, means
    assert abs(means["fastnn-float32"] - means["sklearn"]) <= SCORE_MARGIN, means


# ------------------------------------------------ same errors for bad input
def _X(n=20, f=4):
    return np.random.RandomState(0).rand(n, f)


def _y(n=20):
    return np.arange(n) % 3


def _fit(params=None, X=None, y=None, **fit_kwargs):
    X = _X() if X is None else X
    y = _y() if y is None else y
    return lambda cls: cls(**(params or {})).fit(X, y, **fit_kwargs)


def _after_fit(method, X, params=None):
    def run(cls):
        est = quiet_fit(cls(max_iter=2, random_state=0, **(params or {})), _X(), _y())
        return getattr(est, method)(X)
    return run


def _partial(calls, params=None):
    def run(cls):
        est = cls(**(params or {"solver": "sgd"}))
        for X, y, kwargs in calls:
            est.partial_fit(X, y, **kwargs)
    return run


def _nan_X():
    X = _X()
    X[3, 1] = np.nan
    return X


def _inf_X():
    X = _X()
    X[0, 0] = np.inf
    return X


BAD_INPUT = {
    # name: (estimator kind, call taking the estimator class)
    "X with NaN": ("classifier", _fit(X=_nan_X())),
    "X with inf": ("regressor", _fit(X=_inf_X())),
    "X 1-D": ("classifier", _fit(X=np.arange(20.0))),
    "X 3-D": ("regressor", _fit(X=np.zeros((20, 2, 2)))),
    "X empty": ("classifier", _fit(X=np.zeros((0, 4)), y=np.zeros(0))),
    "X no features": ("regressor", _fit(X=np.zeros((20, 0)))),
    "X strings": ("classifier", _fit(X=np.array([["a", "b"]] * 20))),
    "X complex": ("regressor", _fit(X=_X() + 1j)),
    "X sparse COO": ("classifier", _fit(X=sp.coo_matrix(_X()))),
    "y wrong length": ("classifier", _fit(y=_y(19))),
    "y NaN for a regressor": ("regressor", _fit(y=np.r_[np.nan, np.ones(19)])),
    "y continuous for a classifier": ("classifier", _fit(y=np.linspace(0, 1, 20))),
    "y strings for a regressor": ("regressor", _fit(y=np.array(["a"] * 20))),
    "y 2-D column": ("classifier", _fit(y=_y().reshape(-1, 1))),
    "sample_weight wrong length": ("classifier", _fit(sample_weight=np.ones(19))),
    "sample_weight 2-D": ("regressor", _fit(sample_weight=np.ones((20, 1)))),
    # negative weights with a positive sum, as scikit-learn accepts them (a batch whose weights sum
    # to <= 0 is refused: tests/test_engine.py)
    "sample_weight negative": ("regressor", _fit({"max_iter": 2}, sample_weight=np.r_[-1.0, np.ones(19)])),
    "hidden_layer_sizes 0": ("classifier", _fit({"hidden_layer_sizes": 0})),
    "hidden_layer_sizes with 0": ("regressor", _fit({"hidden_layer_sizes": (10, 0)})),
    "hidden_layer_sizes negative": ("classifier", _fit({"hidden_layer_sizes": [-3]})),
    "hidden_layer_sizes string": ("classifier", _fit({"hidden_layer_sizes": "ten"})),
    "solver": ("classifier", _fit({"solver": "newton"})),
    "activation": ("regressor", _fit({"activation": "softmax"})),
    "alpha negative": ("classifier", _fit({"alpha": -1.0})),
    "batch_size 0": ("classifier", _fit({"batch_size": 0})),
    "batch_size string": ("regressor", _fit({"batch_size": "all"})),
    "learning_rate": ("classifier", _fit({"learning_rate": "cyclic"})),
    "learning_rate_init 0": ("regressor", _fit({"learning_rate_init": 0.0})),
    "power_t negative": ("classifier", _fit({"power_t": -0.5})),
    "max_iter 0": ("classifier", _fit({"max_iter": 0})),
    "max_iter float": ("regressor", _fit({"max_iter": 10.0})),
    "shuffle int": ("classifier", _fit({"shuffle": 1})),
    "random_state string": ("classifier", _fit({"random_state": "seed"})),
    "tol negative": ("regressor", _fit({"tol": -1e-4})),
    "momentum above 1": ("classifier", _fit({"momentum": 1.5, "solver": "sgd"})),
    "validation_fraction 1": ("classifier", _fit({"validation_fraction": 1.0})),
    "beta_1 equal 1": ("regressor", _fit({"beta_1": 1.0})),
    "beta_2 negative": ("classifier", _fit({"beta_2": -0.1})),
    "epsilon 0": ("classifier", _fit({"epsilon": 0.0})),
    "n_iter_no_change 0": ("regressor", _fit({"n_iter_no_change": 0})),
    "max_fun 0": ("classifier", _fit({"max_fun": 0, "solver": "lbfgs"})),
    "regressor loss": ("regressor", _fit({"loss": "huber"})),
    "validation set too small": ("regressor", _fit({"early_stopping": True}, X=_X(2), y=np.ones(2))),
    "predict before fit": ("classifier", lambda cls: cls().predict(_X())),
    "predict_proba before fit": ("classifier", lambda cls: cls().predict_proba(_X())),
    "predict wrong n_features": ("classifier", _after_fit("predict", _X(5, 3))),
    "predict NaN": ("regressor", _after_fit("predict", _nan_X())),
    "predict 1-D": ("classifier", _after_fit("predict_proba", np.ones(4))),
    "predict_proba of a regressor": ("regressor", _after_fit("predict_proba", _X())),
    "partial_fit first call without classes": ("classifier", _partial([(_X(), _y(), {})])),
    "partial_fit classes missing a label": ("classifier", _partial([(_X(), _y(), {"classes": [0, 1]})])),
    "partial_fit new label later": ("classifier", _partial([(_X(), _y(), {"classes": [0, 1, 2]}),
                                                           (_X(), _y() + 1, {})])),
    "partial_fit with lbfgs": ("classifier", _partial([(_X(), _y(), {"classes": [0, 1, 2]})],
                                                      {"solver": "lbfgs"})),
    "partial_fit with early_stopping": ("regressor", _partial([(_X(), _y(), {})],
                                                              {"early_stopping": True})),
    "partial_fit wrong n_features later": ("regressor", _partial([(_X(), _y(), {}), (_X(20, 3), _y(), {})])),
    "warm_start with new classes": ("classifier", lambda cls: cls(warm_start=True, max_iter=1)
                                    .fit(_X(), _y()).fit(_X(), _y() + 5)),
}


def _outcome(call, cls):
    """The type of the exception call(cls) raises (None if none): the first class
    of its MRO defined by Python or scikit-learn (NumPy's ufunc errors count as
    their TypeError base)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call(cls)
    except Exception as exc:
        return next(t for t in type(exc).__mro__ if t.__module__.split(".")[0] in ("builtins", "sklearn"))
    return None


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_raises_what_sklearn_raises(case):
    kind, call = BAD_INPUT[case]
    theirs, ours = PAIRS[kind]
    assert _outcome(call, ours) is _outcome(call, theirs)


def test_convergence_warnings_as_sklearn():
    X, y = _digits(100)
    for params in (dict(solver="sgd", max_iter=2), dict(solver="adam", max_iter=1),
                   dict(solver="lbfgs", max_iter=2)):
        for cls in (sk.MLPClassifier, MLPClassifier):
            with pytest.warns(ConvergenceWarning):
                cls(random_state=0, **params).fit(X, y)
    with warnings.catch_warnings():  # converged: no warning from either
        warnings.simplefilter("error", ConvergenceWarning)
        for cls in (sk.MLPClassifier, MLPClassifier):
            cls(random_state=0, max_iter=50, tol=10.0, n_iter_no_change=1).fit(X, y)


# ------------------------------------------------ meta-estimators, pickle
def test_pipeline_grid_search_cross_val_score_clone():
    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[:300], y[:300]
    params = dict(max_iter=40, random_state=0, hidden_layer_sizes=(16,), learning_rate_init=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(make_pipeline(StandardScaler(), MLPClassifier(**params)), X, y, cv=3)
        expected = cross_val_score(make_pipeline(StandardScaler(), sk.MLPClassifier(**params)), X, y, cv=3)
        pipe = make_pipeline(StandardScaler(), MLPClassifier(**params))
        search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1.0],
                                     "mlpclassifier__dtype": [None, "float32"]}, cv=2).fit(X, y)
    assert_allclose(scores, expected)  # the same fits as scikit-learn's
    assert scores.mean() > 0.85
    assert search.best_params_["mlpclassifier__alpha"] in (1e-4, 1.0)
    assert search.best_estimator_.score(X, y) > 0.85
    est = MLPRegressor(hidden_layer_sizes=(3, 4), dropout=(0.1, 0.2), init="he", backend="numpy")
    copy = clone(est)
    assert copy.get_params() == est.get_params() and copy is not est


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_pickle_roundtrip_keeps_predictions_and_training_state(kind):
    X, y = _digits(200)
    est = PAIRS[kind][1](solver="adam", random_state=0, hidden_layer_sizes=(12,), batch_norm=True)
    if kind == "classifier":
        est.partial_fit(X, y, classes=np.unique(y))
    else:
        est.partial_fit(X, y)
    copy = pickle.loads(pickle.dumps(est))
    assert_array_equal(copy.predict(X), est.predict(X))
    est.partial_fit(X, y)  # the optimizer state and counters travel with the pickle
    copy.partial_fit(X, y)
    assert_same_params(est, copy, rtol=0)
    assert_array_equal(copy.predict(X), est.predict(X))
    # replaced attributes are the truth for the next fit, as in scikit-learn
    copy.coefs_[0] = copy.coefs_[0] * 0.0
    copy.partial_fit(X, y)
    assert not np.allclose(copy.coefs_[1], est.coefs_[1])
