"""fastnn: fast neural-network training on the CPU.

Kernels run on one of several backends with identical results: ``numpy`` (the
reference), ``numba`` and ``c``. See `available_backends`, `get_backend`,
`set_backend`, `use_backend` and `set_num_threads`.
"""

from .backends import (
    BackendUnavailableError,
    available_backends,
    get_backend,
    kernel_owners,
    set_backend,
    set_num_threads,
    unavailable_backends,
    use_backend,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError", "MLPClassifier", "MLPRegressor", "available_backends", "get_backend",
    "kernel_owners", "set_backend", "set_num_threads", "unavailable_backends", "use_backend", "__version__",
]


def __getattr__(name):
    # the estimators import scikit-learn: loaded on first use so `import fastnn` stays fast
    if name in ("MLPClassifier", "MLPRegressor"):
        from . import estimators

        return getattr(estimators, name)
    if name == "testing":  # gradient and backend-agreement checks, loaded on first use
        import importlib

        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module 'fastnn' has no attribute {name!r}")
