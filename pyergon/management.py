"""Steering flows that exist: cancel, resume, retry, fork, rerun and replay them.

:class:`FlowManager` is the one implementation behind the library, the ``pyergon`` command and
the notebook toolkit. Every operation checks the flow's state first and raises
:class:`~pyergon.errors.FlowStateError` with a one-line reason when it does not fit, leaving
storage unchanged.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyergon._context import FlowContext, ReplayEnded
from pyergon._rerun import (
    FromStep,
    RerunPlan,
    dag_steps,
    generations,
    plan_forgotten,
    require_finished,
    rerun_flow,
    stale_child_positions,
)
from pyergon._values import read_value
from pyergon.clock import Clock, SystemClock
from pyergon.core.changes import Change
from pyergon.core.outcome import Completed, FlowOutcome
from pyergon.core.records import Invocation, ScheduledFlow, format_position
from pyergon.core.status import TaskStatus
from pyergon.core.transitions import RunEnd
from pyergon.core.workers import WorkerRecord, WorkerState, worker_state
from pyergon.decorators import flow_entry, require_flow_class, require_flow_instance
from pyergon.errors import (
    FlowDefinitionError,
    FlowNotFoundError,
    FlowStateError,
    NonDeterminismError,
    StorageError,
)
from pyergon.executor._inputs import decode_flow, encode_flow
from pyergon.executor._runner import FLOW_RETRY_SEQUENCE, FlowRun, drive_flow
from pyergon.executor.executor import validate_flow_id, validate_new_flow_id
from pyergon.history import load_history
from pyergon.serialization import Serializer, serializer_for
from pyergon.storage._flows import request_cancel, requeue, save_records
from pyergon.storage.base import ExecutionLog, WorkerRegistry
from pyergon.storage.memory import InMemoryExecutionLog

__all__ = ["Divergence", "FlowManager", "ReplayResult"]


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where today's code parts from a flow's recorded log.

    Attributes:
        position: The log position, such as ``"3"`` or ``"3.1"``.
        recorded: The operation the log holds there.
        current: The operation the code calls there now.
    """

    position: str
    recorded: str
    current: str


