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
