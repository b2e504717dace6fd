"""The timeline's text form: a line per record, or a line per flow when collapsed.

It holds no timestamp and no memory address, so the same flows give the same text whenever
they ran (for nbval and doctests). The SVG shares its summaries, notes and tooltips.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyergon._history_html import (
    LARGE_VALUE,
    last_lines,
    lease_loss_note,
    plain_text,
    seconds,
    value_note,
)
from pyergon._timeline_layout import (
    Lane,
    TimelineOptions,
    collapsed_cap,
    empty_note,
    is_flow_retry,
    left_out_note,
    ordered_records,
    record_name,
    shown_records,
)
from pyergon.core.records import Attempt, Invocation, StoredError
from pyergon.core.status import InvocationStatus

if TYPE_CHECKING:
    from pyergon.history import FlowHistory

__all__ = [
    "ATTEMPTS_SIGN",
    "LABEL_CHARS",
    "attempt_note",
    "clip",
    "error_note",
    "failure_note",
    "flow_summary",
    "flow_text",
    "gap_note",
    "record_tooltip",
    "text_duration",
    "timeline_text",
]

ATTEMPTS_SIGN = "\u00d7"
"""The multiplication sign of the attempts badge, as in ``\u00d73``."""

LABEL_CHARS = 36
"""Widest record name shown; longer ones end in an ellipsis."""
ERROR_CHARS = 60
"""Most characters of an error's message (its first line) the text form shows."""
_TOOLTIP_LINES = 10
"""Lines of a step's output its tooltip shows, the last ones."""
_TOOLTIP_CHARS = 400
"""The most characters of an error message, or of a line of output, a tooltip shows: every
record of the SVG carries its tooltip, so a long message must not be carried whole."""


def timeline_text(
    lanes: Sequence[Lane], total: int, options: TimelineOptions, collapsed: bool
) -> str:
    """The text form of the lanes: a title, then each flow's summary and records.

    Args:
        lanes: The flows shown, in drawing order.
        total: How many flows were given before the filters.
        options: The timeline's options.
        collapsed: One line per flow instead of one per record, for the first
            ``COLLAPSED_ROWS`` flows; a last line counts the rest.
    """
    count = len(lanes)
    title = f"Timeline of {count} flow{'' if count == 1 else 's'}"
    if count != total:
        title = f"Timeline of {count} of {total} flows"
    facts = options.describe()
    if collapsed:
        facts = ", ".join(filter(None, [facts, "collapsed: one line per flow, failed first"]))
    lines = [f"{title} ({facts})" if facts else title]
    if not lanes:
        lines.append(empty_note(total, options))
    lanes, left_out = collapsed_cap(lanes) if collapsed else (lanes, 0)
    for lane in lanes:
        indent = "  " * lane.depth
        if collapsed:
            failure = failure_note(lane.history)
            summary = flow_summary(lane.history)
            lines.append(f"{indent}{summary}{f', {failure}' if failure else ''}")
        else:
            lines.extend(indent + line for line in _text_lane(lane.history, options.max_records))
    if left_out:
        lines.append(left_out_note(left_out))
    return plain_text("\n".join(lines))  # error messages and progress may hold escapes


def flow_text(history: FlowHistory, max_records: int = 200) -> str:
    """One flow's text: its summary, then a line per record (its first and last ones)."""
    return plain_text("\n".join(_text_lane(history, max_records)))


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in an ellipsis when cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def error_note(error: StoredError, width: int = ERROR_CHARS) -> str:
    """An error in one line: its type and its message's first line, clipped to ``width``."""
    message = plain_text(error.message).strip().partition("\n")[0].rstrip()
    return f"{error.short_type}: {clip(message, width)}" if message else error.short_type


def gap_note(hidden: int) -> str:
    """The mark of the records left out of a long flow."""
    return f"… {hidden} record{'' if hidden == 1 else 's'} …"


def flow_summary(history: FlowHistory) -> str:
    """A flow in one line: id, type, status (with its error type), attempt, records, links."""
    flow = history.flow
    status = flow.status.value
    if flow.error is not None:
        status += f" ({error_note(flow.error)})"
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


def failure_note(history: FlowHistory) -> str:
    """What went wrong in a flow, in words; ``""`` if nothing did.

    As in ``failed at 3 crunch, 2 records retried, 1 attempt abandoned``.
    """
    failed = [record for record in history.records_now if record.status is InvocationStatus.FAILED]
    notes = [f"failed at {record.position} {record_name(record)}" for record in failed[:3]]
    if len(failed) > 3:
        notes.append(f"and {len(failed) - 3} more failed records")
    retried = sum(1 for record in history.records_now if record.attempts > 1)
    if retried:
        notes.append(f"{retried} record{'' if retried == 1 else 's'} retried")
    ends = Counter(
        attempt.end for record in history.records_now for attempt in record.earlier_attempts
    )
    for end in ("abandoned", "lease lost"):
        if ends[end]:
            notes.append(f"{ends[end]} attempt{'' if ends[end] == 1 else 's'} {end}")
    return ", ".join(notes)


