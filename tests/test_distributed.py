"""seqcore.distributed.ring_attention against single-process seqcore.attention.

The multi-process tests spawn 2 and 4 gloo processes once each (a module-scoped fixture);
every worker runs all CASES on its shard (forward and backward) and saves its results, and
the tests compare the unsharded results with seqcore.attention on the full sequence, outputs
and gradients, here in the parent process. The rendezvous is a file in tmp (gloo's own sockets
stay on loopback), every collective has a timeout and the spawn has a deadline.
The schedule itself (which kernel calls a ring step makes) is also checked without processes,
mask against mask, for many layouts, windows and world sizes.
"""
import os
from datetime import timedelta

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

from conftest import assert_close  # noqa: E402

import seqcore  # noqa: E402
from seqcore import distributed as sd  # noqa: E402

HAS_GLOO = dist.is_available() and dist.is_gloo_available()
needs_gloo = pytest.mark.skipif(not HAS_GLOO, reason="torch.distributed with gloo is unavailable")

WORLD_SIZES = (2, 4)
SPAWN_DEADLINE_S = 150   # the whole spawn, all cases; gloo ops time out sooner
COLLECTIVE_TIMEOUT_S = 60

# One case: dtype, (B, Hq, Hkv, S_local, D, Dv), options. S_local is per rank (the global
# sequence is W times longer); odd sizes, GQA and D != Dv are spread over the cases.
CASES = {
    "f64-full-contig-gqa": ("float64", (1, 4, 2, 5, 8, 6), dict(causal=False)),
    "f64-causal-contig-gqa": ("float64", (2, 4, 2, 5, 8, 6), dict(causal=True)),
    "f64-causal-zigzag-gqa": ("float64", (1, 4, 2, 6, 5, 7), dict(causal=True, layout="zigzag")),
    "f64-full-zigzag": ("float64", (1, 2, 2, 6, 7, 3), dict(causal=False, layout="zigzag")),
    "f64-window-contig": ("float64", (1, 4, 2, 5, 4, 4), dict(window=(3, 2))),
    "f64-causal-window-contig": ("float64", (1, 2, 1, 5, 4, 5), dict(causal=True, window=(4, -1))),
    "f64-causal-window-zigzag": ("float64", (1, 4, 2, 6, 6, 4),
                                 dict(causal=True, window=(5, -1), layout="zigzag")),
    "f64-window-zigzag-softcap": ("float64", (1, 2, 2, 4, 3, 3),
                                  dict(window=(2, 3), softcap=2.5, scale=0.7, layout="zigzag")),
    "f32-causal-zigzag": ("float32", (2, 2, 2, 8, 16, 16), dict(causal=True, layout="zigzag")),
    "f32-full-contig-softcap": ("float32", (1, 4, 1, 7, 16, 9), dict(softcap=3.0)),
    "f32-causal-contig": ("float32", (1, 4, 2, 9, 12, 12), dict(causal=True)),
    "f16-causal-zigzag-gqa": ("float16", (1, 4, 2, 6, 8, 8), dict(causal=True, layout="zigzag")),
}
SUBGROUP_CASE = "f64-causal-zigzag-gqa"  # also run on a subgroup of global ranks {1, 3}


def _dtype(name):
    return getattr(torch, name)


