"""Run directories and checkpoints: `RUN/checkpoint.npz`, the file integer_engine reads.

A checkpoint is a plain npz (no pickle anywhere, loaded with `allow_pickle=False`):

- `meta`: a 0-d str array holding JSON: `{"format": "tinypact-checkpoint", "version": 1,
  "config": ..., "model": {"name": ..., "kwargs": ...}, "epoch": ..., "graph": [...], ...}`;
- `model/<state_dict key>`: every parameter and buffer of the model (floats as float32);
- `optim/...`, `sched/...`, `rng/...`: the arrays of the optimizer, scheduler and RNG states.

Optimizer/scheduler/RNG states are nested dicts and lists of numbers and arrays (PyTorch-style
`state_dict()`s). They are stored as a JSON tree in `meta` in which every array is replaced by
`{"__ndarray__": "<npz key>"}`, so they round-trip exactly (dtype and bits) without pickle.

Saving is atomic: the npz is written to a temporary file in the same directory, flushed to disk
and moved over the old one with `os.replace`, so a crash mid-write leaves the previous checkpoint
intact.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT = "tinypact-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.npz"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"

# Config fields that may differ between a run and its resumption (where data lives, how many
# test images to score at the end, ...): they do not change the weights a run ends with.
RESUME_FREE_FIELDS = frozenset({"data_dir", "limit_test"})


class CheckpointError(Exception):
    """A checkpoint or run directory that cannot be used; the message is one line for the user."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns: the JSON meta and the decoded state trees."""

    meta: dict
    model_state: dict[str, np.ndarray]
    optimizer_state: Any = None
    scheduler_state: Any = None
    rng_state: Any = None
    path: Path | None = field(default=None)

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))

    @property
    def config(self) -> dict:
        return self.meta.get("config", {})


# ------------------------------------------------------------------------------ state-tree codec
def encode_tree(obj: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """A JSON-able copy of `obj` whose arrays are moved to `arrays` under keys starting `prefix/`.

    Dicts with non-string keys (PyTorch's `{param_index: state}`) and tuples are tagged so that
    `decode_tree` rebuilds them with the same key types and container types.
    """
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"{prefix}: object arrays cannot be stored without pickle")
        key = f"{prefix}/{len(arrays)}"
        arrays[key] = np.array(obj, copy=True)
        return {"__ndarray__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(v, prefix, arrays) for v in obj]}
    if isinstance(obj, list):
        return [encode_tree(v, prefix, arrays) for v in obj]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_tree(v, prefix, arrays) for k, v in obj.items()}
        return {"__items__": [[encode_tree(k, prefix, arrays), encode_tree(v, prefix, arrays)]
                              for k, v in obj.items()]}
    raise TypeError(f"{prefix}: cannot store a {type(obj).__name__} in a checkpoint")


