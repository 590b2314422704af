"""torch integration: seqcore's kernels as torch.library custom ops.

seqcore/attention.py and seqcore/recurrent.py validate a call and normalize it (fixed rank,
contiguous, compute dtype), then hand torch tensors to the entry points at the bottom of this
file. Each runs one op in the "seqcore" namespace:

  seqcore::attention_fwd / attention_bwd                 (dense, optional additive bias)
  seqcore::attention_varlen_fwd / attention_varlen_bwd   (packed sequences)
  seqcore::attention_kvcache_fwd                         (KV cache, written in place; no grad)
  seqcore::lstm_fwd / lstm_bwd, seqcore::gru_fwd / gru_bwd
  seqcore::rnn_fwd / rnn_bwd                             (Elman: tanh or relu)

Every forward op has a fake (meta) implementation, so torch.compile and FakeTensor tracing
see exact shapes and dtypes, and an autograd formula that calls the matching backward op:
gradients run through the same backend kernels as the forward (FlashAttention's interface
style). Eager calls on plain tensors skip the dispatcher (_op_for): without autograd they run
the op's body, with it the body inside a plain autograd.Function holding the same formula,
whose backward calls the backward op's body; traced calls (torch.compile, export, functorch)
go through the ops. An op dispatches on its `backend` string to seqcore._backends.module:
"triton" takes the tensors as they are; "c" and "numpy" take NumPy arrays, which CPU tensors
give without a copy (float16/bfloat16 are widened to float32 first, since NumPy and the C
kernels compute in float32 at least); results come back as tensors in the input dtype, on the
input device.
"""
import functools
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from seqcore import _arrays, _backends
from seqcore import _validate as V
from seqcore._problem import AttnParams

# ----------------------------------------------------------------------------------------------
# Moving tensors to a backend and back


def _acc_dtype(dtype):
    """The accumulation dtype a backend uses for lse and the RNN workspace."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _to_backend(backend, t):
    """The tensor as `backend` takes it: itself for "triton", else a NumPy array."""
    if t is None or backend == "triton":
        return t
    t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.cpu().numpy()  # zero-copy for a CPU tensor, zero strides (an expanded bias) kept


class _Outputs:
    """Turns backend results into tensors that alias neither the op's inputs nor each other.

    A custom op must return fresh memory; a backend may hand back an input (h0 for T = 0) or
    views of one buffer (h_n inside y), so those are copied.
    """

    def __init__(self, backend_inputs, device):
        self.taken = [a for a in backend_inputs if a is not None]
        self.device = device

    def _shares(self, a):
        if isinstance(a, np.ndarray):
            return any(isinstance(b, np.ndarray) and np.may_share_memory(a, b) for b in self.taken)
        ptr = a.untyped_storage().data_ptr()
        return any(isinstance(b, Tensor) and b.untyped_storage().data_ptr() == ptr
                   for b in self.taken)

    def tensor(self, a, dtype):
        if a is None:
            return None
        if self._shares(a):
            a = a.copy() if isinstance(a, np.ndarray) else a.clone()
        self.taken.append(a)
        if isinstance(a, np.ndarray):
            if not a.flags.writeable:
                a = a.copy()
            a = torch.from_numpy(a)
        return a.to(device=self.device, dtype=dtype)


def _run_backend(backend, family, fn_name, tensors, extra, device, **kwargs):
    """Call backend.<fn_name>(*converted tensors, *extra, **kwargs); return (results,
    _Outputs)."""
    arrays = [_to_backend(backend, t) for t in tensors]
    results = getattr(_backends.module(backend, family), fn_name)(*arrays, *extra, **kwargs)
    return results, _Outputs(arrays, device)


def _direct_alloc(backend, tensors):
    """The allocator of results (shape -> CPU tensor) when the C kernels can read `tensors` in
    place (_arrays.direct_tensor_alloc: plain contiguous CPU float32/float64 tensors of one
    dtype, nothing traced, no autograd around the body: inside an autograd.Function's forward
    or backward), else None. Its results are fresh tensors, so the NumPy views and _Outputs'
    alias checks are skipped: ~60 us of an eager training call's forward and backward."""
    if backend != "c" or _backends._C_STATUS:
        return None
    return _arrays.direct_tensor_alloc(tensors)


def _empty(like, dtype=None):
    """A (0,) placeholder for an output an op has nothing to put in (dbias, workspace)."""
    return torch.empty((0,), dtype=dtype or like.dtype, device=like.device)


def _contig(*ts):
    return [None if t is None else t.contiguous() for t in ts]


def _params(scale, window_left, window_right, softcap, causal, dropout_p=0.0, dropout_seed=0):
    return AttnParams(scale=scale, window_left=window_left, window_right=window_right,
                      softcap=softcap, causal=causal, dropout_p=dropout_p,
                      dropout_seed=dropout_seed)


# ----------------------------------------------------------------------------------------------
# Cheap checks of the raw ops' arguments. The public API validates everything before it calls
# an op (and its eager path calls the op bodies directly); these guard torch.ops.seqcore.* called
# by hand or from an exported graph, so that mismatched shapes raise instead of reading out
# of bounds: shapes, dtypes, devices, not values (index values are checked where they are read).


def _fail(op, what):
    raise ValueError(f"torch.ops.seqcore.{op}: {what}")


def _shape(op, name, t, *dims):
    """t has len(dims) dims, each equal to the given int (None: any)."""
    if t is None or t.dim() != len(dims) or any(d is not None and n != d for n, d in zip(t.shape, dims)):
        want = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
        _fail(op, f"{name} must have shape {want}, got {None if t is None else tuple(t.shape)}")


def _alike(op, ref_name, ref, named, dtypes=None):
    """Every tensor of `named` on ref's device and (unless dtypes) in ref's dtype."""
    for name, t in named:
        if t is None:
            continue
        if t.device != ref.device:
            _fail(op, f"{name} is on {t.device} but {ref_name} on {ref.device}")
        if (t.dtype not in dtypes) if dtypes else (t.dtype != ref.dtype):
            _fail(op, f"{name} has dtype {t.dtype}, {ref_name} {ref.dtype}")


def _check_attention(op, q, k, v, bias):
    for name, t in (("q", q), ("k", k), ("v", v)):
        _shape(op, name, t, *([None] * 4))
    B, Hq, Sq, D = q.shape
    _shape(op, "k", k, B, None, None, D)
    Hkv, Sk = k.shape[1], k.shape[2]
    _shape(op, "v", v, B, Hkv, Sk, None)
    if Hkv == 0 or Hq % Hkv:
        _fail(op, f"query heads {Hq} must be a multiple of kv heads {Hkv}")
    _alike(op, "q", q, [("k", k), ("v", v)])
    if bias is not None:
        _shape(op, "bias", bias, B, Hq, Sq, Sk)
        _alike(op, "q", q, [("bias", bias)], dtypes=(q.dtype, torch.float32, torch.float64))


