"""take_rows, the row gather of shuffled batches, and its use by the training
loop (nn.training.RowGather); the kernel's equivalence across backends is in
the catalogue, its bad-input errors in test_errors.py (from its declaration)."""

import gc
import weakref

import numpy as np
import pytest
import scipy.sparse as sp

import fastnn
from fastnn import nn
from fastnn.nn.training import RowGather

BACKENDS = fastnn.available_backends()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_out_of_range_raise_before_the_kernel(backend):
    be = fastnn.get_backend(backend)
    x = np.zeros((4, 3))
    for index in (np.array([0, 4]), np.array([-1, 2], np.int32)):
        with pytest.raises(ValueError, match="index holds row numbers outside"):
            be.take_rows(x, index)
        # the fast path sends what it does not check (value ranges aside) to the public one
    with pytest.raises(TypeError, match="index must have dtype int32 or int64"):
        be.fast.take_rows(x, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="out"):
        be.take_rows(x, np.array([0, 1]), out=np.empty((3, 3)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_gather_is_the_data_in_order(backend):
    """Dense floats of any rank (rows gathered whole), weights, int32 and int64
    orders through the kernel; labels, CSR and the data's own order through
    take_rows; a last, shorter batch in buffers of its own."""
    rng = np.random.default_rng(0)
    gather = RowGather(fastnn.get_backend(backend))
    arrays = {"X": rng.standard_normal((23, 4, 3, 2)).astype(np.float32), "w": rng.random(23),
              "t": rng.integers(0, 5, 23), "s": sp.random(23, 6, density=0.3, format="csr", random_state=0)}
    for order in (rng.permutation(23), rng.permutation(23).astype(np.int32), None):
        for lo, hi in ((0, 10), (10, 20), (20, 23)):
            buffers = {}
            for key, a in arrays.items():
                rows = np.arange(23)[lo:hi] if order is None else order[lo:hi]
                got = gather(a, lo, hi, order, buffers, key)
                expected = a[rows].toarray() if sp.issparse(a) else a[rows]
                np.testing.assert_array_equal(got, expected)
                assert got.dtype == (np.float64 if sp.issparse(a) else a.dtype)


def test_row_gather_runs_the_backend_kernel_and_rebinds_for_new_data(monkeypatch):
    be = fastnn.get_backend(BACKENDS[-1])
    calls = []
    monkeypatch.setattr(type(be), "_take_rows", lambda self, x, index, out: calls.append(1)
                        or np.take(x, index, axis=0, out=out))
    gather, buffers = RowGather(be), {}
    order = np.arange(8)[::-1].copy()
    a, b = np.arange(16.0).reshape(8, 2), np.arange(16.0, 32.0).reshape(8, 2)
    np.testing.assert_array_equal(gather(a, 0, 4, order, buffers, "X"), a[[7, 6, 5, 4]])
    np.testing.assert_array_equal(gather(a, 4, 8, order, buffers, "X"), a[[3, 2, 1, 0]])
    np.testing.assert_array_equal(gather(b, 0, 4, order, buffers, "X"), b[[7, 6, 5, 4]])
    assert len(calls) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_shuffled_fit_keeps_no_reference_to_the_data(backend):
    """The gather is bound to the data for one epoch only: the model does not
    keep the caller's X alive after fit."""
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((50, 6)), rng.integers(0, 3, 50)
    model = nn.Sequential([nn.Dense(8, "relu"), nn.Dense(3)], loss="sparse_categorical_crossentropy",
                          optimizer=nn.Adam(1e-2), backend=backend, seed=0)
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    alive = weakref.ref(X)
    del X
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_shuffled_fits_match_across_backends(backend):
    """The batches a compiled backend gathers are the reference's: the same
    model trained with shuffling ends with the same parameters."""
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((70, 5)), rng.integers(0, 3, 70)

    def trained(name):
        model = nn.Sequential([nn.Dense(6, "tanh"), nn.Dense(3)], loss="sparse_categorical_crossentropy",
                              optimizer=nn.Adam(1e-2), backend=name, seed=3, dtype="float64")
        model.fit(X, y, epochs=3, batch_size=20, verbose=0, shuffle=True)
        return model.get_flat_params()

    np.testing.assert_allclose(trained(backend), trained("numpy"), rtol=1e-10, atol=1e-12)


def test_take_rows_matches_torch_index_select():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x, index = rng.standard_normal((30, 7)), rng.integers(0, 30, 12)
    expected = torch.index_select(torch.from_numpy(x), 0, torch.from_numpy(index)).numpy()
    for backend in BACKENDS:
        np.testing.assert_array_equal(fastnn.get_backend(backend).take_rows(x, index), expected)
