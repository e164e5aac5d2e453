"""`python -m integer_engine`: export, run, verify, inspect, simulate.

Each group of subcommands lives beside the code it drives and registers itself here:
`integer_engine.commands` (export/run/verify/inspect) and `integer_engine.accelerator.cli`
(simulate). User mistakes raise EngineError and end as one line on stderr with exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from integer_engine.errors import EngineError


def build_parser() -> argparse.ArgumentParser:
    from integer_engine import commands
    from integer_engine.accelerator import cli as accelerator_cli
    from integer_engine.interop import commands as interop_commands  # export-onnx, verify-onnx, import

    parser = argparse.ArgumentParser(
        prog="python -m integer_engine",
        description="Integer inference for networks trained with tinypact, and a systolic-array "
        "accelerator model. Typical flow: export RUN -o model.tpq; verify model.tpq; "
        "run model.tpq --data fashion-mnist; simulate model.tpq.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.register(sub)
    accelerator_cli.register(sub)
    interop_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
