"""Accuracy study on full Fashion-MNIST: float vs DoReFa vs PACT (vs PACT + SAWB), several seeds.

A Table-1-style comparison measured on this machine (the PACT paper's Table 1 is CIFAR10/SVHN,
which cannot be downloaded here). Every configuration trains the same `fmnist` network with the
same fixed schedule (STUDY_SCHEDULE below: Adam, cosine decay, full 60k train split minus a
5,000-image validation hold-out) once per seed, and is scored on the 10,000 test images:

    float                     W32/A32, plain ReLU, float first/last layers
    DoReFa W2A2, W4A4         DoReFa weights, DoReFa activations (clip to [0, 1], no learned range)
    PACT W2A2, W3A3, W4A4     DoReFa weights, PACT activations (learned alpha per layer)
    PACT+SAWB W2A2            SAWB weights, PACT activations
    (quantized configs keep 8-bit first/last-layer weights, the paper's default)

The seed sets the weight initialization, the batch order and which 5,000 training images are
held out. One seed is not enough to rank these rows: two seeds of one configuration can differ
by more than two configurations do. So each row reports the mean and the sample standard
deviation over its seeds, and a difference between two rows is stated only when it exceeds
their combined spread (see `difference`); otherwise the report says "within noise".

Targets: PACT W4A4 within 0.5 points of float; PACT W2A2 within 2 points; PACT beats DoReFa
activations at 2 bits. Writes benchmarks/results/accuracy_study.{md,json,png}, rewritten after
every finished run, so a partial study can be read while the rest trains. Each run has its own
directory RUNS/<config>-seed<k> (checkpoint, metrics, plots); re-running the script reuses
finished runs and resumes unfinished ones, so an interrupted study loses at most one epoch.
Runs go in this order: PACT W2A2 and W4A4 with the first seed (to compare with the earlier
single-seed figures), the other configurations with the first seed, then the next seeds.

    python -m tinypact.sweep benchmarks/accuracy_study.toml --out RUNS
                        # the study's 21 runs as a sweep (Ray Tune: all cores, or a cluster;
                        # docs/sweeps.md); the sweep file holds these configurations
    python benchmarks/accuracy_study.py --runs-dir RUNS --no-train
                        # this report, from the runs finished in RUNS
    python benchmarks/accuracy_study.py --runs-dir RUNS --no-progress
                        # or: train the runs here, one after another (~3 hours on 2 cores)
    python benchmarks/accuracy_study.py --quick      # smoke test on tiny settings, temp output

`--model resnet20` runs the follow-up paper's study on the papers' ResNet20 instead (Fashion-MNIST
images zero-padded to 32x32 in the stem; RESNET20_SCHEDULE): float; PACT + SAWB W2A2 with 8-bit
shortcuts; the same with 2-bit shortcuts (the follow-up's claim: low-precision shortcuts cost
accuracy); PACT W4A4. Two seeds by default. Its report, benchmarks/results/
accuracy_study_resnet20.{md,json,png}, also holds the rows of `benchmarks/brevitas_parity.py`
(the same network, data, order, initial weights and schedule in PyTorch + Brevitas) that have
finished in benchmarks/results/brevitas_parity_runs. Its sweep file:
benchmarks/accuracy_study_resnet20.toml (then `--model resnet20 --runs-dir RUNS --no-train`).
"""
from __future__ import annotations

import argparse
import json
import os
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
from tinypact.checkpoint import (CHECKPOINT_NAME, CheckpointError,  # noqa: E402
                                 check_resume_config, is_run_dir, load_checkpoint, read_config,
                                 read_metrics)
from typing import NamedTuple  # noqa: E402

from tinypact.recipes import TrainConfig, recipe  # noqa: E402
from tinypact.sweep.report import difference, mean_std  # noqa: E402  (the statistics)
from tinypact.sweep.report import pm as _pm  # noqa: E402
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
# Trained first (with the first seed): the rows the earlier single-seed study is compared on.
FIRST = ("PACT W2A2", "PACT W4A4")
DEFAULT_SEEDS = (0, 1, 2)

