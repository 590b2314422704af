"""Triton attention forward (dense, varlen, split-KV decode) against seqcore.reference.

Runs under TRITON_INTERPRET=1 on torch CPU tensors (float32, float16) on a machine without a GPU,
and on CUDA tensors (bfloat16 too) where there is one. Every output buffer the kernels allocate
is poisoned with NaN first (see `poisoned_empty`), so a row a kernel forgets to write fails.
Shapes stay small: the interpreter runs one program at a time.
"""

import numpy as np
import pytest

from conftest import HAS_TRITON, assert_close, to_f64

if HAS_TRITON:
    import torch

import seqcore
from seqcore import reference

pytestmark = [
    pytest.mark.triton,
    pytest.mark.usefixtures("poisoned_empty"),
    # the interpreter itself (triton/runtime/interpreter.py) turns 1-element arrays into loop
    # bounds the way NumPy 1.25+ deprecates; nothing in seqcore's code
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]

DTYPES = ["float32", "float16", "bfloat16"]


def tensor(rng, shape, dtype, device, scale=1.0):
    x = (scale * rng.standard_normal(shape)).astype(np.float32)
    return torch.from_numpy(x).to(device=device, dtype=getattr(torch, dtype))


def qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype, device):
    return (tensor(rng, (B, Hq, Sq, D), dtype, device), tensor(rng, (B, Hkv, Sk, D), dtype, device),
            tensor(rng, (B, Hkv, Sk, Dv), dtype, device))


def check_attention(q, k, v, dtype, bias=None, **opts):
    """Triton out and lse against the float64 reference on the same (rounded) inputs."""
    out, lse = seqcore.attention(q, k, v, bias=bias, return_lse=True, backend="triton", **opts)
    ref_out, ref_lse = reference.attention(to_f64(q), to_f64(k), to_f64(v), bias=to_f64(bias),
                                           return_lse=True, **opts)
    assert out.dtype == q.dtype and out.device == q.device and lse.dtype == torch.float32
    assert_close(out, ref_out, dtype, name="out")
    # lse is computed in float32 from the given (rounded) inputs, whatever their dtype
    assert_close(lse, ref_lse, "float32", name="lse", scale=4.0)
    return out, lse


# (B, Hq, Hkv, Sq, Sk, D, Dv): GQA and MQA, Sq < Sk, Sq > Sk, non-power-of-two dims
SHAPES = [
    (2, 2, 2, 16, 16, 16, 16),
    (1, 4, 2, 37, 23, 24, 24),
    (1, 3, 1, 19, 50, 80, 3),
    (2, 2, 1, 1, 33, 3, 1),
]
MASKS = [
    dict(),
    dict(causal=True),
    dict(window=(5, 2)),
    dict(window=(3, -1), causal=True),
    dict(window=(-1, 4)),
    dict(window=(0, 0)),
]


@pytest.mark.parametrize("dtype", DTYPES, indirect=True)
@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_masks_shapes(rng, triton_device, dtype, shape, mask):
    B, Hq, Hkv, Sq, Sk, D, Dv = shape
    check_attention(*qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype, triton_device), dtype, **mask)


@pytest.mark.parametrize("dtype", DTYPES, indirect=True)
@pytest.mark.parametrize("mask", [dict(causal=True), dict(window=(40, 30)),
                                  dict(window=(33, -1)), dict(window=(17, 20), causal=True)],
                         ids=str)
@pytest.mark.parametrize("Sq, Sk", [(64, 64), (48, 64), (64, 41)])
def test_long_band(rng, triton_device, dtype, Sq, Sk, mask):
    """Bands wide enough that a query block has masked edge blocks on both sides of unmasked
    interior ones (under the interpreter's 16 x 16 tiles)."""
    check_attention(*qkv(rng, 1, 2, 1, Sq, Sk, 16, 8, dtype, triton_device), dtype, **mask)


@pytest.mark.parametrize("dtype", DTYPES, indirect=True)
@pytest.mark.parametrize("D, Dv", [(1, 1), (3, 80), (80, 24), (24, 3)])
def test_head_dims(rng, triton_device, dtype, D, Dv):
    check_attention(*qkv(rng, 1, 2, 1, 21, 18, D, Dv, dtype, triton_device), dtype, causal=True)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"], indirect=True)
