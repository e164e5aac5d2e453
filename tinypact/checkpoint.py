"""Run directories and checkpoints: `RUN/checkpoint.npz`, the file integer_engine reads.

A checkpoint is a plain npz (no pickle anywhere, loaded with `allow_pickle=False`):

- `meta`: a 0-d str array holding JSON: `{"format": "tinypact-checkpoint", "version": 1,
  "config": ..., "model": {"name": ..., "kwargs": ...}, "epoch": ..., "graph": [...], ...}`;
- `model/<state_dict key>`: every parameter and buffer of the model (floats as float32);
- `optim/...`, `sched/...`, `rng/...`: the arrays of the optimizer, scheduler and RNG states.

Optimizer/scheduler/RNG states are nested dicts and lists of numbers and arrays (PyTorch-style
`state_dict()`s). They are stored as a JSON tree in `meta` in which every array is replaced by
`{"__ndarray__": "<npz key>"}`, so they round-trip exactly (dtype and bits) without pickle.

Integrity: `meta["arrays"]` records every other array's dtype, shape and SHA-256, and the member
`meta_sha256` holds the SHA-256 of the meta text, so a damaged file whose zip CRCs still match
(a buggy writer, a hand edit) is refused instead of silently loaded. Weights must be finite.

Saving is atomic: the npz is written to a temporary file in the same directory, flushed to disk
and moved over the old one with `os.replace`, so a crash mid-write leaves the previous checkpoint
intact; files get the permissions the umask allows (as `open` would), not mkstemp's 0600.
A crash can leave a temporary file (`.checkpoint-*.npz.tmp`, ...); `remove_orphans` clears them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from tinypact.files import atomic_write

FORMAT = "tinypact-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.npz"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"

# Config fields that may differ between a run and its resumption (where data lives, how many
# test images to score at the end, ...): they do not change the weights a run ends with.
RESUME_FREE_FIELDS = frozenset({"data_dir", "limit_test", "verify_checksums"})
# What reading a damaged npz can raise: zip and zlib errors, and from a malformed `.npy` header
# (NumPy parses it with Python's tokenizer and ast) ValueError, SyntaxError, tokenize.TokenError.
DAMAGED_NPZ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError,
                      ValueError, KeyError, TypeError, IndexError, OverflowError, UnicodeError,
                      MemoryError, SyntaxError, tokenize.TokenError,
                      RuntimeError)  # zipfile: NotImplementedError for a flipped flag bit
# Temporary files our atomic writes use (and a kill -9 can leave behind), by glob pattern.
TEMP_PATTERNS = (".checkpoint-*.npz.tmp", ".metrics-*.tmp", ".*.json-*.tmp", ".*.png.tmp.png",
                 ".tmp-*.tpq")


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


# ------------------------------------------------------------------------------- atomic writes
def remove_orphans(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in `run_dir`; return them."""
    run_dir = Path(run_dir)
    orphans = sorted({path for pattern in TEMP_PATTERNS for path in run_dir.glob(pattern)
                      if path.is_file()})
    for path in orphans:
        path.unlink()
    return orphans


# ------------------------------------------------------------------------------------ save / load
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _array_record(array: np.ndarray) -> dict:
    """What `meta["arrays"]` stores for one array: dtype, shape and SHA-256 of its C-order bytes."""
    return {"dtype": array.dtype.str, "shape": list(array.shape),
            "sha256": _sha256(np.ascontiguousarray(array).tobytes())}


