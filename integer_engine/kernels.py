"""Integer kernels of the engine: bit-serial popcount GEMMs, int8 GEMMs, im2col, max-pool.

Conventions (all kernels):
- A GEMM multiplies activations `a` of shape (M, K) by weights `w` of shape (N, K) and returns
  `a @ w.T` as int64 (M, N): rows of `w` are output channels, as in `weight.reshape(O, -1)`.
- Bit-serial kernels take the uint64 planes of `integer_engine.bitpack.bit_planes`:
  activations (abits, M, ceil(K/64)), weights (wbits, N, ceil(K/64)), both zero-padded past K.
- Activation codes are unsigned (PACT/ReLU outputs after a non-negative clip).

Bit-serial dot product, with a = sum_i 2^i a_i and w = sum_j 2^j w_j (binary planes):

    dot(a, w) = sum_{i,j} 2^(i+j) * popcount(a_i AND w_j)

summed over the 64-bit words of the reduction dimension. One 64-bit AND+POPCNT performs
64 / (abits * wbits) multiply-accumulates, which is where the speed comes from at 1-2 bits.

Families, chosen by the CPU (`cpu.py`; the tests run every one on any x86-64):
- scalar bit-serial (`bitserial_gemm(kernel="scalar")`): one POPCNT per word, 4x4 register tile;
- vector bit-serial (VPOPCNTDQ): `popcount.popcount_tile`, weights transposed once
  (`transposed_planes`); fused with the requantization (`bitserial_threshold_codes`) and, for
  convs, with a channel-major patch gather (`bitserial_conv_threshold_codes`);
- int8 (VNNI, or AVX2 `vpmaddubsw`): `int8dot.int8_tile`, u8 codes x s8 weights -> int32
  (`int8_gemm`), fused with the requantization (`int8_threshold_codes`) and with im2col
  (`int8_conv_threshold_codes`, which can also max-pool and lay its codes out for the next conv:
  `LaidOut`, `conv_output`);
- `int_gemm`: exact BLAS in float32/float64 for wide layers where neither exists.

Numba's disk cache (`cache=True`) keys a kernel by its own file only, but these kernels compile
in code from popcount.py, int8dot.py, bitpack.py (`plane_word`) and requant.py (`threshold_block`,
`window_codes`, `store_codes`): after editing those,
touch this file or clear integer_engine/__pycache__, or a cached kernel keeps the old code.
"""
import contextlib
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange
from numpy.lib.stride_tricks import sliding_window_view

from integer_engine import int8dot
from integer_engine.bitpack import MAX_BITS, check_bits, words_for
from integer_engine.errors import EngineError
from integer_engine.int8dot import INT32_SAFE_K, LANES, int8_conv_tile, int8_tile
from integer_engine.int8dot import TILE_COLS as INT8_COLS
from integer_engine.int8dot import TILE_ROWS as INT8_ROWS
from integer_engine.requant import (NCHW, NHWC, PLANES, block_thresholds, next_pixel, store_codes, threshold_block,
                                     window_codes)
from integer_engine.popcount import POPCOUNT, TILE_COLS, TILE_ROWS, popcount64, popcount_conv_tile, popcount_tile

# Columns of `w` handled together by one pass over an activation row: each loaded activation
# word is reused for 4 output columns while the 4 accumulators stay in registers.
_COLS = 4
# Weight planes are processed in column blocks of about this many bytes so the block stays in
# the L2 cache while every activation row streams past it.
_W_BLOCK_BYTES = 192 * 1024

# Below this many inner-loop operations a kernel runs on one thread: waking the worker threads
# costs more than the work (and, on a busy machine, OpenMP barriers can cost milliseconds).
_PARALLEL_MIN_WORK = 1 << 17

# Blocks of rows per parallel task of the fused kernels: their scratch is allocated once per task.
BLOCKS_PER_TASK = 16
# Placeholder threshold arguments for the non-fused instances of the fused kernels.
_NO_THRESHOLDS = (np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64), np.zeros(1, np.int64))

_LSB_OF_EACH_BYTE = np.uint64(0x0101010101010101)
_LOW_BYTE = np.uint64(0xFF)


@contextlib.contextmanager
def _threads_for(work: int):
    """Run the enclosed parallel kernels single-threaded when `work` is too small to split."""
    if work >= _PARALLEL_MIN_WORK or numba.get_num_threads() == 1:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


@dataclass(frozen=True)
class LaidOut:
    """Codes of shape (N, C, H, W) already in the layout of the conv that reads them, written so by
    the fused conv kernel that made them (`conv_output`), so the reader skips its re-layout pass:

    - "nhwc": uint8 (N, H + 2p, W + 2p, C) flattened with 8 bytes of slack, zero border: the input
      of `int8_conv_threshold_codes`;
    - "planes": uint64 (bits, N, H + 2p, W + 2p, ceil(C/64)), `channel_packed_planes(codes, bits,
      p)`: the input of `bitserial_conv_threshold_codes`.
    """
    kind: str
    data: np.ndarray
    shape: tuple  # (N, C, H, W) of the codes
    padding: int
    bits: int = 0

    def codes(self) -> np.ndarray:
        """The codes as NCHW uint8 (N, C, H, W)."""
        n, c, h, w = self.shape
        p = self.padding
        if self.kind == "nhwc":
            grid = self.data[:n * (h + 2 * p) * (w + 2 * p) * c].reshape(n, h + 2 * p, w + 2 * p, c)
            return np.ascontiguousarray(grid[:, p:p + h, p:p + w].transpose(0, 3, 1, 2))
        inner = np.ascontiguousarray(self.data[:, :, p:p + h, p:p + w, :])
        lanes = np.unpackbits(inner.view(np.uint8), axis=-1, bitorder="little")[..., :c]  # (bits, n, h, w, c)
        codes = np.zeros((n, h, w, c), np.uint8)
        for b in range(self.bits):
            codes |= lanes[b] << np.uint8(b)
        return np.ascontiguousarray(codes.transpose(0, 3, 1, 2))


def as_codes(x) -> np.ndarray:
    """NCHW codes of an array or a `LaidOut`."""
    return x.codes() if isinstance(x, LaidOut) else x


