"""What steps printed and how far running steps are: in a history, the timeline, the monitor.

The histories are built as storage and the workers' heartbeats give them, so each view is
tested on its own; escaping is checked with output that holds markup and terminal codes.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import pytest

from pyergon._history_html import AMBER
from pyergon.core.changes import Change
from pyergon.core.records import StepProgress
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.workers import StepActivity
from pyergon.history import FlowHistory
from pyergon.notebook import Session
from pyergon.notebook.views import Monitor, timeline_from_histories
from pyergon.storage.base import WorkerRegistry
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_flow, make_invocation, make_worker

HOSTILE = "<script>alert('out')</script> \x1b[31mred\x1b[0m"
PRINTED = "".join(f"part {number}\n" for number in range(1, 26)) + HOSTILE + "\n"
"""What step 1 printed: 26 lines, the last one hostile."""
START = 1_000.0
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def busy() -> FlowHistory:
    """A running flow: step 1 printed and reported progress, step 2 fails and runs again,
    step 3 runs its first attempt (no record yet)."""
    flow = make_flow("busy", flow_type="Crunch", status=TaskStatus.RUNNING, created_at=START)
    loaded = make_invocation(
        1,
        flow_id="busy",
        name="load",
        status=InvocationStatus.COMPLETE,
        attempts=1,
        started_at=START,
        completed_at=START + 2,
        output=PRINTED,
        progress=StepProgress(25, 25, "all parts", START + 2),
    )
    fitting = make_invocation(
        2, flow_id="busy", name="fit", attempts=1, started_at=START + 2, output="try 1\n"
    )
    running = (
        StepActivity("busy", "2", "fit", START + 3, StepProgress(1, 4, "fold 1", START + 4)),
        StepActivity("busy", "3", "crunch", START + 4, StepProgress(37, 100, "loading Jan")),
    )
    return FlowHistory(flow, (loaded, fitting), (), (), running=running)


def test_a_history_shows_each_steps_output_collapsed_and_the_progress_of_running_steps(
    busy: FlowHistory,
) -> None:
    page = busy._repr_html_()

    root = ET.fromstring(page)  # well formed, so escaped
    rows = root.findall(".//tbody/tr")
    assert [[cell.text for cell in row][:4] for row in rows] == [
        ["1", "STEP", "load", "COMPLETE"],
        ["2", "STEP", "fit", "running"],
        ["3", "STEP", "crunch", "running"],
    ]
    (output,) = rows[0].iter("details")
    assert output.findtext("summary") == "printed 26 lines"
    shown = output.findtext("pre") or ""
    assert shown.startswith("… 6 earlier line(s)\npart 7\n")
    assert shown.endswith("part 25\n<script>alert('out')</script> red")
    assert "<script" not in page and "\x1b" not in page
    bars = [bar for bar in rows[2].iter("div") if bar.get("class") == "pyergon-progress"]
    assert len(bars) == 1 and "width:37.0%" in ET.tostring(bars[0], encoding="unicode")
    assert "37/100 · loading Jan" in "".join(rows[2].itertext())
    assert "1/4 · fold 1" in "".join(rows[1].itertext())
    assert "printed 1 line" in "".join(rows[1].itertext())  # the failed attempt's output


def marks_of(svg: ET.Element) -> dict[str, ET.Element]:
    return {
        group.attrib["data-position"]: group
        for group in svg.iter(f"{SVG}g")
        if "pyergon-record" in group.attrib.get("class", "").split()
    }


def test_the_timeline_draws_running_steps_to_now_with_their_progress(busy: FlowHistory) -> None:
    timeline = timeline_from_histories(busy, now=START + 10)

    svg = ET.fromstring(timeline.svg())

    marks = marks_of(svg)
    assert sorted(marks) == ["1", "2", "3"]
    crunch = marks["3"]
    assert "pyergon-running" in crunch.attrib["class"].split()
    assert "pyergon-running" not in marks["1"].attrib["class"].split()
    bar, fill = crunch.iter(f"{SVG}rect")
    assert bar.attrib["fill"] == AMBER  # the legend's "running"
    assert fill.attrib["class"] == "pyergon-progress"
    assert fill.attrib["x"] == bar.attrib["x"]
    assert float(fill.attrib["width"]) == pytest.approx(0.37 * float(bar.attrib["width"]), abs=0.2)
    now_line = next(g for g in svg.iter(f"{SVG}g") if g.attrib.get("class") == "pyergon-now")
    bar_end = float(bar.attrib["x"]) + float(bar.attrib["width"])
    assert float(next(now_line.iter(f"{SVG}line")).attrib["x1"]) == pytest.approx(bar_end, abs=0.2)
    assert crunch.findtext(f"{SVG}title") == "3 STEP crunch: running, 37/100 · loading Jan"


def test_a_steps_tooltip_ends_with_its_last_output_lines(busy: FlowHistory) -> None:
    svg = ET.fromstring(timeline_from_histories(busy).svg())

    title = marks_of(svg)["1"].findtext(f"{SVG}title") or ""

    head, printed = title.split("\n", 1)
    assert head == "1 STEP load: COMPLETE, 2.000s, 25/25 · all parts"
    assert printed.splitlines() == [
        "printed (… 16 earlier):",
        *(f"part {number}" for number in range(17, 26)),
        "<script>alert('out')</script> red",
    ]
    assert "<script" not in timeline_from_histories(busy).svg()


def test_the_timeline_text_lists_running_steps_with_their_progress(busy: FlowHistory) -> None:
    assert repr(timeline_from_histories(busy)).splitlines() == [
        "Timeline of 1 flow",
        "busy (Crunch) RUNNING, 3 records",
        "      1  STEP    load    COMPLETE               2.000s",
        "      2  STEP    fit     PENDING               running  1/4 · fold 1",
        "      3  STEP    crunch  PENDING               running  37/100 · loading Jan",
    ]


@pytest.fixture
async def session() -> AsyncIterator[Session]:
    session = Session(InMemoryExecutionLog())
    try:
        yield session
    finally:
        await session.close()


async def a_worker_runs(session: Session, *activity: StepActivity) -> None:
    """Store a live worker whose last heartbeat says it runs ``activity``."""
    now = time.time()
    worker = make_worker("elsewhere", flow_types=("Crunch",), last_beat=now, lease_seconds=3600)
    storage = session.storage
    assert isinstance(storage, WorkerRegistry)
    await storage.put_worker(worker.beating(now, activity=activity), replacing=None)


async def test_the_monitor_lists_running_steps_with_their_progress(session: Session) -> None:
    started = time.time() - 12
    await a_worker_runs(
        session,
        StepActivity("busy", "3", "crunch", started, StepProgress(37, 100, "loading Jan")),
        StepActivity("other", "1", "count", started + 1, StepProgress(5)),
        StepActivity("other", "2", "<b>bold</b>", started + 2),
    )

    monitor = await session.monitor(all_flows=True)

    lines = repr(monitor).splitlines()
    start = lines.index("  running steps: 3")
    assert lines[start + 1 : start + 4] == [
        "    busy 3 crunch: 37/100 · loading Jan",
        "    other 1 count: 5",
        "    other 2 <b>bold</b>",
    ]
    assert repr(await session.monitor(all_flows=True)) == repr(
        monitor
    )  # no elapsed time in the text
    page = monitor._repr_html_()
    table = page[page.index('<table class="pyergon-running">') :].split("</table>")[0]
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", table)
    assert len(rows) == 3
    assert rows[0].startswith("<code>busy</code></td><td>3 crunch</td><td>12.")
    assert rows[0].endswith("37/100 · loading Jan")
    assert "width:37.0%" in rows[0]
    assert "2 &lt;b&gt;bold&lt;/b&gt;" in rows[2] and "<b>" not in table


async def test_the_monitor_counts_running_steps_beyond_the_ten_it_lists(session: Session) -> None:
    now = time.time()
    await a_worker_runs(
        session, *(StepActivity(f"f{n:02d}", "1", "step", now - 20 + n) for n in range(12))
    )

    monitor = await session.monitor(all_flows=True)

    text = repr(monitor)
    assert "  running steps: 12" in text
    assert "    f09 1 step" in text and "f10" not in text
    assert "    … 2 more" in text
    assert "… 2 more" in monitor._repr_html_()


async def test_the_monitor_shows_the_last_lines_running_steps_printed_when_asked(
    session: Session,
) -> None:
    await session.storage.create_flow(make_flow("busy", flow_type="Crunch"))
    printed = "".join(f"line {n}\n" for n in range(1, 9)) + HOSTILE
    retried = make_invocation(3, flow_id="busy", name="crunch", attempts=1, output=printed)
    await session.storage.apply(Change(records=(retried,)))
    await a_worker_runs(session, StepActivity("busy", "3", "crunch", time.time()))

    quiet = await Monitor(session)
    loud = await Monitor(session, output=True)

    assert "line 8" not in repr(quiet)
    lines = repr(loud).splitlines()
    start = lines.index("    busy 3 crunch")
    assert lines[start + 1 : start + 6] == [
        "      | line 5",
        "      | line 6",
        "      | line 7",
        "      | line 8",
        "      | <script>alert('out')</script> red",
    ]
    page = loud._repr_html_()
    assert "<script" not in page and "&lt;script&gt;" in page
    assert '<pre class="pyergon-output" style="margin:0">line 5\nline 6\n' in page
