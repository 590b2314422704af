"""LSTM/GRU sequence benchmarks: seqcore.lstm/gru vs torch.nn.LSTM/GRU on the same weights and inputs.

CPU (float32, 2 threads): seqcore backend "c" vs torch.nn (and the float64 NumPy reference at
B=1 forward only). CUDA (float32): seqcore backend "triton" vs torch.nn (cuDNN).
T=64, I=H=512, B in {1, 8, 64}, forward and forward+backward.

Run: make bench   (or: .venv/bin/python -m pytest -q bench/bench_recurrent.py --benchmark-only)
"""
import functools

import pytest
import torch

from _bench import (DEVICE, HAS_CUDA, check_against, generator, randn, require_seqcore, rnn_flops,
                    run)

DTYPE = torch.float32
# vs torch.nn in float32 on the CPU, relative to max |x|; cuDNN may use TF32 on the GPU
TOL = 1e-2 if HAS_CUDA else 1e-3
T, I, H = 64, 512, 512

FWD_CASES = [(cell, B) for cell in ("lstm", "gru") for B in (1, 8, 64)]
FWD_BWD_CASES = [(cell, B) for cell in ("lstm", "gru") for B in (1, 8, 64)]

IMPLS = ["seqcore-triton", "torch"] if HAS_CUDA else ["seqcore-c", "torch", "seqcore-numpy"]
NUMPY_MAX_B = 1


def shape_name(cell, B):
    return f"{cell.upper()} T{T} B{B} I{I} H{H}"


def params(cases, numpy_ok):
    return [pytest.param(cell, B, impl, id=f"{cell}-B{B}-{impl}")
            for cell, B in cases for impl in IMPLS
            if not (impl == "seqcore-numpy" and not (numpy_ok and B <= NUMPY_MAX_B))]


WEIGHT_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def inputs(cell, B, grad, device=DEVICE):
    """x, h0, c0 (None for GRU), a torch.nn.LSTM/GRU and dy: the same values for every impl.

    seqcore runs on the module's own parameters [w_ih, w_hh, b_ih, b_hh], so both impls read
    the same weights and differentiate with respect to the same leaves."""
    gen = generator(shape_name(cell, B))
    G = {"lstm": 4, "gru": 3}[cell]
    bound = H ** -0.5  # torch.nn's init range, so gates are neither saturated nor trivial
    x = randn(gen, T, B, I).to(device).requires_grad_(grad)
    h0 = randn(gen, B, H).to(device)
    c0 = randn(gen, B, H).to(device) if cell == "lstm" else None
    module = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H).to(device)
    with torch.no_grad():
        for name, shape in zip(WEIGHT_NAMES, ((G * H, I), (G * H, H), (G * H,), (G * H,))):
            getattr(module, name).copy_(randn(gen, *shape, scale=bound))
    dy = randn(gen, T, B, H).to(device)
    return x, h0, c0, module, dy


def weights_of(module):
    return [getattr(module, name) for name in WEIGHT_NAMES]


# ----------------------------------------------------------------------------------------------
# The implementations: each returns run_rnn(x, h0, c0) -> y


def torch_rnn(cell, module):
    # torch.nn takes states as (num_layers, B, H)
    if cell == "lstm":
        return lambda x, h0, c0: module(x, (h0[None], c0[None]))[0]
    return lambda x, h0, c0: module(x, h0[None])[0]


def seqcore_rnn(cell, backend, weights):
    import seqcore

    if cell == "lstm":
        return lambda x, h0, c0: seqcore.lstm(x, *weights, h0, c0, backend=backend)[0]
    return lambda x, h0, c0: seqcore.gru(x, *weights, h0, backend=backend)[0]


def rnn_impl(impl, cell, module, grad):
    if impl.startswith("seqcore-"):
        backend = impl.split("-", 1)[1]
        require_seqcore("recurrent", backend, grad)
        return seqcore_rnn(cell, backend, weights_of(module))
    return torch_rnn(cell, module)


@functools.lru_cache(maxsize=None)
def expected(cell, B, grad):
    """torch.nn's y (and gradients) on the CPU in float32: what every impl must reproduce."""
    x, h0, c0, module, dy = inputs(cell, B, grad, device="cpu")
    if not grad:
        with torch.no_grad():
            return [torch_rnn(cell, module)(x, h0, c0)]
    return [t.detach() for t in forward_and_backward(torch_rnn(cell, module), x, h0, c0,
                                                     weights_of(module), dy)]


def forward_and_backward(run_rnn, x, h0, c0, weights, dy):
    y = run_rnn(x, h0, c0)
    return [y, *torch.autograd.grad(y, [x] + weights, dy)]


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell, B, impl", params(FWD_CASES, numpy_ok=True))
def test_rnn_fwd(benchmark, cell, B, impl):
    x, h0, c0, module, _ = inputs(cell, B, grad=False)
    run_rnn = rnn_impl(impl, cell, module, grad=False)
    with torch.no_grad():
        err = check_against(impl, [run_rnn(x, h0, c0)], expected(cell, B, False), TOL)
        run(benchmark, lambda: run_rnn(x, h0, c0), op=f"{cell} fwd", impl=impl,
            shape=shape_name(cell, B), dtype="float32", flops=rnn_flops(cell, T, B, I, H), err=err)


@pytest.mark.parametrize("cell, B, impl", params(FWD_BWD_CASES, numpy_ok=False))
def test_rnn_fwd_bwd(benchmark, cell, B, impl):
    x, h0, c0, module, dy = inputs(cell, B, grad=True)
    weights = weights_of(module)
    run_rnn = rnn_impl(impl, cell, module, grad=True)
    err = check_against(impl, forward_and_backward(run_rnn, x, h0, c0, weights, dy),
                        expected(cell, B, True), TOL)
    run(benchmark, lambda: forward_and_backward(run_rnn, x, h0, c0, weights, dy),
        op=f"{cell} fwd+bwd", impl=impl, shape=shape_name(cell, B), dtype="float32",
        flops=rnn_flops(cell, T, B, I, H, passes="fwd+bwd"), err=err)
