"""The integer engine: runs a `.tpq` model with integer arithmetic only.

Activations flow as unsigned integer codes in NCHW layout. A conv is im2col on codes followed by
a GEMM against the weight codes j (levels c = 2j - n_w):

    acc[m, o] = sum_k a[m, k] * (2 j[o, k] - n_w) = 2 * (a . j)[m, o] - n_w * rowsum(a)[m]

Narrow layers (abits * wbits <= BITSERIAL_MAX_PASSES) pack the patches straight into bit-planes
(`kernels.conv_bit_planes`) and compute `a . j` with AND + popcount (`kernels.affine_weight_gemm`);
wide ones (the 8-bit first and last layers) use the exact integer GEMM `kernels.int_gemm` on the
signed levels. The int64 accumulator then goes through the layer's integer thresholds
(`requant.apply_thresholds`), the residual fixed-point add, or gets the integer bias (logits).
No float touches the data path. Each layer's MACs (as performed: rows x depth x columns of its
GEMM) and wall time are counted; `reference.py` is the float64 check.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numba
import numpy as np

from integer_engine import bitpack, kernels
from integer_engine.errors import EngineError
from integer_engine.format import IntegerModel, Layer
from integer_engine.requant import apply_thresholds, fixed_point_add_apply

# Bit-serial popcount GEMM costs abits * wbits AND+POPCNT passes per 64 MACs; beyond about this
# many it loses to the BLAS-backed integer GEMM.
BITSERIAL_MAX_PASSES = 9
# GEMMs smaller than this (rows x weights) run single-threaded.
SMALL_GEMM_MACS = 1 << 20


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
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # every layer's output, when collected
    stats: list[LayerStats] = field(default_factory=list)

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.logits, axis=1)


class _Compute:
    """Per-layer state prepared once: weight matrix (OIHW order), its bit-planes or signed levels."""

    def __init__(self, layer: Layer):
        a = layer.attrs
        self.layer = layer
        w = layer.arrays["weight"]
        self.j = np.ascontiguousarray(w.reshape(w.shape[0], -1))
        self.n_w = int(a["n_w"])
        self.abits, self.wbits = int(a["abits"]), int(a["wbits"])
        narrow = self.abits <= bitpack.MAX_BITS and self.abits * self.wbits <= BITSERIAL_MAX_PASSES
        self.method = "bitserial" if narrow else "int"
        if narrow:
            self.w_planes = bitpack.bit_planes(self.j, self.wbits)
        else:
            self.levels = (2 * self.j.astype(np.int16) - self.n_w).astype(np.int16)

    def accumulate(self, x: np.ndarray) -> np.ndarray:
        """Codes (N, C, H, W) or (N, F) -> int64 accumulators (M, O), M = N*OH*OW or N."""
        a = self.layer.attrs
        conv = a["kind"] == "conv"
        if self.method == "bitserial":
            codes = x if x.dtype == np.uint8 else x.astype(np.uint8)
            rows = x.shape[0] * (int(np.prod(a["out_shape"][1:])) if conv else 1)
            # Waking the thread pool costs more than a small GEMM (and far more on a busy machine).
            threads = 1 if rows * self.j.size < SMALL_GEMM_MACS else numba.config.NUMBA_NUM_THREADS
            previous = numba.get_num_threads()
            numba.set_num_threads(threads)
            try:
                if conv:
                    planes = kernels.conv_bit_planes(codes, *a["kernel"], a["stride"], a["padding"], self.abits)
                else:
                    planes = bitpack.bit_planes(codes, self.abits)
                return kernels.affine_weight_gemm(planes, self.w_planes, 2, self.n_w)
            finally:
                numba.set_num_threads(previous)
        cols = kernels.im2col_codes(x, *a["kernel"], a["stride"], a["padding"]) if conv else x
        return kernels.int_gemm(cols, self.levels)


class Engine:
    """Integer inference for one loaded model. `run(images)` -> EngineResult."""

    def __init__(self, model: IntegerModel):
        self.model = model
        self.compute = {layer.name: _Compute(layer) for layer in model.layers if layer.is_compute}

    def run(self, images: np.ndarray, collect: bool = False) -> EngineResult:
        """uint8 images (N, C, H, W) -> int32 logits; `collect` keeps every layer's output."""
        images = np.asarray(images)
        shape = tuple(self.model.input_shape)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
            raise EngineError(f"engine input must be uint8 images of shape (N, {', '.join(map(str, shape))}), "
                              f"got {images.dtype} {images.shape}")
        values = {"input": np.ascontiguousarray(images)}
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
                result.outputs[layer.name] = out
        result.logits = values[self.model.layers[-1].name].astype(np.int32)
        return result

    def _layer(self, layer: Layer, inputs: list[np.ndarray], stats: LayerStats) -> np.ndarray:
        a = layer.attrs
        kind = a["kind"]
        x = inputs[0]
        if kind in ("conv", "linear"):
            comp = self.compute[layer.name]
            acc = comp.accumulate(x)
            fan_in = comp.j.shape[1]
            stats.macs = acc.shape[0] * fan_in * acc.shape[1]
            stats.method = comp.method
            if a["output"] == "threshold":
                out = apply_thresholds(acc, layer.arrays["thresholds"], layer.arrays["direction"], 1)
            elif a["output"] == "logits":
                out = (acc + layer.arrays["bias"][None, :]).astype(np.int32)
            else:
                out = acc.astype(np.int32)
            if kind == "conv":  # GEMM rows are (n, oh, ow): back to NCHW
                _, oh, ow = a["out_shape"]
                out = np.ascontiguousarray(out.reshape(x.shape[0], oh, ow, -1).transpose(0, 3, 1, 2))
            return out
        if kind == "requant":
            return apply_thresholds(x.reshape(-1, 1), layer.arrays["thresholds"],
                                    layer.arrays["direction"], 1).reshape(x.shape)
        if kind == "maxpool":
            return kernels.max_pool_codes(x, a["kernel"], a["stride"], a["padding"])
        if kind == "avgpool":  # a window sum; the 1/area is folded into the next layer's scale
            if a["kernel"] == "global":
                return x.sum(axis=(2, 3), keepdims=True, dtype=np.int32)
            return _window_sum(x, a["kernel"], a["stride"])
        if kind == "flatten":
            return x.reshape(x.shape[0], -1)
        if kind == "shortcut":
            s = a["stride"]
            y = _window_sum(x, s, s) if a["mode"] == "avgpool" else x[:, :, ::s, ::s]
            return np.pad(y, ((0, 0), (a["pad_before"], a["pad_after"]), (0, 0), (0, 0)))
        if kind == "add":
            return fixed_point_add_apply(inputs, layer.arrays["multipliers"], layer.arrays["offset"],
                                         a["shift"], a["out_max"], channel_axis=1)
        raise EngineError(f"layer {layer.name!r}: unknown kind {kind!r}")


def _window_sum(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """Sum of each k x k window (stride s, no padding) of NCHW integers, as int32."""
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return windows.sum(axis=(4, 5), dtype=np.int32)


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
