"""What a monitor reads at each refresh, and which flows it watches (:class:`MonitorScope`).

A refresh never reads every flow: the counts come from index ranges
(:meth:`~pyergon.storage.ExecutionLog.count_flows` with ``created_after``), and the table,
failures and lost leases from a few pages of at most :data:`FLOWS_SHOWN` or
:data:`RECENT_FLOWS` flows. A monitor of at most :data:`RECENT_FLOWS` chosen flows reads them
once per refresh, by id, and counts and sorts them here. Running steps are those of the scope's
flows alone. Throughput is measured between refreshes rather than read, so it needs no index of
finishing times.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pyergon._history_html import LARGE_VALUE, last_lines, lease_loss_note, value_note
from pyergon.core.query import FlowQuery
from pyergon.core.records import ScheduledFlow, epoch_seconds
from pyergon.core.status import TaskStatus
from pyergon.core.workers import StepActivity, WorkerRecord, running_steps, unserved_types
from pyergon.executor._live import live_output
from pyergon.notebook._monitor_snapshot import (
    FlowFailure,
    FlowRow,
    MonitorSnapshot,
    RunningStep,
    WorkerState,
)

if TYPE_CHECKING:
    from pyergon.notebook.session import Session

__all__ = [
    "FLOWS_SHOWN",
    "RECENT_FLOWS",
    "MonitorScope",
    "StoredOutputs",
    "Throughput",
    "monitor_scope",
    "read_snapshot",
]

FLOWS_SHOWN = 20
"""Rows of the monitor's table: running flows first, then failed ones, then the newest."""
RECENT_FLOWS = 100
"""The newest flows in scope in which the monitor looks for lost leases and unserved types."""
FAILURES_SHOWN = 3
"""Failed flows the monitor lists with their errors, newest first."""
WORKERS_SHOWN = 10
"""Workers the monitor lists: the session's, then live ones, then the latest to beat."""
RUNNING_SHOWN = 10
"""Running steps the monitor lists, those that started first; the rest are counted."""
OUTPUT_LINES = 5
"""Lines of a running step's output the monitor shows with ``output=True``."""
THROUGHPUT_WINDOW = 60.0
"""Seconds of refreshes over which throughput is measured."""
_ERROR_CHARACTERS = 200


@dataclass(frozen=True, slots=True)
class MonitorScope:
    """Which flows a monitor counts, lists and times.

    Attributes:
        label: The scope for people, shown in the monitor's header.
        flow_ids: Only these flows, read by id; ``None``: flows by the filters below.
        flow_type: Only flows of this type.
        created_after: Only flows created at or after this time (epoch seconds).
    """

    label: str
    flow_ids: tuple[str, ...] | None = None
    flow_type: str | None = None
    created_after: float | None = None

    def query(
        self, *, limit: int, status: TaskStatus | Collection[TaskStatus] | None = None
    ) -> FlowQuery:
        """The listing of this scope's flows, newest first, with ``status`` and ``limit``."""
        return FlowQuery(
            status=status,
            flow_type=self.flow_type,
            created_after=self.created_after,
            flow_ids=self.flow_ids,
            limit=limit,
        )


def monitor_scope(
    flow_ids: str | Iterable[str] | None,
    *,
    flow_type: str | None,
    since: float | datetime | timedelta | None,
    all_flows: bool,
    opened_at: float,
    now: float,
) -> MonitorScope:
    """The scope ``session.monitor(...)`` asks for; see :meth:`SessionViews.monitor`.

    Raises:
        ValueError: ``flow_ids`` comes with another scope argument, or ``since`` with
            ``all_flows``.
        InvalidFlowIdError: One of ``flow_ids`` cannot be a flow id.
    """
    if flow_ids is not None:
        if flow_type is not None or since is not None or all_flows:
            raise ValueError(
                "monitor: give flow_ids alone, or flow_type / since / all_flows to choose flows "
                "by type and creation time"
            )
        ids = tuple(dict.fromkeys([flow_ids] if isinstance(flow_ids, str) else flow_ids))
        FlowQuery(flow_ids=ids)  # refuses an id that cannot be one now, not at each refresh
        label = f"flow {ids[0]}" if len(ids) == 1 else f"{len(ids)} chosen flows"
        return MonitorScope(label, flow_ids=ids)
    if since is not None and all_flows:
        raise ValueError("monitor: give since or all_flows=True, not both")
    kind = "flows" if flow_type is None else f"{flow_type} flows"
    if all_flows:
        label = "every flow in storage" if flow_type is None else f"every {kind[:-1]} in storage"
        return MonitorScope(label, flow_type=flow_type)
    if since is None:
        return MonitorScope(
            f"{kind} created since this session opened",
            flow_type=flow_type,
            created_after=opened_at,
        )
    if isinstance(since, timedelta):
        created_after = now - since.total_seconds()
    elif isinstance(since, datetime):
        created_after = epoch_seconds(since)
    else:
        created_after = float(since)
    return MonitorScope(
        f"{kind} created {_since_label(since, created_after)}",
        flow_type=flow_type,
        created_after=created_after,
    )


