"""The storage contract every backend implements, and the helpers they share.

A backend stores bytes it is given; serialization happens above it. Every method is atomic on
its own: a backend that needs several writes for one method wraps them in a transaction (or a
Lua script, or one SQL statement). Records in a final state are never changed by a write:
recording is first-writer-wins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from pyergon.core.records import FlowCursor, Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import TaskStatus

if TYPE_CHECKING:
    from pyergon.storage.progress import FlowTransition, SavedProgress

__all__ = [
    "SCHEMA_VERSION",
    "UNCHANGED",
    "ClaimHelpers",
    "ClaimedRun",
    "ExecutionLog",
    "FlowUpdate",
    "StorageLifecycle",
    "check_claim_limit",
    "check_page",
    "status_filter",
    "wait_for_event",
]

SCHEMA_VERSION = 2
"""Version of the stored layout. Backends record it and migrate older layouts forward."""


async def wait_for_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; return whether it was set.

    ``asyncio.wait_for`` on Python 3.11 can swallow a cancellation that arrives as the event is
    set (it returns the result instead), which leaves a cancelled caller running; a timeout
    scope never does.
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def check_page(limit: int, offset: int) -> None:
    """Refuse a negative page size or offset with a clear error (shared by every backend)."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")


def status_filter(
    status: TaskStatus | Collection[TaskStatus] | None,
) -> frozenset[TaskStatus] | None:
    """Normalise a ``status`` argument of ``list_flows`` to a set (``None`` means any)."""
    if status is None:
        return None
    if isinstance(status, str):  # a TaskStatus is a str too
        return frozenset((TaskStatus(status),))
    return frozenset(TaskStatus(value) for value in status)


class FlowUpdate:
    """Marker default meaning "leave this field as it is" in :meth:`ExecutionLog.update_flow`."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = FlowUpdate()


class StorageLifecycle:
    """Mixin giving a backend ``async with`` support on top of ``connect()`` and ``close()``."""

    async def connect(self) -> None:  # pragma: no cover - overridden by every backend
        """Open connections and create or migrate the schema."""
        raise NotImplementedError

    async def close(self) -> None:  # pragma: no cover - overridden by every backend
        """Flush pending writes and release connections."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def check_claim_limit(limit: int) -> None:
    """Refuse a batch claim of fewer than one flow (shared by every backend)."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A flow just claimed, with its records as stored when it was claimed.

    Attributes:
        flow: The flow, as :meth:`ExecutionLog.claim_flows` returns it.
        log: Its records ordered by ``(sequence, sub_sequence)``, read after the claim took
            the flow; empty for a flow that has not run yet. ``None`` if they could not be
            read then: whoever runs the flow reads them first.
    """

    flow: ScheduledFlow
    log: list[Invocation] | None = field(default_factory=list)


class ClaimHelpers:
    """Mixin giving a backend ``claim_flow`` and ``claim_runs`` on top of its batch claim."""

    async def claim_flows(  # pragma: no cover - overridden by every backend
        self,
        worker_id: str,
        flow_types: Collection[str],
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        due_by: float | None = None,
    ) -> list[ScheduledFlow]:
        """Take up to ``limit`` runnable flows; see :meth:`ExecutionLog.claim_flows`."""
        raise NotImplementedError

    async def claim_flow(
        self,
        worker_id: str,
        flow_types: Collection[str],
        *,
        lease_seconds: float,
        now: float,
    ) -> ScheduledFlow | None:
        """Take the next runnable flow; see :meth:`ExecutionLog.claim_flow`."""
        claimed = await self.claim_flows(
            worker_id, flow_types, limit=1, lease_seconds=lease_seconds, now=now
        )
        return claimed[0] if claimed else None

    async def load_invocations(  # pragma: no cover - overridden by every backend
        self, flow_id: str
    ) -> list[Invocation]:
        """Return a flow's records; see :meth:`ExecutionLog.load_invocations`."""
        raise NotImplementedError

    async def claim_runs(
        self,
        worker_id: str,
        flow_types: Collection[str],
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        due_by: float | None = None,
    ) -> list[ClaimedRun]:
        """Claim flows and read their logs; see :meth:`ExecutionLog.claim_runs`.

        This reads the logs one call per flow, at once; a backend that can tell which claimed
        flows have records, or read several logs in one call, overrides it.
        """
        if due_by is None:  # passed only when given, as claim_flow does
            flows = await self.claim_flows(
                worker_id, flow_types, limit=limit, lease_seconds=lease_seconds, now=now
            )
        else:
            flows = await self.claim_flows(
                worker_id,
                flow_types,
                limit=limit,
                lease_seconds=lease_seconds,
                now=now,
                due_by=due_by,
            )
        logs = await asyncio.gather(
            *(self.load_invocations(flow.flow_id) for flow in flows), return_exceptions=True
        )
        return [
            ClaimedRun(flow, None if isinstance(log, BaseException) else log)
            for flow, log in zip(flows, logs, strict=True)
        ]


