"""seqcore.attention_with_kvcache on the C and NumPy backends (and CPU tensors through the
torch op): equal to seqcore.attention over each sequence's concatenated keys, for dense and
paged caches, random block tables, ragged lengths, Sq in {1, 7, 64}, S_new in {0, 1, 5};
the caches change only in the appended rows; bad input is refused before any kernel. The
Triton kernel has its own file (tests/test_kvcache_triton.py)."""
import numpy as np
import pytest

import seqcore
import seqcore.reference as ref
from seqcore import _backends, _c
from conftest import assert_close

pytestmark = [pytest.mark.usefixtures("every_isa")]  # the C kernels at every ISA level here

CAPACITY = 64  # positions per sequence


def make_call(rng, B=3, Hq=4, Hkv=2, D=16, Dv=12, Sq=1, S_new=1, block_size=None,
              dtype="float32", lens=None):
    """(q, k_cache, v_cache, k, v, cache_seqlens, block_table) with a random permuted block
    table when paged; every cache row starts as random data (rows past a sequence's length
    too: they must not matter, and must not change)."""
    cast = lambda a: a.astype(dtype)
    if lens is None:
        lens = rng.integers(0, CAPACITY - S_new + 1, size=B)
        lens[0] = 0                       # an empty cache
        lens[-1] = CAPACITY - S_new       # a full one
    lens = np.asarray(lens, np.int32)
    if block_size is None:
        rows, n_blocks, table = CAPACITY, B, None
    else:
        per_seq = CAPACITY // block_size
        rows, n_blocks = block_size, B * per_seq + 5
        table = rng.permutation(n_blocks)[:B * per_seq].reshape(B, per_seq).astype(np.int32)
    k_cache = cast(rng.standard_normal((n_blocks, Hkv, rows, D)))
    v_cache = cast(rng.standard_normal((n_blocks, Hkv, rows, Dv)))
    q = cast(rng.standard_normal((B, Hq, Sq, D)))
    k = cast(rng.standard_normal((B, Hkv, S_new, D))) if S_new else None
    v = cast(rng.standard_normal((B, Hkv, S_new, Dv))) if S_new else None
    return q, k_cache, v_cache, k, v, lens, table


def concatenated(k_cache, v_cache, k, v, lens, table, b):
    """Sequence b's keys and values as one (Hkv, L, d) array each, from the caches BEFORE the
    call plus the new ones: what attention_with_kvcache must attend over."""
    blk, slot = ref.cache_rows(b, np.arange(lens[b]), table, k_cache.shape[2])
    keys = np.swapaxes(k_cache[blk, :, slot, :], 0, 1)
    values = np.swapaxes(v_cache[blk, :, slot, :], 0, 1)
    if k is not None:
        keys, values = np.concatenate([keys, k[b]], 1), np.concatenate([values, v[b]], 1)
    return keys, values


def written_rows_mask(k_cache, lens, table, S_new):
    """(num_blocks, rows) bool: the cache slots a call writes."""
    mask = np.zeros(k_cache.shape[:1] + k_cache.shape[2:3], bool)
    for b, n in enumerate(lens):
        blk, slot = ref.cache_rows(b, np.arange(n, n + S_new), table, k_cache.shape[2])
        mask[blk, slot] = True
    return mask


def check_call(rng, backend, dtype="float32", causal=True, window=None, softcap=None, **shape):
    q, k_cache, v_cache, k, v, lens, table = make_call(rng, dtype=dtype, **shape)
    before_k, before_v = k_cache.copy(), v_cache.copy()
    opts = dict(causal=causal, window=window, softcap=softcap)
    out, lse = seqcore.attention_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens,
                                              block_table=table, return_lse=True,
                                              backend=backend, **opts)
    assert out.shape == q.shape[:3] + v_cache.shape[3:] and out.dtype == q.dtype
    for b in range(q.shape[0]):
        keys, values = concatenated(before_k, before_v, k, v, lens, table, b)
        want, want_lse = ref.attention(q[b], keys, values, return_lse=True, **opts)
        assert_close(out[b], want, dtype, name=f"out[{b}]")
        assert_close(lse[b], want_lse, "float32", name=f"lse[{b}]")
    # the caches: the new rows hold k and v exactly, every other row is bit-for-bit unchanged
    written = written_rows_mask(k_cache, lens, table, 0 if k is None else k.shape[2])
    for cache, before in ((k_cache, before_k), (v_cache, before_v)):
        np.testing.assert_array_equal(np.swapaxes(cache, 1, 2)[~written],
                                      np.swapaxes(before, 1, 2)[~written])
    if k is not None:
        for b in range(q.shape[0]):
            blk, slot = ref.cache_rows(b, np.arange(lens[b], lens[b] + k.shape[2]), table,
                                       k_cache.shape[2])
            np.testing.assert_array_equal(np.swapaxes(k_cache[blk, :, slot, :], 0, 1), k[b])
            np.testing.assert_array_equal(np.swapaxes(v_cache[blk, :, slot, :], 0, 1), v[b])


