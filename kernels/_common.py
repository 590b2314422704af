"""Small Triton helpers shared by the attention kernels (forward, decode and backward).

Their signatures are kept stable so that other kernels (the backward too) can import them.

Conventions: scores are kept in base 2 inside the kernels (multiplied by LOG2E, so exp2 and
log2 replace exp and log); the band is the causal/window mask with off = Sk - Sq, key j visible
to query i iff (no left bound or j >= i + off - window_left) and (no right bound or
j <= i + off + window_right). BAND_LEFT / BAND_RIGHT are tl.constexpr flags saying whether that
side is bounded, so an unbounded side costs nothing.
"""
import os

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): exp(x) == exp2(x * LOG2E)
LN2 = 0.6931471805599453    # ln(2): log(x) == log2(x) * LN2


def interpreted():
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotune_enabled():
    """False when SEQCORE_AUTOTUNE=0: the GPU kernels then try only their default tile config
    (plus a small fallback where it does not fit), instead of compiling and timing every
    config for each new key -- for test runs, where compile time dominates."""
    return os.environ.get("SEQCORE_AUTOTUNE", "1") not in ("", "0")


def fits_shared_memory(elt_bytes, block_m, block_n, block_d, block_dv, num_stages,
                       limit=227 * 1024, bias_bytes=0):
    """Whether a q tile plus num_stages k and v tiles (+1 KB for barriers) fit an H100's shared
    memory per block: what Triton 3.6 allocates for the forward kernels, checked against
    compiled sm_90 kernels for float16/float32, D 64..256, BLOCK_N 64/128, 2-4 stages.
    bias_bytes: the element size of an additive bias, whose BLOCK_M x BLOCK_N tiles are
    pipelined num_stages - 1 deep (bfloat16 D64 128x128 at 4 stages with a bias: 240 KB
    compiled, this count 241)."""
    tiles = block_m * block_d + max(num_stages, 1) * block_n * (block_d + block_dv)
    bias = max(num_stages - 1, 0) * block_m * block_n * bias_bytes
    return elt_bytes * tiles + bias + 1024 <= limit


def tf32_requested():
    """Whether SEQCORE_TF32=1 asks float32 dots for TensorFloat-32 (the one place it is read)."""
    return os.environ.get("SEQCORE_TF32", "0") == "1"


def dot_precision(dtype_is_fp32):
    """The tl.dot input_precision for a kernel's inputs: "ieee" (exact float32 products) unless
    the inputs are float32 and SEQCORE_TF32=1 asks for TensorFloat-32 (faster, ~1e-3 relative).
    Half-precision inputs ignore it."""
    return "tf32" if dtype_is_fp32 and tf32_requested() else "ieee"


# float32 "ieee" dots (exact products, SEQCORE_TF32 unset) lower to FMAs on CUDA cores, each
# thread holding whole rows of both operands next to its share of the accumulators: a much
# tighter register budget than the tensor-core tiles'. fma_tile_fits is the budget of the
# forward kernels' online-softmax tile (attn_fwd_block: the dense forward, the split-KV decode;
# the KV-cache kernel has its own rule, kernels/attention_kvcache.block_n).
FMA_TILE_ELEMENTS_PER_THREAD = 24


def fma_dots(dtype_is_fp32, precision):
    """Whether a kernel's tl.dots run on FMAs: float32 inputs with "ieee" precision."""
    return dtype_is_fp32 and precision == "ieee"


def tf32_dots(dtype_is_fp32, precision):
    """Whether a kernel's tl.dots are TF32 tensor-core dots: float32 inputs, "tf32" precision
    (32-bit operands in registers: tighter budgets than half precision's)."""
    return dtype_is_fp32 and precision == "tf32"


def fma_tile_fits(block_m, block_n, block_dv, num_warps):
    """Whether an attn_fwd_block tile with FMA dots (fma_dots) fits the registers: at most
    FMA_TILE_ELEMENTS_PER_THREAD float32 elements a thread of the output accumulator
    (BLOCK_M x BLOCK_DV) and the score tile (BLOCK_M x BLOCK_N); a bias or softcap does not
    count. The launchers apply it to their own short lists (kernels/attention._fma_configs,
    kernels/attention_decode._prune_split), whose every pick compiled clean.
    Calibrated on sm_90 (ptxas of Triton 3.6, float32 "ieee", 3 stages; registers/spilled
    bytes; the whole table: FMA_CALIBRATION in tests/test_sm90_report.py):
      count 12-24, clean: forward D64 64x32 w8 92/0 (GQA+bias+softcap+window 110/0), D64 32x64
        w8 74/0, D128 32x64 w8 113/0 (bias+softcap 98/0), D256 16x32 w8 111/0; decode (64 rows
        a kv head) D64 32x64 w8 78/0, D128 32x64 w8 114/0, D128 16x64 w4 203/0, D256 16x32 w8
        112/0
      count 32-128, spilled: forward D64 64x64 w8 255/444, D64 32x64 w4 255/436, D128 64x32 w8
        255/1048, D128 32x32 w4 255/1348, D64 128x64 w4 (the old pick) 32/61 KB, D128 64x32 w4
        (the old fallback) 168/4.9 KB; decode D64 64x64 w4 (the old pick) 255/2.9 KB, D128
        64x64 w4 32/57 KB, D256 16x32 w4 168/2 KB.
    Below the count ptxas still spilled a few tiles the lists leave out: D128 16x32 at 4 warps
    (forward 255/584), and at 8 warps some with few registers (D128 16x32 2 stages 64/4, D256
    16x64 1 stage 255/176; decode D128 16x64 with one query row 80/40, D256 16x32 2 stages
    80/8)."""
    return block_m * (block_dv + block_n) <= FMA_TILE_ELEMENTS_PER_THREAD * 32 * num_warps


