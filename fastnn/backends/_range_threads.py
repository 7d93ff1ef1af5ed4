"""Parts of a job run on the calling thread and on Python threads of their own:
the Numba recurrent kernels' ranges of the batch (numba_backend._run_ranges),
each a jitted function that releases the GIL (nogil) and calls BLAS per step.

Why not Numba's threading layer (prange): its caller waits while its workers,
woken at each parallel region, run every range, and on a 2-vCPU virtual
machine a woken worker often waits for a core: instrumented, of 300 calls of the
benchmark's rnn forward split in two ranges (Zen 4, workqueue layer), the ranges
started 35-125 us after the call, and in about a quarter of the calls one range
started only when the other had ended (both workers on one core, or the second
not running until the first was done), so the call took twice its time. Here,
as in the C kernels' pool (csrc/threads.c): part 0 is the caller's own, begun at
once; the workers claim the others in the order they come, and a part no
worker has claimed when the caller is done is the caller's too (a late worker
never costs more than running the parts serially); and, on Linux, the caller's
core is taken out of the workers' affinity before a job is posted, so that a
woken worker is not placed beside the caller (csrc/threads.c keep_workers_off).

One job at a time: a second caller (another Python thread) or a forked child
runs the parts serially. Exceptions of a part are raised in the caller once
every part has ended (the parts share the caller's arrays), as is an interrupt
that arrives while the caller waits for them."""

import ctypes
import os
import sys
import threading


def _sched_getcpu():
    """libc's sched_getcpu as a ctypes function (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [], ctypes.c_int
    return fn


class RangeThreads:
    """Runs fn(p) for p in range(parts) on the caller and up to parts - 1 worker
    threads (started on first use, daemons, never exiting)."""

    def __init__(self):
        self._busy = threading.Lock()  # one job at a time
        self._cond = threading.Condition()  # guards the job's fields below
        self._fn = None
        self._parts = 0
        self._next = 0  # the next part to claim
        self._done = 0
        self._errors = []
        self._workers = []  # native thread ids
        self._kept_off = {}  # native id -> the caller's core last taken out of its affinity
        self._getcpu = _sched_getcpu()
        self._forked = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._mark_forked)

    def _mark_forked(self):
        self._forked = True  # the workers do not exist in a forked child

    def run(self, fn, parts):
        if parts <= 1 or self._forked or not self._busy.acquire(blocking=False):
            for p in range(parts):
                fn(p)
            return
        try:
            self._start_workers(parts - 1)
            self._keep_workers_off()
            with self._cond:
                self._fn, self._parts, self._next, self._done, self._errors = fn, parts, 1, 0, []
                self._cond.notify_all()
            self._run_part(0)
            while True:  # the parts no worker has claimed
                with self._cond:
                    if self._next >= parts:
                        break
                    p = self._next
                    self._next += 1
                self._run_part(p)
            with self._cond:
                while self._done < parts:
                    try:
                        self._cond.wait()
                    except BaseException as error:  # (KeyboardInterrupt) the parts still run
                        self._errors.insert(0, error)
                errors, self._fn, self._errors = self._errors, None, []
        finally:
            self._busy.release()
        if errors:
            raise errors[0]

    def _run_part(self, p):
        try:
            self._fn(p)
        except BaseException as error:  # raised in the caller after every part
            with self._cond:
                self._errors.append(error)
        with self._cond:
            self._done += 1
            self._cond.notify_all()

    def _start_workers(self, count):
        while len(self._workers) < count:
            started = threading.Event()
            ids = []
            thread = threading.Thread(target=self._work, args=(started, ids), daemon=True,
                                      name=f"fastnn-range-{len(self._workers) + 1}")
            thread.start()
            started.wait()
            self._workers.append(ids[0])

    def _work(self, started, ids):
        ids.append(threading.get_native_id())
        started.set()
        while True:
            with self._cond:
                while self._next >= self._parts:
                    self._cond.wait()
                p = self._next
                self._next += 1
            self._run_part(p)

    def _keep_workers_off(self):
        """Takes the caller's core out of each worker's affinity (Linux): a system
        call per worker when the caller's core changed since its last one."""
        if self._getcpu is None:
            return
        cpu = self._getcpu()
        moved = [tid for tid in self._workers if self._kept_off.get(tid) != cpu]
        if not moved:
            return
        cores = os.sched_getaffinity(0) - {cpu}
        for tid in moved:
            try:
                if cores:
                    os.sched_setaffinity(tid, cores)
            except OSError:
                pass  # the affinity is the scheduler's to keep
            self._kept_off[tid] = cpu
