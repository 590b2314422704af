"""Triton LSTM/GRU/Elman kernels (backend="triton") against the float64 reference.

LSTM/GRU forward through the public API (seqcore.lstm / gru / lstm_cell / gru_cell), backward
through the backend module (seqcore._triton_recurrent.lstm_bwd / gru_bwd) and once through
autograd; the Elman cell (tanh and relu) forward and backward through the backend module
(seqcore._triton_recurrent.rnn_fwd / rnn_bwd); the LSTM with a projection (w_hr, torch's
proj_size) forward and backward through the backend module and once through autograd.
Every forward test runs both forward paths: the persistent kernel (in its one-program
configuration under the interpreter) and the per-step kernels. Every kernel output buffer is
handed out NaN-filled (see `poisoned_buffers`), so an element a kernel forgets to write fails.
"""
import numpy as np
import pytest

from conftest import HAS_CUDA, assert_close, to_f64

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import seqcore  # noqa: E402
from seqcore import _triton_recurrent as backend  # noqa: E402
from seqcore import reference  # noqa: E402

pytestmark = pytest.mark.triton

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
WS_SLOTS = {"lstm": 5, "gru": 4, "rnn_tanh": 1, "rnn_relu": 1}
ELMAN = ["rnn_tanh", "rnn_relu"]  # the backend's nonlinearity is the name after "rnn_"
PATHS = ["persistent", "step"]
DTYPES = ["float32", "float16", "bfloat16"]
# (T, B, I, H): odd sizes, length-1 and empty sequences, an empty batch
SEQ_SHAPES = [(1, 1, 1, 1), (4, 3, 3, 17), (4, 1, 40, 3), (0, 3, 5, 17), (4, 3, 17, 40),
              (3, 0, 2, 5)]
BWD_SHAPES = [(1, 1, 1, 1), (4, 3, 3, 17), (4, 1, 40, 3), (0, 3, 5, 17), (3, 3, 17, 40)]
# what a call passes besides x and the weights
VARIANTS = {
    "bare": dict(biases=False, states=False, lengths=False, reverse=False, batch_first=False),
    "full": dict(biases=True, states=True, lengths=False, reverse=False, batch_first=False),
    "lengths": dict(biases=True, states=True, lengths=True, reverse=False, batch_first=False),
    "reverse_lengths": dict(biases=True, states=False, lengths=True, reverse=True,
                            batch_first=False),
    "batch_first_reverse": dict(biases=False, states=True, lengths=False, reverse=True,
                                batch_first=True),
}
BWD_VARIANTS = ["full", "lengths", "reverse_lengths"]
ELMAN_VARIANTS = ["bare", "full", "lengths", "reverse_lengths"]  # the backend is time-major
# more batch rows and hidden units than one tile (16 x 64): a grid of several programs per step,
# exchanging h through memory; the persistent path falls back to the per-step kernels here
# under the interpreter (one program cannot hold this w_hh)
MULTI_TILE_SHAPE = (3, 17, 3, 65)


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """Every buffer the recurrent kernels allocate starts as NaN."""
    from seqcore.kernels import rnn_cell

    def nan_buffer(shape, dtype, device):
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(rnn_cell, "new_buffer", nan_buffer)


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    monkeypatch.setattr(backend, "FORWARD_PATH", request.param)
    return request.param


def torch_dtype(dtype, device):
    if dtype == "bfloat16" and not HAS_CUDA:
        pytest.skip("bfloat16 needs a GPU: the Triton interpreter computes through NumPy, "
                    "which has no bfloat16")
    return getattr(torch, dtype)


def expect_persistent(path, cell, B, H, device):
    """The persistent path must really run the persistent kernel for the shapes tested here."""
    if path == "persistent":
        from seqcore.kernels.rnn_persistent import runs_persistent

        assert runs_persistent(B, H, GATES[cell], torch.device(device)) or B == 0


def make_lengths(rng, T, B):
    """Lengths in [0, T] that include 0 and T whenever B allows."""
    lengths = rng.integers(0, T + 1, size=B)
    if B >= 2:
        lengths[0], lengths[-1] = 0, T
    elif B == 1:
        lengths[0] = rng.integers(0, T + 1)
    return lengths


def make_problem(rng, cell, T, B, I, H, dtype, device, v):
    """Inputs as tensors (dtype, device) and as their float64 NumPy values."""
    G = GATES[cell]
    bound = 1.0 / np.sqrt(H)
    x_shape = (B, T, I) if v["batch_first"] else (T, B, I)
    arrays = dict(x=rng.standard_normal(x_shape),
                  w_ih=rng.uniform(-bound, bound, (G * H, I)),
                  w_hh=rng.uniform(-bound, bound, (G * H, H)))
    if v["biases"]:
        arrays["b_ih"] = rng.uniform(-bound, bound, G * H)
        arrays["b_hh"] = rng.uniform(-bound, bound, G * H)
    if v["states"]:
        arrays["h0"] = rng.standard_normal((B, H))
        if cell == "lstm":
            arrays["c0"] = rng.standard_normal((B, H))
    tensors = {k: torch.tensor(a, dtype=dtype, device=device) for k, a in arrays.items()}
    values = {k: to_f64(t) for k, t in tensors.items()}
    lengths = make_lengths(rng, T, B) if v["lengths"] else None
    return tensors, values, lengths


