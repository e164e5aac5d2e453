"""`python -m integer_engine` export / run / verify / inspect, and its one-line errors."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from integer_engine.cli import main
from replay_hardening import rezip_with_edit
from test_engine_models import svhn_like, write_checkpoint
from test_engine_tinypact import make_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(dir, model path, data npz) for a synthetic SVHN-like checkpoint."""
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(3)
    write_checkpoint(d / "checkpoint.npz", *svhn_like(rng, size=16, width=4))
    np.savez(d / "data.npz", images=rng.integers(0, 256, (40, 3, 16, 16), dtype=np.uint8),
             labels=rng.integers(0, 10, 40))
    assert main(["export", str(d), "-o", str(d / "m.tpq")]) == 0
    return d, d / "m.tpq", d / "data.npz"


def test_export_and_inspect(exported, capsys):
    d, model, _ = exported
    assert main(["inspect", str(model)]) == 0
    out = capsys.readouterr().out
    assert "tinypact-integer-model v2" in out and "f32 logits" in out and "smaller" in out, out


def test_run_reports_accuracy_speed_and_layer_table(exported, capsys):
    d, model, data = exported
    assert main(["run", str(model), "--data", str(data), "--limit", "25", "--batch-size", "10"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"25 images, accuracy \d+\.\d\d%, ", out) and "images/s" in out, out
    assert "MACs/image" in out and "total" in out, out
    # Which kernel runs a layer depends on the CPU (integer_engine.cpu): every conv names one.
    convs = [line.split() for line in out.splitlines() if " conv " in f" {line} "]
    assert convs and all(row[5] in ("bitserial", "int8", "float32") for row in convs), out
    assert "latency per batch of 10: p50 " in out and "(3 batches)" in out, out


def test_run_at_batch_one_reports_latency_per_image(exported, capsys):
    d, model, data = exported
    assert main(["run", str(model), "--data", str(data), "--limit", "7", "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    line = next((line for line in out.splitlines() if line.startswith("latency per image: ")), None)
    assert line is not None and line.endswith("(7 batches)"), out
    p50 = float(line.split("p50 ")[1].split(" ms")[0])
    p99 = float(line.split("p99 ")[1].split(" ms")[0])
    assert 0 < p50 <= p99, line


def test_verify_bit_exact_on_data_and_random(exported, capsys):
    d, model, data = exported
    assert main(["verify", str(model), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "total: 0 mismatches" in out and "(bit-exact)" in out, out
    assert f"on {data} (40 images;" in out, "verify must check every image by default"
    assert re.search(r"engine accuracy: \d+\.\d\d%\nverified in \d+\.\d s\n$", out), out
    assert main(["verify", str(model), "--random", "5"]) == 0
    assert "5 random images" in capsys.readouterr().out


def test_verify_compares_with_the_trained_model_and_refuses_another(tmp_path, capsys):
    make_checkpoint(tmp_path / "checkpoint.npz", "fmnist", wbits=2, abits=2)
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "m.tpq")]) == 0
    assert main(["verify", str(tmp_path / "m.tpq"), "--data", "sample", "--limit", "40"]) == 0
    out = capsys.readouterr().out
    assert "engine vs trained model" in out and "predictions equal on 100.00% of 40 images" in out, out
    assert out.count("(bit-exact)") == 2, out
    other = tmp_path / "other"
    other.mkdir()
    make_checkpoint(other / "checkpoint.npz", "fmnist", seed=5, wbits=2, abits=2)
    assert main(["verify", str(tmp_path / "m.tpq"), "--checkpoint", str(other), "--random", "4"]) == 2
    err = capsys.readouterr().err
    assert "is not the checkpoint this model was exported from" in err and err.count("\n") == 1, err
    # Compared anyway, the other network's codes differ: reported, exit status 1.
    assert main(["verify", str(tmp_path / "m.tpq"), "--checkpoint", str(other), "--any-checkpoint",
                 "--random", "4"]) == 1
    assert "NOT bit-exact" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["export", "{d}/nowhere", "-o", "{d}/x.tpq"], "checkpoint not found"),
    (["inspect", "{d}/data.npz"], "not a valid integer model file"),
    (["run", "{d}/m.tpq", "--data", "{d}/missing.npz"], "cannot read images/labels"),
    (["run", "{d}/m.tpq", "--data", "{d}/m.tpq"], "cannot read images/labels"),
    (["verify", "{d}/m.tpq", "--random", "0"], "--random must be at least 1"),
    (["export", "{d}", "-o", "{d}/no/such/dir/m.tpq"], "output directory does not exist"),
    (["export", "{d}", "-o", "{d}"], "is a directory; give a file name, e.g."),
    # /proc refuses new files even to root, whose permission bits are never checked.
    (["export", "{d}", "-o", "/proc/m.tpq"], "cannot write to /proc"),
    (["export", "{d}/m.tpq", "-o", "{d}/x.tpq"], "m.tpq is an integer model (.tpq), already exported"),
    (["inspect", "{d}"], "is a directory without model.tpq; give the model file, or write it with"),
    (["run", "{d}", "--data", "{d}/data.npz"], "is a directory without model.tpq"),
    # --out is checked before anything else, even before the model is read.
    (["simulate", "{d}/m.tpq", "--out", "{d}/data.npz"], "--out {d}/data.npz is a file; give a directory"),
    (["simulate", "{d}/nowhere.tpq", "--out", "{d}/data.npz/x"], "cannot be created: {d}/data.npz is a file"),
    (["simulate", "{d}/m.tpq", "--out", "/proc/sim"], "cannot write to /proc"),
])
def test_user_errors_are_one_line_exit_2(exported, capsys, argv, message):
    d = exported[0]
    assert main([a.format(d=d) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(d=d) in err and err.count("\n") == 1, err


def test_a_run_directory_stands_for_its_model_tpq(exported, tmp_path, capsys):
    shutil.copy(exported[1], tmp_path / "model.tpq")
    assert main(["inspect", str(tmp_path)]) == 0
    assert f"{tmp_path}: tinypact-integer-model" in capsys.readouterr().out


def test_wrong_image_shape(exported, tmp_path, capsys):
    _, model, _ = exported
    np.savez(tmp_path / "small.npz", images=np.zeros((2, 3, 8, 8), np.uint8), labels=np.zeros(2, int))
    assert main(["run", str(model), "--data", str(tmp_path / "small.npz")]) == 2
    assert "the model takes (3, 16, 16)" in capsys.readouterr().err


def test_module_entry_point_corrupt_file_no_traceback(exported, tmp_path):
    bad = tmp_path / "bad.tpq"
    raw = bytearray(exported[1].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    proc = subprocess.run([sys.executable, "-m", "integer_engine", "inspect", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr


def test_malformed_npy_header_with_valid_crc_is_one_line(exported, tmp_path, capsys):
    """'(' in a .npy header makes NumPy's header parser raise tokenize.TokenError."""
    d, model, _ = exported
    rezip_with_edit(model, tmp_path / "bad.tpq", "header.npy", 20, ord("("))
    assert main(["inspect", str(tmp_path / "bad.tpq")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "bad.tpq" in err, err

    rezip_with_edit(d / "checkpoint.npz", tmp_path / "bad.npz", "meta.npy", 20, ord("("))
    assert main(["export", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "x.tpq")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "bad.npz" in err, err
    assert not (tmp_path / "x.tpq").exists()


def test_export_refuses_a_checkpoint_edited_with_valid_crcs(tmp_path, capsys):
    """tinypact records every array's SHA-256; export checks them before it lowers the graph."""
    make_checkpoint(tmp_path / "ok.npz", "fmnist", wbits=2, abits=2)
    member = "model/conv0.weight.npy"
    with zipfile.ZipFile(tmp_path / "ok.npz") as zf:
        raw = zf.read(member)
    offset = len(raw) - 3
    rezip_with_edit(tmp_path / "ok.npz", tmp_path / "bad.npz", member, offset, raw[offset] ^ 1)
    assert main(["export", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "x.tpq")]) == 2
    err = capsys.readouterr().err
    assert "damaged although its zip checksums match" in err and "conv0.weight" in err, err
    assert main(["export", str(tmp_path / "ok.npz"), "-o", str(tmp_path / "x.tpq")]) == 0
