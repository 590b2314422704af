"""The recurrent cells, one description each; the kernels are generic over them.

kernels/rnn_cell.py (per-step forward), rnn_persistent.py (persistent forward) and rnn_bwd.py
(backward) each have ONE kernel, which takes the cell's name as `CELL: tl.constexpr` and calls
the dispatch functions at the bottom of this file for everything that differs between cells.
The kernels own the data movement (the h @ w_hh^T matmuls, lengths and reverse, y, the
workspace, the carried state); a cell owns only pointwise math on (batch rows, hidden units)
tiles of float32.

A cell with G gates has w_ih (G*H, I), w_hh (G*H, H), b_ih/b_hh (G*H,), gate k in rows
[k*H, (k+1)*H). The kernels hand the cell, per gate k, its two pre-activations separately
(the GRU needs them apart: n = tanh(gx + r * gh)):
    gx[k] = x_t @ w_ih[k]^T + b_ih[k]        gh[k] = h_prev @ w_hh[k]^T + b_hh[k]
Per cell:
  CELLS[name] = Cell(gates, states, ws_slots, split_dgh)  (the launchers size buffers from it)
  <cell>_forward(gx, gh, state) -> (new_state, ws)
      state: tuple of the carried states, state[0] = h (what y holds), e.g. (h, c);
      ws: the ws_slots tiles the backward reads, kept in a float32 (T, B, ws_slots*H) array.
  <cell>_backward(dstate, ws, prev) -> (dgx, dgh, dprev)
      dstate: the loss gradient of this step's new state (dstate[0] already holds dy_t and
      what later steps sent back through w_hh); ws: this step's workspace; prev: the state it
      started from. dgx/dgh: the gradients of gx[k]/gh[k] (one tuple twice unless split_dgh);
      dprev: what reaches prev other than through w_hh (the kernel adds dgh @ w_hh).
  <cell>_saved_state(ws_ptr, y_ptr, row, offs_h, mask, H) -> the state after the step at
      `row` (t*B + b), rebuilt from the workspace (or y) for the backward's prev.
Adding a cell is these three functions, its CELLS entry and a branch in each dispatch function.
"""
from dataclasses import dataclass

import triton
import triton.language as tl


@dataclass(frozen=True)
class Cell:
    gates: int        # G
    states: int       # carried states: 1 (h) or more (h, c, ...); the kernels keep all in float32
    ws_slots: int     # workspace (T, B, ws_slots * H), float32
    split_dgh: bool   # the h-side gate gradients differ from the x-side ones (GRU's n gate)


CELLS = {
    "lstm": Cell(gates=4, states=2, ws_slots=5, split_dgh=False),      # ws: i, f, g, o, c_t
    "gru": Cell(gates=3, states=1, ws_slots=4, split_dgh=True),        # ws: r, z, n, gh_n
    "rnn_tanh": Cell(gates=1, states=1, ws_slots=1, split_dgh=False),  # ws: h_t
    "rnn_relu": Cell(gates=1, states=1, ws_slots=1, split_dgh=False),  # ws: h_t
}


# The description as compile-time constants inside the kernels (G: tl.constexpr = ...). Triton's
# kernel cache is keyed on the jit sources and the CELL name, not on CELLS' numbers: an entry
# changes together with its cell's functions (the tuples they take and return), never alone.
@triton.constexpr_function
def num_gates(cell):
    return CELLS[cell].gates


@triton.constexpr_function
def num_states(cell):
    return CELLS[cell].states


@triton.constexpr_function
def num_ws_slots(cell):
    return CELLS[cell].ws_slots


@triton.constexpr_function
def splits_dgh(cell):
    return CELLS[cell].split_dgh


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
def load_slot(ptr, row, slot, offs_h, mask, H, NSLOT: tl.constexpr):
    """ptr[row, slot*H + offs_h] of a (rows, NSLOT*H) array, as float32."""
    return tl.load(ptr + row[:, None] * (NSLOT * H) + (slot * H + offs_h)[None, :], mask=mask,
                   other=0.0).to(tl.float32)


# ----------------------------------------------------------------------------------------------
# LSTM: gates i, f, g, o; state (h, c)


@triton.jit
def lstm_forward(gx, gh, state):
    i = sigmoid(gx[0] + gh[0])
    f = sigmoid(gx[1] + gh[1])
    g = tanh(gx[2] + gh[2])
    o = sigmoid(gx[3] + gh[3])
    c = f * state[1] + i * g
    h = o * tanh(c)
    return (h, c), (i, f, g, o, c)


