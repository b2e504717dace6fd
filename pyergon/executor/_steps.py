"""Running one durable step: replay it from the log, or run its body and record the outcome."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from pyergon._context import FlowContext, Position, StepScope, enter_step, leave_step
from pyergon._hashing_data import RecordedValues
from pyergon._output import finished_output
from pyergon.core.records import Attempt, Invocation, StepProgress, StoredError, add_attempt
from pyergon.core.retry import RetryPolicy
from pyergon.core.status import InvocationStatus, OperationKind
from pyergon.errors import StepTimeoutError
from pyergon.serialization import (
    ArtifactSerializer,
    Serializer,
    dumps_for,
    loads_for,
    rebuild_exception,
    serialize_exception,
    stable_hash,
)
from pyergon.serialization._artifact_refs import ARTIFACT_TAG, is_ref, payload_info

__all__ = [
    "StepCall",
    "attempt_until_final",
    "encode_value",
    "replay_final",
    "run_step",
    "step_timeout_error",
]

StepBody = Callable[[], Coroutine[Any, Any, Any]]

# Read once: on Python 3.11 reading a member off its enum class goes through the enum
# metaclass's __getattr__ hook (about 900 instructions), and every step needs these three times.
_STEP = OperationKind.STEP
_COMPLETE = InvocationStatus.COMPLETE


def replay_final(context: FlowContext, record: Invocation) -> Any:
    """Return the stored result of a final record, or raise its stored error.

    Raises:
        ArtifactError: The result is an artifact that cannot be read; the message names the
            step, the flow and the artifact's path.
    """
    if record.status is InvocationStatus.FAILED and record.error is not None:
        raise rebuild_exception(context.serializer, record.error)
    if record.result is None:
        return None
    return loads_for(
        context.serializer,
        record.result,
        lambda: (
            f"the result of step {record.name!r} of "
            f"{context.describe((record.sequence, record.sub_sequence))}"
        ),
    )


async def run_step(
    context: FlowContext,
    position: Position,
    name: str,
    body: StepBody,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    retry_policy: RetryPolicy | None,
    timeout: float | None,
    code: str = "",
) -> Any:
    """Run the step at ``position``: replay its record, or execute and record it.

    Args:
        context: The running flow.
        position: The step's log position, taken when the step was called.
        name: The step's name.
        body: Creates a fresh coroutine of the step's body for each attempt.
        args: Positional arguments (without ``self``), hashed to detect changed calls.
        kwargs: Keyword arguments, hashed likewise.
        retry_policy: How to retry a failing body; ``None`` means one attempt.
        timeout: Seconds an attempt may run before it fails with ``StepTimeoutError``.
        code: The fingerprint of the step's code, kept with the record; a recorded result
            made by other code is still returned, and the flow's context notes it.

    Returns:
        The step's result, recorded or fresh.
    """
    args_hash = stable_hash(args, kwargs, context.recorded)
    record = context.replayed(position, _STEP, name, args_hash, (args, kwargs))
    if record is not None and record.is_final:
        if record.code_hash != code and record.code_hash:
            context.note_stale(record)
        if is_ref(record.result):  # read off the event loop: Parquet of a frame takes a while
            value = await asyncio.to_thread(replay_final, context, record)
            note_recorded(context, value, record.result)
            return value
        return replay_final(context, record)
    await context.before_live_work(position)

    policy = retry_policy or RetryPolicy.NONE
    attempts = record.attempts if record is not None else 0
    started_at = record.started_at if record is not None else None
    call = StepCall(context, position, name, args_hash, code, started_at or context.clock.now())
    if record is not None:  # a step retried after a crash keeps what earlier attempts printed
        call.output, call.progress = record.output, record.progress
        call.earlier_attempts = record.earlier_attempts
    if context.abandoned:  # an earlier run started this step and never ended it
        attempts = call.note_abandoned(context.abandoned.pop(position, None), attempts)
    task = context.track()
    try:
        return await attempt_until_final(call, body, policy, attempts, timeout)
    finally:
        context.untrack(task)


@dataclass(slots=True)
class StepCall:
    """One call of a step: its place in the flow's log and what identifies it there.

    Not frozen: one is made per step run, and a frozen dataclass sets each field with
    ``object.__setattr__``, about 1,100 instructions a field (see benchmarks/README.md).
    """

    context: FlowContext
    position: Position
    name: str
    args_hash: str
    code_hash: str
    started_at: float
    output: str | None = None
    """What the step's attempts printed so far (see :mod:`pyergon._output`)."""
    progress: StepProgress | None = None
    """The last progress an attempt reported."""
    earlier_attempts: tuple[Attempt, ...] = ()
    """The attempts that did not end the record, oldest first (see ``Invocation``)."""

    def note_abandoned(self, abandoned: Attempt | None, attempts: int) -> int:
        """Keep ``abandoned``, an attempt an earlier run started and never ended, if it is new.

        Args:
            abandoned: The attempt, numbered by whoever found it; renumbered here.
            attempts: Attempts of the step counted so far.

        Returns:
            The attempts counted with it.
        """
        if abandoned is None or any(
            kept.started_at == abandoned.started_at for kept in self.earlier_attempts
        ):  # its end was recorded after the last heartbeat that listed it
            return attempts
        attempts += 1
        abandoned = dataclasses.replace(abandoned, number=attempts)
        self.earlier_attempts = add_attempt(self.earlier_attempts, abandoned)
        return attempts

    def attempt_failed(
        self, attempt: StepScope, number: int, error: StoredError, delay: float
    ) -> None:
        """Keep attempt ``number``, which raised ``error`` and is retried after ``delay`` s."""
        context = self.context
        now = context.clock.now()
        failed = Attempt.failed(
            number, attempt.started_at, now, error, context.worker_id, retry_at=now + delay
        )
        self.earlier_attempts = add_attempt(self.earlier_attempts, failed)

    def attempt_ended(self, attempt: StepScope, number: int) -> None:
        """Keep what attempt ``number`` printed and the last progress it reported.

        Called only for an attempt that printed or reported: most do neither.
        """
        tail = attempt.output
        if tail is not None:
            self.output = finished_output(self.output, tail, number)
        if attempt.progress is not None:
            self.progress = attempt.progress

    def record(
        self,
        status: InvocationStatus,
        attempts: int,
        *,
        result: bytes | None = None,
        error: StoredError | None = None,
    ) -> Invocation:
        """The call's record after ``attempts`` attempts, completed now if ``status`` is final."""
        # Built here rather than passed through FlowContext.new_record's keyword arguments:
        # 2,700 instructions less per step (benchmarks/README.md).
        record = Invocation(
            flow_id=self.context.flow_id,
            sequence=self.position[0],
            sub_sequence=self.position[1],
            kind=_STEP,
            name=self.name,
            status=status,
            args_hash=self.args_hash,
            code_hash=self.code_hash,
            result=result,
            error=error,
            attempts=attempts,
            started_at=self.started_at,
            completed_at=self.context.clock.now() if status.is_final else None,
            output=self.output,
            progress=self.progress,
        )
        # Most steps keep no earlier attempt: without the keyword argument a three-step flow
        # runs 3,400 instructions fewer (callgrind, memory backend); a retried step pays a copy.
        if self.earlier_attempts:
            return record.replace(earlier_attempts=self.earlier_attempts)
        return record