def _inputs(case, world_size):
    """Full-sequence q, k, v and an upstream gradient, the same in every process."""
    dtype, (B, Hq, Hkv, S, D, Dv), _ = CASES[case]
    g = torch.Generator().manual_seed(sum(map(ord, case)) + world_size)
    S_full = S * world_size

    def make(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(_dtype(dtype))

    return (make(B, Hq, S_full, D), make(B, Hkv, S_full, D), make(B, Hkv, S_full, Dv),
            make(B, Hq, S_full, Dv))


def _options(case):
    opts = dict(CASES[case][2])
    return opts.pop("layout", "contiguous"), opts


def _ring_run(case, world_size, rank, group=None):
    """(out, dq, dk, dv) of this rank's shard."""
    layout, opts = _options(case)
    q, k, v, dout = (sd.shard(x, rank, world_size, layout) for x in _inputs(case, world_size))
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    out = sd.ring_attention(q, k, v, group=group, layout=layout, **opts)
    out.backward(dout)
    return tuple(t.detach() for t in (out, q.grad, k.grad, v.grad))


def _worker(rank, world_size, init_file, out_dir):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        results = {case: _ring_run(case, world_size, rank) for case in CASES}
        # an explicit group: with 4 processes, global ranks {1, 3} are group ranks {0, 1}
        # (every rank creates every group); with 2, a second group of the same ranks
        members = [[0, 2], [1, 3]] if world_size == 4 else [[0, 1]]
        groups = [dist.new_group(m) for m in members]
        group = groups[rank % len(groups)]
        results["subgroup"] = _ring_run(SUBGROUP_CASE, 2, dist.get_rank(group), group)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(world_size, tmp):
    import time

    import torch.multiprocessing as mp

    ctx = mp.spawn(_worker, args=(world_size, str(tmp / "rendezvous"), str(tmp)),
                   nprocs=world_size, join=False)
    deadline = time.monotonic() + SPAWN_DEADLINE_S
    while not ctx.join(timeout=1.0):  # raises, with the worker's traceback, if one fails
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            pytest.fail(f"ring_attention workers ({world_size} processes) ran past "
                        f"{SPAWN_DEADLINE_S} s")
    return [torch.load(tmp / f"rank{r}.pt") for r in range(world_size)]


@pytest.fixture(scope="module", params=WORLD_SIZES, ids=lambda w: f"W{w}")
def ring_results(request, tmp_path_factory):
    """(world_size, [per-rank results]) from one spawn of world_size gloo processes."""
    if not HAS_GLOO:
        pytest.skip("torch.distributed with gloo is unavailable")
    W = request.param
    return W, _spawn(W, tmp_path_factory.mktemp(f"ring{W}"))


def _expected(case, world_size):
    """(out, dq, dk, dv) of single-process seqcore.attention on the full sequence."""
    layout, opts = _options(case)
    q, k, v, dout = _inputs(case, world_size)
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    out = seqcore.attention(q, k, v, **opts)
    out.backward(dout)
    return layout, (out.detach(), q.grad, k.grad, v.grad)


def _compare(got_shards, case, world_size):
    layout, expected = _expected(case, world_size)
    for i, name in enumerate(("out", "dq", "dk", "dv")):
        got = sd.unshard([shards[i] for shards in got_shards], layout)
        assert_close(got, expected[i], grad=i > 0, name=f"{case} W={world_size} {name}")


@needs_gloo
@pytest.mark.parametrize("case", list(CASES))
def test_ring_attention_matches_attention(ring_results, case):
    W, results = ring_results
    _compare([r[case] for r in results], case, W)


@needs_gloo
def test_ring_attention_on_a_subgroup(ring_results):
    W, results = ring_results
    for members in ([0, 2], [1, 3]) if W == 4 else ([0, 1],):
        _compare([results[r]["subgroup"] for r in members], SUBGROUP_CASE, 2)


# ----------------------------------------------------------------------------------------------
# The schedule, without processes: the pieces of every (rank, visiting block) pair cover
# exactly the global band


def _global_mask(positions_q, positions_k, left, right):
    d = positions_k[None, :] - positions_q[:, None]
    visible = torch.ones(d.shape, dtype=torch.bool)
    if left >= 0:
        visible &= d >= -left
    if right >= 0:
        visible &= d <= right
    return visible


def _piece_mask(pieces, s_local):
    """The (S_local, S_local) mask the pieces compute, in local coordinates."""
    from seqcore._torch import _band

    mask = torch.zeros(s_local, s_local, dtype=torch.int32)
    for p in pieces:
        assert p.left >= -1 and p.right >= -1 and p.q1 > p.q0 and p.k1 > p.k0, p
        mask[p.q0:p.q1, p.k0:p.k1] += _band(p.q1 - p.q0, p.k1 - p.k0, p.left, p.right, "cpu")
    return mask


WINDOWS = [(-1, -1), (-1, 0), (0, 0), (3, 2), (2, -1), (-1, 3), (5, 0), (1, 7), (0, -1)]


@pytest.mark.parametrize("layout", sd.LAYOUTS)
def test_plans_cover_the_global_band(layout):
    for W in (1, 2, 3, 4):
        for s_local in (2, 4, 6) if layout == "zigzag" else (1, 3, 5):
            S = W * s_local
            for left, right in WINDOWS:
                steps = sd._ring_steps(layout, W, s_local, left, right)
                for rank in range(W):
                    pq = sd.shard_positions(rank, W, S, layout)
                    for step in range(W):
                        source = (rank - step) % W
                        want = _global_mask(pq, sd.shard_positions(source, W, S, layout),
                                            left, right)
                        pieces = sd._plan(layout, W, rank, source, s_local, left, right)
                        got = _piece_mask(pieces, s_local)
                        where = f"{layout} W={W} S_local={s_local} window=({left}, {right}) " \
                                f"rank {rank} step {step}"
                        assert got.max() <= 1, f"{where}: pieces overlap"
                        assert torch.equal(got.bool(), want), where
                        if step >= steps:
                            assert not want.any(), f"{where}: a needed step is skipped"


def test_zigzag_causal_plan_is_one_call_per_step():
    W, s_local = 4, 8
    for rank in range(W):
        for source in range(W):
            pieces = sd._plan("zigzag", W, rank, source, s_local, -1, 0)
            assert len(pieces) == 1, (rank, source, pieces)
            p = pieces[0]
            size = (p.q1 - p.q0) * (p.k1 - p.k0)
            assert size == (s_local ** 2 if source == rank else s_local ** 2 // 2)


def test_sliding_window_skips_steps():
    # keys at most 3 positions back: with S_local = 5 only the own and the previous block
    assert sd._ring_steps("contiguous", 8, 5, 3, 0) == 2
    assert sd._ring_steps("contiguous", 8, 5, -1, 0) == 8
    assert sd._ring_steps("contiguous", 8, 5, 3, -1) == 8  # right unbounded: wraps around


# ----------------------------------------------------------------------------------------------
# Layout helpers


@pytest.mark.parametrize("layout", sd.LAYOUTS)
def test_shard_unshard_round_trip(layout):
    W, S = 4, 16
    x = torch.arange(2 * 3 * S * 5, dtype=torch.float32).reshape(2, 3, S, 5)
    shards = [sd.shard(x, r, W, layout) for r in range(W)]
    assert torch.equal(sd.unshard(shards, layout), x)
    for r, s in enumerate(shards):
        assert torch.equal(s, x[:, :, sd.shard_positions(r, W, S, layout)])
    pos = torch.cat([sd.shard_positions(r, W, S, layout) for r in range(W)])
    assert sorted(pos.tolist()) == list(range(S))
    if layout == "zigzag":
        assert sd.shard_positions(1, W, S, layout).tolist() == [2, 3, 12, 13]
    seq_last = x.transpose(1, 2).contiguous()  # another dim
    parts = [sd.shard(seq_last, r, W, layout, dim=1) for r in range(W)]
    assert torch.equal(sd.unshard(parts, layout, dim=1), seq_last)


def test_shard_errors():
    x = torch.zeros(1, 2, 10, 4)
    with pytest.raises(ValueError, match="layout"):
        sd.shard(x, 0, 2, "ring")
    with pytest.raises(ValueError, match="equal"):
        sd.shard(x, 0, 4, "contiguous")
    with pytest.raises(ValueError, match="equal"):
        sd.shard(x, 0, 2, "zigzag")  # 10 tokens are not 4 chunks
    with pytest.raises(ValueError, match="rank"):
        sd.shard(x, 2, 2)
    with pytest.raises(TypeError):
        sd.shard(x.numpy(), 0, 2)
    with pytest.raises(ValueError, match="one shape"):
        sd.unshard([x, x[:, :1]])
    with pytest.raises(TypeError):
        sd.unshard([])


# ----------------------------------------------------------------------------------------------
# Bad input: rejected before any communication (no process group exists here)


def _qkv(B=1, Hq=4, Hkv=2, S=6, D=8, Dv=8, dtype=torch.float32):
    return torch.randn(B, Hq, S, D, dtype=dtype), torch.randn(B, Hkv, S, D, dtype=dtype), \
        torch.randn(B, Hkv, S, Dv, dtype=dtype)


@pytest.mark.parametrize("change, error, match", [
    (lambda q, k, v: (q.numpy(), k, v), TypeError, "torch.Tensor"),
    (lambda q, k, v: (q[0], k, v), ValueError, "S_local"),
    (lambda q, k, v: (q, k[:, :, :5], v[:, :, :5]), ValueError, "same S_local"),
    (lambda q, k, v: (q, k, v[:, :, :5]), ValueError, "k and v"),
    (lambda q, k, v: (q[..., :4], k, v), ValueError, "head dim D"),
    (lambda q, k, v: (q[:, :3], k, v), ValueError, "multiple of kv heads"),
    (lambda q, k, v: (q, k.transpose(0, 1).contiguous().transpose(0, 1), v), None, None),
    (lambda q, k, v: (q.double(), k, v), TypeError, "one dtype"),
    (lambda q, k, v: (q.int(), k.int(), v.int()), TypeError, "floating point"),
    (lambda q, k, v: (q[:, :, :0], k[:, :, :0], v[:, :, :0]), ValueError, "empty"),
])
def test_bad_tensors(change, error, match):
    q, k, v = change(*_qkv())
    if error is None:  # valid input gets as far as asking for the process group
        with pytest.raises(RuntimeError, match="init_process_group"):
            sd.ring_attention(q, k, v)
        return
    with pytest.raises(error, match=match):
        sd.ring_attention(q, k, v)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(layout="ring"), ValueError, "layout"),
    (dict(layout="zigzag"), ValueError, "even S_local"),
    (dict(window=3), TypeError, "window"),
    (dict(window=(2, -3)), ValueError, "window"),
    (dict(causal=1), TypeError, "causal"),
    (dict(softcap=-1.0), ValueError, "softcap"),
    (dict(backend="cuda"), ValueError, "backend"),
])
def test_bad_options(kwargs, error, match):
    q, k, v = _qkv(S=5)
    with pytest.raises(error, match=match):
        sd.ring_attention(q, k, v, **kwargs)


def test_needs_an_initialized_process_group():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group exists in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        sd.ring_attention(*_qkv())
