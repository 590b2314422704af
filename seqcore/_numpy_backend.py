"""The "numpy" backend: the float64 reference behind the backend interface (seqcore/_problem.py).

Inputs are computed in float64 and results returned in the input dtype (lse in float32, or
float64 for float64 inputs). The backwards recompute everything from the inputs, so the
workspace (ws) is informational only: real activations in the documented layout.
"""
import numpy as np

# (seqcore.reference re-exports functions under the module names, so import from the modules)
from seqcore.reference.attention import (attention, attention_bwd_full, attention_varlen,
                                         attention_varlen_bwd as varlen_bwd,
                                         attention_with_kvcache)
from seqcore.reference.recurrent import gru_bwd as ref_gru_bwd, gru_run
from seqcore.reference.recurrent import lstm_bwd as ref_lstm_bwd, lstm_run
from seqcore.reference.recurrent import rnn_bwd as ref_rnn_bwd, rnn_run


def _acc_dtype(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def _cast(dtype, *arrays):
    return tuple(None if a is None else np.asarray(a).astype(dtype) for a in arrays)


def _attn_options(p):
    """Reference keyword arguments for an AttnParams (causal is already in window_right)."""
    return dict(causal=False, scale=p.scale, window=(p.window_left, p.window_right),
                softcap=p.softcap or None)


# ---------------------------------------------------------------- attention

def _dropout_options(p):
    return dict(dropout_p=p.dropout_p, dropout_seed=p.dropout_seed)


def attention_fwd(q, k, v, bias, p):
    out, lse = attention(q, k, v, bias=bias, return_lse=True, **_attn_options(p),
                         **_dropout_options(p))
    return out.astype(q.dtype), lse.astype(_acc_dtype(q.dtype))


def attention_bwd(dout, q, k, v, bias, out, lse, p, need_dbias):
    dq, dk, dv, dbias = attention_bwd_full(dout, q, k, v, bias=bias, **_attn_options(p),
                                           **_dropout_options(p))
    dbias = dbias.astype(q.dtype) if need_dbias else None
    return _cast(q.dtype, dq, dk, dv) + (dbias,)


def attention_varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, p):
    out, lse = attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, **_attn_options(p),
                                **_dropout_options(p))
    return out.astype(q.dtype), lse.astype(_acc_dtype(q.dtype))


def attention_varlen_bwd(dout, q, k, v, cu_q, cu_k, max_q, max_k, out, lse, p):
    grads = varlen_bwd(dout, q, k, v, cu_q, cu_k, **_attn_options(p), **_dropout_options(p))
    return _cast(q.dtype, *grads)


def attention_kvcache_fwd(q, k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, p):
    out, lse = attention_with_kvcache(q, k_cache, v_cache, k_new, v_new,
                                      cache_seqlens=cache_seqlens, block_table=block_table,
                                      return_lse=True, **_attn_options(p))
    return out.astype(q.dtype), lse.astype(_acc_dtype(q.dtype))


# ---------------------------------------------------------------- recurrent

def _time_indexed(cache, T, B, width, pack):
    """(T, B, width) array from per-step caches (processing order) via pack(entry)."""
    ws = np.zeros((T, B, width))
    for entry in cache:
        ws[entry[0]] = pack(entry)
    return ws


def lstm_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, need_ws, w_hr=None):
    (w_hr64,) = _cast(np.float64, w_hr)
    y, h_n, c_n, cache = lstm_run(*_cast(np.float64, x, w_ih, w_hh, b_ih, b_hh, h0, c0),
                                  lengths, reverse, w_hr64)
    ws = None
    if need_ws:   # activated i, f, g, o and c_t, as the interface suggests
        T, B, _ = x.shape
        ws = _time_indexed(cache, T, B, 5 * (w_hh.shape[0] // 4),
                           lambda e: np.concatenate(list(e[4]) + [e[5]], axis=-1))
        ws = ws.astype(_acc_dtype(x.dtype))
    return _cast(x.dtype, y, h_n, c_n) + (ws,)


def lstm_bwd(dy, dh_n, dc_n, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, y, ws,
             w_hr=None):
    """The gradients; with w_hr, dw_hr follows as an eighth."""
    g = ref_lstm_bwd(dy, dh_n, dc_n, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr=w_hr,
                     lengths=lengths, reverse=reverse)
    names = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0") + (("w_hr",) if w_hr is not None else ())
    return _cast(x.dtype, *(g[n] for n in names))


def gru_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, need_ws):
    y, h_n, cache = gru_run(*_cast(np.float64, x, w_ih, w_hh, b_ih, b_hh, h0),
                                     lengths, reverse)
    ws = None
    if need_ws:   # r, z, n and W_hn h + b_hn, as the interface suggests
        T, B, _ = x.shape
        ws = _time_indexed(cache, T, B, 4 * w_hh.shape[1],
                           lambda e: np.concatenate(list(e[3]), axis=-1))
        ws = ws.astype(_acc_dtype(x.dtype))
    return _cast(x.dtype, y, h_n) + (ws,)


def gru_bwd(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, y, ws):
    g = ref_gru_bwd(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths=lengths, reverse=reverse)
    return _cast(x.dtype, g["x"], g["w_ih"], g["w_hh"], g["b_ih"], g["b_hh"], g["h0"])


def rnn_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, need_ws):
    y, h_n, cache = rnn_run(*_cast(np.float64, x, w_ih, w_hh, b_ih, b_hh, h0), lengths,
                            reverse, nonlinearity)
    ws = None
    if need_ws:   # the activated h_t, as the interface suggests
        T, B, _ = x.shape
        ws = _time_indexed(cache, T, B, w_hh.shape[1], lambda e: e[3])
        ws = ws.astype(_acc_dtype(x.dtype))
    return _cast(x.dtype, y, h_n) + (ws,)


def rnn_bwd(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, y, ws):
    g = ref_rnn_bwd(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, nonlinearity=nonlinearity,
                    lengths=lengths, reverse=reverse)
    return _cast(x.dtype, g["x"], g["w_ih"], g["w_hh"], g["b_ih"], g["b_hh"], g["h0"])
