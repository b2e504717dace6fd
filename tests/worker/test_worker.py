"""Scheduler and Worker on every backend: the queue, suspension, wake-ups and leases."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from pyergon import (
    Scheduler,
    Worker,
    await_external_signal,
    flow,
    flow_type,
    schedule_timer_named,
    step,
)
from pyergon.clock import ManualClock
from pyergon.core import ClaimRequest, FlowQuery, ScheduledFlow, TaskStatus
from pyergon.core.transitions import RunEnd
from pyergon.decorators import flow_type_name
from pyergon.errors import (
    FlowDefinitionError,
    FlowInputsChangedError,
    FlowNotFoundError,
    PyergonError,
)
from pyergon.storage._flows import HeldFlow
from pyergon.storage.base import ClaimedRun, ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from tests.waiting import flow_reaches

executions: list[str] = []


@dataclass
@flow_type
class Greeting:
    name: str

    @step
    async def greet(self) -> str:
        executions.append(f"greet {self.name}")
        return f"hello {self.name}"

    @flow
    async def run(self) -> str:
        return await self.greet()


@dataclass
@flow_type
class Approval:
    request: str

    @step
    async def prepare(self) -> str:
        executions.append(f"prepare {self.request}")
        return self.request.upper()

    @flow
    async def run(self) -> str:
        prepared = await self.prepare()
        decision = await await_external_signal("decision")
        return f"{prepared}:{decision}"


@dataclass
@flow_type
class Sleeper:
    seconds: float

    @flow
    async def run(self) -> str:
        await schedule_timer_named(self.seconds, "nap")
        return "rested"


@dataclass
@flow_type
class Doubler:
    value: int

    @step
    async def double(self) -> int:
        return self.value * 2

    @flow
    async def run(self) -> int:
        return await self.double()


@dataclass
@flow_type
class Parent:
    values: tuple[int, ...]

    @flow
    async def run(self) -> int:
        results = [await self.invoke(Doubler(value)).result() for value in self.values]
        return sum(results)


@pytest.fixture(autouse=True)
def _clear_executions() -> None:
    executions.clear()


async def test_scheduled_flows_run_on_a_started_worker(storage: ExecutionLog) -> None:
    scheduler = Scheduler(storage)
    worker = Worker(storage, "w1", max_concurrent_flows=4)
    await worker.register(Greeting)
    handle = await worker.start()
    try:
        ids = [await scheduler.schedule(Greeting(name)) for name in ("ann", "bob", "cy")]
        outcomes = await scheduler.wait(ids, timeout=10)
    finally:
        await handle.shutdown()
    assert [outcomes[flow_id].result for flow_id in ids] == ["hello ann", "hello bob", "hello cy"]
    assert sorted(executions) == ["greet ann", "greet bob", "greet cy"]
    assert not handle.running


async def test_scheduling_the_same_id_twice_is_idempotent(storage: ExecutionLog) -> None:
    scheduler = Scheduler(storage)
    first = await scheduler.schedule(Greeting("ann"), flow_id="greet-ann")
    second = await scheduler.schedule(Greeting("ann"), flow_id="greet-ann")
    assert first == second == "greet-ann"
    with pytest.raises(FlowInputsChangedError, match="'ann', given 'someone else'"):
        await scheduler.schedule(Greeting("someone else"), flow_id="greet-ann")
    worker = Worker(storage, "w1")
    await worker.register(Greeting)
    assert await worker.run_until_idle() == 1
    # Scheduling a finished flow again does not run it again.
    await scheduler.schedule(Greeting("ann"), flow_id="greet-ann")
    assert await worker.run_until_idle() == 0
    assert executions == ["greet ann"]


async def test_schedule_rejects_an_id_owned_by_another_type(storage: ExecutionLog) -> None:
    scheduler = Scheduler(storage)
    await scheduler.schedule(Greeting("ann"), flow_id="shared")
    with pytest.raises(PyergonError, match="already belongs to a flow of type 'Greeting'"):
        await scheduler.schedule(Doubler(1), flow_id="shared")


async def test_a_signal_resumes_a_suspended_flow(storage: ExecutionLog) -> None:
    scheduler = Scheduler(storage)
    worker = Worker(storage, "w1")
    await worker.register(Approval)
    flow_id = await scheduler.schedule(Approval("invoice"))
    await worker.run_until_idle()
    suspended = await storage.get_flow(flow_id)
    assert suspended is not None and suspended.status is TaskStatus.SUSPENDED
    assert suspended.lease_owner is None  # a suspended flow holds no worker

    assert await scheduler.signal(flow_id, "decision", "approved") is True
    assert await worker.run_until_idle() == 1
    outcome = (await scheduler.wait(flow_id, timeout=5))[flow_id]
    assert outcome.result == "INVOICE:approved"
    assert executions == ["prepare invoice"]  # the step was replayed, not re-run


async def test_a_signal_sent_before_the_flow_waits_is_kept(storage: ExecutionLog) -> None:
    scheduler = Scheduler(storage)
    flow_id = await scheduler.schedule(Approval("memo"))
    await scheduler.signal(flow_id, "decision", "early")
    worker = Worker(storage, "w1")
    await worker.register(Approval)
    assert await worker.run_until_idle() == 1
    assert (await scheduler.wait(flow_id, timeout=5))[flow_id].result == "MEMO:early"


async def test_signal_to_an_unknown_flow_is_refused(storage: ExecutionLog) -> None:
    with pytest.raises(FlowNotFoundError):
        await Scheduler(storage).signal("missing", "decision", 1)


async def test_a_started_worker_is_woken_by_a_signal(storage: ExecutionLog) -> None:
    scheduler = Scheduler(storage)
    worker = Worker(storage, "w1")
    await worker.register(Approval)
    handle = await worker.start()
    try:
        flow_id = await scheduler.schedule(Approval("po"))
        await flow_reaches(storage, flow_id, TaskStatus.SUSPENDED)
        await scheduler.signal(flow_id, "decision", "ok")
        outcome = (await scheduler.wait(flow_id, timeout=10))[flow_id]
    finally:
        await handle.shutdown()
    assert outcome.result == "PO:ok"


async def test_timers_suspend_and_fire_under_a_worker(storage: ExecutionLog) -> None:
    clock = ManualClock()
    scheduler = Scheduler(storage, clock=clock)
    worker = Worker(storage, "w1", clock=clock)
    await worker.register(Sleeper)
    flow_id = await scheduler.schedule(Sleeper(30.0))
    drained = asyncio.create_task(worker.run_until_idle())
    flow = await flow_reaches(storage, flow_id, TaskStatus.SUSPENDED)
    assert flow.wake_at == pytest.approx(clock.now() + 30.0)
    clock.advance(30.0)
    assert await asyncio.wait_for(drained, 10) == 1
    assert (await scheduler.wait(flow_id, timeout=5))[flow_id].result == "rested"


async def test_two_started_workers_share_timed_flows(storage: ExecutionLog) -> None:
    scheduler = Scheduler(storage)
    handles = []
    for worker_id in ("w1", "w2"):
        worker = Worker(storage, worker_id, enable_timers=True)
        await worker.register(Sleeper)
        handles.append(await worker.start())
    try:
        ids = [await scheduler.schedule(Sleeper(0.05)) for _ in range(6)]
        outcomes = await scheduler.wait(ids, timeout=15)
    finally:
        for handle in handles:
            await handle.shutdown()
    assert {outcome.result for outcome in outcomes.values()} == {"rested"}


async def test_children_run_as_flows_of_their_own(storage: ExecutionLog) -> None:
    scheduler = Scheduler(storage)
    worker = Worker(storage, "w1")
    await worker.register(Parent)
    await worker.register(Doubler)
    flow_id = await scheduler.schedule(Parent((1, 2, 3)), flow_id="parent")
    await worker.run_until_idle()
    assert (await scheduler.wait(flow_id, timeout=5))[flow_id].result == 12
    child = await storage.get_flow("parent~child-1")
    assert child is not None
    assert child.parent_flow_id == "parent"
    assert child.status is TaskStatus.COMPLETE


async def test_a_flow_type_no_worker_registered_stays_queued(storage: ExecutionLog) -> None:
    scheduler = Scheduler(storage)
    flow_id = await scheduler.schedule(Doubler(4))
    worker = Worker(storage, "w1")
    await worker.register(Greeting)
    assert await worker.run_until_idle() == 0
    queued = await storage.get_flow(flow_id)
    assert queued is not None and queued.status is TaskStatus.PENDING
    pending = await storage.list_flows(FlowQuery(status=TaskStatus.PENDING, flow_type="Doubler"))
    assert [flow.flow_id for flow in pending] == [flow_id]


async def suspend_a_due_doubler(storage: ExecutionLog) -> None:
    """Store a ``Doubler`` whose timer is due; the workers of these tests do not run Doublers."""
    now = time.time()
    await storage.create_flow(
        ScheduledFlow(
            flow_id="due-doubler",
            flow_type=flow_type_name(Doubler),
            payload=b"",
            status=TaskStatus.SUSPENDED,
            created_at=now,
            updated_at=now,
            wake_at=now - 1.0,
        )
    )


async def test_a_due_flow_of_a_type_the_worker_does_not_run_is_not_waited_for(
    storage: ExecutionLog,
) -> None:
    await suspend_a_due_doubler(storage)
    worker = Worker(storage, "w1")
    await worker.register(Greeting)

    assert await asyncio.wait_for(worker.run_until_idle(), timeout=5) == 0


class CountedClaims(InMemoryExecutionLog):
    def __init__(self) -> None:
        super().__init__()
        self.claims = 0

    async def claim(self, request: ClaimRequest) -> list[ClaimedRun]:
        self.claims += 1
        return await super().claim(request)


async def test_a_due_flow_of_a_type_the_worker_does_not_run_does_not_keep_it_busy() -> None:
    storage = CountedClaims()
    await suspend_a_due_doubler(storage)
    worker = Worker(storage, "w1")
    await worker.register(Greeting)

    handle = await worker.start()
    await asyncio.sleep(0.3)
    await handle.shutdown()

    assert storage.claims < 5  # not a claim per pass of a loop that never sleeps


async def test_an_unreadable_payload_fails_that_flow_only(storage: ExecutionLog) -> None:
    scheduler = Scheduler(storage)
    good = await scheduler.schedule(Greeting("ann"))
    bad = await scheduler.schedule(Greeting("bob"))
    # Corrupt the stored inputs of one flow: it must fail alone, with a clear error.
    flow = await storage.get_flow(bad)
    assert flow is not None
    await storage.delete_flow(bad)
    await storage.create_flow(flow.replace(payload=b"P1not a pickle"))
    worker = Worker(storage, "w1")
    await worker.register(Greeting)
    await worker.run_until_idle()
    outcomes = await scheduler.wait([good, bad], timeout=5)
    assert outcomes[good].result == "hello ann"
    assert outcomes[bad].status is TaskStatus.FAILED
    failed = await storage.get_flow(bad)
    assert failed is not None and failed.error is not None
    assert "SerializationError" in failed.error.type_name


async def test_an_expired_lease_is_claimed_again(storage: ExecutionLog) -> None:
    clock = ManualClock()
    scheduler = Scheduler(storage, clock=clock)
    flow_id = await scheduler.schedule(Greeting("ann"))
    # A worker that claims the flow and then dies: nothing renews its lease.
    [dead] = await storage.claim(
        ClaimRequest("dead", ["Greeting"], limit=1, lease_seconds=10, now=clock.now())
    )
    assert dead.flow.flow_id == flow_id
    survivor = Worker(storage, "survivor", clock=clock, lease_seconds=10)
    await survivor.register(Greeting)
    assert await survivor.run_until_idle(wait_for_timers=False) == 0  # lease still valid
    clock.advance(11)
    assert await survivor.run_until_idle(wait_for_timers=False) == 1
    assert (await scheduler.wait(flow_id, timeout=5))[flow_id].result == "hello ann"
    # The dead worker's token no longer writes anything.
    late = HeldFlow(storage, dead.flow, dead.flow.lease_token)
    await late.leave((), RunEnd(TaskStatus.FAILED, {"error": None}))
    assert late.lost
    final = await storage.get_flow(flow_id)
    assert final is not None and final.status is TaskStatus.COMPLETE


async def test_shutdown_releases_flows_still_running(storage: ExecutionLog) -> None:
    started = asyncio.Event()

    @dataclass
    @flow_type(name="Stuck")
    class Stuck:
        label: str

        @step
        async def block(self) -> None:
            started.set()
            await asyncio.Event().wait()

        @flow
        async def run(self) -> None:
            await self.block()

    scheduler = Scheduler(storage)
    worker = Worker(storage, "w1")
    await worker.register(Stuck)
    handle = await worker.start()
    flow_id = await scheduler.schedule(Stuck("x"))
    await asyncio.wait_for(started.wait(), 10)
    await handle.shutdown(deadline=0.01)
    released = await storage.get_flow(flow_id)
    assert released is not None
    assert released.status is TaskStatus.PENDING
    assert released.lease_owner is None


async def test_worker_refuses_bad_registrations(storage: ExecutionLog) -> None:
    worker = Worker(storage, "w1")
    with pytest.raises(FlowDefinitionError, match="not a flow type"):
        await worker.register(int)
    with pytest.raises(PyergonError, match="register"):
        await worker.start()
    with pytest.raises(ValueError, match="worker_id"):
        Worker(storage, "")


async def test_registering_again_replaces_the_class(storage: ExecutionLog) -> None:
    worker = Worker(storage, "w1")
    await worker.register(Greeting)

    @dataclass
    @flow_type(name="Greeting")
    class GreetingV2:
        name: str

        @step
        async def greet(self) -> str:
            return f"hi {self.name}"

        @flow
        async def run(self) -> str:
            return await self.greet()

    await worker.register(GreetingV2)
    assert worker.registered_types == ["Greeting"]
    flow_id = await Scheduler(storage).schedule(Greeting("ann"))
    await worker.run_until_idle()
    assert (await Scheduler(storage).wait(flow_id, timeout=5))[flow_id].result == "hi ann"


async def test_a_running_flow_keeps_its_lease_while_it_runs(storage: ExecutionLog) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @dataclass
    @flow_type(name="LongStep")
    class LongStep:
        label: str

        @step
        async def work(self) -> str:
            started.set()
            await release.wait()
            return "done"

        @flow
        async def run(self) -> str:
            return await self.work()

    worker = Worker(storage, "holder", lease_seconds=0.3)
    await worker.register(LongStep)
    handle = await worker.start()
    try:
        flow_id = await Scheduler(storage).schedule(LongStep("x"))
        await asyncio.wait_for(started.wait(), 10)
        first = await storage.get_flow(flow_id)
        assert first is not None and first.lease_expires_at is not None
        # Wait until the worker has renewed the lease at least once.
        async with asyncio.timeout(10):
            while True:
                current = await storage.get_flow(flow_id)
                assert current is not None and current.lease_expires_at is not None
                if current.lease_expires_at > first.lease_expires_at:
                    break
                await asyncio.sleep(0.02)
        # Another worker cannot take it while the lease is renewed.
        assert (
            await storage.claim(
                ClaimRequest("thief", ["LongStep"], limit=1, lease_seconds=1, now=time.time())
            )
            == []
        )
        release.set()
        outcome = (await Scheduler(storage).wait(flow_id, timeout=10))[flow_id]
    finally:
        release.set()
        await handle.shutdown()
    assert outcome.result == "done"


class SwallowingStorage(InMemoryExecutionLog):
    """A backend whose wait ignores a cancel, as ``asyncio.wait_for`` on Python 3.11 can."""

    async def wait_for_work(self, timeout: float) -> bool:
        try:
            await asyncio.sleep(min(timeout, 0.01))
        except asyncio.CancelledError:
            return True
        return False


async def test_a_worker_stops_even_if_its_backend_swallows_a_cancel() -> None:
    worker = Worker(SwallowingStorage(), "w1")
    await worker.register(Greeting)
    handle = await worker.start()

    await asyncio.wait_for(handle.shutdown(), timeout=10)
