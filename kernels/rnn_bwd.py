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
A last launch (FINAL) turns carry + dGh_0 @ w_hh into dh0.

Then the weight gradients are large matmuls over all T*B rows at once (kernels/rnn_cell.py's
matmul/colsum): dW_ih = dGx^T x, dW_hh = dGh^T h_prev, db_ih = sum dGx, db_hh = sum dGh,
dx = dGx @ w_ih. The input-side and hidden-side gate gradients are one buffer unless the cell
splits them (Cell.split_dgh: the GRU's n gate, dGx holds d(xn), dGh d(W_hn h + b_hn) =
r * d(xn)). The h_prev of every step goes to its own (T, B, H) buffer for dW_hh; it comes from
the cell's saved_state (the workspace, or y).
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
def later_grad(dg_ptr, w_ptr, step, len_ptr, offs_b, offs_h, B, T, H, G: tl.constexpr,
               HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """dG_{step+1}[b, :] @ w_hh[:, offs_h]: the gradient step+1 sends into h through w_hh."""
    next_active, t_next = step_rows(step + 1, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
    row = t_next.to(tl.int64) * B + offs_b
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, G * H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        dg = tl.load(dg_ptr + row[:, None] * (G * H) + offs_k[None, :],
                     mask=next_active[:, None] & (offs_k[None, :] < G * H), other=0.0)
        w = tl.load(w_ptr + offs_k[:, None].to(tl.int64) * H + offs_h[None, :],
                    mask=(offs_k[:, None] < G * H) & (offs_h[None, :] < H), other=0.0)
        acc += tl.dot(dg, w.to(tl.float32), input_precision=PRECISION)
    return acc


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
def rnn_bwd_step_kernel(dgx_ptr, dgh_ptr, w_hh_ptr, ws_ptr, dy_ptr, y_ptr, h0_ptr, c0_ptr,
                        carry_ptr, dc_ptr, hprev_ptr, dh0_ptr, len_ptr, step, T, B, H,
                        CELL: tl.constexpr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
                        FINAL: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                        BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """Processing step `step` of any cell's backward (see the module docstring); carry holds
    dh, dc (S-1, B, H) the other states' gradients, c0 (S-1, B, H) their initial values."""
    G: tl.constexpr = num_gates(CELL)
    S: tl.constexpr = num_states(CELL)
    NSLOT: tl.constexpr = num_ws_slots(CELL)
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    idx = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    dh = tl.load(carry_ptr + idx, mask=mask, other=0.0)
    dh += later_grad(dgh_ptr, w_hh_ptr, step, len_ptr, offs_b, offs_h, B, T, H, G, HAS_LENGTHS,
                     REVERSE, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    if FINAL:
        tl.store(dh0_ptr + idx, dh, mask=mask)
    else:
        active, t = step_rows(step, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
        row = t.to(tl.int64) * B + offs_b
        has_prev, prow = prev_rows(step, active, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
        keep = active[:, None]
        live = mask & keep
        prev = has_prev[:, None]
        dh_tot = dh + tl.load(dy_ptr + row[:, None] * H + offs_h[None, :], mask=live,
                              other=0.0).to(tl.float32)
        dstate = (dh_tot,) + load_other_states(dc_ptr, idx, mask, B, H, S)
        ws = ()
        for slot in tl.static_range(NSLOT):
            ws = ws + (load_slot(ws_ptr, row, slot, offs_h, live, H, NSLOT),)
        # the state this step started from: the previous step's, or the initial one
        h0 = tl.load(h0_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        initial = (h0,) + load_other_states(c0_ptr, idx, mask, B, H, S)
        state_prev = select(prev, saved_state(CELL, ws_ptr, y_ptr, prow, offs_h, mask & prev, H),
                            initial)
        dgx, dgh, dprev = cell_backward(CELL, dstate, ws, state_prev)
        store_gates(dgx_ptr, row, offs_h, live, dgx, H)
        if splits_dgh(CELL):
            store_gates(dgh_ptr, row, offs_h, live, dgh, H)
        store_slot(hprev_ptr, row, 0, offs_h, live, state_prev[0], H, 1)
        # a row past its length passes its carried gradients through unchanged
        tl.store(carry_ptr + idx, tl.where(keep, dprev[0], dh), mask=mask)
        store_other_states(dc_ptr, idx, mask, select(keep, dprev[1:], dstate[1:]), B, H)


def _run_steps(cell, T, B, H, lengths, reverse, args):
    """Launch the backward step kernel for s = T-1 .. 0, then the FINAL launch (s = -1)."""
    BLOCK_B, BLOCK_H, BLOCK_K = 16, pow2_block(H), 32
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(H, BLOCK_H))
    for step in list(range(T - 1, -1, -1)) + [-1]:
        rnn_bwd_step_kernel[grid](*args, lengths, step, T, B, H, CELL=cell,
                                  HAS_LENGTHS=lengths is not None, REVERSE=bool(reverse),
                                  FINAL=step < 0, PRECISION=dot_precision(torch.float32),
                                  BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
                                  num_warps=NUM_WARPS)


def _param_grads(dgx, dgh, x, hprev, w_ih, w_hh):
    """(dx, dw_ih, dw_hh, db_ih, db_hh) in the input dtype from the gate gradients of all steps."""
    T, B, I = x.shape
    GH, H = w_hh.shape
    rows = T * B
    dgx2, dgh2 = dgx.view(rows, GH), dgh.view(rows, GH)

    def new(*shape_):
        return rnn_cell.new_buffer(shape_, x.dtype, x.device)

    dx = matmul(dgx2, w_ih, new(T, B, I).view(rows, I))
    dw_ih = matmul(dgx2.t(), x.reshape(rows, I), new(GH, I))
    dw_hh = matmul(dgh2.t(), hprev.view(rows, H), new(GH, H))
    db_ih = colsum(dgx2, new(GH))
    db_hh = colsum(dgh2, new(GH))
    return dx.view(T, B, I), dw_ih, dw_hh, db_ih, db_hh


def backward(cell, dy, dstates, x, w_ih, w_hh, states, lengths, reverse, y, ws):
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0(, dc0)) in x's dtype for `cell` (a name in
    kernels/rnn_cells.CELLS). dstates: the gradients of the final states (dh_n,) or
    (dh_n, dc_n); states: the initial (h0,) or (h0, c0); y, ws: what the forward returned."""
    spec = CELLS[cell]
    T, B, _ = x.shape
    H = w_hh.shape[1]
    dev = x.device
    # zeros: rows past their length write no gate gradient, and the matmuls read every row
    dgx = torch.zeros((T, B, spec.gates * H), dtype=torch.float32, device=dev)
    dgh = torch.zeros_like(dgx) if spec.split_dgh else dgx
    hprev = torch.zeros((T, B, H), dtype=torch.float32, device=dev)
    carry = dstates[0].float().clone()
    dc = other_states(dstates, B, H, dev)
    dh0 = carry
    if T > 0 and B > 0:
        dh0 = rnn_cell.new_buffer((B, H), torch.float32, dev)
        c0 = other_states(states, B, H, dev)
        _run_steps(cell, T, B, H, lengths, reverse,
                   (dgx, dgh, w_hh, ws, dy, y, states[0], or_dummy(c0, carry), carry,
                    or_dummy(dc, carry), hprev, dh0))
    grads = _param_grads(dgx, dgh, x, hprev, w_ih, w_hh)
    return grads + (dh0.to(x.dtype),) + tuple(d.to(x.dtype) for d in dc)
