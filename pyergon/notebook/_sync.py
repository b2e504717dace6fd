"""Run coroutines to completion from code that cannot ``await``.

A notebook cell's synchronous code (an IPython magic, a widget callback) runs *inside* the
kernel's event loop. :func:`run_sync` runs a coroutine to completion right there, on that loop,
made re-entrant with ``nest-asyncio2`` the first time it is needed, so tasks the coroutine starts
(workers) live on the kernel's loop. Nothing is patched unless a loop is already running.

A script has no loop: :class:`LoopThread` keeps one running in a thread of its own, so tasks
started on it (workers) keep running between two calls. :func:`blocking` turns an async method
into a blocking one of a :class:`SyncFront`, keeping its signature for type checkers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Concatenate, Generic, ParamSpec, Protocol, TypeVar

from pyergon.errors import PyergonError

__all__ = [
    "LoopRunner",
    "LoopThread",
    "RunningLoop",
    "SyncFront",
    "blocking",
    "make_reentrant",
    "run_sync",
]

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")
S_co = TypeVar("S_co", covariant=True)
"""A front of a subclass is a front of its base: methods a mixin defines are offered too."""
P = ParamSpec("P")


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


def _start_linked(
    loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T], done: concurrent.futures.Future[T]
) -> None:
    """On ``loop``: run ``awaitable`` as a task whose outcome ``done`` receives.

    Cancelling ``done`` (from any thread, before or after this runs) cancels the task.
    """
    if done.cancelled():
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        return
    task = asyncio.ensure_future(_awaited(awaitable))

    def cancel_task(future: concurrent.futures.Future[T]) -> None:
        if future.cancelled():
            loop.call_soon_threadsafe(task.cancel)

    def copy_outcome(finished: asyncio.Task[T]) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled meanwhile
            if finished.cancelled():
                done.cancel()
            elif finished.exception() is not None:
                done.set_exception(finished.exception())
            else:
                done.set_result(finished.result())

    done.add_done_callback(cancel_task)  # at once if it was cancelled since the check above
    task.add_done_callback(copy_outcome)


class LoopRunner(Protocol):
    """Runs awaitables to completion on one event loop, for callers that cannot ``await``."""

    def call(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` on the runner's loop and return its result."""
        ...

    def close(self) -> None:
        """Let go of the loop (stopping it if the runner started it)."""
        ...


class RunningLoop:
    """The event loop running in this thread (a Jupyter kernel's), through :func:`run_sync`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def call(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` on the kernel's loop, which must be this thread's running loop."""
        return run_sync(awaitable, loop=self.loop)

    def close(self) -> None:
        """Nothing to stop: the loop belongs to the kernel."""


class LoopThread:
    """An event loop running in a daemon thread of its own, for a caller without a loop.

    Tasks started on it (a session's workers) run between two calls as well as during them.
    A call blocks the calling thread until its coroutine is done; a ``KeyboardInterrupt``
    while it waits cancels that coroutine (not the tasks it started) and is raised again.

    Args:
        name: The thread's name.
    """

    def __init__(self, name: str = "pyergon-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def call(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` on the thread's loop and return its result, or raise its error.

        Raises:
            PyergonError: Called from the loop's own thread (from a flow's step, say), where
                waiting for the loop would wait forever; or after :meth:`close`.
        """
        refusal = None
        if threading.current_thread() is self._thread:
            refusal = (
                "a blocking pyergon call was made on the loop it waits for (from a flow's step "
                "or a task of the session?); use the async Session there and await it"
            )
        elif self.loop.is_closed() or not self._thread.is_alive():
            refusal = "this blocking session is closed; open a new one"
        if refusal is not None:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never to run: say so now, not in a warning at collection
            raise PyergonError(refusal)
        # The future exists before the coroutine is handed over, so a Ctrl-C at any moment
        # (even before run_coroutine_threadsafe would have returned one) stops the coroutine.
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            self.loop.call_soon_threadsafe(_start_linked, self.loop, awaitable, done)
            return done.result()
        except BaseException:
            done.cancel()  # interrupted (Ctrl-C): the coroutine stops too, as with run_sync
            raise

    def close(self) -> None:
        """Stop the loop once the tasks still on it are cancelled, and wait for the thread."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            asyncio.set_event_loop(None)
            self.loop.close()


class SyncFront(Generic[S_co]):
    """A blocking face of an async object ``S``: its methods run on one loop through a runner.

    Subclasses list the methods they offer with :func:`blocking`.

    Args:
        target: The async object.
        runner: The loop its coroutines run on.
    """

    def __init__(self, target: S_co, runner: LoopRunner) -> None:
        self._target = target
        self._runner = runner


def blocking(
    method: Callable[Concatenate[S, P], Awaitable[R]],
) -> Callable[Concatenate[SyncFront[S], P], R]:
    """The blocking form of an async ``method`` of ``S``, as a method of ``SyncFront[S]``.

    It takes the same arguments, returns what the coroutine returns, and keeps the name and
    docstring of ``method``.
    """

    @functools.wraps(method)
    def call(self: SyncFront[S], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._runner.call(method(self._target, *args, **kwargs))

    return call
