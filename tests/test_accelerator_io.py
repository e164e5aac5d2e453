"""SCALE-Sim files, shipped topologies, the iso-area sweep, the .tpq adapter and the CLI."""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pytest

from integer_engine.accelerator import cli
from integer_engine.accelerator.area import density, iso_area_array, mac_area
from integer_engine.accelerator.from_model import layers_from_shapes
from integer_engine.accelerator.scalesim import (BANDWIDTH_REPORT_COLUMNS, COMPUTE_REPORT_COLUMNS,
                                                 DETAILED_ACCESS_REPORT_COLUMNS, TOPOLOGY_DIR,
                                                 ScaleSimWarning, read_config, read_report, read_topology,
                                                 write_compute_report, write_reports, write_topology)
from integer_engine.accelerator.sweep import first_last_gain, precision_layers, sweep_precision
from integer_engine.accelerator.systolic import DATAFLOWS, Layer, SystolicArray, simulate_network
from integer_engine.errors import EngineError

CFG = """[general]
run_name = t

[architecture_presets]
ArrayHeight:    {rows}
ArrayWidth:     32
IfmapSramSzkB:  64
FilterSramSzkB: 128
OfmapSramSzkB:  32
IfmapOffset:    0
Bandwidth : 10
Dataflow : os
{extra}
[run_presets]
InterfaceBandwidth: {mode}
"""


def write_cfg(tmp_path, rows="16", mode="USER", extra=""):
    path = tmp_path / "a.cfg"
    path.write_text(CFG.format(rows=rows, mode=mode, extra=extra))
    return path


def test_read_config_user_and_calc(tmp_path):
    a = read_config(write_cfg(tmp_path))
    assert (a.rows, a.cols, a.dataflow) == (16, 32, "os")
    assert (a.ifmap_sram_kb, a.filter_sram_kb, a.ofmap_sram_kb, a.dram_bytes_per_cycle) == (64, 128, 32, 10)
    assert read_config(write_cfg(tmp_path, mode="CALC")).dram_bytes_per_cycle is None
    # keys are case-insensitive, '=' works too
    text = CFG.format(rows="8", mode="CALC", extra="").replace("ArrayWidth:     32", "arraywidth = 4")
    (tmp_path / "b.cfg").write_text(text)
    assert read_config(tmp_path / "b.cfg").cols == 4


@pytest.mark.parametrize("name", ["scale.cfg", "scale_v3.cfg"])
def test_shipped_configs_reproduce_the_worked_example(name, recwarn):
    a = read_config(TOPOLOGY_DIR / name)
    r = simulate_network(read_topology("alexnet"), a).layers[0]
    assert (a.dram_bytes_per_cycle, r.total_cycles, r.stall_cycles) == (None, 112283, 0)
    assert not [w for w in recwarn if issubclass(w.category, ScaleSimWarning)], \
        "a config with nothing unmodelled switched on must read silently"


V3_SECTIONS = """
[layout]
IfmapCustomLayout: {layout}
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 12
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport : {sparsity}
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40
"""


def write_v3_cfg(tmp_path, mode="USER", sparsity="false", layout="False", ramulator="False"):
    text = CFG.format(rows="16", mode=mode, extra="ReadRequestBuffer: 32\nWriteRequestBuffer: 32\n")
    text += f"UseRamulatorTrace: {ramulator}\n" + V3_SECTIONS.format(sparsity=sparsity, layout=layout)
    path = tmp_path / "v3.cfg"
    path.write_text(text)
    return path


def _messages(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ScaleSimWarning)]


def test_v3_config_warns_once_per_unmodelled_setting(tmp_path):
    with pytest.warns(ScaleSimWarning) as record:
        a = read_config(write_v3_cfg(tmp_path, sparsity="true", layout="True", ramulator="True"))
    assert (a.rows, a.cols, a.dataflow, a.dram_bytes_per_cycle) == (16, 32, "os", 10)
    got = _messages(record)
    assert len(got) == 4, got
    for needle in ("UseRamulatorTrace", "SparsitySupport", "IfmapCustomLayout",
                   "fills ifmap at 10, filter at 12 words/cycle"):
        assert sum(needle in m for m in got) == 1, (needle, got)
    assert all("\n" not in m for m in got)


def test_v3_config_bank_bandwidths_only_matter_in_user_mode(tmp_path, recwarn):
    read_config(write_v3_cfg(tmp_path, mode="CALC"))
    assert _messages(recwarn) == []
    read_config(write_v3_cfg(tmp_path, mode="USER"))
    (message,) = _messages(recwarn)
    assert "uses Bandwidth 10 only to drain the ofmap" in message


