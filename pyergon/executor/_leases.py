"""A worker's hold on the flows it claimed: writing their state under the lease, and backoff.

:class:`LeaseWriter` leaves a claimed flow as its run ends, through
:class:`~pyergon.storage._flows.HeldFlow`; :class:`Backoff` paces retries while storage fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Generator
from typing import Any

from pyergon._context import FlowContext, LogConflict
from pyergon.core.records import StoredError
from pyergon.core.status import TaskStatus
from pyergon.core.transitions import RunEnd
from pyergon.storage._flows import HeldFlow

__all__ = [
    "DONE",
    "Backoff",
    "CancelFlag",
    "Claim",
    "LeaseWriter",
    "check_lease_seconds",
    "release_quietly",
]

logger = logging.getLogger("pyergon.worker")

_MAX_BACKOFF = 5.0
"""Longest pause between attempts while the storage cannot be reached."""


def check_lease_seconds(lease_seconds: float, name: str = "lease_seconds") -> None:
    """Refuse a lease length that would strand flows: not a finite number above zero.

    An infinite (or NaN) lease never expires, so the flows of a worker that dies are never
    claimed again.

    Args:
        lease_seconds: The lease length to check.
        name: What the caller calls it, for the message (``--lease`` on the command line).

    Raises:
        ValueError: ``lease_seconds`` is not finite or not above zero.
    """
    if not (isinstance(lease_seconds, int | float) and math.isfinite(lease_seconds)) or not (
        lease_seconds > 0
    ):
        raise ValueError(
            f"{name} must be a finite number of seconds > 0, got {lease_seconds!r}; a "
            "lease that never expires leaves a dead worker's flows stranded"
        )


class LeaseWriter:
    """Writes a claimed flow's state under its lease.

    Attributes:
        held: The claimed flow, as the run last knows it stored.
        releasing: Whether a release has been started; from then on the lease is not renewed.
    """

    def __init__(self, held: HeldFlow) -> None:
        self.held = held
        self.releasing = False

    @property
    def lease_token(self) -> str:
        """The token of the claim."""
        assert self.held.lease_token is not None  # a claim always sets the lease
        return self.held.lease_token

    async def write(self, context: FlowContext, end: RunEnd) -> None:
        """Save the run's records and leave the flow as ``end`` says, if still held."""
        self.releasing = True
        try:
            await context.save(end, self.held)
        except LogConflict:
            self.releasing = False  # the run goes on from the stored log, under this lease
            raise
        if self.held.lost:
            self._lost(end.status)

    async def fail(self, error: StoredError, attempt: int) -> None:
        """Fail a flow that cannot run (outside a run: no records to save)."""
        await self._release(RunEnd(TaskStatus.FAILED, {"error": error, "attempt": attempt}))

    async def _release(self, end: RunEnd) -> None:
        self.releasing = True
        await self.held.leave((), end)
        if self.held.lost:
            self._lost(end.status)

    def _lost(self, status: TaskStatus) -> None:
        logger.warning(
            "flow %r: lease lost before it could be set %s; another worker holds it",
            self.held.flow_id,
            status.value,
        )

    async def give_back(
        self, wake_at: float | None = None, error: StoredError | None = None
    ) -> None:
        """Release the flow to run again: at once, or (``SUSPENDED``) from ``wake_at`` on.

        Args:
            wake_at: When it may run again; ``None``: now.
            error: Why this run gave it back, shown on the flow until it is claimed again.
        """
        fields = {} if error is None else {"error": error}
        if wake_at is None:
            await self._release(RunEnd(TaskStatus.PENDING, fields))
        else:
            await self._release(RunEnd(TaskStatus.SUSPENDED, {"wake_at": wake_at, **fields}))


class _Done:
    """An awaitable that is already done: what :meth:`Worker.register` returns."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that ends at once


DONE = _Done()


@dataclasses.dataclass(slots=True)
class Claim:
    """A flow this worker holds: how it writes under the lease and the task running it."""

    writer: LeaseWriter
    task: asyncio.Task[None]
    cancel: CancelFlag

    @property
    def active(self) -> bool:
        """Whether the flow still runs under this claim (not finished, not being released)."""
        return not self.task.done() and not self.writer.releasing


class CancelFlag:
    """Set by the worker when storage says the flow's cancellation was requested."""

    def __init__(self, requested: bool = False) -> None:
        self.requested_flag = requested

    async def requested(self) -> bool:
        """Whether the flow should stop at this step boundary."""
        return self.requested_flag


async def release_quietly(
    writer: LeaseWriter,
    why: str,
    *,
    wake_at: float | None = None,
    error: StoredError | None = None,
) -> None:
    """Give a flow back to the queue (shielded from cancellation); a failure only logs."""
    try:
        await asyncio.shield(writer.give_back(wake_at, error))
    except Exception as error:
        logger.warning("could not release a %s flow; its lease will expire: %s", why, error)


class Backoff:
    """Retries with growing pauses while storage fails, logging once per outage."""

    def __init__(
        self,
        worker_id: str,
        doing: str,
        report: Callable[[BaseException, str | None], None],
    ) -> None:
        self._worker_id = worker_id
        self._doing = doing
        self._report = report
        self._delay = 0.0

    async def failed(self, error: BaseException) -> None:
        """Report ``error`` once per outage, then wait a pause that doubles each time."""
        if self._delay == 0.0:
            logger.warning(
                "worker %s: storage failed while %s (%r); retrying with backoff",
                self._worker_id,
                self._doing,
                error,
            )
            self._report(error, None)
        self._delay = min(max(self._delay * 2, 0.05), _MAX_BACKOFF)
        await asyncio.sleep(self._delay)

    def succeeded(self) -> None:
        """The storage works again: log that once and start the pauses over."""
        if self._delay:
            logger.warning("worker %s: storage is back (%s)", self._worker_id, self._doing)
        self._delay = 0.0
