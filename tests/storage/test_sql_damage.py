"""A damaged row never stops the SQLite or PostgreSQL queue, and reads name what is damaged.

As on Redis (``test_redis_damage.py``): a claim never raises once it has taken flows. A flow with
a column that cannot be read is handed back with what is wrong with it (a worker fails it alone,
naming it and the column); one that cannot even be placed in the queue (SQLite keeps text in a
REAL column) is left as it is and logged once. Reads of a damaged row raise
:class:`CorruptStorageError` naming the flow and the column, never a bare ``ValueError``.

Each test damages rows behind the backend's back, as someone with access to the store could.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyergon import Scheduler, Worker
from pyergon.core.query import ClaimRequest, FlowQuery
from pyergon.core.status import TaskStatus
from pyergon.errors import CorruptStorageError
from pyergon.storage._postgres_sql import quote_identifier
from pyergon.storage.base import ExecutionLog
from pyergon.storage.postgres import PostgresExecutionLog
from pyergon.storage.sqlite import SqliteExecutionLog
from tests.conftest import POSTGRES_DSN, drop_schema, require_postgres

from .test_redis_damage import BATCH, Sturdy

SetColumn = Callable[[str, str, str, str], Awaitable[None]]
"""``(table, flow_id, column, SQL expression)``: set a column of a flow's rows behind pyergon."""


@dataclass
class Damageable:
    name: str
    storage: ExecutionLog
    set_column: SetColumn


async def open_sqlite(tmp_path: Path) -> AsyncIterator[Damageable]:
    path = tmp_path / "flows.db"

    async def set_column(table: str, flow_id: str, column: str, expression: str) -> None:
        with sqlite3.connect(path) as connection:  # another process, as far as pyergon knows
            connection.execute(
                f"UPDATE {table} SET {column} = {expression} WHERE flow_id = ?", (flow_id,)
            )
        connection.close()

    async with SqliteExecutionLog(path) as storage:
        yield Damageable("sqlite", storage, set_column)


async def open_postgres(_tmp_path: Path) -> AsyncIterator[Damageable]:
    import asyncpg

    await require_postgres()
    schema = f"pyergon_test_{uuid.uuid4().hex[:12]}"

    async def set_column(table: str, flow_id: str, column: str, expression: str) -> None:
        connection = await asyncpg.connect(POSTGRES_DSN)
        try:
            await connection.execute(
                f"UPDATE {quote_identifier(schema)}.{table} SET {column} = {expression} "
                "WHERE flow_id = $1",
                flow_id,
            )
        finally:
            await connection.close()

    try:
        async with PostgresExecutionLog(POSTGRES_DSN, schema=schema) as storage:
            yield Damageable("postgres", storage, set_column)
    finally:
        await drop_schema(schema)


Opener = Callable[[Path], AsyncIterator[Damageable]]


@pytest.fixture(params=[open_sqlite, open_postgres], ids=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Damageable]:
    async for opened in request.param(tmp_path):
        yield opened


@pytest.fixture
async def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Damageable]:
    """The backend a test's ``opener`` parameter names."""
    async for opened in request.node.callspec.params["opener"](tmp_path):
        yield opened


def _request() -> ClaimRequest:
    return ClaimRequest("w-1", ["Sturdy"], limit=BATCH, lease_seconds=60, now=1e10)


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


async def _scheduled(storage: ExecutionLog) -> list[str]:
    scheduler = Scheduler(storage)
    return [await scheduler.schedule(Sturdy(n), flow_id=f"sturdy-{n}") for n in range(BATCH)]


async def _run_all(storage: ExecutionLog) -> Worker:
    worker = Worker(storage, "w-sturdy", max_concurrent_flows=BATCH)
    await worker.register(Sturdy)
    async with asyncio.timeout(30):
        await worker.run_until_idle()
    return worker


# Damage each engine can hold: SQLite keeps any value in any column (and text that is not
# UTF-8), PostgreSQL's columns are typed but a double precision holds NaN and infinities.
FLOW_DAMAGE = {
    # (A claim sets the lease's columns and updated_at again: damage there is repaired.)
    open_sqlite: [
        ("attempt", "'three'"),
        ("attempt", "2.5"),
        ("parent_sequence", "CAST(X'FFFE' AS TEXT)"),
        ("payload", "'text, not bytes'"),
        ("cancel_requested", "7"),
    ],
    open_postgres: [
        ("created_at", "'NaN'"),
        ("created_at", "'-Infinity'"),
        ("wake_at", "'NaN'"),
    ],
}
RECORD_DAMAGE = {
    open_sqlite: [
        ("kind", "'NO-SUCH-KIND'"),
        ("attempts", "'many'"),
        ("name", "CAST(X'FFFE' AS TEXT)"),
        ("output", "X'6F6B'"),  # bytes, not text
        ("progress", "'not json'"),
        ("progress", "'{\"total\": 3}'"),
        ("earlier_attempts", "'not json'"),
        ("earlier_attempts", "X'5B5D'"),  # bytes, not text
    ],
    open_postgres: [
        ("kind", "'NO-SUCH-KIND'"),
        ("started_at", "'NaN'"),
        ("progress", "'[1, 2]'"),
        ("progress", '\'{"done": "many"}\''),
        ("progress", '\'{"done": 1, "total": -1}\''),
        ("earlier_attempts", '\'[{"number": 1, "end": "vanished"}]\''),
    ],
}


def _cases(damage: dict[Opener, list[tuple[str, str]]]) -> list[Any]:
    """Test parameters ``(opener, column, expression)`` for each engine's damage."""
    return [
        pytest.param(opener, column, expression, id=f"{opener.__name__[5:]}-{column}-{expression}")
        for opener, columns in damage.items()
        for column, expression in columns
    ]


