"""Races inside one worker: a flow it releases and claims again at once, renewals meeting releases.

A storage wrapper lines operations up so the interleaving that is rare under load happens on
every run; the checks are what a user sees (leases released on shutdown, nothing logged).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from pyergon import Scheduler, Worker, flow, flow_type, schedule_timer, step
from pyergon.clock import ManualClock
from pyergon.core import ClaimRequest, TaskStatus
from pyergon.core.changes import Applied, Change
from pyergon.storage.base import ClaimedRun
from pyergon.storage.memory import InMemoryExecutionLog

started = asyncio.Event()


@dataclass
@flow_type(name="NapThenBlock")
class NapThenBlock:
    label: str

    @step
    async def block(self) -> None:
        started.set()
        await asyncio.Event().wait()  # cut by the shutdown deadline

    @flow
    async def run(self) -> None:
        await schedule_timer(1.0)
        await self.block()


def releases(change: Change) -> bool:
    """Whether ``change`` is a run leaving its flow: its first write sets a status."""
    return bool(change.writes) and "status" in change.writes[0].changes


class ClaimRacesRelease(InMemoryExecutionLog):
    """Holds the second claim until a flow is released, then makes it at a later time.

    So the worker's next claim, already in flight, takes the flow its own task has just
    released, before that task's done-callback has run.
    """

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock
        self.claims = 0
        self.released = asyncio.Event()

    async def claim(self, request: ClaimRequest) -> list[ClaimedRun]:
        self.claims += 1
        if self.claims == 2:
            await self.released.wait()
        return await super().claim(dataclasses.replace(request, now=self.clock.now()))

    async def apply(self, change: Change) -> Applied:
        applied = await super().apply(change)
        if releases(change):
            self.clock.advance(5.0)  # the timer the flow suspended on is due at once
            self.released.set()
        return applied


async def test_a_flow_claimed_again_at_once_is_still_tracked_and_released_on_shutdown() -> None:
    started.clear()
    clock = ManualClock()
    storage = ClaimRacesRelease(clock)
    flow_id = await Scheduler(storage, clock=clock).schedule(NapThenBlock("x"))
    worker = Worker(storage, "w1", clock=clock, max_concurrent_flows=2)
    await worker.register(NapThenBlock)
    handle = await worker.start()
    await asyncio.wait_for(started.wait(), 10)
    running = await storage.get_flow(flow_id)
    assert running is not None and running.status is TaskStatus.RUNNING
    assert "running=1" in repr(worker)  # the second claim holds a slot

    await handle.shutdown(deadline=0.01)

    released = await storage.get_flow(flow_id)
    assert released is not None
    assert released.status is TaskStatus.PENDING
    assert released.lease_owner is None


class SlowRenewals(InMemoryExecutionLog):
    """Every lease renewal waits until a release has gone through: the renewer's view is stale."""

    def __init__(self) -> None:
        super().__init__()
        self.released = asyncio.Event()

    async def renew_leases(
        self, leases: Mapping[str, str], *, lease_seconds: float, now: float
    ) -> set[str]:
        await self.released.wait()
        return await super().renew_leases(leases, lease_seconds=lease_seconds, now=now)

    async def apply(self, change: Change) -> Applied:
        applied = await super().apply(change)
        if releases(change):
            self.released.set()
        return applied


@dataclass
@flow_type(name="ShortWork")
class ShortWork:
    seconds: float

    @step
    async def work(self) -> str:
        await asyncio.sleep(self.seconds)
        return "done"

    @flow
    async def run(self) -> str:
        return await self.work()


async def test_a_renewal_that_meets_a_release_is_not_a_lost_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = SlowRenewals()
    scheduler = Scheduler(storage)
    worker = Worker(storage, "w1", lease_seconds=0.3)  # renews every 0.1 s
    await worker.register(ShortWork)
    handle = await worker.start()
    with caplog.at_level(logging.WARNING, logger="pyergon"):
        try:
            flow_id = await scheduler.schedule(ShortWork(0.15))
            outcome = (await scheduler.wait(flow_id, timeout=10))[flow_id]
        finally:
            await handle.shutdown()

    assert outcome.result == "done"
    assert worker.flows_finished == 1
    assert caplog.records == []
