"""Brevitas-exported QONNX models (tests/fixtures/brevitas, made by
scripts/make_brevitas_fixtures.py) imported into `.tpq`: every layer's codes equal qonnx's
executor on the source, the engine equals the reference, and what the format cannot hold is
refused with one line naming the node."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the interop tests need the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("qonnx", reason="the interop tests need the onnx extra: pip install -e '.[onnx]'")

import onnx  # noqa: E402

from integer_engine.cli import main  # noqa: E402
from integer_engine.errors import EngineError  # noqa: E402
from integer_engine.format import load_model, save_model  # noqa: E402
from integer_engine.interop.check import compare_with_source  # noqa: E402
from integer_engine.interop.from_qonnx import import_qonnx  # noqa: E402
from integer_engine.verify import verify_model  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "brevitas"
NAMES = ["cnv_w4a4", "cnv_fixed_point", "cnv_fixed_point_half_up", "mlp_w2a2", "resnet_w4a4", "bnn_w1a1"]


def images_for(model, count=96, seed=0):
    images = np.random.default_rng(seed).integers(0, 256, size=(count, *model.input_shape), dtype=np.uint8)
    images[: count // 4] = 0  # flat images: constant pre-activations, every channel at its bias
    images[count // 4: count // 2] //= 16  # dark images: the low end of the input range
    return images


@pytest.mark.parametrize("name", NAMES)
def test_fixture_imports_and_matches_qonnx(tmp_path, name):
    path = FIXTURES / f"{name}.onnx"
    model = import_qonnx(path)
    save_model(model, tmp_path / "m.tpq")
    model = load_model(tmp_path / "m.tpq")  # the format validates an imported (epilogue "source") model
    images = images_for(model)
    assert verify_model(model, images).ok, "engine != reference on an imported model"
    report = compare_with_source(model, onnx.load(path), images)
    assert report.ok, f"{name}: engine != qonnx's executor: {report.first_mismatch}"
    compared = {layer.name for layer in model.layers if layer.attrs.get("graph_node")}
    assert set(report.mismatches) == compared and len(compared) >= 4
    assert np.array_equal(report.engine_predictions, report.other_predictions)


def test_half_up_and_half_even_sources_give_their_own_thresholds():
    """Power-of-two scales put activations on exact ties: qonnx's ROUND (half to even) and
    HALF_UP differ there, and each import follows its source."""
    even = import_qonnx(FIXTURES / "cnv_fixed_point.onnx")
    up = import_qonnx(FIXTURES / "cnv_fixed_point_half_up.onnx")
    differ = sum(int(np.sum(a.arrays["thresholds"] != b.arrays["thresholds"]))
                 for a, b in zip(even.compute_layers, up.compute_layers) if "thresholds" in a.arrays)
    assert differ > 0, "the fixtures no longer exercise the rounding rule"
    assert {layer.attrs.get("rounding") for layer in up.compute_layers if "thresholds" in layer.arrays} == {"half_up"}
    assert {layer.attrs.get("rounding") for layer in even.compute_layers if "thresholds" in layer.arrays} == {"half_even"}


def edited(name: str, edit) -> onnx.ModelProto:
    proto = onnx.load(FIXTURES / f"{name}.onnx")
    edit(proto)
    return proto


def signed_activation(proto):
    """The first conv's activation Quant made signed: its codes would feed the next conv."""
    node = [n for n in proto.graph.node if n.op_type == "Quant" and n.input[0] != "input"
            and not n.input[0].startswith(("slice", "onnx::"))][0]
    next(a for a in node.attribute if a.name == "signed").i = 1


def sigmoid_instead_of_relu(proto):
    next(n for n in proto.graph.node if n.op_type == "Relu").op_type = "Sigmoid"


def padded_conv_on_bipolar(proto):
    """The second binary conv (fed by +-1 activations) given padding 1."""
    conv = [n for n in proto.graph.node if n.op_type == "Conv"][1]
    next(a for a in conv.attribute if a.name == "pads").ints[:] = [1, 1, 1, 1]


def unquantized_branch(proto):
    """The first residual Add fed by the branch's batch norm output directly (no QuantIdentity)."""
    add = next(n for n in proto.graph.node if n.op_type == "Add")
    quant = next(n for n in proto.graph.node if n.output[0] == add.input[0])
    add.input[0] = quant.input[0]
    proto.graph.node.remove(quant)