def test_head_dim_256(rng, triton_device, dtype):
    check_attention(*qkv(rng, 1, 1, 1, 17, 20, 256, 256, dtype, triton_device), dtype,
                    window=(6, 1))


@pytest.mark.parametrize("dtype", DTYPES, indirect=True)
@pytest.mark.parametrize("mask", [dict(), dict(causal=True), dict(window=(4, 4))], ids=str)
@pytest.mark.parametrize("bias_shape", ["full", "heads", "keys", "batch_keys", "transposed"])
def test_bias(rng, triton_device, dtype, bias_shape, mask):
    B, Hq, Hkv, Sq, Sk, D, Dv = 2, 4, 2, 20, 35, 16, 24
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype, triton_device)
    # full scores shape; ALiBi-like per head; one row broadcast; a per-batch key vector;
    # a strided view (key stride != 1), read in place through its strides
    shape = {"full": (B, Hq, Sq, Sk), "heads": (Hq, 1, Sk), "keys": (Sq, Sk),
             "batch_keys": (B, 1, 1, Sk), "transposed": (B, Hq, Sk, Sq)}[bias_shape]
    bias = tensor(rng, shape, dtype, triton_device, scale=2.0)
    if bias_shape == "transposed":
        bias = bias.transpose(-1, -2)
    check_attention(q, k, v, dtype, bias=bias, **mask)


@pytest.mark.parametrize("dtype", DTYPES, indirect=True)
@pytest.mark.parametrize("causal", [False, True])
def test_bias_padding_mask(rng, triton_device, dtype, causal):
    """-inf key padding per batch element; batch 1 masks every key (its rows see none)."""
    B, Hq, Sq, Sk, D = 3, 2, 18, 40, 16
    q, k, v = qkv(rng, B, Hq, Hq, Sq, Sk, D, D, dtype, triton_device)
    valid = np.array([Sk - 7, 0, 9])
    pad = np.where(np.arange(Sk)[None, :] < valid[:, None], 0.0, -np.inf)
    bias = torch.from_numpy(pad[:, None, None, :]).to(q.device, getattr(torch, dtype))
    out, lse = check_attention(q, k, v, dtype, bias=bias, causal=causal)
    assert torch.all(out[1] == 0) and torch.all(lse[1] == float("-inf"))


@pytest.mark.parametrize("dtype", DTYPES, indirect=True)
@pytest.mark.parametrize("mask", [dict(), dict(causal=True), dict(window=(2, 5))], ids=str)
@pytest.mark.parametrize("softcap", [0.5, 30.0])
def test_softcap(rng, triton_device, dtype, softcap, mask):
    q, k, v = qkv(rng, 1, 2, 2, 25, 30, 24, 16, dtype, triton_device)
    check_attention(q, k, v, dtype, softcap=softcap, scale=0.7, **mask)


@pytest.mark.parametrize("dtype", ["float32", "float16"], indirect=True)
def test_softcap_with_bias_gqa(rng, triton_device, dtype):
    """Also a float32 bias with float16 q/k/v: the kernel reads bias in its own dtype."""
    q, k, v = qkv(rng, 2, 4, 1, 17, 26, 8, 8, dtype, triton_device)
    bias = tensor(rng, (4, 17, 26), "float32", triton_device)
    check_attention(q, k, v, dtype, bias=bias, softcap=3.0, causal=True)


@pytest.mark.parametrize("dtype", ["float32", "float16"], indirect=True)
@pytest.mark.parametrize("opts, n_empty", [
    (dict(causal=True), 30 - 12),                  # Sq > Sk: the first Sq - Sk rows see no key
    (dict(window=(0, 0)), 30 - 12),
    (dict(window=(2, -1)), 0),
    (dict(window=(-1, 40), causal=False), 0),
])
def test_rows_without_keys(rng, triton_device, dtype, opts, n_empty):
    q, k, v = qkv(rng, 1, 2, 1, 30, 12, 16, 5, dtype, triton_device)
    out, lse = check_attention(q, k, v, dtype, **opts)
    empty = torch.isinf(lse).all(dim=(0, 1))
    assert int(empty.sum()) == n_empty and bool(empty[:n_empty].all())
    assert torch.all(out[:, :, :n_empty] == 0)


