"""cancel and fork while a real worker runs the flow, on every backend.

``test_operations.py`` covers a cancel that reaches a running flow; these cover the other side
of the race: the worker finishing between the manager's check and its write, and a fork
attempted while a worker holds the flow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import pytest

from pyergon import Scheduler, Worker, flow, flow_type, step
from pyergon.core import ScheduledFlow, TaskStatus
from pyergon.core.changes import Applied, Change, FlowWrite
from pyergon.core.status import InvocationStatus
from pyergon.errors import FlowStateError
from pyergon.management import FlowManager
from pyergon.storage.base import ExecutionLog
from pyergon.testing import make_flow, make_invocation
from tests.waiting import flow_reaches


@dataclass
class Gate:
    """Holds the flow's last step until released."""

    entered: asyncio.Event
    release: asyncio.Event


gates: dict[str, Gate] = {}


@dataclass
@flow_type(name="GatedFlow")
class Gated:
    label: str

    @step
    async def prepare(self) -> int:
        return len(self.label)

    @step
    async def finish(self, size: int) -> str:
        gate = gates[self.label]
        gate.entered.set()
        await gate.release.wait()
        return f"{self.label}:{size}"

    @flow
    async def run(self) -> str:
        return await self.finish(await self.prepare())


@asynccontextmanager
async def running_in_worker(storage: ExecutionLog, label: str) -> AsyncIterator[tuple[str, Gate]]:
    """A flow a worker runs, held inside its last step until the gate is released."""
    gate = gates[label] = Gate(asyncio.Event(), asyncio.Event())
    worker = Worker(storage, "w-race")
    await worker.register(Gated)
    handle = await worker.start()
    try:
        flow_id = await Scheduler(storage).schedule(Gated(label), flow_id=label)
        await asyncio.wait_for(gate.entered.wait(), 10)
        yield flow_id, gate
    finally:
        gate.release.set()
        await handle.shutdown()
        del gates[label]


class _FinishesFirst:
    """Storage on which something else happens just before a cancel request is stored.

    The cancel was decided on the flow as it was read; the change it applies then finds the
    flow moved on.
    """

    def __init__(self, storage: ExecutionLog, before_cancel: Callable[[], Awaitable[None]]) -> None:
        self._storage = storage
        self._before_cancel: Callable[[], Awaitable[None]] | None = before_cancel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def apply(self, change: Change) -> Applied:
        requests_cancel = any(write.changes.get("cancel_requested") for write in change.writes)
        if requests_cancel and self._before_cancel is not None:
            before_cancel, self._before_cancel = self._before_cancel, None
            await before_cancel()
        return await self._storage.apply(change)


async def test_a_flow_that_finishes_before_the_cancel_lands_stays_complete(
    storage: ExecutionLog,
) -> None:
    async with running_in_worker(storage, "late-cancel") as (flow_id, gate):

        async def worker_finishes() -> None:
            gate.release.set()
            await flow_reaches(storage, flow_id, TaskStatus.COMPLETE)

        racing = cast(ExecutionLog, _FinishesFirst(storage, worker_finishes))
        with pytest.raises(FlowStateError, match=r"finished \(COMPLETE\) before the cancel"):
            await FlowManager(racing).cancel(flow_id)
    final = await storage.get_flow(flow_id)
    assert final is not None
    assert final.status is TaskStatus.COMPLETE and not final.cancel_requested


async def test_fork_is_refused_while_a_worker_runs_the_flow_and_allowed_after(
    storage: ExecutionLog,
) -> None:
    manager = FlowManager(storage)
    async with running_in_worker(storage, "busy") as (flow_id, gate):
        with pytest.raises(FlowStateError, match="is running"):
            await manager.fork(flow_id, from_step=1, new_flow_id="busy-fork")
        assert await storage.get_flow("busy-fork") is None
        assert await storage.load_invocations("busy-fork") == []
        gate.release.set()
        await flow_reaches(storage, flow_id, TaskStatus.COMPLETE)
    fork_id = await manager.fork(flow_id, from_step=1, new_flow_id="busy-fork")
    records = await storage.load_invocations(fork_id)
    assert [(record.position, record.name) for record in records] == [("1", "prepare")]


class _MovesAfterRead:
    """Storage on which another run takes a flow just after the manager has read it."""

    def __init__(self, storage: ExecutionLog, after_read: Callable[[], Awaitable[None]]) -> None:
        self._storage = storage
        self._after_read: Callable[[], Awaitable[None]] | None = after_read

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        flow = await self._storage.get_flow(flow_id)
        if self._after_read is not None:
            after_read, self._after_read = self._after_read, None
            await after_read()
        return flow


async def test_a_retry_that_loses_the_race_leaves_the_records_of_the_new_run(
    storage: ExecutionLog,
) -> None:
    # The flow failed; another operator retried it and a worker runs it again, and that run's
    # step failed meanwhile: its failed record is the new run's, and must stay.
    await storage.create_flow(make_flow("p1", status=TaskStatus.FAILED))
    failed = make_invocation(1, flow_id="p1", status=InvocationStatus.FAILED, attempts=1)
    await storage.apply(Change(records=(failed,)))

    async def another_run_takes_it() -> None:
        await storage.apply(
            Change(writes=(FlowWrite("p1", {"status": TaskStatus.RUNNING, "attempt": 2}),))
        )

    racing = cast(ExecutionLog, _MovesAfterRead(storage, another_run_takes_it))
    with pytest.raises(FlowStateError, match="changed state meanwhile"):
        await FlowManager(racing).retry("p1")

    assert await storage.load_invocations("p1") == [failed]
    stored = await storage.get_flow("p1")
    assert stored is not None and stored.status is TaskStatus.RUNNING
