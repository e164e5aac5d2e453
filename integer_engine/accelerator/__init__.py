"""A systolic-array accelerator model that knows about operand precision.

`systolic`   the cost model: `SystolicArray`, `Layer`, `simulate_layer`, `simulate_network`
`scalesim`   SCALE-Sim's .cfg and topology CSVs in, its three report CSVs out
`area`       iso-area PE scaling with operand bits (MAC area model)
`sweep`      speedup vs precision at several DRAM bandwidths (the PACT paper's Fig. 6)
`from_model` layers of an exported integer model (.tpq)
`cli`        `python -m integer_engine simulate`
Equations and assumptions: docs/accelerator.md.
"""
from integer_engine.accelerator.area import density, iso_area_array, mac_area
from integer_engine.accelerator.from_model import layers_from_model
from integer_engine.accelerator.scalesim import (ScaleSimWarning, read_config, read_report, read_topology,
                                                 write_compute_report, write_reports)
from integer_engine.accelerator.sweep import SweepResult, sweep_precision
from integer_engine.accelerator.systolic import (Layer, LayerReport, NetworkReport, SystolicArray,
                                                 simulate_layer, simulate_network, touched_extent)

__all__ = [
    "Layer", "LayerReport", "NetworkReport", "ScaleSimWarning", "SystolicArray", "SweepResult", "density",
    "iso_area_array", "layers_from_model", "mac_area", "read_config", "read_report", "read_topology",
    "simulate_layer", "simulate_network", "sweep_precision", "touched_extent", "write_compute_report",
    "write_reports",
]
