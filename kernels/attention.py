"""FlashAttention-2 forward in Triton: dense and packed (varlen) sequences, one jit body.

One program per (query block, sequence * query head), on one flat grid axis. It walks the key
blocks its rows can see, keeping a running max, sum and output accumulator (online softmax,
base 2, float32), and writes out = P v / sum and lse = ln(sum(exp(s))) (natural log, float32)
for the backward.

Features are tl.constexpr flags, so an unused one costs nothing:
  BAND_LEFT / BAND_RIGHT  causal / sliding window (bottom-right aligned, off = Sk - Sq): key
                          blocks outside the band are skipped (loop bounds), and only the edge
                          blocks are masked (three loops: left edge, interior, right edge)
  HAS_BIAS                additive bias read through its 4 strides (0 for broadcast dims)
  SOFTCAP                 s -> softcap * tanh(s / softcap)
  IS_VARLEN               sequence b spans rows cu_q[b]..cu_q[b+1] (keys likewise); the dense
                          case is the same body with fixed-length sequences
  HAS_DROPOUT             attention dropout (kernels/dropout.py): P @ v becomes (P * keep) @ v,
                          times 1 / (1 - p) once on the output; the running max and sum, so
                          lse, stay those of the un-dropped P
GQA: query head h reads kv head h // group, with no copy of k/v. Head dims D, Dv in 1..256 are
padded to powers of two (>= 16) inside the kernel and masked. A row that sees no key gets out 0,
lse -inf (never NaN).

float32 inputs: tl.dot runs in exact "ieee" precision by default; set the environment variable
SEQCORE_TF32=1 to use TensorFloat-32 tensor cores instead (much faster on Ampere/Hopper, about
1e-3 relative error in the scores). float16/bfloat16 always use tensor cores, accumulating in
float32.

Meta-parameters are autotuned (key: head dims, band/bias/softcap/varlen/dropout flags, dot
precision and dtypes) over Hopper-sized blocks (SEQCORE_AUTOTUNE=0: the default 128x64 tile
only, for fast test runs); float32 "ieee" dots, which run on FMAs, over smaller tiles of their
own (_fma_configs); under TRITON_INTERPRET=1 a single 16x16 config keeps the tests fast.
"""
import torch
import triton
import triton.language as tl

from ._common import (LOG2E, autotune_enabled, band_mask, dot_precision, fits_shared_memory,
                      fma_dots, fma_tile_fits, head_block, interpreted, key_range, safe_max,
                      scores, tf32_dots)
from .dropout import NO_SPECIALIZE, dropout_args, dropout_keep


# ----------------------------------------------------------------------------------------------
# Building blocks, shared with the split-KV decode kernel (kernels/attention_decode.py)


