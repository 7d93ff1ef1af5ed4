"""fastnn.testing: check_gradients passes correct backwards and flags wrong ones;
assert_backends_agree passes the kernels and catches a backend that differs."""

import numpy as np
import pytest

import fastnn
from fastnn import nn
from fastnn.testing import (
    RTOL,
    assert_backends_agree,
    assert_close,
    assert_gradients,
    check_gradients,
    reference_error,
)

FAST_BACKENDS = [name for name in fastnn.available_backends() if name != "numpy"]


class Scale(nn.Layer):
    """y = x * s (s per feature), written with NumPy operations: complex-safe."""

    kind = "tests.testing.Scale"
    grad_factor, dx_factor, writes_grad = 1.0, 1.0, True

    def param_specs(self):
        return [("s", self.input_shape[-1:], "scale")]

    def init_params(self, backend, rng):
        self.params["s"][...] = rng.uniform(0.5, 1.5, self.params["s"].shape)

    def forward(self, backend, x, ws, mode):
        ws["x"] = x
        return x * self.params["s"]

    def backward(self, backend, dy, ws, need_dx):
        x = ws["x"]
        if self.writes_grad:
            self.grads["s"][...] = self.grad_factor * (dy * x).reshape(-1, x.shape[-1]).sum(axis=0)
        return self.dx_factor * dy * self.params["s"] if need_dx else None


class WrongScaleGradient(Scale):
    kind = "tests.testing.WrongScaleGradient"
    grad_factor = 1.001  # 0.1 % off: far outside rtol 1e-5


class WrongScaleDx(Scale):
    kind = "tests.testing.WrongScaleDx"
    dx_factor = -1.0


class ForgetsScaleGradient(Scale):
    kind = "tests.testing.ForgetsScaleGradient"
    writes_grad = False


def batch(shape=(6, 4), seed=0):
    return np.random.default_rng(seed).normal(size=shape)


# ------------------------------------------------------------ check_gradients
@pytest.mark.parametrize("layer", [
    lambda: nn.Dense(3, "tanh"), lambda: nn.Dense(5, "gelu"), lambda: nn.BatchNorm(), lambda: nn.Dropout(0.3),
    lambda: nn.Activation("softmax"), lambda: nn.Flatten(),
], ids=["dense-tanh", "dense-gelu", "batchnorm", "dropout", "softmax", "flatten"])
def test_builtin_layers_pass(layer):
    report = assert_gradients(layer(), batch((5, 3, 4)))
    assert report.ok and not report.failures
    assert set(report) == {name for name, _, _ in report_layer_specs(layer())} | {"input"}
    assert all(0 <= error < report.rtol for error in report.values())


def report_layer_specs(layer):
    layer.build((3, 4), np.float64)
    return layer.param_specs()


def test_compiled_layers_use_central_differences_and_numpy_layers_the_complex_step():
    dense = check_gradients(nn.Dense(3), batch())
    assert {c.method for c in dense.details.values()} == {"central"}
    scale = check_gradients(Scale(), batch())
    assert {c.method for c in scale.details.values()} == {"complex step"}
    assert max(scale.values()) < 1e-13  # no subtraction: exact to rounding
    forced = check_gradients(Scale(), batch(), complex_step=False)
    assert {c.method for c in forced.details.values()} == {"central"} and forced.ok
    with pytest.raises(ValueError, match="does not run on complex arrays"):
        check_gradients(nn.Dense(3), batch(), complex_step=True)


class SignedSquare(nn.Layer):
    """y = x |x|: runs on complex arrays, but abs is not complex-analytic, so the
    complex step gives x's derivative wrong (|x| instead of 2 |x|)."""

    kind = "tests.testing.SignedSquare"

    def forward(self, backend, x, ws, mode):
        ws["x"] = x
        return x * np.abs(x)

    def backward(self, backend, dy, ws, need_dx):
        return 2 * dy * np.abs(ws["x"])


def test_a_forward_that_is_not_complex_analytic_falls_back_to_central_differences():
    report = assert_gradients(SignedSquare(), batch())
    assert report.details["input"].method == "central"
    # forced, the complex step gets it wrong: that is what the fallback avoids
    assert not check_gradients(SignedSquare(), batch(), complex_step=True).ok


@pytest.mark.parametrize("complex_step", ["auto", False])
@pytest.mark.parametrize(("layer", "wrong"), [(WrongScaleGradient, "s"), (WrongScaleDx, "input"),
                                              (ForgetsScaleGradient, "s")])
def test_a_wrong_backward_is_flagged(layer, wrong, complex_step):
    report = check_gradients(layer(), batch(), complex_step=complex_step)
    assert not report.ok
    assert report.failures == [wrong]
    assert report[wrong] > 1e-4
    with pytest.raises(AssertionError) as info:
        assert_gradients(layer(), batch(), complex_step=complex_step)
    table = str(info.value)
    assert f"WRONG gradients: {wrong}" in table and "worst rel. error" in table
    check = report.details[wrong]
    line = next(row for row in table.splitlines() if row.startswith(wrong + " "))
    assert line.rstrip().endswith("WRONG") and str(check.index) in line


