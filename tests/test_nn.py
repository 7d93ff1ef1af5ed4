"""The layer API fastnn.nn: gradients against finite differences, learning on
real data, backends agreeing, saving, divergence, allocation-free steps, and
errors on bad input."""

import tracemalloc

import numpy as np
import pytest
from conftest import ALL_BACKENDS, RTOL

import fastnn
from fastnn import nn
from fastnn.backends.reference import ACTIVATIONS, KERNELS, NumpyBackend
from fastnn.testing import assert_gradients


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: BLAS and OpenMP threads only add synchronisation,
    which on a shared machine can cost seconds."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def data(n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d))


def check_gradient(layers, loss, y, X=None, sample_weight=None, **options):
    """loss_and_gradient against central differences (fastnn.testing, rtol 1e-5,
    atol 1e-7 * max(1, largest derivative)), and deterministic."""
    X = data() if X is None else X
    model = nn.Sequential(layers, loss=loss, seed=3, dtype=np.float64, backend="numpy", **options)
    model.build(X.shape[1])
    loss_value, grad = model.loss_and_gradient(X, y, sample_weight)
    assert np.isfinite(loss_value)
    assert_gradients(model, X, y, sample_weight=sample_weight, rtol=1e-5, eps=1e-6)
    # loss_and_gradient is deterministic (dropout masks and running statistics fixed)
    again = model.loss_and_gradient(X, y, sample_weight)
    assert again[0] == loss_value
    np.testing.assert_array_equal(again[1], grad)


REGRESSION_Y = data(40, 2, seed=1)


# ------------------------------------------------------- finite differences
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_backward_matches_finite_differences(activation):
    check_gradient([nn.Dense(4, activation), nn.Dense(2)], "mse", REGRESSION_Y)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_layer_backward_matches_finite_differences(activation):
    check_gradient([nn.Dense(4), nn.Activation(activation), nn.Dense(2)], "mse", REGRESSION_Y)


def test_batchnorm_backward_matches_finite_differences():
    check_gradient([nn.Dense(5, "tanh"), nn.BatchNorm(), nn.Dense(2)], "mse", REGRESSION_Y)


def test_dropout_backward_matches_finite_differences():
    check_gradient([nn.Dense(6, "tanh"), nn.Dropout(0.4), nn.Dense(2)], "mse", REGRESSION_Y)


def test_layers_before_the_first_trained_layer():
    # dropout and batch norm on the input: no gradient flows into them
    check_gradient([nn.Dropout(0.3), nn.BatchNorm(), nn.Dense(4, "elu"), nn.Dense(2)], "mse", REGRESSION_Y)


LABELS = np.arange(40) % 3
LOSS_CASES = {
    "sparse_ce": ("sparse_categorical_crossentropy", 3, LABELS),
    "prob_ce": ("categorical_crossentropy", 3,
                np.random.default_rng(2).dirichlet(np.ones(3), 40)),
    "binary_ce": ("binary_crossentropy", 1, LABELS % 2),
    "multilabel_ce": ("binary_crossentropy", 3, np.random.default_rng(3).random((40, 3)) > 0.5),
    "mse": ("mse", 2, REGRESSION_Y),
    "mae": ("mae", 2, REGRESSION_Y),
    "huber": (nn.Huber(0.5), 2, REGRESSION_Y),
    "hinge_binary": ("hinge", 1, LABELS % 2),
    "hinge_ovr": ("hinge", 3, LABELS),
}


@pytest.mark.parametrize("case", sorted(LOSS_CASES))
def test_loss_gradients_match_finite_differences(case):
    loss, outputs, y = LOSS_CASES[case]
    check_gradient([nn.Dense(4, "tanh"), nn.Dense(outputs)], loss, y)


def test_penalties_and_sample_weight_gradients():
    w = np.random.default_rng(4).random(40) + 0.1
    check_gradient([nn.Dense(4, "tanh", l2=0.3), nn.Dense(3, "relu", l1=0.2), nn.Dense(2)], "mse",
                   REGRESSION_Y, sample_weight=w, l2=0.1)
    check_gradient([nn.Dense(4, "tanh"), nn.Dense(2)], "mse", REGRESSION_Y, l2=0.5,
                   penalty_per_sample=True)


def test_penalty_value_is_part_of_the_loss():
    X = data()
    plain = nn.Sequential([nn.Dense(4, "tanh"), nn.Dense(2)], loss="mse", seed=0, dtype=np.float64)
    penal = nn.Sequential([nn.Dense(4, "tanh"), nn.Dense(2)], loss="mse", seed=0, dtype=np.float64,
                          l2=0.5)
    base, _ = plain.loss_and_gradient(X, REGRESSION_Y)
    value, _ = penal.loss_and_gradient(X, REGRESSION_Y)
    W = [layer.W for layer in penal.layers]
    np.testing.assert_allclose(value - base, 0.25 * sum((w * w).sum() for w in W), rtol=1e-12)
    np.testing.assert_allclose(penal.evaluate(X, REGRESSION_Y)["loss"], value, rtol=1e-12)


# --------------------------------------------------------------- learning
def test_learns_xor():
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([0, 1, 1, 0])
    model = nn.Sequential([nn.Dense(8, "tanh"), nn.Dense(1)], loss="binary_crossentropy",
                          optimizer=nn.Adam(0.05), seed=0)
    history = model.fit(X, y, epochs=300, batch_size=None, verbose=0)
    np.testing.assert_array_equal(model.predict_classes(X), y)
    assert history["loss"][-1] < 0.05 < history["loss"][0]
    proba = model.predict_proba(X)[:, 0]
    assert ((proba > 0.5) == y).all() and ((proba > 0) & (proba < 1)).all()


