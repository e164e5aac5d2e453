"""Soak test of the central promise: the integer engine equals tinypact's trained model, bit for bit.

Builds COUNT random small tinypact networks (tests/random_networks.py: every weight quantizer at
1-8 bits, PACT / DoReFa / quantized-ReLU activations at 1-8 bits, batch norms with negative, zero
and tiny gammas and tiny variances, max and average pooling, residual blocks; every other one
with tie-heavy binary-fraction constants), exports each, runs it on its images, and compares
every layer's output with tinypact's eval forward (codes, float32 logits). Prints the count, the
layers and elements compared, and every mismatch (seed, layer, first difference); exits 1 if any.

    python scripts/soak_exact.py [--count 10000] [--first-seed 0]

Any failing seed reproduces with `tests/test_engine_exact.py::check_network(seed, ties)`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import tinypact  # noqa: E402,F401,I001  (before NumPy: see tinypact/__init__.py)
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from integer_engine.export import lower_graph  # noqa: E402
from integer_engine.verify import verify_against_checkpoint  # noqa: E402
from random_networks import random_network  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="networks to check (default 10000)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first network")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    failures, layers, elements = [], 0, 0
    seeds = range(args.first_seed, args.first_seed + args.count)
    for seed in tqdm(seeds, desc="networks", disable=None):
        ties = seed % 2 == 1
        net, images = random_network(np.random.default_rng(seed), ties=ties)
        model = lower_graph(net.graph(), net.state_dict())
        report = verify_against_checkpoint(model, None, images, network=net)
        layers += len(report.mismatches)
        elements += sum(report.elements.values())
        if not report.ok or not np.array_equal(report.engine_predictions, report.other_predictions):
            failures.append(f"seed {seed} (ties={ties}): {report.first_mismatch}")
            print(f"MISMATCH {failures[-1]}", flush=True)
    seconds = time.perf_counter() - start
    print(f"{args.count} random networks (seeds {seeds.start}..{seeds.stop - 1}), {layers} layers, "
          f"{elements:,} output elements compared in {seconds:.0f} s: {len(failures)} mismatching networks")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
