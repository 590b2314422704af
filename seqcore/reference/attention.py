"""float64 NumPy reference for attention, forward and backward: the definition every backend
is held to. Plain math, the whole (Sq, Sk) score matrix materialized.

Semantics (those `seqcore.attention` documents): s = scale * q.k; s = softcap * tanh(s /
softcap) if softcap; s += bias; keys outside the causal/window band get -inf (off = Sk - Sq
aligns them to the bottom right); P = softmax(s) over the visible keys; out = P v;
lse = log(sum(exp(s))). A row that sees no key gives out 0, lse -inf and zero gradients.
GQA: query head h reads kv head h // (Hq // Hkv). Dropout (dropout_p > 0): out = (P * M) v,
M the mask of seqcore/reference/dropout.py scaled by 1 / (1 - p); lse is that of P.
"""
import math

import numpy as np

from seqcore.reference._util import _f64, _ints
from seqcore.reference.dropout import dropout_scale


def band(Sq, Sk, causal=False, window=None):
    """(Sq, Sk) bool: key j visible to query i under causal (bottom right) and window."""
    left, right = (-1, -1) if window is None else window
    left = -1 if left is None else int(left)
    right = -1 if right is None else int(right)
    # a side longer than Sq + Sk reaches every key: clipped, so that huge Python ints do not
    # overflow NumPy's int64 below
    left, right = (min(w, Sq + Sk) for w in (left, right))
    if causal:
        right = 0 if right < 0 else min(right, 0)
    i = np.arange(Sq)[:, None]
    j = np.arange(Sk)[None, :]
    diag = i + (Sk - Sq)
    visible = np.ones((Sq, Sk), dtype=bool)
    if left >= 0:
        visible &= j >= diag - left
    if right >= 0:
        visible &= j <= diag + right
    return visible


