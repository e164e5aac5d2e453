"""The float64 reference executor: plain NumPy, no bit packing, no popcounts, no thresholds.

It reads the same `.tpq` file as the engine and computes every layer the obvious way:
  - conv/linear: dequantize the weights to their integer levels c = 2j - n_w and convolve them
    with the input codes, all as float64 (integer sums stay exact below 2**53, export bounds them
    by 2**31), then apply the folded requantization `clip(floor(acc*mul + add + 1/2), 0, n)`
    with the layer's float64 mul/add (docs/model-format.md), or `acc + bias` for the logits;
  - max-pool on codes, average pool as a window sum, shortcut subsample + zero channels;
  - residual add: the documented fixed-point formula `clip(floor((x0*M0 + x1*M1 + K) / 2**S), 0, n)`.
"Bit-exact" means the engine's output of every layer equals this one's, for every input.
"""
from __future__ import annotations

import numpy as np

from integer_engine.format import IntegerModel, Layer


def _pad(x: np.ndarray, p: int, value: float = 0.0) -> np.ndarray:
    if p == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=value)


def _windows(x: np.ndarray, kh: int, kw: int, stride: int, oh: int, ow: int):
    """Yield (i, j, x[:, :, i::stride, j::stride] cropped to (oh, ow)) for each kernel offset."""
    for i in range(kh):
        for j in range(kw):
            yield i, j, x[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]


def reference_layer(layer: Layer, inputs: list[np.ndarray]) -> np.ndarray:
    """One layer on float64 arrays holding integers; returns float64 (codes or accumulators)."""
    a = layer.attrs
    kind = a["kind"]
    x = inputs[0]
    if kind in ("conv", "linear"):
        levels = 2.0 * layer.arrays["weight"].astype(np.float64) - a["n_w"]
        if kind == "conv":
            _, oh, ow = a["out_shape"]
            xp = _pad(x, a["padding"])
            acc = np.zeros((x.shape[0], a["out_channels"], oh, ow))
            for i, j, patch in _windows(xp, *a["kernel"], a["stride"], oh, ow):
                acc += np.einsum("nchw,oc->nohw", patch, levels[:, :, i, j], optimize=True)
            channel = (slice(None), None, None)
        else:
            acc = x @ levels.T
            channel = (slice(None),)
        output = a["output"]
        if output == "threshold":
            v = acc * layer.arrays["mul"][channel]
            v = v + layer.arrays["add"][channel]
            return np.clip(np.floor(v + 0.5), 0, a["out_max"])
        if output == "logits":
            return acc + layer.arrays["bias"].astype(np.float64)
        return acc
    if kind == "requant":
        v = x * layer.arrays["mul"][0]
        v = v + layer.arrays["add"][0]
        return np.clip(np.floor(v + 0.5), 0, a["out_max"])
    if kind == "maxpool":
        _, oh, ow = a["out_shape"]
        k = a["kernel"]
        xp = _pad(x, a["padding"], -np.inf)
        out = np.full((x.shape[0], x.shape[1], oh, ow), -np.inf)
        for _, _, patch in _windows(xp, k, k, a["stride"], oh, ow):
            out = np.maximum(out, patch)
        return out
    if kind == "avgpool":
        if a["kernel"] == "global":
            return x.sum(axis=(2, 3), keepdims=True)
        _, oh, ow = a["out_shape"]
        out = np.zeros((x.shape[0], x.shape[1], oh, ow))
        for _, _, patch in _windows(x, a["kernel"], a["kernel"], a["stride"], oh, ow):
            out = out + patch
        return out
    if kind == "flatten":
        return x.reshape(x.shape[0], -1)
    if kind == "shortcut":
        s = a["stride"]
        if a["mode"] == "avgpool":
            _, oh, ow = a["out_shape"]
            y = np.zeros((x.shape[0], x.shape[1], oh, ow))
            for _, _, patch in _windows(x, s, s, s, oh, ow):
                y = y + patch
        else:
            y = x[:, :, ::s, ::s]
        return np.pad(y, ((0, 0), (a["pad_before"], a["pad_after"]), (0, 0), (0, 0)))
    if kind == "add":
        # The documented fixed-point formula, in exact 64-bit integer arithmetic.
        m, k = layer.arrays["multipliers"], layer.arrays["offset"]
        ch = (slice(None), None, None) if x.ndim == 4 else (slice(None),)
        total = k[ch] + inputs[0].astype(np.int64) * m[0][ch] + inputs[1].astype(np.int64) * m[1][ch]
        return np.clip(total // (1 << a["shift"]), 0, a["out_max"]).astype(np.float64)
    raise ValueError(f"unknown layer kind {kind!r}")


def run_reference(model: IntegerModel, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output (int64 arrays) for uint8 `images` (N, C, H, W)."""
    values = {"input": np.asarray(images, dtype=np.float64)}
    for layer in model.layers:
        values[layer.name] = reference_layer(layer, [values[i] for i in layer.attrs["inputs"]])
    return {name: value.astype(np.int64) for name, value in values.items() if name != "input"}
