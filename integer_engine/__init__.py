"""integer_engine: run a trained low-precision network with integer arithmetic only.

Reads the integer model file written by `integer_engine.export` (format: docs/model-format.md),
runs it with bit-packed popcount kernels, checks it bit-for-bit against a float64 reference, and
models what a systolic-array accelerator would spend on it. Never imports tinypact.
"""
from integer_engine.errors import EngineError

__all__ = ["EngineError"]
