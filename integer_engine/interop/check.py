"""Run an exported ONNX model in ONNX Runtime or in qonnx's executor and compare every layer with
the integer engine (the same `VerifyReport` as `verify`: element mismatches per layer).

    report = compare_with_engine(tpq_model, onnx_model, images)          # form from the metadata
"""
from __future__ import annotations

import json

import numpy as np

from integer_engine.errors import EngineError
from integer_engine.executor import Engine
from integer_engine.format import IntegerModel
from integer_engine.interop import require
from integer_engine.interop.graph import META_FORM, META_LAYERS, metadata
from integer_engine.verify import VerifyReport


def layer_names(onnx_model) -> list[str]:
    """The `.tpq` layer names the exporter recorded (each is a tensor of the graph)."""
    meta = metadata(onnx_model)
    if META_LAYERS not in meta:
        raise EngineError("this ONNX model was not exported by integer_engine (no tinypact.layers "
                          "metadata); export it with `python -m integer_engine export-onnx`")
    return json.loads(meta[META_LAYERS])


def with_layer_outputs(onnx_model, names: list[str]):
    """A copy of `onnx_model` whose graph outputs also include the tensors `names` (types from
    ONNX shape inference), so that ONNX Runtime returns them."""
    onnx = require("onnx")
    inferred = onnx.shape_inference.infer_shapes(onnx_model)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    present = {o.name for o in model.graph.output}
    for name in names:
        if name in present:
            continue
        if name not in known:
            raise EngineError(f"ONNX shape inference gives no type for layer tensor {name!r}")
        info = onnx.ValueInfoProto()
        info.CopyFrom(known[name])
        info.type.tensor_type.ClearField("shape")
        model.graph.output.append(info)
    return model


def run_onnxruntime(onnx_model, images: np.ndarray, names: list[str], options=None) -> dict[str, np.ndarray]:
    """Every tensor in `names` (and `logits`) for uint8 `images`, by ONNX Runtime on the CPU."""
    ort = require("onnxruntime")
    from integer_engine.interop.to_onnx import session_options

    model = with_layer_outputs(onnx_model, names)
    session = ort.InferenceSession(model.SerializeToString(), options or session_options(),
                                   providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    return dict(zip(outputs, session.run(outputs, {"input": np.ascontiguousarray(images, np.uint8)})))


def run_qonnx(onnx_model, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of the graph for `images` (fed as float32 pixel values), by qonnx's
    `execute_onnx` (custom ops in NumPy, standard ops node by node in ONNX Runtime)."""
    require("qonnx")
    from qonnx.core.onnx_exec import execute_onnx

    wrapper = with_batch(onnx_model, len(images))
    name = wrapper.graph.input[0].name
    return execute_onnx(wrapper, {name: np.asarray(images, np.float32)}, return_full_exec_context=True)


def with_batch(onnx_model, batch: int):
    """A qonnx ModelWrapper of a copy of `onnx_model` whose input has batch size `batch` and
    every tensor shape inferred (qonnx's executor needs them all)."""
    onnx = require("onnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    _batch_reshapes(model)
    model.graph.ClearField("value_info")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    return ModelWrapper(model).transform(InferShapes())


def _batch_reshapes(model) -> None:
    """Reshape targets written for batch 1 (Brevitas exports (1, F)) take any batch: -1 first."""
    from onnx import numpy_helper

    targets = {n.input[1] for n in model.graph.node if n.op_type == "Reshape" and len(n.input) > 1}
    for init in model.graph.initializer:
        if init.name in targets:
            shape = numpy_helper.to_array(init).copy()
            if shape.ndim == 1 and len(shape) >= 2 and shape[0] == 1:
                shape[0] = -1
                init.CopyFrom(numpy_helper.from_array(shape, init.name))


def _compare(model: IntegerModel, images: np.ndarray, batch_size: int, run_other, compare_layer
             ) -> VerifyReport:
    """Engine vs another executor batch by batch: `run_other(batch)` -> its tensors by name,
    `compare_layer(report, layer, ours, theirs_tensors, start)` -> its predictions or None."""
    engine = Engine(model)
    report = VerifyReport(images=len(images))
    ours, theirs = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        got = engine.run(batch, collect=True)
        want = run_other(batch)
        for layer in model.layers:
            predictions = compare_layer(report, layer, got.outputs[layer.name], want, start)
            if predictions is not None:
                theirs.append(predictions)
        ours.append(got.predictions)
    report.engine_predictions = np.concatenate(ours)
    report.other_predictions = np.concatenate(theirs) if theirs else None
    return report


def compare_with_source(model: IntegerModel, source, images: np.ndarray, batch_size: int = 64,
                        logits_rtol: float = 1e-5) -> VerifyReport:
    """An imported model against its QONNX source run by qonnx's executor on x = p / 255: every
    layer with a `graph_node` (the source tensor holding codes * out_scale) compared as codes
    rint(value / out_scale), exactly; the logits (a float32 GEMM in ONNX Runtime's own summation
    order, which no integer model reproduces bit for bit) within `logits_rtol` of the largest
    logit, and the predictions."""

    def compare_layer(report, layer, ours, want, start):
        node = layer.attrs.get("graph_node")
        if node is None:
            return None
        if node not in want:
            raise EngineError(f"the source model has no tensor {node!r}: it is not the model "
                              f"this .tpq was imported from")
        value = want[node]
        if layer.attrs.get("output") == "logits":
            tolerance = logits_rtol * max(float(np.max(np.abs(value))), 1e-30)
            close = np.abs(ours - value) <= tolerance
            report.compare(layer.name, close, np.ones_like(close), start)
            return np.argmax(value, axis=1)
        codes = np.rint(value / np.float32(layer.attrs["out_scale"]))
        codes = (codes + 1) / 2 if layer.attrs.get("out_bipolar") else codes - layer.attrs.get("out_offset", 0)
        report.compare(layer.name, ours, codes, start)
        return None

    return _compare(model, images, batch_size,
                    lambda batch: run_qonnx(source, batch.astype(np.float32) / np.float32(255)), compare_layer)


def compare_with_engine(model: IntegerModel, onnx_model, images: np.ndarray, batch_size: int = 64,
                        options=None) -> VerifyReport:
    """Element mismatches per layer between the engine and the ONNX model's tensor of the same
    name, run by ONNX Runtime or qonnx (by the model's recorded form), over `images`."""
    names = layer_names(onnx_model)
    qonnx = metadata(onnx_model).get(META_FORM) == "qonnx"
    ours = {layer.name for layer in model.layers}
    unknown = [name for name in names if name not in ours]
    if unknown or model.layers[-1].name not in names:
        name = unknown[0] if unknown else model.layers[-1].name
        raise EngineError(f"the ONNX model and the .tpq model disagree on layer {name!r}: it was "
                          f"exported from a different .tpq model")

    def compare_layer(report, layer, ours, want, start):
        if layer.name not in names:  # bypassed by the lowering: no tensor of its own
            return None
        # Compared by value across dtypes (qonnx holds codes as float32 integers): exact.
        if qonnx and layer.attrs.get("output") == "accumulator":
            ours = ours.astype(np.float32)  # qonnx's tensor is float32(acc), all the epilogue uses
        report.compare(layer.name, ours, want[layer.name], start)
        return np.argmax(want[model.output], axis=1) if layer is model.layers[-1] else None

    def run_other(batch):
        return run_qonnx(onnx_model, batch) if qonnx else run_onnxruntime(onnx_model, batch, names, options)

    return _compare(model, images, batch_size, run_other, compare_layer)
