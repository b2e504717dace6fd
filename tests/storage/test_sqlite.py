"""What only the SQLite backend does: files, schema versions, group commit, several processes."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

import pyergon.storage
import pyergon.storage.sqlite as sqlite_module
from pyergon.core.records import FlowCursor, ScheduledFlow, SignalRecord
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.errors import (
    CorruptStorageError,
    SchemaVersionError,
    StorageClosedError,
    StorageError,
    UnknownStorageSchemeError,
)
from pyergon.storage import InMemoryExecutionLog, open_storage, sqlite_connections, sqlite_tables
from pyergon.storage.base import SCHEMA_VERSION
from pyergon.storage.sql_columns import record_values
from pyergon.storage.sqlite import SqliteExecutionLog
from pyergon.storage.sqlite_connections import checkpoint
from pyergon.storage.sqlite_tables import (
    MIGRATIONS,
    flow_listing,
    placeholders,
    prepare_connection,
)

from .conftest import FlowFactory, InvocationFactory


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "flows.db"


@pytest.fixture
async def sqlite(path: Path) -> AsyncIterator[SqliteExecutionLog]:
    async with SqliteExecutionLog(path) as storage:
        yield storage


@pytest.fixture
async def threaded() -> AsyncIterator[SqliteExecutionLog]:
    """In-memory storage: it commits on aiosqlite's worker thread only, where a gate can hold it."""
    storage = await SqliteExecutionLog.in_memory()
    try:
        yield storage
    finally:
        await storage.close()


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, to look at or tamper with a file behind pyergon's back."""
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        yield connection


