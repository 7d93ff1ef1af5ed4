"""The typed public API: mypy (configured in pyproject.toml) passes on the package,
and every public function, method and class of the public modules is annotated,
so a new one cannot silently lose its annotations."""

import importlib
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = ["fastnn", "fastnn.nn", "fastnn.testing", "fastnn.tune", "fastnn.onnx"]
# methods named with an underscore are private, except these
PUBLIC_DUNDERS = ("__init__", "__call__")


def public_objects():
    """{qualified name: class or function} of every module's __all__; an exported
    submodule (fastnn.nn.metrics) contributes its own __all__."""
    found = {}
    for module_name in PUBLIC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # fastnn.onnx without onnx: mypy still checks its source
            continue
        for name in module.__all__:
            obj = getattr(module, name)
            owners = [(f"{module_name}.{name}", obj)]
            if inspect.ismodule(obj):
                owners = [(f"{obj.__name__}.{n}", getattr(obj, n)) for n in obj.__all__]
            for qualname, member in owners:
                if inspect.isclass(member) or inspect.isfunction(member):
                    found.setdefault(qualname, member)
    return found


def public_callables():
    """[(name, function)] of the public functions, and of the public methods and
    properties (getter and setter) that the public classes define in fastnn or
    inherit from a fastnn base class."""
    out = {}
    for qualname, obj in public_objects().items():
        if inspect.isfunction(obj):
            out[id(obj)] = (qualname, obj)
            continue
        for klass in obj.__mro__:
            if not klass.__module__.startswith("fastnn"):
                continue
            for name, value in vars(klass).items():
                if name.startswith("_") and name not in PUBLIC_DUNDERS:
                    continue
                if isinstance(value, property):
                    functions = [f for f in (value.fget, value.fset) if f is not None]
                else:
                    functions = [getattr(value, "__func__", value)]
                for f in functions:
                    if inspect.isfunction(f):
                        out.setdefault(id(f), (f"{qualname}.{name}", f))
    return sorted(out.values(), key=lambda item: item[0])


def missing_annotations(function):
    signature = inspect.signature(function)
    missing = [p.name for p in signature.parameters.values()
               if p.annotation is inspect.Parameter.empty and p.name not in ("self", "cls")]
    if signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def test_every_public_callable_is_annotated():
    callables = public_callables()
    assert len(callables) > 300  # the walk found the API (every module's classes and methods)
    unannotated = {name: missing for name, f in callables if (missing := missing_annotations(f))}
    assert not unannotated, f"public callables without annotations (parameter or return): {unannotated}"


def test_the_check_sees_a_missing_annotation():
    def half_annotated(x: int, y):  # the case the check exists for
        return x

    assert missing_annotations(half_annotated) == ["y", "return"]


def test_mypy_passes_on_the_package():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed: pip install '.[test]'")
    # settings and files from pyproject.toml; the cache (.mypy_cache) makes a second run fast
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
