"""Triton attention with a KV cache (kernels/attention_kvcache.py) against
seqcore.reference.attention_with_kvcache.

Dense and paged caches (block tables in random order, spare blocks no table names), ragged
cache_seqlens from 0 up to a full cache, decoding (Sq 1) and chunked prefill (Sq 7, 64), new keys
appended in place. Every cache row the call must not write holds a sentinel (+-256, random
signs: NaN-free, exact in every dtype, and large enough that reading one as a key or value
shows in the output); after the call the whole cache must equal, bit for bit, the reference's
cache after its own append. Output buffers the kernels allocate are NaN-poisoned.
Shapes stay small: the interpreter runs one program at a time.
"""
import math

import numpy as np
import pytest

from conftest import HAS_TRITON, assert_close, to_f64

if HAS_TRITON:
    import torch

import seqcore
from seqcore import reference
from seqcore._problem import make_attn_params

pytestmark = [
    pytest.mark.triton,
    pytest.mark.usefixtures("poisoned_empty"),
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]

DTYPES = ["float32", "float16", "bfloat16"]
SENTINEL = 256.0


def sentinels(rng, shape):
    return SENTINEL * rng.choice([-1.0, 1.0], size=shape)


def to_torch(x, dtype, device):
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(
        device=device, dtype=getattr(torch, dtype))


def make_cache(rng, B, Hkv, d, lens, S_max, block_size, table=None):
    """(cache, block_table): rows at positions < lens[b] random, every other row a sentinel.
    Dense: (B, Hkv, S_max, d). Paged (block_size given): each sequence owns S_max / block_size
    blocks drawn at random from a pool with two spare blocks, in random order (or the blocks of
    `table`, to make the v cache of the same table)."""
    if block_size is None:
        cache = sentinels(rng, (B, Hkv, S_max, d))
        for b, n in enumerate(lens):
            cache[b, :, :n] = rng.standard_normal((Hkv, n, d))
        return cache, None
    per_seq = S_max // block_size
    n_blocks = B * per_seq + 2
    if table is None:
        table = rng.permutation(n_blocks)[:B * per_seq].reshape(B, per_seq).astype(np.int32)
    cache = sentinels(rng, (n_blocks, Hkv, block_size, d))
    for b, n in enumerate(lens):
        blk, slot = reference.cache_rows(b, np.arange(n), table, block_size)
        cache[blk, :, slot] = rng.standard_normal((n, Hkv, d))
    return cache, table


