"""The float64 references held to PyTorch in float64, and the "numpy" backend held to them.

Attention: torch.nn.functional.scaled_dot_product_attention (masks and bias as attn_mask), or the
scores written out in torch for softcap and the log-sum-exp; GQA by repeat_interleave on the torch
side only; gradients from torch.autograd. LSTM/GRU: torch.nn modules with copied weights, packed
sequences for lengths, the reverse direction of a bidirectional module for reverse=True.
"""
import numpy as np
import pytest

import seqcore
from seqcore import _numpy_backend as NB
from seqcore import reference as R
from seqcore._problem import make_attn_params
from seqcore.reference.attention import attention_bwd_full
from conftest import assert_close

torch = pytest.importorskip("torch")
F = torch.nn.functional

F64 = "float64"   # the references compute in float64 whatever the input dtype


def T(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def grad_of(t):
    return np.zeros(tuple(t.shape)) if t.grad is None else t.grad.numpy()


# ================================================================ attention, torch side

def torch_visible(Sq, Sk, causal, window):
    """(Sq, Sk) bool band from tril/triu (an independent statement of the API.md masks)."""
    left, right = (-1, -1) if window is None else window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    off = Sk - Sq
    vis = torch.ones(Sq, Sk, dtype=torch.bool)
    if right >= 0:
        vis = vis.tril(off + right)
    if left >= 0:
        vis = vis.triu(off - left)
    return vis


def torch_scores(q, k, scale, causal, window, bias, softcap):
    group = q.shape[-3] // k.shape[-3]
    s = scale * (q @ k.repeat_interleave(group, dim=-3).transpose(-1, -2))
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias
    return s.masked_fill(~torch_visible(q.shape[-2], k.shape[-2], causal, window), float("-inf"))


def torch_attention(q, k, v, scale, causal=False, window=None, bias=None, softcap=None):
    """(out, lse) in torch: SDPA when it can express the problem, else the softmax written out
    (rows that see no key give zeros, as SDPA does)."""
    group = q.shape[-3] // k.shape[-3]
    s = torch_scores(q, k, scale, causal, window, bias, softcap)
    lse = torch.logsumexp(s, dim=-1)
    v_rep = v.repeat_interleave(group, dim=-3)
    if softcap:
        empty = torch.isneginf(s).all(dim=-1, keepdim=True)
        P = torch.softmax(torch.where(empty, torch.zeros_like(s), s), dim=-1) * ~empty
        return P @ v_rep, lse
    mask = torch.zeros(q.shape[-2], k.shape[-2], dtype=torch.float64).masked_fill(
        ~torch_visible(q.shape[-2], k.shape[-2], causal, window), float("-inf"))
    if bias is not None:
        mask = mask + bias
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(group, dim=-3), v_rep,
                                         attn_mask=mask, scale=scale)
    return out, lse


# (batch, Hq, Hkv, Sq, Sk, D, Dv)
ATTN_SHAPES = [
    ((2,), 4, 2, 5, 9, 7, 3),      # GQA, Sk > Sq, Dv != D
    ((), 3, 3, 1, 1, 1, 1),        # no batch dims, everything length 1
    ((2, 3), 2, 1, 6, 6, 16, 16),  # two batch dims, MQA
    ((1,), 2, 2, 8, 3, 5, 6),      # Sq > Sk: causal leaves rows with no key
]
MASKS = [(False, None), (True, None), (False, (2, 1)), (True, (3, -1)), (False, (-1, 0)),
         (False, (0, 0)), (True, (1, 4))]


def attn_inputs(rng, shape, dtype=np.float64):
    batch, Hq, Hkv, Sq, Sk, D, Dv = shape
    q = rng.standard_normal(batch + (Hq, Sq, D)).astype(dtype)
    k = rng.standard_normal(batch + (Hkv, Sk, D)).astype(dtype)
    v = rng.standard_normal(batch + (Hkv, Sk, Dv)).astype(dtype)
    return q, k, v


