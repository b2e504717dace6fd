"""A large made-up history, and loading it fast through each backend's own tables and scripts.

``make_history`` builds flows of four types in a mix of statuses (mostly complete), created 10 ms
apart and ending now, and three completed step records on each of the oldest flows. ``load``
writes them the fast way, but into the schema pyergon created, so its indexes are the ones
queried: SQLite ``executemany`` of the backend's own insert statements, a PostgreSQL ``COPY``
into its tables followed by ``ANALYZE`` (what autovacuum does to a table this size), and on
Redis the backend's own ``create_flow`` script, pipelined, then the records in large changes.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.backends import POSTGRES_URL, REDIS_URL, FreshStorage
from pyergon.core.changes import Change
from pyergon.core.records import Invocation, ScheduledFlow, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus

__all__ = ["FLOW_TYPES", "History", "load", "make_history"]

FLOW_TYPES = ("orders.Checkout", "billing.Invoice", "shipping.Label", "reports.Daily")
STATUS_MIX = (
    (TaskStatus.COMPLETE, 85),
    (TaskStatus.FAILED, 8),
    (TaskStatus.SUSPENDED, 4),
    (TaskStatus.CANCELLED, 2),
    (TaskStatus.PENDING, 1),
)
SPACING = 0.01
"""Seconds between two flows' ``created_at``."""
STEPS = ("first", "second", "third")
CHUNK = 2_000


@dataclass(frozen=True, slots=True)
class History:
    """Flows oldest first, and step records of some of them."""

    flows: list[ScheduledFlow]
    invocations: list[Invocation]


def make_history(n_flows: int, n_records: int, *, seed: int = 7) -> History:
    """``n_flows`` flows and ``n_records`` step records (three per flow, oldest flows first)."""
    random_ = random.Random(seed)
    statuses = random_.choices(
        [status for status, _ in STATUS_MIX], [weight for _, weight in STATUS_MIX], k=n_flows
    )
    start = time.time() - n_flows * SPACING
    flows = [
        _flow(number, start + number * SPACING, status, random_)
        for number, status in enumerate(statuses)
    ]
    invocations = [
        _step(flows[number // len(STEPS)], number % len(STEPS)) for number in range(n_records)
    ]
    return History(flows, invocations)


def _flow(number: int, created: float, status: TaskStatus, random_: random.Random) -> ScheduledFlow:
    finished = created + 0.05
    return ScheduledFlow(
        flow_id=f"hist-{number:07d}",
        flow_type=random_.choice(FLOW_TYPES),
        payload=b'{"number": %d}' % number,
        status=status,
        created_at=created,
        updated_at=finished,
        result=b"1" if status is TaskStatus.COMPLETE else None,
        error=StoredError("builtins.ValueError", "bad input", "Traceback ...")
        if status is TaskStatus.FAILED
        else None,
        wake_at=created + 86_400 if status is TaskStatus.SUSPENDED else None,
        worker_id=f"worker-{number % 4}",
    )


def _step(flow: ScheduledFlow, index: int) -> Invocation:
    started = flow.created_at + index * 0.01
    return Invocation(
        flow_id=flow.flow_id,
        sequence=index + 1,
        kind=OperationKind.STEP,
        name=STEPS[index],
        status=InvocationStatus.COMPLETE,
        args_hash="0" * 16,
        result=b"%d" % index,
        attempts=1,
        started_at=started,
        completed_at=started + 0.005,
    )


async def load(fresh: FreshStorage, history: History) -> None:
    """Write ``history`` into the (empty) storage ``fresh``."""
    if fresh.backend == "sqlite":
        await asyncio.to_thread(_load_sqlite, fresh.location, history)
    elif fresh.backend == "postgres":
        await _load_postgres(fresh.location, history)
    elif fresh.backend == "redis":
        await _load_redis(fresh, history)
    else:
        raise ValueError(f"no bulk load for backend {fresh.backend!r}")


def _load_sqlite(path: str, history: History) -> None:
    from pyergon.storage._sql.rows import column_values
    from pyergon.storage._sqlite_changes import SQL

    connection = sqlite3.connect(path, timeout=30)
    try:
        with connection:  # one transaction
            connection.executemany(SQL.insert_flow, map(column_values, history.flows))
            connection.executemany(SQL.record_invocation, map(column_values, history.invocations))
    finally:
        connection.close()


def _rows(
    records: Sequence[ScheduledFlow | Invocation],
) -> tuple[list[str], list[tuple[object, ...]]]:
    """The column names of ``records`` and their values, one tuple per record."""
    from pyergon.storage._sql.rows import FLOW_COLUMNS, INVOCATION_COLUMNS, column_values

    if not records:
        return [], []
    columns = FLOW_COLUMNS if isinstance(records[0], ScheduledFlow) else INVOCATION_COLUMNS
    return list(columns), [tuple(column_values(record)) for record in records]


async def _load_postgres(schema: str, history: History) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        for table, records in (("flows", history.flows), ("invocations", history.invocations)):
            columns, rows = _rows(records)
            await connection.copy_records_to_table(
                table, schema_name=schema, columns=columns, records=rows
            )
        await connection.execute(f'ANALYZE "{schema}".flows, "{schema}".invocations')
    finally:
        await connection.close()


async def _load_redis(fresh: FreshStorage, history: History) -> None:
    from redis.asyncio import Redis

    from pyergon.storage._redis_layout import SCRIPTS, flow_fields

    client = Redis.from_url(REDIS_URL)
    try:
        create = await client.script_load(SCRIPTS["create_flow"])
        # The arguments every script takes first: prefix, origin of wake-ups.
        common = (fresh.location, "bench-bulk-load")
        for start in range(0, len(history.flows), CHUNK):
            pipeline = client.pipeline(transaction=False)
            for flow in history.flows[start : start + CHUNK]:
                # "0": a flow loaded in bulk wakes no worker.
                pipeline.evalsha(create, 0, *common, flow.flow_id, "0", *flow_fields(flow))
            await pipeline.execute()
    finally:
        await client.aclose()
    for start in range(0, len(history.invocations), CHUNK):
        chunk = history.invocations[start : start + CHUNK]
        await fresh.storage.apply(Change(records=tuple(chunk)))  # one script per chunk
