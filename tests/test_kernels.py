"""Integer kernels against plain NumPy int64 references (and nested-loop references)."""
import functools

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integer_engine import kernels
from integer_engine.bitpack import bit_planes
from integer_engine.errors import EngineError
from integer_engine.kernels import (
    affine_weight_gemm,
    bitserial_gemm,
    conv_bit_planes,
    im2col_codes,
    int_gemm,
    max_pool_codes,
    odd_weight_gemm,
    plane_row_sums,
)
from integer_engine.kernels import bitserial, floatdot, int8dot, select
from integer_engine.kernels.common import _NO_THRESHOLDS
from integer_engine.kernels.popcount import TILE_COLS, TILE_ROWS, _popcount_tile_python, popcount64, popcount_tile
from integer_engine.requant import apply_thresholds, block_thresholds

# Every bit-serial kernel runs on any x86-64 CPU (LLVM lowers 512-bit vectors it lacks), so the
# tests check both whatever the machine would pick.
BITSERIAL_KINDS = st.sampled_from(["scalar", "vector"])
K_VALUES = st.one_of(
    st.integers(1, 200),
    st.sampled_from([63, 64, 65, 128, 129, 192, 320]),
)
SIZES = st.one_of(st.just(1), st.integers(1, 9))
SEEDS = st.integers(0, 2**32 - 1)


def mismatch(got: np.ndarray, expected: np.ndarray, context: str) -> str:
    """Failure message naming the first differing index, expected vs got."""
    if got.shape != expected.shape:
        return f"{context}: expected shape {expected.shape}, got {got.shape}"
    idx = tuple(np.argwhere(got != expected)[0])
    return f"{context}: first mismatch at {idx}: expected {expected[idx]}, got {got[idx]}"


def assert_equal(got, expected, context):
    assert got.shape == expected.shape and np.array_equal(got, expected), mismatch(
        got, expected, context)


@pytest.mark.parametrize("value", [0, 1, 2**63, 2**64 - 1, 0x0101010101010101, 12345678901234])
def test_popcount64(value):
    got = int(numba.njit(lambda x: popcount64(x))(np.uint64(value)))
    assert got == bin(value).count("1"), f"popcount({value:#x}): expected {bin(value).count('1')}, got {got}"


@settings(max_examples=600)
@given(abits=st.integers(1, 8), wbits=st.integers(1, 8), m=SIZES, n=SIZES, k=K_VALUES, seed=SEEDS,
       kind=BITSERIAL_KINDS)
def test_bitserial_gemm_equals_int64_matmul(abits, wbits, m, n, k, seed, kind):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**abits, (m, k))
    w = rng.integers(0, 2**wbits, (n, k))
    got = bitserial_gemm(bit_planes(a, abits), bit_planes(w, wbits), kind)
    assert got.dtype == np.int64
    assert_equal(got, a @ w.T, f"{kind} kernel W{wbits}A{abits} M={m} N={n} K={k} seed={seed}")


@settings(max_examples=100)
@given(abits=st.integers(1, 4), wbits=st.integers(1, 4), m=st.integers(1, 40), n=st.integers(1, 40),
       k=K_VALUES, seed=SEEDS)
def test_vector_kernel_across_tile_edges(abits, wbits, m, n, k, seed):
    """Row and column counts on both sides of the 4 x 16 register tile's edges."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**abits, (m, k))
    w = rng.integers(0, 2**wbits, (n, k))
    assert_equal(bitserial_gemm(bit_planes(a, abits), bit_planes(w, wbits), "vector"), a @ w.T,
                 f"vector kernel W{wbits}A{abits} M={m} N={n} K={k} seed={seed}")


@settings(max_examples=50)
@given(bits=st.sampled_from(sorted(kernels.SPECIALISED_PAIRS)), m=SIZES, n=SIZES, k=K_VALUES,
       seed=SEEDS)
def test_specialised_and_generic_kernels_agree(bits, m, n, k, seed):
    abits, wbits = bits
    rng = np.random.default_rng(seed)
    a_planes = bit_planes(rng.integers(0, 2**abits, (m, k)), abits)
    w_planes = bit_planes(rng.integers(0, 2**wbits, (4 * n, k)), wbits)
    outs = []
    for kernel in (bitserial._bitserial_kernel(abits, wbits), bitserial._make_bitserial_kernel(0, 0)):
        out = np.zeros((m, 4 * n), np.int64)
        kernel(a_planes, w_planes, 0, 4 * n, out)
        outs.append(out)
    wt = kernels.transposed_planes(w_planes)
    for kernel in (bitserial._bitserial_kernel(abits, wbits, "vector"), bitserial._make_vector_kernel(0, 0, False)):
        out = np.zeros((m, 4 * n), np.int64)
        kernel(a_planes, wt, 0, 0, *_NO_THRESHOLDS, 1, out)
        outs.append(out)
    for other, name in zip(outs[1:], ("scalar generic", "vector specialised", "vector generic")):
        assert_equal(other, outs[0], f"{name} vs scalar specialised {bits}, M={m} N={4 * n} K={k}")


@functools.cache
def _popcount_tile_call(abits: int, wbits: int):
    """popcount_tile compiled for one plane-count pair, once (a fresh wrapper per example would
    recompile it a hundred times)."""
    return numba.njit(lambda a_p, w_t, r0, out: popcount_tile(a_p, w_t, 0, 0, r0, 0, out, abits, wbits))


@settings(max_examples=100)
@given(abits=st.integers(1, 3), wbits=st.integers(1, 3), m=st.integers(1, 9), k=K_VALUES,
       m0=st.integers(0, 8), seed=SEEDS)
def test_popcount_tile_compiled_and_plain_agree_with_numpy(abits, wbits, m, k, m0, seed):
    """One register tile: the compiled intrinsic and its plain-Python reading against NumPy,
    rows past the end repeating the last row."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**abits, (m, k))
    w = rng.integers(0, 2**wbits, (TILE_COLS, k))
    a_planes, wt = bit_planes(a, abits), kernels.transposed_planes(bit_planes(w, wbits))
    m0 = min(m0, m - 1)
    rows = np.minimum(np.arange(m0, m0 + TILE_ROWS), m - 1)
    expected = (a[rows] @ w.T).astype(np.uint64)
    for name, run in (("compiled", _popcount_tile_call(abits, wbits)), ("plain", lambda *args: _popcount_tile_python(
            *args[:2], 0, 0, args[2], 0, args[3], abits, wbits))):
        tile = np.zeros((TILE_ROWS, TILE_COLS), np.uint64)
        run(a_planes, wt, m0, tile)
        assert_equal(tile, expected, f"{name} popcount_tile W{wbits}A{abits} M={m} K={k} m0={m0}")


def test_extreme_codes_and_weight_column_blocks(monkeypatch):
    """All-max codes at K = 4097 (largest sums), with column blocks forced small."""
    monkeypatch.setattr(bitserial, "_W_BLOCK_BYTES", 1)
    for abits, wbits in [(8, 8), (1, 1), (2, 2), (3, 5)]:
        a = np.full((3, 4097), 2**abits - 1)
        w = np.full((11, 4097), 2**wbits - 1)
        got = bitserial_gemm(bit_planes(a, abits), bit_planes(w, wbits))
        assert_equal(got, a @ w.T, f"W{wbits}A{abits} all-max codes, K=4097")


