"""The SQLite backend's operations on a connection: the shared statements, and its own claim.

Each function is synchronous and runs on one of the backend's connections; the writes run
inside the write transaction of a group commit (:mod:`pyergon.storage.sqlite`), next to the
other writes of their batch. None of them raises for an outcome the contract describes (a guard
that does not hold, a record conflict), so such an outcome refuses its own change only and the
rest of the batch commits.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pyergon.core.changes import Applied, Change
from pyergon.core.records import Invocation, ScheduledFlow
from pyergon.core.status import TaskStatus
from pyergon.core.transitions import new_lease_token
from pyergon.core.workers import Beat, WorkerRecord
from pyergon.errors import CorruptStorageError
from pyergon.storage._sql import steps
from pyergon.storage._sql.dialect import SQLITE
from pyergon.storage._sql.rows import (
    column_values,
    flow_from_row,
    invocation_from_row,
    readable_flow,
    wake_time,
)
from pyergon.storage._sql.statements import Statements
from pyergon.storage._sql.workers import WorkerStatements, beat_arguments, worker_from_row
from pyergon.storage.base import ClaimedRun, damaged_run

__all__ = [
    "SQL",
    "WORKERS",
    "apply_change",
    "beat_worker",
    "claim_runs",
    "fetch_flow",
    "insert_flow",
    "load_log",
    "next_wake_time",
    "renew_leases",
    "select_rows",
    "select_workers",
]

SQL = Statements(SQLITE)
"""The SQL layer's statements, as SQLite spells them."""
WORKERS = WorkerStatements(SQLITE)
"""The statements keeping worker records, as SQLite spells them."""


def _text_or_bytes(raw: bytes) -> str | bytes:
    """A text value as ``str``, or as stored if it is not UTF-8 (the row reader names it)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def select_rows(
    connection: sqlite3.Connection, statement: str, parameters: Sequence[Any] | Mapping[str, Any]
) -> list[Any]:
    """The rows of a ``SELECT``; text that is not UTF-8 comes back as bytes, not as an error.

    sqlite3 fails the whole statement on such text without naming the row, so the statement
    runs again, on that rare failure only, with a text factory that keeps the stored bytes and
    leaves it to :mod:`pyergon.storage._sql.rows` to name the flow and column.
    """
    try:
        return connection.execute(statement, parameters).fetchall()
    except sqlite3.OperationalError as error:
        if not str(error).startswith("Could not decode to UTF-8"):
            raise
    connection.text_factory = _text_or_bytes
    try:
        return connection.execute(statement, parameters).fetchall()
    finally:
        connection.text_factory = str


def fetch_flow(connection: sqlite3.Connection, flow_id: str) -> ScheduledFlow | None:
    """Return the stored flow with ``flow_id``, or ``None``.

    Raises:
        CorruptStorageError: A column of the flow cannot be read.
    """
    rows = select_rows(connection, SQL.get_flow, (flow_id,))
    return flow_from_row(rows[0]) if rows else None


def load_log(connection: sqlite3.Connection, *, flow_id: str) -> list[Invocation]:
    """A flow's records ordered by ``(sequence, sub_sequence)``.

    Raises:
        CorruptStorageError: A column of a record cannot be read.
    """
    rows = select_rows(connection, SQL.load_invocations, (flow_id,))
    return [invocation_from_row(row) for row in rows]


def insert_flow(connection: sqlite3.Connection, flow: ScheduledFlow) -> tuple[ScheduledFlow, bool]:
    """Store ``flow`` unless one with its id exists; return the stored one and whether it is new."""
    if connection.execute(SQL.insert_flow, column_values(flow)).rowcount == 1:
        return flow, True
    existing = fetch_flow(connection, flow.flow_id)
    assert existing is not None  # the insert conflicted with it in this transaction
    return existing, False


def apply_change(connection: sqlite3.Connection, change: Change) -> Applied:
    """Apply ``change`` (see :func:`pyergon.storage._sql.steps.apply_change`)."""
    return steps.run_sqlite(connection, steps.apply_change(SQL, change))


_RUNNABLE = (
    # (the index, which flows, their ready time, the order the index gives them in)
    ("flows_by_status", "status = 'PENDING'", "0.0", "created_at, flow_id"),
    (
        "flows_by_status",
        "status = 'RUNNING' AND lease_expires_at < :now",
        "0.0",
        "created_at, flow_id",
    ),
    (
        "flows_wake_due",
        "status = 'SUSPENDED' AND wake_at <= :due_by",
        "wake_at",
        "wake_at, created_at, flow_id",
    ),
)
"""What :func:`~pyergon.core.transitions.is_runnable` says, as one index range per kind of
runnable flow: waiting ones, ones whose worker died, and ones whose wake time has come. The
ready time and order are :func:`~pyergon.core.transitions.queue_order`'s."""


