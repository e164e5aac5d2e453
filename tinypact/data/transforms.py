"""Augmentations and resizing on uint8 image batches (N, C, H, W), NumPy only.

Every random transform is a callable `t(images, rng) -> images` that takes a uint8 batch and a
`numpy.random.Generator` and returns a new uint8 batch; it draws from `rng` in a fixed order, so
a batch's augmentation depends only on the generator's state (see `DataLoader`). Staying in
uint8 keeps one representation for both consumers: the float trainer (`to_float`: x = p / 255)
and the integer engine (uint8 pixels). Where arithmetic produces non-integers (jitter, resize)
the result is clipped to [0, 255] and rounded with the project's rule, round half up
(`tinypact.quant.rounding.round_half_up`, docs/ARCHITECTURE.md).

The recipes (`train_transform`):
- cifar10: zero-pad 4 to 40x40, random 32x32 crop, horizontal flip (paper, Appendix B).
- svhn: brightness +-30 and contrast x[0.5, 1.5] (tensorpack's svhn-digit-dorefa); the
  32 -> 40 resize is applied when the data set is loaded (`resize_bilinear`), not per batch.
- fashion-mnist / sample: none.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from tinypact.quant.rounding import round_half_up

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 model input x = p / 255 in [0, 1] (no mean subtraction)."""
    # A true division: x is the float32 nearest to p / 255 (multiplying by 1/255 is not).
    return images.astype(np.float32) / np.float32(255.0)


def _round_to_uint8(values: np.ndarray) -> np.ndarray:
    return round_half_up(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def _check_batch(images: np.ndarray) -> None:
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected a uint8 batch (N, C, H, W), got {images.dtype} {images.shape}")


class RandomCrop:
    """Zero-pad each side by `padding`, then crop a random window of the original size.

    Offsets (dy, dx) are uniform in {0..2*padding}^2, drawn per image. Padding with pixel 0 is
    exact for the model because x = p / 255 has no mean subtraction.
    """

    def __init__(self, padding: int = 4):
        self.padding = int(padding)

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_batch(images)
        p = self.padding
        n, _, h, w = images.shape
        offsets = rng.integers(0, 2 * p + 1, size=(n, 2))
        padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)))
        out = np.empty_like(images)
        for i, (dy, dx) in enumerate(offsets):
            out[i] = padded[i, :, dy:dy + h, dx:dx + w]
        return out

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability `p` (one uniform draw per image)."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_batch(images)
        flip = rng.random(images.shape[0]) < self.p
        out = images.copy()
        out[flip] = out[flip, :, :, ::-1]
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class BrightnessContrast:
    """SVHN jitter (tensorpack's Brightness(30) then Contrast((0.5, 1.5))), per image:

        p' = p + b,                      b ~ U(-brightness, brightness), clipped to [0, 255]
        p'' = (p' - m) * c + m,          c ~ U(contrast), m = per-channel mean of p'
    then clipped to [0, 255] and rounded half up to uint8.
    """

    def __init__(self, brightness: float = 30.0, contrast: tuple[float, float] = (0.5, 1.5)):
        self.brightness = float(brightness)
        self.contrast = (float(contrast[0]), float(contrast[1]))

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_batch(images)
        n = images.shape[0]
        shift = rng.uniform(-self.brightness, self.brightness, size=(n, 1, 1, 1))
        factor = rng.uniform(*self.contrast, size=(n, 1, 1, 1))
        x = np.clip(images.astype(np.float64) + shift, 0.0, 255.0)
        mean = x.mean(axis=(2, 3), keepdims=True)
        return _round_to_uint8((x - mean) * factor + mean)

    def __repr__(self) -> str:
        return f"BrightnessContrast(brightness={self.brightness}, contrast={self.contrast})"


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            images = t(images, rng)
        return images

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 and weight w of i1 for each output index (half-pixel centres)."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(images: np.ndarray, size: int | tuple[int, int],
                    chunk: int = 256) -> np.ndarray:
    """Bilinear resize of a uint8 batch (N, C, H, W) to (N, C, size_h, size_w).

    Half-pixel centres (as OpenCV's INTER_LINEAR and PIL): output pixel o samples the input at
    s = (o + 1/2) * in / out - 1/2, clamped to [0, in - 1], and
        y = a + (b - a) * w,   a = x[floor(s)], b = x[floor(s) + 1], w = s - floor(s),
    separably along H then W in float32, rounded half up to uint8 (y stays within [a, b], so
    no clipping is needed). Works in chunks of `chunk` images: small float32 temporaries stay in
    cache (4x faster than whole-array passes) and bound memory (SVHN train is 73,257 images).
    """
    _check_batch(images)
    out_h, out_w = (size, size) if isinstance(size, int) else size
    n, c, h, w = images.shape
    r0, r1, rw = _bilinear_taps(h, out_h)
    c0, c1, cw = _bilinear_taps(w, out_w)
    rw = rw[:, None]
    out = np.empty((n, c, out_h, out_w), dtype=np.uint8)
    for start in range(0, n, chunk):
        x = images[start:start + chunk].astype(np.float32)
        a, b = np.take(x, r0, axis=2), np.take(x, r1, axis=2)
        rows = a + (b - a) * rw
        a, b = np.take(rows, c0, axis=3), np.take(rows, c1, axis=3)
        y = a + (b - a) * cw
        y += 0.5
        out[start:start + chunk] = np.floor(y, out=y)
    return out


def train_transform(name: str) -> Transform | None:
    """The training augmentation of a data set's recipe (module docstring), or None."""
    if name == "cifar10":
        return Compose([RandomCrop(padding=4), RandomHorizontalFlip(0.5)])
    if name == "svhn":
        return BrightnessContrast(brightness=30.0, contrast=(0.5, 1.5))
    if name in ("fashion-mnist", "fmnist", "sample"):
        return None
    raise ValueError(f"unknown data set {name!r}; expected fashion-mnist, cifar10, svhn or sample")
