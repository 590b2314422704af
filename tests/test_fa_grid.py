"""FlashAttention's output and gradient test grid, ported (issue 10: "FlashAttention's
output/gradient test grid pass with seqcore swapped in").

FlashAttention's tests/test_flash_attn.py runs test_flash_attn_output over sequence-length
pairs chosen to be awkward for tiles (113 x 203, 1023 x 1024, ...), head dims from 32 to 256
with odd ones (40, 59, 111), MHA / GQA / MQA, causal, local (sliding window), ALiBi, softcap
and dropout, and checks the kernel's output and dq, dk, dv against a reference. Here the same
axes run against seqcore's float64 reference on the C backend (float32): every sequence pair
and head dim, the feature switches rotated through the grid so that each one meets every
sequence pair (the full product, ~10^4 cases, would not fit CI), and the varlen grid of
test_flash_attn_varlen_output (random lengths per batch element, packed) likewise.
"""
import itertools

import numpy as np
import pytest

import seqcore
from seqcore import reference
from conftest import assert_close, require_backend

torch = pytest.importorskip("torch")

SEQLENS = [(113, 203), (128, 217), (113, 211), (108, 256), (256, 512), (512, 256),
           (1024, 1024), (1023, 1024), (1024, 1023), (2048, 2048)]
HEAD_DIMS = [32, 40, 59, 64, 96, 111, 128, 160, 192, 224, 256]
MHA_TYPES = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}  # (query heads, kv heads)
# (causal, local, alibi, softcap, dropout_p): every combination FlashAttention's grid has
FEATURES = list(itertools.product([False, True], [False, True], [False, True], [0.0, 30.0],
                                  [0.0, 0.17]))


def _cases():
    """Each (seqlens, head dim) pair with one mha type and one feature combination, rotated
    so that every feature combination and mha type appears across the grid; long sequences
    keep the head dims FlashAttention's CI also runs there (the reference is float64 NumPy)."""
    cases = []
    for n, ((sq, sk), d) in enumerate(itertools.product(SEQLENS, HEAD_DIMS)):
        if sq * sk > 600_000 and d not in (64, 128, 256):
            continue
        if sq * sk > 2_000_000 and d != 128:
            continue
        mha = list(MHA_TYPES)[n % 3]
        features = FEATURES[(n * 7) % len(FEATURES)]
        cases.append((sq, sk, d, mha) + features)
    return cases


CASES = _cases()


def _alibi(rng, Hq, Sq, Sk):
    """ALiBi as FlashAttention's reference adds it: -slope * |i + Sk - Sq - j|, per head."""
    slopes = rng.uniform(0, 1, Hq)
    i = np.arange(Sq)[:, None] + (Sk - Sq)
    j = np.arange(Sk)[None, :]
    return (-slopes[:, None, None] * np.abs(i - j))[None]


def _ids(case):
    sq, sk, d, mha, causal, local, alibi, softcap, p = case
    flags = [n for n, on in (("causal", causal), ("local", local), ("alibi", alibi),
                             ("softcap", softcap), ("dropout", p)) if on]
    return f"{sq}x{sk}-d{d}-{mha}" + ("-" + "-".join(flags) if flags else "")


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_flash_attn_output(case):
    require_backend("c")
    sq, sk, d, mha, causal, local, alibi, softcap, p = case
    rng = np.random.default_rng(sq * 7919 + sk * 31 + d)
    Hq, Hkv = MHA_TYPES[mha]
    B = 1 if sq * sk > 600_000 else 2
    q = rng.standard_normal((B, Hq, sq, d)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, sk, d)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, sk, d)).astype(np.float32)
    window = tuple(int(w) for w in rng.integers(0, sk, 2)) if local else None
    bias = _alibi(rng, Hq, sq, sk).astype(np.float32) if alibi else None
    options = dict(causal=causal, window=window, softcap=softcap or None, dropout_p=p,
                   dropout_seed=int(rng.integers(2**62)) if p else None)
    tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    tb = None if bias is None else torch.from_numpy(bias)
    out = seqcore.attention(tq, tk, tv, bias=tb, backend="c", **options)
    want = reference.attention(q, k, v, bias=bias, **options)
    assert_close(out.detach().numpy(), want, "float32", name="out", scale=2)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    grads = torch.autograd.grad(out, (tq, tk, tv), torch.from_numpy(dout))
    want_grads = reference.attention_bwd(dout, q, k, v, bias=bias, **options)
    for name, g, w in zip(("dq", "dk", "dv"), grads, want_grads):
        assert_close(g.numpy(), w, "float32", grad=True, name=name, scale=4)


VARLEN_SEQLENS = [(1, 147), (113, 203), (128, 217), (113, 211), (108, 256), (256, 512),
                  (512, 256), (1024, 1024), (1023, 1024), (1024, 1023)]


@pytest.mark.parametrize("n", range(len(VARLEN_SEQLENS)))
def test_flash_attn_varlen_output(n):
    """Batch elements of random lengths up to (seqlen_q, seqlen_k) (FlashAttention draws a
    random padding mask per element), packed; every feature switch rotated as above."""
    require_backend("c")
    sq, sk = VARLEN_SEQLENS[n]
    d = HEAD_DIMS[(n * 5) % len(HEAD_DIMS)] if sq * sk <= 600_000 else 64
    mha = list(MHA_TYPES)[n % 3]
    causal, local, _, softcap, p = FEATURES[(n * 11) % len(FEATURES)]
    rng = np.random.default_rng(1000 + n)
    Hq, Hkv = MHA_TYPES[mha]
    B = 3
    lens_q = rng.integers(max(1, sq // 2), sq + 1, B)
    lens_k = rng.integers(max(1, sk // 2), sk + 1, B)
    if causal or local:  # (FlashAttention keeps seqlen_q <= seqlen_k per element there)
        lens_q = np.minimum(lens_q, lens_k)
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    q = rng.standard_normal((cu_q[-1], Hq, d)).astype(np.float32)
    k = rng.standard_normal((cu_k[-1], Hkv, d)).astype(np.float32)
    v = rng.standard_normal((cu_k[-1], Hkv, d)).astype(np.float32)
    window = tuple(int(w) for w in rng.integers(0, sk, 2)) if local else None
    options = dict(causal=causal, window=window, softcap=softcap or None, dropout_p=p,
                   dropout_seed=int(rng.integers(2**62)) if p else None)
    tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    out = seqcore.attention_varlen(tq, tk, tv, torch.from_numpy(cu_q), torch.from_numpy(cu_k),
                                   backend="c", **options)
    want = reference.attention_varlen(q, k, v, cu_q, cu_k, **options)
    assert_close(out.detach().numpy(), want, "float32", name="out", scale=2)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    grads = torch.autograd.grad(out, (tq, tk, tv), torch.from_numpy(dout))
    want_grads = reference.attention_varlen_bwd(dout, q, k, v, cu_q, cu_k, **options)
    for name, g, w in zip(("dq", "dk", "dv"), grads, want_grads):
        assert_close(g.numpy(), w, "float32", grad=True, name=name, scale=4)


def test_grid_covers_every_feature_combination():
    """The rotation above is only a port if it reaches every combination of FlashAttention's
    switches and every mha type (a grid that silently lost one would test less)."""
    assert {c[4:] for c in CASES} == set(FEATURES)
    assert {c[3] for c in CASES} == set(MHA_TYPES)
    assert {c[2] for c in CASES} == set(HEAD_DIMS)
    assert {c[:2] for c in CASES} == set(SEQLENS)
