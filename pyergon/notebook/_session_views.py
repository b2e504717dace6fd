"""What a notebook session reads and shows: histories, DataFrames, timelines, monitors, graphs.

:class:`SessionViews` is a mixin of :class:`~pyergon.notebook.session.Session`: the methods that
read storage and build views, apart from those that run and steer flows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from pyergon._code import stale_records, step_fingerprints
from pyergon.clock import Clock
from pyergon.core.status import TaskStatus
from pyergon.core.workers import WorkerRecord, running_steps
from pyergon.errors import StepNotFoundError
from pyergon.executor._live import live_output
from pyergon.history import FlowHistory, flows_frame, invocations_frame, iter_flows, load_history
from pyergon.management import FlowManager
from pyergon.notebook._stale_notes import count_stale_steps
from pyergon.notebook._views_graph import DependencyGraph, dependency_graph
from pyergon.notebook._views_monitor import Monitor
from pyergon.notebook._views_timeline import Timeline
from pyergon.storage.base import ExecutionLog, WorkerRegistry

if TYPE_CHECKING:
    import pandas as pd

    from pyergon.executor.worker import Worker
    from pyergon.notebook.session import Session

__all__ = ["SessionViews"]


class SessionViews:
    """Reading a session's flows: histories, DataFrames and the notebook views."""

    storage: ExecutionLog
    manager: FlowManager
    clock: Clock

    @property
    def workers(self) -> list[Worker]:
        """The session's running workers."""
        raise NotImplementedError

    def _keep(self, task: asyncio.Future[Any]) -> None:
        raise NotImplementedError

    def _check_open(self) -> None:
        raise NotImplementedError

    # -- reading ------------------------------------------------------------------------------

    async def history(self, flow_id: str) -> FlowHistory:
        """One flow with its records, signals and children."""
        return await load_history(self.storage, flow_id)

    async def flows(
        self,
        *,
        status: TaskStatus | Iterable[TaskStatus] | str | None = None,
        flow_type: str | None = None,
        limit: int | None = 1000,
    ) -> pd.DataFrame:
        """Flows newest first as a DataFrame (columns: :data:`pyergon.history.FLOW_COLUMNS`)."""
        statuses: TaskStatus | list[TaskStatus] | None
        if isinstance(status, str):
            statuses = TaskStatus(status.upper())
        elif status is None or isinstance(status, TaskStatus):
            statuses = status
        else:
            statuses = [TaskStatus(value) for value in status]
        rows = [
            flow
            async for flow in iter_flows(
                self.storage, status=statuses, flow_type=flow_type, limit=limit
            )
        ]
        running = running_steps(await self.worker_records(), time.time())
        return flows_frame(
            rows, running, await count_stale_steps(self.storage, rows, self.manager.classes)
        )

    async def timeline(
        self,
        flow_ids: str | Iterable[str] = (),
        *,
        newest: int = 10,
        auto_refresh: bool = False,
        interval: float = 1.0,
        max_records: int = 200,
    ) -> Timeline:
        """A timeline of flows, one lane each; it re-reads them and redraws in place.

        Args:
            flow_ids: One flow id or several; none: the ``newest`` flows, oldest first.
            newest: How many flows to show when no id is given.
            auto_refresh: Re-read the flows every ``interval`` s once shown, until all are final.
            interval: Seconds between two automatic refreshes.
            max_records: Records drawn per flow; the rest are counted.

        Raises:
            FlowNotFoundError: One of the flows does not exist.
        """
        ids = [flow_ids] if isinstance(flow_ids, str) else list(flow_ids)
        if not ids:
            ids = [flow.flow_id async for flow in iter_flows(self.storage, limit=newest)][::-1]

        async def load() -> tuple[list[FlowHistory], float]:
            classes = self.manager.classes
            histories = [await load_history(self.storage, flow_id) for flow_id in ids]
            return [history.with_stale(classes) for history in histories], self.clock.now()

        histories, now = await load()
        return Timeline(
            histories,
            now=now,
            loader=load,
            keep=self._keep,
            auto_refresh=auto_refresh,
            interval=interval,
            max_records=max_records,
        )

    def monitor(self, *, interval: float = 1.0, output: bool = False) -> Monitor:
        """A monitor of flows by status, workers, running steps, progress and background errors.

        ``await session.monitor()`` reads the first snapshot before returning. In a kernel its
        output refreshes in place every ``interval`` seconds until ``monitor.stop()`` or
        :meth:`close`. With ``output``, it also shows the last lines each running step printed.
        """
        self._check_open()
        return Monitor(cast("Session", self), interval=interval, output=output)

    async def output(self, flow_id: str, step: str | int | None = None) -> str:
        """What a flow's steps printed (stdout, stderr), and a step running here so far.

        Args:
            flow_id: The flow.
            step: One step, by position (``3``, ``"3"``) or name; ``None``: every step that
                printed, each after a line ``==> 3 crunch <==``.

        Raises:
            FlowNotFoundError: No such flow.
            StepNotFoundError: ``step`` names no step of the flow; the message lists them.
        """
        running = (worker.live_steps for worker in self.workers)
        live = None if step is None else live_output(running, flow_id, str(step))
        try:
            recorded = await self.manager.output(flow_id, step)
        except StepNotFoundError:
            if live is None:
                raise
            recorded = ""  # a first attempt running here: storage does not know it yet
        if live is None:
            return recorded
        # A step running in this session: its earlier attempts' output, then this attempt's.
        return f"{recorded.rstrip()}\n── running now ──\n{live}" if recorded else live

    async def worker_records(self) -> list[WorkerRecord]:
        """The workers storage knows, this session's own with what they run at this moment.

        A stored record is as of the worker's last heartbeat; the session's own workers are
        asked directly, so a step that just started or reported progress shows at once.
        """
        if not isinstance(self.storage, WorkerRegistry):
            return []
        now = {worker.worker_id: worker.activity() for worker in self.workers}
        return [
            replace(record, activity=now[record.worker_id]) if record.worker_id in now else record
            for record in await self.storage.list_workers()
        ]

    async def graph(self, flow: str | type) -> DependencyGraph:
        """The dependency graph of a DAG flow class, or of a flow with its steps' states."""
        if isinstance(flow, type):
            return dependency_graph(flow)
        stored = await self.manager.get(flow)
        cls = self.manager.flow_class(stored.flow_type)
        records = await self.storage.load_invocations(flow)
        return dependency_graph(cls, records, stale=[r.name for r in stale_records(cls, records)])

    async def invocations(self, flow_id: str) -> pd.DataFrame:
        """One flow's records as a DataFrame (columns: ``INVOCATION_COLUMNS``)."""
        flow = await self.manager.get(flow_id)
        cls = self.manager.classes.get(flow.flow_type)
        fingerprints = None if cls is None else step_fingerprints(cls)
        return invocations_frame(await self.storage.load_invocations(flow_id), fingerprints)
