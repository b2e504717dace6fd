"""A live monitor of a session: flows by status, workers, running steps, progress, errors.

``monitor = await session.monitor()`` reads a first snapshot; displayed in a kernel, its output
(text and static HTML, which show without a kernel) refreshes in place every ``interval``
seconds through a task the session holds, until :meth:`Monitor.stop` or ``session.close()``.
:meth:`Monitor.widget` gives the same in ipywidgets, for an output that needs the kernel.
Running steps and their progress come from the live workers' heartbeats in storage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyergon._history_html import (
    FLOW_COLOURS,
    GREEN,
    RED,
    escape,
    last_lines,
    lease_loss_note,
    progress_bar_html,
    seconds,
    step_progress_html,
)
from pyergon.core.query import FlowQuery
from pyergon.core.status import TaskStatus
from pyergon.core.workers import StepActivity, running_steps, unserved_types
from pyergon.errors import PyergonError
from pyergon.executor._live import live_output
from pyergon.notebook._views_common import View, ViewTasks, refresh_every

if TYPE_CHECKING:
    from pyergon.executor.worker import Worker
    from pyergon.notebook.session import Session

__all__ = ["HEARTBEAT_STALE_AFTER", "Monitor", "MonitorSnapshot", "RunningStep", "WorkerState"]

HEARTBEAT_STALE_AFTER = 5.0
"""Seconds without a heartbeat after which a worker shows as stale.

A serving worker goes round its loop at least once a second, so a few seconds of silence mean
its loop is blocked (a step that does not yield, or storage that hangs).
"""

_ERRORS_SHOWN = 3
_RECENT_FLOWS = 100
"""The newest flows in which the monitor looks for leases their workers lost."""
_LOSSES_SHOWN = 5
_RUNNING_SHOWN = 10
"""Running steps the monitor lists, those that started first; the rest are counted."""
_OUTPUT_LINES = 5
"""Lines of a running step's output the monitor shows with ``output=True``."""


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One worker as the monitor saw it.

    Attributes:
        worker_id: The worker's id.
        running: Flows it runs now.
        capacity: Flows it runs at most at once.
        finished: Flows it ran to a final state so far.
        heartbeat_age: Seconds since its serving loop last went round; ``None`` before the
            first round.
    """

    worker_id: str
    running: int
    capacity: int
    finished: int
    heartbeat_age: float | None

    @classmethod
    def of(cls, worker: Worker, now: float) -> WorkerState:
        """Read ``worker``'s state; ``now`` is the wall-clock time (epoch seconds)."""
        beat = worker.last_heartbeat
        return cls(
            worker_id=worker.worker_id,
            running=len(worker.running_flow_ids),
            capacity=worker.max_concurrent_flows,
            finished=worker.flows_finished,
            heartbeat_age=max(now - beat, 0.0) if beat else None,
        )

    @property
    def heartbeat(self) -> str:
        """``ok``, ``stale`` or ``none yet``: the heartbeat without its exact age."""
        if self.heartbeat_age is None:
            return "none yet"
        return "stale" if self.heartbeat_age > HEARTBEAT_STALE_AFTER else "ok"


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
class MonitorSnapshot:
    """What the monitor saw at one refresh.

    Attributes:
        counts: Flows in each status, every status present.
        workers: The session's running workers, by id.
        errors: The session's kept background errors, described, oldest first.
        lost_leases: ``(flow id, note)`` of the newest flows whose lease a worker lost while
            running them (see :func:`~pyergon._history_html.lease_loss_note`), newest first.
        unserved: The types of the newest unfinished flows that no live worker serves (by the
            workers' records in storage), sorted: their flows wait until one does.
        running: The steps live workers ran, those that started first (at most ten).
        running_total: How many steps live workers ran, listed or not.
    """

    counts: Mapping[TaskStatus, int]
    workers: tuple[WorkerState, ...]
    errors: tuple[str, ...]
    lost_leases: tuple[tuple[str, str], ...] = ()
    unserved: tuple[str, ...] = ()
    running: tuple[RunningStep, ...] = ()
    running_total: int = 0

    @property
    def total(self) -> int:
        """Flows in storage."""
        return sum(self.counts.values())

    @property
    def final(self) -> int:
        """Flows in a final status (complete, failed or cancelled)."""
        return sum(count for status, count in self.counts.items() if status.is_final)

    @property
    def progress(self) -> str:
        """``7 of 10 flows final (70%)``."""
        percent = f" ({100 * self.final // self.total}%)" if self.total else ""
        return f"{self.final} of {self.total} flows final{percent}"

    def text(self) -> str:
        """The snapshot as short deterministic text: no timestamps, statuses in a fixed order."""
        counts = "  ".join(f"{status.value} {self.counts.get(status, 0)}" for status in TaskStatus)
        lines = [f"pyergon monitor: {self.progress}", f"  {counts}"]
        if not self.workers:
            lines.append("  workers: none")
        for worker in self.workers:
            lines.append(
                f"  worker {worker.worker_id}: running {worker.running}/{worker.capacity}, "
                f"finished {worker.finished}, heartbeat {worker.heartbeat}"
            )
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
        return "\n".join(lines)

    def html(self, *, progress_bar: bool = True) -> str:
        """The snapshot as escaped HTML; the progress bar is left out for the live widget."""
        cells = "".join(
            f'<td style="color:{FLOW_COLOURS[status]};padding:0 8px">'
            f"{escape(status.value)}<br><b>{self.counts.get(status, 0)}</b></td>"
            for status in TaskStatus
        )
        parts = [f"<b>pyergon monitor</b>: {escape(self.progress)}"]
        if progress_bar:
            parts.append(progress_bar_html(self.final / self.total if self.total else 0.0))
        parts.append(f"<table><tr>{cells}</tr></table>")
        parts.append(_workers_html(self.workers))
        parts.append(_running_html(self.running, self.running_total))
        parts.append(_lost_leases_html(self.lost_leases))
        if self.unserved:
            parts.append(
                f'<p style="color:{RED}">no live worker serves '
                f"{escape(', '.join(self.unserved))}: their flows wait until one does</p>"
            )
        parts.append(_errors_html(self.errors))
        return f'<div class="pyergon-monitor">{"".join(parts)}</div>'


