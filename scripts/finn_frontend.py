"""FINN's front end on tinypact's QONNX export, checked against the integer engine at every stage.

Runs, transform by transform, what finn-plus 1.6.1's build steps `step_qonnx_to_finn`,
`step_tidy_up`, `step_streamline`, `step_convert_to_hw`, `step_minimize_bit_width_initial`,
`step_create_dataflow_partition`, `step_specialize_layers` and `step_transpose_decomposition`
run (finn/builder/build_dataflow_steps.py, with DataflowBuildConfig's defaults; that module
itself cannot be imported without Vivado), and after each stage executes the model with FINN's
`execute_onnx` on every image: logits and predictions must equal the engine's bit for bit.
After `step_convert_to_hw` every node must be a HW layer (domain finn.custom_op.fpgadataflow),
so the dataflow partition holds the whole network; after `step_specialize_layers` every node is
an HLS or RTL variant but the layout Shuffles, which `step_transpose_decomposition` specializes.
The models after each stage are saved in --out (`NN_<stage>.onnx`); the dataflow model after
specializing, `dataflow_specialized.onnx`, is where a FINN build with Vivado continues
(docs/interop.md).

Needs finn-plus, which is not a tinypact dependency: a separate venv (as .ci/run makes it)

    python3 -m venv .venv-finn
    .venv-finn/bin/pip install --no-deps finn-plus==1.6.1
    .venv-finn/bin/pip install -r scripts/finn-requirements.txt && .venv-finn/bin/pip install -e .
    .venv-finn/bin/python scripts/finn_frontend.py model.tpq [--data sample --limit 50 | --random 20] [--out DIR]

Exit status 0 when every stage matches, 1 on a mismatch or an unmapped node, 2 on bad input.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

FPGA_PART = "xc7z020clg400-1"  # PYNQ-Z1, FINN's usual example board (only names the target here)
HW_DOMAIN = "finn.custom_op.fpgadataflow"
SPECIALIZED = "dataflow_specialized.onnx"  # step_specialize_layers' output: where a Vivado build continues
DECOMPOSED = "dataflow_transposes_decomposed.onnx"  # step_transpose_decomposition's output


@dataclass
class StageResult:
    """One stage: images whose logits/predictions differ from the engine's, unmapped nodes."""

    stage: str
    nodes: int
    logits_mismatches: int = 0
    prediction_mismatches: int = 0
    unmapped: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.logits_mismatches or self.prediction_mismatches or self.unmapped)


# ---- the build steps' transform sequences (finn-plus 1.6.1, default DataflowBuildConfig) ------
def qonnx_to_finn(model, workdir):
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN
    from finn.transformation.qonnx.quant_act_to_multithreshold import default_filter_function_generator
    from qonnx.util.cleanup import cleanup_model

    model = cleanup_model(model)
    return model.transform(ConvertQONNXtoFINN(
        filter_function=default_filter_function_generator(max_multithreshold_bit_width=8)))


def tidy_up(model, workdir):
    from finn.transformation.qonnx.give_unique_node_names_recursive import GiveUniqueNodeNamesRecursive
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import GiveReadableTensorNames, RemoveStaticGraphInputs
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    for transform in (InferShapes(), FoldConstants(), GiveUniqueNodeNamesRecursive(), GiveReadableTensorNames(),
                      InferDataTypes(), RemoveStaticGraphInputs()):
        model = model.transform(transform)
    return model


def streamline(model, workdir):
    import finn.transformation.streamline.absorb as absorb
    from finn.transformation.streamline import Streamline
    from finn.transformation.streamline.reorder import MakeMaxPoolNHWC
    from qonnx.transformation.bipolar_to_xnor import ConvertBipolarMatMulToXnorPopcount
    from qonnx.transformation.general import RemoveUnusedTensors
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul

    model = model.transform(absorb.AbsorbScalarBiasIntoMultiThreshold())
    model = model.transform(Streamline())
    if model.get_nodes_by_op_type("Conv"):
        for transform in (LowerConvsToMatMul(), MakeMaxPoolNHWC(), absorb.AbsorbTransposeIntoMultiThreshold(),
                          MakeMaxPoolNHWC(), absorb.AbsorbConsecutiveTransposes()):
            model = model.transform(transform)
    for transform in (ConvertBipolarMatMulToXnorPopcount(), Streamline(), absorb.AbsorbScalarMulAddIntoTopK(),
                      InferDataLayouts(), RemoveUnusedTensors()):
        model = model.transform(transform)
    return model


