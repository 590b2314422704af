"""Attention dropout in the Triton kernels: the one definition of the mask they all regenerate.

The mask is that of seqcore/reference/dropout.py: Philox-4x32-10 keyed by the 64-bit seed,
counters (c0, c1, c2, c3) = (key position j, query position i, b * Hq + h, 0); probability
P[b, h, i, j] is kept iff (word0 >> 1) >= threshold in signed 32-bit arithmetic, with
threshold = min(floor(p * 2**31), 2**31 - 1). tl.philox is that generator, bit for bit. It is
counter-based, so the forward and both backward kernels recompute the same mask from the seed:
nothing is stored.

Kernel arguments (from dropout_args): HAS_DROPOUT (tl.constexpr, so kernels without dropout
compile as before), the seed, the threshold and 1 / (1 - p). The seed goes in as a uint64
parameter that is never specialized (annotate it `seed: tl.uint64` and list it in the kernel's
do_not_specialize): every seed, 0 .. 2**64 - 1, runs the same compiled kernel, and a new seed
per training step compiles nothing. The threshold (0 .. 2**31 - 1) is an int32, also never
specialized. The kernels apply 1 / (1 - p) once to float32 values (the output and dV sums, dP),
not to each half-precision P~ before its dot: the same product, and no float16 overflow as p
nears 1.
"""
import triton
import triton.language as tl

from seqcore.reference.dropout import threshold as _threshold

# what the kernels list in @triton.jit(do_not_specialize=...): see the module docstring
NO_SPECIALIZE = ("seed", "drop_threshold")


def dropout_args(p):
    """(HAS_DROPOUT, seed, threshold, 1 / (1 - p)) kernel arguments for AttnParams p; without
    dropout the runtime ones are placeholders the kernels never read."""
    if not p.dropout_p:
        return False, 0, 0, 1.0
    # the threshold exactly as the reference computes it, so both keep the same probabilities
    return (True, int(p.dropout_seed) % 2**64, _threshold(p.dropout_p),
            1.0 / (1.0 - float(p.dropout_p)))


@triton.jit
def dropout_keep(seed, q_pos, k_pos, bh, threshold):
    """(len(q_pos), len(k_pos)) bool: which probabilities of the tile are kept.

    q_pos (M,), k_pos (N,): int32 query and key positions within their sequence; bh: b * Hq + h
    (batch element or packed sequence b, query head h), a scalar or an (M, 1) column (tiles
    whose rows mix heads, as the split-KV decode kernel's); threshold: int32 from dropout_args.
    """
    c0 = k_pos[None, :] + q_pos[:, None] * 0       # all four counters as (M, N) int32 tiles
    c1 = q_pos[:, None] + k_pos[None, :] * 0
    c2 = c0 * 0 + bh.to(tl.int32)
    word0, _, _, _ = tl.philox(seed, c0, c1, c2, c0 * 0)
    # uint32 >> 1 is a logical shift: 31 bits, so the signed compare of the spec is exact
    return (word0 >> 1).to(tl.int32, bitcast=True) >= threshold
