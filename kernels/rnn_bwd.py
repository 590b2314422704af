"""LSTM/GRU backward through time.

Per step (processing steps s = T-1 down to 0), one fused launch: each program owns a block of
batch rows and hidden units j and
  1. finishes dh for its units: dh[b, j] = carry[b, j] + sum_k dG_{s+1}[b, k] * w_hh[k, j]
     (dG_{s+1}: the hidden-side gate gradients the previous launch wrote, read at each row's own
     time index; zero where step s+1 was inactive for the row);
  2. applies the pointwise gate derivatives for all gates of its units (reading the forward's
     workspace) and writes this step's gate gradients dG_s for the next launch and the weight
     gradients; carry/dc, which hold what flows to the previous step other than through w_hh,
     are updated in place (a program reads and writes only its own elements).
An inactive row (past its length) passes carry and dc through unchanged and writes no gradient.
A last launch (FINAL) turns carry + dG_0 @ w_hh into dh0.

Then the weight gradients are large matmuls over all T*B rows at once (kernels/rnn_cell.py's
matmul/colsum): dW_ih = dGx^T x, dW_hh = dGh^T h_prev, db_ih = sum dGx, db_hh = sum dGh,
dx = dGx @ w_ih. For the LSTM the input-side and hidden-side gate gradients are the same; for
the GRU they differ in the n gate (dGx holds d(xn), dGh holds d(W_hn h + b_hn) = r * d(xn)).

The workspace is what the forward kernels wrote: LSTM (i, f, g, o, c_t), GRU (r, z, n, hn).
"""
import torch
import triton
import triton.language as tl

from seqcore.kernels import rnn_cell
from seqcore.kernels.rnn_cell import (NUM_WARPS, colsum, dot_precision, matmul, pow2_block,
                                      step_rows, tanh)


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
def load_slot(ptr, row, slot, offs_h, mask, H, NSLOT: tl.constexpr):
    return tl.load(ptr + row[:, None] * (NSLOT * H) + (slot * H + offs_h)[None, :], mask=mask,
                   other=0.0).to(tl.float32)


@triton.jit
def store_slot(ptr, row, slot, offs_h, mask, value, H, NSLOT: tl.constexpr):
    tl.store(ptr + row[:, None] * (NSLOT * H) + (slot * H + offs_h)[None, :], value, mask=mask)


