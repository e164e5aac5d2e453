"""The integer model file (`.tpq`): write, read, validate. Spec: docs/model-format.md.

A `.tpq` file is an uncompressed npz (a zip of `.npy` members) holding
  - `header.npy`: a 0-d unicode array with the JSON header (format, version, layers, checksums),
  - `header_sha256.npy`: a 0-d unicode array, the SHA-256 of the header text (UTF-8),
  - one member per array listed in `header["arrays"]` (integer codes, thresholds, ...).
Loading never unpickles: each member's `.npy` header is parsed and checked against the JSON
header (dtype, shape, size) before its bytes are read, then its SHA-256 is checked. Any problem,
including a truncated or corrupt zip, raises `EngineError` with a one-line message.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import tokenize
import zipfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable

import numpy as np

from integer_engine.errors import EngineError
from integer_engine.requant import check_no_overflow, epilogue_code, threshold_mismatch

FORMAT_NAME = "tinypact-integer-model"
RUN_MODEL_NAME = "model.tpq"  # a run directory's integer model (what training exports)
FORMAT_VERSION = 2  # 2: the float epilogue (float32 constants); version 1 used float64 mul/add
ACCUMULATOR_BITS = 32
ACC_MIN, ACC_MAX = -(2**31), 2**31 - 1
MAX_HEADER_CHARS = 4_000_000
MAX_ARRAY_BYTES = 1 << 30

COMPUTE_KINDS = ("conv", "linear")
LAYER_KINDS = ("conv", "linear", "requant", "maxpool", "avgpool", "flatten", "shortcut", "add")
# Array names each layer kind must carry (key in the file: f"{layer}.{name}") and their dtypes.
_AFFINE = {"scale": "float32", "bias": "float32", "bn_scale": "float32", "bn_shift": "float32"}
_ARRAYS_BY_OUTPUT = {
    "threshold": {"weight": "uint8", "thresholds": "int64", "direction": "int8", **_AFFINE,
                  "alpha": "float32"},
    "accumulator": {"weight": "uint8"},
    "logits": {"weight": "uint8", **_AFFINE},
}
ROUNDING_RULES = ("half_up", "half_even")
# `epilogue: "source"` (imported models, integer_engine/interop/from_qonnx.py): the layer keeps
# only its integer thresholds, found by exact search over the source model's own arithmetic
# (which is not tinypact's float epilogue, so it is not stored); checked against the source's
# executor (`verify-onnx`), not recomputed at load. An imported residual add keeps its affine
# constants and, instead of alpha, `float_thresholds` (out_max,) float32: the activation of the
# float32 sum z is code(z) = #{t : z >= float_thresholds[t]} (interop/float_search.py).
SOURCE_EPILOGUE = "source"
_SOURCE_ARRAYS = {"thresholds": "int64", "direction": "int8"}


@dataclass
class Layer:
    """One step of the integer network: JSON attributes plus its arrays.

    Every layer has `name`, `kind`, `inputs` (tensor names: "input" or earlier layer names),
    `in_shape`, `out_shape` (C, H, W) or (F,), `out_max` (largest output code) and `out_scale`
    (real value of one output unit; informational except where documented).
    conv/linear also have: kernel (kh, kw), stride, padding, wbits, abits, out_channels, macs.
    """

    attrs: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        # Only called when normal lookup fails: expose header fields as attributes.
        attrs = self.__dict__.get("attrs", {})
        if key in attrs:
            value = attrs[key]
            return tuple(value) if isinstance(value, list) else value
        raise AttributeError(key)

    @property
    def is_compute(self) -> bool:
        return self.attrs["kind"] in COMPUTE_KINDS


@dataclass
class IntegerModel:
    """A loaded (or freshly exported) integer model: header fields plus layers in execution order."""

    header: dict[str, Any]
    layers: list[Layer]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.header["input"]["shape"])

    @property
    def output(self) -> str:
        return self.layers[-1].name

    @property
    def compute_layers(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.is_compute]

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _array_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


def model_digest(model: IntegerModel) -> str:
    """SHA-256 of what the model computes: its input, layers and arrays (not where it came from),
    the same for a model and its saved and reloaded copy. ONNX exports record it."""
    digest = hashlib.sha256(json.dumps({"input": model.header.get("input"),
                                        "layers": [layer.attrs for layer in model.layers]},
                                       sort_keys=True).encode("utf-8"))
    for layer in model.layers:
        for name in sorted(layer.arrays):
            array = np.asarray(layer.arrays[name])
            digest.update(f"{layer.name}.{name} {array.dtype.str} {array.shape}".encode("utf-8"))
            digest.update(_array_bytes(array))
    return digest.hexdigest()


def save_model(model: IntegerModel, path: str | os.PathLike) -> None:
    """Write `model` to `path` atomically (temp file in the same directory, then os.replace)."""
    arrays: dict[str, np.ndarray] = {}
    for layer in model.layers:
        for name, array in layer.arrays.items():
            arrays[f"{layer.name}.{name}"] = np.ascontiguousarray(array)
    header = dict(model.header)
    header["format"] = FORMAT_NAME
    header["version"] = FORMAT_VERSION
    header["layers"] = [layer.attrs for layer in model.layers]
    header["arrays"] = {
        key: {"dtype": array.dtype.str, "shape": list(array.shape), "sha256": _sha256(_array_bytes(array))}
        for key, array in arrays.items()
    }
    text = json.dumps(header, sort_keys=True, allow_nan=False)
    members = {"header": np.array(text), "header_sha256": np.array(_sha256(text.encode("utf-8")))}
    members.update(arrays)
    write_atomic(path, lambda handle: np.savez(handle, **members))


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """`write(handle)` into a temp file beside `path`, then os.replace: a reader never sees half
    a file, and a failed write leaves the old one (OSError as raised, the temp file removed)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # the mode `open` would give, not mkstemp's 0600
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_member(zf: zipfile.ZipFile, name: str, file_size: int) -> tuple[np.dtype, tuple, bytes]:
    """Parse one `.npy` member without unpickling: return (dtype, shape, raw data bytes)."""
    try:
        info = zf.getinfo(name + ".npy")
    except KeyError:
        raise EngineError(f"model file is missing array {name!r}") from None
    if info.compress_type != zipfile.ZIP_STORED or info.file_size > min(file_size, MAX_ARRAY_BYTES):
        raise EngineError(f"model file member {name!r} has an invalid size or compression")
    with zf.open(info) as handle:
        raw = handle.read()  # zipfile checks the member's CRC-32 here
    stream = io.BytesIO(raw)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise EngineError(f"model file member {name!r} has unsupported npy version {version}")
    if dtype.hasobject or fortran:
        raise EngineError(f"model file member {name!r} is not a plain C-order array")
    data = raw[stream.tell():]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise EngineError(f"model file member {name!r} holds {len(data)} bytes, expected {expected}")
    return dtype, tuple(shape), data