def convert_to_hw(model, workdir):
    """step_convert_to_hw with standalone_thresholds False (the default): each inference
    transform runs when its op types are present, in the step's order."""
    import finn.transformation.fpgadataflow.convert_to_hw as hw
    import finn.transformation.streamline.absorb as absorb
    from finn.transformation.fpgadataflow.absorb_into_requant import AbsorbElementwiseOpsIntoRequant
    from finn.transformation.move_reshape import RemoveCNVtoFCFlatten
    from finn.transformation.qonnx.give_unique_node_names_recursive import GiveUniqueNodeNamesRecursive
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    def module(name):
        import importlib
        return importlib.import_module(f"{hw.__name__}.{name}")

    binary = ["Mul", "Div", "Sub", "Add", "And", "Or", "Xor", "Equal", "Less", "LessOrEqual", "Greater",
              "GreaterOrEqual"]
    requant = lambda: module("requant").InferRequantLayer(bitwidth_threshold=9)  # noqa: E731
    sequence = [
        (["XnorPopcountMatMul"], lambda: module("binary_matrix_vector_activation").InferBinaryMatrixVectorActivation()),
        (["MatMul"], lambda: module("quantized_matrix_vector_activation").InferQuantizedMatrixVectorActivation()),
        (["MatMul"], lambda: module("vector_vector_activation").InferVectorVectorActivation()),
        (["TopK"], lambda: module("label_select").InferLabelSelectLayer()),
        (["MultiThreshold", "Quant"], requant),
        (["MultiThreshold"], lambda: module("thresholding").InferThresholdingLayer()),
        (["Pad"], lambda: module("fm_padding").InferFMPadding()),
        (["MaxPool", "AveragePool", "MaxPoolNHWC", "QuantAvgPool2d"], lambda: module("pool").InferPool()),
        (["ReduceMax", "ReduceSum", "ReduceMean"], lambda: module("pool_from_reduce").InferPoolFromReduce()),
        (["Im2Col"], lambda: module("conv_inp_gen").InferConvInpGen()),
        (["ConvolutionInputGenerator"], RemoveCNVtoFCFlatten),
        (["Concat"], lambda: module("pad1d").InferPad1DLayer()),
        (["Concat"], lambda: module("concat").InferConcatLayer()),
        (["Split"], lambda: module("split").InferSplitLayer()),
        (binary, lambda: module("elementwise_binary_operation").InferElementwiseBinaryOperation()),
        (["Where"], lambda: module("where").InferWhereLayer()),
        (["Relu"], lambda: module("relu_as_elementwise_max").InferReLUAsElementwiseMax()),
        (["Upsample"], lambda: module("upsample").InferUpsample()),
        (["GlobalAveragePool"], lambda: module("global_acc_pool").InferGlobalAccPoolLayer()),
        (["Gather"], lambda: module("select_token").InferSelectTokenLayer()),
        (["Gather"], lambda: module("crop").InferCrop()),
        (["Gather"], lambda: module("lookup").InferLookupLayer()),
        (["Softmax"], lambda: module("hw_softmax").InferHWSoftmax()),
        (["PWPolyF", "Gelu", "Sigmoid", "Tanh", "Erf"], lambda: module("pwpolyf").InferPWPolyFLayer()),
        (["LayerNormalization"], lambda: module("layer_norm").InferLayerNorm()),
        (["Crop"], lambda: module("crop").InferCrop()),
    ]
    for op_types, make in sequence:
        if any(model.get_nodes_by_op_type(op) for op in op_types):
            model = model.transform(make())
    model = model.transform(module("duplicate_streams").InferDuplicateStreamsLayer())
    if model.get_nodes_by_op_type("Requant"):
        model = model.transform(AbsorbElementwiseOpsIntoRequant())
    for transform in (absorb.AbsorbConsecutiveTransposes(), RemoveCNVtoFCFlatten(), GiveUniqueNodeNamesRecursive(),
                      InferDataLayouts(), InferDataTypes(), InferShapes(), module("reshape").InferReshape()):
        model = model.transform(transform)
    if model.get_nodes_by_op_type("Transpose"):
        model = model.transform(module("shuffle").InferShuffle())
    return model


def minimize_bit_width_initial(model, workdir):
    from finn.transformation.fpgadataflow.minimize_accumulator_width import MinimizeAccumulatorWidth
    from finn.transformation.fpgadataflow.minimize_weight_bit_width import MinimizeWeightBitWidth
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from qonnx.transformation.infer_datatypes import InferDataTypes

    for transform in (MinimizeWeightBitWidth(), MinimizeAccumulatorWidth(), InferDataTypes(),
                      RoundAndClipThresholds(), InferDataTypes(), MinimizeWeightBitWidth(), InferDataTypes()):
        model = model.transform(transform, apply_to_subgraphs=True)
    return model


def create_dataflow_partition(model, workdir):
    """The parent model (one StreamingDataflowPartition node when everything is mapped) is what
    runs here; its child is the dataflow model the later steps build."""
    from finn.transformation.fpgadataflow.create_dataflow_partition import CreateDataflowPartition

    return model.transform(CreateDataflowPartition(partition_model_dir=os.path.join(workdir, "partitions")))


