"""Triton attention backward (kernels/attention_bwd.py) against seqcore.reference.

The launchers are called directly with the backend interface of seqcore/_problem.py; `out` and
`lse` come from the float64 reference (rounded to the test dtype), so these tests hold the
backward alone to the reference, independent of the forward kernel. The end-to-end tests at
the bottom go through seqcore.attention's autograd with the Triton forward.

Runs under TRITON_INTERPRET=1 on torch CPU tensors (float32, float16) without a GPU, and on
CUDA tensors (bfloat16 too) with one. torch.empty is poisoned with NaN while a test runs, so an
element of dq/dk/dv/dbias a kernel forgets to write fails the comparison.
"""
import os

import numpy as np
import pytest

from conftest import HAS_TRITON, assert_close, to_f64

if HAS_TRITON:
    import torch

from seqcore import reference
from seqcore._problem import make_attn_params

pytestmark = [
    pytest.mark.triton,
    pytest.mark.usefixtures("poisoned_empty"),
    # the interpreter itself turns 1-element arrays into loop bounds the way NumPy deprecates
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]

DTYPES = ["float32", "float16", "bfloat16"]


def tensor(rng, shape, dtype, device):
    x = rng.standard_normal(shape).astype(np.float32)
    return torch.from_numpy(x).to(device=device, dtype=getattr(torch, dtype))


def from_f64(x, dtype, device):
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)


def grad_scale(expected):
    """atol scale for gradients larger than order one (the error grows with them)."""
    return max(1.0, float(np.abs(expected).max(initial=0.0)))


def check_grads(got, expected, dtype, names=("dq", "dk", "dv")):
    for name, g, e in zip(names, got, expected):
        assert g.dtype == getattr(torch, dtype), f"{name}: dtype {g.dtype}"
        assert_close(g, e, dtype, grad=True, name=name, scale=grad_scale(e))


# ----------------------------------------------------------------------------------------------
# dense


