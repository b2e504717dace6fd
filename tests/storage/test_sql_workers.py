"""What the SQL backends add to the worker-record contract: reopening, damaged rows, cheap opens.

The contract itself (``pyergon.testing.WorkerRegistryContract``) runs in ``test_contract.py``
and ``test_postgres_contract.py``. Here: a reopened log (a worker's heartbeat thread connects
it on an event loop of its own) works on the same store, a worker record someone damaged is
named when read, and opening a SQLite file that needs no migration waits for no write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyergon.core import ClaimRequest
from pyergon.core.workers import Beat
from pyergon.errors import CorruptStorageError, StorageClosedError, StorageError
from pyergon.storage._sql.dialect import quote_identifier
from pyergon.storage.base import ReopenableLog, WorkerRegistry
from pyergon.storage.postgres import PostgresExecutionLog
from pyergon.storage.sqlite import SqliteExecutionLog
from pyergon.testing import make_flow, make_worker
from tests.conftest import POSTGRES_DSN, drop_schema, require_postgres

from .test_postgres import connections_of

SetWorkerColumn = Callable[[str, str, str], Awaitable[None]]
"""``(worker_id, column, SQL expression)``: set a column of a worker's row behind pyergon."""


@dataclass
class SqlBackend:
    name: str
    storage: SqliteExecutionLog | PostgresExecutionLog
    set_worker_column: SetWorkerColumn


async def open_sqlite(tmp_path: Path) -> AsyncIterator[SqlBackend]:
    path = tmp_path / "flows.db"

    async def set_worker_column(worker_id: str, column: str, expression: str) -> None:
        with closing(sqlite3.connect(path, isolation_level=None)) as connection:
            connection.execute(
                f"UPDATE workers SET {column} = {expression} WHERE worker_id = ?", (worker_id,)
            )

    async with SqliteExecutionLog(path, busy_timeout=3.5) as storage:
        yield SqlBackend("sqlite", storage, set_worker_column)


async def open_postgres(_tmp_path: Path) -> AsyncIterator[SqlBackend]:
    import asyncpg

    await require_postgres()
    schema = f"pyergon_test_{uuid.uuid4().hex[:12]}"

    async def set_worker_column(worker_id: str, column: str, expression: str) -> None:
        connection = await asyncpg.connect(POSTGRES_DSN)
        try:
            await connection.execute(
                f"UPDATE {quote_identifier(schema)}.workers SET {column} = {expression} "
                "WHERE worker_id = $1",
                worker_id,
            )
        finally:
            await connection.close()

    try:
        async with PostgresExecutionLog(
            POSTGRES_DSN, schema=schema, max_size=3, connect_timeout=4.5
        ) as storage:
            yield SqlBackend("postgres", storage, set_worker_column)
    finally:
        await drop_schema(schema)


Opener = Callable[[Path], AsyncIterator[SqlBackend]]


@pytest.fixture(params=[open_sqlite, open_postgres], ids=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlBackend]:
    async for opened in request.param(tmp_path):
        yield opened


@pytest.fixture
async def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlBackend]:
    """The backend a test's ``opener`` parameter names."""
    async for opened in request.node.callspec.params["opener"](tmp_path):
        yield opened


# -- reopening -------------------------------------------------------------------------------


async def test_a_reopened_log_on_a_thread_of_its_own_shares_the_flows_and_workers(
    backend: SqlBackend,
) -> None:
    storage = backend.storage
    assert isinstance(storage, ReopenableLog) and isinstance(storage, WorkerRegistry)
    await storage.create_flow(make_flow("flow-1"))
    [run] = await storage.claim(
        ClaimRequest("worker-a", ["Order"], limit=1, lease_seconds=2.0, now=1_000.0)
    )
    token = run.flow.lease_token
    assert token is not None
    worker = make_worker()
    await storage.put_worker(worker, replacing=None)
    reopened = storage.reopened()
    assert isinstance(reopened, type(backend.storage)) and reopened is not storage
    with pytest.raises(StorageClosedError):
        await reopened.get_flow("flow-1")  # not connected: the thread that uses it connects it

    async def beat_on_its_own_loop() -> tuple[object, Beat]:
        assert isinstance(reopened, WorkerRegistry)
        async with reopened:
            seen = await reopened.get_flow("flow-1")
            beat = await reopened.beat(
                worker.beating(1_001.0), {"flow-1": token}, lease_seconds=2.0, now=1_001.0
            )
            return seen, beat

    seen, beat = await asyncio.to_thread(asyncio.run, beat_on_its_own_loop())

    assert seen == run.flow
    assert beat == Beat(frozenset({"flow-1"}), registered=True)
    renewed = await storage.get_flow("flow-1")
    assert renewed is not None and renewed.lease_expires_at == 1_003.0
    assert await storage.get_worker("worker-a") == worker.beating(1_001.0)