@settings(max_examples=400)
@given(abits=st.integers(1, 8), wbits=st.integers(1, 8), m=SIZES, n=SIZES, k=K_VALUES, seed=SEEDS)
def test_odd_weight_gemm_equals_signed_matmul(abits, wbits, m, n, k, seed):
    """Weights w = 2j - (2^wbits - 1): odd levels, {-1, +1} at one bit."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**abits, (m, k))
    j = rng.integers(0, 2**wbits, (n, k))
    expected = a @ (2 * j - (2**wbits - 1)).T
    a_planes, w_planes = bit_planes(a, abits), bit_planes(j, wbits)
    context = f"W{wbits}A{abits} M={m} N={n} K={k} seed={seed}"
    assert_equal(odd_weight_gemm(a_planes, w_planes), expected, context)
    assert_equal(odd_weight_gemm(a_planes, w_planes, a.sum(axis=1)), expected, context + " rowsum")


@settings(max_examples=200)
@given(abits=st.integers(1, 8), wbits=st.integers(1, 8), scale=st.integers(1, 3),
       offset=st.integers(-5, 300), m=SIZES, n=SIZES, k=K_VALUES, seed=SEEDS)
def test_affine_weight_gemm(abits, wbits, scale, offset, m, n, k, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**abits, (m, k))
    j = rng.integers(0, 2**wbits, (n, k))
    got = affine_weight_gemm(bit_planes(a, abits), bit_planes(j, wbits), scale, offset)
    assert_equal(got, a @ (scale * j - offset).T,
                 f"w = {scale}j - {offset}, W{wbits}A{abits} M={m} N={n} K={k}")


@settings(max_examples=200)
@given(bits=st.integers(1, 8), m=SIZES, k=K_VALUES, seed=SEEDS)
def test_plane_row_sums(bits, m, k, seed):
    codes = np.random.default_rng(seed).integers(0, 2**bits, (m, k))
    assert_equal(plane_row_sums(bit_planes(codes, bits)), codes.sum(axis=1),
                 f"bits={bits} M={m} K={k}")


@settings(max_examples=300)
@given(m=SIZES, n=SIZES, k=st.integers(1, 300), wmax=st.sampled_from([1, 255, 2**15 - 1, 2**31 - 1]),
       amax=st.sampled_from([1, 255]), seed=SEEDS)
def test_int_gemm_is_exact(m, n, k, wmax, amax, seed):
    """Covers the float32, float64 and int64 paths (chosen by the magnitude bound)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, amax + 1, (m, k)).astype(np.uint8)
    w = rng.integers(-wmax, wmax + 1, (n, k)).astype(np.int32)
    # Put the extremes in so the bound is reached, not just approached.
    a[0, 0], w[0, 0] = amax, -wmax
    got = int_gemm(a, w)
    assert got.dtype == np.int64
    assert_equal(got, a.astype(np.int64) @ w.astype(np.int64).T,
                 f"M={m} N={n} K={k} |a|<={amax} |w|<={wmax}")


def test_int_gemm_float32_boundary_is_exact():
    """Sum exactly 2^24 + 1 would round in float32; the bound must route it to float64."""
    a = np.full((1, 259), 255, np.uint8)
    w = np.full((1, 259), 255, np.int16)
    assert int_gemm(a, w)[0, 0] == 259 * 255 * 255


@settings(max_examples=200)
@given(m=st.integers(1, 20), n=st.integers(1, 40), k=st.integers(1, 300), amax=st.sampled_from([1, 15, 255]),
       seed=SEEDS)
