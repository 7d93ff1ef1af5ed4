"""The recurrent benchmarks (fastnn/benchmarks/recurrent.py): their GEMMs alone
are the kernels' products, PyTorch's step runs apart, the runner's table."""

import importlib.util

import numpy as np
import pytest

import fastnn
from fastnn.benchmarks import recurrent

TINY = {"batch": 3, "steps": 4, "features": 5, "units": 2}


def _gemms_arrays(n, t, f, h, w, last_only):
    """(a: random float64 arrays by shape, the states' shape, the arrays every
    recurrent_gemms call takes: x, h0, W_x, W_h, hs, xw, z, dz); n rows, t
    steps, f features, h units, w = G h; hs (n, h) with last_only."""
    rng = np.random.default_rng(0)

    def a(*shape):
        return rng.standard_normal(shape)

    states = (n, h) if last_only else (n, t, h)
    return a, states, (a(n, t, f), a(n, h), a(f, w), a(h, w), a(*states), a(n, t, w), a(n, w),
                       a(n, t, w))


@pytest.mark.skipif("c" not in fastnn.available_backends(), reason="needs the C backend")
@pytest.mark.parametrize("whole_batch", [0, 1])
@pytest.mark.parametrize("kind, gates, steps, last_only",
                         [("rnn", 1, 32, 0), ("lstm", 4, 8, 0), ("lstm", 4, 8, 1), ("gru", 3, 12, 0)])
def test_bare_gemms_are_the_kernels_products(kind, gates, steps, last_only, whole_batch):
    """The C kernels' GEMMs alone (recurrent_gemms) compute the products of the
    kernels' GEMMs from the arrays given, and nothing else (hs is left as it
    was); at these sizes (2^21 multiply-adds a time loop) the batch splits over
    the threads unless whole_batch. dz's rows at step 0 serve every step's
    backward, as in the kernels; the LSTM's backward takes h_{t-1} from its
    work rows (zeros here: no state is rebuilt), its forward from hs (N, H)
    with last_only."""
    from fastnn.backends.c_backend import C_FUNCTIONS, NULL, ffi

    n, t, f, h, d = 16, steps, 5, 64, np.dtype(np.float64)
    w = gates * h
    a, states, (x, h0, W_x, W_h, hs, xw, z, dz) = _gemms_arrays(n, t, f, h, w, last_only)
    dhw, dx, dh0, dW_x, dW_h, work = a(n, w), a(n, t, f), a(n, h), a(f, w), a(h, w), a((2 * n + 1) * h)
    hs_before, xw_before = hs.copy(), xw.copy()
    k = C_FUNCTIONS[d]
    fb = ffi.from_buffer
    gru, lstm = kind == "gru", kind == "lstm"
    k.recurrent_gemms(gates, whole_batch, last_only,
                      *(fb(k.ctype, v) for v in (x, h0, W_x, W_h, hs, xw, z, dz)),
                      fb(k.ctype, dhw) if gru else NULL, *(fb(k.ctype, v) for v in (dx, dh0, dW_x, dW_h)),
                      NULL, NULL, NULL, fb(k.ctype, work) if lstm else NULL, n, t, f, h)
    close = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(hs, hs_before)
    last = hs if last_only else hs[:, t - 2]  # the last step's h_{t-1}
    if gru:  # the projection of every step once, then h_{t-1} W_h per step
        np.testing.assert_allclose(xw, x @ W_x, **close)
        np.testing.assert_allclose(z, last @ W_h, **close)
    else:  # x_t W_x + h_{t-1} W_h per step
        np.testing.assert_array_equal(xw, xw_before)
        np.testing.assert_allclose(z, x[:, t - 1] @ W_x + last @ W_h, **close)
    previous = np.concatenate([h0[:, None], hs[:, :-1]], axis=1) if not lstm else \
        np.concatenate([h0[:, None], np.zeros((n, t - 1, h))], axis=1)  # h_{t-1} (N, T, H)
    dz0 = dz[:, 0]  # every step's
    if gru:  # dhw, one step's, in every step's GEMMs
        np.testing.assert_allclose(dW_h, np.einsum("nti,nj->ij", previous, dhw), **close)
        np.testing.assert_allclose(dh0, t * dhw @ W_h.T, **close)
    else:
        np.testing.assert_allclose(dW_h, np.einsum("nti,nj->ij", previous, dz0), **close)
        np.testing.assert_allclose(dh0, dz0 @ W_h.T, **close)
    np.testing.assert_allclose(dx, np.broadcast_to((dz0 @ W_x.T)[:, None], dx.shape), **close)
    np.testing.assert_allclose(dW_x, np.einsum("ntf,nw->fw", x, dz0), **close)


