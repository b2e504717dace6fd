"""The storage contract every backend implements, and the small helpers they share.

A backend stores what it is given and holds no rule of a flow's life: the state machine in
:mod:`pyergon.core.transitions` decides every change, and :mod:`pyergon.storage._flows` applies it
through :meth:`ExecutionLog.apply`, guarded by the flow's ``version``. A backend keeps its
native strengths (one transaction, one Lua script, one SQL statement, pub/sub, LISTEN/NOTIFY).
Every method is atomic on its own. Records in a final state are never changed by a write:
recording is first-writer-wins. :mod:`pyergon.testing` holds the suite that checks a backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from pyergon.core.changes import Applied, Change
from pyergon.core.query import ClaimRequest, FlowQuery
from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord
from pyergon.core.status import TaskStatus
from pyergon.core.workers import Beat, WorkerRecord
from pyergon.errors import CorruptStorageError
from pyergon.serialization.artifacts import ArtifactStore

__all__ = [
    "SCHEMA_VERSION",
    "ClaimedRun",
    "ExecutionLog",
    "ReopenableLog",
    "StorageLifecycle",
    "WorkerRegistry",
    "damaged_run",
    "wait_for_event",
]

SCHEMA_VERSION = 7
"""Version of the stored layout. Backends record it and migrate older layouts forward.

Version 2 added ``worker_id`` and ``cancel_requested``; version 3 added ``version``; version 4
added the workers' records and each flow's ``lease_losses`` and ``last_lost_by``; version 5 a
record's ``output`` and ``progress`` and a worker's ``activity``; version 6 a record's
``code_hash`` (``""`` in records written before); version 7 a record's ``earlier_attempts``
(none in records written before)."""


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


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A flow just claimed, with its records as stored when it was claimed.

    Attributes:
        flow: The flow as the claim left it.
        log: Its records ordered by ``(sequence, sub_sequence)``, read after the claim took
            the flow; empty for a flow that has not run yet. ``None`` if they could not be
            read then: whoever runs the flow reads them first.
        damage: Why the flow cannot run as stored: one of its fields cannot be read.
            ``flow`` then holds what could be read (at least what the claim wrote), and whoever
            claimed it fails it with this error, so one damaged flow never stops the queue.
            (Records that cannot be read give ``log=None`` instead: they may be read later.)
    """

    flow: ScheduledFlow
    log: list[Invocation] | None = field(default_factory=list)
    damage: CorruptStorageError | None = None


_UNREADABLE_PLACEHOLDERS: dict[str, object] = {
    "flow_type": "",
    "payload": b"",
    "created_at": 0.0,
    "updated_at": 0.0,
}
"""Values of the fields a flow cannot lack, for a damaged flow that lacks them."""


def damaged_run(readable: Mapping[str, object], damage: CorruptStorageError) -> ClaimedRun:
    """The run of a claimed flow that cannot run as stored, for its claimer to fail.

    A backend whose claim took a flow it cannot read returns this instead of raising, which
    would leave the whole batch leased to nobody (shared by every backend).

    Args:
        readable: The fields of the flow that could be read, by name; they include the
            claim's own (``flow_id``, ``status``, the lease, ``version``).
        damage: What cannot be read, naming the flow and the field or record.

    Returns:
        A run without a log whose ``flow`` has placeholders for required fields it lacks.
    """
    flow = ScheduledFlow(**{**_UNREADABLE_PLACEHOLDERS, **readable})  # type: ignore[arg-type]
    return ClaimedRun(flow, None, damage)


