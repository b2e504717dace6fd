"""Pure renderers of flow histories for the timeline: its SVG picture and its text form.

The SVG has a lane per flow and a row per record: steps are bars coloured by status, timers
dashed spans to their fire time, signal waits a dotted line ending in a diamond, children a
rounded bar labelled with the child's id, values a dot; retried records carry an attempts badge
and flow-level retry backoffs sit at position ``0.n``. It is self-contained (no script, no
external reference, no ids) and every text in it is escaped. The text form holds no timestamp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pyergon._history_html import (
    AMBER,
    DARK_GREY,
    FLOW_COLOURS,
    GREEN,
    GREY,
    RECORD_COLOURS,
    RED,
    escape,
    last_lines,
    lease_loss_note,
    seconds,
)
from pyergon.core.records import Invocation
from pyergon.core.status import InvocationStatus, OperationKind
from pyergon.executor._runner import FLOW_RETRY_SEQUENCE
from pyergon.history import FlowHistory

__all__ = ["ATTEMPTS_SIGN", "latest_time", "timeline_svg", "timeline_text"]

ATTEMPTS_SIGN = "\u00d7"
"""The multiplication sign of the attempts badge, as in ``\u00d73``."""

_WIDTH = 760
_PLOT_LEFT = 250
_PLOT_RIGHT = _WIDTH - 16
_AXIS_HEIGHT = 26
_FLOW_ROW = 22
_RECORD_ROW = 17
_BAR = 10
_LANE_GAP = 8
_LEGEND_HEIGHT = 28
_LABEL_CHARS = 36
_MIN_SPAN = 0.001
"""Smallest time span drawn, so flows that took no time (a ManualClock) still render."""
_TOOLTIP_LINES = 10
"""Lines of a step's output its tooltip shows, the last ones."""
_FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"


def timeline_text(histories: Sequence[FlowHistory], max_records: int) -> str:
    """One line per record: position, kind, name, status, duration (to the millisecond).

    The text holds no timestamp and no memory address, so the same flows give the same text
    whenever they ran (for nbval and doctests).
    """
    count = len(histories)
    lines = [f"Timeline of {count} flow{'' if count == 1 else 's'}"]
    for history in histories:
        lines.extend(_text_lane(history, max_records))
    return "\n".join(lines)


def timeline_svg(histories: Sequence[FlowHistory], now: float, max_records: int) -> str:
    """The histories as one SVG element; unfinished records end at ``now`` (epoch seconds)."""
    return _Drawing(histories, now, max_records).svg()


# -- text -------------------------------------------------------------------------------------


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _name(record: Invocation) -> str:
    """The record's name; an unnamed timer shows as ``(timer)``."""
    return record.name or f"({record.kind.value.lower()})"


def _is_flow_retry(record: Invocation) -> bool:
    return record.sequence == FLOW_RETRY_SEQUENCE


def _ordered(history: FlowHistory) -> list[Invocation]:
    """The records to draw, running steps included (see ``FlowHistory.records_now``)."""
    return sorted(history.records_now, key=lambda record: (record.sequence, record.sub_sequence))


def _flow_summary(history: FlowHistory) -> str:
    flow = history.flow
    status = flow.status.value
    if flow.error is not None:
        status += f" ({flow.error.short_type})"
    facts = [status]
    if flow.attempt > 1:
        facts.append(f"attempt {flow.attempt}")
    count = len(history.records_now)
    facts.append(f"{count} record{'' if count == 1 else 's'}")
    if flow.parent_flow_id is not None:
        facts.append(f"child of {flow.parent_flow_id}")
    if flow.cancel_requested:
        facts.append("cancel requested")
    lost = lease_loss_note(flow)
    if lost is not None:
        facts.append(lost)
    return f"{flow.flow_id} ({flow.flow_type}) {', '.join(facts)}"


