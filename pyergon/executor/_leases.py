"""A worker's hold on the flows it claimed: its lease clock, writing under the lease, backoff.

:class:`Lease` is how long the worker may still act on a claimed flow, by its own clock;
:class:`LeaseWriter` leaves a claimed flow as its run ends, through
:class:`~pyergon.storage._flows.HeldFlow`; :class:`Backoff` paces retries while storage fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Protocol

from pyergon._context import FlowContext, LeaseExpired, LogConflict
from pyergon.clock import Clock, SystemClock
from pyergon.core.records import ScheduledFlow, StoredError
from pyergon.core.status import TaskStatus
from pyergon.core.transitions import RunEnd
from pyergon.executor._talk import FlowTalk
from pyergon.storage._flows import HeldFlow
from pyergon.storage.base import ExecutionLog

__all__ = [
    "DONE",
    "Backoff",
    "CancelFlag",
    "Claim",
    "Lease",
    "LeaseClock",
    "LeaseKeeper",
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


class _Timer(Protocol):
    def cancel(self) -> Any: ...


class LeaseClock:
    """The time a worker measures its leases on, and its alarms.

    With the system clock that is ``time.monotonic`` (wall time can jump) and alarms are
    ``loop.call_at``; with another clock (a test's ``ManualClock``) it is that clock's time,
    as the storage measures the worker's leases on it too.

    Args:
        clock: The worker's clock.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.now: Callable[[], float] = (
            time.monotonic if isinstance(clock, SystemClock) else clock.now
        )

    def call_at(self, when: float, callback: Callable[[], None]) -> _Timer:
        """Call ``callback`` on the running loop once this clock reaches ``when``."""
        loop = asyncio.get_running_loop()
        if isinstance(self._clock, SystemClock):
            return loop.call_at(loop.time() + (when - time.monotonic()), callback)
        return loop.create_task(self._alarm(when, callback))

    async def _alarm(self, when: float, callback: Callable[[], None]) -> None:
        await self._clock.sleep(when - self._clock.now())
        callback()


