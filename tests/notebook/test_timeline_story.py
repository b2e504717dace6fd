"""The timeline tells the whole story: colours for any background, readable badges, running
steps growing to now, children under their parents, long flows with their end, and many flows
collapsed, filtered and zoomed.

The histories are built record by record, as storage and the workers' heartbeats give them.
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from pyergon import Executor, flow, flow_type, step
from pyergon._history_html import AMBER, GREEN, RED
from pyergon.core.records import Invocation, StepProgress, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.core.workers import StepActivity
from pyergon.history import FlowHistory
from pyergon.notebook import Session
from pyergon.notebook.views import timeline_from_histories
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_flow, make_invocation

SVG = "{http://www.w3.org/2000/svg}"
START = 1_000.0
ERROR = StoredError("builtins.ValueError", "bad row 17", "Traceback ...")
COLOUR = re.compile(r"#[0-9a-f]{6}")


def step_record(
    flow_id: str, sequence: int, start: float, end: float | None, **changes: object
) -> Invocation:
    status = InvocationStatus.COMPLETE if end is not None else InvocationStatus.PENDING
    return make_invocation(
        sequence,
        flow_id=flow_id,
        name=changes.pop("name", f"step_{sequence}"),
        status=changes.pop("status", status),
        attempts=changes.pop("attempts", 1),
        started_at=start,
        completed_at=end,
        **changes,
    )


def history(
    flow_id: str,
    steps: int = 3,
    status: TaskStatus = TaskStatus.COMPLETE,
    start: float = START,
    **changes: object,
) -> FlowHistory:
    """A flow of ``steps`` one-second steps; a failed flow's last step failed."""
    failed = status is TaskStatus.FAILED
    flow = make_flow(
        flow_id, status=status, created_at=start, error=ERROR if failed else None, **changes
    )
    records = [step_record(flow_id, n, start + n - 1, start + n) for n in range(1, steps + 1)]
    if failed:
        records[-1] = records[-1].replace(status=InvocationStatus.FAILED, error=ERROR)
    return FlowHistory(flow, tuple(records), (), ())


def marks_of(svg: ET.Element) -> dict[str, ET.Element]:
    return {
        group.attrib["data-position"]: group
        for group in svg.iter(f"{SVG}g")
        if "pyergon-record" in group.attrib.get("class", "").split()
    }


def of_class(element: ET.Element, css: str) -> list[ET.Element]:
    return [each for each in element.iter() if css in each.attrib.get("class", "").split()]


def text_of(element: ET.Element) -> str:
    return "".join(element.itertext())


def bar_of(mark: ET.Element) -> ET.Element:
    """The record's own bar: its first rect outside a badge."""
    badges = {id(rect) for badge in of_class(mark, "pyergon-badge") for rect in badge.iter()}
    return next(rect for rect in mark.iter(f"{SVG}rect") if id(rect) not in badges)


def span_of(rect: ET.Element) -> tuple[float, float]:
    x = float(rect.attrib["x"])
    return x, x + float(rect.attrib["width"])


# -- colours ----------------------------------------------------------------------------------


def test_every_colour_is_explicit_on_an_opaque_white_background() -> None:
    shown = [history("done"), history("broken", status=TaskStatus.FAILED)]
    for collapse_after in (None, 0):
        markup = timeline_from_histories(shown, collapse_after=collapse_after).svg()
        svg = ET.fromstring(markup)

        assert "currentColor" not in markup
        paper = svg[0]
        assert paper.tag == f"{SVG}rect"
        assert (paper.attrib["fill"], paper.attrib["width"], paper.attrib["height"]) == (
            "#ffffff",
            svg.attrib["width"],
            svg.attrib["height"],
        )
        for element in svg.iter():
            for name in ("fill", "stroke"):
                value = element.attrib.get(name)
                assert value is None or value == "none" or COLOUR.fullmatch(value), (name, value)
        assert "id" not in {name for element in svg.iter() for name in element.attrib}


# -- running steps ----------------------------------------------------------------------------


