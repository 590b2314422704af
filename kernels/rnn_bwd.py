"""Recurrent backward through time, for every cell of kernels/rnn_cells.py (CELL a
tl.constexpr).

Per step (processing steps s = T-1 down to 0), one fused launch of rnn_bwd_step_kernel: each
program owns a block of batch rows and hidden units j and
  1. finishes dh for its units: dh[b, j] = carry[b, j] + sum_k dGh_{s+1}[b, k] * w_hh[k, j]
     (dGh_{s+1}: the hidden-side gate gradients the previous launch wrote, read at each row's
     own time index; zero where step s+1 was inactive for the row);
  2. applies the cell's pointwise backward for all gates of its units (reading the forward's
     workspace) and writes this step's gate gradients dGx_s/dGh_s for the next launch and the
     weight gradients; carry (dh) and dc (the other states' gradients, the LSTM's dc), which
     hold what flows to the previous step other than through w_hh, are updated in place (a
     program reads and writes only its own elements).
An inactive row (past its length) passes carry and dc through unchanged and writes no gradient.
A last launch (FINAL) turns carry + dGh_0 @ w_hh into dh0. (kernels/rnn_persistent_bwd.py runs
the same steps, their pointwise part through the same cell_step_backward, in ONE persistent
launch when each program's columns of w_hh fit on chip; backward's run_steps takes it.)

Then the weight gradients are large matmuls over all T*B rows at once (kernels/rnn_cell.py's
matmul/colsum): dW_ih = dGx^T x, dW_hh = dGh^T h_prev, db_ih = sum dGx, db_hh = sum dGh,
dx = dGx @ w_ih. The input-side and hidden-side gate gradients are one buffer unless the cell
splits them (Cell.split_dgh: the GRU's n gate, dGx holds d(xn), dGh d(W_hn h + b_hn) =
r * d(xn)). The h_prev of every step goes to its own (T, B, H) buffer for dW_hh; it comes from
the cell's saved_state (the workspace, or y).

The LSTM projection (w_hr (P, H), 0 < P < H; h, dh, y and w_hh's columns have P features):
h = u @ w_hr^T with u = o * tanh(c), so part 1 happens on the P units of h and part 2 on the H
units of the cell, and each step takes two launches (PHASE 1, then 2; PHASE 0 is the one launch
without a projection):
  PHASE 1 (grid over P): dh as in 1. (w_hh (G*H, P)), dh_t = dh + dy_t to dht (T, B, P); the
     carry keeps only what passes rows past their length (h_prev reaches an LSTM step only
     through w_hh); h_prev for dW_hh is y of the previous step (as the GRU's);
  PHASE 2 (grid over H): the cell's backward with d(u) = dh_t @ w_hr in place of dh, and
     u = o * tanh(c_t) (the cell's saved_state) to u (T, B, H);
  then dW_hr = dht^T u, one matmul over all T*B rows. The FINAL launch runs as PHASE 1.
"""
import torch
import triton
import triton.language as tl

from seqcore.kernels import rnn_cell
from seqcore.kernels.rnn_cell import (NUM_WARPS, colsum, dot_precision, load_other_states,
                                      matmul, or_dummy, other_states, pow2_block, select,
                                      step_rows, store_other_states)
from seqcore.kernels.rnn_cells import (CELLS, cell_backward, load_slot, num_gates, num_states,
                                       num_ws_slots, saved_state, splits_dgh)


@triton.jit
def rows_matmul(a_ptr, row, row_ok, w_ptr, offs_n, K, N, PRECISION: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """a[row, :] @ w[:, offs_n] for a float32 a (rows, K) and a w (K, N); zero where not
    row_ok."""
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + row[:, None] * K + offs_k[None, :],
                    mask=row_ok[:, None] & (offs_k[None, :] < K), other=0.0)
        w = tl.load(w_ptr + offs_k[:, None].to(tl.int64) * N + offs_n[None, :],
                    mask=(offs_k[:, None] < K) & (offs_n[None, :] < N), other=0.0)
        acc += tl.dot(a, w.to(tl.float32), input_precision=PRECISION)
    return acc