async def test_a_reopened_log_has_the_same_settings(backend: SqlBackend) -> None:
    storage = backend.storage
    reopened = storage.reopened()
    if isinstance(storage, SqliteExecutionLog):
        assert isinstance(reopened, SqliteExecutionLog)
        assert reopened.path == storage.path
        assert reopened._busy_timeout == 3.5
    else:
        assert isinstance(reopened, PostgresExecutionLog)
        assert (reopened.dsn, reopened.schema) == (storage.dsn, storage.schema)
        assert reopened.connect_timeout == 4.5


async def test_a_reopened_postgres_log_holds_one_connection(postgres_dsn: str) -> None:
    import asyncpg

    schema = f"pyergon_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        async with PostgresExecutionLog(postgres_dsn, schema=schema, min_size=3) as storage:
            before = await connections_of(admin, f"pyergon-{schema}")
            async with storage.reopened() as reopened:
                assert await connections_of(admin, f"pyergon-{schema}") == before + 1
                assert await reopened.list_flows() == []
                # Waiting for work opens the listening connection it had no need of before.
                assert not await reopened.wait_for_work(timeout=0.01)
                assert await connections_of(admin, f"pyergon-{schema}") == before + 2
    finally:
        await admin.close()
        await drop_schema(schema)


async def test_an_in_memory_sqlite_log_cannot_be_reopened() -> None:
    storage = await SqliteExecutionLog.in_memory()
    try:
        with pytest.raises(StorageError, match="in-memory SQLite database cannot be opened"):
            storage.reopened()
    finally:
        await storage.close()


async def test_a_current_sqlite_file_opens_while_another_connection_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flows.db"
    async with SqliteExecutionLog(path) as storage:
        await storage.create_flow(make_flow("flow-1"))
    with closing(sqlite3.connect(path, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")  # holds the write lock, as a long batch would

        async with SqliteExecutionLog(path, busy_timeout=0.05) as opened:
            assert await opened.get_flow("flow-1") == make_flow("flow-1")

        writer.execute("ROLLBACK")


# -- damaged rows ----------------------------------------------------------------------------

WORKER_DAMAGE: dict[Opener, list[tuple[str, str]]] = {
    open_sqlite: [
        ("flow_types", "'not json'"),
        ("flow_types", "'[\"Order\", 7]'"),
        ("flow_types", "'{\"Order\": 1}'"),
        ("pid", "'many'"),
        ("last_beat", "'soon'"),
        ("host", "CAST(X'FFFE' AS TEXT)"),
        ("activity", "'not json'"),
        ("activity", "'[{\"flow_id\": 7}]'"),
        ("activity", "X'5B5D'"),  # bytes, not text
    ],
    open_postgres: [
        ("activity", '\'{"flow_id": "f"}\''),
        (
            "activity",
            '\'[{"flow_id": "f", "position": "1", "step": "s", '
            '"started_at": 1, "progress": {"done": "x"}}]\'',
        ),
        ("flow_types", "'not json'"),
        ("flow_types", "'\"Order\"'"),
        ("last_beat", "'NaN'"),
        ("stopped_at", "'Infinity'"),
    ],
}


@pytest.mark.parametrize(
    ("opener", "column", "expression"),
    [
        pytest.param(opener, column, expression, id=f"{opener.__name__[5:]}-{column}-{expression}")
        for opener, damage in WORKER_DAMAGE.items()
        for column, expression in damage
    ],
)
async def test_reading_a_damaged_worker_record_names_the_worker_and_column(
    open_backend: SqlBackend, opener: Opener, column: str, expression: str
) -> None:
    storage = open_backend.storage
    await storage.put_worker(make_worker("worker-a"), replacing=None)
    await storage.put_worker(make_worker("worker-b"), replacing=None)
    await open_backend.set_worker_column("worker-b", column, expression)

    for read in (storage.get_worker("worker-b"), storage.list_workers()):
        with pytest.raises(CorruptStorageError) as raised:
            await read
        assert "'worker-b'" in str(raised.value) and repr(column) in str(raised.value)
    assert await storage.get_worker("worker-a") == make_worker("worker-a")
    assert await storage.delete_worker("worker-b")  # what the message says to do
    assert await storage.list_workers() == [make_worker("worker-a")]
