"""A `.tpq` model as standard ONNX that ONNX Runtime executes with every layer bit-equal to the
engine's (docs/interop.md).

Integer parts stay integer, so they are exact in any correct implementation:

- conv/linear: acc = q . c with one ConvInteger / MatMulInteger of the uint8 codes q and the
  levels c = 2j - n_w where they fit a byte (n_w <= 127: up to 7-bit weights), stored as uint8
  c + 128 with weight zero point 128 (ONNX Runtime's uint8 x int8 kernels on AVX2 saturate
  16-bit pair sums; its uint8 x uint8 path is exact); 8-bit layers use
  the engine's identity  acc = 2 * (q . j) - n_w * rowsum(q)  on the stored uint8 codes j (int32
  results, widened to int64); inputs wider than 8 bits (average-pool window sums) are split into
  base-256 digits, q = sum_d 256**d * q_d.
  (QLinearConv is not used: it rounds its bias and is not exact.)
- thresholds: code = #{t : d*acc >= d*T[t]} as a binary search of `bits` steps, each a Gather of
  the next candidate threshold and one comparison (the per-channel sorted tables d*T flattened to
  one array, so memory stays at one int64 per element whatever the bit width);
- requant: a Gather from the engine's lookup table; max-pool on uint8 codes (ONNX's padding is
  "ignored", the engine's is 0: the same on codes >= 0 when every window holds a real element);
  average pools as window sums (ReduceSum, or a depthwise all-ones float Conv on integers far
  below 2**24); shortcut subsample = Slice with steps; channel padding = Pad.

The two float32 parts are written as one node per float32 operation of the epilogue
(epilogue.py: Cast, Mul, Add, Mul, Add), which ONNX Runtime evaluates in float32 IEEE arithmetic,
one rounding each: the logits, and a residual add's sum z, whose activation is then the count of
exact float32 thresholds z >= F[t] (`float_search.py`). Sessions should be created with
`session_options()` (graph optimizations at ORT_ENABLE_BASIC), although no fusion in ONNX Runtime
1.3x touches these nodes: the tests check both levels.
"""
from __future__ import annotations

import numpy as np

from integer_engine.errors import EngineError
from integer_engine.format import IntegerModel, Layer
from integer_engine.interop.float_search import add_float_thresholds
from integer_engine.interop.graph import GraphBuilder, lower_model
from integer_engine.requant import apply_thresholds

FORM = "onnxruntime"


def session_options():
    """ONNX Runtime session options for exported models: basic graph optimizations only (constant
    folding), so no later fusion can rewrite the float32 epilogue nodes."""
    from integer_engine.interop import require

    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return options


