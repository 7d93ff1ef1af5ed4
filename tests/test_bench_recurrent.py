"""The recurrent benchmarks (fastnn/benchmarks/recurrent.py): their GEMMs alone
are the kernels' products, PyTorch's step runs apart, the runner's table."""

import importlib.util

import numpy as np
import pytest

import fastnn
from fastnn.benchmarks import recurrent

TINY = {"batch": 3, "steps": 4, "features": 5, "units": 2}


@pytest.mark.skipif("numba" not in fastnn.available_backends(), reason="needs numba")
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_bare_gemms_are_the_kernels_products(kind, split):
    from fastnn.backends import _numba_rnn as R

    rng = np.random.default_rng(0)
    n, t, f, h = 3, 4, 5, 2
    w = recurrent.GATES[kind] * h

    def a(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, h0, W_x, W_h, hs, dz = a(n, t, f), a(n, h), a(f, w), a(h, w), a(n, t, h), a(n, t, w)
    xw, z, dx, dW_x, dW_h, dh = a(n, t, w), a(n, w), a(n, t, f), a(f, w), a(h, w), a(n, h)
    db = a(w)
    if split:  # ranges of rows [0, 1) and [1, 3), as the split kernels
        blas, bounds = R.Blas(np.float32, 2).args(), np.array([0, 1, n])
        for backward in (False, True):
            R.bare_gemms_split(blas, bounds, backward, x, h0, W_x, W_h, hs, xw, z, dz, dh)
        R.backward_after_split(blas, bounds, x, h0, W_x, hs, dz, dx, dW_x, dW_h, db, True)
    else:
        R.bare_gemms(R.Blas(np.float32).args(), x, h0, W_x, W_h, hs, xw, z, dz, dx, dW_x, dW_h, db, dh)
    close = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xw, x @ W_x, **close)
    np.testing.assert_allclose(z, hs[:, t - 2] @ W_h, **close)  # the last step's
    previous = np.concatenate([h0[:, None], hs[:, :-1]], axis=1)  # h_{t-1} (N, T, H)
    np.testing.assert_allclose(dW_h, np.einsum("nti,ntj->ij", previous, dz), **close)
    np.testing.assert_allclose(dh, dz[:, 0] @ W_h.T, **close)  # the first step's
    np.testing.assert_allclose(dx, dz @ W_x.T, **close)
    np.testing.assert_allclose(dW_x, np.einsum("ntf,ntw->fw", x, dz), **close)
    np.testing.assert_allclose(db, dz.sum(axis=(0, 1)), **close)


def test_gemm_flops():
    # forward 2NT(F + H)GH, backward 2NT(2H + 2F)GH: the LSTM of the issue ~ 25 MFLOP a sequence
    assert recurrent.gemm_flops("rnn", 1, 1, 3, 2) == 2 * 2 * (9 + 6)
    assert 24e6 < recurrent.gemm_flops("lstm", 1, 50, 32, 128) < 26e6


def test_run_recurrent_times_every_runner():
    result = recurrent.run_recurrent(kinds=("rnn",), backends=["numpy"], rounds=2, min_time=0.0,
                                     with_torch=False, sizes=TINY)
    per = result["rnn"]
    assert set(per) >= {"numpy"}
    assert all(0 < r["best_s"] <= r["median_s"] for r in per.values())
    ratios = recurrent.ratios(per)
    assert ratios["numpy"][0] is None  # no PyTorch
    if recurrent.BARE in per:
        assert ratios[recurrent.BARE][1] == 1.0


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_torch_step_runs_apart():
    seconds = recurrent.torch_step_seconds("lstm", TINY, 0.0, 2)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)


def test_torch_child_environment_is_the_users(monkeypatch):
    from fastnn.benchmarks import runner

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the user's: kept
    monkeypatch.setattr("fastnn.backends.OMP_WAIT_POLICY_SET_HERE", False)
    assert runner.child_env()["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setattr("fastnn.backends.OMP_WAIT_POLICY_SET_HERE", True)  # the opt-in's: dropped
    assert "OMP_WAIT_POLICY" not in runner.child_env()
