"""Convolution lowering on codes: im2col (into codes, floats or bit-planes) and the indirection
tables of the fused conv kernels, which read each patch in place instead of copying it
(`conv_word_offsets`, `int8_conv_offsets`, `_conv_row_starts`: XNNPACK's and Larq's indirect
GEMM idea, as offsets into one padded buffer)."""
import numpy as np
from numba import njit, prange

from integer_engine.bitpack import words_for
from integer_engine.kernels.common import _check_conv_codes, _check_window, _conv_output_pixel, _pad_hw, _threads_for
from integer_engine.kernels.packing import channel_packed_planes
from integer_engine.requant import next_pixel

_LSB_OF_EACH_BYTE = np.uint64(0x0101010101010101)
_LOW_BYTE = np.uint64(0xFF)


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
