"""Requantization: from an integer accumulator to the next layer's activation codes.

Everything a layer does after its MACs (conv bias, batch norm, the input and weight scales, the
PACT clip and the rounding to `n = 2**bits - 1` levels) is an affine map followed by the
project's rounding rule, per output channel c:

    v(acc) = acc * mul[c] + add[c]                  (float64, evaluated in exactly this order)
    code   = clip(floor(v + 1/2), 0, n)             (round half up, ARCHITECTURE.md)

The float64 reference evaluates this formula directly. The engine never touches floats: export
turns it into FINN-style integer thresholds, `code = #{t in 1..n : d*acc >= d*T[c, t]}` with
direction d = +1 (mul >= 0) or -1 (mul < 0). Each T is found by bisection over the whole
accumulator range using that same float64 formula, so the two agree on every reachable integer
accumulator by construction (the float formula is monotone in acc, because IEEE multiplication
and addition are monotone).

Residual adds combine two integer tensors, so thresholds on one integer do not apply; there the
multipliers are gemmlowp-style fixed point with a common right shift S (see `fixed_point_add`).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from integer_engine.errors import EngineError


def requant_float(acc: np.ndarray, mul: np.ndarray, add: np.ndarray, n: int) -> np.ndarray:
    """The reference formula `clip(floor(acc*mul + add + 1/2), 0, n)` in float64.

    `acc` holds integer values (any dtype); mul/add broadcast against it (per channel).
    """
    v = np.asarray(acc, dtype=np.float64) * mul
    v = v + add
    return np.clip(np.floor(v + 0.5), 0, n)


def thresholds(mul: np.ndarray, add: np.ndarray, n: int, acc_lo: int, acc_hi: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Integer thresholds T (C, n) int64 and directions d (C,) int8 reproducing `requant_float`.

    For d = +1, T[c, t-1] = min{acc in [lo, hi] : code(acc) >= t} (hi + 1 if none);
    for d = -1, T[c, t-1] = max{acc in [lo, hi] : code(acc) >= t} (lo - 1 if none).
    Then for every integer acc in [lo, hi]: code(acc) = #{t : d*acc >= d*T[c, t-1]}.
    """
    mul = np.asarray(mul, dtype=np.float64)
    add = np.asarray(add, dtype=np.float64)
    if not (np.all(np.isfinite(mul)) and np.all(np.isfinite(add))):
        raise EngineError("requantization scale is not finite (check alphas and batch-norm variance)")
    channels = mul.shape[0]
    t = np.arange(1, n + 1, dtype=np.float64)[None, :]
    m = np.broadcast_to(mul[:, None], (channels, n))
    b = np.broadcast_to(add[:, None], (channels, n))
    up = m >= 0

    def code(acc: np.ndarray) -> np.ndarray:
        return requant_float(acc, m, b, n)

    # Bisection invariant: the answer lies in [low, high]; the sentinel end is "none reachable".
    low = np.where(up, acc_lo, acc_lo - 1).astype(np.int64)
    high = np.where(up, acc_hi + 1, acc_hi).astype(np.int64)
    # Start from a narrow bracket around the real-number solution of acc*mul + add = t - 1/2 where
    # the exact formula confirms it holds the answer; elsewhere keep the full range. Only speed.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        guess = (t - 0.5 - b) / m
    finite = np.isfinite(guess) & (np.abs(guess) < 2.0**62)
    guess = np.clip(np.where(finite, np.floor(guess), 0), low, high).astype(np.int64)
    lo_b, hi_b = np.maximum(guess - 2, low), np.minimum(guess + 2, high)
    up_lower = (lo_b == low) | (code(lo_b - 1) < t)
    up_upper = (hi_b == high) | (code(hi_b) >= t)
    down_lower = (lo_b == low) | (code(lo_b) >= t)
    down_upper = (hi_b == high) | (code(hi_b + 1) < t)
    ok = finite & np.where(up, up_lower & up_upper, down_lower & down_upper)
    low, high = np.where(ok, lo_b, low), np.where(ok, hi_b, high)
    while np.any(low < high):
        mid = np.where(up, (low + high) // 2, (low + high + 1) // 2)
        ok = code(mid) >= t
        active = low < high
        new_low = np.where(up, np.where(ok, low, mid + 1), np.where(ok, mid, low))
        new_high = np.where(up, np.where(ok, mid, high), np.where(ok, high, mid - 1))
        low, high = np.where(active, new_low, low), np.where(active, new_high, high)
    direction = np.where(mul >= 0, 1, -1).astype(np.int8)
    return low.astype(np.int64), direction


def apply_thresholds(acc: np.ndarray, th: np.ndarray, direction: np.ndarray, channel_axis: int = 1
                     ) -> np.ndarray:
    """Integer-only requantization: code = #{t : d*acc >= d*T[c, t]} per channel (uint8 result)."""
    acc = np.asarray(acc)
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    d = direction.astype(np.int64).reshape(shape)
    signed = acc.astype(np.int64) * d
    signed_th = th * direction.astype(np.int64)[:, None]  # non-decreasing along t
    n = th.shape[1]
    if n <= 16:
        out = np.zeros(acc.shape, dtype=np.uint8)
        for t in range(n):
            out += signed >= signed_th[:, t].reshape(shape)
        return out
    moved = np.moveaxis(signed, channel_axis, 0)
    out = np.empty(moved.shape, dtype=np.uint8)
    for c in range(moved.shape[0]):
        out[c] = np.searchsorted(signed_th[c], moved[c], side="right")
    return np.moveaxis(out, 0, channel_axis)


@njit(cache=True)
def _count_reached(v, signed_th, o):  # pragma: no cover - compiled
    """#{t : signed_th[o, t] <= v} by bisection (signed_th[o] is non-decreasing)."""
    lo = 0
    hi = signed_th.shape[1]
    while lo < hi:
        mid = (lo + hi) >> 1
        if signed_th[o, mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    return lo


# Both kernels: the accumulator of (image, channel o, pixel p) is
#     scale * A - offset * rowsum[img, p],   code = #{t : signed_th[o, t] <= direction[o] * it},
# written to out (N, O, P) uint8. Up to 16 thresholds are counted in passes that vectorise
# over a contiguous run of values; more are found by bisection per value.
@njit(parallel=True, cache=True)
def _threshold_rows_first(acc, scale, offset, rowsum, signed_th, direction, out):
    # pragma: no cover - compiled.  A = acc[img*P + p, o]: a patches x weights GEMM (N*P, O).
    images, channels, rows = out.shape
    n = signed_th.shape[1]
    by_t = np.ascontiguousarray(signed_th.T)
    # d * x as (x XOR m) - m with m = 0 or -1: vectorises where an int64 multiply does not.
    negate = np.empty(channels, np.int64)
    for o in range(channels):
        negate[o] = -1 if direction[o] < 0 else 0
    for img in prange(images):
        base = img * rows
        codes = np.zeros((rows, channels), np.uint8)
        v = np.empty(channels, np.int64)
        for p in range(rows):
            corr = offset * rowsum[img, p]
            for o in range(channels):
                # |acc| <= acc_bound < 2**31 (validated), so the int32 step is exact; it converts
                # a float GEMM's result with one vector instruction.
                x = scale * np.int64(np.int32(acc[base + p, o])) - corr
                v[o] = (x ^ negate[o]) - negate[o]
            if n <= 16:
                for t in range(n):
                    for o in range(channels):
                        codes[p, o] += np.uint8(v[o] >= by_t[t, o])
            else:
                for o in range(channels):
                    codes[p, o] = _count_reached(v[o], signed_th, o)
        for o in range(channels):
            for p in range(rows):
                out[img, o, p] = codes[p, o]


@njit(parallel=True, cache=True)
def _threshold_channels_first(acc, scale, offset, rowsum, signed_th, direction, out):
    # pragma: no cover - compiled.  A = acc[o, img*P + p]: a weights x patches GEMM (O, N*P).
    images, channels, rows = out.shape
    n = signed_th.shape[1]
    for task in prange(images * channels):
        img = task // channels
        o = task - img * channels
        d = np.int64(direction[o])
        base = img * rows
        v = np.empty(rows, np.int64)
        for p in range(rows):
            v[p] = (scale * np.int64(acc[o, base + p]) - offset * rowsum[img, p]) * d
        codes = np.zeros(rows, np.uint8)
        if n <= 16:
            for t in range(n):
                th = signed_th[o, t]
                for p in range(rows):
                    codes[p] += np.uint8(v[p] >= th)
        else:
            for p in range(rows):
                codes[p] = _count_reached(v[p], signed_th, o)
        out[img, o, :] = codes


def threshold_codes(acc: np.ndarray, th: np.ndarray, direction: np.ndarray, images: int,
                    layout: str = "rows_first", scale: int = 1, offset: int = 0,
                    rowsum: np.ndarray | None = None) -> np.ndarray:
    """Integer thresholds on a GEMM result, straight to NCHW codes (uint8 (N, O, P)).

    The accumulator is `scale * acc - offset * rowsum` (the popcount GEMM's `2 a.j - n_w
    rowsum(a)` correction, applied on the fly) with `acc` laid out as "rows_first" (N*P, O)
    (patches x weights) or "channels_first" (O, N*P) (weights x patches). `acc` holds integers
    (int64, or floats from an exact BLAS GEMM); rowsum: int64 (N, P) or None.
    """
    channels = th.shape[0]
    rows = acc.size // channels // images
    if rowsum is None:
        rowsum = np.zeros((images, rows), dtype=np.int64)
    if numba.config.DISABLE_JIT:  # pure-Python loops would take minutes: same result via NumPy
        full = full_accumulator(acc, images, layout, scale, offset, rowsum, channels)
        return apply_thresholds(full, th, direction, 1)
    signed_th = np.ascontiguousarray(th * direction.astype(np.int64)[:, None])
    out = np.empty((images, channels, rows), dtype=np.uint8)
    previous = numba.get_num_threads()
    if acc.size < 1 << 16:  # waking the thread pool costs more than a small layer
        numba.set_num_threads(1)
    try:
        kernel = _threshold_channels_first if layout == "channels_first" else _threshold_rows_first
        kernel(acc, np.int64(scale), np.int64(offset), rowsum, signed_th, direction.astype(np.int64), out)
    finally:
        numba.set_num_threads(previous)
    return out


def full_accumulator(acc: np.ndarray, images: int, layout: str, scale: int, offset: int,
                     rowsum: np.ndarray | None, channels: int) -> np.ndarray:
    """The int64 accumulator (N, O, P) that `threshold_codes` thresholds (see there)."""
    if layout == "channels_first":
        full = acc.astype(np.int64).reshape(channels, images, -1).transpose(1, 0, 2)
    else:
        full = acc.astype(np.int64).reshape(images, -1, channels).transpose(0, 2, 1)
    full = scale * full
    if rowsum is not None and offset:
        full = full - offset * rowsum[:, None, :]
    return np.ascontiguousarray(full)


def round_half_up_int(x: np.ndarray | float) -> np.ndarray:
    """floor(x + 1/2) as int64 (x float64)."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def fixed_point_add(multipliers: list[np.ndarray], offset: np.ndarray, bounds: list[int]
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """gemmlowp-style fixed point for `v = sum_i x_i * A_i[c] + C[c]`, code = clip(floor(v+1/2), 0, n).

    Returns (M (k, C) int64, K (C,) int64, S) such that the engine and the reference compute
        code = clip((sum_i x_i * M_i[c] + K[c]) >> S, 0, n)      (arithmetic shift = floor)
    with M_i = round_half_up(A_i * 2**S), K = round_half_up(C * 2**S) + 2**(S-1): the +2**(S-1)
    is the "+1/2" of round half up. S is the largest shift keeping every |M| below 2**31, so
    the relative error of each multiplier is at most 2**-31. Export refuses if the worst case
    `sum_i bound_i * max|M_i| + max|K|` could overflow int64.
    """
    a = np.stack([np.asarray(m, dtype=np.float64) for m in multipliers])
    offset = np.asarray(offset, dtype=np.float64)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(offset))):
        raise EngineError("residual add: requantization scale is not finite")
    biggest = float(np.abs(a).max(initial=0.0))
    exponent = math.frexp(biggest)[1] if biggest > 0 else 0  # biggest < 2**exponent
    shift = int(min(62, max(1, 31 - exponent)))
    scale = float(2**shift)
    m_int = round_half_up_int(a * scale)
    k_float = offset * scale
    if np.any(np.abs(k_float) >= 2.0**61):
        raise EngineError("residual add: offset too large for 64-bit fixed point")
    k_int = round_half_up_int(k_float) + (1 << (shift - 1))
    worst = sum(int(b) * int(np.abs(m).max(initial=0)) for b, m in zip(bounds, m_int))
    worst += int(np.abs(k_int).max(initial=0))
    if worst >= 2**62:
        raise EngineError(f"residual add: fixed-point sum could reach {worst}, overflowing int64")
    return m_int, k_int, shift


def fixed_point_add_apply(inputs: list[np.ndarray], m_int: np.ndarray, k_int: np.ndarray, shift: int,
                          n: int, channel_axis: int = 1) -> np.ndarray:
    """The engine side of `fixed_point_add`: int64 multiply-adds, an arithmetic shift, a clip."""
    shape = [1] * inputs[0].ndim
    shape[channel_axis] = -1
    total = k_int.reshape(shape).astype(np.int64)
    for x, m in zip(inputs, m_int):
        total = total + x.astype(np.int64) * m.reshape(shape)
    return np.clip(total >> shift, 0, n).astype(np.uint8)
