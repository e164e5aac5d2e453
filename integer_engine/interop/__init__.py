"""Interop: `.tpq` models to ONNX Runtime and to QONNX (FINN's input), Brevitas/QONNX models in.

    to_onnx.py        .tpq -> standard ONNX that ONNX Runtime runs bit-exactly (integer ops)
    to_qonnx.py       .tpq -> QONNX: Quant-marked integer weights + MultiThreshold (FINN-ready)
    from_qonnx.py     QONNX as Brevitas exports it -> .tpq (thresholds by exact search over the
                      source's own arithmetic, run by qonnx's executor)
    float_search.py   float32 thresholds by exact search over ordered float32 bit patterns
    graph.py          a small ONNX graph builder shared by both exporters
    check.py          run an ONNX model in ONNX Runtime or qonnx and compare every layer with the engine
    commands.py       the `export-onnx`, `verify-onnx` and `import` subcommands

Everything here needs the optional `onnx` extra (onnx, onnxruntime, qonnx): `pip install -e
'.[onnx]'`. The engine itself never imports this package; the `.tpq` file stays the contract.
"""
from __future__ import annotations

from integer_engine.errors import EngineError

EXTRA_HINT = "install the interop extra: pip install -e '.[onnx]' (onnx, onnxruntime, qonnx)"


def require(module: str):
    """Import `module` (onnx, onnxruntime, qonnx...) or raise a one-line EngineError saying how
    to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise EngineError(f"{module} is not installed: {EXTRA_HINT}") from None
