"""What the notebook views share: the three-way repr and view tasks.

Every view renders as short deterministic text, as static escaped HTML, and, only when
ipywidgets is importable and a kernel is running, as a live widget (dask's cluster-repr
pattern). Background work of a view runs as tasks on the running loop that the view holds
strongly; those tasks update widget values and never print. Escaping and status colours live
in :mod:`pyergon._history_html`, shared with a flow history's own HTML.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

__all__ = [
    "WIDGET_VIEW_MIMETYPE",
    "View",
    "ViewTasks",
    "kernel_running",
    "live_widgets_available",
    "refresh_every",
]

WIDGET_VIEW_MIMETYPE = "application/vnd.jupyter.widget-view+json"
"""The mimetype under which a kernel front end finds a widget to show."""


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
