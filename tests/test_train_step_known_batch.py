"""train_step on a batch like the last one (arrays of the same shapes and
dtypes) skips the checks that cannot fail for it (Sequential._known_targets)
and the preparation whose inputs did not change (_prepare_training): every bad
batch is still refused with the message of a full check, every change of the
model between steps still takes effect, and the steps are those of the full
path bit for bit. Also the one-pass finiteness check of the batch and the one
BLAS scope object the steps share."""

import threading
import warnings

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import fastnn
from fastnn import nn
from fastnn.backends import _blas
from fastnn.nn import training
from fastnn.nn.losses import labels_in_range

BACKENDS = fastnn.available_backends()
N = 24


def checked_fully(model):
    """`model` with every train_step taking the full path: its data checked by
    _check_data and its preparation made again at each call."""
    model._known_targets = lambda X, y: None
    model._preparation_inputs = lambda: object()  # never equal to the last
    return model


def sequence_model(loss, outputs, backend, dtype=np.float32, layers=None):
    first = [nn.LSTM(5)] if layers is None else layers
    return nn.Sequential(first + [nn.Dense(outputs)], loss=loss, optimizer=nn.Adam(1e-2), seed=0,
                         backend=backend, dtype=dtype)


def batches(kind, steps=4, dtype=np.float32):
    """[(X, y)] of new arrays of the same shapes at each step, for a loss kind."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(steps):
        X = rng.standard_normal((N, 4, 3)).astype(dtype)
        y = {"mse": lambda: rng.standard_normal((N, 1)).astype(dtype),
             "mse 1-D": lambda: rng.standard_normal(N).astype(dtype),
             "bce": lambda: (rng.random(N) < 0.5).astype(dtype),
             "bce probabilities": lambda: rng.random((N, 2)).astype(dtype),
             "labels": lambda: rng.integers(0, 3, N),
             "class probabilities": lambda: rng.dirichlet(np.ones(3), N).astype(dtype),
             "poisson": lambda: rng.poisson(2.0, (N, 1)).astype(dtype),
             "hinge": lambda: np.where(rng.random((N, 1)) < 0.5, -1.0, 1.0).astype(dtype)}[kind]()
        out.append((X, y))
    return out


KINDS = {  # kind: (loss, outputs)
    "mse": ("mse", 1), "mse 1-D": ("huber", 1), "bce": ("binary_crossentropy", 1),
    "bce probabilities": ("binary_crossentropy", 2), "labels": ("sparse_categorical_crossentropy", 3),
    "class probabilities": ("categorical_crossentropy", 3), "poisson": ("poisson", 1),
    "hinge": ("hinge", 1),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_known_batches_train_as_fully_checked_ones(backend, kind):
    loss, outputs = KINDS[kind]
    data = batches(kind)
    fast, full = (sequence_model(loss, outputs, backend) for _ in range(2))
    checked_fully(full)
    for X, y in data:
        assert fast.train_step(X, y) == full.train_step(X, y)
    assert_array_equal(fast.get_flat_params(), full.get_flat_params())
    known = fast._known_batch
    assert (known is None) == (kind == "hinge")  # (the hinge's -1/+1 targets: checked in full)


def count_full_checks(model, monkeypatch):
    calls = {"n": 0}
    check = type(model)._check_data

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return check(self, *args, **kwargs)
    monkeypatch.setattr(type(model), "_check_data", counting)
    return calls


def test_only_batches_like_the_last_one_skip_the_full_check(monkeypatch):
    model = sequence_model("mse", 1, "numpy")
    calls = count_full_checks(model, monkeypatch)
    (X, y), (X2, y2) = batches("mse", 2)
    model.train_step(X, y)
    model.train_step(X2, y2)
    assert calls["n"] == 1
    others = [(X.astype(np.float64), y), (X, y.astype(np.float64)), (np.asfortranarray(X), y),
              (X, y[::-1]), (X[:10], y[:10]), (X, y.ravel()), (X.tolist(), y), (X, y.tolist())]
    for X_other, y_other in others:
        model.train_step(X_other, y_other)
        model.train_step(X, y)  # (known again)
    assert calls["n"] == 1 + 2 * len(others)
    model.train_step(X, y, sample_weight=np.ones(N))
    assert calls["n"] == 2 + 2 * len(others)
    model.compile(loss="mae")  # another loss: its targets checked again
    model.train_step(X, y)
    model.train_step(X, y)
    assert calls["n"] == 3 + 2 * len(others)


def with_value(a, index, value):
    a = a.copy()
    a[index] = value
    return a


BAD = {  # kind: [(what, bad batch from a good one)]
    "mse": [("NaN in X", lambda X, y: (with_value(X, (3, 2, 1), np.nan), y)),
            ("inf in X", lambda X, y: (with_value(X, (0, 0, 0), np.inf), y)),
            ("-inf in X", lambda X, y: (with_value(X, (N - 1, 3, 2), -np.inf), y)),
            ("NaN in y", lambda X, y: (X, with_value(y, (5, 0), np.nan))),
            ("inf in y", lambda X, y: (X, with_value(y, (N - 1, 0), np.inf))),
            ("y of another shape", lambda X, y: (X, np.zeros((N, 2), y.dtype))),
            ("y of other samples", lambda X, y: (X, y[:-1]))],
    "mse 1-D": [("NaN in y", lambda X, y: (X, with_value(y, 7, np.nan)))],
    "bce": [("y above 1", lambda X, y: (X, with_value(y, 2, 1.5))),
            ("y below 0", lambda X, y: (X, with_value(y, 2, -1.0))),
            ("NaN in y", lambda X, y: (X, with_value(y, 2, np.nan)))],
    "bce probabilities": [("y above 1", lambda X, y: (X, with_value(y, (2, 1), 1.5))),
                          ("inf in y", lambda X, y: (X, with_value(y, (2, 1), np.inf)))],
    "labels": [("a label past the classes", lambda X, y: (X, with_value(y, 4, 3))),
               ("a negative label", lambda X, y: (X, with_value(y, 4, -1)))],
    "class probabilities": [("a negative probability", lambda X, y: (X, with_value(y, (1, 2), -0.5))),
                            ("NaN in y", lambda X, y: (X, with_value(y, (1, 2), np.nan))),
                            ("inf in y", lambda X, y: (X, with_value(y, (1, 2), np.inf)))],
    "poisson": [("a negative target", lambda X, y: (X, with_value(y, (1, 0), -1.0))),
                ("inf in y", lambda X, y: (X, with_value(y, (1, 0), np.inf)))],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind, what", [(kind, what) for kind in sorted(BAD) for what, _ in BAD[kind]])
def test_bad_batches_like_the_last_one_are_refused_as_in_full(backend, kind, what):
    loss, outputs = KINDS[kind]
    data = batches(kind, 3)
    make_bad = dict(BAD[kind])[what]
    fast, full = (sequence_model(loss, outputs, backend) for _ in range(2))
    checked_fully(full)
    for X, y in data[:2]:
        fast.train_step(X, y)
        full.train_step(X, y)
    assert fast._known_batch is not None
    before = fast.get_flat_params().copy()
    bad = make_bad(*data[2])
    with pytest.raises((ValueError, TypeError)) as refused:
        full.train_step(*bad)
    with pytest.raises(type(refused.value)) as got:
        fast.train_step(*bad)
    assert str(got.value) == str(refused.value)
    assert_array_equal(fast.get_flat_params(), before)
    assert fast.train_step(*data[2]) == full.train_step(*data[2])
    assert_array_equal(fast.get_flat_params(), full.get_flat_params())


def freeze_first(model):
    model.layers[0].trainable = False


def thaw_first(model):
    model.layers[0].trainable = True


def set_rate(rate):
    def change(model):
        model.optimizer.schedule.lr = rate
    return change


def set_layer_l2(value):
    def change(model):
        model.layers[0].l2 = value
    return change


def evaluate(model):
    rng = np.random.default_rng(5)
    model.evaluate(rng.standard_normal((8, 4, 3)).astype(np.float32),
                   rng.standard_normal((8, 1)).astype(np.float32))


def loss_and_gradient(model):
    rng = np.random.default_rng(5)
    model.loss_and_gradient(rng.standard_normal((8, 4, 3)).astype(np.float32),
                            rng.standard_normal((8, 1)).astype(np.float32))


CHANGES = {  # name: [(step, change before it)]
    "frozen layer": [(2, freeze_first), (4, thaw_first)],
    "learning rate": [(2, set_rate(0.1)), (4, set_rate(1e-4))],
    "model's l2": [(2, lambda m: m.compile(l2=1e-2)), (4, lambda m: m.compile(penalty_per_sample=True))],
    "layer's l2 and l1": [(2, set_layer_l2(0.05)), (3, lambda m: setattr(m.layers[1], "l1", 0.01))],
    "optimizer": [(2, lambda m: m.compile(optimizer=nn.SGD(0.05, momentum=0.9)))],
    "weight decay": [(2, lambda m: m.compile(l2=1e-2)),
                     (3, lambda m: setattr(m.optimizer, "weight_decay", 0.1)),
                     (4, lambda m: setattr(m.optimizer, "decoupled_weight_decay", True))],
    "loss": [(2, lambda m: m.compile(loss="mae")), (4, lambda m: m.compile(loss="huber"))],
    # the penalty terms remade by evaluate at another l2, then the l2 set back
    "l2 there and back": [(2, set_layer_l2(0.05)), (3, lambda m: (set_layer_l2(0.5)(m), evaluate(m),
                                                                   set_layer_l2(0.05)(m)))],
    # the trainable runs remade by loss_and_gradient with a layer frozen, then thawed
    "frozen and thawed": [(3, lambda m: (freeze_first(m), loss_and_gradient(m), thaw_first(m)))],
    "rebound optimizer": [(3, lambda m: m.optimizer.bind(m._params))],
    "other backend": [(2, lambda m: m.set_backend("numpy"))],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("bound", [True, False], ids=["bound", "walked"])
def test_changes_of_the_model_between_known_batches_take_effect(backend, change, bound):
    # walked: with dropout, whose steps are never bound (plan.py), each step
    # reads what _prepare_training keeps
    data = batches("mse", 6)
    fast, full = (sequence_model("mse", 1, backend, layers=None if bound else [nn.LSTM(5), nn.Dropout(0.25)])
                  for _ in range(2))
    checked_fully(full)
    changes = dict(CHANGES[change])
    for i, (X, y) in enumerate(data):
        if i in changes:
            changes[i](fast)
            changes[i](full)
        assert fast.train_step(X, y) == full.train_step(X, y), i
        assert_array_equal(fast.get_flat_params(), full.get_flat_params())
    if change == "frozen layer":
        freeze_first(fast)
        frozen = fast.layers[0].params["W_x"].copy()
        fast.train_step(*data[0])
        assert_array_equal(fast.layers[0].params["W_x"], frozen)


def test_a_model_frozen_whole_between_known_batches_refuses_to_train():
    model = sequence_model("mse", 1, "numpy")
    (X, y), = batches("mse", 1)
    model.train_step(X, y)
    model.train_step(X, y)
    for layer in model.layers:
        layer.trainable = False
    with pytest.raises(ValueError, match="every layer of the model is frozen"):
        model.train_step(X, y)
    model.layers[1].trainable = True
    assert np.isfinite(model.train_step(X, y))


def test_a_known_batch_of_tokens_is_checked_in_full():
    model = nn.Sequential([nn.Embedding(10, 3), nn.LSTM(4), nn.Dense(1)], loss="mse", seed=0)
    X = np.random.default_rng(0).integers(0, 10, (N, 5))
    y = np.zeros((N, 1), np.float32)
    model.train_step(X, y)
    assert model._known_batch is None
    with pytest.raises(ValueError):
        model.train_step(with_value(X, (0, 0), 10), y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("check", ["all_finite", "all_finite_by_dot"])
@pytest.mark.parametrize("shape", [(7, 5, 3), (64, 1), (40, 30)], ids=["small", "(64, 1)", "large"])
def test_the_finiteness_checks_find_every_non_finite_value_and_warn_of_nothing(dtype, check, shape):
    found = getattr(training, check)
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape).astype(dtype)
    corners = [(0,) * len(shape), tuple(s // 2 for s in shape), tuple(s - 1 for s in shape)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with _blas.every_blas_on_one_thread():
            assert found(a)
            assert found(a[:0])
            for value in (np.nan, np.inf, -np.inf):
                for index in corners:
                    assert not found(with_value(a, index, value))
            # finite values whose sum of squares (and sum) overflows
            huge = np.full(shape, np.finfo(dtype).max / 2, dtype)
            assert found(huge)
            assert found(-huge)
            assert not found(with_value(huge, corners[1], np.nan))
            assert not found(with_value(-huge, corners[2], -np.inf))


@pytest.mark.parametrize("n", [5, 64, 2000])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.float64])
def test_labels_in_range_at_every_size(n, dtype):
    labels = np.arange(n).astype(dtype) % 3
    assert labels_in_range(labels, 3)
    assert not labels_in_range(labels, 2)
    if np.dtype(dtype).kind != "u":
        assert not labels_in_range(with_value(labels, n // 2, -1), 3)
    assert labels_in_range(labels[:0], 3)


def blas_counts():
    return [c.num_threads for c in _blas.blas_controller().lib_controllers]


def test_the_shared_blas_scope_nested_and_beside_another_threads():
    # one object serves every entry: nested in its thread the counts stay to the
    # outermost; entered in another thread while held, its exit leaves them
    if _blas._every_blas_scope() is None:
        pytest.skip("a BLAS other than OpenBLAS on its own threads is loaded")
    from threadpoolctl import threadpool_limits

    scope = _blas.every_blas_on_one_thread()
    assert _blas.every_blas_on_one_thread() is scope
    seen = []

    def other_thread():
        with _blas.every_blas_on_one_thread() as entered:
            seen.append((entered, blas_counts()))
        seen.append(blas_counts())

    with threadpool_limits(3, user_api="blas"):
        before = blas_counts()
        ones = [1] * len(before)
        with scope as outer:
            with scope as inner:
                assert (outer, inner, blas_counts()) == (True, False, ones)
            assert blas_counts() == ones
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
            assert seen == [(False, ones), ones]
            assert blas_counts() == ones
        assert blas_counts() == before
        with pytest.raises(RuntimeError):
            with scope:
                with scope:
                    raise RuntimeError("inside")
        assert blas_counts() == before
        with scope as again:  # released: entered anew
            assert again and blas_counts() == ones
        assert blas_counts() == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_targets_of_another_form_at_the_same_batch_shape(backend):
    # class labels, then class probabilities, then labels again, through the
    # same workspace: its targets' buffer follows their shape and dtype
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 16)
    probabilities = rng.dirichlet(np.ones(3), 16).astype(np.float32)

    def model():
        return nn.Sequential([nn.Dense(3)], loss="categorical_crossentropy", seed=0, backend=backend)
    stepped, alone = model(), checked_fully(model())
    for y in (labels, labels, probabilities, probabilities, labels):
        assert stepped.train_step(X, y) == alone.train_step(X, y)
    assert_array_equal(stepped.get_flat_params(), alone.get_flat_params())
    for y in (labels, probabilities, labels):  # fit's gathered batches too
        stepped.fit(X, y, batch_size=8, epochs=2, verbose=0)
        alone.fit(X, y, batch_size=8, epochs=2, verbose=0)
    assert_array_equal(stepped.get_flat_params(), alone.get_flat_params())