def _check_attention_fwd(q, k, v, bias, scale, window_left, window_right, softcap, causal,
                         dropout_p, dropout_seed, backend):
    _check_attention("attention_fwd", q, k, v, bias)
    _check_dropout("attention_fwd", dropout_p, dropout_seed)


def _check_grads_in(op, dout, out, lse, rows, Dv):
    _shape(op, "dout", dout, *rows, Dv)
    _shape(op, "out", out, *rows, Dv)
    _shape(op, "lse", lse, *rows)


def _check_varlen(op, q, k, v, cu_q, cu_k):
    for name, t in (("q", q), ("k", k), ("v", v)):
        _shape(op, name, t, None, None, None)
    _shape(op, "k", k, None, None, q.shape[2])
    _shape(op, "v", v, k.shape[0], k.shape[1], None)
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        _fail(op, f"query heads {q.shape[1]} must be a multiple of kv heads {k.shape[1]}")
    _alike(op, "q", q, [("k", k), ("v", v)])
    _shape(op, "cu_q", cu_q, None)
    _shape(op, "cu_k", cu_k, cu_q.shape[0])
    if cu_q.shape[0] < 1:
        _fail(op, "cu_q and cu_k need n_seqs + 1 >= 1 entries")
    _alike(op, "q", q, [("cu_q", cu_q), ("cu_k", cu_k)], dtypes=(torch.int32,))


def _check_attention_varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, scale, window_left,
                                window_right, softcap, causal, dropout_p, dropout_seed, backend):
    _check_varlen("attention_varlen_fwd", q, k, v, cu_q, cu_k)
    _check_dropout("attention_varlen_fwd", dropout_p, dropout_seed)


def _check_dropout(op, dropout_p, dropout_seed):
    if not 0.0 <= dropout_p < 1.0:
        _fail(op, f"dropout_p must lie in [0, 1), got {dropout_p}")
    if dropout_seed < 0:
        _fail(op, f"dropout_seed must be >= 0, got {dropout_seed}")


def _check_rnn(op, G, x, w_ih, w_hh, b_ih, b_hh, states, lengths, w_hr=None):
    """(T, B, H, P): P = H, or the projection's size with w_hr (P, H); hidden states "h0"
    (and the gradients of h) have P features, the cell state H."""
    _shape(op, "x", x, None, None, None)
    T, B, I = x.shape
    _shape(op, "w_hh", w_hh, None, None)
    if w_hr is not None:
        _shape(op, "w_hr", w_hr, None, None)
        P, H = w_hr.shape
        if not 0 < P < H:
            _fail(op, f"w_hr must be (P, H) with 0 < P < H, got {tuple(w_hr.shape)}")
        _alike(op, "x", x, [("w_hr", w_hr)])
    else:
        H = P = w_hh.shape[1]
    _shape(op, "w_hh", w_hh, G * H, P)
    _shape(op, "w_ih", w_ih, G * H, I)
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        _shape(op, name, b, G * H)
    for name, st in states:
        _shape(op, name, st, B, P if name == "h0" else H)
    _alike(op, "x", x, [("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)] + states)
    if lengths is not None:
        _shape(op, "lengths", lengths, B)
        if lengths.dtype not in (torch.int32, torch.int64):
            _fail(op, f"lengths must be int32 or int64, got {lengths.dtype}")
    return T, B, H, P


def _check_lstm_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, need_ws, backend,
                    w_hr=None):
    _check_rnn("lstm_fwd", 4, x, w_ih, w_hh, b_ih, b_hh, [("h0", h0), ("c0", c0)], lengths,
               w_hr)


def _check_gru_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, *args, **kwargs):
    _check_rnn("gru_fwd", 3, x, w_ih, w_hh, b_ih, b_hh, [("h0", h0)], lengths)


def _check_rnn_grads_in(op, T, B, H, dy, finals, y, ws, ws_gates, P=None):
    P = H if P is None else P  # (h's features: the projection's with one)
    _shape(op, "dy", dy, T, B, P)
    for name, t in finals:
        _shape(op, name, t, B, H if name == "dc_n" else P)
    _shape(op, "y", y, T, B, P)
    if ws.numel():
        _shape(op, "ws", ws, T, B, ws_gates * H)


def _with_check(body, check):
    """body with its arguments checked first (check takes the same parameters)."""
    @functools.wraps(body)
    def op(*args, **kwargs):
        check(*args, **kwargs)
        return body(*args, **kwargs)

    return op


def _checked_op(name, body, check, mutates_args=()):
    """body registered as seqcore::<name>, its arguments checked first. The API's eager path
    calls body itself: it has validated already."""
    return torch.library.custom_op(f"seqcore::{name}", mutates_args=mutates_args)(
        _with_check(body, check))


_EAGER = {}  # forward op -> (its body, an autograd.Function's apply around the body)
_BACKWARD_BODIES = {}  # backward op -> its body


def _backward_op(name, body, check=None):
    """body registered as seqcore::<name>, a backward op (no autograd formula of its own), its
    arguments checked first when check is given; an eager backward calls body itself (its
    inputs are what the forward took and made: ~10 us of checks saved a call)."""
    op = torch.library.custom_op(f"seqcore::{name}", mutates_args=())(
        body if check is None else _with_check(body, check))
    _BACKWARD_BODIES[op] = body
    return op


def _backward(ctx, op):
    """What an autograd formula calls for backward op `op`: its body in an eager backward (the
    dispatcher and the library's wrapping of an op called from Python cost ~150 us), else the
    op, which a traced backward records."""
    return _BACKWARD_BODIES[op] if getattr(ctx, "eager", False) else op


def _register_autograd(op, body, backward, setup_context):
    """op's autograd formula, registered with torch.library for traced calls (torch.compile,
    export, functorch transforms) and also wrapped around body as a plain
    torch.autograd.Function for eager calls that need gradients (see _op_for): the library's
    wrapping of a custom op (the schema's defaults filled in per call, a dynamo-disabled frame,
    a redispatch) costs ~200 us a call on the CPU, a tenth of an S256 attention forward. One
    formula, two doors: both run backward and setup_context as written."""
    op.register_autograd(backward, setup_context=setup_context)

    def forward(ctx, *inputs):
        ctx.eager = True  # the backward calls the backward ops' bodies (_backward)
        output = body(*inputs)
        setup_context(ctx, inputs, output)
        return output

    # (named at creation: autograd names the graph node "<name>Backward" from it)
    name = "".join(w.capitalize() for w in body.__name__.strip("_").split("_")[:-1])
    EagerGrad = type(f"{name}EagerGrad", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward)})
    _EAGER[op] = (body, EagerGrad.apply)


# ----------------------------------------------------------------------------------------------
# Gradient through lse, computed with torch ops
#
# The backend backward kernels take dout only. A gradient flowing into lse (merge_attention in
# ring / split-KV attention uses lse) adds dlse_i * P_ij to the score gradient dS_ij, since
# d lse_i / d s_ij = P_ij. That is folded in here, densely, only when such a gradient exists.


