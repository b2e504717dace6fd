"""The direct executor: run one flow in this task, recording every step as it goes.

``Executor(flow, storage, flow_id).run(lambda f: f.run())`` runs (or resumes) the flow until it
finishes or has to wait, and returns a :data:`~pyergon.core.FlowOutcome`. Running it again
replays the recorded steps without executing their bodies and continues from the first
operation that has no final record. Child flows run inline, each as a flow of its own.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from pyergon._context import Cancellation, FlowContext, Position
from pyergon.clock import Clock, SystemClock
from pyergon.core.outcome import FlowOutcome
from pyergon.core.records import ScheduledFlow, format_position, text_problem
from pyergon.core.status import TaskStatus
from pyergon.core.transitions import RunEnd
from pyergon.decorators import flow_entry, require_flow_instance
from pyergon.errors import (
    ArtifactError,
    FlowStateError,
    InvalidFlowIdError,
    NonDeterminismError,
    PyergonError,
    SignatureError,
)
from pyergon.executor._abandoned import stopped_run_attempts
from pyergon.executor._child import refuse_child_namespace, refuse_foreign_child
from pyergon.executor._inputs import check_same_inputs, encode_flow
from pyergon.executor._runner import FlowRun, drive_flow, stored_outcome
from pyergon.executor._stale import StaleHandler, log_stale_once
from pyergon.serialization import Serializer, serializer_for
from pyergon.storage._flows import HeldFlow, start_direct_run
from pyergon.storage.base import ExecutionLog

__all__ = ["Executor", "validate_flow_id", "validate_new_flow_id"]

F = TypeVar("F")
R = TypeVar("R")


def validate_flow_id(flow_id: object) -> str:
    """Return ``flow_id`` if it is a usable flow id.

    Raises:
        InvalidFlowIdError: It is not a string, is empty or blank, is too long, or holds a
            character no backend stores alike (a NUL, or a lone surrogate, which is not text).
    """
    if not isinstance(flow_id, str):
        raise InvalidFlowIdError(
            f"flow id must be a string, got {type(flow_id).__name__} {flow_id!r}"
        )
    if not flow_id.strip():
        raise InvalidFlowIdError("flow id must be a non-empty string, got an empty one")
    if len(flow_id) > 1024:
        raise InvalidFlowIdError(f"flow id is {len(flow_id)} characters long; keep it under 1025")
    problem = text_problem(flow_id)
    if problem is not None:
        raise InvalidFlowIdError(f"flow id {flow_id!r} {problem}; use valid Unicode text")
    return flow_id


def validate_new_flow_id(flow_id: object) -> str:
    """Return ``flow_id`` if a user's new flow may take it.

    Raises:
        InvalidFlowIdError: It is not a usable flow id (see :func:`validate_flow_id`), or it
            has the form of a child flow's id (``"<parent id>~child-<position>"``).
    """
    return refuse_child_namespace(validate_flow_id(flow_id))


class Executor(Generic[F]):
    """Runs one flow directly in the calling task.

    Args:
        flow: An instance of a ``@flow_type`` dataclass; its fields are stored as inputs.
        storage: A connected storage backend.
        flow_id: The flow's unique id; running the same id again resumes that flow. Without
            one, a new id (a random UUID) is made; read it from ``executor.flow_id``.
        serializer: How results are stored; defaults to
            :func:`~pyergon.serialization.default_serializer`.
        clock: Time source for timers; defaults to the system clock.
        cancellation: Asked at every step boundary whether the flow stops there; defaults to
            looking for a cancel request in storage every half second. The notebook stepper
            passes one that pauses instead.
        thread_pool: Runs the bodies of ``def`` steps (and waits for process steps). By default
            the event loop's step threads (see ``executor/_threads.py``: started when a ``def``
            step first runs, each ending after 10 s without work). It is not shut down here.
        on_stale: Told when the run returned recorded step results made by code that has
            changed since (they stand); default: a warning on the ``pyergon.worker`` logger,
            once per flow type per process.

    Raises:
        FlowDefinitionError: ``flow`` is not an instance of a ``@flow_type`` dataclass.
        InvalidFlowIdError: ``flow_id`` is not a non-empty string, or has the form of a child
            flow's id (``"<parent id>~child-<position>"``).
    """

    def __init__(
        self,
        flow: F,
        storage: ExecutionLog,
        flow_id: str | None = None,
        *,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
        parent: tuple[str, str] | None = None,
        cancellation: Cancellation | None = None,
        thread_pool: concurrent.futures.Executor | None = None,
        on_stale: StaleHandler | None = log_stale_once,
    ) -> None:
        self.type_name = require_flow_instance(flow)
        self.flow = flow
        self.storage = storage
        validate = validate_flow_id if parent is not None else validate_new_flow_id
        self.flow_id = str(uuid.uuid4()) if flow_id is None else validate(flow_id)
        self.serializer = serializer_for(storage, serializer)
        self.clock = clock or SystemClock()
        self._parent = parent
        self._cancellation = cancellation
        self._thread_pool = thread_pool
        self._on_stale = on_stale

    def __repr__(self) -> str:
        return f"Executor(flow_id={self.flow_id!r}, type={self.type_name!r})"

    async def run(self, entry: Callable[[F], Awaitable[R]]) -> FlowOutcome[R]:
        """Run or resume the flow until it finishes or has to wait.

        Args:
            entry: Calls the flow's ``@flow`` method, e.g. ``lambda f: f.run()``, or is that
                method itself (``Order.process``). Its return type ``R`` types the outcome.

        Returns:
            ``Completed[R]`` with the result or error, or ``Suspended`` with what it waits on.
            A flow already final in storage returns its stored outcome without running.

        Raises:
            SerializationError: An input field cannot be serialized (nothing is stored).
            PyergonError: The flow id belongs to a flow of another type.
            FlowInputsChangedError: The flow id belongs to a flow stored with other inputs
                (nothing is run or written).
            NonDeterminismError: The code calls another operation than the flow's log
                records. The flow keeps the status it had, so the code that wrote the log can
                still finish it.
            SignatureError: The serializer's keys refuse a stored record; the flow keeps the
                status it had, for a process with the right key.
        """
        stored, held, created = await self._load_or_create()
        if held is None:
            return stored_outcome(stored, self.serializer)
        stopped = None
        if not created:  # an earlier run that left the flow RUNNING stopped mid-way
            stopped = await stopped_run_attempts(self.storage, stored, time.time())
        try:
            return await drive_flow(
                FlowRun(
                    flow=self.flow,
                    flow_id=self.flow_id,
                    storage=self.storage,
                    serializer=self.serializer,
                    clock=self.clock,
                    entry=entry,
                    run_child=self._run_child,
                    writer=_DirectWriter(held),
                    attempt=stored.attempt,
                    log={} if created else None,
                    cancellation=self._cancellation
                    or PolledCancellation(self.storage, self.flow_id, self.clock),
                    thread_pool=self._thread_pool,
                    on_stale=self._on_stale,
                    abandoned=stopped,
                )
            )
        except (NonDeterminismError, SignatureError, ArtifactError):
            if created:  # a new flow waits for a later run (or a worker), not RUNNING for ever
                await held.leave((), RunEnd(TaskStatus.PENDING, {"wake_at": None}))
            elif stored.status is not TaskStatus.RUNNING:  # put it back as it was
                await held.leave((), RunEnd(stored.status, {"wake_at": stored.wake_at}))
            raise

    async def _load_or_create(self) -> tuple[ScheduledFlow, HeldFlow | None, bool]:
        """Return the flow as stored before this run, what this run holds, and if it is new.

        A final flow is held by no run.
        """
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
        if self._parent is not None and not created:
            refuse_foreign_child(stored, *self._parent)
        if stored.flow_type != self.type_name:
            raise PyergonError(
                f"flow id {self.flow_id!r} already belongs to a flow of type "
                f"{stored.flow_type!r}, not {self.type_name!r}; choose another flow id"
            )
        if created:
            return stored, HeldFlow(self.storage, stored, None), True
        if self._parent is None:
            check_same_inputs(self.serializer, stored, payload, self.flow)
        refuse_leased_flow(stored, time.time())
        running = await start_direct_run(self.storage, self.flow_id)
        if running is None or running.status.is_final:
            return running or stored, None, False
        # A flow left RUNNING by a run that died is run as it is, under whatever it holds.
        return stored, HeldFlow(self.storage, running, running.lease_token), False

    async def _run_child(
        self, child: object, child_id: str, parent: FlowContext, position: Position
    ) -> FlowOutcome[Any]:
        method_name, _ = flow_entry(type(child))
        executor = Executor(
            child,
            self.storage,
            child_id,
            serializer=self.serializer,
            clock=self.clock,
            parent=(parent.flow_id, format_position(*position)),
            thread_pool=parent.thread_pool,
        )
        return await executor.run(lambda flow: getattr(flow, method_name)())


class PolledCancellation:
    """Asks storage whether a flow's cancellation was requested, at most once per interval.

    The direct executor has no worker to tell it, so it looks at step boundaries; the first look
    happens ``interval`` seconds into the run, so short flows pay nothing for it.

    Args:
        storage: The flow's storage.
        flow_id: The running flow.
        clock: The executor's clock.
        interval: Seconds between looks.
    """

    def __init__(
        self, storage: ExecutionLog, flow_id: str, clock: Clock, interval: float = 0.5
    ) -> None:
        self._storage = storage
        self._flow_id = flow_id
        self._clock = clock
        self._interval = interval
        self._checked_at = clock.now()

    async def requested(self) -> bool:
        """Whether cancellation was requested (checked in storage when the interval passed)."""
        now = self._clock.now()
        if now - self._checked_at < self._interval:
            return False
        self._checked_at = now
        return self._flow_id in await self._storage.cancel_requests([self._flow_id])


class _DirectWriter:
    """Writes the flow's state without a lease: the direct executor owns the flow."""

    def __init__(self, held: HeldFlow) -> None:
        self._held = held

    async def write(self, context: FlowContext, end: RunEnd) -> None:
        await context.save(end, self._held)


def refuse_leased_flow(flow: ScheduledFlow, now: float) -> None:
    """Refuse to run directly a flow a worker runs now (its lease holds at ``now``).

    Raises:
        FlowStateError: A worker holds the flow's lease: two runs at once would run its
            steps twice.
    """
    expires = flow.lease_expires_at
    if flow.status is TaskStatus.RUNNING and expires is not None and expires > now:
        raise FlowStateError(
            flow.flow_id,
            f"flow {flow.flow_id!r} is running on worker {flow.lease_owner!r} now (its lease "
            f"holds {expires - now:.0f} s more); wait for it (session.wait) or cancel it "
            "instead of running it here",
        )
