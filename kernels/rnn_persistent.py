"""Persistent recurrent sequence forward, one launch for all T steps, for every cell of
kernels/rnn_cells.py (CELL a tl.constexpr).

A grid of co-resident programs; program p owns UNITS hidden units [p*UNITS, (p+1)*UNITS) for
all G gates and the whole batch (BLOCK_B = next_pow2(B) rows, up to 64). Its slice of w_hh is
ONE weight tile of G_PAD * UNITS columns (G_PAD = next_pow2(G); column u*G_PAD + k holds gate
k of unit u, i.e. w_hh row k*H + unit; the GRU's fourth slot is zero), so one tl.dot per
K-chunk gives every gate at once and the gates are split off the accumulator afterwards
(split_gates). At H = 1024 on 132 SMs that is 8 units per program, a 32-wide dot, 128
programs. The tile is loaded once, before the time loop, as a tuple of NCHUNK (CHUNK_K, N)
tiles along K (a register tensor cannot be indexed by a runtime chunk, so the chunks are a
tuple walked with tl.static_range), in the input dtype: half precision halves what stays on
chip and dots on tensor cores (float32 accumulation; float32 weights dot as dot_precision
says). The compiled sm_90 kernel keeps these loop-invariant dot operands in shared memory.

Each step a program reads h_prev, all batch rows, K-chunk by K-chunk, from a global
ping-pong buffer hx[2, B, H] (it lives in L2) kept in the dot's dtype (w_hh's: the dot rounds
h to it anyway, and half precision halves the per-step L2 traffic), computes its gates with
the same cell math as the per-step kernel (kernels/rnn_cell.py, cell_forward), writes its
slice of h_new to the other half of hx, and waits at a grid-wide barrier: one atomic_add
(release) on a counter, then a spin on an acquire read until the counter reaches
nprog * (step + 1). Its states themselves (h and the LSTM's c, float32) never leave its
registers; they go to memory once, after the last step. Two halves suffice: a program can only
overwrite hx[s % 2] (at step s + 1) after every program passed the barrier of step s, i.e.
finished reading it.

The grid never exceeds the SM count (programs that are not co-resident would deadlock at the
barrier): UNITS = next_pow2(ceil(H / n_sm)), at least 16 / G_PAD (tl.dot needs N >= 16).
When a tile exceeds what compiled without spills (fits_on_chip and the MAX_* limits below: on
an H100/H200, 132 SMs, every cell up to H = 1024 at B <= 64 in float16/bfloat16; float32 at
B <= 16 for H <= 512, the Elman cell H <= 1024), the launcher falls back to the per-step
kernel. It falls back too for the LSTM with a projection (w_hr,
torch's proj_size): h would have to make a second trip through memory and a second grid
barrier per step (all of u = o * tanh(c) before any program can project it), which the
per-step path (kernels/rnn_cell.py: step kernel + rnn_proj_kernel) already does.

Under TRITON_INTERPRET=1 programs run one after another, so only the ONE-program configuration
(that program owns all hidden units) can run there: the barrier with nprog = 1 passes at once.
Triton 3.6's interpreter accepts sem=/scope=, so the barrier code that runs there is the GPU's;
USE_SEM=False (plain atomic + volatile spin) is kept for interpreters that do not take them.
On the GPU a scalar atomic runs once per program (its result broadcast to all threads), and the
acquire read (atomic_add of 0 with sem="acquire") compiles to ld.global.gpu.acquire.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from seqcore.kernels import rnn_cell
from seqcore.kernels._common import tf32_requested
from seqcore.kernels.rnn_cell import (NUM_WARPS, dot_precision, forward_steps, input_gates,
                                      input_projection, or_dummy, select, step_rows,
                                      store_other_states, store_ws, store_y)
from seqcore.kernels.rnn_cells import CELLS, cell_forward, num_gates, num_states

# Limits of what one program holds, checked by compiling every config the launcher picks on
# 132 SMs (B in {1, 8, 16, 64} x H in {256, 512, 768, 1024}, every cell, bfloat16, float16 and
# float32, with and without lengths + reverse + workspace) and the interpreter's one-program
# tiles for sm_90 with Triton 3.6 + ptxas, at the warps persistent_blocks picks
# (bench/sm90_report.py --only rnn):
# bfloat16 (wgmma at 64 rows, mma.sync below) never spills: at B = 64, H = 1024 the LSTM/GRU
# take 226 registers at 4 warps (255 + 124 B of spills at 8 warps, hence num_warps 4 there),
# 64 KB of weights + 16 KB for the h chunk = 80 KB of shared memory; at B <= 16 they take
# 58-74 registers. float32 ("ieee", FMA dots) needs narrower h chunks (MAX_H_CHUNK_FP32:
# B = 64, H = 1024 at 128-wide chunks spilled 1.6 KB; at 32-wide ones 155 registers, but other
# B = 64 and H >= 768 tiles still spill 4-92 B as ptxas caps them at 48-128 registers), so
# float32 runs persistently only at BLOCK_B <= 16 with <= 64 KB of weights (LSTM/GRU
# H <= 512, Elman H <= 1024: 48-78 registers, 24-72 KB of shared memory, no spills).
MAX_BATCH_BLOCK = 64       # BLOCK_B: the whole batch is one tile
MAX_ACC = 4096             # BLOCK_B * N: the float32 accumulator of all gates (N = G_PAD*UNITS)
MAX_H_CHUNK = 8192         # BLOCK_B * CHUNK_K: the h_prev chunk of one dot, half precision
MAX_H_CHUNK_FP32 = 2048    # the same for float32 (its "ieee" dot runs on CUDA cores)
MAX_W_CHUNK = 8192         # CHUNK_K * N: one weight chunk
MAX_CHUNKS = 32            # NCHUNK: the K loop is unrolled
MAX_WEIGHT_BYTES = 128 * 1024  # N * NCHUNK * CHUNK_K in w_hh's dtype: the slice kept on chip
# float32 ("ieee" dots on CUDA cores) spilled 4-92 B at B = 64 and at the 96-128 KB slices of
# the gated cells (H >= 768): it stays within the float32 tiles that compiled clean
MAX_BATCH_BLOCK_FP32 = 16
MAX_WEIGHT_BYTES_FP32 = 64 * 1024


class Blocks(NamedTuple):
    """The persistent kernel's blocking of a (B, H) problem."""
    block_b: int     # batch rows of the tile: all of B, padded to a power of two (>= 16)
    units: int       # hidden units per program, all G gates of each
    chunk_k: int     # h_prev columns (w_hh rows of the tile) per dot
    n_chunks: int    # K-chunks covering H
    n_programs: int  # the grid: ceil(H / units), never above n_programs_max
    num_warps: int


