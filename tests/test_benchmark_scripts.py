"""benchmarks/train_step.py runs end to end on a tiny batch (its figures are not checked here:
speed belongs to the benchmark's own output, not to tests); benchmarks/engine.py's ONNX peers
are files every supported ONNX Runtime reads."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), "--batch", "4", "--steps", "1", *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("args, expect", [
    (("--model", "resnet20"), ["ResNet20 float train step, batch 4", "GFLOP/step"]),
    (("--model", "resnet20", "--bits", "2"), ["ResNet20 QAT W2A2 pact", "ratio QAT / float step time"]),
    (("--model", "resnet20", "--profile"), ["profile of one step", "layer3", "op (whole step)", "conv2d"]),
])
def test_train_step_benchmark_resnet20(args, expect):
    out = run(*args)
    for text in expect:
        assert text in out, f"{text!r} missing from:\n{out}"


def _benchmark_module(name: str):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(SCRIPT.parent))


@pytest.mark.parametrize("model", ["svhn", "resnet20"])
def test_train_step_flops_count_every_mac_of_the_network(model):
    """The GFLOP/s figure rests on the benchmark's own MAC table: it must equal the MACs of
    tinypact's network as the integer engine lowers it (every conv and linear layer)."""
    bench = _benchmark_module("train_step")
    from integer_engine.export import lower_graph
    from tinypact.models import build_model
    from tinypact.quant import Policy

    net = build_model(model, Policy(wbits=2, abits=2))
    lowered = lower_graph(net.graph(), net.state_dict())
    macs = [int(np.prod(layer.attrs["out_shape"])) * int(np.prod(layer.arrays["weight"].shape[1:]))
            for layer in lowered.layers if layer.attrs["kind"] in ("conv", "linear")]
    assert [m for m, _ in bench.layer_macs(model)] == macs


def test_train_step_torch_first_without_torch_is_one_line():
    """Without PyTorch (here hidden from the import system, installed or not), --torch-first
    ends in one line saying what to install."""
    code = ("import runpy, sys; sys.modules['torch'] = None; "
            f"sys.argv = [{str(SCRIPT)!r}, '--torch-first']; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error:") and len(done.stderr.strip().splitlines()) == 1