def save_checkpoint(path: str | os.PathLike, meta: Mapping[str, Any],
                    model_state: Mapping[str, np.ndarray], optimizer_state: Any = None,
                    scheduler_state: Any = None, rng_state: Any = None) -> Path:
    """Write a checkpoint atomically (temp file + fsync + os.replace) and return its path.

    `meta` gets "format", "version" and the "arrays" checksums added; floating model arrays are
    stored as float32 (the contract integer_engine reads); optimizer/scheduler/RNG trees keep
    their exact dtypes.
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
    full_meta["arrays"] = {key: _array_record(array) for key, array in arrays.items()}
    meta_text = json.dumps(full_meta)
    arrays["meta"] = np.array(meta_text)
    arrays["meta_sha256"] = np.array(_sha256(meta_text.encode("utf-8")))

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, ".checkpoint-", ".npz.tmp", fsync=True) as handle:
        np.savez(handle, **arrays)
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
    except DAMAGED_NPZ_ERRORS as err:
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated: "
                              f"{_one_line(err)}); use an intact copy or start a new run") from None
    not_npy = [name for name, value in arrays.items() if not isinstance(value, np.ndarray)]
    if not_npy:  # np.load hands back a member without the .npy magic as raw bytes
        raise CheckpointError(f"{path} is damaged: member {not_npy[0]!r} is not a .npy array; "
                              f"use an intact copy or start a new run")
    if "meta" not in arrays:
        raise CheckpointError(f"{path} is not a tinypact checkpoint (no 'meta' entry)")
    try:
        meta_text = str(arrays.pop("meta")[()])
        meta = json.loads(meta_text)
    except (json.JSONDecodeError, IndexError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: 'meta' is not valid JSON ({_one_line(err)})") from None
    _check_integrity(path, meta_text, meta, arrays)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tinypact checkpoint "
                              f"(format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {meta.get('version')!r}; this "
                              f"tinypact reads version {VERSION} (upgrade tinypact)")
    for required in ("config", "model", "epoch", "model_keys"):
        if required not in meta:
            raise CheckpointError(f"{path}: meta has no {required!r} field")
    if not isinstance(meta["model_keys"], list):
        raise CheckpointError(f"{path}: meta's model_keys is not a list")
    model_state = {}
    for key in meta["model_keys"]:
        if f"model/{key}" not in arrays:
            raise CheckpointError(f"{path}: model array {key!r} is missing")
        model_state[key] = arrays[f"model/{key}"]
    _check_finite(path, model_state)
    try:
        optimizer_state = decode_tree(meta.pop("optim", None), arrays)
        scheduler_state = decode_tree(meta.pop("sched", None), arrays)
        rng_state = decode_tree(meta.pop("rng", None), arrays)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return Checkpoint(meta, model_state, optimizer_state, scheduler_state, rng_state, path)


def _check_integrity(path: Path, meta_text: str, meta: Any, arrays: dict[str, np.ndarray]) -> None:
    """Compare the meta text and every array with the checksums saved with them.

    Checkpoints written before checksums existed have neither `meta_sha256` nor meta["arrays"]
    and are read as they are.
    """
    damaged = f"{path} is damaged although its zip checksums match"
    advice = "use an intact copy or start a new run"
    recorded = arrays.pop("meta_sha256", None)
    records = meta.get("arrays") if isinstance(meta, dict) else None
    if recorded is None and records is None:
        return
    if (recorded is None or recorded.dtype.kind != "U" or recorded.shape != ()
            or str(recorded[()]) != _sha256(meta_text.encode("utf-8"))):
        raise CheckpointError(f"{damaged} (its meta does not match meta_sha256); {advice}")
    if not isinstance(records, dict) or set(records) != set(arrays):
        raise CheckpointError(f"{damaged} (its arrays differ from the list in its meta); {advice}")
    for key, record in records.items():
        if not isinstance(record, dict) or _array_record(arrays[key]) != record:
            raise CheckpointError(f"{damaged} (array {key!r} does not match its recorded dtype, "
                                  f"shape or SHA-256); {advice}")


def _check_finite(path: Path, model_state: Mapping[str, np.ndarray]) -> None:
    bad = [key for key, value in model_state.items()
           if value.dtype.kind in "fc" and not np.all(np.isfinite(value))]
    if bad:
        raise CheckpointError(f"{path} holds NaN or infinite values in {', '.join(bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''} (the run diverged); it cannot "
                              f"be evaluated or resumed: start a new run, e.g. with a smaller --lr")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


# ------------------------------------------------------------------------------------ run folder
def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to `path` through a temporary file + os.replace (never half-written)."""
    path = Path(path)
    with atomic_write(path, f".{path.name}-", ".tmp", mode="w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.write("\n")


def write_metrics(run_dir: str | os.PathLike, history: list[dict]) -> None:
    """Rewrite `metrics.jsonl` (one JSON object per epoch) atomically from `history`."""
    with atomic_write(Path(run_dir) / METRICS_NAME, ".metrics-", ".tmp", mode="w") as handle:
        for record in history:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


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
    resume. Never overwrites a run; refuses a folder it could not write to."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a directory; choose another --out")
    if resume:
        if not is_run_dir(out):
            raise CheckpointError(f"{out} holds no run to resume (no {CONFIG_NAME} or "
                                  f"{CHECKPOINT_NAME}); drop --resume to start a new run")
        if not (out / CHECKPOINT_NAME).exists():
            raise CheckpointError(f"{out} has no {CHECKPOINT_NAME} to resume from (the run ended "
                                  f"before its first epoch, or the file was removed); to start "
                                  f"afresh, delete {out} or choose another --out, without --resume")
        check_writable(out)
        return out
    if is_run_dir(out):
        hint = ("pass --resume to continue or choose --out" if (out / CHECKPOINT_NAME).exists()
                else f"it has no {CHECKPOINT_NAME} to resume from: delete it or choose --out")
        raise CheckpointError(f"{out} exists; {hint}")
    check_writable(out)
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the run directory itself while training writes to it (flock on
    the folder: no lock file, released when the process ends however it ends). CheckpointError
    if another process holds it; no lock where the file system offers none."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(f"{run_dir} is in use by another training process; wait for it "
                                  f"to finish (or stop it), or choose another --out") from None
        except OSError:  # e.g. a network file system without locks
            pass
        yield
    finally:
        os.close(fd)


def check_writable(directory: str | os.PathLike) -> None:
    """Raise CheckpointError unless `directory` (or, if it does not exist yet, its nearest
    existing parent) lets us create files, by trying it: permission bits lie to root and on
    read-only mounts."""
    directory = Path(directory).absolute()
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CheckpointError(f"cannot create {directory}: {existing} is a file; choose another "
                              f"--out")
    try:
        if existing == directory:
            with tempfile.TemporaryFile(dir=existing):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".tinypact-probe-", dir=existing))
    except OSError as err:
        raise CheckpointError(f"cannot write to {existing} ({err.strerror or _one_line(err)}); "
                              f"choose another --out or change its permissions") from None


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
