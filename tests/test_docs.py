"""The documentation: the site builds, renders offline in a real browser, and its commands run.

- the site (mkdocs.yml) builds with `mkdocs build --strict` (broken links, missing anchors and
  pages left out of the nav fail it) and references nothing on the internet for scripts, styles
  or fonts; skipped only where the docs extra is not installed;
- scripts/check_docs.py opens it in Debian's headless Chromium (skipped without /usr/bin/chromium);
- every cheap shell command of README.md and docs/*.md runs as written on a fresh copy of the
  repository after a (short) run of the main command, and writes nothing into the repository
  root (tests/shell_blocks.py says which commands are cheap).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shell_blocks import Block, blocks, is_cheap

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         ROOT / "tutorials" / "README.md"]
ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
HAS_MKDOCS = all(importlib.util.find_spec(name) for name in
                 ("mkdocs", "material", "mkdocs_jupyter", "mkdocstrings_handlers", "latex2mathml"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime", "qonnx"))
# What a fresh clone does not have: build products, caches, runs. Numba's compiled kernels
# (`__pycache__/*.nbi, *.nbc`) are kept: they are keyed by each source file's size and mtime
# (which the copy keeps), change no result, and spare the copy minutes of recompiling.
NOT_IN_A_CLONE = shutil.ignore_patterns(".git", ".venv*", "runs", "site", "site-check", ".cache",
                                        ".hypothesis", ".pytest_cache", "*.egg-info", "build",
                                        "accelerator_out")
# Anything the built site would fetch from the internet to render.
EXTERNAL_ASSET = re.compile(
    r"""<script[^>]+src=["']?(https?:)?//"""
    r"""|<link[^>]+rel=["']?stylesheet[^>]+href=["']?(https?:)?//"""
    r"""|@import\s+url\(["']?(https?:)?//|url\(["']?(https?:)?//[^)]*\.(woff2?|ttf|otf)""", re.I)


def run(args: list[str], cwd: Path, timeout: float, env: dict | None = None):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if not HAS_MKDOCS:
        pytest.skip("the docs extra is not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                 ROOT, timeout=900, env=env)
    assert result.returncode == 0, (
        f"`mkdocs build --strict` failed (exit {result.returncode}):\n"
        + "\n".join(line for line in result.stderr.splitlines() if "INFO" not in line)[-4000:])
    return out


@pytest.mark.slow
def test_site_builds_with_every_page(site):
    nav_pages = ["index.html", "getting-started/index.html", "tutorials/index.html",
                 "benchmarks/index.html", "cli/index.html", "api/tinypact/index.html",
                 "api/integer_engine/index.html", "interop/index.html", "model-format/index.html",
                 "benchmarks/accuracy_study/index.html"]
    missing = [page for page in nav_pages if not (site / page).is_file()]
    assert not missing, f"pages missing from the built site: {missing}"
    tutorials = sorted((site / "tutorials").glob("0*/index.html"))
    assert len(tutorials) == len(list((ROOT / "tutorials").glob("*.ipynb"))), tutorials
    for page in tutorials:
        html = page.read_text(encoding="utf-8")
        assert "data:image/png;base64" in html, f"{page}: no plot among the stored outputs"
        assert "<math" in html and "$$" not in html, f"{page}: math not typeset"


@pytest.mark.slow
def test_site_renders_offline(site):
    offending = {}
    for path in site.rglob("*"):
        if path.suffix in (".html", ".css", ".js") and path.is_file():
            found = EXTERNAL_ASSET.search(path.read_text(encoding="utf-8", errors="replace"))
            if found:
                offending[str(path.relative_to(site))] = found.group(0)[:120]
    assert not offending, f"the site loads scripts, styles or fonts from the internet: {offending}"


@pytest.mark.slow
def test_cli_reference_has_every_command(site):
    from integer_engine import cli

    html = (site / "cli" / "index.html").read_text(encoding="utf-8")
    parser = cli.build_parser()
    names = next(action.choices for action in parser._actions if hasattr(action, "choices")
                 and isinstance(action.choices, dict))
    for name in ["tinypact.train", "tinypact.evaluate", *(f"integer_engine {n}" for n in names)]:
        assert f"python -m {name}" in html, f"the CLI reference lacks `python -m {name}`"
    assert "--shortcut-bits" in html and "--sweep-bits" in html


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} "
                    "(apt-get install chromium)")
def test_site_in_a_real_browser(site, tmp_path):
    pytest.importorskip("websocket", reason="websocket-client comes with the docs extra")
    result = run([sys.executable, str(ROOT / "scripts" / "check_docs.py"), "--site", str(site),
                  "--out", str(tmp_path), "--chromium", CHROMIUM], ROOT, timeout=300)
    assert result.returncode == 0, f"check_docs.py:\n{result.stdout}\n{result.stderr}"
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert {"home.png", "tutorial.png", "tutorial-plot.png", "api.png"} <= set(shots), shots


