"""One rounding rule for the whole project (docs/ARCHITECTURE.md): round half up, floor(v + 1/2).

tinypact's quantizers and integer_engine's requantization are written separately (the engine
never imports tinypact), so this file checks that they implement the same rule, ties included.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from integer_engine.requant import (apply_thresholds, fixed_point_add, fixed_point_add_apply,
                                    requant_float, round_half_up_int, thresholds)
from tinypact.quant import activation_codes, round_half_up


def test_ties_go_up_in_both_packages():
    ties = np.array([0.5, 1.5, 2.5, 3.5, 14.5])
    assert round_half_up(ties).tolist() == [1, 2, 3, 4, 15]
    assert round_half_up_int(ties).tolist() == [1, 2, 3, 4, 15]
    assert np.round(ties).tolist() != [1, 2, 3, 4, 15]  # NumPy's half-to-even differs


@given(st.lists(st.integers(0, 2**20), min_size=1, max_size=50), st.integers(1, 10))
def test_same_rule_on_exact_halves(numerators, log_denominator):
    # v = k / 2**d is exact in binary, so half-way cases really are ties.
    v = np.array(numerators, dtype=np.float64) / 2**log_denominator
    assert np.array_equal(round_half_up(v), round_half_up_int(v).astype(np.float64))
    assert np.array_equal(round_half_up(v), requant_float(v, 1.0, 0.0, 2**30))


@given(st.integers(1, 8), st.integers(-3, 3), st.lists(st.integers(0, 4096), min_size=1,
                                                          max_size=64))
def test_pact_codes_equal_engine_thresholds(bits, exponent, accs):
    """A PACT activation computed by tinypact == the engine's integer thresholds on the same values.

    The pre-activation is acc * step (step a power of two) and alpha = n * 2**exponent, so every
    product is exact in float32 and float64 and the ties at (t - 1/2) * alpha / n really occur.
    """
    n = 2**bits - 1
    alpha = n * 2.0**exponent
    step = 1.0 / 64
    acc = np.array(accs, dtype=np.int64)
    x = acc * step
    want = activation_codes(x, alpha, bits)
    # The same requantization as the engine sees it: code = clip(floor(acc*mul + add + 1/2), 0, n)
    mul, add = np.array([step * n / alpha]), np.array([0.0])
    th, direction = thresholds(mul, add, n, acc_lo=0, acc_hi=4096)
    got = apply_thresholds(acc[None, :], th, direction, channel_axis=0)[0]
    assert np.array_equal(got, np.asarray(want).astype(np.uint8))


@given(st.lists(st.integers(-300, 300), min_size=1, max_size=40), st.floats(0.01, 3.0),
       st.floats(-5.0, 5.0), st.integers(1, 8))
def test_fixed_point_residual_add_rounds_half_up(accs, a, c, bits):
    """The residual add's fixed point equals floor(v + 1/2) wherever v is not within 2**-20 of a tie."""
    n = 2**bits - 1
    x = np.array(accs, dtype=np.int64)[None, :]
    m_int, k_int, shift = fixed_point_add([np.array([a])], np.array([c]), [300])
    got = fixed_point_add_apply([x], m_int, k_int, shift, n, channel_axis=0)[0]
    v = x[0] * a + c
    near_tie = np.abs(v - np.floor(v) - 0.5) < 2**-20
    want = np.clip(round_half_up(v), 0, n)
    assert np.array_equal(got[~near_tie], want[~near_tie].astype(np.uint8))
