#!/usr/bin/env python
"""sm_90 resource report, no GPU needed: every Triton kernel of seqcore.kernels compiled for an
H100/H200 (sm_90a) at every config its autotuner or launcher can pick, with ptxas.

    python bench/sm90_report.py                  # the full report: ~1100 compiles, hours on 2
                                                 # cores (float32 "ieee" attention configs take
                                                 # 30-120 s each), minutes on 16
    python bench/sm90_report.py --quick          # the subset tests/test_sm90_report.py runs
                                                 # (~40 compiles, 1-2 min on 2 cores, ~15 s cached)
    python bench/sm90_report.py --list           # what would be compiled, no compiling
    python bench/sm90_report.py --budget 900     # start no compile after 900 s (report the rest)
    python bench/sm90_report.py --cached-only    # compile nothing: report what is cached

How the configs are found: the real launchers (kernels/*.py) are called on CPU tensors of
representative shapes with Triton's launch replaced by a recorder. A plain @triton.jit launch
records its arguments; an autotuned one records one launch per config its prune function keeps
(Autotuner.prune_configs, i.e. exactly the list it would time). Each recorded launch is then
specialized as Triton's runtime would (JITFunction's binder: 16-byte aligned pointers, ints
equal to 1 made constexpr, multiples of 16 marked divisible) and compiled with
triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32)). The enumeration runs three
times, in fresh processes, because the config lists are built at import: with
SEQCORE_AUTOTUNE=1 (the default: the timed lists), with SEQCORE_AUTOTUNE=0 (the default tiles
the tests and the untimed mode use) and, for float32 inputs, with SEQCORE_TF32=1. Launchers
that size things from the device get an H200's 132 SMs (the split counts of the decode and KV
cache kernels, the persistent RNN grid). The per-step RNN kernels are compiled for a generic
`step` (Triton would also specialize step 1 and multiples of 16; the code is the same).

Per compiled kernel: registers per thread, spill stores/loads and stack frame (ptxas -v, the
one Triton bundles), shared memory (Triton's metadata.shared, the dynamic allocation checked
against the device limit at launch), warps/stages, how the tl.dots lowered (wgmma = Hopper
warpgroup MMA, `wgmma.mma_async` in the PTX; mma = Ampere-style mma.sync; fma = no tensor
cores, e.g. float32 "ieee" dots) and the CTAs per SM those resources allow. A config FAILS when
it spills (any spill store) or needs more than 227 KB of shared memory per block.

Compile order (priority()): bfloat16 and float32 at the SEQCORE_AUTOTUNE=0 configs, the
autotuned bfloat16 lists, float16, the autotuned float32 lists, TF32; round-robin over the
kernels within each tier, so a --budget cut keeps some of every kernel.

Output: a markdown table and a JSON file in --out (default bench/out): sm90-report.md/.json
(--name changes the stem; the markdown goes to stdout too). Exit status 1 if a pickable config
fails (or a compile errors), 0 otherwise, 2 without ptxas. Triton caches compiled kernels under
~/.triton/cache (or TRITON_CACHE_DIR) and this script keeps their ptxas -v logs next to them
(seqcore-sm90-ptxas/), so a rerun compiles only what changed.
"""
import argparse
import concurrent.futures
import contextlib
import datetime
import hashlib
import io
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMEM_LIMIT = 227 * 1024          # max dynamic shared memory per block on an H100/H200
SMEM_PER_SM = 228 * 1024         # shared memory per SM (1 KB of it reserved per block)
REGS_PER_SM = 64 * 1024          # 32-bit registers per SM
MAX_WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32
H200_SMS = 132                   # H100 SXM and H200 alike
CAPABILITY = 90
MODES = {  # mode -> environment of its enumeration process
    "no-autotune": {"SEQCORE_AUTOTUNE": "0"},
    "autotune": {"SEQCORE_AUTOTUNE": "1"},
    "tf32": {"SEQCORE_AUTOTUNE": "1", "SEQCORE_TF32": "1"},
}
SECTIONS = ("attention", "decode", "kvcache", "rnn")


# ----------------------------------------------------------------------------------------------
# Environment


