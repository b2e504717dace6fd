"""A worker whose lease may have run out, by its own clock, starts no step body, attempt or write.

The worker's clock here is a ``ManualClock`` (the storage measures leases on it too), moved by a
step body or a storage wrapper at the point a real worker would lose time: a blocked event loop,
a claim or renewal answered late. The checks are what a user sees: how often a body ran, what
the storage holds, one log line.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyergon import RetryPolicy, Scheduler, Worker, flow, flow_type, step
from pyergon.clock import ManualClock
from pyergon.core import ClaimRequest, TaskStatus
from pyergon.core.changes import Applied, Change
from pyergon.errors import StorageError
from pyergon.storage.base import ClaimedRun, ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.storage.sqlite import SqliteExecutionLog
from tests.waiting import flow_reaches, until

LEASE = 10.0

calls: dict[str, int] = {}
"""How often each step body (or attempt) started, by name."""

clock = ManualClock()
entered = asyncio.Event()
cancelled = asyncio.Event()


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    global clock, entered, cancelled
    calls.clear()
    first_run[0] = pass_the_lease
    clock = ManualClock()
    entered = asyncio.Event()
    cancelled = asyncio.Event()


def count(name: str) -> int:
    calls[name] = calls.get(name, 0) + 1
    return calls[name]


def pass_the_lease() -> None:
    clock.advance(LEASE + 1)  # as time.sleep(lease + 1) in a blocking body


first_run: list[Callable[[], None]] = [pass_the_lease]
"""What the first run of ``BlocksPastLease.first`` does, without awaiting."""


@dataclass
@flow_type(name="BlocksPastLease")
class BlocksPastLease:
    """Its first step takes longer than the lease without awaiting: the loop is blocked."""

    label: str

    @step
    async def first(self) -> str:
        if count("first") == 1:
            first_run[0]()
        return "first"

    @step
    async def second(self) -> str:
        count("second")
        return "second"

    @flow
    async def run(self) -> str:
        return await self.first() + "+" + await self.second()


@dataclass
@flow_type(name="WaitsInStep")
class WaitsInStep:
    """Its step waits (awaiting) on its first run, and returns at once on later ones."""

    label: str

    @step
    async def wait(self) -> str:
        if count("wait") == 1:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return "done"

    @flow
    async def run(self) -> str:
        return await self.wait()


@dataclass
@flow_type(name="FailsOnce")
class FailsOnce:
    label: str

    @flow
    async def run(self) -> str:
        return await self.flaky()

    @step(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0))
    async def flaky(self) -> str:
        if count("flaky") == 1:
            raise ConnectionError("first attempt fails")
        return "done"


class ClaimsOnce(InMemoryExecutionLog):
    """Each worker claims once: a run it drops is not taken up again by itself."""

    def __init__(self) -> None:
        super().__init__()
        self.claimed: set[str] = set()

    async def claim(self, request: ClaimRequest) -> list[ClaimedRun]:
        if request.worker_id in self.claimed:
            return []
        self.claimed.add(request.worker_id)
        return await super().claim(request)


async def run_alone(storage: ExecutionLog, flow_id: str) -> tuple[Worker, int]:
    """Run worker ``a`` until idle; return it and how many flows it finished."""
    worker = Worker(storage, "a", clock=clock, lease_seconds=LEASE)
    worker.register(BlocksPastLease)
    worker.register(WaitsInStep)
    worker.register(FailsOnce)
    return worker, await asyncio.wait_for(worker.run_until_idle(), 10)


async def assert_left_running_by_a(storage: ExecutionLog, flow_id: str) -> None:
    """The run wrote nothing: no record, and the flow still as the claim left it."""
    stored = await storage.get_flow(flow_id)
    assert stored is not None
    assert stored.status is TaskStatus.RUNNING
    assert stored.lease_owner == "a"
    assert await storage.load_invocations(flow_id) == []


def dropped_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "its lease and stopped" in r.getMessage()]


async def test_no_step_body_starts_once_the_lease_ran_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = ClaimsOnce()
    flow_id = await Scheduler(storage, clock=clock).schedule(BlocksPastLease("x"))

    with caplog.at_level(logging.WARNING, logger="pyergon"):
        _, finished = await run_alone(storage, flow_id)

    assert finished == 0
    assert calls == {"first": 1}  # the second step's body never started
    await assert_left_running_by_a(storage, flow_id)
    assert len(dropped_lines(caplog)) == 1
    assert f"flow {flow_id!r} (BlocksPastLease) lost its lease" in dropped_lines(caplog)[0]


async def test_the_next_owner_runs_the_flow_and_each_body_after_the_loss_once() -> None:
    storage = ClaimsOnce()
    scheduler = Scheduler(storage, clock=clock)
    flow_id = await scheduler.schedule(BlocksPastLease("x"))
    await run_alone(storage, flow_id)

    survivor = Worker(storage, "b", clock=clock, lease_seconds=LEASE)
    survivor.register(BlocksPastLease)
    assert await asyncio.wait_for(survivor.run_until_idle(), 10) == 1

    assert (await scheduler.wait(flow_id, timeout=5))[flow_id].result == "first+second"
    assert calls == {"first": 2, "second": 1}


class AdvancesAfterSaving(ClaimsOnce):
    """The first save of a step record moves the clock past the lease once it is stored."""

    async def apply(self, change: Change) -> Applied:
        applied = await super().apply(change)
        if change.records and not change.writes and calls.get("flaky") == 1:
            clock.advance(LEASE + 1)
        return applied


async def test_no_retry_attempt_starts_once_the_lease_ran_out() -> None:
    storage = AdvancesAfterSaving()
    flow_id = await Scheduler(storage, clock=clock).schedule(FailsOnce("x"))

    _, finished = await run_alone(storage, flow_id)

    assert finished == 0
    assert calls == {"flaky": 1}  # the retry did not start
    (record,) = await storage.load_invocations(flow_id)
    assert record.attempts == 1  # saved while the lease held
    stored = await storage.get_flow(flow_id)
    assert stored is not None and stored.status is TaskStatus.RUNNING


class LateClaims(InMemoryExecutionLog):
    """The first claim is answered after the lease it took has run out."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0

    async def claim(self, request: ClaimRequest) -> list[ClaimedRun]:
        runs = await super().claim(request)
        self.claims += 1
        if self.claims == 1:
            clock.advance(LEASE + 1)
        return runs