def test_v3_config_bad_values_give_one_line_errors(tmp_path):
    path = write_v3_cfg(tmp_path)
    for old, new, message in [("SparsitySupport : false", "SparsitySupport : maybe", "True or False"),
                              ("ReadRequestBuffer: 32", "ReadRequestBuffer: -1", "ReadRequestBuffer must be"),
                              ("IfmapSRAMBankNum: 10", "IfmapSRAMBankNum: x", "IfmapSRAMBankNum must be")]:
        path.write_text(write_v3_cfg(tmp_path).read_text().replace(old, new))
        with pytest.raises(EngineError, match=message) as err:
            read_config(path)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("rows, mode, message", [
    ("0", "USER", "ArrayHeight must be positive"),
    ("-4", "USER", "ArrayHeight must be positive"),
    ("abc", "USER", "ArrayHeight must be an integer"),
    ("16", "MAYBE", "InterfaceBandwidth must be USER or CALC"),
])
def test_bad_configs_give_one_line_errors(tmp_path, rows, mode, message):
    with pytest.raises(EngineError, match=message) as err:
        read_config(write_cfg(tmp_path, rows=rows, mode=mode))
    assert "\n" not in str(err.value)


def test_config_missing_keys(tmp_path):
    path = tmp_path / "m.cfg"
    path.write_text(CFG.format(rows="16", mode="USER", extra="").replace("FilterSramSzkB: 128\n", ""))
    with pytest.raises(EngineError, match="missing FilterSramSzkB"):
        read_config(path)
    path.write_text(CFG.format(rows="16", mode="USER", extra="").replace("Bandwidth : 10\n", ""))
    with pytest.raises(EngineError, match="no Bandwidth"):
        read_config(path)
    path.write_text("ArrayHeight: 3\n")
    with pytest.raises(EngineError, match="not a SCALE-Sim config"):
        read_config(path)
    path.write_text("[general]\nrun_name = x\n")
    with pytest.raises(EngineError, match=r"missing section \[architecture_presets\]"):
        read_config(path)
    with pytest.raises(EngineError, match="cannot read config"):
        read_config(tmp_path / "nope.cfg")


def test_topology_conv_and_gemm_forms(tmp_path):
    conv = tmp_path / "c.csv"
    # SCALE-Sim's own files carry blank separator rows and extra columns; both are ignored.
    conv.write_text("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
                    "Num Filter, Strides,,,Eh\n,,,,,,,,,,\nConv1, 224, 224, 11, 11, 3, 96, 4,,,55\n"
                    "Conv2,27,27,5,5,96,256,1,\n")
    layers = read_topology(conv, wbits=4, abits=2)
    assert [(l.name, l.ofmap_h, l.macs) for l in layers] == [
        ("Conv1", 55, 55 * 55 * 363 * 96), ("Conv2", 23, 23 * 23 * 2400 * 256)]
    assert (layers[0].wbits, layers[0].abits, layers[0].obits) == (4, 2, 2)
    gemm = tmp_path / "g.csv"
    gemm.write_text("Layer Name, M, N, K,\nTest 1, 256, 128, 256,")
    (g,) = read_topology(gemm)
    assert (g.ofmap_pixels, g.window, g.num_filters, g.macs) == (256, 256, 128, 256 * 128 * 256)
    out = write_topology(tmp_path / "rt.csv", layers)
    assert read_topology(out, wbits=4, abits=2) == layers


CONV_HEADER = ("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
               "Num Filter, Strides,")


def test_topology_columns_are_read_by_name(tmp_path):
    """SCALE-Sim 3's N:M sparsity column and a batch size are not strides; order does not matter."""
    path = tmp_path / "v3.csv"
    path.write_text(CONV_HEADER + " Sparsity, Batch Size,\nds, 55, 55, 1, 1, 256, 512, 2, 2:4, 8,\n")
    (ds,) = read_topology(path)
    assert (ds.strides, ds.ofmap_h, ds.channels) == ((2, 2), 28, 256), ds
    path.write_text("Layer, Strides, Num Filter, Channels, Filter Width, Filter Height, IFMAP Width, "
                    "IFMAP Height, Stride width\nx, 2, 8, 3, 3, 5, 20, 30, 1\n")
    (x,) = read_topology(path)
    assert (x.ifmap_h, x.ifmap_w, x.filter_h, x.filter_w, x.strides) == (30, 20, 5, 3, (2, 1)), x
    path.write_text("Layer, M, N, K, Sparsity,\nfc, 4, 10, 64, 1:1,\n")
    (fc,) = read_topology(path)
    assert (fc.ofmap_pixels, fc.window, fc.num_filters) == (4, 64, 10)


