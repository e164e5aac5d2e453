"""Export: a tinypact checkpoint (arrays + JSON graph) -> an integer model (docs/model-format.md).

The checkpoint's `graph` (ARCHITECTURE.md) is lowered node by node. A conv/linear output stays
*pending* as its integer accumulator plus the float epilogue constants that tinypact's forward
applies to it (`epilogue.affine`: the float32 scale s_in * s_w, the bias, batch norm's eval
constants), while max-pools are absorbed; the activation that follows turns it into integer
thresholds found by exact search over the same float32 sequence (`requant.epilogue_thresholds`).
Max-pooling between BN and the activation moves after the requantization: the code is
non-decreasing in the value z, so max(code(z)) = code(max(z)).
Every constant is computed here with the same IEEE operations, in the same order, as tinypact
computes it (weights re-quantized in float64 from the float32 checkpoint, scales in float32, batch
norm's constants in float64 rounded once), so the integer model equals the trained model bit for
bit. Nothing here imports tinypact: the checkpoint file is the contract.
"""
from __future__ import annotations

import hashlib
import json
import os
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from integer_engine.epilogue import round_half_up
from integer_engine.errors import EngineError
from integer_engine.format import ACC_MAX, IntegerModel, Layer, validate_model
from integer_engine.requant import check_no_overflow, epilogue_thresholds

# SAWB (c1, c2): alpha_w = c1*sqrt(mean(w^2)) - c2*mean(|w|). The same tables as tinypact's
# quant/functional.py (1 bit: (0, -1) gives alpha_w = mean|w|); duplicated because the checkpoint
# file, not tinypact's code, is the contract.
SAWB_COEFFS = {1: (0.0, -1.0), 2: (3.12, 2.064), 3: (7.509, 6.892), 4: (12.68, 12.80),
               5: (17.74, 18.64), 8: (31.76, 35.04)}
SAWB0_COEFFS = {2: (2.6, 1.71), 4: (12.035, 12.03), 8: (31.76, 35.04)}


@dataclass
class QuantWeight:
    """Weight codes j in [0, n] (uint8) meaning integer levels c = 2j - n, real value c * scale,
    with the float32 scale tinypact's quantized weight uses: float32(step), step in float64.

    n = 2**bits - 1 (odd levels, DoReFa and SAWB) or 2**bits - 2 (zero-aligned SAWB, even levels).
    """

    codes: np.ndarray
    bits: int
    n: int
    step: float
    kind: str

    @property
    def scale(self) -> np.float32:
        return np.float32(self.step)


def _sawb_scale(w: np.ndarray, bits: int, table: dict, where: str) -> float:
    if bits not in table:
        raise EngineError(f"{where}: no SAWB coefficients for {bits} bits (have {sorted(table)})")
    c1, c2 = table[bits]
    alpha = c1 * np.sqrt(np.mean(w * w)) - c2 * np.mean(np.abs(w))
    if not alpha > 0:
        alpha = np.max(np.abs(w)) if w.size else 0.0
    return float(alpha) if alpha > 0 else 1.0