def run_sequence(cell, args, lengths, v, backend_name):
    fn = seqcore.lstm if cell == "lstm" else seqcore.gru
    opts = dict(lengths=lengths, reverse=v["reverse"], batch_first=v["batch_first"])
    if backend_name is not None:
        opts["backend"] = backend_name
    return fn(**args, **opts)


def flat_outputs(cell, out):
    """[y, h_n(, c_n)] from the public return value."""
    y, state = out
    return [y] + (list(state) if cell == "lstm" else [state])


# ----------------------------------------------------------------------------------------------
# Forward


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", SEQ_SHAPES, ids=lambda s: "T%d-B%d-I%d-H%d" % s)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sequence_forward(cell, variant, shape, dtype, path, rng, triton_device):
    T, B, I, H = shape
    v = VARIANTS[variant]
    tdtype = torch_dtype(dtype, triton_device)
    expect_persistent(path, cell, B, H, triton_device)
    tensors, values, lengths = make_problem(rng, cell, T, B, I, H, tdtype, triton_device, v)
    got = flat_outputs(cell, run_sequence(cell, tensors, lengths, v, "triton"))
    want = flat_outputs(cell, run_sequence(cell, values, lengths, v, None))
    for name, g, w in zip(["y", "h_n", "c_n"], got, want):
        assert g.dtype == tdtype and g.device.type == triton_device
        assert_close(g, w, dtype, name=name)
    if lengths is not None and T > 0:
        y = got[0].transpose(0, 1) if v["batch_first"] else got[0]
        for b, n in enumerate(lengths):  # exactly zero past each length, not merely close
            assert torch.all(y[n:, b] == 0)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 17, 40), (3, 3, 17)],
                         ids=lambda s: "B%d-I%d-H%d" % s)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cells(shape, with_bias, dtype, path, rng, triton_device):
    B, I, H = shape
    tdtype = torch_dtype(dtype, triton_device)
    expect_persistent(path, "lstm", B, H, triton_device)
    v = dict(VARIANTS["full"], biases=with_bias)
    t, a, _ = make_problem(rng, "lstm", 1, B, I, H, tdtype, triton_device, v)
    step = dict(x=t["x"][0], h=t["h0"], c=t["c0"], w_ih=t["w_ih"], w_hh=t["w_hh"],
                b_ih=t.get("b_ih"), b_hh=t.get("b_hh"))
    h_new, c_new = seqcore.lstm_cell(**step, backend="triton")
    want_h, want_c = reference.lstm_cell(a["x"][0], a["h0"], a["c0"], a["w_ih"], a["w_hh"],
                                         a.get("b_ih"), a.get("b_hh"))
    assert_close(h_new, want_h, dtype, name="lstm h")
    assert_close(c_new, want_c, dtype, name="lstm c")

    t, a, _ = make_problem(rng, "gru", 1, B, I, H, tdtype, triton_device, v)
    h_new = seqcore.gru_cell(t["x"][0], t["h0"], t["w_ih"], t["w_hh"], t.get("b_ih"),
                             t.get("b_hh"), backend="triton")
    want = reference.gru_cell(a["x"][0], a["h0"], a["w_ih"], a["w_hh"], a.get("b_ih"),
                              a.get("b_hh"))
    assert_close(h_new, want, dtype, name="gru h")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_persistent_falls_back_when_w_hh_too_large(cell, rng, triton_device, monkeypatch):
    """A w_hh slice that does not fit in registers takes the per-step kernels, still correct."""
    from seqcore.kernels import rnn_persistent

    monkeypatch.setattr(backend, "FORWARD_PATH", "persistent")
    monkeypatch.setattr(rnn_persistent, "MAX_WEIGHT_BYTES", 1024)  # forces the fallback at H=17
    T, B, I, H = 3, 2, 3, 17
    assert not rnn_persistent.runs_persistent(B, H, GATES[cell], torch.device(triton_device))
    v = VARIANTS["lengths"]
    tensors, values, lengths = make_problem(rng, cell, T, B, I, H, torch.float32, triton_device, v)
    got = flat_outputs(cell, run_sequence(cell, tensors, lengths, v, "triton"))
    want = flat_outputs(cell, run_sequence(cell, values, lengths, v, None))
    for name, g, w in zip(["y", "h_n", "c_n"], got, want):
        assert_close(g, w, "float32", name=name)


H100_SMS = 132