def test_depthwise_name_warns(tmp_path):
    path = tmp_path / "dw.csv"
    path.write_text(CONV_HEADER + "\nconvDP1, 10, 10, 3, 3, 32, 32, 1,\n")
    with pytest.warns(ScaleSimWarning, match="32 one-channel"):
        read_topology(path)


@pytest.mark.parametrize("row, message", [
    ("L1, -224, 224, 11, 11, 3, 96, 4,", r"line 2 \(L1\): IFMAP Height must be positive"),
    ("L1, 224, 224, 11, 11, 3, 0, 4,", "Num Filter must be positive"),
    ("L1, 224, 224, 11, x, 3, 96, 4,", "Filter Width must be an integer"),
    ("L1, 8, 8, 11, 11, 3, 96, 4,", "larger than the IFMAP"),
    ("L1, 224, 224, 11, 11,", "expected 7 conv fields"),
    ("L1, 224, 224, 11, 11, 3, 96, 2:4,", "Strides must be an integer"),
])
def test_bad_topologies_give_one_line_errors(tmp_path, row, message):
    path = tmp_path / "t.csv"
    path.write_text(CONV_HEADER + "\n" + row + "\n")
    with pytest.raises(EngineError, match=message) as err:
        read_topology(path)
    assert "\n" not in str(err.value)
    path.write_text("Layer, M, N, K,\nG, 3, 0, 4,\n")
    with pytest.raises(EngineError, match=r"line 2 \(G\): N must be positive"):
        read_topology(path)
    path.write_text("Layer, Height, Width\nL1, 3, 3\n")
    with pytest.raises(EngineError, match="header must name the columns.*missing IFMAP Height") as err:
        read_topology(path)
    assert "\n" not in str(err.value)
    path.write_text(CONV_HEADER + "\n")
    with pytest.raises(EngineError, match="no layers"):
        read_topology(path)
    with pytest.raises(EngineError, match="not found"):
        read_topology(tmp_path / "missing.csv")


@pytest.mark.parametrize("name, n_layers, macs, last_conv_out", [
    ("resnet50", 54, 4_089_184_256, 7),   # torchvision ResNet-50 (v1.5): 4.09 GMACs
    ("svhn", 8, 41_735_424, 1),           # networks-and-data.md: about 42 M
    ("resnet20", 20, 40_551_040, 8),      # about 41 M
    ("alexnet", 5, 805_118_496, 11),      # SCALE-Sim's (unpadded) AlexNet
])
def test_shipped_topologies(name, n_layers, macs, last_conv_out):
    layers = read_topology(name)
    assert (len(layers), sum(l.macs for l in layers)) == (n_layers, macs), name
    convs = [l for l in layers if l.ofmap_h > 1 or l.filter_h > 1]
    assert convs[-1].ofmap_h == last_conv_out, (name, convs[-1])


def test_svhn_topology_matches_the_reference_table():
    outs = [(l.ofmap_h, l.num_filters) for l in read_topology("svhn")]
    # conv0 is 36x36 before its 2x2 max-pool (-> 18), conv2 18x18 before its pool (-> 9)
    assert outs == [(36, 48), (18, 64), (18, 64), (7, 128), (7, 128), (5, 128), (1, 512), (1, 10)]


def test_compute_report_columns_and_values(tmp_path):
    report = simulate_network(read_topology("alexnet"), SystolicArray())
    path = write_compute_report(report, tmp_path / "out")
    header = path.read_text().splitlines()[0]
    assert header.startswith(", ".join(COMPUTE_REPORT_COLUMNS) + ",")
    rows = read_report(path)
    assert rows[0]["LayerID"] == "0" and rows[0]["Total Cycles"] == "112283"
    # unlimited bandwidth: loading the first tile takes no time
    assert rows[0]["Total Cycles (incl. prefetch)"] == "112283"
    assert float(rows[0]["Mapping Efficiency %"]) == 94.53125
    assert [int(r["Total Cycles"]) for r in rows] == [l.total_cycles for l in report.layers]
    assert rows[1]["Weight Bits"] == "8" and int(rows[1]["OFMAP DRAM Bytes"]) == report.layers[1].dram_bytes["ofmap"]


