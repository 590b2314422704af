"""Split-KV attention forward for few queries against many keys (decoding), in Triton.

With Sq of 1..16 and Sk in the thousands, the FlashAttention-2 grid (query blocks x heads) has
too few programs to fill the GPU, and each reads all of k/v. Here:

1. _decode_split_kernel: grid (key split, batch * kv head, row tile), flattened. One program
   takes the query rows of one kv head -- its group of Hq // Hkv query heads times Sq queries,
   packed into BLOCK_M tiles (row r: query head h_kv * group + r // Sq, query r % Sq) -- so each
   key block is read once per kv head (GQA/MQA). All the rows form one tile, except for float32
   "ieee" dots (FMAs), whose tile is cut to what fits their registers (decode_block_m), the
   row tiles of one split running side by side. It runs the dense kernel's online-softmax
   block step (attn_fwd_block) over its slice of the keys and writes a float32 partial output,
   normalized within the split, and the split's lse (-inf when it saw no key).
2. _decode_combine_kernel: one program per query row merges the splits with the
   merge_attention math: w_s = exp(lse_s - max lse), out = sum w_s out_s / sum w_s,
   lse = max + log(sum w_s); a row no split saw gives out 0, lse -inf.

Band (causal/window), bias (any strides), softcap, odd head dims and dropout (HAS_DROPOUT:
the mask of kernels/dropout.py, regenerated per row from its own query head and position, so a
decode call drops exactly what the dense kernel would) work as in the dense kernel.
"""
import torch
import triton
import triton.language as tl

from ._common import (autotune_enabled, dot_precision, fits_shared_memory, fma_dots,
                      fma_tile_fits, head_block, interpreted, key_range, safe_max,
                      split_key_range, tf32_dots)
from .attention import attn_fwd_finish, attn_fwd_keys, score_params
from .dropout import NO_SPECIALIZE, dropout_args

MAX_SPLITS = 128


def _split_configs():
    if interpreted():
        return [triton.Config({}, num_warps=4, num_stages=1)]
    fallback = triton.Config({}, num_warps=4, num_stages=1)
    if not autotune_enabled():  # the first that _prune_split keeps runs (8 warps: FMA dots)
        return [triton.Config({}, num_warps=4, num_stages=3),
                triton.Config({}, num_warps=8, num_stages=3), fallback]
    return [triton.Config({}, num_warps=w, num_stages=s)
            for w in (4, 8) for s in (2, 3, 4)] + [fallback]


# TF32 dots (float32 inputs, SEQCORE_TF32=1): at most 64 float32 elements a thread of the
# accumulator and score tile (sm90-report-2026-12-03: D128 64 rows at 4 warps, 96, spilled
# 92-108 B; at 8 warps, 48, 234-238 registers; 16 rows at 4 warps, 24, 216-255; half precision
# holds 96 without spilling, 168-189 registers).
_TF32_TILE_ELEMENTS = 64


def _prune_split(configs, named_args, **kwargs):
    """Drop configs whose pipelined k/v tiles overflow shared memory. float32 "ieee" dots
    (FMAs): keep only one, the fewest warps at which the tile fits _common.fma_tile_fits and
    then the most stages (sm_90 compiles, see FMA_CALIBRATION in tests/test_sm90_report.py: D128
    16 rows at 4 warps 122-209 registers, at 8 it spilled 40 B with one query row; 32 rows, or
    16 of D256, need 8 warps, at 4 they spill 1.4-30 KB; D256 16 rows at 8 warps spilled 8 B
    with 2 stages, 3 are clean). Only the first without autotuning."""
    args = {**named_args, **kwargs}
    fits = [c for c in configs[:-1]
            if fits_shared_memory(args["Q"].element_size(), args["BLOCK_M"], args["BLOCK_N"],
                                  args["BLOCK_D"], args["BLOCK_DV"], c.num_stages)]
    if fma_dots(args["Q"].dtype == torch.float32, args["PRECISION"]):
        fits = [c for c in fits if fma_tile_fits(args["BLOCK_M"], args["BLOCK_N"],
                                                 args["BLOCK_DV"], c.num_warps)]
        fits = sorted(fits, key=lambda c: (c.num_warps, -c.num_stages))[:1]
    elif tf32_dots(args["Q"].dtype == torch.float32, args["PRECISION"]):  # _TF32_TILE_ELEMENTS
        fits = [c for c in fits if args["BLOCK_M"] * (args["BLOCK_DV"] + args["BLOCK_N"])
                <= _TF32_TILE_ELEMENTS * 32 * c.num_warps]
    fits = fits or configs[-1:]
    return fits if autotune_enabled() else fits[:1]


@triton.autotune(configs=_split_configs(), key=["HEAD_DIM", "HEAD_DIM_V", "BLOCK_M", "BLOCK_N",
                                                "BAND_LEFT", "BAND_RIGHT", "HAS_BIAS", "SOFTCAP",
                                                "HAS_DROPOUT", "PRECISION"],
                 prune_configs_by={"early_config_prune": _prune_split})
