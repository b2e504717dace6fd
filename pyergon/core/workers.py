"""Workers as storage knows them: one record per worker id, kept fresh by its heartbeats.

A worker process registers under its id when it starts, with an *incarnation* of its own (a
fresh token per start), and beats while it serves: each beat renews the leases of the flows it
runs and its record's ``last_beat`` in one round trip. The rules here say what a record means
(:func:`worker_state`) and whether a starting worker may take an id whose record is already
there (:func:`registration_verdict`); backends only store records
(:class:`~pyergon.storage.base.WorkerRegistry`). Each beat also stores what the worker runs at
that moment (:class:`StepActivity`), so another process can show running steps and their
progress (:func:`running_steps`).
"""

from __future__ import annotations

import enum
import os
import socket
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace

from pyergon.core.records import StepProgress
from pyergon.errors import WorkerIdInUseError

__all__ = [
    "ACTIVITY_LIMIT",
    "Beat",
    "Registration",
    "StepActivity",
    "WorkerRecord",
    "WorkerState",
    "default_worker_id",
    "pid_is_alive",
    "registration_verdict",
    "running_steps",
    "served_types",
    "this_process",
    "unserved_types",
    "worker_state",
]


class WorkerState(enum.Enum):
    """What a worker record says about its process."""

    LIVE = "live"
    """It beat within its lease: it may hold flows."""
    STOPPED = "stopped"
    """It shut down cleanly and holds nothing."""
    DEAD = "dead"
    """It stopped beating without shutting down (killed, crashed, cut off): its leases ran out."""


ACTIVITY_LIMIT = 100
"""The most running steps a worker's record keeps (the ones that started first): a worker runs
at most ``max_concurrent_flows`` flows, and a beat that carries them stays small."""


@dataclass(frozen=True, slots=True)
class StepActivity:
    """One step a worker is running, as its heartbeat stores it for other processes to show.

    Attributes:
        flow_id: The flow the step belongs to.
        position: The step's log position, in display form (``"3"``, or ``"3.1"`` nested).
        step: The step's name.
        started_at: When the running attempt started (epoch seconds).
        progress: The last progress the step reported in this attempt, if any.
    """

    flow_id: str
    position: str
    step: str
    started_at: float
    progress: StepProgress | None = None


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """One worker process as stored.

    Attributes:
        worker_id: The worker's id, unique among live workers.
        incarnation: A token of this start of the process alone.
        host: The machine it runs on.
        pid: Its process id there.
        started_at: When it registered (wall clock, epoch seconds).
        flow_types: The flow types it serves, sorted.
        lease_seconds: Its lease length: a worker silent for longer holds no flow.
        last_beat: When its last heartbeat was sent (wall clock).
        stopped_at: When it shut down cleanly; ``None`` while it runs, or if it died.
        activity: The steps it was running at its last beat, oldest first (at most
            :data:`ACTIVITY_LIMIT`); only a live worker's are current (see
            :func:`running_steps`).
    """

    worker_id: str
    incarnation: str
    host: str
    pid: int
    started_at: float
    flow_types: tuple[str, ...]
    lease_seconds: float
    last_beat: float
    stopped_at: float | None = None
    activity: tuple[StepActivity, ...] = ()

    def beating(
        self,
        at: float,
        flow_types: Collection[str] | None = None,
        activity: Iterable[StepActivity] | None = None,
    ) -> WorkerRecord:
        """This record as a beat at ``at`` leaves it.

        Args:
            at: When the beat is sent.
            flow_types: The flow types served now; ``None`` keeps the record's.
            activity: The steps running now (an empty one: none); ``None`` keeps the
                record's. Ordered by start, of which the first :data:`ACTIVITY_LIMIT` are kept.
        """
        types = self.flow_types if flow_types is None else tuple(sorted(flow_types))
        running = self.activity
        if activity is not None:
            running = tuple(sorted(activity, key=_started))[:ACTIVITY_LIMIT]
        return replace(self, last_beat=at, flow_types=types, activity=running)

    def stopping(self, at: float) -> WorkerRecord:
        """This record as a clean shutdown at ``at`` leaves it: it runs nothing any more."""
        return replace(self, last_beat=at, stopped_at=at, activity=())


def _started(activity: StepActivity) -> float:
    return activity.started_at


@dataclass(frozen=True, slots=True)
class Beat:
    """What one heartbeat found.

    Attributes:
        held: The flows whose leases it renewed (still held with this worker's tokens).
        registered: Whether the worker's record is still its own incarnation's. ``False``: a
            later process registered under the same id (this one was taken for dead); it must
            stop serving.
    """

    held: frozenset[str]
    registered: bool


def this_process(
    worker_id: str, flow_types: Collection[str], *, lease_seconds: float, at: float
) -> WorkerRecord:
    """A new record for a worker starting in this process now."""
    return WorkerRecord(
        worker_id=worker_id,
        incarnation=uuid.uuid4().hex,
        host=socket.gethostname(),
        pid=os.getpid(),
        started_at=at,
        flow_types=tuple(sorted(flow_types)),
        lease_seconds=lease_seconds,
        last_beat=at,
    )


