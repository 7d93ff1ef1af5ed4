"""Callbacks with Keras's protocol, the callbacks of fastnn.nn.callbacks,
fit(class_weight=...) and class labels of any kind."""

import csv
import os

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from fastnn import nn
from fastnn.nn.callbacks import CallbackList


def data(n, d, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def classifier(classes=3, lr=0.01, optimizer=None):
    return nn.Sequential([nn.Dense(8, "relu"), nn.Dense(classes)], loss="sparse_categorical_crossentropy",
                         optimizer=optimizer or nn.Adam(lr), seed=0)


X = data(60, 4)
Y = np.argmax(X[:, :3], axis=1)


# ------------------------------------------------------------------ protocol
class Recorder(nn.Callback):
    """A callback written for Keras: records every hook with its arguments."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin", self.model, dict(self.params)))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("batch_begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, logs["loss"]))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs)))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", dict(logs)))


def test_keras_callbacks_see_every_hook_in_order():
    model = classifier()
    recorder = Recorder()
    history = model.fit(X, Y, epochs=2, batch_size=25, validation_split=0.2, callbacks=[recorder], verbose=0)
    calls = recorder.calls
    assert calls[0] == ("train_begin", model, {"epochs": 2, "steps": 2, "verbose": 0})
    names = [c[0] if c[0] in ("train_begin", "train_end") else c[:2] for c in calls]
    epoch = [("batch_begin", 0), ("batch_end", 0), ("batch_begin", 1), ("batch_end", 1)]
    assert names == (["train_begin", ("epoch_begin", 0)] + epoch + [("epoch_end", 0), ("epoch_begin", 1)]
                     + epoch + [("epoch_end", 1), "train_end"])
    ends = [c for c in calls if c[0] == "epoch_end"]
    assert set(ends[0][2]) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    for epoch_number, (_, _, logs) in enumerate(ends):
        assert logs == {key: values[epoch_number] for key, values in history.items()}
    # the batch logs hold the running mean of the epoch's losses; the last one is the epoch's
    # (batches of 25 and 23 rows: the mean weighted by their sizes)
    batch_losses = [c[2] for c in calls if c[0] == "batch_end"]
    assert batch_losses[1] == pytest.approx(ends[0][2]["loss"], rel=1e-12)
    assert calls[-1] == ("train_end", ends[-1][2])
    assert history.epoch == [0, 1]


def test_batch_hooks_run_only_for_callbacks_that_override_them():
    model = classifier()
    assert CallbackList.for_fit([nn.EarlyStopping(monitor="loss")], model, {}).batch_hooks is None
    assert CallbackList.for_fit(None, model, {}).batch_hooks is None
    recorder = Recorder()
    callbacks = [nn.EarlyStopping(), recorder, nn.CSVLogger("unused.csv")]
    assert CallbackList.for_fit(callbacks, model, {}).batch_hooks.callbacks == [recorder]
    only = CallbackList.for_fit([recorder], model, {})
    assert only.batch_hooks is only


class OldStyle(nn.Callback):
    def on_epoch_end(self, model, epoch, logs):
        pass


def test_callbacks_of_the_former_protocol_or_no_callbacks_are_refused():
    with pytest.raises(TypeError, match=r"OldStyle.on_epoch_end\(model, epoch, logs\).*self.model"):
        classifier().fit(X, Y, callbacks=[OldStyle()], verbose=0)
    for bad in (nn.EarlyStopping(), [object()], "history"):
        with pytest.raises(TypeError, match="callbacks must be a list"):
            classifier().fit(X, Y, callbacks=bad, verbose=0)


class StopAt(nn.Callback):
    def __init__(self, batch=None, epoch=None):
        self.batch, self.epoch, self.batches = batch, epoch, 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if batch == self.batch:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.stop_training = True


def test_stop_training_from_a_batch_hook_stops_after_that_batch():
    model = classifier()
    stop = StopAt(batch=1)
    history = model.fit(X, Y, epochs=5, batch_size=10, callbacks=[stop], verbose=0,
                        validation_data=(X[:10], Y[:10]))
    # as Keras: the epoch ends after that batch (with its validation and logs), and training stops
    assert stop.batches == 2 and model.optimizer.t == 2
    assert len(history["loss"]) == 1 and len(history["val_loss"]) == 1


def test_stop_training_from_an_epoch_hook_stops_after_that_epoch():
    model = classifier()
    stop = StopAt(epoch=2)
    history = model.fit(X, Y, epochs=10, batch_size=20, callbacks=[stop], verbose=0)
    assert len(history["loss"]) == 3 and stop.batches == 9 and model.optimizer.t == 9
    # stop_training is reset by the next fit
    assert len(model.fit(X, Y, epochs=2, verbose=0)["loss"]) == 2


def test_early_stopping_takes_keras_names():
    assert nn.EarlyStopping(restore_best_weights=False).restore_best is False
    assert nn.EarlyStopping(restore_best=False).restore_best_weights is False
    assert nn.EarlyStopping().restore_best_weights is True
    model = classifier(lr=0.05)
    stopper = nn.EarlyStopping(monitor="accuracy", patience=0, min_delta=0.5)
    history = model.fit(X, Y, epochs=10, callbacks=[stopper], verbose=0)
    # accuracy is maximised: no epoch beats the first by 0.5, the second stops
    assert stopper.sign == -1 and len(history["loss"]) == 2 and stopper.best_epoch == 0


# ------------------------------------------------------------- checkpoints
class Predictions(nn.Callback):
    """The model's predictions on X (its first features) at the end of each epoch."""

    def __init__(self):
        self.outputs = []

    def on_epoch_end(self, epoch, logs=None):
        self.outputs.append(self.model.predict(X[:, :self.model.input_dim]))


def test_model_checkpoint_files_reload_to_identical_predictions(tmp_path):
    model = classifier()
    seen = Predictions()
    path = tmp_path / "model-{epoch:02d}-{loss:.3f}.npz"
    history = model.fit(X, Y, epochs=3, callbacks=[seen, nn.ModelCheckpoint(path, monitor="loss")], verbose=0)
    files = sorted(os.listdir(tmp_path))
    assert files == [f"model-{e + 1:02d}-{history['loss'][e]:.3f}.npz" for e in range(3)]  # Keras: from 1
    for name, expected in zip(files, seen.outputs):
        np.testing.assert_array_equal(nn.load(tmp_path / name).predict(X), expected)
    # the reloaded model trains on exactly as the original would (optimizer state kept)
    reloaded = nn.load(tmp_path / files[-1])
    model.fit(X, Y, epochs=1, shuffle=False, verbose=0)
    reloaded.fit(X, Y, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_array_equal(reloaded.get_flat_params(), model.get_flat_params())


def test_model_checkpoint_save_best_only_keeps_the_best_epoch(tmp_path):
    Xn, y = data(120, 3), (data(120, 1, seed=3)[:, 0] > 0).astype(int)  # noise: val_loss goes up and down
    model = nn.Sequential([nn.Dense(32, "relu"), nn.Dense(2)], loss="sparse_categorical_crossentropy",
                          optimizer=nn.Adam(0.1), seed=0)
    seen = Predictions()
    path = tmp_path / "best.npz"
    history = model.fit(Xn, y, epochs=8, validation_split=0.25, verbose=0,
                        callbacks=[seen, nn.ModelCheckpoint(path, save_best_only=True)])
    best = int(np.argmin(history["val_loss"]))
    assert best < 7  # the last epoch is not the best one: the file is not merely the last model
    np.testing.assert_array_equal(nn.load(path).predict(X[:, :3]), seen.outputs[best])
    assert os.listdir(tmp_path) == ["best.npz"]  # no temporary file left
    with pytest.raises(ValueError, match="needs validation"):
        model.fit(Xn, y, callbacks=[nn.ModelCheckpoint(path, save_best_only=True)], verbose=0)
    with pytest.raises(ValueError, match="'val_loss', which is not among the logged values"):
        model.fit(Xn, y, callbacks=[nn.ModelCheckpoint(tmp_path / "{val_loss}.npz")], verbose=0)


def test_model_checkpoint_leaves_the_previous_file_when_saving_fails(tmp_path, monkeypatch):
    model = classifier()
    path = tmp_path / "m.npz"
    model.fit(X, Y, epochs=1, callbacks=[nn.ModelCheckpoint(path, monitor="loss")], verbose=0)
    before = path.read_bytes()

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        model.fit(X, Y, epochs=1, callbacks=[nn.ModelCheckpoint(path, monitor="loss")], verbose=0)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.npz"]


def test_csv_logger_writes_the_history(tmp_path):
    path = tmp_path / "log.csv"
    model = classifier()
    history = model.fit(X, Y, epochs=3, validation_split=0.2, callbacks=[nn.CSVLogger(path)], verbose=0)
    keys = sorted(history)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch"] + keys
    assert [[int(r[0])] + [float(v) for v in r[1:]] for r in rows[1:]] == \
        [[e] + [history[k][e] for k in keys] for e in range(3)]
    more = model.fit(X, Y, epochs=2, validation_split=0.2, callbacks=[nn.CSVLogger(path, ";", append=True)],
                     verbose=0)
    lines = path.read_text().splitlines()
    assert len(lines) == 6 and lines[4].split(";") == ["0"] + [repr(more[k][0]) for k in keys]
    model.fit(X, Y, epochs=1, callbacks=[nn.CSVLogger(path)], verbose=0)
    assert path.read_text().splitlines()[0] == "epoch,accuracy,loss,lr"  # overwritten


# -------------------------------------------------------------- learning rate
def test_learning_rate_scheduler_sets_the_rate_of_the_updates():
    # plain SGD, one full-batch step per epoch: the step is exactly -lr * gradient
    model = nn.Sequential([nn.Dense(3)], loss="sparse_categorical_crossentropy", optimizer=nn.SGD(0.1),
                          seed=0, dtype=np.float64)
    model.build(4)
    schedule = nn.LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch else 0.3)
    used = []

    class Step(nn.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.before = self.model.get_flat_params().copy()
            self.grad = self.model.loss_and_gradient(X, Y)[1]

        def on_epoch_end(self, epoch, logs=None):
            step = self.model.get_flat_params() - self.before
            used.append(float(np.median(-step / self.grad)))

    history = model.fit(X, Y, epochs=4, batch_size=None, callbacks=[schedule, Step()], verbose=0)
    np.testing.assert_allclose(used, [0.3, 0.15, 0.075, 0.0375], rtol=1e-9)
    assert history["lr"] == pytest.approx([0.3, 0.15, 0.075, 0.0375])
    assert model.optimizer.lr == pytest.approx(0.0375)
    with pytest.raises(ValueError, match="schedule"):
        classifier(optimizer=nn.SGD(0.1, schedule=nn.StepDecay())).fit(X, Y, callbacks=[schedule], verbose=0)
    with pytest.raises(ValueError, match="learning rate"):
        model.fit(X, Y, callbacks=[nn.LearningRateScheduler(lambda epoch, lr: -1.0)], verbose=0)


def test_reduce_lr_on_plateau_follows_keras_rule():
    # min_delta huge: only the first epoch improves; patience 2, cooldown 1, factor 0.5, min_lr 0.02
    model = classifier(optimizer=nn.SGD(0.1))
    reducer = nn.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, min_delta=1e9, cooldown=1,
                                   min_lr=0.02)
    history = model.fit(X, Y, epochs=9, callbacks=[reducer], verbose=0)
    # reductions at the end of epochs 2, 4 and 6 (wait 2; after each a cooldown epoch), floored at min_lr
    assert history["lr"] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02, 0.02])
    with pytest.raises(ValueError, match="val_loss"):
        model.fit(X, Y, callbacks=[nn.ReduceLROnPlateau()], verbose=0)


