"""Notebook views: the timeline (SVG, text, widget), the monitor, and the HTML of histories.

How views show in a notebook output (picture, PNG, refresh in place) is in test_views_display.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import IPython
import pytest

from pyergon import (
    Executor,
    RetryPolicy,
    await_external_signal,
    flow,
    flow_type,
    schedule_timer_named,
    send_signal,
    step,
)
from pyergon._history_html import RECORD_COLOURS
from pyergon.clock import ManualClock
from pyergon.core import InvocationStatus
from pyergon.errors import FlowNotFoundError, PyergonError
from pyergon.history import FlowHistory, load_history
from pyergon.notebook import BackgroundError, Session
from pyergon.notebook._views_common import WIDGET_VIEW_MIMETYPE
from pyergon.notebook.views import Timeline, timeline_from_histories
from pyergon.storage.memory import InMemoryExecutionLog

SVG = "{http://www.w3.org/2000/svg}"
GREEN = RECORD_COLOURS[InvocationStatus.COMPLETE]
RED = RECORD_COLOURS[InvocationStatus.FAILED]
GREY = RECORD_COLOURS[InvocationStatus.WAITING_FOR_SIGNAL]
HOSTILE = "<script>alert('pwned')</script>"


@dataclass
@flow_type
class Child:
    n: int

    @flow
    async def run(self) -> int:
        return self.n * 2


@dataclass
@flow_type
class Showcase:
    """A step retried twice, a flow-level retry, a timer, a child and a signal wait."""

    # Counters the run itself counts down, so not inputs (init=False): the stored inputs of a
    # flow id stay what they were, as a flow run again under its id must give them.
    flaky_failures: int = field(default=2, init=False)
    flow_failures: int = field(default=1, init=False)

    @step(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0))
    async def flaky(self) -> str:
        if self.flaky_failures:
            self.flaky_failures -= 1
            raise RuntimeError("flaky step fails")
        return "ok"

    @flow(retry_policy=RetryPolicy(max_attempts=2, initial_interval=5))
    async def run(self) -> tuple[int, object]:
        await self.flaky()
        if self.flow_failures:
            self.flow_failures -= 1
            raise ValueError("the first flow attempt fails")
        await schedule_timer_named(30, "cool-down")
        doubled = await self.invoke(Child(2)).result()
        return doubled, await await_external_signal("approval")


@dataclass
@flow_type(name=HOSTILE)
class Hostile:
    @step(name=HOSTILE)
    async def evil(self) -> None:
        raise RuntimeError(HOSTILE)

    @flow
    async def run(self) -> None:
        await self.evil()


@dataclass
@flow_type
class Approval:
    @step
    async def prepare(self) -> str:
        return "prepared"

    @flow
    async def run(self) -> object:
        await self.prepare()
        return await await_external_signal("decision")


@pytest.fixture
def memory() -> InMemoryExecutionLog:
    return InMemoryExecutionLog()


@pytest.fixture
async def showcase(memory: InMemoryExecutionLog) -> FlowHistory:
    """The history of a Showcase flow that now waits for its signal."""
    clock = ManualClock()
    showcase = Showcase()
    for _ in range(3):  # retry backoff, then the timer, then the signal wait
        await Executor(showcase, memory, "show", clock=clock).run(lambda f: f.run())
        clock.advance(31)
    return await load_history(memory, "show")


@pytest.fixture
async def hostile(memory: InMemoryExecutionLog) -> FlowHistory:
    await Executor(Hostile(), memory, HOSTILE).run(lambda f: f.run())
    return await load_history(memory, HOSTILE)


@pytest.fixture
async def session(memory: InMemoryExecutionLog) -> AsyncIterator[Session]:
    session = Session(memory)
    try:
        yield session
    finally:
        await session.close()


@pytest.fixture
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make views believe they run in a Jupyter kernel."""
    shell = type("KernelShell", (), {"kernel": object()})()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)


def shifted(history: FlowHistory, seconds: float) -> FlowHistory:
    """The same history, every time moved by ``seconds``."""

    def move(value: float | None) -> float | None:
        return None if value is None else value + seconds

    records = tuple(
        dataclasses.replace(
            record,
            started_at=move(record.started_at),
            completed_at=move(record.completed_at),
            fire_at=move(record.fire_at),
        )
        for record in history.invocations
    )
    flow = history.flow.replace(
        created_at=history.flow.created_at + seconds, updated_at=history.flow.updated_at + seconds
    )
    return dataclasses.replace(history, flow=flow, invocations=records)


