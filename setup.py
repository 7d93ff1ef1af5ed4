"""Build script: compiles csrc/ into the cffi extension ``fastnn._ckernels``.

The C backend is optional. If the extension cannot be compiled (no compiler, no
OpenMP), the build warns and goes on, and fastnn installs without the ``c`` backend.
"""

import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that turns a failure to compile the C kernels into a warning."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # compiler missing or broken: install without C
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        print(
            f"WARNING: fastnn's C kernels were not built ({exc}); "
            "fastnn installs without the 'c' backend.",
            file=sys.stderr,
        )


setup(
    cffi_modules=["fastnn/backends/_build_ckernels.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)
