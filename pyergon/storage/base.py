"""The storage contract every backend implements, and the helpers they share.

A backend stores bytes it is given; serialization happens above it. Every method is atomic on
its own: a backend that needs several writes for one method wraps them in a transaction (or a
Lua script, or one SQL statement). Records in a final state are never changed by a write:
recording is first-writer-wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import TaskStatus

__all__ = [
    "SCHEMA_VERSION",
    "UNCHANGED",
    "ExecutionLog",
    "FlowUpdate",
    "StorageLifecycle",
]

SCHEMA_VERSION = 1
"""Version of the stored layout. Backends record it and migrate older layouts forward."""


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
        result: bytes | None | FlowUpdate = UNCHANGED,
        error: StoredError | None | FlowUpdate = UNCHANGED,
        wake_at: float | None | FlowUpdate = UNCHANGED,
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

        Returns:
            The updated flow, or ``None`` if it does not exist or its status did not match.
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

    async def delete_failed_invocations(self, flow_id: str) -> int:
        """Delete a flow's ``FAILED`` records so a flow-level retry runs them again.

        Returns:
            How many records were deleted.
        """
        ...

    # -- signals -----------------------------------------------------------------------------

    async def store_signal(self, signal: SignalRecord) -> bool:
        """Store a signal unless one with the same flow id and name exists.

        Returns:
            Whether the signal was new.
        """
        ...

    async def get_signal(self, flow_id: str, name: str) -> SignalRecord | None:
        """Return the signal named ``name`` for ``flow_id``, or ``None``."""
        ...

    # -- history -----------------------------------------------------------------------------

    async def list_flows(
        self,
        *,
        status: TaskStatus | None = None,
        flow_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[ScheduledFlow]:
        """Return flows, newest first, optionally filtered by status and type."""
        ...

    # -- admin -------------------------------------------------------------------------------

    async def delete_flow(self, flow_id: str) -> bool:
        """Delete a flow with its records and signals. Returns whether it existed."""
        ...

    async def reset(self) -> None:
        """Delete every flow, record and signal."""
        ...
