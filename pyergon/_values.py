"""The stored values of a flow: its result, or one step's, read back from storage.

:meth:`pyergon.management.FlowManager.value` and ``session.value`` call :func:`stored_value`;
a value that does not exist yet (or never will) is an error that says why and what to do.
"""

from __future__ import annotations

from typing import Any

from pyergon.core.records import Invocation, ScheduledFlow, StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.errors import FlowStateError
from pyergon.history import FlowHistory
from pyergon.serialization import Serializer

__all__ = ["stored_value"]


def stored_value(history: FlowHistory, serializer: Serializer, step: str | int | None) -> Any:
    """The value ``history``'s flow returned (``step`` is ``None``), or one step's value.

    Args:
        history: The flow, its records and the steps running now.
        serializer: The serializer the values were stored with.
        step: A step by position (``3``, ``"3"``, ``"3.1"``) or name; ``None``: the flow.

    Raises:
        StepNotFoundError: ``step`` names no step of the flow; the message lists them.
        FlowStateError: The flow (or step) has not finished, or it failed or was cancelled;
            the message says which, with the error, and what to do.
        SerializationError: The stored value cannot be read back (another serializer, or a
            class that cannot be imported here).
    """
    if step is None:
        return _flow_result(history.flow, serializer)
    found = history.find_steps(step)
    flow_id = history.flow.flow_id
    if len(found) > 1:
        positions = ", ".join(record.position for record in found)
        raise FlowStateError(
            flow_id,
            f"flow {flow_id!r} called step {step!r} {len(found)} times (at {positions}); "
            f"name one by its position, such as value({flow_id!r}, {found[-1].position!r})",
        )
    return _step_value(found[0], serializer)


def _flow_result(flow: ScheduledFlow, serializer: Serializer) -> Any:
    flow_id = flow.flow_id
    if flow.status is TaskStatus.COMPLETE:
        return None if flow.result is None else serializer.loads(flow.result)
    if flow.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        raise FlowStateError(
            flow_id,
            f"flow {flow_id!r} {flow.status.value.lower()}{_with(flow.error)}, so it has no "
            f"result; retry it to run it again, or read the value of a step it finished",
        )
    raise FlowStateError(
        flow_id,
        f"flow {flow_id!r} has not finished ({flow.status.value}), so it has no result yet; "
        "wait for it, or read the value of a step it finished",
    )


def _step_value(record: Invocation, serializer: Serializer) -> Any:
    where = f"step {record.position} {record.name!r} of flow {record.flow_id!r}"
    if record.status is InvocationStatus.COMPLETE:
        return None if record.result is None else serializer.loads(record.result)
    if record.status is InvocationStatus.FAILED:
        attempts = f" after {record.attempts} attempts" if record.attempts > 1 else ""
        raise FlowStateError(
            record.flow_id,
            f"{where} failed{attempts}{_with(record.error)}, so it has no value; retry the "
            "flow to run it again",
        )
    raise FlowStateError(
        record.flow_id,
        f"{where} has not finished ({record.status.value}), so it has no value yet; wait for "
        "the flow",
    )


def _with(error: StoredError | None) -> str:
    if error is None:
        return ""
    name = error.type_name.rsplit(".", 1)[-1]
    return f" with {name}: {error.message}" if error.message else f" with {name}"
