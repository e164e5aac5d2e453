"""The one registry of ops that drives the forward, gradient and broadcasting tests.

Each `OpSpec` names an op, its tinypact function, a float64 NumPy reference (plain nested loops
for the image ops) and a hypothesis strategy drawing valid inputs (`case`): a list of float
arrays (the differentiable inputs) and a dict of constant keyword arguments. Adding an op here
adds its tests in tests/test_ops.py; tests/test_functional.py reuses the loop references.

`check_gradients` is the generic float64 gradient checker: it weights the output by a random
vector w, so it checks the whole Jacobian-vector product w^T J, not only the gradient of a sum.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinypact import Tensor, ops
from tinypact import functional as F


# ------------------------------------------------------------------------------ input values
def values(draw, shape, kind: str = "real") -> np.ndarray:
    """A float64 array of `shape` whose values suit the op's domain.

    real: uniform in [-2, 2];  positive: in [0.5, 2];  nonzero: |v| in [0.5, 2];
    distinct: all values different and 0.02 or more away from any multiple of 0.05 (max, relu,
    abs, clip, pooling have kinks there; central differences must not straddle one).
    """
    size = int(np.prod(shape))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    if kind == "real":
        out = rng.uniform(-2, 2, size)
    elif kind == "positive":
        out = rng.uniform(0.5, 2, size)
    elif kind == "nonzero":
        out = rng.uniform(0.5, 2, size) * rng.choice([-1.0, 1.0], size)
    elif kind == "distinct":
        out = (rng.permutation(size) - size // 2) * 0.1 + 0.03
    else:
        raise ValueError(kind)
    return out.reshape(shape)


def maybe_noncontiguous(draw, array: np.ndarray) -> np.ndarray:
    """The same values, sometimes as a non-contiguous view (transposed copy, or every 2nd item)."""
    how = draw(st.sampled_from(["contiguous", "fortran", "strided"]))
    if how == "fortran" or array.ndim == 0:
        return np.asfortranarray(array)
    if how == "strided":
        wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],))
        wide[..., ::2] = array
        return wide[..., ::2]
    return array


def small_shape(min_dims=1, max_dims=3, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side)


# ------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class OpSpec:
    name: str
    function: Callable[..., Tensor]       # tinypact: (*tensors, **params) -> Tensor
    reference: Callable[..., np.ndarray]  # NumPy:    (*arrays, **params) -> array
    case: Callable[[Callable], tuple[list[np.ndarray], dict]]  # draw -> (arrays, params)
    broadcasting: bool = False
    grad_examples: int = 30               # central differences cost 2 forwards per element
    tags: tuple[str, ...] = field(default=())


def unary_case(kind="real", min_dims=0, max_dims=3):
    def case(draw):
        shape = draw(small_shape(min_dims, max_dims))
        return [maybe_noncontiguous(draw, values(draw, shape, kind))], {}
    return case


def binary_broadcast_case(kind_b="real"):
    def case(draw):
        shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3,
                                                        max_side=4)).input_shapes
        return [maybe_noncontiguous(draw, values(draw, shapes[0])),
                maybe_noncontiguous(draw, values(draw, shapes[1], kind_b))], {}
    return case


def reduction_case(kind="real"):
    def case(draw):
        shape = draw(small_shape(1, 3))
        axes = draw(st.one_of(st.none(), st.lists(st.integers(0, len(shape) - 1), min_size=1,
                                                  max_size=len(shape), unique=True)))
        keepdims = draw(st.booleans())
        return [maybe_noncontiguous(draw, values(draw, shape, kind))], {
            "axis": None if axes is None else tuple(axes), "keepdims": keepdims}
    return case


def matmul_case(draw):
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    form = draw(st.sampled_from(["2d", "batched", "vector_left", "vector_right"]))
    a_shape = {"2d": (m, k), "batched": (2, m, k), "vector_left": (k,), "vector_right": (m, k)}
    b_shape = {"2d": (k, n), "batched": (k, n), "vector_left": (k, n), "vector_right": (k,)}
    return [values(draw, a_shape[form]), values(draw, b_shape[form])], {}


def reshape_case(draw):
    shape = draw(small_shape(1, 3))
    size = int(np.prod(shape))
    target = draw(st.sampled_from([(size,), (1, size), (size, 1), (-1,)]))
    return [maybe_noncontiguous(draw, values(draw, shape))], {"shape": target}


def permute_case(draw):
    shape = draw(small_shape(1, 4))
    axes = draw(st.permutations(range(len(shape))))
    return [values(draw, shape)], {"axes": tuple(axes)}


def getitem_case(draw):
    shape = draw(small_shape(1, 3, 5))
    index = draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    if draw(st.booleans()):  # fancy index with repeats: gradients must add up
        index = (np.array(draw(st.lists(st.integers(0, shape[0] - 1), min_size=1, max_size=5))),)
    return [values(draw, shape)], {"index": index}


def concatenate_case(draw):
    shape = draw(small_shape(1, 3))
    axis = draw(st.integers(0, len(shape) - 1))
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    arrays = [values(draw, shape[:axis] + (s,) + shape[axis + 1:]) for s in sizes]
    return arrays, {"axis": axis}


def where_case(draw):
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3,
                                                    max_side=3)).input_shapes
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    return [values(draw, shapes[1]), values(draw, shapes[2])], {
        "condition": rng.random(shapes[0]) < 0.5}


def clip_case(draw):
    arrays, _ = unary_case("distinct")(draw)
    low = draw(st.sampled_from([-0.5, -0.25, 0.0]))
    return arrays, {"low": low, "high": low + draw(st.sampled_from([0.25, 0.5, 1.0]))}


def pow_case(draw):
    arrays, _ = unary_case("positive")(draw)
    return arrays, {"exponent": draw(st.sampled_from([-1.5, -1.0, 0.5, 2.0, 3.0]))}


# ------------------------------------------------------- nested-loop references (image ops)
def conv2d_reference(x, w, b=None, stride=1, padding=0):
    """out[n, o, y, x] = b[o] + sum_{c, i, j} w[o, c, i, j] * xpad[n, c, y*s + i, x*s + j]."""
    n, c, h, width = x.shape
    out_ch, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * padding, width + 2 * padding))
    xp[:, :, padding:padding + h, padding:padding + width] = x
    oh, ow = (h + 2 * padding - kh) // stride + 1, (width + 2 * padding - kw) // stride + 1
    out = np.zeros((n, out_ch, oh, ow))
    for b_ in range(n):
        for o in range(out_ch):
            for y in range(oh):
                for x_ in range(ow):
                    total = 0.0 if b is None else b[o]
                    for ch in range(c):
                        for i in range(kh):
                            for j in range(kw):
                                total += w[o, ch, i, j] * xp[b_, ch, y * stride + i, x_ * stride + j]
                    out[b_, o, y, x_] = total
    return out


def _pool_size(size, k, s, p, ceil_mode):
    if ceil_mode:
        out = -(-(size + 2 * p - k) // s) + 1
        return out - 1 if (out - 1) * s >= size + p else out
    return (size + 2 * p - k) // s + 1


def max_pool2d_reference(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Max over each window of the input padded with -inf (windows may hang over the end)."""
    stride = kernel_size if stride is None else stride
    n, c, h, w = x.shape
    oh, ow = (_pool_size(h, kernel_size, stride, padding, ceil_mode),
              _pool_size(w, kernel_size, stride, padding, ceil_mode))
    out = np.full((n, c, oh, ow), -np.inf)
    for b in range(n):
        for ch in range(c):
            for y in range(oh):
                for x_ in range(ow):
                    for i in range(kernel_size):
                        for j in range(kernel_size):
                            r, q = y * stride - padding + i, x_ * stride - padding + j
                            if 0 <= r < h and 0 <= q < w:
                                out[b, ch, y, x_] = max(out[b, ch, y, x_], x[b, ch, r, q])
    return out


