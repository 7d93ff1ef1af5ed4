"""A process forked after the compiled kernels ran in parallel runs them too.

GNU OpenMP cannot start threads in a child forked from a process that used it
(the child's first parallel region waits forever; under Numba's omp layer Numba
terminates the child), so a forked child takes the serial kernels. Without that,
these tests time out."""

import multiprocessing
import os

import numpy as np
import pytest

import fastnn

COMPILED = [name for name in ("c", "numba") if name in fastnn.available_backends()]
pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork"),
    pytest.mark.skipif(not COMPILED, reason="no compiled backend"),
]

N = 1 << 20  # elements: above every parallel threshold of both backends
CHILD_SECONDS = 300  # a hung child fails the test; compiling serial kernels takes seconds


def kernel_results(backend_name):
    """Adam, a softmax cross-entropy and tanh on inputs large enough to run in
    parallel where threads are allowed."""
    backend = fastnn.get_backend(backend_name)
    rng = np.random.default_rng(0)
    param, grad = rng.standard_normal((2, N), dtype=np.float32)
    m, v = np.zeros(N, np.float32), np.zeros(N, np.float32)
    backend.adam_step(param, grad, m, v, 1, 1e-3)
    logits = rng.standard_normal((N // 1024, 1024), dtype=np.float32)
    loss, dlogits = backend.softmax_cross_entropy(logits, np.arange(N // 1024) % 1024)
    y = backend.activation_forward(grad, "tanh")
    return param, m, v, loss, dlogits, y


def in_forked_child(backend_name):
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply_async(kernel_results, (backend_name,)).get(timeout=CHILD_SECONDS)


@pytest.mark.parametrize("backend_name", COMPILED)
def test_forked_child_runs_the_kernels_after_the_parent_ran_them_in_parallel(backend_name):
    # the parent runs parallel regions with the default threads (one per core)
    parent = kernel_results(backend_name)
    child = in_forked_child(backend_name)
    for name, p, c in zip(("param", "m", "v", "loss", "dlogits", "tanh"), parent, child):
        # serial in the child, parallel in the parent: the same elementwise
        # results; the loss adds its per-thread partial sums in another grouping
        np.testing.assert_allclose(c, p, rtol=1e-6 if name == "loss" else 0, err_msg=name)
