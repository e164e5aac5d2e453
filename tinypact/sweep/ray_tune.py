"""Run a sweep's trials on Ray Tune: a local Ray instance, or a cluster (`address`).

Each trial is a Tune trial of `_trainable` (one per (run, seed), by grid search over the trial
names) asking for `cpus_per_trial` CPUs of one machine. Every epoch, the trial reports its
metrics with a Tune checkpoint (the run directory's checkpoint.npz, config.json and
metrics.jsonl), which Tune keeps in its storage, DIR/tune. A trial that dies (a killed process,
a lost node) is restarted by Tune, up to `max_failures` times, from that checkpoint, on whichever
machine has room: `_restore` puts the checkpoint back into the run directory unless the run
directory already holds a later one, and training resumes exactly (tinypact.trainer).
`resume=True` restores the Tune experiment in DIR/tune (Tune's Tuner.restore): finished trials
are kept, the others resume.

DIR must be a path every machine of the cluster reads and writes (Ray Tune's storage_path), so
that run directories and checkpoints are visible wherever a trial runs.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Callable

from tinypact.checkpoint import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, load_checkpoint
from tinypact.sweep.spec import Sweep, Trial
from tinypact.sweep.trial import run_dir_of, train_trial, trial_error

TUNE_DIR = "tune"  # DIR/tune: Tune's experiment state and trial checkpoints
CHECKPOINT_FILES = (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME)
# A local Ray instance for tinypact needs little shared memory: trials pass nothing but their
# metrics through Ray's object store (Ray's default takes 30% of the RAM).
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 ** 2
# For tests of Tune's failure handling: "<trial name>:<epoch>" SIGKILLs the trial's process
# right after it reported that epoch, if that attempt started the trial from scratch.
KILL_AFTER_ENV = "TINYPACT_SWEEP_TEST_KILL_AFTER"

INSTALL_HINT = ("Ray Tune is not installed: pip install 'tinypact[cluster]' (in a clone: pip "
                "install -e '.[cluster]'), or run the trials one after another on this machine "
                "with --local-sequential")


class TrialFailed(Exception):
    """A trial ended in an error that retrying cannot fix (its message is one line)."""


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError:
        return False
    return True


class RayError(Exception):
    """Ray could not be started or reached (one line)."""


def run_on_ray(sweep: Sweep, out: Path, address: str | None, cpus_per_trial: int,
               resume: bool, max_failures: int, num_cpus: int | None = None,
               on_trial_done: Callable[[], None] = lambda: None,
               verbose: int = 1) -> dict[str, str]:
    """Train every trial of `sweep` into `out` on Ray Tune; {trial name: error} of the trials
    that failed for good. Without `address`, on a new local Ray instance using `num_cpus` CPUs
    (default: all). `on_trial_done()` is called (here, in the driver) as each trial completes.
    Ray is shut down before returning."""
    # Tune warns at every checkpoint of a short trial that its state syncs often; they are small.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray
    from ray import tune

    out = Path(out).resolve()
    address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable counts
    options = dict(address=address, include_dashboard=False, logging_level=logging.WARNING)
    if not address:
        # "local": a new instance, even if this machine runs a cluster (`ray start`).
        options.update(address="local", num_cpus=num_cpus,
                       object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    try:
        ray.init(**options)
    except (ConnectionError, ValueError, RuntimeError) as err:
        ray.shutdown()
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise RayError(f"could not start or reach {where}: {_error_line(err)}") from None
    if cpus_per_trial > max(ray.cluster_resources().get("CPU", 0), 1):
        ray.shutdown()
        raise RayError(f"--cpus-per-trial {cpus_per_trial} is more than the "
                       f"{ray.cluster_resources().get('CPU', 0):g} CPUs Ray has; use fewer")
    try:
        trials = {trial.name: trial for trial in sweep.trials}
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, trials=trials, out=str(out), threads=cpus_per_trial),
            {"cpu": cpus_per_trial})
        experiment = out / TUNE_DIR
        if resume and tune.Tuner.can_restore(str(experiment)):
            # Callbacks are not saved with the experiment: the restored run reports to Tune only.
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
        else:
            if experiment.exists():
                shutil.rmtree(experiment)  # an experiment that never saved its state
            tuner = tune.Tuner(
                trainable, param_space={"trial": tune.grid_search(list(trials))},
                tune_config=tune.TuneConfig(trial_name_creator=_trial_name,
                                            trial_dirname_creator=_trial_name),
                run_config=tune.RunConfig(
                    name=TUNE_DIR, storage_path=str(out), verbose=verbose,
                    callbacks=[_trial_done_callback(on_trial_done)],
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        results = tuner.fit()
        failed = {}
        for result in results:
            name = result.config.get("trial", "?")
            if result.error is not None:
                failed[name] = (f"{_error_line(result.error)} (Tune's log of it: "
                                f"{experiment / name / 'error.txt'})")
            elif result.metrics.get("failed"):
                failed[name] = result.metrics["failed"]
        return failed
    finally:
        ray.shutdown()


def _trial_done_callback(function: Callable[[], None]):
    """A Tune callback calling `function()` as each trial completes. Tune saves its run config
    with the experiment: the function is left out of that copy (a restored run has none)."""
    from ray import tune

    class TrialDone(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            if self.function is not None:
                self.function()

        def __getstate__(self):
            return {"function": None}

    callback = TrialDone()
    callback.function = function
    return callback


def _trial_name(trial) -> str:
    return trial.config["trial"]


def _error_line(error: BaseException) -> str:
    """The first line of an error's message, at most about 200 characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= 200 else line[:200].rsplit(" ", 1)[0] + " ..."


