"""fastnn.nn.metrics: each metric on validation data against scikit-learn's
metrics of the model's own predictions; training metrics, save/load and the
compile checks."""

import numpy as np
import pytest
from sklearn import metrics as skm

from fastnn import nn


def data(n, d, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def trained(loss, outputs, X, y, metrics, epochs=3):
    model = nn.Sequential([nn.Dense(8, "tanh"), nn.Dense(outputs)], loss=loss, metrics=metrics,
                          optimizer=nn.Adam(0.01), seed=0, dtype=np.float64)
    history = model.fit(X[:150], y[:150], epochs=epochs, batch_size=32, verbose=0,
                        validation_data=(X[150:], y[150:]))
    return model, history


def test_multiclass_metrics_match_scikit_learn():
    X = data(250, 5)
    y = np.argmax(X[:, :4] + 0.5 * data(250, 4, seed=1), axis=1)
    with pytest.raises(ValueError, match="named alike"):
        trained("sparse_categorical_crossentropy", 4, X, y, ["f1", nn.metrics.F1(average="macro")])
    # precision, recall and f1 of 4 classes: macro averages
    metrics = ["accuracy", nn.metrics.TopKAccuracy(k=2), "precision", "recall", "f1"]
    model, history = trained("sparse_categorical_crossentropy", 4, X, y, metrics)
    Xv, yv = X[150:], y[150:]
    proba, pred = model.predict(Xv), model.predict_classes(Xv)
    expected = {
        "accuracy": skm.accuracy_score(yv, pred),
        "top_k_accuracy": skm.top_k_accuracy_score(yv, proba, k=2, labels=np.arange(4)),
        "precision": skm.precision_score(yv, pred, average="macro"),
        "recall": skm.recall_score(yv, pred, average="macro"),
        "f1": skm.f1_score(yv, pred, average="macro"),
    }
    logged = model.evaluate(Xv, yv)
    for name, value in expected.items():
        assert history["val_" + name][-1] == pytest.approx(value, rel=1e-12, abs=1e-12), name
        assert logged[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
        assert len(history[name]) == 3 and 0 <= history[name][-1] <= 1
    model.compile(metrics=["top_k_accuracy"])
    assert model.evaluate(Xv, yv)["top_k_accuracy"] == 1.0  # k=5 >= 4 classes: every sample


@pytest.mark.parametrize("loss, outputs", [("binary_crossentropy", 1), ("sparse_categorical_crossentropy", 2),
                                           ("hinge", 1)])
def test_binary_metrics_match_scikit_learn(loss, outputs):
    X = data(250, 5)
    y = (X[:, 0] + X[:, 1] + 0.8 * data(250, 1, seed=2)[:, 0] > 0.3).astype(int)
    model, history = trained(loss, outputs, X, y, ["accuracy", "auc", "precision", "recall", "f1"])
    Xv, yv = X[150:], y[150:]
    raw, pred = model.predict_raw(Xv), model.predict_classes(Xv)
    score = raw[:, 0] if outputs == 1 else raw[:, 1] - raw[:, 0]
    expected = {
        "accuracy": skm.accuracy_score(yv, pred),
        "auc": skm.roc_auc_score(yv, score),
        "precision": skm.precision_score(yv, pred),
        "recall": skm.recall_score(yv, pred),
        "f1": skm.f1_score(yv, pred),
    }
    if loss != "hinge":
        expected["auc"] = skm.roc_auc_score(yv, model.predict(Xv)[:, -1])
    for name, value in expected.items():
        assert history["val_" + name][-1] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    macro = model.compile(metrics=[nn.metrics.Recall(average="macro")]).evaluate(Xv, yv)["recall"]
    assert macro == pytest.approx(skm.recall_score(yv, pred, average="macro"), rel=1e-12)


def test_auc_counts_ties_half_and_is_nan_for_one_class():
    auc = nn.metrics.AUC().fresh()
    loss = nn.BinaryCrossEntropy()
    auc.update(loss, np.array([[0.0], [0.0], [1.0]]), np.array([[0.0], [1.0], [1.0]]))
    auc.update(loss, np.array([[-2.0]]), np.array([[0.0]]))
    assert auc.result() == pytest.approx(skm.roc_auc_score([0, 1, 1, 0], [0, 0, 1, -2]))
    one = nn.metrics.AUC().fresh()
    one.update(loss, np.array([[0.3]]), np.array([[1.0]]))
    assert np.isnan(one.result())


@pytest.mark.parametrize("outputs", [1, 3])
def test_regression_metrics_match_scikit_learn(outputs):
    X = data(250, 5)
    y = X[:, :outputs] * [2.0, -1.0, 0.5][:outputs] + 10.0  # an offset: R^2 needs the centred sums
    y = y[:, 0] if outputs == 1 else y
    model, history = trained("mse", outputs, X, y, ["mae", "mse", "rmse", "r2"])
    Xv, yv = X[150:], y[150:]
    pred = model.predict(Xv)
    pred = pred[:, 0] if outputs == 1 else pred
    expected = {"mae": skm.mean_absolute_error(yv, pred), "mse": skm.mean_squared_error(yv, pred),
                "rmse": skm.root_mean_squared_error(yv, pred), "r2": skm.r2_score(yv, pred)}
    # evaluate in small batches: the sums merged over 5 batches are the same
    logged = model.evaluate(Xv, yv, batch_size=23)
    for name, value in expected.items():
        assert history["val_" + name][-1] == pytest.approx(value, rel=1e-10), name
        assert logged[name] == pytest.approx(value, rel=1e-10), name
    assert "accuracy" not in history


def test_r2_of_a_constant_target_follows_scikit_learn():
    r2 = nn.metrics.R2().fresh()
    r2.update(nn.SquaredError(), np.array([[1.0], [1.0]]), np.array([[1.0], [1.0]]))
    assert r2.result() == skm.r2_score([1.0, 1.0], [1.0, 1.0]) == 1.0
    r2 = nn.metrics.R2().fresh()
    r2.update(nn.SquaredError(), np.array([[1.0], [2.0]]), np.array([[1.0], [1.0]]))
    assert r2.result() == skm.r2_score([1.0, 1.0], [1.0, 2.0]) == 0.0


def test_training_metrics_count_the_batches_outputs():
    # lr tiny: the parameters hardly move, so the training accuracy of the
    # batch outputs equals the accuracy at the end of the epoch
    X = data(120, 4)
    y = (X[:, 0] > 0).astype(int)
    model = nn.Sequential([nn.Dense(2)], loss="sparse_categorical_crossentropy", optimizer=nn.SGD(1e-12),
                          metrics=["accuracy", "f1"], seed=0, dtype=np.float64)
    history = model.fit(X, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    pred = model.predict_classes(X)
    assert history["accuracy"][0] == skm.accuracy_score(y, pred)
    assert history["f1"][0] == pytest.approx(skm.f1_score(y, pred), rel=1e-12)


def test_metric_choices_are_checked_and_saved(tmp_path):
    with pytest.raises(ValueError, match="r2 is not defined for the softmax"):
        nn.Sequential([nn.Dense(2)], loss="sparse_categorical_crossentropy", metrics=["r2"])
    with pytest.raises(ValueError, match="accuracy is not defined for the mse"):
        nn.Sequential([nn.Dense(2)], loss="mse", metrics=["accuracy"])
    with pytest.raises(ValueError, match="metrics entry"):
        nn.Sequential([nn.Dense(2)], loss="mse", metrics=["r3"])
    with pytest.raises(TypeError, match="list"):
        nn.Sequential([nn.Dense(2)], loss="mse", metrics="mae")
    X = data(40, 3)
    y = np.arange(40) % 3
    model = nn.Sequential([nn.Dense(3)], loss="sparse_categorical_crossentropy", seed=0,
                          metrics=[nn.metrics.AUC()])
    with pytest.raises(ValueError, match="auc metric is binary"):
        model.fit(X, y, verbose=0)
    model.compile(metrics=["acc", nn.metrics.TopKAccuracy(k=2), nn.metrics.Precision(average="macro")])
    model.fit(X, y, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = nn.load(tmp_path / "m.npz")
    assert [m.config() for m in loaded.metrics] == ["accuracy", {"name": "top_k_accuracy", "k": 2},
                                                    {"name": "precision", "average": "macro"}]
    assert loaded.evaluate(X, y) == model.evaluate(X, y)
    multilabel = nn.Sequential([nn.Dense(2)], loss="binary_crossentropy", metrics=["f1"], seed=0)
    with pytest.raises(ValueError, match="multilabel"):
        multilabel.fit(X, np.c_[y > 0, y > 1].astype(float), verbose=0)
