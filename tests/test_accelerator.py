"""The systolic-array cost model: hand-computed cases, SCALE-Sim's own numbers, and properties."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from integer_engine.accelerator.systolic import (DATAFLOWS, Layer, SystolicArray, simulate_layer,
                                                 simulate_network, touched_extent)
from integer_engine.errors import EngineError

# --- hand-computed cases ------------------------------------------------------------------------
# GEMM (5 x 4) @ (4 x 3): Npx = 5 output rows, window W = 4, K = 3 outputs each, on a 2x2 array.
GEMM = Layer.gemm("g", m=5, n=3, k=4)


@pytest.mark.parametrize("dataflow, folds, cycles, mapping, compute_util", [
    # OS: Sr=Npx=5, Sc=K=3, T=W=4: 3x2 folds of T+R+C-2 = 6 cycles; PEs used 5*3 of 6*4
    ("os", 6, 6 * 6 - 1, 15 / 24, 15 * 4 / (24 * 6)),
    # WS: Sr=W=4, Sc=K=3, T=Npx=5: 2x2 folds of T+2R+C-2 = 9; util window 9 + C-1 = 10
    ("ws", 4, 4 * 9 - 1, 12 / 16, 12 * 5 / (16 * 10)),
    # IS: Sr=W=4, Sc=Npx=5, T=K=3: 2x3 folds of T+2R+C-2 = 7; util window 8
    ("is", 6, 6 * 7 - 1, 20 / 24, 20 * 3 / (24 * 8)),
])
def test_hand_computed_compute_side(dataflow, folds, cycles, mapping, compute_util):
    r = simulate_layer(GEMM, SystolicArray(rows=2, cols=2, dataflow=dataflow))
    got = (r.folds, r.compute_cycles, r.total_cycles, r.stall_cycles)
    assert got == (folds, cycles, cycles, 0), f"{dataflow}: expected folds/cycles {folds}/{cycles}, got {got}"
    assert r.macs == 60
    assert r.mapping_efficiency == pytest.approx(mapping), dataflow
    assert r.compute_util == pytest.approx(compute_util), dataflow
    assert r.overall_util == pytest.approx(60 / (cycles * 4)), dataflow


def test_hand_computed_dram_refetch_os():
    # 1x1 conv 8x8x16 -> 32 filters, 8-bit, on 4x4 OS, 1 KB SRAMs (512 B live each).
    # ifmap 8*8*16 = 1024 B; col folds = 32/4 = 8 passes; 512 B stays: 1024 + 7 * 512 = 4608.
    # filter tile per col fold = W*cols = 16*4 = 64 B fits: filters read once (512 B).
    # ofmap 64 px * 32 = 2048 B, written once.
    layer = Layer("c", 8, 8, 1, 1, 16, 32, 1)
    array = SystolicArray(rows=4, cols=4, dataflow="os", ifmap_sram_kb=1, filter_sram_kb=1, ofmap_sram_kb=1)
    r = simulate_layer(layer, array)
    assert r.dram_bytes == {"ifmap": 4608, "filter": 512, "ofmap": 2048}, r.dram_bytes
    # Same at 4 bits: ifmap 512 B fits -> read once; filters 256; outputs 1024.
    r4 = simulate_layer(layer.with_bits(4, 4), array)
    assert r4.dram_bytes == {"ifmap": 512, "filter": 256, "ofmap": 1024}, r4.dram_bytes


def test_hand_computed_psum_spill_ws():
    # WS, 1x1 conv 8x8x16 -> 4 filters on 4x4: row folds = 16/4 = 4 (the reduction), 1 col fold.
    # psums 64 px x 4 cols at 8+8+log2(16)=20 bits = 640 B; live ofmap SRAM 512 B -> 128 B spill,
    # out and back for each of the 3 extra row folds: 2*3*128 = 768, plus outputs 64*4 = 256 B.
    layer = Layer("c", 8, 8, 1, 1, 16, 4, 1)
    array = SystolicArray(rows=4, cols=4, dataflow="ws", ifmap_sram_kb=1, filter_sram_kb=1, ofmap_sram_kb=1)
    r = simulate_layer(layer, array)
    assert r.dram_bytes == {"ifmap": 1024, "filter": 64, "ofmap": 256 + 768}, r.dram_bytes
    # SRAM: 3 rounds of 640 B partial sums + 256 B outputs + 384 B of spill coming back
    assert r.sram_bytes["ofmap_writes"] == r.sram_bytes["ofmap_reads"] == 256 + 3 * 640 + 384, r.sram_bytes


def test_bandwidth_roofline_hand_computed():
    layer = Layer("c", 8, 8, 1, 1, 16, 32, 1)
    base = SystolicArray(rows=4, cols=4, dataflow="os", ifmap_sram_kb=1, filter_sram_kb=1, ofmap_sram_kb=1)
    compute = simulate_layer(layer, base).compute_cycles
    r = simulate_layer(layer, replace(base, dram_bytes_per_cycle=2.0))  # 7168 B / 2 = 3584 cycles
    assert (r.total_cycles, r.stall_cycles) == (max(compute, 3584), max(0, 3584 - compute)), (compute, r)


def test_passes_when_operands_are_wider_than_pes():
    r8 = simulate_layer(GEMM, SystolicArray(rows=2, cols=2, dataflow="ws", pe_bits=2))
    # 8x8-bit MACs on 2-bit PEs: 4*4 = 16 passes stretch T from 5 to 80.
    assert r8.compute_cycles == 4 * (80 + 4 + 2 - 2) - 1


# --- SCALE-Sim's own regression numbers -------------------------------------------------------


def test_scalesim_worked_example_alexnet_conv1():
    r = simulate_layer(Layer("Conv1", 224, 224, 11, 11, 3, 96, 4), SystolicArray(32, 32, "ws"))
    assert (r.folds, r.total_cycles, r.stall_cycles) == (36, 112283, 0)
    assert 100 * r.mapping_efficiency == pytest.approx(94.53125, abs=1e-12)
    assert 100 * r.overall_util == pytest.approx(91.68309650614964, abs=1e-9)
    assert 100 * r.compute_util == pytest.approx(90.78000992063485, abs=1e-9)


@pytest.mark.parametrize("dataflow, cycles, compute_util", [
    # scale-sim-v2 test/general/golden_trace_user_{os,ws,is}: Total Cycles - Stall Cycles
    ("os", 52447 - 42272, 80.50314465408806),
    ("ws", 52447 - 41248, 67.19160104986877),
    ("is", 19984 - 5777, 50.59288537549407),
])
def test_scalesim_gemm_golden_stall_free_cycles(dataflow, cycles, compute_util):
    r = simulate_layer(Layer.gemm("Test 1", 256, 128, 256), SystolicArray(32, 32, dataflow))
    assert r.compute_cycles == cycles, f"{dataflow}: SCALE-Sim {cycles}, model {r.compute_cycles}"
    assert 100 * r.mapping_efficiency == 100.0
    assert 100 * r.compute_util == pytest.approx(compute_util, abs=1e-9)


def _fold_by_fold(layer: Layer, rows: int, cols: int, dataflow: str) -> tuple[int, float, float]:
    """SCALE-Sim's per-fold loop written out plainly: cycles, mean mapping eff., mean compute util."""
    npx, win, k = layer.ofmap_pixels, layer.window, layer.num_filters
    sr, sc, t = {"os": (npx, k, win), "ws": (win, k, npx), "is": (win, npx, k)}[dataflow]
    cycles, maps, utils = 0, [], []
    for fc in range(math.ceil(sc / cols)):
        for fr in range(math.ceil(sr / rows)):
            used = min(rows, sr - fr * rows) * min(cols, sc - fc * cols)
            fold = t + rows + cols - 2 if dataflow == "os" else t + 2 * rows + cols - 2
            window = fold if dataflow == "os" else fold + cols - 1
            cycles += fold
            maps.append(used / (rows * cols))
            utils.append(used * t / (rows * cols * window))
    # SCALE-Sim's total is the last cycle's index (-1); the model floors it at one MAC per PE per
    # cycle, which only binds on a 1x1 OS array (no fill, no drain).
    cycles = max(cycles - 1, math.ceil(sr * sc * t / (rows * cols)))
    return cycles, sum(maps) / len(maps), sum(utils) / len(utils)


