"""Output layouts of the fused conv kernels: NCHW codes, or the layout of the next conv
(`LaidOut`: zero-padded NHWC bytes for the int8 conv, channel-packed planes for the bit-serial
conv), so the reader skips its re-layout pass."""
from dataclasses import dataclass

import numpy as np

from integer_engine.bitpack import words_for
from integer_engine.errors import EngineError
from integer_engine.requant import NCHW, NHWC, PLANES

@dataclass(frozen=True)
class LaidOut:
    """Codes of shape (N, C, H, W) already in the layout of the conv that reads them, written so by
    the fused conv kernel that made them (`conv_output`), so the reader skips its re-layout pass:

    - "nhwc": uint8 (N, H + 2p, W + 2p, C) flattened with 8 bytes of slack, zero border: the input
      of `int8_conv_threshold_codes`;
    - "planes": uint64 (bits, N, H + 2p, W + 2p, ceil(C/64)), `channel_packed_planes(codes, bits,
      p)`: the input of `bitserial_conv_threshold_codes`.
    """
    kind: str
    data: np.ndarray
    shape: tuple  # (N, C, H, W) of the codes
    padding: int
    bits: int = 0

    def codes(self) -> np.ndarray:
        """The codes as NCHW uint8 (N, C, H, W)."""
        n, c, h, w = self.shape
        p = self.padding
        if self.kind == "nhwc":
            grid = self.data[:n * (h + 2 * p) * (w + 2 * p) * c].reshape(n, h + 2 * p, w + 2 * p, c)
            return np.ascontiguousarray(grid[:, p:p + h, p:p + w].transpose(0, 3, 1, 2))
        inner = np.ascontiguousarray(self.data[:, :, p:p + h, p:p + w, :])
        lanes = np.unpackbits(inner.view(np.uint8), axis=-1, bitorder="little")[..., :c]  # (bits, n, h, w, c)
        codes = np.zeros((n, h, w, c), np.uint8)
        for b in range(self.bits):
            codes |= lanes[b] << np.uint8(b)
        return np.ascontiguousarray(codes.transpose(0, 3, 1, 2))


def as_codes(x) -> np.ndarray:
    """NCHW codes of an array or a `LaidOut`."""
    return x.codes() if isinstance(x, LaidOut) else x


def conv_output(to, images: int, channels: int, height: int, width: int):
    """(dest, layout, result) for a fused conv kernel writing codes (images, channels, height,
    width) through `requant.store_codes`: `to` None gives NCHW codes (images, channels,
    height * width) as result, ("nhwc", p) or ("planes", p, bits) a `LaidOut` for a next conv with
    padding p (and `bits`-bit activations)."""
    shape = (images, channels, height, width)
    if to is None:
        size = images * channels * height * width
        dest = np.empty(-(-size // 8), np.uint64)  # every code is written
        return dest, np.array([NCHW, *shape, 0, 0, 0], np.int64), dest.view(np.uint8)[:size].reshape(
            images, channels, height * width)
    p = int(to[1])
    hp, wp = height + 2 * p, width + 2 * p
    if to[0] == "nhwc":
        size = images * hp * wp * channels + 8
        dest = np.zeros(-(-size // 8), np.uint64)
        return dest, np.array([NHWC, *shape, p, 0, 0], np.int64), LaidOut("nhwc", dest.view(np.uint8)[:size],
                                                                           shape, p)
    if to[0] == "planes":
        bits, words = int(to[2]), words_for(channels)
        dest = np.zeros(bits * images * hp * wp * words, np.uint64)
        return dest, np.array([PLANES, *shape, p, bits, words], np.int64), LaidOut(
            "planes", dest.reshape(bits, images, hp, wp, words), shape, p, bits)
    raise EngineError(f"unknown conv output layout {to!r}")
