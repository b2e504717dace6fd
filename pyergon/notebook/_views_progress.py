"""tqdm bars in the waiting cell: the progress of the running steps of the flows a cell awaits.

While ``await session.wait(ids)`` waits, :func:`progress_bars` reads the running steps of those
flows from the live workers' heartbeats every :data:`REFRESH_INTERVAL` seconds and shows each
step that reports progress as a ``tqdm.auto`` bar in that cell (a widget in a notebook, text in
a terminal); a bar closes when its step ends, and every bar when the wait ends. tqdm is optional:
without it nothing is shown and nothing is read.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any

from pyergon.core.records import StepProgress
from pyergon.core.workers import StepActivity, WorkerRecord, running_steps
from pyergon.notebook._views_common import refresh_every

__all__ = ["REFRESH_INTERVAL", "StepBars", "progress_bars", "tqdm_factory"]

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


def _move(bar: Any, progress: StepProgress) -> None:
    if bar.total != progress.total:
        bar.total = progress.total
    bar.n = progress.done
    if progress.message:
        bar.set_postfix_str(progress.message, refresh=False)
    bar.refresh()


@asynccontextmanager
async def progress_bars(
    read_workers: Callable[[], Awaitable[list[WorkerRecord]]],
    flow_ids: Collection[str],
    on_error: Callable[[BaseException], None],
) -> AsyncIterator[None]:
    """Show tqdm bars for the running steps of ``flow_ids`` while the ``async with`` body runs.

    Args:
        read_workers: Reads the workers' records (with what they run now).
        flow_ids: The flows awaited.
        on_error: Told of an error reading storage; the bars then stop, the body goes on.
    """
    tqdm = tqdm_factory()
    if tqdm is None or not flow_ids:
        yield
        return
    bars = StepBars(tqdm)
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