async def attempt_until_final(
    call: StepCall, body: StepBody, policy: RetryPolicy, attempts: int, timeout: float | None
) -> Any:
    """Run attempts of the step's body until one succeeds or the policy gives up; keep each.

    The busy-loop watchdog (``_watchdog``) finds a running async body by this function's frame,
    stopped on a line that uses ``body``, and reads its ``call``: keep those names.
    """
    context, position, name = call.context, call.position, call.name
    running = context.running_steps
    key = (context.flow_id, position[0])
    # A first attempt starts when the call does: one clock read fewer per step (about 900
    # instructions, benchmarks/README.md).
    started = call.started_at if attempts == 0 else None
    while True:
        if context.lease is not None:  # no attempt starts once another may hold the flow
            context.lease.check()
        attempts += 1
        attempt = StepScope(position[0], name, started or context.clock.now())
        started = None
        scope = enter_step(attempt)
        if running is not None:
            running[key] = attempt
        try:
            try:
                if timeout is None:
                    result = await body()
                else:
                    result = await _with_timeout(context, position, name, body, timeout)
            finally:
                leave_step(scope)
                if running is not None:
                    del running[key]
                if attempt.output is not None or attempt.progress is not None:
                    call.attempt_ended(attempt, attempts)
        except Exception as error:
            stored_error = StoredError.describe(
                error, serialize_exception(context.serializer, error)
            )
            retry = policy.should_retry(error, attempts)
            if not retry:
                context.keep(call.record(InvocationStatus.FAILED, attempts, error=stored_error))
                raise
            delay = policy.delay_after(attempts)
            call.attempt_failed(attempt, attempts, stored_error, delay)
            context.keep(call.record(InvocationStatus.PENDING, attempts, error=stored_error))
            await context.save()  # the attempt count survives a crash during the backoff
            if context.on_step_retry is not None:
                context.on_step_retry(name, error, attempts, delay)
            await context.clock.sleep(delay)
            continue
        what = lambda: f"the result of step {name!r} of {context.describe(position)}"  # noqa: E731
        serializer = context.serializer
        if type(serializer) is ArtifactSerializer:
            payload = await encode_value(serializer, result, what)
        else:  # no artifact store: no coroutine more
            payload = context.dumps(result, what)
        # Stored with the run's next save: before any later live work, or with the outcome.
        context.keep(call.record(_COMPLETE, attempts, result=payload))
        if payload[:2] == ARTIFACT_TAG:
            note_recorded(context, result, payload)
            await context.save()  # a record names the artifact at once: gc leaves it alone
        return result


