"""Every tutorial in ``notebooks/`` runs top to bottom in a real kernel without an error.

nbval (``uv run pytest`` collects ``notebooks/*.ipynb`` with ``--nbval-lax``) compares the
outputs of the cells marked ``# NBVAL_CHECK_OUTPUT`` but passes a cell whose magic raised
``UsageError``, since IPython shows that as text on stderr, not as an error output. Here a
failing cell, an error output and anything written to stderr all fail the tutorial. What the
stored outputs must hold is checked, without a kernel, in ``test_static_outputs``.
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
        "08-large-results.ipynb",
    ]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda path: path.stem)
def test_tutorial_runs_without_errors(path: Path, tmp_path: Path) -> None:
    notebook = execute_notebook(path, tmp_path)

    assert problems_in(notebook) == []
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code_cells), "a code cell did not run"


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
