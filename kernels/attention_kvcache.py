"""Attention against a KV cache (decoding, chunked prefill), in Triton: dense or paged caches,
one length per sequence, new keys appended in place.

Sequence b has cache_seqlens[b] keys in its cache; the S_new new keys/values k_new/v_new are
first written at positions cache_seqlens[b] .. cache_seqlens[b] + S_new - 1, and its Sq queries
then attend over all L_b = cache_seqlens[b] + S_new keys, the band (causal/window) bottom-right
aligned to L_b (off = L_b - Sq), as seqcore.reference.attention_with_kvcache defines.

Where a token lies: a dense cache is (B, Hkv, S_max, d), position p of sequence b at [b, :, p];
a paged cache is (num_blocks, Hkv, block_size, d), position p at
[block_table[b, p // block_size], :, p % block_size]. cache_rows() below is the one definition
of it, used by both kernels.

1. _append_kernel: grid (batch * kv head, tile of BLOCK_T new tokens), flattened. Copies the
   tile's k_new/v_new rows to their cache rows. Only those rows are written.
2. _kvcache_split_kernel: grid (batch * kv head, key split, query-row tile), flattened. Like
   the decode kernel (kernels/attention_decode.py), one program takes the query rows of ALL
   the query heads of one kv head, so each key tile is read once per kv head (GQA/MQA); the
   group * Sq rows are packed query-major (row r: query r // group, query head
   h_kv * group + r % group), so that a tile of rows spans few query positions and the band
   skips as many keys as it can; when they exceed one BLOCK_M tile (chunked prefill) a grid axis
   runs over row tiles. The keys [0, L_b) are cut into splits of split_len keys (the same for
   every sequence, from the longest L_b); a program runs the dense kernel's online-softmax block
   step (attn_fwd_block) over the key tiles of its split that its rows can see, and writes a
   float32 partial output, normalized within the split, and the split's lse (-inf, with out 0,
   when it saw no key -- e.g. a split past the end of a short sequence).
   A BLOCK_N key tile starts at a multiple of BLOCK_N, and BLOCK_N divides block_size, so a
   tile never crosses a cache block: its rows are contiguous and one block-table read per tile
   places them.
3. The decode kernel's combine (_decode_combine_kernel) merges the splits with the
   merge_attention math: w_s = exp(lse_s - max lse), out = sum w_s out_s / sum w_s,
   lse = max + log(sum w_s); a row no split saw gives out 0, lse -inf. With a single split the
   split kernel writes out and lse directly and there is no combine.

Softcap and odd head dims (padded to powers of two, masked) work as in the dense kernel.
"""
import torch
import triton
import triton.language as tl

from ._common import (dot_precision, fits_shared_memory, fma_dots, head_block, interpreted,
                      key_range, split_key_range)
from .attention import attn_fwd_block, attn_fwd_finish, score_params
from .attention_decode import MAX_SPLITS, _decode_combine_kernel

MIN_SPLIT_BLOCKS = 4  # a split reads at least this many key tiles: fewer, and the combine and
                      # the per-program setup cost more than the parallelism gains
PROGRAMS_PER_SM = 4   # the split count aims at this many attention programs per SM


# ----------------------------------------------------------------------------------------------
# Where a token lies