def _text_duration(record: Invocation) -> str:
    if record.started_at is None:
        return "-"
    if record.completed_at is not None:
        return seconds(record.completed_at - record.started_at)
    if record.status is InvocationStatus.WAITING_FOR_TIMER and record.fire_at is not None:
        return f"waits {seconds(record.fire_at - record.started_at)}"
    if record.status is InvocationStatus.PENDING:
        return "running"
    return "waiting"


def _notes(record: Invocation, running: bool, stale: bool = False) -> list[str]:
    notes = []
    if stale:
        notes.append("stale: code changed since")
    if running and record.progress is not None:
        notes.append(record.progress.describe())
    if record.attempts > 1:
        notes.append(f"{ATTEMPTS_SIGN}{record.attempts}")
    if _is_flow_retry(record):
        cause = f" after {record.error.short_type}" if record.error is not None else ""
        notes.append(f"flow retry{cause}")
    elif record.error is not None:
        notes.append(record.error.short_type)
    if record.child_flow_id is not None:
        notes.append(f"→ {record.child_flow_id}")
    return notes


def _text_lane(history: FlowHistory, max_records: int) -> list[str]:
    records = _ordered(history)
    shown = records[:max_records]
    name_width = min(max((len(_name(record)) for record in shown), default=0), _LABEL_CHARS)
    lines = [_flow_summary(history)]
    for record in shown:
        running = history.running_at(record.position) is not None
        line = (
            f"  {record.position:>5}  {record.kind.value:<6}  "
            f"{_clip(_name(record), _LABEL_CHARS):<{name_width}}  {record.status.value:<18}  "
            f"{_text_duration(record):>9}  "
            f"{'  '.join(_notes(record, running, record.position in history.stale))}"
        )
        lines.append(line.rstrip())
    if len(records) > len(shown):
        lines.append(f"  … {len(records) - len(shown)} more records")
    return lines


# -- SVG --------------------------------------------------------------------------------------


def latest_time(histories: Sequence[FlowHistory]) -> float:
    """The latest moment the histories know of: a deterministic "now" for fixed histories.

    ``updated_at`` is left out: storage stamps it with its own clock, which need not be the
    flow's (a ManualClock in tests and tutorials).
    """
    times = [history.flow.created_at for history in histories]
    for history in histories:
        for record in history.records_now:
            times.extend(t for t in (record.started_at, record.completed_at) if t is not None)
    return max(times, default=0.0)


def _unfinished(history: FlowHistory) -> bool:
    return not history.flow.status.is_final or any(
        not record.is_final for record in history.records_now
    )


def _bar_end(record: Invocation, now: float) -> float:
    """Where a record's mark ends: its fire time for timers, else completion, else now."""
    if record.kind is OperationKind.TIMER and record.fire_at is not None:
        return record.fire_at
    return record.completed_at if record.completed_at is not None else now


def _nice_step(span: float) -> float:
    """A tick step of 1, 2 or 5 times a power of ten giving about six ticks over ``span``."""
    raw = span / 6
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _tick_label(offset: float, step: float) -> str:
    if step >= 3600:
        return f"{offset / 3600:g}h"
    if step >= 60:
        return f"{offset / 60:g}m"
    decimals = max(0, -math.floor(math.log10(step)))
    return f"{offset:.{decimals}f}s"


@dataclass(frozen=True, slots=True)
class _Scale:
    origin: float
    span: float

    def x(self, timestamp: float) -> float:
        fraction = (timestamp - self.origin) / self.span
        return round(_PLOT_LEFT + min(max(fraction, 0.0), 1.0) * (_PLOT_RIGHT - _PLOT_LEFT), 1)


