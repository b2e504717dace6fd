"""What a notebook session reads and shows: histories, DataFrames, timelines, monitors, graphs.

:class:`SessionViews` is a mixin of :class:`~pyergon.notebook.session.Session`: the methods that
read storage and build views, apart from those that run and steer flows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from pyergon._code import stale_records, step_fingerprints
from pyergon._timeline_layout import Window, one_or_many
from pyergon._values import read_value
from pyergon.clock import Clock
from pyergon.core.records import ScheduledFlow
from pyergon.core.status import TaskStatus, flow_statuses
from pyergon.core.workers import WorkerRecord, running_steps
from pyergon.errors import StepNotFoundError
from pyergon.executor._live import live_output
from pyergon.history import FlowHistory, flows_frame, invocations_frame, iter_flows, load_history
from pyergon.management import FlowManager
from pyergon.notebook._monitor_read import monitor_scope
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
    opened_at: float

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
        """One flow with its records, signals and children, and the steps it runs now.

        The session's own workers are asked what they run (see :meth:`worker_records`), so a
        step that just started or reported progress shows at once.
        """
        return await load_history(self.storage, flow_id, workers=await self.worker_records())

    async def flows(
        self,
        *,
        status: TaskStatus | Iterable[TaskStatus] | str | None = None,
        flow_type: str | None = None,
        limit: int | None = 1000,
    ) -> pd.DataFrame:
        """Flows newest first as a DataFrame (columns: :data:`pyergon.history.FLOW_COLUMNS`)."""
        statuses = flow_statuses(status) or None
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
        collapse_after: int | None = 20,
        status: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
        flow_type: str | Iterable[str] | None = None,
        window: Window | None = None,
    ) -> Timeline:
        """A timeline of flows, one lane each; it re-reads them and redraws in place.

        Args:
            flow_ids: One flow id or several; none: the ``newest`` flows (of ``status`` and
                ``flow_type``), oldest first.
            newest: How many flows to show when no id is given.
            auto_refresh: Re-read the flows every ``interval`` s once shown, until all are final.
            interval: Seconds between two automatic refreshes.
            max_records: Records drawn per flow: the first and the last, around a counted gap.
            collapse_after: Past this many flows, one row per flow, failed flows first (the
                first 200 drawn, the rest counted); ``None``: never collapse.
            status: Only flows in this status or these statuses (``"failed"``).
            flow_type: Only flows of this type or these types.
            window: Only this span: ``(start, end)`` in seconds from the first start, or two
                datetimes (a naive one is UTC).

        Raises:
            FlowNotFoundError: One of the flows does not exist.
            ValueError: An option is out of range, or ``status`` names no flow status.
        """
        ids = one_or_many(flow_ids)
        types = one_or_many(flow_type)
        if not ids:
            ids = await self._newest_flows(newest, flow_statuses(status), types)

        async def load() -> tuple[list[FlowHistory], float]:
            classes = self.manager.classes
            workers = await self.worker_records()  # this session's own running steps at once
            histories = [
                await load_history(self.storage, flow_id, workers=workers) for flow_id in ids
            ]
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
            collapse_after=collapse_after,
            status=status,
            flow_type=types,
            window=window,
        )

    async def _newest_flows(
        self, count: int, status: frozenset[TaskStatus], types: list[str]
    ) -> list[str]:
        """The ids of the ``count`` newest flows in ``status`` of ``types``, oldest first.

        One listing of at most ``count`` flows per type, merged: never a walk through storage.
        """
        found: list[ScheduledFlow] = []
        for each in dict.fromkeys(types) if types else [None]:
            listed = iter_flows(self.storage, status=status or None, flow_type=each, limit=count)
            found.extend([flow async for flow in listed])
        found.sort(key=lambda flow: (flow.created_at, flow.flow_id))  # as storage lists them
        return [flow.flow_id for flow in found[-count:]] if count else []

    def monitor(
        self,
        flow_ids: str | Iterable[str] | None = None,
        *,
        flow_type: str | None = None,
        since: float | datetime | timedelta | None = None,
        all_flows: bool = False,
        interval: float = 1.0,
        output: bool = False,
    ) -> Monitor:
        """A monitor of the flows you started: counts, a table, throughput, ETA, failures, workers.

        By default it watches the flows created since this session opened; ``all_flows=True``
        watches every flow in storage. ``await session.monitor()`` reads the first snapshot
        before returning. In a kernel its output refreshes in place every ``interval`` seconds
        until ``monitor.stop()`` or :meth:`close`. A refresh counts from indexes (or by id) and
        reads a few pages of flows, never every flow. Workers and running steps are those
        storage knows, whoever started them.

        Args:
            flow_ids: Only these flows (one id or several), read by id at each refresh.
            flow_type: Only flows of this type.
            since: Only flows created since then: epoch seconds, a ``datetime``, or a
                ``timedelta`` before now; ``None``: since the session opened.
            all_flows: Every flow in storage (of ``flow_type``), whenever created.
            interval: Seconds between two refreshes of the live output.
            output: Also show the last lines each running step printed.

        Raises:
            ValueError: ``flow_ids`` comes with another way to choose flows, ``since`` with
                ``all_flows``, or ``interval`` is not above 0.
            InvalidFlowIdError: One of ``flow_ids`` cannot be a flow id.
            PyergonError: The session is closed.
        """
        self._check_open()
        scope = monitor_scope(
            flow_ids,
            flow_type=flow_type,
            since=since,
            all_flows=all_flows,
            opened_at=self.opened_at,
            now=self.clock.now(),
        )
        return Monitor(cast("Session", self), interval=interval, output=output, scope=scope)

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

    async def value(self, flow_id: str, step: str | int | None = None) -> Any:
        """The value a flow returned, or one of its steps returned, as stored.

        ``await session.value(flow_id)`` is the flow's result; ``await session.value(flow_id,
        "load")`` (or ``2``) is the value of that step, deserialized as the flow reads it on
        replay.

        Args:
            flow_id: The flow.
            step: One step, by position (``3``, ``"3"``) or name, as :meth:`output` takes it;
                ``None``: the flow's result.

        Raises:
            FlowNotFoundError: No such flow.
            StepNotFoundError: ``step`` names no step of the flow; the message lists them.
            FlowStateError: The flow or step has not finished, or it failed (the message gives
                its error) or was cancelled; or a name that names several calls.
            SerializationError: The value cannot be read back with the session's serializer.
        """
        manager = self.manager
        return await read_value(
            manager.storage, manager.serializer, flow_id, step, self.worker_records
        )

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
