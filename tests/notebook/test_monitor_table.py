"""What a monitor shows of its flows: a bounded table, failures, throughput, ETA and workers."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Collection

import pytest

from pyergon.clock import ManualClock
from pyergon.core.query import FlowQuery
from pyergon.core.records import ScheduledFlow, StepProgress, StoredError
from pyergon.core.status import TaskStatus
from pyergon.core.workers import StepActivity
from pyergon.notebook import Session
from pyergon.storage.base import WorkerRegistry
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_flow, make_worker

OPENED = 1_700_000_000.0
HOSTILE = "<script>alert('pwned')</script>"


class RecordingLog(InMemoryExecutionLog):
    """In-memory storage that records what the monitor reads of it."""

    def __init__(self) -> None:
        super().__init__()
        self.pages: list[int] = []
        """How many flows each listing returned."""
        self.count_scopes: list[float | None] = []
        self.flows_read = 0

    async def list_flows(self, query: FlowQuery | None = None) -> list[ScheduledFlow]:
        page = await super().list_flows(query)
        self.pages.append(len(page))
        return page

    async def count_flows(
        self,
        *,
        flow_type: str | None = None,
        created_after: float | None = None,
        flow_ids: Collection[str] | None = None,
    ) -> dict[TaskStatus, int]:
        self.count_scopes.append(created_after)
        return await super().count_flows(
            flow_type=flow_type, created_after=created_after, flow_ids=flow_ids
        )

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        self.flows_read += 1
        return await super().get_flow(flow_id)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(OPENED)


@pytest.fixture
async def session(clock: ManualClock) -> AsyncIterator[Session]:
    session = Session(RecordingLog(), clock=clock)
    try:
        yield session
    finally:
        await session.close()


async def started(session: Session, flow_id: str, at: float, **fields: object) -> None:
    """Store a flow created ``at`` seconds after the session opened."""
    await session.storage.create_flow(make_flow(flow_id, created_at=OPENED + at, **fields))


def failure(message: str) -> StoredError:
    return StoredError("ValueError", message)


def table(text: str) -> list[str]:
    """The flow ids of the monitor's table, in its order, and its ``… N more`` line."""
    rows = []
    for line in text.splitlines():
        if line.startswith("    … ") and line.endswith("more"):
            rows.append(line.strip())
            break
        if re.match(r"    \S+ \(\w+\) [A-Z]+", line):
            rows.append(line.split()[0])
    return rows


async def test_the_table_lists_running_then_failed_then_the_newest_flows(
    session: Session,
) -> None:
    for index in range(30):
        await started(session, f"done-{index:02}", 10 + index, status=TaskStatus.COMPLETE)
    await started(session, "failed-early", 1, status=TaskStatus.FAILED, error=failure("one"))
    await started(session, "failed-late", 2, status=TaskStatus.FAILED, error=failure("two"))
    await started(session, "running", 3, status=TaskStatus.RUNNING)

    monitor = await session.monitor()

    assert table(repr(monitor)) == [
        "running",
        "failed-late",
        "failed-early",
        *(f"done-{index:02}" for index in range(29, 12, -1)),
        "… 13 more",
    ]
    page = monitor._repr_html_()
    flows = page[page.index('<table class="pyergon-flows">') :].split("</table>")[0]
    assert flows.count("<tr><td>") == 20
    assert "<th>age</th>" in flows


async def test_a_running_flow_shows_its_current_step_and_progress(session: Session) -> None:
    await started(session, "crunching", 1, status=TaskStatus.RUNNING, flow_type="Crunch")
    storage = session.storage
    assert isinstance(storage, WorkerRegistry)
    now = time.time()
    worker = make_worker("elsewhere", flow_types=("Crunch",), last_beat=now, lease_seconds=3600)
    activity = (
        StepActivity("crunching", "2", "load", now - 5),
        StepActivity("crunching", "3", "crunch", now - 1, StepProgress(37, 100, "rows")),
    )
    await storage.put_worker(worker.beating(now, activity=activity), replacing=None)

    monitor = await session.monitor()

    assert "    crunching (Crunch) RUNNING at 3 crunch +1: 37/100 · rows" in repr(monitor)
    assert "  worker elsewhere: live, running 1, serves Crunch, heartbeat ok" in repr(monitor)
    assert "width:37.0%" in monitor._repr_html_()