class Lease:
    """How long a worker may still act on a flow it claimed, by its own clock.

    Valid until ``lease_seconds`` after the claim (or the last renewal that held it) was
    *sent*: the storage counts from no earlier, so while this says valid no other worker can
    hold the flow. Once it may have run out, :meth:`check` raises and the alarm set by
    :meth:`watch` fires (the worker cancels the run).

    Args:
        clock: The worker's lease clock.
        lease_seconds: The lease length.
        sent_at: When the claim was sent, on ``clock``.
        lease_token: The claim's token, under which the run's writes are sent.

    Attributes:
        lease_token: The claim's token.
        valid_until: When the lease runs out, on ``clock``, unless renewed.
        lost: Why the lease is gone, once it is (``None`` while it may hold).
    """

    def __init__(
        self, clock: LeaseClock, lease_seconds: float, sent_at: float, lease_token: str
    ) -> None:
        self._clock = clock
        self._seconds = lease_seconds
        self.lease_token = lease_token
        self.valid_until = sent_at + lease_seconds
        self.lost: str | None = None
        self._on_expiry: Callable[[], object] | None = None
        self._timer: _Timer | None = None

    def __repr__(self) -> str:
        left = self.valid_until - self._clock.now()
        return f"Lease(lost={self.lost!r})" if self.lost else f"Lease({left:.3f} s left)"

    @property
    def expired(self) -> bool:
        """Whether the lease may have run out or was taken."""
        if self.lost is None and self._clock.now() >= self.valid_until:
            self.lost = "its lease ran out by this worker's clock before a renewal held it"
        return self.lost is not None

    def check(self) -> None:
        """Return if the lease surely holds.

        Raises:
            LeaseExpired: The lease may have run out or was taken.
        """
        if self.expired:
            raise LeaseExpired(self.lost)

    def watch(self, on_expiry: Callable[[], object]) -> None:
        """Call ``on_expiry`` once the lease runs out (or is lost), unless renewed before."""
        self._on_expiry = on_expiry
        self._arm()

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` held the lease: it lasts from then on.

        Safe from any thread (the heartbeat's): it only moves the deadline on; the alarm,
        when it comes, finds the lease renewed and sets itself again.
        """
        if self.lost is None:
            self.valid_until = max(self.valid_until, sent_at + self._seconds)

    def mark_lost(self, why: str) -> None:
        """The lease is gone: :meth:`check` raises from now on. Safe from any thread.

        Call :meth:`lose` on the worker's loop as well, to stop the run.
        """
        if self.lost is None:
            self.lost = why

    def lose(self, why: str) -> None:
        """The lease is gone (another worker holds the flow): expire it now."""
        self.mark_lost(why)
        self._expire()

    def close(self) -> None:
        """The run ended: no alarm any more."""
        self._on_expiry = None
        self._disarm()

    def _arm(self) -> None:
        self._disarm()
        if self._on_expiry is not None:
            self._timer = self._clock.call_at(self.valid_until, self._alarm)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _alarm(self) -> None:
        self._timer = None
        if self.expired:
            self._expire()
        else:  # renewed meanwhile, or the loop's timer fired a little early
            self._arm()

    def _expire(self) -> None:
        self._disarm()
        on_expiry, self._on_expiry = self._on_expiry, None
        if on_expiry is not None:
            on_expiry()


class LeaseWriter:
    """Writes a claimed flow's state under its lease.

    Args:
        held: The claimed flow.
        lease: The worker's lease on it; no write starts once it may have run out.

    Attributes:
        held: The claimed flow, as the run last knows it stored.
        lease: The worker's lease on it.
        releasing: Whether a release has been started; from then on the lease is not renewed.
    """

    def __init__(self, held: HeldFlow, lease: Lease) -> None:
        self.held = held
        self.lease = lease
        self.releasing = False

    @property
    def lease_token(self) -> str:
        """The token of the claim."""
        assert self.held.lease_token is not None  # a claim always sets the lease
        return self.held.lease_token

    async def write(self, context: FlowContext, end: RunEnd) -> None:
        """Save the run's records and leave the flow as ``end`` says, if still held.

        Raises:
            LeaseExpired: The lease may have run out; nothing was written.
            LogConflict: A record was stored differently by another run.
        """
        self.lease.check()
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
        self.lease.check()
        self.releasing = True
        await self.held.leave((), end)
        if self.held.lost:
            self._lost(end.status)

    def _lost(self, status: TaskStatus) -> None:
        flow = self.held.flow
        self.lease.mark_lost("the flow no longer ran under its lease when the run ended")
        logger.warning(
            "flow %r (%s): lease lost before it could be set %s; nothing of the run's end was "
            "stored (another worker holds the flow, or it no longer exists)",
            flow.flow_id,
            flow.flow_type,
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
    def done(self) -> bool:
        """Whether the run under this claim has ended."""
        return self.task.done()

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


class LeaseKeeper:
    """A worker's leases: starts them at claims, renews them, and stops runs that lose them.

    Args:
        storage: The worker's storage.
        worker_id: The worker's id, for messages.
        lease_seconds: The lease length.
        clock: The worker's clock (the storage measures leases on its time).
    """

    def __init__(
        self, storage: ExecutionLog, worker_id: str, lease_seconds: float, clock: Clock
    ) -> None:
        self._storage = storage
        self._worker_id = worker_id
        self._seconds = lease_seconds
        self._clock = clock
        self.clock = LeaseClock(clock)

    def start(self, sent_at: float, flow: ScheduledFlow) -> Lease | None:
        """The lease of a flow claimed by a claim sent at ``sent_at``; ``None`` if answered late.

        A claim answered after its lease may have run out is dropped: the run does not start
        and nothing is written; the flow is claimed again once its lease ends in storage.
        """
        assert flow.lease_token is not None  # a claim always sets the lease
        lease = Lease(self.clock, self._seconds, sent_at, flow.lease_token)
        if lease.expired:
            logger.warning(
                "worker %s: the claim of flow %r was answered after its lease of %g s may "
                "have run out; not running it (it is claimed again once the lease ends)",
                self._worker_id,
                flow.flow_id,
                self._seconds,
            )
            return None
        return lease

    async def run(self, talk: FlowTalk, run: Awaitable[None]) -> None:
        """Await the run of a flow; if its lease runs out or is lost, it writes nothing more.

        That is said in one log line (by ``talk``); no release is attempted (another worker
        may hold the flow already), so the flow is claimed again once its lease ends in storage.
        """
        try:
            await run
        except LeaseExpired as expired:
            talk.lease_lost(str(expired))


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
        flow = writer.held.flow
        logger.warning(
            "could not release %s flow %r (%s); its lease will expire: %s",
            why,
            flow.flow_id,
            flow.flow_type,
            error,
        )


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
