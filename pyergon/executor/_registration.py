"""A worker's record in storage: registering at start, taking over a dead incarnation, signing off.

The rules (who may take an id, when a worker counts as dead) are
:mod:`pyergon.core.workers`'; this module asks storage and acts on them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyergon.clock import Clock
from pyergon.core.query import FlowQuery
from pyergon.core.status import TaskStatus
from pyergon.core.workers import (
    Registration,
    StepActivity,
    WorkerRecord,
    WorkerState,
    registration_verdict,
    served_types,
    this_process,
    worker_state,
)
from pyergon.errors import StorageError, WorkerIdInUseError
from pyergon.executor._heartbeat import Heartbeat, second_handle
from pyergon.storage._flows import requeue
from pyergon.storage.base import ExecutionLog, WorkerRegistry

if TYPE_CHECKING:
    from pyergon.executor._leases import LeaseClock

__all__ = [
    "begin_presence",
    "end_presence",
    "register_worker",
    "served_elsewhere",
    "sign_off",
    "take_over",
]

logger = logging.getLogger("pyergon.worker")

_MAX_ROUNDS = 100
"""Registrations in a row that may lose a race for the record before giving up."""

_MOST_HELD = 100_000
"""More flows than any worker runs at once: one listing finds every flow a worker held."""


async def begin_presence(
    storage: ExecutionLog,
    worker_id: str,
    flow_types: Callable[[], list[str]],
    *,
    lease_seconds: float,
    clock: Clock,
    lease_clock: LeaseClock,
    on_displaced: Callable[[], None],
    activity: Callable[[], tuple[StepActivity, ...]] = tuple,
) -> Heartbeat:
    """Register a starting worker (taking over a dead incarnation's flows) and start beating.

    Storage that keeps no worker records gets the beats (lease renewals) alone.

    Raises:
        WorkerIdInUseError: A live process serves under ``worker_id``.
    """
    record = None
    if isinstance(storage, WorkerRegistry):
        record = this_process(worker_id, flow_types(), lease_seconds=lease_seconds, at=clock.now())
        if await register_worker(storage, record, clock) is Registration.TAKE_OVER:
            await take_over(storage, worker_id)
    heart = Heartbeat(
        storage,
        second_handle(storage, clock),  # a fresh one per start: a stop closes it
        worker_id,
        lease_seconds=lease_seconds,
        clock=clock,
        lease_clock=lease_clock,
        record=record,
        flow_types=flow_types,
        on_displaced=on_displaced,
        activity=activity,
    )
    heart.start()
    return heart


async def end_presence(storage: ExecutionLog, heart: Heartbeat, clock: Clock) -> None:
    """Stop beating and mark the worker's record stopped."""
    await heart.stop()
    if heart.record is not None and isinstance(storage, WorkerRegistry):
        await sign_off(storage, heart.record, clock)


async def register_worker(
    storage: WorkerRegistry, record: WorkerRecord, clock: Clock
) -> Registration:
    """Store ``record`` as its worker id's, and say whether a dead incarnation's flows wait.

    An earlier record that beat within its lease, of a process this one cannot see die, is
    read again once that lease is over: if it beat meanwhile, its process is live.

    Raises:
        WorkerIdInUseError: A live process serves under the same id.
    """
    for _ in range(_MAX_ROUNDS):
        previous = await storage.get_worker(record.worker_id)
        verdict = registration_verdict(previous, record, now=clock.now())
        if verdict is Registration.WAIT:
            assert previous is not None
            await clock.sleep(previous.last_beat + previous.lease_seconds - clock.now())
            again = await storage.get_worker(record.worker_id)
            if (
                again is not None
                and again.incarnation == previous.incarnation
                and again.last_beat != previous.last_beat
            ):
                raise WorkerIdInUseError(
                    again.worker_id, again.host, again.pid, clock.now() - again.last_beat
                )
            continue  # it stopped beating (or changed): decide again
        replacing = None if previous is None else previous.incarnation
        if await storage.put_worker(record, replacing=replacing):
            if verdict is Registration.TAKE_OVER and previous is not None:
                silent = clock.now() - previous.last_beat
                why = (
                    f"stopped beating {silent:.1f} s ago"
                    if worker_state(previous, clock.now()) is WorkerState.DEAD
                    else "no longer runs"
                )
                logger.warning(
                    "worker %s: its previous process (pid %d on %s) %s; taking over the flows "
                    "it ran",
                    record.worker_id,
                    previous.pid,
                    previous.host,
                    why,
                )
            return verdict
    raise StorageError(
        f"worker {record.worker_id!r} could not register: its record kept changing under "
        f"{_MAX_ROUNDS} attempts; is another process starting with the same id in a loop?"
    )


async def take_over(storage: ExecutionLog, worker_id: str) -> list[str]:
    """Put the flows that a dead incarnation of ``worker_id`` was running back in the queue.

    Only flows still held under that worker's lease are requeued (each is checked again under
    the flow's version guard); the loss of the lease is counted on each.

    Returns:
        The ids of the flows requeued.
    """
    running = await storage.list_flows(
        FlowQuery(status=TaskStatus.RUNNING, worker_id=worker_id, limit=_MOST_HELD)
    )
    requeued = []
    for flow in running:
        if flow.lease_owner != worker_id:
            continue  # a direct run, or another worker holds it
        taken = await requeue(
            storage, flow.flow_id, from_statuses=(TaskStatus.RUNNING,), lost_by=worker_id
        )
        if taken is not None:
            requeued.append(flow.flow_id)
    if requeued:
        logger.warning(
            "worker %s: requeued %d flow(s) its previous process was running: %s",
            worker_id,
            len(requeued),
            ", ".join(repr(flow_id) for flow_id in requeued[:10]),
        )
    return requeued


async def sign_off(storage: WorkerRegistry, record: WorkerRecord, clock: Clock) -> None:
    """Mark the worker's record stopped (a clean shutdown); a storage failure only logs."""
    try:
        await storage.put_worker(record.stopping(clock.now()), replacing=record.incarnation)
    except Exception as error:
        logger.warning(
            "worker %s could not mark its record stopped (it shows as dead once its lease "
            "is over): %s",
            record.worker_id,
            error,
        )


async def served_elsewhere(storage: ExecutionLog, flow_type: str, clock: Clock) -> bool:
    """Whether a live worker that storage has a record of serves ``flow_type``.

    ``False`` where storage keeps no records, or cannot be read now (the caller warns; a
    worker that serves it may still come).
    """
    if not isinstance(storage, WorkerRegistry):
        return False
    try:
        records = await storage.list_workers()
    except Exception:
        return False
    return flow_type in served_types(records, clock.now())
