"""Test conventions for every seqcore test.

- TOLERANCES: the one table of (atol, rtol) by dtype (forward outputs; GRAD_TOLERANCES for
  gradients), for values of order one. Compare with `assert_close`.
- `rng`: a NumPy Generator seeded freshly per test from the test's id (printed on failure,
  reproducible), so every test draws its own random inputs.
- `poison(x)`: fill an output buffer with NaN before a kernel writes it, so a kernel that
  skips an element fails loudly instead of passing on stale zeros.
- Triton: tests marked `triton` run the kernels; on a machine without a CUDA GPU this file
  turns on the Triton interpreter (TRITON_INTERPRET=1) before anything imports triton, and
  `triton_device` is "cpu" there, "cuda" on a GPU.
"""
import hashlib
import os

import numpy as np
import pytest


def _cuda_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


HAS_CUDA = _cuda_available()
if not HAS_CUDA:
    # must happen before triton.jit decorates any kernel
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests check correctness, not speed: on a GPU, compile each kernel variant's default tile config
# only, instead of autotuning a dozen configs for every tiny test shape.
os.environ.setdefault("SEQCORE_AUTOTUNE", "0")
# The C kernels keep scratch memory between calls (csrc/scratch.h): fill it with NaN bytes
# whenever it is handed out, so a kernel reading scratch it did not write fails here.
os.environ.setdefault("SEQCORE_POISON_SCRATCH", "1")

try:
    import torch  # noqa: F401
    HAS_TORCH = True
except ImportError:  # the NumPy/C half of the suite still runs
    HAS_TORCH = False

try:
    import triton  # noqa: F401
    HAS_TRITON = HAS_TORCH
except ImportError:
    HAS_TRITON = False

# (atol, rtol) by dtype, for forward outputs of order one.
TOLERANCES = {
    "float64": (1e-10, 1e-9),
    "float32": (2e-5, 2e-5),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1.6e-2),
}
# Gradients go through one more reduction (and, for RNNs, T steps of them).
GRAD_TOLERANCES = {
    "float64": (1e-9, 1e-8),
    "float32": (1e-4, 1e-4),
    "float16": (1e-2, 1e-2),
    "bfloat16": (6e-2, 6e-2),
}


def tolerance(dtype, grad=False):
    name = dtype if isinstance(dtype, str) else _dtype_name(dtype)
    return (GRAD_TOLERANCES if grad else TOLERANCES)[name]


def _dtype_name(x):
    s = str(x)
    return s.replace("torch.", "") if s.startswith("torch.") else np.dtype(x).name