def test_int8_gemm_equals_int64_matmul(m, n, k, amax, seed):
    """u8 codes x s8 weights with the extremes present (255 * -128 products)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, amax + 1, (m, k)).astype(np.uint8)
    w = rng.integers(-128, 128, (n, k))
    a[0, 0], w[0, 0] = amax, -128
    padded = np.zeros((m, k + -k % 4), np.uint8)
    padded[:, :k] = a
    got = kernels.int8_gemm(padded, kernels.int8_weights(w), n)
    assert_equal(got, a.astype(np.int64) @ w.T, f"int8 M={m} N={n} K={k} |a|<={amax} seed={seed}")


@functools.cache
def _int8_tile_call():
    """int8_tile compiled once for the tests below (not once per example)."""
    return numba.njit(lambda x, y, r0, out: int8dot.int8_tile(x, y, r0, 0, out, 1))


@settings(max_examples=100)
@given(m=st.integers(1, 11), k=st.integers(1, 40), m0=st.integers(0, 10), seed=SEEDS)
def test_int8_tile_compiled_and_plain_agree_with_numpy(m, k, m0, seed):
    rng = np.random.default_rng(seed)
    a = np.zeros((m, k + -k % 4), np.uint8)
    a[:, :k] = rng.integers(0, 256, (m, k))
    w = rng.integers(-128, 128, (int8dot.TILE_COLS, k))
    wt = kernels.int8_weights(w)
    m0 = min(m0, m - 1)
    rows = np.minimum(np.arange(m0, m0 + int8dot.TILE_ROWS), m - 1)
    expected = (a[rows, :k].astype(np.int64) @ w.T).astype(np.int32)
    for name, run in (("compiled", _int8_tile_call()), ("plain", int8dot._int8_tile_python)):
        tile = np.zeros((int8dot.TILE_ROWS, int8dot.TILE_COLS), np.int32)
        if name == "plain":
            run(a, wt, m0, 0, tile)
        else:
            run(a, wt, m0, tile)
        assert_equal(tile, expected, f"{name} int8_tile M={m} K={k} m0={m0}")


@st.composite
def threshold_cases(draw):
    """Thresholds (O, n) with directions +-1 around a layer's accumulator range, n up to 20
    (more than 16 takes the bisection branch)."""
    rng = np.random.default_rng(draw(SEEDS))
    channels, n = draw(st.integers(1, 40)), draw(st.sampled_from([1, 3, 7, 15, 16, 17, 20]))
    th = np.sort(rng.integers(-3000, 3000, (channels, n)), axis=1)
    direction = rng.choice(np.array([-1, 1], np.int8), channels)
    th[direction < 0] = th[direction < 0, ::-1]  # non-increasing for d = -1
    return th.astype(np.int64), direction


@settings(max_examples=100)
@given(abits=st.integers(1, 4), wbits=st.integers(1, 4), images=st.integers(1, 3), pixels=st.integers(1, 7),
       k=K_VALUES, case=threshold_cases(), seed=SEEDS)
def test_bitserial_threshold_codes_equal_gemm_then_thresholds(abits, wbits, images, pixels, k, case, seed):
    th, direction = case
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**abits, (images * pixels, k))
    j = rng.integers(0, 2**wbits, (th.shape[0], k))
    n_w = 2**wbits - 1
    acc = (a @ (2 * j - n_w).T).reshape(images, pixels, -1).transpose(0, 2, 1)
    got = kernels.bitserial_threshold_codes(bit_planes(a, abits), kernels.transposed_planes(bit_planes(j, wbits)),
                                            th, direction, images, 2, n_w)
    assert_equal(got, apply_thresholds(acc, th, direction, 1),
                 f"fused W{wbits}A{abits} images={images} P={pixels} O={th.shape[0]} K={k} n={th.shape[1]}")


@settings(max_examples=100)
@given(images=st.integers(1, 3), pixels=st.integers(1, 7), k=st.integers(1, 80), case=threshold_cases(),
       offset=st.sampled_from([0, -1, 5]), seed=SEEDS)
def test_int8_threshold_codes_equal_gemm_then_thresholds(images, pixels, k, case, offset, seed):
    th, direction = case
    rng = np.random.default_rng(seed)
    a = np.zeros((images * pixels, k + -k % 4), np.uint8)
    a[:, :k] = rng.integers(0, 16, (images * pixels, k))
    w = rng.integers(-128, 128, (th.shape[0], k))
    acc = 2 * (a[:, :k].astype(np.int64) @ w.T) - offset * a.sum(axis=1, dtype=np.int64)[:, None]
    acc = acc.reshape(images, pixels, -1).transpose(0, 2, 1)
    got = kernels.int8_threshold_codes(a, kernels.int8_weights(w), th, direction, images, 2, offset)
    assert_equal(got, apply_thresholds(acc, th, direction, 1),
                 f"fused int8 images={images} P={pixels} O={th.shape[0]} K={k} n={th.shape[1]} offset={offset}")


def conv_patches_reference(x, kh, kw, stride, padding):
    """Nested-loop im2col: row (n, oh, ow), column (c, i, j), zero outside the image."""
    n_img, c_in, h, w = x.shape
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    out = np.zeros((n_img * oh * ow, c_in * kh * kw), dtype=x.dtype)
    for n in range(n_img):
        for y in range(oh):
            for z in range(ow):
                for c in range(c_in):
                    for i in range(kh):
                        for j in range(kw):
                            hy, wz = y * stride - padding + i, z * stride - padding + j
                            if 0 <= hy < h and 0 <= wz < w:
                                out[(n * oh + y) * ow + z, (c * kh + i) * kw + j] = x[n, c, hy, wz]
    return out


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * padding), 9))
    w = draw(st.integers(max(1, kw - 2 * padding), 9))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 5))
    bits = draw(st.integers(1, 8))
    x = np.random.default_rng(draw(SEEDS)).integers(0, 2**bits, (n, c, h, w)).astype(np.uint8)
    return x, kh, kw, stride, padding, bits


@settings(max_examples=200)
@given(case=conv_cases())
def test_im2col_codes_matches_nested_loops(case):
    x, kh, kw, stride, padding, _ = case
    context = f"x {x.shape} kernel {kh}x{kw} stride {stride} padding {padding}"
    want = conv_patches_reference(x, kh, kw, stride, padding)
    assert_equal(im2col_codes(x, kh, kw, stride, padding), want, context)
    as_float = im2col_codes(x, kh, kw, stride, padding, dtype=np.float32)
    assert as_float.dtype == np.float32
    assert_equal(as_float, want.astype(np.float32), context + " (float32)")


@settings(max_examples=200)
@given(case=conv_cases())
def test_conv_bit_planes_equals_packed_im2col(case):
    x, kh, kw, stride, padding, bits = case
    context = f"x {x.shape} kernel {kh}x{kw} stride {stride} padding {padding} bits {bits}"
    assert_equal(conv_bit_planes(x, kh, kw, stride, padding, bits),
                 bit_planes(im2col_codes(x, kh, kw, stride, padding), bits), context)


def test_conv_bit_planes_wide_input_uses_byte_path_correctly():
    """Padded width > 64 takes the byte-gather path even at stride 1 (hypothesis shapes are small)."""
    x = np.random.default_rng(7).integers(0, 8, (1, 3, 4, 70)).astype(np.uint8)
    assert_equal(conv_bit_planes(x, 3, 3, 1, 1, 3), bit_planes(im2col_codes(x, 3, 3, 1, 1), 3),
                 "x (1, 3, 4, 70) 3x3 stride 1 padding 1")


@settings(max_examples=100)
@given(case=conv_cases(), o=st.integers(1, 6), seed=SEEDS)
def test_conv_lowered_onto_odd_weight_gemm(case, o, seed):
    """A convolution = packed patches x packed weights, against a direct nested-loop conv."""
    x, kh, kw, stride, padding, abits = case
    wbits = 2
    c_in = x.shape[1]
    j = np.random.default_rng(seed).integers(0, 2**wbits, (o, c_in, kh, kw))
    weight = 2 * j - (2**wbits - 1)
    got = odd_weight_gemm(conv_bit_planes(x, kh, kw, stride, padding, abits),
                          bit_planes(j.reshape(o, -1), wbits))
    patches = conv_patches_reference(x, kh, kw, stride, padding).astype(np.int64)
    expected = np.einsum("rk,ok->ro", patches, weight.reshape(o, -1))
    assert_equal(got, expected, f"x {x.shape} weight {weight.shape} s={stride} p={padding}")


def max_pool_reference(x, kernel, stride, padding):
    n_img, c_in, h, w = x.shape
    oh = (h + 2 * padding - kernel) // stride + 1
    ow = (w + 2 * padding - kernel) // stride + 1
    out = np.zeros((n_img, c_in, oh, ow), dtype=x.dtype)
    for n in range(n_img):
        for c in range(c_in):
            for y in range(oh):
                for z in range(ow):
                    best = -np.inf  # the float model's padding
                    for i in range(kernel):
                        for j in range(kernel):
                            hy, wz = y * stride - padding + i, z * stride - padding + j
                            if 0 <= hy < h and 0 <= wz < w:
                                best = max(best, x[n, c, hy, wz])
                    out[n, c, y, z] = best
    return out


@settings(max_examples=200)
@given(kernel=st.integers(1, 4), stride=st.integers(1, 3), data=st.data(), seed=SEEDS,
       dtype=st.sampled_from([np.uint8, np.int32]))
def test_max_pool_codes_matches_minus_inf_padding_reference(kernel, stride, data, seed, dtype):
    padding = data.draw(st.integers(0, kernel // 2))
    h = data.draw(st.integers(max(1, kernel - 2 * padding), 9))
    w = data.draw(st.integers(max(1, kernel - 2 * padding), 9))
    x = np.random.default_rng(seed).integers(0, 16, (2, 3, h, w)).astype(dtype)
    got = max_pool_codes(x, kernel, stride, padding)
    assert got.dtype == x.dtype
    assert_equal(got, max_pool_reference(x, kernel, stride, padding),
                 f"x {x.shape} kernel {kernel} stride {stride} padding {padding}")


def test_max_pool_default_stride_is_kernel():
    x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    assert_equal(max_pool_codes(x, 2), np.array([[[[5, 7], [13, 15]]]], np.uint8), "2x2 pool")


@pytest.mark.parametrize("call, message", [
    (lambda: bitserial_gemm(np.zeros((2, 3, 1), np.uint64), np.zeros((2, 3, 2), np.uint64)),
     "disagree on the reduction length"),
    (lambda: bitserial_gemm(np.zeros((2, 3, 1), np.int64), np.zeros((2, 3, 1), np.uint64)),
     "uint64 bit-planes"),
    (lambda: bitserial_gemm(np.zeros((9, 3, 1), np.uint64), np.zeros((2, 3, 1), np.uint64)),
     "bit width"),
    (lambda: int_gemm(np.zeros((2, 3), np.uint8), np.zeros((2, 4), np.int16)), "int_gemm needs"),
    (lambda: int_gemm(np.zeros((2, 3)), np.zeros((2, 3), np.int16)), "integer arrays"),
    (lambda: im2col_codes(np.zeros((1, 1, 2, 2), np.uint8), 3, 3), "does not fit"),
    (lambda: im2col_codes(np.zeros((1, 2, 2), np.uint8), 1, 1), "4-D"),
    (lambda: im2col_codes(np.zeros((1, 1, 2, 2), np.uint8), 1, 1, stride=0), "stride"),
    (lambda: conv_bit_planes(np.full((1, 1, 2, 2), 4, np.uint8), 1, 1, 1, 0, 2), "\\[0, 3\\]"),
    (lambda: max_pool_codes(np.zeros((1, 1, 4, 4), np.uint8), 2, 2, 2), "exceeds kernel // 2"),
    (lambda: max_pool_codes(np.full((1, 1, 4, 4), -1), 2), "non-negative"),
    (lambda: affine_weight_gemm(bit_planes(np.ones((2, 3), np.uint8), 1),
                                bit_planes(np.ones((2, 3), np.uint8), 1),
                                2, 1, np.ones(3)), "a_row_sums"),
])
def test_kernels_reject_bad_input(call, message):
    with pytest.raises(EngineError, match=message):
        call()


def test_empty_shapes():
    assert bitserial_gemm(bit_planes(np.zeros((0, 5), np.uint8), 2),
                          bit_planes(np.zeros((3, 5), np.uint8), 2)).shape == (0, 3)
    assert int_gemm(np.zeros((0, 5), np.uint8), np.zeros((3, 5), np.int16)).shape == (0, 3)


@settings(max_examples=200)
@given(case=conv_cases(), full=st.booleans())
def test_patch_sums_equal_im2col_row_sums(case, full):
    """Each conv patch's code sum at its top-left padded pixel (the int8 conv's `- offset * rowsum`
    term), against the sums of im2col's rows; codes at the top of their range when `full` (the
    largest sums)."""
    x, kh, kw, stride, padding, bits = case
    if full:
        x = np.full_like(x, 255)
    n, c, h, w = x.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    oh, ow = kernels.conv_output_size(h, kh, stride, padding), kernels.conv_output_size(w, kw, stride, padding)
    flat = np.zeros(n * hp * wp * c + 8, np.uint8)
    flat[:n * hp * wp * c] = np.pad(x, ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2)).transpose(0, 2, 3, 1).ravel()
    got = kernels.patch_sums(flat, n, kh, kw, c, hp, wp, stride, oh, ow).reshape(n, hp, wp)
    want = im2col_codes(x, kh, kw, stride, padding).astype(np.int64).sum(axis=1).reshape(n, oh, ow)
    assert_equal(got[:, :oh * stride:stride, :ow * stride:stride], want,
                 f"x {x.shape} kernel {kh}x{kw} stride {stride} padding {padding}")


@settings(max_examples=100)
@given(kh=st.integers(1, 3), run=st.integers(1, 6), pair=st.sampled_from(sorted(kernels.SPECIALISED_PAIRS)),
       seed=SEEDS)
def test_popcount_conv_tile_compiled_and_plain_agree_with_numpy(kh, run, pair, seed):
    """`popcount_conv_tile` (patch words read in place from channel-packed planes), compiled and
    plain, against NumPy popcounts of the same words; all-ones words in the first patch (the
    largest counts)."""
    from integer_engine.kernels.popcount import _popcount_conv_tile_python, popcount_conv_tile
    abits, wbits = pair
    rng = np.random.default_rng(seed)
    row_words = run + int(rng.integers(0, 5))
    plane_words = 4 * kh * row_words + 16
    src = rng.integers(0, 2**63, abits * plane_words, dtype=np.uint64) * np.uint64(2) + rng.integers(
        0, 2, abits * plane_words, dtype=np.uint64)
    offsets = kernels.conv_word_offsets(kh, run, row_words)
    starts = np.sort(rng.integers(0, plane_words - offsets[-1], TILE_ROWS)).astype(np.int64)
    starts[0] = 0
    src[offsets] = np.uint64(2**64 - 1)
    wt = rng.integers(0, 2**63, (wbits, kh * run, 2 * TILE_COLS), dtype=np.uint64)
    wt[:, 0, :] = np.uint64(2**64 - 1)
    n0 = TILE_COLS
    words = np.stack([src[i * plane_words + starts[:, None] + offsets[None, :]] for i in range(abits)])
    want = np.zeros((TILE_ROWS, TILE_COLS), np.int64)
    for i in range(abits):
        for j in range(wbits):
            both = words[i][:, None, :] & wt[j][None, :, n0:n0 + TILE_COLS].transpose(0, 2, 1)
            want += np.bitwise_count(both).sum(axis=2).astype(np.int64) << (i + j)
    runs = {"plain": lambda t: _popcount_conv_tile_python(src, starts, offsets, plane_words, wt, n0, t, abits, wbits)}
    if not numba.config.DISABLE_JIT:
        call = _compiled_popcount_conv_tile(abits, wbits)
        runs["compiled"] = lambda t: call(src, starts, offsets, plane_words, wt, n0, t)
    for name, run_tile in runs.items():
        tile = np.zeros((TILE_ROWS, 2 * TILE_COLS), np.uint64)
        run_tile(tile)
        assert_equal(tile[:, n0:].astype(np.int64), want, f"{name} popcount_conv_tile W{wbits}A{abits}, "
                     f"{kh} kernel rows of {run} words, seed {seed}")
        assert not tile[:, :n0].any(), f"{name} popcount_conv_tile wrote outside its tile"


_POPCOUNT_CONV_TILES: dict = {}


def _compiled_popcount_conv_tile(abits, wbits):
    """A jitted call of `popcount.popcount_conv_tile` with the bit counts as compile-time constants."""
    from integer_engine.kernels.popcount import popcount_conv_tile
    if (abits, wbits) not in _POPCOUNT_CONV_TILES:
        _POPCOUNT_CONV_TILES[abits, wbits] = numba.njit(
            lambda src, starts, offsets, plane_words, wt, n0, tile: popcount_conv_tile(
                src, starts, offsets, plane_words, wt, n0, tile, abits, wbits))
    return _POPCOUNT_CONV_TILES[abits, wbits]


def _conv_tile_case(k_row, kh, vecs, seed, code_dtype, w_min, w_max):
    """The operands of a conv tile test: codes xp (1-D, code_dtype, the first group at 255),
    patch-row starts, group offsets, integer weights w (16 * vecs + 16, K) in [w_min, w_max] with
    w_min in the first group (the largest products), the first column n0, the patches (int64)."""
    rng = np.random.default_rng(seed)
    groups = -(-k_row // 4)
    row_stride = 4 * groups + int(rng.integers(0, 9))
    xp = rng.integers(0, 256, 8 * kh * row_stride + 64).astype(code_dtype)
    xp[:4] = 255
    starts = np.sort(rng.integers(0, 8 * kh * row_stride - (kh - 1) * row_stride - 4 * groups + 1,
                                  max(8, int8dot.TILE_ROWS))).astype(np.int64)  # rows up to row0 + rows
    starts[0] = 0
    offsets = kernels.int8_conv_offsets(kh, groups, row_stride)
    w = rng.integers(w_min, w_max + 1, (16 * vecs + 16, kh * 4 * groups))
    w[:, :4] = w_min
    n0 = 16 if vecs != int8dot.TILE_COLS // 16 else 0
    patches = np.stack([np.concatenate([xp[s + o:s + o + 4] for o in offsets]) for s in starts]).astype(np.int64)
    return xp, starts, offsets, w, n0, patches


def _check_conv_tile(kind, plain, compiled, operands, n_pad, shape, want, detail):
    """A conv tile, compiled (unless NUMBA_DISABLE_JIT) and plain, writes exactly `want` into its
    rows row0.. and columns n0.. of a zeroed (rows, n_pad) int32 tile and nothing elsewhere."""
    row0, rows, vecs = shape
    n0, cols = operands[-1], 16 * vecs
    for name in ("compiled", "plain"):
        tile = np.zeros((len(operands[1]), n_pad), np.int32)
        if name == "plain":
            plain(*operands, tile, 0, row0, rows, vecs)
        elif numba.config.DISABLE_JIT:
            continue
        else:
            compiled(*operands, tile)
        assert_equal(tile[row0:row0 + rows, n0:n0 + cols], want.astype(np.int32),
                     f"{name} {kind} rows {row0}..{row0 + rows - 1} x {cols} columns, {detail}")
        untouched = np.ones(tile.shape, bool)
        untouched[row0:row0 + rows, n0:n0 + cols] = False
        assert not tile[untouched].any(), f"{name} {kind} wrote outside its tile"


_CONV_TILES: dict = {}


def _compiled_conv_tile(row0, rows, vecs):
    """A jitted call of `int8dot.int8_conv_tile` with row0, rows and vecs as compile-time constants
    (closure variables, as in the conv kernel), on any 8-bit codes."""
    split = int(int8dot.pairs_saturate(255, 128))  # the AVX2 sequence's exact form for 8-bit codes
    if (row0, rows, vecs) not in _CONV_TILES:
        _CONV_TILES[row0, rows, vecs] = numba.njit(
            lambda xp, starts, offsets, wt, n0, tile: int8dot.int8_conv_tile(xp, starts, offsets, wt, n0, tile, split,
                                                                             row0, rows, vecs))
    return _CONV_TILES[row0, rows, vecs]


@settings(max_examples=100)
@given(k_row=st.integers(1, 24), kh=st.integers(1, 3), shape=st.sampled_from(
    [(0, int8dot.TILE_ROWS, int8dot.TILE_COLS // 16), (0, 1, 1), (0, 1, 3), (0, 4, 3), (4, 4, 3),
     (0, int8dot.TILE_ROWS, 1)]), seed=SEEDS)
def test_int8_conv_tile_compiled_and_plain_agree_with_numpy(k_row, kh, shape, seed):
    """`int8_conv_tile` in every shape the conv kernel calls (rows from row0, 16 * vecs columns,
    the last column tile possibly 16 or 48 wide), compiled and plain, against NumPy on the same
    bytes; codes 255 and weights -128 in the first group (the largest products)."""
    row0, rows, vecs = shape
    xp, starts, offsets, w, n0, patches = _conv_tile_case(k_row, kh, vecs, seed, np.uint8, -128, 127)
    cols = 16 * vecs
    wt = kernels.int8_weights(w, 16)
    want = patches[row0:row0 + rows] @ w[n0:n0 + cols].T
    compiled = None if numba.config.DISABLE_JIT else _compiled_conv_tile(row0, rows, vecs)
    _check_conv_tile("int8_conv_tile", int8dot._int8_conv_tile_python, compiled, (xp, starts, offsets, wt, n0),
                     wt.shape[1], shape, want, f"{kh} kernel rows of {k_row} bytes, seed {seed}")


_FLOAT_TILES: dict = {}


def _compiled_float_tile(row0, rows, vecs):
    """A jitted call of `floatdot.float_conv_tile` with row0, rows and vecs compile-time constants."""
    if (row0, rows, vecs) not in _FLOAT_TILES:
        _FLOAT_TILES[row0, rows, vecs] = numba.njit(
            lambda xp, starts, offsets, wt, n0, tile: floatdot.float_conv_tile(xp, starts, offsets, wt, n0, tile, 0,
                                                                               row0, rows, vecs))
    return _FLOAT_TILES[row0, rows, vecs]


@settings(max_examples=100)
@given(k_row=st.integers(1, 24), kh=st.integers(1, 3), shape=st.sampled_from(
    [(0, int8dot.TILE_ROWS, int8dot.TILE_COLS // 16), (0, 1, 1), (0, 1, 3), (0, 4, 3), (4, 4, 3),
     (0, int8dot.TILE_ROWS, 1)]), seed=SEEDS)
def test_float_conv_tile_compiled_and_plain_agree_with_numpy(k_row, kh, shape, seed):
    """`float_conv_tile` in every shape the conv kernel calls, compiled and plain, against NumPy's
    int64 products of the same codes: 8-bit codes against 8-bit levels (|c| <= 255), the largest
    product (255 * -255) in the first group; exact because K * 255 * 255 < 2**24 here."""
    row0, rows, vecs = shape
    xp, starts, offsets, w, n0, patches = _conv_tile_case(k_row, kh, vecs, seed, np.float32, -255, 255)
    cols = 16 * vecs
    wt = np.ascontiguousarray(w.T.reshape(-1, 4, w.shape[0]).astype(np.float32))  # (groups, 4, Npad)
    want = patches[row0:row0 + rows] @ w[n0:n0 + cols].T
    compiled = None if numba.config.DISABLE_JIT else _compiled_float_tile(row0, rows, vecs)
    _check_conv_tile("float_conv_tile", floatdot._float_conv_tile_python, compiled, (xp, starts, offsets, wt, n0),
                     wt.shape[2], shape, want, f"{kh} kernel rows of {k_row} codes, seed {seed}")


def _conv_reference_codes(x, levels, stride, padding, th, direction, pool):
    """NumPy int64 conv (im2col @ levels.T) -> thresholds -> optional 2x2 max-pool, (N, O, P)."""
    o, _, kh, kw = levels.shape
    patches = im2col_codes(x, kh, kw, stride, padding).astype(np.int64)
    acc = (patches @ levels.reshape(o, -1).astype(np.int64).T).reshape(x.shape[0], -1, o).transpose(0, 2, 1)
    codes = apply_thresholds(acc, th, direction, 1)
    oh = kernels.conv_output_size(x.shape[2], kh, stride, padding)
    codes = codes.reshape(x.shape[0], o, oh, -1)
    return (kernels.max_pool_codes(codes, 2) if pool == 2 else codes).reshape(x.shape[0], o, -1), acc


def _thresholds_within(acc, o, n, rng):
    """Thresholds (o, n) drawn from the accumulators themselves (and one step either side), so the
    codes take every value; random directions."""
    values = np.concatenate([acc.ravel(), acc.ravel() + 1, acc.ravel() - 1])
    th = np.sort(rng.choice(values, (o, n)), axis=1).astype(np.int64)
    direction = rng.choice(np.array([-1, 1], np.int8), o)
    th[direction < 0] = th[direction < 0, ::-1]
    return th, direction


@settings(max_examples=100)
@given(case=st.data(), o=st.integers(1, 40), n=st.sampled_from([1, 3, 15, 17]), wmax=st.sampled_from([1, 127, 255]),
       seed=SEEDS)
def test_float32_conv_equals_int64_reference(case, o, n, wmax, seed):
    """The fused conv on the float32 tile (`float_conv_weights`) == NumPy int64 conv + thresholds
    (+ 2x2 max-pool), for 8-bit codes (255 included) against levels up to 255 in magnitude, any
    output layout, and read back from its own "nhwc" layout by another float32 conv."""
    x, kh, kw, stride, padding, _ = case.draw(conv_cases())
    x[..., :1, :1] = 255  # the largest code, in every image and channel
    rng = np.random.default_rng(seed)
    levels = rng.integers(-wmax, wmax + 1, (o, x.shape[1], kh, kw))
    levels[:, :, 0, 0] = -wmax
    pool, to = _laid_out_cases(case.draw, x, kh, kw, stride, padding)
    want, acc = _conv_reference_codes(x, levels, stride, padding, np.zeros((o, 1), np.int64), np.ones(o, np.int8),
                                      pool)
    th, direction = _thresholds_within(acc, o, n, rng)
    want, _ = _conv_reference_codes(x, levels, stride, padding, th, direction, pool)
    if to is not None and to[0] == "planes" and n >= 2**to[2]:
        to = None
    wf = kernels.float_conv_weights(levels)
    got = kernels.int8_conv_threshold_codes(x, kh, kw, stride, padding, wf, th, direction, pool=pool, to=to,
                                            w_abs_max=wmax)
    context = f"float32 conv x {x.shape} {kh}x{kw} s={stride} p={padding} O={o} |w|<={wmax} pool={pool} to={to}"
    assert_equal(_as_nchw(got, x.shape[0], o), want, context)
    if isinstance(got, kernels.LaidOut) and got.kind == "nhwc":  # read back by a float32 conv
        k2 = min(2, *got.shape[2:]) if got.padding == 0 else 2
        w2 = np.random.default_rng(seed + 1).integers(-255, 256, (3, o, k2, k2))
        th2, d2 = np.array([[-5000, 0, 5000]] * 3, np.int64), np.ones(3, np.int8)
        assert_equal(kernels.int8_conv_threshold_codes(got, k2, k2, 1, got.padding, kernels.float_conv_weights(w2),
                                                       th2, d2),
                     _conv_reference_codes(got.codes(), w2, 1, got.padding, th2, d2, 1)[0], context + ", read back")


@pytest.mark.parametrize("kh, channels, a_max, w_max", [
    (1, 258, 255, 255),   # 258 * 255 * 255 = 16,776,450: the largest K the rule admits for 8-bit x 8-bit
    (3, 28, 255, 255),    # 3x3 kernels: 252 * 255 * 255
    (1, 2, 2**12, 2**11),  # products of 2**23: two of them reach 2**24 exactly
])
def test_float32_conv_at_the_largest_bound_the_rule_admits(kh, channels, a_max, w_max):
    """At K * a_max * w_max <= 2**24 (the rule's edge) with every code at a_max and every weight at
    +-w_max, the float32 conv is exact: the accumulators (up to 2**24 in magnitude) land exactly
    on thresholds set at acc and acc + 1; one more channel and the same call is refused."""
    k = kh * kh * channels
    assert kernels.float32_exact(k * a_max * w_max) and not kernels.float32_exact((k + kh * kh) * a_max * w_max)
    xp = np.full((1, channels, kh + 1, kh), a_max, np.int64)  # two output pixels, one of them all-max
    xp[0, :, -1] = a_max - 1
    levels = np.full((3, channels, kh, kh), w_max, np.int64)
    levels[1] = -w_max
    levels[2, ::2] = -w_max  # mixed signs: partial sums up and down
    want_acc = (im2col_codes(xp, kh, kh).astype(np.int64) @ levels.reshape(3, -1).T).T  # (O, P)
    assert abs(want_acc).max() <= 2**24
    th = np.stack([want_acc[:, 0], want_acc[:, 0] + 1], axis=1)
    x = xp.astype(np.uint8) if a_max <= 255 else None
    wf = kernels.float_conv_weights(levels)
    if x is None:  # codes beyond a byte: the tile itself, on the float32 codes
        flat = np.zeros(xp.size + 8, np.float32)
        flat[:xp.size] = xp.transpose(0, 2, 3, 1).ravel()
        offsets = kernels.int8_conv_offsets(kh, -(-kh * channels // 4), kh * channels)
        tile = np.zeros((1, wf.shape[2]), np.int32)
        floatdot.float_conv_tile(flat, np.zeros(1, np.int64), offsets, wf, 0, tile, 0, 0, 1, 1) \
            if numba.config.DISABLE_JIT else _compiled_float_tile(0, 1, 1)(flat, np.zeros(1, np.int64), offsets, wf,
                                                                           0, tile)
        assert_equal(tile[0, :3].astype(np.int64), want_acc[:, 0], f"float32 tile at K={k}, |a|<={a_max}, "
                                                                   f"|w|<={w_max}")
        return
    got = kernels.int8_conv_threshold_codes(x, kh, kh, 1, 0, wf, th, np.ones(3, np.int8), a_max=a_max,
                                            w_abs_max=w_max)
    want = apply_thresholds(want_acc[None], th, np.ones(3, np.int8), 1)  # (1, O, P)
    assert_equal(got, want, f"float32 conv at K={k}, codes {a_max}, weights +-{w_max}")
    assert got[0, :, 0].tolist() == [1, 1, 1]  # on the first threshold, short of the second
    wider = np.full((1, channels + 1, kh, kh), a_max, np.uint8)
    with pytest.raises(EngineError, match="float32 rounds"):
        kernels.int8_conv_threshold_codes(wider, kh, kh, 1, 0, kernels.float_conv_weights(
            np.full((3, channels + 1, kh, kh), w_max)), th, np.ones(3, np.int8), a_max=a_max, w_abs_max=w_max)


def test_float32_rule_is_the_float32_significand():
    """FLOAT32_EXACT is where float32 stops holding integers: 2**24 is exact, 2**24 + 1 rounds, and
    a sum of two exact products that reaches 2**24 + 1 already rounds (so the rule cannot be looser)."""
    assert kernels.FLOAT32_EXACT == 2**24
    assert int(np.float32(2**24)) == 2**24 and int(np.float32(2**24 + 1)) != 2**24 + 1
    assert np.float32(2**24) + np.float32(1) == np.float32(2**24)
    assert kernels.float32_exact(2**24) and not kernels.float32_exact(2**24 + 1)


@pytest.mark.parametrize("lowering, a_max, w_abs_max, bound, expected", [
    ("vpmaddubsw", 255, 128, 75 * 255 * 255, True),   # 8-bit pixels x 8-bit weights: split -> float32
    ("vpmaddubsw", 255, 128, 2**24, True),
    ("vpmaddubsw", 255, 128, 2**24 + 1, False),       # not exact in float32: int8 (split) stays
    ("vpmaddubsw", 15, 15, 1000, False),              # no split needed: the int8 tile is as fast
    ("vpmaddubsw", 127, 128, 1000, False),
    ("vpdpbusd", 255, 128, 1000, False),              # VNNI keeps its kernels
    ("generic", 255, 128, 1000, False),
])
def test_float32_conv_rule_per_cpu_family(monkeypatch, lowering, a_max, w_abs_max, bound, expected):
    monkeypatch.setattr(int8dot, "LOWERING", lowering)
    assert select.float32_conv(a_max, w_abs_max, bound) is expected


@settings(max_examples=100)
@given(case=st.data(), o=st.integers(1, 20), offset=st.sampled_from([0, -1, 7]), seed=SEEDS)
def test_int8_conv_threshold_codes_equal_im2col_path(case, o, offset, seed):
    """The im2col-inside int8 kernel against im2col + the int8 GEMM + thresholds."""
    x, kh, kw, stride, padding, _ = case.draw(conv_cases())
    th, direction = case.draw(threshold_cases())
    th, direction = th[:1].repeat(o, axis=0), direction[:1].repeat(o)
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (o, x.shape[1] * kh * kw))
    wt = kernels.int8_conv_weights(w.reshape(o, x.shape[1], kh, kw))
    patches = im2col_codes(x, kh, kw, stride, padding)
    acc = 2 * (patches.astype(np.int64) @ w.T) - offset * patches.sum(axis=1, dtype=np.int64)[:, None]
    acc = acc.reshape(x.shape[0], -1, o).transpose(0, 2, 1)
    got = kernels.int8_conv_threshold_codes(x, kh, kw, stride, padding, wt, th, direction, 2, offset)
    assert_equal(got, apply_thresholds(acc, th, direction, 1),
                 f"int8 conv x {x.shape} {kh}x{kw} s={stride} p={padding} O={o} n={th.shape[1]} offset={offset}")


@pytest.mark.parametrize("features, x86_64, expected", [
    ({"popcnt", "avx2", "avx512f", "avx512vpopcntdq", "avx512vnni"}, True, "vpopcntq"),  # Zen 4/5
    ({"popcnt", "avx2"}, True, "popcnt"),  # Zen 1: scalar POPCNT as inline assembly
    ({"avx512vpopcntdq"}, True, "ctpop"),  # VPOPCNTDQ without AVX-512F (or POPCNT): generic
    (set(), True, "ctpop"),
    ({"popcnt"}, False, "ctpop"),  # not x86-64: never the x86 inline assembly
])
def test_popcount_choice_follows_cpu_features(features, x86_64, expected):
    from integer_engine.cpu import CPU
    chosen = CPU("test", frozenset(features), x86_64, 2).popcount
    assert chosen == expected, f"features {sorted(features)} (x86-64: {x86_64}): expected {expected}, got {chosen}"


def test_cpu_description_names_the_kernels():
    from integer_engine import cpu
    text = cpu.describe()
    assert cpu.detect().name in text and f"popcount kernel: {cpu.detect().popcount}" in text, text


@settings(max_examples=200)
@given(case=conv_cases(), wide=st.booleans())
def test_conv_channel_planes_equals_packed_channel_major_im2col(case, wide):
    """Reduction order (i, j, channel), channels padded to whole words; `wide` draws over 64
    channels (two words per pixel)."""
    x, kh, kw, stride, padding, bits = case
    if wide:
        x = np.random.default_rng(x.size).integers(0, 2**bits, (x.shape[0], 70, *x.shape[2:])).astype(np.uint8)
    n, c = x.shape[:2]
    patches = im2col_codes(x, kh, kw, stride, padding).reshape(-1, c, kh, kw).transpose(0, 2, 3, 1)
    channel_major = np.zeros((patches.shape[0], kh, kw, 64 * -(-c // 64)), np.uint8)
    channel_major[..., :c] = patches
    context = f"x {x.shape} kernel {kh}x{kw} stride {stride} padding {padding} bits {bits}"
    assert_equal(kernels.conv_channel_planes(x, kh, kw, stride, padding, bits),
                 bit_planes(channel_major.reshape(patches.shape[0], -1), bits), context)
    weight = np.random.default_rng(c).integers(0, 4, (3, c, kh, kw))
    assert_equal(kernels.channel_major_weights(weight) @ channel_major.reshape(patches.shape[0], -1).T.astype(np.int64),
                 weight.reshape(3, -1) @ im2col_codes(x, kh, kw, stride, padding).T.astype(np.int64),
                 context + " (weights in the same order)")


@settings(max_examples=100)
@given(case=conv_cases(), tcase=threshold_cases(), wbits=st.integers(1, 3), seed=SEEDS)
def test_bitserial_conv_threshold_codes_equal_planes_path(case, tcase, wbits, seed):
    """The gather-inside bit-serial conv kernel against conv_channel_planes + the fused GEMM."""
    x, kh, kw, stride, padding, abits = case
    th, direction = tcase
    if abits > 4:
        x, abits = x >> (abits - 4), 4
    weight = np.random.default_rng(seed).integers(0, 2**wbits, (th.shape[0], x.shape[1], kh, kw))
    wt = kernels.transposed_planes(bit_planes(kernels.channel_major_weights(weight), wbits))
    n_w = 2**wbits - 1
    want = kernels.bitserial_threshold_codes(kernels.conv_channel_planes(x, kh, kw, stride, padding, abits), wt,
                                             th, direction, x.shape[0], 2, n_w)
    got = kernels.bitserial_conv_threshold_codes(x, kh, kw, stride, padding, abits, wt, th, direction, 2, n_w)
    assert_equal(got, want, f"x {x.shape} {kh}x{kw} s={stride} p={padding} W{wbits}A{abits} O={th.shape[0]}")


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="code generation choices need the JIT")
@pytest.mark.parametrize("lowering, split, a_max", [
    ("vpdpbusd", 0, 255), ("vpmaddubsw", 1, 255), ("vpmaddubsw", 0, 127), ("vpmaddubsw", 0, 15),
    ("generic", 0, 255)])
def test_int8_tile_every_lowering_agrees_with_numpy(monkeypatch, lowering, split, a_max):
    """Each lowering of the int8 tile (VNNI, AVX2 with and without the split codes, plain vector
    code), in a freshly compiled caller, on extreme codes (a_max x -128): the AVX2 sequence without
    `split` only where `pairs_saturate` allows it (codes <= 127: 2 * 127 * 128 <= 32767)."""
    from integer_engine.cpu import detect
    if lowering == "vpdpbusd" and not int8dot.VNNI or lowering == "vpmaddubsw" and not detect().has("avx2"):
        pytest.skip(f"this CPU cannot run the {lowering} lowering")
    monkeypatch.setattr(int8dot, "LOWERING", lowering)
    assert int8dot.pairs_saturate(a_max, 128) == (lowering == "vpmaddubsw" and a_max > 127)
    assert split or not int8dot.pairs_saturate(a_max, 128)
    rng = np.random.default_rng(5)
    a = rng.integers(0, a_max + 1, (11, 200)).astype(np.uint8)
    a[:, :8] = a_max
    w = rng.integers(-128, 128, (int8dot.TILE_COLS, 200))
    w[:, :8] = -128
    w[:3, 8:16] = 127
    if split:
        call = numba.njit(lambda x, y, out: int8dot.int8_tile(x, y, 3, 0, out, 1))
    else:
        call = numba.njit(lambda x, y, out: int8dot.int8_tile(x, y, 3, 0, out, 0))
    tile = np.zeros((int8dot.TILE_ROWS, int8dot.TILE_COLS), np.int32)
    call(a, kernels.int8_weights(w), tile)
    rows = np.minimum(np.arange(3, 3 + int8dot.TILE_ROWS), 10)
    assert_equal(tile, (a[rows].astype(np.int64) @ w.T).astype(np.int32),
                 f"int8_tile, {lowering} lowering, split {split}, codes <= {a_max}")


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="code generation choices need the JIT")
@pytest.mark.parametrize("asm", [False, True])
def test_popcount64_both_lowerings(monkeypatch, asm):
    """Inline-asm popcnt (chosen without VPOPCNTDQ) and LLVM's ctpop, each freshly compiled."""
    from integer_engine.cpu import detect
    from integer_engine.kernels import popcount
    if asm and not (detect().x86_64 and detect().has("popcnt")):
        pytest.skip("no x86 POPCNT on this CPU")
    monkeypatch.setattr(popcount, "SCALAR_POPCNT_ASM", asm)
    if asm:
        popcount.llvm.initialize_native_asmparser()
    values = np.array([0, 1, 2**63, 2**64 - 1, 0x0101010101010101, 12345678901234], np.uint64)
    counts = numba.njit(lambda v: [popcount64(x) for x in v])(values)
    assert [int(c) for c in counts] == [bin(int(v)).count("1") for v in values], f"asm={asm}"


@settings(max_examples=200)
@given(kernel=st.integers(1, 4), stride=st.integers(1, 4), data=st.data(), seed=SEEDS)
def test_executor_max_pool_equals_max_pool_codes(kernel, stride, data, seed):
    """The executor's separable max-pool (reshape path when kernel == stride) against the kernel."""
    from integer_engine.executor import max_pool_slices
    padding = data.draw(st.integers(0, kernel // 2))
    h = data.draw(st.integers(max(1, kernel - 2 * padding), 11))
    w = data.draw(st.integers(max(1, kernel - 2 * padding), 11))
    x = np.random.default_rng(seed).integers(0, 16, (2, 3, h, w)).astype(np.uint8)
    assert_equal(max_pool_slices(x, kernel, stride, padding), max_pool_codes(x, kernel, stride, padding),
                 f"x {x.shape} kernel {kernel} stride {stride} padding {padding}")


def _laid_out_cases(draw, x, kh, kw, stride, padding):
    """A fused conv's pool (1 or 2, when its output is at least 2x2) and output layout `to`."""
    oh = kernels.conv_output_size(x.shape[2], kh, stride, padding)
    ow = kernels.conv_output_size(x.shape[3], kw, stride, padding)
    pool = draw(st.sampled_from([1, 2])) if min(oh, ow) >= 2 else 1
    to = draw(st.sampled_from([None, ("nhwc", draw(st.integers(0, 2))),
                               ("planes", draw(st.integers(0, 2)), draw(st.integers(4, 8)))]))
    return pool, to


def _as_nchw(got, images, channels):
    return got.codes().reshape(images, channels, -1) if isinstance(got, kernels.LaidOut) else got


@settings(max_examples=100)
@given(case=st.data(), o=st.integers(1, 70), offset=st.sampled_from([0, -1, 7]), seed=SEEDS)
def test_int8_conv_pooled_and_laid_out_equals_pool_of_codes(case, o, offset, seed):
    """pool 2 = `max_pool_codes(codes, 2)`; `to` layouts hold the same codes (`LaidOut.codes`), and
    a conv reading an "nhwc" LaidOut equals one reading the NCHW codes."""
    x, kh, kw, stride, padding, _ = case.draw(conv_cases())
    th, direction = case.draw(threshold_cases())
    th, direction = np.resize(th, (o, th.shape[1])), np.resize(direction, o)
    th[direction < 0] = np.sort(th[direction < 0], axis=1)[:, ::-1]
    th[direction > 0] = np.sort(th[direction > 0], axis=1)
    th = np.clip(th, 0, 15) if case.draw(st.booleans()) else th  # codes < 16 for "planes" of 4+ bits
    pool, to = _laid_out_cases(case.draw, x, kh, kw, stride, padding)
    if to is not None and to[0] == "planes" and th.shape[1] >= 2**to[2]:
        to = None
    w = np.random.default_rng(seed).integers(-128, 128, (o, x.shape[1], kh, kw))
    wt = kernels.int8_conv_weights(w)
    plain = kernels.int8_conv_threshold_codes(x, kh, kw, stride, padding, wt, th, direction, 2, offset)
    oh = kernels.conv_output_size(x.shape[2], kh, stride, padding)
    want = plain.reshape(x.shape[0], o, oh, -1)
    if pool == 2:
        want = kernels.max_pool_codes(want, 2)
    prepared = None
    if case.draw(st.booleans()):  # int32 thresholds clipped to the accumulators' exact bound
        patches = im2col_codes(x, kh, kw, stride, padding).astype(np.int64)
        acc = 2 * (patches @ w.reshape(o, -1).T) - offset * patches.sum(axis=1)[:, None]
        bound = int(np.abs(acc).max())
        prepared = block_thresholds(th, direction, wt.shape[1], bound)
        assert prepared[1].dtype == np.int32
    got = kernels.int8_conv_threshold_codes(x, kh, kw, stride, padding, wt, th, direction, 2, offset, prepared,
                                            pool=pool, to=to)
    context = (f"int8 conv x {x.shape} {kh}x{kw} s={stride} p={padding} O={o} offset={offset} pool={pool} to={to} "
               f"int32 thresholds={prepared is not None}")
    assert_equal(_as_nchw(got, x.shape[0], o), want.reshape(x.shape[0], o, -1), context)
    if isinstance(got, kernels.LaidOut) and got.kind == "nhwc":  # read back by a conv
        k2, s2 = min(2, *got.shape[2:]) if got.padding == 0 else 2, 1
        w2 = kernels.int8_conv_weights(np.random.default_rng(seed + 1).integers(-128, 128, (3, o, k2, k2)))
        th2 = np.array([[-50, 0, 50]] * 3, np.int64)
        d2 = np.ones(3, np.int8)
        assert_equal(kernels.int8_conv_threshold_codes(got, k2, k2, s2, got.padding, w2, th2, d2),
                     kernels.int8_conv_threshold_codes(got.codes(), k2, k2, s2, got.padding, w2, th2, d2),
                     context + ", read back as nhwc")


@settings(max_examples=100)
@given(case=conv_cases(), tcase=threshold_cases(), wbits=st.integers(1, 3), seed=SEEDS, data=st.data())
def test_bitserial_conv_pooled_and_laid_out_equals_pool_of_codes(case, tcase, wbits, seed, data):
    """As the int8 test above, for the gather-inside bit-serial conv kernel; a conv reading its
    "planes" LaidOut equals one reading the NCHW codes."""
    x, kh, kw, stride, padding, abits = case
    th, direction = tcase
    if abits > 4:
        x, abits = x >> (abits - 4), 4
    pool, to = _laid_out_cases(data.draw, x, kh, kw, stride, padding)
    if to is not None and to[0] == "planes" and th.shape[1] >= 2**to[2]:
        to = ("nhwc", to[1])
    o = th.shape[0]
    weight = np.random.default_rng(seed).integers(0, 2**wbits, (o, x.shape[1], kh, kw))
    wt = kernels.transposed_planes(bit_planes(kernels.channel_major_weights(weight), wbits))
    n_w = 2**wbits - 1
    plain = kernels.bitserial_conv_threshold_codes(x, kh, kw, stride, padding, abits, wt, th, direction, 2, n_w)
    oh = kernels.conv_output_size(x.shape[2], kh, stride, padding)
    want = plain.reshape(x.shape[0], o, oh, -1)
    if pool == 2:
        want = kernels.max_pool_codes(want, 2)
    got = kernels.bitserial_conv_threshold_codes(x, kh, kw, stride, padding, abits, wt, th, direction, 2, n_w,
                                                 pool=pool, to=to)
    context = f"x {x.shape} {kh}x{kw} s={stride} p={padding} W{wbits}A{abits} O={o} pool={pool} to={to}"
    assert_equal(_as_nchw(got, x.shape[0], o), want.reshape(x.shape[0], o, -1), context)
    if isinstance(got, kernels.LaidOut) and got.kind == "planes":  # read back by a conv
        k2 = 1 if got.padding == 0 else 3
        w2 = np.random.default_rng(seed + 1).integers(0, 2, (5, o, k2, k2))
        wt2 = kernels.transposed_planes(bit_planes(kernels.channel_major_weights(w2), 1))
        th2, d2 = np.array([[-3, 0, 3]] * 5, np.int64), np.ones(5, np.int8)
        assert_equal(kernels.bitserial_conv_threshold_codes(got, k2, k2, 1, got.padding, got.bits, wt2, th2, d2, 2, 1),
                     kernels.bitserial_conv_threshold_codes(got.codes(), k2, k2, 1, got.padding, got.bits, wt2, th2,
                                                            d2, 2, 1),
                     context + ", read back as planes")
