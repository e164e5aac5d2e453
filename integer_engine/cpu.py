"""What the CPU can do, detected once, and which kernels that picks.

The engine's kernels are compiled by Numba for the machine they run on (LLVM's host CPU name and
features, or NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when set), so the choice of kernel follows the
same facts rather than this project's machine of the day. Measured on the machines seen so far
(docs: /README.md "Measured results"):

- AVX-512 VPOPCNTDQ (Zen 4/5, Ice Lake and later): `vpopcntq` counts 512 bits per instruction.
  The bit-serial GEMM runs a 4-row x 16-column register tile of 512-bit vectors
  (`popcount.popcount_tile`): 4-10x the scalar kernel, single core.
- POPCNT only (Zen 1-3, Haswell-Skylake): scalar `popcnt` as inline assembly, which LLVM cannot
  "vectorise" into AVX2 byte lookups (vpshufb; 1.6x slower on Zen 1).
- Neither (or not x86-64): LLVM's generic `ctpop`.

Wide layers (8-bit, or too many bit-plane passes) run an int8 dot product (`int8dot`): AVX-512
VNNI `vpdpbusd` (64 u8 x s8 MACs per instruction) where it exists, else AVX2 `vpmaddubsw` +
`vpmaddwd` (exact by construction, `int8dot.pairs_saturate`), else exact float BLAS.

`describe()` is the one-line summary that `integer_engine run` and the benchmarks print. To run
another CPU family's kernels on this machine (tests, "AVX2 code on Zen 5" measurements), set
NUMBA_CPU_NAME and NUMBA_CPU_FEATURES, e.g. NUMBA_CPU_NAME=znver1 with an AVX2 feature list:
LLVM then compiles for that CPU (16 vector registers, no AVX-512) and these properties follow.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import llvmlite.binding as llvm
import numba

# Feature names as LLVM spells them; shown by `describe()` in this order when present.
_SHOWN = ("popcnt", "avx2", "avx512f", "avx512bw", "avx512vpopcntdq", "avx512bitalg", "avx512vnni",
          "avxvnni")


@dataclass(frozen=True)
class CPU:
    name: str  # LLVM's CPU name, e.g. "znver4", "znver1", "skylake-avx512"
    features: frozenset  # LLVM feature names that are enabled, e.g. {"avx2", "popcnt"}
    x86_64: bool
    threads: int

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def popcount(self) -> str:
        """The popcount the kernels use: "vpopcntq" (512-bit vectors), "popcnt" (scalar inline
        assembly) or "ctpop" (LLVM's generic lowering)."""
        if self.x86_64 and self.has("avx512vpopcntdq") and self.has("avx512f"):
            return "vpopcntq"
        if self.x86_64 and self.has("popcnt"):
            return "popcnt"
        return "ctpop"

    @property
    def int8_dot(self) -> str:
        """The u8 x s8 dot product of `int8dot`: "vpdpbusd" (AVX-512 VNNI), "vpmaddubsw" (AVX2)
        or "generic" (plain vector code; the executor then keeps float32/64 BLAS for wide layers,
        not measured to lose there)."""
        if self.x86_64 and self.has("avx512vnni") and self.has("avx512f"):
            return "vpdpbusd"
        return "vpmaddubsw" if self.x86_64 and self.has("avx2") else "generic"

    def describe(self) -> str:
        shown = [f for f in _SHOWN if self.has(f)]
        return (f"CPU {self.name}, {self.threads} threads, features: {' '.join(shown) or 'none of note'}; "
                f"popcount kernel: {self.popcount}, int8 dot product: {self.int8_dot}")


def _features(flat: str) -> frozenset:
    return frozenset(f[1:] for f in flat.split(",") if f.startswith("+"))


@lru_cache(maxsize=None)
def detect() -> CPU:
    """The CPU Numba compiles for (host, unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES override it)."""
    name = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    flat = numba.config.CPU_FEATURES
    if flat is None:
        # A CPU named without a feature list compiles for that CPU's default features, which the
        # host query cannot tell: assume none (the generic kernels are right everywhere).
        flat = "" if numba.config.CPU_NAME else llvm.get_host_cpu_features().flatten()
    return CPU(name=name, features=_features(flat), x86_64=llvm.get_process_triple().startswith("x86_64"),
               threads=numba.config.NUMBA_NUM_THREADS)


def describe() -> str:
    """One line: CPU name, threads, the features that matter to the kernels, the popcount chosen."""
    return detect().describe()