layers_st = st.builds(
    lambda h, w, fh, fw, c, k, s, wb, ab, ob: Layer("x", max(h, fh), max(w, fw), fh, fw, c, k, s,
                                                     wbits=wb, abits=ab, obits=ob),
    st.integers(1, 40), st.integers(1, 40), st.integers(1, 7), st.integers(1, 7), st.integers(1, 64),
    st.integers(1, 80), st.integers(1, 4), st.integers(1, 16), st.integers(1, 16), st.integers(1, 16),
)
arrays_st = st.builds(
    SystolicArray, rows=st.integers(1, 48), cols=st.integers(1, 48), dataflow=st.sampled_from(DATAFLOWS),
    ifmap_sram_kb=st.sampled_from([0.25, 1, 4, 16, 64]), filter_sram_kb=st.sampled_from([0.25, 1, 4, 16, 64]),
    ofmap_sram_kb=st.sampled_from([0.25, 1, 4, 16, 64]),
    dram_bytes_per_cycle=st.one_of(st.none(), st.floats(0.5, 256)),
    pe_bits=st.one_of(st.none(), st.integers(1, 16)),
)


@given(layers_st, st.integers(1, 24), st.integers(1, 24), st.sampled_from(DATAFLOWS))
def test_closed_forms_equal_the_fold_loop(layer, rows, cols, dataflow):
    r = simulate_layer(layer, SystolicArray(rows, cols, dataflow))
    cycles, mapping, util = _fold_by_fold(layer, rows, cols, dataflow)
    assert r.compute_cycles == cycles, (layer, rows, cols, dataflow)
    assert r.mapping_efficiency == pytest.approx(mapping, rel=1e-9), (layer, rows, cols, dataflow)
    assert r.compute_util == pytest.approx(util, rel=1e-9), (layer, rows, cols, dataflow)