def padding_bias(rng, B, Hq, Sq, Sk):
    """(B, 1, Sq, Sk) bias: random, with some -inf keys per batch (key padding) and two query
    rows masked entirely (rows that see no key: out 0, lse -inf, zero gradients)."""
    bias = rng.standard_normal((B, 1, Sq, Sk))
    bias[:, :, :, Sk - 3:] = -np.inf
    bias[:, :, [0, Sq // 2], :] = -np.inf
    return bias


def make_bias(kind, rng, B, Hq, Sq, Sk):
    if kind is None:
        return None
    if kind == "full":
        return rng.standard_normal((B, Hq, Sq, Sk))
    if kind == "heads_keys":     # ALiBi-like: broadcast over batch and queries
        return rng.standard_normal((Hq, 1, Sk))
    if kind == "rows":           # broadcast over heads and keys
        return rng.standard_normal((B, 1, Sq, 1))
    if kind == "padding":
        return padding_bias(rng, B, Hq, Sq, Sk)
    if kind == "very_negative":  # lse ~ -150: a key past the end left unmasked gives P = inf
        return rng.standard_normal((B, Hq, Sq, Sk)) - 150.0
    raise ValueError(kind)


def flat_bias(bias, B, Hq, Sq, Sk, dtype, device):
    """The (B, Hq, Sq, Sk) zero-stride view the backend interface hands the kernels."""
    b = from_f64(bias, dtype, device)
    b = b.reshape((1,) * (4 - b.ndim) + tuple(b.shape))
    return b.expand(B, Hq, Sq, Sk)


def run_dense(rng, dtype, device, B, Hq, Hkv, Sq, Sk, D, Dv, bias_kind=None, need_dbias=None,
              **opts):
    """Triton gradients and reference gradients for one dense problem."""
    from seqcore.kernels.attention_bwd import attention_bwd

    q, k, v = (tensor(rng, s, dtype, device) for s in
               ((B, Hq, Sq, D), (B, Hkv, Sk, D), (B, Hkv, Sk, Dv)))
    dout = tensor(rng, (B, Hq, Sq, Dv), dtype, device)
    bias = make_bias(bias_kind, rng, B, Hq, Sq, Sk)
    if bias is not None:    # the kernel sees the rounded bias: so does the reference
        bias = to_f64(from_f64(bias, q.dtype, "cpu"))
    f64 = [to_f64(x) for x in (dout, q, k, v)]
    out, lse = reference.attention(*f64[1:], bias=bias, return_lse=True, **opts)
    expected = reference.attention_bwd(*f64, bias=bias, **opts)

    p = make_attn_params(1.0 / np.sqrt(D) if opts.get("scale") is None else opts["scale"],
                         opts.get("causal", False), opts.get("window"), opts.get("softcap"),
                         opts.get("dropout_p", 0.0), opts.get("dropout_seed", 0))
    tbias = None if bias is None else flat_bias(bias, B, Hq, Sq, Sk, q.dtype, device)
    need_dbias = bias is not None if need_dbias is None else need_dbias
    got = attention_bwd(dout, q, k, v, tbias, from_f64(out, q.dtype, device),
                        from_f64(lse, torch.float32, device), p, need_dbias)
    return got, expected, bias


# (B, Hq, Hkv, Sq, Sk, D, Dv): GQA and MQA, Sq < Sk and Sq > Sk, odd head dims
DENSE_CASES = {
    "plain": ((1, 2, 2, 20, 20, 16, 16), {}, None),
    "gqa_causal_sq<sk": ((2, 4, 2, 17, 33, 24, 24), dict(causal=True), None),
    "causal_sq>sk_empty_rows": ((1, 2, 1, 40, 9, 3, 80), dict(causal=True), None),
    "window_mqa_d80_dv1": ((1, 3, 1, 17, 40, 80, 1), dict(window=(3, 5)), None),
    # left - off = 1: the last query block of a key block holds a single query
    "window_left_only": ((1, 2, 2, 33, 36, 24, 3), dict(window=(4, -1)), None),
    "window_right_only_sq>sk": ((1, 2, 1, 33, 20, 16, 24), dict(window=(-1, 2)), None),
    # whole 16-blocks whose corner key is one past the band: must count as edge blocks
    "window_left_14_whole_blocks": ((1, 2, 2, 32, 32, 16, 16), dict(window=(14, -1)), None),
    "window_right_14_whole_blocks": ((1, 1, 1, 32, 32, 16, 16), dict(window=(-1, 14)), None),
    "causal_window": ((2, 2, 2, 37, 37, 1, 24), dict(causal=True, window=(6, -1)), None),
    "softcap": ((1, 2, 2, 25, 31, 24, 24), dict(softcap=2.0), None),
    "softcap_causal_gqa_d1": ((1, 4, 2, 19, 19, 1, 1), dict(causal=True, softcap=1.5), None),
    "bias_full": ((2, 2, 1, 18, 23, 24, 16), {}, "full"),
    "bias_heads_keys_causal": ((2, 4, 2, 21, 21, 16, 24), dict(causal=True), "heads_keys"),
    "bias_rows_window": ((2, 2, 2, 24, 30, 3, 3), dict(window=(2, 7)), "rows"),
    "bias_padding_-inf": ((2, 2, 2, 20, 27, 24, 24), {}, "padding"),
    "bias_padding_softcap_gqa": ((1, 4, 1, 26, 18, 80, 24), dict(softcap=3.0, scale=0.3),
                                 "padding"),
    # off + right = 1: the last key block of a query block holds a single key
    "causal_sk=sq+1_block_edge": ((1, 2, 2, 20, 21, 16, 16), dict(causal=True), None),
    "window_keys_ragged_very_negative": ((1, 2, 1, 23, 37, 24, 24), dict(window=(5, 3)),
                                         "very_negative"),
    "bias_very_negative_ragged": ((1, 2, 2, 19, 37, 16, 16), {}, "very_negative"),
    "length_one": ((1, 1, 1, 1, 1, 1, 1), {}, None),
    "one_query_many_keys": ((1, 2, 1, 1, 47, 24, 24), dict(causal=True), "full"),
}


@pytest.mark.parametrize("dtype", DTYPES, indirect=True)
@pytest.mark.parametrize("case", DENSE_CASES, ids=str)
def test_dense_grads(case, dtype, rng, triton_device):
    shape, opts, bias_kind = DENSE_CASES[case]
    B, Hq, Hkv, Sq, Sk, D, Dv = shape
    (dq, dk, dv, dbias), expected, bias = run_dense(rng, dtype, triton_device, *shape,
                                                    bias_kind=bias_kind, **opts)
    check_grads((dq, dk, dv), expected[:3], dtype)
    if bias is None:
        assert dbias is None
        return
    assert dbias.shape == (B, Hq, Sq, Sk) and dbias.dtype == getattr(torch, dtype)
    full = to_f64(dbias)
    # the caller's reduction over the broadcast dims (bias's shape after leading 1s)
    reduced = sum_to_shape(full, bias.shape)
    # summing n rounded entries: the error grows like sqrt(n)
    n = full.size // bias.size
    assert_close(reduced, expected[3], dtype, grad=True, name="dbias",
                 scale=grad_scale(expected[3]) * np.sqrt(n))


def sum_to_shape(g, shape):
    """g reduced over the dims `shape` broadcasts (what seqcore does with the full dS)."""
    extra = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(extra))) if extra else g
    axes = tuple(a for a, s in enumerate(shape) if s == 1 and g.shape[a] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape)


