"""External signals: a flow waits for a named value that someone outside sends it."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from pyergon._context import FlowContext, FlowSuspend, Position, require_context
from pyergon.core.outcome import SuspendReason
from pyergon.core.records import SignalRecord, text_problem
from pyergon.core.status import InvocationStatus, OperationKind
from pyergon.errors import FlowNotFoundError, FlowStateError
from pyergon.executor._steps import replay_final
from pyergon.executor.executor import validate_flow_id
from pyergon.serialization import Serializer, dumps_for, serializer_for
from pyergon.storage._flows import deliver_signal, find_signal
from pyergon.storage.base import ExecutionLog

__all__ = ["await_external_signal", "send_signal"]


def await_external_signal(name: str) -> Coroutine[Any, Any, Any]:
    """Wait for the signal ``name`` sent to the running flow, and return its value.

    A signal sent before the flow waits is kept and returned at once. Until it arrives the flow
    is suspended (a ``Suspended`` outcome from the direct executor; a worker releases the flow
    and resumes it when the signal is delivered). Each name carries one value per flow: waiting
    on the same name twice returns the same value.

    Args:
        name: The signal's name.

    Returns:
        A coroutine to await for the value; the log position is taken when this is called.

    Raises:
        ValueError: ``name`` is empty, not a string, or holds a NUL or a lone surrogate.
        PyergonError: Called outside a running flow.
    """
    _check_signal_name(name)
    context = require_context("await_external_signal")
    position = context.allocate()
    return context.run_tracked(_receive(context, position, name))


async def _receive(context: FlowContext, position: Position, name: str) -> Any:
    record = context.replayed(position, OperationKind.SIGNAL, name)
    if record is not None and record.is_final:
        return replay_final(context, record)
    await context.before_live_work(position)
    now = context.clock.now()
    signal = await find_signal(context.storage, context.flow_id, name)
    if signal is not None:
        # A flow's signal of one name keeps its first value, so whoever records it records the
        # same; replay receives it again if this write is lost.
        received = context.new_record(
            position,
            OperationKind.SIGNAL,
            name,
            InvocationStatus.COMPLETE,
            result=signal.payload,
            started_at=record.started_at if record is not None else now,
            completed_at=now,
        )
        context.keep(received, replayable=True)
        return replay_final(context, received)
    if record is None:
        # Stored with the suspension; a signal that comes meanwhile moves the flow's version
        # on, so the suspension is decided again and the flow requeued.
        context.keep(
            context.new_record(
                position,
                OperationKind.SIGNAL,
                name,
                InvocationStatus.WAITING_FOR_SIGNAL,
                started_at=now,
            ),
            replayable=True,
        )
    raise context.suspend(FlowSuspend(SuspendReason.SIGNAL, name))


async def send_signal(
    storage: ExecutionLog,
    flow_id: str,
    name: str,
    value: Any = None,
    *,
    serializer: Serializer | None = None,
    sent_at: float | None = None,
) -> bool:
    """Deliver the signal ``name`` with ``value`` to a flow.

    Delivery is idempotent per flow and name: the first value sent is kept, later sends of the
    same name are ignored and return ``False``.

    Args:
        storage: The flow's storage.
        flow_id: The receiving flow.
        name: The signal's name.
        value: Any value the serializer can store.
        serializer: Defaults to :func:`~pyergon.serialization.default_serializer`; checked
            against ``storage`` by :func:`~pyergon.serialization.serializer_for`.
        sent_at: Time to store (epoch seconds); defaults to now.

    Returns:
        Whether this call delivered the signal (``False`` if one was already there).

    Raises:
        InvalidFlowIdError: ``flow_id`` is not a usable flow id.
        ValueError: ``name`` is empty, not a string, or holds a NUL or a lone surrogate.
        FlowNotFoundError: No flow with ``flow_id`` exists.
        FlowStateError: The flow already finished and never had this signal.
        SerializationError: ``value`` cannot be serialized; nothing is stored.
        UnsafeSerializerError: Unsigned pickle on shared storage, not chosen by name.
    """
    import time

    validate_flow_id(flow_id)
    _check_signal_name(name)
    payload = dumps_for(
        serializer_for(storage, serializer), value, f"signal {name!r} for flow {flow_id!r}"
    )
    flow = await storage.get_flow(flow_id)
    if flow is None:
        raise FlowNotFoundError(flow_id)
    if flow.status.is_final:
        if await find_signal(storage, flow_id, name) is not None:
            return False  # a repeated delivery of a signal the flow had: still idempotent
        raise FlowStateError(
            flow_id,
            f"flow {flow_id!r} already finished ({flow.status.value}); a signal sent now would "
            "never be read",
        )
    signal = SignalRecord(flow_id, name, payload, time.time() if sent_at is None else sent_at)
    return await deliver_signal(storage, signal)


def _check_signal_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"signal name must be a non-empty string, got {name!r}")
    # A name is matched between sender and waiter: refused, not rewritten as free text is.
    problem = text_problem(name)
    if problem is not None:
        raise ValueError(f"signal name {name!r} {problem}; use valid Unicode text")
