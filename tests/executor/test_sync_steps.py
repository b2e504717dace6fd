"""``def`` steps: recorded and replayed like async steps, their bodies run in a thread."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from datetime import datetime

import pytest

import pyergon
from pyergon import (
    Completed,
    Executor,
    RetryPolicy,
    Scheduler,
    StepTimeoutError,
    Suspended,
    await_external_signal,
    flow,
    flow_type,
    send_signal,
    step,
)
from pyergon.core import InvocationStatus, OperationKind, TaskStatus
from pyergon.errors import FlowDefinitionError, PyergonError
from pyergon.executor.worker import Worker
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from tests.waiting import flow_reaches, until

calls: list[str] = []
"""What the step bodies of this module did, in order (steps of a stored flow keep no state)."""


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


async def wait_for_thread_event(event: threading.Event) -> None:
    """Wait, off the loop, until a step's thread sets ``event``."""
    assert await asyncio.to_thread(event.wait, 10), "the step's thread never got there"


async def logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Wait until a log line holds ``text``."""

    async def seen() -> bool:
        return text in caplog.text

    await until(seen)


@dataclass
@flow_type
class Loader:
    name: str

    @step
    def load(self, rows: int) -> list[int]:
        calls.append(f"load {threading.current_thread().name}")
        return list(range(rows))

    @flow
    async def run(self) -> int:
        rows = await self.load(3)
        approved = await await_external_signal("approve")
        return len(rows) + int(approved)


async def test_a_def_step_is_recorded_and_not_run_again_on_replay(storage: ExecutionLog) -> None:
    first = await Executor(Loader("a"), storage, "sync-replay").run(Loader.run)
    assert isinstance(first, Suspended)
    await send_signal(storage, "sync-replay", "approve", 10)

    second = await Executor(Loader("a"), storage, "sync-replay").run(Loader.run)

    assert second == Completed("sync-replay", result=13)
    assert len(calls) == 1, calls  # the replay returned the record
    assert threading.main_thread().name not in calls[0]
    records = await storage.load_invocations("sync-replay")
    step_record = records[0]
    assert (step_record.name, step_record.kind, step_record.status) == (
        "load",
        OperationKind.STEP,
        InvocationStatus.COMPLETE,
    )


@dataclass
@flow_type
class LoopWatcher:
    gate: threading.Event = field(default_factory=threading.Event, init=False, compare=False)

    @step
    def wait_for_the_loop(self) -> str:
        # Set by a task on the event loop: it runs only while this body blocks its thread.
        assert self.gate.wait(10), "the event loop did not run while the step's body ran"
        return "the loop was free"

    @flow
    async def run(self) -> str:
        return await self.wait_for_the_loop()


async def test_the_event_loop_runs_while_a_def_step_body_blocks() -> None:
    watcher = LoopWatcher()

    async def open_the_gate() -> None:
        await asyncio.sleep(0)
        watcher.gate.set()

    opener = asyncio.create_task(open_the_gate())
    outcome = await Executor(watcher, InMemoryExecutionLog()).run(LoopWatcher.run)
    await opener

    assert outcome.result == "the loop was free"


@dataclass
@flow_type
class Flaky:
    failures: int

    @step(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.0))
    def fetch(self) -> str:
        calls.append("fetch")
        if len(calls) <= self.failures:
            raise ConnectionError(f"attempt {len(calls)} failed")
        return f"fetched on attempt {len(calls)}"

    @flow
    async def run(self) -> str:
        return await self.fetch()


async def test_a_def_step_is_retried_by_its_policy(storage: ExecutionLog) -> None:
    outcome = await Executor(Flaky(2), storage, "sync-retry").run(Flaky.run)

    assert outcome == Completed("sync-retry", result="fetched on attempt 3")
    [record] = await storage.load_invocations("sync-retry")
    assert record.attempts == 3


async def test_a_def_step_that_fails_every_attempt_stores_its_error() -> None:
    storage = InMemoryExecutionLog()
    outcome = await Executor(Flaky(5), storage, "sync-fails").run(Flaky.run)

    assert isinstance(outcome, Completed) and isinstance(outcome.error, ConnectionError)
    assert str(outcome.error) == "attempt 3 failed"
    [record] = await storage.load_invocations("sync-fails")
    assert (record.status, record.attempts) == (InvocationStatus.FAILED, 3)


@dataclass
@flow_type
class Slow:
    retries: int
    release: threading.Event = field(default_factory=threading.Event, init=False, compare=False)

    def work(self) -> str:
        attempt = sum(call.startswith("start") for call in calls) + 1
        calls.append(f"start {attempt}")
        assert self.release.wait(10), "the test never released the step"
        calls.append(f"end {attempt}")
        return f"attempt {attempt}"

    @step(timeout=0.2, retry_policy=RetryPolicy(max_attempts=2, initial_interval=0.0))
    def retried(self) -> str:
        return self.work()

    @step(timeout=0.2)
    def once(self) -> str:
        return self.work()

    @flow
    async def run(self) -> str:
        if self.retries:
            return await self.retried()
        try:
            return await self.once()
        except StepTimeoutError as error:
            return f"gave up: {error}"


async def test_a_timed_out_def_step_is_retried_only_after_its_thread_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = InMemoryExecutionLog()
    slow = Slow(retries=1)
    run = asyncio.create_task(Executor(slow, storage, "sync-timeout").run(Slow.run))
    await logged(caplog, "timed out to return")  # the retry waits for the thread

    assert calls == ["start 1"]  # attempt 2 did not start beside the abandoned attempt 1
    [record] = await storage.load_invocations("sync-timeout")
    assert (record.status, record.attempts) == (InvocationStatus.PENDING, 1)
    assert "StepTimeoutError" in (record.error.type_name if record.error else "")
    slow.release.set()
    outcome = await run

    assert outcome == Completed("sync-timeout", result="attempt 2")  # attempt 1's is dropped
    assert calls == ["start 1", "end 1", "start 2", "end 2"]


async def test_a_timed_out_def_step_fails_at_its_deadline_but_the_run_waits_for_its_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = InMemoryExecutionLog()
    slow = Slow(retries=0)
    run = asyncio.create_task(Executor(slow, storage, "sync-abandoned").run(Slow.run))
    await logged(caplog, "timed out to return")  # the flow caught the error and ended

    assert not run.done()  # its run does not end while the thread runs on
    stored = await storage.get_flow("sync-abandoned")
    assert stored is not None and stored.status is TaskStatus.RUNNING
    slow.release.set()
    outcome = await run

    assert isinstance(outcome.result, str) and outcome.result.startswith("gave up: step 'once'")
    assert "timeout of 0.2 s" in outcome.result
    [record] = await storage.load_invocations("sync-abandoned")
    assert record.status is InvocationStatus.FAILED  # the thread's late result was dropped
    assert calls == ["start 1", "end 1"]


@dataclass
@flow_type
class Keyed:
    @step
    def charge(self) -> str:
        return pyergon.idempotency_key()

    @flow
    async def run(self) -> list[str]:
        return [await self.charge(), await self.charge()]


async def test_a_def_step_sees_its_idempotency_key(storage: ExecutionLog) -> None:
    outcome = await Executor(Keyed(), storage, "sync-key").run(Keyed.run)

    assert outcome.result == ["sync-key:1", "sync-key:2"]


@dataclass
@flow_type
class Stamped:
    @step(retry_policy=RetryPolicy(max_attempts=2, initial_interval=0.0))
    def stamp(self) -> datetime:
        when = pyergon.block_on(pyergon.now())
        calls.append(when.isoformat())
        if len(calls) == 1:
            raise ConnectionError("first attempt fails after reading the time")
        return when

    @flow
    async def run(self) -> datetime:
        return await self.stamp()


async def test_a_recorded_value_in_a_def_step_is_the_same_on_the_next_attempt(
    storage: ExecutionLog,
) -> None:
    outcome = await Executor(Stamped(), storage, "sync-now").run(Stamped.run)

    assert len(calls) == 2 and calls[0] == calls[1]
    assert isinstance(outcome.result, datetime) and outcome.result.isoformat() == calls[0]
    records = await storage.load_invocations("sync-now")
    assert [(r.sequence, r.sub_sequence, r.kind) for r in records] == [
        (1, 0, OperationKind.STEP),
        (1, 1, OperationKind.VALUE),
    ]


@dataclass
@flow_type
class Nested:
    @step
    def inner(self, value: int) -> str:
        calls.append(f"inner {threading.current_thread() is threading.main_thread()}")
        return f"inner {value} at {pyergon.idempotency_key()}"

    @step
    async def inner_async(self, value: int) -> str:
        return f"async {value}"

    @step
    def outer(self) -> list[str]:
        # Typed as in a flow (an awaitable); in a def step's body the call returns the value.
        inner: str = self.inner(1)  # type: ignore[assignment]
        return [inner, pyergon.block_on(self.inner_async(2))]

    @step
    async def outer_async(self) -> str:
        return await self.inner(3)

    @flow
    async def run(self) -> list[str]:
        return [*await self.outer(), await self.outer_async()]


async def test_steps_called_in_a_def_step_body_are_part_of_it(storage: ExecutionLog) -> None:
    outcome = await Executor(Nested(), storage, "sync-nested").run(Nested.run)

    assert outcome.result == ["inner 1 at sync-nested:1", "async 2", "inner 3 at sync-nested:2"]
    assert calls == ["inner False", "inner False"]  # in a thread, also inside an async step
    records = await storage.load_invocations("sync-nested")
    assert [(r.sequence, r.sub_sequence, r.name) for r in records] == [
        (1, 0, "outer"),
        (2, 0, "outer_async"),
    ]


def test_a_def_step_called_outside_a_flow_just_runs() -> None:
    # Typed as in a flow (an awaitable); outside one the call returns the value.
    assert Loader("plain").load(2) == [0, 1]  # type: ignore[comparison-overlap]


async def test_block_on_outside_a_def_step_says_where_it_works() -> None:
    with pytest.raises(PyergonError, match="from the body of a def step") as raised:
        pyergon.block_on(pyergon.now())

    assert "await it instead" in str(raised.value)


class FlagCancellation:
    """A cancellation request the test raises by hand."""

    def __init__(self) -> None:
        self.requested_flag = False

    async def requested(self) -> bool:
        return self.requested_flag


@dataclass
@flow_type
class TwoSteps:
    started: threading.Event = field(default_factory=threading.Event, init=False, compare=False)
    release: threading.Event = field(default_factory=threading.Event, init=False, compare=False)

    @step
    def first(self) -> str:
        calls.append("first")
        self.started.set()
        assert self.release.wait(10), "the test never released the step"
        calls.append("first returned")
        return "first"

    @step
    def second(self) -> str:
        calls.append("second")
        return "second"

    @flow
    async def run(self) -> str:
        return await self.first() + await self.second()


async def test_a_cancel_request_during_a_def_step_stops_the_flow_after_it() -> None:
    flow_instance, cancellation = TwoSteps(), FlagCancellation()
    executor = Executor(flow_instance, InMemoryExecutionLog(), cancellation=cancellation)
    run = asyncio.create_task(executor.run(TwoSteps.run))
    await wait_for_thread_event(flow_instance.started)

    cancellation.requested_flag = True
    flow_instance.release.set()
    outcome = await run

    assert isinstance(outcome, Completed) and outcome.status is TaskStatus.CANCELLED
    assert calls == ["first", "first returned"]


async def test_a_task_cancelled_during_a_def_step_ends_only_after_the_body_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flow_instance = TwoSteps()
    run = asyncio.create_task(Executor(flow_instance, InMemoryExecutionLog()).run(TwoSteps.run))
    await wait_for_thread_event(flow_instance.started)

    run.cancel()
    done, _ = await asyncio.wait({run}, timeout=0.2)
    assert not done  # a thread cannot be stopped: the task waits for it
    assert "cannot be stopped" in caplog.text
    flow_instance.release.set()
    with pytest.raises(asyncio.CancelledError):
        await run

    assert calls == ["first", "first returned"]


async def test_a_def_step_runs_in_the_thread_pool_it_is_given() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="given-pool") as pool:
        flow_instance = Loader("pooled")
        executor = Executor(flow_instance, InMemoryExecutionLog(), thread_pool=pool)
        outcome = await executor.run(Loader.run)

    assert isinstance(outcome, Suspended)
    assert calls == ["load given-pool_0"]


def test_a_generator_cannot_be_a_step() -> None:
    with pytest.raises(FlowDefinitionError, match="generator") as raised:

        @step
        def rows(self: object) -> object:
            yield 1

    assert "rows" in str(raised.value)


GATES: dict[str, tuple[threading.Event, threading.Event]] = {}
"""Per flow label: set by the step when it starts, set by the test to let it return."""


@dataclass
@flow_type
class Crunch:
    label: str

    @step
    def crunch(self) -> str:
        started, release = GATES[self.label]
        calls.append(f"crunch in {threading.current_thread().name}")
        started.set()
        assert release.wait(10), "the test never released the step"
        return "crunched"

    @flow
    async def run(self) -> str:
        return await self.crunch()


async def test_a_def_step_longer_than_the_lease_runs_once_with_two_workers(
    storage: ExecutionLog,
) -> None:
    started, release = GATES["lease"] = (threading.Event(), threading.Event())
    workers = [Worker(storage, f"w{n}", lease_seconds=0.3, max_concurrent_flows=1) for n in (1, 2)]
    for worker in workers:
        worker.register(Crunch)
    handles = [await worker.start() for worker in workers]
    try:
        flow_id = await Scheduler(storage).schedule(Crunch("lease"))
        await wait_for_thread_event(started)
        await asyncio.sleep(1.0)  # the duration under test: three leases and more
        release.set()
        done = await flow_reaches(storage, flow_id, TaskStatus.COMPLETE)
    finally:
        release.set()
        for handle in handles:
            await handle.shutdown()

    assert len(calls) == 1, calls  # the other worker never claimed it
    assert calls[0].startswith(f"crunch in pyergon-{done.worker_id}")


async def test_stopping_a_worker_waits_for_its_running_def_step() -> None:
    storage = InMemoryExecutionLog()
    started, release = GATES["stop"] = (threading.Event(), threading.Event())
    worker = Worker(storage, "stopper", lease_seconds=0.3)
    worker.register(Crunch)
    handle = await worker.start()
    flow_id = await Scheduler(storage).schedule(Crunch("stop"))
    await wait_for_thread_event(started)

    stopping = asyncio.create_task(handle.shutdown(deadline=0.05))
    done, _ = await asyncio.wait({stopping}, timeout=0.5)
    assert not done  # past its deadline, but the step's thread still runs
    stored = await storage.get_flow(flow_id)
    assert stored is not None and stored.status is TaskStatus.RUNNING  # the lease still held
    release.set()
    await stopping

    given_back = await storage.get_flow(flow_id)
    assert given_back is not None and given_back.status is TaskStatus.PENDING
    assert len(calls) == 1
