"""Max and average pooling over NCHW inputs, forward beside backward."""
from __future__ import annotations

import numpy as np

from tinypact import _kernels
from tinypact.functional._layout import pad_nhwc, pair, to_nchw, to_nhwc, windows
from tinypact.tensor import Codes, Tensor


def pool_output_size(size: int, kernel: int, stride: int, padding: int,
                     ceil_mode: bool = False) -> int:
    """PyTorch's rule: (size + 2p - k) / s + 1 rounded down (or up with ceil_mode), where a
    ceil-mode window must start inside the input or its left padding."""
    span = size + 2 * padding - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _check_pool_args(x: np.ndarray, kernel_size, stride, padding, name: str):
    if x.ndim != 4:
        raise ValueError(f"{name} expects an NCHW input, got shape {x.shape}")
    kernel_h, kernel_w = pair(kernel_size, "kernel_size")
    stride_h, stride_w = pair(kernel_size if stride is None else stride, "stride")
    pad_h, pad_w = pair(padding, "padding")
    if 2 * pad_h > kernel_h or 2 * pad_w > kernel_w:
        raise ValueError(f"{name}: padding {padding} must be at most half the kernel {kernel_size}")
    return kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0,  # noqa: A002
               ceil_mode: bool = False) -> Tensor:
    """out[n, c, y, x] = max over the window (padding counts as -inf); PyTorch's max_pool2d.

    TensorFlow's "SAME" pooling with kernel 2, stride 2 is padding=0 on even sizes
    (36 -> 18, 18 -> 9) and ceil_mode=True on odd ones (9 -> 5).
    Backward: the gradient goes to the first maximum of each window.
    Codes (a quantized input) are carried along: the code of each window's maximum (values are
    `codes * scale` with scale > 0, so the maximum value is the maximum code).
    """
    x = input.data
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w = _check_pool_args(
        x, kernel_size, stride, padding, "max_pool2d")
    n, c, h, w = x.shape
    out_h = pool_output_size(h, kernel_h, stride_h, pad_h, ceil_mode)
    out_w = pool_output_size(w, kernel_w, stride_w, pad_w, ceil_mode)
    x_nhwc = to_nhwc(x)
    out = np.empty((n, out_h, out_w, c), dtype=x.dtype)
    argmax = np.empty((n, out_h, out_w, c), dtype=np.int32)
    _kernels.max_pool_forward_nhwc(x_nhwc, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                   out, argmax)

    def backward(g):
        grad = np.empty((n, h, w, c), dtype=x.dtype)  # zeroed by the kernel
        _kernels.max_pool_backward_nhwc(to_nhwc(g), argmax, grad)
        return (to_nchw(grad),)

    result = Tensor.from_op(to_nchw(out), (input,), backward, "max_pool2d")
    if input.codes is not None:
        codes = to_nhwc(input.codes.values).reshape(n, h * w, c)
        pooled = np.take_along_axis(codes, argmax.reshape(n, out_h * out_w, c), axis=1)
        result.codes = Codes(to_nchw(pooled.reshape(n, out_h, out_w, c)), input.codes.scale,
                             input.codes.max)
    return result


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0) -> Tensor:  # noqa: A002
    """out[n, c, y, x] = mean of the window over the zero-padded input (PyTorch's default
    count_include_pad=True).  kernel_size="global" averages over all of H x W.

    Backward: each input position receives g / (KH*KW) from every window that covers it.
    A quantized input (with `Codes`) is pooled as integers, the way integer_engine does: the
    output's codes are the window sums and its scale is `scale / (KH*KW)`, and its value is
    exactly `sums * (scale / (KH*KW))` in float32 (the same mean, rounded once).
    """
    x = input.data
    if isinstance(kernel_size, str):
        if kernel_size != "global":
            raise ValueError(f"avg_pool2d: kernel_size must be an int, a pair or 'global', "
                             f"got {kernel_size!r}")
        return global_avg_pool2d(input)
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w = _check_pool_args(
        x, kernel_size, stride, padding, "avg_pool2d")
    n, c, h, w = x.shape
    out_h = pool_output_size(h, kernel_h, stride_h, pad_h)
    out_w = pool_output_size(w, kernel_w, stride_w, pad_w)
    quantized = input.codes is not None
    padded = pad_nhwc(input.codes.values if quantized else x, pad_h, pad_w)
    views = windows(padded, kernel_h, kernel_w, stride_h, stride_w, out_h, out_w)
    inv_area = 1.0 / (kernel_h * kernel_w)
    out = np.zeros((n, out_h, out_w, c), dtype=x.dtype)
    for i in range(kernel_h):  # KH*KW vectorised adds beat one strided reduction
        for j in range(kernel_w):
            out += views[:, :, :, i, j, :]
    codes = None
    if quantized:
        codes = _pooled_codes(input.codes, to_nchw(out.copy()), kernel_h * kernel_w)
        out *= codes.scale
    else:
        out *= x.dtype.type(inv_area)
    padded_shape = padded.shape

    def backward(g):
        g_share = to_nhwc(g) * x.dtype.type(inv_area)
        grad = np.zeros(padded_shape, dtype=x.dtype)
        rows_end, cols_end = stride_h * (out_h - 1) + 1, stride_w * (out_w - 1) + 1
        for i in range(kernel_h):
            for j in range(kernel_w):
                grad[:, i:i + rows_end:stride_h, j:j + cols_end:stride_w, :] += g_share
        return (to_nchw(grad[:, pad_h:pad_h + h, pad_w:pad_w + w, :]),)

    result = Tensor.from_op(to_nchw(out), (input,), backward, "avg_pool2d")
    result.codes = codes
    return result


def _pooled_codes(codes: Codes, sums: np.ndarray, area: int) -> Codes:
    """The Codes of an average pool: window sums (exact: integers far below 2**24) and the
    scale divided by the window's area, in the scale's dtype (float32)."""
    if codes.max * area > 2**24:
        raise ValueError(f"average pooling {area} codes of up to {codes.max} is not exact in float32")
    return Codes(sums, codes.scale / type(codes.scale)(area), codes.max * area)


def global_avg_pool2d(input: Tensor) -> Tensor:  # noqa: A002
    """Mean over H and W, keeping them as size 1: (N, C, H, W) -> (N, C, 1, 1);
    backward: g / (H*W) broadcast over the window. Codes: window sums, as avg_pool2d."""
    x = input.data
    if x.ndim != 4:
        raise ValueError(f"global_avg_pool2d expects an NCHW input, got shape {x.shape}")
    n, c, h, w = x.shape
    codes = None
    if input.codes is not None:
        sums = input.codes.values.sum(axis=(2, 3), keepdims=True, dtype=x.dtype)
        codes = _pooled_codes(input.codes, sums, h * w)
        out = sums * codes.scale
    else:
        out = x.mean(axis=(2, 3), keepdims=True, dtype=x.dtype)

    def backward(g):
        return (np.broadcast_to(g * x.dtype.type(1.0 / (h * w)), x.shape).copy(),)

    result = Tensor.from_op(out, (input,), backward, "global_avg_pool2d")
    result.codes = codes
    return result
