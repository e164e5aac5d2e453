"""python -m tinypact.sweep: sweep files, trials equal to the train CLI's runs (one after another
and on a local Ray instance), a killed trial retried by Ray Tune, resuming, the reports."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tinypact.sweep import cli, ray_tune
from tinypact.sweep.report import difference, mean_std, write_results
from tinypact.sweep.spec import SweepFileError, read_sweep

TINY = {"epochs": 2, "limit-train": 64, "val-size": 32, "limit-test": 64, "batch-size": 16,
        "no-export": True}
RUNS = {"pact-w2a2": {"bits": 2}, "dorefa-w2a2": {"bits": 2, "act-quant": "dorefa"}}
SEEDS = (0, 1)
# One thread per trial, as the train CLI runs with these variables (tinypact._threads).
ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def toml_value(value) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def write_sweep(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def tiny_sweep(path: Path) -> Path:
    """The 2-run x 2-seed sweep of the tests, on the bundled sample."""
    lines = ['dataset = "sample"', f"seeds = {list(SEEDS)}", "[options]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in TINY.items()]
    for name, options in RUNS.items():
        lines += ["[[run]]", f'name = "{name}"']
        lines += [f"{key} = {toml_value(value)}" for key, value in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def environment(**extra) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(ONE_THREAD, RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def run(args: list[str], cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command in its own session; whatever it leaves running (Ray's processes, if the
    command failed to stop them) is killed with it."""
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def sweep(sweep_file: Path, out: Path, *options: str, **env) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "tinypact.sweep", str(sweep_file), "--out", str(out),
                *options], cwd=out.parent, env=environment(**env))


def numbers(history: list[dict]) -> list[dict]:
    """Everything of an epoch's record but its wall-clock time."""
    return [{k: v for k, v in record.items() if k != "epoch_time"} for record in history]


def results_by_trial(out: Path) -> dict:
    return {(r["run"], r["seed"]): (r["test_accuracy"], numbers(r["history"]))
            for r in json.loads((out / "results.json").read_text())}


def assert_same_as_cli(out: Path, reference: dict) -> None:
    results = results_by_trial(out)
    assert set(results) == set(reference), f"trials {sorted(results)}, expected {sorted(reference)}"
    for key, (accuracy, history) in reference.items():
        assert results[key][0] == accuracy, \
            f"{key}: test accuracy {results[key][0]} in the sweep, {accuracy} from the train CLI"
        assert results[key][1] == history, f"{key}: per-epoch metrics differ from the train CLI's"


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory) -> dict:
    """(run, seed) -> (test accuracy, per-epoch metrics) of the four equivalent train CLI runs."""
    base = tmp_path_factory.mktemp("cli")
    reference = {}
    for seed in SEEDS:
        for name, options in RUNS.items():
            argv = ["sample", "--seed", str(seed), "--out", str(base / f"{name}-{seed}")]
            for key, value in {**TINY, **options}.items():
                argv += [f"--{key}"] if value is True else [f"--{key}", str(value)]
            proc = run([sys.executable, "-m", "tinypact.train", *argv], cwd=base,
                       env=environment())
            assert proc.returncode == 0, proc.stderr
            run_dir = base / f"{name}-{seed}"
            result = json.loads((run_dir / "result.json").read_text())
            history = [json.loads(line) for line in
                       (run_dir / "metrics.jsonl").read_text().splitlines()]
            reference[(name, seed)] = (result["test_accuracy"], numbers(history))
    return reference