@pytest.mark.parametrize("dtype", ["float32"], indirect=True)
def test_dense_bias_without_dbias(dtype, rng, triton_device):
    """need_dbias=False: the bias still shapes the gradients, and no dS buffer comes back."""
    (dq, dk, dv, dbias), expected, _ = run_dense(rng, dtype, triton_device, 1, 2, 1, 19, 21, 24,
                                                 16, bias_kind="full", need_dbias=False,
                                                 causal=True)
    assert dbias is None
    check_grads((dq, dk, dv), expected[:3], dtype)


@pytest.mark.parametrize("Sq,Sk", [(0, 5), (5, 0), (0, 0)], ids=["no_queries", "no_keys", "none"])
def test_dense_empty(Sq, Sk, rng, triton_device):
    """No query rows or no keys: gradients are zero (dq for rows without keys too)."""
    (dq, dk, dv, dbias), expected, _ = run_dense(rng, "float32", triton_device, 2, 2, 1, Sq, Sk,
                                                 3, 5, bias_kind="full", causal=True)
    check_grads((dq, dk, dv), expected[:3], "float32")
    assert dbias.shape == (2, 2, Sq, Sk)
    assert not torch.isnan(dbias).any() and not dbias.any()


def test_dense_large_scores_finite(rng, triton_device):
    """Peaked softmax (scores ~ +-100) with -inf padding: no NaN/inf, gradients still right."""
    (dq, dk, dv, dbias), expected, _ = run_dense(rng, "float32", triton_device, 1, 2, 2, 24, 24,
                                                 16, 16, bias_kind="padding", scale=4.0)
    check_grads((dq, dk, dv), expected[:3], "float32")
    assert torch.isfinite(dbias).all()


# ----------------------------------------------------------------------------------------------
# varlen


def run_varlen(rng, dtype, device, lens_q, lens_k, Hq, Hkv, D, Dv, **opts):
    from seqcore.kernels.attention_bwd import attention_varlen_bwd

    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    Tq, Tk = int(cu_q[-1]), int(cu_k[-1])
    q, k, v = (tensor(rng, s, dtype, device) for s in ((Tq, Hq, D), (Tk, Hkv, D), (Tk, Hkv, Dv)))
    dout = tensor(rng, (Tq, Hq, Dv), dtype, device)
    f64 = [to_f64(x) for x in (dout, q, k, v)]
    out, lse = reference.attention_varlen(*f64[1:], cu_q, cu_k, return_lse=True, **opts)
    expected = reference.attention_varlen_bwd(*f64, cu_q, cu_k, **opts)
    p = make_attn_params(1.0 / np.sqrt(D), opts.get("causal", False), opts.get("window"),
                         opts.get("softcap"), opts.get("dropout_p", 0.0),
                         opts.get("dropout_seed", 0))
    got = attention_varlen_bwd(dout, q, k, v, torch.from_numpy(cu_q).to(device),
                               torch.from_numpy(cu_k).to(device), max(lens_q, default=0),
                               max(lens_k, default=0), from_f64(out, q.dtype, device),
                               from_f64(lse, torch.float32, device), p)
    return got, expected


# (lens_q, lens_k, Hq, Hkv, D, Dv): zero-length sequences on either side, Sq != Sk per sequence
VARLEN_CASES = {
    "plain": (([5, 20, 3], [7, 30, 1]), 2, 2, 16, 16, {}),
    "zero_len_causal_gqa": (([5, 0, 20, 3], [7, 4, 0, 30]), 4, 2, 24, 3, dict(causal=True)),
    "window_softcap_mqa": (([17, 1, 9], [9, 1, 33]), 3, 1, 3, 24, dict(window=(4, 2), softcap=3.0)),
    "left_window_d80": (([0, 12, 31], [0, 31, 12]), 2, 1, 80, 1, dict(window=(5, -1))),
}


