"""Array kinds: NumPy arrays and torch tensors in, the same kind out.

torch is imported lazily, only when something that is not a NumPy array arrives, so NumPy
users never pay for (or need) torch.
"""
import sys

import numpy as np

NUMPY = "numpy"
TORCH = "torch"


def _torch():
    import torch

    return torch


def is_tensor(x):
    # Only look at torch if it is already imported: a tensor cannot exist otherwise.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def kind_of(x):
    if isinstance(x, np.ndarray):
        return NUMPY
    if is_tensor(x):
        return TORCH
    return None


def common_kind(named_arrays):
    """The one kind shared by all given (name, array) pairs; None values are skipped.

    Mixing NumPy arrays and torch tensors is a TypeError, as is anything that is neither.
    """
    kinds = {}
    for name, x in named_arrays:
        if x is None:
            continue
        k = kind_of(x)
        if k is None:
            raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}")
        kinds.setdefault(k, name)
    if len(kinds) > 1:
        raise TypeError("arguments mix NumPy arrays and torch tensors: "
                        + ", ".join(f"{n} is a {k} array" for k, n in kinds.items())
                        + "; pass one kind")
    return next(iter(kinds), NUMPY)


_NUMPY_NAMES = {np.dtype(n): n for n in ("float16", "float32", "float64", "int32", "int64")}
_TORCH_NAMES = {}  # torch dtype -> name, filled on first use


def dtype_name(x):
    """'float16' | 'bfloat16' | 'float32' | 'float64' | other, for either kind."""
    dt = x.dtype
    if is_tensor(x):
        name = _TORCH_NAMES.get(dt)
        if name is None:
            name = _TORCH_NAMES[dt] = str(dt).replace("torch.", "")
        return name
    return _NUMPY_NAMES.get(dt) or np.dtype(dt).name  # (dtype.name costs ~6 us a call)


def device_type(x):
    """'cpu' for NumPy arrays, else the tensor's device type ('cpu', 'cuda', ...)."""
    return x.device.type if is_tensor(x) else "cpu"


def shape(x):
    return tuple(x.shape)


def contiguous(x):
    if x is None:
        return None
    if is_tensor(x):
        return x.contiguous()
    return np.ascontiguousarray(x)


def astype(x, name):
    """Cast to dtype `name` ('float32', ...), same kind; no copy if already that dtype."""
    if x is None:
        return None
    if is_tensor(x):
        want = getattr(_torch(), name)
        return x if x.dtype is want else x.to(want)  # (.to costs ~5 us even as a no-op)
    half = _half_cast(x, name)
    return half if half is not None else x.astype(name, copy=False)


def contiguous_as(x, name):
    """A NumPy array as a C-contiguous array of dtype `name` (no copy when it is one)."""
    half = _half_cast(x, name)
    return half if half is not None else np.ascontiguousarray(x, dtype=name)


_F16, _F32 = np.dtype(np.float16), np.dtype(np.float32)


def _half_cast(x, name):
    """float16 <-> float32 of a NumPy array by the C kernels (F16C / NEON, threads: NumPy
    converts one value at a time, ~2.5 ns each, as long as a float16 attention's kernel
    took), C-contiguous; None for other casts, small arrays or without the C extension.
    (dtype objects compared, not dtype.name: that is a Python property, ~2 us a call.)"""
    dt = x.dtype
    if not ((dt == _F16 and name == "float32") or (dt == _F32 and name == "float16")) \
            or x.size < 512:
        return None
    from seqcore import _c

    return _c.convert_half(x, name)


def empty_like_kind(ref, shape_, dtype_name_):
    if is_tensor(ref):
        torch = _torch()
        return torch.empty(shape_, dtype=getattr(torch, dtype_name_), device=ref.device)
    return np.empty(shape_, dtype=dtype_name_)


def zeros_like_kind(ref, shape_, dtype_name_):
    if is_tensor(ref):
        torch = _torch()
        return torch.zeros(shape_, dtype=getattr(torch, dtype_name_), device=ref.device)
    return np.zeros(shape_, dtype=dtype_name_)


def reshape(x, shape_):
    """x viewed with shape_ (x itself when it has it: a tensor's reshape costs ~5 us)."""
    return x if x.shape == tuple(shape_) else x.reshape(shape_)


def broadcast_to(x, shape_):
    """A broadcast view (zero strides), never a copy in memory."""
    if is_tensor(x):
        return x.expand(shape_)
    return np.broadcast_to(x, shape_)


