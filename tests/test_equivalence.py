"""Every fast backend against the reference, kernel by kernel (see catalogue.py)."""

import numpy as np
import pytest
from catalogue import CATALOGUE, SHORT_ROW_SHAPES, assert_output_matches, rand
from conftest import FAST_BACKENDS, assert_close, probs_grad_terms
from scipy import special

import fastnn


@pytest.mark.parametrize("backend_name", FAST_BACKENDS)
@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_matches_reference(case, backend_name, dtype):
    run = CATALOGUE[case]
    expected = run(fastnn.get_backend("numpy"), dtype)
    actual = run(fastnn.get_backend(backend_name), dtype)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_output_matches(a, e, dtype, f"{case} output {i}")


@pytest.mark.parametrize("backend_name", FAST_BACKENDS)
@pytest.mark.parametrize("n, c", SHORT_ROW_SHAPES)
def test_softmax_ce_probabilities_short_rows(backend_name, dtype, n, c):
    """Probability targets and sample weights on rows short enough for the C
    backend's short-rows path (many blocks, serial and parallel): each gradient
    element within rtol of the size of its terms (probs_grad_terms), the loss
    within rtol."""
    logits = rand((n, c), dtype, 14, 3.0)
    t = np.random.default_rng(15).random((n, c)).astype(dtype)
    t /= t.sum(axis=1, keepdims=True)
    w = np.random.default_rng(16).random(n).astype(dtype) + 0.1
    expected_loss, expected = fastnn.get_backend("numpy").softmax_cross_entropy(logits, t, w)
    loss, grad = fastnn.get_backend(backend_name).softmax_cross_entropy(logits, t, w)
    assert_close(grad, expected, dtype, magnitude=probs_grad_terms(expected, t, w))
    assert_close(loss, expected_loss, dtype)


@pytest.mark.parametrize("backend_name", ["numpy"] + FAST_BACKENDS)
@pytest.mark.parametrize("k", [3, 10, 200])  # the C short-rows path and the row path
def test_softmax_ce_label_gradient_of_confident_rows(backend_name, dtype, k):
    """p - 1 at the label of a confident row, where p rounds to 1 or nearly:
    to full relative precision, against its exact value -(k - 1) e^-x / (1 + (k - 1) e^-x)
    for logits (x, 0, ..., 0) with the label at x (p - 1 computed as a difference
    would be 0 or keep a few digits)."""
    margins = np.array([3.0, 9.0, 16.0, 25.0, 40.0] if dtype == np.float64 else [3.0, 9.0, 16.0])
    logits = np.zeros((margins.size, k), dtype)
    logits[:, 0] = margins
    labels = np.zeros(margins.size, np.int64)
    loss, grad = fastnn.get_backend(backend_name).softmax_cross_entropy(logits, labels)
    rest = (k - 1) * np.exp(-margins)
    exact = -rest / (1 + rest) / margins.size
    np.testing.assert_allclose(grad[:, 0], exact, rtol=20 * np.finfo(dtype).eps)
    assert_close(loss, np.log1p(rest).mean(), dtype)


def test_catalogue_covers_every_kernel():
    covered = {case.split("[")[0] for case in CATALOGUE}
    groups = {"activation", "dense", "batchnorm", "dropout"}
    groups |= {k[:-len("_backward")] for k in fastnn.backends.KERNELS if k.endswith("_backward")}
    # a kernel is covered by entries of its own name or, in a group, of the group's name
    missing = {k for k in fastnn.backends.KERNELS
               if k not in covered and not (k.rsplit("_", 1)[0] in groups and k.rsplit("_", 1)[0] in covered)}
    assert not missing, missing


@pytest.mark.parametrize("backend_name", FAST_BACKENDS)
def test_dropout_masks_bit_identical(backend_name):
    ref, fast = fastnn.get_backend("numpy"), fastnn.get_backend(backend_name)
    x = np.ones((301, 97), np.float32)
    for seed in (0, 1, 2**63 + 5):
        np.testing.assert_array_equal(fast.dropout_forward(x, 0.37, seed) != 0,
                                      ref.dropout_mask(x.shape, 0.37, seed))


