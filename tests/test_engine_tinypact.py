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


def make_underflow_checkpoint(path):
    """A W1A1 fmnist checkpoint (1-bit first/last layers, quantized ReLU) whose conv0 thresholds
    count down although the float32 product scale * bn_scale underflows to -0.0: conv0 weights
    +-1e-18, bn0 gamma -1e-25, beta 4.5e-43, mean 0, var 1, act0's running max 9e-43."""
    model = tinypact_models.build_model(
        "fmnist", Policy(wbits=1, abits=1, first_last_bits=1, act_quant="relu"))
    model = tinypact_models.randomize_statistics(model, 0)
    state = model.state_dict()
    signs = np.random.default_rng(0).random(state["conv0.weight"].shape) < 0.5
    state["conv0.weight"] = np.where(signs, np.float32(-1e-18), np.float32(1e-18))
    state["bn0.weight"] = np.full_like(state["bn0.weight"], -1e-25)
    state["bn0.bias"] = np.full_like(state["bn0.bias"], 4.5e-43)
    state["bn0.running_mean"] = np.zeros_like(state["bn0.running_mean"])
    state["bn0.running_var"] = np.ones_like(state["bn0.running_var"])
    state["act0.running_max"] = np.full_like(state["act0.running_max"], 9e-43)
    model.load_state_dict(state)
    meta = {"config": {}, "model": model.spec(), "epoch": 0, "graph": model.graph()}
    save_checkpoint(path, meta, model.state_dict())


def test_threshold_direction_survives_an_underflowing_scale_product(tmp_path, monkeypatch):
    """Export reads the direction off the epilogue, so it is right where scale * bn_scale
    underflows; thresholds counting the wrong way are refused by export's own check and by the
    loader, whatever wrote them."""
    from integer_engine import requant
    from integer_engine.errors import EngineError

    make_underflow_checkpoint(tmp_path / "checkpoint.npz")
    model = export_checkpoint(tmp_path)
    conv0 = model.layers[0]
    assert conv0.attrs["name"] == "conv0"
    scale, bn_scale = np.float32(conv0.arrays["scale"][0]), conv0.arrays["bn_scale"]
    assert np.all(bn_scale < 0) and np.all(scale * bn_scale == 0), "the product no longer underflows"
    assert np.all(conv0.arrays["direction"] == -1), conv0.arrays["direction"]
    save_model(model, tmp_path / "m.tpq")
    loaded = load_model(tmp_path / "m.tpq")
    images = np.random.default_rng(2).integers(0, 256, size=(4, *loaded.input_shape), dtype=np.uint8)
    report = verify_against_checkpoint(loaded, tmp_path, images, batch_size=4)
    assert report.ok, f"engine != trained model: {report.first_mismatch}"
    assert report.mismatches["conv0"] == 0 and report.elements["conv0"] > 0

    # What the exporter used to write: direction from the sign of the float32 product (+1).
    code = requant.epilogue_code(scale, conv0.arrays["bias"], bn_scale, conv0.arrays["bn_shift"],
                                 conv0.arrays["alpha"][0], conv0.attrs["out_max"], "half_up")
    bound = conv0.attrs["acc_bound"]
    up = np.ones_like(conv0.arrays["direction"])
    conv0.arrays["thresholds"] = requant.thresholds(code, up, conv0.attrs["out_max"], -bound, bound)
    conv0.arrays["direction"] = up
    save_model(model, tmp_path / "wrong.tpq")
    with pytest.raises(EngineError, match="conv0.*do not reproduce the layer's float epilogue in channel"):
        load_model(tmp_path / "wrong.tpq")

    monkeypatch.setattr(requant, "monotone_direction", lambda code, channels, lo, hi: np.ones(channels, np.int8))
    with pytest.raises(EngineError, match="conv0.*no integer thresholds reproduce"):
        export_checkpoint(tmp_path)
