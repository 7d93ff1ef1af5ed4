"""The small-network benchmarks of issue 24: one epoch of an MLPClassifier at
batch 200 on the digits and on 54-feature tabular data, beside scikit-learn's
and its GEMMs alone. (test_benchmarks.py runs every benchmark at a tiny scale.)"""

import numpy as np
import pytest

import fastnn
from fastnn.benchmarks import cases, get_benchmark, workloads

SMALL = {"digits_mlp": ((1797, 64), "float64", (100,), 10),
         "tabular_mlp": ((50000, 54), "float64", (100,), 7),
         "tabular_mlp_64_64": ((50000, 54), "float32", (64, 64), 7)}


@pytest.mark.parametrize("name", SMALL)
def test_sizes_and_the_counted_gemms(name):
    shape, dtype, hidden, classes = SMALL[name]
    bench = get_benchmark(name)
    assert (bench.shape, bench.dtype, bench.unit) == (shape, dtype, "flop")
    units = (shape[1],) + hidden + (classes,)
    # forward and dW of every layer, dx of all but the first: 2 n in out each
    pairs = list(zip(units[:-1], units[1:]))
    assert bench.work(None, (400, shape[1])) == 2 * 400 * (3 * sum(i * o for i, o in pairs)
                                                           - units[0] * units[1])
    a = bench.setup((400, shape[1]), dtype)
    assert a["X"].dtype == np.dtype(dtype) and set(np.unique(a["y"])) == set(range(classes))


@pytest.mark.parametrize("name", SMALL)
def test_the_epoch_fits_the_stated_network_in_the_benchmark_dtype(name):
    shape, dtype, hidden, classes = SMALL[name]
    bench = get_benchmark(name)
    a = bench.setup((400, shape[1]), dtype)
    bench.call(fastnn.get_backend("numpy"), a)
    epoch, X = cases._models["mlp_epoch", hidden, "numpy", id(a["X"])]
    ours = epoch.estimator
    assert X is a["X"]
    bench.others["sklearn"](a)()  # scikit-learn's epoch runs on the same arrays
    units = (shape[1],) + hidden + (classes,)
    assert [w.shape for w in ours.coefs_] == list(zip(units[:-1], units[1:]))
    assert all(w.dtype == np.dtype(dtype) for w in ours.coefs_)
    assert ours.batch_size == workloads.SMALL_BATCH


@pytest.mark.parametrize("backend", fastnn.available_backends())
def test_the_timed_epoch_is_an_epoch_of_fit(backend):
    # partial_fit, then two timed epochs: the parameters and step count of a fit
    # of three epochs, bit for bit (the epoch is what a fit spends per epoch;
    # unshuffled: the fit's sample order after its first epoch is its own)
    a = workloads.digits_setup((400, 64), "float64")
    options = dict(hidden_layer_sizes=(16,), backend=backend, **dict(workloads.SMALL_PARAMS, shuffle=False))
    epoch = cases.EstimatorEpoch(fastnn.MLPClassifier(**options), a["X"], a["y"])
    epoch()
    epoch()
    fitted = fastnn.MLPClassifier(max_iter=3, n_iter_no_change=10, **options)
    with pytest.warns(Warning, match="Maximum iterations"):
        fitted.fit(a["X"], a["y"])
    assert epoch.model.optimizer.t == fitted.model_.optimizer.t == 3 * 2
    np.testing.assert_array_equal(epoch.model.get_flat_params(), fitted.model_.get_flat_params())


def test_digits_setup_refuses_more_rows_than_the_digits():
    with pytest.raises(ValueError, match="1797 x 64"):
        workloads.digits_setup((1798, 64), "float64")
