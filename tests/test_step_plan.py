"""A training step bound to its arrays (fastnn/nn/plan.py, backend.fast.bind)
trains exactly as the step that walks the layers: the same parameters and losses
bit for bit, on every backend, and it is rebound or left aside whenever what it
was bound to changes."""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

import fastnn
from fastnn import MLPClassifier, MLPRegressor, nn
from fastnn.nn import model as model_module
from fastnn.nn.plan import StepPlan

BACKENDS = fastnn.available_backends()


def digits(n=500):
    X, y = load_digits(return_X_y=True)
    return X[:n] / 16.0, y[:n]


@pytest.fixture
def planned_steps(monkeypatch):
    """Counts the steps taken through a bound plan."""
    count = {"n": 0}
    original = StepPlan.run

    def counting(self, *args):
        count["n"] += 1
        return original(self, *args)
    monkeypatch.setattr(StepPlan, "run", counting)
    return count


def without_plans(monkeypatch):
    monkeypatch.setattr(model_module, "bind_step", lambda *args: None)


def fit(est, X, y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, **kwargs)


ESTIMATORS = [
    (MLPClassifier, dict()),
    (MLPClassifier, dict(solver="sgd", hidden_layer_sizes=(20, 10))),
    (MLPClassifier, dict(alpha=0.0, dtype="float32", activation="tanh")),
    (MLPClassifier, dict(shuffle=False, batch_size=64)),
    (MLPClassifier, dict(solver="rmsprop", activation="gelu")),
    (MLPRegressor, dict(solver="sgd", learning_rate="invscaling")),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, params", ESTIMATORS)
def test_estimator_fits_alike_with_and_without_bound_steps(backend, cls, params, planned_steps, monkeypatch):
    X, y = digits()
    target = y.astype(float) if cls is MLPRegressor else y
    weights = np.linspace(0.5, 1.5, len(y))
    options = dict(hidden_layer_sizes=(32,), max_iter=3, random_state=0, backend=backend)
    options.update(params)
    bound = fit(cls(**options), X, target, sample_weight=weights if cls is MLPClassifier else None)
    assert planned_steps["n"] > 0
    planned_steps["n"] = 0
    without_plans(monkeypatch)
    walked = fit(cls(**options), X, target, sample_weight=weights if cls is MLPClassifier else None)
    assert planned_steps["n"] == 0
    assert_array_equal(bound.model_.get_flat_params(), walked.model_.get_flat_params())
    assert bound.loss_curve_ == walked.loss_curve_


def train_steps(model, X, y, changes):
    """train_step over batches of 50 rows, making change i before step i."""
    losses = []
    for i, lo in enumerate(range(0, len(X), 50)):
        if i in changes:
            changes[i](model)
        losses.append(model.train_step(X[lo:lo + 50], y[lo:lo + 50]))
    return losses


def new_model(backend):
    return nn.Sequential([nn.Dense(24, "relu", l2=1e-3), nn.Dense(16, "elu"), nn.Dense(10)],
                         loss="sparse_categorical_crossentropy", optimizer=nn.Adam(1e-2), seed=3,
                         backend=backend, dtype=np.float64, input_dim=64)


def freeze_first(model):
    model.layers[0].trainable = False


CHANGES = {
    "none": {},
    "new optimizer": {3: lambda m: m.compile(optimizer=nn.SGD(0.05, momentum=0.9))},
    "new penalty": {3: lambda m: m.compile(l2=1e-2), 6: lambda m: m.compile(penalty_per_sample=True)},
    "frozen layer": {4: freeze_first},
    "other backend": {2: lambda m: m.set_backend("numpy"), 5: lambda m: m.set_backend(None)},
    "new loss": {4: lambda m: m.compile(loss="log_loss")},
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_train_steps_follow_every_change_of_the_model(backend, change, planned_steps, monkeypatch):
    X, y = digits(500)
    with fastnn.use_backend(backend):
        bound_losses = train_steps(model := new_model(None), X, y, dict(CHANGES[change]))
        bound = model.get_flat_params().copy()
        assert planned_steps["n"] > 0
        without_plans(monkeypatch)
        walked_losses = train_steps(model := new_model(None), X, y, dict(CHANGES[change]))
    assert_array_equal(bound, model.get_flat_params())
    assert bound_losses == walked_losses


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow is the point
@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence_in_a_bound_step_stops_as_without_it(backend, planned_steps, monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 4))
    y = X @ np.ones(4)
    found = []
    for bind in (True, False):
        if not bind:
            without_plans(monkeypatch)
        model = nn.Sequential([nn.Dense(8, "tanh"), nn.Dense(1)], loss="mse", optimizer=nn.SGD(5.0), seed=0,
                              backend=backend, dtype=np.float64)
        with pytest.raises(nn.TrainingDivergedError) as info:
            model.fit(X, y, epochs=30, batch_size=8, verbose=0)
        found.append((info.value.epoch, info.value.step, model.get_flat_params().copy()))
        if bind:
            assert planned_steps["n"] > 8
    assert found[0][:2] == found[1][:2]
    assert np.isfinite(found[0][2]).all()
    assert_array_equal(found[0][2], found[1][2])


def test_fit_releases_the_bound_steps_that_hold_its_data():
    X, y = digits(300)
    model = nn.Sequential([nn.Dense(8, "relu"), nn.Dense(10)], loss="sparse_categorical_crossentropy",
                          seed=0, dtype=np.float64)
    # the whole data as one batch: the plan is bound to X itself, and dropped
    model.fit(X, y, epochs=2, batch_size=300, shuffle=False, verbose=0)
    assert not any(isinstance(own.get("plan"), StepPlan) for _, own in model._workspaces.values())
    # shuffled batches of 100 gathered into the model's buffers: that plan stays
    model.fit(X, y, epochs=2, batch_size=100, verbose=0)
    kept = [own for _, own in model._workspaces.values() if isinstance(own.get("plan"), StepPlan)]
    assert len(kept) == 1
    x, t, w = kept[0]["plan"].key[1:4]
    assert x is kept[0]["X"] and t is kept[0]["t"] and w is None
    assert not np.shares_memory(x, X) and not np.shares_memory(t, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shuffle", [True, False])
def test_partial_fit_keeps_its_bound_steps_and_trains_alike(backend, shuffle, monkeypatch):
    # partial_fit epoch after epoch binds each batch shape once, and trains as
    # without bound steps, bit for bit (shuffled: gathered rows; unshuffled:
    # rows copied into the same buffers)
    X, y = digits(450)
    binds = {"n": 0}
    bind = model_module.bind_step

    def counting(*args):
        binds["n"] += 1
        return bind(*args)
    monkeypatch.setattr(model_module, "bind_step", counting)

    def epochs(est):
        losses = []
        for _ in range(4):
            est.partial_fit(X, y, classes=np.unique(y))
            losses.append(est.loss_)
        return est.model_.get_flat_params(), losses
    options = dict(hidden_layer_sizes=(24,), batch_size=100, shuffle=shuffle, random_state=0, backend=backend)
    params, losses = epochs(MLPClassifier(**options))
    assert binds["n"] == 2  # batches of 100 and of 50, bound once each
    without_plans(monkeypatch)
    walked_params, walked_losses = epochs(MLPClassifier(**options))
    assert_array_equal(params, walked_params)
    assert losses == walked_losses


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bound_kernel_runs_as_the_public_one(backend, dtype):
    kernels = fastnn.get_backend(backend)
    rng = np.random.default_rng(0)
    x, W, b = (rng.standard_normal(s).astype(dtype) for s in ((7, 5), (5, 3), (3,)))
    out, preact = np.empty((7, 3), dtype), np.empty((7, 3), dtype)
    run = kernels.fast.bind("dense_forward", x, W, b, "gelu", out=out, preact=preact)
    assert run.free == ()
    x[...] = rng.standard_normal(x.shape)  # a bound kernel reads the arrays' values at each call
    run()
    assert_array_equal(out, kernels.dense_forward(x, W, b, "gelu"))
    param, grad = rng.standard_normal(11).astype(dtype), rng.standard_normal(11).astype(dtype)
    m, v = np.zeros_like(param), np.zeros_like(param)
    expected = [a.copy() for a in (param, m, v)]
    step = kernels.fast.bind("adam_step", param, grad, m, v, 1, 1e-3, weight_decay=0.1)
    assert set(step.free) >= {"t", "lr", "weight_decay"}
    for t in (1, 2, 3):
        step(t=t, lr=1e-3 * t, weight_decay=0.1)
        kernels.adam_step(*expected[:1], grad, *expected[1:], t, 1e-3 * t, weight_decay=0.1)
    for got, want in zip((param, m, v), expected):
        assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bind_refuses_what_the_fast_path_refuses(backend):
    fast = fastnn.get_backend(backend).fast
    x, W = np.ones((6, 4)), np.ones((4, 3))
    out = np.empty((6, 3))
    assert fast.bind("dense_forward", x[:, :2].T.copy().T, W[:2], None, out=out) is None  # not C-contiguous
    assert fast.bind("dense_forward", x.astype(np.float32), W, None, out=out) is None  # mixed dtypes
    assert fast.bind("dense_forward", x, W, None, out=x[:, :3]) is None  # a strided output
    assert fast.bind("dense_forward", x, W, None, "relu", out=out) is not None
    param = np.ones(5)
    step = fast.bind("sgd_step", param, np.ones(5), None, 0.1)
    with pytest.raises(ValueError, match="lr"):
        step(lr=-1.0)  # a free scalar out of range: the public method's clear error
    assert_array_equal(param, np.ones(5))


class ScaledDense(nn.Dense):
    """A Dense whose forward a user changed: its steps are not bound."""

    def forward(self, backend, x, ws, mode):
        y = super().forward(backend, x, ws, mode)
        y *= 0.5
        return y


def test_a_layer_whose_forward_a_subclass_changes_is_not_bound(planned_steps):
    X, y = digits(300)
    model = nn.Sequential([ScaledDense(8, "relu"), nn.Dense(10)], loss="sparse_categorical_crossentropy",
                          seed=0, dtype=np.float64)
    model.fit(X, y, epochs=2, batch_size=50, verbose=0)
    assert planned_steps["n"] == 0
    assert not model._plannable


RECURRENT = {
    "lstm": lambda: [nn.LSTM(6)],
    "embedding into lstm": lambda: [nn.Embedding(17, 4), nn.LSTM(5)],
    "gru stacked": lambda: [nn.GRU(5, return_sequences=True), nn.GRU(4)],
    "lstm into rnn relu": lambda: [nn.LSTM(5, return_sequences=True), nn.SimpleRNN(4, activation="relu")],
    "frozen gru over lstm": lambda: [nn.LSTM(5, return_sequences=True), frozen(nn.GRU(4))],
}


def frozen(layer):
    layer.trainable = False
    return layer


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layers", sorted(RECURRENT))
def test_recurrent_models_train_alike_with_and_without_bound_steps(backend, dtype, layers, planned_steps,
                                                                   monkeypatch):
    # digits as 8 steps of 8 features (or 64 tokens, the pixels' 17 levels);
    # partial last batch, a second batch shape
    X, y = digits(230)
    X = (X * 16).astype(np.int64) if "embedding" in layers else X.reshape(-1, 8, 8)

    def train():
        model = nn.Sequential(RECURRENT[layers]() + [nn.Dense(10)], loss="sparse_categorical_crossentropy",
                              optimizer=nn.Adam(1e-2), seed=1, backend=backend, dtype=dtype)
        history = model.fit(X, y, epochs=3, batch_size=64, verbose=0)
        steps = [model.train_step(X[:40], y[:40]) for _ in range(3)]
        # the last step's gradients too (a frozen layer's: zeros)
        return model.get_flat_params(), model._grads.copy(), history.history["loss"], steps
    bound = train()
    assert planned_steps["n"] > 0 or "frozen" in layers  # (a frozen layer above one that trains: unbound)
    planned_steps["n"] = 0
    without_plans(monkeypatch)
    walked = train()
    assert planned_steps["n"] == 0
    assert_array_equal(bound[0], walked[0])
    assert_array_equal(bound[1], walked[1])
    assert bound[2:] == walked[2:]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bound_recurrent_kernels_serve_later_forwards(backend, dtype):
    # a backward bound to one forward's cache is right for the next forwards on
    # the same arrays (spec.Cache's bindable), with new values in them
    kernels = fastnn.get_backend(backend)
    rng = np.random.default_rng(0)
    n, steps, f, h = 3, 4, 5, 6
    x, W_x, W_h, b = (rng.standard_normal(s).astype(dtype) for s in ((n, steps, f), (f, 4 * h), (h, 4 * h),
                                                                      (4 * h,)))
    hs, cs, gates = (np.empty((n, steps, k * h), dtype) for k in (1, 1, 4))
    dhs, dx, dz = (np.empty((n, steps, k), dtype) for k in (h, f, 4 * h))
    forward = kernels.fast.bind("lstm_forward", x, None, None, W_x, W_h, b, hs=hs, cs=cs, gates=gates)
    _, cache = forward()
    backward = kernels.fast.bind("lstm_backward", dhs, cache, dx=dx, dz=dz)
    assert forward is not None and backward is not None
    for _ in range(2):
        for a in (x, W_x, W_h, b, dhs):
            a[...] = rng.standard_normal(a.shape)
        forward()
        got = [g.copy() for g in backward()]
        want_hs, want_cache = kernels.lstm_forward(x, None, None, W_x, W_h, b)
        assert_array_equal(hs, want_hs)
        for g, w in zip(got, kernels.lstm_backward(dhs, want_cache)):
            assert_array_equal(g, w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bind_refuses_a_cache_of_new_arrays_at_each_forward(backend):
    kernels = fastnn.get_backend(backend)
    x = np.random.default_rng(0).standard_normal((8, 3))
    _, cache = kernels.batchnorm_forward(x, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), True)
    assert kernels.fast.bind("batchnorm_backward", np.ones((8, 3)), cache) is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layers", ["dense", "lstm"])
@pytest.mark.parametrize("bad", ["nan", "inf", "too large for float32"])
def test_train_step_refuses_non_finite_batches_and_changes_nothing(backend, layers, bad):
    # train_step checks a batch's values on its workspace copy: the same error
    # as before, raised before any kernel ran, the parameters untouched
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 4, 3))
    y = rng.standard_normal(16)
    first = [nn.LSTM(5)] if layers == "lstm" else [nn.Flatten(), nn.Dense(5, "relu")]
    model = nn.Sequential(first + [nn.Dense(1)], loss="mse", optimizer="adam", seed=0, backend=backend,
                          dtype=np.float32)
    for _ in range(3):  # bound by now where the layers bind
        model.train_step(X, y)
    before = model.get_flat_params().copy()
    Xbad = X.copy()
    Xbad[3, 2, 1] = {"nan": np.nan, "inf": np.inf, "too large for float32": 1e39}[bad]
    with pytest.raises(ValueError, match="X_batch contains NaN or infinity"):
        model.train_step(Xbad, y)
    assert_array_equal(model.get_flat_params(), before)
    assert np.isfinite(model.train_step(X, y))