@pytest.mark.parametrize("elem_bytes", [2, 4], ids=["half", "float32"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_persistent_blocking_on_h100(cell, elem_bytes):
    """On 132 SMs every B <= 64, H <= 1024 runs persistently in half precision (float32: B <= 16
    and H <= 512, the Elman cell H <= 1024), in one co-resident grid, with tiles within the
    limits the sm_90 compile checked (bench/sm90_report.py compiles exactly these blockings);
    larger shapes take the per-step kernel."""
    from seqcore.kernels import rnn_persistent as rp

    G = GATES[cell]
    for B in (1, 8, 16, 64):
        for H in (256, 512, 768, 1024):
            blocks = rp.persistent_blocks(B, H, G, H100_SMS, elem_bytes)
            if elem_bytes == 4 and (B > 16 or (G > 1 and H > 512)):
                assert not rp.fits_on_chip(B, H, G, H100_SMS, elem_bytes), (B, H, blocks)
                continue
            n = rp.gate_slots(G) * blocks.units
            max_h_chunk = rp.MAX_H_CHUNK_FP32 if elem_bytes == 4 else rp.MAX_H_CHUNK
            assert rp.fits_on_chip(B, H, G, H100_SMS, elem_bytes), (B, H, blocks)
            assert blocks.n_programs <= H100_SMS and blocks.n_programs * blocks.units >= H
            assert (blocks.n_programs - 1) * blocks.units < H  # no idle program
            assert B <= blocks.block_b <= rp.MAX_BATCH_BLOCK
            assert n >= 16 and blocks.chunk_k >= 16  # tl.dot's minimum N and K
            assert blocks.n_chunks * blocks.chunk_k >= H > (blocks.n_chunks - 1) * blocks.chunk_k
            assert blocks.block_b * n <= rp.MAX_ACC
            assert blocks.block_b * blocks.chunk_k <= max_h_chunk
            assert blocks.chunk_k * n <= rp.MAX_W_CHUNK and blocks.n_chunks <= rp.MAX_CHUNKS
            assert n * blocks.chunk_k * blocks.n_chunks * elem_bytes <= rp.MAX_WEIGHT_BYTES
    # the example: H = 1024, 8 units per program over 128 programs, a 32-wide dot
    if G > 1:
        blocks = rp.persistent_blocks(64, 1024, G, H100_SMS, elem_bytes)
        assert (blocks.units, blocks.n_programs, rp.gate_slots(G) * blocks.units) == (8, 128, 32)
    assert not rp.fits_on_chip(65, 256, G, H100_SMS, elem_bytes)      # BLOCK_B = 128
    assert not rp.fits_on_chip(16, 4096, G, H100_SMS, elem_bytes)     # w_hh too large


def test_persistent_tf32_float32_slices_take_narrower_chunks(monkeypatch):
    """SEQCORE_TF32=1: a float32 slice of 8 or more 128-wide chunks (the Elman cell at
    H = 1024) spilled on sm_90 and takes 64-wide ones; shorter slices and "ieee" dots keep
    128."""
    from seqcore.kernels import rnn_persistent as rp

    monkeypatch.delenv("SEQCORE_TF32", raising=False)
    assert rp.persistent_blocks(8, 1024, 1, H100_SMS, 4)[2:4] == (128, 8)
    monkeypatch.setenv("SEQCORE_TF32", "1")
    assert rp.persistent_blocks(8, 1024, 1, H100_SMS, 4)[2:4] == (64, 16)
    assert rp.fits_on_chip(8, 1024, 1, H100_SMS, 4)
    assert rp.persistent_blocks(8, 512, 4, H100_SMS, 4)[2:4] == (128, 4)
    assert rp.persistent_blocks(8, 1024, 1, H100_SMS, 2)[2] > 64   # half precision: as it was


# (T, B, I, H) of the one-program persistent blocking (n_programs_max = 1: the interpreter can
# run it): a batch of 64 and a non-power-of-two one of 37, odd H, K-chunked (H over several
# CHUNK_K) or not
ONE_PROGRAM_SHAPES = {
    "lstm": [(3, 64, 3, 8), (4, 37, 3, 12), (4, 3, 5, 40)],
    "gru": [(3, 64, 3, 8), (4, 37, 3, 12), (4, 3, 5, 40)],
    "rnn_tanh": [(3, 64, 3, 40), (4, 37, 3, 40), (4, 5, 3, 72)],
    "rnn_relu": [(4, 37, 3, 40)],
}
ONE_PROGRAM_CASES = [(cell, shape) for cell, shapes in ONE_PROGRAM_SHAPES.items()
                     for shape in shapes]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("flags", ["bare", "lengths_reverse_ws"])
@pytest.mark.parametrize("cell,shape", ONE_PROGRAM_CASES,
                         ids=["%s-T%d-B%d-I%d-H%d" % ((c,) + s) for c, s in ONE_PROGRAM_CASES])
def test_persistent_one_program_blocking(cell, shape, flags, dtype, rng, triton_device,
                                         monkeypatch):
    """forward_persistent in its one-program blocking against the per-step kernels: y, the
    final states and the workspace; never the fallback."""
    from seqcore.kernels import rnn_cell, rnn_persistent as rp

    if triton_device == "cuda":
        pytest.skip("the one-program grid is the interpreter's; on a GPU the tests above run "
                    "the real grid")
    T, B, I, H = shape
    tdtype = torch_dtype(dtype, triton_device)
    G = GATES[cell]
    elem_bytes = torch.tensor([], dtype=tdtype).element_size()
    if dtype == "float32" and B > rp.MAX_BATCH_BLOCK_FP32:
        # float32 stays within 16 batch rows: larger batches are the per-step kernel's
        assert not rp.fits_on_chip(B, H, G, 1, elem_bytes)
        return
    assert rp.fits_on_chip(B, H, G, 1, elem_bytes)
    with_flags = flags != "bare"
    v = dict(VARIANTS["full"], lengths=with_flags)
    tensors, _, lengths = make_problem(rng, cell, T, B, I, H, tdtype, triton_device, v)
    args = full_args(cell, tensors, B, H, tdtype, triton_device)
    lens = None if lengths is None else torch.tensor(lengths, device=triton_device)
    states = tuple(args[5:])
    call = (cell, *args[:5], states, lens, with_flags, with_flags)
    want = rnn_cell.forward_steps(*call)

    def no_fallback(*a, **k):
        raise AssertionError("forward_persistent fell back to the per-step kernels")

    monkeypatch.setattr(rp, "forward_steps", no_fallback)
    got = rp.forward_persistent(*call, n_programs_max=1)
    names = ["y"] + ["h_n", "c_n"][:len(states)]
    for name, g, w in zip(names, [got[0], *got[1]], [want[0], *want[1]]):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert_close(g, w, dtype, name=name)
    if with_flags:
        assert_close(got[2], want[2], dtype, name="ws")
        for b, n in enumerate(lengths):  # exactly zero past each length, not merely close
            assert torch.all(got[0][n:, b] == 0)
    else:
        assert got[2] is None


def test_persistent_k_chunks_with_a_batch_of_64(rng, triton_device, monkeypatch):
    """The K-chunked path with 64 (and 37) batch rows, float16: narrower h chunks (MAX_H_CHUNK
    lowered) split H = 40 into three chunks of 16."""
    from seqcore.kernels import rnn_cell, rnn_persistent as rp

    if triton_device == "cuda":
        pytest.skip("the one-program grid is the interpreter's")
    monkeypatch.setattr(rp, "MAX_H_CHUNK", 1024)
    for cell, (T, B, I, H) in (("rnn_tanh", (3, 64, 3, 40)), ("rnn_relu", (3, 37, 2, 40))):
        blocks = rp.persistent_blocks(B, H, 1, 1, 2)
        assert (blocks.chunk_k, blocks.n_chunks) == (16, 3) and rp.fits_on_chip(B, H, 1, 1, 2)
        tensors, _, lengths = make_problem(rng, cell, T, B, I, H, torch.float16, triton_device,
                                           dict(VARIANTS["full"], lengths=True))
        args = full_args(cell, tensors, B, H, torch.float16, triton_device)
        call = (cell, *args[:5], (args[5],), torch.tensor(lengths), True, True)
        want = rnn_cell.forward_steps(*call)
        got = rp.forward_persistent(*call, n_programs_max=1)
        for name, g, w in (("y", got[0], want[0]), ("h_n", got[1][0], want[1][0]),
                           ("ws", got[2], want[2])):
            assert_close(g, w, "float16", name=name)


# ----------------------------------------------------------------------------------------------
# Backward


def full_args(cell, tensors, B, H, dtype, device):
    """The backend's positional tensors: biases and states always present (zeros if absent)."""
    G = GATES[cell]

    def zeros(*shape_):
        return torch.zeros(shape_, dtype=dtype, device=device)

    out = [tensors["x"], tensors["w_ih"], tensors["w_hh"],
           tensors.get("b_ih", zeros(G * H)), tensors.get("b_hh", zeros(G * H)),
           tensors.get("h0", zeros(B, H))]
    if cell == "lstm":
        out.append(tensors.get("c0", zeros(B, H)))
    return out


def check_grads(cell, got, want, dtype):
    names = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0"] + (["c0"] if cell == "lstm" else [])
    for name, g in zip(names, got):
        w = want[name]
        # weight and bias gradients sum over T*B steps: widen atol with their size
        scale = max(1.0, float(np.abs(w).max())) if w.size else 1.0
        assert_close(g, w, dtype, grad=True, name="d" + name, scale=scale)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("variant", BWD_VARIANTS)
@pytest.mark.parametrize("shape", BWD_SHAPES, ids=lambda s: "T%d-B%d-I%d-H%d" % s)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sequence_backward(cell, variant, shape, dtype, path, rng, triton_device):
    check_backward(cell, variant, shape, dtype, rng, triton_device)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_multi_tile_grid(cell, path, rng, triton_device):
    """Forward and backward with several programs per step in both grid dimensions."""
    T, B, I, H = MULTI_TILE_SHAPE
    variant = "reverse_lengths"
    v = VARIANTS[variant]
    tensors, values, lengths = make_problem(rng, cell, T, B, I, H, torch.float32, triton_device, v)
    got = flat_outputs(cell, run_sequence(cell, tensors, lengths, v, "triton"))
    want = flat_outputs(cell, run_sequence(cell, values, lengths, v, None))
    for name, g, w in zip(["y", "h_n", "c_n"], got, want):
        assert_close(g, w, "float32", name=name)
    check_backward(cell, variant, MULTI_TILE_SHAPE, "float32", rng, triton_device)


def check_backward(cell, variant, shape, dtype, rng, triton_device):
    """backend.lstm_bwd / gru_bwd / rnn_bwd after the backend's forward, against the
    reference."""
    T, B, I, H = shape
    v = VARIANTS[variant]
    tdtype = torch_dtype(dtype, triton_device)
    tensors, values, lengths = make_problem(rng, cell, T, B, I, H, tdtype, triton_device, v)
    args = full_args(cell, tensors, B, H, tdtype, triton_device)
    lens = None if lengths is None else torch.tensor(lengths, device=triton_device)

    def grad_of(*shape_):
        return torch.tensor(rng.standard_normal(shape_), dtype=tdtype, device=triton_device)

    dy, dh_n, dc_n = grad_of(T, B, H), grad_of(B, H), grad_of(B, H)
    ref_args = [to_f64(a) for a in args]
    ref_opts = dict(lengths=lengths, reverse=v["reverse"])
    if cell == "lstm":
        y, h_n, c_n, ws = backend.lstm_fwd(*args, lens, v["reverse"], True)
        got = backend.lstm_bwd(dy, dh_n, dc_n, *args, lens, v["reverse"], y, ws)
        want = reference.lstm_bwd(to_f64(dy), to_f64(dh_n), to_f64(dc_n), *ref_args,
                                  **ref_opts)
    elif cell == "gru":
        y, h_n, ws = backend.gru_fwd(*args, lens, v["reverse"], True)
        got = backend.gru_bwd(dy, dh_n, *args, lens, v["reverse"], y, ws)
        want = reference.gru_bwd(to_f64(dy), to_f64(dh_n), *ref_args, **ref_opts)
    else:
        act = nonlinearity(cell)
        y, h_n, ws = backend.rnn_fwd(*args, lens, v["reverse"], act, True)
        got = backend.rnn_bwd(dy, dh_n, *args, lens, v["reverse"], act, y, ws)
        want = reference.rnn_bwd(to_f64(dy), to_f64(dh_n), *ref_args, nonlinearity=act,
                                 **ref_opts)
    assert ws.shape == (T, B, WS_SLOTS[cell] * H) and ws.dtype == torch.float32
    for g, a in zip(got, args):
        assert g.dtype == tdtype and g.shape == a.shape
    check_grads(cell, got, want, dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_autograd_through_public_api(cell, path, rng, triton_device):
    """seqcore.lstm/gru with requires_grad: the forward keeps its workspace and torch's backward
    runs the Triton backward kernels; h_n is used, c_n is not (its gradient arrives as None)."""
    T, B, I, H = 4, 3, 5, 17
    v = VARIANTS["reverse_lengths"]
    tensors, values, lengths = make_problem(rng, cell, T, B, I, H, torch.float32, triton_device, v)
    tensors["h0"] = torch.tensor(rng.standard_normal((B, H)), dtype=torch.float32,
                                 device=triton_device)
    values["h0"] = to_f64(tensors["h0"])
    for t in tensors.values():
        t.requires_grad_(True)
    out = flat_outputs(cell, run_sequence(cell, tensors, lengths, v, "triton"))
    dy = torch.tensor(rng.standard_normal((T, B, H)), dtype=torch.float32, device=triton_device)
    dh_n = torch.tensor(rng.standard_normal((B, H)), dtype=torch.float32, device=triton_device)
    loss = (out[0] * dy).sum() + (out[1] * dh_n).sum()
    names = list(tensors)
    got = torch.autograd.grad(loss, [tensors[n] for n in names])
    opts = dict(lengths=lengths, reverse=True)
    if cell == "lstm":
        want = reference.lstm_bwd(to_f64(dy), to_f64(dh_n), None, values["x"], values["w_ih"],
                                  values["w_hh"], values["b_ih"], values["b_hh"], values["h0"],
                                  None, **opts)
    else:
        want = reference.gru_bwd(to_f64(dy), to_f64(dh_n), values["x"], values["w_ih"],
                                 values["w_hh"], values["b_ih"], values["b_hh"], values["h0"],
                                 **opts)
    for name, g in zip(names, got):
        w = want[name]
        assert_close(g, w, "float32", grad=True, name="d" + name,
                     scale=max(1.0, float(np.abs(w).max())))


# ----------------------------------------------------------------------------------------------
# Elman RNN (tanh / relu): the same kernels with CELL = "rnn_tanh" / "rnn_relu"


def nonlinearity(cell):
    return cell[len("rnn_"):]


def check_elman_forward(cell, variant, shape, dtype, rng, triton_device):
    """backend.rnn_fwd against reference.rnn; the workspace is h_t in float32 (zero past each
    length, as y)."""
    T, B, I, H = shape
    v = VARIANTS[variant]
    tdtype = torch_dtype(dtype, triton_device)
    tensors, _, lengths = make_problem(rng, cell, T, B, I, H, tdtype, triton_device, v)
    args = full_args(cell, tensors, B, H, tdtype, triton_device)
    lens = None if lengths is None else torch.tensor(lengths, device=triton_device)
    need_ws = variant != "bare"  # "bare" takes the inference path: no workspace
    y, h_n, ws = backend.rnn_fwd(*args, lens, v["reverse"], nonlinearity(cell), need_ws)
    want_y, want_h = reference.rnn(*[to_f64(a) for a in args], nonlinearity=nonlinearity(cell),
                                   lengths=lengths, reverse=v["reverse"])
    for name, g, w in (("y", y, want_y), ("h_n", h_n, want_h)):
        assert g.dtype == tdtype and g.device.type == triton_device
        assert_close(g, w, dtype, name=name)
    if need_ws:
        assert ws.shape == (T, B, H) and ws.dtype == torch.float32
        assert_close(ws, want_y, dtype, name="ws")
    else:
        assert ws is None
    if lengths is not None and T > 0:
        for b, n in enumerate(lengths):  # exactly zero past each length, not merely close
            assert torch.all(y[n:, b] == 0)


@pytest.mark.parametrize("cell", ELMAN)
@pytest.mark.parametrize("variant", ELMAN_VARIANTS)
@pytest.mark.parametrize("shape", SEQ_SHAPES, ids=lambda s: "T%d-B%d-I%d-H%d" % s)
def test_elman_forward(cell, variant, shape, path, rng, triton_device):
    T, B, I, H = shape
    expect_persistent(path, cell, B, H, triton_device)
    check_elman_forward(cell, variant, shape, "float32", rng, triton_device)


@pytest.mark.parametrize("cell", ELMAN)
@pytest.mark.parametrize("variant", BWD_VARIANTS)
@pytest.mark.parametrize("shape", BWD_SHAPES, ids=lambda s: "T%d-B%d-I%d-H%d" % s)
def test_elman_backward(cell, variant, shape, path, rng, triton_device):
    check_backward(cell, variant, shape, "float32", rng, triton_device)


@pytest.mark.parametrize("cell", ELMAN)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_elman_half_precision(cell, dtype, path, rng, triton_device):
    """Half-precision inputs: float32 state and workspace, outputs and gradients in the input
    dtype."""
    check_elman_forward(cell, "reverse_lengths", (4, 3, 3, 17), dtype, rng, triton_device)
    check_backward(cell, "lengths", (4, 3, 3, 17), dtype, rng, triton_device)


@pytest.mark.parametrize("cell", ELMAN)
def test_elman_multi_tile_grid(cell, path, rng, triton_device):
    """Several programs per step in both grid dimensions of the per-step kernels (the float32
    persistent path falls back here: 17 rows pad to 32, past MAX_BATCH_BLOCK_FP32)."""
    T, B, I, H = MULTI_TILE_SHAPE
    check_elman_forward(cell, "reverse_lengths", MULTI_TILE_SHAPE, "float32", rng, triton_device)
    check_backward(cell, "reverse_lengths", MULTI_TILE_SHAPE, "float32", rng, triton_device)


def test_elman_falls_back_when_w_hh_too_large(rng, triton_device, monkeypatch):
    """A w_hh slice that does not fit on chip takes the per-step kernel, still correct."""
    from seqcore.kernels import rnn_persistent

    monkeypatch.setattr(backend, "FORWARD_PATH", "persistent")
    monkeypatch.setattr(rnn_persistent, "MAX_WEIGHT_BYTES", 1024)  # forces the fallback at H=17
    shape = (3, 2, 3, 17)
    assert not rnn_persistent.runs_persistent(2, 17, 1, torch.device(triton_device))
    check_elman_forward("rnn_tanh", "lengths", shape, "float32", rng, triton_device)


# ----------------------------------------------------------------------------------------------
# LSTM with a projection (torch's proj_size): w_hr (P, H), 0 < P < H; h, y, w_hh's columns P wide

PROJ_PATHS = ["auto", "step"]  # "auto" falls back to the per-step kernels with a projection
# (T, B, I, H, P): T = 1 and B = 1 and P = 1; H not a power of two; an empty sequence; several
# programs per step in every grid dimension (B > 16 rows, H > 64 cell units, P > 64 h units)
PROJ_SHAPES = [(1, 1, 1, 2, 1), (4, 3, 5, 17, 6), (3, 1, 4, 40, 1), (0, 3, 5, 17, 6),
               (3, 17, 3, 70, 65)]
PROJ_VARIANTS = ["bare", "full", "lengths", "reverse_lengths"]


@pytest.fixture(params=PROJ_PATHS)
def proj_path(request, monkeypatch):
    monkeypatch.setattr(backend, "FORWARD_PATH", request.param)
    return request.param


def make_proj_problem(rng, T, B, I, H, P, dtype, device, v):
    """The backend's positional LSTM tensors with a projection (zero biases and states when
    the variant has none), w_hr, lengths (NumPy, with a 0 and a T where B allows) or None."""
    bound = 1.0 / np.sqrt(H)
    arrays = dict(x=rng.standard_normal((T, B, I)),
                  w_ih=rng.uniform(-bound, bound, (4 * H, I)),
                  w_hh=rng.uniform(-bound, bound, (4 * H, P)),
                  b_ih=rng.uniform(-bound, bound, 4 * H) * v["biases"],
                  b_hh=rng.uniform(-bound, bound, 4 * H) * v["biases"],
                  h0=rng.standard_normal((B, P)) * v["states"],
                  c0=rng.standard_normal((B, H)) * v["states"])
    args = [torch.tensor(a, dtype=dtype, device=device) for a in arrays.values()]
    w_hr = torch.tensor(rng.uniform(-bound, bound, (P, H)), dtype=dtype, device=device)
    lengths = make_lengths(rng, T, B) if v["lengths"] else None
    return args, w_hr, lengths


@pytest.mark.parametrize("variant", PROJ_VARIANTS)
@pytest.mark.parametrize("shape", PROJ_SHAPES, ids=lambda s: "T%d-B%d-I%d-H%d-P%d" % s)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_projection_forward(variant, shape, dtype, proj_path, rng, triton_device):
    """backend.lstm_fwd with w_hr against reference.lstm: y and h_n P wide, c_n H wide, the
    workspace (T, B, 5H) as without a projection; never the persistent kernel."""
    from seqcore.kernels.rnn_persistent import runs_persistent

    T, B, I, H, P = shape
    v = VARIANTS[variant]
    tdtype = torch_dtype(dtype, triton_device)
    assert not runs_persistent(B, H, 4, torch.device(triton_device), has_proj=True)
    args, w_hr, lengths = make_proj_problem(rng, T, B, I, H, P, tdtype, triton_device, v)
    lens = None if lengths is None else torch.tensor(lengths, device=triton_device)
    need_ws = variant != "bare"
    y, h_n, c_n, ws = backend.lstm_fwd(*args, lens, v["reverse"], need_ws, w_hr=w_hr)
    want_y, (want_h, want_c) = reference.lstm(*[to_f64(a) for a in args], w_hr=to_f64(w_hr),
                                              lengths=lengths, reverse=v["reverse"])
    for name, g, w in (("y", y, want_y), ("h_n", h_n, want_h), ("c_n", c_n, want_c)):
        assert g.dtype == tdtype and g.device.type == triton_device
        assert_close(g, w, dtype, name=name)
    if need_ws:
        assert ws.shape == (T, B, 5 * H) and ws.dtype == torch.float32
        # what the backward rebuilds from it: y_t = (o * tanh(c_t)) @ w_hr^T (zero past lengths)
        w = to_f64(ws)
        u = w[..., 3 * H:4 * H] * np.tanh(w[..., 4 * H:])
        assert_close(u @ to_f64(w_hr).T, want_y, dtype, name="y from ws")
    else:
        assert ws is None
    if lengths is not None and T > 0:
        for b, n in enumerate(lengths):  # exactly zero past each length, not merely close
            assert torch.all(y[n:, b] == 0)


def check_proj_backward(variant, shape, dtype, rng, triton_device):
    """backend.lstm_bwd with w_hr (after the backend's forward) against reference.lstm_bwd:
    eight gradients, dw_hr last."""
    T, B, I, H, P = shape
    v = VARIANTS[variant]
    tdtype = torch_dtype(dtype, triton_device)
    args, w_hr, lengths = make_proj_problem(rng, T, B, I, H, P, tdtype, triton_device, v)
    lens = None if lengths is None else torch.tensor(lengths, device=triton_device)

    def grad_of(*shape_):
        return torch.tensor(rng.standard_normal(shape_), dtype=tdtype, device=triton_device)

    dy, dh_n, dc_n = grad_of(T, B, P), grad_of(B, P), grad_of(B, H)
    y, h_n, c_n, ws = backend.lstm_fwd(*args, lens, v["reverse"], True, w_hr=w_hr)
    got = backend.lstm_bwd(dy, dh_n, dc_n, *args, lens, v["reverse"], y, ws, w_hr=w_hr)
    want = reference.lstm_bwd(to_f64(dy), to_f64(dh_n), to_f64(dc_n),
                              *[to_f64(a) for a in args], w_hr=to_f64(w_hr), lengths=lengths,
                              reverse=v["reverse"])
    assert len(got) == 8
    names = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0", "w_hr"]
    for name, g, a in zip(names, got, args + [w_hr]):
        assert g.dtype == tdtype and g.shape == a.shape, name
        w = want[name]
        scale = max(1.0, float(np.abs(w).max())) if w.size else 1.0
        assert_close(g, w, dtype, grad=True, name="d" + name, scale=scale)


@pytest.mark.parametrize("variant", BWD_VARIANTS)
@pytest.mark.parametrize("shape", PROJ_SHAPES, ids=lambda s: "T%d-B%d-I%d-H%d-P%d" % s)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_projection_backward(variant, shape, dtype, proj_path, rng, triton_device):
    check_proj_backward(variant, shape, dtype, rng, triton_device)


def test_lstm_projection_without_w_hr_unchanged(rng, triton_device):
    """The old signatures (no w_hr) still give seven gradients and an H-wide y."""
    T, B, I, H = 3, 2, 3, 17
    tensors, _, _ = make_problem(rng, "lstm", T, B, I, H, torch.float32, triton_device,
                                 VARIANTS["full"])
    args = full_args("lstm", tensors, B, H, torch.float32, triton_device)
    y, h_n, c_n, ws = backend.lstm_fwd(*args, None, False, True)
    assert y.shape == (T, B, H) and h_n.shape == c_n.shape == (B, H)
    zeros = torch.zeros_like
    got = backend.lstm_bwd(zeros(y), zeros(h_n), zeros(c_n), *args, None, False, y, ws)
    assert len(got) == 7


def test_lstm_projection_autograd_through_public_api(proj_path, rng, triton_device):
    """seqcore.lstm(w_hr=...) with requires_grad on backend="triton": the forward keeps its
    workspace and autograd runs the projection backward (every input's gradient, w_hr's too)."""
    T, B, I, H, P = 4, 3, 5, 17, 6
    v = VARIANTS["reverse_lengths"]
    args, w_hr, lengths = make_proj_problem(rng, T, B, I, H, P, torch.float32, triton_device,
                                            dict(v, states=True))
    names = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0", "w_hr"]
    inputs = [t.clone().requires_grad_(True) for t in args + [w_hr]]
    kw = dict(zip(names, inputs))
    y, (h_n, c_n) = seqcore.lstm(**kw, lengths=lengths, reverse=True, backend="triton")
    assert y.shape == (T, B, P) and h_n.shape == (B, P) and c_n.shape == (B, H)
    dy = torch.tensor(rng.standard_normal((T, B, P)), dtype=torch.float32, device=triton_device)
    dh_n = torch.tensor(rng.standard_normal((B, P)), dtype=torch.float32, device=triton_device)
    got = torch.autograd.grad((y * dy).sum() + (h_n * dh_n).sum(), inputs)
    values = [to_f64(t) for t in args]
    want = reference.lstm_bwd(to_f64(dy), to_f64(dh_n), None, *values, w_hr=to_f64(w_hr),
                              lengths=lengths, reverse=True)
    for name, g in zip(names, got):
        w = want[name]
        assert_close(g, w, "float32", grad=True, name="d" + name,
                     scale=max(1.0, float(np.abs(w).max())))


# The compiled path without a GPU: the interpreter runs kernels as Python and cannot see errors
# that only Triton's compiler raises, so compile the recurrent kernels for an H100 (sm_90).
_COMPILE_FOR_SM90 = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from seqcore.kernels import rnn_bwd, rnn_cell, rnn_persistent
from seqcore.kernels.rnn_cells import CELLS

POINTER_TYPES = {"len_ptr": "*i64", "counter_ptr": "*i32"}


def compile_one(fn, consts):
    sig = {name: "constexpr" if name in consts else
           POINTER_TYPES.get(name, "*fp32") if name.endswith("_ptr") else "i32"
           for name in fn.arg_names}
    kernel = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=4, num_stages=1))
    assert kernel.asm.get("cubin"), "no cubin"


for lengths, reverse in ((True, False), (False, True)):
    for cell in CELLS:  # one kernel per family, specialized per cell by its CELL constexpr
        flags = dict(CELL=cell, HAS_LENGTHS=lengths, REVERSE=reverse, PRECISION="ieee",
                     BLOCK_B=16, BLOCK_H=32)
        # the LSTM also with its projection: HAS_PROJ, the backward's PHASE 1 and 2
        projs = (False, True) if cell == "lstm" else (False,)
        for proj in projs:
            compile_one(rnn_cell.rnn_step_kernel,
                        dict(flags, NEED_WS=True, HAS_PROJ=proj, BLOCK_K=32))
        compile_one(rnn_persistent.rnn_persistent_kernel,
                    dict({k: v for k, v in flags.items() if k != "BLOCK_H"}, NEED_WS=True,
                         USE_SEM=True, UNITS=8, CHUNK_K=32, NCHUNK=2))
        for phase in ((0, 1, 2) if cell == "lstm" else (0,)):
            for final in ((False, True) if phase < 2 else (False,)):
                compile_one(rnn_bwd.rnn_bwd_step_kernel,
                            dict(flags, FINAL=final, PHASE=phase, BLOCK_K=32))
    compile_one(rnn_cell.rnn_proj_kernel,
                dict(HAS_LENGTHS=lengths, REVERSE=reverse, PRECISION="ieee", BLOCK_B=16,
                     BLOCK_P=32, BLOCK_K=32))
print("compiled")
'''


def test_kernels_compile_for_sm90(triton_device):
    """Cell, projection, persistent and backward-step kernels go through Triton's compiler to
    sm_90 cubin. On a GPU the tests above compile and run them for real."""
    import os
    import subprocess
    import sys

    if triton_device == "cuda":
        pytest.skip("on a GPU the tests above compile and run the kernels for real")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], env=env, cwd=os.getcwd(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]


def test_barrier_kernel_counts_every_arrival(triton_device):
    """bench/gpu_suite.py's barrier latency kernel: T barriers of one program (the interpreter
    runs one at a time) leave the counter at T; on a GPU, one program per SM leaves it at
    nprog * T (programs that were not co-resident would hang instead)."""
    import torch

    from seqcore.kernels import rnn_persistent as rp

    nprog = rp.max_programs(torch.device(triton_device))
    for steps in (0, 1, 7):
        counter = torch.zeros((1,), dtype=torch.int32, device=triton_device)
        rp.barrier_kernel[(nprog,)](counter, steps)
        assert int(counter.item()) == nprog * steps
