"""Records as rows of the SQL tables, and back.

A flow's and a record's fields are kept in columns of the same names, enums by value, a step's
progress and earlier attempts as JSON text (:mod:`pyergon.storage._step_json`; no attempts:
NULL) and an error spread over four columns. A row is read by column name, as both
``sqlite3.Row`` and asyncpg's ``Record`` allow, and each column is checked to hold its kind of
value: a row that someone else wrote or damaged gives a
:class:`~pyergon.errors.CorruptStorageError` naming the flow and the column, never a bare
``ValueError`` from deep inside.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

from pyergon.core.records import (
    Attempt,
    Invocation,
    ScheduledFlow,
    SignalRecord,
    StepProgress,
    StoredError,
)
from pyergon.core.status import TaskStatus
from pyergon.errors import CorruptStorageError
from pyergon.storage._step_json import (
    attempts_from_text,
    attempts_text,
    progress_from_text,
    progress_text,
)

__all__ = [
    "ERROR_COLUMNS",
    "FLOW_COLUMNS",
    "INVOCATION_COLUMNS",
    "column_reader",
    "column_values",
    "flow_from_row",
    "invocation_from_row",
    "readable_flow",
    "signal_from_row",
    "status_counts",
    "wake_time",
    "written_columns",
]

ERROR_COLUMNS = ("error_type", "error_message", "error_traceback", "error_payload")


@dataclasses.dataclass(frozen=True, slots=True)
class _Layout:
    """How one record type is stored: its plain columns, then the error's."""

    columns: tuple[str, ...]
    """Every column, the error's last."""
    fields: operator.attrgetter[Any]
    """Reads the fields stored as they are or by enum value, in the order of ``columns``."""
    enums: tuple[int, ...]
    """Where in ``columns`` a field is stored by its enum's value."""
    progress: int | None
    """Where in ``columns`` a step's progress is stored as JSON text, if the record has one."""
    attempts: int | None
    """Where in ``columns`` a step's earlier attempts are stored as JSON text, if it has them."""


def _layout(record_type: type[ScheduledFlow | Invocation]) -> _Layout:
    hints = typing.get_type_hints(record_type)
    names = [field.name for field in dataclasses.fields(record_type) if field.name != "error"]
    enums = tuple(
        index
        for index, name in enumerate(names)
        if isinstance(hints[name], type) and issubclass(hints[name], Enum)
    )
    progress = names.index("progress") if "progress" in names else None
    attempts = names.index("earlier_attempts") if "earlier_attempts" in names else None
    return _Layout((*names, *ERROR_COLUMNS), operator.attrgetter(*names), enums, progress, attempts)


_LAYOUTS = {record_type: _layout(record_type) for record_type in (ScheduledFlow, Invocation)}
"""Worked out once per record type, since every write needs them."""

FLOW_COLUMNS = _LAYOUTS[ScheduledFlow].columns
INVOCATION_COLUMNS = _LAYOUTS[Invocation].columns
_WRITABLE = frozenset(FLOW_COLUMNS) - {"flow_id", "version", *ERROR_COLUMNS} | {"error"}
"""The fields of a flow a :class:`~pyergon.core.changes.FlowWrite` may change."""


def _error_values(error: object) -> tuple[object, ...]:
    if error is None:
        return (None,) * len(ERROR_COLUMNS)
    if not isinstance(error, StoredError):
        raise TypeError(f"a flow's error is a StoredError or None, not {type(error).__name__}")
    return (error.stored_type, error.message, error.traceback, error.payload)


def column_values(record: ScheduledFlow | Invocation) -> list[object]:
    """A record's column values, in the order of ``FLOW_COLUMNS`` or ``INVOCATION_COLUMNS``."""
    layout = _LAYOUTS[type(record)]
    values: list[object] = list(layout.fields(record))
    for index in layout.enums:
        values[index] = typing.cast(Enum, values[index]).value
    progress = layout.progress
    if progress is not None and values[progress] is not None:
        values[progress] = progress_text(typing.cast(StepProgress, values[progress]))
    attempts = layout.attempts
    if attempts is not None:  # most records keep none: NULL, without a call
        kept = values[attempts]
        values[attempts] = attempts_text(typing.cast(tuple[Attempt, ...], kept)) if kept else None
    values.extend(_error_values(record.error))
    return values