def _trainable(config: dict, trials: dict[str, Trial], out: str, threads: int) -> None:
    """One Tune trial: restore Tune's checkpoint if it is given one, train, report."""
    from ray import tune

    trial = trials[config["trial"]]
    run_dir = run_dir_of(Path(out), trial)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            _restore(Path(directory), run_dir)
    fresh = not (run_dir / CHECKPOINT_NAME).exists()
    kill_after = _kill_after(trial) if fresh else None

    def report(record: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="tinypact-tune-") as directory:
            for name in CHECKPOINT_FILES:
                shutil.copy2(run_dir / name, Path(directory) / name)
            tune.report(epoch_metrics(record),
                        checkpoint=tune.Checkpoint.from_directory(directory))
        if record["epoch"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        record = train_trial(trial, Path(out), threads, on_epoch=report)
    except Exception as err:  # noqa: BLE001 (a deterministic error is reported, not retried)
        message = trial_error(err)
        if message is None:
            raise
        tune.report({"failed": message})
        return
    tune.report({**epoch_metrics(record["history"][-1] if record["history"] else {}),
                 "test_accuracy": record["test_accuracy"],
                 "best_val_error": record["best_val_error"]})


def epoch_metrics(record: dict) -> dict:
    """The scalar metrics of an epoch's record that Tune's progress table shows."""
    return {key: record[key] for key in ("epoch", "loss", "train_error", "val_error")
            if record.get(key) is not None}


def _restore(checkpoint_dir: Path, run_dir: Path) -> None:
    """Put Tune's checkpoint into the run directory, unless it holds the same or a later epoch
    (a run directory on shared storage is at least as new as the last checkpoint reported)."""
    if (run_dir / CHECKPOINT_NAME).exists():
        try:
            if load_checkpoint(run_dir).epoch >= load_checkpoint(checkpoint_dir).epoch:
                return
        except Exception:  # noqa: BLE001 (a damaged run-dir checkpoint: take Tune's)
            pass
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        shutil.copy2(checkpoint_dir / name, run_dir / name)


def _kill_after(trial: Trial) -> int | None:
    name, _, epoch = os.environ.get(KILL_AFTER_ENV, "").rpartition(":")
    return int(epoch) if name == trial.name and epoch.isdigit() else None
