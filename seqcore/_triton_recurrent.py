"""The "triton" recurrent backend: torch tensors in, Triton kernels (seqcore.kernels) out.

Implements lstm_fwd, lstm_bwd, gru_fwd, gru_bwd, rnn_fwd, rnn_bwd of the backend interface
(seqcore/_problem.py). Every cell runs through the same three kernels, generic over the cell
descriptions of kernels/rnn_cells.py ("lstm", "gru", and the Elman "rnn_tanh" / "rnn_relu").
State and accumulation are float32; the workspace is float32, (T, B, 5H) for the LSTM
(i, f, g, o, c_t), (T, B, 4H) for the GRU (r, z, n, W_hn h + b_hn) and (T, B, H) for the Elman
cell (h_t); outputs and gradients come back in the input dtype (float16, bfloat16 or float32).

The LSTM projection (torch's proj_size; lstm_fwd/lstm_bwd with w_hr (P, H), 0 < P < H): h, y,
h0/h_n and w_hh's columns have P features, c has H. The forward runs the per-step kernel on h
(B, P) and a projection launch per step (kernels/rnn_cell.py rnn_proj_kernel: h = (o * tanh c)
@ w_hr^T); the workspace is unchanged, (T, B, 5H) = i, f, g, o, c_t, from which the backward
rebuilds o * tanh(c_t). The backward takes two launches per step (kernels/rnn_bwd.py PHASE 1 on
h's P units, PHASE 2 on the cell's H units with d(o tanh c) = dh_t @ w_hr) and dw_hr =
sum_t dh_t^T (o * tanh c_t) as one matmul at the end; h_prev for dw_hh is read from y.

Which forward kernel runs (FORWARD_PATH, "auto" unless a caller sets it):
  - "auto": the persistent kernel (kernels/rnn_persistent.py) when its blocking (one program
    per slice of hidden units, all gates of its units in one weight tile, the whole batch,
    h_prev read in K-chunks) stays within the limits that compiled for sm_90 without spills
    (rnn_persistent.fits_on_chip): on an H100/H200 (132 SMs) every cell for H <= 1024 at
    B <= 64 in float16 and bfloat16 (float32: B <= 16, H <= 512; Elman H <= 1024); else the
    per-step kernel (kernels/rnn_cell.py). An LSTM with a projection (w_hr) always takes the
    per-step kernels (step + projection launch per step). Under TRITON_INTERPRET=1 the
    persistent kernel runs in its one-program configuration (one program owns all hidden
    units), so "auto" takes it there for small H (e.g. H <= 64 at B <= 16 for the LSTM and GRU).
  - "persistent": as "auto" (the launcher still falls back when w_hh does not fit);
  - "step": always the per-step kernel.

Which backward runs the steps (BACKWARD_PATH, "auto" unless a caller sets it):
  - "auto": the persistent backward (kernels/rnn_persistent_bwd.py: one launch for all T steps,
    each program keeping its columns of w_hh on chip, in w_hh's dtype for float16/bfloat16)
    when its blocking fits (rnn_persistent_bwd.fits_on_chip: B <= 16 on an H100/H200, the
    LSTM up to H = 1024 in half precision, H = 512 in float32), else the per-step kernel of
    kernels/rnn_bwd.py; the LSTM with a projection always takes the per-step kernel. Under
    TRITON_INTERPRET=1 it runs in its one-program configuration;
  - "step": always the per-step kernel.
Either way the weight gradients are the same large matmuls (kernels/rnn_bwd.py).
"""
FORWARD_PATH = "auto"
BACKWARD_PATH = "auto"


def _forward(cell, x, w_ih, w_hh, b_ih, b_hh, states, lengths, reverse, need_ws, w_hr=None):
    """(y, final states in x's dtype, ws or None) from the path FORWARD_PATH picks."""
    from seqcore.kernels import rnn_cell, rnn_persistent

    run = rnn_cell.forward_steps if FORWARD_PATH == "step" else rnn_persistent.forward_persistent
    y, finals, ws = run(cell, x, w_ih, w_hh, b_ih, b_hh, states, lengths, reverse, need_ws,
                        w_hr=w_hr)
    return y, tuple(s.to(x.dtype) for s in finals), ws


def _backward(cell, dy, dstates, x, w_ih, w_hh, states, lengths, reverse, y, ws, w_hr=None):
    from seqcore.kernels import rnn_bwd, rnn_persistent_bwd

    backward = rnn_bwd.backward if BACKWARD_PATH == "step" else (
        rnn_persistent_bwd.backward_persistent)
    return backward(cell, dy.contiguous(), dstates, x, w_ih, w_hh, states, lengths, reverse,
                    y.contiguous(), ws.contiguous(),
                    w_hr=None if w_hr is None else w_hr.contiguous())


def _elman(nonlinearity):
    """The cell name of an Elman nonlinearity ("tanh" or "relu", validated upstream)."""
    return "rnn_" + nonlinearity


def lstm_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, need_ws, w_hr=None):
    """(y (T, B, P), h_n (B, P), c_n (B, H), ws (T, B, 5H) or None); see seqcore/_problem.py.
    P = H, or with w_hr (P, H) (the projection) its P."""
    y, (h_n, c_n), ws = _forward("lstm", x, w_ih, w_hh, b_ih, b_hh, (h0, c0), lengths, reverse,
                                 need_ws, w_hr=w_hr)
    return y, h_n, c_n, ws


def gru_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, need_ws):
    """(y (T, B, H), h_n, ws or None); see seqcore/_problem.py."""
    y, (h_n,), ws = _forward("gru", x, w_ih, w_hh, b_ih, b_hh, (h0,), lengths, reverse, need_ws)
    return y, h_n, ws


def rnn_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, need_ws):
    """Elman RNN: (y (T, B, H), h_n, ws (T, B, H) or None); see seqcore/_problem.py."""
    y, (h_n,), ws = _forward(_elman(nonlinearity), x, w_ih, w_hh, b_ih, b_hh, (h0,), lengths,
                             reverse, need_ws)
    return y, h_n, ws


def lstm_bwd(dy, dh_n, dc_n, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, y, ws,
             w_hr=None):
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0) in x's dtype; with w_hr, dw_hr as an eighth."""
    return _backward("lstm", dy, (dh_n, dc_n), x, w_ih, w_hh, (h0, c0), lengths, reverse, y, ws,
                     w_hr=w_hr)


def gru_bwd(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, y, ws):
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0) in x's dtype."""
    return _backward("gru", dy, (dh_n,), x, w_ih, w_hh, (h0,), lengths, reverse, y, ws)


def rnn_bwd(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, y, ws):
    """Elman RNN: (dx, dw_ih, dw_hh, db_ih, db_hh, dh0) in x's dtype."""
    return _backward(_elman(nonlinearity), dy, (dh_n,), x, w_ih, w_hh, (h0,), lengths, reverse,
                     y, ws)
