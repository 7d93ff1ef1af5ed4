import numpy as np
import pytest

import fastnn

FAST_BACKENDS = [name for name in fastnn.available_backends() if name != "numpy"]
ALL_BACKENDS = fastnn.available_backends()
DTYPES = [np.float32, np.float64]
# relative tolerance of a fast backend against the reference, per dtype
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


def assert_close(actual, expected, dtype, what="", magnitude=None):
    """|actual - expected| <= rtol * (|expected| + max|expected|*1e-2 + tiny):
    relative per element, with a floor tied to the array's scale so values that
    cancel to ~0 are judged against the magnitudes they came from. magnitude
    (the shape of expected) replaces |expected| where each element is a sum of
    terms that may cancel: the size of those terms, which bounds its rounding."""
    rtol = RTOL[np.dtype(dtype)]
    if isinstance(expected, float) or np.ndim(expected) == 0:
        assert np.isclose(actual, expected, rtol=rtol * 10, atol=rtol * 1e-3), (what, actual, expected)
        return
    assert isinstance(actual, np.ndarray), (what, type(actual))
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(actual), finite, err_msg=f"{what}: non-finite pattern")
    if not finite.all():
        np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=what)
    e, a = expected[finite].astype(np.float64), actual[finite].astype(np.float64)
    size = np.abs(e) if magnitude is None else np.abs(magnitude[finite]).astype(np.float64)
    scale = np.abs(e).max(initial=0.0)
    tol = rtol * (size + 1e-2 * scale + np.finfo(dtype).tiny)
    bad = np.abs(a - e) > tol
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise AssertionError(
            f"{what}: {bad.sum()} of {bad.size} elements differ; first: got {a[i]!r}, "
            f"expected {e[i]!r} (rtol {rtol})"
        )


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


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def ref():
    return fastnn.get_backend("numpy")