@triton.jit
def lstm_backward(dstate, ws, prev):
    i, f, g, o, c = ws
    tanh_c = tanh(c)
    dc = dstate[1] + dstate[0] * o * (1.0 - tanh_c * tanh_c)
    dg = (dc * g * i * (1.0 - i), dc * prev[1] * f * (1.0 - f), dc * i * (1.0 - g * g),
          dstate[0] * tanh_c * o * (1.0 - o))
    # h_prev reaches this step only through w_hh; c_prev through f
    return dg, dg, (tl.zeros_like(c), dc * f)


@triton.jit
def lstm_saved_state(ws_ptr, y_ptr, row, offs_h, mask, H):
    # the forward's float32 h (y may be half precision), recomputed exactly as it did
    o = load_slot(ws_ptr, row, 3, offs_h, mask, H, 5)
    c = load_slot(ws_ptr, row, 4, offs_h, mask, H, 5)
    return (o * tanh(c), c)


# ----------------------------------------------------------------------------------------------
# GRU (torch.nn.GRU): gates r, z, n; state (h,); n = tanh(gx_n + r * gh_n)


@triton.jit
def gru_forward(gx, gh, state):
    r = sigmoid(gx[0] + gh[0])
    z = sigmoid(gx[1] + gh[1])
    n = tanh(gx[2] + r * gh[2])
    h = (1.0 - z) * n + z * state[0]
    return (h,), (r, z, n, gh[2])


@triton.jit
def gru_backward(dstate, ws, prev):
    r, z, n, gh_n = ws
    dh = dstate[0]
    d_n = dh * (1.0 - z) * (1.0 - n * n)     # of n's pre-activation gx_n + r * gh_n
    d_r = d_n * gh_n * r * (1.0 - r)
    d_z = dh * (prev[0] - n) * z * (1.0 - z)
    # gh_n enters through r * gh_n; h_prev also reaches h directly through z * h_prev
    return (d_r, d_z, d_n), (d_r, d_z, d_n * r), (dh * z,)


@triton.jit
def gru_saved_state(ws_ptr, y_ptr, row, offs_h, mask, H):
    # the workspace has no h: y (in the input dtype) is the forward's h
    return (load_slot(y_ptr, row, 0, offs_h, mask, H, 1),)


# ----------------------------------------------------------------------------------------------
# Elman (torch.nn.RNN): one gate; h' = act(gx + gh), act tanh or relu; state (h,)


@triton.jit
def elman_forward(gx, gh, state, RELU: tl.constexpr):
    a = gx[0] + gh[0]
    if RELU:
        h = tl.maximum(a, 0.0)
    else:
        h = tanh(a)
    return (h,), (h,)


@triton.jit
def elman_backward(dstate, ws, prev, RELU: tl.constexpr):
    # both derivatives are functions of the output h (relu: masked by h > 0, as torch does)
    h = ws[0]
    if RELU:
        da = tl.where(h > 0.0, dstate[0], 0.0)
    else:
        da = dstate[0] * (1.0 - h * h)
    return (da,), (da,), (tl.zeros_like(h),)


@triton.jit
def elman_saved_state(ws_ptr, y_ptr, row, offs_h, mask, H):
    return (load_slot(ws_ptr, row, 0, offs_h, mask, H, 1),)


# ----------------------------------------------------------------------------------------------
# Dispatch: CELL is a tl.constexpr, so each kernel compiles only its cell's branch


@triton.jit
def cell_forward(CELL: tl.constexpr, gx, gh, state):
    if CELL == "lstm":
        return lstm_forward(gx, gh, state)
    elif CELL == "gru":
        return gru_forward(gx, gh, state)
    else:
        tl.static_assert(CELL == "rnn_tanh" or CELL == "rnn_relu")
        return elman_forward(gx, gh, state, CELL == "rnn_relu")


@triton.jit
def cell_backward(CELL: tl.constexpr, dstate, ws, prev):
    if CELL == "lstm":
        return lstm_backward(dstate, ws, prev)
    elif CELL == "gru":
        return gru_backward(dstate, ws, prev)
    else:
        tl.static_assert(CELL == "rnn_tanh" or CELL == "rnn_relu")
        return elman_backward(dstate, ws, prev, CELL == "rnn_relu")


@triton.jit
def saved_state(CELL: tl.constexpr, ws_ptr, y_ptr, row, offs_h, mask, H):
    if CELL == "lstm":
        return lstm_saved_state(ws_ptr, y_ptr, row, offs_h, mask, H)
    elif CELL == "gru":
        return gru_saved_state(ws_ptr, y_ptr, row, offs_h, mask, H)
    else:
        tl.static_assert(CELL == "rnn_tanh" or CELL == "rnn_relu")
        return elman_saved_state(ws_ptr, y_ptr, row, offs_h, mask, H)