# The ResNet20 study (the follow-up paper's argument); shortcut_bits is resnet20's residual stream.
RESNET20_CONFIGS: dict[str, dict] = {
    "float": dict(wbits=32, abits=32, first_last_bits=32, shortcut_bits=32, act_quant="relu"),
    "PACT+SAWB W2A2 SC8": dict(wbits=2, abits=2, weight_quant="sawb", act_quant="pact",
                               shortcut_bits=8),
    "PACT+SAWB W2A2 SC2": dict(wbits=2, abits=2, weight_quant="sawb", act_quant="pact",
                               shortcut_bits=2),
    "PACT W4A4": dict(wbits=4, abits=4, weight_quant="dorefa", act_quant="pact", shortcut_bits=8),
}
RESNET20_COMPARISONS = (
    ("PACT+SAWB W2A2 SC8", "PACT+SAWB W2A2 SC2", "8-bit vs 2-bit shortcuts at W2A2"),
    ("PACT+SAWB W2A2 SC8", "float", "PACT + SAWB W2A2 (8-bit shortcuts) vs float"),
    ("PACT W4A4", "float", "PACT at 4 bits vs float"),
    ("PACT W4A4", "PACT+SAWB W2A2 SC8", "4 bits vs 2 bits"),
    ("torch float", "float", "the same float network in PyTorch vs tinypact"),
    ("Brevitas W2A2 SC8", "PACT+SAWB W2A2 SC8", "Brevitas vs tinypact at W2A2, 8-bit shortcuts"),
    ("Brevitas W2A2 SC2", "PACT+SAWB W2A2 SC2", "Brevitas vs tinypact at W2A2, 2-bit shortcuts"),
    ("Brevitas W2A2 SC8", "Brevitas W2A2 SC2", "8-bit vs 2-bit shortcuts in Brevitas"),
    ("Brevitas W4A4", "PACT W4A4", "Brevitas vs tinypact at W4A4"),
)
# ResNet20 on Fashion-MNIST: the resnet20 recipe on that data set (SGD as on CIFAR-10, cosine,
# alpha from 4: tinypact.recipes.PAIR_RECIPES) on an 8,000-image subset for 3 epochs, so that the
# 8 tinypact runs fit in about two hours of a loaded 2-core machine.
RESNET20_SCHEDULE = dict(dataset="fashion-mnist", model="resnet20", epochs=3, batch_size=128,
                         optimizer="sgd", lr=0.1, momentum=0.9, schedule="cosine",
                         weight_decay=2e-4, alpha_init=4.0, val_size=1000, limit_train=8000)
RESNET20_QUICK = dict(RESNET20_SCHEDULE, epochs=1, batch_size=32, val_size=64, limit_train=128,
                      limit_test=128)

# The earlier study (2026-11-23, commit 6961202): one run per row, seed 0, same schedule, before
# the trained model computed quantized layers as integer MACs times one scale and quantized its
# input. Same seed, same data, same initialization: only float32 round-off differs, so the
# change from these figures shows how far round-off alone moves a finished run.
EARLIER_SEED0 = {"float": 88.65, "DoReFa W2A2": 85.44, "DoReFa W4A4": 87.17, "PACT W2A2": 87.12,
                 "PACT W3A3": 88.90, "PACT W4A4": 89.03, "PACT+SAWB W2A2": 86.56}

# Pairs worth a sentence: (a, b, what a - b measures).
COMPARISONS = (
    ("PACT W2A2", "DoReFa W2A2", "learned vs fixed [0, 1] activation range at 2 bits"),
    ("PACT W4A4", "DoReFa W4A4", "learned vs fixed [0, 1] activation range at 4 bits"),
    ("PACT W4A4", "float", "PACT at 4 bits vs float"),
    ("PACT W3A3", "float", "PACT at 3 bits vs float"),
    ("PACT W2A2", "float", "PACT at 2 bits vs float"),
    ("PACT W3A3", "PACT W2A2", "PACT, 3 bits vs 2 bits"),
    ("PACT W4A4", "PACT W3A3", "PACT, 4 bits vs 3 bits"),
    ("PACT+SAWB W2A2", "PACT W2A2", "SAWB vs DoReFa weights at W2A2"),
)

# The one schedule every configuration trains with (the seed is set per run). One batch of 128
# measured about 0.1 s (float) to 0.2 s (2-bit) on a quiet 2-core machine, so an epoch of
# 55,000 images is 45-90 s and one run of 6 epochs about 7-8 min with evaluation.
STUDY_SCHEDULE = dict(dataset="fashion-mnist", epochs=6, batch_size=128, optimizer="adam",
                      lr=2e-3, schedule="cosine", val_size=5000)
QUICK_SCHEDULE = dict(dataset="fashion-mnist", epochs=1, batch_size=64, optimizer="adam",
                      lr=2e-3, schedule="cosine", val_size=200, limit_train=400,
                      limit_test=400)


