"""In-memory storage: the full contract without persistence, for tests and notebooks.

Every method runs without awaiting anything, so each is atomic on the event loop that calls it.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Collection, Mapping

from pyergon.core.changes import ABSENT, Applied, Change, stored_as_given
from pyergon.core.query import ClaimRequest, FlowQuery
from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.transitions import (
    claim_changes,
    holds,
    is_runnable,
    new_lease_token,
    queue_order,
)
from pyergon.core.workers import Beat, WorkerRecord
from pyergon.storage._artifact_references import payloads_of, referenced_digests
from pyergon.storage.base import (
    ClaimedRun,
    StorageLifecycle,
    wait_for_event,
)

__all__ = ["InMemoryExecutionLog"]

_Position = tuple[int, int]


class InMemoryExecutionLog(StorageLifecycle):
    """Keeps flows, records and signals in dictionaries of this process.

    Usable without ``connect()``; ``close()`` keeps the data so a notebook can reconnect.
    """

    def __init__(self) -> None:
        self._flows: dict[str, ScheduledFlow] = {}
        self._invocations: dict[str, dict[_Position, Invocation]] = {}
        self._signals: dict[tuple[str, str], SignalRecord] = {}
        self._workers: dict[str, WorkerRecord] = {}
        self._work = asyncio.Event()

    def __repr__(self) -> str:
        return f"InMemoryExecutionLog(flows={len(self._flows)})"

    async def connect(self) -> None:
        """Nothing to open; present for the shared lifecycle."""

    async def close(self) -> None:
        """Nothing to release; the data stays for as long as this object lives."""

    # -- flows and changes -------------------------------------------------------------------

    async def create_flow(self, flow: ScheduledFlow) -> tuple[ScheduledFlow, bool]:
        """Store ``flow`` unless one with its id exists."""
        existing = self._flows.get(flow.flow_id)
        if existing is not None:
            return existing, False
        self._flows[flow.flow_id] = flow
        if flow.status is TaskStatus.PENDING:
            self._work.set()
        return flow, True

    async def apply(self, change: Change) -> Applied:
        """Apply ``change`` atomically; see :meth:`ExecutionLog.apply`."""
        for write in change.writes:
            if write.expected_version is None:
                continue
            stored = self._flows.get(write.flow_id)
            version = ABSENT if stored is None else stored.version
            if version != write.expected_version:
                return Applied(moved=write.flow_id)
        if change.held is not None:
            flow_id, lease_token = change.held
            if not holds(self._flows.get(flow_id), lease_token):
                return Applied(moved=flow_id)
        for flow_id in change.forget_failed:
            records = self._invocations.get(flow_id, {})
            for position in [p for p, r in records.items() if r.status is InvocationStatus.FAILED]:
                del records[position]
        for forget in change.forget:
            records = self._invocations.get(forget.flow_id, {})
            for position in [p for p in records if p[0] in forget.sequences]:
                del records[position]
        stored_records: list[Invocation] = []
        for record in change.records:
            stored_record = self._record(record)
            stored_records.append(stored_record)
            if not stored_as_given(record, stored_record):
                return Applied(stored_records, record_conflict=True)
        new_signals = 0
        for signal in change.signals:
            key = (signal.flow_id, signal.name)
            if key not in self._signals:
                self._signals[key] = signal
                new_signals += 1
        for write in change.writes:
            flow = self._flows.get(write.flow_id)
            if flow is not None:
                self._flows[write.flow_id] = write.applied_to(flow)
        if change.notify:
            self._work.set()
        return Applied(stored_records, signals_stored=new_signals)

    def _record(self, invocation: Invocation) -> Invocation:
        records = self._invocations.setdefault(invocation.flow_id, {})
        position = (invocation.sequence, invocation.sub_sequence)
        existing = records.get(position)
        if existing is not None and existing.is_final:
            return existing
        records[position] = invocation
        return invocation

    # -- the queue ---------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> list[ClaimedRun]:
        """Take up to ``request.limit`` runnable flows of its types, in queue order."""
        runnable = [
            flow
            for flow in self._flows.values()
            if flow.flow_type in request.flow_types
            and is_runnable(flow, request.now, request.due_by)
        ]
        claimed = []
        for chosen in heapq.nsmallest(request.limit, runnable, key=queue_order):
            changes = claim_changes(
                request, lease_token=new_lease_token(), at=time.time(), flow=chosen
            )
            flow = chosen.replace(**changes, version=chosen.version + 1)
            self._flows[flow.flow_id] = flow
            claimed.append(ClaimedRun(flow, self._log(flow.flow_id)))
        return claimed

    async def renew_leases(
        self, leases: Mapping[str, str], *, lease_seconds: float, now: float
    ) -> set[str]:
        """Extend the leases still held with their tokens."""
        held = set()
        for flow_id, lease_token in leases.items():
            flow = self._flows.get(flow_id)
            if flow is None or flow.status is not TaskStatus.RUNNING:
                continue
            if flow.lease_token != lease_token:
                continue
            self._flows[flow_id] = flow.replace(lease_expires_at=now + lease_seconds)
            held.add(flow_id)
        return held

    async def cancel_requests(self, flow_ids: Collection[str]) -> set[str]:
        """Return the running flows among ``flow_ids`` whose cancellation was requested."""
        return {
            flow_id
            for flow_id in flow_ids
            if (flow := self._flows.get(flow_id)) is not None
            and flow.status is TaskStatus.RUNNING
            and flow.cancel_requested
        }

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

    # -- reads -------------------------------------------------------------------------------

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        """Return the flow with ``flow_id``, or ``None``."""
        return self._flows.get(flow_id)

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        """Return a flow's records ordered by position."""
        return self._log(flow_id)

    def _log(self, flow_id: str) -> list[Invocation]:
        records = self._invocations.get(flow_id, {})
        return [records[position] for position in sorted(records)]

    async def list_signals(self, flow_id: str) -> list[SignalRecord]:
        """Return a flow's signals, oldest first."""
        signals = [signal for (owner, _), signal in self._signals.items() if owner == flow_id]
        return sorted(signals, key=lambda signal: (signal.sent_at, signal.name))

    # -- history -----------------------------------------------------------------------------

    async def list_flows(self, query: FlowQuery | None = None) -> list[ScheduledFlow]:
        """Return the page of flows ``query`` asks for; see the protocol."""
        return (query or FlowQuery()).page_of(self._flows.values())

    async def count_flows(
        self,
        *,
        flow_type: str | None = None,
        created_after: float | None = None,
        flow_ids: Collection[str] | None = None,
    ) -> dict[TaskStatus, int]:
        """Return how many flows are in each status; see the protocol."""
        query = FlowQuery(flow_type=flow_type, created_after=created_after, flow_ids=flow_ids)
        counts = dict.fromkeys(TaskStatus, 0)
        for flow in self._flows.values():
            if query.matches(flow):
                counts[flow.status] += 1
        return counts

    # -- admin -------------------------------------------------------------------------------

    async def artifact_references(self) -> set[str]:
        """Return the digests of the artifacts stored payloads name; see the protocol."""
        records = (record for log in self._invocations.values() for record in log.values())
        return referenced_digests(
            payloads_of(self._flows.values(), records, self._signals.values())
        )

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
        self._workers.clear()

    # -- workers -----------------------------------------------------------------------------

    async def beat(
        self,
        worker: WorkerRecord,
        leases: Mapping[str, str],
        *,
        lease_seconds: float,
        now: float,
    ) -> Beat:
        """Renew ``leases`` and the worker's record if it is still its incarnation's."""
        # Through renew_leases (which never waits, so this stays atomic): a subclass that
        # changes renewals changes beats too.
        held = await self.renew_leases(leases, lease_seconds=lease_seconds, now=now)
        stored = self._workers.get(worker.worker_id)
        registered = stored is not None and stored.incarnation == worker.incarnation
        if stored is not None and registered:
            self._workers[worker.worker_id] = stored.beating(
                worker.last_beat, worker.flow_types, worker.activity
            )
        return Beat(frozenset(held), registered)

    async def put_worker(self, worker: WorkerRecord, *, replacing: str | None) -> bool:
        """Store ``worker`` if its id's record has incarnation ``replacing`` (or none)."""
        stored = self._workers.get(worker.worker_id)
        if (None if stored is None else stored.incarnation) != replacing:
            return False
        self._workers[worker.worker_id] = worker
        return True

    async def get_worker(self, worker_id: str) -> WorkerRecord | None:
        """Return the record of ``worker_id``, or ``None``."""
        return self._workers.get(worker_id)

    async def list_workers(self) -> list[WorkerRecord]:
        """Return every worker record, by id."""
        return [self._workers[worker_id] for worker_id in sorted(self._workers)]

    async def delete_worker(self, worker_id: str) -> bool:
        """Delete the record of ``worker_id``."""
        return self._workers.pop(worker_id, None) is not None
