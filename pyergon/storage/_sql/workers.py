"""Worker records in the ``workers`` table: their statements and rows, for both SQL backends.

A record's fields are kept in columns of the same names, its flow types as a JSON list and its
activity as JSON text (:mod:`pyergon.storage._step_json`; NULL while it runs nothing). A row
is read by column name and each column is checked to hold its kind of value, so a row someone
else wrote or damaged gives a :class:`~pyergon.errors.CorruptStorageError` naming the worker
and the column. The rules of what a record means are :mod:`pyergon.core.workers`'.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from typing import Any

from pyergon.core.workers import WorkerRecord
from pyergon.errors import CorruptStorageError
from pyergon.storage._sql.dialect import Dialect
from pyergon.storage._sql.rows import column_reader
from pyergon.storage._sql.statements import numbered
from pyergon.storage._step_json import activity_from_text, activity_text

__all__ = [
    "WORKER_COLUMNS",
    "WorkerStatements",
    "beat_arguments",
    "beat_statement",
    "worker_from_row",
    "worker_values",
]

WORKER_COLUMNS = tuple(field.name for field in dataclasses.fields(WorkerRecord))
"""The columns of ``workers``, in the order of :class:`~pyergon.core.workers.WorkerRecord`."""

assert WORKER_COLUMNS[:2] == ("worker_id", "incarnation"), "the statements below take them first"


def _flow_types_text(flow_types: tuple[str, ...]) -> str:
    return json.dumps(list(flow_types), ensure_ascii=False)


_ENCODED: dict[str, Callable[[Any], object]] = {
    "flow_types": _flow_types_text,
    "activity": activity_text,
}
"""The columns whose values are stored as text, and how."""


def worker_values(worker: WorkerRecord) -> list[object]:
    """A record's column values, in the order of ``WORKER_COLUMNS``."""
    values = []
    for column in WORKER_COLUMNS:
        value = getattr(worker, column)
        encode = _ENCODED.get(column)
        values.append(value if encode is None else encode(value))
    return values


def beat_statement(dialect: Dialect, first: int = 1) -> str:
    """An UPDATE storing a beat on a record, if it is still the incarnation's.

    Parameters from ``$first``: the worker id, its incarnation, ``last_beat``, the flow
    types and the activity (see :func:`beat_arguments`).
    """
    return dialect.render(
        f"UPDATE {{workers}} SET last_beat = ${first + 2}, flow_types = ${first + 3}, "
        f"activity = ${first + 4} WHERE worker_id = ${first} AND incarnation = ${first + 1}"
    )


def beat_arguments(worker: WorkerRecord) -> list[object]:
    """The arguments of :func:`beat_statement` for a beat that leaves the record as ``worker``."""
    return [
        worker.worker_id,
        worker.incarnation,
        worker.last_beat,
        _flow_types_text(worker.flow_types),
        activity_text(worker.activity),
    ]


class WorkerStatements:
    """The statements keeping worker records, in one dialect.

    Each write ends in the dialect's ``returning_change``: whether it changed a row is its
    answer (a row on PostgreSQL, the row count on SQLite).

    Args:
        dialect: How to spell them.
    """

    def __init__(self, dialect: Dialect) -> None:
        render = dialect.render
        changed = dialect.returning_change
        count = len(WORKER_COLUMNS)
        self.insert = (
            render(
                f"INSERT INTO {{workers}} ({', '.join(WORKER_COLUMNS)}) "
                f"VALUES ({numbered(count)}) ON CONFLICT (worker_id) DO NOTHING"
            )
            + changed
        )
        """Stores a record, given its column values, unless one has its id."""
        # Under READ COMMITTED an UPDATE that waited for a rival's row lock checks its WHERE
        # again on the row the rival left: of rivals replacing one incarnation, one wins.
        assignments = ", ".join(
            f"{column} = ${n}" for n, column in enumerate(WORKER_COLUMNS[1:], start=2)
        )
        self.replace = (
            render(
                f"UPDATE {{workers}} SET {assignments} "
                f"WHERE worker_id = $1 AND incarnation = ${count + 1}"
            )
            + changed
        )
        """Stores a record over the one of its id, given its column values and the stored
        record's incarnation; a record that is absent or of another incarnation stays so."""
        self.beat = beat_statement(dialect) + changed
        """Stores a beat (see :func:`beat_arguments`) on a record still of its incarnation."""
        self.get = render("SELECT * FROM {workers} WHERE worker_id = $1")
        # worker_id is of the kind "id": ordered by code point in both dialects.
        self.list = render("SELECT * FROM {workers} ORDER BY worker_id")
        self.delete = render("DELETE FROM {workers} WHERE worker_id = $1") + changed

    def put(self, worker: WorkerRecord, replacing: str | None) -> tuple[str, list[object]]:
        """The write storing ``worker`` if its id's record has incarnation ``replacing``.

        ``replacing=None``: only if no record has its id. The write changes a row if and only
        if it stored ``worker``.
        """
        values = worker_values(worker)
        if replacing is None:
            return self.insert, values
        return self.replace, [*values, replacing]


def _flow_types(value: object) -> object:
    if type(value) is str:
        names = json.loads(value)  # a JSONDecodeError is a ValueError
        if type(names) is list and all(type(name) is str for name in names):
            return tuple(names)
    raise ValueError(value)


def _activity(value: object) -> object:
    if value is None or type(value) is str:
        return activity_from_text(value)
    raise ValueError(value)


def _readers() -> dict[str, tuple[Callable[[object], object], str, bool]]:
    """How each column of ``workers`` is read, what it holds, and whether it may be NULL."""
    hints = typing.get_type_hints(WorkerRecord)
    readers: dict[str, tuple[Callable[[object], object], str, bool]] = {}
    for column in WORKER_COLUMNS:
        kinds = typing.get_args(hints[column]) or (hints[column],)
        optional = type(None) in kinds
        if column == "flow_types":
            readers[column] = (_flow_types, "a JSON list of flow type names", optional)
            continue
        if column == "activity":  # NULL: it runs nothing
            readers[column] = (_activity, "a JSON list of running steps", False)
            continue
        (kind,) = [kind for kind in kinds if kind is not type(None)]
        readers[column] = (*column_reader(kind), optional)
    return readers


_READERS = _readers()


def worker_from_row(row: Any) -> WorkerRecord:
    """Rebuild a record from its ``workers`` row (a ``sqlite3.Row`` or an asyncpg ``Record``).

    Raises:
        CorruptStorageError: A column holds what pyergon did not write there; the message
            names the worker and the column.
    """
    fields: dict[str, Any] = {}
    for column, (read, holds, optional) in _READERS.items():
        value = row[column]
        if value is None and optional:
            fields[column] = None
            continue
        try:
            fields[column] = read(value)
        except ValueError:
            held = "nothing" if value is None else repr(value)[:80]
            raise CorruptStorageError(
                f"column {column!r} of worker {row['worker_id']!r} holds {held}, which is not "
                f"{holds}; pyergon cannot read the worker's record. Fix the column, or delete "
                "the record (a worker registers again when it starts)."
            ) from None
    return WorkerRecord(**fields)
