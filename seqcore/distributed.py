"""Sequence-parallel attention over torch.distributed: ring attention, forward and backward.

`ring_attention(q, k, v, group=...)` is self-attention over one long sequence that is cut into
W = group size shards along the sequence dim (dim 2); rank r holds its shard of q, k and v, and
gets back its shard of the output, exactly what `seqcore.attention` gives on the whole sequence
(causal, sliding window, softcap and GQA included).

Ring schedule (forward). Every rank keeps its queries. The K/V shards travel around the ring:
at step s rank r holds the K/V that started on rank (r - s) mod W. Before computing on that
block it posts the transfer of the block to rank r + 1 (and the receive of the next one from
rank r - 1), one `batch_isend_irecv`; it waits for it only after the block's kernels ran, so
the transfer overlaps compute. Each block gives a partial (out, lse) over its keys; they are
combined as `seqcore.merge_attention` does (softmax weights exp(lse_b - lse_new)), into a
running out and lse kept in float32 (float64 for float64 inputs).

Which keys a query sees is decided on global positions: a block is cut into pieces (one query
chunk against one key chunk); a piece nobody sees is skipped, one fully seen runs unmasked,
and one the band cuts through runs with the band shifted into the piece's own coordinates
(the kernels' bottom-right window, see seqcore/_problem.py), after trimming rows and columns
that see nothing so that the shifted window is non-negative. With a sliding window, ring steps
that no rank needs are not run at all.

Layouts. "contiguous": rank r holds positions [r S, (r + 1) S), S = S_local. Under a causal
mask rank 0 then sees one block and rank W - 1 all W: ranks wait on each other. "zigzag"
(for causal): the sequence is cut into 2W chunks of S / 2 and rank r holds chunks r and
2W - 1 - r, one early and one late, so every rank does the same work: its own block is one
causal call (local order is global order), a block from an earlier rank is all queries
against that rank's first chunk, a block from a later rank is this rank's second chunk
against all of it. `shard`, `unshard` and `shard_positions` build and read these layouts
(positions are what rotary embeddings need).

Backward (FlashAttention-2 style). The forward saves the local q, k, v and the merged out and
lse. The kernels' backward recomputes P = exp(S - lse) and uses delta = rowsum(dout * out);
given the global out and lse, the gradients of one key block are exactly that block's share
of the full gradient, so they add up. The backward runs the same ring: dq accumulates locally;
the dk/dv of a visiting block are accumulated into a buffer that follows the block around the
ring (received from rank r - 1 while this rank computes, sent on to rank r + 1 after), so after
the last step each rank's dk/dv come home, with one last hop.

Communication is torch.distributed point-to-point only (NCCL on GPUs, gloo on CPUs; any
backend with isend/irecv). Every rank of the group must call with the same shapes, options and
layout (as for any collective).

Not supported: attention bias, variable-length (packed) sequences, a gradient through lse
(lse is not returned), double backward, cross-attention (q and k must be sharded alike).
"""
import functools
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from seqcore import _arrays, _backends
from seqcore import _torch as _ops
from seqcore.attention import MAX_HEAD_DIM, _check_options

LAYOUTS = ("contiguous", "zigzag")

_TAG_KV, _TAG_DKV = 0, 1  # distinct tags: a K/V and a dK/dV transfer may share a pair of ranks

__all__ = ["ring_attention", "shard", "unshard", "shard_positions", "LAYOUTS"]


# ----------------------------------------------------------------------------------------------
# Layouts: which global positions a rank holds


@dataclass(frozen=True)
class _Chunk:
    start: int   # global position of the chunk's first token
    offset: int  # where it starts in the rank's local shard
    length: int


def _check_layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _chunks(layout, rank, world_size, s_local):
    """The chunks of the global sequence that `rank` holds, in local order."""
    if layout == "contiguous":
        return (_Chunk(rank * s_local, 0, s_local),)
    half = s_local // 2
    return (_Chunk(rank * half, 0, half), _Chunk((2 * world_size - 1 - rank) * half, half, half))


