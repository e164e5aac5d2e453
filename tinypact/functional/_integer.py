"""The rule conv2d and linear follow when both operands are quantized: multiply the integers.

With activation codes q (scale s_a) and weight levels c (scale s_w), both exact integers in
float32, the layer computes `acc = sum q * c` and then `z = acc * (s_a * s_w)` in float32, the
scale applied once after all MACs (PACT Sec. 4.2), which is what integer hardware, and
integer_engine, compute. A float GEMM on integers is exact whenever every partial sum is an
integer of magnitude <= 2**p (p = 24 for float32, 53 for float64), in any summation order and
with or without FMA; `fan_in * max|q| * max|c|` bounds every partial sum, so that static bound
picks float32 or float64 per layer.
"""
from __future__ import annotations

import numpy as np

from tinypact.tensor import Tensor

FLOAT32_EXACT = 2**24  # float32 represents every integer of magnitude <= 2**24


def integer_operands(input: Tensor, weight: Tensor, fan_in: int  # noqa: A002
                     ) -> tuple[np.ndarray, np.ndarray, np.floating, type] | None:
    """(codes, levels, scale, GEMM dtype) when input and weight both carry Codes, else None.
    The scale is `s_a * s_w`, rounded to the data's dtype (float32 in every network)."""
    a, w = input.codes, weight.codes
    if a is None or w is None:
        return None
    bound = fan_in * int(a.max) * int(w.max)
    dtype = np.float32 if bound <= FLOAT32_EXACT else np.float64
    return a.values, w.values, a.scale * w.scale, dtype


def exact_matmul(a: np.ndarray, b: np.ndarray, dtype: type) -> np.ndarray:
    """a @ b of integer-valued float arrays, computed in `dtype` (exact by the bound), returned
    in a's dtype (float32 rounds a float64 sum once, as integer_engine's epilogue does)."""
    if dtype is np.float32 or a.dtype == np.float64:
        return a @ b
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(a.dtype)