def worker_state(record: WorkerRecord, now: float) -> WorkerState:
    """Whether the worker of ``record`` is live, stopped or dead at ``now``."""
    if record.stopped_at is not None:
        return WorkerState.STOPPED
    if now - record.last_beat <= record.lease_seconds:
        return WorkerState.LIVE
    return WorkerState.DEAD


def served_types(records: Iterable[WorkerRecord], now: float) -> frozenset[str]:
    """The flow types some live worker among ``records`` serves at ``now``."""
    return frozenset(
        flow_type
        for record in records
        if worker_state(record, now) is WorkerState.LIVE
        for flow_type in record.flow_types
    )


def running_steps(
    records: Iterable[WorkerRecord], now: float
) -> dict[str, tuple[StepActivity, ...]]:
    """The steps live workers among ``records`` run at ``now``, by flow id, oldest first.

    A flow may run several steps at once (``asyncio.gather``, a DAG), so each flow id maps to
    all of them. Stopped and dead workers run nothing, whatever their last beat said. If two
    live workers report one step of a flow (one lost the flow's lease and still runs a step
    it cannot stop), the attempt that started last is the flow's current one and is kept.
    """
    current: dict[tuple[str, str], StepActivity] = {}
    for record in records:
        if worker_state(record, now) is not WorkerState.LIVE:
            continue
        for activity in record.activity:
            key = (activity.flow_id, activity.position)
            known = current.get(key)
            if known is None or activity.started_at > known.started_at:
                current[key] = activity
    by_flow: dict[str, tuple[StepActivity, ...]] = {}
    for activity in sorted(current.values(), key=_started):
        by_flow[activity.flow_id] = (*by_flow.get(activity.flow_id, ()), activity)
    return by_flow


def unserved_types(
    waiting: Iterable[str], records: Sequence[WorkerRecord], now: float
) -> tuple[str, ...]:
    """Those of the ``waiting`` flows' types that no live worker serves, sorted.

    Nothing without any record: storage that never saw a worker (flows run by direct
    executors) says nothing about who serves what.
    """
    if not records:
        return ()
    return tuple(sorted(set(waiting) - served_types(records, now)))


def pid_is_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; it belongs to someone else
    return True


class Registration(enum.Enum):
    """What a worker starting under an id whose record exists does about the old record."""

    FRESH = "fresh"
    """No earlier record, or one that shut down cleanly: nothing to take over."""
    TAKE_OVER = "take over"
    """An earlier incarnation died holding flows: requeue the flows it ran, at once."""
    WAIT = "wait"
    """An earlier incarnation beat within its lease and may still run elsewhere: read its
    record again once that lease is over. If it beat meanwhile, it is live (refuse the id);
    if not, take over."""


def registration_verdict(
    previous: WorkerRecord | None,
    starting: WorkerRecord,
    *,
    now: float,
    alive: Callable[[int], bool] = pid_is_alive,
) -> Registration:
    """Whether ``starting`` may register over ``previous``, and what it takes over.

    An earlier incarnation is dead when its beats stopped for longer than its lease, or when it
    ran on this host under a process id that no longer exists (a restart after ``kill -9``
    takes over at once).

    Raises:
        WorkerIdInUseError: ``previous`` is another worker of this very process that still
            beats: two workers must not serve under one id.
    """
    if previous is None or previous.incarnation == starting.incarnation:
        return Registration.FRESH
    state = worker_state(previous, now)
    if state is WorkerState.STOPPED:
        return Registration.FRESH
    if state is WorkerState.DEAD:
        return Registration.TAKE_OVER
    if previous.host == starting.host:
        if previous.pid == starting.pid:
            raise WorkerIdInUseError(
                previous.worker_id, previous.host, previous.pid, now - previous.last_beat
            )
        if not alive(previous.pid):
            return Registration.TAKE_OVER
    return Registration.WAIT


_HOST_LABEL_LENGTH = 16
"""Most characters of the host name kept in a default worker id: the ``pyergon workers`` table
shows ids whole, and the first label of a host name tells machines apart well enough."""


def default_worker_id(prefix: str = "worker") -> str:
    """A worker id no other process picks: ``<prefix>-<short host>-<pid>-<4 hex digits>``.

    The short host is the first label of :func:`socket.gethostname`, lower case, with anything
    but letters, digits, ``-`` and ``_`` left out. Host and pid say where the worker runs (a
    dead kernel's workers and a live one's differ); the random part tells apart two calls in
    one process and a pid the system used again. A worker that must keep its id across restarts
    (to take its own flows over at once) is given an explicit id instead.

    Args:
        prefix: What the id starts with, such as ``"worker"`` or ``"notebook"``.
    """
    label = socket.gethostname().split(".", 1)[0].lower()
    host = "".join(c for c in label if c.isascii() and (c.isalnum() or c in "-_"))
    return f"{prefix}-{host[:_HOST_LABEL_LENGTH] or 'host'}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