@triton.jit
def attn_fwd_block(acc, m_i, l_i, q, k_base, v_base, bias_rows, row_valid, offs_q, start_n,
                   seqlen_q, seqlen_k, stride_kn, stride_vn, stride_bn,
                   qk_scale, softcap_log2, window_left, window_right,
                   HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
                   MASKED: tl.constexpr, BAND_LEFT: tl.constexpr, BAND_RIGHT: tl.constexpr,
                   HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
                   HAS_DROPOUT: tl.constexpr = False, seed=0, drop_threshold=0, rng_bh=0):
    """One key block [start_n, start_n + BLOCK_N) folded into the running (acc, m_i, l_i).

    q: (M, BLOCK_D) tile; k_base/v_base point at key 0 of this sequence and kv head;
    bias_rows: (M,) pointers at bias[row, key 0]; offs_q: (M,) query positions (for the band).
    MASKED: check key bounds and the band (edge blocks); else the block is known to be whole
    and visible to every row.
    HAS_DROPOUT: only the probabilities that multiply v are dropped (kernels/dropout.py; rng_bh
    is b * Hq + h, a scalar or an (M, 1) column); the caller scales acc by 1 / (1 - p) once.
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    key_rows = offs_n.to(tl.int64)
    key_ok = offs_n < seqlen_k
    # keys come in transposed, (BLOCK_D, BLOCK_N), so the scores are one plain dot
    k_ptrs = k_base + key_rows[None, :] * stride_kn + offs_d[:, None]
    if MASKED:
        k = tl.load(k_ptrs, mask=key_ok[None, :] & (offs_d[:, None] < HEAD_DIM), other=0.0)
    else:
        k = tl.load(k_ptrs, mask=offs_d[:, None] < HEAD_DIM, other=0.0)
    s = scores(q, k, qk_scale, softcap_log2, SOFTCAP, PRECISION)
    if HAS_BIAS:
        b_ptrs = bias_rows[:, None] + key_rows[None, :] * stride_bn
        if MASKED:
            bias = tl.load(b_ptrs, mask=row_valid[:, None] & key_ok[None, :], other=0.0)
        else:
            bias = tl.load(b_ptrs, mask=row_valid[:, None], other=0.0)
        s += bias.to(tl.float32) * 1.4426950408889634
    if MASKED:
        visible = band_mask(offs_q, offs_n, seqlen_q, seqlen_k, window_left, window_right,
                            BAND_LEFT, BAND_RIGHT)
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_sub = safe_max(m_new)
    alpha = tl.exp2(m_i - m_sub)
    p = tl.exp2(s - m_sub[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if HAS_DROPOUT:  # after the sum: the softmax (and lse) is that of P before dropout
        p = tl.where(dropout_keep(seed, offs_q, offs_n, rng_bh, drop_threshold), p, 0.0)
    v_ptrs = v_base + key_rows[:, None] * stride_vn + offs_dv[None, :]
    if MASKED:
        v = tl.load(v_ptrs, mask=key_ok[:, None] & (offs_dv[None, :] < HEAD_DIM_V), other=0.0)
    else:
        v = tl.load(v_ptrs, mask=offs_dv[None, :] < HEAD_DIM_V, other=0.0)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def attn_fwd_range(acc, m_i, l_i, q, k_base, v_base, bias_rows, row_valid, offs_q, lo, hi,
                   seqlen_q, seqlen_k, stride_kn, stride_vn, stride_bn,
                   qk_scale, softcap_log2, window_left, window_right,
                   HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
                   MASKED: tl.constexpr, BAND_LEFT: tl.constexpr, BAND_RIGHT: tl.constexpr,
                   HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
                   HAS_DROPOUT: tl.constexpr = False, seed=0, drop_threshold=0, rng_bh=0):
    """attn_fwd_block over the key blocks starting at lo, lo + BLOCK_N, ... below hi."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        acc, m_i, l_i = attn_fwd_block(
            acc, m_i, l_i, q, k_base, v_base, bias_rows, row_valid, offs_q, start_n,
            seqlen_q, seqlen_k, stride_kn, stride_vn, stride_bn,
            qk_scale, softcap_log2, window_left, window_right,
            HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N,
            MASKED, BAND_LEFT, BAND_RIGHT, HAS_BIAS, SOFTCAP, PRECISION,
            HAS_DROPOUT, seed, drop_threshold, rng_bh)
    return acc, m_i, l_i


@triton.jit
def attn_fwd_keys(acc, m_i, l_i, q, k_base, v_base, bias_rows, row_valid, offs_q,
                  lo, full_lo, full_hi, hi,
                  seqlen_q, seqlen_k, stride_kn, stride_vn, stride_bn,
                  qk_scale, softcap_log2, window_left, window_right,
                  HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
                  BAND_LEFT: tl.constexpr, BAND_RIGHT: tl.constexpr,
                  HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
                  HAS_DROPOUT: tl.constexpr = False, seed=0, drop_threshold=0, rng_bh=0):
    """All keys in [lo, hi) (bounds from key_range): masked left edge, unmasked interior,
    masked right edge."""
    acc, m_i, l_i = attn_fwd_range(
        acc, m_i, l_i, q, k_base, v_base, bias_rows, row_valid, offs_q, lo, full_lo,
        seqlen_q, seqlen_k, stride_kn, stride_vn, stride_bn, qk_scale, softcap_log2,
        window_left, window_right, HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N,
        True, BAND_LEFT, BAND_RIGHT, HAS_BIAS, SOFTCAP, PRECISION,
        HAS_DROPOUT, seed, drop_threshold, rng_bh)
    acc, m_i, l_i = attn_fwd_range(
        acc, m_i, l_i, q, k_base, v_base, bias_rows, row_valid, offs_q, full_lo, full_hi,
        seqlen_q, seqlen_k, stride_kn, stride_vn, stride_bn, qk_scale, softcap_log2,
        window_left, window_right, HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N,
        False, BAND_LEFT, BAND_RIGHT, HAS_BIAS, SOFTCAP, PRECISION,
        HAS_DROPOUT, seed, drop_threshold, rng_bh)
    acc, m_i, l_i = attn_fwd_range(
        acc, m_i, l_i, q, k_base, v_base, bias_rows, row_valid, offs_q, full_hi, hi,
        seqlen_q, seqlen_k, stride_kn, stride_vn, stride_bn, qk_scale, softcap_log2,
        window_left, window_right, HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N,
        True, BAND_LEFT, BAND_RIGHT, HAS_BIAS, SOFTCAP, PRECISION,
        HAS_DROPOUT, seed, drop_threshold, rng_bh)
    return acc, m_i, l_i


