"""Column values of the PostgreSQL backend: records and the changes of a flow write.

A flow's and a record's fields are kept in columns of the same names, with enums stored by value
and an error spread over four columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import Enum

from pyergon.core.records import Invocation, ScheduledFlow, StoredError

__all__ = [
    "ERROR_COLUMNS",
    "FLOW_COLUMNS",
    "INVOCATION_COLUMNS",
    "column_values",
    "written_columns",
]

ERROR_COLUMNS = ("error_type", "error_message", "error_traceback", "error_payload")


def _columns(record_type: type[ScheduledFlow | Invocation]) -> tuple[str, ...]:
    """Column names of a record type: one per field, with ``error`` spread over four."""
    return tuple(
        column
        for field in dataclasses.fields(record_type)
        for column in (ERROR_COLUMNS if field.name == "error" else (field.name,))
    )


FLOW_COLUMNS = _columns(ScheduledFlow)
INVOCATION_COLUMNS = _columns(Invocation)
_WRITABLE = frozenset(field.name for field in dataclasses.fields(ScheduledFlow)) - {
    "flow_id",
    "version",
}
"""The fields of a flow a :class:`~pyergon.core.changes.FlowWrite` may change."""


def _error_values(error: object) -> tuple[object, ...]:
    if error is None:
        return (None,) * len(ERROR_COLUMNS)
    if not isinstance(error, StoredError):
        raise TypeError(f"a flow's error is a StoredError or None, not {type(error).__name__}")
    return (error.type_name, error.message, error.traceback, error.payload)


def column_values(record: ScheduledFlow | Invocation) -> list[object]:
    """The values of a record's columns, in the order of its table's columns."""
    values: list[object] = []
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.name == "error":
            values.extend(_error_values(value))
        else:
            values.append(value.value if isinstance(value, Enum) else value)
    return values


def written_columns(changes: Mapping[str, object]) -> dict[str, object]:
    """The columns a flow write sets, with their values, from its ``changes`` by field name.

    Raises:
        ValueError: A name is not a field of a flow that a write may change.
    """
    columns: dict[str, object] = {}
    for name, value in changes.items():
        if name == "error":
            columns.update(zip(ERROR_COLUMNS, _error_values(value), strict=True))
        elif name in _WRITABLE:
            columns[name] = value.value if isinstance(value, Enum) else value
        else:
            raise ValueError(f"a flow write cannot change {name!r}: it is not a writable field")
    return columns