# ------------------------------------------------------------------- NaN
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_terminate_on_nan_returns_instead_of_raising(capsys):
    Xb = data(64, 4) * 100
    y = Xb @ np.ones(4) * 1e3

    def diverging():
        return nn.Sequential([nn.Dense(16, "relu"), nn.Dense(1)], loss="mse", optimizer=nn.SGD(1e3), seed=0)

    with pytest.raises(nn.TrainingDivergedError) as info:
        diverging().fit(Xb, y, epochs=5, batch_size=8, verbose=0)
    model = diverging()
    history = model.fit(Xb, y, epochs=5, batch_size=8, verbose=0, callbacks=[nn.TerminateOnNaN()])
    assert history.epoch == list(range(info.value.epoch - 1))  # the completed epochs
    assert np.isfinite(model.get_flat_params()).all()
    assert "invalid loss" in capsys.readouterr().out


# --------------------------------------------------------------- class weights
def test_class_weight_multiplies_the_sample_weights():
    y = np.where(Y == 2, 1, Y)  # classes 0 and 1, unbalanced
    weights = {0: 3.0, 1: 0.5}
    spread = 1 + (np.arange(len(y)) % 4) / 4  # products exact in float32
    a = classifier(2).fit(X, y, epochs=2, class_weight=weights, verbose=0).model
    sample = np.array([weights[label] for label in y]) * spread
    b = classifier(2).fit(X, y, epochs=2, sample_weight=sample, verbose=0).model
    c = classifier(2).fit(X, y, epochs=2, class_weight=weights, sample_weight=spread,
                          verbose=0).model
    np.testing.assert_array_equal(c.get_flat_params(), b.get_flat_params())
    assert not np.array_equal(a.get_flat_params(), b.get_flat_params())
    balanced = compute_class_weight("balanced", classes=np.array([0, 1]), y=y)
    d = classifier(2).fit(X, y, epochs=2, class_weight="balanced", verbose=0).model
    e = classifier(2).fit(X, y, epochs=2, sample_weight=balanced[y], verbose=0).model
    np.testing.assert_array_equal(d.get_flat_params(), e.get_flat_params())
    # labels of any kind: the dict's keys are the labels given to fit
    names = np.array(["cat", "dog"])[y]
    f = classifier(2).fit(X, names, epochs=2, class_weight={"cat": 3.0, "dog": 0.5}, verbose=0).model
    np.testing.assert_array_equal(f.get_flat_params(), a.get_flat_params())
    with pytest.raises(ValueError, match="not in class"):
        classifier(2).fit(X, names, class_weight={"cow": 2.0}, verbose=0)
    with pytest.raises(TypeError, match="class_weight"):
        classifier(2).fit(X, y, class_weight=[1, 2], verbose=0)
    with pytest.raises(ValueError, match="class_weight"):
        nn.Sequential([nn.Dense(1)], loss="mse").fit(X, X[:, 0], class_weight="balanced", verbose=0)


