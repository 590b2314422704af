"""LSTM/GRU forward, one fused kernel launch per time step, plus the two GEMM-shaped helpers
the recurrent kernels share (a tiled matmul and a column sum).

The sequence forward is:
  1. xproj = x @ w_ih^T + b_ih for all T steps at once (one large matmul, float32 out);
  2. per step, one launch of lstm_step_kernel / gru_step_kernel: each program owns a block of
     batch rows and a block of hidden units for ALL gates, so it computes h @ w_hh^T for those
     gate columns and applies the gate math in registers: no gate tensor goes through memory.

State (h, c) is kept in float32. h is ping-ponged between two buffers because every program
reads all of h_prev while others write h_new; c is updated in place (a program reads and writes
only its own elements).

lengths / reverse: at processing step s, batch row b is active iff s < len_b and then works on
time t = s (forward) or t = len_b - 1 - s (reverse). An inactive row keeps its state and writes
zeros to y (and the workspace) at t = s, so every (t, b) of y is written exactly once.
"""
import os

import torch
import triton
import triton.language as tl


def dot_precision(dtype):
    """tl.dot input_precision: exact "ieee" float32 products unless SEQCORE_TF32=1 asks for
    TensorFloat-32 (faster on GPU, ~1e-3 relative). The recurrent kernels always dot in float32
    (the float32 state times the weights), so this applies to every input dtype."""
    return "tf32" if os.environ.get("SEQCORE_TF32", "0") == "1" else "ieee"


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
# Shared element-wise helpers


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # exp2 overflowing to inf gives exactly +-1, so no clamping is needed
    return 1.0 - 2.0 / (tl.exp2(x * 2.8853900817779268) + 1.0)


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
# Per-step kernels