def records_of(svg: ET.Element) -> dict[str, ET.Element]:
    return {
        group.attrib["data-position"]: group
        for group in svg.iter(f"{SVG}g")
        if "pyergon-record" in group.attrib.get("class", "").split()
    }


def colours_in(element: ET.Element) -> set[str]:
    return {
        value
        for shape in element.iter()
        for name, value in shape.attrib.items()
        if name in ("fill", "stroke")
    }


def texts_in(element: ET.Element) -> str:
    return "".join(element.itertext())


_ANY = object()


async def until_value(widget: Any, wanted: object = _ANY, act: Callable[[], object] = list) -> None:
    """Do ``act``, then wait until a background task sets ``widget.value`` (to ``wanted``)."""
    reached = asyncio.Event()

    def check(change: object = None) -> None:
        if (wanted is _ANY and change is not None) or widget.value == wanted:
            reached.set()

    widget.observe(check, names="value")
    try:
        check()
        act()
        async with asyncio.timeout(10):
            await reached.wait()
    finally:
        widget.unobserve(check, names="value")


# -- the timeline's SVG -------------------------------------------------------------------------


def test_the_svg_is_well_formed_with_a_mark_per_record_coloured_by_status(
    showcase: FlowHistory,
) -> None:
    svg = ET.fromstring(timeline_from_histories(showcase).svg())

    assert svg.tag == f"{SVG}svg"
    assert svg.attrib["width"] == "760"
    marks = records_of(svg)
    assert sorted(marks) == ["0.1", "1", "2", "3", "4"]
    for record in showcase.invocations:
        mark = marks[record.position]
        assert mark.attrib["data-status"] == record.status.value
        assert RECORD_COLOURS[record.status] in colours_in(mark)
    assert GREEN in colours_in(marks["1"])
    assert GREY in colours_in(marks["4"])


def test_timers_signals_children_and_retries_have_their_own_marks(showcase: FlowHistory) -> None:
    marks = records_of(ET.fromstring(timeline_from_histories(showcase).svg()))

    timer = marks["2"]
    assert "pyergon-timer" in timer.attrib["class"]
    (span,) = timer.iter(f"{SVG}rect")
    assert span.attrib["stroke-dasharray"]
    assert "pyergon-signal" in marks["4"].attrib["class"]
    assert list(marks["4"].iter(f"{SVG}polygon"))
    assert "pyergon-flow-retry" in marks["0.1"].attrib["class"]
    assert "→ show~child-3" in texts_in(marks["3"])
    badges = [g for g in marks["1"].iter(f"{SVG}g") if "pyergon-retry" in g.attrib["class"]]
    assert [texts_in(badge).strip() for badge in badges] == ["×3"]  # noqa: RUF001 - the badge
    assert not [g for g in marks["2"].iter(f"{SVG}g") if "pyergon-retry" in g.attrib["class"]]


def test_a_timer_span_reaches_its_fire_time(showcase: FlowHistory) -> None:
    timeline = timeline_from_histories(showcase)
    svg = ET.fromstring(timeline.svg())
    timer = next(r for r in showcase.invocations if r.position == "2")
    assert timer.fire_at is not None and timer.started_at is not None
    (span,) = records_of(svg)["2"].iter(f"{SVG}rect")
    step_bar = next(records_of(svg)["1"].iter(f"{SVG}rect"))  # starts at the first start

    origin = float(step_bar.attrib["x"])
    per_second = (float(span.attrib["x"]) - origin) / (timer.started_at - showcase.flow.created_at)
    assert float(span.attrib["width"]) == pytest.approx(
        (timer.fire_at - timer.started_at) * per_second, abs=0.2
    )


def test_a_failed_record_is_red(hostile: FlowHistory) -> None:
    marks = records_of(ET.fromstring(timeline_from_histories(hostile).svg()))

    (evil,) = marks.values()
    assert evil.attrib["data-status"] == "FAILED"
    assert RED in colours_in(evil)


def test_the_html_wraps_the_svg_in_a_div_that_names_the_flows(showcase: FlowHistory) -> None:
    timeline = timeline_from_histories([showcase, showcase])

    div = ET.fromstring(timeline.html())

    assert div.tag == "div"
    assert div.attrib["class"] == "pyergon-timeline"
    assert json.loads(div.attrib["data-flow-ids"]) == ["show", "show"]
    assert len(div.findall(f"{SVG}svg")) == 1
    assert len(div.findall(f".//{SVG}g[@class='pyergon-lane']")) == 2


