"""FlashAttention-2 backward in Triton, for dense and packed (varlen) attention.

Three kernels:
  _delta_kernel  delta_i = sum_d dO_id * O_id in float32: the row term of the softmax backward.
  _dkdv_kernel   one program per (key block, batch * kv head). It loops over the query blocks of
                 every query head of its GQA group, so dK and dV are summed over the group in
                 registers: no atomics, and K/V are never repeated in memory.
  _dq_kernel     one program per (query block, batch * query head), looping over key blocks.
                 It also writes dS (the gradient of the biased scores, i.e. of the bias) when asked.

Neither main kernel stores P: it is recomputed from the forward's saved log-sum-exp,
P = exp2(s * log2e - lse * log2e). Then, with delta from the pre-pass,
  dV += P^T dO,  dP = dO V^T,  dS = P * (dP - delta),
  dS_raw = dS * (1 - tanh^2)  (softcap only: the slope of softcap * tanh(x / softcap)),
  dK += dS_raw^T Q * scale,  dQ += dS_raw K * scale.
With dropout (HAS_DROPOUT; the mask of kernels/dropout.py, regenerated from the seed, the same
the forward drew): P~ = P * keep / (1 - p) is what multiplied V, so
  dV += P~^T dO,  dP = (dO V^T) * keep / (1 - p),  dS = P * (dP - delta),
and delta = rowsum(dO * O) = rowsum(P * dP) still holds (O = P~ V). dV is accumulated from
P * keep and scaled by 1 / (1 - p) once at the store.

Masking: key j is visible to query i iff j >= i + off - window_left (if window_left >= 0) and
j <= i + off + window_right (if window_right >= 0), off = Sk - Sq per sequence (bottom-right
alignment; causal arrives folded into window_right = 0). Loops run only over the blocks that
touch the band, and the -inf mask is applied only to blocks on its edge (or on a ragged end).
A row with no visible key has lse = -inf; it is treated as lse = +inf so that P = 0 there.

Dense and varlen share the kernels: every tensor is addressed through (batch, head, row)
strides plus a sequence start. Dense rows start at 0 with a batch stride; packed rows have a
batch stride of 0 and start at cu_seqlens[b].
"""
import torch
import triton
import triton.language as tl

from seqcore.kernels._common import (autotune_enabled, dot_precision, fma_dots, head_block,
                                     interpreted, tanh, tf32_dots)
from seqcore.kernels.dropout import NO_SPECIALIZE, dropout_args, dropout_keep


# ----------------------------------------------------------------------------------------------
# jit helpers


@triton.jit
def _seq_span(CU, b, seqlen, IS_VARLEN: tl.constexpr):
    """(first row, number of rows) of sequence b: cu_seqlens for packed, (0, seqlen) for dense."""
    start = b * 0
    length = seqlen + b * 0
    if IS_VARLEN:
        start = tl.load(CU + b)
        length = tl.load(CU + b + 1) - start
    return start, length


@triton.jit
def _block_and_head(seqlen, BLOCK: tl.constexpr):
    """(block index, batch * head index) of this program on a flat grid of cdiv(seqlen, BLOCK)
    blocks per head: no 65535 limit on batch * heads, and one head's blocks run side by side."""
    n_blocks = tl.cdiv(seqlen, BLOCK)
    pid = tl.program_id(0)
    return pid % n_blocks, pid // n_blocks


@triton.jit
def _base(b, start, h, stride_b, stride_h, stride_s):
    """int64 offset of row `start` of (batch b, head h): products can pass 2^31."""
    return b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h + start.to(tl.int64) * stride_s


@triton.jit
def _tile_ptrs(ptr, row0, offs_rows, stride_s, offs_cols):
    """Pointers to rows offs_rows (starting at row0) x cols offs_cols. row0 * stride goes in
    int64 (it can pass 2^31), the in-tile offsets in int32 (cheap: 64-bit offset tiles spill)."""
    return (ptr + tl.cast(row0, tl.int64) * stride_s) + ((offs_rows - row0)[:, None] * stride_s
                                                   + offs_cols[None, :])


