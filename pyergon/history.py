"""The read side: flows, their records, signals and children, as records and as DataFrames.

Listing pages through storage with a keyset cursor, so it stays fast however many flows exist.
The DataFrame builders (in :mod:`pyergon._history_frames`, re-exported here) have fixed columns
and real dtypes (UTC datetimes, timedeltas, categorical statuses) whatever the input, including
none; pandas is imported only when one is built (``pip install "pyergon[notebook]"``). Nothing
here loads a stored value: views show its size and format.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Unpack

from pyergon._code import stale_records
from pyergon._history_frames import (
    FLOW_COLUMNS,
    INVOCATION_COLUMNS,
    SIGNAL_COLUMNS,
    flows_frame,
    invocations_frame,
    signals_frame,
)
from pyergon.core.query import FlowFilters, FlowQuery
from pyergon.core.records import FlowCursor, Invocation, ScheduledFlow, SignalRecord
from pyergon.core.status import InvocationStatus, OperationKind
from pyergon.core.workers import StepActivity, WorkerRecord, running_steps, unserved_types
from pyergon.errors import FlowNotFoundError, StepNotFoundError
from pyergon.executor.executor import validate_flow_id
from pyergon.storage.base import WorkerRegistry

if TYPE_CHECKING:
    import pandas as pd

    from pyergon.storage.base import ExecutionLog

__all__ = [
    "FLOW_COLUMNS",
    "INVOCATION_COLUMNS",
    "SIGNAL_COLUMNS",
    "FlowHistory",
    "flows_frame",
    "invocations_frame",
    "iter_flows",
    "load_history",
    "signals_frame",
]


@dataclass(frozen=True, slots=True)
class FlowHistory:
    """Everything storage knows about one flow.

    Attributes:
        flow: The flow record.
        invocations: Its recorded operations, by position.
        signals: Signals sent to it.
        children: Child flows it started, newest first.
        unserved: The types of this flow and its children, among those still waiting to run,
            that no live worker serves (from the workers' records, where storage keeps them).
        running: The steps of this flow that live workers run now, oldest first, with their
            progress (from the workers' last heartbeats, where storage keeps them).
        stale: The positions of step records made by code that has changed since (see
            :meth:`with_stale`); empty when the flow's class today was not given.
    """

    flow: ScheduledFlow
    invocations: tuple[Invocation, ...]
    signals: tuple[SignalRecord, ...]
    children: tuple[ScheduledFlow, ...]
    unserved: tuple[str, ...] = ()
    running: tuple[StepActivity, ...] = ()
    stale: frozenset[str] = frozenset()

    def with_stale(self, classes: Mapping[str, type]) -> FlowHistory:
        """This history with :attr:`stale` found, if ``classes`` holds the flow's class today."""
        cls = classes.get(self.flow.flow_type)
        if cls is None:
            return self
        stale = frozenset(record.position for record in stale_records(cls, self.invocations))
        return dataclasses.replace(self, stale=stale)

    @property
    def steps(self) -> tuple[Invocation, ...]:
        """The step records only."""
        return tuple(record for record in self.invocations if record.kind is OperationKind.STEP)

    @property
    def timers(self) -> tuple[Invocation, ...]:
        """The timer records, including flow-level retry backoffs (position ``0.n``)."""
        return tuple(record for record in self.invocations if record.kind is OperationKind.TIMER)

    @property
    def retried(self) -> tuple[Invocation, ...]:
        """Records that needed more than one attempt."""
        return tuple(record for record in self.invocations if record.attempts > 1)

    @property
    def records_now(self) -> tuple[Invocation, ...]:
        """The records with the steps running now, by position: what the views draw.

        A running step that has no record yet (its first attempt) appears as a ``PENDING``
        record started when that attempt started; a running step's record carries the
        progress its worker reported last. Stored records are not changed.
        """
        if not self.running:
            return self.invocations
        live = {activity.position: activity for activity in self.running}
        records = [
            _with_progress(record, live.pop(record.position, None)) for record in self.invocations
        ]
        records.extend(_running_record(self.flow.flow_id, activity) for activity in live.values())
        return tuple(sorted(records, key=lambda record: (record.sequence, record.sub_sequence)))

    def running_at(self, position: str) -> StepActivity | None:
        """The step running now at ``position`` (``"3"``, ``"3.1"``), if one is."""
        return next((each for each in self.running if each.position == position), None)

    def find_steps(self, step: str | int) -> tuple[Invocation, ...]:
        """The step records ``step`` names, running steps included (see :attr:`records_now`).

        Args:
            step: A position (``3``, ``"3"``, ``"3.1"``) or a step name; a name called several
                times names every call, by position.

        Raises:
            StepNotFoundError: The flow has no such step; the message lists its steps.
            TypeError: ``step`` is neither text nor a whole number.
        """
        if isinstance(step, bool) or not isinstance(step, str | int):
            raise TypeError(
                f"a step is named by its name or its position (3 or '3'), got "
                f"{type(step).__name__} {step!r}"
            )
        steps = [record for record in self.records_now if record.kind is OperationKind.STEP]
        wanted = str(step)
        found = tuple(record for record in steps if record.position == wanted)
        if not found and isinstance(step, str):
            found = tuple(record for record in steps if record.name == step)
        if not found:
            listed = [f"{record.position} {record.name}" for record in steps]
            raise StepNotFoundError(self.flow.flow_id, step, listed)
        return found

    def output(self, step: str | int | None = None) -> str:
        """What the flow's steps printed (stdout and stderr), as recorded.

        Args:
            step: One step, by position or name (see :meth:`find_steps`); ``None``: every step
                that printed, each headed by a line ``==> 3 crunch <==``.

        Returns:
            The text, ``""`` where nothing was printed. A step's attempts after the first
            start with a line ``── attempt N ──``.

        Raises:
            StepNotFoundError: ``step`` names no step of the flow.
        """
        if step is None:
            records = tuple(r for r in self.records_now if r.kind is OperationKind.STEP)
            printed = [record for record in records if record.output]
            return "".join(_headed(record) for record in printed)
        found = self.find_steps(step)
        if len(found) == 1:
            return found[0].output or ""
        return "".join(_headed(record) for record in found)

    def invocations_frame(self) -> pd.DataFrame:
        """The records as a DataFrame (see :func:`invocations_frame`)."""
        return invocations_frame(self.invocations)

    def __repr__(self) -> str:
        return (
            f"FlowHistory(flow_id={self.flow.flow_id!r}, status={self.flow.status.value}, "
            f"records={len(self.invocations)}, signals={len(self.signals)}, "
            f"children={len(self.children)})"
        )

    def text(self) -> str:
        """The flow in readable text: its summary, then one line per record with its error.

        The one-flow timeline's text, free of timestamps, so the same history always reads
        the same; it is what IPython shows as ``text/plain`` (``repr()`` stays short).
        """
        from pyergon._timeline_text import flow_text

        return flow_text(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self) if cycle else self.text())

    def _repr_html_(self) -> str:
        from pyergon._history_html import history_html

        return history_html(self)

    def _repr_mimebundle_(
        self, include: object = None, exclude: object = None, **kwargs: object
    ) -> dict[str, str]:
        return {"text/plain": self.text(), "text/html": self._repr_html_()}


async def load_history(
    storage: ExecutionLog, flow_id: str, *, workers: Sequence[WorkerRecord] | None = None
) -> FlowHistory:
    """Read one flow with its records, signals and children.

    Args:
        storage: Where the flow is.
        flow_id: The flow.
        workers: The workers' records to find its running steps and unserved types in;
            ``None``: those storage keeps (as of each worker's last heartbeat). A notebook
            session passes its own workers' fresher ones (``session.worker_records()``).

    Raises:
        InvalidFlowIdError: ``flow_id`` is not a usable flow id.
        FlowNotFoundError: No such flow.
    """
    flow = await storage.get_flow(validate_flow_id(flow_id))
    if flow is None:
        raise FlowNotFoundError(flow_id)
    invocations = await storage.load_invocations(flow_id)
    signals = await storage.list_signals(flow_id)
    children = [child async for child in iter_flows(storage, parent_flow_id=flow_id)]
    unserved: tuple[str, ...] = ()
    running: tuple[StepActivity, ...] = ()
    waiting = [each.flow_type for each in (flow, *children) if not each.status.is_final]
    if workers is None and waiting and isinstance(storage, WorkerRegistry):
        workers = await storage.list_workers()
    if waiting and workers is not None:
        now = time.time()
        unserved = unserved_types(waiting, workers, now)
        if not flow.status.is_final:
            running = running_steps(workers, now).get(flow_id, ())
    return FlowHistory(flow, tuple(invocations), tuple(signals), tuple(children), unserved, running)


def _headed(record: Invocation) -> str:
    """A step's output after a line naming it, ending in a new line."""
    text = record.output or ""
    if text and not text.endswith("\n"):
        text += "\n"
    return f"==> {record.position} {record.name} <==\n{text}"


def _with_progress(record: Invocation, activity: StepActivity | None) -> Invocation:
    if activity is None or activity.progress is None:
        return record
    return record.replace(progress=activity.progress)


def _running_record(flow_id: str, activity: StepActivity) -> Invocation:
    """A running step that has no record yet, as the record its first attempt will write."""
    sequence, _, sub_sequence = activity.position.partition(".")
    return Invocation(
        flow_id,
        int(sequence),
        OperationKind.STEP,
        activity.step,
        InvocationStatus.PENDING,
        sub_sequence=int(sub_sequence or 0),
        attempts=1,
        started_at=activity.started_at,
        progress=activity.progress,
    )


async def iter_flows(
    storage: ExecutionLog,
    *,
    page_size: int = 500,
    limit: int | None = None,
    **filters: Unpack[FlowFilters],
) -> AsyncIterator[ScheduledFlow]:
    """Yield matching flows newest first, reading storage one page at a time.

    For one page of a listing, call :meth:`~pyergon.storage.ExecutionLog.list_flows` with a
    :class:`~pyergon.core.FlowQuery`; this walks every page of one with a keyset cursor.

    Args:
        storage: Where the flows are.
        page_size: Flows per storage query.
        limit: Stop after this many flows.
        **filters: Which flows, by keyword: see :class:`~pyergon.core.FlowFilters`.

    Raises:
        TypeError: A keyword is not a filter.
        ValueError: ``page_size`` is below 1.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    query = FlowQuery(limit=page_size, **filters)
    cursor: FlowCursor | None = None
    produced = 0
    while limit is None or produced < limit:
        wanted = page_size if limit is None else min(page_size, limit - produced)
        page = await storage.list_flows(query.page(limit=wanted, after=cursor))
        for flow in page:
            yield flow
        produced += len(page)
        if len(page) < wanted:
            return
        cursor = FlowCursor.after(page[-1])