class Study(NamedTuple):
    """One study: its rows (label -> TrainConfig overrides), schedules and report."""

    model: str
    title: str
    configs: dict
    first: tuple
    comparisons: tuple
    schedule: dict
    quick: dict
    seeds: tuple
    stem: str  # report files RESULTS/<stem>.{md,json,png}
    external_runs: str | None = None  # RESULTS/<dir> of another framework's finished runs


STUDIES = {
    "fmnist": Study("fmnist", "Fashion-MNIST, float vs DoReFa vs PACT, several seeds", CONFIGS,
                    FIRST, COMPARISONS, STUDY_SCHEDULE, QUICK_SCHEDULE, DEFAULT_SEEDS,
                    "accuracy_study"),
    "resnet20": Study("resnet20", "ResNet20 on Fashion-MNIST: shortcut precision, tinypact and "
                      "Brevitas side by side", RESNET20_CONFIGS, ("PACT+SAWB W2A2 SC8",),
                      RESNET20_COMPARISONS, RESNET20_SCHEDULE, RESNET20_QUICK, (0, 1),
                      "accuracy_study_resnet20", "brevitas_parity_runs"),
}


# The studies as sweep files for `python -m tinypact.sweep` (tests/test_accuracy_study.py checks
# that they train exactly these configurations into the run directories this script reads).
SWEEP_FILES = {"fmnist": ROOT / "benchmarks" / "accuracy_study.toml",
               "resnet20": ROOT / "benchmarks" / "accuracy_study_resnet20.toml"}


def slug(label: str) -> str:
    return label.lower().replace("+", "-").replace(" ", "-")


def run_dir_of(runs_dir: Path, label: str, seed: int) -> Path:
    return runs_dir / f"{slug(label)}-seed{seed}"


def run_order(labels: list[str], seeds: list[int], first_labels: tuple = FIRST
              ) -> list[tuple[str, int]]:
    """(label, seed) pairs: `first_labels` with the first seed, the other labels with it, then
    each further seed for every label."""
    first = [(label, seeds[0]) for label in first_labels if label in labels]
    rest = [(label, seed) for seed in seeds for label in labels]
    return first + [pair for pair in rest if pair not in first]


def config_for(label: str, seed: int, schedule: dict, data_dir: str | None,
               configs: dict = CONFIGS) -> TrainConfig:
    overrides = {k: v for k, v in schedule.items() if k != "dataset"}
    return recipe(schedule["dataset"], **overrides, **configs[label], seed=seed,
                  data_dir=data_dir)


# ---------------------------------------------------------------------------------------- runs
def finished_run(run_dir: Path, config: TrainConfig) -> dict | None:
    """The record of a finished run in `run_dir`, or None if it has not finished. A finished run
    trained with a different config is an error (CheckpointError), never silently reused."""
    if not (run_dir / RESULT_NAME).exists():
        return None
    # Fields added to TrainConfig after the run was made take their defaults.
    check_resume_config(TrainConfig.with_defaults(read_config(run_dir)), config.to_dict(),
                        str(run_dir))
    # A finished run kept without its checkpoint (the small files of a study committed to git)
    # still counts: its history is in metrics.jsonl.
    history = (load_checkpoint(run_dir).meta.get("history", [])
               if (run_dir / CHECKPOINT_NAME).exists() else read_metrics(run_dir))
    return run_record(run_dir, config, json.loads((run_dir / RESULT_NAME).read_text()), history)


def run_record(run_dir: Path, config: TrainConfig, result: dict, history: list[dict]) -> dict:
    return {"seed": config.seed, "test_accuracy": result["test_accuracy"],
            "test_error": result["test_error"], "test_images": result["test_images"],
            "val_error": result["val_error"], "train_minutes": result["train_time"] / 60,
            "final_alphas": history[-1]["alphas"] if history else {},
            "history": history, "run_dir": str(run_dir)}


def train_run(label: str, config: TrainConfig, run_dir: Path, progress: bool) -> dict:
    """Train one (configuration, seed) into `run_dir`, resuming it if an epoch finished."""
    resume = is_run_dir(run_dir) and (run_dir / CHECKPOINT_NAME).exists()
    if is_run_dir(run_dir) and not resume:
        shutil.rmtree(run_dir)  # started but no epoch finished: nothing to keep
    print(f"== {label}, seed {config.seed}: {config.describe_policy()}"
          + (" (resuming)" if resume else ""), flush=True)
    fitted = fit(config, run_dir, resume=resume, progress=progress,
                 log=lambda line: print("   " + line, flush=True))
    return run_record(run_dir, config, json.loads((run_dir / RESULT_NAME).read_text()),
                      fitted.history)


