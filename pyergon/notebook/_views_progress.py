"""Bars in the waiting cell: the progress of the running steps of the flows a cell awaits.

While ``await session.wait(ids)`` waits, :func:`progress_bars` reads the running steps of those
flows from the live workers' heartbeats every :data:`REFRESH_INTERVAL` seconds and shows a bar
for each step that reports progress; a bar goes when its step ends, and every bar when the wait
ends. tqdm is optional: without it nothing is shown and nothing is read. In a terminal the bars
are tqdm's; in a kernel they are one static output of the cell (text and HTML), replaced in
place and emptied at the end, since tqdm's notebook bars are widgets, which a saved notebook
shows as "model not found".
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any

from pyergon._history_html import escape, step_progress_html
from pyergon.core.records import StepProgress
from pyergon.core.workers import StepActivity, WorkerRecord, running_steps
from pyergon.notebook._views_common import kernel_running, refresh_every

__all__ = [
    "REFRESH_INTERVAL",
    "DisplayedBars",
    "StepBars",
    "progress_bars",
    "tqdm_factory",
]

REFRESH_INTERVAL = 1.0
"""Seconds between two reads of the workers' heartbeats, the monitor's pace."""

_Key = tuple[str, str]
"""A running step: its flow id and position."""


def tqdm_factory() -> Callable[..., Any] | None:
    """``tqdm.auto.tqdm`` if tqdm is installed, else ``None``."""
    try:
        module = importlib.import_module("tqdm.auto")
    except ImportError:
        return None
    factory: Callable[..., Any] = module.tqdm
    return factory


class StepBars:
    """One tqdm bar per running step that reports progress, kept in step with what is read.

    Args:
        tqdm: Makes a bar, called as ``tqdm.auto.tqdm`` is.
    """

    def __init__(self, tqdm: Callable[..., Any]) -> None:
        self._tqdm = tqdm
        self._bars: dict[_Key, Any] = {}

    def show(self, running: Collection[StepActivity]) -> None:
        """Open, move or close bars so there is one per step of ``running`` with progress."""
        current = {
            (activity.flow_id, activity.position): activity
            for activity in running
            if activity.progress is not None
        }
        for key in [key for key in self._bars if key not in current]:
            self._bars.pop(key).close()
        for key, activity in current.items():
            assert activity.progress is not None  # kept above
            bar = self._bars.get(key)
            if bar is None:
                bar = self._bars[key] = self._tqdm(
                    total=activity.progress.total,
                    desc=f"{activity.flow_id} {activity.position} {activity.step}",
                    leave=False,
                )
            _move(bar, activity.progress)

    def close(self) -> None:
        """Close every bar."""
        bars, self._bars = self._bars, {}
        for bar in bars.values():
            bar.close()


class DisplayedBars:
    """The steps' bars as one output of the cell: a line of text and an HTML bar per step.

    The output is displayed at the first step with progress, replaced in place as the steps
    move, and emptied by :meth:`close`, as tqdm's bars with ``leave=False`` go. It holds no
    widget, so a notebook saved while it shows keeps a readable output.
    """

    def __init__(self) -> None:
        self._handle: Any = None
        self._shown: dict[str, str] = {}

    def show(self, running: Collection[StepActivity]) -> None:
        """Show one bar per step of ``running`` with progress (and none if none has)."""
        steps = sorted(
            (activity for activity in running if activity.progress is not None),
            key=lambda activity: (activity.flow_id, activity.position),
        )
        if self._handle is None and not steps:
            return
        self._put(_bars_bundle(steps) if steps else {})

    def close(self) -> None:
        """Empty the output: the cell keeps nothing of the bars."""
        if self._handle is not None:
            self._put({})

    def _put(self, bundle: dict[str, str]) -> None:
        if self._handle is not None and bundle == self._shown:
            return  # unchanged: no message to the front end
        if self._handle is None:
            from IPython.display import display

            show: Callable[..., Any] = display  # IPython's display is untyped
            self._handle = show(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)
        self._shown = bundle


def _bars_bundle(steps: list[StepActivity]) -> dict[str, str]:
    """``text/plain`` and ``text/html`` of the bars of ``steps`` (each with progress)."""
    lines, rows = [], []
    for activity in steps:
        assert activity.progress is not None  # kept by the caller
        label = f"{activity.flow_id} {activity.position} {activity.step}"
        lines.append(f"{label}: {activity.progress.describe()}")
        rows.append(
            f"<tr><td><code>{escape(activity.flow_id)}</code></td>"
            f"<td>{escape(activity.position)} {escape(activity.step)}</td>"
            f"<td>{step_progress_html(activity.progress)}</td></tr>"
        )
    page = f'<table class="pyergon-bars"><tbody>{"".join(rows)}</tbody></table>'
    return {"text/plain": "\n".join(lines), "text/html": page}


def _move(bar: Any, progress: StepProgress) -> None:
    if bar.total != progress.total:
        bar.total = progress.total
    bar.n = progress.done
    if progress.message:
        bar.set_postfix_str(progress.message, refresh=False)
    bar.refresh()


def _bars() -> DisplayedBars | StepBars | None:
    """The bars to show, if tqdm is installed: an output of the cell in a kernel, else tqdm's."""
    tqdm = tqdm_factory()
    if tqdm is None:
        return None
    return DisplayedBars() if kernel_running() else StepBars(tqdm)


@asynccontextmanager
async def progress_bars(
    read_workers: Callable[[], Awaitable[list[WorkerRecord]]],
    flow_ids: Collection[str],
    on_error: Callable[[BaseException], None],
) -> AsyncIterator[None]:
    """Show bars for the running steps of ``flow_ids`` while the ``async with`` body runs.

    Shown only when tqdm is installed: in a kernel as :class:`DisplayedBars`, else as tqdm's.

    Args:
        read_workers: Reads the workers' records (with what they run now).
        flow_ids: The flows awaited.
        on_error: Told of an error reading storage; the bars then stop, the body goes on.
    """
    bars = _bars()
    if bars is None or not flow_ids:
        yield
        return
    wanted = frozenset(flow_ids)

    async def refresh() -> None:
        steps = running_steps(await read_workers(), time.time())
        bars.show([step for flow_id in wanted for step in steps.get(flow_id, ())])

    async def keep_showing() -> None:
        try:
            await refresh_every(refresh, REFRESH_INTERVAL)
        except Exception as error:  # shown bars are a nicety: the wait goes on without them
            on_error(error)

    task = asyncio.ensure_future(keep_showing())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        bars.close()
