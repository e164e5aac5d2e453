"""benchmarks/accuracy_study.py: run order, targets, its sweep files (the statistics it uses:
tinypact.sweep.report, tests/test_sweep.py)."""
import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy_study.py"
_spec = importlib.util.spec_from_file_location("accuracy_study", SCRIPT)
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def row(*accuracies: float) -> dict:
    mean, std = study.mean_std(list(accuracies))
    return {"accuracy_mean": mean, "accuracy_std": std}


def test_run_order_puts_the_compared_rows_first_then_seed_by_seed():
    labels = list(study.CONFIGS)
    order = study.run_order(labels, [0, 1, 2])
    assert order[:2] == [("PACT W2A2", 0), ("PACT W4A4", 0)]
    assert [seed for _, seed in order] == [0] * 7 + [1] * 7 + [2] * 7
    assert sorted(order) == sorted((label, seed) for label in labels for seed in (0, 1, 2))
    assert study.run_order(["float"], [3]) == [("float", 3)]


def test_targets_are_judged_against_the_spread():
    rows = {"float": row(88.0, 88.2, 88.4), "PACT W4A4": row(88.1, 88.3, 88.5),
            "PACT W2A2": row(82.0, 86.0, 84.0), "DoReFa W2A2": row(83.0, 83.2, 83.4)}
    verdicts = {t["target"]: t["verdict"] for t in study.check_targets(rows)}
    # W4A4 is 0.1 above float: margin 0.6 > noise 0.28.
    assert verdicts["PACT W4A4 within 0.5 points of float"] == "met"
    # W2A2 is 4.2 below float: margin -2.2, noise 2.0.
    assert verdicts["PACT W2A2 within 2 points of float"] == "missed"
    # W2A2 - DoReFa = +0.8 with a spread of 2.0.
    assert verdicts["PACT beats DoReFa activations at 2 bits"] == "within noise"


def test_resnet20_study_rows_and_brevitas_rows_are_read_back(tmp_path):
    """The ResNet20 study's schedule trains resnet20 at every row; a finished Brevitas run on the
    same schedule becomes a row of the table, one on another schedule does not."""
    import json

    resnet = study.STUDIES["resnet20"]
    for label in resnet.configs:
        config = study.config_for(label, 1, resnet.schedule, None, resnet.configs)
        assert config.model_name == "resnet20" and config.seed == 1, label
    assert study.config_for("PACT+SAWB W2A2 SC2", 0, resnet.schedule, None,
                            resnet.configs).shortcut_bits == 2
    runs = tmp_path / "runs"
    for seed, accuracy, schedule in ((0, 0.8, resnet.schedule), (1, 0.82, resnet.schedule),
                                     (2, 0.5, resnet.quick)):
        run = runs / f"brevitas-w2a2-sc8-seed{seed}"
        run.mkdir(parents=True)
        (run / "result.json").write_text(json.dumps({
            "row": "Brevitas W2A2 SC8", "seed": seed, "test_accuracy": accuracy,
            "test_error": 1 - accuracy, "test_images": 10000, "val_error": 0.2,
            "train_time": 60.0, "history": [], "schedule": schedule}))
    rows = study.external_rows(runs, resnet.schedule)
    assert list(rows) == ["Brevitas W2A2 SC8"]
    row = rows["Brevitas W2A2 SC8"]
    assert row["seeds"] == [0, 1] and (row["wbits"], row["abits"]) == (2, 2)
    assert row["accuracy_mean"] == pytest.approx(81.0)
    assert row["accuracy_std"] == pytest.approx(math.sqrt(2) * 1.0)


@pytest.mark.parametrize("model", ["fmnist", "resnet20"])
def test_the_sweep_files_train_the_study_runs(model):
    """benchmarks/accuracy_study*.toml, run by python -m tinypact.sweep, trains every run of the
    study with the configuration this script trains it with, into the directory it reads."""
    from tinypact.sweep.spec import read_sweep

    one = study.STUDIES[model]
    sweep = read_sweep(study.SWEEP_FILES[model])
    assert sweep.seeds == one.seeds
    assert [t.label for t in sweep.trials[:len(one.configs)]] == list(one.configs)
    for trial in sweep.trials:
        expected = study.config_for(trial.label, trial.seed, one.schedule, None, one.configs)
        assert trial.config() == expected, f"{trial.name}: {trial.config()} != {expected}"
        assert trial.name == study.run_dir_of(Path("."), trial.label, trial.seed).name
