"""Numba loops behind tinypact's hot ops (plain Python first), one pass over memory each.

- image ops on NHWC-contiguous arrays (channels innermost, the layout the functional ops keep
  their activations in): im2col / col2im, max pooling, batch-norm statistics and gradients,
  conv2d's bias and weight-gradient layout;
- elementwise passes over flat arrays in memory order: ReLU, the activation quantizer, the
  weight quantizers' levels and DoReFa's gradient, Adam's update.

Each is parallel over the batch, row chunks or elements, and plain Python that Numba compiles;
with NUMBA_DISABLE_JIT=1 they run as written (slowly). Where a kernel replaces NumPy
expressions that say the same thing more plainly, those stay beside it (ops.relu,
_clip_quantize_numpy, the *_weight_codes functions, Adam._update_numpy) and the tests hold the
two to the same bits (DoReFa's gradient: to float rounding).
"""
from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

from tinypact import _threads

# Below this many elements a kernel runs on one thread: waking the thread pool costs more.
# (TINYPACT_PARALLEL_KERNELS=0 keeps every kernel on one thread: _threads.PARALLEL.)
PARALLEL_MIN_SIZE = 1 << 16


class _Kernel:
    """One loop compiled twice, serial and parallel (prange); the call picks by the size of
    its first argument, and serial on conv2d's block threads (tinypact/_threads.py). The serial
    copy gets its own name so Numba's on-disk caches differ."""

    def __init__(self, function):
        serial = types.FunctionType(function.__code__, function.__globals__,
                                    function.__name__ + "_serial", function.__defaults__)
        serial.__qualname__ = function.__qualname__ + "_serial"
        self.serial = njit(cache=True, nogil=True)(serial)  # nogil: conv2d's block threads
        self.parallel = njit(parallel=True, cache=True)(function)
        self.__doc__, self.__name__ = function.__doc__, function.__name__

    def __call__(self, *args):
        big = _threads.PARALLEL and args[0].size >= PARALLEL_MIN_SIZE and not _threads.in_worker()
        return (self.parallel if big else self.serial)(*args)


def kernel(function) -> _Kernel:
    return _Kernel(function)


@kernel
def im2col_nhwc(x: np.ndarray, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                cols: np.ndarray) -> None:
    """cols[n, oh, ow, i, j, c] = x[n, oh*sh + i - ph, ow*sw + j - pw, c], 0 outside the image.

    x: (N, H, W, C), cols: (N, OH, OW, KH, KW, C). The zero padding is written here, so the
    input needs no padded copy.
    """
    n_batch, out_h, out_w, kernel_h, kernel_w, channels = cols.shape
    height, width = x.shape[1], x.shape[2]
    for n in prange(n_batch):
        for oh in range(out_h):
            for ow in range(out_w):
                for i in range(kernel_h):
                    row = oh * stride_h + i - pad_h
                    for j in range(kernel_w):
                        col = ow * stride_w + j - pad_w
                        if 0 <= row < height and 0 <= col < width:
                            for c in range(channels):
                                cols[n, oh, ow, i, j, c] = x[n, row, col, c]
                        else:
                            for c in range(channels):
                                cols[n, oh, ow, i, j, c] = 0.0


@kernel
def col2im_nhwc(dcols: np.ndarray, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                out: np.ndarray) -> None:
    """The adjoint of im2col: out[n, oh*sh + i - ph, ow*sw + j - pw, c] += dcols[n, oh, ow, i, j, c]
    for every window position inside the image (what fell on the padding is dropped).

    dcols: (N, OH, OW, KH, KW, C), out: (N, H, W, C), zeroed here image by image (each image
    is one task, so the adds of overlapping windows never race).
    """
    n_batch, out_h, out_w, kernel_h, kernel_w, channels = dcols.shape
    height, width = out.shape[1], out.shape[2]
    for n in prange(n_batch):
        out[n] = 0.0
        for oh in range(out_h):
            for i in range(kernel_h):
                row = oh * stride_h + i - pad_h
                if row < 0 or row >= height:
                    continue
                for ow in range(out_w):
                    for j in range(kernel_w):
                        col = ow * stride_w + j - pad_w
                        if col < 0 or col >= width:
                            continue
                        for c in range(channels):
                            out[n, row, col, c] += dcols[n, oh, ow, i, j, c]