def check_attention(rng, shape, causal, window, bias=None, softcap=None, scale=None,
                    dtype=np.float64, grads=True):
    q, k, v = attn_inputs(rng, shape, dtype)
    scale_used = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    opts = dict(causal=causal, window=window, softcap=softcap, scale=scale)
    out, lse = R.attention(q, k, v, bias=bias, return_lse=True, **opts)
    assert out.dtype == np.float64 and lse.dtype == np.float64

    tq, tk, tv = T(q, True), T(k, True), T(v, True)
    tb = None if bias is None else T(bias, True)
    t_out, t_lse = torch_attention(tq, tk, tv, scale_used, causal, window, tb, softcap)
    assert_close(out, t_out, F64, name="out")
    assert_close(lse, t_lse, F64, name="lse")
    if not grads:
        return
    dout = rng.standard_normal(out.shape)
    (t_out * T(dout)).sum().backward()
    dq, dk, dv, dbias = R.attention_bwd(dout, q, k, v, bias=bias, **opts)
    for name, ours, t in (("dq", dq, tq), ("dk", dk, tk), ("dv", dv, tv)):
        assert_close(ours, grad_of(t), F64, grad=True, name=name)
    if bias is None:
        assert dbias is None
    else:
        assert dbias.shape == np.shape(bias)
        assert_close(dbias, grad_of(tb), F64, grad=True, name="dbias")


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("causal, window", MASKS)
@pytest.mark.parametrize("shape", ATTN_SHAPES)
def test_attention_matches_torch(rng, shape, causal, window, dtype):
    # float16/float32 inputs: the reference must still compute in float64 on those values
    check_attention(rng, shape, causal, window, dtype=dtype, grads=dtype == np.float64)


@pytest.mark.parametrize("bias_shape", ["key", "head_key", "query_col", "full", "batch_only"])
@pytest.mark.parametrize("causal, window", [(False, None), (True, None), (False, (1, 2))])
def test_attention_bias_matches_torch(rng, bias_shape, causal, window):
    shape = ((2,), 4, 2, 5, 7, 6, 3)
    batch, Hq, _, Sq, Sk, _, _ = shape
    shapes = {"key": (Sk,), "head_key": (Hq, 1, Sk), "query_col": (1, 1, Sq, 1),
              "full": batch + (Hq, Sq, Sk), "batch_only": batch + (1, 1, 1)}
    bias = rng.standard_normal(shapes[bias_shape])
    if bias_shape in ("key", "head_key", "full"):   # padding-mask style -inf entries
        bias[..., 0] = -np.inf
    check_attention(rng, shape, causal, window, bias=bias)


def test_attention_bias_empties_rows(rng):
    """A bias that masks whole rows: out 0, lse -inf, zero gradients for those rows."""
    shape = ((2,), 2, 2, 4, 5, 3, 3)
    bias = rng.standard_normal((2, 2, 4, 5))
    bias[0, 1, 2, :] = -np.inf
    bias[1, :, 0, :] = -np.inf
    check_attention(rng, shape, False, None, bias=bias)
    q, k, v = attn_inputs(rng, shape)
    out, lse = R.attention(q, k, v, bias=bias, return_lse=True)
    assert np.all(out[0, 1, 2] == 0) and np.isneginf(lse[0, 1, 2]) and np.isneginf(lse[1, :, 0]).all()
    dq, _, _, dbias = R.attention_bwd(rng.standard_normal(out.shape), q, k, v, bias=bias)
    assert np.all(dq[0, 1, 2] == 0) and np.all(dbias[1, :, 0] == 0)


@pytest.mark.parametrize("softcap", [0.7, 5.0])
@pytest.mark.parametrize("causal, window", [(False, None), (True, None), (False, (2, 0))])
@pytest.mark.parametrize("shape", [ATTN_SHAPES[0], ATTN_SHAPES[3]])
def test_attention_softcap_matches_torch(rng, shape, causal, window, softcap):
    bias = rng.standard_normal(shape[3:5])
    check_attention(rng, shape, causal, window, bias=bias, softcap=softcap, scale=0.9)


def test_attention_empty_rows_are_zero(rng):
    """Sq > Sk with causal: the first Sq - Sk queries see no key."""
    q, k, v = attn_inputs(rng, ((1,), 2, 1, 6, 2, 4, 3))
    out, lse = R.attention(q, k, v, causal=True, return_lse=True)
    assert np.all(out[..., :4, :] == 0) and np.isneginf(lse[..., :4]).all()
    assert np.isfinite(lse[..., 4:]).all()
    dq, dk, dv, _ = R.attention_bwd(rng.standard_normal(out.shape), q, k, v, causal=True)
    assert np.all(dq[..., :4, :] == 0) and np.isfinite(dq).all()
    assert np.isfinite(dk).all() and np.isfinite(dv).all()


@pytest.mark.parametrize("Sq, Sk", [(0, 4), (3, 0), (0, 0)])
def test_attention_empty_sequences(rng, Sq, Sk):
    q, k, v = attn_inputs(rng, ((2,), 2, 1, Sq, Sk, 3, 5))
    out, lse = R.attention(q, k, v, causal=True, return_lse=True)
    assert out.shape == (2, 2, Sq, 5) and lse.shape == (2, 2, Sq)
    assert np.all(out == 0) and np.isneginf(lse).all()
    dq, dk, dv, _ = R.attention_bwd(rng.standard_normal(out.shape), q, k, v, causal=True)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    assert not (dq.any() or dk.any() or dv.any())


