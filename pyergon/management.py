"""Steering flows that exist: cancel, resume, retry, fork, rerun, replay and delete them.

:class:`FlowManager` is the one implementation behind the library, the ``pyergon`` command and
the notebook toolkit. Every operation checks the flow's state first and raises
:class:`~pyergon.errors.FlowStateError` with a one-line reason when it does not fit, leaving
storage unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from datetime import timedelta
from typing import Any

from pyergon._artifact_gc import (
    DEFAULT_GRACE,
    GcReport,
    collect_artifacts,
    delete_flows,
    prune_flows,
)
from pyergon._replay import Divergence, ReplayResult, replay_flow
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
from pyergon.core.records import Invocation, ScheduledFlow
from pyergon.core.status import TaskStatus
from pyergon.core.workers import WorkerRecord, WorkerState, worker_state
from pyergon.decorators import require_flow_class, require_flow_instance
from pyergon.errors import (
    FlowDefinitionError,
    FlowNotFoundError,
    FlowStateError,
    StorageError,
)
from pyergon.executor._inputs import encode_flow
from pyergon.executor._runner import FLOW_RETRY_SEQUENCE
from pyergon.executor.executor import validate_flow_id, validate_new_flow_id
from pyergon.history import load_history
from pyergon.serialization import Serializer, serializer_for
from pyergon.storage._flows import request_cancel, requeue, save_records
from pyergon.storage.base import ExecutionLog, WorkerRegistry

__all__ = ["Divergence", "FlowManager", "GcReport", "ReplayResult"]


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

    async def gc(
        self, *, dry_run: bool = False, older_than: float | timedelta = DEFAULT_GRACE
    ) -> GcReport:
        """Remove the artifacts no stored payload names; safe while workers run.

        See :func:`~pyergon._artifact_gc.collect_artifacts`: forks and reruns share artifacts,
        so one stays while any record names it, and one written in the last ``older_than``
        seconds stays too (a worker may be about to save the record naming it).

        Args:
            dry_run: Remove nothing; report what would be removed.
            older_than: The grace period, in seconds or as a ``timedelta``.

        Returns:
            What was removed and kept (it says so when the storage keeps no artifacts).
        """
        return await collect_artifacts(self.storage, dry_run=dry_run, older_than=older_than)

    async def delete(self, flow_id: str, *, grace: float | timedelta = DEFAULT_GRACE) -> GcReport:
        """Delete a flow, its records, signals and child flows, then artifacts only it named.

        Args:
            flow_id: The flow; it must not be running.
            grace: Artifacts written within this many seconds stay (see :meth:`gc`).

        Returns:
            The flows deleted (the flow and its children) and the artifacts removed.

        Raises:
            FlowNotFoundError: No such flow.
            FlowStateError: The flow or one of its child flows is running.
        """
        return await delete_flows(self.storage, [validate_flow_id(flow_id)], grace=grace)

    async def prune(
        self,
        older_than: float | timedelta,
        *,
        statuses: Collection[TaskStatus] | None = None,
        flow_type: str | None = None,
        dry_run: bool = False,
        grace: float | timedelta = DEFAULT_GRACE,
    ) -> GcReport:
        """Delete the flows last updated more than ``older_than`` ago, then their artifacts.

        Top-level flows are chosen, each deleted with its child flows; artifacts another
        record still names stay.

        Args:
            older_than: Seconds, or a ``timedelta``.
            statuses: Which statuses go; defaults to the final ones (``COMPLETE``,
                ``FAILED``, ``CANCELLED``).
            flow_type: Only flows of this type.
            dry_run: Delete nothing; report what would go.
            grace: Artifacts written within this many seconds stay (see :meth:`gc`).

        Raises:
            ValueError: ``older_than`` is negative or ``statuses`` holds ``RUNNING``.
        """
        return await prune_flows(
            self.storage,
            older_than,
            statuses=statuses,
            flow_type=flow_type,
            dry_run=dry_run,
            grace=grace,
            now=self.clock.now(),
        )

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
        return await replay_flow(
            self.storage,
            flow,
            cls,
            serializer=self.serializer,
            clock=self.clock,
            classes=self._classes,
        )


def _moved(record: Invocation, flow_id: str) -> Invocation:
    return record.replace(flow_id=flow_id)