def clean_env(extra=None):
    """The environment of a compile/enumerate process: never the interpreter (tests/conftest.py
    turns it on without a GPU), seqcore importable from this checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "SEQCORE_AUTOTUNE", "SEQCORE_TF32")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def ptxas_path():
    """(path, version line) of the ptxas Triton uses for sm_90, or (None, reason)."""
    try:
        from triton import knobs
        path = knobs.nvidia.ptxas.path
    except Exception as e:  # noqa: BLE001 - any failure means: no ptxas
        return None, f"triton's ptxas not found: {e!r}"
    if not path or not os.path.exists(path):
        return None, f"ptxas not at {path!r}"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
        probe = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60)
    except Exception as e:  # noqa: BLE001
        return None, f"{path} does not run: {e!r}"
    if out.returncode != 0:
        return None, f"{path} --version failed: {out.stderr.strip()[:200]}"
    if "sm_90a" not in probe.stdout + probe.stderr and "sm_90" not in probe.stdout + probe.stderr:
        return None, f"{path} does not list sm_90"
    version = [line for line in out.stdout.splitlines() if line.strip()][-1]
    return path, version


def git_state():
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "kernels").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD"), "kernels_uncommitted": dirty}


# ----------------------------------------------------------------------------------------------
# Enumeration (runs in its own process, one per mode: the config lists are built at import)


class _Recorder:
    """Replaces JITFunction.run and Autotuner.run: records launches instead of running them."""

    def __init__(self):
        self.problem = None
        self.dtype = None
        self.records = []
        self.notes = []

    def retitle(self, suffix):
        """Append suffix to the problem of the launches recorded since it was set."""
        title = self.problem
        for i in range(len(self.records) - 1, -1, -1):
            if self.records[i][0] != title:
                break
            self.records[i] = (title + suffix,) + self.records[i][1:]

    def install(self):
        from triton.runtime import jit as tjit
        from triton.runtime.autotuner import Autotuner

        rec = self

        def jit_run(fn, *args, grid, warmup, **kwargs):
            rec.records.append((rec.problem, rec.dtype, fn, args, kwargs, None))

        def autotuner_run(tuner, *args, **kwargs):
            kwargs.pop("grid", None)
            kwargs.pop("warmup", None)
            tuner.nargs = dict(zip(tuner.arg_names, args))
            # Autotuner.run prunes (and times) only when there is more than one config
            configs = tuner.prune_configs(kwargs) if len(tuner.configs) > 1 else tuner.configs[:1]
            tuner.nargs = None
            for i, c in enumerate(configs):
                rec.records.append((rec.problem, rec.dtype, tuner.fn, args,
                                    {**kwargs, **c.all_kwargs()}, f"{i + 1}/{len(configs)}"))

        tjit.JITFunction.run = jit_run
        Autotuner.run = autotuner_run


def _fake_h200():
    """torch.cuda.get_device_properties for launchers that size grids from the SM count."""
    import types

    import torch

    props = types.SimpleNamespace(multi_processor_count=H200_SMS, name="NVIDIA H200 (simulated)")
    torch.cuda.get_device_properties = lambda *a, **k: props
    return types.SimpleNamespace(type="cuda")


DROPOUT_P, DROPOUT_SEED = 0.1, 12345   # the dropout problems' p (any p compiles the same)


def _attention_problems(quick, fp32_only):
    """(dtype label, D, features) for the dense and varlen attention kernels; features "causal"
    or "full", with " dropout" (p = DROPOUT_P: HAS_DROPOUT, whose tiles the pruners restrict)
    for the half-precision dtypes."""
    if quick:
        return [("bf16", 128, "causal"), ("bf16", 128, "causal dropout")]
    dtypes = ["fp32"] if fp32_only else ["fp16", "bf16", "fp32"]
    return [(dt, D, f) for dt in dtypes for D in (64, 128) for f in ("causal", "full")] + [
        (dt, D, f + " dropout") for dt in dtypes if dt != "fp32" for D in (64, 128)
        for f in ("causal", "full")]


TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def _enumerate_attention(rec, quick, fp32_only):
    import torch

    from seqcore._problem import make_attn_params
    from seqcore.kernels import attention, attention_bwd

    for dt, D, feat in _attention_problems(quick, fp32_only):
        dtype = getattr(torch, TORCH_DTYPES[dt])
        rec.dtype = dt
        full = feat.startswith("full")
        drop = DROPOUT_P if feat.endswith("dropout") else 0.0
        # "causal": MHA (group 1, which Triton specializes), causal. "full": GQA 4, bias with
        # its gradient, softcap, a two-sided window (both band flags), i.e. every feature flag.
        # " dropout": the same with attention dropout (forward, dK/dV and dQ regenerate it).
        B, Hq, Hkv, S = 2, 8, (2 if full else 8), 1024
        p = make_attn_params(D ** -0.5, True, (256, 0) if full else None, 30.0 if full else 0.0,
                             drop, DROPOUT_SEED)
        q = torch.empty(B, Hq, S, D, dtype=dtype)
        k = torch.empty(B, Hkv, S, D, dtype=dtype)
        v = torch.empty(B, Hkv, S, D, dtype=dtype)
        bias = torch.empty(B, Hq, S, S, dtype=dtype) if full else None
        rec.problem = f"attention {dt} D{D} {feat}"
        out, lse = attention.attention_fwd(q, k, v, bias, p)
        attention_bwd.attention_bwd(torch.empty_like(out), q, k, v, bias, out, lse, p, full)
        if full:
            continue
        # varlen (no bias there): packed sequences of 1000, 3000 and 96 tokens, GQA 4, causal
        # (with dropout too)
        lens = [1000, 3000, 96]
        cu = torch.tensor([0, 1000, 4000, 4096], dtype=torch.int32)
        T = sum(lens)
        q = torch.empty(T, Hq, D, dtype=dtype)
        k = torch.empty(T, 2, D, dtype=dtype)
        v = torch.empty(T, 2, D, dtype=dtype)
        rec.problem = f"attention varlen {dt} D{D} {feat}"
        out, lse = attention.attention_varlen_fwd(q, k, v, cu, cu, max(lens), max(lens), p)
        attention_bwd.attention_varlen_bwd(torch.empty_like(out), q, k, v, cu, cu, max(lens),
                                           max(lens), out, lse, p)


def _on_h200(module, name, device_arg):
    """Wrap module.name (a launcher's split-count helper) so that it sees an H200 (132 SMs)
    instead of the CPU tensors' device; returns a list that records the counts it gives."""
    import functools

    cuda = _fake_h200()
    orig = getattr(module, name)
    seen = []

    @functools.wraps(orig)
    def wrapper(*args, **kwargs):
        args = list(args)
        args[0] = device_arg(cuda, args[0])
        seen.append(orig(*args, **kwargs))
        return seen[-1]
    setattr(module, name, wrapper)
    return seen


def _enumerate_decode(rec, quick, fp32_only):
    import types

    import torch

    from seqcore._problem import make_attn_params
    from seqcore.kernels import attention_decode as m

    # default_num_splits(q, k, block_n) reads the SM count from q.device
    splits = _on_h200(m, "default_num_splits",
                      lambda cuda, q: types.SimpleNamespace(device=cuda, shape=q.shape))
    dtypes = ["bf16"] if quick else (["fp32"] if fp32_only else ["fp16", "bf16", "fp32"])
    # (B, Hq, Hkv, Sq): one query, GQA 4 (16 query rows per kv head) / 4 queries, GQA 16 (64
    # rows, the most the triton backend sends here); 4096 keys, causal
    shapes = [(32, 32, 8, 1)] if quick else [(32, 32, 8, 1), (8, 32, 2, 4)]
    for dt in dtypes:
        dtype = getattr(torch, TORCH_DTYPES[dt])
        rec.dtype = dt
        for D in ((128,) if quick else (64, 128)):
            for B, Hq, Hkv, Sq in shapes:
                # and with attention dropout (p = DROPOUT_P), half precision only
                for drop in ((0.0,) if dt == "fp32" else (0.0, DROPOUT_P)):
                    Sk = 4096
                    q = torch.empty(B, Hq, Sq, D, dtype=dtype)
                    k = torch.empty(B, Hkv, Sk, D, dtype=dtype)
                    p = make_attn_params(D ** -0.5, True, None, 0.0, drop, DROPOUT_SEED)
                    rec.problem = (f"decode {dt} D{D} B{B} Hq{Hq} Hkv{Hkv} Sq{Sq}"
                                   + (" dropout" if drop else ""))
                    m.attention_decode_fwd(q, k, k, None, p)
                    rec.retitle(f" splits{splits[-1]}" if splits else "")


def _enumerate_kvcache(rec, quick, fp32_only):
    import torch

    from seqcore._problem import make_attn_params
    try:
        from seqcore.kernels import attention_kvcache as m
    except Exception as e:  # noqa: BLE001 - being written by someone else: report and go on
        rec.notes.append(f"kernels/attention_kvcache.py skipped: it does not import ({e!r})")
        return
    try:  # default_num_splits(device, programs, max_len, block_n)
        splits = _on_h200(m, "default_num_splits", lambda cuda, device: cuda)
    except AttributeError as e:
        rec.notes.append(f"kvcache: no default_num_splits to give 132 SMs ({e!r}); the "
                         "launcher's CPU split count was used")
        splits = []
    dtypes = ["bf16"] if quick else (["fp32"] if fp32_only else ["fp16", "bf16", "fp32"])
    # (B, Hq, Hkv, Sq): decoding one token, GQA 4 / chunked prefill of 128 tokens, GQA 4
    shapes = [(32, 32, 8, 1)] if quick else [(32, 32, 8, 1), (4, 32, 8, 128)]
    caches = [16] if quick else [None, 16, 64]      # dense, paged (block sizes 16 and 64)
    for dt in dtypes:
        dtype = getattr(torch, TORCH_DTYPES[dt])
        rec.dtype = dt
        for D in ((128,) if quick else (64, 128)):
            for B, Hq, Hkv, Sq in shapes:
                for block in caches:
                    S_max, filled = 4096, 3000
                    if block:
                        n_blocks = B * S_max // block
                        kc = torch.empty(n_blocks, Hkv, block, D, dtype=dtype)
                        table = torch.arange(n_blocks, dtype=torch.int32).reshape(B, -1)
                    else:
                        kc = torch.empty(B, Hkv, S_max, D, dtype=dtype)
                        table = None
                    q = torch.empty(B, Hq, Sq, D, dtype=dtype)
                    k_new = torch.empty(B, Hkv, Sq, D, dtype=dtype)
                    seqlens = torch.full((B,), filled, dtype=torch.int32)
                    p = make_attn_params(D ** -0.5, True, None, 0.0)
                    rec.problem = (f"kvcache {dt} D{D} {'paged' + str(block) if block else 'dense'}"
                                   f" B{B} Hq{Hq} Hkv{Hkv} Sq{Sq}")
                    n = len(splits)
                    m.attention_kvcache_fwd(q, kc, kc, k_new, k_new, seqlens, table, p)
                    rec.retitle(f" splits{splits[-1]}" if len(splits) > n else "")


# The persistent forward's (B, H) grid: every blocking its launcher picks on 132 SMs (B = 1
# and 8 pad to BLOCK_B = 16 but specialize differently), then the one-program tiles of the
# interpreter's tests (n_programs_max = 1), which bound its MAX_ACC: (B, H, cell)
RNN_PERSISTENT_SHAPES = [(B, H) for B in (1, 8, 16, 64) for H in (256, 512, 768, 1024)]
RNN_PERSISTENT_SHAPES_QUICK = [(64, 1024)]
RNN_ONE_PROGRAM_SHAPES = [(16, 64, "lstm"), (64, 16, "lstm"), (32, 128, "rnn_tanh")]


def _rnn_problem(cell, T, B, H, dtype, lengths_on, h0=None):
    """(x, w_ih, w_hh, b_ih, b_hh, states, lengths) of a cell, empty tensors."""
    import torch

    from seqcore.kernels.rnn_cells import CELLS

    spec = CELLS[cell]
    x = torch.empty(T, B, H, dtype=dtype)
    lengths = torch.full((B,), T, dtype=torch.int64) if lengths_on else None
    h0 = torch.zeros(B, H, dtype=dtype) if h0 is None else h0
    w = torch.empty(spec.gates * H, H, dtype=dtype)
    b = torch.empty(spec.gates * H, dtype=dtype)
    return x, w, w, b, b, (h0,) * spec.states, lengths


def _enumerate_rnn_persistent(rec, quick, fp32_only, T, flag_sets):
    """The persistent forward of every cell over RNN_PERSISTENT_SHAPES on 132 SMs (and the
    one-program tiles), bf16, fp16 (its dot runs in the input dtype) and fp32."""
    import torch

    from seqcore.kernels import rnn_persistent
    from seqcore.kernels.rnn_cells import CELLS

    dtypes = ["bf16"] if quick else (["fp32"] if fp32_only else ["bf16", "fp16", "fp32"])
    shapes = RNN_PERSISTENT_SHAPES_QUICK if quick else RNN_PERSISTENT_SHAPES
    problems = [(B, H, cell, H200_SMS) for B, H in shapes for cell in CELLS
                if not (quick and cell == "rnn_relu")]
    if not quick:
        problems += [(B, H, cell, 1) for B, H, cell in RNN_ONE_PROGRAM_SHAPES]
    for dt in dtypes:
        dtype = getattr(torch, TORCH_DTYPES[dt])
        rec.dtype = dt
        for B, H, cell, n_programs in problems:
            for lengths_on, reverse, need_ws in flag_sets:
                x, w_ih, w_hh, b_ih, b_hh, states, lengths = _rnn_problem(cell, T, B, H, dtype,
                                                                          lengths_on)
                blocks = rnn_persistent.persistent_blocks(B, H, CELLS[cell].gates, n_programs,
                                                        w_hh.element_size())
                tag = f"{dt} B{B} H{H}" + (" lengths,reverse,ws" if lengths_on else "")
                where = "" if n_programs == H200_SMS else " one-program"
                rec.problem = (f"{cell} fwd persistent{where} {tag} (units {blocks.units}, "
                               f"{blocks.n_chunks}x{blocks.chunk_k} K, {blocks.n_programs} "
                               "programs)")
                rnn_persistent.forward_persistent(cell, x, w_ih, w_hh, b_ih, b_hh, states,
                                                  lengths, reverse, need_ws,
                                                  n_programs_max=n_programs)
    _enumerate_rnn_persistent_bwd(rec, quick, fp32_only)


def _enumerate_rnn_persistent_bwd(rec, quick, fp32_only):
    """The persistent backward: every launch its launcher picks on 132 SMs
    (kernels/rnn_persistent_bwd.sm90_configs); quick: the largest LSTM tile, bf16 (B = 16,
    H = 1024: its 128 KB slice in bf16, 16 chunks of 256)."""
    from seqcore.kernels import rnn_persistent_bwd

    for entry in rnn_persistent_bwd.sm90_configs(H200_SMS):
        launch = entry["launch"]
        if quick and not (launch["cell"] == "lstm" and entry["dtype"] == "bf16"
                          and launch["B"] == 16 and launch["H"] == 1024 and launch["lengths"]):
            continue
        if fp32_only and entry["dtype"] != "fp32":
            continue
        rec.dtype, rec.problem = entry["dtype"], entry["problem"]
        rnn_persistent_bwd.sm90_launch(**launch)


def _enumerate_rnn(rec, quick, fp32_only):
    import torch

    from seqcore.kernels import rnn_bwd, rnn_cell, rnn_persistent
    from seqcore.kernels.rnn_cells import CELLS

    T = 20
    flag_sets = [(True, True, True)] if quick else [(False, False, False), (True, True, True)]
    _enumerate_rnn_persistent(rec, quick, fp32_only, T, flag_sets)
    # the per-step kernels (forward, backward; their tiles do not depend on H past 64): float16
    # runs the bfloat16 code but for the conversions of the loads, left out
    dtypes = ["bf16"] if quick else (["fp32"] if fp32_only else ["bf16", "fp32"])
    shapes = [(8, 512)] if quick else [(8, 512), (8, 256), (32, 256), (8, 1024), (64, 256)]
    for dt in dtypes:
        dtype = getattr(torch, TORCH_DTYPES[dt])
        rec.dtype = dt
        for B, H in shapes:
            for lengths_on, reverse, need_ws in flag_sets:
                h0 = torch.zeros(B, H, dtype=dtype)
                tag = f"{dt} B{B} H{H}" + (" lengths,reverse,ws" if lengths_on else "")
                # every cell of kernels/rnn_cells.py: one kernel per family, CELL=<name>
                # (quick: Elman relu compiles as tanh but for its one pointwise op: left out)
                for cell, spec in CELLS.items():
                    if quick and cell == "rnn_relu":
                        continue
                    args = _rnn_problem(cell, T, B, H, dtype, lengths_on, h0) + (reverse,
                                                                                 need_ws)
                    x, w_ih, w_hh, _, _, states, lengths = args[:7]
                    rec.problem = f"{cell} fwd per-step {tag}"
                    rnn_cell.forward_steps(cell, *args)
                    if not need_ws:
                        continue
                    rec.problem = f"{cell} bwd {tag}"
                    dy = torch.empty(T, B, H, dtype=dtype)
                    dh = torch.zeros(B, H, dtype=dtype)
                    ws = torch.empty(T, B, spec.ws_slots * H, dtype=torch.float32)
                    rnn_bwd.backward(cell, dy, (dh,) * spec.states, x, w_ih, w_hh, states,
                                     lengths, reverse, dy, ws)
                # the LSTM with a projection, P = H / 4: always the per-step forward (the step
                # kernel with HAS_PROJ, then rnn_proj_kernel) and the two-phase backward
                P = H // 4
                w_ih = torch.empty(4 * H, H, dtype=dtype)
                w_hh = torch.empty(4 * H, P, dtype=dtype)
                w_hr = torch.empty(P, H, dtype=dtype)
                b = torch.empty(4 * H, dtype=dtype)
                states = (torch.zeros(B, P, dtype=dtype), h0)
                rec.problem = f"lstm proj P{P} fwd {tag}"
                rnn_persistent.forward_persistent("lstm", x, w_ih, w_hh, b, b, states, lengths,
                                                  reverse, need_ws, n_programs_max=H200_SMS,
                                                  w_hr=w_hr)
                if need_ws:
                    rec.problem = f"lstm proj P{P} bwd {tag}"
                    dy = torch.empty(T, B, P, dtype=dtype)
                    ws = torch.empty(T, B, 5 * H, dtype=torch.float32)
                    rnn_bwd.backward("lstm", dy, (states[0], h0), x, w_ih, w_hh, states, lengths,
                                     reverse, dy, ws, w_hr=w_hr)


def _specialize(backend, fn, args, kwargs):
    """(signature, constexprs, attrs, options) as JITFunction.run computes them."""
    from triton import knobs
    from triton.runtime import jit as tjit

    if "step" in fn.arg_names:  # a generic step: see the module docstring
        i = fn.arg_names.index("step")
        if i < len(args):
            args = args[:i] + (3,) + args[i + 1:]
        else:
            kwargs = {**kwargs, "step": 3}
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = tjit.create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                          specialization, opts)
    option_names = set(options.__dict__)
    opts = {k: v for k, v in kwargs.items() if k in option_names}
    return signature, constexprs, attrs, opts


