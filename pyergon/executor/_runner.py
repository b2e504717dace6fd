"""Driving one flow's body to an outcome: shared by the direct Executor and by workers.

:func:`drive_flow` runs the body against the flow's log, plans flow-level retries and turns the
end of a run into a :data:`~pyergon.core.FlowOutcome`. Writing the flow's own state is left to
a :class:`FlowStateWriter`: the direct executor writes it plainly, a worker writes it with its
lease token.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Collection, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from pyergon._context import (
    Cancellation,
    ChildRunner,
    FlowCancelled,
    FlowContext,
    FlowSuspend,
    LeaseCheck,
    LogConflict,
    Position,
    ReplayEnded,
    StepScope,
    enter_flow,
    leave_flow,
)
from pyergon._output import capture_step_output
from pyergon.clock import Clock
from pyergon.core.outcome import Completed, FlowOutcome, Suspended, SuspendReason
from pyergon.core.records import Attempt, Invocation, ScheduledFlow, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.core.transitions import RunEnd
from pyergon.errors import (
    ArtifactError,
    FlowCancelledError,
    NonDeterminismError,
    PyergonError,
    SerializationError,
    SignatureError,
)
from pyergon.executor._offload import wait_for_abandoned
from pyergon.executor._stale import StaleHandler
from pyergon.executor._steps import encode_value
from pyergon.serialization import (
    Serializer,
    loads_for,
    rebuild_exception,
    serialize_exception,
)
from pyergon.storage._flows import reopen_failed_work
from pyergon.storage.base import ExecutionLog

__all__ = [
    "FLOW_RETRY_SEQUENCE",
    "FlowRun",
    "FlowStateWriter",
    "drive_flow",
    "log_by_position",
    "read_log",
    "stored_outcome",
]

FLOW_RETRY_SEQUENCE = 0
"""Log sequence of flow-level operations: the durable backoff timers between flow attempts."""


class FlowStateWriter(Protocol):
    """Writes the state a run leaves its flow in, together with the run's unsaved records."""

    async def write(self, context: FlowContext, end: RunEnd) -> None:
        """Save ``context``'s unsaved records and leave the flow as ``end`` says.

        Raises:
            LogConflict: A record was stored differently by another run; nothing was written.
        """
        ...


@dataclass(slots=True)
class FlowRun:
    """Everything needed to run one flow's body once more.

    Attributes:
        flow: The flow instance.
        flow_id: Its id.
        storage: Where its records live.
        serializer: How values become bytes.
        clock: The time source.
        entry: Calls the flow's ``@flow`` method.
        run_child: How child flows are run or scheduled.
        writer: Where the flow's own state goes.
        attempt: The flow-level attempt this run starts as.
        log: The flow's records; read from storage when ``None``.
        lease: A worker's lease on the flow (see ``FlowContext.lease``); ``None``: a direct run.
        on_attempt_failed: Told of each flow-level attempt that raised: the error, the attempt
            and the seconds until the next (``None``: the flow failed); a worker logs it.
        on_step_retry: See ``FlowContext.on_step_retry``.
        thread_pool: Runs the bodies of ``def`` steps; ``None``: the loop's step threads.
        running_steps: Where the run's step attempts are listed while they run (a worker's
            :class:`~pyergon.executor._live.LiveSteps`); ``None``: the run's own.
        on_stale: Told at the run's end if it returned recorded results that code other than
            today's made (see :mod:`pyergon.executor._stale`); ``None``: nobody is told.
        worker_id: The worker running the flow (see ``FlowContext.worker_id``).
        abandoned: Step attempts an earlier run left unended (see ``FlowContext.abandoned``).
    """

    flow: Any
    flow_id: str
    storage: ExecutionLog
    serializer: Serializer
    clock: Clock
    entry: Callable[[Any], Awaitable[Any]]
    run_child: ChildRunner
    writer: FlowStateWriter
    attempt: int = 1
    log: dict[Position, Invocation] | None = None
    cancellation: Cancellation | None = None
    replay_only: bool = False
    observe: Callable[[FlowContext], None] | None = None
    lease: LeaseCheck | None = None
    on_attempt_failed: Callable[[BaseException, int, float | None], None] | None = None
    on_step_retry: Callable[[str, BaseException, int, float], None] | None = None
    thread_pool: Executor | None = None
    running_steps: dict[tuple[str, int], StepScope] | None = None
    on_stale: StaleHandler | None = None
    worker_id: str | None = None
    abandoned: dict[Position, Attempt] | None = None