def _workers_html(workers: tuple[WorkerState, ...]) -> str:
    if not workers:
        return "<p>no workers running in this session</p>"
    rows = "".join(
        f"<tr><td>{escape(worker.worker_id)}</td><td>{worker.running}/{worker.capacity}</td>"
        f"<td>{worker.finished}</td><td>{_heartbeat_html(worker)}</td></tr>"
        for worker in workers
    )
    return (
        "<table><thead><tr><th>worker</th><th>running</th><th>finished</th>"
        f"<th>heartbeat</th></tr></thead><tbody>{rows}</tbody></table>"
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


class Monitor(View):
    """Counts by status, workers, progress and errors of a session, live in a kernel.

    Create it with ``await session.monitor()``; ``session.monitor()`` without ``await`` gives
    one that has not read storage yet (its output fills in at the first refresh). Displayed in
    a kernel, it refreshes its output in place until :meth:`stop`.

    Args:
        session: The session to watch.
        interval: Seconds between two refreshes of the live output.
        output: Also show the last lines each running step printed.
    """

    def __init__(self, session: Session, *, interval: float = 1.0, output: bool = False) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        super().__init__()
        self.session = session
        self.interval = interval
        self.output = output
        self.snapshot: MonitorSnapshot | None = None
        """The last snapshot read, or ``None`` before the first refresh."""
        self.error: BaseException | None = None
        """The error that stopped the live refresh, if one did."""
        self.refresher: asyncio.Task[None] | None = None
        """The task refreshing the outputs (and widget), while live."""
        self._tasks = ViewTasks(session._keep)
        self._widget: _MonitorWidget | None = None

    def __await__(self) -> Generator[Any, None, Monitor]:
        """``await monitor``: read a first snapshot, then return the monitor."""
        return self._loaded().__await__()

    async def _loaded(self) -> Monitor:
        await self.refresh()
        return self

    @property
    def live(self) -> bool:
        """Whether the outputs (and widget) are being refreshed."""
        task = self.refresher
        return task is not None and not task.done() and not task.cancelling()

    @property
    def settled(self) -> bool:
        """Whether the monitor stays as it is: it is not live."""
        return not self.live

    async def refresh(self) -> MonitorSnapshot:
        """Read storage's counts, lost leases and running steps, the session's workers; redraw."""
        self.session._check_open()
        storage = self.session.storage
        counts = await storage.count_flows()
        newest = await storage.list_flows(FlowQuery(limit=_RECENT_FLOWS))
        lost_leases = tuple(
            (flow.flow_id, note) for flow in newest if (note := lease_loss_note(flow)) is not None
        )
        records = await self.session.worker_records()
        now = time.time()
        waiting = [flow.flow_type for flow in newest if not flow.status.is_final]
        unserved = unserved_types(waiting, records, now) if waiting else ()
        running = sorted(
            (step for steps in running_steps(records, now).values() for step in steps),
            key=lambda activity: activity.started_at,
        )
        workers = sorted(
            (WorkerState.of(worker, now) for worker in self.session.workers),
            key=lambda state: state.worker_id,
        )
        self.snapshot = MonitorSnapshot(
            counts=dict(counts),
            workers=tuple(workers),
            errors=tuple(str(error) for error in self.session.errors),
            lost_leases=lost_leases,
            unserved=unserved,
            running=await self._running(running[:_RUNNING_SHOWN], now),
            running_total=len(running),
        )
        self._show()
        return self.snapshot

    async def _running(self, shown: list[StepActivity], now: float) -> tuple[RunningStep, ...]:
        """The running steps as shown, with what they printed when the monitor shows output.

        A step running in one of the session's workers shows what it printed so far; one
        running elsewhere shows what its record holds (its earlier attempts' output, if any).
        """
        printed: dict[tuple[str, str], str] = {}
        if self.output:
            for flow_id in dict.fromkeys(activity.flow_id for activity in shown):
                for record in await self.session.storage.load_invocations(flow_id):
                    if record.output:
                        printed[(flow_id, record.position)] = record.output
            for activity in shown:
                workers = (worker.live_steps for worker in self.session.workers)
                live = live_output(workers, activity.flow_id, activity.position)
                if live:
                    printed[(activity.flow_id, activity.position)] = live
        return tuple(
            RunningStep(
                activity,
                max(now - activity.started_at, 0.0),
                tuple(
                    last_lines(printed.get((activity.flow_id, activity.position)), _OUTPUT_LINES)[0]
                ),
            )
            for activity in shown
        )

    def _show(self) -> None:
        """Show the last snapshot in every output of the monitor, and in its widget."""
        self.redraw()
        if self._widget is not None:
            self._widget.show(self)

    def start(self) -> None:
        """Refresh every ``interval`` seconds on the running loop until :meth:`stop`.

        Displaying the monitor in a kernel starts it; its outputs show each refresh.

        Raises:
            PyergonError: The session is closed, or no event loop is running.
        """
        if self.live:
            return
        self.session._check_open()
        self.error = None
        self.refresher = self._tasks.start(self._run_live(), name="pyergon-monitor")
        if self.refresher is None:
            raise PyergonError("a live monitor needs a running event loop, as a kernel has")
        if self._widget is not None:
            self._widget.show_state(self)

    def stop(self) -> None:
        """Stop refreshing; the outputs (and widget) keep showing the last snapshot."""
        if self.refresher is not None:
            self.refresher.cancel()
        if self._widget is not None:
            self._widget.show_state(self, stopping=True)

    async def _run_live(self) -> None:
        try:
            await refresh_every(self.refresh, self.interval)
        except Exception as error:
            # Shown in the output and kept here: a background task has nobody else to tell.
            self.error = error
        finally:
            self.redraw()
            if self._widget is not None:
                self._widget.show_state(self, stopping=True)

    def _displayed(self) -> None:
        """Go live once displayed, when the session is open and a loop runs (as in a kernel)."""
        if self.session._closed or self.live:
            return
        try:
            self.start()
        except PyergonError as error:  # no running loop: a still picture that says why
            self.error = error
            self.redraw()

    # -- renderings ---------------------------------------------------------------------------

    def text(self) -> str:
        """The last snapshot as short deterministic text."""
        if self.snapshot is None:
            text = "pyergon monitor: not read yet (await monitor.refresh())"
        else:
            text = self.snapshot.text()
        return text + self._stopped_by()

    def _stopped_by(self) -> str:
        """A line naming the error that stopped the live refresh; empty if none did."""
        if self.error is None:
            return ""
        return f"\n  not live: {type(self.error).__name__}: {self.error}"

    def html(self) -> str:
        """The last snapshot as static, escaped HTML (no inline SVG: it shows sanitized)."""
        if self.snapshot is None:
            return f'<div class="pyergon-monitor">{escape(self.text())}</div>'
        page = self.snapshot.html()
        if self.error is not None:
            note = f'<p style="color:{RED}">{escape(self._stopped_by().strip())}</p></div>'
            page = page.removesuffix("</div>") + note
        return page

    def bundle(self, *, png: bool = True) -> dict[str, str]:
        """The output: the text and the HTML (a table reads well without a picture)."""
        return {"text/plain": self.text(), "text/html": self.html()}

    def _repr_html_(self) -> str:
        return self.html()

    def widget(self) -> Any:
        """The ipywidgets view (built once); building it starts the refresh when it can.

        Its output needs the kernel: a saved notebook reopened cannot show it. The monitor
        displayed plainly gives text and HTML that refresh too and show anywhere.

        Raises:
            PyergonError: ipywidgets is not installed.
        """
        if self._widget is None:
            self._widget = _MonitorWidget(self)
            if not self.session._closed:
                try:
                    self.start()
                except PyergonError as error:  # no running loop: a still picture, says why
                    self.error = error
                    self._widget.show_state(self)
        return self._widget.root


class _MonitorWidget:
    """The ipywidgets tree of a monitor; only ever changed by setting widget values."""

    def __init__(self, monitor: Monitor) -> None:
        try:
            import ipywidgets
        except ImportError as error:
            raise PyergonError(
                'live monitors need ipywidgets: pip install "pyergon[notebook]"'
            ) from error
        self.bar = ipywidgets.IntProgress(value=0, min=0, max=1, bar_style="success")
        self.progress = ipywidgets.Label(value="")
        self.body = ipywidgets.HTML(value="")
        self.state = ipywidgets.Label(value="")
        self.root = ipywidgets.VBox(
            [ipywidgets.HBox([self.bar, self.progress]), self.body, self.state]
        )
        self.root.add_class("pyergon-monitor-widget")
        self.show(monitor)

    def show(self, monitor: Monitor) -> None:
        snapshot = monitor.snapshot
        if snapshot is None:
            self.body.value = monitor.html()
        else:
            self.bar.max = max(snapshot.total, 1)
            self.bar.value = snapshot.final
            self.progress.value = snapshot.progress
            self.body.value = snapshot.html(progress_bar=False)
        self.show_state(monitor)

    def show_state(self, monitor: Monitor, *, stopping: bool = False) -> None:
        if monitor.error is not None:
            error = monitor.error
            self.state.value = f"not live: {type(error).__name__}: {error}"
        elif monitor.live and not stopping:
            self.state.value = f"live, every {monitor.interval:g}s"
        else:
            self.state.value = "stopped"
