"""The documentation: the Sphinx site in docs/ builds with warnings as errors and
documents every class and function the public modules export, and every
``>>>`` example in fastnn's docstrings runs."""

import doctest
import importlib
import re
import runpy
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = ["fastnn", "fastnn.nn", "fastnn.testing", "fastnn.tune", "fastnn.onnx"]


def documented_names(objects_inv):
    # objects.inv: four header lines, then zlib-compressed lines "name domain:role priority uri dispname"
    body = zlib.decompress(objects_inv.read_bytes().split(b"\n", 4)[4]).decode()
    return {line.split()[0] for line in body.splitlines()}


def test_docs_build_without_warnings_and_cover_the_public_api(tmp_path):
    for needed in ("sphinx", "numpydoc", "myst_parser"):
        pytest.importorskip(needed, reason=f"the docs build needs {needed}: pip install '.[docs]'")
    pytest.importorskip("onnx", reason="the API reference documents fastnn.onnx, which needs onnx")
    out = tmp_path / "html"
    run = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                          str(ROOT / "docs"), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr

    names = documented_names(out / "objects.inv")
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            # classes, functions and submodules; constants (RTOL, COMPLETED, ...) are described where used
            if callable(obj) or type(obj) is type(module):
                if f"{module_name}.{name}" not in names:
                    missing.append(f"{module_name}.{name}")
    assert not missing, f"exported but not in the API reference: {missing}"
    # the user guide holds the README's sections
    layers = (out / "guide" / "layers.html").read_text()
    assert "Custom layers" in layers and "Callbacks, metrics and labels" in layers


def modules_with_examples():
    for path in sorted((ROOT / "fastnn").rglob("*.py")):
        if ">>>" in path.read_text():
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("module_name", list(modules_with_examples()))
def test_docstring_examples_run(module_name, tmp_path, monkeypatch):
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an optional dependency (onnx, optuna) is absent
        pytest.skip(f"{module_name} cannot be imported here: {exc}")
    monkeypatch.chdir(tmp_path)  # examples may write files
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in doctest.DocTestFinder().find(module, module_name) if t.examples]
    assert tests
    report = []
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def test_exported_functions_and_classes_have_examples():
    """numpydoc's checks of the docs build leave out Examples (a method or property
    needs none) and a docstring of its own (an override shows its base's); every
    function and class a public module exports has both, except those
    docs/conf.py excludes from validation."""
    numpydoc_validate = pytest.importorskip("numpydoc.validate", reason="needs numpydoc")
    from test_typing import public_objects

    excluded = runpy.run_path(str(ROOT / "docs" / "conf.py"))["numpydoc_validation_exclude"]
    checked, missing = 0, []
    for name, obj in public_objects().items():
        if any(re.search(pattern, name) for pattern in excluded):
            continue
        checked += 1
        errors = numpydoc_validate.validate(f"{obj.__module__}.{obj.__qualname__}")["errors"]
        if any(code in ("EX01", "GL08") for code, _ in errors):
            missing.append(name)
    assert checked >= 15  # the exclusions leave the converted API to check
    assert not missing, f"exported without a docstring with an Examples section: {missing}"
