"""What a timeline shows before it is drawn: which flows, in which order, which records, when.

The SVG and the text form share this: the filters (status, flow type), the collapse of many
flows to one row each (failed flows first), children right under their parent, the first and
the last records of a long flow around a counted gap, each record's attempts as time segments,
and the time window. Pure functions of the histories; no drawing here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pyergon.core.records import Attempt, Invocation, epoch_seconds
from pyergon.core.status import OperationKind, TaskStatus
from pyergon.executor._runner import FLOW_RETRY_SEQUENCE

if TYPE_CHECKING:
    from pyergon.history import FlowHistory

__all__ = [
    "COLLAPSED_ROWS",
    "Lane",
    "Segment",
    "TimelineOptions",
    "Window",
    "attempt_segments",
    "bar_end",
    "collapsed_cap",
    "empty_note",
    "flow_span",
    "is_flow_retry",
    "lanes",
    "latest_time",
    "left_out_note",
    "one_or_many",
    "ordered_records",
    "record_name",
    "shown_records",
    "unfinished",
    "window_bounds",
]

Window = tuple[float | datetime, float | datetime]
"""A time window: seconds from the first start, or datetimes (aware, or naive UTC)."""

COLLAPSED_ROWS = 200
"""The most flows a collapsed timeline draws, failed families first; a note counts the rest."""

_UNFAILED = (TaskStatus.COMPLETE, TaskStatus.CANCELLED)


def one_or_many(names: str | Iterable[str] | None) -> list[str]:
    """An option that takes one name or several (flow ids, flow types) as a list."""
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


@dataclass(frozen=True, slots=True)
class TimelineOptions:
    """What a timeline shows; see :class:`~pyergon.notebook.views.Timeline` for each option.

    Attributes:
        max_records: Records drawn per flow: the first and the last, around a counted gap.
        collapse_after: Past this many flows, one row per flow; ``None``: never collapse.
        status: Only flows in these statuses; empty: all.
        flow_type: Only flows of these types; empty: all.
        window: Only this span of time, as seconds from the first start or datetimes.
    """

    max_records: int = 200
    collapse_after: int | None = 20
    status: frozenset[TaskStatus] = frozenset()
    flow_type: frozenset[str] = frozenset()
    window: Window | None = None

    def __post_init__(self) -> None:
        if self.max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {self.max_records}")
        if self.collapse_after is not None and self.collapse_after < 0:
            raise ValueError(f"collapse_after must be >= 0 or None, got {self.collapse_after}")
        if self.window is not None:
            start, end = self.window
            if isinstance(start, datetime) is not isinstance(end, datetime):
                raise ValueError(
                    "window=(start, end) takes two datetimes or two numbers of seconds "
                    f"from the first start, got {self.window!r}"
                )
            # Compared as epoch seconds, so a naive datetime (UTC) and an aware one compare.
            if _epoch(end, 0.0) <= _epoch(start, 0.0):
                raise ValueError(f"window=(start, end) needs start < end, got {self.window!r}")

    def keeps(self, history: FlowHistory) -> bool:
        """Whether the status and type filters keep this flow."""
        flow = history.flow
        return (not self.status or flow.status in self.status) and (
            not self.flow_type or flow.flow_type in self.flow_type
        )

    def describe(self) -> str:
        """The filters and window in words, ``""`` without any (for the text form's title)."""
        facts = []
        if self.status:
            facts.append("status " + "|".join(sorted(each.value for each in self.status)))
        if self.flow_type:
            facts.append("type " + "|".join(sorted(self.flow_type)))
        if self.window is not None:
            facts.append(f"window {_window_text(self.window[0])} to {_window_text(self.window[1])}")
        return ", ".join(facts)


def empty_note(total: int, options: TimelineOptions) -> str:
    """Why a timeline shows no flow: its filters kept none of ``total``, or it was given none."""
    facts = []
    if options.status:
        facts.append("status " + "|".join(sorted(each.value for each in options.status)))
    if options.flow_type:
        facts.append("type " + "|".join(sorted(options.flow_type)))
    if not facts:
        return "no flows to show: the timeline was given none"
    wanted = " and ".join(facts)
    if total == 0:
        return f"no flows to show: no flow has {wanted}"
    if total == 1:
        return f"no flows to show: the flow given does not have {wanted}"
    return f"no flows to show: none of the {total} flows has {wanted}"


def _window_text(bound: float | datetime) -> str:
    return bound.isoformat(sep=" ") if isinstance(bound, datetime) else f"{bound:g}s"


# -- records ----------------------------------------------------------------------------------


def record_name(record: Invocation) -> str:
    """The record's name; an unnamed timer shows as ``(timer)``."""
    return record.name or f"({record.kind.value.lower()})"


def is_flow_retry(record: Invocation) -> bool:
    """Whether the record is a flow-level retry backoff (position ``0.n``)."""
    return record.sequence == FLOW_RETRY_SEQUENCE


def ordered_records(history: FlowHistory) -> list[Invocation]:
    """The records to draw, running steps included (see ``FlowHistory.records_now``)."""
    return sorted(history.records_now, key=lambda record: (record.sequence, record.sub_sequence))


def shown_records(
    records: Sequence[Invocation], max_records: int
) -> tuple[Sequence[Invocation], int, Sequence[Invocation]]:
    """The first records, how many are left out, the last records: ``max_records`` in all.

    The tail is kept because a long flow usually fails at its end.
    """
    if len(records) <= max_records:
        return records, 0, ()
    head = math.ceil(max_records / 2)
    tail = max_records - head
    return records[:head], len(records) - max_records, records[len(records) - tail :]


@dataclass(frozen=True, slots=True)
class Segment:
    """One attempt of a record as a span of time.

    Attributes:
        start: When the attempt started (epoch seconds).
        end: When it ended; for one abandoned by a crash, the last time it was seen running
            (its start if never), and ``gap_end`` is when the next attempt started.
        end_kind: How it ended, or ``"current"`` for the record's last attempt.
        attempt: The earlier attempt it draws; ``None`` for the current one.
        gap_end: For an abandoned attempt, the end of the crash gap: the next attempt's start.
        next_number: The number of the attempt that came next.
    """

    start: float
    end: float
    end_kind: Literal["failed", "abandoned", "lease lost", "current"]
    attempt: Attempt | None = None
    gap_end: float | None = None
    next_number: int = 0


def bar_end(record: Invocation, now: float) -> float:
    """Where a record's mark ends: its fire time for timers, else completion, else ``now``."""
    if record.kind is OperationKind.TIMER and record.fire_at is not None:
        return record.fire_at
    return record.completed_at if record.completed_at is not None else now


def attempt_segments(
    record: Invocation, now: float, running_since: float | None = None
) -> list[Segment]:
    """The record's attempts as spans: its earlier ones, then the current one.

    Args:
        record: A record with ``started_at`` set.
        now: Where an unfinished record ends.
        running_since: When the attempt running now started, if one runs (a heartbeat's).
    """
    assert record.started_at is not None
    end = bar_end(record, now)
    timed = [(each, each.started_at) for each in record.earlier_attempts]
    earlier = [(attempt, start) for attempt, start in timed if start is not None]
    if not earlier:
        return [Segment(record.started_at, end, "current")]
    # The current attempt started when the worker running it now says, else when the last
    # earlier one's retry was due (or, kept before that was, when it ended), else when the
    # record was first written if that is later (a first attempt abandoned before it wrote
    # any), else nobody knows: the crash gap then reaches the record's end.
    last, last_start = earlier[-1]
    current = running_since
    if current is None:
        current = last.retry_at if last.retry_at is not None else last.ended_at
    if current is None:
        current = record.started_at if record.started_at > last_start else end
    next_starts = [start for _, start in earlier[1:]] + [current]
    next_numbers = [attempt.number for attempt, _ in earlier[1:]] + [record.attempts]
    segments = []
    for (attempt, start), next_start, number in zip(
        earlier, next_starts, next_numbers, strict=True
    ):
        if attempt.ended_at is not None:
            stop, gap = attempt.ended_at, None
        else:  # nobody saw it end: running until last seen, then a gap to the next start
            stop = attempt.last_seen_at if attempt.last_seen_at is not None else start
            gap = max(next_start, stop)
        segments.append(Segment(start, max(stop, start), attempt.end, attempt, gap, number))
    segments.append(Segment(min(current, end), end, "current"))
    return segments


def latest_time(histories: Sequence[FlowHistory]) -> float:
    """The latest moment the histories know of: a deterministic "now" for fixed histories.

    ``updated_at`` is left out: storage stamps it with its own clock, which need not be the
    flow's (a ManualClock in tests and tutorials).
    """
    times = [history.flow.created_at for history in histories]
    for history in histories:
        for record in history.records_now:
            times.extend(t for t in (record.started_at, record.completed_at) if t is not None)
            for attempt in record.earlier_attempts:
                moments = (attempt.started_at, attempt.ended_at, attempt.last_seen_at)
                times.extend(t for t in moments if t is not None)
    return max(times, default=0.0)


def unfinished(history: FlowHistory) -> bool:
    """Whether the flow or one of its records is still going, so it reaches ``now``."""
    return not history.flow.status.is_final or any(
        not record.is_final for record in history.records_now
    )


def window_bounds(window: Window, origin: float) -> tuple[float, float]:
    """The window in epoch seconds; numbers count from ``origin`` (the first start)."""
    return _epoch(window[0], origin), _epoch(window[1], origin)


def _epoch(bound: float | datetime, origin: float) -> float:
    return epoch_seconds(bound) if isinstance(bound, datetime) else origin + bound


def flow_span(history: FlowHistory, now: float) -> tuple[float, float]:
    """When a flow started (created) and when its last record ended (``now`` if unfinished)."""
    records = history.records_now
    created = history.flow.created_at
    starts = [record.started_at for record in records if record.started_at is not None]
    starts += [
        attempt.started_at
        for record in records
        for attempt in record.earlier_attempts
        if attempt.started_at is not None
    ]
    ends = [bar_end(record, now) for record in records if record.started_at is not None]
    end = max(ends, default=created)
    if unfinished(history):
        end = max(end, now)
    return min([created, *starts]), max(end, created)


# -- lanes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lane:
    """One flow in the timeline, in drawing order.

    Attributes:
        history: The flow.
        depth: 0 for a flow whose parent is not shown, else one more than its parent's.
    """

    history: FlowHistory
    depth: int = 0


def _failed(history: FlowHistory) -> bool:
    flow = history.flow
    return flow.status is TaskStatus.FAILED or (
        flow.status not in _UNFAILED and flow.error is not None
    )


def lanes(histories: Sequence[FlowHistory], collapsed: bool) -> list[Lane]:
    """The flows in drawing order: each child right under its parent when both are shown.

    Collapsed, the families with a failed flow come first; otherwise the given order holds.
    """
    shown = {history.flow.flow_id for history in histories}
    children: dict[str, list[int]] = {}
    roots = []
    for index, history in enumerate(histories):
        parent = history.flow.parent_flow_id
        if parent is not None and parent in shown and parent != history.flow.flow_id:
            children.setdefault(parent, []).append(index)
        else:
            roots.append(index)
    families: list[list[Lane]] = []
    placed: set[int] = set()
    # Flows whose parents form a cycle (only made-up histories) are drawn as roots last.
    for root in [*roots, *range(len(histories))]:
        family: list[Lane] = []
        stack = [(root, 0)]
        while stack:  # depth first, children in the given order; each history drawn once
            index, depth = stack.pop()
            if index in placed:
                continue
            placed.add(index)
            history = histories[index]
            family.append(Lane(history, depth))
            below = children.get(history.flow.flow_id, [])
            stack.extend((child, depth + 1) for child in reversed(below))
        if family:
            families.append(family)
    if collapsed:
        families.sort(key=lambda family: not any(_failed(lane.history) for lane in family))
    return [lane for family in families for lane in family]


def collapsed_cap(lanes: Sequence[Lane]) -> tuple[Sequence[Lane], int]:
    """The first :data:`COLLAPSED_ROWS` collapsed lanes, and how many are left out.

    Past a few hundred rows a picture only grows (2,000 flows took 18,000 px): the failed
    flows come first, and filters narrow down the rest.
    """
    return lanes[:COLLAPSED_ROWS], max(len(lanes) - COLLAPSED_ROWS, 0)


def left_out_note(hidden: int) -> str:
    """What a collapsed timeline says of the flows it left out."""
    flows = "flow" if hidden == 1 else "flows"
    return f"… {hidden} more {flows}; filter by status, flow_type or window to see them"
