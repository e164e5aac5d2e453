"""Import a QONNX model as Brevitas exports it into a `.tpq` model (docs/interop.md).

The source's arithmetic is qonnx's, not tinypact's epilogue: a weight Quant gives integer levels
m (signed, per-tensor or per-channel scale s_w), the Conv/Gemm sums float32 products of the
dequantized values, then float32 BatchNormalization, Relu and the activation Quant
(y = x / s, clamp, round by its rounding_mode, * s). The integer model keeps what is integer:

    codes q (unsigned, from the previous Quant), levels c (2m, or +-1 for BipolarQuant),
    acc = sum q * c,      code(acc) = the source's activation code of that layer

and finds, per channel, integer thresholds by exact search (`requant.thresholds`) over the
source's own monotone function of acc, evaluated by qonnx's executor: the probe value is the
conv output float32(acc * s_in * s_w[c] / 2) (the correctly rounded real product; the source's
float32 GEMM rounds in its own order, so only an input whose value lands within a few ulps of a
rounding boundary could differ), then the source's nodes after the conv run unchanged (bias
add, BatchNormalization, Relu, Quant with its rounding mode). The layers are stored with
`epilogue: "source"` (thresholds only; format.py) and checked against qonnx's executor by
`verify-onnx` (check.compare_with_source).

Supported: an input Quant (pixels x = p / 255 in float32, as tinypact's data; a signed one, as
Brevitas's default QuantIdentity, gives codes 0..max on x >= 0), Conv (group 1, symmetric
padding) and Gemm/MatMul with Quant/BipolarQuant weights (zero point 0), BatchNormalization,
Relu, per-tensor activation Quant (ROUND or HALF_UP; a signed one stores codes u = q - min with
`out_offset` = min) or BipolarQuant (codes b of a = 2b - 1, `out_bipolar`; the next layer's
probe uses the source's sum 2 acc - rowsum(c), so its convs must be unpadded), MaxPool (also
between batch norm and the activation: moved after it, as export.py does), average pools (AveragePool, GlobalAveragePool, ReduceMean over H and W: window
sums, the 1/area going into the next layer's scale), residual Adds of two quantized tensors
(`add`), Flatten/Reshape to (N, F), and a last Gemm whose float32 output is the logits. The
graph is walked in its topological order, so branches (a tensor feeding a block and its
shortcut) are followed. Anything else is refused with one line naming the node and why (signed
codes into a Conv/Gemm, a padded conv on +-1 codes, an add of an unquantized tensor...).

A residual Add: the source computes z = float32(a + b) of two dequantized tensors
(code + offset) * scale, then Relu and a Quant. The `.tpq` add layer reproduces each term
exactly with its affine (scale 1, bias = offset, bn_scale = the input's scale: one float32
rounding of the same product), the sum in the same float32 addition, and stores the activation
as float32 thresholds F (`epilogue: "source"`, `float_thresholds`), found by bisection over the
float32 bit patterns, each probe running the source's own Relu + Quant: exact for every z.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from integer_engine.errors import EngineError
from integer_engine.format import ACC_MAX, IntegerModel, Layer, validate_model
from integer_engine.interop import require
from integer_engine.requant import thresholds

ROUNDING = {"ROUND": "half_even", "HALF_EVEN": "half_even", "HALF_UP": "half_up"}
TAIL_OPS = ("BatchNormalization", "Relu", "MaxPool")


@dataclass
class Stream:
    """A source tensor that holds (codes + offset) times a float32 scale, and the .tpq layer giving
    the codes (0..max)."""

    tensor: str
    layer: str
    shape: tuple
    max: int
    scale: float
    offset: int = 0  # the source's value is (code + offset) * scale: a signed quantizer's codes
    bipolar: bool = False  # the source's value is (2 * code - 1) * scale: a BipolarQuant's +-1


def _offset(stream: Stream) -> dict:
    """A layer's `out_offset` attribute (the source's integers are code + offset), where not 0, or
    `out_bipolar` (the source's integers are 2 * code - 1)."""
    return {"out_offset": stream.offset} if stream.offset else {"out_bipolar": True} if stream.bipolar else {}


def _refuse(node, why: str) -> None:
    raise EngineError(f"node {node.name or node.output[0]!r} ({node.op_type}): {why}")


class _Source:
    """The source graph: initializers, producers, consumers, attributes; runs node chains."""

    def __init__(self, proto):
        self.onnx = require("onnx")
        require("qonnx")
        self.proto = proto
        self.consts = {i.name: self.onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
        for node in proto.graph.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = self.onnx.numpy_helper.to_array(node.attribute[0].t)
        self.consumers: dict[str, list] = {}
        for node in proto.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.inputs = [i for i in proto.graph.input if i.name not in self.consts]
        self.outputs = {o.name for o in proto.graph.output}

    def attrs(self, node) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def const(self, node, index: int, what: str) -> np.ndarray:
        if index >= len(node.input) or node.input[index] not in self.consts:
            _refuse(node, f"its {what} must be a constant")
        return np.asarray(self.consts[node.input[index]])

    def only_consumer(self, tensor: str):
        users = [n for n in self.consumers.get(tensor, []) if n.op_type != "Constant"]
        if tensor in self.outputs and not users:
            return None
        if len(users) != 1:
            raise EngineError(f"tensor {tensor!r} feeds {len(users)} nodes; the importer takes a "
                              f"chain (residual adds and branches are not imported)")
        return users[0]

    def run(self, nodes: list, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        """Execute `nodes` (copied from the source, constants included) on `feeds` with qonnx's
        executor: the source's own arithmetic."""
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx
        from qonnx.transformation.infer_shapes import InferShapes

        helper = self.onnx.helper
        used = {name for node in nodes for name in node.input if name in self.consts}
        inits = [self.onnx.numpy_helper.from_array(np.asarray(self.consts[n]), n) for n in sorted(used)]
        inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
                  for k, v in feeds.items()]
        graph = helper.make_graph(list(nodes), "chain", inputs,
                                  [helper.make_tensor_value_info(output, self.onnx.TensorProto.FLOAT, None)], inits)
        model = helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        model.ir_version = self.proto.ir_version
        wrapper = ModelWrapper(model).transform(InferShapes())
        return execute_onnx(wrapper, feeds)[output]


class _Importer:
    def __init__(self, proto):
        self.src = _Source(proto)
        self.layers: list[Layer] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}{self.count}"

    # ---- quantizers ------------------------------------------------------------------
    def act_quant(self, node, signed_ok: bool = False) -> tuple[float, int, str, int]:
        """(scale, largest code, rounding rule, offset) of a per-tensor activation Quant: codes
        0..top stand for the source's integers code + offset (offset < 0 for a signed one)."""
        a = self.src.attrs(node)
        if node.op_type == "BipolarQuant":
            if not signed_ok:
                _refuse(node, "a bipolar (+-1) input quantizer: the integer model's input is uint8 "
                              "pixels; quantize the input with an unsigned 8-bit QuantIdentity")
            scale = self.src.const(node, 1, "scale")
            if scale.size != 1:
                _refuse(node, "per-channel activation scales are not imported")
            return float(scale.reshape(())), 1, "half_even", 0  # code b: the source's 2b - 1
        if node.op_type != "Quant":
            _refuse(node, "expected an activation Quant")
        signed, narrow = a.get("signed", 1), a.get("narrow", 0)
        if signed and not signed_ok:
            _refuse(node, "a signed activation quantizer feeding a Conv/Gemm: the integer model's "
                          "codes are unsigned (signed codes are imported only into a residual add); "
                          "use an unsigned quantizer (e.g. Brevitas QuantReLU)")
        scale = self.src.const(node, 1, "scale")
        zeropt = self.src.const(node, 2, "zero point")
        bits = int(self.src.const(node, 3, "bit width"))
        if scale.size != 1 or np.any(zeropt != 0):
            _refuse(node, "per-channel activation scales and non-zero zero points are not imported")
        mode = a.get("rounding_mode", b"ROUND")
        mode = (mode.decode() if isinstance(mode, bytes) else mode).upper()
        if mode not in ROUNDING:
            _refuse(node, f"rounding_mode {mode} is not imported (ROUND, HALF_EVEN, HALF_UP are)")
        if not 1 <= bits <= 8:
            _refuse(node, f"{bits}-bit activations (the engine takes 1..8)")
        if signed:
            low, high = -(2 ** (bits - 1)) + narrow, 2 ** (bits - 1) - 1
        else:
            low, high = 0, 2**bits - 1 - narrow
        return float(scale.reshape(())), high - low, ROUNDING[mode], low

    def weight_levels(self, node) -> tuple[np.ndarray, np.ndarray, int, int, str]:
        """(levels c (int64), the real value of one level for every weight, n_w, wbits, kind) of a
        weight Quant/BipolarQuant, its integers m read back from the source's own output."""
        if node is None or node.op_type not in ("Quant", "BipolarQuant"):
            raise EngineError("a Conv/Gemm weight must come from a Quant or BipolarQuant node")
        weights = self.src.const(node, 0, "weight")
        scale = self.src.const(node, 1, "scale").astype(np.float64)
        values = self.src.run([node], {}, node.output[0]).astype(np.float64)
        m = np.rint(values / scale)
        unit = np.broadcast_to(scale, weights.shape)
        if node.op_type == "BipolarQuant":
            return m.astype(np.int64), unit, 1, 1, "bipolar"
        a = self.src.attrs(node)
        bits = int(self.src.const(node, 3, "bit width"))
        if not a.get("signed", 1) or np.any(self.src.const(node, 2, "zero point") != 0):
            _refuse(node, "weights must be signed with zero point 0")
        wbits = bits if a.get("narrow", 0) else bits + 1  # levels 2m, m in [-2**(b-1), ...]: one bit more
        if not 1 < wbits <= 8:
            _refuse(node, f"{bits}-bit {'narrow ' if a.get('narrow', 0) else ''}weights need {wbits} "
                          f"bits as the engine's even levels 2m (it takes 2..8)")
        n_w = 2**wbits - 2  # levels c = 2m: even, zero included (format: zero-aligned)
        return 2 * m.astype(np.int64), unit / 2, n_w, wbits, f"qonnx-int{bits}{'-narrow' if a.get('narrow', 0) else ''}"

    # ---- the graph ---------------------------------------------------------------------
    def run(self) -> IntegerModel:
        src = self.src
        if len(src.inputs) != 1:
            raise EngineError(f"the model must have one input, it has {len(src.inputs)}")
        graph_input = src.inputs[0]
        dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        if len(dims) != 4 or not all(dims[1:]):
            raise EngineError(f"input {graph_input.name!r} must be an image (N, C, H, W), got dims {dims}")
        stream = self.input_stage(graph_input.name, tuple(dims[1:]))
        self.walk(stream)
        header = {"input": {"shape": list(dims[1:]), "max": 255, "scale": 1 / 255}, "accumulator_bits": 32,
                  "source": {}}
        model = IntegerModel(header=header, layers=self.layers)
        validate_model(model)
        return model

    def input_stage(self, tensor: str, shape: tuple) -> Stream:
        """The input Quant as a function of the pixel p (x = float32(p) / 255): identity codes
        feed the first layer directly, anything else becomes a `requant` layer of thresholds."""
        node = self.src.only_consumer(tensor)
        if node is None or node.op_type != "Quant":
            raise EngineError(f"input {tensor!r} must feed a Quant node (the integer model's input is "
                              f"uint8 pixels: quantize the input with an 8-bit QuantIdentity)")
        scale, top, rule, offset = self.act_quant(node, signed_ok=True)
        top += offset  # a signed input quantizer (Brevitas's default) on x = p / 255 >= 0: codes 0..max
        pixels = np.arange(256, dtype=np.float32).reshape(256, 1, 1, 1) / np.float32(255)
        codes = np.rint(self.src.run([node], {tensor: pixels}, node.output[0]).reshape(-1) / scale).astype(np.int64)
        if np.any(np.diff(codes) < 0) or codes[0] < 0:
            _refuse(node, "its codes are not monotone and non-negative in the pixel value")
        if top == 255 and np.array_equal(codes, np.arange(256)):
            return Stream(node.output[0], "input", shape, 255, scale)
        th = thresholds(lambda p: codes[np.clip(p, 0, 255)], np.ones(1, np.int8), top, 0, 255)
        name = self.name("input_quant")
        self.layers.append(Layer(
            {"name": name, "kind": "requant", "inputs": ["input"], "in_shape": list(shape),
             "out_shape": list(shape), "in_max": 255, "out_max": top, "out_scale": scale,
             "rounding": rule, "epilogue": "source", "graph_node": node.output[0]},
            {"thresholds": th, "direction": np.ones(1, np.int8)}))
        return Stream(node.output[0], name, shape, top, scale)

    def walk(self, first: Stream) -> None:
        """Every node in the graph's (topological) order from the input Quant's output on: each
        step consumes a node or a chain (Conv + tail + Quant) and yields the stream of codes of
        its last tensor; a residual Add takes two streams. Ends at the logits Gemm."""
        streams = {first.tensor: first}
        self.consumed = {id(n) for n in self.src.proto.graph.node if n.output[0] == first.tensor}
        graph = self.src.proto.graph.node
        weights = {n.output[0] for n in graph if n.op_type in ("Quant", "BipolarQuant")
                   and all(t in self.src.consts for t in n.input if t)}  # read by their Conv/Gemm
        for node in graph:
            if id(node) in self.consumed or node.op_type == "Constant" or node.output[0] in weights:
                continue
            data = [t for t in node.input if t and t not in self.src.consts and t not in weights]
            missing = [t for t in data if t not in streams]
            if missing:
                _refuse(node, f"its input {missing[0]!r} is not a quantized activation (codes); a float "
                              f"tensor reaches it (for a residual add, quantize both inputs, e.g. "
                              f"with a QuantIdentity after the branch's batch norm)")
            self.consumed.add(id(node))
            if node.op_type == "Add":
                result = self.add(node, [streams[t] for t in node.input])
            else:
                if len(data) != 1:
                    _refuse(node, "this op is not imported")
                result = self.step(node, streams[data[0]])
            if result is None:
                return
            streams[result.tensor] = result
        raise EngineError("the model must end with a Gemm/MatMul whose float output is the logits")

    def step(self, node, stream: Stream) -> Stream | None:
        """One source node on the codes stream -> the next stream (None after the logits)."""
        op = node.op_type
        a = self.src.attrs(node)
        if op == "MaxPool":
            return self.maxpool(node, stream, stream.layer, stream.max)
        if op in ("Flatten", "Reshape"):
            if op == "Flatten" and a.get("axis", 1) != 1:
                _refuse(node, "only Flatten(axis=1) is imported")
            if op == "Reshape":
                target = self.src.const(node, 1, "shape")
                if len(target) != 2 or target[1] not in (-1, int(np.prod(stream.shape))):
                    _refuse(node, f"only a reshape to (N, features) is imported, got {target.tolist()}")
            if len(stream.shape) == 1:
                return Stream(node.output[0], stream.layer, stream.shape, stream.max, stream.scale, stream.offset,
                              stream.bipolar)
            name = self.name("flatten")
            shape = (int(np.prod(stream.shape)),)
            self.layers.append(Layer({"name": name, "kind": "flatten", "inputs": [stream.layer],
                                      "in_shape": list(stream.shape), "out_shape": list(shape),
                                      "out_max": stream.max, "out_scale": stream.scale,
                                      "graph_node": node.output[0], **_offset(stream)}))
            return Stream(node.output[0], name, shape, stream.max, stream.scale, stream.offset, stream.bipolar)
        if op in ("Conv", "Gemm", "MatMul"):
            return self.compute(node, stream)
        if op in ("GlobalAveragePool", "AveragePool", "ReduceMean"):
            return self.avgpool(node, stream)
        _refuse(node, "this op is not imported (supported: Quant, Conv, Gemm/MatMul, "
                      "BatchNormalization, Relu, MaxPool, AveragePool, GlobalAveragePool, Add, "
                      "Flatten/Reshape)")
        return None

    def maxpool(self, node, stream: Stream, source_layer: str, top: int, graph_node: str | None = None) -> Stream:
        a = self.src.attrs(node)
        k, s, pads = a.get("kernel_shape", [1, 1]), a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0])
        if k[0] != k[1] or s[0] != s[1] or len(set(pads)) > 1 or a.get("ceil_mode", 0) or \
                any(d != 1 for d in a.get("dilations", [1, 1])) or 2 * pads[0] > k[0]:
            _refuse(node, "only square max-pools with equal strides, symmetric padding <= kernel/2, "
                          "no dilation or ceil_mode are imported")
        c, h, w = stream.shape
        p = pads[0]
        shape = (c, (h + 2 * p - k[0]) // s[0] + 1, (w + 2 * p - k[0]) // s[0] + 1)
        name = self.name("maxpool")
        self.layers.append(Layer({"name": name, "kind": "maxpool", "inputs": [source_layer],
                                  "in_shape": list(stream.shape), "out_shape": list(shape), "kernel": k[0],
                                  "stride": s[0], "padding": p, "out_max": top, "out_scale": stream.scale,
                                  "graph_node": graph_node or node.output[0], **_offset(stream)}))
        return Stream(graph_node or node.output[0], name, shape, top, stream.scale, stream.offset, stream.bipolar)

    def avgpool(self, node, stream: Stream) -> Stream:
        """A (global) average pool of codes: the layer sums each window (the engine's avgpool),
        and the stream's scale takes the 1/area. The source averages float32 values and rounds
        in its own order, so the next layer's probe (the correctly rounded value) can differ
        from it only within an ulp or so, as for the conv output."""
        a = self.src.attrs(node)
        if stream.offset or stream.bipolar or len(stream.shape) != 3:
            _refuse(node, "an average pool of signed codes or of a flat tensor is not imported")
        c, h, w = stream.shape
        if node.op_type == "ReduceMean":  # torch's AdaptiveAvgPool2d(1) as the exporter writes it
            axes = a.get("axes") if len(node.input) < 2 else self.src.const(node, 1, "axes").tolist()
            if sorted(int(x) % 4 for x in axes or []) != [2, 3] or not a.get("keepdims", 1):
                _refuse(node, "only a mean over both spatial axes (a global average pool) is imported")
        if node.op_type in ("GlobalAveragePool", "ReduceMean"):
            kernel, area, shape, attrs = "global", h * w, (c, 1, 1), {"kernel": "global"}
        else:
            k, s, pads = a.get("kernel_shape", [1, 1]), a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0])
            if k[0] != k[1] or s[0] != s[1] or any(pads) or a.get("ceil_mode", 0):
                _refuse(node, "only square average pools with equal strides and no padding are imported")
            kernel, area = k[0], k[0] * k[0]
            shape = (c, (h - kernel) // s[0] + 1, (w - kernel) // s[0] + 1)
            attrs = {"kernel": kernel, "stride": s[0], "padding": 0}
        name = self.name("avgpool")
        self.layers.append(Layer({"name": name, "kind": "avgpool", "inputs": [stream.layer],
                                  "in_shape": list(stream.shape), "out_shape": list(shape), **attrs,
                                  "out_max": stream.max * area, "out_scale": stream.scale / area}))
        return Stream(node.output[0], name, shape, stream.max * area, stream.scale / area)

    def add(self, node, inputs: list[Stream]) -> Stream:
        """A residual Add of two quantized streams (x_i = (code_i + offset_i) * scale_i, exactly
        the source's dequantized float32 values), then Relu and the activation Quant. The engine's
        add computes z = float32((u + offset) * scale) per input (its affine with scale 1, bias
        offset, bn_scale scale) and the float32 sum as the source does; the activation of z is
        stored as float32 thresholds found by bisection over the source's own Relu + Quant. A
        bipolar input (2b - 1) * scale is the affine with scale 2, bias -1."""
        from integer_engine.interop.float_search import float_thresholds

        if len(inputs) != 2 or inputs[0].shape != inputs[1].shape:
            _refuse(node, "only an Add of two same-shaped quantized tensors is imported")
        tail, pools, quant, _ = self.tail(node.output[0])
        self.consumed.update(id(n) for n in tail + pools + [quant] if n is not None)
        if quant is None or pools or any(n.op_type != "Relu" for n in tail):
            _refuse(node, "a residual Add must be followed by (Relu and) its activation Quant")
        scale, top, rule, offset = self.act_quant(quant)
        nodes = [self._probe_copy(n, i) for i, n in enumerate(tail + [quant])]
        current = node.output[0]
        for copy in nodes:
            copy.input[0], current = current, copy.output[0]

        def code(z: np.ndarray) -> np.ndarray:
            y = self.src.run(nodes, {node.output[0]: np.asarray(z, np.float32).reshape(-1, 1, 1, 1)}, current)
            return np.rint(y.reshape(-1) / np.float32(scale)).astype(np.int64)

        floats = float_thresholds(code, top, np.float32(scale * (top + 1)))
        c = inputs[0].shape[0]
        arrays = {"scale": np.array([2 if s.bipolar else 1 for s in inputs], np.float32),  # 2b - 1 or u + offset
                  "bias": np.array([[-1 if s.bipolar else s.offset] * c for s in inputs], np.float32),
                  "bn_scale": np.array([[s.scale] * c for s in inputs], np.float32),
                  "bn_shift": np.zeros((2, c), np.float32), "float_thresholds": floats.astype(np.float32)}
        name = self.name("add")
        self.layers.append(Layer({"name": name, "kind": "add", "inputs": [s.layer for s in inputs],
                                  "in_shape": list(inputs[0].shape), "out_shape": list(inputs[0].shape),
                                  "input_bounds": [s.max for s in inputs], "out_max": top, "out_scale": scale,
                                  "rounding": rule, "epilogue": "source", "graph_node": quant.output[0],
                                  "source_node": node.name or node.output[0]}, arrays))
        return Stream(quant.output[0], name, inputs[0].shape, top, scale)

    def _probe_copy(self, node, index: int):
        """A copy of a source node with fresh output names, for probing its arithmetic alone."""
        copy = self.src.onnx.helper.make_node(node.op_type, list(node.input), [f"{node.output[0]}_probe{index}"],
                                              domain=node.domain or None)
        copy.attribute.extend(node.attribute)
        return copy

    def compute(self, node, stream: Stream) -> Stream | None:
        """A Conv/Gemm/MatMul with its tail up to the activation Quant (threshold layer), or the
        final Gemm (logits)."""
        src, op = self.src, node.op_type
        a = src.attrs(node)
        if node.input[0] != stream.tensor:
            _refuse(node, "its data input must be the quantized activation stream")
        if stream.offset:
            _refuse(node, "its input has signed codes: the integer model's conv/linear inputs are "
                          "unsigned; quantize its input with an unsigned quantizer (QuantReLU)")
        if stream.bipolar and op == "Conv" and any(a.get("pads", [0])):
            _refuse(node, "a padded Conv on bipolar (+-1) inputs: the source pads with 0, which is no "
                          "+-1 code (the integer model pads codes b = 0, i.e. -1); use padding 0")
        wnode = next((n for n in src.proto.graph.node if n.output[0] == node.input[1]), None)
        levels, unit, n_w, wbits, kind = self.weight_levels(wnode)
        bias = src.const(node, 2, "bias").astype(np.float32) if len(node.input) > 2 and node.input[2] else None
        if op == "Conv":
            pads, strides = a.get("pads", [0, 0, 0, 0]), a.get("strides", [1, 1])
            if a.get("group", 1) != 1 or len(set(pads)) > 1 or strides[0] != strides[1] or \
                    any(d != 1 for d in a.get("dilations", [1, 1])) or len(stream.shape) != 3:
                _refuse(node, "only group-1 convolutions of an image with square strides and "
                              "symmetric padding are imported")
            c, h, w = stream.shape
            kh, kw = levels.shape[2:]
            oh, ow = (h + 2 * pads[0] - kh) // strides[0] + 1, (w + 2 * pads[0] - kw) // strides[0] + 1
            out_shape, conv = (levels.shape[0], oh, ow), dict(kernel=[int(kh), int(kw)], stride=strides[0], padding=pads[0])
        else:
            if op == "Gemm" and (a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0):
                _refuse(node, "only Gemm with transA 0, alpha 1, beta 1 is imported")
            if op == "MatMul" or not a.get("transB", 0):
                levels, unit = levels.T, unit.T  # stored (O, F)
            if len(stream.shape) != 1:
                _refuse(node, "a Gemm needs flat (N, features) input; flatten first")
            out_shape, conv = (levels.shape[0],), dict(kernel=[1, 1], stride=1, padding=0)
        fan_in = int(np.prod(levels.shape[1:]))
        bound = fan_in * stream.max * n_w
        if bound > ACC_MAX:
            _refuse(node, f"worst-case accumulator {bound} overflows int32")
        out_c = levels.shape[0]
        unit = np.asarray(unit, np.float64).reshape(out_c, -1)
        if np.any(unit != unit[:, :1]):
            _refuse(wnode, "weight scales must be per tensor or per output channel")
        sigma = np.float64(stream.scale) * unit[:, 0]  # real value of one accumulator unit
        # bipolar input a = 2b - 1: the source's sum a.c = 2 acc - rowsum(c), acc = b.c the engine's
        shift = levels.reshape(out_c, -1).sum(axis=1) if stream.bipolar else np.zeros(out_c, np.int64)
        factor = 2 if stream.bipolar else 1
        attrs = {"name": self.name("conv" if op == "Conv" else "linear"), "kind": "conv" if op == "Conv" else "linear",
                 "inputs": [stream.layer], "in_shape": list(stream.shape), "out_shape": list(out_shape),
                 "out_channels": out_c, "wbits": wbits, "n_w": n_w, "weight_quant": kind,
                 "w_scale": float(np.max(unit)), "abits": max(1, int(stream.max).bit_length()),
                 "in_max": stream.max, "in_scale": stream.scale, "macs": int(np.prod(out_shape)) * fan_in,
                 "acc_bound": bound, "source_node": node.name or node.output[0], **conv}
        weight = ((levels + n_w) // 2).astype(np.uint8)  # j = (c + n_w) / 2
        tail, pools, quant, end = self.tail(node.output[0])
        self.consumed.update(id(n) for n in tail + pools + [quant] if n is not None)
        if quant is None:
            if stream.bipolar:  # (2 acc - rowsum) sigma + bias = acc (2 sigma) + (bias - rowsum sigma)
                bias = (bias if bias is not None else np.zeros(out_c, np.float32)) - (shift * sigma).astype(np.float32)
            return self.logits(node, attrs, weight, factor * sigma, bias, tail, end)
        scale, top, rule, offset = self.act_quant(quant, signed_ok=True)
        bipolar = quant.op_type == "BipolarQuant"
        code = self.code_function(sigma, bias, tail, quant, scale, len(out_shape) + 1, offset,
                                  factor, shift, bipolar)
        lo, hi = code(np.full((out_c, 1), -bound)), code(np.full((out_c, 1), bound))
        direction = np.where(hi[:, 0] >= lo[:, 0], 1, -1).astype(np.int8)
        th = thresholds(code, direction, top, -bound, bound)
        attrs.update(output="threshold", out_max=top, out_scale=scale, rounding=rule, epilogue="source")
        out = Stream(quant.output[0], attrs["name"], out_shape, top, scale, offset, bipolar)
        attrs.update(_offset(out))  # the source's integers are code + offset, or 2 * code - 1
        if not pools:
            attrs["graph_node"] = quant.output[0]
        self.layers.append(Layer(attrs, {"weight": weight, "thresholds": th, "direction": direction}))
        for i, pool in enumerate(pools):  # moved after the activation: the code is monotone in z
            out = self.maxpool(pool, out, out.layer, top, quant.output[0] if i == len(pools) - 1 else None)
        return out

    def tail(self, tensor: str):
        """The nodes after a Conv/Gemm up to the activation Quant: (elementwise nodes, max-pools
        to move after the activation, the Quant or None, the last tensor)."""
        elementwise, pools = [], []
        while True:
            node = self.src.only_consumer(tensor)
            if node is None:
                return elementwise, pools, None, tensor
            if node.op_type in ("Quant", "BipolarQuant"):
                return elementwise, pools, node, tensor
            if node.op_type == "Add":
                _refuse(node, "a residual add of an unquantized tensor (a Conv/Gemm branch without "
                              "its activation Quant): the integer model adds codes; quantize both "
                              "inputs, e.g. with a QuantIdentity after the branch's batch norm")
            if node.op_type not in TAIL_OPS:
                _refuse(node, f"between a Conv/Gemm and its activation Quant only "
                              f"{', '.join(TAIL_OPS)} are imported")
            if node.op_type == "MaxPool":
                pools.append(node)
            elif pools and node.op_type != "Relu":
                _refuse(node, "after a max-pool only Relu may precede the activation (the pool moves "
                              "after the activation only past non-decreasing steps)")
            else:
                elementwise.append(node)
            tensor = node.output[0]

    def code_function(self, sigma, bias, tail, quant, scale, rank, offset=0, factor=1, shift=None, bipolar=False):
        """code(acc) (C, k) -> (C, k) by the source's own nodes: z0 = float32((factor * acc -
        shift[c]) * sigma[c]) (factor 2, shift the weight row sums on bipolar inputs), + bias
        (the conv's float32 bias add), the tail nodes, the Quant; codes = rint(y / s) - offset,
        or (rint(y / s) + 1) / 2 for a BipolarQuant."""
        shift = np.zeros(len(sigma), np.int64) if shift is None else shift
        helper = self.src.onnx.helper
        nodes = []
        current = "acc_value"
        if bias is not None:
            self.src.consts["import_bias"] = bias.reshape([1, -1] + [1] * (rank - 2))
            nodes.append(helper.make_node("Add", [current, "import_bias"], ["biased"]))
            current = "biased"
        for i, node in enumerate(tail + [quant]):
            copy = self._probe_copy(node, i)
            copy.input[0], current = current, copy.output[0]
            nodes.append(copy)

        def code(acc: np.ndarray) -> np.ndarray:
            z = ((acc.astype(np.float64) * factor - shift[:, None]) * sigma[:, None]).astype(np.float32).T  # (k, C)
            z = z.reshape(z.shape + (1,) * (rank - 2))
            y = self.src.run(nodes, {"acc_value": np.ascontiguousarray(z)}, current)
            v = np.rint(y.reshape(y.shape[0], -1) / np.float32(scale)).astype(np.int64).T
            return (v + 1) // 2 if bipolar else v - offset

        return code

    def logits(self, node, attrs, weight, sigma, bias, tail, end) -> None:
        if tail or end not in self.src.outputs:
            _refuse(node, "the last Gemm must be the graph's output (its float values are the logits)")
        out_c = attrs["out_channels"]
        per_tensor = np.all(sigma == sigma[0])
        arrays = {"weight": weight,
                  "scale": np.array([sigma[0] if per_tensor else 1.0], np.float32),
                  "bias": bias if bias is not None else np.zeros(out_c, np.float32),
                  "bn_scale": np.ones(out_c, np.float32) if per_tensor else sigma.astype(np.float32),
                  "bn_shift": np.zeros(out_c, np.float32)}
        if not per_tensor:  # z = (float32(acc) * sigma[c]) + bias[c] through the bn steps
            arrays["bn_shift"], arrays["bias"] = arrays["bias"], np.zeros(out_c, np.float32)
        attrs.update(output="logits", out_max=attrs["acc_bound"], out_scale=1.0, graph_node=end)
        self.layers.append(Layer(attrs, arrays))
        return None


def import_qonnx(path: str | os.PathLike) -> IntegerModel:
    """A QONNX file (Brevitas export; external data beside it is read) -> validated IntegerModel."""
    onnx = require("onnx")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EngineError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(path)
    except Exception as err:  # protobuf's DecodeError and onnx's own errors share no base class
        raise EngineError(f"{path} is not a readable ONNX model ({str(err).splitlines()[0][:150]})") from None
    model = _Importer(proto).run()
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    model.header["source"] = {"onnx": os.path.abspath(path), "onnx_sha256": digest,
                              "importer": "integer_engine.interop.from_qonnx",
                              "input": "float32 x = p / 255 of uint8 pixels p"}
    return model