# ------------------------------------------------------------------------------- sweep files
BROKEN = {
    "unknown option": ("""\
        dataset = "sample"
        seeds = [0]
        [[run]]
        name = "a"
        [[run]]
        name = "b"
        bitz = 2
        """, "run 'b': unknown option 'bitz'"),
    "unknown common option": ("""\
        seeds = [0]
        [options]
        epoch = 2
        [[run]]
        name = "a"
        """, "[options]: unknown option 'epoch'"),
    "missing run name": ("""\
        seeds = [0]
        [[run]]
        name = "a"
        [[run]]
        bits = 4
        """, "[[run]] #2 has no name"),
    "seeds not a list": ("seeds = 3\n[[run]]\nname = 'a'\n", "seeds: expected a non-empty list"),
    "negative seed": ("seeds = [0, -1]\n[[run]]\nname = 'a'\n", "got [0, -1]"),
    "repeated seed": ("seeds = [1, 1]\n[[run]]\nname = 'a'\n", "got [1, 1]"),
    "seed as text": ("seeds = ['0']\n[[run]]\nname = 'a'\n", "got ['0']"),
    "no seeds": ("[[run]]\nname = 'a'\n", "no seeds"),
    "seed option": ("seeds = [0]\n[[run]]\nname = 'a'\nseed = 3\n", "run 'a': option 'seed'"),
    "bad value": ("seeds = [0]\n[[run]]\nname = 'a'\nact-quant = 'foo'\n",
                  "run 'a': argument --act-quant: invalid choice: 'foo'"),
    "bad bits": ("seeds = [0]\n[[run]]\nname = 'w12'\nbits = 12\n", "run 'w12':"),
    "switch with a value": ("seeds = [0]\n[[run]]\nname = 'a'\nno-export = 1\n",
                            "run 'a': option 'no-export' is a switch"),
    "same name twice": ("seeds = [0]\n[[run]]\nname = 'a'\n[[run]]\nname = 'a'\n",
                        "run 'a': the name is used by an earlier run"),
    "no runs": ("seeds = [0]\n", "no runs"),
    "option at the top": ("seeds = [0]\nepochs = 2\n[[run]]\nname = 'a'\n",
                          "unknown key 'epochs' at the top of the file (train options go under"),
    "not TOML": ("seeds = [0\n", "not valid TOML"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_sweep_file_gets_one_line_naming_the_entry(case, tmp_path, capsys):
    text, expected = BROKEN[case]
    path = write_sweep(tmp_path / "broken.toml", text)
    code = cli.main([str(path), "--out", str(tmp_path / "out"), "--local-sequential"])
    err = capsys.readouterr().err
    assert code == 2, f"{case}: exit {code}, stderr {err!r}"
    assert err.startswith("error: ") and err.count("\n") == 1, f"{case}: not one line: {err!r}"
    assert str(path) in err and expected in err, f"{case}: {expected!r} not in {err!r}"
    assert not (tmp_path / "out").exists(), f"{case}: the output directory was created"


def test_a_sweep_file_means_what_the_train_cli_means(tmp_path):
    from tinypact.recipes import recipe

    path = write_sweep(tmp_path / "s.toml", """\
        dataset = "sample"
        seeds = [3, 1]
        [options]
        epochs = 1
        limit_train = 100
        [[run]]
        name = "float"
        label = "float network"
        bits = 32
        [[run]]
        name = "sawb"
        wbits = 2
        abits = 3
        weight-quant = "sawb"
        """)
    sweep = read_sweep(path)
    assert [t.name for t in sweep.trials] == ["float-seed3", "sawb-seed3", "float-seed1",
                                              "sawb-seed1"]
    assert sweep.trials[0].label == "float network" and sweep.trials[1].label == "sawb"
    assert sweep.trials[0].argv == ["sample", "--epochs", "1", "--limit-train", "100", "--bits",
                                    "32", "--seed", "3"]
    # --bits 32 is a float network: the train CLI's rule, not the recipe's fields alone.
    assert sweep.trials[0].config() == recipe("sample", epochs=1, limit_train=100, seed=3,
                                              wbits=32, abits=32, first_last_bits=32,
                                              act_quant="relu")
    assert sweep.trials[3].config() == recipe("sample", epochs=1, limit_train=100, seed=1,
                                              wbits=2, abits=3, weight_quant="sawb")


def test_without_ray_the_command_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ray_tune, "ray_available", lambda: False)
    code = cli.main([str(tiny_sweep(tmp_path / "s.toml")), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "pip install" in err and "[cluster]" in err and "--local-sequential" in err, err


def test_an_output_directory_is_never_mixed_up(tmp_path, capsys):
    path = tiny_sweep(tmp_path / "s.toml")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli.main([str(path), "--out", str(out), "--local-sequential"]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert cli.main([str(path), "--out", str(tmp_path / "new"), "--resume",
                     "--local-sequential"]) == 2
    assert "no sweep to resume" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- reports
def test_mean_and_sample_std():
    mean, std = mean_std([82.61, 78.78, 82.78])
    assert mean == pytest.approx(81.39)
    assert std == pytest.approx(math.sqrt(((1.22) ** 2 + (2.61) ** 2 + (1.39) ** 2) / 2))
    assert mean_std([87.12]) == (87.12, None)


def row(*accuracies: float) -> dict:
    mean, std = mean_std(list(accuracies))
    return {"accuracy_mean": mean, "accuracy_std": std}


def test_a_difference_is_stated_only_beyond_the_combined_spread():
    a, b = row(88.0, 88.4, 88.2), row(87.0, 87.4, 87.2)  # std 0.2 each: noise 0.28
    diff = difference(a, b)
    assert diff["difference"] == pytest.approx(1.0)
    assert diff["noise"] == pytest.approx(math.hypot(0.2, 0.2))
    assert diff["verdict"] == "higher" and difference(b, a)["verdict"] == "lower"
    wide = row(84.0, 88.0, 86.0)  # std 2: a 1-point gap is noise
    assert difference(wide, b)["verdict"] == "within noise"
    assert difference(row(90.0), b)["verdict"] == "spread unknown"


def test_results_md_gives_mean_and_spread_per_run(tmp_path):
    config = {"wbits": 2, "abits": 2, "weight_quant": "dorefa", "act_quant": "pact"}
    float_config = {"wbits": 32, "abits": 32, "weight_quant": "dorefa", "act_quant": "relu"}

    def record(run, seed, accuracy, cfg):
        return {"run": run, "label": run.upper(), "seed": seed, "config": cfg,
                "test_accuracy": accuracy, "test_error": 1 - accuracy, "test_images": 100,
                "final_val_error": 0.2, "best_val_error": 0.1, "train_seconds": 60.0,
                "host": "h", "history": [{"epoch": 1, "val_error": 0.2}]}

    records = [record("pact", 0, 0.80, config), record("pact", 1, 0.84, config),
               record("float", 0, 0.90, float_config)]
    write_results(tmp_path, records, ["float", "pact"], 4, "Tiny", "float", "cmd")
    text = (tmp_path / "results.md").read_text()
    assert "Partial: 3 of 4 trials finished" in text
    assert "| PACT | dorefa | pact | 2/2 | 0, 1 | 82.00 ± 2.83 | 80.00, 84.00 | -8.00 |" in text
    assert "| FLOAT | float | relu (float) | 32/32 | 0 | 90.00 | 90.00 |" in text
    assert json.loads((tmp_path / "results.json").read_text()) == records
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------- whole sweeps
@pytest.mark.slow
def test_local_sequential_sweep_equals_the_train_cli(tmp_path, cli_reference):
    sweep_file, out = tiny_sweep(tmp_path / "s.toml"), tmp_path / "out"
    proc = sweep(sweep_file, out, "--local-sequential", "--cpus-per-trial", "1")
    assert proc.returncode == 0, proc.stderr
    assert_same_as_cli(out, cli_reference)
    for record in json.loads((out / "results.json").read_text()):
        assert record["epochs"] == 2 and record["threads"] == 1 and record["host"]
        assert 0 <= record["best_val_error"] <= record["final_val_error"] <= 1
        for name in ("checkpoint.npz", "metrics.jsonl", "config.json", "result.json"):
            assert (out / record["name"] / name).exists(), f"{record['name']}/{name} missing"
    assert "±" in (out / "results.md").read_text()
    # --resume on a finished sweep trains nothing and reports the same.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.npz")}
    proc = sweep(sweep_file, out, "--local-sequential", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.npz")} == stamps
    assert_same_as_cli(out, cli_reference)


ray_needed = pytest.mark.skipif(not ray_tune.ray_available(),
                                reason="Ray Tune is not installed (pip install -e '.[cluster]')")
# A small local Ray instance: 2 CPUs, one per trial.
ON_RAY = ("--num-cpus", "2", "--cpus-per-trial", "1")


@pytest.mark.slow
@ray_needed
def test_sweep_on_local_ray_equals_the_train_cli_and_retries_a_killed_trial(tmp_path, cli_reference):
    """Four trials on a local Ray instance, one of them SIGKILLed after its first epoch on its
    first attempt: Tune retries it from its checkpoint, and every trial's numbers equal the train
    CLI's (one sweep for both behaviours: each costs a Ray start and four trainings)."""
    sweep_file, out = tiny_sweep(tmp_path / "s.toml"), tmp_path / "out"
    # pact-w2a2-seed1 SIGKILLs its process after epoch 1 (of 2) on its first attempt.
    kill = {ray_tune.KILL_AFTER_ENV: "pact-w2a2-seed1:1"}
    proc = sweep(sweep_file, out, *ON_RAY, **kill)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "tune" / "pact-w2a2-seed1" / "error.txt").exists(), "no failure recorded"
    assert f"resuming {out / 'pact-w2a2-seed1'} after epoch 1" in proc.stdout + proc.stderr
    assert_same_as_cli(out, cli_reference)
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    # Tune kept each trial's last epoch as its checkpoint.
    for name in ("pact-w2a2-seed0", "dorefa-w2a2-seed1", "pact-w2a2-seed1"):
        assert list((out / "tune" / name).glob("checkpoint_*/checkpoint.npz")), name


@pytest.mark.slow
@ray_needed
def test_resume_continues_an_interrupted_sweep(tmp_path, cli_reference):
    sweep_file, out = tiny_sweep(tmp_path / "s.toml"), tmp_path / "out"
    kill = {ray_tune.KILL_AFTER_ENV: "pact-w2a2-seed1:1"}
    proc = sweep(sweep_file, out, *ON_RAY, "--max-failures", "0", **kill)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "trial pact-w2a2-seed1 failed" in proc.stderr
    assert len(json.loads((out / "results.json").read_text())) == 3
    assert "Partial: 3 of 4 trials finished" in (out / "results.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/sweep_trial.json")}
    proc = sweep(sweep_file, out, *ON_RAY, "--resume", **kill)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/sweep_trial.json")
            if p in stamps} == stamps, "a finished trial was trained again"
    assert_same_as_cli(out, cli_reference)