@triton.jit
def _load_rows(ptr, row0, offs_rows, n_rows, stride_s, offs_cols, n_cols):
    """A (rows, cols) tile, zero outside n_rows x n_cols."""
    ptrs = _tile_ptrs(ptr, row0, offs_rows, stride_s, offs_cols)
    mask = (offs_rows[:, None] < n_rows) & (offs_cols[None, :] < n_cols)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _store_rows(ptr, tile, row0, offs_rows, n_rows, stride_s, offs_cols, n_cols):
    ptrs = _tile_ptrs(ptr, row0, offs_rows, stride_s, offs_cols)
    mask = (offs_rows[:, None] < n_rows) & (offs_cols[None, :] < n_cols)
    tl.store(ptrs, tile.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_rowvec(ptr, row0, offs_m, len_q, stride_s, other):
    ptrs = (ptr + tl.cast(row0, tl.int64) * stride_s) + (offs_m - row0) * stride_s
    return tl.load(ptrs, mask=offs_m < len_q, other=other)


@triton.jit
def _load_lse2(LSE, m0, offs_m, len_q, stride_s):
    """lse * log2(e) per row; rows without keys (and rows past the end) get +inf, so P = 0."""
    lse = _load_rowvec(LSE, m0, offs_m, len_q, stride_s, float("-inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)


@triton.jit
def _is_edge(m0, n0, len_q, len_k, off, window_left, window_right,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """True if some (query, key) pair of the tile is masked: a ragged end or the band's edge."""
    edge = (m0 + BLOCK_M > len_q) | (n0 + BLOCK_N > len_k)
    if HAS_LEFT:   # the smallest key must sit right of the largest query's left limit
        edge = edge | (n0 < m0 + (BLOCK_M - 1) + off - window_left)
    if HAS_RIGHT:  # the largest key must sit left of the smallest query's right limit
        edge = edge | (n0 + (BLOCK_N - 1) > m0 + off + window_right)
    return edge


@triton.jit
def _visible(offs_m, offs_n, len_q, len_k, off, window_left, window_right,
             HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    i = offs_m[:, None]
    j = offs_n[None, :]
    ok = (i < len_q) & (j < len_k)
    if HAS_LEFT:
        ok = ok & (j >= i + off - window_left)
    if HAS_RIGHT:
        ok = ok & (j <= i + off + window_right)
    return ok


@triton.jit
def _probs(q, k, lse2, bias_tile, offs_m, offs_n, m0, n0, len_q, len_k, off,
           window_left, window_right, scale, softcap,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr,
           SOFTCAP: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
           DOT_PRECISION: tl.constexpr):
    """(P, slope) of one (query block, key block) tile. slope = d(capped)/d(raw score) =
    1 - tanh^2 under softcap; without softcap it is the raw score tile, unused by callers."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    slope = s
    if SOFTCAP:
        t = tanh(s / softcap)
        s = softcap * t
        slope = 1.0 - t * t
    if HAS_BIAS:
        s = s + bias_tile
    if _is_edge(m0, n0, len_q, len_k, off, window_left, window_right,
                BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT):
        s = tl.where(_visible(offs_m, offs_n, len_q, len_k, off, window_left, window_right,
                              HAS_LEFT, HAS_RIGHT), s, float("-inf"))
    p = tl.math.exp2(s * 1.4426950408889634 - lse2[:, None])
    return p, slope


@triton.jit
def _load_bias(BIAS, b, h, m0, n0, offs_m, offs_n, len_q, len_k,
               stride_b, stride_h, stride_m, stride_n, HAS_BIAS: tl.constexpr):
    """The float32 bias tile (zero-stride broadcast dims welcome); 0.0 when there is no bias."""
    if HAS_BIAS:
        base = (b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
                + tl.cast(m0, tl.int64) * stride_m + tl.cast(n0, tl.int64) * stride_n)
        ptrs = BIAS + base + ((offs_m - m0)[:, None] * stride_m + (offs_n - n0)[None, :] * stride_n)
        mask = (offs_m[:, None] < len_q) & (offs_n[None, :] < len_k)
        return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    else:
        return 0.0


# ----------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _delta_kernel(O, DO, DELTA, CU_Q,
                  so_b, so_h, so_s, sdo_b, sdo_h, sdo_s, sl_b, sl_h, sl_s,
                  H, S_Q,
                  HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
                  IS_VARLEN: tl.constexpr):
    pid_m, pid_bh = _block_and_head(S_Q, BLOCK_M)
    b = pid_bh // H
    h = pid_bh % H
    start, len_q = _seq_span(CU_Q, b, S_Q, IS_VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= len_q:
        return
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    o = _load_rows(O + _base(b, start, h, so_b, so_h, so_s), m0, offs_m, len_q, so_s,
                   offs_dv, HEAD_DV)
    do = _load_rows(DO + _base(b, start, h, sdo_b, sdo_h, sdo_s), m0, offs_m, len_q, sdo_s,
                    offs_dv, HEAD_DV)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    delta_ptr = DELTA + _base(b, start, h, sl_b, sl_h, sl_s) + tl.cast(m0, tl.int64) * sl_s
    tl.store(delta_ptr + (offs_m - m0) * sl_s, delta, mask=offs_m < len_q)


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, BIAS, DK, DV, CU_Q, CU_K,
                 sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sdo_b, sdo_h, sdo_s,
                 sl_b, sl_h, sl_s, sbias_b, sbias_h, sbias_m, sbias_n,
                 H_KV, GROUP, S_Q, S_K, scale, softcap, window_left, window_right,
                 seed: tl.uint64, drop_threshold: tl.int32, drop_scale,
                 HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
                 BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                 IS_VARLEN: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr,
                 HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK, dV of one key block of one kv head, summed over the query heads of its group.
    dk/dv share k/v's strides (the launcher allocates them alike)."""
    pid_n, pid_bh = _block_and_head(S_K, BLOCK_N)
    b = pid_bh // H_KV
    h_kv = pid_bh % H_KV
    start_q, len_q = _seq_span(CU_Q, b, S_Q, IS_VARLEN)
    start_k, len_k = _seq_span(CU_K, b, S_K, IS_VARLEN)
    n0 = pid_n * BLOCK_N
    if n0 >= len_k:
        return
    off = len_k - len_q
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k_base = _base(b, start_k, h_kv, sk_b, sk_h, sk_s)
    v_base = _base(b, start_k, h_kv, sv_b, sv_h, sv_s)
    k = _load_rows(K + k_base, n0, offs_n, len_k, sk_s, offs_d, HEAD_D)
    v = _load_rows(V + v_base, n0, offs_n, len_k, sv_s, offs_dv, HEAD_DV)

    # queries that can see a key of this block: i >= j - off - right and i <= j - off + left
    lo_m = b * 0
    hi_m = len_q
    if HAS_RIGHT:
        lo_m = tl.maximum(n0 - off - window_right, 0)
        lo_m = (lo_m // BLOCK_M) * BLOCK_M
    if HAS_LEFT:
        hi_m = tl.minimum(n0 + BLOCK_N - off + window_left, len_q)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    for g in range(0, GROUP):
        h = h_kv * GROUP + g
        q_ptr = Q + _base(b, start_q, h, sq_b, sq_h, sq_s)
        do_ptr = DO + _base(b, start_q, h, sdo_b, sdo_h, sdo_s)
        l_base = _base(b, start_q, h, sl_b, sl_h, sl_s)
        for m0 in range(lo_m, hi_m, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            q = _load_rows(q_ptr, m0, offs_m, len_q, sq_s, offs_d, HEAD_D)
            do = _load_rows(do_ptr, m0, offs_m, len_q, sdo_s, offs_dv, HEAD_DV)
            lse2 = _load_lse2(LSE + l_base, m0, offs_m, len_q, sl_s)
            delta = _load_rowvec(DELTA + l_base, m0, offs_m, len_q, sl_s, 0.0)
            bias = _load_bias(BIAS, b, h, m0, n0, offs_m, offs_n, len_q, len_k,
                              sbias_b, sbias_h, sbias_m, sbias_n, HAS_BIAS)
            p, slope = _probs(q, k, lse2, bias, offs_m, offs_n, m0, n0, len_q, len_k, off,
                              window_left, window_right, scale, softcap, BLOCK_M, BLOCK_N,
                              HAS_BIAS, SOFTCAP, HAS_LEFT, HAS_RIGHT, DOT_PRECISION)
            if HAS_DROPOUT:  # P~ = P * keep / (1 - p) multiplied V: see the module docstring
                dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
                # both uses of the mask right where it is drawn: it is not live across a dot
                keep = dropout_keep(seed, offs_m, offs_n, b * (H_KV * GROUP) + h, drop_threshold)
                dp = tl.where(keep, dp * drop_scale, 0.0)
                p_kept = tl.where(keep, p, 0.0)
                dv += tl.dot(tl.trans(p_kept.to(do.dtype)), do, input_precision=DOT_PRECISION)
            else:
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
                dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            if SOFTCAP:
                ds = ds * slope
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
    if HAS_DROPOUT:  # 1 / (1 - p) of P~, once on the float32 sum
        dv = dv * drop_scale
    _store_rows(DK + k_base, dk * scale, n0, offs_n, len_k, sk_s, offs_d, HEAD_D)
    _store_rows(DV + v_base, dv, n0, offs_n, len_k, sv_s, offs_dv, HEAD_DV)


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _dq_kernel(Q, K, V, DO, LSE, DELTA, BIAS, DQ, DBIAS, CU_Q, CU_K,
               sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sdo_b, sdo_h, sdo_s,
               sl_b, sl_h, sl_s, sbias_b, sbias_h, sbias_m, sbias_n,
               sdb_b, sdb_h, sdb_m,
               H, GROUP, S_Q, S_K, scale, softcap, window_left, window_right,
               seed: tl.uint64, drop_threshold: tl.int32, drop_scale,
               HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
               IS_VARLEN: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr,
               HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
               NEED_DBIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of one query block of one query head (dq shares q's strides); with NEED_DBIAS also
    dS into the contiguous-in-keys (B, Hq, Sq, Sk) buffer DBIAS."""
    pid_m, pid_bh = _block_and_head(S_Q, BLOCK_M)
    b = pid_bh // H
    h = pid_bh % H
    h_kv = h // GROUP
    start_q, len_q = _seq_span(CU_Q, b, S_Q, IS_VARLEN)
    start_k, len_k = _seq_span(CU_K, b, S_K, IS_VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= len_q:
        return
    off = len_k - len_q
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_base = _base(b, start_q, h, sq_b, sq_h, sq_s)
    l_base = _base(b, start_q, h, sl_b, sl_h, sl_s)
    q = _load_rows(Q + q_base, m0, offs_m, len_q, sq_s, offs_d, HEAD_D)
    do = _load_rows(DO + _base(b, start_q, h, sdo_b, sdo_h, sdo_s), m0, offs_m, len_q, sdo_s,
                    offs_dv, HEAD_DV)
    lse2 = _load_lse2(LSE + l_base, m0, offs_m, len_q, sl_s)
    delta = _load_rowvec(DELTA + l_base, m0, offs_m, len_q, sl_s, 0.0)
    k_ptr = K + _base(b, start_k, h_kv, sk_b, sk_h, sk_s)
    v_ptr = V + _base(b, start_k, h_kv, sv_b, sv_h, sv_s)
    db_ptr = DBIAS + b.to(tl.int64) * sdb_b + h.to(tl.int64) * sdb_h

    # keys some query of this block can see: j >= i + off - left and j <= i + off + right
    lo_n = b * 0
    hi_n = len_k
    if HAS_LEFT:
        lo_n = tl.maximum(m0 + off - window_left, 0)
        lo_n = (lo_n // BLOCK_N) * BLOCK_N
    if HAS_RIGHT:
        hi_n = tl.minimum(m0 + BLOCK_M + off + window_right, len_k)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n0 in range(lo_n, hi_n, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load_rows(k_ptr, n0, offs_n, len_k, sk_s, offs_d, HEAD_D)
        v = _load_rows(v_ptr, n0, offs_n, len_k, sv_s, offs_dv, HEAD_DV)
        bias = _load_bias(BIAS, b, h, m0, n0, offs_m, offs_n, len_q, len_k,
                          sbias_b, sbias_h, sbias_m, sbias_n, HAS_BIAS)
        p, slope = _probs(q, k, lse2, bias, offs_m, offs_n, m0, n0, len_q, len_k, off,
                          window_left, window_right, scale, softcap, BLOCK_M, BLOCK_N,
                          HAS_BIAS, SOFTCAP, HAS_LEFT, HAS_RIGHT, DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        if HAS_DROPOUT:
            keep = dropout_keep(seed, offs_m, offs_n, b * H + h, drop_threshold)
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if NEED_DBIAS:
            _store_rows(db_ptr + tl.cast(n0, tl.int64), ds, m0, offs_m, len_q, sdb_m, offs_n - n0,
                        len_k - n0)
        if SOFTCAP:
            ds = ds * slope
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    _store_rows(DQ + q_base, dq * scale, m0, offs_m, len_q, sq_s, offs_d, HEAD_D)


# ----------------------------------------------------------------------------------------------
# autotuning: keyed on head dims, feature flags and (implicitly, by Triton) dtypes; dK/dV also on
# GROUP (its register rule counts the loop over the group's query heads, see _dkdv_registers).
# Configs that cannot fit a Hopper SM are pruned first (see _prune); with SEQCORE_AUTOTUNE=0 the
# first config that fits runs untimed.

_KEY = ["HEAD_D", "HEAD_DV", "IS_VARLEN", "HAS_BIAS", "SOFTCAP", "HAS_LEFT", "HAS_RIGHT",
        "HAS_DROPOUT"]
_SMEM_BYTES = 227 * 1024
# 32-bit registers per thread the tiles may take, as counted by _dkdv_registers/_dq_registers
# (of 255; the rest hold pointers, masks and loop state). Calibrated by compiling for sm_90
# with ptxas (bench/sm90_report.py's compile helpers) and reading the spills: see those rules.
_REGS_PER_THREAD = 160


def _config(m, n, warps, stages):
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)


def _configs(tuned, defaults):
    """tuned: (BLOCK_M, BLOCK_N) pairs timed over warps x stages; defaults: (m, n, warps, stages)
    in order of preference, the last one small enough for any head dim (and the only one float32
    "ieee" dots take, see _prune)."""
    if interpreted():   # the interpreter runs one program at a time: one small config
        return [_config(16, 16, 4, 1)]
    if not autotune_enabled():
        return [_config(*d) for d in defaults]
    return ([_config(m, n, w, s) for m, n in tuned for w in (4, 8) for s in (2, 3)]
            + [_config(*defaults[-1])])


def _prune(footprint, registers, dropout_fits, tf32_regs_per_thread):
    """early_config_prune of a backward kernel family. Tensor-core dots (half precision, TF32):
    configs whose registers(BLOCK_M, BLOCK_N, args) (32-bit registers of tiles, whole program)
    fit num_warps * 32 * _REGS_PER_THREAD (tf32_regs_per_thread for float32 inputs with TF32
    dots, whose operands take a whole register an element: the family's own calibration), whose
    footprint(BLOCK_M, BLOCK_N, d, dv) = (input elements loaded per pipeline stage, input
    elements resident for the whole program) fits shared memory, and with dropout
    dropout_fits(BLOCK_M, BLOCK_N, num_warps, num_stages).
    float32 "ieee" dots (FMAs on CUDA cores): only the last, smallest config -- ptxas spills
    every larger tile the lists hold, from 4 B to 15 KB (measured on sm_90 at D 64/128, dense
    MHA, packed GQA, GQA + bias + softcap + window): dK/dV 16x32 at 4 warps, 1 stage compiles
    to 96-149 registers, while 32x64 (8 warps, 2 stages, the old pick) gives up at 32 registers
    with 11-15 KB of spills, 32x32/16x64 at 4 warps spill 0.3-1.6 KB, even 32x16 and 16x16 at
    4 warps spill 8-600 B at D128, and a second stage spills 0.5-1.3 KB; dQ 32x16 at 4 warps, 1
    stage: 78-130 registers, while 64x32 at 8 warps spills 4-28 B with 1 stage (100-536 B with
    2, the old pick) and 64x16/32x32 at 4 warps 4-12 B. All of them when autotuning, else the
    first."""
    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        if fma_dots(args["Q"].dtype == torch.float32, args["DOT_PRECISION"]):
            kept = configs[-1:]
        else:
            d, dv, elem = args["BLOCK_D"], args["BLOCK_DV"], args["Q"].element_size()
            tf32 = tf32_dots(args["Q"].dtype == torch.float32, args["DOT_PRECISION"])
            per_thread = tf32_regs_per_thread if tf32 else _REGS_PER_THREAD
            kept = []
            for c in configs:
                m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
                per_stage, resident = footprint(m, n, d, dv)
                if (registers(m, n, args) <= c.num_warps * 32 * per_thread
                        and elem * (per_stage * c.num_stages + resident) <= _SMEM_BYTES
                        and (not args["HAS_DROPOUT"]
                             or dropout_fits(m, n, c.num_warps, c.num_stages))):
                    kept.append(c)
            kept = kept or configs[-1:]
        return kept if autotune_enabled() else kept[:1]
    return prune


def _dkdv_footprint(m, n, d, dv):
    # K, V resident; Q, dO streamed
    return m * (d + dv), n * (d + dv) + m * n


def _dq_footprint(m, n, d, dv):
    # Q, dO resident; K, V streamed
    return n * (d + dv), m * (d + dv) + m * n


def _dkdv_registers(m, n, args):
    """32-bit registers of the dK/dV tiles (tensor-core dots): the float32 dK, dV accumulators
    (n x (d + dv)), the q and dO tiles that feed the dots from registers (m x (d + dv), two
    half-precision elements a register), and (m x n) score tiles: three (s/p, dp/ds and P cast
    for its dot), two more with softcap (the slope, tanh), two more for the loop over the
    query heads of a GQA group (GROUP > 1: dense MHA compiles GROUP = 1, without that loop),
    half of one more on packed sequences (their row bookkeeping), and a bias tile (in its own
    dtype: half a register an element in half precision).

    Calibrated on sm_90 (ptxas of Triton 3.6, bfloat16; float16 compiles alike), every config
    below with <= 160 a thread compiled without spills, every one that spilled counts more
    (registers/spilled bytes, s2 = 2 stages; "-" = not compiled):
                       MHA causal  GQA causal  packed GQA  GQA+bias+softcap+window  MHA softcap
      D128 64x64 w8 s2  252/0       255/92      255/84      255/220                  255/20
      D128 64x64 w8 s3  250/0       255/100     255/124     255/284                  255/72
      D128 32x64 w8 s2  202/0       214/0       228/0       230/0                    210/0
      D128 32x64 w8 s3  212/0       222/0       254/0       248/0                    220/0
      D128 64x32 w8 s2  169/0       255/0       255/0       255/0                    -
      D128 128x32 w8 s2 190/0       255/64      255/96      255/52                   -
      D128 32x128 w8 s2 255/76      255/64      255/120     255/156                  -
      D128 32x64 w4 s2  255/100     255/100     255/204     255/204                  -
      D128 64x32 w4 s2  255/0       255/32      255/60      255/84                   -
      D64 32x128 w8 s2  220/0       244/0       246/0       252/0                    236/0
      D64 32x128 w8 s3  224/0       240/0       250/0       236/0                    240/0
      D64 64x64 w8 s2   163/0       216/0       244/0       255/28                   221/0
      D64 64x64 w8 s3   169/0       240/0       250/0       255/112                  230/0
      D64 32x64 w8 s2   135/0       169/0       203/0       200/0                    149/0
      D64 32x64 w4 s2   234/0       250/0       255/8       254/0                    250/0
      D64 64x128 w8 s2  255/12      255/172     255/184     255/896                  255/204
      D64 128x64 w8 s2  175/0       244/0       255/24      255/124                  205/0
      D64 32x128 w4 s2  255/88      255/112     255/176     255/336                  255/184
    and dense MHA at D128 64x64 w8: non-causal 246/0 (s3 244/0), two-sided window 234/0
    (238/0), bias 255/0 (255/0), packed 254/0 (255/0). So the largest tile at D128 is 64x64 for
    MHA without softcap (144-152 here; counted as GQA it would be 176), else 32x64 (104-140);
    at D64 32x128 (120-160) but with bias+softcap+window (192, as 64x64: 168), 32x64 (100).
    A linear count cannot take D64 32x128 with bias+softcap+window (clean at 252) and drop D64
    64x64 there (28 B): it gives up the former. The rule leaves out GQA+bias+softcap D64 128x32
    at 8 warps (255/0, 168) and D128 64x32 at 4 warps for MHA (255/0, 176), clean but at the
    edge."""
    d2 = args["BLOCK_D"] + args["BLOCK_DV"]
    elem = args["Q"].element_size()
    score_tiles = (3 + 2 * bool(args["SOFTCAP"]) + 2 * (args["GROUP"] > 1)
                   + 0.5 * bool(args["IS_VARLEN"]))
    bias = args["BIAS"].element_size() / 4 if args["HAS_BIAS"] else 0
    return n * d2 + m * d2 * elem / 4 + m * n * (score_tiles + bias)


def _dq_registers(m, n, args):
    """32-bit registers of the dQ tiles (tensor-core dots): the float32 dQ accumulator (m x d),
    two float32 score tiles (m x n), and the resident q, dO (m x (d + dv)) and one score tile
    as dot operands in the input dtype. Calibrated on sm_90 (bfloat16, D128; registers/spilled
    bytes for MHA causal, GQA causal, packed GQA, GQA + bias + softcap + window, MHA softcap):
    kept, all clean: 64x32 w8 s2 (84 a thread) 120-166/0; 64x64 w8 s2 (104) 157-255/0; left
    out: 128x32 w8 s2/s3 (168) 161-235/0, 64x32 w4 s2 (168) 161-241/0, 64x64 w4 s2 (208)
    209-255/0-52, 128x64 w8 s2 (208) 217-255/0, 128x32 w4 s2 (336) 255/44-292, 128x64 w4 s2
    (416) 255/676-1096."""
    d, dv = args["BLOCK_D"], args["BLOCK_DV"]
    elem = args["Q"].element_size()
    return m * d + 2 * m * n + (m * (d + dv) + m * n) * elem // 4


# float32 inputs with TF32 dots (SEQCORE_TF32=1) spill below 160 (the operands and the P/dS
# casts are 32-bit): measured on sm_90 (registers/spilled bytes, count a thread). dK/dV, kept at
# <= 108: packed D64 32x64 w8 255/0 (92), MHA 184-208/0 (72), 16x32 w4 s1 120-180/0 (D128: 108);
# left out: D64 MHA 64x64 w8 218-224/0 (112), since at 112 D64 GQA+bias+softcap+window 32x64 w8
# spills 24-60 B; spilling, all above that too: D128 MHA 32x64 w8 112-196 B (120), D64 MHA
# 32x128 w8 12 B (128), D64 MHA 32x64 w4 44-52 B (144), packed D128 32x64 w8 444-492 B (140).
# dQ, kept at <= 128: D128 64x32 w8 152-220/0 (120), D64 64x64 w8 153-255/0 (96); spilling: D128
# 64x64 w8 with bias+softcap+window 24 B (144; D64 128x32 w8 and 64x32 w4 at 144 are clean,
# 219-230, and left out).
_DKDV_TF32_REGS = 108
_DQ_TF32_REGS = 128


# With dropout, Philox's four 32-bit words per score element need registers the footprint does
# not count, and where they spill is not linear in the tile: the largest tiles that compile
# without spills on sm_90 (measured: bfloat16, D 64/128, with and without bias+softcap+window).
# dK/dV: 32x64 at 8 warps and 2 stages (157-254 registers); 32x128 and 64x64 spill 4-364 B,
# 32x64 at 4 warps 4-204 B (so also at most 8 score elements per thread), at 3 stages 8 B
# (packed sequences, D = 128). dQ: BLOCK_N = 32 (96-189 registers); 64x64 spills 8-88 B.
def _dkdv_dropout_fits(m, n, warps, stages):
    return m <= 32 and n <= 64 and m * n <= 8 * 32 * warps and stages <= 2


def _dq_dropout_fits(m, n, warps, stages):
    return n <= 32


_dkdv_tuned = triton.autotune(
    configs=_configs([(32, 64), (32, 128), (64, 64), (64, 128)],
                     defaults=[(32, 128, 8, 2), (64, 64, 8, 2), (32, 64, 8, 2), (16, 32, 4, 1)]),
    key=_KEY + ["GROUP"],
    prune_configs_by={"early_config_prune": _prune(_dkdv_footprint, _dkdv_registers,
                                                   _dkdv_dropout_fits, _DKDV_TF32_REGS)},
)(_dkdv_kernel)

_dq_tuned = triton.autotune(
    configs=_configs([(64, 32), (128, 32), (64, 64), (128, 64)],
                     defaults=[(128, 32, 8, 2), (64, 32, 4, 2), (64, 32, 8, 2), (32, 16, 4, 1)]),
    key=_KEY + ["NEED_DBIAS"],
    prune_configs_by={"early_config_prune": _prune(_dq_footprint, _dq_registers,
                                                   _dq_dropout_fits, _DQ_TF32_REGS)},
)(_dq_kernel)


# ----------------------------------------------------------------------------------------------
# launchers (interface: seqcore/_problem.py)


def _bhs(t, packed):
    """(batch, head, row) strides: (B, H, S, ...) dense, or (T, H, ...) packed (no batch)."""
    if packed:
        return 0, t.stride(1), t.stride(0)
    return t.stride(0), t.stride(1), t.stride(2)


def _run(dout, q, k, v, out, lse, bias, dbias, cu_q, cu_k, n_seq, S_Q, S_K, p, packed):
    """Launch delta, dK/dV and dQ over a normalized problem; returns (dq, dk, dv)."""
    Hq, Hkv = q.shape[-2 if packed else 1], k.shape[-2 if packed else 1]
    D, Dv = q.shape[-1], v.shape[-1]
    # outputs take their inputs' (contiguous) strides, which the kernels assume
    dq, dk, dv = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))
    delta = torch.empty(lse.shape, dtype=torch.float32, device=q.device)
    dims = dict(HEAD_D=D, HEAD_DV=Dv, BLOCK_D=head_block(D), BLOCK_DV=head_block(Dv))
    has_dropout, seed, drop_threshold, drop_scale = dropout_args(p)
    flags = dict(IS_VARLEN=packed, HAS_BIAS=bias is not None, SOFTCAP=p.softcap > 0,
                 HAS_LEFT=p.window_left >= 0, HAS_RIGHT=p.window_right >= 0,
                 HAS_DROPOUT=has_dropout, DOT_PRECISION=dot_precision(q.dtype == torch.float32))
    strides = (*_bhs(q, packed), *_bhs(k, packed), *_bhs(v, packed), *_bhs(dout, packed),
               *_bhs(lse, packed))
    bias_strides = tuple(bias.stride()) if bias is not None else (0, 0, 0, 0)
    bias_arg = bias if bias is not None else q          # never read without HAS_BIAS
    cu_q = cu_q if cu_q is not None else q               # never read when dense
    cu_k = cu_k if cu_k is not None else q
    scalars = (S_Q, S_K, p.scale, p.softcap or 1.0, p.window_left, p.window_right,
               seed, drop_threshold, drop_scale)

    if dq.numel():
        block = 16 if interpreted() else 64
        _delta_kernel[(triton.cdiv(S_Q, block) * n_seq * Hq,)](
            out, dout, delta, cu_q, *_bhs(out, packed), *_bhs(dout, packed), *_bhs(lse, packed),
            Hq, S_Q, HEAD_DV=Dv, BLOCK_M=block, BLOCK_DV=head_block(Dv), IS_VARLEN=packed)
    if dk.numel():
        grid = lambda meta: (triton.cdiv(S_K, meta["BLOCK_N"]) * n_seq * Hkv,)  # noqa: E731
        _dkdv_tuned[grid](q, k, v, dout, lse, delta, bias_arg, dk, dv, cu_q, cu_k,
                          *strides, *bias_strides, Hkv, Hq // Hkv, *scalars, **dims, **flags)
    if dq.numel():
        db_arg = dbias if dbias is not None else q
        db_strides = tuple(dbias.stride()[:3]) if dbias is not None else (0, 0, 0)
        grid = lambda meta: (triton.cdiv(S_Q, meta["BLOCK_M"]) * n_seq * Hq,)  # noqa: E731
        _dq_tuned[grid](q, k, v, dout, lse, delta, bias_arg, dq, db_arg, cu_q, cu_k,
                        *strides, *bias_strides, *db_strides, Hq, Hq // Hkv, *scalars,
                        NEED_DBIAS=dbias is not None, **dims, **flags)
    return dq, dk, dv


def attention_bwd(dout, q, k, v, bias, out, lse, p, need_dbias):
    """(dq, dk, dv, dbias) for q (B, Hq, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv);
    bias None or a (B, Hq, Sq, Sk) view with any strides; lse (B, Hq, Sq) natural log.
    dbias: None, or the full (B, Hq, Sq, Sk) dS in q's dtype when need_dbias."""
    dout, q, k, v, out, lse = (t.contiguous() for t in (dout, q, k, v, out, lse))
    B, _, Sq, _ = q.shape
    Sk = k.shape[2]
    dbias = None
    if need_dbias:
        # the dQ kernel writes only blocks that touch the band; the rest of dS is zero
        alloc = torch.zeros if p.has_window else torch.empty
        dbias = alloc((B, q.shape[1], Sq, Sk), dtype=q.dtype, device=q.device)
    dq, dk, dv = _run(dout, q, k, v, out, lse, bias, dbias, None, None, B, Sq, Sk, p, False)
    return dq, dk, dv, dbias


def attention_varlen_bwd(dout, q, k, v, cu_q, cu_k, max_q, max_k, out, lse, p):
    """(dq, dk, dv) over packed sequences: q (Tq, Hq, D), k (Tk, Hkv, D), v (Tk, Hkv, Dv),
    cu_* int32 (N + 1,), lse (Tq, Hq) natural log."""
    dout, q, k, v, out, lse = (t.contiguous() for t in (dout, q, k, v, out, lse))
    cu_q, cu_k = cu_q.to(torch.int32).contiguous(), cu_k.to(torch.int32).contiguous()
    n_seq = cu_q.shape[0] - 1
    return _run(dout, q, k, v, out, lse, None, None, cu_q, cu_k, n_seq, max_q, max_k, p, True)