def test_hostile_names_and_ids_are_escaped_everywhere(hostile: FlowHistory) -> None:
    timeline = timeline_from_histories(hostile)

    for markup in (
        timeline.html(),
        hostile._repr_html_(),
        hostile._repr_mimebundle_()["text/html"],
    ):
        assert "<script" not in markup
        assert "&lt;script&gt;" in markup
    svg = ET.fromstring(timeline.svg())
    assert HOSTILE in texts_in(svg)  # shown as text, never as markup
    div = ET.fromstring(timeline.html())
    assert json.loads(div.attrib["data-flow-ids"]) == [HOSTILE]


async def test_step_reports_and_replay_results_escape_hostile_names(
    session: Session, hostile: FlowHistory
) -> None:
    stepper = session.step_through(Hostile(), f"{HOSTILE}-stepped")
    report = await stepper.run_to_end()
    replay = await session.replay(HOSTILE, Hostile)

    for markup in (report._repr_html_(), replay._repr_html_()):
        assert "<script" not in markup
        assert "&lt;script&gt;" in markup


def test_control_characters_in_names_keep_the_svg_well_formed(showcase: FlowHistory) -> None:
    records = tuple(r.replace(name=f"bell\x07{r.name}\x00") for r in showcase.invocations)

    svg = timeline_from_histories(dataclasses.replace(showcase, invocations=records)).svg()

    ET.fromstring(svg)


def test_an_empty_timeline_still_renders() -> None:
    ET.fromstring(timeline_from_histories([]).svg())
    assert repr(timeline_from_histories([])).splitlines()[0] == "Timeline of 0 flows"


# -- the text form ------------------------------------------------------------------------------


def test_the_text_form_lists_each_record_once(showcase: FlowHistory) -> None:
    assert repr(timeline_from_histories(showcase)) == "\n".join(
        [
            "Timeline of 1 flow",
            "show (Showcase) SUSPENDED, attempt 2, 5 records",
            "    0.1  TIMER   retry-after-attempt-1  COMPLETE              31.000s  "
            "flow retry after ValueError",
            "      1  STEP    flaky                  COMPLETE               0.000s  ×3",  # noqa: RUF001
            "         attempt 1 failed RuntimeError: flaky step fails",
            "         attempt 2 failed RuntimeError: flaky step fails",
            "      2  TIMER   cool-down              COMPLETE              31.000s",
            "      3  CHILD   Child                  COMPLETE               0.000s  → show~child-3",
            "      4  SIGNAL  approval               WAITING_FOR_SIGNAL    waiting",
        ]
    )


def test_the_text_form_does_not_depend_on_when_the_flow_ran(showcase: FlowHistory) -> None:
    later = shifted(showcase, 86_400 * 365.25)

    text = repr(timeline_from_histories(showcase))

    assert repr(timeline_from_histories(later)) == text
    assert "0x" not in text
    assert "1700000" not in text and "2023" not in text


def test_a_long_flow_keeps_its_first_and_last_records_around_a_counted_gap(
    showcase: FlowHistory,
) -> None:
    timeline = timeline_from_histories(showcase, max_records=2)

    lines = timeline.text().splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["0.1", "…", "4"]
    assert lines[3] == "  … 3 records …"
    svg = ET.fromstring(timeline.svg())
    assert sorted(records_of(svg)) == ["0.1", "4"]
    assert "… 3 records …" in texts_in(svg)


# -- the widget, on request ------------------------------------------------------------------------


@pytest.mark.usefixtures("fake_kernel")
def test_the_widget_comes_only_when_asked_for_and_is_built_once(showcase: FlowHistory) -> None:
    timeline = timeline_from_histories(showcase)

    assert WIDGET_VIEW_MIMETYPE not in timeline._repr_mimebundle_()
    assert timeline._widget is None

    widget = timeline.widget()
    assert "pyergon-timeline-widget" in widget._dom_classes
    assert timeline.widget() is widget
    assert WIDGET_VIEW_MIMETYPE not in timeline._repr_mimebundle_()