@pytest.mark.parametrize("dtype", DTYPES, indirect=True)
@pytest.mark.parametrize("case", VARLEN_CASES, ids=str)
def test_varlen_grads(case, dtype, rng, triton_device):
    (lens_q, lens_k), Hq, Hkv, D, Dv, opts = VARLEN_CASES[case]
    got, expected = run_varlen(rng, dtype, triton_device, lens_q, lens_k, Hq, Hkv, D, Dv, **opts)
    check_grads(got, expected, dtype)


def test_varlen_all_empty(rng, triton_device):
    got, expected = run_varlen(rng, "float32", triton_device, [0, 0], [0, 0], 2, 1, 8, 8)
    assert [tuple(g.shape) for g in got] == [(0, 2, 8), (0, 1, 8), (0, 1, 8)]


def test_varlen_matches_dense(rng, triton_device):
    """One packed sequence gives the same gradients as the dense kernel on it."""
    from seqcore.kernels.attention_bwd import attention_bwd, attention_varlen_bwd

    S, H, D = 29, 2, 24
    q, k, v, dout = (tensor(rng, (S, H, D), "float32", triton_device) for _ in range(4))
    out, lse = reference.attention_varlen(*(to_f64(x) for x in (q, k, v)), [0, S], [0, S],
                                          causal=True, return_lse=True)
    p = make_attn_params(1.0 / np.sqrt(D), True, None, None)
    out_t = from_f64(out, torch.float32, triton_device)
    lse_t = from_f64(lse, torch.float32, triton_device)
    cu = torch.tensor([0, S], dtype=torch.int32, device=triton_device)
    packed = attention_varlen_bwd(dout, q, k, v, cu, cu, S, S, out_t, lse_t, p)
    heads_first = lambda x: x.transpose(0, 1)[None].contiguous()  # noqa: E731
    dense = attention_bwd(heads_first(dout), heads_first(q), heads_first(k), heads_first(v), None,
                          heads_first(out_t), lse_t.t()[None].contiguous(), p, False)
    for name, a, b in zip(("dq", "dk", "dv"), packed, dense[:3]):
        assert_close(heads_first(a), b, "float32", grad=True, name=name)


# ----------------------------------------------------------------------------------------------
# dropout: both kernels regenerate the forward's mask (seqcore/reference/dropout.py) from the seed

# p = 0 is the path without dropout, which the tests above run in every dtype
DROPOUT_DTYPES_PS = [("float32", 0.0), ("float32", 0.17), ("float32", 0.5), ("float16", 0.17),
                     ("float16", 0.5)]
DROPOUT_CASES = {
    "gqa_causal_sq<sk": ((2, 4, 2, 17, 33, 24, 24), dict(causal=True), None),
    "causal_sq>sk_empty_rows": ((1, 2, 1, 40, 9, 3, 80), dict(causal=True), None),
    "window_mqa_d80_dv1": ((1, 3, 1, 17, 40, 80, 1), dict(window=(3, 5)), None),
    "bias_full_softcap": ((2, 2, 1, 18, 23, 24, 16), dict(softcap=2.0), "full"),
    "bias_padding_-inf_window": ((2, 2, 2, 20, 27, 16, 16), dict(window=(6, 2)), "padding"),
}


@pytest.mark.parametrize("dtype, dropout_p", DROPOUT_DTYPES_PS, indirect=["dtype"])
@pytest.mark.parametrize("case", DROPOUT_CASES, ids=str)
def test_dropout_dense_grads(case, dropout_p, dtype, rng, triton_device):
    shape, opts, bias_kind = DROPOUT_CASES[case]
    B, Hq, Hkv, Sq, Sk, D, Dv = shape
    (dq, dk, dv, dbias), expected, bias = run_dense(
        rng, dtype, triton_device, *shape, bias_kind=bias_kind, dropout_p=dropout_p,
        dropout_seed=2**63 + 99, **opts)
    check_grads((dq, dk, dv), expected[:3], dtype)
    if bias is not None:  # dbias is dS, which follows the dropped dP
        reduced = sum_to_shape(to_f64(dbias), bias.shape)
        n = dbias.numel() // bias.size
        assert_close(reduced, expected[3], dtype, grad=True, name="dbias",
                     scale=grad_scale(expected[3]) * np.sqrt(n))