def note_recorded(context: FlowContext, value: Any, payload: bytes | None) -> None:
    """Note ``value`` as the frame or array its record's ``payload`` holds as an artifact."""
    info = payload_info(payload)
    if info is None or info.artifact is None or info.format not in ("parquet", "npy"):
        return
    if context.recorded is None:
        context.recorded = RecordedValues()
    context.recorded.note(value, info.artifact)


async def encode_value(serializer: Serializer, value: Any, what: Callable[[], str]) -> bytes:
    """Serialize ``value``; a value kept apart as an artifact is written off the loop.

    Writing a large DataFrame as Parquet takes about as long as ``to_parquet``, and hashing,
    writing and syncing a large pickle a while too: on the event loop they would stall every
    other flow (and a notebook's kernel) meanwhile. A value that is not a frame or an array is
    pickled on the loop first (its size is known only then), as without artifacts.
    """
    if type(serializer) is not ArtifactSerializer:
        return dumps_for(serializer, value, what)
    if serializer.kept_apart(value):
        return await asyncio.to_thread(dumps_for, serializer, value, what)
    data = dumps_for(serializer.inner, value, what)  # pickled here, as without artifacts
    if not serializer.too_large(data, value):
        return data
    return await asyncio.to_thread(
        dumps_for, _Keeping(serializer, data), value, what
    )  # hashing, writing and syncing a large payload: off the loop too


class _Keeping:
    """A serializer whose ``dumps`` writes bytes already made to an artifact store."""

    __slots__ = ("_data", "_serializer", "name")

    def __init__(self, serializer: ArtifactSerializer, data: bytes) -> None:
        self._serializer, self._data, self.name = serializer, data, serializer.name

    def dumps(self, value: Any) -> bytes:
        return self._serializer.kept_bytes(self._data, value)

    def loads(self, data: bytes) -> Any:  # pragma: no cover - never read through
        return self._serializer.loads(data)


async def _with_timeout(
    context: FlowContext, position: Position, name: str, body: StepBody, timeout: float
) -> Any:
    """Run ``body`` in a timeout scope, in this task as a step without a timeout runs.

    Only the scope's own expiry becomes :class:`StepTimeoutError`: a ``TimeoutError`` the body
    raises (an HTTP client's, say) stays the body's error, retried as the policy says.
    """
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            return await body()
    except TimeoutError:
        if not scope.expired():
            raise
        raise step_timeout_error(context, position, name, timeout) from None


def step_timeout_error(
    context: FlowContext, position: Position, name: str, timeout: float
) -> StepTimeoutError:
    """The error of a step attempt that ran past its ``timeout``."""
    return StepTimeoutError(
        f"step {name!r} of {context.describe(position)} ran longer than its timeout of "
        f"{timeout} s; raise the timeout or make the step faster"
    )
