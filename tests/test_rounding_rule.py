"""One rounding rule for the whole project (docs/ARCHITECTURE.md): round half up, implemented
exactly as floor(v) + [v - floor(v) >= 1/2] (the literal floor(v + 1/2) is wrong just below 1/2).

tinypact's quantizers and integer_engine's epilogue are written separately (the engine never
imports tinypact), so this file checks that they implement the same rule, ties included.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from integer_engine import epilogue
from integer_engine.requant import apply_thresholds, epilogue_thresholds
from tinypact.quant import activation_codes, round_half_up

BOTH = [round_half_up, epilogue.round_half_up]


@pytest.mark.parametrize("rounding", BOTH, ids=["tinypact", "integer_engine"])
def test_ties_go_up(rounding):
    ties = np.array([0.5, 1.5, 2.5, 3.5, 14.5])
    assert rounding(ties).tolist() == [1, 2, 3, 4, 15]
    assert np.round(ties).tolist() != [1, 2, 3, 4, 15]  # NumPy's half-to-even differs


@pytest.mark.parametrize("rounding", BOTH, ids=["tinypact", "integer_engine"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_float_just_below_every_half_integer_rounds_down(rounding, dtype):
    """Regression: floor(v + 0.5) maps 0.49999997 (float32) and 0.49999999999999994 (float64) to
    1, because v + 0.5 rounds up to 1.0. A training run flipped activation codes this way."""
    halves = np.concatenate([np.arange(0, 512), 2.0 ** np.arange(10, 22)]).astype(dtype) + dtype(0.5)
    below = np.nextafter(halves, dtype(-1))
    got = rounding(below)
    assert got.dtype == dtype
    want = halves - dtype(0.5)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{below[bad[0]]!r} rounded to {got[bad[0]]}, expected {want[bad[0]]}"
    assert np.array_equal(rounding(halves), halves + dtype(0.5))


@given(st.lists(st.integers(0, 2**20), min_size=1, max_size=50), st.integers(1, 10))
def test_same_rule_on_exact_halves(numerators, log_denominator):
    # v = k / 2**d is exact in binary, so half-way cases really are ties.
    v = np.array(numerators, dtype=np.float64) / 2**log_denominator
    assert np.array_equal(round_half_up(v), epilogue.round_half_up(v))
    assert np.array_equal(round_half_up(v), np.floor(v + 0.5))  # exact here: v + 0.5 is exact


@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=50))
def test_half_even_is_numpys_rint(values):
    v = np.array(values, dtype=np.float32)
    assert np.array_equal(epilogue.round_to_integer(v, "half_even"), np.rint(v))


@given(st.integers(1, 8), st.integers(-3, 3), st.lists(st.integers(0, 4096), min_size=1,
                                                          max_size=64))
def test_pact_codes_equal_engine_thresholds(bits, exponent, accs):
    """A PACT activation computed by tinypact == the engine's integer thresholds on the same values.

    The pre-activation is acc * step (step a power of two) and alpha = n * 2**exponent, so every
    product is exact and the ties at (t - 1/2) * alpha / n really occur.
    """
    n = 2**bits - 1
    alpha = np.float32(n * 2.0**exponent)
    step = np.float32(1.0 / 64)
    acc = np.array(accs, dtype=np.int64)
    x = acc.astype(np.float32) * step
    want = activation_codes(x, alpha, bits)
    th, direction = epilogue_thresholds(step, np.zeros(1), np.ones(1), np.zeros(1), alpha, n,
                                        "half_up", acc_lo=0, acc_hi=4096)
    got = apply_thresholds(acc[None, :], th, direction, channel_axis=0)[0]
    assert np.array_equal(got, np.asarray(want).astype(np.uint8))
