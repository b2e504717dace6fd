"""The statements of a change, in their order, written once for both SQL backends.

A procedure here is a generator: it yields each statement as a :class:`Query` and is sent back
the answer it asked for. So what a change runs, and what each answer means, is written once,
while SQLite runs the statements synchronously inside its group commit (:func:`run_sqlite`) and
PostgreSQL awaits them on an asyncpg connection (:func:`run_asyncpg`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Generator, Sequence
from enum import Enum
from typing import Any, TypeVar, cast

from pyergon.core.changes import ABSENT, Applied, Change, FlowWrite, stored_as_given
from pyergon.core.records import Invocation
from pyergon.core.status import TaskStatus
from pyergon.storage._sql.rows import column_values, invocation_from_row
from pyergon.storage._sql.statements import Statements

__all__ = [
    "Answer",
    "Query",
    "Steps",
    "apply_change",
    "delete_flow",
    "reset",
    "run_asyncpg",
    "run_sqlite",
]

_T = TypeVar("_T")


class Answer(Enum):
    """What a :class:`Query` is answered with."""

    NOTHING = "nothing"
    ROW = "row"
    """The first row, or ``None``."""
    ROWS = "rows"
    """Every row."""
    CHANGED = "changed"
    """Whether the statement changed a row (a write ending in ``returning_change``)."""


Query = tuple[Answer, str, Sequence[object]]
"""One statement of a procedure: what the procedure wants back, the statement, its arguments.

