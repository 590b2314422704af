"""Attention benchmarks: seqcore vs torch scaled_dot_product_attention on the same inputs.

CPU (float32, 2 threads): seqcore backend "c" vs torch SDPA vs the float64 NumPy reference
(backend "numpy", only up to S=256: it is slow). CUDA (bfloat16): seqcore backend "triton" vs
torch SDPA's flash, cuDNN and memory-efficient kernels. The issue's bar is B1 H8 S1024 D64,
forward, causal and not.

Run: make bench   (or: .venv/bin/python -m pytest -q bench/bench_attention.py --benchmark-only)
"""
import contextlib
import functools

import pytest
import torch
import torch.nn.functional as F

from _bench import (DEVICE, HAS_CUDA, attention_flops, check_against, generator, randn,
                    require_seqcore, run)

DTYPE = torch.bfloat16 if HAS_CUDA else torch.float32
TOL = 3e-2 if HAS_CUDA else 1e-3  # vs float32 torch SDPA, relative to max |x|
NUMPY_MAX_S = 256

# (B, Hq, Hkv, S, D, causal)
FWD_CASES = [
    (1, 8, 8, 256, 64, False),
    (1, 8, 8, 256, 64, True),
    (1, 8, 8, 1024, 64, False),
    (1, 8, 8, 1024, 64, True),
    (1, 8, 2, 1024, 64, True),  # GQA: 4 query heads per kv head
    (4, 8, 8, 256, 128, False),
]
FWD_BWD_CASES = [
    (1, 8, 8, 256, 64, False),
    (1, 8, 8, 256, 64, True),
    (1, 8, 8, 1024, 64, False),
    (1, 8, 8, 1024, 64, True),
    (1, 8, 2, 1024, 64, True),
]

if HAS_CUDA:
    IMPLS = ["seqcore-triton", "torch-flash", "torch-cudnn", "torch-efficient"]
else:
    IMPLS = ["seqcore-c", "torch", "seqcore-numpy"]


def shape_name(case):
    B, Hq, Hkv, S, D, causal = case
    heads = f"H{Hq}" if Hq == Hkv else f"H{Hq}/kv{Hkv}"
    return f"B{B} {heads} S{S} D{D}" + (" causal" if causal else "")


def params(cases):
    """(case, impl) pairs; the NumPy reference only at the small shapes."""
    return [pytest.param(case, impl, id=f"{shape_name(case).replace(' ', '-')}-{impl}")
            for case in cases for impl in IMPLS
            if not (impl == "seqcore-numpy" and case[3] > NUMPY_MAX_S)]


def inputs(case, grad):
    """q, k, v, dout: the same values for every impl of one case."""
    B, Hq, Hkv, S, D, _ = case
    gen = generator(shape_name(case))
    q = randn(gen, B, Hq, S, D, dtype=DTYPE, requires_grad=grad)
    k = randn(gen, B, Hkv, S, D, dtype=DTYPE, requires_grad=grad)
    v = randn(gen, B, Hkv, S, D, dtype=DTYPE, requires_grad=grad)
    dout = randn(gen, B, Hq, S, D, dtype=DTYPE)
    return q, k, v, dout


# ----------------------------------------------------------------------------------------------
# The implementations: each returns attention(q, k, v) -> out


def _sdpa_context(impl):
    if impl == "torch":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"torch-flash": SDPBackend.FLASH_ATTENTION, "torch-cudnn": SDPBackend.CUDNN_ATTENTION,
               "torch-efficient": SDPBackend.EFFICIENT_ATTENTION}[impl]
    return sdpa_kernel(backend)


def torch_attention(impl, causal, gqa):
    def attend(q, k, v):
        with _sdpa_context(impl):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    return attend


def seqcore_attention(backend, causal):
    import seqcore

    return lambda q, k, v: seqcore.attention(q, k, v, causal=causal, backend=backend)


def attention_impl(impl, case, grad):
    """The impl's attend function, or a skip saying why it cannot run here."""
    causal, gqa = case[5], case[1] != case[2]
    if impl.startswith("seqcore-"):
        backend = impl.split("-", 1)[1]
        require_seqcore("attention", backend, grad)
        return seqcore_attention(backend, causal)
    attend = torch_attention(impl, causal, gqa)
    try:  # a torch SDPA kernel may not take this dtype/shape/GPU
        q = torch.zeros(1, case[1], 16, case[4], dtype=DTYPE, device=DEVICE, requires_grad=grad)
        kv = torch.zeros(1, case[2], 16, case[4], dtype=DTYPE, device=DEVICE, requires_grad=grad)
        out = attend(q, kv, kv)
        if grad:
            out.sum().backward()
    except RuntimeError as e:
        pytest.skip(f"{impl} does not run here: {str(e).splitlines()[0][:200]}")
    return attend


# ----------------------------------------------------------------------------------------------
# Expected results (float32 torch math on the same inputs), computed once per case


@functools.lru_cache(maxsize=None)
def expected(case, grad):
    q, k, v, dout = (x.detach().float().requires_grad_(grad) for x in inputs(case, grad))
    out = torch_attention("torch", case[5], case[1] != case[2])(q, k, v)
    if not grad:
        return [out.detach()]
    return [out.detach(), *torch.autograd.grad(out, (q, k, v), dout)]


