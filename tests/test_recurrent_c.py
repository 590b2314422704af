"""The C recurrent kernels (csrc/recurrent.c, csrc/cell_*.h, csrc/gemm.c) against
seqcore.reference.

LSTM/GRU forward through the public API (seqcore.lstm/gru/lstm_cell/gru_cell, backend="c");
backward through the backend module seqcore._c_recurrent against reference.lstm_bwd/gru_bwd.
The Elman RNN (tanh, relu) forward and backward through the backend module
(rnn_fwd / rnn_bwd) against reference.rnn / rnn_bwd.
"""
import concurrent.futures

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import seqcore
import seqcore.reference as ref
from seqcore import _c
from conftest import assert_close

pytestmark = [
    pytest.mark.skipif(bool(_c.status()), reason="C extension not built"),
    pytest.mark.usefixtures("every_isa"),  # every ISA level this CPU runs (conftest)
]

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# (T, B, I, H): odd sizes, length 1, empty sequences and batches, several batch groups
SHAPES = [(5, 3, 17, 17), (5, 8, 3, 100), (1, 1, 1, 1), (1, 8, 100, 3), (5, 1, 4, 33), (0, 3, 5, 3),
          (3, 0, 4, 5), (4, 64, 9, 40)]
DTYPES = ["float32", "float64", "float16"]
# Shapes for the paths that only larger calls take (csrc/recurrent.c): T*B over CHUNK_ROWS =
# 512 rows (TILE_CHUNK_ROWS = 256 when tiled), so the input projection runs in several chunks
# inside the time loop; T*B >= TILE_MIN_ROWS = 96 with B >= 2, the tiled step (with a last,
# partial batch group; I, H over TILE_KSLICE = 128: several k slices), from batch 2 on; fewer
# rows, the in-place step with several 4-row blocks of the batch.
LARGE_SHAPES = [(20, 64, 9, 40), (11, 100, 17, 33), (40, 17, 5, 20), (9, 128, 3, 16), (4, 12, 6, 20),
                (3, 20, 150, 130), (60, 2, 7, 19), (40, 3, 10, 24), (2, 37, 11, 21)]


def make_inputs(rng, cell, T, B, I, H, dtype, biases=True, states=True):
    """Inputs of order one in `dtype` (weights scaled by 1/sqrt(fan-in), as torch inits them)."""
    G = GATES[cell]
    a = dict(x=rng.standard_normal((T, B, I)),
             w_ih=rng.standard_normal((G * H, I)) / np.sqrt(I),
             w_hh=rng.standard_normal((G * H, H)) / np.sqrt(H),
             b_ih=rng.standard_normal(G * H) * 0.5 if biases else None,
             b_hh=rng.standard_normal(G * H) * 0.5 if biases else None,
             h0=rng.standard_normal((B, H)) * 0.5 if states else None)
    if cell == "lstm":
        a["c0"] = rng.standard_normal((B, H)) if states else None
    return {k: None if v is None else v.astype(dtype) for k, v in a.items()}


def make_lengths(rng, mode, T, B):
    if mode == "none":
        return None
    lengths = rng.integers(0, T + 1, size=B)
    lengths[:1] = T         # one full
    lengths[1:2] = 0        # one empty
    return lengths


def f64(a):
    return {k: None if v is None else v.astype(np.float64) for k, v in a.items()}


def run_forward(cell, a, **kw):
    fn = seqcore.lstm if cell == "lstm" else seqcore.gru
    got = fn(**a, backend="c", **kw)
    want = (ref.lstm if cell == "lstm" else ref.gru)(**f64(a), **kw)
    return got, want


