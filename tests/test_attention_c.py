"""The C attention kernels (csrc/attention.c, backend "c") against the float64 reference.

Forward through the public API (seqcore.attention / attention_varlen, backend="c"); backward
through the backend module (seqcore._c_attention), whose dbias is the full (B, Hq, Sq, Sk)
gradient of the scores; and the C entry points directly, with NaN-poisoned output buffers
(every element must be written) and invalid problems (status -1, no crash).
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqcore
from seqcore import _c
from seqcore import reference as ref
from seqcore._problem import make_attn_params
from conftest import assert_close, poison

pytestmark = [
    pytest.mark.skipif(bool(_c.status()), reason=f"C backend unavailable: {_c.status()}"),
    pytest.mark.usefixtures("every_isa"),  # every ISA level this CPU runs (conftest)
]
if not _c.status():
    from seqcore import _c_attention as C_ATTN

DTYPES = ["float32", "float64"]


def _randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype):
    return (_randn(rng, (B, Hq, Sq, D), dtype), _randn(rng, (B, Hkv, Sk, D), dtype),
            _randn(rng, (B, Hkv, Sk, Dv), dtype))


def _bias(rng, kind, B, Hq, Sq, Sk, dtype):
    """Biases of the shapes users pass: full, broadcast over batch or heads, a key row, a
    padding mask with -inf (including whole -inf rows, so some queries see no key)."""
    if kind is None:
        return None
    if kind == "full":
        return _randn(rng, (B, Hq, Sq, Sk), dtype)
    if kind == "batch":
        return _randn(rng, (Hq, Sq, Sk), dtype)          # broadcast over batch
    if kind == "heads":
        return _randn(rng, (B, 1, Sq, Sk), dtype)        # broadcast over heads
    if kind == "keys":
        return _randn(rng, (Sk,), dtype)                  # one row for every query (ALiBi-like)
    if kind == "rows":
        return _randn(rng, (B, Hq, Sq, 1), dtype)        # one value per query (key stride 0)
    if kind == "transposed":                              # a view: key stride Sq, not 1
        return np.swapaxes(_randn(rng, (B, Hq, Sk, Sq), dtype), -1, -2)
    if kind == "padding":
        mask = np.zeros((B, 1, Sq, Sk), dtype)
        mask[..., Sk // 2:] = -np.inf                     # padded keys
        mask[:, :, : max(Sq // 3, 1), :] = -np.inf        # and some queries see nothing
        return mask
    raise ValueError(kind)


def _reduce_to(full, shape):
    """Sum a (B, Hq, Sq, Sk) gradient over the dims a bias of `shape` was broadcast along."""
    lead = full.ndim - len(shape)
    g = full.sum(axis=tuple(range(lead))) if lead else full
    axes = tuple(a for a, n in enumerate(shape) if n == 1 and g.shape[a] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape) if axes else g.reshape(shape)


def _grad_scale(*arrays):
    """atol multiplier for gradients larger than order one (long rows, D = 256)."""
    return max([1.0] + [float(np.abs(a).max()) for a in arrays if a is not None and a.size])


def _check_forward(rng, shape, dtype, causal=False, window=None, bias_kind=None, softcap=None,
                   dropout_p=0.0, dropout_seed=0):
    B, Hq, Hkv, Sq, Sk, D, Dv = shape
    q, k, v = _qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype)
    bias = _bias(rng, bias_kind, B, Hq, Sq, Sk, dtype)
    opts = dict(causal=causal, window=window, bias=bias, softcap=softcap, dropout_p=dropout_p,
                dropout_seed=dropout_seed)
    out, lse = seqcore.attention(q, k, v, return_lse=True, backend="c", **opts)
    want_out, want_lse = ref.attention(q, k, v, return_lse=True, **opts)
    assert out.dtype == np.dtype(dtype) and lse.dtype == np.float32
    assert_close(out, want_out, dtype, name="out")
    # the API returns lse in float32 whatever the input dtype
    assert_close(lse, want_lse, "float32" if dtype == "float64" else dtype, name="lse")
    return out, lse, want_lse


def _check_backward(rng, shape, dtype, causal=False, window=None, bias_kind=None, softcap=None,
                    scale=None, dropout_p=0.0, dropout_seed=0):
    B, Hq, Hkv, Sq, Sk, D, Dv = shape
    q, k, v = _qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype)
    bias = _bias(rng, bias_kind, B, Hq, Sq, Sk, dtype)
    dout = _randn(rng, (B, Hq, Sq, Dv), dtype)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    p = make_attn_params(scale, causal, window, softcap, dropout_p, dropout_seed)
    bias4 = None if bias is None else np.broadcast_to(bias, (B, Hq, Sq, Sk))
    out, lse = C_ATTN.attention_fwd(q, k, v, bias4, p)
    opts = dict(causal=causal, scale=scale, window=window, bias=bias, softcap=softcap,
                dropout_p=dropout_p, dropout_seed=dropout_seed)
    want_out, want_lse = ref.attention(q, k, v, return_lse=True, **opts)
    assert lse.dtype == np.dtype(dtype)   # float64 inputs keep a float64 lse inside
    assert_close(out, want_out, dtype, name="out")
    assert_close(lse, want_lse, dtype, name="lse")
    dq, dk, dv, dbias = C_ATTN.attention_bwd(dout, q, k, v, bias4, out, lse, p, bias is not None)
    want = ref.attention_bwd(dout, q, k, v, **opts)
    for name, got, exp in zip(("dq", "dk", "dv", "dbias"), (dq, dk, dv, dbias), want):
        if exp is None:
            assert got is None, name
            continue
        if name == "dbias":
            assert got.shape == (B, Hq, Sq, Sk)
            got = _reduce_to(got, bias.shape)
        assert got.dtype == np.dtype(dtype), name
        assert_close(got, exp, dtype, grad=True, name=name, scale=_grad_scale(exp))


# (B, Hq, Hkv, Sq, Sk, D, Dv): odd dims, GQA and MQA, Sq != Sk both ways, tile edges
# (tiles are 64 x 64), length 1.
SHAPES = [
    (1, 1, 1, 1, 1, 1, 1),
    (2, 4, 2, 17, 33, 3, 17),
    (1, 3, 1, 70, 130, 80, 5),      # MQA, Sq < Sk
    (2, 2, 2, 130, 65, 17, 80),     # Sq > Sk: under causal the first rows see nothing
    (1, 2, 1, 64, 64, 256, 256),
    (1, 1, 1, 1, 200, 16, 8),       # decode-like: one query
]
OPTIONS = [
    dict(),
    dict(causal=True),
    dict(window=(5, 3)),
    dict(window=(0, 0)),            # only the diagonal
    dict(window=(20, -1), causal=True),
    dict(window=(-1, 2)),
    dict(softcap=2.5),
    dict(causal=True, softcap=1.0, window=(40, -1)),
]
OPT_IDS = ["plain", "causal", "win5_3", "win0_0", "causal_left20", "right2", "softcap",
           "causal_softcap_left40"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opts", OPTIONS, ids=OPT_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward(rng, shape, opts, dtype):
    _check_forward(rng, shape, dtype, **opts)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias_kind", ["full", "batch", "heads", "keys", "rows", "transposed",
                                       "padding"])
@pytest.mark.parametrize("opts", [dict(), dict(causal=True, softcap=3.0), dict(window=(7, 7))],
                         ids=["plain", "causal_softcap", "window"])
def test_forward_bias(rng, bias_kind, opts, dtype):
    _check_forward(rng, (2, 4, 2, 37, 71, 20, 12), dtype, bias_kind=bias_kind, **opts)


@pytest.mark.parametrize("bias_kind", ["full", "rows", "padding"])
@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(softcap=5.0),
                                  dict(causal=True, softcap=2.0, window=(150, -1))],
                         ids=["plain", "causal", "softcap", "causal_softcap_left150"])
def test_forward_bias_softcap_over_many_tiles(rng, bias_kind, opts):
    """Bias and softcap in the fast float forward: several query tasks and key tiles at every
    ISA level's tile sizes, GQA, a short last tile."""
    _check_forward(rng, (1, 4, 2, 250, 300, 64, 40), "float32", bias_kind=bias_kind, **opts)


