"""The project's one rounding rule: round half up, `round(v) = floor(v + 1/2)`, implemented exactly.

Every quantizer in tinypact calls `round_half_up` (never `np.round`), and integer_engine's
requantization implements the same rule (see docs/ARCHITECTURE.md, "The rounding rule").

Why this rule: the quantities rounded here are non-negative (`y * n / alpha` in [0, n] for
activations, `u * n` in [0, n] for weights), where half up is also half away from zero
(gemmlowp's rule). Unlike NumPy's half-to-even, half up is a fixed set of thresholds: the code of
`v` is the number of thresholds `t - 1/2` (t = 1..n) that `v` reaches, which is what lets the
integer engine reproduce it with integer comparisons only (FINN's MultiThreshold).

Why not the literal `np.floor(v + 0.5)`: the addition rounds. For v = 0.49999997 (the float32
just below 1/2; 0.49999999999999994 in float64) `v + 0.5` rounds up to 1.0, so floor(v + 0.5)
returns 1 where the rule says 0 (a real training run flipped activation codes this way).
`floor(v) + (v - floor(v) >= 1/2)` is exact: `v - floor(v)` is the fractional part of v, which
is representable, so no step rounds.
"""
from __future__ import annotations

import numpy as np


def round_half_up(v: np.ndarray) -> np.ndarray:
    """floor(v) + [v - floor(v) >= 1/2], elementwise, exact, in v's float dtype:
    0.5 -> 1, 1.5 -> 2, 2.5 -> 3, and the float just below 0.5 -> 0."""
    v = np.asarray(v)
    whole = np.floor(v)
    # NumPy 2 treats the Python float 0.5 as "weak", so a float32 input stays float32.
    return whole + (v - whole >= 0.5)
