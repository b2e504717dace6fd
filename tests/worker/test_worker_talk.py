"""What a worker logs: one line per failure, retry, failed release and child nobody serves.

Each line names the worker, the flow id and type, and what happened. Lost leases are said in
one line too (see ``test_lease_clock.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import cast

import pytest

from pyergon import RetryPolicy, Scheduler, Worker, flow, flow_type, step
from pyergon.core import ScheduledFlow, TaskStatus
from pyergon.decorators import flow_type_name
from pyergon.errors import RetryableError, StorageError
from pyergon.executor._leases import LeaseWriter, release_quietly
from pyergon.storage._flows import HeldFlow
from pyergon.storage.base import ExecutionLog, WorkerRegistry
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_worker

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
    failures: int = 2

    @flow(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0))
    async def run(self) -> str:
        tries = attempt("flow")
        if tries <= self.failures:
            raise FlakyServiceError(f"try {tries} timed out")
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
@flow_type(name="TalkLabel")
class PrintLabel:
    sku: str

    @flow
    async def run(self) -> str:
        return f"label for {self.sku}"


@dataclass
@flow_type(name="TalkShipment")
class Shipment:
    sku: str

    @flow
    async def run(self) -> str:
        return await self.invoke(PrintLabel(self.sku)).result()


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "pyergon.worker" and record.levelno == level
    ]


async def drain(storage: ExecutionLog, *flow_classes: type) -> None:
    worker = Worker(storage, "w1")
    for flow_class in flow_classes:
        worker.register(flow_class)
    await worker.run_until_idle(wait_for_timers=False)


async def run_logged(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture, flow: object, *served: type
) -> str:
    """Schedule ``flow``, run it on a worker serving ``served`` (its own type if none) at INFO."""
    flow_id = await Scheduler(storage).schedule(flow)
    with caplog.at_level(logging.INFO, logger="pyergon"):
        await drain(storage, *(served or (type(flow),)))
    return flow_id


RETRY_ONE = "FlakyServiceError: try 1 timed out; retry as attempt 2 in 0 s"
RETRY_TWO = "FlakyServiceError: try 2 timed out; retry as attempt 3 in 0 s"


@pytest.mark.parametrize(
    ("flow", "said"),
    [
        pytest.param(
            Broken("red-shoe"),
            ["failed on attempt 1: OutOfStockError: no red-shoe in any warehouse"],
            id="a failure, on one line",
        ),
        pytest.param(
            FlakyFlow("x"),
            [f"attempt 1 failed: {RETRY_ONE}", f"attempt 2 failed: {RETRY_TWO}"],
            id="each flow retry",
        ),
        pytest.param(
            FlakyStep("x"),
            [
                "step 'call' attempt 1 failed: FlakyServiceError: connection reset; retry as "
                "attempt 2 in 0 s"
            ],
            id="each step retry",
        ),
    ],
)
async def test_failures_and_retries_are_warnings_naming_flow_type_error_attempt_and_next_try(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture, flow: object, said: list[str]
) -> None:
    flow_id = await run_logged(storage, caplog, flow)

    named = f"worker w1: flow {flow_id!r} ({flow_type_name(type(flow))})"
    assert lines(caplog) == [f"{named} {line}" for line in said]
    finished = [] if isinstance(flow, Broken) else [f"{named} completed"]
    assert lines(caplog, logging.INFO) == finished


async def test_completions_are_info_lines_only(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture
) -> None:
    await Scheduler(storage).schedule(PrintLabel("a"))
    with caplog.at_level(logging.WARNING, logger="pyergon"):
        await drain(storage, PrintLabel)
    assert caplog.records == []

    flow_id = await run_logged(storage, caplog, PrintLabel("b"))

    assert lines(caplog, logging.INFO) == [f"worker w1: flow {flow_id!r} (TalkLabel) completed"]


async def test_a_child_of_a_type_no_worker_here_serves_is_one_warning(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture
) -> None:
    parent_id = await run_logged(storage, caplog, Shipment("sku-4"))

    (line,) = lines(caplog)
    assert line.startswith(f"worker w1: flow {parent_id!r} (TalkShipment) waits on child ")
    assert "of type TalkLabel, which no live worker serves" in line


async def test_a_child_served_by_a_live_worker_of_another_process_is_not_reported(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(storage, WorkerRegistry)
    elsewhere = make_worker(
        "far", host="elsewhere", flow_types=("TalkLabel",), last_beat=time.time()
    )
    await storage.put_worker(elsewhere, replacing=None)

    await run_logged(storage, caplog, Shipment("sku-5"))

    assert lines(caplog) == []


async def test_a_child_served_by_this_worker_or_another_here_is_not_reported(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture
) -> None:
    first = await run_logged(storage, caplog, Shipment("sku-1"), Shipment, PrintLabel)
    assert (await Scheduler(storage).wait(first, timeout=5))[first].result == "label for sku-1"

    other = Worker(storage, "w2")
    other.register(PrintLabel)
    handle = await other.start()
    try:
        await run_logged(storage, caplog, Shipment("sku-2"))
    finally:
        await handle.shutdown()

    assert lines(caplog) == []


class UnreleasableWriter:
    """A lease writer whose storage is gone when the run gives its flow back."""

    def __init__(self, flow: ScheduledFlow) -> None:
        self.held = HeldFlow(InMemoryExecutionLog(), flow, "token")

    async def give_back(self, wake_at: float | None, error: object) -> None:
        raise StorageError("the server went away")


async def test_a_release_that_fails_is_one_warning_naming_the_flow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flow = ScheduledFlow("order-7", "TalkShipment", b"", TaskStatus.RUNNING, 0.0, 0.0)

    with caplog.at_level(logging.WARNING, logger="pyergon"):
        await release_quietly(cast(LeaseWriter, UnreleasableWriter(flow)), "cancelled")

    assert lines(caplog) == [
        "could not release cancelled flow 'order-7' (TalkShipment); its lease will expire: "
        "the server went away"
    ]
