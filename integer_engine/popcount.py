"""`popcount64(x)`: the number of set bits of a uint64, callable from Numba kernels.

Numba 0.68 cannot compile `np.bitwise_count` or `int.bit_count()` in nopython mode, so the
compiled version is a tiny `numba.extending.intrinsic`.

On x86-64 with POPCNT its codegen is the `popcnt` instruction itself, as inline assembly. The
obvious alternative, LLVM's `ctpop`, lets the loop vectoriser rewrite a kernel's popcount loop
into AVX2 byte lookups (vpshufb); on this project's machine (AMD EPYC, Zen: four scalar POPCNTs
per cycle) that vectorised form made the W2A2 GEMM about 1.6x slower (measured side by side:
25-35 vs 58-65 GMAC/s on the SVHN conv shapes). Inline assembly is opaque to the vectoriser, so
every kernel keeps scalar POPCNTs. Elsewhere (other architectures, or no POPCNT) it is `ctpop`.
(CPUs with AVX-512 VPOPCNTDQ might prefer the vectorised form again: not measured here.)

Under `NUMBA_DISABLE_JIT=1` kernels run as plain Python and an intrinsic cannot be called from
Python, so the same name is bound to a pure-Python function instead.
"""
import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def _popcount64_python(x: np.uint64) -> np.uint64:
    """Pure-Python popcount (used when Numba's JIT is disabled)."""
    return np.uint64(int(x).bit_count())


def _host_has_x86_popcnt() -> bool:
    triple = llvm.get_process_triple()
    return triple.startswith("x86_64") and "+popcnt" in llvm.get_host_cpu_features().flatten()


SCALAR_POPCNT_ASM = _host_has_x86_popcnt()
if SCALAR_POPCNT_ASM:
    llvm.initialize_native_asmparser()  # Numba does not; LLVM needs it to emit inline assembly


@intrinsic
def _popcount64_llvm(typingctx, x):
    """Population count of a uint64 (any integer argument is reinterpreted as uint64)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(x)

    def codegen(context, builder, signature, args):
        (value,) = args
        # Widen/reinterpret to 64 bits first so every integer type gets a 64-bit count.
        value = context.cast(builder, value, signature.args[0], types.uint64)
        if SCALAR_POPCNT_ASM:
            i64 = ir.IntType(64)
            return builder.asm(ir.FunctionType(i64, [i64]), "popcntq $1, $0", "=r,r", [value],
                               side_effect=False)
        return builder.ctpop(value)

    return sig, codegen


popcount64 = _popcount64_python if numba.config.DISABLE_JIT else _popcount64_llvm