def estimate_minutes(config: TrainConfig, runs: int) -> float:
    """Time one training batch of `config` and extrapolate to `runs` runs like it."""
    from tinypact.trainer import build, build_optimizer, load_splits, time_one_step, train_loader

    train, val, test = load_splits(config)
    model, _ = build(config, train.shape)
    optimizer, _ = build_optimizer(model, config)
    loader = train_loader(train, config)
    step = time_one_step(model, optimizer, loader)
    # Evaluation (validation every epoch, test once) is forward only: ~1/3 of a training step.
    evals = (len(val) if val else 0) * config.epochs + len(test)
    per_run = step * (len(loader) * config.epochs + evals / 3 / config.batch_size)
    return per_run * runs / 60


def export_and_verify(run_dir: Path) -> dict:
    """{"mismatches", "engine_accuracy"}: the run exported to RUN/model.tpq and checked layer by
    layer against its checkpoint on every test image (integer_engine, as `tinypact.train` does
    at the end of a run); the outcome is kept in RUN/verify.json. Float runs: {}."""
    saved = run_dir / "verify.json"
    if saved.exists():
        return json.loads(saved.read_text())
    config = TrainConfig.from_dict(TrainConfig.with_defaults(read_config(run_dir)))
    if config.float_layers:
        return {}
    from integer_engine.export import export_checkpoint
    from integer_engine.format import save_model
    from integer_engine.verify import verify_against_checkpoint
    from tinypact.trainer import load_splits

    import numpy as np

    _, _, test = load_splits(config)
    model = export_checkpoint(run_dir)
    save_model(model, run_dir / "model.tpq")
    report = verify_against_checkpoint(model, run_dir, test.images, batch_size=256)
    outcome = {"mismatches": int(report.total_mismatches), "verified_images": len(test),
               "engine_accuracy": float(np.mean(report.engine_predictions == test.labels))}
    print(f"   verify {run_dir / 'model.tpq'}: {outcome['mismatches']} mismatching codes on "
          f"{len(test)} test images", flush=True)
    saved.write_text(json.dumps(outcome) + "\n")
    return outcome


# ------------------------------------------------------------------------------------ statistics
def summarize(label: str, config: TrainConfig, runs: list[dict]) -> dict:
    """One table row: the configuration and its runs (sorted by seed), accuracies in points."""
    runs = sorted(runs, key=lambda r: r["seed"])
    mean, std = mean_std([100 * r["test_accuracy"] for r in runs])
    vals = [100 * r["val_error"] for r in runs if r["val_error"] is not None]
    return {"label": label, "wbits": config.wbits, "abits": config.abits,
            "weight_quant": "float" if config.wbits == 32 else config.weight_quant,
            "act_quant": "relu (float)" if config.abits == 32 else config.act_quant,
            "seeds": [r["seed"] for r in runs], "accuracy_mean": mean, "accuracy_std": std,
            "val_error_mean": sum(vals) / len(vals) if vals else None,
            "train_minutes_mean": sum(r["train_minutes"] for r in runs) / len(runs),
            "runs": runs}


def judge_margin(margin: float, noise: float | None) -> str:
    """'met' if margin > noise, 'missed' if margin < -noise, else 'within noise'; with an
    unknown spread, 'met'/'missed' by the sign alone, marked as such."""
    if noise is None:
        return ("met" if margin >= 0 else "missed") + " (one seed, spread unknown)"
    if margin > noise:
        return "met"
    return "missed" if margin < -noise else "within noise"


def check_targets(rows: dict[str, dict]) -> list[dict]:
    """The three targets: margin in points (positive = met by the means) and its verdict."""
    targets = []

    def target(name: str, a: str, b: str, allowed_gap: float | None) -> None:
        if a in rows and b in rows:
            diff = difference(rows[a], rows[b])
            # "within g of float": a - float >= -g, margin = g + (a - float); "beats": a - b > 0.
            margin = diff["difference"] + (allowed_gap or 0.0)
            targets.append({"target": name, "margin_points": margin, "noise": diff["noise"],
                            "verdict": judge_margin(margin, diff["noise"])})

    target("PACT W4A4 within 0.5 points of float", "PACT W4A4", "float", 0.5)
    target("PACT W2A2 within 2 points of float", "PACT W2A2", "float", 2.0)
    target("PACT beats DoReFa activations at 2 bits", "PACT W2A2", "DoReFa W2A2", None)
    return targets