def head_block(d):
    """A head dim padded for tl.dot: the next power of two, at least 16."""
    return max(16, triton.next_power_of_2(int(d)))


@triton.jit
def tanh(x):
    """tanh(x) for float32 x, overflow-safe (exp2 -> inf gives exactly +-1); absolute error
    ~1e-7 (the softcap multiplies it, so the score error stays ~softcap * 1e-7)."""
    return 1.0 - 2.0 / (tl.exp2(x * (2.0 * 1.4426950408889634)) + 1.0)


@triton.jit
def band_mask(offs_q, offs_k, seqlen_q, seqlen_k, window_left, window_right,
              BAND_LEFT: tl.constexpr, BAND_RIGHT: tl.constexpr):
    """(len(offs_q), len(offs_k)) bool: key offs_k[j] exists (< seqlen_k) and lies in the band
    of query offs_q[i]. Positions count from the start of the sequence. Rows past seqlen_q are
    not masked here (their results are never stored)."""
    visible = offs_k[None, :] < seqlen_k
    diag = offs_q[:, None] + (seqlen_k - seqlen_q)
    if BAND_LEFT:
        visible = visible & (offs_k[None, :] >= diag - window_left)
    if BAND_RIGHT:
        visible = visible & (offs_k[None, :] <= diag + window_right)
    return visible


@triton.jit
def key_range(first_q, last_q, seqlen_q, seqlen_k, window_left, window_right,
              BAND_LEFT: tl.constexpr, BAND_RIGHT: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key blocks that queries first_q..last_q (inclusive) need: (lo, full_lo, full_hi, hi).

    Keys outside [lo, hi) are invisible to all of those rows (skipped); lo, full_lo, full_hi are
    multiples of BLOCK_N, lo <= full_lo <= full_hi <= hi, and every block in [full_lo, full_hi)
    is whole (inside seqlen_k) and visible to every one of those rows, so it needs no mask.
    The edge blocks [lo, full_lo) and [full_hi, hi) need band_mask.
    """
    off = seqlen_k - seqlen_q
    lo = first_q * 0          # a tensor zero of first_q's type (first_q may be a constant)
    full_lo = lo
    hi = lo + seqlen_k
    full_hi = hi
    if BAND_LEFT:
        lo = tl.maximum(first_q + off - window_left, 0)
        full_lo = tl.maximum(last_q + off - window_left, 0)
    if BAND_RIGHT:
        hi = tl.maximum(tl.minimum(last_q + off + window_right + 1, seqlen_k), 0)
        full_hi = tl.maximum(tl.minimum(first_q + off + window_right + 1, seqlen_k), 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    hi = tl.maximum(hi, lo)
    full_lo = tl.minimum(tl.maximum(((full_lo + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, lo), hi)
    full_hi = tl.maximum(tl.minimum((full_hi // BLOCK_N) * BLOCK_N, hi), full_lo)
    return lo, full_lo, full_hi, hi


@triton.jit
def split_key_range(lo, full_lo, full_hi, hi, split_lo, split_len):
    """A key_range cut to the keys [split_lo, split_lo + split_len) of one split (split-KV
    kernels); the order lo <= full_lo <= full_hi <= hi is kept (empty when they miss)."""
    lo = tl.maximum(lo, split_lo)
    hi = tl.maximum(tl.minimum(hi, split_lo + split_len), lo)
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.maximum(tl.minimum(full_hi, hi), full_lo)
    return lo, full_lo, full_hi, hi


@triton.jit
def scores(q, k, qk_scale, softcap_log2,
           SOFTCAP: tl.constexpr, PRECISION: tl.constexpr):
    """Base-2 scores of a (M, D) query tile against a (D, N) transposed key tile, float32.

    Without SOFTCAP: q.k * qk_scale with qk_scale = scale * LOG2E.
    With SOFTCAP: softcap_log2 * tanh(q.k * qk_scale) with qk_scale = scale / softcap and
    softcap_log2 = softcap * LOG2E (i.e. LOG2E * softcap * tanh(scale * q.k / softcap)).
    """
    s = tl.dot(q, k, input_precision=PRECISION)
    if SOFTCAP:
        s = softcap_log2 * tanh(s * qk_scale)
    else:
        s = s * qk_scale
    return s


@triton.jit
def safe_max(m):
    """m with -inf replaced by 0, to subtract from scores: exp2(-inf - 0) = 0 instead of the
    NaN of exp2(-inf - -inf) in rows that have seen no key yet."""
    return tl.where(m == float("-inf"), 0.0, m)
