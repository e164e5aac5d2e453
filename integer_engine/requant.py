"""Requantization: from an integer accumulator to the next layer's activation codes.

What a layer does after its MACs is the float epilogue (`epilogue.py`, docs/model-format.md): a
fixed sequence of float32 operations that ends in a rounding to `n` levels. It is monotone in the
accumulator, so it is exactly a set of FINN-style integer thresholds per output channel c:

    code = #{t in 1..n : d * acc >= d * T[c, t]}      d = +1 (non-decreasing) or -1 (non-increasing)

`thresholds` finds each T by bisection over the integers, evaluating the epilogue itself at every
probe, never an algebraic inverse: T[c, t] is the smallest (d = +1; the largest for d = -1)
accumulator whose code reaches t. The engine then never touches floats on this path, and agrees
with the epilogue on every integer accumulator of the range by construction, whatever the
rounding rule, as long as the code is monotone.
"""
from __future__ import annotations

from typing import Callable

import numba
import numpy as np
from numba import njit, prange

from integer_engine.bitpack import plane_word
from integer_engine.epilogue import activation_code, affine
from integer_engine.errors import EngineError


def epilogue_thresholds(scale: np.float32, bias: np.ndarray, bn_scale: np.ndarray,
                        bn_shift: np.ndarray, alpha: np.float32, n: int, rule: str,
                        acc_lo: int, acc_hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(T (C, n) int64, direction (C,) int8) reproducing `activation_code(affine(acc))` on every
    integer acc in [acc_lo, acc_hi]. Direction -1 where the code falls over the range (a negative
    gamma), read off the epilogue itself at the range's ends: the sign of the float32 product
    scale * bn_scale would be wrong where that product underflows to -0.0 or 0.0."""
    consts = [np.asarray(v, dtype=np.float32) for v in (scale, bias, bn_scale, bn_shift, alpha)]
    if not all(np.all(np.isfinite(v)) for v in consts):
        raise EngineError("requantization constants are not finite (check alphas and batch-norm variance)")
    if not (consts[0] >= 0 and consts[4] > 0):  # scale 0: all-zero 1-bit weights (mean|w| = 0)
        raise EngineError("requantization needs a scale >= 0 and a positive clip level alpha")
    check_no_overflow([(scale, bias, bn_scale, bn_shift, acc_lo, acc_hi)], alpha, n)
    code = epilogue_code(scale, bias, bn_scale, bn_shift, alpha, n, rule)
    direction = monotone_direction(code, consts[2].size, acc_lo, acc_hi)
    th = thresholds(code, direction, n, acc_lo, acc_hi)
    wrong = threshold_mismatch(code, th, direction, acc_lo, acc_hi)
    if wrong.any():  # only a code that is not monotone gets here
        raise EngineError(f"no integer thresholds reproduce the float epilogue of channel "
                          f"{int(np.flatnonzero(wrong)[0])}; please report this as a bug")
    return th, direction


def epilogue_code(scale, bias, bn_scale, bn_shift, alpha, n: int, rule: str
                  ) -> Callable[[np.ndarray], np.ndarray]:
    """acc (C, k) int64, row c for channel c -> the float epilogue's codes (C, k)."""
    def code(acc: np.ndarray) -> np.ndarray:
        return activation_code(affine(acc, scale, bias, bn_scale, bn_shift, channel_axis=0),
                               alpha, n, rule)
    return code


def monotone_direction(code: Callable[[np.ndarray], np.ndarray], channels: int, acc_lo: int,
                       acc_hi: int) -> np.ndarray:
    """(C,) int8: +1 where a monotone `code` is non-decreasing on [acc_lo, acc_hi], -1 where it
    falls; its values at the two ends decide (a constant channel counts as +1)."""
    ends = code(np.tile(np.array([[acc_lo, acc_hi]], np.int64), (channels, 1)))
    return np.where(ends[:, 1] >= ends[:, 0], 1, -1).astype(np.int8)


def threshold_mismatch(code: Callable[[np.ndarray], np.ndarray], th: np.ndarray,
                       direction: np.ndarray, acc_lo: int, acc_hi: int) -> np.ndarray:
    """(C,) bool: True where thresholds `th` with `direction` (+-1) do not give `code(acc)` for
    some integer acc in [acc_lo, acc_hi]. Exact for any monotone `code` (up or down) without
    trying every acc: the count #{t : d*acc >= d*T[c, t]} is constant between its steps, which
    lie between T - d and T, so agreeing at both ends of the range and at every T and T - d
    (clipped to the range) means agreeing everywhere; a wrong direction fails at an end."""
    th = np.asarray(th, dtype=np.int64)
    d = np.asarray(direction, dtype=np.int64)[:, None]
    channels = th.shape[0]
    ends = np.tile(np.array([[acc_lo, acc_hi]], np.int64), (channels, 1))
    probes = np.clip(np.concatenate([ends, th, th - d], axis=1), acc_lo, acc_hi)
    return np.any(apply_thresholds(probes, th, np.asarray(direction), channel_axis=0)
                  != code(probes), axis=1)


def check_no_overflow(terms: list[tuple], alpha: np.float32, n: int) -> None:
    """Refuse an epilogue that overflows float32 anywhere on its range: tinypact would compute
    inf or NaN codes there (inf - inf, 0 * inf), which no thresholds reproduce. Each term is
    (scale, bias, bn_scale, bn_shift, lo, hi); an affine is monotone, so its values at lo and hi
    bound it, the sums of those bounds bound an add's sum, and `v = y * n <= alpha * n`."""
    with np.errstate(over="ignore", invalid="ignore"):
        ends = [affine(np.array([[lo], [hi]]), s, b, g, h, channel_axis=1)
                for s, b, g, h, lo, hi in terms]
        low = sum(e.min(axis=0) for e in ends)
        high = sum(e.max(axis=0) for e in ends)
        top = np.float32(alpha) * np.float32(n)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.isfinite(top)):
        raise EngineError("the float epilogue overflows float32 on this layer's range (trained "
                          "values too large, e.g. a diverged run): retrain with a lower learning rate")


