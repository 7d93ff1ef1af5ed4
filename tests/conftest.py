import numpy as np
import pytest

import fastnn

# the equivalence tolerances and comparison are the library's own: RTOL per dtype
# (float32 1e-5, float64 1e-10) and assert_close(actual, expected, dtype, what, magnitude)
from fastnn.testing import RTOL, assert_close  # noqa: F401

FAST_BACKENDS = [name for name in fastnn.available_backends() if name != "numpy"]
ALL_BACKENDS = fastnn.available_backends()
DTYPES = [np.float32, np.float64]


def probs_grad_terms(grad, targets, w=None):
    """The size of the terms of a softmax cross-entropy gradient with probability
    targets, (p sum(t) - t) scale = grad: |p sum(t) scale| + |t scale|, from the
    gradient itself (for assert_close's magnitude). Where p sum(t) is near t the
    difference cancels, and in float32 the reference is then itself a few ulp of
    the terms off (measured against float64: up to 1.6e-5 of the element on
    150001 x 7)."""
    n = grad.shape[0]
    scale = np.full(n, 1.0 / n) if w is None else w.astype(np.float64) / w.sum(dtype=np.float64)
    t_part = targets.astype(np.float64) * scale[:, None]
    return np.abs(grad + t_part) + np.abs(t_part)


def ulps(actual, exact, dtype):
    """|actual - exact| in units of the dtype's spacing at exact."""
    return np.abs(actual.astype(np.float64) - exact) / np.spacing(np.abs(exact).astype(dtype))


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def ref():
    return fastnn.get_backend("numpy")
