"""The one random generator behind initialisation and dropout (PyTorch's `torch.manual_seed`)."""
from __future__ import annotations

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed the generator used by `tinypact.nn.init` and `functional.dropout`."""
    global _generator
    _generator = np.random.default_rng(seed)


def default_generator() -> np.random.Generator:
    return _generator


def get_state() -> dict:
    """The generator's state (a JSON-able dict), for checkpoints."""
    return _generator.bit_generator.state


def set_state(state: dict) -> None:
    _generator.bit_generator.state = state