@pytest.mark.parametrize("Sq, Sk", [(0, 5), (5, 0), (0, 0)])
def test_zero_lengths(rng, triton_device, Sq, Sk):
    q, k, v = qkv(rng, 2, 2, 1, Sq, Sk, 8, 3, "float32", triton_device)
    out, lse = check_attention(q, k, v, "float32", causal=True)
    assert out.shape == (2, 2, Sq, 3) and lse.shape == (2, 2, Sq)


def test_batch_dims_and_no_lse(rng, triton_device):
    """*batch of any rank (including none); return_lse=False gives the tensor alone."""
    q = tensor(rng, (2, 3, 2, 9, 8), "float32", triton_device)
    k = tensor(rng, (2, 3, 1, 11, 8), "float32", triton_device)
    v = tensor(rng, (2, 3, 1, 11, 4), "float32", triton_device)
    out = seqcore.attention(q, k, v, causal=True, backend="triton")
    ref = reference.attention(to_f64(q), to_f64(k), to_f64(v), causal=True)
    assert isinstance(out, torch.Tensor)
    assert_close(out, ref, "float32", name="out")
    check_attention(q[0, 0], k[0, 0], v[0, 0], "float32", window=(2, 2))


# ----------------------------------------------------------------------------------------------
# Packed sequences


def check_varlen(rng, device, dtype, lens_q, lens_k, Hq=2, Hkv=1, D=16, Dv=24, bounds=None,
                 **opts):
    """bounds: max_seqlen_q/k passed to seqcore only (the reference needs none)."""
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    q = tensor(rng, (int(cu_q[-1]), Hq, D), dtype, device)
    k = tensor(rng, (int(cu_k[-1]), Hkv, D), dtype, device)
    v = tensor(rng, (int(cu_k[-1]), Hkv, Dv), dtype, device)
    cu_qt, cu_kt = (torch.from_numpy(c).to(device) for c in (cu_q, cu_k))
    out, lse = seqcore.attention_varlen(q, k, v, cu_qt, cu_kt, return_lse=True, backend="triton",
                                        **(bounds or {}), **opts)
    ref_out, ref_lse = reference.attention_varlen(to_f64(q), to_f64(k), to_f64(v), cu_q, cu_k,
                                                  return_lse=True, **opts)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert_close(out, ref_out, dtype, name="out")
    assert_close(lse, ref_lse, "float32", name="lse", scale=4.0)
    return out, lse


@pytest.mark.parametrize("dtype", DTYPES, indirect=True)
@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(window=(3, 1)),
                                  dict(causal=True, softcap=2.0)], ids=str)
@pytest.mark.parametrize("lens_q, lens_k", [
    ([5, 0, 33, 1], [5, 0, 33, 1]),       # self-attention, an empty sequence
    ([7, 20, 0, 3], [12, 4, 6, 0]),       # Sq != Sk both ways; no keys for the last sequence
], ids=["same", "cross"])
def test_varlen(rng, triton_device, dtype, lens_q, lens_k, opts):
    check_varlen(rng, triton_device, dtype, lens_q, lens_k, **opts)


def test_varlen_gqa_odd_dims(rng, triton_device):
    check_varlen(rng, triton_device, "float32", [9, 17], [30, 2], Hq=6, Hkv=2, D=3, Dv=80,
                 causal=True, window=(4, -1))


def test_varlen_max_seqlen_above_longest(rng, triton_device):
    """max_seqlen_q/k given larger than the longest sequence (torch.compile passes the caller's
    bounds as they are): the programs past each sequence's end must write nothing."""
    check_varlen(rng, triton_device, "float32", [7, 20, 0, 3], [12, 4, 6, 0], causal=True,
                 bounds=dict(max_seqlen_q=45, max_seqlen_k=70))


def test_varlen_all_empty(rng, triton_device):
    out, lse = check_varlen(rng, triton_device, "float32", [0, 0], [0, 0])
    assert out.shape == (0, 2, 24) and lse.shape == (0, 2)


# ----------------------------------------------------------------------------------------------
# Split-KV decode