def conv_output(to, images: int, channels: int, height: int, width: int):
    """(dest, layout, result) for a fused conv kernel writing codes (images, channels, height,
    width) through `requant.store_codes`: `to` None gives NCHW codes (images, channels,
    height * width) as result, ("nhwc", p) or ("planes", p, bits) a `LaidOut` for a next conv with
    padding p (and `bits`-bit activations)."""
    shape = (images, channels, height, width)
    if to is None:
        size = images * channels * height * width
        dest = np.empty(-(-size // 8), np.uint64)  # every code is written
        return dest, np.array([NCHW, *shape, 0, 0, 0], np.int64), dest.view(np.uint8)[:size].reshape(
            images, channels, height * width)
    p = int(to[1])
    hp, wp = height + 2 * p, width + 2 * p
    if to[0] == "nhwc":
        size = images * hp * wp * channels + 8
        dest = np.zeros(-(-size // 8), np.uint64)
        return dest, np.array([NHWC, *shape, p, 0, 0], np.int64), LaidOut("nhwc", dest.view(np.uint8)[:size],
                                                                           shape, p)
    if to[0] == "planes":
        bits, words = int(to[2]), words_for(channels)
        dest = np.zeros(bits * images * hp * wp * words, np.uint64)
        return dest, np.array([PLANES, *shape, p, bits, words], np.int64), LaidOut(
            "planes", dest.reshape(bits, images, hp, wp, words), shape, p, bits)
    raise EngineError(f"unknown conv output layout {to!r}")


def _pooled_size(oh: int, ow: int, pool: int) -> tuple[int, int]:
    if pool not in (1, 2) or (pool == 2 and min(oh, ow) < 2):
        raise EngineError(f"fused max-pool must be 1 (none) or 2 (2x2, stride 2) on at least 2x2, got {pool} "
                          f"on {oh}x{ow}")
    return (oh, ow) if pool == 1 else (oh // 2, ow // 2)


# --------------------------------------------------------------------------------------------
# bit-serial GEMM
# --------------------------------------------------------------------------------------------
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
    16-column register tile per step, weights transposed once so 16 columns are two vector loads.
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
def _conv_output_pixel(m, pool, oh_count, ow_count):  # pragma: no cover - compiled
    """(image, y, x) of the conv output pixel that a fused conv kernel computes as GEMM row m: the
    output pixels in NCHW order (pool == 1), or with a fused 2x2 max-pool (pool == 2) the pooled
    output's windows in NCHW order, each window's 4 pixels in turn (the rest of an odd size
    feeds no window and is never computed)."""
    if pool == 1:
        pixels = oh_count * ow_count
        img = m // pixels
        p = m - img * pixels
        y = p // ow_count
        return img, y, p - y * ow_count
    pw = ow_count // 2
    windows = (oh_count // 2) * pw
    window = m >> 2
    img = window // windows
    q = window - img * windows
    py = q // pw
    return img, 2 * py + ((m >> 1) & 1), 2 * (q - py * pw) + (m & 1)


@njit(cache=True, inline="always")
def _store_rows(block, m0, out):  # pragma: no cover - compiled
    """Rows m0.. of a GEMM result from a block (rows, >= N columns), up to out's last row."""
    for r in range(min(block.shape[0], out.shape[0] - m0)):
        for c in range(out.shape[1]):
            out[m0 + r, c] = block[r, c]


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


# (abits, wbits) pairs with their own compiled kernel; the rest share the generic one. Each
# specialisation costs a few seconds of compilation once per machine (then the disk cache).
SPECIALISED_PAIRS = frozenset({(1, 1), (2, 2), (3, 3), (4, 4)})
_BITSERIAL_KERNELS: dict = {("scalar", 1, 1): _binary_kernel}
# "vector": popcount_tile (VPOPCNTDQ); "scalar": one 64-bit POPCNT at a time.
BITSERIAL_KERNEL = "vector" if POPCOUNT == "vpopcntq" else "scalar"


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


def _check_planes(planes: np.ndarray, name: str) -> np.ndarray:
    planes = np.asarray(planes)
    if planes.ndim != 3 or planes.dtype != np.uint64:
        raise EngineError(
            f"{name} must be uint64 bit-planes (bits, rows, words) from bit_planes, "
            f"got {planes.dtype} array of shape {planes.shape}"
        )
    check_bits(planes.shape[0])
    return np.ascontiguousarray(planes)


def transposed_planes(w_planes: np.ndarray) -> np.ndarray:
    """Weight planes (wbits, N, KW) -> (wbits, KW, Npad) with Npad a multiple of TILE_COLS (zero
    columns past N): the vector kernel's layout, 16 columns of one word side by side. Done once
    per layer."""
    w_planes = _check_planes(w_planes, "w_planes")
    wbits, n_cols, kw = w_planes.shape
    out = np.zeros((wbits, kw, n_cols + -n_cols % TILE_COLS), np.uint64)
    out[:, :, :n_cols] = w_planes.transpose(0, 2, 1)
    return out


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


# --------------------------------------------------------------------------------------------
# plain integer GEMM (8-bit layers)
# --------------------------------------------------------------------------------------------
def int_gemm(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact integer GEMM: int64 (M, N) = a @ w.T for integer a (M, K) and w (N, K).

    Meant for 8-bit layers (uint8 activations x int16/int32 weight codes), where bit-serial
    would cost 64 popcounts per 64 MACs. Runs as a BLAS float matmul when that is provably
    exact: every product and every partial sum, in whatever order BLAS adds them (blocking, FMA),
    is an integer of magnitude at most B = max_m sum_k |a[m,k]| * max|w|, and a float format
    with a p-bit significand represents every integer up to 2^p exactly, so no rounding ever
    happens if B <= 2^p. float32 (p = 24) is used when B <= 2^24 (e.g. a 3x3x3 conv on pixels:
    27 * 255 * 255 < 2^24), float64 (p = 53) when B <= 2^53 (any 8-bit layer: K < 1.3e11),
    and an int64 matmul otherwise (B < 2^63 required).
    """
    a = np.asarray(a)
    w = np.asarray(w)
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[1]:
        raise EngineError(f"int_gemm needs a (M, K) and w (N, K), got {a.shape} and {w.shape}")
    if a.dtype.kind not in "iub" or w.dtype.kind not in "iub":
        raise EngineError(f"int_gemm needs integer arrays, got {a.dtype} and {w.dtype}")
    if a.size == 0 or w.size == 0:
        return np.zeros((a.shape[0], w.shape[0]), dtype=np.int64)
    a_abs_row = np.abs(a.astype(np.int64)).sum(axis=1).max()
    w_abs = np.abs(w.astype(np.int64)).max()
    bound = int(a_abs_row) * int(w_abs)  # Python int: cannot overflow
    if bound <= 2**24:
        return np.matmul(a.astype(np.float32), w.T.astype(np.float32)).astype(np.int64)
    if bound <= 2**53:
        return np.matmul(a.astype(np.float64), w.T.astype(np.float64)).astype(np.int64)
    if bound < 2**63:
        return np.matmul(a.astype(np.int64), w.T.astype(np.int64))
    raise EngineError(f"int_gemm result could reach {bound}, beyond int64")


def int8_weights(w: np.ndarray, multiple: int = INT8_COLS) -> np.ndarray:
    """Signed weights (N, K) in [-128, 127] -> int8 (ceil(K/4), Npad, 4), Npad a multiple of
    `multiple` (INT8_COLS, the GEMM tile's width; 16 for the conv kernel's tiles):
    `int8dot.int8_tile`'s layout (the 4 consecutive k of column n in one 32-bit lane, zero past K
    and N). Done once per layer."""
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype.kind not in "iu" or (w.size and (w.min() < -128 or w.max() > 127)):
        raise EngineError(f"int8_weights needs integer weights (N, K) in [-128, 127], got {w.dtype} {w.shape}")
    n, k = w.shape
    padded = np.zeros((n + -n % multiple, k + -k % 4), np.int8)
    padded[:n, :k] = w
    return np.ascontiguousarray(padded.reshape(padded.shape[0], -1, 4).transpose(1, 0, 2))


def _check_int8_operands(a: np.ndarray, wt: np.ndarray, n_cols: int) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.ndim != 2 or a.dtype != np.uint8 or wt.ndim != 3 or wt.dtype != np.int8 \
            or a.shape[1] != 4 * wt.shape[0] or wt.shape[1] < n_cols or wt.shape[1] % INT8_COLS:
        raise EngineError(f"int8 GEMM needs uint8 activations (M, 4*K4) and int8_weights (K4, Npad, 4) with "
                          f"Npad >= {n_cols}, got {a.dtype} {a.shape} and {wt.dtype} {wt.shape}")
    if a.shape[1] > INT32_SAFE_K:
        raise EngineError(f"int8 GEMM: K = {a.shape[1]} could overflow int32 (at most {INT32_SAFE_K})")
    return a


def _make_int8_kernel(fused: bool, split: int):
    """The int8 GEMM on `int8dot.int8_tile`, TILE_ROWS rows x all columns per block; `fused` as in
    `_make_vector_kernel` (same arguments, a: (M, 4*K4) uint8, wt: (K4, Npad, 4) int8); `split`
    as in `int8dot` (a compile-time constant)."""

    @njit(parallel=True, cache=True)
    def kernel(a, wt, scale, offset, signed_th, by_t, negate, pixels, out):  # pragma: no cover
        m_rows = a.shape[0]
        n_pad = wt.shape[1]
        blocks = (m_rows + INT8_ROWS - 1) // INT8_ROWS
        for task in prange((blocks + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
            total = np.empty((INT8_ROWS, n_pad), np.int32)  # scratch, once per task
            corr = np.zeros(INT8_ROWS, np.int64)
            v = np.empty(n_pad, np.int64)
            codes = np.empty((INT8_ROWS, n_pad), np.uint8)
            for t in range(task * BLOCKS_PER_TASK, min(blocks, (task + 1) * BLOCKS_PER_TASK)):
                m0 = t * INT8_ROWS
                for n0 in range(0, n_pad, INT8_COLS):
                    int8_tile(a, wt, m0, n0, total, split)
                if fused:
                    if offset != 0:
                        for r in range(INT8_ROWS):
                            corr[r] = offset * np.int64(a[min(m0 + r, m_rows - 1)].sum())
                    threshold_block(total, corr, m0, scale, signed_th, by_t, negate, pixels, out, v, codes)
                else:
                    _store_rows(total, m0, out)

    return kernel


_INT8_VECS = INT8_COLS // LANES  # 16-column weight vectors per int8 tile
_INT8_KERNELS: dict = {}


def _int8_kernel(kind: str, split: bool, rows: int = INT8_ROWS):
    """The compiled int8 kernel: kind "gemm", "fused" (+ thresholds) or "conv" (+ im2col, `rows`
    GEMM rows per block: INT8_ROWS, or 1 for a conv of fewer rows without pooling, e.g. a
    single-pixel conv at batch 1, which a full tile would compute INT8_ROWS times over)."""
    key = (kind, int(split), rows)
    if key not in _INT8_KERNELS:
        _INT8_KERNELS[key] = (_make_int8_conv_kernel(key[1], rows) if kind == "conv"
                              else _make_int8_kernel(kind == "fused", key[1]))
    return _INT8_KERNELS[key]


def _split_for(a_max: int, wt: np.ndarray, w_abs_max: int | None) -> bool:
    """`int8dot.pairs_saturate` for codes <= a_max against the packed int8 weights wt, whose
    largest magnitude is w_abs_max (found here if None: a pass over the weights, so the executor
    passes it)."""
    if int8dot.LOWERING != "vpmaddubsw":
        return False
    if w_abs_max is None:
        w_abs_max = int(np.abs(wt.astype(np.int16)).max()) if wt.size else 0
    return int8dot.pairs_saturate(a_max, w_abs_max)


def int8_gemm(a: np.ndarray, wt: np.ndarray, n_cols: int, a_max: int = 255, w_abs_max: int | None = None
              ) -> np.ndarray:
    """int64 (M, n_cols) = a @ w.T for uint8 activations a (M, 4*K4) (zero columns past K) and
    wt = `int8_weights(w)`; exact (int32 partial sums, K checked against INT32_SAFE_K). a_max:
    a bound on the codes, w_abs_max on |w| if known (they pick the AVX2 sequence,
    `int8dot.pairs_saturate`)."""
    a = _check_int8_operands(a, wt, n_cols)
    out = np.zeros((a.shape[0], n_cols), np.int64)
    if out.size and a.shape[1]:
        with _threads_for(a.shape[0] * wt.shape[1] * a.shape[1] // 64):
            _int8_kernel("gemm", _split_for(a_max, wt, w_abs_max))(a, wt, 0, 0, *_NO_THRESHOLDS, 1, out)
    return out


def int8_threshold_codes(a: np.ndarray, wt: np.ndarray, th: np.ndarray, direction: np.ndarray, images: int,
                         scale: int = 1, offset: int = 0, prepared: tuple | None = None,
                         a_max: int = 255, w_abs_max: int | None = None) -> np.ndarray:
    """Codes (images, O, P) uint8 of an int8-path layer in one pass: `requant.threshold_codes`
    applied to `scale * int8_gemm(a, wt) - offset * rowsum(a)` (rows m = img * P + p)."""
    channels = th.shape[0]
    a = _check_int8_operands(a, wt, channels)
    out = np.empty((images, channels, a.shape[0] // images), np.uint8)
    if out.size:
        with _threads_for(a.shape[0] * wt.shape[1] * a.shape[1] // 64):
            _int8_kernel("fused", _split_for(a_max, wt, w_abs_max))(
                a, wt, np.int64(scale), np.int64(offset), *(prepared or block_thresholds(th, direction, wt.shape[1])),
                a.shape[0] // images, out)
    return out


def _make_int8_conv_kernel(split: int, rows: int):
    """The fused int8 conv kernel, with `split` (`int8dot`) and the rows per block compile-time
    constants."""

    @njit(parallel=True, cache=True)
    def kernel(xp, kh, kw, channels, height, width, stride, oh_count, ow_count, pool, wt, sums, scale, offset,
               signed_th, by_t, negate, dest, dest_bytes, layout):  # pragma: no cover - compiled
        # The fused int8 kernel reading its patches in place (`int8dot.int8_conv_tile`): xp holds the
        # zero-padded codes in NHWC order, flattened, with slack at the end, so a patch row in the
        # order (i, j, channel) is kh runs of kw*C contiguous bytes, one per kernel row; each run is
        # read in 4-byte groups, the bytes past kw*C meeting zero weights (`int8_conv_weights`).
        # When offset != 0, sums holds each patch's sum at its top-left pixel (`_patch_sums_kernel`).
        # pool == 2: rows in 2x2 max-pool windows (`_conv_output_pixel`). Columns in tiles of
        # INT8_COLS, the last 16 or 48 in a tile of their own (`int8dot.int8_conv_tile`: 48 outputs
        # as one 48-column tile instead of 64). dest, layout: `requant.store_codes`'s.
        n_images = layout[1]
        group = 1 if pool == 1 else 4
        m_rows = n_images * (oh_count * ow_count if pool == 1 else 4 * (oh_count // 2) * (ow_count // 2))
        offsets = int8_conv_offsets(kh, wt.shape[0] // kh, width * channels)
        n_pad = wt.shape[1]  # a multiple of 16
        tail = n_pad % INT8_COLS
        if tail and n_pad >= 48:
            tail = 48
        blocks = (m_rows + rows - 1) // rows
        for task in prange((blocks + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
            starts = np.empty(INT8_ROWS, np.int64)  # scratch, once per task
            pixels = np.empty(INT8_ROWS, np.int64)
            total = np.empty((rows, n_pad), np.int32)
            corr = np.zeros(rows, np.int64)
            v = np.empty(n_pad, by_t.dtype)
            codes = np.empty((rows, (n_pad + 63) // 64 * 64), np.uint8)  # whole 64-byte runs
            for t in range(task * BLOCKS_PER_TASK, min(blocks, (task + 1) * BLOCKS_PER_TASK)):
                m0 = t * rows
                _conv_row_starts(m0, m_rows, pool, oh_count, ow_count, stride, height, width, channels, starts,
                                 pixels)
                for n0 in range(0, n_pad - tail, INT8_COLS):
                    int8_conv_tile(xp, starts, offsets, wt, n0, total, split, 0, rows, _INT8_VECS)
                if tail == 48:  # 4 rows at a time (`int8dot.int8_conv_tile`)
                    if rows == 1:
                        int8_conv_tile(xp, starts, offsets, wt, n_pad - 48, total, split, 0, 1, 3)
                    else:
                        for r0 in range(0, rows, 4):
                            int8_conv_tile(xp, starts, offsets, wt, n_pad - 48, total, split, r0, 4, 3)
                elif tail == 16:
                    int8_conv_tile(xp, starts, offsets, wt, n_pad - 16, total, split, 0, rows, 1)
                if offset != 0:
                    for r in range(rows):
                        corr[r] = offset * np.int64(sums[pixels[r]])
                window_codes(total, corr, group, scale, signed_th, by_t, negate, v, codes)
                store_codes(codes, min(rows, m_rows - m0) // group, m0 // group, dest, dest_bytes, layout)

    return kernel


@njit(cache=True)
def conv_word_offsets(kh, run, row_words):  # pragma: no cover - compiled
    """Word offsets of a conv patch's words in channel-packed planes (`popcount.popcount_conv_tile`):
    word u < run (kw * words per pixel) of kernel row i at i * row_words + u."""
    offsets = np.empty(kh * run, np.int64)
    for i in range(kh):
        for u in range(run):
            offsets[i * run + u] = i * row_words + u
    return offsets


@njit(cache=True)
def int8_conv_offsets(kh, groups, row_stride):  # pragma: no cover - compiled
    """Byte offsets of a conv patch row's 4-byte groups in NHWC codes (`int8dot.int8_conv_tile`):
    group t = i * groups + g of kernel row i at i * row_stride + 4 g."""
    offsets = np.empty(kh * groups, np.int64)
    for i in range(kh):
        for g in range(groups):
            offsets[i * groups + g] = i * row_stride + 4 * g
    return offsets


@njit(cache=True, inline="always")
def _conv_row_starts(m0, m_rows, pool, oh_count, ow_count, stride, height, width, channels, starts, pixels):
    # pragma: no cover - compiled.  pixels[r] = the index of the top-left pixel of the patch of
    # GEMM row m0 + r in the padded image (`_conv_output_pixel`; rows past the end repeat the
    # last) and starts[r] = its NHWC byte offset, for r < len(starts): the first row by division,
    # the rest by stepping (a division per row cost as much as the tile on SVHN conv0's short
    # rows).
    img, y, z = _conv_output_pixel(min(m0, m_rows - 1), pool, oh_count, ow_count)
    if pool == 1:
        a, b, a_count, b_count = y, z, oh_count, ow_count
    else:
        a, b, a_count, b_count = y // 2, z // 2, oh_count // 2, ow_count // 2
    for r in range(starts.shape[0]):
        m = m0 + r
        if m >= m_rows:
            starts[r] = starts[r - 1] if r else starts[0]
            pixels[r] = pixels[r - 1] if r else pixels[0]
            continue
        if pool == 1:
            y, z = a, b
        else:
            y, z = 2 * a + ((m >> 1) & 1), 2 * b + (m & 1)
        pixels[r] = (img * height + y * stride) * width + z * stride
        starts[r] = pixels[r] * channels
        if pool == 1 or m & 3 == 3:  # to the next pixel (window)
            b, a, img = next_pixel(b, a, img, b_count, a_count)


@njit(parallel=True, cache=True)
def _nhwc_kernel(x, padding, flat):  # pragma: no cover - compiled
    # x: (N, C, H, W) uint8 codes -> flat: zero-filled (N, H + 2p, W + 2p, C) bytes (and slack):
    # the int8 conv's input, in parallel over rows (NumPy's strided copy took 2 ms for SVHN's
    # 512 input images, 6% of the W1A1 network).
    n_images, channels, height, width = x.shape
    hp, wp = height + 2 * padding, width + 2 * padding
    u = np.uint64  # unsigned indices: no negative-index wraparound, so LLVM vectorises
    for row in prange(n_images * height):
        img = row // height
        y = row - img * height
        base = u(((img * hp + y + padding) * wp + padding) * channels)
        if channels == 3:  # RGB images: constant strides (1.0 -> 0.12 ms for SVHN's 512 images)
            for z in range(width):
                flat[base + u(3 * z)] = x[img, 0, y, z]
                flat[base + u(3 * z + 1)] = x[img, 1, y, z]
                flat[base + u(3 * z + 2)] = x[img, 2, y, z]
            continue
        for z in range(width):
            for c in range(channels):
                flat[base + u(z * channels + c)] = x[img, c, y, z]


def int8_conv_weights(weight: np.ndarray) -> np.ndarray:
    """Signed conv weights (O, C, kh, kw) -> `int8_weights` in the reduction order (i, j, channel)
    of `int8_conv_threshold_codes`, each kernel row's kw*C bytes padded with zeros to whole 4-byte
    groups, the outputs to a multiple of 16 (the conv kernel's narrowest tile)."""
    o, c, kh, kw = weight.shape
    run = kw * c
    flat = np.zeros((o, kh, run + -run % 4), np.int16)
    flat[:, :, :run] = weight.transpose(0, 2, 3, 1).reshape(o, kh, run)
    return int8_weights(flat.reshape(o, -1), LANES)


@njit(parallel=True, cache=True)
def _patch_sums_kernel(xp, n_images, kh, kw, channels, height, width, stride, oh_count, ow_count, out):
    # pragma: no cover - compiled.  out[(img * height + y * stride) * width + z * stride] = the sum
    # of the kh x kw x channels patch of output pixel (y, z) in xp, the padded NHWC codes of the
    # int8 conv (height, width: padded), for the `- offset * rowsum` term of 8-bit weights; other
    # entries are left alone. Per output row: the kh image rows added (contiguous bytes; at stride
    # 1 the previous row's sum, one image row in and one out), their channels added per pixel,
    # then kw pixels per output. (Before, a spare weight column of ones computed the sums
    # in the GEMM: SVHN's first layer, 48 outputs, then took 64 columns of tiles instead of 48.)
    row_bytes = width * channels
    used = (ow_count - 1) * stride + kw  # pixels of a row that some patch covers
    u = np.uint64
    for img in prange(n_images):
        down = np.empty(row_bytes, np.int32)
        pixel = np.empty(width, np.int32)
        across = np.empty(ow_count, np.int32)
        for y in range(oh_count):
            # Unsigned indices throughout: Numba's negative-index wraparound kept LLVM from
            # vectorising these loops (5.3 vs 1.2 ms for SVHN's first layer at batch 512).
            top = u((img * height + y * stride) * row_bytes)
            if stride == 1 and y > 0:  # slide down a row: one in, one out
                gone, new = top - u(row_bytes), top + u((kh - 1) * row_bytes)
                for b in range(row_bytes):
                    down[u(b)] += np.int32(xp[new + u(b)]) - np.int32(xp[gone + u(b)])
            else:
                for b in range(row_bytes):
                    down[u(b)] = np.int32(xp[top + u(b)])
                for i in range(1, kh):
                    at = top + u(i * row_bytes)
                    for b in range(row_bytes):
                        down[u(b)] += np.int32(xp[at + u(b)])
            if channels == 3:  # RGB images: a constant stride, which LLVM vectorises
                for zz in range(used):
                    pixel[u(zz)] = down[u(3 * zz)] + down[u(3 * zz + 1)] + down[u(3 * zz + 2)]
            else:
                for zz in range(used):
                    pixel[u(zz)] = 0
                for c in range(channels):
                    for zz in range(used):
                        pixel[u(zz)] += down[u(zz * channels + c)]
            base = u((img * height + y * stride) * width)
            if stride == 1:  # contiguous, vectorised
                for z in range(ow_count):
                    out[base + u(z)] = pixel[u(z)]
                for j in range(1, kw):
                    for z in range(ow_count):
                        out[base + u(z)] += pixel[u(z + j)]
                continue
            for z in range(ow_count):
                across[u(z)] = 0
            for j in range(kw):
                for z in range(ow_count):
                    across[u(z)] += pixel[u(z * stride + j)]
            for z in range(ow_count):
                out[base + u(z * stride)] = across[u(z)]


def patch_sums(flat: np.ndarray, n: int, kh: int, kw: int, c: int, hp: int, wp: int, stride: int,
               oh: int, ow: int) -> np.ndarray:
    """int32 (n * hp * wp,): each conv patch's code sum at its top-left pixel of the padded image,
    from the int8 conv's padded NHWC bytes `flat` (`_patch_sums_kernel`; exact: at most K * 255)."""
    out = np.zeros(n * hp * wp, np.int32)
    with _threads_for(n * hp * ow * kw * c):
        _patch_sums_kernel(flat, n, kh, kw, c, hp, wp, stride, oh, ow, out)
    return out


def int8_conv_threshold_codes(x, kh: int, kw: int, stride: int, padding: int, wt: np.ndarray,
                              th: np.ndarray, direction: np.ndarray, scale: int = 1, offset: int = 0,
                              prepared: tuple | None = None, pool: int = 1, to=None,
                              a_max: int = 255, w_abs_max: int | None = None):
    """Codes (N, O, OH*OW) uint8 of a convolution on uint8 codes x (N, C, H, W) through the int8
    GEMM and thresholds (as `int8_threshold_codes` on its patches), without materialising the
    patches; wt = `int8_conv_weights(weight)`. `prepared`: `requant.block_thresholds(th,
    direction, wt.shape[1])`, if already made. x may be a `LaidOut` "nhwc" with this padding;
    pool 2 applies a 2x2 max-pool (stride 2) to the codes (N, O, OH//2 * OW//2); `to` lays the
    result out for the next conv (`conv_output`); a_max, w_abs_max: bounds on the codes and
    |weights| (`int8_gemm`). With offset != 0 each patch's sum comes from `patch_sums`."""
    laid = isinstance(x, LaidOut)
    if laid:
        if x.kind != "nhwc" or x.padding != padding:
            raise EngineError(f"int8 conv with padding {padding} cannot read {x.kind} codes padded by {x.padding}")
        n, c, h, w = x.shape
        oh, ow = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    else:
        x, oh, ow = _check_window(x, kh, kw, stride, padding, "int8_conv_threshold_codes")
        n, c, h, w = x.shape
    channels = th.shape[0]
    if (not laid and x.dtype != np.uint8) or wt.ndim != 3 or wt.shape[0] != kh * -(-kw * c // 4) \
            or wt.shape[1] < channels or wt.shape[1] % LANES:
        raise EngineError(f"int8 conv needs uint8 codes and int8_conv_weights for a {kh}x{kw} kernel on {c} "
                          f"channels and {channels} outputs, got codes {x.shape} and weights {wt.shape}")
    if 4 * wt.shape[0] > INT32_SAFE_K:
        raise EngineError(f"int8 conv: K = {4 * wt.shape[0]} could overflow int32 (at most {INT32_SAFE_K})")
    ph, pw = _pooled_size(oh, ow, pool)
    dest, layout, result = conv_output(to, n, channels, ph, pw)
    if n * channels * ph * pw:
        hp, wp = h + 2 * padding, w + 2 * padding
        if laid:
            flat = x.data
        else:
            flat = np.zeros(n * hp * wp * c + 8, np.uint8)  # NHWC, zero-padded, 8 bytes of slack
            with _threads_for(x.size):
                _nhwc_kernel(np.ascontiguousarray(x), padding, flat)
        sums = patch_sums(flat, n, kh, kw, c, hp, wp, stride, oh, ow) if offset else np.zeros(1, np.int32)
        with _threads_for(n * channels * ph * pw * pool * pool * wt.shape[0] * 4 // 16):
            one_row = pool == 1 and n * oh * ow < INT8_ROWS  # no repeated rows (`_int8_kernel`)
            _int8_kernel("conv", _split_for(a_max, wt, w_abs_max), 1 if one_row else INT8_ROWS)(
                flat, kh, kw, c, hp, wp, stride, oh, ow, pool, wt, sums, np.int64(scale), np.int64(offset),
                *(prepared or block_thresholds(th, direction, wt.shape[1])), dest, dest.view(np.uint8), layout)
    return result


# --------------------------------------------------------------------------------------------
# convolution lowering and pooling on codes
# --------------------------------------------------------------------------------------------
def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution/pool window: floor((size + 2p - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def _check_window(x: np.ndarray, kh: int, kw: int, stride: int, padding: int, what: str):
    x = np.asarray(x)
    if x.ndim != 4:
        raise EngineError(f"{what} expects NCHW codes (4-D), got shape {x.shape}")
    if x.dtype.kind not in "iub":
        raise EngineError(f"{what} expects integer codes, got dtype {x.dtype}")
    for name, value, low in (("kernel height", kh, 1), ("kernel width", kw, 1),
                             ("stride", stride, 1), ("padding", padding, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise EngineError(f"{what}: {name} must be an integer >= {low}, got {value!r}")
    _, _, h, w = x.shape
    oh = conv_output_size(h, kh, stride, padding)
    ow = conv_output_size(w, kw, stride, padding)
    if oh < 1 or ow < 1:
        raise EngineError(
            f"{what}: a {kh}x{kw} window with padding {padding} does not fit a {h}x{w} input"
        )
    return x, oh, ow


def _pad_hw(x: np.ndarray, padding: int) -> np.ndarray:
    if padding == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))


def im2col_codes(x: np.ndarray, kh: int, kw: int, stride: int = 1, padding: int = 0,
                 dtype=None, width: int | None = None) -> np.ndarray:
    """Integer im2col: codes x (N, C, H, W) -> patches (N*OH*OW, C*kh*kw), in `dtype` (default:
    x's dtype; the executor asks for float32/float64 to feed BLAS, uint8 for `int8_gemm`).
    `width` > C*kh*kw pads each row with zero columns (the int8 kernels want a multiple of 4).

    Row r = (n*OH + oh)*OW + ow; column (c*kh + i)*kw + j holds x[n, c, oh*s - p + i, ow*s - p + j]
    (zero outside the image), matching `weight.reshape(O, -1)` of an OIHW weight, so a
    convolution is `im2col_codes(x) @ weight.reshape(O, -1).T` reshaped to (N, OH, OW, O).
    A parallel Numba gather (SVHN conv0 at batch 128, float32: 37 ms vs 59 ms for NumPy's copy
    of a strided window view, measured here).
    """
    x, oh, ow = _check_window(x, kh, kw, stride, padding, "im2col_codes")
    n, c = x.shape[:2]
    k = c * kh * kw
    width = k if width is None else max(width, k)
    out = (np.empty if width == k else np.zeros)((n * oh * ow, width), dtype=x.dtype if dtype is None else dtype)
    if out.size:
        with _threads_for(out.size):
            _im2col_kernel(np.ascontiguousarray(_pad_hw(x, padding)), kh, kw, stride, oh, ow, out)
    return out


@njit(parallel=True, cache=True)
def _im2col_kernel(xp, kh, kw, stride, oh_count, ow_count, out):  # pragma: no cover - compiled
    # xp: zero-padded codes (N, C, Hp, Wp); out: (N*OH*OW, C*kh*kw), any numeric dtype.
    n_images, channels = xp.shape[0], xp.shape[1]
    for r in prange(n_images * oh_count):
        img = r // oh_count
        h0 = (r % oh_count) * stride
        for owi in range(ow_count):
            row = r * ow_count + owi
            w0 = owi * stride
            col = 0
            for c in range(channels):
                for i in range(kh):
                    for j in range(kw):
                        out[row, col] = xp[img, c, h0 + i, w0 + j]
                        col += 1


@njit(parallel=True, cache=True)
def _conv_pack_kernel(xp, kh, kw, stride, oh_count, ow_count, out):  # pragma: no cover
    # xp: zero-padded uint8 codes (N, C, Hp, Wp); out: uint64 (bits, N*OH*OW, KW).
    n_images, channels = xp.shape[0], xp.shape[1]
    bits, _, words = out.shape
    for r in prange(n_images * oh_count):
        img = r // oh_count
        h0 = (r % oh_count) * stride
        patch = np.zeros(words * 64, dtype=np.uint8)  # bytes past C*kh*kw stay zero
        groups = patch.view(np.uint64)  # 8 codes per uint64, code t in byte t (little-endian)
        for owi in range(ow_count):
            w0 = owi * stride
            col = 0
            for c in range(channels):
                for i in range(kh):
                    for j in range(kw):
                        patch[col] = xp[img, c, h0 + i, w0 + j]
                        col += 1
            row = r * ow_count + owi
            for b in range(bits):
                shift = np.uint64(b)
                for q in range(words):
                    word = np.uint64(0)
                    for g in range(8):
                        # Bit b of each of the 8 bytes, gathered into the low byte by folding:
                        # after the three or-shifts, bit t of byte 0 is bit b of byte t.
                        y = (groups[q * 8 + g] >> shift) & _LSB_OF_EACH_BYTE
                        y |= y >> np.uint64(7)
                        y |= y >> np.uint64(14)
                        y |= y >> np.uint64(28)
                        word |= (y & _LOW_BYTE) << np.uint64(8 * g)
                    out[b, row, q] = word


@njit(cache=True, inline="always")
def _swap_stage(block, s, mask):  # pragma: no cover - compiled
    # The high s bits of each 2s-bit group of row k trade places with the low s bits of row k+s.
    shift = np.uint64(s)
    for base in range(0, 64, 2 * s):
        for k in range(base, base + s):
            t = ((block[k] >> shift) ^ block[k + s]) & mask
            block[k] ^= t << shift
            block[k + s] ^= t


@njit(cache=True)
def _transpose64(block):  # pragma: no cover - compiled
    """In-place 64x64 bit-matrix transpose: afterwards bit p of block[t] is old bit t of block[p].

    Recursive block swap (Hacker's Delight 7-3), six stages with constant shifts and masks.
    """
    _swap_stage(block, 32, np.uint64(0x00000000FFFFFFFF))
    _swap_stage(block, 16, np.uint64(0x0000FFFF0000FFFF))
    _swap_stage(block, 8, np.uint64(0x00FF00FF00FF00FF))
    _swap_stage(block, 4, np.uint64(0x0F0F0F0F0F0F0F0F))
    _swap_stage(block, 2, np.uint64(0x3333333333333333))
    _swap_stage(block, 1, np.uint64(0x5555555555555555))


@njit(parallel=True, cache=True)
def _conv_pack_transpose_kernel(rowbits, kh, kw, oh_count, ow_count, out):  # pragma: no cover
    # Stride-1 convolutions with padded width <= 64. rowbits: uint64 (bits, N, C, Hp), bit w of
    # rowbits[b, n, c, h] = bit b of the padded code xp[n, c, h, w]; out: (bits, N*OH*OW, KW).
    # For one image and `group` consecutive output rows, the bits of patch column (c, i, j) over
    # all output pixels (r, ow) are `rowbits[b, n, c, oh0 + r + i] >> j` (stride 1: the window
    # slides one bit per pixel), laid side by side in one word at offset r * OW. 64 such column
    # words, transposed as a bit matrix, are the output words of up to 64 output pixels at once.
    bits, n_images, channels, _ = rowbits.shape
    words = out.shape[2]
    k_total = channels * kh * kw
    # Patch column -> (channel, kernel row, kernel column), tabulated once: integer division in
    # the inner loop would cost more than the rest of the work.
    col_c = np.empty(k_total, dtype=np.int64)
    col_i = np.empty(k_total, dtype=np.int64)
    col_j = np.empty(k_total, dtype=np.uint64)
    for col in range(k_total):
        col_c[col] = col // (kh * kw)
        col_i[col] = (col // kw) % kh
        col_j[col] = col % kw
    group = 64 // ow_count
    groups_per_image = (oh_count + group - 1) // group
    ow_mask = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - ow_count)
    for task in prange(n_images * groups_per_image):
        img = task // groups_per_image
        oh0 = (task % groups_per_image) * group
        rows_here = min(group, oh_count - oh0)
        block = np.zeros(64, dtype=np.uint64)
        for b in range(bits):
            for q in range(words):
                for t in range(64):
                    col = q * 64 + t
                    word = np.uint64(0)
                    if col < k_total:
                        c = col_c[col]
                        i = col_i[col]
                        j = col_j[col]
                        for r in range(rows_here):
                            pixels = (rowbits[b, img, c, oh0 + r + i] >> j) & ow_mask
                            word |= pixels << np.uint64(r * ow_count)
                    block[t] = word
                _transpose64(block)
                for r in range(rows_here):
                    first_row = (img * oh_count + oh0 + r) * ow_count
                    for owi in range(ow_count):
                        out[b, first_row + owi, q] = block[r * ow_count + owi]


@njit(parallel=True, cache=True)
def _row_bits_kernel(xp, out):  # pragma: no cover - compiled
    bits = out.shape[0]
    n_images, channels, hp, wp = xp.shape
    for nc in prange(n_images * channels):
        img = nc // channels
        c = nc % channels
        for h in range(hp):
            for b in range(bits):
                shift = np.uint64(b)
                word = np.uint64(0)
                for x in range(wp):
                    word |= ((np.uint64(xp[img, c, h, x]) >> shift) & np.uint64(1)) << np.uint64(x)
                out[b, img, c, h] = word


def _row_bits(xp: np.ndarray, bits: int) -> np.ndarray:
    """uint64 (bits, N, C, Hp): bit w of [b, n, c, h] is bit b of xp[n, c, h, w] (Wp <= 64)."""
    n, c, hp, _ = xp.shape
    out = np.empty((bits, n, c, hp), dtype=np.uint64)
    _row_bits_kernel(xp, out)
    return out


def _check_conv_codes(x, kh, kw, stride, padding, bits, what):
    bits = check_bits(bits)
    x, oh, ow = _check_window(x, kh, kw, stride, padding, what)
    if x.size and (x.min() < 0 or x.max() >= 2**bits):
        raise EngineError(
            f"codes must lie in [0, {2**bits - 1}] for {bits}-bit packing, "
            f"got values in [{x.min()}, {x.max()}]"
        )
    return bits, x, oh, ow


def conv_bit_planes(
    x: np.ndarray, kh: int, kw: int, stride: int, padding: int, bits: int
) -> np.ndarray:
    """Fused im2col + packing: codes x (N, C, H, W) in [0, 2^bits) -> uint64 planes
    (bits, N*OH*OW, ceil(C*kh*kw/64)), equal to `bit_planes(im2col_codes(x, ...), bits)` (so the
    weights pair with `bit_planes(weight.reshape(O, -1), wbits)`) but without materialising the
    (N*OH*OW, C*kh*kw) code matrix.

    Stride 1 with padded width <= 64 and >= 8 output pixels (the usual 3x3 convs): each padded input row becomes one
    uint64 bitmask per plane; patch column (c, i, j) over a run of output pixels is that mask
    shifted by j, and 64x64 bit transposes turn 64 such columns into output words. Otherwise
    (strided or wide inputs): gather each patch into bytes and pack 8 codes per uint64 step.
    """
    bits, x, oh, ow = _check_conv_codes(x, kh, kw, stride, padding, bits, "conv_bit_planes")
    n, c = x.shape[:2]
    xp = np.ascontiguousarray(_pad_hw(x.astype(np.uint8, copy=False), padding))
    out = np.empty((bits, n * oh * ow, words_for(c * kh * kw)), dtype=np.uint64)
    if out.size:
        with _threads_for(out.size * 64):
            # The transposes fill 64 output pixels at a time: with few pixels per image (SVHN
            # conv6: 1) they waste most of their work and the byte gather wins (3.0 vs 0.3 ms).
            if stride == 1 and xp.shape[3] <= 64 and oh * ow >= 8:
                _conv_pack_transpose_kernel(_row_bits(xp, bits), kh, kw, oh, ow, out)
            else:
                _conv_pack_kernel(xp, kh, kw, stride, oh, ow, out)
    return out


def channel_major_weights(weight: np.ndarray) -> np.ndarray:
    """Weight codes (O, C, kh, kw) -> (O, kh * kw * 64 * ceil(C/64)): the reduction in the order
    (i, j, channel) with each kernel position's channels padded to whole 64-bit words (zeros),
    the order of `conv_channel_planes`."""
    o, c, kh, kw = weight.shape
    out = np.zeros((o, kh, kw, words_for(c) * 64), weight.dtype)
    out[..., :c] = weight.transpose(0, 2, 3, 1)
    return out.reshape(o, -1)


@njit(parallel=True, cache=True)
def _channel_pack_kernel(x, padding, out):  # pragma: no cover - compiled
    # x: (N, C, H, W) uint8 codes; out: (bits, N, Hp, Wp, CW) uint64, zero-filled by the caller.
    # Bit w of out[b, n, y + p, z + p, q] = bit b of x[n, 64 q + w, y, z]: per input row, a
    # channel's W codes are one contiguous run, OR-ed into every pixel's word (vectorises over z).
    bits = out.shape[0]
    n_images, channels, height, width = x.shape
    words = out.shape[4]
    for row in prange(n_images * height):
        img = row // height
        y = row - img * height
        acc = np.zeros((bits, words, width), np.uint64)  # the row's words, built in L1
        for c in range(channels):
            q = c // 64
            lane = np.uint64(c % 64)
            for b in range(bits):
                shift = np.uint64(b)
                for z in range(width):
                    acc[b, q, z] |= ((np.uint64(x[img, c, y, z]) >> shift) & np.uint64(1)) << lane
        for b in range(bits):
            for z in range(width):
                for q in range(words):
                    out[b, img, y + padding, z + padding, q] = acc[b, q, z]


@njit(parallel=True, cache=True)
def _word_im2col_kernel(packed, kh, kw, stride, oh_count, ow_count, out):  # pragma: no cover
    # packed: (bits, N, Hp, Wp, CW); out: (bits, N*OH*OW, kh*kw*CW), a patch row being the
    # kh*kw neighbours' channel words side by side.
    bits, n_images = packed.shape[0], packed.shape[1]
    words = packed.shape[4]
    for r in prange(n_images * oh_count):
        img = r // oh_count
        y = (r - img * oh_count) * stride
        for b in range(bits):
            for zi in range(ow_count):
                row = r * ow_count + zi
                col = 0
                for i in range(kh):
                    for j in range(kw):
                        for q in range(words):
                            out[b, row, col] = packed[b, img, y + i, zi * stride + j, q]
                            col += 1


def conv_channel_planes(x: np.ndarray, kh: int, kw: int, stride: int, padding: int, bits: int) -> np.ndarray:
    """Fused im2col + packing with the reduction in channel-major order: codes x (N, C, H, W)
    -> uint64 planes (bits, N*OH*OW, kh * kw * ceil(C/64)) equal to
    `bit_planes(channel-major im2col of x, bits)`, to pair with
    `bit_planes(channel_major_weights(weight), wbits)`.

    Each input pixel's channels are packed once into words (one pass over the codes); a patch
    row is then kh*kw of those words copied side by side, not a gather of single bits (SVHN conv2
    at batch 128: 2.1 vs 5.8 ms for `conv_bit_planes`; benchmarks/bitgemm.py times both)."""
    bits, x, oh, ow = _check_conv_codes(x, kh, kw, stride, padding, bits, "conv_channel_planes")
    packed = channel_packed_planes(x, bits, padding)
    out = np.empty((bits, x.shape[0] * oh * ow, kh * kw * packed.shape[4]), np.uint64)
    if out.size:
        with _threads_for(out.size):
            _word_im2col_kernel(packed, kh, kw, stride, oh, ow, out)
    return out


def channel_packed_planes(x: np.ndarray, bits: int, padding: int) -> np.ndarray:
    """Codes (N, C, H, W) in [0, 2^bits) -> uint64 (bits, N, H + 2p, W + 2p, ceil(C/64)): bit w
    of [b, n, y + p, z + p, q] is bit b of x[n, 64 q + w, y, z], zero in the padding and past C."""
    n, c, h, w = x.shape
    packed = np.zeros((bits, n, h + 2 * padding, w + 2 * padding, words_for(c)), np.uint64)
    if x.size:
        with _threads_for(x.size * bits):
            _channel_pack_kernel(np.ascontiguousarray(x, dtype=np.uint8), padding, packed)
    return packed


def bitserial_conv_threshold_codes(x, kh: int, kw: int, stride: int, padding: int, abits: int,
                                   wt: np.ndarray, th: np.ndarray, direction: np.ndarray, scale: int = 1,
                                   offset: int = 0, prepared: tuple | None = None, pool: int = 1, to=None):
    """`bitserial_threshold_codes(conv_channel_planes(x, ...), wt, ...)` without the planes in
    memory: each block of output pixels gathers its patch words inside the fused kernel. wt:
    `transposed_planes(bit_planes(channel_major_weights(weight), wbits))`; codes (N, O, OH*OW).
    x may be a `LaidOut` "planes" of abits with this padding; pool and to as in
    `int8_conv_threshold_codes`."""
    if isinstance(x, LaidOut):
        if x.kind != "planes" or x.padding != padding or x.bits != abits:
            raise EngineError(f"bit-serial conv with padding {padding} on {abits}-bit codes cannot read "
                              f"{x.kind} codes padded by {x.padding} ({x.bits} bits)")
        n, c, h, w = x.shape
        oh, ow = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
        packed = x.data
    else:
        abits, x, oh, ow = _check_conv_codes(x, kh, kw, stride, padding, abits, "bitserial_conv_threshold_codes")
        n, c = x.shape[:2]
        packed = None
    channels = th.shape[0]
    words = words_for(c)
    if wt.ndim != 3 or wt.dtype != np.uint64 or wt.shape[1] != kh * kw * words or wt.shape[2] < channels \
            or wt.shape[2] % TILE_COLS:
        raise EngineError(f"transposed weight planes {wt.shape} do not fit a {kh}x{kw} conv on {c} "
                          f"channels with {channels} outputs")
    ph, pw = _pooled_size(oh, ow, pool)
    dest, layout, result = conv_output(to, n, channels, ph, pw)
    if n * channels * ph * pw:
        if packed is None:
            packed = channel_packed_planes(x, abits, padding)
        with _threads_for(n * channels * ph * pw * pool * pool * wt.shape[1] * abits * wt.shape[0] * 8):
            _bitserial_kernel(abits, wt.shape[0], "conv")(
                packed, kh, kw, stride, oh, ow, pool, wt, np.int64(scale), np.int64(offset),
                *(prepared or block_thresholds(th, direction, wt.shape[2])), dest, dest.view(np.uint8), layout)
    return result


def max_pool_codes(
    x: np.ndarray, kernel: int, stride: int | None = None, padding: int = 0
) -> np.ndarray:
    """Max-pool on non-negative integer codes (N, C, H, W) -> (N, C, OH, OW), same dtype.

    Padding uses 0 where the float model pads with -inf. That is exact: codes come after a
    non-negative activation (clip to [0, alpha]), so every code is >= 0 = the pad value, and with
    padding <= kernel // 2 every window holds at least one real element, whose max is >= 0;
    adding zeros to a set whose max is >= 0 cannot change the max. Both conditions are checked.
    """
    stride = kernel if stride is None else stride
    x, oh, ow = _check_window(x, kernel, kernel, stride, padding, "max_pool_codes")
    if padding > kernel // 2:
        raise EngineError(f"max_pool_codes: padding {padding} exceeds kernel // 2 = {kernel // 2}")
    if x.size and x.min() < 0:
        raise EngineError("max_pool_codes needs non-negative codes (zero padding stands for -inf)")
    windows = sliding_window_view(_pad_hw(x, padding), (kernel, kernel), axis=(2, 3))
    windows = windows[:, :, : oh * stride : stride, : ow * stride : stride]
    return windows.max(axis=(4, 5))


__all__ = [
    "MAX_BITS",
    "LaidOut",
    "as_codes",
    "conv_output",
    "affine_weight_gemm",
    "bitserial_gemm",
    "bitserial_conv_threshold_codes",
    "bitserial_gemm_transposed",
    "bitserial_threshold_codes",
    "transposed_planes",
    "channel_major_weights",
    "channel_packed_planes",
    "conv_bit_planes",
    "conv_channel_planes",
    "conv_output_size",
    "im2col_codes",
    "int8_conv_threshold_codes",
    "int8_conv_weights",
    "int8_gemm",
    "int8_threshold_codes",
    "int8_weights",
    "int_gemm",
    "max_pool_codes",
    "odd_weight_gemm",
    "patch_sums",
    "plane_row_sums",
]
