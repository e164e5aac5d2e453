"""Bit-serial and int8 GEMMs against float32 np.matmul and ONNX Runtime's MatMulInteger, on the
same shapes in one run, with the fraction of the cores' instruction limits each reaches.

    python benchmarks/bitgemm.py           # SVHN conv GEMMs at batch 128 + 512x512x4096
    python benchmarks/bitgemm.py --quick   # three shapes, fewer repetitions

For each shape M x N x K (MACs = M*N*K) it times float32 `a @ w.T`, the bit-serial popcount GEMM
on pre-packed planes at W1A1, W2A2, W4A4 (the kernel the CPU gets: `integer_engine.cpu`), the
engine's int8 GEMM (`kernels.int8_gemm`: uint8 x int8 -> int32, VNNI where present) and ONNX
Runtime's MatMulInteger on the same uint8 x int8 operands (the `onnx` extra; skipped without it),
keeping each kernel's best time over several rounds (see `best_times`). Prints GMAC/s, the ratio
to float32 matmul and the fraction of the limit measured on this machine in the same run:

- popcount limit: 16 independent AND + POPCNT + ADD chains in registers (512-bit `vpopcntq` where
  VPOPCNTDQ exists, else scalar 64-bit), in one-bit MACs per second; a wbits x abits GEMM needs
  wbits * abits one-bit MACs per MAC, so its fraction is GMAC/s * wbits * abits / limit;
- int8 limit: 16 independent `vpdpbusd` chains (64 u8 x s8 MACs each), where VNNI exists.

Both limits run on all threads at once, like the GEMMs.
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
# integer_engine first: importing it before NumPy shortens OpenBLAS's idle spin
# (integer_engine/__init__.py), which would otherwise take the cores from the next Numba kernel.
import integer_engine  # noqa: E402,F401,I001
import numba  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from integer_engine import cpu
from integer_engine.bitpack import bit_planes
from integer_engine.kernels import bitserial_gemm, conv_bit_planes, conv_channel_planes, int8_gemm, int8_weights

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
_CHAINS = 16


def _chains_kernel(step, vec):
    """An intrinsic running `n` rounds of `_CHAINS` independent register chains acc = step(acc)."""

    @intrinsic
    def chains(typingctx, n):
        def codegen(context, builder, signature, args):
            accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, [c + 1] * vec.count)) for c in range(_CHAINS)]
            with cgutils.for_range(builder, args[0]):
                for acc in accs:
                    builder.store(step(builder, builder.load(acc)), acc)
            total = builder.load(accs[0])
            for acc in accs[1:]:
                total = builder.add(total, builder.load(acc))
            return builder.zext(builder.extract_element(total, ir.Constant(ir.IntType(32), 0)), ir.IntType(64))

        return types.int64(n), codegen

    return chains


def _popcount_step(lanes):
    vec = ir.VectorType(ir.IntType(64), lanes)

    def step(builder, acc):
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec]), f"llvm.ctpop.v{lanes}i64")
        mask = ir.Constant(vec, [0x5DEECE66D] * lanes)
        return builder.add(acc, builder.call(ctpop, [builder.and_(acc, mask)]))

    return step, vec


def _vnni_step(builder, acc):
    vec = acc.type
    dot = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                         "llvm.x86.avx512.vpdpbusd.512")
    return builder.call(dot, [acc, ir.Constant(vec, [0x01020304] * 16), ir.Constant(vec, [0x05060708] * 16)])


def limits(burst: float = 0.005, bursts: int = 40) -> dict:
    """{name: MAC/s} of the instruction limits (module docstring), all threads at once: the best of
    many short bursts, as short as the GEMMs' runs, so that both catch the machine's quiet moments
    alike (long runs under background load measured limits the GEMMs then exceeded)."""
    found = {}
    lanes = 8 if cpu.detect().popcount == "vpopcntq" else 1
    kinds = [("popcount", _chains_kernel(*_popcount_step(lanes)), 64 * lanes)]
    if cpu.detect().int8_dot == "vpdpbusd":
        kinds.append(("int8", _chains_kernel(_vnni_step, ir.VectorType(ir.IntType(32), 16)), 64))
    for name, chains, macs_per_op in kinds:
        @njit(parallel=True)
        def run(n, threads, chains=chains):
            out = np.zeros(threads, np.int64)
            for t in prange(threads):
                out[t] = chains(n)
            return out

        threads = numba.get_num_threads()
        run(10, threads)
        n, elapsed = 1 << 10, 0.0
        while elapsed < burst:
            n *= 2
            elapsed = _timed(lambda: run(n, threads))
        best = min(_timed(lambda: run(n, threads)) for _ in range(bursts))
        found[name] = n * _CHAINS * macs_per_op * threads / best
    return found


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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
                best[name] = min(best[name], _timed(fn))
    return best


def matmul_integer(w8: np.ndarray):
    """ONNX Runtime MatMulInteger with w8 (N, K) int8 as the constant B = w8.T; None without it."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "mmi",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["m", w8.shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["m", w8.shape[0]])],
        [numpy_helper.from_array(np.ascontiguousarray(w8.T), "b")])
    options = ort.SessionOptions()
    options.intra_op_num_threads = numba.get_num_threads()
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
                                   .SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda a: session.run(None, {"a": a})[0]


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
    w8 = rng.integers(-128, 128, (n, k)).astype(np.int8)
    a8_padded = np.zeros((m, k + -k % 4), np.uint8)
    a8_padded[:, :k] = a8
    wt8 = int8_weights(w8)
    fns["W8A8 int8_gemm"] = lambda: int8_gemm(a8_padded, wt8, n)
    ort_mmi = matmul_integer(w8)
    if ort_mmi is not None:
        fns["W8A8 ORT MatMulInteger"] = lambda: ort_mmi(a8)
    return best_times(fns, reps)