def specialize_layers(model, workdir, part: str = FPGA_PART):
    """The partition's dataflow model with every HW layer specialized to its HLS or RTL variant
    (saved as dataflow_specialized.onnx) but the Shuffles, which FINN specializes in
    step_transpose_decomposition; returned is the parent pointing at it, which runs."""
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from finn.transformation.qonnx.give_unique_node_names_recursive import GiveUniqueNodeNamesRecursive
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    return _dataflow_stage(model, workdir, SPECIALIZED, [SpecializeLayers(part), GiveUniqueNodeNamesRecursive(),
                                                         InferShapes(), InferDataTypes()])


def transpose_decomposition(model, workdir, part: str = FPGA_PART):
    """step_transpose_decomposition: every Shuffle (a layout transpose FINN's streamlining left,
    e.g. around a residual add) as InnerShuffle/OuterShuffle chains, specialized. FINN's build
    runs its folding steps (target_fps_parallelization, apply_folding_config, minimize_bit_width)
    before this one; they choose parallelism and bit widths, not values."""
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from finn.transformation.fpgadataflow.transpose_decomposition import (InferInnerOuterShuffles,
                                                                          ShuffleDecomposition)
    from finn.transformation.qonnx.give_unique_node_names_recursive import GiveUniqueNodeNamesRecursive
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    transforms = [ShuffleDecomposition(), InferInnerOuterShuffles(), SpecializeLayers(part), InferShapes(),
                  InferDataTypes(), GiveUniqueNodeNamesRecursive()]
    return _dataflow_stage(model, workdir, DECOMPOSED, transforms)


def _dataflow_stage(model, workdir, filename: str, transforms: list):
    """`transforms` on the partition's dataflow model, saved as `filename`; returned is a copy of
    the parent pointing at a Python-executable view of it."""
    import copy

    from qonnx.core.modelwrapper import ModelWrapper

    child = ModelWrapper(dataflow_model_path(model))
    for transform in transforms:
        child = child.transform(transform)
    child.save(os.path.join(workdir, filename))
    path = os.path.join(workdir, filename.replace(".onnx", "_python.onnx"))
    python_view(child).save(path)
    parent = ModelWrapper(copy.deepcopy(model.model))
    _sdp(parent).set_nodeattr("model", path)
    return parent


def python_view(child):
    """A copy of a specialized dataflow model whose HLS/RTL nodes are their generic HW layers
    (op type without _hls/_rtl, every attribute kept), which execute in Python: the variants'
    own execution is C++ or RTL simulation (Vitis HLS, Vivado)."""
    import copy

    from qonnx.core.modelwrapper import ModelWrapper

    view = ModelWrapper(copy.deepcopy(child.model))
    for node in view.graph.node:
        for suffix in ("_hls", "_rtl"):
            if node.domain.endswith(suffix[1:]) and node.op_type.endswith(suffix):
                node.op_type = node.op_type[: -len(suffix)]
                node.domain = HW_DOMAIN
    return view


def _sdp(model):
    from qonnx.custom_op.registry import getCustomOp

    (node,) = model.get_nodes_by_op_type("StreamingDataflowPartition")
    return getCustomOp(node)


def dataflow_model_path(parent) -> str:
    """The file of the dataflow model that the parent's one partition node stands for: the
    partition itself, or the last stage's saved model (not its Python-executable view)."""
    path = _sdp(parent).get_nodeattr("model")
    if path.endswith("_python.onnx"):
        path = path[: -len("_python.onnx")] + ".onnx"
    return path


STAGES = [("qonnx_to_finn", qonnx_to_finn), ("tidy_up", tidy_up), ("streamline", streamline),
          ("convert_to_hw", convert_to_hw), ("minimize_bit_width_initial", minimize_bit_width_initial),
          ("create_dataflow_partition", create_dataflow_partition), ("specialize_layers", specialize_layers),
          ("transpose_decomposition", transpose_decomposition)]
MAPPED_FROM = "convert_to_hw"  # from this stage on every node must be a HW layer
DATAFLOW_STAGES = ("create_dataflow_partition", "specialize_layers", "transpose_decomposition")


# ---- checking ------------------------------------------------------------------------------
def host_transpose(model, node) -> bool:
    """The NCHW -> NHWC Transpose of the graph input, which FINN's defaults leave to the host
    (step_convert_to_hw's infer_shuffle_skip_first; FINN's drivers feed NHWC data)."""
    return node.op_type == "Transpose" and node.input[0] == model.graph.input[0].name


