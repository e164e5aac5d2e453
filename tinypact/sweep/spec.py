"""The sweep file: a data set, options common to every run, named runs and seeds -> trials.

    dataset = "sample"          # the train CLI's DATASET (a run may set its own)
    seeds = [0, 1]              # every run is trained once per seed
    title = "..."               # optional: the report's title
    baseline = "float"          # optional: results.md compares every run with this one
    [options]                   # any `python -m tinypact.train` option, without its dashes
    epochs = 1
    limit-train = 1000
    [[run]]
    name = "pact-w2a2"          # the trial directories are DIR/<name>-seed<k>
    label = "PACT W2A2"         # optional: the name shown in results.md and the plot
    bits = 2                    # the run's own options, over the common ones

A trial is one (run, seed): the train CLI's arguments it stands for (`Trial.argv`) are parsed by
the train CLI's own parser (`tinypact.train.build_parser`) and turned into a TrainConfig by its
`config_from_args`, so any option the CLI has works here and means the same. Every trial is
checked when the file is read: a mistake is one `SweepFileError` line naming the entry.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

from tinypact.recipes import TrainConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# Keys of the file's top level; `dataset` and `model` are also train options (common to all runs).
TOP_KEYS = ("dataset", "model", "seeds", "title", "baseline", "options", "run")
RUN_KEYS = ("name", "label")
# Train options a sweep decides itself, with what to do instead.
SWEEP_DECIDES = {
    "seed": "the seeds come from the `seeds` list",
    "out": "each trial trains into DIR/<run>-seed<k> (DIR: the sweep's --out)",
    "resume": "pass --resume to python -m tinypact.sweep",
}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class SweepFileError(ValueError):
    """A mistake in a sweep file; the message is one line naming the file and the entry."""


class _RaisingParser(argparse.ArgumentParser):
    """The train CLI's parser, raising instead of exiting, so the sweep names the entry."""

    def error(self, message: str):
        raise ValueError(message)


@dataclass(frozen=True)
class Trial:
    """One (run, seed): `options` as in the sweep file (common ones, then the run's own)."""

    run: str
    seed: int
    options: dict = field(hash=False)
    label: str = ""

    @property
    def name(self) -> str:
        return f"{self.run}-seed{self.seed}"

    @property
    def argv(self) -> list[str]:
        """The `python -m tinypact.train` arguments this trial stands for (without --out)."""
        return options_to_argv(self.options) + ["--seed", str(self.seed)]

    def config(self) -> TrainConfig:
        """The TrainConfig the train CLI makes of `argv` (ValueError if it is invalid)."""
        return config_from_argv(self.argv)


@dataclass(frozen=True)
class Sweep:
    trials: tuple[Trial, ...]
    runs: tuple[str, ...]
    seeds: tuple[int, ...]
    title: str = ""
    baseline: str | None = None

    def to_dict(self) -> dict:
        """What identifies the sweep (DIR/sweep.json): a resumed sweep must have the same."""
        return {"title": self.title, "baseline": self.baseline, "seeds": list(self.seeds),
                "trials": [{"run": t.run, "seed": t.seed, "label": t.label, "argv": t.argv}
                           for t in self.trials]}


def train_options() -> dict[str, argparse.Action]:
    """The train CLI's options by their name without dashes ('limit-train'), plus 'dataset'."""
    from tinypact.train import build_parser

    options = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            options[action.dest] = action  # the positional DATASET
        for string in action.option_strings:
            if string.startswith("--"):
                options[string[2:]] = action
    return options


def options_to_argv(options: dict) -> list[str]:
    """{'dataset': 'sample', 'limit-train': 100, 'no-export': True} -> train CLI arguments."""
    argv = [str(options["dataset"])] if "dataset" in options else []
    for key, value in options.items():
        if key == "dataset" or value is False:
            continue
        argv += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return argv


def config_from_argv(argv: list[str]) -> TrainConfig:
    from tinypact.train import build_parser, config_from_args

    return config_from_args(build_parser(_RaisingParser).parse_args(argv))


