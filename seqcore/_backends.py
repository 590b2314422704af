"""Which backends work here, and which one a call runs on.

Backends:
  "c"      C kernels through cffi (seqcore._csrc), CPU; NumPy arrays and CPU tensors.
  "triton" Triton kernels; CUDA tensors, or CPU tensors under TRITON_INTERPRET=1.
  "numpy"  the float64 reference (seqcore.reference): slow, exact, anywhere.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings

from seqcore import _arrays, _c

BACKENDS = ("c", "triton", "numpy")

# The C extension's status, read once at import: torch.compile traces pick(), and dynamo cannot
# guard on the cffi library object that _c.status() consults (no weak references to it).
_C_STATUS = _c.status()
_C_ISA_REFUSED = _c.isa_refused()


def interpreter_on():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_status():
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install torch triton)"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if interpreter_on():
        return ""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch (set TRITON_INTERPRET=1 to run the kernels on the CPU)"
    return ""


def _problems():
    """{backend: ''} when it works here, else {backend: why not}."""
    return {"c": _c.status(), "triton": _triton_status(), "numpy": ""}


def _what_runs(backend):
    if backend == "c":
        levels = ", ".join(_c.isa_levels())
        return (f"C kernels at ISA level {_c.isa()} (this CPU runs {levels}; "
                f"{_c.ISA_ENV} forces one)")
    if backend == "triton":
        return "Triton kernels under the interpreter (TRITON_INTERPRET=1)" if interpreter_on() \
            else "Triton kernels on CUDA"
    return "the float64 NumPy reference"


def backend_status() -> dict[str, str]:
    """What each backend runs here, or why it cannot.

    Returns
    -------
    dict of str to str
        ``{"c": ..., "triton": ..., "numpy": ...}``. A backend that works here maps to
        ``"available: ..."`` and what runs (for ``"c"``, the ISA level its kernels run at:
        ``baseline``, ``avx2``, ``avx512`` or ``neon``; for ``"triton"``, CUDA or the
        interpreter); one that does not maps to the reason (the C extension failed to load,
        ``SEQCORE_CPU_ISA`` forces a level this CPU cannot run, torch or triton missing, no
        CUDA GPU visible).

    Examples
    --------
    >>> import seqcore
    >>> seqcore.backend_status()["numpy"]
    'available: the float64 NumPy reference'
    """
    return {name: f"available: {_what_runs(name)}" if not why else why
            for name, why in _problems().items()}


def available_backends() -> tuple[str, ...]:
    """The backends that work here, in the order ``("c", "triton", "numpy")``.

    Returns
    -------
    tuple of str
        A subset of ``("c", "triton", "numpy")``; ``"numpy"`` (the float64 reference) is
        always in it. `backend_status` says why a missing one is unavailable.

    Examples
    --------
    >>> import seqcore
    >>> seqcore.available_backends()    # on a CPU-only machine
    ('c', 'numpy')
    """
    problems = _problems()
    return tuple(name for name in BACKENDS if not problems[name])


def pick(kind, device_type, backend):
    """The backend a call with arrays of `kind` on `device_type` runs on.

    backend=None: CUDA tensor -> "triton"; NumPy array or CPU tensor -> "c" (the reference,
    with a warning, if the C extension is missing).
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend is None:
        if device_type == "cuda":
            backend = "triton"
        elif device_type == "cpu":
            if _C_ISA_REFUSED:
                # asked for a level that cannot run: an error, not a silent fallback
                raise RuntimeError(f"seqcore C backend unavailable: {_C_STATUS}")
            if _C_STATUS:
                warnings.warn(f"seqcore: C backend unavailable, using the slow reference: {_C_STATUS}",
                              RuntimeWarning, stacklevel=3)
                return "numpy"
            backend = "c"
        else:
            raise ValueError(f"seqcore has no backend for device type {device_type!r}")
    if backend == "c":
        if device_type != "cpu":
            raise ValueError(f"backend='c' runs on the CPU, but the inputs are on {device_type!r}")
        if _C_STATUS:
            raise RuntimeError(f"backend='c' is unavailable: {_C_STATUS}")
    elif backend == "triton":
        if kind != _arrays.TORCH:
            raise TypeError("backend='triton' needs torch tensors (got NumPy arrays)")
        if device_type == "cpu" and not interpreter_on():
            raise ValueError("backend='triton' on CPU tensors runs only under the Triton interpreter "
                             "(TRITON_INTERPRET=1)")
        if device_type not in ("cpu", "cuda"):
            raise ValueError(f"backend='triton' runs on CUDA tensors, got device {device_type!r}")
        if _triton_status():
            raise RuntimeError(f"backend='triton' is unavailable: {_triton_status()}")
    elif backend == "numpy":
        pass
    return backend


def compute_dtype(backend, dtype):
    """The dtype a backend computes a call of `dtype` in: the C kernels compute float16 and
    bfloat16 in float32 (results are returned in the call's dtype); others as given."""
    if backend == "c" and dtype in ("float16", "bfloat16"):
        return "float32"
    return dtype


def check_dtype(name, x, backend):
    """Reject dtypes the chosen backend cannot compute in."""
    dt = _arrays.dtype_name(x)
    cpu_ok = ("float16", "float32", "float64")
    gpu_ok = ("float16", "bfloat16", "float32")
    if backend in ("c", "numpy"):
        allowed = cpu_ok + ("bfloat16",)  # (only tensors have it: CPU autocast)
    elif _arrays.device_type(x) == "cuda":
        allowed = gpu_ok
    else:  # the Triton interpreter: numpy has no bfloat16; float64 is not a kernel dtype
        allowed = ("float16", "float32")
    if dt not in allowed:
        raise TypeError(f"{name} has dtype {dt}; backend {backend!r} on {_arrays.device_type(x)} "
                        f"takes {', '.join(allowed)}")
    return dt


_MODULES = {
    ("c", "attention"): "seqcore._c_attention",
    ("c", "recurrent"): "seqcore._c_recurrent",
    ("triton", "attention"): "seqcore._triton_attention",
    ("triton", "recurrent"): "seqcore._triton_recurrent",
    ("numpy", "attention"): "seqcore._numpy_backend",
    ("numpy", "recurrent"): "seqcore._numpy_backend",
}


_LOADED = {}


def module(backend, family):
    """The module implementing `family` ("attention" | "recurrent") for `backend`
    (the interface is described in seqcore/_problem.py)."""
    mod = _LOADED.get((backend, family))
    if mod is None:
        import importlib

        mod = _LOADED[(backend, family)] = importlib.import_module(_MODULES[(backend, family)])
    return mod
