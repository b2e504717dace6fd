"""Recorded values: the time, a UUID or a random number that replay sees unchanged.

Inside a flow, ``await pyergon.now()`` records the value the first time and returns the recorded
one on every replay, so code that branches on it stays deterministic. Outside a flow the live
value is returned and nothing is recorded.
"""

from __future__ import annotations

import random as _random
import uuid as _uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from pyergon._context import FlowContext, Position, current_context
from pyergon.core.status import InvocationStatus, OperationKind

__all__ = ["now", "random", "uuid4"]

T = TypeVar("T")


def now() -> Coroutine[Any, Any, datetime]:
    """Return the current UTC time, recorded once per call site in a flow."""
    return _recorded("now", lambda context: datetime.fromtimestamp(_clock_now(context), UTC))


def uuid4() -> Coroutine[Any, Any, _uuid.UUID]:
    """Return a random UUID, recorded once per call site in a flow."""
    return _recorded("uuid4", lambda _context: _uuid.uuid4())


def random() -> Coroutine[Any, Any, float]:
    """Return a float in ``[0, 1)``, recorded once per call site in a flow."""
    return _recorded("random", lambda _context: _random.random())


def _clock_now(context: FlowContext | None) -> float:
    import time

    return time.time() if context is None else context.clock.now()


def _recorded(kind: str, produce: Callable[[FlowContext | None], T]) -> Coroutine[Any, Any, T]:
    context = current_context()
    if context is None:
        return _live(produce)
    return context.run_tracked(_replay_or_record(context, context.allocate(), kind, produce))


async def _live(produce: Callable[[FlowContext | None], T]) -> T:
    return produce(None)


async def _replay_or_record(
    context: FlowContext,
    position: Position,
    kind: str,
    produce: Callable[[FlowContext | None], T],
) -> T:
    record = context.replayed(position, OperationKind.VALUE, kind)
    if record is not None and record.is_final and record.result is not None:
        value: T = context.serializer.loads(record.result)
        return value
    await context.before_live_work(position)
    value = produce(context)
    timestamp = context.clock.now()
    stored = await context.record(
        context.new_record(
            position,
            OperationKind.VALUE,
            kind,
            InvocationStatus.COMPLETE,
            result=context.dumps(value, f"the {kind}() value of {context.describe(position)}"),
            started_at=timestamp,
            completed_at=timestamp,
        )
    )
    assert stored.result is not None  # a COMPLETE value record always carries its value
    winner: T = context.serializer.loads(stored.result)
    return winner