def avg_pool2d_reference(x, kernel_size, stride=None, padding=0):
    """Mean of each window of the zero-padded input, divided by the full window area."""
    if kernel_size == "global":
        return x.mean(axis=(2, 3), keepdims=True)
    stride = kernel_size if stride is None else stride
    n, c, h, w = x.shape
    oh, ow = _pool_size(h, kernel_size, stride, padding, False), _pool_size(
        w, kernel_size, stride, padding, False)
    out = np.zeros((n, c, oh, ow))
    for b in range(n):
        for ch in range(c):
            for y in range(oh):
                for x_ in range(ow):
                    total = 0.0
                    for i in range(kernel_size):
                        for j in range(kernel_size):
                            r, q = y * stride - padding + i, x_ * stride - padding + j
                            if 0 <= r < h and 0 <= q < w:
                                total += x[b, ch, r, q]
                    out[b, ch, y, x_] = total / kernel_size ** 2
    return out


def batch_norm_reference(x, weight=None, bias=None, mean=None, var=None, eps=1e-5):
    """Per channel c (axis 1): (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c, with the
    batch's mean and biased variance over all other axes when mean/var are None."""
    c = x.shape[1]
    out = np.empty_like(x, dtype=np.float64)
    for ch in range(c):
        values_c = x[:, ch]
        mu = values_c.mean() if mean is None else mean[ch]
        sigma2 = ((values_c - values_c.mean()) ** 2).mean() if var is None else var[ch]
        gamma = 1.0 if weight is None else weight[ch]
        beta = 0.0 if bias is None else bias[ch]
        out[:, ch] = (values_c - mu) / np.sqrt(sigma2 + eps) * gamma + beta
    return out


