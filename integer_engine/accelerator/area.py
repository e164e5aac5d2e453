"""Iso-area precision scaling: how many PEs fit in a fixed area at each operand precision.

MAC area model (in units of one 1-bit x 1-bit multiplier cell)::

    area(wbits, abits) = wbits * abits + ALPHA * (wbits + abits) / 2

The first term is the array multiplier (one cell per partial-product bit); the second is everything
that grows with the operand width only linearly: the accumulator adder, the operand and
partial-sum pipeline registers of a systolic PE. ALPHA is calibrated to the PACT paper's figure
that a 2-bit MAC is about 14x denser than a 16-bit one: ``(256 + 16a) / (4 + 2a) = 14`` gives
``a = 50/3``. Resulting densities relative to 16 bits: 8 bits 2.65x, 4 bits 6.32x, 2 bits 14x.

The paper also quotes "4x peak" from 16 to 4 bits; no single smooth area model gives both that and
14x at 2 bits (it would need a 4 -> 2 bit shrink of 3.5x, steeper than quadratic), so this model
is calibrated to the one quoted density and its 4-bit peak is 6.3x. docs/accelerator.md has the
comparison.
"""
from __future__ import annotations

import math

from integer_engine.errors import EngineError

ALPHA = 50.0 / 3.0
PAPER_DENSITY_16_TO_2 = 14.0


def mac_area(wbits: int, abits: int | None = None) -> float:
    """Relative area of one MAC unit for ``wbits`` x ``abits`` operands."""
    abits = wbits if abits is None else abits
    if wbits < 1 or abits < 1:
        raise EngineError(f"MAC bit widths must be >= 1, got {wbits}x{abits}")
    return wbits * abits + ALPHA * (wbits + abits) / 2.0


def density(bits: int, reference_bits: int = 16) -> float:
    """How many ``bits``-bit MACs fit in the area of one ``reference_bits``-bit MAC."""
    return mac_area(reference_bits) / mac_area(bits)


def iso_area_array(rows: int, cols: int, bits: int, reference_bits: int = 16) -> tuple[int, int]:
    """The array shape at ``bits`` that fits in the area of a ``rows x cols`` array of
    ``reference_bits`` PEs: both sides scaled by ``sqrt(density)`` and rounded down, so the
    PE count never exceeds the budget ``rows * cols * density``."""
    scale = math.sqrt(density(bits, reference_bits))
    # The tiny epsilon keeps an exact integer scale (e.g. density 4 -> x2) from flooring below.
    return max(1, int(rows * scale + 1e-9)), max(1, int(cols * scale + 1e-9))
