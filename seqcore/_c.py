"""Loading of the cffi extension `seqcore._csrc` and NumPy <-> C pointer helpers.

The package imports without the extension (the Triton path still works); `load()` then
returns None and `status()` says why.
"""
import numpy as np

_lib = None
_ffi = None
_error = None


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
    _lib, _ffi = _csrc.lib, _csrc.ffi


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


def ptr(a):
    """A typed C pointer to the data of NumPy array `a` (NULL for None).

    The caller keeps `a` alive for the duration of the call.
    """
    _, ffi = load()
    if a is None:
        return ffi.NULL
    return ffi.cast(_CTYPES[a.dtype], a.ctypes.data)


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