@pytest.fixture
def decode_always(monkeypatch):
    """Route every dense call with few query rows per kv head through the decode kernel."""
    from seqcore import _triton_attention

    monkeypatch.setattr(_triton_attention, "DECODE_MIN_KEYS", 1)
    return _triton_attention


def test_decode_rule(triton_device):
    from seqcore import _triton_attention as backend

    def shapes(Hq, Hkv, Sq, Sk):
        return torch.empty(1, Hq, Sq, 8), torch.empty(1, Hkv, Sk, 8)

    assert backend.use_decode(*shapes(32, 8, 1, 4096))
    assert backend.use_decode(*shapes(8, 1, 8, 4096))          # 64 rows per kv head
    assert not backend.use_decode(*shapes(8, 1, 9, 4096))      # 72 rows: the dense kernel
    assert not backend.use_decode(*shapes(32, 8, 1, backend.DECODE_MIN_KEYS - 1))
    assert not backend.use_decode(*shapes(4, 4, 0, 4096))


def test_decode_kernel_row_limit(rng, triton_device):
    from seqcore._problem import make_attn_params
    from seqcore.kernels.attention_decode import attention_decode_fwd

    q, k, v = qkv(rng, 1, 8, 1, 17, 4, 8, 8, "float32", triton_device)  # 136 rows per kv head
    with pytest.raises(ValueError, match="136"):
        attention_decode_fwd(q, k, v, None, make_attn_params(1.0, False, None, None))


@pytest.mark.parametrize("dtype", DTYPES, indirect=True)
@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(window=(20, 0)),
                                  dict(softcap=1.5, window=(-1, 3))], ids=str)
@pytest.mark.parametrize("shape", [(2, 4, 1, 1, 70, 24, 24), (1, 6, 2, 4, 45, 80, 3),
                                   (1, 2, 2, 3, 2, 16, 16)], ids=str)
def test_decode_public_api(rng, triton_device, decode_always, dtype, shape, opts):
    B, Hq, Hkv, Sq, Sk, D, Dv = shape
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype, triton_device)
    assert decode_always.use_decode(q, k)
    check_attention(q, k, v, dtype, **opts)


@pytest.mark.parametrize("dtype", ["float32", "float16"], indirect=True)
def test_decode_bias(rng, triton_device, decode_always, dtype):
    q, k, v = qkv(rng, 2, 4, 2, 2, 50, 16, 16, dtype, triton_device)
    pad = np.where(np.arange(50) < np.array([[31], [0]]), 0.0, -np.inf)  # batch 1 sees nothing
    bias = torch.from_numpy(pad[:, None, None, :]).to(q.device, getattr(torch, dtype))
    alibi = tensor(rng, (4, 1, 50), dtype, triton_device)
    out, lse = check_attention(q, k, v, dtype, bias=bias + alibi, causal=True)
    assert torch.all(out[1] == 0) and torch.all(lse[1] == float("-inf"))


@pytest.mark.parametrize("num_splits", [1, 2, 3, 7])
@pytest.mark.parametrize("opts", [dict(causal=True), dict(window=(5, 0))], ids=str)
def test_decode_splits_match_dense(rng, triton_device, num_splits, opts):
    """Every split count gives the dense kernel's answer, also when the band leaves whole
    splits (and, with Sq > Sk, whole rows) without keys."""
    from seqcore._problem import make_attn_params
    from seqcore.kernels.attention import attention_fwd
    from seqcore.kernels.attention_decode import attention_decode_fwd

    for Sq, Sk in [(3, 100), (5, 3)]:
        q, k, v = qkv(rng, 1, 4, 2, Sq, Sk, 16, 8, "float32", triton_device)
        p = make_attn_params(0.3, opts.get("causal", False), opts.get("window"), None)
        out, lse = attention_decode_fwd(q, k, v, None, p, num_splits=num_splits)
        dense_out, dense_lse = attention_fwd(q, k, v, None, p)
        ref_out, ref_lse = reference.attention(to_f64(q), to_f64(k), to_f64(v), scale=0.3,
                                               return_lse=True, **opts)
        assert_close(out, dense_out, "float32", name="out vs dense")
        assert_close(lse, dense_lse, "float32", name="lse vs dense", scale=4.0)
        assert_close(out, ref_out, "float32", name="out")
        assert_close(lse, ref_lse, "float32", name="lse", scale=4.0)


