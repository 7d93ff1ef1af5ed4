"""The build: csrc/fastnn.h is the one declaration of the C API, the source
distribution carries csrc/, and a wheel built from it has the C extension when
a compiler is present and installs without it (no 'c' backend) when not.

The builds run on a copy of the working tree, so they never write into it."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
from cffi import FFI

import fastnn

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
HEADER = CSRC / "fastnn.h"


def load_build_script():
    """The cffi build script of this source tree. It is loaded from its file, not
    imported from the installed package: it reads csrc/, which only the source
    tree has (an installed, non-editable fastnn has no csrc/ beside it)."""
    path = ROOT / "fastnn" / "backends" / "_build_ckernels.py"
    spec = importlib.util.spec_from_file_location("fastnn_build_ckernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_build_ckernels = load_build_script()
# not copied: version control, build products, caches, the compiled extension
# and the C file cffi generates next to it
IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o",
                                ".pytest_cache", ".benchmarks", ".ruff_cache", "_ckernels.c")


def declared_functions(cdef):
    """Names of the functions a cdef declares (comments removed, then every
    `name(`: the cdef holds prototypes only)."""
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", cdef, flags=re.S)
    return set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", code))


# ---------------------------------------------------------------- declarations
def test_the_build_reads_the_one_header():
    assert _build_ckernels.CSRC == CSRC
    cdef = _build_ckernels.read_cdef(HEADER)
    assert "#" not in cdef  # preprocessor lines dropped: cffi's parser does not take them
    FFI().cdef(cdef)  # plain C that cffi parses
    assert declared_functions(cdef)


@pytest.mark.skipif("c" not in fastnn.available_backends(), reason="the C extension is not built here")
def test_extension_exports_exactly_the_header():
    """Every function of the built extension is declared in csrc/fastnn.h, every
    declared function is built (an extension older than the header fails here:
    rebuild it with pip install -e .), and its other names (enum constants) are
    the header's."""
    from fastnn._ckernels import lib

    cdef = _build_ckernels.read_cdef(HEADER)
    functions = {name for name in dir(lib) if callable(getattr(lib, name))}
    assert functions == declared_functions(cdef)
    for name in set(dir(lib)) - functions:
        assert re.search(rf"\b{name}\b", cdef), name


def included(path):
    return re.findall(r'^\s*#\s*include\s+"([^"]+)"', path.read_text(), flags=re.M)


def test_every_c_file_sees_the_header():
    """Each .c file includes fastnn.h (directly or through csrc's own headers), so
    the compiler checks its definitions against the one declaration."""
    for c_file in sorted(CSRC.glob("*.c")):
        seen, todo = set(), [c_file]
        while todo:
            for name in included(todo.pop()):
                if name not in seen and (CSRC / name).exists():
                    seen.add(name)
                    todo.append(CSRC / name)
        assert "fastnn.h" in seen, c_file.name


def test_no_other_header_declares_the_api():
    api = declared_functions(_build_ckernels.read_cdef(HEADER))
    for header in sorted(set(CSRC.glob("*.h")) - {HEADER}):
        code = re.sub(r"/\*.*?\*/|//[^\n]*", "", header.read_text(), flags=re.S)
        prototypes = set(re.findall(r"\b([A-Za-z_]\w*)\s*\([^;{]*\)\s*;", code))
        assert not prototypes & api, (header.name, prototypes & api)


# --------------------------------------------------------------------- builds
def run(args, cwd, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("FASTNN_BACKEND", "PYTHONPATH")}
    full_env.update(env)
    done = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """The source distribution built from a copy of the working tree, through
    setuptools' PEP 517 hook (what `python -m build --sdist` calls)."""
    tmp = tmp_path_factory.mktemp("sdist")
    shutil.copytree(ROOT, tmp / "tree", ignore=IGNORE)
    code = "from setuptools import build_meta; print(build_meta.build_sdist('../dist'))"
    name = run([sys.executable, "-c", code], tmp / "tree").stdout.split()[-1]
    return tmp / "dist" / name


def test_sdist_carries_the_c_sources(sdist):
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    wanted = {f"csrc/{p.name}" for p in CSRC.iterdir() if p.suffix in (".c", ".h")}
    wanted |= {"setup.py", "pyproject.toml", "README.md", "fastnn/backends/_build_ckernels.py"}
    assert "csrc/fastnn.h" in wanted and any(n.endswith(".c") for n in wanted)
    assert wanted <= names, sorted(wanted - names)


def build_wheel(sdist, tmp, **env):
    """Unpack the sdist, build a wheel from it with pip (no network, no isolated
    build environment), unpack the wheel; returns (wheel file names, unpacked dir)."""
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (source,) = [p for p in tmp.iterdir() if p.is_dir()]
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp / "wheel")], source, **env)
    (wheel,) = (tmp / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp / "site")
        names = set(zf.namelist())
    python_files = {p.relative_to(source).as_posix() for p in (source / "fastnn").rglob("*.py")}
    assert python_files <= names, sorted(python_files - names)
    return names, tmp / "site"


def backends_of(site):
    """available_backends() and unavailable_backends() of fastnn imported from `site`."""
    code = textwrap.dedent("""
        import sys
        # an editable install of the working tree would supply what the wheel lacks
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in f.__module__]
        import fastnn, numpy as np
        print(fastnn.__file__)
        print(" ".join(fastnn.available_backends()))
        print(fastnn.unavailable_backends().get("c", ""))
        backend = fastnn.get_backend()
        x = np.linspace(-1, 1, 11)
        assert np.array_equal(backend.activation_forward(x, "relu"), np.maximum(x, 0))
    """)
    out = run([sys.executable, "-c", code], site, PYTHONPATH=str(site)).stdout.splitlines()
    assert Path(out[0]).is_relative_to(site)  # the unpacked wheel, not the working tree
    return out[1].split(), out[2]


def is_extension(name):
    return name.startswith("fastnn/_ckernels") and name.endswith((".so", ".pyd"))


def test_wheel_with_compiler_has_the_c_backend(sdist, tmp_path):
    names, site = build_wheel(sdist, tmp_path)
    assert any(is_extension(n) for n in names), sorted(names)
    assert "fastnn/py.typed" in names  # the annotations reach type checkers (PEP 561)
    available, _ = backends_of(site)
    assert available[0] == "c"


def test_wheel_without_compiler_installs_without_the_c_backend(sdist, tmp_path):
    names, site = build_wheel(sdist, tmp_path, CC="false")
    assert not any(is_extension(n) for n in names), sorted(names)
    available, why_not_c = backends_of(site)
    assert "c" not in available and available[-1] == "numpy"
    assert "_ckernels" in why_not_c and "pip install" in why_not_c
