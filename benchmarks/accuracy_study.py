"""Accuracy study on full Fashion-MNIST: float vs DoReFa vs PACT (vs PACT + SAWB), one schedule.

A Table-1-style comparison measured on this machine (the PACT paper's Table 1 is CIFAR10/SVHN,
which cannot be downloaded here). Every configuration trains the same `fmnist` network with the
same fixed schedule (STUDY_SCHEDULE below: Adam, cosine decay, full 60k train split minus a
5,000-image validation hold-out) and is scored on the 10,000 test images:

    float                     W32/A32, plain ReLU, float first/last layers
    DoReFa W2A2, W4A4         DoReFa weights, DoReFa activations (clip to [0, 1], no learned range)
    PACT W2A2, W3A3, W4A4     DoReFa weights, PACT activations (learned alpha per layer)
    PACT+SAWB W2A2            SAWB weights, PACT activations
    (quantized configs keep 8-bit first/last-layer weights, the paper's default)

Targets: PACT W4A4 within 0.5 points of float; PACT W2A2 within 2 points; PACT beats DoReFa
activations at 2 bits. Writes benchmarks/results/accuracy_study.{md,json,png}; each run's
directory (checkpoint, metrics, plots) goes under --runs-dir. Re-running the script reuses
finished runs and resumes unfinished ones, so an interrupted study loses at most one epoch.

    python benchmarks/accuracy_study.py            # the study (~1 hour on a quiet 2-core machine)
    python benchmarks/accuracy_study.py --quick    # smoke test on tiny settings, temp output
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tinypact import plots  # noqa: E402
from tinypact.checkpoint import CHECKPOINT_NAME, is_run_dir  # noqa: E402
from tinypact.recipes import recipe  # noqa: E402
from tinypact.trainer import RESULT_NAME, fit  # noqa: E402

# label -> TrainConfig overrides. Float is a plain ReLU network with float first/last layers.
CONFIGS: dict[str, dict] = {
    "float": dict(wbits=32, abits=32, first_last_bits=32, act_quant="relu"),
    "DoReFa W2A2": dict(wbits=2, abits=2, weight_quant="dorefa", act_quant="dorefa"),
    "DoReFa W4A4": dict(wbits=4, abits=4, weight_quant="dorefa", act_quant="dorefa"),
    "PACT W2A2": dict(wbits=2, abits=2, weight_quant="dorefa", act_quant="pact"),
    "PACT W3A3": dict(wbits=3, abits=3, weight_quant="dorefa", act_quant="pact"),
    "PACT W4A4": dict(wbits=4, abits=4, weight_quant="dorefa", act_quant="pact"),
    "PACT+SAWB W2A2": dict(wbits=2, abits=2, weight_quant="sawb", act_quant="pact"),
}

# The one schedule every configuration trains with. Sized for < 90 min for all seven on a quiet
# 2-core machine: one batch of 128 measured about 0.1 s (float) to 0.2 s (2-bit), so an epoch of
# 55,000 images is 45-90 s, and 7 configurations x 6 epochs about 50-60 min with evaluation.
STUDY_SCHEDULE = dict(dataset="fashion-mnist", epochs=6, batch_size=128, optimizer="adam",
                      lr=2e-3, schedule="cosine", val_size=5000, seed=0)
QUICK_SCHEDULE = dict(dataset="fashion-mnist", epochs=1, batch_size=64, optimizer="adam",
                      lr=2e-3, schedule="cosine", val_size=200, limit_train=400,
                      limit_test=400, seed=0)


def slug(label: str) -> str:
    return label.lower().replace("+", "-").replace(" ", "-")


def run_config(label: str, schedule: dict, runs_dir: Path, data_dir: str | None,
               progress: bool) -> dict:
    """Train one configuration (or reuse/resume its run) and return its table row."""
    overrides = {k: v for k, v in schedule.items() if k != "dataset"}
    config = recipe(schedule["dataset"], **overrides, **CONFIGS[label], data_dir=data_dir)
    run_dir = runs_dir / slug(label)
    if (run_dir / RESULT_NAME).exists():
        print(f"== {label}: reusing the finished run in {run_dir}")
        from tinypact.checkpoint import load_checkpoint
        history = load_checkpoint(run_dir).meta.get("history", [])
        result = json.loads((run_dir / RESULT_NAME).read_text())
    else:
        resume = is_run_dir(run_dir) and (run_dir / CHECKPOINT_NAME).exists()
        if is_run_dir(run_dir) and not resume:
            shutil.rmtree(run_dir)  # started but no epoch finished: nothing to keep
        print(f"== {label}: {config.describe_policy()}" + (" (resuming)" if resume else ""))
        fitted = fit(config, run_dir, resume=resume, progress=progress,
                     log=lambda line: print("   " + line, flush=True))
        history = fitted.history
        result = json.loads((run_dir / RESULT_NAME).read_text())
    return {"label": label, "wbits": config.wbits, "abits": config.abits,
            "weight_quant": "float" if config.wbits == 32 else config.weight_quant,
            "act_quant": "relu (float)" if config.abits == 32 else config.act_quant,
            "test_accuracy": result["test_accuracy"], "test_error": result["test_error"],
            "test_images": result["test_images"], "val_error": result["val_error"],
            "train_minutes": result["train_time"] / 60,
            "final_alphas": history[-1]["alphas"] if history else {},
            "history": history, "run_dir": str(run_dir)}


def estimate_minutes(schedule: dict, labels: list[str], data_dir: str | None) -> float:
    """Time one training batch of a 2-bit PACT network and extrapolate to the whole study."""
    from tinypact.trainer import build, build_optimizer, load_splits, time_one_step, train_loader

    overrides = {k: v for k, v in schedule.items() if k != "dataset"}
    config = recipe(schedule["dataset"], **overrides, **CONFIGS["PACT W2A2"], data_dir=data_dir)
    train, val, test = load_splits(config)
    model, _ = build(config)
    optimizer, _ = build_optimizer(model, config)
    loader = train_loader(train, config)
    step = time_one_step(model, optimizer, loader)
    # Evaluation (validation every epoch, test once) is forward only: ~1/3 of a training step.
    evals = (len(val) if val else 0) * config.epochs + len(test)
    per_config = step * (len(loader) * config.epochs + evals / 3 / config.batch_size)
    return per_config * len(labels) / 60


def check_targets(rows: dict[str, dict]) -> list[dict]:
    """The three targets, each with its margin in accuracy points (positive = met)."""
    acc = {label: 100 * row["test_accuracy"] for label, row in rows.items()}
    targets = []

    def target(name: str, needed: tuple[str, ...], margin) -> None:
        if all(label in acc for label in needed):
            value = margin()
            targets.append({"target": name, "margin_points": value, "met": value >= 0})

    target("PACT W4A4 within 0.5 points of float", ("float", "PACT W4A4"),
           lambda: 0.5 - (acc["float"] - acc["PACT W4A4"]))
    target("PACT W2A2 within 2 points of float", ("float", "PACT W2A2"),
           lambda: 2.0 - (acc["float"] - acc["PACT W2A2"]))
    target("PACT beats DoReFa activations at 2 bits", ("PACT W2A2", "DoReFa W2A2"),
           lambda: acc["PACT W2A2"] - acc["DoReFa W2A2"])
    return targets


def markdown(rows: dict[str, dict], targets: list[dict], schedule: dict, meta: dict) -> str:
    float_acc = rows["float"]["test_accuracy"] if "float" in rows else None
    lines = [
        "# Accuracy study: Fashion-MNIST, float vs DoReFa vs PACT",
        "",
        f"Measured {meta['date']} on {meta['machine']} by `benchmarks/accuracy_study.py"
        f"{' --quick' if meta['quick'] else ''}` ({meta['minutes']:.1f} min in all).",
        "",
        f"Schedule (identical for every row): {schedule['epochs']} epoch(s) of "
        f"{schedule['optimizer']} lr {schedule['lr']:g} with {schedule['schedule']} decay, batch "
        f"{schedule['batch_size']}, training split minus a {schedule['val_size']}-image validation "
        f"hold-out" + (f" limited to {schedule['limit_train']} images" if schedule.get("limit_train")
                       else "") + f"; network `fmnist`; quantized rows keep 8-bit first/last-layer "
        "weights; PACT alpha starts at 10.",
        "",
        "| configuration | weights | activations | W/A bits | test accuracy (%) | vs float (points) "
        "| val error (%) | train min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        gap = "" if float_acc is None or row["label"] == "float" else \
            f"{100 * (row['test_accuracy'] - float_acc):+.2f}"
        bits = "32/32" if row["wbits"] == 32 else f"{row['wbits']}/{row['abits']}"
        val = "" if row["val_error"] is None else f"{100 * row['val_error']:.2f}"
        lines.append(f"| {row['label']} | {row['weight_quant']} | {row['act_quant']} | {bits} | "
                     f"{100 * row['test_accuracy']:.2f} | {gap} | {val} | "
                     f"{row['train_minutes']:.1f} |")
    lines += ["", f"Test accuracy on {next(iter(rows.values()))['test_images']} test images.", "",
              "## Targets", ""]
    for t in targets:
        verdict = "met" if t["met"] else "MISSED"
        lines.append(f"- {t['target']}: **{verdict}** (margin {t['margin_points']:+.2f} points)")
    alpha_rows = [row for row in rows.values() if row["final_alphas"]]
    if alpha_rows:
        lines += ["", "## Learned PACT alphas (end of training)", ""]
        for row in alpha_rows:
            alphas = ", ".join(f"{k} {v:.2f}" for k, v in row["final_alphas"].items())
            lines.append(f"- {row['label']}: {alphas}")
    lines += ["", "![accuracy study](accuracy_study.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings (a few hundred images, 1 epoch) to test the script; "
                        "writes to a temporary directory unless --results-dir is given")
    parser.add_argument("--epochs", type=int, help=f"override the schedule's "
                        f"{STUDY_SCHEDULE['epochs']} epochs")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), metavar="CONFIG",
                        help=f"run only these configurations ({', '.join(CONFIGS)})")
    parser.add_argument("--results-dir", type=Path, help="default: benchmarks/results")
    parser.add_argument("--runs-dir", type=Path, help="default: RESULTS_DIR/accuracy_study_runs")
    parser.add_argument("--data-dir", help="where Fashion-MNIST lives (default: the Debian "
                        "package's /usr/share/datasets/fashion-mnist or a download)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    schedule = dict(QUICK_SCHEDULE if args.quick else STUDY_SCHEDULE)
    if args.epochs:
        schedule["epochs"] = args.epochs
    results_dir = args.results_dir or (Path(tempfile.mkdtemp(prefix="accuracy-study-quick-"))
                                       if args.quick else ROOT / "benchmarks" / "results")
    runs_dir = args.runs_dir or results_dir / "accuracy_study_runs"
    results_dir.mkdir(parents=True, exist_ok=True)
    labels = args.only or list(CONFIGS)

    from tinypact.checkpoint import CheckpointError
    from tinypact.data import DataError

    start = time.perf_counter()
    rows: dict[str, dict] = {}
    try:
        minutes = estimate_minutes(schedule, labels, args.data_dir)
        print(f"estimate: about {minutes:.0f} min for {len(labels)} configuration(s) x "
              f"{schedule['epochs']} epoch(s) (one timed batch, extrapolated)", flush=True)
        for label in labels:
            rows[label] = run_config(label, schedule, runs_dir, args.data_dir,
                                     progress=not args.no_progress)
            print(f"   -> {label}: test accuracy {100 * rows[label]['test_accuracy']:.2f}%",
                  flush=True)
    except (DataError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume the study", file=sys.stderr)
        return 130

    targets = check_targets(rows)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()} {platform.node() or 'host'} "
                       f"({__import__('os').cpu_count()} cores)",
            "minutes": (time.perf_counter() - start) / 60, "quick": args.quick}
    (results_dir / "accuracy_study.md").write_text(markdown(rows, targets, schedule, meta))
    (results_dir / "accuracy_study.json").write_text(json.dumps(
        {"schedule": schedule, "meta": meta, "targets": targets,
         "rows": [{k: v for k, v in row.items() if k != "history"} for row in rows.values()]},
        indent=2) + "\n")
    plots.plot_study(list(rows.values()), results_dir / "accuracy_study.png",
                     title=f"Fashion-MNIST, {schedule['epochs']} epoch(s), same schedule for all")
    print(f"\nwrote {results_dir}/accuracy_study.{{md,json,png}}")
    for t in targets:
        print(f"target {'met   ' if t['met'] else 'MISSED'} {t['target']} "
              f"(margin {t['margin_points']:+.2f} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
