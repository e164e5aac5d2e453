"""The integer engine: runs a `.tpq` model with integer arithmetic only.

Activations flow as unsigned integer codes in NHWC layout (channels last, so an image patch is
contiguous). A conv is im2col on codes followed by a GEMM against the weight codes j:

    acc[m, o] = sum_k a[m, k] * (2 j[o, k] - n_w) = 2 * (a . j)[m, o] - n_w * rowsum(a)[m]

where `a . j` is computed on bit-planes with AND + popcount (`bitserial`) for narrow layers, or as
an integer GEMM for wide ones (8-bit first/last layers). The accumulator then goes through the
layer's integer thresholds (`requant.apply_thresholds`), the residual fixed-point add, or gets
the integer bias (logits). No float touches the data path. Each layer's MACs and wall time are
counted; `reference.py` is the float64 check.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from integer_engine.errors import EngineError
from integer_engine.format import IntegerModel, Layer
from integer_engine.requant import apply_thresholds, fixed_point_add_apply

# Bit-serial popcount GEMM costs abits * wbits passes; beyond this many it loses to an int GEMM.
BITSERIAL_MAX_PASSES = 9


def im2col_nhwc(x: np.ndarray, kh: int, kw: int, stride: int, padding: int) -> np.ndarray:
    """(N, H, W, C) -> (N*OH*OW, kh*kw*C) patches, zero padded, in (i, j, c) order."""
    if padding:
        x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, h, w, c = x.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    s = x.strides
    view = np.lib.stride_tricks.as_strided(
        x, shape=(n, oh, ow, kh, kw, c), strides=(s[0], s[1] * stride, s[2] * stride, s[1], s[2], s[3]),
        writeable=False)
    return view.reshape(n * oh * ow, kh * kw * c)


def _int_dot_fallback(a: np.ndarray, j: np.ndarray) -> np.ndarray:
    """a . j^T exactly: float64 BLAS on integers (exact: export bounds every sum below 2**31)."""
    return (a.astype(np.float64) @ j.astype(np.float64).T).astype(np.int64)


@dataclass
class LayerStats:
    name: str
    kind: str
    out_shape: tuple
    wbits: int | None
    abits: int | None
    macs: int = 0
    seconds: float = 0.0
    method: str = ""


@dataclass
class EngineResult:
    logits: np.ndarray  # int32 (N, classes)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # NCHW, when collected
    stats: list[LayerStats] = field(default_factory=list)

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.logits, axis=1)


class _Compute:
    """Per-layer state prepared once: weight matrix in patch order, packed planes, thresholds."""

    def __init__(self, layer: Layer):
        a = layer.attrs
        self.layer = layer
        w = layer.arrays["weight"]
        if a["kind"] == "conv":
            w = w.transpose(0, 2, 3, 1)  # (O, kh, kw, C) to match im2col_nhwc's (i, j, c) order
        self.j = np.ascontiguousarray(w.reshape(w.shape[0], -1))
        self.n_w = int(a["n_w"])
        self.abits, self.wbits = int(a["abits"]), int(a["wbits"])
        self.method = "bitserial" if self.abits * self.wbits <= BITSERIAL_MAX_PASSES else "int"
        self.kernels = None
        try:  # the bit-packed kernels live in their own module; without them use the exact fallback
            from integer_engine import kernels  # noqa: WPS433
            self.kernels = kernels
        except ImportError:
            self.method = "int-fallback"
        if self.method == "bitserial":
            from integer_engine import bitpack
            self.w_planes = bitpack.bit_planes(self.j, self.wbits)

    def dot(self, cols: np.ndarray) -> np.ndarray:
        """(M, K) codes -> (M, O) int64 `cols . j^T`."""
        if self.method == "bitserial":
            from integer_engine import bitpack
            return np.asarray(self.kernels.bitserial_gemm(bitpack.bit_planes(cols, self.abits),
                                                          self.w_planes), dtype=np.int64)
        if self.method == "int":
            return np.asarray(self.kernels.int_gemm(cols, self.j), dtype=np.int64)
        return _int_dot_fallback(cols, self.j)

    def accumulate(self, cols: np.ndarray) -> np.ndarray:
        rowsum = cols.sum(axis=1, dtype=np.int64)
        return 2 * self.dot(cols) - self.n_w * rowsum[:, None]


class Engine:
    """Integer inference for one loaded model. `run(images)` -> EngineResult."""

    def __init__(self, model: IntegerModel):
        self.model = model
        self.compute = {layer.name: _Compute(layer) for layer in model.layers if layer.is_compute}

    def run(self, images: np.ndarray, collect: bool = False) -> EngineResult:
        images = np.asarray(images)
        shape = tuple(self.model.input_shape)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
            raise EngineError(f"engine input must be uint8 images of shape (N, {', '.join(map(str, shape))}), "
                              f"got {images.dtype} {images.shape}")
        values = {"input": np.ascontiguousarray(images.transpose(0, 2, 3, 1))}
        result = EngineResult(logits=np.zeros((0, 0), np.int32))
        for layer in self.model.layers:
            a = layer.attrs
            stats = LayerStats(layer.name, a["kind"], tuple(a["out_shape"]), a.get("wbits"), a.get("abits"))
            start = time.perf_counter()
            out = self._layer(layer, [values[i] for i in a["inputs"]], stats)
            stats.seconds = time.perf_counter() - start
            values[layer.name] = out
            result.stats.append(stats)
            if collect:
                result.outputs[layer.name] = out.transpose(0, 3, 1, 2) if out.ndim == 4 else out
        result.logits = values[self.model.layers[-1].name].astype(np.int32)
        return result

    def _layer(self, layer: Layer, inputs: list[np.ndarray], stats: LayerStats) -> np.ndarray:
        a = layer.attrs
        kind = a["kind"]
        x = inputs[0]
        if kind in ("conv", "linear"):
            comp = self.compute[layer.name]
            if kind == "conv":
                kh, kw = a["kernel"]
                cols = im2col_nhwc(x, kh, kw, a["stride"], a["padding"])
                out_shape = (x.shape[0], a["out_shape"][1], a["out_shape"][2], a["out_channels"])
            else:
                cols, out_shape = x, (x.shape[0], a["out_channels"])
            acc = comp.accumulate(cols)
            stats.macs = cols.shape[0] * cols.shape[1] * comp.j.shape[0]
            stats.method = comp.method
            if a["output"] == "threshold":
                out = apply_thresholds(acc, layer.arrays["thresholds"], layer.arrays["direction"], 1)
            elif a["output"] == "logits":
                out = (acc + layer.arrays["bias"][None, :]).astype(np.int32)
            else:
                out = acc.astype(np.int32)
            return out.reshape(out_shape)
        if kind == "requant":
            flat = x.reshape(-1, 1)
            return apply_thresholds(flat, layer.arrays["thresholds"], layer.arrays["direction"], 1).reshape(x.shape)
        if kind == "maxpool":
            # Codes are >= 0 and every window holds a real pixel, so zero padding acts as -inf.
            k, s, p = a["kernel"], a["stride"], a["padding"]
            return _pool_nhwc(x, k, s, p, np.max)
        if kind == "avgpool":
            if a["kernel"] == "global":
                return x.sum(axis=(1, 2), keepdims=True, dtype=np.int32)
            return _pool_nhwc(x.astype(np.int32), a["kernel"], a["stride"], 0, np.sum)
        if kind == "flatten":
            if x.ndim == 4:
                x = x.transpose(0, 3, 1, 2)  # C-major, as the float model's reshape
            return np.ascontiguousarray(x).reshape(x.shape[0], -1)
        if kind == "shortcut":
            s = a["stride"]
            if a["mode"] == "avgpool":
                y = _pool_nhwc(x.astype(np.int32), s, s, 0, np.sum)
            else:
                y = x[:, ::s, ::s, :]
            return np.pad(y, ((0, 0), (0, 0), (0, 0), (a["pad_before"], a["pad_after"])))
        if kind == "add":
            return fixed_point_add_apply(inputs, layer.arrays["multipliers"], layer.arrays["offset"],
                                         a["shift"], a["out_max"], channel_axis=-1)
        raise EngineError(f"layer {layer.name!r}: unknown kind {kind!r}")


def _pool_nhwc(x: np.ndarray, k: int, s: int, p: int, reduce) -> np.ndarray:
    if p:
        x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    n, h, w, c = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    st = x.strides
    view = np.lib.stride_tricks.as_strided(
        x, shape=(n, oh, ow, k, k, c), strides=(st[0], st[1] * s, st[2] * s, st[1], st[2], st[3]),
        writeable=False)
    return reduce(view, axis=(3, 4))


def run_model(model: IntegerModel, images: np.ndarray, batch_size: int = 256, collect: bool = False
              ) -> EngineResult:
    """Run `images` through the engine in batches; concatenate logits (and outputs if collected)."""
    engine = Engine(model)
    results = [engine.run(images[i:i + batch_size], collect) for i in range(0, len(images), batch_size)]
    if not results:
        raise EngineError("no images to run")
    merged = EngineResult(logits=np.concatenate([r.logits for r in results]))
    if collect:
        merged.outputs = {k: np.concatenate([r.outputs[k] for r in results]) for k in results[0].outputs}
    merged.stats = results[0].stats
    for r in results[1:]:
        for total, part in zip(merged.stats, r.stats):
            total.macs += part.macs
            total.seconds += part.seconds
    return merged
