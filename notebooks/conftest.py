"""pytest runs these tutorials with nbval (see ``[tool.pytest.ini_options]``); mark them slow.

Each tutorial starts a kernel and takes a few seconds, so ``pytest -m "not slow"`` skips them
along with the other slow tests.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every notebook cell that nbval collected as ``slow``."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
