"""Recurrent forward, one fused kernel launch per time step, for every cell of
kernels/rnn_cells.py (LSTM, GRU, Elman tanh/relu), plus the helpers the recurrent kernels share
(a tiled matmul, a column sum, the gate/state/y/workspace tiles).

The sequence forward is:
  1. xproj = x @ w_ih^T + b_ih for all T steps at once (one large matmul, float32 out);
  2. per step, one launch of rnn_step_kernel (CELL a tl.constexpr): each program owns a block of
     batch rows and a block of hidden units for ALL G gates, so it computes h @ w_hh^T for those
     gate columns and applies the cell's pointwise math in registers: no gate tensor goes
     through memory.

State is kept in float32. h is ping-ponged between two buffers because every program reads all
of h_prev while others write h_new; the other states (the LSTM's c), one (S-1, B, H) buffer, are
updated in place (a program reads and writes only its own elements).

The LSTM projection (torch's proj_size: w_hr (P, H), 0 < P < H; h, y and w_hh's columns have P
features, c has H): the step kernel runs with HAS_PROJ and P = w_hh's width, so its matmul is
h (B, P) @ w_hh^T, and writes the unprojected u = o * tanh(c_t) (B, H) to a scratch buffer
instead of h and y; a second launch per step, rnn_proj_kernel, makes h = u @ w_hr^T (B, P) and
y[t] from it (every program of the step kernel must finish u before any projection reads it,
hence two launches). The workspace is the same (i, f, g, o, c_t): the backward rebuilds u from it.

lengths / reverse: at processing step s, batch row b is active iff s < len_b and then works on
time t = s (forward) or t = len_b - 1 - s (reverse). An inactive row keeps its state and writes
zeros to y (and the workspace) at t = s, so every (t, b) of y is written exactly once.
"""

import torch
import triton
import triton.language as tl

from seqcore.kernels._common import tf32_requested
from seqcore.kernels.rnn_cells import CELLS, cell_forward, num_gates, num_states


def dot_precision(dtype):
    """tl.dot input_precision: exact "ieee" float32 products unless SEQCORE_TF32=1 asks for
    TensorFloat-32 (faster on GPU, ~1e-3 relative). The recurrent kernels always dot in float32
    (the float32 state times the weights), so this applies to every input dtype."""
    return "tf32" if tf32_requested() else "ieee"


# 8 warps: at 4 the fused 4-gate tiles (16 x 64 per gate) spill registers on sm_90 (checked by
# compiling with ptxas); at 8 no kernel of this family spills beyond a few bytes.
NUM_WARPS = 8


def new_buffer(shape, dtype, device):
    """Uninitialized memory for a kernel to fill (every launcher allocates through this, so tests
    can hand out NaN-filled buffers instead and catch an element a kernel forgets to write)."""
    return torch.empty(shape, dtype=dtype, device=device)


def pow2_block(n, lo=16, hi=64):
    """A power-of-two tile edge covering n, clamped to [lo, hi] (tl.dot needs >= 16)."""
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


# ----------------------------------------------------------------------------------------------
# Steps, lengths and reverse (shared with rnn_persistent.py and rnn_bwd.py)


@triton.jit
def step_rows(step, len_ptr, offs_b, B, T, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr):
    """(active, t) per batch row for processing step `step` (see the module docstring);
    t is clamped to a valid index where the row is inactive."""
    in_batch = offs_b < B
    if HAS_LENGTHS:
        lens = tl.load(len_ptr + offs_b, mask=in_batch, other=0).to(tl.int32)
    else:
        lens = tl.zeros_like(offs_b) + T
    active = in_batch & (step < lens)
    if REVERSE:
        t = lens - 1 - step
    else:
        t = tl.zeros_like(offs_b) + step
    t = tl.where(active, t, 0)
    return active, t


