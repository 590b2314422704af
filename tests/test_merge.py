"""merge_attention of attention over two halves of the keys equals attention over all keys,
on every kernel backend (the split-KV / ring-attention use of lse)."""
import numpy as np
import pytest

import seqcore
from conftest import assert_close


def _halves(rng, dtype, Sk, split):
    q = rng.standard_normal((2, 4, 7, 24)).astype(dtype)
    k = rng.standard_normal((2, 2, Sk, 24)).astype(dtype)
    v = rng.standard_normal((2, 2, Sk, 20)).astype(dtype)
    bias = rng.standard_normal((1, 4, 7, Sk)).astype(dtype)
    bias[..., 0, :split] = -np.inf   # row 0 sees nothing in the first half
    bias[..., 1, :] = -np.inf        # row 1 sees nothing at all
    return q, k, v, bias


def _check(convert, backend, dtype, rng, Sk=37, split=15):
    q, k, v, bias = _halves(rng, dtype, Sk, split)
    opts = dict(softcap=4.0, return_lse=True, backend=backend)
    q, k, v, bias = (convert(a) for a in (q, k, v, bias))
    whole, whole_lse = seqcore.attention(q, k, v, bias=bias, **opts)
    out_a, lse_a = seqcore.attention(q, k[..., :split, :], v[..., :split, :], bias=bias[..., :split], **opts)
    out_b, lse_b = seqcore.attention(q, k[..., split:, :], v[..., split:, :], bias=bias[..., split:], **opts)
    out, lse = seqcore.merge_attention(out_a, lse_a, out_b, lse_b)
    # API.md fixes lse at float32, so a merge is float32-accurate even for float64 inputs
    assert_close(out, whole, "float32", name="out")
    assert_close(lse, whole_lse, "float32", name="lse")
    assert np.all(np.isneginf(np.asarray(lse[..., 1].tolist())))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_merge_halves_c(dtype, rng):
    _check(lambda a: a, "c", dtype, rng)


@pytest.mark.triton
def test_merge_halves_triton(triton_device, rng):
    import torch

    _check(lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(triton_device), "triton", "float32", rng)


def test_merge_float64_tensors_compute_in_float64(rng):
    """Found by fuzzing: float64 tensors were merged in float32 (2e-7 off); now both kinds
    compute in the dtype of out. They agree to float64 rounding, not bit for bit: NumPy's and
    torch's float64 exp may differ in the last bit (NumPy's AVX-512 exp on a Zen 5: 6 of 210
    outputs 4e-16 apart), while float32 math would be ~1e-7 off."""
    torch = pytest.importorskip("torch")
    out_a, out_b = rng.standard_normal((2, 3, 5, 7)), rng.standard_normal((2, 3, 5, 7))
    lse_a, lse_b = (rng.standard_normal((2, 3, 5)).astype(np.float32) for _ in range(2))
    want, want_lse = seqcore.merge_attention(out_a, lse_a, out_b, lse_b)
    got, got_lse = seqcore.merge_attention(*(torch.from_numpy(a) for a in (out_a, lse_a, out_b, lse_b)))
    assert got.dtype == torch.float64 and got_lse.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-13, atol=1e-14)
    np.testing.assert_array_equal(got_lse.numpy(), want_lse)
