"""Quantization-aware training: the rounding rule, quantizers (PACT, DoReFa, SAWB), quantized
layers and the precision policy.

rounding.py    round_half_up, the project's one rounding rule
functional.py  pact, dorefa_activation, quantized_relu, dorefa_weight, sawb_weight, codes,
               quantize_input
layers.py      InputQuant, ActQuant / PACT, QConv2d, QLinear, alpha helpers
policy.py      Policy (bits and quantizer kinds per part of a network)
"""
from tinypact.quant.functional import (FULL_PRECISION, SAWB_COEFFICIENTS,
                                       SAWB_ZERO_ALIGNED_COEFFICIENTS, VALID_BITS,
                                       activation_codes, check_bits, dorefa_activation,
                                       dorefa_weight, dorefa_weight_codes, levels, pact,
                                       pact_codes, quantize_input, quantize_weight, quantized_relu,
                                       sawb_levels,
                                       sawb_scale, sawb_weight, sawb_weight_codes, weight_codes)
from tinypact.quant.layers import (ALPHA_MIN, PACT, ActQuant, InputQuant, QConv2d, QLinear,
                                   alpha_parameters, alphas, clamp_alphas)
from tinypact.quant.policy import Policy
from tinypact.quant.rounding import round_half_up

__all__ = [
    "round_half_up", "VALID_BITS", "FULL_PRECISION", "check_bits", "levels",
    "pact", "dorefa_activation", "quantized_relu", "activation_codes", "pact_codes",
    "dorefa_weight", "dorefa_weight_codes", "sawb_scale", "sawb_levels", "sawb_weight",
    "sawb_weight_codes", "SAWB_COEFFICIENTS", "SAWB_ZERO_ALIGNED_COEFFICIENTS",
    "quantize_input", "quantize_weight", "weight_codes",
    "InputQuant", "ActQuant", "PACT", "QConv2d", "QLinear", "ALPHA_MIN", "alpha_parameters", "alphas",
    "clamp_alphas", "Policy",
]
