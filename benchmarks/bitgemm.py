"""Bit-serial and 8-bit integer GEMMs against float32 np.matmul, on the same shapes in one run.

    python benchmarks/bitgemm.py           # SVHN conv GEMMs at batch 128 + 512x512x4096
    python benchmarks/bitgemm.py --quick   # three shapes, fewer repetitions

For each shape M x N x K (MACs = M*N*K) it times float32 `a @ w.T`, the bit-serial popcount
GEMM on pre-packed planes at W1A1, W2A2, W4A4, and `int_gemm` (uint8 activations x 8-bit odd
weight codes in int16), keeping each kernel's best time over several rounds (see `best_times`). Prints GMAC/s and the ratio to float32 matmul's
throughput (ratio > 1: faster than float32). Targets: W2A2 >= 1.5x, W1A1 >= 4x.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
# integer_engine first: importing it before NumPy shortens OpenBLAS's idle spin
# (integer_engine/__init__.py), which would otherwise take the cores from the next Numba kernel.
import integer_engine  # noqa: E402,F401,I001
import numpy as np  # noqa: E402

from integer_engine.bitpack import bit_planes
from integer_engine.kernels import bitserial_gemm, conv_bit_planes, int_gemm

# (name, M, N, K): SVHN conv layers as GEMMs at batch 128 (M = 128*OH*OW, N = out channels,
# K = C*kh*kw), then a square-ish GEMM.
SHAPES = [
    ("conv1", 41472, 64, 432),
    ("conv2", 41472, 64, 576),
    ("conv3", 6272, 128, 576),
    ("conv4", 6272, 128, 1152),
    ("conv5", 3200, 128, 1152),
    ("conv6", 128, 512, 3200),
    ("gemm", 512, 512, 4096),
]
QUICK = ["conv2", "conv4", "gemm"]


def best_times(fns: dict, reps: int, rounds: int = 3) -> dict:
    """Best wall time of each callable: `rounds` rounds, each running every callable `reps` times
    in a row after one untimed call.

    Runs are grouped per kernel, not alternated call by call: after a BLAS call OpenBLAS's worker
    threads may keep spinning for a while (see the import of integer_engine above), and a Numba kernel
    started in that window shares the two cores with them (measured here: bit-serial GEMMs about
    1.7x slower right after np.matmul). Repeating the rounds still spreads slow drifts in
    background load over all kernels."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            for _ in range(reps):
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench_shape(m: int, n: int, k: int, reps: int, rng: np.random.Generator) -> dict:
    a32 = rng.standard_normal((m, k), dtype=np.float32)
    w32 = rng.standard_normal((n, k), dtype=np.float32)
    fns = {"float32 matmul": lambda: a32 @ w32.T}
    for bits in (1, 2, 4):
        a_planes = bit_planes(rng.integers(0, 2**bits, (m, k)), bits)
        w_planes = bit_planes(rng.integers(0, 2**bits, (n, k)), bits)
        fns[f"W{bits}A{bits} bitserial"] = (
            lambda a_p=a_planes, w_p=w_planes: bitserial_gemm(a_p, w_p))
    a8 = rng.integers(0, 256, (m, k)).astype(np.uint8)
    w8 = (2 * rng.integers(0, 256, (n, k)) - 255).astype(np.int16)
    fns["W8A8 int_gemm"] = lambda: int_gemm(a8, w8)
    return best_times(fns, reps)


def bench_conv_packing(reps: int, rng: np.random.Generator) -> tuple[float, float]:
    """SVHN conv2 at batch 128 (2-bit codes 64x18x18, 3x3 kernel, padding 1: the 41472x64x576
    GEMM): fused im2col + packing time next to the W2A2 GEMM it feeds."""
    x = rng.integers(0, 4, (128, 64, 18, 18)).astype(np.uint8)
    w_planes = bit_planes(rng.integers(0, 4, (64, 576)), 2)
    a_planes = conv_bit_planes(x, 3, 3, 1, 1, 2)
    t = best_times({"pack": lambda: conv_bit_planes(x, 3, 3, 1, 1, 2),
                    "gemm": lambda: bitserial_gemm(a_planes, w_planes)}, reps)
    return t["pack"], t["gemm"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three shapes, fewer repetitions")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds per kernel")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 5)
    rng = np.random.default_rng(0)
    shapes = [s for s in SHAPES if not args.quick or s[0] in QUICK]

    print(f"{'shape':<22} {'kernel':<18} {'GMAC/s':>8} {'x float32':>10}")
    for name, m, n, k in shapes:
        times = bench_shape(m, n, k, reps, rng)
        macs = m * n * k
        label = f"{name} {m}x{n}x{k}"
        for kernel, seconds in times.items():
            ratio = times["float32 matmul"] / seconds
            print(f"{label:<22} {kernel:<18} {macs / seconds / 1e9:8.1f} {ratio:10.2f}")
            label = ""
    pack, gemm = bench_conv_packing(reps, rng)
    print(f"\nconv2 (batch 128, 2-bit): conv_bit_planes {pack * 1e3:.1f} ms, "
          f"W2A2 GEMM {gemm * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
