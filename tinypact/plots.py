"""Training plots from a run's metrics history (matplotlib, Agg backend: no display needed).

- `plot_error_curves`: train and validation error per epoch (the PACT paper's Fig. 4).
- `plot_alphas`: each PACT layer's clipping level alpha per epoch (the paper's Fig. 2).
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


def plot_study(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Left: test error (%) per configuration; right: each configuration's validation error per
    epoch. `rows` have `label`, `test_error` and `history` (metrics records)."""
    fig, (bars_ax, curves_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [row["label"] for row in rows]
    errors = [100 * row["test_error"] for row in rows]
    bars = bars_ax.bar(range(len(rows)), errors, color="tab:blue")
    for bar, error in zip(bars, errors):
        bars_ax.annotate(f"{error:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         ha="center", va="bottom", fontsize=8)
    bars_ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
    bars_ax.set_ylabel("test error (%)")
    bars_ax.set_title("test error")
    bars_ax.grid(axis="y", alpha=0.3)
    for row in rows:
        points = [(r["epoch"], 100 * r["val_error"]) for r in row.get("history", [])
                  if r.get("val_error") is not None]
        if points:
            curves_ax.plot(*zip(*points), marker="o", markersize=3, label=row["label"])
    curves_ax.set_xlabel("epoch")
    curves_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves_ax.set_ylabel("validation error (%)")
    curves_ax.set_title("validation error during training")
    curves_ax.grid(alpha=0.3)
    curves_ax.legend(fontsize="small")
    fig.suptitle(title or "accuracy study")
    return _save(fig, path)
