"""The project's one rounding rule: round half up, `round(v) = floor(v + 1/2)`.

Every quantizer in tinypact calls `round_half_up` (never `np.round`), and integer_engine's
requantization implements the same rule (see docs/ARCHITECTURE.md, "The rounding rule").

Why this rule: the quantities rounded here are non-negative (`y * n / alpha` in [0, n] for
activations, `u * n` in [0, n] for weights), where half up is also half away from zero
(gemmlowp's rule). Unlike NumPy's half-to-even, half up is a fixed set of thresholds: the code of
`v` is the number of thresholds `t - 1/2` (t = 1..n) that `v` reaches, which is what lets the
integer engine reproduce it with integer comparisons only (FINN's MultiThreshold).
"""
from __future__ import annotations

import numpy as np


def round_half_up(v: np.ndarray) -> np.ndarray:
    """floor(v + 1/2), elementwise, in v's float dtype: 0.5 -> 1, 1.5 -> 2, 2.5 -> 3."""
    # NumPy 2 treats the Python float 0.5 as "weak", so a float32 input stays float32.
    return np.floor(np.asarray(v) + 0.5)
