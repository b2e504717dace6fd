"""Column values shared by the SQL backends (SQLite and PostgreSQL): records and changes of state.

Both keep a flow's and a record's fields in columns of the same names, with enums stored by
value and an error spread over four columns.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from collections.abc import Sequence
from enum import Enum

from pyergon.core.records import Invocation, ScheduledFlow, StoredError
from pyergon.core.status import TaskStatus
from pyergon.storage.base import UNCHANGED, FlowUpdate

__all__ = [
    "ERROR_COLUMNS",
    "LEASE_COLUMNS",
    "error_values",
    "flow_changes",
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


def record_values(record: ScheduledFlow | Invocation) -> dict[str, object]:
    """Column values of a record: enums by value, the error spread over its columns."""
    names, enums = _COLUMN_PLANS[type(record)]
    values: dict[str, object] = {name: getattr(record, name) for name in names}
    for name in enums:
        values[name] = getattr(record, name).value
    values.update(error_values(record.error))
    return values


def flow_changes(
    status: TaskStatus,
    *,
    result: bytes | FlowUpdate | None = UNCHANGED,
    error: StoredError | FlowUpdate | None = UNCHANGED,
    wake_at: float | FlowUpdate | None = UNCHANGED,
    attempt: int | FlowUpdate = UNCHANGED,
) -> dict[str, object]:
    """Column values for a change of state.

    Leaving ``RUNNING`` drops the lease; becoming ``PENDING`` forgets a cancellation request.
    """
    changes: dict[str, object] = {"status": status.value, "updated_at": time.time()}
    if not isinstance(result, FlowUpdate):
        changes["result"] = result
    if not isinstance(error, FlowUpdate):
        changes.update(error_values(error))
    if not isinstance(wake_at, FlowUpdate):
        changes["wake_at"] = wake_at
    if not isinstance(attempt, FlowUpdate):
        changes["attempt"] = attempt
    if status is not TaskStatus.RUNNING:
        changes.update(dict.fromkeys(LEASE_COLUMNS))
    if status is TaskStatus.PENDING:
        changes["cancel_requested"] = False
    return changes
