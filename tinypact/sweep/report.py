"""A sweep's results: DIR/results.json (one entry per trial), results.md (mean ± spread per run)
and results.png (test error with error bars; validation curves).

One seed is not enough to rank runs: two seeds of one run can differ by more than two runs do.
So each run is reported as the mean and the sample standard deviation over its seeds, and a
difference between two runs is stated only when it exceeds their combined spread (`difference`).
"""
from __future__ import annotations

import math
from pathlib import Path

RESULTS_JSON, RESULTS_MD, RESULTS_PLOT = "results.json", "results.md", "results.png"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation s = sqrt(sum_i (v_i - mean)^2 / (n - 1));
    s is None for a single value (no spread can be measured from one seed)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def difference(a: dict, b: dict) -> dict:
    """Row a minus row b in accuracy points, judged against the seed-to-seed spread.

    d = mean_a - mean_b and noise = sqrt(s_a^2 + s_b^2), the standard deviation of the
    difference between one run of a and one run of b (s: sample std over seeds). The rows
    differ ("higher"/"lower") only if |d| > noise, else "within noise"; with a single seed in
    either row the spread is unknown ("spread unknown") and nothing is concluded.
    """
    d = a["accuracy_mean"] - b["accuracy_mean"]
    if a["accuracy_std"] is None or b["accuracy_std"] is None:
        return {"difference": d, "noise": None, "verdict": "spread unknown"}
    noise = math.hypot(a["accuracy_std"], b["accuracy_std"])
    verdict = "within noise" if abs(d) <= noise else ("higher" if d > 0 else "lower")
    return {"difference": d, "noise": noise, "verdict": verdict}


def summarize(label: str, records: list[dict]) -> dict:
    """One row: a run's trials (sorted by seed), accuracies and errors in points (%)."""
    records = sorted(records, key=lambda r: r["seed"])
    config = records[0]["config"]
    mean, std = mean_std([100 * r["test_accuracy"] for r in records])

    def mean_of(key: str) -> float | None:
        values = [100 * r[key] for r in records if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    return {"label": label, "run": records[0]["run"],
            "wbits": config["wbits"], "abits": config["abits"],
            "weight_quant": "float" if config["wbits"] == 32 else config["weight_quant"],
            "act_quant": "relu (float)" if config["abits"] == 32 else config["act_quant"],
            "seeds": [r["seed"] for r in records], "accuracy_mean": mean, "accuracy_std": std,
            "val_error_mean": mean_of("final_val_error"),
            "best_val_error_mean": mean_of("best_val_error"),
            "train_minutes_mean": sum(r["train_seconds"] for r in records) / 60 / len(records),
            "runs": records}


def rows_by_run(records: list[dict], runs: list[str]) -> dict[str, dict]:
    """{label: row} in the sweep's order of runs, for the runs with a finished trial."""
    rows = {}
    for run in runs:
        mine = [r for r in records if r["run"] == run]
        if mine:
            rows[mine[0]["label"] or run] = summarize(mine[0]["label"] or run, mine)
    return rows


def pm(mean: float, std: float | None, signed: bool = False) -> str:
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text + (f" ± {std:.2f}" if std is not None else "")


def table(rows: dict[str, dict], baseline: str | None) -> list[str]:
    """The markdown table: one line per run, test accuracy as mean ± sample std over seeds."""
    header = ["run", "weights", "activations", "W/A bits", "seeds", "test accuracy (%)",
              "per seed (%)"] + ([f"vs {baseline} (points)"] if baseline else []) + \
        ["val error (%): last (best)", "train min/run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows.values():
        cells = [row["label"], row["weight_quant"], row["act_quant"],
                 "32/32" if row["wbits"] == 32 else f"{row['wbits']}/{row['abits']}",
                 ", ".join(map(str, row["seeds"])), pm(row["accuracy_mean"], row["accuracy_std"]),
                 ", ".join(f"{100 * r['test_accuracy']:.2f}" for r in row["runs"])]
        if baseline:
            gap = ""
            if baseline in rows and row["label"] != baseline:
                diff = difference(row, rows[baseline])
                gap = pm(diff["difference"], diff["noise"], signed=True)
                gap += " (within noise)" if diff["verdict"] == "within noise" else ""
            cells.append(gap)
        cells.append("" if row["val_error_mean"] is None else
                     f"{row['val_error_mean']:.2f} ({row['best_val_error_mean']:.2f})")
        cells.append(f"{row['train_minutes_mean']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(rows: dict[str, dict], title: str, planned: int, baseline_label: str | None,
             command: str) -> str:
    done = sum(len(row["runs"]) for row in rows.values())
    status = "" if done == planned else (f" **Partial: {done} of {planned} trials finished** "
                                         f"(rerun with --resume to continue).")
    hosts = sorted({r["host"] for row in rows.values() for r in row["runs"]})
    images = next(iter(rows.values()))["runs"][0]["test_images"] if rows else 0
    lines = [f"# {title}", "",
             f"Written by `{command}`.{status} Hosts: {', '.join(hosts) or 'none yet'}.", "",
             "Test accuracy: mean ± sample standard deviation over the seeds, on "
             f"{images} test images"
             + (f"; \"vs {baseline_label}\": mean difference ± the combined spread "
                "sqrt(s_a² + s_b²), a difference no larger than it is noise" if baseline_label
                else "") +
             ". Validation error: the last epoch's (the best epoch's), mean over the seeds. "
             "\"train min/run\": wall-clock minutes of the epochs, on machines that may be "
             f"shared. {RESULTS_JSON} holds every trial, with accuracies and errors as "
             "fractions (0-1).", ""]
    lines += table(rows, baseline_label) if rows else ["No trial has finished yet."]
    lines += ["", f"![results]({RESULTS_PLOT})", ""]
    return "\n".join(lines)


def write_results(out: Path, records: list[dict], runs: list[str], planned: int, title: str,
                  baseline: str | None, command: str) -> None:
    """DIR/results.json, results.md and results.png from the trials finished so far."""
    from tinypact import plots
    from tinypact.checkpoint import write_json_atomic
    from tinypact.files import atomic_write

    out = Path(out)
    write_json_atomic(out / RESULTS_JSON, records)
    rows = rows_by_run(records, runs)
    baseline_label = next((row["label"] for row in rows.values() if row["run"] == baseline),
                          None)
    with atomic_write(out / RESULTS_MD, f".{RESULTS_MD}-", ".tmp", mode="w") as handle:
        handle.write(markdown(rows, title, planned, baseline_label, command))
    if rows:
        seeds = sorted({r["seed"] for r in records})
        plots.plot_study(list(rows.values()), out / RESULTS_PLOT,
                         title=f"{title}, seeds {', '.join(map(str, seeds))}")
