"""A timeline reads right whatever it holds: axis ticks in round units, badges that say what
they count, windows of any datetimes, a bounded picture of thousands of flows, and text free of
terminal escapes and of whole error messages.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from pyergon.core.records import Attempt, Invocation, StepProgress, StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.workers import StepActivity
from pyergon.history import FlowHistory
from pyergon.notebook.views import timeline_from_histories
from pyergon.testing import make_flow, make_invocation

SVG = "{http://www.w3.org/2000/svg}"
START = 1_700_000_000.0
ERROR = StoredError("builtins.ValueError", "bad row", "Traceback ...")


def of_class(element: ET.Element, css: str) -> list[ET.Element]:
    return [each for each in element.iter() if css in each.attrib.get("class", "").split()]


def text_of(element: ET.Element) -> str:
    return "".join(element.itertext())


def done(flow_id: str, sequence: int, start: float, end: float, **changes: object) -> Invocation:
    return make_invocation(
        sequence,
        flow_id=flow_id,
        name=f"step_{sequence}",
        status=changes.pop("status", InvocationStatus.COMPLETE),
        attempts=changes.pop("attempts", 1),
        started_at=start,
        completed_at=end,
        **changes,
    )


def spread(flow_id: str, seconds: float, steps: int = 4, **changes: object) -> FlowHistory:
    """A complete flow of ``steps`` equal steps over ``seconds`` from :data:`START`."""
    each = seconds / steps
    records = tuple(
        done(flow_id, n, START + (n - 1) * each, START + n * each) for n in range(1, steps + 1)
    )
    flow = make_flow(flow_id, **{"status": TaskStatus.COMPLETE, "created_at": START, **changes})
    return FlowHistory(flow, records, (), ())


def axis_of(timeline_svg: str) -> tuple[str, list[str]]:
    """The axis title and its tick labels."""
    (axis,) = of_class(ET.fromstring(timeline_svg), "pyergon-axis")
    title, *ticks = [text_of(text) for text in axis.iter(f"{SVG}text")]
    return title, ticks


# -- the axis ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "ticks"),
    [
        (10, ["0", "2s", "4s", "6s", "8s", "10s"]),
        (100 * 60, ["0", "30m", "1h", "1h30m"]),
        (20 * 60, ["0", "5m", "10m", "15m", "20m"]),
        (24 * 3600, ["0", "6h", "12h", "18h", "1d"]),
        (3 * 86400, ["0", "12h", "1d", "1d12h", "2d", "2d12h", "3d"]),
        (5 * 86400, ["0", "1d", "2d", "3d", "4d", "5d"]),
    ],
)
def test_axis_ticks_are_round_numbers_of_the_unit_they_are_written_in(
    seconds: float, ticks: list[str]
) -> None:
    title, labels = axis_of(timeline_from_histories(spread("long", seconds)).svg())

    assert title == "time from the first start"
    assert labels == ticks


def test_a_window_inside_a_long_flow_counts_its_ticks_from_the_first_start() -> None:
    flow = spread("long", 3 * 3600)

    _, labels = axis_of(timeline_from_histories(flow, window=(3600, 3600 + 90)).svg())

    assert labels == ["1h", "1h15s", "1h30s", "1h45s", "1h1m", "1h1m15s", "1h1m30s"]


# -- badges -----------------------------------------------------------------------------------


def test_a_collapsed_rows_badge_counts_the_records_retried_not_attempts() -> None:
    retried = spread("retried", 10)
    records = list(retried.invocations)
    records[0] = records[0].replace(attempts=5)
    records[1] = records[1].replace(attempts=2)
    retried = FlowHistory(retried.flow, tuple(records), (), ())

    svg = ET.fromstring(timeline_from_histories([retried], collapse_after=0).svg())

    (badge,) = of_class(svg, "pyergon-retry")
    assert text_of(badge) == "2 records retried"
    (legend,) = of_class(svg, "pyergon-legend")
    assert "\u00d7n attempts" not in text_of(legend)  # the legend's n attempts are one record's


# -- windows of datetimes ---------------------------------------------------------------------


def test_a_window_of_a_naive_and_an_aware_datetime_reads_the_naive_one_as_utc() -> None:
    flow = spread("zoom", 30, steps=30)
    aware = (datetime.fromtimestamp(START + 10, UTC), datetime.fromtimestamp(START + 20, UTC))
    naive_start = aware[0].replace(tzinfo=None)

    mixed = timeline_from_histories(flow, window=(naive_start, aware[1]))

    assert mixed.svg() == timeline_from_histories(flow, window=aware).svg()
    with pytest.raises(ValueError, match="start < end"):
        timeline_from_histories(flow, window=(aware[1].replace(tzinfo=None), aware[0]))


@pytest.fixture
def five_hours_behind_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's local time zone is UTC-5, so local and UTC readings differ."""
    monkeypatch.setenv("TZ", "EST5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("five_hours_behind_utc")
async def test_a_naive_datetime_is_utc_in_the_timeline_and_the_monitor_alike() -> None:
    from pyergon.notebook import Session
    from pyergon.storage.memory import InMemoryExecutionLog

    moment = datetime.fromtimestamp(START, UTC).replace(tzinfo=None)
    storage = InMemoryExecutionLog()
    await storage.create_flow(make_flow("early", created_at=START - 60))
    await storage.create_flow(make_flow("later", created_at=START + 60))
    session = Session(storage)
    try:
        monitor = await session.monitor(since=moment)
    finally:
        await session.close()
    flow = spread("zoom", 30, steps=30)
    naive = timeline_from_histories(flow, window=(moment, moment + timedelta(seconds=20)))
    aware = timeline_from_histories(flow, window=(0, 20))

    assert repr(monitor).splitlines()[0].endswith("0 of 1 flows final (0%)")  # "later" only
    assert naive.svg() == aware.svg()


# -- many flows -------------------------------------------------------------------------------


def test_thousands_of_collapsed_flows_draw_the_failed_first_and_count_the_rest() -> None:
    flows = [
        spread(f"flow-{n:04}", 4, status=TaskStatus.FAILED if n % 100 == 7 else TaskStatus.COMPLETE)
        for n in range(2_000)
    ]

    timeline = timeline_from_histories(flows)

    markup = timeline.svg()
    svg = ET.fromstring(markup)
    rows = of_class(svg, "pyergon-flow-row")
    assert len(rows) == 200
    assert [row.attrib["data-status"] for row in rows[:20]] == ["FAILED"] * 20
    (note,) = of_class(svg, "pyergon-left-out")
    note_text = "… 1800 more flows; filter by status, flow_type or window to see them"
    assert text_of(note) == note_text
    assert float(svg.attrib["height"]) < 2_500
    assert len(markup) < 200_000
    lines = timeline.text().splitlines()
    assert lines[0] == "Timeline of 2000 flows (collapsed: one line per flow, failed first)"
    assert len(lines) == 202 and lines[-1] == note_text
    assert lines[1].startswith("flow-0007 (Order) FAILED")


def test_the_records_shown_per_flow_have_one_source_the_options() -> None:
    timeline = timeline_from_histories(spread("long", 10, steps=5), max_records=2)

    assert timeline.options.max_records == 2
    assert not hasattr(timeline, "max_records")  # no second copy to drift from what is drawn
    assert "… 3 records …" in timeline.text()


# -- what a text and a tooltip carry ----------------------------------------------------------


def test_the_text_form_drops_terminal_escapes_from_errors_and_progress() -> None:
    red = StoredError("builtins.ValueError", "\x1b[31mbad row\x1b[0m\x07", "Traceback ...")
    retried = done(
        "colour",
        1,
        START,
        START + 3,
        attempts=2,
        earlier_attempts=(Attempt.failed(1, START, START + 1, red, "w1"),),
    )
    flow = make_flow("colour", status=TaskStatus.RUNNING, created_at=START)
    running = (
        StepActivity("colour", "2", "crunch", START + 3, StepProgress(1, 2, "\x1b]0;title\x07ok")),
    )
    history = FlowHistory(flow, (retried,), (), (), running=running)

    text = timeline_from_histories(history, now=START + 5).text()

    assert "attempt 1 failed ValueError: bad row" in text
    assert "1/2 · ok" in text
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f]", text)


def test_a_tooltip_carries_the_start_of_a_long_error_message_not_all_of_it() -> None:
    long = StoredError("builtins.ValueError", "x" * 100_000, "Traceback ...")
    failed = done("loud", 1, START, START + 1, status=InvocationStatus.FAILED, error=long)
    flow = make_flow("loud", status=TaskStatus.FAILED, created_at=START, error=long)

    markup = timeline_from_histories(FlowHistory(flow, (failed,), (), ())).svg()

    assert len(markup) < 10_000
    (title,) = [
        t.text or "" for t in ET.fromstring(markup).iter(f"{SVG}title") if "STEP" in (t.text or "")
    ]
    assert title.endswith("x…") and len(title) < 500