def comparisons(rows: dict[str, dict], pairs: tuple = COMPARISONS) -> list[dict]:
    return [{"a": a, "b": b, "what": what, **difference(rows[a], rows[b])}
            for a, b, what in pairs if a in rows and b in rows]


# -------------------------------------------------------------------------------------- machine
def cpu_description() -> str:
    """E.g. 'AMD EPYC (family 26, model 2), 2 cores, AVX-512': /proc/cpuinfo on Linux."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    name = fields.get("model name", platform.machine())
    flags = fields.get("flags", "").split()
    simd = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    return (f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}), "
            f"{os.cpu_count()} cores, {simd}")


# -------------------------------------------------------------------------------------- reports
def _verdict_text(c: dict) -> str:
    value = _pm(c["difference"], c["noise"], signed=True)
    if c["verdict"] == "spread unknown":
        return f"{value} points: one seed so far, no conclusion"
    if c["verdict"] == "within noise":
        return f"{value} points: **within noise**"
    return f"{value} points: {c['a']} is **{c['verdict']}**"


def markdown(rows: dict[str, dict], targets: list[dict], schedule: dict, meta: dict,
             sample: TrainConfig, study: Study = STUDIES["fmnist"]) -> str:
    done, planned = meta["runs_finished"], meta["runs_planned"]
    status = ("" if done == planned else
              f" **Partial: {done} of {planned} runs finished**; the study is still running or "
              f"was interrupted (rerun the same command to resume it).")
    limit = f", limited to {schedule['limit_train']} images" if schedule.get("limit_train") else ""
    if study.model == "fmnist":
        setup = (f"network `fmnist`; L2 decay {sample.weight_decay:g} on "
                 f"weights and PACT alphas. Quantized rows keep 8-bit first/last-layer weights. PACT "
                 f"alpha starts at {sample.alpha_init:g} and has its **own learning rate "
                 f"{sample.alpha_lr:g}** (the fashion-mnist recipe: with Adam a parameter moves about "
                 f"lr per step, too slowly for alpha to come down from 10 in a short run; the paper "
                 f"uses one learning rate for all parameters; docs/paper-differences.md).")
    else:
        setup = (f"network `resnet20` (28x28 images zero-padded to 32x32 in the stem conv, one "
                 f"input channel; option-A shortcuts); momentum {sample.momentum:g}, L2 decay "
                 f"{sample.weight_decay:g} on weights and PACT alphas. Quantized rows keep 8-bit "
                 f"first/last-layer weights; SCk: the residual stream (the activation after each "
                 f"add, which also feeds the final pool and linear layer) at k bits. PACT alpha "
                 f"starts at {sample.alpha_init:g} (with SGD, alpha only moves where activations "
                 f"reach it and by weight decay: from the paper's 10, a 2-bit network stays almost "
                 f"silent through a short run). Brevitas rows: `benchmarks/brevitas_parity.py`, the "
                 f"same network, initial weights, images, batch order and schedule in PyTorch + "
                 f"Brevitas 0.13 with the quantizers a Brevitas user would pick for PACT + SAWB: "
                 f"`QuantReLU` with `Uint8ActPerTensorFloatMaxInit` (a learned clipping level, as "
                 f"PACT's alpha, but with gradient through the rounding too and half-to-even "
                 f"rounding) and `Int8WeightPerTensorFloatMSE` weights with the MSE scale search "
                 f"run every step (SAWB approximates that scale in closed form; Brevitas's 2-bit "
                 f"grid is ternary {{-s, 0, s}} where SAWB's has 4 levels), 8-bit first/last "
                 f"layers; the script's docstring says more. "
                 f"\"exact\": the integer engine's export of the run, checked against its checkpoint "
                 f"on every test image (mismatching codes over all layers).")
    lines = [
        f"# Accuracy study: {study.title}",
        "",
        f"Updated {meta['date']} by `benchmarks/accuracy_study.py"
        f"{'' if study.model == 'fmnist' else ' --model ' + study.model}"
        f"{' --quick' if meta['quick'] else ''}`; CPU: {meta['cpu']}; Python "
        f"{meta['python']}, NumPy {meta['numpy']}. Training time summed over the finished runs: "
        f"{meta['train_minutes']:.0f} min.{status}",
        "",
        f"Schedule (identical for every run): {schedule['epochs']} epoch(s) of "
        f"{schedule['optimizer']} lr {schedule['lr']:g} with {schedule['schedule']} decay, batch "
        f"{schedule['batch_size']}, the training split minus a {schedule['val_size']}-image "
        f"validation hold-out{limit}; {setup} The seed sets the "
        f"initialization, the batch order and the hold-out.",
        "",
        "Accuracy: mean ± sample standard deviation over the seeds. \"vs float\": mean difference "
        "± the combined spread sqrt(s_a² + s_b²); a difference no larger than that spread is "
        "noise. From two or three seeds the standard deviation is itself rough (from three, for "
        "normal noise its 95% interval runs from about 0.5 to 6 times the estimate), so "
        "exceeding it is a minimum bar, not a significance test. \"train min/run\" is wall-clock time on a machine shared with "
        "other jobs: it follows their load more than the configuration's cost.",
        "",
    ]
    exact_column = study.model != "fmnist"
    lines += ["| configuration | weights | activations | W/A bits | seeds | test accuracy (%) "
              "| per seed (%) | vs float (points) | val error (%) | train min/run |"
              + (" exact |" if exact_column else ""),
              "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if exact_column else "")]
    for row in rows.values():
        gap = ""
        if "float" in rows and row["label"] != "float":
            diff = difference(row, rows["float"])
            gap = _pm(diff["difference"], diff["noise"], signed=True)
            gap += " (within noise)" if diff["verdict"] == "within noise" else ""
        bits = "32/32" if row["wbits"] == 32 else f"{row['wbits']}/{row['abits']}"
        per_seed = ", ".join(f"{100 * r['test_accuracy']:.2f}" for r in row["runs"])
        val = "" if row["val_error_mean"] is None else f"{row['val_error_mean']:.2f}"
        lines.append(f"| {row['label']} | {row['weight_quant']} | {row['act_quant']} | {bits} | "
                     f"{', '.join(map(str, row['seeds']))} | "
                     f"{_pm(row['accuracy_mean'], row['accuracy_std'])} | {per_seed} | {gap} | "
                     f"{val} | {row['train_minutes_mean']:.1f} |"
                     + (f" {_exact_text(row)} |" if exact_column else ""))
    images = next(iter(rows.values()))["runs"][0]["test_images"]
    lines += ["", f"Test accuracy on {images} test images."]
    if study.model == "fmnist":
        lines += ["", "## Targets", ""]
        for t in targets:
            lines.append(f"- {t['target']}: **{t['verdict']}** (margin "
                         f"{_pm(t['margin_points'], t['noise'], signed=True)} points)")
        if not targets:
            lines.append("- None can be judged yet: the rows each target compares have not "
                         "finished.")
    lines += ["", "## What the spread allows us to say", ""]
    pairs = comparisons(rows, study.comparisons)
    for c in pairs:
        lines.append(f"- {c['a']} − {c['b']} ({c['what']}): {_verdict_text(c)}")
    if not pairs:
        lines.append("- Nothing yet: no compared pair of rows has finished.")
    earlier = [(label, row) for label, row in rows.items()
               if label in EARLIER_SEED0 and 0 in row["seeds"] and not meta["quick"]
               and study.model == "fmnist"]
    if earlier:
        lines += ["", "## Seed 0 before and after the integer arithmetic", "",
                  "The earlier single-seed study (2026-11-23) trained seed 0 of each row before "
                  "quantized layers were computed as integer MACs times one float32 scale. Same "
                  "seed, data and initialization: only float32 round-off differs, and the "
                  "finished runs still move by this much.", "",
                  "| configuration | seed 0 before (%) | seed 0 now (%) | change (points) |",
                  "|---|---|---|---|"]
        for label, row in earlier:
            now = 100 * row["runs"][row["seeds"].index(0)]["test_accuracy"]
            lines.append(f"| {label} | {EARLIER_SEED0[label]:.2f} | {now:.2f} | "
                         f"{now - EARLIER_SEED0[label]:+.2f} |")
    alpha_rows = [row for row in rows.values() if row["runs"][0].get("final_alphas")]
    if alpha_rows:
        lines += ["", "## Learned PACT alphas (end of training)", ""]
        for row in alpha_rows:
            if study.model == "fmnist":
                per_seed = "; ".join(f"seed {r['seed']}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in r["final_alphas"].items()) for r in row["runs"])
            else:  # 28 layers: their range
                per_seed = "; ".join(
                    f"seed {r['seed']}: {min(r['final_alphas'].values()):.2f} to "
                    f"{max(r['final_alphas'].values()):.2f} over {len(r['final_alphas'])} layers"
                    for r in row["runs"])
            lines.append(f"- {row['label']}: {per_seed}")
    lines += ["", f"![accuracy study]({study.stem}.png)", ""]
    return "\n".join(lines)


def _exact_text(row: dict) -> str:
    """'0 (2 runs)': mismatching codes of the integer export over the row's runs."""
    checked = [r["mismatches"] for r in row["runs"] if r.get("mismatches") is not None]
    if not checked:
        return "float: n/a" if row["wbits"] == 32 else ("other framework" if row.get("external")
                                                        else "not checked")
    return f"{sum(checked)} mismatches ({len(checked)} run{'s' if len(checked) > 1 else ''})"