# SCALE-Sim 3.0.0 on an 8x8 WS array, 64 KB SRAMs, CALC: its DETAILED_ACCESS_REPORT.csv counts.
SCALESIM3_8x8_WS = [
    # layer, SRAM IFMAP Reads, SRAM Filter Reads, SRAM OFMAP Writes, DRAM IFMAP Reads, DRAM Filter Reads
    (Layer("ds", 15, 15, 1, 1, 16, 32, 2), 4096, 512, 4096, 1024, 512),
    (Layer("c3s2", 15, 15, 3, 3, 8, 16, 2), 7056, 1152, 7056, 1800, 1152),
    (Layer("c1s3", 14, 14, 2, 2, 4, 8, 3), 400, 128, 400, 400, 128),
]


def test_three_reports_have_scalesim3_columns_and_counts(tmp_path):
    layers = [case[0].with_bits(4, 2) for case in SCALESIM3_8x8_WS]
    array = SystolicArray(8, 8, "ws", dram_bytes_per_cycle=4.0)
    report = simulate_network(layers, array)
    paths = write_reports(report, tmp_path)
    assert [p.name for p in paths] == ["COMPUTE_REPORT.csv", "BANDWIDTH_REPORT.csv", "DETAILED_ACCESS_REPORT.csv"]
    for path, columns in zip(paths, (COMPUTE_REPORT_COLUMNS, BANDWIDTH_REPORT_COLUMNS,
                                     DETAILED_ACCESS_REPORT_COLUMNS)):
        assert path.read_text().splitlines()[0].startswith(", ".join(columns) + ","), path.name
    compute, bandwidth, detail = (read_report(p) for p in paths)
    for r, c, b, d, (_, if_sram, fl_sram, of_sram, if_dram, fl_dram) in zip(
            report.layers, compute, bandwidth, detail, SCALESIM3_8x8_WS):
        name = r.layer.name
        assert r.prefetch_cycles > 0 and int(c["Total Cycles (incl. prefetch)"]) == r.total_cycles + r.prefetch_cycles
        # counts in words of each operand's width: the same as SCALE-Sim's, whatever the bits
        got = [int(d[k]) for k in ("SRAM IFMAP Reads", "SRAM Filter Reads", "SRAM OFMAP Writes",
                                   "DRAM IFMAP Reads", "DRAM Filter Reads")]
        assert got == [if_sram, fl_sram, of_sram, if_dram, fl_dram], (name, got)
        # ... and our bytes beside them, at 2-bit activations and 4-bit weights
        assert int(d["DRAM IFMAP Read Bytes"]) == if_dram * 2 // 8, name
        assert int(d["SRAM Filter Read Bytes"]) == fl_sram * 4 // 8, name
        assert int(d["DRAM IFMAP Start Cycle"]) == -r.prefetch_cycles, name
        assert int(d["SRAM IFMAP Stop Cycle"]) == r.total_cycles - 1, name
        assert float(b["Avg IFMAP SRAM BW"]) == pytest.approx(if_sram / r.total_cycles), name
        span = r.total_cycles + r.prefetch_cycles
        assert float(b["Avg FILTER DRAM BW"]) == pytest.approx(fl_dram / span), name


# --- area and sweep -----------------------------------------------------------------------------


def test_area_model_calibration_and_monotonicity():
    assert density(2) == pytest.approx(14.0)
    assert density(16) == 1.0
    areas = [mac_area(b) for b in range(1, 33)]
    assert all(a < b for a, b in zip(areas, areas[1:]))
    assert mac_area(4, 8) == mac_area(8, 4) < mac_area(8)
    for bits in (16, 8, 4, 2, 1):
        rows, cols = iso_area_array(32, 32, bits)
        assert rows * cols <= 32 * 32 * density(bits) + 1e-9, bits
        assert (rows + 1) * (cols + 1) > 32 * 32 * density(bits), bits  # not needlessly small
    assert iso_area_array(32, 32, 16) == (32, 32)


def test_precision_layers_keep_first_and_last_at_8_bits():
    layers = read_topology("svhn")
    at2 = precision_layers(layers, 2)
    assert [(l.wbits, l.abits, l.obits) for l in at2] == [(8, 8, 2)] + [(2, 2, 2)] * 6 + [(8, 8, 8)]
    assert [l.wbits for l in precision_layers(layers, 16)] == [16] * 8
    assert [l.wbits for l in precision_layers(layers, 2, first_last_bits=None)] == [2] * 8