def _gelu_exact(x):
    """gelu(x) and gelu'(x) of float64 x, and the size of the derivative's two
    terms Phi + x phi (which cancel near x = -0.75), to ~1e-16 relative:
    Phi(x) = e^(-x^2/2) erfcx(-x/sqrt2) / 2 for x < 0 (no cancellation), with
    x^2 split exactly into sq + lo (Veltkamp-Dekker) so e^(-x^2/2) is not
    perturbed by the rounding of x^2, which is ~1e-16 x^2 relative."""
    with np.errstate(all="ignore"):
        a = np.minimum(np.abs(x), 40.0)  # e^(-x^2/2) is 0 beyond
        c = a * 134217729.0
        ah = c - (c - a)
        al = a - ah
        sq = a * a
        lo = ((ah * ah - sq) + 2 * ah * al) + al * al
        e = np.exp(-0.5 * sq) * (1 - 0.5 * lo)
        tail = 0.5 * e * special.erfcx(a / np.sqrt(2))  # Phi(-|x|)
        cdf = np.where(x < 0, tail, 1 - tail)
        cdf = np.where(np.isnan(x), np.nan, cdf)
        pdf_term = x * e / np.sqrt(2 * np.pi)
        return x * cdf, cdf + pdf_term, np.abs(cdf) + np.abs(pdf_term)


@pytest.mark.parametrize("backend_name", ["numpy"] + FAST_BACKENDS)
def test_gelu_accuracy(backend_name, dtype):
    """gelu on every backend (the reference's SciPy ndtr, the compiled backends'
    own vectorised erfc) against a 1e-16 evaluation over a
    dense grid and the edge values: relative error per element, plus the smallest
    normal number as absolute slack (results below it are subnormal, with fewer
    digits, or flushed to 0), and for the derivative relative to the size of its
    terms."""
    fine = np.linspace(0, 45, 90_001)
    log = np.geomspace(1e-300, 1e300, 6_001)
    edge = [0.0, 1e-300, 1e-45, 1e-38, 1e-8, 0.7518, 1.0, 5.0, 13.0, 26.0, 30.0, 37.5, 38.6,
            40.0, 1e4, np.inf]
    grid = np.concatenate([fine, log, edge])
    grid = grid[(grid <= np.finfo(dtype).max) | (grid == np.inf)]  # no overflow in the cast
    x = np.concatenate([grid, -grid, [np.nan]]).astype(dtype)
    fast = fastnn.get_backend(backend_name)
    y = fast.activation_forward(x, "gelu")
    dz = fast.activation_backward(np.ones_like(x), y, "gelu", x=x)
    y_exact, dz_exact, dz_terms = _gelu_exact(x.astype(np.float64))
    # float32: computed in float, erfc and e^(-x^2/2) to ~5e-7 (measured: y 5.3e-7,
    # dz 4.3e-7 of the size of its terms); float64: ~1e-15
    rtol_y = rtol_dz = 2e-6 if dtype == np.float32 else 2e-14
    if backend_name == "numpy":
        # the reference rounds x^2 and x / sqrt 2 to the dtype: a relative error of
        # about x^2 eps in the tails (x^2 is at most ~1400, where results are normal)
        rtol_y = rtol_dz = 3e-5 if dtype == np.float32 else 1e-12
    tiny = np.finfo(dtype).tiny
    for got, exact, size, rtol, what in [(y, y_exact, np.abs(y_exact), rtol_y, "y"),
                                         (dz, dz_exact, dz_terms, rtol_dz, "dz")]:
        finite = np.isfinite(exact)
        np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=what)
        np.testing.assert_array_equal(got[~finite], exact[~finite].astype(dtype), err_msg=what)
        excess = np.abs(got[finite] - exact[finite]) - (rtol * size[finite] + tiny)
        worst = np.argmax(excess)
        assert excess[worst] <= 0, (what, x[finite][worst], got[finite][worst], exact[finite][worst])
