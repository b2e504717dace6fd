"""How the management commands of ``pyergon`` show flows: rich tables, a timeline, JSON.

Terminal output uses rich renderables with UTC times and short durations; ``--json`` output is
built from plain dicts with ISO-8601 UTC times, durations in seconds and payload sizes in bytes
(never the payload bytes themselves). rich is imported inside the functions that draw.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pyergon._history_html import (
    OUTPUT_LINES,
    last_lines,
    lease_loss_note,
    line_count,
    value_note,
)
from pyergon.core.records import (
    Attempt,
    Invocation,
    ScheduledFlow,
    SignalRecord,
    StepProgress,
    StoredError,
)
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.core.workers import StepActivity
from pyergon.history import FlowHistory
from pyergon.serialization import payload_info

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table

__all__ = [
    "count_line",
    "flow_json",
    "flows_table",
    "format_duration",
    "format_time",
    "history_json",
    "history_view",
    "invocation_json",
    "progress_json",
    "status_markup",
    "timeline_lines",
]

_STATUS_STYLES: Mapping[str, str] = {
    TaskStatus.PENDING: "yellow",
    TaskStatus.RUNNING: "cyan",
    TaskStatus.SUSPENDED: "magenta",
    TaskStatus.COMPLETE: "green",
    TaskStatus.FAILED: "bold red",
    TaskStatus.CANCELLED: "dim",
    InvocationStatus.WAITING_FOR_TIMER: "magenta",
    InvocationStatus.WAITING_FOR_SIGNAL: "magenta",
    InvocationStatus.WAITING_FOR_CHILD: "magenta",
}
_TIMELINE_WIDTH = 32
"""Characters of the timeline's lane; the whole life of the flow spans it."""
_PROGRESS_WIDTH = 20
"""Characters of a running step's progress bar."""
_WAITING_KIND = {
    InvocationStatus.WAITING_FOR_TIMER: "timer",
    InvocationStatus.WAITING_FOR_SIGNAL: "signal",
    InvocationStatus.WAITING_FOR_CHILD: "child flow",
}


# -- text helpers ------------------------------------------------------------------------------


def format_time(timestamp: float | None, *, date: bool = True) -> str:
    """``2024-05-01 12:34:56`` in UTC (``12:34:56.120`` without the date), or ``-``."""
    if timestamp is None:
        return "-"
    moment = datetime.fromtimestamp(timestamp, UTC)
    if date:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def format_duration(seconds: float | None) -> str:
    """A short human duration: ``850ms``, ``1.2s``, ``3m05s``, ``2h10m``, ``3d04h``; or ``-``."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 0.01:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _offset(seconds: float) -> str:
    """Time since the flow started, as in ``+0.120s`` (``+3m05s`` past a minute)."""
    return f"+{seconds:.3f}s" if seconds < 60 else f"+{format_duration(seconds)}"


def status_markup(status: str) -> str:
    """``status`` wrapped in rich markup of its colour."""
    style = _STATUS_STYLES.get(status)
    return status if style is None else f"[{style}]{status}[/]"


def _escape(text: str | None) -> str:
    from rich.markup import escape

    return "-" if text is None else escape(text)


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _flow_duration(flow: ScheduledFlow) -> float | None:
    return flow.updated_at - flow.created_at if flow.status.is_final else None


def _record_duration(record: Invocation) -> float | None:
    if record.started_at is None or record.completed_at is None:
        return None
    return record.completed_at - record.started_at


# -- JSON --------------------------------------------------------------------------------------


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def _size(payload: bytes | None) -> int | None:
    """A stored value's size: an artifact's for a value kept apart, read without loading it."""
    info = payload_info(payload)
    return None if info is None else info.size


def _value_json(prefix: str, payload: bytes | None) -> dict[str, Any]:
    """``{prefix}_bytes``, ``{prefix}_format`` and ``{prefix}_artifact`` of a stored value."""
    info = payload_info(payload)
    return {
        f"{prefix}_bytes": None if info is None else info.size,
        f"{prefix}_format": None if info is None else info.format,
        f"{prefix}_artifact": None if info is None else info.artifact,
    }


def _error_json(error: StoredError | None, *, traceback: bool) -> dict[str, Any] | None:
    if error is None:
        return None
    described: dict[str, Any] = {"type": error.type_name, "message": error.message}
    if traceback:
        described["traceback"] = error.traceback
    return described


def flow_json(flow: ScheduledFlow, *, traceback: bool = False) -> dict[str, Any]:
    """A flow as a JSON-ready dict; ``traceback`` adds its error's traceback text."""
    return {
        "flow_id": flow.flow_id,
        "flow_type": flow.flow_type,
        "status": flow.status.value,
        "created_at": _iso(flow.created_at),
        "updated_at": _iso(flow.updated_at),
        "duration_seconds": _flow_duration(flow),
        "attempt": flow.attempt,
        "wake_at": _iso(flow.wake_at),
        "worker_id": flow.worker_id,
        "lease_owner": flow.lease_owner,
        "lease_expires_at": _iso(flow.lease_expires_at),
        "lease_losses": flow.lease_losses,
        "last_lost_by": flow.last_lost_by,
        "parent_flow_id": flow.parent_flow_id,
        "parent_position": flow.parent_sequence,
        "cancel_requested": flow.cancel_requested,
        "error": _error_json(flow.error, traceback=traceback),
        "payload_bytes": _size(flow.payload),
        **_value_json("result", flow.result),
    }