@triton.jit
def lstm_bwd_step_kernel(dg_ptr, w_hh_ptr, ws_ptr, dy_ptr, h0_ptr, c0_ptr, carry_ptr, dc_ptr,
                         hprev_ptr, dh0_ptr, len_ptr, step, T, B, H,
                         HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, FINAL: tl.constexpr,
                         PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    state = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    dh = tl.load(carry_ptr + state, mask=mask, other=0.0)
    dh += later_grad(dg_ptr, w_hh_ptr, step, len_ptr, offs_b, offs_h, B, T, H, 4, HAS_LENGTHS,
                     REVERSE, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    if FINAL:
        tl.store(dh0_ptr + state, dh, mask=mask)
    else:
        active, t = step_rows(step, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
        row = t.to(tl.int64) * B + offs_b
        has_prev, prow = prev_rows(step, active, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
        keep = active[:, None]
        live = mask & keep
        dh_tot = dh + tl.load(dy_ptr + row[:, None] * H + offs_h[None, :], mask=live,
                              other=0.0).to(tl.float32)
        i = load_slot(ws_ptr, row, 0, offs_h, live, H, 5)
        f = load_slot(ws_ptr, row, 1, offs_h, live, H, 5)
        g = load_slot(ws_ptr, row, 2, offs_h, live, H, 5)
        o = load_slot(ws_ptr, row, 3, offs_h, live, H, 5)
        c = load_slot(ws_ptr, row, 4, offs_h, live, H, 5)
        prev = has_prev[:, None]
        c_prev = tl.where(prev, load_slot(ws_ptr, prow, 4, offs_h, mask & prev, H, 5),
                          tl.load(c0_ptr + state, mask=mask, other=0.0).to(tl.float32))
        # the forward's float32 h_prev, recomputed exactly as the forward kernel did
        o_prev = load_slot(ws_ptr, prow, 3, offs_h, mask & prev, H, 5)
        h_prev = tl.where(prev, o_prev * tanh(c_prev),
                          tl.load(h0_ptr + state, mask=mask, other=0.0).to(tl.float32))
        tanh_c = tanh(c)
        dc_old = tl.load(dc_ptr + state, mask=mask, other=0.0)
        dc_tot = dc_old + dh_tot * o * (1.0 - tanh_c * tanh_c)
        store_slot(dg_ptr, row, 0, offs_h, live, dc_tot * g * i * (1.0 - i), H, 4)
        store_slot(dg_ptr, row, 1, offs_h, live, dc_tot * c_prev * f * (1.0 - f), H, 4)
        store_slot(dg_ptr, row, 2, offs_h, live, dc_tot * i * (1.0 - g * g), H, 4)
        store_slot(dg_ptr, row, 3, offs_h, live, dh_tot * tanh_c * o * (1.0 - o), H, 4)
        store_slot(hprev_ptr, row, 0, offs_h, live, h_prev, H, 1)
        tl.store(dc_ptr + state, tl.where(keep, dc_tot * f, dc_old), mask=mask)
        tl.store(carry_ptr + state, tl.where(keep, 0.0, dh), mask=mask)


@triton.jit
def gru_bwd_step_kernel(dgx_ptr, dgh_ptr, w_hh_ptr, ws_ptr, dy_ptr, y_ptr, h0_ptr, carry_ptr,
                        hprev_ptr, dh0_ptr, len_ptr, step, T, B, H,
                        HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, FINAL: tl.constexpr,
                        PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    state = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    dh = tl.load(carry_ptr + state, mask=mask, other=0.0)
    dh += later_grad(dgh_ptr, w_hh_ptr, step, len_ptr, offs_b, offs_h, B, T, H, 3, HAS_LENGTHS,
                     REVERSE, PRECISION, BLOCK_B, BLOCK_H, BLOCK_K)
    if FINAL:
        tl.store(dh0_ptr + state, dh, mask=mask)
    else:
        active, t = step_rows(step, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
        row = t.to(tl.int64) * B + offs_b
        has_prev, prow = prev_rows(step, active, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
        keep = active[:, None]
        live = mask & keep
        prev = has_prev[:, None]
        dh_tot = dh + tl.load(dy_ptr + row[:, None] * H + offs_h[None, :], mask=live,
                              other=0.0).to(tl.float32)
        r = load_slot(ws_ptr, row, 0, offs_h, live, H, 4)
        z = load_slot(ws_ptr, row, 1, offs_h, live, H, 4)
        n = load_slot(ws_ptr, row, 2, offs_h, live, H, 4)
        hn = load_slot(ws_ptr, row, 3, offs_h, live, H, 4)
        # h_prev is y of the previous step (in the input dtype), or h0
        h_prev = tl.where(prev, load_slot(y_ptr, prow, 0, offs_h, mask & prev, H, 1),
                          tl.load(h0_ptr + state, mask=mask, other=0.0).to(tl.float32))
        d_xn = dh_tot * (1.0 - z) * (1.0 - n * n)
        d_r = d_xn * hn * r * (1.0 - r)
        d_z = dh_tot * (h_prev - n) * z * (1.0 - z)
        store_slot(dgx_ptr, row, 0, offs_h, live, d_r, H, 3)
        store_slot(dgx_ptr, row, 1, offs_h, live, d_z, H, 3)
        store_slot(dgx_ptr, row, 2, offs_h, live, d_xn, H, 3)
        store_slot(dgh_ptr, row, 0, offs_h, live, d_r, H, 3)
        store_slot(dgh_ptr, row, 1, offs_h, live, d_z, H, 3)
        store_slot(dgh_ptr, row, 2, offs_h, live, d_xn * r, H, 3)
        store_slot(hprev_ptr, row, 0, offs_h, live, h_prev, H, 1)
        # h_prev also reaches h directly through z * h_prev
        tl.store(carry_ptr + state, tl.where(keep, dh_tot * z, dh), mask=mask)


def _run_steps(kernel, T, B, H, lengths, reverse, args):
    """Launch the backward step kernel for s = T-1 .. 0, then the FINAL launch (s = -1)."""
    BLOCK_B, BLOCK_H, BLOCK_K = 16, pow2_block(H), 32
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(H, BLOCK_H))
    for step in list(range(T - 1, -1, -1)) + [-1]:
        kernel[grid](*args, lengths, step, T, B, H, HAS_LENGTHS=lengths is not None,
                     REVERSE=bool(reverse), FINAL=step < 0, PRECISION=dot_precision(torch.float32),
                     BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K, num_warps=NUM_WARPS)


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


def lstm_backward(dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, lengths, reverse, ws):
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0) in x's dtype."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    dev = x.device
    dg = torch.zeros((T, B, 4 * H), dtype=torch.float32, device=dev)
    hprev = torch.zeros((T, B, H), dtype=torch.float32, device=dev)
    carry = dh_n.float().clone()
    dc = dc_n.float().clone()
    dh0 = carry
    if T > 0 and B > 0:
        dh0 = rnn_cell.new_buffer((B, H), torch.float32, dev)
        _run_steps(lstm_bwd_step_kernel, T, B, H, lengths, reverse,
                   (dg, w_hh, ws, dy, h0, c0, carry, dc, hprev, dh0))
    grads = _param_grads(dg, dg, x, hprev, w_ih, w_hh)
    return grads + (dh0.to(x.dtype), dc.to(x.dtype))


def gru_backward(dy, dh_n, x, w_ih, w_hh, h0, lengths, reverse, y, ws):
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0) in x's dtype."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    dev = x.device
    dgx = torch.zeros((T, B, 3 * H), dtype=torch.float32, device=dev)
    dgh = torch.zeros((T, B, 3 * H), dtype=torch.float32, device=dev)
    hprev = torch.zeros((T, B, H), dtype=torch.float32, device=dev)
    carry = dh_n.float().clone()
    dh0 = carry
    if T > 0 and B > 0:
        dh0 = rnn_cell.new_buffer((B, H), torch.float32, dev)
        _run_steps(gru_bwd_step_kernel, T, B, H, lengths, reverse,
                   (dgx, dgh, w_hh, ws, dy, y, h0, carry, hprev, dh0))
    grads = _param_grads(dgx, dgh, x, hprev, w_ih, w_hh)
    return grads + (dh0.to(x.dtype),)