def enumerate_mode(mode, quick, sections):
    """Jobs (dicts, JSON-ready) of one mode; runs in a process whose env is MODES[mode]."""
    import triton  # noqa: F401
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    backend = make_backend(GPUTarget("cuda", CAPABILITY, 32))
    rec = _Recorder()
    rec.install()
    fp32_only = mode == "tf32"
    steps = {"attention": _enumerate_attention, "decode": _enumerate_decode,
             "kvcache": _enumerate_kvcache, "rnn": _enumerate_rnn}
    for name in sections:
        steps[name](rec, quick, fp32_only)
    jobs = []
    for problem, dtype, fn, args, kwargs, config_pos in rec.records:
        signature, constexprs, attrs, options = _specialize(backend, fn, args, kwargs)
        jobs.append({
            "kernel": f"{fn.fn.__module__}:{fn.fn.__name__}",
            "signature": signature,
            "constexprs": [[list(k), v] for k, v in sorted(constexprs.items())],
            "attrs": [[list(k), v] for k, v in sorted(attrs.items())],
            "options": options,
            "arg_names": list(fn.arg_names),
            "constexpr_params": [p.name for p in fn.params if p.is_constexpr],
            "picked": [{"mode": mode, "problem": problem, "dtype": dtype,
                        "config": config_pos}],
        })
    return {"jobs": jobs, "notes": rec.notes}