def check_forward(cell, got, want, dtype):
    if cell == "lstm":
        (y, (h_n, c_n)), (ye, (hne, cne)) = got, want
        assert_close(c_n, cne, dtype, name="c_n", scale=max(1.0, np.abs(cne).max(initial=0)))
    else:
        (y, h_n), (ye, hne) = got, want
    assert y.dtype == np.dtype(dtype) and h_n.dtype == np.dtype(dtype)
    assert_close(y, ye, dtype, name="y")
    assert_close(h_n, hne, dtype, name="h_n")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("lengths_mode", ["none", "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
def test_sequence_forward(rng, cell, dtype, shape, lengths_mode, reverse):
    T, B, I, H = shape
    a = make_inputs(rng, cell, T, B, I, H, dtype)
    lengths = make_lengths(rng, lengths_mode, T, B)
    got, want = run_forward(cell, a, lengths=lengths, reverse=reverse)
    check_forward(cell, got, want, dtype)
    if lengths is not None:  # zero past each length, exactly
        for b, n in enumerate(lengths):
            assert not got[0][n:, b].any()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", LARGE_SHAPES, ids=str)
@pytest.mark.parametrize("lengths_mode", ["none", "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
def test_large_batch_paths(rng, cell, dtype, shape, lengths_mode, reverse):
    """Forward and backward on the chunked-projection and tiled-step paths."""
    T, B, I, H = shape
    a = make_inputs(rng, cell, T, B, I, H, dtype)
    lengths = make_lengths(rng, lengths_mode, T, B)
    got, want = run_forward(cell, a, lengths=lengths, reverse=reverse)
    check_forward(cell, got, want, dtype)
    got, want, names = run_backward(rng, cell, shape, dtype, lengths, reverse)
    check_grads(got, want, names, dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("biases,states", [(False, False), (True, False), (False, True)])
def test_missing_biases_and_states(rng, cell, dtype, biases, states):
    a = make_inputs(rng, cell, 4, 3, 5, 7, dtype, biases=biases, states=states)
    got, want = run_forward(cell, a, lengths=[4, 0, 2])
    check_forward(cell, got, want, dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_batch_first(rng, cell, reverse):
    T, B, I, H = 5, 3, 4, 6
    a = make_inputs(rng, cell, T, B, I, H, "float32")
    a["x"] = np.ascontiguousarray(a["x"].transpose(1, 0, 2))
    got, want = run_forward(cell, a, lengths=[2, 5, 0], reverse=reverse, batch_first=True)
    assert got[0].shape == (B, T, H)
    check_forward(cell, got, want, "float32")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,I,H", [(1, 1, 1), (3, 17, 17), (8, 5, 100)])
def test_cells(rng, dtype, B, I, H):
    a = make_inputs(rng, "lstm", 1, B, I, H, dtype)
    x, h, c = a["x"][0], a["h0"], a["c0"]
    w = dict(w_ih=a["w_ih"], w_hh=a["w_hh"], b_ih=a["b_ih"], b_hh=a["b_hh"])
    h_new, c_new = seqcore.lstm_cell(x, h, c, **w, backend="c")
    he, ce = ref.lstm_cell(*(v.astype(np.float64) for v in (x, h, c)), **f64(w))
    assert_close(h_new, he, dtype, name="h_new")
    assert_close(c_new, ce, dtype, name="c_new", scale=max(1.0, np.abs(ce).max()))

    g = make_inputs(rng, "gru", 1, B, I, H, dtype)
    wg = dict(w_ih=g["w_ih"], w_hh=g["w_hh"], b_ih=g["b_ih"], b_hh=g["b_hh"])
    h_new = seqcore.gru_cell(g["x"][0], g["h0"], **wg, backend="c")
    he = ref.gru_cell(g["x"][0].astype(np.float64), g["h0"].astype(np.float64), **f64(wg))
    assert_close(h_new, he, dtype, name="gru h_new")


# ---- backward, through the backend module ----

def backend():
    from seqcore import _c_recurrent
    return _c_recurrent


def full_inputs(rng, cell, T, B, I, H, dtype):
    """Every array given (the dispatcher passes zeros for missing ones)."""
    a = make_inputs(rng, cell, T, B, I, H, dtype)
    return {k: np.ascontiguousarray(v) for k, v in a.items()}


def run_backward(rng, cell, shape, dtype, lengths, reverse, with_grads=(True, True), keep_ws=True):
    T, B, I, H = shape
    a = full_inputs(rng, cell, T, B, I, H, dtype)
    mod = backend()
    dy = rng.standard_normal((T, B, H)).astype(dtype) if with_grads[0] else None
    dh_n = rng.standard_normal((B, H)).astype(dtype) if with_grads[1] else None
    if cell == "lstm":
        dc_n = rng.standard_normal((B, H)).astype(dtype) if with_grads[1] else None
        y, _, _, ws = mod.lstm_fwd(*a.values(), lengths, reverse, True)
        got = mod.lstm_bwd(dy, dh_n, dc_n, *a.values(), lengths, reverse,
                           y if keep_ws else None, ws if keep_ws else None)
        want = ref.lstm_bwd(*map(to64, (dy, dh_n, dc_n)), **f64(a), lengths=lengths, reverse=reverse)
        names = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0"]
    else:
        y, _, ws = mod.gru_fwd(*a.values(), lengths, reverse, True)
        got = mod.gru_bwd(dy, dh_n, *a.values(), lengths, reverse,
                          y if keep_ws else None, ws if keep_ws else None)
        want = ref.gru_bwd(*map(to64, (dy, dh_n)), **f64(a), lengths=lengths, reverse=reverse)
        names = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0"]
    return dict(zip(names, got)), want, names


def to64(v):
    return None if v is None else v.astype(np.float64)


def check_grads(got, want, names, dtype):
    for name in names:
        expected = want[name]
        assert got[name].dtype == np.dtype(dtype), name
        scale = max(1.0, np.abs(expected).max(initial=0))
        assert_close(got[name], expected, dtype, grad=True, name=f"d{name}", scale=scale)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("lengths_mode", ["none", "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
def test_backward(rng, cell, dtype, shape, lengths_mode, reverse):
    lengths = make_lengths(rng, lengths_mode, shape[0], shape[1])
    got, want, names = run_backward(rng, cell, shape, dtype, lengths, reverse)
    check_grads(got, want, names, dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("with_grads", [(True, False), (False, True)])
def test_backward_missing_output_grads(rng, cell, with_grads):
    got, want, names = run_backward(rng, cell, (4, 3, 5, 6), "float64", np.array([4, 1, 0]),
                                    False, with_grads=with_grads)
    check_grads(got, want, names, "float64")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_backward_without_workspace_recomputes(rng, cell):
    got, want, names = run_backward(rng, cell, (3, 2, 4, 5), "float32", None, True, keep_ws=False)
    check_grads(got, want, names, "float32")


@settings(max_examples=25, deadline=None)
@given(cell=st.sampled_from(["lstm", "gru"]), T=st.integers(0, 6), B=st.integers(1, 9),
       I=st.integers(1, 20), H=st.integers(1, 40), reverse=st.booleans(),
       use_lengths=st.booleans(), dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 2**32 - 1))
def test_random_shapes(cell, T, B, I, H, reverse, use_lengths, dtype, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, T + 1, size=B) if use_lengths else None
    a = make_inputs(rng, cell, T, B, I, H, dtype)
    got, want = run_forward(cell, a, lengths=lengths, reverse=reverse)
    check_forward(cell, got, want, dtype)
    got, want, names = run_backward(rng, cell, (T, B, I, H), dtype, lengths, reverse)
    check_grads(got, want, names, dtype)


# ---- the C entry points refuse bad sizes instead of crashing ----

@pytest.mark.parametrize("T,B,I,H,lengths", [(-1, 2, 3, 4, None), (2, -1, 3, 4, None),
                                             (2, 2, 0, 4, None), (2, 2, 3, 0, None),
                                             (2, 2, 3, 4, [3, 1]), (2, 2, 3, 4, [1, -1])])
def test_c_rejects_invalid_sizes(T, B, I, H, lengths):
    lib, ffi = _c.load()
    big = np.zeros(4096, np.float32)  # large enough that a missed check could not fault
    p = _c.ptr(big)
    lens = None if lengths is None else np.array(lengths, np.int64)
    assert lib.seqcore_lstm_fwd_f32(T, B, I, H, p, p, p, p, p, p, p, _c.ptr(lens), 0,
                                    p, p, p, p) == -1
    assert lib.seqcore_gru_bwd_f32(T, B, I, H, p, p, p, p, p, p, _c.ptr(lens), 0, p, p,
                                   p, p, p, p, p, p) == -1


def test_c_rejects_missing_arrays():
    lib, ffi = _c.load()
    p = _c.ptr(np.zeros(64, np.float64))
    assert lib.seqcore_gru_fwd_f64(2, 2, 2, 2, ffi.NULL, p, p, p, p, p, ffi.NULL, 0,
                                   p, p, ffi.NULL) == -1
    assert lib.seqcore_lstm_bwd_f64(2, 2, 2, 2, p, p, p, p, p, p, p, p, ffi.NULL, 0, p,
                                    ffi.NULL, p, p, p, p, p, p, p) == -1


def test_concurrent_calls(rng):
    """Calls from several threads at once (cffi releases the GIL): the C kernels share only
    the kept scratch blocks (csrc/scratch.c), so each result must match its own reference.
    Shapes of different sizes, on the tiled and the in-place paths, so blocks
    of every size change hands between threads."""
    cases = [("lstm", (6, 20, 9, 40)), ("gru", (5, 3, 7, 33)), ("lstm", (4, 2, 5, 70)),
             ("gru", (7, 17, 12, 24))] * 2
    jobs = [(cell, shape, np.random.default_rng(int(rng.integers(1 << 30))))
            for cell, shape in cases]

    def run(job):
        cell, shape, job_rng = job
        failures = []
        for _ in range(5):
            got, want, names = run_backward(job_rng, cell, shape, "float64", None, False)
            try:
                check_grads(got, want, names, "float64")
            except AssertionError as e:
                failures.append(str(e))
        return failures

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f for result in pool.map(run, jobs) for f in result]
    assert not failures, failures[:3]


@pytest.mark.parametrize("biases", [True, False])
def test_cell_direct_and_general_paths_agree(rng, monkeypatch, biases):
    """Contiguous float32/float64 NumPy cells go straight to the kernel (seqcore.recurrent's
    direct path); a strided weight takes the general path. Both match the reference."""
    import sys

    recurrent = sys.modules["seqcore.recurrent"]
    general_calls = []  # the general path validates through _prepare; the direct one does not
    real = recurrent._prepare
    monkeypatch.setattr(recurrent, "_prepare", lambda *a: general_calls.append(1) or real(*a))
    B, I, H = 2, 7, 9
    a = make_inputs(rng, "lstm", 1, B, I, H, "float64", biases=biases)
    x, h, c = a["x"][0], a["h0"], a["c0"]
    w = dict(w_ih=a["w_ih"], w_hh=a["w_hh"], b_ih=a.get("b_ih"), b_hh=a.get("b_hh"))
    want = ref.lstm_cell(x, h, c, **w)
    direct = seqcore.lstm_cell(x, h, c, **w)
    assert general_calls == []
    strided = dict(w, w_hh=np.asfortranarray(w["w_hh"]))  # not C-contiguous: general path
    general = seqcore.lstm_cell(x, h, c, **strided)
    assert general_calls == [1]
    for got in (direct, general):
        assert_close(got[0], want[0], "float64", name="h_new")
        assert_close(got[1], want[1], "float64", name="c_new", scale=max(1.0, np.abs(want[1]).max()))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cell_direct_path_for_tensors(rng, monkeypatch, cell, dtype):
    """CPU tensors that need no gradient (Parameters under no_grad too: a module's weights)
    go straight to the kernel, results as tensors; a tensor the kernel cannot read as it lies
    (strided, lazily negated) or a call that needs gradients takes the general path. Every
    path matches the reference."""
    torch = pytest.importorskip("torch")
    import sys

    recurrent = sys.modules["seqcore.recurrent"]
    general_calls = []
    real = recurrent._prepare
    monkeypatch.setattr(recurrent, "_prepare", lambda *a: general_calls.append(1) or real(*a))
    real_views = recurrent._arrays.host_views
    monkeypatch.setattr(recurrent._arrays, "host_views",
                        lambda *a: general_calls.append(2) or real_views(*a))
    B, I, H = 3, 6, 11
    a = make_inputs(rng, cell, 1, B, I, H, dtype)
    x, states = a["x"][0], [a["h0"]] + ([a["c0"]] if cell == "lstm" else [])
    ws = [a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"]]
    fn, reference = getattr(seqcore, f"{cell}_cell"), getattr(ref, f"{cell}_cell")
    want = reference(x, *states, *ws)
    want = want if cell == "lstm" else (want,)

    def check(got):
        got = got if cell == "lstm" else (got,)
        for g, w_ in zip(got, want):
            assert isinstance(g, torch.Tensor) and g.dtype == getattr(torch, dtype)
            assert_close(g.detach().numpy(), w_, dtype, name=f"{cell}_cell",
                         scale=max(1.0, np.abs(w_).max()))

    tensors = [torch.from_numpy(np.ascontiguousarray(v)) for v in [x] + states]
    params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in ws]
    strided = torch.from_numpy(np.asfortranarray(ws[1]))  # not C-contiguous
    negated = torch._neg_view(torch.from_numpy(-ws[0]))  # the neg bit: -(-w), read lazily
    assert negated.is_neg()
    with torch.no_grad():
        check(fn(*tensors, *params))
        assert general_calls == []
        for weights in ([params[0], strided] + params[2:], [negated] + params[1:]):
            check(fn(*tensors, *weights))
            assert general_calls
            general_calls.clear()
    got = fn(*tensors, *params)  # gradients wanted: through autograd
    assert general_calls and (got[0] if cell == "lstm" else got).requires_grad
    check(got)


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_hidden_size_zero_as_torch(backend):
    """hidden_size 0 is legal, as torch's cells take it: empty states and outputs, NumPy and
    tensors alike (found rejected in issue 10)."""
    torch = pytest.importorskip("torch")
    for cell, G in (("lstm", 4), ("gru", 3)):
        x = np.ones((2, 3), np.float32)
        states = [np.zeros((2, 0), np.float32)] * (2 if cell == "lstm" else 1)
        w = [np.zeros((0, 3), np.float32), np.zeros((0, 0), np.float32)]
        got = getattr(seqcore, f"{cell}_cell")(x, *states, *w, backend=backend)
        module = (torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell)(3, 0)
        want = module(torch.from_numpy(x))
        got, want = (got, want) if cell == "lstm" else ((got,), (want,))
        assert [g.shape for g in got] == [tuple(t.shape) for t in want]
        y, final = getattr(seqcore, cell)(np.ones((4, 2, 3), np.float32), *w, backend=backend,
                                          batch_first=True)
        assert y.shape == (4, 2, 0)
        y_t, _ = getattr(seqcore, cell)(torch.ones(5, 2, 3), torch.zeros(0, 3), torch.zeros(0, 0),
                                        backend=backend)
        assert tuple(y_t.shape) == (5, 2, 0) and isinstance(y_t, torch.Tensor)


# ---- the Elman RNN (torch.nn.RNN, tanh or relu), through the backend module ----

NONLINEARITIES = ["tanh", "relu"]
# SHAPES (odd sizes, T = 1, B = 1, empty sequences and batches) and the larger calls'
# paths of LARGE_SHAPES: several input-projection chunks, the batch-tiled step from batch 2
# (G = 1: 8-row groups, a partial last one; I, H over TILE_KSLICE), the in-place step.
RNN_SHAPES = SHAPES + [(20, 64, 9, 40), (11, 100, 17, 33), (9, 128, 3, 16), (3, 20, 150, 130),
                       (60, 2, 7, 19), (40, 3, 10, 24), (2, 37, 11, 21)]


def rnn_case(rng, shape, dtype, biases=True, states=True):
    """Inputs of an Elman call in `dtype` (the arrays the backend gets, None where not given)."""
    a = make_inputs(rng, "rnn", *shape, dtype, biases=biases, states=states)
    return {k: None if v is None else np.ascontiguousarray(v) for k, v in a.items()}


def rnn_forward(a, nonlinearity, lengths, reverse, need_ws=True):
    """(y, h_n, ws) of the C kernel and (y, h_n) of the float64 reference."""
    got = backend().rnn_fwd(a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"],
                            lengths, reverse, nonlinearity, need_ws)
    want = ref.rnn(**f64(a), nonlinearity=nonlinearity, lengths=lengths, reverse=reverse)
    return got, want


def check_rnn_forward(got, want, dtype):
    (y, h_n, _), (ye, hne) = got, want
    assert y.dtype == np.dtype(dtype) and h_n.dtype == np.dtype(dtype)
    # (relu outputs are not bounded by one: the atol of order-one outputs, scaled)
    assert_close(y, ye, dtype, name="y", scale=max(1.0, np.abs(ye).max(initial=0)))
    assert_close(h_n, hne, dtype, name="h_n", scale=max(1.0, np.abs(hne).max(initial=0)))


def rnn_backward(rng, a, nonlinearity, lengths, reverse, with_grads=(True, True), keep_ws=True):
    """The C gradients and the reference's, as dicts by input name."""
    T, B, _ = a["x"].shape
    H = a["w_hh"].shape[1]
    dtype = a["x"].dtype
    dy = rng.standard_normal((T, B, H)).astype(dtype) if with_grads[0] else None
    dh_n = rng.standard_normal((B, H)).astype(dtype) if with_grads[1] else None
    mod = backend()
    args = (a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], lengths, reverse,
            nonlinearity)
    y, _, ws = mod.rnn_fwd(*args, True)
    got = mod.rnn_bwd(dy, dh_n, *args, y if keep_ws else None, ws if keep_ws else None)
    want = ref.rnn_bwd(to64(dy), to64(dh_n), **f64(a), nonlinearity=nonlinearity,
                       lengths=lengths, reverse=reverse)
    names = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0"]
    return dict(zip(names, got)), want, names


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", RNN_SHAPES, ids=str)
@pytest.mark.parametrize("lengths_mode", ["none", "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
def test_rnn_forward_backward(rng, nonlinearity, dtype, shape, lengths_mode, reverse):
    T, B, I, H = shape
    a = rnn_case(rng, shape, dtype)
    lengths = make_lengths(rng, lengths_mode, T, B)
    got, want = rnn_forward(a, nonlinearity, lengths, reverse)
    check_rnn_forward(got, want, dtype)
    y, _, ws = got
    assert ws.shape == (T, B, H) and np.array_equal(ws, y)  # ws: the activated h_t
    if lengths is not None:  # zero past each length, exactly
        for b, n in enumerate(lengths):
            assert not y[n:, b].any()
    got, want, names = rnn_backward(rng, a, nonlinearity, lengths, reverse)
    check_grads(got, want, names, dtype)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("biases,states", [(False, False), (True, False), (False, True)])
def test_rnn_missing_biases_and_states(rng, nonlinearity, dtype, biases, states):
    """None (NULL) biases and h0 read as zeros, in the forward and the backward."""
    a = rnn_case(rng, (4, 3, 5, 7), dtype, biases=biases, states=states)
    lengths = np.array([4, 0, 2])
    got, want = rnn_forward(a, nonlinearity, lengths, False, need_ws=False)
    assert got[2] is None
    check_rnn_forward(got, want, dtype)
    got, want, names = rnn_backward(rng, a, nonlinearity, lengths, True)
    check_grads(got, want, names, dtype)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("with_grads", [(True, False), (False, True)])
def test_rnn_backward_missing_output_grads(rng, nonlinearity, with_grads):
    a = rnn_case(rng, (4, 3, 5, 6), "float64")
    got, want, names = rnn_backward(rng, a, nonlinearity, np.array([4, 1, 0]), False,
                                    with_grads=with_grads)
    check_grads(got, want, names, "float64")


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_rnn_backward_without_workspace_recomputes(rng, nonlinearity):
    a = rnn_case(rng, (3, 2, 4, 5), "float32")
    got, want, names = rnn_backward(rng, a, nonlinearity, None, True, keep_ws=False)
    check_grads(got, want, names, "float32")


def test_rnn_relu_masks_by_output():
    """relu' is taken as (h > 0), as torch's relu backward masks by its output: units whose
    pre-activation is negative pass no gradient, the others all of it."""
    x = np.array([[[1.0], [-1.0]]])  # T1 B2 I1: a = +1 and -1 for H = 1
    w_ih, w_hh = np.ones((1, 1)), np.zeros((1, 1))
    y, _, ws = backend().rnn_fwd(x, w_ih, w_hh, None, None, None, None, False, "relu", True)
    assert y.ravel().tolist() == [1.0, 0.0]
    dx = backend().rnn_bwd(np.ones_like(y), None, x, w_ih, w_hh, None, None, None, None,
                           False, "relu", y, ws)[0]
    assert dx.ravel().tolist() == [1.0, 0.0]


def test_rnn_c_rejects_invalid():
    lib, ffi = _c.load()
    p = _c.ptr(np.zeros(4096, np.float32))
    lens = _c.ptr(np.array([3, 1], np.int64))
    assert lib.seqcore_rnn_fwd_f32(2, 2, 3, 4, p, p, p, p, p, p, lens, 0, 0, p, p, p) == -1
    assert lib.seqcore_rnn_fwd_f32(2, 2, 0, 4, p, p, p, p, p, p, ffi.NULL, 0, 1, p, p, p) == -1
    assert lib.seqcore_rnn_bwd_f32(2, 2, 3, 4, p, p, p, p, p, p, ffi.NULL, 0, 0, p, ffi.NULL,
                                   p, p, p, p, p, p) == -1
    q = _c.ptr(np.zeros(64, np.float64))
    assert lib.seqcore_rnn_fwd_f64(2, 2, 2, 2, ffi.NULL, q, q, q, q, q, ffi.NULL, 0, 0,
                                   q, q, ffi.NULL) == -1
    with pytest.raises(ValueError, match="nonlinearity"):
        backend().rnn_fwd(np.zeros((1, 1, 1)), np.zeros((1, 1)), np.zeros((1, 1)), None, None,
                          None, None, False, "sigmoid", False)


@settings(max_examples=25, deadline=None)
@given(nonlinearity=st.sampled_from(NONLINEARITIES), T=st.integers(0, 6), B=st.integers(1, 20),
       I=st.integers(1, 20), H=st.integers(1, 40), reverse=st.booleans(),
       use_lengths=st.booleans(), dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 2**32 - 1))
def test_rnn_random_shapes(nonlinearity, T, B, I, H, reverse, use_lengths, dtype, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, T + 1, size=B) if use_lengths else None
    a = rnn_case(rng, (T, B, I, H), dtype)
    got, want = rnn_forward(a, nonlinearity, lengths, reverse)
    check_rnn_forward(got, want, dtype)
    got, want, names = rnn_backward(rng, a, nonlinearity, lengths, reverse)
    check_grads(got, want, names, dtype)


# ---- the LSTM projection (w_hr, torch's proj_size), through the backend module ----

# (T, B, I, H, P): odd H, P = 1 and P = H - 1, T = 1, B = 1, empty sequences and batches; T*B
# >= TILE_MIN_ROWS = 96 with B >= 2 for the batch-tiled step (a partial last batch group; H
# over TILE_KSLICE = 128: several k slices), fewer for the in-place step; T*B over
# TILE_CHUNK_ROWS = 256 (tiled) for several input-projection chunks
PROJ_SHAPES = [(5, 3, 7, 11, 4), (6, 4, 5, 9, 1), (5, 3, 4, 6, 5), (1, 1, 3, 13, 6),
               (1, 8, 9, 17, 8), (30, 1, 5, 21, 10), (0, 3, 4, 5, 2), (3, 0, 4, 5, 2),
               (20, 7, 6, 33, 17), (40, 16, 9, 50, 37), (3, 40, 10, 150, 70),
               (30, 5, 3, 8, 1), (12, 64, 5, 19, 9)]


def proj_case(rng, T, B, I, H, P, dtype, biases=True, states=True):
    """The arrays lstm_fwd/lstm_bwd take with a projection (None where not given)."""
    a = make_inputs(rng, "lstm", T, B, I, H, dtype, biases=biases, states=states)
    a["w_hh"] = (rng.standard_normal((4 * H, P)) / np.sqrt(P)).astype(dtype)
    if states:
        a["h0"] = (rng.standard_normal((B, P)) * 0.5).astype(dtype)
    w_hr = (rng.standard_normal((P, H)) / np.sqrt(H)).astype(dtype)
    return {k: None if v is None else np.ascontiguousarray(v) for k, v in a.items()}, w_hr


def proj_run(rng, a, w_hr, lengths, reverse, with_grads=(True, True), keep_ws=True):
    """C forward and backward, and the reference's, of one call with a projection."""
    T, B, _ = a["x"].shape
    H, P = a["w_hh"].shape[0] // 4, w_hr.shape[0]
    dtype = a["x"].dtype
    mod = backend()
    args = [a[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")]
    y, h_n, c_n, ws = mod.lstm_fwd(*args, lengths, reverse, True, w_hr=w_hr)
    assert ws.shape == (T, B, 5 * H)
    ye, (hne, cne) = ref.lstm(**f64(a), w_hr=to64(w_hr), lengths=lengths, reverse=reverse)
    dy = rng.standard_normal((T, B, P)).astype(dtype) if with_grads[0] else None
    dh_n = rng.standard_normal((B, P)).astype(dtype) if with_grads[1] else None
    dc_n = rng.standard_normal((B, H)).astype(dtype) if with_grads[1] else None
    got = mod.lstm_bwd(dy, dh_n, dc_n, *args, lengths, reverse, y if keep_ws else None,
                       ws if keep_ws else None, w_hr=w_hr)
    want = ref.lstm_bwd(*map(to64, (dy, dh_n, dc_n)), **f64(a), w_hr=to64(w_hr),
                        lengths=lengths, reverse=reverse)
    names = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0", "w_hr"]
    return (y, h_n, c_n), (ye, hne, cne), dict(zip(names, got)), want, names


def check_proj_forward(got, want, dtype, lengths):
    (y, h_n, c_n), (ye, hne, cne) = got, want
    assert y.shape == ye.shape and h_n.shape == hne.shape and c_n.shape == cne.shape
    assert y.dtype == np.dtype(dtype) and h_n.dtype == np.dtype(dtype)
    assert_close(y, ye, dtype, name="y")
    assert_close(h_n, hne, dtype, name="h_n")
    assert_close(c_n, cne, dtype, name="c_n", scale=max(1.0, np.abs(cne).max(initial=0)))
    if lengths is not None:  # zero past each length, exactly
        for b, n in enumerate(lengths):
            assert not y[n:, b].any()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", PROJ_SHAPES, ids=str)
@pytest.mark.parametrize("lengths_mode", ["none", "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
def test_projection(rng, dtype, shape, lengths_mode, reverse):
    T, B, I, H, P = shape
    a, w_hr = proj_case(rng, T, B, I, H, P, dtype)
    lengths = make_lengths(rng, lengths_mode, T, B)
    got_f, want_f, got, want, names = proj_run(rng, a, w_hr, lengths, reverse)
    check_proj_forward(got_f, want_f, dtype, lengths)
    check_grads(got, want, names, dtype)


@pytest.mark.parametrize("biases,states", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("with_grads", [(True, True), (True, False), (False, True)])
def test_projection_missing_arrays(rng, biases, states, with_grads):
    """None biases, states and output gradients read as zeros (NULL in C)."""
    a, w_hr = proj_case(rng, 6, 3, 5, 9, 4, "float64", biases=biases, states=states)
    lengths = np.array([6, 0, 3])
    got_f, want_f, got, want, names = proj_run(rng, a, w_hr, lengths, True, with_grads)
    check_proj_forward(got_f, want_f, "float64", lengths)
    check_grads(got, want, names, "float64")


def test_projection_without_workspace_recomputes(rng):
    a, w_hr = proj_case(rng, 4, 3, 5, 10, 3, "float32")
    _, _, got, want, names = proj_run(rng, a, w_hr, None, False, keep_ws=False)
    check_grads(got, want, names, "float32")


def test_projection_c_rejects_invalid():
    """A projection of size < 1, or none with P != H, is refused (-1), never read."""
    lib, ffi = _c.load()
    p = _c.ptr(np.zeros(4096, np.float32))
    N = ffi.NULL
    assert lib.seqcore_lstm_proj_fwd_f32(2, 2, 3, 4, 0, p, p, p, p, p, p, p, p, N, 0,
                                         p, p, p, p) == -1
    assert lib.seqcore_lstm_proj_fwd_f32(2, 2, 3, 4, 2, p, p, p, p, p, N, p, p, N, 0,
                                         p, p, p, p) == -1
    # with w_hr the backward needs dw_hr
    assert lib.seqcore_lstm_proj_bwd_f32(2, 2, 3, 4, 2, p, p, p, p, p, p, p, p, p, N, 0, p, p,
                                         p, p, p, p, p, N, p, p) == -1
    q = _c.ptr(np.zeros(4096, np.float64))
    assert lib.seqcore_lstm_proj_bwd_f64(2, 2, 3, 4, -1, q, q, q, q, q, q, q, q, q, N, 0, q,
                                         q, q, q, q, q, q, q, q, q) == -1


@settings(max_examples=25, deadline=None)
@given(T=st.integers(0, 6), B=st.integers(1, 20), I=st.integers(1, 12), H=st.integers(2, 40),
       p_frac=st.floats(0, 1), reverse=st.booleans(), use_lengths=st.booleans(),
       dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2**32 - 1))
def test_projection_random_shapes(T, B, I, H, p_frac, reverse, use_lengths, dtype, seed):
    rng = np.random.default_rng(seed)
    P = 1 + int(p_frac * (H - 2))  # 1 <= P < H
    lengths = rng.integers(0, T + 1, size=B) if use_lengths else None
    a, w_hr = proj_case(rng, T, B, I, H, P, dtype)
    got_f, want_f, got, want, names = proj_run(rng, a, w_hr, lengths, reverse)
    check_proj_forward(got_f, want_f, dtype, lengths)
    check_grads(got, want, names, dtype)
