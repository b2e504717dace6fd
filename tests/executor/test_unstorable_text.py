"""Text a user's code makes is stored on every backend, whatever characters it holds.

A NUL (PostgreSQL refuses it) or a lone surrogate (not text; SQLite and Redis cannot encode it)
in an error message, a traceback or a step's output is kept with U+FFFD in its place: the write
does not fail and the flow ends as it would with any other text. A name that is an identity
(a signal's, a timer's, a worker's) is refused with the reason instead, as a flow id is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pyergon import (
    Executor,
    RetryPolicy,
    Scheduler,
    Worker,
    await_external_signal,
    flow,
    flow_type,
    schedule_timer_named,
    send_signal,
    step,
)
from pyergon.core import InvocationStatus, TaskStatus
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from tests.waiting import flow_reaches

NUL = "bad\x00row"
SURROGATE = "bad \udc80 byte"


class RowError(Exception):
    """A failure whose message holds what the flow was given."""


@dataclass
@flow_type
class Unstorable:
    message: str
    failures: int
    runs: int = field(default=0, init=False, compare=False)

    @step(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0))
    async def load(self) -> str:
        self.runs += 1
        print(f"run {self.runs}: {self.message}")
        if self.runs <= self.failures:
            raise RowError(f"attempt {self.runs}: {self.message}")
        return "loaded"

    @flow
    async def run(self) -> str:
        return await self.load()


async def run_on_a_worker(storage: ExecutionLog, flow: Unstorable, status: TaskStatus) -> str:
    """Run ``flow`` on a worker until it reaches ``status``; return its id."""
    flow_id = await Scheduler(storage).schedule(flow)
    worker = Worker(storage, "w-1")
    await worker.register(Unstorable)
    handle = await worker.start()
    try:
        await flow_reaches(storage, flow_id, status)
    finally:
        await handle.shutdown()
    return flow_id


@pytest.mark.parametrize("message", [NUL, SURROGATE], ids=["nul", "surrogate"])
async def test_a_step_failing_with_unstorable_text_ends_failed_with_its_error_readable(
    storage: ExecutionLog, message: str
) -> None:
    flow_id = await run_on_a_worker(storage, Unstorable(message, 3), TaskStatus.FAILED)

    failed = await storage.get_flow(flow_id)
    assert failed is not None and failed.error is not None
    readable = message.replace("\x00", "\ufffd").replace("\udc80", "\ufffd")
    assert failed.error.message == f"attempt 3: {readable}"
    (record,) = await storage.load_invocations(flow_id)
    assert (record.status, record.attempts) == (InvocationStatus.FAILED, 3)
    assert [attempt.describe() for attempt in record.earlier_attempts] == [
        f"attempt 1 failed RowError: attempt 1: {readable}",
        f"attempt 2 failed RowError: attempt 2: {readable}",
    ]
    assert record.error is not None and record.error.message == f"attempt 3: {readable}"
    assert f"RowError: attempt 3: {readable}" in record.error.traceback
    assert record.output is not None and f"run 3: {readable}" in record.output


@pytest.mark.parametrize("message", [NUL, SURROGATE], ids=["nul", "surrogate"])
async def test_a_step_passing_after_unstorable_failures_completes(
    storage: ExecutionLog, message: str
) -> None:
    flow_id = await run_on_a_worker(storage, Unstorable(message, 2), TaskStatus.COMPLETE)

    (record,) = await storage.load_invocations(flow_id)
    assert (record.status, record.attempts, len(record.earlier_attempts)) == (
        InvocationStatus.COMPLETE,
        3,
        2,
    )


@dataclass
@flow_type
class Waits:
    on: str
    name: str

    @flow
    async def run(self) -> str:
        if self.on == "signal":
            return str(await await_external_signal(self.name))
        await schedule_timer_named(0, self.name)
        return "woke"


@pytest.mark.parametrize("on", ["signal", "timer"])
@pytest.mark.parametrize("name", [NUL, SURROGATE], ids=["nul", "surrogate"])
async def test_a_flow_waiting_under_an_unstorable_name_fails_saying_why(
    storage: ExecutionLog, on: str, name: str
) -> None:
    outcome = await Executor(Waits(on, name), storage, "waits-1").run(lambda f: f.run())

    assert isinstance(outcome.error, ValueError)
    assert f"{on} name {name!r} holds" in str(outcome.error)
    failed = await storage.get_flow("waits-1")
    assert failed is not None and failed.status is TaskStatus.FAILED
    assert failed.error is not None and "use valid Unicode text" in failed.error.message
    assert await storage.load_invocations("waits-1") == []


@pytest.mark.parametrize("name", [NUL, SURROGATE], ids=["nul", "surrogate"])
async def test_a_signal_with_an_unstorable_name_is_refused_before_anything_is_stored(
    storage: ExecutionLog, name: str
) -> None:
    flow_id = await Scheduler(storage).schedule(Waits("signal", "approved"))

    with pytest.raises(ValueError, match=r"signal name .* holds .*; use valid Unicode text"):
        await send_signal(storage, flow_id, name, "yes")

    assert await storage.list_signals(flow_id) == []


@pytest.mark.parametrize("name", [NUL, SURROGATE], ids=["nul", "surrogate"])
def test_a_worker_id_with_an_unstorable_character_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"worker_id .* holds .*; use valid Unicode text"):
        Worker(InMemoryExecutionLog(), name)
