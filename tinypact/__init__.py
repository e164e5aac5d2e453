"""tinypact: learn, and do, low-precision neural networks (PACT, DoReFa, SAWB) in pure NumPy."""
import os

# tinypact alternates NumPy's BLAS (conv and linear as matmuls) with parallel Numba kernels
# (pooling, batch-norm, im2col) on the same cores, and `python -m tinypact.train` ends by running
# integer_engine. OpenBLAS's idle threads spin for about 0.1 s (2**28 cycles) after every call
# before sleeping, and a Numba kernel that follows shares the cores with them. OpenBLAS's
# minimum spin (2**4 cycles) made integer inference clearly faster here (integer_engine/
# __init__.py); on a training step the difference was within this machine's run-to-run noise
# (1075-1224 ms either way). It only takes effect when tinypact is imported before NumPy (as in
# `python -m tinypact.train`); a value the user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from tinypact.tensor import Tensor, is_grad_enabled, no_grad, tensor
from tinypact.random import manual_seed
from tinypact import functional, nn, optim  # noqa: E402,F401  (after Tensor: they build on it)

__version__ = "0.1.0"
__all__ = ["Tensor", "tensor", "no_grad", "is_grad_enabled", "manual_seed", "functional", "nn",
           "optim"]