def thresholds(code: Callable[[np.ndarray], np.ndarray], direction: np.ndarray, n: int,
               acc_lo: int, acc_hi: int) -> np.ndarray:
    """Integer thresholds T (C, n) int64 of a monotone code function, by exact search.

    `code(acc)` maps an int64 array (C, n) of accumulators, row c for channel c, to their codes
    (the epilogue with channel axis 0); it must be non-decreasing in acc where direction[c] = +1
    and non-increasing where it is -1. Then
        d = +1:  T[c, t-1] = min{acc in [lo, hi] : code(acc) >= t}   (hi + 1 if none)
        d = -1:  T[c, t-1] = max{acc in [lo, hi] : code(acc) >= t}   (lo - 1 if none)
    and for every integer acc in [lo, hi]: code(acc) = #{t : d*acc >= d*T[c, t-1]}.
    """
    direction = np.asarray(direction)
    channels = direction.shape[0]
    t = np.arange(1, n + 1, dtype=np.int64)[None, :]
    up = np.broadcast_to((direction >= 0)[:, None], (channels, n))
    # The answer lies in [low, high]; the sentinel end means "no accumulator reaches level t".
    low = np.where(up, acc_lo, acc_lo - 1).astype(np.int64)
    high = np.where(up, acc_hi + 1, acc_hi).astype(np.int64)
    while np.any(low < high):
        # Rounded towards the side that stays a real accumulator: mid is always in [lo, hi].
        mid = np.where(up, (low + high) // 2, (low + high + 1) // 2)
        reached = code(mid) >= t
        active = low < high
        new_low = np.where(up, np.where(reached, low, mid + 1), np.where(reached, mid, low))
        new_high = np.where(up, np.where(reached, mid, high), np.where(reached, high, mid - 1))
        low, high = np.where(active, new_low, low), np.where(active, new_high, high)
    return low


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
def count_reached(v, signed_th, o):  # pragma: no cover - compiled
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


@njit(cache=True, inline="always")
def count_codes(v, signed_th, by_t, cols, codes, row):  # pragma: no cover - compiled
    """codes[row, c] = #{t : signed_th[c, t] <= v[c]} for c < cols, for any threshold count: up
    to 16 in a pass over the columns each, more by bisection (`count_reached`). The fused
    kernels' general case; their common counts (1, 3, 7, 15) have constant loops of their own."""
    n_th = by_t.shape[0]
    if n_th <= 16:
        for c in range(cols):
            codes[row, c] = 0
        for q in range(n_th):
            for c in range(cols):
                codes[row, c] += np.uint8(v[c] >= by_t[q, c])
    else:
        last = signed_th.shape[0] - 1
        for c in range(cols):
            codes[row, c] = count_reached(v[c], signed_th, min(c, last))


@njit(cache=True, inline="always")
def threshold_block(total, corr, m0, scale, signed_th, by_t, negate, pixels, out, v, codes):  # pragma: no cover
    """Codes of a block of a fused GEMM + requantization kernel, stored into NCHW out[img, o, p]
    for rows m = m0 + r = img * pixels + p: with x = scale * total[r, c] - corr[r] (corr =
    offset * rowsum),

        code[r, c] = #{t : d[c] * x >= signed_th[c, t]}          (d * x = (x XOR m) - m)

    by_t = signed_th.T and negate (m = -1 where d = -1, else 0) are padded to the block's width
    (`block_thresholds`; padded columns are never stored), so the loops over c vectorise. One,
    three and fifteen thresholds (1-, 2- and 4-bit outputs) are counted in one pass, other counts
    up to 16 in a pass each, more by bisection. v (cols,) int64 and codes (rows, cols) uint8 are the caller's scratch."""
    rows = total.shape[0]
    cols = min(total.shape[1], (out.shape[1] + 7) // 8 * 8)  # the channels, to whole 8-lane vectors
    n_th = by_t.shape[0]
    for r in range(rows):
        cr = corr[r]
        if n_th == 1:
            for c in range(cols):
                x = scale * np.int64(total[r, c]) - cr
                codes[r, c] = np.uint8(((x ^ negate[c]) - negate[c]) >= by_t[0, c])
        elif n_th == 3:
            for c in range(cols):
                x = scale * np.int64(total[r, c]) - cr
                y = (x ^ negate[c]) - negate[c]
                codes[r, c] = np.uint8(y >= by_t[0, c]) + np.uint8(y >= by_t[1, c]) + np.uint8(y >= by_t[2, c])
        elif n_th == 15:  # 4-bit outputs: a constant count, so the loop over c vectorises
            for c in range(cols):
                x = scale * np.int64(total[r, c]) - cr
                y = (x ^ negate[c]) - negate[c]
                code = np.uint8(0)
                for q in range(15):
                    code += np.uint8(y >= by_t[q, c])
                codes[r, c] = code
        else:
            for c in range(cols):
                x = scale * np.int64(total[r, c]) - cr
                v[c] = (x ^ negate[c]) - negate[c]
            count_codes(v, signed_th, by_t, cols, codes, r)
    for r in range(min(rows, out.shape[0] * pixels - m0)):
        img = (m0 + r) // pixels
        p = m0 + r - img * pixels
        for o in range(out.shape[1]):
            out[img, o, p] = codes[r, o]


# The per-block helpers of the fused kernels (`threshold_block`, `window_codes`, `store_codes`,
# and in kernels/ `_plane_row_sum`, `_conv_row_starts`, `_store_rows`) are inlined into them:
# called, each paid an argument copy and a reference-count increment and decrement per array per
# block (SVHN conv0 10.0 vs 12.5-13.0 ms, conv1 at W1A1 5.0 vs 6.6-7.4, alternating processes).
@njit(cache=True, inline="always")
def _window_max(total, r0, c, scale, c0, c1, c2, c3, m):  # pragma: no cover - compiled
    """d * x of the 4 rows r0.. of a 2x2 window, the largest (`window_codes`): the max of
    (x XOR m), then - m (subtracting m keeps the order)."""
    x0 = (scale * np.int64(total[r0, c]) - c0) ^ m
    x1 = (scale * np.int64(total[r0 + 1, c]) - c1) ^ m
    x2 = (scale * np.int64(total[r0 + 2, c]) - c2) ^ m
    x3 = (scale * np.int64(total[r0 + 3, c]) - c3) ^ m
    return max(max(x0, x1), max(x2, x3)) - m


# `window_codes` for 2x2 windows counting 1 or 3 thresholds (1- and 2-bit codes) in the
# pass that finds each window's max: one function per count, called once per block, so that each
# is one straight vector loop (inside `window_codes`'s loop over windows, under its branches and
# with the values through v, the same arithmetic cost SVHN conv0's epilogue at W1A1 twice as
# much, 5.5 vs 2.8 ms on one thread).
@njit(cache=True, inline="always")
def _pooled_1(total, corr, scale, by_t, negate, cols, codes):  # pragma: no cover - compiled
    for g in range(total.shape[0] // 4):
        r0 = 4 * g
        c0, c1, c2, c3 = corr[r0], corr[r0 + 1], corr[r0 + 2], corr[r0 + 3]
        for c in range(cols):
            y = _window_max(total, r0, c, scale, c0, c1, c2, c3, negate[c])
            codes[g, c] = np.uint8(y >= by_t[0, c])


@njit(cache=True, inline="always")
def _pooled_3(total, corr, scale, by_t, negate, cols, codes):  # pragma: no cover - compiled
    for g in range(total.shape[0] // 4):
        r0 = 4 * g
        c0, c1, c2, c3 = corr[r0], corr[r0 + 1], corr[r0 + 2], corr[r0 + 3]
        for c in range(cols):
            y = _window_max(total, r0, c, scale, c0, c1, c2, c3, negate[c])
            codes[g, c] = np.uint8(y >= by_t[0, c]) + np.uint8(y >= by_t[1, c]) + np.uint8(y >= by_t[2, c])


# The same without pooling (SVHN conv1 at W1A1, one thread: its epilogue 3.4 -> 2.0 ms).
@njit(cache=True, inline="always")
def _rows_1(total, corr, scale, by_t, negate, cols, codes):  # pragma: no cover - compiled
    for r in range(total.shape[0]):
        cr = corr[r]
        for c in range(cols):
            m = negate[c]
            codes[r, c] = np.uint8(((scale * np.int64(total[r, c]) - cr) ^ m) - m >= by_t[0, c])


@njit(cache=True, inline="always")
def _rows_3(total, corr, scale, by_t, negate, cols, codes):  # pragma: no cover - compiled
    for r in range(total.shape[0]):
        cr = corr[r]
        for c in range(cols):
            m = negate[c]
            y = ((scale * np.int64(total[r, c]) - cr) ^ m) - m
            codes[r, c] = np.uint8(y >= by_t[0, c]) + np.uint8(y >= by_t[1, c]) + np.uint8(y >= by_t[2, c])


@njit(cache=True, inline="always")
def window_codes(total, corr, group, scale, signed_th, by_t, negate, v, codes):  # pragma: no cover
    """Codes of a fused conv kernel's block with an optional max-pool: for windows g of `group`
    consecutive rows (1: no pooling; 4: the 4 pixels of a 2x2 window) and x = scale * total[r, c]
    - corr[r],

        codes[g, c] = #{t : max_{r in window g} d[c] * x[r, c] >= signed_th[c, t]}

    which is the max-pool of the rows' codes: the count is non-decreasing in d * x, so the
    largest code is the code of the largest d * x (and pooling first saves `group` - 1 counts).
    Arguments as `threshold_block`, except that v (cols,) has by_t's dtype: int32 thresholds
    (`block_thresholds` with a bound) compare 16 lanes per vector instead of 8. 1, 3, 7 and 15
    thresholds (1- to 4-bit outputs) are counted in one pass of constant length; 1 or 3 in the
    pass that finds the value (`_pooled_1`, `_pooled_3` for 2x2 windows, `_rows_1`, `_rows_3`
    without). Columns past the channels hold junk (never stored)."""
    rows = total.shape[0]
    cols = min(total.shape[1], (signed_th.shape[0] + 15) // 16 * 16)
    n_th = by_t.shape[0]
    if group == 4 and n_th == 1:
        _pooled_1(total, corr, scale, by_t, negate, cols, codes)
        return
    if group == 4 and n_th == 3:
        _pooled_3(total, corr, scale, by_t, negate, cols, codes)
        return
    if group == 1 and n_th == 1:
        _rows_1(total, corr, scale, by_t, negate, cols, codes)
        return
    if group == 1 and n_th == 3:
        _rows_3(total, corr, scale, by_t, negate, cols, codes)
        return
    for g in range(rows // group):
        r0 = g * group
        if group == 4:  # the window's 4 rows in one pass (a pass per row cost twice as much)
            c0, c1, c2, c3 = corr[r0], corr[r0 + 1], corr[r0 + 2], corr[r0 + 3]
            for c in range(cols):
                v[c] = _window_max(total, r0, c, scale, c0, c1, c2, c3, negate[c])
        else:
            cr = corr[r0]
            for c in range(cols):
                x = scale * np.int64(total[r0, c]) - cr
                v[c] = (x ^ negate[c]) - negate[c]  # |d * x| <= acc_bound: exact in by_t's dtype
            for r in range(r0 + 1, r0 + group):
                cr = corr[r]
                for c in range(cols):
                    x = scale * np.int64(total[r, c]) - cr
                    v[c] = max(v[c], (x ^ negate[c]) - negate[c])
        if n_th == 1:
            for c in range(cols):
                codes[g, c] = np.uint8(v[c] >= by_t[0, c])
        elif n_th == 3:
            for c in range(cols):
                codes[g, c] = np.uint8(v[c] >= by_t[0, c]) + np.uint8(v[c] >= by_t[1, c]) + np.uint8(v[c] >= by_t[2, c])
        elif n_th == 7:
            for c in range(cols):
                code = np.uint8(0)
                for q in range(7):
                    code += np.uint8(v[c] >= by_t[q, c])
                codes[g, c] = code
        elif n_th == 15:
            for c in range(cols):
                code = np.uint8(0)
                for q in range(15):
                    code += np.uint8(v[c] >= by_t[q, c])
                codes[g, c] = code
        else:
            count_codes(v, signed_th, by_t, cols, codes, g)


# Output layouts of the fused conv kernels (`kernels.conv_output`): the codes as the next layer
# reads them, so that no separate pass re-lays them out.
NCHW, NHWC, PLANES = 0, 1, 2


@njit(cache=True, inline="always")
def next_pixel(z, y, img, width, height):  # pragma: no cover - compiled
    """(x, y, image) of the pixel after (z, y, img) in NCHW order, in a width x height grid: the
    kernels step from row to row with it instead of dividing per row."""
    z += 1
    if z == width:
        z = 0
        y += 1
        if y == height:
            y = 0
            img += 1
    return z, y, img


@njit(cache=True, inline="always")
def store_codes(codes, count, first, dest, as_bytes, layout):  # pragma: no cover - compiled
    """Rows 0..count-1 of `codes` (outputs first.. in NCHW pixel order: image i // P, pixel i % P)
    into `dest` (uint64, 1-D; `as_bytes` the same memory as uint8, passed in because a view made
    here would share its reference count between the kernel's threads) laid out by `layout` =
    [kind, images, channels, height, width, padding, bits, words] (int64), kind:

    - NCHW: uint8 (images, channels, height * width);
    - NHWC: uint8 (images, height + 2 padding, width + 2 padding, channels), zero border;
    - PLANES: uint64 (bits, images, height + 2 padding, width + 2 padding, words): bit l of word q
      is bit b of channel 64 q + l (`kernels.channel_packed_planes`), zero border and lanes; codes'
      rows must then hold 64 * words bytes (`bitpack.plane_word` reads whole 64-byte runs)."""
    kind, images, channels, height, width, pad, bits, words = (layout[0], layout[1], layout[2], layout[3],
                                                             layout[4], layout[5], layout[6], layout[7])
    pixels = height * width
    hp, wp = height + 2 * pad, width + 2 * pad
    # (image, y, x) of output `first` by division, the next ones by stepping: a division per code
    # row cost as much as the rest of the store (SVHN conv0).
    img = first // pixels
    y = (first - img * pixels) // width
    z = first - img * pixels - y * width
    for i in range(count):
        if i:
            z, y, img = next_pixel(z, y, img, width, height)
        p = y * width + z
        if kind == NCHW:
            for o in range(channels):
                as_bytes[(img * channels + o) * pixels + p] = codes[i, o]
            continue
        at = (y + pad) * wp + z + pad  # the pixel in its padded image
        if kind == NHWC:
            # An unsigned index spares Numba's negative-index wraparound, which kept LLVM from
            # vectorising this copy of a row's contiguous bytes (the copy alone, 2 rows of 48:
            # 188-235 -> 82-102 cycles; SVHN at W4A4, batch 512: conv1 21.9 -> 16.4 ms).
            at_byte = np.uint64((img * hp * wp + at) * channels)
            for o in range(channels):
                as_bytes[at_byte + np.uint64(o)] = codes[i, o]
            continue
        for b in range(bits):
            for q in range(words):
                word = plane_word(codes, i, 64 * q, b)
                if channels < 64 * (q + 1):  # lanes past the channels hold junk codes
                    word &= (np.uint64(1) << np.uint64(channels - 64 * q)) - np.uint64(1)
                dest[((b * images + img) * hp * wp + at) * words + q] = word


def block_thresholds(th: np.ndarray, direction: np.ndarray, width: int, bound: int | None = None) -> tuple:
    """(signed_th, by_t, negate) for `threshold_block`, by_t and negate padded to `width` columns.

    With `bound` (the layer's acc_bound: every |accumulator| <= bound) below 2**31 - 1, by_t and
    negate are int32 and by_t clipped to [-bound, bound + 1], which changes no count (every d * acc
    lies in [-bound, bound]); the fused kernels then compare 16 lanes at a time."""
    d = np.asarray(direction).astype(np.int64)
    signed_th = np.ascontiguousarray(th * d[:, None])
    dtype = np.int32 if bound is not None and bound < 2**31 - 1 else np.int64
    by_t = np.zeros((th.shape[1], width), dtype)
    clipped = signed_th if dtype == np.int64 else np.clip(signed_th, -bound, bound + 1)
    by_t[:, :th.shape[0]] = clipped.T
    negate = np.zeros(width, dtype)
    negate[:th.shape[0]] = np.where(d < 0, -1, 0)
    return signed_th, by_t, negate


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
                    codes[p, o] = count_reached(v[o], signed_th, o)
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
                codes[p] = count_reached(v[p], signed_th, o)
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