@pytest.mark.parametrize("window", [(62, -1), (63, 64), (64, 1), (65, -1), (127, 0), (0, 62),
                                    (-1, 63), (3, 129)])
def test_window_edges_on_tile_boundaries(rng, window):
    """Band edges that fall exactly on (or one off) the 64-wide tile boundaries: whether a tile
    needs the mask, and which query tiles a key tile sees, are decided at those edges."""
    for shape in [(1, 2, 1, 200, 200, 8, 8), (1, 1, 1, 150, 260, 4, 4)]:
        _check_forward(rng, shape, "float64", window=window)
        _check_backward(rng, shape, "float64", window=window)


def test_forward_float16_computes_in_float32(rng):
    q, k, v = _qkv(rng, 2, 4, 2, 45, 70, 24, 40, "float16")
    bias = _randn(rng, (4, 45, 70), "float16")
    out, lse = seqcore.attention(q, k, v, causal=True, bias=bias, return_lse=True, backend="c")
    want_out, want_lse = ref.attention(q, k, v, causal=True, bias=bias, return_lse=True)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    assert_close(out, want_out, "float16", name="out")
    assert_close(lse, want_lse, "float32", name="lse")


def test_rows_that_see_no_key_give_zero_and_minus_inf(rng):
    # causal with Sq > Sk (bottom right): queries 0 .. Sq - Sk - 1 see no key; and a
    # window that lies entirely past the last key
    out, lse, _ = _check_forward(rng, (1, 2, 1, 90, 20, 8, 8), "float32", causal=True)
    assert np.all(out[:, :, :70] == 0) and np.all(lse[:, :, :70] == -np.inf)
    assert np.all(np.isfinite(lse[:, :, 70:]))
    out, lse, _ = _check_forward(rng, (1, 1, 1, 10, 10, 4, 4), "float64", window=(-1, -1),
                                 bias_kind="padding")
    assert np.all(lse[..., :3] == -np.inf) and np.all(out[..., :3, :] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2, 1, 0, 5, 8, 4), (1, 2, 1, 5, 0, 8, 4),
                                   (0, 2, 1, 5, 5, 8, 4), (1, 2, 2, 0, 0, 3, 3)],
                         ids=["Sq0", "Sk0", "B0", "both0"])
