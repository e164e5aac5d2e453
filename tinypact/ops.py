"""Tensor operations: each forward next to its backward.

Every op computes its output with NumPy and hands `Tensor.from_op` a closure that turns the
output's gradient `g` into its inputs' gradients. Binary ops broadcast like NumPy; their
gradients are reduced back to each input's shape by `sum_to`, the one place that happens.
"""
from __future__ import annotations

import builtins

import numpy as np

from tinypact.tensor import Tensor, sum_to


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """`x` as a Tensor; Python numbers and arrays take the dtype of `like` (no upcasting)."""
    if isinstance(x, Tensor):
        return x
    dtype = like.dtype if like is not None and like.dtype.kind == "f" else None
    return Tensor(np.asarray(x, dtype=dtype) if dtype is not None else x)


def _pair(a, b) -> tuple[Tensor, Tensor]:
    if isinstance(a, Tensor):
        return a, as_tensor(b, like=a)
    return as_tensor(a, like=b), b


# ------------------------------------------------------------------------------ elementwise
def add(a, b) -> Tensor:
    """a + b;  da = g, db = g (each summed back to its shape)."""
    a, b = _pair(a, b)
    return Tensor.from_op(a.data + b.data, (a, b),
                          lambda g: (sum_to(g, a.shape), sum_to(g, b.shape)), "add")


def sub(a, b) -> Tensor:
    """a - b;  da = g, db = -g."""
    a, b = _pair(a, b)
    return Tensor.from_op(a.data - b.data, (a, b),
                          lambda g: (sum_to(g, a.shape), sum_to(-g, b.shape)), "sub")


def mul(a, b) -> Tensor:
    """a * b;  da = g * b, db = g * a."""
    a, b = _pair(a, b)
    return Tensor.from_op(a.data * b.data, (a, b),
                          lambda g: (sum_to(g * b.data, a.shape) if a.requires_grad else None,
                                     sum_to(g * a.data, b.shape) if b.requires_grad else None),
                          "mul")


def div(a, b) -> Tensor:
    """a / b;  da = g / b, db = -g * a / b^2."""
    a, b = _pair(a, b)
    out = a.data / b.data
    return Tensor.from_op(out, (a, b),
                          lambda g: (sum_to(g / b.data, a.shape) if a.requires_grad else None,
                                     sum_to(-g * out / b.data, b.shape) if b.requires_grad else None),
                          "div")


def neg(a: Tensor) -> Tensor:
    return Tensor.from_op(-a.data, (a,), lambda g: (-g,), "neg")


def pow(a: Tensor, exponent: float) -> Tensor:  # noqa: A001 (Tensor.__pow__'s implementation)
    """a ** p for a constant p;  da = g * p * a^(p-1)."""
    p = float(exponent)
    return Tensor.from_op(a.data ** p, (a,), lambda g: (g * p * a.data ** (p - 1),), "pow")


def exp(a: Tensor) -> Tensor:
    """e^a;  da = g * e^a."""
    out = np.exp(a.data)
    return Tensor.from_op(out, (a,), lambda g: (g * out,), "exp")


def log(a: Tensor) -> Tensor:
    """ln a;  da = g / a."""
    return Tensor.from_op(np.log(a.data), (a,), lambda g: (g / a.data,), "log")


def tanh(a: Tensor) -> Tensor:
    """tanh a;  da = g * (1 - tanh^2 a)."""
    out = np.tanh(a.data)
    return Tensor.from_op(out, (a,), lambda g: (g * (1 - out * out),), "tanh")


def sqrt(a: Tensor) -> Tensor:
    """sqrt a;  da = g / (2 sqrt a)."""
    out = np.sqrt(a.data)
    return Tensor.from_op(out, (a,), lambda g: (g / (2 * out),), "sqrt")


def abs(a: Tensor) -> Tensor:  # noqa: A001 (Tensor.abs's implementation)
    """|a|;  da = g * sign(a) (0 at 0)."""
    return Tensor.from_op(np.abs(a.data), (a,), lambda g: (g * np.sign(a.data),), "abs")


def relu(a: Tensor) -> Tensor:
    """max(a, 0);  da = g where a > 0."""
    mask = a.data > 0
    return Tensor.from_op(a.data * mask, (a,), lambda g: (g * mask,), "relu")


def clip(a: Tensor, low: float, high: float) -> Tensor:
    """min(max(a, low), high);  da = g where low <= a <= high (PyTorch's convention)."""
    inside = (a.data >= low) & (a.data <= high)
    return Tensor.from_op(np.clip(a.data, low, high), (a,), lambda g: (g * inside,), "clip")


