"""log-softmax and cross-entropy, with their fused backward passes."""
from __future__ import annotations

import numpy as np

from tinypact.tensor import Tensor


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def log_softmax(input: Tensor, dim: int = -1) -> Tensor:  # noqa: A002
    """y = x - log sum_j exp(x_j) along `dim` (shifted by the max for stability);
    dx = g - softmax(x) * sum_j g_j."""
    out = _log_softmax(input.data, dim)

    def backward(g):
        return (g - np.exp(out) * g.sum(axis=dim, keepdims=True),)

    return Tensor.from_op(out, (input,), backward, "log_softmax")


def cross_entropy(input: Tensor, target, reduction: str = "mean") -> Tensor:  # noqa: A002
    """Mean (or sum) over the batch of -log softmax(logits)[n, target[n]].

    input: logits (N, classes); target: integer labels (N,).
    dlogits = (softmax(logits) - onehot(target)) * g / N   (without / N for reduction="sum").
    """
    logits = input.data
    labels = np.asarray(target.data if isinstance(target, Tensor) else target)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"cross_entropy expects logits (N, classes) and labels (N,), got "
                         f"{logits.shape} and {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy labels must be integers, got {labels.dtype}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    n, classes = logits.shape
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"cross_entropy labels must lie in [0, {classes}), got "
                         f"[{labels.min()}, {labels.max()}]")
    logp = _log_softmax(logits, 1)
    rows = np.arange(n)
    total = -logp[rows, labels].sum(dtype=np.float64)
    divisor = n if reduction == "mean" else 1
    out = np.asarray(total / divisor, dtype=logits.dtype)

    def backward(g):
        grad = np.exp(logp)
        grad[rows, labels] -= 1
        return (grad * (g / divisor),)

    return Tensor.from_op(out, (input,), backward, "cross_entropy")
