"""seqcore.scaled_dot_product_attention against torch.nn.functional.scaled_dot_product_attention:
outputs and gradients (float64, and float32), top-left is_causal with Sq < Sk, == and > Sk,
boolean and float masks (a fully masked row), GQA, broadcast leading dims, NumPy arrays too,
and torch's errors."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import seqcore  # noqa: E402
from conftest import assert_close, require_backend  # noqa: E402

pytestmark = pytest.mark.usefixtures("every_isa")

CASES = [  # (query, key, value shapes, mask shape / dtype, is_causal, enable_gqa)
    ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6), None, False, False),
    ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6), None, True, False),   # Sq < Sk: a mask
    ((2, 3, 9, 8), (2, 3, 4, 8), (2, 3, 4, 6), None, True, False),   # Sq > Sk: a window
    ((1, 2, 6, 4), (1, 2, 6, 4), (1, 2, 6, 4), None, True, False),
    ((2, 4, 5, 8), (2, 2, 7, 8), (2, 2, 7, 6), None, True, True),
    ((2, 4, 5, 8), (2, 1, 7, 8), (2, 1, 7, 6), None, False, False),  # heads broadcast (MQA)
    ((5, 8), (7, 8), (7, 8), None, False, False),                    # no leading dims
    ((3, 5, 8), (1, 7, 8), (1, 7, 8), None, False, False),           # batch broadcast
    ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6), ((5, 7), "bool"), False, False),
    ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6), ((3, 1, 7), "float"), False, False),
    ((2, 4, 5, 8), (2, 2, 7, 8), (2, 2, 7, 6), ((2, 1, 5, 7), "bool"), False, True),
]


def _mask(spec, gen):
    if spec is None:
        return None
    shape, kind = spec
    if kind == "bool":
        m = torch.rand(shape, generator=gen) > 0.3
        m[..., 1, :] = False  # a fully masked row: zeros, as torch gives
        return m
    return torch.randn(shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-mask{c[3]}-causal{c[4]}-gqa{c[5]}")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_torch_sdpa(case, dtype):
    require_backend("c")
    qs, ks, vs, mask_spec, causal, gqa = case
    gen = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    q, k, v = (torch.randn(s, generator=gen, dtype=dt, requires_grad=True) for s in (qs, ks, vs))
    mask = _mask(mask_spec, gen)
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dt)
    opts = dict(attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    want = F.scaled_dot_product_attention(q, k, v, **opts)
    got = seqcore.scaled_dot_product_attention(q, k, v, **opts)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_close(got.detach().numpy(), want.detach().numpy(), dtype, name="out")
    g_want = torch.autograd.grad(want.sum(), (q, k, v))
    g_got = torch.autograd.grad(got.sum(), (q, k, v))
    for name, a, b in zip("qkv", g_got, g_want):
        assert_close(a.numpy(), b.numpy(), dtype, grad=True, name=f"d{name}")
    numpy_opts = dict(opts, attn_mask=None if mask is None else mask.numpy())
    arrays = [t.detach().numpy() for t in (q, k, v)]
    got_np = seqcore.scaled_dot_product_attention(*arrays, **numpy_opts)
    assert isinstance(got_np, np.ndarray)
    assert_close(got_np, want.detach().numpy(), dtype, name="out (NumPy)")


def test_float_mask_gets_its_gradient():
    require_backend("c")
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum(), mask)
    got = torch.autograd.grad(seqcore.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum(), mask)
    assert_close(got[0].numpy(), want[0].numpy(), "float64", grad=True, name="dmask")


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(query=torch.zeros(1, 4, 3, 8), key=torch.zeros(1, 2, 5, 8), value=torch.zeros(1, 2, 5, 8)),
     ValueError, ["broadcast"]),  # 4 heads against 2 without enable_gqa (torch: an error too)
    (dict(query=torch.zeros(1, 3, 3, 8), key=torch.zeros(1, 2, 5, 8), value=torch.zeros(1, 2, 5, 8),
          enable_gqa=True), ValueError, ["divides"]),
    (dict(attn_mask=torch.ones(3, 5, dtype=torch.bool), is_causal=True), ValueError, ["not both"]),
    (dict(dropout_p=1.5), ValueError, ["dropout_p"]),
    (dict(dropout_p=1.0), ValueError, ["dropout_p"]),
    (dict(attn_mask=torch.ones(4, 5)), ValueError, ["broadcast"]),
    (dict(attn_mask=torch.ones(3, 5, dtype=torch.int32)), TypeError, ["attn_mask"]),
    (dict(key=torch.zeros(1, 2, 5, 7)), ValueError, ["disagree"]),
    (dict(is_causal=1), TypeError, ["is_causal"]),
])
def test_errors(kwargs, exc, words):
    args = dict(query=torch.zeros(1, 2, 3, 8), key=torch.zeros(1, 2, 5, 8), value=torch.zeros(1, 2, 5, 8))
    args.update(kwargs)
    with pytest.raises(exc) as info:
        seqcore.scaled_dot_product_attention(**args)
    for w in words:
        assert w in str(info.value), f"{w!r} not in message: {info.value}"
