"""Every fast backend against the reference, kernel by kernel (see catalogue.py)."""

import numpy as np
import pytest
from catalogue import CATALOGUE
from conftest import FAST_BACKENDS, assert_close

import fastnn


@pytest.mark.parametrize("backend_name", FAST_BACKENDS)
@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_matches_reference(case, backend_name, dtype):
    run = CATALOGUE[case]
    expected = run(fastnn.get_backend("numpy"), dtype)
    actual = run(fastnn.get_backend(backend_name), dtype)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        if isinstance(e, np.ndarray) and e.dtype == bool:
            np.testing.assert_array_equal(a, e)
        else:
            assert_close(a, e, dtype, f"{case} output {i}")


def test_catalogue_covers_every_kernel():
    covered = {case.split("[")[0] for case in CATALOGUE}
    groups = {"activation", "dense", "batchnorm", "dropout"}
    kernels = {k.rsplit("_", 1)[0] if k.rsplit("_", 1)[0] in groups else k
               for k in fastnn.backends.KERNELS}
    assert kernels <= covered, kernels - covered


@pytest.mark.parametrize("backend_name", FAST_BACKENDS)
def test_dropout_masks_bit_identical(backend_name):
    ref, fast = fastnn.get_backend("numpy"), fastnn.get_backend(backend_name)
    x = np.ones((301, 97), np.float32)
    for seed in (0, 1, 2**63 + 5):
        np.testing.assert_array_equal(fast.dropout_forward(x, 0.37, seed) != 0,
                                      ref.dropout_mask(x.shape, 0.37, seed))
