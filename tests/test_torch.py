"""torch integration (seqcore/_torch.py): the custom ops, autograd, torch.compile, array kinds.

Every op is checked with torch.library.opcheck (schema, fake tensor, autograd registration,
AOT dispatch); gradients through seqcore.attention / lstm / gru against seqcore.reference's
backward and with torch.autograd.gradcheck; torch.compile(fullgraph=True) traces through.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import seqcore  # noqa: E402
from seqcore import reference  # noqa: E402
import seqcore._torch  # noqa: E402,F401  (registers torch.ops.seqcore.*)
from conftest import (CELLS, GATES, assert_close, cell_states, require_backend,  # noqa: E402
                      seq_fn)

ops = torch.ops.seqcore
TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}
CPU_BACKENDS = ["numpy", "c"]




def tensor(rng, shape, dtype="float64", requires_grad=False, device="cpu"):
    t = torch.from_numpy(rng.standard_normal(shape)).to(device=device, dtype=TORCH_DTYPES[dtype])
    return t.requires_grad_(requires_grad)


def f64(t):
    return None if t is None else t.detach().cpu().double().numpy()


# ---- attention problems -------------------------------------------------------------------------

# (B, Hq, Hkv, Sq, Sk, D, Dv): GQA, odd head dims, Sq != Sk, length 1
ATTN_SHAPES = [(2, 4, 2, 5, 7, 8, 6), (1, 3, 1, 1, 4, 5, 3), (1, 2, 2, 6, 3, 3, 4)]
ATTN_OPTIONS = [dict(causal=True), dict(window=(2, 1), softcap=2.5), dict(scale=0.3)]


def attn_inputs(rng, shape, dtype, bias_shape=None, requires_grad=False):
    B, Hq, Hkv, Sq, Sk, D, Dv = shape
    q = tensor(rng, (B, Hq, Sq, D), dtype, requires_grad)
    k = tensor(rng, (B, Hkv, Sk, D), dtype, requires_grad)
    v = tensor(rng, (B, Hkv, Sk, Dv), dtype, requires_grad)
    bias = None if bias_shape is None else tensor(rng, bias_shape, dtype, requires_grad)
    return q, k, v, bias


def op_params(causal=False, window=None, softcap=None, scale=None, D=8, dropout_p=0.0,
              dropout_seed=0):
    p = seqcore._problem.make_attn_params(scale if scale is not None else D ** -0.5, causal,
                                          window, softcap, dropout_p, dropout_seed)
    return (p.scale, p.window_left, p.window_right, p.softcap, p.causal, p.dropout_p,
            p.dropout_seed)


# ---- opcheck on every op ------------------------------------------------------------------------

BACKEND_DTYPES = [("numpy", "float64"), ("c", "float32"), ("c", "float64")]


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("bias_kind", [None, "full", "broadcast"])
def test_opcheck_attention(rng, backend, dtype, bias_kind):
    require_backend(backend)
    shape = (2, 4, 2, 5, 7, 8, 6)
    q, k, v, _ = attn_inputs(rng, shape, dtype, requires_grad=True)
    bias = None
    if bias_kind == "full":
        bias = tensor(rng, (2, 4, 5, 7), dtype, True)
    elif bias_kind == "broadcast":  # what attention.py hands over: a zero-stride view
        bias = tensor(rng, (1, 4, 1, 7), dtype).expand(2, 4, 5, 7).requires_grad_()
    params = op_params(causal=True, softcap=3.0)
    torch.library.opcheck(ops.attention_fwd, (q, k, v, bias) + params + (backend,))
    out, lse = ops.attention_fwd(q, k, v, bias, *params, backend)
    dout = torch.randn_like(out)
    args = (dout, q.detach(), k.detach(), v.detach(), None if bias is None else bias.detach(),
            out.detach(), lse.detach()) + params + (backend, bias is not None)
    torch.library.opcheck(ops.attention_bwd, args)


def varlen_inputs(rng, dtype, requires_grad=False, lens_q=(3, 0, 5), lens_k=(4, 2, 5)):
    cu_q = torch.tensor(np.concatenate([[0], np.cumsum(lens_q)]), dtype=torch.int32)
    cu_k = torch.tensor(np.concatenate([[0], np.cumsum(lens_k)]), dtype=torch.int32)
    q = tensor(rng, (sum(lens_q), 4, 6), dtype, requires_grad)
    k = tensor(rng, (sum(lens_k), 2, 6), dtype, requires_grad)
    v = tensor(rng, (sum(lens_k), 2, 5), dtype, requires_grad)
    return q, k, v, cu_q, cu_k, max(lens_q), max(lens_k)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_opcheck_attention_varlen(rng, backend, dtype):
    require_backend(backend)
    q, k, v, cu_q, cu_k, max_q, max_k = varlen_inputs(rng, dtype, True)
    params = op_params(causal=True, D=6)
    fwd_args = (q, k, v, cu_q, cu_k, max_q, max_k) + params + (backend,)
    torch.library.opcheck(ops.attention_varlen_fwd, fwd_args)
    out, lse = ops.attention_varlen_fwd(*fwd_args)
    args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), cu_q, cu_k, max_q, max_k,
            out.detach(), lse.detach()) + params + (backend,)
    torch.library.opcheck(ops.attention_varlen_bwd, args)


def rnn_inputs(rng, cell, dtype, T=4, B=3, I=5, H=4, requires_grad=False, device="cpu"):
    G = GATES[cell]
    shapes = dict(x=(T, B, I), w_ih=(G * H, I), w_hh=(G * H, H), b_ih=(G * H,), b_hh=(G * H,))
    shapes.update({name: (B, H) for name in cell_states(cell)})
    return {name: tensor(rng, s, dtype, requires_grad, device) for name, s in shapes.items()}


def cell_ops(cell):
    """(fwd op, bwd op, the arguments after `reverse` that select the cell: the Elman ops
    take the nonlinearity there)."""
    family = "rnn" if cell.startswith("rnn_") else cell
    nl = (cell[4:],) if family == "rnn" else ()
    return getattr(ops, family + "_fwd"), getattr(ops, family + "_bwd"), nl


WS_WIDTH = {"lstm": 5, "gru": 4, "rnn_tanh": 1, "rnn_relu": 1}  # ws columns per hidden unit


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lengths,reverse", [(None, False), ([4, 0, 2], True)])
def test_opcheck_rnn(rng, backend, dtype, cell, lengths, reverse):
    require_backend(backend)
    a = rnn_inputs(rng, cell, dtype, requires_grad=True)
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    fwd, bwd, nl = cell_ops(cell)
    fwd_args = tuple(a.values()) + (lens, reverse) + nl + (True, backend)
    torch.library.opcheck(fwd, fwd_args)
    outs = fwd(*fwd_args)
    y, ws = outs[0], outs[-1]
    douts = tuple(torch.randn_like(t) for t in outs[:-1])
    detached = tuple(t.detach() for t in a.values())
    torch.library.opcheck(bwd, douts + detached + (lens, reverse) + nl +
                          (y.detach(), ws.detach(), backend))


@pytest.mark.parametrize("cell", CELLS)
def test_workspace_only_when_grad_is_needed(rng, cell):
    require_backend("numpy")
    a = rnn_inputs(rng, cell, "float32", T=3, B=2, I=3, H=2)
    fwd, _, nl = cell_ops(cell)
    assert fwd(*a.values(), None, False, *nl, False, "numpy")[-1].shape == (0,)
    assert fwd(*a.values(), None, False, *nl, True, "numpy")[-1].shape == (3, 2, WS_WIDTH[cell] * 2)
    # the public wrapper decides from requires_grad and grad mode
    a["w_hh"].requires_grad_()
    run = seq_fn(cell)
    with torch.no_grad():
        y = run(*a.values(), backend="numpy")[0]
    assert y.grad_fn is None
    y = run(*a.values(), backend="numpy")[0]
    y.sum().backward()
    assert a["w_hh"].grad is not None and torch.isfinite(a["w_hh"].grad).all()



@pytest.mark.parametrize("causal", [False, True])
def test_eager_and_op_autograd_routes_agree(rng, causal):
    """An eager call that needs gradients runs the op's body inside a plain autograd.Function
    (seqcore._torch._register_autograd: the library's wrapping costs ~200 us a call); the raw
    op (what torch.compile traces) keeps torch.library's formula. Same kernels, same
    gradients, bit for bit."""
    require_backend("c")
    q, k, v = (tensor(rng, (1, 2, 7, 8), requires_grad=True) for _ in range(3))
    out = seqcore.attention(q, k, v, scale=0.25, causal=causal, backend="c")
    assert type(out.grad_fn).__name__ == "AttentionFwdEagerGradBackward"
    seed = torch.randn_like(out)
    eager = torch.autograd.grad(out, (q, k, v), seed)
    op_out, _ = torch.ops.seqcore.attention_fwd(q, k, v, None, 0.25, -1, 0 if causal else -1,
                                                0.0, causal, 0.0, 0, "c")
    assert "EagerGrad" not in type(op_out.grad_fn).__name__
    traced = torch.autograd.grad(op_out, (q, k, v), seed)
    assert torch.equal(out, op_out)
    for a, b in zip(eager, traced):
        assert torch.equal(a, b)

@pytest.mark.triton
def test_opcheck_triton_tiny(rng, triton_device):
    q, k, v, _ = attn_inputs(rng, (1, 2, 1, 3, 5, 16, 16), "float32", requires_grad=True)
    q, k, v = (t.detach().to(triton_device).requires_grad_() for t in (q, k, v))
    torch.library.opcheck(ops.attention_fwd,
                          (q, k, v, None) + op_params(causal=True, D=16) + ("triton",))
    for cell in CELLS:
        fwd, _, nl = cell_ops(cell)
        a = rnn_inputs(rng, cell, "float32", T=2, B=2, I=3, H=4, requires_grad=True,
                       device=triton_device)
        torch.library.opcheck(fwd, tuple(a.values()) + (None, False) + nl + (True, "triton"))


# ---- gradients: gradcheck, and against the reference backward ----------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("options", ATTN_OPTIONS)
def test_gradcheck_attention(rng, backend, options):
    require_backend(backend)
    q, k, v, bias = attn_inputs(rng, (1, 2, 1, 3, 4, 3, 2), "float64", (2, 1, 4), True)

    def run(q, k, v, bias):
        return seqcore.attention(q, k, v, bias=bias, backend=backend, **options)

    assert torch.autograd.gradcheck(run, (q, k, v, bias))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_rnn(rng, backend, cell):
    require_backend(backend)
    a = rnn_inputs(rng, cell, "float64", T=3, B=3, I=2, H=2, requires_grad=True)
    run_seq = seq_fn(cell)

    def run(*tensors):
        y, state = run_seq(*tensors, lengths=[3, 1, 0], reverse=True, batch_first=True,
                           backend=backend)
        return (y,) + (tuple(state) if cell == "lstm" else (state,))

    assert torch.autograd.gradcheck(run, tuple(a.values()), fast_mode=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_attention_varlen(rng, backend):
    require_backend(backend)
    q, k, v, cu_q, cu_k, _, _ = varlen_inputs(rng, "float64", True, (2, 0, 3), (3, 1, 2))

    def run(q, k, v):
        return seqcore.attention_varlen(q, k, v, cu_q, cu_k, window=(1, 0), backend=backend)

    assert torch.autograd.gradcheck(run, (q, k, v), fast_mode=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("options", ATTN_OPTIONS)
def test_attention_grad_vs_reference(rng, backend, dtype, shape, options):
    require_backend(backend)
    B, Hq, _, Sq, Sk, _, _ = shape
    q, k, v, bias = attn_inputs(rng, shape, dtype, (Hq, 1, Sk), True)  # bias broadcast over B, Sq
    out = seqcore.attention(q, k, v, bias=bias, backend=backend, **options)
    assert out.dtype == q.dtype
    dout = tensor(rng, out.shape, dtype)
    out.backward(dout)
    want = reference.attention(f64(q), f64(k), f64(v), bias=f64(bias), **options)
    assert_close(out, want, dtype, name="out")
    grads = reference.attention_bwd(f64(dout), f64(q), f64(k), f64(v), bias=f64(bias), **options)
    for name, t, g in zip(("dq", "dk", "dv", "dbias"), (q, k, v, bias), grads):
        assert t.grad.shape == t.shape
        assert_close(t.grad, g, dtype, grad=True, name=name, scale=Sq)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_attention_varlen_grad_vs_reference(rng, backend, dtype):
    require_backend(backend)
    q, k, v, cu_q, cu_k, _, _ = varlen_inputs(rng, dtype, True)
    options = dict(causal=True, softcap=2.0)
    out = seqcore.attention_varlen(q, k, v, cu_q, cu_k, backend=backend, **options)
    dout = tensor(rng, out.shape, dtype)
    out.backward(dout)
    want = reference.attention_varlen(f64(q), f64(k), f64(v), cu_q.numpy(), cu_k.numpy(), **options)
    assert_close(out, want, dtype, name="out")
    grads = reference.attention_varlen_bwd(f64(dout), f64(q), f64(k), f64(v), cu_q.numpy(),
                                           cu_k.numpy(), **options)
    for name, t, g in zip(("dq", "dk", "dv"), (q, k, v), grads):
        assert_close(t.grad, g, dtype, grad=True, name=name, scale=4)


def _scores_lse(q, k, bias, causal, softcap, scale):
    """lse of the scores, in plain torch ops (autograd gives the gradient through lse)."""
    kk = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = scale * q @ kk.transpose(-1, -2)
    s = softcap * torch.tanh(s / softcap) if softcap else s
    s = s + bias
    if causal:
        Sq, Sk = s.shape[-2:]
        visible = torch.ones(Sq, Sk, dtype=torch.bool).tril(Sk - Sq)
        s = s.masked_fill(~visible, float("-inf"))
    return torch.logsumexp(s, dim=-1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradient_through_lse(rng, backend):
    """lse feeds merge_attention (split-KV, ring attention): its gradient must reach q, k, bias."""
    require_backend(backend)
    q, k, v, bias = attn_inputs(rng, (2, 4, 2, 5, 7, 8, 6), "float64", (4, 5, 7), True)
    options = dict(causal=True, softcap=3.0)
    out, lse = seqcore.attention(q, k, v, bias=bias, return_lse=True, backend=backend, **options)
    w_out, w_lse = tensor(rng, out.shape), tensor(rng, lse.shape, "float32")
    got = torch.autograd.grad((out * w_out).sum() + (lse * w_lse).sum(), (q, k, v, bias))
    # expected: the out part from the reference backward, the lse part from torch autograd
    ref = reference.attention_bwd(f64(w_out), f64(q), f64(k), f64(v), bias=f64(bias), **options)
    lse_ref = _scores_lse(q, k, bias, True, 3.0, 8 ** -0.5)
    lse_part = torch.autograd.grad((lse_ref * w_lse.double()).sum(), (q, k, bias))
    lse_part = (lse_part[0], lse_part[1], None, lse_part[2])
    for name, g, r, extra in zip(("dq", "dk", "dv", "dbias"), got, ref, lse_part):
        want = r if extra is None else r + f64(extra)
        assert_close(g, want, "float32", grad=True, name=name)  # lse is float32 (API.md)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_varlen_gradient_through_lse_only(rng, backend):
    """Only lse is used (out gets no gradient): the lse term alone, per packed sequence."""
    require_backend(backend)
    q, k, v, cu_q, cu_k, _, _ = varlen_inputs(rng, "float64", True)
    _, lse = seqcore.attention_varlen(q, k, v, cu_q, cu_k, causal=True, return_lse=True,
                                      backend=backend)
    w_lse = tensor(rng, lse.shape, "float32")
    got = torch.autograd.grad((lse * w_lse).sum(), (q, k, v), allow_unused=True)
    want_lse = []
    for s in range(len(cu_q) - 1):
        rows, keys = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        heads_first = lambda t: t.transpose(0, 1)[None]  # noqa: E731
        per_seq = _scores_lse(heads_first(q[rows]), heads_first(k[keys]), 0.0, True, None, 6 ** -0.5)
        want_lse.append(per_seq[0].transpose(0, 1))
    want = torch.autograd.grad((torch.cat(want_lse) * w_lse.double()).sum(), (q, k))
    assert_close(got[0], want[0], "float32", grad=True, name="dq")
    assert_close(got[1], want[1], "float32", grad=True, name="dk")
    assert got[2] is None or not got[2].any(), "v does not reach lse"


# ---- torch.compile ------------------------------------------------------------------------------
# The "aot_eager" compile backend runs AOTAutograd (fake tensors, functionalization, the joint
# forward/backward graph: everything that needs the fake and autograd registrations) without
# inductor, whose C++ codegen would need a compiler toolchain and minutes per graph on 2 cores.

@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_compile_attention_fullgraph(rng, backend):
    require_backend(backend)
    q, k, v, bias = attn_inputs(rng, (2, 4, 2, 5, 7, 8, 6), "float32", (4, 1, 7), True)

    def run(q, k, v, bias):
        return seqcore.attention(q, k, v, causal=True, bias=bias, backend=backend) * 2

    compiled = torch.compile(run, backend="aot_eager", fullgraph=True)
    got = compiled(q, k, v, bias)
    got_grads = torch.autograd.grad(got.sum(), (q, k, v, bias))
    want = run(q, k, v, bias)
    want_grads = torch.autograd.grad(want.sum(), (q, k, v, bias))
    assert_close(got, want, "float32")
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, "float32", grad=True)


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("cell", CELLS)
def test_compile_rnn_fullgraph(rng, backend, cell):
    require_backend(backend)
    a = rnn_inputs(rng, cell, "float32", requires_grad=True)
    run_seq = seq_fn(cell)

    def run(*tensors):
        y, state = run_seq(*tensors, backend=backend)
        h_n = state[0] if cell == "lstm" else state
        return torch.tanh(y).sum() + h_n.square().sum()

    compiled = torch.compile(run, backend="aot_eager", fullgraph=True)
    got = compiled(*a.values())
    got_grads = torch.autograd.grad(got, tuple(a.values()))
    want = run(*a.values())
    want_grads = torch.autograd.grad(want, tuple(a.values()))
    assert_close(got, want, "float32", scale=10)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, "float32", grad=True)


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("cell", CELLS)
def test_compile_rnn_fullgraph_with_lengths(rng, backend, cell):
    """lengths as a tensor: its values are unknown while tracing, so the op checks them when
    it runs (a bad length is still a ValueError, not a wrong answer)."""
    require_backend(backend)
    a = rnn_inputs(rng, cell, "float32", T=5, B=3, requires_grad=True)
    run_seq = seq_fn(cell)

    def run(lengths, *tensors):
        y, _ = run_seq(*tensors, lengths=lengths, backend=backend)
        return torch.tanh(y).sum()

    compiled = torch.compile(run, backend="aot_eager", fullgraph=True)
    lengths = torch.tensor([5, 0, 3])
    got = compiled(lengths, *a.values())
    got_grads = torch.autograd.grad(got, tuple(a.values()))
    want = run(lengths, *a.values())
    want_grads = torch.autograd.grad(want, tuple(a.values()))
    assert_close(got, want, "float32", scale=10)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, "float32", grad=True)
    with pytest.raises(ValueError, match="lengths must lie in"):
        compiled(torch.tensor([6, 0, 3]), *a.values())


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_compile_attention_varlen_fullgraph(rng, backend):
    """With max_seqlen_q/k given, cu_seqlens values need not be read while tracing."""
    require_backend(backend)
    q, k, v, cu_q, cu_k, max_q, max_k = varlen_inputs(rng, "float32", True)

    def run(q, k, v, cu_q, cu_k):
        return seqcore.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=max_q,
                                        max_seqlen_k=max_k, causal=True, backend=backend)

    compiled = torch.compile(run, backend="aot_eager", fullgraph=True)
    got = compiled(q, k, v, cu_q, cu_k)
    want = run(q, k, v, cu_q, cu_k)
    assert_close(got, want, "float32")
    got_grads = torch.autograd.grad(got.sum(), (q, k, v))
    want_grads = torch.autograd.grad(want.sum(), (q, k, v))
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, "float32", grad=True)
    bad_cu_q = cu_q.clone()
    bad_cu_q[1] = max_q + 2  # sequence 0 longer than max_seqlen_q (and sequence 1 negative)
    with pytest.raises(ValueError, match="cu_seqlens_q|max_seqlen_q"):
        compiled(q, k, v, bad_cu_q, cu_k)


# ---- array kinds, devices, dtypes ---------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_tensors_in_tensors_out(rng, backend, dtype):
    require_backend(backend)
    torch_dtype = TORCH_DTYPES[dtype]
    q, k, v, bias = attn_inputs(rng, (3, 2, 1, 4, 1, 5, 3), dtype, (4, 1))
    out, lse = seqcore.attention(q, k, v, bias=bias, return_lse=True, backend=backend)
    assert isinstance(out, torch.Tensor) and out.dtype == torch_dtype and out.device == q.device
    assert lse.dtype == torch.float32 and lse.shape == (3, 2, 4)
    assert_close(out, reference.attention(f64(q), f64(k), f64(v), bias=f64(bias)), dtype)

    a = rnn_inputs(rng, "lstm", dtype, T=1, B=2, I=3, H=2)
    y, (h, c) = seqcore.lstm(*a.values(), backend=backend)
    want_y, (want_h, want_c) = reference.lstm(*(f64(t) for t in a.values()))
    for got, want in ((y, want_y), (h, want_h), (c, want_c)):
        assert got.dtype == torch_dtype and got.device == a["x"].device
        assert_close(got, want, dtype)
    g = rnn_inputs(rng, "gru", dtype, T=2, B=1, I=3, H=3)
    h_new = seqcore.gru_cell(g["x"][0], g["h0"], g["w_ih"], g["w_hh"], g["b_ih"], g["b_hh"],
                             backend=backend)
    assert h_new.dtype == torch_dtype
    assert_close(h_new, reference.gru_cell(*(f64(t) for t in (g["x"][0], g["h0"], g["w_ih"],
                                                              g["w_hh"], g["b_ih"], g["b_hh"]))),
                 dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float16_gradients(rng, backend):
    require_backend(backend)
    q, k, v, _ = attn_inputs(rng, (1, 2, 2, 3, 4, 4, 4), "float16", requires_grad=True)
    out = seqcore.attention(q, k, v, causal=True, backend=backend)
    dout = tensor(rng, out.shape, "float16")
    out.backward(dout)
    grads = reference.attention_bwd(f64(dout), f64(q), f64(k), f64(v), causal=True)
    for t, g in zip((q, k, v), grads):
        assert t.grad.dtype == torch.float16
        assert_close(t.grad, g, "float16", grad=True)


def test_mixing_numpy_and_torch_is_a_type_error(rng):
    q = rng.standard_normal((1, 2, 3, 4))
    k = torch.from_numpy(rng.standard_normal((1, 2, 3, 4)))
    with pytest.raises(TypeError, match="mix NumPy arrays and torch tensors"):
        seqcore.attention(q, k, k, backend="numpy")
    a = rnn_inputs(rng, "gru", "float64")
    with pytest.raises(TypeError, match="mix NumPy arrays and torch tensors"):
        seqcore.gru(a["x"].numpy(), a["w_ih"], a["w_hh"], backend="numpy")


# ---- the raw ops check their arguments (issue 10: they appear in exported graphs) -----------

def _raw_calls():
    """(name, call) pairs of torch.ops.seqcore.* with one mismatched argument each."""
    z = lambda *s, dtype=torch.float32: torch.zeros(s, dtype=dtype)  # noqa: E731
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    attn = (0.3, -1, -1, 0.0, False, 0.0, 0, "c")  # (+ dropout_p, dropout_seed)
    cache = (0.3, -1, -1, 0.0, False, "c")
    lstm = (None, False, False, "c")
    return [
        ("attention_fwd k/v lengths", lambda: ops.attention_fwd(z(1, 2, 3, 8), z(1, 2, 4, 8), z(1, 2, 5, 8), None, *attn)),
        ("attention_fwd head dim", lambda: ops.attention_fwd(z(1, 2, 3, 8), z(1, 2, 4, 7), z(1, 2, 4, 8), None, *attn)),
        ("attention_fwd heads", lambda: ops.attention_fwd(z(1, 3, 3, 8), z(1, 2, 4, 8), z(1, 2, 4, 8), None, *attn)),
        ("attention_fwd bias", lambda: ops.attention_fwd(z(1, 2, 3, 8), z(1, 2, 4, 8), z(1, 2, 4, 8), z(1, 2, 3, 3), *attn)),
        ("attention_fwd dtype", lambda: ops.attention_fwd(z(1, 2, 3, 8), z(1, 2, 4, 8, dtype=torch.float64), z(1, 2, 4, 8), None, *attn)),
        ("attention_bwd lse", lambda: ops.attention_bwd(z(1, 2, 3, 8), z(1, 2, 3, 8), z(1, 2, 4, 8), z(1, 2, 4, 8), None, z(1, 2, 3, 8), z(1, 2, 2), *attn, False)),
        ("attention_varlen_fwd cu", lambda: ops.attention_varlen_fwd(z(5, 2, 8), z(6, 2, 8), z(6, 2, 8), i32(0, 5), i32(0, 3, 6), 5, 6, *attn)),
        ("attention_varlen_fwd v", lambda: ops.attention_varlen_fwd(z(5, 2, 8), z(6, 2, 8), z(7, 2, 8), i32(0, 5), i32(0, 6), 5, 6, *attn)),
        ("lstm_fwd w_hh", lambda: ops.lstm_fwd(z(2, 1, 3), z(8, 3), z(8, 3), z(8), z(8), z(1, 2), z(1, 2), *lstm)),
        ("lstm_fwd c0", lambda: ops.lstm_fwd(z(2, 1, 3), z(8, 3), z(8, 2), z(8), z(8), z(1, 2), z(1, 3), *lstm)),
        ("lstm_fwd lengths", lambda: ops.lstm_fwd(z(2, 1, 3), z(8, 3), z(8, 2), z(8), z(8), z(1, 2), z(1, 2), z(2), False, False, "c")),
        ("gru_fwd w_ih", lambda: ops.gru_fwd(z(2, 1, 3), z(6, 4), z(6, 2), z(6), z(6), z(1, 2), *lstm)),
        ("rnn_fwd w_hh", lambda: ops.rnn_fwd(z(2, 1, 3), z(2, 3), z(3, 2), z(2), z(2), z(1, 2), None, False, "tanh", False, "c")),
        ("rnn_fwd nonlinearity", lambda: ops.rnn_fwd(z(2, 1, 3), z(2, 3), z(2, 2), z(2), z(2), z(1, 2), None, False, "gelu", False, "c")),
        ("rnn_bwd ws", lambda: ops.rnn_bwd(z(2, 1, 2), z(1, 2), z(2, 1, 3), z(2, 3), z(2, 2), z(2), z(2), z(1, 2), None, False, "relu", z(2, 1, 2), z(2, 1, 3), "c")),
        ("gru_bwd dy", lambda: ops.gru_bwd(z(2, 1, 3), z(1, 2), z(2, 1, 3), z(6, 3), z(6, 2), z(6), z(6), z(1, 2), None, False, z(2, 1, 2), z(0), "c")),
        ("attention_kvcache_fwd length", lambda: ops.attention_kvcache_fwd(z(1, 2, 1, 8), z(1, 2, 16, 8), z(1, 2, 16, 8), None, None, i32(20), None, *cache)),
        ("attention_kvcache_fwd block", lambda: ops.attention_kvcache_fwd(z(1, 2, 1, 8), z(2, 2, 16, 8), z(2, 2, 16, 8), None, None, i32(5), i32(7)[None], *cache)),
    ]


@pytest.mark.parametrize("name, call", _raw_calls(), ids=[n for n, _ in _raw_calls()])
def test_raw_ops_refuse_mismatched_arguments(name, call):
    require_backend("c")
    with pytest.raises(ValueError, match="torch.ops.seqcore"):
        call()


# ---- double backward (issue 10): gradgradcheck in float64; the first-order gradients of a
# create_graph backward (a composite of torch ops) equal the kernels' ---------------------------

def _rnn_args(rng, cell, T=3, B=2, I=2, H=3):
    G = GATES[cell]
    shapes = [(T, B, I), (G * H, I), (G * H, H), (G * H,), (G * H,)] + \
        [(B, H)] * len(cell_states(cell))
    return [tensor(rng, s, requires_grad=True) for s in shapes]


def _rnn_fn(cell, **kw):
    fn = seq_fn(cell)
    if cell == "lstm":
        return lambda *a: (lambda r: (r[0],) + tuple(r[1]))(fn(*a, **kw))
    return lambda *a: fn(*a, **kw)


def _double_backward_cases(rng):
    q, k = tensor(rng, (1, 4, 5, 3), requires_grad=True), tensor(rng, (1, 2, 6, 3), requires_grad=True)
    v, b = tensor(rng, (1, 2, 6, 4), requires_grad=True), tensor(rng, (1, 4, 5, 6), requires_grad=True)
    cu_q, cu_k = torch.tensor([0, 2, 5], dtype=torch.int32), torch.tensor([0, 3, 6], dtype=torch.int32)
    qv, kv, vv = (tensor(rng, s, requires_grad=True) for s in ((5, 4, 3), (6, 2, 3), (6, 2, 4)))
    return [
        ("attention causal", lambda q, k, v: seqcore.attention(q, k, v, causal=True), (q, k, v)),
        ("attention window softcap bias",
         lambda q, k, v, b: seqcore.attention(q, k, v, window=(2, 1), softcap=2.0, bias=b), (q, k, v, b)),
        ("attention_varlen causal",
         lambda q, k, v: seqcore.attention_varlen(q, k, v, cu_q, cu_k, causal=True), (qv, kv, vv)),
        ("lstm", _rnn_fn("lstm"), tuple(_rnn_args(rng, "lstm"))),
        ("lstm reverse lengths", _rnn_fn("lstm", reverse=True, lengths=torch.tensor([3, 1])),
         tuple(_rnn_args(rng, "lstm"))),
        ("gru reverse lengths", _rnn_fn("gru", reverse=True, lengths=torch.tensor([1, 3])),
         tuple(_rnn_args(rng, "gru"))),
        ("lstm_cell", lambda x, h, c, wi, wh: seqcore.lstm_cell(x, h, c, wi, wh),
         tuple(tensor(rng, s, requires_grad=True) for s in ((2, 3), (2, 4), (2, 4), (16, 3), (16, 4)))),
        ("gru_cell", lambda x, h, wi, wh: seqcore.gru_cell(x, h, wi, wh),
         tuple(tensor(rng, s, requires_grad=True) for s in ((2, 3), (2, 4), (12, 3), (12, 4)))),
        ("rnn tanh reverse lengths", _rnn_fn("rnn_tanh", reverse=True, lengths=torch.tensor([3, 2])),
         tuple(_rnn_args(rng, "rnn_tanh"))),
        ("rnn relu", _rnn_fn("rnn_relu"), tuple(_rnn_args(rng, "rnn_relu"))),
        ("rnn_cell relu", lambda x, h, wi, wh: seqcore.rnn_cell(x, h, wi, wh, nonlinearity="relu"),
         tuple(tensor(rng, s, requires_grad=True) for s in ((2, 3), (2, 4), (4, 3), (4, 4)))),
    ]


@pytest.mark.parametrize("index", range(11))
def test_double_backward(rng, index):
    require_backend("c")
    name, fn, args = _double_backward_cases(rng)[index]
    assert torch.autograd.gradgradcheck(fn, args), name
    outs = fn(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    seeds = [torch.randn_like(o) for o in outs]
    kernel = torch.autograd.grad(outs, args, seeds, retain_graph=True)
    composite = torch.autograd.grad(outs, args, seeds, create_graph=True)
    for a, b_ in zip(kernel, composite):
        assert_close(b_.detach().numpy(), a.numpy(), "float64", grad=True, name=name)


# ---- bfloat16 CPU tensors and CPU autocast (issue 10) -----------------------------------------

def test_bfloat16_cpu_tensors_compute_in_float32(rng):
    require_backend("c")
    q, k, v = (tensor(rng, s, "float32") for s in ((1, 4, 9, 8), (1, 2, 11, 8), (1, 2, 11, 6)))
    bf = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    out = seqcore.attention(*bf, causal=True)
    assert out.dtype == torch.bfloat16
    want = reference.attention(*(f64(t.float()) for t in bf), causal=True)
    assert_close(out.float().detach().numpy(), want, "bfloat16", name="out")
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in bf)
    x, w_ih, w_hh = (tensor(rng, s, "float32").bfloat16() for s in ((5, 2, 3), (16, 3), (16, 4)))
    y, _ = seqcore.lstm(x, w_ih, w_hh)
    want_y = reference.lstm(*(f64(t.float()) for t in (x, w_ih, w_hh)))[0]
    assert y.dtype == torch.bfloat16
    assert_close(y.float().numpy(), want_y, "bfloat16", name="y")


def test_cpu_autocast_trains_attention_and_lstm(rng):
    """Under torch.autocast("cpu", torch.bfloat16), float32 modules feed bfloat16 activations to
    seqcore: its ops take them (and cast the float32 weights, as torch's autocast does for its
    RNNs), compute in float32 and return bfloat16; the losses match a float32 run closely."""
    require_backend("c")
    torch.manual_seed(0)
    attn = seqcore.nn.MultiheadSelfAttention(16, 2, causal=True)
    lstm = seqcore.nn.LSTM(16, 16)
    proj = torch.nn.Linear(16, 16)
    x = torch.randn(3, 7, 16)

    def loss_of(autocast):
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            h = attn(proj(x))
            y, _ = lstm(h.transpose(0, 1))
        assert y.dtype == (torch.bfloat16 if autocast else torch.float32)
        return y.float().pow(2).mean()

    low, full = loss_of(True), loss_of(False)
    assert abs(float(low) - float(full)) <= 0.02 * abs(float(full))
    low.backward()
    grads = [p.grad for p in list(attn.parameters()) + list(lstm.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ---- the three CPU-tensor routes of attention ---------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("batch", [(), (2,), (2, 1)])
def test_cpu_tensor_routes_agree(rng, dtype, batch):
    """CPU tensors that need no gradient run the C kernel on their memory (contiguous
    float32/float64, no bias), through NumPy views (others: a bias, float16, a strided view)
    or, when they need a gradient, through the custom op: all three give NumPy's answer."""
    require_backend("c")
    q = tensor(rng, batch + (4, 5, 8), dtype)
    k = tensor(rng, batch + (2, 7, 8), dtype)
    v = tensor(rng, batch + (2, 7, 6), dtype)
    bias = tensor(rng, (5, 7), dtype)
    for kw in (dict(), dict(causal=True, return_lse=True), dict(bias=bias)):
        want = seqcore.attention(q.numpy(), k.numpy(), v.numpy(),
                                 **{n: (a.numpy() if torch.is_tensor(a) else a)
                                    for n, a in kw.items()})
        strided = q.transpose(-1, -2).contiguous().transpose(-1, -2)  # the same values
        for qq, grad in ((q, False), (strided, False), (q.clone().requires_grad_(), True)):
            got = seqcore.attention(qq, k, v, **kw)
            got, want_ = (got, want) if isinstance(got, tuple) else ((got,), (want,))
            for g, w, dt in zip(got, want_, (q.dtype, torch.float32)):  # (out, lse)
                assert torch.is_tensor(g) and g.dtype == dt and (g.grad_fn is not None) == grad
                np.testing.assert_array_equal(g.detach().numpy(), w)


@pytest.mark.parametrize("q_shape,kv_shape", [((1, 2, 0, 8), (1, 2, 3, 8)),
                                              ((1, 2, 3, 8), (1, 2, 0, 8)),
                                              ((0, 2, 3, 8), (0, 2, 3, 8))])
def test_empty_cpu_tensors_take_the_direct_route(rng, q_shape, kv_shape):
    """An empty tensor's data_ptr() is 0; the kernels must still run (nothing to read)."""
    require_backend("c")
    q, k = tensor(rng, q_shape, "float32"), tensor(rng, kv_shape, "float32")
    out, lse = seqcore.attention(q, k, k, return_lse=True)
    want_out, want_lse = seqcore.attention(q.numpy(), k.numpy(), k.numpy(), return_lse=True)
    np.testing.assert_array_equal(out.numpy(), want_out)
    np.testing.assert_array_equal(lse.numpy(), want_lse)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_empty_batch_cell_from_cpu_tensors(rng, cell):
    require_backend("c")
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    x, h = tensor(rng, (0, 3), "float32"), tensor(rng, (0, 4), "float32")
    w_ih, w_hh = tensor(rng, (G * 4, 3), "float32"), tensor(rng, (G * 4, 4), "float32")
    if cell == "lstm":
        got = seqcore.lstm_cell(x, h, h, w_ih, w_hh)
    else:
        got = (getattr(seqcore, f"{cell}_cell")(x, h, w_ih, w_hh),)
    assert all(torch.is_tensor(g) and tuple(g.shape) == (0, 4) for g in got)
