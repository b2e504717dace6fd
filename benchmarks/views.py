"""The notebook views' scenarios: ``views_render``, ``monitor_refresh``, ``views_large_result``.

``views_render`` (memory): at 10, 200 and ``n`` flows, the time to build a timeline of
synthetic :class:`~pyergon.history.FlowHistory` objects (``STEPS_PER_FLOW`` completed steps
each, the last flows failed or running) with ``timeline_from_histories`` and draw its text and
SVG, the time to draw that SVG as the PNG a notebook output stores (resvg-py), and the time of
a monitor's refresh, text and HTML over as many flows in a session's
scope. ``monitor_refresh`` (SQLite, PostgreSQL, Redis): ``n`` flows are bulk-loaded
(``bulk.py``), then a monitor's refresh is timed over every flow in storage and over the newest
``SCOPED`` (a session's flows), chosen by creation time and by their ids: time per refresh,
the refreshes per second it allows and the share of each second a monitor refreshing every
second spends refreshing (wall time, the storage's round trips included). Each timing is the
median of ``REPEATS`` (or ``REFRESH_REPEATS``) after one untimed call.

``views_large_result`` (SQLite, its artifacts beside the file): a flow whose step returns an
``n`` MB DataFrame of mixed dtypes (``hashing.mixed_frame``, as ``large_result``) is run once;
then the time to list its invocations as ``session.invocations()`` does (read the records,
build the DataFrame), to list the flows, and to read its history and draw its timeline (text
and SVG) — none of which may load the value (the issue's target for the listing: under 50 ms
at 200 MB).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from benchmarks import bulk
from benchmarks.backends import fresh_storage
from benchmarks.hashing import BYTES_PER_ROW, mixed_frame
from benchmarks.result import RunResult
from pyergon import Executor, flow, flow_type, step
from pyergon.core.records import Invocation, ScheduledFlow, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.history import FlowHistory, flows_frame, invocations_frame, iter_flows, load_history
from pyergon.notebook import Session
from pyergon.notebook._views_static import png_of
from pyergon.notebook.views import timeline_from_histories
from pyergon.storage.memory import InMemoryExecutionLog

__all__ = ["monitor_refresh", "views_large_result", "views_render"]

SIZES = (10, 200)
"""Flow counts measured besides ``n``."""
STEPS_PER_FLOW = 50
REPEATS = 3
"""Timings per number; the median is the run's number."""
REFRESH_REPEATS = 20
SCOPED = 1_000
"""Flows of the scoped monitor in ``monitor_refresh``: the newest, as a session's would be."""


def _median_ms(action: Callable[[], object], repeats: int = REPEATS) -> float:
    action()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def _median_ms_async(action: Callable[[], Awaitable[object]], repeats: int) -> float:
    await action()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _status(number: int, count: int) -> TaskStatus:
    """Most flows complete; one in ten of the newest failed, one in ten running."""
    if number >= count * 0.8:
        return (TaskStatus.FAILED, TaskStatus.RUNNING)[number % 2]
    return TaskStatus.COMPLETE


def _history(number: int, count: int, start: float) -> FlowHistory:
    created = start + number * 0.01
    status = _status(number, count)
    records = []
    for index in range(STEPS_PER_FLOW):
        begun = created + index * 0.002
        last = index == STEPS_PER_FLOW - 1
        failed = last and status is TaskStatus.FAILED
        record_status = InvocationStatus.FAILED if failed else InvocationStatus.COMPLETE
        if last and status is TaskStatus.RUNNING:
            record_status = InvocationStatus.PENDING
        records.append(
            Invocation(
                flow_id=f"flow-{number:05d}",
                sequence=index + 1,
                kind=OperationKind.STEP,
                name=f"step_{index}",
                status=record_status,
                args_hash="0" * 16,
                attempts=2 if failed else 1,
                started_at=begun,
                completed_at=None if record_status is InvocationStatus.PENDING else begun + 0.001,
                error=StoredError("ValueError", "bad row") if failed else None,
            )
        )
    flow = ScheduledFlow(
        flow_id=f"flow-{number:05d}",
        flow_type=("Ingest", "Report")[number % 2],
        payload=b"",
        status=status,
        created_at=created,
        updated_at=created + STEPS_PER_FLOW * 0.002,
        error=StoredError("ValueError", "bad row") if status is TaskStatus.FAILED else None,
    )
    return FlowHistory(flow, tuple(records), (), ())


async def _monitor_ms(count: int) -> dict[str, float]:
    """Refresh, text and HTML of a monitor of ``count`` flows started in its session."""
    storage = InMemoryExecutionLog()
    session = Session(storage)
    try:
        for history in [_history(number, count, session.opened_at) for number in range(count)]:
            await storage.create_flow(history.flow)
        monitor = session.monitor()
        refresh_ms = await _median_ms_async(monitor.refresh, REPEATS)
        return {
            "monitor_refresh_ms": refresh_ms,
            "monitor_text_ms": _median_ms(monitor.text),
            "monitor_html_ms": _median_ms(monitor.html),
        }
    finally:
        await session.close()


