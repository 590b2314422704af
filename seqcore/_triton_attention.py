"""The "triton" attention backend: torch tensors in, Triton kernels (seqcore.kernels) out.

Implements the attention family of the backend interface (seqcore/_problem.py). Which forward
kernel runs:
  - split-KV decode (kernels/attention_decode.py) when the query rows of one kv head are few
    (Sq * (Hq // Hkv) <= DECODE_MAX_ROWS) and the keys many (Sk >= DECODE_MIN_KEYS): the dense
    kernel would then run only B * Hq programs of mostly empty query tiles, each reading the
    whole of k/v; the decode kernel splits the keys over many programs instead, and reads
    each kv head once for its whole query-head group. Bias is supported there too.
  - otherwise the FlashAttention-2 kernel (kernels/attention.py), also for all varlen calls.
attention_kvcache_fwd (dense or paged KV caches, per-sequence lengths, in-place append) always
runs the split-KV kernels of kernels/attention_kvcache.py.
float32 inputs compute their dots in exact IEEE float32 unless SEQCORE_TF32=1 (see
kernels/attention.py).
Dropout (p.dropout_p > 0, seed p.dropout_seed) rides in p to every launcher, which turns it into
kernel arguments (kernels/dropout.py: the one Triton definition of the mask). The decode kernel
implements it too (same mask per query head and position, tested against the dense kernel), so
the routing above does not depend on it; the KV-cache path never has dropout (inference only:
its kernels do not read p.dropout_*).
"""
DECODE_MAX_ROWS = 64    # query rows per kv head (Sq * group) the decode kernel takes at most
DECODE_MIN_KEYS = 256   # fewer keys: the dense kernel is as good; tests lower this to force it


def use_decode(q, k):
    """True when attention_fwd takes the split-KV decode path for these shapes."""
    B, Hq, Sq, _ = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    return 0 < Sq * (Hq // Hkv) <= DECODE_MAX_ROWS and Sk >= max(DECODE_MIN_KEYS, 1)


def attention_fwd(q, k, v, bias, p):
    """(out (B, Hq, Sq, Dv) in q's dtype, lse (B, Hq, Sq) float32); see seqcore/_problem.py."""
    if use_decode(q, k):
        from seqcore.kernels.attention_decode import attention_decode_fwd

        return attention_decode_fwd(q, k, v, bias, p)
    from seqcore.kernels.attention import attention_fwd as dense_fwd

    return dense_fwd(q, k, v, bias, p)


def attention_varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, p):
    """(out (Tq, Hq, Dv), lse (Tq, Hq) float32); see seqcore/_problem.py."""
    from seqcore.kernels.attention import attention_varlen_fwd as varlen_fwd

    return varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, p)


def attention_bwd(dout, q, k, v, bias, out, lse, p, need_dbias):
    """(dq, dk, dv, dbias); the kernel lives in kernels/attention_bwd.py."""
    from seqcore.kernels.attention_bwd import attention_bwd as bwd

    return bwd(dout, q, k, v, bias, out, lse, p, need_dbias)


def attention_varlen_bwd(dout, q, k, v, cu_q, cu_k, max_q, max_k, out, lse, p):
    """(dq, dk, dv); the kernel lives in kernels/attention_bwd.py."""
    from seqcore.kernels.attention_bwd import attention_varlen_bwd as bwd

    return bwd(dout, q, k, v, cu_q, cu_k, max_q, max_k, out, lse, p)


def attention_kvcache_fwd(q, k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, p):
    """(out (B, Hq, Sq, Dv) in q's dtype, lse (B, Hq, Sq) float32), after writing k_new/v_new
    into the caches in place; the kernels live in kernels/attention_kvcache.py."""
    from seqcore.kernels.attention_kvcache import attention_kvcache_fwd as kvcache_fwd

    return kvcache_fwd(q, k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, p)
