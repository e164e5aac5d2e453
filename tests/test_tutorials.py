"""The tutorials are executed, not just rendered: every committed notebook runs top to bottom.

Each notebook runs in a fresh `python3` kernel with cwd = tutorials/, TINYPACT_TUTORIAL_FAST=1
(tiny settings) and one Numba/BLAS thread (predictable time on a shared machine). A failure names
the notebook, the cell index, its source and the error.
A second check keeps the committed notebooks in step with their source, `tutorials/build.py`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"


def _load_build():
    spec = importlib.util.spec_from_file_location("tutorials_build", TUTORIALS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()
NAMES = sorted(build.NOTEBOOKS)


def test_every_notebook_is_built_and_committed():
    committed = sorted(path.stem for path in TUTORIALS.glob("*.ipynb"))
    assert committed == NAMES, (f"tutorials/*.ipynb {committed} != notebooks defined in "
                                f"tutorials/build.py {NAMES}: run `python tutorials/build.py --execute`")


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_build_script(name):
    committed = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    expected = build.build(name)
    got_sources = [(cell.cell_type, cell.source) for cell in committed.cells]
    want_sources = [(cell.cell_type, cell.source) for cell in expected.cells]
    for index, (got, want) in enumerate(zip(got_sources, want_sources)):
        assert got == want, (f"{name}.ipynb cell [{index}] differs from tutorials/build.py:\n"
                             f"committed:\n{got[1]}\n---\nbuild.py:\n{want[1]}\n"
                             f"run `python tutorials/build.py --execute {name}`")
    assert len(got_sources) == len(want_sources), (
        f"{name}.ipynb has {len(got_sources)} cells, build.py defines {len(want_sources)}")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name):
    nb = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    try:
        build.execute(nb, fast=True, timeout=300, single_thread=True)
    except build.NotebookFailed as error:
        pytest.fail(f"{name}.ipynb: {error}", pytrace=False)
    errors = [(index, output.get("ename"), output.get("evalue"))
              for index, cell in enumerate(nb.cells) if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors, f"{name}.ipynb: cells raised (index, error, message): {errors}"
