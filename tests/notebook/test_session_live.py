"""A session's own workers show what runs at once: progress and output, fresher than a beat.

On the in-memory backend a worker beats from the loop every few seconds; the session asks its
workers directly, so a step that just started shows in the monitor, ``flows()`` and ``output``
before any beat stored it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

import pyergon
from pyergon import flow, flow_type, step
from pyergon.notebook import Session
from pyergon.storage.memory import InMemoryExecutionLog

gate = threading.Event()
inside = threading.Event()


@dataclass
@flow_type
class Held:
    @step
    def warm_up(self) -> int:
        print("warming up")
        return 1

    @step
    def hold(self, start: int) -> str:
        for number in pyergon.track(range(start, 4), message="holding"):
            print(f"row {number}")
        inside.set()
        assert gate.wait(10), "the test never let the step go"
        return "let go"

    @flow
    async def run(self) -> str:
        return await self.hold(await self.warm_up())


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


async def test_a_running_step_shows_at_once_with_its_progress_and_output(
    session: Session,
) -> None:
    await session.start_workers(Held, lease_seconds=60.0)  # beats 15 s apart: none in this test
    flow_id = await session.schedule(Held(), "held")
    assert await asyncio.to_thread(inside.wait, 10)

    frame = await session.flows()
    assert frame.set_index("flow_id").loc["held", "running_step"] == "hold"
    monitor = session.monitor(output=True)
    snapshot = await monitor.refresh()
    (running,) = snapshot.running
    assert running.activity.step == "hold" and running.output == ("row 1", "row 2", "row 3")
    assert running.activity.progress is not None
    assert running.activity.progress.describe() == "3/3 · holding"
    assert await session.output(flow_id, "hold") == "row 1\nrow 2\nrow 3\n"
    assert await session.output(flow_id, "warm_up") == "warming up\n"

    gate.set()
    outcome = (await session.wait(flow_id, timeout=10))[flow_id]
    assert outcome.result == "let go"
    assert await session.output(flow_id, "hold") == "row 1\nrow 2\nrow 3\n"  # now the record's
    assert (await monitor.refresh()).running == ()
