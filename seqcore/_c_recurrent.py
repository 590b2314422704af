"""The "c" backend of the recurrent family: LSTM/GRU/Elman RNN through csrc/recurrent.c.

Implements lstm_fwd, lstm_bwd, gru_fwd, gru_bwd, rnn_fwd, rnn_bwd as seqcore/_problem.py
describes, lstm_fwd/lstm_bwd with the projection (w_hr=, torch's proj_size) too. Inputs
arrive validated, contiguous and in one dtype (float32 or float64; the C kernels compute in
that dtype), so this module only allocates outputs and passes pointers.
"""
import numpy as np

from seqcore import _c
from seqcore._c import ptr

_kernel = _c.kernel


def _lengths(lengths):
    return None if lengths is None else np.ascontiguousarray(lengths, dtype=np.int64)


def _sizes(x, w_hh):
    """(T, B, I, H) of x (T, B, I), or of x (B, I): one step of a cell."""
    if x.ndim == 2:
        return (1,) + tuple(x.shape) + (w_hh.shape[1],)
    T, B, I = x.shape
    return T, B, I, w_hh.shape[1]


def _y_buffer(x, new, shape):
    """y of a call (T, B, features). A cell step's (x (B, I)) is not returned: a NumPy
    scratch array (a tensor's costs ~3 us more to make, on every frame of a stream)."""
    return np.empty(shape, _c.numpy_dtype(x.dtype)) if x.ndim == 2 else new(shape)


def _c_array(a, dtype):
    """`a` as a contiguous array of `dtype` (None stays None: the kernels read it as zeros)."""
    return None if a is None else np.ascontiguousarray(a, dtype=dtype)


