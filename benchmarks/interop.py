"""ONNX Runtime on the exported ONNX model vs the integer engine on the `.tpq`, same images.

    python benchmarks/interop.py              # fmnist W2A2, svhn W2A2, resnet20 W2A2: 512 images, 3 rounds
    python benchmarks/interop.py --quick      # 128 images, 2 rounds

Builds each tinypact network with randomised batch-norm statistics and alphas (speed does not
depend on training), exports it to `.tpq` and to ONNX (`integer_engine.interop.to_onnx`), checks
that the logits are bit-equal, and times, interleaved, best of N rounds: (a) the engine
(bit-packed popcount kernels, integer thresholds) and (b) ONNX Runtime on the CPU
(ConvInteger/MatMulInteger, threshold binary search; session with basic graph optimizations
and, separately, all of them). Prints images/s and the ratio. Both use all cores.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
import integer_engine  # noqa: E402,F401,I001  (before NumPy: OpenBLAS's idle spin, see engine.py)
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from integer_engine.executor import Engine  # noqa: E402
from integer_engine.export import lower_graph  # noqa: E402
from integer_engine.interop.to_onnx import session_options, to_onnx  # noqa: E402
from tinypact.models import build_model, randomize_statistics  # noqa: E402
from tinypact.quant import Policy  # noqa: E402

NETWORKS = [("fmnist", dict(wbits=2, abits=2)), ("svhn", dict(wbits=2, abits=2)),
            ("resnet20", dict(wbits=2, abits=2, shortcut_bits=8))]


def best_rate(run, images: np.ndarray, batch: int, rounds: int) -> float:
    """Best images/s over `rounds` passes of `run(batch)` over all images."""
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            run(images[i:i + batch])
        best = max(best, len(images) / (time.perf_counter() - start))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.images, args.rounds = 128, 2
    everything = ort.SessionOptions()
    everything.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    print(f"{'network':<10} {'engine img/s':>13} {'ORT basic':>10} {'ORT all':>9} {'engine/ORT':>11}  logits")
    for name, policy in NETWORKS:
        net = randomize_statistics(build_model(name, Policy(**policy)), 0).eval()
        model = lower_graph(net.graph(), net.state_dict())
        images = np.random.default_rng(0).integers(0, 256, (args.images, *model.input_shape), dtype=np.uint8)
        engine = Engine(model)
        serialized = to_onnx(model).SerializeToString()
        sessions = [ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
                    for options in (session_options(), everything)]
        engine.run(images[:args.batch_size])  # warm-up: Numba compilation, thread pools
        exact = all(np.array_equal(s.run(["logits"], {"input": images[:args.batch_size]})[0],
                                   engine.run(images[:args.batch_size]).logits) for s in sessions)
        rates = [best_rate(engine.run, images, args.batch_size, args.rounds)]
        for session in sessions:
            rates.append(best_rate(lambda b, s=session: s.run(["logits"], {"input": b}), images,
                                   args.batch_size, args.rounds))
        print(f"{name:<10} {rates[0]:>13.0f} {rates[1]:>10.0f} {rates[2]:>9.0f} {rates[0] / max(rates[1:]):>10.2f}x  "
              f"{'bit-equal' if exact else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
