"""Freezing layers, replacing a model's head, per-tensor gradients, gradient
clipping, layer names and the summary table."""

import json
import pickle

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import load_digits

import fastnn
from fastnn import nn
from fastnn.nn.optimizers import OPTIMIZERS, optimizer_from_config

CE = "sparse_categorical_crossentropy"


def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def data(n=64, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, classes, n)


# ------------------------------------------------------------------ freezing
@pytest.mark.parametrize("backend", fastnn.available_backends())
@pytest.mark.parametrize("optimizer", [nn.Adam(1e-2, weight_decay=0.01), nn.SGD(0.05, momentum=0.9),
                                       nn.AdamW(1e-2),
                                       nn.SGD(0.05, weight_decay=0.1, decoupled_weight_decay=True)],
                         ids=["adam-l2", "sgd-momentum", "adamw", "sgd-decoupled"])
def test_frozen_parameters_stay_bit_identical_through_fit(backend, optimizer):
    X, y = data()
    model = nn.Sequential([nn.Dense(8, "tanh"), nn.BatchNorm(), nn.Dense(8, "gelu", l1=1e-3), nn.Dense(3)],
                          loss=CE, optimizer=optimizer, l2=0.01, seed=0, backend=backend)
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    frozen = model.layers[:2]
    for layer in frozen:
        layer.trainable = False
    before = {name: p.copy() for layer in frozen for name, p in layer.params.items()}
    state_before = model.get_flat_state().copy()
    opt_before = {k: v.copy() for k, v in model.optimizer.state.items()}
    trained_before = model.layers[2].W.copy()
    model.fit(X, y, epochs=3, batch_size=16, verbose=0)
    for layer in frozen:
        for name, p in layer.params.items():
            assert_array_equal(p, before[name])  # bit for bit
    # the frozen batch norm normalises with its running statistics (as Keras)
    assert_array_equal(model.get_flat_state(), state_before)
    # the optimizer's state of the frozen parameters is untouched, the rest moved
    owners = [owner for owner, _ in model._owners]
    for slot, owner in zip(model._slots, owners):
        part = slice(slot.offset, slot.offset + slot.size)
        for k, v in model.optimizer.state.items():
            if owner in frozen:
                assert_array_equal(v[part], opt_before[k][part])
            else:
                assert not np.array_equal(v[part], opt_before[k][part])
    assert not np.array_equal(model.layers[2].W, trained_before)
    grads = model.gradients()
    assert not grads["dense/W"].any() and not grads["batch_norm/gamma"].any()
    assert grads["dense_1/W"].any()



@pytest.mark.parametrize("backend", fastnn.available_backends())
@pytest.mark.parametrize("kind", ["conv", "lstm", "gru-embedding"])
def test_frozen_convolution_and_recurrent_layers_stay_bit_identical(backend, kind):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 24)
    if kind == "conv":
        X = rng.normal(size=(24, 6, 6, 2))
        layers = [nn.Conv2D(4, 3, padding="same", activation="relu"), nn.MaxPool2D(), nn.Flatten(),
                  nn.Dense(3)]
    elif kind == "lstm":
        X = rng.normal(size=(24, 5, 3))
        layers = [nn.LSTM(6, return_sequences=True), nn.GRU(4), nn.Dense(3)]
    else:
        X = rng.integers(0, 7, (24, 5))
        layers = [nn.Embedding(7, 3), nn.GRU(4), nn.Dense(3)]
    model = nn.Sequential(layers, loss=CE, optimizer=nn.Adam(1e-2), l2=0.01, seed=0, backend=backend)
    model.fit(X, y, epochs=1, batch_size=8, verbose=0)
    model.layers[0].trainable = False
    before = {name: p.copy() for name, p in model.layers[0].params.items()}
    others = model.layers[-1].params["W"].copy()
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    for name, p in model.layers[0].params.items():
        assert_array_equal(p, before[name])
    assert not np.array_equal(model.layers[-1].params["W"], others)

def test_frozen_first_layer_has_no_backward():
    X, y = data()
    model = nn.Sequential([nn.Dense(8, "relu"), nn.Dense(8, "relu"), nn.Dense(3)], loss=CE, seed=0)
    model.layers[0].trainable = False
    model.train_step(X, y)
    layer_ws = model._workspaces[X.shape][0]
    assert "dx" not in layer_ws[0] and "dz" not in layer_ws[0]  # neither dW nor dx of the first layer
    assert "dx" not in layer_ws[1]  # nor the second layer's dx, which only the first would use
    w0, w12 = 6 * 8, 8 * 8 + 8 * 3  # the layout: W0 W1 W2 b0 b1 b2
    assert model._runs == ((w0, w0 + w12), (w0 + w12 + 8, w0 + w12 + 8 + 8 + 3))
    model.layers[0].trainable = True
    model.train_step(X, y)
    assert model._runs is None  # all trainable again: one kernel call over the buffer