@dataclass(frozen=True, slots=True, repr=False)
class ReplayResult:
    """What replaying a flow's log against today's code found.

    Attributes:
        flow_id: The replayed flow.
        consistent: Whether the code matched every record it reached.
        replayed: How many recorded operations the code reached and took from the log.
        recorded: How many records the log holds (flow-level retry timers not counted).
        ended_at: The position where the log ran out (the flow is waiting or was running
            there), or ``None`` if the code ran to its end.
        divergence: The first mismatch, if any.
        outcome: The flow's outcome when the replay ran to its end, else ``None``.
        stale: The recorded steps the replay reached whose code changed since they were
            recorded, as ``"<position> <name>"``: consistent, but today's code would compute
            them anew (``rerun`` does).
    """

    flow_id: str
    consistent: bool
    replayed: int
    recorded: int
    ended_at: str | None = None
    divergence: Divergence | None = None
    outcome: FlowOutcome[Any] | None = field(default=None, compare=False)
    stale: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line saying what the replay found."""
        if self.divergence is not None:
            return (
                f"flow {self.flow_id!r} diverges at position {self.divergence.position}: the log "
                f"records {self.divergence.recorded} but the code calls {self.divergence.current}"
            )
        reached = f"{self.replayed} of {self.recorded} recorded operations replayed"
        if self.ended_at is not None:
            ending = f"; the log ends at position {self.ended_at}"
        elif isinstance(self.outcome, Completed) and self.outcome.error is None:
            ending = f"; it returns {_short(repr(self.outcome.result))}"
        elif isinstance(self.outcome, Completed):
            ending = f"; it fails with {_short(repr(self.outcome.error))}"
        else:
            ending = ""
        if self.stale:
            plural = "s were" if len(self.stale) > 1 else " was"
            ending = (
                f", but {len(self.stale)} recorded step{plural} made by code that has changed "
                f"since ({', '.join(self.stale)}; await session.rerun({self.flow_id!r}) "
                f"recomputes from there){ending}"
            )
        return f"flow {self.flow_id!r} is consistent with its log ({reached}){ending}"

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"ReplayResult({self.summary()})"

    def _repr_html_(self) -> str:
        colour = "#c62828" if not self.consistent else "#ef6c00" if self.stale else "#2e7d32"
        return f'<span style="color:{colour}">{html.escape(self.summary())}</span>'


class FlowManager:
    """Management operations on the flows in one storage.

    Args:
        storage: The storage holding the flows.
        flow_classes: Flow classes that :meth:`replay` can rebuild, by their stored type name.
        serializer: Must match the one the flows were stored with.
        clock: Time source for lease checks.
    """

    def __init__(
        self,
        storage: ExecutionLog,
        flow_classes: Iterable[type] = (),
        *,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.storage = storage
        self.serializer = serializer_for(storage, serializer)
        self.clock = clock or SystemClock()
        self._classes: dict[str, type] = {}
        for flow_class in flow_classes:
            self.register(flow_class)

    def __repr__(self) -> str:
        return f"FlowManager(storage={self.storage!r})"

    def register(self, flow_class: type) -> None:
        """Let :meth:`replay` rebuild flows of ``flow_class``; registering again replaces it."""
        self._classes[require_flow_class(flow_class)] = flow_class

    @property
    def classes(self) -> dict[str, type]:
        """The registered flow classes by stored type name (a copy)."""
        return dict(self._classes)

    def flow_class(self, flow_type: str) -> type:
        """The class registered for ``flow_type``.

        Raises:
            FlowDefinitionError: None is registered.
        """
        cls = self._classes.get(flow_type)
        if cls is None:
            raise FlowDefinitionError(
                f"no class registered for flow type {flow_type!r}; register it "
                "(session.register(Class), FlowManager.register(Class)) or pass flow_class="
            )
        return cls

    async def get(self, flow_id: str) -> ScheduledFlow:
        """Return the flow with ``flow_id``.

        Raises:
            FlowNotFoundError: No such flow.
        """
        flow = await self.storage.get_flow(validate_flow_id(flow_id))
        if flow is None:
            raise FlowNotFoundError(flow_id)
        return flow

    async def cancel(self, flow_id: str) -> ScheduledFlow:
        """Cancel a flow: at once if it waits or is queued, at its next step boundary if running.

        Returns:
            The flow as stored: ``CANCELLED``, or ``RUNNING`` with ``cancel_requested`` set.

        Raises:
            FlowNotFoundError: No such flow.
            FlowStateError: The flow already finished.
        """
        flow = await self.get(flow_id)
        if flow.status.is_final:
            raise FlowStateError(
                flow_id, f"flow {flow_id!r} is already {flow.status.value}; nothing to cancel"
            )
        cancelled = await request_cancel(self.storage, flow_id)
        if cancelled is None:
            raise FlowNotFoundError(flow_id)
        if cancelled.status.is_final and cancelled.status is not TaskStatus.CANCELLED:
            raise FlowStateError(
                flow_id, f"flow {flow_id!r} finished ({cancelled.status.value}) before the cancel"
            )
        return cancelled

    async def resume(self, flow_id: str, *, force: bool = False) -> ScheduledFlow:
        """Put a suspended or stuck flow back in the queue so a worker runs it now.

        A suspended flow resumes before its timer is due (its wait is checked again and it
        suspends again if nothing changed). A running flow counts as stuck when it has no live
        lease: a direct executor that died, a worker whose lease ran out, or a worker whose
        record says it stopped or died.

        Args:
            flow_id: The flow.
            force: Resume a running flow even though its worker looks alive. That worker may
                still be inside a step, which then runs twice; its writes are refused.

        Returns:
            The flow, now ``PENDING`` (or unchanged if it already was).

        Raises:
            FlowNotFoundError: No such flow.
            FlowStateError: The flow finished, or a live worker holds it (without ``force``).
        """
        flow = await self.get(flow_id)
        if flow.status is TaskStatus.PENDING:
            return flow
        if flow.status.is_final:
            failed = flow.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)
            hint = "; use retry to run it again" if failed else ""
            raise FlowStateError(
                flow_id, f"flow {flow_id!r} is {flow.status.value} and cannot resume{hint}"
            )
        lease_until = flow.lease_expires_at if flow.status is TaskStatus.RUNNING else None
        if (
            not force
            and lease_until is not None
            and lease_until > self.clock.now()
            and await self._holder_is_live(flow)
        ):
            raise FlowStateError(
                flow_id,
                f"flow {flow_id!r} is running on worker {flow.lease_owner!r} (lease valid for "
                f"{lease_until - self.clock.now():.1f} s more); cancel it first, wait, or force "
                "it (the worker may be inside a step, which would then run twice)",
            )
        resumed = await requeue(self.storage, flow_id, from_statuses=(flow.status,))
        if resumed is None:
            raise FlowStateError(flow_id, f"flow {flow_id!r} changed state meanwhile; try again")
        return resumed

    async def _holder_is_live(self, flow: ScheduledFlow) -> bool:
        """Whether the worker holding ``flow`` may be alive, as far as its record tells."""
        if not isinstance(self.storage, WorkerRegistry) or flow.lease_owner is None:
            return True
        record = await self.storage.get_worker(flow.lease_owner)
        return record is None or worker_state(record, self.clock.now()) is WorkerState.LIVE

    async def output(self, flow_id: str, step: str | int | None = None) -> str:
        """What a flow's steps printed, as recorded; see :meth:`FlowHistory.output`.

        Args:
            flow_id: The flow.
            step: One step, by position (``3``, ``"3"``) or name; ``None``: every step that
                printed, each headed by a line ``==> 3 crunch <==``.

        Raises:
            FlowNotFoundError: No such flow.
            StepNotFoundError: ``step`` names no step of the flow; the message lists them.
        """
        return (await load_history(self.storage, flow_id)).output(step)

    async def value(self, flow_id: str, step: str | int | None = None) -> Any:
        """The value a flow returned, or one of its steps returned, read back from storage.

        Args:
            flow_id: The flow.
            step: One step, by position (``3``, ``"3"``) or name; ``None``: the flow's result.

        Raises:
            FlowNotFoundError: No such flow.
            StepNotFoundError: ``step`` names no step of the flow; the message lists them.
            FlowStateError: The flow or step has not finished, or it failed (the message gives
                its error) or was cancelled; or a name that names several calls.
            SerializationError: The value cannot be read back with this serializer.
        """
        storage = self.storage

        async def workers() -> list[WorkerRecord]:
            return await storage.list_workers() if isinstance(storage, WorkerRegistry) else []

        return await read_value(storage, self.serializer, flow_id, step, workers)

    async def workers(self) -> list[WorkerRecord]:
        """Every worker the storage has a record of, live, stopped or dead, by id.

        Raises:
            StorageError: The storage keeps no worker records.
        """
        if not isinstance(self.storage, WorkerRegistry):
            raise StorageError(
                f"{type(self.storage).__name__} keeps no worker records; the built-in "
                "backends (memory, SQLite, Redis, PostgreSQL) do"
            )
        return await self.storage.list_workers()

    async def retry(self, flow_id: str) -> ScheduledFlow:
        """Run a failed or cancelled flow again; steps that succeeded stay recorded.

        Failed records (and failed child flows) are cleared so they run again, and the flow's
        attempt count starts over.

        Returns:
            The flow, now ``PENDING``.

        Raises:
            FlowNotFoundError: No such flow.
            FlowStateError: The flow did not fail and was not cancelled.
        """
        flow = await self.get(flow_id)
        retryable = (TaskStatus.FAILED, TaskStatus.CANCELLED)
        if flow.status not in retryable:
            raise FlowStateError(
                flow_id,
                f"flow {flow_id!r} is {flow.status.value}; only FAILED or CANCELLED flows can "
                "be retried",
            )
        # One guarded change: nothing is deleted if the flow moved on since it was read.
        retried = await requeue(
            self.storage,
            flow_id,
            from_statuses=retryable,
            fields={"error": None, "result": None, "attempt": 1},
            reopen_failed=True,
        )
        if retried is None:
            raise FlowStateError(flow_id, f"flow {flow_id!r} changed state meanwhile; try again")
        return retried

    async def fork(self, flow_id: str, *, from_step: int, new_flow_id: str | None = None) -> str:
        """Start a new flow whose log is the first ``from_step`` positions of another.

        The new flow has the same type and inputs, replays the copied records and runs live
        after them; the original is not touched. Use it to explore "what if step N had gone
        differently" with fixed code, or to re-run the tail of a finished flow.

        Args:
            flow_id: The flow to fork.
            from_step: How many top-level log positions to keep (0 keeps none).
            new_flow_id: The new flow's id; defaults to ``"<flow_id>~fork-<random>"``.

        Returns:
            The new flow's id; the flow is ``PENDING`` for a worker, or run it with an
            ``Executor`` under that id.

        Raises:
            FlowNotFoundError: No such flow.
            FlowStateError: The flow is running, ``from_step`` is past the end of its log, or
                ``new_flow_id`` exists.
        """
        flow = await self.get(flow_id)
        if flow.status is TaskStatus.RUNNING:
            raise FlowStateError(
                flow_id, f"flow {flow_id!r} is running; fork it once it waits or has finished"
            )
        records = [
            record
            for record in await self.storage.load_invocations(flow_id)
            if record.sequence != FLOW_RETRY_SEQUENCE
        ]
        last = max((record.sequence for record in records), default=0)
        if isinstance(from_step, bool) or not isinstance(from_step, int) or from_step < 0:
            raise FlowStateError(flow_id, f"from_step must be an integer >= 0, got {from_step!r}")
        if from_step > last:
            raise FlowStateError(
                flow_id,
                f"flow {flow_id!r} records positions 1 to {last}; from_step={from_step} is "
                "past the end of its log",
            )
        target = new_flow_id or f"{flow_id}~fork-{uuid.uuid4().hex[:8]}"
        validate_new_flow_id(target)
        if await self.storage.get_flow(target) is not None:
            raise FlowStateError(target, f"flow {target!r} already exists; choose another id")
        await save_records(
            self.storage,
            [_moved(record, target) for record in records if record.sequence <= from_step],
        )
        # The flow record comes last: a fork interrupted half-way leaves no runnable flow.
        now = self.clock.now()
        await self.storage.create_flow(
            ScheduledFlow(
                flow_id=target,
                flow_type=flow.flow_type,
                payload=flow.payload,
                status=TaskStatus.PENDING,
                created_at=now,
                updated_at=now,
            )
        )
        return target

    async def rerun(
        self,
        flow_id: str,
        *,
        from_step: FromStep = "changed",
        inputs: object | None = None,
        flow_class: type | None = None,
    ) -> RerunPlan:
        """Recompute a finished flow from a step on, under its own id, keeping the old results.

        The flow is copied to a previous generation (``"<flow id>~gen-<n>"``), the records
        from ``from_step`` on are forgotten (in a DAG flow: that step's and its descendants'),
        and the flow is queued again: its next run (a worker's, or an ``Executor``'s under its
        id) replays the records before and computes the rest. See :mod:`pyergon._rerun`.

        Args:
            flow_id: The flow, finished (``COMPLETE``, ``FAILED`` or ``CANCELLED``).
            from_step: ``"changed"`` (the first step whose code changed since it was recorded,
                or the steps added since), a step name, or a log position from 1 (unlike
                :meth:`fork`'s, which counts the positions kept, this one runs again).
            inputs: A new instance of the flow's class whose fields replace its inputs; every
                step runs again (``from_step`` must be left out).
            flow_class: The flow's class today; defaults to the registered one (needed for
                ``"changed"``).

        Returns:
            What was done: the steps that run again and where the old results are kept.

        Raises:
            FlowNotFoundError: No such flow.
            FlowStateError: The flow has not finished, nothing changed, or it moved on meanwhile.
            StepNotFoundError: No recorded step has that name or position.
            FlowDefinitionError: ``inputs`` is not a flow of the flow's type.
        """
        flow = await self.get(flow_id)
        require_finished(flow)
        if flow.parent_flow_id is not None:
            position = (flow.parent_sequence or "1").split(".")[0]
            raise FlowStateError(
                flow_id,
                f"flow {flow_id!r} is a child of flow {flow.parent_flow_id!r}; rerun the parent "
                f"from the child's position: rerun({flow.parent_flow_id!r}, from_step={position})",
            )
        cls = flow_class or self._classes.get(flow.flow_type)
        payload = None
        if inputs is not None and from_step != "changed":
            raise FlowStateError(
                flow_id,
                f"new inputs recompute every step of flow {flow_id!r}: records made from the old "
                "ones would stay otherwise; leave from_step out",
            )
        if inputs is not None:
            type_name = require_flow_instance(inputs)
            if type_name != flow.flow_type:
                raise FlowDefinitionError(
                    f"flow {flow_id!r} is of type {flow.flow_type!r}; its new inputs must be too, "
                    f"not {type_name!r}"
                )
            cls = cls or type(inputs)
            payload = encode_flow(self.serializer, inputs, type_name)
            if from_step == "changed":
                from_step = 1
        records = await self.storage.load_invocations(flow_id)
        children = frozenset[int]()
        if from_step == "changed":
            children = await stale_child_positions(self.storage, records, self._classes)
        dag = None if cls is None else dag_steps(cls)
        forgotten = plan_forgotten(flow_id, records, from_step, cls, dag, children)
        return await rerun_flow(self.storage, flow, forgotten, self.clock, payload)

    async def generations(self, flow_id: str) -> list[ScheduledFlow]:
        """The previous generations of a flow that reruns kept, oldest first."""
        await self.get(flow_id)
        return await generations(self.storage, flow_id)

    async def replay(self, flow_id: str, flow_class: type | None = None) -> ReplayResult:
        """Run today's code against a flow's recorded log without running any step body.

        Nothing is written to storage: the replay works on a copy of the log, stops where the
        log ends, and reports the first position where the code calls something else.

        Args:
            flow_id: The flow to replay.
            flow_class: The flow's class; defaults to the one registered for its type.

        Raises:
            FlowNotFoundError: No such flow.
            FlowDefinitionError: No class is known for the flow's type, or ``flow_class`` is
                of another type.
            SerializationError: The stored inputs no longer fit the class's fields.
        """
        flow = await self.get(flow_id)
        cls = flow_class or self.flow_class(flow.flow_type)
        type_name = require_flow_class(cls)
        if type_name != flow.flow_type:
            raise FlowDefinitionError(
                f"flow {flow_id!r} is of type {flow.flow_type!r} but {cls.__qualname__} is flow "
                f"type {type_name!r}; replay it with the class of its type"
            )
        method_name, _ = flow_entry(cls)
        instance: Any = decode_flow(self.serializer, cls, flow.payload)
        records = await self.storage.load_invocations(flow_id)
        copy = InMemoryExecutionLog()
        await copy.create_flow(flow.replace(status=TaskStatus.RUNNING))
        signals = await self.storage.list_signals(flow_id)
        await copy.apply(Change(records=tuple(records), signals=tuple(signals)))
        contexts: list[FlowContext] = []
        run = FlowRun(
            flow=instance,
            flow_id=flow_id,
            storage=copy,
            serializer=self.serializer,
            clock=self.clock,
            entry=lambda running: getattr(running, method_name)(),
            run_child=_no_live_children,
            writer=_DiscardingWriter(),
            attempt=flow.attempt,
            replay_only=True,
            observe=contexts.append,
        )
        recorded = sum(1 for record in records if record.sequence != FLOW_RETRY_SEQUENCE)
        outcome: FlowOutcome[Any] | None = None
        divergence: Divergence | None = None
        ended_at: str | None = None
        try:
            outcome = await drive_flow(run)
        except NonDeterminismError as error:
            divergence = Divergence(error.sequence, error.recorded, error.current)
        except ReplayEnded as ended:
            ended_at = format_position(*ended.position)
        children = await _stale_children(self.storage, records, self._classes)
        return ReplayResult(
            flow_id,
            consistent=divergence is None,
            replayed=_replayed(contexts),
            recorded=recorded,
            ended_at=ended_at,
            divergence=divergence,
            outcome=outcome,
            stale=_stale_steps(contexts) + children,
        )


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _moved(record: Invocation, flow_id: str) -> Invocation:
    return record.replace(flow_id=flow_id)


def _stale_steps(contexts: list[FlowContext]) -> tuple[str, ...]:
    """The stale records the replay returned, as ``"<position> <name>"``."""
    stale = contexts[-1].stale if contexts else None
    return tuple(f"{record.position} {record.name}" for record in stale or ())


async def _stale_children(
    storage: ExecutionLog, records: list[Invocation], classes: dict[str, type]
) -> tuple[str, ...]:
    """The child flows holding stale results, as ``"<position> child <type>"``."""
    positions = await stale_child_positions(storage, records, classes)
    return tuple(
        f"{record.position} child {record.name}"
        for record in records
        if record.child_flow_id is not None and record.sequence in positions
    )


def _replayed(contexts: list[FlowContext]) -> int:
    return contexts[-1].replayed_count if contexts else 0


async def _no_live_children(*_args: object) -> FlowOutcome[Any]:  # pragma: no cover - guarded
    raise AssertionError("a replay reached a live child; before_live_work should stop it")


class _DiscardingWriter:
    """A replay writes nothing back: its records and every state change are dropped."""

    async def write(self, context: FlowContext, end: RunEnd) -> None:
        del end
        context.discard_unsaved()
