"""Small calls: one RNN cell step (streaming inference, a frame at a time) and a tiny
attention, where the fixed cost of a call (Python, dispatch, fork-join) is most of the time.

CPU: seqcore.lstm_cell / gru_cell at B1 I=H=256 vs torch.nn.LSTMCell / GRUCell (the bar:
2x), from torch tensors and from NumPy arrays; the per-call cost of a tiny call, attention
(1, 2, 16, 8) and a B1 H16 cell, from NumPy and from CPU tensors (the bar: 25 us / 60 us),
against torch's own. All without gradients (inference). CUDA: not run (Triton launches are
measured by gpu_suite.py).

Run: make bench   (or: .venv/bin/python -m pytest -q bench/bench_small.py --benchmark-only)
"""
import pytest
import torch
import torch.nn.functional as F

from _bench import HAS_CUDA, generator, randn, require_seqcore, rnn_flops, run

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="CPU small-call benchmarks")

CELL_H = 256
TINY_H = 16


def _cell_inputs(cell, H, gen_key):
    gen = generator(gen_key)
    G = {"lstm": 4, "gru": 3}[cell]
    module = (torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell)(H, H)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(randn(gen, *p.shape, scale=H ** -0.5))
    x, h, c = randn(gen, 1, H), randn(gen, 1, H), randn(gen, 1, H)
    weights = [p.detach() for p in (module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh)]
    assert weights[0].shape == (G * H, H)
    return module, x, h, c, weights


def _seqcore_cell(cell, x, h, c, weights, kind):
    import seqcore

    if kind == "numpy":
        x, h, c = x.numpy(), h.numpy(), c.numpy()
        weights = [w.numpy() for w in weights]
    if cell == "lstm":
        return lambda: seqcore.lstm_cell(x, h, c, *weights)
    return lambda: seqcore.gru_cell(x, h, *weights)


def _torch_cell(cell, module, x, h, c):
    if cell == "lstm":
        return lambda: module(x, (h, c))
    return lambda: module(x, h)


CELL_IMPLS = ["seqcore-c", "seqcore-c-numpy", "torch"]


@pytest.mark.parametrize("H", [CELL_H, TINY_H], ids=lambda H: f"H{H}")
@pytest.mark.parametrize("impl", CELL_IMPLS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_step(benchmark, cell, impl, H):
    module, x, h, c, weights = _cell_inputs(cell, H, f"{cell} cell H{H}")
    if impl.startswith("seqcore-"):
        require_seqcore("recurrent", "c", grad=False)
        fn = _seqcore_cell(cell, x, h, c, weights, "numpy" if impl.endswith("numpy") else "tensor")
    else:
        fn = _torch_cell(cell, module, x, h, c)
    with torch.no_grad():
        run(benchmark, fn, op=f"{cell}_cell step", impl=impl, shape=f"B1 I{H} H{H}",
            dtype="float32", flops=rnn_flops(cell, 1, 1, H, H), max_rounds=3000)


TINY = (1, 2, 16, 8)


@pytest.mark.parametrize("impl", ["seqcore-c", "seqcore-c-numpy", "torch"])
def test_tiny_attention(benchmark, impl):
    q = randn(generator("tiny attention"), *TINY)
    if impl.startswith("seqcore-"):
        require_seqcore("attention", "c", grad=False)
        import seqcore

        qq = q.numpy() if impl.endswith("numpy") else q
        fn = lambda: seqcore.attention(qq, qq, qq)  # noqa: E731
    else:
        fn = lambda: F.scaled_dot_product_attention(q, q, q)  # noqa: E731
    B, H, S, D = TINY
    with torch.no_grad():
        run(benchmark, fn, op="attention fwd (tiny)", impl=impl, shape="B1 H2 S16 D8",
            dtype="float32", flops=4 * B * H * S * S * D, max_rounds=3000)
