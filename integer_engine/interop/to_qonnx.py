"""A `.tpq` model as QONNX, FINN's input format, exact in qonnx's executor (docs/interop.md).

Tensors are float32 holding integers, as FINN's streamlined graphs are: the input is the uint8
pixel value (annotated UINT8), every activation its code (MultiThreshold's `out_dtype` UINTk).

- Weights: the integer levels c = 2j - n_w, marked with their bit width by a Quant on the
  initializer (scale 1, zero point 0), which FINN folds into an annotated integer tensor:
      DoReFa / SAWB, k > 1 bits (odd levels +-1, +-3 ... +-n_w):  Quant(c, bitwidth k+1, signed,
          narrow): the (k+1)-bit narrow range is exactly [-n_w, n_w], so FINN charges one bit more;
      zero-aligned SAWB (even levels, n_w = 2**k - 2):  Quant(c, scale 2, bitwidth k, signed,
          narrow): k-bit integers c/2 times a power-of-two scale, no extra bit;
      1 bit (levels +-1):  BipolarQuant(c, scale 1).
- conv/linear: Conv / MatMul in float32 on those integers. Every partial sum is an integer of
  magnitude <= acc_bound, so the float32 result is the exact accumulator when acc_bound <= 2**24;
  beyond that (ResNet's logits after a global pool of 8-bit codes) the input is split in two
  (its base-256 digits, the high one a MultiThreshold; or two halves of its channels): two exact
  products whose float32 sum is float32(acc), which is all the epilogue uses; a layer no such
  split makes exact is refused.
- thresholds: MultiThreshold(acc, d*T): it counts x >= threshold and has no direction, so a
  channel with direction -1 gets negated weights (its Conv yields -acc) and thresholds -T;
  levels no accumulator reaches are +inf.
- requant: MultiThreshold on the codes with the layer's integer thresholds.
- residual add and logits: the epilogue's float32 operations as Mul/Add nodes (qonnx runs each
  node on its own, so nothing can fuse them); the add's activation is a MultiThreshold on the
  float32 sum z with exact float32 thresholds (`float_search.py`), so the whole add is one
  float chain plus a threshold, the shape FINN's streamlining produces.
- max-pool: MaxPool (on codes >= 0, ONNX's ignored padding equals the engine's zeros); average
  pools, the global one included, as window sums: a depthwise Conv with an all-ones kernel
  (annotated BINARY), which FINN maps to a vector-vector unit; the shortcut (subsample or
  average pool, then zero channels) as one Conv with a 0/1 channel-embedding kernel (BINARY).
"""
from __future__ import annotations

import numpy as np

from integer_engine.errors import EngineError
from integer_engine.format import IntegerModel, Layer
from integer_engine.interop.float_search import add_float_thresholds
from integer_engine.interop.graph import QONNX_DOMAIN, GraphBuilder, lower_model

FORM = "qonnx"
FLOAT32_EXACT = 2**24  # integers up to this magnitude are exact float32 values


def weight_quant(n_w: int, wbits: int) -> tuple[str, dict]:
    """(op, scale and bit width) of the Quant/BipolarQuant that marks integer levels c with their
    bit width and returns them unchanged: round(c / scale) * scale = c."""
    if wbits == 1:
        return "BipolarQuant", {"scale": 1.0}
    if n_w % 2 == 0:  # zero-aligned: c = 2m, m in the k-bit narrow range
        return "Quant", {"scale": 2.0, "bitwidth": wbits}
    return "Quant", {"scale": 1.0, "bitwidth": wbits + 1}