@triton.jit
def attn_fwd_finish(acc, m_i, l_i):
    """(out, lse): the normalized output tile and the natural-log lse; rows that saw no key
    (l_i == 0) give out 0 and lse -inf."""
    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    return out, lse


# ----------------------------------------------------------------------------------------------
# The kernel


def _configs():
    if interpreted():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    # fits where the Hopper tiles do not (float32 at D = 256)
    fallback = triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=1)
    if not autotune_enabled():  # the first that _prune keeps runs: 8 warps for dropout, D128, bias
        return [triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
                triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
                fallback]
    hopper = [triton.Config({"BLOCK_M": 128, "BLOCK_N": bn}, num_warps=w, num_stages=s)
              for bn in (64, 128) for w in (4, 8) for s in (2, 3, 4)]
    return hopper + [fallback]


def _fma_configs():
    """The tiles of float32 "ieee" dots (FMAs on CUDA cores), which _prune takes instead of the
    list above (every tile of which spills with them), those that fit _common.fma_tile_fits
    (and shared memory): in order of preference, so that without autotuning D64 runs 64x32,
    D128 32x64 and D256 16x32. All at 8 warps and 3 stages, the only settings at which every
    tile here compiled clean on sm_90 (FMA_CALIBRATION in tests/test_sm90_report.py): with 2
    stages D128 16x32 spilled 4 B (and D64 64x32 with bias+softcap took 255 registers), at 4
    warps D128 16x32 spilled 584 B, and D256 16x64 (1 stage, more overflow shared memory)
    176 B."""
    if interpreted():
        return []
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=8, num_stages=3)
            for m, n in ((64, 32), (32, 64), (16, 32))]


_FMA_CONFIGS = _fma_configs()


def _dropout_fits(c):
    """With dropout, at most 32 score elements per thread: each needs Philox's four 32-bit
    words next to the accumulator. Measured on sm_90 (bfloat16, D 64/128, with and without
    bias+softcap): 128x64 at 8 warps compiles without spills (141-254 registers); at 4 warps
    it spills 4 B-5 KB, and 128x128 at 8 warps 2.7 KB with bias+softcap."""
    return c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 32 * 32 * c.num_warps


def _registers_fit(c, args):
    """At most 128 float32 tile elements per thread: the output accumulator (BLOCK_M x
    BLOCK_DV) and the score tile (BLOCK_M x BLOCK_N), counted twice with a bias or softcap
    (the bias tile, the capped scores). Calibrated on every half-precision forward config the
    sm_90 report compiled (bench/results/sm90-report-2026-12-02.json): all with <= 128 compiled
    without spills (D128 128x128 at 8 warps: 255 registers; D128 128x64 at 8 warps with
    bias+softcap: 246-248), all above spilled (192: D128 128x64 at 4 warps 200-270 B, D64
    128x128 at 4 warps 36-48 B, D64 128x64 at 4 warps with bias+softcap ~500 B; 160: D64
    128x128 at 8 warps with bias+softcap 16-100 B).
    TF32 dots (float32 inputs, SEQCORE_TF32=1; 32-bit operands): the same count, at 8 warps
    only (sm90-report-2026-12-03: every 4-warp TF32 tile spilled, D64 128x64 32-80 B, D128 64x32
    with bias+softcap 4 B; every 8-warp one within the count compiled clean, D128 128x64 with
    bias+softcap 252 registers, D64 128x128 and D128 128x64 252-255, D64 128x64 174-228)."""
    score_tiles = 2 if args["HAS_BIAS"] or args["SOFTCAP"] else 1
    elements = c.kwargs["BLOCK_M"] * (args["BLOCK_DV"] + score_tiles * c.kwargs["BLOCK_N"])
    if tf32_dots(args["Q"].dtype == torch.float32, args["PRECISION"]) and c.num_warps < 8:
        return False
    return elements <= 128 * 32 * c.num_warps


