"""What a monitor shows of its flows: a bounded table, failures, throughput, ETA and workers."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Collection

import pytest

from pyergon.clock import ManualClock
from pyergon.core.changes import Change
from pyergon.core.query import FlowQuery
from pyergon.core.records import Invocation, ScheduledFlow, StepProgress, StoredError
from pyergon.core.status import TaskStatus
from pyergon.core.workers import StepActivity
from pyergon.notebook import Session
from pyergon.storage.base import WorkerRegistry
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_flow, make_invocation, make_worker

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
        self.records_read: list[str] = []

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

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        self.records_read.append(flow_id)
        return await super().load_invocations(flow_id)

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
    return StoredError("builtins.ValueError", message)  # as a worker stores it


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


async def test_the_last_errors_are_the_newest_failed_flows_in_scope_and_the_rest_counted(
    session: Session,
) -> None:
    for index in range(5):
        await started(
            session, f"failed-{index}", index, status=TaskStatus.FAILED, error=failure(f"#{index}")
        )
    await started(session, "hostile", 9, status=TaskStatus.FAILED, error=failure(HOSTILE))

    monitor = await session.monitor()

    lines = repr(monitor).splitlines()
    start = lines.index("  failed flows: 6, newest first:")
    assert lines[start + 1 : start + 5] == [
        f"    hostile (Order): ValueError: {HOSTILE}",
        "    failed-4 (Order): ValueError: #4",
        "    failed-3 (Order): ValueError: #3",
        "    … 3 more failed flows",
    ]
    page = monitor._repr_html_()
    assert "6 failed flow(s), newest first" in page
    failures = page[page.index('<ul class="pyergon-failures">') :].split("</ul>")[0]
    assert failures.count("<li><code>") == 3
    assert "<li>… 3 more failed flows</li>" in failures
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


async def test_a_refresh_reads_counts_and_a_few_pages_however_many_flows(
    session: Session,
) -> None:
    for index in range(600):
        status = (TaskStatus.COMPLETE, TaskStatus.RUNNING, TaskStatus.FAILED)[index % 3]
        await started(session, f"flow-{index:03}", index, status=status)
    storage = session.storage
    assert isinstance(storage, RecordingLog)

    snapshot = await (await session.monitor()).refresh()

    assert snapshot.total == 600
    assert storage.count_scopes == [OPENED] * 2  # one count per refresh
    assert storage.flows_read == 0  # no flow read one by one
    assert max(storage.pages) <= 100
    assert sum(storage.pages) <= 2 * (20 + 20 + 100)


async def test_a_refresh_of_a_few_chosen_flows_reads_them_once(session: Session) -> None:
    ids = [f"flow-{index:02}" for index in range(60)]
    for index, flow_id in enumerate(ids):
        status = (TaskStatus.COMPLETE, TaskStatus.RUNNING, TaskStatus.FAILED)[index % 3]
        await started(session, flow_id, index, status=status)
    storage = session.storage
    assert isinstance(storage, RecordingLog)

    monitor = await session.monitor([*ids, "ghost"])
    snapshot = await monitor.refresh()

    assert storage.pages == [60, 60]  # one read of the chosen flows per refresh, no count
    assert storage.count_scopes == [] and storage.flows_read == 0
    assert (snapshot.total, snapshot.counts[TaskStatus.RUNNING], snapshot.final) == (60, 20, 40)
    assert snapshot.missing == ("ghost",)
    assert table(repr(monitor))[:2] == ["flow-58", "flow-55"]  # running first
    assert table(repr(monitor))[-1] == "… 40 more"
    assert [failure.flow_id for failure in snapshot.failures] == ["flow-59", "flow-56", "flow-53"]


@pytest.mark.parametrize("running", [0, 5, 30])
async def test_a_refresh_of_many_flows_reads_a_count_and_three_pages(
    session: Session, running: int
) -> None:
    ids = [f"flow-{index:03}" for index in range(300)]
    for index, flow_id in enumerate(ids):
        status = TaskStatus.RUNNING if index < running else TaskStatus.COMPLETE
        status = TaskStatus.FAILED if index in (150, 299) else status
        await started(session, flow_id, index, status=status)
    storage = session.storage
    assert isinstance(storage, RecordingLog)

    monitor = await session.monitor(ids)

    assert len(storage.count_scopes) == 1 and len(storage.pages) == 3
    running_ids = [f"flow-{index:03}" for index in range(running - 1, -1, -1)]
    done = [f"flow-{index:03}" for index in range(298, running - 1, -1) if index != 150]
    rows = [*running_ids[:20], "flow-299", "flow-150", *done][:20]
    assert table(repr(monitor)) == [*rows, "… 280 more"]


async def a_worker_runs(
    session: Session, *activity: StepActivity, replacing: str | None = None
) -> None:
    """Store a live worker of another process whose last heartbeat says it runs ``activity``."""
    now = time.time()
    worker = make_worker("elsewhere", flow_types=("Crunch",), last_beat=now, lease_seconds=3600)
    storage = session.storage
    assert isinstance(storage, WorkerRegistry)
    stored = await storage.put_worker(worker.beating(now, activity=activity), replacing=replacing)
    assert stored


def running_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("  running steps"))
    return [lines[start], *(line for line in lines[start + 1 :] if line.startswith("    "))]


async def test_running_steps_are_those_of_the_flows_in_scope(session: Session) -> None:
    await started(session, "mine", 1, status=TaskStatus.RUNNING, flow_type="Crunch")
    await started(session, "other-type", 2, status=TaskStatus.RUNNING, flow_type="Order")
    await session.storage.create_flow(
        make_flow("before", status=TaskStatus.RUNNING, flow_type="Crunch", created_at=OPENED - 9)
    )
    now = time.time()
    await a_worker_runs(
        session,
        StepActivity("mine", "1", "crunch", now - 3, StepProgress(1, 2)),
        StepActivity("other-type", "1", "ship", now - 2),
        StepActivity("before", "1", "crunch", now - 1),
    )

    chosen = await session.monitor(["other-type"])
    of_type = await session.monitor(flow_type="Crunch")
    since_opened = await session.monitor()
    everything = await session.monitor(all_flows=True)

    assert running_lines(repr(chosen)) == ["  running steps: 1", "    other-type 1 ship"]
    assert running_lines(repr(of_type)) == ["  running steps: 1", "    mine 1 crunch: 1/2"]
    assert running_lines(repr(since_opened)) == [
        "  running steps: 2",
        "    mine 1 crunch: 1/2",
        "    other-type 1 ship",
    ]
    assert running_lines(repr(everything))[0] == "  running steps: 3"
    assert "<code>before</code>" not in since_opened._repr_html_()


async def test_the_eta_leaves_suspended_flows_out_and_says_so(
    session: Session, clock: ManualClock
) -> None:
    for index in range(3):
        await started(session, f"asleep-{index}", index, status=TaskStatus.SUSPENDED)
    for index in range(8):
        await started(session, f"waiting-{index}", 10 + index)
    monitor = await session.monitor()
    clock.advance(2)
    for index in range(4):
        await started(session, f"done-{index}", 20 + index, status=TaskStatus.COMPLETE)

    snapshot = await monitor.refresh()

    assert (snapshot.throughput, snapshot.eta) == (2.0, 4.0)  # 8 to run, not 11
    assert "  throughput 2.00 flows/s, ETA 4s (3 suspended left out)" in repr(monitor)
    assert "ETA 4s (3 suspended left out)" in monitor._repr_html_()


async def test_with_only_suspended_flows_left_none_is_to_run(session: Session) -> None:
    await started(session, "asleep", 1, status=TaskStatus.SUSPENDED)
    await started(session, "done", 2, status=TaskStatus.COMPLETE)

    monitor = await session.monitor()

    assert "  throughput \u2014, none to run, 1 suspended" in repr(monitor).splitlines()


async def test_a_step_s_stored_output_is_read_once_per_attempt(session: Session) -> None:
    await started(session, "busy", 1, status=TaskStatus.RUNNING, flow_type="Crunch")
    retried = make_invocation(3, flow_id="busy", name="crunch", attempts=1, output="earlier\n")
    await session.storage.apply(Change(records=(retried,)))
    now = time.time()
    await a_worker_runs(session, StepActivity("busy", "3", "crunch", now - 5))
    storage = session.storage
    assert isinstance(storage, RecordingLog)

    monitor = await session.monitor(output=True)
    await monitor.refresh()
    await monitor.refresh()
    again = StepActivity("busy", "3", "crunch", now)  # a new attempt
    await a_worker_runs(session, again, replacing="elsewhere-first")
    await monitor.refresh()

    assert storage.records_read == ["busy", "busy"]  # once per attempt, not per refresh
    assert "      | earlier" in repr(monitor).splitlines()
