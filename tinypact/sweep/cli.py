"""`python -m tinypact.sweep SWEEP.toml --out DIR`: train every (run, seed) of a sweep file.

Exit status: 0 all trials done; 1 a trial failed (the others are kept and reported); 2 bad
arguments, sweep file or output directory; 130 interrupted (rerun with --resume).
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from tinypact.checkpoint import CheckpointError, write_json_atomic
from tinypact.sweep.report import RESULTS_JSON, RESULTS_MD, RESULTS_PLOT, write_results
from tinypact.sweep.spec import Sweep, SweepFileError, read_sweep
from tinypact.sweep.trial import finished_record, run_dir_of, train_trial, trial_error
from tinypact.train import OneLineParser

PROG = "python -m tinypact.sweep"
SWEEP_NAME = "sweep.json"  # DIR/sweep.json: the trials of the sweep DIR holds


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="Train every (run, seed) of a sweep file, each into its own run directory "
        "DIR/<run>-seed<k>, on Ray Tune (this machine's cores, or a Ray cluster with "
        "--address), and write DIR/results.json, results.md and results.png. The sweep file "
        "format and running on a cluster: docs/sweeps.md.",
        epilog="Example: `python -m tinypact.sweep benchmarks/accuracy_study.toml --out "
        "runs/accuracy-study`; after an interruption, the same command with --resume.")
    parser.add_argument("sweep", metavar="SWEEP.toml", help="the sweep file (TOML)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="where the trials' run directories and the results go; on a "
                        "cluster, a path every machine sees (a shared file system)")
    parser.add_argument("--address", metavar="ADDRESS",
                        help="a running Ray cluster: 'auto' (this machine is part of it, after "
                        "`ray start`), or what ray.init(address=...) accepts, e.g. "
                        "ray://HEAD:10001 (default: start a local Ray instance)")
    parser.add_argument("--cpus-per-trial", type=int, metavar="N",
                        help="threads (and Ray CPUs) of each trial: the same numbers as "
                        "NUMBA_NUM_THREADS=N OPENBLAS_NUM_THREADS=N python -m tinypact.train "
                        "(default: 1 on Ray, so trials run side by side; with "
                        "--local-sequential all cores)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the sweep in DIR: finished trials are kept, unfinished "
                        "ones resume from their last epoch")
    parser.add_argument("--local-sequential", action="store_true",
                        help="no Ray: train the trials one after another in this process")
    parser.add_argument("--num-cpus", type=int, metavar="N",
                        help="the local Ray instance's CPUs (default: all of this machine's); "
                        "not with --address")
    parser.add_argument("--max-failures", type=int, default=3, metavar="N",
                        help="Ray: restart a trial whose process or machine died up to N times, "
                        "from its last epoch (default 3)")
    parser.add_argument("--no-progress", action="store_true",
                        help="--local-sequential: no progress bars (drawn only on a terminal)")
    return parser


def prepare_out(out: Path, sweep: Sweep, resume: bool) -> None:
    """Check DIR against the sweep (never mixing two sweeps) and record the sweep in it."""
    saved = out / SWEEP_NAME
    started = saved.exists() and any(path.name != SWEEP_NAME for path in out.iterdir())
    if saved.exists() and not started and not resume:
        saved.unlink()  # recorded, but nothing ran (Ray could not start): start afresh
    elif saved.exists():
        if not resume:
            raise CheckpointError(f"{out} holds a sweep already; pass --resume to continue it, "
                                  f"or choose another --out")
        if json.loads(saved.read_text()) != sweep.to_dict():
            raise CheckpointError(f"{out} holds a sweep of other runs, seeds or options than "
                                  f"this file's; choose another --out (or restore the file)")
        return
    if resume:
        raise CheckpointError(f"{out} holds no sweep to resume (no {SWEEP_NAME}); drop --resume")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} exists and is not an empty directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved, sweep.to_dict())


def finished_records(sweep: Sweep, out: Path) -> list[dict]:
    """The records of the trials finished in DIR, in the sweep's order."""
    records = []
    for trial in sweep.trials:
        record = finished_record(run_dir_of(out, trial), trial.config())
        if record is not None:
            records.append(record)
    return records


def run_sequential(sweep: Sweep, out: Path, threads: int, progress: bool,
                   on_trial_done) -> dict[str, str]:
    """Train the trials one after another in this process; {trial name: error} of failures."""
    failed = {}
    for number, trial in enumerate(sweep.trials, 1):
        print(f"\n[{number}/{len(sweep.trials)}] {trial.name}", flush=True)
        try:
            record = train_trial(trial, out, threads, progress=progress,
                                 log=lambda line: print("   " + line, flush=True))
        except Exception as err:  # noqa: BLE001 (one failed trial does not stop the sweep)
            message = trial_error(err)
            if message is None:
                raise
            failed[trial.name] = message
            print(f"   failed: {message}", flush=True)
            continue
        print(f"   -> {trial.name}: test accuracy {100 * record['test_accuracy']:.2f}%",
              flush=True)
        on_trial_done()
    return failed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.cpus_per_trial is not None and args.cpus_per_trial < 1:
        print("error: --cpus-per-trial must be at least 1", file=sys.stderr)
        return 2
    if args.num_cpus is not None and (args.num_cpus < 1 or args.address):
        print("error: --num-cpus needs a number of 1 or more, and no --address (a cluster has "
              "the CPUs its machines were started with)", file=sys.stderr)
        return 2
    if args.max_failures < 0:
        print("error: --max-failures must be 0 or more", file=sys.stderr)
        return 2
    try:
        sweep = read_sweep(args.sweep)
    except SweepFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from tinypact.sweep import ray_tune

    if not args.local_sequential and not ray_tune.ray_available():
        print(f"error: {ray_tune.INSTALL_HINT}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        prepare_out(out, sweep, args.resume)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    command = shlex.join(["python", "-m", "tinypact.sweep", args.sweep, "--out", args.out])
    title = sweep.title or f"Sweep {Path(args.sweep).name}"

    def report() -> list[dict]:
        records = finished_records(sweep, out)
        write_results(out, records, list(sweep.runs), len(sweep.trials), title, sweep.baseline,
                      command)
        return records

    try:
        if args.local_sequential:
            threads = args.cpus_per_trial or os.cpu_count() or 1
            failed = run_sequential(sweep, out, threads, not args.no_progress, report)
        else:
            failed = ray_tune.run_on_ray(sweep, out, args.address, args.cpus_per_trial or 1,
                                         args.resume, args.max_failures, args.num_cpus,
                                         on_trial_done=report)
        records = report()
    except KeyboardInterrupt:
        report()
        print(f"\ninterrupted; resume with `{command} --resume`", file=sys.stderr)
        return 130
    except (CheckpointError, ray_tune.RayError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    print(f"\n{len(records)} of {len(sweep.trials)} trials finished; wrote "
          f"{out}/{{{RESULTS_JSON},{RESULTS_MD},{RESULTS_PLOT}}}")
    for name, message in failed.items():
        print(f"error: trial {name} failed: {message}", file=sys.stderr)
    if len(records) < len(sweep.trials):
        if not failed:
            print(f"error: {len(sweep.trials) - len(records)} trial(s) did not finish; continue "
                  f"with `{command} --resume`", file=sys.stderr)
        return 1
    return 0
