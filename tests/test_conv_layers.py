"""Convolutional layers: Conv2D, MaxPool2D, AveragePooling2D and
GlobalAveragePooling2D in a Sequential model, against finite differences on
every backend; batch norm and dropout per channel on images; penalties on
every weight tensor; save, load and summary; training equivalence across
backends; bad options."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fastnn
from fastnn import nn
from fastnn.testing import assert_gradients


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """BLAS and the kernels on one thread: the small GEMMs of these tests run
    fastest so on a loaded machine."""
    fastnn.set_num_threads(1)
    yield
    fastnn.set_num_threads(2)




def images(n=5, h=6, w=5, c=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, w, c))


# each a small stack ending in Flatten + Dense(3) over (6, 5, 2) images
STACKS = {
    "conv-tanh-same-l2": lambda: [nn.Conv2D(3, 3, padding="same", activation="tanh", l2=0.05)],
    "conv-gelu-even-stride": lambda: [nn.Conv2D(2, (2, 4), strides=(2, 1), padding=(1, 2),
                                                activation="gelu", l1=0.01)],
    "conv-softmax-valid": lambda: [nn.Conv2D(3, 3, activation="softmax")],
    "maxpool": lambda: [nn.Conv2D(2, 1, activation="relu"), nn.MaxPool2D(2)],
    "maxpool-overlapping-padded": lambda: [nn.Conv2D(2, 1), nn.MaxPool2D(3, strides=2, padding=1)],
    "avgpool": lambda: [nn.Conv2D(2, 1), nn.AveragePooling2D((2, 3), strides=1, padding=1)],
    "global-avgpool": lambda: [nn.Conv2D(4, 3, padding=1, activation="elu"),
                               nn.GlobalAveragePooling2D()],
    "batchnorm-dropout": lambda: [nn.Conv2D(3, 3, padding="same"), nn.BatchNorm(),
                                  nn.Activation("relu"), nn.Dropout(0.3)],
}


@pytest.mark.parametrize("backend", fastnn.available_backends())
@pytest.mark.parametrize("stack", sorted(STACKS))
def test_conv_layers_match_finite_differences(stack, backend):
    rng = np.random.default_rng(1)
    X, y = images(), rng.integers(0, 3, 5)
    model = nn.Sequential([*STACKS[stack](), nn.Flatten(), nn.Dense(3)],
                          loss="sparse_categorical_crossentropy", seed=1, dtype=np.float64,
                          backend=backend, input_shape=(6, 5, 2))
    params = rng.uniform(-0.5, 0.5, model.n_params)
    model.set_flat_params(params)
    assert_gradients(model, X, y, eps=1e-6, rtol=1e-5, atol=1e-7)


def test_batchnorm_and_dropout_act_per_channel_on_images():
    """BatchNorm on (N, H, W, C) normalises each channel over N, H and W (as
    torch's BatchNorm2d); Dropout masks elements, as on flat rows."""
    X = images(n=4, c=3) * np.array([1.0, 5.0, 0.1]) + np.array([2.0, -1.0, 0.0])
    mean, var = X.mean(axis=(0, 1, 2)), X.var(axis=(0, 1, 2))
    for backend in fastnn.available_backends():
        B = fastnn.get_backend(backend)
        # a training pass with momentum 1: the running mean becomes the batch's
        bn = nn.Sequential([nn.BatchNorm(momentum=1.0)], dtype=np.float64, input_shape=(6, 5, 3))
        layer = bn.layers[0]
        y = layer.forward(B, X, {}, nn.layers.Pass(True))
        assert_allclose(y, (X - mean) / np.sqrt(var + 1e-5), rtol=1e-10, atol=1e-12)
        assert_allclose(layer.state["running_mean"], mean, rtol=1e-12)
        drop = nn.Sequential([nn.Dropout(0.5)], dtype=np.float64, input_shape=(6, 5, 3))
        out = drop.layers[0].forward(B, X, {}, nn.layers.Pass(True, seed=3))
        kept = out != 0
        assert_allclose(out[kept], 2 * X[kept])
        assert 0.3 < kept.mean() < 0.7 and kept.any(axis=(0, 1, 2)).all()


def test_penalties_apply_to_every_weight_tensor():
    """The model's l2 and each layer's l2/l1 reach Conv2D's W as Dense's: one term
    over the weights block when equal, one per tensor otherwise."""
    X, y = images(), np.arange(5) % 3
    for conv_l2, dense_l2 in ((0.1, 0.1), (0.3, 0.0)):
        layers = [nn.Conv2D(2, 3, l2=conv_l2), nn.Flatten(), nn.Dense(3, l2=dense_l2)]
        model = nn.Sequential(layers, loss="sparse_categorical_crossentropy", seed=0,
                              dtype=np.float64, l2=0.01, input_shape=(6, 5, 2))
        plain = nn.Sequential([nn.Conv2D(2, 3), nn.Flatten(), nn.Dense(3)],
                              loss="sparse_categorical_crossentropy", seed=0, dtype=np.float64,
                              input_shape=(6, 5, 2))
        plain.set_flat_params(model.get_flat_params())
        loss, grad = model.loss_and_gradient(X, y)
        base, base_grad = plain.loss_and_gradient(X, y)
        conv_W, dense_W = model.layers[0].params["W"], model.layers[2].params["W"]
        penalty = (0.5 * (conv_l2 + 0.01) * (conv_W**2).sum()
                   + 0.5 * (dense_l2 + 0.01) * (dense_W**2).sum())
        assert loss == pytest.approx(base + penalty, rel=1e-12)
        expected = base_grad.copy()
        w_grad = np.zeros_like(grad)  # the weights come first in the flat layout
        start = 0
        for layer, rate in ((model.layers[0], conv_l2), (model.layers[2], dense_l2)):
            size = layer.params["W"].size
            w_grad[start:start + size] = (rate + 0.01) * layer.params["W"].ravel()
            start += size
        assert_allclose(grad, expected + w_grad, rtol=1e-10, atol=1e-12)


def cnn(backend=None, dtype=np.float32, seed=0):
    return nn.Sequential(
        [nn.Conv2D(4, 3, padding="same", activation="relu"), nn.MaxPool2D(2),
         nn.Conv2D(6, (2, 3), padding=(1, 1), activation="tanh", l2=1e-3), nn.BatchNorm(),
         nn.AveragePooling2D(2), nn.Flatten(), nn.Dropout(0.2), nn.Dense(3)],
        loss="sparse_categorical_crossentropy", optimizer=nn.Adam(1e-2), seed=seed,
        backend=backend, dtype=dtype)


def test_save_load_and_summary(tmp_path):
    X, y = images(n=12, h=8, w=8, c=1), np.arange(12) % 3
    model = cnn()
    model.fit(X, y, epochs=2, batch_size=4, verbose=0)
    text = model.summary_str()
    for part in ("Conv2D(filters=4", "MaxPool2D(pool_size=[2, 2]", "(None, 8, 8, 4)",
                 "(None, 4, 4, 4)", "(None, 5, 4, 6)", "(None, 2, 2, 6)", "AveragePooling2D",
                 f"Total params: {model.n_params}"):
        assert part in text, part
    model.save(tmp_path / "cnn.npz")
    again = nn.load(tmp_path / "cnn.npz")
    assert_array_equal(again.predict(X), model.predict(X))
    assert again.summary_str() == text
    assert again.layers[2].kernel_size == (2, 3) and again.layers[2].l2 == 1e-3
    for m in (again, model):  # the optimizer state travels too: training resumes identically
        m.fit(X, y, epochs=1, batch_size=4, verbose=0, seed=9)
    assert_array_equal(again.get_flat_params(), model.get_flat_params())
    gap = nn.Sequential([nn.GlobalAveragePooling2D()], input_shape=(3, 4, 5))
    gap.save(tmp_path / "gap.npz")
    assert nn.load(tmp_path / "gap.npz").output_shape == (5,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_training_is_the_same_on_every_backend(dtype):
    """20 Adam steps of a small CNN (batch norm, dropout, both poolings) from one
    seed: the same weights on every backend (float32: Adam's first steps are
    about lr * sign(grad), so rounding in small gradients shows in the weights)."""
    X, y = images(n=32, h=8, w=8, c=1, seed=2).astype(dtype), np.arange(32) % 3
    results = {}
    for name in fastnn.available_backends():
        model = cnn(name, dtype)
        for _ in range(20):
            model.train_step(X, y)
        results[name] = (model.get_flat_params().copy(), model.evaluate(X, y)["loss"])
    expected, expected_loss = results["numpy"]
    rtol, atol = (2e-3, 1e-4) if dtype == np.float32 else (1e-8, 1e-11)
    for name, (params, loss) in results.items():
        assert_allclose(params, expected, rtol=rtol, atol=atol, err_msg=name)
        assert loss == pytest.approx(expected_loss, rel=1e-3 if dtype == np.float32 else 1e-9)


def test_fit_takes_images_and_rejects_other_shapes():
    X, y = images(n=10, h=8, w=8, c=1), np.arange(10) % 3
    model = cnn()
    model.fit(X, y, epochs=1, verbose=0)
    assert model.input_shape == (8, 8, 1)
    with pytest.raises(ValueError, match="samples of shape"):
        model.predict(np.zeros((3, 8, 8, 2)))
    with pytest.raises(ValueError, match=r"Conv2D needs images \(H, W, C\)"):
        nn.Sequential([nn.Conv2D(2, 3)], input_shape=(8, 8))
    with pytest.raises(ValueError, match="larger than the padded image"):
        nn.Sequential([nn.Conv2D(2, 5)], input_shape=(4, 8, 1))
    with pytest.raises(ValueError, match="'same' needs an odd window"):
        nn.Conv2D(2, 2, padding="same")
    with pytest.raises(ValueError, match="padding"):
        nn.Conv2D(2, 3, padding="full")
    with pytest.raises(ValueError, match="padding"):
        nn.Conv2D(2, 3, padding=3)
    with pytest.raises(ValueError, match="at most half the pool"):
        nn.MaxPool2D(2, padding=2)
    with pytest.raises(ValueError, match="kernel_size"):
        nn.Conv2D(2, 0)
    with pytest.raises(TypeError, match="strides"):
        nn.MaxPool2D(2, strides=1.5)
    with pytest.raises(ValueError, match="filters"):
        nn.Conv2D(0, 3)


def digits_cnn(seed=1):
    """The CNN of the README and of `python -m fastnn demo --model cnn` on
    scikit-learn's 8 x 8 digits."""
    return nn.Sequential(
        [nn.Conv2D(32, 3, padding="same", activation="relu"), nn.BatchNorm(), nn.MaxPool2D(2),
         nn.Conv2D(64, 3, padding="same", activation="relu"), nn.BatchNorm(), nn.MaxPool2D(2),
         nn.Flatten(), nn.Dropout(0.2), nn.Dense(10)],
        loss="sparse_categorical_crossentropy", optimizer=nn.Adam(3e-3), seed=seed)


def test_cnn_on_digits_reaches_98_5_percent():
    """A dense MLP reaches about 97.5% on this split; this CNN 99.3% (numpy, c)
    and 99.1% (numba) after 12 epochs (measured; a few seconds on one thread)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X.reshape(-1, 8, 8, 1) / 16.0, y, random_state=0)
    model = digits_cnn()
    model.fit(X_train, y_train, epochs=12, batch_size=32, verbose=0)
    accuracy = (model.predict_classes(X_test) == y_test).mean()
    assert accuracy >= 0.985, accuracy


@pytest.mark.parametrize("backend", [b for b in fastnn.available_backends() if b != "numpy"])
def test_training_steps_reuse_their_buffers(backend):
    """After the first step, the layers' workspaces and the fast backends' column
    matrices (GemmConv's per-thread cache; the C kernels' per-range tiles) are
    the same arrays step after step."""
    X, y = images(n=16, h=8, w=8, c=1, seed=3).astype(np.float32), np.arange(16) % 3
    model = cnn(backend)
    model.train_step(X, y)

    def buffers():
        layers = {(i, key): a for i, ws in enumerate(model._workspaces[X.shape][0])
                  for key, a in ws.items() if isinstance(a, np.ndarray) and key != "x"}
        columns = {key: a for key, a in getattr(fastnn.get_backend(backend)._conv_local, "arrays",
                                                 {}).items() if key[0] == backend}
        return layers, columns
    before = buffers()
    # the 3x3 and 2x3 kernels need columns
    assert any(key[1] == "cols" or key[1][0] == "tiles" for key in before[1])
    for _ in range(3):
        model.train_step(X, y)
    after = buffers()
    for old, new in zip(before, after):
        assert old.keys() == new.keys() and all(old[k] is new[k] for k in old)


@pytest.mark.parametrize("backend", [b for b in fastnn.available_backends() if b != "numpy"])
def test_backward_rebuilds_columns_of_a_changed_input(backend):
    """The backward reuses the forward's column matrix only for the same x, bit for
    bit: x changed in place, or another x of the same shape, gets its own."""
    fast, ref = fastnn.get_backend(backend), fastnn.get_backend("numpy")
    rng = np.random.default_rng(5)
    x, x2 = rng.standard_normal((2, 2, 6, 5, 3))
    W, b = rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4)
    y = fast.conv2d_forward(x, W, b, 1, 1)
    dy = rng.standard_normal(y.shape)

    def grads(backend, x):
        return backend.conv2d_backward(dy, x, W, y, stride=1, padding=1)

    assert_allclose(grads(fast, x)[1], grads(ref, x)[1], rtol=1e-12)  # reused
    fast.conv2d_forward(x, W, b, 1, 1)
    x[0, 1, 2, 0] += 1  # in place, after the forward
    assert_allclose(grads(fast, x)[1], grads(ref, x)[1], rtol=1e-12)
    fast.conv2d_forward(x, W, b, 1, 1)
    assert_allclose(grads(fast, x2)[1], grads(ref, x2)[1], rtol=1e-12)


@pytest.mark.parametrize("backend", [b for b in fastnn.available_backends() if b != "numpy"])
@pytest.mark.parametrize("tile_bytes", [1, 4000])
def test_column_tiles_give_the_whole_batch_result(backend, tile_bytes, monkeypatch):
    """The fast backends build the columns, and compute dx, a tile of images at a
    time: with tiles of one image (1 byte) and of at most 2 images, the last one
    shorter (4000 bytes; 1728 bytes of columns per image), every output equals
    the reference's."""
    from fastnn.backends import _gemm_conv

    monkeypatch.setattr(_gemm_conv, "COLUMN_TILE_BYTES", tile_bytes)
    monkeypatch.setattr(_gemm_conv, "THREAD_TILE_BYTES", tile_bytes)  # the C kernels' tiles
    assert _gemm_conv.GemmConv._tiles(5, 1728) == ([(k, k + 1) for k in range(5)] if tile_bytes == 1
                                                   else [(0, 2), (2, 4), (4, 5)])
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 6, 5, 2))
    W, b = rng.standard_normal((3, 2, 2, 4)), rng.standard_normal(4)  # y (5, 3, 6, 4)
    dy = rng.standard_normal((5, 3, 6, 4))
    results = []
    for name in (backend, "numpy"):
        kernels = fastnn.get_backend(name)
        preact = np.empty(dy.shape)
        y = kernels.conv2d_forward(x, W, b, (2, 1), (1, 1), "gelu", preact=preact)
        results.append((y, preact) + kernels.conv2d_backward(dy, x, W, y, "gelu", (2, 1), (1, 1),
                                                             preact=preact))
    for got, want in zip(*results):
        assert_allclose(got, want, rtol=1e-10, atol=1e-12)