@triton.jit
def later_grad(dg_ptr, w_ptr, step, len_ptr, offs_b, offs_h, B, T, H, P, G: tl.constexpr,
               HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """dG_{step+1}[b, :] @ w_hh[:, offs_h]: the gradient step+1 sends into h through w_hh
    (G*H, P)."""
    next_active, t_next = step_rows(step + 1, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
    row = t_next.to(tl.int64) * B + offs_b
    return rows_matmul(dg_ptr, row, next_active, w_ptr, offs_h, G * H, P, PRECISION, BLOCK_B,
                       BLOCK_H, BLOCK_K)


@triton.jit
def prev_rows(step, active, len_ptr, offs_b, B, T, HAS_LENGTHS: tl.constexpr,
              REVERSE: tl.constexpr):
    """(has_prev, row of step-1) per batch row: has_prev is False at the first step."""
    _, t_prev = step_rows(step - 1, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
    has_prev = active & (step > 0)
    t_prev = tl.where(has_prev, t_prev, 0)
    return has_prev, t_prev.to(tl.int64) * B + offs_b


@triton.jit
def store_slot(ptr, row, slot, offs_h, mask, value, H, NSLOT: tl.constexpr):
    tl.store(ptr + row[:, None] * (NSLOT * H) + (slot * H + offs_h)[None, :], value, mask=mask)


@triton.jit
def store_gates(ptr, row, offs_h, mask, dg, H):
    """ptr[t, b, k*H + offs_h] = dg[k] for every gate k of a (T, B, G*H) array."""
    G: tl.constexpr = len(dg)
    for k in tl.static_range(G):
        tl.store(ptr + row[:, None] * (G * H) + (k * H + offs_h)[None, :], dg[k], mask=mask)


@triton.jit
def cell_step_backward(CELL: tl.constexpr, dstate, dgx_ptr, dgh_ptr, ws_ptr, y_ptr, h0_ptr,
                       c0_ptr, idx, row, prow, prev, live, mask, offs_h, B, H,
                       NO_H0: tl.constexpr):
    """The cell's pointwise backward of one step on a (rows, units) tile (shared by the
    per-step and the persistent kernel): reads the step's workspace at `row` and the state it
    started from (the previous step's at `prow` where `prev`, else the initial h0 (B, H) and
    c0 (S-1, B, H)), writes the gate gradients dGx (and dGh if the cell splits them) at `row`
    where `live`. dstate: the gradients of the step's new states. Returns (dprev, state_prev).
    NO_H0: the initial h is taken as zero (the projection's phase 2: h0 is P wide there, and the
    LSTM's backward does not read h_prev)."""
    S: tl.constexpr = num_states(CELL)
    NSLOT: tl.constexpr = num_ws_slots(CELL)
    ws = ()
    for slot in tl.static_range(NSLOT):
        ws = ws + (load_slot(ws_ptr, row, slot, offs_h, live, H, NSLOT),)
    # the state this step started from: the previous step's, or the initial one
    if NO_H0:
        h0 = tl.zeros_like(dstate[0])
    else:
        h0 = tl.load(h0_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    initial = (h0,) + load_other_states(c0_ptr, idx, mask, B, H, S)
    state_prev = select(prev, saved_state(CELL, ws_ptr, y_ptr, prow, offs_h, mask & prev, H),
                        initial)
    dgx, dgh, dprev = cell_backward(CELL, dstate, ws, state_prev)
    store_gates(dgx_ptr, row, offs_h, live, dgx, H)
    if splits_dgh(CELL):
        store_gates(dgh_ptr, row, offs_h, live, dgh, H)
    return dprev, state_prev


@triton.jit
def rnn_bwd_step_kernel(dgx_ptr, dgh_ptr, w_hh_ptr, ws_ptr, dy_ptr, y_ptr, h0_ptr, c0_ptr,
                        carry_ptr, dc_ptr, hprev_ptr, dh0_ptr, w_hr_ptr, dht_ptr, u_ptr,
                        len_ptr, step, T, B, H, P, CELL: tl.constexpr,
                        HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, FINAL: tl.constexpr,
                        PHASE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                        BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """Processing step `step` of any cell's backward (see the module docstring); carry holds
    dh (B, P), dc (S-1, B, H) the other states' gradients, c0 (S-1, B, H) their initial values.
    PHASE 0: no projection (P = H); 1 and 2: the LSTM's projection, h's units, then the cell's
    (w_hr, dht, u are read only there)."""
    G: tl.constexpr = num_gates(CELL)
    S: tl.constexpr = num_states(CELL)
    tl.static_assert(PHASE == 0 or CELL == "lstm")
    # the units this program owns: h's (P of them) in phases 0 and 1, the cell's (H) in phase 2
    if PHASE == 2:
        W = H
    else:
        W = P
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < W)
    idx = offs_b[:, None].to(tl.int64) * W + offs_h[None, :]
    if PHASE < 2:
        dh = tl.load(carry_ptr + idx, mask=mask, other=0.0)
        dh += later_grad(dgh_ptr, w_hh_ptr, step, len_ptr, offs_b, offs_h, B, T, H, P, G,
                         HAS_LENGTHS, REVERSE, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    if FINAL:
        tl.store(dh0_ptr + idx, dh, mask=mask)
    else:
        active, t = step_rows(step, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
        row = t.to(tl.int64) * B + offs_b
        has_prev, prow = prev_rows(step, active, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
        keep = active[:, None]
        live = mask & keep
        prev = has_prev[:, None]
        if PHASE < 2:
            dh_tot = dh + load_slot(dy_ptr, row, 0, offs_h, live, P, 1)
        if PHASE == 1:
            # the h side of the projection: dh_t for phase 2 and dW_hr, h_prev (y) for dW_hh
            store_slot(dht_ptr, row, 0, offs_h, live, dh_tot, P, 1)
            h0 = tl.load(h0_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            h_prev = tl.where(prev, load_slot(y_ptr, prow, 0, offs_h, mask & prev, P, 1), h0)
            store_slot(hprev_ptr, row, 0, offs_h, live, h_prev, P, 1)
            # h_prev reaches an LSTM step only through w_hh: only rows past their length carry
            tl.store(carry_ptr + idx, tl.where(keep, 0.0, dh), mask=mask)
        else:
            if PHASE == 2:  # d(o * tanh c) from the projected h's gradient
                dh_tot = rows_matmul(dht_ptr, row, active, w_hr_ptr, offs_h, P, H, PRECISION,
                                     BLOCK_B, BLOCK_H, BLOCK_K)
            dstate = (dh_tot,) + load_other_states(dc_ptr, idx, mask, B, H, S)
            dprev, state_prev = cell_step_backward(CELL, dstate, dgx_ptr, dgh_ptr, ws_ptr, y_ptr,
                                                   h0_ptr, c0_ptr, idx, row, prow, prev, live,
                                                   mask, offs_h, B, H, PHASE == 2)
            if PHASE == 0:
                store_slot(hprev_ptr, row, 0, offs_h, live, state_prev[0], H, 1)
                # a row past its length passes its carried gradients through unchanged
                tl.store(carry_ptr + idx, tl.where(keep, dprev[0], dh), mask=mask)
            else:  # u = o * tanh(c_t), the unprojected h after this step, for dW_hr
                u = saved_state(CELL, ws_ptr, y_ptr, row, offs_h, live, H)[0]
                store_slot(u_ptr, row, 0, offs_h, live, u, H, 1)
            store_other_states(dc_ptr, idx, mask, select(keep, dprev[1:], dstate[1:]), B, H)


def _run_steps(cell, T, B, H, P, lengths, reverse, args, proj):
    """Launch the backward step kernel for s = T-1 .. 0 (with proj, phases 1 and 2 per step),
    then the FINAL launch (s = -1)."""
    BLOCK_B, BLOCK_K = 16, 32

    def launch(step, phase, units):
        BLOCK_H = pow2_block(units)
        grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(units, BLOCK_H))
        rnn_bwd_step_kernel[grid](*args, lengths, step, T, B, H, P, CELL=cell,
                                  HAS_LENGTHS=lengths is not None, REVERSE=bool(reverse),
                                  FINAL=step < 0, PHASE=phase,
                                  PRECISION=dot_precision(torch.float32), BLOCK_B=BLOCK_B,
                                  BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K, num_warps=NUM_WARPS)

    for step in range(T - 1, -1, -1):
        if proj:
            launch(step, 1, P)
            launch(step, 2, H)
        else:
            launch(step, 0, H)
    launch(-1, 1 if proj else 0, P)


def _param_grads(dgx, dgh, x, hprev, w_ih, w_hh):
    """(dx, dw_ih, dw_hh, db_ih, db_hh) in the input dtype from the gate gradients of all steps
    (hprev (T, B, P): h_prev of every step)."""
    T, B, I = x.shape
    GH, P = w_hh.shape
    rows = T * B
    dgx2, dgh2 = dgx.view(rows, GH), dgh.view(rows, GH)

    def new(*shape_):
        return rnn_cell.new_buffer(shape_, x.dtype, x.device)

    dx = matmul(dgx2, w_ih, new(T, B, I).view(rows, I))
    dw_ih = matmul(dgx2.t(), x.reshape(rows, I), new(GH, I))
    dw_hh = matmul(dgh2.t(), hprev.view(rows, P), new(GH, P))
    db_ih = colsum(dgx2, new(GH))
    db_hh = colsum(dgh2, new(GH))
    return dx.view(T, B, I), dw_ih, dw_hh, db_ih, db_hh


def backward(cell, dy, dstates, x, w_ih, w_hh, states, lengths, reverse, y, ws, w_hr=None,
             run_steps=None):
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0(, dc0)(, dw_hr)) in x's dtype for `cell` (a name in
    kernels/rnn_cells.CELLS). dstates: the gradients of the final states (dh_n,) or
    (dh_n, dc_n); states: the initial (h0,) or (h0, c0); y, ws: what the forward returned;
    w_hr: the LSTM's projection (P, H) or None (h, dh, y have P features). run_steps: what runs
    the steps (the per-step launches, _run_steps, by default; kernels/rnn_persistent_bwd.py
    passes its one persistent launch), called as _run_steps is."""
    spec = CELLS[cell]
    T, B, _ = x.shape
    H, P = w_hh.shape[0] // spec.gates, w_hh.shape[1]
    dev = x.device
    proj = w_hr is not None
    # zeros: rows past their length write no gate gradient, and the matmuls read every row
    dgx = torch.zeros((T, B, spec.gates * H), dtype=torch.float32, device=dev)
    dgh = torch.zeros_like(dgx) if spec.split_dgh else dgx
    hprev = torch.zeros((T, B, P), dtype=torch.float32, device=dev)
    # the projection's dh_t (T, B, P) and u = o * tanh(c_t) (T, B, H), for dW_hr
    dht = torch.zeros((T, B, P), dtype=torch.float32, device=dev) if proj else None
    u = torch.zeros((T, B, H), dtype=torch.float32, device=dev) if proj else None
    carry = dstates[0].float().clone()
    dc = other_states(dstates, B, H, dev)
    dh0 = carry
    if T > 0 and B > 0:
        dh0 = rnn_cell.new_buffer((B, P), torch.float32, dev)
        c0 = other_states(states, B, H, dev)
        args = (dgx, dgh, w_hh, ws, dy, y, states[0], or_dummy(c0, carry), carry,
                or_dummy(dc, carry), hprev, dh0, or_dummy(w_hr, carry), or_dummy(dht, carry),
                or_dummy(u, carry))
        (run_steps or _run_steps)(cell, T, B, H, P, lengths, reverse, args, proj)
    grads = _param_grads(dgx, dgh, x, hprev, w_ih, w_hh)
    grads = grads + (dh0.to(x.dtype),) + tuple(d.to(x.dtype) for d in dc)
    if proj:
        dw_hr = matmul(dht.view(T * B, P).t(), u.view(T * B, H),
                       rnn_cell.new_buffer((P, H), x.dtype, dev))
        grads = grads + (dw_hr,)
    return grads