class _QonnxLowering:
    def __init__(self, model: IntegerModel):
        self.model = model
        self.g = GraphBuilder("tinypact_qonnx_model")
        self.datatypes: dict[str, str] = {"input": "UINT8"}

    def weights(self, layer: Layer, sign: np.ndarray, inputs: slice = slice(None)) -> str:
        """The layer's integer levels (rows times `sign`; input channels/features `inputs`),
        through their Quant/BipolarQuant."""
        a, g = layer.attrs, self.g
        j = layer.arrays["weight"][:, inputs].astype(np.int64)
        levels = (2 * j - a["n_w"]) * sign.reshape((-1,) + (1,) * (j.ndim - 1))
        if a["kind"] == "linear":
            levels = levels.T  # MatMul(x (N, F), W (F, O))
        op, attrs = weight_quant(a["n_w"], a["wbits"])
        inputs = [g.const(levels.astype(np.float32), f"{a['name']}_weight"), g.scalar(attrs["scale"], np.float32)]
        if op == "BipolarQuant":
            return g.op(op, inputs, domain=QONNX_DOMAIN)
        inputs += [g.scalar(0.0, np.float32), g.scalar(attrs["bitwidth"], np.float32)]
        return g.op(op, inputs, domain=QONNX_DOMAIN, signed=1, narrow=1, rounding_mode="ROUND")

    def accumulator(self, layer: Layer, x: str, sign: np.ndarray) -> str:
        """float32(sign * acc), the correctly rounded accumulator (all the epilogue uses).

        Exact when acc_bound <= 2**24 (integer partial sums). A wider layer is split into two
        exact halves, whose float32 sum is one rounding of the exact sum, i.e. float32(acc):
        the input's base-256 digits (q = 256 * hi + lo, codes above 8 bits after an average-pool
        sum), else its first and second half of input channels. Thresholds on float32(acc) are
        exact because the epilogue starts with float32(acc) (docs/interop.md)."""
        a, g = layer.attrs, self.g
        channels = a["in_shape"][0]
        per_channel = a["acc_bound"] // channels  # fan-in of one input channel x in_max x n_w
        half = (channels + 1) // 2
        if a["acc_bound"] <= FLOAT32_EXACT:
            return self.matmul(layer, x, self.weights(layer, sign))
        if 255 < a["in_max"] < 2**16 and a["acc_bound"] // a["in_max"] * 255 <= FLOAT32_EXACT:
            high, low = self.digits(x, a["in_max"])
            # one weight Quant per product: FINN folds no Quant that feeds two nodes
            scaled_high = g.op("Mul", [self.matmul(layer, high, self.weights(layer, sign)), g.scalar(256.0, np.float32)])
            return g.op("Add", [scaled_high, self.matmul(layer, low, self.weights(layer, sign))])
        if channels >= 2 and half * per_channel <= FLOAT32_EXACT:
            parts = []
            for inputs in (slice(0, half), slice(half, channels)):
                piece = g.op("Slice", [x, g.const(np.array([inputs.start], np.int64), "starts"),
                                       g.const(np.array([inputs.stop], np.int64), "ends"),
                                       g.const(np.array([1], np.int64), "axes")])
                parts.append(self.matmul(layer, piece, self.weights(layer, sign, inputs)))
            return g.op("Add", parts)
        raise EngineError(f"layer {a['name']!r}: worst-case accumulator {a['acc_bound']} exceeds "
                          f"2**24, beyond which qonnx's float32 Conv/MatMul rounds, and no split "
                          f"into two exact halves exists; export it with export-onnx (ONNX Runtime) "
                          f"or use narrower weights or inputs here")

    def digits(self, x: str, in_max: int) -> tuple[str, str]:
        """(q // 256, q % 256) of integer codes q <= in_max < 2**16, in ops FINN maps to HW
        layers: the high digit a MultiThreshold at 256, 512, ..., the low one q - 256 * high.
        When x is a Flatten's output the digits are taken before it and flattened one by one, so
        that each Flatten feeds a single MatMul (the only place FINN folds a Flatten into)."""
        g = self.g
        producer = next((n for n in g.nodes if x in n.output), None)
        flatten = producer is not None and producer.op_type == "Flatten"
        source = producer.input[0] if flatten else x
        top = in_max // 256
        high = self.multithreshold(source, 256.0 * np.arange(1, top + 1)[None, :], top, g.fresh("high_digit"))
        radix = g.scalar(256.0, np.float32)
        self.datatypes[radix] = "UINT9"  # an integer, so FINN infers integer digits
        low = g.op("Sub", [source, g.op("Mul", [high, radix])])
        self.datatypes[low] = "UINT8"
        if flatten:
            high, low = (g.op("Flatten", [t], axis=1) for t in (high, low))
        return high, low

    def matmul(self, layer: Layer, x: str, w: str) -> str:
        a, g = layer.attrs, self.g
        if a["kind"] == "conv":
            return g.conv(x, w, a["kernel"], a["stride"], a["padding"])
        return g.op("MatMul", [x, w])

    def window_sum(self, x: str, channels: int, kernel: tuple, stride: int, out_max: int, out: str) -> str:
        """Window sums as a depthwise Conv with an all-ones kernel (FINN lowers it to a
        vector-vector unit)."""
        return self.binary_conv(x, np.ones((channels, 1, *kernel), np.float32), stride, channels, out_max, out)

    def shortcut(self, layer: Layer) -> None:
        """Option A's shortcut as one Conv, which FINN maps to a matrix-vector unit (it has no
        channel-padding unit): kernel s x s (the average pool's window sums) or 1 x 1 (the
        subsample), stride s, weight 1 from input channel c to output channel c + pad_before and
        0 elsewhere, so the padded channels are 0."""
        a = layer.attrs
        channels, out_channels, s = a["in_shape"][0], a["out_shape"][0], a["stride"]
        k = s if a["mode"] == "avgpool" else 1
        embed = np.zeros((out_channels, channels, k, k), np.float32)
        embed[np.arange(channels) + a["pad_before"], np.arange(channels)] = 1.0
        self.binary_conv(a["inputs"][0], embed, s, 1, a["out_max"], a["name"])

    def binary_conv(self, x: str, kernel: np.ndarray, stride: int, group: int, out_max: int, out: str) -> str:
        """An unpadded Conv with a 0/1 kernel annotated BINARY: each output is a sum of integer
        inputs, exact in float32 while it stays below 2**24 (out_max)."""
        if out_max >= FLOAT32_EXACT:
            raise EngineError(f"layer {out!r}: window sums up to {out_max} are not exact in float32")
        weight = self.g.const(kernel, f"{out}_kernel")
        self.datatypes[weight] = "BINARY"
        return self.g.conv(x, weight, kernel.shape[2:], stride, 0, group, out)

    def multithreshold(self, x: str, table: np.ndarray, out_max: int, out: str) -> str:
        dtype = f"UINT{max(1, int(out_max).bit_length())}"
        self.datatypes[out] = dtype
        return self.g.op("MultiThreshold", [x, self.g.const(table.astype(np.float32), "thresholds")], out,
                         domain=QONNX_DOMAIN, out_dtype=dtype)

    def layer(self, layer: Layer) -> None:
        a, g = layer.attrs, self.g
        kind, name = a["kind"], a["name"]
        x = a["inputs"][0]
        rank = len(a["out_shape"]) + 1
        arr = layer.arrays
        if kind in ("conv", "linear"):
            if a["output"] == "threshold":
                d = arr["direction"].astype(np.int64)
                acc = self.accumulator(layer, x, d)
                signed = (arr["thresholds"] * d[:, None]).astype(np.float64)
                signed[signed > a["acc_bound"]] = np.inf  # levels no accumulator reaches
                self.multithreshold(acc, signed, a["out_max"], name)
                return
            acc = self.accumulator(layer, x, np.ones(a["out_channels"], np.int64))
            if a["output"] == "logits":
                g.rename(g.affine(acc, rank, arr["scale"][0], arr["bias"], arr["bn_scale"], arr["bn_shift"]), name)
            else:
                g.rename(acc, name)
        elif kind == "requant":
            if int(arr["direction"][0]) != 1:
                raise EngineError(f"layer {name!r}: a decreasing requantization has no MultiThreshold form")
            table = arr["thresholds"].astype(np.float64)
            table[table > a["in_max"]] = np.inf
            self.multithreshold(x, table, a["out_max"], name)
        elif kind == "maxpool":
            k, p = a["kernel"], a["padding"]
            g.op("MaxPool", [x], name, kernel_shape=[k, k], strides=[a["stride"]] * 2, pads=[p] * 4)
        elif kind == "avgpool":
            channels, height, width = a["in_shape"]
            if a["kernel"] == "global":  # one window over the whole map (FINN has no ReduceSum unit)
                self.window_sum(x, channels, (height, width), 1, a["out_max"], name)
            else:
                self.window_sum(x, channels, (a["kernel"],) * 2, a["stride"], a["out_max"], name)
        elif kind == "flatten":
            g.op("Flatten", [x], name, axis=1)
        elif kind == "shortcut":
            self.shortcut(layer)
        elif kind == "add":
            z = None
            for i, xi in enumerate(a["inputs"]):  # z = affine_0(x_0) + affine_1(x_1), in this order
                term = g.affine(xi, rank, arr["scale"][i], arr["bias"][i], arr["bn_scale"][i], arr["bn_shift"][i])
                z = term if z is None else g.op("Add", [z, term])
            floats = add_float_thresholds(layer)
            self.multithreshold(z, floats[None, :], a["out_max"], name)
        else:
            raise EngineError(f"layer {name!r}: kind {kind!r} has no QONNX form")


