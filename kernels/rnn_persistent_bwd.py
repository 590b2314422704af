"""Persistent recurrent backward through time, one launch for all T steps, for every cell of
kernels/rnn_cells.py (CELL a tl.constexpr) without the LSTM projection.

The per-step backward (kernels/rnn_bwd.py) takes one launch of rnn_bwd_step_kernel per step
plus a FINAL one; this kernel runs the same steps s = T-1 .. 0 and the final dh0 in ONE launch
of co-resident programs with a grid-wide barrier per step (kernels/rnn_persistent.grid_barrier).
Program p owns UNITS hidden units j in [p*UNITS, (p+1)*UNITS) and the whole batch (BLOCK_B =
next_pow2(B) rows, at least 16). Its step is the per-step kernel's PHASE 0:
  1. dh[b, j] = carry[b, j] + sum_k dGh_{s+1}[b, k] * w_hh[k, j]: the sum runs over all G*H
     gate columns k, so the program needs w_hh[:, j-slice], (G*H, UNITS). It loads that slice
     once, before the time loop, as a tuple of NCHUNK (CHUNK_K, UNITS) tiles along k (a
     register tensor cannot be indexed by a runtime chunk; the compiled sm_90 kernel keeps
     them in shared memory: in w_hh's dtype for float16/bfloat16, as float32 otherwise); each
     step it reads dGh_{s+1} (all G*H columns, all
     batch rows at their own time index, written by every program at the previous step) from
     the global dGh buffer after the barrier, chunk by chunk;
  2. the cell's pointwise backward (kernels/rnn_bwd.cell_step_backward, the per-step kernel's
     own code) writes dGx_s / dGh_s and h_prev for the weight-gradient matmuls.
carry (dh) and dc (the LSTM's dc) are the program's own elements: they stay in registers for
all steps and go to memory once, at the end (dc, and dh0 = carry + dGh_0 @ w_hh after the last
barrier). No buffer needs a second half: step s writes dGh at each row's time t_s, and the next
step reads t_{s+1}, a different row of the (T, B, G*H) buffer.

The math: for float32 w_hh the per-step kernel's, float32 dGh times w_hh converted to float32
(exact), float32 accumulation with the same dot precision (dot_precision); only the
K-chunking of the sum differs (rounding-level differences). For float16/bfloat16 w_hh the
slice stays in w_hh's dtype (half the bytes on chip: what lets the LSTM reach H = 1024) and
each dGh chunk is rounded to that dtype for a tensor-core dot with float32 accumulation, where
the per-step kernel multiplies float32 dGh by the exactly converted w_hh. The one extra
rounding is of dGh, relative 2^-11 (float16) or 2^-8 (bfloat16) per element, on the term
through w_hh only (dy, the carried dh/dc and all pointwise math stay float32). That is the
rounding the half-precision forward already applies to h before its dot, and a fraction of
the gradient tolerances the tests hold half-precision RNN gradients to (tests/conftest.py
GRAD_TOLERANCES: float16 1e-2, bfloat16 6e-2, against the per-step path and the float64
reference; the inputs, weights and y are themselves stored in that dtype).

Blocking: UNITS = next_pow2(ceil(H / n_programs_max)), at least 16 (tl.dot needs N >= 16), so
the grid ceil(H / UNITS) never exceeds the co-resident programs (one per SM on a GPU: programs
that are not co-resident would deadlock at the barrier). On 132 SMs that is 16 units for
H <= 2048, i.e. 16 programs at H = 256, 32 at H = 512, 64 at H = 1024. CHUNK_K = 128 at
BLOCK_B = 16 for float32, 256 for float16/bfloat16. fits_on_chip bounds what one program
holds (the MAX_* limits below, checked by compiling for sm_90): on an H100/H200 B <= 16 and
G*H <= 4096 for float16/bfloat16 w_hh, i.e. the LSTM up to H = 1024, the GRU up to H = 1365,
the Elman cell up to H = 2112 (132 programs); G*H <= 2048 for float32, i.e. the LSTM up to
H = 512, the GRU up to H = 682, the Elman cell up to H = 2048. When it does not fit, and for
the LSTM with a projection (w_hr: two phases per step), the launcher falls back to the
per-step kernel. Under TRITON_INTERPRET=1 programs run one after another, so only the ONE-program
configuration can run (max_programs = 1 there): the barrier with nprog = 1 passes at once.
"""
import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from seqcore.kernels import rnn_bwd
from seqcore.kernels.rnn_bwd import cell_step_backward, prev_rows, store_slot
from seqcore.kernels.rnn_cell import (NUM_WARPS, dot_precision, load_other_states, select,
                                      step_rows, store_other_states)
