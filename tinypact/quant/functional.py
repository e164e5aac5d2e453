"""Quantizers as autodiff ops: PACT (and PACT+), DoReFa, quantized ReLU, SAWB.

Notation: `k` bits, `n = 2**k - 1` steps, `round` is the project's rule `round_half_up`
(floor(v + 1/2), see `tinypact.quant.rounding`). `bits=32` means full precision: the quantizer
is skipped and only the clip (if any) remains.

Activations are quantized to `n + 1` levels `{0, a/n, 2a/n, ..., a}` of a range `a` (PACT's learned
alpha, DoReFa's 1, a quantized ReLU's running max); their integer code is `q = round(y * n / a)`,
computed in float32 exactly as written: `y = min(max(x, 0), a)`, `v = y * n`, `v = v / a`,
`q = round_half_up(v)`; the output value is `q * s` with the float32 scale `s = a / n`.

Weights are quantized to `w_q = scale * (2j - n) / n` with an unsigned code `j` in `[0, n]`, i.e.
odd integers `c = 2j - n` over `n` for DoReFa and SAWB (`n = 2**k - 1`, no zero level), and
`c = j - n/2` over `n/2` for zero-aligned SAWB (`n = 2**k - 2`: `2**k - 1` levels including 0).
Weight codes are computed in float64 from the (float32) weights, so that integer_engine's exporter,
following the same formulas in float64, gets exactly the same codes; the weight's value is
`c * s_w` in float32 with the level `c = 2j - n` and `s_w = float32(scale / n)`.

Every quantizer attaches its integer view (`Tensor.codes`: codes q or levels c, and the scale) to
its output, so that conv2d and linear can multiply integers (tinypact.functional._integer).
"""
from __future__ import annotations

import numpy as np

from tinypact import _kernels
from tinypact.ops import as_tensor
from tinypact.quant.rounding import round_half_up
from tinypact.tensor import Codes, Tensor, sum_to

VALID_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)
FULL_PRECISION = 32

# SAWB: alpha_w = c1 * sqrt(E[w^2]) - c2 * E[|w|]  (IBM fms-model-optimizer's coefficients).
# 1 bit: (0, -1) gives alpha_w = E|w|, the MSE-optimal scale of a binary {-a, a} grid (DoReFa's E).
SAWB_COEFFICIENTS: dict[int, tuple[float, float]] = {
    1: (0.0, -1.0), 2: (3.12, 2.064), 3: (7.509, 6.892), 4: (12.68, 12.80), 5: (17.74, 18.64),
    8: (31.76, 35.04),
}
# Zero-aligned grid (2**k - 1 levels, includes 0): 2 bits is ternary {-a, 0, a}.
SAWB_ZERO_ALIGNED_COEFFICIENTS: dict[int, tuple[float, float]] = {
    2: (2.6, 1.71), 4: (12.035, 12.03), 8: (31.76, 35.04),
}