@pytest.mark.parametrize("backend", fastnn.available_backends())
@pytest.mark.parametrize("activation", ["tanh", "gelu", None])
def test_frozen_dense_passes_the_same_gradient_down(backend, activation):
    """A frozen Dense in the middle computes dx alone (activation backward and one
    GEMM): the layers below get the same gradient as with nothing frozen."""
    X, y = data()
    model = nn.Sequential([nn.Dense(7, "relu"), nn.Dense(5, activation), nn.Dense(3)], loss=CE, seed=0,
                          dtype=np.float64, backend=backend)
    _, full = model.loss_and_gradient(X, y)
    model.layers[1].trainable = False
    _, partial = model.loss_and_gradient(X, y)
    grads = model.gradients()
    assert not grads["dense_1/W"].any() and not grads["dense_1/b"].any()
    trained = np.ones(model.n_params, bool)
    for slot, (owner, _) in zip(model._slots, model._owners):
        trained[slot.offset:slot.offset + slot.size] = owner is not model.layers[1]
    assert_allclose(partial[trained], full[trained], rtol=1e-12, atol=1e-15)


def test_unfreezing_continues_with_a_plain_step():
    X, y = data()
    model = nn.Sequential([nn.Dense(8, "tanh"), nn.Dense(3)], loss=CE, optimizer=nn.SGD(0.1), seed=0,
                          dtype=np.float64)
    model.layers[0].trainable = False
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    model.layers[0].trainable = True
    p0 = model.get_flat_params().copy()
    _, g = model.loss_and_gradient(X, y)
    model.train_step(X, y)
    assert_allclose(model.get_flat_params(), p0 - 0.1 * g, rtol=1e-12, atol=1e-15)


def test_every_layer_frozen_is_a_clear_error():
    X, y = data()
    model = nn.Sequential([nn.Dense(3)], loss=CE, seed=0)
    model.layers[0].trainable = False
    with pytest.raises(ValueError, match="frozen"):
        model.fit(X, y, verbose=0)


