"""tqdm bars while ``session.wait`` waits: one per running step of the awaited flows.

tqdm is not a dependency, so a stand-in ``tqdm.auto`` module records what the bars show. The
flow runs in the test (a direct run, which beats for no worker), and its steps' progress comes
from a worker's heartbeat record that the test stores, as another process's worker would.
"""

from __future__ import annotations

import asyncio
import sys
import time
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from pyergon import flow, flow_type, step
from pyergon.core.records import StepProgress
from pyergon.core.workers import StepActivity, WorkerRecord
from pyergon.notebook import Session, _views_progress
from pyergon.storage.base import WorkerRegistry
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_worker

gates: dict[str, asyncio.Event] = {}


@dataclass
@flow_type
class Held:
    """A flow whose one step runs until the test opens its gate."""

    @step
    async def hold(self) -> str:
        gates["entered"].set()
        await gates["open"].wait()
        return "done"

    @flow
    async def run(self) -> str:
        return await self.hold()


class FakeBar:
    """Records what a ``tqdm.auto.tqdm`` bar would show."""

    made: ClassVar[list[FakeBar]] = []
    waiters: ClassVar[list[asyncio.Event]] = []

    def __init__(self, total: float | None = None, desc: str = "", leave: bool = True) -> None:
        self.total, self.desc, self.leave = total, desc, leave
        self.n: float = 0
        self.postfix = ""
        self.closed = False
        FakeBar.made.append(self)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def refresh(self) -> None:
        FakeBar.changed()

    def close(self) -> None:
        self.closed = True
        FakeBar.changed()

    @classmethod
    def changed(cls) -> None:
        waiters, cls.waiters = cls.waiters, []
        for waiter in waiters:
            waiter.set()


async def until(check: Callable[[], bool]) -> None:
    """Wait until the bars show what ``check`` looks for."""
    async with asyncio.timeout(10):
        while not check():
            changed = asyncio.Event()
            FakeBar.waiters.append(changed)
            await changed.wait()


@pytest.fixture
def fake_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("tqdm.auto")
    module.tqdm = FakeBar  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tqdm.auto", module)
    monkeypatch.setattr(_views_progress, "REFRESH_INTERVAL", 0.01)
    monkeypatch.setattr(FakeBar, "made", [])
    monkeypatch.setattr(FakeBar, "waiters", [])


@pytest.fixture
async def session() -> AsyncIterator[Session]:
    gates["open"], gates["entered"] = asyncio.Event(), asyncio.Event()
    session = Session(InMemoryExecutionLog())
    try:
        yield session
    finally:
        gates["open"].set()
        await session.close()


async def held(session: Session) -> asyncio.Future[Any]:
    """Run a ``Held`` flow (id ``held``) until its step waits at the gate."""
    running = asyncio.ensure_future(session.run(Held(), "held"))
    await gates["entered"].wait()
    return running


async def beat(storage: Any, worker: WorkerRecord, *activity: StepActivity) -> WorkerRecord:
    """Store the heartbeat of a worker running ``activity``, as its process would."""
    assert isinstance(storage, WorkerRegistry)
    now = time.time()
    beating = worker.beating(now, activity=activity)
    stored = await storage.get_worker(worker.worker_id)
    await storage.put_worker(beating, replacing=None if stored is None else stored.incarnation)
    return beating


@pytest.mark.usefixtures("fake_tqdm")
async def test_a_wait_shows_a_bar_per_running_step_that_reports_progress(
    session: Session,
) -> None:
    running = await held(session)
    flow_id = "held"
    other = make_worker("elsewhere", flow_types=("Held",), last_beat=time.time(), lease_seconds=60)
    started = time.time()
    other = await beat(
        session.storage,
        other,
        StepActivity(flow_id, "1", "hold", started, StepProgress(3, 10, "warming up")),
        StepActivity(flow_id, "2", "silent", started),  # no progress: no bar
        StepActivity("not-awaited", "1", "x", started, StepProgress(1, 2)),
    )

    waiting = asyncio.ensure_future(session.wait(flow_id, timeout=30))
    await until(lambda: bool(FakeBar.made) and FakeBar.made[0].n == 3)

    (bar,) = FakeBar.made
    assert (bar.desc, bar.total, bar.postfix, bar.leave) == ("held 1 hold", 10, "warming up", False)
    await beat(
        session.storage,
        other,
        StepActivity(flow_id, "1", "hold", started, StepProgress(7, 12, "nearly")),
    )
    await until(lambda: bar.n == 7)
    assert (bar.total, bar.postfix, bar.closed) == (12, "nearly", False)

    gates["open"].set()
    outcomes = await waiting

    assert outcomes[flow_id].result == "done"
    assert bar.closed
    assert len(FakeBar.made) == 1
    await running


@pytest.mark.usefixtures("fake_tqdm")
async def test_a_bar_closes_when_its_step_ends(session: Session) -> None:
    running = await held(session)
    flow_id = "held"
    other = make_worker("elsewhere", flow_types=("Held",), last_beat=time.time(), lease_seconds=60)
    other = await beat(
        session.storage, other, StepActivity(flow_id, "1", "hold", time.time(), StepProgress(1))
    )
    waiting = asyncio.ensure_future(session.wait(flow_id, timeout=30))
    await until(lambda: bool(FakeBar.made))

    await beat(session.storage, other)  # the step ended
    await until(lambda: FakeBar.made[0].closed)

    assert FakeBar.made[0].total is None  # a count without a total
    assert not waiting.done()
    gates["open"].set()
    await waiting
    await running


async def test_without_tqdm_a_wait_shows_nothing_and_returns(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # not installed
    running = await held(session)
    gates["open"].set()

    outcomes = await session.wait("held", timeout=30)

    assert _views_progress.tqdm_factory() is None
    assert outcomes["held"].result == "done"
    await running


@pytest.mark.usefixtures("fake_tqdm")
async def test_an_interrupted_wait_closes_its_bars(session: Session) -> None:
    running = await held(session)
    flow_id = "held"
    other = make_worker("elsewhere", flow_types=("Held",), last_beat=time.time(), lease_seconds=60)
    await beat(
        session.storage, other, StepActivity(flow_id, "1", "hold", time.time(), StepProgress(1, 2))
    )
    waiting = asyncio.ensure_future(session.wait(flow_id))
    await until(lambda: bool(FakeBar.made))

    waiting.cancel()

    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert FakeBar.made[0].closed
    gates["open"].set()
    assert (await running).result == "done"  # the flow itself went on
