"""Bit-serial GEMMs and convolutions on uint64 bit-planes:

    dot(a, w) = sum_{i,j} 2^(i+j) * popcount(a_i AND w_j)

summed over the 64-bit words of the reduction dimension. One 64-bit AND+POPCNT performs
64 / (abits * wbits) multiply-accumulates, which is where the speed comes from at 1-2 bits.

- scalar (`bitserial_gemm(kernel="scalar")`): one POPCNT per word, 4x4 register tile;
- vector (VPOPCNTDQ): `popcount.popcount_tile`, weights transposed once (`transposed_planes`);
  fused with the requantization (`bitserial_threshold_codes`) and, for convs, with a
  channel-major patch gather read in place (`bitserial_conv_threshold_codes`).
The tiles' plain readings are in popcount.py, beside the vector code.
"""
import numpy as np
from numba import njit, prange

from integer_engine.bitpack import words_for
from integer_engine.errors import EngineError
from integer_engine.kernels.common import (_NO_THRESHOLDS, BLOCKS_PER_TASK, _check_conv_codes, _conv_output_pixel,
                                           _pooled_size, _store_rows, _threads_for, conv_output_size)
from integer_engine.kernels.im2col import conv_word_offsets
from integer_engine.kernels.layout import LaidOut, conv_output
from integer_engine.kernels.packing import _channel_pack_kernel, _check_planes, transposed_planes
from integer_engine.kernels.popcount import TILE_COLS, TILE_ROWS, popcount64, popcount_conv_tile, popcount_tile
from integer_engine.kernels.select import BITSERIAL_KERNEL, SPECIALISED_PAIRS
from integer_engine.requant import block_thresholds, next_pixel, store_codes, threshold_block, window_codes

# Columns of `w` handled together by one pass over an activation row: each loaded activation
# word is reused for 4 output columns while the 4 accumulators stay in registers.
_COLS = 4
# Weight planes are processed in column blocks of about this many bytes so the block stays in
# the L2 cache while every activation row streams past it.
_W_BLOCK_BYTES = 192 * 1024


def _make_bitserial_kernel(fixed_abits: int, fixed_wbits: int):
    """The popcount GEMM kernel, specialised at compile time for one (abits, wbits) pair, or
    generic (plane counts read from the arrays) when both are 0.

    Specialised bit widths are closure constants, so LLVM fully unrolls the plane loops, turns
    the shifts into constant scales (lea) and keeps the 4 column accumulators in registers;
    Numba's cache keys closures by their values, so each pair is compiled once per machine.
    """

    @njit(parallel=True, cache=True)
    def kernel(a, w, n_start, n_stop, out):  # pragma: no cover - compiled
        # a: (abits, M, KW) uint64; w: (wbits, Npad, KW) uint64 with Npad % 4 == 0;
        # out: (M, N) int64 -- columns n_start..min(n_stop, N)-1 are written.
        abits = a.shape[0] if fixed_abits == 0 else fixed_abits
        wbits = w.shape[0] if fixed_wbits == 0 else fixed_wbits
        m_rows = a.shape[1]
        kw = a.shape[2]
        n_cols = out.shape[1]
        for m in prange(m_rows):
            for n in range(n_start, n_stop, 4):
                acc0 = np.uint64(0)
                acc1 = np.uint64(0)
                acc2 = np.uint64(0)
                acc3 = np.uint64(0)
                for k in range(kw):
                    for i in range(abits):
                        ai = a[i, m, k]
                        for j in range(wbits):
                            sh = np.uint64(i + j)
                            acc0 += popcount64(ai & w[j, n, k]) << sh
                            acc1 += popcount64(ai & w[j, n + 1, k]) << sh
                            acc2 += popcount64(ai & w[j, n + 2, k]) << sh
                            acc3 += popcount64(ai & w[j, n + 3, k]) << sh
                out[m, n] = acc0
                if n + 1 < n_cols:
                    out[m, n + 1] = acc1
                if n + 2 < n_cols:
                    out[m, n + 2] = acc2
                if n + 3 < n_cols:
                    out[m, n + 3] = acc3

    return kernel