def test_a_running_step_grows_to_now_with_its_progress() -> None:
    flow = make_flow("busy", status=TaskStatus.RUNNING, created_at=START)
    done = step_record("busy", 1, START, START + 2)
    running = (StepActivity("busy", "2", "crunch", START + 2, StepProgress(1, 4, "fold 1")),)
    busy = FlowHistory(flow, (done,), (), (), running=running)

    widths = {}
    for now in (START + 6, START + 10):
        marks = marks_of(ET.fromstring(timeline_from_histories(busy, now=now).svg()))
        crunch = marks["2"]
        assert "pyergon-running" in crunch.attrib["class"].split()
        (progress,) = of_class(crunch, "pyergon-progress")
        bar = bar_of(crunch)
        assert bar.attrib["fill"] == AMBER
        assert float(progress.attrib["width"]) == pytest.approx(
            float(bar.attrib["width"]) / 4, abs=0.2
        )
        widths[now] = (span_of(bar_of(marks["1"])), span_of(bar))

    (done_early, running_early), (done_late, running_late) = widths.values()
    # Drawn on the same plot width, the later picture gives the finished step a smaller share
    # and the running one a larger one: it grew with the time.
    assert done_late[1] - done_late[0] < done_early[1] - done_early[0]
    assert running_late[1] - running_late[0] > running_early[1] - running_early[0]
    assert running_late[1] == pytest.approx(744, abs=0.2)  # up to now, at the right edge


# -- badges -----------------------------------------------------------------------------------


def test_a_retry_badge_is_a_pill_beside_its_bar_never_over_it() -> None:
    retried = history("retried")
    records = list(retried.invocations)
    records[0] = records[0].replace(attempts=2)  # a short bar at the start: badge after it
    records[2] = records[2].replace(attempts=3)  # a bar ending at the right edge: badge before
    marks = marks_of(
        ET.fromstring(
            timeline_from_histories(dataclasses.replace(retried, invocations=tuple(records))).svg()
        )
    )

    for position, count in (("1", "2"), ("3", "3")):
        (badge,) = of_class(marks[position], "pyergon-retry")
        assert text_of(badge) == f"\u00d7{count}"
        pill = badge.find(f"{SVG}rect")
        label = badge.find(f"{SVG}text")
        assert pill is not None and label is not None
        assert pill.attrib["rx"] == "6"
        assert pill.attrib["fill"] not in (RED, GREEN)  # a light fill
        assert label.attrib["fill"] not in (RED, GREEN)  # dark text
        left, right = span_of(pill)
        bar_left, bar_right = span_of(bar_of(marks[position]))
        assert right <= bar_left or left >= bar_right


def test_a_badge_beside_a_bar_across_the_whole_plot_moves_into_the_label_column() -> None:
    flow = make_flow("long", status=TaskStatus.COMPLETE, created_at=START)
    whole = step_record(
        "long", 1, START, START + 5, attempts=4, name="a_step_named_at_great_length"
    )
    marks = marks_of(
        ET.fromstring(timeline_from_histories(FlowHistory(flow, (whole,), (), ())).svg())
    )

    (badge,) = of_class(marks["1"], "pyergon-retry")
    pill = badge.find(f"{SVG}rect")
    assert pill is not None
    assert span_of(pill)[1] <= span_of(bar_of(marks["1"]))[0]
    names = [t for t in marks["1"].iter(f"{SVG}text") if t.attrib.get("x") == "48"]
    assert text_of(names[0]).endswith("…")  # made room for the badge


# -- children ---------------------------------------------------------------------------------


def test_a_childs_lane_comes_right_under_its_parent_with_a_connector() -> None:
    parent = history("parent", steps=1, status=TaskStatus.COMPLETE)
    call = make_invocation(
        2,
        flow_id="parent",
        kind=OperationKind.CHILD,
        name="Child",
        status=InvocationStatus.COMPLETE,
        attempts=1,
        started_at=START + 1,
        completed_at=START + 3,
        child_flow_id="parent~child-2",
    )
    parent = dataclasses.replace(parent, invocations=(*parent.invocations, call))
    child = history("parent~child-2", steps=2, start=START + 1, parent_flow_id="parent")
    other = history("other")

    timeline = timeline_from_histories([parent, other, child])

    lanes = of_class(ET.fromstring(timeline.svg()), "pyergon-lane")
    assert [lane.attrib["data-flow-id"] for lane in lanes] == ["parent", "parent~child-2", "other"]
    assert "↳ parent~child-2" in text_of(lanes[1])
    (connector,) = of_class(ET.fromstring(timeline.svg()), "pyergon-child-connector")
    assert connector.findtext(f"{SVG}title") == "child parent~child-2"
    assert [line.split(" (")[0] for line in timeline.text().splitlines() if "(Order)" in line] == [
        "parent",
        "  parent~child-2",
        "other",
    ]


