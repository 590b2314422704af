"""seqcore.attention, attention_varlen, merge_attention: validation and dispatch."""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Tuple, Union

import numpy as np

from seqcore import _dlpack
from seqcore import _arrays, _backends
from seqcore import _validate as V
from seqcore._problem import make_attn_params

MAX_HEAD_DIM = 256

Array = Any
"""A NumPy array or a torch tensor (CPU or CUDA). The array arguments of one call are all of
one kind and on one device, and the results are of that kind, on that device."""


def _check_window(window):
    if window is None:
        return None
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise TypeError(f"window must be a (left, right) pair of ints, got {window!r}")
    return tuple(V.require_int(f"window[{i}]", w, minimum=-1) for i, w in enumerate(window))


def _check_options(D, causal, scale, window, softcap, return_lse, dropout_p=0.0,
                   dropout_seed=None, kind=None):
    if scale is None and window is None and softcap is None and type(causal) is bool \
            and type(return_lse) is bool and dropout_p == 0.0 and dropout_seed is None:
        return _default_params(D, causal)  # the common call: checked once per (D, causal)
    V.require_bool("causal", causal)
    V.require_bool("return_lse", return_lse)
    scale = 1.0 / math.sqrt(D) if scale is None else V.require_real("scale", scale)
    window = _check_window(window)
    if softcap is not None:
        softcap = V.require_real("softcap", softcap, positive=True)
    dropout_p, dropout_seed = check_dropout(dropout_p, dropout_seed, kind)
    return make_attn_params(scale, causal, window, softcap, dropout_p, dropout_seed)


# Seeds are drawn below 2**63: the torch ops carry them as int64.
SEED_LIMIT = 2**63


