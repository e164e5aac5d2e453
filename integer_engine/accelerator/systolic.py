"""Analytic cost model of a systolic array running convolutions and GEMMs, with operand precision.

The compute part is SCALE-Sim's mapping (v2, unchanged in 3.0.0), reproduced cycle-exactly in closed form. With
``Npx`` output pixels, window ``W = R*S*C`` and ``K`` filters, each dataflow maps the GEMM
``(Npx x W) @ (W x K)`` onto an ``rows x cols`` array as spatial rows ``Sr``, spatial columns
``Sc`` and a streamed (temporal) dimension ``T``::

    OS: Sr = Npx, Sc = K,   T = W        WS: Sr = W, Sc = K, T = Npx        IS: Sr = W, Sc = Npx, T = K

    folds           = ceil(Sr / rows) * ceil(Sc / cols)       (column folds outer, row folds inner)
    cycles per fold = T' + rows + cols - 2                    (OS)
                    = T' + 2*rows + cols - 2                  (WS, IS: + preload of the stationary tile)
    compute cycles  = folds * cycles_per_fold - 1             (SCALE-Sim's stall-free total)

where ``T' = T * passes`` and ``passes = ceil(wbits/pe_bits) * ceil(abits/pe_bits)`` is how many
PE-cycles a MAC wider than the PE takes (bit-slice decomposition; 1 when the PE is wide enough).

The memory part is ours (SCALE-Sim fixes every element at one byte). Every operand is counted at
its bit width, the ifmap as the pixels some window touches (`touched_extent`): an SRAM of ``S``
KB, double-buffered, keeps ``S*1024/2`` bytes live, i.e. ``S*1024*8/2/bits`` elements. DRAM traffic per operand follows the fold loop nest: an operand that
the outer loop sweeps ``n`` times costs ``X + (n-1) * max(0, X - B)`` bytes (``X`` its size,
``B`` the live half of its SRAM: what fits stays on chip, the rest is streamed again), and
partial sums that do not fit in the ofmap SRAM go out to DRAM and come back once per extra row
fold. Time per layer is a roofline over double-buffered transfers:
``total = max(compute_cycles, ceil(dram_bytes / bytes_per_cycle))``; the difference is stalls.
See docs/accelerator.md for the full equations and assumptions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Sequence

import numpy as np

from integer_engine.errors import EngineError

DATAFLOWS = ("os", "ws", "is")
DATAFLOW_NAMES = {"os": "output stationary", "ws": "weight stationary", "is": "input stationary"}
MAX_BITS = 32


def _check_int(owner: str, name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise EngineError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_bits(owner: str, name: str, value: object) -> int:
    bits = _check_int(owner, name, value)
    if bits > MAX_BITS:
        raise EngineError(f"{owner}: {name} must be between 1 and {MAX_BITS}, got {bits}")
    return bits


@dataclass(frozen=True)
class Layer:
    """One conv (or GEMM) layer in SCALE-Sim's terms, with its operand precisions.

    No padding: ``ofmap_h = ceil((ifmap_h - filter_h + stride) / stride)`` (SCALE-Sim's rule), so a
    padded layer is described by the input extent its windows cover, ``(out - 1) * stride + filter``. A GEMM ``(M x K) @ (K x N)`` is the conv
    ``ifmap M x K, filter 1 x K, 1 channel, N filters, stride 1`` (SCALE-Sim's own encoding).
    ``wbits``/``abits`` are the weight and input-activation widths, ``obits`` the width the
    outputs are stored at (the next layer's activations).
    """

    name: str
    ifmap_h: int
    ifmap_w: int
    filter_h: int
    filter_w: int
    channels: int
    num_filters: int
    stride: int = 1
    stride_w: int | None = None
    kind: str = "conv"
    wbits: int = 8
    abits: int = 8
    obits: int = 8

    def __post_init__(self) -> None:
        owner = f"layer {self.name!r}"
        for name in ("ifmap_h", "ifmap_w", "filter_h", "filter_w", "channels", "num_filters", "stride"):
            object.__setattr__(self, name, _check_int(owner, name, getattr(self, name)))
        if self.stride_w is not None:
            object.__setattr__(self, "stride_w", _check_int(owner, "stride_w", self.stride_w))
        for name in ("wbits", "abits", "obits"):
            object.__setattr__(self, name, _check_bits(owner, name, getattr(self, name)))
        if self.kind not in ("conv", "gemm"):
            raise EngineError(f"{owner}: kind must be 'conv' or 'gemm', got {self.kind!r}")
        if self.filter_h > self.ifmap_h or self.filter_w > self.ifmap_w:
            raise EngineError(
                f"{owner}: filter {self.filter_h}x{self.filter_w} is larger than its input "
                f"{self.ifmap_h}x{self.ifmap_w}; give the padded input size"
            )

    @classmethod
    def gemm(cls, name: str, m: int, n: int, k: int, **bits: int) -> "Layer":
        """The GEMM ``(m x k) @ (k x n)``: m output rows (pixels), n outputs each (filters)."""
        _check_int(f"layer {name!r}", "K", k)
        return cls(name, m, k, 1, k, 1, n, 1, kind="gemm", **bits)

    @classmethod
    def from_dict(cls, entry: Mapping[str, object]) -> "Layer":
        """Build from ``{name, kind, ifmap_h, ifmap_w, filter_h, filter_w, channels, num_filters,
        stride, wbits, abits[, obits]}``; a gemm may give ``m, n, k`` instead of the conv fields."""
        name = str(entry.get("name", "?"))
        bits = {b: entry[b] for b in ("wbits", "abits", "obits") if entry.get(b) is not None}
        try:
            if entry.get("kind") == "gemm" and "m" in entry:
                return cls.gemm(name, entry["m"], entry["n"], entry["k"], **bits)  # type: ignore[arg-type]
            fields = ("ifmap_h", "ifmap_w", "filter_h", "filter_w", "channels", "num_filters")
            values = {f: entry[f] for f in fields}
        except KeyError as err:
            raise EngineError(f"layer {name!r}: missing field {err.args[0]!r}") from None
        kind = str(entry.get("kind", "conv"))
        kind = "conv" if kind == "linear" else kind  # a linear layer is a 1x1 conv on a 1x1 map
        return cls(name, **values, stride=entry.get("stride", 1), stride_w=entry.get("stride_w"),  # type: ignore[arg-type]
                   kind=kind, **bits)

    def with_bits(self, wbits: int, abits: int, obits: int | None = None) -> "Layer":
        return replace(self, wbits=wbits, abits=abits, obits=abits if obits is None else obits)

    @property
    def strides(self) -> tuple[int, int]:
        return self.stride, self.stride if self.stride_w is None else self.stride_w

    @property
    def ofmap_h(self) -> int:
        return -(-(self.ifmap_h - self.filter_h) // self.strides[0]) + 1

    @property
    def ofmap_w(self) -> int:
        return -(-(self.ifmap_w - self.filter_w) // self.strides[1]) + 1

    @property
    def ofmap_pixels(self) -> int:
        return self.ofmap_h * self.ofmap_w

    @property
    def ifmap_touched(self) -> int:
        """Input elements at least one window reads (what a strided layer must fetch)."""
        sh, sw = self.strides
        return (int(touched_extent(self.ifmap_h, self.filter_h, sh))
                * int(touched_extent(self.ifmap_w, self.filter_w, sw)) * self.channels)

    @property
    def window(self) -> int:
        return self.filter_h * self.filter_w * self.channels

    @property
    def macs(self) -> int:
        return self.ofmap_pixels * self.window * self.num_filters


@dataclass(frozen=True)
class SystolicArray:
    """The accelerator: array shape, dataflow, SRAMs, DRAM bandwidth and PE precision.

    ``dram_bytes_per_cycle=None`` means unlimited bandwidth (SCALE-Sim's stall-free numbers).
    ``pe_bits=None`` means each PE is as wide as the widest operand it meets (one cycle per MAC).
    """

    rows: int = 32
    cols: int = 32
    dataflow: str = "ws"
    ifmap_sram_kb: float = 64.0
    filter_sram_kb: float = 64.0
    ofmap_sram_kb: float = 64.0
    dram_bytes_per_cycle: float | None = None
    clock_ghz: float = 1.0
    pe_bits: int | None = None

    def __post_init__(self) -> None:
        owner = "accelerator config"
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise EngineError(f"{owner}: the array must be at least 1x1, got {self.rows}x{self.cols}")
        object.__setattr__(self, "dataflow", str(self.dataflow).strip().lower())
        if self.dataflow not in DATAFLOWS:
            raise EngineError(f"{owner}: dataflow must be one of os, ws, is; got {self.dataflow!r}")
        for name in ("ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.number)) or not value > 0 or not math.isfinite(value):
                raise EngineError(f"{owner}: {name} must be a positive number of KB, got {value!r}")
        bw = self.dram_bytes_per_cycle
        if bw is not None and (not isinstance(bw, (int, float, np.number)) or not bw > 0):
            raise EngineError(f"{owner}: DRAM bandwidth must be positive (or unlimited), got {bw!r}")
        if not isinstance(self.clock_ghz, (int, float, np.number)) or not self.clock_ghz > 0:
            raise EngineError(f"{owner}: clock must be a positive number of GHz, got {self.clock_ghz!r}")
        if self.pe_bits is not None:
            _check_bits(owner, "pe_bits", self.pe_bits)

    @staticmethod
    def bytes_per_cycle(gbps: float, clock_ghz: float) -> float:
        """GB/s at a clock in GHz -> bytes per cycle (1 GB = 1e9 bytes)."""
        return float(gbps) / float(clock_ghz)

    def with_bandwidth_gbps(self, gbps: float | None) -> "SystolicArray":
        bw = None if gbps is None else self.bytes_per_cycle(gbps, self.clock_ghz)
        return replace(self, dram_bytes_per_cycle=bw)

    @property
    def num_pes(self) -> int:
        return self.rows * self.cols

    @property
    def bandwidth_gbps(self) -> float | None:
        bw = self.dram_bytes_per_cycle
        return None if bw is None else bw * self.clock_ghz


# --- The vectorized core: every quantity below is a NumPy array over layers. -------------------

_LAYER_FIELDS = ("ifmap_h", "ifmap_w", "filter_h", "filter_w", "channels", "num_filters",
                 "stride_h", "stride_w", "wbits", "abits", "obits")


def layer_table(layers: Sequence[Layer]) -> dict[str, np.ndarray]:
    """Column arrays (int64) of the layers' shapes and bits, the input of `evaluate`."""
    rows = [(l.ifmap_h, l.ifmap_w, l.filter_h, l.filter_w, l.channels, l.num_filters,
             *l.strides, l.wbits, l.abits, l.obits) for l in layers]
    cols = np.array(rows, dtype=np.int64).reshape(len(rows), len(_LAYER_FIELDS)).T
    return dict(zip(_LAYER_FIELDS, cols))


def _ceil_div(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    return -(-a // b)


def touched_extent(size: np.ndarray | int, filt: np.ndarray | int, stride: np.ndarray | int) -> np.ndarray:
    """Rows (or columns) of an input of ``size`` that at least one window of ``filt`` reads.

    With ``E = ceil((size - filt) / stride) + 1`` windows starting at ``0, stride, ..., (E-1)*stride``,
    each window adds the ``min(filt, stride)`` rows before the next one starts, and the last one
    adds what is left of it inside the input::

        touched = (E - 1) * min(filt, stride) + clip(size - (E - 1) * stride, 0, filt)

    (SCALE-Sim's ``ceil`` counts a last window that sticks out of the input, even one that starts
    past its end when ``stride > filt``; only its rows inside the input are fetched.) For ``filt >= stride`` that is ``min(size, (E-1)*stride + filt)`` (the windows overlap or abut);
    for a 1x1 stride-2 downsample it is every other row, ``E``. Works elementwise on arrays.
    """
    size, filt, stride = np.asarray(size), np.asarray(filt), np.asarray(stride)
    starts_last = (_ceil_div(size - filt, stride)) * stride  # (E - 1) * stride
    return starts_last // stride * np.minimum(filt, stride) + np.clip(size - starts_last, 0, filt)


def _spill(tile_bytes_full: np.ndarray, tile_bytes_last: np.ndarray, n_full: np.ndarray,
           capacity: float) -> np.ndarray:
    """Sum over column folds of the bytes of a per-fold tile that do not fit: sum max(0, X - B)."""
    return (n_full * np.maximum(0.0, tile_bytes_full - capacity)
            + np.maximum(0.0, tile_bytes_last - capacity))


def evaluate(table: Mapping[str, np.ndarray], array: SystolicArray) -> dict[str, np.ndarray]:
    """All per-layer results for one accelerator, as arrays over the layers of ``table``.

    Cycles and counts are int64; bytes are float64 (a 3-bit operand takes 3/8 byte per element).
    """
    R, C = array.rows, array.cols  # the array's rows and columns (not the filter's R x S)
    ih, iw, fh, fw = table["ifmap_h"], table["ifmap_w"], table["filter_h"], table["filter_w"]
    ch, nf = table["channels"], table["num_filters"]
    wb, ab, ob = (table[k].astype(np.float64) for k in ("wbits", "abits", "obits"))
    # SCALE-Sim's ceil((H - R + S) / S), i.e. a partial last window still counts as an output.
    eh = _ceil_div(ih - fh, table["stride_h"]) + 1
    ew = _ceil_div(iw - fw, table["stride_w"]) + 1
    npx = eh * ew
    win = fh * fw * ch
    macs = npx * win * nf

    df = array.dataflow
    sr, sc, t = {"os": (npx, nf, win), "ws": (win, nf, npx), "is": (win, npx, nf)}[df]
    if array.pe_bits is None:
        passes = np.ones_like(macs)
    else:
        passes = _ceil_div(table["wbits"], array.pe_bits) * _ceil_div(table["abits"], array.pe_bits)
    t_eff = t * passes
    row_folds = _ceil_div(sr, R)
    col_folds = _ceil_div(sc, C)
    folds = row_folds * col_folds
    if df == "os":
        cycles_per_fold = t_eff + R + C - 2
        util_window = cycles_per_fold  # SCALE-Sim's compute-util denominator per fold
    else:
        cycles_per_fold = t_eff + 2 * R + C - 2
        util_window = cycles_per_fold + C - 1
    # SCALE-Sim reports the index of the last cycle (hence -1); the floor only matters for a 1x1
    # OS array, where there is no fill or drain and -1 would undercut one MAC per PE per cycle.
    compute_cycles = np.maximum(folds * cycles_per_fold - 1, _ceil_div(sr * sc * t_eff, R * C))
    # Sum over folds of used PEs is exactly Sr*Sc, so the per-fold means have closed forms.
    mapping_eff = sr * sc / (folds * R * C)
    compute_util = sr * sc * t_eff / (folds * R * C * util_window)

    # Operand sizes in bytes at their bit widths; partial sums at the exact accumulator width.
    # A strided layer fetches only the input pixels some window reads (SCALE-Sim does the same).
    psum_bits = wb + ab + np.ceil(np.log2(win.astype(np.float64)))
    ifmap_words = (touched_extent(ih, fh, table["stride_h"]) * touched_extent(iw, fw, table["stride_w"])
                   * ch)
    ifmap_bytes = ifmap_words * ab / 8
    filter_bytes = win * nf * wb / 8
    ofmap_bytes = npx * nf * ob / 8
    live = 1024.0 / 2.0  # double-buffered: half of each SRAM is live, the other half prefetches
    b_if, b_fl, b_of = array.ifmap_sram_kb * live, array.filter_sram_kb * live, array.ofmap_sram_kb * live

    full_cols = sc // C  # column folds using all C columns; then one partial fold of sc % C
    last_cols = sc - full_cols * C
    extra_rows = row_folds - 1
    zero = np.zeros(len(macs))
    psum_spill = zero
    # SRAM words the array reads (SCALE-Sim's request counts) and the first fold's operand tiles.
    first_r, first_c = np.minimum(sr, R), np.minimum(sc, C)
    if df == "os":
        # Column fold = a filter tile reused across all pixel (row) folds; every column fold
        # sweeps the whole ifmap again.
        ifmap_dram = ifmap_bytes + (col_folds - 1) * np.maximum(0.0, ifmap_bytes - b_if)
        filter_dram = filter_bytes + extra_rows * _spill(win * C * wb / 8, win * last_cols * wb / 8,
                                                         full_cols, b_fl)
        ifmap_read_words, filter_read_words = npx * win * col_folds, win * nf * row_folds
        ofmap_write_words = npx * nf  # sums finish inside the PEs
        first_ifmap, first_filter = first_r * win, win * first_c
    else:
        if df == "ws":
            # Weights are read once; each column fold sweeps the whole ifmap; its
            # Npx x cols partial sums live across the row folds (the reduction).
            ifmap_dram = ifmap_bytes + (col_folds - 1) * np.maximum(0.0, ifmap_bytes - b_if)
            filter_dram = filter_bytes
            psum_full, psum_last = npx * C * psum_bits / 8, npx * last_cols * psum_bits / 8
            ifmap_read_words, filter_read_words = npx * win * col_folds, win * nf
            first_ifmap, first_filter = npx * first_r, first_r * first_c
        else:
            # Inputs are read once; each column (pixel) fold sweeps all weights; its
            # K x cols partial sums live across the row folds.
            ifmap_dram = ifmap_bytes
            filter_dram = filter_bytes + (col_folds - 1) * np.maximum(0.0, filter_bytes - b_fl)
            psum_full, psum_last = nf * C * psum_bits / 8, nf * last_cols * psum_bits / 8
            ifmap_read_words, filter_read_words = win * npx, win * nf * col_folds
            first_ifmap, first_filter = first_r * first_c, first_r * nf
        # Spilled partial sums: written after each of the first n-1 row folds, read back after.
        psum_spill = 2 * extra_rows * _spill(psum_full, psum_last, full_cols, b_of)
        ofmap_write_words = npx * nf * row_folds  # every partial sum and every final sum
    psum_sram = (ofmap_write_words - npx * nf) * psum_bits / 8
    ofmap_dram = ofmap_bytes + psum_spill
    dram_bytes = ifmap_dram + filter_dram + ofmap_dram
    # The first fold cannot start before its tiles are in (at most the live half of each SRAM).
    prefetch_bytes = (np.minimum(first_ifmap * ab / 8, b_if) + np.minimum(first_filter * wb / 8, b_fl))

    if array.dram_bytes_per_cycle is None:
        dram_cycles = np.zeros_like(compute_cycles)
        prefetch_cycles = np.zeros_like(compute_cycles)
    else:
        dram_cycles = np.ceil(dram_bytes / array.dram_bytes_per_cycle).astype(np.int64)
        prefetch_cycles = np.ceil(prefetch_bytes / array.dram_bytes_per_cycle).astype(np.int64)
    total_cycles = np.maximum(compute_cycles, dram_cycles)
    spill_words = psum_spill / 2 * 8 / psum_bits  # each direction
    return {
        "macs": macs, "ofmap_h": eh, "ofmap_w": ew, "sr": sr, "sc": sc, "t": t, "passes": passes,
        "row_folds": row_folds, "col_folds": col_folds, "folds": folds,
        "cycles_per_fold": cycles_per_fold, "compute_cycles": compute_cycles,
        "dram_cycles": dram_cycles, "total_cycles": total_cycles,
        "stall_cycles": total_cycles - compute_cycles, "prefetch_cycles": prefetch_cycles,
        "prefetch_bytes": prefetch_bytes,
        "mapping_efficiency": mapping_eff, "compute_util": compute_util,
        "overall_util": macs / (total_cycles * float(R * C)),
        "ifmap_sram_reads": ifmap_read_words * ab / 8, "ifmap_sram_writes": ifmap_dram,
        "filter_sram_reads": filter_read_words * wb / 8, "filter_sram_writes": filter_dram,
        # ofmap SRAM: written with every partial and final sum and with spilled sums coming back
        # from DRAM; read for partial-sum accumulation and for everything drained to DRAM.
        "ofmap_sram_writes": psum_sram + ofmap_bytes + psum_spill / 2,
        "ofmap_sram_reads": psum_sram + ofmap_bytes + psum_spill / 2,
        "ifmap_dram_bytes": ifmap_dram, "filter_dram_bytes": filter_dram, "ofmap_dram_bytes": ofmap_dram,
        "psum_spill_bytes": psum_spill, "dram_bytes": dram_bytes,
        # Counts in words of each operand's own width (SCALE-Sim's units; its words are bytes).
        "ifmap_sram_read_words": ifmap_read_words, "filter_sram_read_words": filter_read_words,
        "ofmap_sram_write_words": ofmap_write_words,
        "ifmap_dram_read_words": ifmap_dram * 8 / ab, "filter_dram_read_words": filter_dram * 8 / wb,
        "ofmap_dram_write_words": npx * nf + spill_words, "ofmap_dram_read_words": spill_words,
    }


WORD_COUNTS = ("ifmap_sram_reads", "filter_sram_reads", "ofmap_sram_writes", "ifmap_dram_reads",
               "filter_dram_reads", "ofmap_dram_writes", "ofmap_dram_reads")

# --- Friendly wrappers --------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerReport:
    """The model's numbers for one layer (bytes rounded up to whole bytes)."""

    layer: Layer
    macs: int
    folds: int
    compute_cycles: int
    stall_cycles: int
    total_cycles: int
    mapping_efficiency: float  # fraction, 0..1
    compute_util: float
    overall_util: float
    sram_bytes: dict[str, int]  # {"ifmap_reads", "ifmap_writes", "filter_reads", ...}
    dram_bytes: dict[str, int]  # {"ifmap", "filter", "ofmap"}
    prefetch_cycles: int = 0  # loading the first fold's tiles before compute can start
    psum_spill_bytes: int = 0  # of dram_bytes["ofmap"]: partial sums out to DRAM and back, both ways
    words: dict[str, int] = field(default_factory=dict)  # SCALE-Sim's access counts, see WORD_COUNTS

    @property
    def dram_total(self) -> int:
        return sum(self.dram_bytes.values())


@dataclass(frozen=True)
class NetworkReport:
    array: SystolicArray
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def total_cycles(self) -> int:
        return sum(r.total_cycles for r in self.layers)

    @property
    def compute_cycles(self) -> int:
        return sum(r.compute_cycles for r in self.layers)

    @property
    def stall_cycles(self) -> int:
        return sum(r.stall_cycles for r in self.layers)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.layers)

    @property
    def overall_util(self) -> float:
        return self.macs / (self.total_cycles * self.array.num_pes) if self.layers else 0.0

    def sram_bytes(self, key: str) -> int:
        """Total of one SRAM counter, e.g. ``"ifmap_reads"``."""
        return sum(r.sram_bytes[key] for r in self.layers)

    def dram_bytes(self, operand: str | None = None) -> int:
        if operand is None:
            return sum(r.dram_total for r in self.layers)
        return sum(r.dram_bytes[operand] for r in self.layers)

    @property
    def seconds(self) -> float:
        return self.total_cycles / (self.array.clock_ghz * 1e9)


def _as_layers(layers: Iterable[Layer | Mapping[str, object]]) -> list[Layer]:
    out = [l if isinstance(l, Layer) else Layer.from_dict(l) for l in layers]
    if not out:
        raise EngineError("the network has no conv or linear layers to simulate")
    return out


def simulate_network(layers: Iterable[Layer | Mapping[str, object]], array: SystolicArray) -> NetworkReport:
    """Per-layer reports and totals for ``layers`` (Layer objects or layer dicts) on ``array``."""
    layer_list = _as_layers(layers)
    res = evaluate(layer_table(layer_list), array)
    reports = []
    for i, layer in enumerate(layer_list):
        def b(key: str) -> int:  # round up, but not 1024.0000000001 (bytes * 8 / bits) to 1025
            value = float(res[key][i])
            return int(math.ceil(value - 1e-9 * max(1.0, value)))
        reports.append(LayerReport(
            layer=layer, macs=int(res["macs"][i]), folds=int(res["folds"][i]),
            compute_cycles=int(res["compute_cycles"][i]), stall_cycles=int(res["stall_cycles"][i]),
            total_cycles=int(res["total_cycles"][i]),
            mapping_efficiency=float(res["mapping_efficiency"][i]),
            compute_util=float(res["compute_util"][i]), overall_util=float(res["overall_util"][i]),
            sram_bytes={f"{op}_{rw}": b(f"{op}_sram_{rw}") for op in ("ifmap", "filter", "ofmap")
                        for rw in ("reads", "writes")},
            dram_bytes={k: b(f"{k}_dram_bytes") for k in ("ifmap", "filter", "ofmap")},
            prefetch_cycles=int(res["prefetch_cycles"][i]), psum_spill_bytes=b("psum_spill_bytes"),
            words={k: b(k.replace("reads", "read_words").replace("writes", "write_words")) for k in WORD_COUNTS},
        ))
    return NetworkReport(array=array, layers=reports)


def simulate_layer(layer: Layer | Mapping[str, object], array: SystolicArray) -> LayerReport:
    """The report for one layer on ``array``."""
    return simulate_network([layer], array).layers[0]
