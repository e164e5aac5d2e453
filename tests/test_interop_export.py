"""`.tpq` -> ONNX Runtime and -> QONNX: every layer's output equals the engine's, bit for bit.

Random tinypact networks (tests/random_networks.py, half of them with tie-heavy binary-fraction
constants, residual blocks, every quantizer) and the real architectures (the main command's
fmnist W2A2, W4A4, SVHN, ResNet-20 with 8- and 4-bit shortcuts) are exported to both forms and
run by ONNX Runtime and by qonnx's executor; `compare_with_engine` counts differing elements in
every layer (codes, accumulators, float32 logits).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("onnx", reason="the interop tests need the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="the interop tests need the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("qonnx", reason="the interop tests need the onnx extra: pip install -e '.[onnx]'")

import onnxruntime as ort  # noqa: E402

from integer_engine.cli import main  # noqa: E402
from integer_engine.errors import EngineError  # noqa: E402
from integer_engine.export import export_checkpoint, lower_graph  # noqa: E402
from integer_engine.format import save_model  # noqa: E402
from integer_engine.interop import to_qonnx as to_qonnx_module  # noqa: E402
from integer_engine.interop.check import compare_with_engine, layer_names, run_qonnx  # noqa: E402
from integer_engine.interop.to_onnx import to_onnx  # noqa: E402
from integer_engine.interop.to_qonnx import to_qonnx  # noqa: E402
from random_networks import random_network  # noqa: E402
from test_engine_tinypact import make_checkpoint  # noqa: E402


def assert_exact(model, onnx_model, images, what, options=None):
    report = compare_with_engine(model, onnx_model, images, options=options)
    assert report.ok, f"{what}: ONNX != engine in layers {report.first_mismatch}"
    compared = set(layer_names(onnx_model))
    assert set(report.mismatches) == compared, "not every layer tensor was compared"
    bypassed = [layer.attrs["kind"] for layer in model.layers if layer.name not in compared]
    assert set(bypassed) <= {"flatten"}, f"only a Flatten split by digits may lack a tensor: {bypassed}"
    assert np.array_equal(report.engine_predictions, report.other_predictions)


@settings(max_examples=40)
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_onnxruntime_equals_engine_on_random_networks(seed, ties):
    net, images = random_network(np.random.default_rng(seed), ties=ties)
    model = lower_graph(net.graph(), net.state_dict())
    onnx_model = to_onnx(model)
    assert_exact(model, onnx_model, images, f"seed={seed} ties={ties} (basic optimizations)")
    everything = ort.SessionOptions()
    everything.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert_exact(model, onnx_model, images, f"seed={seed} ties={ties} (all optimizations)", everything)


@settings(max_examples=40)
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_qonnx_equals_engine_on_random_networks(seed, ties):
    net, images = random_network(np.random.default_rng(seed), ties=ties)
    model = lower_graph(net.graph(), net.state_dict())
    assert_exact(model, to_qonnx(model), images, f"seed={seed} ties={ties}")


@settings(max_examples=25)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(1, 8), st.sampled_from(["avgpool", "subsample"]))
def test_residual_networks_equal_engine_in_both_forms(seed, abits, shortcut_bits, mode):
    """ResNet blocks with both option-A shortcut modes (in QONNX one 0/1 channel-embedding Conv
    each, no Pad: FINN maps it), float32 residual adds, a global pool."""
    from test_engine_models import resnet_like

    rng = np.random.default_rng(seed)
    model = lower_graph(*resnet_like(rng, wbits=2, abits=abits, wq="dorefa", size=8, widths=(2, 4),
                                     shortcut_bits=shortcut_bits, shortcut_mode=mode))
    images = rng.integers(0, 256, size=(3, *model.input_shape), dtype=np.uint8)
    assert_exact(model, to_onnx(model), images, f"seed={seed} {mode} onnxruntime")
    qonnx_model = to_qonnx(model)
    assert not [n for n in qonnx_model.graph.node if n.op_type in ("Pad", "Slice", "Floor")]
    assert_exact(model, qonnx_model, images, f"seed={seed} {mode} qonnx")


@pytest.mark.parametrize("name,policy", [
    ("fmnist", dict(wbits=2, abits=2)),  # the main command's network
    ("fmnist", dict(wbits=4, abits=4)),
    ("fmnist", dict(wbits=1, abits=2)),
    ("fmnist", dict(wbits=4, abits=4, weight_quant="sawb0")),
    ("svhn", dict(wbits=2, abits=2)),
    ("resnet20", dict(wbits=2, abits=2, shortcut_bits=8)),  # logits beyond 2**24: split in qonnx
    ("resnet20", dict(wbits=4, abits=4, shortcut_bits=4)),
])
def test_architectures_export_to_both_forms(tmp_path, name, policy):
    make_checkpoint(tmp_path / "checkpoint.npz", name, **policy)
    model = export_checkpoint(tmp_path)
    images = np.random.default_rng(2).integers(0, 256, size=(6, *model.input_shape), dtype=np.uint8)
    assert_exact(model, to_onnx(model), images, f"{name} {policy} onnxruntime")
    assert_exact(model, to_qonnx(model), images, f"{name} {policy} qonnx")


def test_qonnx_two_part_accumulators_are_exact():
    """With the float32 limit lowered to 200,000, many layers take the split paths (input digits
    q = 256 hi + lo, or two halves of the input channels): those graphs still reproduce the
    engine, and both paths are exercised."""
    from onnx import numpy_helper

    digits = halves = 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(to_qonnx_module, "FLOAT32_EXACT", 200_000)
        for seed in range(60):
            net, images = random_network(np.random.default_rng(seed))
            model = lower_graph(net.graph(), net.state_dict())
            try:
                onnx_model = to_qonnx(model)
            except EngineError as err:
                assert "no split" in str(err)
                continue
            consts = {i.name: numpy_helper.to_array(i) for i in onnx_model.graph.initializer}
            digits += any(n.output[0].startswith("high_digit") for n in onnx_model.graph.node)
            halves += any(n.op_type == "Slice" and consts[n.input[3]].tolist() == [1] for n in onnx_model.graph.node)
            assert_exact(model, onnx_model, images, f"seed={seed} (split)")
    assert digits and halves, f"split paths exercised: digits {digits}, channel halves {halves}"


def test_qonnx_refuses_an_inexact_layer_naming_it():
    net, _ = random_network(np.random.default_rng(3))
    model = lower_graph(net.graph(), net.state_dict())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(to_qonnx_module, "FLOAT32_EXACT", 0)
        with pytest.raises(EngineError, match=r"layer '.*': worst-case accumulator .* exceeds 2\*\*24"):
            to_qonnx(model)


def test_qonnx_weights_carry_their_bit_widths(tmp_path):
    """Odd DoReFa levels: a (k+1)-bit signed narrow Quant; zero-aligned SAWB: k bits, scale 2;
    1 bit: BipolarQuant. Each returns the integer levels unchanged; MultiThreshold outputs are
    annotated UINTk."""
    from qonnx.core.modelwrapper import ModelWrapper

    for policy in [dict(wbits=3, abits=2), dict(wbits=4, abits=2, weight_quant="sawb0"), dict(wbits=1, abits=2)]:
        make_checkpoint(tmp_path / "checkpoint.npz", "fmnist", **policy)
        model = export_checkpoint(tmp_path)
        layers = [layer.attrs for layer in model.compute_layers]
        want = {a["wbits"] + (a["n_w"] % 2) for a in layers if a["wbits"] > 1}  # odd levels: one bit more
        bipolar = sum(a["wbits"] == 1 for a in layers)
        onnx_model = to_qonnx(model)
        wrapper = ModelWrapper(onnx_model)
        images = np.zeros((1, *model.input_shape), np.uint8)
        context = run_qonnx(onnx_model, images)
        widths, bipolars = set(), 0
        for node in onnx_model.graph.node:
            if node.op_type == "Quant":
                widths.add(int(np.asarray(wrapper.get_initializer(node.input[3])).reshape(-1)[0]))
                assert np.array_equal(context[node.output[0]], wrapper.get_initializer(node.input[0]))
            bipolars += node.op_type == "BipolarQuant"
        assert widths == want and bipolars == bipolar, f"{policy}: Quant bit widths {widths}, expected {want}"
        if policy.get("weight_quant") != "sawb0":
            assert 9 in widths, "8-bit DoReFa first/last layers (odd levels) are 9-bit narrow Quants"
        assert str(wrapper.get_tensor_datatype(model.layers[0].name)) == "UINT2"
        assert str(wrapper.get_tensor_datatype("input")) == "UINT8"


def test_cli_export_and_verify(tmp_path, capsys):
    make_checkpoint(tmp_path / "checkpoint.npz", "fmnist", wbits=2, abits=2)
    save_model(export_checkpoint(tmp_path), tmp_path / "m.tpq")
    for extra in ([], ["--qonnx"]):
        out = str(tmp_path / f"m{len(extra)}.onnx")
        assert main(["export-onnx", str(tmp_path / "m.tpq"), "-o", out, *extra]) == 0
        assert main(["verify-onnx", str(tmp_path / "m.tpq"), out, "--random", "4"]) == 0
        assert "0 mismatches" in capsys.readouterr().out
    assert main(["verify-onnx", str(tmp_path / "m.tpq"), str(tmp_path / "missing.onnx")]) == 2
    assert "ONNX model not found" in capsys.readouterr().err
    for extra in ([], ["--qonnx"]):  # -o naming a directory: one line, before any work
        assert main(["export-onnx", str(tmp_path / "m.tpq"), "-o", str(tmp_path), *extra]) == 2
        assert capsys.readouterr().err == (f"error: -o {tmp_path} is a directory; give a file name, "
                                           f"e.g. {tmp_path / 'model.onnx'}\n")
    assert main(["export-onnx", str(tmp_path / "m.tpq"), "-o", "/proc/m.onnx"]) == 2
    assert "cannot write to /proc" in capsys.readouterr().err

    # An ONNX file exported from another model is refused, as verify refuses another checkpoint.
    other = tmp_path / "other"
    other.mkdir()
    make_checkpoint(other / "checkpoint.npz", "fmnist", seed=5, wbits=2, abits=2)
    save_model(export_checkpoint(other), other / "model.tpq")
    for form in ("m0.onnx", "m1.onnx"):
        assert main(["verify-onnx", str(other), str(tmp_path / form), "--random", "4"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "was exported from another model than" in err, err


def test_cli_verify_names_the_layers_a_form_bypasses(tmp_path, capsys):
    """ResNet-20's logits split by digits before the Flatten: in QONNX the flatten layer has no
    tensor; verify-onnx says so instead of silently comparing one layer fewer."""
    make_checkpoint(tmp_path / "checkpoint.npz", "resnet20", wbits=2, abits=2, shortcut_bits=8)
    save_model(export_checkpoint(tmp_path), tmp_path / "m.tpq")
    for extra, line in (([], False), (["--qonnx"], True)):
        out = str(tmp_path / f"m{len(extra)}.onnx")
        assert main(["export-onnx", str(tmp_path / "m.tpq"), "-o", out, *extra]) == 0
        assert main(["verify-onnx", str(tmp_path / "m.tpq"), out, "--random", "2"]) == 0
        printed = capsys.readouterr().out
        assert "total: 0 mismatches" in printed
        assert ("not compared, no tensor of their own in this form: flatten" in printed) == line, printed


@pytest.mark.parametrize("batch", [1, 3])
def test_qonnx_file_runs_as_saved_with_every_shape_and_datatype(tmp_path, batch):
    """The saved file runs in qonnx's execute_onnx unchanged (every tensor's shape is in it) at
    its batch; Conv nodes carry every attribute qonnx/FINN read; Quant parameters are 0-d, so
    qonnx's InferDataTypes gives each weight Quant INTk, BipolarQuant BIPOLAR, MultiThreshold
    UINTk (the bit widths FINN then builds its units for)."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_datatypes import InferDataTypes

    make_checkpoint(tmp_path / "checkpoint.npz", "fmnist", wbits=1, abits=2)
    model = export_checkpoint(tmp_path)
    save_model(model, tmp_path / "m.tpq")
    path = tmp_path / "m.onnx"
    assert main(["export-onnx", str(tmp_path / "m.tpq"), "-o", str(path), "--qonnx", "--batch", str(batch)]) == 0
    wrapper = ModelWrapper(onnx.load(path))
    graph = wrapper.graph
    typed = {v.name for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    typed |= {i.name for i in graph.initializer}
    untyped = {t for n in graph.node for t in list(n.input) + list(n.output)} - typed
    assert not untyped, f"tensors without a shape in the file: {sorted(untyped)[:5]}"
    images = np.random.default_rng(0).integers(0, 256, (batch, *model.input_shape), dtype=np.uint8)
    logits = execute_onnx(wrapper, {"input": images.astype(np.float32)})["logits"]
    assert logits.shape == (batch, 10)
    from integer_engine.executor import Engine
    assert np.array_equal(logits, Engine(model).run(images).logits)

    for node in graph.node:
        if node.op_type == "Conv":
            assert {"group", "dilations", "kernel_shape", "pads", "strides"} <= {a.name for a in node.attribute}
        if node.op_type in ("Quant", "BipolarQuant"):
            for name in node.input[1:]:
                assert wrapper.get_initializer(name).ndim == 0, f"{node.op_type} parameter {name} is not 0-d"
    inferred = wrapper.transform(InferDataTypes())
    types = {(n.op_type, str(inferred.get_tensor_datatype(n.output[0]))) for n in inferred.graph.node
             if n.op_type in ("Quant", "BipolarQuant", "MultiThreshold")}
    # 8-bit first/last layers: odd DoReFa levels are 9-bit narrow; 1-bit middle layers: bipolar
    assert types == {("Quant", "INT9"), ("BipolarQuant", "BIPOLAR"), ("MultiThreshold", "UINT2")}, types


def test_qonnx_average_pools_are_depthwise_ones_convs(tmp_path):
    """FINN maps no ReduceSum: average pools, the global one included, are depthwise Convs with
    a BINARY all-ones kernel (FINN lowers them to vector-vector units), still exact."""
    from qonnx.core.modelwrapper import ModelWrapper

    make_checkpoint(tmp_path / "checkpoint.npz", "fmnist", wbits=2, abits=2)
    models = [(export_checkpoint(tmp_path), None)]
    for seed in range(40):  # random networks with windowed average pools
        net, images = random_network(np.random.default_rng(seed))
        model = lower_graph(net.graph(), net.state_dict())
        if any(layer.attrs["kind"] == "avgpool" and layer.attrs["kernel"] != "global" for layer in model.layers):
            models.append((model, images))
    kernels = set()
    for model, images in models[:4]:
        onnx_model = to_qonnx(model)
        wrapper = ModelWrapper(onnx_model)
        assert not any(n.op_type == "ReduceSum" for n in onnx_model.graph.node)
        for layer in (layer for layer in model.layers if layer.attrs["kind"] == "avgpool"):
            (node,) = [n for n in onnx_model.graph.node if layer.name in n.output]
            attrs = {a.name: a for a in node.attribute}
            assert node.op_type == "Conv" and attrs["group"].i == layer.attrs["in_shape"][0]
            assert str(wrapper.get_tensor_datatype(node.input[1])) == "BINARY"
            kernels.add(layer.attrs["kernel"])
        if images is None:
            images = np.random.default_rng(1).integers(0, 256, (4, *model.input_shape), dtype=np.uint8)
        assert_exact(model, onnx_model, images, "average pools")
    assert "global" in kernels and len(kernels) >= 2, f"pools exercised: {kernels}"


def test_cli_export_refuses_a_bad_batch(tmp_path, capsys):
    make_checkpoint(tmp_path / "checkpoint.npz", "fmnist", wbits=2, abits=2)
    save_model(export_checkpoint(tmp_path), tmp_path / "m.tpq")
    assert main(["export-onnx", str(tmp_path / "m.tpq"), "-o", str(tmp_path / "m.onnx"), "--qonnx", "--batch", "0"]) == 2
    assert main(["export-onnx", str(tmp_path / "m.tpq"), "-o", str(tmp_path / "m.onnx"), "--batch", "4"]) == 2
    err = capsys.readouterr().err
    assert "--batch must be at least 1" in err and "--batch applies to --qonnx only" in err


def test_onnxruntime_one_integer_product_per_layer_where_levels_fit_int8(tmp_path):
    """Weights up to 7 bits: one ConvInteger / MatMulInteger per layer on the levels c = 2j - n_w
    (uint8 c + 128, weight zero point 128; no row-sum product); 8-bit layers (levels up to +-255)
    keep the row-sum correction."""
    from onnx import numpy_helper

    make_checkpoint(tmp_path / "checkpoint.npz", "fmnist", wbits=4, abits=4)
    model = export_checkpoint(tmp_path)
    onnx_model = to_onnx(model)
    consts = {i.name: numpy_helper.to_array(i) for i in onnx_model.graph.initializer}
    products = [n for n in onnx_model.graph.node if n.op_type in ("ConvInteger", "MatMulInteger")]
    for layer in model.compute_layers:
        a = layer.attrs
        mine = [n for n in products if n.input[1].startswith(f"{a['name']}_")]
        if a["n_w"] <= 127:
            assert len(mine) == 1 and consts[mine[0].input[3]] == 128, a["name"]
            levels = consts[mine[0].input[1]].astype(np.int64) - 128
            assert np.all(np.abs(levels) <= a["n_w"]) and np.all(levels % 2 == a["n_w"] % 2), a["name"]
            ones = [n for n in products if n.op_type == "ConvInteger" and n.input[0] == mine[0].input[0]
                    and n is not mine[0]]
            assert not ones, f"{a['name']}: a row-sum product is left"
    assert sum(layer.attrs["n_w"] <= 127 for layer in model.compute_layers) >= 2
    images = np.random.default_rng(0).integers(0, 256, (8, *model.input_shape), dtype=np.uint8)
    assert_exact(model, onnx_model, images, "fmnist W4A4 folded")
