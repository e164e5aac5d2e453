"""Time the full ResNet-50 precision sweep of the systolic-array model.

    python benchmarks/accelerator_sweep.py [--repeats 5] [--first-last-bits 8]

The sweep is all 54 layers x 3 dataflows x 4 precisions (16, 8, 4, 2 bits, iso-area) x 3 DRAM
bandwidths (unlimited, 64, 32 GB/s): 36 network points, 1944 layer evaluations. Printed side by
side: the vectorized sweep (`sweep_precision`) and the same 36 points through `simulate_network`
one by one (per-layer report objects). Target: the whole sweep in under 2 seconds. For scale,
SCALE-Sim 3's trace-driven simulation took 33 minutes for one ResNet-50 point (issue #13).

``--first-last-bits B`` runs the first and last layers at ``max(bits, B)`` (the paper: 8). Below 8
it also prints what that gains over 8 at 64 GB/s, beside the paper's estimate of 1.24x.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integer_engine.accelerator.area import iso_area_array  # noqa: E402
from integer_engine.accelerator.scalesim import read_topology  # noqa: E402
from integer_engine.accelerator.sweep import (PAPER_FIRST_LAST_GAIN, first_last_gain,  # noqa: E402
                                              precision_layers, sweep_precision)
from integer_engine.accelerator.systolic import DATAFLOWS, SystolicArray, simulate_network  # noqa: E402

BITS = (16, 8, 4, 2)
BANDWIDTHS = (None, 64.0, 32.0)


def per_point(layers, base: SystolicArray, first_last_bits: int) -> int:
    total = 0
    for df in DATAFLOWS:
        for bits in BITS:
            rows, cols = iso_area_array(base.rows, base.cols, bits, BITS[0])
            net = precision_layers(layers, bits, first_last_bits)
            for gbps in BANDWIDTHS:
                array = replace(base, rows=rows, cols=cols, dataflow=df, pe_bits=bits).with_bandwidth_gbps(gbps)
                total += simulate_network(net, array).total_cycles
    return total


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call, median of the next `repeats` calls) in seconds."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--first-last-bits", type=int, default=8,
                        help="first and last layers at max(bits, this) (default 8, as in the paper)")
    args = parser.parse_args()
    fl = args.first_last_bits
    layers = read_topology("resnet50")
    base = SystolicArray(32, 32)
    vec_first, vec = timed(lambda: sweep_precision(layers, base, BITS, BANDWIDTHS, iso_area=True,
                                                   first_last_bits=fl), args.repeats)
    loop_first, loop = timed(lambda: per_point(layers, base, fl), args.repeats)
    result = sweep_precision(layers, base, BITS, BANDWIDTHS, iso_area=True, first_last_bits=fl)
    assert int(result.cycles.sum()) == per_point(layers, base, fl), "vectorized and per-point sweeps disagree"
    points = len(DATAFLOWS) * len(BITS) * len(BANDWIDTHS)
    print(f"ResNet-50 sweep: {len(layers)} layers x {points} points = {len(layers) * points} layer evaluations")
    print(f"  vectorized sweep_precision : {vec:.4f} s (first call {vec_first:.4f} s)")
    print(f"  simulate_network per point : {loop:.4f} s (first call {loop_first:.4f} s)  "
          f"= {loop / vec:.1f}x the vectorized time")
    print(f"  target < 2 s: {'met' if max(vec_first, vec) < 2.0 else 'MISSED'}")
    if fl < 8:
        _, gain = first_last_gain(layers, base, BITS, BANDWIDTHS, first_last_bits=fl)
        w = BANDWIDTHS.index(64.0)
        print(f"first/last layers at max(bits, {fl}) instead of max(bits, 8), 64 GB/s "
              f"(paper's estimate: {PAPER_FIRST_LAST_GAIN}x):")
        for d, df in enumerate(DATAFLOWS):
            cells = ", ".join(f"{b}-bit {gain[d, p, w]:.2f}x" for p, b in enumerate(BITS) if b < 8)
            print(f"  {df.upper()}: {cells}")


if __name__ == "__main__":
    main()
