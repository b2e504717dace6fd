"""A live monitor of a session: flows by status, workers, running steps, progress, errors.

``monitor = await session.monitor()`` reads a first snapshot; displayed in a kernel, its output
(text and static HTML, which show without a kernel) refreshes in place every ``interval``
seconds through a task the session holds, until :meth:`Monitor.stop` or ``session.close()``.
:meth:`Monitor.widget` gives the same in ipywidgets, for an output that needs the kernel.
What a refresh reads is in :mod:`pyergon.notebook._monitor_read`; what it saw, and how that
renders, in :mod:`pyergon.notebook._monitor_snapshot`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from pyergon._history_html import RED, escape
from pyergon.errors import PyergonError
from pyergon.notebook._monitor_read import MonitorScope, StoredOutputs, Throughput, read_snapshot
from pyergon.notebook._monitor_snapshot import (
    HEARTBEAT_STALE_AFTER,
    MonitorSnapshot,
    RunningStep,
    WorkerState,
)
from pyergon.notebook._views_common import View, ViewTasks, refresh_every

if TYPE_CHECKING:
    from pyergon.notebook.session import Session

__all__ = ["HEARTBEAT_STALE_AFTER", "Monitor", "MonitorSnapshot", "RunningStep", "WorkerState"]

logger = logging.getLogger(__name__)


class Monitor(View):
    """Counts by status, workers, progress and errors of a session, live in a kernel.

    Create it with ``await session.monitor()``; ``session.monitor()`` without ``await`` gives
    one that has not read storage yet (its output fills in at the first refresh). Displayed in
    a kernel, it refreshes its output in place until :meth:`stop`, which takes a last reading.

    Args:
        session: The session to watch.
        interval: Seconds between two refreshes of the live output.
        output: Also show the last lines each running step printed.
        scope: The flows counted and listed; ``None``: every flow in storage.
    """

    def __init__(
        self,
        session: Session,
        *,
        interval: float = 1.0,
        output: bool = False,
        scope: MonitorScope | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        super().__init__()
        self.session = session
        self.interval = interval
        self.output = output
        self.scope = scope or MonitorScope("every flow in storage")
        """The flows the monitor counts, lists and times."""
        self.snapshot: MonitorSnapshot | None = None
        """The last snapshot read, or ``None`` before the first refresh."""
        self.error: BaseException | None = None
        """The error that stopped the live refresh, if one did."""
        self.refresher: asyncio.Task[None] | None = None
        """The task refreshing the outputs (and widget), while live."""
        self._last_reading: asyncio.Task[None] | None = None
        self._stopped = False
        self._throughput = Throughput()
        self._outputs = StoredOutputs()
        self._tasks = ViewTasks(session._keep)
        self._widget: _MonitorWidget | None = None

    def __await__(self) -> Generator[Any, None, Monitor]:
        """``await monitor``: read a snapshot (or await the last one :meth:`stop` takes)."""
        return self._loaded().__await__()

    async def _loaded(self) -> Monitor:
        last = self._last_reading
        if last is not None and not last.done():
            await asyncio.wait([last])  # a new reading could land before it and be overwritten
            if self.error is not None:
                raise self.error  # the last reading failed: say so, as a refresh would
        else:
            await self.refresh()
        return self

    @property
    def live(self) -> bool:
        """Whether the outputs (and widget) are being refreshed."""
        task = self.refresher
        return task is not None and not task.done() and not task.cancelling()

    @property
    def settled(self) -> bool:
        """Whether the monitor stays as it is: it is not live, nor taking its last reading."""
        last = self._last_reading
        return not self.live and (last is None or last.done())

    async def refresh(self) -> MonitorSnapshot:
        """Read the scope's counts, table and failures, the workers and running steps; redraw.

        Raises:
            PyergonError: The session is closed.
        """
        self.session._check_open()
        self.snapshot = await read_snapshot(
            self.session, self.scope, self._throughput, output=self.output, outputs=self._outputs
        )
        self._show()
        return self.snapshot

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
        self._stopped = False
        self.refresher = self._tasks.start(self._run_live(), name="pyergon-monitor")
        if self.refresher is None:
            raise PyergonError("a live monitor needs a running event loop, as a kernel has")
        if self._widget is not None:
            self._widget.show_state(self)

    def stop(self) -> None:
        """Stop refreshing, then take one last reading that every output (and widget) shows.

        The last reading runs as a task on the running loop, as the refreshes did; outputs
        displayed after ``stop()`` show it too. ``monitor.stop(); await monitor`` waits for it,
        so a headless run (nbconvert, papermill), which keeps only what a running cell shows,
        stores it. Displaying the stopped monitor does not start it again: :meth:`start` does.
        """
        self._stopped = True
        if self.refresher is not None:
            self.refresher.cancel()
        if self._widget is not None:
            self._widget.show_state(self, stopping=True)
        if not self.session._closed and (self._last_reading is None or self._last_reading.done()):
            self._last_reading = self._tasks.start(self._read_last(), name="pyergon-monitor-last")

    async def _read_last(self) -> None:
        try:
            await self.refresh()
            self.error = None  # the last reading stands; an earlier live failure is past
        except Exception as error:  # a background task has nobody else to tell
            self.error = error
            try:
                self._show()
            except Exception:  # the same failure drawing it: the error is kept, and logged
                logger.exception("pyergon: the monitor's last reading could not be shown")

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
        if self.session._closed or self.live or self._stopped:
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
