"""The autodiff engine: dtypes, no_grad, detach, accumulation and the micrograd-era regressions
(reused nodes, deep graphs, a second backward)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinypact as tp
from tinypact import Tensor, no_grad
from tinypact.tensor import sum_to


def test_float32_by_default_and_float64_kept():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.zeros(3)).dtype == np.float64
    assert Tensor(np.arange(3)).dtype.kind == "i"  # labels stay integer
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.arange(3), requires_grad=True)


def test_python_scalars_do_not_upcast_float32():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    y = (x * 2.5 + 1) / 3 - 0.5
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_reused_node_accumulates_gradient():
    """y = x*x + x uses x three times: dy/dx = 2x + 1 (micrograd's classic `=` instead of `+=`)."""
    x = Tensor(np.array([3.0]), requires_grad=True)
    a = x * x
    y = a + x + a * 0  # `a` reused as well
    y.backward(np.ones(1))
    assert x.grad[0] == pytest.approx(7.0), f"expected 2*3 + 1 = 7, got {x.grad[0]}"


def test_graph_5000_nodes_deep():
    """An iterative topological sort: no RecursionError, and the chain rule through every node."""
    x = Tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.backward(np.ones(1))
    expected = 1.0001 ** 5000
    assert y.data[0] == pytest.approx(expected)
    assert x.grad[0] == pytest.approx(expected), f"expected {expected}, got {x.grad[0]}"


def test_second_backward_adds_to_grad():
    """The graph is kept: a second backward() adds the same gradient again (as in PyTorch with
    retain_graph); zero_grad() resets."""
    x = Tensor(np.array([2.0, -1.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    np.testing.assert_allclose(x.grad, [4.0, -2.0])
    y.backward()
    np.testing.assert_allclose(x.grad, [8.0, -4.0], err_msg="second backward must accumulate")
    x.zero_grad()
    assert x.grad is None


def test_no_grad_records_nothing():
    x = Tensor(np.ones(2), requires_grad=True)
    with no_grad():
        y = x * 2
    assert not y.requires_grad and y._parents == ()
    assert tp.is_grad_enabled()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_detach_cuts_the_graph_without_copying():
    x = Tensor(np.ones(2), requires_grad=True)
    d = (x * 3).detach()
    assert not d.requires_grad
    y = (x * d).sum()
    y.backward()
    np.testing.assert_allclose(x.grad, [3.0, 3.0])  # d is a constant


def test_backward_needs_a_gradient_for_non_scalars():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="gradient argument"):
        (x * 2).backward()


def test_only_leaves_keep_grad():
    x = Tensor(np.ones(2), requires_grad=True)
    h = x * 2
    (h * h).sum().backward()
    assert h.grad is None and x.grad is not None


@given(hnp.mutually_broadcastable_shapes(num_shapes=1, min_dims=0, max_dims=4, max_side=4))
def test_sum_to_inverts_broadcasting(shapes):
    """sum_to(g, s) equals the gradient of broadcast_to(x, S) for every x of shape s:
    <sum_to(g, s), v> == <g, broadcast(v)> for all v (adjointness)."""
    shape, result = shapes.input_shapes[0], shapes.result_shape
    rng = np.random.default_rng(0)
    g, v = rng.standard_normal(result), rng.standard_normal(shape)
    reduced = sum_to(g, shape)
    assert reduced.shape == shape
    lhs, rhs = np.sum(reduced * v), np.sum(g * np.broadcast_to(v, result))
    assert lhs == pytest.approx(rhs), f"shape {shape} -> {result}: {lhs} vs {rhs}"


@given(st.integers(1, 5), st.integers(1, 5))
def test_operators_match_numpy(rows, cols):
    rng = np.random.default_rng(rows * 10 + cols)
    a, b = rng.standard_normal((rows, cols)), rng.standard_normal((cols, rows))
    ta, tb = Tensor(a), Tensor(b)
    np.testing.assert_allclose((ta @ tb).data, a @ b)
    np.testing.assert_allclose((2 - ta).data, 2 - a)
    np.testing.assert_allclose((a + ta).data, 2 * a)  # ndarray on the left dispatches to Tensor
    np.testing.assert_allclose((ta ** 2).data, a ** 2)
    np.testing.assert_allclose(ta.T.data, a.T)
    np.testing.assert_allclose(ta[0, ::2].data, a[0, ::2])
    np.testing.assert_allclose(ta.clip(-0.5, 0.5).data, np.clip(a, -0.5, 0.5))
    np.testing.assert_allclose(ta.relu().data, np.maximum(a, 0))
