"""The integer engine: runs a `.tpq` model with integer arithmetic only.

Activations flow as unsigned integer codes (NCHW, or the next conv's layout: below). A conv is im2col on codes followed by
a GEMM against the weight codes j (levels c = 2j - n_w):

    acc[m, o] = sum_k a[m, k] * (2 j[o, k] - n_w) = 2 * (a . j)[m, o] - n_w * rowsum(a)[m]

Which kernels run depends on the CPU (`cpu.py`, detected once):

- Narrow layers (abits * wbits <= BITSERIAL_MAX_PASSES) are bit-serial: patches packed straight
  into bit-planes, `j . a` by AND + popcount. With vector popcounts (AVX-512 VPOPCNTDQ, or AVX2:
  `kernels.select`) the activations are the GEMM's rows, the weights transposed once, convs packed
  channel-major (`kernels.conv_channel_planes`), and a threshold layer is one fused kernel
  (popcount tile, `- n_w * rowsum(a)`, thresholds: `kernels.bitserial_threshold_codes`).
  Elsewhere the scalar-POPCNT kernel runs with the weights as rows (`kernels.bitserial_gemm`,
  result channel-major) and `requant.threshold_codes` after it.
- Wide layers (the 8-bit first and last layers, and those past the bit-serial crossover) run the
  int8 dot product (`int8dot`: VNNI `vpdpbusd`, or AVX2 `vpmaddubsw` + `vpmaddwd` kept exact by
  splitting the codes where int16 pair sums could saturate): u8 codes x s8 weights (c, or j - 128
  for 8-bit weights) -> int32, fused with im2col and the thresholds for convs
  (`kernels.int8_conv_threshold_codes`). Where AVX2's sequence would need its split form (8-bit
  codes x 8-bit weights, no VNNI) a threshold conv runs the same fused kernel on an exact float32
  FMA tile instead, codes x levels c (`kernels.select.float32_conv`: method "float32", when every
  partial sum stays within acc_bound <= 2**24). Without either they multiply the codes by the levels c
  with BLAS in float32 (or float64): every partial sum is an integer bounded by the layer's static
  `acc_bound` (<= 2**24 for float32; always <= 2**31 for float64), so the float GEMM is exact, as
  `kernels.int_gemm` argues.
- The crossover is BITSERIAL_MAX_PASSES (set per CPU family in `kernels.select`), or measured per layer on the
  CPU at hand with `Engine(model, calibrate=N)`.

Requantization between layers is integer-only: the accumulator goes through the layer's
thresholds, found at export from the layer's float epilogue. Fused conv kernels write their codes
in the layout the next conv reads (`kernels.LaidOut`: padded NHWC bytes for int8, channel-packed
bit-planes for bit-serial) and do a following 2x2 max-pool themselves (`Engine._plan`); other
layers see NCHW codes. Two places evaluate the float32 epilogue itself (`epilogue.py`),
elementwise: a residual add, whose two integer inputs admit no thresholds on one integer, and the
logits. Max-pool works on codes, average pooling sums them. Each layer's MACs (as performed: rows
x depth x columns of its GEMM) and wall time are counted; `reference.py` is the plain NumPy check.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from integer_engine import bitpack, kernels
from integer_engine.epilogue import activation_code, affine
from integer_engine.errors import EngineError
from integer_engine.format import IntegerModel, Layer
from integer_engine.kernels.int8dot import INT32_SAFE_K
from integer_engine.kernels.select import BITSERIAL_MAX_PASSES, CALIBRATE_MAX_PASSES, INT8_DOT, float32_conv
from integer_engine.requant import apply_thresholds, block_thresholds, full_accumulator, threshold_codes


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
    logits: np.ndarray  # float32 (N, classes): the trained model's logits, bit for bit
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # every layer's output, when collected
    stats: list[LayerStats] = field(default_factory=list)
    batch_seconds: list[float] = field(default_factory=list)  # wall time of each batch (`run_model`)

    def latency(self) -> tuple[float, float]:
        """(p50, p99) seconds per batch over `batch_seconds` (per image at batch size 1)."""
        if not self.batch_seconds:
            raise EngineError("no batch times recorded: latency needs a result of run_model")
        p50, p99 = np.percentile(self.batch_seconds, [50, 99])
        return float(p50), float(p99)

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.logits, axis=1)


@dataclass
class _Step:
    """One step of an engine's compiled plan (`Engine.plan`): `call(*values of inputs)` computes
    `layer` and its value is stored under `store` (a conv's fused max-pool's name, when the conv
    pools); `call` None: the layer was computed by an earlier step (method "in <conv>")."""
    layer: Layer
    inputs: list
    call: Callable | None
    store: str
    macs: int
    method: str
    unpooled: Callable | None = None  # collect mode: a pooling conv's own codes, from its input


# Batch sizes whose plans (and buffers) an engine keeps: a run over a data set uses one or two
# (the last batch may be smaller).
PLANS_KEPT = 4


def _conv_step(call: Callable, nchw: bool, shape: tuple, laid: bool) -> Callable:
    """A fused conv's step: its input as the prepared call takes it (contiguous uint8, unless
    its producer laid it out), its NCHW codes as (N, O, H, W)."""
    def step(x):
        if not laid and (x.dtype != np.uint8 or not x.flags.c_contiguous):
            x = np.ascontiguousarray(x, dtype=np.uint8)  # codes <= in_max <= 255 (the layer's checks)
        out = call(x)
        return out.reshape(shape) if nchw else out

    return step


def _logits_step(layer: Layer, accumulate: Callable) -> Callable:
    """An int8 linear layer's logits step: its accumulator (`_Compute.linear_call`), then the
    float32 epilogue (`epilogue_affine`)."""
    return lambda x: epilogue_affine(layer, accumulate(x))


class _Compute:
    """Per-layer state prepared once: weight matrix (OIHW order), its bit-planes or signed levels."""

    def __init__(self, layer: Layer, bitserial: bool | None = None):
        """`bitserial` True/False forces the choice between the bit-serial and the int8 kernels
        where both can run (`Engine`'s calibration); None follows BITSERIAL_MAX_PASSES."""
        a = layer.attrs
        self.layer = layer
        w = layer.arrays["weight"]
        self.j = np.ascontiguousarray(w.reshape(w.shape[0], -1))
        self.n_w = int(a["n_w"])
        self.abits, self.wbits = int(a["abits"]), int(a["wbits"])
        self.int8_possible = (INT8_DOT and int(a["in_max"]) <= 255 and self.wbits <= 8
                              and self.j.shape[1] <= INT32_SAFE_K)
        self.bitserial_possible = self.abits <= bitpack.MAX_BITS and self.abits * self.wbits <= 64
        narrow = self.abits <= bitpack.MAX_BITS and self.abits * self.wbits <= BITSERIAL_MAX_PASSES
        if bitserial is not None:
            narrow = bitserial and self.bitserial_possible or not self.int8_possible
        # u8 codes x s8 weights: levels c = 2j - n_w when they fit in int8, else j - 128 with
        # a . c = 2 a.(j - 128) - (n_w - 256) rowsum(a).
        int8 = self.int8_possible and not narrow
        # "float32": an int8-family conv on the exact float32 tile (`kernels.select.float32_conv`)
        self.method = "bitserial" if narrow else "int8" if int8 else "int"
        # With 512-bit popcounts the weights are transposed once and the activations are the
        # GEMM's rows (result rows_first); threshold layers fuse the GEMM with requantization.
        self.vector = narrow and kernels.BITSERIAL_KERNEL == "vector"
        # Vector convs reduce in channel-major order (`kernels.conv_channel_planes`): packing is
        # then one pass over the codes plus a copy of words (2.8x faster on SVHN conv2).
        self.channel_major = self.vector and a["kind"] == "conv"
        if narrow:
            self.w_planes = bitpack.bit_planes(self.j, self.wbits)
            if self.channel_major:
                self.wt = kernels.transposed_planes(bitpack.bit_planes(kernels.channel_major_weights(w), self.wbits))
            elif self.vector:
                self.wt = kernels.transposed_planes(self.w_planes)
        elif int8:
            if self.n_w <= 127:
                self.int8_scale, self.int8_offset = 1, 0
                signed = 2 * w.astype(np.int16) - self.n_w
            else:
                self.int8_scale, self.int8_offset = 2, self.n_w - 256
                signed = w.astype(np.int16) - 128
            self.wt8 = kernels.int8_weights(signed.reshape(signed.shape[0], -1))
            self.w_abs_max = int(np.abs(signed).max()) if signed.size else 0
            if a["kind"] == "conv":  # the fused conv kernel reduces in (i, j, channel) order
                self.conv_wt = kernels.int8_conv_weights(signed)
                if a["output"] == "threshold" and float32_conv(int(a["in_max"]), self.w_abs_max, int(a["acc_bound"])):
                    # The float32 tile on the levels themselves: |partial sums| <= acc_bound <= 2**24.
                    self.method = "float32"
                    self.int8_scale, self.int8_offset, self.w_abs_max = 1, 0, self.n_w
                    self.conv_wt = kernels.float_conv_weights(2 * w.astype(np.int32) - self.n_w)
                # the weights' padded output columns: (K4, Npad, 4) int8, (K4, 4, Npad) float32
                self.conv_cols = self.conv_wt.shape[2 if self.method == "float32" else 1]
        else:
            self.levels = (2 * self.j.astype(np.int16) - self.n_w).astype(np.int16)
        # int_gemm's own rule (`kernels.float32_exact`): every partial sum is an integer of magnitude
        # <= acc_bound for any input. Validation caps acc_bound at 2**31 - 1, so float64 is always exact.
        self.exact_dtype = np.float32 if kernels.float32_exact(a["acc_bound"]) else np.float64
        self.prepared: dict = {}  # block_thresholds by padded width
        if self.method == "int":
            self.levels_t = np.ascontiguousarray(self.levels.T.astype(self.exact_dtype))

    def _planes(self, x: np.ndarray) -> np.ndarray:
        a = self.layer.attrs
        codes = x if x.dtype == np.uint8 else x.astype(np.uint8)
        if self.channel_major:
            return kernels.conv_channel_planes(codes, *a["kernel"], a["stride"], a["padding"], self.abits)
        if a["kind"] == "conv":
            return kernels.conv_bit_planes(codes, *a["kernel"], a["stride"], a["padding"], self.abits)
        return bitpack.bit_planes(codes, self.abits)

    def _bytes(self, x: np.ndarray) -> np.ndarray:
        """uint8 patches (N*P, K rounded up to 4) for the int8 kernels."""
        a = self.layer.attrs
        width = self.wt8.shape[0] * 4
        if a["kind"] == "conv":
            return kernels.im2col_codes(x, *a["kernel"], a["stride"], a["padding"], dtype=np.uint8, width=width)
        out = np.zeros((x.shape[0], width), np.uint8)
        out[:, :x.shape[1]] = x
        return out

    @property
    def fused(self) -> bool:
        """Whether a threshold layer runs as one GEMM + requantization kernel (`threshold_codes`)."""
        return self.vector or self.method in ("int8", "float32")

    @property
    def fused_conv(self) -> str | None:
        """The layout a fused conv kernel of this threshold layer reads its input in ("nhwc" for
        int8, "planes" for bit-serial), so a producer can write it so (`kernels.LaidOut`); None if
        the layer is not one (its input then stays NCHW codes)."""
        a = self.layer.attrs
        if a["kind"] != "conv" or a["output"] != "threshold":
            return None
        return "nhwc" if self.method in ("int8", "float32") else "planes" if self.channel_major else None

    def _prepared(self, width: int) -> tuple:
        """The thresholds in the layout of a fused kernel `width` (padded) columns wide, made once."""
        if width not in self.prepared:
            a, arrays = self.layer.attrs, self.layer.arrays
            self.prepared[width] = block_thresholds(arrays["thresholds"], arrays["direction"], width,
                                                    int(a["acc_bound"]))
        return self.prepared[width]

    def conv_call(self, images: int, pool: int, to, laid: bool):
        """A fused conv (`fused_conv`) prepared for a batch of `images`: `call(x)` -> its codes
        (`kernels.int8_conv_call`, `kernels.bitserial_conv_call`: buffers made once), x contiguous
        uint8 NCHW codes or (`laid`) the `LaidOut` its producer wrote."""
        a, arrays = self.layer.attrs, self.layer.arrays
        shape, th, direction = (images, *a["in_shape"]), arrays["thresholds"], arrays["direction"]
        if self.method in ("int8", "float32"):
            return kernels.int8_conv_call(shape, *a["kernel"], a["stride"], a["padding"], self.conv_wt, th,
                                          direction, self.int8_scale, self.int8_offset,
                                          self._prepared(self.conv_cols), pool, to, int(a["in_max"]),
                                          self.w_abs_max, laid)
        return kernels.bitserial_conv_call(shape, *a["kernel"], a["stride"], a["padding"], self.abits, self.wt, th,
                                           direction, 2, self.n_w, self._prepared(self.wt.shape[2]), pool, to, laid)

    def linear_call(self, images: int):
        """An int8 linear layer's accumulator prepared for a batch of `images`: `call(x)` -> int64
        (images, O) = scale * (a . c') - offset * rowsum(a) (`accumulate`'s, rows_first), its
        operand buffer and GEMM (`kernels.int8_gemm_call`) made once."""
        a = self.layer.attrs
        features = self.j.shape[1]
        operand = np.zeros((images, self.wt8.shape[0] * 4), np.uint8)  # zero columns past K
        gemm = kernels.int8_gemm_call(images, self.wt8, self.j.shape[0], int(a["in_max"]), self.w_abs_max)
        scale, offset = self.int8_scale, self.int8_offset

        def call(x):
            operand[:, :features] = x
            acc = scale * gemm(operand)
            if offset:
                acc -= offset * operand.sum(axis=1, dtype=np.int64)[:, None]
            return acc

        return call

    def threshold_codes(self, x, pool: int = 1, to=None):
        """A threshold layer's codes (N, O, P) in one fused kernel (vector bit-serial and int8
        layers); convs may also max-pool 2x2 (`pool` 2) and lay their output out `to` the next
        conv's input layout (`kernels.conv_output`)."""
        a, arrays = self.layer.attrs, self.layer.arrays
        th, direction = arrays["thresholds"], arrays["direction"]
        images = x.shape[0]
        conv8 = self.method in ("int8", "float32") and a["kind"] == "conv"
        # Codes of an int8 layer are <= in_max <= 255 (the int8 path's condition): uint8 is exact.
        if conv8 and not isinstance(x, kernels.LaidOut) and x.dtype != np.uint8:
            x = x.astype(np.uint8)
        weights = self.conv_wt if conv8 else self.wt8 if self.method == "int8" else self.wt
        prepared = self._prepared(self.conv_cols if conv8 else weights.shape[1] if self.method == "int8"
                                  else weights.shape[2])
        if conv8:
            return kernels.int8_conv_threshold_codes(x, *a["kernel"], a["stride"], a["padding"], weights, th,
                                                     direction, self.int8_scale, self.int8_offset, prepared,
                                                     pool, to, int(a["in_max"]), self.w_abs_max)
        if self.method == "int8":
            return kernels.int8_threshold_codes(self._bytes(x), weights, th, direction, images,
                                                self.int8_scale, self.int8_offset, prepared, int(a["in_max"]),
                                                self.w_abs_max)
        if self.channel_major:
            if not isinstance(x, kernels.LaidOut) and x.dtype != np.uint8:
                x = x.astype(np.uint8)
            return kernels.bitserial_conv_threshold_codes(x, *a["kernel"], a["stride"], a["padding"], self.abits,
                                                          weights, th, direction, 2, self.n_w, prepared, pool, to)
        return kernels.bitserial_threshold_codes(self._planes(x), weights, th, direction, images, 2, self.n_w,
                                                 prepared)

    def accumulate(self, x: np.ndarray) -> tuple[np.ndarray, str, int, int, np.ndarray | None]:
        """Codes (N, C, H, W) or (N, F) -> (acc, layout, scale, offset, rowsum) for
        `requant.threshold_codes`: accumulator = scale * acc - offset * rowsum, per image/pixel."""
        a = self.layer.attrs
        conv = a["kind"] == "conv"
        images = x.shape[0]
        if self.method == "bitserial":
            planes = self._planes(x)
            rowsum = kernels.plane_row_sums(planes).reshape(images, -1)
            if self.vector:
                dot = kernels.bitserial_gemm_transposed(planes, self.wt, self.j.shape[0])
                return dot, "rows_first", 2, self.n_w, rowsum
            # Weights as the GEMM's rows: the result (O, N*P) is already channel-major, and the
            # "- n_w * rowsum(a)" correction is applied inside the threshold kernel.
            dot = kernels.bitserial_gemm(self.w_planes, planes)
            return dot, "channels_first", 2, self.n_w, rowsum
        if self.method == "int8":
            patches = self._bytes(x)
            rowsum = patches.sum(axis=1, dtype=np.int64).reshape(images, -1)
            dot = kernels.int8_gemm(patches, self.wt8, self.j.shape[0], int(a["in_max"]), self.w_abs_max)
            return dot, "rows_first", self.int8_scale, self.int8_offset, rowsum
        # Every partial sum is an integer bounded by acc_bound (a static fact of the model), so
        # BLAS in exact_dtype is exact: `kernels.int_gemm`'s argument, without its scan of the data
        # for the bound. im2col converts while it gathers: one pass over the patch matrix.
        if conv:
            cols = kernels.im2col_codes(x, *a["kernel"], a["stride"], a["padding"], dtype=self.exact_dtype)
        else:
            cols = x.astype(self.exact_dtype)
        return cols @ self.levels_t, "rows_first", 1, 0, None  # (N*P, O)


class Engine:
    """Integer inference for one loaded model. `run(images)` -> EngineResult."""

    def __init__(self, model: IntegerModel, fuse: bool = True, calibrate: int = 0):
        """`fuse` False runs every layer on its own (`_plan`'s fusions off; for comparisons).
        `calibrate` > 0: choose bit-serial or int8 per layer by timing the whole network both
        ways on this CPU, on `calibrate` random images (`_calibrate`), instead of
        BITSERIAL_MAX_PASSES."""
        self.model = model
        self.fuse = fuse
        self.compute = {layer.name: _Compute(layer) for layer in model.layers if layer.is_compute}
        self.tables = {}
        for layer in model.layers:
            if layer.attrs["kind"] == "requant":
                codes = np.arange(layer.attrs["in_max"] + 1, dtype=np.int64)[:, None]
                self.tables[layer.name] = apply_thresholds(codes, layer.arrays["thresholds"],
                                                           layer.arrays["direction"], 1)[:, 0]
        self.pool_into, self.layout_to = self._plan() if fuse else ({}, {})
        self._plans: dict[int, list[_Step]] = {}  # compiled plans by batch size (`plan`)
        self.calibration: dict[str, tuple[float, float]] = {}
        if calibrate:
            self._calibrate(calibrate)

    def _calibrate(self, images: int) -> None:
        """The bit-serial vs int8 crossover measured on this CPU: for every threshold conv that
        both kernel families can run (up to CALIBRATE_MAX_PASSES), in order, the whole network is
        timed with the layer's current kernel and with the other one (and the fusions planned
        again each time, since the layouts between layers follow the kernels), and the faster is
        kept. The two are timed in turn, `repeats` times each, and compared by their best: each
        comparison measures both in the same moments, so a change in the machine's speed between
        them (this VM's threads sometimes wake late) cannot decide it. `images` random images (64 //
        images repeats for small batches whose runs take microseconds, at least 5), with the
        current thread count. `self.calibration[name]` = (network seconds with the layer
        bit-serial, with it int8). Both kernels are exact, so the choice changes the speed only.
        (Timing layers alone missed what the layouts between them cost: on SVHN W1A1 at batch 1 it
        picked int8 for conv1 and the network ran 7% slower; timing one way then the other picked
        int8 for W1A1's conv1 at batch 512 in one benchmark run of two, 5.1 vs 6.6 ms alone.)"""
        x = np.random.default_rng(0).integers(0, 256, (images, *self.model.input_shape)).astype(np.uint8)
        repeats = max(5, 64 // images)

        def use(name: str, comp: _Compute) -> None:
            self.compute[name] = comp
            self.pool_into, self.layout_to = self._plan() if self.fuse else ({}, {})
            self._plans.clear()

        for name, comp in list(self.compute.items()):
            a = comp.layer.attrs
            if not (comp.int8_possible and comp.bitserial_possible and a["kind"] == "conv"
                    and a["output"] == "threshold" and comp.abits * comp.wbits <= CALIBRATE_MAX_PASSES):
                continue
            pair = (comp, _Compute(comp.layer, bitserial=comp.method != "bitserial"))
            times: tuple[list, list] = ([], [])
            for candidate in pair:  # compile / warm up
                use(name, candidate)
                self.run(x)
            for _ in range(repeats):
                for candidate, seconds in zip(pair, times):
                    use(name, candidate)
                    start = time.perf_counter()
                    self.run(x)
                    seconds.append(time.perf_counter() - start)
            kept, other = (min(times[0]), min(times[1]))
            self.calibration[name] = (kept, other) if comp.method == "bitserial" else (other, kept)
            use(name, pair[1] if other < kept else comp)

    def _plan(self) -> tuple[dict, dict]:
        """Which fused conv kernels also do the work of the layers around them:

        pool_into[conv] = the 2x2 stride-2 max-pool that is the conv's only reader (the kernel
        pools its rows before the thresholds, `requant.window_codes`); layout_to[conv] = the
        input layout of the one conv that reads its (pooled) codes (`kernels.conv_output`), so
        that conv skips its own re-layout pass. Both leave every layer's codes as they were."""
        readers: dict[str, list[Layer]] = {}
        for layer in self.model.layers:
            for name in layer.attrs["inputs"]:
                readers.setdefault(name, []).append(layer)
        pool_into, layout_to = {}, {}
        for name, comp in self.compute.items():
            if comp.fused_conv is None:
                continue
            after = readers.get(name, [])
            if len(after) == 1 and after[0].attrs["kind"] == "maxpool" and after[0].attrs["kernel"] == 2 \
                    and after[0].attrs["stride"] == 2 and after[0].attrs["padding"] == 0 \
                    and min(after[0].attrs["in_shape"][1:]) >= 2:
                pool_into[name] = after[0]
                after = readers.get(after[0].name, [])
            reader = self.compute.get(after[0].name) if len(after) == 1 else None
            if reader is not None and reader.fused_conv is not None:
                ra = reader.layer.attrs
                layout_to[name] = ((reader.fused_conv, ra["padding"]) if reader.fused_conv == "nhwc"
                                   else (reader.fused_conv, ra["padding"], reader.abits))
        return pool_into, layout_to

    def plan(self, images: int) -> list[_Step]:
        """The compiled plan for batches of `images` (made on first use, kept for the last
        `PLANS_KEPT` batch sizes): one `_Step` per layer, in order."""
        if images not in self._plans:
            while len(self._plans) >= PLANS_KEPT:
                self._plans.pop(next(iter(self._plans)))
            self._plans[images] = self._compile(images)
        return self._plans[images]

    def _compile(self, images: int) -> list[_Step]:
        """Everything about a run that does not depend on the pixels, decided once per batch size:
        which call computes each layer, with its kernel, arguments, thresholds and output buffers
        bound (`_Compute.conv_call`) for the fused convs, which layers a conv computes too (its
        max-pool: `_plan`), each layer's MAC count. `run` then makes one call per step."""
        steps, fused_by, laid = [], {}, set()
        for layer in self.model.layers:
            a, name = layer.attrs, layer.name
            comp = self.compute.get(name)
            macs = images * int(np.prod(a["out_shape"])) * comp.j.shape[1] if comp is not None else 0
            method = comp.method if comp is not None else ""
            if name in fused_by:
                steps.append(_Step(layer, [], None, name, 0, f"in {fused_by[name]}"))
                continue
            if comp is not None and comp.method == "int8" and a["kind"] == "linear" and a["output"] == "logits":
                steps.append(_Step(layer, a["inputs"], _logits_step(layer, comp.linear_call(images)), name, macs,
                                   method))
                continue
            if comp is None or comp.fused_conv is None:
                steps.append(_Step(layer, a["inputs"], partial(self._layer, layer), name, macs, method))
                continue
            pool, to = self.pool_into.get(name), self.layout_to.get(name)
            store = name if pool is None else pool.name
            source = a["inputs"][0]
            call = comp.conv_call(images, 2 if pool is not None else 1, to, source in laid)
            if to is not None:
                laid.add(store)
            shape = (images, *(pool.attrs["out_shape"] if pool is not None else a["out_shape"]))
            step = _Step(layer, [source], _conv_step(call, to is None, shape, source in laid), store, macs, method)
            if pool is not None:
                fused_by[pool.name] = name
                step.unpooled = partial(self._unpooled, comp)
            steps.append(step)
        return steps

    def _unpooled(self, comp: _Compute, x) -> np.ndarray:
        """A fused conv's own codes (N, O, H, W) where its plan also max-pools them: computed
        again, unpooled, for `run(collect=True)`."""
        return comp.threshold_codes(x).reshape(kernels.as_codes(x).shape[0], *comp.layer.attrs["out_shape"])

    def run(self, images: np.ndarray, collect: bool = False) -> EngineResult:
        """uint8 images (N, C, H, W) -> float32 logits; `collect` keeps every layer's output.
        One call per step of the batch size's compiled plan (`plan`), each timed (`stats`). Not
        reentrant: the plan's buffers are reused by every run of an engine (use one engine per
        thread)."""
        images = np.asarray(images)
        shape = tuple(self.model.input_shape)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
            raise EngineError(f"engine input must be uint8 images of shape (N, {', '.join(map(str, shape))}), "
                              f"got {images.dtype} {images.shape}")
        values = {"input": np.ascontiguousarray(images)}
        result = EngineResult(logits=np.zeros((0, 0), np.float32))
        clock = time.perf_counter
        for step in self.plan(images.shape[0]):
            start = clock()
            if step.call is not None:
                values[step.store] = step.call(*[values[i] for i in step.inputs])
            seconds = clock() - start
            layer = step.layer
            a = layer.attrs
            result.stats.append(LayerStats(layer.name, a["kind"], tuple(a["out_shape"]), a.get("wbits"),
                                           a.get("abits"), step.macs, seconds, step.method))
            if collect:
                if step.unpooled is not None:
                    own = step.unpooled(values[step.inputs[0]])
                else:
                    own = values[layer.name]
                result.outputs[layer.name] = np.array(kernels.as_codes(own))  # the plan reuses its buffers
        result.logits = np.array(values[self.model.layers[-1].name])
        return result

    def _layer(self, layer: Layer, *inputs: np.ndarray) -> np.ndarray:
        """A layer that is not a fused conv, on its inputs' values, its own way each run."""
        a = layer.attrs
        kind = a["kind"]
        x = inputs[0]
        if kind in ("conv", "linear"):
            comp = self.compute[layer.name]
            images, channels = x.shape[0], a["out_channels"]
            if a["output"] == "threshold" and comp.fused:
                return comp.threshold_codes(x).reshape(images, *a["out_shape"])
            acc, layout, scale, offset, rowsum = comp.accumulate(x)
            if a["output"] == "threshold":
                out = threshold_codes(acc, layer.arrays["thresholds"], layer.arrays["direction"], images,
                                      layout, scale, offset, rowsum)
            else:
                full = full_accumulator(acc, images, layout, scale, offset, rowsum, channels)
                if a["output"] == "logits":
                    out = epilogue_affine(layer, full[:, :, 0])
                else:
                    out = full.astype(np.int32)
            return out.reshape(images, *a["out_shape"])
        if kind == "requant":  # a lookup table of the integer thresholds over all input codes
            return self.tables[layer.name][x]
        if kind == "maxpool":
            return max_pool_slices(x, a["kernel"], a["stride"], a["padding"])
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
            return residual_add(layer, inputs).astype(np.uint8)
        raise EngineError(f"layer {layer.name!r}: unknown kind {kind!r}")


def epilogue_affine(layer: Layer, acc: np.ndarray, term: int | None = None) -> np.ndarray:
    """The layer's float32 affine (`epilogue.affine`) on integer `acc`, channels on axis 1;
    `term` picks an add layer's row of constants."""
    row = slice(None) if term is None else term
    a = layer.arrays
    return affine(acc, a["scale"][0 if term is None else term], a["bias"][row],
                  a["bn_scale"][row], a["bn_shift"][row])


def residual_add(layer: Layer, inputs: list[np.ndarray]) -> np.ndarray:
    """An add layer's codes (float32 holding integers): z = sum of each input's affine, in input
    order, then the activation, all in float32 (`epilogue.py`)."""
    z = epilogue_affine(layer, inputs[0], 0)
    for i in range(1, len(inputs)):
        z = z + epilogue_affine(layer, inputs[i], i)
    a = layer.attrs
    if a.get("epilogue") == "source":  # imported: code(z) = #{t : z >= F[t]}, F sorted
        return np.searchsorted(layer.arrays["float_thresholds"], z, side="right").astype(np.float32)
    return activation_code(z, layer.arrays["alpha"][0], a["out_max"], a.get("rounding", "half_up"))


def max_pool_slices(x: np.ndarray, k: int, s: int, p: int) -> np.ndarray:
    """Max-pool on codes (N, C, H, W), separably: k elementwise maxima of strided row views (whole
    contiguous rows), then k of strided column views of that.

    Zero padding stands for the float model's -inf: codes are >= 0 and, with p <= k // 2 (checked
    at load), every window holds a real element. Same result as `kernels.max_pool_codes`, faster
    than its windowed reduction (and with k == s, rows of a reshape first beat k*k 2-D strided
    views: SVHN pool0 at batch 512, 7 vs 10 ms).
    """
    if p:
        x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    n, c = x.shape[:2]
    oh, ow = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
    if k == s:  # non-overlapping windows: the rows of a window are contiguous runs of a reshape
        windows = np.ascontiguousarray(x[:, :, :oh * k, :ow * k]).reshape(n, c, oh, k, ow * k)
        rows = windows[:, :, :, 0] if k == 1 else np.maximum(windows[:, :, :, 0], windows[:, :, :, 1])
        for i in range(2, k):
            np.maximum(rows, windows[:, :, :, i], out=rows)
        rows = rows.reshape(n, c, oh, ow, k)
        out = rows[..., 0].copy() if k == 1 else np.maximum(rows[..., 0], rows[..., 1])
        for j in range(2, k):
            np.maximum(out, rows[..., j], out=out)
        return out
    rows = None
    for i in range(k):
        view = x[:, :, i:i + s * (oh - 1) + 1:s, :]
        rows = view.copy() if rows is None else np.maximum(rows, view, out=rows)
    out = None
    for j in range(k):
        view = rows[:, :, :, j:j + s * (ow - 1) + 1:s]
        out = view.copy() if out is None else np.maximum(out, view, out=out)
    return out


def _window_sum(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """Sum of each k x k window (stride s, no padding) of NCHW integers, as int32."""
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return windows.sum(axis=(4, 5), dtype=np.int32)


def run_model(model: IntegerModel, images: np.ndarray, batch_size: int = 256, collect: bool = False
              ) -> EngineResult:
    """Run `images` through the engine in batches; concatenate logits (and outputs if collected);
    each batch's wall time in `batch_seconds`."""
    engine = Engine(model)
    results, batch_seconds = [], []
    for i in range(0, len(images), batch_size):
        start = time.perf_counter()
        results.append(engine.run(images[i:i + batch_size], collect))
        batch_seconds.append(time.perf_counter() - start)
    if not results:
        raise EngineError("no images to run")
    merged = EngineResult(logits=np.concatenate([r.logits for r in results]), batch_seconds=batch_seconds)
    if collect:
        merged.outputs = {k: np.concatenate([r.outputs[k] for r in results]) for k in results[0].outputs}
    merged.stats = results[0].stats
    for r in results[1:]:
        for total, part in zip(merged.stats, r.stats):
            total.macs += part.macs
            total.seconds += part.seconds
    return merged
