"""Quantizers tested against their defining rules (not finite differences): levels and codes,
the STE masks, PACT's alpha gradient and its L2 regularisation, DoReFa and SAWB grids."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tinypact import functional as F
from tinypact.nn import Module
from tinypact.optim import SGD
from tinypact.quant import (ALPHA_MIN, PACT, SAWB_COEFFICIENTS, ActQuant, Policy, QConv2d,
                            QLinear, activation_codes, alpha_parameters, alphas, clamp_alphas,
                            dorefa_activation, dorefa_weight, dorefa_weight_codes, levels, pact,
                            pact_codes, quantize_weight, quantized_relu, round_half_up,
                            sawb_scale, sawb_weight, sawb_weight_codes, weight_codes)
from tinypact.tensor import Tensor

QUANT_BITS = st.sampled_from([1, 2, 3, 4, 5, 8])
activations = arrays(np.float32, st.integers(1, 24),
                     elements=st.floats(-4, 16, width=32, allow_subnormal=False))
weights = arrays(np.float32, st.integers(2, 40),
                 elements=st.floats(-3, 3, width=32, allow_subnormal=False))


def off_rounding_boundary(v: np.ndarray, margin: float = 1e-3) -> bool:
    """True if no value of v is within `margin` of a rounding tie k + 1/2."""
    frac = np.asarray(v, dtype=np.float64) % 1.0
    return bool(np.all(np.abs(frac - 0.5) > margin))


def reference_activation(x: np.ndarray, a: float, bits: int) -> np.ndarray:
    """Eq. 1-2 in float64: round(clip(x, 0, a) * n / a) * a / n."""
    n = 2 ** bits - 1
    y = np.clip(x.astype(np.float64), 0, a)
    return np.floor(y * n / a + 0.5) * a / n


# ================================================================================== rounding
def test_round_half_up_rounds_ties_up_unlike_numpy():
    v = np.array([0.5, 1.5, 2.5, 3.49, 3.5, 0.0, -0.5], dtype=np.float32)
    got = round_half_up(v)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [1, 2, 3, 3, 4, 0, 0])
    assert np.round(2.5) == 2.0  # why the project does not use np.round


# ======================================================================================= PACT
@given(x=activations, alpha=st.floats(0.5, 12), bits=QUANT_BITS)
def test_pact_forward_matches_eq_1_2_and_its_codes(x, alpha, bits):
    a = np.float32(alpha)
    n = 2 ** bits - 1
    assume(off_rounding_boundary(np.clip(x.astype(np.float64), 0, a) * n / a))
    got = pact(Tensor(x), Tensor(a), bits).data
    np.testing.assert_allclose(got, reference_activation(x, float(a), bits), rtol=1e-5, atol=1e-6,
                               err_msg=f"x={x}, alpha={a}, bits={bits}")
    codes = pact_codes(x, a, bits)
    assert codes.min() >= 0 and codes.max() <= n, f"codes {codes} outside [0, {n}]"
    np.testing.assert_array_equal(got, (codes * (a / n)).astype(np.float32),
                                  err_msg="forward values != codes * alpha / n")


@given(x=activations, alpha=st.floats(0.5, 12), bits=QUANT_BITS,
       seed=st.integers(0, 2**16))
def test_pact_ste_and_alpha_gradient(x, alpha, bits, seed):
    """dy_q/dx = 1 on [0, alpha), 0 elsewhere; grad_alpha = sum(g where x >= alpha)."""
    g = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    xt, at = Tensor(x, requires_grad=True), Tensor(np.float32(alpha), requires_grad=True)
    pact(xt, at, bits).backward(g)
    a = np.float32(alpha)
    inside = (x >= 0) & (x < a)
    np.testing.assert_array_equal(xt.grad, np.where(inside, g, 0),
                                  err_msg=f"STE mask wrong for x={x}, alpha={a}")
    expected = g[x >= a].sum(dtype=np.float64)
    assert at.grad.shape == ()
    assert np.isclose(at.grad, expected, atol=1e-5), \
        f"grad_alpha: expected sum of g where x >= alpha = {expected}, got {at.grad}"


@given(x=activations, alpha=st.floats(0.5, 12), bits=QUANT_BITS, seed=st.integers(0, 2**16))
def test_pact_plus_alpha_gradient(x, alpha, bits, seed):
    """PACT+: (y_q - y)/alpha inside [0, alpha), 1 where x >= alpha, 0 below 0."""
    g = np.random.default_rng(seed).standard_normal(x.shape)
    a = float(np.float32(alpha))
    n = 2 ** bits - 1
    assume(off_rounding_boundary(np.clip(x.astype(np.float64), 0, a) * n / a))
    xt, at = Tensor(x, requires_grad=True), Tensor(np.float32(alpha), requires_grad=True)
    pact(xt, at, bits, variant="pact+").backward(g.astype(np.float32))
    y = np.clip(x.astype(np.float64), 0, a)
    y_q = reference_activation(x, a, bits)
    inside = (x >= 0) & (x < a)
    expected = np.sum(g * (x >= a)) + np.sum(g * inside * (y_q - y) / a)
    assert np.isclose(at.grad, expected, rtol=1e-4, atol=1e-4), \
        f"PACT+ grad_alpha: expected {expected}, got {at.grad} (x={x}, alpha={a}, bits={bits})"
    np.testing.assert_array_equal(xt.grad, np.where(inside, g.astype(np.float32), 0))


def test_pact_levels_and_full_precision():
    x = np.linspace(-1, 5, 601, dtype=np.float32)
    out = pact(Tensor(x), Tensor(np.float32(4.0)), 2).data
    np.testing.assert_allclose(np.unique(out), [0, 4 / 3, 8 / 3, 4], rtol=1e-6)
    full = pact(Tensor(x), Tensor(np.float32(4.0)), 32).data
    np.testing.assert_array_equal(full, np.clip(x, 0, 4))


def test_pact_rejects_non_positive_alpha_and_bad_variant():
    with pytest.raises(ValueError, match="alpha must be > 0"):
        pact(Tensor(np.ones(3, np.float32)), Tensor(np.float32(0.0)), 4)
    with pytest.raises(ValueError, match="variant"):
        pact(Tensor(np.ones(3, np.float32)), 1.0, 4, variant="lsq")


def test_alpha_l2_regularisation_through_its_parameter_group():
    """With lambda_alpha as the alpha group's weight decay, one SGD step is
    alpha <- alpha - lr * (grad_alpha + lambda_alpha * alpha), weights untouched by that decay."""
    layer = PACT(bits=4, alpha_init=10.0)
    other = Tensor(np.ones(3, np.float32), requires_grad=True)
    x = np.array([-1.0, 2.0, 11.0, 12.0], dtype=np.float32)
    g = np.array([1.0, 1.0, 0.5, 0.25], dtype=np.float32)
    layer(Tensor(x)).backward(g)
    other.grad = np.zeros(3, np.float32)
    lr, lambda_alpha = 0.1, 0.01
    optimizer = SGD([{"params": [other]},
                     {"params": alpha_parameters(layer), "weight_decay": lambda_alpha}], lr=lr)
    optimizer.step()
    expected = 10.0 - lr * ((0.5 + 0.25) + lambda_alpha * 10.0)
    assert np.isclose(float(layer.alpha.data), expected), \
        f"alpha after one step: expected {expected}, got {float(layer.alpha.data)}"
    np.testing.assert_array_equal(other.data, np.ones(3, np.float32))


def test_alpha_is_kept_positive_by_projection():
    layer = PACT(bits=2, alpha_init=1.0)
    layer.alpha.data -= np.float32(5.0)  # e.g. a step with a large decay overshot
    out = layer(Tensor(np.array([0.0, 1.0], np.float32)))
    assert float(layer.alpha.data) == pytest.approx(ALPHA_MIN)
    assert np.all(np.isfinite(out.data))
    layer.alpha.data -= np.float32(1.0)
    clamp_alphas(layer)
    assert float(layer.alpha.data) == pytest.approx(ALPHA_MIN)


# ============================================================================ other activations
def test_dorefa_activation_levels_and_ste():
    x = np.array([-0.5, 0.0, 0.2, 0.49, 0.51, 0.9, 1.0, 3.0], dtype=np.float32)
    xt = Tensor(x, requires_grad=True)
    out = dorefa_activation(xt, 1)
    np.testing.assert_array_equal(out.data, [0, 0, 0, 0, 1, 1, 1, 1])
    out.backward(np.ones_like(x))
    np.testing.assert_array_equal(xt.grad, [0, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(dorefa_activation(Tensor(x), 32).data, np.clip(x, 0, 1))


def test_quantized_relu_levels_and_float():
    x = np.array([-1.0, 0.4, 0.5, 1.6, 2.9, 7.0], dtype=np.float32)  # 0.5 is a tie: rounds up
    np.testing.assert_allclose(quantized_relu(Tensor(x), 2, 3.0).data, [0, 0, 1, 2, 3, 3])
    np.testing.assert_array_equal(quantized_relu(Tensor(x), 32, 3.0).data, np.maximum(x, 0))
    np.testing.assert_array_equal(activation_codes(x, 3.0, 2), [0, 0, 1, 2, 3, 3])


def test_actquant_relu_tracks_running_max_in_training_only():
    layer = ActQuant("relu", 4, momentum=0.5)
    assert float(layer.running_max) == 6.0
    layer(Tensor(np.array([1.0, 10.0], np.float32)))
    assert float(layer.running_max) == pytest.approx(8.0)
    layer.eval()
    out = layer(Tensor(np.array([1.0, 100.0], np.float32)))
    assert float(layer.running_max) == pytest.approx(8.0)
    np.testing.assert_allclose(out.data, [round(1 * 15 / 8) * 8 / 15, 8.0], rtol=1e-6)
    assert layer.graph_fields("act") == {"kind": "relu", "bits": 4, "alpha": "act.running_max"}
    assert ActQuant("relu", 32).graph_fields("a")["kind"] == "float"


def test_alpha_helpers_find_every_pact_layer():
    class Net(Module):
        def __init__(self):
            super().__init__()
            self.a = PACT(4, alpha_init=3.0)
            self.b = ActQuant("pact+", 2, alpha_init=5.0)
            self.c = ActQuant("dorefa", 2)

    net = Net()
    assert [id(p) for p in alpha_parameters(net)] == [id(net.a.alpha), id(net.b.alpha)]
    assert alphas(net) == {"a": 3.0, "b": 5.0}
    assert "a.alpha" in net.state_dict()


# ==================================================================================== DoReFa
@given(w=weights, bits=st.sampled_from([2, 3, 4, 5, 8]))
def test_dorefa_weight_levels_codes_and_extremes(w, bits):
    assume(np.abs(w).max() > 1e-3)
    n = 2 ** bits - 1
    out = dorefa_weight(Tensor(w), bits).data
    j, scale = dorefa_weight_codes(w, bits)
    assert scale == 1.0 and j.min() >= 0 and j.max() <= n
    np.testing.assert_array_equal(out, (2 * j - n).astype(np.float32) * np.float32(1 / n))
    levels_set = (2 * np.arange(n + 1) - n).astype(np.float32) * np.float32(1 / n)
    assert np.all(np.isin(out, levels_set)), f"{out} not in {levels_set}"
    peak = np.argmax(np.abs(np.tanh(w.astype(np.float64))))
    assert out[peak] == np.sign(w[peak]), "the largest |w| must map to +-1"


@given(w=weights, bits=st.sampled_from([2, 3, 4]), seed=st.integers(0, 2**16))
def test_dorefa_weight_gradient_is_that_of_tanh_over_max(w, bits, seed):
    """STE: the gradient of w_q is the gradient of tanh(w) / max|tanh(w)| (through tanh and max)."""
    w64 = w.astype(np.float64)
    assume(np.abs(w64).max() > 1e-3 and np.sum(np.abs(w64) == np.abs(w64).max()) == 1)
    g = np.random.default_rng(seed).standard_normal(w.shape)
    wt = Tensor(w64, requires_grad=True)
    dorefa_weight(wt, bits).backward(g)
    ref = Tensor(w64, requires_grad=True)
    t = ref.tanh()
    (t / t.abs().max()).backward(g)
    np.testing.assert_allclose(wt.grad, ref.grad, rtol=1e-9, atol=1e-12)


def test_dorefa_one_bit_is_sign_times_mean_abs_with_identity_gradient():
    w = np.array([-2.0, -0.5, 0.0, 0.5, 1.0], dtype=np.float32)
    e = np.mean(np.abs(w))
    wt = Tensor(w, requires_grad=True)
    out = dorefa_weight(wt, 1)
    np.testing.assert_allclose(out.data, [-e, -e, e, e, e], rtol=1e-6)
    out.backward(np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(wt.grad, np.arange(5))
    j, scale = dorefa_weight_codes(w, 1)
    np.testing.assert_array_equal(j, [0, 0, 1, 1, 1])
    assert scale == pytest.approx(e)


# ====================================================================================== SAWB
def test_sawb_two_bit_scale_on_gaussian_weights():
    w = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
    alpha = sawb_scale(w, 2)
    assert alpha == pytest.approx(3.12 - 2.064 * np.sqrt(2 / np.pi), abs=0.01)
    assert alpha == pytest.approx(1.473, abs=0.01)
    out = sawb_weight(Tensor(w), 2).data
    np.testing.assert_allclose(np.unique(out), [-alpha, -alpha / 3, alpha / 3, alpha], rtol=1e-6)


@given(w=weights, bits=st.sampled_from(sorted(SAWB_COEFFICIENTS)))
def test_sawb_scale_formula_and_grid(w, bits):
    assume(np.abs(w).max() > 1e-3)
    c1, c2 = SAWB_COEFFICIENTS[bits]
    w64 = w.astype(np.float64)
    formula = c1 * np.sqrt(np.mean(w64 ** 2)) - c2 * np.mean(np.abs(w64))
    alpha = sawb_scale(w, bits)
    assert alpha == pytest.approx(formula if formula > 0 else np.abs(w64).max(), rel=1e-12)
    n = 2 ** bits - 1
    j, scale = sawb_weight_codes(w, bits)
    assert scale == alpha and j.min() >= 0 and j.max() <= n
    u = np.clip(w64 / alpha, -1, 1) * 0.5 + 0.5
    assume(off_rounding_boundary(u * n, 1e-9))
    np.testing.assert_array_equal(j, np.floor(u * n + 0.5))
    np.testing.assert_array_equal(sawb_weight(Tensor(w), bits).data,
                                  (2 * j - n).astype(np.float32) * np.float32(alpha / n))


def test_sawb_falls_back_to_max_when_the_formula_is_not_positive():
    w = np.array([-1.0, 1.0, -1.0, 1.0], dtype=np.float32)  # 8 bit: 31.76 - 35.04 < 0
    assert sawb_scale(w, 8) == 1.0
    assert sawb_scale(np.zeros(4, np.float32), 2) == 1.0  # no division by zero


def test_sawb_one_bit_is_binary_with_mean_abs_scale():
    w = np.array([-3.0, -1.0, 0.0, 2.0], dtype=np.float32)
    np.testing.assert_allclose(sawb_weight(Tensor(w), 1).data, [-1.5, -1.5, 1.5, 1.5])


def test_sawb_zero_aligned_two_bit_is_ternary():
    w = np.random.default_rng(1).standard_normal(10_000).astype(np.float32)
    alpha = sawb_scale(w, 2, zero_aligned=True)
    assert alpha == pytest.approx(2.6 - 1.71 * np.sqrt(2 / np.pi), abs=0.03)
    out = sawb_weight(Tensor(w), 2, zero_aligned=True).data
    np.testing.assert_allclose(np.unique(out), [-alpha, 0, alpha], rtol=1e-6, atol=1e-7)
    j, n, scale = weight_codes(w, "sawb0", 2)
    assert n == 2 and set(np.unique(j)) == {0, 1, 2}
    np.testing.assert_array_equal(out, (scale * (2 * j - n) / n).astype(np.float32))


def test_sawb_gradient_is_straight_through():
    w = np.array([-5.0, 0.1, 0.3, 4.0], dtype=np.float32)
    wt = Tensor(w, requires_grad=True)
    sawb_weight(wt, 2).backward(np.array([1.0, 2.0, 3.0, 4.0], np.float32))
    np.testing.assert_array_equal(wt.grad, [1, 2, 3, 4])


# =========================================================================== bits and policy
def test_thirty_two_bits_is_float_passthrough():
    w = Tensor(np.array([-2.0, 0.3, 7.0], np.float32), requires_grad=True)
    assert dorefa_weight(w, 32) is w and sawb_weight(w, 32) is w
    assert quantize_weight(w, "dorefa", 32) is w and quantize_weight(w, "float", 4) is w


@pytest.mark.parametrize("bits", [0, 9, 33, -1, 2.5, True, "4"])
def test_bad_bits_are_a_value_error(bits):
    x = Tensor(np.ones(3, np.float32))
    for call in (lambda: pact(x, 1.0, bits), lambda: dorefa_weight(x, bits),
                 lambda: sawb_weight(x, bits), lambda: dorefa_activation(x, bits),
                 lambda: levels(bits), lambda: Policy(wbits=bits)):
        with pytest.raises(ValueError, match="bits"):
            call()


def test_sawb_bits_without_coefficients_are_a_value_error():
    with pytest.raises(ValueError, match=r"\[1, 2, 3, 4, 5, 8\]"):
        sawb_weight(Tensor(np.ones(3, np.float32)), 6)
    with pytest.raises(ValueError, match="sawb weights support"):
        Policy(wbits=6, weight_quant="sawb")
    with pytest.raises(ValueError, match="sawb0 weights support"):
        QConv2d(1, 1, 3, weight_quant="sawb0", wbits=3)


def test_policy_round_trip_and_validation():
    policy = Policy(wbits=2, abits=3, weight_quant="sawb", act_quant="pact+", alpha_init=8)
    assert Policy.from_dict(policy.to_dict()) == policy
    assert policy.describe() == "W2A3 FL8 SC8 sawb/pact+"
    with pytest.raises(ValueError, match="unknown precision policy field"):
        Policy.from_dict({"wbit": 2})
    with pytest.raises(ValueError, match="act_quant"):
        Policy(act_quant="lsq")
    with pytest.raises(ValueError, match="weight_quant"):
        Policy(weight_quant="xnor")
    with pytest.raises(ValueError, match="alpha_init"):
        Policy(alpha_init=0)
    fp = Policy.full_precision()
    assert (fp.wbits, fp.abits, fp.first_last_bits, fp.shortcut_bits) == (32, 32, 32, 32)


# ========================================================================== quantized layers
def test_qconv2d_and_qlinear_use_quantized_weights_and_train_the_float_ones():
    rng = np.random.default_rng(3)
    conv = QConv2d(2, 3, 3, padding=1, bias=False, weight_quant="dorefa", wbits=2)
    x = Tensor(rng.standard_normal((2, 2, 5, 5)).astype(np.float32))
    expected = F.conv2d(x, Tensor(dorefa_weight(conv.weight.data, 2).data), None, 1, 1)
    out = conv(x)
    np.testing.assert_allclose(out.data, expected.data, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.shape == conv.weight.shape
    assert conv.wq == {"kind": "dorefa", "bits": 2}

    linear = QLinear(4, 2, weight_quant="sawb", wbits=2)
    v = Tensor(rng.standard_normal((3, 4)).astype(np.float32))
    wq = sawb_weight(linear.weight.data, 2).data
    np.testing.assert_allclose(linear(v).data, v.data @ wq.T + linear.bias.data, rtol=1e-5)
    for seed in range(30):  # the levels are codes times s_w, whatever the weights
        linear.weight.data[...] = np.random.default_rng(seed).standard_normal((2, 4))
        alpha = sawb_scale(linear.weight.data, 2)
        s_w = np.float32(alpha / 3)  # the step, in the weight's dtype
        assert set(np.unique(np.abs(linear.quantized_weight_array()))) <= {s_w, np.float32(3) * s_w}
        # the outer level is alpha up to the float32 rounding of the step (3 s_w, not float32(alpha))
        assert abs(float(np.float32(3) * s_w) - alpha) <= 2 * np.spacing(np.float32(alpha))
    assert QLinear(4, 2, weight_quant="sawb", wbits=32).wq == {"kind": "float", "bits": 32}


@given(st.integers(1, 8), st.sampled_from(["nchw", "nhwc-backed", "strided"]),
       st.sampled_from([0.37, 1.0, 2.5, None]), st.integers(0, 2**32 - 1))
def test_fused_clip_quantize_kernel_equals_its_numpy_reading(bits, layout, alpha, seed):
    """The Numba pass behind PACT / DoReFa / quantized ReLU gives the NumPy expressions' bits:
    values, codes and regions, on every memory layout, with ties (alpha = n * 2**k, values on a
    1/64 grid) and values at 0 and alpha."""
    from tinypact.quant.functional import _clip_quantize, _clip_quantize_numpy

    rng = np.random.default_rng(seed)
    n = 2**bits - 1
    a = np.float32(n * 2.0 ** -int(rng.integers(0, 4)) if alpha is None else alpha)
    base = (rng.integers(-64, 600, (3, 5, 4, 6)) / np.float32(64)).astype(np.float32)
    base.flat[:3] = [0.0, a, -0.0]
    data = {"nchw": base, "nhwc-backed": np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
            "strided": base[:, ::2, 1:, ::3]}[layout]
    _, y_q, codes, region = _clip_quantize(Tensor(data), np.asarray(a), bits)
    _, want_y_q, want_codes, want_region = _clip_quantize_numpy(data, np.asarray(a), bits)
    assert np.array_equal(codes.values, want_codes.values), "codes differ"
    assert np.array_equal(y_q, want_y_q) and np.array_equal(region, want_region)
    assert codes.scale == want_codes.scale


@given(kind=st.sampled_from(["dorefa", "sawb", "sawb0"]), bits=st.sampled_from([2, 3, 4, 8]),
       size=st.sampled_from([5, 300, 70_000]), ties=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fused_weight_quantizers_give_the_codes_of_their_numpy_reading(kind, bits, size, ties,
                                                                       seed):
    """The one-pass Numba path of float32 weights (_kernels.weight_levels; parallel above 65,536
    values) against the *_weight_codes functions export uses: equal levels and values. `ties`
    puts SAWB weights exactly on the rounding ties u * n = k + 1/2 (alpha_w fixed by the
    others), and on the clip at +-alpha_w."""
    assume(kind == "dorefa" or bits in (SAWB_COEFFICIENTS if kind == "sawb" else (2, 4, 8)))
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(size) * 0.05).astype(np.float32)
    if ties and kind != "dorefa":
        n = 2**bits - (2 if kind == "sawb0" else 1)
        alpha = sawb_scale(w, bits, kind == "sawb0")
        k = rng.integers(0, n, 4)
        w[:4] = alpha * ((k + 0.5) / n * 2 - 1)  # u * n = k + 1/2 up to float32 rounding
        w[4] = alpha
    out = quantize_weight(Tensor(w), kind, bits)
    j, n, scale = weight_codes(w, kind, bits)
    np.testing.assert_array_equal(out.codes.values, (2 * j - n).astype(np.float32))
    np.testing.assert_array_equal(out.data, out.codes.values * np.float32(scale / n))
    assert out.codes.scale == np.float32(scale / n)


@given(w=weights, bits=st.sampled_from([2, 4]), seed=st.integers(0, 2**16))
def test_fused_dorefa_gradient_equals_its_float64_reading(w, bits, seed):
    """The float32 path's two Numba passes against the NumPy reading (float64 weights), ties
    at the max included (w and -w both present)."""
    assume(np.abs(w).max() > 1e-3)
    w = np.concatenate([w, -w[:1]])
    g = np.random.default_rng(seed).standard_normal(w.shape).astype(np.float32)
    fast, plain = Tensor(w, requires_grad=True), Tensor(w.astype(np.float64), requires_grad=True)
    dorefa_weight(fast, bits).backward(g)
    dorefa_weight(plain, bits).backward(g.astype(np.float64))
    assert fast.grad.dtype == np.float32
    np.testing.assert_allclose(fast.grad, plain.grad, rtol=1e-6, atol=1e-6)
