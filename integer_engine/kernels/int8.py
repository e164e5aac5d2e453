"""Integer GEMMs and convolutions for wide layers (8-bit, or too many bit-plane passes):

- int8 (VNNI, or AVX2 `vpmaddubsw`): `int8dot.int8_tile`, u8 codes x s8 weights -> int32
  (`int8_gemm`), fused with the requantization (`int8_threshold_codes`) and with the patch
  gather read in place (`int8_conv_threshold_codes`, which can also max-pool and lay its codes
  out for the next conv: `layout.conv_output`);
- the same fused conv on the exact float32 tile (`floatdot.float_conv_tile`, weights from
  `float_conv_weights`), where AVX2's int8 sequence would need its split form
  (`select.float32_conv`);
- `int_gemm`: exact BLAS in float32/float64 where no int8 dot product exists.
The tiles' plain readings are in int8dot.py and floatdot.py, beside the vector code.
"""
import numpy as np
from numba import njit, prange

from integer_engine.errors import EngineError
from integer_engine.kernels.common import (_NO_THRESHOLDS, BLOCKS_PER_TASK, _check_window, _pooled_size, _store_rows,
                                           _threads_for, conv_output_size)
from integer_engine.kernels.im2col import _conv_row_starts, int8_conv_offsets
from integer_engine.kernels.floatdot import FLOAT32_EXACT, float32_exact, float_conv_tile
from integer_engine.kernels.int8dot import INT32_SAFE_K, LANES, int8_conv_tile, int8_tile
from integer_engine.kernels.int8dot import TILE_COLS as INT8_COLS
from integer_engine.kernels.int8dot import TILE_ROWS as INT8_ROWS
from integer_engine.kernels.layout import LaidOut, conv_output
from integer_engine.kernels.packing import _nhwc_kernel
from integer_engine.kernels.select import split_for
from integer_engine.requant import block_thresholds, store_codes, threshold_block, window_codes

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
    if float32_exact(bound):
        return np.matmul(a.astype(np.float32), w.T.astype(np.float32)).astype(np.int64)
    if bound <= 2**53:
        return np.matmul(a.astype(np.float64), w.T.astype(np.float64)).astype(np.int64)
    if bound < 2**63:
        return np.matmul(a.astype(np.int64), w.T.astype(np.int64))
    raise EngineError(f"int_gemm result could reach {bound}, beyond int64")


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
    """The compiled int8 kernel: kind "gemm", "fused" (+ thresholds), "conv" (+ im2col, `rows`
    GEMM rows per block: INT8_ROWS, or 1 for a conv of fewer rows without pooling, e.g. a
    single-pixel conv at batch 1, which a full tile would compute INT8_ROWS times over) or
    "float_conv" (the same conv on float32 codes and weights, `floatdot.float_conv_tile`)."""
    key = (kind, int(split), rows)
    if key not in _INT8_KERNELS:
        if kind in ("conv", "float_conv"):
            tile, cols_axis = (int8_conv_tile, 1) if kind == "conv" else (float_conv_tile, 2)
            _INT8_KERNELS[key] = _make_conv_kernel(tile, cols_axis, key[1], rows)
        else:
            _INT8_KERNELS[key] = _make_int8_kernel(kind == "fused", key[1])
    return _INT8_KERNELS[key]


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
            _int8_kernel("gemm", split_for(a_max, wt, w_abs_max))(a, wt, 0, 0, *_NO_THRESHOLDS, 1, out)
    return out


