"""A step's earlier attempts: each failed attempt with its error and times, each abandoned one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from pyergon import Completed, Executor, RetryPolicy, Scheduler, Worker, flow, flow_type, step
from pyergon.clock import ManualClock
from pyergon.core import ClaimRequest, InvocationStatus, TaskStatus
from pyergon.core.changes import Change
from pyergon.core.records import Attempt, StoredError
from pyergon.core.workers import StepActivity
from pyergon.management import FlowManager
from pyergon.serialization import stable_hash
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_invocation, make_worker
from tests.waiting import flow_reaches


class ProviderDownError(Exception):
    """A transient failure of an outside system."""


@dataclass
@flow_type
class Charge:
    failures: int
    clock: ManualClock | None = field(default=None, compare=False)
    runs: int = field(default=0, init=False, compare=False)

    @step(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0))
    async def charge(self) -> str:
        self.runs += 1
        if self.clock is not None:
            self.clock.advance(2.0)  # each attempt takes two seconds
        if self.runs <= self.failures:
            raise ProviderDownError(f"attempt {self.runs}: provider down")
        return f"charged on attempt {self.runs}"

    @flow
    async def run(self) -> str:
        return await self.charge()


async def test_a_step_failing_twice_then_passing_keeps_both_failures_with_their_times(
    storage: ExecutionLog,
) -> None:
    clock = ManualClock(start=1_000.0)

    outcome = await Executor(Charge(2, clock), storage, "charge-1", clock=clock).run(
        lambda f: f.run()
    )

    assert outcome == Completed("charge-1", result="charged on attempt 3")
    (record,) = await storage.load_invocations("charge-1")
    assert (record.status, record.attempts, record.error) == (InvocationStatus.COMPLETE, 3, None)
    assert record.started_at == 1_000.0  # the record's start is its first attempt's
    first, second = record.earlier_attempts
    assert (first.number, first.started_at, first.ended_at, first.end) == (
        1,
        1_000.0,
        1_002.0,
        "failed",
    )
    assert (second.number, second.started_at, second.ended_at) == (2, 1_002.0, 1_004.0)
    # Each failure says when the next attempt was due: where the timeline starts it.
    assert (first.retry_at, second.retry_at) == (second.started_at, 1_004.0)
    assert first.error is not None and second.error is not None
    assert first.error.short_type == "ProviderDownError"
    assert (first.error.message, second.error.message) == (
        "attempt 1: provider down",
        "attempt 2: provider down",
    )
    assert "raise ProviderDownError" in first.error.traceback
    assert first.error.payload is None and first.worker_id is None  # a direct run: no worker


async def test_a_step_that_fails_for_good_keeps_the_attempts_before_its_last(
    storage: ExecutionLog,
) -> None:
    outcome = await Executor(Charge(5), storage, "charge-1").run(lambda f: f.run())

    assert outcome.status is TaskStatus.FAILED

    (record,) = await storage.load_invocations("charge-1")
    assert (record.status, record.attempts) == (InvocationStatus.FAILED, 3)
    assert record.error is not None and record.error.message == "attempt 3: provider down"
    assert [attempt.number for attempt in record.earlier_attempts] == [1, 2]
    assert [attempt.error.message for attempt in record.earlier_attempts if attempt.error] == [
        "attempt 1: provider down",
        "attempt 2: provider down",
    ]


async def test_a_step_that_passes_at_its_first_attempt_keeps_none(storage: ExecutionLog) -> None:
    await Executor(Charge(0), storage, "charge-1").run(lambda f: f.run())

    (record,) = await storage.load_invocations("charge-1")
    assert (record.attempts, record.earlier_attempts) == (1, ())


async def test_a_worker_keeps_its_id_with_each_failed_attempt() -> None:
    storage = InMemoryExecutionLog()
    flow_id = await Scheduler(storage).schedule(Charge(1))
    worker = Worker(storage, "w-1")
    worker.register(Charge)
    handle = await worker.start()
    try:
        await flow_reaches(storage, flow_id, TaskStatus.COMPLETE)
    finally:
        await handle.shutdown()

    (record,) = await storage.load_invocations(flow_id)
    assert [(a.number, a.end, a.worker_id) for a in record.earlier_attempts] == [
        (1, "failed", "w-1")
    ]


async def held_by_a_dead_worker(
    storage: InMemoryExecutionLog, *, alive: bool, now: float | None = None, started: float = 99.0
) -> str:
    """A flow whose lease a worker lost while its heartbeat listed step 1 as running.

    The step's attempt started ``started`` seconds before ``now``.
    """
    flow_id = await Scheduler(storage).schedule(Charge(0))
    now = time.time() if now is None else now
    # Claimed by w-old with a lease that ran out long ago.
    request = ClaimRequest("w-old", ["Charge"], limit=1, lease_seconds=1.0, now=now - 100.0)
    [claimed] = await storage.claim(request)
    assert claimed.flow.flow_id == flow_id
    running = StepActivity(flow_id, "1", "charge", now - started)
    beat = now if alive else now - 98.0  # a live worker beats on, a dead one stopped
    worker = make_worker("w-old", last_beat=beat, lease_seconds=1_000.0 if alive else 1.0)
    await storage.put_worker(worker.beating(beat, activity=[running]), replacing=None)
    return flow_id


async def test_a_flow_taken_over_from_a_dead_worker_keeps_the_attempt_it_abandoned() -> None:
    storage = InMemoryExecutionLog()
    flow_id = await held_by_a_dead_worker(storage, alive=False)
    worker = Worker(storage, "w-new")
    worker.register(Charge)

    handle = await worker.start()
    try:
        done = await flow_reaches(storage, flow_id, TaskStatus.COMPLETE)
    finally:
        await handle.shutdown()

    assert (done.lease_losses, done.last_lost_by) == (1, "w-old")
    (record,) = await storage.load_invocations(flow_id)
    assert record.attempts == 2  # the abandoned one, and the one that ended the step
    (abandoned,) = record.earlier_attempts
    old_worker = await storage.get_worker("w-old")
    assert old_worker is not None
    started_at = old_worker.activity[0].started_at
    assert abandoned == Attempt(
        1, started_at, None, "abandoned", worker_id="w-old", last_seen_at=old_worker.last_beat
    )


async def test_an_attempt_cut_by_a_lost_lease_of_a_live_worker_says_so() -> None:
    storage = InMemoryExecutionLog()
    flow_id = await held_by_a_dead_worker(storage, alive=True)
    worker = Worker(storage, "w-new")
    worker.register(Charge)

    handle = await worker.start()
    try:
        await flow_reaches(storage, flow_id, TaskStatus.COMPLETE)
    finally:
        await handle.shutdown()

    (record,) = await storage.load_invocations(flow_id)
    assert [(a.number, a.end, a.worker_id) for a in record.earlier_attempts] == [
        (1, "lease lost", "w-old")
    ]


async def test_a_fork_keeps_the_earlier_attempts_of_the_records_it_copies(
    storage: ExecutionLog,
) -> None:
    await Executor(Charge(2), storage, "charge-1").run(lambda f: f.run())

    forked = await FlowManager(storage, [Charge]).fork("charge-1", from_step=1)

    assert await storage.load_invocations(forked) == [
        record.replace(flow_id=forked) for record in await storage.load_invocations("charge-1")
    ]
    (record,) = await storage.load_invocations(forked)
    assert [attempt.number for attempt in record.earlier_attempts] == [1, 2]


@pytest.mark.parametrize("crashed", ["in-the-backoff", "in-the-next-attempt"])
async def test_a_step_retried_when_its_worker_died_keeps_each_attempt_once(crashed: str) -> None:
    storage = InMemoryExecutionLog()
    now = time.time()
    # Attempt 1 failed and was stored; the heartbeat still listed it (a crash in the backoff)
    # or listed attempt 2 (a crash while it ran).
    started = 99.0 if crashed == "in-the-backoff" else 98.5
    flow_id = await held_by_a_dead_worker(storage, alive=False, now=now, started=started)
    down = StoredError("tests.ProviderDown", "provider down")
    first = Attempt.failed(1, now - 99.0, now - 99.0, down, "w-old")
    retrying = make_invocation(
        1, flow_id=flow_id, name="charge", args_hash=stable_hash((), {}), attempts=1,
        started_at=now - 99.0, error=down, earlier_attempts=(first,),
    )  # fmt: skip
    await storage.apply(Change(records=(retrying,)))
    worker = Worker(storage, "w-new")
    worker.register(Charge)

    handle = await worker.start()
    try:
        await flow_reaches(storage, flow_id, TaskStatus.COMPLETE)
    finally:
        await handle.shutdown()

    (record,) = await storage.load_invocations(flow_id)
    ends = [(a.number, a.end, a.started_at) for a in record.earlier_attempts]
    if crashed == "in-the-backoff":
        assert (record.attempts, ends) == (2, [(1, "failed", now - 99.0)])
    else:
        assert record.attempts == 3
        assert ends == [(1, "failed", now - 99.0), (2, "abandoned", now - 98.5)]
