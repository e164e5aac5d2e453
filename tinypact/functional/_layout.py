"""NCHW outside, NHWC inside: how the image ops keep copies few.

The functional ops take and return NCHW-shaped arrays (PyTorch's layout), but conv2d writes its
output as an NHWC buffer and returns the NCHW *view* of it (`transpose(0, 3, 1, 2)`, no copy).
The next image op asks for the NHWC view back, which is then already contiguous: no copy either.
Elementwise NumPy ufuncs keep their input's memory order, so activations in between keep it too.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


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


def pad_nhwc(x: np.ndarray, pad_h: int, pad_w: int) -> np.ndarray:
    """NCHW-shaped x as a zero-padded NHWC-contiguous array (one copy, or none without padding)."""
    if pad_h == 0 and pad_w == 0:
        return to_nhwc(x)
    n, c, h, w = x.shape
    padded = np.zeros((n, h + 2 * pad_h, w + 2 * pad_w, c), dtype=x.dtype)
    padded[:, pad_h:pad_h + h, pad_w:pad_w + w, :] = x.transpose(0, 2, 3, 1)
    return padded


def windows(padded: np.ndarray, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
            out_h: int, out_w: int) -> np.ndarray:
    """View (N, OH, OW, KH, KW, C) of the windows of NHWC-contiguous `padded` (no copy)."""
    sn, sh, sw, sc = padded.strides
    return as_strided(padded, shape=(padded.shape[0], out_h, out_w, kernel_h, kernel_w,
                                     padded.shape[3]),
                      strides=(sn, sh * stride_h, sw * stride_w, sh, sw, sc), writeable=False)