def write_reports(results_dir: Path, rows: dict[str, dict], schedule: dict, meta: dict,
                  sample: TrainConfig, study: Study = STUDIES["fmnist"]) -> None:
    """<stem>.{md,json,png} from the runs finished so far (the study's rows in order, then
    another framework's)."""
    rows = {label: rows[label] for label in [*study.configs, *sorted(rows)] if label in rows}
    targets = check_targets(rows) if study.model == "fmnist" else []
    (results_dir / f"{study.stem}.md").write_text(
        markdown(rows, targets, schedule, meta, sample, study))
    json_rows = [{**row, "runs": [{k: v for k, v in r.items() if k != "history"}
                                  for r in row["runs"]]} for row in rows.values()]
    (results_dir / f"{study.stem}.json").write_text(json.dumps(
        {"schedule": schedule, "meta": meta, "targets": targets,
         "comparisons": comparisons(rows, study.comparisons), "rows": json_rows},
        indent=2) + "\n")
    seeds = sorted({s for row in rows.values() for s in row["seeds"]})
    network = "" if study.model == "fmnist" else f"{study.model}, "
    plots.plot_study(list(rows.values()), results_dir / f"{study.stem}.png",
                     title=f"Fashion-MNIST, {network}{schedule['epochs']} epoch(s), same schedule "
                     f"for all, seeds {', '.join(map(str, seeds))}\n{meta['cpu']}")


