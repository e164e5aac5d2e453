"""End-to-end integer inference of the SVHN network at W2A2 vs tinypact's float32 eval forward.

    python benchmarks/engine.py               # 512 images, batch 128, 3 rounds
    python benchmarks/engine.py --quick       # 128 images, 2 rounds

Builds tinypact's `svhn` network (W2A2, 8-bit first/last layers, DoReFa weights, PACT
activations) with randomised batch-norm statistics and alphas (speed does not depend on
training), exports it to the integer engine, and times on the same uint8 images, interleaved,
best of N rounds: (a) tinypact's eval forward (fake-quantized, float32, what `tinypact.evaluate`
runs) and (b) `integer_engine` (bit-packed popcount kernels, integer thresholds). Prints
images/s for both, the ratio (target >= 2x), prediction agreement, and the engine's per-layer
table. Both run on all cores (NumPy's BLAS threads, Numba's thread pool).
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

from integer_engine.commands import format_layer_table
from integer_engine.executor import Engine
from integer_engine.export import lower_graph
from tinypact.models import build_model, randomize_statistics
from tinypact.quant import Policy
from tinypact.tensor import Tensor, no_grad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.images, args.rounds = 128, 2

    model = randomize_statistics(build_model("svhn", Policy(wbits=2, abits=2)), biases=False)
    engine = Engine(lower_graph(model.graph(), model.state_dict()))
    images = np.random.default_rng(1).integers(0, 256, (args.images, *model.input_shape), dtype=np.uint8)
    batches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]

    def run_tinypact():
        with no_grad():
            return np.concatenate([model(Tensor(b.astype(np.float32) / np.float32(255))).data.argmax(1)
                                   for b in batches])

    def run_engine():
        return np.concatenate([engine.run(b).predictions for b in batches])

    engine.run(batches[0][:2])  # compile / load the Numba kernels outside the timing
    run_tinypact()
    best = {"tinypact float32 eval": float("inf"), "integer_engine W2A2": float("inf")}
    predictions = {}
    for _ in range(args.rounds):
        for name, fn in (("tinypact float32 eval", run_tinypact), ("integer_engine W2A2", run_engine)):
            start = time.perf_counter()
            predictions[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)

    print(f"SVHN network (40x40x3, W2A2, 8-bit first/last), {args.images} images, batch {args.batch_size}, "
          f"best of {args.rounds}")
    for name, seconds in best.items():
        print(f"  {name:24s} {args.images / seconds:9.1f} images/s  ({seconds:.3f} s)")
    ratio = best["tinypact float32 eval"] / best["integer_engine W2A2"]
    agree = np.mean(predictions["tinypact float32 eval"] == predictions["integer_engine W2A2"])
    print(f"  speed-up {ratio:.2f}x (target >= 2x); prediction agreement {agree:.2%}")
    result = engine.run(batches[0])
    print(f"\nengine per-layer, one batch of {len(batches[0])}:")
    print(format_layer_table(result.stats, len(batches[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