def invocation_json(record: Invocation) -> dict[str, Any]:
    """A recorded operation as a JSON-ready dict, its result reduced to a size."""
    return {
        "position": record.position,
        "sequence": record.sequence,
        "sub_sequence": record.sub_sequence,
        "kind": record.kind.value,
        "name": record.name,
        "status": record.status.value,
        "attempts": record.attempts,
        "args_hash": record.args_hash,
        "started_at": _iso(record.started_at),
        "completed_at": _iso(record.completed_at),
        "duration_seconds": _record_duration(record),
        "fire_at": _iso(record.fire_at),
        "child_flow_id": record.child_flow_id,
        "idempotency_key": record.idempotency_key,
        "error": _error_json(record.error, traceback=True),
        **_value_json("result", record.result),
        "output": record.output,
        "progress": progress_json(record.progress),
        "earlier_attempts": [_attempt_json(attempt) for attempt in record.earlier_attempts],
    }


def _attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "end": attempt.end,
        "started_at": _iso(attempt.started_at),
        "ended_at": _iso(attempt.ended_at),
        "last_seen_at": _iso(attempt.last_seen_at),
        "retry_at": _iso(attempt.retry_at),
        "worker_id": attempt.worker_id,
        "error": _error_json(attempt.error, traceback=True),
    }


def progress_json(progress: StepProgress | None) -> dict[str, Any] | None:
    """A step's last progress report as a JSON-ready dict, with its ``fraction`` done."""
    if progress is None:
        return None
    return {
        "done": progress.done,
        "total": progress.total,
        "fraction": progress.fraction,
        "message": progress.message,
        "at": _iso(progress.at),
    }


def _activity_json(activity: StepActivity) -> dict[str, Any]:
    return {
        "position": activity.position,
        "step": activity.step,
        "started_at": _iso(activity.started_at),
        "progress": progress_json(activity.progress),
    }


def _signal_json(signal: SignalRecord) -> dict[str, Any]:
    return {
        "name": signal.name,
        "sent_at": _iso(signal.sent_at),
        "payload_bytes": _size(signal.payload),
    }


def history_json(history: FlowHistory) -> dict[str, Any]:
    """Everything :func:`~pyergon.history.load_history` read, as a JSON-ready dict."""
    return {
        "flow": flow_json(history.flow, traceback=True),
        "invocations": [invocation_json(record) for record in history.invocations],
        "signals": [_signal_json(signal) for signal in history.signals],
        "children": [flow_json(child) for child in history.children],
        "running": [_activity_json(activity) for activity in history.running],
    }