def external_rows(runs_dir: Path, schedule: dict) -> dict[str, dict]:
    """Rows of another framework's finished runs (benchmarks/brevitas_parity.py: one
    result.json per run) trained on this schedule; others are left out."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(runs_dir.glob("*/result.json")):
        result = json.loads(path.read_text())
        if result.get("schedule") != schedule:
            continue
        runs.setdefault(result["row"], []).append(
            {"seed": result["seed"], "test_accuracy": result["test_accuracy"],
             "test_error": result["test_error"], "test_images": result["test_images"],
             "val_error": result["val_error"], "train_minutes": result["train_time"] / 60,
             "history": result["history"], "run_dir": str(path.parent)})
    rows = {}
    for label, row_runs in runs.items():
        row_runs.sort(key=lambda r: r["seed"])
        mean, std = mean_std([100 * r["test_accuracy"] for r in row_runs])
        vals = [100 * r["val_error"] for r in row_runs if r["val_error"] is not None]
        bits = label.split()[1] if label.split()[1].startswith("W") else "W32A32"
        wbits, abits = (int(x) for x in bits[1:].split("A"))
        rows[label] = {"label": label, "wbits": wbits, "abits": abits, "external": True,
                       "weight_quant": "float" if wbits == 32 else "brevitas MSE scale",
                       "act_quant": "relu (float)" if abits == 32 else "brevitas learned scale",
                       "seeds": [r["seed"] for r in row_runs], "accuracy_mean": mean,
                       "accuracy_std": std, "val_error_mean": sum(vals) / len(vals) if vals else None,
                       "train_minutes_mean": sum(r["train_minutes"] for r in row_runs) / len(row_runs),
                       "runs": row_runs}
    return rows


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(STUDIES), default="fmnist",
                        help="fmnist: the precision study on the small network (default); "
                        "resnet20: the shortcut-precision study with Brevitas rows")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings (a few hundred images, 1 epoch) to test the script; "
                        "writes to a temporary directory unless --results-dir is given")
    parser.add_argument("--epochs", type=int, help="override the schedule's epochs (fmnist "
                        f"{STUDY_SCHEDULE['epochs']}, resnet20 {RESNET20_SCHEDULE['epochs']})")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="K",
                        help="train every configuration once per seed (default: fmnist "
                        f"{' '.join(map(str, DEFAULT_SEEDS))}, resnet20 0 1; at least 2 to "
                        "measure a spread)")
    parser.add_argument("--only", nargs="+", metavar="CONFIG",
                        help=f"run only these configurations (fmnist: {', '.join(CONFIGS)}; "
                        f"resnet20: {', '.join(RESNET20_CONFIGS)})")
    parser.add_argument("--results-dir", type=Path, help="default: benchmarks/results")
    parser.add_argument("--runs-dir", type=Path,
                        help="default: RESULTS_DIR/accuracy_study_runs (resnet20: "
                        "RESULTS_DIR/accuracy_study_resnet20_runs)")
    parser.add_argument("--data-dir", help="where Fashion-MNIST lives (default: the Debian "
                        "package's /usr/share/datasets/fashion-mnist or a download)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-train", action="store_true",
                        help="only report the runs finished in --runs-dir (e.g. the --out of "
                        "`python -m tinypact.sweep benchmarks/accuracy_study.toml`); train none")
    args = parser.parse_args(argv)
    study = STUDIES[args.model]
    seeds = args.seeds or list(study.seeds)
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        parser.error(f"--seeds must be distinct non-negative integers, got {seeds}")
    unknown = sorted(set(args.only or ()) - set(study.configs))
    if unknown:
        parser.error(f"--only: unknown configuration(s) {unknown} for --model {args.model}; "
                     f"choose from {', '.join(study.configs)}")

    schedule = dict(study.quick if args.quick else study.schedule)
    if args.epochs:
        schedule["epochs"] = args.epochs
    results_dir = args.results_dir or (Path(tempfile.mkdtemp(prefix="accuracy-study-quick-"))
                                       if args.quick else ROOT / "benchmarks" / "results")
    runs_dir = args.runs_dir or results_dir / f"{study.stem}_runs"
    results_dir.mkdir(parents=True, exist_ok=True)
    labels = args.only or list(study.configs)
    order = run_order(labels, seeds, study.first)
    verify = study.model != "fmnist"  # the ResNet20 study checks every export on all test images

    import numpy as np

    from tinypact.data import DataError

    def config(label: str, seed: int) -> TrainConfig:
        return config_for(label, seed, schedule, args.data_dir, study.configs)

    runs: dict[str, list[dict]] = {label: [] for label in labels}
    configs = {label: config(label, seeds[0]) for label in labels}

    def report() -> None:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "cpu": cpu_description(), "python": platform.python_version(),
                "numpy": np.__version__, "quick": args.quick,
                "runs_finished": sum(map(len, runs.values())), "runs_planned": len(order),
                "train_minutes": sum(r["train_minutes"] for rs in runs.values() for r in rs)}
        rows = {label: summarize(label, configs[label], rs) for label, rs in runs.items() if rs}
        if study.external_runs:
            rows.update(external_rows(results_dir / study.external_runs, schedule))
        if rows:
            write_reports(results_dir, rows, schedule, meta, configs[labels[0]], study)

    try:
        pending = []
        for label, seed in order:
            run_dir = run_dir_of(runs_dir, label, seed)
            record = finished_run(run_dir, config(label, seed))
            if record is None:
                pending.append((label, seed))
            else:
                if verify:
                    record.update(export_and_verify(run_dir))
                runs[label].append(record)
        print(f"{len(order) - len(pending)} of {len(order)} runs already finished in {runs_dir}",
              flush=True)
        report()
        if args.no_train:
            pending = []
        if pending:
            minutes = estimate_minutes(config(*pending[0]), len(pending))
            print(f"estimate: about {minutes:.0f} min for {len(pending)} run(s) x "
                  f"{schedule['epochs']} epoch(s) (one timed batch, extrapolated)", flush=True)
        for i, (label, seed) in enumerate(pending, 1):
            print(f"\n[{i}/{len(pending)}]", end=" ")
            run_dir = run_dir_of(runs_dir, label, seed)
            record = train_run(label, config(label, seed), run_dir, progress=not args.no_progress)
            if verify:
                record.update(export_and_verify(run_dir))
            runs[label].append(record)
            print(f"   -> {label}, seed {seed}: test accuracy "
                  f"{100 * record['test_accuracy']:.2f}%", flush=True)
            report()
    except (DataError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume the study", file=sys.stderr)
        return 130

    print(f"\nwrote {results_dir}/{study.stem}.{{md,json,png}}")
    rows = {label: summarize(label, configs[label], rs) for label, rs in runs.items() if rs}
    for t in (check_targets({label: rows[label] for label in CONFIGS if label in rows})
              if study.model == "fmnist" else []):
        print(f"target {t['verdict']}: {t['target']} (margin {t['margin_points']:+.2f} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
