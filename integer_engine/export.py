"""Export: a tinypact checkpoint (arrays + JSON graph) -> an integer model (docs/model-format.md).

The checkpoint's `graph` (ARCHITECTURE.md) is lowered node by node. A conv/linear output stays
*pending* as a float64 per-channel affine of its integer accumulator, `value = acc*mul + add`,
while bias, batch norm and max-pools are absorbed; the activation that follows turns it into
integer thresholds (`requant.thresholds`). Max-pooling between BN and the activation moves after
the requantization: the requantizer is non-decreasing in the value, so max(q(v)) = q(max(v)).
Weights are re-quantized here exactly as the training quantizers do, in float64 from the float32
checkpoint. Nothing here imports tinypact: the checkpoint file is the contract.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from integer_engine.errors import EngineError
from integer_engine.format import ACC_MAX, IntegerModel, Layer, validate_model
from integer_engine.requant import fixed_point_add, round_half_up_int, thresholds

# SAWB (c1, c2): alpha_w = c1*sqrt(mean(w^2)) - c2*mean(|w|). The same tables as tinypact's
# quant/functional.py (1 bit: (0, -1) gives alpha_w = mean|w|); duplicated because the checkpoint
# file, not tinypact's code, is the contract.
SAWB_COEFFS = {1: (0.0, -1.0), 2: (3.12, 2.064), 3: (7.509, 6.892), 4: (12.68, 12.80),
               5: (17.74, 18.64), 8: (31.76, 35.04)}
SAWB0_COEFFS = {2: (2.6, 1.71), 4: (12.035, 12.03), 8: (31.76, 35.04)}


@dataclass
class QuantWeight:
    """Weight codes j in [0, n] (uint8) meaning integer levels c = 2j - n, real value c * scale.

    n = 2**bits - 1 (odd levels, DoReFa and SAWB) or 2**bits - 2 (zero-aligned SAWB, even levels).
    """

    codes: np.ndarray
    bits: int
    n: int
    scale: float
    kind: str


def round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5)


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
    """A materialised integer tensor of the integer model: value = code * scale, 0 <= code <= max."""

    name: str
    shape: tuple[int, ...]
    max: int
    scale: float


@dataclass
class Pending:
    """A conv/linear output not yet requantized: real value = acc * mul[c] + add[c]."""

    node: dict
    source: Codes
    weight: QuantWeight
    mul: np.ndarray
    add: np.ndarray
    conv_shape: tuple[int, ...]
    pools: list[dict] = field(default_factory=list)
    shape: tuple[int, ...] = ()


@dataclass
class PendingAdd:
    """A residual sum not yet requantized: value = sum_i x_i * scale_i[c] + offset[c]."""

    node: dict
    terms: list[tuple[Codes, np.ndarray, int]]  # (integer tensor, per-channel scale, max |x|)
    offset: np.ndarray
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
        return Codes("input", tuple(int(s) for s in shape), 255, 1.0 / 255)

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
        add = self.param(bias, where).reshape(out_c) if bias is not None else np.zeros(out_c)
        mul = np.full(out_c, src.scale * q.scale)
        return Pending(node, src, q, mul, add.copy(), shape, [], shape)

    def op_conv(self, node: dict) -> Pending:
        return self._weight_layer(node, "conv")

    def op_linear(self, node: dict) -> Pending:
        return self._weight_layer(node, "linear")

    def op_bn(self, node: dict) -> Pending:
        src = self.input_value(node)
        if not isinstance(src, Pending) or src.pools:
            raise EngineError(f"node {node['id']!r}: batch norm must directly follow a conv/linear")
        prefix = node.get("prefix")
        gamma = self.param(f"{prefix}.weight", node["id"])
        beta = self.param(f"{prefix}.bias", node["id"])
        mean = self.param(f"{prefix}.running_mean", node["id"])
        var = self.param(f"{prefix}.running_var", node["id"])
        eps = float(node.get("eps", 1e-5))
        if np.any(var + eps <= 0):
            raise EngineError(f"node {node['id']!r}: batch-norm variance + eps must be positive")
        g = gamma / np.sqrt(var + eps)
        return Pending(src.node, src.source, src.weight, src.mul * g, (src.add - mean) * g + beta,
                       src.conv_shape, [], src.shape)

    def op_maxpool(self, node: dict) -> Any:
        src = self.input_value(node)
        k, s, p = int(node.get("kernel", 2)), int(node.get("stride", node.get("kernel", 2))), int(node.get("padding", 0))
        if isinstance(src, Pending):
            c, h, w = src.shape
            shape = (c, _out_size(h, k, s, p), _out_size(w, k, s, p))
            return Pending(src.node, src.source, src.weight, src.mul, src.add, src.conv_shape,
                           src.pools + [node], shape)
        src = self.codes_input(node)
        return self.emit_pool(node, src)

    def emit_pool(self, node: dict, src: Codes) -> Codes:
        k, s, p = int(node.get("kernel", 2)), int(node.get("stride", node.get("kernel", 2))), int(node.get("padding", 0))
        c, h, w = src.shape
        shape = (c, _out_size(h, k, s, p), _out_size(w, k, s, p))
        name = self.unique(node["id"])
        self.layers.append(Layer({"name": name, "kind": "maxpool", "inputs": [src.name],
                                  "in_shape": list(src.shape), "out_shape": list(shape), "kernel": k,
                                  "stride": s, "padding": p, "out_max": src.max, "out_scale": src.scale}))
        return Codes(name, shape, src.max, src.scale)

    def act_params(self, node: dict) -> tuple[int, float]:
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
        return 2**bits - 1, alpha

    def emit_compute(self, pending: Pending, output: str, name: str | None = None,
                     n: int = 0, alpha: float = 1.0, extra: dict | None = None) -> Layer:
        node, src, q = pending.node, pending.source, pending.weight
        kind = node["op"]
        out_c = q.codes.shape[0]
        fan_in = int(np.prod(q.codes.shape[1:]))
        acc_hi = fan_in * src.max * q.n
        if acc_hi > ACC_MAX:
            raise EngineError(f"layer {node['id']!r}: worst-case accumulator {fan_in} x {src.max} x {q.n} "
                              f"= {acc_hi} overflows int32; lower first_last_bits or the input range")
        attrs = {"name": self.unique(name or node["id"]), "kind": kind, "inputs": [src.name],
                 "in_shape": list(src.shape), "out_shape": list(pending.conv_shape),
                 "kernel": [int(q.codes.shape[2]), int(q.codes.shape[3])] if kind == "conv" else [1, 1],
                 "stride": int(node.get("stride", 1)) if kind == "conv" else 1,
                 "padding": int(node.get("padding", 0)) if kind == "conv" else 0,
                 "out_channels": out_c, "wbits": q.bits, "n_w": q.n, "weight_quant": q.kind,
                 "w_scale": q.scale, "abits": max(1, int(src.max).bit_length()), "in_max": src.max,
                 "in_scale": src.scale, "macs": int(np.prod(pending.conv_shape)) * fan_in,
                 "acc_bound": acc_hi, "output": output, "source_node": node["id"]}
        arrays: dict[str, np.ndarray] = {"weight": q.codes}
        if output == "threshold":
            mul, add = pending.mul * n / alpha, pending.add * n / alpha
            th, direction = thresholds(mul, add, n, -acc_hi, acc_hi)
            arrays.update(thresholds=th, direction=direction, mul=mul, add=add)
            attrs.update(out_max=n, out_scale=alpha / n)
        elif output == "logits":
            if np.ptp(pending.mul) != 0 or not pending.mul[0] > 0:
                raise EngineError(f"layer {node['id']!r}: the final layer needs one positive scale for "
                                  f"all outputs (no batch norm after it) so integer logits keep the argmax")
            bias = round_half_up_int(pending.add / pending.mul[0])
            if acc_hi + int(np.abs(bias).max(initial=0)) > ACC_MAX:
                raise EngineError(f"layer {node['id']!r}: logits could overflow int32 (bias too large)")
            arrays["bias"] = bias
            attrs.update(out_max=acc_hi + int(np.abs(bias).max(initial=0)), out_scale=float(pending.mul[0]))
        else:
            attrs.update(out_max=acc_hi, out_scale=1.0)
        attrs.update(extra or {})
        layer = Layer(attrs, arrays)
        self.layers.append(layer)
        return layer

    def op_act(self, node: dict) -> Codes:
        n, alpha = self.act_params(node)
        src = self.input_value(node)
        if isinstance(src, Pending):
            layer = self.emit_compute(src, "threshold", n=n, alpha=alpha)
            out = Codes(layer.name, tuple(src.conv_shape), n, alpha / n)
            for pool in src.pools:
                out = self.emit_pool(pool, out)
            return out
        if isinstance(src, PendingAdd):
            return self.emit_add(node, src, n, alpha)
        src = self.codes_input(node)
        mul, add = np.array([src.scale * n / alpha]), np.zeros(1)
        th, direction = thresholds(mul, add, n, 0, src.max)
        name = self.unique(node["id"])
        self.layers.append(Layer(
            {"name": name, "kind": "requant", "inputs": [src.name], "in_shape": list(src.shape),
             "out_shape": list(src.shape), "in_max": src.max, "out_max": n, "out_scale": alpha / n},
            {"thresholds": th, "direction": direction, "mul": mul, "add": add}))
        return Codes(name, src.shape, n, alpha / n)

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
        self.layers.append(Layer({"name": name, "kind": "avgpool", "inputs": [src.name],
                                  "in_shape": list(src.shape), "out_shape": list(shape), "kernel": k,
                                  "stride": s, "padding": 0, "out_max": src.max * area,
                                  "out_scale": src.scale / area}))
        return Codes(name, shape, src.max * area, src.scale / area)

    def op_flatten(self, node: dict) -> Codes:
        src = self.codes_input(node)
        name = self.unique(node["id"])
        shape = (int(np.prod(src.shape)),)
        self.layers.append(Layer({"name": name, "kind": "flatten", "inputs": [src.name],
                                  "in_shape": list(src.shape), "out_shape": list(shape),
                                  "out_max": src.max, "out_scale": src.scale}))
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
        self.layers.append(Layer({"name": name, "kind": "shortcut", "inputs": [src.name],
                                  "in_shape": list(src.shape), "out_shape": list(shape), "stride": stride,
                                  "mode": mode, "pad_before": before, "pad_after": after,
                                  "out_max": src.max * area, "out_scale": src.scale / area}))
        return Codes(name, shape, src.max * area, src.scale / area)

    def op_add(self, node: dict) -> PendingAdd:
        terms, offset, shape = [], 0.0, None
        for i in range(2):
            value = self.input_value(node, i)
            if isinstance(value, Pending):
                if value.pools:
                    raise EngineError(f"node {node['id']!r}: max-pool before a residual add is not supported")
                layer = self.emit_compute(value, "accumulator")
                codes = Codes(layer.name, tuple(value.conv_shape), layer.attrs["acc_bound"], 1.0)
                terms.append((codes, value.mul, layer.attrs["acc_bound"]))
                offset = offset + value.add
            elif isinstance(value, Codes):
                terms.append((value, np.full(value.shape[0], value.scale), value.max))
            else:
                raise EngineError(f"node {node['id']!r}: unsupported input to a residual add")
            if shape is not None and shape != terms[-1][0].shape:
                raise EngineError(f"node {node['id']!r}: add inputs differ in shape "
                                  f"{shape} vs {terms[-1][0].shape}")
            shape = terms[-1][0].shape
        offset = np.broadcast_to(np.asarray(offset, dtype=np.float64), (shape[0],)).copy()
        return PendingAdd(node, terms, offset, shape)

    def emit_add(self, act: dict, pending: PendingAdd, n: int, alpha: float) -> Codes:
        factor = n / alpha
        m_int, k_int, shift = fixed_point_add([t[1] * factor for t in pending.terms],
                                              pending.offset * factor, [t[2] for t in pending.terms])
        name = self.unique(pending.node["id"])
        self.layers.append(Layer(
            {"name": name, "kind": "add", "inputs": [t[0].name for t in pending.terms],
             "in_shape": list(pending.shape), "out_shape": list(pending.shape), "shift": shift,
             "input_bounds": [int(t[2]) for t in pending.terms], "out_max": n, "out_scale": alpha / n,
             "source_node": act["id"]},
            {"multipliers": m_int, "offset": k_int}))
        return Codes(name, pending.shape, n, alpha / n)


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
              "rounding": "half_up", "source": source or {}}
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
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
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