def quantize_weight(w: np.ndarray, kind: str, bits: int, where: str = "weight") -> QuantWeight:
    """Recompute the training quantizer's weight codes in float64 (w_q = (2j - n) * scale).

    DoReFa k > 1: t = tanh(w), u = t / max|t| * 0.5 + 0.5 (max|t| = 0 -> divide by 1),
                  j = floor(u*n + 1/2), scale 1/n.
    DoReFa k = 1: value sign(w) * mean|w| with sign(0) = +1: j = [w >= 0], n = 1, scale mean|w|.
    SAWB: a = c1*sqrt(mean w^2) - c2*mean|w| (max|w| if a <= 0, 1 if w = 0),
          u = clip(w/a, -1, 1)*0.5 + 0.5, j = floor(u*n + 1/2), scale a/n; n = 2**k - 1, or
          2**k - 2 for zero-aligned SAWB ("sawb0": levels include 0).
    """
    w = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise EngineError(f"{where}: weights contain NaN or inf")
    if kind in ("float", None) or bits >= 16:
        raise EngineError(f"{where}: {bits}-bit/float weights cannot run on the integer engine; "
                          f"train with wbits and first_last_bits <= 8")
    if not 1 <= bits <= 8:
        raise EngineError(f"{where}: {bits}-bit weights are not supported (1..8)")
    n = 2**bits - 1
    if kind == "dorefa":
        if bits == 1:
            return QuantWeight((w >= 0).astype(np.uint8), 1, 1, float(np.mean(np.abs(w))), kind)
        t = np.tanh(w)
        peak = float(np.max(np.abs(t))) if t.size else 0.0
        u = t / (peak if peak > 0 else 1.0) * 0.5 + 0.5
        j = round_half_up(u * n)
        return QuantWeight(np.clip(j, 0, n).astype(np.uint8), bits, n, 1.0 / n, kind)
    if kind in ("sawb", "sawb0"):
        if kind == "sawb0":
            n = n - 1
            if n < 2:
                raise EngineError(f"{where}: zero-aligned SAWB needs at least 2 bits")
        alpha = _sawb_scale(w, bits, SAWB0_COEFFS if kind == "sawb0" else SAWB_COEFFS, where)
        u = np.clip(w / alpha, -1.0, 1.0) * 0.5 + 0.5
        j = round_half_up(u * n)
        return QuantWeight(np.clip(j, 0, n).astype(np.uint8), bits, n, alpha / n, kind)
    raise EngineError(f"{where}: unknown weight quantizer {kind!r}")


@dataclass
class Codes:
    """A materialised integer tensor of the integer model: value = code * scale (float32, exactly
    as tinypact computes it), 0 <= code <= max."""

    name: str
    shape: tuple[int, ...]
    max: int
    scale: np.float32


@dataclass
class Affine:
    """The epilogue's affine part, z = ((float32(x) * scale + bias) * bn_scale) + bn_shift."""

    scale: np.float32
    bias: np.ndarray
    bn_scale: np.ndarray
    bn_shift: np.ndarray
    has_bn: bool = False

    @classmethod
    def of_codes(cls, scale: np.float32, channels: int) -> "Affine":
        """x * scale: the value of codes (identity bias and batch norm, which are exact)."""
        return cls(np.float32(scale), np.zeros(channels, np.float32), np.ones(channels, np.float32),
                   np.zeros(channels, np.float32))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"scale": np.array([self.scale], np.float32), "bias": self.bias,
                "bn_scale": self.bn_scale, "bn_shift": self.bn_shift}


@dataclass
class Pending:
    """A conv/linear output not yet requantized: its accumulator and the affine that follows."""

    node: dict
    source: Codes
    weight: QuantWeight
    affine: Affine
    conv_shape: tuple[int, ...]
    pools: list[dict] = field(default_factory=list)
    shape: tuple[int, ...] = ()


@dataclass
class PendingAdd:
    """A residual sum not yet requantized: z = sum_i affine_i(x_i), in input order."""

    node: dict
    terms: list[tuple[Codes, Affine, int]]  # (input, its affine, its smallest value)
    shape: tuple[int, ...]


