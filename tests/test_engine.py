"""The one training engine: the estimators' network is a public fastnn.nn model,
models take shaped tensors, the save format has a version (files of format 1
still load), and files or options with invalid values are refused clearly."""

import io
import json
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

import fastnn
from fastnn import MLPClassifier, MLPRegressor, nn
from fastnn.testing import assert_gradients

DATA = Path(__file__).parent / "data"


def quiet(est, X, y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, **kwargs)


def digits(n=300):
    X, y = load_digits(return_X_y=True)
    return X[:n] / 16.0, y[:n]


# -------------------------------------------------- the estimators' model_
@pytest.mark.parametrize("params", [
    dict(), dict(batch_norm=True, dropout=0.2, activation="gelu"), dict(solver="lbfgs", batch_norm=True),
    dict(solver="sgd", early_stopping=True),
], ids=["adam", "bn-dropout-gelu", "lbfgs-bn", "sgd-early-stopping"])
def test_model_is_the_network_the_estimator_trained(params, tmp_path):
    X, y = digits()
    est = quiet(MLPClassifier(hidden_layer_sizes=(20, 10), max_iter=5, random_state=0, **params), X, y)
    model = est.model_
    assert isinstance(model, nn.Sequential)
    # the fitted attributes are views of the model's one buffer
    flat = model.get_flat_params()
    for a in est.coefs_ + est.intercepts_:
        assert np.shares_memory(a, flat)
    assert_array_equal(model.predict(X), est.predict_proba(X))
    assert_array_equal(est.classes_[model.predict_classes(X)], est.predict(X))
    # the layer API works on it: summary, save and load, more training
    assert "Dense" in model.summary_str() and f"Total params: {model.n_params}" in model.summary_str()
    model.save(tmp_path / "m.npz")
    assert_array_equal(nn.load(tmp_path / "m.npz").predict(X), est.predict_proba(X))
    before = model.get_flat_params().copy()
    model.fit(X, y, epochs=1, verbose=0)
    assert not np.array_equal(before, model.get_flat_params())
    assert_array_equal(model.predict(X), est.predict_proba(X))  # still the estimator's network


def test_regressor_model_predicts_what_the_regressor_predicts():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5))
    y = np.exp(0.3 * X[:, 0])
    for loss in ("squared_error", "poisson"):
        est = quiet(MLPRegressor(loss=loss, hidden_layer_sizes=(8,), max_iter=20, random_state=0), X, y)
        assert_allclose(est.model_.predict(X)[:, 0], est.predict(X), rtol=1e-12)


def test_warm_start_and_partial_fit_continue_the_same_model():
    X, y = digits(200)
    est = quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0, warm_start=True), X, y)
    model = est.model_
    quiet(est, X, y)
    assert est.model_ is model
    est = MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
    est.partial_fit(X, y, classes=np.unique(y))
    model, t = est.model_, est.model_.optimizer.t
    est.partial_fit(X, y)
    assert est.model_ is model and model.optimizer.t > t  # the optimizer state carried on


def test_replaced_fitted_attributes_are_the_truth():
    X, y = digits(150)
    est = quiet(MLPClassifier(hidden_layer_sizes=(6,), max_iter=3, random_state=0), X, y)
    est.coefs_ = [c * 0.5 for c in est.coefs_]
    expected = [c.copy() for c in est.coefs_]
    proba = est.predict_proba(X)
    for a, b in zip(est.coefs_, expected):
        assert_array_equal(a, b)
        assert np.shares_memory(a, est.model_.get_flat_params())
    assert_array_equal(est.model_.predict(X), proba)


def test_pickled_estimator_keeps_its_views():
    X, y = digits(150)
    est = quiet(MLPClassifier(hidden_layer_sizes=(6,), max_iter=3, random_state=0, batch_norm=True), X, y)
    again = pickle.loads(pickle.dumps(est))
    assert_array_equal(again.predict_proba(X), est.predict_proba(X))
    flat = again.model_.get_flat_params()
    for a in again.coefs_ + again.intercepts_ + again.bn_gamma_:
        assert np.shares_memory(a, flat)


def test_zero_weight_batch_with_a_penalty_is_a_clear_error():
    X, y = digits(100)
    w = np.ones(len(y))
    w[:50] = 0
    est = MLPClassifier(hidden_layer_sizes=(5,), batch_size=50, shuffle=False, max_iter=2, random_state=0)
    with pytest.raises(ValueError, match="sum to 0"):
        est.fit(X, y, sample_weight=w)
    # scikit-learn divides by such a sum (ZeroDivisionError) or trains on a negative one
    with pytest.raises(ValueError, match="sum to -"):
        MLPRegressor(max_iter=2).fit(X, y, sample_weight=-np.ones(len(y)))
    # without a penalty such a batch carries nothing to learn from and is skipped
    quiet(est.set_params(alpha=0.0), X, y, sample_weight=w)
    with pytest.raises(ValueError, match="(?i)sample weights"):  # scikit-learn's own check
        MLPClassifier(max_iter=1).fit(X, y, sample_weight=np.zeros(len(y)))