@pytest.mark.parametrize("trial", range(16))
def test_attention_random_configs(rng, trial):
    """Random mixes of every option (seeded per trial): sizes 0-9, windows, bias, softcap."""
    batch = tuple(int(n) for n in rng.integers(1, 3, size=rng.integers(0, 3)))
    Hkv = int(rng.integers(1, 3))
    Hq = Hkv * int(rng.integers(1, 4))
    Sq, Sk = (int(n) for n in rng.integers(0, 10, size=2))
    D, Dv = (int(n) for n in rng.integers(1, 21, size=2))
    causal = bool(rng.integers(2))
    window = None if rng.integers(3) == 0 else tuple(int(n) for n in rng.integers(-1, 5, size=2))
    bias = None
    if rng.integers(2):
        full = batch + (Hq, Sq, Sk)
        bias_shape = tuple(n if rng.integers(2) else 1 for n in full)[int(rng.integers(len(full))):]
        bias = rng.standard_normal(bias_shape)
    softcap = float(rng.uniform(0.5, 5.0)) if rng.integers(2) else None
    check_attention(rng, (batch, Hq, Hkv, Sq, Sk, D, Dv), causal, window, bias=bias,
                    softcap=softcap, scale=float(rng.uniform(0.1, 1.0)))


def test_reference_takes_torch_tensors(rng):
    q = torch.tensor(rng.standard_normal((2, 3, 4)), dtype=torch.bfloat16, requires_grad=True)
    out = R.attention(q, q, q, causal=True)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    q64 = q.detach().double().numpy()
    assert_close(out, R.attention(q64, q64, q64, causal=True), F64)
    y, h_n = R.gru(torch.ones(3, 2, 1), torch.ones(6, 1), torch.ones(6, 2),
                   lengths=torch.tensor([0, 3]))
    assert h_n.dtype == np.float64 and np.all(h_n[0] == 0) and np.all(y[:, 0] == 0)


# ================================================================ varlen, merge

VARLEN = [  # cu_q, cu_k
    ([0, 3, 3, 7, 8], [0, 2, 5, 5, 9]),   # empty q sequence, empty k sequence, Sq != Sk
    ([0, 1], [0, 1]),
    ([0, 4, 9], [0, 4, 9]),
]


@pytest.mark.parametrize("causal, window, softcap", [(False, None, None), (True, None, None),
                                                     (False, (1, 1), None), (True, None, 2.0)])
@pytest.mark.parametrize("cu_q, cu_k", VARLEN)
def test_varlen_matches_per_sequence_torch(rng, cu_q, cu_k, causal, window, softcap):
    Hq, Hkv, D, Dv = 4, 2, 5, 3
    q = rng.standard_normal((cu_q[-1], Hq, D))
    k = rng.standard_normal((cu_k[-1], Hkv, D))
    v = rng.standard_normal((cu_k[-1], Hkv, Dv))
    cu_q32, cu_k32 = np.array(cu_q, np.int32), np.array(cu_k, np.int32)
    opts = dict(causal=causal, window=window, softcap=softcap, scale=0.6)
    out, lse = R.attention_varlen(q, k, v, cu_q32, cu_k32, return_lse=True, **opts)
    assert out.shape == (cu_q[-1], Hq, Dv) and lse.shape == (cu_q[-1], Hq)

    tq, tk, tv = T(q, True), T(k, True), T(v, True)
    outs, lses = [], []
    for s in range(len(cu_q) - 1):
        qs, ks, vs = (t[c[s]:c[s + 1]].transpose(0, 1)
                      for t, c in ((tq, cu_q), (tk, cu_k), (tv, cu_k)))
        o, l = torch_attention(qs, ks, vs, 0.6, causal, window, None, softcap)
        outs.append(o.transpose(0, 1))
        lses.append(l.transpose(0, 1))
    t_out, t_lse = torch.cat(outs), torch.cat(lses)
    assert_close(out, t_out, F64, name="out")
    assert_close(lse, t_lse, F64, name="lse")

    dout = rng.standard_normal(out.shape)
    (t_out * T(dout)).sum().backward()
    grads = R.attention_varlen_bwd(dout, q, k, v, cu_q32, cu_k32, **opts)
    for name, ours, t in zip(("dq", "dk", "dv"), grads, (tq, tk, tv)):
        assert_close(ours, grad_of(t), F64, grad=True, name=name)