def test_decode_row_tiles(rng, triton_device):
    """float32 "ieee" dots cut the query rows of a kv head into tiles (decode_block_m; here 48
    rows of a 200-wide head: three 16-row tiles), each its own program: every split count gives
    the reference's answer, with a band and a bias."""
    from seqcore._problem import make_attn_params
    from seqcore.kernels import attention_decode as dec

    B, Hq, Hkv, Sq, Sk, D = 1, 12, 1, 4, 40, 200
    assert dec.decode_block_m(Sq * Hq // Hkv, D, D, True) == 16
    assert dec.decode_block_m(Sq * Hq // Hkv, D, D, False) == 64
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, D, D, "float32", triton_device)
    bias = tensor(rng, (B, Hq, Sq, Sk), "float32", triton_device)
    for num_splits, window in ((1, None), (3, (20, 0))):
        p = make_attn_params(0.1, True, window, None)
        out, lse = dec.attention_decode_fwd(q, k, v, bias, p, num_splits=num_splits)
        ref_out, ref_lse = reference.attention(to_f64(q), to_f64(k), to_f64(v), scale=0.1,
                                               bias=to_f64(bias), causal=True, window=window,
                                               return_lse=True)
        assert_close(out, ref_out, "float32", name="out")
        assert_close(lse, ref_lse, "float32", name="lse", scale=4.0)


# ----------------------------------------------------------------------------------------------
# Dropout: the kernels regenerate the mask of seqcore/reference/dropout.py from the seed. These
# call the backend (seqcore/_triton_attention.py) with the normalized problem, as
# seqcore.attention does, so that seeds the public API never draws (>= 2**63) are tested too;
# tests/test_attention_triton_bwd.py goes through seqcore.attention's autograd with dropout.

DROPOUT_PS = [0.0, 0.17, 0.5]
# p = 0 is the path without dropout, which the tests above run in every dtype
DROPOUT_DTYPES_PS = [("float32", p) for p in DROPOUT_PS] + [("float16", 0.17), ("float16", 0.5)]


def dropout_problem(q, dropout_p, seed, scale=None, causal=False, window=None, softcap=None):
    from seqcore._problem import make_attn_params

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return make_attn_params(scale, causal, window, softcap, dropout_p, seed)


def check_dropout(q, k, v, dtype, dropout_p, seed, bias=None, **opts):
    """The backend's dense forward (or decode, where it routes there) with dropout against the
    reference with the same seed: out, and lse (that of the probabilities before dropout)."""
    from seqcore import _triton_attention

    p = dropout_problem(q, dropout_p, seed, **opts)
    flat_bias = None if bias is None else bias.expand(*q.shape[:3], k.shape[2])
    out, lse = _triton_attention.attention_fwd(q, k, v, flat_bias, p)
    ref_out, ref_lse = reference.attention(to_f64(q), to_f64(k), to_f64(v), bias=to_f64(bias),
                                           return_lse=True, dropout_p=dropout_p,
                                           dropout_seed=seed, **opts)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    # kept probabilities are scaled by 1 / (1 - p): outputs that much larger
    assert_close(out, ref_out, dtype, name="out", scale=1.0 / (1.0 - dropout_p))
    assert_close(lse, ref_lse, "float32", name="lse", scale=4.0)
    return out, lse


@pytest.mark.parametrize("dtype, dropout_p", DROPOUT_DTYPES_PS, indirect=["dtype"])
@pytest.mark.parametrize("shape, opts, with_bias", [
    ((2, 4, 2, 37, 23, 24, 24), dict(causal=True), False),     # GQA, Sq > Sk (rows with no key)
    ((1, 3, 1, 19, 50, 80, 3), dict(window=(5, 2)), False),    # MQA, odd head dims
    ((2, 2, 2, 16, 33, 16, 16), dict(softcap=2.0), True),      # bias and softcap, ragged keys
], ids=["gqa_causal", "mqa_window_odd", "bias_softcap"])
def test_dropout(rng, triton_device, dtype, shape, opts, with_bias, dropout_p):
    B, Hq, Hkv, Sq, Sk, D, Dv = shape
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype, triton_device)
    bias = tensor(rng, (Hq, Sq, Sk), dtype, triton_device) if with_bias else None
    check_dropout(q, k, v, dtype, dropout_p, 1234, bias=bias, **opts)


