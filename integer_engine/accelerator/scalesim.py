"""SCALE-Sim compatibility: read its ``.cfg`` and topology CSVs, write its ``COMPUTE_REPORT.csv``.

Config (INI, keys case-insensitive, ``:`` or ``=``)::

    [architecture_presets]  ArrayHeight, ArrayWidth, IfmapSramSzkB, FilterSramSzkB, OfmapSramSzkB,
                            Dataflow (os|ws|is), Bandwidth (words/cycle; 1 word = 1 byte)
    [run_presets]           InterfaceBandwidth: USER (use Bandwidth) | CALC (no limit: stall-free)

Topology CSV (header row first, trailing commas allowed, extra columns ignored)::

    conv form: Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels,
               Num Filter, Strides[, Stride width]
    GEMM form: Layer Name, M, N, K
"""
from __future__ import annotations

import configparser
import csv
import math
from pathlib import Path
from typing import Iterable

from integer_engine.errors import EngineError

from integer_engine.accelerator.systolic import Layer, LayerReport, NetworkReport, SystolicArray

TOPOLOGY_DIR = Path(__file__).resolve().parent.parent / "topologies"

COMPUTE_REPORT_COLUMNS = (
    "LayerID", "Total Cycles", "Stall Cycles", "Overall Util %", "Mapping Efficiency %", "Compute Util %",
)
OUR_COLUMNS = (
    "Layer Name", "MACs", "Folds", "Compute Cycles", "IFMAP DRAM Bytes", "Filter DRAM Bytes",
    "OFMAP DRAM Bytes", "Weight Bits", "Activation Bits", "Output Bits",
    "IFMAP SRAM Read Bytes", "IFMAP SRAM Write Bytes", "Filter SRAM Read Bytes",
    "Filter SRAM Write Bytes", "OFMAP SRAM Read Bytes", "OFMAP SRAM Write Bytes",
)

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


def read_config(path: str | Path, clock_ghz: float = 1.0) -> SystolicArray:
    """The `SystolicArray` a SCALE-Sim ``.cfg`` describes (unknown keys are ignored)."""
    path = Path(path)
    parser = configparser.ConfigParser(delimiters=(":", "="), inline_comment_prefixes=("#", ";"))
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as err:
        raise EngineError(f"cannot read config {path}: {err.strerror}") from None
    except configparser.Error as err:
        first = str(err).splitlines()[0]
        raise EngineError(f"{path} is not a SCALE-Sim config (INI): {first}") from None
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
        bandwidth = _positive_number(path, "Bandwidth", arch["bandwidth"], integer=False)
    dataflow = arch["dataflow"].strip().lower()
    if dataflow not in ("os", "ws", "is"):
        raise EngineError(f"{path}: Dataflow must be os, ws or is, got {dataflow!r}")
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


_CONV_COLUMNS = ("IFMAP Height", "IFMAP Width", "Filter Height", "Filter Width", "Channels",
                 "Num Filter", "Strides")


def read_topology(path: str | Path, wbits: int = 8, abits: int = 8, obits: int | None = None) -> list[Layer]:
    """Layers of a SCALE-Sim topology CSV; the form (conv or GEMM) is told by the field count.

    Every layer gets ``wbits``/``abits``/``obits`` (default ``obits = abits``).
    """
    path = resolve_topology(path)
    obits = abits if obits is None else obits
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as err:
        raise EngineError(f"cannot read topology {path}: {err.strerror}") from None
    except (UnicodeDecodeError, csv.Error):
        raise EngineError(f"{path} is not a text CSV topology") from None
    layers: list[Layer] = []
    for lineno, row in enumerate(rows, start=1):
        fields = [x.strip() for x in row]
        if lineno == 1 or not any(fields):
            continue  # the header, and SCALE-Sim's blank separator rows
        while fields and fields[-1] == "":
            fields.pop()
        name = fields[0] or f"layer{len(layers)}"
        numbers = fields[1:]
        if len(numbers) == 3:
            m, n, k = (_field_int(path, lineno, name, col, text) for col, text in zip("MNK", numbers))
            layer = Layer.gemm(name, m, n, k, wbits=wbits, abits=abits, obits=obits)
        elif len(numbers) >= 7:
            vals = [_field_int(path, lineno, name, col, text) for col, text in zip(_CONV_COLUMNS, numbers)]
            stride_w = None
            if len(numbers) >= 8 and numbers[7] != "":
                stride_w = _field_int(path, lineno, name, "Stride width", numbers[7])
            if vals[2] > vals[0] or vals[3] > vals[1]:
                raise EngineError(f"{path} line {lineno} ({name}): filter {vals[2]}x{vals[3]} is larger "
                                  f"than the IFMAP {vals[0]}x{vals[1]}; give the padded IFMAP size")
            layer = Layer(name, *vals[:6], stride=vals[6], stride_w=stride_w,
                          wbits=wbits, abits=abits, obits=obits)
        else:
            raise EngineError(f"{path} line {lineno} ({name}): expected 7 conv fields (IFMAP H, W, "
                              f"filter H, W, channels, filters, stride) or 3 GEMM fields (M, N, K), "
                              f"got {len(numbers)}")
        layers.append(layer)
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


def _row(index: int, r: LayerReport) -> list[str]:
    l = r.layer
    return [
        str(index), str(r.total_cycles), str(r.stall_cycles), repr(100 * r.overall_util),
        repr(100 * r.mapping_efficiency), repr(100 * r.compute_util),
        l.name, str(r.macs), str(r.folds), str(r.compute_cycles),
        str(r.dram_bytes["ifmap"]), str(r.dram_bytes["filter"]), str(r.dram_bytes["ofmap"]),
        str(l.wbits), str(l.abits), str(l.obits),
        *(str(r.sram_bytes[f"{op}_{rw}"]) for op in ("ifmap", "filter", "ofmap") for rw in ("reads", "writes")),
    ]


def write_compute_report(report: NetworkReport, out_dir: str | Path) -> Path:
    """Write ``out_dir/COMPUTE_REPORT.csv``: SCALE-Sim's six columns first, then ours."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EngineError(f"cannot create output directory {out_dir}: {err.strerror}") from None
    path = out_dir / "COMPUTE_REPORT.csv"
    lines = [", ".join(COMPUTE_REPORT_COLUMNS + OUR_COLUMNS) + ",\n"]
    lines += [", ".join(_row(i, r)) + ",\n" for i, r in enumerate(report.layers)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def read_compute_report(path: str | Path) -> list[dict[str, str]]:
    """Rows of a COMPUTE_REPORT.csv (ours or SCALE-Sim's) as dicts keyed by column name."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [[x.strip() for x in row] for row in csv.reader(f) if any(x.strip() for x in row)]
    header = [h for h in rows[0] if h]
    return [dict(zip(header, row)) for row in rows[1:]]