def unmapped_nodes(model, stage: str) -> list[str]:
    """Nodes that are not HW layers, besides the input's host-side Transpose. After partitioning:
    the parent must be that Transpose and one partition node, whose dataflow model has only
    HLS/RTL variants after specializing (but the Shuffles, until transpose decomposition)."""
    from qonnx.core.modelwrapper import ModelWrapper

    if stage in DATAFLOW_STAGES:
        nodes = [n for n in model.graph.node if not host_transpose(model, n)]
        bad = [n for n in nodes if n.op_type != "StreamingDataflowPartition"]
        if len(nodes) - len(bad) != 1:
            return ["not one StreamingDataflowPartition"] + [n.name for n in bad]
        if stage != "create_dataflow_partition":
            child = ModelWrapper(dataflow_model_path(model))
            awaiting = ("Shuffle",) if stage == "specialize_layers" else ()  # until transpose decomposition
            bad = [n for n in child.graph.node if n.op_type not in awaiting and (
                not n.domain.startswith(HW_DOMAIN + ".") or not n.domain.endswith((".hls", ".rtl")))]
    else:
        bad = [n for n in model.graph.node if not n.domain.startswith(HW_DOMAIN) and not host_transpose(model, n)]
    return [f"{n.name} ({n.op_type}, {n.domain or 'onnx'})" for n in bad]


def finn_logits(model, images: np.ndarray) -> np.ndarray:
    """FINN's execute_onnx, one image at a time (the export's batch is 1)."""
    from finn.core.onnx_exec import execute_onnx

    name_in, name_out = model.graph.input[0].name, model.graph.output[0].name
    out = [execute_onnx(model, {name_in: image[None].astype(np.float32)})[name_out] for image in images]
    return np.concatenate(out).reshape(len(images), -1)


def run_frontend(tpq_path: str, images: np.ndarray, out_dir: str, log=print) -> list[StageResult]:
    """Export `tpq_path` to QONNX, run every stage, compare with the engine after each."""
    from qonnx.core.modelwrapper import ModelWrapper

    from integer_engine.executor import Engine
    from integer_engine.format import load_model
    from integer_engine.interop.to_qonnx import to_qonnx

    tpq = load_model(tpq_path)
    want = Engine(tpq).run(images).logits.astype(np.float32)
    model = ModelWrapper(to_qonnx(tpq))
    model.save(os.path.join(out_dir, "00_export.onnx"))
    results = [check(model, "export", images, want, log)]
    for i, (stage, step) in enumerate(STAGES, 1):
        model = step(model, out_dir)
        model.save(os.path.join(out_dir, f"{i:02d}_{stage}.onnx"))
        result = check(model, stage, images, want, log)
        if [s for s, _ in STAGES].index(stage) >= [s for s, _ in STAGES].index(MAPPED_FROM):
            result.unmapped = unmapped_nodes(model, stage)
            if result.unmapped:
                log(f"  not mapped to HW layers: {', '.join(result.unmapped)}")
        results.append(result)
        if not result.ok:
            break
    return results


def check(model, stage: str, images: np.ndarray, want: np.ndarray, log) -> StageResult:
    got = finn_logits(model, images)
    result = StageResult(stage, len(model.graph.node))
    if got.shape != want.shape:
        result.logits_mismatches = len(images)
    else:
        result.logits_mismatches = int(np.sum(np.any(got != want, axis=1)))
        result.prediction_mismatches = int(np.sum(got.argmax(1) != want.argmax(1)))
    ops = sorted({n.op_type for n in model.graph.node})
    log(f"{stage:27s} {result.nodes:4d} nodes  logits differ on {result.logits_mismatches}/{len(images)} "
        f"images, predictions on {result.prediction_mismatches}  [{', '.join(ops)}]")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", metavar="MODEL.tpq")
    from integer_engine.commands import _data_args

    _data_args(parser, required=False)
    parser.add_argument("--random", type=int, default=20, metavar="N", help="without --data: N random images")
    parser.add_argument("--out", metavar="DIR", help="keep the model after every stage here (default: a "
                                                     "temporary directory)")
    args = parser.parse_args(argv)
    try:
        import finn.util.settings
    except ImportError:
        print("error: finn-plus is not installed in this Python; make its venv (see this script's "
              "docstring or docs/interop.md)", file=sys.stderr)
        return 2
    finn.util.settings.initialize_dummy_settings()
    from integer_engine.commands import verify_images
    from integer_engine.errors import EngineError
    from integer_engine.format import load_model

    try:
        images, _, description = verify_images(args, load_model(args.model))
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"FINN front end on {args.model}, {description}:")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        os.makedirs(out, exist_ok=True)
        results = run_frontend(args.model, images, out)
    ok = all(r.ok for r in results) and len(results) == len(STAGES) + 1
    print(f"{'OK' if ok else 'FAILED'}: {len(results) - 1} of {len(STAGES)} stages run on {description}"
          + (f"; models in {args.out}" if args.out else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
