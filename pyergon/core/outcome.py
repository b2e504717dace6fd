"""What running a flow produced: a final outcome, or a suspension with what it waits on."""

from __future__ import annotations

import html
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeAlias, TypeVar

from pyergon.core._frames import frame_html, frame_summary
from pyergon.core.records import to_datetime
from pyergon.core.status import TaskStatus

__all__ = ["Completed", "FlowOutcome", "SuspendReason", "Suspended"]

R = TypeVar("R")


class SuspendReason(StrEnum):
    """Why a flow stopped before finishing."""

    TIMER = "TIMER"
    SIGNAL = "SIGNAL"
    CHILD = "CHILD"
    RETRY = "RETRY"
    """Waiting out the backoff before a flow-level retry."""


# Not slotted: ``Completed[int](...)`` sets ``__orig_class__`` on the instance, which a slotted
# frozen dataclass refuses with a TypeError (Python 3.11) instead of the AttributeError
# typing expects.
@dataclass(frozen=True)
class Completed(Generic[R]):
    """A flow that finished: with a result, or with an error.

    ``Completed[R]`` carries the return type ``R`` of the flow's ``@flow`` method, so
    ``outcome.unwrap()`` is typed as the method's result.

    Attributes:
        flow_id: The flow's id.
        result: The flow method's return value (``None`` if it failed).
        error: The exception the flow ended with, or ``None``.
        status: ``COMPLETE``, ``FAILED`` or ``CANCELLED``.
    """

    flow_id: str
    result: R | None = None
    error: BaseException | None = None
    status: TaskStatus = TaskStatus.COMPLETE

    @property
    def succeeded(self) -> bool:
        """Whether the flow returned normally."""
        return self.status is TaskStatus.COMPLETE

    def unwrap(self) -> R:
        """Return the result, or raise the flow's error."""
        if self.error is not None:
            raise self.error
        # A completed flow without an error returned its result, which may itself be None.
        return self.result  # type: ignore[return-value]

    def __repr__(self) -> str:
        if self.error is not None:
            detail = f"error={self.error!r}"
        else:  # a DataFrame's repr is many lines: a summary keeps this one
            detail = f"result={frame_summary(self.result) or repr(self.result)}"
        return f"Completed(flow_id={self.flow_id!r}, status={self.status.value}, {detail})"

    def _repr_html_(self) -> str:
        frame = None if self.error is not None else frame_html(self.result)
        return f"<code>{html.escape(repr(self))}</code>{frame or ''}"


@dataclass(frozen=True, slots=True)
class Suspended:
    """A flow that stopped to wait; run it again (or let a worker) once the wait is over.

    Attributes:
        flow_id: The flow's id.
        reason: What the flow waits on.
        waiting_on: The timer, signal or child flow name(s) it waits on.
        wake_at: For timers and retry backoffs, when the wait ends (epoch seconds).
    """

    flow_id: str
    reason: SuspendReason
    waiting_on: tuple[str, ...] = ()
    wake_at: float | None = None

    @property
    def status(self) -> TaskStatus:
        """Always ``SUSPENDED``."""
        return TaskStatus.SUSPENDED

    @property
    def result(self) -> None:
        """A suspended flow has no result yet."""
        return None

    @property
    def error(self) -> None:
        """A suspended flow has no error."""
        return None

    def __repr__(self) -> str:
        wake = to_datetime(self.wake_at)
        when = f", wake_at={wake.isoformat()}" if wake is not None else ""
        return (
            f"Suspended(flow_id={self.flow_id!r}, reason={self.reason.value}, "
            f"waiting_on={list(self.waiting_on)!r}{when})"
        )

    def _repr_html_(self) -> str:
        return f"<code>{html.escape(repr(self))}</code>"


FlowOutcome: TypeAlias = Completed[R] | Suspended
"""The result of :meth:`pyergon.Executor.run`; ``FlowOutcome[R]`` for a flow returning ``R``."""
