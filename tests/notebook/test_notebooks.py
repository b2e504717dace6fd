"""Every tutorial in ``notebooks/`` runs top to bottom in a real kernel without an error.

nbval (``uv run pytest`` collects ``notebooks/*.ipynb`` with ``--nbval-lax``) compares the
outputs of the cells marked ``# NBVAL_CHECK_OUTPUT`` but passes a cell whose magic raised
``UsageError``, since IPython shows that as text on stderr, not as an error output. Here a
failing cell, an error output and anything written to stderr all fail the tutorial.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from tests.notebook.tutorials import TUTORIALS, execute_notebook, problems_in

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_the_tutorials_are_there() -> None:
    names = [path.name for path in TUTORIALS]
    assert names == [
        "01-quickstart.ipynb",
        "02-workers-and-timers.ipynb",
        "03-human-in-the-loop.ipynb",
        "04-debugging.ipynb",
        "05-exploring-logs.ipynb",
        "06-everyday-data-work.ipynb",
        "07-iterate-on-a-pipeline.ipynb",
    ]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda path: path.stem)
def test_tutorial_runs_without_errors(path: Path, tmp_path: Path) -> None:
    notebook = execute_notebook(path, tmp_path)

    assert problems_in(notebook) == []
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code_cells), "a code cell did not run"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda path: path.stem)
def test_tutorial_is_stored_with_its_outputs(path: Path) -> None:
    # GitHub shows the stored outputs: every code cell has run, in order, and widget views
    # have their state saved next to them.
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))
    views = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
    ]
    if views:
        state = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]
        for view in views:
            model_id = view["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
            assert model_id in state["state"]


def test_a_usage_error_fails_the_run(tmp_path: Path) -> None:
    # The case nbval lets through: a magic with bad arguments prints its usage and no error.
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("%load_ext pyergon"),
        nbformat.v4.new_code_cell("%pyergon flows --no-such-option"),
    ]
    path = tmp_path / "source" / "usage-error.ipynb"
    path.parent.mkdir()
    nbformat.write(notebook, path)

    with pytest.raises(CellExecutionError, match="UsageError"):
        execute_notebook(path, tmp_path)
