"""Every script in ``examples/`` runs to the end and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name), *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def test_quickstart_prints_the_payment(tmp_path: Path) -> None:
    finished = run_example("quickstart.py", cwd=tmp_path)

    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.splitlines() == [
        "[ORD-001] Validating...",
        "[ORD-001] Processing $100.0...",
        "Result: payment-ORD-001",
    ]


@pytest.mark.slow
def test_timers_and_signals_suspends_then_completes(tmp_path: Path) -> None:
    db_path = tmp_path / "expenses.db"

    finished = run_example("timers_and_signals.py", str(db_path), cwd=tmp_path)

    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert lines[1].startswith("Run 1: Suspended(flow_id='expense-EXP-0042', reason=TIMER")
    assert "Signal 'approval' delivered: True" in lines
    assert any(line.startswith("Run 2: Completed(") for line in lines)
    assert lines[-1] == "Result: paid 118.40 EUR on ticket-EXP-0042 (approved by dana)"
    # The second run replayed the recorded submission instead of submitting again.
    assert sum("submitted" in line for line in lines) == 1
    assert db_path.exists()
