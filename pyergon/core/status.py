"""The state machines of a flow and of one recorded operation."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["InvocationStatus", "OperationKind", "TaskStatus"]


class TaskStatus(StrEnum):
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

    @property
    def is_final(self) -> bool:
        """Whether the flow has finished and will not run again by itself."""
        return self in _FINAL_FLOW


class InvocationStatus(StrEnum):
    """Where one recorded operation (a step, timer, signal wait, child or value) stands.

    ``COMPLETE`` and ``FAILED`` are final: the record never changes again.
    """

    PENDING = "PENDING"
    WAITING_FOR_TIMER = "WAITING_FOR_TIMER"
    WAITING_FOR_SIGNAL = "WAITING_FOR_SIGNAL"
    WAITING_FOR_CHILD = "WAITING_FOR_CHILD"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"

    @property
    def is_final(self) -> bool:
        """Whether the record holds a result or an error and will not change again."""
        return self in _FINAL_RECORD


class OperationKind(StrEnum):
    """What a recorded operation is."""

    STEP = "STEP"
    TIMER = "TIMER"
    SIGNAL = "SIGNAL"
    CHILD = "CHILD"
    VALUE = "VALUE"
    """A value recorded for determinism: ``pyergon.now()``, ``uuid4()`` or ``random()``."""


# Sets made once: ``is_final`` is asked several times per step, and a tuple of members built on
# each call cost 0.5 us against 0.04 for a look-up in a set.
_FINAL_FLOW = frozenset((TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED))
_FINAL_RECORD = frozenset((InvocationStatus.COMPLETE, InvocationStatus.FAILED))
