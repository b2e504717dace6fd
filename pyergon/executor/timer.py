"""Durable timers: a wait whose fire time is stored, so a restart waits only what remains."""

from __future__ import annotations

import math
from collections.abc import Coroutine
from typing import Any

from pyergon._context import FlowContext, FlowSuspend, Position, require_context
from pyergon.core.outcome import SuspendReason
from pyergon.core.records import text_problem
from pyergon.core.status import InvocationStatus, OperationKind

__all__ = ["schedule_timer", "schedule_timer_named"]


def schedule_timer(seconds: float) -> Coroutine[Any, Any, None]:
    """Wait ``seconds`` durably; see :func:`schedule_timer_named`."""
    return schedule_timer_named(seconds, "")


def schedule_timer_named(seconds: float, name: str) -> Coroutine[Any, Any, None]:
    """Wait ``seconds`` durably, under a name shown in the flow's history.

    The fire time is stored on the first call. Until it passes, the flow is suspended: the
    direct :class:`~pyergon.Executor` returns a ``Suspended`` outcome with the wake time and a
    worker releases the flow until its timer service fires the timer. A re-run after the fire
    time continues at once.

    Args:
        seconds: How long to wait; zero or more, finite.
        name: A label for the timer; part of the operation's identity on replay.

    Returns:
        A coroutine to await; the log position is taken when this function is called.

    Raises:
        ValueError: ``seconds`` is negative, infinite or not a number, or ``name`` holds a NUL
            or a lone surrogate.
        PyergonError: Called outside a running flow.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"timer {name!r}: seconds must be a number, got {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"timer {name!r}: seconds must be finite and >= 0, got {seconds!r}")
    if not isinstance(name, str):
        raise ValueError(f"timer name must be a string, got {name!r}")
    # Part of the operation's identity on replay: refused, not rewritten as free text is.
    problem = text_problem(name)
    if problem is not None:
        raise ValueError(f"timer name {name!r} {problem}; use valid Unicode text")
    context = require_context("schedule_timer")
    position = context.allocate()
    return context.run_tracked(_wait(context, position, float(seconds), name))


async def _wait(context: FlowContext, position: Position, seconds: float, name: str) -> None:
    record = context.replayed(position, OperationKind.TIMER, name)
    if record is not None and record.is_final:
        return
    await context.before_live_work(position)
    if record is None or record.fire_at is None:
        now = context.clock.now()
        # Stored with the suspension (or the next save): one write for both.
        record = context.new_record(
            position,
            OperationKind.TIMER,
            name,
            InvocationStatus.WAITING_FOR_TIMER,
            started_at=now,
            fire_at=now + seconds,
        )
        # Not replayable: replay would start the wait over, so a long gathered operation must
        # not keep it from being stored (a save follows within this pass of the loop).
        context.keep(record)
    assert record.fire_at is not None  # set above or by an earlier run
    if context.clock.now() < record.fire_at:
        raise context.suspend(
            FlowSuspend(SuspendReason.TIMER, name or record.idempotency_key, record.fire_at)
        )
    # Whoever records a fired timer records the same; replay fires it again if this is lost.
    fired = record.replace(status=InvocationStatus.COMPLETE, completed_at=context.clock.now())
    context.keep(fired, replayable=True)
