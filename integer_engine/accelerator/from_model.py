"""Layers of an exported integer model (`.tpq`), as the systolic-array model wants them.

The file format lives in `integer_engine.format` (imported lazily, so the cost model works alone).
Its `layer_shapes(model)` gives one dict per conv/linear layer: name, kind, ifmap_h/ifmap_w
(zero padding included), filter_h/filter_w, channels, num_filters, stride, wbits, abits and macs
(the count the executor performs per image).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from integer_engine.errors import EngineError

from integer_engine.accelerator.systolic import Layer


def layers_from_shapes(rows: Sequence[Mapping[str, Any]]) -> list[Layer]:
    """`Layer`s from `format.layer_shapes` rows, checked MAC for MAC against the model.

    SCALE-Sim's output size is ``ceil((H - R) / S) + 1`` while a padded conv gives
    ``floor((H + 2p - R) / S) + 1``; they differ when the stride does not divide, so each input is
    trimmed to the extent its windows cover, ``(out - 1) * S + R``. A layer's outputs are stored at
    the next layer's activation bits (the requantization is fused into the layer's output stage);
    the last layer's at its own activation bits.
    """
    layers = []
    for i, row in enumerate(rows):
        stride = int(row.get("stride", 1))
        out_h = (int(row["ifmap_h"]) - int(row["filter_h"])) // stride + 1
        out_w = (int(row["ifmap_w"]) - int(row["filter_w"])) // stride + 1
        obits = rows[i + 1]["abits"] if i + 1 < len(rows) else row["abits"]
        entry = dict(row, kind="conv", obits=obits,
                     ifmap_h=(out_h - 1) * stride + int(row["filter_h"]),
                     ifmap_w=(out_w - 1) * stride + int(row["filter_w"]))
        layer = Layer.from_dict(entry)
        if "macs" in row and int(row["macs"]) != layer.macs:
            raise EngineError(f"layer {layer.name!r}: the model counts {row['macs']} MACs but its shape "
                              f"gives {layer.macs}; the model file and the accelerator model disagree")
        layers.append(layer)
    if not layers:
        raise EngineError("the model has no conv or linear layers to simulate")
    return layers


def layers_from_model(path: str | Path) -> list[Layer]:
    """The conv/linear layers of the exported integer model at ``path``."""
    try:
        from integer_engine import format as model_format
    except ImportError as err:  # pragma: no cover - only while the format module is missing
        raise EngineError(f"cannot read integer models in this install ({err}); use --topology") from None
    return layers_from_shapes(model_format.layer_shapes(model_format.load_model(path)))
