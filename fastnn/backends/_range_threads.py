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
that arrives while the caller waits for them.

Hand-offs without the GIL. Each side spins before it sleeps, as the C pool's
threads do for a millisecond (csrc/threads.c SPIN_NS): a thread that sleeps, on
a condition or waiting for the GIL, is woken 50-130 us later on such a machine.
The spins run in nogil code on the `sync` array, and each side takes the GIL
only when the other is inside its own nogil part: a worker that sees a job
waits (briefly) until the caller has announced, from inside its part 0, that it
is there (`announce`), and reports its own parts done from inside the nogil spin
that follows them, so that the caller, spinning for that count, finds the GIL
free. (A caller whose spin ends polls every 0.1 ms.) announce is a hint only:
a part run serially (a nested or second caller) may announce another job's. Measured in the recurrent
benchmark's LSTM training step (Zen 4, 2 vCPUs, medians, us after the post):
the worker started its part 60-66 us after the post when it slept on a
condition, 71 when it spun but then waited for the GIL, 23-27 with the hand-off
above (its kernel's dispatch included; 8 for a bare nogil function); the step
took 160 us a sequence against 168 (rnn: 41.4 against 43.9), alternating in one
process.

A part given as a worker's own function (`worker_fn`, the kernels' *_range with
worker true) reports itself and waits for the next job from inside its nogil
code (`leave`), before it returns to Python: the caller then finds its part
done as the kernel ends, not after the worker has taken the GIL and run its
loop's Python, whose caches the kernel left cold (the recurrent benchmark's
LSTM forward on the Intel Xeon: the caller went on 31-34 us after the worker's
kernel ended, 15 of them before the worker was back in Python)."""

import ctypes
import os
import platform
import sys
import threading
import time

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")

# the sync array's fields (int64s 64 bytes apart: each on a cache line of its own)
SEQ = 0  # the job's sequence number, written by the caller as it posts the job
ENTERED = 8  # the sequence number of the job whose part 0 the caller has entered
DONE = 16  # the parts of the job that workers have finished
PAUSES = 24  # the workers' spin (RangeThreads._pauses), for leave
ENTRY_PAUSES = 32  # their wait for an announcement (RangeThreads._entry_pauses), for leave
SYNC_SIZE = 40
SPIN_SECONDS = 1e-3  # how long either side spins before it sleeps
ENTRY_SECONDS = 2e-4  # how long a worker waits for the caller's announcement


@intrinsic
def _load(typingctx, sync, i):
    """sync[i], read from memory at every call (an acquire load)."""
    def codegen(context, builder, sig, args):
        data = cgutils.create_struct_proxy(sig.args[0])(context, builder, value=args[0]).data
        return builder.load_atomic(builder.gep(data, [args[1]]), "acquire", 8)
    return types.int64(sync, types.intp), codegen


@intrinsic
def _store(typingctx, sync, i, value):
    """sync[i] = value, seen by the other threads' loads after it (a release store)."""
    def codegen(context, builder, sig, args):
        data = cgutils.create_struct_proxy(sig.args[0])(context, builder, value=args[0]).data
        builder.store_atomic(args[2], builder.gep(data, [args[1]]), "release", 8)
        return context.get_dummy_value()
    return types.none(sync, types.intp, types.int64), codegen


@intrinsic
def _add(typingctx, sync, i, value):
    """sync[i] += value, atomically."""
    def codegen(context, builder, sig, args):
        data = cgutils.create_struct_proxy(sig.args[0])(context, builder, value=args[0]).data
        builder.atomic_rmw("add", builder.gep(data, [args[1]]), args[2], "acq_rel")
        return context.get_dummy_value()
    return types.none(sync, types.intp, types.int64), codegen


@intrinsic
def _pause(typingctx):
    """The x86 spin-wait hint (pause); nothing elsewhere."""
    def codegen(context, builder, sig, args):
        if X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