async def test_the_last_errors_are_the_newest_failed_flows_in_scope(session: Session) -> None:
    for index in range(5):
        await started(
            session, f"failed-{index}", index, status=TaskStatus.FAILED, error=failure(f"#{index}")
        )
    await started(session, "hostile", 9, status=TaskStatus.FAILED, error=failure(HOSTILE))

    monitor = await session.monitor()

    lines = repr(monitor).splitlines()
    start = lines.index("  failed flows: 6, newest first:")
    assert lines[start + 1 : start + 4] == [
        f"    hostile (Order): ValueError: {HOSTILE}",
        "    failed-4 (Order): ValueError: #4",
        "    failed-3 (Order): ValueError: #3",
    ]
    page = monitor._repr_html_()
    assert "6 failed flow(s), newest first" in page
    assert "<script" not in page and "&lt;script&gt;" in page


async def test_throughput_and_eta_come_from_successive_refreshes(
    session: Session, clock: ManualClock
) -> None:
    for index in range(8):
        await started(session, f"waiting-{index}", index)
    monitor = await session.monitor()
    first = monitor.snapshot
    assert first is not None and (first.throughput, first.eta) == (None, None)
    assert "  throughput \u2014, ETA \u2014" in repr(monitor).splitlines()

    clock.advance(2)
    for index in range(4):
        await started(session, f"done-{index}", 10 + index, status=TaskStatus.COMPLETE)
    second = await monitor.refresh()

    assert (second.throughput, second.eta) == (2.0, 4.0)  # 4 final in 2 s; 8 unfinished
    assert "  throughput 2.00 flows/s, ETA 4s" in repr(monitor).splitlines()
    assert "throughput 2.00 flows/s, ETA 4s" in monitor._repr_html_()

    clock.advance(2)
    third = await monitor.refresh()
    assert (third.throughput, third.eta) == (1.0, 8.0)  # none since: the rate falls


async def test_workers_storage_knows_show_live_or_dead(session: Session) -> None:
    storage = session.storage
    assert isinstance(storage, WorkerRegistry)
    now = time.time()
    await storage.put_worker(make_worker("gone", last_beat=now - 600), replacing=None)
    await storage.put_worker(
        make_worker("alive", flow_types=("Order",), last_beat=now, lease_seconds=60),
        replacing=None,
    )

    monitor = await session.monitor()

    lines = repr(monitor).splitlines()
    workers = [line for line in lines if line.startswith("  worker ")]
    assert workers == [
        "  worker alive: live, running 0, serves Order, heartbeat ok",
        "  worker gone: dead, serves Order, Refund",
    ]
    page = monitor._repr_html_()
    assert "<td>alive</td><td>live</td>" in page and "<td>gone</td><td>dead</td>" in page


@pytest.mark.parametrize("chosen", [False, True], ids=["session", "chosen-ids"])
async def test_a_refresh_reads_counts_and_a_few_pages_however_many_flows(
    session: Session, chosen: bool
) -> None:
    ids = [f"flow-{index:03}" for index in range(600)]
    for index, flow_id in enumerate(ids):
        status = (TaskStatus.COMPLETE, TaskStatus.RUNNING, TaskStatus.FAILED)[index % 3]
        await started(session, flow_id, index, status=status)
    storage = session.storage
    assert isinstance(storage, RecordingLog)

    snapshot = await (await (session.monitor(ids) if chosen else session.monitor())).refresh()

    assert snapshot.total == 600
    assert len(storage.count_scopes) == 2  # one count per refresh
    assert storage.count_scopes == [None if chosen else OPENED] * 2
    assert storage.flows_read == 0  # no flow read one by one
    assert max(storage.pages) <= 100
    assert sum(storage.pages) <= 2 * (20 + 20 + 100)
