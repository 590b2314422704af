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
_isa_refused = False  # the extension loaded, but SEQCORE_CPU_ISA asks for a level that cannot run
ISA_ENV = "SEQCORE_CPU_ISA"


def _try_load():
    global _lib, _ffi, _error, _isa_refused
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
            _error, _isa_refused = f"{ISA_ENV}={forced}: {why}", True
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


def isa_refused():
    """True when the C backend is unavailable because SEQCORE_CPU_ISA asks for a level that
    cannot run here (an error to report, not a reason to fall back to the reference)."""
    _try_load()
    return _isa_refused


_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_KERNELS = {}


def kernel(name, dtype):
    """The entry point seqcore_<name>_<f32|f64> for `dtype` (looked up once)."""
    fn = _KERNELS.get((name, dtype))
    if fn is None:
        lib, _ = load()
        fn = _KERNELS[(name, dtype)] = getattr(lib, f"seqcore_{name}_{_SUFFIX[numpy_dtype(dtype)]}")
    return fn


_NUMPY_DTYPES = {}


def numpy_dtype(dtype):
    """The NumPy dtype of a NumPy or torch dtype (torch.float32 -> float32, by its name)."""
    dt = _NUMPY_DTYPES.get(dtype)
    if dt is None:
        dt = _NUMPY_DTYPES[dtype] = np.dtype(str(dtype).replace("torch.", ""))
    return dt


def numpy_alloc(dtype):
    """The allocator of NumPy results (shape -> empty array of dtype)."""
    return lambda shape: np.empty(shape, dtype)


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
    """A typed C pointer to the data of `a` (NULL for None): a NumPy array, or a CPU tensor
    that _arrays.direct_tensor_alloc passed (contiguous, float, no lazy negation).

    The caller keeps `a` alive for the duration of the call. A C-contiguous array goes
    through ffi.from_buffer with a parsed type (~0.3 us; NumPy refuses others with a
    ValueError); others (broadcast views with zero strides) through the slower ctypes address
    (~2.5 us).
    """
    ffi = _ffi or load()[1]
    if a is None:
        return ffi.NULL
    if a.__class__ is not np.ndarray:
        # (an empty tensor's data_ptr() is 0, which the kernels refuse as a missing array:
        # they read nothing of it, so any valid address will do)
        return ffi.cast(_TENSOR_CTYPES[a.dtype], a.data_ptr() or _EMPTY.ctypes.data)
    try:
        return ffi.from_buffer(_ARRAY_TYPES[a.dtype], a)
    except ValueError:  # not C-contiguous
        return ffi.cast(_CTYPES[a.dtype], a.ctypes.data)


_EMPTY = np.zeros(1, np.float64)  # the address passed for an empty tensor


class _ArrayTypes(dict):
    """NumPy dtype -> the parsed cffi array type from_buffer takes, filled on first use."""

    def __missing__(self, dtype):
        t = self[dtype] = (_ffi or load()[1]).typeof(_ARRAY_CTYPES[dtype])
        return t


_ARRAY_TYPES = _ArrayTypes()


class _TensorCTypes(dict):
    """torch dtype -> the parsed C pointer type, filled on first use (torch is imported only by
    then; a parsed type casts in ~0.15 us, its name in ~0.3)."""

    def __missing__(self, dtype):
        import torch

        names = {torch.float32: "float *", torch.float64: "double *"}
        if dtype not in names:
            raise TypeError(f"no C pointer type for tensors of {dtype}")
        self[dtype] = (_ffi or load()[1]).typeof(names[dtype])
        return self[dtype]


_TENSOR_CTYPES = _TensorCTypes()


def convert_half(a, name):
    """a (NumPy float16 or float32) as a C-contiguous array of `name` (the other one), by
    seqcore_f16_to_f32 / seqcore_f32_to_f16; None when the extension is missing."""
    lib, ffi = load()
    if lib is None:
        return None
    a = np.ascontiguousarray(a)
    out = np.empty(a.shape, dtype=name)
    if name == "float32":
        status = lib.seqcore_f16_to_f32(ffi.cast("uint16_t *", a.ctypes.data), ptr(out), a.size)
    else:
        status = lib.seqcore_f32_to_f16(ptr(a), ffi.cast("uint16_t *", out.ctypes.data), a.size)
    check(status, "float16 conversion")
    return out


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
