"""The training CLI end to end on tiny data: files written, exact resume, bad inputs."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinypact import trainer
from tinypact.checkpoint import load_checkpoint
from tinypact.evaluate import main as evaluate_main
from tinypact.recipes import recipe
from tinypact.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--limit-train", "48", "--val-size", "24", "--limit-test", "40", "--batch-size", "16",
        "--augment", "crop-flip", "--no-progress"]


def tiny_config(**changes):
    values = dict(limit_train=48, val_size=24, limit_test=40, batch_size=16, epochs=2,
                  augment="crop-flip")
    values.update(changes)
    return recipe("sample", **values)


def quiet(_message):
    pass


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 2-epoch tiny run, shared (read-only) by several tests."""
    run = tmp_path_factory.mktemp("full") / "run"
    return trainer.fit(tiny_config(), run, progress=False, log=quiet)


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "tinypact.train", "--epochs", "1", *TINY,
                           "--out", str(run)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    out = proc.stdout
    for expected in ("dataset  sample", "parameters", "W2A2", "estimate", "test accuracy",
                     "python -m tinypact.evaluate", "python -m integer_engine run",
                     "python -m integer_engine simulate"):
        assert expected in out, f"{expected!r} missing from the CLI output:\n{out}"
    for name in ("checkpoint.npz", "metrics.jsonl", "config.json", "result.json",
                 "error_curves.png", "alphas.png", "model.tpq"):
        assert (run / name).exists(), f"{name} not written; run dir has {sorted(p.name for p in run.iterdir())}"
    for name in ("error_curves.png", "alphas.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]
    for key in ("loss", "train_error", "val_error", "alphas", "lr", "epoch_time"):
        assert key in records[0], f"metrics record lacks {key!r}: {records[0]}"
    assert set(records[0]["alphas"]) == {"act0", "act1", "act2"}, records[0]["alphas"]
    assert "integer-only accuracy" in out and "predictions equal" in out, out
    assert "0 mismatching codes" in out and "bit-exact" in out, out
    # No silent pause: the two steps that compile Numba kernels on a first run say so first.
    lines = out.splitlines()
    starts = [next(i for i, line in enumerate(lines) if line.startswith(word))
              for word in ("timing   ", "estimate ", "wrote    ", "export   to ", "export   " + str(run))]
    assert starts == sorted(starts), out
    assert "compiles tinypact's kernels" in lines[starts[0]], out
    assert "compiles the engine's kernels" in lines[starts[3]], out

    # The checkpoint honours the contract integer_engine reads.
    with np.load(run / "checkpoint.npz", allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"][()]))
        assert meta["format"] == "tinypact-checkpoint" and meta["epoch"] == 1
        assert meta["graph"][0]["op"] == "input"
        for node in meta["graph"]:
            for field in ("weight", "bias"):
                if node.get(field):
                    assert f"model/{node[field]}" in npz.files, f"graph names missing {node[field]}"


def test_evaluate_matches_training_result(full_run, capsys):
    assert evaluate_main([str(full_run.run_dir), "--json", "--limit", "40", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 40 and report["epoch"] == 2
    assert report["accuracy"] == pytest.approx(full_run.test_accuracy, abs=1e-12), (
        report, full_run.test_accuracy)


def test_resume_equals_uninterrupted(full_run, tmp_path):
    config = tiny_config()
    first = trainer.fit(config, tmp_path / "split", progress=False, log=quiet, stop_after=1)
    assert not first.finished and load_checkpoint(tmp_path / "split").epoch == 1
    resumed = trainer.fit(config, tmp_path / "split", resume=True, progress=False, log=quiet)

    expected, got = full_run.model.state_dict(), resumed.model.state_dict()
    assert list(expected) == list(got)
    for key in expected:
        assert np.array_equal(expected[key], got[key]), (
            f"{key}: resumed run differs from the uninterrupted one by up to "
            f"{np.max(np.abs(expected[key] - got[key]))}")
    a, b = load_checkpoint(full_run.run_dir), load_checkpoint(tmp_path / "split")
    for index, state in a.optimizer_state["state"].items():
        for name, value in state.items():
            assert np.array_equal(value, b.optimizer_state["state"][index][name]), (index, name)
    strip = [{k: v for k, v in r.items() if k != "epoch_time"} for r in full_run.history]
    assert strip == [{k: v for k, v in r.items() if k != "epoch_time"} for r in resumed.history]
    assert resumed.test_error == full_run.test_error
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_interrupt_keeps_checkpoint_and_prints_resume_command(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_epoch = trainer._train_one_epoch

    def interrupted_in_epoch_2(model, optimizer, loader, config, epoch, progress):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(model, optimizer, loader, config, epoch, progress)

    monkeypatch.setattr(trainer, "_train_one_epoch", interrupted_in_epoch_2)
    argv = ["--epochs", "2", *TINY, "--no-export", "--out", str(run)]
    assert train_main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted; resume with `python -m tinypact.train") and \
        err.endswith("--resume`"), err
    assert load_checkpoint(run).epoch == 1

    monkeypatch.setattr(trainer, "_train_one_epoch", real_epoch)
    assert train_main(argv + ["--resume"]) == 0
    assert load_checkpoint(run).epoch == 2


@pytest.mark.parametrize("argv, message", [
    (["imagenet"], "invalid choice: 'imagenet'"),
    (["--model", "vgg16"], "invalid choice: 'vgg16'"),
    (["--shortcut-bits", "2"], "the fmnist network has no shortcuts (add --model resnet20)"),
    (["svhn", "--shortcut-bits", "4"], "the svhn network has no shortcuts"),
    (["--model", "resnet20", "--shortcut-bits", "9"],
     "--shortcut-bits must be one of 1..8, 16 or 32, got 9"),
    (["--bits", "0"], "--bits must be one of 1..8, 16 or 32, got 0"),
    (["--bits", "33"], "--bits must be one of 1..8, 16 or 32, got 33"),
    (["--bits", "12"], "--bits must be one of 1..8, 16 or 32, got 12"),
    (["--wbits", "12"], "--wbits must be one of 1..8, 16 or 32, got 12"),
    (["--first-last-bits", "9"], "--first-last-bits must be one of 1..8, 16 or 32, got 9"),
    (["--epochs", "two"], "invalid int value: 'two'"),
    (["--svhn-extra"], "svhn_extra (--svhn-extra, SVHN's extra split) needs dataset svhn, got 'sample'"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--lr", "-1"], "--lr must be positive, got -1.0"),
    (["--val-size", "-1"], "--val-size must be >= 0, got -1"),
    (["--limit-test", "0"], "--limit-test must be at least 1, got 0"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        code = train_main(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert info.value.code == 2, f"{argv}: exit {info.value.code}"
    assert err.count("\n") == 1 and message in err, f"{argv}: stderr {err!r}"


def test_existing_run_refused_and_resume_config_checked(full_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(full_run.run_dir, run)
    argv = ["--epochs", "2", *TINY, "--no-export", "--out", str(run)]
    before = (run / "checkpoint.npz").read_bytes()

    assert train_main(argv) == 2
    assert capsys.readouterr().err == f"error: {run} exists; pass --resume to continue or choose --out\n"
    assert train_main(argv + ["--resume", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different config" in err and "lr=0.5" in err, err
    assert (run / "checkpoint.npz").read_bytes() == before, "a refused run touched the checkpoint"

    (run / "checkpoint.npz").write_bytes(before[: len(before) // 3])
    assert train_main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corrupt or truncated" in err, err
    assert evaluate_main([str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corrupt or truncated" in err, err


def test_data_error_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    from tinypact.data import DataError

    def missing(config):
        raise DataError("fashion-mnist not found in /nowhere; install dataset-fashion-mnist")
    monkeypatch.setattr(trainer, "load_splits", missing)
    assert train_main(["fashion-mnist", "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    assert capsys.readouterr().err == ("error: fashion-mnist not found in /nowhere; install "
                                       "dataset-fashion-mnist\n")
    assert not (tmp_path / "run").exists(), "a failed data load left a run directory behind"


def test_recipes_follow_the_paper():
    svhn, cifar = recipe("svhn"), recipe("cifar10")
    assert (svhn.optimizer, svhn.lr, svhn.adam_eps, svhn.schedule, svhn.step_size, svhn.gamma,
            svhn.weight_decay, svhn.batch_size, svhn.epochs) == (
        "adam", 1e-3, 1e-5, "step", 50, 0.5, 1e-7, 128, 200)
    assert (cifar.optimizer, cifar.lr, cifar.momentum, cifar.milestones, cifar.gamma,
            cifar.weight_decay, cifar.batch_size, cifar.epochs, cifar.augment) == (
        "sgd", 0.1, 0.9, [60, 120], 0.1, 2e-4, 128, 200, "crop-flip")
    assert (recipe("sample").wbits, recipe("sample").abits, recipe("sample").act_quant) == (
        2, 2, "pact")


def test_resume_without_checkpoint_is_refused_and_touches_nothing(full_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(full_run.run_dir, run)
    (run / "checkpoint.npz").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert train_main(["--epochs", "2", *TINY, "--no-export", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no checkpoint.npz to resume from" in err, err
    assert "delete" in err and "without --resume" in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before, "a refused resume wrote files"


def test_resume_removes_orphaned_temporary_files(full_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(full_run.run_dir, run)
    for name in (".checkpoint-x1.npz.tmp", ".metrics-x2.tmp"):  # what kill -9 mid-write leaves
        (run / name).write_bytes(b"half a file")
    assert train_main(["--epochs", "2", *TINY, "--no-export", "--out", str(run), "--resume"]) == 0
    assert "removed  2 temporary file(s)" in capsys.readouterr().out
    assert not list(run.glob(".*")), sorted(p.name for p in run.glob(".*"))


def test_val_size_larger_than_half_the_data_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--val-size", "100000", "--no-progress", "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert err == ("error: --val-size 100000 would hold out more than half of the 5000 sample "
                   "training images; use at most 2500\n"), err
    assert not run.exists()


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_epoch = trainer._train_one_epoch

    def diverging_in_epoch_2(model, optimizer, loader, config, epoch, progress):
        record = real_epoch(model, optimizer, loader, config, epoch, progress)
        if epoch == 1:
            next(iter(model.parameters())).data[...] = np.nan
        return record

    monkeypatch.setattr(trainer, "_train_one_epoch", diverging_in_epoch_2)
    assert train_main(["--epochs", "2", *TINY, "--no-export", "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training diverged at epoch 2" in err, err
    assert f"{run / 'checkpoint.npz'} keeps epoch 1" in err and "smaller --lr" in err, err
    assert load_checkpoint(run).epoch == 1


def test_unwritable_out_is_one_line_before_any_work(tmp_path, capsys):
    assert train_main(["--out", "/proc/tinypact-run", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write to /proc (") and err.count("\n") == 1, err


def test_progress_bars_only_on_a_terminal(full_run, capsys):
    """Without --no-progress, but stderr is not a terminal (captured): no bar lines."""
    assert evaluate_main([str(full_run.run_dir), "--limit", "40"]) == 0
    assert capsys.readouterr().err == ""


def test_recipe_of_a_network_on_another_data_set():
    """The network's own optimizer settings, the data set's epochs, batch and hold-out, a cosine
    schedule over them; the data set's own network keeps the data set's recipe."""
    r20 = recipe("fashion-mnist", model="resnet20")
    assert (r20.optimizer, r20.lr, r20.momentum, r20.weight_decay, r20.schedule, r20.alpha_lr) == (
        "sgd", 0.1, 0.9, 2e-4, "cosine", None)
    assert (r20.epochs, r20.batch_size, r20.val_size, r20.augment, r20.alpha_init) == (
        3, 128, 5000, "none", 4.0)
    assert r20.model_name == "resnet20" and recipe("fashion-mnist").model_name == "fmnist"
    small = recipe("svhn", model="fmnist")
    assert (small.optimizer, small.lr, small.alpha_lr, small.weight_decay, small.schedule,
            small.epochs, small.augment) == ("adam", 2e-3, 0.05, 1e-5, "cosine", 200, "jitter")
    assert recipe("cifar10", model="resnet20") == recipe("cifar10")
    assert recipe("fashion-mnist", model="resnet20", lr=0.05).lr == 0.05
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        recipe("sample", model="vgg").validate()


@pytest.mark.slow
def test_resnet20_on_the_sample_with_low_precision_shortcuts(tmp_path):
    """--model / --shortcut-bits end to end: the stem pads 28x28 to 32x32, the run directory
    says which network, the export is exact; float shortcuts train but are not exported."""
    from tinypact.train import config_from_args, build_parser, default_run_dir

    argv = ["--model", "resnet20", "--shortcut-bits", "2", "--epochs", "1", *TINY,
            "--limit-test", "24"]
    config = config_from_args(build_parser().parse_args(argv))
    assert default_run_dir(config, False).name == "sample-resnet20-w2a2-pact-sc2"
    proc = subprocess.run([sys.executable, "-m", "tinypact.train", *argv, "--out",
                           str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "model    resnet20" in out and "shortcuts 2-bit" in out, out
    assert "zero-padded to 32x32 in the stem conv" in out, out
    assert "recipe   sgd lr 0.1" in out, out
    assert "0 mismatching codes" in out and "bit-exact" in out, out
    meta = load_checkpoint(tmp_path / "run").meta
    assert meta["model"]["kwargs"]["in_channels"] == 1 and meta["graph"][0]["shape"] == [1, 28, 28]
    assert {n["bits"] for n in meta["graph"] if n["id"].endswith("out_act")} == {2}

    proc = subprocess.run([sys.executable, "-m", "tinypact.train", "--model", "resnet20",
                           "--shortcut-bits", "32", "--epochs", "1", *TINY, "--out",
                           str(tmp_path / "float-sc")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "export   skipped: float shortcuts cannot be exported" in proc.stdout, proc.stdout
    assert not (tmp_path / "float-sc" / "model.tpq").exists()


def test_help_gives_every_default(capsys):
    from tinypact.train import build_parser

    text = " ".join(build_parser().format_help().split())
    for expected in ("passes over the training images (default: sample 8, fashion-mnist 3, "
                     "cifar10 200, svhn 200)", "(default: sample 64,", "(default 0)",
                     "$TINYPACT_DATA", "~/.cache/tinypact", "--no-checksum"):
        assert expected in text, f"{expected!r} missing from --help"


def test_run_made_before_a_config_field_existed_still_resumes(full_run):
    """A field added to TrainConfig later (e.g. svhn_extra) takes its default in a saved config,
    so a run directory written before the field existed passes the resume check."""
    from tinypact.checkpoint import check_resume_config
    from tinypact.recipes import TrainConfig

    saved = full_run.config.to_dict()
    old = {k: v for k, v in saved.items() if k != "svhn_extra"}
    check_resume_config(TrainConfig.with_defaults(old), saved)
    assert TrainConfig.with_defaults(old) == saved


LOCK_HOLDER = """
import sys, time
from tinypact.checkpoint import run_dir_lock
with run_dir_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def test_a_run_directory_in_use_by_another_process_is_refused(full_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(full_run.run_dir, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        for extra in (["--resume"], []):  # a second resume; a fresh start told "delete it" before
            assert train_main(["--epochs", "2", *TINY, "--no-export", "--out", str(run), *extra]) == 2
            err = capsys.readouterr().err
            assert err == (f"error: {run} is in use by another training process; wait for it to "
                           f"finish (or stop it), or choose another --out\n"), err
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before, "a refused run wrote files"
    assert train_main(["--epochs", "2", *TINY, "--no-export", "--out", str(run), "--resume"]) == 0


def test_data_dir_naming_a_file_is_refused_and_the_data_source_is_printed(tmp_path, capsys):
    a_file = tmp_path / "README.md"
    a_file.write_text("not data")
    assert train_main([*TINY, "--epochs", "1", "--data-dir", str(a_file), "--no-export",
                       "--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err == (f"error: --data-dir {a_file} is a file; give the folder that "
                                       f"holds (or will hold) the data sets\n")
    assert not (tmp_path / "run").exists()
    missing = tmp_path / "no-such-folder"
    assert train_main([*TINY, "--epochs", "1", "--data-dir", str(missing), "--no-export",
                       "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    from tinypact.data.datasets import SAMPLE_PATH
    assert f"data     from {SAMPLE_PATH}\n" in out, out
    assert f"(not from --data-dir {missing}: it holds no sample files)" in out, out
    assert ", 1 epoch, " in out and "for 1 epoch + test" in out, out
