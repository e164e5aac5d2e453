"""`python -m integer_engine simulate`: the systolic-array model from the command line.

    simulate (MODEL | --topology CSV|NAME) [--config CFG] [--array 32x32] [--dataflow ws]
             [--sram-kb 64 | I,F,O] [--bandwidth-gbps 64 | --bandwidth-words 16] [--clock-ghz 1]
             [--bits W,A[,O]] [--pe-bits B] [--first-last-bits 8] [--out DIR]
             [--sweep-bits 16,8,4,2 [--iso-area] [--sweep-bandwidths unlimited,64,32]]

Settings layer up: built-in defaults, then the SCALE-Sim config, then the flags. Each config
setting that changes SCALE-Sim 3's result but is not modelled prints one `warning:` line on stderr.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

from integer_engine.commands import MODEL_HELP, check_output_dir
from integer_engine.errors import EngineError

from integer_engine.accelerator.from_model import layers_from_model
from integer_engine.accelerator.scalesim import ScaleSimWarning, read_config, read_topology, write_reports
from integer_engine.accelerator.sweep import (first_last_gain, format_first_last_gain, format_sweep, plot_sweep,
                                              precision_layers, sweep_precision)
from integer_engine.accelerator.systolic import (DATAFLOWS, Layer, NetworkReport, SystolicArray,
                                                 simulate_network)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``simulate`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "simulate",
        help="cycles, utilization and DRAM traffic of a network on a systolic-array accelerator",
        description="Run an exported model or a SCALE-Sim topology through the systolic-array cost "
        "model: per-layer cycles, stalls, utilization, SRAM/DRAM bytes at the operands' bit widths. "
        "With --sweep-bits, compare precisions (iso-area with --iso-area) at several bandwidths.",
    )
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    p.add_argument("--topology", help="SCALE-Sim topology CSV, or a shipped one: resnet50, svhn, resnet20, alexnet")
    p.add_argument("--config", help="SCALE-Sim .cfg (array, SRAM sizes, dataflow, bandwidth)")
    p.add_argument("--array", help="array rows x cols, e.g. 32x32 (default 32x32)")
    p.add_argument("--dataflow", choices=DATAFLOWS, help="os, ws or is (default ws)")
    p.add_argument("--sram-kb", help="SRAM KB per operand: one size, or IFMAP,FILTER,OFMAP (default 64)")
    bw = p.add_mutually_exclusive_group()
    bw.add_argument("--bandwidth-gbps", type=float, help="DRAM bandwidth in GB/s (default unlimited)")
    bw.add_argument("--bandwidth-words", type=float, help="DRAM bandwidth in 8-bit words per cycle")
    p.add_argument("--clock-ghz", type=float, default=1.0, help="clock, to turn GB/s into bytes/cycle (default 1)")
    p.add_argument("--bits", help="W,A[,O]: weight, activation[, output] bits for every layer "
                   "(default: the model's own bits; 8,8 for a topology)")
    p.add_argument("--pe-bits", type=int, help="PE precision: wider MACs take ceil(w/pe)*ceil(a/pe) passes")
    p.add_argument("--first-last-bits", type=int,
                   help="bits of the first and last layers (sweep: at least this many, default 8; "
                   "below 8 also prints the speedup over keeping them at 8, the paper's 1.24x estimate)")
    p.add_argument("--sweep-bits", help="e.g. 16,8,4,2: speedup of each precision over the first")
    p.add_argument("--iso-area", action="store_true", help="in a sweep, resize the array to the same area")
    p.add_argument("--sweep-bandwidths", default="unlimited,64,32",
                   help="GB/s values for the sweep (default unlimited,64,32)")
    p.add_argument("--out", default="accelerator_out",
                   help="directory for SCALE-Sim 3's COMPUTE_REPORT.csv, BANDWIDTH_REPORT.csv and "
                   "DETAILED_ACCESS_REPORT.csv (a sweep: SWEEP_REPORT.csv and sweep.png); "
                   "default: accelerator_out")
    p.set_defaults(func=run)
    return p


def _ints(text: str, what: str, count: tuple[int, ...] | None = None) -> list[int]:
    try:
        values = [int(x) for x in text.replace("x", ",").split(",")]
    except ValueError:
        raise EngineError(f"{what} must be integers like {'32x32' if what == '--array' else '8,8'}, "
                          f"got {text!r}") from None
    if count is not None and len(values) not in count:
        raise EngineError(f"{what} needs {' or '.join(map(str, count))} values, got {text!r}")
    if any(v < 1 for v in values):
        raise EngineError(f"{what} values must be positive, got {text!r}")
    return values


def _bandwidths(text: str) -> list[float | None]:
    out: list[float | None] = []
    for item in text.split(","):
        item = item.strip().lower()
        if item in ("unlimited", "inf", "none"):
            out.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            raise EngineError(f"--sweep-bandwidths takes GB/s numbers or 'unlimited', got {item!r}") from None
        if not value > 0:
            raise EngineError(f"--sweep-bandwidths values must be positive, got {item!r}")
        out.append(value)
    return out


def build_array(args: argparse.Namespace) -> SystolicArray:
    """The accelerator from defaults, then ``--config``, then the flags."""
    if args.clock_ghz is not None and not args.clock_ghz > 0:
        raise EngineError(f"--clock-ghz must be positive, got {args.clock_ghz}")
    array = read_config(args.config, args.clock_ghz) if args.config else SystolicArray(clock_ghz=args.clock_ghz)
    if args.array:
        rows, cols = _ints(args.array, "--array", (2,))
        array = replace(array, rows=rows, cols=cols)
    if args.dataflow:
        array = replace(array, dataflow=args.dataflow)
    if args.sram_kb:
        sizes = _ints(args.sram_kb, "--sram-kb", (1, 3))
        sizes = sizes * 3 if len(sizes) == 1 else sizes
        array = replace(array, ifmap_sram_kb=sizes[0], filter_sram_kb=sizes[1], ofmap_sram_kb=sizes[2])
    if args.bandwidth_gbps is not None:
        if not args.bandwidth_gbps > 0:
            raise EngineError(f"--bandwidth-gbps must be positive, got {args.bandwidth_gbps}")
        array = array.with_bandwidth_gbps(args.bandwidth_gbps)
    if args.bandwidth_words is not None:
        if not args.bandwidth_words > 0:
            raise EngineError(f"--bandwidth-words must be positive, got {args.bandwidth_words}")
        array = replace(array, dram_bytes_per_cycle=args.bandwidth_words)
    if args.pe_bits is not None:
        array = replace(array, pe_bits=args.pe_bits)
    return array


def load_layers(args: argparse.Namespace) -> tuple[list[Layer], str]:
    """The network to simulate and a short name for it."""
    if bool(args.model) == bool(args.topology):
        raise EngineError("give either a model file or --topology CSV (not both, not neither)")
    if args.topology:
        layers = read_topology(args.topology)
        name = Path(args.topology).stem
    else:
        if not Path(args.model).is_file():
            raise EngineError(f"model file {args.model} not found")
        layers = layers_from_model(args.model)
        name = Path(args.model).stem
    if args.bits:
        bits = _ints(args.bits, "--bits", (2, 3))
        layers = [l.with_bits(*bits) for l in layers]
    if args.first_last_bits is not None and not 1 <= args.first_last_bits <= 32:
        raise EngineError(f"--first-last-bits must be between 1 and 32, got {args.first_last_bits}")
    if args.first_last_bits is not None and not args.sweep_bits:
        edge = args.first_last_bits
        layers[0] = layers[0].with_bits(edge, edge, layers[0].obits)
        layers[-1] = layers[-1].with_bits(edge, edge, edge)
    return layers, name


def format_report(report: NetworkReport) -> str:
    """The per-layer table and the totals."""
    a = report.array
    bw = "unlimited" if a.dram_bytes_per_cycle is None else f"{a.dram_bytes_per_cycle:g} B/cycle"
    lines = [f"{a.rows}x{a.cols} {a.dataflow.upper()} array, SRAM KB ifmap/filter/ofmap "
             f"{a.ifmap_sram_kb:g}/{a.filter_sram_kb:g}/{a.ofmap_sram_kb:g}, DRAM {bw}, "
             f"clock {a.clock_ghz:g} GHz, PE bits {a.pe_bits or 'per layer'}"]
    head = (f"{'#':>3} {'layer':<20} {'W/A/O':>7} {'MMACs':>8} {'folds':>6} {'compute':>10} {'stall':>9} "
            f"{'total':>10} {'map%':>6} {'util%':>6} {'DRAM KB in/w/out':>24}")
    lines += [head, "-" * len(head)]
    for i, r in enumerate(report.layers):
        l, d = r.layer, r.dram_bytes
        dram = f"{d['ifmap'] / 1024:.0f}/{d['filter'] / 1024:.0f}/{d['ofmap'] / 1024:.0f}"
        lines.append(f"{i:>3} {l.name[:20]:<20} {f'{l.wbits}/{l.abits}/{l.obits}':>7} {r.macs / 1e6:>8.2f} "
                     f"{r.folds:>6} {r.compute_cycles:>10} {r.stall_cycles:>9} {r.total_cycles:>10} "
                     f"{100 * r.mapping_efficiency:>6.1f} {100 * r.overall_util:>6.1f} {dram:>24}")
    lines.append("-" * len(head))
    lines.append(f"total: {report.macs / 1e6:.1f} MMACs, {report.total_cycles} cycles "
                 f"({report.compute_cycles} compute + {report.stall_cycles} stall) = "
                 f"{report.seconds * 1e3:.3f} ms, utilization {100 * report.overall_util:.1f}%, DRAM "
                 f"{report.dram_bytes() / 1e6:.2f} MB (ifmap {report.dram_bytes('ifmap') / 1e6:.2f}, "
                 f"filter {report.dram_bytes('filter') / 1e6:.2f}, ofmap {report.dram_bytes('ofmap') / 1e6:.2f})")
    sram = ", ".join(f"{op} {report.sram_bytes(op + '_reads') / 1e6:.2f}/{report.sram_bytes(op + '_writes') / 1e6:.2f}"
                     for op in ("ifmap", "filter", "ofmap"))
    lines.append(f"SRAM MB read/written: {sram}")
    return "\n".join(lines)


def _write_sweep_csv(result, path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["dataflow", "bits", "rows", "cols", "peak", "dram_bytes", "bandwidth_gbps",
                    "total_cycles", "speedup"])
        for d, df in enumerate(result.dataflows):
            for p, b in enumerate(result.bits):
                for k, g in enumerate(result.bandwidths_gbps):
                    w.writerow([df, b, *result.shapes[p], f"{result.peak[p]:.4f}",
                                f"{result.dram_bytes[d, p]:.0f}", "unlimited" if g is None else g,
                                int(result.cycles[d, p, k]), f"{result.speedup[d, p, k]:.4f}"])
    return path


def _read_inputs(args: argparse.Namespace) -> tuple[SystolicArray, list[Layer], str]:
    """The array and the layers, with each SCALE-Sim setting we do not model as one stderr line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ScaleSimWarning)
        array = build_array(args)
        layers, name = load_layers(args)
    for w in caught:
        if issubclass(w.category, ScaleSimWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return array, layers, name


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out)
    array, layers, name = _read_inputs(args)
    out = Path(args.out)
    if args.sweep_bits:
        bits = _ints(args.sweep_bits, "--sweep-bits")
        if any(b > 32 for b in bits):
            raise EngineError(f"--sweep-bits values must be at most 32, got {args.sweep_bits!r}")
        first_last = 8 if args.first_last_bits is None else args.first_last_bits
        start = time.perf_counter()
        result = sweep_precision(layers, array, bits, _bandwidths(args.sweep_bandwidths),
                                 iso_area=args.iso_area, first_last_bits=first_last)
        seconds = time.perf_counter() - start
        gain = None
        if first_last < 8:  # the paper's estimate: what quantizing the first and last layers adds
            _, gain = first_last_gain(layers, array, bits, _bandwidths(args.sweep_bandwidths),
                                      iso_area=args.iso_area, first_last_bits=first_last)
        kind = "iso-area" if args.iso_area else "same array"
        print(f"{name}: precision sweep, {kind}, base {array.rows}x{array.cols} at {bits[0]} bits, "
              f"SRAM {array.ifmap_sram_kb:g}/{array.filter_sram_kb:g}/{array.ofmap_sram_kb:g} KB, "
              f"clock {array.clock_ghz:g} GHz, first/last layers at >= {first_last} bits")
        print(format_sweep(result))
        if gain is not None:
            print(format_first_last_gain(result, gain, first_last))
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise EngineError(f"cannot create output directory {out}: {err.strerror}") from None
        csv_path = _write_sweep_csv(result, out / "SWEEP_REPORT.csv")
        plot = plot_sweep(result, out / "sweep.png", title=f"{name}: speedup vs precision ({kind})")
        print(f"{len(result.dataflows) * len(bits) * len(result.bandwidths_gbps)} points in "
              f"{seconds * 1e3:.1f} ms; wrote {csv_path} and {plot}")
        return 0
    report = simulate_network(layers, array)
    print(format_report(report))
    paths = write_reports(report, out)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


__all__ = ["register", "run", "build_array", "load_layers", "format_report", "precision_layers"]
