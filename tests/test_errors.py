"""Bad input gets a clear ValueError/TypeError naming the argument and the shapes seen,
before any kernel runs (the backend module lookup is made to fail loudly here)."""
import numpy as np
import pytest

import seqcore
from seqcore import _backends


@pytest.fixture(autouse=True)
def no_kernels(monkeypatch):
    def refuse(backend, family):
        raise AssertionError(f"a {backend} {family} kernel was reached with bad input")

    monkeypatch.setattr(_backends, "module", refuse)


def f32(*shape):
    return np.zeros(shape, np.float32)


def attn_ok(**over):
    args = dict(q=f32(2, 4, 5, 8), k=f32(2, 2, 6, 8), v=f32(2, 2, 6, 3))
    args.update(over)
    return args


@pytest.mark.parametrize("over, exc, words", [
    (dict(q=f32(5, 8)), ValueError, ["q", "(5, 8)"]),
    (dict(k=f32(2, 2, 6, 7)), ValueError, ["head dim", "k (2, 2, 6, 7)"]),
    (dict(v=f32(2, 2, 7, 3)), ValueError, ["sequence length", "v (2, 2, 7, 3)"]),
    (dict(k=f32(2, 3, 6, 8), v=f32(2, 3, 6, 3)), ValueError, ["Hq=4", "Hkv=3"]),
    (dict(k=f32(3, 2, 6, 8)), ValueError, ["batch"]),
    (dict(k=f32(1, 2, 2, 6, 8)), ValueError, ["number of dims"]),
    (dict(q=f32(2, 4, 5, 300), k=f32(2, 2, 6, 300)), ValueError, ["[1, 256]", "300"]),
    (dict(v=f32(2, 2, 6, 0)), ValueError, ["Dv", "0"]),
    (dict(q=np.zeros((2, 4, 5, 8), np.int32)), TypeError, ["dtype"]),
    (dict(k=np.zeros((2, 2, 6, 8), np.float64)), TypeError, ["k", "float64", "float32"]),
    (dict(q=[[1.0]]), TypeError, ["q", "list"]),
    (dict(bias=f32(3, 5, 6)), ValueError, ["bias", "(3, 5, 6)", "broadcast"]),
    (dict(bias=f32(1, 1, 2, 4, 5, 6)), ValueError, ["bias", "more dims"]),
    (dict(scale="1"), TypeError, ["scale"]),
    (dict(scale=float("nan")), ValueError, ["scale"]),
    (dict(softcap=0.0), ValueError, ["softcap"]),
    (dict(softcap=-1.0), ValueError, ["softcap"]),
    (dict(window=(3,)), TypeError, ["window"]),
    (dict(window=(-2, 0)), ValueError, ["window[0]", "-2"]),
    (dict(window=(1.5, 0)), TypeError, ["window[0]"]),
    (dict(causal=1), TypeError, ["causal"]),
    (dict(backend="cuda"), ValueError, ["backend"]),
    (dict(backend="triton"), TypeError, ["triton", "torch"]),
])
def test_attention_bad_input(over, exc, words):
    args = attn_ok(**over)
    with pytest.raises(exc) as info:
        seqcore.attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)
    for w in words:
        assert w in str(info.value), f"{w!r} not in message: {info.value}"


def varlen_ok(**over):
    args = dict(q=f32(7, 4, 8), k=f32(9, 2, 8), v=f32(9, 2, 8),
                cu_seqlens_q=np.array([0, 3, 7], np.int32), cu_seqlens_k=np.array([0, 4, 9], np.int32))
    args.update(over)
    return args


@pytest.mark.parametrize("over, exc, words", [
    (dict(q=f32(2, 7, 4, 8)), ValueError, ["q", "(total, heads, dim)"]),
    (dict(cu_seqlens_q=np.array([0, 3, 6], np.int32)), ValueError, ["cu_seqlens_q[-1]", "7"]),
    (dict(cu_seqlens_q=np.array([1, 3, 7], np.int32)), ValueError, ["start at 0"]),
    (dict(cu_seqlens_k=np.array([0, 5, 4, 9], np.int32)), ValueError, ["non-decreasing"]),
    (dict(cu_seqlens_k=np.array([0, 9], np.int32)), ValueError, ["same number of sequences"]),
    (dict(cu_seqlens_q=np.array([0.0, 3, 7])), TypeError, ["cu_seqlens_q", "int"]),
    (dict(cu_seqlens_q=[0, 3, 7]), TypeError, ["cu_seqlens_q"]),
    (dict(max_seqlen_q=2), ValueError, ["max_seqlen_q", "4"]),
    (dict(k=f32(9, 3, 8), v=f32(9, 3, 8)), ValueError, ["Hq=4", "Hkv=3"]),
])
def test_varlen_bad_input(over, exc, words):
    args = varlen_ok(**over)
    with pytest.raises(exc) as info:
        seqcore.attention_varlen(args.pop("q"), args.pop("k"), args.pop("v"),
                                 args.pop("cu_seqlens_q"), args.pop("cu_seqlens_k"), **args)
    for w in words:
        assert w in str(info.value), f"{w!r} not in message: {info.value}"


