"""Quantized layers: activation quantizers (PACT & co.) and convolution / linear layers whose
weights are quantized on the fly (DoReFa, SAWB).

Each layer knows how it appears in the checkpoint graph (docs/ARCHITECTURE.md): `ActQuant.graph_fields`
gives an `act` node's fields, `QConv2d.wq` / `QLinear.wq` the `wq` field of a `conv` / `linear` node.
"""
from __future__ import annotations

import numpy as np

from tinypact import nn
from tinypact import functional as F
from tinypact.nn.module import Module, Parameter
from tinypact.quant.functional import (FULL_PRECISION, SAWB_COEFFICIENTS,
                                       SAWB_ZERO_ALIGNED_COEFFICIENTS, WEIGHT_QUANT_KINDS,
                                       check_bits, dorefa_activation, pact, quantize_input,
                                       quantize_weight, quantized_relu)
from tinypact.tensor import Tensor, no_grad

ACT_QUANT_KINDS = ("pact", "pact+", "dorefa", "relu")
ALPHA_MIN = 1e-3  # alpha is projected onto [ALPHA_MIN, inf): a negative clip level is meaningless


class InputQuant(Module):
    """The network's input as 8-bit codes, q = round(x * 255) (`quantize_input`): the first
    layer then multiplies integers, as integer_engine does with the uint8 pixels. No state."""

    def forward(self, x: Tensor) -> Tensor:
        return quantize_input(x)


class ActQuant(Module):
    """An activation quantizer at `bits`, by kind:

    - "pact" / "pact+": `pact(x, alpha, bits, variant)` with one learned scalar Parameter `alpha`
      (init `alpha_init`). alpha is kept positive by projection: every forward (and
      `clamp_alphas` after an optimizer step) sets alpha = max(alpha, ALPHA_MIN) in place, so the
      stored alpha is always the one the forward used.
    - "dorefa": `dorefa_activation(x, bits)`, range [0, 1].
    - "relu": `quantized_relu(x, bits, running_max)`: the range is a buffer `running_max` (init 6,
      ReLU6's range) that tracks the batch maximum of x in training as an exponential moving
      average, running_max <- (1 - momentum) * running_max + momentum * max(x), like TensorFlow's
      fake-quant moving min/max (momentum 0.01 rather than TF's 0.001: our runs are short).
      Training uses the updated running_max. bits=32: a plain ReLU.
    """

    def __init__(self, kind: str, bits: int, alpha_init: float = 10.0, momentum: float = 0.01):
        super().__init__()
        if kind not in ACT_QUANT_KINDS:
            raise ValueError(f"activation quantizer must be one of {', '.join(ACT_QUANT_KINDS)}, "
                             f"got {kind!r}")
        self.kind, self.bits = kind, check_bits(bits, "activation bits")
        if kind in ("pact", "pact+"):
            if not alpha_init > 0:
                raise ValueError(f"PACT alpha_init must be > 0, got {alpha_init}")
            self.alpha = Parameter(np.asarray(alpha_init, dtype=np.float32))
        if kind == "relu":
            self.momentum = momentum
            self.register_buffer("running_max", np.asarray(6.0, dtype=np.float32))

    def clamp_(self) -> None:
        """Project alpha onto [ALPHA_MIN, inf) in place (no-op for kinds without alpha)."""
        if self.kind in ("pact", "pact+"):
            np.maximum(self.alpha.data, ALPHA_MIN, out=self.alpha.data)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind in ("pact", "pact+"):
            self.clamp_()
            return pact(x, self.alpha, self.bits, self.kind)
        if self.kind == "dorefa":
            return dorefa_activation(x, self.bits)
        if self.bits == FULL_PRECISION:
            return F.relu(x)
        if self.training:
            batch_max = max(float(np.max(x.data)), ALPHA_MIN)
            self.running_max = np.float32((1 - self.momentum) * float(self.running_max)
                                          + self.momentum * batch_max)
        return quantized_relu(x, self.bits, float(self.running_max))

    def graph_fields(self, prefix: str) -> dict:
        """The `act` graph node's fields; `prefix` is this module's state_dict name."""
        if self.kind in ("pact", "pact+"):
            return {"kind": "pact", "bits": self.bits, "alpha": f"{prefix}.alpha"}
        if self.kind == "dorefa":
            return {"kind": "dorefa", "bits": self.bits, "alpha": 1.0}
        if self.bits == FULL_PRECISION:
            return {"kind": "float", "bits": FULL_PRECISION, "alpha": None}
        return {"kind": "relu", "bits": self.bits, "alpha": f"{prefix}.running_max"}

    def extra_repr(self) -> str:
        alpha = f", alpha={float(self.alpha.data):.4g}" if self.kind in ("pact", "pact+") else ""
        return f"kind={self.kind!r}, bits={self.bits}{alpha}"


