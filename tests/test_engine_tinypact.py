"""End to end with the real tinypact: its models, graph emission and checkpoints -> export ->
engine, checked bit-exact against tinypact's own eval forward (every layer) and the reference.

The networks are not trained (that is the lead's slow end-to-end test); instead their batch-norm
statistics and PACT alphas are randomised so that every layer's codes are spread over all levels.
"""
from __future__ import annotations

import numpy as np
import pytest

from integer_engine.export import export_checkpoint
from integer_engine.format import layer_shapes, load_model, save_model
from integer_engine.verify import verify_against_checkpoint, verify_model

from tinypact import models as tinypact_models
from tinypact.checkpoint import save_checkpoint
from tinypact.quant import Policy


def make_checkpoint(path, name, seed=0, **policy):
    """A tinypact checkpoint of an untrained `name` network with randomised BN stats and alphas."""
    model = tinypact_models.randomize_statistics(
        tinypact_models.build_model(name, Policy(**policy)), seed)
    meta = {"config": {}, "model": model.spec(), "epoch": 0, "graph": model.graph()}
    save_checkpoint(path, meta, model.state_dict())
    return model


@pytest.mark.parametrize("name,policy", [
    ("fmnist", dict(wbits=2, abits=2)),
    ("fmnist", dict(wbits=3, abits=4, weight_quant="sawb")),
    ("svhn", dict(wbits=2, abits=2)),
    ("resnet20", dict(wbits=2, abits=2, shortcut_bits=8)),
    ("resnet20", dict(wbits=4, abits=4, shortcut_bits=4)),
])
def test_tinypact_checkpoint_exports_and_matches(tmp_path, name, policy):
    model = make_checkpoint(tmp_path / "checkpoint.npz", name, **policy)
    save_model(export_checkpoint(tmp_path), tmp_path / "m.tpq")
    integer_model = load_model(tmp_path / "m.tpq")
    assert sum(r["macs"] for r in layer_shapes(integer_model)) == model.macs(), "MAC counts disagree with tinypact"
    images = np.random.default_rng(1).integers(0, 256, size=(12, *integer_model.input_shape), dtype=np.uint8)
    report = verify_model(integer_model, images, batch_size=6)
    assert report.ok, f"{name}: engine != reference: {report.first_mismatch}"
    trained = verify_against_checkpoint(integer_model, tmp_path, images, batch_size=6)
    assert trained.ok, f"{name} {policy}: engine != trained model: {trained.first_mismatch}"
    assert len(trained.mismatches) >= 4, f"too few layers compared: {sorted(trained.mismatches)}"
    assert np.array_equal(trained.engine_predictions, trained.other_predictions)
