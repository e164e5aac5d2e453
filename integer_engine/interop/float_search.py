"""Float32 thresholds by exact search over the ordered float32 bit patterns.

A residual add's code is the activation of a float32 sum z (docs/model-format.md, "Residual
adds"): it has no integer thresholds, but the activation `code(z)` is non-decreasing in z, so for
every level t there is a smallest float32 F[t] with code(F[t]) >= t, and then

    code(z) = #{t in 1..n : z >= F[t]}        for every float32 z (no NaN).

F is found by bisection over the integers that order the float32 values: for z >= 0 the bit
pattern read as an int32 is monotone in z, so F[t] is the float whose pattern is the smallest
integer k in [bits(0), bits(alpha)] with code(float(k)) >= t. Every probe evaluates the code
function itself (never an algebraic inverse), so the comparison agrees with it on all 2**32
float32 inputs, whatever the rounding rule; that is what lets ONNX Runtime (Gather + compare)
and qonnx (MultiThreshold) reproduce the engine's float32 epilogue exactly.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from integer_engine.epilogue import activation_code


def float_bits(x: np.ndarray) -> np.ndarray:
    """float32 >= 0 -> its bit pattern as int64 (monotone in x on [0, inf])."""
    return np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)


def bits_float(k: np.ndarray) -> np.ndarray:
    """Inverse of float_bits."""
    return np.asarray(k, dtype=np.int64).astype(np.int32).view(np.float32)


def float_thresholds(code: Callable[[np.ndarray], np.ndarray], n: int, top: np.float32) -> np.ndarray:
    """F (n,) float32: F[t-1] = the smallest float32 z in (0, top] with code(z) >= t, for a
    non-decreasing `code` on float32 with code(z) = 0 for z <= 0 and code(top) = n.

    Bisection over k = bits(z): low = bits(0), high = bits(top), about 31 probes per level, all
    levels at once.
    """
    top = np.float32(top)
    t = np.arange(1, n + 1, dtype=np.int64)
    if not np.all(code(np.array([top], np.float32)) >= n):
        raise ValueError(f"code({top}) does not reach the top level {n}")
    if np.any(code(np.array([0.0], np.float32)) > 0):
        raise ValueError("code(0) must be 0")
    low = np.zeros(n, np.int64)                  # code(bits_float(low)) < t
    high = np.full(n, float_bits(top), np.int64)  # code(bits_float(high)) >= t
    while np.any(high - low > 1):
        mid = (low + high) // 2
        reached = code(bits_float(mid)) >= t
        low, high = np.where(reached, low, mid), np.where(reached, mid, high)
    return bits_float(high)


def activation_float_thresholds(alpha: np.float32, n: int, rule: str) -> np.ndarray:
    """The float32 thresholds of `epilogue.activation_code(z, alpha, n, rule)` (clip to [0, alpha],
    * n, / alpha, round): code(z) = #{t : z >= F[t-1]} for every float32 z."""
    return float_thresholds(lambda z: activation_code(z, alpha, n, rule), n, np.float32(alpha))


def add_float_thresholds(layer) -> np.ndarray:
    """A residual add layer's float32 thresholds: stored for an imported add (`epilogue:
    "source"`), else those of its tinypact activation (alpha, rounding rule)."""
    a, arrays = layer.attrs, layer.arrays
    if a.get("epilogue") == "source":
        return arrays["float_thresholds"]
    return activation_float_thresholds(arrays["alpha"][0], a["out_max"], a.get("rounding", "half_up"))
