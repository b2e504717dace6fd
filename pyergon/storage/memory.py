"""In-memory storage: the full contract without persistence, for tests and notebooks.

Every method runs without awaiting anything, so each is atomic on the event loop that calls it.
"""

from __future__ import annotations

import asyncio
import heapq
import time
import uuid
from collections.abc import Collection, Sequence

from pyergon.core.records import FlowCursor, Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.storage.base import (
    UNCHANGED,
    ClaimHelpers,
    FlowUpdate,
    StorageLifecycle,
    check_claim_limit,
    check_page,
    status_filter,
    wait_for_event,
)
from pyergon.storage.progress import SavesProgressInSteps

__all__ = ["InMemoryExecutionLog"]

_Position = tuple[int, int]


class InMemoryExecutionLog(ClaimHelpers, SavesProgressInSteps, StorageLifecycle):
    """Keeps flows, records and signals in dictionaries of this process.

    Usable without ``connect()``; ``close()`` keeps the data so a notebook can reconnect.
    """

    def __init__(self) -> None:
        self._flows: dict[str, ScheduledFlow] = {}
        self._invocations: dict[str, dict[_Position, Invocation]] = {}
        self._signals: dict[tuple[str, str], SignalRecord] = {}
        self._work = asyncio.Event()

    def __repr__(self) -> str:
        return f"InMemoryExecutionLog(flows={len(self._flows)})"

    async def connect(self) -> None:
        """Nothing to open; present for the shared lifecycle."""

    async def close(self) -> None:
        """Nothing to release; the data stays for as long as this object lives."""

    # -- flows -------------------------------------------------------------------------------

    async def create_flow(self, flow: ScheduledFlow) -> tuple[ScheduledFlow, bool]:
        """Store ``flow`` unless one with its id exists."""
        existing = self._flows.get(flow.flow_id)
        if existing is not None:
            return existing, False
        self._flows[flow.flow_id] = flow
        if flow.status is TaskStatus.PENDING:
            self._work.set()
        return flow, True

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        """Return the flow with ``flow_id``, or ``None``."""
        return self._flows.get(flow_id)

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
        """Change a flow's state; see :meth:`ExecutionLog.update_flow`."""
        flow = self._flows.get(flow_id)
        if flow is None or (expected_status is not None and flow.status not in expected_status):
            return None
        status = _cancelled_instead(flow, status)
        updated = self._change(
            flow, status=status, result=result, error=error, wake_at=wake_at, attempt=attempt
        )
        if status.is_final and updated.parent_flow_id is not None:
            self._wake(updated.parent_flow_id)
        return updated

    def _change(
        self,
        flow: ScheduledFlow,
        *,
        status: TaskStatus,
        result: bytes | FlowUpdate | None = UNCHANGED,
        error: StoredError | FlowUpdate | None = UNCHANGED,
        wake_at: float | FlowUpdate | None = UNCHANGED,
        attempt: int | FlowUpdate = UNCHANGED,
    ) -> ScheduledFlow:
        changes: dict[str, object] = {"status": status, "updated_at": time.time()}
        for name, value in (
            ("result", result),
            ("error", error),
            ("wake_at", wake_at),
            ("attempt", attempt),
        ):
            if value is not UNCHANGED:
                changes[name] = value
        if status is not TaskStatus.RUNNING:
            changes.update(lease_owner=None, lease_token=None, lease_expires_at=None)
        if status is TaskStatus.PENDING:
            changes["cancel_requested"] = False
        updated = flow.replace(**changes)
        self._flows[flow.flow_id] = updated
        if status is TaskStatus.PENDING or (
            status is TaskStatus.SUSPENDED and updated.wake_at is not None
        ):
            self._work.set()
        return updated

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
        """Take up to ``limit`` runnable flows of ``flow_types``, in queue order."""
        check_claim_limit(limit)
        due = now if due_by is None else max(due_by, now)
        runnable = [
            flow
            for flow in self._flows.values()
            if flow.flow_type in flow_types and _is_runnable(flow, now, due)
        ]
        claimed = []
        for chosen in heapq.nsmallest(limit, runnable, key=_queue_order):
            flow = chosen.replace(
                status=TaskStatus.RUNNING,
                updated_at=time.time(),
                lease_owner=worker_id,
                lease_token=uuid.uuid4().hex,
                lease_expires_at=now + lease_seconds,
                worker_id=worker_id,
            )
            self._flows[flow.flow_id] = flow
            claimed.append(flow)
        return claimed

    async def renew_lease(
        self, flow_id: str, lease_token: str, *, lease_seconds: float, now: float
    ) -> bool:
        """Extend a lease still held with ``lease_token``."""
        flow = self._flows.get(flow_id)
        if flow is None or flow.status is not TaskStatus.RUNNING:
            return False
        if flow.lease_token != lease_token:
            return False
        self._flows[flow_id] = flow.replace(lease_expires_at=now + lease_seconds)
        return True

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
        """Leave a held flow in ``status`` and drop the lease; see the protocol."""
        flow = self._flows.get(flow_id)
        if flow is None or flow.status is not TaskStatus.RUNNING:
            return None
        if flow.lease_token != lease_token:
            return None
        if status is TaskStatus.SUSPENDED and self._wake_already_due(
            flow_id, waiting_signals, waiting_children
        ):
            status = TaskStatus.PENDING
        status = _cancelled_instead(flow, status)
        updated = self._change(
            flow, status=status, result=result, error=error, wake_at=wake_at, attempt=attempt
        )
        if status.is_final and updated.parent_flow_id is not None:
            self._wake(updated.parent_flow_id)
        return updated

    def _wake_already_due(
        self, flow_id: str, signals: Collection[str], children: Collection[str]
    ) -> bool:
        if any((flow_id, name) in self._signals for name in signals):
            return True
        return any(
            (child := self._flows.get(child_id)) is not None and child.status.is_final
            for child_id in children
        )

    async def request_cancel(self, flow_id: str) -> ScheduledFlow | None:
        """Cancel a flow now, or at its next step boundary if it is running."""
        flow = self._flows.get(flow_id)
        if flow is None or flow.status.is_final:
            return flow
        if flow.status is TaskStatus.RUNNING:
            requested = flow.replace(cancel_requested=True, updated_at=time.time())
            self._flows[flow_id] = requested
            self._work.set()
            return requested
        cancelled = self._change(flow, status=TaskStatus.CANCELLED, wake_at=None)
        if cancelled.parent_flow_id is not None:
            self._wake(cancelled.parent_flow_id)
        return cancelled

    async def cancel_requests(self, flow_ids: Collection[str]) -> set[str]:
        """Return the running flows among ``flow_ids`` whose cancellation was requested."""
        return {
            flow_id
            for flow_id in flow_ids
            if (flow := self._flows.get(flow_id)) is not None
            and flow.status is TaskStatus.RUNNING
            and flow.cancel_requested
        }

    def _wake(self, flow_id: str) -> None:
        flow = self._flows.get(flow_id)
        if flow is not None and flow.status is TaskStatus.SUSPENDED:
            self._change(flow, status=TaskStatus.PENDING, wake_at=None)

    # -- wake-ups ----------------------------------------------------------------------------

    async def next_wake_at(self, flow_types: Collection[str] | None = None) -> float | None:
        """Return the earliest wake time of a suspended flow (of ``flow_types``, if given)."""
        times = [
            flow.wake_at
            for flow in self._flows.values()
            if flow.status is TaskStatus.SUSPENDED
            and flow.wake_at is not None
            and (flow_types is None or flow.flow_type in flow_types)
        ]
        return min(times, default=None)

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait for a notification from this storage object, or ``timeout`` seconds."""
        if not await wait_for_event(self._work, timeout):
            return False
        self._work.clear()
        return True

    # -- invocations -------------------------------------------------------------------------

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        """Return a flow's records ordered by position."""
        records = self._invocations.get(flow_id, {})
        return [records[position] for position in sorted(records)]

    async def get_invocation(
        self, flow_id: str, sequence: int, sub_sequence: int = 0
    ) -> Invocation | None:
        """Return one record, or ``None``."""
        return self._invocations.get(flow_id, {}).get((sequence, sub_sequence))

    async def record_invocation(self, invocation: Invocation) -> Invocation:
        """Store ``invocation`` unless a final record holds its position."""
        records = self._invocations.setdefault(invocation.flow_id, {})
        position = (invocation.sequence, invocation.sub_sequence)
        existing = records.get(position)
        if existing is not None and existing.is_final:
            return existing
        records[position] = invocation
        return invocation

    async def delete_failed_invocations(self, flow_id: str) -> int:
        """Delete a flow's ``FAILED`` records."""
        records = self._invocations.get(flow_id, {})
        failed = [
            position
            for position, record in records.items()
            if record.status is InvocationStatus.FAILED
        ]
        for position in failed:
            del records[position]
        return len(failed)

    # -- signals -----------------------------------------------------------------------------

    async def store_signal(self, signal: SignalRecord) -> bool:
        """Store a signal unless one with the same flow id and name exists."""
        key = (signal.flow_id, signal.name)
        if key in self._signals:
            return False
        self._signals[key] = signal
        if self._waits_for_signal(signal.flow_id, signal.name):
            self._wake(signal.flow_id)
        return True

    def _waits_for_signal(self, flow_id: str, name: str) -> bool:
        return any(
            record.kind is OperationKind.SIGNAL
            and record.name == name
            and record.status is InvocationStatus.WAITING_FOR_SIGNAL
            for record in self._invocations.get(flow_id, {}).values()
        )

    async def get_signal(self, flow_id: str, name: str) -> SignalRecord | None:
        """Return a stored signal, or ``None``."""
        return self._signals.get((flow_id, name))

    async def list_signals(self, flow_id: str) -> list[SignalRecord]:
        """Return a flow's signals, oldest first."""
        signals = [signal for (owner, _), signal in self._signals.items() if owner == flow_id]
        return sorted(signals, key=lambda signal: (signal.sent_at, signal.name))

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
        """Return flows newest first, filtered; see the protocol."""
        check_page(limit, offset)
        statuses = status_filter(status)
        flows = [
            flow
            for flow in self._flows.values()
            if (statuses is None or flow.status in statuses)
            and (flow_type is None or flow.flow_type == flow_type)
            and (created_after is None or flow.created_at >= created_after)
            and (created_before is None or flow.created_at < created_before)
            and (worker_id is None or flow.worker_id == worker_id)
            and (parent_flow_id is None or flow.parent_flow_id == parent_flow_id)
            and (
                after is None or (flow.created_at, flow.flow_id) < (after.created_at, after.flow_id)
            )
        ]
        flows.sort(key=lambda flow: (flow.created_at, flow.flow_id), reverse=True)
        return flows[offset : offset + limit]

    async def count_flows(self, *, flow_type: str | None = None) -> dict[TaskStatus, int]:
        """Return how many flows are in each status."""
        counts = dict.fromkeys(TaskStatus, 0)
        for flow in self._flows.values():
            if flow_type is None or flow.flow_type == flow_type:
                counts[flow.status] += 1
        return counts

    # -- admin -------------------------------------------------------------------------------

    async def delete_flow(self, flow_id: str) -> bool:
        """Delete a flow with its records and signals."""
        existed = self._flows.pop(flow_id, None) is not None
        self._invocations.pop(flow_id, None)
        for key in [key for key in self._signals if key[0] == flow_id]:
            del self._signals[key]
        return existed

    async def reset(self) -> None:
        """Delete everything."""
        self._flows.clear()
        self._invocations.clear()
        self._signals.clear()


def _cancelled_instead(flow: ScheduledFlow, status: TaskStatus) -> TaskStatus:
    """A running flow asked to cancel ends ``CANCELLED`` when it would suspend or requeue."""
    waiting = status in (TaskStatus.SUSPENDED, TaskStatus.PENDING)
    if flow.status is TaskStatus.RUNNING and flow.cancel_requested and waiting:
        return TaskStatus.CANCELLED
    return status


def _is_runnable(flow: ScheduledFlow, now: float, due_by: float) -> bool:
    if flow.status is TaskStatus.PENDING:
        return True
    if flow.status is TaskStatus.SUSPENDED:
        return flow.wake_at is not None and flow.wake_at <= due_by
    if flow.status is TaskStatus.RUNNING:
        return flow.lease_expires_at is not None and flow.lease_expires_at < now
    return False


def _queue_order(flow: ScheduledFlow) -> tuple[float, float, str]:
    ready_at = flow.wake_at if flow.status is TaskStatus.SUSPENDED and flow.wake_at else 0.0
    return (ready_at, flow.created_at, flow.flow_id)
