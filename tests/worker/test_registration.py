"""Workers register under their id, beat, take over a dead incarnation and refuse a live one."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import pytest

from pyergon import Scheduler, Worker, flow, flow_type, step
from pyergon.core import ClaimRequest, TaskStatus
from pyergon.core.workers import WorkerState, worker_state
from pyergon.errors import WorkerIdInUseError
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_worker
from tests.waiting import flow_reaches, until


@flow_type
@dataclass
class Greet:
    name: str

    @step
    async def hello(self) -> str:
        return f"hello {self.name}"

    @flow
    async def run(self) -> str:
        return await self.hello()


def dead_pid() -> int:
    """The id of a process of this host that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_a_started_worker_is_recorded_and_signed_off_at_shutdown() -> None:
    storage = InMemoryExecutionLog()
    worker = Worker(storage, "w-1", lease_seconds=0.4)
    worker.register(Greet)

    handle = await worker.start()
    record = await storage.get_worker("w-1")
    await handle.shutdown()

    assert record is not None
    assert (record.host, record.pid, record.flow_types) == (
        socket.gethostname(),
        os.getpid(),
        ("Greet",),
    )
    assert (record.lease_seconds, record.stopped_at) == (0.4, None)
    stopped = await storage.get_worker("w-1")
    assert stopped is not None and stopped.incarnation == record.incarnation
    assert worker_state(stopped, time.time()) is WorkerState.STOPPED


async def test_beats_keep_the_record_fresh_while_the_worker_serves() -> None:
    storage = InMemoryExecutionLog()
    worker = Worker(storage, "w-1", lease_seconds=0.2)  # a beat every 0.05 s
    worker.register(Greet)
    handle = await worker.start()
    try:
        first = await storage.get_worker("w-1")
        assert first is not None

        async def beaten() -> bool:
            record = await storage.get_worker("w-1")
            return record is not None and record.last_beat > first.last_beat

        await until(beaten)
    finally:
        await handle.shutdown()


async def test_a_second_live_worker_with_the_same_id_is_refused() -> None:
    storage = InMemoryExecutionLog()
    first = Worker(storage, "same", lease_seconds=5.0)
    first.register(Greet)
    second = Worker(storage, "same", lease_seconds=5.0)
    second.register(Greet)
    handle = await first.start()
    try:
        with pytest.raises(
            WorkerIdInUseError, match=r"worker id 'same' is in use by a live process"
        ):
            await second.start()
        flow_id = await Scheduler(storage).schedule(Greet("a"))
        assert (await flow_reaches(storage, flow_id, TaskStatus.COMPLETE)).worker_id == "same"
    finally:
        await handle.shutdown()


async def held_by_a_killed_worker(
    storage: InMemoryExecutionLog, worker_id: str, **record: object
) -> str:
    """A flow RUNNING under a long lease of ``worker_id``, whose record says it beat just now."""
    flow_id = await Scheduler(storage).schedule(Greet("again"))
    request = ClaimRequest(worker_id, ["Greet"], limit=1, lease_seconds=3_600.0, now=time.time())
    [claimed] = await storage.claim(request)
    assert claimed.flow.flow_id == flow_id
    fields = {"host": socket.gethostname(), "last_beat": time.time(), "lease_seconds": 3_600.0}
    fields.update(record)
    await storage.put_worker(make_worker(worker_id, **fields), replacing=None)
    return flow_id


async def test_a_restarted_worker_takes_its_killed_incarnations_flows_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = InMemoryExecutionLog()
    flow_id = await held_by_a_killed_worker(storage, "w-1", pid=dead_pid())
    worker = Worker(storage, "w-1", lease_seconds=5.0)
    worker.register(Greet)

    with caplog.at_level(logging.WARNING, logger="pyergon"):
        handle = await worker.start()
        try:
            done = await flow_reaches(storage, flow_id, TaskStatus.COMPLETE)
        finally:
            await handle.shutdown()

    assert done.attempt == 1
    assert (done.lease_losses, done.last_lost_by) == (1, "w-1")
    assert any(
        "previous process" in line and "no longer runs; taking over" in line
        for line in caplog.messages
    )
    assert any("requeued 1 flow(s)" in line and repr(flow_id) in line for line in caplog.messages)


async def test_a_silent_incarnation_elsewhere_is_taken_over_after_its_lease() -> None:
    storage = InMemoryExecutionLog()
    flow_id = await held_by_a_killed_worker(
        storage, "w-1", host="another-host", lease_seconds=0.3, last_beat=time.time()
    )
    worker = Worker(storage, "w-1", lease_seconds=5.0)
    worker.register(Greet)

    started = time.monotonic()
    handle = await worker.start()
    try:
        await flow_reaches(storage, flow_id, TaskStatus.COMPLETE)
    finally:
        await handle.shutdown()

    assert time.monotonic() - started >= 0.25  # it waited for the old lease to pass


async def test_an_incarnation_elsewhere_that_keeps_beating_is_refused() -> None:
    storage = InMemoryExecutionLog()
    live = make_worker("w-1", host="another-host", lease_seconds=0.3, last_beat=time.time())
    await storage.put_worker(live, replacing=None)

    async def beat_forever() -> None:
        while True:
            await storage.beat(live.beating(time.time()), {}, lease_seconds=0.3, now=time.time())
            await asyncio.sleep(0.05)

    beating = asyncio.create_task(beat_forever())
    worker = Worker(storage, "w-1", lease_seconds=5.0)
    worker.register(Greet)
    try:
        with pytest.raises(WorkerIdInUseError, match="pid 4242 on another-host"):
            await worker.start()
    finally:
        beating.cancel()
    assert (await storage.get_worker("w-1")).incarnation == live.incarnation


async def test_a_worker_whose_id_was_taken_by_a_later_process_stops_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = InMemoryExecutionLog()
    worker = Worker(storage, "w-1", lease_seconds=0.2)
    worker.register(Greet)
    with caplog.at_level(logging.ERROR, logger="pyergon"):
        handle = await worker.start()
        mine = await storage.get_worker("w-1")
        assert mine is not None
        await storage.put_worker(
            replace(mine, incarnation="later", pid=1), replacing=mine.incarnation
        )

        async def stopped() -> bool:
            return not handle.running

        await until(stopped)
        await handle.shutdown()

    assert any("another process registered under this worker id" in m for m in caplog.messages)
    assert (await storage.get_worker("w-1")).incarnation == "later"  # its record is left alone