# ----------------------------------------------------------------------------------------------
# Matmul: C = A @ B (+ bias), any strides, float32 accumulation


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K,
                  stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                  HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        b = tl.load(b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=(offs_k[:, None] < K) & (offs_n[None, :] < N), other=0.0)
        if UPCAST:  # mixed dtypes (float32 gate grads times half inputs): dot in float32
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc += tl.dot(a, b, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn,
             acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def matmul(a, b, out, bias=None):
    """out[M, N] = a[M, K] @ b[K, N] (+ bias[N]); a and b may be transposed views (any strides).
    Returns out."""
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return out
    upcast = a.dtype != b.dtype or a.dtype == torch.float32
    BLOCK_M, BLOCK_N, BLOCK_K = pow2_block(M), pow2_block(N), pow2_block(K, hi=32)
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    matmul_kernel[grid](a, b, out, bias if bias is not None else out, M, N, K,
                        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                        out.stride(0), out.stride(1),
                        HAS_BIAS=bias is not None, UPCAST=upcast,
                        PRECISION=dot_precision(a.dtype),
                        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=NUM_WARPS)
    return out


@triton.jit
def colsum_kernel(a_ptr, out_ptr, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[n] = sum_m a[m, n] for a contiguous (M, N) a, float32 accumulation."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        tile = tl.load(a_ptr + offs_m[:, None] * N + offs_n[None, :],
                       mask=(offs_m[:, None] < M) & (offs_n[None, :] < N), other=0.0)
        acc += tl.sum(tile.to(tl.float32), axis=0)
    tl.store(out_ptr + offs_n, acc.to(out_ptr.dtype.element_ty), mask=offs_n < N)


def colsum(a, out):
    """out[N] = a.sum(0) for a contiguous (M, N) a. Returns out."""
    M, N = a.shape
    if N == 0:
        return out
    BLOCK_N = pow2_block(N)
    colsum_kernel[(triton.cdiv(N, BLOCK_N),)](a, out, M, N, BLOCK_M=32, BLOCK_N=BLOCK_N)
    return out


def input_projection(x, w_ih, b_ih):
    """xproj (T, B, G*H) float32 = x @ w_ih^T + b_ih for every step at once."""
    T, B, I = x.shape
    GH = w_ih.shape[0]
    xproj = new_buffer((T, B, GH), torch.float32, x.device)
    matmul(x.reshape(T * B, I), w_ih.t(), xproj.view(T * B, GH), bias=b_ih)
    return xproj



# ----------------------------------------------------------------------------------------------
# Gate and state tiles (shared with rnn_persistent.py and rnn_bwd.py)


@triton.jit
def bias_slice(b_ptr, gate, offs_h, H):
    """b[gate*H + offs_h] as a float32 (1, BLOCK_H) row."""
    return tl.load(b_ptr + gate * H + offs_h, mask=offs_h < H, other=0.0).to(tl.float32)[None, :]


@triton.jit
def input_gates(xproj_ptr, row, offs_h, mask, H, G: tl.constexpr):
    """gx: for each gate k, xproj[t, b, k*H + offs_h] (x @ w_ih^T + b_ih). row[b] = t*B + b."""
    gx = ()
    for k in tl.static_range(G):
        gx = gx + (tl.load(xproj_ptr + row[:, None] * (G * H) + (k * H + offs_h)[None, :],
                           mask=mask, other=0.0),)
    return gx


@triton.jit
def select(keep, new, old):
    """Per element, the tuple `new` where keep, else `old` (rows past their length keep their
    state)."""
    out = ()
    for k in tl.static_range(len(new)):
        out = out + (tl.where(keep, new[k], old[k]),)
    return out


@triton.jit
def load_other_states(c_ptr, idx, mask, B, H, S: tl.constexpr):
    """The states after h (LSTM: c), from their float32 (S-1, B, H) array; () when S = 1."""
    out = ()
    for s in tl.static_range(1, S):
        out = out + (tl.load(c_ptr + (s - 1) * B * H + idx, mask=mask, other=0.0),)
    return out


@triton.jit
def store_other_states(c_ptr, idx, mask, values, B, H):
    for s in tl.static_range(len(values)):
        tl.store(c_ptr + s * B * H + idx, values[s], mask=mask)


@triton.jit
def out_rows(row, step, offs_b, active, B):
    """The (t, b) rows this step writes y and ws at: t for active rows, step for the others."""
    return tl.where(active, row, step * B + offs_b.to(tl.int64))


@triton.jit
def store_y(y_ptr, row, step, offs_b, offs_h, mask, active, h, B, H):
    """y[t] = h for active rows; a row past its length zeroes y at t = step instead (every
    position past a length is zeroed exactly once). Returns the rows written, for ws."""
    out_row = out_rows(row, step, offs_b, active, B)
    tl.store(y_ptr + out_row[:, None] * H + offs_h[None, :],
             tl.where(active[:, None], h, 0.0).to(y_ptr.dtype.element_ty), mask=mask)
    return out_row


@triton.jit
def store_ws(ws_ptr, out_row, offs_h, mask, active, ws, H):
    """ws[t, b, slot*H + j] = ws[slot] for every slot of the cell's workspace where the row is
    active, else 0 (out_row from store_y)."""
    NSLOT: tl.constexpr = len(ws)
    for slot in tl.static_range(NSLOT):
        ptrs = ws_ptr + out_row[:, None] * (NSLOT * H) + (slot * H + offs_h)[None, :]
        tl.store(ptrs, tl.where(active[:, None], ws[slot], 0.0), mask=mask)


# ----------------------------------------------------------------------------------------------
# The per-step kernel


@triton.jit
def hidden_matmul(h_ptr, w_ptr, gate, offs_b, offs_n, B, N, K, acc, PRECISION: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """acc + h[offs_b, :] @ w[gate*N + offs_n, :]^T for a float32 h (B, K) and a w (rows, K),
    looping over K in tiles (w_hh: N = H, K = h's width; w_hr: N = P, K = H)."""
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        h = tl.load(h_ptr + offs_b[:, None].to(tl.int64) * K + offs_k[None, :],
                    mask=(offs_b[:, None] < B) & (offs_k[None, :] < K), other=0.0)
        rows = (gate * N + offs_n).to(tl.int64)
        w = tl.load(w_ptr + rows[None, :] * K + offs_k[:, None],
                    mask=(offs_n[None, :] < N) & (offs_k[:, None] < K), other=0.0)
        acc += tl.dot(h, w.to(tl.float32), input_precision=PRECISION)
    return acc


@triton.jit
def hidden_gates(h_ptr, w_ptr, b_ptr, offs_b, offs_h, B, H, P, G: tl.constexpr,
                 PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """gh: for each gate k, h @ w_hh[k*H + offs_h, :]^T + b_hh[k*H + offs_h]; h (B, P), P = H
    unless the LSTM has a projection."""
    gh = ()
    for k in tl.static_range(G):
        # the bias starts the accumulator: compiled for sm_90 this keeps every cell's step
        # kernel free of spills (adding it after the matmul spilled 4 B for the GRU)
        acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32) + bias_slice(b_ptr, k, offs_h, H)
        gh = gh + (hidden_matmul(h_ptr, w_ptr, k, offs_b, offs_h, B, H, P, acc, PRECISION,
                                 BLOCK_K),)
    return gh


@triton.jit
def rnn_step_kernel(xproj_ptr, w_hh_ptr, b_hh_ptr, h_in_ptr, h_out_ptr, c_ptr, y_ptr, ws_ptr,
                    len_ptr, step, T, B, H, P, CELL: tl.constexpr,
                    HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, NEED_WS: tl.constexpr,
                    HAS_PROJ: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """One time step of any cell (kernels/rnn_cells.py) for a (BLOCK_B, BLOCK_H) tile: h (B, P)
    is read from h_in and written to h_out, the other states (c) are updated in place in c_ptr
    (S-1, B, H). HAS_PROJ (the LSTM's projection, P < H): h_out gets the unprojected
    u = o * tanh(c) (B, H) of every row and y is left to rnn_proj_kernel."""
    G: tl.constexpr = num_gates(CELL)
    S: tl.constexpr = num_states(CELL)
    # h's width: without a projection H itself (P is not read; the compiled code is the same)
    if HAS_PROJ:
        K = P
    else:
        K = H
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    active, t = step_rows(step, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    row = t.to(tl.int64) * B + offs_b
    # all gates of these hidden units in one program: no gate tensor goes through memory
    gh = hidden_gates(h_in_ptr, w_hh_ptr, b_hh_ptr, offs_b, offs_h, B, H, K, G, PRECISION,
                      BLOCK_B, BLOCK_H, BLOCK_K)
    gx = input_gates(xproj_ptr, row, offs_h, mask, H, G)
    idx = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    if HAS_PROJ:  # (the LSTM's cell math does not read h_prev but through w_hh)
        h_old = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    else:
        h_old = tl.load(h_in_ptr + idx, mask=mask, other=0.0)
    old = (h_old,) + load_other_states(c_ptr, idx, mask, B, H, S)
    new, ws = cell_forward(CELL, gx, gh, old)
    kept = select(active[:, None], new, old)
    # (this order of the stores keeps the bfloat16 LSTM/GRU step kernels free of spills on sm_90)
    if HAS_PROJ:
        tl.store(h_out_ptr + idx, new[0], mask=mask)
    else:
        tl.store(h_out_ptr + idx, kept[0], mask=mask)
    store_other_states(c_ptr, idx, mask, kept[1:], B, H)
    if HAS_PROJ:
        out_row = out_rows(row, step, offs_b, active, B)
    else:
        out_row = store_y(y_ptr, row, step, offs_b, offs_h, mask, active, new[0], B, H)
    if NEED_WS:
        store_ws(ws_ptr, out_row, offs_h, mask, active, ws, H)


@triton.jit
def rnn_proj_kernel(u_ptr, w_hr_ptr, h_in_ptr, h_out_ptr, y_ptr, len_ptr, step, T, B, H, P,
                    HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """The LSTM projection of one step, for a (BLOCK_B, BLOCK_P) tile: h = u @ w_hr^T with u
    (B, H) the step kernel's o * tanh(c) and w_hr (P, H); h_out = h where the row is active,
    else h_in (the state is carried), and y[t] = h (store_y)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    active, t = step_rows(step, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
    mask = (offs_b[:, None] < B) & (offs_p[None, :] < P)
    h = hidden_matmul(u_ptr, w_hr_ptr, 0, offs_b, offs_p, B, P, H,
                      tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32), PRECISION, BLOCK_K)
    idx = offs_b[:, None].to(tl.int64) * P + offs_p[None, :]
    h_old = tl.load(h_in_ptr + idx, mask=mask, other=0.0)
    tl.store(h_out_ptr + idx, tl.where(active[:, None], h, h_old), mask=mask)
    store_y(y_ptr, t.to(tl.int64) * B + offs_b, step, offs_b, offs_p, mask, active, h, B, P)


# ----------------------------------------------------------------------------------------------
# Launchers


def other_states(states, B, H, device):
    """The states after h (LSTM: c) as one float32 (S-1, B, H) copy the kernels may update."""
    if len(states) == 1:
        return torch.zeros((0, B, H), dtype=torch.float32, device=device)
    return torch.stack([s.float() for s in states[1:]])


def or_dummy(t, dummy):
    """t, or `dummy` for a pointer argument the kernel does not read (an empty t)."""
    return t if t is not None and t.numel() > 0 else dummy


def _run_steps(cell, T, B, H, P, lengths, reverse, need_ws, args_for, proj_args_for=None):
    """Launch rnn_step_kernel once per step; args_for(step) gives the step's pointer arguments.
    With proj_args_for (the LSTM's projection), rnn_proj_kernel follows each step with the
    pointers it gives."""
    BLOCK_B, BLOCK_H, BLOCK_K = 16, pow2_block(H), pow2_block(P, hi=32)
    if proj_args_for is not None:  # with HAS_PROJ, BLOCK_K = 32 spills 4 B in bfloat16 on sm_90
        BLOCK_K = 16
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(H, BLOCK_H))
    flags = dict(HAS_LENGTHS=lengths is not None, REVERSE=bool(reverse),
                 PRECISION=dot_precision(torch.float32), num_warps=NUM_WARPS)
    BLOCK_P, BLOCK_KP = pow2_block(P), pow2_block(H, hi=32)
    proj_grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(P, BLOCK_P))
    for step in range(T):
        rnn_step_kernel[grid](*args_for(step), lengths, step, T, B, H, P, CELL=cell,
                              NEED_WS=need_ws, HAS_PROJ=proj_args_for is not None,
                              BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K, **flags)
        if proj_args_for is not None:
            rnn_proj_kernel[proj_grid](*proj_args_for(step), lengths, step, T, B, H, P,
                                       BLOCK_B=BLOCK_B, BLOCK_P=BLOCK_P, BLOCK_K=BLOCK_KP,
                                       **flags)


def forward_steps(cell, x, w_ih, w_hh, b_ih, b_hh, states, lengths, reverse, need_ws,
                  w_hr=None):
    """(y, final states, ws) of `cell` (a name in kernels/rnn_cells.CELLS) with one fused
    launch per step (two with w_hr, the LSTM's projection (P, H): h, y and w_hh's columns then
    have P features). states: the initial (h0,) or (h0, c0); the final ones come back float32."""
    spec = CELLS[cell]
    T, B, _ = x.shape
    H, P = w_hh.shape[0] // spec.gates, w_hh.shape[1]
    y = new_buffer((T, B, P), x.dtype, x.device)
    ws = new_buffer((T, B, spec.ws_slots * H), torch.float32, x.device) if need_ws else None
    h_bufs = [states[0].float().clone(), new_buffer((B, P), torch.float32, x.device)]
    others = other_states(states, B, H, x.device)
    if T == 0 or B == 0:
        return y, (h_bufs[0],) + tuple(others), ws
    xproj = input_projection(x, w_ih, b_ih)
    # with the projection the step kernel writes u = o * tanh(c) here, rnn_proj_kernel h
    u = new_buffer((B, H), torch.float32, x.device) if w_hr is not None else None

    def args_for(step):
        h_out = h_bufs[(step + 1) % 2] if u is None else u
        return (xproj, w_hh, b_hh, h_bufs[step % 2], h_out, or_dummy(others, y), y,
                or_dummy(ws, y))

    def proj_args_for(step):
        return (u, w_hr, h_bufs[step % 2], h_bufs[(step + 1) % 2], y)

    _run_steps(cell, T, B, H, P, lengths, reverse, need_ws, args_for,
               proj_args_for if w_hr is not None else None)
    return y, (h_bufs[T % 2],) + tuple(others), ws
