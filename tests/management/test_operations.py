"""cancel, resume, retry, fork and replay through FlowManager, on every backend."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from pyergon import (
    Executor,
    Scheduler,
    Worker,
    await_external_signal,
    flow,
    flow_type,
    schedule_timer,
    step,
)
from pyergon.clock import ManualClock
from pyergon.core import ClaimRequest, Completed, TaskStatus
from pyergon.errors import FlowCancelledError, FlowNotFoundError, FlowStateError
from pyergon.management import FlowManager
from pyergon.storage.base import ExecutionLog, WorkerRegistry
from pyergon.testing import make_worker
from tests.waiting import flow_reaches, until

calls: list[str] = []
failing: set[str] = set()


@dataclass
@flow_type
class Pipeline:
    source: str

    @step
    async def extract(self) -> int:
        calls.append("extract")
        return len(self.source)

    @step
    async def transform(self, size: int) -> int:
        calls.append("transform")
        if "transform" in failing:
            raise RuntimeError("transform broke")
        return size * 10

    @step
    async def load(self, value: int) -> str:
        calls.append("load")
        return f"loaded {value}"

    @flow
    async def run(self) -> str:
        size = await self.extract()
        approval = await await_external_signal("go")
        value = await self.transform(size + approval)
        return await self.load(value)


@dataclass
@flow_type(name="Pipeline")
class PipelineRenamedStep:
    source: str

    @step
    async def extract(self) -> int:
        return len(self.source)

    @step
    async def reshape(self, size: int) -> int:
        return size

    @flow
    async def run(self) -> int:
        size = await self.extract()
        await await_external_signal("go")
        return await self.reshape(size)


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    failing.clear()


async def run_direct(storage: ExecutionLog, flow_id: str, **kwargs: object) -> object:
    return await Executor(Pipeline("abc"), storage, flow_id, **kwargs).run(  # type: ignore[arg-type]
        lambda pipeline: pipeline.run()
    )


# -- cancel ------------------------------------------------------------------------------------


async def test_cancel_a_queued_flow(storage: ExecutionLog) -> None:
    flow_id = await Scheduler(storage).schedule(Pipeline("abc"))
    cancelled = await FlowManager(storage).cancel(flow_id)
    assert cancelled.status is TaskStatus.CANCELLED
    worker = Worker(storage, "w1")
    await worker.register(Pipeline)
    assert await worker.run_until_idle() == 0
    assert calls == []


async def test_cancel_a_suspended_flow(storage: ExecutionLog) -> None:
    await run_direct(storage, "p1")
    cancelled = await FlowManager(storage).cancel("p1")
    assert cancelled.status is TaskStatus.CANCELLED
    outcome = await run_direct(storage, "p1")
    assert isinstance(outcome, Completed) and outcome.status is TaskStatus.CANCELLED


async def test_cancel_a_finished_flow_is_refused_and_changes_nothing(
    storage: ExecutionLog,
) -> None:
    flow_id = await Scheduler(storage).schedule(Pipeline("abc"), flow_id="done")
    await Scheduler(storage).signal(flow_id, "go", 1)
    worker = Worker(storage, "w1")
    await worker.register(Pipeline)
    await worker.run_until_idle()
    before = await storage.get_flow(flow_id)
    with pytest.raises(FlowStateError, match="already COMPLETE"):
        await FlowManager(storage).cancel(flow_id)
    assert await storage.get_flow(flow_id) == before


async def test_cancel_unknown_flow(storage: ExecutionLog) -> None:
    with pytest.raises(FlowNotFoundError):
        await FlowManager(storage).cancel("nope")


async def test_cancel_a_running_flow_stops_it_at_the_next_step_boundary(
    storage: ExecutionLog,
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    ran: list[str] = []

    @dataclass
    @flow_type(name="Slow")
    class Slow:
        label: str

        @step
        async def first(self) -> None:
            ran.append("first")
            entered.set()
            await release.wait()

        @step
        async def second(self) -> None:
            ran.append("second")

        @flow
        async def run(self) -> None:
            await self.first()
            await self.second()

    worker = Worker(storage, "w1")
    await worker.register(Slow)
    handle = await worker.start()
    try:
        flow_id = await Scheduler(storage).schedule(Slow("x"))
        await asyncio.wait_for(entered.wait(), 10)
        requested = await FlowManager(storage).cancel(flow_id)
        assert requested.status is TaskStatus.RUNNING and requested.cancel_requested
        # The worker notices the request while the step still runs, then lets it finish.
        await until(lambda: _worker_knows(worker, flow_id))
        release.set()
        final = await flow_reaches(storage, flow_id, TaskStatus.CANCELLED)
    finally:
        release.set()
        await handle.shutdown()
    assert ran == ["first"]
    assert final.error is not None and "FlowCancelledError" in final.error.type_name
    records = await storage.load_invocations(flow_id)
    assert [record.name for record in records] == ["first"]  # the finished step is recorded


async def _worker_knows(worker: Worker, flow_id: str) -> bool:
    claim = worker._running.get(flow_id)
    return claim is not None and await claim.cancel.requested()


async def test_cancelling_a_direct_run_takes_effect_at_a_later_step(
    storage: ExecutionLog,
) -> None:
    clock = ManualClock()

    @dataclass
    @flow_type(name="Ticks")
    class Ticks:
        count: int

        @step
        async def tick(self, number: int) -> int:
            clock.advance(1.0)  # each step takes a second of the executor's clock
            if number == 1:
                await FlowManager(storage).cancel("ticks")
            return number

        @flow
        async def run(self) -> int:
            return sum([await self.tick(number) for number in range(self.count)])

    outcome = await Executor(Ticks(5), storage, "ticks", clock=clock).run(lambda t: t.run())
    assert isinstance(outcome, Completed)
    assert outcome.status is TaskStatus.CANCELLED
    assert isinstance(outcome.error, FlowCancelledError)
    recorded = [record.sequence for record in await storage.load_invocations("ticks")]
    assert recorded == [1, 2]


# -- resume ------------------------------------------------------------------------------------


async def test_resume_a_suspended_flow_puts_it_back_in_the_queue(storage: ExecutionLog) -> None:
    clock = ManualClock()

    @dataclass
    @flow_type(name="Napper")
    class Napper:
        label: str

        @flow
        async def run(self) -> str:
            await schedule_timer(3600)
            return "awake"

    await Executor(Napper("x"), storage, "nap", clock=clock).run(lambda n: n.run())
    resumed = await FlowManager(storage).resume("nap")
    assert resumed.status is TaskStatus.PENDING
    assert resumed.wake_at is None


async def test_resume_a_stuck_running_flow(storage: ExecutionLog) -> None:
    clock = ManualClock()
    flow_id = await Scheduler(storage, clock=clock).schedule(Pipeline("abc"))
    claimed = await storage.claim(
        ClaimRequest("gone", ["Pipeline"], limit=1, lease_seconds=5, now=clock.now())
    )
    assert [run.flow.flow_id for run in claimed] == [flow_id]
    manager = FlowManager(storage, clock=clock)
    with pytest.raises(FlowStateError, match="running on worker 'gone'"):
        await manager.resume(flow_id)
    clock.advance(6)
    assert (await manager.resume(flow_id)).status is TaskStatus.PENDING


async def test_resume_a_running_flow_whose_worker_died_or_stopped_needs_no_wait(
    storage: ExecutionLog,
) -> None:
    clock = ManualClock()
    flow_id = await Scheduler(storage, clock=clock).schedule(Pipeline("abc"))
    await storage.claim(
        ClaimRequest("gone", ["Pipeline"], limit=1, lease_seconds=5, now=clock.now())
    )
    assert isinstance(storage, WorkerRegistry)
    dead = make_worker("gone", lease_seconds=1.0, last_beat=clock.now() - 1.5)
    await storage.put_worker(dead, replacing=None)

    resumed = await FlowManager(storage, clock=clock).resume(flow_id)

    assert resumed.status is TaskStatus.PENDING


async def test_resume_force_takes_a_flow_from_a_live_worker(storage: ExecutionLog) -> None:
    clock = ManualClock()
    flow_id = await Scheduler(storage, clock=clock).schedule(Pipeline("abc"))
    await storage.claim(
        ClaimRequest("busy", ["Pipeline"], limit=1, lease_seconds=5, now=clock.now())
    )
    assert isinstance(storage, WorkerRegistry)
    await storage.put_worker(make_worker("busy", last_beat=clock.now()), replacing=None)
    manager = FlowManager(storage, clock=clock)

    with pytest.raises(FlowStateError, match=r"running on worker 'busy'.*or force it"):
        await manager.resume(flow_id)
    resumed = await manager.resume(flow_id, force=True)

    assert resumed.status is TaskStatus.PENDING
    assert resumed.lease_token is None


async def test_workers_lists_the_records_by_id(storage: ExecutionLog) -> None:
    assert isinstance(storage, WorkerRegistry)
    for worker_id in ("b", "a"):
        await storage.put_worker(make_worker(worker_id), replacing=None)

    workers = await FlowManager(storage).workers()

    assert [worker.worker_id for worker in workers] == ["a", "b"]


async def test_resume_a_finished_flow_is_refused(storage: ExecutionLog) -> None:
    failing.add("transform")
    await run_direct(storage, "p1")
    await Scheduler(storage).signal("p1", "go", 1)
    await run_direct(storage, "p1")
    with pytest.raises(FlowStateError, match="use retry"):
        await FlowManager(storage).resume("p1")


# -- retry -------------------------------------------------------------------------------------


async def test_retry_runs_a_failed_flow_again_with_its_steps_cached(
    storage: ExecutionLog,
) -> None:
    failing.add("transform")
    await run_direct(storage, "p1")
    await Scheduler(storage).signal("p1", "go", 1)
    failed = await run_direct(storage, "p1")
    assert isinstance(failed, Completed) and failed.status is TaskStatus.FAILED
    failing.clear()
    calls.clear()
    retried = await FlowManager(storage).retry("p1")
    assert retried.status is TaskStatus.PENDING and retried.error is None
    worker = Worker(storage, "w1")
    await worker.register(Pipeline)
    assert await worker.run_until_idle() == 1
    final = await storage.get_flow("p1")
    assert final is not None and final.status is TaskStatus.COMPLETE
    assert calls == ["transform", "load"]  # extract stayed cached


async def test_retry_refuses_a_flow_that_did_not_fail(storage: ExecutionLog) -> None:
    await run_direct(storage, "p1")
    with pytest.raises(FlowStateError, match="only FAILED or CANCELLED"):
        await FlowManager(storage).retry("p1")


# -- fork --------------------------------------------------------------------------------------


async def test_fork_keeps_the_first_steps_and_runs_the_rest_live(storage: ExecutionLog) -> None:
    await run_direct(storage, "p1")
    await Scheduler(storage).signal("p1", "go", 1)
    await run_direct(storage, "p1")
    original = await storage.load_invocations("p1")
    calls.clear()
    manager = FlowManager(storage)
    fork_id = await manager.fork("p1", from_step=2, new_flow_id="p1-fork")
    assert fork_id == "p1-fork"
    copied = await storage.load_invocations(fork_id)
    assert [record.position for record in copied] == ["1", "2"]
    outcome = await run_direct(storage, fork_id)
    assert isinstance(outcome, Completed) and outcome.result == "loaded 40"
    assert calls == ["transform", "load"]
    assert await storage.load_invocations("p1") == original  # the original is untouched


async def test_fork_refuses_bad_requests_without_writing(storage: ExecutionLog) -> None:
    manager = FlowManager(storage)
    with pytest.raises(FlowNotFoundError):
        await manager.fork("nope", from_step=1)
    await run_direct(storage, "p1")
    with pytest.raises(FlowStateError, match="past the end of its log"):
        await manager.fork("p1", from_step=7)
    with pytest.raises(FlowStateError, match="integer >= 0"):
        await manager.fork("p1", from_step=-1)
    with pytest.raises(FlowStateError, match="already exists"):
        await manager.fork("p1", from_step=1, new_flow_id="p1")
    flow_id = await Scheduler(storage).schedule(Pipeline("abc"))
    assert await storage.claim(ClaimRequest("w", ["Pipeline"], limit=1, lease_seconds=30, now=0.0))
    with pytest.raises(FlowStateError, match="is running"):
        await manager.fork(flow_id, from_step=0)
    assert [flow.flow_id for flow in await storage.list_flows()] == sorted(
        [flow_id, "p1"], key=lambda i: i != flow_id
    )


# -- replay ------------------------------------------------------------------------------------


async def test_replay_of_a_matching_log_is_consistent_and_runs_no_step(
    storage: ExecutionLog,
) -> None:
    await run_direct(storage, "p1")
    await Scheduler(storage).signal("p1", "go", 1)
    await run_direct(storage, "p1")
    calls.clear()
    result = await FlowManager(storage, [Pipeline]).replay("p1")
    assert result.consistent
    assert result.divergence is None
    assert result.replayed == result.recorded == 4
    assert isinstance(result.outcome, Completed) and result.outcome.result == "loaded 40"
    assert calls == []


async def test_replay_stops_where_the_log_ends(storage: ExecutionLog) -> None:
    await run_direct(storage, "p1")
    before = await storage.load_invocations("p1")
    result = await FlowManager(storage, [Pipeline]).replay("p1")
    assert result.consistent and result.ended_at == "2"
    assert calls == ["extract"]  # only the first, real run
    assert await storage.load_invocations("p1") == before


async def test_replay_reports_the_first_divergence(storage: ExecutionLog) -> None:
    await run_direct(storage, "p1")
    await Scheduler(storage).signal("p1", "go", 1)
    await run_direct(storage, "p1")
    result = await FlowManager(storage).replay("p1", PipelineRenamedStep)
    assert not result.consistent
    assert result.divergence is not None
    assert result.divergence.position == "3"
    assert "transform" in result.divergence.recorded
    assert "reshape" in result.divergence.current
    assert "diverges at position 3" in result.summary()
