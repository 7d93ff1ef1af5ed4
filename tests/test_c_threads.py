"""The C kernels' own thread pool (csrc/threads.c): several Python threads may
call parallel kernels at once (cffi releases the GIL); the pool serves one call
at a time and the others run their ranges serially, split as the pool would
split them, so every call gives the result a lone call gives, bit for bit."""

import os
import sys
import threading
import time

import numpy as np
import pytest

import fastnn

pytestmark = pytest.mark.skipif("c" not in fastnn.available_backends(), reason="no C backend")

N = 1 << 20  # elements: above the parallel thresholds of csrc/common.h
CALLERS = 4
ROUNDS = 5


def kernel_results(backend, seed):
    """Adam's step and a softmax cross-entropy (per-thread partial sums) on
    inputs drawn from `seed`."""
    rng = np.random.default_rng(seed)
    param, grad = rng.standard_normal((2, N), dtype=np.float32)
    m, v = np.zeros(N, np.float32), np.zeros(N, np.float32)
    backend.adam_step(param, grad, m, v, 1, 1e-3)
    logits = rng.standard_normal((N // 256, 256))
    loss, dlogits = backend.softmax_cross_entropy(logits, np.arange(N // 256) % 256)
    return param, m, v, loss, dlogits


def test_concurrent_callers_get_the_results_of_a_lone_call():
    import fastnn.backends as registry
    from fastnn import _ckernels

    c = fastnn.get_backend("c")
    _ckernels.lib.fastnn_set_num_threads(2)  # parallel even on one core
    try:
        alone = [kernel_results(c, seed) for seed in range(CALLERS)]
        results, errors = {}, []

        def caller(seed):
            try:
                for r in range(ROUNDS):
                    results[seed, r] = kernel_results(c, seed)
            except Exception as exc:  # reported below, not lost in the thread
                errors.append(exc)

        workers = [threading.Thread(target=caller, args=(seed,)) for seed in range(CALLERS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=300)
        assert not errors and not any(w.is_alive() for w in workers)
        for (seed, r), got in results.items():
            for name, a, b in zip(("param", "m", "v", "loss", "dlogits"), got, alone[seed]):
                np.testing.assert_array_equal(a, b, err_msg=f"caller {seed} round {r}: {name}")
        assert len(results) == CALLERS * ROUNDS
    finally:
        _ckernels.lib.fastnn_set_num_threads(registry._num_threads or 0)


def pool_threads():
    """The thread ids of the C kernels' pool in this process (named fastnn-pool)."""
    tids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                if comm.read().strip() == "fastnn-pool":
                    tids.append(int(tid))
        except OSError:  # a thread that ended meanwhile
            pass
    return tids


@pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                    reason="thread affinity on Linux with two cores or more")
def test_a_sleeping_worker_is_posted_its_part_off_the_callers_core():
    """A worker that slept is woken with the caller's core out of its affinity,
    so the scheduler cannot queue it behind the caller (csrc/threads.c,
    keep_workers_off): after a pause longer than the spin, some pool thread's
    affinity is the process's cores less one."""
    import fastnn.backends as registry
    from fastnn import _ckernels

    c = fastnn.get_backend("c")
    x = np.linspace(-3, 3, N)
    _ckernels.lib.fastnn_set_num_threads(2)
    try:
        c.activation_forward(x, "tanh")  # starts the pool
        time.sleep(0.05)  # longer than a worker spins: it sleeps
        c.activation_forward(x, "tanh")
        cores = os.sched_getaffinity(0)
        masks = [os.sched_getaffinity(tid) for tid in pool_threads()]
        assert masks, "no fastnn-pool thread"
        assert any(mask < cores and len(mask) == len(cores) - 1 for mask in masks), (cores, masks)
    finally:
        _ckernels.lib.fastnn_set_num_threads(registry._num_threads or 0)


def voluntary_switches(tid):
    """How many times thread `tid` has gone to sleep (blocked) so far."""
    with open(f"/proc/self/task/{tid}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches for thread {tid}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc of Linux")
def test_small_kernels_leave_a_sleeping_worker_asleep_and_round_alike():
    """Work split only between spinning threads (parallel_for_small: an optimizer
    step on 8192 parameters, a loss on 300 x 7 logits) does not wake a worker
    that sleeps: the caller runs every part itself, and the results are those
    of the parts run beside a spinning worker, bit for bit. A large kernel
    still wakes it."""
    import fastnn.backends as registry
    from fastnn import _ckernels

    c = fastnn.get_backend("c")
    rng = np.random.default_rng(7)
    param0, grad = rng.standard_normal((2, 8192))
    logits, labels = rng.standard_normal((300, 7)), rng.integers(0, 7, 300)
    big = np.linspace(-3, 3, N)

    def small_kernels():
        param, m, v = param0.copy(), np.zeros(8192), np.zeros(8192)
        c.adam_step(param, grad, m, v, 1, 1e-3)
        return (param, m, v) + tuple(c.softmax_cross_entropy(logits, labels))

    _ckernels.lib.fastnn_set_num_threads(2)
    try:
        c.activation_forward(big, "tanh")  # starts the pool
        tids = pool_threads()
        spinning = [small_kernels() for _ in range(3)]  # right after it: the worker spins
        time.sleep(0.05)  # longer than a worker spins: it sleeps
        before = sum(map(voluntary_switches, tids))
        asleep = [small_kernels() for _ in range(50)]
        time.sleep(0.05)  # a worker woken would have gone back to sleep: one more switch
        assert sum(map(voluntary_switches, tids)) == before, "a small kernel woke the sleeping worker"
        c.activation_forward(big, "tanh")
        time.sleep(0.05)
        assert sum(map(voluntary_switches, tids)) > before, "a large kernel did not wake the worker"
        for got in spinning[1:] + asleep:
            for a, b in zip(got, spinning[0]):
                np.testing.assert_array_equal(a, b)
    finally:
        _ckernels.lib.fastnn_set_num_threads(registry._num_threads or 0)
