"""The per-flow execution context: which flow is running, its log, and step numbering.

A :class:`FlowContext` lives in a context variable while an executor runs a flow. Every durable
operation (step, timer, signal wait, child, recorded value) takes its log position from it at
*call time*, so ``asyncio.gather(self.a(), self.b())`` numbers ``a`` before ``b`` on every run.
Inside a step's body, operations are numbered within that step: ``(n, 1)``, ``(n, 2)``, ...
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pyergon._hashing import same_arguments
from pyergon._hashing_data import RecordedValues
from pyergon._interrupts import (
    Cancellation,
    FlowCancelled,
    FlowSuspend,
    LeaseCheck,
    LeaseExpired,
    LogConflict,
    ReplayEnded,
)
from pyergon.clock import Clock
from pyergon.core.changes import Change
from pyergon.core.records import Attempt, Invocation, StepProgress, StoredError, format_position
from pyergon.core.retry import RetryPolicy
from pyergon.core.status import InvocationStatus, OperationKind
from pyergon.errors import NonDeterminismError, PyergonError, StorageError
from pyergon.serialization import Serializer, dumps_for

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from pyergon._output import OutputTail
    from pyergon.core.outcome import FlowOutcome
    from pyergon.core.transitions import RunEnd
    from pyergon.storage._flows import HeldFlow
    from pyergon.storage.base import ExecutionLog

__all__ = [
    "Cancellation",
    "ChildRunner",
    "FlowCancelled",
    "FlowContext",
    "FlowSuspend",
    "LeaseCheck",
    "LeaseExpired",
    "LogConflict",
    "ReplayEnded",
    "StepScope",
    "current_context",
    "current_idempotency_key",
    "current_step",
    "enter_detached_step",
    "enter_flow",
    "enter_step",
    "in_step",
    "leave_flow",
    "leave_step",
    "require_context",
]

Position = tuple[int, int]
T = TypeVar("T")

ChildRunner = Callable[[object, str, "FlowContext", Position], Awaitable["FlowOutcome[Any]"]]
"""Runs (or schedules) a child flow: ``(child, child_flow_id, parent_context, position)``."""


@dataclass(slots=True)
class StepScope:
    """One attempt of a step's body while it runs: its nested numbering, output and progress.

    Attributes:
        sequence: The step's log position.
        name: The step's name.
        started_at: When the attempt started (the flow's clock).
        next_sub_sequence: The nested position the next operation inside the body takes.
        output: What the body printed so far (see :mod:`pyergon._output`), once it printed.
        progress: The last progress the body reported (``pyergon.progress``), if any.
    """

    sequence: int
    name: str
    started_at: float
    next_sub_sequence: int = 1
    output: OutputTail | None = None
    progress: StepProgress | None = None

    def allocate(self) -> Position:
        """Return the next nested position of this step."""
        position = (self.sequence, self.next_sub_sequence)
        self.next_sub_sequence += 1
        return position


@dataclass(slots=True, eq=False)
class FlowContext:
    """Everything a running flow's durable operations need.

    Attributes:
        flow_id: The running flow's id.
        storage: Where records are written.
        serializer: How results are turned into bytes.
        clock: The time source for timers and recorded times.
        log: The flow's records, keyed by ``(sequence, sub_sequence)``.
        run_child: How this executor runs child flows.
        flow_retry_policy: The ``@flow`` method's retry policy, set when the method starts.
        suspensions: Every suspension raised during this run, gathered for the outcome.
        nondeterminism: The first mismatch between code and log found in this run, kept so
            the executor reports it even if the flow's code catches it.
        cancellation: Asked before each operation that does live work; ``None`` never cancels.
        replay_only: Run no step body and wait on nothing: stop where the log ends.
        lease: The worker's lease on the flow, checked before live work and every write, which
            storage refuses once another run holds the flow; ``None`` (a direct run) never
            expires.
        on_step_retry: Told of a step attempt that raised and runs again: the step's name,
            the error, the attempt and the seconds until the next; a worker logs it.
        thread_pool: Runs the bodies of ``def`` steps; ``None``: the loop's step threads.
        abandoned_threads: Threads of timed-out ``def`` step attempts, by step position: no
            retry of the step, and no end of the run, starts before they return.
    """

    flow_id: str
    storage: ExecutionLog
    serializer: Serializer
    clock: Clock
    log: dict[Position, Invocation]
    run_child: ChildRunner
    flow_retry_policy: RetryPolicy | None = None
    suspensions: list[FlowSuspend] = field(default_factory=list)
    root_task: asyncio.Task[Any] | None = None
    operation_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    nondeterminism: NonDeterminismError | None = None
    cancellation: Cancellation | None = None
    replay_only: bool = False
    lease: LeaseCheck | None = None
    on_step_retry: Callable[[str, BaseException, int, float], None] | None = None
    thread_pool: Executor | None = None
    abandoned_threads: dict[Position, asyncio.Future[Any]] | None = None
    running_steps: dict[tuple[str, int], StepScope] | None = None
    """The step attempts running now, by flow id and position: a worker shares one among its
    flows, so its heartbeat and a monitor can show what runs (see ``executor/_live.py``);
    ``None`` in a direct run, where nothing reads them."""
    worker_id: str | None = None
    """The worker running the flow, kept with a step's failed attempts; ``None``: a direct run."""
    abandoned: dict[Position, Attempt] | None = None
    """Step attempts an earlier run started and never ended, by position (see
    ``executor/_abandoned.py``): the step's record keeps each when the step runs again."""
    recorded: RecordedValues | None = None
    """The frames and arrays this run's records hold as artifacts: steps they are passed to
    count them by their digests (see :class:`~pyergon._hashing_data.RecordedValues`)."""
    replayed_count: int = 0
    """Final records this run returned instead of doing the work again."""
    stale: list[Invocation] | None = None
    """Final step records this run returned that code other than today's made, if any."""
    unsaved: list[Invocation] = field(default_factory=list)
    """Records kept in the log but not yet stored; :meth:`save` stores them."""
    unsaved_results: bool = False
    """Whether an unsaved record holds a result that live work may build on."""
    conflicted: bool = False
    """Whether a save found a record stored differently; the run's outcome is not written."""
    save_failure: BaseException | None = None
    """Why a save of this run failed, if one did; the run's later saves fail too."""
    _save_soon: bool = False
    _background_saves: set[asyncio.Task[None]] = field(default_factory=set)
    _saving: bool = False
    _save_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    _next_sequence: int = 1

    async def before_live_work(self, position: Position) -> None:
        """Call before an operation does work the log does not hold: a step boundary.

        Raises:
            ReplayEnded: This run only replays, and the log ends here.
            FlowCancelled: Cancellation of the flow was requested.
            LeaseExpired: The worker's lease on the flow may have run out.
        """
        if self.replay_only:
            raise ReplayEnded(position)
        # Work done so far is stored before more starts (and before a stepper pauses here),
        # so live work never builds on a result that a crash could lose: that includes a save
        # another operation of this flow has under way, and one that failed or conflicted.
        if self.unsaved_results or self._saving or self.conflicted or self.save_failure is not None:
            await self.save()
        if self.cancellation is not None and await self.cancellation.requested():
            raise FlowCancelled(f"flow {self.flow_id!r} was cancelled on request")
        if self.lease is not None:  # check_lease(), inlined: a call is ~900 instructions
            self.lease.check()

    def check_lease(self) -> None:
        """Stop the run if its lease may have run out: call before live work and writes.

        Raises:
            LeaseExpired: The worker's lease on the flow may have run out or was taken.
        """
        if self.lease is not None:
            self.lease.check()

    @property
    def holder(self) -> tuple[str, str] | None:
        """The flow and lease token the run's writes are sent under; ``None``: a direct run."""
        return None if self.lease is None else (self.flow_id, self.lease.lease_token)

    def lease_lost(self) -> LeaseExpired:
        """Storage refused a write sent under the run's lease: another run holds the flow.

        The lease is lost from now on, which stops the run (and its running steps).

        Returns:
            The error to raise.
        """
        why = (
            "storage refused a write of its records: the flow no longer runs under this "
            "worker's lease (another worker claimed it, or it was ended)"
        )
        if self.lease is not None:
            self.lease.lose(why)
        return LeaseExpired(why)

    def allocate(self) -> Position:
        """Return the log position of the operation being called now."""
        scope = _current_step.get()
        if scope is not None and scope.sequence > 0:
            return scope.allocate()
        position = (self._next_sequence, 0)
        self._next_sequence += 1
        return position

    def describe(self, position: Position) -> str:
        """Return ``"flow 'id' at position 3.1"`` for messages."""
        return f"flow {self.flow_id!r} at position {format_position(*position)}"

    def new_record(
        self,
        position: Position,
        kind: OperationKind,
        name: str,
        status: InvocationStatus,
        *,
        args_hash: str = "",
        result: bytes | None = None,
        error: StoredError | None = None,
        attempts: int = 0,
        started_at: float | None = None,
        completed_at: float | None = None,
        fire_at: float | None = None,
        child_flow_id: str | None = None,
    ) -> Invocation:
        """Return a record of this flow's operation at ``position``, not stored yet.

        Store it with :meth:`keep` or :meth:`record`; the other arguments are the fields of
        :class:`~pyergon.core.records.Invocation`.
        """
        return Invocation(
            flow_id=self.flow_id,
            sequence=position[0],
            sub_sequence=position[1],
            kind=kind,
            name=name,
            status=status,
            args_hash=args_hash,
            result=result,
            error=error,
            attempts=attempts,
            started_at=started_at,
            completed_at=completed_at,
            fire_at=fire_at,
            child_flow_id=child_flow_id,
        )

    def replayed(
        self,
        position: Position,
        kind: OperationKind,
        name: str,
        args_hash: str = "",
        arguments: tuple[tuple[Any, ...], Mapping[str, Any]] | None = None,
    ) -> Invocation | None:
        """Return the record at ``position`` after checking it matches the call being made.

        ``arguments`` (a step's positional and keyword arguments) let a record whose
        ``args_hash`` is of an older kind be checked (:func:`pyergon._hashing.same_arguments`).

        Raises:
            NonDeterminismError: The record is for a different operation.
        """
        record = self.log.get(position)
        if record is None:
            return None
        same_arguments_hash = record.args_hash == args_hash or (
            arguments is not None and same_arguments(record.args_hash, args_hash, *arguments)
        )
        if record.kind is not kind or record.name != name or not same_arguments_hash:
            current = self.new_record(
                position, kind, name, InvocationStatus.PENDING, args_hash=args_hash
            )
            error = NonDeterminismError(
                self.flow_id, format_position(*position), record.describe(), current.describe()
            )
            if self.nondeterminism is None:
                self.nondeterminism = error
            raise error
        if record.is_final:
            self.replayed_count += 1
        return record

    def note_stale(self, record: Invocation) -> None:
        """Note that this run returned ``record``, a result made by code that has changed since.

        The recorded result still stands (durable runs never redo recorded work on their
        own); whoever runs the flow is told at its end (``FlowRun.on_stale``).
        """
        if self.stale is None:
            self.stale = []
        self.stale.append(record)

    async def record(self, invocation: Invocation) -> Invocation:
        """Store ``invocation`` now, with any unsaved records before it; return it as stored.

        Raises:
            LogConflict: A final record, different from the one given, holds a position.
        """
        self.keep(invocation)
        await self.save()
        return self.log[(invocation.sequence, invocation.sub_sequence)]

    def keep(self, invocation: Invocation, *, replayable: bool = False) -> None:
        """Put ``invocation`` in the log now and store it with the run's next save.

        A save comes before any live work that follows (:meth:`before_live_work`) and with the
        run's outcome, so a crash can lose only records whose work replay does again: nothing
        done outside the process has used a result that is not stored yet.

        Args:
            invocation: The record.
            replayable: Replay gets the same record back without any work if it is lost (a
                timer that fired, a signal that was stored): it rides along with the next save
                instead of forcing one before live work.
        """
        self.log[(invocation.sequence, invocation.sub_sequence)] = invocation
        self.unsaved.append(invocation)
        if not replayable:
            self.unsaved_results = True
            if not self._save_soon:
                # Saved at the latest after this pass of the event loop: a flow that goes on
                # at once saves it with its next operation instead, but one that waits on
                # something else (a gathered step still running) must not leave it unsaved.
                self._save_soon = True
                asyncio.get_running_loop().call_soon(self._save_in_background)

    def discard_unsaved(self) -> None:
        """Drop the unsaved records: the run is abandoned and replay does their work again."""
        self.unsaved.clear()
        self.unsaved_results = False

    def _save_in_background(self) -> None:
        self._save_soon = False
        if self.unsaved_results and not self.conflicted and self.save_failure is None:
            task = asyncio.ensure_future(self._save_quietly())
            self._background_saves.add(task)
            task.add_done_callback(self._background_saves.discard)

    async def save_kept(self) -> None:
        """Store what is kept now, as the save after a pass of the event loop would.

        For someone outside the flow's tasks (the notebook stepper) who wants the records of
        operations that finished stored before reading them; a failure is raised by the run's
        next save, not here.
        """
        await self._save_quietly()

    async def _save_quietly(self) -> None:
        # The next save (or live work) raises it again.
        with contextlib.suppress(Exception, LogConflict, LeaseExpired):
            await self.save()

    async def save(self, end: RunEnd | None = None, held: HeldFlow | None = None) -> None:
        """Store the unsaved records, then leave ``held`` as ``end`` says, as one change.

        Saves of concurrent operations of one flow happen one after another, so a caller
        returns only once everything kept before its call is stored.

        Args:
            end: How the run leaves its flow; ``None`` stores only the records.
            held: The flow the run holds; required with ``end``.

        Raises:
            LogConflict: A record was already stored differently (now or by an earlier save of
                this run); nothing after it is written.
            LeaseExpired: The worker's lease on the flow may have run out, or storage refused
                the records because another run holds the flow; nothing is written.
            StorageError: The storage failed; the records of this save are dropped (replay
                does their work again).
        """
        while self._saving:  # another operation of this flow is saving: wait for its end
            waiter = asyncio.get_running_loop().create_future()
            self._save_waiters.append(waiter)
            await waiter
        if self.save_failure is not None:
            raise StorageError(
                f"flow {self.flow_id!r}: an earlier save of this run failed "
                f"({self.save_failure}); run the flow again once the storage works"
            ) from self.save_failure
        if self.conflicted:
            raise LogConflict(f"flow {self.flow_id!r}: the stored log moved on; run again")
        if not self.unsaved and end is None:
            self.unsaved_results = False
            return None
        if self.lease is not None:  # check_lease(), inlined (see before_live_work)
            self.lease.check()
        records, self.unsaved = self.unsaved, []
        self.unsaved_results = False
        self._saving = True
        try:
            if end is None:
                lease = self.lease  # .holder, inlined: a property is a call (~900 instructions)
                holder = None if lease is None else (self.flow_id, lease.lease_token)
                saved = await self.storage.apply(Change(records=tuple(records), held=holder))
            else:
                assert held is not None, "a run's end is written to the flow it holds"
                saved = await held.leave(records, end)
                if saved.moved is not None and self.lease is None and records:
                    # Lost by a direct run, which holds no lease: its records are stored as
                    # during the run (first writer wins), so it finds the other run's results.
                    saved = await self.storage.apply(Change(records=tuple(records)))
        except Exception as error:
            # What this save stored is unknown: no later save of the run may build on it.
            self.save_failure = error
            raise
        except BaseException:
            # Cancelled mid-write: keep the records for the run's next save, which stores
            # them again harmlessly if this one got through (first writer wins, same values).
            self.unsaved[:0] = records
            self.unsaved_results = self.unsaved_results or bool(records)
            raise
        finally:
            self._saving = False
            waiters, self._save_waiters = self._save_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if saved.moved is not None and end is None:
            raise self.lease_lost()  # nothing was stored; replay by the new holder does it
        for stored in saved.records:
            self.log[(stored.sequence, stored.sub_sequence)] = stored
        if saved.record_conflict:
            self.conflicted = True
            stored = saved.records[-1]
            raise LogConflict(
                f"{self.describe((stored.sequence, stored.sub_sequence))} was recorded by "
                "another run first; running again from the stored log"
            )

    def dumps(self, value: Any, what: str | Callable[[], str]) -> bytes:
        """Serialize ``value``, naming ``what`` it is in any error."""
        return dumps_for(self.serializer, value, what)

    def track(self) -> asyncio.Task[Any] | None:
        """Register the current task while a durable operation runs in it; see :meth:`tracked`.

        Returns:
            The task registered, to pass to :meth:`untrack`; ``None`` for the flow's own task.
        """
        task = asyncio.current_task()
        if task is None or task is self.root_task:
            return None
        self.operation_tasks.add(task)
        return task

    def untrack(self, task: asyncio.Task[Any] | None) -> None:
        """End what :meth:`track` started."""
        if task is not None:
            self.operation_tasks.discard(task)

    @contextmanager
    def tracked(self) -> Iterator[None]:
        """Register the current task while a durable operation runs in it.

        Operations gathered by the flow run in tasks of their own; when the flow body ends,
        the runner settles those still running instead of leaving them behind.
        """
        task = self.track()
        try:
            yield
        finally:
            self.untrack(task)

    async def run_tracked(self, operation: Awaitable[T]) -> T:
        """Await ``operation`` registered as a durable operation of this flow."""
        with self.tracked():
            return await operation

    def suspend(self, suspension: FlowSuspend) -> FlowSuspend:
        """Remember ``suspension`` for the outcome and return it for raising."""
        self.suspensions.append(suspension)
        return suspension


_current_context: ContextVar[FlowContext | None] = ContextVar("pyergon_flow", default=None)
_current_step: ContextVar[StepScope | None] = ContextVar("pyergon_step", default=None)
_detached_step_key: ContextVar[str | None] = ContextVar("pyergon_detached_step", default=None)
"""The idempotency key of a step whose body runs apart from its flow (in a process of its own)."""


def current_context() -> FlowContext | None:
    """Return the context of the flow running in this task, or ``None`` outside flows."""
    return _current_context.get()


def require_context(operation: str) -> FlowContext:
    """Return the running flow's context.

    Raises:
        PyergonError: Called outside a flow run by an executor or worker.
    """
    context = _current_context.get()
    if context is None:
        raise PyergonError(
            f"{operation} needs a running flow: call it from a @flow or @step method run by "
            "an Executor or a Worker"
        )
    return context


def current_idempotency_key() -> str:
    """Return the idempotency key of the step whose body is running: ``"flow_id:sequence"``.

    The key is the same on every attempt and replay of the step, so pass it to outside systems
    (payment providers, mail services) to let them drop a repeated request.

    Raises:
        PyergonError: Called outside the body of a step run by an executor or worker.
    """
    context = _current_context.get()
    scope = _current_step.get()
    if context is None or scope is None or scope.sequence <= 0:
        detached = _detached_step_key.get()
        if detached is not None:
            return detached
        raise PyergonError(
            "idempotency_key() needs a running step: call it from the body of a @step method "
            "run by an Executor or a Worker"
        )
    return f"{context.flow_id}:{format_position(scope.sequence)}"


def enter_detached_step(idempotency_key: str) -> None:
    """Make ``idempotency_key`` the running step's key in a process running only its body."""
    _detached_step_key.set(idempotency_key)


def in_step() -> bool:
    """Whether the current task is inside a step's body."""
    scope = _current_step.get()
    return scope is not None and scope.sequence > 0


FlowScope = tuple[Token[FlowContext | None], Token[StepScope | None]]


def enter_flow(context: FlowContext) -> FlowScope:
    """Make ``context`` the running flow (outside any step) until :func:`leave_flow`."""
    return _current_context.set(context), _current_step.set(None)


def leave_flow(scope: FlowScope) -> None:
    """End what :func:`enter_flow` started."""
    _current_step.reset(scope[1])
    _current_context.reset(scope[0])


def enter_step(attempt: StepScope) -> Token[StepScope | None]:
    """Make ``attempt`` the running step: number operations inside it, keep what it prints.

    Returns:
        The token that :func:`leave_step` takes to end it.
    """
    return _current_step.set(attempt)


def current_step() -> StepScope | None:
    """The step attempt whose body runs in this context, or ``None`` outside step bodies."""
    return _current_step.get()


def leave_step(token: Token[StepScope | None]) -> None:
    """End what :func:`enter_step` started."""
    _current_step.reset(token)