def load_model(path: str | os.PathLike) -> IntegerModel:
    """Read and fully validate a `.tpq` file (or a run directory's `model.tpq`); raise
    EngineError (one line) on any problem."""
    path = os.fspath(path)
    if os.path.isdir(path):
        inside = os.path.join(path, RUN_MODEL_NAME)
        if not os.path.isfile(inside):
            raise EngineError(f"{path} is a directory without {RUN_MODEL_NAME}; give the model "
                              f"file, or write it with `python -m integer_engine export {path} "
                              f"-o {inside}`")
        path = inside
    if not os.path.isfile(path):
        raise EngineError(f"model file not found: {path}")
    try:
        file_size = os.path.getsize(path)
        with zipfile.ZipFile(path) as zf:
            if "header.npy" not in zf.namelist():
                raise EngineError(f"{path} is not a valid integer model file (no header; write one "
                                  f"with `python -m integer_engine export`)")
            dtype, shape, data = _read_member(zf, "header", file_size)
            if dtype.kind != "U" or shape != () or dtype.itemsize > 4 * MAX_HEADER_CHARS:
                raise EngineError("model header is not a JSON string")
            text = np.frombuffer(data, dtype=dtype).reshape(())[()]
            text = str(text)
            dtype, shape, data = _read_member(zf, "header_sha256", file_size)
            if dtype.kind != "U" or shape != ():
                raise EngineError("model header checksum is malformed")
            if str(np.frombuffer(data, dtype=dtype).reshape(())[()]) != _sha256(text.encode("utf-8")):
                raise EngineError("model header checksum mismatch: the file is corrupt")
            header = json.loads(text)
            _check_header_top(header)
            arrays: dict[str, np.ndarray] = {}
            for key, spec in header["arrays"].items():
                dtype, shape, data = _read_member(zf, key, file_size)
                if dtype.str != spec["dtype"] or list(shape) != list(spec["shape"]):
                    raise EngineError(f"array {key!r} is {dtype.str}{list(shape)}, header says "
                                      f"{spec['dtype']}{spec['shape']}")
                if _sha256(data) != spec["sha256"]:
                    raise EngineError(f"array {key!r} checksum mismatch: the file is corrupt")
                arrays[key] = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    except EngineError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError,
            TypeError, IndexError, OverflowError, UnicodeError, MemoryError, RuntimeError,
            SyntaxError, tokenize.TokenError) as err:
        # zlib/CRC errors, malformed npy headers (NumPy parses them with Python's tokenizer and
        # ast: SyntaxError, TokenError), bad JSON: all mean a damaged or foreign file.
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise EngineError(f"{path} is not a valid integer model file ({reason[:200]})") from None
    layers = _build_layers(header, arrays)
    model = IntegerModel(header=header, layers=layers)
    validate_model(model)
    return model