from seqcore.kernels.rnn_cells import CELLS, load_slot, num_gates, num_states
from seqcore.kernels.rnn_persistent import grid_barrier, max_programs, pow2_floor

# Limits of what one program holds, checked by compiling the configs the launcher picks on
# 132 SMs for sm_90 (sm90_configs(); Triton 3.6 + ptxas, 8 warps): no spills, shared memory
# well under the 227 KB per block. The compiled kernel keeps the slice in shared memory, in
# w_hh's dtype for float16/bfloat16 (mma.sync dots), as float32 otherwise (the conversion for
# the float32 dot is hoisted out of the time loop), so its size is counted in those bytes.
# float32: the dots are FMA ("ieee"): each thread holds a whole K-chunk of its dGh row and
# w_hh column, so CHUNK_K is what bounds registers (at 512 the LSTM spills ~500 B; at 128 it
# takes 112 registers). Measured at the largest picked tiles (B = 16; LSTM H = 512, GRU
# H = 672, Elman H = 2048; 16 chunks of 128, with and without lengths + reverse): 104-128
# registers, no spills, 136 KB shared (the 128 KB slice); SEQCORE_TF32=1 (mma dots) up to 166
# registers; the interpreter's one-program LSTM/GRU tile (64 units) 243-255 registers, no
# spills.
# float16/bfloat16 (bf16 and fp16 measured alike): LSTM B = 16, H = 1024 (16 chunks of 256,
# 128 KB slice): 210-214 registers, 144 KB shared; B = 1: 206; GRU H = 1024 (12 chunks) 168,
# 112 KB; GRU H = 1360 (16 chunks) 166-176, 144 KB; Elman H = 2112 (9 chunks) 154-162, 88 KB;
# no spills. What spilled (so is not picked): 512-wide chunks at B = 16 (LSTM H = 1024, 8
# chunks: 288 B), 128-wide ones (32 chunks: 80 B), more than 16 chunks, and every BLOCK_B of
# 32 or 64 tried (LSTM B = 32 H = 512 112 B, B = 64 H = 256 1000 B, Elman B = 64 H = 1024
# 544 B, LSTM B = 64 H = 1024 8 KB: 255 registers each; at 16 warps, capped at 128
# registers, B = 32 H = 512 136 B, B = 64 H = 256 1.7 KB): B > 16 takes the per-step kernel.
MAX_BATCH_BLOCK = 16           # BLOCK_B: the whole batch is one tile
MAX_ACC = 1024                 # BLOCK_B * UNITS: the dh tile (and each state/gate tile)
MAX_A_CHUNK = 2048             # BLOCK_B * CHUNK_K: the dGh chunk read per dot, float32 w_hh
MAX_A_CHUNK_HALF = 4096        # the same for float16/bfloat16 w_hh (mma dots)
MAX_W_CHUNK = 8192             # CHUNK_K * UNITS: one weight chunk
MAX_CHUNKS = 16                # NCHUNK: the K loop is unrolled
MAX_WEIGHT_BYTES = 128 * 1024  # K_PAD * UNITS * elem_bytes: the slice kept on chip


def a_chunk_limit(elem_bytes):
    """MAX_A_CHUNK for w_hh's element size: float32 FMA dots or half-precision mma dots."""
    return MAX_A_CHUNK if elem_bytes >= 4 else MAX_A_CHUNK_HALF