def test_sweep_matches_simulate_network_point_by_point():
    layers = read_topology("resnet20")
    base = SystolicArray(16, 16, ifmap_sram_kb=8, filter_sram_kb=8, ofmap_sram_kb=8)
    result = sweep_precision(layers, base, (8, 4, 2), (None, 16.0))
    assert np.all(result.speedup[:, 0, :] == 1.0)
    for d, df in enumerate(DATAFLOWS):
        for p, bits in enumerate(result.bits):
            rows, cols = result.shapes[p]
            for w, gbps in enumerate(result.bandwidths_gbps):
                array = replace(base, rows=rows, cols=cols, dataflow=df, pe_bits=bits).with_bandwidth_gbps(gbps)
                want = simulate_network(precision_layers(layers, bits), array).total_cycles
                assert result.cycles[d, p, w] == want, (df, bits, gbps)


def test_sweep_is_superlinear_only_when_bandwidth_bound():
    """The paper's claim in the model: with bandwidth to spare the speedup stays below the PE
    ratio (mapping losses); with little bandwidth, shrinking data gives more than the bit ratio
    (DRAM traffic falls faster than the bits) and more than with unlimited bandwidth."""
    result = sweep_precision(read_topology("resnet50"), SystolicArray(32, 32, "os"), (16, 8, 4),
                             (None, 32.0), dataflows=("os",))
    unlimited, scarce = result.speedup[0, :, 0], result.speedup[0, :, 1]
    bit_ratio = 16 / np.array(result.bits)
    assert np.all(unlimited[1:] < result.peak[1:]), (unlimited, result.peak)
    assert np.all(scarce[1:] > bit_ratio[1:]), f"32 GB/s speedups {scarce} vs bit ratios {bit_ratio}"
    assert np.all(scarce[1:] > unlimited[1:]), (scarce, unlimited)
    assert scarce[1] > result.peak[1], f"8 bits at 32 GB/s: {scarce[1]:.2f}x vs peak {result.peak[1]:.2f}x"
    dram = result.dram_bytes[0]
    assert np.all(dram[1:] < dram[:-1] / 2), f"DRAM bytes {dram} should fall faster than the bits"


def test_first_last_gain_is_the_ratio_of_two_sweeps():
    """Quantizing the first/last layers changes nothing at >= 8 bits and speeds up 2 bits (the
    paper estimated 1.24x); the gain is exactly the ratio of the two sweeps' cycles."""
    layers, base = read_topology("resnet20"), SystolicArray(16, 16, ifmap_sram_kb=8, filter_sram_kb=8, ofmap_sram_kb=8)
    lowered, gain = first_last_gain(layers, base, (16, 8, 2), (None, 16.0), first_last_bits=2)
    kept = sweep_precision(layers, base, (16, 8, 2), (None, 16.0), first_last_bits=8)
    assert np.array_equal(gain, kept.cycles / lowered.cycles)
    assert np.all(gain[:, :2, :] == 1.0), gain
    assert np.all(gain[:, 2, :] > 1.0), gain


# --- the link to exported models ----------------------------------------------------------------


def test_layers_from_model_shapes_trim_padding_and_check_macs():
    # format.layer_shapes rows: a stride-2 3x3 conv, pad 1, on 32x32 (padded to 34) -> 16x16
    rows = [
        {"name": "conv", "kind": "conv", "ifmap_h": 34, "ifmap_w": 34, "filter_h": 3, "filter_w": 3,
         "channels": 16, "num_filters": 32, "stride": 2, "wbits": 4, "abits": 3, "macs": 16 * 16 * 144 * 32},
        {"name": "fc", "kind": "linear", "ifmap_h": 1, "ifmap_w": 1, "filter_h": 1, "filter_w": 1,
         "channels": 64, "num_filters": 10, "stride": 1, "wbits": 8, "abits": 5, "macs": 640},
    ]
    conv, fc = layers_from_shapes(rows)
    assert (conv.ifmap_h, conv.ofmap_h, conv.macs, conv.obits) == (33, 16, rows[0]["macs"], 5)
    assert (fc.macs, fc.obits, fc.wbits) == (640, 5, 8)
    with pytest.raises(EngineError, match="disagree"):
        layers_from_shapes([dict(rows[0], macs=1)])


# --- CLI ----------------------------------------------------------------------------------------


def run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["simulate", *argv])
    return args.func(args)


