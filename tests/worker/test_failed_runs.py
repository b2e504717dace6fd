"""A run that fails outside the flow's code gives the flow back to run again later, not at once."""

from __future__ import annotations

from dataclasses import dataclass

from pyergon import Executor, Scheduler, Worker, flow, flow_type, step
from pyergon.clock import ManualClock
from pyergon.core import ClaimRequest, TaskStatus
from pyergon.core.changes import Applied, Change
from pyergon.errors import StorageError
from pyergon.storage._flows import requeue
from pyergon.storage.base import ClaimedRun
from pyergon.storage.memory import InMemoryExecutionLog

BODY_RUNS: list[str] = []


class RecordsFail(InMemoryExecutionLog):
    """Memory storage that cannot save records while ``down``."""

    down = True

    async def apply(self, change: Change) -> Applied:
        if self.down and change.records:
            raise StorageError("the disk is full")
        return await super().apply(change)


@dataclass
@flow_type
class Charge:
    @step
    async def charge(self) -> str:
        BODY_RUNS.append("charge")
        return "charged"

    @flow
    async def run(self) -> str:
        return await self.charge()


async def test_a_run_whose_records_cannot_be_saved_waits_longer_each_time_it_fails() -> None:
    BODY_RUNS.clear()
    storage = RecordsFail()
    clock = ManualClock()
    worker = Worker(storage, "w-failing", clock=clock)
    await worker.register(Charge)
    flow_id = await Scheduler(storage).schedule(Charge(), "charge-1")

    waits = []
    for _ in range(3):
        await worker.run_until_idle(wait_for_timers=False)
        stored = await storage.get_flow(flow_id)
        assert stored is not None and stored.status is TaskStatus.SUSPENDED
        assert stored.wake_at is not None
        waits.append(stored.wake_at - clock.now())
        clock.advance(stored.wake_at - clock.now())

    assert BODY_RUNS == ["charge"] * 3  # once per try, not in a loop
    assert waits == [0.5, 1.0, 2.0]
    storage.down = False
    await worker.run_until_idle(wait_for_timers=False)
    done = await storage.get_flow(flow_id)
    assert done is not None and done.status is TaskStatus.COMPLETE


class LogsUnreadableAtClaim(InMemoryExecutionLog):
    """Memory storage whose claims ``failures`` times cannot read the claimed flows' logs."""

    failures = 1

    async def claim(self, request: ClaimRequest) -> list[ClaimedRun]:
        runs = await super().claim(request)
        if not self.failures:
            return runs
        self.failures -= 1
        return [ClaimedRun(run.flow, None) for run in runs]  # as the contract allows


async def test_a_flow_whose_log_was_unreadable_at_the_claim_replays_it_all_the_same() -> None:
    storage = LogsUnreadableAtClaim()
    storage.failures = 0
    await Executor(Charge(), storage, "charge-1").run(lambda flow: flow.run())
    # Queued again, log kept.
    assert await requeue(storage, "charge-1", from_statuses=(TaskStatus.COMPLETE,))
    BODY_RUNS.clear()
    storage.failures = 1
    worker = Worker(storage, "w-unreadable")
    await worker.register(Charge)

    await worker.run_until_idle()

    stored = await storage.get_flow("charge-1")
    assert stored is not None and stored.status is TaskStatus.COMPLETE
    assert BODY_RUNS == []  # the recorded step was replayed, not run again
    assert storage.failures == 0  # the claim did hand out a run without its log
