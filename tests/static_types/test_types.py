"""The public API's types are checked, not only its behaviour: mypy --strict on check_*.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

HERE = Path(__file__).parent
PYPROJECT = HERE.parent.parent / "pyproject.toml"


@pytest.mark.parametrize("checked", sorted(HERE.glob("check_*.py")), ids=lambda path: path.name)
def test_mypy_strict_accepts_the_typed_uses(checked: Path) -> None:
    stdout, stderr, status = api.run(
        ["--strict", "--config-file", str(PYPROJECT), "--no-error-summary", str(checked)]
    )
    assert status == 0, stdout + stderr