def to_qonnx(model: IntegerModel, batch: int = 1):
    """The QONNX model (onnx.ModelProto): input `input` float32 (batch, C, H, W) pixel values
    (UINT8; batch 1 is FINN's convention), output `logits` float32; every layer's output is the
    tensor named after the layer. Every tensor's shape is in the file (qonnx's InferShapes), so
    qonnx's and FINN's `execute_onnx` run it as saved."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    if batch < 1:
        raise EngineError(f"batch must be at least 1, got {batch}")
    lowering = _QonnxLowering(model)
    onnx_model = lower_model(lowering.g, model, lowering.layer, np.float32, batch, FORM)
    _annotate(onnx_model, lowering.datatypes)
    return ModelWrapper(onnx_model).transform(InferShapes()).model


def _annotate(onnx_model, datatypes: dict[str, str]) -> None:
    """FINN's datatype annotations (graph.quantization_annotation), as qonnx's ModelWrapper
    writes them: the input's UINT8, every MultiThreshold output's UINTk, the window sums'
    all-ones kernels BINARY."""
    from integer_engine.interop import require

    onnx = require("onnx")
    for tensor, dtype in datatypes.items():
        annotation = onnx.TensorAnnotation(tensor_name=tensor)
        annotation.quant_parameter_tensor_names.append(onnx.StringStringEntryProto(key="finn_datatype", value=dtype))
        onnx_model.graph.quantization_annotation.append(annotation)
