"""The OpenBLAS core type report and its warning, fed values: the tests never
change OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE, in this process or a child."""

import sys

import pytest

import fastnn.benchmarks  # noqa: F401  (loads the module below)

machine = sys.modules["fastnn.benchmarks.machine"]  # the package exports a function of that name

AVX512 = ["sse4_2", "avx", "avx2", "fma", "avx512f"]
AVX2 = ["sse4_2", "avx", "avx2", "fma"]


@pytest.mark.parametrize("architecture, flags, names", [
    ("Haswell", AVX512, ("Haswell", "AVX2", "AVX-512")),
    ("Zen", AVX512, ("Zen", "AVX2", "AVX-512")),
    ("SandyBridge", AVX2, ("SandyBridge", "AVX", "AVX2")),
    ("Prescott", ["sse4_2", "avx"], ("Prescott", "SSE", "AVX")),
])
def test_an_override_below_the_cpu_warns(architecture, flags, names):
    warning = machine.openblas_core_warning(architecture, flags, {"OPENBLAS_CORETYPE": architecture})
    assert warning is not None
    assert f"OPENBLAS_CORETYPE={architecture}" in warning
    for name in names:
        assert name in warning


@pytest.mark.parametrize("architecture, flags, environ", [
    ("Haswell", AVX512, {}),  # not pinned: OpenBLAS chose (an old one may not know the CPU)
    ("Haswell", AVX512, {"OPENBLAS_CORETYPE": ""}),
    ("Haswell", AVX512, {"OPENBLAS_L2_SIZE": "1048576"}),
    ("SkylakeX", AVX512, {"OPENBLAS_CORETYPE": "SkylakeX"}),  # pinned to what the CPU runs
    ("Haswell", AVX2, {"OPENBLAS_CORETYPE": "Haswell"}),
    ("Zen", AVX2, {"OPENBLAS_CORETYPE": "Zen"}),
    ("SkylakeX", AVX2, {"OPENBLAS_CORETYPE": "SkylakeX"}),  # above: OpenBLAS's own business
    ("SomeFutureCore", AVX512, {"OPENBLAS_CORETYPE": "SomeFutureCore"}),  # unranked
])
def test_no_warning_without_an_override_below_the_cpu(architecture, flags, environ):
    assert machine.openblas_core_warning(architecture, flags, environ) is None


def test_cpu_simd_level_needs_fma_beside_avx2():
    assert machine.cpu_simd_level(AVX512) == 4
    assert machine.cpu_simd_level(AVX2) == 3
    assert machine.cpu_simd_level(["avx", "avx2"]) == 2
    assert machine.cpu_simd_level([]) == 1


def test_report_names_the_core_type_in_use_and_the_overrides(monkeypatch):
    pools = [{"internal_api": "openblas", "version": "0.3.31", "architecture": "Haswell",
              "filepath": "/x/libopenblas.so", "num_threads": 2, "threading_layer": "pthreads"},
             {"internal_api": "mkl", "version": "2025", "architecture": None, "filepath": "/x/mkl.so",
              "num_threads": 2, "threading_layer": "intel"}]
    monkeypatch.setattr(machine, "blas_info", lambda: pools)
    monkeypatch.setattr(machine, "cpu_flags", lambda: AVX512)
    lines, warnings = machine.openblas_report({"OPENBLAS_CORETYPE": "Haswell"})
    assert lines == ["OpenBLAS 0.3.31 core type Haswell (OPENBLAS_CORETYPE=Haswell, "
                     "OPENBLAS_L2_SIZE unset): libopenblas.so"]
    assert len(warnings) == 1 and "Haswell" in warnings[0]
    lines, warnings = machine.openblas_report({})
    assert "OPENBLAS_CORETYPE unset" in lines[0] and warnings == []