@runtime_checkable
class ExecutionLog(Protocol):
    """Durable storage for flows, their recorded operations and their signals.

    Groups: lifecycle; flows; invocations (the per-flow log); signals; history; admin.
    """

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open connections and create or migrate the schema; safe to call twice."""
        ...

    async def close(self) -> None:
        """Flush pending writes and release connections; safe to call twice."""
        ...

    # -- flows -------------------------------------------------------------------------------

    async def create_flow(self, flow: ScheduledFlow) -> tuple[ScheduledFlow, bool]:
        """Store ``flow`` unless a flow with its id exists.

        Storing a ``PENDING`` flow notifies waiting workers.

        Returns:
            The stored flow (the existing one if there was one) and whether it was created.
        """
        ...

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        """Return the flow with ``flow_id``, or ``None``."""
        ...

    async def update_flow(
        self,
        flow_id: str,
        *,
        status: TaskStatus,
        result: bytes | FlowUpdate | None = UNCHANGED,
        error: StoredError | FlowUpdate | None = UNCHANGED,
        wake_at: float | FlowUpdate | None = UNCHANGED,
        attempt: int | FlowUpdate = UNCHANGED,
        expected_status: Sequence[TaskStatus] | None = None,
    ) -> ScheduledFlow | None:
        """Change a flow's state.

        Args:
            flow_id: The flow to change.
            status: The new status.
            result: New serialized result, or ``UNCHANGED``.
            error: New :class:`~pyergon.core.StoredError` (or ``None``), or ``UNCHANGED``.
            wake_at: New wake time, or ``UNCHANGED``.
            attempt: New flow-level attempt number, or ``UNCHANGED``.
            expected_status: If given, change the flow only while its status is one of these.

        Leaving ``RUNNING`` clears the lease fields; a ``RUNNING`` flow whose cancellation was
        requested becomes ``CANCELLED`` instead of ``SUSPENDED`` or ``PENDING``. Setting
        ``PENDING`` clears ``cancel_requested`` otherwise. Setting ``PENDING`` (or a wake time)
        notifies waiting workers.

        Returns:
            The updated flow, or ``None`` if it does not exist or its status did not match.
        """
        ...

    # -- queue -------------------------------------------------------------------------------

    async def claim_flows(
        self,
        worker_id: str,
        flow_types: Collection[str],
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        due_by: float | None = None,
    ) -> list[ScheduledFlow]:
        """Atomically take up to ``limit`` runnable flows of ``flow_types``, in queue order.

        Runnable means ``PENDING``; ``SUSPENDED`` with ``wake_at <= due_by`` (a timer or retry
        backoff due by then; ``due_by`` defaults to ``now``, and a worker passes a little more
        to prepare flows whose timers are about to fire); or ``RUNNING`` with
        ``lease_expires_at < now`` (its worker died). Queue order
        is the time a flow became ready (its ``wake_at`` if it was suspended, else 0), then
        ``created_at``, then ``flow_id``. Exactly one caller gets each flow.

        Returns:
            The flows in queue order, each now ``RUNNING`` with ``lease_owner=worker_id``, a
            fresh ``lease_token`` of its own and ``lease_expires_at = now + lease_seconds``,
            ``worker_id=worker_id``; an empty list if nothing is runnable.

        Raises:
            ValueError: ``limit`` is less than 1.
        """
        ...

    async def claim_flow(
        self,
        worker_id: str,
        flow_types: Collection[str],
        *,
        lease_seconds: float,
        now: float,
    ) -> ScheduledFlow | None:
        """Atomically take the next runnable flow: :meth:`claim_flows` with a ``limit`` of 1.

        Returns:
            The flow, as :meth:`claim_flows` returns it, or ``None`` if nothing is runnable.
        """
        ...

    async def claim_runs(
        self,
        worker_id: str,
        flow_types: Collection[str],
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        due_by: float | None = None,
    ) -> list[ClaimedRun]:
        """:meth:`claim_flows`, each flow with its records, read once the claim has taken it.

        A worker runs what it claims from these logs without reading them again. A run that
        lost its lease may still write a record afterwards; the claimant's own write of that
        position then meets it (first writer wins) and the claimant reads the log again.

        Returns:
            One :class:`ClaimedRun` per claimed flow, in queue order. The claim stands even if
            a log cannot be read: that run's ``log`` is ``None``.

        Raises:
            ValueError: ``limit`` is less than 1.
        """
        ...

    async def renew_lease(
        self, flow_id: str, lease_token: str, *, lease_seconds: float, now: float
    ) -> bool:
        """Extend a lease still held with ``lease_token``. Returns whether it was held."""
        ...

    async def release_flow(
        self,
        flow_id: str,
        lease_token: str,
        *,
        status: TaskStatus,
        result: bytes | FlowUpdate | None = UNCHANGED,
        error: StoredError | FlowUpdate | None = UNCHANGED,
        wake_at: float | FlowUpdate | None = UNCHANGED,
        attempt: int | FlowUpdate = UNCHANGED,
        waiting_signals: Collection[str] = (),
        waiting_children: Collection[str] = (),
    ) -> ScheduledFlow | None:
        """Write the state a lease holder leaves a flow in, and drop the lease.

        Only the holder of ``lease_token`` on a ``RUNNING`` flow may do this. Atomically:

        * a flow set ``SUSPENDED`` becomes ``PENDING`` instead when one of
          ``waiting_signals`` has already been stored or one of ``waiting_children`` is final,
          so a wake-up that raced the suspension is not lost;
        * a child set to a final status wakes its parent (``SUSPENDED`` → ``PENDING``);
        * a flow whose cancellation was requested while it ran becomes ``CANCELLED`` instead of
          ``SUSPENDED`` or ``PENDING``.

        Returns:
            The flow as stored, or ``None`` if the token no longer holds the lease.
        """
        ...

    async def request_cancel(self, flow_id: str) -> ScheduledFlow | None:
        """Cancel a flow, at once if it is not running, else at its next step boundary.

        Atomically: a ``PENDING`` or ``SUSPENDED`` flow becomes ``CANCELLED`` (wake time and
        lease cleared, its error left as is, its parent woken as for any final child); a
        ``RUNNING`` flow gets ``cancel_requested`` set and waiting workers are notified; a
        final flow is left unchanged.

        Returns:
            The flow as stored after the call, or ``None`` if it does not exist.
        """
        ...

    async def cancel_requests(self, flow_ids: Collection[str]) -> set[str]:
        """Return those of ``flow_ids`` that are ``RUNNING`` with ``cancel_requested`` set."""
        ...

    # -- wake-ups ----------------------------------------------------------------------------

    async def next_wake_at(self, flow_types: Collection[str] | None = None) -> float | None:
        """Return the earliest ``wake_at`` of a ``SUSPENDED`` flow, or ``None``.

        Args:
            flow_types: Only flows of these types; ``None`` means any type.
        """
        ...

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait until work may be runnable, or ``timeout`` seconds pass.

        Woken by a flow becoming ``PENDING``, a signal, or an earlier wake time being stored,
        in this process or (where the backend can tell) in another.

        Returns:
            Whether a notification (rather than the timeout) ended the wait.
        """
        ...

    # -- invocations -------------------------------------------------------------------------

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        """Return every recorded operation of a flow, ordered by position."""
        ...

    async def get_invocation(
        self, flow_id: str, sequence: int, sub_sequence: int = 0
    ) -> Invocation | None:
        """Return one recorded operation, or ``None``."""
        ...

    async def record_invocation(self, invocation: Invocation) -> Invocation:
        """Store ``invocation`` unless the stored record at its position is already final.

        First writer wins: once a record is ``COMPLETE`` or ``FAILED`` it never changes.

        Returns:
            The record as stored after the call (the earlier final record, if there was one).
        """
        ...

    async def save_progress(
        self,
        flow_id: str,
        records: Sequence[Invocation],
        transition: FlowTransition | None = None,
    ) -> SavedProgress:
        """Store a run's new records, then the state it leaves its flow in, as one change.

        Each record is stored as :meth:`record_invocation` stores it (first writer wins), in
        order. If a record's position already holds a different final record, neither the
        records after it nor the transition are written (``conflict``). Otherwise the
        transition, if given, is applied as :meth:`release_flow` (with its ``lease_token``) or
        :meth:`update_flow` would apply it. Backends that can do so make the whole call one
        transaction; the others make its writes in order, each atomic.

        Returns:
            The stored records, whether there was a conflict, and the flow after the
            transition (see :class:`~pyergon.storage.progress.SavedProgress`).
        """
        ...

    async def delete_failed_invocations(self, flow_id: str) -> int:
        """Delete a flow's ``FAILED`` records so a flow-level retry runs them again.

        Returns:
            How many records were deleted.
        """
        ...

    # -- signals -----------------------------------------------------------------------------

    async def store_signal(self, signal: SignalRecord) -> bool:
        """Store a signal unless one with the same flow id and name exists.

        In the same atomic change, a ``SUSPENDED`` receiving flow that has a ``WAITING_FOR_SIGNAL``
        record of this name becomes ``PENDING`` so a worker resumes it, and waiting workers are
        notified.

        Returns:
            Whether the signal was new.
        """
        ...

    async def get_signal(self, flow_id: str, name: str) -> SignalRecord | None:
        """Return the signal named ``name`` for ``flow_id``, or ``None``."""
        ...

    async def list_signals(self, flow_id: str) -> list[SignalRecord]:
        """Return every signal stored for ``flow_id``, oldest first (then by name)."""
        ...

    # -- history -----------------------------------------------------------------------------

    async def list_flows(
        self,
        *,
        status: TaskStatus | Collection[TaskStatus] | None = None,
        flow_type: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        worker_id: str | None = None,
        parent_flow_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        after: FlowCursor | None = None,
    ) -> list[ScheduledFlow]:
        """Return flows newest first (by ``created_at``, then ``flow_id``), filtered.

        Args:
            status: One status or several.
            flow_type: Only flows of this type.
            created_after: Only flows created at or after this time (epoch seconds).
            created_before: Only flows created before this time (epoch seconds).
            worker_id: Only flows last claimed by this worker.
            parent_flow_id: Only children of this flow.
            limit: At most this many flows (>= 0).
            offset: Skip this many matching flows first (>= 0); prefer ``after`` for deep pages.
            after: Continue after this cursor (see :class:`~pyergon.core.FlowCursor`).

        Raises:
            ValueError: ``limit`` or ``offset`` is negative.
        """
        ...

    async def count_flows(self, *, flow_type: str | None = None) -> dict[TaskStatus, int]:
        """Return how many flows (of ``flow_type``, if given) are in each status.

        Every status is a key, with 0 where no flow has it.
        """
        ...

    # -- admin -------------------------------------------------------------------------------

    async def delete_flow(self, flow_id: str) -> bool:
        """Delete a flow with its records and signals. Returns whether it existed."""
        ...

    async def reset(self) -> None:
        """Delete every flow, record and signal."""
        ...
