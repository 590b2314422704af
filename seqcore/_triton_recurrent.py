"""The "triton" recurrent backend: torch tensors in, Triton kernels (seqcore.kernels) out.

Implements lstm_fwd, lstm_bwd, gru_fwd, gru_bwd of the backend interface (seqcore/_problem.py).
State and accumulation are float32; the workspace is float32, (T, B, 5H) for the LSTM
(i, f, g, o, c_t) and (T, B, 4H) for the GRU (r, z, n, W_hn h + b_hn); outputs and gradients
come back in the input dtype (float16, bfloat16 or float32).

Which forward kernel runs (FORWARD_PATH, "auto" unless a caller sets it):
  - "auto": the persistent kernel (kernels/rnn_persistent.py) when one program's slice of w_hh
    and its h tile stay on chip (rnn_persistent.fits_on_chip: G * BLOCK_H * next_pow2(H) <=
    32768, next_pow2(B) * next_pow2(H) <= 8192, next_pow2(B) <= 32, with BLOCK_H sized so that
    the grid stays within the SM count: on an H100 that is H <= 512 at B <= 16, H <= 256 at
    B <= 32); else the per-step kernels (kernels/rnn_cell.py). Under TRITON_INTERPRET=1 the
    persistent kernel runs in its one-program configuration (one program owns all hidden
    units), so "auto" takes it there for H up to 64.
  - "persistent": as "auto" (the launcher still falls back when w_hh does not fit);
  - "step": always the per-step kernels.
The backward is always the per-step kernels of kernels/rnn_bwd.py.
"""
FORWARD_PATH = "auto"


def _forward_module():
    from seqcore.kernels import rnn_cell, rnn_persistent

    return rnn_cell if FORWARD_PATH == "step" else rnn_persistent


def lstm_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, need_ws):
    """(y (T, B, H), h_n, c_n, ws or None); see seqcore/_problem.py."""
    mod = _forward_module()
    run = mod.lstm_forward_steps if FORWARD_PATH == "step" else mod.lstm_forward_persistent
    y, h_n, c_n, ws = run(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, need_ws)
    return y, h_n.to(x.dtype), c_n.to(x.dtype), ws


def gru_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, need_ws):
    """(y (T, B, H), h_n, ws or None); see seqcore/_problem.py."""
    mod = _forward_module()
    run = mod.gru_forward_steps if FORWARD_PATH == "step" else mod.gru_forward_persistent
    y, h_n, ws = run(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, need_ws)
    return y, h_n.to(x.dtype), ws


def lstm_bwd(dy, dh_n, dc_n, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, y, ws):
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0) in x's dtype."""
    from seqcore.kernels.rnn_bwd import lstm_backward

    return lstm_backward(dy.contiguous(), dh_n, dc_n, x, w_ih, w_hh, h0, c0, lengths, reverse,
                         ws.contiguous())


def gru_bwd(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, y, ws):
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0) in x's dtype."""
    from seqcore.kernels.rnn_bwd import gru_backward

    return gru_backward(dy.contiguous(), dh_n, x, w_ih, w_hh, h0, lengths, reverse,
                        y.contiguous(), ws.contiguous())
