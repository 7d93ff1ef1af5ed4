"""Backend registry.

A backend is an object with every kernel of the catalogue as a method (see
reference.py; each kernel is declared once in spec.py, which generates its
public method and ``backend.fast``, the same kernel behind a cheap structural
check for hot callers). `NumpyBackend` is the reference; fast backends subclass it and
override the implementations they accelerate. Fast backends are imported lazily:
one that cannot load (Numba missing, C extension not built) is simply absent from
`available_backends()`, and asking for it says why.
"""

from __future__ import annotations

import contextlib
import importlib
import os

# Idle threads that spin keep a core busy that another pool's threads need (a
# dense layer's GEMMs on BLAS's threads and its epilogue on an OpenMP pool
# spinning for milliseconds: 1.5x to several times slower). fastnn's threads
# therefore leave the process's OpenMP policy alone, which PyTorch and other
# OpenMP users read too (a PyTorch MLP epoch ran 1.5x slower under
# OMP_WAIT_POLICY=PASSIVE): the C kernels run on a pool of their own
# (csrc/threads.c) that runs their GEMMs too, so its workers' 1 ms spin takes
# no other pool's core, and Numba on its workqueue threading layer, whose
# threads sleep when idle, unless its layer or the policy was chosen
# (numba_backend.py).
# Opt-in: FASTNN_GLOBAL_OMP_PASSIVE=1 sets OMP_WAIT_POLICY=PASSIVE for the whole
# process on `import fastnn` (unless set), for every OpenMP runtime that loads
# after it: what a process that runs fastnn's kernels and little else may want.
# (OMP_WAIT_POLICY_SET_HERE: whether it did, so that a child process timing
# another library starts with the user's environment.)
GLOBAL_OMP_PASSIVE_ENV = "FASTNN_GLOBAL_OMP_PASSIVE"
OMP_WAIT_POLICY_SET_HERE = (os.environ.get(GLOBAL_OMP_PASSIVE_ENV) == "1"
                            and "OMP_WAIT_POLICY" not in os.environ)
if OMP_WAIT_POLICY_SET_HERE:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from typing import TYPE_CHECKING, Dict, Iterator, List, Union  # noqa: E402

from .reference import KERNELS, NumpyBackend  # noqa: E402

if TYPE_CHECKING:  # for annotations only
    from .._types import Backend

# name -> "module:Class"; the default backend is the first of these that loads.
BACKENDS = {
    "c": "fastnn.backends.c_backend:CBackend",
    "numba": "fastnn.backends.numba_backend:NumbaBackend",
    "numpy": "fastnn.backends.reference:NumpyBackend",
}
FIX_HINTS = {
    "numba": "install Numba: pip install numba",
    "c": "reinstall fastnn where a C compiler (gcc) is present, so that "
         "setup.py can build fastnn._ckernels: pip install --force-reinstall --no-deps .",
}


class BackendUnavailableError(RuntimeError):
    """A known backend that could not be loaded on this machine.

    Raised by `get_backend`, `set_backend`, `use_backend` and `kernel_owners` when
    asked for such a backend; its message says why the backend failed to load and
    how to fix it (`unavailable_backends` gives the same reasons).

    Examples
    --------
    >>> import fastnn
    >>> issubclass(fastnn.BackendUnavailableError, RuntimeError)
    True
    """


_instances: Dict[str, NumpyBackend] = {}
_errors: Dict[str, str] = {}
_current = None
_num_threads = None


def _load(name):
    if name in _instances or name in _errors:
        return _instances.get(name)
    module_name, cls_name = BACKENDS[name].split(":")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
        backend = cls()
        if _num_threads is not None:
            backend._set_num_threads(_num_threads)
    except Exception as exc:  # any import or load failure makes the backend absent
        _errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    _instances[name] = backend
    return backend


def available_backends() -> List[str]:
    """List the backends that load on this machine, fastest first.

    Returns
    -------
    list of str
        Backend names: ``'c'``, ``'numba'`` when they load, and always ``'numpy'``
        (the reference), last.

    Examples
    --------
    >>> import fastnn
    >>> fastnn.available_backends()[-1]
    'numpy'
    """
    return [name for name in BACKENDS if _load(name) is not None]


def unavailable_backends() -> Dict[str, str]:
    """Say why each known backend that failed to load did so.

    Returns
    -------
    dict of str to str
        ``{name: reason}``, the reason ending with how to fix it; empty when
        every backend loads.

    Examples
    --------
    >>> import fastnn
    >>> set(fastnn.unavailable_backends()).isdisjoint(fastnn.available_backends())
    True
    """
    available_backends()
    return {name: f"{why}; to fix: {FIX_HINTS.get(name, '')}" for name, why in _errors.items()}


def _resolve(name: Union[str, Backend]) -> Backend:
    if isinstance(name, NumpyBackend):
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend must be a backend name or object, got {type(name).__name__}")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends are {sorted(BACKENDS)}")
    backend = _load(name)
    if backend is None:
        raise BackendUnavailableError(
            f"backend {name!r} is not available: {_errors[name]}. "
            f"To fix: {FIX_HINTS.get(name, '')}. Available: {available_backends()}"
        )
    return backend