def test_fine_tuning_digits_beats_training_from_scratch():
    """Train on the 10 digit classes, freeze the lower layers, put a new head on
    a 5-class task (which pair of digits: y // 2) learnt from 25 samples, and
    compare with the same network trained from scratch on those samples for the
    same epochs and rate, on three splits of the data. Measured (test accuracy,
    fine-tuned against scratch): 0.76/0.72, 0.67/0.60, 0.69/0.60; with 100
    samples the two are equal (0.90/0.90, 0.89/0.87, 0.90/0.89), and with Adam's
    default rate 1e-3 for 10 epochs the head alone learns too slowly and loses
    (0.38 against 0.61)."""
    X, y = digits()
    gaps = []
    for split in range(3):
        order = np.random.default_rng(split).permutation(len(y))
        base_rows, task_rows, test_rows = order[:800], order[800:825], order[1000:]
        base = nn.Sequential([nn.Dense(64, "relu"), nn.Dense(32, "relu"), nn.Dense(10)], loss=CE, seed=0)
        base.fit(X[base_rows], y[base_rows], epochs=20, batch_size=32, verbose=0)
        before = base.get_flat_params().copy()

        tuned = nn.Sequential(base.layers[:-1] + [nn.Dense(5)], loss=CE, optimizer=nn.Adam(1e-2), seed=1)
        assert [layer.name for layer in tuned.layers] == ["dense", "dense_1", "dense_2"]
        for layer in tuned.layers[:-1]:
            layer.trainable = False
        scratch = nn.Sequential([nn.Dense(64, "relu"), nn.Dense(32, "relu"), nn.Dense(5)], loss=CE,
                                optimizer=nn.Adam(1e-2), seed=1)
        budget = dict(epochs=20, batch_size=10, verbose=0)
        tuned.fit(X[task_rows], y[task_rows] // 2, **budget)
        scratch.fit(X[task_rows], y[task_rows] // 2, **budget)
        assert_array_equal(tuned.layers[0].W, base.layers[0].W)  # copied, then frozen
        assert not np.shares_memory(tuned.layers[0].W, base.get_flat_params())
        assert_array_equal(base.get_flat_params(), before)  # the trained model is unchanged

        tuned_acc, scratch_acc = (np.mean(model.predict_classes(X[test_rows]) == y[test_rows] // 2)
                                  for model in (tuned, scratch))
        gaps.append(tuned_acc - scratch_acc)
        assert gaps[-1] > 0, gaps
    assert np.mean(gaps) > 0.03, gaps
    # then un-freeze everything with a smaller rate and train on
    head = tuned.layers[-1].W.copy()
    for layer in tuned.layers:
        layer.trainable = True
    tuned.compile(optimizer=nn.Adam(1e-3)).fit(X[task_rows], y[task_rows] // 2, **budget)
    assert not np.array_equal(tuned.layers[0].W, base.layers[0].W)
    assert not np.array_equal(tuned.layers[-1].W, head)


def test_reused_layer_must_fit_its_new_inputs():
    X, y = data(d=6)
    trained = nn.Sequential([nn.Dense(4), nn.Dense(3)], loss=CE, seed=0)
    trained.fit(X, y, verbose=0)
    with pytest.raises(ValueError, match="trained on inputs of shape"):
        nn.Sequential([trained.layers[0]], input_shape=5)


# ------------------------------------------------------------ names, summary
def test_names_are_unique_saved_and_loaded(tmp_path, capsys):
    X, y = data()
    model = nn.Sequential([nn.Dense(8, "relu"), nn.BatchNorm(), nn.Dense(8, name="hidden"), nn.Dropout(0.1),
                           nn.Dense(3)], loss=CE, seed=0)
    assert [layer.name for layer in model.layers] == ["dense", "batch_norm", "hidden", "dropout", "dense_1"]
    with pytest.raises(ValueError, match="already has a layer named 'hidden'"):
        nn.Sequential([nn.Dense(2, name="hidden"), nn.Dense(2, name="hidden")])
    with pytest.raises(ValueError, match="name"):
        nn.Dense(2, name="a/b")
    with pytest.raises(TypeError, match="trainable"):
        model.layers[0].trainable = "no"
    model.layers[0].trainable = False
    model.fit(X, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    again = nn.load(tmp_path / "m.npz")
    assert [(a.name, a.trainable) for a in again.layers] == [(a.name, a.trainable) for a in model.layers]
    copy = pickle.loads(pickle.dumps(model))
    assert copy.summary_str() == model.summary_str() == again.summary_str()
    assert model.summary() is None
    printed = capsys.readouterr().out
    assert printed.rstrip("\n") == model.summary_str()
    lines = printed.splitlines()
    assert lines[0].split() == ["Layer", "Kind", "Output", "shape", "Params", "Trainable"]
    # the columns line up: each row's parameter count ends where the header's does
    end = lines[0].index("Params") + len("Params")
    rows = [line for line in lines[2:] if line.startswith(("dense", "batch", "hidden", "dropout"))]
    assert len(rows) == 5 and all(line[end - 1] != " " and line[end] == " " for line in rows)
    counts = [6 * 8 + 8, 16, 8 * 8 + 8, 0, 8 * 3 + 3]
    assert [int(line[:end].split()[-1]) for line in rows] == counts
    assert [line.split()[-1] for line in rows] == ["no", "yes", "yes", "yes", "yes"]
    assert f"Trainable params: {sum(counts) - 56}" in lines and "Non-trainable params: 56" in lines


# ----------------------------------------------------------------- gradients
def test_gradients_are_read_only_views_by_layer_and_name():
    X, y = data()
    model = nn.Sequential([nn.Dense(5, "tanh"), nn.Dense(3)], loss=CE, seed=0, dtype=np.float64)
    loss, flat = model.loss_and_gradient(X, y)
    grads = model.gradients()
    assert list(grads) == ["dense/W", "dense/b", "dense_1/W", "dense_1/b"]
    layer = model.layers[0]
    assert grads["dense/W"].shape == layer.W.shape
    rebuilt = np.empty_like(flat)
    for slot in model._slots:
        name = model.layers[slot.layer].name + "/" + slot.name
        rebuilt[slot.offset:slot.offset + slot.size] = grads[name].ravel()
    assert_array_equal(rebuilt, flat)
    with pytest.raises(ValueError, match="read-only"):
        grads["dense/W"][0, 0] = 1.0
    model.train_step(X, y)  # after a step: the gradient that step used
    assert_array_equal(model.gradients()["dense_1/b"], model._grads[model._slots[-1].offset:])


# ------------------------------------------------------------------ clipping
def clipped_by_hand(grads, sizes, clipnorm=None, clipvalue=None, global_clipnorm=None):
    g = grads.astype(np.float64).copy()
    if clipvalue is not None:
        return np.clip(g, -clipvalue, clipvalue)
    if global_clipnorm is not None:
        norm = np.sqrt((g**2).sum())
        return g * global_clipnorm / max(norm, global_clipnorm)
    parts = np.split(g, np.cumsum(sizes)[:-1])
    return np.concatenate([p * clipnorm / max(np.sqrt((p**2).sum()), clipnorm) for p in parts])


@pytest.mark.parametrize("clip", [dict(clipnorm=0.5), dict(clipvalue=0.1), dict(global_clipnorm=1.0)],
                         ids=["clipnorm", "clipvalue", "global_clipnorm"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_clips_its_gradients_as_computed_by_hand(name, clip):
    rng = np.random.default_rng(0)
    sizes = [6, 3, 5]  # three tensors; the second small enough to stay unclipped by clipnorm
    grads = rng.normal(size=14) * np.repeat([1.0, 0.05, 3.0], sizes)
    params = rng.normal(size=14)
    backend = fastnn.get_backend("numpy")
    clipped = OPTIMIZERS[name](**clip)
    plain = optimizer_from_config({**clipped.config(), **{k: None for k in clip}})
    assert plain.config() == {k: v for k, v in clipped.config().items() if k not in clip}
    assert optimizer_from_config(clipped.config()).config() == clipped.config()  # saved with the optimizer
    p1, p2 = params.copy(), params.copy()
    clipped.bind(p1)
    plain.bind(p2)
    g = grads.copy()
    clipped.step(backend, p1, g, tensors=np.split(g, np.cumsum(sizes)[:-1]))
    expected = clipped_by_hand(grads, sizes, **clip)
    assert_allclose(g, expected, rtol=1e-14)  # the buffer is clipped in place, before the step
    assert not np.allclose(expected, grads)
    plain.step(backend, p2, expected.copy())
    assert_array_equal(p1, p2)


def test_global_norm_beyond_float32_range_still_clips():
    g = np.array([3e19, 4e19], np.float32)  # its float32 sum of squares overflows
    nn.SGD(global_clipnorm=1.0).clip(g)
    assert_allclose(g, [0.6, 0.8], rtol=1e-6)


def test_clipping_options_are_checked():
    with pytest.raises(ValueError, match="at most one"):
        nn.SGD(clipnorm=1.0, clipvalue=1.0)
    with pytest.raises(ValueError, match="clipnorm"):
        nn.Adam(clipnorm=0.0)


@pytest.mark.parametrize("backend", fastnn.available_backends())
def test_model_step_clips_the_gradient_it_reports(backend):
    X, y = data()
    model = nn.Sequential([nn.Dense(5, "tanh"), nn.Dense(3)], loss=CE, seed=0, dtype=np.float64, l2=0.1,
                          optimizer=nn.SGD(0.1, global_clipnorm=0.05), backend=backend, input_dim=6)
    p0 = model.get_flat_params().copy()
    _, g = model.loss_and_gradient(X, y)
    assert np.linalg.norm(g) > 0.05
    model.train_step(X, y)
    expected = g * 0.05 / np.linalg.norm(g)  # the L2 term's gradient is clipped with the rest
    assert_allclose(model._grads, expected, rtol=1e-10)
    assert_allclose(model.get_flat_params(), p0 - 0.1 * expected, rtol=1e-10)


@pytest.mark.parametrize("clip", [dict(clipvalue=0.1), dict(global_clipnorm=1.0)], ids=["value", "global"])
def test_clipping_matches_torch(clip):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    sizes = [6, 3, 5]
    grads = rng.normal(size=14) * np.repeat([1.0, 0.05, 3.0], sizes)
    tensors = [torch.nn.Parameter(torch.zeros(n, dtype=torch.float64)) for n in sizes]
    for t, g in zip(tensors, np.split(grads, np.cumsum(sizes)[:-1])):
        t.grad = torch.from_numpy(g.copy())
    if "clipvalue" in clip:
        torch.nn.utils.clip_grad_value_(tensors, clip["clipvalue"])
    else:
        torch.nn.utils.clip_grad_norm_(tensors, clip["global_clipnorm"])
    ours = grads.copy()
    nn.SGD(**clip).clip(ours)
    # torch divides by the norm + 1e-6 (Keras, and fastnn, by the norm): 3e-7 here
    assert_allclose(ours, np.concatenate([t.grad.numpy() for t in tensors]), rtol=1e-6)


@pytest.mark.parametrize("field, value, match", [("trainable", "yes", "trainable"), ("name", 3, "name")])
def test_invalid_name_or_trainable_in_a_file_is_refused(tmp_path, field, value, match):
    model = nn.Sequential([nn.Dense(2)], input_dim=3, seed=0)
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as f:
        arrays = {k: f[k] for k in f.files}
    description = json.loads(str(arrays["description"]))
    description["layers"][0][field] = value
    arrays["description"] = np.array(json.dumps(description))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        nn.load(tmp_path / "bad.npz")
