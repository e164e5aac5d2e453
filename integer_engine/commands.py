"""`python -m integer_engine` subcommands export, run, verify, inspect.

    export RUN_OR_CHECKPOINT -o MODEL.tpq
    run MODEL --data DATASET|FILE.npz [--split test] [--limit N]
    verify MODEL [--data ...] [--limit N] [--checkpoint CKPT [--any-checkpoint]]
    inspect MODEL
User mistakes raise EngineError (printed as one line by cli.main, exit status 2); `verify` exits
with status 1 when it finds a mismatch.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
import tokenize
import zlib

import numpy as np

from integer_engine.errors import EngineError

MODEL_HELP = "an integer model file (.tpq), or a run directory holding model.tpq"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="checkpoint -> integer model file (.tpq)",
                       description="Export a tinypact run or checkpoint.npz to an integer model file.")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("-o", "--output", required=True, metavar="MODEL",
                   help="output file, e.g. RUN/model.tpq (replaced if it exists)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="integer inference on a data set: accuracy, images/s, per-layer table")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    _data_args(p, required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="engine vs the trained model and vs the NumPy reference, "
                                      "layer by layer (must be 0 mismatches)",
                       description="Check the integer model layer by layer: against the trained "
                                   "tinypact model it was exported from (its checkpoint; needs "
                                   "tinypact) and against the plain NumPy reference of the engine. "
                                   "With --data it checks every image of the split (the "
                                   "float64 reference is the slow part: Fashion-MNIST's 10,000 "
                                   "test images take 1.5-5 minutes on 2 cores, quiet to busy; "
                                   "--limit N checks the first N) and prints how long it took. "
                                   "Exits 1 on any mismatch.")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    _data_args(p, required=False)
    p.add_argument("--random", type=int, default=64, metavar="N",
                   help="without --data: verify on N random images (default 64)")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="the tinypact run or checkpoint.npz to compare with (default: the one the "
                        "model was exported from, if it is still there)")
    p.add_argument("--any-checkpoint", action="store_true",
                   help="compare with --checkpoint even if it is not the model's source (its "
                        "SHA-256 differs from the one recorded at export)")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("inspect", help="layers, bit widths, packed size vs float32",
                       description="Print an integer model file's layers (kind, shapes, weight/"
                       "activation bits, largest output code, MACs per image) and its packed size "
                       "against float32.")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.set_defaults(func=cmd_inspect)


def _data_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", required=required, metavar="DATASET",
                   help="a data set name (fashion-mnist, svhn, cifar10, sample; needs tinypact) "
                        "or an .npz with uint8 'images' (N, C, H, W) and 'labels'")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N images")
    p.add_argument("--data-dir", metavar="DIR", help="where tinypact keeps its data sets")
    p.add_argument("--no-checksum", action="store_true",
                   help="use local data set files whose MD5 is not the official one as they are "
                        "(a copy you made or converted yourself)")


def _load(path: str):
    from integer_engine.format import load_model
    return load_model(path)


def _check_images(model, images: np.ndarray, description: str) -> None:
    if tuple(images.shape[1:]) != tuple(model.input_shape):
        raise EngineError(f"{description}: images are {tuple(images.shape[1:])}, the model takes "
                          f"{tuple(model.input_shape)}")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# What NumPy can raise on a damaged checkpoint that export's reader does not turn into an
# EngineError: a malformed `.npy` header is parsed with Python's tokenizer and ast.
_DAMAGED_NPY_ERRORS = (SyntaxError, tokenize.TokenError, zlib.error, TypeError, IndexError,
                       OverflowError, MemoryError, UnicodeError)


def check_output_path(output: str, example: str = "model.tpq") -> None:
    """EngineError unless `output` names a file we can create (checked before the work runs)."""
    if os.path.isdir(output):
        raise EngineError(f"-o {output} is a directory; give a file name, e.g. "
                          f"{os.path.join(output, example)}")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise EngineError(f"output directory does not exist: {directory}; create it or choose "
                          f"another -o")
    _check_writable(directory, "-o")


def _check_writable(directory: str, option: str) -> None:
    """EngineError unless a file can be created in the existing folder `directory`."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise EngineError(f"cannot write to {directory} ({err.strerror or err}); choose another "
                          f"{option} or change its permissions") from None


def check_output_dir(directory: str, option: str = "--out") -> None:
    """EngineError unless `directory` is, or can be created as, a folder we can write to: checked
    before the work runs, creating nothing."""
    path = os.path.abspath(directory)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise EngineError(f"{option} {directory} {what}; give a directory")
    _check_writable(existing, option)


def cmd_export(args: argparse.Namespace) -> int:
    from integer_engine.export import export_checkpoint
    from integer_engine.format import save_model

    check_output_path(args.output)
    check_checkpoint_checksums(args.run)
    try:
        model = export_checkpoint(args.run)
    except _DAMAGED_NPY_ERRORS as err:
        raise EngineError(f"{args.run} is not a readable tinypact checkpoint ({type(err).__name__}: "
                          f"{str(err)[:150]}); export an intact checkpoint") from None
    try:
        save_model(model, args.output)
    except OSError as err:
        raise EngineError(f"cannot write {args.output} ({err.strerror or err}); choose another "
                          f"-o") from None
    sizes = model_sizes(model)
    print(f"wrote {args.output}: {len(model.compute_layers)} conv/linear layers, "
          f"{sizes['params']:,} weights, packed {_human_bytes(sizes['packed_bytes'])} "
          f"(float32 {_human_bytes(sizes['float32_bytes'])})")
    return 0


