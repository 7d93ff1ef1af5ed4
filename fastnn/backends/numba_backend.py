"""The Numba backend: jitted, fused kernels. Kernels not overridden here run the
reference implementation."""

import numba

from .reference import NumpyBackend


class NumbaBackend(NumpyBackend):
    name = "numba"

    def _set_num_threads(self, n):
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