def _check_split(seq_len, world_size, layout):
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    parts = world_size * (2 if layout == "zigzag" else 1)
    if seq_len % parts:
        raise ValueError(f"a sequence of {seq_len} tokens does not split into {parts} equal "
                         f"chunks (layout {layout!r}, world_size {world_size})")
    return seq_len // world_size


def _check_rank(rank, world_size):
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")


def shard_positions(rank, world_size, seq_len, layout="contiguous", device=None):
    """Global positions (int64, (seq_len // world_size,)) of the tokens `rank` holds."""
    _check_layout(layout)
    s_local = _check_split(seq_len, world_size, layout)
    _check_rank(rank, world_size)
    return torch.cat([torch.arange(c.start, c.start + c.length, device=device)
                      for c in _chunks(layout, rank, world_size, s_local)])


def shard(x, rank, world_size, layout="contiguous", dim=2):
    """Rank `rank`'s shard of x, a full sequence along `dim` (a view for "contiguous")."""
    _check_layout(layout)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    s_local = _check_split(x.shape[dim], world_size, layout)
    _check_rank(rank, world_size)
    pieces = [x.narrow(dim, c.start, c.length) for c in _chunks(layout, rank, world_size, s_local)]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim)


def unshard(shards, layout="contiguous", dim=2):
    """The full sequence from every rank's shard (a list in rank order): undoes `shard`."""
    _check_layout(layout)
    shards = list(shards)
    if not shards or not all(isinstance(s, torch.Tensor) for s in shards):
        raise TypeError("shards must be a non-empty sequence of torch.Tensors, one per rank")
    s_local = shards[0].shape[dim]
    if any(s.shape != shards[0].shape for s in shards):
        raise ValueError(f"shards must share one shape, got {[tuple(s.shape) for s in shards]}")
    world_size = len(shards)
    if layout == "contiguous":
        return torch.cat(shards, dim)
    _check_split(s_local * world_size, world_size, layout)
    half = s_local // 2
    firsts = [s.narrow(dim, 0, half) for s in shards]
    seconds = [s.narrow(dim, half, half) for s in reversed(shards)]  # chunk 2W-1-r is late
    return torch.cat(firsts + seconds, dim)


# ----------------------------------------------------------------------------------------------
# Plans: which kernel calls one ring step makes
#
# Global band: key position pk is visible to query position pq iff -left <= pk - pq <= right
# (a side -1 is unbounded; causal is right = 0), as seqcore.attention on the full sequence,
# where Sq == Sk makes bottom-right and top-left alignment the same.


@dataclass(frozen=True)
class _Piece:
    """One kernel call: local query rows [q0, q1) against key rows [k0, k1) of the visiting
    block, with the band as the kernels take it (bottom-right aligned on this piece)."""
    q0: int
    q1: int
    k0: int
    k1: int
    left: int
    right: int

    @property
    def unmasked(self):
        return self.left < 0 and self.right < 0


def _band_piece(q, k, left, right):
    """The piece of query chunk q against key chunk k, or None when no query sees a key.

    In chunk coordinates (row i, column j) the band is lo <= j - i <= hi. Rows and columns
    that see nothing are trimmed first: then the band, re-expressed relative to the piece's
    own offset Sk - Sq, has non-negative sides, which is what the kernels take.
    """
    n, m = q.length, k.length
    shift = q.start - k.start
    lo = -math.inf if left < 0 else shift - left
    hi = math.inf if right < 0 else shift + right
    r0, r1 = max(0, -hi), min(n, m - lo)          # rows that see some key
    c0, c1 = max(0, lo), min(m, n + hi)           # keys some row sees
    if r0 >= r1 or c0 >= c1:
        return None
    r0, r1, c0, c1 = int(r0), int(r1), int(c0), int(c1)
    n, m = r1 - r0, c1 - c0
    lo, hi = lo - c0 + r0, hi - c0 + r0            # the band in trimmed coordinates
    off = m - n
    # a side that reaches past every (i, j) of the piece is unbounded (-1)
    new_left = -1 if lo <= -(n - 1) else int(off - lo)
    new_right = -1 if hi >= m - 1 else int(hi - off)
    return _Piece(q.offset + r0, q.offset + r1, k.offset + c0, k.offset + c1, new_left, new_right)