# --- strided layers fetch only the pixels their windows touch ---------------------------------


def _touched_by_enumeration(layer: Layer) -> set[tuple[int, int]]:
    """Every (row, col) of the input that some window of the layer reads, by brute force."""
    sh, sw = layer.strides
    return {(y, x)
            for oy in range(layer.ofmap_h) for ox in range(layer.ofmap_w)
            for y in range(oy * sh, min(oy * sh + layer.filter_h, layer.ifmap_h))
            for x in range(ox * sw, min(ox * sw + layer.filter_w, layer.ifmap_w))}


@given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 7), st.integers(1, 7), st.integers(1, 6),
       st.integers(1, 6), st.integers(1, 5))
def test_strided_fetch_equals_enumerated_touched_pixels(h, w, fh, fw, sh, sw, channels):
    layer = Layer("x", max(h, fh), max(w, fw), fh, fw, channels, 3, sh, stride_w=sw)
    want = len(_touched_by_enumeration(layer)) * channels
    assert layer.ifmap_touched == want, (
        f"{layer.ifmap_h}x{layer.ifmap_w} input, {fh}x{fw} filter, stride {sh}x{sw}: "
        f"{want // channels} pixels are touched, the closed form says {layer.ifmap_touched // channels}")
    # Input stationary loads each input once: exactly the touched pixels at their bit width.
    r = simulate_layer(layer.with_bits(8, 3), SystolicArray(4, 4, "is"))
    assert r.dram_bytes["ifmap"] == math.ceil(want * 3 / 8), (layer, r.dram_bytes)


