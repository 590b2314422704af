"""Attention dropout (issue 10, item 3): every backend applies the mask of
seqcore/reference/dropout.py (Philox-4x32-10 keyed by the seed), so outputs and gradients equal
the reference's with the same seed; the backward regenerates the mask (nothing is stored). The
Triton kernels are tested in test_attention_triton*.py."""
import numpy as np
import pytest

import seqcore
from seqcore import reference
from seqcore.reference.dropout import dropout_scale, keep_mask, philox4x32, threshold
from conftest import assert_close, require_backend

BACKENDS = ["numpy", "c"]


def test_philox_known_answers():
    """Random123's known-answer vectors for Philox-4x32-10 (kat_vectors), key (k0, k1)."""
    assert [int(w) for w in philox4x32(0, 0, 0, 0, 0)] == \
        [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    seed = (0x299F31D0 << 32) | 0xA4093822
    got = philox4x32(seed, 0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)
    assert [int(w) for w in got] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction(p):
    keep = keep_mask(123, p, 0, 0, 1, np.arange(256), np.arange(256))
    n = keep.size
    assert abs(keep.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    assert threshold(0.0) == 0 and threshold(0.5) == 2**30


def inputs(rng, shape=(2, 4, 2, 6, 9, 8, 5), dtype=np.float64):
    B, Hq, Hkv, Sq, Sk, D, Dv = shape
    q = rng.standard_normal((B, Hq, Sq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Sk, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, Sk, Dv)).astype(dtype)
    return q, k, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [dict(causal=True), dict(window=(3, 1), softcap=2.0), {}])
@pytest.mark.parametrize("p", [0.17, 0.5])
def test_forward_equals_reference(rng, backend, dtype, options, p):
    require_backend(backend)
    q, k, v = inputs(rng, dtype=dtype)
    out, lse = seqcore.attention(q, k, v, dropout_p=p, dropout_seed=2024, return_lse=True,
                                 backend=backend, **options)
    want, want_lse = reference.attention(q, k, v, dropout_p=p, dropout_seed=2024,
                                         return_lse=True, **options)
    name = np.dtype(dtype).name
    assert_close(out, want, name, name="out")
    assert_close(lse, want_lse, "float32", name="lse")  # (float32), of the undropped P
    other = seqcore.attention(q, k, v, dropout_p=p, dropout_seed=2025, backend=backend, **options)
    assert not np.allclose(other, out), "another seed must give another mask"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_gradients_equal_reference(rng, backend, with_bias):
    torch = pytest.importorskip("torch")
    require_backend(backend)
    q, k, v = inputs(rng)
    bias = rng.standard_normal((1, 4, 6, 9)) if with_bias else None
    args = [torch.from_numpy(a).requires_grad_() for a in (q, k, v)]
    tb = None if bias is None else torch.from_numpy(bias).requires_grad_()
    out = seqcore.attention(*args, bias=tb, causal=True, dropout_p=0.3, dropout_seed=7,
                            backend=backend)
    dout = rng.standard_normal(out.shape)
    grads = torch.autograd.grad(out, args + ([tb] if tb is not None else []),
                                torch.from_numpy(dout))
    want = reference.attention_bwd(dout, q, k, v, bias=bias, causal=True, dropout_p=0.3,
                                   dropout_seed=7)
    for name, g, w in zip(("dq", "dk", "dv", "dbias"), grads, want):
        assert_close(g.numpy(), w, "float64", grad=True, name=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_equals_reference(rng, backend):
    torch = pytest.importorskip("torch")
    require_backend(backend)
    cu = np.array([0, 3, 3, 10], dtype=np.int32)
    q = rng.standard_normal((10, 4, 8))
    k = rng.standard_normal((10, 2, 8))
    v = rng.standard_normal((10, 2, 6))
    args = [torch.from_numpy(a).requires_grad_() for a in (q, k, v)]
    cut = torch.from_numpy(cu)
    out = seqcore.attention_varlen(*args, cut, cut, causal=True, dropout_p=0.25,
                                   dropout_seed=11, backend=backend)
    want = reference.attention_varlen(q, k, v, cu, cu, causal=True, dropout_p=0.25,
                                      dropout_seed=11)
    assert_close(out.detach().numpy(), want, "float64", name="out")
    dout = rng.standard_normal(out.shape)
    grads = torch.autograd.grad(out, args, torch.from_numpy(dout))
    want = reference.attention_varlen_bwd(dout, q, k, v, cu, cu, causal=True, dropout_p=0.25,
                                          dropout_seed=11)
    for g, w in zip(grads, want):
        assert_close(g.numpy(), w, "float64", grad=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_and_gradgradcheck(rng, backend):
    torch = pytest.importorskip("torch")
    require_backend(backend)
    q, k, v = inputs(rng, (1, 2, 1, 3, 4, 3, 2))
    args = tuple(torch.from_numpy(a).requires_grad_() for a in (q, k, v))

    def run(q, k, v):
        return seqcore.attention(q, k, v, causal=True, dropout_p=0.4, dropout_seed=3,
                                 backend=backend)

    assert torch.autograd.gradcheck(run, args)
    assert torch.autograd.gradgradcheck(run, args)


def test_seeds_come_from_the_generators(rng):
    """No seed: one drawn per call from torch's generator (tensors) or NumPy's (arrays), so
    manual_seed / np.random.seed make a run repeatable, and two calls differ."""
    torch = pytest.importorskip("torch")
    require_backend("c")
    q, k, v = (torch.from_numpy(a) for a in inputs(rng))
    torch.manual_seed(5)
    a = seqcore.attention(q, k, v, dropout_p=0.5)
    b = seqcore.attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(5)
    assert torch.equal(seqcore.attention(q, k, v, dropout_p=0.5), a)
    assert not torch.equal(a, b)
    qn, kn, vn = (t.numpy() for t in (q, k, v))
    np.random.seed(3)
    c = seqcore.attention(qn, kn, vn, dropout_p=0.5)
    np.random.seed(3)
    assert np.array_equal(seqcore.attention(qn, kn, vn, dropout_p=0.5), c)


def test_sdpa_dropout_is_attention_dropout(rng):
    torch = pytest.importorskip("torch")
    require_backend("c")
    q, k, v = (torch.from_numpy(a) for a in inputs(rng, (2, 4, 4, 5, 7, 8, 8)))
    torch.manual_seed(9)
    got = seqcore.scaled_dot_product_attention(q, k, v, dropout_p=0.2, is_causal=True)
    torch.manual_seed(9)
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    want = reference.attention(q.numpy(), k.numpy(), v.numpy(), causal=True, dropout_p=0.2,
                               dropout_seed=seed)  # bottom-right: not SDPA's
    top_left_mask = np.where(np.arange(7)[None] <= np.arange(5)[:, None], 0.0, -np.inf)
    top_left = reference.attention(q.numpy(), k.numpy(), v.numpy(), bias=top_left_mask,
                                   dropout_p=0.2, dropout_seed=seed)
    assert_close(got.numpy(), top_left, "float64")
    assert not np.allclose(want, top_left)


def test_multihead_attention_dropout(rng):
    """Training mode drops attention weights in the kernels, and need_weights returns the
    dropped weights that produced the output; eval mode matches torch's module."""
    torch = pytest.importorskip("torch")
    require_backend("c")
    import seqcore.nn as snn

    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(8, 2, dropout=0.3, batch_first=True).double()
    mha = snn.MultiheadAttention(8, 2, dropout=0.3, batch_first=True).double()
    mha.load_state_dict(ref.state_dict())
    x = torch.from_numpy(rng.standard_normal((2, 5, 8)))
    out, w = mha(x, x, x, average_attn_weights=False)
    # the output is the value projection weighted by the returned (dropped) weights
    v = torch.nn.functional.linear(x, mha.in_proj_weight[16:], mha.in_proj_bias[16:])
    v = v.reshape(2, 5, 2, 4).transpose(1, 2)
    want = torch.nn.functional.linear((w @ v).transpose(1, 2).reshape(2, 5, 8),
                                      mha.out_proj.weight, mha.out_proj.bias)
    assert_close(out.detach().numpy(), want.detach().numpy(), "float64")
    assert (w == 0).any()
    ref.eval(), mha.eval()
    assert_close(mha(x, x, x)[0].detach().numpy(), ref(x, x, x)[0].detach().numpy(), "float64")


def test_dropout_errors(rng):
    q, k, v = inputs(rng)
    for bad in (1.0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match="dropout_p"):
            seqcore.attention(q, k, v, dropout_p=bad, backend="numpy")
    with pytest.raises(ValueError, match="dropout_seed"):
        seqcore.attention(q, k, v, dropout_p=0.1, dropout_seed=2**63, backend="numpy")
    with pytest.raises((ValueError, TypeError), match="dropout_seed"):
        seqcore.attention(q, k, v, dropout_p=0.1, dropout_seed=-1, backend="numpy")


def test_dropout_scale_layout():
    f = dropout_scale(2, 3, 4, 5, 0.5, 1)
    assert f.shape == (2, 3, 4, 5) and set(np.unique(f)) <= {0.0, 2.0}
    assert np.array_equal(f[1], dropout_scale(1, 3, 4, 5, 0.5, 1, first_batch=1)[0])


def test_dropout_calls_do_not_fill_the_problem_cache(rng):
    """The C adapter reuses dense problem structs per (params, sizes); a dropout call draws a
    new seed each time, so caching its problem would only evict the reusable ones."""
    require_backend("c")
    from seqcore import _c_attention

    q = rng.standard_normal((1, 2, 16, 8)).astype(np.float32)
    _c_attention._DENSE_PROBLEMS.clear()
    seqcore.attention(q, q, q, backend="c")
    for _ in range(4):
        seqcore.attention(q, q, q, dropout_p=0.2, backend="c")
    assert len(_c_attention._DENSE_PROBLEMS) == 1
