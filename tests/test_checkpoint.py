"""Checkpoints: exact round trip without pickle, atomic replacement, clear errors for bad files."""
import json
import os
import zipfile

import numpy as np
import pytest
from replay_hardening import rezip_with_edit

from tinypact.checkpoint import (
    CheckpointError,
    check_resume_config,
    load_checkpoint,
    prepare_run_dir,
    remove_orphans,
    save_checkpoint,
    write_metrics,
)

META = {"config": {"dataset": "sample", "lr": 0.01}, "model": {"name": "fmnist", "kwargs": {}},
        "epoch": 3, "graph": [{"id": "x", "op": "input", "inputs": [], "shape": [1, 28, 28]}]}


def _model_state():
    rng = np.random.default_rng(0)
    return {"conv0.weight": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
            "bn.running_var": rng.random(4).astype(np.float32),
            "bn.num_batches_tracked": np.array(7, dtype=np.int64)}


def _optimizer_state():
    rng = np.random.default_rng(1)
    return {"state": {0: {"step": 5, "exp_avg": rng.standard_normal(3)},
                      1: {"step": 5, "exp_avg": rng.standard_normal((2, 2)).astype(np.float32)}},
            "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "params": [0, 1]}]}


def test_round_trip_is_exact_and_pickle_free(tmp_path):
    path = tmp_path / "checkpoint.npz"
    rng_state = np.random.default_rng(5).bit_generator.state
    save_checkpoint(path, META, _model_state(), _optimizer_state(), {"last_epoch": 3}, rng_state)

    with np.load(path, allow_pickle=False) as npz:  # the integer engine's way of reading it
        meta = json.loads(str(npz["meta"][()]))
        assert meta["format"] == "tinypact-checkpoint" and meta["version"] == 1
        assert meta["graph"] == META["graph"]
        assert npz["model/conv0.weight"].dtype == np.float32

    ckpt = load_checkpoint(tmp_path)  # a run directory resolves to its checkpoint.npz
    assert ckpt.epoch == 3 and ckpt.config == META["config"]
    for key, value in _model_state().items():
        assert np.array_equal(ckpt.model_state[key], value), key
        assert ckpt.model_state[key].dtype == value.dtype, key
    expected = _optimizer_state()
    got = ckpt.optimizer_state
    assert set(got["state"]) == {0, 1}, f"int keys must survive JSON, got {list(got['state'])}"
    for index in (0, 1):
        assert got["state"][index]["step"] == 5
        assert np.array_equal(got["state"][index]["exp_avg"], expected["state"][index]["exp_avg"])
        assert got["state"][index]["exp_avg"].dtype == expected["state"][index]["exp_avg"].dtype
    assert got["param_groups"][0]["betas"] == (0.9, 0.999)
    assert ckpt.scheduler_state == {"last_epoch": 3}
    assert ckpt.rng_state == rng_state


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, META, _model_state())
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {**META, "epoch": 4}, _model_state())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"], "temp file left behind"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign", "no_meta", "pickle",
                                    "newer", "missing_array"])
def test_bad_files_raise_one_line_checkpoint_error(tmp_path, damage):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, META, _model_state(), _optimizer_state())
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif damage == "foreign":
        np.savez(path, meta=np.array(json.dumps({"format": "something-else"})))
    elif damage == "no_meta":
        np.savez(path, weights=np.zeros(3))
    elif damage == "pickle":
        np.savez(path, meta=np.array([{"a": 1}], dtype=object))
    elif damage == "newer":
        np.savez(path, meta=np.array(json.dumps({**META, "format": "tinypact-checkpoint",
                                                 "version": 99, "model_keys": []})))
    elif damage == "missing_array":
        with zipfile.ZipFile(path) as src:
            members = {n: src.read(n) for n in src.namelist() if "conv0" not in n}
        with zipfile.ZipFile(path, "w") as dst:
            for name, data in members.items():
                dst.writestr(name, data)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, f"{damage}: {message!r}"


