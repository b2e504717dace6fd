"""A run that fails outside the flow's code gives the flow back to run again later, not at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyergon import Executor, Scheduler, Worker, flow, flow_type, step
from pyergon.clock import ManualClock
from pyergon.core import Invocation, TaskStatus
from pyergon.errors import StorageError
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.storage.progress import FlowTransition, SavedProgress

BODY_RUNS: list[str] = []


class RecordsFail(InMemoryExecutionLog):
    """Memory storage that cannot save records while ``down``."""

    down = True

    async def save_progress(
        self,
        flow_id: str,
        records: Sequence[Invocation],
        transition: FlowTransition | None = None,
    ) -> SavedProgress:
        if self.down and records:
            raise StorageError("the disk is full")
        return await super().save_progress(flow_id, records, transition)


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


class LogsUnreadable(InMemoryExecutionLog):
    """Memory storage whose logs cannot be read ``failures`` times."""

    failures = 1

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        if self.failures:
            self.failures -= 1
            raise StorageError("the connection was lost")
        return await super().load_invocations(flow_id)


async def test_a_claim_whose_logs_cannot_be_read_hands_the_runs_their_reading() -> None:
    storage = LogsUnreadable()
    flow_id = await Scheduler(storage).schedule(Charge(), "charge-1")

    runs = await storage.claim_runs("w", ["Charge"], limit=5, lease_seconds=30, now=0.0)

    assert [(run.flow.flow_id, run.log) for run in runs] == [(flow_id, None)]
    claimed = await storage.get_flow(flow_id)
    assert claimed is not None and claimed.status is TaskStatus.RUNNING


async def test_a_flow_whose_log_was_unreadable_at_the_claim_replays_it_all_the_same() -> None:
    storage = LogsUnreadable()
    storage.failures = 0
    await Executor(Charge(), storage, "charge-1").run(lambda flow: flow.run())
    await storage.update_flow("charge-1", status=TaskStatus.PENDING)  # queued again, log kept
    BODY_RUNS.clear()
    storage.failures = 1
    worker = Worker(storage, "w-unreadable")
    await worker.register(Charge)

    await worker.run_until_idle()

    stored = await storage.get_flow("charge-1")
    assert stored is not None and stored.status is TaskStatus.COMPLETE
    assert BODY_RUNS == []  # the recorded step was replayed, not run again