def to_f64(x):
    """float64 NumPy copy of an array or tensor (bfloat16 included)."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close(actual, expected, dtype=None, grad=False, name="", scale=1.0):
    """|actual - expected| <= atol*scale + rtol*|expected|, elementwise, NaN-aware.

    dtype defaults to actual's; `scale` widens atol for outputs larger than order one.
    Infinities must match exactly (e.g. LSE -inf of empty rows).
    """
    dtype = dtype if dtype is not None else (_dtype_name(actual.dtype))
    atol, rtol = tolerance(dtype, grad)
    a, e = to_f64(actual), to_f64(expected)
    assert a.shape == e.shape, f"{name}: shape {a.shape} != expected {e.shape}"
    inf = np.isinf(e)
    assert np.array_equal(np.isinf(a), inf) and np.array_equal(a[inf], e[inf]), \
        f"{name}: infinities differ"
    assert not np.isnan(a).any(), f"{name}: {np.isnan(a).sum()} NaN(s) in the result"
    fin = ~inf
    err = np.abs(a[fin] - e[fin])
    bound = atol * scale + rtol * np.abs(e[fin])
    if err.size and not np.all(err <= bound):
        i = int(np.argmax(err - bound))
        raise AssertionError(f"{name}: max error {err.max():.3e} (dtype {dtype}, atol {atol * scale:.1e}, "
                             f"rtol {rtol:.1e}); worst at flat index {i}: got {a[fin][i]!r}, "
                             f"expected {e[fin][i]!r}; {int((err > bound).sum())} of {err.size} off")


def poison(x):
    """Fill a NumPy array or tensor with NaN (in place) and return it."""
    if hasattr(x, "fill_"):
        x.fill_(float("nan"))
    else:
        x.fill(np.nan)
    return x


@pytest.fixture
def poisoned_empty(monkeypatch):
    """While a test runs, torch.empty hands out NaN-filled floating-point buffers, so a kernel
    that leaves an element of its output unwritten fails instead of passing on stale memory."""
    if not HAS_TORCH:
        return
    empty = torch.empty

    def nan_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)


@pytest.fixture
def rng(request):
    seed = int.from_bytes(hashlib.sha256(request.node.nodeid.encode()).digest()[:4], "little")
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


@pytest.fixture
def triton_device():
    """'cuda' on a GPU machine, else 'cpu' under the Triton interpreter."""
    if not HAS_TRITON:
        pytest.skip("torch/triton not installed: `make test` installs them")
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def dtype(request, triton_device):
    """For Triton tests parametrized with `indirect=True`: the dtype name, skipped (with the
    reason) for bfloat16 under the interpreter."""
    if request.param == "bfloat16" and triton_device == "cpu":
        pytest.skip("bfloat16: the Triton interpreter computes in NumPy, which has no bfloat16")
    return request.param


def _isa_levels():
    """The ISA levels of the C kernels this CPU runs (['none'] without the extension)."""
    try:
        from seqcore import _c
    except ImportError:
        return ["none"]
    return list(_c.isa_levels()) or ["none"]


ISA_LEVELS = _isa_levels()


@pytest.fixture(params=ISA_LEVELS, scope="module")
def every_isa(request):
    """Runs a module's tests once per ISA level this CPU runs, with the C kernels forced to
    it (a module opts in with `pytestmark = [..., pytest.mark.usefixtures("every_isa")]`)."""
    if request.param == "none":
        yield None
        return
    from seqcore import _c

    before = _c.isa()
    _c.set_isa(request.param)
    try:
        yield request.param
    finally:
        _c.set_isa(before)


def require_backend(backend):
    """Skip, with the reason, where the C extension is not built (seqcore imports without it)."""
    from seqcore import _c

    if backend == "c" and _c.status():
        pytest.skip(f"C backend unavailable: {_c.status()}")


def pytest_collection_modifyitems(config, items):
    if HAS_TRITON:
        return
    skip = pytest.mark.skip(reason="torch/triton not installed: `make test` installs them")
    for item in items:
        if "triton" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    mode = "CUDA" if HAS_CUDA else ("interpreter (TRITON_INTERPRET=1)" if HAS_TRITON else "absent")
    return f"seqcore tests: triton {mode}"


# ---- the recurrent cells, for tests parametrized over them -----------------------------------
# (one table: a test over CELLS runs every cell through the same code)

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def cell_states(cell):
    """The states a cell carries: ("h0", "c0") for the LSTM, ("h0",) for the others."""
    return ("h0", "c0") if cell == "lstm" else ("h0",)


def cell_extra(cell):
    """Keyword arguments that select the cell within its public function."""
    return {"nonlinearity": cell[4:]} if cell.startswith("rnn_") else {}


def seq_fn(cell):
    """The public sequence function of a cell, its nonlinearity bound."""
    import functools

    import seqcore

    fn = {"lstm": seqcore.lstm, "gru": seqcore.gru}.get(cell, seqcore.rnn)
    return functools.partial(fn, **cell_extra(cell))


def cell_fn(cell):
    """The public one-step function of a cell, its nonlinearity bound."""
    import functools

    import seqcore

    fn = {"lstm": seqcore.lstm_cell, "gru": seqcore.gru_cell}.get(cell, seqcore.rnn_cell)
    return functools.partial(fn, **cell_extra(cell))


def ref_seq_fn(cell):
    """(forward, backward) of a cell's float64 reference, nonlinearity bound."""
    import functools

    from seqcore import reference as R

    fwd, bwd = {"lstm": (R.lstm, R.lstm_bwd), "gru": (R.gru, R.gru_bwd)}.get(
        cell, (R.rnn, R.rnn_bwd))
    extra = cell_extra(cell)
    return functools.partial(fwd, **extra), functools.partial(bwd, **extra)
