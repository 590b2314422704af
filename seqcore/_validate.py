"""Small shared checks that name the argument and the shapes seen."""
import math
import numbers

from seqcore import _arrays


def require_ndim(name, x, ndims, what):
    if x.ndim not in ndims:
        raise ValueError(f"{name} must be {what}, got shape {_arrays.shape(x)}")


def require_float(name, x):
    dt = _arrays.dtype_name(x)
    if dt not in ("float16", "bfloat16", "float32", "float64"):
        raise TypeError(f"{name} must be a floating-point array, got dtype {dt}")
    return dt


def require_same_dtype(named):
    named = [(n, x) for n, x in named if x is not None]
    first_name, first = named[0]
    want = _arrays.dtype_name(first)
    for n, x in named[1:]:
        if _arrays.dtype_name(x) != want:
            raise TypeError(f"{n} has dtype {_arrays.dtype_name(x)} but {first_name} has {want}; "
                            "pass one dtype")
    return want


def require_same_device(named):
    named = [(n, x) for n, x in named if x is not None]
    devices = {}
    for n, x in named:
        dev = str(x.device) if _arrays.is_tensor(x) else "cpu"
        devices.setdefault(dev, n)
    if len(devices) > 1:
        raise ValueError("arguments are on different devices: "
                         + ", ".join(f"{n} on {d}" for d, n in devices.items()))


def require_real(name, value, *, positive=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be a finite{' positive' if positive else ''} number, got {value}")
    return value


def require_int(name, value, *, minimum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def require_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


# ---- values of index arrays (host NumPy): checked by the API, or inside the torch op when
# torch.compile traces the call and the values are not known yet ----

def check_lengths_values(host, T):
    """lengths (B,) of a batch of sequences must lie in [0, T]."""
    if host.size and (host.min() < 0 or host.max() > T):
        raise ValueError(f"lengths must lie in [0, T={T}], got min {host.min()} max {host.max()}")


def check_cu_seqlens_values(name, host, total):
    """cu_seqlens (n + 1,): 0, non-decreasing, ending at the packed length. Returns the
    longest sequence."""
    host = host.astype("int64")
    if host[0] != 0 or (host[1:] < host[:-1]).any():
        raise ValueError(f"{name} must start at 0 and be non-decreasing, got {host.tolist()[:16]}")
    if host[-1] != total:
        raise ValueError(f"{name}[-1] = {host[-1]} must equal the packed length {total}")
    return int((host[1:] - host[:-1]).max()) if host.size > 1 else 0
