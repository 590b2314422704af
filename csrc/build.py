"""Build of the C kernels: one object per (source, ISA level), cached by content, and the cffi
extension `seqcore._csrc` that links them.

    python csrc/build.py             build seqcore/_csrc in place (`make build`)
    python csrc/build.py check       build the C reference checks (csrc/check/) and run them
                                     at every level this CPU runs (`make check-c`)
    python csrc/build.py check --cc aarch64-linux-gnu-gcc \\
        --run "qemu-aarch64 -L /usr/aarch64-linux-gnu"          (cross-compiled: `make test-arm`)

Kernel sources (KERNELS) are compiled once per ISA level of the target (LEVELS: x86-64
baseline / avx2 / avx512, aarch64 baseline / neon), with -DSEQCORE_ISA=<level> and only that
level's instruction-set flags; dispatch.c, compiled for the baseline, picks a level when the
library loads (see isa.h). No -march=native: the build runs on any CPU of its architecture,
and at full speed on the best level the CPU has. SEQCORE_NATIVE=1 adds -mtune=native
(scheduling only, never new instructions).

Objects live in build/obj/<target>/<level>/<name>-<key>.o, key = a hash of the compiler
(its path and `--version`), every flag (CFLAGS included), the source and each header it
includes. An edit recompiles only the objects it changes; another CC, other flags or
SEQCORE_NATIVE give other keys, so a stale object is never reused.

setup.py (pip install) builds the same objects through `ffibuilder` below: its build_ext
calls `compile_objects()` and links them into the extension.

The cffi cdef is read straight from the headers listed in seqcore.h, so one header per op
family declares its entry points once, for both the C compiler and cffi. Headers must stay
plain C declarations (no macros in the declared parts) so cffi can parse them.
"""
import argparse
import concurrent.futures
import glob
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OBJ_DIR = os.path.join(ROOT, "build", "obj")

# Compiled once per ISA level / once for the baseline.
KERNELS = ["attention.c", "kvcache.c", "gemm.c", "recurrent.c", "convert.c", "kernels.c"]
SHARED = ["common.c", "scratch.c", "dispatch.c"]

_X86_BASE = ["-march=x86-64", "-mtune=generic"]
# Levels by target architecture, best first (dispatch.c lists the same ones).
LEVELS = {
    "x86_64": {
        "avx512": _X86_BASE + ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw",
                               "-mavx512dq", "-mavx512vl"],
        "avx2": _X86_BASE + ["-mavx2", "-mfma", "-mf16c"],
        "baseline": _X86_BASE,
    },
    "aarch64": {"neon": ["-march=armv8-a"], "baseline": ["-march=armv8-a"]},
    "other": {"baseline": []},
}
CFLAGS = ["-O3", "-std=c11", "-fno-strict-aliasing", "-fPIC", "-Wall", "-Wno-unused-function"]


def compiler():
    """The C compiler as an argv prefix (CC may be "ccache gcc")."""
    return shlex.split(os.environ.get("CC", "cc"))


def target_arch(cc):
    """x86_64, aarch64 or other, from the compiler's target triple."""
    triple = subprocess.run(cc + ["-dumpmachine"], capture_output=True, text=True).stdout
    arch = triple.strip().split("-")[0]
    if arch in ("x86_64", "amd64"):
        return "x86_64"
    return arch if arch in LEVELS else "other"