BROKEN_BITS = ('<p>raw $$\\alpha + 1$$ math</p><img src="missing.png">'
               '<script>notDefinedAnywhere()</script>'
               '<script src="https://cdn.invalid/tinypact-check.js"></script>')


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
def test_browser_check_catches_a_broken_page(site, tmp_path):
    """The check can fail: a home page with raw LaTeX, a missing image, a JavaScript error and
    a script from the internet is refused, each for its own reason."""
    pytest.importorskip("websocket", reason="websocket-client comes with the docs extra")
    broken = tmp_path / "site"
    shutil.copytree(site, broken)
    home = broken / "index.html"
    home.write_text(home.read_text(encoding="utf-8").replace("<h1", BROKEN_BITS + "<h1", 1),
                    encoding="utf-8")
    result = run([sys.executable, str(ROOT / "scripts" / "check_docs.py"), "--site", str(broken),
                  "--out", str(tmp_path / "shots"), "--chromium", CHROMIUM], ROOT, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    for reason in ("raw LaTeX", "image did not load", "notDefinedAnywhere",
                   "request leaves the site"):
        assert reason in result.stdout, f"check_docs.py missed {reason!r}:\n{result.stdout}"


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme) < 12_000, f"README.md has {len(readme)} characters: move detail to docs/"
    for needed in ("python -m tinypact.train", "tinypact-train", "integer-engine", "bit-exact",
                   "mkdocs build --strict"):
        assert needed in readme, f"README.md does not mention {needed!r}"
    for dev_only in (re.compile(r"issue #\d+|\(#\d+\)"), re.compile(r"OPENBLAS_CORETYPE=Haswell")):
        assert not dev_only.search(readme), f"README.md: development detail {dev_only.pattern}"


def test_shell_blocks_are_classified():
    """The cheap set holds what the test below must run; the slow set what it must not."""
    assert ALL_BLOCKS, "no ```bash blocks found in README.md and docs/*.md"
    commands = [c for block in ALL_BLOCKS for c in block.commands()]
    assert any("export-onnx" in c for c in commands if is_cheap(c))
    assert not is_cheap("python -m tinypact.train fashion-mnist --bits 4")
    assert is_cheap("python -m tinypact.train --help") and is_cheap("tinypact-train --help")
    assert not is_cheap("pip install -e '.[docs]'") and not is_cheap("python benchmarks/engine.py")
    assert not is_cheap("TINYPACT_TUTORIAL_FAST=1 jupyter execute --inplace tutorials/03_pact.ipynb")
    assert not is_cheap("python -m tinypact.sweep benchmarks/accuracy_study.toml --out runs/study")
    bare = [c for c in commands if is_cheap(c) and re.search(r"(?<![/\w$.-])model\.tpq\b", c)]
    assert not bare, f"commands that use a model.tpq no run has written: {bare}"


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """The repository as a clone has it, plus the run the quick start's main command writes."""
    clone = tmp_path_factory.mktemp("clone") / "tinypact"
    shutil.copytree(ROOT, clone, ignore=NOT_IN_A_CLONE, symlinks=True)
    # The main command, shortened: the same run directory and files, one epoch on a subset.
    result = run([sys.executable, "-m", "tinypact.train", "--epochs", "1", "--limit-train", "256",
                  "--limit-test", "100", "--val-size", "64", "--no-progress"],
                 clone, timeout=900, env=block_env())
    assert result.returncode == 0, f"the main command failed:\n{result.stdout}\n{result.stderr}"
    assert (clone / "runs" / "sample-w2a2-pact" / "model.tpq").is_file(), result.stdout
    return clone


def block_env() -> dict:
    """`python` and the console scripts are this interpreter's, as in an activated venv."""
    bin_dir = Path(sys.executable).parent
    return {**os.environ, "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
            "PYTHONPATH": "", "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.runs_anything()],
                         ids=lambda block: block.name)
def test_shell_block_runs_on_a_fresh_clone(block: Block, fresh_clone: Path):
    if not HAS_ONNX and ("onnx" in block.text or "import " in block.text):
        pytest.skip("the onnx extra is not installed: pip install -e '.[onnx]'")
    if shutil.which("python", path=block_env()["PATH"]) is None:
        pytest.skip("no `python` on PATH for the shell blocks")
    before = {p.name for p in fresh_clone.iterdir()} | {"runs"}
    result = run(["bash", "-c", block.script()], fresh_clone, timeout=600, env=block_env())
    assert result.returncode == 0, (
        f"{block.name}: a command shown in the docs failed (exit {result.returncode}).\n"
        f"script:\n{block.script()}\nstderr:\n{result.stderr[-3000:]}")
    written = {p.name for p in fresh_clone.iterdir()} - before
    assert not written, f"{block.name} wrote {sorted(written)} into the repository root"
