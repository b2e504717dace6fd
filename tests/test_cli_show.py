"""``pyergon show ID --result`` and the result in ``pyergon show ID --json``, sized, as run.

Flows run in-process into a SQLite file (their module written into ``tmp_path``); the commands
run as subprocesses in that directory, so they can import the classes the results hold.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pyergon import Executor, Scheduler
from pyergon.storage import open_storage
from tests.test_cli_manage import one_line_error, run_all

MODULE = "cli_show_flows"
SOURCE = """\
from dataclasses import dataclass

import pandas as pd

from pyergon import flow, flow_type, step


@dataclass
class Total:
    amount: float


@dataclass
@flow_type(name="ShowResult")
class Result:
    kind: str

    @step
    async def build(self) -> object:
        if self.kind == "frame":
            return pd.DataFrame({"item": [f"i{n}" for n in range(30)], "price": 1.5})
        if self.kind == "big":
            return list(range(5_000))
        if self.kind == "object":
            return Total(4.5)
        if self.kind == "fails":
            raise ValueError("the feed is down")
        return {"total": 4.5, "items": ["a", "b"]}

    @flow
    async def run(self) -> object:
        return await self.build()
"""
KINDS = ("json", "frame", "big", "object", "fails")


async def prepare(url: str, module: ModuleType) -> None:
    storage = await open_storage(url)
    try:
        for kind in KINDS:
            await Executor(module.Result(kind), storage, kind).run(lambda flow: flow.run())
        await Scheduler(storage).schedule(module.Result("json"), flow_id="queued")
    finally:
        await storage.close()


@pytest.fixture
def show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Show:
    (tmp_path / f"{MODULE}.py").write_text(SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    module = importlib.import_module(MODULE)
    monkeypatch.setitem(sys.modules, MODULE, module)
    url = f"sqlite:///{tmp_path / 'flows.db'}"
    asyncio.run(prepare(url, module))
    return Show(url, tmp_path)


class Show:
    """Runs ``pyergon show`` commands on the prepared file, all at once."""

    def __init__(self, url: str, cwd: Path) -> None:
        self.url, self.cwd = url, cwd

    def __call__(self, *commands: list[str]) -> list[str]:
        """The stdout of each ``pyergon show ...``, which must succeed."""
        finished = self.run(*commands)
        for result in finished:
            assert result.returncode == 0, result.stderr
        return [result.stdout for result in finished]

    def run(self, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
        return run_all(
            *(["show", *command, "--storage", self.url] for command in commands), cwd=self.cwd
        )


def test_result_prints_the_repr_and_a_dataframe_as_its_first_rows(show: Show) -> None:
    plain, frame, whole_frame, obj = show(
        ["json", "--result"],
        ["frame", "--result"],
        ["frame", "--result", "--full"],
        ["object", "--result"],
    )

    assert plain == "{'total': 4.5, 'items': ['a', 'b']}\n"
    lines = frame.splitlines()
    assert lines[0].split() == ["item", "price"]
    assert lines[1].split() == ["0", "i0", "1.5"]
    assert any(line.split() == ["..", "...", "..."] for line in lines)
    assert lines[-1] == "[30 rows x 2 columns]"
    assert len(lines) < 30
    assert len(whole_frame.splitlines()) == 1 + 30 + 1
    assert obj == "Total(amount=4.5)\n"


def test_a_long_result_is_cut_unless_full(show: Show) -> None:
    cut, full = show(["big", "--result"], ["big", "--result", "--full"])

    whole = repr(list(range(5_000)))
    assert full == whole + "\n"
    shown, note = cut.rstrip("\n").rsplit("\n", 1)
    assert shown == whole[:10_000]
    assert note == f"… {len(whole) - 10_000} more characters (--full shows all)"


def test_json_includes_the_result_as_json_or_as_text(show: Show) -> None:
    plain, frame, frame_full, big, big_full, obj, failed, queued = (
        json.loads(stdout)
        for stdout in show(
            ["json", "--json"],
            ["frame", "--json"],
            ["frame", "--json", "--full"],
            ["big", "--json"],
            ["big", "--json", "--full"],
            ["object", "--json"],
            ["fails", "--json"],
            ["queued", "--json"],
        )
    )

    assert plain["flow"]["flow_id"] == "json"
    assert plain["result"] == {
        "type": "dict",
        "format": "json",
        "value": {"total": 4.5, "items": ["a", "b"]},
    }
    rows = [[f"i{n}", 1.5] for n in range(30)]
    assert frame["result"] == {
        "type": "pandas.DataFrame",
        "format": "split",
        "shape": [30, 2],
        "value": {"columns": ["item", "price"], "index": list(range(20)), "data": rows[:20]},
        "truncated": True,
    }
    assert frame_full["result"]["value"]["data"] == rows
    assert frame_full["result"]["truncated"] is False
    assert big["result"]["format"] == "text" and big["result"]["truncated"] is True
    assert big["result"]["value"].startswith("[0, 1, 2, ")
    assert big_full["result"] == {"type": "list", "format": "json", "value": list(range(5_000))}
    assert obj["result"] == {
        "type": f"{MODULE}.Total",
        "format": "text",
        "value": "Total(amount=4.5)",
        "truncated": False,
    }
    assert failed["result"] is None and queued["result"] is None


def test_result_with_json_prints_the_result_alone(show: Show) -> None:
    (printed,) = show(["json", "--result", "--json"])

    assert json.loads(printed) == {
        "flow_id": "json",
        "result": {"type": "dict", "format": "json", "value": {"total": 4.5, "items": ["a", "b"]}},
    }


def test_the_text_view_says_how_to_print_the_result(show: Show) -> None:
    done, failed = show(["json"], ["fails"])

    hint = f" B pickle: pyergon show json --storage {shlex.quote(show.url)} --result prints it\n"
    assert "\n  result " in done and hint in done
    assert "--result prints it" not in failed


def test_the_result_hint_leaves_out_the_storage_the_user_left_out(show: Show) -> None:
    (done,) = run_all(["show", "json"], cwd=show.cwd, storage_variable=show.url)

    assert done.returncode == 0, done.stderr
    assert " B pickle: pyergon show json --result prints it\n" in done.stdout


def test_no_result_yet_or_a_failed_flow_is_one_line_saying_why(show: Show) -> None:
    queued, failed, missing, full_alone = show.run(
        ["queued", "--result"], ["fails", "--result"], ["ghost", "--result"], ["json", "--full"]
    )

    one_line_error(queued, 1, "flow 'queued' has not finished (PENDING), so it has no result yet")
    one_line_error(
        failed, 1, "flow 'fails' failed with ValueError: the feed is down, so it has no result"
    )
    one_line_error(missing, 1, "no flow with id 'ghost' in storage")
    assert full_alone.returncode == 2
    assert "--full goes with --result or --json" in full_alone.stderr


def test_a_result_whose_class_cannot_be_imported_is_named(show: Show, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    text, as_json = run_all(
        ["show", "object", "--result", "--storage", show.url],
        ["show", "object", "--json", "--storage", show.url],
        cwd=elsewhere,
    )

    one_line_error(text, 1, "the result of flow 'object' cannot be read back here:")
    assert "No module named 'cli_show_flows'" in text.stderr
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)["result"]
    assert result["error"].startswith("SerializationError: the result of flow 'object' cannot")
