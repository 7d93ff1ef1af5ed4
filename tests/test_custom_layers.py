"""A user's Layer subclass: registered with nn.register_layer, trained inside a
Sequential, saved and loaded; the registry's refusals."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from fastnn import nn
from fastnn.nn import layers
from fastnn.testing import assert_gradients


@nn.register_layer
class FeatureScale(nn.Layer):
    """y = x * s, s (F,) one learnable factor per feature; `start` is its initial
    value (an option, so config() carries it)."""

    kind = "tests.FeatureScale"

    def __init__(self, start=1.0):
        self.start = float(start)

    def param_specs(self):
        return [("s", self.input_shape[-1:], "scale")]

    def init_params(self, backend, rng):
        self.params["s"][...] = self.start

    def forward(self, backend, x, ws, mode):
        ws["x"] = x
        return x * self.params["s"]

    def backward(self, backend, dy, ws, need_dx):
        x = ws["x"]
        self.grads["s"][...] = (dy * x).reshape(-1, x.shape[-1]).sum(axis=0)
        return dy * self.params["s"] if need_dx else None

    def config(self):
        return {"kind": self.kind, "start": self.start}


def test_registered_layer_saves_and_loads_to_identical_predictions(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    model = nn.Sequential([nn.Dense(8, "tanh"), FeatureScale(0.5), nn.Dense(3)],
                          loss="sparse_categorical_crossentropy", optimizer=nn.Adam(0.05), seed=0)
    before = model.build(5).get_flat_params().copy()
    model.fit(X, y, epochs=3, batch_size=16, verbose=0)
    s = model.layers[1].params["s"]
    assert (s != 0.5).all()  # trained like any parameter
    assert not np.array_equal(model.get_flat_params(), before)
    path = tmp_path / "custom.npz"
    model.save(path)
    loaded = nn.load(path)
    assert type(loaded.layers[1]) is FeatureScale and loaded.layers[1].start == 0.5
    assert_array_equal(loaded.layers[1].params["s"], s)
    assert_array_equal(loaded.predict(X), model.predict(X))
    # training goes on from the same state (optimizer buffers saved too)
    model.fit(X, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    loaded.fit(X, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert_array_equal(loaded.get_flat_params(), model.get_flat_params())


def test_registered_layer_gradients():
    assert_gradients(FeatureScale(0.7), np.random.default_rng(1).normal(size=(4, 3, 2)))


def test_unknown_kind_at_load_names_register_layer(tmp_path, monkeypatch):
    model = nn.Sequential([FeatureScale(), nn.Dense(2)], loss="mse", seed=0, input_dim=3)
    model.save(tmp_path / "m.npz")
    monkeypatch.delitem(layers.LAYERS, FeatureScale.kind)  # as in a process that never defined it
    with pytest.raises(ValueError, match=r"unknown layer description .*tests\.FeatureScale.*register_layer"):
        nn.load(tmp_path / "m.npz")


def test_register_layer_refusals():
    with pytest.raises(TypeError, match="subclass of fastnn.nn.Layer"):
        nn.register_layer(int)
    with pytest.raises(TypeError, match="subclass of fastnn.nn.Layer"):
        nn.register_layer(FeatureScale(1.0))  # an instance, not the class

    class Inherits(nn.Dense):  # no kind of its own: would be saved as a Dense
        pass

    with pytest.raises(ValueError, match="must define its own kind.*'Dense'"):
        nn.register_layer(Inherits)

    class Impostor(nn.Layer):
        kind = "Dense"

    with pytest.raises(ValueError, match="'Dense' is already registered for fastnn.nn.layers.Dense"):
        nn.register_layer(Impostor)
    assert layers.LAYERS["Dense"] is nn.Dense
    assert nn.register_layer(FeatureScale) is FeatureScale  # registering again is harmless


def test_a_class_defined_again_replaces_its_registration(monkeypatch):
    monkeypatch.setattr(layers, "LAYERS", dict(layers.LAYERS))  # leave the real registry as it was
    namespace = {"__name__": "notebook", "nn": nn}
    source = "@nn.register_layer\nclass Cell(nn.Layer):\n    kind = 'tests.Cell'\n"
    exec(source, namespace)  # noqa: S102
    first = namespace["Cell"]
    exec(source, namespace)  # noqa: S102  (the cell run again)
    assert layers.LAYERS["tests.Cell"] is namespace["Cell"] is not first