def _merge_unmasked(pieces):
    """One call instead of several when unmasked pieces tile a rectangle (they are disjoint,
    so equal total and bounding areas mean they tile it): zigzag's off-diagonal steps."""
    if len(pieces) < 2 or not all(p.unmasked for p in pieces):
        return pieces
    q0, q1 = min(p.q0 for p in pieces), max(p.q1 for p in pieces)
    k0, k1 = min(p.k0 for p in pieces), max(p.k1 for p in pieces)
    area = sum((p.q1 - p.q0) * (p.k1 - p.k0) for p in pieces)
    if area != (q1 - q0) * (k1 - k0):
        return pieces
    return [_Piece(q0, q1, k0, k1, -1, -1)]


@functools.lru_cache(maxsize=4096)
def _plan(layout, world_size, rank, source, s_local, left, right):
    """The pieces (a tuple) rank `rank` computes against the K/V block of rank `source`."""
    if left < 0 and right < 0:
        return (_Piece(0, s_local, 0, s_local, -1, -1),)
    if source == rank and left < 0 and right == 0:
        # the rank's own block under a causal mask: local order is global order, so one
        # causal call is exact, whatever the layout (zigzag's gap between chunks included)
        return (_Piece(0, s_local, 0, s_local, -1, 0),)
    q_chunks = _chunks(layout, rank, world_size, s_local)
    k_chunks = _chunks(layout, source, world_size, s_local)
    pieces = [p for qc in q_chunks for kc in k_chunks
              if (p := _band_piece(qc, kc, left, right)) is not None]
    return tuple(_merge_unmasked(pieces))


@functools.lru_cache(maxsize=256)
def _ring_steps(layout, world_size, s_local, left, right):
    """How many ring steps any rank needs: fewer than W only under a sliding window."""
    if left < 0 and right < 0:
        return world_size
    for steps in range(world_size, 0, -1):
        step = steps - 1
        if any(_plan(layout, world_size, r, (r - step) % world_size, s_local, left, right)
               for r in range(world_size)):
            return steps
    return 1


# ----------------------------------------------------------------------------------------------
# The ring: torch.distributed point-to-point transfers between neighbours


class _Transfer:
    """A posted send/receive pair; wait() gives the received tensor."""

    def __init__(self, sent, received, works):
        # the sent tensor is held until the transfer is done: the caller may drop its name
        self.sent, self.received, self.works = sent, received, works

    def wait(self):
        for work in self.works:
            work.wait()
        return self.received


class _Ring:
    def __init__(self, group):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def _global(self, group_rank):
        # P2POp takes global ranks; in a subgroup they differ from the group's ranks
        return group_rank if self.group is None else dist.get_global_rank(self.group, group_rank)

    def shift(self, tensor, by, tag):
        """Post sending `tensor` to the rank `by` places ahead and receiving a tensor like it
        from the rank `by` places behind; the transfer runs while the caller computes."""
        received = torch.empty_like(tensor)
        ops = [dist.P2POp(dist.isend, tensor, self._global((self.rank + by) % self.size),
                          self.group, tag),
               dist.P2POp(dist.irecv, received, self._global((self.rank - by) % self.size),
                          self.group, tag)]
        return _Transfer(tensor, received, dist.batch_isend_irecv(ops))


# ----------------------------------------------------------------------------------------------
# Forward and backward


@dataclass(frozen=True)
class _Config:
    ring: _Ring
    layout: str
    scale: float
    left: int
    right: int
    softcap: float
    backend: str
    steps: int

    def pieces(self, step, s_local):
        source = (self.ring.rank - step) % self.ring.size
        return _plan(self.layout, self.ring.size, self.ring.rank, source, s_local, self.left,
                     self.right)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pack(a, b):
    """a and b in one flat buffer: one message per transfer instead of two."""
    return torch.cat([a.reshape(-1), b.reshape(-1)])


def _unpack(buf, shape_a, shape_b):
    n = math.prod(shape_a)
    return buf[:n].view(shape_a), buf[n:].view(shape_b)


