"""Each attempt of a step in the timeline: failed ones with their error, the one a crash
abandoned and the gap it left, the one cut by a lost lease; in the SVG, its tooltips, the text
form and collapsed rows.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from pyergon import Worker
from pyergon._history_html import RED
from pyergon.core.records import Attempt, Invocation, StepProgress, StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.workers import StepActivity
from pyergon.history import FlowHistory
from pyergon.notebook import Session
from pyergon.notebook.views import timeline_from_histories
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_flow, make_invocation
from tests.executor.test_attempts import Charge, held_by_a_dead_worker
from tests.waiting import flow_reaches

SVG = "{http://www.w3.org/2000/svg}"
START = 1_000.0
ERROR = StoredError("builtins.ValueError", "bad row 17\nin january.csv", "Traceback ...")
"""An error whose message has two lines: the text form shows the first."""


def step(sequence: int, name: str, **changes: object) -> Invocation:
    return make_invocation(sequence, flow_id="retry", name=name, **changes)


@pytest.fixture
def retried() -> FlowHistory:
    """Step 1 failed twice then passed; step 2's first attempt was abandoned by a crash and
    its second passed; step 3's first attempt lost its lease and the second runs now."""
    flow = make_flow(
        "retry",
        status=TaskStatus.RUNNING,
        created_at=START,
        lease_losses=1,
        last_lost_by="worker-b",
    )
    load = step(
        1,
        "load",
        status=InvocationStatus.COMPLETE,
        attempts=3,
        started_at=START,
        completed_at=START + 9,
        earlier_attempts=(
            Attempt.failed(1, START, START + 2, ERROR, "w1"),
            Attempt.failed(2, START + 3, START + 5, ERROR, "w1"),
        ),
    )
    fit = step(
        2,
        "fit",
        status=InvocationStatus.COMPLETE,
        attempts=2,
        started_at=START + 14,  # written by the second attempt, the first wrote nothing
        completed_at=START + 20,
        earlier_attempts=(
            Attempt(1, START + 9, None, "abandoned", worker_id="w1", last_seen_at=START + 11),
        ),
    )
    crunch = step(
        3,
        "crunch",
        status=InvocationStatus.PENDING,
        attempts=2,
        started_at=START + 20,
        earlier_attempts=(
            Attempt(
                1, START + 20, None, "lease lost", worker_id="worker-b", last_seen_at=START + 22
            ),
        ),
    )
    running = (StepActivity("retry", "3", "crunch", START + 24, StepProgress(1, 2, "half")),)
    return FlowHistory(flow, (load, fit, crunch), (), (), running=running)


def record_marks(svg: ET.Element) -> dict[str, ET.Element]:
    return {
        group.attrib["data-position"]: group
        for group in svg.iter(f"{SVG}g")
        if "pyergon-record" in group.attrib.get("class", "").split()
    }


def of_class(element: ET.Element, css: str) -> list[ET.Element]:
    return [each for each in element.iter() if css in each.attrib.get("class", "").split()]


def x_span(rect: ET.Element) -> tuple[float, float]:
    x = float(rect.attrib["x"])
    return x, x + float(rect.attrib["width"])


def picture(history: FlowHistory, collapse_after: int | None = 20) -> ET.Element:
    timeline = timeline_from_histories(history, now=START + 30, collapse_after=collapse_after)
    return ET.fromstring(timeline.svg())


def first_rect(element: ET.Element) -> ET.Element:
    rect = element.find(f"{SVG}rect")
    assert rect is not None
    return rect


def per_second(svg: ET.Element) -> float:
    """Pixels per second of the plot, from the first start (START) to now (START + 30)."""
    assert float(svg.attrib["width"]) == 760  # a plot from x=250 to x=744
    return (744 - 250) / 30


def test_failed_attempts_are_red_segments_before_the_last_one_with_their_error(
    retried: FlowHistory,
) -> None:
    svg = picture(retried)
    load = record_marks(svg)["1"]

    failed = of_class(load, "pyergon-attempt-failed")
    assert [attempt.findtext(f"{SVG}title") for attempt in failed] == [
        "attempt 1 failed ValueError: bad row 17",
        "attempt 2 failed ValueError: bad row 17",
    ]
    spans = [x_span(first_rect(attempt)) for attempt in failed]
    scale = per_second(svg)
    assert spans == [
        pytest.approx((250, 250 + 2 * scale), abs=0.2),
        pytest.approx((250 + 3 * scale, 250 + 5 * scale), abs=0.2),
    ]
    assert all(first_rect(attempt).attrib["fill"] == RED for attempt in failed)
    last = next(rect for rect in load.findall(f"{SVG}rect"))
    assert x_span(last) == pytest.approx((250 + 5 * scale, 250 + 9 * scale), abs=0.2)
    title = load.findtext(f"{SVG}title") or ""
    assert "\nattempt 1 failed ValueError: bad row 17\nattempt 2 failed" in title


def test_an_abandoned_attempt_is_hatched_until_last_seen_then_a_crash_gap(
    retried: FlowHistory,
) -> None:
    svg = picture(retried)
    fit = record_marks(svg)["2"]
    scale = per_second(svg)

    (abandoned,) = of_class(fit, "pyergon-attempt-abandoned")
    assert abandoned.findtext(f"{SVG}title") == "attempt 1 abandoned (its process died or stopped)"
    span = abandoned.find(f"{SVG}rect")
    assert span is not None
    assert x_span(span) == pytest.approx((250 + 9 * scale, 250 + 11 * scale), abs=0.2)
    assert len(list(abandoned.iter(f"{SVG}line"))) >= 2  # hatched
    (gap,) = of_class(fit, "pyergon-crash-gap")
    assert gap.findtext(f"{SVG}title") == (
        "crash gap: the worker stopped (a crash, a kernel restart) after it was last seen; "
        "attempt 2 started 3.000s later"
    )
    hole = gap.find(f"{SVG}rect")
    assert hole is not None
    assert x_span(hole) == pytest.approx((250 + 11 * scale, 250 + 14 * scale), abs=0.2)
    assert gap.find(f"{SVG}polyline") is not None  # the zigzag where it broke
    last = next(rect for rect in fit.findall(f"{SVG}rect"))
    assert x_span(last) == pytest.approx((250 + 14 * scale, 250 + 20 * scale), abs=0.2)


