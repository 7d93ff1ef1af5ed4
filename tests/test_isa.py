"""The C kernels' instruction-set paths (csrc/isa.h): the one chosen for this CPU,
the choice forced lower by FASTNN_C_ISA or set_isa, and the equivalence
catalogue run again under every lower path this machine can execute (the
highest runs in test_equivalence.py)."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest
from catalogue import CATALOGUE
from test_equivalence import test_gelu_accuracy as check_gelu_accuracy
from test_equivalence import test_matches_reference as check_matches_reference

import fastnn

pytestmark = pytest.mark.skipif("c" not in fastnn.available_backends(),
                                reason="the C extension is not built here")

if "c" in fastnn.available_backends():
    from fastnn.backends import c_backend

    LOWER_ISAS = list(c_backend.supported_isas()[:-1])
else:
    LOWER_ISAS = []


def cpu_flags():
    """The CPU's feature flags as Linux reports them (/proc/cpuinfo)."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def expected_isa(flags):
    """The instruction set the kernels should run with these CPU flags: the ISA
    levels x86-64-v4 (AVX-512 F, BW, CD, DQ, VL) and x86-64-v3 (AVX2, FMA, BMI1/2,
    F16C, LZCNT (abm), MOVBE)."""
    v3 = {"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "abm", "movbe"}
    v4 = v3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
    return "avx512" if v4 <= flags else "avx2" if v3 <= flags else "generic"


@pytest.mark.skipif(platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"),
                    reason="reads the x86-64 flags of Linux's /proc/cpuinfo")
def test_the_highest_isa_of_this_cpu_is_chosen():
    want = expected_isa(cpu_flags())
    if os.environ.get(c_backend.ISA_ENV):
        pytest.skip(f"{c_backend.ISA_ENV} is set in this environment")
    assert c_backend.supported_isas()[-1] == want
    assert fastnn.get_backend("c").isa == want


def run_python(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("FASTNN_BACKEND", c_backend.ISA_ENV)}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=120)


def test_environment_selects_each_supported_isa():
    """FASTNN_C_ISA, read at load, selects the path; every kernel then runs it
    or a lower one (its cap), and the highest path by default."""
    code = """
        import fastnn
        from fastnn.backends import c_backend
        print(fastnn.get_backend("c").isa, c_backend.kernel_isa("adam_step_f32"))
    """
    for isa in c_backend.supported_isas():
        done = run_python(code, FASTNN_C_ISA=isa)
        assert done.returncode == 0, done.stderr
        chosen, adam = done.stdout.split()
        assert chosen == isa
        assert c_backend.ISAS.index(adam) <= c_backend.ISAS.index(isa)
    done = run_python(code)
    assert done.stdout.split()[0] == c_backend.supported_isas()[-1]


def test_environment_with_an_unknown_isa_says_why_c_is_missing():
    code = "import fastnn; print(fastnn.unavailable_backends()['c'])"
    done = run_python(code, FASTNN_C_ISA="avx1024")
    assert done.returncode == 0, done.stderr
    assert "FASTNN_C_ISA" in done.stdout and "avx1024" in done.stdout


def test_set_isa_checks_its_argument_and_restores():
    before = c_backend.get_isa()
    with pytest.raises(ValueError, match="isa must be one of"):
        c_backend.set_isa("sse9")
    unsupported = [isa for isa in c_backend.ISAS if isa not in c_backend.supported_isas()]
    for isa in unsupported:
        with pytest.raises(ValueError, match="does not run here"):
            c_backend.set_isa(isa)
    for isa in c_backend.supported_isas():
        with c_backend.use_isa(isa):
            assert fastnn.get_backend("c").isa == isa
            assert c_backend.kernel_isa("sgd_step_f64") in c_backend.ISAS[:c_backend.ISAS.index(isa) + 1]
        assert c_backend.get_isa() == before
    with pytest.raises(ValueError, match="not a C kernel"):
        c_backend.kernel_isa("fastnn_set_num_threads")


@pytest.mark.parametrize("isa", LOWER_ISAS)
@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_matches_reference_on_lower_isa(case, isa, dtype):
    with c_backend.use_isa(isa):
        check_matches_reference(case, "c", dtype)


@pytest.mark.parametrize("isa", LOWER_ISAS)
def test_gelu_accuracy_on_lower_isa(isa, dtype):
    """gelu's float polynomial has a path with FMA instructions (AVX2, AVX-512)
    and one without (generic): each within the same bounds."""
    with c_backend.use_isa(isa):
        check_gelu_accuracy("c", dtype)


def test_info_reports_the_isa():
    code = "from fastnn.cli import main; main(['info'])"
    for isa in c_backend.supported_isas():
        done = run_python(code, FASTNN_C_ISA=isa)
        assert done.returncode == 0, done.stderr
        assert f"C kernels: {isa} code" in done.stdout


def test_every_kernel_function_is_dispatched():
    """The build parses every function of the header, and each one a kernel file
    defines runs through the dispatch (the thread and ISA settings, compiled once,
    and the setters called on every variant are not kernels)."""
    from test_build import HEADER, _build_ckernels, declared_functions

    cdef = _build_ckernels.read_cdef(HEADER)
    names = [name for name, _, _ in _build_ckernels.prototypes(cdef)]
    assert set(names) == declared_functions(cdef)
    shared = set().union(*(_build_ckernels.defined_in(_build_ckernels.CSRC / f, names)
                           for f in _build_ckernels.SHARED_FILES))
    assert "fastnn_set_num_threads" in shared and "fastnn_set_isa" in shared
    for name in names:
        if name in shared or name.startswith("fastnn_set_"):
            with pytest.raises(ValueError):
                c_backend.kernel_isa(name)
        else:
            cap = "avx512" if _build_ckernels.isa_cap(name) == 2 else "avx2"
            highest = c_backend.supported_isas()[-1]
            assert c_backend.kernel_isa(name) == min(cap, highest, key=c_backend.ISAS.index), name
