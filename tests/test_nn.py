"""seqcore.nn: LSTM/GRU/RNN and their cells against torch.nn's with the same weights, and
MultiheadSelfAttention against F.linear + scaled_dot_product_attention."""
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import seqcore.nn as snn  # noqa: E402
from conftest import assert_close, require_backend  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}
PAIRS = {"lstm": (snn.LSTM, torch.nn.LSTM), "gru": (snn.GRU, torch.nn.GRU)}
for _nl in ("tanh", "relu"):
    PAIRS["rnn_" + _nl] = (functools.partial(snn.RNN, nonlinearity=_nl),
                           functools.partial(torch.nn.RNN, nonlinearity=_nl))
CELLS = list(PAIRS)




def tensor(rng, shape, dtype, requires_grad=False):
    return torch.from_numpy(rng.standard_normal(shape)).to(DTYPES[dtype]).requires_grad_(requires_grad)


def twin(cell, dtype, backend="c", **kwargs):
    """A torch module and a seqcore module holding the same weights."""
    ours, theirs = PAIRS[cell]
    ref = theirs(dtype=DTYPES[dtype], **kwargs)
    mine = ours(dtype=DTYPES[dtype], backend=backend, **kwargs)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def flat_state(state):
    return torch.cat([s.reshape(-1) for s in state]) if isinstance(state, tuple) else state


def weighted_loss(out, state, out_w, state_w):
    data = out.data if hasattr(out, "batch_sizes") else out
    return (data * out_w).sum() + (flat_state(state) * state_w).sum()


def compare(rng, ref, mine, input_ref, input_mine, hx, dtype):
    """Forward outputs, final states and every parameter gradient agree."""
    out_r, state_r = ref(input_ref, hx)
    out_m, state_m = mine(input_mine, hx)
    data_r = out_r.data if hasattr(out_r, "batch_sizes") else out_r
    data_m = out_m.data if hasattr(out_m, "batch_sizes") else out_m
    assert type(out_m) is type(out_r)
    assert_close(data_m, data_r, dtype, name="output")
    assert_close(flat_state(state_m), flat_state(state_r), dtype, name="h_n/c_n")
    assert type(state_m) is type(state_r)
    out_w = torch.from_numpy(rng.standard_normal(tuple(data_r.shape))).to(data_r.dtype)
    state_w = torch.from_numpy(rng.standard_normal(tuple(flat_state(state_r).shape))).to(data_r.dtype)
    weighted_loss(out_r, state_r, out_w, state_w).backward()
    weighted_loss(out_m, state_m, out_w, state_w).backward()
    ref_params = dict(ref.named_parameters())
    for name, p in mine.named_parameters():
        assert_close(p.grad, ref_params[name].grad, dtype, grad=True, name=f"grad {name}", scale=4)
    return out_m, state_m


