"""SCALE-Sim compatibility: its ``.cfg`` and topology CSVs in, its three report files out.

Config (INI, keys case-insensitive, ``:`` or ``=``; SCALE-Sim 2 and 3 forms)::

    [architecture_presets]  ArrayHeight, ArrayWidth, IfmapSramSzkB, FilterSramSzkB, OfmapSramSzkB,
                            Dataflow (os|ws|is), Bandwidth (words/cycle; 1 word = 1 byte),
                            ReadRequestBuffer, WriteRequestBuffer (v3)
    [run_presets]           InterfaceBandwidth: USER (use Bandwidth) | CALC (no limit: stall-free),
                            UseRamulatorTrace (v3)
    [layout]                v3: Ifmap/FilterCustomLayout, Ifmap/FilterSRAMBank{Bandwidth,Num,Port}
    [sparsity]              v3: SparsitySupport, SparseRep, OptimizedMapping, BlockSize, ...

Every setting that changes SCALE-Sim 3's result but is not modelled here (sparsity on, Ramulator
traces, custom layouts, the per-operand bank bandwidths of USER mode) gives a one-line
`ScaleSimWarning`.

Topology CSV (a header row naming the columns, then one row per layer; trailing commas allowed;
columns are found by name, so extra ones such as v3's ``Sparsity`` N:M or a batch size are
ignored)::

    conv form: Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels,
               Num Filter, Strides[, Stride width]
    GEMM form: Layer Name, M, N, K

Reports (``, ``-separated with a trailing comma, SCALE-Sim 3's columns first, in its order, counts
in words of each operand's own width; then ours, in bytes): COMPUTE_REPORT.csv,
BANDWIDTH_REPORT.csv, DETAILED_ACCESS_REPORT.csv.
"""
from __future__ import annotations

import configparser
import csv
import math
import re
import warnings
from pathlib import Path
from typing import Callable, Iterable

from integer_engine.errors import EngineError

from integer_engine.accelerator.systolic import Layer, LayerReport, NetworkReport, SystolicArray

TOPOLOGY_DIR = Path(__file__).resolve().parent.parent / "topologies"

COMPUTE_REPORT_COLUMNS = (
    "LayerID", "Total Cycles (incl. prefetch)", "Total Cycles", "Stall Cycles", "Overall Util %",
    "Mapping Efficiency %", "Compute Util %",
)
OUR_COLUMNS = (
    "Layer Name", "MACs", "Folds", "Compute Cycles", "Prefetch Cycles", "IFMAP DRAM Bytes",
    "Filter DRAM Bytes", "OFMAP DRAM Bytes", "Weight Bits", "Activation Bits", "Output Bits",
    "IFMAP SRAM Read Bytes", "IFMAP SRAM Write Bytes", "Filter SRAM Read Bytes",
    "Filter SRAM Write Bytes", "OFMAP SRAM Read Bytes", "OFMAP SRAM Write Bytes",
)
BANDWIDTH_REPORT_COLUMNS = (
    "LayerID", "Avg IFMAP SRAM BW", "Avg FILTER SRAM BW", "Avg OFMAP SRAM BW", "Avg IFMAP DRAM BW",
    "Avg FILTER DRAM BW", "Avg OFMAP DRAM BW",
)
OUR_BANDWIDTH_COLUMNS = (
    "Layer Name", "Avg IFMAP SRAM Bytes/Cycle", "Avg FILTER SRAM Bytes/Cycle",
    "Avg OFMAP SRAM Bytes/Cycle", "Avg IFMAP DRAM Bytes/Cycle", "Avg FILTER DRAM Bytes/Cycle",
    "Avg OFMAP DRAM Bytes/Cycle",
)
DETAILED_ACCESS_REPORT_COLUMNS = (
    "LayerID",
    "SRAM IFMAP Start Cycle", "SRAM IFMAP Stop Cycle", "SRAM IFMAP Reads",
    "SRAM Filter Start Cycle", "SRAM Filter Stop Cycle", "SRAM Filter Reads",
    "SRAM OFMAP Start Cycle", "SRAM OFMAP Stop Cycle", "SRAM OFMAP Writes",
    "DRAM IFMAP Start Cycle", "DRAM IFMAP Stop Cycle", "DRAM IFMAP Reads",
    "DRAM Filter Start Cycle", "DRAM Filter Stop Cycle", "DRAM Filter Reads",
    "DRAM OFMAP Start Cycle", "DRAM OFMAP Stop Cycle", "DRAM OFMAP Writes",
)
OUR_DETAILED_COLUMNS = (
    "Layer Name", "SRAM IFMAP Read Bytes", "SRAM Filter Read Bytes", "SRAM OFMAP Write Bytes",
    "DRAM IFMAP Read Bytes", "DRAM Filter Read Bytes", "DRAM OFMAP Write Bytes",
    "DRAM OFMAP Read Words", "DRAM OFMAP Read Bytes",
)