async def views_render(backend: str, n: int) -> RunResult:
    """Timeline and monitor render times at 10, 200 and ``n`` flows."""
    if backend != "memory":
        raise ValueError(f"views_render runs on memory, not {backend}")
    started = time.perf_counter()
    extra: dict[str, Any] = {"steps_per_flow": STEPS_PER_FLOW}
    for count in sorted({*SIZES, n}):
        start = time.time() - 3_600
        histories = [_history(number, count, start) for number in range(count)]
        timeline = timeline_from_histories(histories)
        numbers = {
            "timeline_build_ms": _median_ms(functools.partial(timeline_from_histories, histories)),
            "timeline_text_ms": _median_ms(timeline.text),
            "timeline_svg_ms": _median_ms(timeline.svg),
            "timeline_png_ms": _median_ms(functools.partial(png_of, timeline.svg())),
            **await _monitor_ms(count),
        }
        for name, value in numbers.items():
            extra[f"{name}_at_{count}"] = round(value, 3)
    return RunResult(time.perf_counter() - started, extra=extra)


async def monitor_refresh(backend: str, n: int) -> RunResult:
    """A monitor's refresh over ``n`` bulk-loaded flows: all of them, and the newest few."""
    history = bulk.make_history(n, 0)
    async with fresh_storage(backend) as fresh:
        loading = time.perf_counter()
        await bulk.load(fresh, history)
        bulk_load_s = time.perf_counter() - loading
        session = Session(fresh.storage)
        try:
            everything = session.monitor(all_flows=True)
            scoped = session.monitor(since=history.flows[-min(SCOPED, n)].created_at)
            chosen = session.monitor([flow.flow_id for flow in history.flows[-min(SCOPED, n) :]])
            started = time.perf_counter()
            all_ms = await _median_ms_async(everything.refresh, REFRESH_REPEATS)
            scoped_ms = await _median_ms_async(scoped.refresh, REFRESH_REPEATS)
            ids_ms = await _median_ms_async(chosen.refresh, REFRESH_REPEATS)
            wall = time.perf_counter() - started
            if everything.snapshot is None or everything.snapshot.total != n:
                raise RuntimeError(f"the monitor of every flow counted {everything.snapshot}")
            for snapshot in (scoped.snapshot, chosen.snapshot):
                if snapshot is None or snapshot.total != min(SCOPED, n):
                    raise RuntimeError(f"a monitor of the newest flows counted {snapshot}")
        finally:
            await session.close()
    return RunResult(
        wall,
        extra={
            "refresh_all_ms": all_ms,
            "refresh_scoped_ms": scoped_ms,
            "scoped_flows": min(SCOPED, n),
            "refresh_by_ids_ms": ids_ms,
            "refreshes_per_s_all": 1000 / all_ms,
            "refreshes_per_s_scoped": 1000 / scoped_ms,
            "busy_percent_at_1s_interval_all": all_ms / 10,
            "busy_percent_at_1s_interval_scoped": scoped_ms / 10,
            "bulk_load_s": bulk_load_s,
        },
    )


@dataclass
@flow_type
class LargeResult:
    """One step returning a frame of ``megabytes`` MB, and a small step after it."""

    megabytes: int

    @step
    async def load(self) -> pd.DataFrame:
        return mixed_frame(self.megabytes * 1_000_000 // BYTES_PER_ROW)

    @step
    async def count(self, frame: pd.DataFrame) -> int:
        return len(frame)

    @flow
    async def run(self) -> int:
        return await self.count(await self.load())


async def views_large_result(backend: str, n: int) -> RunResult:
    """Listing and drawing a flow whose step returned an ``n`` MB DataFrame."""
    if backend != "sqlite":
        raise ValueError(f"views_large_result runs on sqlite (artifacts beside it), not {backend}")
    async with fresh_storage(backend) as fresh:
        storage = fresh.storage
        running = time.perf_counter()
        await Executor(LargeResult(n), storage, "large").run(lambda flow: flow.run())
        run_s = time.perf_counter() - running

        async def invocations() -> pd.DataFrame:
            return invocations_frame(await storage.load_invocations("large"))

        async def flows() -> pd.DataFrame:
            return flows_frame([each async for each in iter_flows(storage, limit=1000)])

        async def timeline() -> str:
            drawn = timeline_from_histories([await load_history(storage, "large")])
            return drawn.text() + drawn.svg()

        listed = await invocations()
        if listed["result_artifact"].isna().iloc[0]:
            raise RuntimeError(f"the frame was not kept as an artifact: {listed.iloc[0].to_dict()}")
        started = time.perf_counter()
        numbers = {
            "invocations_ms": await _median_ms_async(invocations, REFRESH_REPEATS),
            "flows_ms": await _median_ms_async(flows, REFRESH_REPEATS),
            "timeline_ms": await _median_ms_async(timeline, REFRESH_REPEATS),
        }
        wall = time.perf_counter() - started
    return RunResult(
        wall,
        extra={
            **{name: round(value, 3) for name, value in numbers.items()},
            "result_mb": round(int(listed["result_size"].iloc[0]) / 1e6, 1),
            "result_format": str(listed["result_format"].iloc[0]),
            "frame_mb": n,
            "run_s": round(run_s, 2),
        },
    )