# -- flows -------------------------------------------------------------------------------------


def flows_table(flows: Sequence[ScheduledFlow]) -> Table:
    """The table of ``pyergon flows``: one row per flow, newest first, with its result's size."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
    # Ids are copied from here into other commands: never fold them.
    id_width = min(max((len(flow.flow_id) for flow in flows), default=2), 40)
    table.add_column("id", overflow="fold", min_width=id_width)
    table.add_column("type", overflow="fold", min_width=4)
    table.add_column("status", no_wrap=True)
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("attempt", justify="right", no_wrap=True, min_width=7)
    table.add_column("worker", overflow="fold", min_width=6)
    table.add_column("error", overflow="fold", min_width=5)
    table.add_column("result", justify="right", overflow="fold")
    for flow in flows:
        status = status_markup(flow.status.value)
        if flow.cancel_requested and not flow.status.is_final:
            status += " [dim](cancelling)[/]"
        if flow.lease_losses:
            status += f" [yellow](lease lost \u00d7{flow.lease_losses})[/]"
        table.add_row(
            _escape(flow.flow_id),
            _escape(flow.flow_type),
            status,
            format_time(flow.created_at),
            format_duration(_flow_duration(flow)),
            str(flow.attempt),
            _escape(flow.worker_id),
            _escape(flow.error.short_type if flow.error else None),
            _escape(value_note(flow.result)),
        )
    return table


def count_line(shown: int, counts: Mapping[TaskStatus, int], flow_type: str | None) -> str:
    """The footer of ``pyergon flows``: how many are shown, and all flows by status."""
    total = sum(counts.values())
    by_status = ", ".join(
        f"{counts[status]} {status_markup(status.value)}" for status in TaskStatus if counts[status]
    )
    scope = f"flows of type {_escape(flow_type)}" if flow_type is not None else "flows"
    in_storage = f"{total} {scope} in storage" + (f": {by_status}" if by_status else "")
    return f"showing {shown}; {in_storage}"


# -- one flow ----------------------------------------------------------------------------------


def history_view(
    history: FlowHistory, now: float, *, storage_url: str | None = None
) -> list[RenderableType]:
    """What ``pyergon show`` prints: header, records, timeline, running steps, output, signals...

    Steps running now (from the live workers' heartbeats) are listed with their records, how
    long they have run and their progress; each step that printed shows its last
    :data:`OUTPUT_LINES` lines.

    Args:
        history: The flow as :func:`~pyergon.history.load_history` read it.
        now: The current time, where unfinished records end on the timeline.
        storage_url: The ``--storage`` the user gave, repeated in the commands the view
            suggests; ``None``: they read the default storage, as this one did.
    """
    parts: list[RenderableType] = [*_header_lines(history, storage_url)]
    if history.records_now:
        parts += ["", _records_table(history), "", "[bold]timeline[/]"]
        parts += timeline_lines(history, now)
    else:
        parts.append("no records yet: the flow has not run a step")
    if history.running:
        parts += ["", "[bold]running[/]", _running_table(history.running, now)]
    parts += _output_lines(history)
    parts += _section(
        "signals",
        [
            f"  {_escape(signal.name)}  sent {format_time(signal.sent_at)} UTC  "
            f"{_escape(value_note(signal.payload))}"
            for signal in history.signals
        ],
    )
    parts += _section(
        "children",
        [
            f"  {_escape(child.flow_id)}  {_escape(child.flow_type)}  "
            f"{status_markup(child.status.value)}"
            for child in history.children
        ],
    )
    return parts


def _running_table(running: Sequence[StepActivity], now: float) -> Table:
    """One row per running step: position, name, how long it runs, a bar and its progress."""
    from rich import box
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table(box=box.SIMPLE, show_header=False, show_edge=False, pad_edge=False)
    for _ in range(5):
        table.add_column(no_wrap=True)
    for activity in running:
        progress = activity.progress
        fraction = None if progress is None else progress.fraction
        bar: RenderableType = (
            ""
            if fraction is None
            else ProgressBar(total=1.0, completed=fraction, width=_PROGRESS_WIDTH)
        )
        table.add_row(
            f"  {activity.position}",
            _escape(activity.step),
            f"running {format_duration(now - activity.started_at)}",
            bar,
            "" if progress is None else _escape(progress.describe()),
        )
    return table


def _output_lines(history: FlowHistory) -> list[str]:
    """The output section: each step that printed, with its last lines."""
    from shlex import quote

    lines: list[str] = []
    for record in history.records_now:
        if not record.output:
            continue
        shown, earlier = last_lines(record.output, OUTPUT_LINES)
        lines.append(f"  [bold]{record.position} {_escape(record.name)}[/]")
        if earlier:
            command = f"pyergon output {quote(history.flow.flow_id)} {record.position}"
            lines.append(f"    [dim]… {earlier} earlier line(s): {_escape(command)}[/]")
        lines += [f"    {_escape(line)}" for line in shown]
    return _section("output", lines)


def _section(title: str, lines: list[str]) -> list[str]:
    """A bold title and its lines after a blank line; nothing when there are no lines."""
    return ["", f"[bold]{title}[/]", *lines] if lines else []


def _header_lines(history: FlowHistory, storage_url: str | None) -> list[str]:
    flow = history.flow
    lines = [
        f"[bold]flow {_escape(flow.flow_id)}[/]  {_escape(flow.flow_type)}  "
        f"{status_markup(flow.status.value)}",
        f"  created {format_time(flow.created_at)} UTC, updated {format_time(flow.updated_at)} UTC"
        + (f", took {format_duration(_flow_duration(flow))}" if flow.status.is_final else ""),
        f"  attempt {flow.attempt}"
        + (f", worker {_escape(flow.worker_id)}" if flow.worker_id else "")
        + (f", parent {_escape(flow.parent_flow_id)}" if flow.parent_flow_id else ""),
    ]
    if flow.status is TaskStatus.RUNNING and flow.lease_owner is not None:
        lines.append(
            f"  held by {_escape(flow.lease_owner)} until {format_time(flow.lease_expires_at)} UTC"
        )
    if flow.cancel_requested and not flow.status.is_final:
        lines.append("  [yellow]cancel requested[/]: it stops at its next step boundary")
    lost = lease_loss_note(flow)
    if lost is not None:
        lines.append(
            f"  [bold yellow]{_escape(lost)}[/]: a step running then may have started twice"
        )
    waits = [
        f"{_WAITING_KIND[record.status]} {_escape(record.name)}"
        for record in history.invocations
        if record.status in _WAITING_KIND and not flow.status.is_final
    ]
    if waits:
        lines.append(f"  waiting for {', '.join(waits)}")
    if flow.wake_at is not None and flow.status is TaskStatus.SUSPENDED:
        lines.append(f"  wakes at {format_time(flow.wake_at)} UTC")
    if history.unserved:
        lines.append(
            f"  [bold yellow]no live worker serves {_escape(', '.join(history.unserved))}[/]: "
            "flows of these types here wait until one does (pyergon workers lists them)"
        )
    if flow.status is TaskStatus.COMPLETE and flow.result is not None:
        command = ["pyergon", "show", flow.flow_id]
        if storage_url is not None:
            command += ["--storage", storage_url]
        shown = _escape(shlex.join([*command, "--result"]))
        lines.append(f"  result {_escape(value_note(flow.result))}: {shown} prints it")
    if flow.error is not None:
        lines.append(
            f"  [red]error[/] {_escape(flow.error.short_type)}: "
            f"{_escape(_first_line(flow.error.message))}"
        )
    return lines


def _records_table(history: FlowHistory) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("name", overflow="fold", min_width=8)
    table.add_column("status", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True, min_width=8)
    table.add_column("started (UTC)", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("result", justify="right", no_wrap=True)
    table.add_column("details", overflow="fold", min_width=10)
    for record in history.records_now:
        table.add_row(
            record.position,
            record.kind.value.lower(),
            _escape(record.name),
            _record_status(history, record),
            str(record.attempts) if record.kind is OperationKind.STEP else "",
            format_time(record.started_at, date=False),
            format_duration(_record_duration(record)),
            _escape(value_note(record.result)),
            _record_detail(record),
        )
    return table


def _record_status(history: FlowHistory, record: Invocation) -> str:
    """A record's status in colour; ``running`` for a step a live worker runs now."""
    if history.running_at(record.position) is not None:
        return "[cyan]running[/]"
    return status_markup(record.status.value)


def _record_detail(record: Invocation) -> str:
    """A record's details: fire time, child, error, lines printed, last progress."""
    details = []
    printed = line_count(record.output)
    if printed:
        details.append(f"printed {printed} line{'' if printed == 1 else 's'}")
    if record.progress is not None:
        details.append(_escape(record.progress.describe()))
    if record.fire_at is not None:
        details.append(f"fires {format_time(record.fire_at, date=False)}")
    if record.child_flow_id is not None:
        details.append(f"child {_escape(record.child_flow_id)}")
    if record.error is not None:
        details.append(
            f"[red]{_escape(record.error.short_type)}[/]: "
            f"{_escape(_first_line(record.error.message))}"
        )
    earlier = record.earlier_attempts
    if earlier:
        details.append(f"after {len(earlier)} earlier attempt{'' if len(earlier) == 1 else 's'}")
    return "; ".join(details)


def timeline_lines(history: FlowHistory, now: float) -> list[str]:
    """One line per record: its offset from the flow's start, a bar, position, name, status.

    The lane spans the flow's life (to its last update when final, else to ``now``); each bar
    starts where the record started and is as long as it took. Unfinished records are drawn
    with a light bar up to the end of the lane.
    """
    flow = history.flow
    records = history.records_now
    # A fork's copied records started before the fork itself was created.
    start = min([flow.created_at, *(r.started_at for r in records if r.started_at)])
    end = flow.updated_at if flow.status.is_final else now
    end = max([end, *(_ends(record, end) for record in records)])
    span = max(end - start, 1e-9)
    label_width = max(len(f"{record.position:>4} {record.name}") for record in records)
    lines = []
    for record in records:
        label = f"{record.position:>4} {record.name}"
        name = _escape(label) + " " * (label_width - len(label))
        status = _record_status(history, record)
        if record.started_at is None:
            lines.append(f"  {'':>9}  {' ' * _TIMELINE_WIDTH}  {name}  {status}")
            continue
        begin = record.started_at - start
        finish = _ends(record, end) - start
        first = min(int(begin / span * _TIMELINE_WIDTH), _TIMELINE_WIDTH - 1)
        cells = max(1, round((finish - begin) / span * _TIMELINE_WIDTH))
        cells = min(cells, _TIMELINE_WIDTH - first)
        glyph = "█" if record.is_final else "░"
        style = "red" if record.status is InvocationStatus.FAILED else "cyan"
        lane = (
            " " * first + f"[{style}]{glyph * cells}[/]" + " " * (_TIMELINE_WIDTH - first - cells)
        )
        took = _record_duration(record)
        duration = format_duration(took) if took is not None else "…"
        lines.append(f"  {_offset(max(begin, 0.0)):>9}  {lane}  {name}  {status}  {duration}")
    return lines


def _ends(record: Invocation, unfinished_end: float) -> float:
    """Where a record's bar ends: when it completed, else where the lane ends."""
    return record.completed_at if record.completed_at is not None else unfinished_end