def written_columns(changes: Mapping[str, object]) -> dict[str, object]:
    """The columns a flow write sets, with their values, from its ``changes`` by field name.

    Raises:
        ValueError: A name is not a field of a flow that a write may change.
    """
    columns: dict[str, object] = {}
    for name, value in changes.items():
        if name not in _WRITABLE:
            raise ValueError(
                f"a flow write cannot change {name!r}: it is not a field a write may set"
            )
        if name == "error":
            columns.update(zip(ERROR_COLUMNS, _error_values(value), strict=True))
        else:
            columns[name] = value.value if isinstance(value, Enum) else value
    return columns


class _Unreadable(ValueError):
    """A stored value is not of its column's kind."""


def _exactly(kind: type) -> Callable[[object], object]:
    """A reader of a column whose values are of ``kind`` exactly (a ``bool`` is no ``int``)."""

    def read(value: object) -> object:
        if type(value) is not kind:
            raise _Unreadable
        return value

    return read


def _number(value: object) -> float:
    # SQLite keeps text that does not look like a number in a REAL column; PostgreSQL's
    # double precision holds NaN and infinities. Neither is a time pyergon wrote.
    if (type(value) is float or type(value) is int) and math.isfinite(value):
        return value
    raise _Unreadable


def _flag(value: object) -> bool:
    if value is True or value is False:
        return value
    if type(value) is int and value in (0, 1):  # SQLite stores 0 or 1
        return bool(value)
    raise _Unreadable


def _enum_reader(enum: type[Enum]) -> Callable[[object], object]:
    members = {member.value: member for member in enum}

    def read(value: object) -> object:
        try:
            return members[value]
        except (KeyError, TypeError):
            raise _Unreadable from None

    return read


def _progress(value: object) -> StepProgress:
    if type(value) is not str:
        raise _Unreadable
    try:
        return progress_from_text(value)
    except ValueError:
        raise _Unreadable from None


def _attempts(value: object) -> tuple[Attempt, ...]:
    if value is None:  # none kept: most records, and every one written before they were
        return ()
    if type(value) is not str:
        raise _Unreadable
    try:
        return attempts_from_text(value)
    except ValueError:
        raise _Unreadable from None


_READERS: dict[object, tuple[Callable[[object], object], str]] = {
    str: (_exactly(str), "UTF-8 text"),
    StepProgress: (_progress, "a step's progress as JSON"),
    tuple[Attempt, ...]: (_attempts, "a step's earlier attempts as JSON"),
    bytes: (_exactly(bytes), "bytes"),
    float: (_number, "a finite number"),
    int: (_exactly(int), "an integer"),
    bool: (_flag, "a flag (0 or 1)"),
}
"""How a column holding each kind of value is read, and what it should hold."""


def column_reader(kind: type) -> tuple[Callable[[object], object], str]:
    """How a column of ``kind`` (a plain type, or a step's progress) is read.

    The plain types are ``str``, ``bytes``, ``float``, ``int`` and ``bool``; a
    :class:`~pyergon.core.records.StepProgress` is stored as JSON text.

    Returns:
        A reader, returning the stored value as pyergon wrote it or raising ``ValueError`` if
        it is not of ``kind``, and what such a column holds, for messages (``"an integer"``).
    """
    return _READERS[kind]


@dataclasses.dataclass(frozen=True, slots=True)
class _Column:
    """How one stored column is read back."""

    name: str
    read: Callable[[object], object]
    holds: str
    optional: bool


def _columns(record_type: type[ScheduledFlow | Invocation]) -> tuple[_Column, ...]:
    hints = typing.get_type_hints(record_type)
    hints |= {"error_type": str | None, "error_message": str | None}
    hints |= {"error_traceback": str | None, "error_payload": bytes | None}
    columns = []
    for name in _LAYOUTS[record_type].columns:
        if typing.get_origin(hints[name]) is tuple:  # earlier attempts: NULL reads as none
            columns.append(_Column(name, *_READERS[hints[name]], optional=False))
            continue
        kinds = typing.get_args(hints[name]) or (hints[name],)
        (kind,) = [kind for kind in kinds if kind is not type(None)]
        if isinstance(kind, type) and issubclass(kind, Enum):
            read, holds = _enum_reader(kind), f"a {kind.__name__} value"
        else:
            read, holds = _READERS[kind]
        columns.append(_Column(name, read, holds, type(None) in kinds))
    return tuple(columns)