def test_dropout_lse_is_that_before_dropout(rng, triton_device):
    """The running max and sum see every probability: lse is bit for bit that without dropout."""
    from seqcore import _triton_attention

    q, k, v = qkv(rng, 1, 2, 1, 21, 40, 16, 8, "float32", triton_device)
    _, lse_plain = _triton_attention.attention_fwd(q, k, v, None,
                                                   dropout_problem(q, 0.0, 0, causal=True))
    _, lse = _triton_attention.attention_fwd(q, k, v, None,
                                             dropout_problem(q, 0.5, 99, causal=True))
    assert torch.equal(lse, lse_plain)


@pytest.mark.parametrize("dropout_p", DROPOUT_PS)
@pytest.mark.parametrize("lens_q, lens_k, Hq, Hkv, D, Dv, opts", [
    ([5, 0, 33, 1], [5, 0, 33, 1], 2, 1, 16, 24, dict(causal=True)),
    ([7, 20, 0, 3], [12, 4, 6, 0], 6, 2, 3, 80, dict(window=(4, 2))),
], ids=["same_causal", "cross_window_gqa_odd"])
def test_dropout_varlen(rng, triton_device, lens_q, lens_k, Hq, Hkv, D, Dv, opts, dropout_p):
    """Positions count within each sequence, and the sequence index plays the batch's part."""
    from seqcore import _triton_attention

    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    q = tensor(rng, (int(cu_q[-1]), Hq, D), "float32", triton_device)
    k = tensor(rng, (int(cu_k[-1]), Hkv, D), "float32", triton_device)
    v = tensor(rng, (int(cu_k[-1]), Hkv, Dv), "float32", triton_device)
    p = dropout_problem(q, dropout_p, 2**40 + 7, **opts)
    out, lse = _triton_attention.attention_varlen_fwd(
        q, k, v, *(torch.from_numpy(c).to(triton_device) for c in (cu_q, cu_k)),
        max(lens_q), max(lens_k), p)
    ref_out, ref_lse = reference.attention_varlen(to_f64(q), to_f64(k), to_f64(v), cu_q, cu_k,
                                                  return_lse=True, dropout_p=dropout_p,
                                                  dropout_seed=2**40 + 7, **opts)
    assert_close(out, ref_out, "float32", name="out", scale=1.0 / (1.0 - dropout_p))
    assert_close(lse, ref_lse, "float32", name="lse", scale=4.0)


@pytest.mark.parametrize("dtype", ["float32", "float16"], indirect=True)
@pytest.mark.parametrize("dropout_p", [0.17, 0.5])
@pytest.mark.parametrize("shape, opts", [
    ((2, 4, 1, 1, 70, 24, 24), dict(window=(20, 0))),
    ((1, 6, 2, 4, 45, 80, 3), dict(causal=True)),     # rows of 3 query heads x 4 queries
], ids=str)
def test_dropout_decode(rng, triton_device, decode_always, dtype, shape, opts, dropout_p):
    """The split-KV decode kernel draws each row's mask from its own head and position."""
    B, Hq, Hkv, Sq, Sk, D, Dv = shape
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype, triton_device)
    assert decode_always.use_decode(q, k)
    check_dropout(q, k, v, dtype, dropout_p, 77, **opts)


def test_dropout_decode_matches_dense(rng, triton_device):
    from seqcore.kernels.attention import attention_fwd
    from seqcore.kernels.attention_decode import attention_decode_fwd

    q, k, v = qkv(rng, 1, 4, 2, 3, 100, 16, 8, "float32", triton_device)
    p = dropout_problem(q, 0.3, 5, causal=True)
    dense_out, dense_lse = attention_fwd(q, k, v, None, p)
    for num_splits in (1, 3):
        out, lse = attention_decode_fwd(q, k, v, None, p, num_splits=num_splits)
        assert_close(out, dense_out, "float32", name="out vs dense", scale=2.0)
        assert_close(lse, dense_lse, "float32", name="lse vs dense", scale=4.0)


