"""`python -m integer_engine` subcommands export-onnx, verify-onnx, import (need the `onnx` extra).

    export-onnx MODEL.tpq -o model.onnx [--qonnx]     ONNX Runtime form, or QONNX (FINN's input)
    verify-onnx MODEL.tpq model.onnx [--data ... | --random N]
                                                       every layer vs the engine (exported), or
                                                       vs the QONNX source (imported): 0 mismatches
    import model.onnx -o MODEL.tpq                     a Brevitas/QONNX model -> .tpq
User mistakes raise EngineError (one line, exit 2); verify-onnx exits 1 on a mismatch.
"""
from __future__ import annotations

import argparse
import os

from integer_engine.commands import (MODEL_HELP, _data_args, _load, check_output_path, print_report,
                                     verify_images)
from integer_engine.errors import EngineError

FINN_NEXT_STEPS = """next (FINN, in its own venv: docs/interop.md):
  .venv-finn/bin/python scripts/finn_frontend.py {model} --out finn   # FINN's front end, checked vs the engine
  finn build build.yaml {path}                                       # with Vivado: the hardware build"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-onnx", help=".tpq -> ONNX for ONNX Runtime, or QONNX for FINN (--qonnx)",
                       description="Write the integer model as standard ONNX that ONNX Runtime runs "
                                   "bit-exactly, or with --qonnx as QONNX (Quant-marked integer "
                                   "weights, MultiThreshold) for FINN. Needs the onnx extra.")
    p.add_argument("model", metavar="MODEL.tpq", help=MODEL_HELP)
    p.add_argument("-o", "--output", required=True, metavar="ONNX")
    p.add_argument("--qonnx", action="store_true", help="QONNX form (FINN's input) instead of ONNX Runtime's")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="with --qonnx: the fixed batch size written into every tensor shape (default 1, "
                        "FINN's convention); the ONNX Runtime form takes any batch")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("verify-onnx", help="engine vs ONNX Runtime / qonnx on every layer (0 mismatches)",
                       description="Run an ONNX model and the integer engine on the same images and "
                                   "compare every layer: an exported model (export-onnx) in ONNX "
                                   "Runtime or qonnx's executor, bit for bit; an imported model's "
                                   "QONNX source in qonnx's executor (codes exactly, logits to "
                                   "1e-5). Exits 1 on any mismatch.")
    p.add_argument("model", metavar="MODEL.tpq", help=MODEL_HELP)
    p.add_argument("onnx", metavar="ONNX")
    _data_args(p, required=False)
    p.add_argument("--random", type=int, default=64, metavar="N",
                   help="without --data: N random images (default 64)")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=cmd_verify_onnx)

    p = sub.add_parser("import", help="QONNX (Brevitas export) -> .tpq",
                       description="Import a QONNX model as Brevitas exports it (its input fed with "
                                   "x = p / 255): thresholds by exact search over the source's own "
                                   "arithmetic. Then: verify-onnx MODEL.tpq SOURCE.onnx, run, simulate.")
    p.add_argument("onnx", metavar="ONNX")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.tpq")
    p.set_defaults(func=cmd_import)


def _load_onnx(path: str):
    from integer_engine.interop import require

    onnx = require("onnx")
    if not os.path.isfile(path):
        raise EngineError(f"ONNX model not found: {path}")
    try:
        return onnx.load(path)
    except Exception as err:  # protobuf's DecodeError and onnx's own errors share no base class
        raise EngineError(f"{path} is not a readable ONNX model ({str(err).splitlines()[0][:150]})") from None


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from integer_engine.interop import require

    onnx = require("onnx")
    check_output_path(args.output, "model.onnx")
    model = _load(args.model)
    if args.batch < 1:
        raise EngineError(f"--batch must be at least 1, got {args.batch}")
    if args.qonnx:
        from integer_engine.interop.to_qonnx import to_qonnx
        proto = to_qonnx(model, batch=args.batch)
    else:
        if args.batch != 1:
            raise EngineError("--batch applies to --qonnx only (the ONNX Runtime form takes any batch)")
        from integer_engine.interop.to_onnx import to_onnx
        proto = to_onnx(model)
    onnx.checker.check_model(proto)
    from integer_engine.format import write_atomic

    try:
        write_atomic(args.output, lambda handle: handle.write(proto.SerializeToString()))
    except OSError as err:
        raise EngineError(f"cannot write {args.output} ({err.strerror or err}); choose another "
                          f"-o") from None
    form = "QONNX (FINN's input; run it with qonnx's execute_onnx)" if args.qonnx else "ONNX (for ONNX Runtime)"
    print(f"wrote {args.output}: {form}, {len(proto.graph.node)} nodes for {len(model.layers)} layers; "
          f"check it: python -m integer_engine verify-onnx {args.model} {args.output}")
    if args.qonnx:
        print(FINN_NEXT_STEPS.format(model=args.model, path=args.output))
    return 0


def cmd_verify_onnx(args: argparse.Namespace) -> int:
    from integer_engine.interop.check import compare_with_engine, compare_with_source
    from integer_engine.interop.graph import META_LAYERS, metadata
    model = _load(args.model)
    proto = _load_onnx(args.onnx)
    images, _, description = verify_images(args, model)
    batch = max(1, args.batch_size)
    if META_LAYERS in metadata(proto):
        from integer_engine.format import model_digest
        from integer_engine.interop.graph import META_FORM, META_MODEL

        recorded = metadata(proto).get(META_MODEL)
        if recorded and recorded != model_digest(model):
            raise EngineError(f"{args.onnx} was exported from another model than {args.model} (its "
                              f"recorded SHA-256 differs): compare a model with its own export "
                              f"(export-onnx {args.model} -o NEW.onnx)")
        executor = "qonnx's executor" if metadata(proto).get(META_FORM) == "qonnx" else "ONNX Runtime"
        report = compare_with_engine(model, proto, images, batch_size=batch)
    else:
        if (model.header.get("source") or {}).get("importer") is None:
            raise EngineError(f"{args.onnx} was not exported by integer_engine and {args.model} was not "
                              f"imported: nothing to compare (export-onnx writes a comparable model)")
        executor = "its QONNX source in qonnx's executor"
        report = compare_with_source(model, proto, images, batch_size=batch)
    print(f"engine vs {executor} on {description}:")
    print_report(report)
    if META_LAYERS in metadata(proto):
        bypassed = [layer.name for layer in model.layers if layer.name not in report.mismatches]
        if bypassed:  # e.g. a Flatten the QONNX form takes apart by digits (docs/interop.md)
            print(f"  not compared, no tensor of their own in this form: {', '.join(bypassed)}")
    if report.other_predictions is not None:
        same = float((report.engine_predictions == report.other_predictions).mean())
        print(f"  predictions equal on {same:.2%} of {len(images)} images")
    return 0 if report.ok else 1


def cmd_import(args: argparse.Namespace) -> int:
    from integer_engine.format import save_model
    from integer_engine.interop.from_qonnx import import_qonnx

    check_output_path(args.output)
    model = import_qonnx(args.onnx)
    try:
        save_model(model, args.output)
    except OSError as err:
        raise EngineError(f"cannot write {args.output} ({err.strerror or err}); choose another "
                          f"-o") from None
    bits = ", ".join(f"{layer.name} W{layer.attrs['wbits']}A{layer.attrs['abits']}" for layer in model.compute_layers)
    print(f"wrote {args.output}: {len(model.layers)} layers ({bits})")
    print(f"next: python -m integer_engine verify-onnx {args.output} {args.onnx}\n"
          f"      python -m integer_engine simulate {args.output}")
    return 0
