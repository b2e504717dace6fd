"""Column values shared by the SQL backends (SQLite and PostgreSQL): records and flow writes.

Both keep a flow's and a record's fields in columns of the same names, with enums stored by
value and an error spread over four columns.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from enum import Enum

from pyergon.core.records import Invocation, ScheduledFlow, StoredError

__all__ = [
    "ERROR_COLUMNS",
    "LEASE_COLUMNS",
    "error_values",
    "flow_columns",
    "record_values",
    "sql_list",
]

ERROR_COLUMNS = ("error_type", "error_message", "error_traceback", "error_payload")
LEASE_COLUMNS = ("lease_owner", "lease_token", "lease_expires_at")


def sql_list(values: Sequence[Enum]) -> str:
    """An SQL list literal of enum values, for constant ``IN (...)`` conditions."""
    return ", ".join(f"'{value.value}'" for value in values)


def error_values(error: StoredError | None) -> dict[str, object]:
    """The error columns holding ``error`` (all ``NULL`` for no error)."""
    if error is None:
        return dict.fromkeys(ERROR_COLUMNS)
    values = (error.type_name, error.message, error.traceback, error.payload)
    return dict(zip(ERROR_COLUMNS, values, strict=True))


def _column_plan(record_type: type[ScheduledFlow | Invocation]) -> tuple[tuple[str, ...], ...]:
    """The fields of a record type stored as they are, and those stored by enum value."""
    hints = typing.get_type_hints(record_type)
    names = [field.name for field in dataclasses.fields(record_type) if field.name != "error"]
    enums = [
        name for name in names if isinstance(hints[name], type) and issubclass(hints[name], Enum)
    ]
    return tuple(names), tuple(enums)


_COLUMN_PLANS = {
    record_type: _column_plan(record_type) for record_type in (ScheduledFlow, Invocation)
}
"""Looked up once per record type, since every write needs them."""

_FLOW_FIELDS = frozenset(_COLUMN_PLANS[ScheduledFlow][0]) - {"flow_id", "version"}


def record_values(record: ScheduledFlow | Invocation) -> dict[str, object]:
    """Column values of a record: enums by value, the error spread over its columns."""
    names, enums = _COLUMN_PLANS[type(record)]
    values: dict[str, object] = {name: getattr(record, name) for name in names}
    for name in enums:
        values[name] = getattr(record, name).value
    values.update(error_values(record.error))
    return values


def flow_columns(changes: Mapping[str, object]) -> dict[str, object]:
    """Column values of a flow write's ``changes`` (field names to Python values).

    Raises:
        ValueError: A name is not a field a write may set (``flow_id`` and ``version`` are not).
    """
    columns: dict[str, object] = {}
    for name, value in changes.items():
        if name == "error":
            columns.update(error_values(typing.cast(StoredError | None, value)))
        elif name in _FLOW_FIELDS:
            columns[name] = value.value if isinstance(value, Enum) else value
        else:
            raise ValueError(f"a flow write cannot set {name!r}; it is not a writable flow field")
    return columns
