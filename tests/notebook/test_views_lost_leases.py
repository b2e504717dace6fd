"""A flow whose worker lost its lease says so in every notebook view: timeline, history, monitor."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from pyergon import flow, flow_type
from pyergon.core import ClaimRequest
from pyergon.notebook import Session
from pyergon.notebook.views import timeline_from_histories
from pyergon.storage.memory import InMemoryExecutionLog

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert('pwned')</script>"


@dataclass
@flow_type(name="Receipt")
class Receipt:
    n: int

    @flow
    async def run(self) -> int:
        return self.n


@pytest.fixture
async def session() -> AsyncIterator[Session]:
    session = Session(InMemoryExecutionLog())
    try:
        yield session
    finally:
        await session.close()


async def taken_over(session: Session, flow_id: str, *, lost_by: str = "worker-a") -> str:
    """Run a flow whose first claim, by ``lost_by``, lost its lease long ago.

    The session's worker finds the lease expired, takes the flow over and runs it to the end.
    """
    await session.schedule(Receipt(1), flow_id)
    stale = ClaimRequest(lost_by, ["Receipt"], limit=1, lease_seconds=1, now=time.time() - 60)
    assert [run.flow.flow_id for run in await session.storage.claim(stale)] == [flow_id]
    if not session.workers:
        await session.start_workers(Receipt)
    await session.wait([flow_id], timeout=10)
    return flow_id


async def test_the_timeline_marks_a_flow_whose_lease_was_lost(session: Session) -> None:
    await taken_over(session, "taken-over")
    await session.wait([await session.schedule(Receipt(2), "untouched")], timeout=10)

    timeline = await session.timeline(["taken-over", "untouched"])

    lanes = [line for line in timeline.text().splitlines() if "(Receipt)" in line]
    assert lanes == [
        "taken-over (Receipt) COMPLETE, 0 records, lease lost \u00d71 (last by worker-a)",
        "untouched (Receipt) COMPLETE, 0 records",
    ]
    picture = ET.fromstring(timeline.svg())
    marks = [
        "".join(mark.itertext())
        for mark in picture.iter(f"{SVG}tspan")
        if mark.get("class") == "pyergon-lease-lost"
    ]
    assert marks == ["lease lost \u00d71 (last by worker-a)"]


async def test_a_history_names_the_worker_that_lost_the_lease(session: Session) -> None:
    await taken_over(session, "taken-over", lost_by=HOSTILE)

    history = await session.history("taken-over")
    page = history._repr_html_()

    assert (history.flow.lease_losses, history.flow.last_lost_by) == (1, HOSTILE)
    assert 'class="pyergon-lease-lost"' in page
    assert "lease lost \u00d71 (last by &lt;script&gt;" in page and "<script" not in page
    svg = timeline_from_histories(history).svg()
    assert "<script" not in svg
    ET.fromstring(svg)  # still well formed


async def test_the_monitor_lists_the_flows_that_lost_a_lease(session: Session) -> None:
    await taken_over(session, "first")
    await taken_over(session, "second", lost_by="worker-b")
    await session.wait([await session.schedule(Receipt(3), "untouched")], timeout=10)

    monitor = await session.monitor()

    assert monitor.snapshot is not None
    assert monitor.snapshot.lost_leases == (
        ("second", "lease lost \u00d71 (last by worker-b)"),
        ("first", "lease lost \u00d71 (last by worker-a)"),
    )  # newest first
    lines = repr(monitor).splitlines()
    start = lines.index("  flows that lost a lease: 2")
    assert lines[start + 1 : start + 3] == [
        "    second: lease lost \u00d71 (last by worker-b)",
        "    first: lease lost \u00d71 (last by worker-a)",
    ]
    assert lines[-1] == "  background errors: 0"
    page = monitor._repr_html_()
    assert "2 flow(s) lost a lease" in page
    assert page.count('class="pyergon-lease-lost"') == 2


async def test_a_monitor_of_flows_that_kept_their_leases_says_nothing_of_leases(
    session: Session,
) -> None:
    await session.start_workers(Receipt)
    await session.wait([await session.schedule(Receipt(1), "kept")], timeout=10)

    monitor = await session.monitor()

    assert "lease" not in repr(monitor) and "lease" not in monitor._repr_html_()