class StorageLifecycle:
    """Base class giving a backend ``async with`` on top of ``connect()`` and ``close()``."""

    shared_store = False
    """Whether other machines may write the storage (a server, not a file of this machine's).
    On shared storage unsigned pickle needs an explicit choice (see
    :func:`pyergon.serialization.check_serializer`)."""

    artifacts: ArtifactStore | None = None
    """Where values too large for the log are kept (see :mod:`pyergon.serialization.artifacts`);
    ``None`` keeps them inline."""

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
    """Durable storage for flows, their records and their signals: seventeen primitives.

    Groups: lifecycle; flows and changes; the queue; reads; admin.
    """

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open connections and create or migrate the schema; safe to call twice.

        Migration is safe when several processes connect at once.
        """
        ...

    async def close(self) -> None:
        """Flush pending writes and release connections; safe to call twice."""
        ...

    # -- flows and changes -------------------------------------------------------------------

    async def create_flow(self, flow: ScheduledFlow) -> tuple[ScheduledFlow, bool]:
        """Store ``flow`` (with its ``version``, normally 1) unless a flow with its id exists.

        Storing a ``PENDING`` flow notifies waiting workers.

        Returns:
            The stored flow (the existing one if there was one) and whether it was created.
        """
        ...

    async def apply(self, change: Change) -> Applied:
        """Apply ``change`` atomically, in the order :class:`~pyergon.core.changes.Change` gives.

        Every :class:`~pyergon.core.changes.FlowWrite` moves its flow's ``version`` on by one.

        Returns:
            What was written; see :class:`~pyergon.core.changes.Applied`.
        """
        ...

    # -- the queue ---------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> list[ClaimedRun]:
        """Atomically take up to ``request.limit`` runnable flows of its types, with their logs.

        Runnable and queue order are :func:`~pyergon.core.transitions.is_runnable` (with
        ``request.due_by``) and :func:`~pyergon.core.transitions.queue_order`. Each taken flow
        gets :func:`~pyergon.core.transitions.claim_changes` with a token of its own
        (:func:`~pyergon.core.transitions.new_lease_token`) and its version moves on. Exactly
        one caller gets each flow. Its records are read once the claim has taken it.

        Returns:
            One :class:`ClaimedRun` per flow, in queue order. The claim stands even if a log
            cannot be read: that run's ``log`` is ``None``. It never raises once it has taken
            flows: a flow whose fields cannot be read comes with its ``damage`` (see
            :func:`damaged_run`), and what keeps a flow from being taken at all is left out
            (and logged), so one damaged flow never stops the queue.
        """
        ...

    async def renew_leases(
        self, leases: Mapping[str, str], *, lease_seconds: float, now: float
    ) -> set[str]:
        """Extend the leases of ``leases`` (flow id to lease token) still held with their token.

        The new expiry is ``now + lease_seconds``; a renewal does not move the version.

        Returns:
            The ids of the flows whose lease was held (and is now renewed).
        """
        ...

    async def cancel_requests(self, flow_ids: Collection[str]) -> set[str]:
        """Return those of ``flow_ids`` that are ``RUNNING`` with ``cancel_requested`` set."""
        ...

    async def next_wake_at(self, flow_types: Collection[str] | None = None) -> float | None:
        """Return the earliest ``wake_at`` of a ``SUSPENDED`` flow (of ``flow_types``), if any."""
        ...

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait until work may be runnable, or ``timeout`` seconds pass.

        Woken by a new ``PENDING`` flow or a change with ``notify``, in this process or (where
        the backend can tell) in another.

        Returns:
            Whether a notification (rather than the timeout) ended the wait.
        """
        ...

    # -- reads -------------------------------------------------------------------------------

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        """Return the flow with ``flow_id``, or ``None``.

        Raises:
            CorruptStorageError: A stored field of the flow cannot be read; the message names
                the flow and the field.
        """
        ...

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        """Return every record of a flow, ordered by ``(sequence, sub_sequence)``.

        Raises:
            CorruptStorageError: A record cannot be read; the message names the flow, the
                record and the field.
        """
        ...

    async def list_signals(self, flow_id: str) -> list[SignalRecord]:
        """Return every signal stored for ``flow_id``, oldest first (then by name)."""
        ...

    async def list_flows(self, query: FlowQuery | None = None) -> list[ScheduledFlow]:
        """Return the page of flows ``query`` asks for, newest first (by ``created_at``, then id).

        Args:
            query: The filters and the page (see :class:`~pyergon.core.FlowQuery`, which
                validates them); ``None`` means ``FlowQuery()``, the newest 100 flows.

        Raises:
            CorruptStorageError: A flow of the page cannot be read (see :meth:`get_flow`).
        """
        ...

    async def count_flows(
        self,
        *,
        flow_type: str | None = None,
        created_after: float | None = None,
        flow_ids: Collection[str] | None = None,
    ) -> dict[TaskStatus, int]:
        """Return how many flows (of ``flow_type``, if given) are in each status.

        Every status is a key, with 0 where no flow has it. With ``created_after`` (epoch
        seconds), only flows created at or after it count, and a backend reads no flow created
        before (an index by status and creation time serves it), so a monitor of recent flows
        stays cheap on a large log. With ``flow_ids``, only those flows count, read by id.

        Raises:
            InvalidFlowIdError: One of ``flow_ids`` cannot be an id (see
                :class:`~pyergon.core.FlowQuery`).
        """
        ...

    async def artifact_references(self) -> set[str]:
        """Return the hex digests of every artifact that a stored payload names.

        The payloads are every flow's inputs and result, every record's result and every
        stored signal's payload (errors never name artifacts). A backend picks those that
        start with the reference tag where they are stored (a filter in SQL, a script per
        batch of flows in Redis, never one long blocking command) and parses them with
        :func:`~pyergon.storage._artifact_references.referenced_digests`. The collector
        (:func:`pyergon._artifact_gc.collect_artifacts`) removes only what no payload names.
        """
        ...

    # -- admin -------------------------------------------------------------------------------

    async def delete_flow(self, flow_id: str) -> bool:
        """Delete a flow with its records and signals. Returns whether it existed."""
        ...

    async def reset(self) -> None:
        """Delete every flow, record and signal (and every worker record, where kept)."""
        ...


