"""Files written by earlier pyergon releases open, migrate forward and keep their flows."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import closing, contextmanager
from itertools import chain
from pathlib import Path

import pytest

from pyergon.core import ClaimRequest, FlowQuery
from pyergon.core.changes import Change, FlowWrite
from pyergon.core.records import Attempt, Invocation, ScheduledFlow, StepProgress, StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.workers import StepActivity, WorkerRecord
from pyergon.storage import _flows as flows
from pyergon.storage._sql.rows import FLOW_COLUMNS, INVOCATION_COLUMNS, column_values
from pyergon.storage._sql.workers import WORKER_COLUMNS, worker_values
from pyergon.storage.base import SCHEMA_VERSION
from pyergon.storage.sqlite import SqliteExecutionLog
from pyergon.testing import make_worker

from .conftest import FlowFactory, InvocationFactory

# The layout as pyergon 0.9 (schema version 2, commit 3c90df0) wrote it, copied here so that
# the test keeps checking that layout whatever later migrations do.
V1_LAYOUT = (
    "CREATE TABLE pyergon_meta (key TEXT PRIMARY KEY, value NOT NULL)",
    """CREATE TABLE flows (
        flow_id TEXT PRIMARY KEY, flow_type TEXT NOT NULL, payload BLOB NOT NULL,
        status TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, result BLOB,
        error_type TEXT, error_message TEXT, error_traceback TEXT, error_payload BLOB,
        attempt INTEGER NOT NULL, wake_at REAL, parent_flow_id TEXT, parent_sequence TEXT,
        lease_owner TEXT, lease_token TEXT, lease_expires_at REAL)""",
    "CREATE INDEX flows_by_created ON flows (created_at, flow_id)",
    "CREATE INDEX flows_by_status ON flows (status, created_at, flow_id)",
    "CREATE INDEX flows_by_type ON flows (flow_type, created_at, flow_id)",
    "CREATE INDEX flows_wake_due ON flows (wake_at, created_at, flow_id) "
    "WHERE status = 'SUSPENDED'",
    """CREATE TABLE invocations (
        flow_id TEXT NOT NULL, sequence INTEGER NOT NULL, sub_sequence INTEGER NOT NULL,
        kind TEXT NOT NULL, name TEXT NOT NULL, args_hash TEXT NOT NULL, status TEXT NOT NULL,
        result BLOB, error_type TEXT, error_message TEXT, error_traceback TEXT,
        error_payload BLOB, attempts INTEGER NOT NULL, started_at REAL, completed_at REAL,
        fire_at REAL, child_flow_id TEXT,
        PRIMARY KEY (flow_id, sequence, sub_sequence))""",
    "CREATE INDEX invocations_timer_due ON invocations (fire_at) "
    "WHERE status = 'WAITING_FOR_TIMER'",
    """CREATE TABLE signals (
        flow_id TEXT NOT NULL, name TEXT NOT NULL, payload BLOB NOT NULL, sent_at REAL NOT NULL,
        PRIMARY KEY (flow_id, name))""",
)
V2_ADDITIONS = (
    "ALTER TABLE flows ADD COLUMN worker_id TEXT",
    "ALTER TABLE flows ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX flows_by_worker ON flows (worker_id, created_at, flow_id)",
    "CREATE INDEX flows_by_parent ON flows (parent_flow_id, created_at, flow_id) "
    "WHERE parent_flow_id IS NOT NULL",
)
V3_ADDITIONS = ("ALTER TABLE flows ADD COLUMN version INTEGER NOT NULL DEFAULT 1",)
V4_ADDITIONS = (
    """CREATE TABLE workers (
        worker_id TEXT PRIMARY KEY, incarnation TEXT NOT NULL, host TEXT NOT NULL,
        pid INTEGER NOT NULL, started_at REAL NOT NULL, flow_types TEXT NOT NULL,
        lease_seconds REAL NOT NULL, last_beat REAL NOT NULL, stopped_at REAL)""",
    "ALTER TABLE flows ADD COLUMN lease_losses INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE flows ADD COLUMN last_lost_by TEXT",
)
V5_ADDITIONS = (
    "ALTER TABLE invocations ADD COLUMN output TEXT",
    "ALTER TABLE invocations ADD COLUMN progress TEXT",
    "ALTER TABLE workers ADD COLUMN activity TEXT",
)
V6_ADDITIONS = ("ALTER TABLE invocations ADD COLUMN code_hash TEXT NOT NULL DEFAULT ''",)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "flows.db"


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        yield connection


def old_file(path: Path, version: int, *stored: ScheduledFlow | Invocation | WorkerRecord) -> None:
    """A file as a pyergon of schema ``version`` (1 to 6) left it, holding ``stored``.

    Records and workers are written with the columns of that version only (workers from 4).
    """
    additions = (V2_ADDITIONS, V3_ADDITIONS, V4_ADDITIONS, V5_ADDITIONS, V6_ADDITIONS)
    additions = additions[: version - 1]
    with raw(path) as connection:
        connection.execute("PRAGMA journal_mode = WAL")
        for statement in V1_LAYOUT + tuple(chain.from_iterable(additions)):
            connection.execute(statement)
        connection.execute(
            "INSERT INTO pyergon_meta (key, value) VALUES ('schema_version', ?)", (version,)
        )
        for record in stored:
            if isinstance(record, ScheduledFlow):
                table, values = "flows", dict(zip(FLOW_COLUMNS, column_values(record), strict=True))
            elif isinstance(record, Invocation):
                table = "invocations"
                values = dict(zip(INVOCATION_COLUMNS, column_values(record), strict=True))
            else:
                table, values = (
                    "workers",
                    dict(zip(WORKER_COLUMNS, worker_values(record), strict=True)),
                )
            # Only the columns of that version: each later one was added by a migration.
            old_columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            values = {column: values[column] for column in values if column in old_columns}
            columns = ", ".join(values)
            marks = ", ".join(f":{column}" for column in values)
            connection.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", values)


def stored_schema(path: Path) -> tuple[object, list[str], set[str]]:
    with raw(path) as connection:
        (version,) = connection.execute(
            "SELECT value FROM pyergon_meta WHERE key = 'schema_version'"
        ).fetchone()
        columns = [row[1] for row in connection.execute("PRAGMA table_info(flows)")]
        indexes = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    return version, columns, indexes


async def test_a_version_1_file_is_migrated_and_keeps_its_flows(
    path: Path, make_flow: FlowFactory
) -> None:
    flow = make_flow(
        status=TaskStatus.SUSPENDED, wake_at=2_000.0, parent_flow_id="parent", parent_sequence="3"
    )
    old_file(path, 1, flow)

    async with SqliteExecutionLog(path) as storage:
        # make_flow leaves worker_id None, cancel_requested False and version 1: the defaults.
        assert await storage.get_flow("flow-1") == flow
        assert await storage.list_flows(FlowQuery(parent_flow_id="parent")) == [flow]
        (run,) = await storage.claim(
            ClaimRequest("worker-a", ["Order"], limit=1, lease_seconds=30, now=2_000.0)
        )
        assert run.flow.worker_id == "worker-a" and run.flow.version == 2
        requested = await flows.request_cancel(storage, "flow-1")
        assert requested is not None and requested.cancel_requested

    version, columns, indexes = stored_schema(path)
    assert version == SCHEMA_VERSION
    assert columns.count("version") == 1
    assert {"flows_by_worker", "flows_by_parent"} <= indexes


async def test_a_version_2_file_is_migrated_and_its_flows_start_at_version_1(
    path: Path, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    waiting = make_flow(status=TaskStatus.SUSPENDED, wake_at=2_000.0, worker_id="worker-0")
    running = make_flow(
        "flow-2",
        status=TaskStatus.RUNNING,
        lease_owner="worker-0",
        lease_token="token",
        lease_expires_at=5_000.0,
        cancel_requested=True,
    )
    old_file(path, 2, waiting, running)

    async with SqliteExecutionLog(path) as storage:
        assert await storage.get_flow("flow-1") == waiting
        assert await storage.get_flow("flow-2") == running
        assert waiting.version == running.version == 1
        assert (running.lease_losses, running.last_lost_by) == (0, None)  # lost none
        assert await storage.cancel_requests(["flow-1", "flow-2"]) == {"flow-2"}
        stale = Change(writes=(FlowWrite("flow-1", {"attempt": 2}, expected_version=2),))
        assert (await storage.apply(stale)).moved == "flow-1"
        current = Change(writes=(FlowWrite("flow-1", {"attempt": 2}, expected_version=1),))
        assert (await storage.apply(current)).complete
        assert await storage.get_flow("flow-1") == waiting.replace(attempt=2, version=2)
        (run,) = await storage.claim(
            ClaimRequest("worker-a", ["Order"], limit=1, lease_seconds=30, now=2_000.0)
        )
        assert run.flow.flow_id == "flow-1" and run.flow.version == 3

    version, columns, _ = stored_schema(path)
    assert version == SCHEMA_VERSION
    assert columns.count("version") == 1


async def test_a_version_3_file_gets_worker_records_and_its_flows_have_lost_no_lease(
    path: Path, make_flow: FlowFactory
) -> None:
    waiting = make_flow(status=TaskStatus.SUSPENDED, wake_at=2_000.0, worker_id="worker-0")
    running = make_flow(
        "flow-2",
        status=TaskStatus.RUNNING,
        lease_owner="worker-0",
        lease_token="token",
        lease_expires_at=5_000.0,
        version=4,
    )
    old_file(path, 3, waiting, running)

    async with SqliteExecutionLog(path) as storage:
        assert await storage.get_flow("flow-1") == waiting
        assert await storage.get_flow("flow-2") == running
        assert await storage.renew_leases({"flow-2": "token"}, lease_seconds=30, now=4_990.0)
        assert await storage.list_workers() == []
        worker = make_worker()
        assert await storage.put_worker(worker, replacing=None)
        assert await storage.get_worker(worker.worker_id) == worker

    version, columns, _ = stored_schema(path)
    assert version == SCHEMA_VERSION
    assert columns[-3:] == ["version", "lease_losses", "last_lost_by"]
    with raw(path) as connection:
        losses = connection.execute(
            "SELECT flow_id, lease_losses, last_lost_by FROM flows ORDER BY flow_id"
        ).fetchall()
    assert losses == [("flow-1", 0, None), ("flow-2", 0, None)]


async def test_a_version_4_file_keeps_its_records_and_workers_without_output_or_activity(
    path: Path, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    flow = make_flow(status=TaskStatus.SUSPENDED, wake_at=2_000.0, lease_losses=2)
    recorded = make_invocation(
        1, status=InvocationStatus.COMPLETE, result=b"paid", attempts=2, completed_at=1_001.0
    )
    waiting = make_invocation(2, status=InvocationStatus.PENDING)
    worker = make_worker()
    old_file(path, 4, flow, recorded, waiting, worker)

    async with SqliteExecutionLog(path) as storage:
        assert await storage.get_flow("flow-1") == flow
        loaded = await storage.load_invocations("flow-1")
        assert loaded == [recorded, waiting]
        assert [(record.output, record.progress) for record in loaded] == [(None, None)] * 2
        (listed,) = await storage.list_workers()
        assert listed == worker and listed.activity == ()
        # The new columns are in use.
        done = waiting.replace(
            status=InvocationStatus.COMPLETE,
            output="loaded 3 rows\n",
            progress=StepProgress(3.0, 3.0, "rows", 1_002.0),
        )
        assert (await storage.apply(Change(records=(done,)))).records == [done]
        activity = (StepActivity("flow-1", "3", "load", 1_003.0, StepProgress(1.0, at=1_003.5)),)
        beat = await storage.beat(
            worker.beating(1_004.0, activity=activity), {}, lease_seconds=2.0, now=1_004.0
        )
        assert beat.registered

    async with SqliteExecutionLog(path) as reopened:
        assert await reopened.load_invocations("flow-1") == [recorded, done]
        assert await reopened.get_worker(worker.worker_id) == worker.beating(
            1_004.0, activity=activity
        )
    version, _, _ = stored_schema(path)
    assert version == SCHEMA_VERSION
    with raw(path) as connection:
        invocation_columns = [
            row[1] for row in connection.execute("PRAGMA table_info(invocations)")
        ]
        worker_columns = [row[1] for row in connection.execute("PRAGMA table_info(workers)")]
    assert invocation_columns[-4:] == ["output", "progress", "code_hash", "earlier_attempts"]
    assert worker_columns[-1] == "activity"


async def test_a_version_5_files_records_have_no_code_hash_and_new_ones_keep_theirs(
    path: Path, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    flow = make_flow(status=TaskStatus.RUNNING, lease_token="t")
    recorded = make_invocation(
        1,
        status=InvocationStatus.COMPLETE,
        result=b"paid",
        attempts=1,
        output="paid\n",
        code_hash="0123456789abcdef",  # not stored: version 5 had no column for it
    )
    waiting = make_invocation(2, attempts=1, code_hash="fedcba9876543210")
    old_file(path, 5, flow, recorded, waiting)

    async with SqliteExecutionLog(path) as storage:
        loaded = await storage.load_invocations("flow-1")
        assert loaded == [recorded.replace(code_hash=""), waiting.replace(code_hash="")]
        # The new column is in use, and a record made before stands against one made by
        # other code with the same outcome.
        shipped = waiting.replace(status=InvocationStatus.COMPLETE, result=b"shipped")
        again = recorded.replace(code_hash="fedcba9876543210")
        applied = await storage.apply(Change(records=(shipped, again)))
        assert applied.complete and applied.records == [shipped, loaded[0]]

    async with SqliteExecutionLog(path) as reopened:
        assert await reopened.load_invocations("flow-1") == [loaded[0], shipped]
    version, _, _ = stored_schema(path)
    assert version == SCHEMA_VERSION
    with raw(path) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(invocations)")]
    assert columns[-2:] == ["code_hash", "earlier_attempts"]


async def test_a_version_6_files_records_have_no_earlier_attempts_and_new_ones_keep_theirs(
    path: Path, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    flow = make_flow(status=TaskStatus.RUNNING, lease_token="t")
    recorded = make_invocation(
        1, status=InvocationStatus.COMPLETE, result=b"paid", attempts=2, code_hash="0123"
    )
    retrying = make_invocation(2, attempts=1, error=StoredError("shop.Refused", "no"))
    old_file(path, 6, flow, recorded, retrying)
    failed = Attempt.failed(1, 1_000.0, 1_001.0, StoredError("shop.Refused", "no", "Trace"))

    async with SqliteExecutionLog(path) as storage:
        loaded = await storage.load_invocations("flow-1")
        assert loaded == [recorded, retrying]
        assert [record.earlier_attempts for record in loaded] == [(), ()]
        # The new column is in use.
        shipped = retrying.replace(
            status=InvocationStatus.COMPLETE,
            result=b"shipped",
            error=None,
            attempts=2,
            earlier_attempts=(failed,),
        )
        assert (await storage.apply(Change(records=(shipped,)))).complete

    async with SqliteExecutionLog(path) as reopened:
        assert await reopened.load_invocations("flow-1") == [recorded, shipped]
    version, _, _ = stored_schema(path)
    assert version == SCHEMA_VERSION


async def test_a_migrated_flow_counts_the_leases_it_loses_from_none(
    path: Path, make_flow: FlowFactory
) -> None:
    running = make_flow(
        status=TaskStatus.RUNNING,
        lease_owner="worker-0",
        lease_token="token",
        lease_expires_at=1_500.0,
        worker_id="worker-0",
    )
    old_file(path, 2, running)

    async with SqliteExecutionLog(path) as storage:
        (run,) = await storage.claim(
            ClaimRequest("worker-a", ["Order"], limit=1, lease_seconds=30, now=2_000.0)
        )

    assert (run.flow.lease_losses, run.flow.last_lost_by) == (1, "worker-0")
    _, columns, _ = stored_schema(path)
    assert {"lease_losses", "last_lost_by"} <= set(columns)


async def test_a_migrated_file_opens_again_without_migrating(
    path: Path, make_flow: FlowFactory
) -> None:
    old_file(path, 2, make_flow())
    async with SqliteExecutionLog(path) as storage:
        await storage.apply(Change(writes=(FlowWrite("flow-1", {"attempt": 3}),)))

    async with SqliteExecutionLog(path) as reopened:
        assert await reopened.get_flow("flow-1") == make_flow(attempt=3, version=2)


CONNECT_AND_WRITE = textwrap.dedent(
    """
    import asyncio, sys
    from pyergon.core.records import ScheduledFlow
    from pyergon.core.status import TaskStatus
    from pyergon.storage.sqlite import SqliteExecutionLog

    path, flow_id = sys.argv[1], sys.argv[2]
    print("ready", flush=True)
    sys.stdin.readline()  # the test starts every process at once

    async def main() -> None:
        async with SqliteExecutionLog(path) as storage:
            flow = ScheduledFlow(flow_id, "Order", b"", TaskStatus.PENDING, 1.0, 1.0)
            assert (await storage.create_flow(flow))[1]
            old = await storage.get_flow("old")
            assert old is None or old.version == 1

    asyncio.run(main())
    """
)


def connect_at_once(path: Path, count: int) -> None:
    """Start ``count`` processes that connect to ``path`` at the same moment and write a flow."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONNECT_AND_WRITE, str(path), f"flow-{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(count)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outcomes = [process.communicate(timeout=30) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
    assert [process.returncode for process in processes] == [0] * count, outcomes


@pytest.mark.slow
@pytest.mark.parametrize(
    "version",
    [None, 1, 2, 3, 4, 5, 6],
    ids=["new-file", *(f"version-{version}" for version in range(1, 7))],
)
def test_processes_connecting_at_once_all_succeed_and_migrate_once(
    path: Path, make_flow: FlowFactory, version: int | None
) -> None:
    if version is not None:
        old_file(path, version, make_flow("old"))

    connect_at_once(path, 4)

    stored, columns, _ = stored_schema(path)
    assert stored == SCHEMA_VERSION
    assert columns.count("version") == 1
    with raw(path) as connection:
        count = 4 if version is None else 5
        assert connection.execute("SELECT COUNT(*) FROM flows").fetchone() == (count,)
        assert connection.execute("SELECT COUNT(*) FROM pyergon_meta").fetchone() == (1,)


async def test_two_connections_of_one_process_migrate_a_version_2_file_once(
    path: Path, make_flow: FlowFactory
) -> None:
    old_file(path, 2, make_flow())
    first, second = SqliteExecutionLog(path), SqliteExecutionLog(path)

    await asyncio.gather(first.connect(), second.connect())
    try:
        assert await first.get_flow("flow-1") == await second.get_flow("flow-1") == make_flow()
    finally:
        await first.close()
        await second.close()

    stored, columns, _ = stored_schema(path)
    assert stored == SCHEMA_VERSION and columns.count("version") == 1
