"""The persistent recurrent backward (kernels/rnn_persistent_bwd.py) against the per-step
backward (kernels/rnn_bwd.py) and the float64 reference, for every cell.

Under the Triton interpreter only the one-program configuration can run (programs run one after
another; the grid barrier with one program passes at once), so the kernel tests force it with
n_programs_max=1; on a GPU one test also runs the multi-program grid. Every kernel output buffer
is handed out NaN-filled (see `poisoned_buffers`), so an element a kernel forgets to write fails.
The blocking rule (which shapes run persistent on 132 SMs, the grid) is tested in pure Python.
"""
import numpy as np
import pytest

from conftest import GATES, HAS_CUDA, assert_close, to_f64

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from seqcore import _triton_recurrent as backend  # noqa: E402
from seqcore import reference  # noqa: E402
from seqcore.kernels import rnn_bwd, rnn_persistent_bwd  # noqa: E402
from seqcore.kernels.rnn_persistent_bwd import fits_on_chip, persistent_bwd_blocks  # noqa: E402

pytestmark = pytest.mark.triton

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
# (T, B, I, H, lengths, reverse): odd H, one and several batch rows, ragged lengths with a
# zero-length row (B = 5: lengths[0] = 0), one step
CASES = [
    (4, 5, 3, 40, True, True),
    (4, 5, 7, 24, True, False),
    (4, 1, 2, 40, False, True),
    (1, 1, 3, 24, False, False),
    (1, 5, 3, 24, True, True),
]


def case_id(c):
    T, B, I, H, lengths, reverse = c
    return f"T{T}-B{B}-I{I}-H{H}" + ("-lengths" if lengths else "") + ("-rev" if reverse else "")


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """Every buffer the recurrent kernels allocate starts as NaN."""
    from seqcore.kernels import rnn_cell

    def nan_buffer(shape, dtype, device):
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(rnn_cell, "new_buffer", nan_buffer)


@pytest.fixture
def launches(monkeypatch):
    """Counts the persistent backward's launches."""
    calls = []
    launch = rnn_persistent_bwd._launch

    def counting(*args, **kwargs):
        calls.append(args[:4])  # cell, T, B, H
        return launch(*args, **kwargs)

    monkeypatch.setattr(rnn_persistent_bwd, "_launch", counting)
    return calls


def make_lengths(rng, T, B):
    """Ragged lengths in [0, T]: row 0 empty and the last row full whenever B allows."""
    lengths = rng.integers(0, T + 1, size=B)
    if B >= 2:
        lengths[0], lengths[-1] = 0, T
    return lengths


def make_problem(rng, cell, T, B, I, H, dtype, device, with_lengths):
    """The backend's inputs (x, w_ih, w_hh, b_ih, b_hh, h0(, c0)) as tensors, the forward's
    y and workspace, and gradients of y and of the final states (all nonzero)."""
    G = GATES[cell]
    bound = 1.0 / np.sqrt(H)

    def tensor(a):
        return torch.tensor(a, dtype=dtype, device=device)

    n_states = 2 if cell == "lstm" else 1
    args = [tensor(rng.standard_normal((T, B, I))),
            tensor(rng.uniform(-bound, bound, (G * H, I))),
            tensor(rng.uniform(-bound, bound, (G * H, H))),
            tensor(rng.uniform(-bound, bound, G * H)), tensor(rng.uniform(-bound, bound, G * H))]
    states = tuple(tensor(rng.standard_normal((B, H))) for _ in range(n_states))
    lengths = make_lengths(rng, T, B) if with_lengths else None
    dy = tensor(rng.standard_normal((T, B, H)))
    dstates = tuple(tensor(rng.standard_normal((B, H))) for _ in range(n_states))
    return args, states, lengths, dy, dstates


