"""A session's timeline and histories: its own workers' running steps at once, the newest
flows of several types without a walk through storage, and statuses named in any case.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

import pyergon
from pyergon import flow, flow_type, step
from pyergon.core.query import FlowQuery
from pyergon.core.records import ScheduledFlow
from pyergon.core.status import TaskStatus
from pyergon.notebook import Session
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_flow

gate = threading.Event()
inside = threading.Event()


@dataclass
@flow_type
class Slow:
    @step
    def crunch(self) -> str:
        for _ in pyergon.track(range(11), total=30, message="rows"):
            pass
        inside.set()
        assert gate.wait(10), "the test never let the step go"
        return "crunched"

    @flow
    async def run(self) -> str:
        return await self.crunch()


@pytest.fixture
async def session() -> AsyncIterator[Session]:
    gate.clear()
    inside.clear()
    session = Session(InMemoryExecutionLog())
    try:
        yield session
    finally:
        gate.set()
        await session.close()


async def test_a_step_running_in_this_session_shows_at_once_in_its_timeline_and_history(
    session: Session,
) -> None:
    await session.start_workers(Slow, lease_seconds=60.0)  # beats 15 s apart: none in this test
    flow_id = await session.schedule(Slow(), "a")
    assert await asyncio.to_thread(inside.wait, 10)

    timeline = await session.timeline([flow_id])
    history = await session.history(flow_id)

    crunch = [line.split() for line in timeline.text().splitlines() if "crunch" in line]
    assert crunch == [["1", "STEP", "crunch", "PENDING", "running", "11/30", "·", "rows"]]
    assert [
        (each.step, str(each.progress and each.progress.describe())) for each in history.running
    ] == [("crunch", "11/30 · rows")]
    gate.set()
    await session.wait(flow_id, timeout=10)


class CountingLog(InMemoryExecutionLog):
    """In-memory storage that counts the flows its listings return."""

    def __init__(self) -> None:
        super().__init__()
        self.listed = 0

    async def list_flows(self, query: FlowQuery | None = None) -> list[ScheduledFlow]:
        page = await super().list_flows(query)
        self.listed += len(page)
        return page


async def test_the_newest_flows_of_several_types_are_read_without_walking_storage() -> None:
    storage = CountingLog()
    for number in range(1_500):
        await storage.create_flow(make_flow(f"other-{number:04}", flow_type="Other"))
    created = {"a-1": 1_001.0, "b-1": 1_002.0, "a-2": 1_003.0, "b-2": 1_003.0, "a-3": 1_000.0}
    for flow_id, at in created.items():
        kind = "Refund" if flow_id.startswith("b") else "Order"
        await storage.create_flow(make_flow(flow_id, flow_type=kind, created_at=at + 10))
    session = Session(storage)
    try:
        storage.listed = 0
        timeline = await session.timeline(newest=3, flow_type=["Order", "Refund", "Order"])
        listed = storage.listed
        none = await session.timeline(newest=0, flow_type=["Order", "Refund"])
    finally:
        await session.close()

    assert timeline.flow_ids == ("b-1", "a-2", "b-2")  # oldest first; a tie by id
    assert listed <= 6  # at most three of each type, not 1,500 others
    assert none.flow_ids == ()


async def test_a_status_is_named_in_any_case_and_a_wrong_one_says_which_exist() -> None:
    storage = InMemoryExecutionLog()
    await storage.create_flow(make_flow("broken", status=TaskStatus.FAILED))
    await storage.create_flow(make_flow("fine", status=TaskStatus.COMPLETE))
    session = Session(storage)
    try:
        frame = await session.flows(status=["failed", "Complete"])
        timeline = await session.timeline(status=["failed"])
        with pytest.raises(ValueError) as from_flows:
            await session.flows(status="done")
        with pytest.raises(ValueError) as from_timeline:
            await session.timeline(status=["done"])
    finally:
        await session.close()

    assert sorted(frame["flow_id"]) == ["broken", "fine"]
    assert timeline.flow_ids == ("broken",)
    message = (
        "unknown status 'done'; valid: PENDING, RUNNING, SUSPENDED, COMPLETE, FAILED, CANCELLED"
    )
    assert str(from_flows.value) == str(from_timeline.value) == message


async def test_a_session_timeline_with_no_flow_of_the_status_asked_says_why_it_is_empty() -> None:
    storage = InMemoryExecutionLog()
    await storage.create_flow(make_flow("fine", status=TaskStatus.COMPLETE))
    session = Session(storage)
    try:
        timeline = await session.timeline(status="failed")
    finally:
        await session.close()

    assert timeline.text() == (
        "Timeline of 0 flows (status FAILED)\nno flows to show: no flow has status FAILED"
    )
    assert "no flows to show: no flow has status FAILED" in timeline.svg()