async def test_a_claim_answered_after_its_lease_ran_out_is_not_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = LateClaims()
    flow_id = await Scheduler(storage, clock=clock).schedule(BlocksPastLease("x"))
    worker = Worker(storage, "a", clock=clock, lease_seconds=LEASE)
    worker.register(BlocksPastLease)

    with caplog.at_level(logging.WARNING, logger="pyergon"):
        # One pass: the late claim is dropped, and the flow is not claimed again in it.
        await asyncio.wait_for(worker._fill_slots(), 10)

    assert calls == {}
    assert worker.running_flow_ids == []
    await assert_left_running_by_a(storage, flow_id)
    assert any("answered after its lease" in r.getMessage() for r in caplog.records)


async def test_a_step_running_when_the_lease_runs_out_is_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = InMemoryExecutionLog()
    scheduler = Scheduler(storage, clock=clock)
    flow_id = await scheduler.schedule(WaitsInStep("x"))
    worker = Worker(storage, "a", clock=clock, lease_seconds=LEASE)
    worker.register(WaitsInStep)

    with caplog.at_level(logging.WARNING, logger="pyergon"):
        drained = asyncio.create_task(worker.run_until_idle())
        await asyncio.wait_for(entered.wait(), 10)
        clock.advance(LEASE + 1)
        await asyncio.wait_for(cancelled.wait(), 10)
        # The lease ended in storage too: the worker claims the flow again and finishes it.
        assert await asyncio.wait_for(drained, 10) == 1

    assert (await scheduler.wait(flow_id, timeout=5))[flow_id].result == "done"
    assert calls == {"wait": 2}
    assert len(dropped_lines(caplog)) == 1


class TakenOnRenewal(ClaimsOnce):
    """Every renewal says another worker holds the flow (the storage is not changed)."""

    async def renew_leases(
        self, leases: Mapping[str, str], *, lease_seconds: float, now: float
    ) -> set[str]:
        return set()


