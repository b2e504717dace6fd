"""What a monitor saw at one refresh (:class:`MonitorSnapshot`), and its text and HTML.

The snapshot holds bounded lists only (a page of flows, a few errors, a few workers), so it
renders in the same time for ten flows in scope as for a hundred thousand. Its text has a
fixed shape and no timestamps or ages; its HTML adds ages and exact heartbeats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyergon._history_html import (
    FLOW_COLOURS,
    GREEN,
    RED,
    escape,
    plain_text,
    progress_bar_html,
    seconds,
    step_progress_html,
)
from pyergon.core.records import StepProgress
from pyergon.core.status import TaskStatus
from pyergon.core.workers import StepActivity, WorkerRecord, worker_state
from pyergon.core.workers import WorkerState as WorkerLife

if TYPE_CHECKING:
    from pyergon.executor.worker import Worker

__all__ = [
    "HEARTBEAT_STALE_AFTER",
    "FlowFailure",
    "FlowRow",
    "MonitorSnapshot",
    "RunningStep",
    "WorkerState",
    "duration",
]

HEARTBEAT_STALE_AFTER = 5.0
"""Seconds without a heartbeat after which one of the session's own workers shows as stale.

A serving worker goes round its loop at least once a second, so a few seconds of silence mean
its loop is blocked (a step that does not yield, or storage that hangs). A worker of another
process is judged by its record instead: live while it beat within its lease.
"""

_ERRORS_SHOWN = 3
_LOSSES_SHOWN = 5
_DASH = "\u2014"


def duration(value: float | None) -> str:
    """A duration for people: ``—`` (unknown), ``42s``, ``3m 05s``, ``2h 10m``."""
    if value is None:
        return _DASH
    whole = round(max(value, 0.0))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One worker as the monitor saw it: one of the session's, or one storage knows.

    Attributes:
        worker_id: The worker's id.
        running: Flows it runs now (by its last heartbeat, for another process's).
        capacity: Flows it runs at most at once; ``None`` when storage does not say.
        finished: Flows it ran to a final state so far; ``None`` when storage does not say.
        heartbeat_age: Seconds since its last heartbeat; ``None`` before the first.
        state: ``live``, ``stopped`` or ``dead`` (stopped beating without shutting down).
        flow_types: The flow types it serves, sorted.
        host: The machine it runs on, when storage says.
        stale_after: Seconds of silence after which its heartbeat shows as stale.
    """

    worker_id: str
    running: int
    capacity: int | None
    finished: int | None
    heartbeat_age: float | None
    state: str = "live"
    flow_types: tuple[str, ...] = ()
    host: str = ""
    stale_after: float = HEARTBEAT_STALE_AFTER

    @classmethod
    def of(cls, worker: Worker, now: float) -> WorkerState:
        """Read one of the session's workers directly; ``now`` is the wall clock."""
        beat = worker.last_heartbeat
        return cls(
            worker_id=worker.worker_id,
            running=len(worker.running_flow_ids),
            capacity=worker.max_concurrent_flows,
            finished=worker.flows_finished,
            heartbeat_age=max(now - beat, 0.0) if beat else None,
            flow_types=tuple(worker.registered_types),
        )

    @classmethod
    def of_record(cls, record: WorkerRecord, now: float) -> WorkerState:
        """Read a worker of any process from its stored record; ``now`` is the wall clock."""
        state = worker_state(record, now)
        live = state is WorkerLife.LIVE
        return cls(
            worker_id=record.worker_id,
            running=len({activity.flow_id for activity in record.activity}) if live else 0,
            capacity=None,
            finished=None,
            heartbeat_age=max(now - record.last_beat, 0.0),
            state=state.value,
            flow_types=record.flow_types,
            host=record.host,
            stale_after=record.lease_seconds,
        )

    @property
    def heartbeat(self) -> str:
        """``ok``, ``stale`` or ``none yet``: the heartbeat without its exact age."""
        if self.heartbeat_age is None:
            return "none yet"
        return "stale" if self.heartbeat_age > self.stale_after else "ok"

    def describe(self) -> str:
        """``live, running 2/10, finished 5, heartbeat ok``: no ages, for text."""
        parts = [self.state]
        if self.state == "live":
            capacity = "" if self.capacity is None else f"/{self.capacity}"
            parts.append(f"running {self.running}{capacity}")
        if self.finished is not None:
            parts.append(f"finished {self.finished}")
        if self.capacity is None and self.flow_types:
            parts.append(f"serves {', '.join(self.flow_types)}")
        if self.state == "live":
            parts.append(f"heartbeat {self.heartbeat}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class RunningStep:
    """A step a live worker ran when the monitor looked.

    Attributes:
        activity: The step, its flow and its last progress, from the worker's heartbeat.
        elapsed: Seconds it had run (this attempt) when the monitor looked.
        output: The last lines it printed, when the monitor shows output.
    """

    activity: StepActivity
    elapsed: float
    output: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``flow-id 3 crunch``: which step of which flow."""
        activity = self.activity
        return f"{activity.flow_id} {activity.position} {activity.step}"


@dataclass(frozen=True, slots=True)
class FlowRow:
    """One flow of the monitor's table.

    Attributes:
        flow_id: The flow.
        flow_type: Its type.
        status: Its status.
        age: Seconds since it was created.
        step: ``3 crunch``: the step a live worker runs for it now (the latest started, with
            ``+1`` per other step running at once); ``""`` when none does.
        progress: That step's last progress report, if any.
        result: ``208.1 MB parquet artifact``: the size and format of its result, read from
            its record, when above :data:`~pyergon._history_html.LARGE_VALUE` bytes; else ``""``.
    """

    flow_id: str
    flow_type: str
    status: TaskStatus
    age: float
    step: str = ""
    progress: StepProgress | None = None
    result: str = ""

    def describe(self) -> str:
        """``id (Type) RUNNING at 3 crunch: 37/100``: no age, for text."""
        line = f"{self.flow_id} ({self.flow_type}) {self.status.value}"
        if self.step:
            line += f" at {self.step}"
        if self.progress is not None:
            line += f": {self.progress.describe()}"
        if self.result:
            line += f", result {self.result}"
        return line


@dataclass(frozen=True, slots=True)
class FlowFailure:
    """A failed flow and its stored error, as the monitor lists them.

    Attributes:
        flow_id: The flow.
        flow_type: Its type.
        error: ``TypeName: message``, on one line.
    """

    flow_id: str
    flow_type: str
    error: str


@dataclass(frozen=True, slots=True)
class MonitorSnapshot:
    """What the monitor saw at one refresh.

    Attributes:
        counts: Flows in scope in each status, every status present.
        workers: The workers shown: the session's own first, then the live ones storage
            knows, then the others, most recent heartbeat first.
        errors: The session's kept background errors, described, oldest first.
        lost_leases: ``(flow id, note)`` of the newest flows in scope whose lease a worker
            lost while running them (see :func:`~pyergon._history_html.lease_loss_note`).
        unserved: The types of the newest unfinished flows in scope that no live worker
            serves (by the workers' records in storage), sorted.
        running: The steps live workers ran, those that started first (at most ten).
        running_total: How many steps live workers ran, listed or not.
        scope: Which flows the counts, table, throughput and failures are of, for people.
        flows: The table: running flows first, then failed ones, then the newest others.
        failures: The newest failed flows in scope with their errors, newest first.
        failed_total: Failed flows in scope, listed or not.
        throughput: Flows of the scope that became final per second, over the last minute
            the monitor watched; ``None`` until two refreshes measured it.
        eta: Seconds until every unfinished flow in scope but the suspended ones is final at
            that throughput; ``None`` when it cannot be estimated, 0 when none is left.
        workers_total: Workers known, shown or not.
        missing_total: How many of the flow ids the monitor was given storage does not hold.
        missing: Which, when the monitor was given few ids.
    """

    counts: Mapping[TaskStatus, int]
    workers: tuple[WorkerState, ...]
    errors: tuple[str, ...]
    lost_leases: tuple[tuple[str, str], ...] = ()
    unserved: tuple[str, ...] = ()
    running: tuple[RunningStep, ...] = ()
    running_total: int = 0
    scope: str = "every flow in storage"
    flows: tuple[FlowRow, ...] = ()
    failures: tuple[FlowFailure, ...] = ()
    failed_total: int = 0
    throughput: float | None = None
    eta: float | None = None
    workers_total: int | None = None
    missing_total: int = 0
    missing: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """Flows in scope."""
        return sum(self.counts.values())

    @property
    def final(self) -> int:
        """Flows in scope in a final status (complete, failed or cancelled)."""
        return sum(count for status, count in self.counts.items() if status.is_final)

    @property
    def progress(self) -> str:
        """``7 of 10 flows final (70%)``."""
        percent = f" ({100 * self.final // self.total}%)" if self.total else ""
        return f"{self.final} of {self.total} flows final{percent}"

    @property
    def rate(self) -> str:
        """``throughput 2.50 flows/s, ETA 1m 04s``, with ``—`` for what is not known yet.

        ``none unfinished`` replaces the ETA when every flow in scope is final. Suspended flows
        wait for a signal or a timer, not for workers, so the ETA leaves them out and says so.
        """
        throughput = _DASH if self.throughput is None else f"{self.throughput:.2f} flows/s"
        suspended = self.counts.get(TaskStatus.SUSPENDED, 0)
        if self.eta == 0:
            waiting = f"none to run, {suspended} suspended" if suspended else "none unfinished"
            return f"throughput {throughput}, {waiting}"
        left_out = f" ({suspended} suspended left out)" if suspended else ""
        return f"throughput {throughput}, ETA {duration(self.eta)}{left_out}"

    @property
    def absent(self) -> str:
        """``ghost, typo``, or ``3 of the chosen flows``: the chosen flows storage lacks."""
        if self.missing:
            return ", ".join(self.missing)
        return f"{self.missing_total} of the chosen flows"

    def text(self) -> str:
        """The snapshot as short text of a fixed shape: no timestamps, no ages."""
        counts = "  ".join(f"{status.value} {self.counts.get(status, 0)}" for status in TaskStatus)
        lines = [f"pyergon monitor of {self.scope}: {self.progress}", f"  {counts}"]
        lines.append(f"  {self.rate}")
        if self.missing_total:
            lines.append(f"  not in storage: {self.absent}")
        if self.flows:
            lines.append("  flows, running and failed first, then the newest:")
            lines.extend(f"    {row.describe()}" for row in self.flows)
            if self.total > len(self.flows):
                lines.append(f"    … {self.total - len(self.flows)} more")
        if self.failed_total:
            lines.append(f"  failed flows: {self.failed_total}, newest first:")
            lines.extend(
                f"    {failure.flow_id} ({failure.flow_type}): {failure.error}"
                for failure in self.failures
            )
            if self.failed_total > len(self.failures):
                lines.append(f"    … {self.failed_total - len(self.failures)} more failed flows")
        if not self.workers:
            lines.append("  workers: none")
        lines.extend(f"  worker {worker.worker_id}: {worker.describe()}" for worker in self.workers)
        if self.workers_total is not None and self.workers_total > len(self.workers):
            lines.append(f"  … {self.workers_total - len(self.workers)} more workers")
        if self.lost_leases:
            lines.append(f"  flows that lost a lease: {len(self.lost_leases)}")
            shown = self.lost_leases[:_LOSSES_SHOWN]
            lines.extend(f"    {flow_id}: {note}" for flow_id, note in shown)
        if self.unserved:
            lines.append(f"  no live worker serves: {', '.join(self.unserved)}")
        if self.running_total:
            lines.append(f"  running steps: {self.running_total}")
        for step in self.running:
            progress = step.activity.progress
            lines.append(f"    {step.label}" + (f": {progress.describe()}" if progress else ""))
            lines.extend(f"      | {line}" for line in step.output)
        if self.running_total > len(self.running):
            lines.append(f"    … {self.running_total - len(self.running)} more")
        lines.append(f"  background errors: {len(self.errors)}")
        return plain_text("\n".join(lines))  # error messages and output may hold escapes

    def html(self, *, progress_bar: bool = True) -> str:
        """The snapshot as escaped HTML; the progress bar is left out for the live widget."""
        cells = "".join(
            f'<td style="color:{FLOW_COLOURS[status]};padding:0 8px">'
            f"{escape(status.value)}<br><b>{self.counts.get(status, 0)}</b></td>"
            for status in TaskStatus
        )
        parts = [
            f"<b>pyergon monitor</b> of {escape(self.scope)}: {escape(self.progress)}",
        ]
        if progress_bar:
            parts.append(progress_bar_html(self.final / self.total if self.total else 0.0))
        parts.append(f"<table><tr>{cells}</tr></table>")
        parts.append(f'<p class="pyergon-rate">{escape(self.rate)}</p>')
        if self.missing_total:
            parts.append(f'<p style="color:{RED}">not in storage: {escape(self.absent)}</p>')
        parts.append(_flows_html(self.flows, self.total))
        parts.append(_failures_html(self.failures, self.failed_total))
        parts.append(_workers_html(self.workers, self.workers_total))
        parts.append(_running_html(self.running, self.running_total))
        parts.append(_lost_leases_html(self.lost_leases))
        if self.unserved:
            parts.append(
                f'<p style="color:{RED}">no live worker serves '
                f"{escape(', '.join(self.unserved))}: their flows wait until one does</p>"
            )
        parts.append(_errors_html(self.errors))
        return f'<div class="pyergon-monitor">{"".join(parts)}</div>'


def _flows_html(rows: tuple[FlowRow, ...], total: int) -> str:
    if not rows:
        return ""
    body = "".join(
        f"<tr><td><code>{escape(row.flow_id)}</code></td><td>{escape(row.flow_type)}</td>"
        f'<td style="color:{FLOW_COLOURS[row.status]}">{escape(row.status.value)}</td>'
        f"<td>{escape(row.step)}</td>"
        f"<td>{'' if row.progress is None else step_progress_html(row.progress)}</td>"
        f"<td>{duration(row.age)}</td><td>{escape(row.result)}</td></tr>"
        for row in rows
    )
    more = f"<p>… {total - len(rows)} more</p>" if total > len(rows) else ""
    return (
        '<table class="pyergon-flows"><thead><tr><th>flow</th><th>type</th><th>status</th>'
        "<th>current step</th><th>progress</th><th>age</th><th>result</th></tr></thead>"
        f"<tbody>{body}</tbody></table>{more}"
    )


def _failures_html(failures: tuple[FlowFailure, ...], total: int) -> str:
    if not total:
        return ""
    items = "".join(
        f"<li><code>{escape(failure.flow_id)}</code> ({escape(failure.flow_type)}): "
        f"<code>{escape(failure.error)}</code></li>"
        for failure in failures
    )
    if total > len(failures):
        items += f"<li>… {total - len(failures)} more failed flows</li>"
    return (
        f'<p style="color:{RED}">{total} failed flow(s), newest first '
        "(<code>await session.history(flow_id)</code> shows more):</p>"
        f'<ul class="pyergon-failures">{items}</ul>'
    )


def _workers_html(workers: tuple[WorkerState, ...], total: int | None) -> str:
    if not workers:
        return "<p>no workers</p>"
    rows = "".join(
        f"<tr><td>{escape(worker.worker_id)}</td><td>{escape(worker.state)}</td>"
        f"<td>{worker.running}{'' if worker.capacity is None else f'/{worker.capacity}'}</td>"
        f"<td>{'' if worker.finished is None else worker.finished}</td>"
        f"<td>{_heartbeat_html(worker)}</td><td>{escape(', '.join(worker.flow_types))}</td></tr>"
        for worker in workers
    )
    hidden = 0 if total is None else total - len(workers)
    more = f"<p>… {hidden} more workers</p>" if hidden > 0 else ""
    return (
        '<table class="pyergon-workers"><thead><tr><th>worker</th><th>state</th><th>running</th>'
        f"<th>finished</th><th>heartbeat</th><th>serves</th></tr></thead><tbody>{rows}</tbody>"
        f"</table>{more}"
    )


def _running_html(running: tuple[RunningStep, ...], total: int) -> str:
    if not total:
        return ""
    rows = []
    for step in running:
        activity, progress = step.activity, step.activity.progress
        rows.append(
            f"<tr><td><code>{escape(activity.flow_id)}</code></td>"
            f"<td>{escape(activity.position)} {escape(activity.step)}</td>"
            f"<td>{seconds(step.elapsed)}</td>"
            f"<td>{'' if progress is None else step_progress_html(progress)}</td></tr>"
        )
        if step.output:
            rows.append(
                '<tr><td></td><td colspan="3"><pre class="pyergon-output" style="margin:0">'
                f"{escape(chr(10).join(step.output))}</pre></td></tr>"
            )
    more = f"<p>… {total - len(running)} more</p>" if total > len(running) else ""
    return (
        f'<table class="pyergon-running"><thead><tr><th>flow</th><th>running step</th>'
        f"<th>for</th><th>progress</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{more}"
    )


def _heartbeat_html(worker: WorkerState) -> str:
    if worker.heartbeat_age is None:
        return "none yet"
    colour = RED if worker.heartbeat == "stale" else GREEN
    return f'<span style="color:{colour}">{worker.heartbeat_age:.1f}s ago</span>'


def _lost_leases_html(lost_leases: tuple[tuple[str, str], ...]) -> str:
    if not lost_leases:
        return ""
    shown = "".join(
        f'<li><code>{escape(flow_id)}</code>: <span class="pyergon-lease-lost">{escape(note)}'
        "</span></li>"
        for flow_id, note in lost_leases[:_LOSSES_SHOWN]
    )
    return (
        f'<p style="color:{RED}">{len(lost_leases)} flow(s) lost a lease: a worker stopped '
        "holding it while it ran it (<code>await session.history(flow_id)</code> shows more)</p>"
        f"<ul>{shown}</ul>"
    )


def _errors_html(errors: tuple[str, ...]) -> str:
    if not errors:
        return "<p>no background errors</p>"
    latest = "".join(f"<li><code>{escape(error)}</code></li>" for error in errors[-_ERRORS_SHOWN:])
    return (
        f'<p style="color:{RED}">{len(errors)} background error(s); '
        f"<code>session.raise_for_errors()</code> raises them. Latest:</p><ul>{latest}</ul>"
    )
