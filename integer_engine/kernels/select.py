"""Kernel selection: which kernel family and which compiled variant a layer gets, by a fixed rule
per CPU family (`cpu.detect()`: the popcount and the int8 dot product the CPU has).

- `BITSERIAL_KERNEL`: "vector" (the fused kernels on 512-bit popcount tiles: VPOPCNTDQ, or AVX2's
  lowering of them) or "scalar" (one POPCNT per word, unfused);
- `SPECIALISED_PAIRS`: the (abits, wbits) pairs compiled with constant plane counts;
- `BITSERIAL_MAX_PASSES`: a layer of abits * wbits plane passes beyond this runs the int8 kernels
  (when the CPU has an int8 dot product, `INT8_DOT`) instead of the bit-serial ones;
  `CALIBRATE_MAX_PASSES`: how far `Engine(calibrate=...)` times both families;
- `split_for`: which exact AVX2 int8 sequence the weights need (`int8dot.pairs_saturate`);
- `float32_conv`: which int8-family convs run the exact float32 tile (`floatdot`) instead.
"""
import numpy as np

from integer_engine.cpu import detect
from integer_engine.kernels import int8dot
from integer_engine.kernels.floatdot import float32_exact
from integer_engine.kernels.popcount import POPCOUNT

# (abits, wbits) pairs with their own compiled kernel; the rest share the generic one. Each
# specialisation costs a few seconds of compilation once per machine (then the disk cache).
SPECIALISED_PAIRS = frozenset({(1, 1), (2, 2), (3, 3), (4, 4)})


# "vector": the register tiles of `popcount.popcount_tile` and the fused kernels built on them,
# with VPOPCNTDQ (512-bit `vpopcntq`) or, on AVX2 CPUs without it, LLVM's AVX2 lowering of the
# same vector popcounts (nibble lookups, `vpshufb`); "scalar": one 64-bit POPCNT at a time, unfused.
# On Zen 1 (AVX2) the fused vector kernels ran the SVHN network at W1A1 1.6x as fast as the scalar
# kernel at batch 1 (one thread: 2.4 vs 3.8 ms per image) and 1.4x at batch 512 (2 threads: 1,600
# vs 1,170 images/s): what the fusions save (the patch planes, the int64 GEMM result, separate
# threshold and pool passes) outweighs the slower popcount.
_CPU = detect()
BITSERIAL_KERNEL = "vector" if POPCOUNT == "vpopcntq" or (_CPU.x86_64 and _CPU.has("avx2")) else "scalar"


def split_for(a_max: int, wt: np.ndarray, w_abs_max: int | None) -> bool:
    """`int8dot.pairs_saturate` for codes <= a_max against the packed int8 weights wt, whose
    largest magnitude is w_abs_max (found here if None: a pass over the weights, so the executor
    passes it)."""
    if int8dot.LOWERING != "vpmaddubsw":
        return False
    if w_abs_max is None:
        w_abs_max = int(np.abs(wt.astype(np.int16)).max()) if wt.size else 0
    return int8dot.pairs_saturate(a_max, w_abs_max)


def float32_conv(a_max: int, w_abs_max: int, acc_bound: int) -> bool:
    """Whether a threshold conv of the int8 family, codes <= a_max against int8 weights of
    magnitude <= w_abs_max, runs the float32 tile (`floatdot.float_conv_tile`) instead: where its
    int8 weights need AVX2's split sequence (no VNNI: `int8dot.pairs_saturate`, e.g. 8-bit pixels
    against 8-bit weights) and float32 is exact for it (`float32_exact(acc_bound)`). Measured on
    Zen 1 (2 GHz, AVX2), SVHN's first layer (5x5 on 3 channels, 48 outputs, 2x2 max-pool fused):
    at batch 1 on one thread 419 vs 702 us, at batch 512 on 2 threads 166 vs 208 ms. Where the
    int8 tile needs no split, it is at least as fast (W4A4 conv1-conv5 at batch 1: 600-775 vs
    600-719 us, and 1.1 vs 0.13 ms on the one-pixel conv6, whose float32 weights are 4x larger),
    and with VNNI (64 MACs per instruction) far faster: those keep the int8 tile."""
    return int8dot.pairs_saturate(a_max, w_abs_max) and float32_exact(acc_bound)


# Bit-serial popcount GEMM costs abits * wbits AND+POPCNT passes per 64 MACs; beyond about this
# many it loses to the integer GEMM the CPU has. Against float32 BLAS, scalar popcounts win up to
# W3A3 (Zen 1). With VNNI (`int8dot`, 64 u8 x s8 MACs per instruction) against 512-bit popcounts
# (Zen 5): the bare GEMMs favour bit-serial at W2A2 (benchmarks/bitgemm.py: 350-600 vs 230-390
# GMAC/s) and W4A4 int8 (110-140 vs 230-390). Whole layers are closer: with the patch gather in
# both fused kernels, the SVHN network at W2A2 ran as fast bit-serial as int8 (batch 512,
# interleaved: 2639 vs 2584 images/s best, 2452 vs 2439 median; before the bit-serial gather was
# fused, 0.8x), and at W1A1 1.4x faster bit-serial (3633 vs 2642).
# AVX2 int8 (`vpmaddubsw`) against scalar POPCNT: compiled for znver1 (AVX2, 16 registers) and run
# on Zen 5, whole SVHN layers at 64 images (`Engine(calibrate=64)`), scalar bit-serial won only at
# W1A1 (and not every layer: conv1 3.2 ms int8 vs 5.9); at W2A2 int8 took half the time. With the
# fused vector kernels on an AVX2-only CPU (Zen 1, `vpmaddubsw` against AVX2 vector popcounts), W2A2
# ran faster bit-serial than int8: SVHN at batch 1 on one thread 4.0 vs 4.6 ms per image, at batch
# 512 on 2 threads 760 vs 680 images/s. So wherever the fused vector kernels run, the crossover is
# at 4 passes (W2A2 bit-serial, W4A4 int8); `Engine(calibrate=...)` measures the machine at hand.
INT8_DOT = int8dot.LOWERING != "generic"
if BITSERIAL_KERNEL == "vector" and INT8_DOT:
    BITSERIAL_MAX_PASSES = 4
elif int8dot.LOWERING == "vpmaddubsw":
    BITSERIAL_MAX_PASSES = 1
else:
    BITSERIAL_MAX_PASSES = 9
# `Engine(calibrate=...)` times both kernel families up to W4A4 (16 passes); past that bit-serial
# never came close (W8A8 conv1: 150 ms vs 3 ms int8 on Zen 5).
CALIBRATE_MAX_PASSES = 16
