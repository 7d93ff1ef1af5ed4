"""cffi build of fastnn's C kernels (csrc/) into the extension ``fastnn._ckernels``.

setup.py names this file in ``cffi_modules``. The cdef is csrc/fastnn.h itself with
its preprocessor lines removed, so the declarations exist once.

Each kernel file is compiled once per instruction set (csrc/isa.h): this script
writes, under build/isa/, a wrapper per file and instruction set that renames the
file's API functions and sets its target, and the dispatch file that defines the
API names over the variants.
"""

import os
import re
import sys
from pathlib import Path

import pycparser
from cffi import FFI
from pycparser import c_ast, c_generator

CSRC = Path(__file__).resolve().parents[2] / "csrc"
GENERATED = CSRC.parent / "build" / "isa"

# instruction set (enum fastnn_isa order) -> (name suffix, GCC target); the AVX-512
# variant asks for 512-bit vectors, which GCC's generic tuning would not use
ISAS = [("generic", None), ("avx2", "arch=x86-64-v3"),
        ("avx512", "arch=x86-64-v4,prefer-vector-width=512")]
# files compiled once, for the generic target: the thread runtime, the dispatch state
# and the BLAS entry points
SHARED_FILES = ("isa.c", "threads.c", "blas.c")
# The functions whose AVX-512 variant runs (name before _f32/_f64); the others run
# at most their AVX2 one. Kept where it paid, measured by bench/isa_paths.py on a
# Zen 4 (2 threads, float32 unless said; time with AVX-512 / with AVX2):
# logistic, tanh, gelu, elu, softplus forward + backward 0.41-0.77 (256x256 and
# 4096x1024, float64 too; relu 0.94-0.99), sigmoid BCE 0.67-0.72, softmax
# cross-entropy 0.99 (float64 0.94), dropout 0.38-0.45, Adam in cache (64K
# parameters, float32 and float64) 0.94-0.96. Not kept: batch norm (1.00 in
# cache, 0.83-1.18 from memory, within the noise of the shared machine), SGD
# with momentum (1.00), RMSprop (0.97-0.98); the rest were not measured.
# The recurrent kernels' gate passes (sigmoid and tanh in double): the LSTM
# forward's pass 5.7 -> 3.4 ms for 64 x 50 rows of 128 units (one core).
AVX512_FUNCTIONS = ("bias_activation_forward", "activation_backward", "dense_forward",
                    "dense_backward", "sigmoid_binary_cross_entropy", "softmax_cross_entropy_labels",
                    "softmax_cross_entropy_probs", "dropout",
                    "adam_step", "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward",
                    "gru_forward", "gru_backward")


def isa_cap(function):
    base = re.sub(r"_f(32|64)$", "", function)
    if os.environ.get("FASTNN_ISA_UNCAPPED"):  # every function at AVX-512, to measure them all
        return 2
    return 2 if base in AVX512_FUNCTIONS else 1


def read_cdef(header: Path) -> str:
    lines = header.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def compile_flags():
    """-O3 with IEEE semantics kept (no -ffast-math: NaN and infinity handling and
    log-sum-exp stability are relied on) and no FMA contraction (the kernels follow
    the reference's order of operations, roundings included; the activations
    built on fastnn's own exp, expm1, log1p and erfc polynomials turn it on for
    their loops, csrc/activations_impl.h). No -march=native:
    the extension must run on any x86-64; the kernel files are also compiled for
    AVX2+FMA and AVX-512 and chosen at run time (csrc/isa.h). FASTNN_CFLAGS adds
    flags (e.g. a sanitizer build, or -DFASTNN_GENERIC_ONLY for the generic code
    alone)."""
    flags = ["-O3", "-std=c99", "-fno-math-errno", "-fno-trapping-math"]
    if sys.platform != "win32":
        # OpenMP's simd loops only: the threads are fastnn's own (csrc/threads.c)
        flags += ["-fopenmp-simd", "-pthread"]
    flags += os.environ.get("FASTNN_CFLAGS", "").split()
    return flags


def link_flags():
    flags = ["-pthread"] if sys.platform != "win32" else []
    return flags + os.environ.get("FASTNN_LDFLAGS", "").split()