@pytest.mark.parametrize(("opener", "column", "expression"), _cases(FLOW_DAMAGE))
async def test_a_damaged_flow_is_claimed_with_its_damage_and_reads_name_flow_and_column(
    open_backend: Damageable, opener: Opener, column: str, expression: str
) -> None:
    backend = open_backend
    storage = backend.storage
    flow_ids = await _scheduled(storage)
    damaged = flow_ids[3]
    await backend.set_column("flows", damaged, column, expression)

    for read in (storage.get_flow(damaged), storage.list_flows(FlowQuery())):
        with pytest.raises(CorruptStorageError) as raised:
            await read
        assert repr(damaged) in str(raised.value) and repr(column) in str(raised.value)
    assert await storage.get_flow(flow_ids[0]) is not None  # the others read as before

    runs = await storage.claim(_request())

    by_id = {run.flow.flow_id: run for run in runs}
    assert sorted(by_id) == sorted(flow_ids)  # one claim took them all
    assert [flow_id for flow_id, run in by_id.items() if run.damage is not None] == [damaged]
    damage = by_id[damaged].damage
    assert isinstance(damage, CorruptStorageError)
    assert repr(damaged) in str(damage) and repr(column) in str(damage)
    held = by_id[damaged].flow
    assert held.lease_token is not None and held.status is TaskStatus.RUNNING  # held, to fail
    assert all(run.log == [] for run in runs if run.damage is None)


async def test_a_worker_fails_the_damaged_flow_and_runs_the_others(
    backend: Damageable, caplog: pytest.LogCaptureFixture
) -> None:
    storage = backend.storage
    flow_ids = await _scheduled(storage)
    damaged = flow_ids[0]
    # Columns the failing write sets again, so the failed flow reads back.
    column, expression = (
        ("attempt", "'three'") if backend.name == "sqlite" else ("wake_at", "'NaN'")
    )
    await backend.set_column("flows", damaged, column, expression)

    worker = await _run_all(storage)

    outcomes = await Scheduler(storage).wait(flow_ids[1:], timeout=10)
    assert [outcomes[flow_id].result for flow_id in flow_ids[1:]] == [
        2 * n for n in range(1, BATCH)
    ]
    failed = await storage.get_flow(damaged)
    assert failed is not None and failed.status is TaskStatus.FAILED
    assert failed.error is not None and failed.error.short_type == "CorruptStorageError"
    assert repr(damaged) in failed.error.message and repr(column) in failed.error.message
    assert worker.flows_finished == BATCH
    assert len(_logged(caplog, repr(damaged))) == 1


@pytest.mark.parametrize(
    ("column", "expression", "reported"),
    [
        ("created_at", "'yesterday'", ["'sturdy-0'", "'created_at'", "yesterday"]),
        ("flow_id", "CAST(X'FFFE' AS TEXT)", ["is not UTF-8 text"]),
    ],
)
async def test_a_sqlite_flow_with_no_place_in_the_queue_is_left_out_and_logged_once(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    column: str,
    expression: str,
    reported: list[str],
) -> None:
    async for backend in open_sqlite(tmp_path):
        flow_ids = await _scheduled(backend.storage)
        await backend.set_column("flows", flow_ids[0], column, expression)

        worker = await _run_all(backend.storage)

        assert worker.flows_finished == BATCH - 1
        assert await backend.storage.claim(_request()) == []
        logged = _logged(caplog, reported[0])
        assert len(logged) == 1 and all(text in logged[0] for text in reported)


async def test_a_suspended_flow_whose_wake_time_is_not_a_number_stops_no_worker(
    backend: Damageable,
) -> None:
    storage = backend.storage
    flow_ids = await _scheduled(storage)
    damaged = flow_ids[0]
    await backend.set_column("flows", damaged, "status", "'SUSPENDED'")
    await backend.set_column(
        "flows", damaged, "wake_at", "'yesterday'" if backend.name == "sqlite" else "'NaN'"
    )

    worker = await _run_all(storage)  # waits for no timer that is not a time

    assert worker.flows_finished == BATCH - 1
    assert await storage.next_wake_at() is None
    with pytest.raises(CorruptStorageError, match="'wake_at'"):
        await storage.get_flow(damaged)


@pytest.mark.parametrize(("opener", "column", "expression"), _cases(RECORD_DAMAGE))
async def test_reading_a_damaged_record_raises_an_error_naming_the_flow_and_column(
    tmp_path: Path, opener: Opener, column: str, expression: str
) -> None:
    async for backend in opener(tmp_path):
        (flow_id, *_) = await _scheduled(backend.storage)
        await _run_all(backend.storage)
        await backend.set_column("invocations", flow_id, column, expression)

        with pytest.raises(CorruptStorageError) as raised:
            await backend.storage.load_invocations(flow_id)

        assert repr(flow_id) in str(raised.value) and repr(column) in str(raised.value)


async def test_counting_flows_with_a_status_pyergon_does_not_know_names_it(
    backend: Damageable,
) -> None:
    storage = backend.storage
    flow_ids = await _scheduled(storage)
    await backend.set_column("flows", flow_ids[0], "status", "'HALTED'")

    with pytest.raises(CorruptStorageError, match="'HALTED'"):
        await storage.count_flows()
    with pytest.raises(CorruptStorageError, match="'status'"):
        await storage.get_flow(flow_ids[0])
    runs = await storage.claim(_request())  # never runnable; the others are
    assert sorted(run.flow.flow_id for run in runs) == sorted(flow_ids[1:])