@njit(cache=True, inline="always")
def announce(sync, p):
    """Called by a part at its start, inside its nogil code: part 0 (the caller's)
    tells the workers that the caller no longer holds the GIL. Returns the job's
    sequence number, for leave. (Inlined into the range kernels of
    _numba_rnn.py and _numba_kernels.py, whose cached code Numba checks against
    their own files' dates only: a change here needs a change there too, or the
    cache cleared.)"""
    seq = _load(sync, SEQ)
    if p == 0:
        _store(sync, ENTERED, seq)
    return seq


@njit(cache=True, nogil=True)
def _spin_until(sync, i, value, pauses):
    """Whether sync[i] reached `value` (>=) within `pauses` pauses."""
    for _ in range(pauses):
        if _load(sync, i) >= value:
            return True
        _pause()
    return _load(sync, i) >= value


@njit(cache=True, nogil=True)
def _report_and_await(sync, finished, seen, pauses, entry_pauses):
    """A worker's hand-off: adds its `finished` parts to sync[DONE], then spins
    until a job after `seen` is posted and its caller has entered part 0 (or
    entry_pauses more have passed). Whether a job came within `pauses`."""
    if finished:
        _add(sync, DONE, finished)
    if not _spin_until(sync, SEQ, seen + 1, pauses):
        return False
    _spin_until(sync, ENTERED, _load(sync, SEQ), entry_pauses)
    return True


@njit(cache=True, inline="always")
def leave(sync, worker, seq):
    """Called by a part at its end, inside its nogil code, with announce's `seq`:
    run by a worker (worker true: RangeThreads.run's worker_fn), it reports the
    part done and waits, as a worker between jobs, for the next job and its
    caller's announcement. Returns `worker`: whether it did (the worker's loop
    then neither reports the part nor spins again)."""
    if worker:
        _report_and_await(sync, 1, seq, _load(sync, PAUSES), _load(sync, ENTRY_PAUSES))
    return worker


