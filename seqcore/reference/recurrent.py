"""float64 NumPy reference for LSTM and GRU, forward and backward (BPTT written out by hand).

PyTorch layout: LSTM gates i, f, g, o in w_ih (4H, I), w_hh (4H, H), b_ih/b_hh (4H,);
GRU gates r, z, n in w_ih (3H, I), w_hh (3H, H), with n = tanh(W_in x + b_in + r*(W_hn h + b_hn)).

lengths: element b runs only its first lengths[b] steps (with reverse: steps lengths[b]-1 down
to 0); y is zero past them and h_n/c_n are the states after its last valid step (h0/c0 when the
length is 0), exactly what torch.nn.LSTM/GRU give on a packed sequence.

Backwards return a dict of float64 gradients for every input, the optional ones (biases,
initial states) included: a missing bias or state is a zero one, and its gradient is the same.
"""
import numpy as np

from seqcore.reference._util import _f64, _ints


def _sigmoid(x):
    e = np.exp(-np.abs(x))   # never overflows, and keeps full relative precision for x << 0
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _time_major(x, batch_first):
    return np.swapaxes(x, 0, 1) if batch_first else x


def _zeros_or(a, shape):
    return np.zeros(shape) if a is None else _f64(a)


def _steps(T, lengths, B, reverse):
    """[(t, active)] in processing order; active (B, 1) bool: step t is one of b's valid steps."""
    lens = np.full(B, T, dtype=np.int64) if lengths is None else _ints(lengths)
    order = range(T - 1, -1, -1) if reverse else range(T)
    return [(t, (t < lens)[:, None]) for t in order]


def _setup(x, w_ih, w_hh, b_ih, b_hh, batch_first):
    x = _time_major(_f64(x), batch_first)
    w_ih, w_hh = _f64(w_ih), _f64(w_hh)
    GH = w_hh.shape[0]   # gates * H
    return x, w_ih, w_hh, _zeros_or(b_ih, (GH,)), _zeros_or(b_hh, (GH,))


# ---------------------------------------------------------------- LSTM

def _lstm_step(x_t, h, c, w_ih, w_hh, b_ih, b_hh, w_hr=None):
    """One step; returns (h_new, c_new, (i, f, g, o)) with the activated gates. With w_hr
    (P, H) (torch's proj_size) the new h is the projection of o * tanh(c_new)."""
    a = x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    ai, af, ag, ao = np.split(a, 4, axis=-1)
    i, f, g, o = _sigmoid(ai), _sigmoid(af), np.tanh(ag), _sigmoid(ao)
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    return (h_new if w_hr is None else h_new @ w_hr.T), c_new, (i, f, g, o)