async def read_log(storage: ExecutionLog, flow_id: str) -> dict[Position, Invocation]:
    """Return a flow's records keyed by position."""
    return log_by_position(await storage.load_invocations(flow_id))


def log_by_position(records: Iterable[Invocation]) -> dict[Position, Invocation]:
    """Key a flow's records by their log position."""
    return {(record.sequence, record.sub_sequence): record for record in records}


async def drive_flow(run: FlowRun) -> FlowOutcome[Any]:
    """Run the flow until it finishes, fails for good or has to wait; write its state.

    Flow-level retries with no backoff happen within this call; a backoff is a durable timer
    and ends the call with ``Suspended(reason=RETRY)``. A run that finds one of its records
    stored differently by another run (:class:`~pyergon._context.LogConflict`) runs again from
    the stored log.

    Raises:
        NonDeterminismError: The code no longer matches the flow's log; no flow state is
            written, so the caller decides what the flow's status becomes.
        SignatureError: The serializer refused a stored record (another key wrote it); no
            flow state is written either.
    """
    attempt = run.attempt
    log = run.log if run.log is not None else await read_log(run.storage, run.flow_id)
    capture_step_output()
    while True:
        context = FlowContext(
            flow_id=run.flow_id,
            storage=run.storage,
            serializer=run.serializer,
            clock=run.clock,
            log=log,
            run_child=run.run_child,
            cancellation=run.cancellation,
            replay_only=run.replay_only,
            lease=run.lease,
            on_step_retry=run.on_step_retry,
            thread_pool=run.thread_pool,
            running_steps=run.running_steps,
            worker_id=run.worker_id,
            abandoned=run.abandoned,
        )
        try:
            outcome = await _attempt(run, context, attempt)
        except LogConflict:
            log = await read_log(run.storage, run.flow_id)
            continue
        if isinstance(outcome, int):  # a retry without backoff: run the next attempt now
            attempt = outcome
            log = await read_log(run.storage, run.flow_id)
            continue
        if context.stale is not None and run.on_stale is not None:
            run.on_stale(run.flow_id, run.flow, context.stale)
        return outcome


async def _attempt(run: FlowRun, context: FlowContext, attempt: int) -> FlowOutcome[Any] | int:
    """Run one attempt; return its outcome, or the next attempt's number to run it at once."""
    backoff = await _backoff_in_progress(run, context)
    if backoff is not None:
        await run.writer.write(context, _suspended(backoff.fire_at, attempt))
        return Suspended(run.flow_id, SuspendReason.RETRY, (backoff.name,), backoff.fire_at)
    if run.observe is not None:
        run.observe(context)
    try:
        result = await _run_body(context, run)
        if not context.suspensions:
            payload = await _encode_result(run, result)
    except FlowSuspend:
        return await _suspend(run, context, attempt)
    except FlowCancelled as cancelled:
        error = FlowCancelledError(str(cancelled))
        await run.writer.write(context, _final(TaskStatus.CANCELLED, attempt, error=error))
        return Completed(run.flow_id, error=error, status=TaskStatus.CANCELLED)
    except NonDeterminismError:
        await _save_quietly(context)  # the work before the mismatch stays done
        raise  # a problem of the code, not an outcome of the flow: the caller reports it
    except SignatureError:
        await _save_quietly(context)
        raise  # this process's key refuses a stored record: the flow is left for another
    except ArtifactError:
        await _save_quietly(context)
        raise  # a large value cannot be written or read here: storage trouble, not the flow's
    except LogConflict:
        raise
    except Exception as error:
        if context.save_failure is not None:
            raise  # the storage failed, not the flow: the caller runs it again later
        if context.conflicted:
            raise LogConflict(str(error)) from error
        if context.suspensions:
            return await _suspend(run, context, attempt)
        delay = await _plan_retry(run, context, error, attempt)
        wake_at = None if delay is None else run.clock.now() + delay
        if delay is None:
            stored = StoredError.describe(error, serialize_exception(run.serializer, error))
            await run.writer.write(context, _final(TaskStatus.FAILED, attempt, error=stored))
        elif delay > 0:
            await run.writer.write(context, _suspended(wake_at, attempt + 1))
        if run.on_attempt_failed is not None:  # said once it is stored
            run.on_attempt_failed(error, attempt, delay)
        if delay is None:
            return Completed(run.flow_id, error=error, status=TaskStatus.FAILED)
        if delay > 0:
            name = f"retry-after-attempt-{attempt}"
            return Suspended(run.flow_id, SuspendReason.RETRY, (name,), wake_at)
        return attempt + 1
    if context.suspensions:
        return await _suspend(run, context, attempt)
    await run.writer.write(
        context, RunEnd(TaskStatus.COMPLETE, {"result": payload, "attempt": attempt})
    )
    return Completed(run.flow_id, result=result)