# --------------------------------------------------------------------------------- matmul
def matmul(a, b) -> Tensor:
    """a @ b with NumPy's rules (1-D operands, batch broadcasting);
    da = g @ b^T, db = a^T @ g (1-D operands are promoted, then squeezed back)."""
    a, b = _pair(a, b)

    def backward(g):
        a2 = a.data[None, :] if a.ndim == 1 else a.data
        b2 = b.data[:, None] if b.ndim == 1 else b.data
        g2 = np.expand_dims(g, -2) if a.ndim == 1 else g
        g2 = np.expand_dims(g2, -1) if b.ndim == 1 else g2
        ga = gb = None
        if a.requires_grad:
            ga = g2 @ np.swapaxes(b2, -1, -2)
            ga = sum_to(ga.squeeze(-2) if a.ndim == 1 else ga, a.shape)
        if b.requires_grad:
            gb = np.swapaxes(a2, -1, -2) @ g2
            gb = sum_to(gb.squeeze(-1) if b.ndim == 1 else gb, b.shape)
        return ga, gb

    return Tensor.from_op(a.data @ b.data, (a, b), backward, "matmul")


# ------------------------------------------------------------------------------ reductions
def _normalize_axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(ax % ndim for ax in axes)


def sum(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Sum over `axis`;  da = g broadcast back over the summed axes."""
    axes = _normalize_axes(axis, a.ndim)

    def backward(g):
        g = g if keepdims else np.expand_dims(g, axes)
        return (np.broadcast_to(g, a.shape),)

    return Tensor.from_op(np.sum(a.data, axis=axes, keepdims=keepdims), (a,), backward, "sum")


def mean(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Mean over `axis`;  da = g / (number of averaged elements), broadcast back."""
    axes = _normalize_axes(axis, a.ndim)
    count = int(np.prod([a.shape[ax] for ax in axes])) if axes else 1
    return sum(a, axes, keepdims) * (1.0 / count)


def max(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Max over `axis`;  da = g at the arg-max positions (split evenly between ties)."""
    axes = _normalize_axes(axis, a.ndim)
    out_keep = np.max(a.data, axis=axes, keepdims=True)

    def backward(g):
        g = g if keepdims else np.expand_dims(g, axes)
        mask = a.data == out_keep
        return (mask * (g / mask.sum(axis=axes, keepdims=True)),)

    out = out_keep if keepdims else np.squeeze(out_keep, axis=axes)
    return Tensor.from_op(out, (a,), backward, "max")


# ------------------------------------------------------------------------------ shape ops
def reshape(a: Tensor, shape) -> Tensor:
    """View with a new shape;  da = g reshaped back."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return Tensor.from_op(a.data.reshape(shape), (a,), lambda g: (g.reshape(a.shape),), "reshape")


def permute(a: Tensor, axes=None) -> Tensor:
    """Reorder axes (reverse them when `axes` is None);  da = g with the inverse permutation."""
    axes = tuple(reversed(range(a.ndim))) if axes is None else tuple(ax % a.ndim for ax in axes)
    inverse = tuple(np.argsort(axes))
    return Tensor.from_op(np.transpose(a.data, axes), (a,),
                          lambda g: (np.transpose(g, inverse),), "permute")


def _is_basic_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return builtins.all(isinstance(p, (int, np.integer, slice, type(None), type(Ellipsis)))
                        for p in parts)


def getitem(a: Tensor, index) -> Tensor:
    """a[index] (basic or fancy);  da = g scattered back, summing repeated positions."""
    if isinstance(index, Tensor):
        index = index.data

    def backward(g):
        grad = np.zeros_like(a.data)
        if _is_basic_index(index):
            grad[index] += g
        else:
            np.add.at(grad, index, g)
        return (grad,)

    return Tensor.from_op(a.data[index], (a,), backward, "getitem")


def concatenate(tensors, axis: int = 0) -> Tensor:
    """Join along `axis`;  each input gets its slice of g."""
    tensors = [as_tensor(t) for t in tensors]
    bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1]
    return Tensor.from_op(np.concatenate([t.data for t in tensors], axis=axis), tensors,
                          lambda g: tuple(np.split(g, bounds, axis=axis)), "concatenate")


def where(condition: np.ndarray, a, b) -> Tensor:
    """condition ? a : b (condition is a constant boolean array);  da = g where cond, db elsewhere."""
    a, b = _pair(a, b)
    cond = np.asarray(condition, dtype=bool)
    return Tensor.from_op(np.where(cond, a.data, b.data), (a, b),
                          lambda g: (sum_to(g * cond, a.shape), sum_to(g * ~cond, b.shape)), "where")