class PACT(ActQuant):
    """PACT activation layer: one learned clip level `alpha` per layer (see `ActQuant`)."""

    def __init__(self, bits: int, alpha_init: float = 10.0, variant: str = "pact"):
        if variant not in ("pact", "pact+"):
            raise ValueError(f"PACT variant must be 'pact' or 'pact+', got {variant!r}")
        super().__init__(variant, bits, alpha_init)


def _weight_spec(weight_quant: str, wbits: int) -> dict:
    """The normalised `wq` field: kind "float" <=> 32 bits; unknown kinds or SAWB bits without
    coefficients are a ValueError at construction, not at the first forward."""
    if weight_quant not in WEIGHT_QUANT_KINDS:
        raise ValueError(f"weight quantizer must be one of {', '.join(WEIGHT_QUANT_KINDS)}, "
                         f"got {weight_quant!r}")
    wbits = check_bits(wbits, "weight bits")
    if weight_quant == "float" or wbits == FULL_PRECISION:
        return {"kind": "float", "bits": FULL_PRECISION}
    table = {"sawb": SAWB_COEFFICIENTS, "sawb0": SAWB_ZERO_ALIGNED_COEFFICIENTS}.get(weight_quant)
    if table is not None and wbits not in table:
        raise ValueError(f"{weight_quant} weights support {sorted(table)} bits (or 32), "
                         f"got {wbits}")
    return {"kind": weight_quant, "bits": wbits}


class _QuantizedWeight:
    """Mixin: `self.weight` is quantized by `self.wq` at every forward."""

    wq: dict

    def quantized_weight(self) -> Tensor:
        return quantize_weight(self.weight, self.wq["kind"], self.wq["bits"])

    def quantized_weight_array(self) -> np.ndarray:
        """w_q as a NumPy array, without recording a graph (for inspection and plots)."""
        with no_grad():
            return self.quantized_weight().data


class QConv2d(_QuantizedWeight, nn.Conv2d):
    """Conv2d whose weight is quantized at every forward: weight_quant "dorefa" | "sawb" |
    "sawb0" (zero-aligned SAWB) | "float", at `wbits` (32 = float)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, weight_quant: str = "dorefa", wbits: int = 32):
        self.wq = _weight_spec(weight_quant, wbits)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.quantized_weight(), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", wq={self.wq['kind']}:{self.wq['bits']}"


class QLinear(_QuantizedWeight, nn.Linear):
    """Linear whose weight is quantized at every forward (see QConv2d)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 weight_quant: str = "dorefa", wbits: int = 32):
        self.wq = _weight_spec(weight_quant, wbits)
        super().__init__(in_features, out_features, bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", wq={self.wq['kind']}:{self.wq['bits']}"


# ------------------------------------------------------------------------- model-wide helpers
def alpha_parameters(model: Module) -> list[Parameter]:
    """Every PACT alpha of `model`, for the optimizer's own parameter group (weight_decay =
    lambda_alpha: the paper's L2 regulariser on alpha)."""
    return [m.alpha for m in model.modules()
            if isinstance(m, ActQuant) and m.kind in ("pact", "pact+")]


def alphas(model: Module) -> dict[str, float]:
    """Layer name -> current PACT alpha (for metrics and plots)."""
    return {name: float(m.alpha.data) for name, m in model.named_modules()
            if isinstance(m, ActQuant) and m.kind in ("pact", "pact+")}


def clamp_alphas(model: Module) -> None:
    """Project every PACT alpha onto [ALPHA_MIN, inf); call after each optimizer step."""
    for module in model.modules():
        if isinstance(module, ActQuant):
            module.clamp_()
