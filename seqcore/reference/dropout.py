"""Attention dropout: which probabilities are kept, the definition every backend reproduces.

A counter-based generator, so a backward regenerates the forward's mask from the seed alone
(nothing is stored): Philox-4x32 with 10 rounds (Salmon et al., SC'11; the generator of
Triton's tl.philox and of cuRAND), keyed by the 64-bit seed (k0 = its low 32 bits, k1 = its
high 32 bits), counters

    c0 = j (the key's position in its sequence), c1 = i (the query's position),
    c2 = b * Hq + h (batch element or packed sequence b, query head h), c3 = 0.

Of the four 32-bit outputs, word 0 decides: with r = word0 >> 1 (31 bits, so every backend
compares in signed 32-bit arithmetic) and threshold = min(floor(p * 2**31), 2**31 - 1),
probability P[b, h, i, j] is kept iff r >= threshold, and kept ones are scaled by 1 / (1 - p).
The log-sum-exp is that of the probabilities before dropout.
"""
import numpy as np

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_LO = np.uint64(0xFFFFFFFF)


def philox4x32(seed, c0, c1, c2, c3, rounds=10):
    """The four output words (uint32 arrays, broadcast shape) of Philox-4x32-`rounds`."""
    seed = int(seed) & (2**64 - 1)
    k0, k1 = np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32)
    c0, c1, c2, c3 = np.broadcast_arrays(*(np.asarray(c, dtype=np.uint32) for c in (c0, c1, c2, c3)))
    c0, c1, c2, c3 = (c.astype(np.uint32) for c in (c0, c1, c2, c3))
    with np.errstate(over="ignore"):
        for _ in range(rounds):
            p0 = c0.astype(np.uint64) * _M0  # the 64-bit products, high and low halves
            p2 = c2.astype(np.uint64) * _M1
            hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), (p0 & _LO).astype(np.uint32)
            hi2, lo2 = (p2 >> np.uint64(32)).astype(np.uint32), (p2 & _LO).astype(np.uint32)
            c0, c1, c2, c3 = hi2 ^ c1 ^ k0, lo2, hi0 ^ c3 ^ k1, lo0
            k0, k1 = k0 + _W0, k1 + _W1
    return c0, c1, c2, c3


def threshold(p):
    """The 31-bit integer threshold of dropout probability p (see the module docstring)."""
    return min(int(np.floor(float(p) * 2.0**31)), 2**31 - 1)


def keep_mask(seed, p, b, h, Hq, q_pos, k_pos):
    """(len(q_pos), len(k_pos)) bool: kept probabilities of batch element (or packed sequence)
    b, query head h, for query positions q_pos and key positions k_pos."""
    i = np.asarray(q_pos, dtype=np.int64)[:, None]
    j = np.asarray(k_pos, dtype=np.int64)[None, :]
    word0 = philox4x32(seed, j, i, b * Hq + h, 0)[0]
    return (word0 >> np.uint32(1)).astype(np.int64) >= threshold(p)


def dropout_scale(B, Hq, Sq, Sk, p, seed, first_batch=0):
    """(B, Hq, Sq, Sk) float64: the factor each probability is multiplied by (0 where dropped,
    1 / (1 - p) where kept), batch elements numbered from first_batch; ones when p == 0."""
    if not p:
        return np.ones((B, Hq, Sq, Sk))
    keep = np.zeros((B, Hq, Sq, Sk), dtype=bool)
    for b in range(B):
        for h in range(Hq):
            keep[b, h] = keep_mask(seed, p, first_batch + b, h, Hq, np.arange(Sq), np.arange(Sk))
    return keep / (1.0 - float(p))
