"""bit_planes / unpack_bit_planes: layout, round trips and input validation."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integer_engine.bitpack import bit_planes, unpack_bit_planes, words_for
from integer_engine.errors import EngineError

# Reduction lengths worth covering: tiny, odd, just around word boundaries, whole words.
K_VALUES = st.one_of(
    st.integers(1, 200),
    st.sampled_from([63, 64, 65, 127, 128, 129, 192, 256]),
)


def random_codes(seed: int, m: int, k: int, bits: int, dtype=np.int64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**bits, (m, k)).astype(dtype)


@settings(max_examples=600)
@given(bits=st.integers(1, 8), m=st.integers(1, 6), k=K_VALUES, seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.uint8, np.int16, np.int64]))
def test_pack_unpack_round_trip(bits, m, k, seed, dtype):
    codes = random_codes(seed, m, k, bits, dtype)
    planes = bit_planes(codes, bits)
    assert planes.dtype == np.uint64 and planes.shape == (bits, m, words_for(k)), (
        f"bits={bits} codes {codes.shape}: got planes {planes.dtype} {planes.shape}")
    back = unpack_bit_planes(planes, k)
    bad = np.argwhere(back != codes)
    assert bad.size == 0, (
        f"bits={bits} shape={codes.shape}: first mismatch at {tuple(bad[0])}, "
        f"expected {codes[tuple(bad[0])]}, got {back[tuple(bad[0])]}")


@settings(max_examples=300)
@given(bits=st.integers(1, 8), m=st.integers(1, 4), k=K_VALUES, seed=st.integers(0, 2**32 - 1))
def test_bit_layout_is_lsb_first_along_k_with_zero_padding(bits, m, k, seed):
    """planes[i, r, k // 64] bit (k % 64) is bit i of codes[r, k]; bits past K are 0."""
    codes = random_codes(seed, m, k, bits)
    planes = bit_planes(codes, bits)
    positions = np.arange(words_for(k) * 64)
    for i in range(bits):
        got = (planes[i][:, positions // 64] >> (positions % 64).astype(np.uint64)) & np.uint64(1)
        expected = np.zeros_like(got)
        expected[:, :k] = (codes >> i) & 1
        bad = np.argwhere(got != expected)
        assert bad.size == 0, (
            f"bits={bits} codes {codes.shape}: plane {i}, row {bad[0][0]}, element {bad[0][1]}: "
            f"expected bit {expected[tuple(bad[0])]}, got {got[tuple(bad[0])]}")


def test_all_ones_row_counts_k_bits():
    planes = bit_planes(np.ones((1, 130), np.uint8), 1)
    assert planes.shape == (1, 1, 3)
    assert [bin(int(v)).count("1") for v in planes[0, 0]] == [64, 64, 2]


@pytest.mark.parametrize("bits, codes, message", [
    (2, [[0, 4]], "codes must lie in \\[0, 3\\]"),
    (3, [[-1, 2]], "codes must lie in \\[0, 7\\]"),
    (0, [[0, 0]], "bit width must be an integer in 1..8"),
    (9, [[0, 0]], "bit width must be an integer in 1..8"),
    (2.0, [[0, 0]], "bit width must be an integer in 1..8"),
    (2, [0, 1], "2-D"),
    (2, [[0.5, 1.0]], "integer codes"),
])
def test_bit_planes_rejects_bad_input(bits, codes, message):
    with pytest.raises(EngineError, match=message):
        bit_planes(np.array(codes), bits)


def test_unpack_rejects_mismatched_words_and_dtype():
    planes = bit_planes(np.zeros((2, 70), np.uint8), 2)
    with pytest.raises(EngineError, match="cannot hold k=200"):
        unpack_bit_planes(planes, 200)
    with pytest.raises(EngineError, match="uint64 planes"):
        unpack_bit_planes(planes.astype(np.int64), 70)