def test_cli_simulate_topology_writes_report(tmp_path, capsys):
    assert run_cli(["--topology", "alexnet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "112283" in out and "total:" in out
    assert read_report(tmp_path / "COMPUTE_REPORT.csv")[0]["Total Cycles"] == "112283"
    assert int(read_report(tmp_path / "DETAILED_ACCESS_REPORT.csv")[0]["SRAM IFMAP Reads"]) > 0
    assert len(read_report(tmp_path / "BANDWIDTH_REPORT.csv")) == 5


def test_cli_prints_each_unmodelled_v3_setting_as_one_warning_line(tmp_path, capsys):
    cfg = write_v3_cfg(tmp_path, sparsity="true")
    assert run_cli(["--topology", "svhn", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("warning: ") for line in err), err
    assert "SparsitySupport is on" in err[0] or "SparsitySupport is on" in err[1], err


def test_cli_flags_override_config(tmp_path, capsys):
    cfg = write_cfg(tmp_path)
    run_cli(["--topology", "svhn", "--config", str(cfg), "--array", "8x4", "--dataflow", "ws",
             "--sram-kb", "2,4,8", "--bandwidth-gbps", "16", "--clock-ghz", "2", "--bits", "4,2",
             "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert "8x4 WS array, SRAM KB ifmap/filter/ofmap 2/4/8, DRAM 8 B/cycle" in out
    rows = read_report(tmp_path / "o" / "COMPUTE_REPORT.csv")
    assert (rows[1]["Weight Bits"], rows[1]["Activation Bits"]) == ("4", "2")


def test_cli_sweep_writes_table_csv_and_plot(tmp_path, capsys):
    assert run_cli(["--topology", "resnet50", "--sweep-bits", "16,8,4,2", "--iso-area",
                    "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "unlimited" in out and "64 GB/s" in out and "32 GB/s" in out and "119x119" in out
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "SWEEP_REPORT.csv").read_text().splitlines()
    assert len(lines) == 1 + 3 * 4 * 3
    assert "instead of at least 8" not in out
    run_cli(["--topology", "svhn", "--sweep-bits", "8,2", "--first-last-bits", "2", "--out", str(tmp_path)])
    assert "instead of at least 8 (paper: about 1.24x" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    ([], "either a model file or --topology"),
    (["--topology", "svhn", "--array", "0x32"], "--array values must be positive"),
    (["--topology", "svhn", "--array", "32"], "--array needs 2 values"),
    (["--topology", "svhn", "--bits", "4"], "--bits needs 2 or 3 values"),
    (["--topology", "svhn", "--sram-kb", "-1"], "--sram-kb values must be positive"),
    (["--topology", "svhn", "--bandwidth-gbps", "0"], "--bandwidth-gbps must be positive"),
    (["--topology", "svhn", "--sweep-bits", "8,4", "--first-last-bits", "0"], "--first-last-bits must be between"),
    (["--topology", "nosuchnet"], "not found"),
    (["missing.tpq"], "not found"),
    (["--topology", "svhn", "--sweep-bits", "8,4", "--sweep-bandwidths", "fast"], "sweep-bandwidths"),
])
def test_cli_user_errors_are_one_line(tmp_path, argv, message):
    with pytest.raises(EngineError, match=message) as err:
        run_cli([*argv, "--out", str(tmp_path)])
    assert "\n" not in str(err.value)


def test_exported_model_macs_equal_what_the_executor_counted(tmp_path, capsys):
    """The link to the engine: per-layer MACs of the model = MACs the executor performed."""
    from test_engine_models import resnet_like  # the suite's synthetic-network builder

    from integer_engine.accelerator.from_model import layers_from_model
    from integer_engine.executor import run_model
    from integer_engine.format import save_model
    from integer_engine.export import lower_graph

    rng = np.random.default_rng(0)
    model = lower_graph(*resnet_like(rng, wbits=2, abits=3, size=16, widths=(4, 8)))
    path = tmp_path / "resnet.tpq"
    save_model(model, path)
    layers = layers_from_model(path)
    images = rng.integers(0, 256, (2, *model.input_shape), dtype=np.uint8)
    performed = [s for s in run_model(model, images).stats if s.kind in ("conv", "linear")]
    assert [(l.name, 2 * l.macs) for l in layers] == [(s.name, s.macs) for s in performed]
    assert any(l.stride == 2 for l in layers), "the stride-2 (padded, odd-sized) case is covered"
    assert run_cli([str(path), "--out", str(tmp_path / "o")]) == 0
    assert "total:" in capsys.readouterr().out
