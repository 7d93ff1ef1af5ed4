"""The C kernels' instruction-set paths against each other: each kernel timed
under each path this CPU runs, the paths in turns in one process (A, B, A, B,
...), the minimum of the repeats kept. Every function must be built at its
AVX-512 variant for this comparison (a build's cap would run AVX2 code for both):

    FASTNN_ISA_UNCAPPED=1 python setup.py build_ext --inplace
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/isa_paths.py [name ...]

ISA_PATHS_SECONDS sets the time spent on each kernel and size (0.6 s).
It prints, per kernel and size, the best time of each path and the ratio of
each to the first (AVX2). The build's table of functions kept at AVX-512
(AVX512_FUNCTIONS in fastnn/backends/_build_ckernels.py) follows these figures.
"""

import os
import sys
import time

import numpy as np

import fastnn
from fastnn.backends import c_backend

M = 1 << 20


def rand(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def activation_case(act, shape, dtype=np.float32):
    def make(b):
        x = rand(shape, dtype)
        y, dy, dz = np.empty_like(x), rand(shape, dtype, 1), np.empty_like(x)

        def run():
            b.activation_forward(x, act, out=y)
            b.activation_backward(dy, y, act, x=x, out=dz)
        return run
    return make


def softmax_ce_case(shape, dtype=np.float32):
    def make(b):
        logits = rand(shape, dtype) * 3
        labels = np.random.default_rng(2).integers(0, shape[1], shape[0])
        grad = np.empty_like(logits)
        return lambda: b.softmax_cross_entropy(logits, labels, grad=grad)
    return make


def bce_case(shape, dtype=np.float32):
    def make(b):
        logits = rand(shape, dtype) * 3
        t = (np.random.default_rng(3).random(shape) < 0.5).astype(dtype)
        grad = np.empty_like(logits)
        return lambda: b.sigmoid_binary_cross_entropy(logits, t, grad=grad)
    return make


def batchnorm_case(shape, dtype=np.float32):
    def make(b):
        x, dy = rand(shape, dtype), rand(shape, dtype, 1)
        c = shape[1]
        gamma, beta = np.ones(c, dtype), np.zeros(c, dtype)
        rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
        y, dx = np.empty_like(x), np.empty_like(x)
        dgamma, dbeta = np.empty(c, dtype), np.empty(c, dtype)

        def run():
            _, cache = b.batchnorm_forward(x, gamma, beta, rm, rv, True, out=y)
            b.batchnorm_backward(dy, cache, dx=dx, dgamma=dgamma, dbeta=dbeta)
        return run
    return make


def step_case(kernel, n, dtype=np.float32, **options):
    def make(b):
        p, g = rand(n, dtype), rand(n, dtype, 1) * 1e-2
        s = [np.zeros(n, dtype) for _ in range(2)]
        if kernel == "adam":
            return lambda: b.adam_step(p, g, s[0], s[1], 3, 1e-3, **options)
        if kernel == "sgd":
            return lambda: b.sgd_step(p, g, s[0], 1e-3, momentum=0.9, **options)
        return lambda: b.rmsprop_step(p, g, s[0], 1e-3, **options)
    return make


def dropout_case(shape, dtype=np.float32):
    def make(b):
        x = rand(shape, dtype)
        y = np.empty_like(x)
        return lambda: b.dropout_forward(x, 0.3, 7, out=y)
    return make


CASES = {
    # name: (what it runs, [(size label, make)])
    "softmax_ce": [("8192x1000", softmax_ce_case((8192, 1000))), ("256x10", softmax_ce_case((256, 10))),
                   ("512x1000 f64", softmax_ce_case((512, 1000), np.float64))],
    "bce": [("4096x256", bce_case((4096, 256))), ("256x100", bce_case((256, 100)))],
    **{act: [("4096x1024", activation_case(act, (4096, 1024))), ("256x256", activation_case(act, (256, 256))),
             ("256x256 f64", activation_case(act, (256, 256), np.float64))]
       for act in ("logistic", "tanh", "gelu", "elu", "softplus", "relu")},
    "batchnorm": [("4096x1024", batchnorm_case((4096, 1024))), ("256x512", batchnorm_case((256, 512))),
                  ("256x512 f64", batchnorm_case((256, 512), np.float64))],
    "adam": [("10M", step_case("adam", 10 * M)), ("64K", step_case("adam", 1 << 16)),
             ("64K f64", step_case("adam", 1 << 16, np.float64))],
    "adamw": [("10M", step_case("adam", 10 * M, weight_decay=1e-2, decoupled=True)),
              ("64K", step_case("adam", 1 << 16, weight_decay=1e-2, decoupled=True))],
    "sgd_momentum": [("10M", step_case("sgd", 10 * M)), ("64K", step_case("sgd", 1 << 16))],
    "rmsprop": [("10M", step_case("rmsprop", 10 * M)), ("64K", step_case("rmsprop", 1 << 16))],
    "dropout": [("4096x1024", dropout_case((4096, 1024))), ("256x256", dropout_case((256, 256)))],
}


SECONDS = float(os.environ.get("ISA_PATHS_SECONDS", 0.6))


def best_times(run, isas, seconds=SECONDS):
    """{isa: best time of run} with the paths in turns, about `seconds` in all."""
    best = dict.fromkeys(isas, float("inf"))
    for isa in isas:  # warm-up
        with c_backend.use_isa(isa):
            run()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for isa in isas:
            with c_backend.use_isa(isa):
                t0 = time.perf_counter()
                run()
                best[isa] = min(best[isa], time.perf_counter() - t0)
    return best


def main(names):
    b = fastnn.get_backend("c")
    isas = [isa for isa in ("avx2", "avx512", "generic") if isa in c_backend.supported_isas()]
    print(f"paths: {', '.join(isas)}; C threads {fastnn.backends.c_backend.lib.fastnn_get_num_threads()}")
    print(f"{'kernel':<14}{'size':<14}" + "".join(f"{isa:>11}" for isa in isas)
          + "".join(f"{isa + '/' + isas[0]:>16}" for isa in isas[1:]))
    for name in names or CASES:
        for label, make in CASES[name]:
            best = best_times(make(b), isas)
            print(f"{name:<14}{label:<14}" + "".join(f"{best[i] * 1e6:>9.1f}us" for i in isas)
                  + "".join(f"{best[i] / best[isas[0]]:>16.3f}" for i in isas[1:]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