@pytest.mark.parametrize("member, where, value", [
    ("meta.npy", "header", ord("(")),          # a malformed .npy header: tokenize.TokenError
    ("model/conv0.weight.npy", "descr", ord("i")),  # '<f4' -> '<i4': same size, other numbers
    ("model/conv0.weight.npy", "data", None),  # a weight changed (one bit flipped)
    ("meta.npy", "data", ord("9")),           # a digit of the JSON meta changed
])
def test_crc_consistent_edits_are_refused(tmp_path, member, where, value):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, META, _model_state(), _optimizer_state())
    with zipfile.ZipFile(path) as zf:
        raw = zf.read(member)
    header_end = 10 + int.from_bytes(raw[8:10], "little")
    if where == "header":
        offset = 20
    elif where == "descr":
        offset = raw.index(b"<f4") + 1
    elif member == "meta.npy":  # the UTF-32 character that is the 3 of "epoch": 3
        offset = header_end + 4 * (raw[header_end:].decode("utf-32-le").index('"epoch": 3') + 9)
    else:
        offset = header_end + 4
    rezip_with_edit(path, path, member, offset, raw[offset] ^ 1 if value is None else value)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message


def test_non_finite_weights_are_refused(tmp_path):
    state = _model_state()
    state["conv0.weight"][0, 0, 0, 0] = np.nan
    save_checkpoint(tmp_path / "checkpoint.npz", META, state)
    with pytest.raises(CheckpointError, match="NaN or infinite values in conv0.weight"):
        load_checkpoint(tmp_path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="has no checkpoint.npz"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.npz")


def test_run_dir_is_never_overwritten(tmp_path):
    run = prepare_run_dir(tmp_path / "run", resume=False)
    save_checkpoint(run / "checkpoint.npz", META, _model_state())
    with pytest.raises(CheckpointError, match="exists; pass --resume to continue or choose --out"):
        prepare_run_dir(run, resume=False)
    assert prepare_run_dir(run, resume=True) == run
    with pytest.raises(CheckpointError, match="no run to resume"):
        prepare_run_dir(tmp_path / "other", resume=True)


def test_run_without_checkpoint_is_neither_resumed_nor_overwritten(tmp_path):
    """config.json but no checkpoint (killed in epoch 1, or the file was deleted): resuming
    would start at epoch 1 and overwrite metrics.jsonl and result.json, so both are refused."""
    run = prepare_run_dir(tmp_path / "run", resume=False)
    (run / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="exists; it has no checkpoint.npz to resume from: "
                                              "delete it or choose --out"):
        prepare_run_dir(run, resume=False)
    with pytest.raises(CheckpointError, match="has no checkpoint.npz to resume from .* to start "
                                              "afresh, delete .* without --resume"):
        prepare_run_dir(run, resume=True)


def test_unwritable_or_impossible_run_dir_is_refused_before_anything_is_created(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match="is a file; choose another --out"):
        prepare_run_dir(tmp_path / "file" / "run", resume=False)
    with pytest.raises(CheckpointError, match="exists and is not a directory"):
        prepare_run_dir(tmp_path / "file", resume=False)
    # /proc refuses new entries even to root (permission bits would not stop root).
    with pytest.raises(CheckpointError, match="cannot write to /proc .*choose another --out"):
        prepare_run_dir("/proc/tinypact-run", resume=False)


def test_files_honour_the_umask_and_orphans_are_removed(tmp_path):
    old = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "checkpoint.npz", META, _model_state())
        write_metrics(tmp_path, [{"epoch": 1}])
    finally:
        os.umask(old)
    for name in ("checkpoint.npz", "metrics.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
    orphans = [".checkpoint-abc.npz.tmp", ".metrics-abc.tmp", ".config.json-abc.tmp",
               ".alphas.png.tmp.png", ".tmp-abc.tpq"]
    for name in orphans:
        (tmp_path / name).write_bytes(b"half")
    assert sorted(p.name for p in remove_orphans(tmp_path)) == sorted(orphans)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "metrics.jsonl"]


def test_resume_config_check_names_the_differences():
    saved = {"lr": 0.01, "milestones": [60, 120], "data_dir": "/a"}
    check_resume_config(saved, {"lr": 0.01, "milestones": (60, 120), "data_dir": "/b"})
    with pytest.raises(CheckpointError, match=r"lr=0.1 \(run has 0.01\)"):
        check_resume_config(saved, {"lr": 0.1, "milestones": [60, 120], "data_dir": "/a"})
