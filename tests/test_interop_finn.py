"""FINN's front end (finn-plus 1.6.1) on models trained by the main command (its network at
W2A2, W4A4 and W1A1, and the papers' ResNet20): every stage's logits and predictions equal the
engine's, and the whole network maps to HW layers (scripts/finn_frontend.py, run in FINN's own
venv).

finn-plus is not a tinypact dependency: the test runs the script with the Python named by
TINYPACT_FINN_PYTHON, else `.venv-finn/bin/python` in the repository (.ci/run makes that venv);
without either it skips, saying how to make it. When TINYPACT_FINN_PYTHON is set (CI), a
missing or broken FINN is a failure, not a skip.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "finn_frontend.py"
STAGES = 8


def finn_python() -> str:
    explicit = os.environ.get("TINYPACT_FINN_PYTHON")
    if explicit:
        return explicit
    default = REPO / ".venv-finn" / "bin" / "python"
    if not default.exists():
        pytest.skip("finn-plus venv absent: make .venv-finn as scripts/finn-requirements.txt says "
                    "(or set TINYPACT_FINN_PYTHON)")
    probe = subprocess.run([str(default), "-c", "import finn, qonnx"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"{default} cannot import finn-plus: make it as scripts/finn-requirements.txt says")
    return str(default)


def train(tmp_path: Path, *flags: str) -> Path:
    """`python -m tinypact.train` on the bundled sample, shortened (1 epoch, 1000 images): the
    main command's network and quantizers; it exports and verifies model.tpq itself."""
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "tinypact.train", "--epochs", "1", "--limit-train", "1000",
                    "--no-progress", "--out", str(out), *flags], check=True, capture_output=True, cwd=tmp_path)
    return out / "model.tpq"


@pytest.mark.slow
@pytest.mark.parametrize("flags,images", [
    ((), 50),               # the main command: W2A2 (8-bit first and last layers)
    (("--bits", "4"), 20),  # W4A4
    (("--bits", "1"), 20),  # W1A1: bipolar weights, 1-bit activations
    # ResNet-20: residual adds, option-A shortcuts, the logits' accumulator beyond 2**24
    (("--model", "resnet20", "--limit-train", "300", "--limit-test", "100", "--val-size", "64"), 6),
])
def test_finn_frontend_equals_engine_at_every_stage(tmp_path, flags, images):
    python = finn_python()
    model = train(tmp_path, *flags)
    proc = subprocess.run([python, str(SCRIPT), str(model), "--data", "sample", "--limit", str(images),
                           "--out", str(tmp_path / "finn")], capture_output=True, text=True, cwd=tmp_path)
    stages = re.findall(r"^(\w+) +\d+ nodes  logits differ on (\d+)/(\d+) images, predictions on (\d+)",
                        proc.stdout, re.M)
    assert proc.returncode == 0, f"FINN front end failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert [s[0] for s in stages][-1] == "transpose_decomposition" and len(stages) == STAGES + 1, proc.stdout
    for stage, logits, count, predictions in stages:
        assert (logits, predictions, count) == ("0", "0", str(images)), f"{stage}: {proc.stdout}"
    assert "not mapped" not in proc.stdout
    for saved in ("dataflow_specialized.onnx", "dataflow_transposes_decomposed.onnx"):
        assert (tmp_path / "finn" / saved).exists(), saved


def test_finn_frontend_refuses_a_missing_model_in_one_line(tmp_path):
    python = finn_python()
    proc = subprocess.run([python, str(SCRIPT), str(tmp_path / "missing.tpq")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