def bench_conv_packing(reps: int, rng: np.random.Generator) -> dict:
    """SVHN conv2 at batch 128 (2-bit codes 64x18x18, 3x3 kernel, padding 1: the 41472x64x576
    GEMM): both fused im2col + packings (bit gather, channel-major words) next to the W2A2 GEMM
    they feed."""
    x = rng.integers(0, 4, (128, 64, 18, 18)).astype(np.uint8)
    w_planes = bit_planes(rng.integers(0, 4, (64, 576)), 2)
    a_planes = conv_bit_planes(x, 3, 3, 1, 1, 2)
    return best_times({"conv_bit_planes": lambda: conv_bit_planes(x, 3, 3, 1, 1, 2),
                       "conv_channel_planes": lambda: conv_channel_planes(x, 3, 3, 1, 1, 2),
                       "W2A2 GEMM": lambda: bitserial_gemm(a_planes, w_planes)}, reps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three shapes, fewer repetitions")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds per kernel")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 5)
    rng = np.random.default_rng(0)
    shapes = [s for s in SHAPES if not args.quick or s[0] in QUICK]

    print(cpu.describe())
    print("load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    def show_limits(found: dict) -> str:
        return ", ".join(f"{name} {value / 1e9:,.0f} G{' one-bit' if name == 'popcount' else ''} MAC/s"
                         for name, value in found.items())

    # The limits are measured before and after the GEMMs (the machine's load changes in between)
    # and the higher of each is the one fractions are taken of.
    peak = limits()
    print(f"limits before, all threads: {show_limits(peak)}")
    rows = []
    for name, m, n, k in shapes:
        rows.append((name, m, n, k, bench_shape(m, n, k, reps, rng)))
    after = limits()
    print(f"limits after, all threads: {show_limits(after)}")
    peak = {name: max(value, after[name]) for name, value in peak.items()}
    print(f"\n{'shape':<22} {'kernel':<24} {'GMAC/s':>8} {'x float32':>10} {'of limit':>9}")
    for name, m, n, k, times in rows:
        macs = m * n * k
        label = f"{name} {m}x{n}x{k}"
        for kernel, seconds in times.items():
            ratio = times["float32 matmul"] / seconds
            rate = macs / seconds
            if "bitserial" in kernel:
                bits = int(kernel[1])
                fraction = f"{rate * bits * bits / peak['popcount']:9.0%}"
            elif "W8A8" in kernel and "int8" in peak:
                fraction = f"{rate / peak['int8']:9.0%}"
            else:
                fraction = f"{'-':>9}"
            print(f"{label:<22} {kernel:<24} {rate / 1e9:8.1f} {ratio:10.2f} {fraction}")
            label = ""
    times = bench_conv_packing(reps, rng)
    print("\nconv2 (batch 128, 2-bit): " + ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in times.items()))
    print("load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
