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
# set wins. tinypact/runtime.py does the same.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# Numba's OpenMP threads (its default threading layer here): how long they spin after a parallel
# kernel before they sleep. The engine runs its kernels back to back; on this project's VM a
# thread that slept at once sometimes missed a whole layer (the layer took twice its time).
# benchmarks/engine.py, SVHN at batch 512, images/s W1A1 / W2A2 / W4A4 (2-core Zen 5):
#   quiet:                 sleep at once (OMP_WAIT_POLICY=PASSIVE) 20,900 / 10,400 / 12,300 best
#                          with medians 3-29% lower; GOMP_SPINCOUNT=10000 (about 0.1 ms)
#                          23,300 / 14,600 / 13,100, medians within 4%; 100000 about the same;
#   another process busy on one core: passive 11,800 / 7,900 / 7,000, 10000 11,700 / 6,600 /
#                          6,700, 100000 6,900 / 5,400 / 2,800 (spinning took that core's turns).
# So a short spin. Only when the user set neither variable; read when the first parallel kernel
# starts (tinypact, imported first, makes them sleep at once: its training step measured better).
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from integer_engine.errors import EngineError

__all__ = ["EngineError"]