def run_backward(fn, cell, args, states, lengths, reverse, dy, dstates, **kwargs):
    """fn (rnn_bwd.backward or backward_persistent) after the backend's forward."""
    x, w_ih, w_hh, b_ih, b_hh = args
    lens = None if lengths is None else torch.tensor(lengths, device=x.device)
    y, _, ws = backend._forward(cell, x, w_ih, w_hh, b_ih, b_hh, states, lens, reverse, True)
    return fn(cell, dy, dstates, x, w_ih, w_hh, states, lens, reverse, y, ws, **kwargs)


def reference_grads(cell, args, states, lengths, reverse, dy, dstates):
    """The float64 reference's gradients, in the backend's order."""
    f64 = [to_f64(a) for a in args]
    opts = dict(lengths=lengths, reverse=reverse)
    if cell == "lstm":
        want = reference.lstm_bwd(to_f64(dy), to_f64(dstates[0]), to_f64(dstates[1]), *f64,
                                  to_f64(states[0]), to_f64(states[1]), **opts)
    elif cell == "gru":
        want = reference.gru_bwd(to_f64(dy), to_f64(dstates[0]), *f64, to_f64(states[0]), **opts)
    else:
        want = reference.rnn_bwd(to_f64(dy), to_f64(dstates[0]), *f64, to_f64(states[0]),
                                 nonlinearity=cell[4:], **opts)
    names = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0"] + (["c0"] if cell == "lstm" else [])
    return names, [want[n] for n in names]


def check(names, got, want, dtype):
    for name, g, w in zip(names, got, want):
        w = to_f64(w)
        # weight and bias gradients sum over T*B steps: widen atol with their size
        scale = max(1.0, float(np.abs(w).max())) if w.size else 1.0
        assert_close(g, w, dtype, grad=True, name="d" + name, scale=scale)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"], indirect=True)