def has_openmp(cc):
    """True if the C compiler accepts -fopenmp (gcc does; Apple clang usually not)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        try:
            res = subprocess.run(cc + ["-fopenmp", src, "-o", os.path.join(tmp, "a.out")],
                                 capture_output=True)
        except OSError:
            return False
        return res.returncode == 0


def common_flags(cc):
    flags = list(CFLAGS)
    if has_openmp(cc):
        flags.append("-fopenmp")
    if os.environ.get("SEQCORE_NATIVE", "0") == "1":
        flags.append("-mtune=native")
    return flags + shlex.split(os.environ.get("CFLAGS", ""))


def link_flags(cc):
    return ["-fopenmp"] if has_openmp(cc) else []


def _includes(path, seen):
    """path and every local header it includes, recursively (a template includes itself)."""
    if path in seen or not os.path.exists(path):
        return
    seen.add(path)
    with open(path) as f:
        for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', f.read(), flags=re.M):
            _includes(os.path.join(os.path.dirname(path), name), seen)


def _object_key(cc_id, flags, src):
    h = hashlib.sha256(cc_id.encode())
    h.update("\0".join(flags).encode())
    deps = set()
    _includes(src, deps)
    for dep in sorted(deps):
        h.update(os.path.basename(dep).encode())
        with open(dep, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _compile(cc, flags, src, obj):
    os.makedirs(os.path.dirname(obj), exist_ok=True)
    tmp = f"{obj}.{os.getpid()}.tmp"
    cmd = cc + flags + ["-I", HERE, "-c", src, "-o", tmp]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"compiling {os.path.basename(src)} failed:\n{shlex.join(cmd)}\n"
                           f"{res.stdout}{res.stderr}")
    if res.stderr.strip():
        print(res.stderr, file=sys.stderr, end="")
    os.replace(tmp, obj)  # atomic: a concurrent build never links half an object


def compile_objects(cc=None, verbose=True, sources=None):
    """Every object of the extension (kernels per level, shared once) for compiler cc;
    compiles what is missing or out of date, in parallel. Returns the object paths."""
    cc = cc or compiler()
    arch = target_arch(cc)
    version = subprocess.run(cc + ["--version"], capture_output=True, text=True).stdout
    cc_id = shutil.which(cc[0]) or cc[0]
    cc_id = f"{cc_id}\n{' '.join(cc[1:])}\n{version}"
    base = common_flags(cc)
    levels = LEVELS[arch]
    jobs = []  # (flags, source, object)
    for level, isa_flags in levels.items():
        flags = base + isa_flags + [f"-DSEQCORE_ISA={level}"]
        for name in KERNELS:
            jobs.append((flags, name, level))
    baseline = base + levels["baseline"]
    for name in SHARED + list(sources or []):
        jobs.append((baseline, name, "shared"))
    planned = []
    for flags, name, level in jobs:
        src = os.path.join(HERE, name)
        stem = os.path.splitext(name)[0].replace("/", "_")
        obj = os.path.join(OBJ_DIR, arch, level, f"{stem}-{_object_key(cc_id, flags, src)}.o")
        planned.append((flags, src, obj, f"{level}/{name}"))
    todo = [job for job in planned if not os.path.exists(job[2])]
    if verbose:
        print(f"seqcore C kernels ({arch}: {', '.join(levels)}): compiling {len(todo)} of "
              f"{len(planned)} objects", file=sys.stderr)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = [pool.submit(_compile, cc, flags, src, obj) for flags, src, obj, _ in todo]
        for fut in futures:
            fut.result()
    return [obj for _, _, obj, _ in planned]


# ---------------------------------------------------------------------------- cffi interface

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


def make_ffi(objects, include_dir=None):
    cc = compiler()
    ffi = FFI()
    ffi.cdef(_cdef_source())
    ffi.set_source(
        "seqcore._csrc",
        '#include "seqcore.h"\n',
        # setuptools wants paths relative to setup.py; ffi.compile runs in its tmpdir
        include_dirs=[include_dir or os.path.relpath(HERE)],
        extra_compile_args=common_flags(cc) + LEVELS[target_arch(cc)]["baseline"],
        extra_objects=list(objects),
        extra_link_args=link_flags(cc),
    )
    return ffi


# setup.py's build_ext fills extra_objects (compile_objects) just before it links.
ffibuilder = make_ffi([])


def build_in_place():
    """seqcore/_csrc.abi3.so from the cached objects (the glue recompiled, ~1 s)."""
    objects = compile_objects()
    ffi = make_ffi(objects, include_dir=HERE)
    built = ffi.compile(tmpdir=os.path.join(ROOT, "build", "cffi"), target="_csrc.abi3.so",
                        verbose=False)
    dest_dir = os.path.join(ROOT, "seqcore")
    for stale in glob.glob(os.path.join(dest_dir, "_csrc*.so")) + glob.glob(
            os.path.join(dest_dir, "_csrc*.pyd")):
        os.remove(stale)  # another suffix would shadow (or be shadowed by) the new one
    shutil.copy2(built, os.path.join(dest_dir, "_csrc.abi3.so"))
    print(f"seqcore: built {os.path.relpath(os.path.join(dest_dir, '_csrc.abi3.so'), ROOT)}",
          file=sys.stderr)


# ---------------------------------------------------------------------------- C checks

def build_check(cc, run_prefix):
    """Build csrc/check/ (the scalar reference checks) against every level; run it."""
    check_sources = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "check", "*.c")))
    objects = compile_objects(cc, sources=check_sources)
    exe = os.path.join(ROOT, "build", "check", f"seqcore-check-{target_arch(cc)}")
    os.makedirs(os.path.dirname(exe), exist_ok=True)
    cmd = cc + objects + link_flags(cc) + ["-lm", "-o", exe]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"linking the checks failed:\n{shlex.join(cmd)}\n{res.stderr}")
    run = shlex.split(run_prefix) + [exe]
    print(f"$ {shlex.join(run)}", file=sys.stderr, flush=True)
    return subprocess.run(run).returncode


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="extension", choices=["extension", "check"])
    parser.add_argument("--cc", help="C compiler for the checks (default: $CC or cc)")
    parser.add_argument("--run", default="", help="command prefix to run the checks with "
                        "(e.g. qemu-aarch64 -L /usr/aarch64-linux-gnu)")
    args = parser.parse_args(argv)
    if args.what == "check":
        return build_check(shlex.split(args.cc) if args.cc else compiler(), args.run)
    build_in_place()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