@triton.jit
def hidden_matmul(h_ptr, w_ptr, gate, offs_b, offs_h, B, H, acc, PRECISION: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """acc + h[offs_b, :] @ w_hh[gate*H + offs_h, :]^T, looping over the hidden dim in tiles."""
    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        h = tl.load(h_ptr + offs_b[:, None].to(tl.int64) * H + offs_k[None, :],
                    mask=(offs_b[:, None] < B) & (offs_k[None, :] < H), other=0.0)
        rows = (gate * H + offs_h).to(tl.int64)
        w = tl.load(w_ptr + rows[None, :] * H + offs_k[:, None],
                    mask=(offs_h[None, :] < H) & (offs_k[:, None] < H), other=0.0)
        acc += tl.dot(h, w.to(tl.float32), input_precision=PRECISION)
    return acc


@triton.jit
def gate_in(xproj_ptr, b_hh_ptr, gate, row, offs_h, mask, H, G: tl.constexpr):
    """xproj[t, b, gate*H + j] + b_hh[gate*H + j]: the part of a gate that is not h @ w_hh^T.
    row[b] = t*B + b (int64)."""
    cols = gate * H + offs_h
    xp = tl.load(xproj_ptr + row[:, None] * (G * H) + cols[None, :], mask=mask, other=0.0)
    bias = tl.load(b_hh_ptr + cols, mask=offs_h < H, other=0.0).to(tl.float32)
    return xp + bias[None, :]


@triton.jit
def lstm_cell_math(pre_i, pre_f, pre_g, pre_o, c_old):
    i = sigmoid(pre_i)
    f = sigmoid(pre_f)
    g = tanh(pre_g)
    o = sigmoid(pre_o)
    c = f * c_old + i * g
    h = o * tanh(c)
    return i, f, g, o, c, h


@triton.jit
def store_ws(ws_ptr, slot, row, offs_h, mask, value, active, H, NSLOT: tl.constexpr):
    """ws[t, b, slot*H + j] = value where active, else 0."""
    ptrs = ws_ptr + row[:, None] * (NSLOT * H) + (slot * H + offs_h)[None, :]
    tl.store(ptrs, tl.where(active[:, None], value, 0.0), mask=mask)


@triton.jit
def store_y(y_ptr, row, step, offs_b, offs_h, mask, active, h, B, H):
    """y[t] = h for active rows; a row past its length zeroes y at t = step instead (every
    position past a length is zeroed exactly once). Returns the rows written, for ws."""
    out_row = tl.where(active, row, step * B + offs_b.to(tl.int64))
    tl.store(y_ptr + out_row[:, None] * H + offs_h[None, :],
             tl.where(active[:, None], h, 0.0).to(y_ptr.dtype.element_ty), mask=mask)
    return out_row


@triton.jit
def store_lstm_ws(ws_ptr, out_row, offs_h, mask, active, i, f, g, o, c, H):
    """The gates and cell state lstm's backward reads: ws[t, b] = (i, f, g, o, c)."""
    store_ws(ws_ptr, 0, out_row, offs_h, mask, i, active, H, 5)
    store_ws(ws_ptr, 1, out_row, offs_h, mask, f, active, H, 5)
    store_ws(ws_ptr, 2, out_row, offs_h, mask, g, active, H, 5)
    store_ws(ws_ptr, 3, out_row, offs_h, mask, o, active, H, 5)
    store_ws(ws_ptr, 4, out_row, offs_h, mask, c, active, H, 5)


@triton.jit
def store_gru_ws(ws_ptr, out_row, offs_h, mask, active, r, z, n, hn, H):
    """What gru's backward reads: ws[t, b] = (r, z, n, W_hn h + b_hn)."""
    store_ws(ws_ptr, 0, out_row, offs_h, mask, r, active, H, 4)
    store_ws(ws_ptr, 1, out_row, offs_h, mask, z, active, H, 4)
    store_ws(ws_ptr, 2, out_row, offs_h, mask, n, active, H, 4)
    store_ws(ws_ptr, 3, out_row, offs_h, mask, hn, active, H, 4)


@triton.jit
def lstm_step_kernel(xproj_ptr, w_hh_ptr, b_hh_ptr, h_in_ptr, h_out_ptr, c_ptr, y_ptr, ws_ptr,
                     len_ptr, step, T, B, H,
                     HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, NEED_WS: tl.constexpr,
                     PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    active, t = step_rows(step, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    row = t.to(tl.int64) * B + offs_b
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    pre_i = hidden_matmul(h_in_ptr, w_hh_ptr, 0, offs_b, offs_h, B, H, zero, PRECISION, BLOCK_K)
    pre_f = hidden_matmul(h_in_ptr, w_hh_ptr, 1, offs_b, offs_h, B, H, zero, PRECISION, BLOCK_K)
    pre_g = hidden_matmul(h_in_ptr, w_hh_ptr, 2, offs_b, offs_h, B, H, zero, PRECISION, BLOCK_K)
    pre_o = hidden_matmul(h_in_ptr, w_hh_ptr, 3, offs_b, offs_h, B, H, zero, PRECISION, BLOCK_K)
    pre_i += gate_in(xproj_ptr, b_hh_ptr, 0, row, offs_h, mask, H, 4)
    pre_f += gate_in(xproj_ptr, b_hh_ptr, 1, row, offs_h, mask, H, 4)
    pre_g += gate_in(xproj_ptr, b_hh_ptr, 2, row, offs_h, mask, H, 4)
    pre_o += gate_in(xproj_ptr, b_hh_ptr, 3, row, offs_h, mask, H, 4)
    state = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    h_old = tl.load(h_in_ptr + state, mask=mask, other=0.0)
    c_old = tl.load(c_ptr + state, mask=mask, other=0.0)
    i, f, g, o, c, h = lstm_cell_math(pre_i, pre_f, pre_g, pre_o, c_old)
    keep = active[:, None]
    tl.store(h_out_ptr + state, tl.where(keep, h, h_old), mask=mask)
    tl.store(c_ptr + state, tl.where(keep, c, c_old), mask=mask)
    out_row = store_y(y_ptr, row, step, offs_b, offs_h, mask, active, h, B, H)
    if NEED_WS:
        store_lstm_ws(ws_ptr, out_row, offs_h, mask, active, i, f, g, o, c, H)


@triton.jit
def gru_cell_math(pre_r, pre_z, xn, hn, h_old):
    """hn = W_hn h + b_hn; xn = W_in x + b_in."""
    r = sigmoid(pre_r)
    z = sigmoid(pre_z)
    n = tanh(xn + r * hn)
    h = (1.0 - z) * n + z * h_old
    return r, z, n, h


@triton.jit
def gru_step_kernel(xproj_ptr, w_hh_ptr, b_hh_ptr, h_in_ptr, h_out_ptr, y_ptr, ws_ptr,
                    len_ptr, step, T, B, H,
                    HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, NEED_WS: tl.constexpr,
                    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    active, t = step_rows(step, len_ptr, offs_b, B, T, HAS_LENGTHS, REVERSE)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    row = t.to(tl.int64) * B + offs_b
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    pre_r = hidden_matmul(h_in_ptr, w_hh_ptr, 0, offs_b, offs_h, B, H, zero, PRECISION, BLOCK_K)
    pre_z = hidden_matmul(h_in_ptr, w_hh_ptr, 1, offs_b, offs_h, B, H, zero, PRECISION, BLOCK_K)
    hn = hidden_matmul(h_in_ptr, w_hh_ptr, 2, offs_b, offs_h, B, H, zero, PRECISION, BLOCK_K)
    pre_r += gate_in(xproj_ptr, b_hh_ptr, 0, row, offs_h, mask, H, 3)
    pre_z += gate_in(xproj_ptr, b_hh_ptr, 1, row, offs_h, mask, H, 3)
    b_hn = tl.load(b_hh_ptr + 2 * H + offs_h, mask=offs_h < H, other=0.0).to(tl.float32)
    hn += b_hn[None, :]
    xn = tl.load(xproj_ptr + row[:, None] * (3 * H) + (2 * H + offs_h)[None, :], mask=mask,
                 other=0.0)
    state = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    h_old = tl.load(h_in_ptr + state, mask=mask, other=0.0)
    r, z, n, h = gru_cell_math(pre_r, pre_z, xn, hn, h_old)
    keep = active[:, None]
    tl.store(h_out_ptr + state, tl.where(keep, h, h_old), mask=mask)
    out_row = store_y(y_ptr, row, step, offs_b, offs_h, mask, active, h, B, H)
    if NEED_WS:
        store_gru_ws(ws_ptr, out_row, offs_h, mask, active, r, z, n, hn, H)


# ----------------------------------------------------------------------------------------------
# Launchers


def _alloc_outputs(x, H, nslot, need_ws):
    T, B, _ = x.shape
    y = new_buffer((T, B, H), x.dtype, x.device)
    ws = new_buffer((T, B, nslot * H), torch.float32, x.device) if need_ws else None
    return y, ws


def _run_steps(kernel, T, B, H, lengths, reverse, need_ws, args_for):
    """Launch `kernel` once per step; args_for(step) gives the step's pointer arguments."""
    BLOCK_B, BLOCK_H, BLOCK_K = 16, pow2_block(H), pow2_block(H, hi=32)
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(H, BLOCK_H))
    for step in range(T):
        kernel[grid](*args_for(step), lengths, step, T, B, H,
                     HAS_LENGTHS=lengths is not None, REVERSE=bool(reverse), NEED_WS=need_ws,
                     PRECISION=dot_precision(torch.float32), BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H,
                     BLOCK_K=BLOCK_K, num_warps=NUM_WARPS)


def lstm_forward_steps(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, need_ws):
    """(y, h_n, c_n, ws) with one fused launch per step; h_n/c_n float32."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    y, ws = _alloc_outputs(x, H, 5, need_ws)
    h_bufs = [h0.float().clone(), new_buffer((B, H), torch.float32, x.device)]
    c = c0.float().clone()
    if T == 0 or B == 0:
        return y, h_bufs[0], c, ws
    xproj = input_projection(x, w_ih, b_ih)

    def args_for(step):
        return (xproj, w_hh, b_hh, h_bufs[step % 2], h_bufs[(step + 1) % 2], c, y,
                ws if need_ws else y)

    _run_steps(lstm_step_kernel, T, B, H, lengths, reverse, need_ws, args_for)
    return y, h_bufs[T % 2], c, ws


def gru_forward_steps(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, need_ws):
    """(y, h_n, ws) with one fused launch per step; h_n float32."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    y, ws = _alloc_outputs(x, H, 4, need_ws)
    h_bufs = [h0.float().clone(), new_buffer((B, H), torch.float32, x.device)]
    if T == 0 or B == 0:
        return y, h_bufs[0], ws
    xproj = input_projection(x, w_ih, b_ih)

    def args_for(step):
        return (xproj, w_hh, b_hh, h_bufs[step % 2], h_bufs[(step + 1) % 2], y,
                ws if need_ws else y)

    _run_steps(gru_step_kernel, T, B, H, lengths, reverse, need_ws, args_for)
    return y, h_bufs[T % 2], ws