def _final(status: TaskStatus, attempt: int, *, error: StoredError | BaseException) -> RunEnd:
    """The end of a run in a final status with an error."""
    stored = error if isinstance(error, StoredError) else StoredError.describe(error)
    return RunEnd(status, {"error": stored, "attempt": attempt})


def _suspended(
    wake_at: float | None,
    attempt: int,
    signals: Collection[str] = (),
    children: Collection[str] = (),
) -> RunEnd:
    """The end of a run that waits: until ``wake_at`` if given, for signals or children.

    A signal or child that arrives while the run ends moves the flow's version on; the end is
    then decided again and requeues the flow instead (see ``HeldFlow.leave``).
    """
    return RunEnd(
        TaskStatus.SUSPENDED,
        {"wake_at": wake_at, "attempt": attempt},
        waiting_signals=tuple(signals),
        waiting_children=tuple(children),
    )


async def _save_quietly(context: FlowContext) -> None:
    """Save what the run did before an error that is being reported anyway."""
    try:
        await context.save()
    except (Exception, LogConflict):
        context.discard_unsaved()  # replay does that work again


def stored_outcome(flow: ScheduledFlow, serializer: Serializer) -> Completed[Any]:
    """Return the outcome of a flow that is final in storage."""
    if flow.status is TaskStatus.COMPLETE:
        result = (
            None
            if flow.result is None
            else loads_for(serializer, flow.result, f"the result of flow {flow.flow_id!r}")
        )
        return Completed(flow.flow_id, result=result)
    error: BaseException
    if flow.error is not None:
        error = rebuild_exception(serializer, flow.error)
    else:
        error = PyergonError(f"flow {flow.flow_id!r} was {flow.status.value.lower()}")
    return Completed(flow.flow_id, error=error, status=flow.status)


async def _encode_result(run: FlowRun, result: Any) -> bytes | None:
    if result is None:
        return None
    return await encode_value(run.serializer, result, lambda: f"the result of flow {run.flow_id!r}")


async def _run_body(context: FlowContext, run: FlowRun) -> Any:
    # Entered and left by hand: a ``with`` on a generator-based context manager costs about
    # 3,000 instructions a run (benchmarks/README.md).
    scope = enter_flow(context)
    try:
        context.root_task = asyncio.current_task()
        try:
            try:
                result = await run.entry(run.flow)
            except FlowSuspend:
                await _settle_leftovers(context, cancel=False)
                if context.nondeterminism is not None:
                    raise context.nondeterminism from None
                raise
            except Exception:
                await _settle_leftovers(context, cancel=True)
                # Report a mismatch with the log even if the flow's code caught it.
                if context.nondeterminism is not None:
                    raise context.nondeterminism from None
                raise
            except BaseException:
                await _settle_leftovers(context, cancel=True, abandon_writes=True)
                if context.nondeterminism is not None and isinstance(
                    error_in_flight(), ReplayEnded
                ):
                    raise context.nondeterminism from None
                raise
            if context.operation_tasks:  # a body that returned without awaiting what it started
                await _settle_leftovers(context, cancel=True)
        finally:
            if context.abandoned_threads:  # the run does not end while a step's thread runs
                await wait_for_abandoned(context)
    finally:
        leave_flow(scope)
    if context.nondeterminism is not None:
        raise context.nondeterminism
    return result


