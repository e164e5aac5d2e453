"""Precision sweep at iso area (the PACT paper's Fig. 6): speedup vs bits at several bandwidths.

At each precision ``b`` the array is resized to the same area (`area.iso_area_array`), the SRAMs
and the DRAM bandwidth stay fixed, interior layers run with ``b``-bit weights and activations and
the first and last layers with ``max(b, first_last_bits)`` bits (the paper keeps them at 8). A
layer wider than the PEs takes ``ceil(wbits/b) * ceil(abits/b)`` passes per MAC. Speedup is the
baseline (first precision) cycles over the cycles at ``b``, at the same bandwidth and dataflow;
"peak" is the PE-count ratio, the speedup of a perfectly mapped, compute-bound network.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from integer_engine.accelerator.area import iso_area_array
from integer_engine.accelerator.systolic import DATAFLOWS, Layer, SystolicArray, evaluate, layer_table

DEFAULT_BITS = (16, 8, 4, 2)
DEFAULT_BANDWIDTHS_GBPS = (None, 64.0, 32.0)


def precision_layers(layers: Sequence[Layer], bits: int, first_last_bits: int | None = 8) -> list[Layer]:
    """``layers`` at ``bits`` (weights, activations, outputs); the first and last layers at
    ``max(bits, first_last_bits)`` unless ``first_last_bits`` is None."""
    out = [l.with_bits(bits, bits, bits) for l in layers]
    if first_last_bits is not None:
        edge = max(bits, first_last_bits)
        out[0] = layers[0].with_bits(edge, edge, bits if len(layers) > 1 else edge)
        out[-1] = layers[-1].with_bits(edge, edge, edge)
    return out


@dataclass(frozen=True)
class SweepResult:
    """``cycles[d, p, w]``: total cycles for dataflow d, precision p, bandwidth w."""

    bits: tuple[int, ...]
    bandwidths_gbps: tuple[float | None, ...]
    dataflows: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]  # array rows x cols per precision
    cycles: np.ndarray
    compute_cycles: np.ndarray  # [d, p]
    dram_bytes: np.ndarray  # [d, p]
    macs: int

    @property
    def pes(self) -> np.ndarray:
        return np.array([r * c for r, c in self.shapes])

    @property
    def peak(self) -> np.ndarray:
        """PE count relative to the baseline precision."""
        return self.pes / self.pes[0]

    @property
    def speedup(self) -> np.ndarray:
        """``speedup[d, p, w] = cycles[d, 0, w] / cycles[d, p, w]``."""
        return self.cycles[:, :1, :] / self.cycles


def sweep_precision(
    layers: Sequence[Layer],
    base: SystolicArray,
    bits: Sequence[int] = DEFAULT_BITS,
    bandwidths_gbps: Sequence[float | None] = DEFAULT_BANDWIDTHS_GBPS,
    dataflows: Sequence[str] = DATAFLOWS,
    iso_area: bool = True,
    first_last_bits: int | None = 8,
) -> SweepResult:
    """Run the network at every (dataflow, precision, bandwidth); ``base`` is the array at
    ``bits[0]``. Without ``iso_area`` every precision keeps the base array shape."""
    bits = tuple(int(b) for b in bits)
    shapes = tuple(iso_area_array(base.rows, base.cols, b, bits[0]) if iso_area else (base.rows, base.cols)
                   for b in bits)
    tables = [layer_table(precision_layers(layers, b, first_last_bits)) for b in bits]
    bw = np.array([np.inf if g is None else g / base.clock_ghz for g in bandwidths_gbps])
    cycles = np.zeros((len(dataflows), len(bits), len(bw)), dtype=np.int64)
    compute = np.zeros((len(dataflows), len(bits)), dtype=np.int64)
    dram = np.zeros((len(dataflows), len(bits)))
    macs = 0
    for d, df in enumerate(dataflows):
        for p, (b, (rows, cols), table) in enumerate(zip(bits, shapes, tables)):
            array = replace(base, rows=rows, cols=cols, dataflow=df, pe_bits=b, dram_bytes_per_cycle=None)
            res = evaluate(table, array)
            # Bandwidth only enters the per-layer roofline: broadcast it over layers at once.
            dram_cycles = np.ceil(res["dram_bytes"][None, :] / bw[:, None])
            cycles[d, p] = np.maximum(res["compute_cycles"][None, :], dram_cycles).sum(axis=1)
            compute[d, p] = res["compute_cycles"].sum()
            dram[d, p] = res["dram_bytes"].sum()
            macs = int(res["macs"].sum())
    return SweepResult(bits, tuple(bandwidths_gbps), tuple(dataflows), shapes, cycles, compute, dram, macs)


PAPER_FIRST_LAST_GAIN = 1.24  # PACT, Section 6: first and last layers at 4 or 2 bits too


def first_last_gain(layers: Sequence[Layer], base: SystolicArray, *args: object,
                    first_last_bits: int | None = None, reference_bits: int = 8,
                    **kwargs: object) -> tuple[SweepResult, np.ndarray]:
    """How much faster the network gets when its first and last layers drop from
    ``reference_bits`` to ``first_last_bits`` (None: the interior precision), at each point::

        gain[d, p, w] = cycles(first/last at max(b, reference_bits)) / cycles(first/last at max(b, first_last_bits))

    The paper keeps them at 8 bits and estimates 1.24x more from quantizing them to 4 or 2 bits.
    The other arguments are `sweep_precision`'s. Returns the sweep at ``first_last_bits`` and the gain.
    """
    lowered = sweep_precision(layers, base, *args, first_last_bits=first_last_bits, **kwargs)  # type: ignore[arg-type]
    reference = sweep_precision(layers, base, *args, first_last_bits=reference_bits, **kwargs)  # type: ignore[arg-type]
    return lowered, reference.cycles / lowered.cycles


def format_first_last_gain(result: SweepResult, gain: np.ndarray, first_last_bits: int | None,
                           reference_bits: int = 8) -> str:
    """The gain table: per dataflow and precision, one column per bandwidth."""
    edge = "" if first_last_bits is None else f" (at least {first_last_bits})"
    head = f"{'dataflow':>8} {'bits':>4}" + "".join(f" {_bw_label(g):>12}" for g in result.bandwidths_gbps)
    lines = [f"speedup from running the first/last layers at the interior bits{edge} instead of at least "
             f"{reference_bits} (paper: about {PAPER_FIRST_LAST_GAIN}x at 4 or 2 bits)", head, "-" * len(head)]
    for d, df in enumerate(result.dataflows):
        for p, b in enumerate(result.bits):
            lines.append(f"{df:>8} {b:>4}" + "".join(f" {gain[d, p, w]:>11.2f}x"
                                                     for w in range(len(result.bandwidths_gbps))))
    return "\n".join(lines)


def _bw_label(gbps: float | None) -> str:
    return "unlimited" if gbps is None else f"{gbps:g} GB/s"


def format_sweep(result: SweepResult) -> str:
    """A text table: per dataflow and precision, array, peak ratio, DRAM traffic, speedups."""
    head = f"{'dataflow':>8} {'bits':>4} {'array':>9} {'peak':>6} {'DRAM MB':>9}"
    head += "".join(f" {_bw_label(g):>12}" for g in result.bandwidths_gbps)
    lines = [head, "-" * len(head)]
    speed = result.speedup
    for d, df in enumerate(result.dataflows):
        for p, b in enumerate(result.bits):
            rows, cols = result.shapes[p]
            line = (f"{df:>8} {b:>4} {f'{rows}x{cols}':>9} {result.peak[p]:>5.2f}x "
                    f"{result.dram_bytes[d, p] / 1e6:>9.1f}")
            line += "".join(f" {speed[d, p, w]:>11.2f}x" for w in range(len(result.bandwidths_gbps)))
            lines.append(line)
    return "\n".join(lines)


def plot_sweep(result: SweepResult, path: str | Path, title: str = "") -> Path:
    """Speedup vs precision, one panel per dataflow, one line per bandwidth (Fig. 6c style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.dataflows)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), sharey=True, squeeze=False)
    x = np.arange(len(result.bits))
    for d, (ax, df) in enumerate(zip(axes[0], result.dataflows)):
        ax.plot(x, result.peak, "k--", label="peak (PE count)")
        ax.plot(x, result.bits[0] / np.array(result.bits), ":", color="gray", label="linear in bits")
        for w, g in enumerate(result.bandwidths_gbps):
            ax.plot(x, result.speedup[d, :, w], marker="o", label=_bw_label(g))
        ax.set_xticks(x, [f"{b}-bit" for b in result.bits])
        ax.set_title(f"{df.upper()} dataflow")
        ax.set_yscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(f"speedup over {result.bits[0]}-bit (iso-area)")
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
