"""Seeded, resumable batching.

Everything random is a pure function of (seed, epoch, batch):
- the order of epoch e is a permutation drawn from SeedSequence(seed, spawn_key=(e, 0));
- the augmentation of batch b of epoch e draws from SeedSequence(seed, spawn_key=(e, 1, b)).
So a run interrupted after any batch and resumed from `state_dict()` (three integers) yields
exactly the batches the uninterrupted run would have, with no generator state to pickle.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from tinypact.data.datasets import Dataset
from tinypact.data.transforms import Transform, to_float


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


class DataLoader:
    """Iterate over a Dataset in batches `(x, y)`.

    x: float32 (B, C, H, W) = pixels / 255 in [0, 1] (or the uint8 pixels themselves when
    `as_float=False`, what the integer engine consumes); y: int64 (B,). Augmentation (`transform`,
    see `tinypact.data.transforms`) runs on the uint8 pixels before the conversion.

    Each `for` loop over the loader runs the rest of the current epoch, then advances `epoch`.
    Leaving a loop early keeps the position, so the next loop continues where it stopped;
    `set_epoch` jumps to the start of any epoch.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 128, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, transform: Transform | None = None,
                 as_float: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.as_float = bool(as_float)
        self.epoch = 0
        self.position = 0  # batches of `epoch` already handed out

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sample indices of `epoch` in the order they are served (depends on seed, epoch)."""
        n = len(self.dataset)
        return _rng(self.seed, epoch, 0).permutation(n) if self.shuffle else np.arange(n)

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch `index` of `epoch`, computed from scratch (no state is read or changed)."""
        order = self.epoch_order(epoch)
        return self._make(order[index * self.batch_size:(index + 1) * self.batch_size],
                          epoch, index)

    def _make(self, idx: np.ndarray, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        images = self.dataset.images[idx]
        if self.transform is not None:
            images = self.transform(images, _rng(self.seed, epoch, 1, index))
        x = to_float(images) if self.as_float else images
        return x, self.dataset.labels[idx]

    def set_epoch(self, epoch: int) -> None:
        """Start the next loop at the beginning of `epoch`."""
        self.epoch, self.position = int(epoch), 0

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.position >= len(self):  # a checkpoint taken after an epoch's last batch
            self.set_epoch(self.epoch + 1)
        epoch = self.epoch
        order = self.epoch_order(epoch)
        for index in range(self.position, len(self)):
            # Advance before yielding: a state_dict taken while the consumer holds this batch
            # says "resume after it".
            self.position = index + 1
            yield self._make(order[index * self.batch_size:(index + 1) * self.batch_size],
                             epoch, index)
        self.set_epoch(epoch + 1)

    def state_dict(self) -> dict[str, int]:
        """Where the loader is: {seed, epoch, position, num_samples} (JSON-friendly ints)."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "num_samples": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; the data set must have the same size."""
        if int(state["num_samples"]) != len(self.dataset):
            raise ValueError(f"loader state is for {state['num_samples']} samples, this data set "
                             f"has {len(self.dataset)}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

    def __repr__(self) -> str:
        return (f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last}, "
                f"transform={self.transform!r}, as_float={self.as_float})")
