"""A run's records are stored only while it holds its flow: a late save lands nowhere.

Another worker takes the flow over while worker ``a``'s save of records is on its way (as a save
held up in a stalled database server would be): a storage wrapper lets worker ``b`` claim the
flow and store its own record just before ``a``'s save is applied. The storage refuses ``a``'s
save, so only ``b``'s record is stored, and ``a`` stops with one log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from pyergon import RetryPolicy, Scheduler, Worker, flow, flow_type, step
from pyergon.core import ClaimRequest, TaskStatus
from pyergon.core.changes import Applied, Change
from pyergon.core.records import Invocation
from pyergon.storage.base import ExecutionLog
from pyergon.testing._contract_races import _Meanwhile

calls: list[str] = []
"""The step bodies that started, in order."""
cancelled = asyncio.Event()


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    global cancelled
    calls.clear()
    cancelled = asyncio.Event()


@dataclass
@flow_type(name="TwoSteps")
class TwoSteps:
    label: str

    @step
    async def first(self) -> str:
        calls.append("first")
        return "first"

    @step
    async def second(self) -> str:
        calls.append("second")
        return "second"

    @flow
    async def run(self) -> str:
        return await self.first() + "+" + await self.second()


@dataclass
@flow_type(name="WaitsBesideAQuickStep")
class WaitsBesideAQuickStep:
    """A step that waits runs beside one that returns at once: its record is saved meanwhile."""

    label: str

    @step
    async def waits(self) -> str:
        calls.append("waits")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "waited"

    @step
    async def quick(self) -> str:
        calls.append("quick")
        return "quick"

    @flow
    async def run(self) -> str:
        waited, quick = await asyncio.gather(self.waits(), self.quick())
        return waited + "+" + quick


def saves_records_alone(change: Change) -> bool:
    """Whether ``change`` is a run's save of records alone, under its lease."""
    alone = not (change.writes or change.forget_failed)
    return change.held is not None and bool(change.records) and alone


@dataclass
@flow_type(name="FailsFirst")
class FailsFirst:
    label: str

    @flow(retry_policy=RetryPolicy(max_attempts=3, initial_interval=5))
    async def run(self) -> str:
        calls.append("run")
        raise ConnectionError("the first attempt fails")


class TakenOver(_Meanwhile):
    """Worker ``b`` takes the flow over just before worker ``a``'s first save of records alone.

    Args:
        storage: The storage.
        before: Which change of ``a`` the takeover comes before, if not its first save.
    """

    def __init__(
        self, storage: ExecutionLog, before: Callable[[Change], bool] = saves_records_alone
    ) -> None:
        super().__init__(storage, self._take_over)
        self._before = before
        self._waiting = True
        self._first: Change | None = None
        self.theirs: list[Invocation] = []
        """The record ``b`` stored at the position of the change's first record (if it has one)."""

    async def apply(self, change: Change) -> Applied:
        if self._waiting and self._before(change):
            self._waiting = False
            self._first = change
            return await super().apply(change)  # runs the takeover first
        return await self._storage.apply(change)

    async def _take_over(self) -> None:
        assert self._first is not None
        flow_id = self._first.held[0] if self._first.held else self._first.records[0].flow_id
        flow = await self._storage.get_flow(flow_id)
        assert flow is not None
        # b's clock is past a's lease: a's lease has run out in storage.
        request = ClaimRequest("b", [flow.flow_type], limit=1, lease_seconds=30.0, now=1e12)
        (run,) = await self._storage.claim(request)
        assert run.flow.lease_token is not None
        self.theirs = [mine.replace(result=b"b's result") for mine in self._first.records[:1]]
        held = (flow_id, run.flow.lease_token)
        assert (await self._storage.apply(Change(records=tuple(self.theirs), held=held))).complete


def lost_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The lines saying a run lost its lease (while it ran, or as it ended)."""
    lines = [r.getMessage() for r in caplog.records]
    return [line for line in lines if "lost its lease" in line or "lease lost" in line]


async def run_a(storage: TakenOver, flow: object) -> tuple[str, int]:
    """Schedule ``flow``, run worker ``a`` until idle; return the flow id and flows finished."""
    flow_id = await Scheduler(storage).schedule(flow)
    worker = Worker(storage, "a")
    worker.register(TwoSteps)
    worker.register(WaitsBesideAQuickStep)
    worker.register(FailsFirst)
    return flow_id, await asyncio.wait_for(worker.run_until_idle(), 30)


async def assert_held_by_b_with_its_record_alone(storage: TakenOver, flow_id: str) -> None:
    stored = await storage.get_flow(flow_id)
    assert stored is not None
    assert (stored.status, stored.lease_owner) == (TaskStatus.RUNNING, "b")
    assert await storage.load_invocations(flow_id) == storage.theirs


async def test_a_refused_save_stops_the_run_before_its_next_step(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture
) -> None:
    taken = TakenOver(storage)

    with caplog.at_level(logging.WARNING, logger="pyergon"):
        flow_id, finished = await run_a(taken, TwoSteps("x"))

    assert finished == 0
    assert calls == ["first"]  # the second step's body never started
    await assert_held_by_b_with_its_record_alone(taken, flow_id)
    (line,) = lost_lines(caplog)
    assert f"flow {flow_id!r} (TwoSteps) lost its lease and stopped" in line
    assert "storage refused a write of its records" in line


async def test_a_save_refused_in_the_background_cancels_the_running_step(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture
) -> None:
    taken = TakenOver(storage)

    with caplog.at_level(logging.WARNING, logger="pyergon"):
        flow_id, finished = await run_a(taken, WaitsBesideAQuickStep("x"))

    assert finished == 0
    assert cancelled.is_set()
    assert calls == ["waits", "quick"]
    await assert_held_by_b_with_its_record_alone(taken, flow_id)
    (line,) = lost_lines(caplog)
    assert f"flow {flow_id!r} (WaitsBesideAQuickStep) lost its lease and stopped" in line
    # Stopped by the refusal, not by a renewal that found the flow taken later on.
    assert "storage refused a write of its records" in line


async def test_a_run_ending_after_a_takeover_stores_nothing_of_its_end(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture
) -> None:
    taken = TakenOver(storage, before=lambda change: bool(change.writes))

    with caplog.at_level(logging.WARNING, logger="pyergon"):
        flow_id, _ = await run_a(taken, TwoSteps("x"))

    assert calls == ["first", "second"]
    first, *second = await taken.load_invocations(flow_id)
    assert first.name == "first" and second == taken.theirs  # a's second record is not stored
    stored = await taken.get_flow(flow_id)
    assert stored is not None
    assert (stored.status, stored.lease_owner) == (TaskStatus.RUNNING, "b")
    (line,) = lost_lines(caplog)
    assert f"flow {flow_id!r} (TwoSteps): lease lost before it could be set COMPLETE" in line


@pytest.mark.parametrize("before", ["reopening", "retry-timer"])
async def test_a_retry_planned_after_a_takeover_stores_nothing(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture, before: str
) -> None:
    def reopens(change: Change) -> bool:
        return change.held is not None and bool(change.forget_failed)

    taken = TakenOver(storage, reopens if before == "reopening" else saves_records_alone)

    with caplog.at_level(logging.WARNING, logger="pyergon"):
        flow_id, finished = await run_a(taken, FailsFirst("x"))

    assert (finished, calls) == (0, ["run"])
    await assert_held_by_b_with_its_record_alone(taken, flow_id)  # no retry timer of a's
    (line,) = lost_lines(caplog)
    assert "storage refused a write of its records" in line
