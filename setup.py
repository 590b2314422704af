"""Build seqcore: Python package + the `seqcore._csrc` cffi extension + Triton kernels.

`kernels/` is installed as `seqcore.kernels` so nothing named `kernels` lands in site-packages.
The C kernels are compiled by csrc/build.py (one object per source and ISA level, cached in
build/obj/); build_ext below links them into the extension. The package metadata is in
pyproject.toml: the distribution is `seqcore-kernels` (the import name is `seqcore`), its
version is `seqcore.__version__`, and `seqcore/py.typed` ships with it.
"""
import importlib.util
import os

from setuptools import setup
from setuptools.command.build_ext import build_ext


def _csrc_build():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "build.py")
    spec = importlib.util.spec_from_file_location("seqcore_csrc_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildExt(build_ext):
    def pre_run(self, ext, ffi):
        """Called by cffi before the extension is built: compile (or reuse) the kernel
        objects and link them in. force: the object set may change with no source newer
        than the last build (e.g. CC switched back), and linking is cheap."""
        ext.extra_objects = _csrc_build().compile_objects()
        self.force = True


setup(
    packages=["seqcore", "seqcore.reference", "seqcore.kernels"],
    package_dir={"seqcore.kernels": "kernels"},
    cffi_modules=["csrc/build.py:ffibuilder"],
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)