def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


def test_digits_test_accuracy_at_least_97_percent():
    Xtr, Xte, ytr, yte = digits_split()
    model = nn.Sequential([nn.Dense(256, "relu"), nn.Dropout(0.2), nn.Dense(10)],
                          loss="sparse_categorical_crossentropy", optimizer=nn.Adam(2e-3), seed=0)
    history = model.fit(Xtr, ytr, epochs=40, batch_size=64, verbose=0)
    accuracy = (model.predict_classes(Xte) == yte).mean()
    assert accuracy >= 0.97, accuracy
    assert history["accuracy"][-1] > 0.99
    np.testing.assert_allclose(model.evaluate(Xte, yte)["accuracy"], accuracy)
    proba = model.predict(Xte)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)


def test_diabetes_regression_against_linear_and_mean_baselines():
    """An MLP on 442 samples of 10 features is not expected to beat linear
    regression (the target is nearly linear in the features); what is checked:
    it learns (R^2 far above the mean predictor's <= 0) and its test error is
    within 10% of LinearRegression's."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_squared_error, r2_score
    from sklearn.model_selection import train_test_split

    X, y = load_diabetes(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0)
    mu, sd = Xtr.mean(axis=0), Xtr.std(axis=0)
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    ym, ys = ytr.mean(), ytr.std()
    model = nn.Sequential([nn.Dense(8, "relu"), nn.Dense(1)], loss="mse", l2=1e-2, seed=0,
                          dtype=np.float64)
    model.fit(Xtr, (ytr - ym) / ys, epochs=300, batch_size=32, verbose=0)
    pred = model.predict(Xte)[:, 0] * ys + ym
    linear = LinearRegression().fit(Xtr, ytr).predict(Xte)
    mean = np.full_like(yte, ym)
    assert r2_score(yte, mean) <= 0
    assert r2_score(yte, pred) > 0.3
    assert mean_squared_error(yte, pred) < 1.1 * mean_squared_error(yte, linear)


def test_softmax_last_layer_is_fused_into_the_loss():
    """Keras style (softmax in the last layer) trains exactly like logits + loss."""
    Xtr, _, ytr, _ = digits_split()
    runs = []
    for last in (nn.Dense(10, "softmax"), nn.Dense(10)):
        model = nn.Sequential([nn.Dense(16, "relu"), last], loss="sparse_categorical_crossentropy",
                              seed=1, backend="numpy")
        model.fit(Xtr[:300], ytr[:300], epochs=2, verbose=0)
        runs.append((model.get_flat_params().copy(), model.predict(Xtr[:50])))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("batch_size", [None, 1, 7, 1000])
def test_full_batch_mini_batch_and_per_sample(batch_size):
    X = data(60, 3)
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3
    model = nn.Sequential([nn.Dense(8, "tanh"), nn.Dense(1)], loss="mse", optimizer=nn.SGD(0.05), seed=0)
    history = model.fit(X, y, epochs=15, batch_size=batch_size, verbose=0)
    assert history["loss"][-1] < 0.5 * history["loss"][0]


@pytest.mark.parametrize("optimizer", [
    nn.SGD(0.1), nn.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    nn.SGD(0.05, momentum=0.9, lr_in_velocity=True), nn.Adagrad(0.1), nn.RMSprop(0.01),
    nn.RMSprop(0.005, momentum=0.5, centered=True), nn.Adadelta(1.0), nn.Adam(0.01),
    nn.Adam(0.01, amsgrad=True, sklearn_eps=True), nn.AdamW(0.01),
], ids=repr)
def test_every_optimizer_trains(optimizer):
    X = data(80, 4)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    model = nn.Sequential([nn.Dense(16, "relu"), nn.Dense(2)], loss="categorical_crossentropy",
                          optimizer=optimizer, seed=0)
    history = model.fit(X, y, epochs=30, batch_size=16, verbose=0)
    assert history["loss"][-1] < 0.7 * history["loss"][0]


@pytest.mark.parametrize("loss,y", [
    ("mae", None), (nn.Huber(), None),
    ("hinge", None), ("binary_crossentropy", None),
], ids=["mae", "huber", "hinge", "multilabel"])
def test_other_losses_train(loss, y):
    X = data(80, 4, 7)
    if loss == "hinge":
        y = X[:, :3].argmax(axis=1)
    elif loss == "binary_crossentropy":
        y = X[:, :3] + 0.5 * X[:, 1:] > 0
    else:
        y = np.tanh(X[:, :2] * 2)
    outputs = 3 if np.ndim(y) == 1 else y.shape[1]
    model = nn.Sequential([nn.Dense(32, "tanh"), nn.Dense(outputs)], loss=loss,
                          optimizer=nn.Adam(0.01), seed=0)
    history = model.fit(X, y, epochs=40, batch_size=16, verbose=0)
    assert history["loss"][-1] < 0.6 * history["loss"][0]


def test_sample_weight_scales_samples_and_zero_weight_batches_are_skipped():
    X = data(60, 3)
    y = X @ np.array([1.0, -2.0, 0.5])
    w = np.r_[np.zeros(20), np.full(40, 2.0)]  # the first two batches weigh nothing

    def trained(X, y, w):
        model = nn.Sequential([nn.Dense(1)], loss="mse", optimizer=nn.SGD(0.1), seed=0, dtype=np.float64)
        model.fit(X, y, epochs=5, batch_size=10, shuffle=False, sample_weight=w, verbose=0)
        return model.get_flat_params()

    # zero-weight samples are as good as absent; a constant weight changes nothing
    np.testing.assert_allclose(trained(X, y, w), trained(X[20:], y[20:], None), rtol=1e-12)


# ------------------------------------------------ scikit-learn conventions
def test_sgd_and_adam_follow_scikit_learns_update_rules():
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer

    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(50) for _ in range(6)]
    backend = fastnn.get_backend("numpy")
    cases = [
        (nn.SGD(0.1, momentum=0.9, nesterov=True, lr_in_velocity=True, schedule=nn.InverseScaling(0.5)),
         lambda p: SGDOptimizer([p], 0.1, "invscaling", momentum=0.9, nesterov=True, power_t=0.5)),
        (nn.Adam(0.01, sklearn_eps=True, eps=1e-3),
         lambda p: AdamOptimizer([p], 0.01, epsilon=1e-3)),
    ]
    for ours, make_theirs in cases:
        p_ours = rng.standard_normal(50)
        p_theirs = p_ours.copy()
        theirs = make_theirs(p_theirs)
        ours.bind(p_ours)
        for i, g in enumerate(grads):
            ours.step(backend, p_ours, g, n_samples=10)
            theirs.update_params([p_theirs], [g])
            if i % 2 == 1:  # an "epoch" of two batches of 10 samples
                ours.end_epoch(loss=1.0)
                theirs.iteration_ends(10 * (i + 1))
            np.testing.assert_allclose(p_ours, p_theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_reproduces_scikit_learns_mlp_training(solver):
    """With scikit-learn's conventions (its initialisation drawn from a RandomState,
    penalty per batch sample, its Adam eps and SGD velocity, invscaling), three
    epochs of MLPClassifier are reproduced."""
    from sklearn.neural_network import MLPClassifier

    X, y = digits_split()[0::2]
    if solver == "adam":
        opt, lr = nn.Adam(1e-3, sklearn_eps=True), 1e-3
    else:
        opt, lr = nn.SGD(0.1, momentum=0.9, nesterov=True, lr_in_velocity=True,
                         schedule=nn.InverseScaling(0.5)), 0.1
    clf = MLPClassifier((16,), solver=solver, alpha=1e-3, batch_size=50, shuffle=False, max_iter=3,
                        random_state=0, learning_rate_init=lr, learning_rate="invscaling", momentum=0.9)
    clf.fit(X, y)
    model = nn.Sequential([nn.Dense(16, "relu"), nn.Dense(10)], loss="sparse_categorical_crossentropy",
                          optimizer=opt, l2=1e-3, penalty_per_sample=True, dtype=np.float64, input_dim=64)
    rng = np.random.RandomState(0)  # scikit-learn's draws, in its order
    for layer in model.layers:
        layer.W[...], layer.b[...] = model.backend.init_weights(
            "sklearn", layer.n_in, layer.units, rng=rng, dtype=np.float64, activation="relu")
    history = model.fit(X, y, epochs=3, batch_size=50, shuffle=False, verbose=0)
    np.testing.assert_allclose(history["loss"], clf.loss_curve_, rtol=1e-12)
    for layer, W, b in zip(model.layers, clf.coefs_, clf.intercepts_):
        np.testing.assert_allclose(layer.W, W, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(layer.b, b, rtol=1e-10, atol=1e-13)


def test_schedules():
    def rates(schedule, losses):
        opt = nn.SGD(1.0, schedule=schedule)
        opt.bind(np.zeros(1))
        out = []
        for loss in losses:
            out.append(opt.lr)
            if opt.end_epoch(loss):
                out.append("stop")
                break
        return out

    ones = [1.0] * 6
    assert rates(nn.StepDecay(2, 0.5), ones) == [1, 1, 0.5, 0.5, 0.25, 0.25]
    np.testing.assert_allclose(rates(nn.ExponentialDecay(0.9), ones), 0.9 ** np.arange(6))
    np.testing.assert_allclose(rates(nn.CosineDecay(4, 0.1), ones),
                               0.1 + 0.45 * (1 + np.cos(np.pi * np.minimum(np.arange(6), 4) / 4)))
    opt = nn.SGD(1.0, schedule=nn.InverseScaling(0.5, per="step"))
    opt.bind(np.zeros(1))
    assert opt.lr == 1.0 and [opt.schedule.lr_at(t) for t in (4, 9)] == [0.5, 1 / 3]
    # plateau: no improvement by tol for more than `patience` epochs divides the rate
    assert rates(nn.ReduceOnPlateau(0.5, patience=1, tol=0.1), [3, 2, 1.95, 1.9, 1.0, 1.0, 1.0]) == \
        [1, 1, 1, 1, 0.5, 0.5, 0.5]
    # scikit-learn's adaptive: divide by 5 after a plateau, stop once the rate is <= 1e-6
    flat = rates("adaptive", [1.0] * 40)
    assert flat[:4] == [1, 1, 1, 1] and flat[4] == pytest.approx(0.2) and flat[-1] == "stop"
    assert flat[-2] <= 1e-6


def test_initialisers_default_to_the_activation():
    """He for the ReLU family, LeCun for selu, Glorot otherwise; or as named, or a callable."""
    backend = fastnn.get_backend("numpy")
    model = nn.Sequential([nn.Dense(30, "relu"), nn.Dense(20, "selu"), nn.Dense(10, "tanh"),
                           nn.Dense(8, "logistic", init="sklearn"), nn.Dense(5, init="he_normal"),
                           nn.Dense(3, init=lambda fan_in, fan_out, rng, dtype: (
                               np.full((fan_in, fan_out), 0.5, dtype), np.ones(fan_out, dtype)))],
                          seed=7, dtype=np.float64, input_dim=40)
    rng = np.random.default_rng(7)
    methods = ["he_uniform", "lecun_normal", "glorot_uniform", "sklearn", "he_normal"]
    for layer, method, fan_in in zip(model.layers, methods, [40, 30, 20, 10, 8]):
        W, b = backend.init_weights(method, fan_in, layer.units, rng=rng, dtype=np.float64,
                                    activation=layer.activation)
        np.testing.assert_array_equal(layer.W, W)
        np.testing.assert_array_equal(layer.b, b)
    assert (model.layers[-1].W == 0.5).all() and (model.layers[-1].b == 1).all()


def test_progress_bar_or_lines_with_verbose_1(capsys):
    X, y = data(50, 3), np.arange(50) % 2
    model = nn.Sequential([nn.Dense(2)], loss="sparse_categorical_crossentropy", seed=0)
    model.fit(X, y, epochs=3, verbose=1)
    out = capsys.readouterr()
    try:
        import tqdm  # noqa: F401
    except ImportError:
        assert out.out.count("epoch") == 3
    else:
        assert "3/3" in out.err and out.out == ""


# -------------------------------------------------------------- reproducible
def small_classifier(seed=0, **options):
    return nn.Sequential([nn.Dense(12, "relu"), nn.BatchNorm(), nn.Dropout(0.2), nn.Dense(3)],
                         loss="sparse_categorical_crossentropy", seed=seed, **options)


def test_same_seed_same_weights_and_curve():
    X, y = data(90, 4), np.arange(90) % 3
    runs = []
    for seed in (5, 5, 6):
        model = small_classifier(seed, backend="numpy")
        history = model.fit(X, y, epochs=3, batch_size=16, verbose=0)
        runs.append((model.get_flat_params().copy(), history["loss"]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert not np.array_equal(runs[0][0], runs[2][0])


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
def test_every_backend_gives_the_same_history(backend_name, dtype):
    X, y = data(90, 4), np.arange(90) % 3
    runs, initial = {}, {}
    for name in ("numpy", backend_name):
        model = small_classifier(dtype=dtype, backend=name, optimizer=nn.Adam(0.01))
        initial[name] = model.build(4).get_flat_params().copy()
        history = model.fit(X, y, epochs=4, batch_size=16, validation_split=0.2, verbose=0)
        runs[name] = (model.get_flat_params().copy(), model.get_flat_state().copy(), history)
    (p_ref, s_ref, h_ref), (p, s, h) = runs["numpy"], runs[backend_name]
    # the same seed gives the same initial weights (equivalence tolerance); after
    # 4 epochs rounding differences have grown, hence the looser tolerance below
    np.testing.assert_allclose(initial[backend_name], initial["numpy"], rtol=RTOL[np.dtype(dtype)])
    rtol = 1e-4 if dtype == np.float32 else 1e-9
    for key in h_ref:
        np.testing.assert_allclose(h[key], h_ref[key], rtol=rtol, err_msg=key)
    np.testing.assert_allclose(p, p_ref, rtol=rtol, atol=rtol * np.abs(p_ref).max())
    np.testing.assert_allclose(s, s_ref, rtol=rtol, atol=rtol * np.abs(s_ref).max())


def test_one_call_switches_backend():
    X, y = data(90, 4), np.arange(90) % 3
    model = small_classifier(dtype=np.float64)
    model.fit(X, y, epochs=1, verbose=0)
    expected = model.predict(X)
    for name in ALL_BACKENDS:
        model.set_backend(None)  # follow the current backend
        with fastnn.use_backend(name):
            assert model.backend.name == name
            np.testing.assert_allclose(model.predict(X), expected, rtol=1e-10)
        model.set_backend(name)
        assert model.backend.name == name
        np.testing.assert_allclose(model.predict(X), expected, rtol=1e-10)


# ---------------------------------------------------------------- models are data
class CountingBackend(NumpyBackend):
    """The reference, counting kernel runs: calls of the implementations
    (`_adam_step`, ...), which the public methods call after their checks and the
    training loop calls directly."""

    def __init__(self):
        self.calls = {}

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name[:1] == "_" and name[1:] in KERNELS:
            calls = super().__getattribute__("calls")
            calls[name[1:]] = calls.get(name[1:], 0) + 1
        return attr


def test_parameters_are_views_of_one_buffer_and_one_optimizer_call_per_step():
    backend = CountingBackend()
    model = nn.Sequential([nn.Dense(8, "relu", l2=0.1), nn.BatchNorm(), nn.Dense(5, "tanh", l2=0.1),
                           nn.Dense(3, l2=0.1)], loss="sparse_categorical_crossentropy", seed=0,
                          backend=backend)
    model.build(4)
    flat = model.get_flat_params()
    layers = [model.layers[0], model.layers[2], model.layers[3]]
    for tensor in [layer.W for layer in layers] + [layer.b for layer in layers] + \
            [model.layers[1].params["gamma"], model.layers[1].params["beta"]]:
        assert np.shares_memory(tensor, flat)
    # the weights block comes first: W1, W2, W3, then biases and batch-norm parameters
    assert model.n_weights == 4 * 8 + 8 * 5 + 5 * 3
    assert np.shares_memory(model.layers[0].W, flat[:32])
    flat[0] = 42.0
    assert model.layers[0].W[0, 0] == 42.0
    X, y = data(64, 4), np.arange(64) % 3
    backend.calls.clear()
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    # equal L2 penalties on every layer: folded into the optimizer step, whose two
    # kernel calls per step cover the weights block (with the penalty's gradient)
    # and the rest of the buffer; no pass of its own over the weights
    assert backend.calls["adam_step"] == 2 * 8
    assert "weight_penalty" not in backend.calls
    backend.calls.clear()
    model.compile(l2=0.0)
    model.layers[2].l1 = 0.01  # no longer one L2 term: the penalties run as kernels of their own
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    assert backend.calls["adam_step"] == 8  # one per step, over the whole buffer
    assert backend.calls["weight_penalty"] == 3 * 8  # one per layer
    assert backend.calls["dense_forward"] == 3 * 8
    assert backend.calls["dense_backward"] == 3 * 8


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
@pytest.mark.parametrize("optimizer", [
    lambda: nn.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01), lambda: nn.Adam(0.01),
    lambda: nn.RMSprop(0.01, momentum=0.5, centered=True), lambda: nn.Adagrad(0.1),
    lambda: nn.Adadelta(weight_decay=0.001), lambda: nn.Adam(0.01, sklearn_eps=True, amsgrad=True),
], ids=["sgd", "adam", "rmsprop", "adagrad", "adadelta", "amsgrad"])
def test_optimizer_step_folds_an_l2_penalty_into_its_kernel(backend_name, optimizer):
    backend = fastnn.get_backend(backend_name)
    rng = np.random.default_rng(0)
    params0, k, l2 = rng.standard_normal(50), 30, 0.3
    separate, folded = optimizer(), optimizer()
    p1, p2 = params0.copy(), params0.copy()
    separate.bind(p1)
    folded.bind(p2)
    for _ in range(3):
        grads = rng.standard_normal(50)
        g1 = grads.copy()
        backend.weight_penalty(p1[:k], g1[:k], l2=l2)  # adds l2 * p1[:k]
        separate.step(backend, p1, g1)
        folded.step(backend, p2, grads.copy(), l2=l2, l2_size=k)
        np.testing.assert_allclose(p2, p1, rtol=1e-12, atol=1e-14)
        for name in separate.state_names:
            np.testing.assert_allclose(folded.state[name], separate.state[name], rtol=1e-12, atol=1e-14)
    assert folded.t == separate.t == 3


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop", "adagrad", "adadelta"])
def test_decoupled_weight_decay_scales_the_parameters_before_the_step(name):
    """decoupled_weight_decay=True: params *= 1 - lr * weight_decay, then the
    plain step (AdamW's rule, for every optimizer); saved and restored with the
    optimizer's config."""
    backend = fastnn.get_backend("numpy")
    rng = np.random.default_rng(1)
    cls, lr, wd = nn.optimizers.OPTIMIZERS[name], 0.05, 0.4
    plain, decayed = cls(lr), cls(lr, weight_decay=wd, decoupled_weight_decay=True)
    assert not decayed.couples_l2 and plain.couples_l2
    p_plain = rng.standard_normal(20)
    p_decayed = p_plain.copy()
    plain.bind(p_plain)
    decayed.bind(p_decayed)
    for _ in range(3):
        grads = rng.standard_normal(20)
        np.copyto(p_plain, p_decayed * (1 - lr * wd))
        plain.step(backend, p_plain, grads.copy())
        decayed.step(backend, p_decayed, grads.copy())
        np.testing.assert_allclose(p_decayed, p_plain, rtol=1e-13, atol=1e-15)
    # a call the kernel refuses changes nothing
    before = p_decayed.copy()
    with pytest.raises(ValueError, match="grad must have shape"):
        decayed.step(backend, p_decayed, np.zeros(19))
    np.testing.assert_array_equal(p_decayed, before)
    again = nn.optimizers.optimizer_from_config(decayed.config())
    assert again.decoupled_weight_decay and again.weight_decay == wd
    assert nn.optimizers.optimizer_from_config(nn.AdamW().config()).decoupled_weight_decay


def test_optimizer_step_checks_arrays_it_is_not_bound_to():
    backend = fastnn.get_backend("numpy")
    opt = nn.Adam(0.01)
    params = np.zeros(6)
    opt.bind(params)
    with pytest.raises(ValueError, match="grad must have shape"):
        opt.step(backend, params, np.zeros(5))
    with pytest.raises(TypeError, match="grad has dtype float32"):
        opt.step(backend, params, np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="m must have shape"):  # not the bound buffer: state mismatch
        opt.step(backend, np.zeros(4), np.zeros(4))
    adamw = nn.AdamW()
    adamw.bind(params)
    with pytest.raises(ValueError, match="cannot fold an L2 penalty"):
        adamw.step(backend, params, np.zeros(6), l2=0.1, l2_size=3)
    assert adamw.t == 0


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
def test_dense_layer_checks_inputs_the_model_did_not_make(backend_name):
    """Inside the model a Dense layer calls the kernel implementation; called with
    a non-contiguous, wrongly typed or wrongly shaped input it goes through the
    public kernel, which copies or rejects it."""
    model = nn.Sequential([nn.Dense(4, "tanh"), nn.Dense(2)], seed=0, backend=backend_name,
                          dtype=np.float64, input_dim=3)
    backend, layer, mode = model.backend, model.layers[0], nn.layers.Pass(training=False)
    X = data(5, 3)
    expected = layer.forward(backend, X, {}, mode).copy()
    got = layer.forward(backend, np.asfortranarray(X), {}, mode)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    with pytest.raises(TypeError, match="dtype"):
        layer.forward(backend, X.astype(np.float32), {}, mode)
    with pytest.raises(ValueError, match="x must have shape"):
        layer.forward(backend, data(5, 2), {}, mode)
    ws = {}
    layer.forward(backend, X, ws, mode)
    with pytest.raises(ValueError, match="dy must have shape"):
        layer.backward(backend, np.ones((5, 3)), ws, need_dx=True)


def test_training_step_allocates_nothing_after_the_first():
    backend = fastnn.get_backend("numpy")
    model = nn.Sequential([nn.Dense(64, "gelu"), nn.BatchNorm(), nn.Dropout(0.1), nn.Dense(32, "tanh"),
                           nn.Activation("relu"), nn.Dense(10)],
                          loss="sparse_categorical_crossentropy", seed=0, backend=backend)
    X, y = data(128, 20).astype(np.float32), np.arange(128) % 10
    model.train_step(X, y)
    buffers = {(i, key): a for i, ws in enumerate(model._workspaces[(128, 20)][0]) for key, a in ws.items()
               if isinstance(a, np.ndarray) and key != "x"}
    state = [a for a in model.optimizer.state.values()]
    params, grads = model.get_flat_params(), model._grads
    tracemalloc.start()
    try:
        model.train_step(X, y)
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(10):
            model.train_step(X, y)
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # a few hundred bytes of Python objects at most; one new (128, 64) float32
    # buffer alone would be 32 KiB
    assert growth < 4096, growth
    after = {(i, key): a for i, ws in enumerate(model._workspaces[(128, 20)][0]) for key, a in ws.items()
             if isinstance(a, np.ndarray) and key != "x"}
    assert after.keys() == buffers.keys()
    assert all(after[k] is buffers[k] for k in buffers)
    assert all(a is b for a, b in zip(model.optimizer.state.values(), state))
    assert model.get_flat_params() is params and model._grads is grads


# --------------------------------------------------------------- L-BFGS access
def test_flat_params_for_scipy_lbfgs():
    from scipy.optimize import minimize

    X = data(60, 3)
    y = np.sin(X[:, 0]) + X[:, 1] ** 2
    model = nn.Sequential([nn.Dense(10, "tanh"), nn.Dense(1)], loss="mse", seed=0, dtype=np.float64)
    model.build(3)
    start = model.loss_and_gradient(X, y)[0]

    def objective(theta):
        model.set_flat_params(theta)
        return model.loss_and_gradient(X, y)

    result = minimize(objective, model.get_flat_params().copy(), jac=True, method="L-BFGS-B",
                      options={"maxiter": 200})
    model.set_flat_params(result.x)
    assert result.fun < 0.1 * start
    np.testing.assert_allclose(model.evaluate(X, y)["loss"], result.fun, rtol=1e-10)


# ------------------------------------------------------------------ save / load
def test_save_load_gives_identical_predictions_and_training(tmp_path):
    X, y = data(90, 4), np.arange(90) % 3
    model = small_classifier(optimizer=nn.Adam(0.01, schedule=nn.StepDecay(1, 0.5)))
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = nn.load(path)
    assert loaded.get_flat_params().dtype == np.float32
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_array_equal(loaded.get_flat_state(), model.get_flat_state())
    assert repr(loaded) == repr(model)
    # the optimizer state travels too: training resumes identically
    for m in (model, loaded):
        m.fit(X, y, epochs=2, batch_size=16, verbose=0, seed=9)
    np.testing.assert_array_equal(loaded.get_flat_params(), model.get_flat_params())
    # the file holds no pickled objects
    with np.load(path, allow_pickle=False) as archive:
        assert all(archive[key].dtype != object for key in archive.files)


def test_corrupted_or_foreign_files_raise_value_error(tmp_path):
    model = small_classifier()
    model.build(4)
    good = tmp_path / "good.npz"
    model.save(good)
    raw = good.read_bytes()
    files = {
        "random.npz": np.random.default_rng(0).bytes(1000),
        "truncated.npz": raw[: len(raw) // 2],
        "text.npz": b"hello",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    np.savez(tmp_path / "foreign.npz", a=np.arange(3))
    np.save(tmp_path / "single.npy", np.arange(3))
    np.savez(tmp_path / "baddesc.npz", description=np.array("{not json"), params=np.zeros(3),
             state=np.zeros(0))
    with np.load(good) as archive:
        arrays = dict(archive)
    np.savez(tmp_path / "wrongsize.npz", **{**arrays, "params": arrays["params"][:-1]})
    np.savez(tmp_path / "pickled.npz", description=np.array([{"a": 1}], dtype=object),
             params=np.zeros(3), state=np.zeros(0))
    for name in list(files) + ["foreign.npz", "single.npy", "baddesc.npz", "wrongsize.npz", "pickled.npz"]:
        with pytest.raises(ValueError, match="fastnn model file"):
            nn.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        nn.load(tmp_path / "missing.npz")


# --------------------------------------------------------- callbacks, history
def test_early_stopping_restores_the_best_epoch():
    X = data(200, 5)
    y = (X[:, 0] > 0).astype(int)
    y[:60] = 1 - y[:60]  # noisy labels: the network overfits, val_loss turns up
    stopper = nn.EarlyStopping(patience=3)
    model = nn.Sequential([nn.Dense(64, "relu"), nn.Dense(2)], loss="sparse_categorical_crossentropy",
                          optimizer=nn.Adam(0.02), seed=0)
    history = model.fit(X, y, epochs=200, batch_size=16, validation_split=0.3, verbose=0,
                        callbacks=[stopper])
    epochs = len(history["loss"])
    # epochs counted from 0, as in Keras's callbacks and history.epoch
    assert epochs < 200 and stopper.stopped_epoch == epochs - 1 == history.epoch[-1]
    assert stopper.best_epoch == epochs - 4
    best = min(history["val_loss"])
    assert history["val_loss"][stopper.best_epoch] == best
    np.testing.assert_allclose(model.evaluate(X[140:], y[140:])["loss"], best, rtol=1e-6)
    with pytest.raises(ValueError, match="validation"):
        model.fit(X, y, epochs=2, verbose=0, callbacks=[nn.EarlyStopping()])


def test_history_is_dict_like_and_verbosity(capsys):
    X, y = data(50, 3), np.arange(50) % 2
    model = nn.Sequential([nn.Dense(4, "relu"), nn.Dense(2)], loss="sparse_categorical_crossentropy",
                          seed=0)
    history = model.fit(X, y, epochs=3, validation_data=(X[:10], y[:10]), verbose=0)
    assert capsys.readouterr().out == ""
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert history.history is history and history.epoch == [0, 1, 2] and model.history is history
    assert all(len(v) == 3 for v in history.values())
    model.fit(X, y, epochs=2, verbose=2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2 - loss")


# --------------------------------------------------------------- divergence
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow is the point
def test_divergence_stops_with_the_epoch_and_step_and_keeps_finite_weights():
    X = data(64, 4) * 100
    y = X @ np.ones(4) * 1e3
    model = nn.Sequential([nn.Dense(16, "relu"), nn.Dense(1)], loss="mse", optimizer=nn.SGD(1e3), seed=0)
    with pytest.raises(nn.TrainingDivergedError, match=r"epoch \d+, step \d+") as info:
        model.fit(X, y, epochs=5, batch_size=8, verbose=0)
    assert info.value.epoch >= 1 and info.value.step >= 1
    assert isinstance(info.value, FloatingPointError)
    assert np.isfinite(model.get_flat_params()).all()
    assert "before the failing step" in str(info.value)
    # an update that overflows the parameters themselves (finite loss, huge step):
    # the next step's loss is NaN and the epoch's starting parameters come back
    model = nn.Sequential([nn.Dense(4, "tanh"), nn.Dense(1)], loss="mse", optimizer=nn.SGD(1e38), seed=0)
    model.build(4)
    start = model.get_flat_params().copy()
    with pytest.raises(nn.TrainingDivergedError, match="start of the epoch") as info:
        model.fit(data(64, 4), np.full(64, 1e3), epochs=3, batch_size=8, verbose=0)
    assert (info.value.epoch, info.value.step) == (1, 2)
    np.testing.assert_array_equal(model.get_flat_params(), start)
    # the same at the epoch's last step (full batch): caught by the end-of-epoch check
    model = nn.Sequential([nn.Dense(4, "tanh"), nn.Dense(1)], loss="mse", optimizer=nn.SGD(1e38), seed=0)
    with pytest.raises(nn.TrainingDivergedError, match="start of the epoch") as info:
        model.fit(data(64, 4), np.full(64, 1e3), epochs=3, batch_size=None, verbose=0)
    assert (info.value.epoch, info.value.step) == (1, 1)
    np.testing.assert_array_equal(model.get_flat_params(), start)
    # train_step refuses the update: the parameters stay as they were
    big = nn.Sequential([nn.Dense(1)], loss="mse", seed=0)
    big.build(4)
    big.set_flat_params(np.full(5, 1e30))
    with pytest.raises(nn.TrainingDivergedError, match="not updated"):
        big.train_step(X.astype(np.float32) * 1e10, y)
    np.testing.assert_array_equal(big.get_flat_params(), np.float32(1e30))


# ----------------------------------------------------------------- bad input
def bad_input_cases():
    X, y = data(20, 3), np.arange(20) % 3

    def clf(**options):
        return nn.Sequential([nn.Dense(4, "relu"), nn.Dense(3)], loss="sparse_categorical_crossentropy",
                             seed=0, **options)

    fitted = clf()
    fitted.build(3)
    X_nan, X_inf = X.copy(), X.copy()
    X_nan[3, 1], X_inf[0, 0] = np.nan, np.inf
    return {
        "features": (lambda: fitted.fit(data(20, 4), y, verbose=0), ValueError, "4 features.*built for 3"),
        "predict-features": (lambda: fitted.fit(X, y, verbose=0).model.predict(data(5, 2)), ValueError,
                             "2 features.*built for 3"),
        "X-1d": (lambda: clf().fit(X[:, 0], y, verbose=0), ValueError, "2-D"),
        "X-strings": (lambda: clf().fit(np.array([["a"]]), [0], verbose=0), TypeError, "numbers"),
        "label-shape": (lambda: clf().fit(X, y[:, None] * np.ones(2), verbose=0), ValueError, "shape"),
        "label-count": (lambda: clf().fit(X, y[:10], verbose=0), ValueError, "20 samples"),
        "label-count-classes": (lambda: clf().fit(X, np.arange(20) % 4, verbose=0), ValueError,
                                "4 distinct labels.*3 classes"),
        "label-unknown": (lambda: clf().fit(X, y, verbose=0).model.fit(X, y - 1, verbose=0), ValueError,
                          "label -1, which is not among"),
        "label-fraction": (lambda: clf().fit(X, y + 0.5, verbose=0), ValueError, "integer"),
        "X-nan": (lambda: clf().fit(X_nan, y, verbose=0), ValueError, "NaN"),
        "X-inf": (lambda: clf().fit(X_inf, y, verbose=0), ValueError, "infinity"),
        "y-nan": (lambda: nn.Sequential([nn.Dense(1)], loss="mse").fit(X, np.full(20, np.nan), verbose=0),
                  ValueError, "NaN"),
        "float32-overflow": (lambda: clf().fit(X * 1e300, y, verbose=0), ValueError, "float32"),
        "empty": (lambda: clf().fit(np.empty((0, 3)), np.empty(0, int), verbose=0), ValueError, "empty"),
        "batch-0": (lambda: clf().fit(X, y, batch_size=0, verbose=0), ValueError, "batch_size"),
        "batch-negative": (lambda: clf().fit(X, y, batch_size=-4, verbose=0), ValueError, "batch_size"),
        "batch-float": (lambda: clf().fit(X, y, batch_size=2.5, verbose=0), TypeError, "batch_size"),
        "epochs-0": (lambda: clf().fit(X, y, epochs=0, verbose=0), ValueError, "epochs"),
        "unknown-loss": (lambda: clf().compile(loss="crossentropy"), ValueError, "loss"),
        "unknown-optimizer": (lambda: clf(optimizer="adamax"), ValueError, "optimizer"),
        "unknown-activation": (lambda: nn.Dense(3, "swish"), ValueError, "activation"),
        "unknown-init": (lambda: nn.Dense(3, init="orthogonal"), ValueError, "init"),
        "units-0": (lambda: nn.Dense(0), ValueError, "units"),
        "dropout-1": (lambda: nn.Dropout(1.0), ValueError, "rate"),
        "no-loss": (lambda: nn.Sequential([nn.Dense(1)]).fit(X, y, verbose=0), ValueError, "no loss"),
        "val-split": (lambda: clf().fit(X, y, validation_split=1.0, verbose=0), ValueError,
                      "validation_split"),
        "val-both": (lambda: clf().fit(X, y, validation_split=0.2, validation_data=(X, y), verbose=0),
                     ValueError, "not both"),
        "val-features": (lambda: clf().fit(X, y, validation_data=(data(5, 2), y[:5]), verbose=0),
                         ValueError, "X_val has 2 features"),
        "weights-negative": (lambda: clf().fit(X, y, sample_weight=-np.ones(20), verbose=0), ValueError,
                             "non-negative"),
        "weights-split-zero": (lambda: clf().fit(X, y, sample_weight=np.r_[np.zeros(16), np.ones(4)],
                                                 validation_split=0.2, verbose=0), ValueError, "sum to 0"),
        "softmax-1-output": (lambda: nn.Sequential([nn.Dense(1)], loss="categorical_crossentropy")
                             .fit(X, y, verbose=0), ValueError, "at least 2 outputs"),
        "bce-range": (lambda: nn.Sequential([nn.Dense(1)], loss="binary_crossentropy")
                      .fit(X, y, verbose=0), ValueError, "3 distinct labels.*2 classes"),
        "hinge-values": (lambda: nn.Sequential([nn.Dense(1)], loss="hinge").fit(X, y, verbose=0),
                         ValueError, "3 distinct labels.*2 classes"),
        "dtype": (lambda: clf(dtype=np.int32), TypeError, "dtype"),
        "backend": (lambda: clf(backend="cuda"), ValueError, "backend"),
        "set-params-shape": (lambda: fitted.set_flat_params(np.zeros(3)), ValueError, "shape"),
        "set-params-nan": (lambda: fitted.set_flat_params(np.full(fitted.n_params, np.nan)), ValueError,
                           "NaN"),
        "layer-twice": (lambda: nn.Sequential([nn.Dense(3)] * 2), ValueError, "already part of this model"),
        "callbacks": (lambda: clf().fit(X, y, callbacks=nn.EarlyStopping(), verbose=0), TypeError,
                      "callbacks"),
    }


BAD_INPUTS = bad_input_cases()


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_before_training(case):
    call, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        call()


def test_bad_input_leaves_the_model_untouched():
    X, y = data(20, 3), np.arange(20) % 3
    model = nn.Sequential([nn.Dense(4, "relu"), nn.Dense(3)], loss="sparse_categorical_crossentropy", seed=0)
    model.build(3)
    before = model.get_flat_params().copy()
    for bad in (np.arange(20) % 4, y + 0.5, y[:5]):
        with pytest.raises(ValueError):
            model.fit(X, bad, epochs=2, verbose=0)
    with pytest.raises(ValueError, match="sample_weight"):  # after the labels set classes_
        model.fit(X, np.array(list("abc"))[y], sample_weight=-np.ones(20), verbose=0)
    assert model.classes_ is None
    np.testing.assert_array_equal(model.get_flat_params(), before)
