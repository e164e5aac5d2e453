"""Bit-planes: unsigned integer codes packed 64 per uint64 along the reduction dimension.

A code matrix `q` of shape (M, K) with values in [0, 2**bits) is written as
`q = sum_i 2**i * q_i` with binary planes `q_i`. Plane `i` of row `m` is stored as
`ceil(K / 64)` uint64 words: element `k` is bit `k % 64` (least significant first) of word
`k // 64`, and the bits past K are zero. Zero padding is what makes the popcount kernels exact
for any K: a padded position contributes `0 AND w = 0` to every dot product and 0 to row sums.

Layout of `bit_planes(q, bits)`: uint64 array (bits, M, ceil(K/64)), C-contiguous.
"""
import numpy as np

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