def _band(Sq, Sk, window_left, window_right, device):
    """(Sq, Sk) bool: key j visible to query i under the causal/window band."""
    i = torch.arange(Sq, device=device)[:, None]
    j = torch.arange(Sk, device=device)[None, :]
    off = Sk - Sq
    visible = torch.ones(Sq, Sk, dtype=torch.bool, device=device)
    if window_left >= 0:
        visible = visible & (j >= i + off - window_left)
    if window_right >= 0:
        visible = visible & (j <= i + off + window_right)
    return visible


def _lse_grad(dlse, q, k, bias, lse, visible, scale, softcap):
    """(dq, dk, dbias) from dlse alone. q (B, Hq, Sq, D), k (B, Hkv, Sk, D), visible (Sq, Sk)."""
    acc = _acc_dtype(q.dtype)
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    qa, ka = q.to(acc), k.to(acc).repeat_interleave(group, dim=1)
    raw = scale * (qa @ ka.transpose(-1, -2))
    s = softcap * torch.tanh(raw / softcap) if softcap else raw
    if bias is not None:
        s = s + bias.to(acc)
    lse = lse.to(acc)[..., None]
    seen = visible & ~torch.isinf(lse) & ~torch.isinf(s)
    probs = torch.where(seen, torch.exp(torch.where(seen, s - lse, torch.zeros_like(s))),
                        torch.zeros_like(s))
    ds = probs * dlse.to(acc)[..., None]
    draw = ds * (1 - torch.tanh(raw / softcap) ** 2) if softcap else ds
    dq = scale * (draw @ ka)
    dk = scale * (draw.transpose(-1, -2) @ qa).reshape(B, Hkv, group, Sk, D).sum(2)
    return dq, dk, ds


# ----------------------------------------------------------------------------------------------
# Double backward. The first-order gradients come from the backward kernels; when a backward
# itself is to be differentiated (torch.autograd.grad(..., create_graph=True): gradient
# penalties, MAML, Hessian-vector products) it runs as the vector-Jacobian product of a
# composite of differentiable torch ops instead, whose own backward torch derives. Slower and
# O(S^2) in memory for attention, O(T) Python steps for the RNNs, as the math path of torch's
# own SDPA and RNNs is; only taken when the graph of the gradients is wanted.


def _composite_grads(outputs, grad_outputs, inputs):
    """d(outputs)/d(inputs) . grad_outputs with create_graph; None for inputs that need none."""
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None]
    if not wanted or not pairs:
        return [None] * len(inputs)
    grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                     create_graph=True, allow_unused=True))
    return [next(grads) if t is not None and t.requires_grad else None for t in inputs]


def _dropout_factor(shape, p, seed, like, first_batch=0):
    """The dropout factors (B, Hq, Sq, Sk) of seqcore/reference/dropout.py as a tensor like
    `like` (for the composite paths only: the kernels regenerate the mask themselves)."""
    from seqcore.reference.dropout import dropout_scale

    return torch.from_numpy(dropout_scale(*shape, p, seed, first_batch)).to(like)


def _attention_math(q, k, v, bias, visible, scale, softcap, factor=None):
    """(out, lse) of attention as differentiable torch ops; visible: (Sq, Sk) bool; factor:
    the dropout factors of the probabilities, or None."""
    group = q.shape[1] // k.shape[1]
    ke, ve = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    raw = scale * (q @ ke.transpose(-1, -2))
    s = softcap * torch.tanh(raw / softcap) if softcap else raw
    if bias is not None:
        s = s + bias.to(s.dtype)
    s = s.masked_fill(~visible, float("-inf"))
    m = s.amax(-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    total = e.sum(-1, keepdim=True)
    probs = e / torch.where(total > 0, total, torch.ones_like(total))
    out = (probs if factor is None else probs * factor) @ ve
    return out, (m + torch.log(total)).squeeze(-1)


def _lstm_math(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, w_hr=None):
    return _rnn_math("lstm", x, w_ih, w_hh, b_ih, b_hh, (h0, c0), lengths, reverse, w_hr)


def _gru_math(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse):
    return _rnn_math("gru", x, w_ih, w_hh, b_ih, b_hh, (h0,), lengths, reverse)


def _cell_math(cell, xt, h, c, w_ih, w_hh, b_ih, b_hh, w_hr=None):
    gx, gh = xt @ w_ih.t() + b_ih, h @ w_hh.t() + b_hh
    if cell == "rnn_tanh":
        return torch.tanh(gx + gh), None
    if cell == "rnn_relu":
        return torch.relu(gx + gh), None
    if cell == "lstm":
        i, f, g, o = (gx + gh).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h if w_hr is None else h @ w_hr.t()), c
    (xr, xz, xn), (hr, hz, hn) = gx.chunk(3, dim=1), gh.chunk(3, dim=1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h, None


def _rnn_math(cell, x, w_ih, w_hh, b_ih, b_hh, states, lengths, reverse, w_hr=None):
    """(y, h_n[, c_n]) of one layer as differentiable torch ops, step by step, with lengths
    (an element stops at its length; y is zero past it) and reverse (each element from its own
    last step back to its first)."""
    T, B, _ = x.shape
    lens = torch.full((B,), T, dtype=torch.long, device=x.device) if lengths is None \
        else lengths.to(device=x.device, dtype=torch.long)
    h, c = states[0], states[1] if cell == "lstm" else None
    y = x.new_zeros((T, B, h.shape[1]))
    rows = torch.arange(B, device=x.device)
    for step in range(int(lens.max()) if B else 0):
        active = step < lens
        t = (lens - 1 - step).clamp(min=0) if reverse else torch.full_like(lens, step)
        h_new, c_new = _cell_math(cell, x[t, rows], h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
        keep = active[:, None]
        h = torch.where(keep, h_new, h)
        if c is not None:
            c = torch.where(keep, c_new, c)
        y = y.index_put((t[active], rows[active]), h_new[active])
    return (y, h, c) if cell == "lstm" else (y, h)


# ----------------------------------------------------------------------------------------------
# Attention (dense)


def _attention_fwd_body(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], scale: float,
                  window_left: int, window_right: int, softcap: float, causal: bool,
                  dropout_p: float, dropout_seed: int, backend: str) -> tuple[Tensor, Tensor]:
    """out (B, Hq, Sq, Dv) in q's dtype, lse (B, Hq, Sq) float32 (float64 for float64 q)."""
    p = _params(scale, window_left, window_right, softcap, causal, dropout_p, dropout_seed)
    alloc = None if bias is not None else _direct_alloc(backend, (q, k, v))
    if alloc is not None:
        return _backends.module("c", "attention").attention_fwd(q, k, v, None, p, alloc=alloc)
    (out, lse), outs = _run_backend(backend, "attention", "attention_fwd",
                                    _contig(q, k, v) + [bias], (p,), q.device)
    return outs.tensor(out, q.dtype), outs.tensor(lse, _acc_dtype(q.dtype))


attention_fwd = _checked_op("attention_fwd", _attention_fwd_body, _check_attention_fwd)


@attention_fwd.register_fake
def _attention_fwd_fake(q, k, v, bias, scale, window_left, window_right, softcap, causal,
                        dropout_p, dropout_seed, backend):
    B, Hq, Sq, _ = q.shape
    return q.new_empty((B, Hq, Sq, v.shape[-1])), q.new_empty((B, Hq, Sq), dtype=_acc_dtype(q.dtype))


def _attention_bwd_body(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                        out: Tensor, lse: Tensor, scale: float, window_left: int,
                        window_right: int, softcap: float, causal: bool, dropout_p: float,
                        dropout_seed: int, backend: str,
                        need_dbias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dbias): dbias full (B, Hq, Sq, Sk) in bias's dtype when need_dbias, else (0,)."""
    p = _params(scale, window_left, window_right, softcap, causal, dropout_p, dropout_seed)
    tensors = _contig(dout, q, k, v) + [bias] + _contig(out, lse)
    alloc = None if bias is not None else _direct_alloc(backend, tensors)
    if alloc is not None:
        dq, dk, dv, _ = _backends.module("c", "attention").attention_bwd(
            *tensors, p, False, alloc=alloc)
        return dq, dk, dv, _empty(q)
    (dq, dk, dv, dbias), outs = _run_backend(backend, "attention", "attention_bwd", tensors,
                                             (p, need_dbias), q.device)
    dbias = outs.tensor(dbias, bias.dtype) if need_dbias else _empty(q)
    return outs.tensor(dq, q.dtype), outs.tensor(dk, k.dtype), outs.tensor(dv, v.dtype), dbias


def _check_attention_bwd(dout, q, k, v, bias, out, lse, scale, window_left, window_right,
                         softcap, causal, dropout_p, dropout_seed, backend, need_dbias):
    _check_attention("attention_bwd", q, k, v, bias)
    _check_grads_in("attention_bwd", dout, out, lse, q.shape[:3], v.shape[3])
    _check_dropout("attention_bwd", dropout_p, dropout_seed)


attention_bwd = _backward_op("attention_bwd", _attention_bwd_body, _check_attention_bwd)


@attention_bwd.register_fake
def _attention_bwd_fake(dout, q, k, v, bias, out, lse, scale, window_left, window_right, softcap,
                        causal, dropout_p, dropout_seed, backend, need_dbias):
    if need_dbias:
        B, Hq, Sq, _ = q.shape
        dbias = bias.new_empty((B, Hq, Sq, k.shape[2]))
    else:
        dbias = _empty(q)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dbias


def _attention_setup(ctx, inputs, output):
    q, k, v, bias, *params = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, bias, out, lse)
    # scale, window_left, window_right, softcap, causal, dropout_p, dropout_seed, backend
    ctx.params = params
    ctx.set_materialize_grads(False)  # dlse stays None unless lse is used