def test_one_program_matches_per_step_and_reference(cell, case, dtype, rng, triton_device,
                                                    launches):
    T, B, I, H, with_lengths, reverse = case
    tdtype = getattr(torch, dtype)
    assert fits_on_chip(B, H, GATES[cell], 1)
    problem = make_problem(rng, cell, T, B, I, H, tdtype, triton_device, with_lengths)
    got = run_backward(rnn_persistent_bwd.backward_persistent, cell, *problem[:2],
                       problem[2], reverse, *problem[3:], n_programs_max=1)
    assert launches == [(cell, T, B, H)]
    per_step = run_backward(rnn_bwd.backward, cell, *problem[:2], problem[2], reverse,
                            *problem[3:])
    names, want = reference_grads(cell, *problem[:3], reverse, *problem[3:])
    for g, s in zip(got, per_step):
        assert g.dtype == tdtype and g.shape == s.shape
    check(names, got, per_step, dtype)
    check(names, got, want, dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("case", [(4, 5, 3, 33, True, True), (3, 3, 2, 19, True, False)],
                         ids=case_id)
def test_half_precision_slice(cell, case, rng, triton_device, launches):
    """float16 w_hh: the slice stays on chip in float16 and dGh is rounded to it for the
    tensor-core dot (the half-precision blocking's wider K-chunks); odd H, a zero-length row,
    reverse and forward order, within the float16 gradient tolerances of the per-step path
    and the float64 reference."""
    T, B, I, H, with_lengths, reverse = case
    G = GATES[cell]
    blocks = persistent_bwd_blocks(B, H, G, 1, elem_bytes=2)
    assert blocks.chunk_k * blocks.n_chunks >= G * H and fits_on_chip(B, H, G, 1, 2)
    problem = make_problem(rng, cell, T, B, I, H, torch.float16, triton_device, with_lengths)
    got = run_backward(rnn_persistent_bwd.backward_persistent, cell, *problem[:2],
                       problem[2], reverse, *problem[3:], n_programs_max=1)
    assert launches == [(cell, T, B, H)]
    per_step = run_backward(rnn_bwd.backward, cell, *problem[:2], problem[2], reverse,
                            *problem[3:])
    names, want = reference_grads(cell, *problem[:3], reverse, *problem[3:])
    for g in got:
        assert g.dtype == torch.float16
    check(names, got, per_step, "float16")
    check(names, got, want, "float16")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_backend_dispatches_to_persistent(cell, rng, triton_device, launches, monkeypatch):
    """The backend's backward takes the persistent kernel when it fits, the per-step kernel
    with BACKWARD_PATH = "step" (same gradients)."""
    T, B, I, H = 3, 2, 3, 17
    args, states, lengths, dy, dstates = make_problem(rng, cell, T, B, I, H, torch.float32,
                                                      triton_device, True)
    lens = torch.tensor(lengths, device=triton_device)
    fwd = backend.lstm_fwd if cell == "lstm" else backend.gru_fwd
    bwd = backend.lstm_bwd if cell == "lstm" else backend.gru_bwd
    y, *_, ws = fwd(*args, *states, lens, True, True)
    got = bwd(dy, *dstates, *args, *states, lens, True, y, ws)
    assert len(launches) == 1
    monkeypatch.setattr(backend, "BACKWARD_PATH", "step")
    per_step = bwd(dy, *dstates, *args, *states, lens, True, y, ws)
    assert len(launches) == 1
    names, want = reference_grads(cell, args, states, lengths, True, dy, dstates)
    check(names, got, per_step, "float32")
    check(names, got, want, "float32")


def test_falls_back_when_w_hh_does_not_fit(rng, triton_device, launches, monkeypatch):
    """A w_hh slice over the limit takes the per-step kernel, still correct."""
    monkeypatch.setattr(rnn_persistent_bwd, "MAX_WEIGHT_BYTES", 1024)
    T, B, I, H = 3, 5, 3, 24
    assert not fits_on_chip(B, H, 3, 1)
    problem = make_problem(rng, "gru", T, B, I, H, torch.float32, triton_device, True)
    got = run_backward(rnn_persistent_bwd.backward_persistent, "gru", *problem[:2], problem[2],
                       True, *problem[3:], n_programs_max=1)
    assert launches == []
    names, want = reference_grads("gru", *problem[:3], True, *problem[3:])
    check(names, got, want, "float32")


def test_lstm_projection_falls_back(rng, triton_device, launches):
    """With w_hr (the LSTM's projection) the per-step kernel runs (two phases per step)."""
    T, B, I, H, P = 3, 2, 3, 8, 4
    dt = torch.float32

    def tensor(*shape):
        return torch.tensor(rng.uniform(-0.3, 0.3, shape), dtype=dt, device=triton_device)

    x, w_ih, w_hh, w_hr = tensor(T, B, I), tensor(4 * H, I), tensor(4 * H, P), tensor(P, H)
    b = tensor(4 * H)
    states = (tensor(B, P), tensor(B, H))
    y, _, ws = backend._forward("lstm", x, w_ih, w_hh, b, b, states, None, False, True,
                                w_hr=w_hr)
    dy, dstates = tensor(T, B, P), (tensor(B, P), tensor(B, H))
    got = rnn_persistent_bwd.backward_persistent("lstm", dy, dstates, x, w_ih, w_hh, states,
                                                 None, False, y, ws, w_hr=w_hr, n_programs_max=1)
    want = rnn_bwd.backward("lstm", dy, dstates, x, w_ih, w_hh, states, None, False, y, ws,
                            w_hr=w_hr)
    assert launches == []
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.skipif(not HAS_CUDA, reason="the multi-program grid needs co-resident programs "
                    "(a GPU); the interpreter runs programs one after another")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(6, 16, 32, 256), (5, 3, 8, 512), (4, 9, 16, 200)],
                         ids=lambda s: "T%d-B%d-I%d-H%d" % s)
