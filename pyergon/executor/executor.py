"""The direct executor: run one flow in this task, recording every step as it goes.

``Executor(flow, storage, flow_id).run(lambda f: f.run())`` runs (or resumes) the flow until it
finishes or has to wait, and returns a :data:`~pyergon.core.FlowOutcome`. Running it again
replays the recorded steps without executing their bodies and continues from the first
operation that has no final record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from pyergon.clock import Clock, SystemClock
from pyergon.context import FlowContext, FlowSuspend, Position, flow_scope
from pyergon.core.outcome import Completed, FlowOutcome, Suspended, SuspendReason
from pyergon.core.records import Invocation, ScheduledFlow, StoredError, format_position
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.decorators import flow_entry, require_flow_instance
from pyergon.errors import InvalidFlowIdError, PyergonError
from pyergon.executor.inputs import encode_flow
from pyergon.serialization import (
    Serializer,
    default_serializer,
    dumps_for,
    rebuild_exception,
    serialize_exception,
)
from pyergon.storage.base import ExecutionLog

__all__ = ["Executor", "validate_flow_id"]

F = TypeVar("F")

FLOW_RETRY_SEQUENCE = 0
"""Log sequence of flow-level operations: the durable backoff timers between flow attempts."""


def validate_flow_id(flow_id: object) -> str:
    """Return ``flow_id`` if it is a usable flow id.

    Raises:
        InvalidFlowIdError: It is not a string, is empty or blank, or is too long.
    """
    if not isinstance(flow_id, str):
        raise InvalidFlowIdError(
            f"flow id must be a string, got {type(flow_id).__name__} {flow_id!r}"
        )
    if not flow_id.strip():
        raise InvalidFlowIdError("flow id must be a non-empty string, got an empty one")
    if len(flow_id) > 1024:
        raise InvalidFlowIdError(f"flow id is {len(flow_id)} characters long; keep it under 1025")
    return flow_id


class Executor(Generic[F]):
    """Runs one flow directly in the calling task.

    Args:
        flow: An instance of a ``@flow_type`` dataclass; its fields are stored as inputs.
        storage: A connected storage backend.
        flow_id: The flow's unique id; running the same id again resumes that flow.
        serializer: How results are stored; defaults to
            :func:`~pyergon.serialization.default_serializer`.
        clock: Time source for timers; defaults to the system clock.

    Raises:
        FlowDefinitionError: ``flow`` is not an instance of a ``@flow_type`` dataclass.
        InvalidFlowIdError: ``flow_id`` is not a non-empty string.
    """

    def __init__(
        self,
        flow: F,
        storage: ExecutionLog,
        flow_id: str,
        *,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
        parent: tuple[str, str] | None = None,
    ) -> None:
        self.type_name = require_flow_instance(flow)
        self.flow = flow
        self.storage = storage
        self.flow_id = validate_flow_id(flow_id)
        self.serializer = serializer or default_serializer()
        self.clock = clock or SystemClock()
        self._parent = parent

    def __repr__(self) -> str:
        return f"Executor(flow_id={self.flow_id!r}, type={self.type_name!r})"

    async def run(self, entry: Callable[[F], Awaitable[Any]]) -> FlowOutcome:
        """Run or resume the flow until it finishes or has to wait.

        Args:
            entry: Calls the flow's ``@flow`` method, e.g. ``lambda f: f.run()``.

        Returns:
            ``Completed`` with the result or error, or ``Suspended`` with what it waits on.
            A flow already final in storage returns its stored outcome without running.

        Raises:
            SerializationError: An input field cannot be serialized (nothing is stored).
            PyergonError: The flow id belongs to a flow of another type.
        """
        stored, created = await self._load_or_create()
        if stored.status.is_final:
            return self._stored_outcome(stored)
        attempt = stored.attempt
        log = {} if created else await self._read_log()
        while True:
            waiting = self._pending_backoff(log)
            if waiting is not None:
                return waiting
            context = FlowContext(
                flow_id=self.flow_id,
                storage=self.storage,
                serializer=self.serializer,
                clock=self.clock,
                log=log,
                run_child=self._run_child,
            )
            try:
                result = await self._run_body(context, entry)
            except FlowSuspend:
                return await self._suspend(context)
            except Exception as error:
                if context.suspensions:
                    return await self._suspend(context)
                retry = await self._plan_retry(context, error, attempt)
                if retry is None:
                    return await self._fail(error)
                attempt += 1
                log = await self._read_log()
                continue
            if context.suspensions:
                return await self._suspend(context)
            return await self._complete(result)

    async def _read_log(self) -> dict[Position, Invocation]:
        records = await self.storage.load_invocations(self.flow_id)
        return {(record.sequence, record.sub_sequence): record for record in records}

    async def _load_or_create(self) -> tuple[ScheduledFlow, bool]:
        payload = encode_flow(self.serializer, self.flow, self.type_name)
        now = self.clock.now()
        parent_id, parent_position = self._parent if self._parent else (None, None)
        stored, created = await self.storage.create_flow(
            ScheduledFlow(
                flow_id=self.flow_id,
                flow_type=self.type_name,
                payload=payload,
                status=TaskStatus.RUNNING,
                created_at=now,
                updated_at=now,
                parent_flow_id=parent_id,
                parent_sequence=parent_position,
            )
        )
        if stored.flow_type != self.type_name:
            raise PyergonError(
                f"flow id {self.flow_id!r} already belongs to a flow of type "
                f"{stored.flow_type!r}, not {self.type_name!r}; choose another flow id"
            )
        if not created and not stored.status.is_final and stored.status is not TaskStatus.RUNNING:
            updated = await self.storage.update_flow(self.flow_id, status=TaskStatus.RUNNING)
            stored = updated or stored
        return stored, created

    async def _run_body(self, context: FlowContext, entry: Callable[[F], Awaitable[Any]]) -> Any:
        with flow_scope(context):
            context.root_task = asyncio.current_task()
            try:
                return await entry(self.flow)
            finally:
                await _cancel_leftover_steps(context)

    def _pending_backoff(self, log: dict[Position, Invocation]) -> Suspended | None:
        for (sequence, _), record in log.items():
            if (
                sequence == FLOW_RETRY_SEQUENCE
                and record.status is InvocationStatus.WAITING_FOR_TIMER
                and record.fire_at is not None
                and self.clock.now() < record.fire_at
            ):
                return Suspended(self.flow_id, SuspendReason.RETRY, (record.name,), record.fire_at)
        return None

    async def _plan_retry(
        self, context: FlowContext, error: Exception, attempt: int
    ) -> float | None:
        policy = context.flow_retry_policy
        if policy is None or not policy.should_retry(error, attempt):
            return None
        delay = policy.delay_after(attempt)
        await self.storage.delete_failed_invocations(self.flow_id)
        now = self.clock.now()
        await self.storage.record_invocation(
            Invocation(
                flow_id=self.flow_id,
                sequence=FLOW_RETRY_SEQUENCE,
                sub_sequence=attempt,
                kind=OperationKind.TIMER,
                name=f"retry-after-attempt-{attempt}",
                status=InvocationStatus.WAITING_FOR_TIMER
                if delay > 0
                else InvocationStatus.COMPLETE,
                started_at=now,
                fire_at=now + delay,
                completed_at=None if delay > 0 else now,
                error=StoredError.describe(error),
            )
        )
        await self.storage.update_flow(
            self.flow_id,
            status=TaskStatus.SUSPENDED if delay > 0 else TaskStatus.RUNNING,
            attempt=attempt + 1,
            wake_at=now + delay if delay > 0 else None,
        )
        return delay

    async def _complete(self, result: Any) -> Completed:
        payload = None
        if result is not None:
            payload = encode_result(self.serializer, result, self.flow_id)
        await self.storage.update_flow(
            self.flow_id, status=TaskStatus.COMPLETE, result=payload, wake_at=None
        )
        return Completed(self.flow_id, result=result)

    async def _fail(self, error: BaseException) -> Completed:
        stored_error = StoredError.describe(error, serialize_exception(self.serializer, error))
        await self.storage.update_flow(
            self.flow_id, status=TaskStatus.FAILED, error=stored_error, wake_at=None
        )
        return Completed(self.flow_id, error=error, status=TaskStatus.FAILED)

    async def _suspend(self, context: FlowContext) -> Suspended:
        suspensions = context.suspensions
        wake_times = [s.wake_at for s in suspensions if s.wake_at is not None]
        wake_at = min(wake_times) if wake_times else None
        await self.storage.update_flow(
            self.flow_id, status=TaskStatus.SUSPENDED, wake_at=wake_at
        )
        return Suspended(
            self.flow_id,
            suspensions[0].reason,
            tuple(dict.fromkeys(s.waiting_on for s in suspensions)),
            wake_at,
        )

    def _stored_outcome(self, stored: ScheduledFlow) -> Completed:
        if stored.status is TaskStatus.COMPLETE:
            result = None if stored.result is None else self.serializer.loads(stored.result)
            return Completed(self.flow_id, result=result)
        error: BaseException
        if stored.error is not None:
            error = rebuild_exception(self.serializer, stored.error)
        else:
            error = PyergonError(f"flow {self.flow_id!r} was {stored.status.value.lower()}")
        return Completed(self.flow_id, error=error, status=stored.status)

    async def _run_child(
        self, child: object, child_id: str, parent: FlowContext, position: Position
    ) -> FlowOutcome:
        method_name, _ = flow_entry(type(child))
        executor = Executor(
            child,
            self.storage,
            child_id,
            serializer=self.serializer,
            clock=self.clock,
            parent=(parent.flow_id, format_position(*position)),
        )
        return await executor.run(lambda flow: getattr(flow, method_name)())


def encode_result(serializer: Serializer, result: Any, flow_id: str) -> bytes:
    """Serialize a flow's return value, naming the flow in any error."""
    return dumps_for(serializer, result, f"the result of flow {flow_id!r}")


async def _cancel_leftover_steps(context: FlowContext) -> None:
    """Cancel steps still running when the flow body ended (e.g. the rest of a failed gather).

    Their records were not written, so they run again when the flow resumes.
    """
    leftovers = [task for task in context.step_tasks if not task.done()]
    for task in leftovers:
        task.cancel()
    if leftovers:
        await asyncio.gather(*leftovers, return_exceptions=True)