def log_softmax_reference(x, dim=-1):
    shifted = x - x.max(axis=dim, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))


def cross_entropy_reference(logits, target, reduction="mean"):
    losses = [-log_softmax_reference(logits[n])[target[n]] for n in range(len(target))]
    return np.mean(losses) if reduction == "mean" else np.sum(losses)


# ------------------------------------------------------------------ image-op input strategies
def conv2d_case(draw):
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * padding), 6))
    w = draw(st.integers(max(1, kw - 2 * padding), 6))
    arrays = [values(draw, (n, c, h, w)), values(draw, (o, c, kh, kw))]
    if draw(st.booleans()):
        arrays.append(values(draw, (o,)))
    return arrays, {"stride": stride, "padding": padding}


def pool_case(draw, ceil=True):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, k // 2))
    h, w = draw(st.integers(k, 7)), draw(st.integers(k, 7))
    params = {"kernel_size": k, "stride": stride, "padding": padding}
    if ceil:
        params["ceil_mode"] = draw(st.booleans())
    return [values(draw, (n, c, h, w), "distinct")], params


def avg_pool_case(draw):
    if draw(st.booleans()):
        shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 5)),
                 draw(st.integers(1, 5)))
        return [values(draw, shape)], {"kernel_size": "global"}
    arrays, params = pool_case(draw, ceil=False)
    return [arrays[0] + 0.0], params