def _rows(t, a, b):
    return t[:, :, a:b]


def _merge_into(out, lse, out_b, lse_b):
    """out, lse <- merge((out, lse), (out_b, lse_b)), in place (views of the running result):
    merge_attention's math in the accumulation dtype; rows neither side saw stay 0, -inf."""
    lse_b = lse_b.to(lse.dtype)
    m = torch.maximum(lse, lse_b)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    w, w_b = torch.exp(lse - m), torch.exp(lse_b - m)
    total = w + w_b
    lse.copy_(m + torch.log(total))  # log(0) = -inf: still unseen
    denom = torch.where(total > 0, total, torch.ones_like(total))
    out.mul_((w / denom)[..., None]).add_(out_b.to(out.dtype) * (w_b / denom)[..., None])


def _ring_forward(q, k, v, cfg):
    """(out in q's dtype, lse in the accumulation dtype) of this rank's queries."""
    acc = _acc_dtype(q.dtype)
    B, Hq, S, _ = q.shape
    out = torch.zeros((B, Hq, S, v.shape[-1]), dtype=acc, device=q.device)
    lse = torch.full((B, Hq, S), -math.inf, dtype=acc, device=q.device)
    kv = _pack(k, v)
    # as seqcore.attention does: the op's body directly when nothing traces the call (the
    # dispatcher costs more than a small kernel, and its first call imports torch._dynamo)
    fwd = _ops._attention_fwd_body if _ops._eager_inference(q, k, v) else _ops.attention_fwd
    for step in range(cfg.steps):
        # post the next block's transfer first: it runs while this block is computed
        nxt = cfg.ring.shift(kv, 1, _TAG_KV) if step + 1 < cfg.steps else None
        k_blk, v_blk = _unpack(kv, k.shape, v.shape)
        for p in cfg.pieces(step, S):
            out_b, lse_b = fwd(
                _rows(q, p.q0, p.q1), _rows(k_blk, p.k0, p.k1), _rows(v_blk, p.k0, p.k1), None,
                cfg.scale, p.left, p.right, cfg.softcap, False, 0.0, 0, cfg.backend)
            _merge_into(_rows(out, p.q0, p.q1), _rows(lse, p.q0, p.q1), out_b, lse_b)
        if nxt is not None:
            kv = nxt.wait()
    return out.to(q.dtype), lse


def _ring_backward(dout, q, k, v, out, lse, cfg):
    """(dq, dk, dv) of this rank's shard."""
    acc = _acc_dtype(q.dtype)
    S = q.shape[2]
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    kv = _pack(k, v)
    upstream = None  # the dk/dv that earlier ranks accumulated for the block visiting next
    for step in range(cfg.steps):
        nxt = cfg.ring.shift(kv, 1, _TAG_KV) if step + 1 < cfg.steps else None
        k_blk, v_blk = _unpack(kv, k.shape, v.shape)
        dkv = torch.zeros(k.numel() + v.numel(), dtype=acc, device=q.device)
        dk_blk, dv_blk = _unpack(dkv, k.shape, v.shape)
        for p in cfg.pieces(step, S):
            # P is recomputed from the global lse and delta from the global out: this
            # piece's gradients are its exact share of the full ones
            dq_b, dk_b, dv_b, _ = _ops.attention_bwd(
                _rows(dout, p.q0, p.q1), _rows(q, p.q0, p.q1), _rows(k_blk, p.k0, p.k1),
                _rows(v_blk, p.k0, p.k1), None, _rows(out, p.q0, p.q1), _rows(lse, p.q0, p.q1),
                cfg.scale, p.left, p.right, cfg.softcap, False, 0.0, 0, cfg.backend, False)
            _rows(dq, p.q0, p.q1).add_(dq_b)
            _rows(dk_blk, p.k0, p.k1).add_(dk_b)
            _rows(dv_blk, p.k0, p.k1).add_(dv_b)
        if upstream is not None:
            dkv += upstream.wait()
        if step + 1 < cfg.steps:
            upstream = cfg.ring.shift(dkv, 1, _TAG_DKV)
        elif step > 0:
            # last step: this block's dk/dv are complete; send them home (rank - step, the
            # next rank when all W steps ran) and receive this rank's own from rank + step
            dkv = cfg.ring.shift(dkv, -step, _TAG_DKV).wait()
        if nxt is not None:
            kv = nxt.wait()
    dk, dv = _unpack(dkv, k.shape, v.shape)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cfg):
        out, lse = _ring_forward(q, k, v, cfg)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.cfg = cfg
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _ring_backward(dout.contiguous(), q, k, v, out, lse, ctx.cfg)
        return dq, dk, dv, None