def priority(job):
    """Compile order (what a time budget keeps): bfloat16 and float32 at the configs
    SEQCORE_AUTOTUNE=0 picks (tests, untimed runs), the autotuned bfloat16 lists, float16
    (which compiles like bfloat16), the autotuned float32 lists, then TF32."""
    modes = {p["mode"] for p in job["picked"]}
    dtypes = {p["dtype"] for p in job["picked"]}
    if "no-autotune" in modes and dtypes & {"bf16", "fp32"}:
        tier = 0
    elif "autotune" in modes and "bf16" in dtypes:
        tier = 1
    elif "fp16" in dtypes:
        tier = 2
    elif "autotune" in modes or "no-autotune" in modes:
        tier = 3
    else:
        tier = 4
    return tier


def compile_order(jobs):
    """Jobs by priority tier; within a tier round-robin over the kernels, so that a budget cut
    leaves every kernel some of its configs."""
    seen = {}
    keyed = []
    for job in sorted(jobs, key=lambda j: (priority(j), j["kernel"])):
        group = (priority(job), job["kernel"])
        seen[group] = seen.get(group, -1) + 1
        keyed.append(((group[0], seen[group], job["kernel"]), job))
    return [job for _, job in sorted(keyed, key=lambda kj: kj[0])]


def job_key(job):
    body = json.dumps([job["kernel"], job["signature"], job["constexprs"], job["attrs"],
                       sorted(job["options"].items())], sort_keys=True, default=str)
    return hashlib.sha1(body.encode()).hexdigest()[:10]


