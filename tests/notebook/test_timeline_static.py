"""A timeline read where nothing can be hovered (exported HTML, a PNG, GitHub, plain text): the
final error's message shows, an empty timeline says why it is empty, the legend names only what
is drawn, and a flow's history reads as text.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from pyergon._history_html import GREEN, GREY
from pyergon.core.records import Invocation, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.history import FlowHistory
from pyergon.notebook.views import timeline_from_histories
from pyergon.testing import make_flow, make_invocation

START = 1_000.0
ERROR = StoredError("builtins.ValueError", "row 7 has no price\nTraceback line", "Traceback ...")
LONG = StoredError("builtins.ValueError", "the price of " + "a very long product name " * 20, "")


def of_class(element: ET.Element, css: str) -> list[ET.Element]:
    return [each for each in element.iter() if css in each.attrib.get("class", "").split()]


def text_of(element: ET.Element) -> str:
    return "".join(element.itertext())


def step(flow_id: str, sequence: int, name: str, **changes: object) -> Invocation:
    return make_invocation(
        sequence,
        flow_id=flow_id,
        name=name,
        status=changes.pop("status", InvocationStatus.COMPLETE),
        started_at=changes.pop("started_at", START + sequence - 1),
        completed_at=changes.pop("completed_at", START + sequence),
        **changes,
    )


def failed_job(flow_id: str = "job-03", error: StoredError = ERROR) -> FlowHistory:
    records = (
        step(flow_id, 1, "load"),
        step(flow_id, 2, "check", status=InvocationStatus.FAILED, error=error),
    )
    flow = make_flow(
        flow_id, flow_type="Job", status=TaskStatus.FAILED, created_at=START, error=error
    )
    return FlowHistory(flow, records, (), ())


def plain(flow_id: str = "sales", status: TaskStatus = TaskStatus.COMPLETE) -> FlowHistory:
    records = tuple(step(flow_id, n, f"step_{n}") for n in (1, 2, 3))
    flow = make_flow(flow_id, flow_type="Sales", status=status, created_at=START)
    return FlowHistory(flow, records, (), ())


def legend_names(svg: str) -> list[str]:
    (legend,) = of_class(ET.fromstring(svg), "pyergon-legend")
    return [text_of(entry) for entry in legend]


# -- A: the final error's message -------------------------------------------------------------


def test_the_text_names_the_final_errors_message_first_line_only() -> None:
    lines = timeline_from_histories(failed_job()).text().splitlines()

    assert lines[1] == "job-03 (Job) FAILED (ValueError: row 7 has no price), 2 records"
    assert lines[3].endswith("FAILED                 1.000s  ValueError: row 7 has no price")
    assert "Traceback" not in "\n".join(lines)


def test_a_long_message_is_clipped_in_the_text() -> None:
    text = timeline_from_histories(failed_job(error=LONG)).text()

    (line,) = [line for line in text.splitlines() if "check" in line]
    assert line.endswith("…") and "ValueError: the price of a very long" in line
    assert len(line) < 140


def test_the_picture_shows_the_message_beside_the_red_bar_and_in_the_flow_header() -> None:
    svg = ET.fromstring(timeline_from_histories(failed_job()).svg())

    (lane,) = of_class(svg, "pyergon-lane")
    notes = [text_of(note) for note in of_class(lane, "pyergon-error-note")]
    assert notes == ["ValueError: row 7 has no price"] * 2  # the header, the record's pill
    (check,) = [row for row in of_class(svg, "pyergon-record") if "check" in text_of(row)]
    (pill,) = of_class(check, "pyergon-error-note")
    assert pill.find("{http://www.w3.org/2000/svg}rect") is not None


def test_a_long_message_is_clipped_to_fit_the_picture() -> None:
    svg = timeline_from_histories(failed_job(error=LONG)).svg()
    root = ET.fromstring(svg)

    notes = of_class(root, "pyergon-error-note")
    assert len(notes) == 2  # the flow header's and the failed record's
    for note in notes:
        assert text_of(note).endswith("…")
        for rect in note.iter("{http://www.w3.org/2000/svg}rect"):
            right = float(rect.attrib["x"]) + float(rect.attrib["width"])
            assert right <= float(root.attrib["width"])
        # Monospace at 11 px (6.6 px a character) from the header's start.
        assert len(text_of(note)) * 6.6 < 760


def test_a_collapsed_row_of_a_failed_flow_names_its_error() -> None:
    flows = [failed_job(f"job-{n:02}") for n in range(3)]

    timeline = timeline_from_histories(flows, collapse_after=1)
    rows = of_class(ET.fromstring(timeline.svg()), "pyergon-flow-row")

    for row in rows:
        (note,) = of_class(row, "pyergon-error-note")
        assert text_of(note).startswith("ValueError: row 7")
    assert "job-00 (Job) FAILED (ValueError: row 7 has no price)" in timeline.text()


# -- C: an empty timeline -------------------------------------------------------------------


def test_a_timeline_whose_filters_keep_no_flow_says_so_and_why() -> None:
    timeline = timeline_from_histories([plain("a"), plain("b")], status="failed")

    assert timeline.text() == (
        "Timeline of 0 of 2 flows (status FAILED)\n"
        "no flows to show: none of the 2 flows has status FAILED"
    )
    svg = ET.fromstring(timeline.svg())
    (empty,) = of_class(svg, "pyergon-empty")
    assert text_of(empty) == "no flows to show: none of the 2 flows has status FAILED"
    assert not of_class(svg, "pyergon-axis") and not of_class(svg, "pyergon-legend")


def test_a_timeline_of_no_flows_at_all_says_so() -> None:
    timeline = timeline_from_histories([])

    assert timeline.text() == "Timeline of 0 flows\nno flows to show: the timeline was given none"
    assert "no flows to show" in timeline.svg()
    one = timeline_from_histories(plain(), status="failed")
    assert one.text().endswith("no flows to show: the flow given does not have status FAILED")
    only_failed = timeline_from_histories([], status="failed", flow_type="Sales")
    assert only_failed.text().endswith("no flows to show: no flow has status FAILED and type Sales")


# -- D: the legend ----------------------------------------------------------------------------


def test_the_legend_of_a_plain_flow_names_only_what_is_drawn() -> None:
    assert legend_names(timeline_from_histories(plain()).svg()) == ["complete"]
    assert legend_names(timeline_from_histories(failed_job()).svg()) == ["complete", "failed"]


def test_the_attempts_key_is_the_pill_the_picture_draws() -> None:
    retried = plain()
    records = (retried.invocations[0].replace(attempts=3), *retried.invocations[1:])
    svg = timeline_from_histories(FlowHistory(retried.flow, records, (), ())).svg()

    (legend,) = of_class(ET.fromstring(svg), "pyergon-legend")
    (key,) = of_class(legend, "pyergon-retry")
    (badge,) = of_class(of_class(ET.fromstring(svg), "pyergon-record")[0], "pyergon-retry")
    assert text_of(key) == "\u00d7n" and text_of(badge) == "\u00d73"
    assert [(e.tag, e.attrib.get("fill")) for e in key] == [
        (e.tag, e.attrib.get("fill")) for e in badge
    ]
    assert legend_names(svg) == ["complete", "\u00d7nattempts"]


def test_a_fired_timer_is_green_whether_its_flow_runs_on_or_has_completed() -> None:
    def with_timer(status: TaskStatus, timer_status: InvocationStatus) -> FlowHistory:
        timer = make_invocation(
            2,
            flow_id="t",
            name="pause",
            kind=OperationKind.TIMER,
            status=timer_status,
            started_at=START + 1,
            fire_at=START + 2,
            completed_at=START + 2 if timer_status is InvocationStatus.COMPLETE else None,
        )
        records = (step("t", 1, "load"), timer, step("t", 3, "save", started_at=START + 2.5))
        flow = make_flow("t", status=status, created_at=START)
        return FlowHistory(flow, records, (), ())

    def timer_colour(history: FlowHistory, now: float) -> str:
        svg = ET.fromstring(timeline_from_histories(history, now=now).svg())
        (timer,) = of_class(svg, "pyergon-timer")
        return timer.attrib["data-colour"]

    # Running on, the fired timer's record is still stored as waiting: its end is not saved yet.
    running = with_timer(TaskStatus.RUNNING, InvocationStatus.WAITING_FOR_TIMER)
    complete = with_timer(TaskStatus.COMPLETE, InvocationStatus.COMPLETE)
    assert timer_colour(running, now=START + 4) == GREEN
    assert timer_colour(complete, now=START + 4) == GREEN
    assert timer_colour(running, now=START + 1.5) == GREY  # not fired yet: still waiting


# -- E: a flow's history as text ------------------------------------------------------------


def test_a_history_reads_as_its_records_and_errors_in_ipython() -> None:
    history = failed_job()

    text = history.text()

    assert text.splitlines() == [
        "job-03 (Job) FAILED (ValueError: row 7 has no price), 2 records",
        "      1  STEP    load   COMPLETE               1.000s",
        "      2  STEP    check  FAILED                 1.000s  ValueError: row 7 has no price",
    ]
    assert history._repr_mimebundle_()["text/plain"] == text
    assert repr(history).startswith("FlowHistory(flow_id='job-03', status=FAILED")

    from IPython.lib.pretty import pretty

    assert pretty(history) == text


def test_terminal_escapes_in_an_error_stay_out_of_the_picture() -> None:
    from pyergon.core.records import StoredError
    from pyergon.core.status import InvocationStatus, TaskStatus
    from pyergon.history import FlowHistory
    from pyergon.notebook.views import timeline_from_histories
    from pyergon.testing import make_flow, make_invocation

    error = StoredError("builtins.ValueError", "\x1b[31mboom\x1b[0m")
    failed = make_invocation(
        1,
        flow_id="loud",
        status=InvocationStatus.FAILED,
        error=error,
        started_at=1_000.0,
        completed_at=1_001.0,
    )
    history = FlowHistory(
        make_flow("loud", status=TaskStatus.FAILED, error=error), (failed,), (), ()
    )

    svg = timeline_from_histories(history).svg()

    assert "ValueError: boom" in svg
    assert "\ufffd[31m" not in svg and "[31m" not in svg