def test_multi_program_grid_on_gpu(cell, shape, rng, launches):
    T, B, I, H = shape
    problem = make_problem(rng, cell, T, B, I, H, torch.float32, "cuda", True)
    got = run_backward(rnn_persistent_bwd.backward_persistent, cell, *problem[:2], problem[2],
                       True, *problem[3:])
    assert len(launches) == 1
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    assert persistent_bwd_blocks(B, H, GATES[cell], n_sm).n_programs > 1
    per_step = run_backward(rnn_bwd.backward, cell, *problem[:2], problem[2], True,
                            *problem[3:])
    names, want = reference_grads(cell, *problem[:3], True, *problem[3:])
    check(names, got, per_step, "float32")
    check(names, got, want, "float32")


@pytest.mark.skipif(not HAS_CUDA, reason="the multi-program grid needs co-resident programs "
                    "(a GPU); the interpreter runs programs one after another")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_grid_at_h1024_on_gpu(cell, dtype, rng, launches):
    """The half-precision slice at its largest tile: H = 1024, 64 programs of 16 units."""
    T, B, I, H = 4, 16, 16, 1024
    tdtype = getattr(torch, dtype)
    problem = make_problem(rng, cell, T, B, I, H, tdtype, "cuda", True)
    got = run_backward(rnn_persistent_bwd.backward_persistent, cell, *problem[:2], problem[2],
                       True, *problem[3:])
    assert len(launches) == 1
    per_step = run_backward(rnn_bwd.backward, cell, *problem[:2], problem[2], True,
                            *problem[3:])
    names, want = reference_grads(cell, *problem[:3], True, *problem[3:])
    check(names, got, per_step, dtype)
    check(names, got, want, dtype)


# ----------------------------------------------------------------------------------------------
# The blocking rule (pure Python)


@pytest.mark.parametrize("G", [4, 3, 1])
def test_h100_shapes_run_persistent(G):
    """On 132 SMs every cell runs persistent at B <= 16, H in {256, 512}, with 16 units per
    program (16 and 32 programs), the whole batch in one 16-row tile, every dtype."""
    for B in (1, 5, 8, 16):
        for H in (256, 512):
            blocks = persistent_bwd_blocks(B, H, G, 132)
            assert blocks.block_b == 16 and blocks.units == 16
            assert blocks.n_programs == H // 16 <= 132
            assert blocks.n_chunks * blocks.chunk_k >= G * H
            assert fits_on_chip(B, H, G, 132)


@pytest.mark.parametrize("G", [4, 3, 1])
def test_grid_never_exceeds_the_programs(G):
    """The grid stays within n_programs_max for any H (and covers all H units)."""
    for n_max in (1, 7, 132):
        for H in (1, 16, 17, 100, 256, 500, 1000, 1024, 2049, 4096):
            blocks = persistent_bwd_blocks(3, H, G, n_max)
            assert blocks.n_programs <= n_max
            assert blocks.n_programs * blocks.units >= H
            assert blocks.units >= 16 and blocks.chunk_k >= 16


def test_what_falls_back_on_h100():
    """More than 16 batch rows, and w_hh slices over the on-chip limit, take the per-step
    kernel; so does an empty batch."""
    for G in (4, 3, 1):
        assert not fits_on_chip(17, 256, G, 132) and not fits_on_chip(64, 512, G, 132)
        assert not fits_on_chip(0, 256, G, 132)
    assert not fits_on_chip(16, 1024, 4, 132)   # 4096 x 16 float32: 256 KB
    assert not fits_on_chip(16, 768, 3, 132)    # 2304 x 16 float32: over 128 KB
    assert fits_on_chip(16, 640, 3, 132) and fits_on_chip(16, 2048, 1, 132)
    assert not fits_on_chip(16, 4096, 1, 132)   # 32 units per program: 512 KB


