"""The ``pyergon`` command line, run as a user runs it: in a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pyergon._demo import KILL_AT_STEP, read_side_effects
from pyergon.cli import EXIT_OK, EXIT_USAGE, main


def run_pyergon(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, COLUMNS="100", NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "pyergon", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="the demo kills its child with SIGKILL")
def test_demo_kills_the_flow_and_resumes_it(tmp_path: Path) -> None:
    db_path = tmp_path / "demo.db"

    finished = run_pyergon("demo", "--db", str(db_path), cwd=tmp_path)

    assert finished.returncode == 0, finished.stdout + finished.stderr
    output = finished.stdout
    assert "Steps of the flow" in output
    assert re.search(r"SIGKILL sent to pid \d+ after step 4 book_carrier started, mid-body", output)
    rows = {
        int(match["position"]): match
        for match in re.finditer(
            r"^\s*(?P<position>\d)\s+(?P<step>\w+)\s+(?P<runs>\d+)\s+(?P<run1>\d+)\s+"
            r"(?P<run2>\d+)\s+(?P<at_kill>yes|no)\s+(?P<status>[A-Z]+)\s+(?P<attempts>\d+)\s*$",
            output,
            flags=re.MULTILINE,
        )
    }
    assert sorted(rows) == [1, 2, 3, 4, 5]
    assert rows[KILL_AT_STEP]["runs"] == "2"
    assert (rows[KILL_AT_STEP]["run1"], rows[KILL_AT_STEP]["run2"]) == ("1", "1")
    for position in (1, 2, 3):
        assert (rows[position]["runs"], rows[position]["at_kill"]) == ("1", "yes")
    assert rows[5]["runs"] == "1"
    assert {row["status"] for row in rows.values()} == {"COMPLETE"}
    assert "Verdict: the flow completed" in output
    assert "ran again: step 4 (2 runs)" in output
    # The table must agree with the side-effect log the demo left next to the database.
    flow_id = re.search(r"Flow\s+(order-\w+)", output)
    assert flow_id is not None
    effects = read_side_effects(tmp_path / "demo.db.side-effects.log", flow_id[1])
    starts = Counter(effect.sequence for effect in effects if effect.event == "start")
    assert starts == {1: 1, 2: 1, 3: 1, 4: 2, 5: 1}


def test_no_arguments_prints_help_and_exits_2(tmp_path: Path) -> None:
    finished = run_pyergon(cwd=tmp_path)

    assert finished.returncode == EXIT_USAGE
    assert "usage: pyergon" in finished.stderr
    assert "demo" in finished.stderr


def test_unknown_subcommand_exits_2(tmp_path: Path) -> None:
    finished = run_pyergon("frobnicate", cwd=tmp_path)

    assert finished.returncode == EXIT_USAGE
    assert "invalid choice: 'frobnicate'" in finished.stderr


def test_main_returns_exit_codes_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    assert main(["demo", "--no-such-option"]) == EXIT_USAGE
    assert main(["demo", "--child", "ABC"]) == EXIT_USAGE
    assert "--child needs --db" in capsys.readouterr().err
    assert main(["--version"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("pyergon ")


def test_demo_with_a_missing_directory_fails_with_1(tmp_path: Path) -> None:
    assert main(["demo", "--db", str(tmp_path / "missing" / "demo.db")]) == 1


def test_importing_the_cli_does_not_import_rich(tmp_path: Path) -> None:
    code = "import sys, pyergon, pyergon.cli; print('rich' in sys.modules)"
    finished = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert finished.stdout.strip() == "False"