def check_kvcache(rng, device, dtype, *, B=3, Hq=4, Hkv=2, Sq=1, D=16, Dv=16, S_new=0, lens,
                  S_max=64, block_size=None, causal=False, window=None, softcap=None, scale=None,
                  num_splits=None):
    """Run the triton backend's attention_kvcache_fwd and the reference on the same (rounded)
    inputs; compare out, lse and the updated caches. Returns (out, lse)."""
    from seqcore.kernels.attention_kvcache import attention_kvcache_fwd as launcher
    from seqcore._triton_attention import attention_kvcache_fwd as adapter

    lens = np.asarray(lens, dtype=np.int32)
    assert lens.max() + S_new <= S_max
    k_np, table = make_cache(rng, B, Hkv, D, lens, S_max, block_size)
    v_np, _ = make_cache(rng, B, Hkv, Dv, lens, S_max, block_size, table)
    k_cache, v_cache = to_torch(k_np, dtype, device), to_torch(v_np, dtype, device)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    q = to_torch(rng.standard_normal((B, Hq, Sq, D)), dtype, device)
    k_new = v_new = None
    if S_new:
        k_new = to_torch(rng.standard_normal((B, Hkv, S_new, D)), dtype, device)
        v_new = to_torch(rng.standard_normal((B, Hkv, S_new, Dv)), dtype, device)
    lens_t = torch.from_numpy(lens).to(device)
    table_t = None if table is None else torch.from_numpy(table).to(device)

    scale = 1.0 / math.sqrt(D) if scale is None else scale
    p = make_attn_params(scale, causal, window, softcap)
    args = (q, k_cache, v_cache, k_new, v_new, lens_t, table_t, p)
    out, lse = launcher(*args, num_splits=num_splits) if num_splits else adapter(*args)

    k_ref, v_ref = to_f64(k_before), to_f64(v_before)
    ref_out, ref_lse = reference.attention_with_kvcache(
        to_f64(q), k_ref, v_ref, to_f64(k_new), to_f64(v_new), cache_seqlens=lens,
        block_table=table, causal=causal, window=window, softcap=softcap, scale=scale,
        return_lse=True)
    assert out.dtype == q.dtype and out.shape == (B, Hq, Sq, Dv)
    assert lse.dtype == torch.float32 and lse.shape == (B, Hq, Sq)
    assert_close(out, ref_out, dtype, name="out")
    assert_close(lse, ref_lse, "float32", name="lse", scale=4.0)
    # the caches: new rows written, every other row (sentinels included) bit for bit unchanged
    assert np.array_equal(to_f64(k_cache), k_ref), "k_cache differs from the reference's"
    assert np.array_equal(to_f64(v_cache), v_ref), "v_cache differs from the reference's"
    written = np.zeros(k_np.shape[0:1] + k_np.shape[2:3], dtype=bool)  # (row block, slot)
    for b, n in enumerate(lens):
        written[reference.cache_rows(b, np.arange(n, n + S_new), table, block_size)] = True
    untouched = torch.from_numpy(~written).to(device)[:, None, :].expand(k_cache.shape[:3])
    assert torch.equal(k_cache[untouched], k_before[untouched])
    assert torch.equal(v_cache[untouched], v_before[untouched])
    return out, lse


# lens: ragged, with an empty cache and (after S_new) a full one
CASES = [
    dict(Sq=1, S_new=1, lens=[0, 37, 63]),                                       # dense decode
    dict(Sq=1, S_new=0, Hkv=1, D=8, lens=[0, 50, 64], block_size=16,             # MQA, paged;
         causal=True),                                                           # b=0 sees none
    dict(Sq=7, S_new=5, Dv=8, lens=[11, 0, 59], block_size=32, causal=True),     # Dv != D
    dict(Sq=7, S_new=1, Hkv=1, lens=[30, 6, 63], block_size=16, window=(10, 0)),
    dict(Sq=7, S_new=5, lens=[21, 59, 3], window=(4, 2), softcap=2.0, scale=0.5),
    dict(B=2, Sq=64, S_new=5, D=8, Dv=16, lens=[70, 0], S_max=96, block_size=32,  # 2 row tiles
         causal=True),
    dict(B=2, Sq=64, S_new=64, Hkv=1, D=8, Dv=8, lens=[16, 0], S_max=96,         # prefill chunk
         block_size=16, causal=True, softcap=5.0),
]


def case_id(case):
    layout = f"paged{case['block_size']}" if case.get("block_size") else "dense"
    extra = ",".join(f"{k}={case[k]}" for k in ("causal", "window", "softcap") if k in case)
    return f"{layout}-Sq{case['Sq']}-new{case['S_new']}-Hkv{case.get('Hkv', 2)}-{extra}"


@pytest.mark.parametrize("dtype", DTYPES, indirect=True)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kvcache(rng, triton_device, dtype, case):
    out, lse = check_kvcache(rng, triton_device, dtype, **case)
    lens = np.asarray(case["lens"]) + case["S_new"]
    for b in np.flatnonzero(lens == 0):  # a sequence without keys: out 0, lse -inf
        assert torch.all(out[b] == 0) and torch.all(lse[b] == float("-inf"))