def check_checkpoint_checksums(run_or_checkpoint: str) -> None:
    """EngineError if a checkpoint's arrays or meta differ from the SHA-256s saved with them.

    tinypact records them (meta["arrays"]: dtype, shape, sha256 of every array; the member
    `meta_sha256`: the meta text's) so that an edit that keeps the zip CRCs valid is caught;
    checkpoints without them pass unchecked. A member that cannot be read (bad CRC, malformed
    header) is refused too, even one export would not use (the optimizer state): the file is
    damaged. A missing file is left to export's own reader.
    """
    path = run_or_checkpoint
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
    if not os.path.isfile(path):
        return
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        for name, value in arrays.items():  # a member without the .npy magic comes back as bytes
            if not isinstance(value, np.ndarray):
                raise ValueError(f"member {name!r} is not a .npy array")
        if "meta" not in arrays and "header" in arrays:
            raise EngineError(f"{path} is an integer model (.tpq), already exported; give it to "
                              f"run, verify, inspect or simulate directly (export reads a tinypact "
                              f"run or its checkpoint.npz)")
        text = str(arrays.pop("meta")[()])
        records = json.loads(text).get("arrays")
    except EngineError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever NumPy, zipfile or json raise: damaged
        reason = str(err).splitlines()[0][:150] if str(err) else ""
        raise EngineError(f"{path} is not a readable tinypact checkpoint ({type(err).__name__}"
                          f"{': ' + reason if reason else ''}); export an intact copy") from None
    recorded = arrays.pop("meta_sha256", None)
    if recorded is None and records is None:
        return
    damaged = f"{path} is damaged although its zip checksums match"
    if recorded is None or str(recorded[()]) != hashlib.sha256(text.encode("utf-8")).hexdigest():
        raise EngineError(f"{damaged} (its meta does not match meta_sha256); export an intact copy")
    for key, array in arrays.items():
        record = (records or {}).get(key)
        digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        if record != {"dtype": array.dtype.str, "shape": list(array.shape), "sha256": digest}:
            raise EngineError(f"{damaged} (array {key!r} does not match its recorded dtype, "
                              f"shape or SHA-256); export an intact copy")