def _attention_backward(ctx, dout, dlse):
    q, k, v, bias, out, lse = ctx.saved_tensors
    scale, window_left, window_right, softcap, causal, dropout_p, dropout_seed, backend = ctx.params
    if torch.is_grad_enabled():  # create_graph: see _composite_grads
        visible = _band(q.shape[2], k.shape[2], window_left, window_right, q.device)
        factor = None if not dropout_p else _dropout_factor(
            (q.shape[0], q.shape[1], q.shape[2], k.shape[2]), dropout_p, dropout_seed, q)
        outs = _attention_math(q, k, v, bias, visible, scale, softcap, factor)
        return tuple(_composite_grads(outs, (dout, dlse), (q, k, v, bias))) + (None,) * 8
    need_dbias = bias is not None and ctx.needs_input_grad[3]
    if dout is None:
        dout = torch.zeros_like(out)
    bwd = _backward(ctx, attention_bwd)
    dq, dk, dv, dbias = bwd(dout, q, k, v, bias, out, lse, scale, window_left,
                            window_right, softcap, causal, dropout_p, dropout_seed,
                            backend, need_dbias)
    if dlse is not None:
        visible = _band(q.shape[2], k.shape[2], window_left, window_right, q.device)
        eq, ek, eb = _lse_grad(dlse, q, k, bias, lse, visible, scale, softcap)
        dq, dk = dq + eq.to(dq.dtype), dk + ek.to(dk.dtype)
        if need_dbias:
            dbias = dbias + eb.to(dbias.dtype)
    return (dq, dk, dv, (dbias if need_dbias else None)) + (None,) * 8


_register_autograd(attention_fwd, _attention_fwd_body, _attention_backward, _attention_setup)


# ----------------------------------------------------------------------------------------------
# Attention over packed sequences


def _check_cu_values(cu, total, max_len, side):
    """cu_seqlens values, checked where they are known (see _lengths_arg). Without max_seqlen
    the API has read and checked them already, to find the longest sequence: pass max_seqlen
    (as in FlashAttention) to read them from the device once."""
    longest = V.check_cu_seqlens_values(f"cu_seqlens_{side}", cu.detach().cpu().numpy(), total)
    if longest > max_len:
        raise ValueError(f"max_seqlen_{side}={max_len} is smaller than the longest sequence ({longest})")


def _attention_varlen_fwd_body(q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor, max_q: int,
                         max_k: int, scale: float, window_left: int, window_right: int,
                         softcap: float, causal: bool, dropout_p: float, dropout_seed: int,
                         backend: str) -> tuple[Tensor, Tensor]:
    """out (Tq, Hq, Dv), lse (Tq, Hq)."""
    _check_cu_values(cu_q, q.shape[0], max_q, "q")
    _check_cu_values(cu_k, k.shape[0], max_k, "k")
    p = _params(scale, window_left, window_right, softcap, causal, dropout_p, dropout_seed)
    (out, lse), outs = _run_backend(backend, "attention", "attention_varlen_fwd",
                                    _contig(q, k, v, cu_q, cu_k), (max_q, max_k, p), q.device)
    return outs.tensor(out, q.dtype), outs.tensor(lse, _acc_dtype(q.dtype))


attention_varlen_fwd = _checked_op("attention_varlen_fwd", _attention_varlen_fwd_body,
                                   _check_attention_varlen_fwd)


@attention_varlen_fwd.register_fake
def _attention_varlen_fwd_fake(q, k, v, cu_q, cu_k, max_q, max_k, scale, window_left, window_right,
                               softcap, causal, dropout_p, dropout_seed, backend):
    Tq, Hq, _ = q.shape
    return q.new_empty((Tq, Hq, v.shape[-1])), q.new_empty((Tq, Hq), dtype=_acc_dtype(q.dtype))


