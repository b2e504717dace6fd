"""Child flows: a flow starts another flow and waits for its result.

The child's id is derived from the parent's id and the log position of the call, so a replay of
the parent finds the same child.
"""

from __future__ import annotations

from typing import Any

from pyergon._context import FlowContext, FlowSuspend, Position, require_context
from pyergon.core.outcome import Completed, SuspendReason
from pyergon.core.records import StoredError, format_position
from pyergon.core.status import InvocationStatus, OperationKind
from pyergon.executor._steps import replay_final
from pyergon.serialization import serialize_exception

__all__ = ["ChildHandle", "child_flow_id", "start_child"]


def child_flow_id(parent_flow_id: str, position: Position) -> str:
    """Return the id of the child started at ``position`` of ``parent_flow_id``."""
    return f"{parent_flow_id}/{format_position(*position)}"


class ChildHandle:
    """A child flow started by ``self.invoke(child)``; await :meth:`result` for its outcome.

    Attributes:
        flow_id: The child's id.
    """

    def __init__(self, context: FlowContext, position: Position, child: object, type_name: str):
        self._context = context
        self._position = position
        self._child = child
        self._type_name = type_name
        self.flow_id = child_flow_id(context.flow_id, position)

    def __repr__(self) -> str:
        return f"ChildHandle(flow_id={self.flow_id!r}, type={self._type_name!r})"

    async def result(self) -> Any:
        """Run (or wait for) the child and return its result, or raise its error."""
        return await self._context.run_tracked(self._result())

    async def _result(self) -> Any:
        context = self._context
        position = self._position
        record = context.replayed(position, OperationKind.CHILD, self._type_name)
        if record is not None and record.is_final:
            return replay_final(context, record)
        await context.before_live_work(position)
        now = context.clock.now()
        if record is None:
            record = await context.record(
                context.new_record(
                    position,
                    OperationKind.CHILD,
                    self._type_name,
                    InvocationStatus.WAITING_FOR_CHILD,
                    started_at=now,
                    child_flow_id=self.flow_id,
                )
            )
        outcome = await context.run_child(self._child, self.flow_id, context, position)
        if not isinstance(outcome, Completed):
            raise context.suspend(FlowSuspend(SuspendReason.CHILD, self.flow_id, outcome.wake_at))
        if outcome.error is None:
            payload = context.dumps(outcome.result, f"the result of child flow {self.flow_id!r}")
            final = record.replace(
                status=InvocationStatus.COMPLETE, result=payload, completed_at=context.clock.now()
            )
        else:
            error = StoredError.describe(
                outcome.error, serialize_exception(context.serializer, outcome.error)
            )
            final = record.replace(
                status=InvocationStatus.FAILED, error=error, completed_at=context.clock.now()
            )
        return replay_final(context, await context.record(final))


def start_child(child: object, type_name: str) -> ChildHandle:
    """Start ``child`` as a child flow of the running flow at its next log position.

    Args:
        child: An instance of a ``@flow_type`` dataclass.
        type_name: The child's stored flow type name.

    Returns:
        A handle whose ``result()`` coroutine returns the child's result.

    Raises:
        PyergonError: Called outside a running flow.
    """
    context = require_context("invoke")
    return ChildHandle(context, context.allocate(), child, type_name)
