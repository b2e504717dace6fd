"""The README's code runs as written: the first example, twice, and the workers snippet."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def run(script: Path, cwd: Path) -> str:
    finished = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stderr == ""
    return finished.stdout


def test_the_first_example_runs_and_a_second_run_returns_the_stored_result(
    tmp_path: Path,
) -> None:
    script = tmp_path / "first.py"
    script.write_text(python_blocks()[0], encoding="utf-8")
    assert run(script, tmp_path) == "payment-ORD-001\n"
    assert run(script, tmp_path) == "payment-ORD-001\n"
    assert (tmp_path / "orders.db").exists()


def block_with(text: str) -> str:
    (found,) = [block for block in python_blocks() if text in block]
    return found


def test_the_workers_snippet_runs_after_the_first_example(tmp_path: Path) -> None:
    first, workers = python_blocks()[0], block_with("async def serve()")
    script = tmp_path / "workers.py"
    script.write_text(f"{first}\n{workers}\nasyncio.run(serve())\n", encoding="utf-8")
    assert run(script, tmp_path) == "payment-ORD-001\npayment-ORD-002\n"


def test_the_sync_steps_example_runs_from_a_script_and_resumes(tmp_path: Path) -> None:
    steps, script_run = block_with("class Report"), block_with("pyergon.run(")
    (tmp_path / "sales.csv").write_text("amount\n1.5\n2.5\n", encoding="utf-8")
    script = tmp_path / "report.py"
    script.write_text(f"{steps}\n{script_run}\nprint(result)\n", encoding="utf-8")

    first = run(script, tmp_path)
    assert first == "reading sales.csv\n4.0\n"  # the step's print goes through in a terminal
    assert run(script, tmp_path) == "4.0\n"  # the stored result: no step runs again
    shown = subprocess.run(
        [sys.executable, "-m", "pyergon", "output", "sales", "load"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "reading sales.csv" in shown.stdout