def _out_size(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


class _Lowering:
    def __init__(self, params: dict[str, np.ndarray]):
        self.params = params
        self.layers: list[Layer] = []
        self.values: dict[str, Any] = {}
        self.names: set[str] = {"input"}

    def param(self, key: Any, where: str) -> np.ndarray:
        if not isinstance(key, str) or key not in self.params:
            raise EngineError(f"node {where!r}: parameter {key!r} not found in the checkpoint")
        return np.asarray(self.params[key], dtype=np.float64)

    def unique(self, name: str) -> str:
        base, i = str(name), 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def input_value(self, node: dict, index: int = 0) -> Any:
        inputs = node.get("inputs")
        if not isinstance(inputs, list) or len(inputs) <= index:
            raise EngineError(f"node {node.get('id')!r}: missing inputs")
        key = inputs[index]
        if key not in self.values:
            raise EngineError(f"node {node.get('id')!r}: input {key!r} is not an earlier node")
        return self.values[key]

    def codes_input(self, node: dict, index: int = 0) -> Codes:
        value = self.input_value(node, index)
        if not isinstance(value, Codes):
            raise EngineError(f"node {node['id']!r} ({node['op']}): its input must be quantized "
                              f"activations (add an act node before it)")
        return value

    # ---- nodes -------------------------------------------------------------------------
    def lower(self, node: dict) -> Any:
        op = node.get("op")
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise EngineError(f"node {node.get('id')!r}: op {op!r} is not supported by the integer engine")
        return handler(node)

    def op_input(self, node: dict) -> Codes:
        shape = node.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3):
            raise EngineError("input node needs shape [C, H, W]")
        scale = float(node.get("scale", 1 / 255))
        if abs(scale * 255 - 1) > 1e-9:
            raise EngineError(f"input scale {scale} unsupported: the engine takes pixels/255")
        # tinypact's InputQuant: codes = pixels, one unit = float32(1/255).
        return Codes("input", tuple(int(s) for s in shape), 255, np.float32(1 / 255))

    def _weight_layer(self, node: dict, kind: str) -> Pending:
        src = self.codes_input(node)
        where = node["id"]
        w = self.param(node.get("weight"), where)
        wq = node.get("wq") or {}
        q = quantize_weight(w, wq.get("kind"), int(wq.get("bits", 32)), where)
        out_c = w.shape[0]
        if kind == "conv":
            if len(src.shape) != 3 or w.ndim != 4 or w.shape[1] != src.shape[0]:
                raise EngineError(f"node {where!r}: weight {w.shape} does not fit input {src.shape}")
            stride, padding = int(node.get("stride", 1)), int(node.get("padding", 0))
            oh = _out_size(src.shape[1], w.shape[2], stride, padding)
            ow = _out_size(src.shape[2], w.shape[3], stride, padding)
            shape = (out_c, oh, ow)
        else:
            if len(src.shape) != 1 or w.ndim != 2 or w.shape[1] != src.shape[0]:
                raise EngineError(f"node {where!r}: weight {w.shape} does not fit input {src.shape}")
            shape = (out_c,)
        bias = node.get("bias")
        affine = Affine.of_codes(np.float32(src.scale) * q.scale, out_c)  # float32 s_in * s_w
        if bias is not None:
            affine.bias = self.param(bias, where).reshape(out_c).astype(np.float32)
        return Pending(node, src, q, affine, shape, [], shape)

    def op_conv(self, node: dict) -> Pending:
        return self._weight_layer(node, "conv")

    def op_linear(self, node: dict) -> Pending:
        return self._weight_layer(node, "linear")

    def op_bn(self, node: dict) -> Pending:
        src = self.input_value(node)
        if not isinstance(src, Pending) or src.pools or src.affine.has_bn:
            raise EngineError(f"node {node['id']!r}: batch norm must directly follow a conv/linear")
        prefix = node.get("prefix")
        gamma = self.param(f"{prefix}.weight", node["id"])
        beta = self.param(f"{prefix}.bias", node["id"])
        mean = self.param(f"{prefix}.running_mean", node["id"])
        var = self.param(f"{prefix}.running_var", node["id"])
        eps = float(node.get("eps", 1e-5))
        if np.any(var + eps <= 0):
            raise EngineError(f"node {node['id']!r}: batch-norm variance + eps must be positive")
        # tinypact's batch_norm in eval mode, operation for operation: the constants in float64
        # from the float32 parameters, rounded to float32 once; then z * scale + shift in float32.
        inv_std = 1.0 / np.sqrt(var + eps)
        bn_scale = (gamma * inv_std).astype(np.float32)
        bn_shift = (beta - mean * gamma * inv_std).astype(np.float32)
        affine = Affine(src.affine.scale, src.affine.bias, bn_scale, bn_shift, has_bn=True)
        return Pending(src.node, src.source, src.weight, affine, src.conv_shape, [], src.shape)

    def op_maxpool(self, node: dict) -> Any:
        src = self.input_value(node)
        k, s, p = int(node.get("kernel", 2)), int(node.get("stride", node.get("kernel", 2))), int(node.get("padding", 0))
        if isinstance(src, Pending):
            c, h, w = src.shape
            shape = (c, _out_size(h, k, s, p), _out_size(w, k, s, p))
            return Pending(src.node, src.source, src.weight, src.affine, src.conv_shape,
                           src.pools + [node], shape)
        src = self.codes_input(node)
        return self.emit_pool(node, src, node["id"])

    def emit_pool(self, node: dict, src: Codes, graph_node: str | None) -> Codes:
        k, s, p = int(node.get("kernel", 2)), int(node.get("stride", node.get("kernel", 2))), int(node.get("padding", 0))
        c, h, w = src.shape
        shape = (c, _out_size(h, k, s, p), _out_size(w, k, s, p))
        name = self.unique(node["id"])
        attrs = {"name": name, "kind": "maxpool", "inputs": [src.name], "in_shape": list(src.shape),
                 "out_shape": list(shape), "kernel": k, "stride": s, "padding": p,
                 "out_max": src.max, "out_scale": float(src.scale)}
        if graph_node is not None:
            attrs["graph_node"] = graph_node
        self.layers.append(Layer(attrs))
        return Codes(name, shape, src.max, src.scale)

    def act_params(self, node: dict) -> tuple[int, np.float32]:
        kind, bits = node.get("kind"), int(node.get("bits", 32))
        if kind == "float" or bits >= 32:
            raise EngineError(f"node {node['id']!r}: float activations cannot run on the integer engine")
        if kind not in ("pact", "dorefa", "relu"):
            raise EngineError(f"node {node['id']!r}: unknown activation kind {kind!r}")
        if not 1 <= bits <= 8:
            raise EngineError(f"node {node['id']!r}: {bits}-bit activations not supported (1..8)")
        alpha = node.get("alpha")
        alpha = float(alpha) if isinstance(alpha, (int, float)) else float(self.param(alpha, node["id"]).reshape(-1)[0])
        if not (np.isfinite(alpha) and alpha > 0):
            raise EngineError(f"node {node['id']!r}: activation clip alpha must be positive, got {alpha}")
        return 2**bits - 1, np.float32(alpha)

    def emit_compute(self, pending: Pending, output: str, n: int = 0,
                     alpha: np.float32 = np.float32(1), act: dict | None = None) -> Layer:
        """A conv/linear layer whose accumulator goes to thresholds (`act` given), to a residual
        add ("accumulator") or out as the float32 logits."""
        node, src, q = pending.node, pending.source, pending.weight
        kind = node["op"]
        out_c = q.codes.shape[0]
        fan_in = int(np.prod(q.codes.shape[1:]))
        acc_hi = fan_in * src.max * q.n
        if acc_hi > ACC_MAX:
            raise EngineError(f"layer {node['id']!r}: worst-case accumulator {fan_in} x {src.max} x {q.n} "
                              f"= {acc_hi} overflows int32; lower first_last_bits or the input range")
        attrs = {"name": self.unique(node["id"]), "kind": kind, "inputs": [src.name],
                 "in_shape": list(src.shape), "out_shape": list(pending.conv_shape),
                 "kernel": [int(q.codes.shape[2]), int(q.codes.shape[3])] if kind == "conv" else [1, 1],
                 "stride": int(node.get("stride", 1)) if kind == "conv" else 1,
                 "padding": int(node.get("padding", 0)) if kind == "conv" else 0,
                 "out_channels": out_c, "wbits": q.bits, "n_w": q.n, "weight_quant": q.kind,
                 "w_scale": float(q.scale), "abits": max(1, int(src.max).bit_length()),
                 "in_max": src.max, "in_scale": float(src.scale),
                 "macs": int(np.prod(pending.conv_shape)) * fan_in,
                 "acc_bound": acc_hi, "output": output, "source_node": node["id"]}
        arrays: dict[str, np.ndarray] = {"weight": q.codes}
        affine = pending.affine
        if output == "threshold":
            try:
                th, direction = epilogue_thresholds(affine.scale, affine.bias, affine.bn_scale,
                                                    affine.bn_shift, alpha, n, "half_up", -acc_hi, acc_hi)
            except EngineError as err:
                raise EngineError(f"layer {node['id']!r}: {err}") from None
            arrays.update(affine.arrays(), alpha=np.array([alpha], np.float32), thresholds=th,
                          direction=direction)
            attrs.update(out_max=n, out_scale=float(alpha / np.float32(n)), rounding="half_up")
            if not pending.pools:  # with pools, the last pool's output is the activation's
                attrs["graph_node"] = act["id"]
        elif output == "logits":
            arrays.update(affine.arrays())
            attrs.update(out_max=acc_hi, out_scale=1.0, graph_node=node["id"])
        else:
            attrs.update(out_max=acc_hi, out_scale=1.0)
        layer = Layer(attrs, arrays)
        self.layers.append(layer)
        return layer

    def op_act(self, node: dict) -> Codes:
        n, alpha = self.act_params(node)
        scale = alpha / np.float32(n)  # tinypact's alpha / n in float32: one code's value
        src = self.input_value(node)
        if isinstance(src, Pending):
            layer = self.emit_compute(src, "threshold", n=n, alpha=alpha, act=node)
            out = Codes(layer.name, tuple(src.conv_shape), n, scale)
            for i, pool in enumerate(src.pools):
                out = self.emit_pool(pool, out, node["id"] if i == len(src.pools) - 1 else None)
            return out
        if isinstance(src, PendingAdd):
            return self.emit_add(node, src, n, alpha)
        src = self.codes_input(node)
        affine = Affine.of_codes(src.scale, 1)
        th, direction = epilogue_thresholds(affine.scale, affine.bias, affine.bn_scale,
                                            affine.bn_shift, alpha, n, "half_up", 0, src.max)
        name = self.unique(node["id"])
        self.layers.append(Layer(
            {"name": name, "kind": "requant", "inputs": [src.name], "in_shape": list(src.shape),
             "out_shape": list(src.shape), "in_max": src.max, "out_max": n,
             "out_scale": float(scale), "rounding": "half_up", "graph_node": node["id"]},
            {"thresholds": th, "direction": direction, "scale": np.array([src.scale], np.float32),
             "alpha": np.array([alpha], np.float32)}))
        return Codes(name, src.shape, n, scale)

    def op_avgpool(self, node: dict) -> Codes:
        src = self.codes_input(node)
        c, h, w = src.shape
        if node.get("kernel") == "global":
            k, s, shape, area = "global", 1, (c, 1, 1), h * w
        else:
            k = int(node["kernel"])
            s = int(node.get("stride", k))
            shape, area = (c, _out_size(h, k, s, 0), _out_size(w, k, s, 0)), k * k
        name = self.unique(node["id"])
        scale = src.scale / np.float32(area)  # tinypact: codes summed, scale / area in float32
        self.layers.append(Layer({"name": name, "kind": "avgpool", "inputs": [src.name],
                                  "in_shape": list(src.shape), "out_shape": list(shape), "kernel": k,
                                  "stride": s, "padding": 0, "out_max": src.max * area,
                                  "out_scale": float(scale), "graph_node": node["id"]}))
        return Codes(name, shape, src.max * area, scale)

    def op_flatten(self, node: dict) -> Codes:
        src = self.codes_input(node)
        name = self.unique(node["id"])
        shape = (int(np.prod(src.shape)),)
        self.layers.append(Layer({"name": name, "kind": "flatten", "inputs": [src.name],
                                  "in_shape": list(src.shape), "out_shape": list(shape),
                                  "out_max": src.max, "out_scale": float(src.scale),
                                  "graph_node": node["id"]}))
        return Codes(name, shape, src.max, src.scale)

    def op_dropout(self, node: dict) -> Any:
        return self.input_value(node)

    def op_shortcut(self, node: dict) -> Codes:
        src = self.codes_input(node)
        c, h, w = src.shape
        stride = int(node.get("stride", 1))
        # tinypact's option-A shortcut: avg-pool stride x stride, then `pad_channels` zero channels
        # appended after the existing ones. [before, after] and mode "subsample" are also accepted.
        pad = node.get("pad_channels", 0)
        before, after = (int(pad[0]), int(pad[1])) if isinstance(pad, list) else (0, int(pad))
        mode = node.get("mode", "avgpool")
        if mode not in ("avgpool", "subsample"):
            raise EngineError(f"node {node['id']!r}: unknown shortcut mode {mode!r}")
        if mode == "avgpool":
            shape, area = (c + before + after, h // stride, w // stride), stride * stride
        else:
            shape, area = (c + before + after, (h + stride - 1) // stride, (w + stride - 1) // stride), 1
        name = self.unique(node["id"])
        scale = src.scale / np.float32(area)
        self.layers.append(Layer({"name": name, "kind": "shortcut", "inputs": [src.name],
                                  "in_shape": list(src.shape), "out_shape": list(shape), "stride": stride,
                                  "mode": mode, "pad_before": before, "pad_after": after,
                                  "out_max": src.max * area, "out_scale": float(scale)}))
        return Codes(name, shape, src.max * area, scale)

    def op_add(self, node: dict) -> PendingAdd:
        """tinypact's residual add, y + shortcut in float32: each input's value by its affine."""
        terms, shape = [], None
        for i in range(2):
            value = self.input_value(node, i)
            if isinstance(value, Pending):
                if value.pools:
                    raise EngineError(f"node {node['id']!r}: max-pool before a residual add is not supported")
                layer = self.emit_compute(value, "accumulator")
                bound = layer.attrs["acc_bound"]
                terms.append((Codes(layer.name, tuple(value.conv_shape), bound, np.float32(1)),
                              value.affine, -bound))
            elif isinstance(value, Codes):
                terms.append((value, Affine.of_codes(value.scale, value.shape[0]), 0))
            else:
                raise EngineError(f"node {node['id']!r}: unsupported input to a residual add")
            if shape is not None and shape != terms[-1][0].shape:
                raise EngineError(f"node {node['id']!r}: add inputs differ in shape "
                                  f"{shape} vs {terms[-1][0].shape}")
            shape = terms[-1][0].shape
        return PendingAdd(node, terms, shape)

    def emit_add(self, act: dict, pending: PendingAdd, n: int, alpha: np.float32) -> Codes:
        """The add and the activation after it: evaluated as the float32 epilogue (two integer
        inputs have no thresholds on one integer), exactly as tinypact computes it."""
        name = self.unique(pending.node["id"])
        affines = [t[1] for t in pending.terms]
        try:
            check_no_overflow([(a.scale, a.bias, a.bn_scale, a.bn_shift, lo, codes.max)
                               for codes, a, lo in pending.terms], alpha, n)
        except EngineError as err:
            raise EngineError(f"node {act['id']!r}: {err}") from None
        arrays = {"scale": np.array([a.scale for a in affines], np.float32),
                  "bias": np.stack([a.bias for a in affines]).astype(np.float32),
                  "bn_scale": np.stack([a.bn_scale for a in affines]).astype(np.float32),
                  "bn_shift": np.stack([a.bn_shift for a in affines]).astype(np.float32),
                  "alpha": np.array([alpha], np.float32)}
        scale = alpha / np.float32(n)
        self.layers.append(Layer(
            {"name": name, "kind": "add", "inputs": [t[0].name for t in pending.terms],
             "in_shape": list(pending.shape), "out_shape": list(pending.shape),
             "input_bounds": [int(t[0].max) for t in pending.terms], "out_max": n,
             "out_scale": float(scale), "rounding": "half_up", "source_node": act["id"],
             "graph_node": act["id"]}, arrays))
        return Codes(name, pending.shape, n, scale)


def lower_graph(graph: list[dict], params: dict[str, np.ndarray], source: dict | None = None
                ) -> IntegerModel:
    """Lower a tinypact graph + float parameters (state_dict keys) to a validated IntegerModel."""
    if not isinstance(graph, list) or not graph:
        raise EngineError("checkpoint has no 'graph': re-train with a tinypact version that emits it")
    lowering = _Lowering(params)
    input_shape = None
    consumers: dict[str, int] = {}
    for node in graph:
        for key in node.get("inputs", []) or []:
            consumers[key] = consumers.get(key, 0) + 1
    for node in graph:
        if not isinstance(node, dict) or "id" not in node or "op" not in node:
            raise EngineError(f"malformed graph node {str(node)[:80]}")
        if node["op"] == "input":
            value = lowering.op_input(node)
            input_shape = list(value.shape)
            lowering.values[node["id"]] = value
            lowering.values.setdefault("input", value)
            continue
        try:
            value = lowering.lower(node)
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as err:
            # A malformed node (wrong field type, parameter of the wrong shape): say which one.
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise EngineError(f"node {node.get('id')!r} ({node.get('op')}) is malformed: {reason}") from None
        if isinstance(value, (Pending, PendingAdd)) and consumers.get(node["id"], 0) > 1:
            raise EngineError(f"node {node['id']!r}: an un-quantized value feeds several nodes")
        lowering.values[node["id"]] = value
    if input_shape is None:
        raise EngineError("graph has no input node")
    last = lowering.values[graph[-1]["id"]]
    if not isinstance(last, Pending) or last.node["op"] != "linear" or last.pools:
        raise EngineError("the graph must end with a linear layer (the logits)")
    lowering.emit_compute(last, "logits")
    header = {"input": {"shape": input_shape, "max": 255, "scale": 1 / 255}, "accumulator_bits": 32,
              "source": source or {}}
    model = IntegerModel(header=header, layers=lowering.layers)
    validate_model(model)
    return model


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray], str]:
    """Read `RUN/checkpoint.npz` (or a checkpoint file): (meta, model params by key, file path)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
    if not os.path.isfile(path):
        raise EngineError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"][()]))
            params = {key[len("model/"):]: np.array(data[key]) for key in data.files
                      if key.startswith("model/")}
    except (OSError, ValueError, KeyError, TypeError, IndexError, OverflowError, UnicodeError,
            MemoryError, RuntimeError, SyntaxError, tokenize.TokenError, EOFError, zlib.error,
            zipfile.BadZipFile, zipfile.LargeZipFile) as err:  # a damaged file, one line
        raise EngineError(f"{path} is not a readable tinypact checkpoint ({str(err)[:200]})") from None
    if not isinstance(meta, dict) or meta.get("format") != "tinypact-checkpoint":
        raise EngineError(f"{path}: not a tinypact checkpoint (meta.format is "
                          f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    return meta, params, path


def export_checkpoint(run_or_checkpoint: str | os.PathLike) -> IntegerModel:
    """Checkpoint -> IntegerModel (not yet saved). Source info goes into the header."""
    meta, params, path = read_checkpoint(run_or_checkpoint)
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    source = {"checkpoint": os.path.abspath(path), "checkpoint_sha256": digest,
              "model": meta.get("model"), "epoch": meta.get("epoch"), "config": meta.get("config")}
    return lower_graph(meta.get("graph"), params, source)
