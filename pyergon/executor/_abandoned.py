"""Step attempts an earlier run started and never ended, found when a worker takes a flow over.

A step's first attempt writes nothing when it starts (that would cost every step a write), so
a run that stops mid-step (its process killed, its kernel restarted, its lease lost) leaves no
record of the attempt. Its worker's heartbeat listed it, though (``StepActivity``): when a
claim takes the flow over, the lost worker's last beat says which steps it ran, since when, and
that they still ran then. The new run keeps each as an earlier attempt of the step's record
(``FlowContext.abandoned``, used in ``executor/_steps.py``). Only a claim of a flow that lost a
lease reads anything; an attempt that started and stopped between two beats stays unseen, and
a direct run (``Executor``), which beats for nobody, leaves none to find.
"""

from __future__ import annotations

import logging

from pyergon._context import Position
from pyergon.core.records import Attempt, AttemptEnd, ScheduledFlow
from pyergon.core.workers import WorkerState, worker_state
from pyergon.storage.base import ExecutionLog, WorkerRegistry

__all__ = ["abandoned_attempts"]

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
