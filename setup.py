"""Build seqcore: Python package + the `seqcore._csrc` cffi extension + Triton kernels.

`kernels/` is installed as `seqcore.kernels` so nothing named `kernels` lands in site-packages.
"""
from setuptools import setup

setup(
    packages=["seqcore", "seqcore.reference", "seqcore.kernels"],
    package_dir={"seqcore.kernels": "kernels"},
    cffi_modules=["csrc/build.py:ffibuilder"],
    zip_safe=False,
)
