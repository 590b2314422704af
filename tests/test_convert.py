"""float16 <-> float32 conversion by the C kernels (csrc/convert.c), which float16 NumPy
arrays and CPU tensors go through on their way to the float32 kernels and back: bit for bit
NumPy's astype (round to nearest even, subnormals, overflow to inf; NaN stays NaN), at every
ISA level this CPU runs, vector body and scalar tail alike."""
import numpy as np
import pytest

import seqcore
from seqcore import _arrays, _c

pytestmark = [pytest.mark.skipif(bool(_c.status()), reason="the C extension is not built"),
              pytest.mark.usefixtures("every_isa")]


def _same(got, want):
    """Equal bits, NaN matching NaN (payloads may differ: the hardware quiets them)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    bits = np.uint16 if want.dtype == np.float16 else np.uint32
    np.testing.assert_array_equal(got[~nan].view(bits), want[~nan].view(bits))


def test_every_half_widens_exactly():
    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    _same(_c.convert_half(halves, "float32"), halves.astype(np.float32))


@pytest.mark.parametrize("n", [513, 4096 + 7, 200_003])  # (tails; several thread chunks)
def test_floats_narrow_as_numpy_does(rng, n):
    finite = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = finite[np.isfinite(finite)].astype(np.float32)
    finite.sort()
    midpoints = (finite[1:] + finite[:-1]) / 2           # ties: to even
    specials = np.array([np.inf, -np.inf, np.nan, 65504, 65519.996, 65520, 1e6, -0.0, 2**-25,
                         1.5 * 2**-24, 2**-26, 1e-30, 6.1e-5], np.float32)
    scaled = [rng.standard_normal(n).astype(np.float32) * s for s in (1e-7, 1e-5, 1, 3e4, 1e5)]
    x = np.concatenate([finite, midpoints, specials] + scaled)
    x = x[rng.permutation(len(x))][:max(n, len(specials))]
    x[:len(specials)] = specials
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    _same(_c.convert_half(x, "float16"), want)


def test_arrays_cast_takes_views_and_keeps_shapes(rng):
    x = rng.standard_normal((3, 40, 70)).astype(np.float16)[:, ::2, 5:]   # not contiguous
    got = _arrays.astype(x, "float32")
    assert got.flags.c_contiguous
    _same(got, x.astype(np.float32))
    _same(_arrays.astype(got, "float16"), x.astype(np.float32).astype(np.float16))


def test_float16_attention_and_lstm_match_their_float32_computation(rng):
    q, k, v = (rng.standard_normal((2, 4, 60, 32)).astype(np.float16) for _ in range(3))
    got = seqcore.attention(q, k, v, causal=True)
    want = seqcore.attention(*(a.astype(np.float32) for a in (q, k, v)), causal=True)
    _same(got, want.astype(np.float16))
    x = rng.standard_normal((9, 3, 40)).astype(np.float16)
    w_ih, w_hh = (rng.standard_normal((4 * 48, n)).astype(np.float16) * 0.1 for n in (40, 48))
    b = np.zeros(4 * 48, np.float16)
    y, (h, c) = seqcore.lstm(x, w_ih, w_hh, b, b)
    y32, (h32, c32) = seqcore.lstm(*(a.astype(np.float32) for a in (x, w_ih, w_hh, b, b)))
    _same(y, y32.astype(np.float16))
    _same(c, c32.astype(np.float16))


def test_bad_arguments_return_minus_one():
    lib, ffi = _c.load()
    buf16, buf32 = ffi.new("uint16_t[4]"), ffi.new("float[4]")
    assert lib.seqcore_f16_to_f32(ffi.NULL, buf32, 4) == -1
    assert lib.seqcore_f32_to_f16(buf32, ffi.NULL, 4) == -1
    assert lib.seqcore_f16_to_f32(buf16, buf32, -1) == -1
    assert lib.seqcore_f16_to_f32(ffi.NULL, ffi.NULL, 0) == 0   # nothing to convert