def test_an_attempt_cut_by_a_lost_lease_is_marked_and_the_running_one_starts_anew(
    retried: FlowHistory,
) -> None:
    svg = picture(retried)
    crunch = record_marks(svg)["3"]
    scale = per_second(svg)

    (lost,) = of_class(crunch, "pyergon-attempt-lease-lost")
    assert lost.findtext(f"{SVG}title") == "attempt 1 lease lost by worker-b"
    assert lost.find(f"{SVG}polygon") is not None
    assert of_class(lost, "pyergon-crash-gap")  # seen at 22, the next began at 24
    bar = next(rect for rect in crunch.findall(f"{SVG}rect"))
    assert x_span(bar) == pytest.approx((250 + 24 * scale, 744), abs=0.2)  # running to now
    (progress,) = of_class(crunch, "pyergon-progress")
    assert float(progress.attrib["width"]) == pytest.approx(6 * scale / 2, abs=0.2)


def test_the_text_form_lists_each_earlier_attempt_under_its_step(retried: FlowHistory) -> None:
    assert timeline_from_histories(retried).text().splitlines() == [
        "Timeline of 1 flow",
        "retry (Order) RUNNING, 3 records, lease lost \u00d71 (last by worker-b)",
        "      1  STEP    load    COMPLETE               9.000s  \u00d73",
        "         attempt 1 failed ValueError: bad row 17",
        "         attempt 2 failed ValueError: bad row 17",
        "      2  STEP    fit     COMPLETE               6.000s  \u00d72",
        "         attempt 1 abandoned (its process died or stopped)",
        "      3  STEP    crunch  PENDING               running  1/2 · half  \u00d72",
        "         attempt 1 lease lost by worker-b",
    ]


def test_a_collapsed_row_marks_failed_attempts_and_crash_gaps(retried: FlowHistory) -> None:
    svg = picture(retried, collapse_after=0)
    scale = per_second(svg)

    (row,) = of_class(svg, "pyergon-flow-row")
    failures = [float(mark.attrib["x1"]) for mark in of_class(row, "pyergon-failure-mark")]
    crashes = [float(mark.attrib["x1"]) for mark in of_class(row, "pyergon-crash-gap")]
    lost = [float(mark.attrib["x1"]) for mark in of_class(row, "pyergon-lease-lost-mark")]
    assert failures == pytest.approx([250 + 2 * scale, 250 + 5 * scale], abs=0.2)
    assert crashes == pytest.approx([250 + 11 * scale], abs=0.2)
    assert lost == pytest.approx([250 + 22 * scale], abs=0.2)
    assert timeline_from_histories(retried, collapse_after=0).text().splitlines()[1] == (
        "retry (Order) RUNNING, 3 records, lease lost \u00d71 (last by worker-b), "
        "3 records retried, 1 attempt abandoned, 1 attempt lease lost"
    )


async def test_a_flow_taken_over_after_its_worker_died_shows_the_crash_gap() -> None:
    storage = InMemoryExecutionLog()
    flow_id = await held_by_a_dead_worker(storage, alive=False)
    worker = Worker(storage, "w-new")
    worker.register(Charge)
    handle = await worker.start()
    try:
        await flow_reaches(storage, flow_id, TaskStatus.COMPLETE)
    finally:
        await handle.shutdown()
    session = Session(storage)
    try:
        timeline = await session.timeline(flow_id)
    finally:
        await session.close()

    assert timeline.text().splitlines()[2:] == [
        "      1  STEP    charge  COMPLETE               0.000s  \u00d72",
        "         attempt 1 abandoned (its process died or stopped)",
    ]
    charge = record_marks(ET.fromstring(timeline.svg()))["1"]
    (abandoned,) = of_class(charge, "pyergon-attempt-abandoned")
    (gap,) = of_class(abandoned, "pyergon-crash-gap")
    hole = first_rect(gap)
    last = first_rect(charge)  # the attempt that ended the step, after the gap
    assert x_span(hole)[0] < x_span(hole)[1] == pytest.approx(x_span(last)[0], abs=0.2)
    assert "attempt 2 started" in (gap.findtext(f"{SVG}title") or "")


def test_the_legend_names_the_statuses_and_only_the_marks_drawn(retried: FlowHistory) -> None:
    def legend_of(svg: ET.Element) -> list[str]:
        (legend,) = of_class(svg, "pyergon-legend")
        return [text.text or "" for text in legend.iter(f"{SVG}text")]

    assert legend_of(picture(retried)) == [
        "complete",
        "failed",
        "running",
        "abandoned, crash gap",
        "lease lost",
        "\u00d7n",  # the badge itself, as drawn
        "attempts",
    ]
    # Collapsed, a badge counts the records retried, not attempts: no attempts entry.
    assert legend_of(picture(retried, collapse_after=0)) == [
        "running",
        "failed here",
        "worker stopped",
        "lease lost",
    ]
    plain = FlowHistory(
        retried.flow, (retried.invocations[0].replace(earlier_attempts=(), attempts=1),), (), ()
    )
    assert legend_of(picture(plain)) == [plain.invocations[0].status.value.lower()]
