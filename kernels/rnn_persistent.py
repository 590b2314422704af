"""Persistent recurrent sequence forward, one launch for all T steps, for every cell of
kernels/rnn_cells.py (CELL a tl.constexpr).

A grid of co-resident programs; program p owns hidden units [p*BLOCK_H, (p+1)*BLOCK_H) for all
G gates and loads its slice of w_hh on chip once, before the time loop (the compiled sm_90
kernel keeps these tl.dot operands in shared memory). Each step it reads the whole h_prev
(all batch rows) from a global ping-pong buffer hbuf[2, B, H], computes its
gates with the same cell math as the per-step kernel (kernels/rnn_cell.py), writes its slice
of h_new to the other half of hbuf, and waits at a grid-wide barrier: an atomic_add (release) on
a counter, then a spin on an acquire read until the counter reaches nprog * (step + 1). The
other states (the LSTM's c) never leave the program's registers. Two halves suffice: a program
can only overwrite hbuf[s % 2] (at step s + 1) after every program passed the barrier of step
s, i.e. finished reading it.

The grid never exceeds the SM count (programs that are not co-resident would deadlock at the
barrier), so the slice width is BLOCK_H = next_pow2(ceil(H / n_sm)) (at least 16 for tl.dot).
When the w_hh slice or the batch tile is too large to stay on chip (fits_on_chip: on an H100,
132 SMs, BLOCK_H = 16, so every cell up to H = 512 at B <= 16, and the 1-gate Elman cell also
up to H = 256 at B <= 32), the launcher falls back to the per-step kernel. It falls back too for
the LSTM with a projection (w_hr, torch's proj_size): h would have to make a second trip
through memory and a second grid barrier per step (all of u = o * tanh(c) before any program
can project it), which the per-step path (kernels/rnn_cell.py: step kernel + rnn_proj_kernel)
already does.

Under TRITON_INTERPRET=1 programs run one after another, so only the ONE-program configuration
(that program owns all hidden units) can run there: the barrier with nprog = 1 passes at once.
Triton 3.6's interpreter accepts sem=/scope=, so the barrier code that runs there is the GPU's;
USE_SEM=False (plain atomic + volatile spin) is kept for interpreters that do not take them.
On the GPU a scalar atomic runs once per program (its result broadcast to all threads), and the
acquire read (atomic_add of 0 with sem="acquire") compiles to ld.global.gpu.acquire.
"""
import torch
import triton
import triton.language as tl

from seqcore.kernels import rnn_cell
from seqcore.kernels.rnn_cell import (bias_slice, dot_precision, forward_steps, input_gates,
                                      input_projection, load_other_states, or_dummy,
                                      other_states, select, step_rows, store_other_states,
                                      store_ws, store_y)
from seqcore.kernels.rnn_cells import CELLS, cell_forward, num_gates, num_states

# Limits of what one program holds on chip. Checked by compiling the kernels for sm_90 with
# Triton 3.6 + ptxas (8 warps, bfloat16 and float32 weights, with and without lengths and
# workspace; bench/sm90_report.py --only rnn): no register spills at (BLOCK_B, BLOCK_H, H_PAD) =
# (16, 16, 512) and (16, 16, 256) for every cell (up to 160 KB of shared memory: the compiler
# keeps the w_hh dot operands there), nor at (32, 16, 256) for the 1-gate Elman cell. The
# gated cells spill at BLOCK_B = 32: (32, 16, 256) spills 3.7-4.5 KB for the LSTM and GRU
# (ptxas gives up at 32 registers and a ~4 KB stack frame; 16 warps still spill 8 B for the
# GRU), so they stop at BLOCK_B = 16 and larger batches take the per-step kernel.
MAX_WEIGHT_ELEMS = 32768  # G * BLOCK_H * H_PAD: this program's slice of w_hh, as float32
MAX_H_TILE = 8192         # BLOCK_B * H_PAD: the h_prev tile read each step
MAX_BATCH_BLOCK = 32      # BLOCK_B of a 1-gate cell (Elman)
MAX_BATCH_BLOCK_GATED = 16  # BLOCK_B of a cell with G > 1 gates (LSTM, GRU)


def persistent_blocks(B, H, G, n_programs_max):
    """(BLOCK_B, BLOCK_H, H_PAD, nprog) for the persistent kernel."""
    H_PAD = max(16, triton.next_power_of_2(H))
    BLOCK_H = max(16, triton.next_power_of_2(triton.cdiv(H, max(n_programs_max, 1))))
    BLOCK_H = min(BLOCK_H, H_PAD)
    BLOCK_B = max(16, triton.next_power_of_2(B))
    return BLOCK_B, BLOCK_H, H_PAD, triton.cdiv(H, BLOCK_H)


def fits_on_chip(B, H, G, n_programs_max):
    """Whether one program's slice of w_hh (and the batch tile of h) stays on chip without
    spilling (see MAX_BATCH_BLOCK_GATED)."""
    BLOCK_B, BLOCK_H, H_PAD, _ = persistent_blocks(B, H, G, n_programs_max)
    max_batch = MAX_BATCH_BLOCK if G == 1 else MAX_BATCH_BLOCK_GATED
    return (G * BLOCK_H * H_PAD <= MAX_WEIGHT_ELEMS and BLOCK_B * H_PAD <= MAX_H_TILE
            and BLOCK_B <= max_batch)