def _since_label(since: float | datetime | timedelta, created_after: float) -> str:
    """``in the last 10 min`` for a timedelta, else ``since 2026-12-06 10:16:17 UTC``.

    A timedelta names no clock time, so the monitor's text stays the same from run to run.
    """
    if isinstance(since, timedelta):
        return f"in the last {_span(since.total_seconds())}"
    return "since " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(created_after))


def _span(seconds: float) -> str:
    """``10 min``, ``2 h``, ``3 days``, ``90 s``: a span in the largest unit it is a whole of."""
    for unit, size in (("days", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {'day' if unit == 'days' and count == 1 else unit}"
    return f"{seconds:g} s"


class Throughput:
    """Flows that became final per second, from the final counts of successive refreshes.

    Args:
        window: Seconds of refreshes the rate is measured over.
    """

    def __init__(self, window: float = THROUGHPUT_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def measure(self, now: float, final: int) -> float | None:
        """Add a refresh's count of final flows at ``now``; the rate, once two refreshes say."""
        samples = self._samples
        if samples and (final < samples[-1][1] or now < samples[-1][0]):
            samples.clear()  # flows deleted, or a clock set back: start measuring again
        samples.append((now, final))
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()
        first_at, first_final = samples[0]
        if now <= first_at:
            return None
        return (final - first_final) / (now - first_at)


def eta(unfinished: int, throughput: float | None) -> float | None:
    """Seconds until ``unfinished`` flows are final at ``throughput``; ``None``: not known."""
    if unfinished == 0:
        return 0.0
    if throughput is None or throughput <= 0:
        return None
    return unfinished / throughput


class StoredOutputs:
    """What running steps' records held, kept between a monitor's refreshes.

    A running step's record holds the output of its earlier attempts, which does not change
    while the attempt runs; so each attempt's record is read once, not at every refresh.
    """

    def __init__(self) -> None:
        self._printed: dict[tuple[str, str, float], str | None] = {}

    async def read(
        self, session: Session, shown: Sequence[StepActivity]
    ) -> dict[tuple[str, str], str]:
        """The stored output of each of ``shown``, by ``(flow id, position)``; none if empty."""
        keys = [(activity.flow_id, activity.position, activity.started_at) for activity in shown]
        kept = {key: self._printed[key] for key in keys if key in self._printed}
        for flow_id in dict.fromkeys(key[0] for key in keys if key not in kept):
            records = {
                record.position: record.output
                for record in await session.storage.load_invocations(flow_id)
            }
            for key in keys:
                if key[0] == flow_id:
                    kept[key] = records.get(key[1])
        self._printed = kept  # steps no longer shown are forgotten
        return {(key[0], key[1]): printed for key, printed in kept.items() if printed}


async def read_snapshot(
    session: Session,
    scope: MonitorScope,
    throughput: Throughput,
    *,
    output: bool,
    outputs: StoredOutputs | None = None,
) -> MonitorSnapshot:
    """Read what a monitor of ``scope`` shows now: bounded reads, whatever storage holds.

    Args:
        session: The session whose storage, workers and background errors are read.
        scope: The flows counted and listed.
        throughput: The monitor's measure, which this refresh's count of final flows feeds.
        output: Also read the last lines each listed running step printed.
        outputs: The monitor's stored outputs of running steps, kept between refreshes;
            ``None``: read them afresh.
    """
    clock_now = session.clock.now()
    flows = await _scope_flows(session, scope)
    counts = flows.counts
    records = await session.worker_records()
    now = time.time()  # heartbeats and step starts are wall-clock times
    steps = await _scope_steps(session, scope, running_steps(records, now))
    shown = [*flows.running, *flows.failed, *flows.rest][:FLOWS_SHOWN]
    waiting = [flow.flow_type for flow in flows.newest if not flow.status.is_final]
    activities = sorted(
        (activity for flow_steps in steps.values() for activity in flow_steps),
        key=lambda activity: activity.started_at,
    )
    final = sum(count for status, count in counts.items() if status.is_final)
    rate = throughput.measure(clock_now, final)
    workers, workers_total = _workers(session, records, now)
    listed = activities[:RUNNING_SHOWN]
    printed = await _printed(session, listed, outputs or StoredOutputs()) if output else {}
    return MonitorSnapshot(
        counts=counts,
        workers=workers,
        workers_total=workers_total,
        errors=tuple(str(error) for error in session.errors),
        lost_leases=tuple(
            (flow.flow_id, note)
            for flow in flows.newest
            if (note := lease_loss_note(flow)) is not None
        ),
        unserved=unserved_types(waiting, records, now) if waiting else (),
        running=_running(listed, printed, now),
        running_total=len(activities),
        scope=scope.label,
        flows=tuple(_row(flow, steps.get(flow.flow_id, ()), clock_now) for flow in shown),
        failures=tuple(_failure(flow) for flow in flows.failed[:FAILURES_SHOWN]),
        failed_total=counts[TaskStatus.FAILED],
        throughput=rate,
        eta=eta(sum(counts.values()) - final - counts[TaskStatus.SUSPENDED], rate),
        missing_total=flows.missing_total,
        missing=flows.missing,
    )


_FIRST = frozenset((TaskStatus.RUNNING, TaskStatus.FAILED))
"""The statuses the table lists first; the newest flows of the others fill it."""


@dataclass(frozen=True, slots=True)
class _ScopeFlows:
    """What a refresh read of the scope's flows: counts, the table's pages, the newest."""

    counts: dict[TaskStatus, int]
    running: list[ScheduledFlow]
    failed: list[ScheduledFlow]
    rest: list[ScheduledFlow]
    newest: list[ScheduledFlow]
    missing_total: int = 0
    missing: tuple[str, ...] = ()


async def _scope_flows(session: Session, scope: MonitorScope) -> _ScopeFlows:
    """The scope's counts and pages: four bounded reads, or one read of a few chosen flows."""
    storage = session.storage
    chosen = scope.flow_ids
    if chosen is not None and len(chosen) <= RECENT_FLOWS:
        return _few_chosen(chosen, await storage.list_flows(scope.query(limit=RECENT_FLOWS)))
    counts = await storage.count_flows(
        flow_type=scope.flow_type, created_after=scope.created_after, flow_ids=chosen
    )
    running = await storage.list_flows(scope.query(status=TaskStatus.RUNNING, limit=FLOWS_SHOWN))
    failed = await storage.list_flows(scope.query(status=TaskStatus.FAILED, limit=FLOWS_SHOWN))
    newest = await storage.list_flows(scope.query(limit=RECENT_FLOWS))
    # Room is left only when both pages above hold every running and failed flow (fewer than
    # 20 together), so the newest flows hold the newest others the table needs.
    room = max(FLOWS_SHOWN - len(running) - len(failed), 0)
    rest = [flow for flow in newest if flow.status not in _FIRST][:room]
    lacking = 0 if chosen is None else len(chosen) - sum(counts.values())
    return _ScopeFlows(dict(counts), running, failed, rest, newest, lacking)


def _few_chosen(flow_ids: Collection[str], stored: list[ScheduledFlow]) -> _ScopeFlows:
    """The counts and pages of a few chosen flows, from one read of them all, newest first.

    Reading them all also names the ids storage lacks.
    """
    counts = dict.fromkeys(TaskStatus, 0)
    for flow in stored:
        counts[flow.status] += 1

    def page(status: TaskStatus) -> list[ScheduledFlow]:
        return [flow for flow in stored if flow.status is status][:FLOWS_SHOWN]

    running, failed = page(TaskStatus.RUNNING), page(TaskStatus.FAILED)
    room = max(FLOWS_SHOWN - len(running) - len(failed), 0)
    rest = [flow for flow in stored if flow.status not in _FIRST][:room]
    there = {flow.flow_id for flow in stored}
    missing = tuple(flow_id for flow_id in flow_ids if flow_id not in there)
    return _ScopeFlows(counts, running, failed, rest, stored, len(missing), missing)


async def _scope_steps(
    session: Session, scope: MonitorScope, steps: dict[str, tuple[StepActivity, ...]]
) -> dict[str, tuple[StepActivity, ...]]:
    """The running steps (by flow id) of the scope's flows alone.

    Workers run flows of every scope; which of their flows are in a scope chosen by type or
    creation time is one read of those flows by id.
    """
    if not steps or (scope.flow_type is None and scope.created_after is None):
        chosen = None if scope.flow_ids is None else set(scope.flow_ids)
    else:
        query = scope.query(limit=len(steps))
        stored = await session.storage.list_flows(query.of_flows(steps))
        chosen = {flow.flow_id for flow in stored}
    if chosen is None:
        return steps
    return {flow_id: found for flow_id, found in steps.items() if flow_id in chosen}


def _row(flow: ScheduledFlow, steps: Sequence[StepActivity], now: float) -> FlowRow:
    latest = steps[-1] if steps else None
    step = "" if latest is None else f"{latest.position} {latest.step}"
    if len(steps) > 1:
        step += f" +{len(steps) - 1}"
    return FlowRow(
        flow_id=flow.flow_id,
        flow_type=flow.flow_type,
        status=flow.status,
        age=max(now - flow.created_at, 0.0),
        step=step,
        progress=None if latest is None else latest.progress,
        result=value_note(flow.result, at_least=LARGE_VALUE) or "",
    )


def _failure(flow: ScheduledFlow) -> FlowFailure:
    error = flow.error
    text = "no error stored" if error is None else f"{error.short_type}: {error.message}"
    text = " ".join(text.split())
    if len(text) > _ERROR_CHARACTERS:
        text = text[: _ERROR_CHARACTERS - 1] + "…"
    return FlowFailure(flow.flow_id, flow.flow_type, text)


def _workers(
    session: Session, records: Sequence[WorkerRecord], now: float
) -> tuple[tuple[WorkerState, ...], int]:
    """The session's own workers, then the others storage knows: live ones, then by last beat."""
    own = sorted(
        (WorkerState.of(worker, now) for worker in session.workers),
        key=lambda state: state.worker_id,
    )
    ids = {state.worker_id for state in own}
    others = sorted(
        (WorkerState.of_record(record, now) for record in records if record.worker_id not in ids),
        key=lambda state: (state.state != "live", state.heartbeat_age),
    )
    states = own + others
    return tuple(states[:WORKERS_SHOWN]), len(states)


async def _printed(
    session: Session, shown: Sequence[StepActivity], outputs: StoredOutputs
) -> dict[tuple[str, str], str]:
    """What each shown step printed, by ``(flow id, position)``.

    A step running in one of the session's workers shows what it printed so far; one
    running elsewhere shows what its record holds (its earlier attempts' output, if any).
    """
    live: dict[tuple[str, str], str] = {}
    elsewhere = []
    for activity in shown:
        workers = (worker.live_steps for worker in session.workers)
        printed = live_output(workers, activity.flow_id, activity.position)
        if printed:
            live[(activity.flow_id, activity.position)] = printed
        else:
            elsewhere.append(activity)
    return {**await outputs.read(session, elsewhere), **live}


def _running(
    shown: Sequence[StepActivity], printed: Mapping[tuple[str, str], str], now: float
) -> tuple[RunningStep, ...]:
    """The running steps as shown, with the last lines of what they printed."""
    return tuple(
        RunningStep(
            activity,
            max(now - activity.started_at, 0.0),
            tuple(last_lines(printed.get((activity.flow_id, activity.position)), OUTPUT_LINES)[0]),
        )
        for activity in shown
    )
