"""The threads a worker runs ``def`` step bodies in: a pool with a short way back to the loop.

``loop.run_in_executor`` on a ``ThreadPoolExecutor`` passes each call through a
``concurrent.futures.Future`` (a condition variable, a lock, done callbacks) before it reaches
the loop: about 70 µs a call on the two-CPU machine the benchmarks run on. :meth:`StepThreads.start`
hands a call to an idle thread through a queue and sets an asyncio future straight from that
thread, which takes about 30 (``benchmarks/README.md``, ``sync_step_overhead``). It is still a
``concurrent.futures.Executor``, so whatever takes an executor can take one.

A worker owns its threads. A direct run given none uses its event loop's (:func:`loop_threads`),
as ``run_in_executor`` uses the loop's default executor: made when a ``def`` step first runs on
the loop, each thread ending after :data:`IDLE_SECONDS` without work, so a closed loop leaves none
behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

__all__ = ["IDLE_SECONDS", "LOOP_THREADS", "StepThreads", "loop_threads"]

IDLE_SECONDS = 10.0
"""How long a thread of a loop's :class:`StepThreads` waits for work before it ends."""

LOOP_THREADS = 8
"""The most threads an event loop's :class:`StepThreads` runs at once."""

_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StepThreads] = (
    weakref.WeakKeyDictionary()
)

T = TypeVar("T")

_Job = tuple[Callable[[], Any], Callable[[Any, BaseException | None], None]]


class StepThreads(Executor):
    """Up to ``size`` threads, started as calls need them, named ``<prefix>-<n>``.

    Args:
        size: The most threads at once (a worker passes its ``max_concurrent_flows``).
        prefix: The threads' name prefix.
        idle_seconds: A thread without work for this long ends; ``None``: it waits until
            :meth:`shutdown`.
    """

    def __init__(self, size: int, prefix: str, *, idle_seconds: float | None = None) -> None:
        if size < 1:
            raise ValueError(f"StepThreads needs at least one thread, got size={size}")
        self._size = size
        self._prefix = prefix
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False
        self._idle_seconds = idle_seconds
        self._started = 0

    def start(
        self, loop: asyncio.AbstractEventLoop, function: Callable[[], T]
    ) -> asyncio.Future[T]:
        """Run ``function`` in a thread; the returned future (of ``loop``) gets its outcome.

        Call it on ``loop``'s thread. Cancelling the future does not stop the call.
        """
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, result, error)

        self._put((function, settle))
        return future

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` in a thread, as any ``concurrent.futures`` executor."""
        future: Future[T] = Future()

        def settle(result: Any, error: BaseException | None) -> None:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        def call() -> T:
            return fn(*args, **kwargs)

        if future.set_running_or_notify_cancel():
            self._put((call, settle))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let every thread end once the calls handed over so far are done.

        ``cancel_futures`` is accepted for the ``Executor`` interface; calls already handed
        over run (a step's body is never dropped half-way).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        for _thread in threads:
            self._jobs.put(None)
        if wait:
            for thread in threads:
                thread.join()

    def _put(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot run a step body after its worker's threads shut down")
            if self._idle <= 0 and len(self._threads) < self._size:
                self._started += 1
                thread = threading.Thread(
                    target=self._serve, name=f"{self._prefix}-{self._started}", daemon=True
                )
                self._threads.append(thread)
                self._idle += 1
                thread.start()
            self._idle -= 1
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._idle <= 0:
                        continue  # a call was handed over as the wait ran out: take it
                    self._idle -= 1
                    self._threads.remove(threading.current_thread())
                return
            if job is None:
                return
            function, settle = job
            try:
                outcome: tuple[Any, BaseException | None] = (function(), None)
            except BaseException as error:  # handed to the waiting future, as an executor does
                outcome = (None, error)
            settle(*outcome)
            del job, function, settle, outcome  # hold no step's result until the next call
            with self._lock:
                self._idle += 1


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile: nobody waits for the outcome
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def loop_threads(loop: asyncio.AbstractEventLoop) -> StepThreads:
    """The step threads of ``loop``, made on first use (see the module's docstring)."""
    threads = _by_loop.get(loop)
    if threads is None:
        threads = StepThreads(LOOP_THREADS, "pyergon-step", idle_seconds=IDLE_SECONDS)
        _by_loop[loop] = threads
    return threads
