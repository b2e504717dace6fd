"""The SQLite backend's writes of the contract: apply a change, claim flows, renew leases.

Each function is synchronous and runs inside the write transaction of a group commit
(:mod:`pyergon.storage.sqlite`), next to the other writes of its batch. None of them raises for
an outcome the contract describes (a guard that does not hold, a record conflict), so such an
outcome refuses its own change only and the rest of the batch commits.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping

from pyergon.core.changes import ABSENT, Applied, Change, FlowWrite, stored_as_given
from pyergon.core.records import Invocation, ScheduledFlow
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.transitions import claim_changes, new_lease_token
from pyergon.storage.base import ClaimedRun
from pyergon.storage.sql_columns import flow_columns, record_values
from pyergon.storage.sqlite_tables import (
    INSERT_FLOW,
    RECORD_INVOCATION,
    fetch_flow,
    fetch_invocation,
    load_log,
    placeholders,
)

__all__ = ["apply_change", "claim_runs", "insert_flow", "renew_leases"]


def insert_flow(connection: sqlite3.Connection, flow: ScheduledFlow) -> tuple[ScheduledFlow, bool]:
    """Store ``flow`` unless one with its id exists; return the stored one and whether it is new."""
    if connection.execute(INSERT_FLOW, record_values(flow)).rowcount == 1:
        return flow, True
    existing = fetch_flow(connection, flow.flow_id)
    assert existing is not None  # the insert conflicted with it in this transaction
    return existing, False


def apply_change(connection: sqlite3.Connection, change: Change) -> Applied:
    """Apply ``change`` in the order :class:`~pyergon.core.changes.Change` gives.

    Every guard is checked before anything is written, so a guard that does not hold leaves
    the transaction (and the other writes of its batch) untouched.
    """
    for write in change.writes:
        if write.expected_version is not None:
            row = connection.execute(
                "SELECT version FROM flows WHERE flow_id = ?", (write.flow_id,)
            ).fetchone()
            if (ABSENT if row is None else row[0]) != write.expected_version:
                return Applied(moved=write.flow_id)
    for flow_id in change.forget_failed:
        connection.execute(
            "DELETE FROM invocations WHERE flow_id = ? AND status = ?",
            (flow_id, InvocationStatus.FAILED.value),
        )
    stored_records: list[Invocation] = []
    for record in change.records:
        stored = _record(connection, record)
        stored_records.append(stored)
        if not stored_as_given(record, stored):
            return Applied(stored_records, record_conflict=True)
    new_signals = 0
    for signal in change.signals:
        # ON CONFLICT DO NOTHING ignores only the duplicate, unlike INSERT OR IGNORE, which
        # would also hide NOT NULL violations.
        new_signals += connection.execute(
            "INSERT INTO signals (flow_id, name, payload, sent_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (flow_id, name) DO NOTHING",
            (signal.flow_id, signal.name, signal.payload, signal.sent_at),
        ).rowcount
    for write in change.writes:
        _write_flow(connection, write)
    return Applied(stored_records, signals_stored=new_signals)


def _record(connection: sqlite3.Connection, invocation: Invocation) -> Invocation:
    """Store a record unless a final one holds its position; return the record as stored."""
    if connection.execute(RECORD_INVOCATION, record_values(invocation)).rowcount == 1:
        return invocation  # inserted, or replaced a record that was not final
    stored = fetch_invocation(
        connection, invocation.flow_id, invocation.sequence, invocation.sub_sequence
    )
    assert stored is not None  # kept by the upsert: a final record holds the position
    return stored


def _write_flow(connection: sqlite3.Connection, write: FlowWrite) -> None:
    """Apply one write; the version moves on even where ``only_if_status`` keeps the fields."""
    columns = flow_columns(write.changes)
    parameters: dict[str, object] = {**columns, "flow_id": write.flow_id}
    condition = ""
    if write.only_if_status is not None:
        statuses = {f"status_{n}": status.value for n, status in enumerate(write.only_if_status)}
        condition = f" AND status IN ({placeholders(list(statuses))})"
        parameters.update(statuses)
    assignments = "".join(f"{column} = :{column}, " for column in columns)
    updated = connection.execute(
        f"UPDATE flows SET {assignments}version = version + 1 WHERE flow_id = :flow_id{condition}",
        parameters,
    ).rowcount
    if not updated and condition:
        connection.execute(
            "UPDATE flows SET version = version + 1 WHERE flow_id = ?", (write.flow_id,)
        )


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
    *,
    worker_id: str,
    flow_types: list[str],
    limit: int,
    lease_seconds: float,
    now: float,
    due_by: float | None = None,
) -> list[ClaimedRun]:
    """Lease up to ``limit`` runnable flows of ``flow_types`` to ``worker_id``, in queue order.

    Runs inside the caller's write transaction, so two workers never take the same flow, and
    no record can be added between the claim and the reading of the flow's log.
    """
    if not flow_types:
        return []  # and an empty IN () cannot use the indexes named below
    types = {f"type_{index}": flow_type for index, flow_type in enumerate(flow_types)}
    due = now if due_by is None else max(due_by, now)
    parameters = {**types, "now": now, "due_by": due, "limit": limit}
    ready = sorted(
        tuple(row)
        for index, condition, ready_at, order in _RUNNABLE
        for row in connection.execute(
            f"SELECT {ready_at}, created_at, flow_id FROM flows INDEXED BY {index} "
            f"WHERE {condition} AND flow_type IN ({placeholders(list(types))}) "
            f"ORDER BY {order} LIMIT :limit",
            parameters,
        )
    )[:limit]
    claimed = []
    at = time.time()
    for _ready_at, _created_at, flow_id in ready:
        changes = claim_changes(
            worker_id, lease_token=new_lease_token(), lease_seconds=lease_seconds, now=now, at=at
        )
        columns = flow_columns(changes)
        assignments = "".join(f"{column} = :{column}, " for column in columns)
        connection.execute(
            f"UPDATE flows SET {assignments}version = version + 1 WHERE flow_id = :flow_id",
            {**columns, "flow_id": flow_id},
        )
        # Read back rather than RETURNING, which gives whole REAL values as integers.
        flow = fetch_flow(connection, flow_id)
        assert flow is not None  # found in this transaction
        claimed.append(ClaimedRun(flow, load_log(connection, flow_id=flow_id)))
    return claimed


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