@runtime_checkable
class WorkerRegistry(Protocol):
    """Optional: records of the workers serving a log, kept fresh by their heartbeats.

    A backend with it lets a killed worker's flows run elsewhere within a few beats, lets a
    restarted worker take its previous incarnation's flows at once, refuses two live processes
    under one id and lists workers (``pyergon workers``). The rules are
    :mod:`pyergon.core.workers`'; a backend only stores records.
    """

    async def beat(
        self,
        worker: WorkerRecord,
        leases: Mapping[str, str],
        *,
        lease_seconds: float,
        now: float,
    ) -> Beat:
        """One heartbeat, atomically and in one round trip where the backend can.

        Renews ``leases`` as :meth:`ExecutionLog.renew_leases` does and, if the stored record
        of ``worker.worker_id`` has ``worker.incarnation``, stores ``worker.last_beat``,
        ``worker.flow_types`` and ``worker.activity`` on it (an empty activity clears the
        stored one).

        Returns:
            The flows renewed, and whether the record was still this incarnation's.
        """
        ...

    async def put_worker(self, worker: WorkerRecord, *, replacing: str | None) -> bool:
        """Store ``worker`` whole if its id's record has incarnation ``replacing`` now.

        ``replacing=None`` stores it only if no record has its id. A compare-and-set: of two
        processes registering over one record, one wins.

        Returns:
            Whether it was stored.
        """
        ...

    async def get_worker(self, worker_id: str) -> WorkerRecord | None:
        """Return the record of ``worker_id``, or ``None``."""
        ...

    async def list_workers(self) -> list[WorkerRecord]:
        """Return every worker record, by worker id."""
        ...

    async def delete_worker(self, worker_id: str) -> bool:
        """Delete the record of ``worker_id``. Returns whether it existed."""
        ...


@runtime_checkable
class ReopenableLog(Protocol):
    """Optional: a log that can open a second handle on the same store for another thread.

    A worker beats from a thread of its own, on that thread's event loop and connection, so
    a flow's step that blocks the worker's loop does not let its leases run out.
    """

    def reopened(self) -> ExecutionLog:
        """A new, unconnected log on the same store with the same settings."""
        ...
