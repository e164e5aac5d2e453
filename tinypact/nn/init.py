"""Weight initialisation (PyTorch's torch.nn.init names), drawing from `tinypact.random`.

Kaiming/He (He et al. 2015): keep the variance of activations (fan_in) or of gradients
(fan_out) constant through layers:  std = gain / sqrt(fan),  gain = sqrt(2 / (1 + a^2)) for a
(leaky) ReLU with negative slope a, 1 for a linear layer.
"""
from __future__ import annotations

import math

import numpy as np

from tinypact import random
from tinypact.tensor import Tensor


def calculate_gain(nonlinearity: str = "relu", param: float | None = None) -> float:
    """sqrt(2) for relu, sqrt(2 / (1 + a^2)) for leaky_relu with slope a, 1 for linear."""
    if nonlinearity in ("linear", "identity", "conv2d", "sigmoid"):
        return 1.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "tanh":
        return 5.0 / 3
    raise ValueError(f"unknown nonlinearity {nonlinearity!r}")


def fan_in_and_fan_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """fan_in = in_features * kernel area, fan_out = out_features * kernel area
    for weights shaped (out, in, *kernel)."""
    if len(shape) < 2:
        raise ValueError(f"fan in/out need a weight with at least 2 axes, got shape {shape}")
    area = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * area, shape[0] * area


def _std(shape, a: float, mode: str, nonlinearity: str) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fan_in_and_fan_out(shape)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_normal_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "relu",
                    generator: np.random.Generator | None = None) -> Tensor:
    """Fill in place with N(0, std^2), std = gain / sqrt(fan)."""
    rng = random.default_generator() if generator is None else generator
    std = _std(tensor.shape, a, mode, nonlinearity)
    tensor.data[...] = rng.normal(0.0, std, size=tensor.shape)
    return tensor


def kaiming_uniform_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "relu",
                     generator: np.random.Generator | None = None) -> Tensor:
    """Fill in place with U(-bound, bound), bound = sqrt(3) * gain / sqrt(fan) (same variance)."""
    rng = random.default_generator() if generator is None else generator
    bound = math.sqrt(3.0) * _std(tensor.shape, a, mode, nonlinearity)
    tensor.data[...] = rng.uniform(-bound, bound, size=tensor.shape)
    return tensor


def zeros_(tensor: Tensor) -> Tensor:
    tensor.data[...] = 0
    return tensor


def ones_(tensor: Tensor) -> Tensor:
    tensor.data[...] = 1
    return tensor


def uniform_(tensor: Tensor, low: float = 0.0, high: float = 1.0,
             generator: np.random.Generator | None = None) -> Tensor:
    rng = random.default_generator() if generator is None else generator
    tensor.data[...] = rng.uniform(low, high, size=tensor.shape)
    return tensor
