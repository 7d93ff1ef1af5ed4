"""Per-sample training time of the CNN benchmarks (fastnn.benchmarks: LeNet-5
and conv32-64, float32, batch 64, Adam, 28 x 28 x 1 images) on the C and numba
backends, beside the C backend's former convolution path (im2col, GEMMs
issued from Python with BLAS's threads, col2im: _gemm_conv.GemmConv), the
same GEMMs alone issued as the kernels issue them (per thread and tile,
fastnn.benchmarks._tiled_gemms) and as one NumPy GEMM per layer
(workloads.cnn_gemms), and PyTorch in a child process that never imports
fastnn (runner.time_apart).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/cnn_tiles.py
    python bench/cnn_tiles.py --images 256 --rounds 9 --tile-kb 128,512,2048
    python bench/cnn_tiles.py --threads 1 --no-torch

Each round times every variant once, in turns; the figures are minima over the
rounds (one epoch of --images images each). --tile-kb times the C kernels and
the tiled GEMMs at each THREAD_TILE_BYTES.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fastnn  # noqa: E402
from fastnn.backends import _gemm_conv  # noqa: E402
from fastnn.benchmarks import runner  # noqa: E402
from fastnn.benchmarks._tiled_gemms import cnn_tiled_gemms  # noqa: E402
from fastnn.benchmarks.cases import cnn_model, get_benchmark  # noqa: E402
from fastnn.benchmarks.workloads import CNN_BATCH, CONVNET, LENET, cnn_gemms, cnn_setup  # noqa: E402

NETWORKS = {"cnn_lenet": LENET, "cnn_conv32_64": CONVNET}


def variants(layers, a, tile_sizes):
    """{name: one epoch}: the backends' fits, the former C path, the GEMMs alone."""
    def fit(model, tile=None):
        def epoch():
            if tile is not None:
                _gemm_conv.THREAD_TILE_BYTES = tile
            model.fit(a["X"], a["y"], epochs=1, batch_size=CNN_BATCH, verbose=0)
        return epoch

    def former(model):
        from fastnn.backends.c_backend import CBackend

        def epoch():
            kernels = CBackend._conv2d_forward, CBackend._conv2d_backward
            CBackend._conv2d_forward = _gemm_conv.GemmConv._conv2d_forward
            CBackend._conv2d_backward = _gemm_conv.GemmConv._conv2d_backward
            try:
                model.fit(a["X"], a["y"], epochs=1, batch_size=CNN_BATCH, verbose=0)
            finally:
                CBackend._conv2d_forward, CBackend._conv2d_backward = kernels
        return epoch

    def tiled(tile):
        _gemm_conv.THREAD_TILE_BYTES = tile
        gemms = cnn_tiled_gemms(layers)(a)  # its tiles planned now

        def epoch():
            gemms()
        return epoch

    found = {}
    for backend in ("c", "numba"):
        if backend not in fastnn.available_backends():
            continue
        model = cnn_model(layers, fastnn.get_backend(backend), np.float32)
        for tile in tile_sizes:
            found[f"{backend}@{tile >> 10}K"] = fit(model, tile)
        if backend == "c":
            found["c-former"] = former(cnn_model(layers, fastnn.get_backend("c"), np.float32))
    for tile in tile_sizes:
        found[f"gemms-tiled@{tile >> 10}K"] = tiled(tile)
    found["gemms-numpy"] = cnn_gemms(layers)(a)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="images per epoch")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tile-kb", default=str(_gemm_conv.THREAD_TILE_BYTES >> 10),
                        help="THREAD_TILE_BYTES to time, in KB, comma-separated")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--threads", type=int, help="fastnn.set_num_threads (BLAS, Numba, C)")
    args = parser.parse_args()
    if args.threads:
        fastnn.set_num_threads(args.threads)
    tile_sizes = [int(kb) << 10 for kb in args.tile_kb.split(",")]
    default = _gemm_conv.THREAD_TILE_BYTES
    for name, layers in NETWORKS.items():
        a = cnn_setup((args.images, 28, 28, 1), "float32")
        found = variants(layers, a, tile_sizes)
        best = dict.fromkeys(found, np.inf)
        for epoch in found.values():  # warm-up: compiles, workspaces
            epoch()
        for _ in range(args.rounds):
            for key, epoch in found.items():
                start = time.perf_counter()
                epoch()
                best[key] = min(best[key], time.perf_counter() - start)
        _gemm_conv.THREAD_TILE_BYTES = default
        if not args.no_torch:
            try:
                [(_, torch_best, _)] = runner.time_apart(
                    [(get_benchmark(name), (args.images, 28, 28, 1), "torch")])
                best["torch"] = torch_best
            except Exception as error:  # PyTorch not installed, or the child failed
                print(f"  (PyTorch not timed: {error})")
        print(f"{name}, {args.images} images, us per sample (min of {args.rounds} rounds):")
        for key, seconds in best.items():
            print(f"  {key:18s} {1e6 * seconds / args.images:8.1f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
