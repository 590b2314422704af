"""Shared helpers for the pytest-benchmark suites (bench_attention.py, bench_recurrent.py).

Every benchmark records, in benchmark.extra_info, what bench/report.py needs to compare
implementations: op, impl, shape, dtype, device and the FLOPs of one call. benchmark.group is
"<op> <shape>", so pytest-benchmark's own table puts the implementations of one problem side by
side.

A seqcore backend that does not work here yet (being written, extension not built) is probed
with a tiny call and its benchmarks skip with the reason; an implementation whose output at the
benchmark shape disagrees with torch fails instead of reporting a number for a wrong kernel.
"""
import os
import functools
import hashlib
import time

import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
CPU_THREADS = 2  # this machine: 2-core EPYC; fixed so runs compare

# Seconds of timed calls per benchmark (rounds = budget / one call, clamped), to keep the
# whole `make bench` run under 10 minutes on 2 cores.
BUDGET_S = 0.5 if HAS_CUDA else 1.2
MIN_ROUNDS, MAX_ROUNDS = 5, 200 if HAS_CUDA else 30


# ----------------------------------------------------------------------------------------------
# FLOP counts (the convention of ANCHORS.md)

def attention_flops(B, Hq, Sq, Sk, D, causal, passes="fwd"):
    """4*B*H*Sq*Sk*D (two matmuls), halved when causal. The backward alone counts as 2.5x the
    forward (five matmuls, recomputing P), so "fwd+bwd" is 3.5x."""
    fwd = 4 * B * Hq * Sq * Sk * D / (2 if causal else 1)
    return fwd * {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[passes]


def rnn_flops(cell, T, B, I, H, passes="fwd"):
    """2*T*B*(I+H)*G*H for the gate matmuls (G = 4 for LSTM, 3 for GRU). The backward alone
    has two matmuls per forward one (dx/dh and dW), so "fwd+bwd" is 3x."""
    gates = {"lstm": 4, "gru": 3}[cell]
    fwd = 2 * T * B * (I + H) * gates * H
    return fwd * {"fwd": 1.0, "bwd": 2.0, "fwd+bwd": 3.0}[passes]


# ----------------------------------------------------------------------------------------------
# Inputs


def generator(key):
    """A torch Generator seeded from `key`, so every impl of one group gets the same inputs."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
    return torch.Generator().manual_seed(seed)


def randn(gen, *shape, dtype=torch.float32, scale=1.0, requires_grad=False):
    x = (torch.randn(*shape, generator=gen) * scale).to(device=DEVICE, dtype=dtype)
    return x.requires_grad_(requires_grad)


def sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------
# Which seqcore backends work here


@functools.lru_cache(maxsize=None)
def seqcore_problem(family, backend, grad):
    """'' when seqcore `family` ("attention" | "recurrent") runs on `backend` here (with
    gradients if `grad`), else why not; decided by a tiny call, not by a list."""
    try:
        import seqcore
    except Exception as e:  # noqa: BLE001 - any import failure is a reason to skip
        return f"import seqcore failed: {type(e).__name__}: {e}"
    if backend not in seqcore.available_backends():
        return seqcore.backend_status().get(backend, f"unknown backend {backend!r}")
    try:
        gen = generator("probe")
        if family == "attention":
            q = randn(gen, 1, 2, 5, 8, requires_grad=grad)
            out = seqcore.attention(q, q, q, causal=True, backend=backend)
        else:
            x, h = randn(gen, 3, 2, 4, requires_grad=grad), randn(gen, 2, 5)
            w_ih, w_hh = randn(gen, 20, 4, requires_grad=grad), randn(gen, 20, 5, requires_grad=grad)
            out, _ = seqcore.lstm(x, w_ih, w_hh, h0=h, c0=h, backend=backend)
        if grad:
            out.sum().backward()
        sync()
    except Exception as e:  # noqa: BLE001 - the backend is not ready; say how it failed
        return f"tiny call failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return ""


def require_seqcore(family, backend, grad):
    import pytest

    why = seqcore_problem(family, backend, grad)
    if why:
        pytest.skip(f"seqcore backend {backend!r} ({family}{', backward' if grad else ''}) "
                    f"not available: {why}")


# ----------------------------------------------------------------------------------------------
# Checking and timing


def max_rel_error(actual, expected):
    """max |a - e| / max(1, max |e|) over a list of tensors (None entries skipped)."""
    worst = 0.0
    for a, e in zip(actual, expected):
        if a is None or e is None:
            continue
        a, e = a.detach().double().cpu(), e.detach().double().cpu()
        worst = max(worst, float((a - e).abs().max()) / max(1.0, float(e.abs().max())))
    return worst


def check_against(impl, actual, expected, tol):
    """Fail (not skip) when `impl` gives wrong results: its time would mean nothing."""
    import pytest

    err = max_rel_error(actual, expected)
    if not err <= tol:  # also catches NaN
        pytest.fail(f"{impl}: result differs from torch by {err:.3g} (relative to max |x|), "
                    f"more than {tol:g}; not benchmarking a wrong kernel")
    return err


def run(benchmark, fn, *, op, impl, shape, dtype, flops, err=None, max_rounds=None):
    """Time fn() (synchronized) under pytest-benchmark with a round count fitted to BUDGET_S
    (at most max_rounds, default MAX_ROUNDS; small calls take thousands for a stable median)."""
    def call():
        fn()
        sync()

    call()  # warm-up: compilation, caches, allocator
    start = time.perf_counter()
    call()
    one = time.perf_counter() - start
    rounds = int(min(max_rounds or MAX_ROUNDS, max(MIN_ROUNDS, BUDGET_S / max(one, 1e-6))))
    benchmark.group = f"{op} {shape}"
    benchmark.extra_info.update(op=op, impl=impl, shape=shape, dtype=dtype, flops=float(flops),
                                device=device_name(), max_rel_err_vs_torch=err)
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)


@functools.lru_cache(maxsize=None)
def device_name():
    """The GPU, or the CPU with its thread count and the ISA levels both sides run at."""
    if HAS_CUDA:
        return torch.cuda.get_device_name()
    import platform

    cpu = platform.processor() or "cpu"
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if not line.strip():  # the first processor is enough
                    break
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    if "cpu family" in fields:  # VMs often say only "AMD EPYC": family/model name the core
        cpu += f" (family {fields['cpu family']} model {fields.get('model', '?')})"
    mkl = os.environ.get("MKL_ENABLE_INSTRUCTIONS")  # (MKL ignores torch's capability)
    return (f"{cpu} ({torch.get_num_threads()} threads; seqcore C ISA {seqcore_isa()}, "
            f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
            f"{f', MKL {mkl}' if mkl else ''})")


def seqcore_isa():
    try:
        from seqcore import _c
    except Exception:  # noqa: BLE001
        return "unavailable"
    return _c.isa() or f"unavailable ({_c.status()})"
