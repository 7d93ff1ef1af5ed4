"""Build script: compiles csrc/ into the cffi extension ``fastnn._ckernels``.

The C backend is optional. If the extension cannot be compiled (no compiler, no
OpenMP), the build warns and goes on, and fastnn installs without the ``c`` backend.
"""

import os
import shutil
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
            return
        self._copy_into_source_tree()

    def _copy_into_source_tree(self):
        """Also place the built extension beside the sources, as an in-place build
        does: `python -m fastnn` run at the top of the source tree imports this
        folder's fastnn, not the installed copy, and should find the C backend."""
        if self.inplace:
            return
        here = os.path.dirname(os.path.abspath(__file__))
        for ext in self.extensions:
            filename = self.get_ext_filename(self.get_ext_fullname(ext.name))
            built = os.path.join(self.build_lib, filename)
            target = os.path.join(here, filename)
            if os.path.exists(built) and os.path.isdir(os.path.dirname(target)):
                try:
                    shutil.copyfile(built, target)
                except OSError:  # a read-only source tree: the installed copy still works
                    pass

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