@pytest.mark.parametrize("causal, split", [(False, 4), (True, 4), (True, 1), (False, 0)])
def test_merge_of_key_halves_is_full_attention(rng, causal, split):
    """Attention over keys [:split] and [split:] merged == attention over all keys; the causal
    band is carried into the halves as a -inf bias, so some rows see nothing in one half."""
    q, k, v = attn_inputs(rng, ((2,), 4, 2, 6, 7, 5, 3))
    visible = torch_visible(6, 7, causal, None).numpy()
    mask = np.where(visible, 0.0, -np.inf)
    full_out, full_lse = R.attention(q, k, v, bias=mask, return_lse=True)
    oa, la = R.attention(q, k[..., :split, :], v[..., :split, :], bias=mask[:, :split], return_lse=True)
    ob, lb = R.attention(q, k[..., split:, :], v[..., split:, :], bias=mask[:, split:], return_lse=True)
    out, lse = R.merge_attention(oa, la, ob, lb)
    assert_close(out, full_out, F64, name="out")
    assert_close(lse, full_lse, F64, name="lse")


def test_merge_both_empty_rows(rng):
    out_a = rng.standard_normal((3, 4))
    lse = np.array([-np.inf, 0.5, -np.inf])
    lse_b = np.array([-np.inf, -np.inf, 1.0])
    out, merged = R.merge_attention(out_a, lse, rng.standard_normal((3, 4)), lse_b)
    assert np.all(out[0] == 0) and np.isneginf(merged[0])
    assert_close(out[1], out_a[1], F64)
    assert merged[1] == 0.5 and merged[2] == 1.0


def test_public_merge_matches_reference(rng):
    shape = (2, 3, 5)
    oa, ob = rng.standard_normal(shape), rng.standard_normal(shape)
    la, lb = rng.standard_normal(shape[:-1]), rng.standard_normal(shape[:-1])
    la[0, 0] = lb[0, 0] = -np.inf
    lb[1, 2] = -np.inf
    out, lse = seqcore.merge_attention(oa, la, ob, lb)
    r_out, r_lse = R.merge_attention(oa, la, ob, lb)
    assert_close(out, r_out, F64)
    assert_close(lse, r_lse, "float32")


# ================================================================ recurrent, torch side

GATES = {"lstm": 4, "gru": 3}


def rnn_weights(rng, cell, I, H, bias, scale=0.5):
    G = GATES[cell]
    w = dict(w_ih=scale * rng.standard_normal((G * H, I)), w_hh=scale * rng.standard_normal((G * H, H)))
    w["b_ih"] = scale * rng.standard_normal(G * H) if bias else None
    w["b_hh"] = scale * rng.standard_normal(G * H) if bias else None
    return w


def torch_module(cell, I, H, w, batch_first, reverse):
    """torch.nn.LSTM/GRU holding w (in the reverse direction of a bidirectional one if reverse;
    its forward direction keeps random weights that must not matter)."""
    cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    mod = cls(I, H, bias=w["b_ih"] is not None, batch_first=batch_first,
              bidirectional=reverse).double()
    suffix = "_l0_reverse" if reverse else "_l0"
    with torch.no_grad():
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            if w[name] is not None:
                getattr(mod, name.replace("w_", "weight_").replace("b_", "bias_") + suffix).copy_(T(w[name]))
    return mod, suffix


def torch_rnn(cell, x, w, states, lengths, reverse, batch_first):
    """Run torch on the batch elements with a nonzero length (pack rejects length 0).

    Returns (y, finals, leaves): y (T, B, H) time-major with zero rows for skipped elements,
    finals [h_n, (c_n)] (B, H) with NaN rows for skipped elements, leaves for gradients."""
    B = x.shape[1] if not batch_first else x.shape[0]
    Tn = x.shape[0] if not batch_first else x.shape[1]
    H = w["w_hh"].shape[1]
    lens = np.full(B, Tn) if lengths is None else np.asarray(lengths)
    keep = np.flatnonzero(lens > 0)
    mod, suffix = torch_module(cell, x.shape[-1], H, w, batch_first, reverse)
    tx = T(x, True)
    t_states = [T(s, True) for s in states]
    y = torch.zeros(Tn, B, H, dtype=torch.float64)
    finals = [torch.full((B, H), float("nan"), dtype=torch.float64) for _ in states]
    if keep.size:
        idx = torch.as_tensor(keep)
        xk = tx.index_select(1 if not batch_first else 0, idx)
        dirs = 2 if reverse else 1
        # the forward direction of a bidirectional module starts from zeros: irrelevant here
        init = [torch.zeros(dirs, keep.size, H, dtype=torch.float64).index_copy(
            0, torch.tensor([dirs - 1]), s.index_select(0, idx)[None]) for s in t_states]
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xk, torch.as_tensor(lens[keep]), batch_first=batch_first, enforce_sorted=False)
        out, fin = mod(packed, tuple(init) if cell == "lstm" else init[0])
        yk, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=Tn)
        if batch_first:
            yk = yk.transpose(0, 1)
        yk = yk[..., H:] if reverse else yk
        y = y.index_copy(1, idx, yk)
        fin = fin if cell == "lstm" else (fin,)
        finals = [f.index_copy(0, idx, s[dirs - 1]) for f, s in zip(finals, fin)]
    return y, finals, (mod, suffix, tx, t_states, keep)


