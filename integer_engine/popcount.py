"""`popcount64(x)`: the number of set bits of a uint64, callable from Numba kernels.

Numba 0.68 cannot compile `np.bitwise_count` or `int.bit_count()` in nopython mode, so the
compiled version is a tiny `numba.extending.intrinsic` whose codegen is LLVM's `ctpop`; on x86-64
with POPCNT LLVM turns it into one `popcnt` instruction (and vectorises popcount loops when
profitable). Under `NUMBA_DISABLE_JIT=1` kernels run as plain Python and an intrinsic cannot be
called from Python, so the same name is bound to a pure-Python function instead.
"""
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


def _popcount64_python(x: np.uint64) -> np.uint64:
    """Pure-Python popcount (used when Numba's JIT is disabled)."""
    return np.uint64(int(x).bit_count())


@intrinsic
def _popcount64_llvm(typingctx, x):
    """LLVM `ctpop` on a uint64 (any integer argument is reinterpreted as uint64)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(x)

    def codegen(context, builder, signature, args):
        (value,) = args
        # Widen/reinterpret to 64 bits first so every integer type gets a 64-bit ctpop.
        value = context.cast(builder, value, signature.args[0], types.uint64)
        return builder.ctpop(value)

    return sig, codegen


popcount64 = _popcount64_python if numba.config.DISABLE_JIT else _popcount64_llvm