def test_models_are_checked_tensor_by_tensor_and_left_unchanged():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(12, 4)), rng.integers(0, 3, 12)
    model = nn.Sequential([nn.Dense(5, "tanh"), nn.BatchNorm(), nn.Dense(3)],
                          loss="sparse_categorical_crossentropy", seed=0, l2=0.1)  # float32
    model.build(4)
    params, state = model.get_flat_params().copy(), model.get_flat_state().copy()
    report = assert_gradients(model, X, y, sample_weight=rng.uniform(0.5, 2, 12))
    assert list(report) == ["dense/W", "dense/b", "batch_norm/gamma", "batch_norm/beta",
                            "dense_1/W", "dense_1/b"]
    assert report.dtype == np.float64  # through a float64 copy
    assert model.dtype == np.float32 and model._backend is None
    np.testing.assert_array_equal(model.get_flat_params(), params)
    np.testing.assert_array_equal(model.get_flat_state(), state)


def test_a_wrong_layer_inside_a_model_is_flagged():
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(10, 4)), rng.normal(size=(10, 2))
    model = nn.Sequential([nn.Dense(4, "tanh"), WrongScaleGradient(), nn.Dense(2)], loss="mse", seed=0,
                          dtype=np.float64)
    report = check_gradients(model, X, y)
    assert report.failures == ["wrong_scale_gradient/s"]
    ok = nn.Sequential([nn.Dense(4, "tanh"), Scale(), nn.Dense(2)], loss="mse", seed=0, dtype=np.float64)
    assert check_gradients(ok, X, y).ok


def test_layer_in_a_model_is_refused_and_a_checked_layer_can_join_a_model():
    model = nn.Sequential([nn.Dense(3)], input_dim=4)
    with pytest.raises(ValueError, match="part of a model"):
        check_gradients(model.layers[0], batch())
    layer = nn.Dense(3)
    assert check_gradients(layer, batch()).ok
    nn.Sequential([layer], input_dim=4).predict(batch())


def test_max_elements_and_bad_arguments():
    report = check_gradients(nn.Dense(7), batch((5, 6)), max_elements=4)
    assert {name: (c.checked, c.size) for name, c in report.details.items()} == {
        "W": (4, 42), "b": (4, 7), "input": (4, 30)}
    with pytest.raises(ValueError, match="complex_step"):
        check_gradients(nn.Dense(2), batch(), complex_step="yes")
    with pytest.raises(ValueError, match="no y"):
        check_gradients(nn.Dense(2), batch(), np.zeros(6))
    with pytest.raises(ValueError, match="needs its targets"):
        check_gradients(nn.Sequential([nn.Dense(2)], loss="mse"), batch())
    with pytest.raises(TypeError, match="Layer or Sequential"):
        check_gradients(np.tanh, batch())


# ------------------------------------------------------- assert_backends_agree
def test_kernels_agree_and_the_reference_result_is_returned():
    x = batch((33, 17)).astype(np.float32)
    W, b = batch((17, 9), 1).astype(np.float32), batch((9,), 2).astype(np.float32)
    y = assert_backends_agree(lambda kernels, x, W, b: kernels.dense_forward(x, W, b, "gelu"), x, W, b)
    np.testing.assert_array_equal(y, fastnn.get_backend("numpy").dense_forward(x, W, b, "gelu"))

    def adam(kernels, p, g, m, v):  # updates its arguments in place: each backend gets copies
        kernels.adam_step(p, g, m, v, 1, 0.01)
        return p, m, v, float(np.dot(p, p))

    p = batch((1000,), 3)
    assert_backends_agree(adam, p, batch((1000,), 4), np.zeros(1000), np.zeros(1000))
    np.testing.assert_array_equal(p, batch((1000,), 3))  # the caller's arrays are untouched


@pytest.mark.skipif(not FAST_BACKENDS, reason="needs a backend besides the reference")
def test_a_backend_that_differs_is_named():
    other = FAST_BACKENDS[0]

    def off_by_one_ulp_times_1000(kernels, x):
        y = kernels.activation_forward(x, "tanh")
        return {"y": y, "labels": np.zeros(3, int)} if kernels.name == "numpy" else {
            "y": y + (y == y.max()) * 1e-7 * abs(y.max()), "labels": np.zeros(3, int)}

    with pytest.raises(AssertionError, match=rf"backend '{other}' against 'numpy', output\['y'\]: "
                                             r"1 of 60 elements differ; worst at \(\d+, \d+\)"):
        assert_backends_agree(off_by_one_ulp_times_1000, batch((6, 10)), backends=[other])

    def labels(kernels):
        return np.arange(4) + (kernels.name == other)

    with pytest.raises(AssertionError, match=rf"'{other}'.*output 0: 4 of 4 elements differ"):
        assert_backends_agree(labels)
    with pytest.raises(AssertionError, match="returned outputs"):
        assert_backends_agree(lambda kernels: (1.0,) * (1 + (kernels.name == other)))
    # float32 results are held to float32's tolerance, float64 to float64's
    x32 = batch((4, 5)).astype(np.float32)
    assert_backends_agree(lambda kernels, x: x * (1 + 0.1 * RTOL[x.dtype] * (kernels.name == other)), x32)
    with pytest.raises(AssertionError, match="rtol 1e-10"):
        assert_backends_agree(lambda kernels, x: x * (1 + 1e-8 * (kernels.name == other)), batch((4, 5)))


