"""Records as rows of the SQL tables, and back.

A flow's and a record's fields are kept in columns of the same names, enums by value and an
error spread over four columns. A row is read by column name, as both ``sqlite3.Row`` and
asyncpg's ``Record`` allow.
"""

from __future__ import annotations

import dataclasses
import operator
import typing
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus

__all__ = [
    "ERROR_COLUMNS",
    "FLOW_COLUMNS",
    "INVOCATION_COLUMNS",
    "column_values",
    "flow_from_row",
    "invocation_from_row",
    "signal_from_row",
    "status_counts",
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


def _layout(record_type: type[ScheduledFlow | Invocation]) -> _Layout:
    hints = typing.get_type_hints(record_type)
    names = [field.name for field in dataclasses.fields(record_type) if field.name != "error"]
    enums = tuple(
        index
        for index, name in enumerate(names)
        if isinstance(hints[name], type) and issubclass(hints[name], Enum)
    )
    return _Layout((*names, *ERROR_COLUMNS), operator.attrgetter(*names), enums)


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


def _record_fields(row: Any) -> dict[str, Any]:
    """Keyword arguments rebuilding a record from its row; enums are left to the caller."""
    fields = dict(zip(row.keys(), row, strict=True))
    error = [fields.pop(column) for column in ERROR_COLUMNS]
    if error[0] is not None:
        fields["error"] = StoredError.from_stored(*error)
    return fields


def flow_from_row(row: Any) -> ScheduledFlow:
    """Rebuild a flow from its ``flows`` row (a ``sqlite3.Row`` or an asyncpg ``Record``)."""
    fields = _record_fields(row)
    return ScheduledFlow(
        **fields
        | {
            "status": TaskStatus(fields["status"]),
            "cancel_requested": bool(fields["cancel_requested"]),  # SQLite stores 0 or 1
        }
    )


def invocation_from_row(row: Any) -> Invocation:
    """Rebuild a record from its ``invocations`` row."""
    fields = _record_fields(row)
    kind, status = OperationKind(fields["kind"]), InvocationStatus(fields["status"])
    return Invocation(**fields | {"kind": kind, "status": status})


def signal_from_row(row: Any) -> SignalRecord:
    """Rebuild a signal from its ``signals`` row."""
    return SignalRecord(row["flow_id"], row["name"], row["payload"], row["sent_at"])


def status_counts(rows: Iterable[Sequence[Any]]) -> dict[TaskStatus, int]:
    """Every status with its count, from rows of ``(status, count)`` (absent statuses count 0)."""
    counts = dict.fromkeys(TaskStatus, 0)
    counts.update((TaskStatus(status), count) for status, count in rows)
    return counts
