"""In-memory storage: the full contract without persistence, for tests and notebooks.

Every method runs without awaiting anything, so each is atomic on the event loop that calls it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.storage.base import UNCHANGED, FlowUpdate, StorageLifecycle

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
        return flow, True

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        """Return the flow with ``flow_id``, or ``None``."""
        return self._flows.get(flow_id)

    async def update_flow(
        self,
        flow_id: str,
        *,
        status: TaskStatus,
        result: bytes | None | FlowUpdate = UNCHANGED,
        error: StoredError | None | FlowUpdate = UNCHANGED,
        wake_at: float | None | FlowUpdate = UNCHANGED,
        attempt: int | FlowUpdate = UNCHANGED,
        expected_status: Sequence[TaskStatus] | None = None,
    ) -> ScheduledFlow | None:
        """Change a flow's state; see :meth:`ExecutionLog.update_flow`."""
        flow = self._flows.get(flow_id)
        if flow is None or (expected_status is not None and flow.status not in expected_status):
            return None
        changes: dict[str, object] = {"status": status, "updated_at": time.time()}
        for name, value in (
            ("result", result),
            ("error", error),
            ("wake_at", wake_at),
            ("attempt", attempt),
        ):
            if value is not UNCHANGED:
                changes[name] = value
        updated = dataclasses.replace(flow, **changes)  # type: ignore[arg-type]
        self._flows[flow_id] = updated
        return updated

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
        return True

    async def get_signal(self, flow_id: str, name: str) -> SignalRecord | None:
        """Return a stored signal, or ``None``."""
        return self._signals.get((flow_id, name))

    # -- history -----------------------------------------------------------------------------

    async def list_flows(
        self,
        *,
        status: TaskStatus | None = None,
        flow_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[ScheduledFlow]:
        """Return flows, newest first, optionally filtered."""
        flows = [
            flow
            for flow in self._flows.values()
            if (status is None or flow.status is status)
            and (flow_type is None or flow.flow_type == flow_type)
        ]
        flows.sort(key=lambda flow: (flow.created_at, flow.flow_id), reverse=True)
        return flows[offset : offset + limit]

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