def _attention_varlen_bwd_body(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor,
                               cu_k: Tensor, max_q: int, max_k: int, out: Tensor, lse: Tensor,
                               scale: float, window_left: int, window_right: int, softcap: float,
                               causal: bool, dropout_p: float, dropout_seed: int,
                               backend: str) -> tuple[Tensor, Tensor, Tensor]:
    _check_varlen("attention_varlen_bwd", q, k, v, cu_q, cu_k)
    _check_grads_in("attention_varlen_bwd", dout, out, lse, q.shape[:2], v.shape[2])
    _check_dropout("attention_varlen_bwd", dropout_p, dropout_seed)
    p = _params(scale, window_left, window_right, softcap, causal, dropout_p, dropout_seed)
    tensors = _contig(dout, q, k, v, cu_q, cu_k)
    (dq, dk, dv), outs = _run_backend(backend, "attention", "attention_varlen_bwd", tensors,
                                      (max_q, max_k) + tuple(_to_backend(backend, t)
                                                             for t in _contig(out, lse)) + (p,),
                                      q.device)
    return outs.tensor(dq, q.dtype), outs.tensor(dk, k.dtype), outs.tensor(dv, v.dtype)


attention_varlen_bwd = _backward_op("attention_varlen_bwd", _attention_varlen_bwd_body)


@attention_varlen_bwd.register_fake
def _attention_varlen_bwd_fake(dout, q, k, v, cu_q, cu_k, max_q, max_k, out, lse, scale,
                               window_left, window_right, softcap, causal, dropout_p,
                               dropout_seed, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _varlen_visible(cu_q, cu_k, Tq, Tk, window_left, window_right):
    """(Tq, Tk) bool: same sequence and inside the band (positions counted within a sequence)."""
    rows = torch.arange(Tq, device=cu_q.device)
    cols = torch.arange(Tk, device=cu_k.device)
    seq_q = torch.searchsorted(cu_q.long(), rows, right=True) - 1
    seq_k = torch.searchsorted(cu_k.long(), cols, right=True) - 1
    lens_q, lens_k = (cu_q[1:] - cu_q[:-1]).long(), (cu_k[1:] - cu_k[:-1]).long()
    i = (rows - cu_q.long()[seq_q])[:, None]
    j = (cols - cu_k.long()[seq_k])[None, :]
    off = (lens_k[seq_q] - lens_q[seq_q])[:, None]
    visible = seq_q[:, None] == seq_k[None, :]
    if window_left >= 0:
        visible = visible & (j >= i + off - window_left)
    if window_right >= 0:
        visible = visible & (j <= i + off + window_right)
    return visible


def _attention_varlen_setup(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, *params = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, cu_q, cu_k, out, lse)
    ctx.sizes = (max_q, max_k)
    ctx.params = params
    ctx.set_materialize_grads(False)


def _varlen_dropout_factor(cu_q, cu_k, Hq, p, seed, like):
    """(1, Hq, Tq, Tk) dropout factors of packed sequences (block diagonal), for the composite."""
    cq, ck = cu_q.tolist(), cu_k.tolist()
    factor = like.new_zeros((1, Hq, cq[-1], ck[-1]))
    for n in range(len(cq) - 1):
        block = _dropout_factor((1, Hq, cq[n + 1] - cq[n], ck[n + 1] - ck[n]), p, seed, like, n)
        factor[:, :, cq[n]:cq[n + 1], ck[n]:ck[n + 1]] = block
    return factor


def _attention_varlen_backward(ctx, dout, dlse):
    q, k, v, cu_q, cu_k, out, lse = ctx.saved_tensors
    scale, window_left, window_right, softcap, causal, dropout_p, dropout_seed, backend = ctx.params
    if torch.is_grad_enabled():  # create_graph: one (Tq, Tk) problem masked block-diagonally
        visible = _varlen_visible(cu_q, cu_k, q.shape[0], k.shape[0], window_left, window_right)
        as4 = lambda t: t.transpose(0, 1)[None]  # noqa: E731 (T, H, X) -> (1, H, T, X)
        factor = None if not dropout_p else _varlen_dropout_factor(
            cu_q, cu_k, q.shape[1], dropout_p, dropout_seed, q)
        o4, l4 = _attention_math(as4(q), as4(k), as4(v), None, visible, scale, softcap, factor)
        outs = (o4[0].transpose(0, 1), l4[0].transpose(0, 1))
        return tuple(_composite_grads(outs, (dout, dlse), (q, k, v))) + (None,) * 12
    if dout is None:
        dout = torch.zeros_like(out)
    bwd = _backward(ctx, attention_varlen_bwd)
    dq, dk, dv = bwd(dout, q, k, v, cu_q, cu_k, *ctx.sizes, out, lse, scale,
                     window_left, window_right, softcap, causal, dropout_p,
                     dropout_seed, backend)
    if dlse is not None:
        # one "batch" whose (Tq, Tk) score matrix is masked to the block diagonal
        visible = _varlen_visible(cu_q, cu_k, q.shape[0], k.shape[0], window_left, window_right)
        as4 = lambda t: t.transpose(0, 1)[None]  # noqa: E731 (T, H, X) -> (1, H, T, X)
        eq, ek, _ = _lse_grad(dlse.transpose(0, 1)[None], as4(q), as4(k), None,
                              lse.transpose(0, 1)[None], visible, scale, softcap)
        dq = dq + eq[0].transpose(0, 1).to(dq.dtype)
        dk = dk + ek[0].transpose(0, 1).to(dk.dtype)
    return (dq, dk, dv) + (None,) * 12


_register_autograd(attention_varlen_fwd, _attention_varlen_fwd_body, _attention_varlen_backward,
                   _attention_varlen_setup)


# ----------------------------------------------------------------------------------------------
# Attention against a KV cache (inference: no autograd formula)


def _backend_cache(backend, t):
    """A cache as `backend` writes it in place: itself (or its NumPy view) when contiguous in a
    dtype the backend computes in, else a contiguous copy the caller writes back."""
    if backend == "triton":
        return t.contiguous()
    return np.ascontiguousarray(_to_backend(backend, t))


def _write_back(given, used):
    """Copy a backend's cache back into the user's tensor unless it was written in place."""
    if isinstance(used, np.ndarray):
        if given.dtype in (torch.float32, torch.float64) and given.is_contiguous() and \
                np.shares_memory(used, given.detach().numpy()):
            return
        used = torch.from_numpy(used)
    elif used is given:
        return
    with torch.no_grad():  # (rows other than the new ones round-trip exactly)
        given.copy_(used)


def _check_attention_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens, block_table,
                             *args, **kwargs):
    """Shapes as seqcore.kvcache checks them, and the index values (the Triton kernel trusts
    them: a block index out of range would read or write outside the cache)."""
    from seqcore import kvcache

    op = "attention_kvcache_fwd"
    if (k_new is None) != (v_new is None):
        _fail(op, "k_new and v_new are given together or not at all")
    try:
        B, *_, S_new = kvcache._check_shapes(q, k_cache, v_cache, k_new, v_new,
                                             block_table is not None)
    except ValueError as e:
        _fail(op, str(e))
    _alike(op, "q", q, [("k_cache", k_cache), ("v_cache", v_cache), ("k_new", k_new),
                        ("v_new", v_new)])
    _shape(op, "cache_seqlens", cache_seqlens, B)
    if block_table is not None:
        _shape(op, "block_table", block_table, B, None)
    _alike(op, "q", q, [("cache_seqlens", cache_seqlens), ("block_table", block_table)],
           dtypes=(torch.int32,))
    table = None if block_table is None else block_table.cpu().numpy().astype(np.int64)
    try:
        kvcache._check_positions(cache_seqlens.cpu().numpy().astype(np.int64), table,
                                 k_cache.shape[0], k_cache.shape[2], S_new)
    except ValueError as e:
        _fail(op, str(e))