# -------------------------------------------------------------------- labels
@pytest.mark.parametrize("labels", [np.array(["a", "b", "c"]), np.array([3, 7, 10]), ["x", "yy", "zzz"]],
                         ids=["strings", "integers", "list"])
def test_any_labels_train_as_their_sorted_indices(labels, tmp_path):
    named = np.asarray(labels)[Y]
    model = classifier().fit(X, list(named) if isinstance(labels, list) else named, epochs=2, verbose=0).model
    reference = classifier().fit(X, Y, epochs=2, verbose=0).model
    np.testing.assert_array_equal(model.get_flat_params(), reference.get_flat_params())
    np.testing.assert_array_equal(model.classes_, np.asarray(labels))
    np.testing.assert_array_equal(model.predict_classes(X), np.asarray(labels)[reference.predict_classes(X)])
    assert model.evaluate(X, named) == reference.evaluate(X, Y)
    model.save(tmp_path / "m.npz")
    loaded = nn.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.classes_, model.classes_)
    assert loaded.classes_.dtype == model.classes_.dtype
    np.testing.assert_array_equal(loaded.predict_classes(X), model.predict_classes(X))
    with pytest.raises(ValueError, match="not among the model's classes_"):
        unknown = np.array(["?"] if named.dtype.kind == "U" else [99])
        model.fit(X, np.concatenate([named[:-1], unknown]), verbose=0)