@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _decode_split_kernel(Q, K, V, Bias, Opart, Lpart,
                         stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                         stride_vb, stride_vh, stride_vn,
                         stride_bb, stride_bh, stride_bm, stride_bn,
                         n_kv_heads, group, n_q_heads, n_batch, seqlen_q, seqlen_k,
                         split_len, n_splits, n_m_tiles,
                         qk_scale, softcap_log2, window_left, window_right,
                         seed: tl.uint64, drop_threshold: tl.int32, drop_scale,
                         HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                         BAND_LEFT: tl.constexpr, BAND_RIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                         SOFTCAP: tl.constexpr, HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # one flat grid axis: no 65535 limit on B * Hkv; the row tiles of one split side by side
    pid = tl.program_id(0)
    m_tile = pid % n_m_tiles
    split = (pid // n_m_tiles) % n_splits
    seq_head = pid // (n_m_tiles * n_splits)
    b = (seq_head // n_kv_heads).to(tl.int64)
    h_kv = (seq_head % n_kv_heads).to(tl.int64)
    r = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = r < group * seqlen_q
    head = h_kv * group + (r // seqlen_q).to(tl.int64)
    qi = r % seqlen_q
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)

    q_rows = Q + b * stride_qb + head * stride_qh + qi.to(tl.int64) * stride_qm
    q = tl.load(q_rows[:, None] + offs_d[None, :],
                mask=row_valid[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    bias_rows = Bias + b * stride_bb + head * stride_bh + qi.to(tl.int64) * stride_bm

    # the band's key range for all the queries (whatever rows this tile holds), cut to this
    # split's keys
    lo, full_lo, full_hi, hi = key_range(0, seqlen_q - 1, seqlen_q, seqlen_k, window_left,
                                         window_right, BAND_LEFT, BAND_RIGHT, BLOCK_N)
    lo, full_lo, full_hi, hi = split_key_range(lo, full_lo, full_hi, hi, split * split_len,
                                               split_len)

    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = attn_fwd_keys(
        acc, m_i, l_i, q, k_base, v_base, bias_rows, row_valid, qi,
        lo, full_lo, full_hi, hi, seqlen_q, seqlen_k, stride_kn, stride_vn, stride_bn,
        qk_scale, softcap_log2, window_left, window_right,
        HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N,
        BAND_LEFT, BAND_RIGHT, HAS_BIAS, SOFTCAP, PRECISION,
        HAS_DROPOUT, seed, drop_threshold, (b * n_q_heads + head)[:, None])  # rows mix heads
    if HAS_DROPOUT:  # as the dense kernel: 1 / (1 - p) once (the combine is linear in it)
        acc = acc * drop_scale
    out, lse = attn_fwd_finish(acc, m_i, l_i)

    # partials are (split, B, Hq, Sq, Dv) and (split, B, Hq, Sq), contiguous
    part_rows = ((split * n_batch + b) * n_q_heads + head) * seqlen_q + qi
    tl.store(Opart + part_rows[:, None] * HEAD_DIM_V + offs_dv[None, :], out,
             mask=row_valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V))
    tl.store(Lpart + part_rows, lse, mask=row_valid)


@triton.jit
def _decode_combine_kernel(Opart, Lpart, Out, Lse, n_rows, n_splits,
                           HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr,
                           BLOCK_SPLITS: tl.constexpr, SPLIT_CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_SPLITS)
    lse_all = tl.load(Lpart + offs_s.to(tl.int64) * n_rows + row, mask=offs_s < n_splits,
                      other=float("-inf"))
    m_sub = safe_max(tl.max(lse_all, 0))
    total = tl.sum(tl.exp2((lse_all - m_sub) * 1.4426950408889634), 0)

    offs_dv = tl.arange(0, BLOCK_DV)
    acc = tl.zeros([BLOCK_DV], dtype=tl.float32)
    for s0 in range(0, n_splits, SPLIT_CHUNK):
        offs_c = s0 + tl.arange(0, SPLIT_CHUNK)
        in_range = offs_c < n_splits
        split_rows = offs_c.to(tl.int64) * n_rows + row
        lse_c = tl.load(Lpart + split_rows, mask=in_range, other=float("-inf"))
        w = tl.exp2((lse_c - m_sub) * 1.4426950408889634)
        o = tl.load(Opart + split_rows[:, None] * HEAD_DIM_V + offs_dv[None, :],
                    mask=in_range[:, None] & (offs_dv[None, :] < HEAD_DIM_V), other=0.0)
        acc += tl.sum(w[:, None] * o, 0)
    seen = total > 0.0
    out = acc / tl.where(seen, total, 1.0)
    lse = tl.where(seen, m_sub + tl.log(tl.where(seen, total, 1.0)), float("-inf"))
    tl.store(Out + row * HEAD_DIM_V + offs_dv, out.to(Out.dtype.element_ty),
             mask=offs_dv < HEAD_DIM_V)
    tl.store(Lse + row, lse)


def _block_n(D, Dv):
    if interpreted():
        return 16
    return 64 if max(D, Dv) <= 128 else 32


def decode_block_m(n_rows, D, Dv, fma):
    """Query-row tile of the split kernel for n_rows rows per kv head: all of them (a power of
    two, at least 16 for tl.dot); with FMA dots (float32 "ieee", fma=True) halved, down to 16,
    until the tile fits _common.fma_tile_fits at 8 warps (the most _split_configs has): 32 rows
    at head dims up to 128, 16 above. The 64-row tile they used to take spilled on sm_90 at any
    warp count (D64 w4: 255 registers, 2.9 KB; D128 w4: ptxas gave up at 32 registers, 57 KB),
    while 32 rows at 8 warps compile to 78 (D64) and 114 (D128) registers, 16 rows of D256 at 8
    warps to 112."""
    bm = max(16, triton.next_power_of_2(n_rows))
    if fma:
        bn, bdv = _block_n(D, Dv), head_block(Dv)
        while bm > 16 and not fma_tile_fits(bm, bn, bdv, 8):
            bm //= 2
    return bm


def default_num_splits(q, k, block_n, row_tiles=1):
    """Enough (batch * kv head * row tile, split) programs to fill the GPU twice over, at most
    one split per key block."""
    B, Hkv, Sk = k.shape[0], k.shape[1], k.shape[2]
    if q.device.type == "cuda":
        target = 2 * torch.cuda.get_device_properties(q.device).multi_processor_count
    else:
        target = 4
    programs = max(B * Hkv * row_tiles, 1)
    return max(1, min(triton.cdiv(target, programs), triton.cdiv(Sk, block_n), MAX_SPLITS))


def attention_decode_fwd(q, k, v, bias, p, num_splits=None):
    """Same contract as kernels.attention.attention_fwd: q (B, Hq, Sq, D), k (B, Hkv, Sk, D),
    v (B, Hkv, Sk, Dv) contiguous; bias None or a (B, Hq, Sq, Sk) view. Needs
    Sq * (Hq // Hkv) <= 128 (one tile of query rows per kv head). num_splits: key splits
    (default: default_num_splits). Returns out in q's dtype and lse float32."""
    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.shape[1], k.shape[2], v.shape[-1]
    group = Hq // Hkv
    out = torch.empty((B, Hq, Sq, Dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Sq), dtype=torch.float32, device=q.device)
    if lse.numel() == 0:
        return out, lse
    if Sk == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    kv_rows = Sq * group
    if kv_rows > 128:
        raise ValueError(f"attention_decode_fwd takes at most 128 query rows per kv head, got "
                         f"Sq * (Hq // Hkv) = {kv_rows}")
    precision = dot_precision(q.dtype == torch.float32)
    block_m = decode_block_m(kv_rows, D, Dv, fma_dots(q.dtype == torch.float32, precision))
    n_m_tiles = triton.cdiv(kv_rows, block_m)
    block_n = _block_n(D, Dv)
    n_blocks = triton.cdiv(Sk, block_n)
    splits = num_splits or default_num_splits(q, k, block_n, n_m_tiles)
    split_len = triton.cdiv(n_blocks, max(1, min(splits, n_blocks))) * block_n
    splits = triton.cdiv(Sk, split_len)  # no split left without keys by rounding
    out_part = torch.empty((splits, B, Hq, Sq, Dv), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((splits, B, Hq, Sq), dtype=torch.float32, device=q.device)

    qk_scale, softcap_log2 = score_params(p)
    has_dropout, seed, drop_threshold, drop_scale = dropout_args(p)
    b_strides = bias.stride() if bias is not None else (0, 0, 0, 0)
    _decode_split_kernel[(splits * B * Hkv * n_m_tiles,)](
        q, k, v, bias if bias is not None else q, out_part, lse_part,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *b_strides,
        Hkv, group, Hq, B, Sq, Sk, split_len, splits, n_m_tiles,
        qk_scale, softcap_log2, p.window_left, p.window_right,
        seed, drop_threshold, drop_scale,
        HEAD_DIM=D, HEAD_DIM_V=Dv, BLOCK_D=head_block(D), BLOCK_DV=head_block(Dv),
        BAND_LEFT=p.window_left >= 0, BAND_RIGHT=p.window_right >= 0,
        HAS_BIAS=bias is not None, SOFTCAP=bool(p.softcap), HAS_DROPOUT=has_dropout,
        PRECISION=precision, BLOCK_M=block_m, BLOCK_N=block_n)
    n_rows = B * Hq * Sq
    _decode_combine_kernel[(n_rows,)](
        out_part, lse_part, out, lse, n_rows, splits, HEAD_DIM_V=Dv,
        BLOCK_DV=triton.next_power_of_2(Dv), BLOCK_SPLITS=triton.next_power_of_2(splits),
        SPLIT_CHUNK=min(16, triton.next_power_of_2(splits)))
    return out, lse