# (num_layers, bidirectional, batch_first, bias)
CONFIGS = [(2, True, False, True), (2, False, True, True), (1, True, True, False)]


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("with_hx", [False, True])
def test_rnn_matches_torch(rng, backend, dtype, cell, config, with_hx):
    require_backend(backend)
    num_layers, bidirectional, batch_first, bias = config
    ref, mine = twin(cell, dtype, backend, input_size=5, hidden_size=3, num_layers=num_layers,
                     bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    B, T = 3, 4
    x = tensor(rng, (B, T, 5) if batch_first else (T, B, 5), dtype)
    hx = None
    if with_hx:
        shape = (num_layers * (2 if bidirectional else 1), B, 3)
        hx = (tensor(rng, shape, dtype), tensor(rng, shape, dtype)) if cell == "lstm" else \
            tensor(rng, shape, dtype)
    x_ref, x_mine = x.clone().requires_grad_(), x.clone().requires_grad_()
    compare(rng, ref, mine, x_ref, x_mine, hx, dtype)
    assert_close(x_mine.grad, x_ref.grad, dtype, grad=True, name="grad input", scale=4)


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("with_hx", [False, True])
def test_packed_sequence_unsorted_lengths(rng, backend, dtype, cell, with_hx):
    require_backend(backend)
    ref, mine = twin(cell, dtype, backend, input_size=4, hidden_size=3, num_layers=2,
                     bidirectional=True, batch_first=True)
    lengths = torch.tensor([3, 6, 1, 4])
    x = tensor(rng, (4, 6, 4), dtype)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    hx = None
    if with_hx:
        hx = tuple(tensor(rng, (4, 4, 3), dtype) for _ in range(2 if cell == "lstm" else 1))
        hx = hx if cell == "lstm" else hx[0]
    out, _ = compare(rng, ref, mine, packed, packed, hx, dtype)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert torch.equal(out.sorted_indices, packed.sorted_indices)
    assert torch.equal(out.unsorted_indices, packed.unsorted_indices)


@pytest.mark.parametrize("cell", CELLS)
def test_unbatched_input(rng, cell):
    require_backend("c")
    ref, mine = twin(cell, "float64", input_size=3, hidden_size=2, num_layers=2, bidirectional=True)
    x = tensor(rng, (5, 3), "float64")
    hx = tensor(rng, (4, 2), "float64")
    hx = (hx, tensor(rng, (4, 2), "float64")) if cell == "lstm" else hx
    for given in (None, hx):
        out_r, state_r = ref(x, given)
        out_m, state_m = mine(x, given)
        assert out_m.shape == (5, 4)
        assert_close(out_m, out_r, "float64")
        assert_close(flat_state(state_m), flat_state(state_r), "float64")


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_both_ways_and_init(rng, cell):
    ours, theirs = PAIRS[cell]
    kwargs = dict(input_size=6, hidden_size=5, num_layers=3, bidirectional=True, bias=True)
    torch.manual_seed(0)
    mine = ours(**kwargs)
    ref = theirs(**kwargs)
    assert list(mine.state_dict()) == list(ref.state_dict())
    assert [p.shape for p in mine.parameters()] == [p.shape for p in ref.parameters()]
    ref.load_state_dict(mine.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), mine.parameters()))
    bound = 1 / np.sqrt(5)
    for p in mine.parameters():  # uniform(-1/sqrt(H), 1/sqrt(H))
        assert p.abs().max() <= bound and (p.numel() < 20 or p.std() > bound / 4)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "mode", "proj_size", "_flat_weights_names"):
        assert getattr(mine, attr) == getattr(ref, attr), attr
    if cell.startswith("rnn_"):
        assert mine.nonlinearity == ref.nonlinearity
    # torch's RNN internals that user code reads
    assert [p.shape for p in mine._flat_weights] == [p.shape for p in ref._flat_weights]
    assert all(a is getattr(mine, n) for a, n in zip(mine._flat_weights, mine._flat_weights_names))
    assert mine.flatten_parameters() is None
    assert [[p.shape for p in w] for w in mine.all_weights] == \
        [[p.shape for p in w] for w in ref.all_weights]


def test_constructor_errors():
    with pytest.raises(ValueError, match="proj_size"):
        snn.LSTM(3, 4, proj_size=4)  # (torch: smaller than hidden_size)
    with pytest.raises(ValueError, match="only supported for LSTM"):
        snn.GRU(3, 4, proj_size=2)  # torch's ValueError, not a TypeError
    with pytest.raises(ValueError, match="only supported for LSTM"):
        snn.RNN(3, 4, proj_size=0)
    with pytest.raises(ValueError, match="dropout"):
        snn.GRU(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="hidden_size"):
        snn.LSTM(3, 0)
    gru = snn.GRU(3, 4, num_layers=2)
    with pytest.raises(ValueError, match="h_0 must have shape"):
        gru(torch.zeros(2, 1, 3), torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="input_size"):
        gru(torch.zeros(2, 1, 5))
    with pytest.raises(ValueError, match="nonlinearity"):
        snn.RNN(3, 4, 1, "sigmoid")
    with pytest.raises(ValueError, match="nonlinearity"):
        snn.RNNCell(3, 4, nonlinearity="gelu")


# ---- cells: LSTMCell, GRUCell, RNNCell against torch's ----------------------------------------