def _check_header_top(header: Any) -> None:
    if not isinstance(header, dict):
        raise EngineError("model header is not a JSON object")
    if header.get("format") != FORMAT_NAME:
        raise EngineError(f"not an integer model file (format {header.get('format')!r}, "
                          f"expected {FORMAT_NAME!r})")
    if header.get("version") != FORMAT_VERSION:
        raise EngineError(f"unsupported model format version {header.get('version')!r} "
                          f"(this engine reads version {FORMAT_VERSION}); export the model again "
                          f"from its checkpoint: python -m integer_engine export RUN -o MODEL.tpq")
    if not isinstance(header.get("arrays"), dict) or not isinstance(header.get("layers"), list):
        raise EngineError("model header lacks 'arrays' or 'layers'")
    for key, spec in header["arrays"].items():
        if not (isinstance(spec, dict) and isinstance(spec.get("dtype"), str)
                and isinstance(spec.get("shape"), list) and isinstance(spec.get("sha256"), str)):
            raise EngineError(f"model header entry for array {key!r} is malformed")


def _build_layers(header: dict, arrays: dict[str, np.ndarray]) -> list[Layer]:
    layers = []
    used: set[str] = set()
    for attrs in header["layers"]:
        if not isinstance(attrs, dict) or not isinstance(attrs.get("name"), str):
            raise EngineError("model header has a malformed layer entry")
        prefix = attrs["name"] + "."
        own = {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)
               and "." not in key[len(prefix):]}
        used.update(prefix + name for name in own)
        layers.append(Layer(attrs=attrs, arrays=own))
    extra = set(arrays) - used
    if extra:
        raise EngineError(f"model file has arrays that belong to no layer: {sorted(extra)[:3]}")
    return layers


def _fail(layer: str, message: str) -> None:
    raise EngineError(f"layer {layer!r}: {message}")


def _is_int(value: Any, low: int | None = None, high: int | None = None) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (low is None or value >= low) and (high is None or value <= high)