def test_empty_sizes(rng, shape, dtype):
    _check_forward(rng, shape, dtype)
    _check_backward(rng, shape, dtype, causal=True)


def test_no_batch_dims_and_many_batch_dims(rng):
    q, k, v = _randn(rng, (3, 9, 8), "float32"), _randn(rng, (3, 11, 8), "float32"), \
        _randn(rng, (3, 11, 5), "float32")
    assert_close(seqcore.attention(q, k, v, backend="c"), ref.attention(q, k, v), "float32")
    q, k, v = (_randn(rng, (2, 3) + x.shape, "float64") for x in (q, k, v))
    bias = _randn(rng, (3, 1, 9, 11), "float64")   # broadcast over the first batch dim and heads
    assert_close(seqcore.attention(q, k, v, bias=bias, causal=True, backend="c"),
                 ref.attention(q, k, v, bias=bias, causal=True), "float64")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opts", OPTIONS, ids=OPT_IDS)
@pytest.mark.parametrize("shape", [(2, 4, 2, 17, 33, 3, 17), (1, 3, 1, 70, 130, 80, 5),
                                   (2, 2, 2, 130, 65, 17, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_backward(rng, shape, opts, dtype):
    _check_backward(rng, shape, dtype, **opts)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias_kind", ["full", "batch", "heads", "keys", "padding"])
@pytest.mark.parametrize("opts", [dict(), dict(causal=True, softcap=3.0), dict(window=(7, 7))],
                         ids=["plain", "causal_softcap", "window"])
def test_backward_bias(rng, bias_kind, opts, dtype):
    _check_backward(rng, (2, 4, 2, 37, 71, 20, 12), dtype, bias_kind=bias_kind, **opts)


def test_backward_head_dim_256_and_scale(rng):
    _check_backward(rng, (1, 2, 1, 66, 70, 256, 256), "float32", causal=True, scale=0.3)


def _cu_seqlens(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def _packed(rng, lens_q, lens_k, Hq, Hkv, D, Dv, dtype):
    Tq, Tk = int(sum(lens_q)), int(sum(lens_k))
    return (_randn(rng, (Tq, Hq, D), dtype), _randn(rng, (Tk, Hkv, D), dtype),
            _randn(rng, (Tk, Hkv, Dv), dtype), _cu_seqlens(lens_q), _cu_seqlens(lens_k))


VARLEN_CASES = [
    # lens_q, lens_k, Hq, Hkv, D, Dv, options
    ([5, 0, 70, 1], [5, 3, 90, 0], 4, 2, 16, 24, dict(causal=True)),   # zero-length q and k
    ([33, 12], [33, 40], 2, 1, 3, 80, dict()),
    ([0, 0], [0, 7], 2, 2, 8, 8, dict()),                               # no queries at all
    ([130, 7, 64], [64, 9, 200], 3, 1, 17, 5, dict(window=(10, 4), softcap=2.0)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", VARLEN_CASES, ids=range(len(VARLEN_CASES)))
def test_varlen(rng, case, dtype):
    lens_q, lens_k, Hq, Hkv, D, Dv, opts = case
    q, k, v, cu_q, cu_k = _packed(rng, lens_q, lens_k, Hq, Hkv, D, Dv, dtype)
    out, lse = seqcore.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, backend="c", **opts)
    want_out, want_lse = ref.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, **opts)
    assert out.shape == (q.shape[0], Hq, Dv) and lse.shape == (q.shape[0], Hq)
    assert_close(out, want_out, dtype, name="out")
    assert_close(lse, want_lse, "float32", name="lse")

    p = make_attn_params(1.0 / math.sqrt(D), opts.get("causal", False), opts.get("window"),
                         opts.get("softcap"))
    max_q, max_k = max(lens_q), max(lens_k)
    out, lse = C_ATTN.attention_varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, p)
    dout = _randn(rng, out.shape, dtype)
    grads = C_ATTN.attention_varlen_bwd(dout, q, k, v, cu_q, cu_k, max_q, max_k, out, lse, p)
    want = ref.attention_varlen_bwd(dout, q, k, v, cu_q, cu_k, causal=opts.get("causal", False),
                                    scale=None, window=opts.get("window"),
                                    softcap=opts.get("softcap"))
    for name, got, exp in zip(("dq", "dk", "dv"), grads, want):
        assert_close(got, exp, dtype, grad=True, name=name, scale=_grad_scale(exp))


# ------------------------------------------------------------------ the C entry points directly

def _problem(lib_ffi, **fields):
    _, ffi = lib_ffi
    prob = ffi.new("seqcore_attn_problem *")
    defaults = dict(n_seq=1, Hq=1, Hkv=1, Sq=4, Sk=4, D=8, Dv=8, scale=0.5, softcap=0.0,
                    window_left=-1, window_right=-1)
    for name, value in {**defaults, **fields}.items():
        setattr(prob, name, value)
    return prob


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_output_element_is_written(rng, dtype):
    """Poisoned (NaN) outputs: the kernels must write every element, including empty rows,
    dbias outside the band, and keys no query sees."""
    lib, ffi = _c.load()
    suffix = "f32" if dtype == "float32" else "f64"
    B, Hq, Hkv, Sq, Sk, D, Dv = 2, 4, 2, 200, 150, 5, 9
    q, k, v = _qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype)
    bias = np.broadcast_to(_randn(rng, (Sk,), dtype), (B, Hq, Sq, Sk))
    # causal with left 3: query i sees keys i - 53 .. i - 50, so rows 0 .. 49 see nothing and
    # most key tiles are skipped for each query tile (their dbias must still be zeroed)
    prob = _problem((lib, ffi), n_seq=B, Hq=Hq, Hkv=Hkv, Sq=Sq, Sk=Sk, D=D, Dv=Dv,
                    window_left=3, window_right=0)
    prob.bias_strides = list(_c.strides(bias))
    out, lse = poison(np.empty((B, Hq, Sq, Dv), dtype)), poison(np.empty((B, Hq, Sq), dtype))
    ptr = _c.ptr
    assert getattr(lib, f"seqcore_attention_fwd_{suffix}")(
        prob, ptr(q), ptr(k), ptr(v), ptr(bias), ptr(out), ptr(lse)) == 0
    want_out, want_lse = ref.attention(q, k, v, scale=0.5, window=(3, 0), bias=bias, return_lse=True)
    assert_close(out, want_out, dtype, name="out")
    assert_close(lse, want_lse, dtype, name="lse")

    dout = _randn(rng, out.shape, dtype)
    dq, dk, dv = (poison(np.empty_like(x)) for x in (q, k, v))
    dbias = poison(np.empty((B, Hq, Sq, Sk), dtype))
    assert getattr(lib, f"seqcore_attention_bwd_{suffix}")(
        prob, ptr(dout), ptr(q), ptr(k), ptr(v), ptr(bias), ptr(out), ptr(lse),
        ptr(dq), ptr(dk), ptr(dv), ptr(dbias)) == 0
    want = ref.attention_bwd(dout, q, k, v, scale=0.5, window=(3, 0), bias=bias)
    for name, got, exp in zip(("dq", "dk", "dv"), (dq, dk, dv), want):
        assert_close(got, exp, dtype, grad=True, name=name, scale=_grad_scale(exp))
    assert_close(dbias, want[3], dtype, grad=True, name="dbias", scale=_grad_scale(want[3]))
    assert np.all(dbias[:, :, :50] == 0) and np.all(out[:, :, :50] == 0)   # rows that see no key


@pytest.mark.parametrize("causal", [False, True])
def test_short_tiles_ignore_what_the_scratch_holds(rng, causal):
    """The fast forward packs keys into kept scratch and leaves a short tile's columns past
    its last key as they were (their scores are masked): a call after one whose keys were
    NaN, over the same scratch, must not see them."""
    q, k, v = _qkv(rng, 1, 4, 4, 300, 300, 64, 64, "float32")
    seqcore.attention(q, np.full_like(k, np.nan), np.full_like(v, np.nan), backend="c")
    for S in (1, 5, 17, 70, 130):
        q, k, v = _qkv(rng, 1, 4, 4, S, S, 64, 64, "float32")
        got = seqcore.attention(q, k, v, causal=causal, backend="c")
        assert_close(got, ref.attention(q, k, v, causal=causal), "float32", name=f"out S{S}")


@pytest.mark.parametrize("causal", [False, True])
def test_running_max_that_rises_slowly_and_in_jumps(rng, causal):
    """The fast forward keeps a row's max until its scores rise more than 2^8 above it (lazy
    rescaling): scores that climb key by key, by less than that within a tile and by more
    across the sequence, and a late jump far above everything, must give the softmax of the
    scores as they are; the lse is checked too, as it takes the kept max."""
    Sq, Sk, D = 70, 300, 16
    q = np.zeros((1, 2, Sq, D), np.float32)
    q[..., 0] = 1
    k = _randn(rng, (1, 2, Sk, D), "float32") * 0.1
    k[..., 0] = np.linspace(0, 60, Sk)                  # base-2 scores up to ~87: many jumps
    k[:, 1, 250, 0] = 200                               # one key far above the rest
    v = _randn(rng, (1, 2, Sk, D), "float32")
    out, lse = seqcore.attention(q, k, v, causal=causal, scale=1.0, return_lse=True, backend="c")
    want, want_lse = ref.attention(q, k, v, causal=causal, scale=1.0, return_lse=True)
    assert_close(out, want, "float32", name="out")
    assert_close(lse, want_lse, "float32", name="lse")


def test_invalid_problems_return_minus_one(rng):
    lib, ffi = _c.load()
    q = np.zeros((1, 2, 4, 8), np.float32)
    out, lse = np.empty((1, 2, 4, 8), np.float32), np.empty((1, 2, 4), np.float32)
    cu_bad = np.array([0, 9], np.int32)   # a sequence longer than Sq = 4
    cu_ok = np.array([0, 4], np.int32)
    bad = [dict(Hkv=0), dict(Hq=3, Hkv=2), dict(D=0), dict(Dv=257), dict(Sq=-1), dict(n_seq=-2),
           dict(window_left=-5), dict(softcap=-1.0), dict(scale=float("nan")),
           dict(cu_q=_c.ptr(cu_bad), cu_k=_c.ptr(cu_ok)), dict(cu_q=_c.ptr(cu_ok))]
    ptr = _c.ptr
    for fields in bad:
        prob = _problem((lib, ffi), **{"Hq": 2, **fields})
        status = lib.seqcore_attention_fwd_f32(prob, ptr(q), ptr(q), ptr(q), ffi.NULL, ptr(out),
                                               ptr(lse))
        assert status == -1, fields
    assert lib.seqcore_attention_fwd_f32(ffi.NULL, ptr(q), ptr(q), ptr(q), ffi.NULL, ptr(out),
                                         ptr(lse)) == -1
    prob = _problem((lib, ffi), Hq=2)
    assert lib.seqcore_attention_fwd_f32(prob, ffi.NULL, ptr(q), ptr(q), ffi.NULL, ptr(out),
                                         ptr(lse)) == -1
    assert lib.seqcore_attention_fwd_f32(prob, ptr(q), ptr(q), ptr(q), ffi.NULL, ptr(out),
                                         ptr(lse)) == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.integers(0, 2), Hkv=st.integers(1, 2), group=st.integers(1, 3), Sq=st.integers(0, 80),
       Sk=st.integers(0, 80), D=st.integers(1, 40), Dv=st.integers(1, 40), causal=st.booleans(),
       left=st.integers(-1, 30), right=st.integers(-1, 30), softcap=st.sampled_from([None, 1.5]),
       bias_kind=st.sampled_from([None, "full", "heads", "keys"]), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**32 - 1))
