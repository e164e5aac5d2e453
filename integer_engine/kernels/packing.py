"""Operand layouts made once per layer or once per conv input: transposed weight planes for the
vector popcount tiles, int8 weights in 4-byte lanes, channel-major weights, and the activations
packed by channel (bit-planes of each pixel's channels in 64-bit words, or NHWC bytes for the
int8 conv)."""
import numpy as np
from numba import njit, prange

from integer_engine.bitpack import check_bits, words_for
from integer_engine.errors import EngineError
from integer_engine.kernels.common import _threads_for
from integer_engine.kernels.int8dot import LANES
from integer_engine.kernels.int8dot import TILE_COLS as INT8_COLS
from integer_engine.kernels.popcount import TILE_COLS

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


def _conv_reduction_rows(weight: np.ndarray) -> np.ndarray:
    """Conv weights (O, C, kh, kw) -> (O, kh * ceil(kw*C / 4) * 4) int32 in the fused convs'
    reduction order (i, j, channel), each kernel row's kw*C values padded with zeros to whole
    4-element groups."""
    o, c, kh, kw = weight.shape
    run = kw * c
    flat = np.zeros((o, kh, run + -run % 4), np.int32)
    flat[:, :, :run] = weight.transpose(0, 2, 3, 1).reshape(o, kh, run)
    return flat.reshape(o, -1)


def int8_conv_weights(weight: np.ndarray) -> np.ndarray:
    """Signed conv weights (O, C, kh, kw) -> `int8_weights` in the reduction order (i, j, channel)
    of `int8_conv_threshold_codes`, each kernel row's kw*C bytes padded with zeros to whole 4-byte
    groups, the outputs to a multiple of 16 (the conv kernel's narrowest tile)."""
    return int8_weights(_conv_reduction_rows(weight), LANES)


def float_conv_weights(weight: np.ndarray) -> np.ndarray:
    """Integer conv weights (O, C, kh, kw) -> float32 (groups, 4, Npad): the reduction of
    `int8_conv_weights` (same groups and zero padding), each element's weights a contiguous row of
    Npad columns (a multiple of 16, zeros past O), the layout of `floatdot.float_conv_tile`. Exact
    for |weight| <= 2**24 (the tile's inputs are checked against that bound by its callers)."""
    rows = _conv_reduction_rows(weight)
    o, k = rows.shape
    out = np.zeros((k // 4, 4, o + -o % LANES), np.float32)
    out[:, :, :o] = rows.T.reshape(k // 4, 4, o)
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


def channel_packed_planes(x: np.ndarray, bits: int, padding: int) -> np.ndarray:
    """Codes (N, C, H, W) in [0, 2^bits) -> uint64 (bits, N, H + 2p, W + 2p, ceil(C/64)): bit w
    of [b, n, y + p, z + p, q] is bit b of x[n, 64 q + w, y, z], zero in the padding and past C."""
    n, c, h, w = x.shape
    packed = np.zeros((bits, n, h + 2 * padding, w + 2 * padding, words_for(c)), np.uint64)
    if x.size:
        with _threads_for(x.size * bits):
            _channel_pack_kernel(np.ascontiguousarray(x, dtype=np.uint8), padding, packed)
    return packed