def claim_runs(
    connection: sqlite3.Connection,
    flow_types: list[str],
    changes: Mapping[str, object],
    *,
    limit: int,
    now: float,
    due_by: float,
    left_out: Callable[[str, str], None],
) -> list[ClaimedRun]:
    """Claim up to ``limit`` runnable flows of ``flow_types`` in queue order, with their logs.

    Each flow gets ``changes`` (a claim's fields) and a lease token of its own; a flow taken over
    counts the lease its worker lost (see :meth:`Statements.claim_flow`). Runs inside the
    caller's write transaction, so two workers never take the same flow, and no record can be
    added between the claim and the reading of the flow's log.

    Args:
        connection: The connection, in a write transaction.
        flow_types: Only flows of these types.
        changes: The fields the claim sets, but the lease token.
        limit: Flows to claim at most.
        now: The worker's clock: leases that expired before it are taken over.
        due_by: Suspended flows are claimed if their wake time is at or before it.
        left_out: Called with the id and the reason of a runnable flow that cannot be placed in
            the queue (its creation or wake time is not a number, its id not text): the claim
            leaves it as it is and takes the others.

    Returns:
        The runs; a flow with a column that cannot be read is claimed and comes with its
        ``damage``, for its claimer to fail.
    """
    if not flow_types:
        return []  # and an empty IN () cannot use the indexes named below
    types = {f"type_{index}": flow_type for index, flow_type in enumerate(flow_types)}
    parameters = {**types, "now": now, "due_by": due_by, "limit": limit}
    of_types = ", ".join(f":{name}" for name in types)
    ready = []
    for index, condition, ready_at, order in _RUNNABLE:
        statement = (
            f"SELECT {ready_at}, created_at, flow_id FROM flows INDEXED BY {index} "
            f"WHERE {condition} AND flow_type IN ({of_types}) ORDER BY {order} LIMIT :limit"
        )
        for row in select_rows(connection, statement, parameters):
            position = tuple(row)
            unplaced = _unplaced(position)
            if unplaced is None:
                ready.append(position)
            else:
                left_out(repr(position[2]), unplaced)
    ready.sort()
    claimed = []
    for _ready_at, _created_at, flow_id in ready[:limit]:
        lease = {**changes, "lease_token": new_lease_token()}
        connection.execute(*SQL.claim_flow(flow_id, lease))
        # Read back rather than RETURNING, which gives whole REAL values as integers.
        (row,) = select_rows(connection, SQL.get_flow, (flow_id,))
        values, damage = readable_flow(row)
        if damage is not None:
            claimed.append(damaged_run(values | {"flow_id": flow_id}, damage))
            continue
        try:
            log: list[Invocation] | None = load_log(connection, flow_id=flow_id)
        except CorruptStorageError:  # the run reads the log itself, and says what is wrong
            log = None
        claimed.append(ClaimedRun(ScheduledFlow(**values), log))
    return claimed


def _unplaced(position: tuple[Any, ...]) -> str | None:
    """Why a runnable flow's ``(ready time, creation time, id)`` has no place in the queue."""
    for name, value in zip(("wake_at", "created_at"), position, strict=False):
        if type(value) not in (float, int) or not math.isfinite(value):
            return f"its column {name!r} holds {value!r:.80}, which is not a finite number"
    if type(position[2]) is not str:
        return "its id is not UTF-8 text"
    return None


def renew_leases(
    connection: sqlite3.Connection, leases: Mapping[str, str], *, expires_at: float
) -> set[str]:
    """Set ``lease_expires_at`` of the running flows still held with their token.

    The version does not move: a renewal changes nothing anyone decides on.
    """
    held = set()
    for flow_id, lease_token in leases.items():
        cursor = connection.execute(
            "UPDATE flows SET lease_expires_at = ? "
            "WHERE flow_id = ? AND status = ? AND lease_token = ?",
            (expires_at, flow_id, TaskStatus.RUNNING.value, lease_token),
        )
        if cursor.rowcount == 1:
            held.add(flow_id)
    return held


def next_wake_time(
    connection: sqlite3.Connection, flow_types: list[str] | None = None
) -> float | None:
    """The earliest wake time of a suspended flow (of ``flow_types``), from its partial index."""
    if flow_types is not None and not flow_types:
        return None
    of_types = (
        "" if flow_types is None else f" AND flow_type IN ({', '.join('?' * len(flow_types))})"
    )
    row = connection.execute(
        "SELECT wake_at FROM flows INDEXED BY flows_wake_due "
        f"WHERE status = 'SUSPENDED' AND wake_at IS NOT NULL{of_types} ORDER BY wake_at LIMIT 1",
        flow_types or (),
    ).fetchone()
    return None if row is None else wake_time(row[0])


def beat_worker(
    connection: sqlite3.Connection,
    worker: WorkerRecord,
    leases: Mapping[str, str],
    *,
    expires_at: float,
) -> Beat:
    """Renew the leases still held and, if still its incarnation's, the worker's record."""
    held = renew_leases(connection, leases, expires_at=expires_at)
    registered = connection.execute(WORKERS.beat, beat_arguments(worker)).rowcount == 1
    return Beat(frozenset(held), registered)


def select_workers(
    connection: sqlite3.Connection, statement: str, parameters: Sequence[Any]
) -> list[WorkerRecord]:
    """The worker records a ``SELECT`` of ``workers`` rows finds.

    Raises:
        CorruptStorageError: A column of a record cannot be read.
    """
    return [worker_from_row(row) for row in select_rows(connection, statement, parameters)]