RNN_CASES = [  # T, B, I, H, lengths, reverse, batch_first, bias, initial states
    (5, 3, 4, 7, None, False, False, True, True),
    (1, 1, 1, 1, None, False, False, False, False),
    (6, 4, 3, 5, [6, 0, 3, 1], False, False, True, True),
    (6, 4, 3, 5, [2, 6, 0, 4], True, False, True, True),
    (4, 3, 5, 2, None, True, True, False, True),
    (7, 5, 2, 3, [7, 1, 0, 5, 7], True, True, True, False),
    (3, 2, 3, 4, [0, 0], False, True, True, True),   # nothing runs at all
]


def reference_rnn(cell, x, w, states, lengths, reverse, batch_first):
    fn = R.lstm if cell == "lstm" else R.gru
    res = fn(x, **w, **dict(zip(("h0", "c0"), states)), lengths=lengths, reverse=reverse,
             batch_first=batch_first)
    y, finals = res[0], (list(res[1]) if cell == "lstm" else [res[1]])
    return y, finals


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", RNN_CASES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_matches_torch(rng, cell, case, dtype):
    Tn, B, I, H, lengths, reverse, batch_first, bias, given = case
    w = {n: None if a is None else a.astype(dtype) for n, a in rnn_weights(rng, cell, I, H, bias).items()}
    x = rng.standard_normal((B, Tn, I) if batch_first else (Tn, B, I)).astype(dtype)
    n_states = 2 if cell == "lstm" else 1
    states = [rng.standard_normal((B, H)).astype(dtype) for _ in range(n_states)]
    y, finals = reference_rnn(cell, x, w, states if given else [None] * n_states, lengths, reverse,
                              batch_first)
    assert y.dtype == np.float64 and y.shape == x.shape[:2] + (H,)

    zeros = [np.zeros((B, H))] * n_states
    t_y, t_finals, _ = torch_rnn(cell, x, w, states if given else zeros, lengths, reverse, batch_first)
    y_tm = np.swapaxes(y, 0, 1) if batch_first else y
    assert_close(y_tm, t_y, F64, name="y")   # zero rows of skipped elements included
    lens = np.full(B, Tn) if lengths is None else np.asarray(lengths)
    for ours, t, s in zip(finals, t_finals, states if given else zeros):
        expect = np.where((lens > 0)[:, None], t.detach().numpy(), s)  # length 0: the initial state
        assert_close(ours, expect, F64, name="final state")


