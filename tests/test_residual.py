"""nn.Residual: x + f(x) inside Sequential, against finite differences on every
backend; saving, pickling, freezing, summary; and the vanishing-gradient
experiment of a deep sigmoid stack."""

import pickle

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import load_digits

import fastnn
from fastnn import nn
from fastnn.testing import assert_gradients

CE = "sparse_categorical_crossentropy"


def blocks():
    """Every kind of block: identity skip, a projection (width 5 -> 4), batch norm
    and dropout inside, a nested block."""
    return [nn.Dense(5, "tanh"),
            nn.Residual([nn.Dense(6, "gelu"), nn.BatchNorm(), nn.Dropout(0.2), nn.Dense(5)]),
            nn.Residual([nn.Dense(4, "sigmoid")]),
            nn.Residual([nn.Residual([nn.Dense(4, "elu")]), nn.Activation("tanh")], projection=True),
            nn.Dense(3)]


@pytest.mark.parametrize("backend", fastnn.available_backends())
def test_residual_gradients_match_finite_differences(backend):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(9, 3)), rng.integers(0, 3, 9)
    model = nn.Sequential(blocks(), loss=CE, seed=1, dtype=np.float64, backend=backend, l2=0.01, input_dim=3)
    assert [layer.output_shape for layer in model.layers] == [(5,), (5,), (4,), (4,), (3,)]
    assert model.layers[2].shortcut is not None and model.layers[1].shortcut is None
    model.set_flat_params(rng.uniform(-0.5, 0.5, model.n_params))
    assert_gradients(model, X, y, eps=1e-6, rtol=1e-5, atol=1e-7)


def test_residual_forward_is_x_plus_f_of_x():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 4))
    f = nn.Sequential([nn.Dense(4, "tanh"), nn.Dense(4)], seed=0, input_dim=4, dtype=np.float64)
    model = nn.Sequential([nn.Residual(f.layers)], seed=3, input_dim=4, dtype=np.float64)  # copies f's values
    assert_allclose(model.predict(X), X + f.predict(X), rtol=1e-14)
    projected = nn.Sequential([nn.Residual([nn.Dense(2)])], seed=0, input_dim=4, dtype=np.float64)
    block = projected.layers[0]
    expected = X @ block.shortcut.W + block.shortcut.b + X @ block.layers[0].W + block.layers[0].b
    assert_allclose(projected.predict(X), expected, rtol=1e-13)


def test_residual_saves_loads_pickles_and_summarises(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), rng.integers(0, 3, 20)
    model = nn.Sequential(blocks(), loss=CE, seed=0)
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    model.save(tmp_path / "r.npz")
    again = nn.load(tmp_path / "r.npz")
    for other in (again, pickle.loads(pickle.dumps(model))):
        assert_array_equal(other.predict(X), model.predict(X))
        assert_array_equal(other.get_flat_state(), model.get_flat_state())
        assert other.summary_str() == model.summary_str()
    again.fit(X, y, epochs=1, batch_size=8, verbose=0)  # its optimizer state came along
    text = model.summary_str()
    for name in ("residual", "  dense_1", "  residual_1_projection", "  residual_3", "    dense_4"):
        assert "\n" + name + " " in text, name
    assert f"Total params: {model.n_params}" in text
    keys = list(model.gradients())
    assert "dense_1/W" in keys and "residual_1_projection/W" in keys and len(keys) == len(model._slots)


def test_frozen_residual_block_keeps_its_parameters():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), rng.integers(0, 3, 20)
    model = nn.Sequential(blocks(), loss=CE, seed=0, dtype=np.float64)
    block, inner = model.layers[3], model.layers[1].layers[0]
    block.trainable = False  # the whole block, its projection included
    inner.trainable = False  # one layer inside another block
    _, full = model.loss_and_gradient(X, y)
    before = block.params and {k: v.copy() for k, v in block.params.items()}
    inner_before = inner.W.copy()
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    for k, v in block.params.items():
        assert_array_equal(v, before[k])
    assert_array_equal(inner.W, inner_before)
    grads = model.gradients()
    assert not grads["dense_4/W"].any() and not grads["residual_2_projection/W"].any()
    assert not grads["dense_1/W"].any() and grads["dense_2/W"].any()
    # the layers below still get the gradient through the frozen ones
    model.set_flat_params(model.get_flat_params())
    block.trainable = inner.trainable = True
    _, full = model.loss_and_gradient(X, y)
    block.trainable = inner.trainable = False
    _, partial = model.loss_and_gradient(X, y)
    assert_allclose(partial[:model.layers[0].W.size], full[:model.layers[0].W.size], rtol=1e-12)


def test_residual_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        nn.Sequential([nn.Residual([nn.Dense(3)], projection=False)], input_dim=4)
    with pytest.raises(ValueError, match="only change the last axis"):
        nn.Sequential([nn.Residual([nn.Flatten()])], input_shape=(2, 3))
    with pytest.raises(TypeError, match="non-empty list"):
        nn.Residual([])
    with pytest.raises(TypeError, match="projection"):
        nn.Residual([nn.Dense(2)], projection="yes")


def test_residual_stack_of_sigmoids_trains_where_the_plain_stack_does_not():
    """8 sigmoid layers of 32 after a sigmoid input layer, SGD with momentum,
    10 epochs on digits. Measured epoch losses (fastnn c, float32, seed 0):
    plain    2.356 2.330 2.326 2.328 2.314 2.316 2.316 2.311 2.313 2.316 (ln 10 = 2.303: chance)
    residual 7.465 1.620 0.885 0.537 0.354 0.268 0.217 0.177 0.153 0.140"""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    losses = {}
    for kind in ("plain", "residual"):
        hidden = [nn.Dense(32, "sigmoid") for _ in range(8)]
        if kind == "residual":
            hidden = [nn.Residual([layer]) for layer in hidden]
        model = nn.Sequential([nn.Dense(32, "sigmoid")] + hidden + [nn.Dense(10)],
                              loss=CE, optimizer=nn.SGD(0.05, momentum=0.9), seed=0)
        losses[kind] = model.fit(X, y, epochs=10, batch_size=32, verbose=0).history["loss"]
    assert min(losses["plain"]) > 0.95 * np.log(10)  # never better than chance
    assert losses["residual"][-1] < 0.5 and losses["plain"][-1] > 4 * losses["residual"][-1]