def _check_options(table, where: str, known: dict[str, argparse.Action], skip=()) -> dict:
    """The option table of one entry, keys normalized ('limit_train' -> 'limit-train')."""
    if not isinstance(table, dict):
        raise SweepFileError(f"{where}: expected a table of train options, got {table!r}")
    options = {}
    for key, value in table.items():
        if key in skip:
            continue
        name = key.lstrip("-").replace("_", "-")
        if name in SWEEP_DECIDES:
            raise SweepFileError(f"{where}: option '{key}' cannot be set in a sweep file: "
                                 f"{SWEEP_DECIDES[name]}")
        if name not in known:
            raise SweepFileError(f"{where}: unknown option '{key}' (the options are those of "
                                 f"python -m tinypact.train --help, without the dashes)")
        if known[name].nargs == 0:  # a switch such as no-export
            if not isinstance(value, bool):
                raise SweepFileError(f"{where}: option '{key}' is a switch: give true or false, "
                                     f"not {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SweepFileError(f"{where}: option '{key}' takes one value (a number or a "
                                 f"string), not {value!r}")
        options[name] = value
    return options


def _check_seeds(seeds, path: str) -> tuple[int, ...]:
    good = (isinstance(seeds, list) and seeds and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        and len(set(seeds)) == len(seeds))
    if not good:
        raise SweepFileError(f"{path}: seeds: expected a non-empty list of distinct non-negative "
                             f"integers such as seeds = [0, 1, 2], got {seeds!r}")
    return tuple(seeds)


def parse_sweep(data: dict, path: str = "sweep file") -> Sweep:
    """A Sweep from the parsed TOML of a sweep file; SweepFileError names a wrong entry."""
    unknown = [key for key in data if key not in TOP_KEYS]
    if unknown:
        hint = (" (train options go under [options] or in a [[run]])"
                if unknown[0].replace("_", "-") in train_options() else "")
        raise SweepFileError(f"{path}: unknown key '{unknown[0]}' at the top of the file{hint}; "
                             f"the top-level keys are {', '.join(TOP_KEYS)}")
    if "seeds" not in data:
        raise SweepFileError(f"{path}: no seeds; add e.g. seeds = [0, 1] at the top of the file")
    seeds = _check_seeds(data["seeds"], path)
    known = train_options()
    common = {key: data[key] for key in ("dataset", "model") if key in data}
    common = _check_options(common, path, known)
    common.update(_check_options(data.get("options", {}), f"{path}: [options]", known))
    runs = data.get("run")
    if not isinstance(runs, list) or not runs:
        raise SweepFileError(f"{path}: no runs; add at least one [[run]] table with a name")
    names: list[str] = []
    run_options: list[tuple[str, str, dict]] = []
    for number, run in enumerate(runs, 1):
        where = f"{path}: [[run]] #{number}"
        if not isinstance(run, dict) or "name" not in run:
            raise SweepFileError(f"{where} has no name; give it one, e.g. name = \"pact-w2a2\"")
        name = run["name"]
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise SweepFileError(f"{where}: name {name!r} must be letters, digits, '.', '_', "
                                 f"'+' or '-' (it names the trial directories)")
        where = f"{path}: run '{name}'"
        if name in names:
            raise SweepFileError(f"{where}: the name is used by an earlier run; names must differ")
        label = run.get("label", name)
        if not isinstance(label, str):
            raise SweepFileError(f"{where}: label must be a string, got {label!r}")
        names.append(name)
        run_options.append((name, label, {**common, **_check_options(run, where, known,
                                                                     skip=RUN_KEYS)}))
    baseline = data.get("baseline")
    if baseline is not None and baseline not in names:
        raise SweepFileError(f"{path}: baseline {baseline!r} is not the name of a run "
                             f"({', '.join(names)})")
    trials = []
    for seed in seeds:  # seed by seed: a partial sweep has every run for its first seeds
        for name, label, options in run_options:
            trial = Trial(name, seed, options, label)
            try:
                trial.config()
            except ValueError as err:
                raise SweepFileError(f"{path}: run '{name}': {err}") from None
            trials.append(trial)
    title = data.get("title", "")
    if not isinstance(title, str):
        raise SweepFileError(f"{path}: title must be a string, got {title!r}")
    return Sweep(tuple(trials), tuple(names), seeds, title, baseline)


def read_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file (TOML); SweepFileError with one line on any mistake."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SweepFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SweepFileError(f"{path}: cannot read it ({err})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SweepFileError(f"{path}: not valid TOML: {err}") from None
    return parse_sweep(data, str(path))