# -- long flows -------------------------------------------------------------------------------


def test_a_long_flow_shows_its_first_and_last_records_so_its_failure_stays_in_sight() -> None:
    long = history("long", steps=250, status=TaskStatus.FAILED)

    timeline = timeline_from_histories(long)

    lines = timeline.text().splitlines()
    assert "  … 50 records …" in lines
    assert lines[-1].split()[:4] == ["250", "STEP", "step_250", "FAILED"]
    marks = marks_of(ET.fromstring(timeline.svg()))
    assert len(marks) == 200
    assert {"1", "100", "151", "250"} <= set(marks) and "101" not in marks
    assert marks["250"].attrib["data-status"] == "FAILED"
    (gap,) = of_class(ET.fromstring(timeline.svg()), "pyergon-gap")
    assert text_of(gap) == "… 50 records …"


# -- many flows -------------------------------------------------------------------------------


def many(count: int, steps: int = 3) -> list[FlowHistory]:
    """Flows one second apart; every fourth one failed."""
    return [
        history(
            f"flow-{n:03}",
            steps=steps,
            status=TaskStatus.FAILED if n % 4 == 1 else TaskStatus.COMPLETE,
            start=START + n,
        )
        for n in range(count)
    ]


def test_past_collapse_after_each_flow_is_one_row_with_failed_flows_first() -> None:
    flows = many(21)

    timeline = timeline_from_histories(flows)

    assert timeline.collapsed
    svg = ET.fromstring(timeline.svg())
    assert not marks_of(svg)
    rows = of_class(svg, "pyergon-flow-row")
    ids = [row.attrib["data-flow-id"] for row in rows]
    failed = [f"flow-{n:03}" for n in range(21) if n % 4 == 1]
    assert ids[: len(failed)] == failed
    assert sorted(ids) == sorted(h.flow.flow_id for h in flows)
    (mark,) = of_class(rows[0], "pyergon-failure-mark")
    assert mark.attrib["stroke"] == RED
    lines = timeline.text().splitlines()
    assert lines[0] == "Timeline of 21 flows (collapsed: one line per flow, failed first)"
    assert lines[1] == (
        "flow-001 (Order) FAILED (ValueError: bad row 17), 3 records, failed at 3 step_3"
    )
    assert len(lines) == 22
    assert not timeline_from_histories(flows[:20]).collapsed
    assert not timeline_from_histories(flows, collapse_after=None).collapsed


def test_two_hundred_flows_of_fifty_steps_stay_under_two_thousand_pixels() -> None:
    flows = many(200, steps=50)

    collapsed = ET.fromstring(timeline_from_histories(flows).svg())
    lanes = ET.fromstring(timeline_from_histories(flows[:20]).svg())

    assert float(collapsed.attrib["height"]) < 2000
    assert len(of_class(collapsed, "pyergon-flow-row")) == 200
    assert float(lanes.attrib["height"]) > 2000 * 20 / 200  # lanes would take far more


def test_filters_keep_the_flows_of_a_status_and_type() -> None:
    flows = [*many(3), history("other", flow_type="Refund")]

    failed = timeline_from_histories(flows, status="failed")
    refunds = timeline_from_histories(flows, flow_type=["Refund"])
    none = timeline_from_histories(flows, status=TaskStatus.RUNNING, flow_type="Refund")

    assert [
        lane.attrib["data-flow-id"]
        for lane in of_class(ET.fromstring(failed.svg()), "pyergon-lane")
    ] == ["flow-001"]
    assert failed.text().splitlines()[0] == "Timeline of 1 of 4 flows (status FAILED)"
    assert refunds.text().splitlines()[:2] == [
        "Timeline of 1 of 4 flows (type Refund)",
        "other (Refund) COMPLETE, 3 records",
    ]
    assert none.text() == (
        "Timeline of 0 of 4 flows (status RUNNING, type Refund)\n"
        "no flows to show: none of the 4 flows has status RUNNING and type Refund"
    )
    ET.fromstring(none.svg())
    with pytest.raises(ValueError, match="unknown status 'done'; valid: PENDING, RUNNING"):
        timeline_from_histories(flows, status="done")


