"""Bit-planes: unsigned integer codes packed 64 per uint64 along the reduction dimension.

A code matrix `q` of shape (M, K) with values in [0, 2**bits) is written as
`q = sum_i 2**i * q_i` with binary planes `q_i`. Plane `i` of row `m` is stored as
`ceil(K / 64)` uint64 words: element `k` is bit `k % 64` (least significant first) of word
`k // 64`, and the bits past K are zero. Zero padding is what makes the popcount kernels exact
for any K: a padded position contributes `0 AND w = 0` to every dot product and 0 to row sums.

Layout of `bit_planes(q, bits)`: uint64 array (bits, M, ceil(K/64)), C-contiguous.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from integer_engine.errors import EngineError

WORD_BITS = 64
MAX_BITS = 8


def words_for(k: int) -> int:
    """Number of uint64 words holding k bits: ceil(k / 64)."""
    return (k + WORD_BITS - 1) // WORD_BITS


def check_bits(bits: int) -> int:
    """Validate a code width (1..8 bits) and return it as an int."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise EngineError(f"bit width must be an integer in 1..{MAX_BITS}, got {bits!r}")
    return int(bits)


def bit_planes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned codes (M, K) in [0, 2**bits) into uint64 planes (bits, M, ceil(K/64)).

    `planes[i, m, k // 64] >> (k % 64) & 1 == (codes[m, k] >> i) & 1`; bits past K are zero.
    Raises EngineError for a non-2-D or non-integer array, bits outside 1..8, or codes out of range.
    """
    bits = check_bits(bits)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise EngineError(f"bit_planes expects a 2-D (M, K) code array, got shape {codes.shape}")
    if codes.dtype.kind not in "iub":
        raise EngineError(f"bit_planes expects integer codes, got dtype {codes.dtype}")
    m, k = codes.shape
    if codes.size and (codes.min() < 0 or codes.max() >= 2**bits):
        raise EngineError(
            f"codes must lie in [0, {2**bits - 1}] for {bits}-bit packing, "
            f"got values in [{codes.min()}, {codes.max()}]"
        )
    kw = words_for(k)
    codes8 = codes.astype(np.uint8, copy=False)
    # Bytes of the packed row, padded to whole words; a little-endian byte view of uint64 words
    # puts element k at bit k % 64 of word k // 64 when packbits uses bitorder="little".
    packed = np.zeros((bits, m, kw * 8), dtype=np.uint8)
    for i in range(bits):
        plane = (codes8 >> np.uint8(i)) & np.uint8(1)
        packed[i, :, : (k + 7) // 8] = np.packbits(plane, axis=1, bitorder="little")
    return packed.view("<u8").astype(np.uint64, copy=False).reshape(bits, m, kw)


def unpack_bit_planes(planes: np.ndarray, k: int) -> np.ndarray:
    """Inverse of `bit_planes`: uint64 planes (bits, M, ceil(k/64)) -> uint8 codes (M, k).

    Raises EngineError if the planes are not a 3-D uint64 array with the word count k needs.
    """
    planes = np.asarray(planes)
    if planes.ndim != 3 or planes.dtype != np.uint64:
        raise EngineError(
            f"expected uint64 planes of shape (bits, M, words), got {planes.dtype} {planes.shape}"
        )
    bits, m, kw = planes.shape
    check_bits(bits)
    if kw != words_for(k):
        raise EngineError(f"{kw} words per row cannot hold k={k} codes (need {words_for(k)})")
    as_bytes = np.ascontiguousarray(planes).astype("<u8", copy=False).view(np.uint8)
    codes = np.zeros((m, k), dtype=np.uint8)
    for i in range(bits):
        plane = np.unpackbits(as_bytes[i], axis=1, count=k, bitorder="little")
        codes |= plane << np.uint8(i)
    return codes


def _plane_word_python(codes, r, c0, bit):
    """Plain reading of `plane_word`: bit `bit` of codes[r, c0 + l] as bit l of one uint64, for
    l < 64 (codes: uint8 (rows, >= c0 + 64), C-contiguous)."""
    word = 0
    for lane in range(64):
        word |= ((int(codes[r, c0 + lane]) >> bit) & 1) << lane
    return np.uint64(word)


@intrinsic
def _plane_word_llvm(typingctx, codes, r, c0, bit):
    """`_plane_word_python` as one 64-byte vector load, AND with 1 << bit and compare to zero: a
    <64 x i1> mask read as an i64 (`vptestmb` + `kmovq` with AVX-512BW, a few shuffles on AVX2)
    instead of 64 shifts and ORs."""
    if codes != types.Array(types.uint8, 2, "C"):
        return None
    sig = types.uint64(codes, r, c0, bit)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        i8, i32 = ir.IntType(8), ir.IntType(32)
        vec = ir.VectorType(i8, 64)
        r_v, c_v, b_v = (context.cast(builder, args[p], signature.args[p], types.int64) for p in (1, 2, 3))
        at = builder.add(builder.mul(r_v, builder.extract_value(arr.shape, 1)), c_v)
        x = builder.load(builder.bitcast(builder.gep(arr.data, [at]), vec.as_pointer()), align=1)
        one_bit = builder.shl(ir.Constant(i8, 1), builder.trunc(b_v, i8))
        splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), one_bit,
                                                              ir.Constant(i32, 0)),
                                       ir.Constant(vec, ir.Undefined), ir.Constant(ir.VectorType(i32, 64), [0] * 64))
        lanes = builder.icmp_unsigned("!=", builder.and_(x, splat), ir.Constant(vec, [0] * 64))
        return builder.bitcast(lanes, ir.IntType(64))

    return sig, codegen


plane_word = _plane_word_python if numba.config.DISABLE_JIT else _plane_word_llvm