CELL_PAIRS = {"lstm": (snn.LSTMCell, torch.nn.LSTMCell), "gru": (snn.GRUCell, torch.nn.GRUCell)}
for _nl in ("tanh", "relu"):
    CELL_PAIRS["rnn_" + _nl] = (functools.partial(snn.RNNCell, nonlinearity=_nl),
                                functools.partial(torch.nn.RNNCell, nonlinearity=_nl))


def cell_twin(cell, dtype, backend, **kwargs):
    ours, theirs = CELL_PAIRS[cell]
    ref = theirs(dtype=DTYPES[dtype], **kwargs)
    mine = ours(dtype=DTYPES[dtype], backend=backend, **kwargs)
    assert list(mine.state_dict()) == list(ref.state_dict())
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [3, None], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [False, True])
def test_cells_match_torch(rng, backend, dtype, cell, bias, batch, with_hx):
    """Outputs and the gradients of input, states and parameters, over a few steps fed back
    into the cell (as a streaming loop does)."""
    require_backend(backend)
    ref, mine = cell_twin(cell, dtype, backend, input_size=5, hidden_size=6, bias=bias)
    lead = () if batch is None else (batch,)
    xs = [tensor(rng, lead + (5,), dtype, requires_grad=True) for _ in range(3)]
    hx = None
    if with_hx:
        states = tuple(tensor(rng, lead + (6,), dtype, requires_grad=True)
                       for _ in range(2 if cell == "lstm" else 1))
        hx = states if cell == "lstm" else states[0]
    outs = {}
    for name, module in (("ref", ref), ("mine", mine)):
        state = hx
        for x in xs:
            state = module(x, state)
        outs[name] = as_tuple(state)
    for got, want in zip(outs["mine"], outs["ref"]):
        assert got.shape == want.shape
        assert_close(got, want, dtype, name="state")
    seeds = [torch.from_numpy(rng.standard_normal(tuple(o.shape))).to(DTYPES[dtype])
             for o in outs["ref"]]
    leaves = xs + (list(as_tuple(hx)) if hx is not None else [])
    for name, module in (("ref", ref), ("mine", mine)):
        params = list(module.parameters())
        outs[name + "_grads"] = torch.autograd.grad(outs[name], leaves + params, seeds)
    for got, want in zip(outs["mine_grads"], outs["ref_grads"]):
        assert_close(got, want, dtype, grad=True, scale=4, name="grad")


