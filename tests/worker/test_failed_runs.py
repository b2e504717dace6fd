"""A run that fails outside the flow's code gives the flow back to run again later, not at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyergon import Scheduler, Worker, flow, flow_type, step
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
