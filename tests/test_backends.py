"""Backend selection and availability (API.md: 'Arrays and backends')."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import seqcore


def _run(code):
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_imports_and_explains_without_the_c_extension():
    # A None entry in sys.modules makes `import seqcore._csrc` raise ImportError: as if never built.
    out = _run("""
        import sys, warnings
        sys.modules["seqcore._csrc"] = None
        import numpy as np, seqcore
        print("c" in seqcore.available_backends())
        print("not built" in seqcore.backend_status()["c"])
        q = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = seqcore.attention(q, q, q)        # falls back to the reference, with a warning
        print(out.dtype, any("C backend unavailable" in str(w.message) for w in caught))
        try:
            seqcore.attention(q, q, q, backend="c")
        except RuntimeError as exc:
            print("RuntimeError", "unavailable" in str(exc))
    """)
    assert out.split() == ["False", "True", "float32", "True", "RuntimeError", "True"]


def test_numpy_users_never_import_torch():
    out = _run("""
        import sys, numpy as np, seqcore
        q = np.ones((1, 2, 3, 4), np.float32)
        seqcore.attention(q, q, q)
        x = np.ones((3, 2, 4), np.float32)
        seqcore.gru(x, np.ones((15, 4), np.float32), np.ones((15, 5), np.float32))
        print("torch" in sys.modules)
    """)
    assert out.strip() == "False"


def test_default_backend_by_kind(monkeypatch):
    from seqcore import _backends

    picked = []
    real = _backends.module

    def spy(backend, family):
        picked.append(backend)
        return real(backend, family)

    monkeypatch.setattr(_backends, "module", spy)
    q = np.random.default_rng(1).standard_normal((1, 2, 5, 8)).astype(np.float32)
    seqcore.attention(q, q, q)
    assert picked == ["c"]
    seqcore.attention(q, q, q, backend="numpy")
    assert picked[-1] == "numpy"


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_same_kind_and_dtype_out(dtype, rng):
    q = rng.standard_normal((2, 1, 3, 5, 8)).astype(dtype)
    out, lse = seqcore.attention(q, q, q, return_lse=True)
    assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == (2, 1, 3, 5, 8)
    assert lse.dtype == np.float32 and lse.shape == (2, 1, 3, 5)
    x = rng.standard_normal((4, 2, 3)).astype(dtype)
    y, (h, c) = seqcore.lstm(x, rng.standard_normal((8, 3)).astype(dtype), rng.standard_normal((8, 2)).astype(dtype))
    assert y.dtype == h.dtype == c.dtype == dtype and y.shape == (4, 2, 2)


def test_torch_tensors_in_torch_tensors_out(rng):
    torch = pytest.importorskip("torch")
    q = torch.from_numpy(rng.standard_normal((2, 5, 8)).astype(np.float32))
    out = seqcore.attention(q, q, q, causal=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.device.type == "cpu"