@pytest.mark.parametrize("name,edit,message", [
    ("cnv_w4a4", signed_activation, r"\(Conv\): its input has signed codes"),
    ("cnv_w4a4", sigmoid_instead_of_relu, r"\(Sigmoid\): between a Conv/Gemm and its activation Quant only"),
    ("bnn_w1a1", padded_conv_on_bipolar, r"\(Conv\): a padded Conv on bipolar \(\+-1\) inputs"),
    ("resnet_w4a4", unquantized_branch, r"\(Add\): a residual add of an unquantized tensor"),
])
def test_unrepresentable_models_are_refused_in_one_line(tmp_path, capsys, name, edit, message):
    path = tmp_path / "edited.onnx"
    onnx.save(edited(name, edit), path)
    with pytest.raises(EngineError, match=message):
        import_qonnx(path)
    assert main(["import", str(path), "-o", str(tmp_path / "m.tpq")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: node ")


def test_resnet_fixture_has_adds_signed_codes_and_a_global_pool():
    """The ResNet-style fixture: Brevitas's default signed input quantizer (pixels give codes
    0..127), signed branch codes (offset -8) into two residual adds with float32 thresholds, a
    global average pool; its imported model exports to ONNX Runtime and QONNX exactly."""
    from integer_engine.interop.check import compare_with_engine
    from integer_engine.interop.to_onnx import to_onnx
    from integer_engine.interop.to_qonnx import to_qonnx

    model = import_qonnx(FIXTURES / "resnet_w4a4.onnx")
    kinds = [layer.attrs["kind"] for layer in model.layers]
    assert kinds.count("add") == 2 and "avgpool" in kinds
    assert model.layers[0].attrs["kind"] == "requant" and model.layers[0].attrs["out_max"] == 127
    assert {layer.attrs.get("out_offset") for layer in model.layers} >= {-8}
    adds = [layer for layer in model.layers if layer.attrs["kind"] == "add"]
    assert all(layer.attrs["epilogue"] == "source" and np.all(np.isfinite(layer.arrays["float_thresholds"]))
               for layer in adds)
    images = images_for(model, 24)
    for onnx_model in (to_onnx(model), to_qonnx(model)):
        assert compare_with_engine(model, onnx_model, images).ok


def test_bnn_fixture_keeps_bipolar_activations_as_codes():
    """Bipolar activations a = 2b - 1 are stored as codes b (out_bipolar); both levels occur, and
    the next layers fold the weight row sums into their thresholds (logits: into the bias)."""
    model = import_qonnx(FIXTURES / "bnn_w1a1.onnx")
    bipolar = [layer for layer in model.layers if layer.attrs.get("out_bipolar")]
    assert [layer.attrs["kind"] for layer in bipolar] == ["conv", "conv", "maxpool"]
    from integer_engine.executor import Engine
    outputs = Engine(model).run(images_for(model, 32), collect=True).outputs
    for layer in bipolar:
        assert set(np.unique(outputs[layer.name]).tolist()) == {0, 1}, layer.name
    assert any(layer.attrs["kind"] == "avgpool" and layer.attrs["kernel"] == 2 for layer in model.layers)


def test_tampered_imported_add_thresholds_are_refused(tmp_path):
    model = import_qonnx(FIXTURES / "resnet_w4a4.onnx")
    add = next(layer for layer in model.layers if layer.attrs["kind"] == "add")
    add.arrays["float_thresholds"] = add.arrays["float_thresholds"][::-1].copy()
    save_model(model, tmp_path / "bad.tpq")
    with pytest.raises(EngineError, match="float_thresholds must be non-decreasing"):
        load_model(tmp_path / "bad.tpq")


def test_tampered_imported_thresholds_are_refused(tmp_path):
    model = import_qonnx(FIXTURES / "mlp_w2a2.onnx")
    layer = next(layer for layer in model.compute_layers if "thresholds" in layer.arrays)
    layer.arrays["thresholds"] = layer.arrays["thresholds"][:, ::-1].copy()
    save_model(model, tmp_path / "bad.tpq")
    with pytest.raises(EngineError, match="thresholds are not ordered"):
        load_model(tmp_path / "bad.tpq")


def test_cli_import_verify_run_simulate(tmp_path, capsys):
    source = str(FIXTURES / "cnv_w4a4.onnx")
    tpq = str(tmp_path / "cnv.tpq")
    assert main(["import", source, "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: -o {tmp_path} is a directory; give a file name, e.g. "
                                       f"{tmp_path / 'model.tpq'}\n")
    assert main(["import", source, "-o", tpq]) == 0
    assert main(["verify-onnx", tpq, source, "--random", "8"]) == 0
    assert "total: 0 mismatches" in capsys.readouterr().out
    np.savez(tmp_path / "data.npz", images=images_for(load_model(tpq), 16), labels=np.zeros(16, np.int64))
    assert main(["run", tpq, "--data", str(tmp_path / "data.npz")]) == 0
    assert main(["verify", tpq, "--random", "8"]) == 0
    assert main(["simulate", tpq, "--out", str(tmp_path / "sim")]) == 0