def batch_norm_case(draw, training: bool):
    n, c = draw(st.integers(2 if training else 1, 3)), draw(st.integers(1, 3))
    shape = (n, c) if draw(st.booleans()) else (n, c, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if training and int(np.prod(shape)) // c < 2:
        shape = (n, c, 2, 1) if len(shape) == 4 else shape
    arrays = [values(draw, shape), values(draw, (c,), "positive"), values(draw, (c,))]
    params = {"eps": draw(st.sampled_from([1e-5, 1e-4, 1e-1]))}
    if not training:
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        params["running_mean"] = rng.uniform(-1, 1, c)
        params["running_var"] = rng.uniform(0.5, 2, c)
    return arrays, params


def cross_entropy_case(draw):
    n, classes = draw(st.integers(1, 4)), draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    return [values(draw, (n, classes))], {
        "target": rng.integers(0, classes, n), "reduction": draw(st.sampled_from(["mean", "sum"]))}


def linear_case(draw):
    lead = draw(small_shape(1, 2, 3))
    fin, fout = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    arrays = [values(draw, lead + (fin,)), values(draw, (fout, fin))]
    if draw(st.booleans()):
        arrays.append(values(draw, (fout,)))
    return arrays, {}


def pad_case(draw):
    shape = draw(small_shape(1, 4, 3))
    pairs = draw(st.integers(1, len(shape)))
    widths = tuple(draw(st.lists(st.integers(0, 2), min_size=2 * pairs, max_size=2 * pairs)))
    return [values(draw, shape)], {"pad": widths, "value": draw(st.sampled_from([0.0, -1.5]))}


def dropout_case(draw):
    arrays, _ = unary_case()(draw)
    return arrays, {"p": draw(st.sampled_from([0.0, 0.25, 0.5, 0.9])),
                    "seed": draw(st.integers(0, 1000))}


def _dropout_reference(x, p, seed):
    if p == 0.0:
        return x
    rng = np.random.default_rng(seed)
    order = np.argsort(x.strides)[::-1] if x.ndim > 1 else np.arange(x.ndim)
    keep = np.transpose(rng.random(tuple(x.shape[i] for i in order), dtype=np.float32) >= p,
                        np.argsort(order))
    return x * keep / (1 - p)


def _batch_norm_train(x, weight, bias, eps):
    return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)


def _batch_norm_eval(x, weight, bias, eps, running_mean, running_var):
    return F.batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=eps)


def _sum_ref(x, axis=None, keepdims=False):
    return np.sum(x, axis=axis, keepdims=keepdims)