def forward_and_backward(attend, q, k, v, dout):
    out = attend(q, k, v)
    return [out, *torch.autograd.grad(out, (q, k, v), dout)]


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, impl", params(FWD_CASES))
def test_attention_fwd(benchmark, case, impl):
    attend = attention_impl(impl, case, grad=False)
    q, k, v, _ = inputs(case, grad=False)
    with torch.no_grad():
        err = check_against(impl, [attend(q, k, v)], expected(case, False), TOL)
        B, Hq, _, S, D, causal = case
        run(benchmark, lambda: attend(q, k, v), op="attention fwd", impl=impl,
            shape=shape_name(case), dtype=str(DTYPE).replace("torch.", ""),
            flops=attention_flops(B, Hq, S, S, D, causal), err=err)


@pytest.mark.parametrize("case, impl", params(FWD_BWD_CASES))
def test_attention_fwd_bwd(benchmark, case, impl):
    attend = attention_impl(impl, case, grad=True)
    q, k, v, dout = inputs(case, grad=True)
    err = check_against(impl, forward_and_backward(attend, q, k, v, dout), expected(case, True), TOL)
    B, Hq, _, S, D, causal = case
    run(benchmark, lambda: forward_and_backward(attend, q, k, v, dout), op="attention fwd+bwd",
        impl=impl, shape=shape_name(case), dtype=str(DTYPE).replace("torch.", ""),
        flops=attention_flops(B, Hq, S, S, D, causal, passes="fwd+bwd"), err=err)


# ----------------------------------------------------------------------------------------------
# Decoding against a KV cache: one query per sequence against L cached keys (issue 11's bar:
# B8 H32/kv8 D128, 4k keys, at least 1.2x torch SDPA over the same keys on the CPU). It reads
# every cached key and value once: 2 * B * Hkv * L * D * itemsize bytes (268 MB in float32),
# so it is a memory-bandwidth benchmark; the GFLOP/s column counts 4 * B * Hq * L * D.

DECODE_CASES = [(8, 32, 8, 4096, 128)]  # (B, Hq, Hkv, L, D)
DECODE_BLOCK = 16                        # tokens per block of the paged cache


def decode_name(case):
    B, Hq, Hkv, L, D = case
    return f"B{B} H{Hq}/kv{Hkv} L{L} D{D} Sq1"


@functools.lru_cache(maxsize=None)
def decode_inputs(case):
    """q, the dense caches (exactly L keys each), and the same keys in a paged cache whose
    block table is a random permutation."""
    B, Hq, Hkv, L, D = case
    gen = generator(decode_name(case))
    q = randn(gen, B, Hq, 1, D, dtype=DTYPE)
    k, v = (randn(gen, B, Hkv, L, D, dtype=DTYPE) for _ in range(2))
    per_seq = L // DECODE_BLOCK
    table = torch.randperm(B * per_seq, generator=gen).reshape(B, per_seq).to(torch.int32)
    paged = []
    for x in (k, v):  # (B, Hkv, L, D) -> (num_blocks, Hkv, block, D) at the table's places
        blocks = x.reshape(B, Hkv, per_seq, DECODE_BLOCK, D).permute(0, 2, 1, 3, 4)
        out = torch.empty((B * per_seq, Hkv, DECODE_BLOCK, D), dtype=DTYPE, device=DEVICE)
        out[table.reshape(-1).long().to(DEVICE)] = blocks.reshape(-1, Hkv, DECODE_BLOCK, D)
        paged.append(out)
    lens = torch.full((B,), L, dtype=torch.int32)
    return q, k, v, paged[0], paged[1], table.to(DEVICE), lens.to(DEVICE)


def decode_impl(impl, case):
    q, k, v, kp, vp, table, lens = decode_inputs(case)
    if impl == "torch":
        return lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    import seqcore

    require_seqcore("attention", "c" if impl.startswith("seqcore-c") else "triton", False)
    backend = "c" if impl.startswith("seqcore-c") else "triton"
    if impl.endswith("paged"):
        return lambda: seqcore.attention_with_kvcache(q, kp, vp, cache_seqlens=lens,
                                                      block_table=table, backend=backend)
    return lambda: seqcore.attention_with_kvcache(q, k, v, cache_seqlens=lens, backend=backend)


DECODE_IMPLS = (["seqcore-triton", "seqcore-triton-paged", "torch"] if HAS_CUDA
                else ["seqcore-c", "seqcore-c-paged", "torch"])


@pytest.mark.parametrize("case, impl", [
    pytest.param(case, impl, id=f"{decode_name(case).replace(' ', '-')}-{impl}")
    for case in DECODE_CASES for impl in DECODE_IMPLS])
def test_attention_decode(benchmark, case, impl):
    call = decode_impl(impl, case)
    q, k, v, *_ = decode_inputs(case)
    with torch.no_grad():
        want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
        err = check_against(impl, [call()], [want], TOL)
        B, Hq, Hkv, L, D = case
        run(benchmark, call, op="attention decode", impl=impl, shape=decode_name(case),
            dtype=str(DTYPE).replace("torch.", ""), flops=attention_flops(B, Hq, 1, L, D, False),
            err=err)
        benchmark.extra_info["bytes"] = 2 * B * Hkv * L * D * q.element_size()
