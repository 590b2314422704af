"""The normalized problem every backend receives, and the backend interface.

Validation (seqcore/attention.py, seqcore/recurrent.py) turns a public call into arrays of
fixed rank plus one of these small records; backends trust what reaches them.

Backend interface (every backend module implements these names; see _backends.module):

attention family
  attention_fwd(q, k, v, bias, p) -> (out, lse)
      q (B, Hq, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv): contiguous, one dtype.
      bias: None, or a (B, Hq, Sq, Sk) view with any (possibly zero) strides.
      out (B, Hq, Sq, Dv) in the input dtype; lse (B, Hq, Sq) natural log, float32
      (float64 when the inputs are float64); rows that see no key: out 0, lse -inf.
  attention_bwd(dout, q, k, v, bias, out, lse, p, need_dbias) -> (dq, dk, dv, dbias)
      dbias is None unless need_dbias, then a full (B, Hq, Sq, Sk) array in the input dtype
      (the caller reduces it over broadcast dimensions).
  attention_varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, p) -> (out, lse)
      q (Tq, Hq, D), k (Tk, Hkv, D), v (Tk, Hkv, Dv) contiguous; cu_* int32 (N+1,);
      out (Tq, Hq, Dv); lse (Tq, Hq).
  attention_varlen_bwd(dout, q, k, v, cu_q, cu_k, max_q, max_k, out, lse, p) -> (dq, dk, dv)
  attention_kvcache_fwd(q, k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, p)
      -> (out, lse)
      q (B, Hq, Sq, D); caches dense (B, Hkv, S_max, D|Dv), or paged (num_blocks, Hkv,
      block_size, D|Dv) with block_table int32 (B, max_blocks) (else None); k_new/v_new
      (B, Hkv, S_new, D|Dv) or None, written into the caches IN PLACE first (at
      cache_seqlens[b] ..); cache_seqlens int32 (B,). Contiguous, one dtype, validated
      (lengths fit, the blocks used are in range). Sequence b attends over cache_seqlens[b]
      + S_new keys, the band bottom-right relative to that. out/lse as attention_fwd's.

recurrent family (cells are sequences of length 1)
  lstm_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, need_ws) -> (y, h_n, c_n, ws)
      x (T, B, I), w_ih (4H, I), w_hh (4H, H), b_ih/b_hh (4H,), h0/c0 (B, H): contiguous,
      one dtype (biases and states always given; zeros when the user gave none);
      lengths None or int64 (B,), 0 <= len <= T.
      y (T, B, H) (zero past each length), h_n/c_n (B, H); ws None unless need_ws, then
      (T, B, 5H) in the accumulation dtype (float32, or float64 for float64 inputs) holding
      whatever the same backend's lstm_bwd needs (suggested: activated i, f, g, o and c_t).
  lstm_bwd(dy, dh_n, dc_n, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, y, ws)
      -> (dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0)
  With a projection (torch's proj_size), both also take w_hr=(P, H) (keyword, given only
  then; seqcore.recurrent.PROJ_BACKENDS lists the backends that take it): w_hh is (4H, P),
  y, h0, h_n, dy, dh_n have P features, c H; lstm_bwd returns dw_hr as an eighth entry.
  gru_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, need_ws) -> (y, h_n, ws)
      ws (T, B, 4H) (suggested: r, z, n and W_hn h + b_hn).
  gru_bwd(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, y, ws)
      -> (dx, dw_ih, dw_hh, db_ih, db_hh, dh0)
  rnn_fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, need_ws)
      -> (y, h_n, ws)
      The Elman cell (torch.nn.RNN): nonlinearity "tanh" or "relu"; w_ih (H, I), w_hh (H, H),
      b_ih/b_hh (H,); ws (T, B, H): the activated h_t (both derivatives are functions of
      it: 1 - h^2, and h > 0 as torch's relu backward takes it).
  rnn_bwd(dy, dh_n, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, nonlinearity, y, ws)
      -> (dx, dw_ih, dw_hh, db_ih, db_hh, dh0)
Gradients come back in the input dtype (dy/dout etc. arrive in it too).
Arrays are NumPy arrays for "c" and "numpy", torch tensors for "triton".
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class AttnParams:
    scale: float
    window_left: int   # keys j >= i + (Sk - Sq) - window_left are visible; -1: unbounded
    window_right: int  # keys j <= i + (Sk - Sq) + window_right; -1: unbounded; causal gives 0
    softcap: float     # 0.0: off; else scores -> softcap * tanh(scores / softcap) before masks
    causal: bool       # as the user asked (already folded into window_right)
    # attention dropout (seqcore/reference/dropout.py defines the mask): probability 0.0
    # (off) to < 1, and the Philox seed (0 <= seed < 2**64) both passes regenerate it from
    dropout_p: float = 0.0
    dropout_seed: int = 0

    @property
    def has_window(self):
        return self.window_left >= 0 or self.window_right >= 0


# A window side this long reaches every key of any sequence an array can hold (2**40 rows
# are terabytes), so it is the unbounded side (-1): window values then never overflow the
# kernels' index arithmetic (int64 in C, int32/int64 on the GPU) nor cffi's int64.
WINDOW_UNBOUNDED_FROM = 2**40


def _window_side(w):
    return -1 if w >= WINDOW_UNBOUNDED_FROM else w


def make_attn_params(scale, causal, window, softcap, dropout_p=0.0, dropout_seed=0):
    left, right = (-1, -1) if window is None else (int(window[0]), int(window[1]))
    left, right = _window_side(left), _window_side(right)
    if causal:
        right = 0 if right < 0 else min(right, 0)
    return AttnParams(scale=float(scale), window_left=left, window_right=right,
                      softcap=float(softcap or 0.0), causal=bool(causal),
                      dropout_p=float(dropout_p), dropout_seed=int(dropout_seed))