def test_merge_bad_input():
    with pytest.raises(ValueError, match="lse_a"):
        seqcore.merge_attention(f32(2, 3, 4), f32(2, 4), f32(2, 3, 4), f32(2, 3))
    with pytest.raises(ValueError, match="out_b"):
        seqcore.merge_attention(f32(2, 3, 4), f32(2, 3), f32(2, 3, 5), f32(2, 3))
    # found by fuzzing: integer and complex lse, 0-d out
    for bad in (np.zeros((2, 3), np.int32), np.zeros((2, 3), np.complex64)):
        with pytest.raises(TypeError, match="lse_b.*floating"):
            seqcore.merge_attention(f32(2, 3, 4), f32(2, 3), f32(2, 3, 4), bad)
    with pytest.raises(ValueError, match="0-d"):
        seqcore.merge_attention(f32(), f32(), f32(), f32())


H, I, B, T = 5, 3, 2, 4


def rnn_ok(cell, **over):
    G = 4 if cell == "lstm" else 3
    args = dict(x=f32(T, B, I), w_ih=f32(G * H, I), w_hh=f32(G * H, H), b_ih=f32(G * H), b_hh=f32(G * H))
    args.update(over)
    return args


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("over, exc, words", [
    (dict(x=f32(B, I)), ValueError, ["x", "(T, B, input_size)", "(2, 3)"]),
    (dict(w_hh=f32(7, H)), ValueError, ["w_hh", "(7, 5)"]),
    (dict(w_ih=f32(20, I + 1)), ValueError, ["w_ih", "input_size"]),
    (dict(b_ih=f32(3)), ValueError, ["b_ih", "(3,)"]),
    (dict(h0=f32(B + 1, H)), ValueError, ["h0", "(3, 5)"]),
    (dict(lengths=[1, 2, 3]), ValueError, ["lengths", "(2,)"]),
    (dict(lengths=[1, T + 1]), ValueError, ["lengths", "[0, T=4]"]),
    (dict(lengths=[-1, 2]), ValueError, ["lengths"]),
    (dict(lengths=[1.0, 2.0]), TypeError, ["lengths", "integers"]),
    (dict(w_hh="w"), TypeError, ["w_hh"]),
    (dict(reverse=1), TypeError, ["reverse"]),
    (dict(x=np.zeros((T, B, I), np.float64)), TypeError, ["dtype"]),
    (dict(x=np.zeros((T, B, I), np.int64)), TypeError, ["dtype"]),
])
def test_rnn_bad_input(cell, over, exc, words):
    G = 4 if cell == "lstm" else 3
    over = {k: (f32(G * 5, I + 1) if k == "w_ih" else v) for k, v in over.items()}
    args = rnn_ok(cell, **over)
    fn = seqcore.lstm if cell == "lstm" else seqcore.gru
    with pytest.raises(exc) as info:
        fn(args.pop("x"), args.pop("w_ih"), args.pop("w_hh"), **args)
    for w in words:
        assert w in str(info.value), f"{w!r} not in message: {info.value}"


def test_cell_bad_input():
    with pytest.raises(ValueError, match=r"c must have shape"):
        seqcore.lstm_cell(f32(B, I), f32(B, H), f32(B, H + 1), f32(4 * H, I), f32(4 * H, H))
    with pytest.raises(ValueError, match=r"x must be \(B, input_size\)"):
        seqcore.gru_cell(f32(T, B, I), f32(B, H), f32(3 * H, I), f32(3 * H, H))
    with pytest.raises(TypeError, match="needs h"):
        seqcore.gru_cell(f32(B, I), None, f32(3 * H, I), f32(3 * H, H))


def test_mixed_kinds_are_type_errors():
    torch = pytest.importorskip("torch")
    q = f32(1, 2, 3, 4)
    with pytest.raises(TypeError, match="mix NumPy arrays and torch tensors"):
        seqcore.attention(q, torch.zeros(1, 2, 3, 4), q)
    with pytest.raises(TypeError, match="mix"):
        seqcore.lstm(f32(T, B, I), torch.zeros(4 * H, I), f32(4 * H, H))


def test_triton_on_cpu_tensors_needs_interpreter(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        seqcore.attention(q, q, q, backend="triton")


def test_backend_status_explains():
    status = seqcore.backend_status()
    assert set(status) == {"c", "triton", "numpy"}
    assert status["numpy"].startswith("available")
    avail = seqcore.available_backends()
    assert "numpy" in avail and all(status[b].startswith("available") for b in avail)
    assert all(status[b] and not status[b].startswith("available")
               for b in ("c", "triton") if b not in avail)
    if "c" in avail:  # which ISA level the C kernels run at
        from seqcore import _c

        assert f"ISA level {_c.isa()}" in status["c"]