class _Drawing:
    """Lays out and draws the SVG of a set of histories."""

    def __init__(self, histories: Sequence[FlowHistory], now: float, max_records: int) -> None:
        self.histories = histories
        self.now = now
        self.max_records = max_records
        starts = [history.flow.created_at for history in histories]
        ends = []
        for history in histories:
            for record in history.records_now:
                if record.started_at is not None:
                    starts.append(record.started_at)
                    ends.append(_bar_end(record, now))
            if _unfinished(history):
                ends.append(now)
        origin = min(starts, default=now)
        self.scale = _Scale(origin, max(max(ends, default=origin) - origin, _MIN_SPAN))

    def svg(self) -> str:
        y = _AXIS_HEIGHT
        lanes = []
        for history in self.histories:
            lanes.append(self._lane(history, y))
            count = len(history.records_now)
            shown = min(count, self.max_records)
            more = count > shown
            y += _FLOW_ROW + (shown + more) * _RECORD_ROW + _LANE_GAP
        height = y + _LEGEND_HEIGHT
        label = f"pyergon timeline of {len(self.histories)} flow(s)"
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
            f'viewBox="0 0 {_WIDTH} {height}" role="img" aria-label="{escape(label)}" '
            f'font-family="{_FONT}" font-size="11" fill="currentColor">'
            f"{self._axis(height)}{''.join(lanes)}{self._now_line(height)}"
            f"{self._legend(height - _LEGEND_HEIGHT + 8)}</svg>"
        )

    def _axis(self, height: float) -> str:
        scale = self.scale
        step = _nice_step(scale.span)
        parts = []
        count = math.floor(scale.span / step + 1e-9)
        for index in range(count + 1):
            offset = index * step
            x = scale.x(scale.origin + offset)
            parts.append(
                f'<line x1="{x}" y1="{_AXIS_HEIGHT - 6}" x2="{x}" y2="{height - _LEGEND_HEIGHT}" '
                f'stroke="currentColor" stroke-opacity="0.15"/>'
                f'<text x="{x}" y="{_AXIS_HEIGHT - 10}" text-anchor="middle">'
                f"{escape(_tick_label(offset, step))}</text>"
            )
        return (
            f'<g class="pyergon-axis"><text x="4" y="{_AXIS_HEIGHT - 10}" opacity="0.7">'
            f"seconds from the first start</text>{''.join(parts)}</g>"
        )

    def _now_line(self, height: float) -> str:
        if not any(_unfinished(history) for history in self.histories):
            return ""
        x = self.scale.x(self.now)
        return (
            f'<g class="pyergon-now"><line x1="{x}" y1="{_AXIS_HEIGHT - 6}" x2="{x}" '
            f'y2="{height - _LEGEND_HEIGHT}" stroke="{AMBER}" stroke-dasharray="2 2"/>'
            f'<text x="{x}" y="{height - _LEGEND_HEIGHT + 2}" text-anchor="end" fill="{AMBER}">'
            "now</text></g>"
        )

    def _lane(self, history: FlowHistory, top: float) -> str:
        flow = history.flow
        colour = FLOW_COLOURS[flow.status]
        summary = _flow_summary(history)
        notes = ""
        if flow.attempt > 1:
            notes += f'<tspan dx="8" font-weight="normal">attempt {flow.attempt}</tspan>'
        lost = lease_loss_note(flow)
        if lost is not None:
            notes += (
                f'<tspan class="pyergon-lease-lost" dx="8" font-weight="normal" fill="{RED}">'
                f"{escape(_clip(lost, 48))}</tspan>"
            )
        # Separated by dx, not spaces: SVG collapses white space between tspans.
        head = (
            f'<text x="4" y="{top + 15}" font-weight="bold">'
            f"<title>{escape(summary)}</title>{escape(_clip(flow.flow_id, 40))}"
            f'<tspan dx="8" font-weight="normal">{escape(_clip(flow.flow_type, 30))}</tspan>'
            f'<tspan dx="8" fill="{colour}">{escape(flow.status.value)}</tspan>{notes}</text>'
        )
        records = _ordered(history)
        rows = []
        y = top + _FLOW_ROW
        for record in records[: self.max_records]:
            running = history.running_at(record.position) is not None
            rows.append(self._record(record, y, running, record.position in history.stale))
            y += _RECORD_ROW
        if len(records) > self.max_records:
            rows.append(
                f'<text x="4" y="{y + 12}" opacity="0.7">… '
                f"{len(records) - self.max_records} more records</text>"
            )
        return (
            f'<g class="pyergon-lane" data-flow-id="{escape(flow.flow_id)}">'
            f'<line x1="0" y1="{top}" x2="{_WIDTH}" y2="{top}" stroke="currentColor" '
            f'stroke-opacity="0.3"/>{head}{"".join(rows)}</g>'
        )

    def _record(self, record: Invocation, top: float, running: bool, stale: bool) -> str:
        colour = RECORD_COLOURS[record.status]
        kind = record.kind.value.lower()
        classes = f"pyergon-record pyergon-{kind}"
        if _is_flow_retry(record):
            classes += " pyergon-flow-retry"
        if running:
            classes += " pyergon-running"
        if stale:
            classes += " pyergon-stale"
        tooltip = _tooltip(record, running)
        if stale:
            tooltip += "\nstale: made by code that has changed since; rerun recomputes it"
        parts = [
            f"<title>{escape(tooltip)}</title>",
            f'<text x="40" y="{top + 12}" text-anchor="end">{escape(record.position)}</text>',
            f'<text x="48" y="{top + 12}">{escape(_clip(_name(record), _LABEL_CHARS - 7))}</text>',
        ]
        if record.started_at is not None:
            start = self.scale.x(record.started_at)
            end = max(self.scale.x(_bar_end(record, self.now)), start + 2)
            y = top + (_RECORD_ROW - _BAR) / 2
            parts.append(self._mark(record, start, end, y, colour))
            if running:
                parts.append(self._progress(record, start, end, y))
            if stale:
                parts.append(
                    f'<rect x="{start - 1.5}" y="{y - 1.5}" width="{round(end - start + 3, 1)}" '
                    f'height="{_BAR + 3}" rx="3" fill="none" stroke="{AMBER}" '
                    'stroke-width="1.5" stroke-dasharray="3 2"/>'
                )
            parts.extend(self._annotations(record, end, top + 12, stale))
        return (
            f'<g class="{classes}" data-position="{escape(record.position)}" '
            f'data-kind="{record.kind.value}" data-status="{record.status.value}" '
            f'data-colour="{colour}">{"".join(parts)}</g>'
        )

    @staticmethod
    def _mark(record: Invocation, start: float, end: float, y: float, colour: str) -> str:
        width = round(end - start, 1)
        middle = y + _BAR / 2
        if record.kind is OperationKind.TIMER:
            return (
                f'<rect x="{start}" y="{y}" width="{width}" height="{_BAR}" fill="{colour}" '
                f'fill-opacity="0.25" stroke="{colour}" stroke-dasharray="4 2"/>'
            )
        if record.kind is OperationKind.SIGNAL:
            fill = colour if record.is_final else "none"
            return (
                f'<line x1="{start}" y1="{middle}" x2="{end}" y2="{middle}" stroke="{colour}" '
                f'stroke-width="2" stroke-dasharray="1 3"/>'
                f'<polygon points="{end},{y} {end + 5},{middle} {end},{y + _BAR} '
                f'{end - 5},{middle}" fill="{fill}" stroke="{colour}"/>'
            )
        if record.kind is OperationKind.VALUE:
            return f'<circle cx="{start}" cy="{middle}" r="3" fill="{colour}"/>'
        radius = _BAR / 2 if record.kind is OperationKind.CHILD else 2
        return (
            f'<rect x="{start}" y="{y}" width="{width}" height="{_BAR}" rx="{radius}" '
            f'fill="{colour}"/>'
        )

    @staticmethod
    def _progress(record: Invocation, start: float, end: float, y: float) -> str:
        """A running step's share done, as a darker fill from the start of its bar."""
        fraction = None if record.progress is None else record.progress.fraction
        if fraction is None:
            return ""
        width = round((end - start) * fraction, 1)
        return (
            f'<rect class="pyergon-progress" x="{start}" y="{y + 2}" width="{width}" '
            f'height="{_BAR - 4}" fill="{DARK_GREY}" fill-opacity="0.6"/>'
        )

    @staticmethod
    def _annotations(record: Invocation, end: float, baseline: float, stale: bool) -> list[str]:
        """The stale mark, retry badge and child's id, after the mark (before it near the edge)."""
        notes = []
        if stale:
            notes.append(("stale", "pyergon-stale-note", AMBER))
        if record.attempts > 1:
            notes.append((f"{ATTEMPTS_SIGN}{record.attempts}", "pyergon-retry", RED))
        if record.child_flow_id is not None:
            link = f"→ {_clip(record.child_flow_id, 30)}"
            notes.append((link, "pyergon-child-link", "currentColor"))
        if not notes:
            return []
        text = "".join(
            f'<tspan class="{css}" fill="{fill}">{escape(note)} </tspan>'
            for note, css, fill in notes
        )
        if end > _PLOT_RIGHT - 140:
            return [f'<text x="{end - 8}" y="{baseline}" text-anchor="end">{text}</text>']
        return [f'<text x="{end + 8}" y="{baseline}">{text}</text>']

    @staticmethod
    def _legend(y: float) -> str:
        items = [
            f'<rect x="0" y="0" width="14" height="{_BAR}" rx="2" fill="{GREEN}"/>',
            "complete",
            f'<rect x="0" y="0" width="14" height="{_BAR}" rx="2" fill="{RED}"/>',
            "failed",
            f'<rect x="0" y="0" width="14" height="{_BAR}" rx="2" fill="{AMBER}"/>',
            "running",
            f'<rect x="0" y="0" width="14" height="{_BAR}" rx="2" fill="{GREY}"/>',
            "waiting",
            f'<rect x="0" y="0" width="14" height="{_BAR}" fill="{GREY}" fill-opacity="0.25" '
            f'stroke="{GREY}" stroke-dasharray="4 2"/>',
            "timer",
            f'<polygon points="7,0 12,5 7,10 2,5" fill="{GREY}"/>',
            "signal",
            f'<rect x="0" y="0" width="14" height="{_BAR}" rx="5" fill="{GREY}"/>',
            "child",
            f'<text x="0" y="9" fill="{RED}">{ATTEMPTS_SIGN}n</text>',
            "attempts",
            f'<rect x="1" y="0" width="12" height="{_BAR}" rx="2" fill="none" stroke="{AMBER}" '
            'stroke-dasharray="3 2"/>',
            "stale",
        ]
        parts = []
        x = 4
        for index in range(0, len(items), 2):
            swatch, name = items[index], items[index + 1]
            parts.append(
                f'<g transform="translate({x},{y})">{swatch}'
                f'<text x="18" y="9">{escape(name)}</text></g>'
            )
            x += 26 + 7 * len(name)
        return f'<g class="pyergon-legend">{"".join(parts)}</g>'


def _tooltip(record: Invocation, running: bool) -> str:
    """A record's details on hover: what it is, its timing and error, progress, last output."""
    status = "running" if running else record.status.value
    facts = [f"{record.position} {record.kind.value} {_name(record)}: {status}"]
    took = _text_duration(record)
    if took not in ("-", status):
        facts.append(took)
    if record.attempts > 1:
        facts.append(f"{record.attempts} attempts")
    if record.child_flow_id is not None:
        facts.append(f"child {record.child_flow_id}")
    if record.error is not None:
        facts.append(f"{record.error.short_type}: {record.error.message}")
    if record.progress is not None:
        facts.append(record.progress.describe())
    details = ", ".join(facts)
    shown, earlier = last_lines(record.output, _TOOLTIP_LINES)
    if shown:
        before = f" (… {earlier} earlier)" if earlier else ""
        details += f"\nprinted{before}:\n" + "\n".join(shown)
    return details