def test_sparse_input_trains_as_dense_input():
    X, y = digits(150)
    X[X < 0.3] = 0
    dense = nn.Sequential([nn.Dense(8, "relu"), nn.Dense(10)], loss="sparse_categorical_crossentropy",
                          seed=0, dtype=np.float64)
    sparse = nn.Sequential([nn.Dense(8, "relu"), nn.Dense(10)], loss="sparse_categorical_crossentropy",
                           seed=0, dtype=np.float64)
    dense.fit(X, y, epochs=2, batch_size=32, verbose=0)
    sparse.fit(sp.csr_matrix(X), y, epochs=2, batch_size=32, verbose=0)
    assert_allclose(sparse.get_flat_params(), dense.get_flat_params(), rtol=1e-12, atol=1e-14)
    assert_allclose(sparse.predict(sp.csr_matrix(X)), dense.predict(X), rtol=1e-12)


# ------------------------------------------------------------ shaped tensors
@pytest.mark.parametrize("backend", fastnn.available_backends())
def test_layers_on_shaped_inputs_match_finite_differences(backend):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(7, 4, 3, 2))  # (N, H, W, C) channels-last
    y = rng.integers(0, 3, 7)
    model = nn.Sequential([nn.Dense(5, "tanh"), nn.BatchNorm(), nn.Activation("gelu"), nn.Dropout(0.3),
                           nn.Flatten(), nn.Dense(3)], loss="sparse_categorical_crossentropy", seed=1,
                          dtype=np.float64, backend=backend, l2=0.01)
    model.build((4, 3, 2))
    assert [layer.output_shape for layer in model.layers] == [(4, 3, 5)] * 4 + [(60,), (3,)]
    model.set_flat_params(rng.uniform(-0.5, 0.5, model.n_params))
    # the model's own backend, central differences with step 1e-6
    assert_gradients(model, X, y, eps=1e-6, rtol=1e-5, atol=1e-7)
    # Dense and BatchNorm act on the last axis: the same as on the flattened rows
    dense = nn.Dense(5, init=lambda fan_in, fan_out, rng, dtype: (np.full((fan_in, fan_out), 0.1),
                                                                   np.ones(5)))
    flat = nn.Sequential([dense], dtype=np.float64, input_shape=2)
    shaped = nn.Sequential([nn.Dense(5, init=dense.init)], dtype=np.float64, input_shape=(4, 3, 2))
    assert_allclose(shaped.predict(X), flat.predict(X.reshape(-1, 2)).reshape(7, 4, 3, 5))


def test_shapes_in_build_summary_and_errors():
    model = nn.Sequential([nn.Flatten(), nn.Dense(4)], input_shape=(3, 2))
    assert model.input_shape == (3, 2) and model.output_shape == (4,)
    text = model.summary_str()
    assert "(None, 6)" in text and "(None, 4)" in text and "Input shape: (None, 3, 2)" in text
    lines = text.splitlines()
    assert len({line.index("(None") for line in lines if line.startswith(("flatten", "dense"))}) == 1
    with pytest.raises(ValueError, match=r"samples of shape \(2, 3\)"):
        model.predict(np.zeros((5, 2, 3)))
    assert nn.Sequential([nn.Dense(3)], input_shape=7).input_shape == (7,)
    with pytest.raises(TypeError, match="input_shape"):
        nn.Sequential([nn.Dense(3)], input_shape="7")
    with pytest.raises(ValueError, match="losses take one vector per sample"):
        nn.Sequential([nn.Dense(2)], loss="mse").fit(np.zeros((4, 3, 2)), np.zeros((4, 2)), verbose=0)


def test_shaped_model_saves_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(12, 3, 2, 2)), rng.integers(0, 3, 12)
    model = nn.Sequential([nn.Dense(4, "relu"), nn.BatchNorm(), nn.Flatten(), nn.Dense(3)],
                          loss="sparse_categorical_crossentropy", seed=0)
    model.fit(X, y, epochs=2, batch_size=4, verbose=0)
    model.save(tmp_path / "shaped.npz")
    again = nn.load(tmp_path / "shaped.npz")
    assert again.input_shape == (3, 2, 2) and again.describe()["version"] == 2
    assert_array_equal(again.predict(X), model.predict(X))
    assert again.summary_str() == model.summary_str()


def test_batchnorm_one_row_batch_uses_running_statistics():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(9, 3)), rng.integers(0, 2, 9)
    model = nn.Sequential([nn.Dense(4), nn.BatchNorm(), nn.Activation("relu"), nn.Dense(2)],
                          loss="sparse_categorical_crossentropy", seed=0, dtype=np.float64)
    model.fit(X, y, batch_size=4, epochs=1, verbose=0)  # last batch: one row
    state = model.get_flat_state().copy()
    model.train_step(X[:1], y[:1])
    assert_array_equal(model.get_flat_state(), state)  # the running statistics are not changed
    assert model.layers[0].fixed_bias and not model.layers[0].b.any()