def _expand_kv(x, Hq):
    """(..., Hkv, Sk, d) -> (..., Hq, Sk, d): each kv head repeated for its query-head group."""
    Hkv = x.shape[-3]
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"Hq={Hq} must be a multiple of Hkv={Hkv}")
    return np.repeat(x, Hq // Hkv, axis=-3)


def _reduce_group(g, Hkv):
    """(..., Hq, Sk, d) -> (..., Hkv, Sk, d): sum the gradients of a query-head group."""
    *lead, Hq, Sk, d = g.shape
    return g.reshape(*lead, Hkv, Hq // Hkv, Sk, d).sum(axis=-3)


def sum_to_shape(g, shape):
    """Reduce a broadcast gradient back to `shape` (the adjoint of np.broadcast_to)."""
    shape = tuple(shape)
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(a for a, n in enumerate(shape) if n == 1 and g.shape[a] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _raw_scores(q, k, scale):
    Hq = q.shape[-3]
    return scale * (q @ np.swapaxes(_expand_kv(k, Hq), -1, -2))


def _scores(q, k, causal, scale, window, bias, softcap):
    """(raw scores, final scores): final = capped, biased, masked (-inf outside the band)."""
    raw = _raw_scores(q, k, scale)
    s = softcap * np.tanh(raw / softcap) if softcap else raw
    if bias is not None:
        s = s + bias
    visible = band(q.shape[-2], k.shape[-2], causal, window)
    return raw, np.where(visible, s, -np.inf)


def _softmax(s):
    """(P, lse) over the last axis; rows with no finite score: P 0, lse -inf."""
    m = s.max(axis=-1, keepdims=True, initial=-np.inf)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m_safe)
    total = e.sum(axis=-1, keepdims=True)
    P = e / np.where(total > 0, total, 1.0)
    with np.errstate(divide="ignore"):
        lse = (m_safe + np.log(total))[..., 0]
    return P, lse


def _default_scale(D, scale):
    return 1.0 / math.sqrt(D) if scale is None else float(scale)


def _dropout_factor(q_shape, Sk, dropout_p, dropout_seed, batch_index):
    """(*batch, Hq, Sq, Sk) factors of the probabilities (ones without dropout); the batch
    elements are numbered 0.. in row-major order, or from `batch_index` (a packed sequence's)."""
    *batch, Hq, Sq, _ = q_shape
    B = int(np.prod(batch, dtype=np.int64))
    factor = dropout_scale(B, Hq, Sq, Sk, dropout_p, dropout_seed, batch_index or 0)
    return factor.reshape(*batch, Hq, Sq, Sk)


def _forward(q, k, v, causal, scale, window, bias, softcap, dropout_p=0.0, dropout_seed=0,
             batch_index=None):
    q, k, v, bias = _f64(q), _f64(k), _f64(v), _f64(bias)
    scale = _default_scale(q.shape[-1], scale)
    raw, s = _scores(q, k, causal, scale, window, bias, softcap)
    P, lse = _softmax(s)
    factor = _dropout_factor(q.shape, k.shape[-2], dropout_p, dropout_seed, batch_index)
    out = (P * factor) @ _expand_kv(v, q.shape[-3])
    return out, lse, P, raw, scale, factor


def attention(q, k, v, *, causal=False, scale=None, window=None, bias=None, softcap=None,
              return_lse=False, dropout_p=0.0, dropout_seed=0):
    """q (*batch, Hq, Sq, D), k (*batch, Hkv, Sk, D), v (*batch, Hkv, Sk, Dv) -> out
    (*batch, Hq, Sq, Dv) float64, and lse (*batch, Hq, Sq) float64 with return_lse.
    The options mean what they do in `seqcore.attention`; dropout as the module docstring
    says (batch elements numbered in row-major order of *batch)."""
    out, lse, *_ = _forward(q, k, v, causal, scale, window, bias, softcap, dropout_p,
                            dropout_seed)
    return (out, lse) if return_lse else out


def attention_bwd_full(dout, q, k, v, *, causal=False, scale=None, window=None, bias=None,
                       softcap=None, dropout_p=0.0, dropout_seed=0, batch_index=None):
    """(dq, dk, dv, dscores): dscores is d(loss)/d(bias) broadcast to (*batch, Hq, Sq, Sk)."""
    out, _, P, raw, scale, factor = _forward(q, k, v, causal, scale, window, bias, softcap,
                                             dropout_p, dropout_seed, batch_index)
    q, k, v, dout = _f64(q), _f64(k), _f64(v), _f64(dout)
    Hq, Hkv = q.shape[-3], k.shape[-3]
    v_exp = _expand_kv(v, Hq)
    dv = np.swapaxes(P * factor, -1, -2) @ dout
    dP = (dout @ np.swapaxes(v_exp, -1, -2)) * factor
    delta = (dout * out).sum(axis=-1, keepdims=True)  # = rowsum(P * dP), dropout or not
    dS = P * (dP - delta)          # gradient of the capped+biased scores (0 where masked)
    dbias_full = dS
    if softcap:
        t = np.tanh(raw / softcap)
        dS = dS * (1.0 - t * t)    # d(c tanh(x/c))/dx
    dq = scale * (dS @ _expand_kv(k, Hq))
    dk = scale * (np.swapaxes(dS, -1, -2) @ q)
    return dq, _reduce_group(dk, Hkv), _reduce_group(dv, Hkv), dbias_full


def attention_bwd(dout, q, k, v, *, causal=False, scale=None, window=None, bias=None, softcap=None,
                  dropout_p=0.0, dropout_seed=0):
    """Gradients (dq, dk, dv, dbias) of sum(dout * attention(...)); dbias has bias's own shape
    (summed over its broadcast dims), None without bias. All float64."""
    dq, dk, dv, dS = attention_bwd_full(dout, q, k, v, causal=causal, scale=scale, window=window,
                                        bias=bias, softcap=softcap, dropout_p=dropout_p,
                                        dropout_seed=dropout_seed)
    dbias = None if bias is None else sum_to_shape(dS, np.shape(bias))
    return dq, dk, dv, dbias


def _segments(cu_seqlens_q, cu_seqlens_k):
    cu_q = _ints(cu_seqlens_q)
    cu_k = _ints(cu_seqlens_k)
    if cu_q.shape != cu_k.shape:
        raise ValueError(f"cu_seqlens_q {cu_q.shape} and cu_seqlens_k {cu_k.shape} differ")
    return [(slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])) for s in range(len(cu_q) - 1)]


def _heads_first(x):
    return np.swapaxes(x, 0, 1)   # (T, H, d) <-> (H, T, d)


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, *, causal=False, scale=None, window=None,
                     softcap=None, return_lse=False, dropout_p=0.0, dropout_seed=0):
    """Packed sequences: q (Tq, Hq, D), k (Tk, Hkv, D), v (Tk, Hkv, Dv); sequence s holds rows
    cu_seqlens[s]:cu_seqlens[s+1] and attends only within itself. out (Tq, Hq, Dv), lse (Tq, Hq).
    Dropout counts positions within each sequence, and the sequence index as the batch index."""
    q, k, v = _f64(q), _f64(k), _f64(v)
    scale = _default_scale(q.shape[-1], scale)
    out = np.zeros(q.shape[:2] + v.shape[2:])
    lse = np.full(q.shape[:2], -np.inf)
    for n, (sq, sk) in enumerate(_segments(cu_seqlens_q, cu_seqlens_k)):
        o, l, *_ = _forward(_heads_first(q[sq])[None], _heads_first(k[sk])[None],
                            _heads_first(v[sk])[None], causal, scale, window, None, softcap,
                            dropout_p, dropout_seed, batch_index=n)
        out[sq], lse[sq] = _heads_first(o[0]), l[0].T
    return (out, lse) if return_lse else out