@pytest.mark.usefixtures("fake_kernel")
def test_without_ipywidgets_the_widget_says_what_to_install(
    showcase: FlowHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    timeline = timeline_from_histories(showcase)

    with pytest.raises(PyergonError, match=r'pip install "pyergon\[notebook\]"'):
        timeline.widget()
    assert timeline._repr_mimebundle_()["text/plain"].startswith("Timeline of 1 flow")


async def test_a_timeline_built_from_histories_cannot_refresh(showcase: FlowHistory) -> None:
    timeline = timeline_from_histories(showcase)

    with pytest.raises(PyergonError, match="cannot re-read storage"):
        await timeline.refresh()
    with pytest.raises(PyergonError, match="cannot refresh"):
        timeline.start()


# -- timelines of a session ---------------------------------------------------------------------


async def test_a_session_timeline_shows_one_lane_per_flow(
    session: Session, showcase: FlowHistory
) -> None:
    timeline = await session.timeline(["show", "show~child-3"])

    assert timeline.flow_ids == ("show", "show~child-3")
    assert (
        repr(timeline).splitlines()[-1]
        == "  show~child-3 (Child) COMPLETE, 0 records, child of show"  # right under its parent
    )
    assert (await session.timeline("show")).flow_ids == ("show",)
    assert (await session.timeline()).flow_ids == (
        "show",
        "show~child-3",
    )  # the newest, oldest first
    with pytest.raises(FlowNotFoundError):
        await session.timeline(["show", "nope"])


@pytest.mark.usefixtures("fake_kernel")
async def test_the_refresh_button_rereads_storage(session: Session) -> None:
    await session.run(Approval(), "approval")
    timeline = await session.timeline("approval")
    widget = timeline.widget()
    toolbar, picture = widget.children
    refresh, auto, _state = toolbar.children
    assert "WAITING_FOR_SIGNAL" in picture.value

    await send_signal(session.storage, "approval", "decision", "yes")
    await session.run(Approval(), "approval")
    await until_value(picture, act=refresh.click)

    assert timeline.final
    assert 'data-status="WAITING_FOR_SIGNAL"' not in picture.value
    assert "approval (Approval) COMPLETE" in repr(timeline)
    assert not auto.value


@pytest.mark.usefixtures("fake_kernel")
async def test_auto_refresh_rerenders_until_every_flow_is_final(session: Session) -> None:
    await session.run(Approval(), "approval")
    timeline = await session.timeline("approval", interval=0.01)
    toolbar, picture = timeline.widget().children
    _refresh, auto, state = toolbar.children

    auto.value = True

    assert timeline.auto_refreshing
    assert state.value == "refreshing every 0.01s"
    await send_signal(session.storage, "approval", "decision", "yes")
    await session.run(Approval(), "approval")
    await until_value(auto, False)  # the loop ends by itself once the flow is final

    assert not timeline.auto_refreshing
    assert "approval (Approval) COMPLETE" in repr(timeline)
    assert 'data-status="WAITING_FOR_SIGNAL"' not in picture.value
    assert state.value == "all flows final"


@pytest.mark.usefixtures("fake_kernel")
async def test_auto_refresh_stops_when_toggled_off(session: Session) -> None:
    await session.run(Approval(), "approval")
    timeline = await session.timeline("approval", interval=60)
    toolbar, _picture = timeline.widget().children

    toolbar.children[1].value = True
    task = timeline._auto_task
    toolbar.children[1].value = False

    assert task is not None
    await asyncio.wait([task])
    assert task.cancelled()
    assert not timeline.auto_refreshing


async def test_a_failed_refresh_shows_in_the_widget(
    session: Session, fake_kernel: None, memory: InMemoryExecutionLog
) -> None:
    await session.run(Approval(), "approval")
    timeline = await session.timeline("approval")
    toolbar, _picture = timeline.widget().children
    await memory.delete_flow("approval")

    await until_value(toolbar.children[2], act=toolbar.children[0].click)

    assert isinstance(timeline.error, FlowNotFoundError)
    assert toolbar.children[2].value.startswith("refresh failed: FlowNotFoundError")


# -- flow histories -----------------------------------------------------------------------------


async def test_a_history_renders_a_header_and_its_records(
    session: Session, showcase: FlowHistory
) -> None:
    history = await session.history("show")

    bundle = history._repr_mimebundle_()

    assert bundle["text/plain"] == history.text()
    assert bundle["text/plain"].startswith("show (")
    page = bundle["text/html"]
    assert page.startswith('<div class="pyergon-history"><b>show</b>')
    assert "attempt 2" in page and "SUSPENDED" in page
    assert page.count("<tr>") == 1 + len(history.invocations)
    assert "child show~child-3" in page
    # The step's retried errors are not its record's: they are its earlier attempts, collapsed.
    attempts = page.index('<details class="pyergon-attempts"><summary>2 earlier attempts')
    assert page.index("RuntimeError") > attempts


# -- the monitor --------------------------------------------------------------------------------


async def test_the_monitor_shows_counts_workers_progress_and_errors(session: Session) -> None:
    await session.start_workers(Child, count=2)
    ids = [await session.schedule(Child(n), f"child-{n}") for n in range(3)]
    await session.wait(ids, timeout=10)
    await session.run(Approval(), "approval")
    session.errors.append(BackgroundError("notebook-1", "x", RuntimeError(HOSTILE), 0.0))

    monitor = await session.monitor()

    text = repr(monitor)
    assert text.splitlines()[:3] == [
        "pyergon monitor of flows created since this session opened: 3 of 4 flows final (75%)",
        "  PENDING 0  RUNNING 0  SUSPENDED 1  COMPLETE 3  FAILED 0  CANCELLED 0",
        "  throughput \u2014, none to run, 1 suspended",  # the ETA leaves suspended flows out
    ]
    first, second = (worker.worker_id for worker in session.workers)
    assert f"  worker {first}: live, running 0/10, finished " in text
    assert f"  worker {second}: live, running 0/10, finished " in text
    assert "heartbeat ok" in text
    assert text.splitlines()[-1] == "  background errors: 1"
    page = monitor._repr_html_()
    assert page.startswith('<div class="pyergon-monitor">')
    assert "3 of 4 flows final (75%)" in page
    assert "width:75.0%" in page
    assert "<script" not in page and "&lt;script&gt;" in page
    assert set(monitor._repr_mimebundle_()) == {"text/plain", "text/html"}


async def test_the_monitor_names_waiting_types_no_live_worker_serves(session: Session) -> None:
    await session.start_workers(Child)
    await session.schedule(Approval(), "waits-for-a-worker")

    monitor = await session.monitor()

    assert "  no live worker serves: Approval" in repr(monitor).splitlines()
    assert "no live worker serves Approval" in monitor._repr_html_()


async def test_the_monitor_text_is_deterministic(session: Session) -> None:
    await session.start_workers(Child)
    first = repr(await session.monitor())

    assert repr(await session.monitor()) == first
    assert "0x" not in first and "s ago" not in first


async def test_an_unread_monitor_says_how_to_read_it(session: Session) -> None:
    monitor = session.monitor()

    assert repr(monitor) == "pyergon monitor: not read yet (await monitor.refresh())"
    assert (await monitor.refresh()).total == 0
    assert repr(monitor).startswith(
        "pyergon monitor of flows created since this session opened: 0 of 0 flows final\n"
    )


@pytest.mark.usefixtures("fake_kernel")
async def test_the_live_monitor_updates_its_widget_until_stopped(session: Session) -> None:
    await session.start_workers(Child)
    monitor = await session.monitor(interval=0.01)

    widget = monitor.widget()

    assert "pyergon-monitor-widget" in widget._dom_classes
    assert WIDGET_VIEW_MIMETYPE not in monitor._repr_mimebundle_()
    (bar, label), body, state = widget.children[0].children, *widget.children[1:]
    assert monitor.live and state.value == "live, every 0.01s"
    assert label.value == "0 of 0 flows final"

    await session.schedule(Child(1), "one")
    await until_value(label, "1 of 1 flows final (100%)")

    assert (bar.value, bar.max) == (1, 1)
    assert "COMPLETE<br><b>1</b>" in body.value

    task = monitor.refresher
    monitor.stop()

    assert task is not None and not monitor.live
    await asyncio.wait([task])
    assert task.cancelled()
    assert state.value == "stopped"


@pytest.mark.usefixtures("fake_kernel")
async def test_closing_the_session_stops_the_live_monitor(memory: InMemoryExecutionLog) -> None:
    session = Session(memory)
    monitor = await session.monitor(interval=0.01)
    monitor.widget()
    task = monitor.refresher
    assert task is not None and monitor.live

    await session.close()

    assert task.cancelled()
    assert not monitor.live
    with pytest.raises(PyergonError, match="closed"):
        monitor.start()


async def test_a_monitor_needs_a_positive_interval(session: Session) -> None:
    with pytest.raises(ValueError, match="interval"):
        session.monitor(interval=0)
    with pytest.raises(ValueError, match="interval"):
        Timeline([], interval=-1)


async def test_a_worker_beats_while_it_serves(session: Session) -> None:
    (worker,) = await session.start_workers(Child)
    await session.wait([await session.schedule(Child(1), "beat")], timeout=10)

    assert worker.last_heartbeat > 0
    assert worker.running_flow_ids == []