def validate_model(model: IntegerModel) -> None:
    """Check the layer graph, shapes, dtypes and value ranges; raise EngineError on the first problem.

    Shapes are recomputed from the input shape through every layer, so a header that is
    internally inconsistent (a tampered stride, a wrong channel count) is refused at load.
    """
    header = model.header
    inp = header.get("input")
    if not (isinstance(inp, dict) and isinstance(inp.get("shape"), list) and len(inp["shape"]) == 3
            and all(_is_int(v, 1, 1 << 16) for v in inp["shape"]) and inp.get("max") == 255):
        raise EngineError("model header 'input' must give shape [C, H, W] and max 255 (uint8 pixels)")
    if not model.layers:
        raise EngineError("model has no layers")
    shapes: dict[str, tuple[int, ...]] = {"input": tuple(inp["shape"])}
    maxes: dict[str, int] = {"input": 255}
    for layer in model.layers:
        a = layer.attrs
        name = a["name"]
        if name in shapes or name == "input":
            _fail(name, "duplicate layer name")
        kind = a.get("kind")
        if kind not in LAYER_KINDS:
            _fail(name, f"unknown kind {kind!r}")
        inputs = a.get("inputs")
        if not (isinstance(inputs, list) and inputs and all(i in shapes for i in inputs)):
            _fail(name, f"inputs {inputs!r} must name earlier layers or 'input'")
        if len(inputs) != (2 if kind == "add" else 1):
            _fail(name, f"{kind} takes {2 if kind == 'add' else 1} input(s), got {len(inputs)}")
        in_shape = shapes[inputs[0]]
        if list(in_shape) != list(a.get("in_shape", [])):
            _fail(name, f"in_shape {a.get('in_shape')} does not match its input's shape {list(in_shape)}")
        out_shape = _check_layer(layer, in_shape, [maxes[i] for i in inputs], [shapes[i] for i in inputs])
        if list(out_shape) != list(a.get("out_shape", [])):
            _fail(name, f"out_shape {a.get('out_shape')} inconsistent with its parameters ({list(out_shape)})")
        if not _is_int(a.get("out_max"), 0, ACC_MAX) and a.get("output") not in ("accumulator", "logits"):
            _fail(name, "out_max must be a non-negative integer")
        expected_max = _derived_max(a, in_shape, maxes[inputs[0]])
        if expected_max is not None and a.get("out_max") != expected_max:
            _fail(name, f"out_max {a.get('out_max')} should be {expected_max}")
        if kind == "add" and a.get("input_bounds") != [maxes[i] for i in inputs]:
            _fail(name, "input_bounds do not match the inputs' largest values")
        shapes[name] = tuple(out_shape)
        maxes[name] = a.get("out_max") if _is_int(a.get("out_max")) else ACC_MAX
    if model.layers[-1].attrs.get("output") != "logits":
        raise EngineError("the last layer must produce logits")


def _derived_max(a: dict, in_shape: tuple, in_max: int) -> int | None:
    """The largest output value of a layer that only moves or sums codes (None for others)."""
    kind = a["kind"]
    if kind in ("maxpool", "flatten"):
        return in_max
    if kind == "avgpool":
        k = a.get("kernel")
        area = in_shape[1] * in_shape[2] if k == "global" else (k * k if _is_int(k, 1) else 1)
        return in_max * area
    if kind == "shortcut":
        s = a.get("stride")
        return in_max * (s * s if a.get("mode") == "avgpool" and _is_int(s, 1) else 1)
    return None


def _check_arrays(layer: Layer, expected: dict[str, tuple[str, tuple]]) -> None:
    name = layer.attrs["name"]
    if set(layer.arrays) != set(expected):
        _fail(name, f"has arrays {sorted(layer.arrays)}, expected {sorted(expected)}")
    for key, (dtype, shape) in expected.items():
        array = layer.arrays[key]
        if array.dtype != np.dtype(dtype) or array.shape != shape:
            _fail(name, f"array {key} is {array.dtype}{array.shape}, expected {dtype}{shape}")


