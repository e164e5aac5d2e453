"""One trial of a sweep: train (or resume, or find finished) the run directory DIR/<run>-seed<k>.

The code path is the train CLI's: the trial's arguments go through `tinypact.train`'s parser and
`config_from_args`, `tinypact.trainer.fit` trains, and `tinypact.train.export_and_verify` exports
RUN/model.tpq unless the sweep says no-export. So the directory is a normal run directory and,
with the same threads, holds the same numbers as `python -m tinypact.train ARGV --out RUN`.

When the trial is done it writes RUN/sweep_trial.json: the record results.json lists.
"""
from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from typing import Callable

from tinypact.checkpoint import (CHECKPOINT_NAME, CheckpointError, check_resume_config,
                                 is_run_dir, write_json_atomic)
from tinypact.recipes import TrainConfig
from tinypact.sweep.spec import Trial

RECORD_NAME = "sweep_trial.json"


def run_dir_of(out: Path, trial: Trial) -> Path:
    return Path(out) / trial.name


def finished_record(run_dir: Path, config: TrainConfig) -> dict | None:
    """The record of a trial finished in `run_dir`, or None. A trial finished with another
    config is an error (CheckpointError), never silently reused."""
    path = run_dir / RECORD_NAME
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    check_resume_config(TrainConfig.with_defaults(record["config"]), config.to_dict(),
                        str(run_dir))
    return record


def train_trial(trial: Trial, out: Path, threads: int, progress: bool = False,
                log: Callable[[str], None] = print,
                on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train one trial into DIR/<name> on `threads` threads and return its record; a finished
    trial is returned as it is, an unfinished one resumes from its last checkpoint."""
    from tinypact import _threads
    from tinypact.train import export_and_verify
    from tinypact.trainer import fit

    config = trial.config()
    run_dir = run_dir_of(out, trial)
    record = finished_record(run_dir, config)
    if record is not None:
        return record
    start = time.perf_counter()
    threads = _threads.set_threads(threads)
    resume = (run_dir / CHECKPOINT_NAME).exists()
    if is_run_dir(run_dir) and not resume:
        shutil.rmtree(run_dir)  # started, but no epoch finished: nothing to keep
    log(f"trial    {trial.name}: python -m tinypact.train {' '.join(trial.argv)} "
        f"({threads} thread{'s' if threads > 1 else ''})" + (" (resuming)" if resume else ""))
    result = fit(config, run_dir, resume=resume, progress=progress, log=log, on_epoch=on_epoch)
    if not trial.options.get("no-export", False):
        export_and_verify(result)
    record = make_record(trial, result, threads, time.perf_counter() - start)
    write_json_atomic(run_dir / RECORD_NAME, record)
    return record


def make_record(trial: Trial, result, threads: int, wall_seconds: float) -> dict:
    """results.json's entry for a trial; accuracies and errors are fractions (0-1)."""
    history = result.history
    vals = [(r["val_error"], r["epoch"]) for r in history if r.get("val_error") is not None]
    best_val, best_epoch = min(vals) if vals else (None, None)
    return {
        "run": trial.run, "seed": trial.seed, "label": trial.label, "name": trial.name,
        "options": trial.options, "argv": trial.argv, "config": result.config.to_dict(),
        "test_accuracy": result.test_accuracy, "test_error": result.test_error,
        "test_images": result.test_images,
        "best_val_error": best_val, "best_val_epoch": best_epoch,
        "final_val_error": history[-1]["val_error"] if history else None,
        "epochs": len(history),
        "train_seconds": round(sum(r["epoch_time"] for r in history), 3),
        "wall_seconds": round(wall_seconds, 3),
        "host": socket.gethostname(), "threads": threads,
        "history": history,
    }


def trial_error(err: BaseException) -> str | None:
    """The one-line message of an error a retry cannot fix (bad data, divergence, a run
    directory in the way), or None for anything else."""
    from tinypact.data import DataError

    if isinstance(err, (DataError, FloatingPointError, CheckpointError)):
        return str(err)
    return None
