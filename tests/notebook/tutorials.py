"""Running the tutorials in ``notebooks/`` in a real kernel, and finding what went wrong in them.

The kernel is ``python3`` as the environment's ipykernel installs it: jupyter_client starts it
with this interpreter, so it sees the same packages as the tests (no ``ipykernel install``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
TUTORIALS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
KERNEL_NAME = "python3"
CELL_TIMEOUT = 60
"""Seconds one cell may run; every tutorial cell takes a few at most."""


def execute_notebook(path: Path, workdir: Path) -> Any:
    """Execute a copy of the notebook at ``path`` in ``workdir`` and return it with outputs.

    Widget state is stored in the notebook's metadata, as when the tutorials' outputs are
    saved. A cell that fails (including one whose magic raised ``UsageError``, which shows
    no error output) raises ``nbclient.exceptions.CellExecutionError``.
    """
    import nbformat
    from nbclient import NotebookClient

    copy = workdir / path.name
    shutil.copyfile(path, copy)
    notebook = nbformat.read(copy, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT,
        store_widget_state=True,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    nbformat.write(notebook, copy)
    return notebook


def problems_in(notebook: Any) -> list[str]:
    """Every error output and every line written to stderr, as ``cell N: ...`` lines."""
    problems = []
    for number, cell in enumerate(notebook.cells, start=1):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                problems.append(f"cell {number}: {output.ename}: {output.evalue}")
            elif output.output_type == "stream" and output.name == "stderr":
                problems.append(f"cell {number} wrote to stderr: {output.text.strip()}")
    return problems
