"""The Tensor and its reverse-mode automatic differentiation.

A Tensor wraps a NumPy array. Every operation on tensors that require gradients records, on the
output tensor, its input tensors (`_parents`) and a `_backward` closure that maps the gradient of
the output to the gradients of the inputs. `Tensor.backward()` sorts the recorded graph
topologically (iteratively, so graphs deeper than Python's recursion limit work) and runs the
closures in reverse order, summing the gradients that reach a tensor along several paths.

Behaviour worth knowing (it is what PyTorch does):
- Only leaf tensors created with `requires_grad=True` (e.g. Parameters) keep `.grad`.
- Gradients accumulate: a second `backward()` adds to `.grad`; call `zero_grad()` between steps.
  The graph is not freed, so calling `backward()` twice on the same output is allowed.
- Inside `with no_grad():` nothing is recorded.

New operations are written with `Tensor.from_op(data, parents, backward)`: see `tinypact.ops`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

_grad_enabled = True


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Context manager under which operations record no graph (evaluation, optimizer steps)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    return _grad_enabled


def sum_to(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Reduce a broadcast gradient back to `shape`: the one place broadcasting is undone.

    Broadcasting an input of `shape` to the output's shape copies it along (a) extra leading
    axes and (b) axes where `shape` has size 1; the gradient of a copy is the sum over the copies.
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, size in enumerate(shape) if size == 1 and grad.shape[extra + i] != 1
    )
    grad = grad.sum(axis=axes, keepdims=True) if axes else grad
    return grad.reshape(shape)


Backward = Callable[[np.ndarray], Sequence["np.ndarray | None"]]


@dataclass(frozen=True)
class Codes:
    """The integer view of a quantized tensor: its data is exactly `values * scale`.

    `values` holds integers (float32, same shape and memory layout as the tensor's data),
    `scale` is the float32 real value of one unit and `max` bounds |values|. The quantizers
    (tinypact.quant) attach Codes to their outputs; the ops that only move, pool or sum values
    (max/avg pooling, pad, flatten) carry them along; conv2d and linear multiply the integers
    when both operands have them (PACT Sec. 4.2: the scale is applied once, after the MACs).
    Every other op returns a tensor without codes.
    """

    values: np.ndarray
    scale: np.float32
    max: int


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    float32 by default (like PyTorch); a float64 NumPy array stays float64 (gradient checks use
    it); integer arrays (labels) stay integer and cannot require gradients.
    """

    __array_priority__ = 1000  # make `ndarray + Tensor` call Tensor.__radd__
    codes: Codes | None = None  # the integer view, on the outputs of quantizers (see Codes)

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        if dtype is not None:
            array = np.asarray(data, dtype=dtype)
        elif isinstance(data, np.ndarray) and data.dtype.kind in "fiub":
            array = data if data.dtype.kind in "fiu" else data.astype(np.float32)
        else:
            array = np.asarray(data, dtype=np.float32)
        if requires_grad and array.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got {array.dtype}")
        self.data: np.ndarray = array
        self.grad: np.ndarray | None = None
        self.requires_grad = bool(requires_grad)
        self._parents: tuple[Tensor, ...] = ()
        self._backward: Backward | None = None
        self._op = ""

    # ----------------------------------------------------------------------------- graph building
    @classmethod
    def from_op(cls, data: np.ndarray, parents: Sequence["Tensor"], backward: Backward,
                op: str = "") -> "Tensor":
        """The result of an operation: records `parents` and `backward` if a gradient is needed.

        `backward(grad_out)` returns one gradient per parent (same shape as that parent's data,
        or None for "no gradient"), computed from values the closure captured in the forward.
        """
        out = cls.__new__(cls)
        out.data = data
        out.grad = None
        out._op = op
        if _grad_enabled and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = tuple(parents)
            out._backward = backward
        else:
            out.requires_grad = False
            out._parents = ()
            out._backward = None
        return out

    def _topological_order(self) -> list["Tensor"]:
        """Nodes that need a gradient, each after all nodes it depends on (iterative DFS)."""
        order, visited = [], set()
        stack: list[tuple[Tensor, bool]] = [(self, False)]
        while stack:
            node, children_done = stack.pop()
            if children_done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for parent in node._parents:
                if parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
        return order

    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into `.grad` of every leaf that requires a gradient.

        `grad` is the gradient of some scalar with respect to self; it defaults to 1 for a
        one-element tensor (a loss).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: "
                               "did you forget requires_grad=True, or call it under no_grad()?")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() needs a gradient argument for a non-scalar "
                                   f"output of shape {self.data.shape}")
            grad = np.ones_like(self.data)
        grads = {id(self): np.asarray(grad, dtype=self.data.dtype).reshape(self.data.shape)}
        for node in reversed(self._topological_order()):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._backward is None:  # a leaf: keep its gradient
                node.grad = g.copy() if node.grad is None else node.grad + g
                continue
            for parent, pg in zip(node._parents, node._backward(g)):
                if pg is None or not parent.requires_grad:
                    continue
                if pg.shape != parent.data.shape:
                    raise RuntimeError(f"internal error: {node._op} backward gave a gradient of "
                                       f"shape {pg.shape} for an input of shape {parent.data.shape}")
                pg = pg.astype(parent.data.dtype, copy=False)
                key = id(parent)
                grads[key] = pg if key not in grads else grads[key] + pg

    # ------------------------------------------------------------------------------- basics
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def T(self) -> "Tensor":
        return self.transpose()

    def __len__(self) -> int:
        return len(self.data)

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> "Tensor":
        """The same data, cut off from the graph (no copy)."""
        return Tensor(self.data)

    def zero_grad(self) -> None:
        self.grad = None

    def astype(self, dtype) -> "Tensor":
        return Tensor(self.data.astype(dtype), requires_grad=self.requires_grad)

    def __repr__(self) -> str:
        extra = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}{extra})"

    # ----------------------------------------------------- operators (implemented in tinypact.ops)
    def __add__(self, other): return ops.add(self, other)
    def __radd__(self, other): return ops.add(other, self)
    def __sub__(self, other): return ops.sub(self, other)
    def __rsub__(self, other): return ops.sub(other, self)
    def __mul__(self, other): return ops.mul(self, other)
    def __rmul__(self, other): return ops.mul(other, self)
    def __truediv__(self, other): return ops.div(self, other)
    def __rtruediv__(self, other): return ops.div(other, self)
    def __neg__(self): return ops.neg(self)
    def __pow__(self, exponent: float): return ops.pow(self, exponent)
    def __matmul__(self, other): return ops.matmul(self, other)
    def __rmatmul__(self, other): return ops.matmul(other, self)
    def __getitem__(self, index): return ops.getitem(self, index)

    def sum(self, axis=None, keepdims=False): return ops.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return ops.mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return ops.max(self, axis, keepdims)
    def reshape(self, *shape): return ops.reshape(self, shape[0] if len(shape) == 1 else shape)
    def transpose(self, *axes): return ops.permute(self, axes[0] if len(axes) == 1 else (axes or None))
    def permute(self, *axes): return ops.permute(self, axes[0] if len(axes) == 1 else axes)
    def exp(self): return ops.exp(self)
    def log(self): return ops.log(self)
    def tanh(self): return ops.tanh(self)
    def sqrt(self): return ops.sqrt(self)
    def abs(self): return ops.abs(self)
    def relu(self): return ops.relu(self)
    def clip(self, low, high): return ops.clip(self, low, high)


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """Create a Tensor (PyTorch's `torch.tensor`)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


from tinypact import ops  # noqa: E402  (ops needs Tensor; Tensor's operators need ops)
