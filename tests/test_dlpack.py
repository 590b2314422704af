"""Any array with __dlpack__ goes in and comes out as its own kind (issue 10, item 6): JAX
arrays, and a minimal foreign array type that has nothing but the DLPack protocol and an Array
API namespace, so the path is tested without depending on one library's details."""
import numpy as np
import pytest

import seqcore
from seqcore import reference
from conftest import assert_close, require_backend


class Foreign:
    """A foreign array: DLPack export, and an Array API namespace whose from_dlpack makes one."""

    def __init__(self, data):
        self.data = np.asarray(data)

    def __dlpack__(self, **kwargs):
        return self.data.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    def __array_namespace__(self, api_version=None):
        return ForeignNamespace


class ForeignNamespace:
    @staticmethod
    def from_dlpack(x):
        return Foreign(np.from_dlpack(x).copy())


def foreign(rng, *shape, dtype=np.float32):
    return Foreign(rng.standard_normal(shape).astype(dtype))


def test_foreign_arrays_in_and_out(rng):
    require_backend("c")
    q, k, v = foreign(rng, 1, 4, 5, 8), foreign(rng, 1, 2, 7, 8), foreign(rng, 1, 2, 7, 6)
    out, lse = seqcore.attention(q, k, v, causal=True, return_lse=True)
    assert isinstance(out, Foreign) and isinstance(lse, Foreign)
    want = reference.attention(q.data, k.data, v.data, causal=True)
    assert_close(out.data, want, "float32")
    x, wi, wh = foreign(rng, 3, 2, 4), foreign(rng, 12, 4), foreign(rng, 12, 4)
    y, h_n = seqcore.gru(x, wi, wh, lengths=[3, 1])
    assert isinstance(y, Foreign) and isinstance(h_n, Foreign)
    assert_close(y.data, reference.gru(x.data, wi.data, wh.data, lengths=[3, 1])[0], "float32")
    h = seqcore.rnn_cell(foreign(rng, 2, 4), foreign(rng, 2, 3), foreign(rng, 3, 4),
                         foreign(rng, 3, 3), nonlinearity="relu")
    assert isinstance(h, Foreign) and h.data.shape == (2, 3)


def test_numpy_and_torch_do_not_take_the_foreign_path(rng):
    q = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    assert type(seqcore.attention(q, q, q)) is np.ndarray


def _jax():
    """jax and jax.numpy (jax is in the test extras, so CI has it)."""
    jax = pytest.importorskip("jax")
    return jax, jax.numpy


def test_jax_arrays_in_and_out(rng):
    require_backend("c")
    jax, jnp = _jax()
    q = jnp.asarray(rng.standard_normal((1, 4, 6, 8)), dtype=jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 2, 9, 8)), dtype=jnp.float32)
    out = seqcore.attention(q, k, k, window=(3, 0))
    assert isinstance(out, jax.Array) and out.dtype == jnp.float32
    want = reference.attention(np.asarray(q), np.asarray(k), np.asarray(k), window=(3, 0))
    assert_close(np.asarray(out), want, "float32")
    out = seqcore.scaled_dot_product_attention(q, k, k, enable_gqa=True, is_causal=True)
    assert isinstance(out, jax.Array)
    x = jnp.asarray(rng.standard_normal((5, 2, 3)), dtype=jnp.float32)
    wi = jnp.asarray(rng.standard_normal((16, 3)), dtype=jnp.float32)
    wh = jnp.asarray(rng.standard_normal((16, 4)), dtype=jnp.float32)
    y, (h_n, c_n) = seqcore.lstm(x, wi, wh)
    assert all(isinstance(a, jax.Array) for a in (y, h_n, c_n))
    assert_close(np.asarray(y), reference.lstm(*(np.asarray(a) for a in (x, wi, wh)))[0],
                 "float32")


def test_jax_bfloat16_goes_through_torch(rng):
    pytest.importorskip("torch")
    require_backend("c")
    jax, jnp = _jax()
    q = jnp.asarray(rng.standard_normal((1, 2, 4, 8)), dtype=jnp.bfloat16)
    out = seqcore.attention(q, q, q)
    assert isinstance(out, jax.Array) and out.dtype == jnp.bfloat16
    q64 = np.asarray(q.astype(jnp.float32)).astype(np.float64)
    assert_close(np.asarray(out.astype(jnp.float32)), reference.attention(q64, q64, q64),
                 "bfloat16")


def test_jax_caches_are_immutable(rng):
    """JAX arrays cannot be written in place: appending keys to a JAX cache is refused (and
    attending over one, with nothing appended, works)."""
    require_backend("c")
    jax, jnp = _jax()
    cache = jnp.zeros((1, 2, 16, 8), dtype=jnp.float32)
    q = jnp.asarray(rng.standard_normal((1, 2, 1, 8)), dtype=jnp.float32)
    new = jnp.asarray(rng.standard_normal((1, 2, 1, 8)), dtype=jnp.float32)
    lens = jnp.asarray([3], dtype=jnp.int32)
    with pytest.raises(ValueError, match="read-only"):
        seqcore.attention_with_kvcache(q, cache, cache, new, new, cache_seqlens=lens)
    assert float(jnp.abs(cache).max()) == 0.0
    out = seqcore.attention_with_kvcache(q, cache, cache, cache_seqlens=lens)
    assert isinstance(out, jax.Array)
