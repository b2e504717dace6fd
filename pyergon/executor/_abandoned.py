"""Step attempts an earlier run started and never ended, found when a worker takes a flow over.

A step's first attempt writes nothing when it starts (that would cost every step a write), so
a run that stops mid-step (its process killed, its kernel restarted, its lease lost) leaves no
record of the attempt. Its worker's heartbeat listed it, though (``StepActivity``): when a
claim takes the flow over, the lost worker's last beat says which steps it ran, since when, and
that they still ran then. The new run keeps each as an earlier attempt of the step's record
(``FlowContext.abandoned``, used in ``executor/_steps.py``). Only a claim of a flow that lost a
lease reads anything; an attempt that started and stopped between two beats stays unseen.

A direct run (``Executor``, ``session.run`` in a cell) beats for nobody: when one takes up a
flow that an earlier direct run left RUNNING (its kernel restarted, its process was killed, its
cell interrupted), the flow's log says where that run was when its steps ended in order: in
the step after its last record, since that record's end. That step gets the abandoned attempt
(:func:`stopped_run_attempts`); where the log leaves doubt, none is kept.
"""

from __future__ import annotations

import logging

from pyergon._context import Position
from pyergon.core.records import Attempt, AttemptEnd, ScheduledFlow
from pyergon.core.status import TaskStatus
from pyergon.core.workers import WorkerState, worker_state
from pyergon.storage.base import ExecutionLog, WorkerRegistry

__all__ = ["abandoned_attempts", "stopped_run_attempts"]

logger = logging.getLogger(__name__)


async def abandoned_attempts(
    storage: ExecutionLog, flow: ScheduledFlow, now: float
) -> dict[Position, Attempt] | None:
    """The step attempts of ``flow`` that the worker which lost its lease last was running.

    Each is an ``"abandoned"`` attempt if that worker is gone (dead or stopped), a
    ``"lease lost"`` one if it still beats; numbered 0, the step's run numbers it. Steps nested
    in another step's body are not listed by heartbeats and are not found.

    Returns:
        The attempts by the position of their step, or ``None`` if there are none (the flow
        lost no lease, or the storage keeps no workers). A storage error is logged and
        ``None`` returned: the flow runs the same without them.
    """
    lost_by = flow.last_lost_by
    if lost_by is None or not isinstance(storage, WorkerRegistry):
        return None
    try:
        record = await storage.get_worker(lost_by)
    except Exception as error:  # a hint for people, not worth failing the flow's run over
        logger.warning(
            "flow %r: the worker %r that lost its lease could not be read (%r); its unended "
            "step attempts are not kept",
            flow.flow_id,
            lost_by,
            error,
        )
        return None
    if record is None:
        return None
    end: AttemptEnd = "abandoned"
    if worker_state(record, now) is WorkerState.LIVE:
        end = "lease lost"
    found: dict[Position, Attempt] = {}
    for step in record.activity:
        if step.flow_id != flow.flow_id or not step.position.isdigit():
            continue
        # Still running at its worker's last beat: it stopped some time after.
        found[(int(step.position), 0)] = Attempt(
            0, step.started_at, None, end, worker_id=lost_by, last_seen_at=record.last_beat
        )
    return found or None


async def stopped_run_attempts(
    storage: ExecutionLog, flow: ScheduledFlow, now: float
) -> dict[Position, Attempt] | None:
    """The step an earlier direct run of ``flow`` was in when it stopped, as an attempt.

    Kept only where the log leaves no doubt: its steps ended in order, each recorded, none
    waiting for a retry or a child. After steps that ran at once (``gather``, a DAG), in a
    retry's backoff, or while a child ran, the place is unknown and nothing is kept: an attempt
    put on a step that never started would count against its retries.

    Args:
        storage: Where the flow is.
        flow: The flow as stored before this run took it up.
        now: The wall-clock time (epoch seconds), for the flow's lease.

    Returns:
        One ``"abandoned"`` attempt (numbered 0, the step's run numbers it) at the position
        after the last record, or ``None``.
    """
    if flow.status is not TaskStatus.RUNNING:
        return None
    if flow.lease_expires_at is not None and flow.lease_expires_at > now:
        return None
    records = [
        record
        for record in await storage.load_invocations(flow.flow_id)
        if record.sub_sequence == 0 and record.sequence >= 1
    ]
    sequences = sorted(record.sequence for record in records)
    if sequences != list(range(1, len(sequences) + 1)) or not all(
        record.is_final for record in records
    ):
        return None
    # It was last known alive when its last record ended, and went on to the next position.
    moments = [flow.created_at]
    for record in records:
        moments.extend(t for t in (record.started_at, record.completed_at) if t is not None)
    position: Position = (len(sequences) + 1, 0)
    return {position: Attempt(0, max(moments), None, "abandoned")}
