"""fastnn.backends._range_threads: the parts of a job on the caller's thread and
threads of their own (the Numba recurrent kernels' split batch)."""

import os
import threading

import numpy as np
import pytest

from fastnn.backends._range_threads import RangeThreads


@pytest.fixture
def threads():
    return RangeThreads()


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_every_part_runs_once(threads, parts):
    counts = np.zeros(parts, int)

    def part(p):
        counts[p] += 1

    for calls in range(1, 21):
        threads.run(part, parts)
        np.testing.assert_array_equal(counts, calls)


def test_a_worker_runs_a_part_while_the_caller_runs_its_own(threads):
    """Parts 0 and 1 meet at a barrier: neither ends unless both run at once."""
    barrier = threading.Barrier(2, timeout=60)
    ran_on = {}

    def part(p):
        ran_on[p] = threading.get_ident()
        barrier.wait()

    threads.run(part, 2)
    assert ran_on[0] == threading.get_ident() and ran_on[1] != ran_on[0]


@pytest.mark.parametrize("failing", [0, 1])
def test_an_error_is_raised_in_the_caller_after_every_part_ended(threads, failing):
    ended = []

    def part(p):
        if p == failing:
            raise ValueError(f"part {p}")
        threading.Event().wait(0.05)
        ended.append(p)

    with pytest.raises(ValueError, match=f"part {failing}"):
        threads.run(part, 2)
    assert ended == [1 - failing]
    counts = []
    threads.run(counts.append, 2)  # still usable
    assert sorted(counts) == [0, 1]


def test_a_nested_or_second_caller_runs_its_parts_serially(threads):
    inner = []

    def part(p):
        if p == 0:
            threads.run(lambda q: inner.append((q, threading.get_ident())), 3)

    threads.run(part, 2)
    assert [q for q, _ in inner] == [0, 1, 2]
    assert {ident for _, ident in inner} == {threading.get_ident()}


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two cores")
def test_the_workers_keep_off_the_callers_core(threads):
    threads.run(lambda p: None, 3)
    assert len(threads._workers) == 2
    for tid in threads._workers:
        assert os.sched_getaffinity(tid) == os.sched_getaffinity(0) - {threads._kept_off[tid]}


def test_jobs_after_the_spins_ended_still_run(threads):
    """The workers sleep once their spin ends (about 1 ms), and the caller polls
    once its own does: jobs posted after a pause, and a worker's part that ends
    long after the caller's, still run every part once."""
    counts = np.zeros(2, int)

    def part(p):
        if p == 1:
            threading.Event().wait(0.01)
        counts[p] += 1

    for calls in range(1, 4):
        threading.Event().wait(0.01)
        threads.run(part, 2)
        np.testing.assert_array_equal(counts, calls)


def test_an_interrupt_while_the_caller_waits_is_raised_after_the_parts(threads):
    """A KeyboardInterrupt raised in the caller's thread while it waits for the
    worker's part (delivered as Ctrl-C's is, between two bytecodes; injected
    with PyThreadState_SetAsyncExc, which a shell that ignores SIGINT, as for a
    background job, cannot stop) comes out of run() once that part has ended."""
    import ctypes

    ended, started, caller = [], threading.Event(), threading.get_ident()

    def interrupt_caller():
        set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
        set_async_exc(ctypes.c_ulong(caller), ctypes.py_object(KeyboardInterrupt))

    def part(p):
        if p == 0:  # (the caller's, which would run part 1 too if no worker had)
            assert started.wait(60)
            threading.Timer(0.05, interrupt_caller).start()
        else:
            started.set()
            threading.Event().wait(0.3)
            ended.append(p)

    with pytest.raises(KeyboardInterrupt):
        threads.run(part, 2)
    assert ended == [1]
    counts = []
    threads.run(counts.append, 2)  # still usable
    assert sorted(counts) == [0, 1]


def test_a_part_announcing_itself_from_nogil_code_runs_beside_a_worker(threads):
    """fn(0) calls announce(sync, 0) from a nogil function, as the recurrent
    kernels do; the worker's part starts while the caller's still runs."""
    from numba import njit

    from fastnn.backends._range_threads import ENTERED, SEQ, _load, _store, announce

    @njit(nogil=True)
    def wait_for_the_other(sync, p, flags):
        announce(sync, p)
        _store(flags, p, 1)
        for _ in range(10**9):  # (bounded: seconds at most)
            if _load(flags, 1 - p) == 1:
                return True
        return False

    results = {}
    for _ in range(5):
        flags = np.zeros(2, np.int64)
        threads.run(lambda p, flags=flags: results.__setitem__(p, wait_for_the_other(threads.sync, p, flags)),
                    2)
        assert results == {0: True, 1: True}
        assert threads.sync[ENTERED] == threads.sync[SEQ]


def test_an_interrupt_outside_the_parts_still_waits_for_the_workers(threads, monkeypatch):
    """An interrupt raised between two bytecodes of the caller (here: as its part 0
    is about to start) leaves run() only once the worker's part has ended, and
    the next job is not credited with that part."""
    ended, started = [], threading.Event()
    run_part = threads._run_part

    def interrupted(fn, p):
        if p == 0:
            assert started.wait(60)
            raise KeyboardInterrupt
        return run_part(fn, p)

    def part(p):
        started.set()
        threading.Event().wait(0.2)
        ended.append(p)

    monkeypatch.setattr(threads, "_run_part", interrupted)
    with pytest.raises(KeyboardInterrupt):
        threads.run(part, 2)
    assert ended == [1]
    monkeypatch.setattr(threads, "_run_part", run_part)
    counts = np.zeros(3, int)
    for calls in range(1, 6):
        threads.run(lambda p: counts.__setitem__(p, counts[p] + 1), 3)
        np.testing.assert_array_equal(counts, calls)


def test_worker_parts_that_report_themselves_from_nogil_code(threads):
    """worker_fn parts end with leave(sync, True, seq), as the kernels' *_range:
    each reports itself and waits for the next job inside its nogil code. Every
    part runs once per job, the caller returns only after the workers' parts
    (their counts are complete at once), and jobs after the spins ended run."""
    import time

    from numba import njit

    from fastnn.backends._range_threads import announce, leave

    @njit(nogil=True)
    def part(sync, p, worker, counts):
        seq = announce(sync, p)
        for _ in range(1000):  # (long enough for the worker to claim its part)
            counts[p] += 1
        return leave(sync, worker, seq)

    workers = set()

    def worker_part(p, counts):
        workers.add(threading.get_ident())
        return part(threads.sync, p, True, counts)

    for parts in (2, 3):
        counts = np.zeros(parts, np.int64)
        for calls in range(1, 31):
            threads.run(lambda p, c=counts: part(threads.sync, p, False, c), parts,
                        lambda p, c=counts: worker_part(p, c))
            np.testing.assert_array_equal(counts, 1000 * calls)
            if calls % 10 == 0:
                time.sleep(0.01)  # past the workers' spins: they sleep until the next job
    assert workers and threading.get_ident() not in workers


def test_an_error_in_a_worker_part_is_raised_and_the_next_job_runs(threads):
    def worker_part(p):
        raise ValueError(f"part {p}")

    with pytest.raises(ValueError, match="part 1"):
        for _ in range(50):  # (until a worker, not the caller, has run part 1)
            threads.run(lambda p: threading.Event().wait(0.02), 2, worker_part)
    counts = []
    threads.run(counts.append, 2)
    assert sorted(counts) == [0, 1]