def cmd_run(args: argparse.Namespace) -> int:
    from integer_engine.executor import run_model
    from integer_engine.verify import load_images

    model = _load(args.model)
    images, labels, description = load_images(args.data, args.split, args.limit, args.data_dir,
                                                   verify_checksums=not args.no_checksum)
    _check_images(model, images, description)
    if args.batch_size < 1:
        raise EngineError("--batch-size must be at least 1")
    run_model(model, images[:1])  # warm-up: compiles/loads the Numba kernels outside the timing
    start = time.perf_counter()
    result = run_model(model, images, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    accuracy = float(np.mean(result.predictions == labels))
    from integer_engine.cpu import describe
    print(describe())
    print(f"{description}: {len(images)} images, accuracy {100 * accuracy:.2f}%, "
          f"{len(images) / seconds:.1f} images/s ({seconds:.2f} s)")
    p50, p99 = result.latency()
    per = "per image" if args.batch_size == 1 else f"per batch of {args.batch_size}"
    print(f"latency {per}: p50 {1e3 * p50:.3f} ms, p99 {1e3 * p99:.3f} ms ({len(result.batch_seconds)} batches)")
    print(format_layer_table(result.stats, len(images)))
    return 0


def format_layer_table(stats, images: int) -> str:
    rows = [("layer", "kind", "output", "W/A bits", "MACs/image", "method", "time ms", "%")]
    total = sum(s.seconds for s in stats) or 1.0
    for s in stats:
        bits = f"{s.wbits}/{s.abits}" if s.wbits is not None else "-"
        macs = f"{s.macs // max(images, 1):,}" if s.macs else "-"
        rows.append((s.name, s.kind, "x".join(map(str, s.out_shape)), bits, macs, s.method or "-",
                     f"{1e3 * s.seconds:.1f}", f"{100 * s.seconds / total:.0f}"))
    total_macs = sum(s.macs for s in stats) // max(images, 1)
    rows.append(("total", "", "", "", f"{total_macs:,}", "", f"{1e3 * total:.1f}", "100"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def cmd_verify(args: argparse.Namespace) -> int:
    from integer_engine.verify import (agreement, check_source, verify_against_checkpoint,
                                       verify_model)

    model = _load(args.model)
    images, labels, description = verify_images(args, model)
    batch = max(1, args.batch_size)
    start = time.perf_counter()
    print(f"verifying {args.model} on {description} ({len(images):,} images; --limit N checks "
          f"fewer)" if args.data else f"verifying {args.model} on {description}", flush=True)
    checkpoint = args.checkpoint or (model.header.get("source") or {}).get("checkpoint")
    trained = None
    if args.checkpoint or (checkpoint and os.path.exists(checkpoint)):
        try:
            if not args.any_checkpoint:
                check_source(model, checkpoint)
            trained = verify_against_checkpoint(model, checkpoint, images, batch_size=batch)
        except EngineError as err:
            if args.checkpoint:  # asked for by name: a refusal is the answer
                raise
            print(f"engine vs trained model: skipped ({err})")
    elif not checkpoint:
        print("engine vs trained model: skipped (no tinypact checkpoint behind this model; an "
              "imported model is checked against its source with verify-onnx)")
    else:
        print(f"engine vs trained model: skipped ({checkpoint} is gone; pass --checkpoint RUN)")
    if trained is not None:
        print(f"engine vs trained model ({checkpoint}) on {description}:")
        print_report(trained)
        stats = agreement(trained.engine_predictions, trained.other_predictions, labels)
        print(f"  predictions equal on {stats['agreement']:.2%} of {stats['images']} images")
    report = verify_model(model, images, batch_size=batch)
    print(f"engine vs NumPy reference on {description}:")
    print_report(report)
    if labels is not None:
        print(f"engine accuracy: {100 * np.mean(report.engine_predictions == labels):.2f}%")
    print(f"verified in {time.perf_counter() - start:.1f} s")
    return 0 if report.ok and (trained is None or trained.ok) else 1


def verify_images(args: argparse.Namespace, model) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(uint8 images, labels or None, description) for the verify commands: --data (every image
    of the split, or the first --limit N) or --random N images."""
    from integer_engine.verify import load_images, random_images

    if not args.data:
        if args.random < 1:
            raise EngineError("--random must be at least 1")
        return random_images(model, args.random), None, f"{args.random} random images"
    images, labels, description = load_images(args.data, args.split, args.limit, args.data_dir,
                                               verify_checksums=not args.no_checksum)
    _check_images(model, images, description)
    return images, labels, description


def print_report(report) -> None:
    """Per-layer mismatch counts, then the total and the verdict."""
    width = max((len(name) for name in report.mismatches), default=0)
    for name, count in report.mismatches.items():
        extra = f"  first {report.first_mismatch[name]}" if name in report.first_mismatch else ""
        print(f"  {name.ljust(width)}  {count:>8} / {report.elements[name]:<10} mismatches{extra}")
    print(f"  total: {report.total_mismatches} mismatches in {len(report.mismatches)} layers "
          f"({'bit-exact' if report.ok else 'NOT bit-exact'})")


def model_sizes(model) -> dict:
    """Weight count, packed bytes (codes at wbits + requant parameters), float32 bytes."""
    params = packed_bits = requant = 0
    for layer in model.compute_layers:
        n = int(layer.arrays["weight"].size)
        params += n
        packed_bits += n * layer.attrs["wbits"]
        for key in ("thresholds", "bias"):
            if key in layer.arrays:
                requant += 4 * layer.arrays[key].size  # int32 in hardware
    for layer in model.layers:
        if layer.attrs["kind"] in ("requant", "add"):
            requant += 4 * sum(a.size for a in layer.arrays.values())
    return {"params": params, "packed_bytes": packed_bits / 8 + requant, "weight_bytes": packed_bits / 8,
            "requant_bytes": requant, "float32_bytes": 4 * params}


def cmd_inspect(args: argparse.Namespace) -> int:
    from integer_engine.format import layer_shapes

    model = _load(args.model)
    source = model.header.get("source") or {}
    name = (source.get("model") or {}).get("name", "?") if isinstance(source.get("model"), dict) else "?"
    print(f"{args.model}: {model.header['format']} v{model.header['version']}, network {name}, "
          f"input {'x'.join(map(str, model.input_shape))} uint8, {len(model.layers)} layers")
    rows = [("layer", "kind", "input", "output", "W/A bits", "out max", "MACs/image")]
    for layer in model.layers:
        a = layer.attrs
        bits = f"{a['wbits']}/{a['abits']}" if layer.is_compute else "-"
        out = a.get("output", "")
        out_max = "f32 logits" if out == "logits" else ("int32 acc" if out == "accumulator" else str(a.get("out_max")))
        rows.append((layer.name, a["kind"], "x".join(map(str, a["in_shape"])), "x".join(map(str, a["out_shape"])),
                     bits, out_max, f"{a['macs']:,}" if layer.is_compute else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    sizes = model_sizes(model)
    total_macs = sum(r["macs"] for r in layer_shapes(model))
    print(f"{sizes['params']:,} weights: packed {_human_bytes(sizes['weight_bytes'])} + requantization "
          f"{_human_bytes(sizes['requant_bytes'])} = {_human_bytes(sizes['packed_bytes'])} vs float32 "
          f"{_human_bytes(sizes['float32_bytes'])} ({sizes['float32_bytes'] / max(sizes['packed_bytes'], 1):.1f}x "
          f"smaller); {total_macs:,} MACs/image")
    return 0