@pytest.mark.parametrize("size, filt, stride, touched", [
    (56, 1, 2, 28),    # ResNet-50's 1x1 stride-2 downsample: every other row
    (15, 1, 2, 8),     # odd size: rows 0, 2, ..., 14
    (15, 3, 2, 15),    # windows overlap: all rows
    (14, 2, 3, 10),    # gaps of one row: 0-1, 3-4, 6-7, 9-10, 12-13
    (10, 3, 4, 8),     # last window sticks out (SCALE-Sim's ceil): 0-2, 4-6 and 8-9 of 8-10
    (11, 2, 4, 6),     # a 4th window starts at 12, past the end: 0-1, 4-5, 8-9 only
])
def test_touched_extent_hand_computed(size, filt, stride, touched):
    assert int(touched_extent(size, filt, stride)) == touched, (size, filt, stride)


def test_strided_downsample_fetch_equals_scalesim3():
    """SCALE-Sim 3.0.0, 8x8 WS, 64 KB SRAMs, CALC: DRAM IFMAP Reads of these layers (its
    DETAILED_ACCESS_REPORT.csv; every operand fits, so each is fetched once)."""
    for layer, reads in [(Layer("ds", 15, 15, 1, 1, 16, 32, 2), 1024),
                         (Layer("c3s2", 15, 15, 3, 3, 8, 16, 2), 1800),
                         (Layer("c1s3", 14, 14, 2, 2, 4, 8, 3), 400)]:
        r = simulate_layer(layer, SystolicArray(8, 8, "ws"))
        assert r.words["ifmap_dram_reads"] == reads, (layer.name, r.words, reads)


# --- properties -------------------------------------------------------------------------------


@given(layers_st, arrays_st)
def test_utilization_at_most_one_and_cycles_at_least_macs_over_pes(layer, array):
    r = simulate_layer(layer, array)
    for name in ("overall_util", "mapping_efficiency", "compute_util"):
        assert 0 < getattr(r, name) <= 1 + 1e-12, f"{name} = {getattr(r, name)} for {layer} on {array}"
    assert r.total_cycles >= r.macs / array.num_pes, (r.total_cycles, r.macs, array.num_pes)
    assert r.total_cycles == r.compute_cycles + r.stall_cycles and r.stall_cycles >= 0


@given(layers_st, arrays_st)
def test_dram_traffic_at_least_each_operand_once(layer, array):
    r = simulate_layer(layer, array)
    once = {"ifmap": layer.ifmap_touched * layer.abits / 8,
            "filter": layer.window * layer.num_filters * layer.wbits / 8,
            "ofmap": layer.ofmap_pixels * layer.num_filters * layer.obits / 8}
    for op, size in once.items():
        assert r.dram_bytes[op] >= math.ceil(size) - 1e-9, f"{op}: {r.dram_bytes[op]} < {size}"


@given(layers_st, arrays_st, st.floats(1.01, 16))
def test_more_bandwidth_never_slower(layer, array, factor):
    assume(array.dram_bytes_per_cycle is not None)
    slow = simulate_layer(layer, array)
    fast = simulate_layer(layer, replace(array, dram_bytes_per_cycle=array.dram_bytes_per_cycle * factor))
    unlimited = simulate_layer(layer, replace(array, dram_bytes_per_cycle=None))
    assert slow.total_cycles >= fast.total_cycles >= unlimited.total_cycles == unlimited.compute_cycles


@given(layers_st, arrays_st, st.sampled_from(["ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb"]),
       st.floats(1.01, 64))
def test_bigger_sram_never_more_dram_traffic(layer, array, which, factor):
    small = simulate_layer(layer, array)
    big = simulate_layer(layer, replace(array, **{which: getattr(array, which) * factor}))
    for op in ("ifmap", "filter", "ofmap"):
        assert big.dram_bytes[op] <= small.dram_bytes[op], f"{op}: {which} x{factor} gave more traffic"
    assert big.total_cycles <= small.total_cycles


