"""seqcore.attention_with_kvcache: attention against a KV cache (decoding, chunked prefill).

Validation and dispatch, as seqcore/attention.py does for attention: every check runs here,
before any kernel, and the backends (seqcore/_problem.py, attention_kvcache_fwd) trust what
reaches them. The caches are updated in place; a backend that computes in another dtype or
needs a contiguous copy gets one, and the copy is written back whole (rows other than the
new ones round-trip exactly).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

from seqcore import _dlpack
from seqcore import _arrays, _backends
from seqcore import _validate as V
from seqcore.attention import Array, _check_head_dims, _check_heads, _check_options

BLOCK_ROWS_MULTIPLE = 16  # paged blocks hold a multiple of this many tokens


def _check_shapes(q, k_cache, v_cache, k, v, paged):
    """(B, Hq, Sq, D, Hkv, Dv, S_new) of a call, or ValueError naming what does not fit."""
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("k", k), ("v", v)):
        if x is not None:
            V.require_ndim(name, x, (4,), "4-d" if name[0] != "q" else "(B, Hq, Sq, D)")
    shapes = ", ".join(f"{n} {_arrays.shape(x)}" for n, x in
                       (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("k", k), ("v", v))
                       if x is not None)
    B, Hq, Sq, D = _arrays.shape(q)
    NB, Hkv, rows, Dk = _arrays.shape(k_cache)
    if _arrays.shape(v_cache)[:3] != (NB, Hkv, rows):
        raise ValueError(f"k_cache and v_cache must agree on all but the last dim: {shapes}")
    if Dk != D:
        raise ValueError(f"q and k_cache must share the head dim D: {shapes}")
    Dv = _arrays.shape(v_cache)[3]
    _check_heads(Hq, Hkv, shapes)
    _check_head_dims(D, Dv)
    if not paged and NB != B:
        raise ValueError(f"a dense k_cache is (B, Hkv, S_max, D) with q's batch B={B}: {shapes}")
    if paged and (rows == 0 or rows % BLOCK_ROWS_MULTIPLE):
        raise ValueError(f"a paged cache's block size (k_cache dim 2) must be a positive "
                         f"multiple of {BLOCK_ROWS_MULTIPLE}, got {rows}")
    S_new = 0
    if k is not None:
        S_new = _arrays.shape(k)[2]
        if _arrays.shape(k) != (B, Hkv, S_new, D) or _arrays.shape(v) != (B, Hkv, S_new, Dv):
            raise ValueError(f"k and v must be (B, Hkv, S_new, D) and (B, Hkv, S_new, Dv) as the "
                             f"caches and q give them: {shapes}")
    return B, Hq, Sq, D, Hkv, Dv, S_new


def _host_ints(name, x, shape):
    """x as host int64 NumPy, checked to be an integer array of `shape`."""
    if x is None or _arrays.kind_of(x) is None:
        raise TypeError(f"{name} must be an int32 array, got {type(x).__name__}")
    host = _arrays.to_host_numpy(x)
    if host.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers (int32), got dtype {host.dtype}")
    if host.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {host.shape}")
    return host.astype(np.int64)


def _check_positions(lens, table, NB, rows, S_new):
    """Lengths within the capacity, block indices in range for every block a sequence uses,
    and no cache slot written by two sequences (their appends would race)."""
    capacity = rows if table is None else table.shape[1] * rows
    if lens.size and (lens.min() < 0 or lens.max() + S_new > capacity):
        bad = int(np.argmax((lens < 0) | (lens + S_new > capacity)))
        raise ValueError(f"cache_seqlens[{bad}] = {lens[bad]} with {S_new} new keys does not fit "
                         f"the cache's {capacity} positions per sequence")
    if table is None:
        return
    for b, n in enumerate(lens):
        used = table[b, :(int(n) + S_new + rows - 1) // rows]
        if used.size and (used.min() < 0 or used.max() >= NB):
            raise ValueError(f"block_table[{b}] holds block indices outside [0, {NB}) among the "
                             f"{used.size} blocks sequence {b} uses: {used.tolist()}")
    if S_new:
        pos = lens[:, None] + np.arange(S_new)[None, :]
        slots = table[np.arange(len(lens))[:, None], pos // rows] * rows + pos % rows
        if np.unique(slots).size != slots.size:
            raise ValueError("two sequences would write the same cache slot (block_table maps "
                             "their new positions to one block)")


@_dlpack.accepts_dlpack
def attention_with_kvcache(q: Array, k_cache: Array, v_cache: Array, k: Optional[Array] = None,
                           v: Optional[Array] = None, *, cache_seqlens: Array,
                           block_table: Optional[Array] = None, causal: bool = False,
                           window: Optional[Tuple[int, int]] = None,
                           softcap: Optional[float] = None, scale: Optional[float] = None,
                           return_lse: bool = False,
                           backend: Optional[str] = None) -> Union[Array, Tuple[Array, Array]]:
    """Attention of q against each sequence's cached keys, after appending new ones in place.

    The decoding / chunked-prefill step of a generation loop: sequence ``b`` of the batch
    holds ``cache_seqlens[b]`` keys; the new ``k``/``v`` rows are written after them, and
    ``q[b]`` attends over all ``L_b = cache_seqlens[b] + S_new`` of them.

    Parameters
    ----------
    q : array, shape (B, Hq, Sq, D)
        Queries: ``Sq = 1`` for decoding, more for chunked prefill. ``Hq`` a multiple of
        ``Hkv`` (GQA: query head ``h`` reads kv head ``h // (Hq // Hkv)``).
    k_cache, v_cache : array, updated in place
        Dense ``(B, Hkv, S_max, D)`` / ``(B, Hkv, S_max, Dv)``, or paged ``(num_blocks, Hkv,
        block_size, D)`` / ``(num_blocks, Hkv, block_size, Dv)`` with `block_table`;
        ``block_size`` a positive multiple of 16. ``D``, ``Dv`` from 1 to 256.
    k, v : array, shape (B, Hkv, S_new, D) and (B, Hkv, S_new, Dv), optional
        New keys and values, given together or not at all: written into the caches at
        positions ``cache_seqlens[b] .. cache_seqlens[b] + S_new - 1`` before attending.
        Only those rows of the caches change.
    cache_seqlens : integer array, shape (B,)
        Keys already in each sequence's cache: int32 (other integer dtypes are accepted), of
        q's kind and device, read on the host. ``cache_seqlens[b] + S_new`` must fit the
        cache (``S_max``, or ``max_blocks * block_size``). It is not advanced: the caller
        adds ``S_new``.
    block_table : integer array, shape (B, max_blocks), optional
        Paged caches (int32, of q's kind and device): token position ``t`` of sequence ``b``
        lives in block ``block_table[b, t // block_size]``, slot ``t % block_size``. The
        blocks a sequence uses must be in ``[0, num_blocks)``, and no two sequences may write
        one slot; entries past a sequence's last used block are not read.
    causal, window, softcap, scale, return_lse, backend
        As in `attention`. causal and window are aligned to the bottom right of each
        sequence's own ``L_b``: query ``i`` sits at position ``L_b - Sq + i``, and with
        `causal` sees keys up to it.

    Returns
    -------
    out : array, shape (B, Hq, Sq, Dv)
        In q's kind, device and dtype.
    lse : array, shape (B, Hq, Sq), float32
        Only with ``return_lse``: natural-log log-sum-exp of each row's scores.

    Raises
    ------
    TypeError
        Mixed array kinds or dtypes (q, the caches, k and v share one), index arrays that
        are not integers, or only one of k and v.
    ValueError
        Shapes that do not fit, lengths past the cache's capacity, block indices out of
        range, two sequences writing one cache slot, or inputs on different devices. All of
        it is checked before anything is written.

    Notes
    -----
    An inference op: no gradients flow through it. A query row that sees no key returns
    zeros with lse ``-inf``. dtypes and backends as in `attention`; a backend that computes
    in another dtype than the caches' (float16 on the C backend) works on a copy that is
    written back whole, the rows other than the new ones round-tripping exactly.
    `seqcore.nn.KVCache` keeps the caches, lengths and block table of a generation loop.

    Examples
    --------
    >>> import numpy as np, seqcore
    >>> B, Hq, Hkv, D, S_max = 2, 8, 2, 64, 256
    >>> k_cache = np.zeros((B, Hkv, S_max, D), np.float32)
    >>> v_cache = np.zeros((B, Hkv, S_max, D), np.float32)
    >>> lens = np.array([10, 3], dtype=np.int32)                 # keys already cached
    >>> q = np.random.randn(B, Hq, 1, D).astype(np.float32)     # one new token each
    >>> k = v = np.random.randn(B, Hkv, 1, D).astype(np.float32)
    >>> out = seqcore.attention_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens,
    ...                                      causal=True)
    >>> lens += 1
    """
    named = [("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("k", k), ("v", v),
             ("cache_seqlens", cache_seqlens), ("block_table", block_table)]
    kind = _arrays.common_kind(named)
    if (k is None) != (v is None):
        raise TypeError("k and v are given together (new keys and their values) or not at all")
    if k is not None and kind == _arrays.NUMPY:
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            if not cache.flags.writeable:  # (JAX arrays arrive read-only, and stay immutable)
                raise ValueError(f"{name} is read-only, but the new keys and values are "
                                 "written into the caches in place: pass writable caches "
                                 "(NumPy, torch, CuPy), or k=None and v=None")
    paged = block_table is not None
    B, Hq, Sq, D, Hkv, Dv, S_new = _check_shapes(q, k_cache, v_cache, k, v, paged)
    V.require_same_device(named)
    dtype = V.require_float("q", q)
    V.require_same_dtype(named[:5])
    lens = _host_ints("cache_seqlens", cache_seqlens, (B,))
    NB, rows = _arrays.shape(k_cache)[0], _arrays.shape(k_cache)[2]
    table = None
    if paged:
        table = _host_ints("block_table", block_table, (B, _arrays.shape(block_table)[-1]))
    _check_positions(lens, table, NB, rows, S_new)
    p = _check_options(D, causal, scale, window, softcap, return_lse)
    backend = _backends.pick(kind, _arrays.device_type(q), backend)
    _backends.check_dtype("q", q, backend)
    cdt = _backends.compute_dtype(backend, dtype)
    if kind == _arrays.TORCH:
        from seqcore import _torch

        out, lse = _torch.attention_kvcache(q, k_cache, v_cache, k, v, lens, table, p, backend)
    else:
        out, lse = _numpy_call(backend, cdt, q, k_cache, v_cache, k, v, lens, table, p)
    out = _arrays.astype(out, dtype)
    return (out, _arrays.astype(lse, "float32")) if return_lse else out


def _numpy_call(backend, cdt, q, k_cache, v_cache, k, v, lens, table, p):
    """The backend on NumPy arrays in the compute dtype, the caches written back if copied."""
    caches = [np.ascontiguousarray(c, dtype=cdt) for c in (k_cache, v_cache)]
    arrays = [None if a is None else np.ascontiguousarray(a, dtype=cdt) for a in (q, k, v)]
    seqlens = np.ascontiguousarray(lens, dtype=np.int32)
    table32 = None if table is None else np.ascontiguousarray(table, dtype=np.int32)
    out, lse = _backends.module(backend, "attention").attention_kvcache_fwd(
        arrays[0], caches[0], caches[1], arrays[1], arrays[2], seqlens, table32, p)
    for given, used in zip((k_cache, v_cache), caches):
        if used is not given:
            given[...] = used
    return out, lse