class WorkerGate:
    """A write that holds aiosqlite's worker thread until released, to stage batches."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def hold(self, _connection: sqlite3.Connection) -> str:
        self.entered.set()
        self.released.wait(timeout=30)
        return "held"


# -- files and schema ------------------------------------------------------------------------


async def test_data_survives_reopening_the_file(
    path: Path, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    signal = SignalRecord("flow-1", "approved", b"yes", 1_500.0)
    async with SqliteExecutionLog(path) as storage:
        await storage.create_flow(make_flow())
        await storage.record_invocation(make_invocation(1, status=InvocationStatus.COMPLETE))
        await storage.store_signal(signal)

    async with SqliteExecutionLog(path) as reopened:
        assert await reopened.get_flow("flow-1") == make_flow()
        assert await reopened.load_invocations("flow-1") == [
            make_invocation(1, status=InvocationStatus.COMPLETE)
        ]
        assert await reopened.get_signal("flow-1", "approved") == signal


async def test_a_new_file_gets_wal_and_the_schema_version(sqlite: SqliteExecutionLog) -> None:
    with raw(Path(sqlite.path)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        version = connection.execute("SELECT value FROM pyergon_meta WHERE key = 'schema_version'")
        assert version.fetchone() == (SCHEMA_VERSION,)


async def test_an_empty_file_is_initialised(path: Path) -> None:
    await asyncio.to_thread(path.write_bytes, b"")

    async with SqliteExecutionLog(path) as storage:
        assert await storage.list_flows() == []


async def test_the_timer_query_uses_its_index(sqlite: SqliteExecutionLog) -> None:
    with raw(Path(sqlite.path)) as connection:
        plan = connection.execute(
            "EXPLAIN QUERY PLAN SELECT flow_id, sequence, sub_sequence FROM invocations "
            "WHERE status = 'WAITING_FOR_TIMER' AND fire_at <= ? ORDER BY fire_at",
            (1.0,),
        ).fetchall()
    assert "invocations_timer_due" in str(plan)


def version_1_file(path: Path, flow: ScheduledFlow) -> None:
    """A file as a pyergon of schema version 1 left it, holding ``flow``."""
    values = record_values(flow)
    del values["worker_id"], values["cancel_requested"]  # added by version 2
    with raw(path) as connection:
        MIGRATIONS[0](connection)
        connection.execute("INSERT INTO pyergon_meta (key, value) VALUES ('schema_version', 1)")
        connection.execute(
            f"INSERT INTO flows ({', '.join(values)}) VALUES ({placeholders(list(values))})",
            values,
        )


async def test_a_version_1_file_is_migrated_and_keeps_its_flows(
    path: Path, make_flow: FlowFactory
) -> None:
    flow = make_flow(
        status=TaskStatus.SUSPENDED, wake_at=2_000.0, parent_flow_id="parent", parent_sequence="3"
    )
    version_1_file(path, flow)

    async with SqliteExecutionLog(path) as storage:
        # make_flow leaves worker_id None and cancel_requested False: the new columns' defaults.
        assert await storage.get_flow("flow-1") == flow
        assert await storage.list_flows(parent_flow_id="parent") == [flow]
        claimed = await storage.claim_flow("worker-a", ["Order"], lease_seconds=30, now=2_000.0)
        assert claimed is not None and claimed.worker_id == "worker-a"
        requested = await storage.request_cancel("flow-1")
        assert requested is not None and requested.cancel_requested

    with raw(path) as connection:
        version = connection.execute("SELECT value FROM pyergon_meta WHERE key = 'schema_version'")
        assert version.fetchone() == (SCHEMA_VERSION,)
        indexes = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"flows_by_worker", "flows_by_parent"} <= indexes


CROWD = 100_000
"""Flows in the crowded file the listing plans are checked on."""


def listing_file(path: Path, count: int) -> Path:
    """A file holding ``count`` flows, inserted behind pyergon's back for speed.

    Flow ``i`` has type ``i % 10``, the statuses in turn, worker ``i % 20`` and a ``created_at``
    shared with one neighbour; every tenth flow is a child of one of 100 parents.
    """
    statuses = list(TaskStatus)
    rows = (
        (
            f"flow-{index:06}",
            f"Type{index % 10}",
            b"",
            statuses[index % len(statuses)].value,
            float(index // 2),
            float(index),
            1,
            f"worker-{index % 20}",
            f"flow-{index % 100:06}" if index % 10 == 5 else None,
        )
        for index in range(count)
    )
    with raw(path) as connection:
        prepare_connection(connection, path=str(path), busy_timeout=5, use_wal=True)
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO flows (flow_id, flow_type, payload, status, created_at, updated_at, "
            "attempt, worker_id, parent_flow_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        connection.execute("COMMIT")
    return path


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file holding :data:`CROWD` flows (about a second to build, once per module)."""
    return listing_file(tmp_path_factory.mktemp("crowded") / "flows.db", CROWD)


