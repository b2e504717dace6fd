"""A cancel request reaches a running flow at once, however soon after the worker last looked."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pyergon import Scheduler, Worker, flow, flow_type, step
from pyergon.core import TaskStatus
from pyergon.management import FlowManager
from pyergon.storage.base import ExecutionLog
from tests.waiting import flow_reaches

SOON = 0.5
"""Seconds a cancelled flow may take to stop in these tests: far more than it needs, far less
than the one-second wait of a worker that missed the request."""


@dataclass
@flow_type(name="TickingFlow")
class Ticking:
    number: int

    @step
    async def tick(self, count: int) -> int:
        await asyncio.sleep(0.001)
        return count + 1

    @flow
    async def run(self) -> int:
        count = 0
        while True:  # until cancelled
            count = await self.tick(count)


async def test_cancels_in_quick_succession_each_reach_their_flow_soon(
    storage: ExecutionLog,
) -> None:
    # Each cancel lands just after the worker looked for the previous one (its flow ending
    # wakes the worker, which looks again): none may wait for the worker's idle timeout.
    worker = Worker(storage, "w-cancel")
    worker.register(Ticking)
    handle = await worker.start()
    try:
        scheduler = Scheduler(storage)
        manager = FlowManager(storage)
        flow_ids = [await scheduler.schedule(Ticking(n), flow_id=f"tick-{n}") for n in range(6)]
        for flow_id in flow_ids:
            await flow_reaches(storage, flow_id, TaskStatus.RUNNING)
        for flow_id in flow_ids:
            await manager.cancel(flow_id)
            await flow_reaches(storage, flow_id, TaskStatus.CANCELLED, within=SOON)
    finally:
        await handle.shutdown(deadline=1.0)
