"""What only the SQLite backend does: files, schema versions, group commit, several processes."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
import types
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

import pyergon.storage
from pyergon.core import ClaimRequest
from pyergon.core.changes import ABSENT, Change, FlowWrite
from pyergon.core.records import SignalRecord, StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.errors import (
    CorruptStorageError,
    InvalidStorageUrlError,
    SchemaVersionError,
    StorageClosedError,
    StorageError,
    UnknownStorageSchemeError,
)
from pyergon.storage import InMemoryExecutionLog, open_storage
from pyergon.storage._sql.rows import written_columns
from pyergon.storage.base import SCHEMA_VERSION
from pyergon.storage.sqlite import SqliteExecutionLog

from .conftest import FlowFactory, InvocationFactory


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "flows.db"


@pytest.fixture
async def sqlite(path: Path) -> AsyncIterator[SqliteExecutionLog]:
    async with SqliteExecutionLog(path) as storage:
        yield storage


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, to look at or tamper with a file behind pyergon's back."""
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        yield connection


# -- files and schema ------------------------------------------------------------------------


async def test_data_survives_reopening_the_file(
    path: Path, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    signal = SignalRecord("flow-1", "approved", b"yes", 1_500.0)
    failed = make_flow(
        status=TaskStatus.FAILED,
        error=StoredError("builtins.ValueError", "no", "Traceback ...", None),
        worker_id="worker-a",
    )
    record = make_invocation(1, status=InvocationStatus.COMPLETE, result=None)
    async with SqliteExecutionLog(path) as storage:
        await storage.create_flow(make_flow())
        await storage.apply(
            Change(
                records=(record,),
                signals=(signal,),
                writes=(
                    FlowWrite(
                        "flow-1",
                        {
                            "status": TaskStatus.FAILED,
                            "error": failed.error,
                            "worker_id": "worker-a",
                        },
                        expected_version=1,
                    ),
                ),
            )
        )

    async with SqliteExecutionLog(path) as reopened:
        assert await reopened.get_flow("flow-1") == failed.replace(version=2)
        assert await reopened.load_invocations("flow-1") == [record]
        assert await reopened.list_signals("flow-1") == [signal]


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
        await storage.apply(Change(writes=(FlowWrite("flow-1", {"attempt": 2}),)))
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
    writes = [
        asyncio.create_task(storage.apply(Change(records=(make_invocation(n),)))) for n in range(20)
    ]
    await asyncio.sleep(0)  # one pass: the first write, alone so far, commits; the rest queue
    assert storage._file is not None and len(storage._file.pending) == 19

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


# -- the contract in SQL ---------------------------------------------------------------------


async def queue(storage: SqliteExecutionLog | InMemoryExecutionLog, make_flow: FlowFactory) -> None:
    """Flows of every kind a claim meets, runnable or not, at ``now = 2_000``."""
    for flow in (
        make_flow("pending-new", created_at=1_000.0),
        make_flow("pending-old", created_at=900.0),
        make_flow("timer-due", status=TaskStatus.SUSPENDED, wake_at=500.0, created_at=100.0),
        make_flow("timer-soon", status=TaskStatus.SUSPENDED, wake_at=2_005.0),
        make_flow("timer-later", status=TaskStatus.SUSPENDED, wake_at=5_000.0),
        make_flow("waiting", status=TaskStatus.SUSPENDED),
        make_flow("lease-lost", status=TaskStatus.RUNNING, lease_expires_at=1_999.0, version=4),
        make_flow("lease-held", status=TaskStatus.RUNNING, lease_expires_at=2_001.0),
        make_flow("direct-run", status=TaskStatus.RUNNING),
        make_flow("done", status=TaskStatus.COMPLETE),
        make_flow("other-type", flow_type="Invoice"),
    ):
        await storage.create_flow(flow)


async def test_a_claim_takes_runnable_flows_in_queue_order_as_memory_does(
    sqlite: SqliteExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    memory = InMemoryExecutionLog()
    await queue(sqlite, make_flow)
    await queue(memory, make_flow)
    timer = make_invocation(1, flow_id="timer-due", status=InvocationStatus.WAITING_FOR_TIMER)
    await sqlite.apply(Change(records=(timer,)))

    claims = {
        name: await storage.claim(
            ClaimRequest(
                "worker-a", ["Order"], limit=10, lease_seconds=30, now=2_000.0, due_by=2_010.0
            )
        )
        for name, storage in (("sqlite", sqlite), ("memory", memory))
    }

    order = [run.flow.flow_id for run in claims["sqlite"]]
    assert order == ["pending-old", "lease-lost", "pending-new", "timer-due", "timer-soon"]
    assert order == [run.flow.flow_id for run in claims["memory"]]
    runs = {run.flow.flow_id: run for run in claims["sqlite"]}
    assert runs["timer-due"].log == [timer]
    assert runs["pending-new"].log == []
    assert runs["lease-lost"].flow.version == 5
    tokens = {run.flow.lease_token for run in claims["sqlite"]}
    assert len(tokens) == 5 and None not in tokens
    for run in claims["sqlite"]:
        assert run.flow.status is TaskStatus.RUNNING
        assert run.flow.lease_owner == run.flow.worker_id == "worker-a"
        assert run.flow.lease_expires_at == 2_030.0
        assert run.flow.wake_at in (None, 500.0, 2_005.0)  # a claim does not touch it
        assert await sqlite.get_flow(run.flow.flow_id) == run.flow
    assert (
        await sqlite.claim(
            ClaimRequest("worker-b", ["Order"], limit=10, lease_seconds=30, now=2_000.0)
        )
        == []
    )
    assert await sqlite.next_wake_at(["Order"]) == 5_000.0
    assert await sqlite.next_wake_at(["Invoice"]) is None


async def test_a_claim_without_flow_types_takes_nothing(sqlite: SqliteExecutionLog) -> None:
    assert (
        await sqlite.claim(ClaimRequest("worker-a", [], limit=1, lease_seconds=30, now=1.0)) == []
    )


async def test_renewing_leases_keeps_the_version_and_skips_lost_leases(
    sqlite: SqliteExecutionLog, make_flow: FlowFactory
) -> None:
    for flow_id in ("flow-1", "flow-2"):
        await sqlite.create_flow(make_flow(flow_id))
    runs = await sqlite.claim(
        ClaimRequest("worker-a", ["Order"], limit=2, lease_seconds=30, now=2_000.0)
    )
    leases = {run.flow.flow_id: str(run.flow.lease_token) for run in runs}

    held = await sqlite.renew_leases(
        {**leases, "flow-2": "another-token", "missing": "token"}, lease_seconds=60, now=2_010.0
    )

    assert held == {"flow-1"}
    renewed = await sqlite.get_flow("flow-1")
    assert renewed == runs[0].flow.replace(lease_expires_at=2_070.0)  # the same version
    assert await sqlite.get_flow("flow-2") == runs[1].flow
    assert await sqlite.renew_leases({}, lease_seconds=60, now=2_010.0) == set()


async def test_writes_follow_their_guards_and_statuses(
    sqlite: SqliteExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    await sqlite.create_flow(make_flow())
    failed = make_invocation(1, status=InvocationStatus.FAILED)
    complete = make_invocation(2, status=InvocationStatus.COMPLETE)
    await sqlite.apply(Change(records=(failed, complete)))
    wake = FlowWrite(
        "flow-1",
        {"status": TaskStatus.PENDING, "wake_at": None},
        only_if_status=frozenset((TaskStatus.SUSPENDED,)),
    )

    touched = await sqlite.apply(Change(writes=(wake, FlowWrite("missing", {"attempt": 2}))))
    assert touched.complete
    assert await sqlite.get_flow("flow-1") == make_flow(version=2)  # only the version moved
    assert await sqlite.get_flow("missing") is None  # a write of no flow does nothing

    absent = FlowWrite("flow-1", expected_version=ABSENT)
    assert (
        await sqlite.apply(
            Change(signals=(SignalRecord("flow-1", "s", b"", 1.0),), writes=(absent,))
        )
    ).moved == "flow-1"
    assert await sqlite.list_signals("flow-1") == []

    retry = await sqlite.apply(
        Change(
            forget_failed=("flow-1",),
            writes=(
                FlowWrite(
                    "flow-1",
                    {"status": TaskStatus.SUSPENDED, "wake_at": 3_000.0, "attempt": 2},
                    expected_version=2,
                ),
            ),
        )
    )
    assert retry.complete
    assert await sqlite.load_invocations("flow-1") == [complete]
    assert await sqlite.get_flow("flow-1") == make_flow(
        status=TaskStatus.SUSPENDED, wake_at=3_000.0, attempt=2, version=3
    )
    assert (await sqlite.apply(Change(writes=(wake,)))).complete
    assert await sqlite.get_flow("flow-1") == make_flow(attempt=2, version=4)


async def test_a_write_of_a_field_that_is_not_writable_is_refused(
    sqlite: SqliteExecutionLog, make_flow: FlowFactory
) -> None:
    await sqlite.create_flow(make_flow())
    for field in ("version", "flow_id", "no_such_field; DROP TABLE flows"):
        with pytest.raises(ValueError, match="cannot change"):
            written_columns({field: 1})
        with pytest.raises(ValueError, match="cannot change"):
            await sqlite.apply(Change(writes=(FlowWrite("flow-1", {field: 1}),)))
    assert await sqlite.get_flow("flow-1") == make_flow()


async def test_new_pending_flows_and_notifying_changes_wake_a_waiting_worker(
    sqlite: SqliteExecutionLog, make_flow: FlowFactory
) -> None:
    async def wakes(write: Callable[[], Any]) -> bool:
        waiting = asyncio.create_task(sqlite.wait_for_work(0.2))
        await asyncio.sleep(0)
        await write()
        return await waiting

    assert await wakes(lambda: sqlite.create_flow(make_flow(status=TaskStatus.SUSPENDED))) is False
    assert await wakes(lambda: sqlite.create_flow(make_flow("flow-2"))) is True
    quiet = Change(writes=(FlowWrite("flow-1", {"attempt": 2}),))
    assert await wakes(lambda: sqlite.apply(quiet)) is False
    notify = Change(writes=(FlowWrite("flow-1", {"status": TaskStatus.PENDING}),), notify=True)
    assert await wakes(lambda: sqlite.apply(notify)) is True
    stale = Change(writes=(FlowWrite("flow-1", expected_version=1),), notify=True)
    assert await wakes(lambda: sqlite.apply(stale)) is False  # refused: nothing to look at


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
    code = "import sys, pyergon.storage; print('pyergon.storage.sqlite' in sys.modules)"
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


async def test_a_sqlite_url_may_say_where_its_artifacts_go(tmp_path: Path) -> None:
    from pyergon.serialization.artifacts import LocalArtifactStore

    elsewhere = tmp_path / "big values"
    storage = await open_storage(f"sqlite:///{tmp_path}/flows.db?artifacts={elsewhere}")
    try:
        assert isinstance(storage.artifacts, LocalArtifactStore)
        assert storage.artifacts.root == str(elsewhere)
        assert (tmp_path / "flows.db").exists()
    finally:
        await storage.close()
    default = await open_storage(f"sqlite:///{tmp_path}/flows.db")
    try:
        assert isinstance(default.artifacts, LocalArtifactStore)
        assert default.artifacts.root == str(tmp_path / "flows.artifacts")
    finally:
        await default.close()


@pytest.mark.parametrize("query", ["mode=ro", "artifacts=", "artifacts=a&artifacts=b"])
async def test_a_sqlite_url_refuses_other_query_parameters(tmp_path: Path, query: str) -> None:
    with pytest.raises(InvalidStorageUrlError, match="takes one query parameter, artifacts="):
        await open_storage(f"sqlite:///{tmp_path}/flows.db?{query}")
    assert not (tmp_path / "flows.db").exists()
