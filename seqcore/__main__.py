"""`python -m seqcore [backend ...]`: list the backends here and check each (or the named
ones) against the float64 reference on fresh random inputs (a few seconds); the C backend at
every ISA level this CPU runs (only the forced one under SEQCORE_CPU_ISA). Exit status 1 if
any check fails."""
import os
import sys
import time

import numpy as np

import seqcore
from seqcore import reference

# max |error| allowed against the float64 reference, by compute dtype
TOL = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2}


def _attention_cases(rng, dtype):
    def r(*s):
        return rng.standard_normal(s).astype(dtype)

    q, k, v = r(2, 4, 33, 24), r(2, 2, 40, 24), r(2, 2, 40, 20)
    yield "attention", dict(q=q, k=k, v=v), {}
    yield "attention causal+lse", dict(q=q, k=k, v=v), dict(causal=True, return_lse=True)
    yield "attention window+softcap+bias", dict(q=q, k=k, v=v), dict(
        window=(8, 2), softcap=5.0, bias=r(1, 4, 33, 40))


def _kvcache_case(rng, dtype):
    """A paged cache (a permuted block table), ragged lengths, two new keys, GQA, causal."""
    def r(*s):
        return rng.standard_normal(s).astype(dtype)

    table = rng.permutation(8)[:6].reshape(3, 2).astype(np.int32)
    lens = np.array([0, 17, 30], np.int32)
    arrays = dict(q=r(3, 4, 2, 24), k_cache=r(8, 2, 16, 24), v_cache=r(8, 2, 16, 20),
                  k=r(3, 2, 2, 24), v=r(3, 2, 2, 20))
    return arrays, dict(cache_seqlens=lens, block_table=table, causal=True)


def _recurrent_cases(rng, dtype):
    T, B, I, H = 6, 3, 5, 7

    def r(*s):
        return (0.5 * rng.standard_normal(s)).astype(dtype)

    lengths = np.array([6, 0, 3])
    yield "lstm", "lstm", (r(T, B, I), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H), r(B, H), r(B, H)), \
        dict(lengths=lengths)
    yield "gru reverse", "gru", (r(T, B, I), r(3 * H, I), r(3 * H, H), r(3 * H), r(3 * H), r(B, H)), \
        dict(lengths=lengths, reverse=True)
    yield "lstm_cell", "lstm_cell", (r(B, I), r(B, H), r(B, H), r(4 * H, I), r(4 * H, H)), {}
    yield "gru_cell", "gru_cell", (r(B, I), r(B, H), r(3 * H, I), r(3 * H, H), r(3 * H), r(3 * H)), {}


def _max_err(got, want):
    """Largest |error| over all outputs, in units of each output's own dtype tolerance
    (lse is float32 even for float64 inputs), times the tolerance of the first output."""
    got, want = _flatten(got), _flatten(want)
    worst = 0.0
    for g, w in zip(got, want):
        dtype = str(g.dtype).replace("torch.", "")
        g = g.detach().cpu().double().numpy() if hasattr(g, "detach") else np.asarray(g, np.float64)
        w = np.asarray(w, np.float64)
        fin = np.isfinite(w)
        if not np.array_equal(np.isfinite(g), fin):
            return float("inf")
        err = float(np.max(np.abs(g[fin] - w[fin]), initial=0.0))
        worst = max(worst, err / TOL[dtype])
    return worst * TOL[str(got[0].dtype).replace("torch.", "")]


def _flatten(x):
    return tuple(_flatten_item(x))


def _flatten_item(x):
    if isinstance(x, tuple):
        for y in x:
            yield from _flatten_item(y)
    else:
        yield x


def _convert(backend, arrays, indices=False):
    """arrays as the backend takes them: torch tensors for "triton" (float arrays, and index
    arrays too when `indices`)."""
    if backend != "triton":
        return arrays
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    kinds = "fiu" if indices else "f"
    return {k: torch.from_numpy(v).to(device) if isinstance(v, np.ndarray) and v.dtype.kind in kinds else v
            for k, v in arrays.items()}


def _check(backend, dtype, rng, label):
    failures = 0
    for name, arrays, opts in _attention_cases(rng, dtype):
        want = reference.attention(**arrays, **opts)
        got = seqcore.attention(**_convert(backend, arrays), **_convert(backend, opts), backend=backend)
        failures += _report(label, dtype, name, lambda: _max_err(got, want))
    arrays, index = _kvcache_case(rng, dtype)
    want = reference.attention_with_kvcache(**{n: a.copy() for n, a in arrays.items()}, **index)
    got = seqcore.attention_with_kvcache(**_convert(backend, arrays), **_convert(backend, index, True),
                                         backend=backend)
    failures += _report(label, dtype, "attention_with_kvcache (paged)", lambda: _max_err(got, want))
    for name, op, args, opts in _recurrent_cases(rng, dtype):
        want = getattr(reference, op)(*args, **opts)
        targs = tuple(_convert(backend, {"a": a})["a"] for a in args)
        got = getattr(seqcore, op)(*targs, **opts, backend=backend)
        failures += _report(label, dtype, name, lambda: _max_err(got, want))
    return failures


def _report(label, dtype, name, err_fn):
    try:
        err = err_fn()
    except NotImplementedError as exc:
        print(f"  {label:11s} {dtype:8s} {name:32s} not implemented: {exc}")
        return 1
    ok = err <= TOL[dtype]
    print(f"  {label:11s} {dtype:8s} {name:32s} max error {err:.2e}  {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


def _runs(backend):
    """(label, setup) for each configuration of `backend` to check: one per ISA level for C."""
    if backend != "c":
        return [(backend, None)]
    from seqcore import _c

    levels = [_c.isa()] if os.environ.get(_c.ISA_ENV) else list(_c.isa_levels())
    return [(f"c[{level}]", lambda level=level: _c.set_isa(level)) for level in levels]


def main(argv=()):
    print(f"seqcore {seqcore.__version__}")
    available = seqcore.available_backends()
    for name, what in seqcore.backend_status().items():
        print(f"  {name:7s} {what if name in available else 'unavailable: ' + what}")
    rng = np.random.default_rng()
    failures = 0
    start = time.perf_counter()
    for backend in available:
        if argv and backend not in argv:
            continue
        for label, setup in _runs(backend):
            if setup:
                setup()
            dtypes = ["float32", "float64"] if backend != "triton" else ["float32"]
            for dtype in dtypes:
                try:
                    failures += _check(backend, dtype, rng, label)
                except Exception as exc:  # report and go on with the other backends
                    print(f"  {label:11s} {dtype:8s} ERROR {type(exc).__name__}: {exc}")
                    failures += 1
    print(f"checked against seqcore.reference in {time.perf_counter() - start:.1f} s: "
          f"{'all ok' if not failures else f'{failures} failure(s)'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
