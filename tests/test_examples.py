"""Every script in ``examples/`` runs to the end and prints what it promises."""

from __future__ import annotations

import re
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


@pytest.mark.slow
def test_distributed_workers_share_the_flows_of_one_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'distributed.db'}"

    finished = run_example(
        "distributed_workers.py", url, "--workers", "2", "--orders", "6", cwd=tmp_path
    )

    assert finished.returncode == 0, finished.stderr
    output = finished.stdout
    assert "Scheduled 6 shipments, each waiting 0.5 s on a timer" in output
    assert re.search(r"^All 6 shipments completed in [\d.]+ s$", output, flags=re.MULTILINE)
    completed = dict(
        re.findall(r"^  (worker-\d) \(pid \d+\) completed (\d+) flow\(s\)$", output, re.MULTILINE)
    )
    assert sorted(completed) == ["worker-1", "worker-2"]
    assert sum(int(count) for count in completed.values()) == 6
    # Each worker process announced itself and stopped gracefully on SIGTERM.
    for worker_id in completed:
        assert f"pyergon worker {worker_id} serving Shipment on SqliteExecutionLog(" in output
    assert output.count(" stopped after ") == 2
    assert output.splitlines()[-1] == "Stopped 2 workers"


def test_distributed_workers_explains_an_unreachable_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing-directory' / 'distributed.db'}"

    finished = run_example("distributed_workers.py", url, cwd=tmp_path)

    assert finished.returncode == 1
    assert finished.stderr.startswith(f"Cannot open {url}: ")
    assert "postgresql://" in finished.stderr
    assert "sqlite:///" in finished.stderr


def test_run_from_script_runs_the_flow_once_and_leaves_it_for_pyergon_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYERGON_STORAGE", raising=False)

    finished = run_example("run_from_script.py", cwd=tmp_path)

    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.splitlines() == [
        "Loading the sales of north...",
        "Summarising 3 sales...",
        "Result: north: 3 sales, 300.00 in total",
        "Again, from storage: north: 3 sales, 300.00 in total",
    ]
    assert (tmp_path / "pyergon.db").exists()  # the storage the pyergon command reads by default
    shown = subprocess.run(
        [sys.executable, "-m", "pyergon", "show", "report-north"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "COMPLETE" in shown.stdout
    assert "summarise" in shown.stdout
