"""The README's DAG pipeline example runs as written, and a second run returns the stored result."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from pyergon.core import InvocationStatus
from pyergon.storage.sqlite import SqliteExecutionLog
from tests.test_readme import block_with

ROOT = Path(__file__).resolve().parents[2]


def run(script: Path, cwd: Path) -> str:
    """Run ``script`` with this checkout's pyergon (not whichever one is installed)."""
    finished = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stderr == ""
    return finished.stdout


async def positions(database: Path) -> dict[str, tuple[int, InvocationStatus]]:
    async with SqliteExecutionLog(database) as storage:
        records = await storage.load_invocations("prices-2026-12-06")
    return {record.name: (record.sequence, record.status) for record in records}


def test_the_dag_example_runs_and_fixes_the_positions_it_documents(tmp_path: Path) -> None:
    script = tmp_path / "prices.py"
    script.write_text(block_with("class Prices"), encoding="utf-8")

    assert run(script, tmp_path) == "2026-12-06: 45.00 EUR\n"
    assert run(script, tmp_path) == "2026-12-06: 45.00 EUR\n"  # the stored result

    complete = InvocationStatus.COMPLETE
    assert asyncio.run(positions(tmp_path / "pyergon.db")) == {
        "load_orders": (1, complete),
        "load_rates": (2, complete),
        "total": (3, complete),
        "report": (4, complete),
    }
