"""The sequence layers (SimpleRNN, LSTM, GRU, Embedding): gradients of small
stacked models against finite differences on every backend, save and load,
input checks, and two learning tasks (the adding problem, digits as rows)."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastnn
from fastnn import nn
from fastnn.testing import assert_gradients


def sequences(n=6, t=5, f=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, t, f)), rng.integers(0, 3, n)


STACKS = {
    "rnn-tanh-relu": lambda: [nn.SimpleRNN(4, return_sequences=True), nn.SimpleRNN(3, "relu"), nn.Dense(3)],
    "lstm-gru": lambda: [nn.LSTM(4, return_sequences=True), nn.GRU(3), nn.Dense(3)],
    "gru-sequence-dense": lambda: [nn.GRU(3, return_sequences=True), nn.Dense(2, "tanh"), nn.Flatten(),
                                   nn.Dense(3)],
    # the LSTM keeping its last state only, below a layer and first
    "gru-lstm": lambda: [nn.GRU(4, return_sequences=True), nn.LSTM(3), nn.Dense(3)],
    "lstm-dense": lambda: [nn.LSTM(3), nn.Dense(3)],
}


@pytest.mark.parametrize("backend", fastnn.available_backends())
@pytest.mark.parametrize("stack", sorted(STACKS))
def test_stacked_layers_match_finite_differences(stack, backend):
    X, y = sequences()
    model = nn.Sequential(STACKS[stack](), loss="sparse_categorical_crossentropy", seed=1,
                          dtype=np.float64, backend=backend)
    model.build(X.shape[1:])
    model.set_flat_params(np.random.default_rng(2).uniform(-0.6, 0.6, model.n_params))
    assert_gradients(model, X, y, eps=1e-6, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", fastnn.available_backends())
def test_embedding_matches_finite_differences(backend):
    rng = np.random.default_rng(0)
    tokens, y = rng.integers(0, 7, (6, 5)), rng.integers(0, 3, 6)
    tokens[0, :3] = 4  # a token repeated: its gradient rows add up
    model = nn.Sequential([nn.Embedding(7, 3), nn.LSTM(4), nn.Dense(3)],
                          loss="sparse_categorical_crossentropy", seed=1, dtype=np.float64,
                          backend=backend)
    model.build((5,))
    model.set_flat_params(rng.uniform(-0.6, 0.6, model.n_params))
    assert_gradients(model, tokens, y, eps=1e-6, rtol=1e-5, atol=1e-7)
    W = model.layers[0].params["W"]
    np.testing.assert_array_equal(model.layers[0].forward(model.backend, tokens, {}, None), W[tokens])


def test_layers_save_load_and_summary(tmp_path):
    rng = np.random.default_rng(0)
    tokens, y = rng.integers(0, 9, (20, 6)), rng.normal(size=(20, 1))
    model = nn.Sequential([nn.Embedding(9, 4), nn.SimpleRNN(5, "relu", return_sequences=True),
                           nn.LSTM(4, return_sequences=True), nn.GRU(3), nn.Dense(1)],
                          loss="squared_error", seed=0)
    model.fit(tokens, y, epochs=2, batch_size=8, verbose=0)
    text = model.summary_str()
    for line in ("Embedding(input_dim=9, output_dim=4)", "(None, 6, 4)", "(None, 6, 5)", "(None, 3)"):
        assert line in text
    # parameters: 9*4 + (4*5 + 5*5 + 5) + 4*(5*4 + 4*4 + 4) + 3*(4*3 + 3*3) + 2*9 + (3 + 1)
    assert model.n_params == 36 + 50 + 160 + 63 + 18 + 4
    roles = {s.name: s.role for s in model._slots}
    assert roles["W_x"] == roles["W_h"] == "weight" and roles["b_h"] == "bias"
    model.save(tmp_path / "sequences.npz")
    again = nn.load(tmp_path / "sequences.npz")
    np.testing.assert_array_equal(again.predict(tokens), model.predict(tokens))
    assert again.summary_str() == text
    again.fit(tokens, y, epochs=1, batch_size=8, verbose=0)  # trains on


def test_bad_sequences_and_tokens_are_refused():
    with pytest.raises(ValueError, match="LSTM needs sequences"):
        nn.Sequential([nn.LSTM(3)], input_shape=(5,))
    with pytest.raises(ValueError, match="activation must be one of"):
        nn.SimpleRNN(3, activation="gelu")
    with pytest.raises(ValueError, match="units must be >= 1"):
        nn.GRU(0)
    with pytest.raises(TypeError, match="return_sequences"):
        nn.LSTM(3, return_sequences="yes")
    model = nn.Sequential([nn.Embedding(5, 2), nn.GRU(2), nn.Dense(1)], loss="mse")
    with pytest.raises(TypeError, match="integer tokens"):
        model.fit(np.zeros((4, 3)), np.zeros(4), verbose=0)
    with pytest.raises(ValueError, match="token 5, outside"):
        model.fit(np.full((4, 3), 5), np.zeros(4), verbose=0)
    with pytest.raises(ValueError, match="token -1"):
        model.predict(np.full((4, 3), -1))


# ----------------------------------------------------------------- learning
def adding_problem(n, steps, rng):
    """Sequences of (value, marker): values uniform in [0, 1), two of them marked;
    the target is the sum of the marked values."""
    x = np.zeros((n, steps, 2), np.float32)
    x[:, :, 0] = rng.uniform(0, 1, (n, steps))
    for row in x:
        row[rng.choice(steps, 2, replace=False), 1] = 1
    return x, (x[:, :, 0] * x[:, :, 1]).sum(axis=1, keepdims=True)


def test_lstm_solves_the_adding_problem_where_a_dense_network_does_not():
    """Length 50: predicting the mean gives an MSE of 1/6; the LSTM gets below
    0.01 on new sequences, a dense network on the flattened sequences (which fits
    its training data) stays far above."""
    rng = np.random.default_rng(0)
    X, y = adding_problem(3000, 50, rng)
    X_test, y_test = adding_problem(500, 50, rng)
    lstm = nn.Sequential([nn.LSTM(24), nn.Dense(1)], loss="squared_error", optimizer=nn.Adam(lr=0.01),
                         seed=0)
    lstm.fit(X, y, epochs=14, batch_size=32, verbose=0)
    assert float(((lstm.predict(X_test) - y_test) ** 2).mean()) < 0.01
    dense = nn.Sequential([nn.Flatten(), nn.Dense(128, "relu"), nn.Dense(128, "relu"), nn.Dense(1)],
                          loss="squared_error", optimizer=nn.Adam(lr=0.003), seed=0)
    dense.fit(X, y, epochs=14, batch_size=32, verbose=0)
    assert float(((dense.predict(X_test) - y_test) ** 2).mean()) > 0.05


def test_gru_classifies_digits_read_row_by_row():
    """The 8x8 digits as 8 steps of 8 features: at least 95% on a held-out quarter."""
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split((X / 16.0).reshape(-1, 8, 8), y, test_size=0.25,
                                                        random_state=0, stratify=y)
    model = nn.Sequential([nn.GRU(64), nn.Dense(10)], loss="sparse_categorical_crossentropy",
                          optimizer=nn.Adam(lr=0.005), seed=0)
    model.fit(X_train, y_train, epochs=12, batch_size=32, verbose=0)
    assert (model.predict_classes(X_test) == y_test).mean() >= 0.95


@pytest.mark.parametrize("backend", [b for b in fastnn.available_backends() if b != "numpy"])
@pytest.mark.parametrize("layer", [nn.SimpleRNN, nn.LSTM, nn.GRU])
def test_a_training_step_allocates_no_sequence_array_after_the_first(layer, backend):
    # the layer keeps the kernels' outputs (hs, the cache's arrays, xw, dz: each
    # at least (N, T, units)) per batch shape; a step after the first may allocate
    # only arrays smaller than one of them (the step's small workspaces)
    import tracemalloc

    n, t, f, units = 32, 20, 3, 16
    X, y = sequences(n, t, f)[0], np.ones((n, 1))
    model = nn.Sequential([layer(units), nn.Dense(1)], loss="squared_error", backend=backend, seed=0)
    model.train_step(X, y)
    tracemalloc.start()
    try:
        model.train_step(X, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n * t * units * 8  # one float64 (N, T, units) array


@pytest.mark.parametrize("backend", fastnn.available_backends())
@pytest.mark.parametrize("layer", [nn.SimpleRNN, nn.LSTM, nn.GRU])
def test_the_last_state_and_its_gradient_from_any_layout(layer, backend):
    """Without return_sequences the output is the last state (N, units), the
    sequence's last step, and a gradient dy of any memory layout (a layer above
    may hand a view) gives the gradients of a contiguous one (the LSTM's kernel
    reads a contiguous dy in place as the last state's gradient)."""
    X, _ = sequences(5, 4, 3)
    model = nn.Sequential([layer(3)], backend=backend, seed=0, dtype=np.float64)
    model.build(X.shape[1:])
    sequence = nn.Sequential([layer(3, return_sequences=True)], backend=backend, seed=0,
                             dtype=np.float64)
    sequence.build(X.shape[1:])
    sequence.set_flat_params(model.get_flat_params())
    mode = nn.layers.Pass(training=True)
    backend, recurrent = model.backend, model.layers[0]
    ws = {}
    y = recurrent.forward(backend, X, ws, mode).copy()
    np.testing.assert_array_equal(y, sequence.predict(X)[:, -1])
    dy = np.random.default_rng(1).normal(size=(3, 5)).T  # (5, 3), Fortran order
    recurrent.backward(backend, np.ascontiguousarray(dy), ws, need_dx=True)
    expected = model._grads.copy()
    model._grads[...] = np.nan
    recurrent.backward(backend, dy, ws, need_dx=True)
    np.testing.assert_array_equal(model._grads, expected)