@pytest.mark.parametrize("dropout_p", [0.17, 0.5])
@pytest.mark.parametrize("case", ["zero_len_causal_gqa", "window_softcap_mqa"])
def test_dropout_varlen_grads(case, dropout_p, rng, triton_device):
    (lens_q, lens_k), Hq, Hkv, D, Dv, opts = VARLEN_CASES[case]
    got, expected = run_varlen(rng, "float32", triton_device, lens_q, lens_k, Hq, Hkv, D, Dv,
                               dropout_p=dropout_p, dropout_seed=31337, **opts)
    check_grads(got, expected, "float32")


@pytest.mark.parametrize("dropout_p", [0.17, 0.5])
def test_dropout_masks_exact(dropout_p, triton_device):
    """Read both backward kernels' masks, after the Triton forward with the same seed. q = k = 0
    makes every P = 1/Sk. dO = I puts P~[i, j] in dv[j, i] (the dK/dV kernel); v = 1 makes
    dP = keep / (1 - p) and delta_i = (kept fraction of row i) / (1 - p), so dS = dbias (the dQ
    kernel) is > 0 exactly where kept. Both must be the reference's mask."""
    from seqcore.kernels.attention import attention_fwd
    from seqcore.kernels.attention_bwd import attention_bwd
    from seqcore.reference.dropout import keep_mask

    Sq, Sk, seed = 64, 256, 7
    q = torch.zeros(1, 1, Sq, 16, device=triton_device)
    k = torch.zeros(1, 1, Sk, 16, device=triton_device)
    v = torch.ones(1, 1, Sk, Sq, device=triton_device)
    dout = torch.eye(Sq, device=triton_device)[None, None]
    bias = torch.zeros(1, 1, 1, 1, device=triton_device).expand(1, 1, Sq, Sk)
    p = make_attn_params(0.25, False, None, None, dropout_p, seed)
    out, lse = attention_fwd(q, k, v, bias, p)
    dq, dk, dv, dbias = attention_bwd(dout, q, k, v, bias, out, lse, p, True)
    expected = keep_mask(seed, dropout_p, 0, 0, 1, np.arange(Sq), np.arange(Sk))
    np.testing.assert_array_equal((dv[0, 0].t() > 0).cpu().numpy(), expected)
    np.testing.assert_array_equal((dbias[0, 0] > 0).cpu().numpy(), expected)
    # and the values: dv[j, i] = P~[i, j] = keep / (Sk (1 - p))
    assert_close(dv[0, 0].t(), expected / (Sk * (1 - dropout_p)), "float32", grad=True, name="dv")


# ----------------------------------------------------------------------------------------------
# end to end: seqcore.attention's autograd, Triton forward + this backward


def _e2e_available():
    try:
        import seqcore.kernels.attention  # noqa: F401
    except ImportError as e:
        return str(e)
    return ""


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"], indirect=True)
@pytest.mark.parametrize("opts,bias_kind", [
    (dict(causal=True), None),
    (dict(window=(3, 2), softcap=2.5), "padding"),
    # the forward kernel draws the mask, both backward kernels draw it again from the seed
    (dict(window=(3, 2), softcap=2.5, dropout_p=0.3, dropout_seed=2**62 + 5), "padding"),
], ids=["causal", "window_softcap_bias", "window_softcap_bias_dropout"])
def test_end_to_end_autograd(opts, bias_kind, dtype, rng, triton_device):
    import seqcore

    why = _e2e_available()
    assert not why, f"the Triton forward (kernels/attention.py) does not import: {why}"
    B, Hq, Hkv, Sq, Sk, D, Dv = 2, 4, 2, 21, 26, 24, 16
    q, k, v = (tensor(rng, s, dtype, triton_device).requires_grad_() for s in
               ((B, Hq, Sq, D), (B, Hkv, Sk, D), (B, Hkv, Sk, Dv)))
    dout = tensor(rng, (B, Hq, Sq, Dv), dtype, triton_device)
    bias = make_bias(bias_kind, rng, B, Hq, Sq, Sk)
    tbias = None
    if bias is not None:
        tbias = from_f64(bias, torch.float32, triton_device).requires_grad_()
    out = seqcore.attention(q, k, v, bias=tbias, backend="triton", **opts)
    out.backward(dout)
    expected = reference.attention_bwd(*(to_f64(x) for x in (dout, q, k, v)), bias=bias, **opts)
    check_grads((q.grad, k.grad, v.grad), expected[:3], dtype)
    if bias is not None:
        n = tbias.grad.numel() and (B * Hq * Sq * Sk) // tbias.grad.numel()
        assert_close(tbias.grad, expected[3], dtype, grad=True, name="dbias",
                     scale=grad_scale(expected[3]) * np.sqrt(n))