REGISTRY: list[OpSpec] = [
    # elementwise (tinypact.ops)
    OpSpec("add", ops.add, np.add, binary_broadcast_case(), broadcasting=True),
    OpSpec("sub", ops.sub, np.subtract, binary_broadcast_case(), broadcasting=True),
    OpSpec("mul", ops.mul, np.multiply, binary_broadcast_case(), broadcasting=True),
    OpSpec("div", ops.div, np.divide, binary_broadcast_case("nonzero"), broadcasting=True),
    OpSpec("neg", ops.neg, np.negative, unary_case()),
    OpSpec("pow", ops.pow, lambda x, exponent: x ** exponent, pow_case),
    OpSpec("exp", ops.exp, np.exp, unary_case()),
    OpSpec("log", ops.log, np.log, unary_case("positive")),
    OpSpec("tanh", ops.tanh, np.tanh, unary_case()),
    OpSpec("sqrt", ops.sqrt, np.sqrt, unary_case("positive")),
    OpSpec("abs", ops.abs, np.abs, unary_case("distinct")),
    OpSpec("relu", ops.relu, lambda x: np.maximum(x, 0), unary_case("distinct")),
    OpSpec("clip", ops.clip, lambda x, low, high: np.clip(x, low, high), clip_case),
    OpSpec("where", lambda a, b, condition: ops.where(condition, a, b),
           lambda a, b, condition: np.where(condition, a, b), where_case, broadcasting=True),
    # linear algebra, reductions, shapes
    OpSpec("matmul", ops.matmul, np.matmul, matmul_case, broadcasting=True),
    OpSpec("sum", ops.sum, _sum_ref, reduction_case()),
    OpSpec("mean", ops.mean, lambda x, axis, keepdims: np.mean(x, axis=axis, keepdims=keepdims),
           reduction_case()),
    OpSpec("max", ops.max, lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims),
           reduction_case("distinct")),
    OpSpec("reshape", ops.reshape, lambda x, shape: np.reshape(x, shape), reshape_case),
    OpSpec("permute", ops.permute, lambda x, axes: np.transpose(x, axes), permute_case),
    OpSpec("getitem", lambda x, index: ops.getitem(x, index), lambda x, index: x[index],
           getitem_case),
    OpSpec("concatenate", lambda *xs, axis: ops.concatenate(xs, axis),
           lambda *xs, axis: np.concatenate(xs, axis), concatenate_case),
    # tinypact.functional
    OpSpec("linear", F.linear, lambda x, w, b=None: x @ w.T + (0 if b is None else b),
           linear_case),
    OpSpec("conv2d", F.conv2d, conv2d_reference, conv2d_case, grad_examples=15),
    OpSpec("max_pool2d", F.max_pool2d, max_pool2d_reference, pool_case, grad_examples=15),
    OpSpec("avg_pool2d", F.avg_pool2d, avg_pool2d_reference, avg_pool_case, grad_examples=15),
    OpSpec("batch_norm_train", _batch_norm_train,
           lambda x, w, b, eps: batch_norm_reference(x, w, b, eps=eps),
           lambda draw: batch_norm_case(draw, True), grad_examples=20),
    OpSpec("batch_norm_eval", _batch_norm_eval,
           lambda x, w, b, eps, running_mean, running_var: batch_norm_reference(
               x, w, b, running_mean, running_var, eps),
           lambda draw: batch_norm_case(draw, False), grad_examples=20),
    OpSpec("dropout", lambda x, p, seed: F.dropout(x, p, True, np.random.default_rng(seed)),
           _dropout_reference, dropout_case),
    OpSpec("log_softmax", F.log_softmax, log_softmax_reference, unary_case(min_dims=1)),
    OpSpec("cross_entropy", F.cross_entropy, cross_entropy_reference, cross_entropy_case),
    OpSpec("pad", F.pad, lambda x, pad, value: np.pad(
        x, [(0, 0)] * (x.ndim - len(pad) // 2)
        + [(pad[2 * k], pad[2 * k + 1]) for k in reversed(range(len(pad) // 2))],
        constant_values=value), pad_case),
    OpSpec("flatten", F.flatten, lambda x: x.reshape(x.shape[0], -1), unary_case("real", 2, 4)),
]
REGISTRY_BY_NAME = {spec.name: spec for spec in REGISTRY}


# ------------------------------------------------------------------------ gradient checking
def numeric_gradient(f: Callable[[], float], array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences (f(x + eps e_i) - f(x - eps e_i)) / 2 eps, perturbing `array` in place."""
    grad = np.zeros(array.shape)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        plus = f()
        array[index] = saved - eps
        minus = f()
        array[index] = saved
        grad[index] = (plus - minus) / (2 * eps)
    return grad


def check_gradients(spec: OpSpec, arrays: list[np.ndarray], params: dict, seed: int = 0,
                    rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Compare backward() with float64 central differences of  L = sum(w * op(inputs)),
    w a fixed random vector. Raises AssertionError naming op, input, element, numeric vs analytic."""
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    out = spec.function(*tensors, **params)
    weights = np.random.default_rng(seed).standard_normal(out.shape)
    if not out.requires_grad:
        raise AssertionError(f"{spec.name}: output does not require grad for inputs that do")
    out.backward(weights)

    def loss() -> float:
        return float(np.sum(weights * spec.function(*[Tensor(a) for a in arrays], **params).data))

    for position, (array, tensor) in enumerate(zip(arrays, tensors)):
        numeric = numeric_gradient(loss, array)
        analytic = np.zeros_like(array) if tensor.grad is None else tensor.grad
        bad = ~np.isclose(analytic, numeric, rtol=rtol, atol=atol)
        if bad.any():
            element = tuple(int(i) for i in np.argwhere(bad)[0])
            raise AssertionError(
                f"{spec.name}: gradient of input {position} (shape {array.shape}) is wrong at "
                f"element {element}: numeric {numeric[element]:.8g} vs analytic "
                f"{analytic[element]:.8g} ({int(bad.sum())} of {bad.size} elements differ; "
                f"params {params})")