def _pauses_in(seconds):
    """How many spin-wait pauses take about `seconds` here: the quickest of five
    timings (one preempted would shorten the spins for the process's life)."""
    sync = np.zeros(SYNC_SIZE, np.int64)
    count = 4000
    _spin_until(sync, SEQ, 1, count)  # (compiled, or loaded from the cache)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        _spin_until(sync, SEQ, 1, count)
        best = min(best, time.perf_counter() - start)
    return max(int(seconds * count / max(best, 1e-9)), 1)


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
    threads (started on first use, daemons, never exiting). fn(0) may call
    announce(sync, 0) from its nogil code (see the module's notes)."""

    def __init__(self):
        self._busy = threading.Lock()  # one job at a time
        self._lock = threading.Lock()  # guards the job's fields below (a with in C, no Python frame)
        self._cond = threading.Condition(self._lock)  # a worker sleeps on it once its spin ends
        self._sleeping = 0  # workers on (or about to wait on) _cond: the post notifies only them
        self._fn = None
        self._parts = 0
        self._next = 0  # the next part to claim
        self._seq = 0  # the job's sequence number
        self._claimed = 0  # the job's parts claimed by workers
        self._errors = []
        self.sync = np.zeros(SYNC_SIZE, np.int64)  # SEQ, ENTERED, DONE: spun on without the GIL
        self._pauses = self._entry_pauses = 0  # timed when the workers start
        self._spin_until, self._report_and_await = _spin_until, _report_and_await  # (typed then)
        self._workers = []  # native thread ids
        self._kept_off = {}  # native id -> the caller's core last taken out of its affinity
        self._getcpu = _sched_getcpu()
        self._forked = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._mark_forked)

    def _mark_forked(self):
        self._forked = True  # the workers do not exist in a forked child

    def run(self, fn, parts, worker_fn=None):
        if parts <= 1 or self._forked or not self._busy.acquire(blocking=False):
            for p in range(parts):
                fn(p)
            return
        try:
            if len(self._workers) < parts - 1:
                self._start_workers(parts - 1)
            self._keep_workers_off()
            with self._lock:
                self._fn, self._worker_fn = fn, fn if worker_fn is None else worker_fn
                self._parts, self._next, self._claimed, self._errors = parts, 1, 0, []
                self.sync[DONE] = 0
                self._seq += 1
                self.sync[SEQ] = self._seq
                if self._sleeping:  # (a worker counts itself before it reads _seq: none is missed)
                    self._cond.notify_all()
            try:
                self._run_part(fn, 0)
                while True:  # the parts no worker has claimed
                    with self._lock:
                        if self._next >= parts:
                            break
                        p = self._next
                        self._next += 1
                    self._run_part(fn, p)
            finally:  # (an interrupt included) the job ends with the workers' parts
                self._end_job()
            errors, self._fn, self._worker_fn, self._errors = self._errors, None, None, []
        finally:
            self._busy.release()
        if errors:
            raise errors[0]

    def _end_job(self):
        """Lets no further part be claimed and waits until the workers have
        reported the parts they claimed: spinning, then polling every 0.1 ms; an
        interrupt meanwhile is raised after them (the parts still run)."""
        pauses, claimed = self._pauses, None
        while True:
            try:
                if claimed is None:
                    with self._lock:
                        self._next, claimed = self._parts, self._claimed
                if self._spin_until(self.sync, DONE, claimed, pauses):
                    return
                pauses = 1
                time.sleep(1e-4)
            except BaseException as error:  # (KeyboardInterrupt)
                self._errors.insert(0, error)

    def _run_part(self, fn, p):
        """fn(p)'s result (a worker_fn's: whether the part reported itself), or
        None when it raised (the error is raised in the caller after every part)."""
        try:
            return fn(p)
        except BaseException as error:
            with self._lock:
                self._errors.append(error)
            return None

    def _start_workers(self, count):
        if not self._pauses:
            self._pauses = _pauses_in(SPIN_SECONDS)
            self._entry_pauses = max(int(self._pauses * ENTRY_SECONDS / SPIN_SECONDS), 1)
            # their compiled code for these arguments' types: no dispatch by type at each call
            sync, count64 = numba.typeof(self.sync), types.int64
            self._spin_until = _spin_until.compile((sync, types.intp, count64, count64))
            self._report_and_await = _report_and_await.compile((sync,) + (count64,) * 4)
            self.sync[PAUSES], self.sync[ENTRY_PAUSES] = self._pauses, self._entry_pauses  # (leave's)
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
        seen = self._seq  # the last job looked at (read before the caller may post one)
        started.set()
        finished = 0  # parts finished since the last report
        left = False  # whether the last part reported itself and waited for the next job (leave)
        try:
            while True:
                if not left:
                    self._report_and_await(self.sync, finished, seen, self._pauses, self._entry_pauses)
                elif finished:  # parts that raised before the one that left: reported, no spin
                    self._report_and_await(self.sync, finished, seen, 0, 0)
                finished, left = 0, False
                with self._lock:
                    if self._seq == seen:
                        self._sleeping += 1
                        while self._seq == seen:
                            self._cond.wait()
                        self._sleeping -= 1
                    seen = self._seq
                    p = self._claim()
                    fn, reports = self._worker_fn, self._worker_fn is not self._fn
                while p is not None:
                    if self._run_part(fn, p) is True and reports:
                        left = True  # (reported, and this job's other parts are no longer its)
                        break
                    finished += 1
                    with self._lock:
                        p = self._claim() if self._seq == seen else None
        finally:  # (a worker that fails here still reports its parts: the caller waits for them)
            self._report_and_await(self.sync, finished, -1, 0, 0)

    def _claim(self):
        """The next part of the job for a worker, or None (under _lock)."""
        if self._next >= self._parts:
            return None
        self._next += 1
        self._claimed += 1
        return self._next - 1

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