@pytest.mark.skipif("c" not in fastnn.available_backends(), reason="needs the C backend")
@pytest.mark.parametrize("kind, gates, last_only", [("rnn", 1, 0), ("lstm", 4, 0), ("lstm", 4, 1)])
def test_gemms_with_saved_arrays_move_them(kind, gates, last_only):
    """recurrent_gemms given dhs (gemms+saved) also writes the saved arrays
    from each step's products and builds dz's rows from them and dhs, as the
    kernels' elementwise passes would (with no gate math): the last forward step
    and the last backward step (t = 0) show it. The LSTM's backward reads its
    gradient from dhs, or with last_only from a row of zeros, as its kernel."""
    from fastnn.backends.c_backend import C_FUNCTIONS, NULL, ffi

    n, t, f, h, d = 16, 32, 5, 64, np.dtype(np.float64)  # the batch splits over the threads
    w = gates * h
    a, states, (x, h0, W_x, W_h, hs, xw, z, dz) = _gemms_arrays(n, t, f, h, w, last_only)
    dx, dh0, dW_x, dW_h, dhs, cs, saved = a(n, t, f), a(n, h), a(f, w), a(h, w), a(*states), \
        a(n, t, h), a(n, t, w)
    work = a((2 * n + 1) * h)
    lstm = kind == "lstm"
    k = C_FUNCTIONS[d]
    fb = ffi.from_buffer
    k.recurrent_gemms(gates, 0, last_only, *(fb(k.ctype, v) for v in (x, h0, W_x, W_h, hs, xw, z, dz)),
                      NULL, *(fb(k.ctype, v) for v in (dx, dh0, dW_x, dW_h, dhs)),
                      *((fb(k.ctype, cs), fb(k.ctype, saved), fb(k.ctype, work)) if lstm else (NULL,) * 3),
                      n, t, f, h)
    close = dict(rtol=1e-12, atol=1e-12)
    last = hs if last_only else hs[:, t - 1]
    if not last_only:
        np.testing.assert_allclose(z, x[:, t - 1] @ W_x + hs[:, t - 2] @ W_h, **close)  # the last step's
    np.testing.assert_array_equal(last, 0.01 * z[:, w - h:])
    dz0 = dz[:, 0]  # the backward's last step's (t = 0)
    if lstm:
        np.testing.assert_array_equal(saved[:, t - 1], z)
        np.testing.assert_array_equal(cs[:, t - 1], z[:, :h])
        tc = work[:2 * n * h].reshape(n, 2, h)[:, 0]  # step 1's 0.01 c_0, at t = 0 0.01 h0
        expected = 0.01 * saved[:, 0]
        expected[:, :h] += 0.01 * ((0 if last_only else dhs[:, 0]) + 0.01 * cs[:, 0] - h0)
        np.testing.assert_allclose(tc, 0.01 * h0, **close)
    else:
        expected = 0.01 * (dhs[:, 0] + hs[:, 0])
    np.testing.assert_allclose(dz0, expected, **close)


def test_gemm_flops():
    # forward 2NT(F + H)GH, backward 2NT(2H + F)GH (a first layer: no dx): the LSTM of
    # the issue ~ 23 MFLOP a sequence
    assert recurrent.gemm_flops("rnn", 1, 1, 3, 2) == 2 * 2 * (6 + 6)
    assert 22e6 < recurrent.gemm_flops("lstm", 1, 50, 32, 128) < 24e6


def test_run_recurrent_times_every_runner():
    result = recurrent.run_recurrent(kinds=("rnn",), backends=["numpy"], rounds=2, min_time=0.0,
                                     with_torch=False, sizes=TINY)
    per = result["rnn"]
    assert set(per) >= {"numpy"}
    assert all(0 < r["best_s"] <= r["median_s"] for r in per.values())
    assert all(len(r["rounds_s"]) == 2 and min(r["rounds_s"]) == r["best_s"] for r in per.values())
    ratios, paired = recurrent.ratios(per), recurrent.paired_ratios(per)
    assert ratios["numpy"][0] is None and paired["numpy"][0] is None  # no PyTorch
    if recurrent.BARE in per:
        assert ratios[recurrent.BARE][1] == 1.0 and paired[recurrent.BARE][1] == 1.0


def test_paired_ratios_take_each_rounds_own_ratio():
    # a drift between rounds: the runner's median round is not bare-gemms' median
    # one, so the ratio of medians (3) is not the rounds' own ratio (2 in each)
    per = {"c": {"median_s": 6.0, "rounds_s": [2.0, 6.0, 20.0]},
           recurrent.BARE: {"median_s": 2.0, "rounds_s": [1.0, 3.0, 10.0]},
           recurrent.TORCH: {"median_s": 6.0, "rounds_s": [4.0, 6.0, 60.0]}}
    assert recurrent.ratios(per)["c"] == (1.0, 3.0)
    assert recurrent.paired_ratios(per)["c"] == (2.0, 2.0)
    assert recurrent.paired_ratios({"c": per["c"]})["c"] == (None, None)


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