def _relu(nonlinearity):
    """The kernels' `relu` flag for torch.nn.RNN's nonlinearity, "tanh" or "relu"."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return int(nonlinearity == "relu")


def lstm_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, need_ws, new=None,
             w_hr=None):
    """new: allocator of the results (shape -> array like x); NumPy arrays by default, CPU
    tensors for the direct cell path (recurrent._direct_cell). x (T, B, I), or (B, I) for one
    step of a cell (y is then scratch).

    w_hr (P, H): the projection (csrc/recurrent.c, "the projection"); y and h_n then have P
    features, c_n H. ws is (T, B, 5H) [i, f, g, o, c_t] either way.
    """
    T, B, I, _ = _sizes(x, w_hh)
    H = w_hh.shape[0] // 4
    P = H if w_hr is None else w_hr.shape[0]
    lengths = _lengths(lengths)
    new = new or _c.numpy_alloc(x.dtype)
    y, h_n, c_n = _y_buffer(x, new, (T, B, P)), new((B, P)), new((B, H))
    ws = new((T, B, 5 * H)) if need_ws else None
    if w_hr is None:
        status = _kernel("lstm_fwd", x.dtype)(
            T, B, I, H, ptr(x), ptr(w_ih), ptr(w_hh), ptr(b_ih), ptr(b_hh), ptr(h0), ptr(c0),
            ptr(lengths), int(bool(reverse)), ptr(y), ptr(h_n), ptr(c_n), ptr(ws))
    else:
        status = _kernel("lstm_proj_fwd", x.dtype)(
            T, B, I, H, P, ptr(x), ptr(w_ih), ptr(w_hh), ptr(b_ih), ptr(b_hh),
            ptr(_c_array(w_hr, x.dtype)), ptr(h0), ptr(c0), ptr(lengths), int(bool(reverse)),
            ptr(y), ptr(h_n), ptr(c_n), ptr(ws))
    _c.check(status, "lstm_fwd")
    return y, h_n, c_n, ws


def gru_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, need_ws, new=None):
    """new: as in lstm_fwd."""
    T, B, I, H = _sizes(x, w_hh)
    lengths = _lengths(lengths)
    new = new or _c.numpy_alloc(x.dtype)
    y, h_n = _y_buffer(x, new, (T, B, H)), new((B, H))
    ws = new((T, B, 4 * H)) if need_ws else None
    status = _kernel("gru_fwd", x.dtype)(
        T, B, I, H, ptr(x), ptr(w_ih), ptr(w_hh), ptr(b_ih), ptr(b_hh), ptr(h0),
        ptr(lengths), int(bool(reverse)), ptr(y), ptr(h_n), ptr(ws))
    _c.check(status, "gru_fwd")
    return y, h_n, ws


def lstm_bwd(dy, dh_n, dc_n, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, y, ws,
             w_hr=None):
    """Gradients (dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0), and dw_hr as an eighth with
    w_hr; dy/dh_n/dc_n may be None.

    y and ws come from lstm_fwd(..., need_ws=True) (with the same w_hr); without ws the
    forward is rerun.
    """
    T, B, I = x.shape
    H = w_hh.shape[0] // 4
    P = H if w_hr is None else w_hr.shape[0]
    if ws is None or y is None:
        y, _, _, ws = lstm_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, True,
                               w_hr=w_hr)
    dt = x.dtype
    dy, dh_n, dc_n = _c_array(dy, dt), _c_array(dh_n, dt), _c_array(dc_n, dt)
    y, ws, lengths = _c_array(y, dt), _c_array(ws, dt), _lengths(lengths)
    dx, dh0, dc0 = np.empty_like(x), np.empty((B, P), dt), np.empty((B, H), dt)
    dw_ih, dw_hh = np.empty_like(w_ih), np.empty_like(w_hh)
    db_ih, db_hh = np.empty(4 * H, dt), np.empty(4 * H, dt)
    if w_hr is None:
        status = _kernel("lstm_bwd", dt)(
            T, B, I, H, ptr(dy), ptr(dh_n), ptr(dc_n), ptr(x), ptr(w_ih), ptr(w_hh), ptr(h0),
            ptr(c0), ptr(lengths), int(bool(reverse)), ptr(y), ptr(ws), ptr(dx), ptr(dw_ih),
            ptr(dw_hh), ptr(db_ih), ptr(db_hh), ptr(dh0), ptr(dc0))
        _c.check(status, "lstm_bwd")
        return dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0
    w_hr = _c_array(w_hr, dt)
    dw_hr = np.empty_like(w_hr)
    status = _kernel("lstm_proj_bwd", dt)(
        T, B, I, H, P, ptr(dy), ptr(dh_n), ptr(dc_n), ptr(x), ptr(w_ih), ptr(w_hh), ptr(w_hr),
        ptr(h0), ptr(c0), ptr(lengths), int(bool(reverse)), ptr(y), ptr(ws), ptr(dx),
        ptr(dw_ih), ptr(dw_hh), ptr(db_ih), ptr(db_hh), ptr(dw_hr), ptr(dh0), ptr(dc0))
    _c.check(status, "lstm_bwd")
    return dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dw_hr


def gru_bwd(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, y, ws):
    """Gradients (dx, dw_ih, dw_hh, db_ih, db_hh, dh0); dy/dh_n may be None.

    y and ws come from gru_fwd(..., need_ws=True); without ws the forward is rerun.
    """
    T, B, I, H = _sizes(x, w_hh)
    if ws is None or y is None:
        y, _, ws = gru_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, True)
    dt = x.dtype
    dy, dh_n = _c_array(dy, dt), _c_array(dh_n, dt)
    y, ws, lengths = _c_array(y, dt), _c_array(ws, dt), _lengths(lengths)
    dx, dh0 = np.empty_like(x), np.empty((B, H), dt)
    dw_ih, dw_hh = np.empty_like(w_ih), np.empty_like(w_hh)
    db_ih, db_hh = np.empty(3 * H, dt), np.empty(3 * H, dt)
    status = _kernel("gru_bwd", dt)(
        T, B, I, H, ptr(dy), ptr(dh_n), ptr(x), ptr(w_ih), ptr(w_hh), ptr(h0), ptr(lengths),
        int(bool(reverse)), ptr(y), ptr(ws), ptr(dx), ptr(dw_ih), ptr(dw_hh), ptr(db_ih),
        ptr(db_hh), ptr(dh0))
    _c.check(status, "gru_bwd")
    return dx, dw_ih, dw_hh, db_ih, db_hh, dh0


def rnn_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, need_ws, new=None):
    """Elman RNN (torch.nn.RNN), nonlinearity "tanh" or "relu". new: as in lstm_fwd.
    ws (T, B, H) holds the activated h_t the backward differentiates at."""
    T, B, I, H = _sizes(x, w_hh)
    lengths = _lengths(lengths)
    new = new or _c.numpy_alloc(x.dtype)
    y, h_n = _y_buffer(x, new, (T, B, H)), new((B, H))
    ws = new((T, B, H)) if need_ws else None
    status = _kernel("rnn_fwd", x.dtype)(
        T, B, I, H, ptr(x), ptr(w_ih), ptr(w_hh), ptr(b_ih), ptr(b_hh), ptr(h0),
        ptr(lengths), int(bool(reverse)), _relu(nonlinearity), ptr(y), ptr(h_n), ptr(ws))
    _c.check(status, "rnn_fwd")
    return y, h_n, ws


def rnn_bwd(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, y, ws):
    """Gradients (dx, dw_ih, dw_hh, db_ih, db_hh, dh0); dy/dh_n may be None.

    y and ws come from rnn_fwd(..., need_ws=True); without ws the forward is rerun.
    """
    T, B, I, H = _sizes(x, w_hh)
    if ws is None or y is None:
        y, _, ws = rnn_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, True)
    dt = x.dtype
    dy, dh_n = _c_array(dy, dt), _c_array(dh_n, dt)
    y, ws, lengths = _c_array(y, dt), _c_array(ws, dt), _lengths(lengths)
    dx, dh0 = np.empty_like(x), np.empty((B, H), dt)
    dw_ih, dw_hh = np.empty_like(w_ih), np.empty_like(w_hh)
    db_ih, db_hh = np.empty(H, dt), np.empty(H, dt)
    status = _kernel("rnn_bwd", dt)(
        T, B, I, H, ptr(dy), ptr(dh_n), ptr(x), ptr(w_ih), ptr(w_hh), ptr(h0), ptr(lengths),
        int(bool(reverse)), _relu(nonlinearity), ptr(y), ptr(ws), ptr(dx), ptr(dw_ih),
        ptr(dw_hh), ptr(db_ih), ptr(db_hh), ptr(dh0))
    _c.check(status, "rnn_bwd")
    return dx, dw_ih, dw_hh, db_ih, db_hh, dh0
