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


# OpenBLAS core types (threadpoolctl's "architecture") by the widest SIMD their
# kernels use: 1 SSE, 2 AVX, 3 AVX2+FMA, 4 AVX-512. Types not listed are not ranked.
OPENBLAS_CORE_LEVELS = {
    **dict.fromkeys(("Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Opteron",
                     "Opteron_SSE3", "Barcelona", "Bobcat"), 1),
    **dict.fromkeys(("SandyBridge", "Bulldozer", "Piledriver", "Steamroller", "Excavator"), 2),
    **dict.fromkeys(("Haswell", "Zen", "AtomX"), 3),
    **dict.fromkeys(("SkylakeX", "Cooperlake", "SapphireRapids"), 4),
}
SIMD_NAMES = {1: "SSE", 2: "AVX", 3: "AVX2", 4: "AVX-512"}
# the variables that pin OpenBLAS's kernels and caches, which a user's machine leaves unset
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def cpu_simd_level(flags):
    """The widest SIMD level (OPENBLAS_CORE_LEVELS) that CPU flags allow."""
    flags = set(flags)
    if "avx512f" in flags:
        return 4
    if {"avx2", "fma"} <= flags:
        return 3
    return 2 if "avx" in flags else 1


def openblas_core_warning(architecture, flags, environ):
    """A warning (str) when OPENBLAS_CORETYPE in `environ` pins OpenBLAS to a
    core type (`architecture`, as threadpoolctl reports it) whose kernels are
    narrower than what the CPU (`flags`, as cpu_flags() returns them) runs, else
    None: then GEMMs and every limit and ratio measured against them are slower
    than on a user's machine."""
    pinned = environ.get("OPENBLAS_CORETYPE")
    level = OPENBLAS_CORE_LEVELS.get(architecture)
    if not pinned or level is None or level >= cpu_simd_level(flags):
        return None
    return (f"OPENBLAS_CORETYPE={pinned} pins OpenBLAS to its {architecture} kernels "
            f"({SIMD_NAMES[level]}) on a CPU with {SIMD_NAMES[cpu_simd_level(flags)]}: "
            "GEMMs run slower than on a user's machine; unset it to measure as one "
            "(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE ...)")


def openblas_report(environ=None):
    """([line per OpenBLAS library: the core type in use], [warnings]) for this
    process, with the override variables as `environ` (default os.environ) has them."""
    environ = os.environ if environ is None else environ
    overrides = ", ".join(f"{name}={environ[name]}" if environ.get(name) else f"{name} unset"
                          for name in OPENBLAS_OVERRIDES)
    lines, warnings = [], []
    for pool in blas_info():
        if pool["internal_api"] != "openblas":
            continue
        lines.append(f"OpenBLAS {pool['version']} core type {pool['architecture']} "
                     f"({overrides}): {os.path.basename(pool['filepath'] or '')}")
        warning = openblas_core_warning(pool["architecture"], cpu_flags(), environ)
        if warning and warning not in warnings:
            warnings.append(warning)
    return lines, warnings


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
        "openblas_overrides": {name: os.environ.get(name) for name in OPENBLAS_OVERRIDES},
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
