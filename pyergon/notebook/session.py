"""A notebook's handle on pyergon: workers on the kernel's loop, tables, and flow control.

``session = await Session.open("sqlite:///flows.db")`` (or ``Session(storage)``) gives one
object for a notebook: it starts workers as tasks on the running event loop (no threads, no
second loop), keeps strong references to every task it starts, keeps every error a background
worker meets so a later cell sees it, and offers the management operations and DataFrames.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Collection, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pyergon._artifact_gc import DEFAULT_GRACE, GcReport, delete_flows
from pyergon.clock import Clock, SystemClock
from pyergon.core.outcome import Completed, FlowOutcome
from pyergon.core.status import TaskStatus
from pyergon.core.workers import default_worker_id
from pyergon.decorators import (
    flow_entry,
    flow_type_name,
    require_flow_class,
    require_flow_instance,
)
from pyergon.errors import PyergonError
from pyergon.executor._inputs import decode_flow
from pyergon.executor.executor import Executor
from pyergon.executor.scheduler import Scheduler
from pyergon.executor.worker import Worker, WorkerHandle
from pyergon.history import flows_frame
from pyergon.management import FlowManager, ReplayResult
from pyergon.notebook._background import BackgroundError, BackgroundErrors
from pyergon.notebook._cell_errors import interrupted_run, interrupted_wait, show_errors_in_cells
from pyergon.notebook._definitions import DefinitionWatch
from pyergon.notebook._session_views import SessionViews
from pyergon.notebook._stale_notes import StaleNotes, count_stale_steps
from pyergon.notebook._stepper import Stepper
from pyergon.notebook._sync import LoopRunner, LoopThread, RunningLoop, SyncFront, blocking
from pyergon.notebook._views_progress import progress_bars
from pyergon.serialization import Serializer, serializer_for
from pyergon.storage.base import ExecutionLog

if TYPE_CHECKING:
    import pandas as pd

    from pyergon.core.records import ScheduledFlow

__all__ = ["BackgroundError", "BackgroundErrors", "Session", "SyncSession"]


class Session(SessionViews):
    """Workers, flows and their history for one notebook (or any asyncio program).

    Args:
        storage: A connected storage backend.
        serializer: How values are stored; defaults to the pickle serializer.
        clock: Time source for workers and direct runs.
        close_storage: Whether :meth:`close` also closes ``storage``.
    """

    def __init__(
        self,
        storage: ExecutionLog,
        *,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
        close_storage: bool = False,
    ) -> None:
        self.storage = storage
        self.serializer = serializer_for(storage, serializer)
        self.clock = clock or SystemClock()
        self.opened_at = self.clock.now()
        """When the session was opened (its clock): a monitor shows the flows created since."""
        self.scheduler = Scheduler(storage, serializer=self.serializer, clock=self.clock)
        self.manager = FlowManager(storage, serializer=self.serializer, clock=self.clock)
        self.errors: list[BackgroundError] = []
        """Background errors not raised yet; :meth:`raise_for_errors` raises and clears them."""
        self._close_storage = close_storage
        self._classes: dict[str, type] = {}
        self._workers: list[tuple[Worker, WorkerHandle]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._stale = StaleNotes()
        self._worker_prefix = default_worker_id("notebook")
        """Shared by this session's workers: they differ in their number only."""
        show_errors_in_cells()
        self._definitions = DefinitionWatch(lambda: self.manager.classes, self._adopt)

    @classmethod
    async def open(cls, url: str, **options: Any) -> Session:
        """Open storage by URL (``sqlite:///flows.db``, ``redis://…``, ``memory://``…).

        The session owns that storage and closes it in :meth:`close`.

        Raises:
            UnsafeSerializerError: The storage is shared and no serializer was chosen for it
                (the storage is closed again).
        """
        from pyergon.storage._url import open_storage

        storage = await open_storage(url)
        try:
            return cls(storage, close_storage=True, **options)
        except BaseException:
            await storage.close()
            raise

    @classmethod
    def open_sync(cls, url: str, **options: Any) -> SyncSession:
        """Open a session for synchronous code: a script, or a notebook cell without ``await``.

        The returned :class:`SyncSession` has the methods of a session, blocking instead of
        async. Outside an event loop (a script) the session lives on an event loop in a thread
        of its own, so its workers keep running between two calls; close it (or use ``with``)
        to stop them. Inside a running loop (a Jupyter kernel) it uses that loop, made
        re-entrant with ``nest-asyncio2``, as ``await Session.open(url)`` would.

        Args:
            url: The storage URL, as for :meth:`open`.
            **options: The keyword arguments of :class:`Session`.
        """
        try:
            runner: LoopRunner = RunningLoop(asyncio.get_running_loop())
        except RuntimeError:
            runner = LoopThread(name="pyergon-session")
        try:
            session = runner.call(cls.open(url, **options))
        except BaseException:
            runner.close()
            raise
        return SyncSession(session, runner)

    def __repr__(self) -> str:
        return (
            f"Session(storage={self.storage!r}, workers={len(self.workers)}, "
            f"flow_types={sorted(self._classes)}, errors={len(self.errors)})"
        )

    def _repr_html_(self) -> str:
        workers = ", ".join(html.escape(worker.worker_id) for worker in self.workers) or "none"
        types = ", ".join(html.escape(name) for name in sorted(self._classes)) or "none"
        errors = f'<span style="color:#c62828">{len(self.errors)} background error(s)</span>'
        errors = errors if self.errors else "no background errors"
        return (
            f"<div><b>pyergon session</b> on <code>{html.escape(repr(self.storage))}</code><br>"
            f"workers: {workers}<br>flow types: {types}<br>{errors}</div>"
        )

    # -- flow types and workers ---------------------------------------------------------------

    @property
    def workers(self) -> list[Worker]:
        """The workers this session started and has not stopped."""
        return [worker for worker, handle in self._workers if handle.running]

    @property
    def closed(self) -> bool:
        """Whether the session was closed."""
        return self._closed

    async def register(self, *flow_classes: type) -> None:
        """Make flow classes known to the session and its running workers.

        Registering a class again, as re-running the cell that defines it does, replaces the
        old registration everywhere instead of adding a second one.
        """
        for flow_class in flow_classes:
            name = require_flow_class(flow_class)
            self._classes[name] = flow_class
            self.manager.register(flow_class)
            for worker in self.workers:
                await worker.register(flow_class)

    async def start_workers(
        self,
        *flow_classes: type,
        count: int = 1,
        concurrency: int = 10,
        lease_seconds: float | None = None,
    ) -> list[Worker]:
        """Start ``count`` workers as tasks on the running loop, serving the given flow types.

        Classes registered earlier are served too. Workers are named
        ``notebook-<host>-<pid>-<random>-<n>``, so the workers of two kernels (or sessions) on
        one storage, or of a dead kernel and a live one, differ. ``lease_seconds`` defaults to
        the worker's own default (see :class:`Worker`). Returns the new workers.
        """
        self._check_open()
        await self.register(*flow_classes)
        if not self._classes:
            raise PyergonError("start_workers needs at least one flow class to serve")
        started = []
        for _ in range(count):
            worker_id = f"{self._worker_prefix}-{len(self._workers) + 1}"
            worker = Worker(
                self.storage,
                worker_id,
                max_concurrent_flows=concurrency,
                lease_seconds=lease_seconds,
                serializer=self.serializer,
                clock=self.clock,
                on_error=self._keeper(worker_id),
                on_stale=self._stale.note,
            )
            for flow_class in self._classes.values():
                await worker.register(flow_class)
            handle = await worker.start()
            self._workers.append((worker, handle))
            started.append(worker)
        return started

    async def stop_workers(self, deadline: float = 5.0) -> None:
        """Stop every worker; flows still running at the deadline go back to the queue."""
        workers, self._workers = self._workers, []
        for _, handle in workers:
            try:
                await handle.shutdown(deadline)
            except Exception as error:
                self._keep_error(handle.worker.worker_id, None, error)

    async def close(self) -> None:
        """Stop workers and stepped runs, and close the storage if the session opened it."""
        if self._closed:
            return
        self._closed = True
        self._definitions.close()
        await self.stop_workers()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._close_storage:
            await self.storage.close()

    # -- running flows ------------------------------------------------------------------------

    async def schedule(self, flow: object, flow_id: str | None = None) -> str:
        """Queue a flow for the session's workers (its class is registered on the way)."""
        self._check_open()
        await self.register(type(flow))
        return await self.scheduler.schedule(flow, flow_id)

    async def run(self, flow: object, flow_id: str | None = None) -> FlowOutcome[Any]:
        """Run a flow right here in the cell with the direct executor, until it ends or waits.

        Interrupting the cell stops the flow at its current step, with a note on the
        ``CancelledError`` that says how to go on.
        """
        self._check_open()
        self.manager.register(type(flow))  # so replay knows it; workers serve only what you ask
        method, _ = flow_entry(type(flow))
        flow_id = flow_id or f"{type(flow).__name__}-{int(time.time() * 1000)}"
        executor = Executor(
            flow, self.storage, flow_id, serializer=self.serializer, clock=self.clock, on_stale=None
        )
        try:
            outcome = await executor.run(lambda running: getattr(running, method)())
        except asyncio.CancelledError as interrupted:
            interrupted.add_note(interrupted_run(flow_id))
            raise
        # Whether it ran now or had finished before: its results may come from older code.
        await self._stale.check(self.storage, flow_id, type(flow))
        return outcome

    def step_through(self, flow: object, flow_id: str | None = None) -> Stepper:
        """Return a stepper that runs ``flow`` one operation per ``await stepper.next()``."""
        self._check_open()
        require_flow_instance(flow)
        self.manager.register(type(flow))  # so replay knows it; workers serve only what you ask
        flow_id = flow_id or f"{type(flow).__name__}-{int(time.time() * 1000)}"
        return Stepper(self, flow, flow_id)

    async def signal(self, flow_id: str, name: str, value: Any = None) -> bool:
        """Send a signal to a flow; returns whether it was new."""
        return await self.scheduler.signal(flow_id, name, value)

    async def wait(
        self, flow_ids: str | Iterable[str], *, timeout: float | None = None
    ) -> dict[str, Completed[Any]]:
        """Wait for flows to finish and return their outcomes.

        Background errors are raised before and after waiting. Where tqdm is installed, each
        running step of these flows that reports progress has a ``tqdm.auto`` bar meanwhile.
        Interrupting the cell stops only the waiting: the ``CancelledError`` carries a note
        naming the flows and how to wait again (the cell's one line of output).
        """
        self.raise_for_errors()
        ids = [flow_ids] if isinstance(flow_ids, str) else list(flow_ids)
        waiting = asyncio.ensure_future(self.scheduler.wait(ids, timeout=timeout))
        self._keep(waiting)
        try:
            async with progress_bars(self.worker_records, ids, self._bars_failed):
                outcomes = await asyncio.shield(waiting)
        except asyncio.CancelledError as interrupted:
            # Raised on, unchanged, as asyncio expects; the note is the line a cell shows.
            interrupted.add_note(interrupted_wait(ids))
            raise
        self.raise_for_errors()
        self._stale.warn_noted(ids)
        return outcomes

    def raise_for_errors(self) -> None:
        """Raise :class:`BackgroundErrors` if workers met errors since the last call."""
        if self.errors:
            errors, self.errors = self.errors, []
            raise BackgroundErrors(errors)

    # -- management ---------------------------------------------------------------------------

    async def cancel(self, flow_id: str) -> ScheduledFlow:
        """Cancel a flow; see :meth:`FlowManager.cancel`."""
        return await self.manager.cancel(flow_id)

    async def resume(self, flow_id: str, *, force: bool = False) -> ScheduledFlow:
        """Queue a suspended or stuck flow again; see :meth:`FlowManager.resume`."""
        return await self.manager.resume(flow_id, force=force)

    async def retry(self, flow_id: str) -> ScheduledFlow:
        """Run a failed flow again; see :meth:`FlowManager.retry`."""
        return await self.manager.retry(flow_id)

    async def fork(self, flow_id: str, *, from_step: int, new_flow_id: str | None = None) -> str:
        """Fork a flow's log; see :meth:`FlowManager.fork`."""
        return await self.manager.fork(flow_id, from_step=from_step, new_flow_id=new_flow_id)

    async def rerun(
        self, flow_id: str, *, from_step: str | int = "changed", inputs: object | None = None
    ) -> FlowOutcome[Any]:
        """Recompute a finished flow from a step on and return its new outcome.

        By default from the first step whose code changed (in a DAG flow: the changed steps and
        their descendants); the old results stay as a previous generation (:meth:`generations`).
        It runs on the session's workers if they serve its type, else in the cell. See
        :meth:`FlowManager.rerun` for ``from_step`` and ``inputs``.
        """
        self._check_open()
        if inputs is not None:
            self.manager.register(type(inputs))
        plan = await self.manager.rerun(flow_id, from_step=from_step, inputs=inputs)
        self._stale.forget(flow_id)
        flow = await self.manager.get(flow_id)
        if any(flow.flow_type in worker.registered_types for worker in self.workers):
            return (await self.wait(plan.flow_id))[plan.flow_id]
        flow_class = self.manager.flow_class(flow.flow_type)
        return await self.run(decode_flow(self.serializer, flow_class, flow.payload), flow_id)

    async def generations(self, flow_id: str) -> pd.DataFrame:
        """The flow and the previous generations its reruns kept, newest first, as a table."""
        flows = [await self.manager.get(flow_id)]
        flows += reversed(await self.manager.generations(flow_id))
        stale = await count_stale_steps(self.storage, flows, self.manager.classes)
        return flows_frame(flows, stale_steps=stale)

    async def replay(self, flow_id: str, flow_class: type | None = None) -> ReplayResult:
        """Replay a flow's log against today's code; see :meth:`FlowManager.replay`."""
        return await self.manager.replay(flow_id, flow_class)

    async def gc(
        self, *, dry_run: bool = False, older_than: float | timedelta = DEFAULT_GRACE
    ) -> GcReport:
        """Remove artifacts no record names (safe while workers run); see :meth:`FlowManager.gc`."""
        return await self.manager.gc(dry_run=dry_run, older_than=older_than)

    async def delete(self, *flow_ids: str) -> GcReport:
        """Delete flows with their child flows, then the artifacts only they named.

        See :meth:`FlowManager.delete`: every flow is checked first, and a running one (or one
        with a running child) is refused before anything is deleted.
        """
        report = await delete_flows(self.storage, flow_ids)
        for flow_id in report.flows:
            self._stale.forget(flow_id)
        return report

    async def prune(
        self,
        older_than: float | timedelta,
        *,
        statuses: Collection[TaskStatus] | None = None,
        flow_type: str | None = None,
        dry_run: bool = False,
    ) -> GcReport:
        """Delete finished flows last updated more than ``older_than`` (seconds) ago.

        See :meth:`FlowManager.prune`: their artifacts go too unless another flow names them.
        """
        return await self.manager.prune(
            older_than, statuses=statuses, flow_type=flow_type, dry_run=dry_run
        )

    # -- internals ----------------------------------------------------------------------------

    def _keeper(self, worker_id: str) -> Any:
        def keep(error: BaseException, flow_id: str | None) -> None:
            self._keep_error(worker_id, flow_id, error)

        return keep

    def _keep_error(self, worker_id: str, flow_id: str | None, error: BaseException) -> None:
        self.errors.append(BackgroundError(worker_id, flow_id, error, time.time()))

    def _bars_failed(self, error: BaseException) -> None:
        self._keep_error("progress bars", None, error)

    def _keep(self, task: asyncio.Future[Any]) -> None:
        """Hold a strong reference to a background task until it is done."""
        if isinstance(task, asyncio.Task):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _adopt(self, flow_class: type) -> None:
        """Use ``flow_class``, a re-defined flow class, wherever its old one was used."""
        self.manager.register(flow_class)
        if (name := flow_type_name(flow_class)) in self._classes:
            self._classes[name] = flow_class
            for worker in self.workers:
                worker.register(flow_class)

    def _check_open(self) -> None:
        if self._closed:
            raise PyergonError("this session is closed; open a new one with Session.open(url)")


