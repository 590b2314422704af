#!/usr/bin/env python
"""seqcore's GPU suite: every Triton kernel path checked against seqcore.reference, then timed
against torch, in ONE call on a CUDA machine.

    python bench/gpu_suite.py                 # everything (a few minutes on an H100)
    python bench/gpu_suite.py --only checks   # or: attention, decode, rnn (comma-separated)
    python bench/gpu_suite.py --dry-run       # no GPU: tiny shapes on the Triton interpreter

1. checks: seqcore.attention fwd+bwd (causal, window, bias with dbias, softcap, GQA, odd dims,
   the split-KV decode path), attention_varlen, attention_with_kvcache (dense, paged at block
   sizes 16 and 64, appended keys, the updated caches), lstm/gru sequences fwd+bwd (persistent and
   per-step forward paths, lengths, reverse), lstm_cell/gru_cell fwd+bwd; in fp16, bf16, fp32,
   against the float64 reference on the same (rounded) inputs. Reported: the worst error as a
   fraction of the tolerance (|a - e| / (atol*max(1, max|e|) + rtol*|e|); <= 1 passes), with
   tests/conftest.py's tolerance table.
2. attention: fwd and bwd TFLOP/s, bf16, B*S = 16k tokens, H*D = 2048, D in {64, 128},
   S in {1k, 4k, 16k}, causal and not; seqcore "triton" vs torch SDPA flash / cuDNN / efficient.
   FLOPs as in ANCHORS.md: 4*B*H*S*S*D, halved when causal; backward 2.5x forward.
3. decode: B32 H32 D128 bf16, one query, Sk in {4k, 16k}: GB/s of K+V read, vs torch SDPA and
   vs a torch device-to-device copy of the same bytes; seqcore.attention (split-KV) and
   attention_with_kvcache over a dense cache and paged ones (blocks of 16 and 64; issue 11's
   bars: >= 85% of the copy bandwidth, paged within 5% of dense).
4. rnn: LSTM/GRU sequence fwd and bwd, T=128, I=H in {256, 512, 768, 1024}, B in {1, 8, 16,
   64}, fp16, bf16 and fp32: us/step of seqcore "triton" (the auto paths: persistent where they
   fit; and the per-step paths) vs torch.nn.LSTM/GRU (cuDNN; fp16 at H % 128 == 0 and B % 8 == 0
   is its persistent kernel), and the ratio; the grid barrier's latency alone.
Timed cases past --budget seconds (default 330, from the start) are recorded as skipped, so the
first run on a fresh machine, compiles included, ends within ~6 minutes; the checks always run.
Times are triton.testing.do_bench medians. Results go to $OUT/gpu_suite.json (env OUT, default
bench/out) with the device name and date, written after every section (a run cut short keeps
what it finished); a compact table goes to stdout.

Needs torch, triton and numpy only (seqcore's C extension is not used). A failing case is
recorded with its error and the suite goes on.
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import sys
import time
import traceback
import zlib

import numpy as np

START = time.perf_counter()  # the budget counts from here (imports and compiles included)

# tests/conftest.py's tables: (atol, rtol) by dtype, forward outputs / gradients
TOLERANCES = {"float32": (2e-5, 2e-5), "float16": (2e-3, 2e-3), "bfloat16": (1.6e-2, 1.6e-2)}
GRAD_TOLERANCES = {"float32": (1e-4, 1e-4), "float16": (1e-2, 1e-2), "bfloat16": (6e-2, 6e-2)}
SDPA_IMPLS = ("torch-flash", "torch-cudnn", "torch-efficient")


# ----------------------------------------------------------------------------------------------
# Counting (the conventions of ANCHORS.md)


def attention_flops(B, H, Sq, Sk, D, causal, passes="fwd"):
    """4*B*H*Sq*Sk*D, halved when causal; the backward counts as 2.5x the forward."""
    fwd = 4 * B * H * Sq * Sk * D / (2 if causal else 1)
    return fwd * {"fwd": 1.0, "bwd": 2.5}[passes]


def kv_bytes(B, Hkv, Sk, D, Dv, itemsize):
    """Bytes of K and V a decode step must read at least once."""
    return B * Hkv * Sk * (D + Dv) * itemsize


def rnn_flops(cell, T, B, I, H, passes="fwd"):
    """2*T*B*(I+H)*G*H (G = 4 LSTM, 3 GRU); the backward counts as 2x the forward."""
    fwd = 2 * T * B * (I + H) * {"lstm": 4, "gru": 3}[cell] * H
    return fwd * {"fwd": 1.0, "bwd": 2.0}[passes]


# ----------------------------------------------------------------------------------------------
# Environment


class Env:
    """What the run has: torch, the device, a timer, the dtypes to check, the shapes to use."""

    def __init__(self, dry_run):
        import torch

        self.torch = torch
        self.dry_run = dry_run
        self.cuda = torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        self.dtypes = ["float16", "bfloat16", "float32"] if self.cuda else ["float32"]
        self.deadline = None  # perf_counter() after which timed cases are skipped (--budget)

    def out_of_time(self):
        """Whether the run's time budget is spent: the remaining timed cases are recorded as
        skipped, so a lease's run ends with everything measured so far written."""
        return self.deadline is not None and time.perf_counter() > self.deadline

    def name(self):
        if self.cuda:
            return self.torch.cuda.get_device_name()
        return f"{platform.processor() or platform.machine()} (CPU, Triton interpreter, dry run)"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def time_ms(self, fn):
        """Median milliseconds of fn(): do_bench on the GPU, a few perf_counter calls on the CPU."""
        if self.cuda:
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e3 * float(np.median(times))

    def tensor(self, rng, shape, dtype, scale=1.0, grad=False):
        t = self.torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * scale)
        t = t.to(device=self.device, dtype=getattr(self.torch, dtype))
        return t.requires_grad_(grad)


