"""The "c" backend, attention family: csrc/attention.c and csrc/kvcache.c through cffi.

Implements attention_fwd, attention_bwd, attention_varlen_fwd, attention_varlen_bwd and
attention_kvcache_fwd as seqcore/_problem.py describes. Dense and packed problems go to the same C entry points:
a dense batch is n_seq = B sequences of fixed length, a packed one passes cu_seqlens.
Dropout (seqcore/reference/dropout.py) is applied in the kernels: the problem carries the
seed, the threshold (computed by the reference's own function) and 1 / (1 - p), or 0 for none.
"""
import numpy as np

from seqcore import _c
from seqcore.reference.dropout import threshold as _dropout_threshold

def _entry(name, dtype):
    return _c.kernel(f"attention_{name}", dtype)


_NO_STRIDES = [0, 0, 0, 0]


def _dropout_fields(p):
    """(seed, threshold, 1 / (1 - p)) of the problem struct; (0, 0, 0.0) is dropout off."""
    if not p.dropout_p:
        return 0, 0, 0.0
    return (int(p.dropout_seed) % 2**64, _dropout_threshold(p.dropout_p),
            1.0 / (1.0 - float(p.dropout_p)))


_DENSE_PROBLEMS = {}  # dense problems without a bias by (params, sizes): see _problem


def _problem(p, n_seq, Hq, Hkv, Sq, Sk, D, Dv, cu_q=None, cu_k=None, bias=None):
    """A seqcore_attn_problem; the cffi struct keeps no reference to cu_q/cu_k (caller does).
    Dense problems without a bias hold no pointers: they are made once per (params, sizes)
    and reused (the kernels only read them; building one costs ~3 us, a decoding step's
    call repeats the same one). Not with dropout: each such call draws a new seed, so its
    problem would never be met again and would only push the reusable ones out."""
    if cu_q is None and bias is None and not p.dropout_p:
        key = (p, n_seq, Hq, Hkv, Sq, Sk, D, Dv)
        prob = _DENSE_PROBLEMS.get(key)
        if prob is None:
            if len(_DENSE_PROBLEMS) >= 256:
                _DENSE_PROBLEMS.clear()
            prob = _DENSE_PROBLEMS[key] = _new_problem(p, n_seq, Hq, Hkv, Sq, Sk, D, Dv)
        return prob
    return _new_problem(p, n_seq, Hq, Hkv, Sq, Sk, D, Dv, cu_q, cu_k, bias)


def _new_problem(p, n_seq, Hq, Hkv, Sq, Sk, D, Dv, cu_q=None, cu_k=None, bias=None):
    _, ffi = _c.load()
    return ffi.new("seqcore_attn_problem *", [
        n_seq, Hq, Hkv, Sq, Sk, D, Dv, _c.ptr(cu_q), _c.ptr(cu_k), p.scale, p.softcap,
        p.window_left, p.window_right,
        list(_c.strides(bias)) if bias is not None else _NO_STRIDES, *_dropout_fields(p)])


def _bias_view(bias, dtype):
    """bias in the kernel dtype, keeping its (possibly zero) strides unless a cast is needed."""
    if bias is None or bias.dtype == dtype:
        return bias
    return bias.astype(dtype)  # a cast materializes; broadcast dims come back contiguous


def _contiguous(dtype, *arrays):
    """The kernels index rows directly: C-contiguous arrays in the kernel dtype (no copy when
    they already are, as the interface promises)."""
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in arrays)


def attention_fwd(q, k, v, bias, p, alloc=None):
    """alloc: CPU tensors that _arrays.direct_tensor_alloc passed (contiguous, no bias), read
    in place, and the allocator of their results; None for NumPy arrays."""
    if alloc is None:
        if not (q.flags.c_contiguous and k.flags.c_contiguous and v.flags.c_contiguous):
            q, k, v = _contiguous(q.dtype, q, k, v)
        bias = _bias_view(bias, q.dtype)
        alloc = _c.numpy_alloc(q.dtype)
    B, Hq, Sq, D = q.shape
    _, Hkv, Sk, Dv = v.shape
    out = alloc((B, Hq, Sq, Dv))
    lse = alloc((B, Hq, Sq))
    prob = _problem(p, B, Hq, Hkv, Sq, Sk, D, Dv, bias=bias)
    ptr = _c.ptr
    _c.check(_entry("fwd", q.dtype)(prob, ptr(q), ptr(k), ptr(v), ptr(bias), ptr(out), ptr(lse)),
             "attention_fwd")
    return out, lse