@triton.constexpr_function
def gate_slots(gates):
    """Gate columns per unit in the fused weight tile: G padded to a power of two (the split
    of the accumulator halves the columns); for the launcher and, as a constexpr, the kernel."""
    return 1 << (gates - 1).bit_length()


def pow2_floor(n):
    """The largest power of two <= n (1 for n < 1): a tile width within a limit."""
    return 1 << (max(int(n), 1).bit_length() - 1)


def persistent_blocks(B, H, G, n_programs_max, elem_bytes=4):
    """Blocks for the persistent kernel: the fewest units per program that keep the grid
    within n_programs_max, then K-chunks as wide as the h and weight chunk limits allow;
    elem_bytes: w_hh's element size (float32 dots take narrower h chunks)."""
    units = triton.next_power_of_2(triton.cdiv(H, max(n_programs_max, 1)))
    units = max(units, 16 // gate_slots(G))  # tl.dot needs N >= 16
    n = gate_slots(G) * units
    block_b = max(16, triton.next_power_of_2(B))
    max_h_chunk = MAX_H_CHUNK_FP32 if elem_bytes >= 4 else MAX_H_CHUNK
    chunk_k = min(triton.next_power_of_2(H), pow2_floor(max_h_chunk // block_b),
                  pow2_floor(MAX_W_CHUNK // n))
    chunk_k = max(16, chunk_k)  # tl.dot needs K >= 16
    n_chunks = triton.cdiv(H, chunk_k)
    if elem_bytes >= 4 and tf32_requested() and n_chunks >= 8:
        # float32 with TF32 (mma) dots: 8 chunks of 128 (the Elman cell at H = 1024) were held
        # to 80-96 registers and spilled 4-8 B at 4 and 8 warps (sm90-report-rnn-2026-12-03);
        # 16 chunks of 64 take 76-94, clean (B 1/8/16, tanh and relu, every flag set)
        chunk_k //= 2
        n_chunks = triton.cdiv(H, chunk_k)
    # one warpgroup unless the accumulator is large (the one-program tiles of the tests) or
    # a float32 slice is short (<= 2 chunks): at 8 warps the B64 H1024 half-precision wgmma
    # tile spilled 124 B, and B <= 16 tiles without lengths/workspace 4-8 B (ptxas held them
    # to 32-64 registers); at 4 warps the float32 LSTM H256 (2 chunks) spilled 12 B instead
    # (sm90 report, both ways compiled)
    four = block_b * n <= 2048 and (elem_bytes < 4 or n_chunks >= 4)
    num_warps = 4 if four else NUM_WARPS
    return Blocks(block_b, units, chunk_k, n_chunks, triton.cdiv(H, units), num_warps)


def fits_on_chip(B, H, G, n_programs_max, elem_bytes=4):
    """Whether the persistent kernel's blocking stays within the limits that compiled without
    spills (see MAX_*); elem_bytes: w_hh's element size (the slice is kept in its dtype)."""
    blocks = persistent_blocks(B, H, G, n_programs_max, elem_bytes)
    n = gate_slots(G) * blocks.units
    weight_bytes = n * blocks.chunk_k * blocks.n_chunks * elem_bytes
    fp32 = elem_bytes >= 4
    max_h_chunk = MAX_H_CHUNK_FP32 if fp32 else MAX_H_CHUNK
    if fp32 and (blocks.block_b > MAX_BATCH_BLOCK_FP32 or weight_bytes > MAX_WEIGHT_BYTES_FP32):
        return False
    return (blocks.block_b <= MAX_BATCH_BLOCK and blocks.block_b * n <= MAX_ACC
            and blocks.block_b * blocks.chunk_k <= max_h_chunk
            and blocks.chunk_k * n <= MAX_W_CHUNK and blocks.n_chunks <= MAX_CHUNKS
            and weight_bytes <= MAX_WEIGHT_BYTES)


def runs_persistent(B, H, G, device, has_proj=False, elem_bytes=4):
    """Whether the persistent launchers run the persistent kernel (not the per-step fallback);
    has_proj: an LSTM with a projection (always the per-step kernels)."""
    return B > 0 and not has_proj and fits_on_chip(B, H, G, max_programs(device), elem_bytes)


def max_programs(device):
    """Programs that can be resident at once: one per SM on a GPU, one in the interpreter."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def grid_barrier(counter_ptr, target, USE_SEM: tl.constexpr):
    """Arrive at the barrier and wait until `target` arrivals were counted."""
    tl.debug_barrier()  # all threads' stores of this step precede the release
    if USE_SEM:
        tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        while seen < target:
            seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    else:
        tl.atomic_add(counter_ptr, 1)
        seen = tl.load(counter_ptr, volatile=True)
        while seen < target:
            seen = tl.load(counter_ptr, volatile=True)
    tl.debug_barrier()


@triton.jit
def barrier_kernel(counter_ptr, T):
    """T grid barriers and nothing else: the latency the persistent kernels pay per step
    (bench/gpu_suite.py times it; counter starts at 0)."""
    nprog = tl.num_programs(0)
    for step in range(0, T):
        grid_barrier(counter_ptr, nprog * (step + 1), True)


@triton.jit
def weight_chunk(w_ptr, rows, col_ok, offs_k, H):
    """w_hh[rows[n], offs_k[k]] as a (CHUNK_K, N) tile in w_hh's dtype (the dot's B operand);
    zero past H and in unused gate slots."""
    return tl.load(w_ptr + rows[None, :] * H + offs_k[:, None],
                   mask=col_ok[None, :] & (offs_k[:, None] < H), other=0.0)


@triton.jit
def split_gates(acc, G: tl.constexpr, G_PAD: tl.constexpr, BLOCK_B: tl.constexpr,
                UNITS: tl.constexpr):
    """The G (BLOCK_B, UNITS) gate tiles of a (BLOCK_B, UNITS * G_PAD) accumulator whose column
    u*G_PAD + k holds gate k of unit u (tl.split halves the last dimension, so the gate slot
    index is split bit by bit)."""
    if G_PAD == 1:
        return (acc,)
    elif G_PAD == 2:
        g0, g1 = tl.split(tl.reshape(acc, (BLOCK_B, UNITS, 2)))
        return (g0, g1)
    else:
        tl.static_assert(G_PAD == 4)
        # slot k = 2a + c: split off c (even / odd slots), then a
        even, odd = tl.split(tl.reshape(acc, (BLOCK_B, UNITS, 2, 2)))
        g0, g2 = tl.split(even)
        g1, g3 = tl.split(odd)
        return (g0, g1, g2, g3)[:G]


@triton.jit
def load_states(state_ptr, idx, mask, B, H, S: tl.constexpr):
    """The S carried states (h, then the LSTM's c) from their float32 (S, B, H) array."""
    out = ()
    for s in tl.static_range(S):
        out = out + (tl.load(state_ptr + s * B * H + idx, mask=mask, other=0.0),)
    return out


@triton.jit
def rnn_persistent_kernel(xproj_ptr, w_hh_ptr, b_hh_ptr, hx_ptr, state0_ptr, state_n_ptr, y_ptr,
                          ws_ptr, len_ptr, counter_ptr, T, B, H, CELL: tl.constexpr,
                          HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
                          NEED_WS: tl.constexpr, USE_SEM: tl.constexpr, PRECISION: tl.constexpr,
                          BLOCK_B: tl.constexpr, UNITS: tl.constexpr, CHUNK_K: tl.constexpr,
                          NCHUNK: tl.constexpr):
    """All T steps of any cell; h_0 in hx[0] (2, BLOCK_B, NCHUNK * CHUNK_K: w_hh's dtype,
    zero past B and H) and all initial states in state0 (S, B, H), their final values to
    state_n (S, B, H), both float32."""
    G: tl.constexpr = num_gates(CELL)
    G_PAD: tl.constexpr = gate_slots(G)
    S: tl.constexpr = num_states(CELL)
    N: tl.constexpr = G_PAD * UNITS
    nprog = tl.num_programs(0)
    first_unit = tl.program_id(0) * UNITS
    offs_b = tl.arange(0, BLOCK_B)
    offs_h = first_unit + tl.arange(0, UNITS)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    # the fused tile's columns: n = u*G_PAD + k is gate k of unit first_unit + u
    offs_n = tl.arange(0, N)
    unit_n = first_unit + offs_n // G_PAD
    gate_n = offs_n % G_PAD
    col_ok = (gate_n < G) & (unit_n < H)
    rows_n = (gate_n * H + unit_n).to(tl.int64)
    # this program's slice of w_hh (and b_hh) stays on chip for all T steps
    w = ()
    for c in tl.static_range(NCHUNK):
        w = w + (weight_chunk(w_hh_ptr, rows_n, col_ok, c * CHUNK_K + tl.arange(0, CHUNK_K), H),)
    bias = tl.load(b_hh_ptr + rows_n, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    own = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    # the states (h, c) never leave the program's registers; h reaches the others through hx
    state = load_states(state0_ptr, own, mask, B, H, S)
    # hx is zero-padded to (2, BLOCK_B, K_PAD): the chunk loads need no mask, and one offset
    # tile serves every chunk (a tile of pointers or masks per chunk, hoisted out of the time
    # loop, would cost NCHUNK * BLOCK_B * CHUNK_K / threads registers)
    K_PAD: tl.constexpr = NCHUNK * CHUNK_K
    chunk_offs = offs_b[:, None] * K_PAD + tl.arange(0, CHUNK_K)[None, :]
    own_hx = offs_b[:, None] * K_PAD + offs_h[None, :]
    for step in range(0, T):
        h_src = hx_ptr + (step % 2) * (BLOCK_B * K_PAD)
        h_dst = hx_ptr + ((step + 1) % 2) * (BLOCK_B * K_PAD)
        active, t = step_rows(step, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
        row = t.to(tl.int64) * B + offs_b
        # the bias starts the accumulator (as in the per-step kernel's hidden_gates)
        acc = tl.zeros((BLOCK_B, N), dtype=tl.float32) + bias
        for c in tl.static_range(NCHUNK):
            h = tl.load(h_src + c * CHUNK_K + chunk_offs, cache_modifier=".cg")
            acc = tl.dot(h, w[c], acc, input_precision=PRECISION)
        gh = split_gates(acc, G, G_PAD, BLOCK_B, UNITS)
        gx = input_gates(xproj_ptr, row, offs_h, mask, H, G)
        new, ws = cell_forward(CELL, gx, gh, state)
        state = select(active[:, None], new, state)
        tl.store(h_dst + own_hx, state[0].to(hx_ptr.dtype.element_ty), mask=mask)
        out_row = store_y(y_ptr, row, step, offs_b, offs_h, mask, active, new[0], B, H)
        if NEED_WS:
            store_ws(ws_ptr, out_row, offs_h, mask, active, ws, H)
        grid_barrier(counter_ptr, nprog * (step + 1), USE_SEM)
    store_other_states(state_n_ptr, own, mask, state, B, H)


def _use_sem(device):
    # Triton 3.6's interpreter accepts sem=/scope= too, so the tested path is the GPU's one
    return True


def forward_persistent(cell, x, w_ih, w_hh, b_ih, b_hh, states, lengths, reverse, need_ws,
                       n_programs_max=None, w_hr=None):
    """(y, final states, ws) of `cell` (a name in kernels/rnn_cells.CELLS) from one persistent
    launch; falls back to the per-step kernels when the blocking does not fit on chip and for
    an LSTM with a projection w_hr (see the module docstring). states: the initial (h0,) or
    (h0, c0); the final ones come back float32. n_programs_max: the co-resident programs
    (default: max_programs of x's device; tests pass 1 to force the one-program blocking)."""
    spec = CELLS[cell]
    T, B, _ = x.shape
    H = w_hh.shape[1]
    n_programs_max = n_programs_max or max_programs(x.device)
    if (w_hr is not None or T == 0 or B == 0
            or not fits_on_chip(B, H, spec.gates, n_programs_max, w_hh.element_size())):
        return forward_steps(cell, x, w_ih, w_hh, b_ih, b_hh, states, lengths, reverse, need_ws,
                             w_hr=w_hr)
    blocks = persistent_blocks(B, H, spec.gates, n_programs_max, w_hh.element_size())
    y = rnn_cell.new_buffer((T, B, H), x.dtype, x.device)
    ws = (rnn_cell.new_buffer((T, B, spec.ws_slots * H), torch.float32, x.device)
          if need_ws else None)
    # h_prev as the programs exchange it, in the dot's dtype (the states proper stay float32),
    # zero-padded to the tile: the padding must read as zeros, so not a new_buffer
    hx = torch.zeros((2, blocks.block_b, blocks.n_chunks * blocks.chunk_k), dtype=w_hh.dtype,
                     device=x.device)
    hx[0, :B, :H].copy_(states[0])
    state0 = torch.stack([s.float() for s in states])
    state_n = rnn_cell.new_buffer(tuple(state0.shape), torch.float32, x.device)
    xproj = input_projection(x, w_ih, b_ih)
    counter = torch.zeros((1,), dtype=torch.int32, device=x.device)
    rnn_persistent_kernel[(blocks.n_programs,)](
        xproj, w_hh, b_hh, hx, state0, state_n, y, or_dummy(ws, y), lengths, counter, T, B, H,
        CELL=cell, HAS_LENGTHS=lengths is not None, REVERSE=bool(reverse), NEED_WS=need_ws,
        USE_SEM=_use_sem(x.device), PRECISION=dot_precision(torch.float32),
        BLOCK_B=blocks.block_b, UNITS=blocks.units, CHUNK_K=blocks.chunk_k,
        NCHUNK=blocks.n_chunks, num_warps=blocks.num_warps)
    return y, tuple(state_n), ws
