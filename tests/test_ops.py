"""Registry-driven tests: every op in tests/op_registry.py gets a forward check against its
NumPy reference, a float64 central-difference gradient check (weighted by a random output
vector, over hypothesis-drawn shapes incl. broadcasting and non-contiguous inputs) and a
float32-in, float32-out check."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from op_registry import REGISTRY, OpSpec, check_gradients
from tinypact import Tensor, ops

SPECS = [pytest.param(spec, id=spec.name) for spec in REGISTRY]


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=30)
@given(data=st.data())
def test_forward_matches_numpy_reference(spec: OpSpec, data):
    arrays, params = data.draw(st.composite(lambda draw: spec.case(draw))())
    got = spec.function(*[Tensor(a) for a in arrays], **params).data
    expected = spec.reference(*arrays, **params)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12, err_msg=(
        f"{spec.name} forward on input shapes {[a.shape for a in arrays]}, params {params}"))


@pytest.mark.parametrize("spec", SPECS)
def test_gradient_matches_central_differences(spec: OpSpec):
    # Each op has its own example budget: central differences cost two forwards per element.
    @settings(max_examples=spec.grad_examples)
    @given(data=st.data())
    def check(data):
        arrays, params = data.draw(st.composite(lambda draw: spec.case(draw))())
        check_gradients(spec, arrays, params, seed=data.draw(st.integers(0, 1000)))

    check()


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=10)
@given(data=st.data())
def test_float32_inputs_give_float32_outputs_and_gradients(spec: OpSpec, data):
    arrays, params = data.draw(st.composite(lambda draw: spec.case(draw))())
    tensors = [Tensor(a.astype(np.float32), requires_grad=True) for a in arrays]
    params32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64
                    else v) for k, v in params.items()}
    out = spec.function(*tensors, **params32)
    assert out.dtype == np.float32, f"{spec.name}: float32 inputs gave a {out.dtype} output"
    out.backward(np.ones(out.shape, np.float32))
    for i, t in enumerate(tensors):
        assert t.grad is None or t.grad.dtype == np.float32, (
            f"{spec.name}: gradient of input {i} is {t.grad.dtype}, expected float32")
    np.testing.assert_allclose(out.data, spec.reference(*arrays, **params), rtol=1e-4, atol=1e-4,
                               err_msg=f"{spec.name} float32 forward, params {params}")


def test_registry_covers_every_public_op():
    """Adding an op to tinypact.ops or functional without registering it fails here."""
    import tinypact.functional as F

    names = {spec.name for spec in REGISTRY}
    covered = names | {"batch_norm", "global_avg_pool2d", "as_tensor", "sum_to"}
    ops_public = {n for n in ("add sub mul div neg pow exp log tanh sqrt abs relu clip matmul sum "
                              "mean max reshape permute getitem concatenate where").split()}
    missing_ops = {n for n in ops_public if hasattr(ops, n)} - names
    missing_functional = {n for n in F.__all__ if callable(getattr(F, n))
                          and not n.endswith("_size")} - covered
    assert not missing_ops and not missing_functional, (
        f"ops without a registry entry: {sorted(missing_ops | missing_functional)}")


def test_gradient_checker_catches_a_wrong_backward_and_says_where():
    """The checker itself must fail on a wrong gradient, naming op, input and element."""
    def double_with_wrong_grad(x):
        return Tensor.from_op(2 * x.data, (x,), lambda g: (3 * g,), "double")

    spec = OpSpec("double", double_with_wrong_grad, lambda x: 2 * x, None)
    with pytest.raises(AssertionError, match=r"double: gradient of input 0 .* element \(0, 0\): "
                                             r"numeric .* vs analytic"):
        check_gradients(spec, [np.ones((2, 3))], {})