def prototypes(cdef):
    """[(name, declaration, parameter names)] of the functions a cdef declares,
    the declaration as C text (pycparser, which cffi parses with)."""
    typedefs = "".join(f"typedef int {u}int{b}_t;" for u in ("", "u") for b in (8, 16, 32, 64))
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", cdef, flags=re.S)  # pycparser takes no comments
    ast = pycparser.CParser().parse(typedefs + code)
    found = []
    for node in ast.ext:
        if isinstance(node, c_ast.Decl) and isinstance(node.type, c_ast.FuncDecl):
            params = node.type.args.params if node.type.args else []
            names = [q.name for q in params if q.name is not None]
            found.append((node.name, c_generator.CGenerator().visit(node), names))
    return found


def defined_in(path, names):
    """The names among `names` that a C file defines (a name, its parameter list, a brace)."""
    code = path.read_text()
    return {n for n in names if re.search(rf"\b{n}\s*\([^;{{}}]*\)\s*\{{", code)}


def write_if_changed(path, text):
    """Writes text to path unless it holds it already (keeps the build's timestamps)."""
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def generate_isa_sources(out=GENERATED):
    """Writes the per-instruction-set wrappers and the dispatch file into `out`;
    returns their paths. A function is dispatched when a kernel file (not one of
    SHARED_FILES) defines it; state the variants share lives in SHARED_FILES."""
    functions = prototypes(read_cdef(CSRC / "fastnn.h"))
    names = [name for name, _, _ in functions]
    shared = set().union(*(defined_in(CSRC / file, names) for file in SHARED_FILES))
    dispatched = [f for f in functions if f[0] not in shared]
    sources = []
    for path in sorted(CSRC.glob("*.c")):
        if path.name in SHARED_FILES:
            continue
        for suffix, target in ISAS:
            # renamed before fastnn.h is read: the header then declares the variant
            lines = [f"/* generated by fastnn/backends/_build_ckernels.py: csrc/{path.name} "
                     f"for the {suffix} instruction set */"]
            lines += [f"#define {name} {name}_{suffix}" for name, _, _ in dispatched]
            lines += ['#include "isa.h"']
            if target:
                lines += ["#if FASTNN_MULTI_ISA", f'#pragma GCC target("{target}")']
            lines += [f'#include "{path.name}"'] + (["#endif"] if target else [])
            sources.append(write_if_changed(out / f"{path.stem}_{suffix}.c", "\n".join(lines) + "\n"))
    lines = ["/* generated by fastnn/backends/_build_ckernels.py: the API functions, each",
             " * calling the variant of the selected instruction set (csrc/isa.h) */",
             '#include "isa.h"']
    for name, decl, _ in dispatched:
        for suffix, _ in ISAS:
            lines.append(re.sub(rf"\b{name}\(", f"{name}_{suffix}(", decl, count=1) + ";")
    for name, decl, params in dispatched:
        call = {suffix: f"{name}_{suffix}({', '.join(params)})" for suffix, _ in ISAS}
        lines.append(decl + " {")
        # a void function returns after the call, any other returns its result
        run = "{}; return;" if decl.startswith("void ") else "return {};"
        cap = isa_cap(name)
        lines += ["#if FASTNN_MULTI_ISA",
                  f"    int isa = fastnn_isa_selected < {cap} ? fastnn_isa_selected : {cap};",
                  "    if (isa == FASTNN_ISA_AVX512) { " + run.format(call["avx512"]) + " }",
                  "    if (isa == FASTNN_ISA_AVX2) { " + run.format(call["avx2"]) + " }",
                  "#endif", "    " + run.format(call["generic"]), "}"]
    kernels = [name for name, _, _ in dispatched]
    lines.append("const char *const fastnn_dispatched_names[] = {"
                 + ", ".join(f'"{name}"' for name in kernels) + "};")
    lines.append("const signed char fastnn_dispatched_caps[] = {"
                 + ", ".join(str(isa_cap(name)) for name in kernels) + "};")
    lines.append(f"const int fastnn_dispatched_count = {len(kernels)};")
    sources.append(write_if_changed(out / "dispatch.c", "\n".join(lines) + "\n"))
    return sources + [CSRC / f for f in SHARED_FILES]


def relative_to_cwd(p):
    return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)


ffibuilder = FFI()
ffibuilder.cdef(read_cdef(CSRC / "fastnn.h"))
ffibuilder.set_source(
    "fastnn._ckernels",
    '#include "fastnn.h"',
    sources=[relative_to_cwd(p) for p in generate_isa_sources()],
    include_dirs=[str(CSRC)],
    # rebuild when a header or a kernel file changes (the sources are the wrappers of build/isa)
    depends=[str(p) for p in sorted(CSRC.glob("*.h")) + sorted(CSRC.glob("*.c"))],
    extra_compile_args=compile_flags(),
    extra_link_args=link_flags(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
