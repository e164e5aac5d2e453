"""tinypact: learn, and do, low-precision neural networks (PACT, DoReFa, SAWB) in pure NumPy."""
# Before NumPy and Numba start their threads: how they wait, and keeping freed memory for reuse
# (tinypact/runtime.py says why and what each was measured to save).
from tinypact import runtime as _runtime

_runtime.configure()

from tinypact.tensor import Tensor, is_grad_enabled, no_grad, tensor
from tinypact.random import manual_seed
from tinypact import functional, nn, optim  # noqa: E402,F401  (after Tensor: they build on it)

__version__ = "0.1.0"
__all__ = ["Tensor", "tensor", "no_grad", "is_grad_enabled", "manual_seed", "functional", "nn",
           "optim"]