def enumerate_all(quick, sections, modes):
    """Merged jobs of every mode: one per distinct compile, with every (mode, problem) that
    picks it."""
    merged, notes = {}, []
    for mode in modes:
        cmd = [sys.executable, os.path.abspath(__file__), "--_enumerate", mode,
               "--only", ",".join(sections)] + (["--quick"] if quick else [])
        r = subprocess.run(cmd, env=clean_env(MODES[mode]), capture_output=True, text=True,
                           cwd=REPO)
        if r.returncode != 0:
            raise RuntimeError(f"enumerating mode {mode} failed:\n{r.stderr[-4000:]}")
        out = json.loads(r.stdout.strip().splitlines()[-1])
        notes += [n for n in out["notes"] if n not in notes]
        for job in out["jobs"]:
            key = job_key(job)
            if key in merged:
                merged[key]["picked"] += [p for p in job["picked"]
                                          if p not in merged[key]["picked"]]
            else:
                merged[key] = dict(job, key=key)
    return list(merged.values()), notes


# ----------------------------------------------------------------------------------------------
# Compiling (worker processes)

_TARGET = None


def _worker_init():
    global _TARGET
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"   # Triton prints ptxas -v's log when it compiles
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from triton.backends.compiler import GPUTarget
    _TARGET = GPUTarget("cuda", CAPABILITY, 32)


def _log_dir():
    """Where the ptxas -v logs of kernels Triton compiled are kept (Triton's cache keeps the
    cubin, not the log), keyed by Triton's kernel hash: ~/.triton/cache/seqcore-sm90-ptxas."""
    from triton import knobs

    d = os.path.join(knobs.cache.dir, "seqcore-sm90-ptxas")
    os.makedirs(d, exist_ok=True)
    return d


def _resolve(name):
    import importlib

    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    module, attr = name.split(":")
    mod = importlib.import_module(module)
    obj = getattr(mod, attr, None)
    while obj is not None and not isinstance(obj, JITFunction):
        obj = getattr(obj, "fn", None) if isinstance(obj, Autotuner) else None
    if obj is None:  # the autotuner was bound to another name: look for it by its function
        for value in vars(mod).values():
            fn = value.fn if isinstance(value, Autotuner) else value
            if isinstance(fn, JITFunction) and fn.fn.__name__ == attr:
                return fn
        raise LookupError(name)
    return obj


PTXAS_PATTERNS = {
    "regs": r"Used (\d+) registers",
    "stack": r"(\d+) bytes stack frame",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
    "static_smem": r"(\d+) bytes smem",
}


def parse_ptxas(log):
    found = {}
    for name, pat in PTXAS_PATTERNS.items():
        m = re.findall(pat, log)
        found[name] = int(m[-1]) if m else 0
    if not re.search(PTXAS_PATTERNS["regs"], log):
        raise ValueError("no register count in the ptxas log:\n" + log[-2000:])
    return found


def run_ptxas(ptx, opt):
    """ptxas -v on Triton's PTX with Triton's own flags (for kernels Triton had cached)."""
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(CAPABILITY).path, "-lineinfo", "-v",
               *([] if opt.get("enable_fp_fusion", True) else ["--fmad=false"]),
               f"--gpu-name={sm_arch_from_capability(CAPABILITY)}", src, "-o", src + ".o"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ptxas failed: {r.stderr[-2000:]}")
        return r.stderr + r.stdout


def dot_lowering(ptx, ttgir):
    n_wgmma = len(re.findall(r"wgmma\.mma_async", ptx))
    n_mma = len(re.findall(r"\bmma\.sync", ptx))
    has_dot = "tt.dot" in ttgir or "ttng.warp_group_dot" in ttgir or n_wgmma or n_mma
    kind = "wgmma" if n_wgmma else "mma" if n_mma else "fma" if has_dot else "-"
    return kind, n_wgmma, n_mma