def check_dropout(dropout_p, dropout_seed, kind):
    """(p, seed): p a probability in [0, 1); seed an int in [0, 2**63), drawn when None (from
    torch's default generator for tensors, so torch.manual_seed makes a run repeatable, else
    from NumPy's global one, np.random.seed)."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real) \
            or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a probability in [0, 1), got {dropout_p!r}")
    if not dropout_p:
        return 0.0, 0
    if dropout_seed is None:
        if kind == _arrays.TORCH:
            torch = _arrays._torch()
            return float(dropout_p), int(torch.randint(0, SEED_LIMIT - 1, (), dtype=torch.int64))
        return float(dropout_p), int(np.random.randint(0, SEED_LIMIT - 1, dtype=np.int64))
    seed = V.require_int("dropout_seed", dropout_seed, minimum=0)
    if seed >= SEED_LIMIT:
        raise ValueError(f"dropout_seed must be below 2**63, got {seed}")
    return float(dropout_p), seed


_DEFAULT_PARAMS = {}


def _default_params(D, causal):
    p = _DEFAULT_PARAMS.get((D, causal))
    if p is None:
        p = _DEFAULT_PARAMS[(D, causal)] = make_attn_params(1.0 / math.sqrt(D), causal, None, None)
    return p


def _shapes(q, k, v):
    return f"q {_arrays.shape(q)}, k {_arrays.shape(k)}, v {_arrays.shape(v)}"


def _same_dtype(q, k, v):
    """The dtype name q, k and v share (TypeError otherwise)."""
    if q.dtype == k.dtype == v.dtype:
        return _arrays.dtype_name(q)
    return V.require_same_dtype([("q", q), ("k", k), ("v", v)])


def _compute_array(x, cdt, shape4):
    """x in the compute dtype, contiguous, as (B, H, S, D): no copy when it already is."""
    if isinstance(x, np.ndarray):
        if x.dtype != cdt or not x.flags.c_contiguous:
            x = _arrays.contiguous_as(x, cdt)
        return x if x.ndim == 4 else x.reshape(shape4)
    return _arrays.reshape(_arrays.contiguous(_arrays.astype(x, cdt)), shape4)


def _check_head_dims(D, Dv):
    for name, d in (("D (q/k last dim)", D), ("Dv (v last dim)", Dv)):
        if not 1 <= d <= MAX_HEAD_DIM:
            raise ValueError(f"head dim {name} must be in [1, {MAX_HEAD_DIM}], got {d}")


def _check_heads(Hq, Hkv, shapes):
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"query heads Hq={Hq} must be a multiple of kv heads Hkv={Hkv} "
                         f"(q, k, v shapes {shapes})")


def _flat_bias(bias, batch, Hq, Sq, Sk, B):
    """bias broadcast to (B, Hq, Sq, Sk) as a view (no copy unless batch dims broadcast partially)."""
    full = tuple(batch) + (Hq, Sq, Sk)
    if bias.ndim > len(full):
        raise ValueError(f"bias with shape {_arrays.shape(bias)} has more dims than the scores "
                         f"{full}")
    padded = (1,) * (len(full) - bias.ndim) + _arrays.shape(bias)
    for have, want in zip(padded, full):
        if have not in (1, want):
            raise ValueError(f"bias with shape {_arrays.shape(bias)} does not broadcast to the "
                             f"scores shape (*batch, Hq, Sq, Sk) = {full}")
    bias = _arrays.reshape(bias, padded)
    nb = len(batch)
    if all(d == 1 for d in padded[:nb]):
        bias = _arrays.reshape(bias, (1,) + padded[nb:])
    else:
        # batch dims present: broadcast them (a copy only if some of them are 1) and flatten
        bias = _arrays.reshape(_arrays.broadcast_to(bias, tuple(batch) + padded[nb:]),
                               (B,) + padded[nb:])
    return _arrays.broadcast_to(bias, (B, Hq, Sq, Sk))


def _direct_tensors(backend, q, k, v, bias):
    """The allocator of results (shape -> CPU tensor) when a call on CPU tensors can run the C
    kernel on their memory (_arrays.direct_tensor_alloc: eager, no gradient wanted, plain
    contiguous float32/float64 tensors) without a bias, else None. It skips the NumPy views
    and the second pass through the checks of the host_views path: a small call (one decoding
    step of a small model) costs ~20 us less."""
    if backend not in (None, "c") or bias is not None or _backends._C_STATUS:
        return None
    return _arrays.direct_tensor_alloc((q, k, v))


@_dlpack.accepts_dlpack
def attention(q: Array, k: Array, v: Array, *, causal: bool = False,
              scale: Optional[float] = None, window: Optional[Tuple[int, int]] = None,
              bias: Optional[Array] = None, softcap: Optional[float] = None,
              return_lse: bool = False, dropout_p: float = 0.0,
              dropout_seed: Optional[int] = None,
              backend: Optional[str] = None) -> Union[Array, Tuple[Array, Array]]:
    """Fused scaled dot-product attention, with GQA, causal and sliding-window masks.

    For each query row: scores ``s = scale * q @ k.T``; with `softcap`,
    ``s = softcap * tanh(s / softcap)``; then ``s = s + bias``; keys outside the causal /
    window band get ``-inf``; ``out = softmax(s) @ v`` and ``lse = log(sum(exp(s)))``.

    Parameters
    ----------
    q : array, shape (*batch, Hq, Sq, D)
        Queries. ``*batch`` is any number of leading dims (none included), shared by q, k
        and v; 3 to 63 dims in all.
    k : array, shape (*batch, Hkv, Sk, D)
        Keys. ``Hq`` must be a multiple of ``Hkv`` (grouped-query / multi-query attention):
        query head ``h`` reads kv head ``h // (Hq // Hkv)``.
    v : array, shape (*batch, Hkv, Sk, Dv)
        Values. ``D`` and ``Dv`` are any sizes from 1 to 256 (not only powers of two).
    causal : bool, default False
        Causal mask aligned to the bottom right (as in FlashAttention): query ``i`` sees keys
        ``j <= i + (Sk - Sq)``; the same as top-left when ``Sq == Sk``. With ``Sq > Sk`` the
        first ``Sq - Sk`` queries see no key.
    scale : float, optional
        Multiplies ``q @ k.T``; default ``1 / sqrt(D)``.
    window : (int, int), optional
        Sliding window ``(left, right)``: query ``i`` sees keys ``j`` with
        ``i + Sk - Sq - left <= j <= i + Sk - Sq + right``; ``-1`` means unbounded on that
        side. Combines with `causal` (which caps ``right`` at 0).
    bias : array, optional
        Additive scores, float, broadcastable to ``(*batch, Hq, Sq, Sk)`` (ALiBi slopes,
        padding masks holding ``-inf``), of the same kind and device as q.
    softcap : float, optional
        Positive; caps the scaled scores at ``+-softcap`` (``softcap * tanh(s / softcap)``)
        before the bias and the masks.
    return_lse : bool, default False
        Also return the log-sum-exp of each query row's scores.
    dropout_p : float, default 0.0
        Attention dropout: each probability is zeroed with probability `dropout_p` (in
        [0, 1)) and the kept ones scaled by ``1 / (1 - dropout_p)`` before ``@ v``; lse is
        that of the probabilities before dropout. The mask comes from a counter-based
        generator (Philox-4x32-10) keyed by `dropout_seed`, the same on every backend, and
        the backward regenerates it: nothing is stored.
    dropout_seed : int, optional
        In [0, 2**63). None draws one per call: from torch's default generator for tensors
        (``torch.manual_seed`` makes runs repeatable), from NumPy's global generator
        (``np.random.seed``) for arrays. Pass one under ``torch.compile``.
    backend : {None, "c", "triton", "numpy"}, optional
        None picks ``"triton"`` for CUDA tensors and ``"c"`` for NumPy arrays and CPU tensors
        (the ``"numpy"`` reference, with a RuntimeWarning, if the C extension is missing).
        ``"numpy"`` runs the float64 reference (slow, exact). ``"triton"`` needs torch
        tensors; on CPU tensors only under the Triton interpreter (``TRITON_INTERPRET=1``).

    Returns
    -------
    out : array, shape (*batch, Hq, Sq, Dv)
        Same kind, device and dtype as q.
    lse : array, shape (*batch, Hq, Sq), float32
        Only with ``return_lse``: the natural-log log-sum-exp of the scores, as
        `merge_attention` takes it.

    Raises
    ------
    TypeError
        Mixed array kinds, mismatched or unsupported dtypes, options of the wrong type, or
        ``backend="triton"`` with NumPy arrays.
    ValueError
        Shapes that do not fit (the message names the argument and the shapes seen), a head
        dim outside [1, 256], a bad window or softcap, an unknown backend, or inputs on
        different devices. Everything is checked before any kernel runs.
    RuntimeError
        The requested backend is unavailable here (see `backend_status`).

    Notes
    -----
    A query row that sees no key (or only keys scored ``-inf``) returns zeros, and its lse is
    ``-inf``.

    dtypes: float32 and float64 on the CPU (``"c"`` and ``"numpy"``), and float16 (and, for
    tensors, bfloat16) there too, computed in float32 by the C kernels and returned in the
    input dtype; float16, bfloat16 and float32 on CUDA (``"triton"``); float16 and float32
    under the Triton interpreter. Accumulation is at least float32. Float32 matmuls in the
    Triton kernels are exact IEEE float32 unless ``SEQCORE_TF32=1``.

    torch tensors that require grad get gradients for q, k, v and bias (and through lse)
    from the same backend's kernels; the op is registered with ``torch.library``, so
    ``torch.compile(fullgraph=True)`` traces it. Under ``torch.autocast`` the inputs are cast
    to the autocast dtype.

    Examples
    --------
    >>> import numpy as np, seqcore
    >>> q = np.random.randn(2, 8, 128, 64).astype(np.float32)      # (B, Hq, Sq, D)
    >>> k = v = np.random.randn(2, 2, 128, 64).astype(np.float32)  # (B, Hkv, Sk, D): GQA
    >>> out, lse = seqcore.attention(q, k, v, causal=True, return_lse=True)
    >>> out.shape, lse.shape, lse.dtype
    ((2, 8, 128, 64), (2, 8, 128), dtype('float32'))
    >>> out = seqcore.attention(q, k, v, window=(32, 0))  # the last 33 keys of each query
    """
    direct = None  # the result allocator when CPU tensors go straight to the C kernel
    if type(q) is not np.ndarray:
        q, k, v, bias = _arrays.autocast_inputs(q, k, v, bias)
        direct = _direct_tensors(backend, q, k, v, bias)
        host = None if direct is not None else _arrays.host_views(backend, q, k, v, bias)
        if host is not None:  # CPU tensors, no autograd: the NumPy path (see host_views)
            if dropout_p and dropout_seed is None:  # (a tensor's seed: torch's generator)
                _, dropout_seed = check_dropout(dropout_p, None, _arrays.TORCH)
            return _arrays.host_results(attention(
                *host[:3], bias=host[3], causal=causal, scale=scale, window=window,
                softcap=softcap, return_lse=return_lse, dropout_p=dropout_p,
                dropout_seed=dropout_seed, backend=backend))
    # (the checks are ordered so that a NumPy call with default options costs a few us)
    numpy_only = bias is None and type(q) is np.ndarray and type(k) is np.ndarray \
        and type(v) is np.ndarray
    if numpy_only:
        kind = _arrays.NUMPY
    elif direct is not None:  # (plain CPU tensors: direct_tensor_alloc looked at each)
        kind = _arrays.TORCH
    else:
        kind = _arrays.common_kind([("q", q), ("k", k), ("v", v), ("bias", bias)])
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not 3 <= x.ndim < 64:
            V.require_ndim(name, x, range(3, 64), "(*batch, heads, seq, dim)")
    if not numpy_only and direct is None:  # NumPy arrays are all on the host
        V.require_same_device([("q", q), ("k", k), ("v", v), ("bias", bias)])
    dtype = _same_dtype(q, k, v)
    if bias is not None:
        V.require_float("bias", bias)
    if not (q.ndim == k.ndim == v.ndim):
        raise ValueError(f"q, k, v must have the same number of dims: {_shapes(q, k, v)}")
    qs, ks, vs = _arrays.shape(q), _arrays.shape(k), _arrays.shape(v)
    batch, (Hq, Sq, D) = qs[:-3], qs[-3:]
    Hkv, Sk, Dk = ks[-3:]
    Hv, Skv, Dv = vs[-3:]
    if ks[:-3] != batch or vs[:-3] != batch:
        raise ValueError(f"q, k, v must share the batch dims: {_shapes(q, k, v)}")
    if Dk != D:
        raise ValueError(f"q and k must share the head dim D: {_shapes(q, k, v)}")
    if Hv != Hkv or Skv != Sk:
        raise ValueError(f"k and v must share heads and sequence length: {_shapes(q, k, v)}")
    if Hkv == 0 or Hq % Hkv != 0:
        _check_heads(Hq, Hkv, _shapes(q, k, v))
    _check_head_dims(D, Dv)
    p = _check_options(D, causal, scale, window, softcap, return_lse, dropout_p, dropout_seed,
                       kind)
    backend = _backends.pick(kind, _arrays.device_type(q), backend)
    _backends.check_dtype("q", q, backend)

    B = math.prod(batch)  # Python ints: torch.compile traces this, np.prod it cannot
    cdt = _backends.compute_dtype(backend, dtype)
    if direct is not None and q.ndim == 4:  # (already contiguous, in the kernel dtype)
        q4, k4, v4 = q, k, v
    else:
        q4 = _compute_array(q, cdt, (B, Hq, Sq, D))
        k4 = _compute_array(k, cdt, (B, Hkv, Sk, D))
        v4 = _compute_array(v, cdt, (B, Hkv, Sk, Dv))
    bias4 = None
    if bias is not None:
        bias_dt = cdt if backend != "triton" else _arrays.dtype_name(bias)
        if bias_dt not in ("float16", "bfloat16", "float32", "float64"):
            bias_dt = cdt
        if backend == "triton" and bias_dt == "float64":
            bias_dt = "float32"
        bias4 = _flat_bias(_arrays.astype(bias, bias_dt), batch, Hq, Sq, Sk, B)

    if direct is None and bias4 is None and kind == _arrays.TORCH and cdt != dtype:
        # (bfloat16 tensors, now widened to float32: they may go straight to the kernel too)
        direct = _direct_tensors(backend, q4, k4, v4, None)
    if direct is not None:
        out, lse = _backends.module(backend, "attention").attention_fwd(q4, k4, v4, None, p,
                                                                         alloc=direct)
    elif kind == _arrays.TORCH:
        from seqcore import _torch

        out, lse = _torch.attention(q4, k4, v4, bias4, p, backend)
    else:
        out, lse = _backends.module(backend, "attention").attention_fwd(q4, k4, v4, bias4, p)
    out = _arrays.reshape(_arrays.astype(out, dtype), tuple(batch) + (Hq, Sq, Dv))
    if not return_lse:
        return out
    return out, _arrays.reshape(_arrays.astype(lse, "float32"), tuple(batch) + (Hq, Sq))


def _check_cu_seqlens(name, cu, total, given_max):
    """(cu as contiguous int32, longest sequence, number of sequences)."""
    if cu is None or _arrays.kind_of(cu) is None:
        raise TypeError(f"{name} must be an int32 array of the same kind as q, got {type(cu).__name__}")
    if cu.ndim != 1 or _arrays.shape(cu)[0] < 1:
        raise ValueError(f"{name} must have shape (n_seqs + 1,), got {_arrays.shape(cu)}")
    if total >= 2**31:
        raise ValueError(f"{name}: packed length {total} does not fit int32")
    n_seqs = _arrays.shape(cu)[0] - 1
    if given_max is not None:  # (no sequence is longer than all of them: the kernels' work
        given_max = min(given_max, total)  # and grids follow this bound, keep it finite)
    if _arrays.is_tensor(cu) and given_max is not None:
        # the torch op checks the values when it runs (under torch.compile the tracer cannot
        # read them here); with the bounds given there is no need to read them on the host
        if cu.dtype.is_floating_point or cu.dtype.is_complex or cu.dtype == _arrays._torch().bool:
            raise TypeError(f"{name} must hold integers (int32), got dtype {cu.dtype}")
        return _arrays.contiguous(_arrays.astype(cu, "int32")), given_max, n_seqs
    host = _arrays.to_host_numpy(cu)
    if host.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers (int32), got dtype {host.dtype}")
    longest = V.check_cu_seqlens_values(name, host, total)
    if given_max is not None and given_max < longest:
        raise ValueError(f"max_seqlen_{name[-1]}={given_max} is smaller than the longest sequence ({longest})")
    as32 = _arrays.contiguous(_arrays.astype(cu, "int32")) if _arrays.is_tensor(cu) else \
        np.ascontiguousarray(host, dtype=np.int32)
    return as32, longest, n_seqs


@_dlpack.accepts_dlpack
def attention_varlen(q: Array, k: Array, v: Array, cu_seqlens_q: Array, cu_seqlens_k: Array, *,
                     max_seqlen_q: Optional[int] = None, max_seqlen_k: Optional[int] = None,
                     causal: bool = False, scale: Optional[float] = None,
                     window: Optional[Tuple[int, int]] = None, softcap: Optional[float] = None,
                     return_lse: bool = False, dropout_p: float = 0.0,
                     dropout_seed: Optional[int] = None,
                     backend: Optional[str] = None) -> Union[Array, Tuple[Array, Array]]:
    """Attention over variable-length sequences packed along one dim (no padding).

    Sequence ``s`` holds query rows ``cu_seqlens_q[s]:cu_seqlens_q[s+1]`` and key rows
    ``cu_seqlens_k[s]:cu_seqlens_k[s+1]``, and attends only within itself: each sequence is
    one `attention` call with its own ``Sq`` and ``Sk``.

    Parameters
    ----------
    q : array, shape (total_q, Hq, D)
        Packed queries.
    k : array, shape (total_k, Hkv, D)
        Packed keys; ``Hq`` a multiple of ``Hkv`` (GQA: query head ``h`` reads kv head
        ``h // (Hq // Hkv)``).
    v : array, shape (total_k, Hkv, Dv)
        Packed values; ``D``, ``Dv`` from 1 to 256.
    cu_seqlens_q, cu_seqlens_k : integer array, shape (n_seqs + 1,)
        Cumulative sequence lengths (int32; other integer dtypes are converted), of q's kind
        and device: start at 0, non-decreasing, end at ``total_q`` / ``total_k``. Zero-length
        sequences are allowed.
    max_seqlen_q, max_seqlen_k : int, optional
        The longest query / key sequence (an upper bound is fine). By default they are read
        from ``cu_seqlens_*`` on the host. Pass them for torch tensors under
        ``torch.compile``, whose tracer cannot read the ``cu_seqlens`` values: the values are
        then checked when the op runs.
    causal, scale, window, softcap, return_lse, dropout_p, dropout_seed, backend
        As in `attention`, applied within each sequence: causal and window are aligned to the
        bottom right of each sequence's own ``(Sq, Sk)``; the dropout mask counts positions
        within each sequence and numbers the sequences as the batch.

    Returns
    -------
    out : array, shape (total_q, Hq, Dv)
        Same kind, device and dtype as q.
    lse : array, shape (total_q, Hq), float32
        Only with ``return_lse``: natural-log log-sum-exp of each row's scores.

    Raises
    ------
    TypeError
        As in `attention`; also ``cu_seqlens_*`` that are not integer arrays of q's kind.
    ValueError
        As in `attention`; also ``cu_seqlens_*`` of the wrong shape or values, describing
        different numbers of sequences, or a ``max_seqlen_*`` below the longest sequence.

    Notes
    -----
    A query row that sees no key returns zeros with lse ``-inf``. dtypes, backends and
    gradients (for q, k and v) are as in `attention`.

    Examples
    --------
    >>> import numpy as np, seqcore
    >>> cu = np.array([0, 3, 3, 10], dtype=np.int32)   # lengths 3, 0 and 7
    >>> q = k = v = np.random.randn(10, 4, 64).astype(np.float32)
    >>> out, lse = seqcore.attention_varlen(q, k, v, cu, cu, causal=True, return_lse=True)
    >>> out.shape, lse.shape
    ((10, 4, 64), (10, 4))
    """
    kind = _arrays.common_kind([("q", q), ("k", k), ("v", v), ("cu_seqlens_q", cu_seqlens_q),
                                ("cu_seqlens_k", cu_seqlens_k)])
    for name, x in (("q", q), ("k", k), ("v", v)):
        V.require_ndim(name, x, (3,), "(total, heads, dim)")
    V.require_same_device([("q", q), ("k", k), ("v", v), ("cu_seqlens_q", cu_seqlens_q),
                           ("cu_seqlens_k", cu_seqlens_k)])
    dtype = V.require_same_dtype([("q", q), ("k", k), ("v", v)])
    shapes = f"q {_arrays.shape(q)}, k {_arrays.shape(k)}, v {_arrays.shape(v)}"
    Tq, Hq, D = _arrays.shape(q)
    Tk, Hkv, Dk = _arrays.shape(k)
    Tv, Hv, Dv = _arrays.shape(v)
    if Dk != D:
        raise ValueError(f"q and k must share the head dim D: {shapes}")
    if Tv != Tk or Hv != Hkv:
        raise ValueError(f"k and v must share total length and heads: {shapes}")
    _check_heads(Hq, Hkv, shapes)
    _check_head_dims(D, Dv)
    given = [None if m is None else V.require_int(name, m, minimum=0)
             for name, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k))]
    cu_q, max_q, n_q = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, Tq, given[0])
    cu_k, max_k, n_k = _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, Tk, given[1])
    if n_q != n_k:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must describe the same number of "
                         f"sequences, got {n_q} and {n_k}")
    p = _check_options(D, causal, scale, window, softcap, return_lse, dropout_p, dropout_seed,
                       kind)
    backend = _backends.pick(kind, _arrays.device_type(q), backend)
    _backends.check_dtype("q", q, backend)
    cdt = _backends.compute_dtype(backend, dtype)
    q3, k3, v3 = (_arrays.contiguous(_arrays.astype(x, cdt)) for x in (q, k, v))

    if kind == _arrays.TORCH:
        from seqcore import _torch

        out, lse = _torch.attention_varlen(q3, k3, v3, cu_q, cu_k, max_q, max_k, p, backend)
    else:
        out, lse = _backends.module(backend, "attention").attention_varlen_fwd(
            q3, k3, v3, cu_q, cu_k, max_q, max_k, p)
    out = _arrays.astype(out, dtype)
    if not return_lse:
        return out
    return out, _arrays.astype(lse, "float32")


@_dlpack.accepts_dlpack
def merge_attention(out_a: Array, lse_a: Array, out_b: Array,
                    lse_b: Array) -> Tuple[Array, Array]:
    """Combine the attention of the same queries over two disjoint key sets.

    Given the results of attention over key sets A and B (`attention` with
    ``return_lse=True``), returns the attention over their union: ``lse = log(exp(lse_a) +
    exp(lse_b))`` and ``out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse)``. This is
    how split-KV decoding and ring / context-parallel attention combine partial results.

    Parameters
    ----------
    out_a, out_b : array, shape (..., Dv)
        The two partial outputs; one shape and one float dtype.
    lse_a, lse_b : array, shape out_a.shape[:-1]
        Their natural-log log-sum-exps (any float dtype; float32 as `attention` returns
        them).

    Returns
    -------
    out : array, shape (..., Dv)
        In out_a's dtype.
    lse : array, shape (...), float32

    Raises
    ------
    TypeError
        Mixed array kinds, non-float inputs, or out_a and out_b of different dtypes.
    ValueError
        Shapes that do not match, or inputs on different devices.

    Notes
    -----
    A side whose lse is ``-inf`` (it saw no key) contributes nothing; rows where both are
    ``-inf`` stay zero with lse ``-inf``. Computed in float32 (float64 for float64 outputs)
    with NumPy or torch ops, so torch tensors get gradients through it; there is no backend
    argument.

    Examples
    --------
    >>> import numpy as np, seqcore
    >>> q = np.random.randn(1, 4, 16, 64).astype(np.float32)
    >>> k = v = np.random.randn(1, 4, 256, 64).astype(np.float32)
    >>> a = seqcore.attention(q, k[..., :128, :], v[..., :128, :], return_lse=True)
    >>> b = seqcore.attention(q, k[..., 128:, :], v[..., 128:, :], return_lse=True)
    >>> out, lse = seqcore.merge_attention(*a, *b)   # = seqcore.attention(q, k, v) on all 256
    """
    kind = _arrays.common_kind([("out_a", out_a), ("lse_a", lse_a), ("out_b", out_b), ("lse_b", lse_b)])
    if _arrays.shape(out_a) != _arrays.shape(out_b):
        raise ValueError(f"out_a {_arrays.shape(out_a)} and out_b {_arrays.shape(out_b)} must have one shape")
    if len(_arrays.shape(out_a)) < 1:
        raise ValueError("out_a and out_b must have shape (..., Dv), got 0-d arrays")
    want = _arrays.shape(out_a)[:-1]
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if _arrays.shape(lse) != want:
            raise ValueError(f"{name} must have shape out.shape[:-1] = {want}, got {_arrays.shape(lse)}")
    for name, x in (("out_a", out_a), ("lse_a", lse_a), ("lse_b", lse_b)):
        V.require_float(name, x)
    V.require_same_dtype([("out_a", out_a), ("out_b", out_b)])
    V.require_same_device([("out_a", out_a), ("lse_a", lse_a), ("out_b", out_b), ("lse_b", lse_b)])
    if kind == _arrays.TORCH:
        import torch as xp

        acc = xp.float64 if out_a.dtype == xp.float64 else xp.float32  # (as for NumPy below)
        la, lb = lse_a.to(acc), lse_b.to(acc)
        oa, ob = out_a.to(acc), out_b.to(acc)
    else:
        xp = np
        acc = np.float64 if out_a.dtype == np.float64 else np.float32
        la, lb = lse_a.astype(acc), lse_b.astype(acc)
        oa, ob = out_a.astype(acc), out_b.astype(acc)
    m = xp.maximum(la, lb)
    m_safe = xp.where(xp.isinf(m) & (m < 0), xp.zeros_like(m), m)
    wa, wb = xp.exp(la - m_safe), xp.exp(lb - m_safe)
    total = wa + wb
    if kind == _arrays.TORCH:
        lse = m_safe + xp.log(total)
    else:
        with np.errstate(divide="ignore"):  # rows seen by neither side: log(0) = -inf, as wanted
            lse = m_safe + xp.log(total)
    denom = xp.where(total > 0, total, xp.ones_like(total))
    out = (oa * (wa / denom)[..., None] + ob * (wb / denom)[..., None])
    if kind == _arrays.TORCH:
        return out.to(out_a.dtype), lse.float()
    return out.astype(out_a.dtype), lse.astype(np.float32)