async def test_a_run_whose_renewal_finds_the_flow_taken_stops_without_releasing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = TakenOnRenewal()
    flow_id = await Scheduler(storage).schedule(WaitsInStep("x"))
    worker = Worker(storage, "a", lease_seconds=0.3)  # renews every 0.1 s
    worker.register(WaitsInStep)

    with caplog.at_level(logging.WARNING, logger="pyergon"):
        handle = await worker.start()
        try:
            await asyncio.wait_for(cancelled.wait(), 10)

            async def run_ended() -> bool:
                return not worker.running_flow_ids

            await until(run_ended)
        finally:
            await handle.shutdown()

    # Not released: the other holder's claim stands (and a release would write under it).
    await assert_left_running_by_a(storage, flow_id)
    assert len(dropped_lines(caplog)) == 1
    assert "another worker holding it" in dropped_lines(caplog)[0]


class LateRenewals(InMemoryExecutionLog):
    """Every renewal holds the lease in storage but is answered after it ran out."""

    async def renew_leases(
        self, leases: Mapping[str, str], *, lease_seconds: float, now: float
    ) -> set[str]:
        held = await super().renew_leases(leases, lease_seconds=lease_seconds, now=now)
        clock.advance(lease_seconds + 1)
        return held


async def test_a_renewal_answered_after_the_lease_ran_out_does_not_extend_it() -> None:
    storage = LateRenewals()
    flow_id = await Scheduler(storage, clock=clock).schedule(WaitsInStep("x"))
    worker = Worker(storage, "a", clock=clock, lease_seconds=0.3)
    worker.register(WaitsInStep)

    handle = await worker.start()
    try:
        await asyncio.wait_for(cancelled.wait(), 10)
    finally:
        await handle.shutdown(deadline=1)
    assert calls["wait"] >= 1
    assert await flow_reaches(storage, flow_id, TaskStatus.COMPLETE) is not None


# -- a step that blocks the event loop, and a second worker on the same SQLite file ------------

other_finished = threading.Event()


def run_other_worker(path: Path, flow_id: str) -> None:
    """Worker ``b`` on its own thread, loop and connection: runs the flow once a's lease ends."""

    async def serve() -> None:
        storage = SqliteExecutionLog(path)
        await storage.connect()
        worker = Worker(storage, "b", lease_seconds=0.5)
        worker.register(BlocksPastLease)
        handle = await worker.start()
        try:
            await Scheduler(storage).wait(flow_id, timeout=30)
        finally:
            await handle.shutdown()
            await storage.close()
            other_finished.set()

    asyncio.run(serve())


class BeatsOnTheLoop(SqliteExecutionLog):
    """SQLite without a second handle: the heartbeat shares the worker's (blocked) loop.

    As with a heartbeat that cannot get through: the lease runs out while the loop is blocked.
    """

    def reopened(self) -> SqliteExecutionLog:
        raise StorageError("this test's worker beats on its own loop")


async def test_a_step_blocking_the_loop_past_the_lease_does_not_run_the_next_step_twice(
    tmp_path: Path,
) -> None:
    other_finished.clear()
    path = tmp_path / "pyergon.db"
    storage = BeatsOnTheLoop(path)
    await storage.connect()
    try:
        scheduler = Scheduler(storage)
        flow_id = await scheduler.schedule(BlocksPastLease("x"))
        worker = Worker(storage, "a", lease_seconds=0.5)
        worker.register(BlocksPastLease)
        other = threading.Thread(target=run_other_worker, args=(path, flow_id))

        def block_until_the_other_ran_it() -> None:
            other.start()
            other_finished.wait(30)  # no await: this worker's loop is blocked meanwhile

        first_run[0] = block_until_the_other_ran_it
        try:
            await asyncio.wait_for(worker.run_until_idle(), 30)
        finally:
            if other.is_alive():
                await asyncio.to_thread(other.join, 30)
        outcome = (await scheduler.wait(flow_id, timeout=10))[flow_id]
        records = await storage.load_invocations(flow_id)
    finally:
        await storage.close()

    assert outcome.result == "first+second"
    # a's first body ran while its lease held; nothing after it did, and b did it all again.
    assert calls == {"first": 2, "second": 1}
    assert [record.attempts for record in records] == [1, 1]