def attention_varlen_bwd(dout, q, k, v, cu_seqlens_q, cu_seqlens_k, *, causal=False, scale=None,
                         window=None, softcap=None, dropout_p=0.0, dropout_seed=0):
    """(dq, dk, dv) of sum(dout * attention_varlen(...)), float64, in the packed layouts."""
    q, k, v, dout = _f64(q), _f64(k), _f64(v), _f64(dout)
    scale = _default_scale(q.shape[-1], scale)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for n, (sq, sk) in enumerate(_segments(cu_seqlens_q, cu_seqlens_k)):
        g = attention_bwd_full(_heads_first(dout[sq])[None], _heads_first(q[sq])[None],
                               _heads_first(k[sk])[None], _heads_first(v[sk])[None],
                               causal=causal, scale=scale, window=window, softcap=softcap,
                               dropout_p=dropout_p, dropout_seed=dropout_seed, batch_index=n)
        dq[sq], dk[sk], dv[sk] = (_heads_first(x[0]) for x in g[:3])
    return dq, dk, dv


def merge_attention(out_a, lse_a, out_b, lse_b):
    """Attention over the union of two disjoint key sets, from each set's (out, lse):
    weights exp(lse_a), exp(lse_b). A side with lse -inf adds nothing; both -inf: out 0, lse -inf."""
    out_a, lse_a, out_b, lse_b = _f64(out_a), _f64(lse_a), _f64(out_b), _f64(lse_b)
    m = np.maximum(lse_a, lse_b)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    wa, wb = np.exp(lse_a - m_safe), np.exp(lse_b - m_safe)
    total = wa + wb
    with np.errstate(divide="ignore"):
        lse = m_safe + np.log(total)
    denom = np.where(total > 0, total, 1.0)
    out = out_a * (wa / denom)[..., None] + out_b * (wb / denom)[..., None]
    return out, lse


# ---- KV cache (decoding, chunked prefill) ----

def cache_rows(b, positions, block_table=None, block_size=None):
    """Where token positions of sequence b lie in a KV cache: index (row block, slot) pairs
    for cache[row_block, :, slot, :]. Dense (B, Hkv, S_max, d): row block b, slot = position;
    paged (num_blocks, Hkv, block_size, d): row block block_table[b, p // block_size], slot
    p % block_size. (The reference's one definition of where a key row lies.)"""
    positions = np.asarray(positions, dtype=np.int64)
    if block_table is None:
        return np.full_like(positions, b), positions
    table = _ints(block_table)
    return table[b, positions // block_size], positions % block_size


def attention_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens, block_table=None,
                           causal=False, window=None, softcap=None, scale=None, return_lse=False):
    """Attention of q (B, Hq, Sq, D) over each sequence's cached keys plus the new ones.

    k_cache/v_cache: dense (B, Hkv, S_max, D|Dv), or paged (num_blocks, Hkv, block_size,
    D|Dv) with block_table (B, max_blocks). k/v (B, Hkv, S_new, D|Dv), if given, are first
    written into the caches, in place, at positions cache_seqlens[b] ..; sequence b then has
    L_b = cache_seqlens[b] + S_new keys, and causal/window are bottom-right relative to L_b.
    Returns out (B, Hq, Sq, Dv) float64 (and lse (B, Hq, Sq) float64 with return_lse)."""
    lens = _ints(cache_seqlens)
    B, Hq, Sq, D = np.shape(q)
    S_new = 0 if k is None else np.shape(k)[2]
    block_size = None if block_table is None else np.shape(k_cache)[2]
    scale = _default_scale(D, scale)
    out = np.zeros((B, Hq, Sq, np.shape(v_cache)[-1]))
    lse = np.full((B, Hq, Sq), -np.inf)
    for b in range(B):
        L = int(lens[b]) + S_new
        if S_new:
            blk, slot = cache_rows(b, np.arange(lens[b], L), block_table, block_size)
            k_cache[blk, :, slot, :] = np.swapaxes(np.asarray(k[b]), 0, 1)
            v_cache[blk, :, slot, :] = np.swapaxes(np.asarray(v[b]), 0, 1)
        blk, slot = cache_rows(b, np.arange(L), block_table, block_size)
        keys = np.swapaxes(_f64(k_cache[blk, :, slot, :]), 0, 1)  # (Hkv, L, D)
        values = np.swapaxes(_f64(v_cache[blk, :, slot, :]), 0, 1)
        out[b], lse[b] = attention(q[b], keys, values, causal=causal, scale=scale, window=window,
                                   softcap=softcap, return_lse=True)
    return (out, lse) if return_lse else out
