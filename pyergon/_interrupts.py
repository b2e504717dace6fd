"""The interruptions of a flow run: what unwinds it before its end, and what it asks first.

The ``BaseException`` subclasses here stop a running flow (a user's ``except Exception`` cannot
swallow them): to wait for a timer, signal or child, on a cancel request, where a replay's log
ends, when another run stored a record first, or when the worker's lease may have run out. The
protocols are what a run asks before live work: whether its lease holds, whether it was
cancelled. :mod:`pyergon._context` re-exports them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from pyergon.core.records import format_position

if TYPE_CHECKING:
    from pyergon._context import Position
    from pyergon.core.outcome import SuspendReason

__all__ = [
    "Cancellation",
    "FlowCancelled",
    "FlowSuspend",
    "LeaseCheck",
    "LeaseExpired",
    "LogConflict",
    "ReplayEnded",
]


class FlowSuspend(BaseException):
    """Raised inside a flow to stop it until a timer, signal or child is ready.

    A ``BaseException`` so that a user's ``except Exception`` cannot swallow it.
    """

    def __init__(
        self, reason: SuspendReason, waiting_on: str, wake_at: float | None = None
    ) -> None:
        super().__init__(f"flow suspended on {reason.value.lower()} {waiting_on!r}")
        self.reason = reason
        self.waiting_on = waiting_on
        self.wake_at = wake_at


class FlowCancelled(BaseException):
    """Raised at a step boundary of a flow whose cancellation was requested."""


class ReplayEnded(BaseException):
    """Raised when a replay reaches an operation the log holds no final record for.

    Attributes:
        position: The log position where the recorded history ends.
    """

    def __init__(self, position: Position) -> None:
        super().__init__(f"the log ends at position {format_position(*position)}")
        self.position = position


class LogConflict(BaseException):
    """Raised when a record this run saves was already stored, differently, by another run.

    The run went on from its own value, not the stored one, so what it did since is dropped and
    the flow runs again from the stored log. Only work that no record holds runs again.
    """


class LeaseExpired(BaseException):
    """Raised before live work or a write of a run whose lease may have run out.

    Another worker may hold the flow by now, so the run stops where it is: it starts no step
    body, retry attempt or write, and its unsaved records are dropped (the next owner does
    their work again). A ``BaseException`` so that a user's ``except Exception`` cannot
    swallow it.
    """


class LeaseCheck(Protocol):
    """A worker's lease on the flow its run holds: whether the run may still act on it."""

    @property
    def lease_token(self) -> str:
        """The token of the claim; the run's own writes are stored only while it holds."""
        ...

    def check(self) -> None:
        """Return if the lease surely holds.

        Raises:
            LeaseExpired: The lease may have run out or was taken.
        """
        ...

    def lose(self, why: str) -> None:
        """The lease is gone (storage refused a write under it): stop the run."""
        ...


class Cancellation(Protocol):
    """Tells a running flow whether someone asked to cancel it."""

    async def requested(self) -> bool:
        """Whether the flow should stop at this step boundary."""
        ...
