"""Float32 thresholds by exact search: code(z) = #{t : z >= F[t]} for every float32 z, including
the floats just below and at every threshold, whatever the rounding rule."""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from integer_engine.epilogue import activation_code
from integer_engine.interop.float_search import activation_float_thresholds


@given(alpha=st.floats(0.0009765625, 1024.0, width=32), bits=st.integers(1, 8), rule=st.sampled_from(["half_up", "half_even"]),
       seed=st.integers(0, 2**32 - 1))
def test_float_thresholds_reproduce_the_activation(alpha, bits, rule, seed):
    n = 2**bits - 1
    alpha = np.float32(alpha)
    th = activation_float_thresholds(alpha, n, rule)
    assert np.all(np.diff(th) >= 0), "thresholds must be non-decreasing"
    rng = np.random.default_rng(seed)
    edges = np.concatenate([th, np.nextafter(th, np.float32(-np.inf)), np.nextafter(th, np.float32(np.inf))])
    z = np.concatenate([edges, rng.uniform(-0.1, 1.1, 500).astype(np.float32) * alpha,
                        np.float32([0, -0.0, alpha, np.inf, -np.inf])]).astype(np.float32)
    want = activation_code(z, alpha, n, rule)
    got = (z[:, None] >= th[None, :]).sum(axis=1)
    bad = np.flatnonzero(got != want)
    assert not bad.size, (f"alpha={alpha} n={n} {rule}: z={z[bad[0]]!r} code {want[bad[0]]} but "
                          f"{got[bad[0]]} thresholds reached")