@pytest.fixture(scope="module")
def uncrowded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file with the schema and no flows: the plans without statistics, quickly."""
    return listing_file(tmp_path_factory.mktemp("uncrowded") / "flows.db", 0)


CURSOR = FlowCursor(30_000.0, "flow-060000")
"""A cursor in the middle of the crowded file."""


@pytest.mark.parametrize(
    "file",
    [
        pytest.param("uncrowded", id="empty"),
        pytest.param("crowded", id="100k", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("after", [None, CURSOR], ids=["first-page", "after-cursor"])
@pytest.mark.parametrize(
    ("filters", "index"),
    [
        pytest.param({}, "flows_by_created", id="no-filter"),
        pytest.param({"statuses": {TaskStatus.RUNNING}}, "flows_by_status", id="status"),
        pytest.param(
            {"statuses": {TaskStatus.RUNNING, TaskStatus.PENDING}},
            "flows_by_status",
            id="statuses",
        ),
        pytest.param({"flow_type": "Type3"}, "flows_by_type", id="type"),
        pytest.param({"worker_id": "worker-7"}, "flows_by_worker", id="worker"),
        pytest.param({"parent_flow_id": "flow-000005"}, "flows_by_parent", id="parent"),
        pytest.param(
            {"created_after": 1_000.0, "created_before": 40_000.0},
            "flows_by_created",
            id="created-range",
        ),
    ],
)
def test_a_page_of_flows_is_read_from_an_index_without_sorting(
    request: pytest.FixtureRequest,
    file: str,
    filters: dict[str, object],
    index: str,
    after: FlowCursor | None,
) -> None:
    listing: dict[str, Any] = {
        "statuses": None,
        "flow_type": None,
        "created_after": None,
        "created_before": None,
        "worker_id": None,
        "parent_flow_id": None,
        "limit": 50,
        "offset": 0,
    }
    statement, parameters = flow_listing(**listing | filters | {"after": after})
    with raw(request.getfixturevalue(file)) as connection:
        plan = connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()

    steps = [detail for *_, detail in plan]
    reads = [step for step in steps if step.startswith(("SCAN", "SEARCH"))]
    assert reads, steps
    assert all(f"USING INDEX {index}" in step for step in reads), steps
    assert not any("TEMP B-TREE" in step for step in steps), steps
    if after is not None:  # the cursor bounds the index range rather than filtering rows
        assert all("(created_at,flow_id)<(?,?)" in step for step in reads), steps


@pytest.mark.slow
async def test_keyset_pages_of_a_crowded_file_hold_the_right_flows(crowded: Path) -> None:
    async with SqliteExecutionLog(crowded) as storage:
        first = await storage.list_flows(flow_type="Type3", limit=50)
        second = await storage.list_flows(
            flow_type="Type3", limit=50, after=FlowCursor.after(first[-1])
        )
        children = await storage.list_flows(parent_flow_id="flow-000005", limit=50, after=CURSOR)

    assert [flow.flow_id for flow in first + second] == [
        f"flow-{index:06}" for index in range(CROWD - 7, CROWD - 1_000, -10)
    ]
    assert [flow.flow_id for flow in children] == [
        f"flow-{index:06}" for index in range(59_905, 59_905 - 5_000, -100)
    ]


def corrupt_file(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def foreign_database(path: Path) -> None:
    with raw(path) as connection:
        connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        connection.execute("INSERT INTO customers (name) VALUES ('Ada')")


def newer_pyergon_file(path: Path) -> None:
    async def create() -> None:
        async with SqliteExecutionLog(path):
            pass

    asyncio.run(create())
    with raw(path) as connection:
        connection.execute("UPDATE pyergon_meta SET value = ?", (SCHEMA_VERSION + 1,))


def meta_without_version(path: Path) -> None:
    with raw(path) as connection:
        connection.execute("CREATE TABLE pyergon_meta (key TEXT PRIMARY KEY, value NOT NULL)")


@pytest.mark.parametrize(
    ("make_file", "error", "message"),
    [
        pytest.param(corrupt_file, CorruptStorageError, "not a SQLite database", id="random-bytes"),
        pytest.param(foreign_database, CorruptStorageError, "not a pyergon one", id="foreign"),
        pytest.param(newer_pyergon_file, SchemaVersionError, "Upgrade pyergon", id="newer"),
        pytest.param(meta_without_version, CorruptStorageError, "schema_version", id="no-version"),
    ],
)
def test_a_file_pyergon_cannot_use_is_refused_and_left_unchanged(
    path: Path, make_file: Callable[[Path], None], error: type[Exception], message: str
) -> None:
    make_file(path)
    before = path.read_bytes()

    async def open_it() -> None:
        await SqliteExecutionLog(path).connect()

    with pytest.raises(error, match=message) as raised:
        asyncio.run(open_it())

    assert str(path) in str(raised.value)
    assert "changed nothing" in str(raised.value)
    assert path.read_bytes() == before
    assert not path.with_name(path.name + "-wal").exists()


def test_a_newer_schema_error_names_both_versions(path: Path) -> None:
    newer_pyergon_file(path)

    with pytest.raises(SchemaVersionError) as raised:
        asyncio.run(SqliteExecutionLog(path).connect())

    assert f"schema version {SCHEMA_VERSION + 1}" in str(raised.value)
    assert f"supports schema version {SCHEMA_VERSION}" in str(raised.value)


async def test_a_missing_directory_is_a_storage_error(tmp_path: Path) -> None:
    storage = SqliteExecutionLog(tmp_path / "missing" / "flows.db")

    with pytest.raises(StorageError, match="unable to open") as raised:
        await storage.connect()

    assert not isinstance(raised.value, CorruptStorageError)
    with pytest.raises(StorageClosedError):
        await storage.get_flow("flow-1")


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

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_processes_connecting_at_once_to_a_new_file_all_succeed(path: Path) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONNECT_AND_WRITE, str(path), f"flow-{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
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

    assert [process.returncode for process in processes] == [0] * 4, outcomes
    with raw(path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM flows").fetchone() == (4,)
        version = connection.execute("SELECT value FROM pyergon_meta").fetchone()
        assert version == (SCHEMA_VERSION,)


# -- lifecycle -------------------------------------------------------------------------------


async def test_use_before_connect_or_after_close_is_refused(
    path: Path, make_flow: FlowFactory
) -> None:
    storage = SqliteExecutionLog(path)
    with pytest.raises(StorageClosedError, match="connect"):
        await storage.get_flow("flow-1")
    with pytest.raises(StorageClosedError):
        await storage.create_flow(make_flow())

    await storage.connect()
    await storage.create_flow(make_flow())
    await storage.close()

    with pytest.raises(StorageClosedError):
        await storage.list_flows()
    with pytest.raises(StorageClosedError):
        await storage.update_flow("flow-1", status=TaskStatus.RUNNING)
    with pytest.raises(StorageClosedError):
        await storage.wait_for_work(timeout=1)

    await storage.connect()  # a closed storage can be connected again
    try:
        assert await storage.get_flow("flow-1") == make_flow()
    finally:
        await storage.close()


async def test_close_commits_the_writes_still_queued(
    path: Path, make_invocation: InvocationFactory
) -> None:
    storage = SqliteExecutionLog(path)
    await storage.connect()
    writes = [asyncio.create_task(storage.record_invocation(make_invocation(n))) for n in range(20)]
    await asyncio.sleep(0)  # one pass: the first write, alone so far, commits; the rest queue
    assert len(storage._pending) == 19

    await storage.close()

    assert all(write.done() and write.exception() is None for write in writes)
    async with SqliteExecutionLog(path) as reopened:
        assert len(await reopened.load_invocations("flow-1")) == 20


async def test_in_memory_databases_are_private(make_flow: FlowFactory) -> None:
    first = await SqliteExecutionLog.in_memory()
    second = await SqliteExecutionLog.in_memory()
    try:
        await first.create_flow(make_flow())
        assert await second.get_flow("flow-1") is None
        assert repr(first) == "SqliteExecutionLog(':memory:', open)"
    finally:
        await first.close()
        await second.close()


# -- group commit ----------------------------------------------------------------------------


async def test_concurrent_writes_share_transactions(
    sqlite: SqliteExecutionLog, make_invocation: InvocationFactory
) -> None:
    before = sqlite._batches_committed

    await asyncio.gather(*(sqlite.record_invocation(make_invocation(n)) for n in range(100)))

    assert sqlite._batches_committed - before < 10
    assert len(await sqlite.load_invocations("flow-1")) == 100


async def test_a_lone_write_commits_without_waiting_for_a_pass_of_the_loop(
    sqlite: SqliteExecutionLog, make_invocation: InvocationFactory
) -> None:
    passes: list[str] = []
    asyncio.get_running_loop().call_soon(passes.append, "a pass of the loop")

    stored = await sqlite.record_invocation(make_invocation(1))

    assert stored == make_invocation(1)
    assert passes == []
    async with SqliteExecutionLog(sqlite.path) as other:  # committed, not only written
        assert await other.get_invocation("flow-1", 1) == stored


async def test_writers_seen_together_share_every_transaction_after_the_first(
    sqlite: SqliteExecutionLog, make_invocation: InvocationFactory
) -> None:
    await asyncio.gather(*(sqlite.record_invocation(make_invocation(n)) for n in range(50)))
    before = sqlite._batches_committed

    await asyncio.gather(*(sqlite.record_invocation(make_invocation(n)) for n in range(50, 100)))

    assert sqlite._batches_committed - before == 1
    assert len(await sqlite.load_invocations("flow-1")) == 100


async def test_writes_made_during_a_commit_form_the_next_batch(
    threaded: SqliteExecutionLog, make_invocation: InvocationFactory
) -> None:
    gate = WorkerGate()
    before = threaded._batches_committed
    held = asyncio.create_task(threaded._write(gate.hold))
    try:
        await asyncio.to_thread(gate.entered.wait, 30)
        writes = [
            asyncio.create_task(threaded.record_invocation(make_invocation(n))) for n in range(50)
        ]
        await asyncio.sleep(0)  # one pass of the loop: every write queues itself
        assert len(threaded._pending) == 50
    finally:
        gate.released.set()

    assert await held == "held"
    await asyncio.gather(*writes)
    assert threaded._batches_committed - before == 2


async def test_a_write_cancelled_before_its_batch_is_not_made(
    threaded: SqliteExecutionLog, make_invocation: InvocationFactory
) -> None:
    gate = WorkerGate()
    held = asyncio.create_task(threaded._write(gate.hold))
    try:
        await asyncio.to_thread(gate.entered.wait, 30)
        cancelled = asyncio.create_task(threaded.record_invocation(make_invocation(1)))
        kept = asyncio.create_task(threaded.record_invocation(make_invocation(2)))
        await asyncio.sleep(0)  # both writes queue themselves
        cancelled.cancel()
    finally:
        gate.released.set()

    await held
    await kept
    assert cancelled.cancelled()
    assert [i.sequence for i in await threaded.load_invocations("flow-1")] == [2]


def insert_then_fail(connection: sqlite3.Connection) -> None:
    connection.execute("INSERT INTO signals VALUES ('flow-1', 'partial', x'00', 1.0)")
    raise RuntimeError("the operation broke after writing")


def insert_then_break_sql(connection: sqlite3.Connection) -> None:
    connection.execute("INSERT INTO signals VALUES ('flow-1', 'partial', x'00', 1.0)")
    connection.execute("INSERT INTO no_such_table VALUES (1)")


@pytest.mark.parametrize(
    ("operation", "error", "message"),
    [
        (insert_then_fail, RuntimeError, "broke after writing"),
        (insert_then_break_sql, StorageError, "no such table"),
    ],
)
async def test_a_failing_write_does_not_lose_the_rest_of_its_batch(
    sqlite: SqliteExecutionLog,
    make_invocation: InvocationFactory,
    operation: Callable[[sqlite3.Connection], None],
    error: type[Exception],
    message: str,
) -> None:
    sqlite._writers_alone = False  # as under load: every write of the pass joins one batch
    before = sqlite._batches_committed
    writes: list[Awaitable[object]] = [
        sqlite.record_invocation(make_invocation(n)) for n in range(10)
    ]
    writes.insert(5, sqlite._write(operation))

    outcomes = await asyncio.gather(*writes, return_exceptions=True)

    failure = outcomes.pop(5)
    assert isinstance(failure, error)
    assert message in str(failure)
    assert outcomes == [make_invocation(n) for n in range(10)]
    assert sqlite._batches_committed - before == 1
    assert await sqlite.get_signal("flow-1", "partial") is None  # its own write was rolled back
    assert len(await sqlite.load_invocations("flow-1")) == 10


async def test_a_batch_whose_transaction_fails_fails_every_write_in_it(
    sqlite: SqliteExecutionLog, make_invocation: InvocationFactory
) -> None:
    def end_the_transaction(connection: sqlite3.Connection) -> None:
        connection.execute("ROLLBACK")

    sqlite._writers_alone = False  # as under load: every write of the pass joins one batch
    writes: list[Awaitable[object]] = [
        sqlite.record_invocation(make_invocation(n)) for n in range(5)
    ]
    writes.append(sqlite._write(end_the_transaction))

    outcomes = await asyncio.gather(*writes, return_exceptions=True)

    assert all(isinstance(outcome, StorageError) for outcome in outcomes)
    assert await sqlite.load_invocations("flow-1") == []
    assert await sqlite.record_invocation(make_invocation(1)) == make_invocation(1)


async def test_a_write_lock_held_too_long_is_a_clear_error(
    path: Path, make_flow: FlowFactory
) -> None:
    async with SqliteExecutionLog(path, busy_timeout=0.05) as storage:
        with raw(path) as other_process:
            other_process.execute("BEGIN IMMEDIATE")
            with pytest.raises(StorageError, match="busy_timeout"):
                await storage.create_flow(make_flow())
            other_process.execute("ROLLBACK")
        assert await storage.create_flow(make_flow()) == (make_flow(), True)


async def test_a_write_waits_for_another_connections_write_lock(
    sqlite: SqliteExecutionLog, path: Path, make_flow: FlowFactory
) -> None:
    with raw(path) as other_process:
        other_process.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(sqlite.create_flow(make_flow()))
        await asyncio.sleep(0.05)
        assert not write.done()  # waiting for the lock on the worker thread, not failed
        other_process.execute("ROLLBACK")

    assert await write == (make_flow(), True)
    assert await sqlite.get_flow("flow-1") == make_flow()


async def test_the_wal_is_checkpointed_while_the_storage_is_open(
    sqlite: SqliteExecutionLog,
    path: Path,
    make_invocation: InvocationFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copied = threading.Event()
    go_on = threading.Event()

    def checkpoint_then_wait(connection: sqlite3.Connection) -> None:
        checkpoint(connection)
        copied.set()
        go_on.wait(10)  # writes made now are not in the copy

    monkeypatch.setattr(sqlite_connections, "checkpoint", checkpoint_then_wait)
    every = sqlite_module._CHECKPOINT_EVERY
    for sequence in range(every):  # one batch each, so one or more WAL frames each
        await sqlite.record_invocation(make_invocation(sequence))
    checkpoints = sqlite._checkpoints
    assert checkpoints is not None and checkpoints.running  # started by the last write
    await asyncio.to_thread(copied.wait, 10)
    committed = sqlite._batches_committed
    for sequence in range(every, every + 10):
        await sqlite.record_invocation(make_invocation(sequence))
    assert sqlite._batches_committed == committed + 10
    assert checkpoints.running  # so those writes did not wait for it
    go_on.set()
    await checkpoints.wait()
    for sequence in range(every + 10, every + 13):
        # The first sees the checkpoint done and holds writes, the second waits for the
        # checkpoint of the frames written meanwhile, the third starts the WAL over.
        await sqlite.record_invocation(make_invocation(sequence))

    with raw(path) as other_process:
        busy, frames, copied_frames = other_process.execute(
            "PRAGMA wal_checkpoint(PASSIVE)"
        ).fetchone()
    assert 0 <= frames < 10, (busy, frames, copied_frames)  # the last write only
    assert len(await sqlite.load_invocations("flow-1")) == every + 13


async def test_a_large_record_is_stored_whole(
    sqlite: SqliteExecutionLog, path: Path, make_invocation: InvocationFactory
) -> None:
    large = make_invocation(status=InvocationStatus.COMPLETE, result=os.urandom(3 << 20))

    assert await sqlite.record_invocation(large) == large
    async with SqliteExecutionLog(path) as reopened:
        assert await reopened.get_invocation("flow-1", 1) == large


# -- open_storage ----------------------------------------------------------------------------


async def test_open_storage_memory() -> None:
    storage = await open_storage("memory://")
    assert isinstance(storage, InMemoryExecutionLog)


@pytest.mark.parametrize("url", ["sqlite://:memory:", "sqlite:///:memory:", "SQLITE://:memory:"])
async def test_open_storage_sqlite_in_memory(url: str) -> None:
    storage = await open_storage(url)
    try:
        assert isinstance(storage, SqliteExecutionLog)
        assert storage.path == ":memory:"
        assert await storage.list_flows() == []
    finally:
        await storage.close()


async def test_open_storage_sqlite_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    storage = await open_storage("sqlite:///flows.db")
    await storage.close()

    assert isinstance(storage, SqliteExecutionLog)
    assert storage.path == "flows.db"
    assert (tmp_path / "flows.db").exists()


async def test_open_storage_sqlite_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"

    storage = await open_storage(f"sqlite:///{path}")  # an absolute path adds the fourth slash
    await storage.close()

    assert isinstance(storage, SqliteExecutionLog)
    assert storage.path == str(path)
    assert path.exists()


@pytest.mark.parametrize(
    "url", ["mysql://user@host/db", "flows.db", "", "memory:", "file:///tmp/flows.db"]
)
async def test_open_storage_refuses_unknown_schemes(url: str) -> None:
    with pytest.raises(UnknownStorageSchemeError, match="supported URLs: memory://") as raised:
        await open_storage(url)

    assert repr(url) in str(raised.value)
    assert isinstance(raised.value, ValueError)


async def test_open_storage_keeps_passwords_out_of_errors() -> None:
    with pytest.raises(UnknownStorageSchemeError) as raised:
        await open_storage("mysql://admin:hunter2@db.example.com/flows")

    assert "hunter2" not in str(raised.value)
    assert "admin:***@db.example.com" in str(raised.value)


@pytest.mark.parametrize("url", ["sqlite://flows.db", "sqlite://", "sqlite:///", "memory://x"])
async def test_open_storage_refuses_malformed_urls(url: str) -> None:
    with pytest.raises(StorageError, match=re.escape(repr(url))):
        await open_storage(url)


def test_importing_storage_does_not_load_sqlite() -> None:
    code = "import sys, pyergon.storage; print('aiosqlite' in sys.modules)"
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "False"


def test_storage_exports_its_public_names_sorted() -> None:
    public = {
        name
        for name, value in vars(pyergon.storage).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }

    assert pyergon.storage.__all__ == sorted(pyergon.storage.__all__)
    assert set(pyergon.storage.__all__) == public


async def test_work_stored_by_another_process_wakes_a_waiting_worker(
    sqlite: SqliteExecutionLog, path: Path
) -> None:
    assert await sqlite.wait_for_work(0.01) is False  # nothing new yet
    script = textwrap.dedent(
        f"""
        import asyncio
        from pyergon.core.records import ScheduledFlow
        from pyergon.core.status import TaskStatus
        from pyergon.storage.sqlite import SqliteExecutionLog

        async def main():
            async with SqliteExecutionLog({str(path)!r}) as storage:
                await storage.create_flow(ScheduledFlow(
                    "from-elsewhere", "T", b"", TaskStatus.PENDING, 1.0, 1.0))

        asyncio.run(main())
        """
    )
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(sqlite.wait_for_work(30.0))
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    assert await process.wait() == 0
    written_at = loop.time()
    assert await asyncio.wait_for(waiting, 30.0) is True
    # Woken by the other process's commit through the short poll, far before the timeout.
    assert loop.time() - written_at < 5.0
    flow = await sqlite.get_flow("from-elsewhere")
    assert flow is not None and flow.status is TaskStatus.PENDING


async def test_checkpoints_reach_the_file_opened_after_the_working_directory_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_invocation: InvocationFactory
) -> None:
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with SqliteExecutionLog("flows.db") as storage:
        monkeypatch.chdir(elsewhere)
        for sequence in range(sqlite_module._CHECKPOINT_EVERY):
            await storage.record_invocation(make_invocation(sequence))
        checkpoints = storage._checkpoints
        assert checkpoints is not None
        await checkpoints.wait()
        _, error = checkpoints.finished()

    assert error is None
    assert not (elsewhere / "flows.db").exists()


def test_inserts_write_null_for_none_and_bind_the_rest() -> None:
    insert = sqlite_tables._Insert("t", ("a", "b", "c"), "ON CONFLICT (a) DO NOTHING")
    assert (
        insert.all_bound == "INSERT INTO t (a, b, c) VALUES (:a, :b, :c) ON CONFLICT (a) DO NOTHING"
    )
    with closing(sqlite3.connect(":memory:")) as connection:
        connection.execute("CREATE TABLE t (a PRIMARY KEY, b, c)")
        for row in ({"a": 1, "b": None, "c": b"x"}, {"c": None, "a": 2, "b": "y"}):
            text = insert(row)
            assert text.count("NULL") == 1
            connection.execute(text, row)
        stored = connection.execute("SELECT a, b, c FROM t ORDER BY a").fetchall()
    assert stored == [(1, None, b"x"), (2, "y", None)]


def test_insert_variants_are_capped_but_stay_right() -> None:
    columns = tuple(f"c{number}" for number in range(8))
    insert = sqlite_tables._Insert("t", columns, "")
    with closing(sqlite3.connect(":memory:")) as connection:
        connection.execute(f"CREATE TABLE t ({', '.join(columns)})")
        for pattern in range(2 ** len(columns)):  # every set of None columns: 256 > the cap
            row = {c: (None if pattern >> i & 1 else i) for i, c in enumerate(columns)}
            connection.execute(insert(row), row)
            stored = connection.execute("SELECT * FROM t WHERE rowid = last_insert_rowid()")
            assert stored.fetchone() == tuple(row.values())
    assert len(insert._variants) == insert._MAX_VARIANTS
    assert insert(dict.fromkeys(columns)) == insert.all_bound  # a set never seen, past the cap


def test_flow_updates_write_null_only_for_none() -> None:
    statement, values = sqlite_tables._flow_update(
        "f", {"a": None, "b": 0, "c": False}, " AND d = :d", {"d": None}
    )
    assert (
        statement == "UPDATE flows SET a = NULL, b = :b, c = :c WHERE flow_id = :flow_id AND d = :d"
    )
    assert values == {"a": None, "b": 0, "c": False, "d": None, "flow_id": "f"}


_COMMIT_ELSEWHERE = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA synchronous = FULL")  # sqlite3's default: a sync before publishing
connection.execute("INSERT INTO pyergon_meta (key, value) VALUES (?, 1)", (sys.argv[2],))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
async def test_other_processes_commits_wake_a_worker_through_the_wal_watch(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the safeguard check an hour apart, only the watch can wake the waiter in time.
    monkeypatch.setattr(sqlite_module, "_WATCHED_CHECK", 3600.0)
    async with SqliteExecutionLog(path) as storage:
        assert storage._wal_writes is not None
        assert await storage.wait_for_work(0.01) is False
        for number in range(10):
            waiting = asyncio.create_task(storage.wait_for_work(3600.0))
            await asyncio.sleep(0)  # the waiter takes its first look, then listens
            writer = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _COMMIT_ELSEWHERE, str(path), f"elsewhere-{number}"
            )
            assert await writer.wait() == 0
            assert await asyncio.wait_for(waiting, 30.0) is True


async def test_without_a_watch_other_commits_are_polled_for(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "watch_writes", lambda _path: None)
    async with SqliteExecutionLog(path) as storage:
        assert storage._wal_writes is None
        assert await storage.wait_for_work(0.01) is False
        waiting = asyncio.create_task(storage.wait_for_work(3600.0))
        await asyncio.sleep(0)
        with raw(path) as other:
            other.execute("INSERT INTO pyergon_meta (key, value) VALUES ('written-elsewhere', 1)")
        assert await asyncio.wait_for(waiting, 30.0) is True
