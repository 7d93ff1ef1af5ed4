"""The timing harness: seconds per call of functions, timed in turns so that
functions timed together meet the same moments of a noisy machine.

Standard library only (it imports neither NumPy nor fastnn), so that a process
timing another library alone can use it too.
"""

import statistics
import time


def time_calls(fns, min_time=0.3, min_repeats=5, max_repeats=50, warmup=2, min_sample=2e-3,
               clock=time.perf_counter, settle=0.0):
    """[(median, best) seconds of one call, and how many calls were timed] for
    each function of `fns`, timed in turns: each round takes one sample of every
    function due, so that all of them meet the same moments of a noisy machine
    and their ratios hold even when its speed drifts during the run.

    `warmup` calls first (the first compiles Numba code). Calls shorter than
    `min_sample` are timed in batches of `inner` calls so the clock's resolution
    does not matter; the number of samples of each fills about `min_time`
    seconds, spread evenly over the rounds. `clock`: what is read around the
    calls (time.process_time: this process's CPU time, which on a shared
    machine leaves out the time spent waiting for a core). A function with a
    `sample(inner)` method times itself: it returns the seconds of `inner`
    calls (a call in another process, runner.PeerProcess, timed there).
    `settle`: seconds slept before each sample in the rounds, so that threads
    left spinning by the sample before (OpenBLAS's idle workers spin-wait for
    about 0.1 s after a threaded GEMM, OpenMP's for milliseconds) do not take
    a core from the next function's."""
    samplers = [_sampler(fn, clock) for fn in fns]
    plans = []  # (inner, repeats) per function
    for sample in samplers:
        for _ in range(warmup):
            sample(1)
        # the fastest of three calls: one slow call must not set the pace
        once = max(min(sample(1) for _ in range(3)), 1e-9)
        inner = max(1, int(min_sample / once))
        plans.append((inner, min(max_repeats, max(min_repeats, int(min_time / (once * inner))))))
    rounds = max((repeats for _, repeats in plans), default=0)
    samples = [[] for _ in fns]
    for r in range(rounds):
        for sample, (inner, repeats), taken in zip(samplers, plans, samples):
            if (r + 1) * repeats // rounds == r * repeats // rounds:
                continue  # not due this round: its samples spread over all rounds
            if settle:
                time.sleep(settle)
            taken.append(sample(inner) / inner)
    return [(statistics.median(taken), min(taken), repeats * inner)
            for taken, (inner, repeats) in zip(samples, plans)]


def _sampler(fn, clock):
    """sample(inner): the `clock` seconds of `inner` calls of fn, or fn's own
    `sample` method when it has one."""
    own = getattr(fn, "sample", None)
    if own is not None:
        return own

    def sample(inner):
        t0 = clock()
        for _ in range(inner):
            fn()
        return clock() - t0

    return sample


def time_call(fn, **options):
    """time_calls of one function."""
    return time_calls([fn], **options)[0]


def best_of(fn, repeats, min_time=0.3, max_repeats=100):
    """Shortest of at least `repeats` timed calls (more, up to max_repeats, until
    about min_time seconds have passed), after one warm-up call."""
    fn()
    best, spent, done = float("inf"), 0.0, 0
    while done < repeats or (spent < min_time and done < max_repeats):
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        best, spent, done = min(best, seconds), spent + seconds, done + 1
    return best