class ScaleSimWarning(UserWarning):
    """A SCALE-Sim setting that changes SCALE-Sim's result but that this model does not model."""


def _warn(message: str) -> None:
    warnings.warn(message, ScaleSimWarning, stacklevel=4)  # points near the reader's caller

_REQUIRED_KEYS = ("ArrayHeight", "ArrayWidth", "IfmapSramSzkB", "FilterSramSzkB", "OfmapSramSzkB", "Dataflow")


def _positive_number(path: Path, key: str, text: str, integer: bool) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise EngineError(f"{path}: {key} must be {kind}, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise EngineError(f"{path}: {key} must be positive, got {text!r}")
    return value


def _parse(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(delimiters=(":", "="), inline_comment_prefixes=("#", ";"))
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as err:
        raise EngineError(f"cannot read config {path}: {err.strerror}") from None
    except configparser.Error as err:
        first = str(err).splitlines()[0]
        raise EngineError(f"{path} is not a SCALE-Sim config (INI): {first}") from None
    return parser


def _flag(path: Path, section: str, key: str, text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
        raise EngineError(f"{path}: [{section}] {key} must be True or False, got {text!r}")
    return value in ("true", "yes", "1", "on")


def _bandwidth(path: Path, text: str) -> float:
    """``Bandwidth`` in words per cycle; SCALE-Sim 3 also takes a list and uses its first value."""
    return _positive_number(path, "Bandwidth", text.split(",")[0].strip(), integer=False)


def _check_v3_sections(path: Path, parser: configparser.ConfigParser, user_bandwidth: float | None) -> None:
    """Validate SCALE-Sim 3's extra keys and warn about each one that changes its result here."""
    arch = parser["architecture_presets"]
    for key in ("ReadRequestBuffer", "WriteRequestBuffer"):
        if key.lower() in arch:  # read by SCALE-Sim 3.0.0 but used by none of its simulations
            _positive_number(path, key, arch[key.lower()], integer=True)
    run = parser["run_presets"] if parser.has_section("run_presets") else {}
    # SCALE-Sim 3 turns Ramulator on only for the exact text 'True'.
    if "useramulatortrace" in run and run["useramulatortrace"].strip() == "True":
        _warn(f"{path}: UseRamulatorTrace is on; SCALE-Sim 3 would replay Ramulator DRAM traces, "
              "here DRAM is one interface at a fixed bandwidth")
    if parser.has_section("sparsity") and "sparsitysupport" in parser["sparsity"]:
        text = parser["sparsity"]["sparsitysupport"]
        _flag(path, "sparsity", "SparsitySupport", text)  # checked as a boolean, but SCALE-Sim 3
        if text.strip().lower() == "true":                 # turns sparsity on only for "true"
            rep = parser["sparsity"].get("sparserep", "?").strip()
            _warn(f"{path}: SparsitySupport is on ({rep}); SCALE-Sim 3 would skip pruned weights "
                  "(the topology's N:M column), here every weight is dense")
    if not parser.has_section("layout"):
        return
    layout = parser["layout"]
    for operand in ("Ifmap", "Filter"):
        key = f"{operand}CustomLayout"
        if key.lower() in layout and _flag(path, "layout", key, layout[key.lower()]):
            _warn(f"{path}: {key} is on; SCALE-Sim 3 would model SRAM bank conflicts of that layout, "
                  "here SRAM reads never conflict")
    banks = {}
    for operand in ("Ifmap", "Filter"):
        key = f"{operand}SRAMBankBandwidth"
        if key.lower() in layout:
            banks[operand.lower()] = _positive_number(path, key, layout[key.lower()], integer=True)
        for extra in ("SRAMBankNum", "SRAMBankPort"):
            if f"{operand}{extra}".lower() in layout:
                _positive_number(path, f"{operand}{extra}", layout[f"{operand}{extra}".lower()], integer=True)
    if user_bandwidth is not None and banks:
        fills = ", ".join(f"{op} at {bw:g}" for op, bw in banks.items())
        _warn(f"{path}: SCALE-Sim 3 in USER mode fills {fills} words/cycle ([layout] bank bandwidths) "
              f"and uses Bandwidth {user_bandwidth:g} only to drain the ofmap; here all three share "
              f"one DRAM interface of {user_bandwidth:g} words/cycle")


def read_config(path: str | Path, clock_ghz: float = 1.0) -> SystolicArray:
    """The `SystolicArray` a SCALE-Sim 2 or 3 ``.cfg`` describes.

    Keys this model has no use for (offsets, banks, ports, request buffers, sparsity details) are
    read and checked; each setting that would change SCALE-Sim 3's numbers but is not modelled here
    emits a one-line `ScaleSimWarning`.
    """
    path = Path(path)
    parser = _parse(path)
    if not parser.has_section("architecture_presets"):
        raise EngineError(f"{path}: missing section [architecture_presets]")
    arch = parser["architecture_presets"]
    for key in _REQUIRED_KEYS:
        if key.lower() not in arch:
            raise EngineError(f"{path}: [architecture_presets] is missing {key} (e.g. '{key}: 32')")
    rows = int(_positive_number(path, "ArrayHeight", arch["arrayheight"], integer=True))
    cols = int(_positive_number(path, "ArrayWidth", arch["arraywidth"], integer=True))
    sizes = [_positive_number(path, k, arch[k.lower()], integer=False) for k in _REQUIRED_KEYS[2:5]]
    mode = "USER"
    if parser.has_section("run_presets") and "interfacebandwidth" in parser["run_presets"]:
        mode = parser["run_presets"]["interfacebandwidth"].strip().upper()
        if mode not in ("USER", "CALC"):
            raise EngineError(f"{path}: InterfaceBandwidth must be USER or CALC, got {mode!r}")
    bandwidth = None
    if mode == "USER":
        if "bandwidth" not in arch:
            raise EngineError(f"{path}: InterfaceBandwidth is USER but [architecture_presets] has no "
                              "Bandwidth (words per cycle); add one or set InterfaceBandwidth: CALC")
        bandwidth = _bandwidth(path, arch["bandwidth"])
    dataflow = arch["dataflow"].strip().lower()
    if dataflow not in ("os", "ws", "is"):
        raise EngineError(f"{path}: Dataflow must be os, ws or is, got {dataflow!r}")
    _check_v3_sections(path, parser, bandwidth)
    return SystolicArray(rows=rows, cols=cols, dataflow=dataflow, ifmap_sram_kb=sizes[0],
                         filter_sram_kb=sizes[1], ofmap_sram_kb=sizes[2],
                         dram_bytes_per_cycle=bandwidth, clock_ghz=clock_ghz)


def resolve_topology(name_or_path: str | Path) -> Path:
    """A path as given, or one of the shipped topologies by name (``resnet50``, ``svhn``, ...)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = TOPOLOGY_DIR / f"{name_or_path}.csv"
    if shipped.exists():
        return shipped
    names = ", ".join(sorted(p.stem for p in TOPOLOGY_DIR.glob("*.csv")))
    raise EngineError(f"topology {str(name_or_path)!r} not found: give a CSV path or one of {names}")


def _field_int(path: Path, lineno: int, name: str, column: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise EngineError(f"{path} line {lineno} ({name}): {column} must be an integer, got {text!r}") from None
    if value < 1:
        raise EngineError(f"{path} line {lineno} ({name}): {column} must be positive, got {value}")
    return value


# Header names (lower case, single spaces) -> field; the first column is always the layer name.
_CONV_COLUMNS = {
    "ifmap height": "IFMAP Height", "ifmap width": "IFMAP Width", "filter height": "Filter Height",
    "filter width": "Filter Width", "channels": "Channels", "num filter": "Num Filter",
    "num filters": "Num Filter", "strides": "Strides", "stride": "Strides", "stride height": "Strides",
    "stride width": "Stride width",
}
_CONV_REQUIRED = ("IFMAP Height", "IFMAP Width", "Filter Height", "Filter Width", "Channels",
                  "Num Filter", "Strides")
_GEMM_REQUIRED = ("M", "N", "K")


def _column_index(path: Path, header: list[str]) -> tuple[str, dict[str, int]]:
    """The topology's form (``conv`` or ``gemm``) and where each needed column is, by name."""
    names = [re.sub(r"\s+", " ", h.strip().lower()) for h in header]
    gemm = {n.upper(): i for i, n in enumerate(names) if n in ("m", "n", "k") and i > 0}
    if len(gemm) == 3:
        return "gemm", gemm
    conv: dict[str, int] = {}
    for i, n in enumerate(names[1:], start=1):
        if n in _CONV_COLUMNS:
            conv.setdefault(_CONV_COLUMNS[n], i)
    missing = [c for c in _CONV_REQUIRED if c not in conv]
    if missing:
        raise EngineError(
            f"{path} line 1: the header must name the columns (conv: Layer name, "
            f"{', '.join(_CONV_REQUIRED)}; GEMM: Layer name, M, N, K); missing {', '.join(missing)}")
    return "conv", conv


def _layer_from_row(path: Path, lineno: int, form: str, index: dict[str, int], fields: list[str],
                    bits: dict[str, int]) -> Layer:
    name = fields[0] or f"line{lineno}"
    needed = _GEMM_REQUIRED if form == "gemm" else _CONV_REQUIRED
    last = max(index[c] for c in needed)
    if len(fields) <= last or any(fields[index[c]] == "" for c in needed):
        raise EngineError(f"{path} line {lineno} ({name}): expected {len(needed)} {form} fields "
                          f"({', '.join(needed)}), got {len([f for f in fields[1:] if f])}")
    vals = {c: _field_int(path, lineno, name, c, fields[index[c]]) for c in needed}
    if form == "gemm":
        return Layer.gemm(name, vals["M"], vals["N"], vals["K"], **bits)
    stride_w = None
    col = index.get("Stride width")
    if col is not None and col < len(fields) and fields[col] != "":
        stride_w = _field_int(path, lineno, name, "Stride width", fields[col])
    if vals["Filter Height"] > vals["IFMAP Height"] or vals["Filter Width"] > vals["IFMAP Width"]:
        raise EngineError(f"{path} line {lineno} ({name}): filter {vals['Filter Height']}x"
                          f"{vals['Filter Width']} is larger than the IFMAP {vals['IFMAP Height']}x"
                          f"{vals['IFMAP Width']}; give the padded IFMAP size")
    if "DP" in name:
        _warn(f"{path} line {lineno} ({name}): SCALE-Sim 3 runs a layer whose name contains 'DP' as "
              f"{vals['Channels']} one-channel (depthwise) layers; here it is one ordinary conv")
    conv = [vals[c] for c in _CONV_REQUIRED]
    return Layer(name, *conv[:6], stride=conv[6], stride_w=stride_w, **bits)


def read_topology(path: str | Path, wbits: int = 8, abits: int = 8, obits: int | None = None) -> list[Layer]:
    """Layers of a SCALE-Sim topology CSV; the header names the columns (conv or GEMM form).

    Every layer gets ``wbits``/``abits``/``obits`` (default ``obits = abits``).
    """
    path = resolve_topology(path)
    bits = {"wbits": wbits, "abits": abits, "obits": abits if obits is None else obits}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as err:
        raise EngineError(f"cannot read topology {path}: {err.strerror}") from None
    except (UnicodeDecodeError, csv.Error):
        raise EngineError(f"{path} is not a text CSV topology") from None
    if not rows or not any(x.strip() for x in rows[0]):
        raise EngineError(f"{path}: no layers (a header row, then one row per layer)")
    form, index = _column_index(path, rows[0])
    layers = [_layer_from_row(path, lineno, form, index, [x.strip() for x in row], bits)
              for lineno, row in enumerate(rows[1:], start=2)
              if any(x.strip() for x in row)]  # SCALE-Sim's files carry blank separator rows
    if not layers:
        raise EngineError(f"{path}: no layers (a header row, then one row per layer)")
    return layers


def write_topology(path: str | Path, layers: Iterable[Layer]) -> Path:
    """Write ``layers`` in SCALE-Sim's conv form (what `read_topology` reads back)."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
                "Num Filter, Strides,\n")
        for l in layers:
            f.write(f"{l.name},{l.ifmap_h},{l.ifmap_w},{l.filter_h},{l.filter_w},{l.channels},"
                    f"{l.num_filters},{l.stride},\n")
    return path


def _timeline(r: LayerReport) -> dict[str, tuple[int, int]]:
    """Start and stop cycle of each access stream, cycle 0 being the first compute cycle.

    The model spreads a layer's traffic over the layer: the SRAMs and the ofmap drain are busy
    from cycle 0 to ``total - 1``, the ifmap and filter fills from ``-prefetch`` (the first fold's
    tiles) to ``total - 1``.
    """
    stop = r.total_cycles - 1
    return {"sram": (0, stop), "fill": (-r.prefetch_cycles, stop), "drain": (0, stop)}


def _compute_row(r: LayerReport) -> list[object]:
    l = r.layer
    return [
        r.total_cycles + r.prefetch_cycles, r.total_cycles, r.stall_cycles, 100 * r.overall_util,
        100 * r.mapping_efficiency, 100 * r.compute_util,
        l.name, r.macs, r.folds, r.compute_cycles, r.prefetch_cycles,
        r.dram_bytes["ifmap"], r.dram_bytes["filter"], r.dram_bytes["ofmap"], l.wbits, l.abits, l.obits,
        *(r.sram_bytes[f"{op}_{rw}"] for op in ("ifmap", "filter", "ofmap") for rw in ("reads", "writes")),
    ]


def _ofmap_dram_split(r: LayerReport) -> tuple[int, int]:
    """(bytes written, bytes read back) of the ofmap DRAM traffic: spilled sums go both ways."""
    back = r.psum_spill_bytes // 2
    return r.dram_bytes["ofmap"] - back, back


def _bandwidth_row(r: LayerReport) -> list[object]:
    """Words (then bytes) per cycle: SRAM counts over the layer's cycles, DRAM over each stream's span."""
    w, span = r.words, _timeline(r)
    cycles = r.total_cycles
    fill = span["fill"][1] - span["fill"][0] + 1
    drain = span["drain"][1] - span["drain"][0] + 1
    written, _ = _ofmap_dram_split(r)
    return [
        w["ifmap_sram_reads"] / cycles, w["filter_sram_reads"] / cycles, w["ofmap_sram_writes"] / cycles,
        w["ifmap_dram_reads"] / fill, w["filter_dram_reads"] / fill, w["ofmap_dram_writes"] / drain,
        r.layer.name, r.sram_bytes["ifmap_reads"] / cycles, r.sram_bytes["filter_reads"] / cycles,
        r.sram_bytes["ofmap_writes"] / cycles, r.dram_bytes["ifmap"] / fill,
        r.dram_bytes["filter"] / fill, written / drain,
    ]


def _detailed_row(r: LayerReport) -> list[object]:
    w, span = r.words, _timeline(r)
    written, back = _ofmap_dram_split(r)
    return [
        *span["sram"], w["ifmap_sram_reads"], *span["sram"], w["filter_sram_reads"],
        *span["sram"], w["ofmap_sram_writes"],
        *span["fill"], w["ifmap_dram_reads"], *span["fill"], w["filter_dram_reads"],
        *span["drain"], w["ofmap_dram_writes"],
        r.layer.name, r.sram_bytes["ifmap_reads"], r.sram_bytes["filter_reads"],
        r.sram_bytes["ofmap_writes"], r.dram_bytes["ifmap"], r.dram_bytes["filter"], written,
        w["ofmap_dram_reads"], back,
    ]


def _cell(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _write_csv(report: NetworkReport, path: Path, columns: tuple[str, ...],
               row: Callable[[LayerReport], list[object]]) -> Path:
    """One SCALE-Sim-style report: ``, ``-separated, a trailing comma, LayerID first."""
    lines = [", ".join(columns) + ",\n"]
    lines += [", ".join(_cell(x) for x in (i, *row(r))) + ",\n" for i, r in enumerate(report.layers)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _out_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EngineError(f"cannot create output directory {out_dir}: {err.strerror}") from None
    return out_dir


def write_compute_report(report: NetworkReport, out_dir: str | Path) -> Path:
    """Write ``out_dir/COMPUTE_REPORT.csv``: SCALE-Sim 3's seven columns first, then ours.

    ``Total Cycles (incl. prefetch)`` adds the first fold's tile load (``Prefetch Cycles``), which
    cannot overlap compute, to ``Total Cycles``.
    """
    return _write_csv(report, _out_dir(out_dir) / "COMPUTE_REPORT.csv", COMPUTE_REPORT_COLUMNS + OUR_COLUMNS,
                      _compute_row)


def write_reports(report: NetworkReport, out_dir: str | Path) -> list[Path]:
    """Write SCALE-Sim 3's three reports to ``out_dir``: COMPUTE_REPORT.csv, BANDWIDTH_REPORT.csv
    (average words, then bytes, per cycle) and DETAILED_ACCESS_REPORT.csv (start/stop cycles and
    access counts in words of each operand's width, then bytes)."""
    out = _out_dir(out_dir)
    return [
        write_compute_report(report, out),
        _write_csv(report, out / "BANDWIDTH_REPORT.csv", BANDWIDTH_REPORT_COLUMNS + OUR_BANDWIDTH_COLUMNS,
                   _bandwidth_row),
        _write_csv(report, out / "DETAILED_ACCESS_REPORT.csv",
                   DETAILED_ACCESS_REPORT_COLUMNS + OUR_DETAILED_COLUMNS, _detailed_row),
    ]


def read_report(path: str | Path) -> list[dict[str, str]]:
    """Rows of a SCALE-Sim report CSV (ours or SCALE-Sim's) as dicts keyed by column name."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [[x.strip() for x in row] for row in csv.reader(f) if any(x.strip() for x in row)]
    header = [h for h in rows[0] if h]
    return [dict(zip(header, row)) for row in rows[1:]]
