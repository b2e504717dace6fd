"""A flow's history as escaped HTML, with the escaping, colours and notes every view shares.

``FlowHistory._repr_html_`` renders with :func:`history_html`; the notebook views (timeline,
monitor) draw with the same :func:`escape`, :func:`seconds` and colours. No notebook import.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pyergon.core.records import Invocation, ScheduledFlow, StepProgress
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.serialization import payload_info

if TYPE_CHECKING:
    from pyergon.history import FlowHistory

__all__ = [
    "AMBER",
    "DARK_GREY",
    "FLOW_COLOURS",
    "GREEN",
    "GREY",
    "LARGE_VALUE",
    "OUTPUT_LINES",
    "RECORD_COLOURS",
    "RED",
    "earlier_attempts_html",
    "escape",
    "history_html",
    "last_lines",
    "lease_loss_note",
    "line_count",
    "output_html",
    "output_lines",
    "plain_text",
    "progress_bar_html",
    "seconds",
    "step_progress_html",
    "value_note",
]

LARGE_VALUE = 100_000
"""Bytes from which the timeline and a history's rows say how large a record's value is and in
what format; smaller values go unmentioned, so that small steps stay uncluttered."""

GREEN, RED, AMBER, GREY, DARK_GREY = "#2e7d32", "#c62828", "#f9a825", "#9e9e9e", "#616161"

RECORD_COLOURS: Mapping[InvocationStatus, str] = {
    InvocationStatus.COMPLETE: GREEN,
    InvocationStatus.FAILED: RED,
    InvocationStatus.PENDING: AMBER,
    InvocationStatus.WAITING_FOR_TIMER: GREY,
    InvocationStatus.WAITING_FOR_SIGNAL: GREY,
    InvocationStatus.WAITING_FOR_CHILD: GREY,
}
"""The colour of a record in every view: done green, failed red, running amber, waiting grey."""

FLOW_COLOURS: Mapping[TaskStatus, str] = {
    TaskStatus.PENDING: AMBER,
    TaskStatus.RUNNING: AMBER,
    TaskStatus.SUSPENDED: GREY,
    TaskStatus.COMPLETE: GREEN,
    TaskStatus.FAILED: RED,
    TaskStatus.CANCELLED: DARK_GREY,
}
"""The colour of a flow status in every view."""

OUTPUT_LINES = 20
"""Lines of a step's output the views show (the last ones); the whole text is in storage."""

_UNSHOWABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
"""Characters that are not allowed in XML (and so break an SVG) or cannot be encoded."""


def escape(text: object) -> str:
    """Return ``str(text)`` safe inside HTML or SVG text and quoted attributes.

    Control characters and lone surrogates, which no XML document may hold, become U+FFFD.
    """
    return html.escape(_UNSHOWABLE.sub("\ufffd", str(text)), quote=True)


def lease_loss_note(flow: ScheduledFlow) -> str | None:
    """What every view says of a flow whose workers lost its lease; ``None`` if none did.

    As in ``lease lost \u00d72 (last by worker-a)``: a worker stopped holding the flow while it
    ran it (it died, or could not renew its lease in time), and the flow was taken from it.
    """
    if not flow.lease_losses:
        return None
    last = f" (last by {flow.last_lost_by})" if flow.last_lost_by is not None else ""
    return f"lease lost \u00d7{flow.lease_losses}{last}"


_TERMINAL_CODES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
"""Terminal escape sequences (colours, cursor moves, titles) that printed text may hold."""
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def output_lines(text: str | None) -> list[str]:
    """What a step printed, as lines a terminal would show.

    Lines end at new lines only; a carriage return starts its line again (a progress bar
    redrawn in place shows its last state); escape sequences and other control characters
    are dropped, so no view can be restyled or moved about by what a step printed.
    """
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [
        _CONTROLS.sub("", _TERMINAL_CODES.sub("", line.rstrip("\r").rpartition("\r")[2]))
        for line in lines
    ]


def plain_text(text: str) -> str:
    """``text`` for a ``text/plain`` view, so an error message cannot restyle a terminal.

    Terminal escape sequences and control characters other than new lines and tabs are
    dropped.
    """
    return _CONTROLS.sub("", _TERMINAL_CODES.sub("", text))


def line_count(text: str | None) -> int:
    """How many lines ``text`` holds (a last line without its new line counts)."""
    return len(output_lines(text))


def last_lines(text: str | None, count: int) -> tuple[list[str], int]:
    """The last ``count`` of :func:`output_lines` of ``text``, and how many come before them."""
    lines = output_lines(text)
    shown = lines[-count:] if count > 0 else []
    return shown, len(lines) - len(shown)


def seconds(value: float) -> str:
    """A duration rounded to the millisecond, as in ``1.250s``."""
    return f"{max(value, 0.0):.3f}s"


def _offset(timestamp: float | None, origin: float) -> str:
    return "" if timestamp is None else f"+{seconds(timestamp - origin)}"


def progress_bar_html(fraction: float, *, width: int = 320, colour: str = GREEN) -> str:
    """A static HTML bar ``width`` pixels wide, filled to ``fraction`` (0 to 1)."""
    percent = 100 * min(max(fraction, 0.0), 1.0)
    return (
        f'<div class="pyergon-progress" style="display:inline-block;vertical-align:middle;'
        f"width:{width}px;height:10px;background:rgba(128,128,128,0.25);border-radius:3px;"
        f'margin:4px 0"><div style="width:{percent:.1f}%;height:10px;background:{colour};'
        'border-radius:3px"></div></div>'
    )