BACKENDS = ["c", "numpy"]


def _skip_missing(backend):
    if backend == "c" and _c.status():
        pytest.skip(f"C extension not built: {_c.status()}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_size", [None, 16, 32], ids=["dense", "paged16", "paged32"])
@pytest.mark.parametrize("Sq, S_new", [(1, 0), (1, 1), (7, 5), (64, 5), (7, 0)])
def test_equals_attention_over_the_concatenated_keys(rng, backend, block_size, Sq, S_new):
    _skip_missing(backend)
    check_call(rng, backend, Sq=Sq, S_new=S_new, block_size=block_size)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("opts", [dict(causal=False), dict(causal=True, window=(9, 2)),
                                  dict(causal=False, window=(-1, 3), softcap=2.5)],
                         ids=["full", "causal-window", "right-window-softcap"])
def test_options_and_dtypes_c(rng, dtype, opts):
    _skip_missing("c")
    check_call(rng, "c", dtype=dtype, Sq=7, S_new=1, block_size=16, **opts)


@pytest.mark.parametrize("Hq, Hkv", [(8, 1), (4, 4), (6, 2)])
def test_heads_and_head_dims(rng, Hq, Hkv):
    _skip_missing("c")
    check_call(rng, "c", Hq=Hq, Hkv=Hkv, D=5, Dv=33, Sq=3, S_new=2, block_size=16)


def test_long_sequences_split_between_threads(rng):
    """Few sequences x kv heads with many keys: the keys are split between tasks and the
    partial results merged (csrc/kvcache.c); several lengths, so splits end unevenly."""
    _skip_missing("c")
    global CAPACITY
    saved, CAPACITY = CAPACITY, 2048
    try:
        for lens in ([2047], [1000, 1300]):
            check_call(rng, "c", B=len(lens), Hq=4, Hkv=1, D=64, Dv=64, Sq=1, S_new=1,
                       block_size=64, lens=np.array(lens) - 1)
    finally:
        CAPACITY = saved


def test_rows_that_see_no_key(rng):
    """A window that ends before every key: out 0, lse -inf (as attention gives)."""
    _skip_missing("c")
    q, k_cache, v_cache, k, v, lens, table = make_call(rng, Sq=2, S_new=0, lens=[0, 5, 9])
    out, lse = seqcore.attention_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens,
                                              window=(0, -1), causal=True, return_lse=True)
    assert np.all(out[0] == 0) and np.all(np.isneginf(lse[0]))
    assert np.all(np.isfinite(lse[1:]))


def test_cpu_tensors_through_the_op(rng):
    """CPU tensors (float32 in place; float16 written back through a float32 copy), with
    and without autograd in the picture: the same answer and the same cache updates."""
    torch = pytest.importorskip("torch")
    _skip_missing("c")
    for dtype in ("float32", "float16"):
        q, k_cache, v_cache, k, v, lens, table = make_call(rng, Sq=3, S_new=2, block_size=16,
                                                           dtype=dtype)
        want = seqcore.attention_with_kvcache(q, k_cache.copy(), v_cache.copy(), k, v,
                                              cache_seqlens=lens, block_table=table, causal=True)
        t = [torch.from_numpy(a) for a in (q, k_cache, v_cache, k, v, lens, table)]
        for grad in (False, True):
            kc, vc = t[1].clone(), t[2].clone()
            qq = t[0].clone().requires_grad_(grad and dtype == "float32")
            got = seqcore.attention_with_kvcache(qq, kc, vc, t[3], t[4], cache_seqlens=t[5],
                                                 block_table=t[6], causal=True)
            assert isinstance(got, torch.Tensor) and got.dtype == t[0].dtype
            assert_close(got.detach().numpy(), want, dtype, name="out")
            expect_k = k_cache.copy()
            seqcore.attention_with_kvcache(q, expect_k, v_cache.copy(), k, v, cache_seqlens=lens,
                                           block_table=table, backend="numpy")
            np.testing.assert_array_equal(kc.numpy(), expect_k)


