"""The shell commands the README and the documentation pages show, as runnable scripts.

A block is a fenced ```bash (or ```sh, ```shell) block. Each command in it (a line, with its `\\`
continuations) is either run as written or, when it is slow or changes the environment
(installing, training, benchmarks, the whole test suite), replaced by a no-op that names it;
tests/test_docs.py runs the rest on a fresh copy of the repository. Variable assignments stay,
so a block that sets `RUN=...` first runs as a user would paste it. A block right after the
line `<!-- not run by the tests -->` (a slow or cluster-only example) is not run at all.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(bash|sh|shell)\s*\n(.*?)^```", re.M | re.S)
NOT_RUN_MARK = "<!-- not run by the tests -->"

# Commands too slow for the test suite, or that install or change the environment.
NOT_RUN = (
    re.compile(r"^(\S*/)?(pip3?|python3? -m (pip|venv)|apt-get|jupyter|jupytext|mkdocs)\b"),
    re.compile(r"^(python -m tinypact\.(train|sweep)|tinypact-train)\b(?!.*--help)"),
    re.compile(r"^(\S*/)?python3? (benchmarks|scripts)/"),
    re.compile(r"^python (tests/replay_hardening\.py|-m pytest)"),
)


@dataclass
class Block:
    source: Path      # the Markdown file
    line: int         # the line of its opening fence
    text: str

    @property
    def name(self) -> str:
        return f"{self.source.name}:{self.line}"

    def commands(self) -> list[str]:
        """The block's commands, each with its continuation lines joined."""
        commands, current = [], ""
        for line in self.text.splitlines():
            current += line
            if line.endswith("\\"):
                current = current[:-1] + " "
                continue
            if current.strip():
                commands.append(current.strip())
            current = ""
        return commands

    def script(self) -> str:
        """The block as a bash script: the cheap commands as written, the others as no-ops."""
        lines = ["set -euo pipefail"]
        for command in self.commands():
            if command.startswith("#"):
                continue
            if is_cheap(command):
                lines.append(command)
            else:
                lines.append(f": not run here: {command.split('#')[0].strip()!r}")
        return "\n".join(lines) + "\n"

    def runs_anything(self) -> bool:
        return any(is_cheap(c) and not is_assignment(c) for c in self.commands()
                   if not c.startswith("#"))


def is_assignment(command: str) -> bool:
    return re.match(r"^[A-Z_][A-Z0-9_]*=\S*(\s+#.*)?$", command) is not None


def is_cheap(command: str) -> bool:
    command = re.sub(r"^\.\s", "source ", command)
    command = re.sub(r"^([A-Z_][A-Z0-9_]*=\S*\s+)+", "", command)  # VAR=value before a command
    return not any(pattern.search(command) for pattern in NOT_RUN)


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    return [Block(path, text.count("\n", 0, match.start()) + 1, match.group(2))
            for match in FENCE.finditer(text)
            if not text[:match.start()].rstrip().endswith(NOT_RUN_MARK)]