def ctas_per_sm(regs, warps, shared):
    per_warp = -(-regs * 32 // 256) * 256            # registers go to warps in units of 256
    by_regs = (REGS_PER_SM // per_warp) // warps if per_warp else MAX_CTAS_PER_SM
    by_smem = SMEM_PER_SM // (shared + 1024)          # + the 1 KB reserved per block
    by_warps = MAX_WARPS_PER_SM // warps
    return max(0, min(by_regs, by_smem, by_warps, MAX_CTAS_PER_SM))


def _in_triton_cache(src, options):
    """Whether triton.compile would find this kernel in its cache (its own key computation)."""
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.compiler import make_backend
    from triton.runtime.cache import get_cache_key, get_cache_manager

    backend = make_backend(_TARGET)
    opts = backend.parse_options(dict(options))
    key = get_cache_key(src, backend, opts, env_vars=get_cache_invalidating_env_vars())
    manager = get_cache_manager(hashlib.sha256(key.encode("utf-8")).hexdigest())
    return manager.get_group(f"{src.name[:150]}.json") is not None


def compile_job(job):
    """Compile one job for sm_90a; returns the job with its "result"."""
    import triton
    from triton.compiler import ASTSource

    t0 = time.time()
    res = {}
    try:
        fn = _resolve(job["kernel"])
        constexprs = {tuple(k): v for k, v in job["constexprs"]}
        attrs = {tuple(k): v for k, v in job["attrs"]}
        src = ASTSource(fn, job["signature"], constexprs, attrs)
        if job.get("cached_only") and not _in_triton_cache(src, job["options"]):
            return dict(job, result=None)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            ck = triton.compile(src, target=_TARGET, options=dict(job["options"]))
        log = log.getvalue()
        cached = "ptxas info" not in log
        log_path = os.path.join(_log_dir(), ck.metadata.hash + ".ptxas.log")
        if cached and os.path.exists(log_path):
            with open(log_path) as f:
                log = f.read()
        else:
            if cached:   # Triton had the kernel but this cache lost its log: rerun ptxas -v
                log = run_ptxas(ck.asm["ptx"], ck.metadata._asdict())
            log = "\n".join(line for line in log.splitlines() if line.startswith(
                ("ptxas", "    ")))  # the -v lines, not the PTX Triton prints on errors
            tmp = f"{log_path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(log)
            os.replace(tmp, log_path)
        res.update(parse_ptxas(log))
        kind, n_wgmma, n_mma = dot_lowering(ck.asm["ptx"], ck.asm.get("ttgir", ""))
        md = ck.metadata
        res.update(status="ok", shared=md.shared, num_warps=md.num_warps,
                   num_stages=md.num_stages, dot=kind, wgmma=n_wgmma, mma_sync=n_mma,
                   ctas_per_sm=ctas_per_sm(res["regs"], md.num_warps, md.shared),
                   triton_cached=cached, name=md.name)
        problems = []
        if res["spill_stores"] or res["spill_loads"]:
            problems.append(f"spills {res['spill_stores']} B")
        if md.shared > SMEM_LIMIT:
            problems.append(f"shared {md.shared} B > {SMEM_LIMIT} B")
        res["verdict"] = "; ".join(problems) or "ok"
    except Exception as e:  # noqa: BLE001 - recorded; the report goes on
        msg = str(e)
        res.update(status="error", verdict="compile error",
                   error=f"{type(e).__name__}: {msg[:300]}{' ...' if len(msg) > 300 else ''}")
        if "out of resource" in msg.lower() or "shared memory" in msg.lower():
            res["verdict"] = "out of resources"
    res["compile_s"] = round(time.time() - t0, 2)
    return dict(job, result=res)


def compile_all(jobs, workers, budget, progress=True):
    """Compile jobs in order on `workers` processes; after `budget` seconds no new compile
    starts (those jobs come back with result None)."""
    t0 = time.time()
    done, left, pending, queue = [], [], set(), list(jobs)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx,
                                                initializer=_worker_init) as pool:
        while queue or pending:
            while queue and len(pending) < workers and (budget is None
                                                        or time.time() - t0 < budget):
                pending.add(pool.submit(compile_job, queue.pop(0)))
            if not pending:
                break
            finished, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for f in finished:
                job = f.result()
                if job["result"] is None:       # --cached-only, and not in the cache
                    left.append(job)
                    continue
                done.append(job)
                if progress:
                    r = job["result"]
                    print(f"[{len(done)}/{len(jobs)} {time.time() - t0:6.0f}s] "
                          f"{label(job)}: {r['verdict']} ({r['compile_s']} s)",
                          file=sys.stderr, flush=True)
    left += [dict(job, result=None) for job in queue]
    return done, left, time.time() - t0


# ----------------------------------------------------------------------------------------------
# Report


_DIM_NAMES = {"HEAD_DIM": "D", "HEAD_D": "D", "HEAD_DIM_V": "Dv", "HEAD_DV": "Dv"}
_STRIDE = re.compile(r"^(stride|s[a-z]*_[a-z]+$)")


def _describe(job):
    """(kernel, dtypes, dims, tiles, flags, warps, stages) strings of a job, for the table."""
    names = job["arg_names"]
    consts = {names[k[0]]: v for k, v in job["constexprs"]}
    declared = set(job["constexpr_params"])
    dims, tiles, flags, ones = {}, [], [], []
    for name, v in consts.items():
        if name not in declared:
            if not _STRIDE.match(name):     # an argument Triton specialized (1, None)
                ones.append(f"{name}={v}")
        elif isinstance(v, bool):
            if v:
                flags.append(name)
        elif isinstance(v, str):
            flags.append(f"{name}={v}")
        elif name in _DIM_NAMES:
            dims[_DIM_NAMES[name]] = v
        elif name.startswith("BLOCK_") or name in ("H_PAD", "SPLIT_CHUNK"):
            tiles.append(f"{name[6:] if name.startswith('BLOCK_') else name}={v}")
        else:
            dims[name] = v
    pow2 = {d: max(16, 1 << (int(v) - 1).bit_length()) for d, v in dims.items()}
    # BLOCK_D/BLOCK_DV are the head dims padded for tl.dot: shown only when they pad
    tiles = [t for t in tiles if not (t.split("=")[0] in ("D", "DV") and
                                      int(t.split("=")[1]) == pow2.get(t.split("=")[0].replace(
                                          "DV", "Dv"), -1))]
    if dims.get("Dv") == dims.get("D"):
        dims.pop("Dv", None)
    dtypes = sorted({p["dtype"] for p in job["picked"]}, key=list(TORCH_DTYPES).index)
    return (job["kernel"].split(":")[1], "/".join(dtypes),
            " ".join(f"{k}={v}" for k, v in dims.items()), " ".join(tiles),
            " ".join(flags + ones), job["options"].get("num_warps", 4),
            job["options"].get("num_stages", 3))


def label(job):
    kernel, dtypes, dims, tiles, flags, w, s = _describe(job)
    return f"{kernel}[{dtypes} {dims} {tiles} {flags} w{w} s{s}]".replace("  ", " ")


def _modes(job):
    modes = sorted({p["mode"] for p in job["picked"]}, key=list(MODES).index)
    return ",".join(modes)


def markdown(report):
    lines = [f"# sm_90 resource report ({report['date'][:10]})", "",
             f"seqcore {report['git']['commit']}"
             + (f" (uncommitted in kernels/: {', '.join(report['git']['kernels_uncommitted'])})"
                if report["git"]["kernels_uncommitted"] else "")
             + f"; triton {report['triton']}; {report['ptxas']}; target sm_90a (H100/H200: "
             f"{SMEM_LIMIT // 1024} KB shared memory per block, 64K registers per SM, 255 per "
             f"thread); " + (f"read from Triton's cache on {report['host']} (--cached-only)"
                             if report["cached_only"] else
                             f"compiled on {report['host']} in {report['compile_s']:.0f} s "
                             f"({report['workers']} processes)")
             + f"{' -- quick subset' if report['quick'] else ''}.",
             "",
             "Every config a launcher or autotuner of seqcore.kernels can pick for the shapes "
             "below, compiled with `python bench/sm90_report.py"
             + (" --quick" if report["quick"] else "") + "`. regs: registers per thread; "
             "spill: bytes of spill stores/loads (ptxas -v); smem: Triton's dynamic shared "
             "memory per block; dot: how tl.dot lowered (wgmma: Hopper warpgroup MMA; mma: "
             "mma.sync; fma: CUDA cores, e.g. float32 ieee dots); CTAs/SM: resident blocks "
             "those resources allow; picked by: no-autotune = SEQCORE_AUTOTUNE=0 (tests, "
             "untimed), autotune = the timed list after pruning, tf32 = SEQCORE_TF32=1 "
             "(float32 inputs); n/m = the config's place in the pruned list.", ""]
    s = report["summary"]
    lines += [f"**{s['compiled']} configs compiled, {s['failing']} failing "
              f"(spill or shared memory), {s['errors']} compile errors, "
              f"{s['not_compiled']} not compiled.**", ""]
    if report["failing"]:
        lines += ["Failing configs:", ""]
        for lab, group in _grouped(report["failing"], lambda f: f["label"]):
            f = group[0]
            more = f" ({len(group)} variants)" if len(group) > 1 else ""
            lines.append(f"- `{lab}`{more}: {f['verdict']} (regs {f['regs']}; picked by "
                         f"{f['picked']})")
        lines.append("")
    if report["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in report["notes"]] + [""]
    lines += ["Shapes: " + report["shapes"], ""]

    compiled = [r for r in report["rows"] if r["result"] and r["result"]["status"] == "ok"]
    lines += ["## By kernel", "",
              "| kernel | configs | regs | spilling | max smem KB | dot | CTAs/SM |",
              "|---|---|---|---|---|---|---|"]
    for kernel, group in _grouped(compiled, lambda r: r["describe"][0]):
        res = [r["result"] for r in group]
        regs = sorted(x["regs"] for x in res)
        bad = sum(1 for x in res if x["spill_stores"] or x["spill_loads"])
        ctas = sorted(x["ctas_per_sm"] for x in res)
        lines.append(f"| {kernel} | {len(group)} | {regs[0]}-{regs[-1]} | {bad} | "
                     f"{max(x['shared'] for x in res) / 1024:.1f} | "
                     f"{', '.join(sorted({x['dot'] for x in res}))} | {ctas[0]}-{ctas[-1]} |")
    lines += ["", "## Every config", "",
              "Rows that differ only in how Triton specialized integer arguments (divisible by "
              "16 or not, e.g. a transposed operand's strides) are merged: `xN` rows, worst "
              "values shown.", ""]
    header = ("| kernel | dtype | dims | tiles | flags | w | s | regs | spill st/ld | stack "
              "| smem KB | dot (wgmma) | CTAs/SM | picked by | verdict |")
    lines += [header, "|" + "---|" * 15]
    for describe, group in _grouped(report["rows"], lambda r: r["describe"]):
        kernel, dtypes, dims, tiles, flags, w, st = describe
        if len(group) > 1:
            kernel += f" x{len(group)}"
        results = [r["result"] for r in group if r["result"]]
        ok = [r for r in results if r["status"] == "ok"]
        errs = [r for r in results if r["status"] != "ok"]
        picked = ", ".join(sorted({r["picked_short"] for r in group}))
        if not results:
            continue        # not compiled: summarized below the table
        if errs:
            cells = [""] * 6 + [errs[0]["verdict"] + ": "
                                + errs[0].get("error", "")[:120].replace("|", "/")]
        else:
            worst = max(ok, key=lambda r: (r["verdict"] != "ok", r["spill_stores"], r["regs"]))
            regs = sorted({r["regs"] for r in ok})
            verdict = worst["verdict"] if worst["verdict"] == "ok" else f"**{worst['verdict']}**"
            cells = ["/".join(map(str, regs)),
                     f"{worst['spill_stores']}/{worst['spill_loads']}", str(worst["stack"]),
                     f"{max(r['shared'] for r in ok) / 1024:.1f}",
                     f"{worst['dot']} ({worst['wgmma']})" if worst["dot"] == "wgmma"
                     else worst["dot"], str(min(r["ctas_per_sm"] for r in ok)), verdict]
        lines.append("| " + " | ".join([kernel, dtypes, dims, tiles, flags, str(w), str(st)]
                                       + cells[:-1] + [picked, cells[-1]]) + " |")
    left = [r for r in report["rows"] if r["result"] is None]
    if left:
        lines += ["", f"Not compiled, {len(left)} configs (see the notes):", ""]
        for (kernel, dtypes), group in _grouped(left, lambda r: r["describe"][:2]):
            lines.append(f"- {kernel} {dtypes}: {len(group)} ({_modes_of(group)})")
    return "\n".join(lines) + "\n"


def _grouped(items, key):
    """[(key, [items])] in first-seen order."""
    groups = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.items())


def _modes_of(rows):
    modes = {p["mode"] for r in rows for p in r["picked"]}
    return ", ".join(m for m in MODES if m in modes)


SHAPES = ("attention: B2 H8 S1024, D 64/128; causal = MHA causal, full = GQA 4 + bias (with "
          "dbias) + softcap 30 + window (256, 0); varlen = 3 packed sequences (1000, 3000, 96 "
          "tokens), GQA 4, causal; forward and backward; fp16 and bf16 each of these also with "
          "attention dropout p 0.1. decode: 4096 keys, B32 Hq32 Hkv8 Sq1 "
          "and B8 Hq32 Hkv2 Sq4, causal, H200 split counts, fp16/bf16 also with dropout p 0.1. kvcache: 3000 cached + Sq new keys, "
          "dense and paged (blocks of 16 and 64) caches, B32 Hq32 Hkv8 Sq1 and B4 Hq32 Hkv8 "
          "Sq128, causal. rnn: LSTM, GRU, Elman tanh and relu, T20, I=H; the persistent "
          "forward on 132 SMs at B in (1, 8, 16, 64) x H in (256, 512, 768, 1024), fp16/bf16/"
          "fp32, and its one-program tiles (B16 H64, B64 H16 LSTM, B32 H128 Elman); the "
          "persistent backward (LSTM, GRU, Elman tanh) on 132 SMs at every B in (1, 8, 16, 32, "
          "64) x H in (256, 512, 768, 1024) whose w_hh slice fits on chip in its dtype, "
          "fp16/bf16/fp32, without and with lengths+reverse; the "
          "per-step forward and the backward at (B, H) in (8, 512) (8, 256) (32, 256) (8, 1024) "
          "(64, 256); inference and lengths+reverse+workspace; the LSTM also with a projection P = H/4 (per-step forward, two-phase "
          "backward). dtypes "
          "fp16, bf16, fp32 (rnn: bf16, fp32; float16 differs from bfloat16 there only in the "
          "conversions after the loads).")
SHAPES_QUICK = ("quick subset, SEQCORE_AUTOTUNE=0 configs only, bf16: attention D128 causal "
                "(dense and varlen, fwd and bwd), without and with dropout p 0.1; decode B32 "
                "Hq32 Hkv8 Sq1 D128, without and with dropout p 0.1; kvcache paged16 "
                "B32 Hq32 Hkv8 Sq1 D128; LSTM/GRU/Elman tanh lengths+reverse+workspace: "
                "persistent fwd B64 H1024, per-step fwd and bwd B8 H512; the LSTM's persistent bwd "
                "B16 H512 lengths+reverse; the LSTM with a projection P128 fwd and bwd.")


def build_report(done, left, notes, quick, workers, wall, ptxas_version, cached_only=False):
    import triton

    rows = []
    for job in done + left:
        job["describe"] = _describe(job)
        job["label"] = label(job)
        configs = sorted({p["config"] for p in job["picked"] if p["config"]})
        job["picked_short"] = _modes(job) + (f" {','.join(configs[:3])}" if configs else "")
        rows.append(job)
    order = ["attention", "attention_bwd", "attention_decode", "attention_kvcache", "rnn_cell",
             "rnn_persistent", "rnn_bwd"]

    def sort_key(job):
        module = job["kernel"].split(":")[0].rsplit(".", 1)[-1]
        return (order.index(module) if module in order else 99, job["describe"][0],
                job["describe"][1], job["describe"][2], job["describe"][3], job["describe"][4],
                job["describe"][5], job["describe"][6])
    rows.sort(key=sort_key)
    ok = [j for j in rows if j["result"] and j["result"]["status"] == "ok"]
    failing = [j for j in ok if j["result"]["verdict"] != "ok"]
    errors = [j for j in rows if j["result"] and j["result"]["status"] != "ok"]
    report = {
        "what": "sm_90 resource report: bench/sm90_report.py" + (" --quick" if quick else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "device": "none (compiled for sm_90a: H100/H200)",
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "triton": triton.__version__, "ptxas": ptxas_version, "git": git_state(),
        "quick": quick, "cached_only": cached_only, "workers": workers, "compile_s": wall,
        "limits": {"shared_per_block": SMEM_LIMIT, "regs_per_thread": 255,
                   "regs_per_sm": REGS_PER_SM, "sms": H200_SMS},
        "shapes": SHAPES_QUICK if quick else SHAPES,
        "notes": notes,
        "summary": {"compiled": len(ok) + len(errors), "failing": len(failing),
                    "errors": len(errors), "not_compiled": len(left)},
        "failing": [{"label": j["label"], "verdict": j["result"]["verdict"],
                     "regs": j["result"]["regs"], "picked": j["picked_short"]} for j in failing],
        "rows": rows,
    }
    return report


def json_rows(report):
    """The JSON form: per row, the readable fields, the constexprs by name, who picks it
    ("mode: problem n/m") and the result. Compiled with the same Triton, a row's key is the
    same in every run."""
    out = dict(report)
    out["rows"] = []
    for job in report["rows"]:
        names = job["arg_names"]
        kernel, dtypes, dims, tiles, flags, w, s = job["describe"]
        out["rows"].append({
            "label": job["label"], "key": job["key"], "kernel": job["kernel"],
            "dtypes": dtypes, "num_warps": w, "num_stages": s,
            "constexprs": {names[k[0]]: v for k, v in job["constexprs"]},
            "picked": [f"{p['mode']}: {p['problem']}" + (f" {p['config']}" if p["config"] else "")
                       for p in job["picked"]],
            "result": job["result"]})
    return out


def write_json(report, path):
    """Indented header, one line per row (the file stays diffable and small)."""
    data = json_rows(report)
    rows = data.pop("rows")
    head = json.dumps(data, indent=1, default=str)
    body = ",\n".join("  " + json.dumps(r, default=str) for r in rows)
    with open(path, "w") as f:
        f.write(head[:-2] + ',\n "rows": [\n' + body + "\n ]\n}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the small subset the test runs (SEQCORE_AUTOTUNE=0 configs, bf16)")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "out"),
                        help="directory for sm90-report.md/.json (default bench/out)")
    parser.add_argument("--name", default="sm90-report", help="file name stem in --out")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help="comma-separated sections: " + ", ".join(SECTIONS))
    parser.add_argument("--modes", default=None,
                        help="comma-separated enumeration modes (default: all; --quick: "
                        "no-autotune): " + ", ".join(MODES))
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                        help="compile processes")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds after which no new compile starts")
    parser.add_argument("--cached-only", action="store_true",
                        help="compile nothing: report the configs Triton has cached")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for the report's notes (repeatable)")
    parser.add_argument("--list", action="store_true", help="enumerate only")
    parser.add_argument("--_enumerate", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    if args._enumerate:  # child process: print the mode's jobs as one JSON line
        os.environ.pop("TRITON_INTERPRET", None)
        with contextlib.redirect_stdout(sys.stderr):
            result = enumerate_mode(args._enumerate, args.quick, sections)
        print(json.dumps(result, default=str))
        return 0

    os.environ.pop("TRITON_INTERPRET", None)
    sys.path.insert(0, REPO)
    path, ptxas_version = ptxas_path()
    if path is None:
        print(f"sm90_report: {ptxas_version}", file=sys.stderr)
        return 2
    modes = (args.modes.split(",") if args.modes else
             ["no-autotune"] if args.quick else list(MODES))
    t0 = time.time()
    jobs, notes = enumerate_all(args.quick, sections, modes)
    jobs = compile_order(jobs)
    print(f"sm90_report: {len(jobs)} distinct compiles from {sum(len(j['picked']) for j in jobs)}"
          f" picks ({time.time() - t0:.0f} s to enumerate)", file=sys.stderr)
    if args.list:
        for job in jobs:
            print(label(job), "<-", "; ".join(f"{p['mode']}: {p['problem']}"
                                             for p in job["picked"][:3]))
        return 0
    for job in jobs:
        job["cached_only"] = args.cached_only
    done, left, wall = compile_all(jobs, args.jobs, args.budget)
    _worker_init()
    if left:
        why = ("were not in Triton's cache (--cached-only)" if args.cached_only else
               f"were left when the time budget ({args.budget:.0f} s) ran out")
        notes.append(f"{len(left)} configs not compiled: they {why}; the last tiers of the "
                     "compile order (see priority() in bench/sm90_report.py) go first")
    notes += args.note
    report = build_report(done, left, notes, args.quick, args.jobs, wall, ptxas_version,
                          args.cached_only)
    md = markdown(report)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, args.name + ".md"), "w") as f:
        f.write(md)
    write_json(report, os.path.join(args.out, args.name + ".json"))
    print(md)
    s = report["summary"]
    return 1 if s["failing"] or s["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