@kernel
def max_pool_forward_nhwc(x: np.ndarray, kernel_h: int, kernel_w: int, stride_h: int,
                          stride_w: int, pad_h: int, pad_w: int, out: np.ndarray,
                          argmax: np.ndarray) -> None:
    """out[n, oh, ow, c] = max over the window; argmax = flat input index h*W + w of the first max.

    Positions outside the input (padding) count as -inf: they are skipped, and PyTorch's
    output-size rule guarantees every window overlaps the input. The channel loop is innermost
    so that it vectorises.
    """
    n_batch, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    for n in prange(n_batch):
        for oh in range(out_h):
            h0 = oh * stride_h - pad_h
            for ow in range(out_w):
                w0 = ow * stride_w - pad_w
                first = True
                for i in range(kernel_h):
                    h = h0 + i
                    if h < 0 or h >= height:
                        continue
                    for j in range(kernel_w):
                        w = w0 + j
                        if w < 0 or w >= width:
                            continue
                        index = h * width + w
                        if first:
                            for c in range(channels):
                                out[n, oh, ow, c] = x[n, h, w, c]
                                argmax[n, oh, ow, c] = index
                            first = False
                        else:
                            for c in range(channels):
                                v = x[n, h, w, c]
                                if v > out[n, oh, ow, c]:
                                    out[n, oh, ow, c] = v
                                    argmax[n, oh, ow, c] = index


