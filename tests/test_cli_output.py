"""``pyergon show`` and ``pyergon output``: what steps printed, their progress, running steps.

The records are stored as the runtime writes them (a step's output and last progress with its
record, a worker's running steps with its heartbeat), so the views are tested on their own.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from pathlib import Path

import pytest
from rich.console import Console

from pyergon.cli._views import history_view, invocation_json
from pyergon.core.changes import Change
from pyergon.core.records import Attempt, StepProgress, StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.workers import StepActivity
from pyergon.history import FlowHistory, load_history
from pyergon.storage import open_storage
from pyergon.testing import make_flow, make_invocation, make_worker
from tests.test_cli_manage import one_line_error, run_all

LOADED = "".join(f"read part {number}\n" for number in range(1, 31))
"""What step 1 printed: 30 lines, more than ``show`` prints."""
HOSTILE = "[bold]not markup[/] \x1b[31mred\x1b[0m <b>"


async def store_busy_flow(url: str, now: float) -> None:
    """Flow ``busy``: step 1 printed 30 lines, step 2 printed a little and now runs step 3."""
    storage = await open_storage(url)
    try:
        await storage.create_flow(make_flow("busy", flow_type="Crunch", status=TaskStatus.RUNNING))
        await storage.create_flow(make_flow("quiet", flow_type="Crunch"))
        loaded = make_invocation(
            1,
            flow_id="busy",
            name="load",
            status=InvocationStatus.COMPLETE,
            started_at=now - 20,
            completed_at=now - 15,
            output=LOADED,
            progress=StepProgress(30, 30, "all parts", now - 15),
        )
        cleaned = make_invocation(
            2,
            flow_id="busy",
            name="clean",
            status=InvocationStatus.COMPLETE,
            started_at=now - 15,
            completed_at=now - 13,
            output=HOSTILE,
        )
        await storage.apply(Change(records=(loaded, cleaned)))
        crunch = StepActivity(
            "busy", "3", "crunch", now - 12, StepProgress(37, 100, "loading Jan", now - 1)
        )
        worker = make_worker("w-1", flow_types=("Crunch",), last_beat=now, lease_seconds=3600)
        await storage.put_worker(worker.beating(now, activity=[crunch]), replacing=None)
    finally:
        await storage.close()


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    asyncio.run(store_busy_flow(url, time.time()))
    return url


def shown(history: FlowHistory, now: float) -> str:
    console = Console(file=io.StringIO(), width=160, no_color=True, highlight=False)
    for part in history_view(history, now):
        console.print(part, soft_wrap=isinstance(part, str))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(text, str)
    return text


async def test_show_marks_steps_that_printed_and_lists_the_running_step(url: str) -> None:
    storage = await open_storage(url)
    try:
        history = await load_history(storage, "busy")
    finally:
        await storage.close()
    now = history.running[0].started_at + 12

    text = shown(history, now)

    assert re.search(
        r"^1\s+step\s+load\s+COMPLETE\s.*printed 30 lines; 30/30 · all parts", text, re.M
    )
    assert re.search(r"^3\s+step\s+crunch\s+running\s+1\s.*37/100 · loading Jan", text, re.M)
    timeline = text.split("\ntimeline\n")[1].split("\n\n")[0]
    assert re.search(r"3 crunch\s+running\s+…$", timeline, re.M)
    running = text.split("\nrunning\n")[1].split("\n\n")[0]
    assert re.search(r"^\s+3\s+crunch\s+running 12\.0s\s+\S+\s+37/100 · loading Jan", running, re.M)
    output = text.split("\noutput\n")[1]
    lines = output.splitlines()
    assert lines[:3] == [
        "  1 load",
        "    … 10 earlier line(s): pyergon output busy 1",
        "    read part 11",
    ]
    assert "    read part 30" in lines and "    read part 10" not in lines
    assert "  2 clean" in lines
    assert "    [bold]not markup[/] red <b>" in lines  # no markup, no terminal codes


def test_show_json_holds_output_progress_and_running_steps(url: str, tmp_path: Path) -> None:
    (as_json,) = run_all(["show", "busy", "--json", "--storage", url], cwd=tmp_path)

    assert as_json.returncode == 0, as_json.stderr
    history = json.loads(as_json.stdout)
    load, clean = history["invocations"]
    assert load["output"] == LOADED
    assert load["progress"]["done"] == 30 and load["progress"]["fraction"] == 1.0
    assert load["progress"]["message"] == "all parts"
    assert clean["output"] == HOSTILE and clean["progress"] is None
    (crunch,) = history["running"]
    assert (crunch["position"], crunch["step"]) == ("3", "crunch")
    assert crunch["progress"]["fraction"] == 0.37
    assert crunch["started_at"].endswith("+00:00")


def test_output_prints_a_step_or_every_step_in_full(url: str, tmp_path: Path) -> None:
    one, by_name, every, as_json, no_step, no_flow, quiet = run_all(
        *(
            [*command, "--storage", url]
            for command in (
                ["output", "busy", "1"],
                ["output", "busy", "clean"],
                ["output", "busy"],
                ["output", "busy", "load", "--json"],
                ["output", "busy", "nope"],
                ["output", "nope"],
                ["output", "quiet"],
            )
        ),
        cwd=tmp_path,
    )

    assert one.returncode == 0, one.stderr
    assert one.stdout == LOADED
    assert by_name.stdout == HOSTILE
    assert every.stdout == f"==> 1 load <==\n{LOADED}==> 2 clean <==\n{HOSTILE}\n"
    assert json.loads(as_json.stdout) == {"flow_id": "busy", "step": "load", "output": LOADED}
    one_line_error(
        no_step, 1, "flow 'busy' has no step 'nope'; its steps: 1 load, 2 clean, 3 crunch"
    )
    one_line_error(no_flow, 1, "no flow with id 'nope'")
    assert (quiet.returncode, quiet.stdout) == (0, "")


def test_printed_text_is_shown_as_a_terminal_would_show_it() -> None:
    from pyergon._history_html import last_lines, line_count, output_lines

    printed = "a\x1b[31mred\x1b[0m\n 10%\r 50%\r100%\nwin\r\n\x1b]0;title\x07bell\x07 end"

    assert output_lines(printed) == ["ared", "100%", "win", "bell end"]
    assert line_count(printed) == 4 and line_count("") == 0 and line_count(None) == 0
    assert last_lines(printed, 2) == (["win", "bell end"], 2)
    assert last_lines("one\n", 5) == (["one"], 0)


def test_a_records_json_lists_its_earlier_attempts_with_their_errors() -> None:
    down = StoredError("shop.ProviderDown", "provider down", "Traceback")
    record = make_invocation(
        1,
        attempts=3,
        earlier_attempts=(
            Attempt.failed(1, 0.0, 1.5, down, "w-1"),
            Attempt(2, 2.0, None, "abandoned", worker_id="w-1", last_seen_at=3.0),
        ),
    )

    failed, abandoned = invocation_json(record)["earlier_attempts"]

    assert failed == {
        "number": 1,
        "end": "failed",
        "started_at": "1970-01-01T00:00:00+00:00",
        "ended_at": "1970-01-01T00:00:01.500000+00:00",
        "last_seen_at": None,
        "retry_at": None,
        "worker_id": "w-1",
        "error": {
            "type": "shop.ProviderDown",
            "message": "provider down",
            "traceback": "Traceback",
        },
    }
    assert (abandoned["end"], abandoned["ended_at"], abandoned["error"]) == (
        "abandoned",
        None,
        None,
    )
    assert invocation_json(make_invocation(2))["earlier_attempts"] == []
