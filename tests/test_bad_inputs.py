"""Bad input gives an error, not a traceback: bad storage URLs, unusable flow ids, damaged rows.

The library raises a :class:`PyergonError` subclass whose message names the URL part, the flow
or the column; the ``pyergon`` command prints that as one line and exits 2 (a command line it
cannot use) or 1 (the command ran and failed).
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pyergon import Scheduler
from pyergon.cli import EXIT_FAILED, EXIT_USAGE, main
from pyergon.core.query import FlowQuery
from pyergon.errors import InvalidFlowIdError, InvalidStorageUrlError, PyergonError
from pyergon.history import load_history
from pyergon.management import FlowManager
from pyergon.storage import open_storage
from pyergon.storage.postgres import PostgresExecutionLog
from pyergon.storage.redis import RedisExecutionLog
from pyergon.storage.sqlite import SqliteExecutionLog

LONG_NAME = "a" * 300
BAD_URLS = [
    # (url, a part of the message naming what is wrong)
    ("redis://127.0.0.1:99999", "port '99999'"),
    ("redis://127.0.0.1:-1/0", "port '-1'"),
    ("redis://127.0.0.1:abc/0", "port 'abc'"),
    ("redis://127.0.0.1:6379/zero", "database 'zero'"),
    ("redis://[::1", "Invalid IPv6 URL"),
    ("postgresql://127.0.0.1:abc/db", "port 'abc'"),
    ("postgresql://127.0.0.1:99999/db", "port '99999'"),
    ("postgres://[::1/db", "Invalid IPv6 URL"),
    ("postgresql://127.0.0.1/db?schema=a&schema=b", "gives schema more than once"),
    ("postgresql://127.0.0.1/db?connect_timeout=soon", "connect_timeout 'soon' is not a number"),
    ("postgresql://127.0.0.1/db?connect_timeout=0", "connect_timeout must be a positive"),
    ("postgresql://127.0.0.1/db?connect_timeout=inf", "connect_timeout must be a positive"),
    ("sqlite:///flows\x00.db", "'\\x00' at position 15"),
    ("redis://127.0.0.1:6379/0?prefix=a\x00b", "'\\x00' at position 33"),
    ("postgresql://127.0.0.1/te\x00st", "'\\x00' at position 25"),
    ("sqlite:///\udcff.db", "'\\udcff' at position 10, a lone surrogate"),
    ("sqlite:///" + LONG_NAME + ".db", "a name of 303"),
    ("sqlite:///" + "/".join(["d" * 200] * 30) + ".db", "6032 bytes long"),
    ("sqlite://flows.db", "three slashes"),
    ("memory://anything", "takes no path"),
]
URLS = [pytest.param(url, part, id=repr(url)[:40]) for url, part in BAD_URLS]


@pytest.mark.parametrize(("url", "part"), URLS)
async def test_a_bad_storage_url_raises_an_error_naming_the_part(url: str, part: str) -> None:
    with pytest.raises(InvalidStorageUrlError) as raised:
        async with asyncio.timeout(10):
            await open_storage(url)

    assert part in str(raised.value)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 400


@pytest.mark.parametrize(
    ("backend", "url", "part"),
    [
        (RedisExecutionLog, "redis://127.0.0.1:99999", "port '99999'"),
        (RedisExecutionLog, "redis://127.0.0.1:6379/x", "database 'x'"),
        (PostgresExecutionLog, "postgresql://127.0.0.1:abc/db", "port 'abc'"),
        (PostgresExecutionLog, "postgresql://[::1/db", "Invalid IPv6 URL"),
    ],
)
def test_from_url_checks_the_url_too(
    backend: type[RedisExecutionLog | PostgresExecutionLog], url: str, part: str
) -> None:
    with pytest.raises(InvalidStorageUrlError, match=part.replace("[", r"\[")):
        backend.from_url(url)


def _one_error_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("pyergon: "), stderr
    return stderr


@pytest.mark.parametrize(("url", "part"), URLS)
def test_the_command_prints_one_line_for_a_bad_url_and_exits_2(
    capsys: pytest.CaptureFixture[str], url: str, part: str
) -> None:
    code = main(["flows", "--storage", url])

    stderr = _one_error_line(capsys.readouterr().err)
    assert code == EXIT_USAGE
    assert stderr.startswith("pyergon: usage error: ") and part in stderr.replace("\\\\", "\\")


UNUSABLE_IDS = ["\ud800", "order-\udcff", "a\x00b"]


@pytest.mark.parametrize("flow_id", UNUSABLE_IDS, ids=ascii)
async def test_every_call_taking_a_flow_id_refuses_one_that_is_not_text(
    tmp_path: Path, flow_id: str
) -> None:
    from tests.storage.test_redis_damage import Sturdy

    async with SqliteExecutionLog(tmp_path / "flows.db") as storage:
        scheduler, manager = Scheduler(storage), FlowManager(storage)
        calls = {
            "schedule": scheduler.schedule(Sturdy(1), flow_id=flow_id),
            "signal": scheduler.signal(flow_id, "go", 1),
            "wait": scheduler.wait(flow_id, timeout=1),
            "get": manager.get(flow_id),
            "cancel": manager.cancel(flow_id),
            "resume": manager.resume(flow_id),
            "retry": manager.retry(flow_id),
            "fork": manager.fork(flow_id, from_step=1),
            "replay": manager.replay(flow_id),
            "load_history": load_history(storage, flow_id),
        }
        for name, call in calls.items():
            with pytest.raises(InvalidFlowIdError) as raised:
                await call
            assert repr(flow_id) in str(raised.value), name
        with pytest.raises(InvalidFlowIdError):
            FlowQuery(parent_flow_id=flow_id)
        with pytest.raises(ValueError, match="flow_type"):
            FlowQuery(flow_type=flow_id)


@pytest.fixture
def database(tmp_path: Path) -> str:
    """A SQLite database with no flows, as ``--storage`` takes it."""
    path = tmp_path / "flows.db"

    async def create() -> None:
        async with SqliteExecutionLog(path):
            pass

    asyncio.run(create())
    return f"sqlite:///{path}"


@pytest.mark.parametrize(
    "command",
    [
        ["show", "\udcff"],
        ["cancel", "order-\udcff"],
        ["resume", "\ud800"],
        ["retry", "\ud800"],
        ["signal", "\udcff", "go", "1"],
        ["fork", "\udcff", "--from-step", "1"],
        ["flows", "--type", "\udcff"],
        ["flows", "--parent", "\udcff"],
        ["flows", "--worker", "\udcff"],
    ],
    ids=ascii,
)
def test_the_command_refuses_an_argument_that_is_not_text_in_one_line(
    capsys: pytest.CaptureFixture[str], database: str, command: list[str]
) -> None:
    code = main([*command, "--storage", database])

    stderr = _one_error_line(capsys.readouterr().err)
    assert code == EXIT_USAGE and "a lone surrogate, not text" in stderr


def test_argv_bytes_that_are_not_utf8_give_one_line_not_a_traceback(database: str) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "pyergon", "show", b"order-\xff", "--storage", database],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == EXIT_USAGE
    assert "order-\\udcff" in _one_error_line(finished.stderr)


@pytest.mark.parametrize(
    ("column", "expression"),
    [
        ("status", "'HALTED'"),
        ("attempt", "'three'"),
        ("created_at", "'yesterday'"),
        ("parent_sequence", "CAST(X'FFFE' AS TEXT)"),
    ],
)
@pytest.mark.parametrize("command", [["show", "order-1"], ["flows"]])
def test_the_command_reports_a_damaged_row_in_one_line_and_exits_1(
    capsys: pytest.CaptureFixture[str],
    database: str,
    command: list[str],
    column: str,
    expression: str,
) -> None:
    async def schedule() -> None:
        from tests.storage.test_redis_damage import Sturdy

        async with SqliteExecutionLog(database.removeprefix("sqlite:///")) as storage:
            await Scheduler(storage).schedule(Sturdy(1), flow_id="order-1")

    asyncio.run(schedule())
    with sqlite3.connect(database.removeprefix("sqlite:///")) as connection:
        connection.execute(f"UPDATE flows SET {column} = {expression}")
    connection.close()

    code = main([*command, "--storage", database])

    stderr = _one_error_line(capsys.readouterr().err)
    assert code == EXIT_FAILED
    assert "'order-1'" in stderr or column == "status"
    assert f"'{column}'" in stderr or "'HALTED'" in stderr


def test_every_bad_input_error_is_a_pyergon_error() -> None:
    assert issubclass(InvalidStorageUrlError, PyergonError)
    assert issubclass(InvalidStorageUrlError, ValueError)
    assert issubclass(InvalidFlowIdError, PyergonError)