def get_backend(name: Union[str, Backend, None] = None) -> Backend:
    """Return the backend called `name`, or the current one.

    Parameters
    ----------
    name : str, backend object or None, default None
        A backend name (``'numpy'``, ``'numba'``, ``'c'``), a backend object
        (returned as it is), or None for the current backend: the one set by
        `set_backend` or `use_backend`, else the one named by the environment
        variable ``FASTNN_BACKEND``, else the fastest available.

    Returns
    -------
    NumpyBackend
        The backend; every backend is a `NumpyBackend` (the reference) or a
        subclass of it, with the same kernels.

    Raises
    ------
    ValueError
        If `name` is not a known backend name.
    TypeError
        If `name` is neither a name nor a backend object.
    BackendUnavailableError
        If the backend is known but does not load on this machine.

    Examples
    --------
    >>> import numpy as np
    >>> import fastnn
    >>> backend = fastnn.get_backend("numpy")
    >>> backend.name
    'numpy'
    >>> backend.activation_forward(np.array([-1.0, 2.0]), "relu")
    array([0., 2.])
    """
    if name is not None:
        return _resolve(name)
    if _current is not None:
        return _current
    env = os.environ.get("FASTNN_BACKEND")
    if env:
        try:
            return _resolve(env)
        except (ValueError, BackendUnavailableError) as exc:  # say where the name came from
            raise type(exc)(f"environment variable FASTNN_BACKEND={env!r}: {exc}") from None
    return _resolve(available_backends()[0])


def set_backend(name: str) -> Backend:
    """Make `name` the current backend for everything that does not name one.

    Parameters
    ----------
    name : str
        A backend name (or a backend object).

    Returns
    -------
    NumpyBackend
        The backend now current.

    Raises
    ------
    ValueError, TypeError, BackendUnavailableError
        As `get_backend`.

    Examples
    --------
    The example runs inside `use_backend` only so that it leaves the current
    backend as it was:

    >>> import fastnn
    >>> with fastnn.use_backend(fastnn.get_backend()):
    ...     fastnn.set_backend("numpy").name
    'numpy'
    """
    global _current
    _current = _resolve(name)
    return _current


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Run a block with `name` as the current backend (a context manager).

    The backend current before the block is current again after it, also when
    the block raises.

    Parameters
    ----------
    name : str
        A backend name (or a backend object).

    Yields
    ------
    NumpyBackend
        The backend current inside the block.

    Raises
    ------
    ValueError, TypeError, BackendUnavailableError
        As `get_backend`.

    Examples
    --------
    >>> import fastnn
    >>> with fastnn.use_backend("numpy") as backend:
    ...     fastnn.get_backend() is backend
    True
    """
    global _current
    previous = _current
    _current = _resolve(name)
    try:
        yield _current
    finally:
        _current = previous


def set_num_threads(n: int) -> None:
    """Set the number of threads of BLAS, Numba and the C kernels together.

    BLAS through threadpoolctl, Numba's threading layer and the C kernels'
    own thread pool get the same count, so that they do not oversubscribe the cores.

    Parameters
    ----------
    n : int
        The number of threads, at least 1.

    Raises
    ------
    ValueError
        If `n` is not a positive integer.

    Examples
    --------
    >>> import os
    >>> import fastnn
    >>> fastnn.set_num_threads(os.cpu_count())
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)
    _num_threads = n
    for backend in _instances.values():
        backend._set_num_threads(n)


def kernel_owners(backend: Union[str, Backend]) -> Dict[str, str]:
    """Say which backend's code runs each kernel of a backend.

    A fast backend overrides the kernels it accelerates and inherits the others
    from the reference, so its kernels may run another backend's code.

    Parameters
    ----------
    backend : str or backend object
        The backend (a name or an object from `get_backend`).

    Returns
    -------
    dict of str to str
        ``{kernel name: name of the backend whose code runs it}``, for every
        kernel of the catalogue.

    Raises
    ------
    ValueError, TypeError, BackendUnavailableError
        As `get_backend`.

    Examples
    --------
    >>> import fastnn
    >>> owners = fastnn.kernel_owners("numpy")
    >>> owners["dense_forward"]
    'numpy'
    """
    backend = _resolve(backend)
    owners = {}
    for kernel in KERNELS:
        for cls in type(backend).__mro__:
            if "_" + kernel in vars(cls):
                # a mixin without a name of its own (_gemm_conv.GemmConv) runs the
                # backend's kernels
                owners[kernel] = vars(cls).get("name", backend.name)
                break
    return owners


__all__ = [
    "BackendUnavailableError", "NumpyBackend", "available_backends", "get_backend",
    "kernel_owners", "set_backend", "set_num_threads", "unavailable_backends", "use_backend",
]
