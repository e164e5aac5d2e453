"""MkDocs hook: the pages built from the code and the benchmark results at build time.

- `cli.md`: every command's `--help`, from the same argparse parsers the commands run, so the
  reference cannot drift from the code;
- `benchmarks/*.md` and `benchmarks/*.png`: the files `benchmarks/results/` holds, as the
  benchmark scripts last wrote them. A results page is built whether or not mkdocs.yml's nav
  lists it (a new study's page does not fail the build; link it from docs/benchmarks.md or the nav).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
HELP_WIDTH = "100"  # argparse wraps --help to $COLUMNS

INTRO = """# Command line

Every command's `--help`, generated from the code when this site is built. The console scripts
`tinypact-train` and `integer-engine` (installed by `pip install -e .`) are the same commands as
`python -m tinypact.train` and `python -m integer_engine`.

A mistake on the command line (a missing file, an option out of range) ends in one line on
stderr that starts with `error:` and says what to do next, with a non-zero exit status; progress
bars are drawn only on a terminal.
"""


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name, in the order they were registered."""
    for action in parser._actions:  # argparse has no public accessor for its subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def help_section(title: str, parser: argparse.ArgumentParser, level: str = "##") -> str:
    return f"{level} `{title}`\n\n```text\n{parser.format_help().rstrip()}\n```\n"


def cli_reference() -> str:
    from integer_engine import cli as engine_cli
    from tinypact import evaluate, train
    from tinypact.sweep import cli as sweep_cli

    old_columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH
    try:
        sections = [INTRO,
                    help_section("python -m tinypact.train", train.build_parser()),
                    help_section("python -m tinypact.evaluate", evaluate.build_parser()),
                    help_section("python -m tinypact.sweep", sweep_cli.build_parser())]
        engine = engine_cli.build_parser()
        sections.append(help_section("python -m integer_engine", engine))
        for name, parser in subcommands(engine).items():
            sections.append(help_section(f"python -m integer_engine {name}", parser, "###"))
    finally:
        if old_columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old_columns
    return "\n".join(sections)


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "cli.md", content=cli_reference()))
    for path in sorted(RESULTS.glob("*.md")) + sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"benchmarks/{path.name}", abs_src_path=str(path),
                                    inclusion=InclusionLevel.NOT_IN_NAV))
    return files