def text_duration(record: Invocation) -> str:
    """How long a record took, or what it does now (``running``, ``waits 30.000s``)."""
    if record.started_at is None:
        return "-"
    if record.completed_at is not None:
        return seconds(record.completed_at - record.started_at)
    if record.status is InvocationStatus.WAITING_FOR_TIMER and record.fire_at is not None:
        return f"waits {seconds(record.fire_at - record.started_at)}"
    if record.status is InvocationStatus.PENDING:
        return "running"
    return "waiting"


def attempt_note(attempt: Attempt, width: int = 80) -> str:
    """An earlier attempt in one line (see :meth:`Attempt.describe`)."""
    return attempt.describe(width)


def _notes(record: Invocation, running: bool, stale: bool = False) -> list[str]:
    notes = []
    if stale:
        notes.append("stale: code changed since")
    if running and record.progress is not None:
        notes.append(record.progress.describe())
    if record.attempts > 1:
        notes.append(f"{ATTEMPTS_SIGN}{record.attempts}")
    if is_flow_retry(record):
        cause = f" after {record.error.short_type}" if record.error is not None else ""
        notes.append(f"flow retry{cause}")
    elif record.error is not None:
        # The final error's message: the only place a static output (text, PNG) can show it.
        final = record.status is InvocationStatus.FAILED
        notes.append(error_note(record.error) if final else record.error.short_type)
    if record.child_flow_id is not None:
        notes.append(f"→ {record.child_flow_id}")
    size = value_note(record.result, at_least=LARGE_VALUE)
    if size is not None:
        notes.append(size)
    return notes


def _record_line(history: FlowHistory, record: Invocation, name_width: int) -> list[str]:
    running = history.running_at(record.position) is not None
    stale = record.position in history.stale
    line = (
        f"  {record.position:>5}  {record.kind.value:<6}  "
        f"{clip(record_name(record), LABEL_CHARS):<{name_width}}  {record.status.value:<18}  "
        f"{text_duration(record):>9}  {'  '.join(_notes(record, running, stale))}"
    )
    return [line.rstrip()] + [
        f"{'':>9}{attempt_note(attempt)}" for attempt in record.earlier_attempts
    ]


def _text_lane(history: FlowHistory, max_records: int) -> list[str]:
    head, hidden, tail = shown_records(ordered_records(history), max_records)
    names = [record_name(record) for record in (*head, *tail)]
    name_width = min(max((len(name) for name in names), default=0), LABEL_CHARS)
    lines = [flow_summary(history)]
    for record in head:
        lines.extend(_record_line(history, record, name_width))
    if hidden:
        lines.append(f"  {gap_note(hidden)}")
    for record in tail:
        lines.extend(_record_line(history, record, name_width))
    return lines


def record_tooltip(record: Invocation, running: bool) -> str:
    """A record's details on hover: what it is, its timing, value, error, progress, output.

    Its value is named by size and format when it is above :data:`LARGE_VALUE` bytes.
    """
    status = "running" if running else record.status.value
    facts = [f"{record.position} {record.kind.value} {record_name(record)}: {status}"]
    took = text_duration(record)
    if took not in ("-", status):
        facts.append(took)
    if record.attempts > 1:
        facts.append(f"{record.attempts} attempts")
    if record.child_flow_id is not None:
        facts.append(f"child {record.child_flow_id}")
    size = value_note(record.result, at_least=LARGE_VALUE)
    if size is not None:
        facts.append(size)
    if record.error is not None:
        message = plain_text(record.error.message)
        facts.append(f"{record.error.short_type}: {clip(message, _TOOLTIP_CHARS)}")
    if record.progress is not None:
        facts.append(record.progress.describe())
    details = ", ".join(facts)
    for attempt in record.earlier_attempts:
        details += f"\n{attempt_note(attempt, width=_TOOLTIP_CHARS)}"
    shown, earlier = last_lines(record.output, _TOOLTIP_LINES)
    if shown:
        before = f" (… {earlier} earlier)" if earlier else ""
        details += f"\nprinted{before}:\n" + "\n".join(clip(line, _TOOLTIP_CHARS) for line in shown)
    return details