def runs_persistent(B, H, G, device, has_proj=False):
    """Whether the persistent launchers run the persistent kernel (not the per-step fallback);
    has_proj: an LSTM with a projection (always the per-step kernels)."""
    return B > 0 and not has_proj and fits_on_chip(B, H, G, max_programs(device))


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
def weight_slice(w_ptr, gate, offs_h, offs_k, H):
    """w_hh[gate*H + offs_h, offs_k]^T as a float32 (H_PAD, BLOCK_H) tile."""
    rows = (gate * H + offs_h).to(tl.int64)
    w = tl.load(w_ptr + rows[None, :] * H + offs_k[:, None],
                mask=(offs_h[None, :] < H) & (offs_k[:, None] < H), other=0.0)
    return w.to(tl.float32)


@triton.jit
def rnn_persistent_kernel(xproj_ptr, w_hh_ptr, b_hh_ptr, hbuf_ptr, c0_ptr, c_n_ptr, y_ptr,
                          ws_ptr, len_ptr, counter_ptr, T, B, H, CELL: tl.constexpr,
                          HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
                          NEED_WS: tl.constexpr, USE_SEM: tl.constexpr, PRECISION: tl.constexpr,
                          BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, H_PAD: tl.constexpr):
    """All T steps of any cell; h_0 in hbuf[0], the other states in c0 (S-1, B, H), their
    final values to c_n (h_n is hbuf[T % 2])."""
    G: tl.constexpr = num_gates(CELL)
    S: tl.constexpr = num_states(CELL)
    nprog = tl.num_programs(0)
    offs_b = tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_k = tl.arange(0, H_PAD)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    h_mask = (offs_b[:, None] < B) & (offs_k[None, :] < H)
    # this program's slice of w_hh (and b_hh) stays on chip for all T steps
    w = ()
    b = ()
    for k in tl.static_range(G):
        w = w + (weight_slice(w_hh_ptr, k, offs_h, offs_k, H),)
        b = b + (bias_slice(b_hh_ptr, k, offs_h, H),)
    own = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    # the states after h (LSTM: c) never leave the program's registers; h goes through hbuf
    others = load_other_states(c0_ptr, own, mask, B, H, S)
    for step in range(0, T):
        h_src = hbuf_ptr + (step % 2) * B * H
        h_dst = hbuf_ptr + ((step + 1) % 2) * B * H
        active, t = step_rows(step, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
        row = t.to(tl.int64) * B + offs_b
        h = tl.load(h_src + offs_b[:, None] * H + offs_k[None, :], mask=h_mask, other=0.0,
                    volatile=True)
        gh = ()
        for k in tl.static_range(G):
            gh = gh + (tl.dot(h, w[k], input_precision=PRECISION) + b[k],)
        gx = input_gates(xproj_ptr, row, offs_h, mask, H, G)
        # this program's slice of h_prev: re-read rather than carried in registers across the
        # barrier (fewer live registers; the sm_90 compile spilled more the other way)
        h_old = tl.load(h_src + own, mask=mask, other=0.0, volatile=True)
        old = (h_old,) + others
        new, ws = cell_forward(CELL, gx, gh, old)
        kept = select(active[:, None], new, old)
        tl.store(h_dst + own, kept[0], mask=mask)
        others = kept[1:]
        out_row = store_y(y_ptr, row, step, offs_b, offs_h, mask, active, new[0], B, H)
        if NEED_WS:
            store_ws(ws_ptr, out_row, offs_h, mask, active, ws, H)
        grid_barrier(counter_ptr, nprog * (step + 1), USE_SEM)
    store_other_states(c_n_ptr, own, mask, others, B, H)


def _use_sem(device):
    # Triton 3.6's interpreter accepts sem=/scope= too, so the tested path is the GPU's one
    return True


def forward_persistent(cell, x, w_ih, w_hh, b_ih, b_hh, states, lengths, reverse, need_ws,
                       n_programs_max=None, w_hr=None):
    """(y, final states, ws) of `cell` (a name in kernels/rnn_cells.CELLS) from one persistent
    launch; falls back to the per-step kernels when w_hh does not fit on chip and for an LSTM
    with a projection w_hr (see the module docstring). states: the initial (h0,) or (h0, c0);
    the final ones come back float32."""
    spec = CELLS[cell]
    T, B, _ = x.shape
    H = w_hh.shape[1]
    n_programs_max = n_programs_max or max_programs(x.device)
    if (w_hr is not None or T == 0 or B == 0
            or not fits_on_chip(B, H, spec.gates, n_programs_max)):
        return forward_steps(cell, x, w_ih, w_hh, b_ih, b_hh, states, lengths, reverse, need_ws,
                             w_hr=w_hr)
    y = rnn_cell.new_buffer((T, B, H), x.dtype, x.device)
    ws = (rnn_cell.new_buffer((T, B, spec.ws_slots * H), torch.float32, x.device)
          if need_ws else None)
    hbuf = rnn_cell.new_buffer((2, B, H), torch.float32, x.device)
    hbuf[0].copy_(states[0])
    c0 = other_states(states, B, H, x.device)
    c_n = rnn_cell.new_buffer(tuple(c0.shape), torch.float32, x.device)
    xproj = input_projection(x, w_ih, b_ih)
    BLOCK_B, BLOCK_H, H_PAD, nprog = persistent_blocks(B, H, spec.gates, n_programs_max)
    counter = torch.zeros((1,), dtype=torch.int32, device=x.device)
    rnn_persistent_kernel[(nprog,)](
        xproj, w_hh, b_hh, hbuf, or_dummy(c0, y), or_dummy(c_n, y), y, or_dummy(ws, y),
        lengths, counter, T, B, H, CELL=cell,
        HAS_LENGTHS=lengths is not None, REVERSE=bool(reverse), NEED_WS=need_ws,
        USE_SEM=_use_sem(x.device), PRECISION=dot_precision(torch.float32),
        BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, H_PAD=H_PAD, num_warps=8)
    return y, (hbuf[T % 2],) + tuple(c_n), ws