def test_random_problems(B, Hkv, group, Sq, Sk, D, Dv, causal, left, right, softcap, bias_kind,
                         dtype, seed):
    rng = np.random.default_rng(seed)
    shape = (B, Hkv * group, Hkv, Sq, Sk, D, Dv)
    window = None if (left, right) == (-1, -1) else (left, right)
    opts = dict(causal=causal, window=window, softcap=softcap, bias_kind=bias_kind)
    _check_forward(rng, shape, dtype, **opts)
    _check_backward(rng, shape, dtype, **opts)


def test_backend_takes_non_contiguous_views(rng):
    """The backend module copies views the kernels cannot index (e.g. (B, S, H, D) transposed)."""
    q = np.swapaxes(_randn(rng, (2, 9, 3, 8), "float32"), 1, 2)
    k = np.swapaxes(_randn(rng, (2, 11, 3, 8), "float32"), 1, 2)
    v = np.swapaxes(_randn(rng, (2, 11, 3, 4), "float32"), 1, 2)
    p = make_attn_params(0.4, True, None, None)
    out, lse = C_ATTN.attention_fwd(q, k, v, None, p)
    want_out, want_lse = ref.attention(q, k, v, causal=True, scale=0.4, return_lse=True)
    assert_close(out, want_out, "float32", name="out")
    dout = np.swapaxes(_randn(rng, (2, 9, 3, 4), "float32"), 1, 2)
    grads = C_ATTN.attention_bwd(dout, q, k, v, None, out, lse, p, False)
    want = ref.attention_bwd(dout, q, k, v, causal=True, scale=0.4)
    for name, got, exp in zip(("dq", "dk", "dv"), grads[:3], want[:3]):
        assert_close(got, exp, "float32", grad=True, name=name)


