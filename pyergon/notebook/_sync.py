"""Run a coroutine to completion from code that cannot ``await``, on the loop already running.

A notebook cell's synchronous code (an IPython magic, a widget callback) runs *inside* the
kernel's event loop. :func:`run_sync` runs a coroutine to completion right there, on that loop,
made re-entrant with ``nest-asyncio2`` the first time it is needed, so tasks the coroutine starts
(workers) live on the kernel's loop. Nothing is patched unless a loop is already running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from pyergon.errors import PyergonError

__all__ = ["make_reentrant", "run_sync"]

T = TypeVar("T")


def run_sync(awaitable: Awaitable[T], *, loop: asyncio.AbstractEventLoop | None = None) -> T:
    """Run ``awaitable`` to completion from synchronous code and return its result.

    Where it runs:

    * When an event loop is running in this thread (a Jupyter kernel), on that loop, after
      :func:`make_reentrant` made it re-entrant. Tasks the awaitable starts stay on the loop and
      keep running between cells.
    * Otherwise on ``loop`` when given (a plain IPython terminal keeps one loop for all its
      cells). Tasks it starts progress only while something runs that loop again: the next
      ``run_sync`` on it, or a cell with top-level ``await`` in IPython.
    * Otherwise on a new loop that is closed afterwards, as :func:`asyncio.run` does; tasks the
      awaitable started are cancelled with it.

    If the run is interrupted (Ctrl-C in the kernel), the awaitable is cancelled; tasks it
    started are not.

    Args:
        awaitable: A coroutine or other awaitable.
        loop: The loop to use when none is running; ignored when one is.

    Returns:
        What the awaitable returns.

    Raises:
        PyergonError: A loop is running but ``nest-asyncio2`` is not installed.
    """
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None:
        make_reentrant(running)
        return _run_to_completion(running, awaitable)
    if loop is not None:
        return _run_to_completion(loop, awaitable)
    return asyncio.run(_awaited(awaitable))


def make_reentrant(loop: asyncio.AbstractEventLoop) -> None:
    """Let ``loop.run_until_complete`` be called while ``loop`` runs, with ``nest-asyncio2``.

    Applied once per loop: a loop already patched (by an earlier call, by ipykernel or by the
    original ``nest-asyncio``) is left as it is. ``nest-asyncio2`` is imported here only, so
    nothing is patched in a process that never needs it.

    Raises:
        PyergonError: ``nest-asyncio2`` is not installed.
    """
    if getattr(loop, "_nest_patched", False):  # the marker both nest-asyncio forks set
        return
    try:
        import nest_asyncio2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise PyergonError(
            "running pyergon from synchronous code inside a running event loop needs "
            'nest-asyncio2: pip install "pyergon[notebook]"; or await the coroutine instead'
        ) from error
    nest_asyncio2.apply(loop)


def _run_to_completion(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T]) -> T:
    task = asyncio.ensure_future(awaitable, loop=loop)
    try:
        return loop.run_until_complete(task)
    finally:
        if not task.done():  # interrupted: do not leave the work running behind the user's back
            task.cancel()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