@given(layers_st, arrays_st, st.sampled_from(["wbits", "abits", "obits"]), st.integers(1, 8))
def test_fewer_bits_never_more_bytes(layer, array, which, drop):
    assume(getattr(layer, which) > drop)
    wide = simulate_layer(layer, array)
    narrow = simulate_layer(replace(layer, **{which: getattr(layer, which) - drop}), array)
    for op in ("ifmap", "filter", "ofmap"):
        assert narrow.dram_bytes[op] <= wide.dram_bytes[op], (op, which, layer, array)
    for key, value in narrow.sram_bytes.items():
        assert value <= wide.sram_bytes[key], (key, which, layer, array)
    assert narrow.total_cycles <= wide.total_cycles


@given(st.lists(layers_st, min_size=1, max_size=6), arrays_st)
def test_network_totals_are_sums_of_layers(layers, array):
    report = simulate_network(layers, array)
    singles = [simulate_layer(l, array) for l in layers]
    assert report.total_cycles == sum(s.total_cycles for s in singles)
    assert report.dram_bytes() == sum(s.dram_total for s in singles)
    assert report.macs == sum(l.macs for l in layers)


def test_layer_dicts_are_accepted():
    entry = {"name": "c", "kind": "conv", "ifmap_h": 10, "ifmap_w": 10, "filter_h": 3, "filter_w": 3,
             "channels": 4, "num_filters": 8, "stride": 1, "wbits": 4, "abits": 4}
    r = simulate_network([entry], SystolicArray()).layers[0]
    assert (r.layer.obits, r.macs) == (8, 8 * 8 * 36 * 8)
    assert simulate_layer({"name": "g", "kind": "gemm", "m": 3, "n": 4, "k": 5}, SystolicArray()).macs == 60


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"rows": 0}, "at least 1x1"),
    ({"cols": -3}, "at least 1x1"),
    ({"dataflow": "rs"}, "dataflow"),
    ({"ifmap_sram_kb": 0}, "ifmap_sram_kb"),
    ({"filter_sram_kb": -1.0}, "filter_sram_kb"),
    ({"dram_bytes_per_cycle": 0.0}, "bandwidth"),
    ({"pe_bits": 0}, "pe_bits"),
])
def test_bad_array_configs_say_what_is_wrong(kwargs, message):
    with pytest.raises(EngineError, match=message) as err:
        SystolicArray(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("args, message", [
    (("x", 0, 8, 3, 3, 1, 1, 1), "ifmap_h"),
    (("x", 8, 8, 3, 3, -2, 1, 1), "channels"),
    (("x", 8, 8, 9, 3, 1, 1, 1), "larger than its input"),
    (("x", 8, 8, 3, 3, 1, 1, 0), "stride"),
])
def test_bad_layers_say_what_is_wrong(args, message):
    with pytest.raises(EngineError, match=message):
        Layer(*args)
    with pytest.raises(EngineError, match="wbits"):
        Layer("x", 8, 8, 3, 3, 1, 1, 1, wbits=33)
    with pytest.raises(EngineError, match="missing field 'channels'"):
        Layer.from_dict({"name": "x", "ifmap_h": 3, "ifmap_w": 3, "filter_h": 1, "filter_w": 1,
                         "num_filters": 2})
    with pytest.raises(EngineError, match="no conv or linear layers"):
        simulate_network([], SystolicArray())


def test_bandwidth_units():
    a = SystolicArray(clock_ghz=0.5).with_bandwidth_gbps(64)
    assert a.dram_bytes_per_cycle == 128.0 and a.bandwidth_gbps == 64.0
    assert np.isclose(SystolicArray.bytes_per_cycle(32, 2.0), 16.0)