@pytest.mark.parametrize("window", [(-1, 2**63 - 1), (2**63, 0), (2**62, 3), (5, 2**40), (2**100, -1)])
def test_huge_windows_are_unbounded(rng, window):
    """Found by fuzzing: window sides near 2**63 overflowed (zeros from C, a wrong mask from
    the reference) or raised OverflowError from cffi. A side longer than any sequence sees
    every key, in C, in the reference and through torch tensors alike."""
    bounded = tuple(-1 if w >= 2**31 else w for w in window)
    q, k, v = (rng.standard_normal((1, 2, n, 8)) for n in (9, 13, 13))
    want = ref.attention(q, k, v, window=bounded)
    assert_close(ref.attention(q, k, v, window=window), want, "float64", name="reference")
    for causal in (False, True):
        assert_close(seqcore.attention(q, k, v, window=window, causal=causal, backend="c"),
                     ref.attention(q, k, v, window=bounded, causal=causal), "float64", name="c")


def test_varlen_max_seqlen_past_the_total_is_the_total(rng):
    """Found by fuzzing: attention_varlen on tensors did work in proportion to max_seqlen_*
    (2**40 never returned); no sequence is longer than the packed total."""
    torch = pytest.importorskip("torch")
    q = rng.standard_normal((10, 2, 8))
    cu = np.array([0, 3, 10], np.int32)
    want = ref.attention_varlen(q, q, q, cu, cu)
    grad = lambda a: torch.from_numpy(a).requires_grad_(a.dtype == np.float64)  # the torch op
    for kind in (np.asarray, torch.from_numpy, grad):
        got = seqcore.attention_varlen(kind(q), kind(q), kind(q), kind(cu), kind(cu),
                                       max_seqlen_q=2**40, max_seqlen_k=2**40, backend="c")
        assert_close(np.asarray(got.detach() if kind is grad else got), want, "float64", name="out")