@triton.jit
def cache_rows(Table, b, pos, stride_table, PAGED: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """(row block, slot), int64, of token position(s) pos (a scalar or a tensor) of sequence b:
    the cache row is cache[row_block, kv head, slot]. Dense: (b, pos); paged:
    (block_table[b, pos // BLOCK_SIZE], pos % BLOCK_SIZE). Mirrors reference.cache_rows."""
    pos = pos.to(tl.int64)
    if PAGED:
        block = tl.load(Table + b * stride_table + pos // BLOCK_SIZE).to(tl.int64)
        return block, pos % BLOCK_SIZE
    else:
        return b + pos * 0, pos  # b broadcast to pos's shape


# ----------------------------------------------------------------------------------------------
# Append


@triton.jit
def _append_kernel(Knew, Vnew, Kc, Vc, Table, Seqlens,
                   stride_knb, stride_knh, stride_knn, stride_vnb, stride_vnh, stride_vnn,
                   stride_kcb, stride_kch, stride_kcn, stride_vcb, stride_vch, stride_vcn,
                   stride_table, n_kv_heads, n_new, n_tiles,
                   HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   PAGED: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_T: tl.constexpr):
    tile = tl.program_id(0) % n_tiles
    seq_head = tl.program_id(0) // n_tiles
    b = (seq_head // n_kv_heads).to(tl.int64)
    h = (seq_head % n_kv_heads).to(tl.int64)
    t = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < n_new
    # rows past n_new are not stored; clamped, they read the block table only where it is valid
    t_row = tl.minimum(t, n_new - 1).to(tl.int64)
    block, slot = cache_rows(Table, b, tl.load(Seqlens + b) + t_row, stride_table,
                             PAGED, BLOCK_SIZE)

    offs_d = tl.arange(0, BLOCK_D)
    mask = t_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    src = Knew + b * stride_knb + h * stride_knh + t_row * stride_knn
    dst = Kc + block * stride_kcb + h * stride_kch + slot * stride_kcn
    tl.store(dst[:, None] + offs_d[None, :], tl.load(src[:, None] + offs_d[None, :], mask=mask),
             mask=mask)

    offs_dv = tl.arange(0, BLOCK_DV)
    mask = t_ok[:, None] & (offs_dv[None, :] < HEAD_DIM_V)
    src = Vnew + b * stride_vnb + h * stride_vnh + t_row * stride_vnn
    dst = Vc + block * stride_vcb + h * stride_vch + slot * stride_vcn
    tl.store(dst[:, None] + offs_dv[None, :], tl.load(src[:, None] + offs_dv[None, :], mask=mask),
             mask=mask)


# ----------------------------------------------------------------------------------------------
# Split-KV attention


@triton.jit
def _cache_range(acc, m_i, l_i, q, K, V, Table, b, h_kv, row_valid, offs_q, lo, hi,
                 seqlen_q, seqlen_k, stride_table, stride_kb, stride_kh, stride_kn,
                 stride_vb, stride_vh, stride_vn, qk_scale, softcap_log2, window_left, window_right,
                 HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
                 BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
                 MASKED: tl.constexpr, BAND_LEFT: tl.constexpr, BAND_RIGHT: tl.constexpr,
                 SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
                 PAGED: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """attn_fwd_block over the key tiles at lo, lo + BLOCK_N, ... below hi (lo a multiple of
    BLOCK_N), each placed by cache_rows."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        block, slot = cache_rows(Table, b, start_n, stride_table, PAGED, BLOCK_SIZE)
        # the tile's rows are contiguous from `slot` on (it does not cross a block), and
        # attn_fwd_block addresses key n at k_base + n * stride_kn: so k_base is where key 0
        # would lie if the tile's block continued backwards (an address never dereferenced)
        shift = slot - start_n
        k_base = K + block * stride_kb + h_kv * stride_kh + shift * stride_kn
        v_base = V + block * stride_vb + h_kv * stride_vh + shift * stride_vn
        acc, m_i, l_i = attn_fwd_block(
            acc, m_i, l_i, q, k_base, v_base, K, row_valid, offs_q, start_n,
            seqlen_q, seqlen_k, stride_kn, stride_vn, 0,
            qk_scale, softcap_log2, window_left, window_right,
            HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N,
            MASKED, BAND_LEFT, BAND_RIGHT, False, SOFTCAP, PRECISION)
    return acc, m_i, l_i


@triton.jit
def _kvcache_split_kernel(Q, K, V, Table, Seqlens, Opart, Lpart,
                          stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn, stride_table,
                          n_kv_heads, group, n_q_heads, n_batch, seqlen_q, n_new,
                          split_len, n_splits, n_m_tiles,
                          qk_scale, softcap_log2, window_left, window_right,
                          HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                          BAND_LEFT: tl.constexpr, BAND_RIGHT: tl.constexpr,
                          SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
                          PAGED: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # one flat grid axis (no 65535 limit); the row tiles of one split run side by side, as
    # they read the same keys
    pid = tl.program_id(0)
    m_tile = pid % n_m_tiles
    split = (pid // n_m_tiles) % n_splits
    seq_head = pid // (n_m_tiles * n_splits)
    b = (seq_head // n_kv_heads).to(tl.int64)
    h_kv = (seq_head % n_kv_heads).to(tl.int64)
    seqlen_k = tl.load(Seqlens + b) + n_new  # L_b

    n_rows = group * seqlen_q
    r = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = r < n_rows
    qi = r // group
    head = h_kv * group + (r % group).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_rows = Q + b * stride_qb + head * stride_qh + qi.to(tl.int64) * stride_qm
    q = tl.load(q_rows[:, None] + offs_d[None, :],
                mask=row_valid[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)

    # the band's key range for this tile's queries, cut to this split's keys
    first_q = (m_tile * BLOCK_M) // group
    last_q = (tl.minimum(m_tile * BLOCK_M + BLOCK_M, n_rows) - 1) // group
    lo, full_lo, full_hi, hi = key_range(first_q, last_q, seqlen_q, seqlen_k, window_left,
                                         window_right, BAND_LEFT, BAND_RIGHT, BLOCK_N)
    lo, full_lo, full_hi, hi = split_key_range(lo, full_lo, full_hi, hi, split * split_len,
                                               split_len)

    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # masked left edge, unmasked interior, masked right edge (as attn_fwd_keys)
    acc, m_i, l_i = _cache_range(
        acc, m_i, l_i, q, K, V, Table, b, h_kv, row_valid, qi, lo, full_lo,
        seqlen_q, seqlen_k, stride_table, stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn, qk_scale, softcap_log2, window_left, window_right,
        HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N,
        True, BAND_LEFT, BAND_RIGHT, SOFTCAP, PRECISION, PAGED, BLOCK_SIZE)
    acc, m_i, l_i = _cache_range(
        acc, m_i, l_i, q, K, V, Table, b, h_kv, row_valid, qi, full_lo, full_hi,
        seqlen_q, seqlen_k, stride_table, stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn, qk_scale, softcap_log2, window_left, window_right,
        HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N,
        False, BAND_LEFT, BAND_RIGHT, SOFTCAP, PRECISION, PAGED, BLOCK_SIZE)
    acc, m_i, l_i = _cache_range(
        acc, m_i, l_i, q, K, V, Table, b, h_kv, row_valid, qi, full_hi, hi,
        seqlen_q, seqlen_k, stride_table, stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn, qk_scale, softcap_log2, window_left, window_right,
        HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N,
        True, BAND_LEFT, BAND_RIGHT, SOFTCAP, PRECISION, PAGED, BLOCK_SIZE)
    out, lse = attn_fwd_finish(acc, m_i, l_i)

    # partials are (split, B, Hq, Sq, Dv) and (split, B, Hq, Sq), contiguous; with one split,
    # out and lse themselves
    part_rows = ((split * n_batch + b) * n_q_heads + head) * seqlen_q + qi
    tl.store(Opart + part_rows[:, None] * HEAD_DIM_V + offs_dv[None, :],
             out.to(Opart.dtype.element_ty),
             mask=row_valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V))
    tl.store(Lpart + part_rows, lse, mask=row_valid)


# ----------------------------------------------------------------------------------------------
# Launcher (no validation: seqcore/attention.py has done it)


# Tile rules, checked against sm_90 builds of the kernel (Triton 3.6's ptxas; registers and
# spills at head dims 64/128/256, dense and paged, 8 and 512 rows per kv head): none of the
# configs they pick spills. float32's exact ("ieee") dots run on FMA units, each thread
# holding whole rows of both operands, so float32 keeps 16-row tiles and 8 warps (64-row ones
# spill kilobytes at D >= 128), and with those dots 32-key tiles from head dims of 128 on
# (block_n).


def block_n(D, Dv, block_size=None, fma=False):
    """Key tile: 64 (32 for head dims over 128; with FMA dots, float32 "ieee" (fma=True), over
    64), 16 under the interpreter; halved until it divides a paged cache's block_size (a
    multiple of 16), so that no tile crosses a block.
    The FMA rule, from sm_90 compiles (Triton 3.6's ptxas; float32 "ieee", 16 rows, 8 warps,
    3 stages; registers/spilled bytes): D128 16x64 spilled 4 B on a paged cache of 64-token
    blocks with 512 rows per kv head (128 registers; 2 stages: 128/0; 4 warps: 255/116), clean
    elsewhere (dense 107/0, paged64 one query row 80/0), while 16x32 compiles to 60-70
    registers at D128 (dense and paged64, 1 and 512 rows) and 113-114 at D256; D64 16x64:
    53-69."""
    n = 16 if interpreted() else (64 if max(D, Dv) <= (64 if fma else 128) else 32)
    while block_size is not None and block_size % n:
        n //= 2
    return n


def block_m(n_rows, D, Dv, elt_bytes):
    """Query-row tile: the rows of one kv head rounded up to a power of two (at least 16, for
    tl.dot), at most 64; 128 for many rows (chunked prefill) with 16-bit inputs and head dims up
    to 128; always 16 for float32 on a GPU."""
    if interpreted():
        return min(64, max(16, triton.next_power_of_2(n_rows)))
    if elt_bytes == 4:
        return 16
    if n_rows > 64 and max(D, Dv) <= 128:
        return 128
    return min(64, max(16, triton.next_power_of_2(n_rows)))


def num_warps(bm, bd, bdv, elt_bytes):
    """8 warps for float32, for the 128-row tile and for 64 rows of a 256-wide head (whose
    float32 accumulator alone takes 128 registers a thread with 4 warps); else 4."""
    return 8 if elt_bytes == 4 or bm == 128 or (bm == 64 and max(bd, bdv) == 256) else 4


def default_num_splits(device, programs, max_len, block_n):
    """Key splits: enough that (programs * splits) attention programs fill every SM about
    PROGRAMS_PER_SM times over, each split reading at least MIN_SPLIT_BLOCKS key tiles of the
    longest sequence, at most MAX_SPLITS. programs: batch * kv heads * query-row tiles."""
    if device.type == "cuda":
        target = PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 4
    most = triton.cdiv(max_len, MIN_SPLIT_BLOCKS * block_n)
    return max(1, min(triton.cdiv(target, max(programs, 1)), most, MAX_SPLITS))


def _num_stages(elt_bytes, bm, bn, bd, bdv):
    if interpreted():
        return 1
    return next((s for s in (3, 2) if fits_shared_memory(elt_bytes, bm, bn, bd, bdv, s)), 1)


def append_kv(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table):
    """Write k_new/v_new (B, Hkv, S_new, D|Dv) into the caches at cache_seqlens[b] + t."""
    B, Hkv, S_new, D = k_new.shape
    Dv = v_new.shape[-1]
    if B * Hkv * S_new == 0:
        return
    paged = block_table is not None
    block_t = 16  # a (16, D) tile a program: larger ones spill their int64 pointer tiles
    n_tiles = triton.cdiv(S_new, block_t)
    _append_kernel[(B * Hkv * n_tiles,)](
        k_new, v_new, k_cache, v_cache, block_table if paged else cache_seqlens, cache_seqlens,
        *k_new.stride()[:3], *v_new.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3],
        block_table.stride(0) if paged else 0, Hkv, S_new, n_tiles,
        HEAD_DIM=D, HEAD_DIM_V=Dv, BLOCK_D=triton.next_power_of_2(D),
        BLOCK_DV=triton.next_power_of_2(Dv), PAGED=paged,
        BLOCK_SIZE=k_cache.shape[2] if paged else 1, BLOCK_T=block_t, num_warps=4)


def attention_kvcache_fwd(q, k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, p,
                          num_splits=None):
    """q (B, Hq, Sq, D); k_cache/v_cache dense (B, Hkv, S_max, D|Dv) or paged
    (num_blocks, Hkv, block_size, D|Dv) with block_table int32 (B, max_blocks); k_new/v_new
    (B, Hkv, S_new, D|Dv) or None; cache_seqlens int32 (B,); p: AttnParams. All contiguous, on
    one device, one float dtype. Writes k_new/v_new into the caches (in place), then attends.
    num_splits: key splits (default: default_num_splits). Returns out (B, Hq, Sq, Dv) in q's
    dtype and lse (B, Hq, Sq) float32."""
    B, Hq, Sq, D = q.shape
    Hkv, Dv = k_cache.shape[1], v_cache.shape[-1]
    group = Hq // Hkv
    S_new = 0 if k_new is None else k_new.shape[2]
    paged = block_table is not None
    if k_new is not None:
        append_kv(k_cache, v_cache, k_new, v_new, cache_seqlens, block_table)

    out = torch.empty((B, Hq, Sq, Dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Sq), dtype=torch.float32, device=q.device)
    if lse.numel() == 0:
        return out, lse
    # The split length comes from the longest sequence, read here on the host: one device sync
    # per call (the lengths change every decoding step, so they cannot be baked in).
    max_len = int(cache_seqlens.max()) + S_new
    if max_len == 0:
        return out.zero_(), lse.fill_(float("-inf"))

    elt = q.element_size()
    precision = dot_precision(q.dtype == torch.float32)
    bn = block_n(D, Dv, k_cache.shape[2] if paged else None,
                 fma=fma_dots(q.dtype == torch.float32, precision))
    bm = block_m(group * Sq, D, Dv, elt)
    bd, bdv = head_block(D), head_block(Dv)
    n_m_tiles = triton.cdiv(group * Sq, bm)
    splits = num_splits or default_num_splits(q.device, B * Hkv * n_m_tiles, max_len, bn)
    n_tiles = triton.cdiv(max_len, bn)
    split_len = triton.cdiv(n_tiles, max(1, min(splits, n_tiles))) * bn
    splits = triton.cdiv(max_len, split_len)  # no split left without keys by rounding
    if splits == 1:
        out_part, lse_part = out, lse  # the one split's result is the answer
    else:
        out_part = torch.empty((splits, B, Hq, Sq, Dv), dtype=torch.float32, device=q.device)
        lse_part = torch.empty((splits, B, Hq, Sq), dtype=torch.float32, device=q.device)

    qk_scale, softcap_log2 = score_params(p)
    _kvcache_split_kernel[(B * Hkv * splits * n_m_tiles,)](
        q, k_cache, v_cache, block_table if paged else cache_seqlens, cache_seqlens,
        out_part, lse_part, *q.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3],
        block_table.stride(0) if paged else 0,
        Hkv, group, Hq, B, Sq, S_new, split_len, splits, n_m_tiles,
        qk_scale, softcap_log2, p.window_left, p.window_right,
        HEAD_DIM=D, HEAD_DIM_V=Dv, BLOCK_D=bd, BLOCK_DV=bdv,
        BAND_LEFT=p.window_left >= 0, BAND_RIGHT=p.window_right >= 0, SOFTCAP=bool(p.softcap),
        PRECISION=precision,
        PAGED=paged, BLOCK_SIZE=k_cache.shape[2] if paged else 1, BLOCK_M=bm, BLOCK_N=bn,
        num_warps=num_warps(bm, bd, bdv, elt), num_stages=_num_stages(elt, bm, bn, bd, bdv))
    if splits > 1:
        n_rows = B * Hq * Sq
        _decode_combine_kernel[(n_rows,)](
            out_part, lse_part, out, lse, n_rows, splits, HEAD_DIM_V=Dv,
            BLOCK_DV=triton.next_power_of_2(Dv), BLOCK_SPLITS=triton.next_power_of_2(splits),
            SPLIT_CHUNK=min(16, triton.next_power_of_2(splits)))
    return out, lse