@kernel
def max_pool_backward_nhwc(grad_out: np.ndarray, argmax: np.ndarray, grad_in: np.ndarray) -> None:
    """grad_in[n, argmax // W, argmax % W, c] += grad_out[n, oh, ow, c]; grad_in is zeroed
    here, image by image (one task each, so overlapping windows never race)."""
    n_batch, out_h, out_w, channels = grad_out.shape
    width = grad_in.shape[2]
    for n in prange(n_batch):
        grad_in[n] = 0.0
        for oh in range(out_h):
            for ow in range(out_w):
                for c in range(channels):
                    index = argmax[n, oh, ow, c]
                    grad_in[n, index // width, index % width, c] += grad_out[n, oh, ow, c]


@kernel
def centered_square_sums(x: np.ndarray, mean: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """sum over r of (x[r, c] - mean[c])^2 (M, C), in float64, one partial sum per row chunk:
    batch-norm's variance times M, the second pass after the mean (`column_sums`)."""
    channels = x.shape[1]
    parts = bounds.shape[0] - 1
    partial = np.zeros((parts, channels))
    for p in prange(parts):
        for r in range(bounds[p], bounds[p + 1]):
            for c in range(channels):
                d = x[r, c] - mean[c]
                partial[p, c] += d * d
    return partial.sum(axis=0)


@kernel
def affine_columns(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, out: np.ndarray,
                   bounds: np.ndarray) -> None:
    """out[r, c] = x[r, c] * scale[c] + shift[c]."""
    channels = x.shape[1]
    for p in prange(bounds.shape[0] - 1):
        for r in range(bounds[p], bounds[p + 1]):
            for c in range(channels):
                out[r, c] = x[r, c] * scale[c] + shift[c]


@kernel
def batch_norm_grad_sums(grad: np.ndarray, x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
                         bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum_r g[r, c] and sum_r g[r, c] * xhat[r, c] with xhat = (x - mean) * inv_std (float64)."""
    channels = x.shape[1]
    parts = bounds.shape[0] - 1
    sum_g = np.zeros((parts, channels))
    sum_gx = np.zeros((parts, channels))
    for p in prange(parts):
        for r in range(bounds[p], bounds[p + 1]):
            for c in range(channels):
                g = grad[r, c]
                sum_g[p, c] += g
                sum_gx[p, c] += g * (x[r, c] - mean[c]) * inv_std[c]
    return sum_g.sum(axis=0), sum_gx.sum(axis=0)


@kernel
def batch_norm_grad_input(grad: np.ndarray, x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
                          scale: np.ndarray, mean_g: np.ndarray, mean_gx: np.ndarray,
                          out: np.ndarray, bounds: np.ndarray) -> None:
    """dx = weight * inv_std * (g - mean(g) - xhat * mean(g * xhat)), per column.

    `scale` = weight * inv_std; `mean_g`, `mean_gx` are the column means of g and g * xhat.
    """
    channels = x.shape[1]
    for p in prange(bounds.shape[0] - 1):
        for r in range(bounds[p], bounds[p + 1]):
            for c in range(channels):
                xhat = (x[r, c] - mean[c]) * inv_std[c]
                out[r, c] = scale[c] * (grad[r, c] - mean_g[c] - xhat * mean_gx[c])


def row_chunks(rows: int, parts: int = 16) -> np.ndarray:
    """Row bounds splitting `rows` into about `parts` chunks (tasks for prange)."""
    parts = max(1, min(parts, rows))
    return np.linspace(0, rows, parts + 1).astype(np.int64)


@kernel
def clip_quantize(x: np.ndarray, alpha, n, scale, out: np.ndarray, codes: np.ndarray,
                  region: np.ndarray) -> None:
    """The activation quantizer in one pass over flat float32 arrays (tinypact.quant.functional):

        y = min(max(x, 0), alpha);  v = y * n;  v = v / alpha;  q = floor(v) + [v - floor(v) >= 1/2]
        codes = q,  out = q * scale,  region = 0 (x < 0), 1 (0 <= x < alpha), 2 (x >= alpha)

    Each step is one float32 operation in this order, exactly as the NumPy expressions it
    replaces (alpha, n and scale are float32 scalars), so the codes are bit-identical.
    """
    zero, half = x.dtype.type(0), x.dtype.type(0.5)
    for i in prange(x.shape[0]):
        xi = x[i]
        y = min(max(xi, zero), alpha)
        v = y * n
        v = v / alpha
        whole = np.floor(v)
        q = whole + (x.dtype.type(1) if v - whole >= half else zero)
        codes[i] = q
        out[i] = q * scale
        region[i] = 0 if xi < zero else (1 if xi < alpha else 2)


@kernel
def adam_update(p: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, weight_decay,
                beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, bias2_sqrt,
                eps) -> None:
    """Adam's update in one pass over flat float32 arrays (tinypact.optim.Adam):

        g = grad + wd * p   (when wd != 0)
        m = m * b1 + (1 - b1) * g;   v = v * b2 + (1 - b2) * (g * g)
        p = p - step_size * (m / (sqrt(v) / sqrt(1 - b2^t) + eps))

    Each step is one float32 operation, in the order of Adam._update_numpy's NumPy expressions
    (the scalars arrive as float32), so the bits are the same.
    """
    for i in prange(p.shape[0]):
        g = grad[i]
        if weight_decay != 0:
            g = g + weight_decay * p[i]
        mi = m[i] * beta1 + one_minus_beta1 * g
        vi = v[i] * beta2 + one_minus_beta2 * (g * g)
        m[i] = mi
        v[i] = vi
        denom = np.sqrt(vi) / bias2_sqrt + eps
        p[i] = p[i] - step_size * (mi / denom)


@kernel
def relu_forward(x: np.ndarray, out: np.ndarray) -> None:
    """out = x * (x > 0), flat: x where x > 0, else x * 0 (0, or NaN for NaN, as NumPy's)."""
    for i in prange(x.shape[0]):
        xi = x[i]
        out[i] = xi if xi > 0 else xi * 0


@kernel
def relu_backward(g: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out = g * (x > 0), flat (g * 1 or g * 0, as NumPy multiplies by the boolean mask)."""
    for i in prange(g.shape[0]):
        out[i] = g[i] * (1.0 if x[i] > 0 else 0.0)


@kernel
def add_row(x: np.ndarray, row: np.ndarray) -> None:
    """x[r, c] += row[c] for every row of x (M, C): a bias added in place."""
    for r in prange(x.shape[0]):
        for c in range(x.shape[1]):
            x[r, c] += row[c]


@kernel
def column_sums(x: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """sum over r of x[r, c] (M, C), accumulated in float64, one partial sum per row chunk."""
    channels = x.shape[1]
    parts = bounds.shape[0] - 1
    partial = np.zeros((parts, channels))
    for p in prange(parts):
        for r in range(bounds[p], bounds[p + 1]):
            for c in range(channels):
                partial[p, c] += x[r, c]
    return partial.sum(axis=0)


@kernel
def weight_grad_to_oihw(grad: np.ndarray, out: np.ndarray) -> None:
    """out[o, c, i, j] = grad[(i * KW + j) * C + c, o]: conv2d's weight gradient, computed as
    (KH*KW*C, O) by the matmul, in the weight's (O, C, KH, KW) layout. Blocks of 64 x 64 keep
    both the reads and the writes in cache (a plain transposed copy strides by C*O)."""
    rows, out_ch = grad.shape
    channels, kernel_h, kernel_w = out.shape[1], out.shape[2], out.shape[3]
    block = 64
    for ob in prange((out_ch + block - 1) // block):
        o0 = ob * block
        for r0 in range(0, rows, block):
            for r in range(r0, min(r0 + block, rows)):
                c = r % channels
                ij = r // channels
                i, j = ij // kernel_w, ij % kernel_w
                for o in range(o0, min(o0 + block, out_ch)):
                    out[o, c, i, j] = grad[r, o]


@kernel
def weight_levels(source: np.ndarray, divisor, clip: bool, n, s_w, levels: np.ndarray,
                  values: np.ndarray) -> None:
    """A weight quantizer's levels and values in one pass (tinypact.quant.functional), flat:

        u = source / divisor  (float64; clipped to [-1, 1] when `clip`);  u = u * 0.5 + 0.5
        v = u * n;  j = floor(v) + [v - floor(v) >= 1/2];  levels = float32(2j - n)
        values = levels * s_w  (float32)

    DoReFa passes tanh(w) and its max |tanh(w)|, SAWB the weights and alpha_w. Each step is the
    float64 (then float32) operation of the NumPy reading, in its order, so the same bits.
    """
    for i in prange(source.shape[0]):
        u = np.float64(source[i]) / divisor
        if clip:
            u = min(max(u, -1.0), 1.0)
        u = u * 0.5 + 0.5
        v = u * n
        whole = np.floor(v)
        j = whole + (1.0 if v - whole >= 0.5 else 0.0)
        level = np.float32(2 * np.int64(j) - n)
        levels[i] = level
        values[i] = level * s_w


@kernel
def dorefa_grad_sums(g: np.ndarray, t: np.ndarray, peak, bounds: np.ndarray) -> tuple[float, int]:
    """(sum of g * t, how many |t| equal peak), accumulated in float64 per row chunk."""
    parts = bounds.shape[0] - 1
    sums = np.zeros(parts)
    counts = np.zeros(parts, dtype=np.int64)
    for p in prange(parts):
        for i in range(bounds[p], bounds[p + 1]):
            sums[p] += g[i] * t[i]
            if abs(t[i]) == peak:
                counts[p] += 1
    return sums.sum(), counts.sum()


@kernel
def dorefa_grad(g: np.ndarray, t: np.ndarray, peak, peak_share, out: np.ndarray) -> None:
    """out = (g / peak + [|t| == peak] * sign(t) * peak_share) * (1 - t * t), flat, in float64
    then out's dtype: the gradient of tanh(w) / max|tanh(w)| (peak_share: the max's gradient,
    split between the tied maxima)."""
    for i in prange(g.shape[0]):
        ti = t[i]
        grad_t = g[i] / peak
        if abs(ti) == peak:
            grad_t += peak_share * (1.0 if ti > 0 else (-1.0 if ti < 0 else 0.0))
        out[i] = grad_t * (1.0 - ti * ti)
