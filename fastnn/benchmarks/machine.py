"""Where the figures were measured: CPU, SIMD flags, cores, BLAS, versions,
and how much of the machine other processes used meanwhile."""

import importlib.metadata
import os
import platform
import time

import numpy as np

import fastnn

from .limits import usable_cores


def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_busy_seconds():
    """CPU seconds every process of the machine has used since boot, counting time
    taken by the hypervisor (steal) as used; None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def other_cpu_percent(busy_start, own_start, wall_start):
    """Percent of the machine's CPU time used by other processes since the start
    values (cpu_busy_seconds(), time.process_time(), time.perf_counter()) were
    taken: a measure of how disturbed the timings were. None when unknown."""
    busy = cpu_busy_seconds()
    if busy is None or busy_start is None:
        return None
    others = (busy - busy_start) - (time.process_time() - own_start)
    capacity = (time.perf_counter() - wall_start) * (os.cpu_count() or 1)
    return max(0.0, 100 * others / capacity)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    """SIMD extensions relevant to the kernels that this CPU reports (Linux only)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f") if f in flags]
    except OSError:
        pass
    return []


def blas_info():
    """[{library, version, threads, ...}] of the BLAS libraries numpy loaded."""
    from threadpoolctl import threadpool_info

    return [
        {k: pool.get(k) for k in ("internal_api", "version", "num_threads", "architecture",
                                  "threading_layer", "filepath")}
        for pool in threadpool_info() if pool.get("user_api") == "blas"
    ]


def machine():
    """Where the figures were measured: CPU, cores, BLAS, versions."""
    usable = usable_cores()
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "blas": blas_info(),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": version("numba"),
            "scipy": version("scipy"),
            "scikit-learn": version("scikit-learn"),
            "torch": version("torch"),
            "fastnn": fastnn.__version__,
        },
        "backends": fastnn.available_backends(),
    }
