"""What the notebook views share: escaping, status colours, the three-way repr, view tasks.

Every view renders as short deterministic text, as static escaped HTML, and, only when
ipywidgets is importable and a kernel is running, as a live widget (dask's cluster-repr
pattern). Background work of a view runs as tasks on the running loop that the view holds
strongly; those tasks update widget values and never print.
"""

from __future__ import annotations

import asyncio
import html
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from pyergon.core.records import Invocation
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.history import FlowHistory

__all__ = [
    "FLOW_COLOURS",
    "RECORD_COLOURS",
    "WIDGET_VIEW_MIMETYPE",
    "View",
    "ViewTasks",
    "escape",
    "history_html",
    "kernel_running",
    "live_widgets_available",
    "refresh_every",
    "seconds",
]

WIDGET_VIEW_MIMETYPE = "application/vnd.jupyter.widget-view+json"
"""The mimetype under which a kernel front end finds a widget to show."""

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

_UNSHOWABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
"""Characters that are not allowed in XML (and so break an SVG) or cannot be encoded."""


def escape(text: object) -> str:
    """Return ``str(text)`` safe inside HTML or SVG text and quoted attributes.

    Control characters and lone surrogates, which no XML document may hold, become U+FFFD.
    """
    return html.escape(_UNSHOWABLE.sub("\ufffd", str(text)), quote=True)


def seconds(value: float) -> str:
    """A duration rounded to the millisecond, as in ``1.250s``."""
    return f"{max(value, 0.0):.3f}s"


def kernel_running() -> bool:
    """Whether this code runs inside a Jupyter kernel (an IPython shell with a ``kernel``)."""
    try:
        import IPython
    except ImportError:
        return False
    shell = IPython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def live_widgets_available() -> bool:
    """Whether a view may add a live widget: a kernel is running and ipywidgets imports."""
    if not kernel_running():
        return False
    try:
        import ipywidgets  # noqa: F401 - only whether it imports matters
    except ImportError:
        return False
    return True


class View(ABC):
    """A view that renders three ways; subclasses give :meth:`text`, :meth:`html`, :meth:`widget`.

    ``repr()`` is the text; IPython's display gets text and HTML always, plus the widget view
    when :func:`live_widgets_available`.
    """

    @abstractmethod
    def text(self) -> str:
        """The short deterministic ``text/plain`` form (terminals, nbval)."""

    @abstractmethod
    def html(self) -> str:
        """The static, escaped ``text/html`` form (nbviewer, exported HTML, GitHub)."""

    @abstractmethod
    def widget(self) -> Any:
        """The live ipywidgets widget, built once."""

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return self.html()

    def _repr_mimebundle_(
        self, include: object = None, exclude: object = None, **kwargs: object
    ) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": self.text(), "text/html": self.html()}
        if live_widgets_available():
            bundle[WIDGET_VIEW_MIMETYPE] = {
                "version_major": 2,
                "version_minor": 0,
                "model_id": self.widget().model_id,
            }
        return bundle


async def refresh_every(
    refresh: Callable[[], Awaitable[object]],
    interval: float,
    finished: Callable[[], bool] = lambda: False,
) -> None:
    """Call ``refresh`` now and then every ``interval`` seconds until ``finished()``."""
    while True:
        await refresh()
        if finished():
            return
        await asyncio.sleep(interval)


class ViewTasks:
    """Starts a view's background tasks on the running loop and holds them until they end.

    Args:
        keep: Also hand every task to this owner (a session, so closing it cancels them).
    """

    def __init__(self, keep: Callable[[asyncio.Task[Any]], None] | None = None) -> None:
        self._keep = keep
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        """Run ``work`` as a task on the running loop; ``None`` (and ``work`` closed) if none."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            work.close()
            return None
        task = asyncio.ensure_future(work, loop=loop)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._keep is not None:
            self._keep(task)
        return task


def _offset(timestamp: float | None, origin: float) -> str:
    return "" if timestamp is None else f"+{seconds(timestamp - origin)}"


def _record_row(record: Invocation, origin: float) -> str:
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
    if record.error is not None:
        details.append(f"{escape(record.error.short_type)}: {escape(record.error.message)}")
    colour = RECORD_COLOURS[record.status]
    return (
        f"<tr><td>{escape(record.position)}</td><td>{escape(record.kind.value)}</td>"
        f"<td>{escape(record.name)}</td>"
        f'<td style="color:{colour}">{escape(record.status.value)}</td>'
        f"<td>{record.attempts}</td><td>{_offset(record.started_at, origin)}</td>"
        f"<td>{took}</td><td>{'; '.join(details)}</td></tr>"
    )


def history_html(history: FlowHistory) -> str:
    """A flow's header and its records table as escaped HTML; times are offsets from creation."""
    flow = history.flow
    colour = FLOW_COLOURS[flow.status]
    facts = [f"type <code>{escape(flow.flow_type)}</code>", f"attempt {flow.attempt}"]
    if flow.parent_flow_id is not None:
        facts.append(f"child of <code>{escape(flow.parent_flow_id)}</code>")
    if flow.worker_id is not None:
        facts.append(f"worker <code>{escape(flow.worker_id)}</code>")
    if flow.cancel_requested:
        facts.append("cancel requested")
    facts.append(f"{len(history.signals)} signal(s), {len(history.children)} child flow(s)")
    error = (
        f"<pre>{escape(flow.error.short_type)}: {escape(flow.error.message)}</pre>"
        if flow.error is not None
        else ""
    )
    rows = "".join(_record_row(record, flow.created_at) for record in history.invocations)
    table = (
        "<table><thead><tr><th>position</th><th>kind</th><th>name</th><th>status</th>"
        "<th>attempts</th><th>started</th><th>duration</th><th>detail</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if history.invocations
        else "<p>no records yet</p>"
    )
    return (
        f'<div class="pyergon-history"><b>{escape(flow.flow_id)}</b> '
        f'<span style="color:{colour}">{escape(flow.status.value)}</span> · '
        f"{' · '.join(facts)}{error}{table}</div>"
    )