@pytest.mark.parametrize("case", RNN_CASES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_grads_match_torch(rng, cell, case):
    Tn, B, I, H, lengths, reverse, batch_first, bias, _ = case
    w = rnn_weights(rng, cell, I, H, bias)
    x = rng.standard_normal((B, Tn, I) if batch_first else (Tn, B, I))
    n_states = 2 if cell == "lstm" else 1
    states = [rng.standard_normal((B, H)) for _ in range(n_states)]
    dy = rng.standard_normal(x.shape[:2] + (H,))
    d_finals = [rng.standard_normal((B, H)) for _ in range(n_states)]
    if cell == "lstm":
        g = R.lstm_bwd(dy, *d_finals, x, **w, h0=states[0], c0=states[1], lengths=lengths,
                       reverse=reverse, batch_first=batch_first)
    else:
        g = R.gru_bwd(dy, d_finals[0], x, **w, h0=states[0], lengths=lengths, reverse=reverse,
                      batch_first=batch_first)

    t_y, t_finals, (mod, suffix, tx, t_states, keep) = torch_rnn(cell, x, w, states, lengths,
                                                                  reverse, batch_first)
    if keep.size:
        dy_tm = np.swapaxes(dy, 0, 1) if batch_first else dy
        loss = (t_y * T(dy_tm)).sum()
        for f, d in zip(t_finals, d_finals):
            loss = loss + (f[keep] * T(d[keep])).sum()
        loss.backward()
    assert_close(g["x"], grad_of(tx), F64, grad=True, name="dx")
    for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
        param = getattr(mod, name.replace("w_", "weight_").replace("b_", "bias_") + suffix, None)
        if param is not None:   # bias=False: see test_rnn_bias_grad_without_bias
            assert_close(g[name], grad_of(param), F64, grad=True, name=name)
    skipped = np.ones(B, bool)
    skipped[keep] = False
    for name, t, d in zip(("h0", "c0"), t_states, d_finals):
        expect = grad_of(t).copy()
        expect[skipped] = d[skipped]   # a length-0 element passes its state's gradient through
        assert_close(g[name], expect, F64, grad=True, name="d" + name)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_bias_grad_without_bias(rng, cell):
    """No bias given: the bias gradients are those of a zero bias (checked against torch)."""
    Tn, B, I, H = 4, 3, 2, 5
    w = rnn_weights(rng, cell, I, H, bias=False)
    x = rng.standard_normal((Tn, B, I))
    dy = rng.standard_normal((Tn, B, H))
    w0 = dict(w, b_ih=np.zeros(GATES[cell] * H), b_hh=np.zeros(GATES[cell] * H))
    bwd = R.lstm_bwd if cell == "lstm" else R.gru_bwd
    extra = (None, None) if cell == "lstm" else (None,)
    g = bwd(dy, *extra, x, **w)
    mod, suffix = torch_module(cell, I, H, w0, False, False)
    y = mod(T(x))[0]
    (y * T(dy)).sum().backward()
    for name in ("b_ih", "b_hh"):
        assert_close(g[name], getattr(mod, name.replace("b_", "bias_") + suffix).grad, F64, grad=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_zero_steps(rng, cell):
    B, I, H = 3, 2, 4
    w = rnn_weights(rng, cell, I, H, bias=True)
    x = np.zeros((0, B, I))
    h0 = rng.standard_normal((B, H))
    if cell == "lstm":
        y, (h_n, c_n) = R.lstm(x, **w, h0=h0, c0=h0)
        assert np.array_equal(c_n, h0)
    else:
        y, h_n = R.gru(x, **w, h0=h0)
    assert y.shape == (0, B, H) and np.array_equal(h_n, h0)


def test_rnn_saturated_gates_stay_finite(rng):
    """Large pre-activations: the sigmoid must neither overflow nor lose the tiny values."""
    w = rnn_weights(rng, "lstm", 3, 4, bias=True, scale=60.0)
    x = rng.standard_normal((5, 2, 3))
    with np.errstate(all="raise"):
        y, _ = R.lstm(x, **w)
        g = R.lstm_bwd(np.ones_like(y), None, None, x, **w)
    mod, _ = torch_module("lstm", 3, 4, w, False, False)
    assert_close(y, mod(T(x))[0], F64)
    assert all(np.isfinite(v).all() for v in g.values())


@pytest.mark.parametrize("B, I, H, bias", [(1, 1, 1, True), (3, 5, 7, True), (4, 2, 3, False)])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cells_match_torch(rng, cell, B, I, H, bias):
    w = rnn_weights(rng, cell, I, H, bias)
    x, h, c = (rng.standard_normal(s) for s in ((B, I), (B, H), (B, H)))
    cls = torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell
    mod = cls(I, H, bias=bias).double()
    with torch.no_grad():
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            if w[name] is not None:
                getattr(mod, name.replace("w_", "weight_").replace("b_", "bias_")).copy_(T(w[name]))
    tx, th, tc = T(x, True), T(h, True), T(c, True)
    dh, dc = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    if cell == "lstm":
        h_new, c_new = R.lstm_cell(x, h, c, **w)
        t_h, t_c = mod(tx, (th, tc))
        assert_close(c_new, t_c, F64, name="c_new")
        ((t_h * T(dh)).sum() + (t_c * T(dc)).sum()).backward()
        g = R.lstm_cell_bwd(dh, dc, x, h, c, **w)
        assert_close(g["c"], tc.grad, F64, grad=True, name="dc")
    else:
        h_new = R.gru_cell(x, h, **w)
        t_h = mod(tx, th)
        (t_h * T(dh)).sum().backward()
        g = R.gru_cell_bwd(dh, x, h, **w)
    assert_close(h_new, t_h, F64, name="h_new")
    assert_close(g["x"], tx.grad, F64, grad=True, name="dx")
    assert_close(g["h"], th.grad, F64, grad=True, name="dh")
    for name in ("w_ih", "w_hh") + (("b_ih", "b_hh") if bias else ()):
        param = getattr(mod, name.replace("w_", "weight_").replace("b_", "bias_"))
        assert_close(g[name], param.grad, F64, grad=True, name=name)


# ================================================================ the numpy backend

@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("causal, window, softcap, with_bias", [
    (False, None, None, False), (True, None, None, True), (False, (2, 1), 3.0, True),
    (True, (1, -1), None, False)])
def test_numpy_backend_attention(rng, dtype, causal, window, softcap, with_bias):
    q, k, v = attn_inputs(rng, ((2,), 4, 2, 5, 7, 6, 3), dtype)
    bias = rng.standard_normal((4, 1, 7)).astype(dtype) if with_bias else None
    opts = dict(causal=causal, window=window, softcap=softcap, bias=bias)
    out, lse = seqcore.attention(q, k, v, return_lse=True, backend="numpy", **opts)
    r_out, r_lse = R.attention(q, k, v, return_lse=True, **opts)
    assert out.dtype == np.dtype(dtype) and lse.dtype == np.float32
    assert_close(out, r_out, dtype, name="out")
    assert_close(lse, r_lse, "float32" if dtype == "float64" else dtype, name="lse")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("causal, window, softcap", [(False, None, None), (True, (2, -1), 1.5)])
def test_numpy_backend_attention_bwd(rng, dtype, causal, window, softcap):
    q, k, v = attn_inputs(rng, ((3,), 4, 1, 6, 5, 7, 2), dtype)
    bias = np.broadcast_to(rng.standard_normal((1, 1, 6, 1)).astype(dtype), (3, 4, 6, 5))
    p = make_attn_params(0.4, causal, window, softcap)
    out, lse = NB.attention_fwd(q, k, v, bias, p)
    assert lse.dtype == (np.float64 if dtype == "float64" else np.float32)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dq, dk, dv, dbias = NB.attention_bwd(dout, q, k, v, bias, out, lse, p, True)
    ref = attention_bwd_full(dout, q, k, v, causal=causal, scale=0.4, window=window, bias=bias,
                             softcap=softcap)
    for name, ours, want in zip(("dq", "dk", "dv", "dbias"), (dq, dk, dv, dbias), ref):
        assert ours.dtype == np.dtype(dtype) and ours.shape == want.shape
        assert_close(ours, want, dtype, grad=True, name=name)
    assert NB.attention_bwd(dout, q, k, v, bias, out, lse, p, False)[3] is None


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_numpy_backend_varlen(rng, dtype):
    cu_q, cu_k = np.array([0, 3, 3, 7], np.int32), np.array([0, 2, 6, 6], np.int32)
    q = rng.standard_normal((7, 4, 5)).astype(dtype)
    k = rng.standard_normal((6, 2, 5)).astype(dtype)
    v = rng.standard_normal((6, 2, 3)).astype(dtype)
    opts = dict(causal=True, window=(2, -1), softcap=4.0)
    out, lse = seqcore.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, backend="numpy", **opts)
    r_out, r_lse = R.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, **opts)
    assert out.dtype == np.dtype(dtype)
    assert_close(out, r_out, dtype, name="out")
    assert_close(lse, r_lse, "float32", name="lse")
    dout = rng.standard_normal(out.shape).astype(dtype)
    p = make_attn_params(1 / np.sqrt(5), True, (2, -1), 4.0)
    grads = NB.attention_varlen_bwd(dout, q, k, v, cu_q, cu_k, 4, 4, out, lse, p)
    ref = R.attention_varlen_bwd(dout, q, k, v, cu_q, cu_k, **opts)
    for name, ours, want in zip(("dq", "dk", "dv"), grads, ref):
        assert ours.dtype == np.dtype(dtype)
        assert_close(ours, want, dtype, grad=True, name=name)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lengths, reverse, batch_first", [
    (None, False, False), ([4, 0, 2], True, False), ([1, 4, 3], False, True)])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_numpy_backend_rnn(rng, cell, dtype, lengths, reverse, batch_first):
    Tn, B, I, H = 4, 3, 5, 6
    w = {n: a.astype(dtype) for n, a in rnn_weights(rng, cell, I, H, bias=True).items()}
    x = rng.standard_normal((B, Tn, I) if batch_first else (Tn, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    opts = dict(lengths=lengths, reverse=reverse, batch_first=batch_first)
    if cell == "lstm":
        y, (h_n, c_n) = seqcore.lstm(x, **w, h0=h0, c0=h0, backend="numpy", **opts)
        r_y, (r_h, r_c) = R.lstm(x, **w, h0=h0, c0=h0, **opts)
        assert_close(c_n, r_c, dtype, name="c_n")
    else:
        y, h_n = seqcore.gru(x, **w, h0=h0, backend="numpy", **opts)
        r_y, r_h = R.gru(x, **w, h0=h0, **opts)
    assert y.dtype == np.dtype(dtype) and h_n.dtype == np.dtype(dtype)
    assert_close(y, r_y, dtype, name="y")
    assert_close(h_n, r_h, dtype, name="h_n")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_numpy_backend_cells(rng, cell):
    w = rnn_weights(rng, cell, 3, 5, bias=False)
    x, h, c = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3), (2, 5), (2, 5)))
    w = {n: None if a is None else a.astype(np.float32) for n, a in w.items()}
    if cell == "lstm":
        got, want = seqcore.lstm_cell(x, h, c, **w, backend="numpy"), R.lstm_cell(x, h, c, **w)
    else:
        got, want = [seqcore.gru_cell(x, h, **w, backend="numpy")], [R.gru_cell(x, h, **w)]
    for g, r in zip(got, want):
        assert g.dtype == np.float32
        assert_close(g, r, "float32")


