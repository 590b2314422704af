"""cffi (API mode, out of line) build of `seqcore._csrc` from csrc/*.c.

The cdef is read straight from the headers listed in seqcore.h, so one header per op family
declares its entry points once, for both the C compiler and cffi. Headers must stay plain C
declarations (no macros in the declared parts) so cffi can parse them.
"""
import glob
import os
import re
import subprocess
import sys
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _family_headers():
    """Headers named by `#include "x.h"` in seqcore.h, in order."""
    with open(os.path.join(HERE, "seqcore.h")) as f:
        return re.findall(r'#include\s+"([^"]+)"', f.read())


def _cdef_source():
    """Declarations of every entry point, with preprocessor lines and C-only keywords removed."""
    parts = []
    for name in _family_headers():
        with open(os.path.join(HERE, name)) as f:
            text = f.read()
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        text = re.sub(r"\brestrict\b", "", text)
        parts.append(text)
    return "\n".join(parts)


def _compiler_has_openmp():
    """True if the C compiler accepts -fopenmp (gcc does; Apple clang usually not)."""
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        try:
            res = subprocess.run([cc, "-fopenmp", src, "-o", os.path.join(tmp, "a.out")],
                                 capture_output=True)
        except OSError:
            return False
        return res.returncode == 0


ffibuilder = FFI()
ffibuilder.cdef(_cdef_source())

_sources = sorted(glob.glob(os.path.join(HERE, "*.c")))
_cflags = ["-O3", "-std=c11", "-fno-strict-aliasing", "-Wall", "-Wno-unused-function"]
_ldflags = []
if sys.platform != "win32" and os.environ.get("SEQCORE_NATIVE", "1") == "1":
    # Build for the machine we are on (AVX-512 here); SEQCORE_NATIVE=0 for portable wheels.
    _cflags.append("-march=native")
if _compiler_has_openmp():
    _cflags.append("-fopenmp")
    _ldflags.append("-fopenmp")

ffibuilder.set_source(
    "seqcore._csrc",
    '#include "seqcore.h"\n',
    sources=[os.path.relpath(s) for s in _sources],  # setuptools wants paths relative to setup.py
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