def seed(*key):
    """A stable seed from a case's key (hash() of a str changes between processes)."""
    return zlib.crc32(repr(key).encode())


def f64(t):
    return None if t is None else t.detach().float().cpu().double().numpy()


# ----------------------------------------------------------------------------------------------
# 1. Correctness


def error_ratio(actual, expected, dtype, grad):
    """Worst |a - e| / (atol * max(1, max|e|) + rtol*|e|): <= 1 within tolerance; NaN -> inf."""
    atol, rtol = (GRAD_TOLERANCES if grad else TOLERANCES)[dtype]
    a, e = f64(actual), np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return math.inf, math.inf
    both_inf = np.isinf(a) & np.isinf(e) & (np.sign(a) == np.sign(e))  # lse of an empty row
    with np.errstate(invalid="ignore"):  # inf - inf where both are -inf; handled by both_inf
        diff = np.where(both_inf, 0.0, np.abs(a - e))
    diff = np.where(np.isnan(diff), np.inf, diff)
    if diff.size == 0:
        return 0.0, 0.0
    finite_e = np.where(np.isfinite(e), np.abs(e), 0.0)
    allowed = atol * max(1.0, float(finite_e.max())) + rtol * finite_e
    return float((diff / allowed).max()), float(diff.max())


def check_record(name, dtype, outputs):
    """outputs: [(label, actual, expected, is_grad)] -> one result row."""
    errors = {}
    for label, actual, expected, grad in outputs:
        ratio, abs_err = error_ratio(actual, expected, dtype, grad)
        errors[label] = {"err_over_tol": ratio, "max_abs_err": abs_err}
    worst = max((e["err_over_tol"] for e in errors.values()), default=0.0)
    return {"case": name, "dtype": dtype, "ok": worst <= 1.0, "worst_err_over_tol": worst,
            "outputs": errors}


def attention_cases(env):
    """(name, B, Hq, Hkv, Sq, Sk, D, Dv, options): every dense feature and both fwd kernels."""
    if env.dry_run:
        return [("causal gqa odd", 1, 2, 1, 5, 7, 16, 16, dict(causal=True)),
                ("bias softcap window", 1, 1, 1, 6, 6, 16, 16,
                 dict(window=(2, 1), softcap=5.0, bias="padding"))]
    return [
        ("plain", 2, 4, 4, 128, 128, 64, 64, {}),
        ("causal, Sq<Sk, odd D", 1, 3, 3, 77, 100, 40, 40, dict(causal=True)),
        ("window", 1, 2, 2, 150, 150, 64, 64, dict(window=(32, 8))),
        ("bias (padding -inf) + dbias", 2, 2, 2, 96, 96, 64, 64, dict(bias="padding")),
        ("softcap", 1, 2, 2, 128, 128, 64, 64, dict(softcap=30.0, q_scale=4.0)),
        ("gqa causal D128", 1, 8, 2, 128, 128, 128, 128, dict(causal=True)),
        ("Dv != D", 1, 2, 1, 64, 80, 32, 96, {}),
        ("decode (split-KV)", 2, 8, 2, 1, 700, 128, 128, {}),
        ("decode causal + bias", 2, 8, 2, 3, 900, 64, 64, dict(causal=True, bias="padding")),
    ]