A plain tuple: a change yields three or four, on the hot path of every flow, and a named tuple
or dataclass cost about 0.3 us more each (measured on SQLite, where a change takes 15-20 us).
"""


Steps = Generator[Query, Any, _T]
"""A procedure yielding queries, sent their answers, returning a ``_T``."""


def apply_change(sql: Statements, change: Change) -> Steps[Applied]:
    """Apply ``change`` in the order :class:`~pyergon.core.changes.Change` gives.

    Every guard is checked before anything is written, so a guard that does not hold writes
    nothing. Run it in one transaction (a change of one record or one signal alone is one
    statement and needs none). A change of records alone sent under a lease (``held``) checks
    its lease in the statement storing its first record, so a run's save costs no statement
    more for it.
    """
    lease: tuple[str, str] | None = None
    deletes = change.forget_failed or change.forget
    if change.held and change.records and not (change.writes or deletes):
        lease = change.held  # checked by the statement storing the first record
    moved = yield from _moved_flow(sql, change.writes, None if lease else change.held)
    if moved is not None:
        return Applied(moved=moved)
    for flow_id in change.forget_failed:
        yield Answer.NOTHING, sql.forget_failed, (flow_id,)
    for forget in change.forget:
        for delete in sql.forget(forget):
            yield Answer.NOTHING, *delete
    stored_records: list[Invocation] = []
    for record in change.records:
        stored = yield from _store_record(sql, record, lease)
        if stored is None:
            assert lease is not None  # only a record stored under a lease can be refused
            return Applied(moved=lease[0])
        lease = None  # it holds until the change commits (see Statements.record_if_held)
        stored_records.append(stored)
        if not stored_as_given(record, stored):
            return Applied(stored_records, record_conflict=True)
    new_signals = 0
    for signal in change.signals:
        arguments = (signal.flow_id, signal.name, signal.payload, signal.sent_at)
        if (yield Answer.CHANGED, sql.insert_signal, arguments):
            new_signals += 1
    for write in change.writes:
        yield Answer.NOTHING, *sql.write_flow(write)  # a flow that does not exist is left so
    return Applied(stored_records, signals_stored=new_signals)


def _moved_flow(
    sql: Statements, writes: Collection[FlowWrite], held: tuple[str, str] | None
) -> Steps[str | None]:
    """Lock the flows ``writes`` write and the ``held`` one; return the first whose guard fails.

    That is a write's flow whose version is not the expected one, or the ``(flow id, lease
    token)`` of ``held`` if that flow is not ``RUNNING`` under that token. They are locked in
    flow id order, so two changes never deadlock. A flow that does not exist has no row to
    lock, so for a write that expects it absent a lock on its id (which a creation takes too,
    on PostgreSQL) keeps it absent until the change commits.
    """
    guarded = [write for write in writes if write.expected_version is not None]
    if not guarded and len(writes) < 2 and held is None:
        return None  # an UPDATE alone locks its row
    absent = sorted({write.flow_id for write in guarded if write.expected_version == ABSENT})
    lock = sql.lock_absent_flows(absent) if absent else None
    if lock is not None:
        yield Answer.NOTHING, *lock
    locked = sorted({write.flow_id for write in writes} | ({held[0]} if held else set()))
    rows = yield Answer.ROWS, sql.flow_versions(len(locked)), sql.dialect.list_arguments(locked)
    versions = {row[0]: row[1] for row in rows}
    for write in guarded:
        if versions.get(write.flow_id, ABSENT) != write.expected_version:
            return write.flow_id
    if held is not None:
        leases = {row[0]: (row[2], row[3]) for row in rows}
        flow_id, lease_token = held
        if leases.get(flow_id) != (TaskStatus.RUNNING.value, lease_token):
            return flow_id
    return None


def _store_record(
    sql: Statements, record: Invocation, held: tuple[str, str] | None = None
) -> Steps[Invocation | None]:
    """Store ``record`` unless a final record holds its position; return what is stored.

    With ``held`` (a flow id and lease token), only while that flow is ``RUNNING`` under that
    token: ``None`` if it is not, and nothing was stored.
    """
    arguments = column_values(record)
    statement = sql.record_invocation
    if held is not None:
        arguments += held
        statement = sql.record_if_held
    position = (record.flow_id, record.sequence, record.sub_sequence)
    while True:
        if (yield Answer.CHANGED, statement, arguments):
            return record  # inserted, or replaced a record that was not final
        if held is not None and (yield Answer.ROW, sql.holder, held) is None:
            return None  # not stored because the flow is not held (a token never comes back)
        row = yield Answer.ROW, sql.get_invocation, position
        if row is not None:  # a final record holds the position
            return invocation_from_row(row)
        # Deleted between the two statements (outside a transaction): record again.


def delete_flow(sql: Statements, flow_id: str) -> Steps[bool]:
    """Delete a flow with its records and signals; return whether the flow existed."""
    deleted = yield Answer.CHANGED, sql.delete_flow, (flow_id,)
    yield Answer.NOTHING, sql.delete_invocations, (flow_id,)
    yield Answer.NOTHING, sql.delete_signals, (flow_id,)
    return bool(deleted)


def reset(sql: Statements) -> Steps[None]:
    """Delete every flow, record, signal and worker record; the schema stays."""
    for statement in sql.reset:
        yield Answer.NOTHING, statement, ()


# -- drivers ---------------------------------------------------------------------------------------


def run_sqlite(connection: sqlite3.Connection, steps: Steps[_T]) -> _T:
    """Run a procedure's queries on a ``sqlite3`` connection; return what it returns."""
    answer: object = None
    try:
        while True:
            wanted, statement, arguments = steps.send(answer)
            cursor = connection.execute(statement, arguments)
            if wanted is Answer.CHANGED:
                answer = cursor.rowcount > 0
            elif wanted is Answer.ROW:
                answer = cursor.fetchone()
            elif wanted is Answer.ROWS:
                answer = cursor.fetchall()
            else:
                answer = None
    except StopIteration as done:  # the procedure returned
        return cast(_T, done.value)


async def run_asyncpg(connection: Any, steps: Steps[_T]) -> _T:
    """Run a procedure's queries on an asyncpg connection; return what it returns."""
    answer: object = None
    try:
        while True:
            wanted, statement, arguments = steps.send(answer)
            if wanted is Answer.CHANGED:
                answer = await connection.fetchval(statement, *arguments) is not None
            elif wanted is Answer.ROW:
                answer = await connection.fetchrow(statement, *arguments)
            elif wanted is Answer.ROWS:
                answer = await connection.fetch(statement, *arguments)
            else:
                await connection.execute(statement, *arguments)
                answer = None
    except StopIteration as done:  # the procedure returned
        return cast(_T, done.value)