@pytest.mark.parametrize("dtype", ["float32", "float16"], indirect=True)
@pytest.mark.parametrize("opts", [dict(causal=True),
                                  dict(causal=True, dropout_p=0.25, dropout_seed=99)],
                         ids=["causal", "causal_dropout"])
def test_end_to_end_varlen_autograd(opts, dtype, rng, triton_device):
    import seqcore

    why = _e2e_available()
    assert not why, f"the Triton forward (kernels/attention.py) does not import: {why}"
    lens_q, lens_k, Hq, Hkv, D, Dv = [9, 0, 20], [14, 3, 11], 2, 1, 24, 24
    cu_q = torch.tensor(np.concatenate([[0], np.cumsum(lens_q)]), dtype=torch.int32,
                        device=triton_device)
    cu_k = torch.tensor(np.concatenate([[0], np.cumsum(lens_k)]), dtype=torch.int32,
                        device=triton_device)
    q, k, v = (tensor(rng, s, dtype, triton_device).requires_grad_() for s in
               ((sum(lens_q), Hq, D), (sum(lens_k), Hkv, D), (sum(lens_k), Hkv, Dv)))
    dout = tensor(rng, (sum(lens_q), Hq, Dv), dtype, triton_device)
    out = seqcore.attention_varlen(q, k, v, cu_q, cu_k, backend="triton", **opts)
    out.backward(dout)
    expected = reference.attention_varlen_bwd(*(to_f64(x) for x in (dout, q, k, v)),
                                              cu_q.cpu().numpy(), cu_k.cpu().numpy(), **opts)
    check_grads((q.grad, k.grad, v.grad), expected, dtype)


# ----------------------------------------------------------------------------------------------
# the compiled path, without a GPU: the interpreter runs the kernels as Python and cannot see
# errors that only Triton's compiler raises, so compile them for an H100 (sm_90) here

_COMPILE_FOR_SM90 = r'''
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import seqcore.kernels.attention_bwd as m

def compile_one(fn, dt, consts, warps, stages):
    ptr = {"LSE": "*fp32", "DELTA": "*fp32", "BIAS": "*fp32", "CU_Q": "*i32", "CU_K": "*i32"}
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptr:
            sig[name] = ptr[name]
        elif name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV", "DBIAS"):
            sig[name] = "*" + dt
        elif name == "seed":
            sig[name] = "u64"
        else:
            sig[name] = "fp32" if name in ("scale", "softcap", "drop_scale") else "i32"
    kernel = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=warps, num_stages=stages))
    assert kernel.asm.get("cubin"), "no cubin"

for dt, D, Dv, varlen, bias, cap, left, right, dropout in [
        ("fp16", 64, 64, False, True, True, True, True, True),
        ("bf16", 128, 24, True, False, True, False, True, True),
        ("fp32", 80, 24, False, False, False, False, False, False)]:
    flags = dict(HEAD_D=D, HEAD_DV=Dv, BLOCK_D=m.head_block(D), BLOCK_DV=m.head_block(Dv),
                 IS_VARLEN=varlen, HAS_BIAS=bias, SOFTCAP=cap, HAS_LEFT=left, HAS_RIGHT=right,
                 HAS_DROPOUT=dropout, DOT_PRECISION="ieee")
    compile_one(m._dkdv_kernel, dt, dict(flags, BLOCK_M=32, BLOCK_N=64), 4, 2)
    compile_one(m._dq_kernel, dt, dict(flags, NEED_DBIAS=bias, BLOCK_M=64, BLOCK_N=32), 4, 2)
    compile_one(m._delta_kernel, dt, dict(HEAD_DV=Dv, BLOCK_M=64, BLOCK_DV=m.head_block(Dv),
                                          IS_VARLEN=varlen), 4, 1)
print("compiled")
'''


def test_kernels_compile_for_sm90(triton_device):
    """dK/dV, dQ and delta kernels go through Triton's compiler (to sm_90 cubin) for a few
    feature/dtype mixes. On a GPU the tests above compile them for real."""
    import subprocess
    import sys

    if triton_device == "cuda":
        pytest.skip("on a GPU the gradient tests above compile and run the kernels for real")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], env=env, cwd=os.getcwd(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]