def test_sequential_pickles_and_casts():
    X, y = digits(100)
    model = nn.Sequential([nn.Dense(6, "relu"), nn.BatchNorm(), nn.Dense(10)],
                          loss="sparse_categorical_crossentropy", seed=0)
    model.fit(X, y, epochs=2, verbose=0)
    again = pickle.loads(pickle.dumps(model))
    assert_array_equal(again.predict(X), model.predict(X))
    assert again.optimizer.t == model.optimizer.t
    assert np.shares_memory(again.layers[0].W, again.get_flat_params())
    wide = model.astype(np.float64)
    assert wide.dtype == np.float64
    assert_allclose(wide.predict(X), model.predict(X), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------- the save format
def test_format_1_file_loads_with_its_predictions():
    expected = np.load(DATA / "format1_expected.npz")
    model = nn.load(DATA / "format1_model.npz")
    assert model.input_shape == (5,)
    assert_allclose(model.predict(expected["X"]), expected["proba"], rtol=1e-12)
    assert_array_equal(model.get_flat_state(), expected["state"])
    # format 1 laid every non-weight parameter out in layer order: same values, new places
    assert_array_equal(np.sort(model.get_flat_params()), np.sort(expected["params"]))
    assert model.optimizer.t > 0  # its optimizer state came along
    model.fit(expected["X"], np.arange(10) % 3, epochs=1, verbose=0)


def _archive(description, **arrays):
    buf = io.BytesIO()
    np.savez(buf, description=np.array(json.dumps(description)), **arrays)
    return buf.getvalue()


@pytest.fixture(scope="module")
def saved():
    model = nn.Sequential([nn.Dense(3, "relu"), nn.Dense(2)], loss="sparse_categorical_crossentropy", seed=0)
    model.fit(np.eye(4), [0, 1, 0, 1], epochs=1, verbose=0)
    buf = io.BytesIO()
    model.save(buf)
    with np.load(io.BytesIO(buf.getvalue())) as f:
        arrays = {k: f[k] for k in f.files}
    return json.loads(str(arrays.pop("description"))), arrays, buf.getvalue()


def _set(d, path, value):
    d = json.loads(json.dumps(d))
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


@pytest.mark.parametrize("path, value, match", [
    (("loss",), "softmax", "loss"),
    (("optimizer_counters", "t"), -1, "t must be"),
    (("optimizer", "lr"), "abc", "lr"),
    (("penalty_per_sample",), "maybe", "penalty_per_sample"),
    (("dtype",), None, "dtype"),
    (("input_shape",), [0], "input_shape"),
    (("seed",), 1.5, "seed"),
    (("layers",), [{"kind": "Dense", "units": -1}], "units"),
    (("layers",), [{"kind": "Dense", "units": 3, "colour": 1}], "Dense"),
    (("optimizer_counters", "schedule", "lr"), "x", "schedule"),
    (("version",), 3, "version"),
    (("metrics",), "accuracy", "metrics"),
    (("metrics",), [{"name": "f1", "average": "weighted"}], "average"),
    (("metrics",), [{"name": "top_k_accuracy", "q": 1}], "top_k_accuracy"),
    (("classes",), {"dtype": "<i8", "values": [0]}, "classes"),
    (("classes",), {"dtype": "<i8", "values": [1, 0]}, "classes"),
    (("classes",), {"dtype": "O", "values": [0, 1]}, "classes"),
    (("classes", "values"), ["a", "b"], "classes"),
])
def test_invalid_descriptions_are_refused_when_loading(saved, tmp_path, path, value, match):
    description, arrays, _ = saved
    file = tmp_path / "bad.npz"
    file.write_bytes(_archive(_set(description, path, value), **arrays))
    with pytest.raises(ValueError, match=match):
        nn.load(file)


def test_descriptions_without_classes_load(saved, tmp_path):
    # files of earlier fastnn have no classes: predict_classes gives class indices
    description, arrays, _ = saved
    assert description["classes"] == {"dtype": np.dtype(np.int64).str, "values": [0, 1]}
    description = dict(description)
    del description["classes"]
    file = tmp_path / "old.npz"
    file.write_bytes(_archive(description, **arrays))
    model = nn.load(file)
    assert model.classes_ is None and set(model.predict_classes(np.eye(4))) <= {0, 1}


def test_corrupt_archives_are_refused(saved, tmp_path):
    _, _, data = saved
    file = tmp_path / "bad.npz"
    # a compression method zipfile does not implement
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info.filename))
    raw = bytearray(buf.getvalue())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        at = raw.find(sig)
        while at != -1:
            offset = at + (8 if sig == b"PK\x03\x04" else 10)
            raw[offset:offset + 2] = (99).to_bytes(2, "little")
            at = raw.find(sig, at + 4)
    file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="not a readable fastnn model"):
        nn.load(file)
    # truncated, and deflate data that is garbage
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="fastnn model"):
        nn.load(file)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("params.npy", b"x" * 1000)
    raw = bytearray(buf.getvalue())
    raw[40:60] = b"\xff" * 20
    file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="fastnn model"):
        nn.load(file)


def test_penalty_per_sample_must_be_a_bool():
    with pytest.raises(TypeError, match="penalty_per_sample"):
        nn.Sequential([nn.Dense(2)], penalty_per_sample="maybe")
