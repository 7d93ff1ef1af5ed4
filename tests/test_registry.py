"""The backend registry: names, default, selection (set_backend, use_backend,
FASTNN_BACKEND), threads, kernel owners, and a fast backend that fails to load."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import fastnn
from fastnn.backends import BACKENDS, KERNELS, NumpyBackend


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    """Each test starts with no current backend and no FASTNN_BACKEND, and leaves
    the registry as it found it."""
    monkeypatch.delenv("FASTNN_BACKEND", raising=False)
    monkeypatch.setattr(fastnn.backends, "_current", None)


def run_python(code, **env):
    """Run `code` in a fresh interpreter with extra environment variables;
    returns the CompletedProcess (stdout, stderr as text)."""
    full_env = {k: v for k, v in os.environ.items() if k != "FASTNN_BACKEND"}
    full_env.update(env)
    # started in tests/: at the top of the source tree `import fastnn` would find the
    # source folder instead of the installed package
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=120,
                          cwd=os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------- names
def test_available_backends_fastest_first_numpy_always():
    names = fastnn.available_backends()
    assert names[-1] == "numpy"
    assert names == [name for name in BACKENDS if name in names]  # registry order: c, numba, numpy
    assert set(names) | set(fastnn.unavailable_backends()) == set(BACKENDS)
    assert not set(names) & set(fastnn.unavailable_backends())
    for name in names:
        backend = fastnn.get_backend(name)
        assert isinstance(backend, NumpyBackend) and backend.name == name
        assert fastnn.get_backend(name) is backend  # one instance per backend


def test_installed_fast_backends_load():
    """numba is a dependency, and the C extension is built in this tree."""
    assert "numba" in fastnn.available_backends(), fastnn.unavailable_backends()
    built = list((Path(fastnn.__file__).parent).glob("_ckernels*"))
    assert ("c" in fastnn.available_backends()) == bool(built), fastnn.unavailable_backends()


def test_default_is_first_available():
    assert fastnn.get_backend() is fastnn.get_backend(fastnn.available_backends()[0])
    assert fastnn.get_backend(None) is fastnn.get_backend()


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="nope") as info:
        fastnn.get_backend("nope")
    for name in BACKENDS:
        assert repr(name) in str(info.value)
    with pytest.raises(TypeError, match="backend"):
        fastnn.get_backend(3)


# ------------------------------------------------------------------ selection
def test_set_backend():
    numpy_backend = fastnn.get_backend("numpy")
    assert fastnn.set_backend("numpy") is numpy_backend
    assert fastnn.get_backend() is numpy_backend
    with pytest.raises(ValueError, match="nope"):
        fastnn.set_backend("nope")
    assert fastnn.get_backend() is numpy_backend  # a rejected name changes nothing
    last = fastnn.available_backends()[0]
    fastnn.set_backend(fastnn.get_backend(last))  # a backend object is accepted too
    assert fastnn.get_backend() is fastnn.get_backend(last)


def test_use_backend_restores_previous():
    names = fastnn.available_backends()
    default = fastnn.get_backend()
    with fastnn.use_backend("numpy") as backend:
        assert backend is fastnn.get_backend("numpy") is fastnn.get_backend()
        with fastnn.use_backend(names[0]):
            assert fastnn.get_backend() is fastnn.get_backend(names[0])
        assert fastnn.get_backend() is backend
    assert fastnn.get_backend() is default
    fastnn.set_backend(names[0])
    with fastnn.use_backend("numpy"):
        pass
    assert fastnn.get_backend() is fastnn.get_backend(names[0])


def test_use_backend_restores_previous_after_exception():
    fastnn.set_backend(fastnn.available_backends()[0])
    previous = fastnn.get_backend()
    with pytest.raises(KeyError):
        with fastnn.use_backend("numpy"):
            raise KeyError("inside the block")
    assert fastnn.get_backend() is previous
    with pytest.raises(ValueError, match="nope"):
        with fastnn.use_backend("nope"):
            pass
    assert fastnn.get_backend() is previous


def test_environment_variable_in_process(monkeypatch):
    monkeypatch.setenv("FASTNN_BACKEND", "numpy")
    assert fastnn.get_backend() is fastnn.get_backend("numpy")
    with fastnn.use_backend(fastnn.available_backends()[0]):  # an explicit choice wins
        assert fastnn.get_backend() is fastnn.get_backend(fastnn.available_backends()[0])
    monkeypatch.setenv("FASTNN_BACKEND", "")  # empty means unset
    assert fastnn.get_backend() is fastnn.get_backend(fastnn.available_backends()[0])


def test_environment_variable_in_subprocess():
    code = "import fastnn; print(fastnn.get_backend().name)"
    for name in fastnn.available_backends():
        done = run_python(code, FASTNN_BACKEND=name)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [name]
    done = run_python(code, FASTNN_BACKEND="nope")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError") and "FASTNN_BACKEND='nope'" in last and "'numpy'" in last


# -------------------------------------------------------------------- threads
@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_set_num_threads_rejects(bad):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        fastnn.set_num_threads(bad)


def blas_threads():
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert counts, "no BLAS library found by threadpoolctl"
    return counts


def test_set_num_threads_applies(monkeypatch):
    import numba

    monkeypatch.setattr(fastnn.backends, "_num_threads", fastnn.backends._num_threads)
    before = max(blas_threads())
    numba_before = numba.get_num_threads()
    names = fastnn.available_backends()  # load every backend first
    try:
        for n in (1, 2):
            fastnn.set_num_threads(n)
            assert blas_threads() == [n] * len(blas_threads())
            if "numba" in names:
                assert numba.get_num_threads() == min(n, numba.config.NUMBA_NUM_THREADS)
            if "c" in names:
                from fastnn.backends.c_backend import lib
                assert lib.fastnn_get_num_threads() == n
    finally:
        fastnn.set_num_threads(before)
        numba.set_num_threads(numba_before)


def test_set_num_threads_reaches_backends_loaded_later():
    done = run_python("""
        import sys, fastnn
        assert "numba" not in sys.modules  # importing fastnn loads no fast backend
        fastnn.set_num_threads(1)
        names = fastnn.available_backends()
        import numba
        print(numba.get_num_threads())
        if "c" in names:
            from fastnn.backends.c_backend import lib
            print(lib.fastnn_get_num_threads())
    """)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {"1"}


# --------------------------------------------------------------- kernel owners
@pytest.mark.parametrize("name", fastnn.available_backends())
def test_kernel_owners(name):
    backend = fastnn.get_backend(name)
    owners = fastnn.kernel_owners(name)
    assert list(owners) == list(KERNELS)
    assert fastnn.kernel_owners(backend) == owners
    for kernel, owner in owners.items():
        overridden = getattr(type(backend), "_" + kernel) is not getattr(NumpyBackend, "_" + kernel)
        assert owner == (name if overridden else "numpy"), kernel


def test_kernel_owners_unknown_backend():
    with pytest.raises(ValueError, match="nope"):
        fastnn.kernel_owners("nope")


# ------------------------------------------------------- a backend that fails
HIDE_FAST_BACKENDS = """
    import importlib, json, os, pkgutil, sys
    # what an install without Numba and without a compiler looks like
    sys.modules["numba"] = None
    sys.modules["fastnn._ckernels"] = None
    import numpy as np
    import fastnn

    result = {"available": fastnn.available_backends(),
              "unavailable": fastnn.unavailable_backends(), "errors": {}}
    for name in ("numba", "c"):
        try:
            fastnn.get_backend(name)
        except Exception as exc:
            result["errors"][name] = [type(exc).__name__, str(exc)]
    result["default"] = fastnn.get_backend().name
    loss, grad = fastnn.get_backend().softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 2]))
    result["loss"] = loss
    os.environ["FASTNN_BACKEND"] = "numba"
    try:
        fastnn.get_backend()
    except Exception as exc:
        result["errors"]["env"] = [type(exc).__name__, str(exc)]
    # every public module of the package imports without the fast backends, except
    # those backends themselves and the command-line entry point (private modules,
    # _name, may belong to a backend or to the build)
    skip = {"fastnn.__main__", "fastnn.backends.numba_backend", "fastnn.backends.c_backend"}
    result["modules"] = []
    for module in pkgutil.walk_packages(fastnn.__path__, "fastnn."):
        private = any(part.startswith("_") for part in module.name.split("."))
        if module.name not in skip and not private:
            importlib.import_module(module.name)
            result["modules"].append(module.name)
    print(json.dumps(result))
"""


def test_missing_fast_backends_are_absent_with_reason_and_fix():
    done = run_python(HIDE_FAST_BACKENDS)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["available"] == ["numpy"]
    assert set(result["unavailable"]) == {"numba", "c"}
    assert result["default"] == "numpy"
    assert result["loss"] == pytest.approx(np.log(3), rel=1e-12)
    # the reason is the import error (ModuleNotFoundError is an ImportError)
    for name, reason, fix in [("numba", "Error: import of numba halted", "pip install numba"),
                              ("c", "Error: import of fastnn._ckernels halted", "pip install")]:
        kind, message = result["errors"][name]
        assert kind == "BackendUnavailableError"
        assert f"backend {name!r} is not available" in message
        assert reason in message and fix in message
        assert "Available: ['numpy']" in message
        assert fix in result["unavailable"][name]
    assert result["errors"]["env"][0] == "BackendUnavailableError"
    assert "FASTNN_BACKEND='numba'" in result["errors"]["env"][1]
    assert {"fastnn.backends.reference", "fastnn.cli"} <= set(result["modules"])

