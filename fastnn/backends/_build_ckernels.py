"""cffi build of fastnn's C kernels (csrc/) into the extension ``fastnn._ckernels``.

setup.py names this file in ``cffi_modules``. The cdef is csrc/fastnn.h itself with
its preprocessor lines removed, so the declarations exist once.
"""

import os
import sys
from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parents[2] / "csrc"


def read_cdef(header: Path) -> str:
    lines = header.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def compile_flags():
    """-O3 with IEEE semantics kept (no -ffast-math: NaN and infinity handling and
    log-sum-exp stability are relied on) and no FMA contraction (the kernels follow
    the reference's order of operations, roundings included; the activations
    built on fastnn's own exp, expm1, log1p and erfc polynomials turn it on for
    their loops, csrc/activations_impl.h). No -march=native:
    the extension must run on any x86-64; the hot loops are also compiled for
    AVX2+FMA and chosen at run time (csrc/common.h). FASTNN_CFLAGS adds flags
    (e.g. a sanitizer build)."""
    flags = ["-O3", "-std=c99", "-fno-math-errno", "-fno-trapping-math"]
    if sys.platform != "win32":
        # OpenMP's simd loops only: the threads are fastnn's own (csrc/threads.c)
        flags += ["-fopenmp-simd", "-pthread"]
    flags += os.environ.get("FASTNN_CFLAGS", "").split()
    return flags


def link_flags():
    flags = ["-pthread"] if sys.platform != "win32" else []
    return flags + os.environ.get("FASTNN_LDFLAGS", "").split()


ffibuilder = FFI()
ffibuilder.cdef(read_cdef(CSRC / "fastnn.h"))
ffibuilder.set_source(
    "fastnn._ckernels",
    '#include "fastnn.h"',
    sources=[str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)
             for p in sorted(CSRC.glob("*.c"))],
    include_dirs=[str(CSRC)],
    depends=[str(p) for p in sorted(CSRC.glob("*.h"))],  # rebuild when a header changes
    extra_compile_args=compile_flags(),
    extra_link_args=link_flags(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