def step_progress_html(progress: StepProgress, *, width: int = 120) -> str:
    """A step's progress: a bar when it has a total, then its text (``37/100 · loading``)."""
    fraction = progress.fraction
    bar = "" if fraction is None else progress_bar_html(fraction, width=width, colour=AMBER) + " "
    return f"{bar}{escape(progress.describe())}"


def output_html(text: str, *, lines: int = OUTPUT_LINES) -> str:
    """What a step printed, collapsed: a summary with its line count, its last ``lines``."""
    shown, earlier = last_lines(text, lines)
    count = len(shown) + earlier
    before = f"… {earlier} earlier line(s)\n" if earlier else ""
    return (
        f'<details class="pyergon-output"><summary>printed {count} '
        f"line{'' if count == 1 else 's'}</summary>"
        '<pre style="font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;'
        f'margin:2px 0;white-space:pre-wrap">{escape(before)}{escape(chr(10).join(shown))}'
        "</pre></details>"
    )


def earlier_attempts_html(record: Invocation, origin: float) -> str:
    """A record's earlier attempts, collapsed: a summary with their count, a line for each.

    Each line is the attempt's description (:meth:`~pyergon.core.records.Attempt.describe`)
    after its start, as an offset from ``origin``; its whole error message is the line's
    tooltip.
    """
    attempts = record.earlier_attempts
    lines = []
    for attempt in attempts:
        tip = "" if attempt.error is None else f' title="{escape(attempt.error.message)}"'
        lines.append(
            f"<div{tip}>{_offset(attempt.started_at, origin)} {escape(attempt.describe())}</div>"
        )
    count = len(attempts)
    return (
        f'<details class="pyergon-attempts"><summary>{count} earlier '
        f"attempt{'' if count == 1 else 's'}</summary>{''.join(lines)}</details>"
    )


def value_note(data: bytes | None, *, at_least: int = 0) -> str | None:
    """A stored value's size and format, read from its record, never loaded.

    Args:
        data: The stored payload (a record's ``result``, a flow's ``result`` or ``payload``).
        at_least: Say nothing of a value smaller than this many bytes.

    Returns:
        A phrase such as ``"208.1 MB parquet artifact"`` or ``"1.2 kB pickle"``; ``None``
        without a value or below ``at_least``.
    """
    info = payload_info(data)
    if info is None or info.size < at_least:
        return None
    return info.describe()


def _record_row(record: Invocation, origin: float, running: bool) -> str:
    took = (
        seconds(record.completed_at - record.started_at)
        if record.started_at is not None and record.completed_at is not None
        else ""
    )
    details = []
    if record.fire_at is not None:
        details.append(f"fires {_offset(record.fire_at, origin)}")
    if record.child_flow_id is not None:
        details.append(f"child {escape(record.child_flow_id)}")
    size = value_note(record.result, at_least=LARGE_VALUE)
    if size is not None:
        details.append(escape(size))
    if record.error is not None:
        details.append(f"{escape(record.error.short_type)}: {escape(record.error.message)}")
    if record.earlier_attempts:
        details.append(earlier_attempts_html(record, origin))
    if record.progress is not None:
        details.append(step_progress_html(record.progress))
    if record.output:
        details.append(output_html(record.output))
    colour = RECORD_COLOURS[record.status]
    status = "running" if running else record.status.value
    return (
        f"<tr><td>{escape(record.position)}</td><td>{escape(record.kind.value)}</td>"
        f"<td>{escape(record.name)}</td>"
        f'<td style="color:{colour}">{escape(status)}</td>'
        f"<td>{record.attempts}</td><td>{_offset(record.started_at, origin)}</td>"
        f"<td>{took}</td><td>{'; '.join(details)}</td></tr>"
    )


def history_html(history: FlowHistory) -> str:
    """A flow's header and its records table as escaped HTML; times are offsets from creation.

    Steps running now are rows too, with a bar of their progress; what a step printed is in a
    collapsed ``<details>`` of its row (the last :data:`OUTPUT_LINES` lines).
    """
    flow = history.flow
    colour = FLOW_COLOURS[flow.status]
    facts = [f"type <code>{escape(flow.flow_type)}</code>", f"attempt {flow.attempt}"]
    if flow.parent_flow_id is not None:
        facts.append(f"child of <code>{escape(flow.parent_flow_id)}</code>")
    if flow.worker_id is not None:
        facts.append(f"worker <code>{escape(flow.worker_id)}</code>")
    if flow.cancel_requested:
        facts.append("cancel requested")
    lost = lease_loss_note(flow)
    if lost is not None:
        facts.append(f'<span class="pyergon-lease-lost" style="color:{RED}">{escape(lost)}</span>')
    facts.append(f"{len(history.signals)} signal(s), {len(history.children)} child flow(s)")
    if flow.status is TaskStatus.COMPLETE and flow.result is not None:
        reads = f"await session.value({flow.flow_id!r})"
        size = escape(value_note(flow.result) or "")
        facts.append(f"result {size}: <code>{escape(reads)}</code> reads it")
    error = (
        f"<pre>{escape(flow.error.short_type)}: {escape(flow.error.message)}</pre>"
        if flow.error is not None
        else ""
    )
    records = history.records_now
    rows = "".join(
        _record_row(record, flow.created_at, history.running_at(record.position) is not None)
        for record in records
    )
    table = (
        "<table><thead><tr><th>position</th><th>kind</th><th>name</th><th>status</th>"
        "<th>attempts</th><th>started</th><th>duration</th><th>detail</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if records
        else "<p>no records yet</p>"
    )
    return (
        f'<div class="pyergon-history"><b>{escape(flow.flow_id)}</b> '
        f'<span style="color:{colour}">{escape(flow.status.value)}</span> · '
        f"{' · '.join(facts)}{error}{table}</div>"
    )
