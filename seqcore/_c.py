"""Loading of the cffi extension `seqcore._csrc`, its ISA level, and NumPy <-> C pointer helpers.

The package imports without the extension (the Triton path still works); `load()` then
returns None and `status()` says why.

The extension holds every kernel compiled once per ISA level (csrc/isa.h) and runs the best
level this CPU has. SEQCORE_CPU_ISA=baseline|avx2|avx512|neon in the environment forces a
level; one this build lacks or this CPU cannot run makes the C backend unavailable, with the
reason (never an illegal instruction).
"""
import os

import numpy as np

_lib = None
_ffi = None
_error = None
ISA_ENV = "SEQCORE_CPU_ISA"


def _try_load():
    global _lib, _ffi, _error
    if _lib is not None or _error is not None:
        return
    try:
        from seqcore import _csrc  # noqa: WPS433 (built by setup.py through cffi)
    except Exception as exc:  # ImportError, or an OSError from a broken build
        _error = f"seqcore._csrc is not built or failed to load ({type(exc).__name__}: {exc}); " \
                 "reinstall with `pip install .` and a C compiler"
        return
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    if forced:
        why = _isa_problem(_csrc.lib, _csrc.ffi, forced)
        if why:
            _error = f"{ISA_ENV}={forced}: {why}"
            return
        _csrc.lib.seqcore_isa_select(forced.encode())
    _lib, _ffi = _csrc.lib, _csrc.ffi


def _isa_problem(lib, ffi, isa):
    """'' if level `isa` can run here, else why not."""
    compiled = ffi.string(lib.seqcore_isa_compiled()).decode()
    supported = lib.seqcore_isa_supported(isa.encode())
    if supported < 0:
        return f"no such ISA level in this build (it has {compiled})"
    if supported == 0:
        runs = [name for name in compiled.split(",") if lib.seqcore_isa_supported(name.encode()) == 1]
        return f"this CPU cannot run {isa} (it runs {', '.join(runs)})"
    return ""


def isa():
    """The ISA level the C kernels run at ('avx2', ...), or None without the extension."""
    lib, ffi = load()
    return ffi.string(lib.seqcore_isa_active()).decode() if lib is not None else None


def isa_levels():
    """The levels this build has that this CPU runs, best first (empty without the extension)."""
    lib, ffi = load()
    if lib is None:
        return ()
    compiled = ffi.string(lib.seqcore_isa_compiled()).decode().split(",")
    return tuple(name for name in compiled if lib.seqcore_isa_supported(name.encode()) == 1)


def set_isa(name):
    """Run the C kernels at level `name` from now on (tests and benchmarks; not while kernels
    run). ValueError if it cannot run here."""
    lib, ffi = load()
    if lib is None:
        raise RuntimeError(status())
    why = _isa_problem(lib, ffi, name)
    if why:
        raise ValueError(f"ISA level {name!r}: {why}")
    lib.seqcore_isa_select(name.encode())


def load():
    """(lib, ffi), or (None, None) when the extension is missing."""
    _try_load()
    return _lib, _ffi


def status():
    """'' if the C backend is usable, else the reason it is not."""
    _try_load()
    return "" if _lib is not None else _error


_CTYPES = {np.dtype(np.float32): "float *", np.dtype(np.float64): "double *",
           np.dtype(np.int32): "int32_t *", np.dtype(np.int64): "int64_t *"}
_ARRAY_CTYPES = {dt: name[:-2] + "[]" for dt, name in _CTYPES.items()}


def ptr(a):
    """A typed C pointer to the data of NumPy array `a` (NULL for None).

    The caller keeps `a` alive for the duration of the call. A C-contiguous array goes
    through ffi.from_buffer (~0.3 us); others (broadcast views with zero strides) through
    the slower ctypes address (~2.5 us).
    """
    if a is None:
        return _ffi.NULL
    if a.flags.c_contiguous:
        return _ffi.from_buffer(_ARRAY_CTYPES[a.dtype], a)
    return _ffi.cast(_CTYPES[a.dtype], a.ctypes.data)


def strides(a):
    """Element strides of `a` (bytes / itemsize), as a tuple of ints."""
    return tuple(s // a.itemsize for s in a.strides)


def check(status_code, what):
    """Raise if a C entry point returned an error: the API validated first, so this is a bug."""
    if status_code != 0:
        msg = {-1: "invalid arguments", -2: "out of memory"}.get(status_code, f"status {status_code}")
        raise RuntimeError(f"seqcore C kernel {what} failed: {msg}")


def num_threads():
    lib, _ = load()
    return lib.seqcore_max_threads() if lib is not None else 0
