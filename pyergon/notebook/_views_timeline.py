"""A timeline of flows: their records as bars over time, as a picture (SVG and PNG) and as text.

:class:`Timeline` is a pure renderer of :class:`~pyergon.history.FlowHistory` objects; a
session gives it a loader so it can re-read storage and redraw its outputs (and its optional
widget) in place. Each flow gets a lane and each record a row, each attempt of a record a
segment of it; past ``collapse_after`` flows each flow is one row. What is shown is chosen in
``_timeline_layout``, written in ``_timeline_text`` and drawn in ``_views_svg`` (with the marks
of ``_timeline_marks``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from pyergon._history_html import escape
from pyergon._timeline_layout import (
    Lane,
    TimelineOptions,
    Window,
    lanes,
    latest_time,
    one_or_many,
)
from pyergon._timeline_text import timeline_text
from pyergon.core.status import TaskStatus, flow_statuses
from pyergon.errors import PyergonError
from pyergon.history import FlowHistory
from pyergon.notebook._views_common import View, ViewTasks, refresh_every
from pyergon.notebook._views_static import picture_bundle
from pyergon.notebook._views_svg import timeline_svg

__all__ = ["Timeline", "TimelineLoader", "timeline_from_histories"]

TimelineLoader = Callable[[], Awaitable[tuple[Sequence[FlowHistory], float]]]
"""Re-reads the shown flows: returns their histories and the current time (epoch seconds)."""


def timeline_from_histories(
    histories: FlowHistory | Iterable[FlowHistory],
    *,
    now: float | None = None,
    max_records: int = 200,
    collapse_after: int | None = 20,
    status: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
    flow_type: str | Iterable[str] | None = None,
    window: Window | None = None,
) -> Timeline:
    """Build a timeline of histories already loaded (it cannot re-read storage).

    Args:
        histories: One history or several; one lane each, in this order (children right
            under their parent).
        now: Where unfinished records end; defaults to the latest time the histories hold,
            so the same histories always draw the same picture.
        max_records: Records drawn per flow: the first and the last, around a counted gap.
        collapse_after: Past this many flows, one row per flow, failed flows first (the
            first 200 drawn, the rest counted); ``None``: never collapse.
        status: Only flows in this status or these statuses (``"failed"``).
        flow_type: Only flows of this type or these types.
        window: Only this span: ``(start, end)`` in seconds from the first start, or two
            datetimes (a naive one is UTC).
    """
    shown = [histories] if isinstance(histories, FlowHistory) else list(histories)
    return Timeline(
        shown,
        now=now,
        max_records=max_records,
        collapse_after=collapse_after,
        status=status,
        flow_type=flow_type,
        window=window,
    )


class Timeline(View):
    """Flows over time: a picture (SVG, and PNG with resvg-py) with its text, or a widget.

    Build one with ``await session.timeline(ids)`` or :func:`timeline_from_histories`. Shown
    in a notebook, its output is the static picture, which shows without a kernel; a refresh
    redraws it in place. :meth:`widget` adds a toolbar (Refresh, auto-refresh) and tooltips on
    hover, in an output that needs the kernel.

    Args:
        histories: The flows to show, one lane each (children right under their parent).
        now: Where unfinished records end (epoch seconds); defaults to the latest time the
            histories hold.
        loader: Re-reads the flows for :meth:`refresh`; without it the timeline is fixed.
        keep: Also hand background tasks to this owner (the session's ``_keep``).
        auto_refresh: Start re-reading every ``interval`` seconds as soon as the timeline (or
            its widget) is displayed, until every flow is final.
        interval: Seconds between two automatic refreshes.
        max_records: Records drawn per flow: the first and the last, around a counted gap.
        collapse_after: Past this many flows (after the filters), one row per flow, failed
            flows first (the first 200 drawn, the rest counted); ``None``: never collapse.
        status: Only flows in this status or these statuses (``"failed"``).
        flow_type: Only flows of this type or these types.
        window: Only this span: ``(start, end)`` in seconds from the first start, or two
            datetimes (a naive one is UTC).

    Raises:
        ValueError: An option is out of range, or ``status`` names no flow status.
    """

    def __init__(
        self,
        histories: Iterable[FlowHistory],
        *,
        now: float | None = None,
        loader: TimelineLoader | None = None,
        keep: Callable[[asyncio.Task[Any]], None] | None = None,
        auto_refresh: bool = False,
        interval: float = 1.0,
        max_records: int = 200,
        collapse_after: int | None = 20,
        status: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
        flow_type: str | Iterable[str] | None = None,
        window: Window | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        super().__init__()
        self.options = TimelineOptions(
            max_records=max_records,
            collapse_after=collapse_after,
            status=flow_statuses(status),
            flow_type=frozenset(one_or_many(flow_type)),
            window=window,
        )
        """What the timeline shows of its histories (``max_records`` and the other options)."""
        self.histories = tuple(histories)
        self.now = latest_time(self.histories) if now is None else now
        self.interval = interval
        self.error: BaseException | None = None
        """The error of the last refresh that failed in the background, if any."""
        self._loader = loader
        self._tasks = ViewTasks(keep)
        self._auto_refresh_wanted = auto_refresh
        self._auto_task: asyncio.Task[None] | None = None
        self._widget: Any = None

    @property
    def flow_ids(self) -> tuple[str, ...]:
        """The ids of the flows shown, in lane order."""
        return tuple(history.flow.flow_id for history in self.histories)

    @property
    def final(self) -> bool:
        """Whether every flow shown is final, so refreshing would change nothing."""
        return all(history.flow.status.is_final for history in self.histories)

    @property
    def auto_refreshing(self) -> bool:
        """Whether the timeline re-reads its flows in the background."""
        return self._auto_task is not None and not self._auto_task.done()

    @property
    def settled(self) -> bool:
        """Whether the timeline stays as it is: it is not refreshing automatically."""
        return not self.auto_refreshing

    # -- renderings ---------------------------------------------------------------------------

    def text(self) -> str:
        """One line per record: position, kind, name, status, duration (to the millisecond).

        The text holds no timestamp and no memory address, so the same flows always give the
        same text (for nbval and doctests).
        """
        lanes, collapsed = self._layout()
        return timeline_text(lanes, len(self.histories), self.options, collapsed)

    def svg(self) -> str:
        """The timeline as one self-contained SVG element (no script, no external reference).

        Its colours are explicit on an opaque white background, so it reads the same in a
        dark theme and converted to PNG.
        """
        lanes, collapsed = self._layout()
        return timeline_svg(lanes, self.now, self.options, collapsed, given=len(self.histories))

    @property
    def collapsed(self) -> bool:
        """Whether the flows shown are past ``collapse_after``, so each is one row."""
        return self._layout()[1]

    def _layout(self) -> tuple[list[Lane], bool]:
        """The flows the filters keep, in drawing order, and whether they are collapsed."""
        kept = [history for history in self.histories if self.options.keeps(history)]
        limit = self.options.collapse_after
        collapsed = limit is not None and len(kept) > limit
        return lanes(kept, collapsed), collapsed

    def bundle(self, *, png: bool = True) -> dict[str, str]:
        """The output: the text, the SVG and (with ``png`` and resvg-py) the PNG; no HTML."""
        return picture_bundle(self.text(), self.svg(), png=png)

    def html(self) -> str:
        """The SVG in a ``<div class="pyergon-timeline" data-flow-ids='[...]'>`` (JSON ids).

        The widget shows it, inline so that tooltips work; it is not part of :meth:`bundle`,
        since an untrusted notebook would show it without its SVG.
        """
        ids = escape(json.dumps(list(self.flow_ids)))
        return f'<div class="pyergon-timeline" data-flow-ids="{ids}">{self.svg()}</div>'

    # -- refreshing and the widget ------------------------------------------------------------

    def widget(self) -> Any:
        """The ipywidgets view (built once): the SVG, a Refresh button, an auto-refresh toggle.

        Its output needs the kernel: a saved notebook reopened cannot show it. The timeline
        displayed plainly gives the picture, which refreshes too.

        Raises:
            PyergonError: ipywidgets is not installed.
        """
        if self._widget is None:
            self._widget = _TimelineWidget(self)
            if self._auto_refresh_wanted:
                self._toggled(True)
        return self._widget.root

    async def refresh(self) -> None:
        """Re-read the flows from storage and redraw every output of the timeline, and its widget.

        Raises:
            PyergonError: The timeline was built from histories and has no storage to read.
        """
        if self._loader is None:
            raise PyergonError(
                "this timeline was built from histories and cannot re-read storage; "
                "use `await session.timeline(ids)` for one that can"
            )
        histories, now = await self._loader()
        self.histories, self.now = tuple(histories), now
        self.error = None
        self.redraw()
        if self._widget is not None:
            self._widget.show(self)

    def start(self) -> None:
        """Re-read the flows every ``interval`` seconds until all are final or :meth:`stop`.

        Needs a running event loop (a kernel's) and a timeline that can re-read storage.
        """
        if self.auto_refreshing:
            return
        if self._loader is None:
            raise PyergonError("this timeline was built from histories and cannot refresh")
        self._auto_task = self._tasks.start(
            self._guarded(lambda: refresh_every(self.refresh, self.interval, lambda: self.final)),
            name="pyergon-timeline-auto-refresh",
        )
        if self._auto_task is None:
            raise PyergonError("auto-refresh needs a running event loop, as a kernel has")
        self._auto_task.add_done_callback(lambda _: self._settle())
        self._sync_toolbar()

    def stop(self) -> None:
        """Stop refreshing automatically."""
        task, self._auto_task = self._auto_task, None
        if task is not None:
            task.cancel()
        self._sync_toolbar()

    def _displayed(self) -> None:
        """Start the auto-refresh asked for when the timeline is displayed (once)."""
        if self._auto_refresh_wanted and self._loader is not None and not self.auto_refreshing:
            self._toggled(True)

    def _settle(self) -> None:
        """The auto-refresh ended: redraw the outputs with every form, PNG included."""
        self.redraw()
        self._sync_toolbar()

    def _refresh_in_background(self) -> None:
        """Start one :meth:`refresh` as a task: what the Refresh button does."""
        self._tasks.start(self._guarded(self.refresh), name="pyergon-timeline-refresh")

    def _toggled(self, on: bool) -> None:
        """Start or stop auto-refresh, keeping in ``error`` (shown in the widget) why not."""
        if not on:
            self.stop()
            return
        try:
            self.start()
        except PyergonError as error:
            self.error = error
            self._sync_toolbar()

    async def _guarded(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run background ``work``; a failure is shown in the widget and kept in ``error``."""
        try:
            await work()
        except Exception as error:
            self.error = error
            self._sync_toolbar()

    def _sync_toolbar(self) -> None:
        if self._widget is not None:
            self._widget.show_state(self)


class _TimelineWidget:
    """The ipywidgets tree of a timeline; only ever changed by setting widget values."""

    def __init__(self, timeline: Timeline) -> None:
        try:
            import ipywidgets
        except ImportError as error:
            raise PyergonError(
                'live timelines need ipywidgets: pip install "pyergon[notebook]"'
            ) from error
        can_refresh = timeline._loader is not None
        self.picture = ipywidgets.HTML(value=timeline.html())
        self.refresh_button = ipywidgets.Button(
            description="Refresh", icon="refresh", disabled=not can_refresh
        )
        self.auto_toggle = ipywidgets.ToggleButton(
            description="auto-refresh", value=False, disabled=not can_refresh
        )
        self.state = ipywidgets.Label(value="")
        self.refresh_button.on_click(lambda _button: timeline._refresh_in_background())
        self.auto_toggle.observe(lambda change: timeline._toggled(change["new"]), names="value")
        toolbar = ipywidgets.HBox([self.refresh_button, self.auto_toggle, self.state])
        self.root = ipywidgets.VBox([toolbar, self.picture])
        self.root.add_class("pyergon-timeline-widget")

    def show(self, timeline: Timeline) -> None:
        self.picture.value = timeline.html()
        self.show_state(timeline)

    def show_state(self, timeline: Timeline) -> None:
        live = timeline.auto_refreshing
        if self.auto_toggle.value != live:
            self.auto_toggle.value = live
        if timeline.error is not None:
            self.state.value = f"refresh failed: {type(timeline.error).__name__}: {timeline.error}"
        elif live:
            self.state.value = f"refreshing every {timeline.interval:g}s"
        else:
            self.state.value = "all flows final" if timeline.final else ""