# ----------------------------------------------------------------------------------------------
# The public entry point


def _check_tensors(q, k, v):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"{name} must be (B, heads, S_local, dim), got shape {tuple(x.shape)}")
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.dtype.is_floating_point:
        raise TypeError(f"q, k, v must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, Hq, S, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"q, k, v must share the batch dim: {shapes}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must share heads and sequence length: {shapes}")
    if k.shape[2] != S:
        raise ValueError(f"q, k, v must be shards of one sequence (same S_local): {shapes}")
    if k.shape[3] != D:
        raise ValueError(f"q and k must share the head dim D: {shapes}")
    if k.shape[1] == 0 or Hq % k.shape[1]:
        raise ValueError(f"query heads Hq={Hq} must be a multiple of kv heads "
                         f"Hkv={k.shape[1]}: {shapes}")
    for what, d in (("D (q/k last dim)", D), ("Dv (v last dim)", v.shape[3])):
        if not 1 <= d <= MAX_HEAD_DIM:
            raise ValueError(f"head dim {what} must be in [1, {MAX_HEAD_DIM}], got {d}")
    if S == 0:
        raise ValueError(f"the local shard is empty: {shapes}")


def _ring_of(group):
    if not dist.is_available():
        raise RuntimeError("ring_attention needs torch.distributed, which this torch build lacks")
    if not dist.is_initialized():
        raise RuntimeError("ring_attention needs torch.distributed.init_process_group() first")
    ring = _Ring(group)
    if ring.rank < 0:
        raise ValueError("this process is not a member of `group`")
    return ring


def ring_attention(q, k, v, *, group=None, causal=False, scale=None, window=None, softcap=None,
                   layout="contiguous", backend=None):
    """Self-attention over a sequence sharded along dim 2 across the ranks of `group`.

    q (B, Hq, S_local, D), k (B, Hkv, S_local, D), v (B, Hkv, S_local, Dv): torch tensors,
    this rank's shard (see `shard`); Hq a multiple of Hkv (GQA). Returns this rank's shard
    (B, Hq, S_local, Dv) of `seqcore.attention(q, k, v, causal=..., ...)` on the full
    sequence, differentiable in q, k and v.

    group: a torch.distributed process group (None: the default group); every member calls
    with the same shapes and options. layout: "contiguous" (rank r holds the r-th of W equal
    parts) or "zigzag" (2W chunks, rank r holds chunks r and 2W-1-r; S_local must be even;
    balances causal work). causal, scale, softcap, backend: as in seqcore.attention. window:
    (left, right), a sliding window on global positions as in seqcore.attention (supported:
    each block gets the band shifted to its offsets; ring steps no rank needs are skipped).
    Bad input raises ValueError/TypeError before any communication.
    """
    _check_tensors(q, k, v)
    _check_layout(layout)
    S = q.shape[2]
    if layout == "zigzag" and S % 2:
        raise ValueError(f"layout 'zigzag' needs an even S_local (two chunks), got {S}")
    p = _check_options(q.shape[3], causal, scale, window, softcap, False)
    backend = _backends.pick(_arrays.TORCH, q.device.type, backend)
    _backends.check_dtype("q", q, backend)
    ring = _ring_of(group)
    steps = _ring_steps(layout, ring.size, S, p.window_left, p.window_right)
    cfg = _Config(ring, layout, p.scale, p.window_left, p.window_right, p.softcap, backend, steps)
    return _RingAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), cfg)
