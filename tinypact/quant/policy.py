"""The precision policy: which bits and which quantizer each part of a network gets.

- `wbits`, `abits`: weights and activations of every interior layer.
- `first_last_bits` (default 8): weight precision of the first conv and the final linear layer
  (the first layer's input is the 8-bit image itself; the activation feeding the last layer is
  the network's last one: at `abits` in fmnist and svhn, at `shortcut_bits` in resnet20).
- `shortcut_bits` (default 8): the residual stream of ResNets (the activation after each add,
  the last of which feeds the global pool and the final linear layer).
- `weight_quant`: "dorefa" | "sawb" | "sawb0" (zero-aligned SAWB) | "float";
  `act_quant`: "pact" | "pact+" | "dorefa" | "relu"; `alpha_init`: PACT's initial alpha.
32 bits means float everywhere it appears. Bits are 1..8, 16 or 32.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tinypact.quant.functional import (FULL_PRECISION, SAWB_COEFFICIENTS,
                                       SAWB_ZERO_ALIGNED_COEFFICIENTS, WEIGHT_QUANT_KINDS,
                                       check_bits)
from tinypact.quant.layers import ACT_QUANT_KINDS


@dataclass
class Policy:
    wbits: int = 32
    abits: int = 32
    first_last_bits: int = 8
    weight_quant: str = "dorefa"
    act_quant: str = "pact"
    shortcut_bits: int = 8
    alpha_init: float = 10.0

    def __post_init__(self) -> None:
        for name in ("wbits", "abits", "first_last_bits", "shortcut_bits"):
            setattr(self, name, check_bits(getattr(self, name), name))
        if self.weight_quant not in WEIGHT_QUANT_KINDS:
            raise ValueError(f"weight_quant must be one of {', '.join(WEIGHT_QUANT_KINDS)}, "
                             f"got {self.weight_quant!r}")
        if self.act_quant not in ACT_QUANT_KINDS:
            raise ValueError(f"act_quant must be one of {', '.join(ACT_QUANT_KINDS)}, "
                             f"got {self.act_quant!r}")
        table = {"sawb": SAWB_COEFFICIENTS, "sawb0": SAWB_ZERO_ALIGNED_COEFFICIENTS}.get(
            self.weight_quant)
        for name in ("wbits", "first_last_bits"):
            bits = getattr(self, name)
            if table is not None and bits != FULL_PRECISION and bits not in table:
                raise ValueError(f"{self.weight_quant} weights support {sorted(table)} bits "
                                 f"(or 32), got {name}={bits}")
        if isinstance(self.alpha_init, bool) or not isinstance(self.alpha_init, (int, float)) \
                or not self.alpha_init > 0:
            raise ValueError(f"alpha_init must be a number > 0, got {self.alpha_init!r}")
        self.alpha_init = float(self.alpha_init)

    @classmethod
    def full_precision(cls) -> "Policy":
        """The float baseline: every weight and activation at 32 bits, plain ReLU activations.
        (The default Policy() keeps 8-bit first/last layers and shortcuts, as the paper does.)"""
        return cls(wbits=32, abits=32, first_last_bits=32, weight_quant="float", act_quant="relu",
                   shortcut_bits=32)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Policy":
        """The inverse of `to_dict`; unknown keys are a ValueError (a typo must not pass silently)."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown precision policy field(s) {unknown}; "
                             f"known: {sorted(known)}")
        return cls(**data)

    def describe(self) -> str:
        """Short label, e.g. 'W2A2 FL8 SC8 dorefa/pact'."""
        def b(bits: int) -> str:
            return "FP" if bits == FULL_PRECISION else str(bits)
        return (f"W{b(self.wbits)}A{b(self.abits)} FL{b(self.first_last_bits)} "
                f"SC{b(self.shortcut_bits)} {self.weight_quant}/{self.act_quant}")
