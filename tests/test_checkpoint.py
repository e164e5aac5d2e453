"""Checkpoints: exact round trip without pickle, atomic replacement, clear errors for bad files."""
import json
import os
import zipfile

import numpy as np
import pytest

from tinypact.checkpoint import (
    CheckpointError,
    check_resume_config,
    load_checkpoint,
    prepare_run_dir,
    save_checkpoint,
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


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="has no checkpoint.npz"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.npz")


def test_run_dir_is_never_overwritten(tmp_path):
    run = prepare_run_dir(tmp_path / "run", resume=False)
    (run / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="exists; pass --resume to continue or choose --out"):
        prepare_run_dir(run, resume=False)
    assert prepare_run_dir(run, resume=True) == run
    with pytest.raises(CheckpointError, match="no run to resume"):
        prepare_run_dir(tmp_path / "other", resume=True)


def test_resume_config_check_names_the_differences():
    saved = {"lr": 0.01, "milestones": [60, 120], "data_dir": "/a"}
    check_resume_config(saved, {"lr": 0.01, "milestones": (60, 120), "data_dir": "/b"})
    with pytest.raises(CheckpointError, match=r"lr=0.1 \(run has 0.01\)"):
        check_resume_config(saved, {"lr": 0.1, "milestones": [60, 120], "data_dir": "/a"})