def test_half_precision_limits_on_h100():
    """float16/bfloat16 w_hh (the slice in its own 2 bytes, 256-wide dGh chunks at 16 rows):
    on 132 SMs the LSTM runs persistent up to H = 1024, the GRU up to H = 1360, the Elman cell
    up to H = 2112, all at B <= 16 with 16 units per program; float32 keeps its limits."""
    assert persistent_bwd_blocks(16, 1024, 4, 132, 2) == (16, 16, 256, 16, 64, 8)
    assert persistent_bwd_blocks(16, 1024, 4, 132) == (16, 16, 128, 32, 64, 8)
    # the Elman cell's half-precision slice at 4 warps (8 spilled on sm_90), float32 at 8
    assert persistent_bwd_blocks(16, 512, 1, 132, 2) == (16, 16, 256, 2, 32, 4)
    assert persistent_bwd_blocks(16, 512, 1, 132, 4).num_warps == 8
    for B in (1, 8, 16):
        for H in (256, 512, 768, 1024):
            for G in (4, 3, 1):
                assert fits_on_chip(B, H, G, 132, 2)
        assert fits_on_chip(B, 1360, 3, 132, 2) and fits_on_chip(B, 2112, 1, 132, 2)
        assert not fits_on_chip(B, 1040, 4, 132, 2)   # 17 chunks of 256
        assert not fits_on_chip(B, 1376, 3, 132, 2)
        assert not fits_on_chip(B, 2128, 1, 132, 2)   # 32 units: a 266 KB slice
        # float32 as before: the LSTM to H = 512, the GRU to H = 672
        assert not fits_on_chip(B, 768, 4, 132, 4) and not fits_on_chip(B, 1024, 3, 132, 4)
        assert fits_on_chip(B, 512, 4, 132, 4) and fits_on_chip(B, 672, 3, 132, 4)
    for G in (4, 3, 1):  # B > 16 (BLOCK_B 32/64) spilled on sm_90: the per-step kernel
        assert not fits_on_chip(17, 256, G, 132, 2) and not fits_on_chip(64, 256, G, 132, 2)
        assert not fits_on_chip(0, 256, G, 132, 2)


def test_one_program_blocking():
    """n_programs_max = 1 (the interpreter): one program owns every unit; fits only while its
    w_hh (all of it) stays within the limits."""
    assert persistent_bwd_blocks(5, 40, 4, 1) == (16, 64, 128, 2, 1, 8)
    assert persistent_bwd_blocks(1, 24, 1, 1) == (16, 32, 32, 1, 1, 8)
    assert fits_on_chip(5, 40, 4, 1) and fits_on_chip(1, 24, 3, 1)
    assert not fits_on_chip(5, 65, 4, 1)   # 128 units: a 16 x 128 tile is over MAX_ACC
    assert not rnn_persistent_bwd.runs_persistent(1, 24, 4, torch.device("cpu"), has_proj=True)


def test_sm90_configs_cover_the_report_shapes():
    """sm90_configs: every (cell, dtype, B, H) of the report, twice (no flags; lengths and
    reverse), each a launch the launcher picks on 132 SMs."""
    configs = rnn_persistent_bwd.sm90_configs()
    # fp16, bf16: 3 cells x B in {1, 8, 16} x H in {256, 512, 768, 1024}; fp32: the LSTM and
    # GRU at H <= 512, the Elman cell at all four H; B 32 and 64 fall back (x 2 flag sets)
    assert len(configs) == (2 * 3 * 3 * 4 + 3 * (2 + 2 + 4)) * 2
    for c in configs:
        launch = c["launch"]
        assert launch["B"] <= 16
        assert launch["H"] <= 512 or c["dtype"] != "fp32" or launch["cell"] == "rnn_tanh"
    for c in configs:
        launch, kw = c["launch"], c["kwargs"]
        G = GATES[launch["cell"]]
        elem_bytes = 4 if c["dtype"] == "fp32" else 2
        blocks = persistent_bwd_blocks(launch["B"], launch["H"], G, launch["n_programs_max"],
                                       elem_bytes)
        assert (kw["BLOCK_B"], kw["UNITS"], kw["CHUNK_K"], kw["NCHUNK"]) == blocks[:4]
        assert c["dtype"] == launch["dtype"] and c["problem"].startswith(launch["cell"] + " bwd")
