"""ISA levels of the C backend: one portable build holds every level of its architecture,
the best one this CPU runs is picked when the library loads, SEQCORE_CPU_ISA forces one, and
a level that cannot run here is a clear error (never an illegal instruction).

The C test modules (test_attention_c.py, test_recurrent_c.py) run once per level this CPU
runs (conftest.every_isa); here each level also runs the `python -m seqcore` check in a fresh
process, forced by the environment variable, on 1 and 3 threads.
"""
import os
import platform
import subprocess
import sys

import pytest

from seqcore import _c
from conftest import require_backend

pytestmark = pytest.mark.skipif(bool(_c.status()), reason=f"C backend unavailable: {_c.status()}")

EXPECTED = {"x86_64": ["avx512", "avx2", "baseline"], "aarch64": ["neon", "baseline"]}


def _compiled():
    lib, ffi = _c.load()
    return ffi.string(lib.seqcore_isa_compiled()).decode().split(",")


def _run(code, **env):
    full = dict(os.environ)
    full.pop("SEQCORE_CPU_ISA", None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full)


def test_one_build_holds_every_level_of_its_architecture():
    assert _compiled() == EXPECTED.get(platform.machine(), ["baseline"])
    assert "baseline" in _c.isa_levels()  # runs anywhere


def test_default_is_the_best_level_this_cpu_runs():
    best = next(name for name in _compiled() if name in _c.isa_levels())
    res = _run("from seqcore import _c; print(_c.isa())")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == best


@pytest.mark.parametrize("threads", ["1", "3"])
@pytest.mark.parametrize("level", _c.isa_levels() if not _c.status() else [])
def test_forced_level_is_checked_against_the_reference(level, threads):
    res = subprocess.run([sys.executable, "-m", "seqcore", "c"], capture_output=True, text=True,
                         env={**os.environ, "SEQCORE_CPU_ISA": level, "OMP_NUM_THREADS": threads})
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"C kernels at ISA level {level}" in res.stdout
    assert "all ok" in res.stdout and f"c[{level}]" in res.stdout


def test_level_this_cpu_lacks_is_a_clear_error():
    lacking = [name for name in _compiled() if name not in _c.isa_levels()]
    # an unknown name is refused everywhere; a compiled level this CPU lacks (avx512 on an
    # AVX2 machine) too, where there is one
    for level, why in [("sse9", "no such ISA level in this build")] + \
            [(name, f"this CPU cannot run {name}") for name in lacking]:
        res = _run("""
import numpy as np, seqcore
print(seqcore.available_backends())
print(seqcore.backend_status()["c"])
q = np.ones((1, 2, 3, 4), np.float32)
for backend in (None, "c"):
    try:
        seqcore.attention(q, q, q, backend=backend)
        print("ran")
    except RuntimeError as exc:
        print("RuntimeError:", exc)
""", SEQCORE_CPU_ISA=level)
        assert res.returncode == 0, res.stderr  # no crash, no SIGILL
        lines = res.stdout.splitlines()
        assert "'c'" not in lines[0]
        assert f"SEQCORE_CPU_ISA={level}" in lines[1] and why in lines[1]
        assert all(line.startswith("RuntimeError:") and why in line for line in lines[2:4])


def test_set_isa_refuses_a_level_this_cpu_lacks():
    require_backend("c")
    for name in _compiled():
        if name not in _c.isa_levels():
            with pytest.raises(ValueError, match="cannot run"):
                _c.set_isa(name)
    with pytest.raises(ValueError, match="no such ISA level"):
        _c.set_isa("mmx")
    assert _c.isa() in _c.isa_levels()