def test_a_window_zooms_on_a_span_of_time() -> None:
    flow = history("zoom", steps=30)

    seconds = timeline_from_histories(flow, window=(10, 20))
    dates = timeline_from_histories(
        flow,
        window=(datetime.fromtimestamp(START + 10, UTC), datetime.fromtimestamp(START + 20, UTC)),
    )

    svg = ET.fromstring(seconds.svg())
    (axis,) = of_class(svg, "pyergon-axis")
    ticks = [text_of(t) for t in axis.iter(f"{SVG}text")][1:]
    assert ticks[0] == "10s" and ticks[-1] == "20s"
    marks = marks_of(svg)
    assert len(marks) == 30  # every row is listed ...
    drawn = [p for p, mark in marks.items() if list(mark.iter(f"{SVG}rect"))]
    assert sorted(drawn, key=int) == [str(n) for n in range(10, 22)]  # ... those in it drawn
    assert span_of(bar_of(marks["11"])) == pytest.approx((250, 250 + 49.4), abs=0.2)
    assert dates.svg() == seconds.svg()
    assert seconds.text().splitlines()[0] == "Timeline of 1 flow (window 10s to 20s)"
    with pytest.raises(ValueError, match="start < end"):
        timeline_from_histories(flow, window=(20, 10))


def test_a_collapsed_row_says_the_flows_lease_was_lost() -> None:
    lost = history("lost", lease_losses=2, last_lost_by="worker-a")

    svg = ET.fromstring(timeline_from_histories([lost, *many(2)], collapse_after=1).svg())

    (row,) = [r for r in of_class(svg, "pyergon-flow-row") if r.attrib["data-flow-id"] == "lost"]
    (badge,) = of_class(row, "pyergon-lease-lost")
    assert text_of(badge) == "lease lost \u00d72"
    assert "lease lost \u00d72 (last by worker-a)" in (row.findtext(f"{SVG}title") or "")


# -- a session's timeline ---------------------------------------------------------------------


@dataclass
@flow_type
class Job:
    fail: bool

    @step
    async def work(self) -> str:
        if self.fail:
            raise ValueError("job failed")
        return "done"

    @flow
    async def run(self) -> str:
        return await self.work()


async def test_a_session_timeline_of_the_newest_flows_of_a_status() -> None:
    storage = InMemoryExecutionLog()
    for number in range(4):
        job = Job(fail=number % 2 == 1)
        await Executor(job, storage, f"job-{number}").run(lambda f: f.run())
    session = Session(storage)
    try:
        failed = await session.timeline(status="failed", collapse_after=None)
        newest = await session.timeline(newest=1, flow_type="Job")
        nothing = await session.timeline(flow_type=["Nope", "Other"])
    finally:
        await session.close()

    assert failed.flow_ids == ("job-1", "job-3")
    assert newest.flow_ids == ("job-3",)
    assert nothing.flow_ids == ()


def test_collapsed_a_family_with_a_failed_child_comes_first_with_the_child_under_its_parent() -> (
    None
):
    parent = history("parent", status=TaskStatus.RUNNING)
    child = history("parent~child-1", status=TaskStatus.FAILED, parent_flow_id="parent")
    flows = [*many(3, steps=1)[::2], parent, child]  # flow-000, flow-002: complete

    timeline = timeline_from_histories(flows, collapse_after=2)

    rows = of_class(ET.fromstring(timeline.svg()), "pyergon-flow-row")
    assert [row.attrib["data-flow-id"] for row in rows] == [
        "parent",
        "parent~child-1",
        "flow-000",
        "flow-002",
    ]
    assert [line.split(" (")[0] for line in timeline.text().splitlines()[1:]] == [
        "parent",
        "  parent~child-1",
        "flow-000",
        "flow-002",
    ]


@pytest.mark.parametrize("collapse_after", [None, 0])
def test_a_flow_with_no_record_yet_still_gets_its_lane(collapse_after: int | None) -> None:
    waiting = history("queued", steps=0, status=TaskStatus.PENDING)

    timeline = timeline_from_histories([waiting, history("done")], collapse_after=collapse_after)

    svg = ET.fromstring(timeline.svg())
    css = "pyergon-lane" if collapse_after is None else "pyergon-flow-row"
    assert [lane.attrib["data-flow-id"] for lane in of_class(svg, css)] == ["queued", "done"]
    assert "queued (Order) PENDING, 0 records" in timeline.text()