def _prune(configs, named_args, **kwargs):
    """Drop configs whose tiles overflow shared memory or registers (_registers_fit, and with
    dropout _dropout_fits); keep BLOCK_M = 128 ones where any fit; only the first without
    autotuning. float32 "ieee" dots (FMAs) take _FMA_CONFIGS instead, those that fit shared
    memory and _common.fma_tile_fits."""
    args = {**named_args, **kwargs}
    bias_bytes = args["Bias"].element_size() if args["HAS_BIAS"] else 0

    def shared_fits(c):
        return fits_shared_memory(args["Q"].element_size(), c.kwargs["BLOCK_M"],
                                  c.kwargs["BLOCK_N"], args["BLOCK_D"], args["BLOCK_DV"],
                                  c.num_stages, bias_bytes=bias_bytes)

    if fma_dots(args["Q"].dtype == torch.float32, args["PRECISION"]) and _FMA_CONFIGS:
        kept = [c for c in _FMA_CONFIGS
                if shared_fits(c) and (not args["HAS_DROPOUT"] or _dropout_fits(c))
                and fma_tile_fits(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], args["BLOCK_DV"],
                                  c.num_warps)] or configs[-1:]
        return kept if autotune_enabled() else kept[:1]
    fits = [c for c in configs
            if shared_fits(c) and _registers_fit(c, args)
            and (not args["HAS_DROPOUT"] or _dropout_fits(c))]
    hopper = [c for c in fits if c.kwargs["BLOCK_M"] == 128]
    kept = hopper or fits or configs[-1:]
    return kept if autotune_enabled() else kept[:1]