class SyncSession(SyncFront[Session]):
    """A :class:`Session` for synchronous code; :meth:`Session.open_sync` opens one.

    Each method is the session's method of the same name, blocking until it is done:
    ``sync.wait(flow_id)`` for ``await session.wait(flow_id)``. The async session itself is
    :attr:`session`. Views that refresh themselves (``monitor``) and ``step_through`` are
    left to the async session. A context manager: ``with Session.open_sync(url) as s:``
    closes it at the end.
    """

    register = blocking(Session.register)
    start_workers = blocking(Session.start_workers)
    stop_workers = blocking(Session.stop_workers)
    schedule = blocking(Session.schedule)
    run = blocking(Session.run)
    signal = blocking(Session.signal)
    wait = blocking(Session.wait)
    cancel = blocking(Session.cancel)
    resume = blocking(Session.resume)
    retry = blocking(Session.retry)
    fork = blocking(Session.fork)
    rerun = blocking(Session.rerun)
    generations = blocking(Session.generations)
    graph = blocking(Session.graph)
    replay = blocking(Session.replay)
    gc = blocking(Session.gc)
    delete = blocking(Session.delete)
    prune = blocking(Session.prune)
    history = blocking(Session.history)
    flows = blocking(Session.flows)
    timeline = blocking(Session.timeline)
    invocations = blocking(Session.invocations)
    output = blocking(Session.output)
    value = blocking(Session.value)

    @property
    def session(self) -> Session:
        """The async session behind this one; await its methods on its loop only."""
        return self._target

    @property
    def workers(self) -> list[Worker]:
        """The workers this session started and has not stopped."""
        return self._target.workers

    @property
    def errors(self) -> list[BackgroundError]:
        """Background errors not raised yet; see :meth:`Session.raise_for_errors`."""
        return self._target.errors

    def raise_for_errors(self) -> None:
        """Raise :class:`BackgroundErrors` if workers met errors since the last call."""
        self._target.raise_for_errors()

    def close(self) -> None:
        """Stop the workers, close the session and stop its loop thread, if it has one."""
        try:
            self._runner.call(self._target.close())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sync{self._target!r}"

    def _repr_html_(self) -> str:
        return self._target._repr_html_()