def error_in_flight() -> BaseException | None:
    """The exception being handled right now."""
    return sys.exc_info()[1]


async def _settle_leftovers(
    context: FlowContext, *, cancel: bool, abandon_writes: bool = False
) -> None:
    """Deal with durable operations still running in their own tasks when the body ended.

    After a suspension they are awaited, so every timer, signal and child a gather started is
    recorded and its wake-up is part of the outcome. After a failure (or a body that returned
    without awaiting them) they are cancelled; their records were not written, so they run
    again when the flow resumes. The unsaved records are written with the outcome, unless the
    run is abandoned: then they are dropped and replay does their work again.
    """
    leftovers = [task for task in context.operation_tasks if not task.done()]
    if leftovers:
        if cancel:
            for task in leftovers:
                task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
    if abandon_writes:
        context.discard_unsaved()


async def _backoff_in_progress(run: FlowRun, context: FlowContext) -> Invocation | None:
    """Return the retry backoff timer still running, after closing any that have fired."""
    now = run.clock.now()
    log = context.log
    for position, record in list(log.items()):
        if position[0] != FLOW_RETRY_SEQUENCE:
            continue
        if record.status is not InvocationStatus.WAITING_FOR_TIMER or record.fire_at is None:
            continue
        if now < record.fire_at:
            return record
        # Under the run's lease, as every record of the run is (see FlowContext.save).
        await context.record(record.replace(status=InvocationStatus.COMPLETE, completed_at=now))
    return None


async def _plan_retry(
    run: FlowRun, context: FlowContext, error: Exception, attempt: int
) -> float | None:
    """Decide whether the failed attempt is retried; if so, record the durable backoff."""
    policy = context.flow_retry_policy
    if isinstance(error, SerializationError) or policy is None or run.replay_only:
        return None
    if not policy.should_retry(error, attempt):
        return None
    delay = policy.delay_after(attempt)
    await context.save()  # steps that succeeded before the failure stay done
    context.check_lease()
    lease_token = None if context.lease is None else context.lease.lease_token
    if not await reopen_failed_work(run.storage, run.flow_id, lease_token=lease_token):
        raise context.lease_lost()
    now = run.clock.now()
    waiting = delay > 0
    await context.record(  # under the run's lease, as every record of the run is
        Invocation(
            flow_id=run.flow_id,
            sequence=FLOW_RETRY_SEQUENCE,
            sub_sequence=attempt,
            kind=OperationKind.TIMER,
            name=f"retry-after-attempt-{attempt}",
            status=InvocationStatus.WAITING_FOR_TIMER if waiting else InvocationStatus.COMPLETE,
            started_at=now,
            fire_at=now + delay,
            completed_at=None if waiting else now,
            error=StoredError.describe(error),
        )
    )
    return delay


async def _suspend(run: FlowRun, context: FlowContext, attempt: int) -> Suspended:
    suspensions = context.suspensions
    wake_times = [s.wake_at for s in suspensions if s.wake_at is not None]
    wake_at = min(wake_times) if wake_times else None
    signals = [s.waiting_on for s in suspensions if s.reason is SuspendReason.SIGNAL]
    children = [s.waiting_on for s in suspensions if s.reason is SuspendReason.CHILD]
    await run.writer.write(context, _suspended(wake_at, attempt, signals, children))
    return Suspended(
        run.flow_id,
        suspensions[0].reason,
        tuple(dict.fromkeys(s.waiting_on for s in suspensions)),
        wake_at,
    )
