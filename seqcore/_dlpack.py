"""Arrays of other libraries in, the same kind out: anything with ``__dlpack__`` (JAX, CuPy,
...), as the API reference promises.

A foreign argument is imported without a copy (DLPack): as a NumPy array when it lies in host
memory and NumPy has its dtype (the C backend's fastest path, no torch needed), else as a torch
tensor (device memory, bfloat16). The call then runs as for NumPy arrays or tensors, and every
array it returns goes back through the foreign library's own ``from_dlpack`` (its Array API
namespace, ``x.__array_namespace__()``, or its top-level module), so a JAX array comes back
as a JAX array. NumPy arrays and torch tensors never take this path: their cost is one type
test per argument.
"""
import functools
import sys

import numpy as np

from seqcore import _arrays

_DL_CPU = 1  # DLDeviceType.kDLCPU


def _is_foreign(a):
    return (a is not None and a.__class__ is not np.ndarray and hasattr(a, "__dlpack__")
            and not _arrays.is_tensor(a))


# Types known not to be foreign arrays (NumPy, torch, plain Python values), grown as calls
# meet them: the common call then costs one set lookup per argument.
_NATIVE = {np.ndarray, type(None), int, float, bool, str}


def _first_foreign(values):
    """The first foreign array among values (one level into lists and tuples), or None."""
    for a in values:
        t = type(a)
        if t in _NATIVE:
            continue
        if t is list or t is tuple:
            found = _first_foreign(a)
            if found is not None:
                return found
        elif _is_foreign(a):
            return a
        elif _arrays.is_tensor(a) or not hasattr(a, "__dlpack__"):
            _NATIVE.add(t)
    return None


def _import(a):
    if isinstance(a, (list, tuple)):
        return type(a)(_import(b) for b in a)
    if not _is_foreign(a):
        return a
    if int(a.__dlpack_device__()[0]) == _DL_CPU:
        try:
            return np.from_dlpack(a)
        except (TypeError, BufferError, RuntimeError):  # a dtype NumPy lacks (bfloat16)
            pass
    try:
        import torch
    except ImportError:
        raise TypeError(f"a {type(a).__name__} on a device, or of a dtype NumPy lacks, needs "
                        "torch to be read through DLPack") from None
    return torch.from_dlpack(a)


def _exporter(a):
    """from_dlpack of the library a comes from."""
    namespace = getattr(a, "__array_namespace__", None)
    if namespace is not None:
        return namespace().from_dlpack
    root = sys.modules.get(type(a).__module__.split(".")[0])
    convert = getattr(root, "from_dlpack", None)
    if convert is None:
        raise TypeError(f"cannot return results as {type(a).__name__}: its module has no "
                        "from_dlpack and the array no __array_namespace__")
    return convert


def _export(result, convert):
    if isinstance(result, tuple):
        return tuple(_export(r, convert) for r in result)
    if isinstance(result, list):
        return [_export(r, convert) for r in result]
    if isinstance(result, np.ndarray) or _arrays.is_tensor(result):
        return convert(result.detach() if _arrays.is_tensor(result) else result)
    return result


def accepts_dlpack(fn):
    """fn, also taking foreign arrays (see the module docstring)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        first = _first_foreign(args)
        if first is None and kwargs:
            first = _first_foreign(kwargs.values())
        if first is None:
            return fn(*args, **kwargs)
        convert = _exporter(first)
        args = tuple(_import(a) for a in args)
        kwargs = {k: _import(v) for k, v in kwargs.items()}
        return _export(fn(*args, **kwargs), convert)

    return call
