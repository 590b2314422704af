"""csrc/build.py: objects are keyed by everything that shapes them, so an edit recompiles
only what it changes and another compiler or flags never reuse a stale object."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("seqcore_build", os.path.join(ROOT, "csrc", "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_object_key_covers_compiler_flags_and_every_included_header(build, tmp_path):
    (tmp_path / "a.h").write_text("#define A 1\n")
    (tmp_path / "b.h").write_text('#include "a.h"\n')
    src = tmp_path / "k.c"
    src.write_text('#include "b.h"\nint f(void) { return A; }\n')
    key = build._object_key("gcc 12", ["-O3"], str(src))
    assert build._object_key("gcc 12", ["-O3"], str(src)) == key          # reproducible
    assert build._object_key("clang 16", ["-O3"], str(src)) != key        # another compiler
    assert build._object_key("gcc 12", ["-O2"], str(src)) != key          # other flags
    (tmp_path / "a.h").write_text("#define A 2\n")                         # a nested header
    assert build._object_key("gcc 12", ["-O3"], str(src)) != key


def test_every_kernel_source_is_compiled_per_level_and_sees_its_headers(build):
    deps = set()
    build._includes(os.path.join(build.HERE, "attention.c"), deps)
    names = {os.path.basename(d) for d in deps}
    assert {"attention.c", "simd.h", "isa.h", "seqcore.h", "attention.h", "band.h", "kvcache.h"} <= names
    assert set(build.KERNELS) == {"attention.c", "kvcache.c", "gemm.c", "recurrent.c", "convert.c",
                                  "kernels.c"}
    x86 = build.LEVELS["x86_64"]
    assert list(x86) == ["avx512", "avx2", "baseline"]
    assert "-march=native" not in " ".join(f for flags in x86.values() for f in flags)