def _chain(length=300_000, seed=0):
    """Factors near 1 whose running product rounds at every step and carries its
    rounding on, as a recurrence's state: in float32 the products lie up to 1.8
    times RTOL from the float64 ones."""
    return np.random.default_rng(seed).uniform(0.999, 1.001, length).astype(np.float32)


@pytest.mark.skipif(not FAST_BACKENDS, reason="needs a backend besides the reference")
def test_float32_chains_judged_by_their_accuracy():
    """A backend whose float32 chain is as accurate as the reference's (here more:
    the products in float64, rounded once) passes though it differs from the
    reference's by more than RTOL; one with five times its error, or one judged
    with allow_reference_error=False, fails."""
    other = FAST_BACKENDS[0]

    def products(kernels, a, error=0.0):
        exact = np.cumprod(a.astype(np.float64))
        if kernels.name != other:
            return np.cumprod(a)
        rounded = np.cumprod(a)  # the float32 rounding, scaled by `error`
        return (exact + error * (rounded - exact)).astype(a.dtype)

    a = _chain()
    with pytest.raises(AssertionError, match="elements differ"):  # beyond RTOL of the reference
        assert_close(products(fastnn.get_backend(other), a), products(fastnn.get_backend("numpy"), a))
    assert_backends_agree(products, a, backends=[other])
    with pytest.raises(AssertionError, match=r"beside the reference's own error 1\.\d+e-05 against float64"):
        assert_backends_agree(products, a, 5.0, backends=[other])
    with pytest.raises(AssertionError, match="elements differ") as failure:
        assert_backends_agree(products, a, backends=[other], allow_reference_error=False)
    assert "beside" not in str(failure.value)


@pytest.mark.skipif(not FAST_BACKENDS, reason="needs a backend besides the reference")
def test_no_allowance_where_float64_computes_something_else():
    """Random draws of the argument's dtype are other numbers in float64: no
    float64 result to judge by, so a float32 difference fails as before; so does
    one of a computation that refuses float64 arguments."""
    other = FAST_BACKENDS[0]

    def draws(kernels, x):
        noise = np.random.default_rng(0).random(x.shape, dtype=x.dtype)
        return noise * (1 + 1e-4 * (kernels.name == other))

    def float32_only(kernels, a):
        if a.dtype != np.float32:
            raise TypeError("a must be float32")
        return np.cumprod(a) * (1 + 1e-4 * (kernels.name == other))

    for fn, arg in ((draws, batch((4, 5)).astype(np.float32)), (float32_only, _chain(1000))):
        with pytest.raises(AssertionError, match="elements differ") as failure:
            assert_backends_agree(fn, arg, backends=[other])
        assert "beside" not in str(failure.value)


def test_reference_error():
    x = np.random.default_rng(0).normal(size=1000)
    assert reference_error(x.astype(np.float32), x) == np.abs(x.astype(np.float32) - x).max()
    assert reference_error(x.astype(np.float32), x[:-1]) is None  # not one computation
    assert reference_error(x.astype(np.float32), -x) is None
    assert reference_error(np.float32([1.0, np.inf]), np.float64([1.0, 2.0])) is None
    assert reference_error(np.float32([1.0, np.inf]), np.float64([1.0, np.inf])) == 0.0


def test_assert_close_rule():
    e = np.array([1.0, -2.0, 1e-9])
    assert_close(e * (1 + 5e-11), e, np.float64)
    assert_close(e + 1e-13, e, np.float64)  # ~0 judged against 1e-2 of the largest
    with pytest.raises(AssertionError, match=r"worst at \(1,\)"):
        assert_close(e + np.array([0, 1e-8, 0]), e, np.float64, "what")
    with pytest.raises(AssertionError, match="non-finite pattern"):
        assert_close(np.array([1.0, np.nan]), np.array([1.0, 2.0]), np.float64)


def test_a_models_frozen_tensors_are_skipped():
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(10, 4)), rng.integers(0, 3, 10)
    model = nn.Sequential([nn.Dense(5, "tanh"), nn.Dense(3)], loss="sparse_categorical_crossentropy",
                          seed=0, dtype=np.float64)
    model.build(4)
    model.layers[0].trainable = False
    report = assert_gradients(model, X, y)
    assert list(report) == ["dense_1/W", "dense_1/b"]
