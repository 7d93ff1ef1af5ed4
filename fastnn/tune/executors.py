"""Where trials run.

- None: in the calling process, one after another, with all of fastnn's threads.
- "processes" with n_jobs: a pool of worker processes started with spawn (a
  fork after OpenMP threads ran can hang the child); each sets
  fastnn.set_num_threads(cores // n_jobs), so the workers together use the
  cores once. The data goes to each worker once, when it starts.
- a dask.distributed.Client: each trial a task on the cluster; the data is
  scattered to the workers once; a task sets fastnn's threads to its worker's
  thread count. Models travel as arrays (pickled descriptions and buffers).

An executor runs `fitting.run_task(task, data)`: `submit(task)` returns a
handle, `wait(handles)` the handles that finished (at least one), and
`outcome(handle)` the Outcome; a task lost with its worker (a killed process)
gives an Outcome with the error, so the search records a FAILED trial and goes on
(Dask itself first runs a task lost with its worker again on another worker).
"""

import concurrent.futures as cf
import multiprocessing
import os

from .fitting import Outcome, run_task


class InProcess:
    """Runs each task when it is waited for, in this process."""

    slots = 1

    def start(self, data):
        self.data = data

    def submit(self, task):
        return [task, None]

    def wait(self, handles):
        handle = handles[0]
        handle[1] = run_task(handle[0], self.data)
        return [handle]

    def outcome(self, handle):
        return handle[1]

    def close(self):
        self.data = None


_worker_data = None


def _start_worker(threads, data):
    global _worker_data
    import fastnn

    fastnn.set_num_threads(threads)
    _worker_data = data


def _run_in_worker(task):
    return run_task(task, _worker_data)


def _lost(task, exc):
    return Outcome(task.number, {}, {}, {}, None, f"{type(exc).__name__}: the worker running the trial was "
                                                  f"lost: {exc}")


class Processes:
    """n_jobs spawned worker processes with cores // n_jobs threads each."""

    def __init__(self, n_jobs=None):
        cores = os.cpu_count() or 1
        if n_jobs is None or n_jobs == -1:
            n_jobs = cores
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
            raise ValueError(f"n_jobs must be a positive integer or -1, got {n_jobs!r}")
        self.slots = n_jobs
        self.threads = max(1, cores // n_jobs)
        self._tasks = {}  # future -> (task, the pool it was given to)

    def start(self, data):
        self._data = data
        self.pool = cf.ProcessPoolExecutor(self.slots, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_start_worker, initargs=(self.threads, data))

    def submit(self, task):
        future = self.pool.submit(_run_in_worker, task)
        self._tasks[future] = (task, self.pool)
        return future

    def wait(self, handles):
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        return [h for h in handles if h in done]

    def outcome(self, handle):
        task, pool = self._tasks.pop(handle)
        try:
            return handle.result()
        except Exception as exc:  # noqa: BLE001 - a broken pool: the trial failed, not the search
            # a worker died: every trial of its pool is lost; the first to tell starts a new pool
            if isinstance(exc, cf.process.BrokenProcessPool) and pool is self.pool:
                self.pool.shutdown(wait=False)
                self.start(self._data)
            return _lost(task, exc)

    def close(self):
        self.pool.shutdown(wait=True)


def _run_on_dask_worker(task, data):
    from distributed import get_worker

    import fastnn

    worker = get_worker()
    threads = getattr(getattr(worker, "state", worker), "nthreads", None) or getattr(worker, "nthreads", 1)
    fastnn.set_num_threads(threads)  # type: ignore[arg-type]
    return run_task(task, data)


class Dask:
    """Trials as tasks of a dask.distributed Client."""

    def __init__(self, client):
        self.client = client
        self.slots = max(1, sum(client.nthreads().values()))

    def start(self, data):
        self.data, self._tasks = self.client.scatter(data, broadcast=True), {}

    def submit(self, task):
        future = self.client.submit(_run_on_dask_worker, task, self.data, pure=False)
        self._tasks[future] = task
        return future

    def wait(self, handles):
        from distributed import wait

        done, _ = wait(handles, return_when="FIRST_COMPLETED")
        return [h for h in handles if h in done]

    def outcome(self, handle):
        task = self._tasks.pop(handle)
        try:
            return handle.result()
        except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: the trial failed, not the search
            return _lost(task, exc)

    def close(self):
        self.data = None


def get_executor(executor, n_jobs=None):
    if executor is None:
        if n_jobs not in (None, 1):
            raise ValueError("n_jobs needs executor='processes' (or a dask Client)")
        return InProcess()
    if executor == "processes":
        return Processes(n_jobs)
    if type(executor).__name__ == "Client" and type(executor).__module__.startswith("distributed"):
        return Dask(executor)
    raise ValueError(f"executor must be None, 'processes' or a dask.distributed.Client, got {executor!r}")
