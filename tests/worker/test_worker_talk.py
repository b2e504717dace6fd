"""What a worker logs: one line per failure, retry and child nobody serves; completions at info.

Each line names the worker, the flow id and type, and what happened. Lost leases are said in
one line too (see ``test_lease_clock.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from pyergon import RetryPolicy, Scheduler, Worker, flow, flow_type, step
from pyergon.errors import RetryableError
from pyergon.storage.base import ExecutionLog

attempts: dict[str, int] = {}


@pytest.fixture(autouse=True)
def fresh_attempts() -> None:
    attempts.clear()


def attempt(name: str) -> int:
    attempts[name] = attempts.get(name, 0) + 1
    return attempts[name]


class OutOfStockError(Exception):
    """Not worth retrying."""


class FlakyServiceError(RetryableError):
    """Worth another try."""


@dataclass
@flow_type(name="TalkBroken")
class Broken:
    sku: str

    @flow
    async def run(self) -> str:
        raise OutOfStockError(f"no {self.sku}\nin any warehouse")


@dataclass
@flow_type(name="TalkFlaky")
class FlakyFlow:
    label: str

    @flow(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0))
    async def run(self) -> str:
        if attempt("flow") < 3:
            raise FlakyServiceError(f"try {attempts['flow']} timed out")
        return "done"


@dataclass
@flow_type(name="TalkFlakyStep")
class FlakyStep:
    label: str

    @step(retry_policy=RetryPolicy(max_attempts=2, initial_interval=0))
    async def call(self) -> str:
        if attempt("step") == 1:
            raise FlakyServiceError("connection reset")
        return "called"

    @flow
    async def run(self) -> str:
        return await self.call()


@dataclass
@flow_type(name="TalkChild")
class Child:
    n: int

    @flow
    async def run(self) -> int:
        return self.n * 2


@dataclass
@flow_type(name="TalkParent")
class Parent:
    n: int

    @flow
    async def run(self) -> int:
        return await self.invoke(Child(self.n)).result()


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "pyergon.worker" and record.levelno == level
    ]


async def drain(storage: ExecutionLog, *flow_classes: type, worker_id: str = "w1") -> Worker:
    worker = Worker(storage, worker_id)
    for flow_class in flow_classes:
        worker.register(flow_class)
    await worker.run_until_idle(wait_for_timers=False)
    return worker


async def test_a_failed_flow_is_one_warning_naming_it_its_type_error_and_attempt(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture
) -> None:
    flow_id = await Scheduler(storage).schedule(Broken("red-shoe"))

    with caplog.at_level(logging.INFO, logger="pyergon"):
        await drain(storage, Broken)

    assert lines(caplog) == [
        f"worker w1: flow {flow_id!r} (TalkBroken) failed on attempt 1: "
        "OutOfStockError: no red-shoe in any warehouse"
    ]
    assert lines(caplog, logging.INFO) == []


async def test_each_flow_retry_is_one_warning_with_the_next_attempt(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture
) -> None:
    flow_id = await Scheduler(storage).schedule(FlakyFlow("x"))

    with caplog.at_level(logging.INFO, logger="pyergon"):
        await drain(storage, FlakyFlow)

    named = f"worker w1: flow {flow_id!r} (TalkFlaky)"
    assert lines(caplog) == [
        f"{named} attempt 1 failed: FlakyServiceError: try 1 timed out; retry as attempt 2 in 0 s",
        f"{named} attempt 2 failed: FlakyServiceError: try 2 timed out; retry as attempt 3 in 0 s",
    ]
    assert lines(caplog, logging.INFO) == [f"{named} completed"]


async def test_each_step_retry_is_one_warning_naming_the_step(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture
) -> None:
    flow_id = await Scheduler(storage).schedule(FlakyStep("x"))

    with caplog.at_level(logging.WARNING, logger="pyergon"):
        await drain(storage, FlakyStep)

    assert lines(caplog) == [
        f"worker w1: flow {flow_id!r} (TalkFlakyStep) step 'call' attempt 1 failed: "
        "FlakyServiceError: connection reset; retry as attempt 2 in 0 s"
    ]


async def test_completions_are_info_lines_only(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = Scheduler(storage)
    flow_ids = [await scheduler.schedule(Child(n)) for n in (1, 2)]

    with caplog.at_level(logging.WARNING, logger="pyergon"):
        await drain(storage, Child)
    assert lines(caplog) == lines(caplog, logging.INFO) == []

    more = await scheduler.schedule(Child(3))
    with caplog.at_level(logging.INFO, logger="pyergon"):
        await drain(storage, Child)
    assert lines(caplog, logging.INFO) == [f"worker w1: flow {more!r} (TalkChild) completed"]
    assert more not in flow_ids


async def test_a_child_of_a_type_no_worker_here_serves_is_one_warning(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture
) -> None:
    parent_id = await Scheduler(storage).schedule(Parent(4))

    with caplog.at_level(logging.WARNING, logger="pyergon"):
        await drain(storage, Parent)

    (line,) = lines(caplog)
    assert line.startswith(f"worker w1: flow {parent_id!r} (TalkParent) waits on child ")
    assert "of type TalkChild, which no worker in this process serves" in line


async def test_a_child_served_by_this_worker_or_another_here_is_not_reported(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = Scheduler(storage)
    first = await scheduler.schedule(Parent(1))
    with caplog.at_level(logging.WARNING, logger="pyergon"):
        await drain(storage, Parent, Child)
    assert (await scheduler.wait(first, timeout=5))[first].result == 2

    other = Worker(storage, "w2")
    other.register(Child)
    handle = await other.start()
    try:
        second = await scheduler.schedule(Parent(2))
        with caplog.at_level(logging.WARNING, logger="pyergon"):
            await drain(storage, Parent)
    finally:
        await handle.shutdown()

    assert lines(caplog) == []
    assert second != first