def decode_tree(obj: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """Inverse of `encode_tree`."""
    if isinstance(obj, list):
        return [decode_tree(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            key = obj["__ndarray__"]
            if key not in arrays:
                raise CheckpointError(f"array {key!r} is missing")
            return np.array(arrays[key], copy=True)
        if set(obj) == {"__tuple__"}:
            return tuple(decode_tree(v, arrays) for v in obj["__tuple__"])
        if set(obj) == {"__items__"}:
            return {_hashable(decode_tree(k, arrays)): decode_tree(v, arrays)
                    for k, v in obj["__items__"]}
        return {k: decode_tree(v, arrays) for k, v in obj.items()}
    return obj


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


# ------------------------------------------------------------------------------------ save / load
def save_checkpoint(path: str | os.PathLike, meta: Mapping[str, Any],
                    model_state: Mapping[str, np.ndarray], optimizer_state: Any = None,
                    scheduler_state: Any = None, rng_state: Any = None) -> Path:
    """Write a checkpoint atomically (temp file + fsync + os.replace) and return its path.

    `meta` gets "format" and "version" added; floating model arrays are stored as float32 (the
    contract integer_engine reads); optimizer/scheduler/RNG trees keep their exact dtypes.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    for key, value in model_state.items():
        value = np.asarray(value)
        arrays[f"model/{key}"] = value.astype(np.float32) if value.dtype.kind == "f" else value
    full_meta = {"format": FORMAT, "version": VERSION, **dict(meta)}
    full_meta["model_keys"] = list(model_state)
    full_meta["optim"] = encode_tree(optimizer_state, "optim", arrays)
    full_meta["sched"] = encode_tree(scheduler_state, "sched", arrays)
    full_meta["rng"] = encode_tree(rng_state, "rng", arrays)
    arrays["meta"] = np.array(json.dumps(full_meta))

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Whatever happened (disk full, Ctrl-C), the previous checkpoint is untouched.
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def resolve_checkpoint(run_or_file: str | os.PathLike) -> Path:
    """`RUN/` -> `RUN/checkpoint.npz`; a file path is returned as is."""
    path = Path(run_or_file)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load_checkpoint(run_or_file: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint; raise CheckpointError (one line) if it is not usable."""
    path = resolve_checkpoint(run_or_file)
    if not path.exists():
        where = Path(run_or_file)
        raise CheckpointError(f"no checkpoint at {path}" if not where.is_dir()
                              else f"{where} has no {CHECKPOINT_NAME} (did the run finish an epoch?)")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as err:
        raise CheckpointError(f"cannot read {path} ({_one_line(err)})") from None
    if magic != b"PK\x03\x04":  # npz is a zip archive
        raise CheckpointError(f"{path} is not a checkpoint (not an npz/zip file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            # Read everything now: a truncated or corrupted member only fails when it is read.
            arrays = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated: "
                              f"{_one_line(err)})") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path} is not a tinypact checkpoint (no 'meta' entry)")
    try:
        meta = json.loads(str(arrays.pop("meta")[()]))
    except (json.JSONDecodeError, IndexError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: 'meta' is not valid JSON ({_one_line(err)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tinypact checkpoint "
                              f"(format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {meta.get('version')!r}; this "
                              f"tinypact reads version {VERSION} (upgrade tinypact)")
    for required in ("config", "model", "epoch", "model_keys"):
        if required not in meta:
            raise CheckpointError(f"{path}: meta has no {required!r} field")
    model_state = {}
    for key in meta["model_keys"]:
        if f"model/{key}" not in arrays:
            raise CheckpointError(f"{path}: model array {key!r} is missing")
        model_state[key] = arrays[f"model/{key}"]
    try:
        optimizer_state = decode_tree(meta.pop("optim", None), arrays)
        scheduler_state = decode_tree(meta.pop("sched", None), arrays)
        rng_state = decode_tree(meta.pop("rng", None), arrays)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return Checkpoint(meta, model_state, optimizer_state, scheduler_state, rng_state, path)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


# ------------------------------------------------------------------------------------ run folder
def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to `path` through a temporary file + os.replace (never half-written)."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def write_metrics(run_dir: str | os.PathLike, history: list[dict]) -> None:
    """Rewrite `metrics.jsonl` (one JSON object per epoch) atomically from `history`."""
    path = Path(run_dir) / METRICS_NAME
    fd, tmp_name = tempfile.mkstemp(prefix=".metrics-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            for record in history:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_run_dir(path: str | os.PathLike) -> bool:
    """True if `path` already holds a run (a config or a checkpoint)."""
    path = Path(path)
    return (path / CONFIG_NAME).exists() or (path / CHECKPOINT_NAME).exists()


def prepare_run_dir(out: str | os.PathLike, resume: bool, create: bool = True) -> Path:
    """Create `out` for a new run (only check, if not `create`), or check it holds a run to
    resume. Never overwrites a run."""
    out = Path(out)
    if resume:
        if not is_run_dir(out):
            raise CheckpointError(f"{out} holds no run to resume (no {CONFIG_NAME} or "
                                  f"{CHECKPOINT_NAME}); drop --resume to start a new run")
        return out
    if is_run_dir(out):
        raise CheckpointError(f"{out} exists; pass --resume to continue or choose --out")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a directory; choose --out")
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out


def read_config(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / CONFIG_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is unreadable ({_one_line(err)})") from None


def check_resume_config(saved: Mapping[str, Any], requested: Mapping[str, Any],
                        where: str = "the run") -> None:
    """Raise CheckpointError naming every setting that differs between a run and its resume."""
    # Compare as JSON would store them (tuples become lists).
    saved, requested = json.loads(json.dumps(saved)), json.loads(json.dumps(requested))
    keys = (set(saved) | set(requested)) - RESUME_FREE_FIELDS
    differences = [f"{key}={requested.get(key)!r} (run has {saved.get(key)!r})"
                   for key in sorted(keys) if saved.get(key) != requested.get(key)]
    if differences:
        raise CheckpointError(f"cannot resume {where} with a different config: "
                              + ", ".join(differences))
