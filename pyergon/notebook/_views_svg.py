"""The timeline's SVG picture: a lane per flow and a row per record, or a row per flow.

Steps are bars coloured by status, timers dashed spans to their fire time, signal waits a
dotted line ending in a diamond, children a rounded bar linked to the child's lane, values a
dot; a record's earlier attempts are segments before its last one (failed red, abandoned
hatched up to a crash-gap mark, lease lost outlined), badges are pills beside the bars. Past
``collapse_after`` flows each flow is one summary bar. Colours are explicit on an opaque white
background, so the same SVG reads in dark themes and as a PNG; it is self-contained (no script,
no external reference, no ids) and every text in it is escaped.
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
    lease_loss_note,
    seconds,
)
from pyergon._timeline_layout import (
    Lane,
    Segment,
    TimelineOptions,
    attempt_segments,
    collapsed_cap,
    empty_note,
    flow_span,
    is_flow_retry,
    left_out_note,
    ordered_records,
    record_name,
    shown_records,
    unfinished,
    window_bounds,
)
from pyergon._timeline_text import (
    LABEL_CHARS,
    attempt_note,
    clip,
    error_note,
    failure_note,
    flow_summary,
    gap_note,
    record_tooltip,
)
from pyergon.core.records import Invocation
from pyergon.core.status import InvocationStatus, OperationKind
from pyergon.history import FlowHistory
from pyergon.notebook._timeline_marks import (
    BAR,
    CHAR,
    FONT,
    GRID,
    INK,
    MUTED,
    PAPER,
    PLOT_LEFT,
    PLOT_RIGHT,
    RULE,
    STATUS_KEYS,
    WIDTH,
    empty_picture,
    error_badge,
    flow_badges,
    flow_error_badge,
    legend,
    pills,
    progress_mark,
    record_badges,
    record_mark,
)

__all__ = ["timeline_svg"]

_AXIS_HEIGHT = 26
_FLOW_ROW = 22
_RECORD_ROW = 17
_LANE_GAP = 8
_INDENT = 12
_COLLAPSED_BUDGET = 1800
"""Pixels the collapsed rows may take before they get thinner (down to ``_MIN_ROW``)."""
_MAX_ROW, _MIN_ROW = 16, 9
_MIN_SPAN = 0.001
"""Smallest time span drawn, so flows that took no time (a ManualClock) still render."""
_ATTEMPT_TICKS = {
    "failed": ("pyergon-failure-mark", RED),
    "abandoned": ("pyergon-crash-gap", DARK_GREY),
    "lease lost": ("pyergon-lease-lost-mark", AMBER),
}
"""How a collapsed row marks where an earlier attempt ended: class and colour."""
_TICK_KEYS = {
    "pyergon-failure-mark": "failure tick",
    "pyergon-crash-gap": "crash tick",
    "pyergon-lease-lost-mark": "lease tick",
}
_HATCH = 6
_MAX_HATCHES = 60


def timeline_svg(
    lanes: Sequence[Lane],
    now: float,
    options: TimelineOptions,
    collapsed: bool,
    given: int | None = None,
) -> str:
    """The lanes as one SVG element; unfinished records end at ``now`` (epoch seconds).

    Collapsed, the first ``COLLAPSED_ROWS`` flows are drawn and a note counts the rest.
    Without lanes, a line says why (the filters kept none of the ``given`` flows).
    """
    if not lanes:
        return empty_picture(empty_note(len(lanes) if given is None else given, options))
    return _Drawing(lanes, now, options, collapsed).svg()


_MINUTE, _HOUR, _DAY = 60, 3600, 86400
_CLOCK_STEPS = (
    *(1, 2, 5, 10, 15, 30),
    *(_MINUTE * n for n in (1, 2, 5, 10, 15, 30)),
    *(_HOUR * n for n in (1, 2, 3, 6, 12)),
)
"""Tick steps of a second or more, in seconds: round numbers of the unit they are read in."""
_UNITS = ((_DAY, "d"), (_HOUR, "h"), (_MINUTE, "m"), (1, "s"))


def _nice_step(span: float) -> float:
    """A tick step giving at most about six ticks over ``span`` seconds, round in its unit.

    Under a second: 1, 2 or 5 times a power of ten; then 1, 2, 5, 10, 15, 30 seconds or
    minutes; 1, 2, 3, 6, 12 hours; then days (1, 2 or 5 times a power of ten).
    """
    raw = span / 6
    if raw <= 1:
        power = 10.0 ** math.floor(math.log10(raw))
        return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = next((step for step in _CLOCK_STEPS if step >= raw), None)
    if step is not None:
        return step
    days = raw / _DAY
    power = 10.0 ** math.floor(math.log10(days))
    return _DAY * next(m * power for m in (1, 2, 5, 10) if m * power >= days)


def _tick_label(offset: float, step: float) -> str:
    """``offset`` seconds in the units of ``step``: ``0``, ``0.25s``, ``45s``, ``1m30s``, ``1d6h``.

    An offset is a whole number of steps, so it has no part smaller than the step's unit.
    """
    if abs(offset) < step / 2:
        return "0"
    if step < 1:
        decimals = max(0, -math.floor(math.log10(step) + 1e-9))
        return f"{offset:.{decimals}f}s"
    smallest = next(size for size, _ in _UNITS if step >= size)
    sign = "-" if offset < 0 else ""
    left = round(abs(offset) / smallest) * smallest
    parts = []
    for size, unit in _UNITS:
        if size < smallest:
            break
        amount, left = divmod(left, size)
        if amount:
            parts.append(f"{amount:g}{unit}")
    return sign + "".join(parts)


@dataclass(frozen=True, slots=True)
class _Scale:
    """Maps epoch seconds to x; ``first`` is the first start, which the axis counts from."""

    first: float
    origin: float
    span: float

    def x(self, timestamp: float) -> float:
        fraction = (timestamp - self.origin) / self.span
        return round(PLOT_LEFT + min(max(fraction, 0.0), 1.0) * (PLOT_RIGHT - PLOT_LEFT), 1)

    def shows(self, start: float, end: float) -> bool:
        """Whether a span from ``start`` to ``end`` meets the window."""
        return end >= self.origin and start <= self.origin + self.span


def _scale(spans: Sequence[tuple[float, float]], now: float, options: TimelineOptions) -> _Scale:
    first = min((start for start, _ in spans), default=now)
    last = max((end for _, end in spans), default=first)
    if options.window is not None:
        low, high = window_bounds(options.window, first)
        return _Scale(first, low, max(high - low, _MIN_SPAN))
    return _Scale(first, first, max(last - first, _MIN_SPAN))


class _Drawing:
    """Lays out and draws the SVG of a set of lanes."""

    def __init__(
        self, lanes: Sequence[Lane], now: float, options: TimelineOptions, collapsed: bool
    ) -> None:
        self.total = len(lanes)
        self.lanes, self.left_out = collapsed_cap(lanes) if collapsed else (lanes, 0)
        self.now = now
        self.options = options
        self.collapsed = collapsed
        self.spans = [flow_span(lane.history, now) for lane in self.lanes]
        """Each flow's first start and last end, in lane order."""
        self.scale = _scale(self.spans, now, options)
        self.bottom = float(_AXIS_HEIGHT)
        """Where the lanes end; known once they are drawn."""
        self.lane_tops: dict[str, float] = {}
        self.shown: set[str] = set()
        """The marks drawn, by their legend key: the legend names only these."""
        self.links: list[tuple[float, float, str]] = []
        """Child records to link to their child's lane: x, y of the record's bar, child id."""

    def svg(self) -> str:
        body = self._collapsed_rows() if self.collapsed else self._lanes()
        bottom = self.bottom
        key, key_height = legend(bottom + 16, self.shown)  # below the "now" under the plot
        height = math.ceil(bottom + 16 + key_height)  # whole pixels, for PNG renderers
        label = f"pyergon timeline of {self.total} flow(s)"
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(label)}" '
            f'font-family="{FONT}" font-size="11" fill="{INK}">'
            f'<rect class="pyergon-paper" x="0" y="0" width="{WIDTH}" height="{height}" '
            f'fill="{PAPER}"/>{self._axis(bottom)}{body}{self._links()}'
            f"{self._now_line(bottom)}{key}</svg>"
        )

    # -- frame --------------------------------------------------------------------------------

    def _axis(self, bottom: float) -> str:
        scale = self.scale
        step = _nice_step(scale.span)
        parts = []
        low = scale.origin - scale.first
        first_tick = math.ceil(low / step - 1e-9)
        count = math.floor((low + scale.span) / step + 1e-9) - first_tick
        for index in range(first_tick, first_tick + count + 1):
            offset = index * step
            x = scale.x(scale.first + offset)
            parts.append(
                f'<line x1="{x}" y1="{_AXIS_HEIGHT - 6}" x2="{x}" y2="{bottom}" '
                f'stroke="{GRID}"/><text x="{x}" y="{_AXIS_HEIGHT - 10}" '
                f'text-anchor="middle">{escape(_tick_label(offset, step))}</text>'
            )
        return (
            f'<g class="pyergon-axis"><text x="4" y="{_AXIS_HEIGHT - 10}" fill="{MUTED}">'
            f"time from the first start</text>{''.join(parts)}</g>"
        )

    def _now_line(self, bottom: float) -> str:
        if not any(unfinished(lane.history) for lane in self.lanes):
            return ""
        if not self.scale.shows(self.now, self.now):
            return ""
        x = self.scale.x(self.now)
        return (
            f'<g class="pyergon-now"><line x1="{x}" y1="{_AXIS_HEIGHT - 6}" x2="{x}" '
            f'y2="{bottom}" stroke="{AMBER}" stroke-dasharray="2 2"/>'
            f'<text x="{x}" y="{bottom + 10}" text-anchor="end" fill="{MUTED}">now</text></g>'
        )

    def _links(self) -> str:
        """A connector from each child record down to its child's lane, where it is shown."""
        parts = []
        for x, y, child in self.links:
            top = self.lane_tops.get(child)
            if top is None or top <= y:
                continue
            parts.append(
                f'<path class="pyergon-child-connector" d="M{x},{y} V{top + 11} h6" fill="none" '
                f'stroke="{DARK_GREY}" stroke-dasharray="3 2"><title>'
                f"{escape(f'child {child}')}</title></path>"
            )
        return f'<g class="pyergon-links">{"".join(parts)}</g>' if parts else ""

    # -- lanes --------------------------------------------------------------------------------

    def _lanes(self) -> str:
        y = float(_AXIS_HEIGHT)
        drawn = []
        for lane in self.lanes:
            markup, y = self._lane(lane, y)
            drawn.append(markup)
        self.bottom = y
        return "".join(drawn)

    def _lane(self, lane: Lane, top: float) -> tuple[str, float]:
        history = lane.history
        flow = history.flow
        self.lane_tops.setdefault(flow.flow_id, top)
        colour = FLOW_COLOURS[flow.status]
        indent = 4 + _INDENT * lane.depth
        arrow = "↳ " if lane.depth else ""
        notes = ""
        if flow.attempt > 1:
            notes += f'<tspan dx="8" font-weight="normal">attempt {flow.attempt}</tspan>'
        lost = lease_loss_note(flow)
        if lost is not None:
            notes += (
                f'<tspan class="pyergon-lease-lost" dx="8" font-weight="normal" fill="{RED}">'
                f"{escape(clip(lost, 48))}</tspan>"
            )
        if flow.error is not None:  # the flow's error, in the room the header leaves
            used = len(arrow + clip(flow.flow_id, 40)) + len(clip(flow.flow_type, 30))
            used += (
                len(flow.status.value)
                + 4
                + (len(f"attempt {flow.attempt}") + 2) * (flow.attempt > 1)
            )
            room = int((WIDTH - 8 - indent) / CHAR) - used - (0 if lost is None else 51)
            room -= len(flow.error.short_type) + 2
            if room >= 8:
                notes += (
                    f'<tspan class="pyergon-error-note" dx="8" font-weight="normal" '
                    f'fill="{RED}">{escape(error_note(flow.error, room))}</tspan>'
                )
        # Separated by dx, not spaces: SVG collapses white space between tspans.
        head = (
            f'<text x="{indent}" y="{top + 15}" font-weight="bold">'
            f"<title>{escape(flow_summary(history))}</title>"
            f"{escape(arrow + clip(flow.flow_id, 40))}"
            f'<tspan dx="8" font-weight="normal">{escape(clip(flow.flow_type, 30))}</tspan>'
            f'<tspan dx="8" fill="{colour}">{escape(flow.status.value)}</tspan>{notes}</text>'
        )
        head_rows, hidden, tail_rows = shown_records(
            ordered_records(history), self.options.max_records
        )
        rows = []
        y = top + _FLOW_ROW
        for record in head_rows:
            rows.append(self._record(history, record, y))
            y += _RECORD_ROW
        if hidden:
            rows.append(
                f'<g class="pyergon-gap"><line x1="48" y1="{y + 8.5}" x2="{PLOT_RIGHT}" '
                f'y2="{y + 8.5}" stroke="{RULE}" stroke-dasharray="1 4"/>'
                f'<rect x="44" y="{y + 2}" width="{len(gap_note(hidden)) * CHAR + 8}" '
                f'height="13" fill="{PAPER}"/>'
                f'<text x="48" y="{y + 12}" fill="{MUTED}">{escape(gap_note(hidden))}</text></g>'
            )
            y += _RECORD_ROW
        for record in tail_rows:
            rows.append(self._record(history, record, y))
            y += _RECORD_ROW
        markup = (
            f'<g class="pyergon-lane" data-flow-id="{escape(flow.flow_id)}">'
            f'<line x1="0" y1="{top}" x2="{WIDTH}" y2="{top}" stroke="{RULE}"/>'
            f"{head}{''.join(rows)}</g>"
        )
        return markup, y + _LANE_GAP

    def _record(self, history: FlowHistory, record: Invocation, top: float) -> str:
        activity = history.running_at(record.position)
        running = activity is not None
        stale = record.position in history.stale
        colour = GREEN if self._fired(record) else RECORD_COLOURS[record.status]
        classes = f"pyergon-record pyergon-{record.kind.value.lower()}"
        if is_flow_retry(record):
            classes += " pyergon-flow-retry"
        if running:
            classes += " pyergon-running"
        if stale:
            classes += " pyergon-stale"
        tooltip = record_tooltip(record, running)
        if stale:
            tooltip += "\nstale: made by code that has changed since; rerun recomputes it"
        parts = [f"<title>{escape(tooltip)}</title>"]
        label_end: float | None = None
        since = None if activity is None else activity.started_at
        segments = [] if record.started_at is None else attempt_segments(record, self.now, since)
        if segments and self.scale.shows(segments[0].start, segments[-1].end):
            y = top + (_RECORD_ROW - BAR) / 2
            start = self.scale.x(segments[0].start)
            parts.extend(self._attempt(segment, y) for segment in segments[:-1])
            self.shown.update(segment.end_kind for segment in segments[:-1])
            self.shown.add(record.kind.value.lower())
            self.shown.add(STATUS_KEYS[colour])
            if record.attempts > 1:
                self.shown.add("attempts")
            if stale:
                self.shown.add("stale")
            current = segments[-1]
            begin = self.scale.x(current.start)
            end = max(self.scale.x(current.end), begin + 2)
            parts.append(record_mark(record, begin, end, y, colour))
            if running:
                parts.append(progress_mark(record, begin, end, y))
            if stale:
                parts.append(
                    f'<rect x="{begin - 1.5}" y="{y - 1.5}" width="{round(end - begin + 3, 1)}" '
                    f'height="{BAR + 3}" rx="3" fill="none" stroke="{AMBER}" '
                    'stroke-width="1.5" stroke-dasharray="3 2"/>'
                )
            if record.child_flow_id is not None:
                self.links.append((begin, y + BAR, record.child_flow_id))
            badges, label_end = pills(
                record_badges(record, stale), start, end, top + 12, error_badge(record)
            )
            parts.extend(badges)
        chars = LABEL_CHARS - 7
        if label_end is not None:
            chars = max(4, min(chars, int((label_end - 48) / CHAR)))
        parts[1:1] = [
            f'<text x="40" y="{top + 12}" text-anchor="end">{escape(record.position)}</text>',
            f'<text x="48" y="{top + 12}">{escape(clip(record_name(record), chars))}</text>',
        ]
        return (
            f'<g class="{classes}" data-position="{escape(record.position)}" '
            f'data-kind="{record.kind.value}" data-status="{record.status.value}" '
            f'data-colour="{colour}">{"".join(parts)}</g>'
        )

    def _fired(self, record: Invocation) -> bool:
        """Whether a timer has fired by ``now`` though its stored record still waits.

        Its flow records the end with its next save, so a running flow's fired timer is
        drawn done, as it is once saved.
        """
        return (
            record.kind is OperationKind.TIMER
            and record.status is InvocationStatus.WAITING_FOR_TIMER
            and record.fire_at is not None
            and record.fire_at <= self.now
        )

    def _attempt(self, segment: Segment, y: float) -> str:
        """An earlier attempt: failed red, abandoned hatched to a crash gap, lease lost outlined."""
        attempt = segment.attempt
        assert attempt is not None
        start = self.scale.x(segment.start)
        end = max(self.scale.x(segment.end), start + 2)
        width = round(end - start, 1)
        title = f"<title>{escape(attempt_note(attempt, width=400))}</title>"
        css = f"pyergon-attempt pyergon-attempt-{attempt.end.replace(' ', '-')}"
        if attempt.end == "failed":
            body = f'<rect x="{start}" y="{y}" width="{width}" height="{BAR}" rx="2" fill="{RED}"/>'
        elif attempt.end == "lease lost":
            body = (
                f'<rect x="{start}" y="{y}" width="{width}" height="{BAR}" rx="2" fill="{AMBER}" '
                f'fill-opacity="0.35" stroke="{RED}" stroke-dasharray="2 1"/>'
                f'<polygon points="{end - 4},{y - 3} {end + 4},{y - 3} {end},{y + 2}" '
                f'fill="{RED}"/>'
            )
        else:
            hatches = "".join(
                f'<line x1="{start + index * _HATCH}" y1="{y + BAR}" '
                f'x2="{round(start + index * _HATCH + BAR * 0.6, 1)}" y2="{y}"/>'
                for index in range(min(int(width // _HATCH) + 1, _MAX_HATCHES))
            )
            body = (
                f'<rect x="{start}" y="{y}" width="{width}" height="{BAR}" fill="{GREY}" '
                f'fill-opacity="0.3"/><g stroke="{DARK_GREY}">{hatches}</g>'
            )
        return f'<g class="{css}">{title}{body}{self._crash_gap(segment, end, y)}</g>'

    def _crash_gap(self, segment: Segment, stopped: float, y: float) -> str:
        """From where an attempt was last seen to the next attempt's start: nobody ran it.

        A zigzag marks the break where the worker was last seen; a dashed span the time lost.
        """
        if segment.gap_end is None:
            return ""
        until = max(self.scale.x(segment.gap_end), stopped)
        lost = seconds(segment.gap_end - segment.end)
        title = (
            f"crash gap: the worker stopped (a crash, a kernel restart) after it was last seen; "
            f"attempt {segment.next_number} started {lost} later"
        )
        return (
            f'<g class="pyergon-crash-gap"><title>{escape(title)}</title>'
            f'<rect x="{stopped}" y="{y + 2}" width="{round(until - stopped, 1)}" '
            f'height="{BAR - 4}" fill="{PAPER}" stroke="{GREY}" stroke-dasharray="2 2"/>'
            f'<polyline points="{stopped},{y - 3} {stopped - 3},{y + 2} {stopped + 3},{y + 6} '
            f'{stopped},{y + BAR + 3}" fill="none" stroke="{RED}" stroke-width="1.5"/></g>'
        )

    # -- collapsed ----------------------------------------------------------------------------

    def _collapsed_rows(self) -> str:
        count = len(self.lanes)
        row = max(_MIN_ROW, min(_MAX_ROW, _COLLAPSED_BUDGET // max(count, 1)))
        y = float(_AXIS_HEIGHT)
        drawn = []
        for lane, span in zip(self.lanes, self.spans, strict=True):
            self.lane_tops.setdefault(lane.history.flow.flow_id, y)
            drawn.append(self._collapsed_row(lane, span, y, row))
            y += row
        if self.left_out:
            drawn.append(
                f'<text class="pyergon-left-out" x="4" y="{y + 13}" font-size="11" fill="{MUTED}">'
                f"{escape(left_out_note(self.left_out))}</text>"
            )
            y += _FLOW_ROW
        self.bottom = y
        return f'<g class="pyergon-collapsed" font-size="{min(11, row - 1)}">{"".join(drawn)}</g>'

    def _collapsed_row(self, lane: Lane, span: tuple[float, float], top: float, row: int) -> str:
        """One flow as one bar from its first start to its end, with its failures marked."""
        history = lane.history
        flow = history.flow
        colour = FLOW_COLOURS[flow.status]
        baseline = top + row - 3
        failure = failure_note(history)
        title = flow_summary(history) + (f"\n{failure}" if failure else "")
        indent = 4 + _INDENT * lane.depth
        parts = [f"<title>{escape(title)}</title>"]
        label_end: float | None = None
        start, end = span
        if self.scale.shows(start, end):
            left, right = self.scale.x(start), self.scale.x(end)
            right = max(right, left + 2)
            bar = max(row - 5, 4)
            y = top + (row - bar) / 2
            parts.append(
                f'<rect x="{left}" y="{y}" width="{round(right - left, 1)}" height="{bar}" '
                f'rx="2" fill="{colour}" fill-opacity="0.45" stroke="{colour}"/>'
            )
            self.shown.add(STATUS_KEYS.get(colour, "cancelled"))
            parts.extend(self._failure_marks(history, y, bar))
            if row >= 12:  # thinner rows have no room for badges; the tooltip says it all
                note = flow_error_badge(history)
                drawn, label_end = pills(flow_badges(history), left, right, baseline, note)
                parts.extend(drawn)
        # The status after the id; both give way to badges that had to go left of the plot.
        char = 0.6 * min(11, row - 1)
        status_x = 170.0
        if label_end is not None:
            status_x = min(status_x, label_end - len(flow.status.value) * char)
        status = (
            f'<tspan x="{round(status_x, 1)}" fill="{colour}">{escape(flow.status.value)}</tspan>'
        )
        if status_x - indent < 8 * char:  # no room for both: the bar's colour tells the status
            status, status_x = "", label_end or status_x
        chars = max(4, int((status_x - 6 - indent) / char) - 2 * (lane.depth > 0))
        label = ("↳ " if lane.depth else "") + clip(flow.flow_id, chars)
        parts.insert(1, f'<text x="{indent}" y="{baseline}">{escape(label)}{status}</text>')
        return (
            f'<g class="pyergon-flow-row" data-flow-id="{escape(flow.flow_id)}" '
            f'data-status="{flow.status.value}">{"".join(parts)}</g>'
        )

    def _failure_marks(self, history: FlowHistory, y: float, height: float) -> list[str]:
        """Ticks on a collapsed row where its flow's records and attempts went wrong.

        Red where a record or an attempt failed, grey where a worker was last seen before it
        stopped (a crash gap), amber where a lease was lost.
        """
        marks = []
        for record in history.records_now:
            if record.status is InvocationStatus.FAILED:
                when = record.completed_at if record.completed_at is not None else record.started_at
                if when is not None:
                    marks.append((self.scale.x(when), "pyergon-failure-mark", RED))
                    self.shown.add("failure tick")
            for attempt in record.earlier_attempts:
                moments = (attempt.ended_at, attempt.last_seen_at, attempt.started_at)
                when = next((moment for moment in moments if moment is not None), None)
                if when is not None:
                    css, stroke = _ATTEMPT_TICKS[attempt.end]
                    marks.append((self.scale.x(when), css, stroke))
                    self.shown.add(_TICK_KEYS[css])
        return [
            f'<line class="{css}" x1="{x}" y1="{y - 1}" x2="{x}" y2="{y + height + 1}" '
            f'stroke="{stroke}" stroke-width="2"/>'
            for x, css, stroke in marks
        ]
