"""2-D convolution lowered to one BLAS matmul (im2col), forward beside backward."""
from __future__ import annotations

import numpy as np

from tinypact import _kernels
from tinypact.functional._integer import exact_matmul, integer_operands
from tinypact.functional._layout import pair, to_nchw, to_nhwc
from tinypact.tensor import Tensor


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """floor((size + 2 padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,  # noqa: A002
           padding=0) -> Tensor:
    """Cross-correlation (PyTorch's conv2d), NCHW input (N, C, H, W), weight (O, C, KH, KW).

        out[n, o, y, x] = b[o] + sum_{c,i,j} w[o, c, i, j] * xpad[n, c, y*s + i, x*s + j]

    Lowered to one matmul: the windows of the NHWC input (zero outside it) become the rows of
    cols (N*OH*OW, KH*KW*C) and out = cols @ W^T with W reshaped to (O, KH*KW*C).
    Backward:  dW = (cols^T @ g)^T,  db = sum g,  dcols = g @ W  summed back (col2im) into dx.

    Quantized operands (input and weight both carry `Codes`, see functional/_integer.py): the
    matmul multiplies the integers, out = (q_cols @ c^T) * (s_a * s_w) + b, exact up to the one
    float32 rounding of each step; the gradients are the same formulas (cols = q_cols * s_a).
    """
    x = input.data
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"conv2d expects a 4-D input and weight, got {x.shape} and {weight.shape}")
    n, c, h, w = x.shape
    out_ch, c_w, kernel_h, kernel_w = weight.shape
    if c != c_w:
        raise ValueError(f"conv2d: input has {c} channels but the weight expects {c_w}")
    stride_h, stride_w = pair(stride, "stride")
    pad_h, pad_w = pair(padding, "padding")
    out_h = conv_output_size(h, kernel_h, stride_h, pad_h)
    out_w = conv_output_size(w, kernel_w, stride_w, pad_w)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"conv2d: kernel {kernel_h}x{kernel_w} larger than the padded input "
                         f"{h + 2 * pad_h}x{w + 2 * pad_w}")

    integer = integer_operands(input, weight, c * kernel_h * kernel_w)
    source = x if integer is None else integer[0]
    rows = n * out_h * out_w
    cols = np.empty((n, out_h, out_w, kernel_h, kernel_w, c), dtype=x.dtype)
    _kernels.im2col_nhwc(to_nhwc(source), stride_h, stride_w, pad_h, pad_w, cols)  # the one copy
    cols = cols.reshape(rows, -1)
    w_mat = weight.data.transpose(0, 2, 3, 1).reshape(out_ch, -1)  # (O, KH*KW*C), small copy
    if integer is None:
        out = cols @ w_mat.T
        cols_scale = None
    else:
        _, levels, scale, dtype = integer
        out = exact_matmul(cols, levels.transpose(0, 2, 3, 1).reshape(out_ch, -1).T, dtype)
        out *= scale
        cols_scale = input.codes.scale  # cols holds codes: the input's values are cols * scale
    if bias is not None:
        _kernels.add_row(out, bias.data)
    out_nchw = to_nchw(out.reshape(n, out_h, out_w, out_ch))

    def backward(g):
        g_rows = to_nhwc(g).reshape(rows, out_ch)
        grad_x = grad_w = grad_b = None
        if weight.requires_grad:
            # cols^T @ g, not g^T @ cols: NumPy's BLAS call is several times faster this way
            grad_cols = cols.T @ g_rows
            if cols_scale is not None:
                grad_cols *= cols_scale
            grad_w = np.empty(weight.shape, dtype=grad_cols.dtype)
            _kernels.weight_grad_to_oihw(grad_cols, grad_w)
        if bias is not None and bias.requires_grad:
            grad_b = _kernels.column_sums(g_rows, _kernels.row_chunks(rows)).astype(g_rows.dtype)
        if input.requires_grad:
            dcols = (g_rows @ w_mat).reshape(n, out_h, out_w, kernel_h, kernel_w, c)
            grad_nhwc = np.empty((n, h, w, c), dtype=x.dtype)
            _kernels.col2im_nhwc(dcols, stride_h, stride_w, pad_h, pad_w, grad_nhwc)
            grad_x = to_nchw(grad_nhwc)
        return (grad_x, grad_w) if bias is None else (grad_x, grad_w, grad_b)

    parents = (input, weight) if bias is None else (input, weight, bias)
    return Tensor.from_op(out_nchw, parents, backward, "conv2d")
