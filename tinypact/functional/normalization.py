"""Batch normalisation with fused forward and backward passes per channel."""
from __future__ import annotations

import numpy as np

from tinypact import _kernels
from tinypact.functional._layout import to_nchw, to_nhwc
from tinypact.tensor import Tensor


def _as_rows(x: np.ndarray) -> np.ndarray:
    """x as a C-contiguous (rows, channels) array: (N, C) as is, NCHW via its NHWC buffer."""
    if x.ndim == 2:
        return np.ascontiguousarray(x)
    if x.ndim == 4:
        return to_nhwc(x).reshape(-1, x.shape[1])
    raise ValueError(f"batch_norm expects an (N, C) or (N, C, H, W) input, got shape {x.shape}")


def _from_rows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 2:
        return rows
    n, c, h, w = shape
    return to_nchw(rows.reshape(n, h, w, c))


def batch_norm(input: Tensor, running_mean: np.ndarray | None,  # noqa: A002
               running_var: np.ndarray | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """y = (x - mean) / sqrt(var + eps) * weight + bias, per channel (axis 1).

    training=True: mean and (biased) var of this batch over all axes but 1; the running
    statistics (NumPy arrays, updated in place) move towards them by `momentum`, PyTorch's
    convention: running = (1 - momentum) * running + momentum * batch (running_var gets the
    unbiased variance).  TensorFlow/tensorpack's "momentum 0.9" is momentum=0.1 here.
    training=False: the running statistics normalise, and nothing is updated.

    Backward in training mode, with xhat = (x - mean) * inv_std over the M = N*H*W values:
        dx = weight * inv_std * (g - mean(g) - xhat * mean(g * xhat)),
        dweight = sum(g * xhat),  dbias = sum(g).
    In eval mode the statistics are constants: dx = g * weight * inv_std.
    """
    x = input.data
    shape = x.shape
    channels = shape[1]
    rows = _as_rows(x)
    count = rows.shape[0]
    bounds = _kernels.row_chunks(count)
    dtype = x.dtype
    if training:
        if count < 2:
            raise ValueError(f"batch_norm in training mode needs more than one value per "
                             f"channel, got input shape {shape}")
        mean64 = _kernels.column_sums(rows, bounds) / count  # two passes, float64 sums
        var64 = _kernels.centered_square_sums(rows, mean64, bounds) / count
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean64
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += momentum * var64 * (count / (count - 1))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm in eval mode needs running_mean and running_var")
        mean64, var64 = running_mean.astype(np.float64), running_var.astype(np.float64)
    inv_std64 = 1.0 / np.sqrt(var64 + eps)
    gamma = np.ones(channels) if weight is None else weight.data.astype(np.float64)
    beta = np.zeros(channels) if bias is None else bias.data.astype(np.float64)
    scale = (gamma * inv_std64).astype(dtype)
    shift = (beta - mean64 * gamma * inv_std64).astype(dtype)
    out = np.empty_like(rows)
    _kernels.affine_columns(rows, scale, shift, out, bounds)
    mean, inv_std = mean64.astype(dtype), inv_std64.astype(dtype)

    def backward(g):
        g_rows = _as_rows(g)
        sum_g, sum_gx = _kernels.batch_norm_grad_sums(g_rows, rows, mean, inv_std, bounds)
        grad_x = None
        if input.requires_grad:
            if training:
                grad_rows = np.empty_like(rows)
                _kernels.batch_norm_grad_input(g_rows, rows, mean, inv_std, scale,
                                               (sum_g / count).astype(dtype),
                                               (sum_gx / count).astype(dtype), grad_rows, bounds)
            else:
                grad_rows = g_rows * scale
            grad_x = _from_rows(grad_rows, shape)
        grads = [grad_x]
        if weight is not None:
            grads.append(sum_gx.astype(weight.dtype))
        if bias is not None:
            grads.append(sum_g.astype(bias.dtype))
        return tuple(grads)

    parents = (input,) + tuple(p for p in (weight, bias) if p is not None)
    return Tensor.from_op(_from_rows(out, shape), parents, backward, "batch_norm")
