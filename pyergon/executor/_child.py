"""Child flows: a flow starts another flow and waits for its result.

The child's id is derived from the parent's id and the log position of the call, so a replay of
the parent finds the same child: ``"<parent id>~child-<position>"``. Ids of that form are
reserved: a user's flow cannot take one, so it is never taken for another flow's child.
"""

from __future__ import annotations

import re
from typing import Any

from pyergon._context import FlowContext, FlowSuspend, Position, require_context
from pyergon.clock import Clock
from pyergon.core.outcome import Completed, SuspendReason
from pyergon.core.records import ScheduledFlow, StoredError, format_position
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.errors import FlowStateError, InvalidFlowIdError
from pyergon.executor._inputs import encode_flow
from pyergon.executor._steps import replay_final
from pyergon.serialization import Serializer, serialize_exception
from pyergon.storage.base import ExecutionLog

__all__ = [
    "ChildHandle",
    "child_flow_id",
    "refuse_child_namespace",
    "refuse_foreign_child",
    "start_child",
    "store_child",
]

_CHILD_ID_END = re.compile(r"~child-[0-9]+(?:\.[0-9]+)?\Z")
"""How every child id ends (``~child-3``, or ``~child-3.1`` inside a step); no user id does."""


def child_flow_id(parent_flow_id: str, position: Position) -> str:
    """Return the id of the child started at ``position`` of ``parent_flow_id``.

    Children recorded before ids had their own namespace are named ``"<parent>/<position>"``;
    a replay finds them by the id their parent's record holds, never by this function.
    """
    return f"{parent_flow_id}~child-{format_position(*position)}"


def refuse_child_namespace(flow_id: str) -> str:
    """Return ``flow_id`` if a user's flow may take it: it is not of the form of a child's id.

    Raises:
        InvalidFlowIdError: ``flow_id`` ends in ``~child-`` and a log position.
    """
    if _CHILD_ID_END.search(flow_id):
        raise InvalidFlowIdError(
            f"flow id {flow_id!r} is reserved for child flows: pyergon names the child a flow "
            "starts '<parent id>~child-<position>'; choose an id that does not end in "
            "'~child-' and a number"
        )
    return flow_id


async def store_child(
    storage: ExecutionLog,
    serializer: Serializer,
    clock: Clock,
    child: object,
    type_name: str,
    child_id: str,
    parent: FlowContext,
    position: Position,
) -> tuple[ScheduledFlow, bool]:
    """Store ``child`` (a checked flow of type ``type_name``) as the child of ``parent``.

    It is stored at ``child_id`` as started at the parent's ``position``, for a worker to run.

    Returns:
        The flow stored under ``child_id`` and whether this call created it (else it was
        stored by an earlier run of the parent).

    Raises:
        FlowStateError: Another flow, not this child, is stored under ``child_id``.
    """
    parent.check_lease()
    now = clock.now()
    sequence = format_position(*position)
    stored, created = await storage.create_flow(
        ScheduledFlow(
            flow_id=child_id,
            flow_type=type_name,
            payload=encode_flow(serializer, child, type_name),
            status=TaskStatus.PENDING,
            created_at=now,
            updated_at=now,
            parent_flow_id=parent.flow_id,
            parent_sequence=sequence,
        )
    )
    if not created:
        refuse_foreign_child(stored, parent.flow_id, sequence)
    return stored, created


def refuse_foreign_child(stored: ScheduledFlow, parent_flow_id: str, sequence: str) -> None:
    """Refuse to take ``stored``, found at a child's id, unless it is that very child.

    Args:
        stored: The flow stored under the child's id.
        parent_flow_id: The parent that starts the child.
        sequence: The parent's log position that starts it, as ``format_position`` shows it.

    Raises:
        FlowStateError: ``stored`` was not started by ``parent_flow_id`` at ``sequence``.
    """
    if (stored.parent_flow_id, stored.parent_sequence) == (parent_flow_id, sequence):
        return
    started_by = (
        "no parent"
        if stored.parent_flow_id is None
        else f"flow {stored.parent_flow_id!r} at position {stored.parent_sequence}"
    )
    raise FlowStateError(
        stored.flow_id,
        f"flow {stored.flow_id!r} is not the child of flow {parent_flow_id!r} at position "
        f"{sequence}: it was started by {started_by}. pyergon does not take another flow for "
        f"a child; delete or rename that flow, then retry flow {parent_flow_id!r}",
    )


def _recorded_legacy_id(context: FlowContext, position: Position) -> str | None:
    """The id of a child this flow started before child ids had a namespace, if it did.

    Such a child is ``"<parent id>/<position>"``; its parent's record names it. A record copied
    from another flow (a fork) names that flow's child, which is not this flow's.
    """
    recorded = context.log.get(position)
    legacy = f"{context.flow_id}/{format_position(*position)}"
    if recorded is not None and recorded.child_flow_id == legacy:
        return legacy
    return None


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
        self.flow_id = _recorded_legacy_id(context, position) or child_flow_id(
            context.flow_id, position
        )

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
                status=InvocationStatus.COMPLETE,
                result=payload,
                completed_at=context.clock.now(),
                child_flow_id=self.flow_id,  # a forked record named the original's child
            )
        else:
            error = StoredError.describe(
                outcome.error, serialize_exception(context.serializer, outcome.error)
            )
            final = record.replace(
                status=InvocationStatus.FAILED,
                error=error,
                completed_at=context.clock.now(),
                child_flow_id=self.flow_id,
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