@pytest.mark.parametrize("num_splits", [2, 3, 5])
@pytest.mark.parametrize("block_size", [None, 16])
def test_splits(rng, triton_device, num_splits, block_size):
    """Forced key splits: the short sequences leave whole splits without keys (lse -inf
    partials), the window leaves splits without visible keys for the long one."""
    check_kvcache(rng, triton_device, "float32", Hq=2, Hkv=1, Sq=3, D=8, Dv=8, S_new=1,
                  lens=[0, 13, 90], S_max=96, block_size=block_size, window=(20, 0),
                  num_splits=num_splits)


def test_rows_without_keys(rng, triton_device):
    """Sq > L with causal: the first Sq - L rows of that sequence see no key."""
    out, lse = check_kvcache(rng, triton_device, "float32", B=2, Sq=7, S_new=1, lens=[2, 40],
                             block_size=16, causal=True)
    assert torch.all(lse[0, :, :4] == float("-inf")) and torch.all(out[0, :, :4] == 0)
    assert torch.isfinite(lse[0, :, 4:]).all() and torch.isfinite(lse[1]).all()


def test_tile_choices(monkeypatch):
    """On a GPU the key tile divides every block size (no tile crosses a block); the split
    count stays within its bounds."""
    from seqcore.kernels import attention_kvcache as kv

    monkeypatch.setattr(kv, "interpreted", lambda: False)
    for block_size in (16, 32, 48, 64, 80, 128, 256):
        for D, Dv in ((64, 64), (128, 128), (256, 256), (64, 256)):
            n = kv.block_n(D, Dv, block_size)
            assert n >= 16 and block_size % n == 0
    assert kv.block_n(128, 128) == 64 and kv.block_n(256, 128) == 32
    assert kv.block_m(1, 128, 128, 2) == 16 and kv.block_m(48, 128, 128, 2) == 64
    assert kv.block_m(256, 128, 128, 2) == 128 and kv.block_m(256, 256, 256, 2) == 64
    assert kv.block_m(256, 64, 64, 4) == 16
    cpu = torch.device("cpu")
    assert kv.default_num_splits(cpu, 1, 1, 64) == 1
    assert kv.default_num_splits(cpu, 1, 10**6, 64) == 4
    assert kv.default_num_splits(cpu, 8, 10**6, 64) == 1


def test_public_api(rng, triton_device):
    """seqcore.attention_with_kvcache routes to this backend (skipped until the API exists)."""
    if not hasattr(seqcore, "attention_with_kvcache"):
        pytest.skip("seqcore.attention_with_kvcache is not there yet")
    lens = np.array([5, 0], dtype=np.int32)
    k_np, table = make_cache(rng, 2, 1, 8, lens, 32, 16)
    v_np, _ = make_cache(rng, 2, 1, 8, lens, 32, 16, table)
    k_cache, v_cache = to_torch(k_np, "float32", triton_device), to_torch(v_np, "float32",
                                                                        triton_device)
    k_ref, v_ref = to_f64(k_cache), to_f64(v_cache)
    q = to_torch(rng.standard_normal((2, 2, 3, 8)), "float32", triton_device)
    k = to_torch(rng.standard_normal((2, 1, 3, 8)), "float32", triton_device)
    v = to_torch(rng.standard_normal((2, 1, 3, 8)), "float32", triton_device)
    lens_t = torch.from_numpy(lens).to(triton_device)
    table_t = torch.from_numpy(table).to(triton_device)
    out, lse = seqcore.attention_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens_t,
                                              block_table=table_t, causal=True, return_lse=True,
                                              backend="triton")
    ref_out, ref_lse = reference.attention_with_kvcache(
        to_f64(q), k_ref, v_ref, to_f64(k), to_f64(v), cache_seqlens=lens, block_table=table,
        causal=True, return_lse=True)
    assert_close(out, ref_out, "float32", name="out")
    assert_close(lse, ref_lse, "float32", name="lse", scale=4.0)
    assert np.array_equal(to_f64(k_cache), k_ref) and np.array_equal(to_f64(v_cache), v_ref)