def test_integer_labels_keep_their_targets_and_binary_labels_of_any_kind():
    model = classifier().fit(X, Y, epochs=1, verbose=0).model
    np.testing.assert_array_equal(model.classes_, np.arange(3))
    assert model.predict_classes(X).dtype == np.int64
    # labels 0..C-1 are the targets as before, also when some class is absent
    two = classifier()
    two.fit(X[Y < 2], Y[Y < 2], epochs=1, verbose=0)
    np.testing.assert_array_equal(two.classes_, np.arange(3))
    flags = Y == 1
    for loss, outputs in (("binary_crossentropy", 1), ("sparse_categorical_crossentropy", 2), ("hinge", 1)):
        def make(loss=loss, outputs=outputs):
            return nn.Sequential([nn.Dense(outputs)], loss=loss, seed=0)

        booleans = make().fit(X, flags, epochs=2, verbose=0).model
        integers = make().fit(X, flags.astype(int), epochs=2, verbose=0).model
        sparse = make().fit(X, np.where(flags, 7, 3), epochs=2, verbose=0).model
        for other in (integers, sparse):
            np.testing.assert_array_equal(booleans.get_flat_params(), other.get_flat_params())
        assert booleans.predict_classes(X).dtype == bool
        np.testing.assert_array_equal(sparse.predict_classes(X), np.where(booleans.predict_classes(X), 7, 3))
    # the hinge's -1/+1 labels: the same targets as 0/1, and predict_classes gives -1/+1
    signs = nn.Sequential([nn.Dense(1)], loss="hinge", seed=0).fit(X, np.where(flags, 1, -1), verbose=0).model
    np.testing.assert_array_equal(signs.classes_, [-1, 1])
    np.testing.assert_array_equal(signs.get_flat_params(), nn.Sequential([nn.Dense(1)], loss="hinge", seed=0)
                                  .fit(X, flags.astype(int), verbose=0).model.get_flat_params())
    assert set(signs.predict_classes(X)) == {-1, 1}
    # probabilities stay targets of binary cross-entropy
    soft = nn.Sequential([nn.Dense(1)], loss="binary_crossentropy", seed=0)
    soft.fit(X, np.linspace(0, 1, len(X)), verbose=0)
    np.testing.assert_array_equal(soft.classes_, [0, 1])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_estimators_models_have_no_classes():
    from fastnn import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, np.array(list("abc"))[Y])
    assert clf.model_.classes_ is None
    np.testing.assert_array_equal(clf.classes_[clf.model_.predict_classes(X)], clf.predict(X))