def _attention_kvcache_body(q: Tensor, k_cache: Tensor, v_cache: Tensor, k_new: Optional[Tensor],
                            v_new: Optional[Tensor], cache_seqlens: Tensor,
                            block_table: Optional[Tensor], scale: float, window_left: int,
                            window_right: int, softcap: float, causal: bool,
                            backend: str) -> tuple[Tensor, Tensor]:
    """out (B, Hq, Sq, Dv) in q's dtype and lse (B, Hq, Sq); k_cache/v_cache written in place."""
    p = _params(scale, window_left, window_right, softcap, causal)
    caches = [_backend_cache(backend, c) for c in (k_cache, v_cache)]
    arrays = [_to_backend(backend, t) for t in _contig(q, k_new, v_new, cache_seqlens, block_table)]
    out, lse = getattr(_backends.module(backend, "attention"), "attention_kvcache_fwd")(
        arrays[0], caches[0], caches[1], arrays[1], arrays[2], arrays[3], arrays[4], p)
    for given, used in zip((k_cache, v_cache), caches):
        _write_back(given, used)
    outs = _Outputs(arrays + caches, q.device)
    return outs.tensor(out, q.dtype), outs.tensor(lse, _acc_dtype(q.dtype))


attention_kvcache_fwd = _checked_op("attention_kvcache_fwd", _attention_kvcache_body,
                                    _check_attention_kvcache, mutates_args=("k_cache", "v_cache"))


@attention_kvcache_fwd.register_fake
def _attention_kvcache_fake(q, k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, scale,
                            window_left, window_right, softcap, causal, backend):
    B, Hq, Sq, _ = q.shape
    return (q.new_empty((B, Hq, Sq, v_cache.shape[-1])),
            q.new_empty((B, Hq, Sq), dtype=_acc_dtype(q.dtype)))


# ----------------------------------------------------------------------------------------------
# LSTM


def _lengths_arg(backend, lengths, T):
    """lengths for the backend, its values checked here, where they are known (the API
    checks only shape and dtype of a lengths tensor: under torch.compile it cannot read it)."""
    if lengths is None:
        return None
    V.check_lengths_values(lengths.detach().cpu().numpy(), T)
    return _to_backend(backend, lengths.contiguous())


