"""What the notebook views share: static outputs that refresh in place, and view tasks.

A view's output is static: short deterministic text plus a picture or escaped HTML that shows
without a kernel and without trust (see :mod:`pyergon.notebook._views_static`); it never holds
a widget view, which a saved notebook cannot show. Displayed in a kernel, a view keeps the
display handle of each output it made and a refresh replaces them in place, even from a task
after the cell ended; until it settles it also redraws them as each later cell ends, so a
headless run (nbclient, papermill), which keeps only what a running cell publishes, stores the
last reading. ipywidgets controls come only from a view's ``widget()``. Background work
of a view runs as tasks on the running loop that the view holds strongly; they never print.
Escaping and status colours live in :mod:`pyergon._history_html`.
"""

from __future__ import annotations

import asyncio
import logging
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

logger = logging.getLogger(__name__)

WIDGET_VIEW_MIMETYPE = "application/vnd.jupyter.widget-view+json"
"""The mimetype under which a kernel front end finds a widget to show; no view output has it."""


def kernel_running() -> bool:
    """Whether this code runs inside a Jupyter kernel (an IPython shell with a ``kernel``)."""
    try:
        import IPython
    except ImportError:
        return False
    shell = IPython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def live_widgets_available() -> bool:
    """Whether ``view.widget()`` can show: a kernel is running and ipywidgets imports."""
    if not kernel_running():
        return False
    try:
        import ipywidgets  # noqa: F401 - only whether it imports matters
    except ImportError:
        return False
    return True


class View(ABC):
    """A view with a static output that refreshes in place; subclasses give the renderings.

    ``repr()`` is :meth:`text`; IPython gets :meth:`bundle`. Displayed (the result of a cell,
    or ``display(view)``), a view remembers the output, and :meth:`redraw` shows the view as it
    is now in every output it made (in a kernel; a terminal gets the text once).
    """

    def __init__(self) -> None:
        self._displays: list[Any] = []
        self._cell_hook: Callable[[object], None] | None = None

    @abstractmethod
    def text(self) -> str:
        """The short deterministic ``text/plain`` form (terminals, nbval)."""

    @abstractmethod
    def bundle(self, *, png: bool = True) -> dict[str, str]:
        """The static outputs by mimetype; ``png=False`` leaves out a PNG that is slow to draw."""

    @abstractmethod
    def widget(self) -> Any:
        """The ipywidgets view with its controls, built once; its output needs a kernel."""

    @property
    def settled(self) -> bool:
        """Whether the view will not change by itself, so its outputs should carry every form."""
        return True

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(
        self, include: object = None, exclude: object = None, **kwargs: object
    ) -> dict[str, str]:
        return self.bundle()

    def _ipython_display_(self) -> None:
        """Display the static bundle; in a kernel with a display id, so a refresh replaces it.

        A terminal IPython gets the text once: it would print every refresh again.
        """
        from IPython.display import display

        show: Callable[..., Any] = display  # IPython's display is untyped
        if not kernel_running():
            show({"text/plain": self.text()}, raw=True)
            return
        self._displays.append(show(self.bundle(), raw=True, display_id=True))
        self._displayed()
        if not self.settled:
            self._redraw_after_cells()

    def _displayed(self) -> None:  # noqa: B027 - a hook: most views do nothing when shown
        """Called once the view is displayed: where a view starts refreshing itself."""

    def _redraw_after_cells(self) -> None:
        """Redraw as each cell ends, until settled: what the running cell publishes is kept.

        A task's redraw is published under the cell that started it; a headless run
        (nbclient, papermill) has moved on by then and drops it, so a refresh would never
        reach the saved output. A redraw from a cell's ``post_run_cell`` is published under
        the cell running now, which such a run applies to every output of the display id.
        """
        import IPython

        events = getattr(IPython.get_ipython(), "events", None)
        if events is None or self._cell_hook is not None:
            return

        def cell_ran(result: object) -> None:
            try:
                self.redraw()
            except Exception:  # a view that cannot draw stops redrawing; the cells go on
                logger.exception("pyergon: a view could not be redrawn; it stops redrawing")
                done = True
            else:
                done = self.settled
            if done:
                events.unregister("post_run_cell", cell_ran)
                self._cell_hook = None

        self._cell_hook = cell_ran
        events.register("post_run_cell", cell_ran)

    def redraw(self) -> None:
        """Show the view as it is now in every output it was displayed in.

        The PNG is drawn only when the view is :attr:`settled`: while it refreshes often, the
        SVG shows, and the last redraw leaves the PNG in the notebook.
        """
        if not self._displays:
            return
        bundle = self.bundle(png=self.settled)
        for handle in self._displays:
            handle.update(bundle, raw=True)


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
