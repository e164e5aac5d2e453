"""integer_engine: run a trained low-precision network with integer arithmetic only.

Reads the integer model file written by `integer_engine.export` (format: docs/model-format.md),
runs it with bit-packed popcount kernels, checks it bit for bit against the trained model (and a
plain NumPy reference), and models what a systolic-array accelerator would spend on it. Imports
tinypact only lazily, for `verify --checkpoint`.
"""
import os

# The engine alternates NumPy's BLAS (its 8-bit layers) with parallel Numba kernels (bit-serial
# layers, requantization) on the same cores. OpenBLAS's idle threads spin for about 0.1 s
# (2**28 cycles) after every call before sleeping; on this project's 2-core machine they made
# the bit-serial layer after the 8-bit first layer about 3x slower (benchmarks/engine.py, SVHN
# conv1: 127 ms vs 42 ms with OpenBLAS's minimum spin, 2**4 cycles). Only effective when
# integer_engine is imported before NumPy (as in `python -m integer_engine`); a value the user
# set wins. tinypact/__init__.py does the same.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# Numba's OpenMP threads (its default threading layer here) spin between parallel kernels by
# default; on a shared 2-core machine with other work running, the spinning took the cores from
# the threads doing the work and every GEMM hit an ~8 ms floor (W2A2 512x512x4096: 134 GMAC/s
# median; 580 with passive waiting, median within 3% of best; benchmarks/bitgemm.py). Effective
# when set before the first parallel kernel runs; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from integer_engine.errors import EngineError

__all__ = ["EngineError"]