def as_index_array(x, name, like):
    """An int64 (n,) array of the kind and device of `like`, from a list, array or tensor."""
    if is_tensor(like):
        torch = _torch()
        if is_tensor(x):
            t = x
        else:
            t = torch.as_tensor(np.asarray(x))
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
            raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
        return t.to(device=like.device, dtype=torch.int64)
    if is_tensor(x):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


def host_views(backend, *xs):
    """NumPy views of the CPU tensors of a call the C backend can run without torch (None
    entries kept), or None when the call must go through torch.

    A call qualifies when it is eager and needs no gradient: nothing traces it (torch.compile,
    torch.export, a functorch transform), every array is a plain CPU tensor (or a Parameter)
    of a dtype NumPy has, and none needs autograd. It then runs on the NumPy path (results
    wrapped back with torch.from_numpy, no copy): a custom op's dispatch and the torch-side
    conversions cost ~100 us a call, more than a small kernel (one RNN cell step of a stream).
    """
    torch = sys.modules.get("torch")
    if torch is None or backend not in (None, "c"):
        return None
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return None
    grad = torch.is_grad_enabled()
    host_dtypes = _host_dtypes(torch)
    plain = (torch.Tensor, torch.nn.Parameter)  # (a Parameter: a module's weights)
    views = []
    for x in xs:
        if x is None:
            views.append(None)
            continue
        if type(x) not in plain or not x.is_cpu or x.dtype not in host_dtypes:
            return None
        if x.requires_grad:
            if grad:
                return None
            x = x.detach()
        try:
            views.append(x.numpy())
        except (RuntimeError, TypeError):  # e.g. a tensor with the negative bit set
            return None
    return views


def autocast_inputs(*xs):
    """xs cast to the autocast dtype when torch.autocast is on for their device (torch tensors
    of a floating dtype; others as they are), as torch's autocast runs SDPA and its RNNs in
    lower precision: seqcore computes them in float32 and returns that dtype."""
    torch = sys.modules.get("torch")
    first = next((x for x in xs if x is not None), None)
    if torch is None or not is_tensor(first):
        return xs
    device = "cpu" if first.is_cpu else first.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return xs
    low = torch.get_autocast_dtype(device)
    return tuple(x.to(low) if is_tensor(x) and x.is_floating_point() and x.dtype != low
                 else x for x in xs)


def direct_tensor_alloc(xs):
    """An allocator of results like xs[0] (shape -> CPU tensor) when a C kernel may read the
    tensors xs (None entries skipped) straight from their memory, else None.

    That is when the call is eager and needs no gradient (as in host_views) and every tensor
    is a plain CPU tensor (or Parameter: a module's weights) of one float32/float64 dtype,
    strided, C-contiguous and not lazily negated. A stream calls a cell once per frame,
    and NumPy views of seven tensors (~1.5 us each) cost as much as the kernel of a small
    step.
    """
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(xs[0], torch.Tensor):
        return None
    dt = xs[0].dtype
    if (dt is not torch.float32 and dt is not torch.float64) or torch.compiler.is_compiling() \
            or torch._C._are_functorch_transforms_active():
        return None
    grad, strided = torch.is_grad_enabled(), torch.strided
    plain = (torch.Tensor, torch.nn.Parameter)
    for a in xs:  # (plain loops: this runs on every frame)
        if a is None:
            continue
        if a.__class__ not in plain or a.dtype is not dt or not a.is_cpu or \
                a.layout is not strided or not a.is_contiguous() or a.is_neg() or \
                (grad and a.requires_grad):
            return None
    np_dt = np.float32 if dt is torch.float32 else np.float64
    return lambda shape: torch.from_numpy(np.empty(shape, np_dt))


_HOST_DTYPES = None


def _host_dtypes(torch):
    """The tensor dtypes NumPy views (no bfloat16, no complex), as a set (built once)."""
    global _HOST_DTYPES
    if _HOST_DTYPES is None:
        _HOST_DTYPES = frozenset((torch.float16, torch.float32, torch.float64, torch.int8,
                                  torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool))
    return _HOST_DTYPES


def host_results(results):
    """The NumPy results of a host_views call as CPU tensors (tuples kept), without copies."""
    if isinstance(results, tuple):
        return tuple(host_results(r) for r in results)
    return _torch().from_numpy(results) if isinstance(results, np.ndarray) else results


def to_host_numpy(x):
    """A NumPy view/copy of x on the host (for validation of small index arrays)."""
    if x is None:
        return None
    if is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)