def backend_rnn_args(rng, cell, Tn, B, I, H, dtype):
    w = rnn_weights(rng, cell, I, H, bias=True)
    n_states = 2 if cell == "lstm" else 1
    args = [rng.standard_normal((Tn, B, I)), w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"]]
    args += [rng.standard_normal((B, H)) for _ in range(n_states)]
    return [a.astype(dtype) for a in args]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lengths, reverse", [(None, False), (np.array([3, 0, 1], np.int64), True)])
def test_numpy_backend_lstm_bwd_and_ws(rng, dtype, lengths, reverse):
    Tn, B, I, H = 3, 3, 4, 5
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = args = backend_rnn_args(rng, "lstm", Tn, B, I, H, dtype)
    y, h_n, c_n, ws = NB.lstm_fwd(*args, lengths, reverse, True)
    acc = np.float64 if dtype == "float64" else np.float32
    assert ws.shape == (Tn, B, 5 * H) and ws.dtype == acc
    assert NB.lstm_fwd(*args, lengths, reverse, False)[3] is None
    # the workspace holds the activated gates and c_t: h_t = o * tanh(c_t) where a step ran
    o, c_t = ws[..., 3 * H:4 * H], ws[..., 4 * H:]
    ran = (np.arange(Tn)[:, None] < (np.full(B, Tn) if lengths is None else lengths))[..., None]
    assert_close(np.where(ran, o * np.tanh(c_t), 0.0), y, dtype, name="ws")
    dy, dh, dc = (rng.standard_normal(s).astype(dtype) for s in (y.shape, h_n.shape, c_n.shape))
    got = NB.lstm_bwd(dy, dh, dc, *args, lengths, reverse, y, ws)
    ref = R.lstm_bwd(dy, dh, dc, *args, lengths=lengths, reverse=reverse)
    for name, g in zip(("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0"), got):
        assert g.dtype == np.dtype(dtype)
        assert_close(g, ref[name], dtype, grad=True, name=name, scale=4.0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lengths, reverse", [(None, True), (np.array([2, 3, 0], np.int64), False)])
def test_numpy_backend_gru_bwd_and_ws(rng, dtype, lengths, reverse):
    Tn, B, I, H = 3, 3, 4, 5
    x, w_ih, w_hh, b_ih, b_hh, h0 = args = backend_rnn_args(rng, "gru", Tn, B, I, H, dtype)
    y, h_n, ws = NB.gru_fwd(*args, lengths, reverse, True)
    acc = np.float64 if dtype == "float64" else np.float32
    assert ws.shape == (Tn, B, 4 * H) and ws.dtype == acc
    assert NB.gru_fwd(*args, lengths, reverse, False)[2] is None
    # ws holds r, z, n, W_hn h + b_hn: n = tanh(W_in x + b_in + r * hn)
    r, n, hn = ws[..., :H], ws[..., 2 * H:3 * H], ws[..., 3 * H:]
    in_ = x.astype(np.float64) @ w_ih[2 * H:].T.astype(np.float64) + b_ih[2 * H:]
    ran = (np.arange(Tn)[:, None] < (np.full(B, Tn) if lengths is None else lengths))[..., None]
    assert_close(np.where(ran, n, 0.0), np.where(ran, np.tanh(in_ + r * hn), 0.0), dtype, name="ws")
    dy, dh = rng.standard_normal(y.shape).astype(dtype), rng.standard_normal(h_n.shape).astype(dtype)
    got = NB.gru_bwd(dy, dh, *args, lengths, reverse, y, ws)
    ref = R.gru_bwd(dy, dh, *args, lengths=lengths, reverse=reverse)
    for name, g in zip(("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0"), got):
        assert g.dtype == np.dtype(dtype)
        assert_close(g, ref[name], dtype, grad=True, name=name, scale=4.0)
