"""The float epilogue: what a layer does after its integer MACs, as one exact float32 sequence.

tinypact's trained network computes every quantized layer as integer MACs followed by float32
operations (tinypact.functional._integer). This module writes those operations down once, so
that export, the reference and the engine evaluate the very same IEEE float32 sequence
(docs/model-format.md, "The float epilogue"):

    affine      z = float32(acc);  z = z * scale;  z = z + bias[c];  z = z * bn_scale[c];
                z = z + bn_shift[c]
    activation  y = min(max(z, 0), alpha);  v = y * n;  v = v / alpha;  code = round(v)

Every step is one float32 operation rounded to nearest (NumPy never fuses a multiply and an
add), so the result is defined bit for bit. `bias` is the conv/linear bias (0 where there is
none), `bn_scale`/`bn_shift` are batch norm's eval constants (1 and 0 where there is none; x*1 and
x+0 are exact, so a missing step and an identity step agree). `round` is round half up (the
project's rule) or, for imported models, half to even; both are exact here.

Every step is monotone, so `code(acc)` is monotone in the integer accumulator: non-decreasing
for bn_scale >= 0, non-increasing for a negative batch-norm gamma (scale >= 0). `requant`
relies on exactly this to find integer thresholds by bisection and to check them.
"""
from __future__ import annotations

import numpy as np

ROUNDING_RULES = ("half_up", "half_even")


def round_half_up(v: np.ndarray) -> np.ndarray:
    """floor(v) + [v - floor(v) >= 1/2], exact in v's dtype (floor(v + 1/2) is not: for v just
    below 1/2 the addition rounds up to 1)."""
    v = np.asarray(v)
    whole = np.floor(v)
    return whole + (v - whole >= 0.5)


def round_to_integer(v: np.ndarray, rule: str = "half_up") -> np.ndarray:
    """Round by `rule`: "half_up" (tinypact) or "half_even" (np.rint; ONNX's and qonnx's ROUND)."""
    if rule == "half_up":
        return round_half_up(v)
    if rule == "half_even":
        return np.rint(v)
    raise ValueError(f"unknown rounding rule {rule!r}; use one of {', '.join(ROUNDING_RULES)}")


def _per_channel(values: np.ndarray, ndim: int, channel_axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[channel_axis] = -1
    return np.asarray(values, dtype=np.float32).reshape(shape)


def affine(acc: np.ndarray, scale: np.float32, bias: np.ndarray, bn_scale: np.ndarray,
           bn_shift: np.ndarray, channel_axis: int = 1) -> np.ndarray:
    """z = ((float32(acc) * scale + bias) * bn_scale) + bn_shift, each step in float32.

    `acc` holds integers (any dtype; int64 and float64 are rounded to float32 once, to nearest);
    bias/bn_scale/bn_shift are per channel along `channel_axis`."""
    z = np.asarray(acc).astype(np.float32)
    ndim = z.ndim
    z = z * np.float32(scale)
    z = z + _per_channel(bias, ndim, channel_axis)
    z = z * _per_channel(bn_scale, ndim, channel_axis)
    return z + _per_channel(bn_shift, ndim, channel_axis)


def activation_code(z: np.ndarray, alpha: np.float32, n: int, rule: str = "half_up") -> np.ndarray:
    """The quantized activation's code in [0, n] (float32): clip to [0, alpha], * n, / alpha,
    round. PACT, DoReFa (alpha = 1) and the quantized ReLU (alpha = its running max) alike."""
    alpha = np.float32(alpha)
    y = np.minimum(np.maximum(np.asarray(z, dtype=np.float32), np.float32(0)), alpha)
    v = y * np.float32(n)
    v = v / alpha
    return round_to_integer(v, rule)