def test_dropout_seeds(rng, triton_device):
    """The same seed gives the same output bit for bit, another seed another one; seeds of all
    64 bits (>= 2**63 too) follow the reference."""
    from seqcore import _triton_attention

    q, k, v = qkv(rng, 1, 2, 2, 20, 24, 16, 16, "float32", triton_device)

    def run(seed):
        return _triton_attention.attention_fwd(q, k, v, None,
                                               dropout_problem(q, 0.4, seed, causal=True))[0]

    first = run(11)
    assert torch.equal(run(11), first)
    assert (run(12) - first).abs().max() > 0.1
    for seed in (0, 2**32 - 1, 2**63 + 12345, 2**64 - 1):
        check_dropout(q, k, v, "float32", 0.4, seed, causal=True)


@pytest.mark.parametrize("kernel", ["dense", "decode"])
@pytest.mark.parametrize("dropout_p", [0.17, 0.5])
def test_dropout_mask_exact_and_kept_fraction(triton_device, dropout_p, kernel):
    """Read a forward kernel's mask itself: q = 0 makes every probability 1/Sk and v = I puts
    P~[i, j] in out[i, j], so out > 0 is the kept set. It must be the reference's, and keep a
    fraction 1 - p of the 64 x 256 draws (within 5 standard deviations: 0.02 at p = 0.5)."""
    from seqcore.kernels.attention import attention_fwd
    from seqcore.kernels.attention_decode import attention_decode_fwd
    from seqcore.reference.dropout import keep_mask

    Sq, Sk, seed = 64, 256, 2024
    q = torch.zeros(1, 1, Sq, 16, device=triton_device)
    k = torch.zeros(1, 1, Sk, 16, device=triton_device)
    v = torch.eye(Sk, device=triton_device)[None, None]
    fwd = attention_fwd if kernel == "dense" else attention_decode_fwd
    out = fwd(q, k, v, None, dropout_problem(q, dropout_p, seed))[0][0, 0]
    kept = (out > 0).cpu().numpy()
    np.testing.assert_array_equal(kept, keep_mask(seed, dropout_p, 0, 0, 1, np.arange(Sq),
                                                  np.arange(Sk)))
    sigma = np.sqrt(dropout_p * (1 - dropout_p) / kept.size)
    assert abs(kept.mean() - (1 - dropout_p)) < 5 * sigma, kept.mean()
    # the dropped ones are exactly 0, the kept ones 1 / (Sk * (1 - p))
    assert_close(out[out > 0], np.full(int(kept.sum()), 1 / (Sk * (1 - dropout_p))), "float32",
                 name="kept")


# ----------------------------------------------------------------------------------------------
# Options and random problems


def test_tf32_switch(monkeypatch):
    from seqcore.kernels._common import dot_precision

    monkeypatch.delenv("SEQCORE_TF32", raising=False)
    assert dot_precision(True) == "ieee" and dot_precision(False) == "ieee"
    monkeypatch.setenv("SEQCORE_TF32", "1")
    assert dot_precision(True) == "tf32" and dot_precision(False) == "ieee"


def test_random_problems(triton_device):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=30, deadline=None, derandomize=True)
    @hypothesis.given(B=st.integers(1, 2), group=st.integers(1, 3), Hkv=st.integers(1, 2),
                      Sq=st.integers(1, 48), Sk=st.integers(1, 48), D=st.integers(1, 40),
                      Dv=st.integers(1, 40), left=st.integers(-1, 40), right=st.integers(-1, 40),
                      causal=st.booleans(), softcap=st.sampled_from([None, 1.0]),
                      with_bias=st.booleans(), seed=st.integers(0, 2**31))
    def run(B, group, Hkv, Sq, Sk, D, Dv, left, right, causal, softcap, with_bias, seed):
        rng = np.random.default_rng(seed)
        q, k, v = qkv(rng, B, Hkv * group, Hkv, Sq, Sk, D, Dv, "float32", triton_device)
        bias = tensor(rng, (Sq, Sk), "float32", triton_device) if with_bias else None
        check_attention(q, k, v, "float32", bias=bias, causal=causal, window=(left, right),
                        softcap=softcap)

    run()