_COLUMNS = {record_type: _columns(record_type) for record_type in (ScheduledFlow, Invocation)}


def _read_columns(
    row: Any, record_type: type[ScheduledFlow | Invocation], what: str
) -> tuple[dict[str, Any], CorruptStorageError | None]:
    """The fields of ``row`` that can be read, and the first column that cannot, if any.

    Args:
        row: A ``sqlite3.Row`` or an asyncpg ``Record`` of the record type's table.
        record_type: What the row stores.
        what: The record the row stores, for the message (``flow 'order-1'``).
    """
    fields: dict[str, Any] = {}
    damage = None
    for column in _COLUMNS[record_type]:
        value = row[column.name]
        if value is None and column.optional:
            fields[column.name] = None
            continue
        try:
            fields[column.name] = column.read(value)
        except _Unreadable:
            if damage is None:
                held = "nothing" if value is None else repr(value)[:80]
                damage = CorruptStorageError(
                    f"column {column.name!r} of {what} holds {held}, which is not "
                    f"{column.holds}; pyergon cannot read it. Fix the column or delete the flow."
                )
    error = [fields.pop(column, None) for column in ERROR_COLUMNS]
    if error[0] is not None:
        fields["error"] = StoredError.from_stored(
            error[0], error[1] or "", error[2] or "", error[3]
        )
    return fields, damage


def _flow_name(row: Any) -> str:
    return f"flow {row['flow_id']!r}"


def readable_flow(row: Any) -> tuple[dict[str, Any], CorruptStorageError | None]:
    """The fields of a ``flows`` row that can be read, and what cannot be, if anything.

    For a flow a claim took: its claimer fails it with the damage (see
    :func:`~pyergon.storage.base.damaged_run`) rather than the claim raising it.
    """
    return _read_columns(row, ScheduledFlow, _flow_name(row))


def flow_from_row(row: Any) -> ScheduledFlow:
    """Rebuild a flow from its ``flows`` row (a ``sqlite3.Row`` or an asyncpg ``Record``).

    Raises:
        CorruptStorageError: A column holds what pyergon did not write there; the message
            names the flow and the column.
    """
    fields, damage = _read_columns(row, ScheduledFlow, _flow_name(row))
    if damage is not None:
        raise damage
    return ScheduledFlow(**fields)


def invocation_from_row(row: Any) -> Invocation:
    """Rebuild a record from its ``invocations`` row.

    Raises:
        CorruptStorageError: A column holds what pyergon did not write there; the message
            names the flow, the record's position and the column.
    """
    what = f"record {row['sequence']!r}.{row['sub_sequence']!r} of flow {row['flow_id']!r}"
    fields, damage = _read_columns(row, Invocation, what)
    if damage is not None:
        raise damage
    return Invocation(**fields)


def signal_from_row(row: Any) -> SignalRecord:
    """Rebuild a signal from its ``signals`` row."""
    return SignalRecord(row["flow_id"], row["name"], row["payload"], row["sent_at"])


def wake_time(value: object) -> float | None:
    """The earliest wake time a query found, or ``None``.

    Text (SQLite sorts it after every number) or NaN (PostgreSQL sorts it after every number)
    is the wake time of no flow a claim can take: there is no timer to wait for.
    """
    try:
        return None if value is None else _number(value)
    except _Unreadable:
        return None


def status_counts(rows: Iterable[Sequence[Any]]) -> dict[TaskStatus, int]:
    """Every status with its count, from rows of ``(status, count)`` (absent statuses count 0).

    Raises:
        CorruptStorageError: A status is not one pyergon writes.
    """
    counts = dict.fromkeys(TaskStatus, 0)
    for status, count in rows:
        try:
            counts[TaskStatus(status)] = count
        except ValueError:
            raise CorruptStorageError(
                f"{count} stored flow(s) have status {status!r}, which is not a flow status; "
                "fix their status column or delete them"
            ) from None
    return counts