@triton.autotune(configs=_configs(), key=["HEAD_DIM", "HEAD_DIM_V", "BAND_LEFT", "BAND_RIGHT",
                                          "HAS_BIAS", "SOFTCAP", "IS_VARLEN", "HAS_DROPOUT",
                                          "PRECISION"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _attn_fwd_kernel(Q, K, V, Bias, Out, Lse, cu_q, cu_k,
                     stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                     stride_lb, stride_lh, stride_lm,
                     stride_bb, stride_bh, stride_bm, stride_bn,
                     n_heads, group, seqlen_q_dense, seqlen_k_dense,  # varlen: max_q, max_k
                     qk_scale, softcap_log2, window_left, window_right,
                     seed: tl.uint64, drop_threshold: tl.int32, drop_scale,
                     HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                     BAND_LEFT: tl.constexpr, BAND_RIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SOFTCAP: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                     PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # one flat grid axis (no 65535 limit on B * H); query blocks of one head run side by side
    n_m_blocks = tl.cdiv(seqlen_q_dense, BLOCK_M)
    start_m = (tl.program_id(0) % n_m_blocks) * BLOCK_M
    seq_head = tl.program_id(0) // n_m_blocks
    b = (seq_head // n_heads).to(tl.int64)
    h = (seq_head % n_heads).to(tl.int64)
    h_kv = h // group
    if IS_VARLEN:
        q_start = tl.load(cu_q + b).to(tl.int64)
        k_start = tl.load(cu_k + b).to(tl.int64)
        seqlen_q = (tl.load(cu_q + b + 1) - q_start).to(tl.int32)
        seqlen_k = (tl.load(cu_k + b + 1) - k_start).to(tl.int32)
    else:
        q_start = 0
        k_start = 0
        seqlen_q = seqlen_q_dense
        seqlen_k = seqlen_k_dense
    if start_m < seqlen_q:  # varlen: the grid covers the longest sequence
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        rows = offs_m.to(tl.int64)
        row_valid = offs_m < seqlen_q
        q_base = Q + b * stride_qb + h * stride_qh + q_start * stride_qm
        q = tl.load(q_base + rows[:, None] * stride_qm + offs_d[None, :],
                    mask=row_valid[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        k_base = K + b * stride_kb + h_kv * stride_kh + k_start * stride_kn
        v_base = V + b * stride_vb + h_kv * stride_vh + k_start * stride_vn
        bias_rows = Bias + b * stride_bb + h * stride_bh + rows * stride_bm

        last_m = tl.minimum(start_m + BLOCK_M, seqlen_q) - 1
        lo, full_lo, full_hi, hi = key_range(start_m, last_m, seqlen_q, seqlen_k, window_left,
                                             window_right, BAND_LEFT, BAND_RIGHT, BLOCK_N)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc, m_i, l_i = attn_fwd_keys(
            acc, m_i, l_i, q, k_base, v_base, bias_rows, row_valid, offs_m,
            lo, full_lo, full_hi, hi, seqlen_q, seqlen_k, stride_kn, stride_vn, stride_bn,
            qk_scale, softcap_log2, window_left, window_right,
            HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N,
            BAND_LEFT, BAND_RIGHT, HAS_BIAS, SOFTCAP, PRECISION,
            HAS_DROPOUT, seed, drop_threshold, b * n_heads + h)
        if HAS_DROPOUT:  # 1 / (1 - p) once here, in float32, not on each (half-precision) P
            acc = acc * drop_scale
        out, lse = attn_fwd_finish(acc, m_i, l_i)

        o_base = Out + b * stride_ob + h * stride_oh + q_start * stride_om
        tl.store(o_base + rows[:, None] * stride_om + offs_dv[None, :],
                 out.to(Out.dtype.element_ty),
                 mask=row_valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V))
        l_base = Lse + b * stride_lb + h * stride_lh + q_start * stride_lm
        tl.store(l_base + rows * stride_lm, lse, mask=row_valid)


# ----------------------------------------------------------------------------------------------
# Launchers (no validation: seqcore/attention.py has done it)


def score_params(p):
    """(qk_scale, softcap_log2) for scores() in kernels/_common.py, from AttnParams p."""
    if p.softcap:
        return p.scale / p.softcap, p.softcap * LOG2E
    return p.scale * LOG2E, 0.0


def _launch(q, k, v, bias, out, lse, cu_q, cu_k, n_seqs, Hq, Hkv, Sq, Sk, strides, p, is_varlen):
    """strides: the (sequence, head, row) strides of q, k, v, out, lse, in that order.
    Sq, Sk: the (longest) sequence lengths; cu_q/cu_k: None for dense."""
    D, Dv = q.shape[-1], v.shape[-1]
    qk_scale, softcap_log2 = score_params(p)
    has_dropout, seed, drop_threshold, drop_scale = dropout_args(p)
    b_strides = bias.stride() if bias is not None else (0, 0, 0, 0)
    dummy = q  # never read: pointers behind a false constexpr flag
    grid = lambda meta: (triton.cdiv(Sq, meta["BLOCK_M"]) * n_seqs * Hq,)  # noqa: E731
    _attn_fwd_kernel[grid](
        q, k, v, bias if bias is not None else dummy, out, lse,
        cu_q if cu_q is not None else dummy, cu_k if cu_k is not None else dummy,
        *[x for triple in strides for x in triple], *b_strides,
        Hq, Hq // Hkv, Sq, Sk, qk_scale, softcap_log2, p.window_left, p.window_right,
        seed, drop_threshold, drop_scale,
        HEAD_DIM=D, HEAD_DIM_V=Dv, BLOCK_D=head_block(D), BLOCK_DV=head_block(Dv),
        BAND_LEFT=p.window_left >= 0, BAND_RIGHT=p.window_right >= 0,
        HAS_BIAS=bias is not None, SOFTCAP=bool(p.softcap), IS_VARLEN=is_varlen,
        HAS_DROPOUT=has_dropout, PRECISION=dot_precision(q.dtype == torch.float32))


def attention_fwd(q, k, v, bias, p):
    """q (B, Hq, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv) contiguous; bias None or a
    (B, Hq, Sq, Sk) view with any strides; p: AttnParams.
    Returns out (B, Hq, Sq, Dv) in q's dtype and lse (B, Hq, Sq) float32."""
    B, Hq, Sq, _ = q.shape
    Sk, Dv = k.shape[2], v.shape[-1]
    out = torch.empty((B, Hq, Sq, Dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Sq), dtype=torch.float32, device=q.device)
    if lse.numel() == 0:  # no query rows (Dv >= 1 is guaranteed by validation)
        return out, lse
    if Sk == 0:  # nothing to attend to: every row is empty
        return out.zero_(), lse.fill_(float("-inf"))
    strides = [x.stride()[:3] for x in (q, k, v, out, lse)]
    _launch(q, k, v, bias, out, lse, None, None, B, Hq, k.shape[1], Sq, Sk, strides, p,
            is_varlen=False)
    return out, lse


def attention_varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, p):
    """q (Tq, Hq, D), k (Tk, Hkv, D), v (Tk, Hkv, Dv) contiguous; cu_q/cu_k int32 (N + 1,).
    Returns out (Tq, Hq, Dv) in q's dtype and lse (Tq, Hq) float32."""
    Tq, Hq, _ = q.shape
    Dv = v.shape[-1]
    n_seqs = cu_q.shape[0] - 1
    out = torch.empty((Tq, Hq, Dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((Tq, Hq), dtype=torch.float32, device=q.device)
    if Tq == 0 or Hq == 0 or n_seqs == 0 or max_q == 0:
        return out, lse
    if k.shape[0] == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    # sequence b starts cu_*[b] rows into one packed "batch", so the batch strides are 0
    strides = [(0, x.stride(1), x.stride(0)) for x in (q, k, v, out, lse)]
    _launch(q, k, v, None, out, lse, cu_q, cu_k, n_seqs, Hq, k.shape[1], max_q, max_k, strides,
            p, is_varlen=True)
    return out, lse
