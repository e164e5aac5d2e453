"""NCHW outside, NHWC inside: how the image ops keep copies few.

The functional ops take and return NCHW-shaped arrays (PyTorch's layout), but conv2d writes its
output as an NHWC buffer and returns the NCHW *view* of it (`transpose(0, 3, 1, 2)`, no copy).
The next image op asks for the NHWC view back, which is then already contiguous: no copy either.
Elementwise NumPy ufuncs keep their input's memory order, so activations in between keep it too.
"""
from __future__ import annotations

import numpy as np


def to_nhwc(x: np.ndarray) -> np.ndarray:
    """The NHWC-contiguous array holding NCHW-shaped `x` (free if x is an NHWC-backed view)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def to_nchw(x: np.ndarray) -> np.ndarray:
    """The NCHW-shaped view of NHWC-contiguous `x` (no copy)."""
    return x.transpose(0, 3, 1, 2)


def pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints as (height, width)."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    values = tuple(int(v) for v in value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return values