class Blocks(NamedTuple):
    """The persistent backward's blocking of a (B, H) problem with G gates."""
    block_b: int     # batch rows of the tile: all of B, padded to a power of two (>= 16)
    units: int       # hidden units j per program (the dh columns it finishes)
    chunk_k: int     # gate columns k (w_hh rows of the slice) per dot
    n_chunks: int    # K-chunks covering the G*H gate columns
    n_programs: int  # the grid: ceil(H / units), never above n_programs_max
    num_warps: int


def persistent_bwd_blocks(B, H, G, n_programs_max, elem_bytes=4):
    """Blocks for the persistent backward: the fewest units per program that keep the grid
    within n_programs_max, then K-chunks as wide as the dGh and weight chunk limits of w_hh's
    element size (elem_bytes) allow."""
    max_a_chunk = a_chunk_limit(elem_bytes)
    units = max(16, triton.next_power_of_2(triton.cdiv(H, max(n_programs_max, 1))))
    block_b = max(16, triton.next_power_of_2(B))
    chunk_k = min(triton.next_power_of_2(G * H), pow2_floor(max_a_chunk // block_b),
                  pow2_floor(MAX_W_CHUNK // units))
    chunk_k = max(16, chunk_k)  # tl.dot needs K >= 16
    # the Elman cell's half-precision slice at 8 warps: ptxas held it to 128 registers and
    # spilled 4-24 B at H <= 1024 (1-4 chunks of 256; sm90-report-rnn-2026-12-03); at 4 warps
    # 70-235 registers, no spills, B 1/8/16, H 256-2048, with and without lengths + reverse
    num_warps = 4 if G == 1 and elem_bytes < 4 else NUM_WARPS
    return Blocks(block_b, units, chunk_k, triton.cdiv(G * H, chunk_k), triton.cdiv(H, units),
                  num_warps)


def fits_on_chip(B, H, G, n_programs_max, elem_bytes=4):
    """Whether the persistent backward's blocking stays within the limits that compiled without
    spills (MAX_*); elem_bytes: w_hh's element size (a float16/bfloat16 slice is held in its
    own dtype, anything else in float32)."""
    blocks = persistent_bwd_blocks(B, H, G, n_programs_max, elem_bytes)
    max_a_chunk = a_chunk_limit(elem_bytes)
    weight_bytes = blocks.n_chunks * blocks.chunk_k * blocks.units * min(elem_bytes, 4)
    return (B > 0 and blocks.block_b <= MAX_BATCH_BLOCK
            and blocks.block_b * blocks.units <= MAX_ACC
            and blocks.block_b * blocks.chunk_k <= max_a_chunk
            and blocks.chunk_k * blocks.units <= MAX_W_CHUNK
            and blocks.n_chunks <= MAX_CHUNKS and weight_bytes <= MAX_WEIGHT_BYTES
            and blocks.n_programs <= max(n_programs_max, 1))


def runs_persistent(B, H, G, device, has_proj=False, elem_bytes=4):
    """Whether backward_persistent runs the persistent kernel (not the per-step fallback) on
    `device`; has_proj: an LSTM with a projection (always the per-step kernel); elem_bytes:
    w_hh's element size."""
    return not has_proj and fits_on_chip(B, H, G, max_programs(device), elem_bytes)


@triton.constexpr_function
def half_dot(dtype):
    """Whether a w_hh of this dtype is kept and dotted in its own dtype (float16/bfloat16, on
    tensor cores), not in float32."""
    return dtype == tl.float16 or dtype == tl.bfloat16


@triton.jit
def weight_slice(w_ptr, offs_h, GH, H, CHUNK_K: tl.constexpr, NCHUNK: tl.constexpr):
    """w_hh[:, offs_h] (w_hh (G*H, H)) as NCHUNK (CHUNK_K, UNITS) tiles along the gate
    columns k, in w_hh's dtype; zero past G*H and H."""
    w = ()
    for c in tl.static_range(NCHUNK):
        offs_k = c * CHUNK_K + tl.arange(0, CHUNK_K)
        w = w + (tl.load(w_ptr + offs_k[:, None].to(tl.int64) * H + offs_h[None, :],
                         mask=(offs_k[:, None] < GH) & (offs_h[None, :] < H), other=0.0),)
    return w


@triton.jit
def through_w_hh(dgh_ptr, w, step, len_ptr, offs_b, B, T, GH, HAS_LENGTHS: tl.constexpr,
                 REVERSE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                 UNITS: tl.constexpr, CHUNK_K: tl.constexpr):
    """dGh_{step+1}[b, :] @ w_hh[:, units]: what step+1 sends into this step's h (zero where
    step+1 was inactive for the row), with the on-chip slice w (weight_slice)."""
    NCHUNK: tl.constexpr = len(w)
    next_active, t_next = step_rows(step + 1, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
    offs_k = tl.arange(0, CHUNK_K)
    a_ptrs = dgh_ptr + (t_next.to(tl.int64) * B + offs_b)[:, None] * GH + offs_k[None, :]
    row_ok = next_active[:, None]
    acc = tl.zeros((BLOCK_B, UNITS), dtype=tl.float32)
    for c in tl.static_range(NCHUNK):
        # only the last chunk reaches past G*H: a k mask per chunk would keep NCHUNK offset
        # tiles and predicates live across the time loop (spills on sm_90)
        if c == NCHUNK - 1:
            a_mask = row_ok & (offs_k[None, :] < GH - c * CHUNK_K)
        else:
            a_mask = row_ok
        # .cg: other programs wrote these before the barrier; read them from L2, not L1
        a = tl.load(a_ptrs + c * CHUNK_K, mask=a_mask, other=0.0, cache_modifier=".cg")
        # float16/bfloat16 w_hh: dGh rounded to w_hh's dtype, a tensor-core dot accumulating
        # in float32 (see the module docstring); otherwise the per-step kernel's float32 dot
        if half_dot(w[c].dtype):
            acc += tl.dot(a.to(w[c].dtype), w[c], input_precision=PRECISION)
        else:
            acc += tl.dot(a, w[c].to(tl.float32), input_precision=PRECISION)
    return acc


@triton.jit
def rnn_bwd_persistent_kernel(dgx_ptr, dgh_ptr, w_hh_ptr, ws_ptr, dy_ptr, y_ptr, h0_ptr,
                              c0_ptr, carry_ptr, dc_ptr, hprev_ptr, dh0_ptr, len_ptr,
                              counter_ptr, T, B, H, CELL: tl.constexpr,
                              HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
                              USE_SEM: tl.constexpr, PRECISION: tl.constexpr,
                              BLOCK_B: tl.constexpr, UNITS: tl.constexpr, CHUNK_K: tl.constexpr,
                              NCHUNK: tl.constexpr):
    """All T steps of any cell's backward and the final dh0 (see the module docstring); the
    buffers are rnn_bwd_step_kernel's (PHASE 0). carry (B, H) holds dh_n on entry, dc
    (S-1, B, H) the other states' final gradients on entry and their dc0 on exit."""
    G: tl.constexpr = num_gates(CELL)
    S: tl.constexpr = num_states(CELL)
    GH = G * H
    nprog = tl.num_programs(0)
    offs_b = tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(0) * UNITS + tl.arange(0, UNITS)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    idx = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    # this program's slice of w_hh stays on chip for all T steps
    w = weight_slice(w_hh_ptr, offs_h, GH, H, CHUNK_K, NCHUNK)
    # what flows to the previous step other than through w_hh: the program's own elements,
    # in registers until the end
    carry = tl.load(carry_ptr + idx, mask=mask, other=0.0)
    dc = load_other_states(dc_ptr, idx, mask, B, H, S)
    for i in range(0, T):
        step = T - 1 - i
        dh = carry + through_w_hh(dgh_ptr, w, step, len_ptr, offs_b, B, T, GH, HAS_LENGTHS,
                                  REVERSE, PRECISION, BLOCK_B, UNITS, CHUNK_K)
        active, t = step_rows(step, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
        row = t.to(tl.int64) * B + offs_b
        has_prev, prow = prev_rows(step, active, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
        keep = active[:, None]
        live = mask & keep
        dh_tot = dh + load_slot(dy_ptr, row, 0, offs_h, live, H, 1)
        dprev, state_prev = cell_step_backward(CELL, (dh_tot,) + dc, dgx_ptr, dgh_ptr, ws_ptr,
                                               y_ptr, h0_ptr, c0_ptr, idx, row, prow,
                                               has_prev[:, None], live, mask, offs_h, B, H,
                                               False)
        store_slot(hprev_ptr, row, 0, offs_h, live, state_prev[0], H, 1)
        # a row past its length passes its carried gradients through unchanged
        carry = tl.where(keep, dprev[0], dh)
        dc = select(keep, dprev[1:], dc)
        # every program's dGh_s is in memory before any reads it at step s - 1
        grid_barrier(counter_ptr, nprog * (i + 1), USE_SEM)
    if half_dot(w_hh_ptr.dtype.element_ty):
        # the slice again, from memory (once): reusing the loop's half-precision w here, the
        # compiler loads its mma operands into registers before the loop and keeps them live
        # through it (128 registers a thread at 128 KB: 6.7 KB of spills on sm_90)
        w = weight_slice(w_hh_ptr, offs_h, GH, H, CHUNK_K, NCHUNK)
    dh0 = carry + through_w_hh(dgh_ptr, w, -1, len_ptr, offs_b, B, T, GH, HAS_LENGTHS, REVERSE,
                               PRECISION, BLOCK_B, UNITS, CHUNK_K)
    tl.store(dh0_ptr + idx, dh0, mask=mask)
    store_other_states(dc_ptr, idx, mask, dc, B, H)


def _launch(cell, T, B, H, lengths, reverse, args, blocks):
    """The one persistent launch on rnn_bwd.backward's buffers (args as _run_steps takes
    them; the projection's w_hr, dht, u are not used)."""
    (dgx, dgh, w_hh, ws, dy, y, h0, c0, carry, dc, hprev, dh0) = args[:12]
    counter = torch.zeros((1,), dtype=torch.int32, device=dgx.device)
    rnn_bwd_persistent_kernel[(blocks.n_programs,)](
        dgx, dgh, w_hh, ws, dy, y, h0, c0, carry, dc, hprev, dh0, lengths, counter, T, B, H,
        CELL=cell, HAS_LENGTHS=lengths is not None, REVERSE=bool(reverse), USE_SEM=True,
        PRECISION=dot_precision(torch.float32), BLOCK_B=blocks.block_b, UNITS=blocks.units,
        CHUNK_K=blocks.chunk_k, NCHUNK=blocks.n_chunks, num_warps=blocks.num_warps)


def _run_persistent(cell, T, B, H, P, lengths, reverse, args, proj, blocks):
    """rnn_bwd.backward's run_steps: the persistent launch in place of the per-step ones."""
    assert not proj and P == H
    _launch(cell, T, B, H, lengths, reverse, args, blocks)


def backward_persistent(cell, dy, dstates, x, w_ih, w_hh, states, lengths, reverse, y, ws,
                        w_hr=None, n_programs_max=None):
    """rnn_bwd.backward (same arguments and result) with its per-step launches replaced by one
    persistent launch when the blocking fits on chip; otherwise, and for an LSTM with a
    projection w_hr, the per-step kernel. n_programs_max: the co-resident programs (default:
    max_programs of x's device; tests pass 1 to force the one-program blocking)."""
    G = CELLS[cell].gates
    B, H = x.shape[1], w_hh.shape[0] // G
    n_programs_max = n_programs_max or max_programs(x.device)
    elem_bytes = w_hh.element_size()
    run_steps = None
    if w_hr is None and fits_on_chip(B, H, G, n_programs_max, elem_bytes):
        run_steps = functools.partial(
            _run_persistent, blocks=persistent_bwd_blocks(B, H, G, n_programs_max, elem_bytes))
    return rnn_bwd.backward(cell, dy, dstates, x, w_ih, w_hh, states, lengths, reverse, y, ws,
                            w_hr=w_hr, run_steps=run_steps)


# ----------------------------------------------------------------------------------------------
# The sm_90 report (bench/sm90_report.py)

SM90_PROGRAMS = 132  # an H100/H200
SM90_T = 20
SM90_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def sm90_configs(n_programs_max=SM90_PROGRAMS, shapes=None, cells=("lstm", "gru", "rnn_tanh")):
    """The launches the persistent backward picks on n_programs_max SMs, one dict each, for
    bench/sm90_report.py's RNN section:
        problem: the report's problem title (cell, dtype, B, H, flags, blocking),
        dtype: its dtype label (bf16, fp16, fp32),
        launch: the keyword arguments of sm90_launch, which makes that launch on empty CPU
            tensors (the report records it: set rec.problem/rec.dtype, call sm90_launch),
        kwargs: the kernel's compile-time arguments the launch passes (for a description).
    shapes: (B, H) pairs, default B in {1, 8, 16, 32, 64} x H in {256, 512, 768, 1024}; flags:
    none, or lengths + reverse. Shapes that do not fit on chip for the dtype (the per-step
    fallback) are left out."""
    shapes = shapes or [(B, H) for B in (1, 8, 16, 32, 64) for H in (256, 512, 768, 1024)]
    out = []
    for dt, dtype in SM90_DTYPES.items():
        elem_bytes = dtype.itemsize
        for cell in cells:
            G = CELLS[cell].gates
            for B, H in shapes:
                if not fits_on_chip(B, H, G, n_programs_max, elem_bytes):
                    continue
                blocks = persistent_bwd_blocks(B, H, G, n_programs_max, elem_bytes)
                for flagged in (False, True):
                    tag = f"{dt} B{B} H{H}" + (" lengths,reverse" if flagged else "")
                    out.append(dict(
                        problem=(f"{cell} bwd persistent {tag} (units {blocks.units}, "
                                 f"{blocks.n_chunks}x{blocks.chunk_k} K, {blocks.n_programs} "
                                 "programs)"),
                        dtype=dt,
                        launch=dict(cell=cell, T=SM90_T, B=B, H=H, dtype=dt, lengths=flagged,
                                    reverse=flagged, n_programs_max=n_programs_max),
                        kwargs=dict(CELL=cell, HAS_LENGTHS=flagged, REVERSE=flagged,
                                    USE_SEM=True, PRECISION=dot_precision(torch.float32),
                                    BLOCK_B=blocks.block_b, UNITS=blocks.units,
                                    CHUNK_K=blocks.chunk_k, NCHUNK=blocks.n_chunks,
                                    num_warps=blocks.num_warps)))
    return out


def sm90_launch(cell, T, B, H, dtype, lengths, reverse, n_programs_max):
    """The persistent launch of one sm90_configs() entry, on empty CPU tensors of its shapes
    (for a launch recorder; nothing meaningful is computed)."""
    spec = CELLS[cell]
    dtype = SM90_DTYPES[dtype]
    GH = spec.gates * H

    def f32(*shape_):
        return torch.zeros(shape_, dtype=torch.float32)

    dgx = f32(T, B, GH)
    dgh = f32(T, B, GH) if spec.split_dgh else dgx
    carry = f32(B, H)
    c0 = f32(spec.states - 1, B, H) if spec.states > 1 else carry
    y = torch.zeros(T, B, H, dtype=dtype)
    args = (dgx, dgh, torch.zeros(GH, H, dtype=dtype), f32(T, B, spec.ws_slots * H), y, y,
            torch.zeros(B, H, dtype=dtype), c0, carry, c0.clone(), f32(T, B, H), f32(B, H))
    lens = torch.full((B,), T, dtype=torch.int64) if lengths else None
    _launch(cell, T, B, H, lens, reverse, args,
            persistent_bwd_blocks(B, H, spec.gates, n_programs_max, dtype.itemsize))