def make_bias(env, rng, B, Hq, Sq, Sk, dtype):
    """A random per-head bias (1, Hq, Sq, Sk), broadcast over batch, whose last keys are
    padding (-inf): exercises broadcasting, -inf handling and dbias reduction."""
    bias = rng.standard_normal((1, Hq, Sq, Sk)).astype(np.float32)
    bias[..., -max(1, Sk // 8):] = -np.inf
    t = env.torch.from_numpy(bias).to(device=env.device, dtype=getattr(env.torch, dtype))
    return t.requires_grad_(True)


def check_attention(env, seqcore, name, B, Hq, Hkv, Sq, Sk, D, Dv, opts, dtype):
    torch = env.torch
    rng = np.random.default_rng(seed(name, dtype))
    opts = dict(opts)
    q_scale = opts.pop("q_scale", 1.0)
    q = env.tensor(rng, (B, Hq, Sq, D), dtype, scale=q_scale, grad=True)
    k = env.tensor(rng, (B, Hkv, Sk, D), dtype, grad=True)
    v = env.tensor(rng, (B, Hkv, Sk, Dv), dtype, grad=True)
    bias = make_bias(env, rng, B, Hq, Sq, Sk, dtype) if opts.pop("bias", None) else None
    dout = env.tensor(rng, (B, Hq, Sq, Dv), dtype)
    out, lse = seqcore.attention(q, k, v, bias=bias, return_lse=True, backend="triton", **opts)
    leaves = [t for t in (q, k, v, bias) if t is not None]
    grads = torch.autograd.grad(out, leaves, dout)
    ref_out, ref_lse = seqcore.reference.attention(f64(q), f64(k), f64(v), bias=f64(bias),
                                                   return_lse=True, **opts)
    ref_grads = seqcore.reference.attention_bwd(f64(dout), f64(q), f64(k), f64(v), bias=f64(bias), **opts)
    outputs = [("out", out, ref_out, False), ("lse", lse, ref_lse, False)]
    outputs += [(label, g, r, True) for label, g, r in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads)]
    row = check_record(f"attention {name}", dtype, outputs)
    row["path"] = attention_path(q, k)
    return row


def attention_path(q, k):
    try:
        from seqcore import _triton_attention

        return "decode" if _triton_attention.use_decode(q, k) else "dense"
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def check_varlen(env, seqcore, dtype):
    torch = env.torch
    rng = np.random.default_rng(7)
    if env.dry_run:
        cu_q, cu_k = [0, 3, 3, 7], [0, 5, 6, 11]
    else:  # the second sequence is empty on the query side
        cu_q, cu_k = [0, 37, 37, 130, 200], [0, 50, 60, 160, 230]
    Hq, Hkv, D = (2, 1, 16) if env.dry_run else (4, 2, 64)
    q = env.tensor(rng, (cu_q[-1], Hq, D), dtype, grad=True)
    k, v = (env.tensor(rng, (cu_k[-1], Hkv, D), dtype, grad=True) for _ in range(2))
    dout = env.tensor(rng, (cu_q[-1], Hq, D), dtype)
    cq, ck = (torch.tensor(c, dtype=torch.int32, device=env.device) for c in (cu_q, cu_k))
    out, lse = seqcore.attention_varlen(q, k, v, cq, ck, causal=True, return_lse=True, backend="triton")
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_out, ref_lse = seqcore.reference.attention_varlen(f64(q), f64(k), f64(v), np.array(cu_q),
                                                          np.array(cu_k), causal=True, return_lse=True)
    ref_grads = seqcore.reference.attention_varlen_bwd(f64(dout), f64(q), f64(k), f64(v), np.array(cu_q),
                                                       np.array(cu_k), causal=True)
    outputs = [("out", out, ref_out, False), ("lse", lse, ref_lse, False)]
    outputs += [(label, g, r, True) for label, g, r in zip(("dq", "dk", "dv"), grads, ref_grads)]
    return check_record("attention_varlen causal gqa (empty seq)", dtype, outputs)


@contextlib.contextmanager
def rnn_paths(path):
    """Force seqcore's Triton RNN paths for a while: "step" runs the per-step forward and
    backward, "auto" / "persistent" the persistent ones where they fit (FORWARD_PATH and
    BACKWARD_PATH of seqcore/_triton_recurrent.py; the backward reads it when autograd runs)."""
    from seqcore import _triton_recurrent

    old = _triton_recurrent.FORWARD_PATH, _triton_recurrent.BACKWARD_PATH
    _triton_recurrent.FORWARD_PATH = path
    _triton_recurrent.BACKWARD_PATH = "step" if path == "step" else "auto"
    try:
        yield
    finally:
        _triton_recurrent.FORWARD_PATH, _triton_recurrent.BACKWARD_PATH = old


def rnn_cases(env):
    """(cell, T, B, I, H, lengths, reverse, path)"""
    if env.dry_run:
        return [("lstm", 3, 2, 5, 8, [3, 0], False, "persistent"), ("gru", 3, 2, 5, 8, None, True, "step")]
    cases = []
    for cell in ("lstm", "gru"):
        cases += [(cell, 16, 3, 40, 64, [16, 0, 9], False, "persistent"),
                  (cell, 16, 3, 40, 64, [16, 0, 9], True, "step"),
                  (cell, 8, 5, 100, 257, None, False, "auto"),
                  (cell, 8, 64, 256, 1024, None, True, "auto")]
    return cases


def rnn_inputs(env, rng, cell, T, B, I, H, dtype):
    G = {"lstm": 4, "gru": 3}[cell]
    bound = H ** -0.5
    x = env.tensor(rng, (T, B, I), dtype, grad=True)
    weights = [env.tensor(rng, shape, dtype, scale=bound, grad=True)
               for shape in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
    states = [env.tensor(rng, (B, H), dtype, scale=0.5, grad=True) for _ in range(2 if cell == "lstm" else 1)]
    return x, weights, states


def check_rnn(env, seqcore, cell, T, B, I, H, lengths, reverse, path, dtype):
    torch = env.torch
    rng = np.random.default_rng(seed(cell, T, B, H, dtype))
    x, weights, states = rnn_inputs(env, rng, cell, T, B, I, H, dtype)
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int64, device=env.device)
    fn = seqcore.lstm if cell == "lstm" else seqcore.gru
    with rnn_paths(path):
        y, final = fn(x, *weights, *states, lengths=lens, reverse=reverse, backend="triton")
        finals = list(final) if cell == "lstm" else [final]
        dy = env.tensor(rng, y.shape, dtype)
        dfinals = [env.tensor(rng, f.shape, dtype) for f in finals]
        leaves = [x] + weights + states
        grads = torch.autograd.grad([y] + finals, leaves, [dy] + dfinals)
    ref_fn = seqcore.reference.lstm if cell == "lstm" else seqcore.reference.gru
    ref_bwd = seqcore.reference.lstm_bwd if cell == "lstm" else seqcore.reference.gru_bwd
    args = [f64(t) for t in [x] + weights + states]
    ref_y, ref_final = ref_fn(*args, lengths=lengths, reverse=reverse)
    ref_finals = list(ref_final) if cell == "lstm" else [ref_final]
    ref_g = ref_bwd(f64(dy), *[f64(d) for d in dfinals], *args, lengths=lengths, reverse=reverse)
    names = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0"] + (["c0"] if cell == "lstm" else [])
    outputs = [("y", y, ref_y, False)]
    outputs += [(f"state{i}", f, r, False) for i, (f, r) in enumerate(zip(finals, ref_finals))]
    outputs += [(f"d{n}", g, ref_g[n], True) for n, g in zip(names, grads)]
    label = (f"{cell} T{T} B{B} I{I} H{H} {path}" + (" lengths" if lengths else "")
             + (" reverse" if reverse else ""))
    return check_record(label, dtype, outputs)


def check_cell(env, seqcore, cell, dtype):
    torch = env.torch
    rng = np.random.default_rng(11)
    B, I, H = (2, 5, 8) if env.dry_run else (7, 33, 130)
    x, weights, states = rnn_inputs(env, rng, cell, 1, B, I, H, dtype)
    x = x.detach()[0].requires_grad_(True)
    fn = seqcore.lstm_cell if cell == "lstm" else seqcore.gru_cell
    res = fn(x, *states, *weights, backend="triton")
    res = list(res) if cell == "lstm" else [res]
    douts = [env.tensor(rng, r.shape, dtype) for r in res]
    leaves = [x] + states + weights
    grads = torch.autograd.grad(res, leaves, douts)
    args = [f64(t) for t in [x] + states + weights]
    ref = seqcore.reference.lstm_cell(*args) if cell == "lstm" else [seqcore.reference.gru_cell(*args)]
    ref_bwd = (seqcore.reference.lstm_cell_bwd if cell == "lstm" else seqcore.reference.gru_cell_bwd)(
        *[f64(d) for d in douts], *args)
    names = ["x", "h"] + (["c"] if cell == "lstm" else []) + ["w_ih", "w_hh", "b_ih", "b_hh"]
    outputs = [(f"out{i}", r, e, False) for i, (r, e) in enumerate(zip(res, ref))]
    outputs += [(f"d{n}", g, ref_bwd[n], True) for n, g in zip(names, grads)]
    return check_record(f"{cell}_cell B{B} I{I} H{H}", dtype, outputs)


def paged_copy(torch, x, block, gen):
    """(B, H, S, d) keys as a paged cache (B * S / block, H, block, d) at a random block
    table (B, S / block) int32: the same keys, scattered."""
    B, H, S, d = x.shape
    per = S // block
    table = torch.randperm(B * per, generator=gen).reshape(B, per).to(torch.int32).to(x.device)
    blocks = x.reshape(B, H, per, block, d).permute(0, 2, 1, 3, 4).reshape(-1, H, block, d)
    paged = torch.empty_like(blocks)
    paged[table.reshape(-1).long()] = blocks
    return paged, table


def check_kvcache(env, seqcore, dtype, block):
    """attention_with_kvcache (Triton) against the reference: ragged lengths, two new keys
    appended, GQA, causal; dense (block None) or paged; the updated caches too."""
    torch = env.torch
    rng = np.random.default_rng(seed("kvcache", dtype, block or 0))
    B, Hq, Hkv, S, D, Sq = (2, 4, 2, 64, 16, 2) if env.dry_run else (3, 8, 2, 1024, 128, 2)
    q = env.tensor(rng, (B, Hq, Sq, D), dtype)
    k_cache, v_cache = (env.tensor(rng, (B, Hkv, S, D), dtype) for _ in range(2))
    k_new, v_new = (env.tensor(rng, (B, Hkv, 2, D), dtype) for _ in range(2))
    lens = np.array([0, S // 3, S - 2][:B], np.int32)
    table = None
    if block:  # (one seed: the same block table for both caches)
        k_cache, table = paged_copy(torch, k_cache, block, torch.Generator().manual_seed(0))
        v_cache, _ = paged_copy(torch, v_cache, block, torch.Generator().manual_seed(0))
    want_k, want_v = f64(k_cache), f64(v_cache)
    table_np = None if table is None else table.cpu().numpy()
    want = seqcore.reference.attention_with_kvcache(
        f64(q), want_k, want_v, f64(k_new), f64(v_new), cache_seqlens=lens, block_table=table_np,
        causal=True)
    got = seqcore.attention_with_kvcache(
        q, k_cache, v_cache, k_new, v_new, cache_seqlens=torch.from_numpy(lens).to(env.device),
        block_table=table, causal=True, backend="triton")
    outputs = [("out", got, want, False), ("k_cache", k_cache, want_k, False),
               ("v_cache", v_cache, want_v, False)]
    return check_record(f"attention_with_kvcache {'paged' + str(block) if block else 'dense'}",
                        dtype, outputs)


def run_checks(env, seqcore):
    jobs = []
    for dtype in env.dtypes:
        for case in attention_cases(env):
            jobs.append((f"attention {case[0]}", dtype,
                         lambda c=case, d=dtype: check_attention(env, seqcore, *c, d)))
        jobs.append(("attention_varlen", dtype, lambda d=dtype: check_varlen(env, seqcore, d)))
        for block in (None, 16, 64):
            jobs.append((f"attention_with_kvcache {block}", dtype,
                         lambda d=dtype, b=block: check_kvcache(env, seqcore, d, b)))
        for case in rnn_cases(env):
            jobs.append((f"{case[0]} sequence", dtype,
                         lambda c=case, d=dtype: check_rnn(env, seqcore, *c, d)))
        for cell in ("lstm", "gru"):
            jobs.append((f"{cell}_cell", dtype, lambda c=cell, d=dtype: check_cell(env, seqcore, c, d)))
    return [guarded(name, dtype, job) for name, dtype, job in jobs]


def budget_row(shape):
    """The row of a timed case the time budget left out."""
    return {"shape": shape, "impl": "-", "skipped": "time budget (--budget) spent"}


def guarded(name, dtype, job):
    """job() or a row saying how it failed (the suite goes on)."""
    try:
        return job()
    except Exception as e:  # noqa: BLE001 - recorded and reported
        return {"case": name, "dtype": dtype, "ok": False, "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=4)}


# ----------------------------------------------------------------------------------------------
# 2. and 3. Attention and decode timings


def sdpa(impl, causal, gqa):
    """torch SDPA restricted to one backend (flash, cuDNN or memory-efficient)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"torch-flash": SDPBackend.FLASH_ATTENTION, "torch-cudnn": SDPBackend.CUDNN_ATTENTION,
               "torch-efficient": SDPBackend.EFFICIENT_ATTENTION}[impl]

    def attend(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    return attend


def attention_impls(seqcore, causal, gqa):
    impls = {"seqcore-triton": lambda q, k, v: seqcore.attention(q, k, v, causal=causal, backend="triton")}
    impls.update({name: sdpa(name, causal, gqa) for name in SDPA_IMPLS})
    return impls


def time_fwd_bwd(env, attend, q, k, v, dout):
    """(forward ms, backward-only ms); the backward reuses one forward graph."""
    torch = env.torch
    with torch.no_grad():
        fwd_ms = env.time_ms(lambda: attend(q, k, v))
    out = attend(q, k, v)
    bwd_ms = env.time_ms(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
    return fwd_ms, bwd_ms


def attention_shapes(env):
    """(B, H, S, D, causal): B*S = 16k tokens, H*D = 2048."""
    if env.dry_run:
        return [(1, 2, 16, 16, False), (1, 2, 16, 16, True)]
    return [(16384 // S, 2048 // D, S, D, causal)
            for D in (64, 128) for S in (1024, 4096, 16384) for causal in (False, True)]


def run_attention(env, seqcore):
    rows = []
    dtype = "bfloat16" if env.cuda else "float32"
    for B, H, S, D, causal in attention_shapes(env):
        if env.out_of_time():
            rows.append(budget_row(f"B{B} H{H} S{S} D{D}" + (" causal" if causal else "")))
            continue
        rng = np.random.default_rng(0)
        q, k, v = (env.tensor(rng, (B, H, S, D), dtype, grad=True) for _ in range(3))
        dout = env.tensor(rng, (B, H, S, D), dtype)
        shape = f"B{B} H{H} S{S} D{D}" + (" causal" if causal else "")
        for impl, attend in attention_impls(seqcore, causal, False).items():
            row = {"shape": shape, "impl": impl, "dtype": dtype, "B": B, "H": H, "S": S, "D": D,
                   "causal": causal, "fwd_flops": attention_flops(B, H, S, S, D, causal),
                   "bwd_flops": attention_flops(B, H, S, S, D, causal, "bwd")}
            try:
                row["fwd_ms"], row["bwd_ms"] = time_fwd_bwd(env, attend, q, k, v, dout)
                row["fwd_tflops"] = row["fwd_flops"] / row["fwd_ms"] / 1e9
                row["bwd_tflops"] = row["bwd_flops"] / row["bwd_ms"] / 1e9
            except Exception as e:  # noqa: BLE001 - e.g. an SDPA kernel that does not take this
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            rows.append(row)
        del q, k, v, dout
    return rows


def decode_shapes(env):
    return [(2, 2, 64, 16)] if env.dry_run else [(32, 32, 4096, 128), (32, 32, 16384, 128)]


def run_decode(env, seqcore):
    torch = env.torch
    rows = []
    dtype = "bfloat16" if env.cuda else "float32"
    for B, H, Sk, D in decode_shapes(env):
        if env.out_of_time():
            rows.append(budget_row(f"B{B} H{H} Sq1 Sk{Sk} D{D}"))
            continue
        rng = np.random.default_rng(1)
        q = env.tensor(rng, (B, H, 1, D), dtype)
        k, v = (env.tensor(rng, (B, H, Sk, D), dtype) for _ in range(2))
        nbytes = kv_bytes(B, H, Sk, D, D, k.element_size())
        shape = f"B{B} H{H} Sq1 Sk{Sk} D{D}"
        impls = attention_impls(seqcore, False, False)
        lens = torch.full((B,), Sk, dtype=torch.int32, device=env.device)
        impls["seqcore kvcache dense"] = lambda q, k, v: seqcore.attention_with_kvcache(
            q, k, v, cache_seqlens=lens, backend="triton")
        for block in (16, 64):
            if Sk % block:
                continue
            kp, table = paged_copy(torch, k, block, torch.Generator().manual_seed(block))
            vp, _ = paged_copy(torch, v, block, torch.Generator().manual_seed(block))
            impls[f"seqcore kvcache paged{block}"] = (
                lambda q, k, v, kp=kp, vp=vp, table=table: seqcore.attention_with_kvcache(
                    q, kp, vp, cache_seqlens=lens, block_table=table, backend="triton"))
        src = torch.empty(nbytes, dtype=torch.uint8, device=env.device)
        dst = torch.empty_like(src)
        impls["torch copy (same bytes)"] = lambda *_: dst.copy_(src)
        for impl, attend in impls.items():
            row = {"shape": shape, "impl": impl, "dtype": dtype, "kv_bytes": nbytes}
            try:
                with torch.no_grad():
                    row["ms"] = env.time_ms(lambda: attend(q, k, v))
                row["GBps_read"] = nbytes / row["ms"] / 1e6
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            rows.append(row)
        if env.cuda and any("error" not in r for r in rows):  # attention's path for this shape
            rows[-len(impls)]["path"] = attention_path(q, k)
    return rows


# ----------------------------------------------------------------------------------------------
# 4. RNN timings


def rnn_shapes(env):
    if env.dry_run:
        return [("lstm", 4, 2, 8), ("gru", 4, 2, 8)], ["float32"]
    # issue 12's grid: B in {1, 8, 16, 64} x H in {256, 512, 768, 1024}; float16 is where
    # torch's nn.LSTM/GRU take cuDNN's persistent kernel (H % 128 == 0, B % 8 == 0)
    return ([(cell, 128, B, H) for cell in ("lstm", "gru") for H in (256, 512, 768, 1024)
             for B in (1, 8, 16, 64)], ["float16", "bfloat16", "float32"])


def torch_rnn_module(env, cell, H, weights):
    torch = env.torch
    module = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(H, H).to(env.device, weights[0].dtype)
    with torch.no_grad():
        for name, w in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), weights):
            getattr(module, name).copy_(w)
    return module


def rnn_impls(env, seqcore, cell, H, weights):
    fn = seqcore.lstm if cell == "lstm" else seqcore.gru
    module = torch_rnn_module(env, cell, H, weights)

    def seqcore_run(x, states):
        return fn(x, *weights, *states, backend="triton")[0]

    def torch_run(x, states):
        st = tuple(s[None] for s in states)
        return module(x, st if cell == "lstm" else st[0])[0]

    # (run, params, the seqcore paths it runs under: rnn_paths, for forward and backward)
    impls = {"seqcore-triton": (seqcore_run, weights, "auto"),
             "seqcore-triton-step": (seqcore_run, weights, "step"),
             "torch (cuDNN)" if env.cuda else "torch": (torch_run, list(module.parameters()),
                                                         None)}
    return impls


def time_rnn(env, run, x, states, params, dy, with_bwd):
    torch = env.torch
    with torch.no_grad():
        fwd_ms = env.time_ms(lambda: run(x, states))
    if not with_bwd:
        return fwd_ms, None
    y = run(x, states)
    bwd_ms = env.time_ms(lambda: torch.autograd.grad(y, [x] + params, dy, retain_graph=True))
    return fwd_ms, bwd_ms


def run_rnn(env, seqcore):
    rows = []
    shapes, dtypes = rnn_shapes(env)
    for dtype in dtypes:
        for cell, T, B, H in shapes:
            if env.out_of_time():
                rows.append(dict(budget_row(f"{cell.upper()} T{T} B{B} H{H}"), dtype=dtype))
                continue
            rng = np.random.default_rng(2)
            x, weights, states = rnn_inputs(env, rng, cell, T, B, H, H, dtype)
            states = [s.detach() for s in states]
            dy = env.tensor(rng, (T, B, H), dtype)
            base = {"cell": cell, "dtype": dtype, "T": T, "B": B, "H": H,
                    "shape": f"{cell.upper()} T{T} B{B} H{H}",
                    "fwd_flops": rnn_flops(cell, T, B, H, H), "bwd_flops": rnn_flops(cell, T, B, H, H, "bwd")}
            for impl, (run, params, path) in rnn_impls(env, seqcore, cell, H, weights).items():
                row = dict(base, impl=impl)
                try:
                    with rnn_paths(path or "auto"):
                        fwd, bwd = time_rnn(env, run, x, states, params, dy, with_bwd=True)
                    row.update(fwd_ms=fwd, fwd_us_per_step=1e3 * fwd / T)
                    if bwd is not None:
                        row.update(bwd_ms=bwd, bwd_us_per_step=1e3 * bwd / T)
                except Exception as e:  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                rows.append(row)
    add_rnn_ratios(rows)
    rows.append(barrier_latency(env))
    return rows


def barrier_latency(env):
    """The grid barrier of the persistent RNN kernels alone (kernels/rnn_persistent.py
    barrier_kernel): one program per SM, us per barrier from the difference of two step
    counts (launch costs cancel)."""
    from seqcore.kernels import rnn_persistent

    torch = env.torch
    nprog = rnn_persistent.max_programs(torch.device(env.device))
    row = {"shape": f"grid barrier, {nprog} programs", "impl": "seqcore-triton"}
    try:
        few, many = (1, 9) if env.dry_run else (10, 1010)
        times = {}
        for steps in (few, many):
            counter = torch.zeros((1,), dtype=torch.int32, device=env.device)

            def run(steps=steps, counter=counter):
                counter.zero_()
                rnn_persistent.barrier_kernel[(nprog,)](counter, steps)

            times[steps] = env.time_ms(run)
        row["us_per_barrier"] = 1e3 * (times[many] - times[few]) / (many - few)
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return row


def add_rnn_ratios(rows):
    """row["fwd_vs_torch"] = torch time / impl time (> 1: faster than cuDNN), same for bwd."""
    torch_rows = {(r["shape"], r.get("dtype")): r for r in rows if r["impl"].startswith("torch")}
    for r in rows:
        base = torch_rows.get((r["shape"], r.get("dtype")))
        for p in ("fwd", "bwd"):
            if base and base.get(f"{p}_ms") and r.get(f"{p}_ms"):
                r[f"{p}_vs_torch"] = base[f"{p}_ms"] / r[f"{p}_ms"]


# ----------------------------------------------------------------------------------------------
# Output


def fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def print_checks(rows):
    print("\n== checks vs seqcore.reference (err/tol <= 1 passes) ==")
    for r in rows:
        status = "ok  " if r["ok"] else "FAIL"
        detail = r.get("error") or f"err/tol {r['worst_err_over_tol']:.3g}" + (
            f" [{r['path']}]" if r.get("path") else "")
        print(f"  {status} {r['dtype']:<9} {r['case']:<48} {detail}")
    print(f"  {sum(r['ok'] for r in rows)}/{len(rows)} passed")


def print_attention(rows):
    print("\n== attention TFLOP/s fwd / bwd ==")
    for r in rows:
        perf = r.get("error") or r.get("skipped") or \
            f"{fmt(r.get('fwd_tflops'), '7.1f')} / {fmt(r.get('bwd_tflops'), '7.1f')}"
        print(f"  {r['shape']:<30} {r['impl']:<16} {perf}")


def print_decode(rows):
    print("\n== decode: GB/s of K+V read ==")
    for r in rows:
        perf = r.get("error") or r.get("skipped") or \
            f"{r['ms'] * 1e3:9.1f} us  {r['GBps_read']:8.1f} GB/s"
        print(f"  {r['shape']:<26} {r['impl']:<24} {perf}")


def print_rnn(rows):
    print("\n== RNN us/step fwd / bwd (x vs torch) ==")
    for r in rows:
        if r.get("error") or r.get("skipped"):
            perf = r.get("error") or r["skipped"]
        elif "us_per_barrier" in r:
            perf = f"{r['us_per_barrier']:8.2f} us per barrier"
        else:
            perf = (f"{fmt(r.get('fwd_us_per_step'), '8.1f')} ({fmt(r.get('fwd_vs_torch'), '.2f')}x) / "
                    f"{fmt(r.get('bwd_us_per_step'), '8.1f')} ({fmt(r.get('bwd_vs_torch'), '.2f')}x)")
        print(f"  {r.get('dtype', '-'):<9} {r['shape']:<22} {r['impl']:<20} {perf}")


def write_json(results, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "gpu_suite.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=str)
    return path


SECTIONS = {"checks": (run_checks, print_checks), "attention": (run_attention, print_attention),
            "decode": (run_decode, print_decode), "rnn": (run_rnn, print_rnn)}
# Shares of the time budget left when a timed section starts, among the timed sections still
# to run (the checks always run whole): the RNN grid is the largest (96 shape-dtypes x 3)
BUDGET_SHARES = {"attention": 0.35, "decode": 0.15, "rnn": 0.5}


def section_deadline(section, todo, end):
    """perf_counter() by which `section` must stop starting timed cases: its share of what is
    left before `end` (the run's deadline) among the sections in `todo` (itself included)."""
    if end is None or section not in BUDGET_SHARES:
        return None
    left = end - time.perf_counter()
    share = BUDGET_SHARES[section] / sum(BUDGET_SHARES.get(s, 0) for s in todo)
    return time.perf_counter() + max(left, 0) * share


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="without a GPU: tiny shapes through the Triton interpreter")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--out", default=os.environ.get("OUT", os.path.join("bench", "out")),
                        help="folder for gpu_suite.json (default: $OUT, else bench/out)")
    parser.add_argument("--budget", type=float, default=330.0,
                        help="seconds from the start after which timed cases are skipped (and "
                             "recorded so): a lease's first run, compiles included, ends within "
                             "~6 minutes; 0 for no limit (default 330)")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    return args


def setup(dry_run):
    """The Env, or None (after saying why) when this machine cannot run the suite."""
    import torch

    if not torch.cuda.is_available():
        if not dry_run:
            print("gpu_suite: no CUDA GPU visible to torch; run with --dry-run to exercise the "
                  "script on the CPU through the Triton interpreter")
            return None
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    try:
        import triton  # noqa: F401
    except ImportError:
        print("gpu_suite: triton is not installed; nothing to run")
        return None
    return Env(dry_run)


def main(argv=None):
    args = parse_args(argv)
    env = setup(args.dry_run)
    if env is None:
        return 0
    import seqcore
    import seqcore.reference  # noqa: F401
    import triton

    results = {"device": env.name(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "dry_run": args.dry_run, "torch": env.torch.__version__, "triton": triton.__version__,
               "seqcore_backends": seqcore.backend_status(), "sections": args.only}
    end = START + args.budget if args.budget > 0 and not args.dry_run else None
    results["budget_s"] = args.budget
    print(f"gpu_suite on {results['device']}, torch {results['torch']}, triton {results['triton']}")
    path = write_json(results, args.out)
    for i, section in enumerate(args.only):
        run_section, print_section = SECTIONS[section]
        start = time.perf_counter()
        env.deadline = section_deadline(section, args.only[i:], end)
        try:
            results[section] = run_section(env, seqcore)
            print_section(results[section])
        except Exception as e:  # noqa: BLE001 - keep the other sections
            results[section] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(f"\n== {section}: FAILED {type(e).__name__}: {e}")
        results[f"{section}_seconds"] = time.perf_counter() - start
        path = write_json(results, args.out)
    print(f"\nwrote {path}")
    failed = [r for r in results.get("checks", []) if isinstance(r, dict) and not r.get("ok")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