def _conv_out(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


def _check_epilogue(layer: Layer, channels: int, n_out: int | None, acc_lo: int, acc_hi: int,
                    terms: int = 0) -> None:
    """The float epilogue's constants are finite, scales and alpha positive, the rounding rule
    known; where the layer has thresholds, they give the epilogue's code on every integer of
    [acc_lo, acc_hi], direction included (`requant.threshold_mismatch`)."""
    name, arrays = layer.attrs["name"], layer.arrays
    if _source_epilogue(layer):
        _check_threshold_order(layer)
        return
    consts = [arrays[k] for k in ("scale", "bias", "bn_scale", "bn_shift", "alpha") if k in arrays]
    if not all(np.all(np.isfinite(v)) for v in consts):
        _fail(name, "epilogue constants must be finite")
    if not np.all(arrays["scale"] >= 0) or ("alpha" in arrays and not np.all(arrays["alpha"] > 0)):
        _fail(name, "epilogue scale must be >= 0 and alpha positive")
    rule = layer.attrs.get("rounding", "half_up")
    if n_out is not None and rule not in ROUNDING_RULES:
        _fail(name, f"rounding must be one of {', '.join(ROUNDING_RULES)}, got {rule!r}")
    if "thresholds" not in arrays:
        return
    _check_threshold_order(layer)
    epilogue = (arrays["scale"][0], arrays.get("bias", np.zeros(channels, np.float32)),
                arrays.get("bn_scale", np.ones(channels, np.float32)),
                arrays.get("bn_shift", np.zeros(channels, np.float32)))
    try:
        check_no_overflow([(*epilogue, acc_lo, acc_hi)], arrays["alpha"][0], n_out)
    except EngineError as err:
        _fail(name, str(err))
    th = arrays["thresholds"]
    if th.size and (th.min() < acc_lo - 1 or th.max() > acc_hi + 1):
        _fail(name, f"thresholds lie outside the accumulator range [{acc_lo}, {acc_hi}] (a damaged "
                    f"or hand-edited file; export it again)")
    code = epilogue_code(*epilogue, arrays["alpha"][0], n_out, rule)
    with np.errstate(over="ignore", invalid="ignore"):
        wrong = threshold_mismatch(code, th, arrays["direction"], acc_lo, acc_hi)
    if wrong.any():
        _fail(name, f"thresholds do not reproduce the layer's float epilogue in channel "
                    f"{int(np.flatnonzero(wrong)[0])}, direction included (a damaged or hand-edited "
                    f"file, or one an older exporter got wrong; export it again)")


def _source_epilogue(layer: Layer) -> bool:
    """True for a layer whose thresholds come from an imported model's own arithmetic."""
    epilogue = layer.attrs.get("epilogue")
    if epilogue not in (None, SOURCE_EPILOGUE):
        _fail(layer.attrs["name"], f"unknown epilogue {epilogue!r} (only {SOURCE_EPILOGUE!r} is defined)")
    return epilogue == SOURCE_EPILOGUE


def _check_threshold_order(layer: Layer) -> None:
    """Directions +-1, d*T non-decreasing along the levels (the kernels count by bisection)."""
    th, direction = layer.arrays["thresholds"], layer.arrays["direction"]
    if not np.all(np.abs(direction) == 1):
        _fail(layer.attrs["name"], "direction must be +1 or -1")
    if np.any(np.diff(th * direction.astype(np.int64)[:, None], axis=1) < 0):
        _fail(layer.attrs["name"], "thresholds are not ordered along the levels (a damaged file)")


def _check_source_float_thresholds(layer: Layer) -> None:
    """An imported add's activation: finite affine constants, float32 thresholds F with
    code(z) = #{t : z >= F[t]}, non-decreasing and not NaN (+inf: a level never reached)."""
    arrays = layer.arrays
    if not all(np.all(np.isfinite(arrays[k])) for k in ("scale", "bias", "bn_scale", "bn_shift")):
        _fail(layer.attrs["name"], "epilogue constants must be finite")
    floats = arrays["float_thresholds"]
    if np.any(np.isnan(floats)) or np.any(np.diff(floats) < 0):
        _fail(layer.attrs["name"], "float_thresholds must be non-decreasing numbers (a damaged file)")


def _check_layer(layer: Layer, in_shape: tuple, in_maxes: list[int], in_shapes: list[tuple]) -> tuple:
    a = layer.attrs
    name, kind = a["name"], a["kind"]
    in_max = in_maxes[0]
    if kind in COMPUTE_KINDS:
        for key in ("wbits", "abits", "out_channels", "stride", "padding", "macs"):
            if not _is_int(a.get(key), 0):
                _fail(name, f"{key} must be a non-negative integer")
        if not 1 <= a["wbits"] <= 8:
            _fail(name, f"wbits {a['wbits']} outside 1..8")
        if a["abits"] != max(1, int(in_max).bit_length()) or a["abits"] > 16:
            _fail(name, f"abits {a['abits']} does not match the input's largest code {in_max}")
        n_w = a.get("n_w")
        if n_w not in (2 ** a["wbits"] - 1, 2 ** a["wbits"] - 2) or n_w < 1:
            _fail(name, f"n_w {n_w} must be 2**wbits - 1 (odd levels) or 2**wbits - 2 (zero-aligned)")
        out_c = a["out_channels"]
        kernel = a.get("kernel")
        if kind == "conv":
            if len(in_shape) != 3 or not (isinstance(kernel, list) and len(kernel) == 2
                                          and all(_is_int(k, 1) for k in kernel)) or a["stride"] < 1:
                _fail(name, "conv needs a (C, H, W) input, kernel [kh, kw] and stride >= 1")
            c, h, w = in_shape
            kh, kw = kernel
            oh, ow = _conv_out(h, kh, a["stride"], a["padding"]), _conv_out(w, kw, a["stride"], a["padding"])
            if oh < 1 or ow < 1:
                _fail(name, "kernel larger than the padded input")
            out_shape = (out_c, oh, ow)
            wshape = (out_c, c, kh, kw)
            fan_in = c * kh * kw
        else:
            if len(in_shape) != 1 or kernel != [1, 1] or a["stride"] != 1 or a["padding"] != 0:
                _fail(name, "linear needs a flat (F,) input, kernel [1, 1], stride 1, padding 0")
            out_shape = (out_c,)
            wshape = (out_c, in_shape[0])
            fan_in = in_shape[0]
        if a["macs"] != int(np.prod(out_shape)) * fan_in:
            _fail(name, "macs does not equal output elements x fan-in")
        if fan_in * int(in_max) * n_w > ACC_MAX:
            _fail(name, f"worst-case accumulator {fan_in * int(in_max) * n_w} overflows int32")
        # The engine picks its exact GEMM type from acc_bound: it must be the true worst case.
        if a.get("acc_bound") != fan_in * int(in_max) * n_w or a.get("in_max") != in_max:
            _fail(name, "acc_bound/in_max do not match the input's largest code and the fan-in")
        output = a.get("output")
        if output not in _ARRAYS_BY_OUTPUT:
            _fail(name, f"unknown output mode {output!r}")
        n_out = a.get("out_max") if output == "threshold" else 0
        if output == "threshold" and not _is_int(n_out, 1, 255):
            _fail(name, "threshold output needs out_max in 1..255")
        shapes = {"weight": wshape, "thresholds": (out_c, n_out), "direction": (out_c,),
                  "scale": (1,), "alpha": (1,), "bias": (out_c,), "bn_scale": (out_c,),
                  "bn_shift": (out_c,)}
        kinds = _ARRAYS_BY_OUTPUT[output]
        if output == "threshold" and _source_epilogue(layer):
            kinds = {"weight": "uint8", **_SOURCE_ARRAYS}
        expected = {k: (d, shapes[k]) for k, d in kinds.items()}
        _check_arrays(layer, expected)
        if int(layer.arrays["weight"].max(initial=0)) > n_w:
            _fail(name, f"weight codes exceed n_w = {n_w}")
        if output != "accumulator":
            bound = a["acc_bound"]
            _check_epilogue(layer, out_c, n_out if output == "threshold" else None, -bound, bound)
        return out_shape
    if kind == "requant":
        n_out = a.get("out_max")
        if not _is_int(n_out, 1, 255):
            _fail(name, "requant needs out_max in 1..255")
        expected = {"thresholds": ("int64", (1, n_out)), "direction": ("int8", (1,))}
        if not _source_epilogue(layer):
            expected.update(scale=("float32", (1,)), alpha=("float32", (1,)))
        _check_arrays(layer, expected)
        if a.get("in_max") != in_max:  # the engine's lookup table has in_max + 1 entries
            _fail(name, f"in_max {a.get('in_max')} does not match its input's largest code {in_max}")
        _check_epilogue(layer, 1, n_out, 0, in_max)
        return in_shape
    if kind != "add":
        _check_arrays(layer, {})  # pooling, flatten and shortcut layers carry no arrays
    if kind in ("maxpool", "avgpool"):
        if len(in_shape) != 3:
            _fail(name, f"{kind} needs a (C, H, W) input")
        c, h, w = in_shape
        k, s = a.get("kernel"), a.get("stride")
        p = a.get("padding", 0)
        if kind == "avgpool" and k == "global":
            return (c, 1, 1)
        if not (_is_int(k, 1) and _is_int(s, 1) and _is_int(p, 0) and 2 * p <= k):
            _fail(name, "pool needs kernel >= 1, stride >= 1, 0 <= padding <= kernel/2")
        oh, ow = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
        if oh < 1 or ow < 1:
            _fail(name, "pool kernel larger than the input")
        return (c, oh, ow)
    if kind == "flatten":
        return (int(np.prod(in_shape)),)
    if kind == "shortcut":
        if len(in_shape) != 3 or not (_is_int(a.get("stride"), 1) and _is_int(a.get("pad_before"), 0)
                                      and _is_int(a.get("pad_after"), 0)) or a.get("mode") not in ("subsample", "avgpool"):
            _fail(name, "shortcut needs stride >= 1, pad_before/pad_after >= 0, mode subsample|avgpool")
        c, h, w = in_shape
        s = a["stride"]
        if a["mode"] == "avgpool":
            return (c + a["pad_before"] + a["pad_after"], h // s, w // s)
        return (c + a["pad_before"] + a["pad_after"], (h + s - 1) // s, (w + s - 1) // s)
    if kind == "add":
        if in_shapes[0] != in_shapes[1]:
            _fail(name, f"add inputs have different shapes {in_shapes}")
        c = in_shape[0]
        n_out = a.get("out_max")
        if not _is_int(n_out, 1, 255):
            _fail(name, "add needs out_max in 1..255")
        terms = {"scale": ("float32", (2,)), "bias": ("float32", (2, c)),
                 "bn_scale": ("float32", (2, c)), "bn_shift": ("float32", (2, c))}
        if _source_epilogue(layer):  # imported: the activation is its float32 thresholds
            _check_arrays(layer, {**terms, "float_thresholds": ("float32", (n_out,))})
            _check_source_float_thresholds(layer)
            return in_shape
        _check_arrays(layer, {**terms, "alpha": ("float32", (1,))})
        _check_epilogue(layer, c, n_out, 0, 0)
        return in_shape
    _fail(name, f"unknown kind {kind!r}")
    return in_shape


def layer_shapes(model: IntegerModel) -> list[dict[str, Any]]:
    """The conv/linear layers as the accelerator model wants them (SCALE-Sim topology style).

    A linear layer is a 1x1 convolution over a 1x1 feature map with `channels` = in features.
    `ifmap_h/ifmap_w` include the zero padding; `macs` is per image; `obits` is the width of
    what the layer writes (its requantized codes; 32 for accumulators and logits).
    """
    rows = []
    for layer in model.compute_layers:
        a = layer.attrs
        if a["kind"] == "conv":
            c, h, w = a["in_shape"]
            kh, kw = a["kernel"]
            ih, iw = h + 2 * a["padding"], w + 2 * a["padding"]
        else:
            c, ih, iw, kh, kw = a["in_shape"][0], 1, 1, 1, 1
        # Bits of what the layer writes: its own output codes (before any pooling), the int32
        # accumulator for a residual branch, int32 logits.
        obits = max(1, int(a["out_max"]).bit_length()) if a["output"] == "threshold" else 32
        rows.append({"name": a["name"], "kind": a["kind"], "ifmap_h": ih, "ifmap_w": iw,
                     "filter_h": kh, "filter_w": kw, "channels": c, "num_filters": a["out_channels"],
                     "stride": a["stride"], "wbits": a["wbits"], "abits": a["abits"], "macs": a["macs"],
                     "obits": obits})
    return rows
