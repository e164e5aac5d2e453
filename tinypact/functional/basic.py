"""Dense layer, activation, dropout, padding and flattening, forward beside backward."""
from __future__ import annotations

import numpy as np

from tinypact import _kernels, ops, random
from tinypact.functional._integer import exact_matmul, integer_operands
from tinypact.tensor import Codes, Tensor


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:  # noqa: A002
    """y = x @ W^T + b with W of shape (out, in), x of shape (..., in).

    Backward:  dx = g @ W,  dW = g^T @ x,  db = sum of g over all but the last axis.
    Quantized operands (both carry `Codes`): out = (q @ c^T) * (s_a * s_w) + b, as conv2d.
    """
    x = input.data
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features but the weight expects "
                         f"{weight.shape[1]}")
    x2 = x.reshape(-1, x.shape[-1])
    integer = integer_operands(input, weight, x.shape[-1])
    if integer is None:
        out = x2 @ weight.data.T
    else:
        codes, levels, scale, dtype = integer
        out = exact_matmul(codes.reshape(x2.shape), levels.T, dtype)
        out *= scale
    if bias is not None:
        out += bias.data

    def backward(g):
        g2 = g.reshape(-1, g.shape[-1])
        grad_x = (g2 @ weight.data).reshape(x.shape) if input.requires_grad else None
        grad_w = g2.T @ x2 if weight.requires_grad else None
        if bias is None:
            return grad_x, grad_w
        return grad_x, grad_w, g2.sum(axis=0)

    parents = (input, weight) if bias is None else (input, weight, bias)
    return Tensor.from_op(out.reshape(x.shape[:-1] + (weight.shape[0],)), parents, backward,
                          "linear")


def relu(input: Tensor) -> Tensor:  # noqa: A002
    """max(x, 0);  dx = g where x > 0.

    tinypact.ops.relu is the plain reading (`x * (x > 0)`, `g * (x > 0)`); a float32 array
    goes through one fused Numba pass each way instead (`_kernels.relu_forward` and
    `relu_backward`: the same products, so the same bits), in the array's memory order.
    """
    x = input.data
    if x.dtype != np.float32 or not x.size:
        return ops.relu(input)
    out = np.empty_like(x)  # same memory order as x, so the flat views below line up
    _kernels.relu_forward(_flat(x), _flat(out))

    def backward(g):
        grad = np.empty_like(x)
        _kernels.relu_backward(_flat(_like(g, x)), _flat(x), _flat(grad))
        return (grad,)

    return Tensor.from_op(out, (input,), backward, "relu")


def _flat(a: np.ndarray) -> np.ndarray:
    """a's elements in memory order: a 1-D view of an array from np.empty_like (dense), a
    copy of a strided input (read only, so that is fine). empty_like(x) and x list their
    elements in the same order."""
    return a.ravel(order="K")


def _like(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """g laid out in memory like x (no copy when it already is)."""
    if g.strides == x.strides and g.dtype == x.dtype:
        return g
    same = np.empty_like(x)
    same[...] = g
    return same


def dropout(input: Tensor, p: float = 0.5, training: bool = True,  # noqa: A002
            generator: np.random.Generator | None = None) -> Tensor:
    """Inverted dropout: zero each value with probability p, scale the rest by 1/(1-p);
    identity when not training.  dx = g * mask / (1 - p)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return input
    x = input.data
    rng = random.default_generator() if generator is None else generator
    # Draw the mask in x's memory order (NHWC-backed activations stay NHWC-backed).
    order = np.argsort(x.strides)[::-1] if x.ndim > 1 else np.arange(x.ndim)
    draws = rng.random(tuple(x.shape[i] for i in order), dtype=np.float32)
    keep = np.transpose(draws >= p, np.argsort(order))
    mask = keep * x.dtype.type(1.0 / (1.0 - p))
    return Tensor.from_op(x * mask, (input,), lambda g: (g * mask,), "dropout")


def pad(input: Tensor, pad: tuple[int, ...], value: float = 0.0) -> Tensor:  # noqa: A002
    """Constant padding, PyTorch's order: (left, right) of the last axis, then (top, bottom)
    of the one before, and so on.  dx = g cropped back."""
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise ValueError(f"pad needs (before, after) pairs for at most {input.ndim} axes, "
                         f"got {pad}")
    widths = [(0, 0)] * input.ndim
    for k in range(len(pad) // 2):
        before, after = int(pad[2 * k]), int(pad[2 * k + 1])
        if before < 0 or after < 0:
            raise ValueError(f"pad widths must be non-negative, got {pad}")
        widths[input.ndim - 1 - k] = (before, after)
    out = np.pad(input.data, widths, constant_values=value)
    crop = tuple(slice(b, b + size) for (b, _), size in zip(widths, input.shape))
    result = Tensor.from_op(out, (input,), lambda g: (g[crop],), "pad")
    if input.codes is not None and value == 0:  # zero padding is the code 0
        codes = input.codes
        result.codes = Codes(np.pad(codes.values, widths), codes.scale, codes.max)
    return result


def flatten(input: Tensor, start_dim: int = 1) -> Tensor:  # noqa: A002
    """Merge axes start_dim.. into one, in C order (x.reshape(N, -1))."""
    shape = input.shape[:start_dim] + (-1,)
    out = ops.reshape(input, shape)
    if input.codes is not None:
        codes = input.codes
        out.codes = Codes(codes.values.reshape(out.shape), codes.scale, codes.max)
    return out
