"""Every buffer fastnn allocates starts on a 64-byte boundary (chk.ALIGNMENT):
NumPy aligns to 16 bytes only, and rows that start mid cache-line split every
vector load of the kernels and of BLAS (see backends/_checks.py empty)."""

import numpy as np
import pytest

import fastnn
from fastnn import nn
from fastnn.backends import _checks as chk

BACKENDS = fastnn.available_backends()


def aligned(a):
    return a.ctypes.data % chk.ALIGNMENT == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
@pytest.mark.parametrize("shape", [(), 0, 1, 7, (3, 5), (64, 512), (2, 0, 3), (1 << 20,)])
def test_empty_and_zeros(shape, dtype):
    for a in (chk.empty(shape, dtype), chk.zeros(shape, dtype)):
        expected = np.empty(shape, dtype)
        assert aligned(a) and a.shape == expected.shape and a.dtype == expected.dtype
        assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
    assert not chk.zeros(shape, dtype).any()
    # the byte buffer it is cut from stays alive with it
    a = chk.empty(shape, dtype)
    a[...] = 1
    del expected
    assert (a == 1).all()


def sequence_model(backend):
    model = nn.Sequential([nn.LSTM(16), nn.Dense(3)], loss="squared_error", optimizer="adam",
                          backend=backend, dtype=np.float32, seed=0)
    X = np.random.default_rng(0).standard_normal((24, 5, 4)).astype(np.float32)
    return model, X, np.zeros((24, 3), np.float32)


def dense_model(backend):
    model = nn.Sequential([nn.Dense(33, activation="relu"), nn.Dense(5)], optimizer="adam",
                          loss="softmax_cross_entropy",
                          backend=backend, dtype=np.float64, seed=0)
    X = np.random.default_rng(0).standard_normal((40, 7))
    return model, X, np.arange(40) % 5


@pytest.mark.parametrize("make", [sequence_model, dense_model])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_trained_models_buffers(backend, make):
    """The flat parameter, gradient and state buffers, the optimizer's state, and
    every workspace array of a step (the batch's copy, the layers' outputs and
    saved arrays) start on the boundary."""
    model, X, y = make(backend)
    model.train_step(X, y)
    model.train_step(X, y)
    arrays = [model._params, model._grads, model._state, *model.optimizer.state.values()]
    assert len(arrays) == 5
    # a workspace: ([{name: array} per layer], {name: array} of the model's own)
    workspace = [a for layers, own in model._workspaces.values() for d in (*layers, own)
                 for a in d.values() if isinstance(a, np.ndarray)]
    assert len(workspace) >= 4
    for a in arrays + workspace:
        assert aligned(a), (a.shape, a.dtype)
    predictions = model.predict(X)
    assert aligned(predictions)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_outputs(backend):
    """Outputs a public kernel allocates (out=None) start on the boundary from
    chk.OUTPUT_ALIGN_BYTES on (below it, NumPy's allocation: the call's overhead
    is most of its time)."""
    B = fastnn.get_backend(backend)
    x = np.random.default_rng(0).standard_normal((64, 5))
    W = np.random.default_rng(1).standard_normal((5, 16))
    assert aligned(B.dense_forward(x, W, None, "relu"))  # (64, 16) float64: 8 KB
    W_x = np.random.default_rng(2).standard_normal((5, 32))
    hs, _ = B.lstm_forward(x.reshape(8, 8, 5), None, None, W_x, np.ones((8, 32)) / 8, np.zeros(32))
    assert hs.nbytes >= chk.OUTPUT_ALIGN_BYTES and aligned(hs)
    small = chk.output_empty((3, 5), np.float64)
    assert small.shape == (3, 5) and small.base is None  # NumPy's own
    assert aligned(chk.output_empty(chk.OUTPUT_ALIGN_BYTES // 8, np.float64))