def check_bits(bits: int, what: str = "bits") -> int:
    """`bits` if it is one of 1..8, 16 or 32, else a one-line ValueError."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in VALID_BITS:
        raise ValueError(f"{what} must be one of 1..8, 16 or 32, got {bits!r}")
    return int(bits)


def levels(bits: int) -> int:
    """n = 2**k - 1, the number of quantization steps of a k-bit unsigned grid."""
    return 2 ** check_bits(bits) - 1


# ================================================================================ activations
def _clip_quantize(x: Tensor, alpha: np.ndarray, bits: int
                   ) -> tuple[np.ndarray | None, np.ndarray, Codes | None, np.ndarray]:
    """(y, y_q, codes, region): y = clip(x, 0, alpha), codes q = round(y * n / alpha),
    y_q = q * (alpha / n), region 0 / 1 / 2 where x < 0 / 0 <= x < alpha / x >= alpha
    (at 32 bits y_q = y and no codes).

    A scalar alpha (every layer's) goes through one fused Numba pass
    (`_kernels.clip_quantize`: the same float32 operations in the same order, so the same bits;
    y is then None, left to the caller that needs it); anything else takes
    `_clip_quantize_numpy`, the plain reading.
    """
    data = x.data
    if bits == FULL_PRECISION or np.ndim(alpha) != 0 or data.dtype != np.float32 or not data.size:
        return _clip_quantize_numpy(data, alpha, bits)
    n = levels(bits)
    scale = alpha / n  # float32, the value of one code
    y_q, q = np.empty_like(data), np.empty_like(data)
    region = np.empty_like(data, dtype=np.uint8)  # same memory order as data
    _kernels.clip_quantize(data.ravel(order="K"), data.dtype.type(alpha), data.dtype.type(n),
                           scale, y_q.ravel(order="K"), q.ravel(order="K"),
                           region.ravel(order="K"))  # in memory order: views, not copies
    return None, y_q, Codes(q, scale, n), region


def _clip_quantize_numpy(data: np.ndarray, alpha: np.ndarray, bits: int):
    """`_clip_quantize` in NumPy expressions, one pass each (and its reference in the tests)."""
    y = np.minimum(np.maximum(data, 0), alpha)
    region = np.where(data < 0, 0, np.where(data < alpha, 1, 2)).astype(np.uint8)
    if bits == FULL_PRECISION:
        return y, y, None, region
    n = levels(bits)
    q = _codes_of_clipped(y, alpha, n)
    scale = alpha / n  # float32, the value of one code
    return y, (q * scale).astype(data.dtype, copy=False), Codes(q, scale, n), region


def _codes_of_clipped(y: np.ndarray, alpha: np.ndarray, n: int) -> np.ndarray:
    """round(y * n / alpha): the one expression forward values and exported codes both use
    (y * n first, then / alpha, each rounded in y's dtype)."""
    return round_half_up(y * n / alpha)


def _with_codes(out: Tensor, codes: Codes | None) -> Tensor:
    out.codes = codes
    return out


def _positive_range(alpha, like: Tensor, what: str) -> np.ndarray:
    value = np.asarray(alpha.data if isinstance(alpha, Tensor) else alpha, dtype=like.dtype)
    if not np.all(value > 0):
        raise ValueError(f"{what} must be > 0, got {value.tolist()}")
    return value


def pact(x, alpha, bits: int, variant: str = "pact") -> Tensor:
    """PACT activation (arXiv 1805.06085, Eq. 1-3) with one learnable clip level alpha.

        Eq. 1   y   = clip(x, 0, alpha) = 0.5 * (|x| - |x - alpha| + alpha)
        Eq. 2   y_q = round(y * n / alpha) * alpha / n,             n = 2**k - 1
        Eq. 3   dy_q/dalpha = 1 if x >= alpha else 0                (STE on round)
                dy_q/dx     = 1 if 0 <= x < alpha else 0

    so `grad_alpha = sum(upstream grad where x >= alpha)`.
    variant="pact+" (IBM's later LSQ-like alpha gradient) keeps dy_q/dx and uses
        dy_q/dalpha = (y_q - y) / alpha for 0 <= x < alpha,  1 for x >= alpha,  0 for x < 0.
    bits=32: y_q = y (a clipped ReLU with a learned clip). `alpha` must be > 0 (a Tensor of shape
    () to learn it, or a number).
    """
    if variant not in ("pact", "pact+"):
        raise ValueError(f"PACT variant must be 'pact' or 'pact+', got {variant!r}")
    bits = check_bits(bits)
    x = as_tensor(x)
    alpha_t = as_tensor(alpha, like=x)
    a = _positive_range(alpha_t, x, "PACT alpha")
    y, y_q, codes, region = _clip_quantize(x, a, bits)

    def backward(g):
        inside = region == 1
        grad_x = g * inside
        if not alpha_t.requires_grad:
            return grad_x, None
        per_element = g * (region == 2)
        if variant == "pact+":
            clipped = np.minimum(np.maximum(x.data, 0), a) if y is None else y
            per_element = per_element + g * inside * ((y_q - clipped) / a)
        return grad_x, sum_to(per_element, alpha_t.shape)

    return _with_codes(Tensor.from_op(y_q, (x, alpha_t), backward, variant), codes)


def quantized_relu(x, bits: int, max_value: float) -> Tensor:
    """A quantized ReLU with a fixed (not learned) range `max_value`:

        y_q = round(clip(x, 0, m) * n / m) * m / n,   dy_q/dx = 1 if 0 <= x < m else 0 (STE).

    bits=32: a plain ReLU, max(x, 0) (the range only matters for quantization).
    """
    bits = check_bits(bits)
    x = as_tensor(x)
    if bits == FULL_PRECISION:
        return x.relu()
    m = _positive_range(max_value, x, "quantized ReLU max_value")
    _, y_q, codes, region = _clip_quantize(x, m, bits)
    return _with_codes(Tensor.from_op(y_q, (x,), lambda g: (g * (region == 1),), "quantized_relu"),
                       codes)


def dorefa_activation(x, bits: int) -> Tensor:
    """DoReFa-Net's activation (the PACT paper's baseline): clip to [0, 1], then quantize:

        y_q = round(clip(x, 0, 1) * n) / n,   dy_q/dx = 1 if 0 <= x < 1 else 0 (STE).

    bits=32: clip(x, 0, 1).
    """
    bits = check_bits(bits)
    x = as_tensor(x)
    one = np.asarray(1.0, dtype=x.dtype)
    _, y_q, codes, region = _clip_quantize(x, one, bits)
    return _with_codes(Tensor.from_op(y_q, (x,), lambda g: (g * (region == 1),), "dorefa_activation"),
                       codes)


INPUT_SCALE = 1.0 / 255.0


def quantize_input(x, scale: float = INPUT_SCALE, max_code: int = 255) -> Tensor:
    """The network's input as 8-bit codes (PyTorch's QuantStub, Brevitas' input QuantIdentity):

        q = clip(round(x / s), 0, 255),   value = q * s,   s = 1/255 in x's dtype (float32)

    Images arrive as pixels / 255, so q is the pixel and the first layer multiplies integers,
    as integer_engine does. Gradient: identity (STE).
    """
    x = as_tensor(x)
    s = x.dtype.type(scale)
    q = np.clip(round_half_up(x.data / s), 0, max_code)
    return _with_codes(Tensor.from_op(q * s, (x,), lambda g: (g,), "quantize_input"),
                       Codes(q, s, max_code))


def activation_codes(x, alpha, bits: int) -> np.ndarray:
    """Integer codes q = round(clip(x, 0, alpha) * n / alpha) in [0, n] (int32); y_q = q * alpha / n.

    The same expression the activation quantizers use, so `codes * alpha / n` equals their output.
    """
    bits = check_bits(bits)
    if bits == FULL_PRECISION:
        raise ValueError("32-bit (float) activations have no integer codes")
    x = as_tensor(x)
    a = _positive_range(alpha, x, "activation range")
    y = np.minimum(np.maximum(x.data, 0), a)
    return _codes_of_clipped(y, a, levels(bits)).astype(np.int32)


def pact_codes(x, alpha, bits: int) -> np.ndarray:
    """PACT's integer codes q = round(clip(x, 0, alpha) * n / alpha) (see `activation_codes`)."""
    return activation_codes(x, alpha, bits)


# ==================================================================================== weights
def _weights64(w) -> np.ndarray:
    return np.asarray(w.data if isinstance(w, Tensor) else w, dtype=np.float64)


def dorefa_weight_codes(w, bits: int) -> tuple[np.ndarray, float]:
    """DoReFa weight codes (tensorpack's dorefa.py), in float64: (j, scale), w_q = scale*(2j - n)/n.

        k > 1:  t = tanh(w),  u = t / max|t| * 0.5 + 0.5,  j = round(u * n),   scale = 1
        k = 1:  j = 1 if w >= 0 else 0 (sign(0) = +1),      n = 1,             scale = E|w|
    """
    bits = check_bits(bits)
    if bits == FULL_PRECISION:
        raise ValueError("32-bit (float) weights have no integer codes")
    if bits == 1:
        w64 = _weights64(w)
        return (w64 >= 0).astype(np.int32), float(np.mean(np.abs(w64)))
    return _dorefa_codes(*_tanh_and_peak(w), bits), 1.0


def _dorefa_codes(t: np.ndarray, peak: float, bits: int) -> np.ndarray:
    """j = round((t / max|t|) * 0.5 + 0.5) * n), float64 steps, as int32."""
    u = t / (peak if peak > 0 else 1.0) * 0.5 + 0.5
    return round_half_up(u * levels(bits)).astype(np.int32)


def _tanh_and_peak(w) -> tuple[np.ndarray, float]:
    """t = tanh(w) in float64 (NumPy's tanh, the one the codes are defined by) and max |t|."""
    t = np.tanh(_weights64(w))
    return t, float(np.max(np.abs(t))) if t.size else 0.0


def dorefa_weight(w, bits: int) -> Tensor:
    """DoReFa weights: w_q = 2 * quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1, in [-1, 1].

    k = 1: w_q = sign(w) * E|w| (sign(0) = +1). Codes: `dorefa_weight_codes`.
    Gradient (STE on quantize_k): k > 1 flows through tanh and the max, i.e. it is the gradient of
    tanh(w) / max|tanh(w)|; k = 1 is the identity (E is a constant, as tensorpack's stop_gradient).
    bits=32: w unchanged.
    """
    bits = check_bits(bits)
    w = as_tensor(w)
    if bits == FULL_PRECISION:
        return w
    if bits == 1:
        j, scale = dorefa_weight_codes(w, bits)
        w_q, codes = _weight_values(j, levels(bits), scale, w.dtype)
        return _with_codes(Tensor.from_op(w_q, (w,), lambda g: (g,), "dorefa_weight"), codes)
    t, peak = _tanh_and_peak(w)  # kept for backward
    if w.dtype == np.float32:
        w_q, codes = _fused_weight_values(t, peak if peak > 0 else 1.0, False, levels(bits), 1.0,
                                          w.dtype)
    else:
        w_q, codes = _weight_values(_dorefa_codes(t, peak, bits), levels(bits), 1.0, w.dtype)

    def backward(g):
        if peak == 0:
            return ((g * (1 - t * t)).astype(w.dtype),)
        # d(t / M) = dt / M - (t / M^2) dM,  M = max|t| (split between ties, like ops.max).
        if w.dtype == np.float32:
            return (_dorefa_grad_fused(g, t, peak),)
        at_peak = np.abs(t) == peak
        grad_peak = -np.sum(g * t) / peak ** 2
        grad_t = g / peak + grad_peak * np.sign(t) * at_peak / at_peak.sum()
        return ((grad_t * (1 - t * t)).astype(w.dtype),)

    return _with_codes(Tensor.from_op(w_q, (w,), backward, "dorefa_weight"), codes)


def _weight_values(j: np.ndarray, n: int, scale: float, dtype) -> tuple[np.ndarray, Codes]:
    """(w_q, codes) of weight codes j: levels c = 2j - n, s_w = scale / n rounded to the weight's
    dtype (float32), w_q = c * s_w."""
    c = (2 * j - n).astype(dtype)
    s_w = np.dtype(dtype).type(scale / n)
    return c * s_w, Codes(c, s_w, n)


def _fused_weight_values(source: np.ndarray, divisor: float, clip: bool, n: int, scale: float,
                         dtype) -> tuple[np.ndarray, Codes]:
    """`_weight_values` of j = round((source / divisor, clipped to [-1, 1] if `clip`) * 0.5 + 0.5)
    * n) in one Numba pass (`_kernels.weight_levels`): the *_weight_codes functions' float64
    steps, in their order, so the same codes (tests/test_quant.py); for float32 weights."""
    shape = source.shape
    source = np.ascontiguousarray(source).reshape(-1)
    s_w = np.dtype(dtype).type(scale / n)
    c, w_q = np.empty(shape, dtype), np.empty(shape, dtype)
    _kernels.weight_levels(source, float(divisor), clip, n, s_w, c.reshape(-1), w_q.reshape(-1))
    return w_q, Codes(c, s_w, n)


def _dorefa_grad_fused(g: np.ndarray, t: np.ndarray, peak: float) -> np.ndarray:
    """dorefa_weight's gradient in two Numba passes (the sums, then the elementwise part)."""
    g_flat, t_flat = np.ascontiguousarray(g).reshape(-1), t.reshape(-1)
    sum_gt, ties = _kernels.dorefa_grad_sums(g_flat, t_flat, peak,
                                             _kernels.row_chunks(g_flat.shape[0]))
    grad = np.empty(t.shape, np.float32)
    _kernels.dorefa_grad(g_flat, t_flat, peak, -sum_gt / peak ** 2 / ties, grad.reshape(-1))
    return grad


def sawb_scale(w, bits: int, zero_aligned: bool = False) -> float:
    """SAWB's clip scale (arXiv 1807.06964), from two statistics of w, in float64:

        alpha_w = c1 * sqrt(mean(w^2)) - c2 * mean(|w|)

    with (c1, c2) from `SAWB_COEFFICIENTS[bits]` (zero-aligned: `SAWB_ZERO_ALIGNED_COEFFICIENTS`).
    Falls back to max|w| if alpha_w <= 0 (and to 1 for an all-zero w). On N(0, 1) weights the
    2-bit scale is 3.12 - 2.064 * sqrt(2/pi) = 1.473 (MSE-optimal: 1.500).
    """
    table = SAWB_ZERO_ALIGNED_COEFFICIENTS if zero_aligned else SAWB_COEFFICIENTS
    bits = check_bits(bits)
    if bits not in table:
        grid = "zero-aligned SAWB" if zero_aligned else "SAWB"
        raise ValueError(f"{grid} has coefficients for {sorted(table)} bits, got {bits}")
    c1, c2 = table[bits]
    w64 = _weights64(w)
    alpha = c1 * np.sqrt(np.mean(w64 * w64)) - c2 * np.mean(np.abs(w64))
    if not alpha > 0:
        alpha = np.max(np.abs(w64)) if w64.size else 0.0
    return float(alpha) if alpha > 0 else 1.0


def sawb_levels(bits: int, zero_aligned: bool = False) -> int:
    """n of the SAWB grid: 2**k - 1 steps, or 2**k - 2 when zero-aligned (2**k - 1 levels)."""
    return levels(bits) - 1 if zero_aligned else levels(bits)


def sawb_weight_codes(w, bits: int, zero_aligned: bool = False) -> tuple[np.ndarray, float]:
    """SAWB weight codes, in float64: (j, alpha_w) with w_q = alpha_w * (2j - n) / n, where

        u = clip(w / alpha_w, -1, 1) * 0.5 + 0.5,   j = round(u * n)   (n: `sawb_levels`).

    2 bits: levels {-a, -a/3, a/3, a}; zero-aligned 2 bits: {-a, 0, a}.
    """
    alpha = sawb_scale(w, bits, zero_aligned)
    u = np.clip(_weights64(w) / alpha, -1.0, 1.0) * 0.5 + 0.5
    return round_half_up(u * sawb_levels(bits, zero_aligned)).astype(np.int32), alpha


def sawb_weight(w, bits: int, zero_aligned: bool = False) -> Tensor:
    """SAWB weights: w_q = alpha_w * (2 * round(u * n) / n - 1), u = clip(w/alpha_w, -1, 1)/2 + 1/2.

    alpha_w (`sawb_scale`) is recomputed from w at every call and treated as a constant; the
    gradient is the straight-through identity (every weight gets the upstream gradient).
    bits=32: w unchanged.
    """
    bits = check_bits(bits)
    w = as_tensor(w)
    if bits == FULL_PRECISION:
        return w
    n = sawb_levels(bits, zero_aligned)
    if w.dtype == np.float32:
        alpha = sawb_scale(w, bits, zero_aligned)
        w_q, codes = _fused_weight_values(w.data, alpha, True, n, alpha, w.dtype)
    else:
        j, alpha = sawb_weight_codes(w, bits, zero_aligned)
        w_q, codes = _weight_values(j, n, alpha, w.dtype)
    return _with_codes(Tensor.from_op(w_q, (w,), lambda g: (g,), "sawb_weight"), codes)


# ========================================================================== by graph "wq" kind
WEIGHT_QUANT_KINDS = ("dorefa", "sawb", "sawb0", "float")


def quantize_weight(w, kind: str, bits: int) -> Tensor:
    """Dispatch on the checkpoint graph's `wq` kind: "dorefa", "sawb", "sawb0" (zero-aligned
    SAWB) or "float" (w unchanged, whatever the bits)."""
    if kind == "float" or check_bits(bits) == FULL_PRECISION:
        return as_tensor(w)
    if kind == "dorefa":
        return dorefa_weight(w, bits)
    if kind in ("sawb", "sawb0"):
        return sawb_weight(w, bits, zero_aligned=kind == "sawb0")
    raise ValueError(f"weight quantizer must be one of {', '.join(WEIGHT_QUANT_KINDS)}, got {kind!r}")


def weight_codes(w, kind: str, bits: int) -> tuple[np.ndarray, int, float]:
    """(j, n, scale) with w_q = scale * (2j - n) / n, for the `wq` kinds that have codes."""
    if kind == "dorefa":
        j, scale = dorefa_weight_codes(w, bits)
        return j, levels(bits), scale
    if kind in ("sawb", "sawb0"):
        j, scale = sawb_weight_codes(w, bits, zero_aligned=kind == "sawb0")
        return j, sawb_levels(bits, zero_aligned=kind == "sawb0"), scale
    raise ValueError(f"weight quantizer {kind!r} has no integer codes")