def attention_bwd(dout, q, k, v, bias, out, lse, p, need_dbias, alloc=None):
    """alloc: as attention_fwd's (CPU tensors read in place, no bias, no dbias)."""
    B, Hq, Sq, D = q.shape
    _, Hkv, Sk, Dv = v.shape
    if alloc is None:
        bias = _bias_view(bias, q.dtype)
        dout, q, k, v, out, lse = _contiguous(q.dtype, dout, q, k, v, out, lse)
        alloc = _c.numpy_alloc(q.dtype)
    dq, dk, dv = alloc(q.shape), alloc(k.shape), alloc(v.shape)
    dbias = np.empty((B, Hq, Sq, Sk), dtype=q.dtype) if need_dbias else None
    prob = _problem(p, B, Hq, Hkv, Sq, Sk, D, Dv, bias=bias)
    ptr = _c.ptr
    _c.check(_entry("bwd", q.dtype)(prob, ptr(dout), ptr(q), ptr(k), ptr(v), ptr(bias), ptr(out),
                                    ptr(lse), ptr(dq), ptr(dk), ptr(dv), ptr(dbias)),
             "attention_bwd")
    return dq, dk, dv, dbias


def _cu(cu):
    return np.ascontiguousarray(cu, dtype=np.int32)


def attention_varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, p):
    q, k, v = _contiguous(q.dtype, q, k, v)
    Tq, Hq, D = q.shape
    _, Hkv, Dv = v.shape
    cu_q, cu_k = _cu(cu_q), _cu(cu_k)
    out = np.empty((Tq, Hq, Dv), dtype=q.dtype)
    lse = np.empty((Tq, Hq), dtype=q.dtype)
    prob = _problem(p, len(cu_q) - 1, Hq, Hkv, max_q, max_k, D, Dv, cu_q, cu_k)
    ptr = _c.ptr
    _c.check(_entry("fwd", q.dtype)(prob, ptr(q), ptr(k), ptr(v), ptr(None), ptr(out), ptr(lse)),
             "attention_varlen_fwd")
    return out, lse


def attention_varlen_bwd(dout, q, k, v, cu_q, cu_k, max_q, max_k, out, lse, p):
    _, Hq, D = q.shape
    _, Hkv, Dv = v.shape
    cu_q, cu_k = _cu(cu_q), _cu(cu_k)
    dout, q, k, v, out, lse = _contiguous(q.dtype, dout, q, k, v, out, lse)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    prob = _problem(p, len(cu_q) - 1, Hq, Hkv, max_q, max_k, D, Dv, cu_q, cu_k)
    ptr = _c.ptr
    _c.check(_entry("bwd", q.dtype)(prob, ptr(dout), ptr(q), ptr(k), ptr(v), ptr(None), ptr(out),
                                    ptr(lse), ptr(dq), ptr(dk), ptr(dv), ptr(None)),
             "attention_varlen_bwd")
    return dq, dk, dv


def attention_kvcache_fwd(q, k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, p):
    """The caches are written in place (contiguous, in q's dtype, as the interface promises)."""
    B, Hq, Sq, D = q.shape
    NB, Hkv, rows, Dv = v_cache.shape
    S_new = 0 if k_new is None else k_new.shape[2]
    out = np.empty((B, Hq, Sq, Dv), dtype=q.dtype)
    lse = np.empty((B, Hq, Sq), dtype=q.dtype)
    seqlens = np.ascontiguousarray(cache_seqlens, dtype=np.int32)
    table = None if block_table is None else np.ascontiguousarray(block_table, dtype=np.int32)
    ptr = _c.ptr
    _, ffi = _c.load()
    prob = ffi.new("seqcore_kvcache_problem *", [
        B, Hq, Hkv, Sq, D, Dv, S_new, NB, rows, 0 if table is None else table.shape[1],
        ptr(seqlens), ptr(table), p.scale, p.softcap, p.window_left, p.window_right])
    _c.check(_c.kernel("attention_kvcache", q.dtype)(
        prob, ptr(q), ptr(k_cache), ptr(v_cache), ptr(k_new), ptr(v_new), ptr(out), ptr(lse)),
        "attention_kvcache_fwd")
    return out, lse