def _lstm_fwd_body(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, h0: Tensor,
             c0: Tensor, lengths: Optional[Tensor], reverse: bool, need_ws: bool,
             backend: str, w_hr: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y (T, B, P), h_n (B, P), c_n (B, H), ws): ws (T, B, 5H) for lstm_bwd when need_ws, else
    (0,); P = H, or the projection's size with w_hr (P, H)."""
    tensors = _contig(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    proj = {} if w_hr is None else {"w_hr": _to_backend(backend, w_hr.contiguous())}
    (y, h_n, c_n, ws), outs = _run_backend(
        backend, "recurrent", "lstm_fwd", tensors,
        (_lengths_arg(backend, lengths, x.shape[0]), reverse, need_ws), x.device, **proj)
    acc = _acc_dtype(x.dtype)
    ws = outs.tensor(ws, acc) if need_ws else _empty(x, acc)
    return outs.tensor(y, x.dtype), outs.tensor(h_n, x.dtype), outs.tensor(c_n, x.dtype), ws


lstm_fwd = _checked_op("lstm_fwd", _lstm_fwd_body, _check_lstm_fwd)


@lstm_fwd.register_fake
def _lstm_fwd_fake(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, need_ws, backend,
                   w_hr=None):
    T, B, _ = x.shape
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    acc = _acc_dtype(x.dtype)
    ws = x.new_empty((T, B, 5 * H), dtype=acc) if need_ws else _empty(x, acc)
    return x.new_empty((T, B, P)), x.new_empty((B, P)), x.new_empty((B, H)), ws


def _lstm_bwd_body(dy: Tensor, dh_n: Tensor, dc_n: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor,
                   b_ih: Tensor, b_hh: Tensor, h0: Tensor, c0: Tensor, lengths: Optional[Tensor],
                   reverse: bool, y: Tensor, ws: Tensor, backend: str, w_hr: Optional[Tensor] = None
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dw_hr): dw_hr (0,) without w_hr."""
    T, B, H, P = _check_rnn("lstm_bwd", 4, x, w_ih, w_hh, b_ih, b_hh, [("h0", h0), ("c0", c0)],
                            lengths, w_hr)
    _check_rnn_grads_in("lstm_bwd", T, B, H, dy, [("dh_n", dh_n), ("dc_n", dc_n)], y, ws, 5, P)
    tensors = _contig(dy, dh_n, dc_n, x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    extra = (_lengths_arg(backend, lengths, x.shape[0]), reverse) + tuple(
        _to_backend(backend, t) for t in _contig(y, ws))
    proj = {} if w_hr is None else {"w_hr": _to_backend(backend, w_hr.contiguous())}
    grads, outs = _run_backend(backend, "recurrent", "lstm_bwd", tensors, extra, x.device,
                               **proj)
    like = (x, w_ih, w_hh, b_ih, b_hh, h0, c0) + ((w_hr,) if w_hr is not None else ())
    grads = tuple(outs.tensor(g, t.dtype) for g, t in zip(grads, like))
    return grads if w_hr is not None else grads + (_empty(x),)


lstm_bwd = _backward_op("lstm_bwd", _lstm_bwd_body)


@lstm_bwd.register_fake
def _lstm_bwd_fake(dy, dh_n, dc_n, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, y, ws,
                   backend, w_hr=None):
    grads = tuple(torch.empty_like(t) for t in (x, w_ih, w_hh, b_ih, b_hh, h0, c0))
    return grads + (torch.empty_like(w_hr) if w_hr is not None else _empty(x),)


def _rnn_setup(ctx, inputs, output, n_params):
    """Save what the backward op needs; the RNN ops share this layout:
    inputs = (x, w_ih, w_hh, b_ih, b_hh, h0[, c0], lengths, reverse, need_ws, backend)."""
    tensors = inputs[:n_params]
    lengths, reverse, need_ws, backend = inputs[n_params:]
    y, ws = output[0], output[-1]
    ctx.save_for_backward(*tensors, lengths, y, ws)
    ctx.flags = (reverse, need_ws, backend)
    ctx.mark_non_differentiable(ws)
    ctx.set_materialize_grads(False)


def _zeros_if_none(grads, like):
    return [torch.zeros_like(t) if g is None else g.contiguous() for g, t in zip(grads, like)]


def _check_ws(need_ws, name):
    if not need_ws:
        raise RuntimeError(f"seqcore::{name}: backward without the forward's workspace "
                           "(the forward ran with need_ws=False: no input needed a gradient then)")


def _lstm_setup(ctx, inputs, output):
    # (x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, need_ws, backend[, w_hr]): the
    # shared layout once the projection is set aside
    ctx.w_hr = inputs[11] if len(inputs) > 11 else None
    _rnn_setup(ctx, inputs[:11], output, 7)


def _lstm_backward(ctx, dy, dh_n, dc_n, _dws):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, y, ws = ctx.saved_tensors
    reverse, need_ws, backend = ctx.flags
    w_hr = ctx.w_hr
    if torch.is_grad_enabled():  # create_graph: see _composite_grads
        inputs = (x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr)
        outs = _lstm_math(*inputs[:7], lengths, reverse, w_hr)
        grads = _composite_grads(outs, (dy, dh_n, dc_n), inputs)
        return tuple(grads[:7]) + (None,) * 4 + (grads[7],)
    _check_ws(need_ws, "lstm_fwd")
    dy, dh_n, dc_n = _zeros_if_none((dy, dh_n, dc_n), (y, h0, c0))
    bwd = _backward(ctx, lstm_bwd)
    grads = bwd(dy, dh_n, dc_n, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, y, ws,
                backend, w_hr)
    return tuple(grads[:7]) + (None,) * 4 + ((grads[7],) if w_hr is not None else (None,))


_register_autograd(lstm_fwd, _lstm_fwd_body, _lstm_backward, _lstm_setup)


# ----------------------------------------------------------------------------------------------
# GRU


def _gru_fwd_body(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, h0: Tensor,
            lengths: Optional[Tensor], reverse: bool, need_ws: bool,
            backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(y (T, B, H), h_n, ws): ws (T, B, 4H) for gru_bwd when need_ws, else (0,)."""
    tensors = _contig(x, w_ih, w_hh, b_ih, b_hh, h0)
    (y, h_n, ws), outs = _run_backend(
        backend, "recurrent", "gru_fwd", tensors,
        (_lengths_arg(backend, lengths, x.shape[0]), reverse, need_ws), x.device)
    acc = _acc_dtype(x.dtype)
    ws = outs.tensor(ws, acc) if need_ws else _empty(x, acc)
    return outs.tensor(y, x.dtype), outs.tensor(h_n, x.dtype), ws


gru_fwd = _checked_op("gru_fwd", _gru_fwd_body, _check_gru_fwd)


@gru_fwd.register_fake
def _gru_fwd_fake(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, need_ws, backend):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    acc = _acc_dtype(x.dtype)
    ws = x.new_empty((T, B, 4 * H), dtype=acc) if need_ws else _empty(x, acc)
    return x.new_empty((T, B, H)), x.new_empty((B, H)), ws


def _gru_bwd_body(dy: Tensor, dh_n: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
                  b_hh: Tensor, h0: Tensor, lengths: Optional[Tensor], reverse: bool, y: Tensor,
                  ws: Tensor,
                  backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0)."""
    T, B, H, _ = _check_rnn("gru_bwd", 3, x, w_ih, w_hh, b_ih, b_hh, [("h0", h0)], lengths)
    _check_rnn_grads_in("gru_bwd", T, B, H, dy, [("dh_n", dh_n)], y, ws, 4)
    tensors = _contig(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0)
    extra = (_lengths_arg(backend, lengths, x.shape[0]), reverse) + tuple(
        _to_backend(backend, t) for t in _contig(y, ws))
    grads, outs = _run_backend(backend, "recurrent", "gru_bwd", tensors, extra, x.device)
    like = (x, w_ih, w_hh, b_ih, b_hh, h0)
    return tuple(outs.tensor(g, t.dtype) for g, t in zip(grads, like))


gru_bwd = _backward_op("gru_bwd", _gru_bwd_body)


@gru_bwd.register_fake
def _gru_bwd_fake(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, y, ws, backend):
    return tuple(torch.empty_like(t) for t in (x, w_ih, w_hh, b_ih, b_hh, h0))


def _gru_setup(ctx, inputs, output):
    _rnn_setup(ctx, inputs, output, 6)


def _gru_backward(ctx, dy, dh_n, _dws):
    x, w_ih, w_hh, b_ih, b_hh, h0, lengths, y, ws = ctx.saved_tensors
    reverse, need_ws, backend = ctx.flags
    if torch.is_grad_enabled():  # create_graph: see _composite_grads
        inputs = (x, w_ih, w_hh, b_ih, b_hh, h0)
        outs = _gru_math(*inputs, lengths, reverse)
        return tuple(_composite_grads(outs, (dy, dh_n), inputs)) + (None,) * 4
    _check_ws(need_ws, "gru_fwd")
    dy, dh_n = _zeros_if_none((dy, dh_n), (y, h0))
    bwd = _backward(ctx, gru_bwd)
    grads = bwd(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, y, ws, backend)
    return tuple(grads) + (None, None, None, None)


_register_autograd(gru_fwd, _gru_fwd_body, _gru_backward, _gru_setup)


# ----------------------------------------------------------------------------------------------
# Elman RNN (tanh / relu): the GRU's layout of ops with one state, plus the nonlinearity


def _check_nonlinearity(op, nonlinearity):
    if nonlinearity not in ("tanh", "relu"):
        _fail(op, f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def _check_rnn_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, *args, **kwargs):
    _check_rnn("rnn_fwd", 1, x, w_ih, w_hh, b_ih, b_hh, [("h0", h0)], lengths)
    _check_nonlinearity("rnn_fwd", nonlinearity)


def _rnn_fwd_body(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, h0: Tensor,
                  lengths: Optional[Tensor], reverse: bool, nonlinearity: str, need_ws: bool,
                  backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(y (T, B, H), h_n, ws): ws (T, B, H) for rnn_bwd when need_ws, else (0,)."""
    tensors = _contig(x, w_ih, w_hh, b_ih, b_hh, h0)
    (y, h_n, ws), outs = _run_backend(
        backend, "recurrent", "rnn_fwd", tensors,
        (_lengths_arg(backend, lengths, x.shape[0]), reverse, nonlinearity, need_ws), x.device)
    acc = _acc_dtype(x.dtype)
    ws = outs.tensor(ws, acc) if need_ws else _empty(x, acc)
    return outs.tensor(y, x.dtype), outs.tensor(h_n, x.dtype), ws


rnn_fwd = _checked_op("rnn_fwd", _rnn_fwd_body, _check_rnn_fwd)


@rnn_fwd.register_fake
def _rnn_fwd_fake(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, need_ws,
                  backend):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    acc = _acc_dtype(x.dtype)
    ws = x.new_empty((T, B, H), dtype=acc) if need_ws else _empty(x, acc)
    return x.new_empty((T, B, H)), x.new_empty((B, H)), ws


def _rnn_bwd_body(dy: Tensor, dh_n: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
                  b_hh: Tensor, h0: Tensor, lengths: Optional[Tensor], reverse: bool,
                  nonlinearity: str, y: Tensor, ws: Tensor,
                  backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0)."""
    T, B, H, _ = _check_rnn("rnn_bwd", 1, x, w_ih, w_hh, b_ih, b_hh, [("h0", h0)], lengths)
    _check_nonlinearity("rnn_bwd", nonlinearity)
    _check_rnn_grads_in("rnn_bwd", T, B, H, dy, [("dh_n", dh_n)], y, ws, 1)
    tensors = _contig(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0)
    extra = (_lengths_arg(backend, lengths, x.shape[0]), reverse, nonlinearity) + tuple(
        _to_backend(backend, t) for t in _contig(y, ws))
    grads, outs = _run_backend(backend, "recurrent", "rnn_bwd", tensors, extra, x.device)
    like = (x, w_ih, w_hh, b_ih, b_hh, h0)
    return tuple(outs.tensor(g, t.dtype) for g, t in zip(grads, like))


rnn_bwd = _backward_op("rnn_bwd", _rnn_bwd_body)


@rnn_bwd.register_fake
def _rnn_bwd_fake(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, y,
                  ws, backend):
    return tuple(torch.empty_like(t) for t in (x, w_ih, w_hh, b_ih, b_hh, h0))


def _elman_setup(ctx, inputs, output):
    # (x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, need_ws, backend): the
    # shared layout once the nonlinearity is set aside
    ctx.nonlinearity = inputs[8]
    _rnn_setup(ctx, inputs[:8] + inputs[9:], output, 6)


def _elman_backward(ctx, dy, dh_n, _dws):
    x, w_ih, w_hh, b_ih, b_hh, h0, lengths, y, ws = ctx.saved_tensors
    reverse, need_ws, backend = ctx.flags
    if torch.is_grad_enabled():  # create_graph: see _composite_grads
        inputs = (x, w_ih, w_hh, b_ih, b_hh, h0)
        outs = _rnn_math("rnn_" + ctx.nonlinearity, x, w_ih, w_hh, b_ih, b_hh, (h0,),
                         lengths, reverse)
        return tuple(_composite_grads(outs, (dy, dh_n), inputs)) + (None,) * 5
    _check_ws(need_ws, "rnn_fwd")
    dy, dh_n = _zeros_if_none((dy, dh_n), (y, h0))
    bwd = _backward(ctx, rnn_bwd)
    grads = bwd(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, ctx.nonlinearity,
                y, ws, backend)
    return tuple(grads) + (None,) * 5


_register_autograd(rnn_fwd, _rnn_fwd_body, _elman_backward, _elman_setup)


# ----------------------------------------------------------------------------------------------
# Entry points called by seqcore/attention.py and seqcore/recurrent.py


def _needs_grad(*tensors):
    """Whether autograd will want a backward: only then does the forward keep a workspace."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _untraced(*tensors):
    """True when nothing traces a call (no torch.compile or export, no functorch transform) and
    its tensors are plain tensors: it may then skip the dispatcher (_op_for)."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    return all(t is None or type(t) is Tensor for t in tensors)


def _eager_inference(*tensors):
    """True when a call needs no autograd and nothing traces it: the op's body then runs
    directly. The dispatcher and autograd wrapping of a custom op cost ~100 us a call, more
    than a small kernel."""
    return _untraced(*tensors) and not _needs_grad(*tensors)


def _op_for(op, *tensors, grad=None):
    """What runs one call of forward op `op` on these tensors: its body when nothing traces the
    call and it needs no autograd, its eager autograd.Function (_register_autograd) when it
    needs gradients, else (torch.compile, export, functorch, tensor subclasses) the op.
    grad: _needs_grad(*tensors) when the caller has it already (None: computed here)."""
    if not _untraced(*tensors):
        return op
    body, with_grad = _EAGER[op]
    if grad is None:
        grad = _needs_grad(*tensors)
    return with_grad if grad else body


def attention(q4, k4, v4, bias4, p, backend):
    """(out (B, Hq, Sq, Dv), lse (B, Hq, Sq)) for the normalized problem p (an AttnParams)."""
    op = _op_for(attention_fwd, q4, k4, v4, bias4)
    return op(q4, k4, v4, bias4, p.scale, p.window_left, p.window_right, p.softcap, p.causal,
              p.dropout_p, p.dropout_seed, backend)


def attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, p, backend):
    """(out (Tq, Hq, Dv), lse (Tq, Hq)) over packed sequences."""
    op = _op_for(attention_varlen_fwd, q, k, v)
    return op(q, k, v, cu_q, cu_k, max_q, max_k, p.scale, p.window_left, p.window_right,
              p.softcap, p.causal, p.dropout_p, p.dropout_seed, backend)


def attention_kvcache(q, k_cache, v_cache, k_new, v_new, lens, table, p, backend):
    """(out, lse) against a KV cache; lens/table: the validated host copies of cache_seqlens
    and block_table (int64 NumPy), moved to q's device as int32."""
    seqlens = torch.as_tensor(lens, dtype=torch.int32).to(q.device)
    table = None if table is None else torch.as_tensor(table, dtype=torch.int32).to(q.device)
    op = _attention_kvcache_body if _eager_inference(q, k_cache, v_cache, k_new, v_new) \
        else attention_kvcache_fwd
    return op(q, k_cache, v_cache, k_new, v_new, seqlens, table, p.scale, p.window_left,
              p.window_right, p.softcap, p.causal, backend)


def lstm(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, backend, w_hr=None):
    """(y, h_n, c_n) for one LSTM layer; x is (T, B, I); w_hr: the projection, or None."""
    need_ws = _needs_grad(x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr)
    op = _op_for(lstm_fwd, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, grad=need_ws)
    y, h_n, c_n, _ = op(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, need_ws, backend,
                        w_hr)
    return y, h_n, c_n


def rnn(x, w_ih, w_hh, b_ih, b_hh, h0, nonlinearity, lengths, reverse, backend):
    """(y, h_n) for one Elman RNN layer; x is (T, B, I)."""
    need_ws = _needs_grad(x, w_ih, w_hh, b_ih, b_hh, h0)
    op = _op_for(rnn_fwd, x, w_ih, w_hh, b_ih, b_hh, h0, grad=need_ws)
    y, h_n, _ = op(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, need_ws,
                   backend)
    return y, h_n


def gru(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, backend):
    """(y, h_n) for one GRU layer; x is (T, B, I)."""
    need_ws = _needs_grad(x, w_ih, w_hh, b_ih, b_hh, h0)
    op = _op_for(gru_fwd, x, w_ih, w_hh, b_ih, b_hh, h0, grad=need_ws)
    y, h_n, _ = op(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, need_ws, backend)
    return y, h_n