@njit(parallel=True, cache=True)
def _binary_kernel(a, w, n_start, n_stop, out):  # pragma: no cover - compiled
    """W1A1 case of the kernel above with a 4-row x 4-column register tile: each loaded weight
    word serves four activation rows and each activation word four columns, which matters when
    one AND+POPCNT is a whole 64-MAC step and the loop would otherwise be bound by loads
    (1.2-1.5x the 2x4 tile it replaced on the SVHN conv shapes, measured here)."""
    m_rows = a.shape[1]
    kw = a.shape[2]
    n_cols = out.shape[1]
    for quad in prange((m_rows + 3) // 4):
        m0 = 4 * quad
        # Past the last row the tile repeats it: computed again and written with the same value.
        m1 = min(m0 + 1, m_rows - 1)
        m2 = min(m0 + 2, m_rows - 1)
        m3 = min(m0 + 3, m_rows - 1)
        for n in range(n_start, n_stop, 4):
            acc = np.zeros((4, 4), np.uint64)  # a fresh small array: LLVM keeps it in registers
            for k in range(kw):
                x0 = a[0, m0, k]
                x1 = a[0, m1, k]
                x2 = a[0, m2, k]
                x3 = a[0, m3, k]
                for c in range(4):
                    v = w[0, n + c, k]
                    acc[0, c] += popcount64(x0 & v)
                    acc[1, c] += popcount64(x1 & v)
                    acc[2, c] += popcount64(x2 & v)
                    acc[3, c] += popcount64(x3 & v)
            for c in range(min(4, n_cols - n)):
                out[m0, n + c] = acc[0, c]
                out[m1, n + c] = acc[1, c]
                out[m2, n + c] = acc[2, c]
                out[m3, n + c] = acc[3, c]


@njit(cache=True)
def _generic_tile(a, wt, m0, n0, tile, total):  # pragma: no cover - compiled
    """`popcount_tile` for any plane counts: one single-plane tile per plane pair, shifted and summed
    into columns n0..n0+15 of `total` (`tile`, same shape, is scratch)."""
    total[:, n0:n0 + TILE_COLS] = 0
    for i in range(a.shape[0]):
        for j in range(wt.shape[0]):
            popcount_tile(a, wt, i, j, m0, n0, tile, 1, 1)
            shift = np.uint64(i + j)
            for r in range(TILE_ROWS):
                for c in range(n0, n0 + TILE_COLS):
                    total[r, c] += tile[r, c] << shift


@njit(cache=True)
def _block_scratch(n_pad):  # pragma: no cover - compiled
    """A vector kernel task's scratch: tile and total (TILE_ROWS, n_pad) uint64, corr (TILE_ROWS,)
    and v (n_pad,) int64, codes (TILE_ROWS, n_pad) uint8."""
    return (np.empty((TILE_ROWS, n_pad), np.uint64), np.empty((TILE_ROWS, n_pad), np.uint64),
            np.empty(TILE_ROWS, np.int64), np.empty(n_pad, np.int64), np.empty((TILE_ROWS, n_pad), np.uint8))


def _make_vector_kernel(fixed_abits: int, fixed_wbits: int, fused: bool):
    """The bit-serial GEMM over 512-bit vectors (`popcount.popcount_tile`, VPOPCNTDQ): a 4-row x
    TILE_COLS-column register tile per step, weights transposed once so a tile's columns are vector loads.
    A block of 4 rows x all columns is computed, then stored (int64 GEMM result) or, `fused`,
    turned into codes at once (`requant.threshold_block`) so the accumulator never reaches memory.

    Specialised (abits, wbits) are closure constants, so all plane pairs share one pass over the
    words; generic (both 0) runs the tile once per plane pair and sums the shifted tiles.
    """

    @njit(parallel=True, cache=True)
    def kernel(a, wt, scale, offset, signed_th, by_t, negate, pixels, out):  # pragma: no cover
        # a: (abits, M, KW) uint64 planes; wt: (wbits, KW, Npad) uint64, Npad % TILE_COLS == 0.
        # Not fused: out (M, N) int64, every element written (the threshold arguments unused).
        # Fused: M = images * pixels, out (images, O, pixels) uint8 codes; signed_th, by_t,
        # negate from `requant.block_thresholds`, scale/offset: acc = scale * dot - offset * rowsum.
        m_rows = a.shape[1]
        n_pad = wt.shape[2]
        blocks = (m_rows + TILE_ROWS - 1) // TILE_ROWS
        for task in prange((blocks + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
            tile, total, corr, v, codes = _block_scratch(n_pad)  # once per task
            for t in range(task * BLOCKS_PER_TASK, min(blocks, (task + 1) * BLOCKS_PER_TASK)):
                m0 = t * TILE_ROWS
                for n0 in range(0, n_pad, TILE_COLS):
                    if fixed_abits:
                        popcount_tile(a, wt, 0, 0, m0, n0, total, fixed_abits, fixed_wbits)
                    else:
                        _generic_tile(a, wt, m0, n0, tile, total)
                if fused:
                    for r in range(TILE_ROWS):  # offset * rowsum(a_m): the weight-offset term
                        corr[r] = offset * np.int64(_plane_row_sum(a, min(m0 + r, m_rows - 1)))
                    threshold_block(total, corr, m0, scale, signed_th, by_t, negate, pixels, out, v, codes)
                else:
                    _store_rows(total, m0, out)

    return kernel


def _make_vector_conv_kernel(fixed_abits: int, fixed_wbits: int):
    """`_make_vector_kernel`'s fused kernel for a convolution with the patch gather inside: the
    tiles read each row's patch words in place from the channel-packed planes
    (`channel_packed_planes`, `popcount.popcount_conv_tile`; for the (abits, wbits) pairs without
    a kernel of their own the block's rows are copied into a small buffer first), so the (bits,
    N*OH*OW, KW) planes of `conv_channel_planes` never reach memory. With
    pool == 2 a block is one 2x2 max-pool window (`requant.window_codes`); the codes go to `dest`
    in the next layer's layout (`requant.store_codes`)."""

    @njit(parallel=True, cache=True)
    def kernel(packed, kh, kw, stride, oh_count, ow_count, pool, wt, scale, offset, signed_th, by_t, negate,
               dest, dest_bytes, layout):  # pragma: no cover - compiled
        # packed: (abits, N, Hp, Wp, CW); wt: (wbits, kh*kw*CW, Npad); dest, layout: store_codes's.
        bits, n_images, height, width, words = packed.shape
        group = 1 if pool == 1 else 4
        m_rows = n_images * (oh_count * ow_count if pool == 1 else 4 * (oh_count // 2) * (ow_count // 2))
        n_pad = wt.shape[2]
        run = kw * words  # a kernel row's words: contiguous in packed
        k_words = kh * run
        source = packed.reshape(-1)
        plane_words = n_images * height * width * words
        offsets = conv_word_offsets(kh, run, width * words)
        blocks = (m_rows + TILE_ROWS - 1) // TILE_ROWS
        for task in prange((blocks + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
            # Scratch, once per task; the copied patch rows only where no tile reads them in place.
            rows = np.empty((bits, TILE_ROWS, 0 if fixed_abits else k_words), np.uint64)
            flat = rows.reshape(-1)
            tile, total, corr, _, _ = _block_scratch(n_pad)
            v = np.empty(n_pad, by_t.dtype)
            codes = np.empty((TILE_ROWS, (n_pad + 63) // 64 * 64), np.uint8)  # whole 64-byte runs
            starts = np.zeros(TILE_ROWS, np.int64)
            # The task's rows in order, (image, y, x) by stepping from the first: a division per row
            # cost as much as the popcounts (SVHN conv1 at W1A1, one thread: 1.1 of 9.9 ms).
            img, y0, z0 = _conv_output_pixel(task * BLOCKS_PER_TASK * TILE_ROWS, pool, oh_count, ow_count)
            if pool == 1:
                wy, wz, wy_count, wz_count = y0, z0, oh_count, ow_count
            else:
                wy, wz, wy_count, wz_count = y0 // 2, z0 // 2, oh_count // 2, ow_count // 2
            for t in range(task * BLOCKS_PER_TASK, min(blocks, (task + 1) * BLOCKS_PER_TASK)):
                m0 = t * TILE_ROWS
                for r in range(TILE_ROWS):
                    m = m0 + r
                    row_img = img
                    if pool == 1:
                        y, z = wy, wz
                    else:
                        y, z = 2 * wy + ((m >> 1) & 1), 2 * wz + (m & 1)
                    if m < m_rows - 1 and (pool == 1 or m & 3 == 3):  # on to the next pixel (window)
                        wz, wy, img = next_pixel(wz, wy, img, wz_count, wy_count)
                    if fixed_abits:  # the tile reads the patch in place (`popcount_conv_tile`)
                        starts[r] = ((row_img * height + y * stride) * width + z * stride) * words
                        rowsum = np.uint64(0)
                        for b in range(bits):
                            count = np.uint64(0)
                            for k in range(k_words):
                                count += popcount64(source[b * plane_words + starts[r] + offsets[k]])
                            rowsum += count << np.uint64(b)
                        corr[r] = offset * np.int64(rowsum)
                        continue
                    for b in range(bits):
                        for i in range(kh):
                            src = (((b * n_images + row_img) * height + y * stride + i) * width + z * stride) * words
                            dst = (b * TILE_ROWS + r) * k_words + i * run
                            for u in range(run):
                                flat[dst + u] = source[src + u]
                    corr[r] = offset * np.int64(_plane_row_sum(rows, r))
                for n0 in range(0, n_pad, TILE_COLS):
                    if fixed_abits:
                        popcount_conv_tile(source, starts, offsets, plane_words, wt, n0, total, fixed_abits,
                                           fixed_wbits)
                    else:
                        _generic_tile(rows, wt, 0, n0, tile, total)
                window_codes(total, corr, group, scale, signed_th, by_t, negate, v, codes)
                store_codes(codes, min(TILE_ROWS, m_rows - m0) // group, m0 // group, dest, dest_bytes, layout)

    return kernel


@njit(cache=True, inline="always")
def _plane_row_sum(a, m):  # pragma: no cover - compiled
    """sum_k a[m, k] from bit-planes: sum_i 2^i sum_k popcount(a[i, m, k])."""
    rowsum = np.uint64(0)
    for i in range(a.shape[0]):
        count = np.uint64(0)
        for k in range(a.shape[2]):
            count += popcount64(a[i, m, k])
        rowsum += count << np.uint64(i)
    return rowsum


_BITSERIAL_KERNELS: dict = {("scalar", 1, 1): _binary_kernel}


def _bitserial_kernel(abits: int, wbits: int, kind: str = "scalar"):
    """The compiled kernel for a plane-count pair: kind "scalar", "vector", "fused" (vector +
    thresholds) or "conv" (fused, with the patch gather inside)."""
    key = (kind, abits, wbits) if (abits, wbits) in SPECIALISED_PAIRS else (kind, 0, 0)
    if key not in _BITSERIAL_KERNELS:
        if kind == "scalar":
            _BITSERIAL_KERNELS[key] = _make_bitserial_kernel(*key[1:])
        elif kind == "conv":
            _BITSERIAL_KERNELS[key] = _make_vector_conv_kernel(*key[1:])
        else:
            _BITSERIAL_KERNELS[key] = _make_vector_kernel(*key[1:], fused=kind == "fused")
    return _BITSERIAL_KERNELS[key]


def bitserial_gemm(a_planes: np.ndarray, w_planes: np.ndarray, kernel: str | None = None) -> np.ndarray:
    """Unsigned code GEMM from bit-planes: int64 (M, N) with out[m, n] = sum_k a[m,k] * w[n,k].

    a_planes: uint64 (abits, M, KW); w_planes: uint64 (wbits, N, KW), KW = ceil(K/64), both
    zero-padded past K (as `bit_planes` makes them). Computes
    `sum_{i,j} 2^(i+j) popcount(a_i AND w_j)` with Numba, parallel over M, with the kernel the
    CPU suits (`BITSERIAL_KERNEL`: "vector" with VPOPCNTDQ, else "scalar"; `kernel` forces one).
    Exact: the largest result, K * (2^8-1)^2 < 2^63, fits the uint64 accumulators.
    """
    a_planes = _check_planes(a_planes, "a_planes")
    w_planes = _check_planes(w_planes, "w_planes")
    abits, m_rows, kw = a_planes.shape
    wbits, n_cols, kw_w = w_planes.shape
    if kw != kw_w:
        raise EngineError(
            f"activation and weight planes disagree on the reduction length: {kw} vs {kw_w} words"
        )
    if m_rows == 0 or n_cols == 0 or kw == 0:
        return np.zeros((m_rows, n_cols), dtype=np.int64)
    kind = kernel or BITSERIAL_KERNEL
    if kind == "vector":
        return bitserial_gemm_transposed(a_planes, transposed_planes(w_planes), n_cols)
    out = np.empty((m_rows, n_cols), dtype=np.int64)  # the kernels write every element
    n_pad = -n_cols % _COLS
    if n_pad:  # zero weight rows contribute 0; the kernel skips writing their columns
        w_planes = np.concatenate([w_planes, np.zeros((wbits, n_pad, kw), np.uint64)], axis=1)
    block = max(_COLS, _W_BLOCK_BYTES // (wbits * kw * 8) // _COLS * _COLS)
    kernel = _bitserial_kernel(abits, wbits)
    with _threads_for(m_rows * w_planes.shape[1] * kw * abits * wbits):
        for n_start in range(0, w_planes.shape[1], block):
            kernel(a_planes, w_planes, n_start, min(n_start + block, w_planes.shape[1]), out)
    return out


def bitserial_gemm_transposed(a_planes: np.ndarray, wt: np.ndarray, n_cols: int) -> np.ndarray:
    """`bitserial_gemm` with the vector kernel on weights already transposed by
    `transposed_planes` (the executor does that once per layer): int64 (M, n_cols)."""
    a_planes = _check_planes(a_planes, "a_planes")
    abits, m_rows, kw = a_planes.shape
    if wt.ndim != 3 or wt.dtype != np.uint64 or wt.shape[1] != kw or wt.shape[2] < n_cols \
            or wt.shape[2] % TILE_COLS:
        raise EngineError(f"transposed weight planes {wt.shape} do not fit activations {a_planes.shape} "
                          f"and {n_cols} columns")
    out = np.empty((m_rows, n_cols), dtype=np.int64)  # the kernel writes every element
    if out.size and kw:
        with _threads_for(m_rows * wt.shape[2] * kw * abits * wt.shape[0] // 8):
            _bitserial_kernel(abits, wt.shape[0], "vector")(a_planes, wt, 0, 0, *_NO_THRESHOLDS, 1, out)
    else:
        out[:] = 0
    return out


def bitserial_threshold_codes(a_planes: np.ndarray, wt: np.ndarray, th: np.ndarray, direction: np.ndarray,
                              images: int, scale: int = 1, offset: int = 0, prepared: tuple | None = None
                              ) -> np.ndarray:
    """Codes (images, O, P) uint8 of a bit-serial layer in one pass: per output channel o and
    activation row m = img * P + p,

        acc = scale * sum_k a[m, k] j[o, k] - offset * sum_k a[m, k],   code = #{t : d*acc >= d*T[o, t]}

    (`requant.threshold_codes` on `bitserial_gemm(a_planes, w_planes)`, rows_first), with
    a_planes (abits, images * P, KW) and wt = `transposed_planes(w_planes)`; th (O, n) int64,
    direction (O,) of +-1; `prepared`: `requant.block_thresholds(th, direction, wt.shape[2])`, if
    already made (the executor makes it once per layer)."""
    a_planes = _check_planes(a_planes, "a_planes")
    abits, m_rows, kw = a_planes.shape
    wbits = wt.shape[0]
    channels = th.shape[0]
    if wt.ndim != 3 or wt.dtype != np.uint64 or wt.shape[1] != kw or wt.shape[2] < channels \
            or wt.shape[2] % TILE_COLS:
        raise EngineError(f"transposed weight planes {wt.shape} do not fit activations {a_planes.shape} "
                          f"and {channels} channels")
    out = np.empty((images, channels, m_rows // images), np.uint8)
    if out.size:
        with _threads_for(m_rows * wt.shape[2] * kw * abits * wbits // 8):
            _bitserial_kernel(abits, wbits, "fused")(a_planes, wt, np.int64(scale), np.int64(offset),
                                                     *(prepared or block_thresholds(th, direction, wt.shape[2])),
                                                     m_rows // images, out)
    return out


@njit(parallel=True, cache=True)
def _plane_row_sums(planes, out):  # pragma: no cover - compiled
    bits, rows, kw = planes.shape
    for m in prange(rows):
        total = np.uint64(0)
        for i in range(bits):
            count = np.uint64(0)
            for k in range(kw):
                count += popcount64(planes[i, m, k])
            total += count << np.uint64(i)
        out[m] = total


def plane_row_sums(planes: np.ndarray) -> np.ndarray:
    """Row sums of the codes held in bit-planes: int64 (M,) = sum_i 2^i sum_k popcount(p_i[m, k])."""
    planes = _check_planes(planes, "planes")
    out = np.zeros(planes.shape[1], dtype=np.int64)
    with _threads_for(planes.size):
        _plane_row_sums(planes, out)
    return out


def affine_weight_gemm(
    a_planes: np.ndarray,
    w_planes: np.ndarray,
    scale: int,
    offset: int,
    a_row_sums: np.ndarray | None = None,
) -> np.ndarray:
    """Signed GEMM for weights stored as unsigned codes j with value `w = scale * j - offset`.

        sum_k a[m,k] * (scale * j[n,k] - offset) = scale * dot(a_m, j_n) - offset * rowsum(a_m)

    so one unsigned popcount GEMM plus a per-activation-row correction gives the exact signed
    result. a_row_sums: optional precomputed int64 (M,) sums of the activation codes.
    Returns int64 (M, N).
    """
    dot = bitserial_gemm(a_planes, w_planes)
    if a_row_sums is None:
        a_row_sums = plane_row_sums(a_planes)
    a_row_sums = np.asarray(a_row_sums, dtype=np.int64)
    if a_row_sums.shape != (dot.shape[0],):
        raise EngineError(f"a_row_sums must have shape ({dot.shape[0]},), got {a_row_sums.shape}")
    dot *= int(scale)
    dot -= int(offset) * a_row_sums[:, None]
    return dot


def odd_weight_gemm(
    a_planes: np.ndarray, w_planes: np.ndarray, a_row_sums: np.ndarray | None = None
) -> np.ndarray:
    """GEMM with odd-level weights (DoReFa/SAWB): w = 2j - n, n = 2^wbits - 1, j unsigned codes.

    `dot(a, w) = 2 dot(a, j) - n * rowsum(a)`; wbits is `w_planes.shape[0]`. With wbits = 1 the
    weights are {-1, +1} (binary, j = 1 means +1). Returns int64 (M, N) of odd-integer dots.
    """
    w_planes = np.asarray(w_planes)
    wbits = w_planes.shape[0] if w_planes.ndim == 3 else 0
    return affine_weight_gemm(a_planes, w_planes, 2, 2**wbits - 1, a_row_sums)


def bitserial_conv_threshold_codes(x, kh: int, kw: int, stride: int, padding: int, abits: int,
                                   wt: np.ndarray, th: np.ndarray, direction: np.ndarray, scale: int = 1,
                                   offset: int = 0, prepared: tuple | None = None, pool: int = 1, to=None):
    """`bitserial_threshold_codes(conv_channel_planes(x, ...), wt, ...)` without the planes in
    memory: each block of output pixels gathers its patch words inside the fused kernel. wt:
    `transposed_planes(bit_planes(channel_major_weights(weight), wbits))`; codes (N, O, OH*OW).
    x may be a `LaidOut` "planes" of abits with this padding; pool and to as in
    `int8_conv_threshold_codes`."""
    laid = isinstance(x, LaidOut)
    if laid:
        if x.kind != "planes" or x.padding != padding or x.bits != abits:
            raise EngineError(f"bit-serial conv with padding {padding} on {abits}-bit codes cannot read "
                              f"{x.kind} codes padded by {x.padding} ({x.bits} bits)")
    else:
        abits, x, _, _ = _check_conv_codes(x, kh, kw, stride, padding, abits, "bitserial_conv_threshold_codes")
        x = np.ascontiguousarray(x, dtype=np.uint8)
    return bitserial_conv_call(x.shape, kh, kw, stride, padding, abits, wt, th, direction, scale, offset, prepared,
                               pool, to, laid)(x)


def bitserial_conv_call(shape: tuple, kh: int, kw: int, stride: int, padding: int, abits: int, wt: np.ndarray,
                        th: np.ndarray, direction: np.ndarray, scale: int = 1, offset: int = 0,
                        prepared: tuple | None = None, pool: int = 1, to=None, laid: bool = False):
    """`bitserial_conv_threshold_codes` prepared once for codes of `shape` (N, C, H, W), as
    `int8.int8_conv_call`: the returned `call(x)` packs x (contiguous uint8 NCHW codes in [0,
    2^abits), unchecked) into channel-packed planes made once, or reads a `LaidOut` "planes"
    (`laid`), and runs the fused kernel into output buffers made once."""
    n, c, h, w = (int(v) for v in shape)
    oh, ow = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    if oh < 1 or ow < 1:
        raise EngineError(f"bit-serial conv: a {kh}x{kw} window with padding {padding} does not fit a {h}x{w} input")
    channels = th.shape[0]
    words = words_for(c)
    if wt.ndim != 3 or wt.dtype != np.uint64 or wt.shape[1] != kh * kw * words or wt.shape[2] < channels \
            or wt.shape[2] % TILE_COLS:
        raise EngineError(f"transposed weight planes {wt.shape} do not fit a {kh}x{kw} conv on {c} "
                          f"channels with {channels} outputs")
    ph, pw = _pooled_size(oh, ow, pool)
    dest, layout, result = conv_output(to, n, channels, ph, pw)
    if not n * channels * ph * pw:
        return lambda x: result
    packed = None if laid else np.zeros((abits, n, h + 2 * padding, w + 2 * padding, words), np.uint64)
    kernel = _bitserial_kernel(abits, wt.shape[0], "conv")
    args = (kh, kw, stride, oh, ow, pool, wt, np.int64(scale), np.int64(offset),
            *(prepared or block_thresholds(th, direction, wt.shape[2])), dest, dest.view(np.uint8), layout)
    work = n * channels * ph * pw * pool * pool * wt.shape[1] * abits * wt.shape[0] * 8

    def call(x):
        if packed is None:
            planes = x.data
        else:
            planes = packed
            with _threads_for(n * c * h * w * abits):
                _channel_pack_kernel(x, padding, packed)
        with _threads_for(work):
            kernel(planes, *args)
        return result

    return call