def lstm_run(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, w_hr=None):
    """Time-major forward; returns y, h_n, c_n and per-step caches for the backward.
    H (cell) = w_hh.shape[0] / 4; h, y have P = w_hh.shape[1] features (P = H without w_hr)."""
    T, B, _ = x.shape
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    h, c = _zeros_or(h0, (B, P)), _zeros_or(c0, (B, H))
    y = np.zeros((T, B, P))
    cache = []
    for t, active in _steps(T, lengths, B, reverse):
        h_new, c_new, gates = _lstm_step(x[t], h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
        cache.append((t, active, h, c, gates, c_new))
        y[t] = np.where(active, h_new, 0.0)
        h, c = np.where(active, h_new, h), np.where(active, c_new, c)
    return y, h, c, cache


def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step: x (B, I), h, c (B, H) -> (h_new, c_new), float64."""
    x, h, c, w_ih, w_hh, b_ih, b_hh = (_f64(a) for a in (x, h, c, w_ih, w_hh, b_ih, b_hh))
    H4 = w_hh.shape[0]
    h_new, c_new, _ = _lstm_step(x, h, c, w_ih, w_hh, _zeros_or(b_ih, (H4,)), _zeros_or(b_hh, (H4,)))
    return h_new, c_new


def lstm(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, w_hr=None, lengths=None,
         reverse=False, batch_first=False):
    """x (T, B, I) ((B, T, I) if batch_first) -> (y (T, B, P) (or (B, T, P)), (h_n, c_n)),
    float64; the arguments as in `seqcore.lstm` (P = H without w_hr)."""
    x, w_ih, w_hh, b_ih, b_hh = _setup(x, w_ih, w_hh, b_ih, b_hh, batch_first)
    w_hr = None if w_hr is None else _f64(w_hr)
    y, h_n, c_n, _ = lstm_run(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, w_hr)
    return _time_major(y, batch_first), (h_n, c_n)


def lstm_bwd(dy, dh_n, dc_n, x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *,
             w_hr=None, lengths=None, reverse=False, batch_first=False):
    """Gradients of sum(dy*y) + sum(dh_n*h_n) + sum(dc_n*c_n) (None: zeros), by BPTT.
    Returns dict(x, w_ih, w_hh, b_ih, b_hh, h0, c0), plus w_hr when given, float64."""
    x, w_ih, w_hh, b_ih, b_hh = _setup(x, w_ih, w_hh, b_ih, b_hh, batch_first)
    w_hr = None if w_hr is None else _f64(w_hr)
    T, B, _ = x.shape
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    _, _, _, cache = lstm_run(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, w_hr)
    dy = np.zeros((T, B, P)) if dy is None else _time_major(_f64(dy), batch_first)
    dh, dc = _zeros_or(dh_n, (B, P)), _zeros_or(dc_n, (B, H))
    dx = np.zeros_like(x)
    dw_ih, dw_hh, db = np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros(4 * H)
    dw_hr = None if w_hr is None else np.zeros_like(w_hr)
    for t, active, h_prev, c_prev, (i, f, g, o), c_new in reversed(cache):
        dh_t = dh + dy[t]
        tc = np.tanh(c_new)
        if w_hr is not None:   # h = (o * tanh(c)) @ w_hr.T: back through the projection
            dw_hr += np.where(active, dh_t, 0.0).T @ (o * tc)
            dh_t = dh_t @ w_hr
        dc_t = dc + dh_t * o * (1.0 - tc * tc)
        da = np.concatenate([dc_t * g * i * (1.0 - i),          # input gate pre-activation
                             dc_t * c_prev * f * (1.0 - f),     # forget gate
                             dc_t * i * (1.0 - g * g),          # cell candidate
                             dh_t * tc * o * (1.0 - o)],        # output gate
                            axis=-1)
        da = np.where(active, da, 0.0)   # a skipped step passes its state through unchanged
        dx[t] = da @ w_ih
        dw_ih += da.T @ x[t]
        dw_hh += da.T @ h_prev
        db += da.sum(axis=0)
        dh = np.where(active, da @ w_hh, dh)
        dc = np.where(active, dc_t * f, dc)
    grads = dict(x=_time_major(dx, batch_first), w_ih=dw_ih, w_hh=dw_hh, b_ih=db,
                 b_hh=db.copy(), h0=dh, c0=dc)
    if w_hr is not None:
        grads["w_hr"] = dw_hr
    return grads


def lstm_cell_bwd(dh_new, dc_new, x, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    """Gradients of sum(dh_new*h_new) + sum(dc_new*c_new) (None: zeros) for one LSTM step.
    Returns dict(x, h, c, w_ih, w_hh, b_ih, b_hh), float64."""
    g = lstm_bwd(None, dh_new, dc_new, _f64(x)[None], w_ih, w_hh, b_ih, b_hh, h, c)
    return dict(x=g["x"][0], h=g["h0"], c=g["c0"], w_ih=g["w_ih"], w_hh=g["w_hh"],
                b_ih=g["b_ih"], b_hh=g["b_hh"])


# ---------------------------------------------------------------- GRU

def _gru_step(x_t, h, w_ih, w_hh, b_ih, b_hh):
    """One step; returns (h_new, (r, z, n, hn)) with hn = W_hn h + b_hn."""
    ir, iz, in_ = np.split(x_t @ w_ih.T + b_ih, 3, axis=-1)
    hr, hz, hn = np.split(h @ w_hh.T + b_hh, 3, axis=-1)
    r, z = _sigmoid(ir + hr), _sigmoid(iz + hz)
    n = np.tanh(in_ + r * hn)
    return (1.0 - z) * n + z * h, (r, z, n, hn)


def gru_run(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    h = _zeros_or(h0, (B, H))
    y = np.zeros((T, B, H))
    cache = []
    for t, active in _steps(T, lengths, B, reverse):
        h_new, gates = _gru_step(x[t], h, w_ih, w_hh, b_ih, b_hh)
        cache.append((t, active, h, gates))
        y[t] = np.where(active, h_new, 0.0)
        h = np.where(active, h_new, h)
    return y, h, cache


def gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step: x (B, I), h (B, H) -> h_new, float64."""
    x, h, w_ih, w_hh = _f64(x), _f64(h), _f64(w_ih), _f64(w_hh)
    H3 = w_hh.shape[0]
    h_new, _ = _gru_step(x, h, w_ih, w_hh, _zeros_or(b_ih, (H3,)), _zeros_or(b_hh, (H3,)))
    return h_new


def gru(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, lengths=None, reverse=False,
        batch_first=False):
    """x (T, B, I) ((B, T, I) if batch_first) -> (y (T, B, H) (or (B, T, H)), h_n), float64;
    the arguments as in `seqcore.gru`."""
    x, w_ih, w_hh, b_ih, b_hh = _setup(x, w_ih, w_hh, b_ih, b_hh, batch_first)
    y, h_n, _ = gru_run(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse)
    return _time_major(y, batch_first), h_n


def gru_bwd(dy, dh_n, x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, lengths=None,
            reverse=False, batch_first=False):
    """Gradients of sum(dy*y) + sum(dh_n*h_n) (None: zeros), by BPTT.
    Returns dict(x, w_ih, w_hh, b_ih, b_hh, h0), float64."""
    x, w_ih, w_hh, b_ih, b_hh = _setup(x, w_ih, w_hh, b_ih, b_hh, batch_first)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    _, _, cache = gru_run(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse)
    dy = np.zeros((T, B, H)) if dy is None else _time_major(_f64(dy), batch_first)
    dh = _zeros_or(dh_n, (B, H))
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db_ih, db_hh = np.zeros(3 * H), np.zeros(3 * H)
    for t, active, h_prev, (r, z, n, hn) in reversed(cache):
        dh_t = dh + dy[t]
        dan = dh_t * (1.0 - z) * (1.0 - n * n)       # n's pre-activation
        dar = dan * hn * r * (1.0 - r)
        daz = dh_t * (h_prev - n) * z * (1.0 - z)
        dgi = np.where(active, np.concatenate([dar, daz, dan], axis=-1), 0.0)
        dgh = np.where(active, np.concatenate([dar, daz, dan * r], axis=-1), 0.0)
        dx[t] = dgi @ w_ih
        dw_ih += dgi.T @ x[t]
        dw_hh += dgh.T @ h_prev
        db_ih += dgi.sum(axis=0)
        db_hh += dgh.sum(axis=0)
        dh = np.where(active, dh_t * z + dgh @ w_hh, dh)
    return dict(x=_time_major(dx, batch_first), w_ih=dw_ih, w_hh=dw_hh, b_ih=db_ih, b_hh=db_hh, h0=dh)


def gru_cell_bwd(dh_new, x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """Gradients of sum(dh_new*h_new) for one GRU step.
    Returns dict(x, h, w_ih, w_hh, b_ih, b_hh), float64."""
    g = gru_bwd(None, dh_new, _f64(x)[None], w_ih, w_hh, b_ih, b_hh, h)
    return dict(x=g["x"][0], h=g["h0"], w_ih=g["w_ih"], w_hh=g["w_hh"], b_ih=g["b_ih"], b_hh=g["b_hh"])


# ---------------------------------------------------------------- Elman RNN (tanh / relu)

def _activation(nonlinearity):
    """(f, f' as a function of f's output): both derivatives are functions of the output,
    so the backward needs only y (torch's relu backward also masks by output > 0)."""
    if nonlinearity == "tanh":
        return np.tanh, lambda h: 1.0 - h * h
    if nonlinearity == "relu":
        return (lambda a: np.maximum(a, 0.0)), (lambda h: (h > 0).astype(np.float64))
    raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def rnn_run(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    act, _ = _activation(nonlinearity)
    h = _zeros_or(h0, (B, H))
    y = np.zeros((T, B, H))
    cache = []
    for t, active in _steps(T, lengths, B, reverse):
        h_new = act(x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        cache.append((t, active, h, h_new))
        y[t] = np.where(active, h_new, 0.0)
        h = np.where(active, h_new, h)
    return y, h, cache


def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """One Elman step, h' = act(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh): x (B, I), h (B, H)
    -> h_new, float64."""
    y, h_n = rnn(_f64(x)[None], w_ih, w_hh, b_ih, b_hh, h, nonlinearity=nonlinearity)
    return h_n


def rnn(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh", lengths=None,
        reverse=False, batch_first=False):
    """Elman RNN (torch.nn.RNN's layer, tanh or relu): x (T, B, I) ((B, T, I) if
    batch_first), w_ih (H, I), w_hh (H, H), biases (H,) -> (y (T, B, H), h_n), float64."""
    x, w_ih, w_hh, b_ih, b_hh = _setup(x, w_ih, w_hh, b_ih, b_hh, batch_first)
    y, h_n, _ = rnn_run(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity)
    return _time_major(y, batch_first), h_n


def rnn_bwd(dy, dh_n, x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh",
            lengths=None, reverse=False, batch_first=False):
    """Gradients of sum(dy*y) + sum(dh_n*h_n) (None: zeros), by BPTT.
    Returns dict(x, w_ih, w_hh, b_ih, b_hh, h0), float64."""
    x, w_ih, w_hh, b_ih, b_hh = _setup(x, w_ih, w_hh, b_ih, b_hh, batch_first)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    _, dact = _activation(nonlinearity)
    _, _, cache = rnn_run(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity)
    dy = np.zeros((T, B, H)) if dy is None else _time_major(_f64(dy), batch_first)
    dh = _zeros_or(dh_n, (B, H))
    dx = np.zeros_like(x)
    dw_ih, dw_hh, db = np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros(H)
    for t, active, h_prev, h_new in reversed(cache):
        da = np.where(active, (dh + dy[t]) * dact(h_new), 0.0)   # the pre-activation's
        dx[t] = da @ w_ih
        dw_ih += da.T @ x[t]
        dw_hh += da.T @ h_prev
        db += da.sum(axis=0)
        dh = np.where(active, da @ w_hh, dh)
    return dict(x=_time_major(dx, batch_first), w_ih=dw_ih, w_hh=dw_hh, b_ih=db, b_hh=db.copy(),
                h0=dh)


def rnn_cell_bwd(dh_new, x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """Gradients of sum(dh_new*h_new) for one Elman step.
    Returns dict(x, h, w_ih, w_hh, b_ih, b_hh), float64."""
    g = rnn_bwd(None, dh_new, _f64(x)[None], w_ih, w_hh, b_ih, b_hh, h, nonlinearity=nonlinearity)
    return dict(x=g["x"][0], h=g["h0"], w_ih=g["w_ih"], w_hh=g["w_hh"], b_ih=g["b_ih"], b_hh=g["b_hh"])
