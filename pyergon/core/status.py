"""The state machines of a flow and of one recorded operation."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

__all__ = ["InvocationStatus", "OperationKind", "TaskStatus", "flow_status", "flow_statuses"]


class _Status(StrEnum):
    """What a flow's and a record's statuses share: some of them are final."""

    is_final: bool
    """Whether nothing changes this flow or record again by itself (see each status)."""


class TaskStatus(_Status):
    """Where a flow stands.

    ``PENDING`` flows wait in the queue, ``RUNNING`` ones are held by an executor or worker,
    ``SUSPENDED`` ones wait on a timer, a signal, a child or a retry backoff and hold no worker.
    The last three are final.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class InvocationStatus(_Status):
    """Where one recorded operation (a step, timer, signal wait, child or value) stands.

    ``COMPLETE`` and ``FAILED`` are final: the record never changes again.
    """

    PENDING = "PENDING"
    WAITING_FOR_TIMER = "WAITING_FOR_TIMER"
    WAITING_FOR_SIGNAL = "WAITING_FOR_SIGNAL"
    WAITING_FOR_CHILD = "WAITING_FOR_CHILD"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"


class OperationKind(StrEnum):
    """What a recorded operation is."""

    STEP = "STEP"
    TIMER = "TIMER"
    SIGNAL = "SIGNAL"
    CHILD = "CHILD"
    VALUE = "VALUE"
    """A value recorded for determinism: ``pyergon.now()``, ``uuid4()`` or ``random()``."""


# A plain attribute of each member rather than a property: ``is_final`` is asked several times
# per step, and a property looking the member up in a set took 1,100 instructions against 100.
for _flow_status in TaskStatus:
    _flow_status.is_final = _flow_status in {
        TaskStatus.COMPLETE,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
    }
for _record_status in InvocationStatus:
    _record_status.is_final = _record_status in {InvocationStatus.COMPLETE, InvocationStatus.FAILED}


def flow_status(name: TaskStatus | str) -> TaskStatus:
    """The flow status ``name`` names, in any letter case (``"failed"``, ``" FAILED"``).

    Raises:
        ValueError: ``name`` is not a flow status; the message lists them.
    """
    try:
        return TaskStatus(name.strip().upper())
    except ValueError:
        valid = ", ".join(status.value for status in TaskStatus)
        raise ValueError(f"unknown status {name!r}; valid: {valid}") from None


def flow_statuses(
    names: TaskStatus | str | Iterable[TaskStatus | str] | None,
) -> frozenset[TaskStatus]:
    """The flow statuses a ``status=`` option names: one, several, or none (``None``: empty).

    Raises:
        ValueError: A name is not a flow status; the message lists them.
    """
    if names is None:
        return frozenset()
    if isinstance(names, str):  # a TaskStatus is a str too
        return frozenset((flow_status(names),))
    return frozenset(flow_status(name) for name in names)