def int8_gemm_call(rows: int, wt: np.ndarray, n_cols: int, a_max: int = 255, w_abs_max: int | None = None):
    """`int8_gemm` prepared once for `rows` activation rows: `call(a)` -> the int64 (rows, n_cols)
    result, a (rows, 4 * K4) contiguous uint8 (unchecked), written into the same buffer each call."""
    out = np.zeros((rows, n_cols), np.int64)
    if not out.size or not wt.shape[0]:
        return lambda a: out
    kernel = _int8_kernel("gemm", split_for(a_max, wt, w_abs_max))
    work = rows * wt.shape[1] * wt.shape[0] * 4 // 64

    def call(a):
        with _threads_for(work):
            kernel(a, wt, 0, 0, *_NO_THRESHOLDS, 1, out)
        return out

    return call


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
            _int8_kernel("fused", split_for(a_max, wt, w_abs_max))(
                a, wt, np.int64(scale), np.int64(offset), *(prepared or block_thresholds(th, direction, wt.shape[1])),
                a.shape[0] // images, out)
    return out


def _make_conv_kernel(tile, cols_axis: int, split: int, rows: int):
    """The fused conv kernel on `tile` (`int8dot.int8_conv_tile`, or `floatdot.float_conv_tile`
    on float32 codes and weights, whose columns are on axis `cols_axis` of wt), with `split`
    (`int8dot`) and the rows per block compile-time constants."""

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
        n_pad = wt.shape[cols_axis]  # a multiple of 16
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
                    tile(xp, starts, offsets, wt, n0, total, split, 0, rows, _INT8_VECS)
                if tail == 48:  # 4 rows at a time (`int8dot.int8_conv_tile`)
                    if rows == 1:
                        tile(xp, starts, offsets, wt, n_pad - 48, total, split, 0, 1, 3)
                    else:
                        for r0 in range(0, rows, 4):
                            tile(xp, starts, offsets, wt, n_pad - 48, total, split, r0, 4, 3)
                elif tail == 16:
                    tile(xp, starts, offsets, wt, n_pad - 16, total, split, 0, rows, 1)
                if offset != 0:
                    for r in range(rows):
                        corr[r] = offset * np.int64(sums[pixels[r]])
                window_codes(total, corr, group, scale, signed_th, by_t, negate, v, codes)
                store_codes(codes, min(rows, m_rows - m0) // group, m0 // group, dest, dest_bytes, layout)

    return kernel


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
    patches; wt = `int8_conv_weights(weight)`, or `float_conv_weights(weight)` for the float32
    tile (`int8_conv_call`). `prepared`: `requant.block_thresholds(th, direction, Npad)` (wt's
    padded columns), if already made. x may be a `LaidOut` "nhwc" with this padding;
    pool 2 applies a 2x2 max-pool (stride 2) to the codes (N, O, OH//2 * OW//2); `to` lays the
    result out for the next conv (`conv_output`); a_max, w_abs_max: bounds on the codes and
    |weights| (`int8_gemm`). With offset != 0 each patch's sum comes from `patch_sums`."""
    laid = isinstance(x, LaidOut)
    if laid:
        if x.kind != "nhwc" or x.padding != padding:
            raise EngineError(f"int8 conv with padding {padding} cannot read {x.kind} codes padded by {x.padding}")
    else:
        x, _, _ = _check_window(x, kh, kw, stride, padding, "int8_conv_threshold_codes")
        if x.dtype != np.uint8:
            raise EngineError(f"int8 conv needs uint8 codes, got {x.dtype}")
        x = np.ascontiguousarray(x)
    return int8_conv_call(x.shape, kh, kw, stride, padding, wt, th, direction, scale, offset, prepared, pool, to,
                          a_max, w_abs_max, laid)(x)


def int8_conv_call(shape: tuple, kh: int, kw: int, stride: int, padding: int, wt: np.ndarray, th: np.ndarray,
                   direction: np.ndarray, scale: int = 1, offset: int = 0, prepared: tuple | None = None,
                   pool: int = 1, to=None, a_max: int = 255, w_abs_max: int | None = None, laid: bool = False):
    """`int8_conv_threshold_codes` prepared once for codes of `shape` (N, C, H, W), on the int8 tile
    (wt from `int8_conv_weights`) or the float32 tile (wt from `float_conv_weights`, refused unless
    K * a_max * w_abs_max <= FLOAT32_EXACT, K = kh * kw * C): checks, the compiled kernel, its
    scalar arguments and every buffer (padded NHWC input, patch sums, the output) made here, so the returned `call(x)` is the kernels alone: x contiguous uint8 NCHW
    codes of that shape, or (`laid`) a `LaidOut` "nhwc" padded by `padding`. Each call writes the
    same output buffers and returns the same result object (the engine's plan, `executor`)."""
    n, c, h, w = (int(v) for v in shape)
    oh, ow = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    if oh < 1 or ow < 1:
        raise EngineError(f"int8 conv: a {kh}x{kw} window with padding {padding} does not fit a {h}x{w} input")
    channels = th.shape[0]
    exact_float = wt.dtype == np.float32  # `float_conv_weights`: the float32 tile
    n_pad = wt.shape[2] if exact_float and wt.ndim == 3 else wt.shape[1] if wt.ndim == 3 else 0
    if wt.ndim != 3 or wt.shape[0] != kh * -(-kw * c // 4) or n_pad < channels or n_pad % LANES \
            or wt.shape[1 if exact_float else 2] != 4 or (not exact_float and wt.dtype != np.int8):
        raise EngineError(f"int8 conv needs uint8 codes and int8_conv_weights (or float_conv_weights) for a "
                          f"{kh}x{kw} kernel on {c} channels and {channels} outputs, got codes {tuple(shape)} "
                          f"and weights {wt.dtype} {wt.shape}")
    if exact_float and not float32_exact(kh * kw * c * int(a_max) * (
            int(w_abs_max) if w_abs_max is not None else int(np.abs(wt).max(initial=0)))):
        raise EngineError(f"float32 conv: codes <= {a_max} against these weights over K = {kh * kw * c} could "
                          f"pass {FLOAT32_EXACT}, where float32 rounds; use int8_conv_weights")
    if not exact_float and 4 * wt.shape[0] > INT32_SAFE_K:
        raise EngineError(f"int8 conv: K = {4 * wt.shape[0]} could overflow int32 (at most {INT32_SAFE_K})")
    ph, pw = _pooled_size(oh, ow, pool)
    dest, layout, result = conv_output(to, n, channels, ph, pw)
    if not n * channels * ph * pw:
        return lambda x: result
    hp, wp = h + 2 * padding, w + 2 * padding
    # NHWC, zero-padded, 8 bytes of slack; float32 codes for the float32 tile (converted from a
    # producer's laid-out bytes, if any: one pass over the input)
    flat = None if laid and not exact_float else np.zeros(n * hp * wp * c + 8, np.float32 if exact_float else np.uint8)
    sums = np.zeros(n * hp * wp if offset else 1, np.int32)
    one_row = pool == 1 and n * oh * ow < INT8_ROWS  # no repeated rows (`_int8_kernel`)
    kernel = _int8_kernel("float_conv" if exact_float else "conv",
                          False if exact_float else split_for(a_max, wt, w_abs_max), 1 if one_row else INT8_ROWS)
    args = (kh, kw, c, hp, wp, stride, oh, ow, pool, wt, sums, np.int64(scale), np.int64(offset),
            *(prepared or block_thresholds(th, direction, n_pad)), dest, dest.view(np.uint8), layout)
    work = n * channels * ph * pw * pool * pool * wt.shape[0] * 4 // 16

    def call(x):
        if flat is None:
            codes = x.data
        else:
            codes = flat
            if laid:
                flat[:] = x.data
            else:
                with _threads_for(n * c * h * w):
                    _nhwc_kernel(x, padding, flat)
        if offset:
            with _threads_for(n * hp * ow * kw * c):
                _patch_sums_kernel(codes, n, kh, kw, c, hp, wp, stride, oh, ow, sums)
        with _threads_for(work):
            kernel(codes, *args)
        return result

    return call