@pytest.mark.parametrize("cell", CELLS)
def test_cell_errors_and_attributes(cell):
    ours, theirs = CELL_PAIRS[cell]
    mine, ref = ours(3, 4), theirs(3, 4)
    assert repr(mine) == repr(ref)
    assert (mine.input_size, mine.hidden_size, mine.bias) == (ref.input_size, ref.hidden_size, ref.bias)
    with pytest.raises(ValueError, match="1D or 2D"):
        mine(torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="input_size"):
        mine(torch.zeros(2, 5))
    bad = torch.zeros(3, 4)
    with pytest.raises((ValueError, TypeError)):
        mine(torch.zeros(2, 3), (bad, bad) if cell == "lstm" else bad)
    if cell == "lstm":
        with pytest.raises(TypeError, match="pair"):
            mine(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("cell", CELLS)
def test_cells_take_hidden_size_zero(cell):
    """torch's cells accept hidden_size=0 (empty states); so do these."""
    require_backend("c")
    ours, theirs = CELL_PAIRS[cell]
    got = as_tuple(ours(3, 0)(torch.randn(2, 3)))
    want = as_tuple(theirs(3, 0)(torch.randn(2, 3)))
    assert [g.shape for g in got] == [w.shape for w in want] == [(2, 0)] * len(want)


# LSTM(proj_size=...): (num_layers, bidirectional, packed, with_hx)
PROJ_CONFIGS = [(1, False, False, False), (2, True, False, True), (2, False, True, True)]


@pytest.mark.parametrize("backend,dtype", [(b, d) for b in ("numpy", "c") for d in
                                           ("float32", "float64")] + [("triton", "float32")])
@pytest.mark.parametrize("config", PROJ_CONFIGS)
def test_lstm_projection_matches_torch(request, rng, backend, dtype, config):
    """torch.nn.LSTM(proj_size=P)'s state dict loads, and outputs, states and every gradient
    (weight_hr included) match, packed sequences too."""
    require_backend(backend)
    if backend == "triton":  # (float32: the triton backend has no float64)
        if request.getfixturevalue("triton_device") != "cpu":
            pytest.skip("CPU modules: runs the Triton kernels under the interpreter")
    num_layers, bidirectional, packed, with_hx = config
    ref, mine = twin("lstm", dtype, backend, input_size=5, hidden_size=6, proj_size=4,
                     num_layers=num_layers, bidirectional=bidirectional)
    assert list(mine.state_dict()) == list(ref.state_dict())
    assert mine._flat_weights_names == ref._flat_weights_names
    B, T = 3, 5
    x = tensor(rng, (T, B, 5), dtype)
    hx = None
    if with_hx:
        L = num_layers * (2 if bidirectional else 1)
        hx = (tensor(rng, (L, B, 4), dtype), tensor(rng, (L, B, 6), dtype))
    if packed:
        inp = pack_padded_sequence(x, torch.tensor([5, 2, 4]), enforce_sorted=False)
        compare(rng, ref, mine, inp, inp, hx, dtype)
    else:
        x_ref, x_mine = x.clone().requires_grad_(), x.clone().requires_grad_()
        compare(rng, ref, mine, x_ref, x_mine, hx, dtype)
        assert_close(x_mine.grad, x_ref.grad, dtype, grad=True, name="grad input", scale=4)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_between_layers(rng, cell):
    require_backend("c")
    ref, mine = twin(cell, "float64", input_size=3, hidden_size=4, num_layers=2, dropout=0.5)
    x = tensor(rng, (4, 2, 3), "float64")
    mine.train()
    torch.manual_seed(1)
    a, _ = mine(x)
    torch.manual_seed(2)
    b, _ = mine(x)
    assert not torch.allclose(a, b), "training mode: dropout must change the output"
    mine.eval()
    ref.eval()
    assert_close(mine(x)[0], ref(x)[0], "float64")  # eval: no dropout, same as torch


# ---- MultiheadSelfAttention -------------------------------------------------------------------

def sdpa_reference(module, x, attn_bias, key_padding_mask):
    """The same weights through F.linear and scaled_dot_product_attention (batch first)."""
    B, S, _ = x.shape
    Hq, Hkv, d = module.num_heads, module.num_kv_heads, module.head_dim
    qkv = F.linear(x, module.qkv_proj.weight, module.qkv_proj.bias)
    q, k, v = qkv.split([Hq * d, Hkv * d, Hkv * d], -1)
    q, k, v = (t.reshape(B, S, -1, d).transpose(1, 2) for t in (q, k, v))
    k, v = (t.repeat_interleave(Hq // Hkv, dim=1) for t in (k, v))
    mask = torch.zeros(B, Hq, S, S, dtype=x.dtype)
    if module.causal:
        mask = mask.masked_fill(~torch.ones(S, S, dtype=torch.bool).tril(), float("-inf"))
    if attn_bias is not None:
        mask = mask + attn_bias
    if key_padding_mask is not None:
        mask = mask.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.linear(out.transpose(1, 2).reshape(B, S, Hq * d), module.out_proj.weight,
                    module.out_proj.bias)


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_kv_heads,causal,batch_first", [(None, False, True), (2, True, False),
                                                              (1, True, True)])
@pytest.mark.parametrize("masks", [False, True])
def test_mhsa_matches_sdpa(rng, backend, dtype, num_kv_heads, causal, batch_first, masks):
    require_backend(backend)
    E, H, B, S = 12, 4, 2, 5
    module = snn.MultiheadSelfAttention(E, H, num_kv_heads=num_kv_heads, causal=causal,
                                        batch_first=batch_first, dtype=DTYPES[dtype],
                                        backend=backend)
    x = tensor(rng, (B, S, E), dtype)
    attn_bias = tensor(rng, (H, S, S), dtype) if masks else None
    # the first key is never padded, so no query row is fully masked (SDPA gives NaN there)
    padding = torch.tensor([[False] * S, [False, False, True, False, True]]) if masks else None
    x_mine = (x if batch_first else x.transpose(0, 1)).clone().requires_grad_()
    y = module(x_mine, attn_bias=attn_bias, key_padding_mask=padding)
    x_ref = x.clone().requires_grad_()
    want = sdpa_reference(module, x_ref, attn_bias, padding)
    assert_close(y if batch_first else y.transpose(0, 1), want, dtype, name="y")
    y_w = tensor(rng, tuple(want.shape), dtype)
    grads = torch.autograd.grad(((y if batch_first else y.transpose(0, 1)) * y_w).sum(),
                                [x_mine] + list(module.parameters()))
    want_grads = torch.autograd.grad((want * y_w).sum(), [x_ref] + list(module.parameters()))
    got_x = grads[0] if batch_first else grads[0].transpose(0, 1)
    assert_close(got_x, want_grads[0], dtype, grad=True, name="grad x", scale=4)
    for (name, _), g, w in zip(module.named_parameters(), grads[1:], want_grads[1:]):
        assert_close(g, w, dtype, grad=True, name=f"grad {name}", scale=4)


def test_mhsa_errors():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        snn.MultiheadSelfAttention(10, 4)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        snn.MultiheadSelfAttention(12, 4, num_kv_heads=3)
    module = snn.MultiheadSelfAttention(8, 2)
    with pytest.raises(TypeError, match="boolean"):
        module(torch.zeros(1, 3, 8), attn_bias=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_padding_mask"):
        module(torch.zeros(1, 3, 8), key_padding_mask=torch.zeros(1, 4, dtype=torch.bool))


@pytest.mark.parametrize("cell", CELLS + ["mhsa"])
def test_modules_compile_fullgraph(rng, cell):
    """torch.compile(fullgraph=True) traces the modules ("aot_eager": see test_torch.py)."""
    require_backend("c")
    if cell == "mhsa":
        module = snn.MultiheadSelfAttention(8, 2, num_kv_heads=1, causal=True)
        x = tensor(rng, (2, 3, 8), "float32")
    else:
        module = PAIRS[cell][0](3, 4, num_layers=2, bidirectional=True)
        x = tensor(rng, (5, 2, 3), "float32")
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    got = first(compiled(x))
    got_grads = torch.autograd.grad(got.square().sum(), list(module.parameters()))
    want = first(module(x))
    want_grads = torch.autograd.grad(want.square().sum(), list(module.parameters()))
    assert_close(got, want, "float32")
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, "float32", grad=True)


# ------------------------------------------------------------------ decoding with a KVCache


@pytest.mark.parametrize("block_size", [None, 16], ids=["dense", "paged"])
def test_decoding_with_a_cache_equals_the_full_causal_pass(block_size):
    """Prefill, then one token at a time: the same outputs as one causal pass over the whole
    sequence (GQA; a paged cache takes blocks from its pool as the sequences grow)."""
    torch.manual_seed(0)
    attn = snn.MultiheadSelfAttention(32, 4, num_kv_heads=2, causal=True, window=(20, 0))
    x = torch.randn(3, 41, 32)
    with torch.no_grad():
        full = attn(x)
        cache = attn.new_cache(batch_size=3, max_seqlen=48, block_size=block_size)
        steps = [attn(x[:, :17], cache=cache)] + [attn(x[:, t:t + 1], cache=cache)
                                                  for t in range(17, 41)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.seqlens.tolist() == [41, 41, 41]
    if block_size:
        used = cache.block_table[:, :3].flatten().tolist()
        assert len(set(used)) == 9  # every sequence its own blocks
        cache.reset(1)
        assert cache.seqlens.tolist() == [41, 0, 41]


def test_cache_limits_are_clear_errors():
    cache = snn.KVCache(2, 1, 8, 32, block_size=16, num_blocks=3)
    q, kv = torch.randn(2, 2, 1, 8), torch.randn(2, 1, 20, 8)
    with pytest.raises(ValueError, match="blocks are all taken"):
        cache.attend(q, kv, kv)  # 2 sequences x 2 blocks > 3
    with pytest.raises(ValueError, match="max_seqlen"):
        snn.KVCache(1, 1, 8, 32).attend(q[:1], kv[:1].repeat(1, 1, 2, 1), kv[:1].repeat(1, 1, 2, 1))
    with pytest.raises(ValueError, match="multiple of 16"):
        snn.KVCache(1, 1, 8, 32, block_size=24)
    attn = snn.MultiheadSelfAttention(16, 2)
    with pytest.raises(ValueError, match="with a cache"):
        attn(torch.randn(1, 1, 16), attn_bias=torch.zeros(1, 2, 1, 1), cache=attn.new_cache(1, 4))


# ------------------------------------------------------------------ MultiheadAttention (drop-in)

_MHA_CASES = [  # (constructor kwargs, forward kwargs, query/key/value shapes)
    ({}, {}, ((5, 2, 8), (7, 2, 8), (7, 2, 8))),
    (dict(batch_first=True), {}, ((2, 5, 8), (2, 7, 8), (2, 7, 8))),
    (dict(kdim=5, vdim=6), {}, ((5, 2, 8), (7, 2, 5), (7, 2, 6))),
    (dict(add_bias_kv=True, add_zero_attn=True), dict(key_padding_mask="bool"), None),
    ({}, dict(attn_mask="bool2d", average_attn_weights=False), None),
    ({}, dict(attn_mask="float3d", need_weights=False), None),
    ({}, dict(key_padding_mask="float"), None),
    (dict(bias=False), dict(attn_mask="causal", is_causal=True, need_weights=False),
     ((5, 2, 8), (5, 2, 8), (5, 2, 8))),
    ({}, dict(attn_mask="causal", is_causal=True), ((5, 2, 8), (5, 2, 8), (5, 2, 8))),
    ({}, {}, ((5, 8), (7, 8), (7, 8))),  # unbatched
]


def _mha_masks(fkw, gen):
    made = {"bool": lambda: torch.rand(2, 7, generator=gen) > 0.7,
            "float": lambda: torch.randn(2, 7, generator=gen, dtype=torch.float64),
            "bool2d": lambda: torch.rand(5, 7, generator=gen) > 0.6,
            "float3d": lambda: torch.randn(4, 5, 7, generator=gen, dtype=torch.float64),
            "causal": lambda: torch.nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)}
    return {k: made[v]() if isinstance(v, str) else v for k, v in fkw.items()}


@pytest.mark.parametrize("index", range(len(_MHA_CASES)))
def test_multihead_attention_is_torchs(index):
    """torch's state dict loads; outputs, attention weights and gradients match torch's."""
    require_backend("c")
    kw, fkw, shapes = _MHA_CASES[index]
    shapes = shapes or ((5, 2, 8), (7, 2, 8), (7, 2, 8))
    gen = torch.Generator().manual_seed(index)
    ref = torch.nn.MultiheadAttention(8, 2, dtype=torch.float64, **kw)
    ours = snn.MultiheadAttention(8, 2, dtype=torch.float64, **kw)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    args = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]
    fkw = _mha_masks(fkw, gen)
    want, got = ref(*args, **fkw), ours(*args, **fkw)
    assert_close(got[0].detach().numpy(), want[0].detach().numpy(), "float64", name="out")
    assert (got[1] is None) == (want[1] is None)
    if want[1] is not None:
        assert_close(got[1].detach().numpy(), want[1].detach().numpy(), "float64", name="weights")
    params = lambda m: [p for _, p in sorted(m.named_parameters())]  # noqa: E731
    g_want = torch.autograd.grad(want[0].sum(), args + params(ref))
    g_got = torch.autograd.grad(got[0].sum(), args + params(ours))
    for a, b in zip(g_got, g_want):
        assert_close(a.numpy(), b.numpy(), "float64", grad=True, name="grad")


def test_multihead_attention_refusals():
    mha = snn.MultiheadAttention(8, 2, dropout=0.1)
    x = torch.randn(3, 1, 8)
    with pytest.raises(RuntimeError, match="is_causal"):
        mha(x, x, x, is_causal=True)
    with pytest.raises(ValueError, match="multiple"):
        snn.MultiheadAttention(9, 2)
