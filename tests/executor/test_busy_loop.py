"""An ``async def`` step that blocks the event loop is named, with the fix, once."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from pyergon import Scheduler, Worker, flow, flow_type, step
from pyergon.executor._watchdog import BusyStep
from pyergon.storage.memory import InMemoryExecutionLog

THRESHOLD = 0.2
BLOCK = THRESHOLD * 3


@dataclass
@flow_type(name="BusyAsync")
class BusyAsync:
    label: str

    @step
    async def crunch(self) -> str:
        time.sleep(BLOCK)  # noqa: ASYNC251 - the point: a step that blocks the loop
        return self.label

    @flow
    async def run(self) -> str:
        return await self.crunch()


@dataclass
@flow_type(name="BusyTimed")
class BusyTimed:
    @step(timeout=30)
    async def crunch_with_a_timeout(self) -> str:
        time.sleep(BLOCK)  # noqa: ASYNC251 - the point: a step that blocks the loop
        return "done"

    @flow
    async def run(self) -> str:
        return await self.crunch_with_a_timeout()


@dataclass
@flow_type(name="BusyThread")
class BusyThread:
    @step
    def crunch_in_a_thread(self) -> str:
        time.sleep(BLOCK)
        return "done"

    @flow
    async def run(self) -> str:
        return await self.crunch_in_a_thread()


async def run_flows(*flows: object) -> list[BusyStep]:
    """Run ``flows`` on one worker until it is idle; return what its ``on_busy`` was told."""
    storage = InMemoryExecutionLog()
    told: list[BusyStep] = []
    worker = Worker(storage, "busy", busy_loop_warning=THRESHOLD, on_busy=told.append)
    for flow_instance in flows:
        worker.register(type(flow_instance))
        await Scheduler(storage).schedule(flow_instance)
    await worker.run_until_idle()
    return told


def busy_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "pyergon.worker" and "blocked the event loop" in record.getMessage()
    ]


async def test_an_async_step_that_blocks_the_loop_is_named_once_with_the_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    told = await run_flows(BusyAsync("a"), BusyAsync("b"))

    [warning] = busy_warnings(caplog)  # two flows blocked it; one warning per step
    assert "async def step 'crunch' blocked the event loop for" in warning
    assert "(BusyAsync)" in warning and "worker busy" in warning
    assert "make it a `def` step; it then runs in a thread and the loop stays free" in warning
    [busy] = told
    assert (busy.flow_type, busy.step, busy.worker_id) == ("BusyAsync", "crunch", "busy")
    assert busy.flow_id in warning
    assert busy.seconds >= THRESHOLD


async def test_a_step_with_a_timeout_is_named_as_well(caplog: pytest.LogCaptureFixture) -> None:
    told = await run_flows(BusyTimed())

    assert [busy.step for busy in told] == ["crunch_with_a_timeout"]


async def test_a_def_step_doing_the_same_is_not_named(caplog: pytest.LogCaptureFixture) -> None:
    told = await run_flows(BusyThread())

    assert told == []
    assert busy_warnings(caplog) == []


async def test_the_warning_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    storage = InMemoryExecutionLog()
    worker = Worker(storage, "quiet", busy_loop_warning=None)
    worker.register(BusyAsync)
    await Scheduler(storage).schedule(BusyAsync("quiet"))

    await worker.run_until_idle()

    assert busy_warnings(caplog) == []


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "1"])
def test_a_threshold_that_is_not_a_positive_number_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="busy_loop_warning must be a finite number"):
        Worker(InMemoryExecutionLog(), "w", busy_loop_warning=value)  # type: ignore[arg-type]


async def test_the_watchdog_thread_ends_with_the_last_worker_of_its_loop() -> None:
    storage = InMemoryExecutionLog()
    worker = Worker(storage, "tidy", busy_loop_warning=THRESHOLD)
    worker.register(BusyThread)
    handle = await worker.start()
    [watchdog] = [t for t in threading.enumerate() if t.name == "pyergon-busy-loop-watchdog"]

    await handle.shutdown()
    watchdog.join(5)

    assert not watchdog.is_alive()
