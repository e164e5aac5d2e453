"""The tutorials are executed, not just rendered: every committed notebook runs top to bottom.

Each notebook `tutorials/NN_name.ipynb` is paired (jupytext) with a percent-format script
`tutorials/NN_name.py` holding the same cells as readable text. One check keeps every pair in
step; the other runs each notebook in a fresh `python3` kernel with cwd = tutorials/,
TINYPACT_TUTORIAL_FAST=1 (tiny settings) and one Numba/BLAS thread (predictable time on a shared
machine). A failure names the notebook, the cell index, its source and the error.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
NAMES = sorted(path.stem for path in TUTORIALS.glob("*.ipynb"))
FAST_FLAG = "TINYPACT_TUTORIAL_FAST"
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS")
# A kernel that has not started by then is broken, not slow (nbclient's default is 60 s, which
# a 2-core machine running other jobs can exceed while the kernel imports NumPy and Numba).
KERNEL_START_SECONDS = 1800
SYNC_HINT = "run `jupytext --sync tutorials/{name}.ipynb` (the newer file of the pair wins)"


def test_every_notebook_is_paired_with_a_script():
    scripts = sorted(path.stem for path in TUTORIALS.glob("[0-9][0-9]_*.py"))
    assert NAMES and scripts == NAMES, (
        f"tutorials/*.ipynb {NAMES} and tutorials/*.py {scripts} must come in pairs: "
        f"`jupytext --set-formats ipynb,py:percent tutorials/NAME.ipynb` pairs a new notebook")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_and_script_hold_the_same_cells(name):
    notebook = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    script = jupytext.read(TUTORIALS / f"{name}.py")
    assert notebook.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent", (
        f"{name}.ipynb is not paired with its script: "
        f"`jupytext --set-formats ipynb,py:percent tutorials/{name}.ipynb`")
    got = [(cell.cell_type, cell.source) for cell in notebook.cells]
    want = [(cell.cell_type, cell.source) for cell in script.cells]
    for index, (ipynb_cell, py_cell) in enumerate(zip(got, want)):
        assert ipynb_cell == py_cell, (
            f"{name}.ipynb cell [{index}] differs from {name}.py:\nipynb:\n{ipynb_cell[1]}\n---\n"
            f"py:\n{py_cell[1]}\n{SYNC_HINT.format(name=name)}")
    assert len(got) == len(want), (f"{name}.ipynb has {len(got)} cells, {name}.py {len(want)}; "
                                   + SYNC_HINT.format(name=name))


class NotebookFailed(Exception):
    """A notebook cell raised (or timed out); the message names the cell and the error."""


def execute(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel with cwd = tutorials/, the tiny settings and one thread.

    One thread: on a machine shared with other jobs, multi-threaded kernels that wait on each
    other's barriers can run 10x slower than one thread. No time limits (nbclient's defaults
    fail a cell after `timeout` and a kernel that is not up within 60 s): how long a cell takes
    on a loaded machine says nothing about the notebook.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    env = {**os.environ, FAST_FLAG: "1", **{name: "1" for name in THREAD_VARIABLES}}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    current = {"index": -1}

    def on_cell_start(cell, cell_index):
        current["index"] = cell_index

    client = NotebookClient(nb, timeout=None, startup_timeout=KERNEL_START_SECONDS, iopub_timeout=60,
                            kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(TUTORIALS)}},
                            on_cell_start=on_cell_start)
    try:
        client.execute(env=env)
    except (CellExecutionError, CellTimeoutError) as error:
        # the error text already holds the cell's source, its output and the traceback
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
        raise NotebookFailed(f"cell [{current['index']}] failed: {text}") from None
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name):
    nb = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    try:
        execute(nb)
    except NotebookFailed as error:
        pytest.fail(f"{name}.ipynb: {error}", pytrace=False)
    errors = [(index, output.get("ename"), output.get("evalue"))
              for index, cell in enumerate(nb.cells) if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors, f"{name}.ipynb: cells raised (index, error, message): {errors}"
