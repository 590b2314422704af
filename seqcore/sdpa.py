"""seqcore.scaled_dot_product_attention: torch's SDPA signature and semantics on seqcore.attention.

What differs from seqcore.attention, and is translated here:
  - layout: any number of leading dims, broadcast between query, key and value; the heads are
    one of them, and only with enable_gqa may key/value have fewer heads (dim -3) than query;
  - is_causal is aligned to the top left (query i sees keys j <= i, whatever Sq and Sk), where
    seqcore's causal is bottom-right: with Sq >= Sk that is the window (-1, Sq - Sk); with
    Sq < Sk an additive mask;
  - attn_mask: boolean (True: the key takes part) or additive float, broadcastable to
    (..., L, S); it becomes seqcore's additive bias (a boolean one as 0 / -inf).
A query whose keys are all masked gets zeros, as torch 2.13 gives.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import numpy as np

from seqcore import _dlpack
from seqcore import _arrays
from seqcore import _validate as V
from seqcore.attention import Array, attention


def _broadcast_shape(*shapes):
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ValueError("the leading dims of query, key, value (and attn_mask) do not "
                         f"broadcast: {', '.join(str(tuple(s)) for s in shapes)}") from None


def _additive_mask(mask, dtype):
    """attn_mask as additive scores in `dtype`: a boolean mask -> 0 where True, -inf where False."""
    if _arrays.dtype_name(mask) != "bool":
        V.require_float("attn_mask", mask)
        return _arrays.astype(mask, dtype)
    if _arrays.is_tensor(mask):
        torch = _arrays._torch()
        zeros = torch.zeros(mask.shape, dtype=getattr(torch, dtype), device=mask.device)
        return zeros.masked_fill(~mask, float("-inf"))
    return np.where(mask, 0.0, -np.inf).astype(dtype)


def _top_left_causal(L, S, like, dtype):
    """(L, S) additive mask of j <= i, for Sq < Sk (bottom-right windows cannot say it)."""
    allowed = np.arange(S)[None, :] <= np.arange(L)[:, None]
    if _arrays.is_tensor(like):
        torch = _arrays._torch()
        return torch.from_numpy(np.where(allowed, 0.0, -np.inf)).to(
            device=like.device, dtype=getattr(torch, dtype))
    return np.where(allowed, 0.0, -np.inf).astype(dtype)


@_dlpack.accepts_dlpack
def scaled_dot_product_attention(query: Array, key: Array, value: Array,
                                 attn_mask: Optional[Array] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Array:
    """``torch.nn.functional.scaled_dot_product_attention`` on seqcore's kernels.

    torch's signature and semantics, for torch tensors and NumPy arrays alike, so code written
    for torch's SDPA runs as it is; it calls `attention` with the layout, mask and causal
    convention translated.

    Parameters
    ----------
    query : array, shape (..., Hq, L, E)
        Queries; at least 2 dims ``(L, E)``.
    key : array, shape (..., Hkv, S, E)
        Keys. The leading dims broadcast against query's (torch's rule: without
        `enable_gqa` the heads are one more batch dim, so ``Hkv`` is ``Hq`` or 1).
    value : array, shape (..., Hkv, S, Ev)
        Values, with key's leading dims.
    attn_mask : array, optional
        Broadcastable to ``(..., L, S)``: boolean (True: the key takes part, as in torch's
        SDPA) or float (added to the scores). Not together with `is_causal`.
    dropout_p : float, default 0.0
        Attention dropout in [0, 1), in the kernels, as `attention`'s (a fresh seed per
        call from torch's default generator for tensors, NumPy's global one for arrays).
        As in torch, applied whenever it is above 0: pass 0.0 in eval mode. 1.0 (torch:
        all zeros) raises ValueError.
    is_causal : bool, default False
        Causal mask aligned to the top left, as torch's: query ``i`` sees keys ``j <= i``,
        whatever L and S (unlike `attention`'s bottom-right `causal`).
    scale : float, optional
        Default ``1 / sqrt(E)``.
    enable_gqa : bool, default False
        Let key and value have fewer heads than query (dim -3): ``Hkv`` must divide ``Hq``,
        and query head ``h`` reads kv head ``h // (Hq // Hkv)``.

    Returns
    -------
    array, shape (..., Hq, L, Ev)
        The leading dims broadcast; query's kind, device and dtype.

    Raises
    ------
    TypeError
        Mixed array kinds or dtypes, unsupported dtypes, non-bool flags.
    ValueError
        Shapes that do not broadcast or fit, ``dropout_p`` outside [0, 1), or both
        `attn_mask` and `is_causal`.

    Notes
    -----
    A query whose keys are all masked gets zeros (as torch 2.13 gives). It runs on the default
    backend of the inputs (``"triton"`` for CUDA tensors, ``"c"`` otherwise); dtypes as in
    `attention`. torch tensors get gradients for query, key and value (and a float mask).

    Examples
    --------
    >>> import numpy as np, seqcore
    >>> q = np.random.randn(2, 8, 100, 64).astype(np.float32)
    >>> k = v = np.random.randn(2, 2, 120, 64).astype(np.float32)
    >>> out = seqcore.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    >>> out.shape
    (2, 8, 100, 64)
    """
    kind = _arrays.common_kind([("query", query), ("key", key), ("value", value),
                                ("attn_mask", attn_mask)])
    for name, x in (("query", query), ("key", key), ("value", value)):
        V.require_ndim(name, x, range(2, 64), "(..., L, E)")
    V.require_bool("is_causal", is_causal)
    V.require_bool("enable_gqa", enable_gqa)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real) \
            or not 0 <= dropout_p < 1:
        raise ValueError(f"dropout_p must be a probability in [0, 1), got {dropout_p!r}")
    if attn_mask is not None and is_causal:
        raise ValueError("pass attn_mask or is_causal, not both (as torch documents)")
    qs, ks, vs = _arrays.shape(query), _arrays.shape(key), _arrays.shape(value)
    (L, E), (S, Ek), (Sv, Ev) = qs[-2:], ks[-2:], vs[-2:]
    if Ek != E or Sv != S:
        raise ValueError(f"query (..., L, E), key (..., S, E), value (..., S, Ev) disagree: "
                         f"query {qs}, key {ks}, value {vs}")
    if scale is None:
        scale = 1.0 / math.sqrt(E)
    dtype = V.require_same_dtype([("query", query), ("key", key), ("value", value)])

    if enable_gqa and min(len(qs), len(ks), len(vs)) >= 3:  # heads kept apart from the batch
        Hq, Hkv = qs[-3], ks[-3]
        if vs[-3] != Hkv or Hkv == 0 or Hq % Hkv:
            raise ValueError(f"with enable_gqa, key and value share a head count that divides "
                             f"query's: query {qs}, key {ks}, value {vs}")
        batch = _broadcast_shape(qs[:-3], ks[:-3], vs[:-3])
        q = _arrays.broadcast_to(query, batch + (Hq, L, E))
        k = _arrays.broadcast_to(key, batch + (Hkv, S, E))
        v = _arrays.broadcast_to(value, batch + (Hkv, S, Ev))
        heads = (Hq,)
    else:  # every leading dim is batch: heads broadcast like the rest (torch's rule)
        lead = _broadcast_shape(qs[:-2], ks[:-2], vs[:-2])
        q = _arrays.reshape(_arrays.broadcast_to(query, lead + (L, E)), lead + (1, L, E))
        k = _arrays.reshape(_arrays.broadcast_to(key, lead + (S, E)), lead + (1, S, E))
        v = _arrays.reshape(_arrays.broadcast_to(value, lead + (S, Ev)), lead + (1, S, Ev))
        batch, heads = lead, ()
    full = batch + heads + (L, S)  # the scores' shape, as q is laid out now

    bias, window = None, None
    if attn_mask is not None:
        ms = _arrays.shape(attn_mask)
        _broadcast_shape(ms, qs[:-1] + (S,))  # (raises with the shapes)
        bias = _additive_mask(attn_mask, dtype if dtype != "float16" else "float32")
        if not heads:  # (q carries a unit head dim: the mask's leading dims are batch dims)
            bias = _arrays.reshape(_arrays.broadcast_to(bias, batch + (L, S)), batch + (1, L, S))
        elif len(ms) > len(full):
            raise ValueError(f"attn_mask {ms} has more dims than the scores {full}")
    elif is_causal:
        if L >= S:
            window = (-1, L - S)  # top-left j <= i is bottom-right j <= i + (S - L) + (L - S)
        else:
            bias = _top_left_causal(L, S, query, dtype if dtype != "float16" else "float32")
    out = attention(q, k, v, scale=scale, window=window, bias=bias, dropout_p=dropout_p)
    return _arrays.reshape(out, batch + heads + (L, Ev))