class _OrtLowering:
    def __init__(self, model: IntegerModel):
        self.model = model
        self.g = GraphBuilder("tinypact_integer_model")

    def digits(self, x: str, in_max: int) -> list[str]:
        """uint8 base-256 digits of the non-negative integer tensor x (least significant first)."""
        g = self.g
        if in_max <= 255:
            return [g.cast(x, np.uint8)]
        count = (int(in_max).bit_length() + 7) // 8
        rest = g.cast(x, np.int64)
        out = []
        for _ in range(count):
            high = g.op("Div", [rest, g.scalar(256, np.int64)])
            low = g.op("Sub", [rest, g.op("Mul", [high, g.scalar(256, np.int64)])])
            out.append(g.cast(low, np.uint8))
            rest = high
        return out

    def accumulator(self, layer: Layer, x: str) -> str:
        """int64 acc = q . c, q the layer's input codes, c = 2j - n_w the weight levels: one
        ConvInteger / MatMulInteger on the levels where they fit a byte (n_w <= 127, up to 7
        bits; uint8 c + 128, zero point 128), else 2 * (q . j) - n_w * rowsum(q) on the stored
        uint8 codes j."""
        a, g = layer.attrs, self.g
        w = layer.arrays["weight"]
        conv = a["kind"] == "conv"
        folded = a["n_w"] <= 127
        attrs = dict(pads=[a["padding"]] * 4, strides=[a["stride"]] * 2) if conv else {}
        operands = []
        if folded:  # uint8 c + 128 with weight zero point 128 (uint8 x int8 products saturate
            # int16 pair sums in ONNX Runtime's AVX2 kernels; uint8 x uint8 do not)
            w = (2 * w.astype(np.int16) - a["n_w"] + 128).astype(np.uint8)
            operands = ["", g.const(np.array(128, np.uint8), "zero_point")]
        j = g.const(w if conv else np.ascontiguousarray(w.T), f"{a['name']}_{'levels' if folded else 'weight'}")
        ones = g.const(np.ones((1, *w.shape[1:]), np.uint8), "ones") if conv and not folded else None
        dot = rowsum = None
        for d, digit in enumerate(self.digits(x, a["in_max"])):
            if conv:
                p = g.cast(g.op("ConvInteger", [digit, j, *operands], out_type=np.int32, **attrs), np.int64)
            else:
                p = g.cast(g.op("MatMulInteger", [digit, j, *operands], out_type=np.int32), np.int64)
            r = None
            if not folded:
                r = (g.cast(g.op("ConvInteger", [digit, ones], out_type=np.int32, **attrs), np.int64) if conv else
                     g.op("ReduceSum", [g.cast(digit, np.int64), g.const(np.array([1], np.int64), "axes")], keepdims=1))
            if d:
                weight = g.scalar(256**d, np.int64)
                p = g.op("Mul", [p, weight])
                if r is not None:
                    r = g.op("Mul", [r, weight])
            dot = p if dot is None else g.op("Add", [dot, p])
            if r is not None:
                rowsum = r if rowsum is None else g.op("Add", [rowsum, r])
        if folded:
            return dot
        twice = g.op("Mul", [dot, g.scalar(2, np.int64)])
        return g.op("Sub", [twice, g.op("Mul", [rowsum, g.scalar(a["n_w"], np.int64)])])

    def count_reached(self, value: str, table: np.ndarray, rank: int, out: str) -> str:
        """uint8 #{t : value >= table[c, t]} (table (C, n) non-decreasing along t, n = 2**k - 1)
        by a k-step binary search: pos += 2**b where value >= table[c, pos + 2**b - 1]."""
        g = self.g
        channels, n = table.shape
        k = int(n).bit_length()
        if n != 2**k - 1:
            raise EngineError(f"{n} levels: the binary search needs 2**k - 1")
        # Flattened table; row c starts at c * (n + 1) with a never-used slot 0 (pos + 2**b >= 1).
        flat = np.concatenate([np.full((channels, 1), table.min(initial=0)), table], axis=1).reshape(-1)
        table_name = g.const(flat.astype(table.dtype), "thresholds")
        offsets = np.arange(channels, dtype=np.int64) * (n + 1)
        base = g.per_channel(offsets, rank, np.int64) if channels > 1 else g.scalar(0, np.int64)
        pos = None
        for b in reversed(range(k)):
            step = g.scalar(2**b, np.int64)
            candidate = step if pos is None else g.op("Add", [pos, step])
            threshold = g.op("Gather", [table_name, g.op("Add", [base, candidate])], axis=0)
            reached = g.cast(g.op("GreaterOrEqual", [value, threshold], out_type=np.bool_), np.int64)
            gained = g.op("Mul", [reached, step])
            pos = gained if pos is None else g.op("Add", [pos, gained])
        return g.cast(pos, np.uint8, out=out)

    # ---- layers ----------------------------------------------------------------------
    def layer(self, layer: Layer) -> None:
        a, g = layer.attrs, self.g
        kind, name = a["kind"], a["name"]
        x = a["inputs"][0]
        rank = len(a["out_shape"]) + 1
        if kind in ("conv", "linear"):
            acc = self.accumulator(layer, x)
            arr = layer.arrays
            if a["output"] == "threshold":
                d = arr["direction"].astype(np.int64)
                signed = g.op("Mul", [acc, g.per_channel(d, rank, np.int64)])
                self.count_reached(signed, arr["thresholds"] * d[:, None], rank, name)
            elif a["output"] == "logits":
                z = g.affine(acc, rank, arr["scale"][0], arr["bias"], arr["bn_scale"], arr["bn_shift"])
                g.rename(z, name)
            else:
                g.cast(acc, np.int32, out=name)
        elif kind == "requant":
            table = apply_thresholds(np.arange(a["in_max"] + 1, dtype=np.int64)[:, None],
                                     layer.arrays["thresholds"], layer.arrays["direction"], 1)[:, 0]
            g.op("Gather", [g.const(table.astype(np.uint8), "lut"), g.cast(x, np.int64)], name, axis=0)
        elif kind == "maxpool":  # onnxruntime's MaxPool takes uint8, not int32: wider codes as float32
            k, p = a["kernel"], a["padding"]
            narrow = a["out_max"] <= 255
            y = g.op("MaxPool", [g.cast(x, np.uint8 if narrow else np.float32)], kernel_shape=[k, k],
                     strides=[a["stride"]] * 2, pads=[p] * 4)
            g.cast(y, np.uint8 if narrow else np.int32, out=name)
        elif kind == "avgpool":
            if a["kernel"] == "global":
                g.op("ReduceSum", [g.cast(x, np.int32), g.const(np.array([2, 3], np.int64), "axes")], name,
                     keepdims=1)
            else:
                y = g.window_sum(x, a["in_shape"][0], a["kernel"], a["stride"], a["out_max"])
                g.cast(y, np.int32, out=name)
        elif kind == "flatten":
            g.op("Flatten", [x], name, axis=1)
        elif kind == "shortcut":
            s = a["stride"]
            if a["mode"] == "avgpool":
                y = g.cast(g.window_sum(x, a["in_shape"][0], s, s, a["out_max"]), np.int32)
                g.subsample_pad(y, 1, a["pad_before"], a["pad_after"], name)
            else:
                g.subsample_pad(x, s, a["pad_before"], a["pad_after"], name)
        elif kind == "add":
            arr = layer.arrays
            z = None
            for i, xi in enumerate(a["inputs"]):  # z = affine_0(x_0) + affine_1(x_1), in this order
                term = g.affine(xi, rank, arr["scale"][i], arr["bias"][i], arr["bn_scale"][i],
                                   arr["bn_shift"][i])
                z = term if z is None else g.op("Add", [z, term])
            floats = add_float_thresholds(layer)
            self.count_reached(z, floats[None, :], rank, name)
        else:
            raise EngineError(f"layer {name!r}: kind {kind!r} has no ONNX form")


def to_onnx(model: IntegerModel):
    """The ONNX model (onnx.ModelProto): input `input` uint8 (N, C, H, W), output `logits`
    float32 (N, classes); every layer's output is the tensor named after the layer (its names
    are in the metadata, `check.with_layer_outputs` exposes them)."""
    lowering = _OrtLowering(model)
    return lower_model(lowering.g, model, lowering.layer, np.uint8, "N", FORM)