# ------------------------------------------------------------------ dropout (csrc/philox.h)
# The mask of seqcore/reference/dropout.py, regenerated by the forward and the backward: the
# outputs, lse (of the probabilities before dropout) and every gradient equal the reference's
# with the same seed, at each ISA level (the vector generator differs per level).

DROPOUT_PS = [0.17, 0.5]
DROPOUT_SHAPES = [
    (2, 4, 2, 17, 33, 3, 17),       # GQA, odd sizes
    (1, 3, 1, 70, 130, 80, 5),      # MQA, several key tiles, Sq < Sk
    (2, 2, 2, 130, 65, 17, 64),     # Sq > Sk: under causal the first rows see nothing
    (1, 1, 1, 1, 200, 16, 8),       # one query
]
DROPOUT_OPTIONS = [dict(), dict(causal=True), dict(window=(5, 3)), dict(softcap=2.5),
                   dict(causal=True, softcap=1.0, window=(40, -1))]
DROPOUT_OPT_IDS = ["plain", "causal", "win5_3", "softcap", "causal_softcap_left40"]


@pytest.mark.parametrize("p", DROPOUT_PS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opts", DROPOUT_OPTIONS, ids=DROPOUT_OPT_IDS)
@pytest.mark.parametrize("shape", DROPOUT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dropout_forward(rng, shape, opts, dtype, p):
    _check_forward(rng, shape, dtype, dropout_p=p, dropout_seed=2024, **opts)


@pytest.mark.parametrize("p", DROPOUT_PS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opts", DROPOUT_OPTIONS, ids=DROPOUT_OPT_IDS)
@pytest.mark.parametrize("shape", DROPOUT_SHAPES[:3], ids=lambda s: "x".join(map(str, s)))
def test_dropout_backward(rng, shape, opts, dtype, p):
    _check_backward(rng, shape, dtype, dropout_p=p, dropout_seed=0x7FFF_FFFF_FFFF_FFFF, **opts)


@pytest.mark.parametrize("p", DROPOUT_PS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias_kind", ["full", "heads", "padding"])
@pytest.mark.parametrize("opts", [dict(), dict(causal=True, softcap=3.0)], ids=["plain", "causal_softcap"])
def test_dropout_bias_and_dbias(rng, bias_kind, opts, dtype, p):
    shape = (2, 4, 2, 37, 71, 20, 12)
    _check_forward(rng, shape, dtype, bias_kind=bias_kind, dropout_p=p, dropout_seed=5, **opts)
    _check_backward(rng, shape, dtype, bias_kind=bias_kind, dropout_p=p, dropout_seed=5, **opts)


@pytest.mark.parametrize("p", DROPOUT_PS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", VARLEN_CASES, ids=range(len(VARLEN_CASES)))
def test_dropout_varlen(rng, case, dtype, p):
    """Positions count from each sequence's start and b is the sequence's index."""
    lens_q, lens_k, Hq, Hkv, D, Dv, opts = case
    q, k, v, cu_q, cu_k = _packed(rng, lens_q, lens_k, Hq, Hkv, D, Dv, dtype)
    drop = dict(dropout_p=p, dropout_seed=31337)
    out, lse = seqcore.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, backend="c",
                                        **opts, **drop)
    want_out, want_lse = ref.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, **opts, **drop)
    assert_close(out, want_out, dtype, name="out")
    assert_close(lse, want_lse, "float32", name="lse")

    prm = make_attn_params(1.0 / math.sqrt(D), opts.get("causal", False), opts.get("window"),
                           opts.get("softcap"), p, 31337)
    max_q, max_k = max(lens_q), max(lens_k)
    out, lse = C_ATTN.attention_varlen_fwd(q, k, v, cu_q, cu_k, max_q, max_k, prm)
    dout = _randn(rng, out.shape, dtype)
    grads = C_ATTN.attention_varlen_bwd(dout, q, k, v, cu_q, cu_k, max_q, max_k, out, lse, prm)
    want = ref.attention_varlen_bwd(dout, q, k, v, cu_q, cu_k, causal=opts.get("causal", False),
                                    window=opts.get("window"), softcap=opts.get("softcap"), **drop)
    for name, got, exp in zip(("dq", "dk", "dv"), grads, want):
        assert_close(got, exp, dtype, grad=True, name=name, scale=_grad_scale(exp))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["dense", "varlen"])
def test_dropout_mask_is_the_reference_mask(rng, dtype, layout):
    """The kept set itself, exactly: with one-hot values (v[j] = e_j) out[i, j] is
    P[i, j] / (1 - p) where kept and 0 where dropped, so out != 0 is the mask (within the
    band); across tile edges, heads, batch elements / sequences and a seed past 2**32."""
    from seqcore.reference.attention import band as ref_band
    from seqcore.reference.dropout import keep_mask
    B, Hq, Sq, Sk, D, p, seed = 2, 3, 150, 200, 8, 0.5, (0x1234_5678 << 32) | 0x9ABC_DEF0
    window = (120, 30)
    q = (0.1 * rng.standard_normal((B, Hq, Sq, D))).astype(dtype)   # P > 0 in the band
    k = (0.1 * rng.standard_normal((B, Hq, Sk, D))).astype(dtype)
    v = np.broadcast_to(np.eye(Sk, dtype=dtype), (B, Hq, Sk, Sk)).copy()
    band = ref_band(Sq, Sk, window=window)
    if layout == "dense":
        out = seqcore.attention(q, k, v, window=window, dropout_p=p, dropout_seed=seed,
                                backend="c")
        seqs = [out[b] for b in range(B)]
    else:  # the batch packed: sequence b's positions count from its own start
        pack = lambda x: np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(-1, Hq, x.shape[-1]))
        cu_q, cu_k = _cu_seqlens([Sq] * B), _cu_seqlens([Sk] * B)
        out = seqcore.attention_varlen(pack(q), pack(k), pack(v), cu_q, cu_k, window=window,
                                       dropout_p=p, dropout_seed=seed, backend="c")
        seqs = [out[b * Sq:(b + 1) * Sq].transpose(1, 0, 2) for b in range(B)]
    for b, got in enumerate(seqs):
        for h in range(Hq):
            want = keep_mask(seed, p, b, h, Hq, np.arange(Sq), np.arange(Sk)) & band
            assert np.array_equal(got[h] != 0, want), (b, h)


def test_dropout_seed_bits_all_count(rng):
    """Seeds that differ only in their high 32 bits (k1), or by one, give other masks; the
    same seed gives the same output every call."""
    q, k, v = _qkv(rng, 1, 2, 1, 40, 50, 8, 8, "float32")
    run = lambda seed: seqcore.attention(q, k, v, dropout_p=0.3, dropout_seed=seed, backend="c")
    a = run(12345)
    assert np.array_equal(a, run(12345))
    for other in (12345 + (1 << 32), 12346, 12345 + (1 << 62)):
        assert not np.allclose(a, run(other)), other


def test_dropout_tiny_p_keeps_everything_and_scales(rng):
    """p below 2**-31: threshold 0 (every probability kept), scaled by 1 / (1 - p) all the
    same, as the reference does."""
    q, k, v = _qkv(rng, 1, 2, 2, 9, 11, 4, 4, "float64")
    p = 1e-12
    got = seqcore.attention(q, k, v, dropout_p=p, dropout_seed=1, backend="c")
    assert_close(got, ref.attention(q, k, v) / (1 - p), "float64")
    assert_close(got, ref.attention(q, k, v, dropout_p=p, dropout_seed=1), "float64")


def test_dropout_invalid_fields_return_minus_one(rng):
    lib, ffi = _c.load()
    q = np.zeros((1, 2, 4, 8), np.float32)
    out, lse = np.empty((1, 2, 4, 8), np.float32), np.empty((1, 2, 4), np.float32)
    ptr = _c.ptr
    for fields in (dict(dropout_scale=0.5), dict(dropout_scale=-2.0),
                   dict(dropout_scale=float("inf")), dict(dropout_scale=float("nan")),
                   dict(dropout_scale=2.0, dropout_threshold=-1),
                   dict(dropout_scale=2.0, dropout_threshold=2**31)):
        prob = _problem((lib, ffi), Hq=2, **fields)
        assert lib.seqcore_attention_fwd_f32(prob, ptr(q), ptr(q), ptr(q), ffi.NULL, ptr(out),
                                             ptr(lse)) == -1, fields
    prob = _problem((lib, ffi), Hq=2, dropout_scale=2.0, dropout_threshold=2**31 - 1,
                    dropout_seed=2**64 - 1)   # (p -> 1: everything dropped)
    assert lib.seqcore_attention_fwd_f32(prob, ptr(q), ptr(q), ptr(q), ffi.NULL, ptr(out),
                                         ptr(lse)) == 0
    assert np.all(out == 0) and np.all(np.isfinite(lse))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.integers(0, 2), Hkv=st.integers(1, 2), group=st.integers(1, 3), Sq=st.integers(0, 80),
       Sk=st.integers(0, 80), D=st.integers(1, 40), Dv=st.integers(1, 40), causal=st.booleans(),
       left=st.integers(-1, 30), right=st.integers(-1, 30), softcap=st.sampled_from([None, 1.5]),
       bias_kind=st.sampled_from([None, "full", "keys"]), dtype=st.sampled_from(DTYPES),
       p=st.sampled_from([0.05, 0.17, 0.5, 0.9]), dropout_seed=st.integers(0, 2**63 - 1),
       seed=st.integers(0, 2**32 - 1))
def test_dropout_random_problems(B, Hkv, group, Sq, Sk, D, Dv, causal, left, right, softcap,
                                 bias_kind, dtype, p, dropout_seed, seed):
    rng = np.random.default_rng(seed)
    shape = (B, Hkv * group, Hkv, Sq, Sk, D, Dv)
    window = None if (left, right) == (-1, -1) else (left, right)
    opts = dict(causal=causal, window=window, softcap=softcap, bias_kind=bias_kind,
                dropout_p=p, dropout_seed=dropout_seed)
    _check_forward(rng, shape, dtype, **opts)
    _check_backward(rng, shape, dtype, **opts)
