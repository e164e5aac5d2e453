"""benchmarks/train_step.py runs end to end on a tiny batch (its figures are not checked here:
speed belongs to the benchmark's own output, not to tests)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), "--batch", "4", "--steps", "1", *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("args, expect", [
    ((), ["NumPy's BLAS: OpenBLAS", "SVHN float train step, batch 4", "page faults per step"]),
    (("--bits", "2"), ["QAT W2A2 pact", "ratio QAT / float step time"]),
    (("--profile", "--bits", "2"), ["profile of one step", "conv6 QConv2d", "act6 ActQuant"]),
    (("--avx2", "--threads", "1"), ["--avx2: NUMBA_CPU_NAME=haswell", "Haswell kernels",
                                    "threads: Numba 1, OpenBLAS 1, conv2d blocks 1"]),
])
def test_train_step_benchmark_prints_its_figures(args, expect):
    out = run(*args)
    for text in expect:
        assert text in out, f"{text!r} missing from:\n{out}"
