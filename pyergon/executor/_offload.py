"""Running the body of a ``def`` step off the event loop: in a thread, or in a process.

A ``def`` step's body runs in the flow's thread pool (a worker's own, or the loop's default
executor), in a copy of the calling task's context, so the flow's context, the step's numbering
and its idempotency key are the same there as in an ``async def`` step's body. A thread cannot
be killed: a task cancelled while the body runs waits for it to return, and a timed-out attempt
is abandoned (its result dropped) but no retry of the step, and no end of the flow's run, starts
before it returns. :func:`block_on` lets the body use pyergon's async operations (recorded
values, async steps) by running them on the flow's loop.

Process isolation (``@step(isolate="process")``) lives in :mod:`pyergon.executor._process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pyergon._context import FlowContext, Position
from pyergon.errors import PyergonError
from pyergon.executor._steps import step_timeout_error
from pyergon.executor._threads import StepThreads, loop_threads

__all__ = [
    "block_on",
    "in_step_thread",
    "outlast_cancellation",
    "run_in_thread",
    "wait_for_abandoned",
]

T = TypeVar("T")

logger = logging.getLogger("pyergon.worker")

_step_thread_loop: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = (
    contextvars.ContextVar("pyergon_step_thread_loop", default=None)
)
"""The flow's event loop while a ``def`` step's body runs in a thread; ``None`` elsewhere."""


def in_step_thread() -> bool:
    """Whether the calling code is the body of a ``def`` step, running in its thread."""
    return _step_thread_loop.get() is not None


class _ThreadCall:
    """One call of a step body in a pool thread: dropped if given up before a thread takes it.

    The lock makes "a thread started it" and "the loop dropped it" exclusive, so a call given
    up before it started never runs, and one that started is always waited for.
    """

    __slots__ = ("_dropped", "_ended", "_function", "_lock", "_loop", "_on_end", "_started")

    def __init__(self, loop: asyncio.AbstractEventLoop, function: Callable[[], Any]) -> None:
        self._loop = loop
        self._function = function
        self._lock = threading.Lock()
        self._started = False
        self._dropped = False
        self._ended = False
        self._on_end: asyncio.Future[None] | None = None

    def __call__(self) -> Any:
        """Run the body (in the pool thread, inside the copied context)."""
        with self._lock:
            if self._dropped:
                return None
            self._started = True
        _step_thread_loop.set(self._loop)  # the copied context is this call's alone
        try:
            return self._function()
        finally:
            with self._lock:
                self._ended = True
                on_end = self._on_end
            if on_end is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    self._loop.call_soon_threadsafe(_set_done, on_end)

    def give_up(self) -> asyncio.Future[None] | None:
        """Stop waiting for the call (on the loop): drop it if no thread took it yet.

        Returns:
            A future done once the body returns, if it still runs; ``None`` if it never
            started or has returned.
        """
        with self._lock:
            if not self._started:
                self._dropped = True
                return None
            if self._ended:
                return None
            self._on_end = self._loop.create_future()
            return self._on_end


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def run_in_thread(
    context: FlowContext,
    position: Position | None,
    name: str,
    function: Callable[[], T],
    timeout: float | None = None,
) -> T:
    """Run one attempt of a ``def`` step's body in the flow's thread pool and return its result.

    Args:
        context: The running flow; its ``thread_pool`` runs the body (``None``: the loop's
            step threads, see ``_threads``).
        position: The step's log position; ``None`` for a step called inside another step's
            body, which is part of that step.
        name: The step's name, for messages.
        function: The body, bound to its arguments.
        timeout: Seconds the attempt may run; at the deadline it fails with
            ``StepTimeoutError`` and the thread, which cannot be stopped, is abandoned.

    Raises:
        StepTimeoutError: The attempt ran past ``timeout``.
        asyncio.CancelledError: The task was cancelled; raised once the body has returned.
    """
    loop = asyncio.get_running_loop()
    if position is not None and context.abandoned_threads:
        await wait_for_abandoned(context, position)
    call = _ThreadCall(loop, function)
    # Awaited directly, not through asyncio.wait: one pass of the loop less per step.
    pool = context.thread_pool or loop_threads(loop)
    bound = functools.partial(contextvars.copy_context().run, call)
    future: asyncio.Future[T] = (
        pool.start(loop, bound)  # the short way back to the loop (``_threads``)
        if isinstance(pool, StepThreads)
        else loop.run_in_executor(pool, bound)
    )
    try:
        if timeout is None:
            return await future
        async with asyncio.timeout(timeout) as scope:
            return await future
    except TimeoutError:
        if timeout is None or not scope.expired():
            raise  # the body's own TimeoutError: an error of the attempt like any other
        assert position is not None  # only a step's own attempt has a timeout
        running = call.give_up()
        if running is not None:
            if context.abandoned_threads is None:
                context.abandoned_threads = {}
            context.abandoned_threads[position] = running
        raise step_timeout_error(context, position, name, timeout) from None
    except asyncio.CancelledError:
        running = call.give_up()
        if running is not None:
            logger.warning(
                "step %r of flow %r was cancelled while its body runs in a thread, which "
                "cannot be stopped; the flow waits for it to return",
                name,
                context.flow_id,
            )
            await outlast_cancellation(running)
        raise


async def wait_for_abandoned(context: FlowContext, position: Position | None = None) -> None:
    """Wait until the abandoned (timed-out) threads of a step, or of the whole flow, returned.

    A retry of a step waits for its last attempt's thread, so two copies of one step never run
    at once; a run waits for them all before it leaves its flow, so no other run starts one.
    """
    abandoned = context.abandoned_threads
    if not abandoned:
        return
    positions = list(abandoned) if position is None else [position]
    for at in positions:
        future = abandoned.get(at)
        if future is None:
            continue
        if not future.done():
            logger.warning(
                "%s: waiting for the thread of an attempt that timed out to return (a thread "
                "cannot be stopped)",
                context.describe(at),
            )
            await outlast_cancellation(future)
        abandoned.pop(at, None)


async def outlast_cancellation(future: asyncio.Future[Any]) -> None:
    """Wait until ``future`` is done, through any number of cancellations; re-raise one after.

    Whatever waits for a thread cannot stop it, so it waits for its end either way.
    """
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def block_on(awaitable: Awaitable[T]) -> T:
    """Run a pyergon awaitable on the flow's event loop from a ``def`` step; return its result.

    A ``def`` step's body runs in a thread and cannot ``await``; pyergon's async operations
    work there through this call, exactly as they do awaited in an ``async def`` step::

        @step
        def stamp(self) -> str:
            when = pyergon.block_on(pyergon.now())  # recorded: a replay sees the same time
            return when.isoformat()

    Args:
        awaitable: What to run, e.g. ``pyergon.now()`` or a call of an ``async def`` step.

    Returns:
        Its result.

    Raises:
        PyergonError: Not called from the body of a ``def`` step run by a flow (in ``async``
            code, ``await`` the value instead; a process step has no flow to run it on).
    """
    loop = _step_thread_loop.get()
    if loop is None:
        close = getattr(awaitable, "close", None)
        if callable(close):
            close()  # not run: no "never awaited" warning on top of this error
        raise PyergonError(
            "block_on() runs an awaitable from the body of a def step run by a flow; in async "
            "code, await it instead (a step with isolate='process' runs apart from its flow "
            "and cannot use it)"
        )
    return asyncio.run_coroutine_threadsafe(_on_loop(awaitable), loop).result()


async def _on_loop(awaitable: Awaitable[T]) -> T:
    # This task's context is a copy of the step thread's: on the loop it is no thread any more.
    _step_thread_loop.set(None)
    return await awaitable
