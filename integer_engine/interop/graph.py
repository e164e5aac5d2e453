"""A small ONNX graph builder shared by the ONNX Runtime and QONNX exporters.

It keeps the element type of every tensor it creates (the exporters pick integer or float ops
by it), names constants uniquely, and writes the model with the opsets the exporters use
(ONNX opset 17; qonnx's custom-op domain for Quant, BipolarQuant and MultiThreshold).
"""
from __future__ import annotations

import json

import numpy as np

from integer_engine.format import model_digest
from integer_engine.interop import require

ONNX_OPSET = 17
# The IR version written, not the onnx package's newest (onnx 1.19 writes 12 or later, which
# older ONNX Runtimes refuse: "max supported IR version"); 8 is read by every onnxruntime 1.3x.
ONNX_IR_VERSION = 8
QONNX_DOMAIN = "qonnx.custom_op.general"
# Written into the model's metadata: which .tpq layers the graph has tensors for (by name; a
# layer a lowering bypassed, such as a Flatten split by digits, has none).
META_LAYERS = "tinypact.layers"
META_FORM = "tinypact.form"
META_MODEL = "tinypact.model_sha256"  # format.model_digest of the .tpq it was exported from


class GraphBuilder:
    """Collects nodes, initializers and tensor types; `model()` returns an onnx.ModelProto."""

    def __init__(self, name: str):
        self.onnx = require("onnx")
        self.name = name
        self.nodes: list = []
        self.initializers: list = []
        self.inputs: list = []
        self.types: dict[str, int] = {}
        self.shapes: dict[str, tuple] = {}
        self.counter = 0
        self.domains: set[str] = set()

    # ---- tensors ---------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}__{self.counter}"

    def input(self, name: str, dtype: np.dtype, shape: tuple) -> str:
        elem = self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        self.inputs.append(self.onnx.helper.make_tensor_value_info(name, elem, list(shape)))
        self.types[name] = elem
        return name

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        """An initializer holding `value` exactly (its dtype and shape are kept: a 0-d scalar stays
        0-d, which qonnx's datatype inference needs for a Quant's scale, zero point, bit width)."""
        name = self.fresh(hint)
        array = np.array(value, order="C")
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        self.types[name] = self.onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        return name

    def dtype(self, name: str) -> np.dtype:
        return self.onnx.helper.tensor_dtype_to_np_dtype(self.types[name])

    # ---- nodes -----------------------------------------------------------------------
    def op(self, op_type: str, inputs: list[str], out: str | None = None, out_type=None,
           domain: str = "", **attrs) -> str:
        """Add one node with one output; its NumPy dtype `out_type` defaults to the first input's."""
        out = out or self.fresh(op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], domain=domain or None,
                                                     **attrs))
        if domain:
            self.domains.add(domain)
        elem = (self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(out_type)) if out_type is not None
                else self.types[inputs[0]])
        self.types[out] = elem
        return out

    def cast(self, x: str, dtype, out: str | None = None) -> str:
        dtype = np.dtype(dtype)
        if self.dtype(x) == dtype and out is None:
            return x
        elem = self.onnx.helper.np_dtype_to_tensor_dtype(dtype)
        return self.op("Cast", [x], out, out_type=dtype, to=elem)

    def rename(self, x: str, out: str) -> str:
        """Give tensor `x` the name `out` (an Identity node)."""
        return self.op("Identity", [x], out)

    # ---- pieces both exporters use ---------------------------------------------------------
    def scalar(self, value, dtype) -> str:
        return self.const(np.asarray(value, dtype=dtype), "scalar")

    def per_channel(self, values: np.ndarray, rank: int, dtype) -> str:
        """A per-channel constant shaped to broadcast over an (N, C, ...) tensor of `rank` dims."""
        shape = [1, -1] + [1] * (rank - 2)
        return self.const(np.asarray(values, dtype=dtype).reshape(shape), "channel")

    def affine(self, acc: str, rank: int, scale, bias, bn_scale, bn_shift) -> str:
        """The epilogue's float32 affine (epilogue.affine), one node per float32 operation:
        z = float32(acc); z = z * scale; z = z + bias; z = z * bn_scale; z = z + bn_shift."""
        z = self.cast(acc, np.float32)
        z = self.op("Mul", [z, self.scalar(scale, np.float32)])
        z = self.op("Add", [z, self.per_channel(bias, rank, np.float32)])
        z = self.op("Mul", [z, self.per_channel(bn_scale, rank, np.float32)])
        return self.op("Add", [z, self.per_channel(bn_shift, rank, np.float32)])

    def window_sum(self, x: str, channels: int, k: int, s: int, out_max: int) -> str:
        """float32 sum of each k x k window (stride s) of an integer tensor: a depthwise all-ones
        Conv, exact because every partial sum is an integer <= out_max < 2**24."""
        if out_max >= 2**24:
            raise ValueError(f"window sums up to {out_max} are not exact in float32")
        return self.conv(self.cast(x, np.float32), self.ones((channels, 1, k, k)), (k, k), s, 0, channels)

    def ones(self, shape: tuple) -> str:
        """A float32 all-ones kernel (for window sums)."""
        return self.const(np.ones(shape, np.float32), "ones")

    def conv(self, x: str, w: str, kernel: tuple, stride: int, padding: int, group: int = 1,
             out: str | None = None) -> str:
        """A Conv with every attribute written out (qonnx's and FINN's transforms read `group`,
        `dilations`, `kernel_shape`, `pads` and `strides` without defaults)."""
        return self.op("Conv", [x, w], out, dilations=[1, 1], group=group, kernel_shape=list(kernel),
                       pads=[padding] * 4, strides=[stride, stride])

    def subsample_pad(self, x: str, stride: int, before: int, after: int, out: str) -> str:
        """x[:, :, ::stride, ::stride] (Slice with steps), then zero channels before/after (Pad)."""
        if stride > 1:
            x = self.op("Slice", [x, self.const(np.array([0, 0], np.int64), "starts"),
                                  self.const(np.array([2**62, 2**62], np.int64), "ends"),
                                  self.const(np.array([2, 3], np.int64), "axes"),
                                  self.const(np.array([stride, stride], np.int64), "steps")])
        pads = np.array([0, before, 0, 0, 0, after, 0, 0], np.int64)
        return self.op("Pad", [x, self.const(pads, "pads")], out, mode="constant")

    def prune(self, keep: set[str]) -> None:
        """Drop nodes whose outputs nothing uses (a layer's tensor that a lowering bypassed, e.g.
        a Flatten taken apart into per-digit Flattens): FINN maps every node it is given."""
        while True:
            used = keep | {name for node in self.nodes for name in node.input}
            dead = [node for node in self.nodes if not any(out in used for out in node.output)]
            if not dead:
                return
            self.nodes = [node for node in self.nodes if node not in dead]

    # ---- model -----------------------------------------------------------------------
    def model(self, outputs: dict[str, list], layers: list[str], form: str, digest: str = ""):
        """The ModelProto with graph outputs {name: shape}; `digest` is the source model's."""
        helper = self.onnx.helper
        outs = [helper.make_tensor_value_info(o, self.types[o], shape) for o, shape in outputs.items()]
        graph = helper.make_graph(self.nodes, self.name, self.inputs, outs, self.initializers)
        opsets = [helper.make_opsetid("", ONNX_OPSET)] + [helper.make_opsetid(d, 1) for d in sorted(self.domains)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="tinypact integer_engine")
        model.ir_version = ONNX_IR_VERSION
        helper.set_model_props(model, {META_LAYERS: json.dumps(layers), META_FORM: form,
                                       META_MODEL: digest})
        return model


def lower_model(g: GraphBuilder, model, lower_layer, input_dtype, batch, form: str):
    """Input `input` (batch, C, H, W) of `input_dtype`, `lower_layer(layer)` for every `.tpq`
    layer in order (each leaves a tensor named after its layer), output `logits` (or
    `logits_output` when a layer is named "logits"): the finished ModelProto."""
    g.input("input", input_dtype, [batch, *model.input_shape])
    for layer in model.layers:
        lower_layer(layer)
    names = [layer.name for layer in model.layers]
    output = "logits" if "logits" not in names else "logits_output"
    g.rename(model.output, output)
    g.prune({output})
    produced = {out for node in g.nodes for out in node.output}
    return g.model({output: [batch, *model.layers[-1].attrs["out_shape"]]},
                   [name for name in names if name in produced], form, model_digest(model))


def metadata(model) -> dict[str, str]:
    """The model's metadata_props as a dict."""
    return {p.key: p.value for p in model.metadata_props}
