"""The reference executor: plain NumPy, no bit packing, no popcounts, no thresholds.

It reads the same `.tpq` file as the engine and computes every layer the obvious way:
  - conv/linear: the weights' integer levels c = 2j - n_w convolved with the input codes, all as
    float64 (integer sums stay exact below 2**53, export bounds them by 2**31), then the layer's
    float epilogue evaluated directly (`epilogue.py`: the float32 affine, the activation, the
    rounding) where the engine uses integer thresholds; the float32 affine for the logits; an
    imported layer (`epilogue: "source"`, whose arithmetic is its source model's) applies its
    integer thresholds to the accumulator (so the check there is of the kernels alone);
  - max-pool on codes, average pool as a window sum, shortcut subsample + zero channels;
  - residual add: the float32 epilogue, as the engine.
It checks the engine's kernels and thresholds on any `.tpq` file, including imported ones that
have no tinypact model behind them; `verify --checkpoint` compares with the trained model itself.
"""
from __future__ import annotations

import numpy as np

from integer_engine.epilogue import activation_code, affine
from integer_engine.format import IntegerModel, Layer
from integer_engine.requant import apply_thresholds


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
        if output == "accumulator":
            return acc
        if a.get("epilogue") == "source":  # imported: thresholds are the whole definition
            return apply_thresholds(acc, layer.arrays["thresholds"], layer.arrays["direction"])
        arr = layer.arrays
        z = affine(acc, arr["scale"][0], arr["bias"], arr["bn_scale"], arr["bn_shift"])
        if output == "logits":
            return z
        return activation_code(z, arr["alpha"][0], a["out_max"], a.get("rounding", "half_up"))
    if kind == "requant" and a.get("epilogue") == "source":
        return apply_thresholds(x, layer.arrays["thresholds"], layer.arrays["direction"])
    if kind == "requant":
        z = x.astype(np.float32) * layer.arrays["scale"][0]
        return activation_code(z, layer.arrays["alpha"][0], a["out_max"], a.get("rounding", "half_up"))
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
        arr = layer.arrays
        terms = [affine(x_i, arr["scale"][i], arr["bias"][i], arr["bn_scale"][i], arr["bn_shift"][i])
                 for i, x_i in enumerate(inputs)]
        z = terms[0] + terms[1]  # affine_0(x_0) + affine_1(x_1), in input order, float32
        if a.get("epilogue") == "source":  # imported: the count of float32 thresholds reached
            return np.sum(z[..., None] >= arr["float_thresholds"], axis=-1)
        return activation_code(z, arr["alpha"][0], a["out_max"], a.get("rounding", "half_up"))
    raise ValueError(f"unknown layer kind {kind!r}")


def run_reference(model: IntegerModel, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output for uint8 `images` (N, C, H, W): int64 codes and accumulators,
    float32 logits."""
    values = {"input": np.asarray(images, dtype=np.float64)}
    outputs = {}
    for layer in model.layers:
        values[layer.name] = reference_layer(layer, [values[i] for i in layer.attrs["inputs"]])
        logits = layer.attrs.get("output") == "logits"
        outputs[layer.name] = values[layer.name] if logits else values[layer.name].astype(np.int64)
    return outputs
