"""Training plots from a run's metrics history (matplotlib, Agg backend: no display needed).

- `plot_error_curves`: train and validation error per epoch (the PACT paper's Fig. 4).
- `plot_alphas`: each PACT layer's clipping level alpha per epoch (the paper's Fig. 2).
- `plot_study`: the accuracy study, test error per configuration with error bars over seeds.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    """Save through a temp file + os.replace, so a reader never sees half a PNG."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_error_curves(history: Sequence[dict], path: str | os.PathLike,
                      title: str = "") -> Path:
    """Train/validation error (%) per epoch from metrics records (`train_error`, `val_error`)."""
    epochs = [record["epoch"] for record in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (("train_error", "train", "--"), ("val_error", "validation", "-")):
        points = [(e, 100 * r[key]) for e, r in zip(epochs, history) if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), style, marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("error (%)")
    ax.set_title(title or "training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_alphas(history: Sequence[dict], path: str | os.PathLike, title: str = "",
                initial: float | None = None) -> Path:
    """One line per layer: its PACT alpha at the end of each epoch (records' `alphas` dicts),
    starting from `initial` at epoch 0 when given (the paper's Fig. 2 starts at alpha = 10)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    layers: list[str] = []
    for record in history:
        layers += [name for name in record.get("alphas", {}) if name not in layers]
    for name in layers:
        points = [(r["epoch"], r["alphas"][name]) for r in history if name in r.get("alphas", {})]
        if initial is not None:
            points.insert(0, (0, initial))
        ax.plot(*zip(*points), marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("alpha (clipping level)")
    ax.set_title(title or "PACT alpha per layer")
    ax.grid(alpha=0.3)
    if layers:
        ax.legend(fontsize="small", ncol=2)
    else:
        ax.text(0.5, 0.5, "no learned clipping levels in this run", ha="center",
                transform=ax.transAxes)
    return _save(fig, path)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value: no bar drawn)."""
    n = len(values)
    mean = sum(values) / n
    return mean, (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0


def plot_study(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Left: each configuration's test error (%), mean over its seeds (square) with a +-1 sample
    standard deviation error bar and one dot per seed beside it; right: validation error per
    epoch, mean over the seeds with a +-1 std band. `rows` have `label` and `runs`: one dict per
    seed with `test_error` and `history` (metrics records)."""
    fig, (error_ax, curves_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, row in enumerate(rows):
        errors = [100 * run["test_error"] for run in row["runs"]]
        mean, std = _mean_std(errors)
        error_ax.errorbar(i, mean, yerr=std if len(errors) > 1 else None, fmt="s",
                         color="tab:blue", markersize=6, capsize=5, elinewidth=1.5)
        error_ax.plot([i + 0.15] * len(errors), errors, "o", color="black", markersize=3)
        text = f"{mean:.2f}" + (f" ± {std:.2f}" if len(errors) > 1 else " (1 seed)")
        error_ax.annotate(text, (i, mean + std), xytext=(0, 5), textcoords="offset points",
                         ha="center", va="bottom", fontsize=7)
    error_ax.set_xticks(range(len(rows)), [row["label"] for row in rows], rotation=30, ha="right")
    error_ax.set_ylabel("test error (%)")
    error_ax.set_title("test error: mean ± std over seeds (dots: each seed)", fontsize=10)
    error_ax.grid(axis="y", alpha=0.3)
    error_ax.margins(x=0.1, y=0.15)
    for row in rows:
        per_epoch: dict[int, list[float]] = {}
        for run in row["runs"]:
            for record in run.get("history", []):
                if record.get("val_error") is not None:
                    per_epoch.setdefault(record["epoch"], []).append(100 * record["val_error"])
        if not per_epoch:
            continue
        epochs = sorted(per_epoch)
        stats = [_mean_std(per_epoch[e]) for e in epochs]
        means = [m for m, _ in stats]
        line, = curves_ax.plot(epochs, means, marker="o", markersize=3, label=row["label"])
        curves_ax.fill_between(epochs, [m - s for m, s in stats], [m + s for m, s in stats],
                               color=line.get_color(), alpha=0.15, linewidth=0)
    curves_ax.set_xlabel("epoch")
    curves_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves_ax.set_ylabel("validation error (%)")
    curves_ax.set_title("validation error during training (band: ± std over seeds)", fontsize=10)
    curves_ax.grid(alpha=0.3)
    curves_ax.legend(fontsize="small")
    fig.suptitle(title or "accuracy study", fontsize=10, y=1.03)
    return _save(fig, path)