def test_a_decode_loop_equals_attention_over_everything(rng):
    """Generation one token at a time into a paged cache equals causal attention over the
    whole sequence, step by step."""
    _skip_missing("c")
    Hq, Hkv, D, T = 4, 2, 16, 40
    qs, ks, vs = (rng.standard_normal((1, h, T, D)).astype(np.float32) for h in (Hq, Hkv, Hkv))
    k_cache = np.zeros((6, Hkv, 16, D), np.float32)
    v_cache = np.zeros_like(k_cache)
    table = np.array([[4, 0, 2]], np.int32)
    full = seqcore.attention(qs, ks, vs, causal=True)
    for t in range(T):
        out = seqcore.attention_with_kvcache(
            qs[:, :, t:t + 1], k_cache, v_cache, ks[:, :, t:t + 1], vs[:, :, t:t + 1],
            cache_seqlens=np.array([t], np.int32), block_table=table, causal=True)
        assert_close(out[:, :, 0], full[:, :, t], "float32", name=f"step {t}")


# ------------------------------------------------------------------------- bad input


@pytest.fixture
def no_kernels(monkeypatch):
    def refuse(backend, family):
        raise AssertionError(f"a {backend} {family} kernel was reached with bad input")

    monkeypatch.setattr(_backends, "module", refuse)


def _bad(rng, over):
    q, k_cache, v_cache, k, v, lens, table = make_call(rng, Sq=2, S_new=1, block_size=16)
    args = dict(q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v, cache_seqlens=lens,
                block_table=table)
    args.update(over(args))
    return args


@pytest.mark.parametrize("over, exc, words", [
    (lambda a: dict(k=None), TypeError, ["k and v"]),
    (lambda a: dict(cache_seqlens=a["cache_seqlens"] + 64), ValueError, ["cache_seqlens[0]", "fit"]),
    (lambda a: dict(cache_seqlens=a["cache_seqlens"][:2]), ValueError, ["cache_seqlens", "(3,)"]),
    (lambda a: dict(cache_seqlens=a["cache_seqlens"].astype(np.float32)), TypeError, ["integers"]),
    (lambda a: dict(cache_seqlens=[1, 2, 3]), TypeError, ["cache_seqlens", "list"]),
    (lambda a: dict(block_table=a["block_table"] + 1000), ValueError, ["block_table[0]", "outside"]),
    (lambda a: dict(block_table=np.zeros_like(a["block_table"]), cache_seqlens=np.full(3, 5, np.int32)),
     ValueError, ["same cache slot"]),
    (lambda a: dict(k_cache=a["k_cache"][:, :, :8], v_cache=a["v_cache"][:, :, :8]), ValueError,
     ["multiple of 16"]),
    (lambda a: dict(block_table=None), ValueError, ["dense k_cache", "batch"]),
    (lambda a: dict(v_cache=a["v_cache"][:, :1]), ValueError, ["k_cache and v_cache"]),
    (lambda a: dict(k=a["k"][..., :3]), ValueError, ["k and v must be"]),
    (lambda a: dict(q=a["q"][..., :3]), ValueError, ["head dim"]),
    (lambda a: dict(v=a["v"].astype(np.float64)), TypeError, ["dtype"]),
    (lambda a: dict(q=a["q"][0]), ValueError, ["q", "(B, Hq, Sq, D)"]),
])
def test_bad_input(rng, no_kernels, over, exc, words):
    with pytest.raises(exc) as info:
        seqcore.attention_with_kvcache(**_bad(rng, over))
    for w in words:
        assert w in str(info.value), f"{w!r} not in message: {info.value}"


def test_the_kernel_refuses_what_validation_would(rng):
    """Defence in depth: the C entry point itself refuses a length past the capacity or a
    block index out of range (an exported graph can call the op directly)."""
    _skip_missing("c")
    from seqcore import _c_attention
    from seqcore._problem import make_attn_params

    q, k_cache, v_cache, k, v, lens, table = make_call(rng, Sq=1, S_new=1, block_size=16)
    p = make_attn_params(0.25, True, None, None)
    for bad_lens, bad_table in ((lens + 64, table), (lens, table + 1000)):
        with pytest.raises(RuntimeError, match="invalid arguments"):
            _c_attention.attention_kvcache_fwd(q, k_cache, v_cache, k, v, bad_lens, bad_table, p)
